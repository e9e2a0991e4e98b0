//! Task management and teardown (spec §4, §5).

use super::*;
use crate::abi;
use crate::abi::data_direction;
use crate::abi::sam_status;
use crate::abi::ReplyCmd;
use crate::transport::Errno;
use crate::transport::ScstUserFd;
use scst_accel_dma::PageBuffer;
use scst_accel_hal::locks::LockToken;
use std::time::Duration;
use std::time::Instant;

#[test]
fn tm_abort_of_an_exec_in_flight() {
    let r = rig(default_opt());
    let s = attach(&r, false);
    s.submit(tur(1)).unwrap();
    let x = wait_cmd(&r.fd);
    s.submit(tur(2)).unwrap();
    drive_core_until_queued(&r);
    // ABORT TASK of a queued-unseen command: failed without the handler.
    let tm0 = s.task_mgmt(abi::tm_fn::ABORT_TASK, Some(2)).unwrap();
    let c2 = recv(&s);
    assert_eq!(
        (c2.tag, c2.aborted, c2.status),
        (2, true, sam_status::TASK_ABORTED)
    );
    let rcv0 = wait_cmd(&r.fd);
    assert_eq!(rcv0.subcode, abi::SCST_USER_TASK_MGMT_RECEIVED);
    r.fd.reply_cmd(&ReplyCmd::new(rcv0.cmd_h, abi::SCST_USER_TASK_MGMT_RECEIVED))
        .unwrap();
    let done0 = wait_cmd(&r.fd);
    assert_eq!(done0.subcode, abi::SCST_USER_TASK_MGMT_DONE);
    r.fd.reply_cmd(&ReplyCmd::with_result(
        done0.cmd_h,
        abi::SCST_USER_TASK_MGMT_DONE,
        0,
    ))
    .unwrap();
    assert_eq!(
        s.tm_completions().recv_timeout(WAIT).unwrap(),
        TmCompletion { id: tm0, result: 0 }
    );

    // ABORT TASK of the EXEC the handler holds.
    let tm = s.task_mgmt(abi::tm_fn::ABORT_TASK, Some(1)).unwrap();
    let rcv = wait_cmd(&r.fd);
    assert_eq!(rcv.subcode, abi::SCST_USER_TASK_MGMT_RECEIVED);
    let p: abi::Tm = rcv.read_payload();
    assert_eq!(
        (p.fn_, p.cmd_h_to_abort, p.sess_h),
        (abi::tm_fn::ABORT_TASK, x.cmd_h, s.sess_h())
    );
    r.fd.reply_cmd(&ReplyCmd::new(rcv.cmd_h, abi::SCST_USER_TASK_MGMT_RECEIVED))
        .unwrap();
    assert_eq!(
        fetch(&r.fd).err(),
        Some(Errno::EAGAIN),
        "DONE waits for the EXEC reply"
    );
    assert!(s.completions().try_recv().is_err(), "never force-completed");
    r.fd.reply_cmd(&completed(x.cmd_h, 0, 0, 0)).unwrap();
    let c1 = recv(&s);
    assert_eq!(
        (c1.tag, c1.aborted, c1.status),
        (1, true, sam_status::TASK_ABORTED)
    );
    let done = wait_cmd(&r.fd);
    assert_eq!(done.subcode, abi::SCST_USER_TASK_MGMT_DONE);
    let p: abi::Tm = done.read_payload();
    assert_eq!(
        (p.fn_, p.cmd_h_to_abort),
        (abi::tm_fn::ABORT_TASK, 0),
        "the core cleared cmd_to_abort before DONE (scst_targ.c:6089)"
    );
    r.fd.reply_cmd(&ReplyCmd::with_result(
        done.cmd_h,
        abi::SCST_USER_TASK_MGMT_DONE,
        abi::tm_result::TASK_NOT_EXIST,
    ))
    .unwrap();
    let t = s.tm_completions().recv_timeout(WAIT).unwrap();
    assert_eq!(
        t,
        TmCompletion {
            id: tm,
            result: abi::tm_result::SUCCESS
        },
        "TASK_NOT_EXIST → SUCCESS"
    );
    // Unknown tag: the core answers without the device.
    let tm3 = s.task_mgmt(abi::tm_fn::ABORT_TASK, Some(99)).unwrap();
    assert_eq!(
        s.tm_completions().recv_timeout(WAIT).unwrap(),
        TmCompletion {
            id: tm3,
            result: abi::tm_result::TASK_NOT_EXIST
        }
    );
    assert_eq!(stats(&r).ucmds, 0);
}

