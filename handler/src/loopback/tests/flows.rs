//! Typical flows (spec §3.7).

use super::*;
use crate::abi;
use crate::abi::data_direction;
use crate::abi::sam_status;
use crate::abi::GetCmd;
use crate::abi::ReplyCmd;
use crate::transport::Errno;
use crate::transport::ScstUserFd;
use scst_accel_dma::PageBuffer;
use std::time::Instant;
use zerocopy::IntoBytes;

#[test]
fn read_miss_then_hit_reuses_the_cached_buffer() {
    let r = rig(default_opt());
    let s = attach(&r, false);
    s.submit(read10(1, 8, 3)).unwrap();
    let c = wait_cmd(&r.fd);
    assert_eq!(c.subcode, abi::SCST_USER_EXEC, "plain READ miss: no ALLOC_MEM");
    let e: abi::ScsiCmdExec = c.read_payload();
    assert_eq!((e.pbuf, e.alloc_len, e.bufflen, e.lba), (0, 4096, 1536, 8));
    assert_eq!(e.data_direction, data_direction::READ);
    assert_eq!(e.sess_h, s.sess_h());
    let buf = PageBuffer::new(4096).unwrap();
    buf.fill(0, 1536, 0x5a);
    r.fd.reply_cmd(&completed(c.cmd_h, 1536, buf.addr(), 0)).unwrap();
    let done = recv(&s);
    assert_eq!(
        (done.tag, done.status, done.aborted),
        (1, sam_status::GOOD, false)
    );
    assert_eq!(done.data_in, vec![0x5a; 1536]);
    let owner = c.cmd_h;
    assert_eq!(stats(&r).cached_buffers, 1);

    s.submit(read10(2, 0, 8)).unwrap();
    let c2 = wait_cmd(&r.fd);
    assert_eq!(c2.subcode, abi::SCST_USER_EXEC);
    let e2: abi::ScsiCmdExec = c2.read_payload();
    assert_eq!(e2.pbuf, buf.addr(), "cache hit carries the cached buffer");
    buf.fill(0, 4096, 0x11);
    r.fd.reply_cmd(&completed(c2.cmd_h, 4096, 0, 0)).unwrap();
    assert_eq!(recv(&s).data_in, vec![0x11; 4096]);
    // The owner ucmd is a zombie (ON_FREE_SKIPPED) until eviction.
    let dump = r.kernel.commands_dump("disk0").unwrap();
    assert!(
        dump.contains(&format!("ucmd {owner} state ON_FREE_SKIPPED ref 1")),
        "{dump}"
    );
}

#[test]
fn write_miss_allocates_then_hit_carries_the_data() {
    let r = rig(default_opt());
    let s = attach(&r, false);
    s.submit(write10(1, 4, vec![0xab; 2048])).unwrap();
    let c = wait_cmd(&r.fd);
    assert_eq!(c.subcode, abi::SCST_USER_ALLOC_MEM);
    let a: abi::ScsiCmdAllocMem = c.read_payload();
    assert_eq!((a.alloc_len, a.data_direction), (4096, data_direction::WRITE));
    let buf = PageBuffer::new(4096).unwrap();
    r.fd.reply_cmd(&ReplyCmd::with_payload(
        c.cmd_h,
        abi::SCST_USER_ALLOC_MEM,
        &abi::AllocMemReply { pbuf: buf.addr() },
    ))
    .unwrap();
    let x = wait_cmd(&r.fd);
    assert_eq!(
        (x.subcode, x.cmd_h),
        (abi::SCST_USER_EXEC, c.cmd_h),
        "same handle"
    );
    let e: abi::ScsiCmdExec = x.read_payload();
    assert_eq!(e.pbuf, buf.addr());
    let mut got = vec![0u8; 2048];
    buf.read_at(0, &mut got);
    assert_eq!(
        got,
        vec![0xab; 2048],
        "data-out is in the buffer when EXEC arrives"
    );
    r.fd.reply_cmd(&completed(x.cmd_h, 0, 0, 0)).unwrap();
    assert_eq!(recv(&s).status, sam_status::GOOD);

    s.submit(write10(2, 0, vec![0xcd; 4096])).unwrap();
    let x2 = wait_cmd(&r.fd);
    assert_eq!(x2.subcode, abi::SCST_USER_EXEC, "hit: no ALLOC_MEM");
    let mut got = vec![0u8; 4096];
    buf.read_at(0, &mut got);
    assert_eq!(got, vec![0xcd; 4096]);
    r.fd.reply_cmd(&completed(x2.cmd_h, 0, 0, 0)).unwrap();
    assert_eq!(recv(&s).status, sam_status::GOOD);
    assert_eq!(r.kernel.buffer_ownership_violations(), 0);

    // A WRITE's buffer holds the initiator's data until it comes back: one the handler wrote
    // after its reply is found at the next hit.
    buf.fill(17, 1, 0x00);
    s.submit(write10(3, 0, vec![0xef; 4096])).unwrap();
    let x3 = wait_cmd(&r.fd);
    assert_eq!(x3.subcode, abi::SCST_USER_EXEC, "hit");
    assert_eq!(r.kernel.buffer_ownership_violations(), 1);
    r.fd.reply_cmd(&completed(x3.cmd_h, 0, 0, 0)).unwrap();
    assert_eq!(recv(&s).status, sam_status::GOOD);
}

