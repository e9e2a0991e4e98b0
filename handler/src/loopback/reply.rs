//! Reply processing (`dev_user_process_reply`, spec §3.4, §3.5): lookup and state checks under
//! the device lock, user copies (sense, data-in, pins, WRITE SAME descriptors) with the lock
//! dropped, then the effects under the lock again.

use super::core::has_data_out;
use super::device::Device;
use super::device::DeviceState;
use super::device::Effects;
use super::device::Token;
use super::ownership::Fingerprint;
use super::sense;
use super::sgv::SgvObject;
use super::spare::SpareBuffers;
use super::uaccess;
use super::uaccess::UserMemory;
use super::ucmd::UcmdKind;
use crate::abi;
use crate::abi::data_direction;
use crate::abi::exec_reply_type;
use crate::abi::ReplyCmd;
use crate::abi::SCST_SENSE_BUFFERSIZE;
use crate::transport::Errno;
use std::time::Instant;

/// WRITE SAME descriptor arrays are at most this long (spec §3.5).
const MAX_WS_DESCRIPTORS_LEN: u16 = 4096;
/// EXT_COPY_REMAP leftover arrays are at most a page (spec §3.8).
const MAX_REMAP_DESCRIPTORS_LEN: u16 = 4096;

/// User copies to do between the two locked steps.
#[derive(Debug)]
pub(crate) enum Plan {
    /// Nothing left to do.
    Done,
    /// PARSE with an error status: copy the sense, complete.
    ParseError {
        h: u32,
        id: u64,
        status: u8,
        sense: (u64, u8),
    },
    /// ALLOC_MEM: pin the buffer.
    AllocMem {
        h: u32,
        id: u64,
        pbuf: u64,
        len: u64,
        pages: u64,
        cached: bool,
    },
    /// EXEC COMPLETED: maybe pin a new buffer, copy data-in and sense.
    Exec {
        h: u32,
        id: u64,
        status: u8,
        sense: (u64, u8),
        resp: usize,
        /// The initiator's data-in buffer size.
        want_in: usize,
        /// (pbuf, bytes to pin, pages, cached) of a buffer supplied with the reply.
        new_buf: Option<(u64, u64, u64, bool)>,
        data_addr: u64,
    },
    /// DO_WRITE_SAME with descriptors to read.
    WriteSame { h: u32, id: u64, addr: u64, len: u16 },
    /// EXT_COPY_REMAP with an error status or sense: copy the sense, fail the EXTENDED COPY.
    RemapError {
        h: u32,
        id: u64,
        status: u8,
        sense: (u64, u8),
    },
    /// EXT_COPY_REMAP with leftover descriptors to read.
    Remap { h: u32, id: u64, addr: u64, len: u16 },
}

/// The user copies of one [`Plan`], done with the device lock dropped (or prefetched).
pub(crate) enum Copied {
    /// The plan needed none.
    Nothing,
    /// PARSE error: the sense.
    Sense(Result<Vec<u8>, Errno>),
    /// ALLOC_MEM: the pin.
    Pinned(Result<(), Errno>),
    /// EXEC COMPLETED: whether pinning a buffer supplied with the reply failed (then nothing
    /// was copied), else the data-in and the sense.
    Exec {
        pin_failed: bool,
        data_sense: Result<(Vec<u8>, Vec<u8>), Errno>,
    },
    /// DO_WRITE_SAME: the descriptors.
    WriteSame(Result<Vec<u8>, Errno>),
    /// EXT_COPY_REMAP: the leftover descriptors.
    Remap(Result<Vec<u8>, Errno>),
}

/// The user ranges an EXEC COMPLETED reply reads with no pin first: its data-in and its
/// sense. Several of them are read in one `process_vm_readv` (see `reply_get`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ExecRanges {
    pub data: (u64, usize),
    pub sense: (u64, usize),
}

