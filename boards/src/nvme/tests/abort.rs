//! ABORT (NVMe 1.4 §5.1) and GET LOG PAGE Error Information (§5.14.1.1) against the simulated
//! controller: what the simulator agrees to abort (nothing: it answers every ABORT "not
//! aborted", `sim/nvme/admin.rs`), that refused commands stay in flight and are accounted for
//! once, tags not in flight, a hung controller (admin timeout), the controller-wide Abort
//! Command Limit, and the error log (the simulator keeps none: it returns ELPE + 1 = 1 unused
//! entry), plus the parse of a hand-made entry.

use super::buffer;
use super::config;
use super::fault;
use super::ok;
use super::reap_n;
use super::req;
use super::run;
use super::verified_io;
use super::wait_until;
use super::Rig;
use crate::engine::Controller;
use crate::engine::DeviceOp;
use crate::engine::DeviceStatus;
use crate::engine::EngineError;
use crate::engine::QueueEngine;
use crate::nvme::cmd::sc;
use crate::nvme::cmd::sct;
use crate::nvme::cmd::ErrorLogEntry;
use crate::nvme::cmd::Status;
use crate::nvme::cmd::ERROR_LOG_ENTRY_LEN;
use crate::nvme::NvmeConfig;
use crate::nvme::NvmeError;
use crate::nvme::NvmeQueue;
use crate::sim::nvme::NvmeSimConfig;
use std::time::Duration;

/// The admin timeout of the tests that wait one out.
const SHORT_ADMIN_TIMEOUT: Duration = Duration::from_millis(200);

/// Abort Command Limit + 1 of the simulated controller (Identify ACL = 3).
const SIM_ABORT_LIMIT: u32 = 4;

fn short_config() -> NvmeConfig {
    NvmeConfig {
        admin_timeout: SHORT_ADMIN_TIMEOUT,
        ..config()
    }
}

/// Submit `tags` as FLUSHes, ring once, and wait until the controller fetched them all.
fn submit_flushes(rig: &mut Rig, queue: usize, tags: &[u64]) {
    let before = rig.sim.stats().commands;
    let q = &mut rig.queues[queue];
    for &tag in tags {
        q.submit(&req(tag, DeviceOp::Flush, 0, 0, &[])).expect("submit");
    }
    q.ring_doorbell();
    let want = before + tags.len() as u64;
    assert!(
        wait_until(|| rig.sim.stats().commands >= want),
        "commands fetched"
    );
}

/// Nothing more completes on `q`, and nothing unknown did.
fn assert_quiet(q: &mut NvmeQueue) {
    let mut out = Vec::new();
    assert_eq!(q.reap(&mut out), 0, "no second completion: {out:?}");
    assert_eq!(q.in_flight(), 0);
    assert_eq!(q.unknown_tags(), 0, "{}", q.dump());
}

#[test]
fn an_error_log_entry_parses_from_its_wire_layout() {
    let mut raw = [0u8; 2 * ERROR_LOG_ENTRY_LEN + 10];
    let status = Status::new(sct::MEDIA, sc::UNRECOVERED_READ);
    raw[0..8].copy_from_slice(&0x0102_0304_0506_0708u64.to_le_bytes());
    raw[8..10].copy_from_slice(&2u16.to_le_bytes()); // SQID
    raw[10..12].copy_from_slice(&0xBEEFu16.to_le_bytes()); // CID
    raw[12..14].copy_from_slice(&((status.0 << 1) | 1).to_le_bytes()); // status, phase 1
    raw[14..16].copy_from_slice(&((5u16 << 8) | 44).to_le_bytes()); // byte 44 bit 5
    raw[16..24].copy_from_slice(&0x1_0000_0010u64.to_le_bytes()); // LBA
    raw[24..28].copy_from_slice(&1u32.to_le_bytes()); // NSID
    raw[28] = 0xC0; // vendor specific log page
    raw[29] = 0; // transport type: PCIe
    raw[32..40].copy_from_slice(&0x77u64.to_le_bytes());
    raw[40..42].copy_from_slice(&0x1234u16.to_le_bytes());

    let entries = ErrorLogEntry::parse_all(&raw);

    assert_eq!(entries.len(), 2, "the trailing partial entry is ignored");
    let e = entries[0];
    assert_eq!(e.error_count, 0x0102_0304_0506_0708);
    assert_eq!((e.sqid, e.cid, e.nsid, e.lba), (2, 0xBEEF, 1, 0x1_0000_0010));
    assert_eq!(e.status(), status);
    assert_eq!(e.status().device_status(), DeviceStatus::ReadError);
    assert_eq!(e.parameter_error_location, 0x052C);
    assert_eq!((e.vendor_specific, e.trtype), (0xC0, 0));
    assert_eq!((e.command_specific, e.trtype_specific), (0x77, 0x1234));
    assert!(!e.is_empty());
    let text = e.to_string();
    for part in [
        "SQID 2",
        "CID 0xbeef",
        "SCT 0x2 SC 0x81",
        "LBA 0x100000010",
        "byte 44 bit 5",
    ] {
        assert!(text.contains(part), "{part} missing from {text}");
    }
    assert!(entries[1].is_empty());
    assert_eq!(entries[1], ErrorLogEntry::default());
}

