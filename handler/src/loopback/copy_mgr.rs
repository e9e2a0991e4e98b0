//! SCST's copy manager (`scst/src/scst_copy_mgr.c`, `docs/xcopy.md`), the part a user-space
//! device meets: it is modelled so that EXTENDED COPY runs end to end through the handler.
//!
//! - **Registration** ([`super::LoopbackKernel::add_copy_manager_lun`]): scst_user devices are
//!   not added to the copy manager automatically (`auto_cm_assignment_possible` is set by
//!   vdisk only); the operator adds a LUN to `copy_manager_tgt`, the copy manager's session
//!   attaches (ATTACH_SESS, initiator `copy_manager_sess`) and sends INQUIRY VPD 83h with an
//!   allocation length of 4096 (`:2383-2430`). [`parse_designators`] keeps what
//!   `scst_cm_init_inq_finish` keeps (`:2259-2380`): peripheral type 0 only, designators with
//!   protocol identifier 0, PIV 0 and association 0, and only those that start before byte
//!   PAGE LENGTH (its loop compares the absolute offset with the page length).
//! - **EXTENDED COPY(LID1)** ([`DeviceState::cm_extended_copy`]): the parameter list is parsed
//!   as `scst_cm_parse_descriptors` does (`:3343-3600`), with its errors: CSCD descriptors 0xE4
//!   matched against the registered designators (`:2909-3009`; no match is INVALID FIELD IN
//!   PARAMETER LIST pointing at the descriptor, the refusal of issue 15), block-to-block
//!   segment descriptors 02h (`:3199-3307`). The model matches designators of this device
//!   only (a copy between two devices is the core's READ/WRITE between two devices, which the
//!   model does not run).
//! - **Per segment**: zero-length segments are skipped (`:507-550`); with
//!   `ext_copy_remap_supported` the segment goes to the handler as EXT_COPY_REMAP on the
//!   EXTENDED COPY's own ucmd (`scst_user.c:935-962`), and its reply is validated as
//!   `dev_user_process_reply_ext_copy_remap` does (`scst_user.c:1454-1594`, spec §3.8); what is
//!   left over (all of it without remap) is copied with READ(16) / WRITE(16) of at most 512 KiB
//!   through the copy manager's session (`:1188-1345`), one after the other here (the core
//!   keeps several in flight).
//! - **Completion and RECEIVE COPY RESULTS** ([`DeviceState::cm_receive_copy_results`]): the
//!   EXTENDED COPY completes GOOD, or with the handler's or a HARDWARE ERROR sense, or COPY
//!   ABORTED wrapping a failed READ/WRITE's sense (`scst_cm_prepare_final_sense`, `:569-706`);
//!   COPY STATUS, OPERATING PARAMETERS and FAILED SEGMENT DETAILS are answered by the core
//!   (`:1977-2239`), per session and list identifier.

use super::device::CoreWork;
use super::device::DeviceState;
use super::device::Effects;
use super::device::ScsiCmd;
use super::sense;
use crate::abi;
use crate::abi::sam_status;
use std::collections::HashMap;
use std::collections::VecDeque;

/// EXTENDED COPY.
pub(crate) const EXTENDED_COPY: u8 = 0x83;
/// RECEIVE COPY RESULTS.
pub(crate) const RECEIVE_COPY_RESULTS: u8 = 0x84;
/// The copy manager's session name (`SCST_CM_SESS_NAME`, `:26`).
pub const SESSION_NAME: &str = "copy_manager_sess";
/// The copy manager's target name (`SCST_CM_TGT_NAME`, `:25`).
pub const TARGET_NAME: &str = "copy_manager_tgt";
/// Most CSCD descriptors in one parameter list (`SCST_CM_MAX_TGT_DESCR_CNT`, `:38`).
const MAX_TGT_DESCR: usize = 5;
/// Largest READ / WRITE the copy manager sends (`SCST_CM_MAX_EACH_IO_SIZE`, `:35`).
pub const MAX_EACH_IO: u32 = 512 * 1024;
/// COPY ABORTED.
const COPY_ABORTED: u8 = 0x0A;