impl Plan {
    /// The ranges of an EXEC plan that needs no pin, which may be read ahead of time.
    pub fn exec_ranges(&self) -> Option<ExecRanges> {
        match self {
            Plan::Exec {
                sense,
                resp,
                want_in,
                new_buf: None,
                data_addr,
                ..
            } => Some(ExecRanges {
                data: (*data_addr, (*resp).min(*want_in)),
                sense: (sense.0, sense_bytes(sense.1)),
            }),
            _ => None,
        }
    }

    /// The copies of a plan that touches no user memory at all, without a syscall.
    pub fn copied_without_user_memory(&self) -> Option<Copied> {
        match self {
            Plan::Done => Some(Copied::Nothing),
            Plan::ParseError { sense, .. } if sense_bytes(sense.1) == 0 => {
                Some(Copied::Sense(Ok(Vec::new())))
            }
            _ => match self.exec_ranges() {
                Some(r) if r.data.1 == 0 && r.sense.1 == 0 => Some(Copied::Exec {
                    pin_failed: false,
                    data_sense: Ok((Vec::new(), Vec::new())),
                }),
                _ => None,
            },
        }
    }

    /// Do the plan's user copies (no device lock held), in the kernel's order: a pin before
    /// the data, the data before the sense; the first fault stops the rest.
    pub fn copy(&self, mem: &UserMemory, spare: &SpareBuffers) -> Copied {
        match self {
            Plan::Done => Copied::Nothing,
            Plan::ParseError { sense, .. } => Copied::Sense(copy_sense(mem, *sense)),
            Plan::AllocMem { pbuf, len, .. } => Copied::Pinned(mem.pin_user_pages(*pbuf, *len)),
            Plan::Exec {
                sense,
                resp,
                want_in,
                new_buf,
                data_addr,
                ..
            } => {
                if let Some((pbuf, len, _, _)) = new_buf {
                    if mem.pin_user_pages(*pbuf, *len).is_err() {
                        return Copied::Exec {
                            pin_failed: true,
                            data_sense: Err(Errno::EFAULT),
                        };
                    }
                }
                // Only what the initiator's buffer takes is moved (the size is the handler's word).
                let mut data = spare.take();
                let len = (*resp).min(*want_in);
                let data_sense = (if mem.read_ranges_to_vecs(&mut [(*data_addr, len, &mut data)]) == 1 {
                    Ok(())
                } else {
                    Err(Errno::EFAULT)
                })
                .and_then(|()| copy_sense(mem, *sense))
                .map(|s| (data, s));
                Copied::Exec {
                    pin_failed: false,
                    data_sense,
                }
            }
            Plan::WriteSame { addr, len, .. } => {
                let mut raw = vec![0u8; usize::from(*len)];
                Copied::WriteSame(mem.copy_from_user(*addr, &mut raw).map(|()| raw))
            }
            Plan::RemapError { sense, .. } => Copied::Sense(copy_sense(mem, *sense)),
            Plan::Remap { addr, len, .. } => {
                let mut raw = vec![0u8; usize::from(*len)];
                Copied::Remap(mem.copy_from_user(*addr, &mut raw).map(|()| raw))
            }
        }
    }
}

/// Process one 56-byte reply on its own (REPLY_CMD): the lookup and checks under the lock,
/// the copies with it dropped, the effects under it again.
///
/// # Errors
/// The errno of the spec §3.4/§3.5 table (`ESRCH`, `EINVAL`, `EFAULT`).
pub(crate) fn process_reply(dev: &Device, token: &mut Token<'_>, reply: &ReplyCmd) -> Result<(), Errno> {
    let plan = dev.with(token, |st, fx| st.reply_begin(reply, fx))?;
    let copied = match plan.copied_without_user_memory() {
        Some(c) => c,
        None => plan.copy(&dev.memory, &dev.spare),
    };
    dev.with(token, |st, fx| st.reply_apply(plan, copied, fx))
}

/// Bytes of sense the kernel copies for a `sense_len` (at most the sense buffer).
fn sense_bytes(len: u8) -> usize {
    usize::from(len).min(SCST_SENSE_BUFFERSIZE)
}

