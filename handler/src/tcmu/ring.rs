//! The command-ring consumer: reads what the kernel posts between our `cmd_tail` and its
//! `cmd_head`, hands out commands, writes their responses and moves `cmd_tail` over the entries
//! answered (`include/uapi/linux/target_core_user.h`, "Ring Design"; tcmu-design.rst, "The
//! Command Ring").
//!
//! # The protocol
//! The kernel writes an entry at `cmd_head`, then advances `cmd_head` by the entry's length
//! modulo `cmdr_size`. An entry never wraps: when the next one does not fit before the ring's
//! end the kernel first posts a PAD entry that fills the ring to its end. User space writes a
//! response over an entry's request (`rsp` shares the union with `req`) and advances
//! `cmd_tail` past it. The kernel reads completions only up to `cmd_tail`
//! (`tcmu_handle_completions`: from where it last cleaned to `cmd_tail`, PAD and TMR entries
//! skipped, each CMD entry's `hdr.cmd_id` looked up in `udev->commands` and that command
//! completed with the entry's response, each entry stepped over by its own length; an unknown
//! `cmd_id` breaks the device). Commands here may finish in any order; how their responses
//! reach the ring depends on the kernel:
//!
//! - With [`abi::mailbox_flags::CAP_OOOC`] (every kernel this module follows sets it), out of
//!   order: a finished command's response is written at once into the next CMD entry at
//!   `cmd_tail`, whichever command that entry was posted for, with the entry's `cmd_id`
//!   rewritten to the finished command's and its `len_op` kept; PAD, TMR and unknown-opcode
//!   entries are passed over as they come (tcmu-runner's `tcmulib_command_complete` does the
//!   same). Without it one stuck command (a store whose abort does not finish) would hold every
//!   later response back until the kernel's `cmd_time_out` failed them all, READs and WRITEs
//!   long answered GOOD included (`tcmu_check_expired_ring_cmd`). A command whose entry has
//!   been overwritten so runs on from the copy taken when it was read ([`TcmuCommand`]: its
//!   `cmd_id`, CDB and checked iovecs; nothing of it is read from the entry again), and its own
//!   answer goes into a later CMD entry: the answers waiting never outnumber the CMD entries
//!   ahead of `cmd_tail`, since each command not yet answered in the ring has left one there.
//! - Without it (a mailbox that does not say so), in order: `cmd_tail` moves only over a prefix
//!   of finished entries (PAD, TMR and unknown-opcode entries are finished as soon as they are
//!   read), and a finished command's response is held in memory and written into its own entry
//!   only when `cmd_tail` passes it.
//!
//! Either way no entry beyond `cmd_tail` is modified before `cmd_tail` passes it, so the
//! entries ahead of it hold their requests intact (but for the stretch a retirement had
//! answered and not yet published with its one `cmd_tail` store, docs/tcmu.md, "The ring's
//! rules"); out of order, the commands whose entries were passed before they finished are
//! known only to this ring and the kernel, which is why an adopted ring is reset, never
//! resumed (docs/tcmu.md, "Timeouts and a dead handler").
//!
//! # Trust nothing
//! The kernel is the peer, but a kernel bug (or a stale mapping after a ring reset) must not
//! become memory unsafety or a wrong command here. Every value read from the region is checked
//! before it is used as an offset: the mailbox layout when attaching ([`LayoutError`]);
//! `cmd_head` and every entry's length against the ring, and the mailbox's `cmd_tail` against
//! ours before reading and before retiring, since a kernel ring reset (`tcmu_reset_ring`) sets
//! it to 0 (a [`RingFault`], after which the ring is broken: the entry stream cannot be
//! resynchronised, so no later entry is read, and after a reset nothing more is written); and
//! a CMD entry's CDB and iovecs against the entry and the data area (an [`EntryFault`]: the entry's
//! length is sound, so the ring answers it with CHECK CONDITION, HARDWARE ERROR / INTERNAL
//! TARGET FAILURE, and goes on). tcmu-runner's `libtcmu.c` checks none of these; it also once
//! read `cmd_head` without an acquire load (its issue 688, crashes on aarch64) and, when it
//! meets an unknown CDB length, drops the command without completing it, which hangs it.
//! Here a zero-length entry is a fault instead of an endless loop, and every command read is
//! either handed out or answered.
//!
//! # Not here
//! Waiting and kicking belong to the UIO device ([`super::uio`]); what a command does belongs to
//! the executor (not built yet, see docs/tcmu.md).

use super::abi;
use super::abi::CmdEntryReq;
use super::abi::EntryHdr;
use super::abi::Iovec;
use super::abi::Mailbox;
use super::abi::TmrEntry;
use super::region::Region;
use crate::abi::sam_status;
use scst_accel_dma::PageBuffer;
use std::collections::HashMap;
use std::collections::HashSet;
use std::collections::VecDeque;
use std::mem::size_of;

/// Why a mapping is not a TCMU region this code can serve (checked once, at attach).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// The mapping cannot even hold the mailbox.
    #[error("mapping of {len} bytes is smaller than the mailbox")]
    TooSmall {
        /// Mapping length.
        len: usize,
    },
    /// A mailbox version this code does not know.
    #[error("mailbox version {found}, expected {expected}", expected = abi::TCMU_MAILBOX_VERSION)]
    Version {
        /// What the mailbox says.
        found: u16,
    },
    /// The command ring overlaps the mailbox, is misaligned, empty, or ends past the mapping.
    #[error("command ring at offset {cmdr_off} of {cmdr_size} bytes does not fit a {len} byte mapping")]
    Ring {
        /// `cmdr_off`.
        cmdr_off: u32,
        /// `cmdr_size`.
        cmdr_size: u32,
        /// Mapping length.
        len: usize,
    },
    /// `cmd_tail` (left by us or a previous handler) is not an 8-aligned offset in the ring.
    #[error("cmd_tail {tail} is not an entry offset in a {cmdr_size} byte ring")]
    Tail {
        /// `cmd_tail`.
        tail: u32,
        /// `cmdr_size`.
        cmdr_size: u32,
    },
}

