//! The simulated NVMe controller: the [`SimModel`] behind a
//! [`SimDevice`](scst_accel_hal::sim::SimDevice), owning the register file, the namespace's
//! medium, the fault plan and the worker thread.
//!
//! Locking (docs/locking.md): the levels of the SCA-1 simulator are reused with the same
//! meaning, since both are simulated boards and never nest with each other: the controller
//! state (`sim.state`) guards registers and queues; the fault plan (`sim.faults`) is never
//! taken under it; the worker's join handle has `sim.engines`; the medium has `sim.medium`.
//! No lock is held across a DMA copy, an interrupt, a sleep or a join.

use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use std::time::Instant;

use scst_accel_hal::locks;
use scst_accel_hal::locks::levels;
use scst_accel_hal::locks::OrderedCondvar;
use scst_accel_hal::locks::OrderedMutex;
use scst_accel_hal::locks::OrderedMutexGuard;
use scst_accel_hal::sim::InterruptLines;
use scst_accel_hal::sim::Iommu;
use scst_accel_hal::sim::SimContext;
use scst_accel_hal::sim::SimModel;

use super::super::medium::Medium;
use super::fault::Decision;
use super::fault::FaultPlan;
use super::state::ControllerState;
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

/// Event counters behind [`NvmeSimStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub commands: AtomicU64,
    pub completions: AtomicU64,
    pub interrupts: AtomicU64,
    pub resets: AtomicU64,
    pub doorbell_writes: AtomicU64,
    pub invalid_doorbell_writes: AtomicU64,
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
    /// Signalled on every change the worker or a reset waiter may be waiting for.
    wake: OrderedCondvar,
    faults: OrderedMutex<FaultPlan, levels::SimFaults>,
    gone: AtomicBool,
    stopping: AtomicBool,
}

impl Shared {
    /// Lock the controller state, letting due time-driven transitions happen first. Register
    /// accesses arrive through the `RegisterIo` trait object, where no token can be threaded:
    /// checked at run time.
    pub(crate) fn lock(&self) -> StateGuard<'_> {
        let mut st = self.state.lock_unchecked_at_runtime();
        st.tick(Instant::now());
        st
    }

    /// Wait for a change, at most `timeout`.
    pub(crate) fn wait<'a>(&self, guard: StateGuard<'a>, timeout: Duration) -> StateGuard<'a> {
        let mut st = self.wake.wait_timeout(guard, timeout).0;
        st.tick(Instant::now());
        st
    }

    /// Wake every waiter.
    pub(crate) fn notify(&self) {
        self.wake.notify_all();
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

    /// The fault plan's verdict on the next command.
    pub(crate) fn decide(&self, io: bool, read: bool) -> Decision {
        self.faults.lock_unchecked_at_runtime().decide(io, read)
    }

    fn read32(&self, offset: u64) -> u32 {
        if self.gone() {
            return u32::MAX;
        }
        self.lock().read32(offset)
    }

    fn write32(&self, offset: u64, value: u32) {
        if self.gone() {
            return;
        }
        let fx = self.lock().write32(offset, value, Instant::now(), &self.id);
        if fx.doorbell {
            Counters::add(&self.stats.doorbell_writes);
        }
        if fx.invalid_doorbell {
            Counters::add(&self.stats.invalid_doorbell_writes);
        }
        if fx.reset {
            Counters::add(&self.stats.resets);
        }
        if fx.wake {
            self.notify();
        }
    }

    /// Function reset: a controller reset with every register back to its reset value, then
    /// wait (bounded) until the worker holds no command, so no DMA follows the return.
    fn function_reset(&self) {
        let mut st = self.lock();
        if !self.gone() {
            st.function_reset();
            Counters::add(&self.stats.resets);
        }
        self.notify();
        let deadline = Instant::now() + RESET_BOUND;
        while st.busy {
            let now = Instant::now();
            if now >= deadline {
                log::error!(
                    "{}: the worker still holds a command {RESET_BOUND:?} after a function reset",
                    self.id
                );
                return;
            }
            st = self.wait(st, deadline - now);
        }
    }

    /// Apply an event fault or store a standing one.
    pub(crate) fn inject(&self, fault: NvmeFault) {
        log::info!("{}: injecting fault {fault}", self.id);
        match fault {
            NvmeFault::Gone => {
                self.gone.store(true, Ordering::Release);
                // Take the lock so the worker cannot miss the flag between check and wait.
                drop(self.lock());
            }
            NvmeFault::Hang => self.lock().hung = true,
            NvmeFault::Cfs => self.lock().cfs = true,
            NvmeFault::ShutdownHang => {
                self.faults.lock_unchecked_at_runtime().add(fault);
                self.lock().shutdown_hang = true;
            }
            other => self.faults.lock_unchecked_at_runtime().add(other),
        }
        self.notify();
    }

    /// Remove every standing fault (events already applied stay: a gone controller stays
    /// gone, a hung or CFS one stays so until reset).
    pub(crate) fn clear_faults(&self) {
        self.faults.lock_unchecked_at_runtime().clear();
        self.lock().shutdown_hang = false;
        self.notify();
    }

    /// The standing faults.
    pub(crate) fn faults(&self) -> Vec<NvmeFault> {
        self.faults.lock_unchecked_at_runtime().list()
    }

    /// A snapshot of the counters.
    pub(crate) fn stats(&self) -> NvmeSimStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NvmeSimStats {
            commands: get(&self.stats.commands),
            completions: get(&self.stats.completions),
            interrupts: get(&self.stats.interrupts),
            iommu_faults: self.iommu.fault_count(),
            resets: get(&self.stats.resets),
            doorbell_writes: get(&self.stats.doorbell_writes),
            invalid_doorbell_writes: get(&self.stats.invalid_doorbell_writes),
        }
    }
}

