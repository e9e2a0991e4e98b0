//! The SCA-1 function driver: bring-up, capabilities, reset and device-gone detection
//! (docs/accelerator.md §1, §7, §8). Generic over [`DeviceBacking`], so the same code drives a
//! VFIO function and the simulated board.

use super::queue::QueueConfig;
use super::queue::Sca1Queue;
use super::regs;
use super::regs::coalesce;
use super::regs::control;
use super::regs::global;
use super::regs::status;
use super::regs::Cap0;
use super::regs::Timeouts;
use crate::engine::Recovered;
use crate::recovery::Outcome;
use crate::recovery::RecoveryWord;
use crate::recovery::Waiting;
use scst_accel_dma::mapping::IovaLock;
use scst_accel_dma::IovaAllocator;
use scst_accel_hal::DeviceBacking;
use scst_accel_hal::HalError;
use scst_accel_hal::RegisterIo;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

/// Errors of the SCA-1 driver.
#[derive(Debug, thiserror::Error)]
pub enum Sca1Error {
    /// ID did not read as SCA-1.
    #[error("{device}: ID register reads {id:#010x}, not an SCA-1 function ({expected:#010x}); check --board and --pci")]
    NotSca1 {
        /// Device.
        device: String,
        /// What was read.
        id: u32,
        /// What SCA-1 reads.
        expected: u32,
    },
    /// Unsupported contract version.
    #[error("{device}: contract version {major}.{minor} is not supported (this driver speaks 1.x)")]
    Version {
        /// Device.
        device: String,
        /// Major.
        major: u32,
        /// Minor.
        minor: u32,
    },
    /// The device is gone (registers read all-ones).
    #[error("{device}: the device is gone (registers read all-ones)")]
    Gone {
        /// Device.
        device: String,
    },
    /// A bounded wait on the device expired.
    #[error("{device}: {what} did not happen within {timeout:?}")]
    Timeout {
        /// Device.
        device: String,
        /// What was waited for.
        what: &'static str,
        /// The bound.
        timeout: Duration,
    },
    /// The function reported FATAL.
    #[error("{device}: fatal error code {code:#x}; a reset is required")]
    Fatal {
        /// Device.
        device: String,
        /// FATAL_CODE.
        code: u32,
    },
    /// A capability register reads a value the contract does not allow (accelerator.md §1):
    /// the driver would otherwise size rings, queues or LBAs from it.
    #[error(
        "{device}: {register} reads {value:#x}: {why} (accelerator.md §1); the function does not \
         follow the SCA-1 contract: check its firmware, or --board and --pci"
    )]
    Capability {
        /// Device.
        device: String,
        /// The register (and field).
        register: &'static str,
        /// What it reads.
        value: u64,
        /// What the contract allows.
        why: &'static str,
    },
    /// A bring-up failed and nothing proved that the function stopped DMA: it could not be
    /// reset, and clearing bus mastering failed too.
    #[error(
        "{device}: {cause}; the function could not be reset and clearing bus mastering failed \
         ({bus_master}): nothing proves it stopped DMA, so its rings stay mapped; take it off the \
         bus (unbind it from vfio-pci, or power-cycle it) before using it again"
    )]
    DmaUnproven {
        /// Device.
        device: String,
        /// Why bring-up failed.
        cause: String,
        /// Why bus mastering could not be cleared.
        bus_master: String,
    },
    /// Another thread's recovery of the function, which this caller waited for, failed.
    #[error(
        "{device}: another thread's recovery of the function failed (its error is logged); \
         the function is not usable: tear it down"
    )]
    RecoveryFailed {
        /// Device.
        device: String,
    },
    /// A queue cannot restart while a reset or recovery of its function is under way.
    #[error(
        "{device}: queue {queue} not restarted: a reset of the function is under way; restart \
         it again once the reset count moves"
    )]
    ResetUnderWay {
        /// Device.
        device: String,
        /// The queue.
        queue: u32,
    },
    /// A queue cannot restart on a disabled function: a plain reset (the teardown's, a store
    /// giving up) left ENABLE = 0, and RUN is set only on an enabled function
    /// (accelerator.md §7 bring-up). Only a recovery enables it again.
    #[error(
        "{device}: queue {queue} not restarted: the function is disabled (reset and not \
         recovered); recover it before restarting its queues"
    )]
    Disabled {
        /// Device.
        device: String,
        /// The queue.
        queue: u32,
    },
    /// Queue or ring setup failed.
    #[error("{device}: {what}")]
    Setup {
        /// Device.
        device: String,
        /// What failed.
        what: String,
    },
    /// The HAL failed.
    #[error(transparent)]
    Hal(#[from] HalError),
}

