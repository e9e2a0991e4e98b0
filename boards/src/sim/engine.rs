//! One queue's DMA engine: a thread that fetches descriptors through the IOMMU, executes them
//! against the medium and posts completions (accelerator.md §3–§9).
//!
//! The engine sleeps parked, with no lock held (unparked by its own queue's doorbells, CQ_HEAD
//! only while it waits for a completion slot, and by
//! every other change: RUN, resets, faults, shutdown; every wait bounded so stop flags are
//! re-checked). A doorbell of another queue does not wake it. Before each DMA step it checks
//! that the descriptor it holds is still valid: RUN still set under the same epoch, no reset,
//! no FATAL, device present. Otherwise it abandons the descriptor with no completion and clears
//! BUSY (§6, §7). Since a reset completes only once no engine is BUSY, and no engine starts a
//! DMA step without re-checking, no DMA happens after SOFT_RESET reads 0.
//!
//! Under [`Fault::Storm`](super::Fault::Storm) the engine withholds completions and posts them
//! later in a burst. Posting a burst is work like a descriptor: BUSY is set while it writes the
//! completion ring, so a host that clears RUN and sees BUSY = 0 knows no ring write follows.
//! Withheld completions belong to the RUN epoch in which their descriptors ran: once RUN is
//! cleared or the board resets they are dropped, never posted (see [`Withheld`]).
//!
//! A queue's engine runs in its thread, or in the thread that writes the queue's SQ_TAIL
//! ([`run_inline`], [`SimConfig::inline_doorbells`](super::SimConfig::inline_doorbells)):
//! that writer takes the descriptors as the thread would, BUSY set under the lock, so the two
//! never hold the queue at once and every proof here holds for either; it does so only when it
//! can finish without waiting (no fault standing, nothing the thread keeps, a free completion
//! slot, no coalescing timer, no checked lock held), and otherwise wakes the thread.
//!
//! Under [`Fault::Prefetch`](super::Fault::Prefetch) the engine fetches descriptors ahead of the
//! one it executes and reports `sq_head` past them (§3, §4). It executes them in order, each
//! taken as work the way a descriptor at the head is (BUSY set under the lock, in a hold that
//! finds its RUN epoch current), so the proofs above hold unchanged: a descriptor fetched ahead
//! whose epoch ended, or whose queue cannot run, is dropped with no completion and no DMA.

use std::cell::Cell;
use std::cell::RefCell;
use std::collections::HashSet;
use std::collections::VecDeque;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use zerocopy::FromBytes;
use zerocopy::IntoBytes;

use super::board::Counters;
use super::board::Shared;
use super::board::StateGuard;
use super::board::Token;
use super::fault::Decision;
use super::registers::BoardState;
use super::registers::QueueState;
use super::scatter::gather_checked;
use super::scatter::Scatter;
use crate::sca1::desc::cq_status;
use crate::sca1::desc::flags;
use crate::sca1::desc::opcode;
use crate::sca1::desc::Completion;
use crate::sca1::desc::Descriptor;
use crate::sca1::desc::SglEntry;
use crate::sca1::desc::CQ_PHASE;

/// Longest single wait: stop, reset and shutdown flags are re-checked at least this often.
const IDLE_WAIT: Duration = Duration::from_millis(50);
/// Data moves in pieces of at most this much, with a validity check before each.
const DMA_CHUNK: usize = 64 * 1024;
/// Longest READ copied from the medium to host memory in place, under one hold of the
/// medium's read lock (`Engine::read_in_place`): bounds how long a reader keeps writers of the
/// medium waiting.
const IN_PLACE_READ_MAX: usize = 1 << 20;
/// Longest WRITE copied from host memory to the medium in place, under one hold of the
/// medium's write lock (`Engine::write_in_place`): the buffered path holds that lock for the
/// same copy from its bounce buffer.
const IN_PLACE_WRITE_MAX: usize = 1 << 20;
/// How long a [`BadPhase`](super::Fault::BadPhase) entry stays with the wrong phase.
const BAD_PHASE_HOLD: Duration = Duration::from_millis(1);
const DESCRIPTOR_BYTES: u64 = 32;
const COMPLETION_BYTES: u64 = 16;
const SGL_ENTRY_BYTES: usize = 16;
/// Most descriptors a doorbell's writer executes in one write ([`run_inline`]) before it hands
/// the rest to the queue's engine thread: a writer is not kept by another thread's stream.
const INLINE_BUDGET: u32 = 64;

/// The descriptor was abandoned (RUN cleared, reset, FATAL, device gone or shutdown), or the
/// queue halted: stop working on it, post nothing more.
#[derive(Debug)]
struct Abandoned;

type Step<T> = Result<T, Abandoned>;

/// What the engine held when it took a descriptor (or, for a burst, when it withheld the last
/// completion of the burst).
#[derive(Clone, Copy, Debug)]
struct Job {
    epoch: u64,
    reset_epoch: u64,
    index: u32,
    seq: u32,
    ring_size: u32,
    sq_base: u64,
    cq_base: u64,
    /// The completion slot a doorbell's writer's claim kept for the job (`Engine::claim`: the
    /// free slots from CQ_TAIL on, one per descriptor claimed); `None` for an engine thread's,
    /// which waits for one if it must.
    claimed_slot: Option<Slot>,
}

/// A descriptor's result, before it becomes a completion entry.
#[derive(Clone, Copy, Debug)]
struct Outcome {
    status: u8,
    bytes: u32,
    detail: u32,
}

impl Outcome {
    fn ok(bytes: u32) -> Self {
        Self {
            status: cq_status::OK,
            bytes,
            detail: 0,
        }
    }

    fn error(status: u8, detail: u32) -> Self {
        Self {
            status,
            bytes: 0,
            detail,
        }
    }
}

/// Completions a [`Fault::Storm`](super::Fault::Storm) holds back for one burst.
///
/// RUN = 0 (§6) and resets (§7) drop them. §6 lets the engine finish or abandon what it holds,
/// "an abandoned one gets no completion"; the model abandons, because finishing cannot be
/// bounded: after RUN = 0 the CQ_HEAD doorbell is ignored, so a burst larger than the ring's
/// free space could never be posted, and a host that saw BUSY = 0 may already have reclaimed
/// the ring. The host treats these commands as it treats a never-completing one (its deadline,
/// then the stop or reset it does anyway). A halted queue (§8) likewise posts nothing until RUN
/// is cleared, which drops them.
#[derive(Debug)]
struct Withheld {
    /// The epoch and ring they belong to (the last descriptor withheld).
    job: Job,
    /// Entries in posting order, each with its [`BadPhase`](super::Fault::BadPhase) flag.
    entries: Vec<(Completion, bool)>,
    /// When the burst is due: the first entry's withholding time plus the storm's hold.
    due: Instant,
}

impl Job {
    /// The job `n` descriptors after this one, of a writer's claim of several
    /// ([`Engine::claim`]): the next ring index and seq, and the completion slot after this
    /// one's (the phase flips where the ring wraps).
    fn nth(&self, n: u32) -> Self {
        let claimed_slot = self.claimed_slot.map(|(slot, phase)| {
            let at = slot + n;
            (at % self.ring_size, phase ^ (at >= self.ring_size))
        });
        Self {
            index: (self.index + n) % self.ring_size,
            seq: self.seq.wrapping_add(n),
            claimed_slot,
            ..*self
        }
    }

    /// Where its descriptor lies (§3).
    fn descriptor_slot(&self) -> u64 {
        self.sq_base + u64::from(self.index) * DESCRIPTOR_BYTES
    }

    /// The job of the descriptor at the head of `qs`.
    fn at_head(qs: &QueueState, reset_epoch: u64) -> Self {
        Self {
            epoch: qs.epoch,
            reset_epoch,
            index: qs.sq_head,
            seq: qs.seq,
            ring_size: qs.ring_size,
            sq_base: qs.sq_base,
            cq_base: qs.cq_base,
            claimed_slot: None,
        }
    }

    /// A doorbell's writer's job: its claim consumed the descriptor (`sq_head` is past it) and
    /// kept its completion slot ([`Engine::claim`]).
    fn claimed(&self) -> bool {
        self.claimed_slot.is_some()
    }
}

/// What a doorbell's writer found when it looked to execute its queue ([`run_inline`]).
enum Claim {
    /// `count` descriptors from the head (`first` and those after it, [`Job::nth`]), consumed,
    /// with their completion slots, BUSY set.
    Jobs { first: Job, count: u32 },
    /// No descriptor is waiting and nothing is left for the engine thread.
    Nothing,
    /// The engine thread must look: the queue holds work the writer may not run.
    Decline,
}

/// What the engine works on next; BUSY is set for either.
#[derive(Clone, Copy, Debug)]
enum Work {
    /// Execute the descriptor at the job's index.
    Descriptor(Job),
    /// Post the withheld completions.
    Burst(Job),
}

/// A look at the state that found no work: the queue's wake-up count read before it, and
/// when to look again anyway (a timer, or [`IDLE_WAIT`]).
#[derive(Clone, Copy, Debug)]
struct Idle {
    seen: u64,
    until: Instant,
}

/// What [`Engine::release`] did after clearing BUSY.
enum Released {
    /// Took the next piece of work (BUSY set again).
    Work(Work),
    /// Looked and found none: sleep as `Idle` says before looking again.
    Idle(Idle),
    /// Did not look ([`Engine::wait_for_work`] does).
    NotLooked,
}

