//! The handler against a kernel that does what scst_user.md allows and the loopback model
//! never does on its own: REPLY_AND_GET_MULTI failing before it reads a reply (§3.3), and an
//! EXEC that breaks the contract (§3.5), a reply the kernel refuses. Each test fails on the
//! handler before its fix.
// UNSAFETY: one test reads the worker's reply array through the `preplies` pointer, as the
// kernel does, to hand the kernel a modified copy.
#![allow(unsafe_code)]

use scst_accel_dma::SgvPool;
use scst_accel_handler::abi;
use scst_accel_handler::abi::data_direction;
use scst_accel_handler::abi::sam_status;
use scst_accel_handler::frontend::FrontendConfig;
use scst_accel_handler::frontend::TeardownTrigger;
use scst_accel_handler::loopback::decode_sense;
use scst_accel_handler::store::ram::RamStore;
use scst_accel_handler::transport::register::default_options;
use scst_accel_handler::transport::Errno;
use scst_accel_handler::transport::ScstUserFd;
use scst_accel_tests::execute;
use scst_accel_tests::MeddlingFd;
use scst_accel_tests::MultiHook;
use scst_accel_tests::Rig;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering;
use std::sync::Arc;

const BLOCK: u32 = 512;
const BLOCKS: u64 = 2048;

fn rig(name: &str, hook: Box<MultiHook>) -> Rig {
    let config = FrontendConfig {
        workers: 1,
        cmds_per_call: 8,
        ..FrontendConfig::default()
    };
    Rig::with_fd(
        name,
        BLOCK,
        BLOCKS,
        default_options(),
        Arc::new(RamStore::new(BLOCK, BLOCKS, 2048)),
        Arc::new(SgvPool::new(None, None, 1 << 30)),
        config,
        |fd| Arc::new(MeddlingFd::new(fd, hook)) as Arc<dyn ScstUserFd>,
    )
}

/// SCST reuses a command handle only after its reply (spec §3.5): an EXEC for a handle whose
/// earlier EXEC is still in the store is a kernel bug, staged here by repeating a fetched EXEC
/// in the same batch. The repeat is refused with HARDWARE ERROR and reaches neither the store
/// nor the device; the first keeps its entry and its buffer lease, so its own completion,
/// when the store gives it, finds them (a store tag cannot tell two generations of a handle
/// apart).
#[test]
fn an_exec_repeating_a_handle_still_in_the_store_is_refused() {
    let repeat = Arc::new(AtomicBool::new(false));
    let hook_repeat = Arc::clone(&repeat);
    let hook: Box<MultiHook> = Box::new(move |fd, arg| {
        let result = fd.reply_and_get_multi(arg);
        let mut header = arg.header();
        let n = header.cmds_cnt.max(0) as usize;
        if result.is_ok() && n < arg.capacity() && hook_repeat.load(Ordering::SeqCst) {
            if let Some(i) = (0..n).find(|&i| arg.cmd(i).subcode == abi::SCST_USER_EXEC) {
                let exec = *arg.cmd(i);
                *arg.cmd_mut(n) = exec;
                header.cmds_cnt += 1;
                arg.set_header(header);
                hook_repeat.store(false, Ordering::SeqCst);
            }
        }
        result
    });
    let gated = scst_accel_tests::GatedStore::new(RamStore::new(BLOCK, BLOCKS, 2048));
    let rig = Rig::with_fd(
        "contract-repeat-exec",
        BLOCK,
        BLOCKS,
        default_options(),
        Arc::new(gated.clone()),
        Arc::new(SgvPool::new(None, None, 1 << 30)),
        FrontendConfig {
            workers: 1,
            cmds_per_call: 8,
            ..FrontendConfig::default()
        },
        |fd| Arc::new(MeddlingFd::new(fd, hook)) as Arc<dyn ScstUserFd>,
    );
    let session = rig.session(0);
    repeat.store(true, Ordering::SeqCst);
    session
        .submit(scst_accel_handler::loopback::ScsiRequest {
            tag: 1,
            cdb: write10(3, 1).to_vec(),
            data_out: vec![0x5a; BLOCK as usize],
            expected_data_in: 0,
            queue_type: abi::queue_type::SIMPLE,
            timeout_secs: 30,
        })
        .expect("submit");
    let refused = session
        .completions()
        .recv_timeout(scst_accel_tests::WAIT)
        .expect("the repeat is answered");
    assert!(!repeat.load(Ordering::SeqCst), "the EXEC was repeated");
    assert_eq!(
        (refused.status, decode_sense(&refused.sense)),
        (sam_status::CHECK_CONDITION, Some((0x04, 0x44, 0x00))),
        "{refused:?}"
    );
    assert_eq!(gated.held(), 1, "only the first EXEC reached the store");
    assert_eq!(gated.release_all(), 1);
    session
        .submit(scst_accel_handler::loopback::ScsiRequest {
            tag: 2,
            cdb: read10(3, 1).to_vec(),
            data_out: Vec::new(),
            expected_data_in: BLOCK,
            queue_type: abi::queue_type::SIMPLE,
            timeout_secs: 30,
        })
        .expect("submit");
    assert!(gated.wait_held(1), "the READ reached the store");
    assert_eq!(gated.release_all(), 1);
    let r = session
        .completions()
        .recv_timeout(scst_accel_tests::WAIT)
        .expect("the READ is answered");
    assert_eq!(
        r.tag, 2,
        "the first EXEC's late reply is the kernel's to refuse, not a completion"
    );
    assert_eq!(
        (r.status, r.data_in),
        (sam_status::GOOD, vec![0x5a; BLOCK as usize]),
        "the first EXEC's write reached the medium"
    );
    session.detach();
}

