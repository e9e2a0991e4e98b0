//! A simulated kernel side of a TCMU ring, in process: it lays out a region as
//! target_core_user does (mailbox at 0, command ring at 128, data area after it), posts CMD,
//! PAD and TMR entries the way `queue_cmd_ring` / `queue_tmr_ring` do (an entry never wraps: a
//! PAD fills the ring's end first; one byte of the ring always stays free so head == tail means
//! empty), and reaps completions up to `cmd_tail` the way `tcmu_handle_completions` does: from
//! where it last cleaned to `cmd_tail`, PAD and TMR entries skipped, each CMD entry's
//! `hdr.cmd_id` looked up among the commands posted and not yet reaped (`udev->commands`), that
//! command completed with the entry's response and forgotten, each entry stepped over by its
//! own length.
//!
//! It is the peer [`super::ring::Ring`] is tested against, and it is strict where the kernel is:
//! a `cmd_tail` that is not at an entry boundary, or passes `cmd_head`, is a [`SimError`], and so
//! is a `cmd_id` that names no command waiting (unknown, or reaped already: a duplicate), after
//! which the simulated kernel is broken for good, as the kernel sets `TCMU_DEV_BIT_BROKEN`. So a
//! response under a wrong `cmd_id` cannot pass. Like the kernel it reaps from the shared memory,
//! not from its own record: an entry's `cmd_id` and length come from the header there. A header
//! user space changed beyond what it may is a [`SimError`] too: `uflags` always, and a CMD
//! entry's `cmd_id` only when the mailbox advertises
//! [`abi::mailbox_flags::CAP_OOOC`] (as current kernels do, [`CURRENT_KERNEL_FLAGS`]; leave it
//! out of [`SimConfig::flags`] to stand for a kernel that reads completions in order only). It
//! also places raw, malformed entries on request, to show that the ring refuses them.

use super::abi;
use super::abi::CmdEntryReq;
use super::abi::CmdEntryRsp;
use super::abi::EntryHdr;
use super::abi::Iovec;
use super::abi::Mailbox;
use super::abi::TmrEntry;
use super::region::HeapMemory;
use super::region::Region;
use std::collections::HashSet;
use std::collections::VecDeque;
use std::mem::size_of;
use std::sync::Arc;
use zerocopy::FromBytes;
use zerocopy::FromZeros;
use zerocopy::IntoBytes;

/// Where the simulated kernel puts the ring: right after the mailbox, as the kernel does
/// (`CMDR_OFF`).
pub const SIM_CMDR_OFF: u32 = size_of::<Mailbox>() as u32;

/// The mailbox flags `tcmu_configure_device` sets in current kernels (5.13 and later): out-of-
/// order completion, `read_len`, TMR notifications, KEEP_BUF.
pub const CURRENT_KERNEL_FLAGS: u16 = abi::mailbox_flags::CAP_OOOC
    | abi::mailbox_flags::CAP_READ_LEN
    | abi::mailbox_flags::CAP_TMR
    | abi::mailbox_flags::CAP_KEEP_BUF;

/// The shape of a simulated region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimConfig {
    /// Command ring size (a multiple of 8; need not be a power of two).
    pub cmdr_size: u32,
    /// Data area size.
    pub data_size: usize,
    /// [`abi::mailbox_flags`] to advertise, and to act on: without
    /// [`abi::mailbox_flags::CAP_OOOC`] a CMD entry's `cmd_id` must stay the one posted.
    pub flags: u16,
}

