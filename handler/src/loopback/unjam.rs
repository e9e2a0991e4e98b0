//! Teardown on the last close of the fd (spec §5.1–§5.3): the unjam table, SGV flushes before
//! and after each pass, and a cleanup loop that ends only when the ucmd hash is empty.

use super::device::CoreWork;
use super::device::Device;
use super::device::DeviceState;
use super::device::Effects;
use super::device::Token;
use super::ownership;
use super::ownership::Check;
use super::sense;
use super::ucmd::UcmdKind;
use crate::abi;

/// Upper bound of cleanup passes; every pass makes progress or the loop stops early.
const MAX_CLEANUP_PASSES: usize = 1_000_000;

/// What one unjam did (spec §5.3 table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum UnjamAction {
    /// PARSE/ALLOC_MEM/EXEC already aborted by TM: completed as aborted.
    Aborted,
    /// Queued-unsent command: BUSY (or TASK SET FULL, `scst_set_busy`).
    Busy,
    /// Sent-unreplied command: ILLEGAL REQUEST 05/25/00 LUN NOT SUPPORTED.
    LunNotSupported,
    /// ON_FREE_CMD processed as if replied.
    OnFree,
    /// ON_CACHED_MEM_FREE processed as if replied.
    CachedMemFree,
    /// TM_RECEIVED: received stage completed.
    TmReceived,
    /// TM_DONE: completed with FAILED.
    TmDone,
    /// ATTACH/DETACH: result -EFAULT.
    Session,
}

/// Counts of what the release of one device did, per unjam action.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CloseReport {
    /// This close was the last reference and ran the release; false for a non-last clone.
    pub released: bool,
    /// Queued-unsent commands completed BUSY/TASK SET FULL.
    pub busy_unsent: usize,
    /// Sent-unreplied commands completed with LUN NOT SUPPORTED.
    pub lun_not_supported: usize,
    /// Commands already aborted by TM, completed as aborted.
    pub aborted: usize,
    /// ON_FREE_CMD processed as if replied.
    pub on_free_as_replied: usize,
    /// ON_CACHED_MEM_FREE processed as if replied.
    pub cached_mem_free_as_replied: usize,
    /// TM_RECEIVED stages completed.
    pub tm_received_completed: usize,
    /// TM_DONE completed with FAILED.
    pub tm_done_failed: usize,
    /// ATTACH/DETACH completed with -EFAULT.
    pub session_efault: usize,
    /// DETACH_SESS queued for attached sessions (then unjammed).
    pub detach_queued: usize,
    /// Cached buffers evicted by the flushes.
    pub buffers_flushed: usize,
    /// BACKGROUND execs whose second reply never came (extra reference dropped).
    pub background_dropped: usize,
    /// Cleanup passes.
    pub passes: usize,
    /// ucmds left in the hash (0 unless cleanup could not make progress: a bug, logged).
    pub remaining_ucmds: usize,
}

impl CloseReport {
    fn count(&mut self, action: UnjamAction) {
        match action {
            UnjamAction::Aborted => self.aborted += 1,
            UnjamAction::Busy => self.busy_unsent += 1,
            UnjamAction::LunNotSupported => self.lun_not_supported += 1,
            UnjamAction::OnFree => self.on_free_as_replied += 1,
            UnjamAction::CachedMemFree => self.cached_mem_free_as_replied += 1,
            UnjamAction::TmReceived => self.tm_received_completed += 1,
            UnjamAction::TmDone => self.tm_done_failed += 1,
            UnjamAction::Session => self.session_efault += 1,
        }
    }
}

