//! End to end: initiator → loopback kernel → frontend → SCSI engine → store, and back.

use scst_accel_dma::SgvPool;
use scst_accel_handler::abi::memory_reuse_type;
use scst_accel_handler::abi::on_free_cmd_type;
use scst_accel_handler::abi::parse_type;
use scst_accel_handler::abi::sam_status;
use scst_accel_handler::abi::tm_fn;
use scst_accel_handler::frontend::FrontendConfig;
use scst_accel_handler::frontend::TeardownConfig;
use scst_accel_handler::frontend::TeardownTrigger;
use scst_accel_handler::loopback::ScsiCompletion;
use scst_accel_handler::loopback::ScsiRequest;
use scst_accel_handler::loopback::Session;
use scst_accel_handler::loopback::SessionSpec;
use scst_accel_handler::store::ram::RamStore;
use scst_accel_handler::store::Store;
use scst_accel_handler::store::StoreCompletion;
use scst_accel_handler::store::StoreError;
use scst_accel_handler::store::StoreInfo;
use scst_accel_handler::store::StoreQueue;
use scst_accel_handler::store::StoreRequest;
use scst_accel_handler::transport::register::default_options;
use scst_accel_handler::workload;
use scst_accel_handler::workload::Geometry;
use scst_accel_handler::workload::Mix;
use scst_accel_handler::workload::Pattern;
use scst_accel_handler::workload::WorkloadConfig;
use scst_accel_tests::execute;
use scst_accel_tests::release_pool;
use scst_accel_tests::GatedStore;
use scst_accel_tests::Rig;
use scst_accel_tests::UnpluggableFd;
use scst_accel_tests::WAIT;
use std::os::fd::BorrowedFd;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

fn verified_run(rig: &Rig, sessions: usize, config: WorkloadConfig) -> workload::WorkloadReport {
    let sessions: Vec<_> = (0..sessions).map(|i| rig.session(i)).collect();
    let geometry = Geometry {
        block_size: rig.block_size,
        num_blocks: rig.blocks,
    };
    let report = workload::run(&sessions, geometry, &config, &mut |_| {}).expect("workload");
    for s in sessions {
        s.detach();
    }
    report
}

fn short(mix: Mix, pattern: Pattern, io_size: u32, max_commands: u64) -> WorkloadConfig {
    WorkloadConfig {
        pattern,
        mix,
        io_size,
        queue_depth: 16,
        duration: Duration::from_secs(20),
        max_commands: Some(max_commands),
        seed: 11,
        completion_timeout: WAIT,
        ..WorkloadConfig::default()
    }
}

fn assert_clean(report: &workload::WorkloadReport) {
    assert_eq!(report.verify_errors, 0, "{:?}", report.first_errors);
    assert_eq!(report.scsi_errors, 0, "{:?}", report.first_errors);
    assert_eq!(report.unanswered, 0, "{:?}", report.first_errors);
    assert!(report.commands > 0);
}

#[test]
fn mixed_random_workload_verifies_every_read_with_default_options() {
    let rig = Rig::ram("e2e-default", 512, 32768);
    let report = verified_run(
        &rig,
        2,
        short(Mix::Mixed { read_percent: 50 }, Pattern::Random, 4096, 4000),
    );
    assert_clean(&report);
    assert!(report.reads > 0 && report.writes > 0 && report.verified_bytes > 0);
}

/// Every memory-reuse / on-free / parse combination takes another path through the protocol
/// (ALLOC_MEM, delayed READ allocation, ON_FREE_CMD frees, PARSE through the engine).
#[test]
fn every_memory_and_parse_mode_moves_verified_data() {
    let modes = [
        (
            memory_reuse_type::REUSE_ALL,
            on_free_cmd_type::IGNORE,
            parse_type::STANDARD,
        ),
        (
            memory_reuse_type::NO_REUSE,
            on_free_cmd_type::CALL,
            parse_type::STANDARD,
        ),
        (
            memory_reuse_type::REUSE_READ,
            on_free_cmd_type::CALL,
            parse_type::CALL,
        ),
        (
            memory_reuse_type::REUSE_WRITE,
            on_free_cmd_type::CALL,
            parse_type::EXCEPTION,
        ),
    ];
    for (i, (reuse, on_free, parse)) in modes.into_iter().enumerate() {
        let mut opt = default_options();
        opt.memory_reuse_type = reuse;
        opt.on_free_cmd_type = on_free;
        opt.parse_type = parse;
        let rig = Rig::new(
            &format!("e2e-mode{i}"),
            4096,
            4096,
            opt,
            Arc::new(RamStore::new(4096, 4096, 256)),
        );
        let report = verified_run(
            &rig,
            1,
            short(Mix::Mixed { read_percent: 60 }, Pattern::Random, 16384, 600),
        );
        assert_clean(&report);
        if parse == parse_type::CALL {
            assert!(rig.frontend().stats().parse > 0, "PARSE_CALL must send PARSE");
        }
        if reuse == memory_reuse_type::NO_REUSE {
            let figures = rig.frontend().stats().buffers;
            assert_eq!(
                figures.buffers, 0,
                "NO_REUSE + ON_FREE_CALL must return every buffer: {figures:?}"
            );
        }
    }
}

#[test]
fn flush_cache_returns_every_cached_buffer() {
    let rig = Rig::ram("e2e-flush", 512, 16384);
    let report = verified_run(
        &rig,
        1,
        short(Mix::Mixed { read_percent: 50 }, Pattern::Random, 8192, 500),
    );
    assert_clean(&report);
    assert!(
        rig.frontend().stats().buffers.buffers > 0,
        "REUSE_ALL keeps buffers cached"
    );
    rig.frontend().flush_cache().expect("FLUSH_CACHE");
    let deadline = std::time::Instant::now() + WAIT;
    while rig.frontend().stats().buffers.buffers > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let stats = rig.frontend().stats();
    assert_eq!(
        stats.buffers.buffers, 0,
        "buffers left after FLUSH_CACHE: {stats:?}"
    );
    assert!(stats.on_cached_mem_free > 0);
}