/// What the simulated kernel refuses or detects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    /// Not enough free ring space for the entry (and its PAD).
    #[error("ring full: {need} bytes needed, {free} free")]
    RingFull {
        /// Bytes needed.
        need: u32,
        /// Bytes free.
        free: u32,
    },
    /// `cmd_tail` is not the end of an entry the kernel posted.
    #[error("cmd_tail {tail} is not an entry boundary (last cleaned {cleaned})")]
    TailNotOnBoundary {
        /// `cmd_tail`.
        tail: u32,
        /// Where the kernel had cleaned up to.
        cleaned: u32,
    },
    /// An entry behind `cmd_tail` whose header is not the one posted (user space may set only
    /// `uflags`, and with `CAP_OOOC` a CMD entry's `cmd_id`): `tcmu_handle_completions` takes
    /// the opcode, the length and the `cmd_id` from it, so the kernel would skip the wrong
    /// number of bytes or complete the wrong command.
    #[error("entry at ring offset {at}: header {found:?} where {posted:?} was posted")]
    HeaderChanged {
        /// Ring offset of the entry.
        at: u32,
        /// The header as posted.
        posted: EntryHdr,
        /// The header as found in the shared memory.
        found: EntryHdr,
    },
    /// A CMD entry behind `cmd_tail` whose `cmd_id` names no command posted and not yet reaped
    /// (never posted, or completed already through an earlier entry): the kernel's lookup
    /// fails, it logs "cmd_id not found, ring is broken" and sets `TCMU_DEV_BIT_BROKEN`
    /// (`tcmu_handle_completions`). The simulated kernel reaps nothing more after it.
    #[error("entry at ring offset {at}: cmd_id {cmd_id} names no outstanding command, ring is broken")]
    UnknownCmdId {
        /// Ring offset of the entry.
        at: u32,
        /// The `cmd_id` found there.
        cmd_id: u16,
    },
}

/// One entry as the kernel posted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Posted {
    Pad,
    Cmd,
    Tmr,
    Raw,
}

/// A completion as the kernel reads it from a CMD entry behind `cmd_tail`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimCompletion {
    /// `hdr.cmd_id`.
    pub cmd_id: u16,
    /// `hdr.uflags`.
    pub uflags: u8,
    /// `rsp.scsi_status`.
    pub status: u8,
    /// `rsp.read_len`.
    pub read_len: u32,
    /// `rsp.sense_buffer`.
    pub sense: [u8; abi::TCMU_SENSE_BUFFERSIZE],
}

/// An entry the kernel posted and has not cleaned yet.
#[derive(Debug, Clone, Copy)]
struct PostedEntry {
    /// Ring offset.
    at: u32,
    /// Length.
    len: u32,
    what: Posted,
    /// Its header as written (none for a raw entry shorter than a header).
    hdr: Option<EntryHdr>,
}

/// The simulated kernel.
#[derive(Debug)]
pub struct SimKernel {
    region: Region,
    cmdr_size: u32,
    data_off: usize,
    head: u32,
    cleaned: u32,
    posted: VecDeque<PostedEntry>,
    /// `CAP_OOOC` advertised: a CMD entry's `cmd_id` may be rewritten.
    out_of_order: bool,
    /// The ids of the commands posted and not yet reaped (`udev->commands`).
    commands: HashSet<u16>,
    /// The first [`SimError::UnknownCmdId`]: the device is broken, nothing more is reaped.
    broken: Option<SimError>,
    /// The completions of the walk that broke, made before it met the bad entry: the kernel
    /// has completed those commands (`target_complete_cmd`) before it breaks
    /// ([`SimKernel::completed_before_break`]).
    before_break: Vec<SimCompletion>,
}

impl SimKernel {
    /// A fresh region: mailbox written, ring and data zeroed, head = tail = 0.
    pub fn new(config: SimConfig) -> Self {
        let data_off = SIM_CMDR_OFF as usize + config.cmdr_size as usize;
        let region = Region::new(Arc::new(HeapMemory::new(data_off + config.data_size)));
        let mut mb = Mailbox::new_zeroed();
        mb.version = abi::TCMU_MAILBOX_VERSION;
        mb.flags = config.flags;
        mb.cmdr_off = SIM_CMDR_OFF;
        mb.cmdr_size = config.cmdr_size;
        region.write_mailbox(&mb);
        Self {
            region,
            cmdr_size: config.cmdr_size,
            data_off,
            head: 0,
            cleaned: 0,
            posted: VecDeque::new(),
            out_of_order: config.flags & abi::mailbox_flags::CAP_OOOC != 0,
            commands: HashSet::new(),
            broken: None,
            before_break: Vec::new(),
        }
    }

    /// The shared region (give a clone to [`super::ring::Ring::attach`]).
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// Offset of the data area in the region.
    pub fn data_off(&self) -> usize {
        self.data_off
    }

    /// `cmd_head` as last published.
    pub fn head(&self) -> u32 {
        self.head
    }

    /// Entries posted and not yet cleaned (PAD and TMR included).
    pub fn posted(&self) -> usize {
        self.posted.len()
    }

