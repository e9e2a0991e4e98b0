//! Reply validation (spec §3.4, §3.5).

use super::*;
use crate::abi;
use crate::abi::data_direction;
use crate::abi::exec_reply_type;
use crate::abi::sam_status;
use crate::abi::ExecReply;
use crate::abi::ReplyCmd;
use crate::transport::Errno;
use crate::transport::ScstUserFd;
use scst_accel_dma::PageBuffer;
use scst_accel_hal::locks::LockToken;

#[test]
fn wrong_subcode_fails_the_command_and_the_late_reply_is_ignored() {
    let r = rig(default_opt());
    let s = attach(&r, false);
    s.submit(tur(1)).unwrap();
    let c = wait_cmd(&r.fd);
    assert_eq!(
        r.fd.reply_cmd(&ReplyCmd::new(c.cmd_h, abi::SCST_USER_PARSE))
            .err(),
        Some(Errno::EINVAL)
    );
    // The command was unjammed: the right reply is now silently accepted (0) and ignored.
    r.fd.reply_cmd(&completed(c.cmd_h, 0, 0, 0)).unwrap();
    drive_core(&r.fd);
    let done = recv(&s);
    assert_eq!(done.status, sam_status::CHECK_CONDITION);
    assert_eq!(sense_of(&done), (0x05, 0x25, 0x00));
    assert_eq!(stats(&r).ucmds, 0);
}

#[test]
fn double_reply_and_reply_to_unsent_are_einval() {
    let r = rig(default_opt());
    let s = attach(&r, false);
    s.submit(read10(1, 0, 1)).unwrap();
    s.submit(tur(2)).unwrap();
    let c = wait_cmd(&r.fd);
    let buf = PageBuffer::new(4096).unwrap();
    r.fd.reply_cmd(&completed(c.cmd_h, 512, buf.addr(), 0)).unwrap();
    // The owner ucmd lives on (cached buffer): a second reply finds it not sent.
    assert_eq!(
        r.fd.reply_cmd(&completed(c.cmd_h, 512, buf.addr(), 0)).err(),
        Some(Errno::EINVAL)
    );
    let t = wait_cmd(&r.fd);
    r.fd.reply_cmd(&completed(t.cmd_h, 0, 0, 0)).unwrap();
    assert_eq!(
        r.fd.reply_cmd(&completed(t.cmd_h, 0, 0, 0)).err(),
        Some(Errno::ESRCH),
        "a freed ucmd is unknown"
    );
    assert_eq!(recv(&s).status, sam_status::GOOD);
    assert_eq!(recv(&s).status, sam_status::GOOD);
}

#[test]
fn unjam_pass_makes_replies_to_unjammed_commands_silently_succeed() {
    // What the cleanup thread does to sent commands (spec §5.3), observed before the fd goes.
    let r = rig(default_opt());
    let s = attach(&r, false);
    s.submit(tur(1)).unwrap();
    let c = wait_cmd(&r.fd);
    let dev = r.fd.device_for_test();
    let mut report = CloseReport::default();
    dev.with(&mut LockToken::root(), |st, fx| st.unjam_sent(&mut report, fx));
    assert_eq!(report.lun_not_supported, 1);
    let done = recv(&s);
    assert_eq!(sense_of(&done), (0x05, 0x25, 0x00));
    // The ucmd is freed by the core pass: the late reply finds no ucmd.
    assert_eq!(
        r.fd.reply_cmd(&completed(c.cmd_h, 0, 0, 0)).err(),
        Some(Errno::ESRCH)
    );
}

pub(super) fn alloc_mem_reply(h: u32, pbuf: u64) -> ReplyCmd {
    ReplyCmd::with_payload(h, abi::SCST_USER_ALLOC_MEM, &abi::AllocMemReply { pbuf })
}