/// A designator the copy manager took from the device's VPD 83h, and the copy manager's
/// session (its tgt_dev, the handle EXT_COPY_REMAP names as source and destination).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CmDesignator {
    /// The whole designation descriptor (4-byte header included).
    pub bytes: Vec<u8>,
    /// The copy manager's session on this device.
    pub sess_h: u64,
}

/// Where a copy failed, for the final sense (`SCST_CM_ERROR_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CmError {
    None,
    Read,
    Write,
}

/// One block-to-block segment (`struct scst_ext_copy_seg_descr`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Segment {
    src_sess_h: u64,
    dst_sess_h: u64,
    src_lba: u64,
    dst_lba: u64,
    /// Bytes.
    data_len: i32,
}

/// The leftover copy in progress: READ(16) then WRITE(16) of one chunk at a time.
#[derive(Clone, Copy, Debug)]
struct Chunk {
    src_lba: u64,
    dst_lba: u64,
    blocks: u32,
}

/// One EXTENDED COPY in progress.
#[derive(Debug)]
struct EcState {
    segments: Vec<Segment>,
    cur: usize,
    /// What the core still copies of the current segment (bytes per descriptor).
    leftovers: VecDeque<abi::ExtCopyDataDescr>,
    /// The chunk being copied, once its READ completed and the WRITE is out.
    writing: Option<Chunk>,
    list: Option<(u64, u8)>,
    /// Bytes the core wrote itself (`cm_written`: remapped segments do not count).
    written: u64,
    error: CmError,
}

/// A list identifier's record for RECEIVE COPY RESULTS (`struct scst_cm_list_id`).
#[derive(Clone, Debug, Default)]
struct ListId {
    active: bool,
    status: u8,
    sense: Vec<u8>,
    segs_processed: u16,
    written: u64,
}

/// The copy manager's state for one device.
#[derive(Debug, Default)]
pub(crate) struct CopyManager {
    /// Registered designators (`scst_cm_desig_list`, this device's part).
    pub designators: Vec<CmDesignator>,
    ecs: HashMap<u64, EcState>,
    list_ids: HashMap<(u64, u8), ListId>,
    /// EXT_COPY_REMAP messages sent (for tests and the bench).
    pub remaps: u64,
    /// Bytes copied by the core itself with READ/WRITE (leftovers).
    pub leftover_bytes: u64,
}

/// What `scst_cm_init_inq_finish` registers from an INQUIRY VPD 83h answer of `resp_len` bytes:
/// nothing unless the device is a disk (byte 0 = 0) and the page is 83h; then the designators
/// with protocol identifier 0, PIV 0 and association 0 (logical unit) whose start lies before
/// offset PAGE LENGTH (`while (off < page_len)`, the offset counted from the page's start and
/// the length from byte 4: a designator starting past that is not looked at). A descriptor
/// running past PAGE LENGTH ends the walk.
pub(crate) fn parse_designators(buf: &[u8], resp_len: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    if buf.len() < 4 || buf[0] != 0 || buf[1] != 0x83 {
        return out;
    }
    let page_len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
    if page_len + 3 > resp_len {
        return out;
    }
    let mut off = 4;
    while off < page_len {
        if off + 3 >= page_len {
            break;
        }
        let des_len = usize::from(buf[off + 3]);
        if off + des_len > page_len {
            break;
        }
        let total = des_len + 4;
        if buf[off] & 0xF0 == 0 && buf[off + 1] & 0xF0 == 0 {
            if let Some(d) = buf.get(off..off + total) {
                out.push(d.to_vec());
            }
        }
        off += total;
    }
    out
}