/// Let the core process the active list without delivering anything: peek via stats.
fn drive_core_until_queued(r: &Rig) {
    let dev = r.fd.device_for_test();
    dev.with(&mut LockToken::root(), |st, fx| st.run_core_work(fx));
    assert!(stats(r).ready > 0);
}

#[test]
fn close_with_commands_in_every_state() {
    let r = rig_with(
        opt(
            abi::parse_type::STANDARD,
            abi::on_free_cmd_type::CALL,
            abi::memory_reuse_type::REUSE_ALL,
        ),
        KernelConfig {
            attach_timeout: Duration::from_secs(30),
            ..Default::default()
        },
    );
    let s = attach(&r, false);
    // A cached buffer (zombie owner after its ON_FREE).
    let buf = PageBuffer::new(4096).unwrap();
    s.submit(read10(1, 0, 1)).unwrap();
    let c = wait_cmd(&r.fd);
    r.fd.reply_cmd(&completed(c.cmd_h, 512, buf.addr(), 0)).unwrap();
    recv(&s);
    let f = wait_cmd(&r.fd);
    assert_eq!(f.subcode, abi::SCST_USER_ON_FREE_CMD);
    assert_eq!(f.read_payload::<abi::ScsiOnFreeCmd>().buffer_cached, 1);
    r.fd.reply_cmd(&ReplyCmd::new(f.cmd_h, abi::SCST_USER_ON_FREE_CMD))
        .unwrap();
    // Sent-unreplied EXEC.
    s.submit(tur(2)).unwrap();
    let sent = wait_cmd(&r.fd);
    assert_eq!(sent.subcode, abi::SCST_USER_EXEC);
    // TM whose DONE is pending (RECEIVED replied, DONE queued).
    let tm = s.task_mgmt(abi::tm_fn::CLEAR_ACA, None).unwrap();
    let rcv = wait_cmd(&r.fd);
    r.fd.reply_cmd(&ReplyCmd::new(rcv.cmd_h, abi::SCST_USER_TASK_MGMT_RECEIVED))
        .unwrap();
    // Queued-unsent EXEC.
    s.submit(tur(3)).unwrap();
    drive_core_until_queued(&r);
    // A pending ATTACH in another thread.
    let k = r.kernel.clone();
    let att = std::thread::spawn(move || k.attach_session("disk0", spec(false)));
    let deadline = Instant::now() + WAIT;
    while !stats(&r).by_state.contains_key("ATTACH_SESS") {
        assert!(Instant::now() < deadline, "ATTACH never queued");
        std::thread::sleep(Duration::from_millis(1));
    }

    let kernel = r.kernel.clone();
    let report = r.fd.close();
    assert!(report.released);
    assert_eq!(report.remaining_ucmds, 0, "{report:?}");
    assert_eq!(report.lun_not_supported, 1, "{report:?}");
    assert_eq!(report.busy_unsent, 1, "{report:?}");
    assert_eq!(report.tm_done_failed, 1, "{report:?}");
    assert_eq!(
        report.session_efault, 2,
        "pending ATTACH and the DETACH: {report:?}"
    );
    assert_eq!(report.cached_mem_free_as_replied, 1, "{report:?}");
    assert_eq!(
        report.on_free_as_replied, 1,
        "only the seen command gets ON_FREE: {report:?}"
    );
    let mut by_tag: Vec<ScsiCompletion> = (0..2).map(|_| recv(&s)).collect();
    by_tag.sort_by_key(|c| c.tag);
    assert_eq!(sense_of(&by_tag[0]), (0x05, 0x25, 0x00), "sent-unreplied");
    assert_eq!(by_tag[1].status, sam_status::BUSY, "queued-unsent");
    assert_eq!(
        s.tm_completions().recv_timeout(WAIT).unwrap(),
        TmCompletion {
            id: tm,
            result: abi::tm_result::FAILED
        }
    );
    assert_eq!(
        att.join().unwrap().err(),
        Some(AttachError::Refused(-libc::EFAULT))
    );
    assert!(kernel.registered_devices().is_empty());
    assert_eq!(s.submit(tur(9)).err(), Some(SubmitError::DeviceGone));
}