#[test]
pub(super) fn alloc_mem_reply_rules() {
    let r = rig(default_opt());
    let s = attach(&r, false);
    // pbuf 0 → BUSY, no error.
    s.submit(write10(1, 0, vec![0; 512])).unwrap();
    let a = wait_cmd(&r.fd);
    r.fd.reply_cmd(&alloc_mem_reply(a.cmd_h, 0)).unwrap();
    assert_eq!(recv(&s).status, sam_status::BUSY);
    // Misaligned cached buffer → HARDWARE ERROR + EINVAL.
    s.submit(write10(2, 0, vec![0; 512])).unwrap();
    let a = wait_cmd(&r.fd);
    let buf = PageBuffer::new(8192).unwrap();
    assert_eq!(
        r.fd.reply_cmd(&alloc_mem_reply(a.cmd_h, buf.addr() + 16)).err(),
        Some(Errno::EINVAL)
    );
    let done = recv(&s);
    assert_eq!(
        (done.status, sense_of(&done)),
        (sam_status::CHECK_CONDITION, (0x04, 0x44, 0x00))
    );
    // Unpinnable → ABORTED COMMAND + EFAULT.
    s.submit(write10(3, 0, vec![0; 512])).unwrap();
    let a = wait_cmd(&r.fd);
    assert_eq!(
        r.fd.reply_cmd(&alloc_mem_reply(a.cmd_h, 0x1000)).err(),
        Some(Errno::EFAULT)
    );
    assert_eq!(sense_of(&recv(&s)), (0x0b, 0x44, 0x00));
    assert_eq!(stats(&r).ucmds, 0);
}

#[test]
fn exec_completed_rules_and_sense_copy() {
    let r = rig(default_opt());
    let s = attach(&r, false);
    // resp_data_len > bufflen → ABORTED COMMAND internal failure + EINVAL.
    s.submit(read10(1, 0, 1)).unwrap();
    let c = wait_cmd(&r.fd);
    let buf = PageBuffer::new(4096).unwrap();
    assert_eq!(
        r.fd.reply_cmd(&completed(c.cmd_h, 513, buf.addr(), 0)).err(),
        Some(Errno::EINVAL)
    );
    assert_eq!(sense_of(&recv(&s)), (0x0b, 0x44, 0x00));
    // resp_data_len > 0 on a non-READ → invalid.
    s.submit(write10(2, 0, vec![0; 512])).unwrap();
    let a = wait_cmd(&r.fd);
    r.fd.reply_cmd(&alloc_mem_reply(a.cmd_h, buf.addr())).unwrap();
    let x = wait_cmd(&r.fd);
    assert_eq!(
        r.fd.reply_cmd(&completed(x.cmd_h, 512, 0, 0)).err(),
        Some(Errno::EINVAL)
    );
    recv(&s);
    // Missing pbuf for data → BUSY.
    s.submit(read10(3, 0, 16)).unwrap();
    let c = wait_cmd(&r.fd);
    r.fd.reply_cmd(&completed(c.cmd_h, 8192, 0, 0)).unwrap();
    assert_eq!(recv(&s).status, sam_status::BUSY);
    // Sense is copied (at most 252 bytes) during the ioctl.
    s.submit(tur(4)).unwrap();
    let c = wait_cmd(&r.fd);
    let sense = crate::loopback::sense::build(false, crate::loopback::sense::INVALID_OPCODE);
    let reply = ReplyCmd::with_payload(
        c.cmd_h,
        abi::SCST_USER_EXEC,
        &ExecReply {
            reply_type: exec_reply_type::COMPLETED,
            status: sam_status::CHECK_CONDITION,
            sense_len: sense.len() as u8,
            psense_buffer: sense.as_ptr() as u64,
            ..Default::default()
        },
    );
    r.fd.reply_cmd(&reply).unwrap();
    let done = recv(&s);
    assert_eq!(
        (done.status, done.sense.clone()),
        (sam_status::CHECK_CONDITION, sense)
    );
    // Unknown reply_type → EINVAL.
    s.submit(tur(5)).unwrap();
    let c = wait_cmd(&r.fd);
    let mut bad = completed(c.cmd_h, 0, 0, 0);
    bad.write_payload(&ExecReply {
        reply_type: 9,
        ..Default::default()
    });
    assert_eq!(r.fd.reply_cmd(&bad).err(), Some(Errno::EINVAL));
    assert_eq!(sense_of(&recv(&s)), (0x0b, 0x44, 0x00));
}

fn background(h: u32) -> ReplyCmd {
    ReplyCmd::with_payload(
        h,
        abi::SCST_USER_EXEC,
        &ExecReply {
            reply_type: exec_reply_type::BACKGROUND,
            ..Default::default()
        },
    )
}

