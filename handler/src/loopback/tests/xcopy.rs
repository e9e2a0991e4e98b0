//! SCST's copy manager (docs/xcopy.md): registration through the handler's VPD 83h, EXTENDED
//! COPY with EXT_COPY_REMAP and its reply rules (spec §3.8, each refused as the kernel does),
//! the leftovers the core copies with READ(16) / WRITE(16), RECEIVE COPY RESULTS. A small
//! hand-written handler answers the messages here, so the expectations come from the spec.

use super::*;
use crate::abi;
use crate::abi::sam_status;
use crate::abi::ExtCopyDataDescr;
use crate::abi::ExtCopyRemap;
use crate::abi::ExtCopyReplyRemap;
use crate::abi::GetCmd;
use crate::abi::ReplyCmd;
use crate::transport::Errno;
use crate::transport::ScstUserFd;
use scst_accel_dma::PageBuffer;
use std::collections::HashMap;
use std::time::Instant;

/// The LU designator the device reports first in VPD 83h (NAA 6, binary, LU association).
const NAA: [u8; 20] = [
    0x01, 0x03, 0x00, 0x10, 0x60, 0x01, 0x40, 0x50, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
];
const BLOCKS: usize = 4096;

/// A hand-written handler: a RAM medium, the buffers it handed out, the EXT_COPY_REMAP
/// messages seen and what it answered to them.
struct Mini {
    medium: Vec<u8>,
    buffers: HashMap<u64, PageBuffer>,
    remaps: Vec<ExtCopyRemap>,
    /// The result of each remap reply's ioctl.
    remap_results: Vec<Result<(), Errno>>,
    /// Kept alive until the kernel read them.
    keep: Vec<Vec<u8>>,
}

impl Mini {
    fn new() -> Self {
        Self {
            medium: (0..BLOCKS * BS as usize)
                .map(|i| (i % 251) as u8 ^ (i >> 9) as u8)
                .collect(),
            buffers: HashMap::new(),
            remaps: Vec::new(),
            remap_results: Vec::new(),
            keep: Vec::new(),
        }
    }

    fn buffer(&mut self, len: usize) -> u64 {
        let b = PageBuffer::new(len.next_multiple_of(4096)).unwrap();
        let addr = b.addr();
        self.buffers.insert(addr, b);
        addr
    }

    fn vpd83(&self) -> Vec<u8> {
        let mut p = vec![0, 0x83, 0, 0];
        p.extend_from_slice(&NAA);
        // A T10 vendor ID designator after it, as the engine reports.
        p.extend_from_slice(&[0x02, 0x01, 0x00, 0x08]);
        p.extend_from_slice(b"SCST_ACC");
        let len = (p.len() - 4) as u16;
        p[2..4].copy_from_slice(&len.to_be_bytes());
        p
    }

