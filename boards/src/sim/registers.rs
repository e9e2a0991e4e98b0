//! The SCA-1 register file of the simulated board (accelerator.md §1, §2) and the per-queue
//! engine state it shares with the engines, behind one lock in [`Board`](super::board),
//! except the registers the host writes on every command ([`Posted`]: the doorbells and
//! INT_STATUS), which take no lock, so that the driver's I/O path never waits for an engine.
//!
//! This module is plain data and decoding: no threads, no DMA. A register write returns the
//! [`Effects`] the board must carry out after dropping the lock (wake engines, start a reset,
//! raise vectors), so that no lock is held across an interrupt or a DMA.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use super::SimConfig;
use crate::sca1::regs::coalesce;
use crate::sca1::regs::control;
use crate::sca1::regs::doorbell;
use crate::sca1::regs::global;
use crate::sca1::regs::queue;
use crate::sca1::regs::status;
use crate::sca1::regs::ID_VALUE;

/// Ring base IOVAs must be 4 KiB aligned (§2).
const RING_ALIGN: u64 = 4096;

/// `mask` if `on`, else 0.
fn bit(on: bool, mask: u32) -> u32 {
    if on {
        mask
    } else {
        0
    }
}

/// Marks a posted doorbell write not yet applied.
const PENDING: u64 = 1 << 63;
/// The bits of a queue's RUN stamp carried by a posted doorbell write.
const STAMP_MASK: u32 = 0x7FFF_FFFF;

/// The registers the host writes on every command, outside the state lock: per queue the two
/// doorbells, and INT_STATUS.
///
/// A doorbell write is posted, as on the bus: its value is stored with the RUN stamp the
/// queue had when it was written (`epoch << 1 | RUN`, published by the state at every RUN
/// change and reset), and the queue's engine applies it at its next look at the state
/// ([`BoardState::apply_posted`]), where a write made while RUN was 0, or under another RUN
/// epoch, or out of the ring's range, is ignored as it always was. One slot per doorbell,
/// holding the newest write: a tail or head register keeps only its last value, so the
/// slot is bounded and nothing the engine needs is lost. INT_STATUS is an atomic the engines
/// set (`fetch_or`) and the host's INT_STATUS_CLEAR clears (`fetch_and`).
#[derive(Debug)]
pub(crate) struct Posted {
    queues: Vec<PostedQueue>,
    /// INT_STATUS in bits 31:0; in bits 63:32, per queue, whether its vector was raised since
    /// its INT_STATUS bit was last cleared (the REARM latch, §9). One word, so that
    /// INT_STATUS_CLEAR re-arms a queue in the same atomic step that clears its bit, and an
    /// engine's completion sees either both before the clear or both after it.
    int_status: AtomicU64,
}

#[derive(Debug, Default)]
struct PostedQueue {
    /// The queue's RUN stamp as last published.
    run_stamp: AtomicU64,
    /// The newest SQ_TAIL write not yet applied (`PENDING | stamp << 32 | value`), or 0.
    sq_tail: AtomicU64,
    /// The newest CQ_HEAD write not yet applied, likewise.
    cq_head: AtomicU64,
}

impl PostedQueue {
    fn doorbell(&self, head: bool) -> &AtomicU64 {
        if head {
            &self.cq_head
        } else {
            &self.sq_tail
        }
    }
}

impl Posted {
    fn new(queues: usize) -> Self {
        Self {
            queues: (0..queues).map(|_| PostedQueue::default()).collect(),
            int_status: AtomicU64::new(0),
        }
    }

    /// A doorbell write of queue `q` (CQ_HEAD when `head`): posted with the queue's RUN stamp.
    pub(crate) fn post(&self, q: usize, head: bool, value: u32) {
        let Some(pq) = self.queues.get(q) else {
            return;
        };
        let stamp = (pq.run_stamp.load(Ordering::Acquire) as u32) & STAMP_MASK;
        pq.doorbell(head).store(
            PENDING | (u64::from(stamp) << 32) | u64::from(value),
            Ordering::Release,
        );
    }

    /// INT_STATUS_CLEAR (W1C): clears the bits and re-arms their queues (§9).
    pub(crate) fn clear_int_status(&self, bits: u32) {
        let bits = u64::from(bits);
        self.int_status.fetch_and(!(bits | bits << 32), Ordering::AcqRel);
    }

    /// INT_STATUS.
    pub(crate) fn int_status(&self) -> u32 {
        self.int_status.load(Ordering::Acquire) as u32
    }