#[test]
fn no_reuse_with_on_free_call_reports_every_buffer() {
    let r = rig(opt(
        abi::parse_type::STANDARD,
        abi::on_free_cmd_type::CALL,
        abi::memory_reuse_type::NO_REUSE,
    ));
    let s = attach(&r, false);
    s.submit(read10(1, 0, 3)).unwrap();
    let c = wait_cmd(&r.fd);
    let e: abi::ScsiCmdExec = c.read_payload();
    assert_eq!(
        (e.pbuf, e.alloc_len),
        (0, 1536),
        "not cached: alloc_len = bufflen"
    );
    let mut heap = vec![7u8; 1536]; // any alignment is fine when not cached
    r.fd.reply_cmd(&completed(c.cmd_h, 1536, heap.as_mut_ptr() as u64, 0))
        .unwrap();
    assert_eq!(recv(&s).data_in, vec![7u8; 1536]);
    let f = wait_cmd(&r.fd);
    assert_eq!((f.subcode, f.cmd_h), (abi::SCST_USER_ON_FREE_CMD, c.cmd_h));
    let of: abi::ScsiOnFreeCmd = f.read_payload();
    assert_eq!(
        (of.pbuf, of.buffer_cached, of.resp_data_len),
        (heap.as_ptr() as u64, 0, 1536)
    );
    assert_eq!((of.aborted, of.status, of.delivery_status), (0, 0, 0));
    r.fd.reply_cmd(&ReplyCmd::new(f.cmd_h, abi::SCST_USER_ON_FREE_CMD))
        .unwrap();
    assert_eq!(stats(&r).ucmds, 0, "ucmd and its buffer reference are gone");

    s.submit(write10(2, 0, vec![1; 512])).unwrap();
    let a = wait_cmd(&r.fd);
    assert_eq!(a.subcode, abi::SCST_USER_ALLOC_MEM);
    let mut wbuf = vec![0u8; 512];
    r.fd.reply_cmd(&ReplyCmd::with_payload(
        a.cmd_h,
        abi::SCST_USER_ALLOC_MEM,
        &abi::AllocMemReply {
            pbuf: wbuf.as_mut_ptr() as u64,
        },
    ))
    .unwrap();
    let x = wait_cmd(&r.fd);
    assert_eq!(x.subcode, abi::SCST_USER_EXEC);
    assert_eq!(wbuf, vec![1; 512]);
    r.fd.reply_cmd(&completed(x.cmd_h, 0, 0, 0)).unwrap();
    recv(&s);
    let f = wait_cmd(&r.fd);
    assert_eq!(f.subcode, abi::SCST_USER_ON_FREE_CMD);
    r.fd.reply_cmd(&ReplyCmd::new(f.cmd_h, abi::SCST_USER_ON_FREE_CMD))
        .unwrap();
    assert_eq!(stats(&r).ucmds, 0);
}

