//! The escalation ladder against the simulator's faults: stop and restart with commands the
//! device holds, recovery with commands in flight, a hung controller (admin timeout),
//! controller fatal status, a disable that never finishes (function reset), a shutdown that
//! never completes, a gone device.

use super::assert_released;
use super::buffer;
use super::config;
use super::fault;
use super::interposer::Interposer;
use super::interposer::InterposerConfig;
use super::ok;
use super::req;
use super::run;
use super::sim;
use super::verified_io;
use super::wait_until;
use super::Rig;
use crate::engine::Controller;
use crate::engine::DeviceCompletion;
use crate::engine::DeviceOp;
use crate::engine::EngineError;
use crate::engine::QueueEngine;
use crate::engine::Recovered;
use crate::engine::SubmitError;
use crate::nvme::NvmeConfig;
use crate::nvme::NvmeController;
use crate::nvme::NvmeError;
use crate::recovery::Turn;
use crate::sim::nvme::NvmeSimConfig;
use scst_accel_hal::DeviceBacking;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

/// The admin timeout of the tests that wait one out: short, so the test is, but it also bounds
/// the recovery's own admin commands, which at 200 ms timed out about once in 24 runs with
/// three test binaries in parallel on two loaded cores.
const SHORT_ADMIN_TIMEOUT: Duration = Duration::from_secs(1);

/// CAP.TO the interposer reports where a test waits out "up to CAP.TO": 1 = 500 ms.
const SHORT_CAP_TO: u8 = 1;

/// A controller behind the interposer, with CAP.TO = 500 ms.
fn interposed(id: &str, config: &NvmeConfig) -> (Rig, Arc<super::interposer::Knobs>) {
    let (device, handle) = sim(id, NvmeSimConfig::default());
    let (device, knobs) = Interposer::new(
        device,
        InterposerConfig {
            cap_to: Some(SHORT_CAP_TO),
        },
    );
    let device: Arc<dyn DeviceBacking> = device;
    (Rig::up_on(device, handle, config), knobs)
}

/// With the controller executing commands but never posting their completions, a stop still
/// succeeds (DELETE I/O SQ completes), and the requests are the caller's to abandon.
#[test]
fn stop_with_commands_the_device_never_completes_then_restart() {
    let mut rig = Rig::up("drv-never-complete", NvmeSimConfig::default(), &config());
    rig.sim.inject(fault("never-complete"));
    let commands = rig.sim.stats().commands;
    let q = &mut rig.queues[0];
    q.submit(&req(1, DeviceOp::Flush, 0, 0, &[])).expect("submit");
    q.submit(&req(2, DeviceOp::Flush, 0, 0, &[])).expect("submit");
    q.ring_doorbell();
    assert!(wait_until(|| rig.sim.stats().commands == commands + 2));
    let q = &mut rig.queues[0];
    assert!(q.oldest_submission().is_some());

    QueueEngine::stop(q).expect("stop");

    assert!(!q.is_running());
    let mut out = Vec::new();
    assert_eq!(q.reap(&mut out), 0, "no completion: {out:?}");
    assert_eq!(q.in_flight(), 2);
    let mut tags = q.abandon_all();
    tags.sort_unstable();
    assert_eq!(tags, vec![1, 2]);
    assert!(q.oldest_submission().is_none());
    rig.sim.clear_faults();
    QueueEngine::restart(q).expect("restart");
    assert!(q.is_running());
    verified_io(q, 8, 1);
    rig.finish();
}

/// A stop while the controller works through the queue: whatever the controller ran before the
/// DELETE I/O SQ completed comes back as a completion, whatever it had not fetched is implicitly
/// aborted (NVMe 1.4 §5.6) and is abandoned; each request exactly once. The buffer is unmapped
/// right after: a later DMA of an abandoned read would be an IOMMU fault, which the end of the
/// test checks for.
#[test]
fn stop_while_the_device_is_busy_accounts_for_every_request_once() {
    let mut rig = Rig::up("drv-busy-stop", NvmeSimConfig::default(), &config());
    let buf = buffer(&rig.ctrl, 4096);
    rig.sim.inject(fault("latency:20ms"));
    let q = &mut rig.queues[0];
    for tag in 0..6 {
        q.submit(&req(tag, DeviceOp::Read, tag, 512, &[(buf.iova(), 512)]))
            .expect("submit");
    }
    q.ring_doorbell();

    QueueEngine::stop(q).expect("stop");

    let mut out: Vec<DeviceCompletion> = Vec::new();
    q.reap(&mut out);
    assert!(out.iter().all(|c| c == &ok(c.user_tag)), "{out:?}");
    let abandoned = q.abandon_all();
    let mut seen: Vec<u64> = out.iter().map(|c| c.user_tag).chain(abandoned).collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..6).collect::<Vec<_>>(), "each request exactly once");
    drop(buf);
    rig.sim.clear_faults();
    QueueEngine::restart(q).expect("restart");
    verified_io(q, 16, 2);
    rig.finish();
}

/// A hung controller holds commands on every queue; recovery resets it, every queue sees the
/// reset, refuses to restart with requests in flight, abandons them and serves again.
#[test]
fn recover_with_commands_in_flight_then_restart_serves_again() {
    let mut rig = Rig::up("drv-recover", NvmeSimConfig::default(), &config());
    let buf = buffer(&rig.ctrl, 8192);
    rig.sim.inject(fault("hang"));
    for (i, q) in rig.queues.iter_mut().enumerate() {
        for t in 0..3 {
            q.submit(&req(
                10 * i as u64 + t,
                DeviceOp::Read,
                t,
                512,
                &[(buf.iova(), 512)],
            ))
            .expect("submit");
        }
        q.ring_doorbell();
        assert_eq!(q.in_flight(), 3);
    }
    assert_eq!(rig.ctrl.reset_count(), 0);

    Controller::recover(rig.ctrl.as_ref()).expect("recover");

    assert_eq!(rig.ctrl.reset_count(), 1);
    for (i, q) in rig.queues.iter_mut().enumerate() {
        assert!(!q.is_running(), "a queue sees the reset");
        assert_eq!(
            q.submit(&req(99, DeviceOp::Flush, 0, 0, &[])),
            Err(SubmitError::NotRunning)
        );
        assert!(
            matches!(QueueEngine::restart(q), Err(EngineError::Failed { .. })),
            "in flight"
        );
        let mut tags = q.abandon_all();
        tags.sort_unstable();
        let base = 10 * i as u64;
        assert_eq!(tags, vec![base, base + 1, base + 2]);
        QueueEngine::restart(q).expect("restart");
        let out = run(q, &[req(50, DeviceOp::Read, 0, 512, &[(buf.iova(), 512)])]);
        assert_eq!(out, vec![ok(50)]);
        assert_eq!(q.unknown_tags(), 0);
    }
    drop(buf);
    rig.finish();
}

/// A hung controller with I/O in flight: the queue's stop (DELETE I/O SQ) times out within
/// the admin timeout, recovery resets the controller, the requests are abandoned, the queues
/// are re-created, and data written afterwards reads back.
#[test]
fn a_hung_controller_times_out_stop_then_recovery_serves_verified_io() {
    let short = NvmeConfig {
        admin_timeout: SHORT_ADMIN_TIMEOUT,
        ..config()
    };
    let mut rig = Rig::up("drv-hang", NvmeSimConfig::default(), &short);
    let buf = buffer(&rig.ctrl, 4096);
    rig.sim.inject(fault("hang"));
    let q = &mut rig.queues[0];
    q.submit(&req(1, DeviceOp::Write, 0, 4096, &[(buf.iova(), 4096)]))
        .expect("submit");
    q.ring_doorbell();

    let err = QueueEngine::stop(q).expect_err("the delete never completes");

    match err {
        EngineError::Timeout { timeout, .. } => assert_eq!(timeout, SHORT_ADMIN_TIMEOUT),
        other => panic!("expected a timeout, got {other}"),
    }
    assert!(rig.ctrl.fatal().is_none(), "a hang is not a fatal status");
    Controller::recover(rig.ctrl.as_ref()).expect("recover");
    for q in &mut rig.queues {
        let expected: Vec<u64> = if q.qid() == 1 { vec![1] } else { vec![] };
        assert_eq!(q.abandon_all(), expected);
        QueueEngine::restart(q).expect("restart");
    }
    drop(buf);
    verified_io(&mut rig.queues[0], 0, 3);
    verified_io(&mut rig.queues[1], 64, 4);
    assert_eq!(rig.ctrl.admin_unknown_completions(), 0);
    rig.finish();
}