/// The simulator executes the commands but never posts their completions and refuses every
/// ABORT: the abort sends one ABORT per command and reports 0, the commands stay in flight,
/// and a stop leaves them to be abandoned, once each.
#[test]
fn abort_of_commands_the_device_never_completes_is_refused_then_stop_accounts_for_them() {
    let mut rig = Rig::up("abort-never", NvmeSimConfig::default(), &config());
    rig.sim.inject(fault("never-complete"));
    submit_flushes(&mut rig, 0, &[1, 2]);
    let before = rig.sim.stats().commands;
    let q = &mut rig.queues[0];

    let aborted = QueueEngine::abort(q, &[1, 2, 1]).expect("abort");

    assert_eq!(aborted, 0, "the simulator never aborts");
    assert_eq!(rig.sim.stats().commands, before + 2, "one ABORT per command sent");
    let q = &mut rig.queues[0];
    assert_eq!((q.stats().aborts_sent, q.stats().aborts_accepted), (2, 0));
    assert_eq!(q.in_flight(), 2, "refused commands stay in flight");
    assert!(q.dump().contains("aborts sent 2 accepted 0"));
    QueueEngine::stop(q).expect("stop");
    let mut out = Vec::new();
    assert_eq!(q.reap(&mut out), 0, "no completion: {out:?}");
    let mut tags = q.abandon_all();
    tags.sort_unstable();
    assert_eq!(tags, vec![1, 2]);
    rig.sim.clear_faults();
    QueueEngine::restart(q).expect("restart");
    verified_io(q, 0, 1);
    assert_quiet(q);
    rig.finish();
}

/// With every command delayed, an abort of commands still executing is refused (by the
/// simulator) and each command completes later exactly once; a command the controller agreed
/// to abort would have completed as `Aborted`.
#[test]
fn abort_under_latency_then_every_command_completes_exactly_once() {
    let mut rig = Rig::up("abort-latency", NvmeSimConfig::default(), &config());
    let buf = buffer(&rig.ctrl, 3 * 4096);
    rig.sim.inject(fault("latency:20ms"));
    let q = &mut rig.queues[1];
    for i in 0..3u64 {
        let seg = [(buf.iova() + i * 4096, 4096)];
        q.submit(&req(10 + i, DeviceOp::Read, i * 8, 4096, &seg))
            .expect("submit");
    }
    q.ring_doorbell();

    let aborted = QueueEngine::abort(q, &[10, 11, 12]).expect("abort");

    assert_eq!(aborted, 0, "the simulator never aborts");
    rig.sim.clear_faults();
    let q = &mut rig.queues[1];
    let mut done = reap_n(q, 3);
    done.sort_by_key(|c| c.user_tag);
    let tags: Vec<u64> = done.iter().map(|c| c.user_tag).collect();
    assert_eq!(tags, vec![10, 11, 12], "each completes once");
    let aborted_completions = done.iter().filter(|c| c.status == DeviceStatus::Aborted).count();
    assert_eq!(aborted_completions, aborted);
    assert!(done
        .iter()
        .all(|c| c.status == DeviceStatus::Ok || c.status == DeviceStatus::Aborted));
    assert_quiet(q);
    drop(buf);
    rig.finish();
}

/// Tags that are not in flight (never submitted, or completed already) send no ABORT.
#[test]
fn abort_of_tags_not_in_flight_sends_nothing() {
    let mut rig = Rig::up("abort-unknown", NvmeSimConfig::default(), &config());
    let q = &mut rig.queues[0];
    assert_eq!(run(q, &[req(7, DeviceOp::Flush, 0, 0, &[])]), vec![ok(7)]);
    let before = rig.sim.stats().commands;
    let q = &mut rig.queues[0];

    assert_eq!(QueueEngine::abort(q, &[7, 42, u64::MAX]).expect("abort"), 0);
    assert_eq!(QueueEngine::abort(q, &[]).expect("abort"), 0);

    assert_eq!(rig.sim.stats().commands, before, "no ABORT sent");
    let q = &mut rig.queues[0];
    assert_eq!(q.stats().aborts_sent, 0);
    assert_quiet(q);
    rig.finish();
}