fn copy_sense(mem: &UserMemory, (addr, len): (u64, u8)) -> Result<Vec<u8>, Errno> {
    let mut sense = vec![0u8; sense_bytes(len)];
    if !sense.is_empty() {
        mem.copy_from_user(addr, &mut sense)?;
    }
    Ok(sense)
}

impl DeviceState {
    /// The second locked step of a reply: its effects, given its copies.
    ///
    /// # Errors
    /// `EFAULT` when a copy faulted, `EINVAL` for unterminated WRITE SAME descriptors.
    pub fn reply_apply(&mut self, plan: Plan, copied: Copied, fx: &mut Effects) -> Result<(), Errno> {
        match (plan, copied) {
            (Plan::Done, _) => Ok(()),
            (Plan::ParseError { h, id, status, .. }, Copied::Sense(copied)) => {
                self.reply_end(h);
                match copied {
                    Ok(s) => {
                        self.complete_or_abort(id, status, s, Vec::new(), fx);
                        Ok(())
                    }
                    Err(e) => {
                        self.complete_with_sense(id, sense::INTERNAL_FAILURE, fx);
                        Err(e)
                    }
                }
            }
            (
                Plan::AllocMem {
                    h,
                    id,
                    pbuf,
                    pages,
                    cached,
                    ..
                },
                Copied::Pinned(pinned),
            ) => {
                self.reply_end(h);
                if pinned.is_err() {
                    self.complete_with_sense(id, sense::INTERNAL_FAILURE, fx);
                    return Err(Errno::EFAULT);
                }
                self.attach_buffer(h, id, pbuf, pages, cached);
                if let Some(c) = self.cmds.get_mut(&id) {
                    c.data_out_pending = has_data_out(c.parsed.direction);
                }
                self.queue_exec(id, fx);
                Ok(())
            }
            (
                Plan::Exec {
                    h,
                    id,
                    status,
                    resp,
                    new_buf,
                    ..
                },
                Copied::Exec {
                    pin_failed,
                    data_sense,
                },
            ) => {
                self.reply_end(h);
                if pin_failed {
                    let busy = self
                        .cmds
                        .get(&id)
                        .map_or(abi::sam_status::BUSY, |c| self.busy_status(c.sess_h));
                    self.complete_or_abort(id, busy, Vec::new(), Vec::new(), fx);
                    return Ok(());
                }
                if let Some((pbuf, _, pages, cached)) = new_buf {
                    self.attach_buffer(h, id, pbuf, pages, cached);
                }
                match data_sense {
                    Ok((data, sense)) => {
                        if let Some(c) = self.cmds.get_mut(&id) {
                            c.resp_data_len = resp as i32;
                            // The data was read from the start of the command's buffer: what
                            // it must still hold when the handler gets it back (`ownership`).
                            if let (Some(oid), false, true) =
                                (c.sgv, data.is_empty(), self.sgv.check_ownership)
                            {
                                self.sgv.set_fingerprint(oid, Some(Fingerprint::of(&data)));
                            }
                        }
                        self.complete_or_abort(id, status, sense, data, fx);
                        Ok(())
                    }
                    Err(e) => {
                        self.complete_with_sense(id, sense::INTERNAL_FAILURE, fx);
                        Err(e)
                    }
                }
            }
            (Plan::WriteSame { h, id, .. }, Copied::WriteSame(copied)) => {
                self.reply_end(h);
                let Ok(raw) = copied else {
                    self.complete_with_sense(id, sense::HARDWARE_ERROR, fx);
                    return Err(Errno::EFAULT);
                };
                // The last descriptor must terminate the list (usdd_blocks == 0).
                let last_blocks = &raw[raw.len() - 8..];
                if last_blocks.iter().any(|&b| b != 0) {
                    log::warn!("loopback: DO_WRITE_SAME descriptors not terminated");
                    self.complete_with_sense(id, sense::HARDWARE_ERROR, fx);
                    return Err(Errno::EINVAL);
                }
                self.complete_or_abort(id, abi::sam_status::GOOD, Vec::new(), Vec::new(), fx);
                Ok(())
            }
            (Plan::RemapError { h, id, status, .. }, Copied::Sense(copied)) => {
                self.reply_end(h);
                match copied {
                    Ok(sense) => {
                        self.cm_remap_failed(id, status, sense, fx);
                        Ok(())
                    }
                    Err(e) => {
                        self.cm_remap_invalid(id, fx);
                        Err(e)
                    }
                }
            }
            (Plan::Remap { h, id, .. }, Copied::Remap(copied)) => {
                self.reply_end(h);
                let Ok(raw) = copied else {
                    // The kernel's own flaw, kept: a fault reading the leftovers ends the
                    // reply with EFAULT but sets no error on the command, and the segment is
                    // taken as done (`out_free_buf` → `scst_ext_copy_remap_done(NULL)`,
                    // scst_user.c:1488-1494, 1538-1548): its data is not copied.
                    log::warn!("loopback: EXT_COPY_REMAP leftovers unreadable: segment taken as copied");
                    self.cm_remap_done(id, Vec::new(), fx);
                    return Err(Errno::EFAULT);
                };
                // spec §3.8 (scst_user.c:1496-1536): whole 24-byte descriptors, none empty,
                // together no longer than the segment; HARDWARE ERROR and EINVAL otherwise.
                let size = std::mem::size_of::<abi::ExtCopyDataDescr>();
                if !raw.len().is_multiple_of(size) {
                    log::warn!("loopback: EXT_COPY_REMAP leftovers of {} bytes", raw.len());
                    self.cm_remap_invalid(id, fx);
                    return Err(Errno::EINVAL);
                }
                let descrs: Vec<abi::ExtCopyDataDescr> = raw
                    .chunks_exact(size)
                    .filter_map(|c| zerocopy::FromBytes::read_from_bytes(c).ok())
                    .collect();
                let total: i64 = descrs.iter().map(|d| i64::from(d.data_len)).sum();
                let segment = i64::from(self.cm_segment_len(id).unwrap_or(0));
                if descrs.iter().any(|d| d.data_len == 0) || total > segment {
                    log::warn!(
                        "loopback: invalid EXT_COPY_REMAP leftovers {descrs:?} for a {segment}-byte segment"
                    );
                    self.cm_remap_invalid(id, fx);
                    return Err(Errno::EINVAL);
                }
                self.cm_remap_done(id, descrs, fx);
                Ok(())
            }
            (plan, _) => {
                // Copies come from `plan.copy` or a prefetch matched against the plan.
                log::error!("loopback: reply plan {plan:?} applied with the copies of another plan");
                Err(Errno::EINVAL)
            }
        }
    }