/// CSTS.CFS: the controller reports it, processes nothing, and a recovery brings I/O back.
#[test]
fn controller_fatal_status_is_reported_and_recovery_brings_io_back() {
    let mut rig = Rig::up("drv-cfs", NvmeSimConfig::default(), &config());
    let buf = buffer(&rig.ctrl, 4096);
    assert!(rig.ctrl.fatal().is_none());
    rig.sim.inject(fault("cfs"));
    let q = &mut rig.queues[0];
    q.submit(&req(1, DeviceOp::Read, 0, 512, &[(buf.iova(), 512)]))
        .expect("submit");
    q.ring_doorbell();

    let csts = Controller::fatal(rig.ctrl.as_ref()).expect("CSTS.CFS is reported");

    assert_ne!(csts & 0x2, 0, "CFS is CSTS bit 1: {csts:#x}");
    assert!(!Controller::is_gone(rig.ctrl.as_ref()));
    let q = &mut rig.queues[0];
    let err = QueueEngine::stop(q).expect_err("no admin command completes under CFS");
    assert!(!err.is_gone(), "{err}");
    Controller::recover(rig.ctrl.as_ref()).expect("recover");
    assert!(rig.ctrl.fatal().is_none(), "a controller reset clears CFS");
    for q in &mut rig.queues {
        let expected: Vec<u64> = if q.qid() == 1 { vec![1] } else { vec![] };
        assert_eq!(q.abandon_all(), expected);
        QueueEngine::restart(q).expect("restart");
    }
    drop(buf);
    verified_io(&mut rig.queues[0], 0, 5);
    verified_io(&mut rig.queues[1], 32, 6);
    rig.finish();
}

/// CC.EN = 0 that never brings CSTS.RDY to 0 (the interposer drops the write): after CAP.TO
/// the driver resets the function (the simulator's function reset), and the controller is
/// disabled; a recovery then brings it back.
#[test]
fn a_stuck_disable_escalates_to_a_function_reset() {
    let (rig, knobs) = interposed("drv-stuck-disable", &config());
    let resets = rig.sim.stats().resets;
    knobs.stuck_disable.store(true, Ordering::Release);

    Controller::reset(rig.ctrl.as_ref()).expect("reset through the function reset");

    assert!(knobs.dropped_disables.load(Ordering::Relaxed) >= 1);
    assert_eq!(knobs.function_resets.load(Ordering::Relaxed), 1);
    assert!(rig.sim.stats().resets > resets, "the simulator was reset");
    assert!(!rig.ctrl.is_enabled());
    let Rig {
        ctrl,
        mut queues,
        sim,
    } = rig;
    for q in &mut queues {
        assert!(!q.is_running());
        QueueEngine::stop(q).expect("a queue the controller no longer has is stopped");
    }
    drop(queues); // not on the device any more: no admin commands
    ctrl.recover().expect("recover");
    assert!(ctrl.is_enabled());
    ctrl.shutdown().expect("shutdown");
    drop(ctrl);
    assert_released(&sim);
}

/// Another thread's controller reset whose disable has not finished (the interposer drops the
/// CC.EN = 0 write, so only the function reset after CAP.TO stops the controller): a queue with
/// a command on the device that stops meanwhile must not report itself stopped, which lets
/// its caller fail the command and reuse its buffer, before that reset proved the controller
/// stopped. A stop bounded shorter than that reset fails within its bound, releasing nothing
/// (it used to wait up to 4 x CAP.TO + the admin timeout whatever its bound); once the reset
/// proved it, the stop succeeds.
#[test]
fn a_queue_stops_only_once_another_threads_reset_is_proven() {
    let (mut rig, knobs) = interposed("drv-reset-race", &config());
    rig.sim.inject(fault("never-complete"));
    let buf = buffer(&rig.ctrl, 4096);
    let commands = rig.sim.stats().commands;
    let q = &mut rig.queues[0];
    q.submit(&req(1, DeviceOp::Read, 0, 4096, &[(buf.iova(), 4096)]))
        .expect("submit");
    q.ring_doorbell();
    assert!(
        wait_until(|| rig.sim.stats().commands > commands),
        "the device took the read"
    );
    let resets = rig.sim.stats().resets;
    knobs.stuck_disable.store(true, Ordering::Release);
    let ctrl = Arc::clone(&rig.ctrl);
    let resetter = std::thread::spawn(move || Controller::reset(ctrl.as_ref()).map_err(|e| e.to_string()));
    assert!(wait_until(|| !rig.ctrl.is_enabled()), "the reset started");
    let start = Instant::now();

    let err = QueueEngine::stop_within(&mut rig.queues[0], Duration::from_millis(100))
        .expect_err("no proof within the stop's bound");

    assert!(matches!(err, EngineError::StopPending { .. }), "{err}");
    assert!(
        start.elapsed() < Duration::from_millis(400),
        "the stop outlasted its bound: {:?}",
        start.elapsed()
    );
    assert_eq!(knobs.function_resets.load(Ordering::Relaxed), 0);
    assert_eq!(rig.queues[0].in_flight(), 1, "nothing released");
    resetter.join().expect("resetter").expect("reset");
    assert_eq!(
        knobs.function_resets.load(Ordering::Relaxed),
        1,
        "the other thread's reset ended with the function reset"
    );
    assert!(rig.sim.stats().resets > resets, "the controller was reset");
    QueueEngine::stop_within(&mut rig.queues[0], Duration::from_millis(100))
        .expect("stopped once the reset is proven");
    assert_eq!(rig.queues[0].abandon_all(), vec![1]);
    rig.sim.clear_faults();
    finish_after_reset(rig, buf);
}

/// A controller reset that fails (the disable never finishes, nor does the function reset)
/// proves nothing: a queue that stops afterwards resets again rather than report itself
/// stopped, and reports the failure while the controller may still DMA.
#[test]
fn a_failed_reset_stops_no_queue() {
    let (mut rig, knobs) = interposed("drv-reset-fails", &config());
    rig.sim.inject(fault("never-complete"));
    let buf = buffer(&rig.ctrl, 4096);
    let q = &mut rig.queues[0];
    q.submit(&req(1, DeviceOp::Read, 0, 4096, &[(buf.iova(), 4096)]))
        .expect("submit");
    q.ring_doorbell();
    knobs.stuck_disable.store(true, Ordering::Release);
    knobs.function_reset_fails.store(true, Ordering::Release);
    Controller::reset(rig.ctrl.as_ref()).expect_err("neither the disable nor the function reset works");

    let err = QueueEngine::stop_within(&mut rig.queues[0], Duration::from_millis(100))
        .expect_err("no proof that the controller stopped");

    assert!(!err.is_gone(), "{err}");
    assert_eq!(rig.queues[0].in_flight(), 1, "the request is still the device's");
    assert_eq!(
        knobs.function_resets.load(Ordering::Relaxed),
        2,
        "the stop reset again"
    );
    // Once a reset works, the stop succeeds, and leaves the controller disabled as the
    // caller's reset meant it: no recovery.
    knobs.function_reset_fails.store(false, Ordering::Release);
    QueueEngine::stop_within(&mut rig.queues[0], Duration::from_millis(100)).expect("stop");
    assert_eq!(rig.queues[0].abandon_all(), vec![1]);
    assert!(!rig.ctrl.is_enabled(), "left disabled");
    assert_eq!(rig.ctrl.reset_count(), 0);
    rig.sim.clear_faults();
    finish_after_reset(rig, buf);
}