#[test]
fn no_data_command_and_stale_bytes_beyond_payload_len() {
    let r = rig(default_opt());
    let s = attach(&r, false);
    s.submit(tur(9)).unwrap();
    let deadline = Instant::now() + WAIT;
    let c = loop {
        let mut c = GetCmd::zeroed();
        c.as_mut_bytes().fill(0xee);
        c.set_preply(0);
        match r.fd.reply_and_get_cmd(&mut c) {
            Ok(()) => break c,
            Err(Errno::EAGAIN) if Instant::now() < deadline => continue,
            Err(e) => panic!("{e:?}"),
        }
    };
    assert_eq!(c.subcode, abi::SCST_USER_EXEC);
    let len = abi::payload_len(abi::SCST_USER_EXEC).unwrap();
    assert!(
        c.as_bytes()[len..].iter().all(|&b| b == 0xee),
        "bytes beyond payload_len stay stale"
    );
    let e: abi::ScsiCmdExec = c.read_payload();
    assert_eq!(
        (e.pbuf, e.data_direction, e.alloc_len),
        (0, data_direction::NONE, 0)
    );
    r.fd.reply_cmd(&completed(c.cmd_h, 0, 0, 0)).unwrap();
    assert_eq!(recv(&s).status, sam_status::GOOD);
}

/// Spec §8.9: under memory reuse a buffer too big for the SGV pool's classes (above 4 MiB) is
/// still "cached" in the kernel's sense (`ucmd->buff_cached`): ON_FREE_CMD says so, and the
/// buffer comes back to its owner by ON_CACHED_MEM_FREE right after use. A handler that
/// registers ON_FREE_CMD_IGNORE with REUSE_ALL relies on it to free every buffer.
#[test]
fn a_buffer_too_big_for_the_pool_comes_back_by_on_cached_mem_free_right_after_use() {
    for on_free in [abi::on_free_cmd_type::CALL, abi::on_free_cmd_type::IGNORE] {
        let r = rig(opt(
            abi::parse_type::STANDARD,
            on_free,
            abi::memory_reuse_type::REUSE_ALL,
        ));
        let s = attach(&r, false);
        let blocks: u16 = 16384; // 8 MiB of 512-byte blocks
        let bytes = usize::from(blocks) * BS as usize;
        s.submit(read10(1, 0, blocks)).unwrap();
        let c = wait_cmd(&r.fd);
        let e: abi::ScsiCmdExec = c.read_payload();
        assert_eq!(
            (e.pbuf, e.alloc_len as usize),
            (0, bytes),
            "whole pages, no class"
        );
        let buf = PageBuffer::new(bytes).unwrap();
        r.fd.reply_cmd(&completed(c.cmd_h, bytes as i32, buf.addr(), 0))
            .unwrap();
        assert_eq!(recv(&s).status, sam_status::GOOD);
        if on_free == abi::on_free_cmd_type::CALL {
            let f = wait_cmd(&r.fd);
            assert_eq!(f.subcode, abi::SCST_USER_ON_FREE_CMD);
            let of: abi::ScsiOnFreeCmd = f.read_payload();
            assert_eq!(
                (of.pbuf, of.buffer_cached),
                (buf.addr(), 1),
                "cached: do not free it now"
            );
            r.fd.reply_cmd(&ReplyCmd::new(f.cmd_h, f.subcode)).unwrap();
        }
        let m = wait_cmd(&r.fd);
        assert_eq!(
            (m.subcode, m.cmd_h),
            (abi::SCST_USER_ON_CACHED_MEM_FREE, c.cmd_h),
            "to its owner"
        );
        let freed: abi::OnCachedMemFree = m.read_payload();
        assert_eq!(freed.pbuf, buf.addr());
        assert_eq!(stats(&r).cached_buffers, 0, "never kept by the pool");
        r.fd.reply_cmd(&ReplyCmd::new(m.cmd_h, m.subcode)).unwrap();
        assert_eq!(stats(&r).ucmds, 0, "the owner left with its reply");
    }
}