    /// Answer one message; `remap` answers EXT_COPY_REMAP.
    fn answer(
        &mut self,
        r: &Rig,
        c: &GetCmd,
        remap: &mut dyn FnMut(&ExtCopyRemap, &mut Vec<Vec<u8>>) -> ExtCopyReplyRemap,
    ) {
        match c.subcode {
            abi::SCST_USER_ATTACH_SESS | abi::SCST_USER_DETACH_SESS => {
                r.fd.reply_cmd(&ReplyCmd::with_result(c.cmd_h, c.subcode, 0))
                    .unwrap();
            }
            abi::SCST_USER_ALLOC_MEM => {
                let a: abi::ScsiCmdAllocMem = c.read_payload();
                let pbuf = self.buffer(a.alloc_len as usize);
                r.fd.reply_cmd(&ReplyCmd::with_payload(
                    c.cmd_h,
                    c.subcode,
                    &abi::AllocMemReply { pbuf },
                ))
                .unwrap();
            }
            abi::SCST_USER_EXEC => {
                let e: abi::ScsiCmdExec = c.read_payload();
                let bs = BS as usize;
                let lba16 = || u64::from_be_bytes(e.cdb[2..10].try_into().unwrap()) as usize;
                let n16 = || u32::from_be_bytes(e.cdb[10..14].try_into().unwrap()) as usize;
                let (pbuf, resp, new) = match e.cdb[0] {
                    0x12 => {
                        let page = self.vpd83();
                        let pbuf = if e.pbuf != 0 {
                            e.pbuf
                        } else {
                            self.buffer(e.alloc_len as usize)
                        };
                        self.buffers[&pbuf].write_at(0, &page);
                        (pbuf, page.len(), e.pbuf == 0)
                    }
                    0x88 => {
                        let (lba, n) = (lba16(), n16());
                        let pbuf = if e.pbuf != 0 {
                            e.pbuf
                        } else {
                            self.buffer(e.alloc_len as usize)
                        };
                        self.buffers[&pbuf].write_at(0, &self.medium[lba * bs..(lba + n) * bs]);
                        (pbuf, n * bs, e.pbuf == 0)
                    }
                    0x8A => {
                        let (lba, n) = (lba16(), n16());
                        self.buffers[&e.pbuf].read_at(0, &mut self.medium[lba * bs..(lba + n) * bs]);
                        (0, 0, false)
                    }
                    other => panic!("unexpected EXEC of {other:#x}"),
                };
                let reply = completed(c.cmd_h, resp as i32, if new { pbuf } else { 0 }, sam_status::GOOD);
                r.fd.reply_cmd(&reply).unwrap();
            }
            abi::SCST_USER_EXT_COPY_REMAP => {
                let m: ExtCopyRemap = c.read_payload();
                self.remaps.push(m);
                let reply = remap(&m, &mut self.keep);
                let result =
                    r.fd.reply_cmd(&ReplyCmd::with_payload(c.cmd_h, c.subcode, &reply));
                self.remap_results.push(result);
            }
            abi::SCST_USER_ON_FREE_CMD | abi::SCST_USER_ON_CACHED_MEM_FREE => {
                r.fd.reply_cmd(&ReplyCmd::new(c.cmd_h, c.subcode)).unwrap();
            }
            other => panic!("unexpected subcode {other:#x}"),
        }
    }

    /// Serve until `s` has a completion.
    fn serve(
        &mut self,
        r: &Rig,
        s: &Session,
        remap: &mut dyn FnMut(&ExtCopyRemap, &mut Vec<Vec<u8>>) -> ExtCopyReplyRemap,
    ) -> ScsiCompletion {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(done) = s.completions().try_recv() {
                return done;
            }
            assert!(Instant::now() < deadline, "no completion");
            match fetch(&r.fd) {
                Ok(c) => self.answer(r, &c, remap),
                Err(Errno::EAGAIN) => std::thread::sleep(std::time::Duration::from_millis(1)),
                Err(e) => panic!("fetch: {e:?}"),
            }
        }
    }

    /// The copy manager's LUN: its session attaches and its INQUIRY is answered here.
    fn register(&mut self, r: &Rig) -> CopyManagerLun {
        let k = r.kernel.clone();
        let name = r.name.clone();
        let t = std::thread::spawn(move || k.add_copy_manager_lun(&name, 7));
        let deadline = Instant::now() + WAIT;
        while !t.is_finished() {
            assert!(Instant::now() < deadline, "registration stuck");
            match fetch(&r.fd) {
                Ok(c) => self.answer(r, &c, &mut |_, _| panic!("remap during registration")),
                Err(Errno::EAGAIN) => std::thread::sleep(std::time::Duration::from_millis(1)),
                Err(e) => panic!("fetch: {e:?}"),
            }
        }
        t.join().unwrap().expect("registration")
    }
}

fn remap_opt() -> abi::Opt {
    abi::Opt {
        ext_copy_remap_supported: 1,
        ..default_opt()
    }
}