#[test]
fn abort_task_of_a_command_in_flight_waits_for_its_exec_reply() {
    let gated = GatedStore::new(RamStore::new(512, 8192, 256));
    let rig = Rig::new("e2e-abort", 512, 8192, default_options(), Arc::new(gated.clone()));
    let session = rig.session(0);
    session
        .submit(ScsiRequest {
            tag: 1,
            cdb: vec![0x28, 0, 0, 0, 0, 8, 0, 0, 8, 0],
            data_out: Vec::new(),
            expected_data_in: 4096,
            queue_type: scst_accel_handler::abi::queue_type::SIMPLE,
            timeout_secs: 30,
        })
        .expect("submit");
    assert!(gated.wait_held(1), "READ never reached the store");
    let tm = session
        .task_mgmt(tm_fn::ABORT_TASK, Some(1))
        .expect("task management");
    // The TM cannot finish while the EXEC it aborts is unanswered (spec §4).
    assert!(
        session
            .tm_completions()
            .recv_timeout(Duration::from_millis(300))
            .is_err(),
        "TM finished early"
    );
    assert_eq!(gated.release_all(), 1);
    let done = session
        .tm_completions()
        .recv_timeout(WAIT)
        .expect("TM completes after the EXEC reply");
    assert_eq!(done.id, tm);
    assert_eq!(done.result, 0);
    let completion = session
        .completions()
        .recv_timeout(WAIT)
        .expect("the READ is answered");
    assert_eq!(completion.tag, 1);
    assert!(
        completion.aborted || completion.status == sam_status::GOOD,
        "{completion:?}"
    );
    assert!(
        rig.frontend().stats().task_mgmt >= 2,
        "RECEIVED and DONE both reached the handler"
    );
}

/// WCE as MODE SENSE(6) reports it (caching page, no block descriptors), and the page as read.
fn caching_page(session: &Session, tag: u64) -> (bool, Vec<u8>) {
    let done = execute(session, tag, &[0x1A, 0x08, 0x08, 0, 255, 0], Vec::new(), 255);
    assert_eq!(done.status, sam_status::GOOD, "{done:?}");
    let page = done.data_in[4..].to_vec();
    assert_eq!(page[0] & 0x3F, 0x08, "{:02x?}", done.data_in);
    (page[2] & 0x04 != 0, page)
}

/// PERSISTENT RESERVE OUT PREEMPT AND ABORT (SCST's PR_ABORT_ALL) aborts tasks but is no reset
/// (SPC-4 §5.12.11.2.6): a WCE an initiator cleared stays cleared, where a LUN RESET returns it
/// to its default, as SCST's vdisk does.
#[test]
fn a_preempt_and_abort_keeps_the_mode_pages_a_lun_reset_restores() {
    let rig = Rig::new(
        "e2e-pr-abort",
        512,
        8192,
        default_options(),
        Arc::new(RamStore::new(512, 8192, 256)),
    );
    let session = rig.session(0);
    let (wce, mut page) = caching_page(&session, 1);
    assert!(wce, "a RAM store's cache is on by default");
    page[0] &= 0x3F; // PS is reserved in MODE SELECT
    page[2] &= !0x04;
    let mut list = vec![0u8; 4];
    list.extend_from_slice(&page);
    let select = [0x15, 0x10, 0, 0, list.len() as u8, 0];
    let done = execute(&session, 2, &select, list, 0);
    assert_eq!(done.status, sam_status::GOOD, "{done:?}");
    assert!(!caching_page(&session, 3).0);
    let tm = |function| {
        let id = session.task_mgmt(function, None).expect("task management");
        let done = session.tm_completions().recv_timeout(WAIT).expect("TM completes");
        assert_eq!((done.id, done.result), (id, 0));
    };
    tm(tm_fn::PR_ABORT_ALL);
    let (wce, _) = caching_page(&session, 4);
    assert!(!wce, "PREEMPT AND ABORT turned the write cache back on");
    tm(tm_fn::LUN_RESET);
    assert!(caching_page(&session, 5).0, "a LUN RESET restores the default");
}

/// The scst_user worker takes no range lock and hands each store step the whole buffer, which
/// is right for every plan but the engine's own COMPARE AND WRITE (TCMU's setting): a disk set
/// so is refused at the frontend's start rather than served without the atomicity.
#[test]
fn the_scst_user_frontend_refuses_a_disk_whose_engine_runs_compare_and_write() {
    use scst_accel_handler::frontend::Frontend;
    use scst_accel_handler::frontend::FrontendError;
    use scst_accel_handler::loopback::KernelConfig;
    use scst_accel_handler::loopback::LoopbackKernel;
    use scst_accel_handler::scsi::CompareAndWriteBy;
    use scst_accel_handler::scsi::Disk;
    use scst_accel_handler::scsi::DiskConfig;
    let kernel = LoopbackKernel::new(KernelConfig::default());
    let fd = kernel.open(true);
    let mut config = DiskConfig::new(512, 8192);
    config.compare_and_write = CompareAndWriteBy::Handler;
    let started = Frontend::start(
        Arc::new(fd),
        Arc::new(Disk::new(config)),
        Arc::new(RamStore::new(512, 8192, 256)),
        Arc::new(SgvPool::new(None, None, 1 << 20)),
        FrontendConfig::default(),
    );
    assert!(matches!(started, Err(FrontendError::CompareAndWriteInEngine)));
}

/// A store whose queue reports every completion twice (a store bug the worker must survive),
/// the copy in the same reap, and which runs a READ only 20 ms after its submission (as a device
/// would, later), so that a copy taken for the next step's completion answers that step before
/// its data is there.
struct TwiceStore(RamStore);

struct TwiceQueue {
    inner: Box<dyn StoreQueue>,
    reads: Vec<(Instant, StoreRequest)>,
}

impl Store for TwiceStore {
    fn info(&self) -> StoreInfo {
        self.0.info()
    }

    fn open_queue(&self) -> Result<Box<dyn StoreQueue>, StoreError> {
        Ok(Box::new(TwiceQueue {
            inner: self.0.open_queue()?,
            reads: Vec::new(),
        }))
    }
}

