//! End to end: initiator → loopback kernel → frontend → SCSI engine → store, and back.

use scst_accel_handler::abi::memory_reuse_type;
use scst_accel_handler::abi::on_free_cmd_type;
use scst_accel_handler::abi::parse_type;
use scst_accel_handler::abi::sam_status;
use scst_accel_handler::abi::tm_fn;
use scst_accel_handler::loopback::ScsiRequest;
use scst_accel_handler::store::ram::RamStore;
use scst_accel_handler::transport::register::default_options;
use scst_accel_handler::workload;
use scst_accel_handler::workload::Geometry;
use scst_accel_handler::workload::Mix;
use scst_accel_handler::workload::Pattern;
use scst_accel_handler::workload::WorkloadConfig;
use scst_accel_tests::execute;
use scst_accel_tests::GatedStore;
use scst_accel_tests::Rig;
use scst_accel_tests::WAIT;
use std::sync::Arc;
use std::time::Duration;

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
