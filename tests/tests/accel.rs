//! The accelerator path end to end on the simulated SCA-1 board, healthy and under every
//! injected fault (docs/accelerator.md §5–§8): the workload finishes or fails commands with
//! sense, every command is answered, the handler stays up, nothing is read wrong, and the
//! IOMMU model sees no access to unmapped memory over the whole life of the board. The pool is
//! unmapped only under the teardown's unmap permit (`SimRemains::release`).

use scst_accel_boards::sim::Fault;
use scst_accel_handler::abi::sam_status;
use scst_accel_handler::frontend::TeardownTrigger;
use scst_accel_handler::loopback::ScsiRequest;
use scst_accel_handler::workload;
use scst_accel_handler::workload::Geometry;
use scst_accel_handler::workload::Mix;
use scst_accel_handler::workload::Pattern;
use scst_accel_handler::workload::WorkloadConfig;
use scst_accel_tests::sim::SimRig;
use scst_accel_tests::WAIT;
use std::time::Duration;

const BLOCKS: u64 = 16384;

/// The tests' workload: random, half reads, `max_commands` of `io_size` bytes, 8 deep, seed 5.
fn config(max_commands: u64, io_size: u32) -> WorkloadConfig {
    WorkloadConfig {
        pattern: Pattern::Random,
        mix: Mix::Mixed { read_percent: 50 },
        io_size,
        queue_depth: 8,
        duration: Duration::from_secs(20),
        max_commands: Some(max_commands),
        seed: 5,
        completion_timeout: WAIT,
        ..WorkloadConfig::default()
    }
}

fn run(rig: &SimRig, max_commands: u64, io_size: u32) -> workload::WorkloadReport {
    run_with(rig, &config(max_commands, io_size))
}

/// `config` on the rig's disk through one session, detached after.
fn run_with(rig: &SimRig, config: &WorkloadConfig) -> workload::WorkloadReport {
    let session = rig.rig.session(0);
    let geometry = Geometry {
        block_size: rig.rig.block_size,
        num_blocks: rig.rig.blocks,
    };
    let report =
        workload::run(std::slice::from_ref(&session), geometry, config, &mut |_| {}).expect("workload");
    session.detach();
    report
}

#[test]
fn healthy_board_moves_verified_data_with_zero_iommu_faults() {
    let rig = SimRig::new("accel-healthy", 512, BLOCKS, Duration::from_secs(5));
    // 64 KiB commands: several descriptors' worth of pages, some through scatter lists.
    let report = run(&rig, 600, 65536);
    assert_eq!(report.verify_errors, 0, "{:?}", report.first_errors);
    assert_eq!(report.scsi_errors, 0, "{:?}", report.first_errors);
    assert_eq!(report.unanswered, 0);
    assert!(report.verified_bytes > 0);
    let released = rig.release();
    assert_eq!(released.iommu_faults, 0);
    assert_eq!(released.mapped_after, 0, "pool unmapped everything");
    assert_eq!(released.leaked, 0);
}

/// One fault kind: the run must end with every command answered, no wrong data, no IOMMU
/// fault, everything unmapped.
fn survive(kind: &str, fault: Fault, expect_failures: bool) -> scst_accel_tests::sim::Released {
    let rig = SimRig::new(&format!("accel-{kind}"), 512, BLOCKS, Duration::from_millis(300));
    rig.sim.inject(fault);
    let report = run(&rig, 300, 4096);
    assert_eq!(report.unanswered, 0, "{kind}: {:?}", report.first_errors);
    assert_eq!(report.verify_errors, 0, "{kind}: {:?}", report.first_errors);
    if expect_failures {
        assert!(
            report.scsi_errors > 0,
            "{kind}: the fault should fail some commands"
        );
    }
    let stats = rig.rig.frontend().stats();
    assert_eq!(stats.reply_errors, 0, "{kind}: the kernel refused a reply");
    let released = rig.release();
    assert_eq!(released.iommu_faults, 0, "{kind}: {released:?}");
    assert_eq!(released.leaked, 0, "{kind}: {released:?}");
    assert_eq!(released.mapped_after, 0, "{kind}: {released:?}");
    released
}

