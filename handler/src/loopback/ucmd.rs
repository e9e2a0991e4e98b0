//! The kernel's per-message object, the "ucmd" (spec §3.1, §3.11, §5.4): a u32 handle, the
//! state its current message belongs to, the async flags guarded by the device lock
//! (`sent_to_user`, `seen_by_user`, `jammed`, `this_state_unjammed`) and a reference count.
//! A ucmd leaves the hash only when its count reaches 0.

use super::ownership::Check;
use crate::abi;
use crate::abi::GetCmd;

/// What a ucmd stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum UcmdKind {
    /// A SCSI command (`cmd` is the core's command id while the command lives), later possibly
    /// the zombie owner of a cached SGV buffer.
    Scsi { cmd: Option<u64> },
    /// ATTACH_SESS for `sess_h`.
    Attach { sess_h: u64 },
    /// DETACH_SESS for `sess_h`.
    Detach { sess_h: u64 },
    /// TASK_MGMT_RECEIVED or TASK_MGMT_DONE of TM `tm`.
    Tm { tm: u64 },
    /// Owner of a PREALLOC_BUFFER buffer.
    Prealloc,
}

/// One ucmd.
#[derive(Clone, Debug)]
pub(crate) struct Ucmd {
    /// Handle (0 is valid).
    pub h: u32,
    /// Internal state (`abi::UCMD_STATE_*`), the `_IOC_NR` of the current subcode.
    pub state: u8,
    /// The persistent `user_cmd` area: each message writes its payload over the previous
    /// one, so bytes a message does not set are stale bytes of an earlier message (spec §3.5).
    pub msg: GetCmd,
    /// Delivered and not yet replied.
    pub sent_to_user: bool,
    /// Ever delivered (decides ON_FREE_CMD, spec §3.6).
    pub seen_by_user: bool,
    /// Failed by the kernel (unjam).
    pub jammed: bool,
    /// The current state was unjammed: a reply to it is silently ignored (spec §3.4).
    pub this_state_unjammed: bool,
    /// The kernel failed or aborted the command itself (ON_FREE_CMD.aborted, spec §4).
    pub aborted: bool,
    /// BACKGROUND exec: a second COMPLETED reply is expected (spec §3.5).
    pub background: bool,
    /// A reply to this ucmd is being processed outside the device lock.
    pub in_reply: bool,
    /// Reference count (creation, buffer ownership, background extra).
    pub refs: u32,
    /// What it stands for.
    pub kind: UcmdKind,
    /// A buffer to check at this ucmd's next delivery (a cache hit's EXEC, ON_CACHED_MEM_FREE)
    /// before the handler gets it back (`ownership.rs`).
    pub ownership_check: Option<Check>,
}

impl Ucmd {
    /// A fresh ucmd in state NEW with the creation reference.
    pub fn new(h: u32, kind: UcmdKind) -> Self {
        let mut msg = GetCmd::zeroed();
        msg.cmd_h = h;
        Self {
            h,
            state: abi::UCMD_STATE_NEW,
            msg,
            sent_to_user: false,
            seen_by_user: false,
            jammed: false,
            this_state_unjammed: false,
            aborted: false,
            background: false,
            in_reply: false,
            refs: 1,
            kind,
            ownership_check: None,
        }
    }

    /// Move to the state of `subcode` and write its payload into the persistent area.
    pub fn set_message<T: zerocopy::IntoBytes + zerocopy::Immutable>(&mut self, subcode: u32, payload: &T) {
        self.state = abi::subcode_state(subcode);
        self.msg.subcode = subcode;
        self.msg.write_payload(payload);
        self.this_state_unjammed = false;
    }

    /// The SCSI command this ucmd is working for, if any.
    pub fn scsi_cmd(&self) -> Option<u64> {
        match self.kind {
            UcmdKind::Scsi { cmd } => cmd,
            _ => None,
        }
    }

    /// Management ucmds (ATTACH, DETACH, TM_*) queue FIFO at the front (spec §3.1).
    pub fn is_mgmt(&self) -> bool {
        matches!(
            self.state,
            abi::UCMD_STATE_ATTACH_SESS
                | abi::UCMD_STATE_DETACH_SESS
                | abi::UCMD_STATE_TM_RECEIVED_EXECING
                | abi::UCMD_STATE_TM_DONE_EXECING
        )
    }
}

/// Name of a ucmd state, as the sysfs `commands` file prints it.
pub(crate) fn state_name(state: u8) -> &'static str {
    match state {
        abi::UCMD_STATE_NEW => "NEW",
        abi::UCMD_STATE_PARSING => "PARSING",
        abi::UCMD_STATE_BUF_ALLOCING => "BUF_ALLOCING",
        abi::UCMD_STATE_EXECING => "EXECING",
        abi::UCMD_STATE_ON_FREEING => "ON_FREEING",
        abi::UCMD_STATE_ON_CACHE_FREEING => "ON_CACHE_FREEING",
        abi::UCMD_STATE_EXT_COPY_REMAPPING => "EXT_COPY_REMAPPING",
        abi::UCMD_STATE_ON_FREE_SKIPPED => "ON_FREE_SKIPPED",
        abi::UCMD_STATE_TM_RECEIVED_EXECING => "TM_RECEIVED_EXECING",
        abi::UCMD_STATE_TM_DONE_EXECING => "TM_DONE_EXECING",
        abi::UCMD_STATE_ATTACH_SESS => "ATTACH_SESS",
        abi::UCMD_STATE_DETACH_SESS => "DETACH_SESS",
        _ => "UNKNOWN",
    }
}