#[test]
fn background_exec_rules() {
    let r = rig(opt(
        abi::parse_type::STANDARD,
        abi::on_free_cmd_type::IGNORE,
        abi::memory_reuse_type::NO_REUSE,
    ));
    let s = attach(&r, false);
    s.submit(read10(1, 0, 1)).unwrap();
    let c = wait_cmd(&r.fd);
    assert_eq!(
        r.fd.reply_cmd(&background(c.cmd_h)).err(),
        Some(Errno::EINVAL),
        "READ refused"
    );
    assert_eq!(sense_of(&recv(&s)), (0x0b, 0x44, 0x00));

    let mut wbuf = vec![0u8; 512];
    s.submit(write10(2, 0, vec![3; 512])).unwrap();
    let a = wait_cmd(&r.fd);
    r.fd.reply_cmd(&alloc_mem_reply(a.cmd_h, wbuf.as_mut_ptr() as u64))
        .unwrap();
    let x = wait_cmd(&r.fd);
    r.fd.reply_cmd(&background(x.cmd_h)).unwrap();
    let done = recv(&s);
    assert_eq!(done.status, sam_status::GOOD, "completed with GOOD at once");
    assert_eq!(stats(&r).ucmds, 1, "the background reference keeps the ucmd");
    assert_eq!(
        r.fd.reply_cmd(&background(x.cmd_h)).err(),
        Some(Errno::EINVAL),
        "only once"
    );
    r.fd.reply_cmd(&completed(x.cmd_h, 0, 0, 0)).unwrap();
    assert_eq!(stats(&r).ucmds, 0, "second COMPLETED drops the last reference");
}

fn write_same(h: u32, status: u8, len: u16, addr: u64) -> ReplyCmd {
    ReplyCmd::with_payload(
        h,
        abi::SCST_USER_EXEC,
        &abi::ExecReplyWriteSame {
            reply_type: exec_reply_type::DO_WRITE_SAME,
            status,
            ws_descriptors_len: len,
            ws_descriptors: addr,
            ..Default::default()
        },
    )
}

#[test]
fn do_write_same_descriptor_rules() {
    let r = rig(default_opt());
    let s = attach(&r, false);
    let buf = PageBuffer::new(4096).unwrap();
    let ws = |tag| ScsiRequest {
        tag,
        cdb: cdb10(0x41, 0, 8),
        data_out: vec![9; 512],
        ..Default::default()
    };
    let mut descs = vec![abi::DataDescriptor::default(); 300];
    descs[0] = abi::DataDescriptor {
        usdd_lba: 0,
        usdd_blocks: 8,
    };
    let addr = descs.as_ptr() as u64;
    let next_exec = |tag| {
        s.submit(ws(tag)).unwrap();
        let c = wait_cmd(&r.fd);
        let c = if c.subcode == abi::SCST_USER_ALLOC_MEM {
            r.fd.reply_cmd(&alloc_mem_reply(c.cmd_h, buf.addr())).unwrap();
            wait_cmd(&r.fd)
        } else {
            c
        };
        assert_eq!(c.subcode, abi::SCST_USER_EXEC);
        c.cmd_h
    };
    let cases: [(u8, u16, Result<(), Errno>); 5] = [
        (0, 24, Err(Errno::EINVAL)),   // not a multiple of 16
        (0, 4112, Err(Errno::EINVAL)), // > 4096
        (0, 16, Err(Errno::EINVAL)),   // last entry is not a terminator
        (2, 0, Err(Errno::EINVAL)),    // status must be 0
        (0, 32, Ok(())),               // one range + terminator
    ];
    for (i, (status, len, want)) in cases.into_iter().enumerate() {
        let h = next_exec(i as u64);
        assert_eq!(
            r.fd.reply_cmd(&write_same(h, status, len, addr)),
            want,
            "case {i}"
        );
        let done = recv(&s);
        if want.is_ok() {
            assert_eq!(done.status, sam_status::GOOD);
        } else {
            assert_eq!(sense_of(&done), (0x04, 0x44, 0x00), "case {i}");
        }
    }
    let h = next_exec(10);
    r.fd.reply_cmd(&write_same(h, 0, 0, 0)).unwrap();
    assert_eq!(
        recv(&s).status,
        sam_status::GOOD,
        "length 0: the core writes the whole range"
    );
    // DO_WRITE_SAME for a non-WRITE SAME command is refused.
    s.submit(tur(20)).unwrap();
    let c = wait_cmd(&r.fd);
    assert_eq!(
        r.fd.reply_cmd(&write_same(c.cmd_h, 0, 0, 0)).err(),
        Some(Errno::EINVAL)
    );
    assert_eq!(sense_of(&recv(&s)), (0x04, 0x44, 0x00));
}