/// A recovery whose reset fails (the disable never finishes, nor does the function reset)
/// leaves the controller disabled with nothing proving the end of DMA. A queue that stops
/// afterwards must reset the controller itself, and that reset is now a recovery's (one at a
/// time, through the recovery word): the controller is enabled again and its reset count
/// moves, so every queue restarts and serves. It used to be a plain reset, which left the
/// controller disabled and the count where it was: every restart failed (`Disabled`) until
/// the store gave up. After a caller's own reset (`a_failed_reset_stops_no_queue`) the
/// controller stays disabled.
#[test]
fn a_stop_after_a_failed_recovery_recovers_the_controller() {
    let (mut rig, knobs) = interposed("drv-recovery-fails", &config());
    rig.sim.inject(fault("never-complete"));
    let buf = buffer(&rig.ctrl, 4096);
    let commands = rig.sim.stats().commands;
    let q = &mut rig.queues[0];
    q.submit(&req(1, DeviceOp::Read, 0, 4096, &[(buf.iova(), 4096)]))
        .expect("submit");
    q.ring_doorbell();
    assert!(
        wait_until(|| rig.sim.stats().commands > commands),
        "the device took the read"
    );
    knobs.stuck_disable.store(true, Ordering::Release);
    knobs.function_reset_fails.store(true, Ordering::Release);
    rig.ctrl
        .recover()
        .expect_err("neither the disable nor the function reset works");
    assert!(!rig.ctrl.is_enabled());
    knobs.function_reset_fails.store(false, Ordering::Release);

    QueueEngine::stop_within(&mut rig.queues[0], Duration::from_millis(100))
        .expect("stopped by its own recovery's reset");

    assert_eq!(rig.queues[0].abandon_all(), vec![1]);
    assert_eq!(
        knobs.function_resets.load(Ordering::Relaxed),
        2,
        "the failed recovery's function reset, then the stop's"
    );
    assert!(rig.ctrl.is_enabled(), "the controller serves again");
    assert_eq!(rig.ctrl.reset_count(), 1, "the stop's reset moved the count");
    assert_eq!(
        QueueEngine::recoveries(&rig.queues[0]),
        1,
        "the queue reports the recovery its stop ran"
    );
    assert_eq!(QueueEngine::recoveries(&rig.queues[1]), 0);
    rig.sim.clear_faults();
    for (i, q) in rig.queues.iter_mut().enumerate() {
        q.restart().expect("restart after the stop's recovery");
        verified_io(q, 16 * i as u64, 2 + i as u8);
    }
    drop(buf);
    rig.finish();
}

/// A queue that must reset the controller itself while another thread's recovery runs (here
/// one the test stands in for, begun after the queue last looked: no reset of it under way
/// yet) waits for that recovery, whose reset is the proof, instead of resetting the
/// controller under it: a bounded stop fails within its bound, resetting nothing. Once that
/// recovery ended without proof, the stop recovers the controller itself.
#[test]
fn a_stop_waits_for_a_recovery_under_way_rather_than_reset_under_it() {
    let (mut rig, knobs) = interposed("drv-stop-meets-recovery", &config());
    rig.sim.inject(fault("never-complete"));
    let buf = buffer(&rig.ctrl, 4096);
    let commands = rig.sim.stats().commands;
    let q = &mut rig.queues[0];
    q.submit(&req(1, DeviceOp::Read, 0, 4096, &[(buf.iova(), 4096)]))
        .expect("submit");
    q.ring_doorbell();
    assert!(
        wait_until(|| rig.sim.stats().commands > commands),
        "the device took the read"
    );
    knobs.stuck_disable.store(true, Ordering::Release);
    knobs.function_reset_fails.store(true, Ordering::Release);
    rig.ctrl
        .recover()
        .expect_err("neither the disable nor the function reset works");
    knobs.function_reset_fails.store(false, Ordering::Release);
    let function_resets = knobs.function_resets.load(Ordering::Relaxed);
    let resets = rig.sim.stats().resets;
    let (word, _) = rig.ctrl.recovery_state();
    word.stand_in(7, true, false);
    let start = Instant::now();

    let err = QueueEngine::stop_within(&mut rig.queues[0], Duration::from_millis(100))
        .expect_err("no proof within the stop's bound");

    assert!(matches!(err, EngineError::StopPending { .. }), "{err}");
    assert!(
        start.elapsed() < Duration::from_millis(400),
        "the stop outlasted its bound: {:?}",
        start.elapsed()
    );
    assert_eq!(
        knobs.function_resets.load(Ordering::Relaxed),
        function_resets,
        "the stop reset nothing"
    );
    assert_eq!(rig.sim.stats().resets, resets, "the stop reset nothing");
    assert_eq!(rig.queues[0].in_flight(), 1, "nothing released");
    word.stand_in(7, false, false);
    QueueEngine::stop_within(&mut rig.queues[0], Duration::from_millis(100))
        .expect("stopped by its own recovery's reset");
    assert_eq!(rig.queues[0].abandon_all(), vec![1]);
    assert!(rig.ctrl.is_enabled());
    assert_eq!(rig.ctrl.reset_count(), 1);
    rig.sim.clear_faults();
    for (i, q) in rig.queues.iter_mut().enumerate() {
        q.restart().expect("restart after the stop's recovery");
        verified_io(q, 16 * i as u64, 2 + i as u8);
    }
    drop(buf);
    rig.finish();
}

/// A caller's reset (the teardown's, or a store's that gave up: it unmaps memory on the strength
/// of it) that runs while a recovery is between its own reset and its enable must not be undone
/// by that enable: the recovery gives way, resets the controller again and fails
/// (`Disabled`), leaving it disabled with its reset count unmoved. The reset never takes the
/// recovery's turn, and the recovery used to go on and enable the controller the reset had
/// just disabled.
#[test]
fn a_recovery_gives_way_to_a_callers_reset_begun_during_it() {
    let (rig, knobs) = interposed("drv-recovery-meets-reset", &config());
    let buf = buffer(&rig.ctrl, 4096);
    knobs.hold_before_enable.store(true, Ordering::Release);
    let ctrl = Arc::clone(&rig.ctrl);
    let recovery = std::thread::spawn(move || ctrl.recover());
    assert!(
        knobs.wait_held(Duration::from_secs(5)),
        "the recovery reset the controller and is about to enable it"
    );
    assert!(!rig.ctrl.is_enabled());

    Controller::reset(rig.ctrl.as_ref()).expect("the caller's reset");
    knobs.release.store(true, Ordering::Release);
    let result = recovery.join().expect("recovery thread");

    assert!(matches!(result, Err(NvmeError::Disabled { .. })), "{result:?}");
    assert!(!rig.ctrl.is_enabled(), "left disabled, as the reset meant");
    assert_eq!(rig.ctrl.registers().cc() & 1, 0, "CC.EN = 0");
    assert_eq!(rig.ctrl.registers().csts() & 1, 0, "CSTS.RDY = 0");
    assert_eq!(rig.ctrl.reset_count(), 0, "no recovery counted");
    assert_eq!(
        rig.ctrl.recovery_state().0.last_outcome(),
        Some(false),
        "a failed recovery"
    );
    finish_after_reset(rig, buf);
}

/// A stop that must recover the controller itself (a recovery's reset proved nothing) looks
/// at what the callers meant, then takes the recovery's turn. A caller's reset or shutdown
/// that begins in between (its count taken, the controller not yet touched) means the
/// controller is to stay disabled: once the turn is its own the stop looks again, withdraws,
/// and resets the controller plainly for its proof. It used to recover it, enabling a
/// controller the teardown was disabling.
#[test]
fn a_stop_does_not_recover_a_controller_a_caller_began_to_disable() {
    let (mut rig, knobs, buf) = failed_recovery_with_a_read("drv-stop-meets-teardown");
    rig.ctrl.before_turn(2);

    QueueEngine::stop_within(&mut rig.queues[0], Duration::from_millis(100))
        .expect("stopped by its own plain reset");

    assert_eq!(rig.queues[0].abandon_all(), vec![1]);
    assert_eq!(
        knobs.function_resets.load(Ordering::Relaxed),
        2,
        "the failed recovery's function reset, then the stop's"
    );
    assert!(!rig.ctrl.is_enabled(), "left disabled, as the caller meant");
    assert_eq!(rig.ctrl.reset_count(), 0, "no recovery");
    rig.sim.clear_faults();
    finish_after_reset(rig, buf);
}

