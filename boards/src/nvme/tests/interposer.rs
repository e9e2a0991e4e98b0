//! What is left of the driver tests' own NVMe model: a thin [`Interposer`] between the driver
//! and the simulated controller (`crate::sim::nvme`) for the few things the simulator cannot be
//! asked for. Everything else the driver tests need comes from the simulator and its faults.
//!
//! It forwards every access and adds only:
//! - a count of 64-bit register accesses, to check the split-MMIO workaround;
//! - a shorter CAP.TO, so tests that must wait out "up to CAP.TO" (a stuck disable, a
//!   shutdown that never completes) wait 500 ms instead of the simulator's 10 s. The driver
//!   reads CAP once at bring-up, so the bound it uses is the one advertised here;
//! - a disable that never finishes: a CC write clearing EN is dropped before it reaches the
//!   controller, which therefore stays enabled with CSTS.RDY = 1 past CAP.TO; the host's last
//!   resort is then a reset of the function (an FLR). The simulator's CC.EN 1→0 always completes
//!   once its worker lets go of a command (its latency fault ends early on a reset), so it
//!   cannot produce this. The function reset itself is the simulator's, and it clears the
//!   wedge, as an FLR resets the logic that wedged;
//! - a slow enable: for a set time after a CC write that sets EN, CSTS reads RDY = 0 (as a
//!   controller that takes long to become ready), and a count of CC writes that clear EN while
//!   the host can only have seen RDY = 0 since it set EN, which NVMe 1.4 §3.1.5 leaves undefined
//!   (the simulator accepts it, so only the interposer can tell);
//! - a function reset that fails;
//! - a recovery held before its enable: the thread that writes CC setting EN while
//!   `hold_before_enable` is armed is held before that write reaches the controller, until the
//!   test releases it (the recovery has reset the controller, and a caller's reset may run);
//! - a recovery held after its enable: the thread that sets CC.EN while `hold_after_enable` is
//!   armed is held on its first CSTS read after it rang the admin SQ tail doorbell (the health
//!   check while it waits for its first admin command, SET FEATURES), until the test releases
//!   it. The admin queue serves then, and the recovery has not published its reset count; other
//!   threads pass. The simulator cannot stop a host thread between two of its own steps.

use scst_accel_hal::sim::SimDevice;
use scst_accel_hal::DeviceBacking;
use scst_accel_hal::DmaMapper;
use scst_accel_hal::EventFd;
use scst_accel_hal::HalError;
use scst_accel_hal::RegisterIo;
use scst_accel_hal::ResetKind;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::thread::ThreadId;
use std::time::Duration;
use std::time::Instant;

/// CAP (NVMe 1.4 §3.1.1) and CC (§3.1.5) offsets, and the fields touched here, written out
/// rather than taken from the driver's `regs` so the interposer does not inherit its reading.
const CAP: u64 = 0x00;
const CC: u64 = 0x14;
const CC_EN: u32 = 1;
const CSTS: u64 = 0x1C;
const CSTS_RDY: u32 = 1;
const CSTS_CFS: u32 = 1 << 1;
/// The admin SQ tail doorbell (queue 0's, whatever CAP.DSTRD says).
const ADMIN_SQ_DOORBELL: u64 = 0x1000;
/// The longest a held thread is held when the test never releases it.
const HOLD_LIMIT: Duration = Duration::from_secs(10);
/// CAP.TO, bits 31:24, in 500 ms units.
const CAP_TO_SHIFT: u32 = 24;
const CAP_TO_MASK: u64 = 0xFF << CAP_TO_SHIFT;