pub(super) fn parse_reply(h: u32, f: impl FnOnce(&mut abi::ParseReply)) -> ReplyCmd {
    let mut p = abi::ParseReply {
        status: 0,
        queue_type: abi::queue_type::SIMPLE,
        data_direction: data_direction::READ,
        cdb_len: 0,
        lba: 0,
        data_len: 512,
        bufflen: 512,
        op_flags: abi::op_flags::INFO_VALID,
        out_bufflen: 0,
        ..Default::default()
    };
    f(&mut p);
    ReplyCmd::with_payload(h, abi::SCST_USER_PARSE, &p)
}

#[test]
fn every_invalid_parse_reply_field_fails_with_hardware_error() {
    let r = rig(opt(
        abi::parse_type::CALL,
        abi::on_free_cmd_type::IGNORE,
        abi::memory_reuse_type::REUSE_ALL,
    ));
    let s = attach(&r, false);
    type Mutate = Box<dyn FnOnce(&mut abi::ParseReply)>;
    let cases: Vec<(&str, Mutate)> = vec![
        ("queue_type 5", Box::new(|p| p.queue_type = 5)),
        ("direction 0", Box::new(|p| p.data_direction = 0)),
        ("direction 5", Box::new(|p| p.data_direction = 5)),
        ("bufflen 0 for READ", Box::new(|p| p.bufflen = 0)),
        ("bufflen < 0", Box::new(|p| p.bufflen = -1)),
        ("out_bufflen < 0", Box::new(|p| p.out_bufflen = -1)),
        ("data_len < 0", Box::new(|p| p.data_len = -1)),
        ("lba < 0", Box::new(|p| p.lba = -1)),
        ("cdb_len grows", Box::new(|p| p.cdb_len = 11)),
        ("no INFO_VALID", Box::new(|p| p.op_flags = 0)),
    ];
    for (i, (what, f)) in cases.into_iter().enumerate() {
        s.submit(read10(i as u64, 0, 1)).unwrap();
        let c = wait_cmd(&r.fd);
        assert_eq!(c.subcode, abi::SCST_USER_PARSE);
        let p: abi::ScsiCmdParse = c.read_payload();
        assert_eq!((p.expected_values_set, p.expected_transfer_len), (1, 512));
        assert_eq!(
            r.fd.reply_cmd(&parse_reply(c.cmd_h, f)).err(),
            Some(Errno::EINVAL),
            "{what}"
        );
        let done = recv(&s);
        assert_eq!(sense_of(&done), (0x04, 0x44, 0x00), "{what}");
    }
    // A valid reply resumes processing with the handler's values.
    s.submit(read10(50, 0, 1)).unwrap();
    let c = wait_cmd(&r.fd);
    r.fd.reply_cmd(&parse_reply(c.cmd_h, |p| {
        p.bufflen = 1024;
        p.lba = 5;
    }))
    .unwrap();
    let x = wait_cmd(&r.fd);
    let e: abi::ScsiCmdExec = x.read_payload();
    assert_eq!(
        (x.subcode, e.bufflen, e.lba, e.alloc_len),
        (abi::SCST_USER_EXEC, 1024, 5, 4096)
    );
    r.fd.reply_cmd(&completed(x.cmd_h, 0, 0, 0)).unwrap();
    recv(&s);
    // An error status ends the command with it.
    s.submit(read10(51, 0, 1)).unwrap();
    let c = wait_cmd(&r.fd);
    let err = abi::ParseReplySense {
        status: sam_status::BUSY,
        ..Default::default()
    };
    r.fd.reply_cmd(&ReplyCmd::with_payload(c.cmd_h, abi::SCST_USER_PARSE, &err))
        .unwrap();
    assert_eq!(recv(&s).status, sam_status::BUSY);
    // The error arm overlays queue_type with sense_len: a "success" layout with a non-zero
    // status reads sense_len 1 from address 0 and faults.
    s.submit(read10(52, 0, 1)).unwrap();
    let c = wait_cmd(&r.fd);
    assert_eq!(
        r.fd.reply_cmd(&parse_reply(c.cmd_h, |p| p.status = sam_status::BUSY))
            .err(),
        Some(Errno::EFAULT)
    );
    assert_eq!(sense_of(&recv(&s)), (0x0b, 0x44, 0x00));
}