impl StoreQueue for TwiceQueue {
    fn submit(
        &mut self,
        token: &mut scst_accel_handler::store::StoreToken<'_>,
        batch: &mut Vec<StoreRequest>,
    ) -> Result<(), StoreError> {
        let (reads, rest): (Vec<_>, Vec<_>) = batch
            .drain(..)
            .partition(|r| matches!(r.op, scst_accel_handler::store::StoreOp::Read { .. }));
        let due = Instant::now() + Duration::from_millis(20);
        self.reads.extend(reads.into_iter().map(|r| (due, r)));
        let mut rest = rest;
        self.inner.submit(token, &mut rest)
    }

    fn reap(&mut self, out: &mut Vec<StoreCompletion>) -> usize {
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.reads)
            .into_iter()
            .partition(|(at, _)| *at <= now);
        self.reads = later;
        let mut due: Vec<StoreRequest> = due.into_iter().map(|(_, r)| r).collect();
        if !due.is_empty() {
            self.inner
                .submit(&mut scst_accel_handler::store::StoreToken::root(), &mut due)
                .expect("the RAM store takes the reads");
        }
        let start = out.len();
        let n = self.inner.reap(out);
        let copies: Vec<StoreCompletion> = out[start..].to_vec();
        out.extend(copies);
        2 * n
    }

    fn notify_fd(&self) -> Option<BorrowedFd<'_>> {
        self.inner.notify_fd()
    }

    fn in_flight(&self) -> usize {
        self.reads.len() + self.inner.in_flight()
    }
}

/// A store that completes a request twice must not complete the command's next step with the
/// copy: a FUA READ under WCE 1 is a flush, then the read, and the flush's second completion,
/// taken for the read's, answered the READ before it read anything (the buffer's old contents).
/// Each step's store tag carries the step, so the copy is told apart and ignored.
#[test]
fn a_completion_reported_twice_does_not_complete_the_next_step() {
    let store = TwiceStore(RamStore::new(512, 8192, 256));
    let rig = Rig::new("e2e-twice", 512, 8192, default_options(), Arc::new(store));
    let session = rig.session(0);
    let write10 = |lba: u8| [0x2A, 0, 0, 0, 0, lba, 0, 0, 8, 0];
    let a = vec![0xA5u8; 4096];
    assert_eq!(
        execute(&session, 1, &write10(0), a.clone(), 0).status,
        sam_status::GOOD
    );
    // Other data through the buffers since, so that one not read into holds no A.
    for tag in 2..6 {
        let done = execute(&session, tag, &write10(8), vec![0x3Cu8; 4096], 0);
        assert_eq!(done.status, sam_status::GOOD);
    }
    // READ(10) with FUA (byte 1 bit 3): the RAM store has a write cache, so flush, then read.
    let fua_read = [0x28, 0x08, 0, 0, 0, 0, 0, 0, 8, 0];
    for tag in 6..10 {
        let done = execute(&session, tag, &fua_read, Vec::new(), 4096);
        assert_eq!(done.status, sam_status::GOOD, "{done:?}");
        assert!(
            done.data_in == a,
            "tag {tag}: the READ was answered before it read (first byte {:#x})",
            done.data_in.first().copied().unwrap_or(0)
        );
    }
}

