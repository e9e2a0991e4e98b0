//! The SCST core's processing of one SCSI command on a user-space device, run inside handler
//! threads (spec §3.1): parse (core or PARSE), buffer provisioning (SGV hit, ALLOC_MEM, or
//! delayed to EXEC, spec §3.6), local events before EXEC (aborts, unit attentions, write
//! protect), completion to the initiator and the free stage (ON_FREE_CMD or skipped, spec §3.11).

use super::copy_mgr;
use super::core_parse;
use super::device::CoreWork;
use super::device::DeviceState;
use super::device::Effects;
use super::ownership::Check;
use super::sense;
use super::sense::SenseCode;
use super::session::ScsiCompletion;
use super::session::TmCompletion;
use super::sgv::Evicted;
use super::ucmd::UcmdKind;
use crate::abi;
use crate::abi::data_direction;
use crate::abi::sam_status;
use std::time::Instant;

/// `is_buff_cached` (spec §3.6): BIDI only under REUSE_ALL.
pub(crate) fn is_buff_cached(memory_reuse_type: u8, direction: u8) -> bool {
    match memory_reuse_type {
        abi::memory_reuse_type::REUSE_ALL => true,
        abi::memory_reuse_type::REUSE_READ => direction == data_direction::READ,
        abi::memory_reuse_type::REUSE_WRITE => direction == data_direction::WRITE,
        _ => false,
    }
}

/// The direction moves data from the initiator (WRITE or BIDI).
pub(crate) fn has_data_out(direction: u8) -> bool {
    matches!(direction, data_direction::WRITE | data_direction::BIDI)
}

fn cdb16(cdb: &[u8]) -> [u8; abi::SCST_MAX_CDB_SIZE] {
    let mut out = [0u8; abi::SCST_MAX_CDB_SIZE];
    let n = cdb.len().min(out.len());
    out[..n].copy_from_slice(&cdb[..n]);
    out
}

impl DeviceState {
    /// Sense bytes in the device's format.
    pub fn sense(&self, code: SenseCode) -> Vec<u8> {
        sense::build(self.opt.d_sense != 0, code)
    }

    /// `scst_set_busy` (spec §2.6): BUSY if the session has ≤1 command, else TASK SET FULL.
    pub fn busy_status(&self, sess_h: u64) -> u8 {
        match self.sessions.get(&sess_h) {
            Some(s) if s.outstanding > 1 => sam_status::TASK_SET_FULL,
            _ => sam_status::BUSY,
        }
    }

    /// Drain the active list (unless activity is suspended).
    pub fn run_core_work(&mut self, fx: &mut Effects) {
        while self.suspended == 0 {
            let Some(work) = self.active.pop_front() else {
                break;
            };
            match work {
                CoreWork::New(id) => self.start_cmd(id, fx),
                CoreWork::Finish {
                    id,
                    status,
                    sense,
                    aborted,
                } => self.complete_cmd(id, status, sense, Vec::new(), aborted, fx),
            }
        }
    }