/// On a hung controller the ABORT times out within the configured admin timeout; the dump
/// then says the error log is unavailable (once after a bounded read, then at once), and a
/// recovery brings everything back, error log included.
#[test]
fn abort_on_a_hung_controller_times_out_and_the_dump_does_not_wait_again() {
    let mut rig = Rig::up("abort-hang", NvmeSimConfig::default(), &short_config());
    let buf = buffer(&rig.ctrl, 4096);
    rig.sim.inject(fault("hang"));
    let q = &mut rig.queues[0];
    q.submit(&req(1, DeviceOp::Write, 0, 4096, &[(buf.iova(), 4096)]))
        .expect("submit");
    q.ring_doorbell();

    let err = QueueEngine::abort(q, &[1]).expect_err("the ABORT never completes");

    match err {
        EngineError::Timeout { timeout, .. } => assert_eq!(timeout, SHORT_ADMIN_TIMEOUT),
        other => panic!("expected a timeout, got {other}"),
    }
    assert_eq!(rig.queues[0].in_flight(), 1);
    let first = rig.ctrl.dump_registers();
    assert!(first.contains("CSTS"), "{first}");
    assert!(first.contains("error log: unavailable ("), "{first}");
    assert!(first.contains("did not happen within 200ms"), "{first}");
    let second = rig.ctrl.dump_registers();
    assert!(
        second.contains("error log: unavailable (an earlier read timed out"),
        "{second}"
    );
    Controller::recover(rig.ctrl.as_ref()).expect("recover");
    for q in &mut rig.queues {
        let expected: Vec<u64> = if q.qid() == 1 { vec![1] } else { vec![] };
        assert_eq!(q.abandon_all(), expected);
        QueueEngine::restart(q).expect("restart");
    }
    drop(buf);
    let after = rig.ctrl.dump_registers();
    assert!(after.contains("error log: no errors (1 entries read)"), "{after}");
    verified_io(&mut rig.queues[0], 0, 2);
    assert_eq!(rig.ctrl.admin_unknown_completions(), 0);
    rig.finish();
}

/// With ACL + 1 ABORTs outstanding (here: abandoned by timed-out waiters), no further ABORT is
/// sent: the abort waits for a slot, bounded by the admin timeout. A reset drops the abandoned
/// ones and ABORTs go out again.
#[test]
fn the_abort_command_limit_is_never_exceeded() {
    let mut rig = Rig::up("abort-limit", NvmeSimConfig::default(), &short_config());
    assert_eq!(rig.ctrl.info().controller.abort_limit(), SIM_ABORT_LIMIT);
    rig.sim.inject(fault("never-complete"));
    submit_flushes(&mut rig, 0, &[1]);
    rig.ctrl.abandon_abort_slots(SIM_ABORT_LIMIT);
    let before = rig.sim.stats().commands;

    let err = rig.queues[0].abort(&[1]).expect_err("no free ABORT slot");

    match err {
        NvmeError::Timeout { what, timeout, .. } => {
            assert!(what.contains("Abort Command Limit"), "{what}");
            assert_eq!(timeout, SHORT_ADMIN_TIMEOUT);
        }
        other => panic!("expected a timeout, got {other}"),
    }
    assert_eq!(rig.sim.stats().commands, before, "no ABORT sent");
    Controller::recover(rig.ctrl.as_ref()).expect("recover");
    for q in &mut rig.queues {
        let expected: Vec<u64> = if q.qid() == 1 { vec![1] } else { vec![] };
        assert_eq!(q.abandon_all(), expected);
        QueueEngine::restart(q).expect("restart");
    }
    submit_flushes(&mut rig, 0, &[2]);
    let before = rig.sim.stats().commands;
    assert_eq!(rig.queues[0].abort(&[2]).expect("abort"), 0);
    assert_eq!(rig.sim.stats().commands, before + 1, "the ABORT went out");
    QueueEngine::stop(&mut rig.queues[0]).expect("stop");
    assert_eq!(rig.queues[0].abandon_all(), vec![2]);
    rig.sim.clear_faults();
    QueueEngine::restart(&mut rig.queues[0]).expect("restart");
    rig.finish();
}