/// An EXTENDED COPY(LID1) parameter list: list id 5 (usage 0: tracked), CSCDs with `desig`
/// (0xE4, block 512), block-to-block segments (src, dst, blocks).
fn xcopy(tag: u64, desig: &[u8], segments: &[(u64, u64, u16)]) -> ScsiRequest {
    let mut cscd = vec![0u8; 32];
    cscd[0] = 0xE4;
    cscd[4..4 + desig.len()].copy_from_slice(desig);
    cscd[29..32].copy_from_slice(&BS.to_be_bytes()[1..]);
    let mut list = vec![0u8; 16];
    list[0] = 5;
    list[2..4].copy_from_slice(&32u16.to_be_bytes());
    list[8..12].copy_from_slice(&(28 * segments.len() as u32).to_be_bytes());
    list.extend_from_slice(&cscd);
    for &(src, dst, blocks) in segments {
        let mut seg = vec![0u8; 28];
        seg[0] = 0x02;
        seg[2..4].copy_from_slice(&0x18u16.to_be_bytes());
        // Source and destination: CSCD 0.
        seg[10..12].copy_from_slice(&blocks.to_be_bytes());
        seg[12..20].copy_from_slice(&src.to_be_bytes());
        seg[20..28].copy_from_slice(&dst.to_be_bytes());
        list.extend_from_slice(&seg);
    }
    let mut cdb = vec![0u8; 16];
    cdb[0] = 0x83;
    cdb[10..14].copy_from_slice(&(list.len() as u32).to_be_bytes());
    ScsiRequest {
        tag,
        cdb,
        data_out: list,
        queue_type: abi::queue_type::SIMPLE,
        timeout_secs: 30,
        ..Default::default()
    }
}

fn bytes(m: &Mini, lba: u64, blocks: u64) -> &[u8] {
    let bs = u64::from(BS);
    &m.medium[(lba * bs) as usize..((lba + blocks) * bs) as usize]
}

/// A reply with these leftovers (kept alive in `keep`).
fn leftovers(descrs: &[ExtCopyDataDescr], keep: &mut Vec<Vec<u8>>) -> ExtCopyReplyRemap {
    let raw: Vec<u8> = descrs
        .iter()
        .flat_map(|d| zerocopy::IntoBytes::as_bytes(d).to_vec())
        .collect();
    let reply = ExtCopyReplyRemap {
        remap_descriptors: raw.as_ptr() as u64,
        remap_descriptors_len: raw.len() as u16,
        ..Default::default()
    };
    keep.push(raw);
    reply
}

fn descr(src: u64, dst: u64, len: i32) -> ExtCopyDataDescr {
    ExtCopyDataDescr {
        src_lba: src,
        dst_lba: dst,
        data_len: len,
        _pad: [0; 4],
    }
}

#[test]
fn registration_reads_vpd_83h_and_remap_carries_the_copy_managers_sessions() {
    let r = rig(remap_opt());
    let mut m = Mini::new();
    let cm = m.register(&r);
    assert_eq!(
        cm.designators.len(),
        2,
        "the NAA and the T10 vendor ID (both LU association)"
    );
    assert_eq!(cm.designators[0], NAA.to_vec());
    let s = attach(&r, false);
    s.submit(xcopy(1, &NAA, &[(10, 100, 16), (0, 0, 0), (40, 200, 8)]))
        .unwrap();
    let done = m.serve(&r, &s, &mut |_, _| ExtCopyReplyRemap::default());
    assert_eq!(done.status, sam_status::GOOD, "{:?}", done.sense);
    // The empty segment is skipped; each other one is one EXT_COPY_REMAP on the EXTENDED
    // COPY's own handle, from the initiator's session, naming the copy manager's.
    assert_eq!(m.remaps.len(), 2);
    let cm_sess = cm.session.sess_h();
    for (remap, (src, dst, blocks)) in m.remaps.iter().zip([(10u64, 100u64, 16i32), (40, 200, 8)]) {
        assert_eq!(remap.sess_h, s.sess_h());
        assert_eq!((remap.src_sess_h, remap.dst_sess_h), (cm_sess, cm_sess));
        assert_eq!(remap.data_descr, descr(src, dst, blocks * BS as i32));
    }
    assert!(m.remap_results.iter().all(Result::is_ok));
    assert_eq!(r.kernel.copy_manager_stats(&r.name), Some((2, 0)));
}

