//! The simulated SCA-1 board: the [`SimModel`] behind a [`SimDevice`](scst_accel_hal::sim::SimDevice),
//! owning the register file, the medium, the fault plan and one engine thread per queue.
//!
//! Wake-ups: each engine parks between looks at the state; a doorbell unparks only its own
//! queue's engine (a CQ_HEAD write only while that engine waits for a completion slot; an
//! SQ_TAIL write only when its writer could not run the descriptors itself, `engine::run_inline`),
//! every other change all of them ([`Shared::notify`]), which also signals the
//! condition variable a function reset waits on for the engines to go idle. Each wake-up is
//! counted per queue before the unpark ([`Shared::wakes`]), so an engine whose last look found
//! nothing sleeps again, without the lock, until one was signalled after that look.
//!
//! Locking (docs/locking.md): one mutex guards the register file and every queue's engine state
//! ([`BoardState`], level `sim.state`), except the registers the host writes on every command:
//! the doorbells are posted and INT_STATUS_CLEAR is an atomic `fetch_and` ([`Posted`]), so a
//! driver's submission and reap take no simulator lock and never wait for an engine that holds
//! the state; the fault plan has its own (`sim.faults`), never taken
//! while holding the state lock; the engine handles have `sim.engines`. No lock is held across
//! a DMA copy, an interrupt or a thread join: register writes return their
//! [`Effects`](super::registers::Effects), carried out after unlocking. The simulated IOMMU
//! asserts it: a DMA copy starts from a root [`LockToken`].
//!
//! Locks are taken with a token wherever one can reach: each engine thread makes its root at
//! its top and threads it down ([`engine::run`]); the handle's calls, `function_reset`,
//! `reset_refused` and the engines' start make one at their entry, which asserts that the
//! caller holds no checked lock (a reset stands for a blocking VFIO ioctl). Two paths take
//! them checked at run time only, each site marked `Unchecked:`: a BAR access, which arrives
//! through the `RegisterIo` trait object with no token and possibly under a driver's lock (an
//! MMIO access is not a blocking call: diag dumps spare queues' registers under
//! `accel.spare_queues`), and `shutdown` from `Drop` when its caller holds a lock (logged,
//! never a panic).

use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::OnceLock;
use std::thread::JoinHandle;
use std::thread::Thread;
use std::time::Duration;
use std::time::Instant;

use scst_accel_hal::locks;
use scst_accel_hal::locks::levels;
use scst_accel_hal::locks::LockBefore;
use scst_accel_hal::locks::LockToken;
use scst_accel_hal::locks::OrderedCondvar;
use scst_accel_hal::locks::OrderedMutex;
use scst_accel_hal::locks::OrderedMutexGuard;
use scst_accel_hal::sim::InterruptLines;
use scst_accel_hal::sim::Iommu;
use scst_accel_hal::sim::SimContext;
use scst_accel_hal::sim::SimModel;
use scst_accel_hal::PciIdentity;

use super::engine;
use super::engine::TagSet;
use super::fault::Decision;
use super::fault::FaultPlan;
use super::medium::Medium;
use super::registers::doorbell_of;
use super::registers::BoardState;
use super::registers::Posted;
use super::Fault;
use super::SimConfig;
use super::SimStats;
use crate::sca1::regs::ALL_ONES;

/// How long shutdown waits for the engine threads to end before leaving them detached.
const JOIN_BOUND: Duration = Duration::from_secs(5);

/// The register-file lock's guard.
pub(crate) type StateGuard<'a> = OrderedMutexGuard<'a, BoardState, levels::SimState>;

/// The token of a thread of the model that holds no lock (an engine's, or an entry point's).
pub(crate) type Token<'t> = LockToken<'t, levels::Root>;

