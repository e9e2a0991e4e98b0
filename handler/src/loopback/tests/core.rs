//! The SCST core's own behaviour: REPORT LUNS, unknown opcodes, UAs, PARSE, poll (spec §3.6, §3.9, §6.4).

use super::validation::alloc_mem_reply;
use super::validation::parse_reply;
use super::*;
use crate::abi;
use crate::abi::data_direction;
use crate::abi::sam_status;
use crate::abi::GetCmd;
use crate::transport::Errno;
use crate::transport::ScstUserFd;
use scst_accel_dma::PageBuffer;
use std::time::Duration;

#[test]
fn core_answers_report_luns_and_unknown_opcodes_and_unit_attentions() {
    let r = rig(default_opt());
    let s = attach(&r, false);
    let mut rl = vec![0u8; 12];
    rl[0] = 0xa0;
    rl[9] = 64;
    s.submit(ScsiRequest {
        tag: 1,
        cdb: rl,
        expected_data_in: 64,
        ..Default::default()
    })
    .unwrap();
    s.submit(ScsiRequest {
        tag: 2,
        cdb: vec![0xc5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        ..Default::default()
    })
    .unwrap();
    drive_core(&r.fd);
    let luns = recv(&s);
    assert_eq!(
        (luns.status, luns.data_in[3], luns.data_in[9]),
        (sam_status::GOOD, 8, 3)
    );
    let bad = recv(&s);
    assert_eq!(sense_of(&bad), (0x05, 0x20, 0x00));
    // Capacity change: the next command of the session gets the UA, then normal service.
    r.fd.device_capacity_changed().unwrap();
    s.submit(tur(3)).unwrap();
    drive_core(&r.fd);
    let ua = recv(&s);
    assert_eq!(
        (ua.status, sense_of(&ua)),
        (sam_status::CHECK_CONDITION, (0x06, 0x2a, 0x09))
    );
    s.submit(tur(4)).unwrap();
    let c = wait_cmd(&r.fd);
    r.fd.reply_cmd(&completed(c.cmd_h, 0, 0, 0)).unwrap();
    assert_eq!(recv(&s).status, sam_status::GOOD);
}

#[test]
fn read_only_sessions_refuse_writes() {
    let r = rig(default_opt());
    let s = attach(&r, true);
    s.submit(write10(1, 0, vec![0; 512])).unwrap();
    let a = wait_cmd(&r.fd);
    let buf = PageBuffer::new(4096).unwrap();
    r.fd.reply_cmd(&alloc_mem_reply(a.cmd_h, buf.addr())).unwrap();
    let done = recv(&s);
    assert_eq!(sense_of(&done), (0x07, 0x27, 0x00));
}

#[test]
fn exception_parse_and_extended_cdb() {
    let r = rig(opt(
        abi::parse_type::EXCEPTION,
        abi::on_free_cmd_type::IGNORE,
        abi::memory_reuse_type::REUSE_ALL,
    ));
    let s = attach(&r, false);
    let long: Vec<u8> = (0..32u8).map(|i| if i == 0 { 0x7f } else { i }).collect();
    s.submit(ScsiRequest {
        tag: 1,
        cdb: long.clone(),
        ..Default::default()
    })
    .unwrap();
    let c = wait_cmd(&r.fd);
    assert_eq!(
        c.subcode,
        abi::SCST_USER_PARSE,
        "unknown opcode under EXCEPTION goes to PARSE"
    );
    let p: abi::ScsiCmdParse = c.read_payload();
    assert_eq!((p.cdb_len, &p.cdb[..]), (32, &long[..16]));
    let mut tail = [0u8; 16];
    r.fd.get_extended_cdb(&abi::GetExtCdb {
        cmd_h: c.cmd_h,
        ext_cdb_buffer: tail.as_mut_ptr() as u64,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(&tail[..], &long[16..]);
    assert_eq!(
        r.fd.get_extended_cdb(&abi::GetExtCdb {
            cmd_h: 4242,
            ..Default::default()
        })
        .err(),
        Some(Errno::ESRCH)
    );
    // Known opcodes are parsed by the core: no PARSE.
    r.fd.reply_cmd(&parse_reply(c.cmd_h, |p| {
        p.data_direction = data_direction::NONE;
        p.bufflen = 0;
    }))
    .unwrap();
    let x = wait_cmd(&r.fd);
    assert_eq!(x.subcode, abi::SCST_USER_EXEC);
    r.fd.reply_cmd(&completed(x.cmd_h, 0, 0, 0)).unwrap();
    recv(&s);
    s.submit(tur(2)).unwrap();
    assert_eq!(wait_cmd(&r.fd).subcode, abi::SCST_USER_EXEC);
}

#[test]
fn poll_fd_is_level_triggered() {
    let r = rig(default_opt());
    assert!(!crate::loopback::uaccess::poll_readable(r.fd.poll_fd()));
    let s = attach(&r, false);
    assert!(!crate::loopback::uaccess::poll_readable(r.fd.poll_fd()));
    s.submit(tur(1)).unwrap();
    assert!(
        crate::loopback::uaccess::poll_readable(r.fd.poll_fd()),
        "core work pending"
    );
    let c = wait_cmd(&r.fd);
    assert!(
        !crate::loopback::uaccess::poll_readable(r.fd.poll_fd()),
        "drained"
    );
    r.fd.reply_cmd(&completed(c.cmd_h, 0, 0, 0)).unwrap();
    assert!(!crate::loopback::uaccess::poll_readable(r.fd.poll_fd()));
}

#[test]
fn unregister_wakes_a_blocked_fetch() {
    let kernel = LoopbackKernel::new(KernelConfig::default());
    let fd = kernel.open(false);
    let st = strings(&crate::transport::version::default_version_string(), "GPL");
    fd.register_device(&desc(&st, "blk", default_opt(), BS)).unwrap();
    let (tx, rx) = crossbeam_channel::bounded(1);
    let fd2 = fd.clone();
    let t = std::thread::spawn(move || {
        let mut c = GetCmd::zeroed();
        let _ = tx.send(fd2.reply_and_get_cmd(&mut c));
    });
    assert!(
        rx.recv_timeout(Duration::from_millis(100)).is_err(),
        "blocked while nothing is ready"
    );
    fd.unregister_device().unwrap();
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), Err(Errno::EAGAIN));
    t.join().unwrap();
}