    /// Free ring bytes, as the kernel counts them (one byte always stays free).
    pub fn free(&self) -> u32 {
        let used = (self.head + self.cmdr_size - self.cleaned) % self.cmdr_size;
        self.cmdr_size - used - 1
    }

    /// Post a CMD entry with `cdb` and the data iovecs `iov` (then the BIDI Data-In iovecs
    /// `bidi`), offsets from the region start, laid out as `queue_cmd_ring` does: the iovecs at
    /// `req.iov` (overlapping the end of the fixed entry), the CDB at
    /// `max(offsetof(req.iov[n]), sizeof(tcmu_cmd_entry))` (`tcmu_cmd_get_base_cmd_size`), the
    /// length that plus the CDB rounded up to 8; returns the ring offset.
    ///
    /// # Errors
    /// [`SimError::RingFull`]; the device's [`SimError::UnknownCmdId`] while it is broken.
    pub fn post_cmd(
        &mut self,
        cmd_id: u16,
        cdb: &[u8],
        iov: &[Iovec],
        bidi: &[Iovec],
    ) -> Result<u32, SimError> {
        let iovs = iov.len() + bidi.len();
        let base = (abi::IOV_ARRAY_OFFSET + iovs * size_of::<Iovec>()).max(abi::CMD_ENTRY_SIZE);
        let len = base + cdb.len().next_multiple_of(abi::TCMU_OP_ALIGN_SIZE as usize);
        let mut bytes = vec![0u8; len];
        let at = self.make_room(len as u32)?;
        let mut entry = CmdEntryReq::new_zeroed();
        entry.hdr.len_op = EntryHdr::len_op(len as u32, abi::opcode::CMD);
        entry.hdr.cmd_id = cmd_id;
        entry.req.iov_cnt = iov.len() as u32;
        entry.req.iov_bidi_cnt = bidi.len() as u32;
        entry.req.cdb_off = (SIM_CMDR_OFF + at) as u64 + base as u64;
        bytes[..abi::CMD_ENTRY_SIZE].copy_from_slice(entry.as_bytes());
        for (i, v) in iov.iter().chain(bidi).enumerate() {
            let o = abi::IOV_ARRAY_OFFSET + i * size_of::<Iovec>();
            bytes[o..o + size_of::<Iovec>()].copy_from_slice(v.as_bytes());
        }
        bytes[base..base + cdb.len()].copy_from_slice(cdb);
        self.commands.insert(cmd_id);
        Ok(self.publish(at, &bytes, Posted::Cmd))
    }

    /// Post a TMR entry listing `cmd_ids`, as `queue_tmr_ring` does.
    ///
    /// # Errors
    /// [`SimError::RingFull`].
    pub fn post_tmr(&mut self, tmr_type: u8, cmd_ids: &[u16]) -> Result<u32, SimError> {
        let len = (size_of::<TmrEntry>() + 2 * cmd_ids.len()).next_multiple_of(8);
        let at = self.make_room(len as u32)?;
        let mut tmr = TmrEntry::new_zeroed();
        tmr.hdr.len_op = EntryHdr::len_op(len as u32, abi::opcode::TMR);
        tmr.tmr_type = tmr_type;
        tmr.cmd_cnt = cmd_ids.len() as u32;
        let mut bytes = vec![0u8; len];
        bytes[..size_of::<TmrEntry>()].copy_from_slice(tmr.as_bytes());
        for (i, id) in cmd_ids.iter().enumerate() {
            let o = abi::TMR_CMD_IDS_OFFSET + 2 * i;
            bytes[o..o + 2].copy_from_slice(&id.to_ne_bytes());
        }
        Ok(self.publish(at, &bytes, Posted::Tmr))
    }

    /// Post `bytes` as they are (a multiple of 8 long), whatever their header says, and
    /// advance `cmd_head` by `bytes.len()`: a malformed entry for the ring to refuse.
    ///
    /// # Errors
    /// [`SimError::RingFull`].
    pub fn post_raw(&mut self, bytes: &[u8]) -> Result<u32, SimError> {
        let at = self.make_room(bytes.len() as u32)?;
        let at = self.publish(at, bytes, Posted::Raw);
        // Out of order, the ring may answer any command into a raw entry whose header says
        // CMD, and the kernel would look that answer up like any other: so such an entry's id
        // is a command's here. In order a raw entry is not one (its answer is read from the
        // ring by the test).
        if self.out_of_order {
            if let Some(hdr) = self.posted.back().and_then(|p| p.hdr) {
                if hdr.op() == abi::opcode::CMD {
                    self.commands.insert(hdr.cmd_id);
                }
            }
        }
        Ok(at)
    }