/// What the function offers (CAP0, CAP1, CAPACITY, BLOCK_SIZE, TIMEOUTS).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sca1Caps {
    /// Queues and limits.
    pub cap0: Cap0,
    /// Largest transfer of one descriptor in bytes.
    pub max_transfer_bytes: u32,
    /// Medium blocks.
    pub capacity_blocks: u64,
    /// Block size.
    pub block_size: u32,
    /// Stop and reset bounds.
    pub timeouts: Timeouts,
    /// The COPY descriptor is offered (VERSION 1.1 or later, accelerator.md §3.1).
    pub copy: bool,
    /// INT_COALESCE.REARM is offered (VERSION 1.2 or later, accelerator.md §9).
    pub rearm: bool,
}

/// Driver tuning.
#[derive(Clone, Debug)]
pub struct Sca1Config {
    /// Queues to bring up (at most CAP0.queues).
    pub queues: u32,
    /// Entries per ring (power of two, at most 2^CAP0.max_ring).
    pub ring_entries: u32,
    /// Use MSI-X interrupts when offered (else poll).
    pub interrupts: bool,
    /// INT_COALESCE: completions per interrupt. 1 by default (an interrupt per completion):
    /// the board holds an interrupt until this many completions or `coalesce_us` have passed,
    /// so a count above what a queue has in flight makes every completion wait for the timer.
    /// With 8 and 20 µs, 128 KiB reads at QD8 over two queues (4 in flight each) through the
    /// loopback made 27.5k-31.0k IOPS on the simulated board against 35.4k-36.1k with 1; 4 KiB
    /// reads at QD32 were the same either way through the loopback and about 5 % faster with 8
    /// at the store layer alone (1-9 % in three alternated pairs; docs/performance.md,
    /// "Keeping both CPUs busy").
    pub coalesce_count: u8,
    /// INT_COALESCE: µs before an interrupt for fewer than `coalesce_count` completions.
    pub coalesce_us: u16,
    /// INT_COALESCE.REARM, when the engine offers it (contract 1.2, accelerator.md §9): a
    /// queue's vector is raised once, then not again until the queue, about to sleep, clears
    /// its INT_STATUS bit; while its owner is busy reaping, completions post without
    /// interrupts. On by default.
    pub rearm: bool,
    /// IOVA window for rings, scatter lists and buffers.
    pub iova_base: u64,
    /// Size of the window.
    pub iova_size: u64,
    /// Make every 64-bit register access (CAPACITY, SQ_BASE, CQ_BASE) two 32-bit ones, low word
    /// first: the board's `split_64bit_mmio` quirk, for a register bus that takes no 8-byte
    /// access (XDMA's AXI-Lite). The ring bases are written while their queue is stopped, so
    /// the engine never uses a half-written one (accelerator.md §2: writable only while RUN = 0).
    pub split_64bit_mmio: bool,
    /// The largest transfer of one descriptor the board handles well (the board definition's
    /// `max_transfer_bytes`), rounded down to whole 4 KiB units (CAP1's, at least one); CAP1
    /// caps it further. `u32::MAX`: what CAP1 says.
    pub max_transfer_bytes: u32,
}

impl Default for Sca1Config {
    fn default() -> Self {
        Self {
            queues: 2,
            ring_entries: 256,
            interrupts: true,
            coalesce_count: 1,
            coalesce_us: 20,
            rearm: true,
            iova_base: 1 << 32,
            iova_size: 1 << 40,
            split_64bit_mmio: false,
            max_transfer_bytes: u32::MAX,
        }
    }
}