#[test]
fn capacity_change_raises_a_unit_attention_then_reports_the_new_size() {
    let rig = Rig::ram("e2e-resize", 512, 4096);
    let session = rig.session(0);
    rig.frontend()
        .capacity_changed(2048)
        .expect("DEVICE_CAPACITY_CHANGED");
    let read_capacity = [0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let first = execute(&session, 1, &read_capacity, Vec::new(), 8);
    assert_eq!(first.status, sam_status::CHECK_CONDITION);
    let (key, asc, ascq) = sense_triple(&first.sense);
    assert_eq!((key, asc, ascq), (0x06, 0x2a, 0x09), "CAPACITY DATA HAS CHANGED");
    let second = execute(&session, 2, &read_capacity, Vec::new(), 8);
    assert_eq!(second.status, sam_status::GOOD);
    assert_eq!(&second.data_in[..4], &2047u32.to_be_bytes());
}

#[test]
fn the_frontend_counts_reads_writes_bytes_and_latency() {
    let rig = Rig::ram("e2e-figures", 512, 4096);
    let session = rig.session(0);
    let before = rig.frontend().stats();
    // 3 WRITE(10)s of 8 blocks, 2 READ(10)s of 8 blocks, 1 TEST UNIT READY.
    for tag in 0..3u64 {
        let cdb = [0x2a, 0, 0, 0, 0, (tag * 8) as u8, 0, 0, 8, 0];
        let done = execute(&session, tag, &cdb, vec![tag as u8; 4096], 0);
        assert_eq!(done.status, sam_status::GOOD);
    }
    for tag in 3..5u64 {
        let done = execute(
            &session,
            tag,
            &[0x28, 0, 0, 0, 0, 0, 0, 0, 8, 0],
            Vec::new(),
            4096,
        );
        assert_eq!(done.status, sam_status::GOOD);
    }
    assert_eq!(
        execute(&session, 5, &[0, 0, 0, 0, 0, 0], Vec::new(), 0).status,
        sam_status::GOOD
    );
    // A command's latency is taken when its reply is handed over, which the initiator can see
    // a moment before the worker records it.
    assert!(
        eventually(|| {
            let s = rig.frontend().stats();
            s.latency.count() - before.latency.count() == s.exec - before.exec
        }),
        "every answered EXEC has a latency: {:?}",
        rig.frontend().stats()
    );
    let s = rig.frontend().stats();
    assert_eq!(s.write_commands - before.write_commands, 3);
    assert_eq!(s.write_bytes - before.write_bytes, 3 * 4096);
    assert_eq!(s.read_commands - before.read_commands, 2);
    assert_eq!(s.read_bytes - before.read_bytes, 2 * 4096);
    let window = s.latency.delta(&before.latency);
    assert!(window.count() >= 6, "{window:?}");
    let p50 = window.percentile(0.5).expect("latencies");
    assert!(p50 > Duration::ZERO && p50 < WAIT, "{p50:?}");
    assert!(window.sum() > Duration::ZERO);
}

#[test]
fn resize_grows_the_ram_store_and_tells_the_initiators() {
    let rig = Rig::ram("e2e-grow", 512, 4096);
    let session = rig.session(0);
    let write_at_8000 = [0x2a, 0, 0, 0, 0x1f, 0x40, 0, 0, 1, 0];
    let refused = execute(&session, 1, &write_at_8000, vec![0x77; 512], 0);
    assert_eq!(refused.status, sam_status::CHECK_CONDITION, "beyond the old end");
    rig.frontend().resize(8192).expect("grow");
    let read_capacity = [0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let first = execute(&session, 2, &read_capacity, Vec::new(), 8);
    assert_eq!(
        sense_triple(&first.sense),
        (0x06, 0x2a, 0x09),
        "CAPACITY DATA HAS CHANGED"
    );
    let second = execute(&session, 3, &read_capacity, Vec::new(), 8);
    assert_eq!(&second.data_in[..4], &8191u32.to_be_bytes());
    let written = execute(&session, 4, &write_at_8000, vec![0x77; 512], 0);
    assert_eq!(written.status, sam_status::GOOD);
    let read = execute(
        &session,
        5,
        &[0x28, 0, 0, 0, 0x1f, 0x40, 0, 0, 1, 0],
        Vec::new(),
        512,
    );
    assert!(read.data_in.iter().all(|&b| b == 0x77));
    // Shrinking is refused by the store and changes nothing.
    let e = rig.frontend().resize(100).expect_err("shrink");
    assert!(
        matches!(
            e,
            scst_accel_handler::frontend::ResizeError::Store(StoreError::Shrink { .. })
        ),
        "{e}"
    );
    let again = execute(&session, 6, &read_capacity, Vec::new(), 8);
    assert_eq!(again.status, sam_status::GOOD);
    assert_eq!(&again.data_in[..4], &8191u32.to_be_bytes());
}

#[test]
fn any_cdb_through_the_whole_stack_is_answered() {
    let mut opt = default_options();
    opt.parse_type = parse_type::CALL; // every CDB reaches the handler's engine
    let rig = Rig::new("e2e-fuzz", 512, 2048, opt, Arc::new(RamStore::new(512, 2048, 64)));
    let session = rig.session(0);
    let mut rng = scst_accel_handler::workload::stamp::Rng::new(99);
    for tag in 0..400u64 {
        let len = [6usize, 10, 12, 16][rng.below(4) as usize];
        let mut cdb: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        if tag % 3 == 0 {
            // Keep known opcodes common so the engine's decoders see garbage fields too.
            cdb[0] = [
                0x00, 0x12, 0x1a, 0x25, 0x28, 0x2a, 0x2f, 0x35, 0x42, 0x5a, 0x88, 0x9e, 0xa3,
            ][rng.below(13) as usize];
        }
        let data_in = rng.below(8192) as u32;
        let completion = execute(&session, tag, &cdb, Vec::new(), data_in);
        // BUSY / TASK SET FULL are legitimate for absurd transfer lengths (buffer cap).
        let allowed = [
            sam_status::GOOD,
            sam_status::CHECK_CONDITION,
            sam_status::BUSY,
            sam_status::TASK_SET_FULL,
        ];
        assert!(
            allowed.contains(&completion.status),
            "CDB {cdb:02x?}: status {:#x}",
            completion.status
        );
        if completion.status == sam_status::CHECK_CONDITION {
            assert!(
                !completion.sense.is_empty(),
                "CHECK CONDITION without sense for {cdb:02x?}"
            );
        }
    }
}

fn sense_triple(sense: &[u8]) -> (u8, u8, u8) {
    match sense.first().map(|b| b & 0x7f) {
        Some(0x72) | Some(0x73) => (sense[1] & 0x0f, sense[2], sense[3]),
        _ => (
            sense.get(2).map_or(0, |b| b & 0x0f),
            sense.get(12).copied().unwrap_or(0),
            sense.get(13).copied().unwrap_or(0),
        ),
    }
}

/// READ of 8 blocks at `lba`, submitted without waiting.
fn submit_read(session: &Session, tag: u64, lba: u32) {
    let l = lba.to_be_bytes();
    session
        .submit(ScsiRequest {
            tag,
            cdb: vec![0x28, 0, l[0], l[1], l[2], l[3], 0, 0, 8, 0],
            data_out: Vec::new(),
            expected_data_in: 4096,
            queue_type: scst_accel_handler::abi::queue_type::SIMPLE,
            timeout_secs: 30,
        })
        .expect("submit");
}

/// The completions of `tags` (any order), each within the bound.
fn completions(session: &Session, tags: &[u64]) -> Vec<ScsiCompletion> {
    let mut got: Vec<ScsiCompletion> = tags
        .iter()
        .map(|_| {
            session
                .completions()
                .recv_timeout(WAIT)
                .expect("every command is answered")
        })
        .collect();
    got.sort_by_key(|c| c.tag);
    let answered: Vec<u64> = got.iter().map(|c| c.tag).collect();
    let mut expected = tags.to_vec();
    expected.sort_unstable();
    assert_eq!(answered, expected, "each command answered exactly once");
    assert!(
        session
            .completions()
            .recv_timeout(Duration::from_millis(50))
            .is_err(),
        "no second answer"
    );
    got
}

/// Polls `f` until true, bounded by [`WAIT`].
fn eventually(mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    f()
}

fn short_bounds() -> TeardownConfig {
    TeardownConfig {
        drain: Duration::from_millis(100),
        abort: WAIT,
        flush: Duration::from_millis(200),
    }
}

/// The frontend's in-flight count is the drain's, and it is exact: every accepted EXEC counts
/// until its reply is handed to SCST. The on-demand dump lists each of them.
#[test]
fn the_drain_counts_every_command_in_flight_and_the_dump_lists_them() {
    let gated = GatedStore::new(RamStore::new(512, 8192, 256));
    let rig = Rig::new("e2e-count", 512, 8192, default_options(), Arc::new(gated.clone()));
    let session = rig.session(0);
    let tags: Vec<u64> = (1..=5).collect();
    for &tag in &tags {
        submit_read(&session, tag, tag as u32 * 8);
    }
    assert!(gated.wait_held(5), "the READs never reached the store");
    let stats = rig.frontend().stats();
    assert_eq!(stats.inflight, 5, "{stats:?}");
    assert_eq!(
        stats.leases_outstanding, 5,
        "one device lease per buffer in the store"
    );
    let dump = rig.frontend().dump();
    assert_eq!(dump.matches("EXEC in store").count(), 5, "{dump}");
    assert!(dump.contains("lease held"), "{dump}");
    assert!(dump.contains("gated store: 5 request(s) held"), "{dump}");
    assert!(dump.contains("intake open, 5 command(s) in flight"), "{dump}");
    assert_eq!(gated.release_all(), 5);
    for c in completions(&session, &tags) {
        assert_eq!(c.status, sam_status::GOOD, "{c:?}");
    }
    assert!(
        eventually(|| rig.frontend().stats().inflight == 0),
        "tokens leave with the replies: {:?}",
        rig.frontend().stats()
    );
    assert_eq!(rig.frontend().stats().leases_outstanding, 0);
    assert_eq!(rig.frontend().trigger(), None, "nothing triggered a teardown");
}

/// Under load the drain's count never exceeds what the initiators may have outstanding (plus
/// one reply batch per worker still being consumed), and comes back to zero: no token leaks.
#[test]
fn in_flight_accounting_under_load_returns_to_zero() {
    let rig = Rig::ram("e2e-load-count", 512, 32768);
    let sessions = 2u64;
    let depth = 16u64;
    let config = short(Mix::Mixed { read_percent: 50 }, Pattern::Random, 4096, 3000);
    let workers = 2u64;
    let batch = 8u64; // Rig's cmds_per_call
    let bound = sessions * depth + workers * batch;
    let mut peak = 0;
    let report = std::thread::scope(|s| {
        let load = s.spawn(|| verified_run(&rig, sessions as usize, config));
        while !load.is_finished() {
            let n = rig.frontend().stats().inflight;
            peak = peak.max(n);
            assert!(
                n <= bound,
                "{n} commands counted in flight, at most {bound} possible"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        load.join().expect("workload thread")
    });
    assert_clean(&report);
    assert!(
        eventually(|| rig.frontend().stats().inflight == 0),
        "{:?}",
        rig.frontend().stats()
    );
    let stats = rig.frontend().stats();
    assert_eq!(stats.leases_outstanding, 0, "{stats:?}");
    assert_eq!(stats.refused_in_teardown, 0, "{stats:?}");
    assert!(peak > 0, "the sampler saw the load");
}

/// A store whose `failure()` turns `Some` triggers the teardown; the one sequence aborts what the
/// store holds, answers every command exactly once, and hands out the unmap permit.
#[test]
fn a_failed_store_triggers_the_teardown_and_every_command_is_answered() {
    let gated = GatedStore::new(RamStore::new(512, 8192, 256));
    gated.set_abortable(true);
    let pool = Arc::new(SgvPool::new(None, None, 64 << 20));
    let mut rig = Rig::with_pool(
        "e2e-store-failed",
        512,
        8192,
        default_options(),
        Arc::new(gated.clone()),
        Arc::clone(&pool),
    );
    let session = rig.session(0);
    let tags: Vec<u64> = (1..=4).collect();
    for &tag in &tags {
        submit_read(&session, tag, tag as u32 * 8);
    }
    assert!(gated.wait_held(4));
    assert_eq!(rig.frontend().wait_trigger(Duration::from_millis(30)), None);
    gated.fail("test: the device is gone");
    let trigger = rig.frontend().wait_trigger(WAIT);
    assert_eq!(
        trigger,
        Some(TeardownTrigger::StoreFailed("test: the device is gone".into()))
    );
    let frontend = rig.frontend.take().expect("frontend");
    let report = frontend.teardown(short_bounds());
    let t = &report.teardown;
    assert_eq!(t.trigger, trigger.expect("checked"));
    assert_eq!(t.in_flight_at_start, 4, "{t:?}");
    assert!(t.abort_proven, "{t:?}");
    assert_eq!(t.aborted, 4, "{t:?}");
    assert_eq!((t.leases_outstanding, t.zombies_left), (0, 0), "{t:?}");
    assert!(t.unmap_permitted && report.unmap.is_some(), "{t:?}");
    let names: Vec<&str> = t.steps.iter().map(|s| s.name).collect();
    assert_eq!(
        names,
        [
            "stop intake",
            "drain",
            "abort",
            "return buffers",
            "leave",
            "unmap permit",
            "close"
        ]
    );
    for c in completions(&session, &tags) {
        assert!(
            c.status == sam_status::CHECK_CONDITION || c.aborted,
            "aborted commands fail with sense: {c:?}"
        );
    }
    drop(rig);
    let released = release_pool(pool, report.unmap);
    assert!(released.unmapped, "{released:?}");
    assert_eq!(released.leaked, 0, "{released:?}");
}

/// A store that keeps a request forever and cannot abort it: the device may still write into
/// the buffer, so the teardown gives no unmap permit and the pool is leaked, never unmapped.
/// The initiator's commands are still answered (by the close path).
#[test]
fn no_unmap_permit_while_a_store_keeps_a_request() {
    let gated = GatedStore::new(RamStore::new(512, 8192, 256));
    let pool = Arc::new(SgvPool::new(None, None, 64 << 20));
    let config = FrontendConfig {
        workers: 2,
        cmds_per_call: 8,
        stop_grace: Duration::from_millis(200),
        ..FrontendConfig::default()
    };
    let mut rig = Rig::with_config(
        "e2e-no-permit",
        512,
        8192,
        default_options(),
        Arc::new(gated.clone()),
        Arc::clone(&pool),
        config,
    );
    let session = rig.session(0);
    let tags = [1, 2];
    for tag in tags {
        submit_read(&session, tag, tag as u32 * 8);
    }
    assert!(gated.wait_held(2));
    let report = rig.frontend.take().expect("frontend").teardown(TeardownConfig {
        drain: Duration::from_millis(50),
        abort: Duration::from_millis(200),
        flush: Duration::from_millis(50),
    });
    let t = &report.teardown;
    assert_eq!(t.trigger, TeardownTrigger::Requested);
    assert!(!t.abort_proven, "the store could not abort: {t:?}");
    assert_eq!(t.leases_revoked, 0, "never revoked without proof: {t:?}");
    assert_eq!(t.leases_outstanding, 2, "{t:?}");
    assert!(!t.unmap_permitted && report.unmap.is_none(), "{t:?}");
    assert_eq!(t.zombies_left, 2, "{t:?}");
    // Answered exactly once, by SCST's close path.
    completions(&session, &tags);
    let in_use = pool.stats().in_use;
    let released = release_pool(pool, report.unmap);
    assert!(
        !released.unmapped && released.leaked_without_permit,
        "{released:?}"
    );
    assert!(released.leaked >= in_use.max(1), "{released:?}");
    drop(rig);
    // The "device" finishes late: nobody is there any more, nothing breaks.
    assert_eq!(gated.release_all(), 2);
}

/// SCST closing the device under the handler (ENODEV on REPLY_AND_GET_MULTI) triggers the
/// teardown. The loopback kernel cannot unregister a device whose fd is open (nor can SCST:
/// only the fd's release does), so an fd wrapper stands for it.
#[test]
fn scst_closing_the_device_triggers_the_teardown() {
    let gated = GatedStore::new(RamStore::new(512, 8192, 256));
    gated.set_abortable(true);
    let unplugged = Arc::new(AtomicBool::new(false));
    let switch = Arc::clone(&unplugged);
    let mut rig = Rig::with_fd(
        "e2e-scst-closed",
        512,
        8192,
        default_options(),
        Arc::new(gated.clone()),
        Arc::new(SgvPool::new(None, None, 64 << 20)),
        FrontendConfig {
            workers: 2,
            cmds_per_call: 8,
            ..FrontendConfig::default()
        },
        move |fd| Arc::new(UnpluggableFd::new(fd, switch)),
    );
    let session = rig.session(0);
    submit_read(&session, 1, 0);
    assert!(gated.wait_held(1));
    UnpluggableFd::unplug(&unplugged);
    assert_eq!(
        rig.frontend().wait_trigger(WAIT),
        Some(TeardownTrigger::ScstClosed)
    );
    let report = rig.frontend.take().expect("frontend").teardown(short_bounds());
    let t = &report.teardown;
    assert_eq!(t.trigger, TeardownTrigger::ScstClosed);
    assert!(t.abort_proven && report.unmap.is_some(), "{t:?}");
    assert_eq!(t.leases_outstanding, 0, "{t:?}");
    // The reply could not be delivered: the close path answered the command, once.
    completions(&session, &[1]);
}

/// A RAM store whose queue holds its worker in `reap` (as a store's escalation, a device reset,
/// can) once: at the second reap that finds nothing after it returned a completion, which in
/// the worker's loop is the reap after the exchange that handed that command's reply to SCST.
struct ReapHoldStore {
    inner: RamStore,
    hold: Arc<ReapHold>,
}

#[derive(Default)]
struct ReapHold {
    /// Reaps that found nothing since the last completion (`u32::MAX`: no completion yet).
    empty_reaps: std::sync::atomic::AtomicU32,
    holding: AtomicBool,
    released: AtomicBool,
}

struct ReapHoldQueue {
    inner: Box<dyn StoreQueue>,
    hold: Arc<ReapHold>,
}

impl Store for ReapHoldStore {
    fn info(&self) -> StoreInfo {
        self.inner.info()
    }
    fn open_queue(&self) -> Result<Box<dyn StoreQueue>, StoreError> {
        Ok(Box::new(ReapHoldQueue {
            inner: self.inner.open_queue()?,
            hold: Arc::clone(&self.hold),
        }))
    }
}

impl StoreQueue for ReapHoldQueue {
    fn submit(
        &mut self,
        token: &mut scst_accel_handler::store::StoreToken<'_>,
        batch: &mut Vec<StoreRequest>,
    ) -> Result<(), StoreError> {
        self.inner.submit(token, batch)
    }
    fn reap(&mut self, out: &mut Vec<StoreCompletion>) -> usize {
        use std::sync::atomic::Ordering::SeqCst;
        let n = self.inner.reap(out);
        let hold = &self.hold;
        if n > 0 {
            hold.empty_reaps.store(0, SeqCst);
        } else if hold.empty_reaps.load(SeqCst) != u32::MAX
            && hold.empty_reaps.fetch_add(1, SeqCst) + 1 == 2
            && !hold.released.load(SeqCst)
        {
            hold.holding.store(true, SeqCst);
            let until = Instant::now() + WAIT;
            while !hold.released.load(SeqCst) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(1));
            }
            hold.holding.store(false, SeqCst);
        }
        n
    }
    fn notify_fd(&self) -> Option<BorrowedFd<'_>> {
        self.inner.notify_fd()
    }
    fn in_flight(&self) -> usize {
        self.inner.in_flight()
    }

    fn set_heartbeat(&mut self, heartbeat: scst_accel_handler::heartbeat::Heartbeat) {
        self.inner.set_heartbeat(heartbeat);
    }
}

/// A command whose reply was handed to SCST leaves the drain before the worker's next store
/// call: a worker held in the store (a reap that runs a device reset) does not keep answered
/// commands counted, which a teardown waiting for the drain would take for commands in flight.
#[test]
fn an_answered_command_leaves_the_drain_before_the_worker_calls_the_store_again() {
    let hold = Arc::new(ReapHold::default());
    hold.empty_reaps
        .store(u32::MAX, std::sync::atomic::Ordering::SeqCst);
    let config = FrontendConfig {
        workers: 1,
        ..FrontendConfig::default()
    };
    let rig = Rig::with_config(
        "e2e-publish-before-store",
        512,
        8192,
        default_options(),
        Arc::new(ReapHoldStore {
            inner: RamStore::new(512, 8192, 256),
            hold: Arc::clone(&hold),
        }),
        Arc::new(SgvPool::new(None, None, 1 << 30)),
        config,
    );
    let session = rig.session(0);
    submit_read(&session, 1, 8);
    let done = session.completions().recv_timeout(WAIT).expect("READ answered");
    assert_eq!(done.status, sam_status::GOOD, "{done:?}");
    assert!(
        eventually(|| hold.holding.load(std::sync::atomic::Ordering::SeqCst)),
        "the worker never reached the held reap"
    );
    let inflight = rig.frontend().stats().inflight;
    hold.released.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        inflight, 0,
        "an answered command still counted in the drain while its worker was in the store"
    );
}