/// Sense data in the device's format, with a sense-key specific field pointer
/// (`scst_set_invalid_field_in`, scst_lib.c:2180-2234): `cdb` selects INVALID FIELD IN CDB
/// (C/D set) or IN PARAMETER LIST; `bit` is the bit pointer, if any.
fn field_sense(d_sense: bool, cdb: bool, field: u16, bit: Option<u8>) -> Vec<u8> {
    let asc = if cdb { 0x24 } else { 0x26 };
    let mut sks = [0x80u8, 0, 0];
    if cdb {
        sks[0] |= 0x40;
    }
    if let Some(bit) = bit {
        sks[0] |= 0x08 | (bit & 7);
    }
    sks[1..3].copy_from_slice(&field.to_be_bytes());
    if d_sense {
        let mut s = vec![0x72, 0x05, asc, 0, 0, 0, 0, 8, 2, 6, 0, 0, 0, 0, 0, 0];
        s[12..15].copy_from_slice(&sks);
        s
    } else {
        let mut s = sense::build(
            false,
            sense::SenseCode {
                key: 0x05,
                asc,
                ascq: 0,
            },
        );
        s[15..18].copy_from_slice(&sks);
        s
    }
}

/// COPY ABORTED for a segment (`scst_cm_set_seg_err_sense`, `:3011-3073`), fixed format.
fn segment_sense(d_sense: bool, asc: u8, ascq: u8, seg: u16, field: u16) -> Vec<u8> {
    if d_sense {
        let mut s = vec![0u8; 28];
        s[0] = 0x72;
        s[1] = COPY_ABORTED;
        s[2] = asc;
        s[3] = ascq;
        s[7] = 20;
        s[8] = 1;
        s[9] = 0x0A;
        s[14..16].copy_from_slice(&seg.to_be_bytes());
        s[20] = 2;
        s[21] = 6;
        s[24] = 0xA0;
        s[25..27].copy_from_slice(&field.to_be_bytes());
        s
    } else {
        let mut s = vec![0u8; 18];
        s[0] = 0x70;
        s[2] = COPY_ABORTED;
        s[7] = 0x0A;
        s[10..12].copy_from_slice(&seg.to_be_bytes());
        s[12] = asc;
        s[13] = ascq;
        s[15] = 0xA0;
        s[16..18].copy_from_slice(&field.to_be_bytes());
        s
    }
}

fn be16(b: &[u8], at: usize) -> usize {
    usize::from(u16::from_be_bytes([b[at], b[at + 1]]))
}

