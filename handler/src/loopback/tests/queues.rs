//! MULTI, ready-queue ordering and the SGV cache (spec §3.1, §3.3, §3.6).

use super::*;
use crate::abi;
use crate::abi::GetCmd;
use crate::abi::ReplyCmd;
use crate::transport::Errno;
use crate::transport::ScstUserFd;
use scst_accel_dma::PageBuffer;
use std::time::Duration;

#[test]
fn multi_with_a_failing_middle_reply() {
    let r = rig(default_opt());
    let s = attach(&r, false);
    for tag in 0..3 {
        s.submit(tur(tag)).unwrap();
    }
    let hs: Vec<u32> = (0..3).map(|_| wait_cmd(&r.fd).cmd_h).collect();
    let replies = [
        completed(hs[0], 0, 0, 0),
        completed(999, 0, 0, 0),
        completed(hs[2], 0, 0, 0),
    ];
    let mut m = abi::MultiBuffer::new(2);
    m.set_header(abi::GetMultiHeader {
        preplies: replies.as_ptr() as u64,
        replies_cnt: 3,
        replies_done: -1,
        cmds_cnt: 2,
        _pad: 0,
    });
    assert_eq!(r.fd.reply_and_get_multi(&mut m).err(), Some(Errno::ESRCH));
    let h = m.header();
    assert_eq!((h.replies_done, h.cmds_cnt), (1, 0));
    assert_eq!(recv(&s).tag, 0);
    assert!(s.completions().try_recv().is_err(), "reply 2 was not processed");
    // Resubmit only the rest; fetch with room for two: EAGAIN at i>0 is success.
    s.submit(tur(10)).unwrap();
    m.set_header(abi::GetMultiHeader {
        preplies: replies[2..].as_ptr() as u64,
        replies_cnt: 1,
        replies_done: -1,
        cmds_cnt: 2,
        _pad: 0,
    });
    r.fd.reply_and_get_multi(&mut m).unwrap();
    let h = m.header();
    assert_eq!((h.replies_done, h.cmds_cnt), (1, 1));
    assert_eq!(m.cmd(0).subcode, abi::SCST_USER_EXEC);
    assert_eq!(recv(&s).tag, 2);
}

#[test]
fn ready_queue_ordering() {
    let r = rig(default_opt());
    let s = attach(&r, false);
    s.submit(write10(1, 0, vec![0; 512])).unwrap(); // ALLOC_MEM
    s.submit(write10(2, 0, vec![0; 512])).unwrap(); // ALLOC_MEM (LIFO: before 1)
    s.submit(tur(3)).unwrap(); // EXEC appended
    let mut hoq = tur(4);
    hoq.queue_type = abi::queue_type::HEAD_OF_QUEUE;
    s.submit(hoq).unwrap(); // EXEC at the head (after mgmt)
    let first = wait_cmd(&r.fd);
    let tm1 = s.task_mgmt(abi::tm_fn::CLEAR_ACA, None).unwrap();
    let tm2 = s.task_mgmt(abi::tm_fn::CLEAR_ACA, None).unwrap();
    assert!(tm1 < tm2);
    let order: Vec<GetCmd> = std::iter::once(first)
        .chain((0..5).map(|_| wait_cmd(&r.fd)))
        .collect();
    let subcodes: Vec<u32> = order.iter().map(|c| c.subcode).collect();
    assert_eq!(
        subcodes,
        vec![
            abi::SCST_USER_EXEC,
            abi::SCST_USER_TASK_MGMT_RECEIVED,
            abi::SCST_USER_TASK_MGMT_RECEIVED,
            abi::SCST_USER_ALLOC_MEM,
            abi::SCST_USER_ALLOC_MEM,
            abi::SCST_USER_EXEC,
        ]
    );
    // Handles follow submission order: 1..=4 for the commands (0 was ATTACH).
    let hs: Vec<u32> = order.iter().map(|c| c.cmd_h).collect();
    assert_eq!((hs[0], hs[3], hs[4], hs[5]), (4, 2, 1, 3));
    assert!(hs[1] < hs[2], "mgmt is FIFO");
}