/// Switches and counters, shared with the test.
#[derive(Debug, Default)]
pub struct Knobs {
    /// 64-bit register accesses seen.
    pub access64: AtomicU64,
    /// Function resets requested by the driver.
    pub function_resets: AtomicU64,
    /// Drop CC writes that clear EN (a disable that never finishes) until a function reset.
    pub stuck_disable: AtomicBool,
    /// CC writes dropped by `stuck_disable`.
    pub dropped_disables: AtomicU64,
    /// Function resets fail (and change nothing) while set.
    pub function_reset_fails: AtomicBool,
    /// For this many milliseconds after CC.EN is set, CSTS reads RDY = 0 (0: as the controller).
    pub ready_delay_millis: AtomicU64,
    /// CC writes clearing EN while EN was set and CSTS read RDY = 0 and CFS = 0.
    pub disables_before_ready: AtomicU64,
    /// When EN was last set: nanoseconds since the interposer was made, plus 1 (0: EN clear).
    enabled_at: AtomicU64,
    /// Hold the next thread that sets CC.EN (see the module doc), once.
    pub hold_after_enable: AtomicBool,
    /// Hold the next thread that writes CC setting EN, before the write reaches the controller
    /// (a recovery between its reset and its enable), once; released as `hold_after_enable`.
    pub hold_before_enable: AtomicBool,
    /// That thread is held.
    pub held: AtomicBool,
    /// Let it go.
    pub release: AtomicBool,
    /// The thread to hold, and whether it rang the admin SQ doorbell since it set CC.EN.
    hold: Mutex<Option<(ThreadId, bool)>>,
}