/// What [`Engine::wait_for_work`] found.
enum Next {
    Work(Work),
    /// The withheld completions belong to an epoch that ended (RUN cleared or reset): drop them.
    StaleBurst,
    /// The descriptors fetched ahead can no longer run (RUN cleared, reset, halt, FATAL, ENABLE
    /// cleared, device gone): drop them, as §6 and §7 let an engine abandon what it holds.
    StalePrefetch,
    Shutdown,
}

/// Tags a queue has fetched: one bit per possible tag (8 KiB), so noting a tag on every
/// descriptor costs a bit set, not a hash. Atomic, because whoever executes the queue (its
/// engine thread, or a doorbell's writer: [`run_inline`]) notes the tags it fetches.
#[derive(Debug)]
pub(crate) struct TagSet(Box<[AtomicU64]>);

impl TagSet {
    pub(crate) fn new() -> Self {
        Self(
            (0..(usize::from(u16::MAX) + 1) / 64)
                .map(|_| AtomicU64::new(0))
                .collect(),
        )
    }

    fn insert(&self, tag: u16) {
        let word = &self.0[usize::from(tag) / 64];
        let bit = 1 << (tag % 64);
        // Loaded first: the set bit is the common case, and a load keeps the line shared.
        if word.load(Ordering::Relaxed) & bit == 0 {
            word.fetch_or(bit, Ordering::Relaxed);
        }
    }

    fn contains(&self, tag: u16) -> bool {
        self.0[usize::from(tag) / 64].load(Ordering::Relaxed) & (1 << (tag % 64)) != 0
    }
}

/// A descriptor's data pieces `(iova, bytes)`: the contiguous buffer, held without allocating,
/// or the scatter list's entries.
enum Pieces {
    One([(u64, u32); 1]),
    List(Vec<(u64, u32)>),
}

impl Pieces {
    fn as_slice(&self) -> &[(u64, u32)] {
        match self {
            Self::One(one) => one,
            Self::List(list) => list,
        }
    }
}

/// A completion slot found free, with the phase it is written with.
type Slot = (u32, bool);

/// How a completion is signalled (§9).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Signal {
    /// Counted for INT_COALESCE; raises when the coalescing condition is met.
    Coalesced,
    /// Part of a burst: INT_STATUS only; [`Engine::signal_burst`] raises once for the lot.
    Burst,
}

struct Engine<'s> {
    shared: &'s Shared,
    q: u32,
    /// Run by a doorbell's writer ([`run_inline`]), not the queue's engine thread: it never
    /// waits, and holds nothing from one call to the next.
    inline: bool,
    /// Completions withheld by a storm, if any.
    withheld: Option<Withheld>,
    /// Descriptors fetched ahead ([`Fault::Prefetch`](super::Fault::Prefetch)), in ring order,
    /// each with the job it runs as: consumed (`sq_head` is past them) and not yet executed.
    prefetched: VecDeque<(Job, Descriptor)>,
    /// The last check under the lock that found work of this RUN epoch valid, with the
    /// board's change count read before it ([`Engine::checkpoint`]).
    checked: Cell<Option<(u64, u64)>>,
    /// The bounce buffer data moves through between host memory and the medium, kept from one
    /// descriptor to the next (its size is bounded by MAX_TRANSFER).
    bounce: Cell<Vec<u8>>,
    /// A scatter list's entries as fetched, and as `(iova, bytes)`, kept from one descriptor
    /// to the next as `bounce` is (bounded by the board's SGL entry limit): a descriptor
    /// allocates nothing once the longest list has been seen.
    sgl_raw: Cell<Vec<u8>>,
    sgl: Cell<Vec<(u64, u32)>>,
    /// A doorbell's writer's completion entries, written to their slots and not yet published
    /// (`cq_tail` moved, INT_STATUS, the interrupt), in order: [`Engine::release_inline`]
    /// publishes them in the hold that clears BUSY.
    unpublished: RefCell<Vec<(Job, Slot)>>,
}

/// The `(iova, bytes)` entries of a fetched scatter list, appended to `out`, and their total;
/// `Err` with the IOVA's low word of the first entry that is empty or has reserved bits set.
fn parse_sgl(raw: &[u8], out: &mut Vec<(u64, u32)>) -> Result<u64, u32> {
    let mut total = 0u64;
    for chunk in raw.chunks_exact(SGL_ENTRY_BYTES) {
        // `chunks_exact` yields whole entries, so this cannot fail; were it to, the list is
        // refused as malformed rather than the engine panicking.
        let Ok(entry) = SglEntry::read_from_bytes(chunk) else {
            return Err(0);
        };
        if entry.length == 0 || entry.reserved != 0 {
            return Err(entry.iova as u32);
        }
        total += u64::from(entry.length);
        out.push((entry.iova, entry.length));
    }
    Ok(total)
}

/// The DMA steps of a transfer over `segments`, as the buffered paths make them: each segment
/// in pieces of at most [`DMA_CHUNK`], in order.
fn dma_steps(segments: &[(u64, u32)]) -> impl Iterator<Item = (u64, usize)> + '_ {
    segments.iter().flat_map(|&(iova, len)| {
        let len = len as usize;
        (0..len)
            .step_by(DMA_CHUNK)
            .map(move |done| (iova + done as u64, (len - done).min(DMA_CHUNK)))
    })
}

/// The descriptor read from `job`'s slot of queue `q`, counted (`inline`: by a doorbell's
/// writer); `Err` with the status to halt with when its seq is not the one expected (a stale
/// descriptor, §8).
fn fetched_descriptor(
    shared: &Shared,
    q: u32,
    job: &Job,
    raw: &[u8; DESCRIPTOR_BYTES as usize],
    inline: bool,
) -> Result<Descriptor, u8> {
    Counters::add(&shared.stats.descriptors, 1);
    if inline {
        Counters::add(&shared.stats.inline_descriptors, 1);
    }
    // 32 bytes are a descriptor: cannot fail.
    let desc = Descriptor::read_from_bytes(raw).map_err(|_| cq_status::STALE)?;
    if desc.seq != job.seq {
        log::warn!(
            "{}: queue {q} index {}: seq {} but expected {} (stale descriptor)",
            shared.id,
            job.index,
            desc.seq,
            job.seq
        );
        Counters::add(&shared.stats.stale, 1);
        return Err(cq_status::STALE);
    }
    Ok(desc)
}

/// Body of queue `q`'s engine thread: runs until the board shuts down.
pub(crate) fn run(shared: Arc<Shared>, q: u32) {
    // The engine's lock chain starts here and is threaded down: every lock it takes is taken
    // with this token, so the compiler sees that it never nests two.
    let mut token = Token::root();
    // Before the first look at the state: a doorbell of this queue unparks this thread.
    shared.register_engine(q);
    let mut engine = Engine::new(&shared, q, false);
    log::debug!("{}: engine {q} started", engine.shared.id);
    let mut next = engine.next_work(&mut token, None);
    while let Some(work) = next {
        // Abandoned or halted work needs nothing more than BUSY cleared.
        let _ = match work {
            Work::Descriptor(job) => engine.process(&mut token, &job),
            Work::Burst(job) => engine.burst(&mut token, &job),
        };
        next = match engine.release(&mut token) {
            Released::Work(work) => Some(work),
            Released::Idle(idle) => engine.next_work(&mut token, Some(idle)),
            Released::NotLooked => engine.next_work(&mut token, None),
        };
    }
    log::debug!("{}: engine {q} stopped", engine.shared.id);
}

/// The scratch buffers of the executions a thread runs as a doorbell's writer
/// ([`run_inline`]), kept from one doorbell to the next as an engine thread keeps its own: at
/// most a scatter list of the board's longest and, for a transfer longer than the in-place
/// limit (1 MiB), a bounce buffer of at most MAX_TRANSFER, per host thread that rings.
/// With the descriptors a claim fetched and the entries it wrote, so a doorbell allocates
/// nothing once one as long has been seen.
#[derive(Default)]
struct Scratch {
    bounce: Vec<u8>,
    sgl_raw: Vec<u8>,
    sgl: Vec<(u64, u32)>,
    fetched: VecDeque<(Job, Descriptor)>,
    unpublished: Vec<(Job, Slot)>,
}

thread_local! {
    static INLINE_SCRATCH: Cell<Scratch> = const {
        Cell::new(Scratch {
            bounce: Vec::new(),
            sgl_raw: Vec::new(),
            sgl: Vec::new(),
            fetched: VecDeque::new(),
            unpublished: Vec::new(),
        })
    };
}

