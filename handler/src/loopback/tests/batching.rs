//! The batched REPLY_AND_GET path (`reply_get`): one syscall reads a reply array, one more
//! reads the data of its EXEC replies, and faults still land on the element the kernel's
//! per-element copies would fault on (spec §3.3, §3.4).

use super::*;
use crate::abi;
use crate::abi::exec_reply_type;
use crate::abi::sam_status;
use crate::abi::ExecReply;
use crate::abi::GetCmd;
use crate::abi::ReplyCmd;
use crate::loopback::uaccess::GuardedPage;
use crate::loopback::uaccess::RevocablePage;
use crate::transport::Errno;
use crate::transport::ScstUserFd;
use zerocopy::IntoBytes;

/// Three concurrent READ misses answered with `pages` fill the SGV cache with them.
fn fill_cache(r: &Rig, s: &Session, pages: &[RevocablePage; 3]) {
    for tag in 0..3 {
        s.submit(read10(tag, 0, 8)).unwrap();
    }
    let misses: Vec<GetCmd> = (0..3).map(|_| wait_cmd(&r.fd)).collect();
    for (c, page) in misses.iter().zip(pages) {
        let e: abi::ScsiCmdExec = c.read_payload();
        assert_eq!((c.subcode, e.pbuf), (abi::SCST_USER_EXEC, 0), "a miss");
        r.fd.reply_cmd(&completed(c.cmd_h, 4096, page.addr(), 0)).unwrap();
        assert_eq!(recv(s).status, sam_status::GOOD);
    }
    assert_eq!(stats(r).cached_buffers, 3);
}

/// The page of `pages` an EXEC carries.
fn page_of(c: &GetCmd, pages: &[RevocablePage; 3]) -> usize {
    let e: abi::ScsiCmdExec = c.read_payload();
    pages
        .iter()
        .position(|p| p.addr() == e.pbuf)
        .expect("a cache hit carries one of the cached pages")
}

/// Three READs of one page each, arriving as EXECs that carry a cached buffer (so their
/// replies need no pin and the batch may read their data ahead). Returns the EXECs, each with
/// the index of its page in `pages`.
fn cached_execs(r: &Rig, s: &Session, pages: &[RevocablePage; 3]) -> Vec<(GetCmd, usize)> {
    fill_cache(r, s, pages);
    for tag in 10..13 {
        s.submit(read10(tag, 0, 8)).unwrap();
    }
    (0..3)
        .map(|_| {
            let c = wait_cmd(&r.fd);
            let page = page_of(&c, pages);
            (c, page)
        })
        .collect()
}

fn multi_header(replies: &[ReplyCmd], cmds_cnt: i16) -> abi::GetMultiHeader {
    abi::GetMultiHeader {
        preplies: replies.as_ptr() as u64,
        replies_cnt: replies.len() as i16,
        replies_done: -1,
        cmds_cnt,
        _pad: 0,
    }
}

#[test]
fn one_syscall_reads_the_array_and_one_the_data_of_all_exec_replies() {
    let r = rig(default_opt());
    let s = attach(&r, false);
    let pages = [RevocablePage::new(), RevocablePage::new(), RevocablePage::new()];
    let execs = cached_execs(&r, &s, &pages);
    for (i, p) in pages.iter().enumerate() {
        p.fill(0xa0 + i as u8);
    }
    // The middle reply carries sense too: it is read in the same syscall.
    let sense: Vec<u8> = (0..18).collect();
    let with_sense = ReplyCmd::with_payload(
        execs[1].0.cmd_h,
        abi::SCST_USER_EXEC,
        &ExecReply {
            resp_data_len: 4096,
            reply_type: exec_reply_type::COMPLETED,
            status: sam_status::CHECK_CONDITION,
            sense_len: 18,
            psense_buffer: sense.as_ptr() as u64,
            ..Default::default()
        },
    );
    let replies = [
        completed(execs[0].0.cmd_h, 4096, 0, 0),
        with_sense,
        completed(execs[2].0.cmd_h, 4096, 0, 0),
    ];
    let mut m = abi::MultiBuffer::new(2);
    m.set_header(multi_header(&replies, 0));
    let before = r.kernel.syscalls();
    r.fd.reply_and_get_multi(&mut m).unwrap();
    let after = r.kernel.syscalls();
    assert_eq!(
        after.process_vm_readv - before.process_vm_readv,
        2,
        "the reply array, then the data and sense of the three EXEC replies"
    );
    assert_eq!(after.process_vm_writev, before.process_vm_writev);
    let h = m.header();
    assert_eq!((h.replies_done, h.cmds_cnt), (3, 0));
    for (i, (_, page)) in execs.iter().enumerate() {
        let done = recv(&s);
        assert_eq!(
            done.data_in,
            vec![0xa0 + *page as u8; 4096],
            "reply {i} got its own page"
        );
        if i == 1 {
            assert_eq!(
                (done.status, done.sense.clone()),
                (sam_status::CHECK_CONDITION, sense.clone())
            );
        } else {
            assert_eq!((done.status, done.sense.len()), (sam_status::GOOD, 0));
        }
    }
}