impl Knobs {
    /// Wait (bounded) until a thread is held; false if none was within the bound.
    pub fn wait_held(&self, bound: Duration) -> bool {
        let deadline = Instant::now() + bound;
        while !self.held.load(Ordering::Acquire) {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    fn hold_state(&self) -> std::sync::MutexGuard<'_, Option<(ThreadId, bool)>> {
        self.hold
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A register write by this thread: a CC write setting EN picks it (when armed), its admin
    /// SQ doorbell marks it ready to hold.
    fn note_write(&self, offset: u64, value: u32) {
        let me = std::thread::current().id();
        if offset == CC && value & CC_EN != 0 && self.hold_after_enable.swap(false, Ordering::AcqRel) {
            *self.hold_state() = Some((me, false));
        } else if offset == ADMIN_SQ_DOORBELL {
            if let Some((thread, rang)) = self.hold_state().as_mut() {
                if *thread == me {
                    *rang = true;
                }
            }
        }
    }

    /// A CSTS read by this thread: hold it when it is the picked thread and rang its doorbell.
    fn maybe_hold(&self) {
        let me = std::thread::current().id();
        {
            let mut state = self.hold_state();
            if *state != Some((me, true)) {
                return;
            }
            *state = None;
        }
        log::info!("interposer: holding the thread that enabled the controller");
        self.hold_here();
    }

    /// Hold this thread until the test releases it (`HOLD_LIMIT` at most).
    fn hold_here(&self) {
        self.held.store(true, Ordering::Release);
        let deadline = Instant::now() + HOLD_LIMIT;
        while !self.release.load(Ordering::Acquire) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Settings fixed at creation.
#[derive(Clone, Copy, Debug, Default)]
pub struct InterposerConfig {
    /// Report this CAP.TO (500 ms units) instead of the controller's.
    pub cap_to: Option<u8>,
}

/// BAR0 seen through the interposer.
struct Bar {
    inner: Arc<SimDevice>,
    config: InterposerConfig,
    knobs: Arc<Knobs>,
    born: Instant,
}

impl Bar {
    /// CSTS as the host sees it: RDY hidden during `ready_delay_millis` after EN was set.
    fn csts(&self) -> u32 {
        let value = self.inner.bar0().read32(CSTS);
        let delay = self.knobs.ready_delay_millis.load(Ordering::Acquire);
        let at = self.knobs.enabled_at.load(Ordering::Acquire);
        if value == u32::MAX || delay == 0 || at == 0 {
            return value;
        }
        let since = self.born.elapsed().as_nanos() as u64 - (at - 1);
        if since < delay * 1_000_000 {
            value & !CSTS_RDY
        } else {
            value
        }
    }

    fn cap(&self, cap: u64) -> u64 {
        match self.config.cap_to {
            Some(to) => (cap & !CAP_TO_MASK) | (u64::from(to) << CAP_TO_SHIFT),
            None => cap,
        }
    }
}

impl RegisterIo for Bar {
    fn len(&self) -> u64 {
        self.inner.bar0().len()
    }

    fn read32(&self, offset: u64) -> u32 {
        if offset == CSTS {
            self.knobs.maybe_hold();
            return self.csts();
        }
        let value = self.inner.bar0().read32(offset);
        if offset == CAP && value != u32::MAX {
            return self.cap(u64::from(value)) as u32;
        }
        value
    }

    fn write32(&self, offset: u64, value: u32) {
        if offset == CC && value & CC_EN != 0 && self.knobs.hold_before_enable.swap(false, Ordering::AcqRel) {
            log::info!("interposer: holding the thread that is about to enable the controller");
            self.knobs.hold_here();
        }
        self.knobs.note_write(offset, value);
        if offset == CC && value & CC_EN == 0 && self.knobs.stuck_disable.load(Ordering::Acquire) {
            log::info!("interposer: CC write {value:#x} (EN = 0) dropped: the disable never finishes");
            self.knobs.dropped_disables.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if offset == CC {
            let enabled = self.inner.bar0().read32(CC) & CC_EN != 0;
            if enabled && value & CC_EN == 0 && self.csts() & (CSTS_RDY | CSTS_CFS) == 0 {
                log::info!("interposer: CC.EN cleared while CSTS.RDY is still 0 after EN was set");
                self.knobs.disables_before_ready.fetch_add(1, Ordering::Relaxed);
            }
            if value & CC_EN == 0 {
                self.knobs.enabled_at.store(0, Ordering::Release);
            } else if !enabled {
                let now = self.born.elapsed().as_nanos() as u64 + 1;
                self.knobs.enabled_at.store(now, Ordering::Release);
            }
        }
        self.inner.bar0().write32(offset, value);
    }

    fn read64(&self, offset: u64) -> u64 {
        self.knobs.access64.fetch_add(1, Ordering::Relaxed);
        let value = self.inner.bar0().read64(offset);
        if offset == CAP && value != u64::MAX {
            return self.cap(value);
        }
        value
    }

    fn write64(&self, offset: u64, value: u64) {
        self.knobs.access64.fetch_add(1, Ordering::Relaxed);
        self.inner.bar0().write64(offset, value);
    }
}

/// A [`DeviceBacking`] forwarding to a simulated function, see the module doc.
pub struct Interposer {
    bar: Bar,
}

impl Interposer {
    /// Interpose on `inner`.
    pub fn new(inner: Arc<SimDevice>, config: InterposerConfig) -> (Arc<Self>, Arc<Knobs>) {
        let knobs = Arc::new(Knobs::default());
        let bar = Bar {
            inner,
            config,
            knobs: Arc::clone(&knobs),
            born: Instant::now(),
        };
        (Arc::new(Self { bar }), knobs)
    }
}

impl DeviceBacking for Interposer {
    fn id(&self) -> &str {
        self.bar.inner.id()
    }

    fn bar0(&self) -> &dyn RegisterIo {
        &self.bar
    }

    fn dma(&self) -> &dyn DmaMapper {
        self.bar.inner.dma()
    }

    fn max_interrupts(&self) -> u32 {
        self.bar.inner.max_interrupts()
    }

    fn enable_interrupts(&self, vectors: u32) -> Result<Vec<EventFd>, HalError> {
        self.bar.inner.enable_interrupts(vectors)
    }

    fn disable_interrupts(&self) -> Result<(), HalError> {
        self.bar.inner.disable_interrupts()
    }

    fn reset(&self) -> Result<ResetKind, HalError> {
        self.bar.knobs.function_resets.fetch_add(1, Ordering::Relaxed);
        if self.bar.knobs.function_reset_fails.load(Ordering::Acquire) {
            return Err(HalError::Reset {
                device: self.id().to_owned(),
                source: std::io::Error::other("interposer: the function reset fails"),
            });
        }
        self.bar.knobs.stuck_disable.store(false, Ordering::Release);
        self.bar.inner.reset()
    }

    fn disable_bus_master(&self) -> Result<(), HalError> {
        self.bar.inner.disable_bus_master()
    }

    fn pci_identity(&self) -> Result<scst_accel_hal::PciIdentity, HalError> {
        self.bar.inner.pci_identity()
    }

    fn removal_request(&self) -> Option<&scst_accel_hal::RemovalRequest> {
        self.bar.inner.removal_request()
    }
}