    fn start_cmd(&mut self, id: u64, fx: &mut Effects) {
        let Some(cmd) = self.cmds.get(&id) else { return };
        if cmd.aborted {
            self.complete_aborted(id, fx);
            return;
        }
        let opcode = cmd.cdb.first().copied().unwrap_or(0);
        if opcode == copy_mgr::RECEIVE_COPY_RESULTS {
            // Core-local, never reaches the handler (scst_targ.c:2591).
            self.cm_receive_copy_results(id, fx);
            return;
        }
        if opcode == core_parse::REPORT_LUNS {
            // Fully local: answered by the core, no ucmd (spec §6.4).
            let lun = self.sessions.get(&cmd.sess_h).map_or(0, |s| s.lun);
            let alloc = core_parse::parse(&cmd.cdb, self.block_size).map_or(0, |p| p.bufflen as usize);
            let data = core_parse::report_luns_data(lun, alloc.min(cmd.expected_data_in as usize));
            self.complete_cmd(id, sam_status::GOOD, Vec::new(), data, false, fx);
            return;
        }
        // The dev parse callback runs: the ucmd is created here (spec §3.11 "new SCSI cmd").
        let parsed = core_parse::parse(&cmd.cdb, self.block_size);
        let h = self.new_ucmd(UcmdKind::Scsi { cmd: Some(id) });
        let pt = self.opt.parse_type;
        let send_parse =
            pt == abi::parse_type::CALL || (pt == abi::parse_type::EXCEPTION && parsed.is_none());
        let Some(cmd) = self.cmds.get_mut(&id) else { return };
        cmd.ucmd = Some(h);
        if let Some(p) = parsed {
            cmd.parsed = p;
        }
        if opcode == copy_mgr::EXTENDED_COPY && pt != abi::parse_type::CALL {
            // SCST's parser knows it; the copy manager runs it on this command's ucmd
            // (scst_targ.c:2586), which EXT_COPY_REMAP then uses.
            self.cm_extended_copy(id, fx);
            return;
        }
        if send_parse {
            let (exp_dir, exp_len, exp_out) = match (cmd.data_out.len(), cmd.expected_data_in) {
                (0, 0) => (data_direction::NONE, 0, 0),
                (0, n) => (data_direction::READ, n as i32, 0),
                (o, 0) => (data_direction::WRITE, o as i32, 0),
                (o, n) => (data_direction::BIDI, n as i32, o as i32),
            };
            let p = parsed.unwrap_or(core_parse::ParsedCdb {
                direction: data_direction::UNKNOWN,
                bufflen: 0,
                out_bufflen: 0,
                data_len: 0,
                lba: 0,
                op_flags: 0,
            });
            let payload = abi::ScsiCmdParse {
                sess_h: cmd.sess_h,
                cdb: cdb16(&cmd.cdb),
                cdb_len: cmd.cdb.len() as u16,
                lba: p.lba,
                data_len: p.data_len,
                bufflen: p.bufflen,
                out_bufflen: p.out_bufflen,
                timeout: cmd.timeout as i32,
                op_flags: p.op_flags,
                queue_type: cmd.queue_type,
                data_direction: p.direction,
                expected_values_set: 1,
                expected_data_direction: exp_dir,
                expected_transfer_len: exp_len,
                expected_out_transfer_len: exp_out,
                sn: cmd.sn,
                ..Default::default()
            };
            if let Some(u) = self.ucmds.get_mut(&h) {
                u.set_message(abi::SCST_USER_PARSE, &payload);
            }
            self.queue_ready(h, fx);
            return;
        }
        if parsed.is_none() {
            self.complete_with_sense(id, sense::INVALID_OPCODE, fx);
            return;
        }
        self.after_parse(id, fx);
    }

    /// The core's checks of what the dev handler's parse decided (the core's parser or a PARSE
    /// reply alike: `scst_parse_cmd` goes on after `dev_user_parse` in both cases), in the
    /// kernel's order (scst_targ.c:1158-1238, built without CONFIG_SCST_USE_EXPECTED_VALUES):
    /// - a data direction other than the initiator's expected one fails the command with
    ///   ILLEGAL REQUEST 49/00 INVALID MESSAGE ERROR, unless the initiator expected no data and
    ///   the length is 0, or the command is TEST UNIT READY expected NONE or READ
    ///   (`scst_is_allowed_to_mismatch_cmd`, scst_targ.c:987-1001); a length other than the
    ///   expected one is only a residual;
    /// - `SCST_UNKNOWN_LBA` in the op flags fails it with HARDWARE ERROR;
    /// - a length of 0 makes the direction NONE ("set_res").
    ///
    /// False when the command was completed.
    fn post_parse_checks(&mut self, id: u64, fx: &mut Effects) -> bool {
        let Some(cmd) = self.cmds.get_mut(&id) else {
            return false;
        };
        // The initiator's expected direction, from what it sends and expects back.
        let expected = match (cmd.data_out.is_empty(), cmd.expected_data_in) {
            (true, 0) => data_direction::NONE,
            (true, _) => data_direction::READ,
            (false, 0) => data_direction::WRITE,
            (false, _) => data_direction::BIDI,
        };
        let p = &mut cmd.parsed;
        if p.direction != expected {
            let tur_allowed = cmd.cdb.first() == Some(&core_parse::TEST_UNIT_READY)
                && matches!(expected, data_direction::READ | data_direction::NONE);
            if (expected != data_direction::NONE || p.bufflen != 0) && !tur_allowed {
                log::warn!(
                    "loopback: expected data direction {expected} for opcode {:#04x} doesn't match decoded {}",
                    cmd.cdb.first().copied().unwrap_or(0),
                    p.direction
                );
                self.complete_with_sense(id, sense::INVALID_MESSAGE, fx);
                return false;
            }
        }
        if p.op_flags & abi::op_flags::UNKNOWN_LBA != 0 {
            log::warn!(
                "loopback: unknown LBA (opcode {:#04x})",
                cmd.cdb.first().copied().unwrap_or(0)
            );
            self.complete_with_sense(id, sense::HARDWARE_ERROR, fx);
            return false;
        }
        if p.bufflen == 0 {
            p.direction = data_direction::NONE;
        }
        true
    }