#[test]
fn latency_only_slows_commands() {
    let released = survive("latency", "latency:200us".parse().expect("fault"), false);
    assert_eq!(
        (released.timeouts, released.resets, released.device_errors),
        (0, 0, 0),
        "{released:?}"
    );
}

#[test]
fn lost_completions_are_caught_by_the_deadline() {
    let released = survive(
        "never-complete",
        "never-complete:every=40".parse().expect("fault"),
        true,
    );
    assert!(released.timeouts > 0, "{released:?}");
}

#[test]
fn error_status_becomes_sense() {
    let released = survive("error", "error:every=10,status=5".parse().expect("fault"), true);
    assert!(released.device_errors > 0, "{released:?}");
}

#[test]
fn a_hung_engine_is_reset() {
    // Every queue's engine hangs at its first descriptor. With `hang:queue=0` one CI run
    // (2026-12-05) saw no command fail: which worker, hence which queue, takes the workload's
    // commands is the scheduler's choice, and commands that all go to queue 1 never meet the
    // hang (the likely reading; not reproduced in 52 runs here, under load or not).
    let released = survive("hang", "hang".parse().expect("fault"), true);
    assert!(
        released.resets > 0,
        "a hung engine only stops with a reset: {released:?}"
    );
}

#[test]
fn a_gone_device_fails_everything_and_nothing_waits() {
    survive("gone", "gone".parse().expect("fault"), true);
}

#[test]
fn a_fatal_device_is_reset() {
    survive("fatal", "fatal".parse().expect("fault"), true);
}

#[test]
fn unknown_tags_are_ignored() {
    let released = survive(
        "unknown-tag",
        "unknown-tag:every=20".parse().expect("fault"),
        false,
    );
    assert!(released.unknown_tags > 0, "{released:?}");
}

/// A completion that claims OK for fewer bytes than the request is refused by the driver; the
/// request's deadline fails it with sense, and no wrong data reaches the initiator.
#[test]
fn short_ok_completions_are_refused_and_failed_by_the_deadline() {
    let released = survive("short-ok", "short-ok:every=40".parse().expect("fault"), true);
    assert!(
        released.unknown_tags > 0,
        "refused entries are counted: {released:?}"
    );
    assert!(released.timeouts > 0, "{released:?}");
}

/// An occasional untrusted completion is only counted (above); a device that lies on most of
/// its completions climbs the recovery ladder (handler/src/store/accel.rs: at least
/// UNTRUSTED_MIN untrusted entries, one per UNTRUSTED_SHARE accepted, within TRUST_WINDOW):
/// stop or reset, in-flight requests failed ABORTED, restart. Still nothing is read wrong.
#[test]
fn a_device_that_keeps_lying_is_recovered_not_just_counted() {
    let rig = SimRig::new("accel-liar", 512, BLOCKS, Duration::from_millis(300));
    rig.sim.inject("unknown-tag:every=1".parse().expect("fault"));
    let report = run(&rig, 300, 4096);
    assert_eq!(report.unanswered, 0, "{:?}", report.first_errors);
    assert_eq!(report.verify_errors, 0, "{:?}", report.first_errors);
    let recoveries = rig
        .accel
        .counters()
        .untrusted_recoveries
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        recoveries > 0,
        "no recovery after every completion came with a lie"
    );
    let released = rig.release();
    assert_eq!(released.iommu_faults, 0, "{released:?}");
    assert_eq!(released.mapped_after, 0, "{released:?}");
}

#[test]
fn duplicate_completions_are_ignored() {
    let released = survive("duplicate", "duplicate:every=20".parse().expect("fault"), false);
    assert!(
        released.unknown_tags > 0,
        "duplicates are caught by the tag generation: {released:?}"
    );
}

#[test]
fn bad_phase_entries_are_not_trusted() {
    survive("bad-phase", "bad-phase:every=20".parse().expect("fault"), false);
}