#[test]
fn without_remap_or_with_leftovers_the_core_copies_through_read_16_and_write_16() {
    // Without ext_copy_remap_supported: no EXT_COPY_REMAP, all of it copied by the core.
    let r = rig(default_opt());
    let mut m = Mini::new();
    let _cm = m.register(&r);
    let s = attach(&r, false);
    let before = bytes(&m, 0, 1100).to_vec();
    // 1100 blocks: three chunks of at most 512 KiB (1024 blocks) → 1024 + 76.
    s.submit(xcopy(1, &NAA, &[(0, 2000, 1100)])).unwrap();
    let done = m.serve(&r, &s, &mut |_, _| panic!("no remap without the option"));
    assert_eq!(done.status, sam_status::GOOD, "{:?}", done.sense);
    assert_eq!(bytes(&m, 2000, 1100), &before[..]);
    assert_eq!(
        r.kernel.copy_manager_stats(&r.name),
        Some((0, 1100 * u64::from(BS)))
    );

    // With it, the handler copies part and hands back two leftovers.
    let r = rig(remap_opt());
    let mut m = Mini::new();
    let _cm = m.register(&r);
    let s = attach(&r, false);
    let src = bytes(&m, 100, 64).to_vec();
    s.submit(xcopy(2, &NAA, &[(100, 3000, 64)])).unwrap();
    let bs = BS as i32;
    let done = m.serve(&r, &s, &mut |_, keep| {
        leftovers(&[descr(100, 3000, 8 * bs), descr(140, 3040, 24 * bs)], keep)
    });
    assert_eq!(done.status, sam_status::GOOD, "{:?}", done.sense);
    assert_eq!(m.remap_results, vec![Ok(())]);
    assert_eq!(
        bytes(&m, 3000, 8),
        &src[..8 * BS as usize],
        "first leftover copied"
    );
    assert_eq!(
        bytes(&m, 3040, 24),
        &src[40 * BS as usize..],
        "second leftover copied"
    );
    assert_ne!(
        bytes(&m, 3008, 32),
        &src[8 * BS as usize..40 * BS as usize],
        "the rest is the handler's"
    );
}