/// A store whose queue panics in `submit`: the worker dies, which triggers the teardown.
struct PanickingStore(RamStore);

struct PanickingQueue;

impl Store for PanickingStore {
    fn info(&self) -> StoreInfo {
        self.0.info()
    }
    fn open_queue(&self) -> Result<Box<dyn StoreQueue>, StoreError> {
        Ok(Box::new(PanickingQueue))
    }
}

impl StoreQueue for PanickingQueue {
    fn submit(
        &mut self,
        _token: &mut scst_accel_handler::store::StoreToken<'_>,
        _batch: &mut Vec<StoreRequest>,
    ) -> Result<(), StoreError> {
        panic!("test: a store bug");
    }
    fn reap(&mut self, _out: &mut Vec<StoreCompletion>) -> usize {
        0
    }
    fn notify_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }
    fn in_flight(&self) -> usize {
        0
    }
}

#[test]
fn a_worker_that_dies_triggers_the_teardown() {
    let mut rig = Rig::new(
        "e2e-worker-died",
        512,
        8192,
        default_options(),
        Arc::new(PanickingStore(RamStore::new(512, 8192, 256))),
    );
    let session = rig.session(0);
    submit_read(&session, 1, 0);
    assert_eq!(
        rig.frontend().wait_trigger(WAIT),
        Some(TeardownTrigger::WorkerFailed)
    );
    assert!(rig.frontend().dump().contains("worker"), "the dump still answers");
    // The dead worker's lease can never end by itself (no proven abort for its queue): a short
    // abort bound keeps the test quick.
    let report = rig.frontend.take().expect("frontend").teardown(TeardownConfig {
        abort: Duration::from_millis(200),
        ..short_bounds()
    });
    assert_eq!(report.teardown.trigger, TeardownTrigger::WorkerFailed);
    assert_eq!(report.panicked_workers, 1);
    assert!(
        report.unmap.is_none(),
        "the dead worker's lease is never revoked without proof"
    );
    // The dead worker's command is answered by the close path.
    completions(&session, &[1]);
}