    /// What an EXEC COMPLETED reply would read if it were processed now: a read-only look
    /// used to read the data of several replies in one syscall. Only a hint: the reply's own
    /// plan is compared with it before the data is used.
    pub fn peek_exec_ranges(&self, reply: &ReplyCmd) -> Option<ExecRanges> {
        let u = self.ucmds.get(&reply.cmd_h)?;
        let deliverable = u.refs > 0
            && !u.background
            && !u.this_state_unjammed
            && u.sent_to_user
            && reply.subcode == u.msg.subcode
            && u.state == abi::UCMD_STATE_EXECING;
        if !deliverable {
            return None;
        }
        let cmd = self.cmds.get(&u.scsi_cmd()?)?;
        let r: abi::ExecReply = reply.read_payload();
        let valid = r.reply_type == exec_reply_type::COMPLETED
            && r.resp_data_len >= 0
            && r.resp_data_len <= cmd.parsed.bufflen
            && (r.resp_data_len == 0 || cmd.parsed.direction == data_direction::READ)
            && (r.resp_data_len == 0 || cmd.pbuf != 0);
        valid.then(|| ExecRanges {
            data: (
                cmd.pbuf,
                (r.resp_data_len as usize).min(cmd.expected_data_in as usize),
            ),
            sense: (r.psense_buffer, sense_bytes(r.sense_len)),
        })
    }

