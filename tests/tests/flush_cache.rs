//! FLUSH_CACHE as the kernel has it (scst_user.md §3.6): it suspends all of SCST's activity and
//! waits for every command in flight on any LUN, up to 90 s. The loopback model does the same
//! (a suspension spans every device of the kernel); the handler's teardown does not flush (the
//! close returns the buffers), and a refused allocation asks for a flush off the workers.

use scst_accel_dma::SgvPool;
use scst_accel_handler::abi::queue_type;
use scst_accel_handler::abi::sam_status;
use scst_accel_handler::frontend::FrontendConfig;
use scst_accel_handler::frontend::TeardownConfig;
use scst_accel_handler::loopback::KernelConfig;
use scst_accel_handler::loopback::LoopbackKernel;
use scst_accel_handler::loopback::ScsiRequest;
use scst_accel_handler::store::ram::RamStore;
use scst_accel_handler::store::Store;
use scst_accel_handler::transport::register::default_options;
use scst_accel_handler::transport::ScstUserFd;
use scst_accel_tests::GatedStore;
use scst_accel_tests::Rig;
use scst_accel_tests::WAIT;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

const BLOCK: u32 = 512;
const BLOCKS: u64 = 2048;

fn lun(kernel: &LoopbackKernel, name: &str, store: Arc<dyn Store>) -> Rig {
    let config = FrontendConfig {
        workers: 1,
        cmds_per_call: 8,
        ..FrontendConfig::default()
    };
    Rig::on_kernel(
        kernel.clone(),
        name,
        BLOCK,
        BLOCKS,
        default_options(),
        store,
        Arc::new(SgvPool::new(None, None, 1 << 30)),
        config,
        |fd| Arc::new(fd) as Arc<dyn ScstUserFd>,
    )
}

/// Two LUNs on one kernel; LUN B's store holds one WRITE.
fn two_luns() -> (Rig, Rig, GatedStore, scst_accel_handler::loopback::Session) {
    let kernel = LoopbackKernel::new(KernelConfig::default());
    let held = GatedStore::new(RamStore::new(BLOCK, BLOCKS, 2048));
    let a = lun(&kernel, "flush-a", Arc::new(RamStore::new(BLOCK, BLOCKS, 2048)));
    let b = lun(&kernel, "flush-b", Arc::new(held.clone()));
    let session = b.session(0);
    session
        .submit(ScsiRequest {
            tag: 1,
            cdb: vec![0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0],
            data_out: vec![7; BLOCK as usize],
            expected_data_in: 0,
            queue_type: queue_type::SIMPLE,
            timeout_secs: 60,
        })
        .expect("submit");
    assert!(held.wait_held(1), "LUN B's store holds its WRITE");
    (a, b, held, session)
}

/// The model: LUN A's FLUSH_CACHE waits for LUN B's command (the suspension is SCST-wide), and
/// returns once it completes.
#[test]
fn flush_cache_waits_for_another_luns_command() {
    let (a, _b, held, session) = two_luns();
    let flusher = std::thread::spawn(a.frontend().cache_flusher());
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !flusher.is_finished(),
        "FLUSH_CACHE returned while another LUN had a command in flight"
    );
    held.release_all();
    let deadline = Instant::now() + WAIT;
    while !flusher.is_finished() {
        assert!(Instant::now() < deadline, "FLUSH_CACHE never returned");
        std::thread::sleep(Duration::from_millis(5));
    }
    flusher.join().expect("flusher").expect("FLUSH_CACHE");
    let done = session
        .completions()
        .recv_timeout(WAIT)
        .expect("B's WRITE completes");
    assert_eq!(done.status, sam_status::GOOD);
    session.detach();
}

/// The handler: LUN A's teardown issues no FLUSH_CACHE (it would suspend every LUN until LUN
/// B's slow command ends, and hold A's close with it); SCST's close path returns A's buffers.
/// So A's teardown ends promptly while B holds its command, and B is served afterwards.
#[test]
fn a_teardown_is_not_held_by_another_luns_slow_command() {
    let (mut a, _b, held, session) = two_luns();
    let config = TeardownConfig {
        drain: Duration::from_millis(200),
        abort: Duration::from_secs(2),
        flush: Duration::from_millis(300),
    };
    let started = Instant::now();
    let report = a.frontend.take().expect("frontend").teardown(config);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "teardown took {took:?} behind another LUN's command"
    );
    assert!(
        report.teardown.steps.iter().all(|s| s.within_bound),
        "{:?}",
        report.teardown.steps
    );
    held.release_all();
    let done = session
        .completions()
        .recv_timeout(WAIT)
        .expect("B's WRITE completes");
    assert_eq!(done.status, sam_status::GOOD);
    session.detach();
}