#[test]
fn polling_mode_without_interrupts_moves_verified_data() {
    let rig = SimRig::with_interrupts("accel-poll", 512, BLOCKS, Duration::from_secs(5), false);
    let report = run(&rig, 400, 131072);
    assert_eq!(report.verify_errors, 0, "{:?}", report.first_errors);
    assert_eq!(report.scsi_errors, 0, "{:?}", report.first_errors);
    assert_eq!(report.unanswered, 0);
    let released = rig.release();
    assert_eq!(released.iommu_faults, 0);
    assert_eq!(released.mapped_after, 0);
}

/// The frontend's watchdog (a command's deadline, from its payload timeout capped by
/// configuration) catches lost completions even when the store's own timeout is far away.
#[test]
fn the_command_deadline_watchdog_aborts_lost_commands() {
    let frontend = scst_accel_handler::frontend::FrontendConfig {
        workers: 2,
        cmds_per_call: 8,
        max_command_timeout: Duration::from_millis(200),
        ..Default::default()
    };
    // Store-level timeout of a minute: only the frontend's deadline can end a lost command.
    let rig = SimRig::with_configs(
        "accel-watchdog",
        512,
        BLOCKS,
        Duration::from_secs(60),
        true,
        frontend,
    );
    rig.sim.inject("never-complete:every=25".parse().expect("fault"));
    let report = run(&rig, 200, 4096);
    assert_eq!(report.unanswered, 0, "{:?}", report.first_errors);
    assert_eq!(report.verify_errors, 0, "{:?}", report.first_errors);
    assert!(report.scsi_errors > 0, "lost commands are answered with sense");
    assert!(rig.rig.frontend().stats().deadline_escalations > 0);
    let released = rig.release();
    assert_eq!(released.iommu_faults, 0, "{released:?}");
    assert_eq!(released.mapped_after, 0, "{released:?}");
}

/// A board that goes away under load: the store reports its failure, which triggers the
/// frontend's teardown; the one sequence runs, and the pool is unmapped under the permit with
/// no IOMMU fault.
#[test]
fn a_gone_device_triggers_the_teardown_through_the_store() {
    let rig = SimRig::new("accel-gone-trigger", 512, BLOCKS, Duration::from_millis(300));
    rig.sim.inject("gone".parse().expect("fault"));
    let report = run(&rig, 100, 4096);
    assert_eq!(report.unanswered, 0, "{:?}", report.first_errors);
    let trigger = rig.rig.frontend().wait_trigger(WAIT);
    assert!(
        matches!(trigger, Some(TeardownTrigger::StoreFailed(_))),
        "{trigger:?}"
    );
    let (remains, mut frontend) = rig.teardown(SimRig::tight_bounds());
    assert_eq!(Some(frontend.teardown.trigger.clone()), trigger);
    assert!(frontend.teardown.unmap_permitted, "{:?}", frontend.teardown);
    let released = remains.release(frontend.unmap.take());
    assert!(released.unmapped, "{released:?}");
    assert_eq!(released.iommu_faults, 0, "{released:?}");
    assert_eq!(released.mapped_after, 0, "{released:?}");
}

/// Commands the device never completes (and a store timeout far away) are still in flight at
/// teardown: the drain times out, the abort step stops the queues (resetting if needed), the
/// commands are answered, the device leases end, and only then is the pool unmapped.
#[test]
fn teardown_aborts_lost_commands_then_unmaps_under_the_permit() {
    let rig = SimRig::new("accel-teardown-abort", 512, BLOCKS, Duration::from_secs(60));
    rig.sim.inject("never-complete:every=1".parse().expect("fault"));
    let session = rig.rig.session(0);
    let tags: Vec<u64> = (1..=4).collect();
    for &tag in &tags {
        session
            .submit(ScsiRequest {
                tag,
                cdb: vec![0x28, 0, 0, 0, 0, tag as u8 * 8, 0, 0, 8, 0],
                data_out: Vec::new(),
                expected_data_in: 4096,
                queue_type: scst_accel_handler::abi::queue_type::SIMPLE,
                timeout_secs: 60,
            })
            .expect("submit");
    }
    let deadline = std::time::Instant::now() + WAIT;
    while rig.rig.frontend().stats().leases_outstanding < 4 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    let stats = rig.rig.frontend().stats();
    assert_eq!((stats.inflight, stats.leases_outstanding), (4, 4), "{stats:?}");
    let dump = rig.rig.frontend().dump();
    assert_eq!(dump.matches("EXEC in store").count(), 4, "{dump}");
    let (remains, mut frontend) = rig.teardown(SimRig::tight_bounds());
    let t = &frontend.teardown;
    assert_eq!(t.trigger, TeardownTrigger::Requested);
    assert_eq!(t.in_flight_at_start, 4, "{t:?}");
    assert!(t.abort_proven && t.aborted >= 4, "{t:?}");
    assert_eq!((t.leases_outstanding, t.zombies_left), (0, 0), "{t:?}");
    for _ in &tags {
        let c = session.completions().recv_timeout(WAIT).expect("answered");
        assert_eq!(c.status, sam_status::CHECK_CONDITION, "{c:?}");
    }
    let released = remains.release(frontend.unmap.take());
    assert!(released.unmapped, "{released:?}");
    assert_eq!(released.iommu_faults, 0, "{released:?}");
    assert_eq!(released.mapped_after, 0, "{released:?}");
}