    /// Set INT_STATUS bit `q`. Returns whether queue `q`'s vector was raised since the host
    /// last cleared the bit (the queue is not re-armed). Release: a host that clears the bit
    /// after this sees the completion entry written before it.
    fn set_int_status(&self, q: usize) -> bool {
        let before = self.int_status.fetch_or(1 << q, Ordering::AcqRel);
        before & (1 << (32 + q)) != 0
    }

    /// Queue `q`'s vector is raised (or latched while masked): under REARM, no other until
    /// the host clears its INT_STATUS bit.
    fn note_raised(&self, q: usize) {
        self.int_status.fetch_or(1 << (32 + q), Ordering::AcqRel);
    }

    /// Whether queue `q`'s vector was raised since its INT_STATUS bit was last cleared.
    fn raised(&self, q: usize) -> bool {
        self.int_status.load(Ordering::Acquire) & (1 << (32 + q)) != 0
    }
}

/// One queue's registers and engine state.
#[derive(Clone, Debug, Default)]
pub(crate) struct QueueState {
    /// SQ_BASE.
    pub sq_base: u64,
    /// CQ_BASE.
    pub cq_base: u64,
    /// RING_SIZE.
    pub ring_size: u32,
    /// Q_CONTROL.RUN.
    pub run: bool,
    /// Q_VECTOR.
    pub vector: u32,
    /// Q_STATUS.ERROR: halted (§8).
    pub halted: bool,
    /// Q_ERROR.
    pub error: u32,
    /// Q_ERROR_INDEX.
    pub error_index: u32,
    /// Q_STATUS.BUSY: the engine holds a descriptor.
    pub busy: bool,
    /// Bumped by every RUN change and reset: an engine holding a descriptor taken under an
    /// older epoch abandons it.
    pub epoch: u64,
    /// Last SQ_TAIL doorbell applied ([`Posted`]).
    pub sq_tail: u32,
    /// Engine's submission head.
    pub sq_head: u32,
    /// Sequence number the next descriptor must carry (§3).
    pub seq: u32,
    /// Last CQ_HEAD doorbell applied ([`Posted`]).
    pub cq_head: u32,
    /// Next completion slot.
    pub cq_tail: u32,
    /// PHASE of the current pass (§4).
    pub phase: bool,
    /// Completions posted since the last interrupt (§9 coalescing).
    pub coalesced: u32,
    /// When the oldest of them was posted.
    pub first_pending: Option<Instant>,
    /// An interrupt came due while masked: deliver it on unmask (MSI-X pending bit).
    pub latched: bool,
    /// The queue's engine thread keeps descriptors fetched ahead or completions withheld:
    /// only it may run the queue (a doorbell's writer leaves it alone, `engine::run_inline`).
    pub engine_holds: bool,
}

impl QueueState {
    /// RUN 0 → 1: the ring state starts over (§2, §3, §4).
    fn start(&mut self) {
        self.run = true;
        self.epoch += 1;
        self.halted = false;
        self.error = 0;
        self.error_index = 0;
        self.sq_tail = 0;
        self.sq_head = 0;
        self.seq = 0;
        self.cq_head = 0;
        self.cq_tail = 0;
        self.phase = true;
        self.coalesced = 0;
        self.first_pending = None;
        self.latched = false;
    }

    /// The RUN stamp posted doorbell writes are checked against.
    fn run_stamp(&self) -> u64 {
        (self.epoch << 1) | u64::from(self.run)
    }

    /// A completion ring with one free slot short of full: the engine keeps one slot empty so
    /// that CQ_HEAD == tail always means "empty" (the NVMe rule; the host likewise keeps at most
    /// RING_SIZE - 1 descriptors outstanding).
    pub(crate) fn cq_full(&self) -> bool {
        self.ring_size == 0 || (self.cq_tail + 1) % self.ring_size == self.cq_head
    }
}

/// What the board must do after a register write, outside the lock.
#[derive(Debug, Default)]
pub(crate) struct Effects {
    /// Every engine must re-check its conditions.
    pub wake: bool,
    /// Only this queue's engine must (a doorbell of that queue).
    pub wake_queue: Option<usize>,
    /// CONTROL.SOFT_RESET was written.
    pub soft_reset: bool,
    /// Vectors to raise (latched interrupts released by an unmask).
    pub raise: Vec<u32>,
}

