//! The replay kernel: an [`ScstUserFd`] that hands the frontend a steady stream of READ or
//! WRITE EXECs as SCST would send them once its SGV cache is warm, and checks every reply,
//! with no kernel model behind it. It exists to measure the handler alone
//! (`scst-accel bench --layers handler`): what a command costs the frontend, the SCSI engine and
//! the buffer and lease bookkeeping, without the loopback model's copies and locks.
//!
//! What it replays, per command slot (`queue_depth` slots, each one command outstanding at a
//! time), follows spec §3.6–§3.7 for `memory_reuse_type = REUSE_ALL`:
//! - READ, cache miss (the slot has no buffer yet): `EXEC{pbuf 0, alloc_len}`; the reply names
//!   the handler's buffer, which the slot then keeps as SCST's cache would;
//! - READ, cache hit: `EXEC{pbuf}`;
//! - WRITE, miss: `ALLOC_MEM{alloc_len}`, then `EXEC{pbuf}`; hit: `EXEC{pbuf}`;
//! - with `on_free_cmd`, `ON_FREE_CMD{pbuf, buffer_cached 1}` after each EXEC reply (what
//!   SCST sends with ON_FREE_CMD_CALL);
//! - at [`ReplayKernel::stop`], `ON_CACHED_MEM_FREE{pbuf}` for every cached buffer (SCST's cache
//!   flush), so a run ends with every buffer back in the handler's hands, which the caller checks.
//!
//! A reply the replay did not ask for, with the wrong handle, a status other than GOOD or the
//! wrong data length is counted in [`ReplayStats::bad_replies`] and refused as the kernel
//! refuses an unknown handle (`ESRCH`, `replies_done` at the failing reply, spec §3.3).
//!
//! The replay takes no lock: slot states are atomics, so any number of workers may share it, and
//! what it costs per command (a few atomic operations and the structs it writes) is what a
//! kernel's bookkeeping costs at least. Its poll fd is readable whenever a slot has something to
//! deliver (spec §3.9); unlike the kernel's, which computes readiness when polled, it is an
//! eventfd, cleared lazily, by the first fetch that finds nothing, so that a busy replay makes no
//! syscall per command (a poll right after a fetch that took everything may see it readable
//! once: the next fetch finds nothing and clears it, as a kernel's passing readiness would).
// UNSAFETY: REPLY_AND_GET_MULTI's reply array is named by a user address (`preplies`), exactly as
// for the kernel; reading it is the one unsafe operation here.
#![allow(unsafe_code)]

use super::Errno;
use super::IoctlResult;
use super::ScstUserFd;
use crate::abi;
use crate::abi::DevDesc;
use crate::abi::GetCmd;
use crate::abi::GetExtCdb;
use crate::abi::MultiBuffer;
use crate::abi::Opt;
use crate::abi::PreallocBuffer;
use crate::abi::ReplyCmd;
use crate::transport::fdio::EventFd;
use std::os::fd::AsFd;
use std::os::fd::BorrowedFd;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicIsize;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::AtomicU8;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;

/// Bits of a command handle that name its slot; the rest is the slot's sequence number.
const SLOT_BITS: u32 = 10;
/// Most slots (queue depth) a replay can have.
pub const MAX_QUEUE_DEPTH: usize = 1 << SLOT_BITS;
/// The session every replayed command comes from.
const SESS_H: u64 = 0x5e55;
/// Command timeout given in each EXEC, seconds.
const EXEC_TIMEOUT_S: i32 = 30;

/// Slot states. `*_READY`: something to deliver (counted in `ready`); `*_OUT`: delivered,
/// waiting for its reply.
mod state {
    pub const IDLE: u8 = 0;
    pub const ALLOC_OUT: u8 = 1;
    pub const EXEC_READY: u8 = 2;
    pub const EXEC_OUT: u8 = 3;
    pub const FREE_READY: u8 = 4;
    pub const FREE_OUT: u8 = 5;
    pub const CACHE_FREE_OUT: u8 = 6;
    pub const DONE: u8 = 7;
}

/// Writes one message of slot `index`, sequence `seq`, buffer `pbuf` into a command slot.
type Fill = fn(&ReplayKernel, usize, u32, u64, &mut GetCmd);