    /// Buffer stage after parsing (spec §3.6 "cached path" / "non-cached path"), once the
    /// core's checks of the parse passed.
    pub fn after_parse(&mut self, id: u64, fx: &mut Effects) {
        if !self.post_parse_checks(id, fx) {
            return;
        }
        let reuse = self.opt.memory_reuse_type;
        let Some(cmd) = self.cmds.get(&id) else { return };
        let dir = cmd.parsed.direction;
        let bytes = cmd.buffer_bytes() as u64;
        if dir == data_direction::NONE || bytes == 0 {
            self.queue_exec(id, fx);
            return;
        }
        let buff_cached = is_buff_cached(reuse, dir);
        let class = if buff_cached {
            self.sgv.class_pages(bytes)
        } else {
            None
        };
        let hit = class.and_then(|pages| self.sgv.take_free(pages, false));
        let Some(cmd) = self.cmds.get_mut(&id) else { return };
        cmd.cached = buff_cached;
        if let Some((oid, obj)) = hit {
            // Cache hit: no ALLOC_MEM, EXEC carries the cached buffer, which must still hold
            // what its last command left in it (checked at the EXEC's delivery).
            cmd.sgv = Some(oid);
            cmd.pbuf = obj.pbuf;
            cmd.data_out_pending = has_data_out(dir);
            let check = obj.fingerprint.map(|expected| Check {
                pbuf: obj.pbuf,
                expected,
            });
            if let Some(u) = cmd.ucmd.and_then(|h| self.ucmds.get_mut(&h)) {
                u.ownership_check = check;
            }
            self.queue_exec(id, fx);
            return;
        }
        cmd.alloc_len = match class {
            Some(pages) => (pages * 4096) as i32,
            // Too big for a class but cached: whole pages, never kept by the pool (§8.9).
            None if buff_cached => bytes.next_multiple_of(4096) as i32,
            None => bytes as i32,
        };
        let needs_alloc_mem = has_data_out(dir) || cmd.parsed.op_flags & abi::op_flags::LOCAL_CMD != 0;
        if !needs_alloc_mem {
            // Plain READ miss: allocation delayed to EXEC (pbuf 0, alloc_len set).
            self.queue_exec(id, fx);
            return;
        }
        let payload = abi::ScsiCmdAllocMem {
            sess_h: cmd.sess_h,
            cdb: cdb16(&cmd.cdb),
            cdb_len: cmd.cdb.len() as u16,
            alloc_len: cmd.alloc_len,
            queue_type: cmd.queue_type,
            data_direction: dir,
            sn: cmd.sn,
            ..Default::default()
        };
        let Some(h) = cmd.ucmd else { return };
        if let Some(u) = self.ucmds.get_mut(&h) {
            u.set_message(abi::SCST_USER_ALLOC_MEM, &payload);
        }
        self.queue_ready(h, fx);
    }