/// The whole register file.
#[derive(Debug)]
pub(crate) struct BoardState {
    /// CONTROL.ENABLE.
    pub enable: bool,
    /// A reset is in progress (CONTROL.SOFT_RESET reads 1, STATUS.RESETTING).
    pub resetting: bool,
    /// STATUS.FATAL.
    pub fatal: bool,
    /// FATAL_CODE.
    pub fatal_code: u32,
    /// The doorbells and INT_STATUS, shared with the BAR path outside the lock.
    posted: Arc<Posted>,
    /// INT_MASK.
    pub int_mask: u32,
    /// INT_COALESCE.
    pub int_coalesce: u32,
    /// The bits of INT_COALESCE this engine implements (REARM from contract 1.2).
    coalesce_bits: u32,
    /// Bumped by every reset; a hung engine waits for it to change.
    pub reset_epoch: u64,
    /// Per-queue state.
    pub queues: Vec<QueueState>,
    /// Bits of INT_STATUS/INT_MASK that name a queue.
    queue_bits: u32,
    /// The largest RING_SIZE a queue may run with, 2^CAP0.max_ring (§2).
    max_ring_entries: u32,
}

impl BoardState {
    /// The state after power-on: as after a reset. `rearm`: the engine implements
    /// INT_COALESCE.REARM (contract 1.2); `max_ring_entries`: 2^CAP0.max_ring.
    pub(crate) fn new(queues: u32, rearm: bool, max_ring_entries: u32) -> Self {
        let queue_bits = if queues >= 32 {
            u32::MAX
        } else {
            (1u32 << queues) - 1
        };
        let mut s = Self {
            enable: false,
            resetting: false,
            fatal: false,
            fatal_code: 0,
            posted: Arc::new(Posted::new(queues as usize)),
            int_mask: queue_bits,
            int_coalesce: 0,
            coalesce_bits: if rearm {
                coalesce::COUNT_AND_TIME | coalesce::REARM
            } else {
                coalesce::COUNT_AND_TIME
            },
            reset_epoch: 0,
            queues: vec![QueueState::default(); queues as usize],
            queue_bits,
            max_ring_entries,
        };
        s.apply_reset();
        s.resetting = false;
        s
    }

    /// §7: stop every queue and return every register to its reset value (ENABLE = 0, RUN = 0,
    /// masks set, rings unset, FATAL cleared). BUSY is left to the engines, which clear it when
    /// they notice the new epoch; the reset completes when none is busy
    /// ([`BoardState::finish_reset_if_idle`]).
    pub(crate) fn apply_reset(&mut self) {
        self.enable = false;
        self.resetting = true;
        self.fatal = false;
        self.fatal_code = 0;
        self.posted.int_status.store(0, Ordering::Release);
        self.int_mask = self.queue_bits;
        self.int_coalesce = 0;
        self.reset_epoch += 1;
        for q in &mut self.queues {
            let busy = q.busy;
            let epoch = q.epoch + 1;
            let engine_holds = q.engine_holds;
            *q = QueueState {
                busy,
                epoch,
                engine_holds,
                ..QueueState::default()
            };
        }
        for q in 0..self.queues.len() {
            self.publish_run(q);
        }
    }

    /// The registers kept outside the lock ([`Posted`]).
    pub(crate) fn posted(&self) -> Arc<Posted> {
        Arc::clone(&self.posted)
    }

    /// Publish queue `q`'s RUN stamp: after every change of its RUN bit or epoch.
    fn publish_run(&self, q: usize) {
        self.posted.queues[q]
            .run_stamp
            .store(self.queues[q].run_stamp(), Ordering::Release);
    }

    /// Apply queue `q`'s posted doorbell writes (its engine calls this at every look at the
    /// state). A write made while RUN was 0 or under another RUN epoch, or beyond the ring,
    /// is ignored (§2: a doorbell of a stopped queue does nothing).
    pub(crate) fn apply_posted(&mut self, q: usize) {
        let Some(pq) = self.posted.queues.get(q) else {
            return;
        };
        for head in [false, true] {
            let slot = pq.doorbell(head);
            if slot.load(Ordering::Relaxed) & PENDING == 0 {
                continue;
            }
            let word = slot.swap(0, Ordering::Acquire);
            if word & PENDING == 0 {
                continue;
            }
            let stamp = ((word >> 32) as u32) & STAMP_MASK;
            let value = word as u32;
            let qs = &mut self.queues[q];
            let current = (qs.run_stamp() as u32) & STAMP_MASK;
            if stamp != current || stamp & 1 == 0 || value >= qs.ring_size {
                log::warn!(
                    "sim: queue {q} doorbell {value} ignored (RUN={}, ring {}, written {})",
                    qs.run,
                    qs.ring_size,
                    if stamp == current {
                        "in this RUN epoch"
                    } else {
                        "in another RUN epoch"
                    }
                );
                continue;
            }
            if head {
                qs.cq_head = value;
            } else {
                qs.sq_tail = value;
            }
        }
    }