/// A stop that must recover the controller itself finds, once the recovery's turn is its own,
/// that another recovery ran to its end between its look and its turn (its reset is the
/// proof, and the controller serves again): it withdraws its turn instead of recovering the
/// controller a second time, which failed every other queue's requests in flight for nothing.
#[test]
fn a_stop_does_not_recover_again_after_a_recovery_that_ended_before_its_turn() {
    let (mut rig, knobs, buf) = failed_recovery_with_a_read("drv-stop-after-recovery");
    rig.ctrl.before_turn(1);

    QueueEngine::stop_within(&mut rig.queues[0], Duration::from_millis(100))
        .expect("stopped by the other recovery's reset");

    assert_eq!(rig.queues[0].abandon_all(), vec![1]);
    assert_eq!(
        knobs.function_resets.load(Ordering::Relaxed),
        2,
        "the failed recovery's function reset, then the other recovery's"
    );
    assert!(rig.ctrl.is_enabled(), "the controller serves");
    assert_eq!(rig.ctrl.reset_count(), 1, "one recovery, not two");
    assert_eq!(
        QueueEngine::recoveries(&rig.queues[0]),
        0,
        "the stop ran no recovery of its own"
    );
    assert_eq!(rig.ctrl.recovery_state().0.last_outcome(), Some(true));
    rig.sim.clear_faults();
    for (i, q) in rig.queues.iter_mut().enumerate() {
        q.restart().expect("restart after the recovery");
        verified_io(q, 16 * i as u64, 2 + i as u8);
    }
    drop(buf);
    rig.finish();
}

/// A caller that read the reset count, chose to recover, and comes for its turn after another
/// recovery ran to its end meanwhile (the store: its check, then `recover_since`) shares that
/// recovery instead of resetting a controller that serves again: one recovery, one function
/// reset, and the queue re-created after the first recovery keeps serving. It used to take
/// the turn and recover the controller a second time. With nothing ended since its look it
/// still recovers.
#[test]
fn a_recovery_that_ended_since_the_callers_look_is_shared_not_run_again() {
    let mut rig = Rig::up("drv-recovered-since", NvmeSimConfig::default(), &config());
    let buf = buffer(&rig.ctrl, 4096);
    let seen = rig.ctrl.reset_count();
    let resets = rig.sim.stats().resets;
    assert_eq!(
        Controller::recover(rig.ctrl.as_ref()).expect("another queue's recovery"),
        Recovered::Ran
    );
    QueueEngine::restart(&mut rig.queues[0]).expect("restart after that recovery");

    assert_eq!(
        Controller::recover_since(rig.ctrl.as_ref(), seen).expect("the ended recovery is shared"),
        Recovered::Shared
    );

    assert_eq!(rig.ctrl.reset_count(), 1, "one recovery, not two");
    assert_eq!(rig.sim.stats().resets - resets, 1, "one reset of the controller");
    assert!(rig.queues[0].is_running(), "no second reset deleted it");
    let out = run(
        &mut rig.queues[0],
        &[req(1, DeviceOp::Read, 0, 512, &[(buf.iova(), 512)])],
    );
    assert_eq!(out, vec![ok(1)], "it serves");

    assert_eq!(
        Controller::recover_since(rig.ctrl.as_ref(), 1).expect("a recovery of its own"),
        Recovered::Ran,
        "nothing ended since this look"
    );
    assert_eq!(rig.ctrl.reset_count(), 2);
    for q in &mut rig.queues {
        let _ = q.abandon_all();
        QueueEngine::restart(q).expect("restart after the second recovery");
    }
    drop(buf);
    rig.finish();
}

/// A rig whose queue 0 has a READ (into the buffer returned) on the controller, never
/// completed, after a recovery whose reset failed (the disable never finishes, nor did the
/// function reset, which works again now): nothing proves the end of the READ's DMA.
fn failed_recovery_with_a_read(
    id: &str,
) -> (Rig, Arc<super::interposer::Knobs>, scst_accel_dma::MappedRegion) {
    let (mut rig, knobs) = interposed(id, &config());
    rig.sim.inject(fault("never-complete"));
    let buf = buffer(&rig.ctrl, 4096);
    let commands = rig.sim.stats().commands;
    let q = &mut rig.queues[0];
    q.submit(&req(1, DeviceOp::Read, 0, 4096, &[(buf.iova(), 4096)]))
        .expect("submit");
    q.ring_doorbell();
    assert!(
        wait_until(|| rig.sim.stats().commands > commands),
        "the device took the read"
    );
    knobs.stuck_disable.store(true, Ordering::Release);
    knobs.function_reset_fails.store(true, Ordering::Release);
    rig.ctrl
        .recover()
        .expect_err("neither the disable nor the function reset works");
    assert!(!rig.ctrl.is_enabled());
    knobs.function_reset_fails.store(false, Ordering::Release);
    (rig, knobs, buf)
}

/// A stop that must recover the controller itself and finds a turn taken waits for it; when
/// that turn is withdrawn (nothing reset, the failed recovery's outcome the word again), the
/// stop takes a turn again and recovers the controller itself, instead of failing with
/// `Disabled` as though a recovery had ended without proof.
#[test]
fn a_stop_waiting_for_a_withdrawn_turn_recovers_the_controller_itself() {
    let (mut rig, knobs, buf) = failed_recovery_with_a_read("drv-stop-withdrawn-turn");
    let ctrl = Arc::clone(&rig.ctrl);
    let (word, _) = ctrl.recovery_state();
    let Turn::Mine(turn) = word.begin() else {
        panic!("no recovery runs");
    };
    std::thread::scope(|scope| {
        let stop = scope.spawn(|| QueueEngine::stop(&mut rig.queues[0]));
        std::thread::sleep(Duration::from_millis(50));
        assert!(!stop.is_finished(), "the stop waits for the turn taken");
        turn.withdraw();
        stop.join()
            .expect("stop")
            .expect("stopped by its own recovery's reset");
    });

    assert_eq!(rig.queues[0].abandon_all(), vec![1]);
    assert_eq!(
        knobs.function_resets.load(Ordering::Relaxed),
        2,
        "the failed recovery's function reset, then the stop's"
    );
    assert!(rig.ctrl.is_enabled(), "the controller serves again");
    assert_eq!(rig.ctrl.reset_count(), 1, "the stop's reset moved the count");
    assert_eq!(
        QueueEngine::recoveries(&rig.queues[0]),
        1,
        "the queue reports the recovery its stop ran"
    );
    drop(ctrl);
    rig.sim.clear_faults();
    for (i, q) in rig.queues.iter_mut().enumerate() {
        q.restart().expect("restart after the stop's recovery");
        verified_io(q, 16 * i as u64, 2 + i as u8);
    }
    drop(buf);
    rig.finish();
}

