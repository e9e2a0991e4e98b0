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
//! - a function reset that fails.

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
use std::time::Instant;

/// CAP (NVMe 1.4 §3.1.1) and CC (§3.1.5) offsets, and the fields touched here, written out
/// rather than taken from the driver's `regs` so the interposer does not inherit its reading.
const CAP: u64 = 0x00;
const CC: u64 = 0x14;
const CC_EN: u32 = 1;
const CSTS: u64 = 0x1C;
const CSTS_RDY: u32 = 1;
const CSTS_CFS: u32 = 1 << 1;
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
            return self.csts();
        }
        let value = self.inner.bar0().read32(offset);
        if offset == CAP && value != u32::MAX {
            return self.cap(u64::from(value)) as u32;
        }
        value
    }

    fn write32(&self, offset: u64, value: u32) {
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
}