#[test]
fn an_unreadable_buffer_in_the_middle_of_the_array_fails_there_as_before() {
    let r = rig(default_opt());
    let s = attach(&r, false);
    let pages = [RevocablePage::new(), RevocablePage::new(), RevocablePage::new()];
    let execs = cached_execs(&r, &s, &pages);
    for (i, p) in pages.iter().enumerate() {
        p.fill(0xb0 + i as u8);
    }
    // The handler lost the middle reply's buffer after the kernel pinned it.
    pages[execs[1].1].revoke();
    let replies: Vec<ReplyCmd> = execs
        .iter()
        .map(|(c, _)| completed(c.cmd_h, 4096, 0, 0))
        .collect();
    let mut m = abi::MultiBuffer::new(2);
    m.set_header(multi_header(&replies, 2));
    assert_eq!(r.fd.reply_and_get_multi(&mut m).err(), Some(Errno::EFAULT));
    let h = m.header();
    assert_eq!(
        (h.replies_done, h.cmds_cnt),
        (1, 0),
        "failed at the bad reply, nothing fetched"
    );
    let first = recv(&s);
    assert_eq!(first.status, sam_status::GOOD);
    assert_eq!(first.data_in, vec![0xb0 + execs[0].1 as u8; 4096]);
    let failed = recv(&s);
    assert_eq!(failed.status, sam_status::CHECK_CONDITION);
    assert_eq!(sense_of(&failed), (0x0b, 0x44, 0x00), "internal failure");
    assert!(s.completions().try_recv().is_err(), "reply 2 was not processed");
    // The rest is resubmitted on its own and still works.
    m.set_header(multi_header(&replies[2..], 0));
    r.fd.reply_and_get_multi(&mut m).unwrap();
    assert_eq!(m.header().replies_done, 1);
    assert_eq!(recv(&s).data_in, vec![0xb0 + execs[2].1 as u8; 4096]);
}

#[test]
fn a_reply_array_running_into_unreadable_memory_fails_at_that_element() {
    let r = rig(default_opt());
    let s = attach(&r, false);
    for tag in 0..3 {
        s.submit(tur(tag)).unwrap();
    }
    let hs: Vec<u32> = (0..3).map(|_| wait_cmd(&r.fd).cmd_h).collect();
    // Two whole replies and the first 16 bytes of the third end right at a guard page.
    let mut bytes = Vec::new();
    for h in &hs {
        bytes.extend_from_slice(completed(*h, 0, 0, 0).as_bytes());
    }
    bytes.truncate(2 * std::mem::size_of::<ReplyCmd>() + 16);
    let guard = GuardedPage::new();
    let addr = guard.place_at_end(&bytes);
    let mut m = abi::MultiBuffer::new(2);
    m.set_header(abi::GetMultiHeader {
        preplies: addr,
        replies_cnt: 3,
        replies_done: -1,
        cmds_cnt: 2,
        _pad: 0,
    });
    assert_eq!(r.fd.reply_and_get_multi(&mut m).err(), Some(Errno::EFAULT));
    let h = m.header();
    assert_eq!((h.replies_done, h.cmds_cnt), (2, 0));
    assert_eq!((recv(&s).tag, recv(&s).tag), (0, 1));
    assert!(
        s.completions().try_recv().is_err(),
        "the straddling reply was not processed"
    );
    // REPLY_AND_GET_CMD with a preply that straddles: EFAULT, nothing fetched.
    s.submit(tur(7)).unwrap();
    let mut c = GetCmd::zeroed();
    c.set_preply(addr + 2 * std::mem::size_of::<ReplyCmd>() as u64);
    assert_eq!(r.fd.reply_and_get_cmd(&mut c), Err(Errno::EFAULT));
    assert_eq!(
        wait_cmd(&r.fd).subcode,
        abi::SCST_USER_EXEC,
        "the new command is still there"
    );
}