/// Event counters behind [`SimStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub descriptors: AtomicU64,
    pub completions: AtomicU64,
    pub bytes_read: AtomicU64,
    pub bytes_written: AtomicU64,
    pub interrupts: AtomicU64,
    pub resets: AtomicU64,
    pub stale: AtomicU64,
    pub hangs: AtomicU64,
    pub inline_descriptors: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Everything the board's engines, its BAR and its [`SimHandle`](super::SimHandle) share.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Device name for logs.
    pub id: String,
    /// Capabilities.
    pub config: SimConfig,
    /// The only path to host memory.
    pub iommu: Arc<Iommu>,
    /// MSI-X vectors.
    pub interrupts: Arc<InterruptLines>,
    /// The blocks.
    pub medium: Medium,
    /// Counters.
    pub stats: Counters,
    state: OrderedMutex<BoardState, levels::SimState>,
    /// Changes made to the state that can end an engine's right to work, counted under the
    /// state lock (see [`Shared::changed`]).
    changes: AtomicU64,
    /// The doorbells and INT_STATUS, written by the host without the state lock.
    posted: Arc<Posted>,
    /// Bits of INT_STATUS that name a queue.
    queue_bits: u32,
    /// Signalled on every change a reset waiter may be waiting for (engines going idle).
    wake: OrderedCondvar,
    /// Each queue's engine thread, woken with `unpark`: by its own queue's doorbells alone,
    /// and by every other change ([`Shared::notify`]). Set by the engine before it first looks
    /// at the state, so no wake-up is lost.
    engines: Vec<OnceLock<Thread>>,
    /// Per queue, the wake-ups signalled to its engine, counted before each unpark (see
    /// [`Shared::wakes`]).
    wakes: Vec<AtomicU64>,
    /// Per queue, whether its engine waits for a free completion slot (§4): the only time a
    /// CQ_HEAD write is news to it ([`Shared::await_cq_slot`]).
    cq_slot_waiters: Vec<AtomicBool>,
    gone: AtomicBool,
    /// Memory Space Enable is clear ([`Fault::MemorySpaceOff`]): the BAR reads all-ones, the
    /// engines run on. A function reset sets it again.
    mmio_off: AtomicBool,
    /// A soft reset was ignored ([`Fault::ResetIgnored`]): CONTROL.SOFT_RESET reads 1 for ever.
    reset_stuck: AtomicBool,
    stopping: AtomicBool,
    faults: OrderedMutex<FaultPlan, levels::SimFaults>,
    /// How many faults the plan holds, written under its lock after every change: with none,
    /// an engine's per-descriptor verdict is the default one and needs no lock.
    standing_faults: AtomicUsize,
    /// Per queue, descriptors taken since the board was created (the fault plan's `every`
    /// counter), by its engine thread or a doorbell's writer.
    taken: Vec<AtomicU64>,
    /// Per queue, the tags fetched, so an injected unknown tag is really unknown.
    seen_tags: Vec<TagSet>,
}