/// An enabled SCA-1 function.
pub struct Sca1 {
    device: Arc<dyn DeviceBacking>,
    caps: Sca1Caps,
    iovas: Arc<IovaLock>,
    coalesce: u32,
    /// What the function's queues share with it about resets.
    state: Arc<ResetState>,
    /// Queues and MSI-X vectors of the bring-up (queue i has vector i; the rest are polled),
    /// for the dump: a host short of vectors starts the board with fewer (crate::vectors).
    queues_and_vectors: [AtomicU32; 2],
}

/// The resets of one function, shared with its queues (accelerator.md §7: a reset stops every
/// queue). A queue must not restart while a reset or recovery is under way: one restarted after
/// the reset stopped the engines but before the recovery published its reset count would submit
/// requests the device may execute, and the store then fails every request submitted before it
/// sees the new count as ABORTED, buffers released, while they may still DMA
/// ([`super::Sca1Queue::restart`] checks, [`Sca1::recover`] publishes).
#[derive(Debug, Default)]
pub(super) struct ResetState {
    /// Bumped when a reset starts: a restart that sees it move while it programs its queue
    /// cannot know whether its RUN reached the device before or after the reset.
    started: AtomicU64,
    /// Resets and recoveries under way.
    under_way: AtomicU64,
    /// Recoveries completed ([`Sca1::reset_count`]): published while `under_way` still counts
    /// the recovery, so no queue restarts between the reset and the count's move.
    resets: AtomicU64,
    /// One recovery at a time; a second caller of [`Sca1::recover`] waits for the running one
    /// and takes its outcome.
    recovery: RecoveryWord,
}

/// What a function reset through VFIO is given in [`Sca1::recovery_bound`], as the NVMe driver
/// gives it its admin timeout: Linux waits 100 ms after an FLR and then polls a function that
/// is not ready yet (up to a minute for one that keeps answering "retry"); one that takes
/// longer than this is taken for failed by a second caller.
const FUNCTION_RESET_ALLOWANCE: Duration = Duration::from_secs(5);

#[cfg(test)]
impl Sca1 {
    /// The recovery word and the reset count, for tests that stand in for a recovery's steps.
    pub(super) fn recovery_state(&self) -> (&RecoveryWord, &AtomicU64) {
        (&self.state.recovery, &self.state.resets)
    }
}

impl ResetState {
    /// Taken (SeqCst, with `under_way`) before a queue programs its registers; a later
    /// [`ResetState::still_quiet`] with it says no reset started or ran meanwhile.
    pub(super) fn quiet(&self) -> Option<u64> {
        let started = self.started.load(Ordering::SeqCst);
        (self.under_way.load(Ordering::SeqCst) == 0).then_some(started)
    }

    /// Resets started so far (any reset: a recovery's, the teardown's, bring-up's). Each one
    /// clears every queue's RUN (accelerator.md §7), so a queue whose run began under an
    /// earlier value was stopped by it, whichever queue or caller reset the function.
    pub(super) fn started(&self) -> u64 {
        self.started.load(Ordering::SeqCst)
    }

    /// No reset started since [`ResetState::quiet`] returned `since`, and none runs.
    pub(super) fn still_quiet(&self, since: u64) -> bool {
        self.quiet() == Some(since)
    }
}

/// A reset or recovery under way, counted in [`ResetState::under_way`] while it lives. Started
/// before the reset's first register write: a restart that reads the counts after that write
/// may have programmed its queue after the reset, and must fail.
struct UnderWay<'a>(&'a ResetState);

impl<'a> UnderWay<'a> {
    fn start(state: &'a ResetState) -> Self {
        state.under_way.fetch_add(1, Ordering::SeqCst);
        state.started.fetch_add(1, Ordering::SeqCst);
        Self(state)
    }
}