#[test]
fn a_batch_is_queued_in_order_up_to_its_first_refused_command() {
    let r = rig(default_opt());
    let s = attach(&r, false);
    let batch = vec![
        read10(1, 10, 1),
        read10(2, 20, 1),
        read10(1, 30, 1),
        read10(3, 40, 1),
    ];
    assert_eq!(
        s.submit_batch(batch),
        Err((2, crate::loopback::SubmitError::DuplicateTag(1))),
        "the third reuses tag 1, outstanding since the first"
    );
    let lbas: Vec<i64> = (0..2)
        .map(|_| {
            let c = wait_cmd(&r.fd);
            assert_eq!(c.subcode, abi::SCST_USER_EXEC);
            c.read_payload::<abi::ScsiCmdExec>().lba
        })
        .collect();
    assert_eq!(lbas, vec![10, 20], "the two accepted, in order");
    assert_eq!(
        fetch(&r.fd).map(|c| c.subcode),
        Err(Errno::EAGAIN),
        "nothing after the refused one"
    );
    assert_eq!(
        s.submit_batch(vec![read10(3, 40, 1)]),
        Ok(()),
        "tag 3 was never taken"
    );
    assert_eq!(wait_cmd(&r.fd).read_payload::<abi::ScsiCmdExec>().lba, 40);
}

/// The model's data buffers are reused, not allocated per command, when the initiator hands
/// them back: a recycled data-in buffer carries the next read's data, and a delivered
/// write's data-out buffer is offered for the next request (`spare.rs`).
#[test]
fn recycled_data_buffers_carry_the_next_commands_data() {
    let r = rig(default_opt());
    let s = attach(&r, false);
    let buf = PageBuffer::new(4096).unwrap();
    let read_once = |tag: u64, fill: u8| {
        s.submit(read10(tag, 0, 8)).unwrap();
        let c = wait_cmd(&r.fd);
        buf.fill(0, 4096, fill);
        r.fd.reply_cmd(&completed(c.cmd_h, 4096, buf.addr(), 0)).unwrap();
        recv(&s)
    };
    let first = read_once(1, 0x21);
    assert_eq!(first.data_in, vec![0x21; 4096]);
    let kept = first.data_in.as_ptr();
    s.recycle(first.data_in);
    let second = read_once(2, 0x42);
    assert_eq!(
        second.data_in,
        vec![0x42; 4096],
        "the next read's data, all of it"
    );
    assert_eq!(second.data_in.as_ptr(), kept, "in the recycled buffer");

    let data = vec![0xab; 2048];
    let sent = data.as_ptr();
    s.submit(write10(3, 4, data)).unwrap();
    let x = wait_cmd(&r.fd);
    assert_eq!(x.subcode, abi::SCST_USER_EXEC, "a hit: the cached buffer");
    let e: abi::ScsiCmdExec = x.read_payload();
    assert_eq!(e.pbuf, buf.addr());
    let mut got = vec![0u8; 2048];
    buf.read_at(0, &mut got);
    assert_eq!(got, vec![0xab; 2048], "data-out in the handler's buffer");
    let spare = s.spare_buffer();
    assert!(spare.is_empty());
    assert_eq!(
        spare.as_ptr(),
        sent,
        "the delivered data-out's buffer, offered back"
    );
    r.fd.reply_cmd(&completed(x.cmd_h, 0, 0, 0)).unwrap();
    assert_eq!(recv(&s).status, sam_status::GOOD);
}

