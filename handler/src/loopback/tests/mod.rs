//! ABI-level tests of the loopback kernel: they drive [`LoopbackFd`] directly with hand-built
//! replies (no frontend), so every expectation comes from the spec, not from our handler.
//! Every wait is bounded (`recv_timeout`, deadlines). This file holds the shared rig.

use super::sense::decode;
use super::*;
use crate::abi;
use crate::abi::exec_reply_type;
use crate::abi::DevDesc;
use crate::abi::ExecReply;
use crate::abi::GetCmd;
use crate::abi::Opt;
use crate::abi::ReplyCmd;
use crate::transport::Errno;
use crate::transport::ScstUserFd;
use std::time::Duration;
use std::time::Instant;

pub(super) const WAIT: Duration = Duration::from_secs(5);
pub(super) const BS: u32 = 512;

pub(super) fn opt(parse: u8, on_free: u8, reuse: u8) -> Opt {
    Opt {
        parse_type: parse,
        on_free_cmd_type: on_free,
        memory_reuse_type: reuse,
        tst: 1,
        queue_alg: 1,
        ..Default::default()
    }
}

pub(super) fn default_opt() -> Opt {
    opt(
        abi::parse_type::STANDARD,
        abi::on_free_cmd_type::IGNORE,
        abi::memory_reuse_type::REUSE_ALL,
    )
}

/// Strings for dev_desc, zero-padded to 128 bytes (the kernel reads a fixed 91).
pub(super) struct Strings {
    pub version: Box<[u8; 128]>,
    pub license: Box<[u8; 128]>,
}

pub(super) fn strings(version: &str, license: &str) -> Strings {
    let mut v = Box::new([0u8; 128]);
    v[..version.len()].copy_from_slice(version.as_bytes());
    let mut l = Box::new([0u8; 128]);
    l[..license.len()].copy_from_slice(license.as_bytes());
    Strings {
        version: v,
        license: l,
    }
}

pub(super) fn desc(s: &Strings, name: &str, opt: Opt, block_size: u32) -> DevDesc {
    let mut d: DevDesc = zerocopy::FromZeros::new_zeroed();
    d.version_str = s.version.as_ptr() as u64;
    d.license_str = s.license.as_ptr() as u64;
    d.type_ = abi::TYPE_DISK;
    d.opt = opt;
    d.block_size = block_size;
    d.name = abi::fill_c_name(name);
    d
}

pub(super) struct Rig {
    pub kernel: LoopbackKernel,
    pub fd: LoopbackFd,
    pub name: String,
    _strings: Strings,
}

pub(super) fn rig_with(opt: Opt, config: KernelConfig) -> Rig {
    let kernel = LoopbackKernel::new(config);
    let fd = kernel.open(true);
    let s = strings(&crate::transport::version::default_version_string(), "GPL");
    fd.register_device(&desc(&s, "disk0", opt, BS)).unwrap();
    Rig {
        kernel,
        fd,
        name: "disk0".into(),
        _strings: s,
    }
}

pub(super) fn rig(opt: Opt) -> Rig {
    rig_with(opt, KernelConfig::default())
}

pub(super) fn spec(rd_only: bool) -> SessionSpec {
    SessionSpec {
        initiator_name: "iqn.test:ini".into(),
        target_name: "tgt".into(),
        lun: 3,
        rd_only,
    }
}

/// Fetch one command (non-blocking fd), retrying until the deadline.
pub(super) fn wait_cmd(fd: &LoopbackFd) -> GetCmd {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut c = GetCmd::zeroed();
        match fd.reply_and_get_cmd(&mut c) {
            Ok(()) => return c,
            Err(Errno::EAGAIN) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
            Err(e) => panic!("fetch failed: {e:?}"),
        }
    }
}

pub(super) fn fetch(fd: &LoopbackFd) -> Result<GetCmd, Errno> {
    let mut c = GetCmd::zeroed();
    fd.reply_and_get_cmd(&mut c).map(|()| c)
}

pub(super) fn attach(r: &Rig, rd_only: bool) -> Session {
    let k = r.kernel.clone();
    let name = r.name.clone();
    let t = std::thread::spawn(move || k.attach_session(&name, spec(rd_only)));
    let c = wait_cmd(&r.fd);
    assert_eq!(c.subcode, abi::SCST_USER_ATTACH_SESS);
    let sess: abi::Sess = c.read_payload();
    assert_ne!(sess.sess_h, 0);
    assert_eq!(sess.lun, 3);
    assert_eq!(abi::c_name(&sess.initiator_name), "iqn.test:ini");
    r.fd.reply_cmd(&ReplyCmd::with_result(c.cmd_h, abi::SCST_USER_ATTACH_SESS, 0))
        .unwrap();
    t.join().unwrap().unwrap()
}

pub(super) fn cdb10(op: u8, lba: u32, blocks: u16) -> Vec<u8> {
    let mut c = vec![0u8; 10];
    c[0] = op;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

pub(super) fn read10(tag: u64, lba: u32, blocks: u16) -> ScsiRequest {
    ScsiRequest {
        tag,
        cdb: cdb10(0x28, lba, blocks),
        expected_data_in: u32::from(blocks) * BS,
        queue_type: abi::queue_type::SIMPLE,
        timeout_secs: 30,
        ..Default::default()
    }
}

pub(super) fn write10(tag: u64, lba: u32, data: Vec<u8>) -> ScsiRequest {
    ScsiRequest {
        tag,
        cdb: cdb10(0x2a, lba, (data.len() / BS as usize) as u16),
        data_out: data,
        queue_type: abi::queue_type::SIMPLE,
        timeout_secs: 30,
        ..Default::default()
    }
}

pub(super) fn tur(tag: u64) -> ScsiRequest {
    ScsiRequest {
        tag,
        cdb: vec![0; 6],
        ..Default::default()
    }
}

pub(super) fn completed(h: u32, resp: i32, pbuf: u64, status: u8) -> ReplyCmd {
    ReplyCmd::with_payload(
        h,
        abi::SCST_USER_EXEC,
        &ExecReply {
            resp_data_len: resp,
            pbuf,
            reply_type: exec_reply_type::COMPLETED,
            status,
            ..Default::default()
        },
    )
}

pub(super) fn recv(s: &Session) -> ScsiCompletion {
    s.completions().recv_timeout(WAIT).expect("completion")
}

/// Run core work (a fetch) so that requeued completions are delivered; expects nothing ready.
pub(super) fn drive_core(fd: &LoopbackFd) {
    assert_eq!(fetch(fd).err(), Some(Errno::EAGAIN));
}

pub(super) fn sense_of(c: &ScsiCompletion) -> (u8, u8, u8) {
    decode(&c.sense).expect("sense")
}

pub(super) fn stats(r: &Rig) -> DeviceStats {
    r.kernel.device_stats(&r.name).unwrap()
}

mod batching;
mod core;
mod flows;
mod queues;
mod registration;
mod teardown;
mod validation;
mod xcopy;