/// A fault in the entry stream itself; the ring reads nothing more after one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingFault {
    /// `cmd_head` is outside the ring or not 8-aligned.
    #[error("cmd_head {head} is not an entry offset in a {cmdr_size} byte ring")]
    Head {
        /// `cmd_head`.
        head: u32,
        /// `cmdr_size`.
        cmdr_size: u32,
    },
    /// An entry of length 0 (would never advance).
    #[error("entry at ring offset {at} has length 0")]
    ZeroLength {
        /// Ring offset of the entry.
        at: u32,
    },
    /// An entry runs past the end of the ring (entries never wrap; PAD fills the end).
    #[error("entry at ring offset {at} of {len} bytes runs past the ring's end")]
    CrossesRingEnd {
        /// Ring offset.
        at: u32,
        /// Entry length.
        len: u32,
    },
    /// An entry runs past `cmd_head` (into bytes the kernel has not published).
    #[error("entry at ring offset {at} of {len} bytes runs past cmd_head {head}")]
    BeyondHead {
        /// Ring offset.
        at: u32,
        /// Entry length.
        len: u32,
        /// `cmd_head` when read.
        head: u32,
    },
    /// An entry that would make the bytes read and not yet retired (from our `cmd_tail` to the
    /// entry's end) more than `cmdr_size - 1`: the kernel never lets `cmd_head` catch up with
    /// the tail it has seen (`spc_free` in target_core_user.c keeps one byte free), so such a
    /// `cmd_head` is corrupt or forged, and reading on would lap our own unretired entries. A
    /// backstop: with `cmd_head` kept in the window from our read position to our tail
    /// ([`RingFault::HeadBehind`]) and every entry ending at or before it
    /// ([`RingFault::BeyondHead`]), those two fault such an entry first.
    #[error("entry at ring offset {at} of {len} bytes overruns the {unretired} bytes not yet retired")]
    Lapped {
        /// Ring offset.
        at: u32,
        /// Entry length.
        len: u32,
        /// Bytes from our `cmd_tail` to the entry.
        unretired: u32,
    },
    /// A CMD entry too short to hold the response that must be written over it.
    #[error("command entry at ring offset {at} has {len} bytes, less than a tcmu_cmd_entry")]
    CmdTooShort {
        /// Ring offset.
        at: u32,
        /// Entry length.
        len: u32,
    },
    /// `cmd_tail` in the mailbox is not the one we stored. Only we write it, but for the
    /// kernel's `tcmu_reset_ring` (`action/reset_ring`), which sets `cmd_head` and `cmd_tail`
    /// to 0, forgets every command and frees their data blocks: every entry and offset we hold
    /// is stale, and an answer written now would land in entries the kernel reuses.
    #[error("cmd_tail is {found}, not the {ours} we stored: the kernel reset the ring")]
    TailMoved {
        /// The `cmd_tail` we stored last.
        ours: u32,
        /// The `cmd_tail` in the mailbox.
        found: u32,
    },
    /// `cmd_head` behind our read position (not in the window from it forward round to our
    /// `cmd_tail`): the kernel posts only ahead of what it posted before, so it reset the ring
    /// (`tcmu_reset_ring` sets `cmd_head` to 0), which a `cmd_tail` of 0 does not show.
    #[error(
        "cmd_head {head} is behind our read position {next} (cmd_tail {tail}): the kernel reset the ring"
    )]
    HeadBehind {
        /// `cmd_head` when read.
        head: u32,
        /// Our read position.
        next: u32,
        /// Our `cmd_tail`.
        tail: u32,
    },
    /// An entry read and not yet retired no longer holds the header (length, opcode,
    /// `cmd_id`) we read: only the kernel writes it, and only after a ring reset
    /// (`tcmu_reset_ring`, then new entries from offset 0), so our answer would complete
    /// another command.
    #[error("entry at ring offset {at} holds {found:?}, not the {read:?} read: the kernel reset the ring")]
    EntryChanged {
        /// Ring offset.
        at: u32,
        /// The header as read.
        read: EntryHdr,
        /// The header now (its `uflags` not compared).
        found: EntryHdr,
    },
    /// A CMD entry whose `cmd_id` names a command the kernel has not reaped yet (read, and its
    /// answer not yet passed by `cmd_tail`): the kernel's completion lookup would be ambiguous.
    #[error("command entry at ring offset {at} reuses cmd_id {cmd_id} of a command not yet reaped")]
    DuplicateCmdId {
        /// Ring offset.
        at: u32,
        /// The id.
        cmd_id: u16,
    },
}

/// A fault inside one entry whose length is sound: the entry is answered (CMD) or skipped
/// (TMR), and the ring goes on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryFault {
    /// `cdb_off` does not point at a whole CDB after the iovec array inside the entry.
    #[error("CDB at offset {cdb_off} is not inside its entry")]
    CdbOutsideEntry {
        /// `req.cdb_off`.
        cdb_off: u64,
    },
    /// The iovec array (`iov_cnt + iov_bidi_cnt + iov_dif_cnt` elements) overruns the entry.
    #[error("{iovs} iovecs do not fit in the entry")]
    IovArrayOutsideEntry {
        /// Total iovec count.
        iovs: u64,
    },
    /// An iovec is not inside the data area.
    #[error("iovec {index} ({base}+{len}) is not inside the data area")]
    IovOutsideData {
        /// Index in the iovec array.
        index: u64,
        /// `iov_base`.
        base: u64,
        /// `iov_len`.
        len: u64,
    },
    /// A TMR entry shorter than its fixed part.
    #[error("task management entry of {len} bytes is shorter than tcmu_tmr_entry")]
    TmrTooShort {
        /// Entry length.
        len: u32,
    },
    /// A TMR entry's id list overruns the entry.
    #[error("task management entry lists {cmd_cnt} ids, more than fit in the entry")]
    TmrIdsOutsideEntry {
        /// `cmd_cnt`.
        cmd_cnt: u32,
    },
}

/// What a ring call can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// The entry stream is broken (now or earlier); nothing more is read. The kernel will time
    /// out what is outstanding; the device must be reset or removed.
    #[error("command ring is broken")]
    Broken(#[source] RingFault),
    /// One entry was malformed and has been answered (a CMD: CHECK CONDITION, HARDWARE ERROR)
    /// or skipped (TMR); the ring goes on.
    #[error("entry at ring offset {at} (cmd_id {cmd_id}) refused")]
    Refused {
        /// Ring offset.
        at: u32,
        /// The entry's `cmd_id`.
        cmd_id: u16,
        /// What was wrong.
        #[source]
        fault: EntryFault,
    },
    /// A completion for a command this ring has not handed out or already completed.
    #[error("completion of cmd_id {cmd_id} (sequence {seq}) that is not outstanding")]
    NotOutstanding {
        /// The command's id.
        cmd_id: u16,
        /// The command's sequence number.
        seq: u64,
    },
}

impl RingError {
    /// Whether the ring can still be used.
    pub fn is_fatal(&self) -> bool {
        matches!(self, RingError::Broken(_))
    }
}

/// A byte range of the data area, checked against the region when the command was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataSegment {
    /// Offset from the start of the region.
    pub off: usize,
    /// Length in bytes.
    pub len: usize,
}

/// A SCSI command read from the ring: a copy of its CDB and of its checked iovecs. It must be
/// given back to [`Ring::complete`] exactly once (it is not `Clone`).
#[derive(Debug, PartialEq, Eq)]
pub struct TcmuCommand {
    seq: u64,
    at: u32,
    cmd_id: u16,
    cdb: Box<[u8]>,
    data: Vec<DataSegment>,
    bidi_in: Vec<DataSegment>,
}

impl TcmuCommand {
    /// The kernel's id of the command.
    pub fn cmd_id(&self) -> u16 {
        self.cmd_id
    }

    /// The CDB, exactly as long as its opcode says.
    pub fn cdb(&self) -> &[u8] {
        &self.cdb
    }