/// A hook that hands the kernel, once, a copy of the worker's replies in which the first that
/// `pick` chooses is replaced by `rewrite` of it; and whether it has. Every other call goes
/// straight through.
fn rewrite_one_reply(
    pick: fn(&abi::ReplyCmd) -> bool,
    rewrite: fn(&abi::ReplyCmd) -> abi::ReplyCmd,
) -> (Box<MultiHook>, Arc<AtomicBool>) {
    let meddled = Arc::new(AtomicBool::new(false));
    let hook_meddled = Arc::clone(&meddled);
    let hook: Box<MultiHook> = Box::new(move |fd, arg| {
        let header = arg.header();
        if header.replies_cnt > 0 && !hook_meddled.load(Ordering::SeqCst) {
            // SAFETY: `preplies` points at the worker's array of `replies_cnt` replies, which it
            // keeps alive and unchanged while it waits in this call (the kernel reads it the
            // same way); it is only read, and copied out.
            let replies: Vec<abi::ReplyCmd> = unsafe {
                std::slice::from_raw_parts(
                    header.preplies as *const abi::ReplyCmd,
                    header.replies_cnt as usize,
                )
            }
            .to_vec();
            if let Some(i) = replies.iter().position(pick) {
                hook_meddled.store(true, Ordering::SeqCst);
                let mut copy = replies;
                copy[i] = rewrite(&copy[i]);
                let mut changed = header;
                changed.preplies = copy.as_ptr() as u64;
                arg.set_header(changed);
                return fd.reply_and_get_multi(arg);
            }
        }
        fd.reply_and_get_multi(arg)
    });
    (hook, meddled)
}