impl Drop for UnderWay<'_> {
    fn drop(&mut self) {
        self.0.under_way.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Sca1 {
    /// Bring the function up (accelerator.md §7 "Bring-up"): reset, identify, enable, then
    /// create and start `config.queues` queue pairs.
    ///
    /// # Errors
    /// [`Sca1Error`]. A function whose ID or VERSION is refused is left untouched (nothing is
    /// written to it). Any later failure leaves it doing no DMA: reset (the soft reset, else a
    /// function reset), or, when neither completes, with bus mastering cleared; when not even
    /// that can be done, [`Sca1Error::DmaUnproven`] says so and the rings made so far are left
    /// mapped.
    pub fn bring_up(
        device: Arc<dyn DeviceBacking>,
        config: &Sca1Config,
    ) -> Result<(Self, Vec<Sca1Queue>), Sca1Error> {
        let id = device.bar0().read32(global::ID);
        if id == regs::ALL_ONES {
            return Err(Sca1Error::Gone {
                device: device.id().to_owned(),
            });
        }
        if id != regs::ID_VALUE {
            return Err(Sca1Error::NotSca1 {
                device: device.id().to_owned(),
                id,
                expected: regs::ID_VALUE,
            });
        }
        let version = device.bar0().read32(global::VERSION);
        if version >> 16 != 1 {
            return Err(Sca1Error::Version {
                device: device.id().to_owned(),
                major: version >> 16,
                minor: version & 0xffff,
            });
        }
        let caps = read_caps(device.as_ref(), config.split_64bit_mmio);
        let iovas = Arc::new(IovaLock::new(IovaAllocator::new(
            config.iova_base,
            config.iova_size,
        )));
        let rearm = if config.rearm && caps.rearm {
            coalesce::REARM
        } else {
            0
        };
        let coalesce = u32::from(config.coalesce_count) | (u32::from(config.coalesce_us) << 8) | rearm;
        let driver = Self {
            device,
            caps,
            iovas,
            coalesce,
            state: Arc::default(),
            queues_and_vectors: Default::default(),
        };
        // The reset that may escalate: a previous owner may have left the function doing DMA
        // that only a function reset ends.
        if let Err(e) = driver.reset() {
            return Err(driver.bus_master_off(e));
        }
        // Checked once the function is reset, so a refused one is left doing no DMA.
        check_caps(driver.id(), &driver.caps)?;
        let mut driver = driver;
        driver.caps.max_transfer_bytes = transfer_limit(driver.caps.max_transfer_bytes, config);
        // Queues are collected here, not inside `enable_and_create`, so that none is dropped
        // (its rings unmapped) before the function is proven to do no DMA to them.
        let mut queues = Vec::new();
        match driver.enable_and_create(config, &mut queues) {
            Ok(()) => Ok((driver, queues)),
            Err(e) => {
                let e = match driver.reset() {
                    Ok(()) => e,
                    Err(reset) => {
                        log::error!(
                            "{}: reset after failed bring-up ({e}) failed: {reset}",
                            driver.id()
                        );
                        driver.bus_master_off(e)
                    }
                };
                if matches!(e, Sca1Error::DmaUnproven { .. }) {
                    for queue in &mut queues {
                        queue.leak_on_drop();
                    }
                }
                Err(e)
            }
        }
    }

    /// A bring-up failed with `cause` and the function could not be reset: clear bus mastering
    /// (a function with Bus Master Enable clear makes no memory request), the last way to stop
    /// its DMA. Returns the error to report: `cause` when bus mastering is off (or the function
    /// is off the bus, which stops its DMA as surely), else [`Sca1Error::DmaUnproven`].
    fn bus_master_off(&self, cause: Sca1Error) -> Sca1Error {
        match self.device.disable_bus_master() {
            Ok(()) => {
                log::error!(
                    "{}: {cause}; the function could not be reset, bus mastering cleared (no DMA)",
                    self.id()
                );
                cause
            }
            Err(HalError::OffTheBus { .. }) => cause,
            Err(e) => Sca1Error::DmaUnproven {
                device: self.id().to_owned(),
                cause: cause.to_string(),
                bus_master: e.to_string(),
            },
        }
    }

    /// Set ENABLE, wait (bounded) for READY, program interrupt coalescing.
    fn enable(&self) -> Result<(), Sca1Error> {
        let bar = self.device.bar0();
        bar.write32(global::CONTROL, control::ENABLE);
        self.wait("READY", self.reset_timeout(), || {
            let s = bar.read32(global::STATUS);
            (s & status::READY != 0).then_some(())
        })?;
        bar.write32(global::INT_COALESCE, self.coalesce);
        Ok(())
    }

    fn enable_and_create(&self, config: &Sca1Config, queues: &mut Vec<Sca1Queue>) -> Result<(), Sca1Error> {
        self.enable()?;
        let count = config.queues.clamp(1, self.caps.cap0.queues.max(1));
        let entries = config
            .ring_entries
            .clamp(2, (1 << self.caps.cap0.max_ring_log2.min(16)).max(2));
        let vectors = if config.interrupts {
            self.device.max_interrupts().min(count)
        } else {
            0
        };
        // Vector i is queue i's (Q_VECTOR = index); the queues past the vectors the host
        // granted are polled (crate::vectors).
        let mut irqs: Vec<_> = if vectors > 0 {
            crate::vectors::enable_available(self.device.as_ref(), vectors, 1)?
                .into_iter()
                .map(Some)
                .collect()
        } else {
            Vec::new()
        };
        let vectors = irqs.len() as u32;
        self.queues_and_vectors[0].store(count, Ordering::Relaxed);
        self.queues_and_vectors[1].store(vectors, Ordering::Relaxed);
        for index in 0..count {
            let irq = irqs.get_mut(index as usize).and_then(Option::take);
            let qc = QueueConfig {
                index,
                entries: entries.next_power_of_two(),
                max_sgl: 1 << self.caps.cap0.max_sgl_log2.min(12),
                stop_timeout: self.stop_timeout(),
                rearm: self.coalesce & coalesce::REARM != 0,
                split_64bit_mmio: config.split_64bit_mmio,
            };
            queues.push(Sca1Queue::create_in(
                Arc::clone(&self.device),
                Arc::clone(&self.iovas),
                qc,
                irq,
                Arc::clone(&self.state),
            )?);
        }
        log::info!(
            "{}: SCA-1 up: {} queues x {} entries, {} vectors ({} queues polled), {} blocks of {} bytes",
            self.id(),
            count,
            entries,
            vectors,
            count - vectors,
            self.caps.capacity_blocks,
            self.caps.block_size
        );
        Ok(())
    }

    /// Device identifier.
    pub fn id(&self) -> &str {
        self.device.id()
    }

    /// The queues and the MSI-X vectors the bring-up enabled for them: queue i has vector i
    /// while i < vectors; the others are polled.
    pub fn queues_and_vectors(&self) -> (u32, u32) {
        let [queues, vectors] = &self.queues_and_vectors;
        (queues.load(Ordering::Relaxed), vectors.load(Ordering::Relaxed))
    }

    /// Capabilities read at bring-up.
    pub fn caps(&self) -> Sca1Caps {
        self.caps
    }

    /// The IOVA window shared by rings and the SGV pool.
    pub fn iovas(&self) -> &Arc<IovaLock> {
        &self.iovas
    }

    /// The device.
    pub fn device(&self) -> &Arc<dyn DeviceBacking> {
        &self.device
    }

    fn stop_timeout(&self) -> Duration {
        Duration::from_millis(u64::from(self.caps.timeouts.stop_ms.max(1)))
    }

    fn reset_timeout(&self) -> Duration {
        Duration::from_millis(u64::from(self.caps.timeouts.reset_ms.max(1)))
    }

    /// How long a recovery may take ([`Sca1::recover`]): the soft reset (RESET_TIMEOUT), the
    /// function reset it escalates to ([`FUNCTION_RESET_ALLOWANCE`]: the kernel's, which no
    /// SCA-1 register bounds), the wait for READY (RESET_TIMEOUT), and a margin for the polls'
    /// pauses. A second caller waits this long for the first's outcome: waiting less, it took
    /// a recovery still in its function reset for a failed one, and its store gave up (and
    /// reset the function under the recovery).
    pub(super) fn recovery_bound(&self) -> Duration {
        self.reset_timeout() * 2 + FUNCTION_RESET_ALLOWANCE + Duration::from_millis(100)
    }

    /// The device is gone: ID reads all-ones (accelerator.md §8).
    pub fn is_gone(&self) -> bool {
        self.device.bar0().read32(global::ID) == regs::ALL_ONES
    }

    /// FATAL_CODE when STATUS.FATAL is set.
    pub fn fatal(&self) -> Option<u32> {
        let s = self.device.bar0().read32(global::STATUS);
        (s != regs::ALL_ONES && s & status::FATAL != 0).then(|| self.device.bar0().read32(global::FATAL_CODE))
    }

    /// Soft reset (accelerator.md §7), bounded by RESET_TIMEOUT.
    ///
    /// # Errors
    /// [`Sca1Error::Gone`] or [`Sca1Error::Timeout`].
    pub fn soft_reset(&self) -> Result<(), Sca1Error> {
        let _under_way = UnderWay::start(&self.state);
        let bar = self.device.bar0();
        bar.write32(global::CONTROL, control::SOFT_RESET);
        self.wait("soft reset completion", self.reset_timeout(), || {
            (bar.read32(global::CONTROL) & control::SOFT_RESET == 0).then_some(())
        })
    }

    /// The reset that proves DMA has ended: the soft reset, escalating to a function reset
    /// when the soft reset does not complete. `Ok` means no DMA is in progress or will start;
    /// the function is left disabled, every queue stopped (see [`Sca1::recover`]).
    ///
    /// # Errors
    /// [`Sca1Error`] when neither reset could be confirmed (treat the device as failed and do
    /// not unmap memory it may still reach, unless it is gone).
    pub fn reset(&self) -> Result<(), Sca1Error> {
        // Counted across the escalation too: no queue restarts between the two resets.
        let _under_way = UnderWay::start(&self.state);
        let result = match self.soft_reset() {
            Ok(()) => Ok(()),
            Err(Sca1Error::Gone { device }) => Err(Sca1Error::Gone { device }),
            Err(soft) => {
                log::warn!("{}: {soft}; escalating to a function reset", self.id());
                let kind = self.device.reset()?;
                log::info!("{}: function reset done ({kind:?})", self.id());
                Ok(())
            }
        };
        result
    }

    /// Reset, then enable again so queues can restart: the recovery from a hung engine or a
    /// FATAL function. Every queue's in-flight work is dead after it (each queue notices
    /// through [`Sca1::reset_count`]). One recovery runs at a time: a second caller waits
    /// (bounded) for the one running and shares its outcome, as the NVMe driver's callers do
    /// (two at once would undo each other, one's ENABLE cleared by the other's reset); a turn
    /// withdrawn meanwhile is no outcome to share, and its waiters take a turn again
    /// (`wait_for_other_recovery`). No queue restarts from the recovery's reset until its count
    /// is published.
    ///
    /// [`Recovered::Ran`] when this call ran the recovery, [`Recovered::Shared`] when it waited
    /// for another caller's (which that caller counts).
    ///
    /// # Errors
    /// As [`Sca1::reset`], or the bounded wait for READY; for a caller that waited,
    /// [`Sca1Error::RecoveryFailed`] when the other recovery failed, or the bounded wait for it.
    pub fn recover(&self) -> Result<Recovered, Sca1Error> {
        self.recover_unless(None)
    }

    /// [`Sca1::recover`] for a caller that chose to recover after reading `seen_resets` from
    /// [`Sca1::reset_count`] (the store: its reset count had not moved). Once the recovery's
    /// turn is its own, it looks again: a recovery that ended since that read proved the end
    /// of DMA for everything submitted before it, and left the function serving (its count
    /// moved, its outcome the last one, STATUS READY without FATAL, read after the count: a
    /// FATAL that came after it needs a reset of its own). The turn is then withdrawn, no
    /// recovery counted, and the call shares that recovery's outcome ([`Recovered::Shared`]),
    /// as the NVMe driver's stop does since it found the same race: a second recovery reset a
    /// function that served, failing every other queue's requests in flight for nothing. A
    /// recovery that ends after this second look still costs a second one.
    ///
    /// # Errors
    /// As [`Sca1::recover`].
    pub fn recover_since(&self, seen_resets: u64) -> Result<Recovered, Sca1Error> {
        self.recover_unless(Some(seen_resets))
    }

    fn recover_unless(&self, seen_resets: Option<u64>) -> Result<Recovered, Sca1Error> {
        // A turn withdrawn while waited for is asked for again, the waits bounded together by
        // one recovery (`RecoveryWord::take_turn`, `wait_for_other_recovery`).
        let turn = self
            .state
            .recovery
            .take_turn(self.recovery_bound(), |waiting, deadline| {
                self.wait_for_other_recovery(waiting, deadline)
            })?;
        let Some(turn) = turn else {
            return Ok(Recovered::Shared);
        };
        if seen_resets.is_some_and(|seen| self.recovered_since(seen)) && turn.after_success() {
            log::info!(
                "{}: another recovery ended since the caller looked and the function serves; \
                 no second recovery",
                self.id()
            );
            turn.withdraw();
            return Ok(Recovered::Shared);
        }
        let result = self.recover_now();
        turn.finish(result.is_ok());
        result.map(|()| Recovered::Ran)
    }

    /// A recovery ended since the reset count read `seen`, and the function serves: STATUS
    /// reads READY without FATAL, read after the count (the recovery's reset cleared FATAL,
    /// so one seen now came after it).
    fn recovered_since(&self, seen: u64) -> bool {
        if self.reset_count() == seen {
            return false;
        }
        let s = self.device.bar0().read32(global::STATUS);
        s != regs::ALL_ONES && s & status::READY != 0 && s & status::FATAL == 0
    }

    fn recover_now(&self) -> Result<(), Sca1Error> {
        // Counted for the whole recovery, the enable included, so that no queue restarts in
        // it: requests of a queue restarted after the reset would be failed when the count
        // below moves, while the device may execute them.
        let _under_way = UnderWay::start(&self.state);
        log::warn!(
            "{}: recovering the function (reset #{})",
            self.id(),
            self.reset_count() + 1
        );
        self.reset()?;
        self.enable()?;
        // Published once the function is usable again (a queue that sees the new count may
        // restart at once) and before `_under_way` ends.
        self.state.resets.fetch_add(1, Ordering::SeqCst);
        log::info!("{}: function recovered", self.id());
        Ok(())
    }

    /// Wait for another thread's recovery, the one `waiting` found running, until `deadline`
    /// (the first wait's, [`Sca1::recovery_bound`] from its start), then share its outcome
    /// ([`RecoveryWord::outcome`]): `Ok(true)`. `Ok(false)` when its turn was withdrawn
    /// ([`Outcome::Withdrawn`]): the outcome then in the word is that of a recovery that ended
    /// before this caller looked, whose reset proves nothing for requests submitted since, so
    /// the caller takes a turn again (it recovers itself, or waits for the recovery that runs
    /// by then, until the same deadline): the deadline bounds all its waits, and past it a
    /// withdrawn turn is a timeout, so it takes no turn again after it (a turn of its own runs
    /// one recovery, bounded as any, and ends the call). A withdrawn turn holds the word only for
    /// its owner's second look (register reads, nothing reset), so a recovery begun after it began
    /// about when this caller's first wait did: the bound's margin allows for that.
    fn wait_for_other_recovery(&self, waiting: Waiting, deadline: Instant) -> Result<bool, Sca1Error> {
        const WHAT: &str = "another thread's recovery of the function";
        let outcome = self.wait_until(WHAT, deadline, self.recovery_bound(), || {
            match self.state.recovery.outcome(waiting) {
                Outcome::Running => None,
                Outcome::Ended(ok) => Some(Some(ok)),
                Outcome::Withdrawn => Some(None),
            }
        })?;
        match outcome {
            Some(true) => Ok(true),
            Some(false) => Err(Sca1Error::RecoveryFailed {
                device: self.id().to_owned(),
            }),
            None if Instant::now() >= deadline => Err(Sca1Error::Timeout {
                device: self.id().to_owned(),
                what: WHAT,
                timeout: self.recovery_bound(),
            }),
            None => Ok(false),
        }
    }

    /// Resets so far; a queue compares it with the value it last saw.
    pub fn reset_count(&self) -> u64 {
        self.state.resets.load(Ordering::SeqCst)
    }

    /// Poll `probe` until it yields, the device is gone, or `timeout` passes: yield first, then
    /// sleep with backoff up to 1 ms.
    fn wait<T>(
        &self,
        what: &'static str,
        timeout: Duration,
        probe: impl FnMut() -> Option<T>,
    ) -> Result<T, Sca1Error> {
        self.wait_until(what, Instant::now() + timeout, timeout, probe)
    }

    /// [`Sca1::wait`] until `deadline`, a wait of `timeout` begun earlier (what a timeout
    /// reports).
    fn wait_until<T>(
        &self,
        what: &'static str,
        deadline: Instant,
        timeout: Duration,
        mut probe: impl FnMut() -> Option<T>,
    ) -> Result<T, Sca1Error> {
        let mut pause = Duration::from_micros(10);
        loop {
            if let Some(v) = probe() {
                return Ok(v);
            }
            if self.is_gone() {
                return Err(Sca1Error::Gone {
                    device: self.id().to_owned(),
                });
            }
            if Instant::now() >= deadline {
                return Err(Sca1Error::Timeout {
                    device: self.id().to_owned(),
                    what,
                    timeout,
                });
            }
            // A wait on the device: no lock may be held (asserted in test builds).
            scst_accel_hal::locks::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(1));
        }
    }
}