    /// Complete normally, or as aborted if a TM aborted the command meanwhile.
    fn complete_or_abort(&mut self, id: u64, status: u8, sense: Vec<u8>, data: Vec<u8>, fx: &mut Effects) {
        self.complete_cmd(id, status, sense, data, false, fx);
    }

    fn reply_end(&mut self, h: u32) {
        if let Some(u) = self.ucmds.get_mut(&h) {
            u.in_reply = false;
        }
    }

    /// Wrap a pinned user buffer in a new SGV object owned by ucmd `h` (extra reference).
    fn attach_buffer(&mut self, h: u32, id: u64, pbuf: u64, pages: u64, cached: bool) {
        let Some(cmd) = self.cmds.get_mut(&id) else { return };
        // A cached buffer too big for the pool's classes is destroyed right after use and goes
        // back to its owner (spec §8.9).
        let pooled = cached && self.sgv.class_pages(pages * uaccess::PAGE_SIZE).is_some();
        let oid = self.sgv.insert(SgvObject {
            pbuf,
            pages,
            owner: h,
            cached: pooled,
            return_to_owner: cached,
            clustered: false,
            in_use: true,
            last_used: Instant::now(),
            fingerprint: None,
        });
        cmd.sgv = Some(oid);
        cmd.pbuf = pbuf;
        if let Some(u) = self.ucmds.get_mut(&h) {
            u.refs += 1;
        }
    }

    /// Fail a command whose reply was invalid, with `code`; returns `err` for the ioctl.
    fn invalid(
        &mut self,
        id: u64,
        code: sense::SenseCode,
        err: Errno,
        fx: &mut Effects,
    ) -> Result<Plan, Errno> {
        self.complete_with_sense(id, code, fx);
        Err(err)
    }

    /// The first locked step of a reply (spec §3.4): lookup, state checks, validation.
    ///
    /// # Errors
    /// `ESRCH`, `EINVAL` as the spec's table says.
    pub fn reply_begin(&mut self, reply: &ReplyCmd, fx: &mut Effects) -> Result<Plan, Errno> {
        let h = reply.cmd_h;
        let Some(u) = self.ucmds.get(&h).filter(|u| u.refs > 0) else {
            return Err(Errno::ESRCH);
        };
        if u.background {
            return self.background_reply(h, reply);
        }
        if u.this_state_unjammed {
            log::debug!("loopback: reply to unjammed ucmd {h} ignored");
            return Ok(Plan::Done);
        }
        if !u.sent_to_user {
            return Err(Errno::EINVAL);
        }
        if reply.subcode != u.msg.subcode || abi::subcode_state(reply.subcode) != u.state {
            log::warn!(
                "loopback: reply subcode {:#x} for ucmd {h} in state {}: failing the command",
                reply.subcode,
                u.state
            );
            self.unjam(h, false, fx);
            return Err(Errno::EINVAL);
        }
        let state = u.state;
        let kind = u.kind;
        let id = u.scsi_cmd();
        if let Some(u) = self.ucmds.get_mut(&h) {
            u.sent_to_user = false;
        }
        match (state, id) {
            (abi::UCMD_STATE_PARSING, Some(id)) => self.reply_parse(h, id, reply, fx),
            (abi::UCMD_STATE_BUF_ALLOCING, Some(id)) => self.reply_alloc_mem(h, id, reply, fx),
            (abi::UCMD_STATE_EXECING, Some(id)) => self.reply_exec(h, id, reply, fx),
            (abi::UCMD_STATE_EXT_COPY_REMAPPING, Some(id)) => self.reply_remap(h, id, reply, fx),
            (abi::UCMD_STATE_ON_FREEING, Some(id)) => {
                self.finish_free(id, fx);
                Ok(Plan::Done)
            }
            (abi::UCMD_STATE_ON_CACHE_FREEING, _) => {
                // Drops the buffer-owner reference: the zombie leaves the hash.
                self.put_ucmd(h);
                Ok(Plan::Done)
            }
            (abi::UCMD_STATE_TM_RECEIVED_EXECING, _) => {
                if let UcmdKind::Tm { tm } = kind {
                    if let Some(t) = self.tms.get_mut(&tm) {
                        t.received_replied = true;
                    }
                }
                self.put_ucmd(h);
                self.check_tms(fx);
                Ok(Plan::Done)
            }
            (abi::UCMD_STATE_TM_DONE_EXECING, _) => {
                if let UcmdKind::Tm { tm } = kind {
                    self.finish_tm(tm, reply.result(), fx);
                }
                self.put_ucmd(h);
                Ok(Plan::Done)
            }
            (abi::UCMD_STATE_ATTACH_SESS, _) => {
                if let UcmdKind::Attach { sess_h } = kind {
                    self.attach_result(h, sess_h, reply.result(), fx);
                }
                self.put_ucmd(h);
                Ok(Plan::Done)
            }
            (abi::UCMD_STATE_DETACH_SESS, _) => {
                self.put_ucmd(h);
                Ok(Plan::Done)
            }
            _ => {
                log::error!("loopback: ucmd {h} in state {state} has no command");
                Err(Errno::EINVAL)
            }
        }
    }