/// SCST's core snoops a disk's READ CAPACITY answered GOOD (`scst_block_generic_dev_done`): its
/// BLOCK LENGTH becomes the device's block size and sizes every later command. A handler
/// registered with 512-byte blocks that answers READ CAPACITY(10) with 4096 gets a READ(10) of
/// one block as 4096 bytes; one that answers a length of 0 changes nothing.
#[test]
fn read_capacity_sets_the_block_size_later_commands_are_sized_by() {
    let r = rig(default_opt());
    let s = attach(&r, false);
    let read_capacity = |tag: u64, block_length: u32| {
        s.submit(ScsiRequest {
            tag,
            cdb: vec![0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            expected_data_in: 8,
            queue_type: abi::queue_type::SIMPLE,
            timeout_secs: 30,
            ..Default::default()
        })
        .unwrap();
        let c = wait_cmd(&r.fd);
        assert_eq!(c.subcode, abi::SCST_USER_EXEC);
        let buf = PageBuffer::new(4096).unwrap();
        let mut data = [0u8; 8];
        data[..4].copy_from_slice(&1023u32.to_be_bytes());
        data[4..].copy_from_slice(&block_length.to_be_bytes());
        buf.write_at(0, &data);
        let e: abi::ScsiCmdExec = c.read_payload();
        let pbuf = if e.pbuf != 0 { 0 } else { buf.addr() };
        r.fd.reply_cmd(&completed(c.cmd_h, 8, pbuf, sam_status::GOOD))
            .unwrap();
        assert_eq!(recv(&s).status, sam_status::GOOD);
        buf
    };
    let bufflen_of_one_block_read = |tag: u64| {
        s.submit(read10(tag, 0, 1)).unwrap();
        let c = wait_cmd(&r.fd);
        let e: abi::ScsiCmdExec = c.read_payload();
        let buf = PageBuffer::new(4096).unwrap();
        let pbuf = if e.pbuf != 0 { 0 } else { buf.addr() };
        r.fd.reply_cmd(&completed(c.cmd_h, 0, pbuf, sam_status::GOOD))
            .unwrap();
        recv(&s);
        e.bufflen
    };
    assert_eq!(bufflen_of_one_block_read(1), 512);
    let _kept = read_capacity(2, 4096);
    assert_eq!(
        bufflen_of_one_block_read(3),
        4096,
        "the snooped block size sizes the READ"
    );
    let _kept = read_capacity(4, 0);
    assert_eq!(
        bufflen_of_one_block_read(5),
        4096,
        "a block length of 0 changes nothing"
    );
}

/// A cached buffer the handler writes after its EXEC reply (a late DMA, a worker reusing it
/// early) is caught when it goes back to the handler: at the next cache hit's EXEC, and at
/// ON_CACHED_MEM_FREE; one left alone is not.
#[test]
fn a_buffer_written_while_scst_owns_it_is_a_counted_violation() {
    let r = rig(default_opt());
    let s = attach(&r, false);
    let buf = PageBuffer::new(4096).unwrap();
    let read_once = |tag: u64, pbuf: u64, fill: u8| {
        s.submit(read10(tag, 0, 8)).unwrap();
        let c = wait_cmd(&r.fd);
        assert_eq!(c.subcode, abi::SCST_USER_EXEC);
        buf.fill(0, 4096, fill);
        r.fd.reply_cmd(&completed(c.cmd_h, 4096, pbuf, 0)).unwrap();
        assert_eq!(recv(&s).data_in, vec![fill; 4096]);
    };
    read_once(1, buf.addr(), 0x5a);
    read_once(2, 0, 0x11);
    assert_eq!(
        r.kernel.buffer_ownership_violations(),
        0,
        "left alone until the hit"
    );

    buf.fill(100, 1, 0xee);
    read_once(3, 0, 0x22);
    assert_eq!(
        r.kernel.buffer_ownership_violations(),
        1,
        "written after READ 2's reply, found at READ 3's EXEC"
    );

    buf.fill(4095, 1, 0x00);
    r.kernel.flush_cache("disk0").unwrap();
    let c = wait_cmd(&r.fd);
    assert_eq!(c.subcode, abi::SCST_USER_ON_CACHED_MEM_FREE);
    assert_eq!(
        r.kernel.buffer_ownership_violations(),
        2,
        "written after READ 3's reply, found at ON_CACHED_MEM_FREE"
    );
}

/// The close flushes the cache and unjams the ON_CACHED_MEM_FREE of every buffer still in it
/// (spec §5.3): those buffers are checked there, before the close returns.
#[test]
fn a_buffer_written_while_scst_owns_it_is_found_at_the_close() {
    let r = rig(default_opt());
    let s = attach(&r, false);
    let buf = PageBuffer::new(4096).unwrap();
    s.submit(read10(1, 0, 8)).unwrap();
    let c = wait_cmd(&r.fd);
    buf.fill(0, 4096, 0x33);
    r.fd.reply_cmd(&completed(c.cmd_h, 4096, buf.addr(), 0)).unwrap();
    assert_eq!(recv(&s).data_in, vec![0x33; 4096]);
    buf.fill(2048, 8, 0x44);
    assert_eq!(r.kernel.buffer_ownership_violations(), 0);
    let report = r.fd.close();
    assert!(report.released);
    assert_eq!(
        r.kernel.buffer_ownership_violations(),
        1,
        "written after the reply, found as the close gave it back"
    );
}