#[test]
fn only_the_last_clone_releases() {
    let r = rig(default_opt());
    let other = r.fd.clone();
    assert!(!other.close().released);
    assert_eq!(r.kernel.registered_devices(), vec!["disk0".to_string()]);
    let kernel = r.kernel.clone();
    drop(r);
    assert!(
        kernel.registered_devices().is_empty(),
        "drop of the last clone releases"
    );
}

/// Dropping the last clone with a checked lock held breaks the rule that a close holds none,
/// but `Drop` must not panic (docs/locking.md rule 6): the release runs on a thread of its own,
/// whose root token is true, and the device still goes away.
#[test]
fn the_last_drop_under_a_lock_releases_on_another_thread_without_panicking() {
    use scst_accel_hal::locks::levels;
    use scst_accel_hal::locks::OrderedMutex;

    let r = rig(default_opt());
    let kernel = r.kernel.clone();
    let held = OrderedMutex::<(), levels::InterruptLines>::new(());
    {
        let mut token = LockToken::root();
        let _guard = held.lock(&mut token);
        drop(r);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !kernel.registered_devices().is_empty() {
        assert!(Instant::now() < deadline, "the device was never released");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn detach_queues_detach_sess_and_closes_the_session() {
    let r = rig(default_opt());
    let s = attach(&r, false);
    let sess_h = s.sess_h();
    let s2 = attach(&r, false);
    assert_ne!(s2.sess_h(), sess_h, "session handles are distinct");
    s.detach();
    let d = wait_cmd(&r.fd);
    assert_eq!(d.subcode, abi::SCST_USER_DETACH_SESS);
    assert_eq!(d.read_payload::<abi::Sess>().sess_h, sess_h);
    r.fd.reply_cmd(&ReplyCmd::new(d.cmd_h, abi::SCST_USER_DETACH_SESS))
        .unwrap();
    assert_eq!(stats(&r).sessions, 1);
    assert_eq!(stats(&r).ucmds, 0);
}

#[test]
fn core_local_reads_get_alloc_mem() {
    let r = rig(default_opt());
    let s = attach(&r, false);
    s.submit(ScsiRequest {
        tag: 1,
        cdb: vec![0x03, 0, 0, 0, 18, 0],
        expected_data_in: 18,
        ..Default::default()
    })
    .unwrap();
    let c = wait_cmd(&r.fd);
    assert_eq!(
        c.subcode,
        abi::SCST_USER_ALLOC_MEM,
        "LOCAL_CMD READ still gets ALLOC_MEM (spec §3.6)"
    );
    let a: abi::ScsiCmdAllocMem = c.read_payload();
    assert_eq!((a.alloc_len, a.data_direction), (4096, data_direction::READ));
}

#[test]
fn handle_counter_skips_handles_still_in_the_hash() {
    let r = rig(default_opt());
    let dev = r.fd.device_for_test();
    dev.with(&mut LockToken::root(), |st, _| {
        st.handle_counter = u32::MAX;
        let a = st.new_ucmd(crate::loopback::ucmd::UcmdKind::Prealloc);
        let b = st.new_ucmd(crate::loopback::ucmd::UcmdKind::Prealloc);
        assert_eq!((a, b), (u32::MAX, 0), "wraps to 0");
        st.handle_counter = u32::MAX;
        let c = st.new_ucmd(crate::loopback::ucmd::UcmdKind::Prealloc);
        assert_eq!(c, 1, "skips MAX and 0, still in the hash");
        for h in [a, b, c] {
            st.put_ucmd(h);
        }
        assert!(st.ucmds.is_empty());
    });
}

#[cfg(debug_assertions)]
#[test]
#[should_panic(expected = "spec §5.6")]
fn user_copies_under_the_device_lock_are_caught() {
    let r = rig(default_opt());
    let dev = r.fd.device_for_test();
    let mut b = [0u8; 1];
    let addr = b.as_mut_ptr() as u64;
    dev.with(&mut LockToken::root(), |_, _| {
        crate::loopback::uaccess::copy_from_user(addr, &mut b).ok()
    });
}

/// ON_FREE_CMD after an unjam says `aborted` only for a command SCST aborted
/// (scst_user.c:2585-2587, 2611-2612): an EXEC unjammed unreplied ends with LUN NOT SUPPORTED
/// and `aborted` 0; one aborted by task management first with `aborted` 1.
#[test]
fn on_free_cmd_after_an_unjam_is_aborted_only_for_an_aborted_command() {
    let r = rig(opt(
        abi::parse_type::STANDARD,
        abi::on_free_cmd_type::CALL,
        abi::memory_reuse_type::NO_REUSE,
    ));
    let s = attach(&r, false);
    let dev = r.fd.device_for_test();
    let on_free_after_unjam = |tag: u64, abort: bool| -> (abi::ScsiOnFreeCmd, ScsiCompletion) {
        s.submit(tur(tag)).unwrap();
        let x = wait_cmd(&r.fd);
        assert_eq!(x.subcode, abi::SCST_USER_EXEC);
        if abort {
            s.task_mgmt(abi::tm_fn::ABORT_TASK, Some(tag)).unwrap();
        }
        dev.with(&mut LockToken::root(), |st, fx| {
            st.unjam(x.cmd_h, false, fx);
            st.run_core_work(fx);
        });
        let c = recv(&s);
        loop {
            let m = wait_cmd(&r.fd);
            match m.subcode {
                abi::SCST_USER_ON_FREE_CMD => {
                    assert_eq!(m.cmd_h, x.cmd_h);
                    r.fd.reply_cmd(&ReplyCmd::new(m.cmd_h, m.subcode)).unwrap();
                    return (m.read_payload(), c);
                }
                abi::SCST_USER_TASK_MGMT_RECEIVED | abi::SCST_USER_TASK_MGMT_DONE => {
                    r.fd.reply_cmd(&ReplyCmd::with_result(m.cmd_h, m.subcode, 0))
                        .unwrap();
                }
                other => panic!("unexpected subcode {other:#x}"),
            }
        }
    };
    let (of, c) = on_free_after_unjam(1, false);
    assert_eq!(sense_of(&c), (0x05, 0x25, 0x00));
    assert_eq!(of.aborted, 0, "failed, not aborted");
    let (of, c) = on_free_after_unjam(2, true);
    assert!(c.aborted);
    assert_eq!(of.aborted, 1);
}

/// A cache hit whose EXEC never reached the handler (aborted while queued) leaves the buffer's
/// fingerprint for the next hit: a write made while SCST owned the buffer is still found there.
#[test]
fn an_aborted_hit_leaves_the_ownership_check_for_the_next_one() {
    let r = rig(default_opt());
    let s = attach(&r, false);
    let buf = PageBuffer::new(4096).unwrap();
    s.submit(read10(1, 0, 8)).unwrap();
    let c = wait_cmd(&r.fd);
    buf.fill(0, 4096, 0x5a);
    r.fd.reply_cmd(&completed(c.cmd_h, 4096, buf.addr(), 0)).unwrap();
    assert_eq!(recv(&s).data_in, vec![0x5a; 4096]);
    buf.fill(100, 1, 0xee);

    s.submit(read10(2, 0, 8)).unwrap();
    drive_core_until_queued(&r);
    let tm = s.task_mgmt(abi::tm_fn::ABORT_TASK, Some(2)).unwrap();
    let c2 = recv(&s);
    assert_eq!((c2.tag, c2.aborted), (2, true));
    let rcv = wait_cmd(&r.fd);
    assert_eq!(rcv.subcode, abi::SCST_USER_TASK_MGMT_RECEIVED);
    r.fd.reply_cmd(&ReplyCmd::new(rcv.cmd_h, abi::SCST_USER_TASK_MGMT_RECEIVED))
        .unwrap();
    let done = wait_cmd(&r.fd);
    assert_eq!(done.subcode, abi::SCST_USER_TASK_MGMT_DONE);
    r.fd.reply_cmd(&ReplyCmd::with_result(
        done.cmd_h,
        abi::SCST_USER_TASK_MGMT_DONE,
        0,
    ))
    .unwrap();
    assert_eq!(
        s.tm_completions().recv_timeout(WAIT).unwrap(),
        TmCompletion { id: tm, result: 0 }
    );
    assert_eq!(r.kernel.buffer_ownership_violations(), 0, "never delivered");

    s.submit(read10(3, 0, 8)).unwrap();
    let c3 = wait_cmd(&r.fd);
    assert_eq!(c3.subcode, abi::SCST_USER_EXEC);
    let e: abi::ScsiCmdExec = c3.read_payload();
    assert_eq!(e.pbuf, buf.addr(), "the same cached buffer");
    assert_eq!(r.kernel.buffer_ownership_violations(), 1);
}