    /// Set INT_STATUS bit `q` for a completion signalled later ([`BoardState::signal_burst`]).
    pub(crate) fn set_int_status(&self, q: usize) {
        self.posted.set_int_status(q);
    }

    /// INT_COALESCE.REARM is set (§9).
    fn rearm(&self) -> bool {
        self.int_coalesce & coalesce::REARM != 0
    }

    /// Any engine holds a descriptor (STATUS.BUSY).
    pub(crate) fn any_busy(&self) -> bool {
        self.queues.iter().any(|q| q.busy)
    }

    /// End a reset once no engine holds a descriptor: from then on no DMA is in progress or
    /// will start (§7). Returns whether a reset just completed.
    pub(crate) fn finish_reset_if_idle(&mut self) -> bool {
        if self.resetting && !self.any_busy() {
            self.resetting = false;
            return true;
        }
        false
    }

    /// The engine of queue `q` may take descriptors.
    pub(crate) fn runnable(&self, q: usize) -> bool {
        let qs = &self.queues[q];
        self.enable && !self.fatal && !self.resetting && qs.run && !qs.halted
    }

    /// Halt queue `q` (§8): ERROR with `error` at ring index `index`.
    pub(crate) fn halt(&mut self, q: usize, error: u8, index: u32) {
        let qs = &mut self.queues[q];
        qs.halted = true;
        qs.error = u32::from(error);
        qs.error_index = index;
    }

    /// Queues currently halted.
    pub(crate) fn halted_queues(&self) -> u32 {
        self.queues.iter().filter(|q| q.halted).count() as u32
    }

    /// INT_COALESCE count threshold (0 means 1) and delay.
    fn coalesce_limits(&self) -> (u32, Duration) {
        let count = (self.int_coalesce & 0xff).max(1);
        let micros = (self.int_coalesce >> 8) & 0xffff;
        (count, Duration::from_micros(u64::from(micros)))
    }

    /// Queue `q` posted a completion at `now` (§9): set INT_STATUS bit q, count it for
    /// coalescing, and return the vector to raise if an interrupt is now due. Under REARM, a
    /// completion posted after the queue's vector was raised and before the host cleared its
    /// bit is not counted and raises nothing: the host clears the bit before it looks at the
    /// ring and sleeps, so it finds this entry by that look.
    ///
    /// `now` is called only when the time matters: with a count above 1 (a count of 1 is
    /// reached by this completion, the driver's default), so the clock is not read per
    /// completion for nothing.
    pub(crate) fn note_completion(&mut self, q: usize, now: impl FnOnce() -> Instant) -> Option<u32> {
        if self.posted.set_int_status(q) && self.rearm() {
            return None;
        }
        let (count, _) = self.coalesce_limits();
        if count <= 1 && self.queues[q].first_pending.is_none() {
            return self.deliver(q);
        }
        let now = now();
        let qs = &mut self.queues[q];
        qs.coalesced += 1;
        qs.first_pending.get_or_insert(now);
        self.interrupt_if_due(q, now)
    }

    /// When queue `q`'s coalescing timer fires, if it is running.
    pub(crate) fn coalesce_deadline(&self, q: usize) -> Option<Instant> {
        let (_, delay) = self.coalesce_limits();
        self.queues[q].first_pending.map(|first| first + delay)
    }

    /// §9: raise when the count is reached or the time has elapsed (0 = immediately); a masked
    /// queue latches the interrupt instead, delivered on unmask.
    pub(crate) fn interrupt_if_due(&mut self, q: usize, now: Instant) -> Option<u32> {
        let (count, delay) = self.coalesce_limits();
        let qs = &self.queues[q];
        let first = qs.first_pending?;
        if qs.coalesced < count && now < first + delay {
            return None;
        }
        self.deliver(q)
    }

    /// A burst of withheld completions, posted (INT_STATUS set for each): one interrupt for
    /// the lot whatever the count and time say, which also signals any coalesced completions
    /// still waiting. Under REARM, none if the vector was raised since the host last cleared
    /// the bit (the host looks at the ring before it sleeps).
    pub(crate) fn signal_burst(&mut self, q: usize) -> Option<u32> {
        if self.rearm() && self.posted.raised(q) {
            let qs = &mut self.queues[q];
            qs.coalesced = 0;
            qs.first_pending = None;
            return None;
        }
        self.deliver(q)
    }