/// Large commands are fetched a budget of data at a time (`FrontendConfig::fetch_bytes`,
/// 256 KiB by default): with 128 KiB commands queued 16 deep, the workers ask for fewer
/// commands than their buffers hold (8 here), so that the others get some; with 4 KiB ones,
/// never. Every byte still verifies.
#[test]
fn large_commands_are_fetched_fewer_at_a_time() {
    let mix = Mix::Mixed { read_percent: 50 };
    // One rig each: a workload verifies against what it wrote itself (zeroes elsewhere).
    let rig = Rig::ram("e2e-fetch-small", 512, 32768);
    let small = verified_run(&rig, 1, short(mix, Pattern::Random, 4096, 2000));
    assert_clean(&small);
    let stats = rig.frontend().stats();
    assert_eq!(stats.capped_fetches, 0, "4 KiB commands: {stats:?}");
    let rig = Rig::ram("e2e-fetch-large", 512, 32768);
    let large = verified_run(&rig, 1, short(mix, Pattern::Random, 128 << 10, 400));
    assert_clean(&large);
    let stats = rig.frontend().stats();
    assert!(stats.capped_fetches > 0, "128 KiB commands: {stats:?}");
}

/// A rig of one worker over a gated RAM store whose commands' deadline (and grace) is 200 ms.
fn gated_rig_with_short_deadlines(name: &str) -> (GatedStore, Rig) {
    let gated = GatedStore::new(RamStore::new(512, 8192, 256));
    let config = FrontendConfig {
        workers: 1,
        cmds_per_call: 8,
        max_command_timeout: Duration::from_millis(200),
        ..FrontendConfig::default()
    };
    let rig = Rig::with_config(
        name,
        512,
        8192,
        default_options(),
        Arc::new(gated.clone()),
        Arc::new(SgvPool::new(None, None, 1 << 30)),
        config,
    );
    (gated, rig)
}

