//! Tests of [`SimDevice`] with a tiny recording model: BAR checks, the split 64-bit access
//! order, MSI-X eventfds, reset and shutdown.

use std::os::fd::AsFd;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use super::SimContext;
use super::SimDevice;
use super::SimModel;
use crate::fdio::poll_readable;
use crate::DeviceBacking;
use crate::EventFd;
use crate::HalError;
use crate::ResetKind;

const BAR_LEN: u64 = 0x1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    Read(u64),
    Write(u64, u32),
}

/// Records every register access; register `offset` reads as `offset * 0x10 + 1`.
#[derive(Default)]
struct Recorder {
    accesses: Mutex<Vec<Access>>,
    resets: AtomicU32,
    shutdowns: AtomicU32,
    panic_on_shutdown: bool,
}

impl Recorder {
    fn take(&self) -> Vec<Access> {
        std::mem::take(&mut *self.accesses.lock().expect("recorder lock"))
    }
}

/// The model the device owns; the test keeps a second `Arc` of the recorder to look inside.
struct TestModel {
    recorder: Arc<Recorder>,
    _context: SimContext,
}

impl SimModel for TestModel {
    fn read32(&self, offset: u64) -> u32 {
        self.recorder
            .accesses
            .lock()
            .expect("recorder lock")
            .push(Access::Read(offset));
        (offset as u32) * 0x10 + 1
    }

    fn write32(&self, offset: u64, value: u32) {
        self.recorder
            .accesses
            .lock()
            .expect("recorder lock")
            .push(Access::Write(offset, value));
    }

    fn function_reset(&self) {
        self.recorder.resets.fetch_add(1, Ordering::SeqCst);
    }

    fn pci_identity(&self) -> crate::PciIdentity {
        crate::PciIdentity {
            vendor_id: 0x1234,
            device_id: 0x5678,
            class_code: 0xff0000,
        }
    }

    fn shutdown(&self) {
        self.recorder.shutdowns.fetch_add(1, Ordering::SeqCst);
        assert!(!self.recorder.panic_on_shutdown, "test model panics in shutdown");
    }
}

fn device_with(recorder: Recorder, vectors: u32) -> (SimDevice, Arc<Recorder>) {
    let recorder = Arc::new(recorder);
    let inside = Arc::clone(&recorder);
    let device = SimDevice::new("sim-test", BAR_LEN, vectors, move |context| {
        Arc::new(TestModel {
            recorder: inside,
            _context: context,
        })
    });
    (device, recorder)
}

fn device(vectors: u32) -> (SimDevice, Arc<Recorder>) {
    device_with(Recorder::default(), vectors)
}

fn readable(fds: &[EventFd]) -> Vec<bool> {
    let borrowed: Vec<_> = fds.iter().map(|fd| fd.as_fd()).collect();
    poll_readable(&borrowed, Duration::ZERO).expect("poll")
}

#[test]
fn register_accesses_reach_the_model() {
    let (device, recorder) = device(0);
    let bar = device.bar0();
    assert_eq!(bar.len(), BAR_LEN);
    bar.write32(0x10, 0xDEAD_BEEF);
    assert_eq!(bar.read32(0xFFC), 0xFFC * 0x10 + 1);
    assert_eq!(
        recorder.take(),
        [Access::Write(0x10, 0xDEAD_BEEF), Access::Read(0xFFC)]
    );
    assert_eq!(device.id(), "sim-test");
}

#[test]
fn a_64_bit_access_is_split_low_then_high() {
    let (device, recorder) = device(0);
    let bar = device.bar0();
    bar.write64(0x18, 0x1122_3344_5566_7788);
    assert_eq!(
        recorder.take(),
        [Access::Write(0x18, 0x5566_7788), Access::Write(0x1C, 0x1122_3344)]
    );
    let value = bar.read64(0xFF8);
    assert_eq!(recorder.take(), [Access::Read(0xFF8), Access::Read(0xFFC)]);
    assert_eq!(
        value,
        u64::from(0xFF8u32 * 0x10 + 1) | (u64::from(0xFFCu32 * 0x10 + 1) << 32)
    );
}

#[test]
#[should_panic(expected = "misaligned 4-byte BAR0 access at offset 0x6")]
fn a_misaligned_32_bit_access_panics_with_the_offset() {
    let (device, _recorder) = device(0);
    device.bar0().read32(0x6);
}

#[test]
#[should_panic(expected = "misaligned 8-byte BAR0 access at offset 0x14")]
fn a_misaligned_64_bit_access_panics_with_the_offset() {
    let (device, _recorder) = device(0);
    device.bar0().write64(0x14, 1);
}

#[test]
#[should_panic(expected = "4-byte BAR0 access at offset 0x1000 is outside the 0x1000-byte BAR")]
fn a_32_bit_access_past_the_bar_panics_with_the_offset() {
    let (device, _recorder) = device(0);
    device.bar0().write32(BAR_LEN, 1);
}

#[test]
#[should_panic(expected = "8-byte BAR0 access at offset 0xfffffffffffffff8 is outside")]
fn a_64_bit_access_that_wraps_panics_with_the_offset() {
    let (device, _recorder) = device(0);
    device.bar0().read64(u64::MAX - 7);
}

#[test]
fn an_out_of_range_access_never_reaches_the_model() {
    let (device, recorder) = device(0);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| device.bar0().read32(BAR_LEN)));
    assert!(result.is_err());
    assert_eq!(recorder.take(), []);
}