    /// The completions the walk that broke the device ([`SimError::UnknownCmdId`]) made before
    /// the bad entry, taken: what the initiator got before the break.
    pub fn completed_before_break(&mut self) -> Vec<SimCompletion> {
        std::mem::take(&mut self.before_break)
    }

    /// Reset the ring as `tcmu_reset_ring` does (`action/reset_ring`): every command
    /// forgotten, wherever its entry was, `cmd_head`, `cmd_tail` and the cleaned position set
    /// to 0. Entries not reaped are dropped unread.
    pub fn reset_ring(&mut self) {
        self.posted.clear();
        // Every command completed (BUSY) and forgotten, and the device no longer broken
        // (`clear_bit(TCMU_DEV_BIT_BROKEN)` in current kernels).
        self.commands.clear();
        self.broken = None;
        self.cleaned = 0;
        self.head = 0;
        self.region.store_u32_release(abi::MB_CMD_TAIL, 0);
        self.region.store_u32_release(abi::MB_CMD_HEAD, 0);
    }

    /// Overwrite `cmd_head` with any value (a corrupt mailbox).
    pub fn corrupt_head(&self, head: u32) {
        self.region.store_u32_release(abi::MB_CMD_HEAD, head);
    }

    /// Where the next entry of `len` bytes goes: after a PAD to the ring's end when it would
    /// not fit before it. Nothing goes while the device is broken.
    fn make_room(&mut self, len: u32) -> Result<u32, SimError> {
        // A broken device queues nothing more (`queue_cmd_ring` fails the command while
        // TCMU_DEV_BIT_BROKEN is set), until a ring reset.
        if let Some(broken) = &self.broken {
            return Err(broken.clone());
        }
        let to_end = self.cmdr_size - self.head;
        let pad = if len > to_end { to_end } else { 0 };
        let free = self.free();
        if pad + len > free {
            return Err(SimError::RingFull {
                need: pad + len,
                free,
            });
        }
        if pad > 0 {
            let hdr = EntryHdr {
                len_op: EntryHdr::len_op(pad, abi::opcode::PAD),
                ..EntryHdr::default()
            };
            self.region
                .write_obj(SIM_CMDR_OFF as usize + self.head as usize, &hdr);
            self.posted.push_back(PostedEntry {
                at: self.head,
                len: pad,
                what: Posted::Pad,
                hdr: Some(hdr),
            });
            self.head = 0;
        }
        Ok(self.head)
    }

    fn publish(&mut self, at: u32, bytes: &[u8], what: Posted) -> u32 {
        self.region.write(SIM_CMDR_OFF as usize + at as usize, bytes);
        let hdr = bytes
            .get(..size_of::<EntryHdr>())
            .map(|b| EntryHdr::read_from_bytes(b).expect("8 bytes"));
        self.posted.push_back(PostedEntry {
            at,
            len: bytes.len() as u32,
            what,
            hdr,
        });
        self.head = (at + bytes.len() as u32) % self.cmdr_size;
        // UPDATE_HEAD after the entry is written; the release store orders the two.
        self.region.store_u32_release(abi::MB_CMD_HEAD, self.head);
        at
    }