/// Read the 64-bit register at `offset`: one 8-byte access, or with `split` two 4-byte ones,
/// low word first ([`Sca1Config::split_64bit_mmio`]).
pub(super) fn read64(bar: &dyn RegisterIo, split: bool, offset: u64) -> u64 {
    if split {
        let low = bar.read32(offset);
        let high = bar.read32(offset + 4);
        (u64::from(high) << 32) | u64::from(low)
    } else {
        bar.read64(offset)
    }
}

/// Write the 64-bit register at `offset`: one 8-byte access, or with `split` two 4-byte ones,
/// low word first ([`Sca1Config::split_64bit_mmio`]).
pub(super) fn write64(bar: &dyn RegisterIo, split: bool, offset: u64, value: u64) {
    if split {
        bar.write32(offset, value as u32);
        bar.write32(offset + 4, (value >> 32) as u32);
    } else {
        bar.write64(offset, value);
    }
}

/// Refuse capabilities the contract does not allow (accelerator.md §1, §2) before anything is
/// sized from them: a queue count outside 1..=32 (INT_STATUS and INT_MASK have one bit per
/// queue, so a 33rd queue's bit would overflow), a largest ring below 2 entries, no transfer
/// at all, a block size other than 512 or 4096 (the store would address blocks of a size the
/// device does not use), or a medium whose bytes do not fit 64 bits.
fn check_caps(device: &str, caps: &Sca1Caps) -> Result<(), Sca1Error> {
    let refuse = |register, value, why| {
        Err(Sca1Error::Capability {
            device: device.to_owned(),
            register,
            value,
            why,
        })
    };
    let cap0 = caps.cap0;
    if !(1..=32).contains(&cap0.queues) {
        return refuse(
            "CAP0 queue count (bits 7:0)",
            cap0.queues.into(),
            "must be 1..=32",
        );
    }
    if cap0.max_ring_log2 == 0 {
        return refuse(
            "CAP0 largest ring (bits 15:8)",
            cap0.max_ring_log2.into(),
            "log2 of a ring of at least 2 entries must be at least 1",
        );
    }
    if caps.max_transfer_bytes == 0 {
        return refuse("CAP1", 0, "a largest transfer of 0 bytes moves no block");
    }
    if caps.block_size != 512 && caps.block_size != 4096 {
        return refuse("BLOCK_SIZE", caps.block_size.into(), "must be 512 or 4096");
    }
    if caps.capacity_blocks.checked_mul(caps.block_size.into()).is_none() {
        return refuse(
            "CAPACITY",
            caps.capacity_blocks,
            "the medium's bytes must fit 64 bits",
        );
    }
    Ok(())
}

/// CAP1's largest transfer capped by the configuration's, in whole 4 KiB units (CAP1's own, a
/// multiple of either block size), never below one unit.
fn transfer_limit(cap1_bytes: u32, config: &Sca1Config) -> u32 {
    cap1_bytes.min((config.max_transfer_bytes / 4096).max(1) * 4096)
}

fn read_caps(device: &dyn DeviceBacking, split_64bit: bool) -> Sca1Caps {
    let bar = device.bar0();
    let minor = bar.read32(global::VERSION) & 0xffff;
    Sca1Caps {
        cap0: Cap0::from_bits(bar.read32(global::CAP0)),
        max_transfer_bytes: bar.read32(global::CAP1).saturating_mul(4096),
        capacity_blocks: read64(bar, split_64bit, global::CAPACITY),
        block_size: bar.read32(global::BLOCK_SIZE),
        timeouts: Timeouts::from_bits(bar.read32(global::TIMEOUTS)),
        copy: minor >= 1,
        rearm: minor >= 2,
    }
}