impl DeviceState {
    /// `dev_user_unjam_cmd` (spec §5.3): `busy` = queued-unsent (BUSY), else sent-unreplied
    /// (LUN NOT SUPPORTED). SCSI commands are requeued to the core, which completes them on its
    /// next pass; a reply arriving meanwhile is silently ignored (`this_state_unjammed`).
    pub fn unjam(&mut self, h: u32, busy: bool, fx: &mut Effects) -> Option<UnjamAction> {
        let u = self.ucmds.get_mut(&h)?;
        u.jammed = true;
        u.this_state_unjammed = true;
        u.sent_to_user = false;
        let state = u.state;
        let kind = u.kind;
        let cmd = u.scsi_cmd();
        self.unqueue(h);
        match state {
            // EXT_COPY_REMAPPING: the EXTENDED COPY fails the same way (scst_user.c:2600-2627,
            // then `scst_ext_copy_remap_done(NULL)` finds it completed).
            abi::UCMD_STATE_PARSING
            | abi::UCMD_STATE_BUF_ALLOCING
            | abi::UCMD_STATE_EXECING
            | abi::UCMD_STATE_EXT_COPY_REMAPPING => {
                let id = cmd?;
                let c = self.cmds.get(&id)?;
                // `ucmd->aborted` (ON_FREE_CMD's `aborted`) only for a command SCST aborted
                // (SCST_CMD_ABORTED, scst_user.c:2585-2587, 2611-2612); one failed with BUSY or
                // LUN NOT SUPPORTED here is not.
                if c.aborted {
                    if let Some(u) = self.ucmds.get_mut(&h) {
                        u.aborted = true;
                    }
                }
                let sess_h = c.sess_h;
                let (status, sense, action) = if c.aborted {
                    (abi::sam_status::TASK_ABORTED, Vec::new(), UnjamAction::Aborted)
                } else if busy {
                    (self.busy_status(sess_h), Vec::new(), UnjamAction::Busy)
                } else {
                    (
                        abi::sam_status::CHECK_CONDITION,
                        self.sense(sense::LUN_NOT_SUPPORTED),
                        UnjamAction::LunNotSupported,
                    )
                };
                let aborted = action == UnjamAction::Aborted;
                self.active.push_back(CoreWork::Finish {
                    id,
                    status,
                    sense,
                    aborted,
                });
                fx.wake_fetchers = true;
                Some(action)
            }
            abi::UCMD_STATE_ON_FREEING => {
                if let Some(id) = cmd {
                    self.finish_free(id, fx);
                }
                Some(UnjamAction::OnFree)
            }
            abi::UCMD_STATE_ON_CACHE_FREEING => {
                self.put_ucmd(h);
                Some(UnjamAction::CachedMemFree)
            }
            abi::UCMD_STATE_TM_RECEIVED_EXECING => {
                if let UcmdKind::Tm { tm } = kind {
                    if let Some(t) = self.tms.get_mut(&tm) {
                        t.received_replied = true;
                    }
                }
                self.put_ucmd(h);
                self.check_tms(fx);
                Some(UnjamAction::TmReceived)
            }
            abi::UCMD_STATE_TM_DONE_EXECING => {
                if let UcmdKind::Tm { tm } = kind {
                    self.finish_tm(tm, abi::tm_result::FAILED, fx);
                }
                self.put_ucmd(h);
                Some(UnjamAction::TmDone)
            }
            abi::UCMD_STATE_ATTACH_SESS | abi::UCMD_STATE_DETACH_SESS => {
                if let UcmdKind::Attach { sess_h } = kind {
                    self.attach_result(h, sess_h, -libc::EFAULT, fx);
                }
                self.put_ucmd(h);
                Some(UnjamAction::Session)
            }
            _ => None,
        }
    }

    /// One `dev_user_unjam_dev` pass (spec §5.3): unjam every sent ucmd as not busy, run the
    /// core's pending work. Returns the ucmds left in the hash.
    pub fn unjam_sent(&mut self, report: &mut CloseReport, fx: &mut Effects) -> usize {
        let sent: Vec<u32> = {
            let mut v: Vec<u32> = self
                .ucmds
                .values()
                .filter(|u| u.sent_to_user)
                .map(|u| u.h)
                .collect();
            v.sort_unstable();
            v
        };
        for h in sent {
            if let Some(a) = self.unjam(h, false, fx) {
                report.count(a);
            }
        }
        self.run_core_work(fx);
        self.ucmds.len()
    }
}