impl Shared {
    /// Lock the register file (a poisoned lock is still usable: the state is plain data).
    pub(crate) fn lock<'a, M: LockBefore<levels::SimState>>(
        &'a self,
        token: &'a mut LockToken<'_, M>,
    ) -> StateGuard<'a> {
        self.state.lock(token).0
    }

    /// Count a change that can end an engine's right to work (a register write, a reset, a
    /// halt, FATAL, device loss). Called with the state lock held, after the change, so an
    /// engine that reads the old count before its own check under the lock saw the state
    /// before the change or after it, never a half.
    pub(crate) fn changed(&self) {
        self.changes.fetch_add(1, Ordering::AcqRel);
    }

    /// The change count ([`Shared::changed`]).
    pub(crate) fn changes(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    /// A reset waiter's wait for a change, at most `timeout`.
    fn wait<'a>(&self, guard: StateGuard<'a>, timeout: Duration) -> StateGuard<'a> {
        self.wake.wait_timeout(guard, timeout).0
    }

    /// An engine's wait: at most `timeout`, or until [`Shared::notify`] or one of its queue's
    /// doorbells wakes it. It holds no lock here (asserted) and re-reads the state after.
    pub(crate) fn park(&self, timeout: Duration) {
        locks::blocking("a simulated engine's park", || std::thread::park_timeout(timeout));
    }

    /// Called by queue `q`'s engine at the top of its thread.
    pub(crate) fn register_engine(&self, q: u32) {
        if let Some(slot) = self.engines.get(q as usize) {
            let _ = slot.set(std::thread::current());
        }
    }

    /// Wake queue `q`'s engine only (a doorbell of that queue). Counted first, after the
    /// change the wake-up is for was made.
    fn wake_engine(&self, q: usize) {
        if let Some(wakes) = self.wakes.get(q) {
            wakes.fetch_add(1, Ordering::SeqCst);
        }
        if let Some(engine) = self.engines.get(q).and_then(OnceLock::get) {
            engine.unpark();
        }
    }

    /// The wake-ups signalled to queue `q`'s engine so far. An engine reads it before a look
    /// at the state that finds no work; while it is unchanged, nothing that could make work
    /// was signalled since (every such change is made before its wake-up is counted: a
    /// doorbell posted, a register written, a reset, a fault, shutdown), so the engine may
    /// sleep again without re-reading the state.
    pub(crate) fn wakes(&self, q: u32) -> u64 {
        self.wakes
            .get(q as usize)
            .map_or(0, |wakes| wakes.load(Ordering::SeqCst))
    }

    /// Queue `q`'s engine starts (`true`) or ends (`false`) a wait for a free completion slot.
    /// Only then does a CQ_HEAD write wake it: a host consuming the completions of an engine
    /// that is not stalled (nearly always) would otherwise cost it a wake-up and a look that
    /// finds nothing, per reap. The fence pairs with the one after a CQ_HEAD write is posted
    /// ([`Shared::write32`]): either the engine's next look under the lock sees the posted
    /// head, or the writer sees this flag and wakes it.
    pub(crate) fn await_cq_slot(&self, q: u32, waiting: bool) {
        if let Some(flag) = self.cq_slot_waiters.get(q as usize) {
            flag.store(waiting, Ordering::Relaxed);
            std::sync::atomic::fence(Ordering::SeqCst);
        }
    }

    /// Whether queue `q`'s engine waits for a free completion slot (for the model's tests).
    #[cfg(test)]
    pub(crate) fn awaits_cq_slot(&self, q: u32) -> bool {
        self.cq_slot_waiters
            .get(q as usize)
            .is_some_and(|flag| flag.load(Ordering::SeqCst))
    }

    /// Wake the function resets waiting for the engines to go idle, and no engine.
    pub(crate) fn notify_reset_waiters(&self) {
        self.wake.notify_all();
    }

    /// Wake every engine and every reset waiter.
    pub(crate) fn notify(&self) {
        self.wake.notify_all();
        for q in 0..self.engines.len() {
            self.wake_engine(q);
        }
    }

    /// The device was removed ([`Fault::DeviceGone`]).
    pub(crate) fn gone(&self) -> bool {
        self.gone.load(Ordering::Acquire)
    }

    /// BAR accesses reach nothing: the device was removed, or its memory space is off
    /// ([`Fault::MemorySpaceOff`]).
    fn bar_dark(&self) -> bool {
        self.gone() || self.mmio_off.load(Ordering::Acquire)
    }

    /// The SimDevice is being dropped.
    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Raise `vector` (outside every lock) and count it.
    pub(crate) fn raise(&self, vector: u32) {
        Counters::add(&self.stats.interrupts, 1);
        self.interrupts.raise(vector);
    }

    /// The fault plan's verdict on the `n`th descriptor of queue `q`. With no standing fault
    /// the verdict is the default one, read without the lock: a fault injected concurrently
    /// applies from the next descriptor, as it would had the lock been taken just before the
    /// injection.
    pub(crate) fn decide(&self, token: &mut Token<'_>, q: u32, n: u64) -> Decision {
        if self.standing_faults.load(Ordering::Acquire) == 0 {
            return Decision::default();
        }
        self.faults.lock(token).0.decide(q, n)
    }

    /// Whether any fault is planned: then only the engine threads execute descriptors.
    pub(crate) fn faults_standing(&self) -> bool {
        self.standing_faults.load(Ordering::Acquire) != 0
    }

    /// Count one more descriptor taken on queue `q`; its number, from 1.
    pub(crate) fn count_taken(&self, q: u32) -> u64 {
        self.taken[q as usize].fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The tags fetched on queue `q`.
    pub(crate) fn seen_tags(&self, q: u32) -> &TagSet {
        &self.seen_tags[q as usize]
    }

    /// Publish the plan's size after a change to it (called with the plan locked).
    fn plan_changed(&self, plan: &FaultPlan) {
        self.standing_faults.store(plan.len(), Ordering::Release);
    }

    /// Lock the register file for a BAR access.
    #[track_caller]
    fn lock_for_bar(&self) -> StateGuard<'_> {
        // Unchecked: a BAR access arrives through the `RegisterIo` trait object (hal), which
        // carries no token, and the driver may hold its own lock there; every driver lock is
        // below `sim.state`, which the runtime check still enforces.
        self.state.lock_unchecked_at_runtime()
    }

    /// A register read from the driver.
    #[track_caller]
    fn read32(&self, offset: u64) -> u32 {
        if self.bar_dark() {
            return ALL_ONES;
        }
        if offset == crate::sca1::regs::global::INT_STATUS {
            // Posted, like its clear: the driver reads it back before every sleep under
            // REARM (§9), so it takes no lock.
            return self.posted.int_status();
        }
        let value = self.lock_for_bar().read32(&self.config, offset);
        if offset == crate::sca1::regs::global::CONTROL && self.reset_stuck.load(Ordering::Acquire) {
            // An ignored soft reset never completes (Fault::ResetIgnored).
            return value | crate::sca1::regs::control::SOFT_RESET;
        }
        value
    }

    /// Resets are ignored ([`Fault::ResetIgnored`]).
    fn resets_ignored(&self, token: &mut Token<'_>) -> bool {
        self.faults.lock(token).0.resets_ignored()
    }

    fn bus_master_sticks(&self, token: &mut Token<'_>) -> bool {
        self.faults.lock(token).0.bus_master_sticks()
    }

    /// A register write from the driver. A doorbell is posted and its queue's engine woken (by
    /// CQ_HEAD only when it waits for a completion slot), INT_STATUS_CLEAR applied at once,
    /// both without the state lock ([`Posted`]); a soft
    /// reset and the interrupts it releases are carried out on the same BAR path (no token).
    #[track_caller]
    fn write32(&self, offset: u64, value: u32) {
        if self.bar_dark() {
            return;
        }
        if let Some((q, head)) = doorbell_of(offset, self.engines.len()) {
            self.posted.post(q, head, value);
            if head {
                // Pairs with the fence in `await_cq_slot` (see there).
                std::sync::atomic::fence(Ordering::SeqCst);
                if !self.cq_slot_waiters[q].load(Ordering::Relaxed) {
                    return;
                }
            } else if self.config.inline_doorbells && engine::run_inline(self, q as u32) {
                return;
            }
            self.wake_engine(q);
            return;
        }
        if offset == crate::sca1::regs::global::INT_STATUS_CLEAR {
            self.posted.clear_int_status(value & self.queue_bits);
            return;
        }
        let fx = {
            let mut st = self.lock_for_bar();
            let fx = st.write32(offset, value, Instant::now());
            self.changed();
            fx
        };
        if fx.soft_reset {
            // Unchecked: the BAR path, as in `lock_for_bar`.
            let ignored = self.faults.lock_unchecked_at_runtime().resets_ignored();
            if ignored {
                log::warn!("{}: soft reset ignored (injected no-reset)", self.id);
                self.reset_stuck.store(true, Ordering::Release);
            } else {
                // Unchecked: the BAR path, as in `lock_for_bar`.
                let mut plan = self.faults.lock_unchecked_at_runtime();
                plan.remove_hangs();
                self.plan_changed(&plan);
                drop(plan);
                self.apply_reset(self.lock_for_bar());
            }
        }
        if fx.wake {
            self.notify();
        } else if let Some(q) = fx.wake_queue {
            self.wake_engine(q);
        }
        for vector in fx.raise {
            Counters::add(&self.stats.interrupts, 1);
            self.interrupts.raise_unchecked_at_runtime(vector);
        }
    }

    /// §7: stop every queue, abandon in-flight work, reset every register. Completes (SOFT_RESET
    /// reads 0) when no engine holds a descriptor any more.
    fn start_reset(&self, token: &mut Token<'_>) {
        // Hung engines are released by the reset; remove the fault so they stay released.
        {
            let (mut plan, _) = self.faults.lock(token);
            plan.remove_hangs();
            self.plan_changed(&plan);
        }
        self.apply_reset(self.lock(token));
    }

    /// The part of [`Shared::start_reset`] under the state lock, then the wake-up.
    fn apply_reset(&self, mut st: StateGuard<'_>) {
        st.apply_reset();
        self.changed();
        Counters::add(&self.stats.resets, 1);
        if st.finish_reset_if_idle() {
            log::info!("{}: reset complete", self.id);
        }
        drop(st);
        self.notify();
    }

    /// A function reset: a soft reset, then wait (bounded by RESET_TIMEOUT) until no engine
    /// holds a descriptor, so that no DMA is in progress or will start when this returns.
    #[track_caller]
    fn function_reset(&self) {
        let mut token = LockToken::root();
        if !self.gone() {
            // The reset's config restore enables memory space again.
            self.mmio_off.store(false, Ordering::Release);
            self.start_reset(&mut token);
        }
        let bound = Duration::from_millis(u64::from(self.config.reset_timeout_ms));
        let deadline = Instant::now() + bound;
        let mut st = self.lock(&mut token);
        while st.resetting || st.any_busy() {
            let now = Instant::now();
            if now >= deadline {
                log::error!(
                    "{}: engines still busy {} ms after a function reset; the model is broken",
                    self.id,
                    bound.as_millis()
                );
                return;
            }
            st = self.wait(st, deadline - now);
        }
    }

    /// Apply an event fault or store a standing one.
    ///
    /// # Panics
    /// In debug and test builds, when the caller holds a checked lock (the handle is a test
    /// and operator tool, used with none held).
    #[track_caller]
    pub(crate) fn inject(&self, fault: Fault) {
        log::info!("{}: injecting fault {fault}", self.id);
        let mut token = LockToken::root();
        match fault {
            Fault::DeviceGone => {
                self.gone.store(true, Ordering::Release);
                // Take the lock so no engine misses the flag between its check and its wait.
                let _st = self.lock(&mut token);
                self.changed();
            }
            Fault::MemorySpaceOff => {
                self.mmio_off.store(true, Ordering::Release);
            }
            Fault::Fatal { code } => {
                let mut st = self.lock(&mut token);
                st.fatal = true;
                st.fatal_code = code.max(1);
                self.changed();
            }
            other => {
                let (mut plan, _) = self.faults.lock(&mut token);
                plan.add(other);
                self.plan_changed(&plan);
            }
        }
        self.notify();
    }

    /// Remove every standing fault (events already applied stay: a gone device stays gone, a
    /// fatal board stays fatal until reset).
    ///
    /// # Panics
    /// As [`Shared::inject`].
    #[track_caller]
    pub(crate) fn clear_faults(&self) {
        let mut token = LockToken::root();
        {
            let (mut plan, _) = self.faults.lock(&mut token);
            plan.clear();
            self.plan_changed(&plan);
        }
        self.notify();
    }

    /// The standing faults.
    ///
    /// # Panics
    /// As [`Shared::inject`].
    #[track_caller]
    pub(crate) fn faults(&self) -> Vec<Fault> {
        let mut token = LockToken::root();
        let (plan, _) = self.faults.lock(&mut token);
        plan.list()
    }

    /// A snapshot of the counters.
    ///
    /// # Panics
    /// As [`Shared::inject`].
    #[track_caller]
    pub(crate) fn stats(&self) -> SimStats {
        let mut token = LockToken::root();
        let halted_queues = self.lock(&mut token).halted_queues();
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SimStats {
            descriptors: get(&self.stats.descriptors),
            completions: get(&self.stats.completions),
            bytes_read: get(&self.stats.bytes_read),
            bytes_written: get(&self.stats.bytes_written),
            iommu_faults: self.iommu.fault_count(),
            interrupts: get(&self.stats.interrupts),
            resets: get(&self.stats.resets),
            stale: get(&self.stats.stale),
            hangs: get(&self.stats.hangs),
            halted_queues,
            inline_descriptors: get(&self.stats.inline_descriptors),
        }
    }
}