/// A command the store neither completes nor aborts (a file store's I/O thread stuck in a
/// hung device) `max_command_timeout` after its deadline, the escalation's abort included,
/// makes the store count as failed: the teardown trigger fires (the disk goes alone, as for a
/// device that failed beyond recovery) instead of the disk answering ABORTED for ever while
/// its worker, which never blocks, looks healthy.
#[test]
fn a_command_the_store_never_ends_fails_the_store() {
    let (gated, rig) = gated_rig_with_short_deadlines("e2e-stuck");
    let session = rig.session(0);
    submit_read(&session, 1, 8);
    assert!(gated.wait_held(1), "the READ never reached the store");
    let trigger = rig.frontend().wait_trigger(WAIT);
    assert!(
        matches!(&trigger, Some(TeardownTrigger::StoreFailed(why)) if why.contains("still with the store")),
        "{trigger:?}"
    );
    assert_eq!(gated.release_all(), 1);
    let done = session.completions().recv_timeout(WAIT).expect("answered");
    assert_eq!(done.status, sam_status::GOOD, "{done:?}");
}

/// A command's deadline is watched even when the command that was due first has gone: the
/// worker keeps a bound below every deadline in flight and, once it passes with nothing late,
/// takes the next one due. READ 1 completes at once; READ 2, sent later and held by the store,
/// misses its own deadline and escalates (without the next-one-due step it never would: the
/// worker would stop looking once READ 1's deadline passed).
#[test]
fn a_deadline_after_an_earlier_commands_is_still_watched() {
    let (gated, rig) = gated_rig_with_short_deadlines("e2e-next-deadline");
    let session = rig.session(0);
    submit_read(&session, 1, 8);
    assert!(gated.wait_held(1), "READ 1 never reached the store");
    assert_eq!(gated.release_all(), 1);
    let done = session.completions().recv_timeout(WAIT).expect("READ 1 answered");
    assert_eq!(done.status, sam_status::GOOD, "{done:?}");
    // READ 2's deadline (200 ms from its arrival) falls after READ 1's.
    std::thread::sleep(Duration::from_millis(100));
    submit_read(&session, 2, 16);
    assert!(gated.wait_held(1), "READ 2 never reached the store");
    assert!(
        eventually(|| rig.frontend().stats().deadline_escalations > 0),
        "READ 2 missed its deadline and nothing escalated: {:?}",
        rig.frontend().stats()
    );
    gated.release_all();
}