/// Execute queue `q`'s waiting descriptors in the thread that wrote its SQ_TAIL doorbell,
/// as the engine thread would (the same checks, DMA through the IOMMU model, completions and
/// interrupts), when that can be done without ever waiting ([`Engine::claim`]): the device's
/// work done within the posted write, which the contract allows (it sets no time between a
/// doorbell and the completions, accelerator.md §3, §4). A real board's engines cost
/// the host no CPU; the model's thread hand-off cost the host two context switches per
/// doorbell, which the accelerator's figures in `bench` then measured instead of the driver.
///
/// `false` when the queue's engine thread must look (the caller wakes it): a fault standing,
/// the writer holding a checked lock (no DMA is started under a lock), a medium in a file
/// (its reads, writes and syncs are system calls a real board's host never waits in), work
/// the thread keeps, a full completion ring, a coalescing timer, or more than
/// [`INLINE_BUDGET`] descriptors.
pub(crate) fn run_inline(shared: &Shared, q: u32) -> bool {
    if shared.faults_standing() || !shared.medium.is_ram() || !scst_accel_hal::locks::no_checked_lock_held() {
        return false;
    }
    let mut token = Token::root();
    let mut engine = Engine::new(shared, q, true);
    let mut budget = INLINE_BUDGET;
    let first = {
        let changes = shared.changes();
        let mut st = engine.lock(&mut token);
        engine.claim(&mut st, changes, budget)
    };
    let (mut first, mut count) = match first {
        Claim::Jobs { first, count } => (first, count),
        Claim::Nothing => return true,
        Claim::Decline => return false,
    };
    let scratch = INLINE_SCRATCH.take();
    engine.bounce.set(scratch.bounce);
    engine.sgl_raw.set(scratch.sgl_raw);
    engine.sgl.set(scratch.sgl);
    engine.prefetched = scratch.fetched;
    engine.unpublished = RefCell::new(scratch.unpublished);
    let handled = loop {
        engine.run_claimed(&mut token, &first, count);
        budget -= count;
        match engine.release_inline(&mut token, budget) {
            Claim::Jobs {
                first: next,
                count: more,
            } => (first, count) = (next, more),
            Claim::Nothing => break true,
            Claim::Decline => break false,
        }
    };
    INLINE_SCRATCH.set(Scratch {
        bounce: engine.bounce.take(),
        sgl_raw: engine.sgl_raw.take(),
        sgl: engine.sgl.take(),
        fetched: std::mem::take(&mut engine.prefetched),
        unpublished: engine.unpublished.take(),
    });
    handled
}

impl<'s> Engine<'s> {
    fn new(shared: &'s Shared, q: u32, inline: bool) -> Self {
        Self {
            shared,
            q,
            inline,
            withheld: None,
            prefetched: VecDeque::new(),
            checked: Cell::new(None),
            bounce: Cell::new(Vec::new()),
            sgl_raw: Cell::new(Vec::new()),
            sgl: Cell::new(Vec::new()),
            unpublished: RefCell::new(Vec::new()),
        }
    }

    fn qi(&self) -> usize {
        self.q as usize
    }