/// A recovery held after its enable, while it waits for SET FEATURES (the admin queue serves,
/// its reset count has not moved): another thread's queue restart must not re-create its I/O
/// queue. It used to, and took requests the store then failed ABORTED when the count moved
/// (it fails a queue's requests when the function's reset count moves), while the controller
/// could still run them and move data into buffers reused meanwhile. The restart is refused
/// with `ResetUnderWay`, which the store retries; once the recovery published its count,
/// every queue restarts and serves.
#[test]
fn no_queue_is_re_created_before_a_recovery_publishes_its_reset_count() {
    let (mut rig, knobs) = interposed("drv-restart-in-recovery", &config());
    verified_io(&mut rig.queues[1], 0, 1);
    // SET FEATURES is still pending when the recovery first looks: it is held there.
    rig.sim.inject(fault("latency:100ms"));
    knobs.hold_after_enable.store(true, Ordering::Release);
    let ctrl = Arc::clone(&rig.ctrl);
    let recovery = std::thread::spawn(move || ctrl.recover().map_err(|e| e.to_string()));
    assert!(
        knobs.wait_held(Duration::from_secs(5)),
        "the recovery reached its SET FEATURES"
    );
    assert!(rig.ctrl.is_enabled(), "the admin queue serves again");
    assert_eq!(rig.ctrl.reset_count(), 0, "the count has not moved");

    let refused = rig.queues[1].restart();

    assert!(
        matches!(refused, Err(NvmeError::ResetUnderWay { queue: 2, .. })),
        "restart during the recovery: {refused:?}"
    );
    assert!(!rig.queues[1].is_running());
    let buf = buffer(&rig.ctrl, 4096);
    assert_eq!(
        rig.queues[1].submit(&req(7, DeviceOp::Read, 0, 4096, &[(buf.iova(), 4096)])),
        Err(SubmitError::NotRunning),
        "the queue takes no request until it restarts"
    );
    knobs.release.store(true, Ordering::Release);
    recovery.join().expect("recovery thread").expect("recovery");
    assert_eq!(rig.ctrl.reset_count(), 1);
    rig.sim.clear_faults();
    for (i, q) in rig.queues.iter_mut().enumerate() {
        q.restart().expect("restart after the recovery");
        verified_io(q, 16 * i as u64, 2 + i as u8);
    }
    drop(buf);
    rig.finish();
}

/// A caller that arrives while a recovery runs shares that very recovery's outcome, even when it
/// arrives after the recovery published its reset count (no count move left for it to see): it
/// used to compare the count with one read before it found the recovery running, and so
/// reported a successful recovery as failed (`Disabled`, which the store takes for the end).
/// The test stands in for a recovery at that point, then ends it with success, then another
/// one with failure.
#[test]
fn a_caller_arriving_after_the_count_moved_shares_the_recoverys_outcome() {
    let rig = Rig::up("drv-late-waiter", NvmeSimConfig::default(), &config());
    for (generation, ok) in [(1u64, true), (2, false)] {
        let (word, resets) = rig.ctrl.recovery_state();
        word.stand_in(generation, true, false);
        if ok {
            resets.fetch_add(1, Ordering::SeqCst);
        }
        let waiter = {
            let ctrl = Arc::clone(&rig.ctrl);
            std::thread::spawn(move || ctrl.recover())
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !waiter.is_finished(),
            "the second caller waits for the running recovery"
        );
        word.stand_in(generation, false, ok);
        let result = waiter.join().expect("waiter");
        match ok {
            true => assert_eq!(
                result.expect("the recovery's success is shared"),
                Recovered::Shared,
                "the waiter ran no recovery of its own"
            ),
            false => assert!(matches!(result, Err(NvmeError::Disabled { .. })), "{result:?}"),
        }
    }
    // Nothing was reset: the count the stand-in moved goes back for the orderly end.
    rig.ctrl.recovery_state().1.fetch_sub(1, Ordering::SeqCst);
    rig.finish();
}

/// A caller that comes while another caller's turn is taken, which that caller then withdraws
/// (another recovery ended since its look, or a stop's proof came), does not share the outcome
/// the withdraw puts back: that recovery ended before this caller came, and its reset proves
/// nothing for requests submitted since. It takes the turn itself and recovers the controller.
/// It used to return `Shared` on that old success, and the store released the buffers of
/// requests no reset had ended.
#[test]
fn a_caller_waiting_for_a_withdrawn_turn_recovers_itself() {
    let mut rig = Rig::up("drv-withdrawn-turn", NvmeSimConfig::default(), &config());
    assert_eq!(rig.ctrl.recover().expect("an earlier recovery"), Recovered::Ran);
    let count = rig.ctrl.reset_count();
    let resets = rig.sim.stats().resets;
    let (word, _) = rig.ctrl.recovery_state();
    let Turn::Mine(turn) = word.begin() else {
        panic!("no recovery runs");
    };
    let waiter = {
        let ctrl = Arc::clone(&rig.ctrl);
        std::thread::spawn(move || ctrl.recover())
    };
    std::thread::sleep(Duration::from_millis(50));
    assert!(!waiter.is_finished(), "the caller waits for the turn taken");
    turn.withdraw();

    let result = waiter.join().expect("waiter");
    assert_eq!(
        result.expect("its own recovery"),
        Recovered::Ran,
        "not the earlier recovery's success"
    );
    assert_eq!(rig.ctrl.reset_count(), count + 1);
    assert!(rig.sim.stats().resets > resets, "the controller was reset");
    for q in &mut rig.queues {
        QueueEngine::stop(q).expect("stop");
        assert_eq!(q.abandon_all(), Vec::<u64>::new());
    }
    Controller::shutdown(rig.ctrl.as_ref()).expect("shutdown");
    rig.release();
}

/// A recovery of a hung controller may take 5 CAP.TO and two admin timeouts (a disable waiting
/// out CSTS.RDY = 1, then RDY = 0, a function reset, a second disable, the enable, SET
/// FEATURES): a second caller waits for as long. It used to give up after 2 CAP.TO and two
/// admin timeouts (3 s here, CAP.TO 500 ms and the admin timeout 1 s), report a timeout, and
/// the store gave up on a controller the recovery brought back. The test stands in for a
/// recovery that takes 3.6 s (within its 4.5 s), then ends it with success: the waiter shares it.
#[test]
fn a_second_caller_waits_as_long_as_a_recovery_may_take() {
    let config = NvmeConfig {
        admin_timeout: SHORT_ADMIN_TIMEOUT,
        ..config()
    };
    let (rig, _knobs) = interposed("drv-long-recovery", &config);
    let to = rig.ctrl.cap().ready_timeout();
    assert_eq!(to, Duration::from_millis(500));
    let worst = to * 5 + SHORT_ADMIN_TIMEOUT * 2;
    let takes = Duration::from_millis(3600);
    assert!(takes > to * 2 + SHORT_ADMIN_TIMEOUT * 2 && takes < worst);
    let (word, resets) = rig.ctrl.recovery_state();
    word.stand_in(1, true, false);
    let waiter = {
        let ctrl = Arc::clone(&rig.ctrl);
        std::thread::spawn(move || ctrl.recover())
    };
    std::thread::sleep(takes);
    assert!(
        !waiter.is_finished(),
        "the second caller still waits for the recovery: {:?}",
        waiter.join()
    );
    resets.fetch_add(1, Ordering::SeqCst);
    word.stand_in(1, false, true);
    waiter
        .join()
        .expect("waiter")
        .expect("the recovery's success is shared");
    // Nothing was reset: the count the stand-in moved goes back for the orderly end.
    resets.fetch_sub(1, Ordering::SeqCst);
    rig.finish();
}

/// After a reset: every queue stopped, the controller recovered and shut down, then the IOMMU
/// checked.
fn finish_after_reset(rig: Rig, buf: scst_accel_dma::MappedRegion) {
    let Rig {
        ctrl,
        mut queues,
        sim,
    } = rig;
    for q in &mut queues {
        QueueEngine::stop(q).expect("a queue the controller no longer has is stopped");
    }
    drop(queues);
    drop(buf);
    ctrl.recover().expect("recover");
    ctrl.shutdown().expect("shutdown");
    drop(ctrl);
    assert_released(&sim);
}