/// The model handed to the SimDevice.
pub(crate) struct SimBoard {
    shared: Arc<Shared>,
    engines: OrderedMutex<Vec<JoinHandle<()>>, levels::SimEngines>,
}

impl SimBoard {
    /// A board in its reset state; no engine runs until [`SimBoard::start_engines`].
    pub(crate) fn new(id: &str, config: SimConfig, medium: Medium, ctx: SimContext) -> Self {
        let queues = config.queues;
        let state = BoardState::new(config.queues, config.offers_rearm(), config.max_ring_entries());
        let posted = state.posted();
        let queue_bits = if queues >= 32 {
            u32::MAX
        } else {
            (1u32 << queues) - 1
        };
        Self {
            shared: Arc::new(Shared {
                id: id.to_owned(),
                config,
                iommu: ctx.iommu,
                interrupts: ctx.interrupts,
                medium,
                stats: Counters::default(),
                state: OrderedMutex::new(state),
                changes: AtomicU64::new(0),
                posted,
                queue_bits,
                wake: OrderedCondvar::new(),
                engines: (0..queues).map(|_| OnceLock::new()).collect(),
                wakes: (0..queues).map(|_| AtomicU64::new(0)).collect(),
                cq_slot_waiters: (0..queues).map(|_| AtomicBool::new(false)).collect(),
                gone: AtomicBool::new(false),
                mmio_off: AtomicBool::new(false),
                reset_stuck: AtomicBool::new(false),
                stopping: AtomicBool::new(false),
                faults: OrderedMutex::new(FaultPlan::default()),
                standing_faults: AtomicUsize::new(0),
                taken: (0..queues).map(|_| AtomicU64::new(0)).collect(),
                seen_tags: (0..queues).map(|_| TagSet::new()).collect(),
            }),
            engines: OrderedMutex::new(Vec::new()),
        }
    }