    /// Queue `q`'s interrupt is due: the vector to raise, or none when masked (latched,
    /// delivered on unmask). Under REARM the queue is then not armed until its bit is cleared.
    fn deliver(&mut self, q: usize) -> Option<u32> {
        if self.rearm() {
            self.posted.note_raised(q);
        }
        let masked = self.int_mask & (1 << q) != 0;
        let qs = &mut self.queues[q];
        qs.coalesced = 0;
        qs.first_pending = None;
        if masked {
            qs.latched = true;
            return None;
        }
        Some(qs.vector)
    }

    /// A register read (the board answers all-ones itself once the device is gone).
    pub(crate) fn read32(&self, config: &SimConfig, offset: u64) -> u32 {
        if let Some((q, reg)) = self.queue_register(offset) {
            let qs = &self.queues[q];
            return match reg {
                queue::SQ_BASE => qs.sq_base as u32,
                r if r == queue::SQ_BASE + 4 => (qs.sq_base >> 32) as u32,
                queue::CQ_BASE => qs.cq_base as u32,
                r if r == queue::CQ_BASE + 4 => (qs.cq_base >> 32) as u32,
                queue::RING_SIZE => qs.ring_size,
                queue::Q_CONTROL => bit(qs.run, queue::RUN),
                queue::Q_STATUS => bit(qs.busy, queue::BUSY) | bit(qs.halted, queue::ERROR),
                queue::Q_ERROR => qs.error,
                queue::Q_ERROR_INDEX => qs.error_index,
                queue::Q_VECTOR => qs.vector,
                _ => 0,
            };
        }
        match offset {
            global::ID => ID_VALUE,
            global::VERSION => config.version(),
            global::CAP0 => config.cap0(),
            global::CAP1 => config.cap1(),
            global::CAPACITY => config.num_blocks as u32,
            o if o == global::CAPACITY + 4 => (config.num_blocks >> 32) as u32,
            global::BLOCK_SIZE => config.block_size,
            global::TIMEOUTS => config.timeouts(),
            global::CONTROL => bit(self.enable, control::ENABLE) | bit(self.resetting, control::SOFT_RESET),
            global::STATUS => {
                let ready = self.enable && !self.fatal && !self.resetting;
                bit(ready, status::READY)
                    | bit(self.fatal, status::FATAL)
                    | bit(self.any_busy(), status::BUSY)
                    | bit(self.resetting, status::RESETTING)
            }
            global::FATAL_CODE => self.fatal_code,
            global::INT_STATUS => self.posted.int_status(),
            global::INT_MASK => self.int_mask,
            global::INT_COALESCE => self.int_coalesce,
            // Write-only aliases, doorbells and holes read 0 (reserved bits read 0).
            _ => 0,
        }
    }

    /// A register write. Writes while a reset is in progress are dropped, as a function in
    /// reset ignores its BAR.
    pub(crate) fn write32(&mut self, offset: u64, value: u32, now: Instant) -> Effects {
        let mut fx = Effects::default();
        if self.resetting {
            log::debug!("sim: write {value:#x} at {offset:#x} dropped during reset");
            return fx;
        }
        if let Some((q, reg)) = self.queue_register(offset) {
            self.write_queue_register(q, reg, value, &mut fx);
            return fx;
        }
        if let Some((q, head)) = self.doorbell(offset) {
            // The board posts doorbells before taking the lock; a write that reaches here
            // (the model's own tests) is posted the same way.
            self.posted.post(q, head, value);
            fx.wake_queue = Some(q);
            return fx;
        }
        match offset {
            global::CONTROL => {
                if value & control::SOFT_RESET != 0 {
                    fx.soft_reset = true;
                    return fx;
                }
                self.enable = value & control::ENABLE != 0;
                fx.wake = true;
            }
            global::INT_STATUS_CLEAR => self.posted.clear_int_status(value & self.queue_bits),
            global::INT_MASK_SET => self.int_mask |= value & self.queue_bits,
            global::INT_MASK_CLEAR => {
                let cleared = value & self.queue_bits;
                self.int_mask &= !cleared;
                for (q, qs) in self.queues.iter_mut().enumerate() {
                    if cleared & (1 << q) != 0 && qs.latched {
                        qs.latched = false;
                        fx.raise.push(qs.vector);
                    }
                }
                // A coalescing timer may have come due while masked.
                for q in 0..self.queues.len() {
                    if cleared & (1 << q) != 0 {
                        fx.raise.extend(self.interrupt_if_due(q, now));
                    }
                }
            }
            global::INT_COALESCE => {
                self.int_coalesce = value & self.coalesce_bits;
                fx.wake = true;
            }
            _ => log::debug!("sim: write {value:#x} to read-only or reserved offset {offset:#x} ignored"),
        }
        fx
    }