    /// `scst_check_local_events`, then queue EXEC (spec §3.1, §3.5).
    pub fn queue_exec(&mut self, id: u64, fx: &mut Effects) {
        let Some(cmd) = self.cmds.get(&id) else { return };
        if cmd.aborted {
            self.complete_aborted(id, fx);
            return;
        }
        let opcode = cmd.cdb.first().copied().unwrap_or(0);
        let sess_h = cmd.sess_h;
        let write_medium = cmd.parsed.op_flags & abi::op_flags::WRITE_MEDIUM != 0;
        let skip_ua = cmd.parsed.op_flags & abi::op_flags::SKIP_UA != 0 || opcode == core_parse::INQUIRY;
        let expected_in = cmd.expected_data_in as usize;
        let (ua, rd_only) = match self.sessions.get(&sess_h) {
            Some(s) => (s.ua, s.rd_only),
            None => (None, false),
        };
        if let Some(code) = ua.filter(|_| !skip_ua) {
            if let Some(s) = self.sessions.get_mut(&sess_h) {
                s.ua = None;
            }
            let sense = self.sense(code);
            if opcode == core_parse::REQUEST_SENSE {
                // The core answers REQUEST SENSE with the pending UA itself (spec §6.4).
                let mut data = sense::build(false, code);
                data.truncate(expected_in);
                self.complete_cmd(id, sam_status::GOOD, Vec::new(), data, false, fx);
            } else {
                self.complete_cmd(id, sam_status::CHECK_CONDITION, sense, Vec::new(), false, fx);
            }
            return;
        }
        if rd_only && write_medium {
            self.complete_with_sense(id, sense::WRITE_PROTECTED, fx);
            return;
        }
        let Some(cmd) = self.cmds.get(&id) else { return };
        let Some(h) = cmd.ucmd else { return };
        let Some(u) = self.ucmds.get_mut(&h) else { return };
        // Start from the ucmd's persistent area: fields EXEC does not set keep stale bytes.
        let mut exec: abi::ScsiCmdExec = u.msg.read_payload();
        exec.sess_h = cmd.sess_h;
        exec.cdb = cdb16(&cmd.cdb);
        exec.cdb_len = cmd.cdb.len() as u16;
        exec.lba = cmd.parsed.lba;
        exec.data_len = cmd.parsed.data_len;
        exec.bufflen = cmd.parsed.bufflen;
        exec.pbuf = cmd.pbuf;
        if cmd.pbuf == 0 && cmd.parsed.direction != data_direction::NONE {
            exec.alloc_len = cmd.alloc_len;
        }
        exec.queue_type = cmd.queue_type;
        exec.data_direction = cmd.parsed.direction;
        exec.partial = 0;
        exec.timeout = cmd.timeout as i32;
        exec.p_out_buf = if cmd.pbuf != 0 && cmd.parsed.direction == data_direction::BIDI {
            cmd.pbuf + (cmd.parsed.bufflen.max(0) as u64).div_ceil(4096) * 4096
        } else {
            0
        };
        exec.out_bufflen = cmd.parsed.out_bufflen;
        exec.sn = cmd.sn;
        u.set_message(abi::SCST_USER_EXEC, &exec);
        self.queue_ready(h, fx);
    }

    /// Complete with CHECK CONDITION and `code`.
    pub fn complete_with_sense(&mut self, id: u64, code: SenseCode, fx: &mut Effects) {
        let sense = self.sense(code);
        self.complete_cmd(id, sam_status::CHECK_CONDITION, sense, Vec::new(), false, fx);
    }

    /// Complete as aborted by task management: TASK ABORTED, `aborted: true`.
    pub fn complete_aborted(&mut self, id: u64, fx: &mut Effects) {
        self.complete_cmd(id, sam_status::TASK_ABORTED, Vec::new(), Vec::new(), true, fx);
    }

    /// The core's `dev_done` for a disk (`dev_user_disk_done` -> `scst_block_generic_dev_done`,
    /// scst_lib.c:12752-12798, installed only when the parse type is not CALL, scst_user.c:3170-3190):
    /// a READ CAPACITY(10) or (16) answered GOOD sets the device's block size from its BLOCK
    /// LENGTH field, which parses every later command (a handler that reports another block size
    /// than it registered gets its later READs and WRITEs sized by it). A length of 0 changes
    /// nothing (logged by SCST); one below 512 is refused (`scst_calc_block_shift`); one that is
    /// not a power of two counts as the power below it (`ilog2`).
    fn snoop_block_size(&mut self, opcode: u8, service_action: u8, data_in: &[u8]) {
        const READ_CAPACITY: u8 = 0x25;
        const SERVICE_ACTION_IN_16: u8 = 0x9e;
        const SAI_READ_CAPACITY_16: u8 = 0x10;
        let offset = match (opcode, service_action) {
            (READ_CAPACITY, _) => 4,
            (SERVICE_ACTION_IN_16, SAI_READ_CAPACITY_16) => 8,
            _ => return,
        };
        // Disks, CD-ROMs (05h) and optical memory (07h): the types given this dev_done.
        const TYPE_ROM: u8 = 0x05;
        const TYPE_MOD: u8 = 0x07;
        let disk_like = matches!(self.dev_type, abi::TYPE_DISK | TYPE_ROM | TYPE_MOD);
        if !disk_like || self.opt.parse_type == abi::parse_type::CALL {
            return;
        }
        let Some(field) = data_in.get(offset..offset + 4) else {
            return;
        };
        let length = u32::from_be_bytes([field[0], field[1], field[2], field[3]]);
        if length == 0 {
            log::warn!(
                "loopback: READ CAPACITY answered a block length of 0 (SCST logs it, changes nothing)"
            );
            return;
        }
        let shift = length.ilog2();
        if shift < 9 {
            log::warn!("loopback: READ CAPACITY answered a block length of {length}: SCST refuses it");
            return;
        }
        let block_size = 1u32 << shift;
        if block_size != self.block_size {
            log::info!(
                "loopback: READ CAPACITY changed the block size from {} into {block_size}, as SCST's core does",
                self.block_size
            );
            self.block_size = block_size;
        }
    }