    /// The state shared with engines and handles.
    pub(crate) fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }

    /// Start one engine thread per queue.
    ///
    /// # Errors
    /// The errno of thread creation; engines already started keep running until shutdown.
    ///
    /// # Panics
    /// In debug and test builds, when the caller holds a checked lock (it is called once, by
    /// [`create_sim_board`](super::create_sim_board)).
    #[track_caller]
    pub(crate) fn start_engines(&self) -> std::io::Result<()> {
        let mut token = LockToken::root();
        let (mut engines, _) = self.engines.lock(&mut token);
        for q in 0..self.shared.config.queues {
            let shared = Arc::clone(&self.shared);
            let handle = std::thread::Builder::new()
                .name(format!("{}-q{q}", self.shared.id))
                .spawn(move || engine::run(shared, q))?;
            engines.push(handle);
        }
        Ok(())
    }
}

impl SimModel for SimBoard {
    fn read32(&self, offset: u64) -> u32 {
        self.shared.read32(offset)
    }

    fn write32(&self, offset: u64, value: u32) {
        self.shared.write32(offset, value);
    }

    fn read64(&self, offset: u64) -> u64 {
        if self.shared.bar_dark() {
            return u64::MAX;
        }
        // Both halves under one lock: a 64-bit register never tears in this model.
        let st = self.shared.lock_for_bar();
        u64::from(st.read32(&self.shared.config, offset))
            | (u64::from(st.read32(&self.shared.config, offset + 4)) << 32)
    }