    /// Result of ATTACH_SESS ucmd `h`: 0 makes the session live; anything else refuses it. A
    /// reply after the attach timed out finds no wait and is dropped.
    pub fn attach_result(&mut self, h: u32, sess_h: u64, result: i32, fx: &mut Effects) {
        if let Some(w) = self.attaches.get_mut(&h) {
            w.result = Some(result);
            if result == 0 {
                if let Some(s) = w.sess.take() {
                    self.sessions.insert(sess_h, s);
                }
            }
            fx.wake_attach = true;
        }
    }

    /// The second reply of a BACKGROUND exec: only COMPLETED, which drops the extra ref.
    fn background_reply(&mut self, h: u32, reply: &ReplyCmd) -> Result<Plan, Errno> {
        let r: abi::ExecReply = reply.read_payload();
        if r.reply_type != exec_reply_type::COMPLETED {
            log::warn!("loopback: second BACKGROUND reply for ucmd {h}");
            return Err(Errno::EINVAL);
        }
        if let Some(u) = self.ucmds.get_mut(&h) {
            u.background = false;
        }
        self.put_ucmd(h);
        Ok(Plan::Done)
    }

    fn reply_parse(&mut self, h: u32, id: u64, reply: &ReplyCmd, fx: &mut Effects) -> Result<Plan, Errno> {
        let r: abi::ParseReply = reply.read_payload();
        if r.status != 0 {
            let s: abi::ParseReplySense = reply.read_payload();
            self.set_in_reply(h);
            return Ok(Plan::ParseError {
                h,
                id,
                status: r.status,
                sense: (s.psense_buffer, s.sense_len),
            });
        }
        let Some(cmd) = self.cmds.get_mut(&id) else {
            return Ok(Plan::Done);
        };
        let orig_cdb_len = cmd.cdb.len();
        let valid = r.queue_type <= abi::queue_type::ACA
            && matches!(
                r.data_direction,
                data_direction::WRITE | data_direction::READ | data_direction::BIDI | data_direction::NONE
            )
            && (r.bufflen != 0 || r.data_direction == data_direction::NONE)
            && r.bufflen >= 0
            && r.out_bufflen >= 0
            && r.data_len >= 0
            && r.lba >= 0
            && usize::from(r.cdb_len) <= orig_cdb_len
            && r.op_flags & abi::op_flags::INFO_VALID != 0;
        if !valid {
            log::warn!("loopback: invalid PARSE reply for ucmd {h}: {r:?}");
            return self.invalid(id, sense::HARDWARE_ERROR, Errno::EINVAL, fx);
        }
        cmd.queue_type = r.queue_type;
        cmd.parsed.direction = r.data_direction;
        if r.cdb_len != 0 {
            cmd.cdb.truncate(usize::from(r.cdb_len));
        }
        cmd.parsed.lba = r.lba;
        cmd.parsed.data_len = r.data_len;
        cmd.parsed.bufflen = r.bufflen;
        cmd.parsed.op_flags = r.op_flags;
        cmd.parsed.out_bufflen = r.out_bufflen;
        if cmd.aborted {
            self.complete_aborted(id, fx);
        } else {
            self.after_parse(id, fx);
        }
        Ok(Plan::Done)
    }