#[test]
fn the_counter_sees_every_model_syscall_of_a_command() {
    let r = rig(default_opt());
    let s = attach(&r, false);
    let before = r.kernel.syscalls();
    s.submit(tur(1)).unwrap();
    let c = wait_cmd(&r.fd);
    let reply = completed(c.cmd_h, 0, 0, 0);
    let mut m = abi::MultiBuffer::new(1);
    m.set_header(multi_header(std::slice::from_ref(&reply), 1));
    // Nothing is left to fetch: EAGAIN for the first slot (spec §3.3), the reply is done.
    assert_eq!(r.fd.reply_and_get_multi(&mut m), Err(Errno::EAGAIN));
    assert_eq!(m.header().replies_done, 1);
    assert_eq!(recv(&s).status, sam_status::GOOD);
    let after = r.kernel.syscalls();
    // The reply (56 bytes) is the one user copy; the poll pipe went up once (the command
    // became ready) and down once (the fetch took it).
    assert_eq!(after.process_vm_readv - before.process_vm_readv, 1);
    assert_eq!(after.process_vm_writev - before.process_vm_writev, 0);
    assert_eq!(after.poll_pipe_writes - before.poll_pipe_writes, 1);
    assert_eq!(after.poll_pipe_reads - before.poll_pipe_reads, 1);
    assert!(!crate::loopback::uaccess::poll_readable(r.fd.poll_fd()));
}

#[test]
fn the_data_out_of_every_write_fetched_goes_out_in_one_syscall() {
    let r = rig(default_opt());
    let s = attach(&r, false);
    let pages = [RevocablePage::new(), RevocablePage::new(), RevocablePage::new()];
    fill_cache(&r, &s, &pages);
    for tag in 0..3u8 {
        s.submit(write10(u64::from(tag), 0, vec![0xc0 + tag; 4096]))
            .unwrap();
    }
    let mut m = abi::MultiBuffer::new(4);
    m.set_header(multi_header(&[], 4));
    let before = r.kernel.syscalls();
    r.fd.reply_and_get_multi(&mut m).unwrap();
    let after = r.kernel.syscalls();
    assert_eq!(m.header().cmds_cnt, 3);
    assert_eq!(
        after.process_vm_writev - before.process_vm_writev,
        1,
        "three data-outs, one syscall"
    );
    for i in 0..3 {
        let c = *m.cmd(i);
        assert_eq!(c.subcode, abi::SCST_USER_EXEC, "a hit: no ALLOC_MEM");
        assert_eq!(
            pages[page_of(&c, &pages)].contents(),
            vec![0xc0 + i as u8; 4096],
            "write {i}"
        );
    }
}

#[test]
fn an_unwritable_buffer_among_the_writes_fetched_fails_there_and_requeues_the_rest() {
    let r = rig(default_opt());
    let s = attach(&r, false);
    let pages = [RevocablePage::new(), RevocablePage::new(), RevocablePage::new()];
    fill_cache(&r, &s, &pages);
    for tag in 0..3u8 {
        s.submit(write10(u64::from(tag), 0, vec![0xd0 + tag; 4096]))
            .unwrap();
    }
    // Which page each write gets is the cache's choice: look at them one by one first.
    let mut m = abi::MultiBuffer::new(4);
    m.set_header(multi_header(&[], 4));
    r.fd.reply_and_get_multi(&mut m).unwrap();
    assert_eq!(m.header().cmds_cnt, 3);
    let order: Vec<usize> = (0..3).map(|i| page_of(m.cmd(i), &pages)).collect();
    for i in 0..3 {
        // Released one after the other, at distinct times.
        std::thread::sleep(std::time::Duration::from_millis(2));
        r.fd.reply_cmd(&completed(m.cmd(i).cmd_h, 0, 0, 0)).unwrap();
        assert_eq!(recv(&s).status, sam_status::GOOD);
    }
    // Three more writes: the cache hands out the most recently released page first, so the
    // middle one of them gets the middle page again, which is gone now.
    pages[order[1]].revoke();
    for tag in 10..13u8 {
        s.submit(write10(u64::from(tag), 0, vec![0xe0 + tag; 4096]))
            .unwrap();
    }
    m.set_header(multi_header(&[], 4));
    assert_eq!(r.fd.reply_and_get_multi(&mut m).err(), Some(Errno::EFAULT));
    assert_eq!(
        m.header().cmds_cnt,
        1,
        "the write before the bad buffer is delivered"
    );
    let first = *m.cmd(0);
    assert_eq!(pages[page_of(&first, &pages)].contents(), vec![0xe0 + 10; 4096]);
    let failed = recv(&s);
    assert_eq!((failed.tag, failed.status), (11, sam_status::CHECK_CONDITION));
    assert_eq!(sense_of(&failed), (0x0b, 0x44, 0x00), "internal failure");
    // The third never reached the user: it is fetched next, its data in its buffer.
    let third = wait_cmd(&r.fd);
    assert_eq!(third.subcode, abi::SCST_USER_EXEC);
    assert_ne!(third.cmd_h, first.cmd_h);
    assert_eq!(pages[page_of(&third, &pages)].contents(), vec![0xe0 + 12; 4096]);
}