    /// Lock the state, with this queue's posted doorbell writes applied first: every look the
    /// engine takes at its queue sees the doorbells written before it.
    fn lock<'a>(&'a self, token: &'a mut Token<'_>) -> StateGuard<'a> {
        let mut st = self.shared.lock(token);
        st.apply_posted(self.qi());
        st
    }

    /// Still allowed to work on `job`?
    fn valid(&self, st: &BoardState, job: &Job) -> bool {
        !self.shared.gone()
            && !self.shared.stopping()
            && st.runnable(self.qi())
            && st.queues[self.qi()].epoch == job.epoch
    }

    /// Before each DMA step: is `job` still valid? Without the lock when nothing that can end
    /// it changed since a check under the lock found it valid: every such change outside the
    /// engines (a BAR write, a reset, injected FATAL or device loss) bumps the board's change
    /// count under the lock ([`Shared::changed`](super::board::Shared::changed)), so an
    /// unchanged count read before that check proves the check still holds; device loss and
    /// shutdown are read directly. A change that lands right after this check cannot make the
    /// step unsafe: the host reclaims nothing before BUSY (or SOFT_RESET) reads 0, which
    /// happens only when this engine lets go of the descriptor, after the step (§6, §7).
    fn checkpoint(&self, token: &mut Token<'_>, job: &Job) -> Step<()> {
        if self.shared.gone() || self.shared.stopping() {
            return Err(Abandoned);
        }
        let changes = self.shared.changes();
        if self.checked.get() == Some((job.epoch, changes)) {
            return Ok(());
        }
        let st = self.lock(token);
        if self.valid(&st, job) {
            self.checked.set(Some((job.epoch, changes)));
            Ok(())
        } else {
            Err(Abandoned)
        }
    }

    /// Take a coalesced interrupt whose timer has run out: `Some(st)` back if none is due,
    /// else `None` with the lock released and the interrupt raised (the caller re-locks: the
    /// state may have changed meanwhile).
    fn fire_due_interrupt<'a>(&self, mut st: StateGuard<'a>) -> Option<StateGuard<'a>> {
        // No completion waiting for its interrupt: nothing can be due, and the clock (a
        // sizeable share of the worker's time when read on every pass) is not needed.
        if st.coalesce_deadline(self.qi()).is_none() {
            return Some(st);
        }
        match st.interrupt_if_due(self.qi(), Instant::now()) {
            Some(vector) => {
                drop(st);
                self.shared.raise(vector);
                None
            }
            None => Some(st),
        }
    }

    /// How long to sleep: [`IDLE_WAIT`], or less if a deadline or the coalescing timer is near.
    fn wait_time(&self, st: &BoardState, until: Option<Instant>) -> Duration {
        let coalesce = st.coalesce_deadline(self.qi());
        if until.is_none() && coalesce.is_none() {
            return IDLE_WAIT;
        }
        let now = Instant::now();
        [until, coalesce]
            .into_iter()
            .flatten()
            .map(|t| t.saturating_duration_since(now))
            .fold(IDLE_WAIT, Duration::min)
            .max(Duration::from_micros(10))
    }

    /// Wait for work: a due burst first (the storm's timer has fired), else a descriptor;
    /// `None` at shutdown. Sets BUSY.
    /// `idle`: the last look, if it found nothing, so the wait starts with a sleep.
    fn next_work(&mut self, token: &mut Token<'_>, mut idle: Option<Idle>) -> Option<Work> {
        loop {
            match self.wait_for_work(token, idle.take()) {
                Next::Work(work) => return Some(work),
                Next::Shutdown => return None,
                Next::StaleBurst => self.drop_withheld("the queue was stopped or reset"),
                Next::StalePrefetch => {
                    log::debug!(
                        "{}: queue {}: {} descriptors fetched ahead dropped: the queue cannot run them",
                        self.shared.id,
                        self.q,
                        self.prefetched.len()
                    );
                    self.prefetched.clear();
                }
            }
        }
    }

    /// Drop every withheld completion (see [`Withheld`] for why this is what §6 and §7 ask).
    fn drop_withheld(&mut self, why: &str) {
        if let Some(w) = self.withheld.take() {
            log::debug!(
                "{}: queue {}: {} withheld completions dropped: {why}",
                self.shared.id,
                self.q,
                w.entries.len()
            );
        }
    }

    /// [`Engine::next_work`]'s wait: look under the state lock, park without it. After a
    /// look that found nothing (`idle`), the engine sleeps; it looks again only when a
    /// wake-up was signalled since that look or its timer ran out: a wake-up whose unpark
    /// token was left over from work the engine had already taken (a doorbell rung while it
    /// was busy) costs no lock. Every change that can make work signals after making it
    /// ([`Shared::wakes`](super::board::Shared::wakes)), so an unchanged count proves the
    /// look still holds.
    fn wait_for_work(&self, token: &mut Token<'_>, mut idle: Option<Idle>) -> Next {
        let burst = self.burst_due();
        loop {
            if let Some(Idle { seen, until }) = idle {
                self.shared.park(until.saturating_duration_since(Instant::now()));
                if self.shared.wakes(self.q) == seen && Instant::now() < until {
                    continue;
                }
            }
            // Read before the look: a wake-up signalled after this read is seen as a change.
            let seen = self.shared.wakes(self.q);
            let st = self.lock(token);
            if self.shared.stopping() {
                return Next::Shutdown;
            }
            let Some(mut st) = self.fire_due_interrupt(st) else {
                continue;
            };
            if let Some(next) = self.take_work(&mut st, burst) {
                return next;
            }
            let timeout = self.wait_time(&st, burst.map(|(_, due)| due));
            drop(st);
            idle = Some(Idle {
                seen,
                until: Instant::now() + timeout,
            });
        }
    }

    /// The withheld burst's job and due time, if completions are withheld.
    fn burst_due(&self) -> Option<(Job, Instant)> {
        self.withheld.as_ref().map(|w| (w.job, w.due))
    }

    /// One look for work under the lock: a due burst, else a descriptor fetched ahead, else
    /// one at the head (BUSY set for any); a burst of an ended epoch, or descriptors fetched
    /// ahead that can no longer run; or nothing (`None`).
    fn take_work(&self, st: &mut BoardState, burst: Option<(Job, Instant)>) -> Option<Next> {
        // Only this thread keeps work from one look to the next; a doorbell's writer leaves
        // the queue to it while it does ([`Engine::claim`]).
        st.queues[self.qi()].engine_holds = self.withheld.is_some() || !self.prefetched.is_empty();
        let reset_epoch = st.reset_epoch;
        if burst.is_some_and(|(job, _)| st.queues[self.qi()].epoch != job.epoch) {
            return Some(Next::StaleBurst);
        }
        let runnable = !self.shared.gone() && st.runnable(self.qi());
        if let Some((ahead, _)) = self.prefetched.front() {
            // Checked in the hold that sets BUSY, as for a descriptor at the head: once RUN is
            // cleared or the board resets, nothing fetched before is ever executed.
            if !runnable || ahead.epoch != st.queues[self.qi()].epoch {
                return Some(Next::StalePrefetch);
            }
        }
        if !runnable {
            return None;
        }
        let qs = &mut st.queues[self.qi()];
        if qs.busy {
            // A doorbell's writer executes the queue ([`run_inline`]); at its release it takes
            // what is left, or wakes this thread.
            return None;
        }
        if let Some((job, due)) = burst {
            if Instant::now() >= due {
                qs.busy = true;
                return Some(Next::Work(Work::Burst(job)));
            }
        }
        if let Some((ahead, _)) = self.prefetched.front() {
            qs.busy = true;
            return Some(Next::Work(Work::Descriptor(*ahead)));
        }
        if qs.sq_head == qs.sq_tail {
            return None;
        }
        qs.busy = true;
        Some(Next::Work(Work::Descriptor(Job::at_head(qs, reset_epoch))))
    }

    /// A doorbell writer's look under the lock ([`run_inline`]): the descriptors from the head
    /// (BUSY set) if the writer may execute them now without ever waiting: the queue runnable
    /// and idle, no fault standing, nothing its engine thread keeps (descriptors fetched ahead,
    /// completions withheld), no coalesced interrupt waiting for its timer, and a free
    /// completion slot, taken with the job: only the holder of BUSY moves CQ_TAIL, so it is
    /// still the next slot when the completion is posted, and the completion never waits (a
    /// host that moves CQ_HEAD backwards meanwhile breaks §4, and finds that slot written).
    ///
    /// The claim takes every waiting descriptor the completion ring has free slots for, `max`
    /// at most, as a device that fetches a burst of descriptors: it consumes them (`sq_head`
    /// moves past them) and keeps their completion slots, so no other look under the lock is
    /// needed until their completions are published, and they are fetched in one IOMMU access
    /// ([`Engine::run_claimed`]). Moving the head before the fetch is not seen by the host:
    /// the head reaches it only in a completion entry (§4), and only the holder of BUSY posts
    /// one. The claim also stands for the first check before a DMA step
    /// ([`Engine::checkpoint`]): `changes` is the board's change count read before the lock
    /// was taken.
    fn claim(&self, st: &mut BoardState, changes: u64, max: u32) -> Claim {
        if self.shared.gone() || self.shared.stopping() || !st.runnable(self.qi()) {
            return Claim::Decline;
        }
        let deadline = st.coalesce_deadline(self.qi());
        let reset_epoch = st.reset_epoch;
        let qs = &mut st.queues[self.qi()];
        if qs.busy || qs.engine_holds || deadline.is_some() || self.shared.faults_standing() {
            return Claim::Decline;
        }
        if qs.sq_head == qs.sq_tail {
            return Claim::Nothing;
        }
        if qs.cq_full() {
            return Claim::Decline;
        }
        // Not full, so the ring has a size and one slot free at least.
        let waiting = (qs.sq_tail + qs.ring_size - qs.sq_head) % qs.ring_size;
        let room = (qs.cq_head + qs.ring_size - qs.cq_tail - 1) % qs.ring_size;
        let count = waiting.min(room).min(max).max(1);
        qs.busy = true;
        let first = Job {
            claimed_slot: Some((qs.cq_tail, qs.phase)),
            ..Job::at_head(qs, reset_epoch)
        };
        qs.sq_head = (first.index + count) % first.ring_size;
        qs.seq = first.seq.wrapping_add(count);
        // Valid under this hold, as `valid` would find it: not gone or stopping, runnable, and
        // the jobs' epoch is the queue's.
        self.checked.set(Some((first.epoch, changes)));
        Claim::Jobs { first, count }
    }

    /// Execute the `count` descriptors a writer claimed from `first`: fetched in one IOMMU
    /// access (a burst, checked slot by slot: the first that faults or carries another seq
    /// ends it), each then executed in order through [`Engine::process`] as a descriptor
    /// fetched ahead, and the queue halted at the slot that ended the burst once those before
    /// it are done (§8), as one by one. Abandoned work needs nothing more than BUSY cleared:
    /// what was fetched and not executed is dropped.
    fn run_claimed(&mut self, token: &mut Token<'_>, first: &Job, count: u32) {
        let failed = self.fetch_claimed(token, first, count);
        while let Some(&(job, _)) = self.prefetched.front() {
            if self.process(token, &job).is_err() {
                self.prefetched.clear();
                return;
            }
        }
        if let Some((job, status)) = failed {
            self.halt(token, &job, status);
        }
    }

    /// Fetch a writer's claimed descriptors into `prefetched`, under one hold of the IOMMU's
    /// table; the job and halt status of the slot that ended the burst early, if one did.
    fn fetch_claimed(&mut self, token: &mut Token<'_>, first: &Job, count: u32) -> Option<(Job, u8)> {
        if self.checkpoint(token, first).is_err() {
            return None;
        }
        let (shared, q) = (self.shared, self.q);
        let fetched = &mut self.prefetched;
        shared.iommu.dma_batch_under(&mut Token::root(), |batch| {
            (0..count).find_map(|n| {
                let job = first.nth(n);
                let mut raw = [0u8; DESCRIPTOR_BYTES as usize];
                if batch.read(job.descriptor_slot(), &mut raw).is_err() {
                    return Some((job, cq_status::DMA_FAULT));
                }
                match fetched_descriptor(shared, q, &job, &raw, true) {
                    Ok(desc) => {
                        fetched.push_back((job, desc));
                        None
                    }
                    Err(status) => Some((job, status)),
                }
            })
        })
    }

    /// [`Engine::release`] for a doorbell's writer: clear BUSY and, while `more` (the budget
    /// left) allows, claim the next burst in the same lock hold. `Decline` when work is left that the
    /// engine thread must take (the caller wakes it).
    ///
    /// The completions the claim's executions wrote are published first in the same hold
    /// ([`Engine::publish_pending`]), and their interrupts raised once the lock is released:
    /// one hold of the state per claim where each descriptor's post and release took one each.
    fn release_inline(&self, token: &mut Token<'_>, more: u32) -> Claim {
        let changes = self.shared.changes();
        let mut st = self.lock(token);
        let (vector, raises) = self.publish_pending(&mut st);
        st.queues[self.qi()].busy = false;
        if st.finish_reset_if_idle() {
            drop(st);
            self.raise_times(vector, raises);
            log::info!("{}: reset complete", self.shared.id);
            // Wakes every engine thread, this queue's too: it looks for itself.
            self.shared.notify();
            return Claim::Nothing;
        }
        let next = if more > 0 {
            self.claim(&mut st, changes, more)
        } else {
            let qs = &st.queues[self.qi()];
            if qs.sq_head == qs.sq_tail && st.coalesce_deadline(self.qi()).is_none() {
                Claim::Nothing
            } else {
                Claim::Decline
            }
        };
        // A coalesced interrupt left waiting for its timer is the engine thread's to fire.
        let next = match next {
            Claim::Nothing if st.coalesce_deadline(self.qi()).is_some() => Claim::Decline,
            next => next,
        };
        drop(st);
        self.raise_times(vector, raises);
        self.shared.notify_reset_waiters();
        next
    }

    /// Clear BUSY; the last engine to go idle completes a pending reset. In the same lock
    /// hold, take the next piece of work if there is one already (BUSY set again), as
    /// [`Engine::wait_for_work`] would have at once: one lock acquisition per descriptor
    /// instead of two. Not when a coalesced interrupt is waiting for its timer (the wait
    /// fires it) or a reset completed (every engine is woken first). BUSY going to 0 is news
    /// only for a function reset waiting on the condition variable; the other engines wait
    /// for their own doorbells and need waking only when the reset completes (they may run
    /// again). Waking every engine after every descriptor cost each idle engine a wake-up per
    /// descriptor of the busy ones.
    fn release(&self, token: &mut Token<'_>) -> Released {
        let burst = self.burst_due();
        let seen = self.shared.wakes(self.q);
        let mut st = self.lock(token);
        st.queues[self.qi()].busy = false;
        // What this descriptor fetched ahead or withheld, published before a writer can claim
        // the queue (`take_work` below may not run: a coalescing timer, a reset).
        st.queues[self.qi()].engine_holds = self.withheld.is_some() || !self.prefetched.is_empty();
        let reset_done = st.finish_reset_if_idle();
        let mut released = Released::NotLooked;
        if !reset_done && !self.shared.stopping() && st.coalesce_deadline(self.qi()).is_none() {
            match self.take_work(&mut st, burst) {
                Some(Next::Work(work)) => return Released::Work(work),
                // Nothing, as the wait's first look would find: it can start with a sleep.
                None => {
                    let timeout = self.wait_time(&st, burst.map(|(_, due)| due));
                    released = Released::Idle(Idle {
                        seen,
                        until: Instant::now() + timeout,
                    });
                }
                Some(_) => {}
            }
        }
        drop(st);
        if reset_done {
            log::info!("{}: reset complete", self.shared.id);
            self.shared.notify();
        } else {
            self.shared.notify_reset_waiters();
        }
        released
    }

    /// Hold `job` until `ready(state)` gives a value (`Some`) or `until` passes (`None`);
    /// abandons if the job becomes invalid. The value is read under the same lock hold that
    /// found the job valid.
    fn hold<R>(
        &self,
        token: &mut Token<'_>,
        job: &Job,
        until: Option<Instant>,
        ready: impl Fn(&BoardState) -> Option<R>,
    ) -> Step<Option<R>> {
        loop {
            let st = self.lock(token);
            if !self.valid(&st, job) {
                return Err(Abandoned);
            }
            if let Some(value) = ready(&st) {
                return Ok(Some(value));
            }
            if until.is_some_and(|t| Instant::now() >= t) {
                return Ok(None);
            }
            let Some(st) = self.fire_due_interrupt(st) else {
                continue;
            };
            let timeout = self.wait_time(&st, until);
            drop(st);
            self.shared.park(timeout);
        }
    }

    /// [`Fault::EngineHang`](super::Fault::EngineHang): keep BUSY, do nothing, until a reset
    /// (or device loss, or shutdown).
    fn hang(&self, token: &mut Token<'_>, job: &Job) {
        Counters::add(&self.shared.stats.hangs, 1);
        log::warn!(
            "{}: engine {} hung (injected) at index {}",
            self.shared.id,
            self.q,
            job.index
        );
        while {
            let st = self.lock(token);
            st.reset_epoch == job.reset_epoch && !self.shared.gone() && !self.shared.stopping()
        } {
            self.shared.park(IDLE_WAIT);
        }
    }

    /// §8: halt the queue at `job`'s index. The contract posts no completion for a halt (the
    /// slot's tag cannot be trusted); the model sets INT_STATUS and raises the queue's vector
    /// (unless masked) so a driver that reads Q_STATUS on each interrupt learns of it at once.
    ///
    /// A writer's completions not yet published are published first: the descriptors before
    /// the one that halts completed before it, as one by one.
    fn halt(&self, token: &mut Token<'_>, job: &Job, error: u8) -> Abandoned {
        let mut st = self.lock(token);
        let (pending, raises) = self.publish_pending(&mut st);
        if !self.valid(&st, job) {
            drop(st);
            self.raise_times(pending, raises);
            return Abandoned;
        }
        log::warn!(
            "{}: queue {} halted: error {error} at index {}",
            self.shared.id,
            self.q,
            job.index
        );
        st.halt(self.qi(), error, job.index);
        self.shared.changed();
        st.set_int_status(self.qi());
        let vector = (st.int_mask & (1 << self.q) == 0).then_some(st.queues[self.qi()].vector);
        drop(st);
        self.raise_times(pending, raises);
        self.raise(vector);
        Abandoned
    }

    fn process(&mut self, token: &mut Token<'_>, job: &Job) -> Step<()> {
        let taken = self.shared.count_taken(self.q);
        // Inline, the writer saw no fault standing before it took the job (`claim`): the
        // verdict is the default one, as for any descriptor taken before a fault is injected
        // ([`Shared::decide`](super::board::Shared::decide)); so it never waits here.
        let plan = if self.inline {
            Decision::default()
        } else {
            self.shared.decide(token, self.q, taken)
        };
        if plan.hang {
            self.hang(token, job);
            return Err(Abandoned);
        }
        if plan.latency_micros > 0 {
            let until = Instant::now() + Duration::from_micros(plan.latency_micros);
            self.hold(token, job, Some(until), |_| None::<()>)?;
        }

        // A descriptor fetched ahead was consumed then (sq_head is past it already).
        let ahead = self
            .prefetched
            .front()
            .is_some_and(|(held, _)| held.epoch == job.epoch && held.index == job.index);
        let desc = if ahead {
            self.prefetched
                .pop_front()
                .map(|(_, desc)| desc)
                .ok_or(Abandoned)?
        } else {
            self.fetch(token, job)?
        };
        let room = (plan.prefetch as usize).saturating_sub(self.prefetched.len()) as u32;
        // Consumed: the slot may be reused once the host sees sq_head move past it.
        // In the same lock hold, the completion slot if one is free now: only this engine
        // moves cq_tail, and a host keeping to §4 only frees slots, so it stays free for this
        // descriptor's completion (a device reserving its completion slot when it fetches).
        let (mut reserved, head, seq, to_fetch) = if job.claimed() {
            // A writer's claim consumed it and kept its slot (`Engine::claim`); it fetches
            // nothing ahead.
            (
                job.claimed_slot,
                (job.index + 1) % job.ring_size,
                job.seq.wrapping_add(1),
                0,
            )
        } else {
            let mut st = self.lock(token);
            if !self.valid(&st, job) {
                return Err(Abandoned);
            }
            let qs = &mut st.queues[self.qi()];
            debug_assert!(!self.inline, "a writer's job is consumed by its claim");
            if !ahead {
                qs.sq_head = (job.index + 1) % job.ring_size;
                qs.seq = job.seq.wrapping_add(1);
            }
            let waiting = (qs.sq_tail + job.ring_size - qs.sq_head) % job.ring_size;
            (
                (!qs.cq_full()).then_some((qs.cq_tail, qs.phase)),
                qs.sq_head,
                qs.seq,
                waiting.min(room),
            )
        };
        self.shared.seen_tags(self.q).insert(desc.tag);
        // Fetch ahead before this descriptor's completion reports the head past them.
        let sq_head = if to_fetch > 0 {
            self.fetch_ahead(token, job, head, seq, to_fetch)?
        } else {
            head
        };

        let outcome = match plan.error_status {
            Some(status) => Outcome::error(status, desc.lba as u32),
            None => self.execute(token, job, &desc)?,
        };
        if plan.never_complete {
            log::debug!(
                "{}: queue {} tag {}: completion dropped (injected)",
                self.shared.id,
                self.q,
                desc.tag
            );
            return Ok(());
        }
        let short = if plan.short_ok && outcome.status == cq_status::OK {
            outcome.bytes.min(self.shared.config.block_size)
        } else {
            0
        };
        let entry = Completion {
            tag: desc.tag,
            status: outcome.status,
            flags: 0,
            bytes: outcome.bytes - short,
            detail: outcome.detail,
            // The head as it stands, past every descriptor fetched so far (§4).
            sq_head: sq_head as u16,
            reserved: 0,
        };
        let duplicate = plan.duplicate.then_some((entry, false));
        let unknown = if plan.unknown_tag {
            let unknown = Completion {
                tag: self.unused_tag(token, job, desc.tag)?,
                status: cq_status::OK,
                bytes: 0,
                detail: 0,
                ..entry
            };
            Some((unknown, false))
        } else {
            None
        };
        let entries = [Some((entry, plan.bad_phase)), duplicate, unknown]
            .into_iter()
            .flatten();
        match plan.storm_hold_micros {
            Some(hold) => self.withhold(job, entries, hold),
            None => {
                for (entry, bad_phase) in entries {
                    self.post(token, job, entry, bad_phase, Signal::Coalesced, reserved.take())?;
                }
            }
        }
        Ok(())
    }

    /// Fetch the descriptor at `job`'s index (§3): only through the IOMMU; a fault on the ring,
    /// or a seq other than the one expected, halts the queue (§8).
    fn fetch(&self, token: &mut Token<'_>, job: &Job) -> Step<Descriptor> {
        self.checkpoint(token, job)?;
        let mut raw = [0u8; DESCRIPTOR_BYTES as usize];
        if self
            .shared
            .iommu
            .dma_read(job.descriptor_slot(), &mut raw)
            .is_err()
        {
            return Err(self.halt(token, job, cq_status::DMA_FAULT));
        }
        fetched_descriptor(self.shared, self.q, job, &raw, self.inline)
            .map_err(|status| self.halt(token, job, status))
    }

    /// [`Fault::Prefetch`](super::Fault::Prefetch): fetch up to `count` descriptors from ring
    /// index `head` (whose seq is `seq`), all before SQ_TAIL, keep them for execution in
    /// order, and move the queue's head past them. Returns the new head. A slot that faults or
    /// carries another seq ends the fetch without halting: the engine meets it again as the
    /// descriptor at the head, and halts then, at its index, as without prefetching (§8).
    fn fetch_ahead(
        &mut self,
        token: &mut Token<'_>,
        job: &Job,
        head: u32,
        seq: u32,
        count: u32,
    ) -> Step<u32> {
        let mut fetched = 0;
        while fetched < count {
            let ahead = Job {
                index: (head + fetched) % job.ring_size,
                seq: seq.wrapping_add(fetched),
                ..*job
            };
            self.checkpoint(token, &ahead)?;
            let mut raw = [0u8; DESCRIPTOR_BYTES as usize];
            if self
                .shared
                .iommu
                .dma_read(ahead.descriptor_slot(), &mut raw)
                .is_err()
            {
                break;
            }
            let Ok(desc) = Descriptor::read_from_bytes(&raw) else {
                break;
            };
            if desc.seq != ahead.seq {
                break;
            }
            Counters::add(&self.shared.stats.descriptors, 1);
            self.shared.seen_tags(self.q).insert(desc.tag);
            self.prefetched.push_back((ahead, desc));
            fetched += 1;
        }
        let mut st = self.lock(token);
        if !self.valid(&st, job) {
            // Whatever was fetched is dropped at the engine's next look (StalePrefetch).
            return Err(Abandoned);
        }
        let qs = &mut st.queues[self.qi()];
        qs.sq_head = (head + fetched) % job.ring_size;
        qs.seq = seq.wrapping_add(fetched);
        Ok(qs.sq_head)
    }

    /// [`Fault::Storm`](super::Fault::Storm): keep `entries` for the next burst, which is due
    /// `hold_micros` after the first completion withheld for it.
    fn withhold(&mut self, job: &Job, entries: impl Iterator<Item = (Completion, bool)>, hold_micros: u64) {
        if self.withheld.as_ref().is_some_and(|w| w.job.epoch != job.epoch) {
            self.drop_withheld("the queue was stopped or reset");
        }
        let withheld = self.withheld.get_or_insert_with(|| Withheld {
            job: *job,
            entries: Vec::new(),
            due: Instant::now() + Duration::from_micros(hold_micros),
        });
        withheld.job = *job;
        withheld.entries.extend(entries);
    }

    /// Post the withheld completions in order, one interrupt for the lot. A full ring (§4)
    /// stalls the rest of the burst until the host advances CQ_HEAD; before stalling, the
    /// engine raises the interrupt for what it has posted, or a host waiting for an interrupt
    /// and an engine waiting for CQ_HEAD would wait for each other. If the burst is abandoned
    /// (RUN cleared, reset, FATAL, device gone), the rest is dropped.
    fn burst(&mut self, token: &mut Token<'_>, job: &Job) -> Step<()> {
        let Some(withheld) = self.withheld.take() else {
            return Ok(());
        };
        let total = withheld.entries.len();
        let mut unsignalled = 0u32;
        for (posted, (entry, bad_phase)) in withheld.entries.into_iter().enumerate() {
            if unsignalled > 0 && self.lock(token).queues[self.qi()].cq_full() {
                self.signal_burst(token, job, unsignalled)?;
                unsignalled = 0;
            }
            if let Err(abandoned) = self.post(token, job, entry, bad_phase, Signal::Burst, None) {
                log::debug!(
                    "{}: queue {}: burst abandoned after {posted} of {total} completions",
                    self.shared.id,
                    self.q
                );
                return Err(abandoned);
            }
            unsignalled += 1;
        }
        if unsignalled > 0 {
            self.signal_burst(token, job, unsignalled)?;
        }
        Ok(())
    }

    /// Raise queue q's vector once for `count` burst completions (§9,
    /// [`BoardState::signal_burst`]). Masked, it is latched as any other interrupt.
    fn signal_burst(&self, token: &mut Token<'_>, job: &Job, count: u32) -> Step<()> {
        let mut st = self.lock(token);
        if !self.valid(&st, job) {
            return Err(Abandoned);
        }
        let vector = st.signal_burst(self.qi());
        drop(st);
        log::trace!(
            "{}: queue {}: burst of {count} completions signalled",
            self.shared.id,
            self.q
        );
        if let Some(vector) = vector {
            self.shared.raise(vector);
        }
        Ok(())
    }

    /// A tag this queue has never fetched and that no slot of its submission ring holds now:
    /// as far as a device can know, no command the host has in flight. Fetched tags alone are
    /// not enough: a host's next tags are typically in the ring already, submitted but not yet
    /// fetched, and "unknown" completing one of those would complete a real command before its
    /// data moved. The ring is read through the IOMMU like a fetch (a fault halts the queue).
    fn unused_tag(&self, token: &mut Token<'_>, job: &Job, near: u16) -> Step<u16> {
        self.checkpoint(token, job)?;
        let mut ring = vec![0u8; job.ring_size as usize * DESCRIPTOR_BYTES as usize];
        if self.shared.iommu.dma_read(job.sq_base, &mut ring).is_err() {
            return Err(self.halt(token, job, cq_status::DMA_FAULT));
        }
        let in_ring: HashSet<u16> = ring
            .chunks_exact(DESCRIPTOR_BYTES as usize)
            .filter_map(|raw| Descriptor::read_from_bytes(raw).ok())
            .map(|d| d.tag)
            .collect();
        let mut tag = near.wrapping_add(0x8000);
        for _ in 0..=u16::MAX {
            if !self.shared.seen_tags(self.q).contains(tag) && !in_ring.contains(&tag) {
                break;
            }
            tag = tag.wrapping_add(1);
        }
        Ok(tag)
    }

    /// Check and execute one descriptor against the medium (§3, §5).
    fn execute(&self, token: &mut Token<'_>, job: &Job, desc: &Descriptor) -> Step<Outcome> {
        let config = &self.shared.config;
        let block = u64::from(config.block_size);
        let known = match desc.opcode {
            opcode::READ | opcode::WRITE | opcode::FLUSH | opcode::WRITE_ZEROES | opcode::DEALLOCATE => true,
            // Contract 1.1 and later (accelerator.md §3.1).
            opcode::COPY => config.offers_copy(),
            _ => false,
        };
        if !known {
            return Ok(Outcome::error(cq_status::INVALID_OPCODE, u32::from(desc.opcode)));
        }
        let data_op = matches!(desc.opcode, opcode::READ | opcode::WRITE);
        if desc.flags & !(flags::FUA | flags::SGL) != 0
            || desc.reserved != 0
            || (!data_op && desc.flags & flags::SGL != 0)
        {
            return Ok(Outcome::error(cq_status::INVALID_FIELD, 0));
        }
        if desc.opcode == opcode::FLUSH {
            // FLUSH covers the whole medium; its LBA and length are not used.
            return Ok(match self.shared.medium.flush() {
                Ok(()) => Outcome::ok(0),
                Err(e) => self.medium_error(cq_status::WRITE_ERROR, desc, &e),
            });
        }
        let length = u64::from(desc.length);
        if length == 0
            || !length.is_multiple_of(block)
            || (data_op && desc.length > config.max_transfer_bytes)
        {
            return Ok(Outcome::error(cq_status::INVALID_FIELD, desc.length));
        }
        if desc
            .lba
            .checked_add(length / block)
            .is_none_or(|end| end > config.num_blocks)
        {
            // COPY's detail is the low 32 bits of the offending range's first block (§3.1),
            // here the destination's, as for its source below. READ and the other ranged
            // opcodes report the first block past the medium, the first that fails (§4 says
            // only "failing LBA low bits").
            let detail = if desc.opcode == opcode::COPY {
                desc.lba
            } else {
                desc.lba.max(config.num_blocks)
            };
            return Ok(Outcome::error(cq_status::LBA_RANGE, detail as u32));
        }
        let offset = desc.lba * block;
        match desc.opcode {
            opcode::COPY => Ok(self.copy(token, desc, offset, length)),
            opcode::WRITE_ZEROES | opcode::DEALLOCATE => {
                let done = if desc.opcode == opcode::WRITE_ZEROES {
                    self.shared.medium.write_zeroes(token, offset, length)
                } else {
                    self.shared.medium.deallocate(token, offset, length)
                };
                // No data moves, but `bytes` reports the range done so success always means
                // bytes == length.
                Ok(match done {
                    Ok(()) => Outcome::ok(desc.length),
                    Err(e) => self.medium_error(cq_status::WRITE_ERROR, desc, &e),
                })
            }
            _ => {
                let segments = match self.segments(token, job, desc)? {
                    Ok(segments) => segments,
                    Err(outcome) => return Ok(outcome),
                };
                let outcome = self.transfer(token, job, desc, offset, segments.as_slice());
                if let Pieces::List(list) = segments {
                    self.sgl.set(list);
                }
                outcome
            }
        }
    }

    /// READ or WRITE over `segments`: in place where the medium allows, else through the
    /// bounce buffer.
    fn transfer(
        &self,
        token: &mut Token<'_>,
        job: &Job,
        desc: &Descriptor,
        offset: u64,
        segments: &[(u64, u32)],
    ) -> Step<Outcome> {
        let write = desc.opcode == opcode::WRITE;
        let in_place = if !write && desc.length as usize <= IN_PLACE_READ_MAX {
            self.read_in_place(token, job, desc, offset, segments)
        } else if write && desc.length as usize <= IN_PLACE_WRITE_MAX {
            self.write_in_place(token, job, desc, offset, segments)
        } else {
            None
        };
        if let Some(outcome) = in_place {
            return outcome;
        }
        let mut bounce = self.bounce.take();
        if bounce.len() < desc.length as usize {
            bounce.resize(desc.length as usize, 0);
        }
        let data = &mut bounce[..desc.length as usize];
        let outcome = if write {
            self.write(token, job, desc, offset, segments, data)
        } else {
            self.read(token, job, desc, offset, segments, data)
        };
        self.bounce.set(bounce);
        outcome
    }

    /// COPY (§3.1): `length` bytes from block `addr` to block `lba`, inside the medium. No
    /// flags, no scatter list, at most one transfer, ranges inside the medium and apart; the
    /// source is read whole before the destination changes.
    fn copy(&self, token: &mut Token<'_>, desc: &Descriptor, offset: u64, length: u64) -> Outcome {
        let config = &self.shared.config;
        let block = u64::from(config.block_size);
        let src = desc.addr;
        if desc.flags != 0 || desc.sgl_entries != 0 || desc.length > config.max_transfer_bytes {
            return Outcome::error(cq_status::INVALID_FIELD, desc.length);
        }
        let blocks = length / block;
        if src.checked_add(blocks).is_none_or(|end| end > config.num_blocks) {
            return Outcome::error(cq_status::LBA_RANGE, src as u32);
        }
        if src < desc.lba + blocks && desc.lba < src + blocks {
            return Outcome::error(cq_status::INVALID_FIELD, src as u32);
        }
        let mut data = vec![0u8; length as usize];
        if let Err(e) = self.shared.medium.read(token, src * block, &mut data) {
            log::warn!(
                "{}: queue {} COPY read error at LBA {src}: {e}",
                self.shared.id,
                self.q
            );
            return Outcome::error(cq_status::READ_ERROR, src as u32);
        }
        match self.shared.medium.write(token, offset, &data) {
            Ok(()) => Outcome::ok(desc.length),
            Err(e) => self.medium_error(cq_status::WRITE_ERROR, desc, &e),
        }
    }

    fn medium_error(&self, status: u8, desc: &Descriptor, e: &std::io::Error) -> Outcome {
        log::warn!(
            "{}: queue {} medium error at LBA {}: {e}",
            self.shared.id,
            self.q,
            desc.lba
        );
        Outcome::error(status, desc.lba as u32)
    }

    /// The data's `(iova, bytes)` pieces: the contiguous buffer, or the scatter list fetched
    /// through the IOMMU (a fault there halts the queue, §8). `Ok(Err(outcome))` is a
    /// descriptor error to complete with.
    fn segments(&self, token: &mut Token<'_>, job: &Job, desc: &Descriptor) -> Step<Result<Pieces, Outcome>> {
        if desc.flags & flags::SGL == 0 {
            return Ok(Ok(Pieces::One([(desc.addr, desc.length)])));
        }
        let count = u32::from(desc.sgl_entries);
        if count == 0 || count > self.shared.config.max_sgl_entries() {
            return Ok(Err(Outcome::error(cq_status::INVALID_FIELD, count)));
        }
        self.checkpoint(token, job)?;
        let mut raw = self.sgl_raw.take();
        raw.resize(count as usize * SGL_ENTRY_BYTES, 0);
        let fetched = self.shared.iommu.dma_read(desc.addr, &mut raw);
        let mut segments = self.sgl.take();
        segments.clear();
        let parsed = fetched.map(|()| parse_sgl(&raw, &mut segments));
        self.sgl_raw.set(raw);
        let verdict = match parsed {
            Err(_) => {
                self.sgl.set(segments);
                return Err(self.halt(token, job, cq_status::DMA_FAULT));
            }
            Ok(Err(bad)) => Err(Outcome::error(cq_status::INVALID_FIELD, bad)),
            Ok(Ok(total)) if total != u64::from(desc.length) => {
                Err(Outcome::error(cq_status::INVALID_FIELD, total as u32))
            }
            Ok(Ok(_)) => return Ok(Ok(Pieces::List(segments))),
        };
        self.sgl.set(segments);
        Ok(verdict)
    }

    /// WRITE: host → medium. The data is gathered first, so a DMA fault leaves the medium
    /// unchanged.
    fn write(
        &self,
        token: &mut Token<'_>,
        job: &Job,
        desc: &Descriptor,
        offset: u64,
        segments: &[(u64, u32)],
        data: &mut [u8],
    ) -> Step<Outcome> {
        let mut at = 0usize;
        for (iova, n) in dma_steps(segments) {
            self.checkpoint(token, job)?;
            if let Err(fault) = self.shared.iommu.dma_read(iova, &mut data[at..at + n]) {
                return Ok(Outcome {
                    status: cq_status::DMA_FAULT,
                    bytes: at as u32,
                    detail: fault.iova as u32,
                });
            }
            at += n;
        }
        if let Err(e) = self.shared.medium.write(token, offset, data) {
            return Ok(self.medium_error(cq_status::WRITE_ERROR, desc, &e));
        }
        if desc.flags & flags::FUA != 0 {
            if let Err(e) = self.shared.medium.flush() {
                return Ok(self.medium_error(cq_status::WRITE_ERROR, desc, &e));
            }
        }
        Counters::add(&self.shared.stats.bytes_written, u64::from(desc.length));
        Ok(Outcome::ok(desc.length))
    }

    /// READ of at most [`IN_PLACE_READ_MAX`] over any scatter list: one validity check, then
    /// one copy from the medium's blocks to the host pieces, made under the medium's read lock
    /// (`Medium::read_in_place`, [`Scatter`]) instead of two through the bounce buffer. The
    /// command's blocks are read in one step against every writer, as before; a fault stops the
    /// copy at the first host piece not mapped whole and `bytes` says what arrived before it.
    /// A READ of several DMA steps checks the job's validity once, before its first step, not
    /// before each: the check is for an early stop, and the host reclaims nothing while the
    /// engine holds the descriptor (§6). `None` when the medium cannot lend its blocks (a
    /// file): the caller goes through the bounce buffer.
    fn read_in_place(
        &self,
        token: &mut Token<'_>,
        job: &Job,
        desc: &Descriptor,
        offset: u64,
        segments: &[(u64, u32)],
    ) -> Option<Step<Outcome>> {
        if let Err(abandoned) = self.checkpoint(token, job) {
            return Some(Err(abandoned));
        }
        let iommu = &self.shared.iommu;
        let mut scatter = Scatter::new(segments);
        let moved =
            self.shared
                .medium
                .read_in_place(token, offset, Scatter::total(segments), |under, blocks| {
                    iommu.dma_batch_under(under, |batch| scatter.copy(batch, blocks))
                })?;
        let arrived = scatter.arrived() as u64;
        Counters::add(&self.shared.stats.bytes_read, arrived);
        Some(Ok(match moved {
            Err(e) => self.medium_error(cq_status::READ_ERROR, desc, &e),
            Ok(Err(fault)) => Outcome {
                status: cq_status::DMA_FAULT,
                bytes: arrived as u32,
                detail: fault.iova as u32,
            },
            Ok(Ok(())) => Outcome::ok(desc.length),
        }))
    }

    /// WRITE of at most [`IN_PLACE_WRITE_MAX`] over any scatter list: one validity check, then
    /// every DMA step the buffered path makes ([`DMA_CHUNK`] of a segment at most) checked
    /// against the IOMMU, then one copy from the host pieces into the medium's blocks
    /// ([`gather_checked`]), all under one hold of the medium's write lock and of the IOMMU's table
    /// (`Medium::write_in_place`, `Iommu::dma_batch_under`), instead of two copies through the
    /// bounce buffer. A step that would fault is found before any block changes: the medium
    /// stays as it was, the fault names the step the buffered path named, and `bytes` is what
    /// that path had gathered before it. The command's blocks change in one step against every
    /// other access, as before. One validity check for all its steps, as
    /// [`Engine::read_in_place`] says why. `None` when the medium cannot lend its blocks (a
    /// file): the caller goes through the bounce buffer.
    fn write_in_place(
        &self,
        token: &mut Token<'_>,
        job: &Job,
        desc: &Descriptor,
        offset: u64,
        segments: &[(u64, u32)],
    ) -> Option<Step<Outcome>> {
        if let Err(abandoned) = self.checkpoint(token, job) {
            return Some(Err(abandoned));
        }
        let iommu = &self.shared.iommu;
        let medium = &self.shared.medium;
        let moved = medium.write_in_place(token, offset, desc.length as usize, |under, blocks| {
            iommu.dma_batch_under(under, |batch| {
                gather_checked(batch, dma_steps(segments), segments, blocks)
            })
        })?;
        let outcome = match moved {
            Err(e) => self.medium_error(cq_status::WRITE_ERROR, desc, &e),
            Ok(Err((gathered, fault))) => Outcome {
                status: cq_status::DMA_FAULT,
                bytes: gathered as u32,
                detail: fault.iova as u32,
            },
            Ok(Ok(())) => {
                if desc.flags & flags::FUA != 0 {
                    if let Err(e) = medium.flush() {
                        return Some(Ok(self.medium_error(cq_status::WRITE_ERROR, desc, &e)));
                    }
                }
                Counters::add(&self.shared.stats.bytes_written, u64::from(desc.length));
                Outcome::ok(desc.length)
            }
        };
        Some(Ok(outcome))
    }

    /// READ: medium → host, piece by piece; on a DMA fault `bytes` says how much arrived.
    fn read(
        &self,
        token: &mut Token<'_>,
        job: &Job,
        desc: &Descriptor,
        offset: u64,
        segments: &[(u64, u32)],
        data: &mut [u8],
    ) -> Step<Outcome> {
        if let Err(e) = self.shared.medium.read(token, offset, data) {
            return Ok(self.medium_error(cq_status::READ_ERROR, desc, &e));
        }
        let mut at = 0usize;
        for (iova, n) in dma_steps(segments) {
            self.checkpoint(token, job)?;
            if let Err(fault) = self.shared.iommu.dma_write(iova, &data[at..at + n]) {
                Counters::add(&self.shared.stats.bytes_read, at as u64);
                return Ok(Outcome {
                    status: cq_status::DMA_FAULT,
                    bytes: at as u32,
                    detail: fault.iova as u32,
                });
            }
            at += n;
        }
        Counters::add(&self.shared.stats.bytes_read, u64::from(desc.length));
        Ok(Outcome::ok(desc.length))
    }

    /// Post one completion entry (§4): in `reserved` if the caller found it free, else wait for
    /// a free slot (a full ring stalls the engine, never drops), write the 16 bytes with the
    /// flags byte last, advance the tail (flipping the phase on wrap), then signal it as
    /// `signal` says (§9).
    fn post(
        &self,
        token: &mut Token<'_>,
        job: &Job,
        entry: Completion,
        bad_phase: bool,
        signal: Signal,
        reserved: Option<Slot>,
    ) -> Step<()> {
        let free_slot = |st: &BoardState| {
            let qs = &st.queues[self.qi()];
            (!qs.cq_full()).then_some((qs.cq_tail, qs.phase))
        };
        let (slot, phase) = match reserved {
            Some(slot) => slot,
            None => {
                // A doorbell's writer's job carries the slot it claimed (`Engine::claim`): a
                // writer never waits for its own reap.
                debug_assert!(!self.inline, "an inline execution found no completion slot");
                self.await_cq_slot(token, job, free_slot)?
            }
        };
        let addr = job.cq_base + u64::from(slot) * COMPLETION_BYTES;
        let flags = if phase { CQ_PHASE } else { 0 };
        if bad_phase {
            // The previous pass's phase: to a driver that checks PHASE this is "not written".
            self.write_entry(
                token,
                job,
                addr,
                &Completion {
                    flags: flags ^ CQ_PHASE,
                    ..entry
                },
            )?;
            self.hold(token, job, Some(Instant::now() + BAD_PHASE_HOLD), |_| None::<()>)?;
        }
        self.write_entry(token, job, addr, &Completion { flags, ..entry })?;

        if self.inline && signal == Signal::Coalesced {
            // Published with BUSY cleared, in one hold, with the other entries of the claim
            // (`Engine::release_inline`).
            self.unpublished.borrow_mut().push((*job, (slot, phase)));
            return Ok(());
        }
        let mut st = self.lock(token);
        if !self.valid(&st, job) {
            return Err(Abandoned);
        }
        let vector = match signal {
            Signal::Coalesced => self.publish(&mut st, job, (slot, phase)),
            Signal::Burst => {
                self.advance_cq_tail(&mut st, job, slot);
                st.set_int_status(self.qi());
                None
            }
        };
        drop(st);
        self.raise(vector);
        Ok(())
    }

    /// Publish a writer's completion entries written and not yet published, in order: each
    /// entry's interrupt, if due (all on this queue's vector), and how many were, to raise once
    /// the lock is released.
    fn publish_pending(&self, st: &mut StateGuard<'_>) -> (Option<u32>, u32) {
        let (mut vector, mut raises) = (None, 0);
        let mut unpublished = self.unpublished.take();
        for (job, slot) in unpublished.drain(..) {
            if let Some(due) = self.publish(st, &job, slot) {
                (vector, raises) = (Some(due), raises + 1);
            }
        }
        // Its capacity kept for the next claim.
        self.unpublished.replace(unpublished);
        (vector, raises)
    }

    /// Publish the completion entry written at `slot` for `job`: `cq_tail` past it, counted,
    /// INT_STATUS and coalescing (§9). Nothing if the job is no longer valid (its entry stays
    /// unpublished, as an abandoned descriptor's). The vector to raise once `st` is released.
    fn publish(&self, st: &mut StateGuard<'_>, job: &Job, (slot, _): Slot) -> Option<u32> {
        if !self.valid(st, job) {
            return None;
        }
        self.advance_cq_tail(st, job, slot);
        st.note_completion(self.qi(), Instant::now)
    }

    /// `cq_tail` past the entry posted at `slot`, the phase flipped at the wrap; counted.
    fn advance_cq_tail(&self, st: &mut StateGuard<'_>, job: &Job, slot: u32) {
        let qs = &mut st.queues[self.qi()];
        qs.cq_tail = (slot + 1) % job.ring_size;
        if qs.cq_tail == 0 {
            qs.phase = !qs.phase;
        }
        Counters::add(&self.shared.stats.completions, 1);
    }

    /// Raise `vector`, if any, with no lock held.
    fn raise(&self, vector: Option<u32>) {
        self.raise_times(vector, 1);
    }

    /// Raise `vector`, if any, `times` times (one per completion that made it due).
    fn raise_times(&self, vector: Option<u32>, times: u32) {
        if let Some(vector) = vector {
            for _ in 0..times {
                self.shared.raise(vector);
            }
        }
    }

    /// Hold `job` until a completion slot is free, with this queue's CQ_HEAD writes waking the
    /// engine meanwhile ([`Shared::await_cq_slot`](super::board::Shared::await_cq_slot)).
    /// Without a deadline the hold returns only with a free slot, or abandons.
    fn await_cq_slot(
        &self,
        token: &mut Token<'_>,
        job: &Job,
        free_slot: impl Fn(&BoardState) -> Option<Slot>,
    ) -> Step<Slot> {
        self.shared.await_cq_slot(self.q, true);
        let held = self.hold(token, job, None, free_slot);
        self.shared.await_cq_slot(self.q, false);
        held?.ok_or(Abandoned)
    }

    /// Write an entry's bytes 0..3 and 4..16, then the flags byte (3) on its own, so a host
    /// that sees the new PHASE sees the whole entry: one IOMMU call that orders the pieces
    /// ([`Iommu::dma_write_ordered`](scst_accel_hal::sim::Iommu::dma_write_ordered)), after
    /// one check that the job is still valid. One check covers both pieces for the reason any
    /// step's check does ([`Engine::checkpoint`]): the host reclaims the ring only after BUSY
    /// reads 0, which this engine sets after the write. A fault on the ring halts the queue.
    fn write_entry(&self, token: &mut Token<'_>, job: &Job, addr: u64, entry: &Completion) -> Step<()> {
        let bytes = entry.as_bytes();
        self.checkpoint(token, job)?;
        let pieces = [
            (addr, &bytes[..3]),
            (addr + 4, &bytes[4..]),
            (addr + 3, &bytes[3..4]),
        ];
        if self.shared.iommu.dma_write_ordered(&pieces).is_err() {
            return Err(self.halt(token, job, cq_status::DMA_FAULT));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sca1::regs::control;
    use crate::sca1::regs::global;
    use crate::sca1::regs::queue;
    use crate::sim::create_sim_board;
    use crate::sim::Fault;
    use crate::sim::SimConfig;
    use scst_accel_hal::DeviceBacking;

    /// The check before a DMA step skips the lock while nothing changed since a check under
    /// it, or since a doorbell's writer claimed the job (`Engine::claim` stands for the first
    /// check); every change that ends the engine's right to work must still be seen at once.
    #[test]
    fn a_checkpoint_sees_run_cleared_resets_fatal_and_device_loss() {
        type Change = fn(&dyn DeviceBacking, &crate::sim::SimHandle);
        let changes: [(&str, Change); 5] = [
            ("RUN cleared", |dev, _| {
                dev.bar0().write32(queue::reg(0, queue::Q_CONTROL), 0);
            }),
            ("soft reset", |dev, _| {
                dev.bar0().write32(global::CONTROL, control::SOFT_RESET);
            }),
            ("ENABLE cleared", |dev, _| {
                dev.bar0().write32(global::CONTROL, 0);
            }),
            ("FATAL", |_, sim| sim.inject(Fault::Fatal { code: 7 })),
            ("device gone", |_, sim| sim.inject(Fault::DeviceGone)),
        ];
        for ((what, change), inline) in changes.iter().flat_map(|c| [(c, false), (c, true)]) {
            let config = SimConfig {
                queues: 1,
                vectors: 0,
                num_blocks: 1024,
                ..SimConfig::default()
            };
            let (dev, sim) = create_sim_board("ckpt", config).expect("sim board");
            let bar = dev.bar0();
            bar.write32(global::CONTROL, control::ENABLE);
            bar.write64(queue::reg(0, queue::SQ_BASE), 0x10_0000);
            bar.write64(queue::reg(0, queue::CQ_BASE), 0x20_0000);
            bar.write32(queue::reg(0, queue::RING_SIZE), 8);
            bar.write32(queue::reg(0, queue::Q_CONTROL), queue::RUN);
            // A second view of queue 0's engine, driven by the test thread.
            let engine = Engine::new(sim.shared(), 0, inline);
            let mut token = Token::root();
            let job = if inline {
                // A descriptor made waiting and claimed in one hold: no doorbell, so no engine
                // thread looks, and the claim's BUSY keeps them out after.
                let changes = sim.shared().changes();
                let mut st = engine.lock(&mut token);
                st.queues[0].sq_tail = 1;
                let Claim::Jobs { first: job, .. } = engine.claim(&mut st, changes, 1) else {
                    panic!("{what}: the writer's claim");
                };
                assert_eq!(
                    st.queues[0].sq_head, 1,
                    "{what}: the claim consumed the descriptor"
                );
                assert_eq!(
                    engine.checked.get(),
                    Some((job.epoch, changes)),
                    "{what}: the claim stands for the first check"
                );
                job
            } else {
                let st = engine.lock(&mut token);
                Job {
                    epoch: st.queues[0].epoch,
                    reset_epoch: st.reset_epoch,
                    index: 0,
                    seq: 0,
                    ring_size: 8,
                    sq_base: 0x10_0000,
                    cq_base: 0x20_0000,
                    claimed_slot: None,
                }
            };
            // A writer's claim is the check before its first step: the change comes straight
            // after it.
            if !inline {
                assert!(
                    engine.checkpoint(&mut token, &job).is_ok(),
                    "{what}: valid before"
                );
                assert!(
                    engine.checkpoint(&mut token, &job).is_ok(),
                    "{what}: valid, unlocked"
                );
            }
            change(dev.as_ref(), &sim);
            assert!(
                engine.checkpoint(&mut token, &job).is_err(),
                "{what} (writer {inline}): the next check abandons the job"
            );
        }
    }
}