/// What the replay sends.
#[derive(Clone, Copy, Debug)]
pub struct ReplayConfig {
    /// Commands outstanding at once (slots), at most [`MAX_QUEUE_DEPTH`].
    pub queue_depth: usize,
    /// The disk's logical block size.
    pub block_size: u32,
    /// Blocks per command.
    pub blocks_per_command: u32,
    /// Blocks of the region the commands address, from LBA 0.
    pub region_blocks: u64,
    /// WRITE (else READ).
    pub write: bool,
    /// Random LBAs (else sequential).
    pub random: bool,
    /// Seed of the random LBAs.
    pub seed: u64,
    /// Send ON_FREE_CMD after every EXEC reply (the handler registered ON_FREE_CMD_CALL).
    pub on_free_cmd: bool,
}

/// What the replay saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplayStats {
    /// EXECs answered GOOD with the expected data length.
    pub commands: u64,
    /// REPLY_AND_GET_MULTI calls.
    pub calls: u64,
    /// Messages delivered (every subcode).
    pub delivered: u64,
    /// ALLOC_MEM messages answered.
    pub alloc_mem: u64,
    /// ON_FREE_CMD messages answered.
    pub on_free_cmd: u64,
    /// Buffers returned by ON_CACHED_MEM_FREE and answered.
    pub cached_frees: u64,
    /// Replies that were wrong (unknown handle, wrong state, status, length or buffer).
    pub bad_replies: u64,
    /// Times the poll fd changed state (one eventfd syscall each).
    pub readiness_changes: u64,
}

#[derive(Default)]
struct Slot {
    state: AtomicU8,
    /// Sequence number of the slot's current command (the high bits of its cmd_h).
    seq: AtomicU32,
    /// The handler's buffer this slot holds in "SCST's cache", 0 if none.
    pbuf: AtomicU64,
}

#[derive(Default)]
struct Counters {
    commands: AtomicU64,
    calls: AtomicU64,
    delivered: AtomicU64,
    alloc_mem: AtomicU64,
    on_free_cmd: AtomicU64,
    cached_frees: AtomicU64,
    bad_replies: AtomicU64,
    readiness_changes: AtomicU64,
}

/// What one call did, added to [`Counters`] (and to `ready`) once at its end: one atomic
/// read-modify-write per figure per call instead of one per message, so the replay's own
/// bookkeeping weighs as little as it can on the handler's figures.
#[derive(Default)]
struct Tally {
    commands: u64,
    delivered: u64,
    alloc_mem: u64,
    on_free_cmd: u64,
    cached_frees: u64,
    /// Slots taken (no longer deliverable).
    taken: usize,
}

/// The replay kernel (module doc).
pub struct ReplayKernel {
    config: ReplayConfig,
    slots: Box<[Slot]>,
    /// Slots with something to deliver; for a moment negative when a slot made deliverable
    /// was taken before its call added it ([`Self::applied`]).
    ready: AtomicIsize,
    /// Where the next fetch starts looking, so workers do not all scan from slot 0.
    cursor: AtomicUsize,
    running: AtomicBool,
    readiness: EventFd,
    /// `readiness` is signalled (readable).
    signalled: AtomicBool,
    counters: Counters,
}