    /// Complete a command to the initiator (once), then run its free stage.
    pub fn complete_cmd(
        &mut self,
        id: u64,
        status: u8,
        sense: Vec<u8>,
        mut data_in: Vec<u8>,
        aborted: bool,
        fx: &mut Effects,
    ) {
        let Some(cmd) = self.cmds.get_mut(&id) else { return };
        if cmd.completed {
            return;
        }
        cmd.completed = true;
        cmd.status = status;
        self.live_tags.remove(&(cmd.sess_h, cmd.tag));
        let aborted = aborted || cmd.aborted;
        let (status, sense) = if aborted {
            (sam_status::TASK_ABORTED, Vec::new())
        } else {
            (status, sense)
        };
        if aborted {
            data_in.clear();
        }
        data_in.truncate(cmd.expected_data_in as usize);
        let sess_h = cmd.sess_h;
        let tag = cmd.tag;
        let cm_parent = cmd.cm_parent;
        let opcode = cmd.cdb.first().copied().unwrap_or(0);
        if !aborted && status == sam_status::GOOD {
            let service_action = cmd.cdb.get(1).map_or(0, |b| b & 0x1f);
            self.snoop_block_size(opcode, service_action, &data_in);
        }
        if let Some(ec) = cm_parent {
            // The copy manager's own READ/WRITE: back to its EXTENDED COPY.
            if let Some(s) = self.sessions.get_mut(&sess_h) {
                s.outstanding = s.outstanding.saturating_sub(1);
            }
            self.commands_completed += 1;
            self.free_stage(id, fx);
            self.cm_internal_done(ec, opcode, status, sense, data_in, fx);
            self.remove_detached_sessions(fx);
            return;
        }
        self.cm_forget(id);
        let completion = ScsiCompletion {
            tag,
            status,
            sense,
            data_in,
            aborted,
        };
        if let Some(s) = self.sessions.get_mut(&sess_h) {
            s.outstanding = s.outstanding.saturating_sub(1);
            fx.scsi.push((s.tx.clone(), completion));
        }
        self.commands_completed += 1;
        let mut tm_changed = false;
        for tm in self.tms.values_mut() {
            tm_changed |= tm.affected.remove(&id);
        }
        if tm_changed {
            self.check_tms(fx);
        }
        self.free_stage(id, fx);
        self.remove_detached_sessions(fx);
    }

    /// The free stage (spec §3.6, §3.11): ON_FREE_CMD if on_free is CALL and the user saw the
    /// command, else ON_FREE_SKIPPED and the buffer is released at once.
    fn free_stage(&mut self, id: u64, fx: &mut Effects) {
        let call = self.opt.on_free_cmd_type == abi::on_free_cmd_type::CALL;
        let Some(cmd) = self.cmds.get(&id) else { return };
        let Some(h) = cmd.ucmd else {
            self.cmds.remove(&id);
            return;
        };
        // The kernel's `ucmd->buff_cached`: set for every buffer of a cached command, also one
        // too big for the pool, which comes back by ON_CACHED_MEM_FREE (spec §8.9).
        let buffer_cached = cmd.cached && cmd.sgv.is_some();
        let payload = abi::ScsiOnFreeCmd {
            pbuf: cmd.pbuf,
            resp_data_len: cmd.resp_data_len,
            buffer_cached: buffer_cached as u8,
            aborted: 0,
            status: cmd.status,
            delivery_status: if cmd.aborted {
                abi::delivery_status::ABORTED
            } else {
                abi::delivery_status::SUCCESS
            },
        };
        let Some(u) = self.ucmds.get_mut(&h) else {
            self.cmds.remove(&id);
            return;
        };
        if call && u.seen_by_user {
            let payload = abi::ScsiOnFreeCmd {
                aborted: u.aborted as u8,
                ..payload
            };
            u.set_message(abi::SCST_USER_ON_FREE_CMD, &payload);
            self.queue_ready(h, fx);
        } else {
            u.state = abi::UCMD_STATE_ON_FREE_SKIPPED;
            self.finish_free(id, fx);
        }
    }