/// The kernel refused one reply, and, idle, the handler holds exactly the buffers the kernel
/// holds (cached or attached). The kernel fails the command inside the worker's ioctl: the
/// initiator may see it before the worker, back from that ioctl, has counted the refused reply
/// and freed its buffer, so this waits (bounded) for both.
fn assert_one_refused_reply_and_no_stray_buffer(rig: &Rig) {
    let deadline = std::time::Instant::now() + scst_accel_tests::WAIT;
    let (kernel, held) = loop {
        let kernel = rig.kernel.device_stats(&rig.name).expect("device");
        let stats = rig.frontend().stats();
        let settled = stats.reply_errors == 1
            && stats.buffers.buffers == (kernel.cached_buffers + kernel.buffers_in_use) as u64;
        if settled || std::time::Instant::now() >= deadline {
            assert_eq!(stats.reply_errors, 1);
            break (kernel, stats.buffers.buffers);
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    assert_eq!(
        held,
        (kernel.cached_buffers + kernel.buffers_in_use) as u64,
        "the handler holds a buffer SCST never took: {kernel:?}"
    );
}

fn write10(lba: u32, blocks: u16) -> Vec<u8> {
    let mut cdb = vec![0x2A, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    cdb[2..6].copy_from_slice(&lba.to_be_bytes());
    cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
    cdb
}

fn read10(lba: u32, blocks: u16) -> Vec<u8> {
    let mut cdb = write10(lba, blocks);
    cdb[0] = 0x28;
    cdb
}

/// §3.3: the kernel writes `replies_done` before it fetches, also when a reply fails; a call
/// that fails earlier (EFAULT reading the header) wrote nothing and read no reply. The handler
/// must send those replies again, not take reply 0 for refused: with `replies_done` preset to
/// 0 it dropped the first reply, and its command never completed.
#[test]
fn replies_the_kernel_never_read_are_sent_again() {
    let failed = Arc::new(AtomicU32::new(0));
    let hook_failed = Arc::clone(&failed);
    let hook: Box<MultiHook> = Box::new(move |fd, arg| {
        // Fail the first two calls that carry replies, before reading anything.
        if arg.header().replies_cnt > 0 && hook_failed.load(Ordering::SeqCst) < 2 {
            hook_failed.fetch_add(1, Ordering::SeqCst);
            return Err(Errno::EFAULT);
        }
        fd.reply_and_get_multi(arg)
    });
    let rig = rig("contract-untaken", hook);
    let session = rig.session(0);
    let data: Vec<u8> = (0..BLOCK as usize * 4).map(|i| (i % 251) as u8).collect();
    for tag in 0..4u32 {
        let w = execute(
            &session,
            u64::from(tag) * 2,
            &write10(tag * 4, 4),
            data.clone(),
            0,
        );
        assert_eq!(w.status, sam_status::GOOD, "{w:?}");
        let r = execute(
            &session,
            u64::from(tag) * 2 + 1,
            &read10(tag * 4, 4),
            Vec::new(),
            BLOCK * 4,
        );
        assert_eq!((r.status, &r.data_in), (sam_status::GOOD, &data));
    }
    assert_eq!(failed.load(Ordering::SeqCst), 2, "the kernel failed two calls");
    assert_eq!(rig.frontend().stats().reply_errors, 0, "no reply was lost");
    session.detach();
}

/// §3.5: a WRITE's EXEC names its buffer, which holds the initiator's data. An EXEC for a
/// WRITE with pbuf 0 breaks the contract: the handler answers HARDWARE ERROR and writes
/// nothing (it used to allocate a fresh buffer and write its zeroes to the medium, GOOD).
#[test]
fn a_write_exec_without_its_buffer_writes_nothing() {
    let meddle = Arc::new(AtomicBool::new(false));
    let hook_meddle = Arc::clone(&meddle);
    let hook: Box<MultiHook> = Box::new(move |fd, arg| {
        let result = fd.reply_and_get_multi(arg);
        if hook_meddle.load(Ordering::SeqCst) {
            for i in 0..arg.header().cmds_cnt.max(0) as usize {
                let cmd = arg.cmd_mut(i);
                if cmd.subcode != abi::SCST_USER_EXEC {
                    continue;
                }
                let mut exec: abi::ScsiCmdExec = cmd.read_payload();
                if exec.data_direction == data_direction::WRITE {
                    exec.pbuf = 0;
                    cmd.write_payload(&exec);
                }
            }
        }
        result
    });
    let rig = rig("contract-write-pbuf0", hook);
    let session = rig.session(0);
    let old = vec![0xA5u8; BLOCK as usize];
    let w = execute(&session, 1, &write10(7, 1), old.clone(), 0);
    assert_eq!(w.status, sam_status::GOOD);

    meddle.store(true, Ordering::SeqCst);
    let w = execute(&session, 2, &write10(7, 1), vec![0x5Au8; BLOCK as usize], 0);
    meddle.store(false, Ordering::SeqCst);
    assert_eq!(w.status, sam_status::CHECK_CONDITION, "{w:?}");
    assert_eq!(
        decode_sense(&w.sense),
        Some((0x04, 0x44, 0x00)),
        "HARDWARE ERROR / INTERNAL TARGET FAILURE"
    );

    let r = execute(&session, 3, &read10(7, 1), Vec::new(), BLOCK);
    assert_eq!(r.status, sam_status::GOOD);
    assert_eq!(r.data_in, old, "the medium keeps what was there");
    session.detach();
}

/// Submit one command (tag 1) while the hook refuses to read replies, and wait (bounded) until
/// the worker has dropped its reply (counted as a reply error).
fn submit_until_its_reply_is_dropped(
    rig: &Rig,
    session: &scst_accel_handler::loopback::Session,
    cdb: Vec<u8>,
    data_out: Vec<u8>,
    expected_data_in: u32,
) {
    session
        .submit(scst_accel_handler::loopback::ScsiRequest {
            tag: 1,
            cdb,
            data_out,
            expected_data_in,
            queue_type: abi::queue_type::SIMPLE,
            timeout_secs: 30,
        })
        .expect("submit");
    let deadline = std::time::Instant::now() + scst_accel_tests::WAIT;
    while rig.frontend().stats().reply_errors == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the replies were never dropped"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// A kernel that keeps failing before it reads any reply does not make the worker resend
/// forever: after a bounded number of calls the replies are dropped (counted as reply errors)
/// and the disk's teardown is triggered, since SCST never completes a command handed to the
/// handler on its own (spec §4): only the close path answers the dropped reply's command.
#[test]
fn replies_the_kernel_keeps_refusing_to_read_are_dropped_after_a_bound() {
    let refuse = Arc::new(AtomicBool::new(true));
    let calls = Arc::new(AtomicU32::new(0));
    let (hook_refuse, hook_calls) = (Arc::clone(&refuse), Arc::clone(&calls));
    let hook: Box<MultiHook> = Box::new(move |fd, arg| {
        let header = arg.header();
        if header.replies_cnt > 0 && hook_refuse.load(Ordering::SeqCst) {
            hook_calls.fetch_add(1, Ordering::SeqCst);
            return Err(Errno::EFAULT);
        }
        fd.reply_and_get_multi(arg)
    });
    refuse.store(false, Ordering::SeqCst);
    let rig = rig("contract-untaken-bound", hook);
    let session = rig.session(0);
    refuse.store(true, Ordering::SeqCst);
    submit_until_its_reply_is_dropped(&rig, &session, write10(0, 1), vec![1u8; BLOCK as usize], 0);
    refuse.store(false, Ordering::SeqCst);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "three calls, then the replies are dropped"
    );
    assert!(
        session.completions().try_recv().is_err(),
        "the dropped reply's command is not answered while the fd is open"
    );
    assert_eq!(
        rig.frontend().trigger(),
        Some(TeardownTrigger::RepliesRefused(Errno::EFAULT.to_string())),
        "the disk is torn down: the close path answers what the kernel never read"
    );
    session.detach();
}

/// The same, for a READ whose buffer the handler allocated at EXEC time and named in the dropped
/// reply: the kernel never read that reply, so it never attached the buffer and will never
/// return it; the handler frees it when it drops the reply. Afterwards its buffer table holds
/// exactly what the kernel holds.
#[test]
fn a_buffer_named_in_a_dropped_reply_is_freed() {
    let refuse = Arc::new(AtomicBool::new(false));
    let hook_refuse = Arc::clone(&refuse);
    let hook: Box<MultiHook> = Box::new(move |fd, arg| {
        if arg.header().replies_cnt > 0 && hook_refuse.load(Ordering::SeqCst) {
            return Err(Errno::EFAULT);
        }
        fd.reply_and_get_multi(arg)
    });
    let rig = rig("contract-untaken-pbuf", hook);
    let session = rig.session(0);
    let before = rig.frontend().stats().buffers;
    refuse.store(true, Ordering::SeqCst);
    submit_until_its_reply_is_dropped(&rig, &session, read10(0, 8), Vec::new(), BLOCK * 8);
    refuse.store(false, Ordering::SeqCst);
    let after = rig.frontend().stats().buffers;
    assert!(
        after.allocated > before.allocated,
        "the READ's buffer was allocated at EXEC time: {after:?}"
    );
    let kernel = rig.kernel.device_stats(&rig.name).expect("device");
    assert_eq!(
        after.buffers,
        (kernel.cached_buffers + kernel.buffers_in_use) as u64,
        "the handler holds a buffer SCST never took: {kernel:?}"
    );
    session.detach();
}

/// A READ's buffer is allocated at EXEC time and named in the EXEC reply (spec §3.5); SCST owns
/// it only once it takes that reply. When the kernel refuses the reply before attaching the
/// buffer (EINVAL: here a resp_data_len above bufflen), SCST never returns it, so the handler
/// must free it: afterwards its buffer table holds exactly what the kernel holds.
#[test]
fn a_buffer_named_in_a_refused_exec_reply_is_freed() {
    let (hook, meddled) = rewrite_one_reply(
        |r| r.subcode == abi::SCST_USER_EXEC && r.read_payload::<abi::ExecReply>().pbuf != 0,
        |r| {
            let mut exec: abi::ExecReply = r.read_payload();
            exec.resp_data_len = i32::MAX; // above any bufflen: rejected before the pin
            abi::ReplyCmd::with_payload(r.cmd_h, r.subcode, &exec)
        },
    );
    let rig = rig("contract-refused-pbuf", hook);
    let session = rig.session(0);
    let r = execute(&session, 1, &read10(0, 8), Vec::new(), BLOCK * 8);
    assert!(
        meddled.load(Ordering::SeqCst),
        "the READ's buffer was named in its EXEC reply"
    );
    assert_eq!(
        r.status,
        sam_status::CHECK_CONDITION,
        "the kernel failed the command: {r:?}"
    );
    assert_one_refused_reply_and_no_stray_buffer(&rig);
    session.detach();
}

/// §8.15, §7: `sess_h` is the kernel's `tgt_dev` address, handed out again once that one is
/// freed, which an ATTACH that timed out does without any DETACH (its late reply is dropped).
/// The handler, which takes that ATTACH late, must still accept the next session with the same
/// `sess_h`: it refused it with EEXIST, and the LUN stayed invisible to every session that
/// `tgt_dev` address came back for.
#[test]
fn a_sess_h_reused_after_an_attach_timed_out_is_accepted() {
    use scst_accel_handler::loopback::AttachError;
    use scst_accel_handler::loopback::KernelConfig;
    use scst_accel_handler::loopback::LoopbackKernel;
    use scst_accel_handler::loopback::SessionSpec;
    let timeout = std::time::Duration::from_millis(300);
    let held = Arc::new(AtomicBool::new(false));
    let hook_held = Arc::clone(&held);
    // The first ATTACH reaches the handler only after the kernel gave up waiting for it.
    let hook: Box<MultiHook> = Box::new(move |fd, arg| {
        fd.reply_and_get_multi(arg)?;
        let header = arg.header();
        let attach = (0..header.cmds_cnt as usize).any(|i| arg.cmd(i).subcode == abi::SCST_USER_ATTACH_SESS);
        if attach && !hook_held.swap(true, Ordering::SeqCst) {
            std::thread::sleep(timeout * 3);
        }
        Ok(())
    });
    let kernel = LoopbackKernel::new(KernelConfig {
        attach_timeout: timeout,
        ..KernelConfig::default()
    });
    let config = FrontendConfig {
        workers: 1,
        cmds_per_call: 8,
        ..FrontendConfig::default()
    };
    let rig = Rig::on_kernel(
        kernel,
        "contract-sess-reuse",
        BLOCK,
        BLOCKS,
        default_options(),
        Arc::new(RamStore::new(BLOCK, BLOCKS, 2048)),
        Arc::new(SgvPool::new(None, None, 1 << 30)),
        config,
        |fd| Arc::new(MeddlingFd::new(fd, hook)) as Arc<dyn ScstUserFd>,
    );
    let spec = |i: u32| SessionSpec {
        initiator_name: format!("iqn.test:reuse-{i}"),
        target_name: "iqn.test:target".into(),
        lun: 0,
        rd_only: false,
    };
    let first = rig.kernel.attach_session(&rig.name, spec(0));
    assert!(matches!(first, Err(AttachError::Timeout(_))), "{:?}", first.err());
    // The handler has now taken the late ATTACH: its session table knows that `sess_h`.
    let deadline = std::time::Instant::now() + scst_accel_tests::WAIT;
    while rig.frontend().sessions().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the late ATTACH never reached the handler"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let stale: Vec<u64> = rig.frontend().sessions().keys().copied().collect();
    let session = rig
        .kernel
        .attach_session(&rig.name, spec(1))
        .expect("the next session is accepted");
    assert_eq!(
        stale,
        vec![session.sess_h()],
        "the model handed the same sess_h out again"
    );
    let r = execute(&session, 1, &read10(0, 1), Vec::new(), BLOCK);
    assert_eq!(r.status, sam_status::GOOD, "{r:?}");
    session.detach();
}

/// §3.6: PREALLOC_BUFFER hands each buffer over at its size class: the kernel pins the pages
/// `bufflen` spans and fills an SGV object of the class from them, so a `bufflen` below the
/// class fails with ENOMEM. The handler sent the requested length (96 KiB, in the 128 KiB
/// class), and preallocation did nothing.
#[test]
fn prealloc_hands_each_buffer_over_at_its_size_class() {
    let rig = rig(
        "contract-prealloc",
        Box::new(|fd, arg| fd.reply_and_get_multi(arg)),
    );
    assert_eq!(rig.frontend().prealloc_buffers(2, 96 << 10), Ok(2));
    let kernel = rig.kernel.device_stats(&rig.name).expect("device");
    assert_eq!(kernel.cached_buffers, 2, "{kernel:?}");
}

/// §3.3: a REPLY_AND_GET_MULTI that fails before the kernel wrote anything (EFAULT reading the
/// header) leaves `cmds_cnt` at what the handler asked for, and the command slots hold the
/// previous call's commands. The handler took that count for commands fetched and ran the old
/// ones again (a second EXEC of a finished command, whose reply the kernel refused).
#[test]
fn a_fetch_that_failed_before_writing_anything_fetched_nothing() {
    let failed = Arc::new(AtomicU32::new(0));
    let fetched_some = Arc::new(AtomicBool::new(false));
    let hook_failed = Arc::clone(&failed);
    let hook_fetched = Arc::clone(&fetched_some);
    let hook: Box<MultiHook> = Box::new(move |fd, arg| {
        let header = arg.header();
        // A call without replies, after commands were fetched: fail it as an unreadable
        // header does, writing nothing.
        if header.replies_cnt == 0
            && header.cmds_cnt > 0
            && hook_fetched.load(Ordering::SeqCst)
            && hook_failed.load(Ordering::SeqCst) < 3
        {
            hook_failed.fetch_add(1, Ordering::SeqCst);
            return Err(Errno::EFAULT);
        }
        let result = fd.reply_and_get_multi(arg);
        if arg.header().cmds_cnt > 0 {
            hook_fetched.store(true, Ordering::SeqCst);
        }
        result
    });
    let rig = rig("contract-unwritten-count", hook);
    let session = rig.session(0);
    for tag in 0..6u32 {
        let r = execute(&session, u64::from(tag), &read10(tag, 1), Vec::new(), BLOCK);
        assert_eq!(r.status, sam_status::GOOD, "{r:?}");
    }
    assert!(
        failed.load(Ordering::SeqCst) > 0,
        "the kernel failed some fetches"
    );
    let stats = rig.frontend().stats();
    assert_eq!(stats.exec, 6, "each command ran once: {stats:?}");
    assert_eq!(
        stats.reply_errors, 0,
        "no reply for a command run twice: {stats:?}"
    );
    session.detach();
}

/// §3.4: an ALLOC_MEM reply's buffer is attached by the pin its reply asks for; when that
/// fails (EFAULT; ENOMEM for the page array) the reply fails and SCST never holds the buffer,
/// so no ON_CACHED_MEM_FREE returns it. The handler kept it for ever (its memory cap shrank by
/// one buffer each time): it must free it.
#[test]
fn a_buffer_named_in_a_refused_alloc_mem_reply_is_freed() {
    let (hook, meddled) = rewrite_one_reply(
        |r| r.subcode == abi::SCST_USER_ALLOC_MEM && r.read_payload::<abi::AllocMemReply>().pbuf != 0,
        // A page nothing maps: the kernel's pin of it fails.
        |r| abi::ReplyCmd::with_payload(r.cmd_h, r.subcode, &abi::AllocMemReply { pbuf: 0x1000 }),
    );
    let rig = rig("contract-refused-alloc", hook);
    let session = rig.session(0);
    let data = vec![7u8; BLOCK as usize * 8];
    let w = execute(&session, 1, &write10(0, 8), data, 0);
    assert!(
        meddled.load(Ordering::SeqCst),
        "the WRITE's buffer came by ALLOC_MEM"
    );
    assert_eq!(
        w.status,
        sam_status::CHECK_CONDITION,
        "the kernel failed it: {w:?}"
    );
    assert_one_refused_reply_and_no_stray_buffer(&rig);
    session.detach();
}