/// Why a replay cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The configuration cannot be replayed.
    #[error("replay: {0}")]
    Config(&'static str),
    /// The poll fd's eventfd.
    #[error("replay: cannot create the poll eventfd: {0}")]
    EventFd(#[source] std::io::Error),
}

impl ReplayKernel {
    /// A replay of `config`, running (every slot ready to send its first command).
    ///
    /// # Errors
    /// [`ReplayError`] for a queue depth of 0 or above [`MAX_QUEUE_DEPTH`], a region smaller
    /// than one command, or no eventfd.
    pub fn new(config: ReplayConfig) -> Result<Self, ReplayError> {
        if config.queue_depth == 0 || config.queue_depth > MAX_QUEUE_DEPTH {
            return Err(ReplayError::Config("queue depth must be 1..=1024"));
        }
        if config.blocks_per_command == 0 || config.region_blocks < u64::from(config.blocks_per_command) {
            return Err(ReplayError::Config("the region must hold at least one command"));
        }
        let readiness = EventFd::new().map_err(ReplayError::EventFd)?;
        let replay = Self {
            config,
            slots: (0..config.queue_depth).map(|_| Slot::default()).collect(),
            ready: AtomicIsize::new(config.queue_depth as isize),
            cursor: AtomicUsize::new(0),
            running: AtomicBool::new(true),
            readiness,
            signalled: AtomicBool::new(false),
            counters: Counters::default(),
        };
        replay.signal();
        Ok(replay)
    }

    /// Stop sending commands: every slot finishes its command, then returns its buffer with
    /// ON_CACHED_MEM_FREE (SCST's cache flush) and ends.
    pub fn stop(&self) {
        self.running.store(false, Ordering::SeqCst);
        // Slots idle now deliver their ON_CACHED_MEM_FREE at the next fetch: make sure a
        // sleeping worker looks.
        if self.ready.load(Ordering::SeqCst) > 0 {
            self.signal();
        }
    }

    /// Every slot ended after [`ReplayKernel::stop`]: no command or buffer is outstanding.
    pub fn finished(&self) -> bool {
        self.slots
            .iter()
            .all(|s| s.state.load(Ordering::Acquire) == state::DONE)
    }

    /// Buffers the slots still hold ("SCST's cache").
    pub fn cached_buffers(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.pbuf.load(Ordering::Acquire) != 0)
            .count()
    }

    /// The figures so far.
    pub fn stats(&self) -> ReplayStats {
        let c = &self.counters;
        ReplayStats {
            commands: c.commands.load(Ordering::Relaxed),
            calls: c.calls.load(Ordering::Relaxed),
            delivered: c.delivered.load(Ordering::Relaxed),
            alloc_mem: c.alloc_mem.load(Ordering::Relaxed),
            on_free_cmd: c.on_free_cmd.load(Ordering::Relaxed),
            cached_frees: c.cached_frees.load(Ordering::Relaxed),
            bad_replies: c.bad_replies.load(Ordering::Relaxed),
            readiness_changes: c.readiness_changes.load(Ordering::Relaxed),
        }
    }

    fn bytes_per_command(&self) -> u64 {
        u64::from(self.config.blocks_per_command) * u64::from(self.config.block_size)
    }

    /// `alloc_len` of a cache miss: the whole size class (a power of two of pages, spec §3.6).
    fn alloc_len(&self) -> i32 {
        let pages = self.bytes_per_command().div_ceil(4096).next_power_of_two();
        i32::try_from(pages * 4096).unwrap_or(i32::MAX)
    }

    fn cmd_h(index: usize, seq: u32) -> u32 {
        (seq << SLOT_BITS) | index as u32
    }

    /// Make the poll fd readable, unless it is.
    fn signal(&self) {
        if !self.signalled.swap(true, Ordering::SeqCst) {
            self.counters.readiness_changes.fetch_add(1, Ordering::Relaxed);
            self.readiness.signal();
        }
    }

    /// A fetch found nothing: the poll fd stops being readable, unless a slot became
    /// deliverable meanwhile (then it is signalled again: readiness is never lost).
    fn unsignal(&self) {
        if self.signalled.swap(false, Ordering::SeqCst) {
            self.counters.readiness_changes.fetch_add(1, Ordering::Relaxed);
            self.readiness.clear();
        }
        if self.ready.load(Ordering::SeqCst) > 0 {
            self.signal();
        }
    }

    /// `n` slots became deliverable.
    fn more_ready(&self, n: isize) {
        if self.ready.fetch_add(n, Ordering::SeqCst) <= 0 {
            self.signal();
        }
    }

    /// `n` slots stopped being deliverable (the poll fd is cleared lazily, by
    /// [`Self::unsignal`]).
    fn less_ready(&self, n: isize) {
        self.ready.fetch_sub(n, Ordering::SeqCst);
    }

    fn lba(&self, index: usize, seq: u32) -> u64 {
        let blocks = u64::from(self.config.blocks_per_command);
        let units = self.config.region_blocks / blocks;
        // A function of the command's slot and sequence number, so its ALLOC_MEM and EXEC agree.
        let unit = if self.config.random {
            splitmix64(self.config.seed ^ ((index as u64) << 32 | u64::from(seq))) % units
        } else {
            (u64::from(seq) * self.slots.len() as u64 + index as u64) % units
        };
        unit * blocks
    }

    /// Deliver what slot `index` has, into `out`; false if it has nothing.
    fn take(&self, index: usize, out: &mut GetCmd, tally: &mut Tally) -> bool {
        let slot = &self.slots[index];
        let current = slot.state.load(Ordering::Acquire);
        let pbuf = slot.pbuf.load(Ordering::Acquire);
        let (next, fill): (u8, Fill) = match current {
            state::IDLE if !self.running.load(Ordering::Acquire) => {
                if pbuf == 0 {
                    if slot
                        .state
                        .compare_exchange(current, state::DONE, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        self.less_ready(1);
                    }
                    return false;
                }
                (state::CACHE_FREE_OUT, Self::fill_cache_free)
            }
            state::IDLE if self.config.write && pbuf == 0 => (state::ALLOC_OUT, Self::fill_alloc_mem),
            state::IDLE | state::EXEC_READY => (state::EXEC_OUT, Self::fill_exec),
            state::FREE_READY => (state::FREE_OUT, Self::fill_on_free),
            _ => return false,
        };
        if slot
            .state
            .compare_exchange(current, next, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        tally.taken += 1;
        // A new command (not the EXEC after its ALLOC_MEM, nor its ON_FREE_CMD) gets a new
        // handle. The successful exchange above made this caller the slot's only writer until
        // the reply: a load and a store, no read-modify-write.
        let mut seq = slot.seq.load(Ordering::Acquire);
        if current == state::IDLE && next != state::CACHE_FREE_OUT {
            seq = seq.wrapping_add(1);
            slot.seq.store(seq, Ordering::Release);
        }
        fill(self, index, seq & ((1 << (32 - SLOT_BITS)) - 1), pbuf, out);
        tally.delivered += 1;
        true
    }

    fn fill_exec(&self, index: usize, seq: u32, pbuf: u64, out: &mut GetCmd) {
        let lba = self.lba(index, seq);
        let blocks = self.config.blocks_per_command;
        let bytes = self.bytes_per_command() as i32;
        let (cdb, cdb_len) = rw_cdb(self.config.write, lba, blocks);
        out.cmd_h = Self::cmd_h(index, seq);
        out.subcode = abi::SCST_USER_EXEC;
        out.write_payload(&abi::ScsiCmdExec {
            sess_h: SESS_H,
            cdb,
            cdb_len,
            lba: lba as i64,
            data_len: i64::from(bytes),
            bufflen: bytes,
            alloc_len: if pbuf == 0 { self.alloc_len() } else { 0 },
            pbuf,
            queue_type: abi::queue_type::SIMPLE,
            data_direction: if self.config.write {
                abi::data_direction::WRITE
            } else {
                abi::data_direction::READ
            },
            timeout: EXEC_TIMEOUT_S,
            sn: seq,
            ..Default::default()
        });
    }

    fn fill_alloc_mem(&self, index: usize, seq: u32, _pbuf: u64, out: &mut GetCmd) {
        let lba = self.lba(index, seq);
        let (cdb, cdb_len) = rw_cdb(true, lba, self.config.blocks_per_command);
        out.cmd_h = Self::cmd_h(index, seq);
        out.subcode = abi::SCST_USER_ALLOC_MEM;
        out.write_payload(&abi::ScsiCmdAllocMem {
            sess_h: SESS_H,
            cdb,
            cdb_len,
            alloc_len: self.alloc_len(),
            queue_type: abi::queue_type::SIMPLE,
            data_direction: abi::data_direction::WRITE,
            sn: seq,
            ..Default::default()
        });
    }

    fn fill_on_free(&self, index: usize, seq: u32, pbuf: u64, out: &mut GetCmd) {
        out.cmd_h = Self::cmd_h(index, seq);
        out.subcode = abi::SCST_USER_ON_FREE_CMD;
        out.write_payload(&abi::ScsiOnFreeCmd {
            pbuf,
            resp_data_len: if self.config.write {
                0
            } else {
                self.bytes_per_command() as i32
            },
            buffer_cached: 1,
            ..Default::default()
        });
    }

    fn fill_cache_free(&self, index: usize, seq: u32, pbuf: u64, out: &mut GetCmd) {
        // The owner's handle (spec §3.6 step 5): the command that brought the buffer.
        out.cmd_h = Self::cmd_h(index, seq);
        out.subcode = abi::SCST_USER_ON_CACHED_MEM_FREE;
        out.write_payload(&abi::OnCachedMemFree { pbuf });
    }

    /// Apply one reply; false if it is wrong (counted). A slot it makes deliverable is counted
    /// in `ready` by the caller: [`Self::applied`].
    fn apply(&self, reply: &ReplyCmd, tally: &mut Tally) -> bool {
        let index = (reply.cmd_h & ((1 << SLOT_BITS) - 1)) as usize;
        let Some(slot) = self.slots.get(index) else {
            return self.bad("reply for a slot that does not exist", reply);
        };
        let seq_mask = (1u32 << (32 - SLOT_BITS)) - 1;
        if slot.seq.load(Ordering::Acquire) & seq_mask != reply.cmd_h >> SLOT_BITS {
            return self.bad("reply with a stale or unknown handle", reply);
        }
        let current = slot.state.load(Ordering::Acquire);
        let next = match (current, reply.subcode) {
            (state::EXEC_OUT, abi::SCST_USER_EXEC) => {
                if !self.exec_reply_ok(slot, reply) {
                    return self.bad("EXEC reply not GOOD, wrong length or buffer", reply);
                }
                tally.commands += 1;
                if self.config.on_free_cmd {
                    state::FREE_READY
                } else {
                    state::IDLE
                }
            }
            (state::ALLOC_OUT, abi::SCST_USER_ALLOC_MEM) => {
                let answer: abi::AllocMemReply = reply.read_payload();
                if answer.pbuf == 0 || !answer.pbuf.is_multiple_of(4096) {
                    return self.bad("ALLOC_MEM answered without a page-aligned buffer", reply);
                }
                tally.alloc_mem += 1;
                slot.pbuf.store(answer.pbuf, Ordering::Release);
                state::EXEC_READY
            }
            (state::FREE_OUT, abi::SCST_USER_ON_FREE_CMD) => {
                tally.on_free_cmd += 1;
                state::IDLE
            }
            (state::CACHE_FREE_OUT, abi::SCST_USER_ON_CACHED_MEM_FREE) => {
                tally.cached_frees += 1;
                slot.pbuf.store(0, Ordering::Release);
                state::IDLE
            }
            _ => return self.bad("reply for a message the replay did not send", reply),
        };
        slot.state.store(next, Ordering::Release);
        true
    }

    /// Add a call's tally to the counters, and the slots its replies made deliverable (every
    /// reply applied makes its slot deliverable) less those it took to `ready`. `ready` runs behind the slots by at most one call's worth (a
    /// slot made deliverable and taken by another worker before this adds it): an over- or
    /// under-count for that moment only makes the poll fd readable once too often or a call
    /// later, never lost (the next fetch that finds nothing re-reads it, [`Self::unsignal`]).
    fn applied(&self, tally: &Tally) {
        let c = &self.counters;
        for (counter, n) in [
            (&c.commands, tally.commands),
            (&c.delivered, tally.delivered),
            (&c.alloc_mem, tally.alloc_mem),
            (&c.on_free_cmd, tally.on_free_cmd),
            (&c.cached_frees, tally.cached_frees),
        ] {
            if n > 0 {
                counter.fetch_add(n, Ordering::Relaxed);
            }
        }
        let became_ready = tally.commands + tally.alloc_mem + tally.on_free_cmd + tally.cached_frees;
        let net = became_ready as isize - tally.taken as isize;
        if net > 0 {
            self.more_ready(net);
        } else if net < 0 {
            self.less_ready(-net);
        }
    }

    fn exec_reply_ok(&self, slot: &Slot, reply: &ReplyCmd) -> bool {
        let answer: abi::ExecReply = reply.read_payload();
        if answer.reply_type != abi::exec_reply_type::COMPLETED || answer.status != abi::sam_status::GOOD {
            return false;
        }
        if self.config.write {
            return answer.resp_data_len == 0;
        }
        if i64::from(answer.resp_data_len) != self.bytes_per_command() as i64 {
            return false;
        }
        match slot.pbuf.load(Ordering::Acquire) {
            // A miss: the reply names the new buffer, which SCST now caches (spec §3.5).
            0 if answer.pbuf != 0 && answer.pbuf.is_multiple_of(4096) => {
                slot.pbuf.store(answer.pbuf, Ordering::Release);
                true
            }
            0 => false,
            _ => answer.pbuf == 0,
        }
    }

    fn bad(&self, why: &str, reply: &ReplyCmd) -> bool {
        self.counters.bad_replies.fetch_add(1, Ordering::Relaxed);
        log::error!(
            "replay: {why}: cmd_h {:#x} subcode {:#x}",
            reply.cmd_h,
            reply.subcode
        );
        false
    }
}

impl ScstUserFd for ReplayKernel {
    fn register_device(&self, _desc: &DevDesc) -> IoctlResult {
        Ok(())
    }

    fn unregister_device(&self) -> IoctlResult {
        Ok(())
    }

    fn set_options(&self, _opt: &Opt) -> IoctlResult {
        Ok(())
    }

    fn get_options(&self) -> IoctlResult<Opt> {
        Ok(crate::transport::register::default_options())
    }

    fn reply_and_get_cmd(&self, _cmd: &mut GetCmd) -> IoctlResult {
        // The frontend uses REPLY_AND_GET_MULTI only.
        Err(Errno::EINVAL)
    }

    fn reply_cmd(&self, reply: &ReplyCmd) -> IoctlResult {
        let mut tally = Tally::default();
        let ok = self.apply(reply, &mut tally);
        self.applied(&tally);
        if ok {
            Ok(())
        } else {
            Err(Errno::ESRCH)
        }
    }

    fn flush_cache(&self) -> IoctlResult {
        Ok(())
    }

    fn device_capacity_changed(&self) -> IoctlResult {
        Ok(())
    }

    fn get_extended_cdb(&self, _arg: &GetExtCdb) -> IoctlResult {
        // Every replayed CDB fits the inline 16 bytes.
        Err(Errno::EINVAL)
    }

    fn prealloc_buffer(&self, _arg: &mut PreallocBuffer) -> IoctlResult {
        Err(Errno::EINVAL)
    }

    fn reply_and_get_multi(&self, arg: &mut MultiBuffer) -> IoctlResult {
        self.counters.calls.fetch_add(1, Ordering::Relaxed);
        let mut header = arg.header();
        let replies = usize::try_from(header.replies_cnt).unwrap_or(0);
        if replies > 0 && header.preplies == 0 {
            return Err(Errno::EFAULT);
        }
        let base = header.preplies as usize as *const ReplyCmd;
        let mut tally = Tally::default();
        for i in 0..replies {
            // SAFETY: `preplies` names `replies_cnt` contiguous replies that the caller keeps
            // alive and unchanged for the duration of this call (the ScstUserFd contract, as for
            // the kernel's copy_from_user of the same array); read_unaligned makes no alignment
            // assumption about a user address.
            let reply = unsafe { std::ptr::read_unaligned(base.add(i)) };
            if !self.apply(&reply, &mut tally) {
                self.applied(&tally);
                header.replies_done = i as i16;
                header.cmds_cnt = 0;
                arg.set_header(header);
                return Err(Errno::ESRCH);
            }
        }
        header.replies_done = replies as i16;
        let want = usize::try_from(header.cmds_cnt).unwrap_or(0).min(arg.capacity());
        let start = self.cursor.fetch_add(want.max(1), Ordering::Relaxed);
        let mut fetched = 0;
        for step in 0..self.slots.len() {
            if fetched == want {
                break;
            }
            let index = (start + step) % self.slots.len();
            if self.take(index, arg.cmd_mut(fetched), &mut tally) {
                fetched += 1;
            }
        }
        self.applied(&tally);
        header.cmds_cnt = fetched as i16;
        arg.set_header(header);
        if fetched == 0 && want > 0 {
            self.unsignal();
            return Err(Errno::EAGAIN);
        }
        Ok(())
    }

    fn poll_fd(&self) -> BorrowedFd<'_> {
        self.readiness.as_fd()
    }
}

/// READ(10)/WRITE(10) where the LBA and length fit, else READ(16)/WRITE(16).
fn rw_cdb(write: bool, lba: u64, blocks: u32) -> ([u8; abi::SCST_MAX_CDB_SIZE], u16) {
    let mut cdb = [0u8; abi::SCST_MAX_CDB_SIZE];
    match (u32::try_from(lba), u16::try_from(blocks)) {
        (Ok(lba), Ok(blocks)) => {
            cdb[0] = if write { 0x2a } else { 0x28 };
            cdb[2..6].copy_from_slice(&lba.to_be_bytes());
            cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
            (cdb, 10)
        }
        _ => {
            cdb[0] = if write { 0x8a } else { 0x88 };
            cdb[2..10].copy_from_slice(&lba.to_be_bytes());
            cdb[10..14].copy_from_slice(&blocks.to_be_bytes());
            (cdb, 16)
        }
    }
}

/// SplitMix64: a cheap, well-mixed hash of a counter (the random LBAs).
fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests;