    fn reply_alloc_mem(
        &mut self,
        h: u32,
        id: u64,
        reply: &ReplyCmd,
        fx: &mut Effects,
    ) -> Result<Plan, Errno> {
        let r: abi::AllocMemReply = reply.read_payload();
        let Some(cmd) = self.cmds.get(&id) else {
            return Ok(Plan::Done);
        };
        if r.pbuf == 0 {
            let busy = self.busy_status(cmd.sess_h);
            self.complete_or_abort(id, busy, Vec::new(), Vec::new(), fx);
            return Ok(Plan::Done);
        }
        let cached = cmd.cached;
        if cached && !r.pbuf.is_multiple_of(uaccess::PAGE_SIZE) {
            log::warn!("loopback: misaligned cached buffer {:#x} for ucmd {h}", r.pbuf);
            return self.invalid(id, sense::HARDWARE_ERROR, Errno::EINVAL, fx);
        }
        let len = if cached {
            cmd.alloc_len as u64
        } else {
            cmd.buffer_bytes() as u64
        };
        self.set_in_reply(h);
        Ok(Plan::AllocMem {
            h,
            id,
            pbuf: r.pbuf,
            len,
            pages: len.div_ceil(uaccess::PAGE_SIZE),
            cached,
        })
    }

    fn reply_exec(&mut self, h: u32, id: u64, reply: &ReplyCmd, fx: &mut Effects) -> Result<Plan, Errno> {
        let r: abi::ExecReply = reply.read_payload();
        let Some(cmd) = self.cmds.get(&id) else {
            return Ok(Plan::Done);
        };
        let dir = cmd.parsed.direction;
        match r.reply_type {
            exec_reply_type::COMPLETED => {
                if r.resp_data_len < 0
                    || r.resp_data_len > cmd.parsed.bufflen
                    || (r.resp_data_len > 0 && dir != data_direction::READ)
                {
                    log::warn!("loopback: invalid EXEC reply for ucmd {h}: {r:?}");
                    return self.invalid(id, sense::INTERNAL_FAILURE, Errno::EINVAL, fx);
                }
                let resp = r.resp_data_len as usize;
                let want_in = cmd.expected_data_in as usize;
                let mut new_buf = None;
                let mut data_addr = cmd.pbuf;
                if resp > 0 && cmd.pbuf == 0 {
                    if r.pbuf == 0 {
                        let busy = self.busy_status(cmd.sess_h);
                        self.complete_or_abort(id, busy, Vec::new(), Vec::new(), fx);
                        return Ok(Plan::Done);
                    }
                    if cmd.cached && !r.pbuf.is_multiple_of(uaccess::PAGE_SIZE) {
                        log::warn!("loopback: misaligned cached buffer {:#x} in EXEC reply", r.pbuf);
                        return self.invalid(id, sense::INTERNAL_FAILURE, Errno::EINVAL, fx);
                    }
                    let len = if cmd.cached {
                        cmd.alloc_len as u64
                    } else {
                        cmd.buffer_bytes() as u64
                    };
                    new_buf = Some((r.pbuf, len, len.div_ceil(uaccess::PAGE_SIZE), cmd.cached));
                    data_addr = r.pbuf;
                }
                self.set_in_reply(h);
                Ok(Plan::Exec {
                    h,
                    id,
                    status: r.status,
                    sense: (r.psense_buffer, r.sense_len),
                    resp,
                    want_in,
                    new_buf,
                    data_addr,
                })
            }
            exec_reply_type::BACKGROUND => {
                if matches!(dir, data_direction::READ | data_direction::BIDI) || r.resp_data_len != 0 {
                    log::warn!("loopback: BACKGROUND refused for ucmd {h} (direction {dir})");
                    return self.invalid(id, sense::INTERNAL_FAILURE, Errno::EINVAL, fx);
                }
                if let Some(u) = self.ucmds.get_mut(&h) {
                    u.background = true;
                    u.refs += 1;
                }
                // Completed to the initiator with GOOD now; status and sense are skipped.
                self.complete_or_abort(id, abi::sam_status::GOOD, Vec::new(), Vec::new(), fx);
                Ok(Plan::Done)
            }
            exec_reply_type::DO_WRITE_SAME => {
                let ws: abi::ExecReplyWriteSame = reply.read_payload();
                let opcode = cmd.cdb.first().copied().unwrap_or(0);
                let is_ws = matches!(
                    opcode,
                    super::core_parse::WRITE_SAME_10 | super::core_parse::WRITE_SAME_16
                );
                if !is_ws || ws.status != 0 {
                    return self.invalid(id, sense::HARDWARE_ERROR, Errno::EINVAL, fx);
                }
                if ws.ws_descriptors_len == 0 {
                    // The core writes the whole range itself.
                    self.complete_or_abort(id, abi::sam_status::GOOD, Vec::new(), Vec::new(), fx);
                    return Ok(Plan::Done);
                }
                if !ws.ws_descriptors_len.is_multiple_of(16) || ws.ws_descriptors_len > MAX_WS_DESCRIPTORS_LEN
                {
                    return self.invalid(id, sense::HARDWARE_ERROR, Errno::EINVAL, fx);
                }
                self.set_in_reply(h);
                Ok(Plan::WriteSame {
                    h,
                    id,
                    addr: ws.ws_descriptors,
                    len: ws.ws_descriptors_len,
                })
            }
            other => {
                log::warn!("loopback: unknown EXEC reply_type {other} for ucmd {h}");
                self.invalid(id, sense::INTERNAL_FAILURE, Errno::EINVAL, fx)
            }
        }
    }