    /// The data buffer: Data-Out of a write, Data-In of a read, Data-Out of a BIDI command.
    pub fn data(&self) -> &[DataSegment] {
        &self.data
    }

    /// The Data-In buffer of a BIDI command (empty otherwise).
    pub fn bidi_in(&self) -> &[DataSegment] {
        &self.bidi_in
    }

    /// Bytes in [`Self::data`].
    pub fn data_len(&self) -> usize {
        self.data.iter().map(|s| s.len).sum()
    }

    /// Ring offset of the entry (for logs and diagnostics).
    pub fn ring_offset(&self) -> u32 {
        self.at
    }
}

/// A task management notification (`TCMU_OP_TMR`). It needs no response: the kernel has
/// already decided; the ids name the commands in the ring it aborts, which may still be
/// completed (their responses are ignored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TmrNotice {
    /// [`abi::tmr_type`].
    pub tmr_type: u8,
    /// The aborted commands' ids.
    pub cmd_ids: Vec<u16>,
}

/// What [`Ring::next_entry`] hands out.
#[derive(Debug, PartialEq, Eq)]
pub enum RingEntry {
    /// A SCSI command; complete it with [`Ring::complete`].
    Command(TcmuCommand),
    /// A task management notification; already finished in the ring.
    TaskManagement(TmrNotice),
}

/// A command's response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response<'a> {
    /// SAM status.
    pub status: u8,
    /// Sense data (the first [`abi::TCMU_SENSE_BUFFERSIZE`] bytes are sent), read by the kernel
    /// with CHECK CONDITION.
    pub sense: &'a [u8],
    /// Bytes actually read into Data-In, when fewer than the buffer (honoured only with
    /// `TCMU_MAILBOX_FLAG_CAP_READ_LEN`).
    pub read_len: Option<u32>,
}

impl Response<'static> {
    /// GOOD, no sense.
    pub const GOOD: Response<'static> = Response {
        status: sam_status::GOOD,
        sense: &[],
        read_len: None,
    };
}

/// Fixed-format sense for HARDWARE ERROR / INTERNAL TARGET FAILURE (ASC 0x44): the answer to a
/// command whose entry could not be read.
const INTERNAL_TARGET_FAILURE: [u8; 18] = [0x70, 0, 0x04, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x44, 0, 0, 0, 0, 0];

/// A snapshot of the ring's indices, for diagnostics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingState {
    /// Next ring offset to read.
    pub next: u32,
    /// `cmd_tail` as last stored.
    pub tail: u32,
    /// Entries read and not yet passed by `cmd_tail`.
    pub unretired: usize,
    /// Commands handed out and not completed.
    pub outstanding: usize,
}

/// The checked request of a CMD entry.
struct Parsed {
    cdb: Box<[u8]>,
    data: Vec<DataSegment>,
    bidi_in: Vec<DataSegment>,
}

/// What is written into an entry when `cmd_tail` passes it: its uflags (exactly these), and the
/// response of a CMD entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Answer {
    uflags: u8,
    rsp: Option<abi::CmdRsp>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum SlotState {
    /// Handed out, not completed.
    Outstanding(u16),
    /// Finished; its answer (none for PAD and TMR) waits for `cmd_tail` to reach it. Out of
    /// order a CMD entry's answer goes to [`Ring::ready`] instead, and its slot says
    /// `Finished(None)`: the entry will carry whichever answer is next when `cmd_tail` gets
    /// there.
    Finished(Option<Box<Answer>>),
}

#[derive(Debug, Clone)]
struct Slot {
    at: u32,
    /// The header as read (its `entry_len` is the slot's length), compared with the ring's before the answer is written.
    hdr: EntryHdr,
    /// The `cmd_id` of a CMD entry.
    cmd_id: Option<u16>,
    state: SlotState,
}

/// The consumer side of one TCMU command ring.
#[derive(Debug)]
pub struct Ring {
    region: Region,
    flags: u16,
    cmdr_off: usize,
    cmdr_size: u32,
    data_off: usize,
    next: u32,
    tail: u32,
    slots: VecDeque<Slot>,
    /// Sequence number of `slots[0]`; a command's `seq` indexes `slots` from it.
    front_seq: u64,
    /// `cmd_id`s of the commands read whose answer `cmd_tail` has not yet passed (in order: of
    /// the CMD entries not yet passed): the kernel does not reuse one before it has reaped its
    /// completion (`tcmu_handle_completions` erases it from `udev->commands`).
    ids_in_ring: HashSet<u16>,
    /// Commands handed out and not completed.
    outstanding: usize,
    broken: Option<RingFault>,
    tail_moved: bool,
    /// Whether the kernel takes completions out of order ([`abi::mailbox_flags::CAP_OOOC`]).
    out_of_order: bool,
    /// Out of order: the answers of finished commands (and of CMD entries refused when read),
    /// with their `cmd_id`s, in the order they finished, each waiting for the next CMD entry
    /// `cmd_tail` passes. There is always one: every command read and not yet answered in the
    /// ring has either its own entry still ahead of `cmd_tail` or an entry of one answered
    /// before it, so the answers waiting never outnumber the CMD entries ahead.
    ready: VecDeque<(u16, Answer)>,
    /// Out of order: the commands handed out and not completed whose entry `cmd_tail` has
    /// passed (it carried another command's answer), by sequence number, with their `cmd_id`:
    /// the kernel still waits for them, and only this table knows them now.
    displaced: HashMap<u64, u16>,
    /// How often [`Self::data_fault`] looked at the ring: tests count the looks per command.
    #[cfg(test)]
    data_checks: std::sync::atomic::AtomicUsize,
}