/// The core's checks after the PARSE reply (scst_targ.c:1176-1238): a direction other than the
/// initiator's fails with ILLEGAL REQUEST 49/00 (TEST UNIT READY, and no data expected with
/// length 0, exempt); SCST_UNKNOWN_LBA fails with HARDWARE ERROR; the reply itself is valid.
#[test]
fn the_core_checks_a_parse_replys_direction_and_lba_against_the_initiators() {
    let r = rig(opt(
        abi::parse_type::CALL,
        abi::on_free_cmd_type::IGNORE,
        abi::memory_reuse_type::NO_REUSE,
    ));
    let s = attach(&r, false);
    let mut tag = 0;
    let mut parse_then = |req: ScsiRequest, f: Box<dyn FnOnce(&mut abi::ParseReply)>| {
        tag += 1;
        s.submit(ScsiRequest { tag, ..req }).unwrap();
        let c = wait_cmd(&r.fd);
        assert_eq!(c.subcode, abi::SCST_USER_PARSE);
        r.fd.reply_cmd(&parse_reply(c.cmd_h, f)).unwrap();
    };
    // A READ the handler parses as a WRITE.
    parse_then(
        read10(0, 0, 1),
        Box::new(|p| p.data_direction = data_direction::WRITE),
    );
    assert_eq!(sense_of(&recv(&s)), (0x05, 0x49, 0x00));
    // A READ the handler parses as moving no data: expected READ, so still a mismatch.
    parse_then(
        read10(0, 0, 1),
        Box::new(|p| {
            p.data_direction = data_direction::NONE;
            p.bufflen = 0;
        }),
    );
    assert_eq!(sense_of(&recv(&s)), (0x05, 0x49, 0x00));
    // A READ with SCST_UNKNOWN_LBA.
    parse_then(
        read10(0, 0, 1),
        Box::new(|p| p.op_flags |= abi::op_flags::UNKNOWN_LBA),
    );
    assert_eq!(sense_of(&recv(&s)), (0x04, 0x44, 0x00));
    // TEST UNIT READY the initiator expects data from, parsed as NONE: allowed.
    parse_then(
        ScsiRequest {
            expected_data_in: 512,
            ..tur(0)
        },
        Box::new(|p| {
            p.data_direction = data_direction::NONE;
            p.bufflen = 0;
            p.data_len = 0;
        }),
    );
    let x = wait_cmd(&r.fd);
    assert_eq!(x.subcode, abi::SCST_USER_EXEC);
    r.fd.reply_cmd(&completed(x.cmd_h, 0, 0, 0)).unwrap();
    assert_eq!(recv(&s).status, sam_status::GOOD);
    // No data expected, parsed as a READ of length 0 (a READ(10) of 0 blocks can't be, so the
    // core's parser is the one to produce it): allowed, and the EXEC moves no data.
    tag += 1;
    let r0 = rig(default_opt());
    let s0 = attach(&r0, false);
    s0.submit(ScsiRequest {
        tag,
        expected_data_in: 0,
        ..read10(0, 0, 0)
    })
    .unwrap();
    let x = wait_cmd(&r0.fd);
    let e: abi::ScsiCmdExec = x.read_payload();
    assert_eq!(
        (x.subcode, e.bufflen, e.data_direction),
        (abi::SCST_USER_EXEC, 0, data_direction::NONE)
    );
    r0.fd.reply_cmd(&completed(x.cmd_h, 0, 0, 0)).unwrap();
    assert_eq!(recv(&s0).status, sam_status::GOOD);
    // The core's own parser is checked too: a WRITE whose data the initiator does not send.
    s0.submit(ScsiRequest {
        tag: tag + 1,
        cdb: cdb10(0x2a, 0, 1),
        ..Default::default()
    })
    .unwrap();
    // New commands run in a fetch (the core works in the handler's threads).
    drive_core(&r0.fd);
    assert_eq!(sense_of(&recv(&s0)), (0x05, 0x49, 0x00));
}