/// An enable slower than CAP.TO: bring-up fails with the timeout, and the disable after it
/// waits for CSTS.RDY = 1 before it clears CC.EN (clearing EN while RDY is still 0 after setting
/// it is undefined, NVMe 1.4 §3.1.5), then leaves the controller disabled.
#[test]
fn a_disable_during_a_slow_enable_waits_for_ready_first() {
    let (device, handle) = sim("drv-slow-enable", NvmeSimConfig::default());
    let (device, knobs) = Interposer::new(
        device,
        InterposerConfig {
            cap_to: Some(SHORT_CAP_TO),
        },
    );
    // RDY shows 300 ms after CAP.TO (500 ms), within the disable's own bound.
    knobs.ready_delay_millis.store(800, Ordering::Release);
    let device: Arc<dyn DeviceBacking> = device;

    let result = NvmeController::bring_up(Arc::clone(&device), &config());

    assert!(
        matches!(result, Err(NvmeError::Timeout { .. })),
        "RDY comes after CAP.TO: {:?}",
        result.err()
    );
    assert_eq!(
        knobs.disables_before_ready.load(Ordering::Relaxed),
        0,
        "CC.EN cleared while CSTS.RDY was still 0"
    );
    assert_eq!(device.bar0().read32(0x14) & 1, 0, "CC.EN = 0");
    assert_eq!(device.bar0().read32(0x1C) & 1, 0, "CSTS.RDY = 0");
    drop(device);
    assert_released(&handle);
}

/// CC.SHN with a controller that never reports shutdown complete and reports no RTD3E: the
/// shutdown fails within the configured default bound, and a reset still disables the
/// controller.
#[test]
fn a_shutdown_that_never_completes_is_bounded_then_reset_works() {
    let (mut rig, _knobs) = interposed("drv-shutdown-hang", &config());
    for q in &mut rig.queues {
        QueueEngine::stop(q).expect("stop");
    }
    rig.sim.inject(fault("shutdown-hang"));

    let err = Controller::shutdown(rig.ctrl.as_ref()).expect_err("SHST never reaches complete");

    match err {
        EngineError::Timeout { timeout, .. } => assert_eq!(timeout, config().shutdown_timeout),
        other => panic!("expected a timeout, got {other}"),
    }
    Controller::reset(rig.ctrl.as_ref()).expect("reset");
    assert!(!rig.ctrl.is_enabled());
    rig.release();
}

/// The shutdown bound, as Linux reads RTD3E: none reported → the default; otherwise RTD3E in
/// whole seconds (rounded up here, where Linux truncates), at least the default, at most 60 s.
#[test]
fn the_shutdown_bound_is_rtd3e_in_seconds_between_the_default_and_sixty() {
    let five = Duration::from_secs(5);
    let cases = [
        (0, five),
        (1, five),
        (5_000_000, five),
        (5_000_001, Duration::from_secs(6)),
        (20_500_000, Duration::from_secs(21)),
        (90_000_000, Duration::from_secs(60)),
    ];
    for (rtd3e, want) in cases {
        assert_eq!(crate::nvme::shutdown_timeout(rtd3e, five), want, "RTD3E {rtd3e}");
    }
    let short = Duration::from_millis(300);
    assert_eq!(crate::nvme::shutdown_timeout(1, short), Duration::from_secs(1));
    let long = Duration::from_secs(100);
    assert_eq!(crate::nvme::shutdown_timeout(1_000_000, long), long);
}

/// A controller whose normal shutdown takes longer than CAP.TO (500 ms) and than the default
/// bound (500 ms), but within the RTD3E it reports (1.5 s, so 2 s): the shutdown waits for it
/// and completes, where a wait bounded by CAP.TO gave up and reset a controller that was still
/// making its cache stable.
#[test]
fn a_shutdown_longer_than_cap_to_completes_within_rtd3e() {
    let sim_config = NvmeSimConfig {
        cap_to: SHORT_CAP_TO,
        rtd3e_micros: 1_500_000,
        shutdown_micros: 900_000,
        ..NvmeSimConfig::default()
    };
    let mut rig = Rig::up("drv-rtd3e-long", sim_config, &config());
    assert_eq!(rig.ctrl.shutdown_timeout(), Duration::from_secs(2));
    for q in &mut rig.queues {
        QueueEngine::stop(q).expect("stop");
    }
    let start = Instant::now();

    Controller::shutdown(rig.ctrl.as_ref()).expect("SHST complete within RTD3E");

    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "{:?}",
        start.elapsed()
    );
    assert!(!rig.ctrl.is_enabled());
    rig.release();
}

/// The other way round: RTD3E (1 s) shorter than CAP.TO (the simulator's 10 s), and a shutdown
/// that never completes: it is given up after the RTD3E bound, not after CAP.TO.
#[test]
fn a_shutdown_that_never_completes_is_given_up_after_rtd3e_not_cap_to() {
    let sim_config = NvmeSimConfig {
        rtd3e_micros: 1_000_000,
        ..NvmeSimConfig::default()
    };
    let mut rig = Rig::up("drv-rtd3e-short", sim_config, &config());
    assert_eq!(rig.ctrl.cap().ready_timeout(), Duration::from_secs(10));
    for q in &mut rig.queues {
        QueueEngine::stop(q).expect("stop");
    }
    rig.sim.inject(fault("shutdown-hang"));
    let start = Instant::now();

    let err = Controller::shutdown(rig.ctrl.as_ref()).expect_err("SHST never reaches complete");

    match err {
        EngineError::Timeout { timeout, .. } => assert_eq!(timeout, Duration::from_secs(1)),
        other => panic!("expected a timeout, got {other}"),
    }
    assert!(start.elapsed() < Duration::from_secs(5), "{:?}", start.elapsed());
    Controller::reset(rig.ctrl.as_ref()).expect("reset");
    rig.release();
}

#[test]
fn a_gone_device_is_reported() {
    let mut rig = Rig::up("drv-gone", NvmeSimConfig::default(), &config());
    rig.sim.inject(fault("gone"));
    assert!(Controller::is_gone(rig.ctrl.as_ref()));
    assert!(rig.ctrl.fatal().is_none());
    assert!(QueueEngine::stop(&mut rig.queues[0]).expect_err("gone").is_gone());
    assert!(Controller::recover(rig.ctrl.as_ref())
        .expect_err("gone")
        .is_gone());
    assert!(Controller::shutdown(rig.ctrl.as_ref())
        .expect_err("gone")
        .is_gone());
    assert!(rig.ctrl.dump_registers().contains("gone"));
    rig.release();

    let (device, handle) = sim("drv-gone-early", NvmeSimConfig::default());
    handle.inject(fault("gone"));
    let device: Arc<dyn DeviceBacking> = device;
    assert!(matches!(
        NvmeController::bring_up(device, &config()),
        Err(NvmeError::Gone { .. })
    ));
    assert_released(&handle);
}

/// A process killed with its controller enabled, I/O queues live and commands on the device
/// (what `kill -9` leaves when nothing resets the function on release): the next bring-up on
/// the same controller must disable it first (CC.EN = 0, RDY = 0 within CAP.TO), then serve
/// verified I/O, with no DMA fault on the way.
#[test]
fn a_controller_left_enabled_by_a_dead_driver_is_disabled_and_serves_again() {
    // Arrange: the first driver brings the controller up and dies with reads held by the device.
    let (device, sim) = sim("drv-left-enabled", NvmeSimConfig::default());
    sim.inject(fault("latency:20ms"));
    let (first, mut first_queues) =
        NvmeController::bring_up(device.clone() as Arc<dyn DeviceBacking>, &config()).expect("bring-up");
    let held = buffer(&first, 64 * 1024);
    let reqs: Vec<_> = (0..8u64)
        .map(|i| (i, (held.iova() + i * 8192, 8192u32)))
        .collect();
    for (tag, seg) in &reqs {
        first_queues[0]
            .submit(&req(
                *tag,
                DeviceOp::Read,
                tag * 16,
                8192,
                std::slice::from_ref(seg),
            ))
            .expect("submit");
    }
    first_queues[0].ring_doorbell();
    assert!(first.is_enabled());
    // The process dies: nothing of the first driver runs again. Its memory stays mapped, as
    // it would until the kernel tears the VFIO container down.
    std::mem::forget(held);
    std::mem::forget(first_queues);
    std::mem::forget(first);
    sim.clear_faults();

    // Act: a new driver on the same controller, in another IOVA window.
    let second = NvmeConfig {
        iova_base: 1 << 36,
        ..config()
    };
    let (ctrl, mut queues) = NvmeController::bring_up(device.clone() as Arc<dyn DeviceBacking>, &second)
        .expect("bring-up over a controller left enabled");

    // Assert: the controller was reset on the way (the first driver's queues are gone) and
    // serves verified I/O on every new queue.
    assert!(ctrl.is_enabled());
    for (i, q) in queues.iter_mut().enumerate() {
        verified_io(q, 4096 + 64 * i as u64, 40 + i as u8);
    }
    assert_eq!(sim.iommu().fault_count(), 0, "{:?}", sim.iommu().faults());
    for q in &mut queues {
        QueueEngine::stop(q).expect("stop");
    }
    Controller::shutdown(ctrl.as_ref()).expect("shutdown");
}