    /// End of the free stage: release the buffer (back to the cache; or destroyed, and then
    /// returned to its owner by ON_CACHED_MEM_FREE if it was cached in the kernel's sense, or
    /// with its owner reference dropped), drop the creation reference, forget the command.
    pub fn finish_free(&mut self, id: u64, fx: &mut Effects) {
        let Some(cmd) = self.cmds.remove(&id) else { return };
        if let Some(oid) = cmd.sgv {
            if let Some(destroyed) = self.sgv.release(oid, Instant::now()) {
                if destroyed.return_to_owner {
                    self.evict(
                        vec![Evicted {
                            owner: destroyed.owner,
                            pbuf: destroyed.pbuf,
                            fingerprint: destroyed.fingerprint,
                        }],
                        fx,
                    );
                } else {
                    self.put_ucmd(destroyed.owner);
                }
            }
        }
        if let Some(h) = cmd.ucmd {
            if let Some(u) = self.ucmds.get_mut(&h) {
                u.kind = UcmdKind::Scsi { cmd: None };
            }
            self.put_ucmd(h);
        }
    }

    /// Queue ON_CACHED_MEM_FREE with the OWNER's handle for every evicted buffer (spec §3.6.5).
    pub fn evict(&mut self, evicted: Vec<Evicted>, fx: &mut Effects) -> usize {
        let n = evicted.len();
        for e in evicted {
            let Some(u) = self.ucmds.get_mut(&e.owner) else {
                log::error!(
                    "loopback: evicted buffer {:#x} has no owner ucmd {}",
                    e.pbuf,
                    e.owner
                );
                continue;
            };
            u.set_message(
                abi::SCST_USER_ON_CACHED_MEM_FREE,
                &abi::OnCachedMemFree { pbuf: e.pbuf },
            );
            u.ownership_check = e.fingerprint.map(|expected| Check {
                pbuf: e.pbuf,
                expected,
            });
            u.sent_to_user = false;
            self.queue_ready(e.owner, fx);
        }
        n
    }

    /// Flush both pools (FLUSH_CACHE, teardown).
    pub fn flush_sgv(&mut self, fx: &mut Effects) -> usize {
        let evicted = self.sgv.flush();
        self.evict(evicted, fx)
    }

    /// Queue TASK_MGMT_DONE for every TM whose RECEIVED was replied and whose affected
    /// commands have all finished (spec §4).
    pub fn check_tms(&mut self, fx: &mut Effects) {
        let ready: Vec<u64> = self
            .tms
            .values()
            .filter(|t| t.received_replied && t.affected.is_empty() && !t.done_queued)
            .map(|t| t.id)
            .collect();
        for id in ready {
            let h = self.new_ucmd(UcmdKind::Tm { tm: id });
            let Some(tm) = self.tms.get_mut(&id) else { continue };
            tm.done_queued = true;
            // No `cmd_h_to_abort`: the core clears `mcmd->cmd_to_abort` once the abort is
            // done (scst_targ.c:6089), before the DONE stage builds this message
            // (scst_user.c:2879-2883).
            let payload = abi::Tm {
                sess_h: tm.sess_h,
                fn_: tm.fn_,
                cmd_h_to_abort: 0,
                ..Default::default()
            };
            if let Some(u) = self.ucmds.get_mut(&h) {
                u.set_message(abi::SCST_USER_TASK_MGMT_DONE, &payload);
            }
            self.queue_ready(h, fx);
        }
    }

    /// Finish TM `id` with `result` (TASK_NOT_EXIST becomes SUCCESS, spec §3.4).
    pub fn finish_tm(&mut self, id: u64, result: i32, fx: &mut Effects) {
        if let Some(tm) = self.tms.remove(&id) {
            let result = if result == abi::tm_result::TASK_NOT_EXIST {
                abi::tm_result::SUCCESS
            } else {
                result
            };
            fx.tm.push((tm.tx, TmCompletion { id, result }));
        }
    }

    /// Sessions whose DETACH was requested and whose commands are all done go away.
    fn remove_detached_sessions(&mut self, _fx: &mut Effects) {
        self.retire_detached_sessions();
    }

    /// Drop the sessions whose DETACH was requested and whose commands are all done; their
    /// `sess_h` may be handed out again.
    pub(crate) fn retire_detached_sessions(&mut self) {
        let free = &mut self.free_sess_h;
        self.sessions.retain(|&sess_h, s| {
            let gone = s.detached && s.outstanding == 0;
            if gone {
                free.push(sess_h);
            }
            !gone
        });
    }
}