    fn write_queue_register(&mut self, q: usize, reg: u64, value: u32, fx: &mut Effects) {
        let ring_reg = matches!(reg, 0x00..=0x13);
        if ring_reg && self.queues[q].run {
            log::warn!("sim: queue {q} register +{reg:#x} is writable only while RUN = 0 (§2); ignored");
            return;
        }
        if reg == queue::Q_CONTROL && value & queue::RUN == 0 && self.queues[q].run {
            // Posted writes keep their order on the bus: a doorbell the host wrote before this
            // stop reaches the queue before the stop does (and is not lost as a write of
            // another RUN epoch).
            self.apply_posted(q);
        }
        let qs = &mut self.queues[q];
        match reg {
            queue::SQ_BASE => qs.sq_base = (qs.sq_base & !0xffff_ffff) | u64::from(value),
            r if r == queue::SQ_BASE + 4 => {
                qs.sq_base = (qs.sq_base & 0xffff_ffff) | (u64::from(value) << 32)
            }
            queue::CQ_BASE => qs.cq_base = (qs.cq_base & !0xffff_ffff) | u64::from(value),
            r if r == queue::CQ_BASE + 4 => {
                qs.cq_base = (qs.cq_base & 0xffff_ffff) | (u64::from(value) << 32)
            }
            queue::RING_SIZE => qs.ring_size = value,
            queue::Q_CONTROL => {
                let run = value & queue::RUN != 0;
                if run && !qs.run {
                    qs.start();
                    // A queue starts re-armed (§9): no interrupt of an earlier RUN epoch
                    // holds back the first one of this.
                    self.posted.clear_int_status(1 << q);
                    self.check_ring_config(q);
                } else if !run && qs.run {
                    // §6: the engine finishes or abandons what it holds, then clears BUSY.
                    qs.run = false;
                    qs.epoch += 1;
                }
                self.publish_run(q);
                fx.wake = true;
            }
            queue::Q_VECTOR => qs.vector = value,
            _ => log::debug!("sim: write {value:#x} to read-only queue {q} register +{reg:#x} ignored"),
        }
    }

    /// A queue started with a ring it cannot use halts at once with INVALID_FIELD, index 0,
    /// rather than DMA to a bogus address. A size above 2^CAP0.max_ring is one (§2: "a power
    /// of two from 2 to 2^CAP0.max_ring"): the engine's state may be sized on that bound.
    fn check_ring_config(&mut self, q: usize) {
        let qs = &self.queues[q];
        let size_ok =
            qs.ring_size >= 2 && qs.ring_size.is_power_of_two() && qs.ring_size <= self.max_ring_entries;
        let aligned = qs.sq_base.is_multiple_of(RING_ALIGN) && qs.cq_base.is_multiple_of(RING_ALIGN);
        if !size_ok || !aligned {
            log::warn!(
                "sim: queue {q} started with ring size {} SQ {:#x} CQ {:#x}: halted",
                qs.ring_size,
                qs.sq_base,
                qs.cq_base
            );
            self.halt(q, crate::sca1::desc::cq_status::INVALID_FIELD, 0);
        }
    }

    /// `(queue, register offset within its block)` for a per-queue register offset.
    fn queue_register(&self, offset: u64) -> Option<(usize, u64)> {
        let rel = offset.checked_sub(queue::QUEUE_BASE)?;
        let q = usize::try_from(rel / queue::QUEUE_STRIDE).ok()?;
        (q < self.queues.len()).then_some((q, rel % queue::QUEUE_STRIDE))
    }

    /// `(queue, is CQ_HEAD)` for a doorbell offset.
    fn doorbell(&self, offset: u64) -> Option<(usize, bool)> {
        doorbell_of(offset, self.queues.len())
    }
}