#[test]
fn interrupts_signal_eventfds_only_while_enabled() {
    let (device, _recorder) = device(4);
    let lines = Arc::clone(device.interrupts());
    assert_eq!(device.max_interrupts(), 4);

    // Raised before enabling: lost, as an MSI-X message with the vector disabled.
    lines.raise(0);
    let fds = device.enable_interrupts(2).expect("enable 2 vectors");
    assert_eq!(fds.len(), 2);
    assert_eq!(readable(&fds), [false, false]);

    lines.raise(1);
    assert_eq!(readable(&fds), [false, true]);
    lines.raise(0);
    assert_eq!(readable(&fds), [true, true]);
    // A vector the function has but the driver did not enable, and one it does not have.
    lines.raise(3);
    lines.raise(9);
    assert!(fds.iter().all(EventFd::clear));

    device.disable_interrupts().expect("disable");
    lines.raise(0);
    lines.raise(1);
    assert_eq!(readable(&fds), [false, false]);
    assert_eq!(lines.raised(), 6);
    assert_eq!(lines.delivered(), 2);
    assert_eq!(lines.enabled(), 0);
}

#[test]
fn enabling_again_replaces_the_eventfds() {
    let (device, _recorder) = device(2);
    let old = device.enable_interrupts(2).expect("enable");
    let new = device.enable_interrupts(1).expect("enable again");
    device.interrupts().raise(0);
    assert_eq!(readable(&old), [false, false]);
    assert_eq!(readable(&new), [true]);
}

#[test]
fn enabling_too_many_vectors_is_refused() {
    let (device, _recorder) = device(2);
    match device.enable_interrupts(3) {
        Err(HalError::Interrupts { source, vectors, .. }) => {
            assert_eq!(source.raw_os_error(), Some(libc::EINVAL));
            assert_eq!(vectors, 3);
        }
        other => panic!("enable_interrupts(3) gave {other:?}"),
    }
    assert_eq!(device.interrupts().enabled(), 0);
}

/// As on VFIO (`VfioDevice::enable_interrupts`): no vectors is a disable, not an error.
#[test]
fn enabling_no_vectors_disables_them_all() {
    let (device, _recorder) = device(2);
    assert_eq!(device.enable_interrupts(2).expect("enable").len(), 2);
    assert!(device.enable_interrupts(0).expect("enable none").is_empty());
    assert_eq!(device.interrupts().enabled(), 0);
}

#[test]
fn reset_runs_the_model_function_reset() {
    let (device, recorder) = device(0);
    assert_eq!(device.reset().expect("reset"), ResetKind::Simulated);
    assert_eq!(device.reset().expect("reset"), ResetKind::Simulated);
    assert_eq!(recorder.resets.load(Ordering::SeqCst), 2);
    assert_eq!(recorder.shutdowns.load(Ordering::SeqCst), 0);
}

#[test]
fn drop_shuts_the_model_down_once() {
    let (device, recorder) = device(0);
    assert_eq!(recorder.shutdowns.load(Ordering::SeqCst), 0);
    drop(device);
    assert_eq!(recorder.shutdowns.load(Ordering::SeqCst), 1);
}

#[test]
fn a_model_panicking_in_shutdown_does_not_panic_drop() {
    let (device, recorder) = device_with(
        Recorder {
            panic_on_shutdown: true,
            ..Recorder::default()
        },
        0,
    );
    drop(device);
    assert_eq!(recorder.shutdowns.load(Ordering::SeqCst), 1);
}

#[test]
fn the_model_and_the_driver_share_one_iommu() {
    let (device, _recorder) = device(1);
    let built = Arc::new(Mutex::new(None));
    let seen = Arc::clone(&built);
    let other = SimDevice::new("sim-ctx", BAR_LEN, 1, move |context| {
        *seen.lock().expect("lock") = Some(context.clone());
        Arc::new(TestModel {
            recorder: Arc::new(Recorder::default()),
            _context: context,
        })
    });
    let context = built.lock().expect("lock").take().expect("build ran");
    assert!(Arc::ptr_eq(&context.iommu, other.iommu()));
    assert!(Arc::ptr_eq(&context.interrupts, other.interrupts()));
    assert!(!Arc::ptr_eq(other.iommu(), device.iommu()));
    // dma() is that IOMMU: an unmap through the trait reaches the same table.
    assert!(other.dma().unmap(0, 4096).is_err());
    assert_eq!(other.iommu().mappings(), 0);
}

#[test]
#[should_panic(expected = "BAR0 length 0x6 must be a non-zero multiple of 4")]
fn a_bar_length_that_is_not_whole_registers_panics() {
    let _device = SimDevice::new("sim-bad", 6, 0, |context| {
        Arc::new(TestModel {
            recorder: Arc::new(Recorder::default()),
            _context: context,
        })
    });
}

/// The simulated function offers the device request as vfio-pci does, and `request_removal`
/// raises it where an owner looks (through the trait, as for a VFIO function).
#[test]
fn a_simulated_removal_request_is_seen_through_the_trait() {
    let (device, _recorder) = device(1);
    let backing: &dyn DeviceBacking = &device;
    let request = backing.removal_request().expect("offered");
    assert!(!request.is_requested());
    device.request_removal();
    assert!(request.is_requested());
}
