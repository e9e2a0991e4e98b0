//! A hostile device for the driver targets: a [`SimModel`] whose registers read whatever the
//! fuzzer last put in them (or what the driver wrote, when the fuzzer has not), and that
//! remembers every driver write so the target can find the rings the driver programmed. The
//! target writes ring entries itself, through the simulated IOMMU, as a device would.

use scst_accel_hal::sim::Iommu;
use scst_accel_hal::sim::SimContext;
use scst_accel_hal::sim::SimDevice;
use scst_accel_hal::sim::SimModel;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;

/// Register file shared by the model and the target.
#[derive(Debug, Default)]
pub struct Registers {
    /// Values the driver wrote, by offset (32-bit halves).
    pub written: HashMap<u64, u32>,
    /// Values the fuzzer set, by offset: these win over `written` on reads.
    pub forced: HashMap<u64, u32>,
    /// Writes in order (offset, value), for targets that watch doorbells.
    pub log: Vec<(u64, u32)>,
    /// Function resets requested.
    pub resets: u64,
}

/// The model.
#[derive(Debug, Default)]
pub struct Hostile {
    regs: Mutex<Registers>,
}

impl Hostile {
    /// The register file (a poisoned lock is taken over: a panic is the fuzzer's crash anyway).
    pub fn regs(&self) -> MutexGuard<'_, Registers> {
        self.regs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A 64-bit register the driver wrote (two 32-bit halves).
    pub fn written64(&self, offset: u64) -> u64 {
        let r = self.regs();
        let low = r.written.get(&offset).copied().unwrap_or(0);
        let high = r.written.get(&(offset + 4)).copied().unwrap_or(0);
        u64::from(low) | (u64::from(high) << 32)
    }
}

impl SimModel for Hostile {
    fn read32(&self, offset: u64) -> u32 {
        let r = self.regs();
        r.forced
            .get(&offset)
            .or_else(|| r.written.get(&offset))
            .copied()
            .unwrap_or(0)
    }

    fn write32(&self, offset: u64, value: u32) {
        let mut r = self.regs();
        r.written.insert(offset, value);
        if r.log.len() < 4096 {
            r.log.push((offset, value));
        }
    }

    fn function_reset(&self) {
        let mut r = self.regs();
        r.written.clear();
        r.resets += 1;
    }

    /// Any identity: the fuzz targets bring their drivers up directly, with no definition.
    fn pci_identity(&self) -> scst_accel_hal::PciIdentity {
        scst_accel_hal::PciIdentity {
            vendor_id: 0xffff - 1,
            device_id: 0,
            class_code: 0,
        }
    }

    fn shutdown(&self) {}
}

/// A simulated function with the hostile model: the device, the model and its IOMMU.
pub fn hostile_device(id: &str, bar0_len: u64) -> (Arc<SimDevice>, Arc<Hostile>, Arc<Iommu>) {
    let model = Arc::new(Hostile::default());
    let mut iommu = None;
    let device = SimDevice::new(id, bar0_len, 0, |ctx: SimContext| {
        iommu = Some(Arc::clone(&ctx.iommu));
        Arc::clone(&model) as Arc<dyn SimModel>
    });
    let device = Arc::new(device);
    let iommu = iommu.unwrap_or_else(|| Arc::clone(device.iommu()));
    (device, model, iommu)
}

/// The device's side of a completion ring the target forges entries into: the slot a well-
/// behaved device writes next, and its phase. Shared by the SCA-1 and NVMe targets.
#[derive(Debug)]
pub struct ForgedCompletions {
    entries: u32,
    /// The next slot in order.
    pub tail: u32,
    /// The phase a well-behaved device writes in this pass.
    pub phase: bool,
}

impl ForgedCompletions {
    /// A ring of `entries` slots, as the driver programmed it (tail 0, phase 1).
    pub fn new(entries: u32) -> Self {
        Self {
            entries,
            tail: 0,
            phase: true,
        }
    }

    /// The driver made a new ring (a restart): back to slot 0, phase 1.
    pub fn restart(&mut self) {
        self.tail = 0;
        self.phase = true;
    }

    /// Where to write the next forged entry: mostly the next slot in order, sometimes anywhere.
    pub fn slot(&self, u: &mut arbitrary::Unstructured<'_>) -> arbitrary::Result<u32> {
        if u.ratio(7, 8)? {
            Ok(self.tail)
        } else {
            u.int_in_range(0..=self.entries - 1)
        }
    }

    /// An entry was written at `at`: the tail moves on when it was the next slot, and the phase
    /// flips with each pass.
    pub fn written(&mut self, at: u32) {
        if at == self.tail {
            self.tail = (self.tail + 1) % self.entries;
            if self.tail == 0 {
                self.phase = !self.phase;
            }
        }
    }
}

/// A reap returned `tag`: it must be in flight, and leaves it (returned: its bookkeeping).
///
/// # Panics
/// "invariant violated" when the tag is not in flight: a completion reported twice, or one the
/// host never submitted.
pub fn take_in_flight<T>(in_flight: &mut HashMap<u64, T>, tag: u64, what: &dyn std::fmt::Debug) -> T {
    match in_flight.remove(&tag) {
        Some(entry) => entry,
        None => panic!("invariant violated: reap returned tag {tag} not in flight: {what:?}"),
    }
}