/// The shutdown of a controller whose I/O queues still exist deletes every I/O submission
/// queue, then every I/O completion queue, before the shutdown notification (NVMe 1.4 §7.6.2);
/// the queues, dropped afterwards, find the controller disabled and release their rings.
#[test]
fn a_shutdown_deletes_every_io_sq_then_every_io_cq_first() {
    let rig = Rig::up("drv-shutdown-deletes", NvmeSimConfig::default(), &config());
    assert_eq!(rig.queues.len(), 2);

    Controller::shutdown(rig.ctrl.as_ref()).expect("shutdown");

    use crate::sim::nvme::QueueDeletion;
    assert_eq!(
        rig.sim.deletions(),
        [
            QueueDeletion::Sq(1),
            QueueDeletion::Sq(2),
            QueueDeletion::Cq(1),
            QueueDeletion::Cq(2)
        ]
    );
    let stats = rig.sim.stats();
    assert_eq!(
        (stats.shutdown_notifications, stats.shutdowns_with_io_queues),
        (1, 0),
        "the notification came after the deletions"
    );
    assert!(!rig.ctrl.is_enabled());
    rig.release();
}

/// A queue stopped before the shutdown is not deleted again; a deletion that does not complete
/// (a hung controller) is given up after the admin timeout and the shutdown goes on.
#[test]
fn a_shutdown_skips_deleted_queues_and_goes_on_when_a_deletion_times_out() {
    let mut rig = Rig::up("drv-shutdown-delete-hang", NvmeSimConfig::default(), &config());
    QueueEngine::stop(&mut rig.queues[0]).expect("stop");
    rig.sim.inject(fault("hang"));
    let start = Instant::now();

    Controller::shutdown(rig.ctrl.as_ref()).expect("shutdown");

    let elapsed = start.elapsed();
    assert!(elapsed >= config().admin_timeout, "{elapsed:?}");
    assert!(elapsed < config().admin_timeout * 2, "{elapsed:?}");
    use crate::sim::nvme::QueueDeletion;
    assert_eq!(
        rig.sim.deletions(),
        [QueueDeletion::Sq(1), QueueDeletion::Cq(1)],
        "only the stop's"
    );
    assert_eq!(rig.sim.stats().shutdowns_with_io_queues, 1);
    rig.release();
}

/// An admin command whose submitter looked at the enabled flag before a reset took the admin
/// queue's lock is refused when it gets the lock after the reset cleared the flag: pushed onto
/// the rings a reset made fresh, it would run once the controller is enabled again, ahead of
/// the recovery's own commands. Here the test holds the lock while a submitter waits for it,
/// and clears the flag as a reset does first.
#[test]
fn an_admin_command_that_waited_for_a_reset_is_refused() {
    use crate::nvme::cmd::admin_opcode;
    use crate::nvme::cmd::Sqe;
    use crate::nvme::NvmeError;
    let rig = Rig::up("nvme-admin-race", NvmeSimConfig::default(), &config());
    let ctrl = Arc::clone(&rig.ctrl);
    let admin = rig.ctrl.admin_queue();
    let mut submitter = None;
    admin.with_state_locked(|| {
        let ctrl = Arc::clone(&ctrl);
        submitter = Some(std::thread::spawn(move || {
            let sqe = Sqe {
                opcode: admin_opcode::ABORT,
                cdw10: 0xffff << 16,
                ..Sqe::default()
            };
            ctrl.admin("ABORT", sqe)
        }));
        // Test code, not the driver's: the submitter is past its first look and waits here.
        std::thread::sleep(Duration::from_millis(50));
        admin.set_enabled(false);
    });
    let result = submitter.expect("spawned").join().expect("submitter");
    assert!(matches!(result, Err(NvmeError::Disabled { .. })), "{result:?}");
    admin.set_enabled(true);
    drop(ctrl);
    rig.finish();
}

/// A queue the controller still has although the driver holds it not live (a creation that
/// lost a race with a recovery: it ran after the recovery's enable) does not stop the queue
/// from ever being created again: the restart finds its ID in use, deletes it and creates it
/// anew. Here the test creates the stray queue itself, with the ID of a queue it stopped.
#[test]
fn a_restart_replaces_a_queue_created_across_a_recovery() {
    use crate::nvme::cmd::admin_opcode;
    use crate::nvme::cmd::Sqe;
    use crate::nvme::cmd::QUEUE_PC;
    let mut rig = Rig::up("nvme-stray-queue", NvmeSimConfig::default(), &config());
    QueueEngine::stop(&mut rig.queues[0]).expect("stop");
    let qid = 1u32;
    let (cq, sq) = (buffer(&rig.ctrl, 4096), buffer(&rig.ctrl, 4096));
    let size = 15 << 16;
    rig.ctrl
        .admin(
            "CREATE I/O CQ",
            Sqe {
                opcode: admin_opcode::CREATE_CQ,
                prp1: cq.iova(),
                cdw10: qid | size,
                cdw11: QUEUE_PC,
                ..Sqe::default()
            },
        )
        .expect("the stray CQ");
    rig.ctrl
        .admin(
            "CREATE I/O SQ",
            Sqe {
                opcode: admin_opcode::CREATE_SQ,
                prp1: sq.iova(),
                cdw10: qid | size,
                cdw11: QUEUE_PC | (qid << 16),
                ..Sqe::default()
            },
        )
        .expect("the stray SQ");
    rig.queues[0]
        .restart()
        .expect("the restart replaces the stray queue");
    verified_io(&mut rig.queues[0], 16, 3);
    drop((cq, sq));
    rig.finish();
}

/// The admin queue's reap runs under the admin lock: a controller that ignores the admin CQ
/// head doorbell and keeps writing valid-phase entries must not hold every admin user there.
/// One reap takes at most 31 of the 32 slots (what an honest controller can post before the
/// doorbell at the end of the reap), the next one the rest; a recovery brings the queue back.
#[test]
fn an_admin_reap_takes_at_most_one_ring_less_one_entry() {
    let mut rig = Rig::up("nvme-admin-flood", NvmeSimConfig::default(), &config());
    let admin = rig.ctrl.admin_queue();
    assert_eq!(admin.flood_and_reap(32), 31, "one reap, at most 31 entries");
    assert_eq!(admin.flood_and_reap(0), 1, "the next one takes the last");
    // The controller posted none of them: the admin rings no longer agree with it, until a
    // recovery starts them over.
    rig.ctrl.recover().expect("recovery");
    for q in &mut rig.queues {
        QueueEngine::stop(q).expect("stop");
        assert_eq!(q.abandon_all(), Vec::<u64>::new());
    }
    Controller::shutdown(rig.ctrl.as_ref()).expect("shutdown");
    rig.release();
}