    fn function_reset(&self) {
        self.shared.function_reset();
    }

    fn reset_refused(&self) -> bool {
        self.shared.resets_ignored(&mut LockToken::root())
    }

    fn pci_identity(&self) -> PciIdentity {
        super::PCI_IDENTITY
    }

    fn config_space_responds(&self) -> bool {
        !self.shared.gone()
    }

    fn bus_master_sticks(&self) -> bool {
        self.shared.bus_master_sticks(&mut LockToken::root())
    }

    fn shutdown(&self) {
        self.shared.stopping.store(true, Ordering::Release);
        // This runs from `Drop`, which must not panic, so the rule "no lock across a join" is
        // reported here rather than asserted (a root token or locks::join_bounded would panic
        // in test builds).
        let engines = if let Some((name, level)) = locks::held_locks().last() {
            log::error!(
                "{}: joining engine threads while holding `{name}` (level {level}): a lock held \
                 across a blocking call (docs/locking.md)",
                self.shared.id
            );
            // Unchecked: reached from Drop with a lock held (reported above), where a root
            // token would panic; the runtime order check still applies.
            drop(self.shared.state.lock_unchecked_at_runtime());
            self.shared.notify();
            // Unchecked: as above.
            std::mem::take(&mut *self.engines.lock_unchecked_at_runtime())
        } else {
            let mut token = LockToken::root();
            drop(self.shared.lock(&mut token));
            self.shared.notify();
            let (mut engines, _) = self.engines.lock(&mut token);
            std::mem::take(&mut *engines)
        };
        let deadline = Instant::now() + JOIN_BOUND;
        for handle in engines {
            while !handle.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            if !handle.is_finished() {
                log::error!(
                    "{}: an engine thread did not stop within {JOIN_BOUND:?}; left detached",
                    self.shared.id
                );
                continue;
            }
            if handle.join().is_err() {
                log::error!("{}: an engine thread panicked", self.shared.id);
            }
        }
        log::debug!("{}: board shut down", self.shared.id);
    }
}