/// SCST keeps finished commands' buffers cached until its purge (a minute or more). With the
/// buffer cap full of them, a command of another size is refused; the refusal makes the
/// handler ask SCST for them back (FLUSH_CACHE, on a thread of its own), so the command is
/// served within moments, not after the purge.
#[test]
fn a_refused_allocation_makes_scst_return_its_cached_buffers() {
    let kernel = LoopbackKernel::new(KernelConfig {
        purge_interval: Some(Duration::from_secs(600)),
        ..KernelConfig::default()
    });
    let config = FrontendConfig {
        workers: 1,
        cmds_per_call: 8,
        ..FrontendConfig::default()
    };
    let rig = Rig::on_kernel(
        kernel,
        "cap-flush",
        BLOCK,
        BLOCKS,
        default_options(),
        Arc::new(RamStore::new(BLOCK, BLOCKS, 2048)),
        Arc::new(SgvPool::new(None, None, 32 << 10)),
        config,
        |fd| Arc::new(fd) as Arc<dyn ScstUserFd>,
    );
    let session = rig.session(0);
    let read = |tag: u64, blocks: u8| {
        session
            .submit(ScsiRequest {
                tag,
                cdb: vec![0x28, 0, 0, 0, 0, 0, 0, 0, blocks, 0],
                data_out: Vec::new(),
                expected_data_in: u32::from(blocks) * BLOCK,
                queue_type: queue_type::SIMPLE,
                timeout_secs: 60,
            })
            .expect("submit");
        session.completions().recv_timeout(WAIT).expect("completion")
    };
    // A 32 KiB READ: its buffer fills the cap, and SCST keeps it cached afterwards.
    assert_eq!(read(1, 64).status, sam_status::GOOD);
    assert_eq!(rig.frontend().stats().cap_flushes, 0);
    // A 4 KiB READ needs a buffer of another size: refused until SCST gives the cached one back.
    let started = Instant::now();
    let mut tag = 2;
    loop {
        let done = read(tag, 8);
        if done.status == sam_status::GOOD {
            break;
        }
        assert!(
            matches!(done.status, sam_status::BUSY | sam_status::TASK_SET_FULL),
            "{done:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "still refused after {:?}",
            started.elapsed()
        );
        std::thread::sleep(Duration::from_millis(20));
        tag += 1;
    }
    let stats = rig.frontend().stats();
    assert!(stats.cap_flushes >= 1, "{stats:?}");
    assert!(
        stats.buffers.refused >= 1 || stats.busy >= 1,
        "the cap did refuse: {stats:?}"
    );
    session.detach();
}

/// A FLUSH_CACHE asked for from outside (SIGHUP's `cache_flusher`) is waited for by the
/// teardown as the cap's own flushes are, before the workers leave: the suspension waits for
/// every command in flight, this LUN's included, which nobody answers once they left, and a fd
/// with a thread inside an ioctl does not close (spec §5.1). Here LUN B's slow command holds
/// A's flush past the bound, and A's report says so (it said "within bound", not knowing).
#[test]
fn a_teardown_waits_for_a_flush_asked_for_outside() {
    let (mut a, _b, held, session) = two_luns();
    let flusher = std::thread::spawn(a.frontend().cache_flusher());
    std::thread::sleep(Duration::from_millis(100));
    assert!(!flusher.is_finished(), "the flush waits for B's command");
    let config = TeardownConfig {
        drain: Duration::from_millis(200),
        abort: Duration::from_secs(2),
        flush: Duration::from_millis(300),
    };
    let report = a.frontend.take().expect("frontend").teardown(config);
    let step = report
        .teardown
        .steps
        .iter()
        .find(|s| s.name == "return buffers")
        .expect("the step");
    assert!(!step.within_bound, "the flush was still in the kernel: {step:?}");
    held.release_all();
    let deadline = Instant::now() + WAIT;
    while !flusher.is_finished() {
        assert!(Instant::now() < deadline, "FLUSH_CACHE never returned");
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = flusher.join().expect("flusher");
    let done = session
        .completions()
        .recv_timeout(WAIT)
        .expect("B's WRITE completes");
    assert_eq!(done.status, sam_status::GOOD);
    session.detach();
}