fn rig_polling(name: &str, completion_poll_per_mib: Duration) -> SimRig {
    let frontend = scst_accel_handler::frontend::FrontendConfig {
        workers: 2,
        cmds_per_call: 8,
        completion_poll_per_mib,
        ..Default::default()
    };
    // Commands stay on the board after their doorbell (the engine threads run them), or there
    // is nothing in flight to look for.
    SimRig::with_engine_threads(name, 512, BLOCKS, frontend)
}

/// With large commands in flight on the board and nothing else to do, a worker looks for their
/// completions before it sleeps on the interrupt (`completion_poll_per_mib`); with the setting
/// at zero it never does. Either way every byte verifies and the IOMMU sees no fault.
#[test]
fn workers_poll_the_board_for_large_commands_completions() {
    for (name, per_mib, polls) in [
        ("accel-poll", Duration::from_millis(1), true),
        ("accel-no-poll", Duration::ZERO, false),
    ] {
        let rig = rig_polling(name, per_mib);
        let report = run(&rig, 300, 128 << 10);
        assert_eq!(report.verify_errors, 0, "{:?}", report.first_errors);
        assert_eq!(report.scsi_errors, 0, "{:?}", report.first_errors);
        assert_eq!(report.unanswered, 0);
        let stats = rig.rig.frontend().stats();
        assert_eq!(stats.completion_polls > 0, polls, "{name}: {stats:?}");
        let released = rig.release();
        assert_eq!(released.iommu_faults, 0);
    }
}

/// The host short of MSI-X vectors (vfio-pci's TooFewVectors: 2 of the 4 asked for a queue
/// per worker): the disk starts anyway with 2 vectors, the 2 queues without one are polled,
/// the dump says which, and the disk serves verified data. Before, the bring-up failed with
/// TooFewVectors and the disk did not start.
#[test]
fn a_disk_with_four_workers_and_two_granted_vectors_serves_with_two_queues_polled() {
    let frontend = scst_accel_handler::frontend::FrontendConfig {
        workers: 4,
        cmds_per_call: 1,
        ..Default::default()
    };
    let rig = SimRig::with_granted_vectors("accel-2-of-4-vectors", 512, BLOCKS, frontend, 2);
    let config = WorkloadConfig {
        queue_depth: 16,
        seed: 11,
        ..config(800, 16384)
    };
    let report = run_with(&rig, &config);
    assert_eq!(report.verify_errors, 0, "{:?}", report.first_errors);
    assert_eq!(report.scsi_errors, 0, "{:?}", report.first_errors);
    assert_eq!(report.unanswered, 0);
    // Status: the disk's dump names the vectors and the polled queues.
    let dump = rig.rig.frontend().dump();
    assert!(
        dump.contains("2 MSI-X vectors for 4 queues: queues 2..3 polled"),
        "{dump}"
    );
    assert!(
        rig.sim.stats().interrupts > 0,
        "the two queues with a vector use it"
    );
    let released = rig.release();
    assert_eq!(released.iommu_faults, 0);
    assert_eq!(released.mapped_after, 0);
}