fn be32(b: &[u8], at: usize) -> usize {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as usize
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

impl DeviceState {
    fn d_sense(&self) -> bool {
        self.opt.d_sense != 0
    }

    /// Parse an EXTENDED COPY parameter list (`scst_cm_parse_descriptors`): the segments, the
    /// list identifier to track, or the sense of the refusal.
    fn cm_parse(&self, cdb: &[u8], buf: &[u8]) -> Result<(Vec<Segment>, Option<u8>), Vec<u8>> {
        let d = self.d_sense();
        if cdb.get(1).copied().unwrap_or(0) != 0 {
            // LID4 (and anything else in byte 1) is refused: INVALID FIELD IN CDB, byte 1.
            return Err(field_sense(d, true, 1, None));
        }
        let length = buf.len();
        if length == 0 {
            return Ok((Vec::new(), None));
        }
        if length < 16 {
            return Err(field_sense(d, true, 10, None));
        }
        let list_id = buf[0];
        let usage = (buf[1] & 0x18) >> 3;
        let tracked = match usage {
            0 | 2 => Some(list_id),
            3 if list_id != 0 => return Err(field_sense(d, false, 0, None)),
            3 => None,
            _ => return Err(field_sense(d, false, 1, Some(3))),
        };
        let code = |asc: u8, ascq: u8| sense::build(d, sense::SenseCode { key: 0x05, asc, ascq });
        if be32(buf, 12) != 0 {
            return Err(code(0x26, 0x0B)); // inline data not supported
        }
        let tgt_len = be16(buf, 2);
        let seg_len = be32(buf, 8);
        if tgt_len == 0 {
            if seg_len == 0 {
                return Ok((Vec::new(), tracked));
            }
            return Err(field_sense(d, false, 2, None));
        }
        if tgt_len + seg_len + 16 > length {
            return Err(code(0x1A, 0x00)); // PARAMETER LIST LENGTH ERROR
        }
        if tgt_len + seg_len + 16 != length {
            return Err(code(0x26, 0x0B));
        }
        if !tgt_len.is_multiple_of(32) {
            return Err(field_sense(d, false, 2, None));
        }
        let tgt_cnt = tgt_len / 32;
        if tgt_cnt > MAX_TGT_DESCR {
            return Err(code(0x26, 0x06)); // TOO MANY TARGET DESCRIPTORS
        }
        // CSCD descriptors: (the copy manager's session on the device, or None for a NULL one).
        let mut targets: Vec<Option<u64>> = Vec::with_capacity(tgt_cnt);
        for i in 0..tgt_cnt {
            let offs = 16 + 32 * i;
            let seg = &buf[offs..offs + 32];
            if seg[0] != 0xE4 {
                return Err(code(0x26, 0x07)); // UNSUPPORTED TARGET DESCRIPTOR TYPE CODE
            }
            if seg[1] & 0xC0 != 0 {
                return Err(field_sense(d, false, (offs + 1) as u16, Some(6)));
            }
            if seg[1] & 0x20 != 0 {
                targets.push(None); // NUL
                continue;
            }
            if seg[1] & 0x0F != 0 {
                return Err(field_sense(d, false, (offs + 1) as u16, Some(0)));
            }
            let block = u32::from_be_bytes([0, seg[29], seg[30], seg[31]]);
            let found = self.cm.designators.iter().find(|des| {
                des.bytes.len() >= 4
                    && seg[4] == des.bytes[0]
                    && seg[5] == des.bytes[1]
                    && seg[7] <= 20
                    && seg[7] == des.bytes[3]
                    && des.bytes.get(4..4 + usize::from(seg[7])) == seg.get(8..8 + usize::from(seg[7]))
            });
            let Some(des) = found else {
                // "Target descriptor designator not found": the refusal a device not
                // registered with the copy manager gets.
                return Err(field_sense(d, false, offs as u16, None));
            };
            if block != self.block_size {
                return Err(field_sense(d, false, (offs + 29) as u16, None));
            }
            targets.push(Some(des.sess_h));
        }
        let mut segments = Vec::new();
        let mut offs = 16 + tgt_len;
        while offs < length {
            if buf[offs] != 0x02 {
                return Err(code(0x26, 0x09)); // UNSUPPORTED SEGMENT DESCRIPTOR TYPE CODE
            }
            offs += 28;
        }
        offs = 16 + tgt_len;
        let mut num = 0u16;
        while offs + 28 <= length {
            let seg = &buf[offs..offs + 28];
            let err = |asc: u8, ascq: u8, field: u16| Err(segment_sense(d, asc, ascq, num, field));
            if be16(seg, 2) != 0x18 {
                return err(0, 0, 2);
            }
            let src = be16(seg, 4);
            let Some(&src) = targets.get(src) else {
                return err(0, 0, 4);
            };
            let Some(src) = src else { return err(0x0D, 0x02, 4) };
            let dst = be16(seg, 6);
            let Some(&dst) = targets.get(dst) else {
                return err(0, 0, 6);
            };
            let Some(dst) = dst else { return err(0x0D, 0x02, 6) };
            let blocks = be16(seg, 10) as u64;
            segments.push(Segment {
                src_sess_h: src,
                dst_sess_h: dst,
                src_lba: be64(seg, 12),
                dst_lba: be64(seg, 20),
                data_len: (blocks * u64::from(self.block_size)) as i32,
            });
            offs += 28;
            num += 1;
        }
        Ok((segments, tracked))
    }

    /// EXTENDED COPY arrived (the command's ucmd exists): parse, then run its segments.
    pub(crate) fn cm_extended_copy(&mut self, id: u64, fx: &mut Effects) {
        let Some(cmd) = self.cmds.get(&id) else { return };
        let sess_h = cmd.sess_h;
        match self.cm_parse(&cmd.cdb, &cmd.data_out) {
            Err(sense) => {
                self.complete_cmd(id, sam_status::CHECK_CONDITION, sense, Vec::new(), false, fx);
            }
            Ok((segments, list)) => {
                let list = list.map(|l| (sess_h, l));
                if let Some(key) = list {
                    self.cm.list_ids.insert(
                        key,
                        ListId {
                            active: true,
                            ..ListId::default()
                        },
                    );
                }
                self.cm.ecs.insert(
                    id,
                    EcState {
                        segments,
                        cur: 0,
                        leftovers: VecDeque::new(),
                        writing: None,
                        list,
                        written: 0,
                        error: CmError::None,
                    },
                );
                self.cm_next_segment(id, fx);
            }
        }
    }

    /// Run the current segment (skipping empty ones), or complete when there is none left.
    fn cm_next_segment(&mut self, id: u64, fx: &mut Effects) {
        let remap = self.opt.ext_copy_remap_supported != 0;
        let Some(ec) = self.cm.ecs.get_mut(&id) else {
            return;
        };
        while ec.segments.get(ec.cur).is_some_and(|s| s.data_len == 0) {
            ec.cur += 1;
        }
        let Some(&seg) = ec.segments.get(ec.cur) else {
            return self.cm_done(id, sam_status::GOOD, Vec::new(), fx);
        };
        if let Some(key) = ec.list {
            if let Some(l) = self.cm.list_ids.get_mut(&key) {
                l.segs_processed = (ec.cur + 1) as u16;
            }
        }
        if !remap {
            // No ext_copy_remap: the whole segment is the core's (`:1556-1574`).
            ec.leftovers.push_back(abi::ExtCopyDataDescr {
                src_lba: seg.src_lba,
                dst_lba: seg.dst_lba,
                data_len: seg.data_len,
                _pad: [0; 4],
            });
            return self.cm_copy_next_chunk(id, fx);
        }
        let Some(cmd) = self.cmds.get(&id) else { return };
        let Some(h) = cmd.ucmd else { return };
        let payload = abi::ExtCopyRemap {
            sess_h: cmd.sess_h,
            src_sess_h: seg.src_sess_h,
            dst_sess_h: seg.dst_sess_h,
            data_descr: abi::ExtCopyDataDescr {
                src_lba: seg.src_lba,
                dst_lba: seg.dst_lba,
                data_len: seg.data_len,
                _pad: [0; 4],
            },
        };
        if let Some(u) = self.ucmds.get_mut(&h) {
            u.set_message(abi::SCST_USER_EXT_COPY_REMAP, &payload);
        }
        self.cm.remaps += 1;
        self.queue_ready(h, fx);
    }

    /// Length of the current segment (`scst_ext_copy_get_cur_seg_data_len`).
    pub(crate) fn cm_segment_len(&self, id: u64) -> Option<i32> {
        let ec = self.cm.ecs.get(&id)?;
        ec.segments.get(ec.cur).map(|s| s.data_len)
    }

    /// The remap reply said: fail with this status and sense (`out_status`), the EXTENDED COPY
    /// ends with them.
    pub(crate) fn cm_remap_failed(&mut self, id: u64, status: u8, sense: Vec<u8>, fx: &mut Effects) {
        self.cm_done(id, status, sense, fx);
    }

    /// The remap reply was invalid: HARDWARE ERROR (`out_hw_err`).
    pub(crate) fn cm_remap_invalid(&mut self, id: u64, fx: &mut Effects) {
        let sense = self.sense(sense::HARDWARE_ERROR);
        self.cm_done(id, sam_status::CHECK_CONDITION, sense, fx);
    }

    /// The remap reply's leftovers, validated (`dev_user_process_reply_ext_copy_remap`); an
    /// empty list means the handler copied the whole segment.
    pub(crate) fn cm_remap_done(&mut self, id: u64, leftovers: Vec<abi::ExtCopyDataDescr>, fx: &mut Effects) {
        let bs = i64::from(self.block_size);
        let Some(ec) = self.cm.ecs.get_mut(&id) else {
            return;
        };
        if leftovers.is_empty() {
            ec.cur += 1;
            return self.cm_next_segment(id, fx);
        }
        // `scst_cm_setup_this_data_descr` (`:342-390`): a length that is not whole blocks is
        // a HARDWARE ERROR when the core reaches it.
        if leftovers.iter().any(|l| i64::from(l.data_len) % bs != 0) {
            return self.cm_remap_invalid(id, fx);
        }
        ec.leftovers.extend(leftovers);
        self.cm_copy_next_chunk(id, fx);
    }

    /// Copy the next chunk of the leftovers: READ(16) through the copy manager's session on
    /// the source (the WRITE follows its completion), or go to the next segment.
    fn cm_copy_next_chunk(&mut self, id: u64, fx: &mut Effects) {
        let bs = u64::from(self.block_size);
        let Some(ec) = self.cm.ecs.get_mut(&id) else {
            return;
        };
        let Some(&seg) = ec.segments.get(ec.cur) else {
            return;
        };
        let Some(front) = ec.leftovers.front_mut() else {
            ec.cur += 1;
            return self.cm_next_segment(id, fx);
        };
        let left_blocks = u64::try_from(front.data_len).unwrap_or(0) / bs;
        let blocks = left_blocks.min(u64::from(MAX_EACH_IO) / bs) as u32;
        let chunk = Chunk {
            src_lba: front.src_lba,
            dst_lba: front.dst_lba,
            blocks,
        };
        let bytes = u64::from(blocks) * bs;
        front.src_lba += u64::from(blocks);
        front.dst_lba += u64::from(blocks);
        front.data_len -= bytes as i32;
        if front.data_len <= 0 {
            ec.leftovers.pop_front();
        }
        ec.writing = Some(chunk);
        let mut cdb = vec![0u8; 16];
        cdb[0] = 0x88;
        cdb[2..10].copy_from_slice(&chunk.src_lba.to_be_bytes());
        cdb[10..14].copy_from_slice(&blocks.to_be_bytes());
        self.cm_submit_internal(id, seg.src_sess_h, cdb, Vec::new(), bytes as u32, fx);
    }

    /// Queue an internal command of the copy manager on its session `sess_h` (it completes
    /// into [`DeviceState::cm_internal_done`], not to an initiator).
    fn cm_submit_internal(
        &mut self,
        ec: u64,
        sess_h: u64,
        cdb: Vec<u8>,
        data_out: Vec<u8>,
        expected_data_in: u32,
        fx: &mut Effects,
    ) {
        let Some(sess) = self.sessions.get_mut(&sess_h) else {
            // The copy manager's LUN is gone: the copy cannot go on.
            let sense = self.sense(sense::LUN_NOT_SUPPORTED);
            return self.cm_done(ec, sam_status::CHECK_CONDITION, sense, fx);
        };
        let sn = sess.next_sn;
        sess.next_sn = sess.next_sn.wrapping_add(1);
        sess.outstanding += 1;
        let id = self.next_cmd_id;
        self.next_cmd_id += 1;
        // Internal commands carry no initiator tag: the id keeps them apart.
        let tag = u64::MAX - id;
        self.live_tags.insert((sess_h, tag));
        self.cmds.insert(
            id,
            ScsiCmd {
                cm_parent: Some(ec),
                ..ScsiCmd::new(id, sess_h, tag, cdb, data_out, expected_data_in, sn)
            },
        );
        self.active.push_back(CoreWork::New(id));
        fx.wake_fetchers = true;
    }

    /// An internal READ or WRITE of EXTENDED COPY `ec` completed.
    pub(crate) fn cm_internal_done(
        &mut self,
        ec: u64,
        opcode: u8,
        status: u8,
        sense: Vec<u8>,
        data: Vec<u8>,
        fx: &mut Effects,
    ) {
        let bs = u64::from(self.block_size);
        let aborted = self.cmds.get(&ec).is_none_or(|c| c.aborted || c.completed);
        if aborted {
            self.cm.ecs.remove(&ec);
            if self.cmds.get(&ec).is_some_and(|c| c.aborted && !c.completed) {
                self.complete_aborted(ec, fx);
            }
            return;
        }
        let Some(state) = self.cm.ecs.get_mut(&ec) else {
            return;
        };
        if status != sam_status::GOOD {
            state.error = if opcode == 0x88 {
                CmError::Read
            } else {
                CmError::Write
            };
            return self.cm_done(ec, status, sense, fx);
        }
        let Some(&seg) = state.segments.get(state.cur) else {
            return;
        };
        let Some(chunk) = state.writing else { return };
        if opcode == 0x88 {
            let mut cdb = vec![0u8; 16];
            cdb[0] = 0x8A;
            cdb[2..10].copy_from_slice(&chunk.dst_lba.to_be_bytes());
            cdb[10..14].copy_from_slice(&chunk.blocks.to_be_bytes());
            return self.cm_submit_internal(ec, seg.dst_sess_h, cdb, data, 0, fx);
        }
        let bytes = u64::from(chunk.blocks) * bs;
        state.written += bytes;
        state.writing = None;
        self.cm.leftover_bytes += bytes;
        self.cm_copy_next_chunk(ec, fx);
    }

    /// Complete the EXTENDED COPY (`scst_cm_ec_cmd_done`): the final sense, the list
    /// identifier's record, the completion.
    fn cm_done(&mut self, id: u64, status: u8, sense: Vec<u8>, fx: &mut Effects) {
        let Some(ec) = self.cm.ecs.remove(&id) else {
            return self.complete_cmd(id, status, sense, Vec::new(), false, fx);
        };
        let (status, sense) = match ec.error {
            CmError::None => (status, sense),
            // `scst_cm_prepare_final_sense` (`:569-706`): COPY ABORTED naming the segment, the
            // failed command's status and sense as the source (READ) or destination (WRITE)
            // sense data.
            err => {
                let mut f = vec![0u8; 18];
                f[0] = 0x70;
                f[2] = COPY_ABORTED;
                f[10..12].copy_from_slice(&(ec.cur as u16).to_be_bytes());
                f[if err == CmError::Read { 8 } else { 9 }] = 18;
                let mut add = 0x0Au8;
                if sense::decode(&sense).is_some() {
                    let n = sense.len().min(abi::SCST_SENSE_BUFFERSIZE - 18);
                    add += 1 + n as u8;
                    f[17] = status;
                    f.extend_from_slice(&sense[..n]);
                }
                f[7] = add;
                f.truncate(usize::from(add) + 8);
                (sam_status::CHECK_CONDITION, f)
            }
        };
        if let Some(key) = ec.list {
            if let Some(l) = self.cm.list_ids.get_mut(&key) {
                l.active = false;
                l.status = status;
                l.sense = sense.clone();
                l.written += ec.written;
            }
        }
        self.complete_cmd(id, status, sense, Vec::new(), false, fx);
    }

    /// RECEIVE COPY RESULTS, answered by the core (`scst_cm_rcv_copy_res_exec`, `:2201-2231`).
    pub(crate) fn cm_receive_copy_results(&mut self, id: u64, fx: &mut Effects) {
        let Some(cmd) = self.cmds.get(&id) else { return };
        let d = self.d_sense();
        let action = cmd.cdb.get(1).copied().unwrap_or(0) & 0x1F;
        let list_id = cmd.cdb.get(2).copied().unwrap_or(0);
        let key = (cmd.sess_h, list_id);
        let alloc = cmd.expected_data_in as usize;
        let not_found = field_sense(d, true, 2, None);
        let data = match action {
            0 => match self.cm.list_ids.get(&key).cloned() {
                // COPY STATUS (`:1977-2043`).
                Some(l) => {
                    let mut t = vec![0u8; 12];
                    t[..4].copy_from_slice(&8u32.to_be_bytes());
                    t[4] = if l.active {
                        0
                    } else if l.status == 0 {
                        1
                    } else {
                        2
                    };
                    t[5..7].copy_from_slice(&l.segs_processed.to_be_bytes());
                    t[7] = 1; // KiB
                    t[8..12].copy_from_slice(&((l.written >> 10) as u32).to_be_bytes());
                    if !l.active {
                        self.cm.list_ids.remove(&key);
                    }
                    t
                }
                None => {
                    return self.complete_cmd(
                        id,
                        sam_status::CHECK_CONDITION,
                        not_found,
                        Vec::new(),
                        false,
                        fx,
                    )
                }
            },
            // OPERATING PARAMETERS (`:2141-2199`).
            3 => {
                let mut t = vec![0u8; 46];
                t[..4].copy_from_slice(&42u32.to_be_bytes());
                t[4] = 1; // SNLID
                t[8..10].copy_from_slice(&(MAX_TGT_DESCR as u16).to_be_bytes());
                t[10..12].copy_from_slice(&MAX_SEG_DESCR.to_be_bytes());
                t[12..16].copy_from_slice(&0xFFFFu32.to_be_bytes());
                t[16..20].copy_from_slice(&(256u32 * 1024 * 1024).to_be_bytes());
                t[34..36].copy_from_slice(&0xFFFFu16.to_be_bytes());
                t[36] = 0xFF;
                t[37] = 16; // DATA SEGMENT GRANULARITY: 2^16
                t[43] = 2;
                t[44] = 0x02;
                t[45] = 0xE4;
                t
            }
            // FAILED SEGMENT DETAILS (`:2045-2139`).
            4 => match self.cm.list_ids.get(&key).cloned() {
                Some(l) if !l.active => {
                    let size = if l.status == 0 { 60 } else { 60 + l.sense.len() };
                    let mut t = vec![0u8; size];
                    t[..4].copy_from_slice(&((size - 3) as u32).to_be_bytes());
                    t[56] = l.status;
                    t[58..60].copy_from_slice(&(l.sense.len() as u16).to_be_bytes());
                    t[60..].copy_from_slice(&l.sense);
                    self.cm.list_ids.remove(&key);
                    t
                }
                _ => {
                    return self.complete_cmd(
                        id,
                        sam_status::CHECK_CONDITION,
                        not_found,
                        Vec::new(),
                        false,
                        fx,
                    )
                }
            },
            _ => {
                let sense = field_sense(d, true, 1, Some(0));
                return self.complete_cmd(id, sam_status::CHECK_CONDITION, sense, Vec::new(), false, fx);
            }
        };
        let mut data = data;
        data.truncate(alloc);
        self.complete_cmd(id, sam_status::GOOD, Vec::new(), data, false, fx);
    }

    /// The EXTENDED COPY's ucmd handle, for the reply path's checks.
    pub(crate) fn cm_is_copy(&self, id: u64) -> bool {
        self.cm.ecs.contains_key(&id)
    }

    /// Forget the copy manager's state of a command leaving the core (aborts, unjam). Every
    /// completion calls it: no hashing while no copy is in progress.
    pub(crate) fn cm_forget(&mut self, id: u64) {
        if !self.cm.ecs.is_empty() {
            self.cm.ecs.remove(&id);
        }
    }
}

/// MAXIMUM SEGMENT DESCRIPTOR COUNT (`SCST_CM_MAX_SEG_DESCR_CNT`, `:40-42`): two pages less
/// the private header, in segment descriptors. The struct sizes behind it were not measured;
/// this is the x86_64 estimate (8192 - ~150 bytes) / 56 bytes.
const MAX_SEG_DESCR: u16 = 143;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn designators_are_taken_as_the_copy_manager_takes_them() {
        // NAA (assoc 0), a target port designator (assoc 1: skipped), T10 (assoc 0).
        let naa = [0x01, 0x03, 0x00, 0x08, 1, 2, 3, 4, 5, 6, 7, 8];
        let port = [0x61, 0x93, 0x00, 0x04, 0, 0, 0, 1];
        let t10 = [0x02, 0x01, 0x00, 0x04, b'A', b'B', b'C', b'D'];
        let mut page = vec![0, 0x83, 0, 0];
        page.extend_from_slice(&naa);
        page.extend_from_slice(&port);
        page.extend_from_slice(&t10);
        let len = page.len() - 4;
        page[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        let got = parse_designators(&page, page.len());
        assert_eq!(got, vec![naa.to_vec(), t10.to_vec()]);
        // A PAGE LENGTH that cuts the last descriptor short ends the walk before it.
        let mut short = page.clone();
        short[3] -= 1;
        assert_eq!(parse_designators(&short, short.len()), vec![naa.to_vec()]);
        // Not a disk, or not page 83h: nothing.
        let mut other = page.clone();
        other[0] = 0x05;
        assert!(parse_designators(&other, other.len()).is_empty());
        // A response shorter than the page says: nothing.
        assert!(parse_designators(&page, 10).is_empty());
    }
}