/// A store that still completes other requests is slow, not dead: one request stuck in it
/// past its deadline and the grace does not fail the store while the others complete; once
/// nothing completes for the grace, it does.
#[test]
fn a_stuck_request_fails_the_store_only_once_nothing_else_completes() {
    let (gated, rig) = gated_rig_with_short_deadlines("e2e-slow");
    let session = rig.session(0);
    submit_read(&session, 1, 8);
    assert!(gated.wait_held(1), "the READ never reached the store");
    // Others complete every 50 ms for 1.5 s, well past READ 1's deadline and grace (0.4 s).
    for tag in 2..32u64 {
        submit_read(&session, tag, 16);
        assert!(gated.wait_held(2), "READ {tag} never reached the store");
        assert!(gated.release_newest());
        let done = session.completions().recv_timeout(WAIT).expect("answered");
        assert_eq!(done.tag, tag, "{done:?}");
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(rig.frontend().trigger(), None, "a store still completing failed");
    }
    // Nothing completes any more: within the grace and a health look, the store fails.
    let trigger = rig.frontend().wait_trigger(WAIT);
    assert!(
        matches!(&trigger, Some(TeardownTrigger::StoreFailed(why)) if why.contains("still with the store")),
        "{trigger:?}"
    );
    assert_eq!(gated.release_all(), 1);
}

/// A store whose queue stays full does not hold its worker: what the store refuses waits in
/// the worker's backlog while the worker's loop goes on (deadlines, the store's health, dumps,
/// the teardown). Here the store takes one READ, never completes it and refuses the others:
/// the refused READs are answered ABORTED COMMAND at their deadline's escalation (they never
/// reached the store), the store counts as failed, and the teardown's abort step ends in proof.
/// A worker that retried the submission until the store took it did none of this (no answer,
/// no trigger, no teardown: a file store on a path that hangs, 256 requests deep).
#[test]
fn a_store_whose_queue_stays_full_does_not_hold_its_worker() {
    let (gated, mut rig) = gated_rig_with_short_deadlines("e2e-full");
    gated.set_capacity(1);
    let session = rig.session(0);
    for tag in 1..=3u64 {
        submit_read(&session, tag, 8 * tag as u32);
    }
    assert!(gated.wait_held(1), "no READ reached the store");
    let refused: Vec<ScsiCompletion> = (0..2)
        .map(|_| {
            session
                .completions()
                .recv_timeout(WAIT)
                .expect("a READ the store refused is answered")
        })
        .collect();
    for done in &refused {
        assert_eq!(done.status, sam_status::CHECK_CONDITION, "{done:?}");
        assert_eq!(sense_triple(&done.sense).0, 0x0b, "ABORTED COMMAND: {done:?}");
    }
    assert_ne!(refused[0].tag, refused[1].tag);
    assert_eq!(gated.held(), 1, "the refused READs never reached the store");
    assert!(rig.frontend().stats().deadline_escalations >= 1);
    let trigger = rig.frontend().wait_trigger(WAIT);
    assert!(
        matches!(&trigger, Some(TeardownTrigger::StoreFailed(why)) if why.contains("still with the store")),
        "{trigger:?}"
    );
    gated.set_abortable(true);
    let report = rig.frontend.take().expect("frontend").teardown(short_bounds());
    assert!(report.teardown.abort_proven, "{:?}", report.teardown);
    let held = session
        .completions()
        .recv_timeout(WAIT)
        .expect("the held READ is answered");
    assert!(refused.iter().all(|c| c.tag != held.tag), "{held:?}");
}

/// While the store refuses the backlog the worker fetches no more EXECs, but it still takes
/// SCST's management commands, which SCST queues first: an initiator logging in (ATTACH_SESS,
/// which SCST fails after 5 s unanswered) gets its session however long the store stays full.
#[test]
fn a_session_attaches_while_the_store_refuses_the_backlog() {
    let gated = GatedStore::new(RamStore::new(512, 8192, 256));
    let rig = Rig::with_config(
        "e2e-attach-full",
        512,
        8192,
        default_options(),
        Arc::new(gated.clone()),
        Arc::new(SgvPool::new(None, None, 1 << 30)),
        FrontendConfig {
            workers: 1,
            cmds_per_call: 8,
            ..FrontendConfig::default()
        },
    );
    gated.set_capacity(1);
    let session = rig.session(0);
    for tag in 1..=3u64 {
        submit_read(&session, tag, 8 * tag as u32);
    }
    assert!(gated.wait_held(1), "no READ reached the store");
    // The worker holds a backlog the store refuses.
    std::thread::sleep(Duration::from_millis(100));
    let attached = rig.kernel.attach_session(
        "e2e-attach-full",
        SessionSpec {
            initiator_name: "iqn.test:late-initiator".into(),
            target_name: "iqn.test:target".into(),
            lun: 1,
            rd_only: false,
        },
    );
    assert!(
        attached.is_ok(),
        "ATTACH_SESS behind a full store: {:?}",
        attached.err()
    );
    assert_eq!(gated.held(), 1, "the backlog stayed out of the store");
    gated.set_capacity(0);
    let deadline = std::time::Instant::now() + WAIT;
    let mut answered = 0;
    while answered < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "{answered} of 3 READs answered"
        );
        gated.release_all();
        if let Ok(done) = session.completions().recv_timeout(Duration::from_millis(20)) {
            assert_eq!(done.status, sam_status::GOOD, "{done:?}");
            answered += 1;
        }
    }
}