#[test]
fn each_rule_of_the_remap_reply_is_enforced_as_the_kernel_does() {
    let bs = BS as i32;
    // (leftovers, or a raw length, the ioctl's errno)
    type Case = (
        &'static str,
        Box<dyn Fn(&mut Vec<Vec<u8>>) -> ExtCopyReplyRemap>,
        Errno,
    );
    let cases: Vec<Case> = vec![
        (
            "not a multiple of 24 bytes",
            Box::new(move |keep: &mut Vec<Vec<u8>>| ExtCopyReplyRemap {
                remap_descriptors_len: 25,
                ..leftovers(&[descr(1, 2, bs), descr(1, 2, bs)], keep)
            }),
            Errno::EINVAL,
        ),
        (
            "more than a page",
            Box::new(move |keep: &mut Vec<Vec<u8>>| ExtCopyReplyRemap {
                remap_descriptors_len: 4104,
                ..leftovers(&vec![descr(1, 2, bs); 171], keep)
            }),
            Errno(libc::EOVERFLOW),
        ),
        (
            "a descriptor of length 0",
            Box::new(move |keep: &mut Vec<Vec<u8>>| leftovers(&[descr(1, 2, bs), descr(3, 4, 0)], keep)),
            Errno::EINVAL,
        ),
        (
            "longer than the segment",
            Box::new(move |keep: &mut Vec<Vec<u8>>| {
                leftovers(&[descr(1, 2, 8 * bs), descr(3, 4, 9 * bs)], keep)
            }),
            Errno::EINVAL,
        ),
    ];
    for (what, reply, errno) in cases {
        let r = rig(remap_opt());
        let mut m = Mini::new();
        let _cm = m.register(&r);
        let s = attach(&r, false);
        s.submit(xcopy(1, &NAA, &[(0, 1000, 16)])).unwrap();
        let done = m.serve(&r, &s, &mut |_, keep| reply(keep));
        assert_eq!(m.remap_results, vec![Err(errno)], "{what}");
        assert_eq!(done.status, sam_status::CHECK_CONDITION, "{what}");
        assert_eq!(sense_of(&done), (0x04, 0x44, 0x00), "{what}: HARDWARE ERROR");
    }
    // A leftover that is not whole blocks passes the reply checks, then fails when the core
    // reaches it (HARDWARE ERROR, the ioctl succeeded).
    let r = rig(remap_opt());
    let mut m = Mini::new();
    let _cm = m.register(&r);
    let s = attach(&r, false);
    s.submit(xcopy(1, &NAA, &[(0, 1000, 16)])).unwrap();
    let done = m.serve(&r, &s, &mut |_, keep| leftovers(&[descr(0, 1000, 100)], keep));
    assert_eq!(m.remap_results, vec![Ok(())]);
    assert_eq!(sense_of(&done), (0x04, 0x44, 0x00));
    // Leftovers at an address the kernel cannot read: EFAULT, and (the kernel's flaw) the
    // segment is taken as copied, the EXTENDED COPY GOOD.
    let r = rig(remap_opt());
    let mut m = Mini::new();
    let _cm = m.register(&r);
    let s = attach(&r, false);
    s.submit(xcopy(1, &NAA, &[(0, 1000, 16)])).unwrap();
    let done = m.serve(&r, &s, &mut |_, _| ExtCopyReplyRemap {
        remap_descriptors: 8,
        remap_descriptors_len: 24,
        ..Default::default()
    });
    assert_eq!(m.remap_results, vec![Err(Errno::EFAULT)]);
    assert_eq!(done.status, sam_status::GOOD);
    // An error status with sense: the EXTENDED COPY ends with them.
    let r = rig(remap_opt());
    let mut m = Mini::new();
    let _cm = m.register(&r);
    let s = attach(&r, false);
    s.submit(xcopy(1, &NAA, &[(0, 1000, 16)])).unwrap();
    let medium_error = [0x70u8, 0, 0x03, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x11, 0, 0, 0, 0, 0];
    let done = m.serve(&r, &s, &mut |_, keep| {
        keep.push(medium_error.to_vec());
        ExtCopyReplyRemap {
            status: sam_status::CHECK_CONDITION,
            sense_len: 18,
            psense_buffer: keep.last().unwrap().as_ptr() as u64,
            ..Default::default()
        }
    });
    assert_eq!(m.remap_results, vec![Ok(())]);
    assert_eq!(done.status, sam_status::CHECK_CONDITION);
    assert_eq!(done.sense, medium_error.to_vec());
}

#[test]
fn an_unregistered_designator_is_an_invalid_field_in_the_parameter_list() {
    let r = rig(remap_opt());
    let mut m = Mini::new();
    let s = attach(&r, false);
    // Not a LUN of the copy manager yet: the refusal of issue 15.
    s.submit(xcopy(1, &NAA, &[(0, 1000, 16)])).unwrap();
    let done = m.serve(&r, &s, &mut |_, _| panic!("no remap for a refused copy"));
    assert_eq!(sense_of(&done), (0x05, 0x26, 0x00));
    assert_eq!(
        &done.sense[15..18],
        &[0x80, 0, 16],
        "field pointer: the CSCD descriptor at byte 16"
    );
    let _cm = m.register(&r);
    let mut other = NAA;
    other[19] ^= 0xFF;
    s.submit(xcopy(2, &other, &[(0, 1000, 16)])).unwrap();
    let done = m.serve(&r, &s, &mut |_, _| panic!("no remap for a refused copy"));
    assert_eq!(sense_of(&done), (0x05, 0x26, 0x00), "another designator");
    s.submit(xcopy(3, &NAA, &[(0, 1000, 16)])).unwrap();
    let done = m.serve(&r, &s, &mut |_, _| ExtCopyReplyRemap::default());
    assert_eq!(done.status, sam_status::GOOD);
    // LID4 is refused in the CDB.
    let mut lid4 = xcopy(4, &NAA, &[(0, 1000, 16)]);
    lid4.cdb[1] = 0x01;
    s.submit(lid4).unwrap();
    let done = m.serve(&r, &s, &mut |_, _| panic!("no remap"));
    assert_eq!(sense_of(&done), (0x05, 0x24, 0x00));
}

