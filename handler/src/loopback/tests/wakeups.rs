//! Wake-ups (`dev_user_add_to_ready`, scst_user.c:1143-1201; `dev_user_poll`, 2517-2540): work
//! a handler thread's reply produces wakes neither a sibling asleep in poll nor one asleep in a
//! blocking fetch; a poll entered while it is queued returns at once; new commands, the
//! initiator's data arriving and ON_FREE_CMD wake.

use super::validation::parse_reply;
use super::*;
use crate::loopback::uaccess::poll_readable;
use scst_accel_dma::PageBuffer;

fn call_parse_rig(nonblocking: bool) -> Rig {
    let kernel = LoopbackKernel::new(KernelConfig::default());
    let fd = kernel.open(nonblocking);
    let s = strings(&crate::transport::version::default_version_string(), "GPL");
    let o = opt(
        abi::parse_type::CALL,
        abi::on_free_cmd_type::CALL,
        abi::memory_reuse_type::NO_REUSE,
    );
    fd.register_device(&desc(&s, "disk0", o, BS)).unwrap();
    Rig {
        kernel,
        fd,
        name: "disk0".into(),
        _strings: s,
    }
}

#[test]
fn work_a_reply_produces_wakes_no_sleeping_poller_and_a_new_poll_sees_it() {
    let r = call_parse_rig(true);
    let s = attach(&r, false);
    // A poller asleep from here on: the fd it polls, taken once.
    let asleep = r.fd.poll_fd();
    assert!(!poll_readable(asleep));
    s.submit(read10(1, 0, 8)).unwrap();
    assert!(poll_readable(asleep), "a new command wakes pollers");
    let c = fetch(&r.fd).unwrap();
    assert_eq!(c.subcode, abi::SCST_USER_PARSE);
    assert!(!poll_readable(asleep));
    // The PARSE reply, without a fetch: the EXEC it produces is queued in thread context.
    r.fd.reply_cmd(&parse_reply(c.cmd_h, |p| {
        p.bufflen = 4096;
        p.data_len = 4096;
    }))
    .unwrap();
    assert!(
        !poll_readable(asleep),
        "an EXEC produced by a reply wakes no sleeping poller"
    );
    // A poll entered now sees it (dev_user_poll looks at the ready list first).
    assert!(poll_readable(r.fd.poll_fd()));
    let c = fetch(&r.fd).unwrap();
    assert_eq!(c.subcode, abi::SCST_USER_EXEC);
    assert!(!poll_readable(r.fd.poll_fd()));
    // ON_FREE_CMD wakes.
    r.fd.reply_cmd(&completed(c.cmd_h, 0, 0, 0)).unwrap();
    assert!(poll_readable(asleep), "ON_FREE_CMD wakes pollers");
    let c = fetch(&r.fd).unwrap();
    assert_eq!(c.subcode, abi::SCST_USER_ON_FREE_CMD);
    assert_eq!(recv(&s).status, 0);
}

#[test]
fn the_data_of_a_write_arriving_wakes_pollers() {
    let r = call_parse_rig(true);
    let s = attach(&r, false);
    let asleep = r.fd.poll_fd();
    s.submit(write10(1, 0, vec![7; 4096])).unwrap();
    let c = fetch(&r.fd).unwrap();
    assert_eq!(c.subcode, abi::SCST_USER_PARSE);
    r.fd.reply_cmd(&parse_reply(c.cmd_h, |p| {
        p.data_direction = abi::data_direction::WRITE;
        p.bufflen = 4096;
        p.data_len = 4096;
        p.op_flags |= abi::op_flags::WRITE_MEDIUM;
    }))
    .unwrap();
    // ALLOC_MEM, produced by the reply: nobody woken.
    assert!(!poll_readable(asleep));
    let c = fetch(&r.fd).unwrap();
    assert_eq!(c.subcode, abi::SCST_USER_ALLOC_MEM);
    let buf = PageBuffer::new(4096).unwrap();
    r.fd.reply_cmd(&ReplyCmd::with_payload(
        c.cmd_h,
        abi::SCST_USER_ALLOC_MEM,
        &abi::AllocMemReply { pbuf: buf.addr() },
    ))
    .unwrap();
    // The target driver receives the data and queues the command with a wake-up.
    assert!(poll_readable(asleep), "the data arriving wakes pollers");
    let c = fetch(&r.fd).unwrap();
    assert_eq!(c.subcode, abi::SCST_USER_EXEC);
    drop(s);
    drop(buf);
}

#[test]
fn a_blocked_fetcher_is_not_woken_by_work_another_threads_reply_produces() {
    let r = call_parse_rig(false);
    let s = attach(&r, false);
    s.submit(read10(1, 0, 8)).unwrap();
    let parse = fetch(&r.fd).unwrap();
    assert_eq!(parse.subcode, abi::SCST_USER_PARSE);
    let (tx, rx) = crossbeam_channel::bounded(1);
    let fd = r.fd.clone();
    let sibling = std::thread::spawn(move || {
        let got = fetch(&fd);
        let _ = tx.send(got.map(|c| c.subcode));
    });
    // Let the sibling fall asleep, then produce an EXEC by a reply alone.
    std::thread::sleep(Duration::from_millis(100));
    r.fd.reply_cmd(&parse_reply(parse.cmd_h, |p| {
        p.bufflen = 4096;
        p.data_len = 4096;
    }))
    .unwrap();
    // Longer than the model's wait slice: the sibling still sleeps.
    assert!(
        rx.recv_timeout(Duration::from_millis(700)).is_err(),
        "a blocked fetcher was woken by an EXEC a reply produced"
    );
    // A new command wakes it: it runs the active list, and the PARSE (queued at the head)
    // is what it takes.
    s.submit(tur(2)).unwrap();
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), Ok(abi::SCST_USER_PARSE));
    sibling.join().unwrap();
    // The EXEC waited for this thread's next fetch.
    assert_eq!(fetch(&r.fd).unwrap().subcode, abi::SCST_USER_EXEC);
}
