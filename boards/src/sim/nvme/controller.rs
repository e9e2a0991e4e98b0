//! The simulated NVMe controller: the [`SimModel`] behind a
//! [`SimDevice`](scst_accel_hal::sim::SimDevice), owning the register file, the namespace's
//! medium, the fault plan and the worker threads (one per submission queue).
//!
//! Locking (docs/locking.md): the levels of the SCA-1 simulator are reused with the same
//! meaning, since both are simulated boards and never nest with each other: the controller
//! state (`sim.state`) guards registers and queues; the fault plan (`sim.faults`) is never
//! taken under it; the workers' join handles have `sim.engines`; the medium has `sim.medium`.
//! No lock is held across a DMA copy, an interrupt, a sleep or a join.
//!
//! Locks are taken with a [`LockToken`] wherever one can reach: the worker makes its root at
//! the top of its thread and threads it down; the handle's calls, the worker's start and the
//! model's `function_reset`/`shutdown` make one at their entry (asserting that the caller holds
//! no checked lock). The register access a driver makes under its own lock on every command,
//! a doorbell write (the NVMe driver's admin queue rings its doorbells under `nvme.admin`),
//! takes no lock here: doorbells are posted writes ([`Posted`]), queued without a lock and
//! applied, in order, by the next holder of the state lock, and the write wakes the worker of
//! that queue with `unpark` (a wake-up that cannot be lost, unlike a condition variable
//! notified without its mutex): an SQ tail doorbell its SQ's worker, a CQ head doorbell the
//! workers stalled on a full CQ ([`Shared::mark_stalled`]), an invalid one the admin worker
//! (it may owe an asynchronous event). Other BAR accesses take the state lock checked at run time only (`lock_for_bar`):
//! they arrive through the `RegisterIo` trait object with no token, possibly under a driver's
//! lock (an MMIO access is not a blocking call; diag reads a spare queue's registers under
//! `accel.spare_queues`).

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

use super::super::medium::Medium;
use super::fault::Decision;
use super::fault::FaultPlan;
use super::spec::reg;
use super::state::ControllerState;
use super::state::QueueDeletion;
use super::worker;
use super::NvmeFault;
use super::NvmeSimConfig;
use super::NvmeSimStats;

/// How long shutdown waits for the worker thread before leaving it detached.
const JOIN_BOUND: Duration = Duration::from_secs(5);
/// How long a function reset waits for the worker to let go of its command.
const RESET_BOUND: Duration = Duration::from_secs(2);

/// The state lock's guard.
pub(crate) type StateGuard<'a> = OrderedMutexGuard<'a, ControllerState, levels::SimState>;

/// The token of a thread of the model that holds no lock (the worker's, or an entry point's).
pub(crate) type Token<'t> = LockToken<'t, levels::Root>;

/// Doorbell writes the posted queue holds: the workers drain it at every look at the state,
/// so it holds a few; a full one costs its writer a hold of the state lock, nothing else.
pub(crate) const POSTED_DOORBELLS: usize = 256;

/// Doorbell writes not yet applied to the controller state, oldest first: what a real
/// controller's posted writes are between the bus and its queue logic. The host side only
/// queues (lock-free: a bounded crossbeam channel's send takes no lock while nobody blocks in
/// a receive, and nobody does; its slots are allocated once, so a doorbell allocates nothing);
/// the holder of the state lock drains them in [`Shared::lock`], so every register access and
/// every worker decision sees the doorbells written before it, in the order written. A writer
/// that finds the queue full drains it itself under the state lock ([`Shared::ring`]).
#[derive(Debug)]
struct Posted {
    tx: crossbeam_channel::Sender<(u64, u32, Instant)>,
    rx: crossbeam_channel::Receiver<(u64, u32, Instant)>,
}

impl Posted {
    fn new() -> Self {
        let (tx, rx) = crossbeam_channel::bounded(POSTED_DOORBELLS);
        Self { tx, rx }
    }
}