/// A controller behind the interposer (CAP.TO = 500 ms) that answers every command 1.5 s late,
/// so an IDENTIFY outlasts the bring-up's admin timeout and is still executed, and that drops
/// the CC write clearing EN; and the bring-up's settings, with a 300 ms admin timeout.
fn late_and_stuck(
    id: &str,
) -> (
    Arc<Interposer>,
    crate::sim::nvme::NvmeSimHandle,
    Arc<super::interposer::Knobs>,
    NvmeConfig,
) {
    let (device, handle) = sim(id, NvmeSimConfig::default());
    let (device, knobs) = Interposer::new(
        device,
        InterposerConfig {
            cap_to: Some(SHORT_CAP_TO),
        },
    );
    handle.inject(fault("latency:1500ms"));
    knobs.stuck_disable.store(true, Ordering::Release);
    let config = NvmeConfig {
        admin_timeout: Duration::from_millis(300),
        ..config()
    };
    (device, handle, knobs, config)
}

/// Until the late IDENTIFY of [`late_and_stuck`] would have been executed (its DMA and its
/// completion), counted from `start`.
fn wait_out_the_late_identify(start: Instant) {
    std::thread::sleep((start + Duration::from_millis(2500)).saturating_duration_since(Instant::now()));
}

/// A bring-up whose IDENTIFY times out, on a controller that ignores the CC.EN clear: the
/// failure escalates to a function reset (as a controller reset does), which drops the
/// IDENTIFY, before the admin rings and the IDENTIFY buffer are unmapped. Unmapped after a
/// disable that proved nothing, the late IDENTIFY hit unmapped IOVAs.
#[test]
fn a_failed_bring_up_resets_the_function_before_unmapping() {
    let (device, handle, knobs, config) = late_and_stuck("drv-bring-up-stuck");
    let start = Instant::now();

    // Kept: a real function outlives the driver's failure, the simulated one with its handle.
    let _device = Arc::clone(&device);
    let Err(err) = NvmeController::bring_up(device, &config) else {
        panic!("the IDENTIFY times out, yet the bring-up succeeded");
    };

    assert!(matches!(err, NvmeError::Timeout { .. }), "{err}");
    assert!(knobs.dropped_disables.load(Ordering::Relaxed) >= 1);
    assert_eq!(
        knobs.function_resets.load(Ordering::Relaxed),
        1,
        "the stuck disable escalated to a function reset"
    );
    wait_out_the_late_identify(start);
    assert_released(&handle);
}

/// The same, but the function reset fails too: nothing proves the controller stopped, so the
/// admin rings and the IDENTIFY buffer stay mapped (leaked), and the late IDENTIFY's data and
/// completion land in memory still mapped for it, not on unmapped IOVAs.
#[test]
fn a_failed_bring_up_that_cannot_reset_keeps_its_dma_memory_mapped() {
    let (device, handle, knobs, config) = late_and_stuck("drv-bring-up-no-reset");
    knobs.function_reset_fails.store(true, Ordering::Release);
    let start = Instant::now();

    // Kept: a real function outlives the driver's failure, the simulated one with its handle.
    let _device = Arc::clone(&device);
    let Err(err) = NvmeController::bring_up(device, &config) else {
        panic!("the IDENTIFY times out, yet the bring-up succeeded");
    };

    assert!(matches!(err, NvmeError::Timeout { .. }), "{err}");
    assert_eq!(knobs.function_resets.load(Ordering::Relaxed), 1);
    wait_out_the_late_identify(start);
    let iommu = handle.iommu();
    assert_eq!(iommu.fault_count(), 0, "IOMMU faults: {:?}", iommu.faults());
    assert!(
        iommu.mappings() >= 3,
        "the admin rings and the IDENTIFY buffer stay mapped"
    );
    handle.clear_faults();
}

/// A controller left enabled by a driver that died, whose disable never finishes (the
/// interposer drops the CC.EN = 0 write) and whose function reset fails: the bring-up's first
/// disable fails, and the bring-up with it, after one disable and one function reset, with
/// nothing of its own left mapped: it maps nothing before CSTS.RDY = 0 is proven, so no memory
/// waits for a proof. It used to map its admin rings and IDENTIFY buffer first, then, that
/// disable failed, run the failure path's disable and function reset again (twice the waits),
/// and leak them.
#[test]
fn a_bring_up_whose_first_disable_fails_waits_once_and_maps_nothing() {
    let (device, handle) = sim("drv-first-disable-stuck", NvmeSimConfig::default());
    let (device, knobs) = Interposer::new(
        device,
        InterposerConfig {
            cap_to: Some(SHORT_CAP_TO),
        },
    );
    let device: Arc<dyn DeviceBacking> = device;
    let (first, first_queues) = NvmeController::bring_up(Arc::clone(&device), &config()).expect("bring-up");
    // The first driver dies with the controller enabled; its memory stays mapped, as it would
    // until the kernel tears its VFIO container down.
    std::mem::forget(first_queues);
    std::mem::forget(first);
    let mapped = handle.iommu().mappings();
    knobs.stuck_disable.store(true, Ordering::Release);
    knobs.function_reset_fails.store(true, Ordering::Release);
    // Another IOVA window, so that nothing of the first driver's is in the way of a mapping.
    let second = NvmeConfig {
        iova_base: 1 << 36,
        ..config()
    };

    let result = NvmeController::bring_up(Arc::clone(&device), &second);

    assert_eq!(
        knobs.dropped_disables.load(Ordering::Relaxed),
        1,
        "one CC.EN = 0 and its wait for CSTS.RDY = 0"
    );
    assert_eq!(knobs.function_resets.load(Ordering::Relaxed), 1);
    assert_eq!(
        handle.iommu().mappings(),
        mapped,
        "nothing of the failed bring-up is left mapped"
    );
    // The disable's error, the function reset's logged (`disable_or_reset`).
    assert!(
        matches!(result, Err(NvmeError::Timeout { .. })),
        "{:?}",
        result.err()
    );
    assert_eq!(handle.iommu().fault_count(), 0);
    knobs.stuck_disable.store(false, Ordering::Release);
    knobs.function_reset_fails.store(false, Ordering::Release);
}

/// A controller whose CAP.TO (500 ms) understates how long its enable takes (2 s) but that sets
/// CAP.CRMS.CRWMS and reports CRTO.CRWMT 4 s: the bring-up's enable, and a recovery's, wait for
/// CSTS.RDY = 1 up to CRWMT, as Linux's `nvme_enable_ctrl()` does (NVMe 2.0 §3.1.3.1, CRTO at
/// offset 68h, §3.1.3.21), and the reset and recovery bounds derived from the ready timeout
/// grow with it. The bring-up used to give up after CAP.TO.
#[test]
fn the_enable_waits_crto_crwmt_when_cap_to_understates_it() {
    let sim_config = NvmeSimConfig {
        cap_to: 1,
        crwmt: 8,
        enable_micros: 2_000_000,
        ..NvmeSimConfig::default()
    };
    let config = config();
    let start = Instant::now();
    let rig = Rig::up("drv-crwmt", sim_config, &config);
    assert!(start.elapsed() >= Duration::from_secs(2), "{:?}", start.elapsed());
    let cap = rig.ctrl.cap();
    assert!(cap.crwms);
    assert_eq!((cap.to, cap.crwmt), (1, 8));
    assert_eq!(cap.ready_timeout(), Duration::from_secs(4));
    assert_eq!(
        rig.ctrl.reset_bound(),
        Duration::from_secs(16) + config.admin_timeout
    );
    assert_eq!(
        rig.ctrl.recovery_bound(),
        Duration::from_secs(20) + config.admin_timeout * 2
    );
    let Rig {
        ctrl,
        mut queues,
        sim,
    } = rig;
    for q in &mut queues {
        QueueEngine::stop(q).expect("stop");
    }
    drop(queues);
    Controller::reset(ctrl.as_ref()).expect("reset");
    let start = Instant::now();
    ctrl.recover().expect("the recovery's enable waits CRWMT too");
    assert!(start.elapsed() >= Duration::from_secs(2), "{:?}", start.elapsed());
    assert!(ctrl.is_enabled());
    ctrl.shutdown().expect("shutdown");
    drop(ctrl);
    assert_released(&sim);
}