/// `dev_user_exit_dev` + the cleanup thread (spec §5.2, §5.3), run on the last close.
pub(crate) fn release(dev: &Device, token: &mut Token<'_>) -> CloseReport {
    let mut report = CloseReport {
        released: true,
        ..Default::default()
    };
    dev.with(token, |st, fx| {
        st.released = true;
        st.blocking = false;
        st.suspended = 0;
        fx.wake_all = true;
        // scst_unregister_virtual_device: every LUN goes away (DETACH_SESS per session).
        let mut sessions: Vec<u64> = st.sessions.keys().copied().collect();
        sessions.sort_unstable();
        for sess_h in sessions {
            let h = st.new_ucmd(UcmdKind::Detach { sess_h });
            let payload = detach_payload(st, sess_h);
            if let Some(u) = st.ucmds.get_mut(&h) {
                u.set_message(abi::SCST_USER_DETACH_SESS, &payload);
            }
            st.queue_ready(h, fx);
            if let Some(s) = st.sessions.get_mut(&sess_h) {
                s.detached = true;
            }
            report.detach_queued += 1;
        }
        // A BACKGROUND exec's second reply can no longer come: drop its extra reference.
        let background: Vec<u32> = st.ucmds.values().filter(|u| u.background).map(|u| u.h).collect();
        for h in background {
            if let Some(u) = st.ucmds.get_mut(&h) {
                u.background = false;
            }
            st.put_ucmd(h);
            report.background_dropped += 1;
        }
        report.buffers_flushed += st.flush_sgv(fx);
    });
    // The buffers the flushes give back are checked as a delivery would check them
    // (`ownership.rs`): their ON_CACHED_MEM_FREE is unjammed here, never delivered. With the
    // lock dropped, before this release returns, so before the handler, whose close this is,
    // may unmap them.
    let mut checks: Vec<Check> = Vec::new();
    for pass in 0..MAX_CLEANUP_PASSES {
        report.passes = pass + 1;
        let done = dev.with(token, |st, fx| {
            report.buffers_flushed += st.flush_sgv(fx);
            let left = st.unjam_sent(&mut report, fx);
            report.buffers_flushed += st.flush_sgv(fx);
            if left == 0 && st.ready.is_empty() && st.active.is_empty() {
                return true;
            }
            // Fetch one ready ucmd non-blockingly and unjam it as busy.
            st.run_core_work(fx);
            match st.ready.pop_front() {
                Some(h) => {
                    checks.extend(st.ucmds.get_mut(&h).and_then(|u| u.ownership_check.take()));
                    if let Some(a) = st.unjam(h, true, fx) {
                        report.count(a);
                    }
                    false
                }
                None if st.active.is_empty() && st.ucmds.values().all(|u| !u.sent_to_user) => {
                    // Nothing can make progress any more.
                    let flushed = st.flush_sgv(fx);
                    report.buffers_flushed += flushed;
                    flushed == 0 && st.ready.is_empty()
                }
                None => false,
            }
        });
        if !checks.is_empty() {
            let found = ownership::verify(&dev.memory, &dev.name, checks.iter().copied());
            dev.memory.count_ownership_violations(found);
            checks.clear();
        }
        if done {
            break;
        }
    }
    dev.with(token, |st, _| {
        report.remaining_ucmds = st.ucmds.len();
        if report.remaining_ucmds != 0 {
            let dump: Vec<String> = st
                .ucmds
                .values()
                .map(|u| format!("{}:{}:ref{}", u.h, super::ucmd::state_name(u.state), u.refs))
                .collect();
            log::error!(
                "loopback {}: cleanup left {} ucmds in the hash: {}",
                dev.name,
                report.remaining_ucmds,
                dump.join(" ")
            );
        }
        st.cmds.clear();
        st.sessions.clear();
    });
    log::info!("loopback {}: released: {report:?}", dev.name);
    report
}

/// The DETACH_SESS payload for an attached session.
pub(crate) fn detach_payload(st: &DeviceState, sess_h: u64) -> abi::Sess {
    let (lun, rd_only) = st
        .sessions
        .get(&sess_h)
        .map_or((0, false), |s| (s.lun, s.rd_only));
    let mut sess: abi::Sess = zerocopy::FromZeros::new_zeroed();
    sess.sess_h = sess_h;
    sess.lun = lun;
    sess.rd_only = rd_only as u8;
    sess
}