    /// Read the completions of every entry `cmd_tail` has passed since the last call, in ring
    /// order, and free their ring space. `tcmu_handle_completions` takes an entry's opcode,
    /// length and `cmd_id` from its header in the shared memory, so here that header is read
    /// and checked against the one posted (`uflags` may differ, and with `CAP_OOOC` a CMD
    /// entry's `cmd_id`), a CMD entry's `cmd_id` must name a command posted and not yet reaped,
    /// which it completes and forgets, and a completion carries the `cmd_id` found there.
    ///
    /// # Errors
    /// [`SimError::TailNotOnBoundary`] when `cmd_tail` stops inside an entry or beyond the
    /// last one posted; [`SimError::HeaderChanged`] when an entry's header is not as posted
    /// (but for what user space may change). The entries before that point are freed
    /// nevertheless. [`SimError::UnknownCmdId`] when a CMD entry names no outstanding command:
    /// the entries before it are freed and their commands completed, as the kernel does
    /// ([`Self::completed_before_break`] has those completions), and every later call fails
    /// with it again (the kernel's device is broken).
    pub fn reap(&mut self) -> Result<Vec<SimCompletion>, SimError> {
        if let Some(broken) = &self.broken {
            return Err(broken.clone());
        }
        let tail = self.region.load_u32_acquire(abi::MB_CMD_TAIL);
        let mut done = Vec::new();
        while self.cleaned != tail {
            let Some(&PostedEntry { at, len, what, hdr }) = self.posted.front() else {
                return Err(SimError::TailNotOnBoundary {
                    tail,
                    cleaned: self.cleaned,
                });
            };
            debug_assert_eq!(at, self.cleaned, "posted entries are contiguous");
            // How far the tail is past this entry's start, in ring order: inside the entry is a
            // tail the kernel cannot follow.
            let past = (tail + self.cmdr_size - at) % self.cmdr_size;
            if past < len {
                return Err(SimError::TailNotOnBoundary {
                    tail,
                    cleaned: self.cleaned,
                });
            }
            let entry_off = SIM_CMDR_OFF as usize + at as usize;
            // A CMD entry as the kernel sees it: posted as one, or (out of order) a raw entry
            // whose header says so, `post_raw`.
            let mut is_cmd = what == Posted::Cmd;
            if let Some(posted) = hdr {
                let found: EntryHdr = self.region.read_obj(entry_off);
                is_cmd |= self.out_of_order && what == Posted::Raw && posted.op() == abi::opcode::CMD;
                let id_may_change = self.out_of_order && is_cmd;
                let allowed = EntryHdr {
                    uflags: posted.uflags,
                    cmd_id: if id_may_change {
                        posted.cmd_id
                    } else {
                        found.cmd_id
                    },
                    ..found
                };
                if allowed != posted {
                    return Err(SimError::HeaderChanged { at, posted, found });
                }
            }
            if is_cmd {
                let rsp: CmdEntryRsp = self.region.read_obj(entry_off);
                if !self.commands.remove(&rsp.hdr.cmd_id) {
                    let broken = SimError::UnknownCmdId {
                        at,
                        cmd_id: rsp.hdr.cmd_id,
                    };
                    self.broken = Some(broken.clone());
                    self.before_break = done;
                    return Err(broken);
                }
                done.push(SimCompletion {
                    cmd_id: rsp.hdr.cmd_id,
                    uflags: rsp.hdr.uflags,
                    status: rsp.rsp.scsi_status,
                    read_len: rsp.rsp.read_len,
                    sense: rsp.rsp.sense_buffer,
                });
            }
            self.posted.pop_front();
            self.cleaned = (at + len) % self.cmdr_size;
        }
        Ok(done)
    }

    /// How many commands were posted and not yet reaped (`udev->commands`).
    pub fn commands(&self) -> usize {
        self.commands.len()
    }

    /// The `uflags` byte of the entry posted at ring offset `at`.
    pub fn uflags_at(&self, at: u32) -> u8 {
        self.region
            .read_obj(SIM_CMDR_OFF as usize + at as usize + abi::HDR_UFLAGS)
    }

    /// Write `bytes` into the data area at region offset `off` (the Data-Out the kernel copies
    /// in before posting).
    pub fn write_data(&self, off: usize, bytes: &[u8]) {
        self.region.write(off, bytes);
    }

    /// Read `len` bytes of the data area at region offset `off` (the Data-In the kernel copies
    /// out after the completion).
    pub fn read_data(&self, off: usize, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        self.region.read(off, &mut out);
        out
    }
}

/// The bytes of a CMD entry header + request, for building malformed entries by hand.
pub fn raw_cmd_entry(len: u32, cmd_id: u16, req: abi::CmdReq) -> Vec<u8> {
    let mut entry = CmdEntryReq::new_zeroed();
    entry.hdr.len_op = EntryHdr::len_op(len, abi::opcode::CMD);
    entry.hdr.cmd_id = cmd_id;
    entry.req = req;
    let mut bytes = vec![0u8; (len as usize).max(abi::CMD_ENTRY_SIZE)];
    bytes[..abi::CMD_ENTRY_SIZE].copy_from_slice(entry.as_bytes());
    bytes.truncate(len as usize);
    bytes
}