/// Event counters behind [`NvmeSimStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub commands: AtomicU64,
    pub completions: AtomicU64,
    pub interrupts: AtomicU64,
    pub resets: AtomicU64,
    pub doorbell_writes: AtomicU64,
    /// Doorbell writes that found the posted queue full and were applied by their writer.
    pub doorbells_applied_by_writer: AtomicU64,
    pub invalid_doorbell_writes: AtomicU64,
    pub fused_compare_writes: AtomicU64,
    pub fused_miscompares: AtomicU64,
    pub shutdown_notifications: AtomicU64,
    pub shutdowns_with_io_queues: AtomicU64,
    pub flushes: AtomicU64,
    pub inline_completions: AtomicU64,
    pub fused_given_back: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Everything the worker, the BAR and the [`NvmeSimHandle`](super::NvmeSimHandle) share.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Device name for logs.
    pub id: String,
    /// Capabilities.
    pub config: NvmeSimConfig,
    /// The only path to host memory.
    pub iommu: Arc<Iommu>,
    /// MSI-X vectors.
    pub interrupts: Arc<InterruptLines>,
    /// Namespace 1's blocks.
    pub medium: Medium,
    /// Counters.
    pub stats: Counters,
    state: OrderedMutex<ControllerState, levels::SimState>,
    /// The state's epoch, published at every change: a worker's check before a DMA step
    /// reads it without the lock.
    epoch: Arc<AtomicU64>,
    /// Doorbell writes not yet applied to `state`.
    posted: Posted,
    /// Doorbell writes made visible so far (posted, or applied by a writer that found the
    /// posted queue full): a worker about to sleep on a full CQ compares it with the count it
    /// read before its last look ([`Shared::mark_stalled`]).
    doorbells: AtomicU64,
    /// Signalled when a worker lets go of a command (a function reset and an SQ deletion
    /// wait for it).
    wake: OrderedCondvar,
    /// Worker w's thread (SQ w), woken with `unpark` on every change it may be waiting for
    /// (set by the worker itself before it first looks at the state, so no wake-up is lost).
    workers: Vec<OnceLock<Thread>>,
    /// Per worker: it has commands but their CQ is full; a CQ head doorbell wakes it.
    stalled: Vec<AtomicBool>,
    /// Workers waiting on [`Shared::wake`] for the CQ room of a fused operation's second
    /// command (`worker::fused`), counted under the state lock before their look for it.
    fused_waiters: AtomicUsize,
    faults: OrderedMutex<FaultPlan, levels::SimFaults>,
    /// The fault plan's length, published under its lock after each change: while it is 0 a
    /// command's verdict is the default one and the plan's lock is not taken (a lock per
    /// command for the faults that a run almost never injects).
    standing_faults: AtomicUsize,
    gone: AtomicBool,
    stopping: AtomicBool,
}