/// The model handed to the SimDevice.
pub(crate) struct NvmeController {
    shared: Arc<Shared>,
    worker: OrderedMutex<Option<JoinHandle<()>>, levels::SimEngines>,
}

impl NvmeController {
    /// A controller in its power-on state; nothing runs until [`NvmeController::start`].
    pub(crate) fn new(id: &str, config: NvmeSimConfig, medium: Medium, ctx: SimContext) -> Self {
        let config = config.with_device_ids();
        let state = ControllerState::new(&config);
        Self {
            shared: Arc::new(Shared {
                id: id.to_owned(),
                config,
                iommu: ctx.iommu,
                interrupts: ctx.interrupts,
                medium,
                stats: Counters::default(),
                state: OrderedMutex::new(state),
                wake: OrderedCondvar::new(),
                faults: OrderedMutex::new(FaultPlan::default()),
                gone: AtomicBool::new(false),
                stopping: AtomicBool::new(false),
            }),
            worker: OrderedMutex::new(None),
        }
    }

    /// The state shared with the worker and handles.
    pub(crate) fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }

    /// Start the worker thread.
    ///
    /// # Errors
    /// The errno of thread creation.
    pub(crate) fn start(&self) -> std::io::Result<()> {
        let shared = Arc::clone(&self.shared);
        let handle = std::thread::Builder::new()
            .name(format!("{}-nvme", self.shared.id))
            .spawn(move || worker::run(shared))?;
        *self.worker.lock_unchecked_at_runtime() = Some(handle);
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
        let st = self.shared.lock();
        u64::from(st.read32(offset)) | (u64::from(st.read32(offset + 4)) << 32)
    }

    fn function_reset(&self) {
        self.shared.function_reset();
    }

    fn config_space_responds(&self) -> bool {
        !self.shared.gone()
    }

    fn shutdown(&self) {
        self.shared.stopping.store(true, Ordering::Release);
        drop(self.shared.lock());
        self.shared.notify();
        let Some(handle) = self.worker.lock_unchecked_at_runtime().take() else {
            return;
        };
        // From Drop, which must not panic: a lock held across this join is reported, not
        // asserted (locks::join_bounded would panic in test builds).
        if let Some((name, level)) = locks::held_locks().last() {
            log::error!(
                "{}: joining the worker while holding `{name}` (level {level}) (docs/locking.md)",
                self.shared.id
            );
        }
        let deadline = Instant::now() + JOIN_BOUND;
        while !handle.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        if !handle.is_finished() {
            log::error!(
                "{}: the worker did not stop within {JOIN_BOUND:?}; left detached",
                self.shared.id
            );
            return;
        }
        if handle.join().is_err() {
            log::error!("{}: the worker thread panicked", self.shared.id);
        }
        log::debug!("{}: controller shut down", self.shared.id);
    }
}