    /// EXT_COPY_REMAP's reply (spec §3.8, `dev_user_process_reply_ext_copy_remap`): an error
    /// status or sense fails the EXTENDED COPY with them; no descriptors means the segment was
    /// copied; more than a page of descriptors is a HARDWARE ERROR (EOVERFLOW); the rest is
    /// read and checked in [`DeviceState::reply_apply`].
    fn reply_remap(&mut self, h: u32, id: u64, reply: &ReplyCmd, fx: &mut Effects) -> Result<Plan, Errno> {
        let r: abi::ExtCopyReplyRemap = reply.read_payload();
        if !self.cm_is_copy(id) {
            return Ok(Plan::Done);
        }
        if r.status != 0 || r.sense_len != 0 {
            self.set_in_reply(h);
            return Ok(Plan::RemapError {
                h,
                id,
                status: r.status,
                sense: (r.psense_buffer, r.sense_len),
            });
        }
        if r.remap_descriptors_len == 0 {
            self.cm_remap_done(id, Vec::new(), fx);
            return Ok(Plan::Done);
        }
        if r.remap_descriptors_len > MAX_REMAP_DESCRIPTORS_LEN {
            log::warn!(
                "loopback: {} bytes of EXT_COPY_REMAP leftovers (more than a page)",
                r.remap_descriptors_len
            );
            self.cm_remap_invalid(id, fx);
            return Err(Errno(libc::EOVERFLOW));
        }
        self.set_in_reply(h);
        Ok(Plan::Remap {
            h,
            id,
            addr: r.remap_descriptors,
            len: r.remap_descriptors_len,
        })
    }

    fn set_in_reply(&mut self, h: u32) {
        if let Some(u) = self.ucmds.get_mut(&h) {
            u.in_reply = true;
        }
    }
}