impl Shared {
    /// Lock the controller state, letting the doorbell writes posted so far and due
    /// time-driven transitions happen first.
    pub(crate) fn lock<'a, M: LockBefore<levels::SimState>>(
        &'a self,
        token: &'a mut LockToken<'_, M>,
    ) -> StateGuard<'a> {
        let (mut st, _) = self.state.lock(token);
        self.apply_posted(&mut st);
        st.tick_now();
        st
    }

    /// Lock the controller state for a BAR access other than a doorbell, as [`Shared::lock`].
    #[track_caller]
    fn lock_for_bar(&self) -> StateGuard<'_> {
        self.lock_for_bar_after(None)
    }

    /// [`Shared::lock_for_bar`], with `doorbell` (a write its writer found no room to post)
    /// applied after the posted ones and at its own time, before the clock ticks to now.
    #[track_caller]
    fn lock_for_bar_after(&self, doorbell: Option<(u64, u32, Instant)>) -> StateGuard<'_> {
        // Unchecked: a BAR access arrives through the `RegisterIo` trait object (hal), which
        // carries no token, and the driver may hold its own lock there; every driver lock is
        // below `sim.state`, which the runtime check still enforces.
        let mut st = self.state.lock_unchecked_at_runtime();
        self.apply_posted(&mut st);
        if let Some((offset, value, at)) = doorbell {
            self.apply_doorbell(&mut st, offset, value, at);
        }
        st.tick_now();
        st
    }

    /// Apply the posted doorbell writes to `st`, each at the time it was written. Their
    /// wake-up was already given by the writer ([`Shared::ring`]), except an invalid one's
    /// asynchronous event, which is the admin worker's to post.
    fn apply_posted(&self, st: &mut ControllerState) {
        for (offset, value, at) in self.posted.rx.try_iter() {
            self.apply_doorbell(st, offset, value, at);
        }
    }

    /// Apply one doorbell write, made at `at`, to `st`.
    fn apply_doorbell(&self, st: &mut ControllerState, offset: u64, value: u32, at: Instant) {
        st.tick(at);
        let fx = st.write32(offset, value, at, &self.id);
        if fx.invalid_doorbell {
            Counters::add(&self.stats.invalid_doorbell_writes);
        }
        if fx.invalid_doorbell && fx.wake {
            // An unpark, not a blocking call: allowed under the state lock.
            self.wake_worker(0);
        }
    }

    /// Wait (as the function reset does) for a worker to signal a change, at most `timeout`.
    pub(crate) fn wait<'a>(&self, guard: StateGuard<'a>, timeout: Duration) -> StateGuard<'a> {
        let mut st = self.wake.wait_timeout(guard, timeout).0;
        self.apply_posted(&mut st);
        st.tick_now();
        st
    }

    /// The worker's wait: at most `timeout`, or until [`Shared::notify`] or a doorbell wakes
    /// it. The worker holds no lock here (asserted): its state is re-read under the lock after.
    pub(crate) fn park(&self, timeout: Duration) {
        locks::blocking("the NVMe worker's park", || std::thread::park_timeout(timeout));
    }

    /// Wake every worker and every waiter of the condition variable (a change of the whole
    /// controller: CC, a fault, a reset, shutdown).
    pub(crate) fn notify(&self) {
        self.wake.notify_all();
        for w in 0..self.workers.len() {
            self.wake_worker(w);
        }
    }

    /// A worker let go of its command: wake the resets and SQ deletions waiting for that, and
    /// the workers stalled on a full CQ (a promised slot may be free again). Not the others:
    /// they wait for their own doorbells.
    pub(crate) fn released(&self) {
        self.wake.notify_all();
        self.wake_stalled();
    }

    fn wake_worker(&self, w: usize) {
        if let Some(worker) = self.workers.get(w).and_then(OnceLock::get) {
            worker.unpark();
        }
    }

    fn wake_stalled(&self) {
        for (w, stalled) in self.stalled.iter().enumerate() {
            if stalled.load(Ordering::SeqCst) {
                self.wake_worker(w);
            }
        }
    }

    /// The doorbell writes made visible so far: read by a worker before it takes the state
    /// lock for a look, for [`Shared::mark_stalled`].
    pub(crate) fn doorbells(&self) -> u64 {
        self.doorbells.load(Ordering::SeqCst)
    }

    /// Worker `w` publishes whether it is stalled on a full CQ, before it parks. Returns true
    /// when a doorbell was made visible since `seen` ([`Shared::doorbells`], read before its
    /// last look at the state): it looks again instead of parking. The flag is stored before
    /// that check and [`Shared::ring`] loads it after its count, both sequentially consistent:
    /// either the worker sees the doorbell or the writer sees the flag and unparks it (an
    /// unpark before the park makes the park return). Counting, not looking at the posted
    /// queue, also covers a write that another lock holder drained, or that its writer applied
    /// itself, between the worker's look and this check.
    pub(crate) fn mark_stalled(&self, w: usize, stalled: bool, seen: u64) -> bool {
        let Some(flag) = self.stalled.get(w) else {
            return false;
        };
        flag.store(stalled, Ordering::SeqCst);
        std::sync::atomic::fence(Ordering::SeqCst);
        stalled && self.doorbells.load(Ordering::SeqCst) != seen
    }

    /// Called by worker `w` at the top of its thread, before it first looks at the state.
    pub(crate) fn register_worker(&self, w: usize) {
        if let Some(slot) = self.workers.get(w) {
            let _ = slot.set(std::thread::current());
        }
    }

    /// A doorbell write: posted, then the worker it concerns woken (an SQ tail doorbell: that
    /// SQ's worker; a CQ head doorbell: the workers stalled on a full CQ; a doorbell of no
    /// queue: the admin worker, which reports it). Takes no lock while the posted queue has
    /// room, and the state lock when it is full, which is above every driver lock: a driver
    /// may ring a doorbell while holding its own (the NVMe driver's admin queue does, under
    /// `nvme.admin`).
    fn ring(&self, offset: u64, value: u32) {
        Counters::add(&self.stats.doorbell_writes);
        // The receiver lives as long as `self`, so the send fails only when the queue is full:
        // then this write is applied under the state lock after every write posted before it.
        if let Err(crossbeam_channel::TrySendError::Full(doorbell)) =
            self.posted.tx.try_send((offset, value, Instant::now()))
        {
            drop(self.lock_for_bar_after(Some(doorbell)));
            Counters::add(&self.stats.doorbells_applied_by_writer);
        }
        self.doorbells.fetch_add(1, Ordering::SeqCst);
        // CAP.DSTRD = 0: SQ y's tail doorbell at 2y, CQ y's head doorbell at 2y + 1 (§3.1.24).
        let index = ((offset - reg::DOORBELLS) / 4) as usize;
        let qid = index / 2;
        if qid >= self.workers.len() {
            self.wake_worker(0);
        } else if index.is_multiple_of(2) {
            if self.config.inline_doorbells && worker::run_inline(self, qid) {
                return;
            }
            self.wake_worker(qid);
        } else {
            // Sequentially consistent after the count: see `mark_stalled`.
            std::sync::atomic::fence(Ordering::SeqCst);
            self.wake_stalled();
            // And a worker waiting on the condition variable for the room of a fused
            // operation's second command (`worker::fused`). It counts itself under the state
            // lock before it looks, and waits with the lock released: either it looks after
            // this write was posted, or this sees the count and, through the lock, notifies
            // only once it waits.
            if self.fused_waiters.load(Ordering::SeqCst) > 0 {
                drop(self.lock_for_bar());
                self.wake.notify_all();
            }
        }
    }

    /// The controller epoch as last published (every enable and reset bumps it).
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// The device was removed ([`NvmeFault::Gone`]).
    pub(crate) fn gone(&self) -> bool {
        self.gone.load(Ordering::Acquire)
    }

    /// The SimDevice is being dropped.
    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Raise `vector` (with no lock held) and count it.
    pub(crate) fn raise(&self, vector: u32) {
        Counters::add(&self.stats.interrupts);
        self.interrupts.raise(vector);
    }

    /// A worker starts (`true`) or ends its wait for a fused second's CQ room; called with the
    /// state locked.
    pub(crate) fn fused_wait(&self, waiting: bool) {
        if waiting {
            self.fused_waiters.fetch_add(1, Ordering::SeqCst);
        } else {
            self.fused_waiters.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Whether any fault is planned: then only the worker threads execute commands.
    pub(crate) fn faults_standing(&self) -> bool {
        self.standing_faults.load(Ordering::Acquire) != 0
    }

    /// The fault plan's verdict on the next command. With no fault standing the verdict is
    /// the default one, read without the lock: a fault injected concurrently applies from the
    /// next command, as it would had the lock been taken just before the injection.
    pub(crate) fn decide(&self, token: &mut Token<'_>, io: bool, read: bool) -> Decision {
        if self.standing_faults.load(Ordering::Acquire) == 0 {
            return Decision::default();
        }
        self.faults.lock(token).0.decide(io, read)
    }

    /// Change the fault plan under its lock and publish its length ([`Shared::decide`]).
    fn change_faults(&self, token: &mut Token<'_>, change: impl FnOnce(&mut FaultPlan)) {
        let (mut plan, _) = self.faults.lock(token);
        change(&mut plan);
        self.standing_faults.store(plan.len(), Ordering::Release);
    }

    /// A register read from the driver.
    #[track_caller]
    fn read32(&self, offset: u64) -> u32 {
        if self.gone() {
            return u32::MAX;
        }
        self.lock_for_bar().read32(offset)
    }

    /// A register write from the driver: a doorbell is posted ([`Shared::ring`], no lock);
    /// any other register is written under the state lock ([`Shared::lock_for_bar`]).
    #[track_caller]
    fn write32(&self, offset: u64, value: u32) {
        if self.gone() {
            return;
        }
        if offset >= reg::DOORBELLS {
            self.ring(offset, value);
            return;
        }
        let fx = self
            .lock_for_bar()
            .write32(offset, value, Instant::now(), &self.id);
        if fx.invalid_doorbell {
            Counters::add(&self.stats.invalid_doorbell_writes);
        }
        if fx.reset {
            Counters::add(&self.stats.resets);
        }
        if fx.shutdown {
            Counters::add(&self.stats.shutdown_notifications);
        }
        if fx.shutdown_with_io_queues {
            Counters::add(&self.stats.shutdowns_with_io_queues);
        }
        if fx.wake {
            self.notify();
        }
    }

    /// Function reset: a controller reset with every register back to its reset value, then
    /// wait (bounded) until no worker holds a command, so no DMA follows the return.
    #[track_caller]
    fn function_reset(&self) {
        let mut token = LockToken::root();
        let mut st = self.lock(&mut token);
        if !self.gone() {
            st.function_reset();
            Counters::add(&self.stats.resets);
        }
        self.notify();
        let deadline = Instant::now() + RESET_BOUND;
        while st.any_busy() {
            let now = Instant::now();
            if now >= deadline {
                log::error!(
                    "{}: a worker still holds a command {RESET_BOUND:?} after a function reset",
                    self.id
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
    pub(crate) fn inject(&self, fault: NvmeFault) {
        log::info!("{}: injecting fault {fault}", self.id);
        let mut token = LockToken::root();
        match fault {
            NvmeFault::Gone => {
                self.gone.store(true, Ordering::Release);
                // The workers read the flag before they park and `notify` below unparks them, so
                // it cannot sleep past it; the lock orders it with checks made under the lock.
                drop(self.lock(&mut token));
            }
            NvmeFault::Hang => self.lock(&mut token).hung = true,
            NvmeFault::Cfs => self.lock(&mut token).cfs = true,
            NvmeFault::ShutdownHang => {
                self.change_faults(&mut token, |plan| plan.add(fault));
                self.lock(&mut token).shutdown_hang = true;
            }
            NvmeFault::ResetIgnored => {
                self.change_faults(&mut token, |plan| plan.add(fault));
                self.lock(&mut token).reset_ignored = true;
            }
            NvmeFault::BusMasterStuck => {
                self.change_faults(&mut token, |plan| plan.add(fault));
                self.lock(&mut token).bus_master_stuck = true;
            }
            other => self.change_faults(&mut token, |plan| plan.add(other)),
        }
        self.notify();
    }

    /// Remove every standing fault (events already applied stay: a gone controller stays
    /// gone, a hung or CFS one stays so until reset).
    ///
    /// # Panics
    /// As [`Shared::inject`].
    #[track_caller]
    pub(crate) fn clear_faults(&self) {
        let mut token = LockToken::root();
        self.change_faults(&mut token, FaultPlan::clear);
        let mut st = self.lock(&mut token);
        st.shutdown_hang = false;
        st.reset_ignored = false;
        st.bus_master_stuck = false;
        drop(st);
        self.notify();
    }

    /// The standing faults.
    ///
    /// # Panics
    /// As [`Shared::inject`].
    #[track_caller]
    pub(crate) fn faults(&self) -> Vec<NvmeFault> {
        let mut token = LockToken::root();
        let (plan, _) = self.faults.lock(&mut token);
        plan.list()
    }

    /// A snapshot of the counters, with every doorbell written so far applied (so an invalid
    /// one is counted).
    ///
    /// # Panics
    /// As [`Shared::inject`].
    #[track_caller]
    pub(crate) fn stats(&self) -> NvmeSimStats {
        drop(self.lock(&mut LockToken::root()));
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NvmeSimStats {
            commands: get(&self.stats.commands),
            completions: get(&self.stats.completions),
            interrupts: get(&self.stats.interrupts),
            iommu_faults: self.iommu.fault_count(),
            resets: get(&self.stats.resets),
            doorbell_writes: get(&self.stats.doorbell_writes),
            invalid_doorbell_writes: get(&self.stats.invalid_doorbell_writes),
            doorbells_applied_by_writer: get(&self.stats.doorbells_applied_by_writer),
            fused_compare_writes: get(&self.stats.fused_compare_writes),
            fused_miscompares: get(&self.stats.fused_miscompares),
            shutdown_notifications: get(&self.stats.shutdown_notifications),
            shutdowns_with_io_queues: get(&self.stats.shutdowns_with_io_queues),
            flushes: get(&self.stats.flushes),
            inline_completions: get(&self.stats.inline_completions),
            fused_given_back: get(&self.stats.fused_given_back),
        }
    }

    /// The newest I/O queue deletions carried out, oldest first.
    ///
    /// # Panics
    /// As [`Shared::inject`].
    #[track_caller]
    pub(crate) fn deletions(&self) -> Vec<QueueDeletion> {
        self.lock(&mut LockToken::root())
            .deletions
            .iter()
            .copied()
            .collect()
    }
}

/// The model handed to the SimDevice.
pub(crate) struct NvmeController {
    shared: Arc<Shared>,
    workers: OrderedMutex<Vec<JoinHandle<()>>, levels::SimEngines>,
}

impl NvmeController {
    /// A controller in its power-on state; nothing runs until [`NvmeController::start`].
    pub(crate) fn new(id: &str, config: NvmeSimConfig, medium: Medium, ctx: SimContext) -> Self {
        let config = config.with_device_ids();
        let queues = config.queues;
        let state = ControllerState::new(&config);
        let epoch = state.published_epoch();
        Self {
            shared: Arc::new(Shared {
                id: id.to_owned(),
                config,
                iommu: ctx.iommu,
                interrupts: ctx.interrupts,
                medium,
                stats: Counters::default(),
                state: OrderedMutex::new(state),
                epoch,
                posted: Posted::new(),
                doorbells: AtomicU64::new(0),
                wake: OrderedCondvar::new(),
                // Worker w serves SQ w: the admin queue and every I/O queue.
                workers: (0..=queues).map(|_| OnceLock::new()).collect(),
                stalled: (0..=queues).map(|_| AtomicBool::new(false)).collect(),
                fused_waiters: AtomicUsize::new(0),
                faults: OrderedMutex::new(FaultPlan::default()),
                standing_faults: AtomicUsize::new(0),
                gone: AtomicBool::new(false),
                stopping: AtomicBool::new(false),
            }),
            workers: OrderedMutex::new(Vec::new()),
        }
    }

    /// The state shared with the worker and handles.
    pub(crate) fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }

    /// Start the worker threads, one per submission queue.
    ///
    /// # Errors
    /// The errno of thread creation; workers already started run until shutdown.
    ///
    /// # Panics
    /// In debug and test builds, when the caller holds a checked lock (it is called once, by
    /// [`create_nvme_sim`](super::create_nvme_sim)).
    #[track_caller]
    pub(crate) fn start(&self) -> std::io::Result<()> {
        let mut token = LockToken::root();
        let (mut workers, _) = self.workers.lock(&mut token);
        for w in 0..self.shared.workers.len() {
            let shared = Arc::clone(&self.shared);
            let handle = std::thread::Builder::new()
                .name(format!("{}-nvme{w}", self.shared.id))
                .spawn(move || worker::run(shared, w))?;
            workers.push(handle);
        }
        Ok(())
    }
}

impl SimModel for NvmeController {
    fn read32(&self, offset: u64) -> u32 {
        self.shared.read32(offset)
    }

    fn write32(&self, offset: u64, value: u32) {
        self.shared.write32(offset, value);
    }

    fn read64(&self, offset: u64) -> u64 {
        if self.shared.gone() {
            return u64::MAX;
        }
        // Both halves under one lock: CAP, ASQ and ACQ never tear in this model.
        let st = self.shared.lock_for_bar();
        u64::from(st.read32(offset)) | (u64::from(st.read32(offset + 4)) << 32)
    }

    fn function_reset(&self) {
        self.shared.function_reset();
    }

    fn pci_identity(&self) -> PciIdentity {
        super::PCI_IDENTITY
    }

    fn reset_refused(&self) -> bool {
        // Reached from the HAL's reset with no token (a driver lock may be held, none above
        // `sim.state`): checked at run time only, as every BAR access.
        !self.shared.gone() && self.shared.lock_for_bar().reset_ignored
    }

    fn config_space_responds(&self) -> bool {
        !self.shared.gone()
    }

    fn bus_master_sticks(&self) -> bool {
        // As `reset_refused`.
        self.shared.lock_for_bar().bus_master_stuck
    }

    fn shutdown(&self) {
        self.shared.stopping.store(true, Ordering::Release);
        // From Drop, which must not panic: a lock held by the caller is reported, not asserted
        // (a root token or locks::join_bounded would panic in test builds), and the two locks
        // are then taken unchecked by the compiler, still checked at run time.
        if let Some((name, level)) = locks::held_locks().last() {
            log::error!(
                "{}: shutting down the worker while holding `{name}` (level {level}): a lock \
                 held across a join (docs/locking.md)",
                self.shared.id
            );
            // Unchecked: reached from Drop with a lock held (reported above), where a root
            // token would panic; the runtime order check still applies.
            drop(self.shared.state.lock_unchecked_at_runtime());
            self.shared.notify();
            // Unchecked: as above.
            let handles = std::mem::take(&mut *self.workers.lock_unchecked_at_runtime());
            self.join_workers(handles);
            return;
        }
        let mut token = LockToken::root();
        drop(self.shared.lock(&mut token));
        self.shared.notify();
        let handles = std::mem::take(&mut *self.workers.lock(&mut token).0);
        self.join_workers(handles);
    }
}

impl NvmeController {
    /// Join the workers, bounded by [`JOIN_BOUND`] for all of them; a worker that does not
    /// stop is left detached (logged).
    fn join_workers(&self, handles: Vec<JoinHandle<()>>) {
        let deadline = Instant::now() + JOIN_BOUND;
        for handle in handles {
            while !handle.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            if !handle.is_finished() {
                log::error!(
                    "{}: a worker did not stop within {JOIN_BOUND:?}; left detached",
                    self.shared.id
                );
                continue;
            }
            if handle.join().is_err() {
                log::error!("{}: a worker thread panicked", self.shared.id);
            }
        }
        log::debug!("{}: controller shut down", self.shared.id);
    }
}