/// `(queue, is CQ_HEAD)` for a doorbell offset of a board with `queues` queues.
pub(crate) fn doorbell_of(offset: u64, queues: usize) -> Option<(usize, bool)> {
    let rel = offset.checked_sub(doorbell::BASE)?;
    let q = usize::try_from(rel / doorbell::STRIDE).ok()?;
    if q >= queues {
        return None;
    }
    match rel % doorbell::STRIDE {
        0 => Some((q, false)),
        0x1000 => Some((q, true)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soft_reset_reads_one_until_no_engine_is_busy() {
        let config = SimConfig::default();
        let mut st = BoardState::new(2, true, 1 << 12);
        st.write32(global::CONTROL, control::ENABLE, Instant::now());
        st.queues[1].busy = true;
        let fx = st.write32(global::CONTROL, control::SOFT_RESET, Instant::now());
        assert!(fx.soft_reset);
        st.apply_reset();
        assert!(!st.finish_reset_if_idle(), "queue 1 still holds a descriptor");
        assert_eq!(st.read32(&config, global::CONTROL), control::SOFT_RESET);
        assert_eq!(
            st.read32(&config, global::STATUS),
            status::BUSY | status::RESETTING
        );
        st.write32(global::INT_MASK_CLEAR, 0b11, Instant::now());
        assert_eq!(
            st.read32(&config, global::INT_MASK),
            0b11,
            "writes are dropped while resetting"
        );
        st.queues[1].busy = false;
        assert!(st.finish_reset_if_idle());
        assert_eq!(st.read32(&config, global::CONTROL), 0);
        assert_eq!(st.read32(&config, global::STATUS), 0);
    }

    /// Posted doorbells are applied lazily, at the engine's next look; a write made while RUN
    /// was 0 carries that RUN epoch and stays ignored after RUN is set again, and a write of
    /// the running queue is applied, the newest one winning.
    #[test]
    fn a_posted_doorbell_applies_only_in_the_run_epoch_it_was_written_in() {
        let now = Instant::now();
        let mut st = BoardState::new(1, true, 1 << 12);
        st.write32(global::CONTROL, control::ENABLE, now);
        st.write32(queue::reg(0, queue::SQ_BASE), 0x1000, now);
        st.write32(queue::reg(0, queue::CQ_BASE), 0x2000, now);
        st.write32(queue::reg(0, queue::RING_SIZE), 8, now);
        // Stopped: the write is posted, then RUN is set before the engine looks.
        st.write32(doorbell::sq_tail(0), 3, now);
        st.write32(queue::reg(0, queue::Q_CONTROL), queue::RUN, now);
        st.apply_posted(0);
        assert_eq!(st.queues[0].sq_tail, 0, "written while stopped: ignored");
        // Running: applied, the newest write of each doorbell; a CQ_HEAD past the model's tail
        // too (a host that reaped an entry before the engine's post took the lock to move the
        // tail: refusing it once dropped the host's doorbell and stalled the queue).
        st.write32(doorbell::sq_tail(0), 2, now);
        st.write32(doorbell::sq_tail(0), 5, now);
        st.write32(doorbell::cq_head(0), 1, now);
        st.apply_posted(0);
        assert_eq!((st.queues[0].sq_tail, st.queues[0].cq_head), (5, 1));
        // Beyond the ring: ignored.
        st.write32(doorbell::sq_tail(0), 8, now);
        st.apply_posted(0);
        assert_eq!(st.queues[0].sq_tail, 5);
        // Written while running, then RUN cleared before the engine looks: the earlier write
        // reaches the queue first, as posted writes keep their order.
        st.write32(doorbell::sq_tail(0), 6, now);
        st.write32(queue::reg(0, queue::Q_CONTROL), 0, now);
        assert_eq!(st.queues[0].sq_tail, 6, "applied before the stop");
        // Written while stopped, then RUN set again before the engine looks: ignored.
        st.write32(doorbell::sq_tail(0), 7, now);
        st.write32(queue::reg(0, queue::Q_CONTROL), queue::RUN, now);
        st.apply_posted(0);
        assert_eq!(st.queues[0].sq_tail, 0, "a write of an earlier RUN epoch");
    }

    #[test]
    fn coalescing_counts_completions_then_times_out_the_rest() {
        let mut st = BoardState::new(1, true, 1 << 12);
        st.write32(global::INT_MASK_CLEAR, 1, Instant::now());
        st.queues[0].vector = 0;
        st.write32(global::INT_COALESCE, 3 | (100 << 8), Instant::now());
        let t0 = Instant::now();
        assert_eq!(st.note_completion(0, || t0), None);
        assert_eq!(st.note_completion(0, || t0), None);
        assert_eq!(
            st.note_completion(0, || t0),
            Some(0),
            "third completion reaches the count"
        );
        assert_eq!(st.read32(&SimConfig::default(), global::INT_STATUS), 1);
        assert_eq!(st.note_completion(0, || t0), None);
        assert_eq!(st.coalesce_deadline(0), Some(t0 + Duration::from_micros(100)));
        assert_eq!(st.interrupt_if_due(0, t0 + Duration::from_micros(99)), None);
        assert_eq!(
            st.interrupt_if_due(0, t0 + Duration::from_micros(100)),
            Some(0),
            "timer"
        );
        assert_eq!(st.coalesce_deadline(0), None);

        // Masked: the interrupt is latched and delivered by the unmask.
        st.write32(global::INT_MASK_SET, 1, t0);
        st.write32(global::INT_COALESCE, 0, t0);
        assert_eq!(st.note_completion(0, || t0), None);
        assert_eq!(st.write32(global::INT_MASK_CLEAR, 1, t0).raise, vec![0]);
    }

    /// §9 REARM (contract 1.2): one interrupt per setting of the queue's INT_STATUS bit, a
    /// latched one included; INT_STATUS_CLEAR re-arms. A burst is held to it too. Without the
    /// bit every completion raises, and a 1.1 engine does not implement it.
    #[test]
    fn rearm_raises_once_per_setting_of_the_status_bit() {
        let t0 = Instant::now();
        let mut st = BoardState::new(1, true, 1 << 12);
        st.write32(global::INT_MASK_CLEAR, 1, t0);
        st.queues[0].vector = 0;
        st.write32(global::INT_COALESCE, coalesce::REARM, t0);
        assert_eq!(
            st.read32(&SimConfig::default(), global::INT_COALESCE),
            coalesce::REARM
        );
        assert_eq!(st.note_completion(0, || t0), Some(0), "armed: the first raises");
        assert_eq!(
            st.note_completion(0, || t0),
            None,
            "not re-armed: posted silently"
        );
        st.set_int_status(0);
        assert_eq!(st.signal_burst(0), None, "a burst too");
        assert_eq!(st.read32(&SimConfig::default(), global::INT_STATUS), 1);
        st.write32(global::INT_STATUS_CLEAR, 1, t0);
        assert_eq!(st.read32(&SimConfig::default(), global::INT_STATUS), 0);
        assert_eq!(st.note_completion(0, || t0), Some(0), "re-armed by the clear");

        // Masked: latched once, delivered by the unmask; nothing more until the clear.
        st.write32(global::INT_STATUS_CLEAR, 1, t0);
        st.write32(global::INT_MASK_SET, 1, t0);
        assert_eq!(st.note_completion(0, || t0), None);
        assert_eq!(st.note_completion(0, || t0), None);
        assert_eq!(st.write32(global::INT_MASK_CLEAR, 1, t0).raise, vec![0]);
        assert_eq!(
            st.note_completion(0, || t0),
            None,
            "the latched one was this setting's"
        );

        // Setting RUN starts the queue re-armed.
        assert_eq!(st.note_completion(0, || t0), None, "not re-armed yet");
        st.write32(global::CONTROL, control::ENABLE, t0);
        st.write32(queue::reg(0, queue::SQ_BASE), 0x1000, t0);
        st.write32(queue::reg(0, queue::CQ_BASE), 0x2000, t0);
        st.write32(queue::reg(0, queue::RING_SIZE), 8, t0);
        st.write32(queue::reg(0, queue::Q_CONTROL), queue::RUN, t0);
        assert_eq!(st.read32(&SimConfig::default(), global::INT_STATUS), 0);
        assert_eq!(st.note_completion(0, || t0), Some(0), "re-armed by RUN");

        // REARM off: every completion raises, whatever INT_STATUS holds.
        st.write32(global::INT_COALESCE, 0, t0);
        assert_eq!(st.note_completion(0, || t0), Some(0));
        assert_eq!(st.note_completion(0, || t0), Some(0));

        // A 1.1 engine keeps only the count and time.
        let mut old = BoardState::new(1, false, 1 << 12);
        old.write32(global::INT_MASK_CLEAR, 1, t0);
        old.queues[0].vector = 0;
        old.write32(global::INT_COALESCE, coalesce::REARM | 1, t0);
        assert_eq!(old.read32(&SimConfig::default(), global::INT_COALESCE), 1);
        assert_eq!(old.note_completion(0, || t0), Some(0));
        assert_eq!(old.note_completion(0, || t0), Some(0));
    }
}