impl Ring {
    /// Check the mailbox of `region` and start reading at its `cmd_tail` (a restarted handler
    /// resumes where the previous one stopped; entries it had read and not answered are read
    /// again, since `cmd_tail` never passed them, but out of order a command whose entry
    /// carried another's answer is not in the ring any more: docs/tcmu.md, "Timeouts and a
    /// dead handler", why an adopted ring is reset instead).
    ///
    /// # Errors
    /// [`LayoutError`] when the mailbox does not describe a ring inside the region.
    pub fn attach(region: Region) -> Result<Self, LayoutError> {
        let len = region.len();
        if len < size_of::<Mailbox>() {
            return Err(LayoutError::TooSmall { len });
        }
        // The fields before `cmd_head` only: the two indices are touched only as `u32` atomics
        // (a byte copy of `cmd_head` racing the kernel's store of it, the simulated kernel's
        // `AtomicU32` store in tests, would be a mixed-size race).
        let mut header = [0u8; abi::MB_CMD_HEAD];
        region.read(0, &mut header);
        let u16_at = |at: usize| u16::from_ne_bytes([header[at], header[at + 1]]);
        let u32_at =
            |at: usize| u32::from_ne_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]]);
        let version = u16_at(std::mem::offset_of!(Mailbox, version));
        let flags = u16_at(abi::MB_FLAGS);
        if version != abi::TCMU_MAILBOX_VERSION {
            return Err(LayoutError::Version { found: version });
        }
        let cmdr_off = u32_at(std::mem::offset_of!(Mailbox, cmdr_off));
        let cmdr_size = u32_at(std::mem::offset_of!(Mailbox, cmdr_size));
        let ring_end = u64::from(cmdr_off) + u64::from(cmdr_size);
        if (cmdr_off as usize) < size_of::<Mailbox>()
            || !cmdr_off.is_multiple_of(abi::TCMU_OP_ALIGN_SIZE)
            || cmdr_size == 0
            || !cmdr_size.is_multiple_of(abi::TCMU_OP_ALIGN_SIZE)
            || ring_end > len as u64
        {
            return Err(LayoutError::Ring {
                cmdr_off,
                cmdr_size,
                len,
            });
        }
        let tail = region.load_u32_acquire(abi::MB_CMD_TAIL);
        if tail >= cmdr_size || !tail.is_multiple_of(abi::TCMU_OP_ALIGN_SIZE) {
            return Err(LayoutError::Tail { tail, cmdr_size });
        }
        log::debug!(
            "tcmu ring attached: flags {:#x}, ring {cmdr_off}+{cmdr_size}, data {ring_end}..{len}, tail {tail}",
            flags
        );
        Ok(Self {
            region,
            flags,
            cmdr_off: cmdr_off as usize,
            cmdr_size,
            data_off: ring_end as usize,
            next: tail,
            tail,
            slots: VecDeque::new(),
            front_seq: 0,
            ids_in_ring: HashSet::new(),
            outstanding: 0,
            broken: None,
            tail_moved: false,
            out_of_order: flags & abi::mailbox_flags::CAP_OOOC != 0,
            ready: VecDeque::new(),
            displaced: HashMap::new(),
            #[cfg(test)]
            data_checks: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// The kernel's capability flags ([`abi::mailbox_flags`]).
    pub fn flags(&self) -> u16 {
        self.flags
    }

    /// The region, for data transfers the caller does itself.
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// Indices and counts.
    pub fn state(&self) -> RingState {
        RingState {
            next: self.next,
            tail: self.tail,
            unretired: self.slots.len(),
            outstanding: self.outstanding,
        }
    }

    /// Whether `cmd_tail` moved since the last call: the kernel should then be kicked (a 4-byte
    /// write to the UIO fd) to reap completions and free ring space.
    pub fn take_kick(&mut self) -> bool {
        std::mem::take(&mut self.tail_moved)
    }

    /// The next command or notification the kernel posted, or `None` when the ring is caught up
    /// with `cmd_head`. PAD and unknown-opcode entries are consumed on the way.
    ///
    /// # Errors
    /// [`RingError::Broken`] after a fault in the entry stream (then on every call);
    /// [`RingError::Refused`] for one malformed entry, already answered: call again.
    pub fn next_entry(&mut self) -> Result<Option<RingEntry>, RingError> {
        if let Some(fault) = &self.broken {
            return Err(RingError::Broken(fault.clone()));
        }
        self.check_tail()?;
        let entry = self.read_entry();
        if let Err(RingError::Broken(fault)) = &entry {
            self.fail(fault.clone());
        }
        self.retire()?;
        entry
    }

    /// The mailbox's `cmd_tail` must be ours ([`RingFault::TailMoved`]: else the kernel reset
    /// the ring); one load of the line `retire` stores to. A reset while our `cmd_tail` was 0
    /// is not seen here.
    fn check_tail(&mut self) -> Result<(), RingError> {
        match self.tail_fault() {
            Some(fault) => Err(self.fail(fault)),
            None => Ok(()),
        }
    }

    /// [`RingFault::TailMoved`] if the mailbox's `cmd_tail` is not the one we stored (one
    /// acquire load), for [`Self::check_tail`] and [`Self::data_fault`].
    fn tail_fault(&self) -> Option<RingFault> {
        let found = self.region.load_u32_acquire(abi::MB_CMD_TAIL);
        (found != self.tail).then_some(RingFault::TailMoved {
            ours: self.tail,
            found,
        })
    }

    /// The slot of `cmd` (by its sequence number, and at its ring offset), if it is still in
    /// the table; for [`Self::complete`] and [`Self::data_fault`].
    fn slot_index(&self, cmd: &TcmuCommand) -> Option<usize> {
        let index = usize::try_from(cmd.seq.checked_sub(self.front_seq)?).ok()?;
        self.slots
            .get(index)
            .filter(|slot| slot.at == cmd.at)
            .map(|_| index)
    }

    /// [`RingFault::EntryChanged`] if `slot`'s entry no longer holds the header it was read
    /// with (length, opcode, `cmd_id`): the kernel reset the ring and posted anew there. For
    /// [`Self::retire`] and [`Self::data_fault`].
    fn entry_fault(&self, slot: &Slot) -> Option<RingFault> {
        let found: EntryHdr = self.region.read_obj(self.entry_off(slot.at));
        let same = found.len_op == slot.hdr.len_op && found.cmd_id == slot.hdr.cmd_id;
        (!same).then_some(RingFault::EntryChanged {
            at: slot.at,
            read: slot.hdr,
            found,
        })
    }

    /// The ring is broken by `fault` (the first one is kept and logged).
    fn fail(&mut self, fault: RingFault) -> RingError {
        if self.broken.is_none() {
            log::error!("tcmu ring broken: {fault}");
            self.broken = Some(fault.clone());
        }
        RingError::Broken(fault)
    }

    /// `cmd_head`, acquire-loaded and checked: an entry offset in the ring, and in the window
    /// from our read position forward round to our `cmd_tail` (the kernel's free space ends at
    /// the tail it has seen, which is never past ours). Anything behind the read position is a
    /// ring reset ([`RingFault::HeadBehind`]).
    fn load_head(&self) -> Result<u32, RingFault> {
        let head = self.region.load_u32_acquire(abi::MB_CMD_HEAD);
        if head >= self.cmdr_size || !head.is_multiple_of(abi::TCMU_OP_ALIGN_SIZE) {
            return Err(RingFault::Head {
                head,
                cmdr_size: self.cmdr_size,
            });
        }
        if self.past_tail(head) < self.past_tail(self.next) {
            return Err(RingFault::HeadBehind {
                head,
                next: self.next,
                tail: self.tail,
            });
        }
        Ok(head)
    }

    fn read_entry(&mut self) -> Result<Option<RingEntry>, RingError> {
        loop {
            let head = self.load_head().map_err(RingError::Broken)?;
            if self.next == head {
                return Ok(None);
            }
            // A reset while our cmd_tail was 0 leaves it 0, and once the kernel has posted up to
            // or past our read position `load_head` does not see it either: reading on would
            // take its new stream from the middle (one of its entries, or bytes inside one read
            // as a header), its first new commands never read. Its first new entry lands at 0,
            // our cmd_tail, where our oldest entry not retired is: one header read shows it.
            if let Some(fault) = self.slots.front().and_then(|slot| self.entry_fault(slot)) {
                return Err(RingError::Broken(fault));
            }
            let at = self.next;
            let hdr: EntryHdr = self.region.read_obj(self.entry_off(at));
            let len = hdr.entry_len();
            self.check_extent(at, len, head)?;
            match hdr.op() {
                abi::opcode::PAD => self.finish_unanswered(at, hdr),
                abi::opcode::CMD => return self.read_command(at, hdr).map(Some),
                abi::opcode::TMR if self.flags & abi::mailbox_flags::CAP_TMR != 0 => {
                    return self.read_tmr(at, hdr).map(Some);
                }
                op => {
                    // tcmu-design.rst: flag an opcode we do not handle and go on.
                    log::warn!("tcmu entry at {at}: unknown opcode {op}, flagged UNKNOWN_OP");
                    let answer = Answer {
                        uflags: abi::uflags::UNKNOWN_OP,
                        rsp: None,
                    };
                    self.push_slot(at, hdr, None, SlotState::Finished(Some(Box::new(answer))));
                }
            }
        }
    }

    /// Offset in the region of the entry at ring offset `at` (< `cmdr_size`, so no overflow:
    /// `cmdr_off + cmdr_size` fits the region, checked at attach).
    fn entry_off(&self, at: u32) -> usize {
        self.cmdr_off + at as usize
    }

    /// Ring bytes from our `cmd_tail` forward to `at` (the bytes read and not retired when
    /// `at` is our read position: never all of the ring, [`RingFault::Lapped`]).
    fn past_tail(&self, at: u32) -> u32 {
        if at >= self.tail {
            at - self.tail
        } else {
            self.cmdr_size - self.tail + at
        }
    }

    /// The entry at `at` of `len` bytes must be non-empty, inside the ring, published, and
    /// leave the unretired bytes short of the whole ring.
    fn check_extent(&self, at: u32, len: u32, head: u32) -> Result<(), RingError> {
        if len == 0 {
            return Err(RingError::Broken(RingFault::ZeroLength { at }));
        }
        if u64::from(at) + u64::from(len) > u64::from(self.cmdr_size) {
            return Err(RingError::Broken(RingFault::CrossesRingEnd { at, len }));
        }
        // The kernel posts an entry only when it fits the free space it computes from the tail
        // it has seen, minus one byte (`is_ring_space`, `spc_free`): entries not retired never
        // fill the ring. Without this a forged `cmd_head` walking round and round would be
        // read as new entries over our own unretired ones, and the slot table would grow
        // without bound. (`load_head` keeps `cmd_head` short of our tail, which bounds the
        // entries before this check sees them; this states the invariant where the slot table
        // grows, so it holds even if the window check changes.)
        let unretired = self.past_tail(at);
        if u64::from(unretired) + u64::from(len) > u64::from(self.cmdr_size) - 1 {
            return Err(RingError::Broken(RingFault::Lapped { at, len, unretired }));
        }
        let published = if head >= at {
            head - at
        } else {
            self.cmdr_size - at + head
        };
        if len > published {
            return Err(RingError::Broken(RingFault::BeyondHead { at, len, head }));
        }
        Ok(())
    }

    /// Record an entry that needs no response and step over it.
    fn finish_unanswered(&mut self, at: u32, hdr: EntryHdr) {
        self.push_slot(at, hdr, None, SlotState::Finished(None));
    }

    /// Record the entry at `at` with header `hdr` (its length checked) and step over it.
    fn push_slot(&mut self, at: u32, hdr: EntryHdr, cmd_id: Option<u16>, state: SlotState) -> u64 {
        let len = hdr.entry_len();
        let seq = self.front_seq + self.slots.len() as u64;
        self.slots.push_back(Slot {
            at,
            hdr,
            cmd_id,
            state,
        });
        self.next = (at + len) % self.cmdr_size;
        seq
    }

    fn read_command(&mut self, at: u32, hdr: EntryHdr) -> Result<RingEntry, RingError> {
        let len = hdr.entry_len();
        if (len as usize) < abi::CMD_ENTRY_SIZE {
            return Err(RingError::Broken(RingFault::CmdTooShort { at, len }));
        }
        let base = self.entry_off(at);
        let entry: CmdEntryReq = self.region.read_obj(base);
        let cmd_id = entry.hdr.cmd_id;
        if !self.ids_in_ring.insert(cmd_id) {
            return Err(RingError::Broken(RingFault::DuplicateCmdId { at, cmd_id }));
        }
        match self.parse_command(base, len, &entry) {
            Ok(Parsed { cdb, data, bidi_in }) => {
                let seq = self.push_slot(at, hdr, Some(cmd_id), SlotState::Outstanding(cmd_id));
                self.outstanding += 1;
                Ok(RingEntry::Command(TcmuCommand {
                    seq,
                    at,
                    cmd_id,
                    cdb,
                    data,
                    bidi_in,
                }))
            }
            Err(fault) => {
                log::warn!("tcmu cmd_id {cmd_id} at {at}: {fault}; answered with CHECK CONDITION");
                let answer = self.answer(&Response {
                    status: sam_status::CHECK_CONDITION,
                    sense: &INTERNAL_TARGET_FAILURE,
                    read_len: None,
                });
                let state = if self.out_of_order {
                    self.ready.push_back((cmd_id, answer));
                    SlotState::Finished(None)
                } else {
                    SlotState::Finished(Some(Box::new(answer)))
                };
                self.push_slot(at, hdr, Some(cmd_id), state);
                Err(RingError::Refused { at, cmd_id, fault })
            }
        }
    }

    fn parse_command(&self, base: usize, len: u32, entry: &CmdEntryReq) -> Result<Parsed, EntryFault> {
        let req = &entry.req;
        let entry_start = base as u64;
        let entry_end = entry_start + u64::from(len);
        let iovs = u64::from(req.iov_cnt) + u64::from(req.iov_bidi_cnt) + u64::from(req.iov_dif_cnt);
        let iov_end = abi::IOV_ARRAY_OFFSET as u64 + iovs * size_of::<Iovec>() as u64;
        if iov_end > u64::from(len) {
            return Err(EntryFault::IovArrayOutsideEntry { iovs });
        }
        // The CDB: after the iovec array (the kernel puts it there), whole, inside the entry.
        let cdb_off = req.cdb_off;
        let cdb_outside = EntryFault::CdbOutsideEntry { cdb_off };
        if cdb_off < entry_start + iov_end || cdb_off >= entry_end {
            return Err(cdb_outside);
        }
        let opcode: u8 = self.region.read_obj(cdb_off as usize);
        let byte7: u8 = if cdb_off + 8 <= entry_end {
            self.region.read_obj(cdb_off as usize + 7)
        } else {
            0
        };
        let cdb_len = abi::cdb_len(opcode, byte7);
        if cdb_off + cdb_len as u64 > entry_end {
            return Err(cdb_outside);
        }
        let mut cdb = vec![0u8; cdb_len].into_boxed_slice();
        self.region.read(cdb_off as usize, &mut cdb);

        let mut data = Vec::with_capacity(req.iov_cnt as usize);
        let mut bidi_in = Vec::with_capacity(req.iov_bidi_cnt as usize);
        let region_len = self.region.len() as u64;
        for index in 0..u64::from(req.iov_cnt) + u64::from(req.iov_bidi_cnt) {
            let off = base + abi::IOV_ARRAY_OFFSET + index as usize * size_of::<Iovec>();
            let iov: Iovec = self.region.read_obj(off);
            let inside = iov.iov_base >= self.data_off as u64
                && iov
                    .iov_base
                    .checked_add(iov.iov_len)
                    .is_some_and(|end| end <= region_len);
            if !inside {
                return Err(EntryFault::IovOutsideData {
                    index,
                    base: iov.iov_base,
                    len: iov.iov_len,
                });
            }
            let segment = DataSegment {
                off: iov.iov_base as usize,
                len: iov.iov_len as usize,
            };
            if index < u64::from(req.iov_cnt) {
                data.push(segment);
            } else {
                bidi_in.push(segment);
            }
        }
        Ok(Parsed { cdb, data, bidi_in })
    }

    fn read_tmr(&mut self, at: u32, hdr: EntryHdr) -> Result<RingEntry, RingError> {
        let len = hdr.entry_len();
        let base = self.entry_off(at);
        let fixed = size_of::<TmrEntry>() as u32;
        // A TMR needs no response, so a malformed one is skipped, never answered.
        self.push_slot(at, hdr, None, SlotState::Finished(None));
        if len < fixed {
            let cmd_id: u16 = self
                .region
                .read_obj(base + std::mem::offset_of!(EntryHdr, cmd_id));
            return Err(RingError::Refused {
                at,
                cmd_id,
                fault: EntryFault::TmrTooShort { len },
            });
        }
        let tmr: TmrEntry = self.region.read_obj(base);
        let ids_len = u64::from(tmr.cmd_cnt) * 2;
        if abi::TMR_CMD_IDS_OFFSET as u64 + ids_len > u64::from(len) {
            return Err(RingError::Refused {
                at,
                cmd_id: tmr.hdr.cmd_id,
                fault: EntryFault::TmrIdsOutsideEntry { cmd_cnt: tmr.cmd_cnt },
            });
        }
        let mut raw = vec![0u8; ids_len as usize];
        self.region.read(base + abi::TMR_CMD_IDS_OFFSET, &mut raw);
        let cmd_ids = raw
            .chunks_exact(2)
            // `__u16 cmd_ids[]`, written by `queue_tmr_ring` in the kernel's own byte order.
            .map(|b| u16::from_ne_bytes([b[0], b[1]]))
            .collect();
        Ok(RingEntry::TaskManagement(TmrNotice {
            tmr_type: tmr.tmr_type,
            cmd_ids,
        }))
    }

    /// The bytes that answer a CMD entry with `rsp`.
    fn answer(&self, rsp: &Response<'_>) -> Answer {
        let mut sense = [0u8; abi::TCMU_SENSE_BUFFERSIZE];
        let n = rsp.sense.len().min(sense.len());
        sense[..n].copy_from_slice(&rsp.sense[..n]);
        let read_len = rsp
            .read_len
            .filter(|_| self.flags & abi::mailbox_flags::CAP_READ_LEN != 0);
        Answer {
            uflags: if read_len.is_some() {
                abi::uflags::READ_LEN
            } else {
                0
            },
            rsp: Some(abi::CmdRsp {
                scsi_status: rsp.status,
                _pad1: 0,
                _pad2: 0,
                read_len: read_len.unwrap_or(0),
                sense_buffer: sense,
            }),
        }
    }

    /// Write `answer` into the entry at region offset `base` (a CMD entry's length was checked
    /// to be at least a whole `tcmu_cmd_entry` before it could get a response), naming command
    /// `cmd_id` when it is another command's than the entry's (out of order: `len_op` stays, so
    /// the kernel still steps over the entry by its own length).
    fn write_answer(&self, base: usize, answer: &Answer, cmd_id: Option<u16>) {
        if let Some(cmd_id) = cmd_id {
            self.region.write_obj(base + abi::HDR_CMD_ID, &cmd_id);
        }
        // Exactly the flags we mean, not ORed into what the entry holds: the kernel zeroes an
        // entry before posting it, so a set bit there is corruption, and passing it on would
        // be worse (a stray KEEP_BUF keeps the command's data blocks for ever, a stray
        // UNKNOWN_OP makes `tcmu_handle_completion` ignore our response).
        self.region.write_obj(base + abi::HDR_UFLAGS, &answer.uflags);
        if let Some(rsp) = &answer.rsp {
            self.region.write_obj(base + abi::RSP_SCSI_STATUS, rsp);
        }
    }

    /// Answer `cmd` with `rsp` (check [`Self::take_kick`] afterwards). Out of order
    /// ([`abi::mailbox_flags::CAP_OOOC`]) the answer goes at once into the next CMD entry at
    /// `cmd_tail`, whoever's it was, and `cmd_tail` moves past it; in order `cmd_tail` moves
    /// over every finished entry before the first unfinished one, and the response is written
    /// into `cmd`'s own entry only when `cmd_tail` passes it. Either way an entry ahead of
    /// `cmd_tail` still holds its request (but for a stretch answered and not yet published by
    /// the `cmd_tail` store, docs/tcmu.md).
    ///
    /// # Errors
    /// [`RingError::NotOutstanding`] when `cmd` is not one this ring handed out and has not
    /// completed (a command of another ring); nothing is written then.
    /// [`RingError::Broken`] ([`RingFault::TailMoved`]) when the kernel has reset the ring:
    /// nothing is written into it any more, and the answer is dropped.
    pub fn complete(&mut self, cmd: TcmuCommand, rsp: &Response<'_>) -> Result<(), RingError> {
        let not_outstanding = RingError::NotOutstanding {
            cmd_id: cmd.cmd_id,
            seq: cmd.seq,
        };
        let answer = self.answer(rsp);
        let out_of_order = self.out_of_order;
        match self.slot_index(&cmd).map(|index| &mut self.slots[index]) {
            Some(slot) if slot.state == SlotState::Outstanding(cmd.cmd_id) => {
                if out_of_order {
                    slot.state = SlotState::Finished(None);
                    self.ready.push_back((cmd.cmd_id, answer));
                } else {
                    slot.state = SlotState::Finished(Some(Box::new(answer)));
                }
            }
            // Out of order, a command may finish after `cmd_tail` passed its entry.
            Some(_) => return Err(not_outstanding),
            None if self.displaced.get(&cmd.seq) == Some(&cmd.cmd_id) => {
                self.displaced.remove(&cmd.seq);
                self.ready.push_back((cmd.cmd_id, answer));
            }
            None => return Err(not_outstanding),
        }
        self.outstanding -= 1;
        self.retire()
    }

    /// How many entries from the front of the slot table `cmd_tail` can pass now. In order:
    /// the finished prefix. Out of order: PAD, TMR and unknown-opcode entries freely, and one
    /// CMD entry per answer waiting in [`Self::ready`], whatever command the entry was read
    /// for.
    fn retirable(&self) -> usize {
        if !self.out_of_order {
            return self
                .slots
                .iter()
                .take_while(|slot| matches!(slot.state, SlotState::Finished(_)))
                .count();
        }
        let mut answers = self.ready.len();
        let mut n = 0;
        for slot in &self.slots {
            if slot.cmd_id.is_some() {
                if answers == 0 {
                    break;
                }
                answers -= 1;
            }
            n += 1;
        }
        n
    }

    /// Write the answers waiting into the entries `cmd_tail` can pass ([`Self::retirable`]:
    /// in order the finished prefix, each into its own entry; out of order one answer per CMD
    /// entry, whoever's it was) and move `cmd_tail` over them; one release store publishes
    /// them all to the kernel. Nothing is written after a ring
    /// reset ([`Self::check_tail`]): the kernel may have posted new entries where the answers
    /// would go, and a `cmd_tail` of ours would not be an entry boundary of its.
    fn retire(&mut self) -> Result<(), RingError> {
        let retirable = self.retirable();
        if retirable == 0 {
            return Ok(());
        }
        // Once broken nothing more is written: after a reset the entries are the kernel's new
        // ones, and after any other fault the data accessors refuse too (`data_fault`), so an
        // answer now could say GOOD over Data-In never written. The kernel times out what is
        // outstanding (`cmd_time_out`).
        if let Some(fault) = &self.broken {
            return Err(RingError::Broken(fault.clone()));
        }
        self.check_tail()?;
        // A reset while our cmd_tail was 0 leaves it 0 (`tcmu_reset_ring`), so the checks above
        // do not see it; the kernel may since have posted new entries where our answers go.
        // Two more looks: cmd_head still ahead of our read position, and every entry to be
        // answered still holding the header we read (a new command there has another cmd_id:
        // the kernel's ids are cyclic). Both before anything is written, so a mismatch writes
        // nothing and moves nothing. What this cannot close: a reset between these loads and
        // the stores below (the kernel's cmdr_lock is not ours to take), docs/tcmu.md.
        if let Err(fault) = self.load_head() {
            return Err(self.fail(fault));
        }
        let changed = self
            .slots
            .iter()
            .take(retirable)
            .find_map(|slot| self.entry_fault(slot));
        if let Some(fault) = changed {
            return Err(self.fail(fault));
        }
        let mut tail = self.tail;
        for _ in 0..retirable {
            let Some(slot) = self.slots.pop_front() else {
                break;
            };
            let base = self.entry_off(slot.at);
            match (slot.cmd_id, slot.state) {
                // Out of order, a CMD entry carries the oldest waiting answer, maybe another
                // command's: `tcmu_handle_completions` completes whatever `hdr.cmd_id` names.
                (Some(own), state) if self.out_of_order => {
                    let (id, answer) = self.ready.pop_front().expect("retirable counted an answer");
                    self.write_answer(base, &answer, (id != own).then_some(id));
                    self.ids_in_ring.remove(&id);
                    if state == SlotState::Outstanding(own) {
                        self.displaced.insert(self.front_seq, own);
                    }
                }
                (cmd_id, SlotState::Finished(answer)) => {
                    if let Some(answer) = answer {
                        self.write_answer(base, &answer, None);
                    }
                    if let Some(id) = cmd_id {
                        self.ids_in_ring.remove(&id);
                    }
                }
                (_, SlotState::Outstanding(_)) => unreachable!("in order only finished slots are retirable"),
            }
            tail = (slot.at + slot.hdr.entry_len()) % self.cmdr_size;
            self.front_seq += 1;
        }
        if tail != self.tail {
            self.tail = tail;
            self.region.store_u32_release(abi::MB_CMD_TAIL, tail);
            self.tail_moved = true;
        }
        Ok(())
    }

    /// Why `cmd`'s data blocks are not ours to touch, if they are not: the ring is broken, or
    /// the kernel reset it (our `cmd_tail` gone from the mailbox, `cmd_head` behind our read
    /// position, or `cmd`'s entry holding another header). Out of order `cmd`'s entry may be
    /// behind `cmd_tail` already, overwritten with another command's answer (what the command
    /// needs was copied when it was read, [`TcmuCommand`]); then the entry at `cmd_tail` is
    /// compared instead. There is one: `cmd` is not answered, so a CMD entry is still ahead
    /// ([`Ring::ready`]). It is the one that shows a reset while our `cmd_tail` was 0: the
    /// kernel's first new entry lands there. After a reset the kernel has freed
    /// the command's data blocks (`tcmu_reset_ring`: `tcmu_cmd_free_data`) and hands them to
    /// new commands, or releases their pages (`find_free_blocks`), and an access to a released
    /// page of the mapping is SIGBUS (`tcmu_vma_fault`). Like `retire`'s checks, this narrows
    /// the window to the copy itself; it cannot close it (docs/tcmu.md, "The ring's rules").
    fn data_fault(&self, cmd: &TcmuCommand) -> Option<RingFault> {
        #[cfg(test)]
        self.data_checks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(fault) = &self.broken {
            return Some(fault.clone());
        }
        if let Some(fault) = self.tail_fault() {
            return Some(fault);
        }
        if let Err(fault) = self.load_head() {
            return Some(fault);
        }
        let slot = match self.slot_index(cmd) {
            Some(index) => &self.slots[index],
            None => self.slots.front()?,
        };
        self.entry_fault(slot)
    }

    /// How often the data accessors have looked at the ring (`data_fault`).
    #[cfg(test)]
    pub(crate) fn data_checks(&self) -> usize {
        self.data_checks.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// [`Self::data_fault`] for a caller that may record it (the ring is broken from then on).
    fn check_data(&mut self, cmd: &TcmuCommand) -> Result<(), RingError> {
        match self.data_fault(cmd) {
            Some(fault) => Err(self.fail(fault)),
            None => Ok(()),
        }
    }

    /// Copy bytes of `cmd`'s data buffer ([`TcmuCommand::data`]) from byte `offset` of the
    /// buffer into `buf`; returns the bytes copied (fewer at the buffer's end).
    ///
    /// # Errors
    /// [`RingError::Broken`] when the ring is broken or the kernel reset it
    /// (`data_fault`); nothing is read then.
    pub fn read_data(&self, cmd: &TcmuCommand, offset: usize, buf: &mut [u8]) -> Result<usize, RingError> {
        if let Some(fault) = self.data_fault(cmd) {
            return Err(RingError::Broken(fault));
        }
        let mut done = 0;
        for_each_piece(&cmd.data, offset, buf.len(), |region_off, at, n| {
            self.region.read(region_off, &mut buf[at..at + n]);
            done += n;
        });
        Ok(done)
    }

    /// Copy `buf` into `cmd`'s Data-In buffer (the BIDI Data-In buffer when there is one, else
    /// the data buffer) from byte `offset`; returns the bytes copied.
    ///
    /// # Errors
    /// [`RingError::Broken`] as [`Self::read_data`]; nothing is written then.
    pub fn write_data(&mut self, cmd: &TcmuCommand, offset: usize, buf: &[u8]) -> Result<usize, RingError> {
        self.check_data(cmd)?;
        Ok(self.write_checked(cmd, offset, buf))
    }

    /// [`Self::write_data`] once the ring is checked.
    fn write_checked(&self, cmd: &TcmuCommand, offset: usize, buf: &[u8]) -> usize {
        let mut done = 0;
        for_each_piece(data_in_segments(cmd), offset, buf.len(), |region_off, at, n| {
            self.region.write(region_off, &buf[at..at + n]);
            done += n;
        });
        done
    }

    /// Copy `cmd`'s Data-Out into `to` from byte `to_off` on, straight from the data area (one
    /// copy, no bounce, byte-wise atomic on both sides: `Region::copy_to_pages`); returns the
    /// bytes copied.
    ///
    /// # Errors
    /// [`RingError::Broken`] as [`Self::read_data`]; nothing is copied then.
    ///
    /// # Panics
    /// If `to` has fewer than `to_off + cmd.data_len()` bytes (a caller's bug).
    pub fn copy_data_out(
        &self,
        cmd: &TcmuCommand,
        to: &PageBuffer,
        to_off: usize,
    ) -> Result<usize, RingError> {
        if let Some(fault) = self.data_fault(cmd) {
            return Err(RingError::Broken(fault));
        }
        let mut done = 0;
        for_each_piece(&cmd.data, 0, cmd.data_len(), |region_off, at, n| {
            self.region.copy_to_pages(region_off, to, to_off + at, n);
            done += n;
        });
        Ok(done)
    }

    /// Copy the first `len` bytes of `from` from byte `from_off` on into `cmd`'s Data-In buffer
    /// (the BIDI Data-In buffer when there is one), at most its length, straight into the data
    /// area (as [`Self::copy_data_out`] the other way); returns the bytes copied.
    ///
    /// # Errors
    /// [`RingError::Broken`] as [`Self::write_data`]; nothing is copied then.
    ///
    /// # Panics
    /// If `from` has fewer than `from_off + len` bytes (a caller's bug).
    pub fn copy_data_in(
        &mut self,
        cmd: &TcmuCommand,
        len: usize,
        from: &PageBuffer,
        from_off: usize,
    ) -> Result<usize, RingError> {
        self.check_data(cmd)?;
        Ok(self.copy_in_checked(cmd, len, from, from_off))
    }

    /// [`Self::copy_data_in`] once the ring is checked.
    fn copy_in_checked(&self, cmd: &TcmuCommand, len: usize, from: &PageBuffer, from_off: usize) -> usize {
        let mut done = 0;
        for_each_piece(data_in_segments(cmd), 0, len, |region_off, at, n| {
            self.region.copy_from_pages(region_off, from, from_off + at, n);
            done += n;
        });
        done
    }

    /// Zero `cmd`'s Data-In buffer (the BIDI Data-In buffer when there is one) from byte `from`
    /// to its end; returns the bytes zeroed. The data area's blocks are reused without being
    /// cleared (`tcmu_get_empty_block` zeroes only pages it newly allocates), so a part of the
    /// buffer not filled holds earlier commands' data.
    ///
    /// # Errors
    /// [`RingError::Broken`] as [`Self::write_data`]; nothing is written then.
    pub fn zero_data_in(&mut self, cmd: &TcmuCommand, from: usize) -> Result<usize, RingError> {
        self.check_data(cmd)?;
        Ok(self.zero_checked(cmd, from))
    }

    /// [`Self::zero_data_in`] once the ring is checked.
    fn zero_checked(&self, cmd: &TcmuCommand, from: usize) -> usize {
        let segments = data_in_segments(cmd);
        let len = segments.iter().map(|s| s.len).sum::<usize>().saturating_sub(from);
        let mut done = 0;
        for_each_piece(segments, from, len, |region_off, _, n| {
            self.region.fill(region_off, n, 0);
            done += n;
        });
        done
    }

    /// Put `data` into `cmd`'s Data-In buffer (the BIDI Data-In buffer when there is one) from
    /// its start, then, if `zero_rest` says so given the bytes put, zero the rest of the buffer
    /// ([`Self::zero_data_in`]); returns the bytes put. The ring is checked once
    /// (`data_fault`) before the first byte of the data area is touched, not again
    /// between the copy and the zeroing: that second look (two mailbox loads and a header
    /// read) would only move the window a reset can slip through from the copy's start to the
    /// zeroing's, and `complete` looks again before any answer lands. Nothing to put and
    /// nothing to zero touches nothing and checks nothing.
    ///
    /// # Errors
    /// [`RingError::Broken`] as [`Self::write_data`]; nothing is written then.
    ///
    /// # Panics
    /// If a [`DataIn::Pages`] source has fewer than `from_off + len` bytes (a caller's bug).
    pub fn put_data_in(
        &mut self,
        cmd: &TcmuCommand,
        data: DataIn<'_>,
        zero_rest: impl FnOnce(usize) -> bool,
    ) -> Result<usize, RingError> {
        let checked = !matches!(data, DataIn::Nothing);
        if checked {
            self.check_data(cmd)?;
        }
        let done = match data {
            DataIn::Nothing => 0,
            DataIn::Bytes(buf) => self.write_checked(cmd, 0, buf),
            DataIn::Pages { from, from_off, len } => self.copy_in_checked(cmd, len, from, from_off),
        };
        if zero_rest(done) {
            if !checked {
                self.check_data(cmd)?;
            }
            self.zero_checked(cmd, done);
        }
        Ok(done)
    }
}

/// What [`Ring::put_data_in`] puts into a command's Data-In buffer.
#[derive(Debug, Clone, Copy)]
pub enum DataIn<'a> {
    /// Nothing (the buffer may still be zeroed).
    Nothing,
    /// These bytes.
    Bytes(&'a [u8]),
    /// The first `len` bytes of `from` from byte `from_off` on (a command buffer), at most the
    /// Data-In buffer's length.
    Pages {
        /// The command buffer.
        from: &'a PageBuffer,
        /// Where its data starts.
        from_off: usize,
        /// How many bytes.
        len: usize,
    },
}

/// The segments of `cmd`'s Data-In buffer: the BIDI Data-In buffer when there is one, else the
/// data buffer.
fn data_in_segments(cmd: &TcmuCommand) -> &[DataSegment] {
    if cmd.bidi_in.is_empty() {
        &cmd.data
    } else {
        &cmd.bidi_in
    }
}

/// Call `f(region_offset, buffer_offset, len)` for each piece of `len` bytes starting at byte
/// `offset` of the buffer the `segments` describe, in order.
fn for_each_piece(
    segments: &[DataSegment],
    offset: usize,
    len: usize,
    mut f: impl FnMut(usize, usize, usize),
) {
    let mut skip = offset;
    let mut at = 0;
    for s in segments {
        if at == len {
            break;
        }
        if skip >= s.len {
            skip -= s.len;
            continue;
        }
        let n = (s.len - skip).min(len - at);
        f(s.off + skip, at, n);
        at += n;
        skip = 0;
    }
}

#[cfg(test)]
#[path = "ring_tests.rs"]
mod tests;