/// A controller slow on its admin queue (each ABORT answered "not aborted" 80 ms late, inside
/// the 200 ms admin timeout): the ABORTs of one call share one admin timeout, so eight late
/// commands hold the caller one timeout, not eight ABORTs' worth, and past it no more ABORT is
/// sent: the caller is told to escalate (stop the queue, reset) while its heartbeat's bound
/// still holds.
#[test]
fn the_aborts_of_one_call_share_one_admin_timeout() {
    let mut rig = Rig::up("abort-budget", NvmeSimConfig::default(), &short_config());
    rig.sim.inject(fault("never-complete"));
    let tags: Vec<u64> = (0..8).collect();
    submit_flushes(&mut rig, 0, &tags);
    rig.sim.inject(fault("latency:80ms"));
    let before = rig.queues[0].stats().aborts_sent;

    let err = rig.queues[0]
        .abort(&tags)
        .expect_err("the ABORTs outlast one admin timeout");

    let sent = rig.queues[0].stats().aborts_sent - before;
    match err {
        NvmeError::Timeout { timeout, .. } => assert_eq!(timeout, SHORT_ADMIN_TIMEOUT),
        other => panic!("expected a timeout, got {other}"),
    }
    assert!(
        (1..=3).contains(&sent),
        "{sent} ABORTs sent in one admin timeout of {SHORT_ADMIN_TIMEOUT:?} at 80 ms each"
    );
    rig.sim.clear_faults();
    Controller::recover(rig.ctrl.as_ref()).expect("recover");
    for q in &mut rig.queues {
        let expected: Vec<u64> = if q.qid() == 1 { tags.clone() } else { vec![] };
        assert_eq!(q.abandon_all(), expected);
        QueueEngine::restart(q).expect("restart");
    }
    rig.finish();
}

/// Two queue threads aborting at once share the controller's ABORT slots without deadlock or
/// error, each ABORT sent once.
#[test]
fn aborts_from_two_queues_at_once() {
    let mut rig = Rig::up("abort-two", NvmeSimConfig::default(), &config());
    rig.sim.inject(fault("never-complete"));
    let tags: Vec<u64> = (0..6).collect();
    submit_flushes(&mut rig, 0, &tags);
    submit_flushes(&mut rig, 1, &tags);
    let before = rig.sim.stats().commands;

    let results: Vec<usize> = std::thread::scope(|s| {
        let handles: Vec<_> = rig
            .queues
            .iter_mut()
            .map(|q| s.spawn(move || q.abort(&(0..6).collect::<Vec<u64>>()).expect("abort")))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("abort thread"))
            .collect()
    });

    assert_eq!(results, vec![0, 0]);
    assert_eq!(rig.sim.stats().commands, before + 12);
    for q in &mut rig.queues {
        assert_eq!(q.stats().aborts_sent, 6);
        QueueEngine::stop(q).expect("stop");
        assert_eq!(q.abandon_all().len(), 6);
        rig.sim.clear_faults();
        QueueEngine::restart(q).expect("restart");
    }
    rig.finish();
}

/// After media errors the error log reads and parses. The simulator records no entries: it
/// returns its ELPE + 1 = 1 entry unused (Error Count 0), so that is what is asserted; the
/// dump says so, and says "unavailable" once the controller is shut down.
#[test]
fn the_error_log_reads_and_parses_after_media_errors() {
    let mut rig = Rig::up("abort-errlog", NvmeSimConfig::default(), &config());
    assert_eq!(rig.ctrl.info().controller.error_log_entries(), 1);
    let buf = buffer(&rig.ctrl, 4 * 4096);
    rig.sim.inject(fault("error:every=2"));
    let q = &mut rig.queues[0];
    let segs: Vec<[(u64, u32); 1]> = (0..4u64).map(|i| [(buf.iova() + i * 4096, 4096)]).collect();
    let reads: Vec<_> = (0..4u64)
        .map(|i| req(i, DeviceOp::Read, i * 8, 4096, &segs[i as usize]))
        .collect();
    let mut done = run(q, &reads);
    done.sort_by_key(|c| c.user_tag);
    let errors = done
        .iter()
        .filter(|c| c.status == DeviceStatus::ReadError)
        .count();
    assert_eq!(errors, 2, "{done:?}");
    rig.sim.clear_faults();

    let log = rig.ctrl.error_log(super::WAIT).expect("error log");

    assert_eq!(log.len(), 1, "ELPE + 1 entries");
    assert!(
        log.iter().all(ErrorLogEntry::is_empty),
        "the simulator keeps no error log: {log:?}"
    );
    assert_eq!(log[0], ErrorLogEntry::default());
    let dump = rig.ctrl.dump_registers();
    assert!(dump.contains("error log: no errors (1 entries read)"), "{dump}");

    // Concurrent readers take turns on the one log page.
    std::thread::scope(|s| {
        let readers: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    for _ in 0..5 {
                        assert_eq!(rig.ctrl.error_log(super::WAIT).expect("error log").len(), 1);
                    }
                })
            })
            .collect();
        // Explicit joins (issue 16): an implicit scope join does not wait for thread-locals.
        for r in readers {
            r.join().expect("error log reader");
        }
    });

    for q in &mut rig.queues {
        QueueEngine::stop(q).expect("stop");
        assert!(q.abandon_all().is_empty());
    }
    Controller::shutdown(rig.ctrl.as_ref()).expect("shutdown");
    let dump = rig.ctrl.dump_registers();
    assert!(
        dump.contains("error log: unavailable (controller not ready"),
        "{dump}"
    );
    drop(buf);
    rig.release();
}