#[test]
fn flush_cache_sends_on_cached_mem_free_with_the_owner_handle() {
    let r = rig(default_opt());
    let s = attach(&r, false);
    let buf = PageBuffer::new(4096).unwrap();
    s.submit(read10(1, 0, 1)).unwrap();
    let c = wait_cmd(&r.fd);
    r.fd.reply_cmd(&completed(c.cmd_h, 512, buf.addr(), 0)).unwrap();
    recv(&s);
    s.submit(read10(2, 0, 2)).unwrap();
    let c2 = wait_cmd(&r.fd);
    assert_ne!(c2.cmd_h, c.cmd_h);
    r.fd.reply_cmd(&completed(c2.cmd_h, 1024, 0, 0)).unwrap();
    recv(&s);
    r.fd.flush_cache().unwrap();
    let f = wait_cmd(&r.fd);
    assert_eq!(f.subcode, abi::SCST_USER_ON_CACHED_MEM_FREE);
    assert_eq!(f.cmd_h, c.cmd_h, "the OWNER's handle, not the last user's");
    let p: abi::OnCachedMemFree = f.read_payload();
    assert_eq!(p.pbuf, buf.addr());
    r.fd.reply_cmd(&ReplyCmd::new(f.cmd_h, abi::SCST_USER_ON_CACHED_MEM_FREE))
        .unwrap();
    assert_eq!(stats(&r).ucmds, 0);
    assert_eq!(stats(&r).cached_buffers, 0);
}

#[test]
fn prealloc_buffer_is_used_by_the_next_hit() {
    let r = rig(default_opt());
    let s = attach(&r, false);
    let buf = PageBuffer::new(8192).unwrap();
    let mut bad = abi::PreallocBuffer {
        pbuf: buf.addr() + 8,
        bufflen: 8192,
        ..Default::default()
    };
    assert_eq!(r.fd.prealloc_buffer(&mut bad).err(), Some(Errno::EINVAL));
    let mut pre = abi::PreallocBuffer {
        pbuf: buf.addr(),
        bufflen: 8192,
        ..Default::default()
    };
    r.fd.prealloc_buffer(&mut pre).unwrap();
    let owner = pre.out_cmd_h();
    s.submit(write10(1, 0, vec![4; 8192])).unwrap();
    let x = wait_cmd(&r.fd);
    assert_eq!(x.subcode, abi::SCST_USER_EXEC, "preallocated buffer hit");
    assert_eq!(x.read_payload::<abi::ScsiCmdExec>().pbuf, buf.addr());
    r.fd.reply_cmd(&completed(x.cmd_h, 0, 0, 0)).unwrap();
    recv(&s);
    r.kernel.flush_cache("disk0").unwrap();
    let f = wait_cmd(&r.fd);
    assert_eq!((f.subcode, f.cmd_h), (abi::SCST_USER_ON_CACHED_MEM_FREE, owner));
}

/// §3.6: the kernel pins the pages `bufflen` spans and fills an object of its size class
/// from them; 96 KiB (24 pages) is in the 32-page class, so it fails with ENOMEM.
#[test]
fn prealloc_below_its_size_class_fails() {
    let r = rig(default_opt());
    let buf = PageBuffer::new(128 << 10).unwrap();
    let mut short = abi::PreallocBuffer {
        pbuf: buf.addr(),
        bufflen: 96 << 10,
        ..Default::default()
    };
    assert_eq!(r.fd.prealloc_buffer(&mut short).err(), Some(Errno::ENOMEM));
    let mut class = abi::PreallocBuffer {
        pbuf: buf.addr(),
        bufflen: 128 << 10,
        ..Default::default()
    };
    r.fd.prealloc_buffer(&mut class).unwrap();
}

#[test]
fn purge_evicts_idle_buffers() {
    let r = rig_with(
        default_opt(),
        KernelConfig {
            purge_interval: Some(Duration::from_millis(20)),
            ..Default::default()
        },
    );
    let s = attach(&r, false);
    let buf = PageBuffer::new(4096).unwrap();
    s.submit(read10(1, 0, 1)).unwrap();
    let c = wait_cmd(&r.fd);
    r.fd.reply_cmd(&completed(c.cmd_h, 512, buf.addr(), 0)).unwrap();
    recv(&s);
    let f = wait_cmd(&r.fd);
    assert_eq!((f.subcode, f.cmd_h), (abi::SCST_USER_ON_CACHED_MEM_FREE, c.cmd_h));
}