#[test]
fn receive_copy_results_is_answered_by_the_core() {
    let r = rig(remap_opt());
    let mut m = Mini::new();
    let _cm = m.register(&r);
    let s = attach(&r, false);
    let rcr = |tag: u64, sa: u8, list: u8| ScsiRequest {
        tag,
        cdb: vec![0x84, sa, list, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0],
        expected_data_in: 256,
        ..Default::default()
    };
    s.submit(rcr(1, 3, 0)).unwrap();
    let op = m.serve(&r, &s, &mut |_, _| panic!("no remap"));
    assert_eq!(op.status, sam_status::GOOD);
    assert_eq!(op.data_in.len(), 46);
    assert_eq!(&op.data_in[8..10], &[0, 5], "MAXIMUM TARGET DESCRIPTOR COUNT");
    assert_eq!(
        &op.data_in[16..20],
        &(256u32 << 20).to_be_bytes(),
        "MAXIMUM SEGMENT LENGTH"
    );
    assert_eq!(&op.data_in[43..46], &[2, 0x02, 0xE4], "segment 02h and CSCD E4h");
    // No such list yet.
    s.submit(rcr(2, 0, 5)).unwrap();
    assert_eq!(
        sense_of(&m.serve(&r, &s, &mut |_, _| panic!())),
        (0x05, 0x24, 0x00)
    );
    // A copy with list 5, then its status: finished, no errors, 1 segment; the remapped
    // segment counts no written bytes (only the core's own writes do, cm_written_size).
    s.submit(xcopy(3, &NAA, &[(0, 1000, 16)])).unwrap();
    assert_eq!(
        m.serve(&r, &s, &mut |_, _| ExtCopyReplyRemap::default()).status,
        sam_status::GOOD
    );
    s.submit(rcr(4, 0, 5)).unwrap();
    let st = m.serve(&r, &s, &mut |_, _| panic!());
    assert_eq!(st.data_in, vec![0, 0, 0, 8, 1, 0, 1, 1, 0, 0, 0, 0]);
    // Read once: gone.
    s.submit(rcr(5, 0, 5)).unwrap();
    assert_eq!(
        sense_of(&m.serve(&r, &s, &mut |_, _| panic!())),
        (0x05, 0x24, 0x00)
    );
    // A failed copy: FAILED SEGMENT DETAILS carry its status and sense.
    s.submit(xcopy(6, &NAA, &[(0, 1000, 16)])).unwrap();
    let bad = m.serve(&r, &s, &mut |_, keep| ExtCopyReplyRemap {
        remap_descriptors_len: 25,
        ..leftovers(&[descr(0, 1000, 512), descr(0, 1000, 512)], keep)
    });
    assert_eq!(bad.status, sam_status::CHECK_CONDITION);
    s.submit(rcr(7, 4, 5)).unwrap();
    let f = m.serve(&r, &s, &mut |_, _| panic!());
    assert_eq!(f.data_in[56], sam_status::CHECK_CONDITION);
    assert_eq!(usize::from(f.data_in[59]), bad.sense.len());
    assert_eq!(&f.data_in[60..], &bad.sense[..]);
    // Unknown service action.
    s.submit(rcr(8, 1, 0)).unwrap();
    assert_eq!(
        sense_of(&m.serve(&r, &s, &mut |_, _| panic!())),
        (0x05, 0x24, 0x00)
    );
}
