//! The raw VFIO calls vfio-ioctls 0.10 does not offer in a usable form, one function per call.
//!
//! Why each is here rather than in the crate:
//! - `VFIO_DEVICE_GET_INFO`: the crate keeps the device flags private, and we need
//!   `VFIO_DEVICE_FLAGS_RESET` to answer `reset()` honestly.
//! - `VFIO_DEVICE_GET_REGION_INFO`: the crate stores regions in a `Vec` that skips indices whose
//!   query failed, so `get_region_*(7)` can describe another region than config space.
//! - `VFIO_DEVICE_SET_IRQS`: the crate's `enable_msix` takes vmm-sys-util eventfds (ours are
//!   `hal::EventFd`) and replaces the errno with a unit error.
//! - `VFIO_DEVICE_RESET`: the crate's `reset()` ignores the result; ours is the proof DMA stopped.
//! - `getrlimit(RLIMIT_MEMLOCK)`: std has no rlimit call.
#![allow(unsafe_code)] // UNSAFETY: ioctl(2) and getrlimit(2) are FFI calls taking raw pointers.

use std::io;
use std::mem::offset_of;
use std::mem::size_of;
use std::os::fd::AsRawFd;
use std::os::fd::BorrowedFd;

use vfio_bindings::bindings::vfio::vfio_device_info;
use vfio_bindings::bindings::vfio::vfio_irq_set;
use vfio_bindings::bindings::vfio::vfio_region_info;
use vfio_bindings::bindings::vfio::VFIO_BASE;
use vfio_bindings::bindings::vfio::VFIO_IRQ_SET_ACTION_TRIGGER;
use vfio_bindings::bindings::vfio::VFIO_IRQ_SET_DATA_EVENTFD;
use vfio_bindings::bindings::vfio::VFIO_IRQ_SET_DATA_NONE;
use vfio_bindings::bindings::vfio::VFIO_TYPE;

/// `_IO(VFIO_TYPE, VFIO_BASE + n)`, as `linux/vfio.h` defines every VFIO ioctl.
const fn vfio_io(n: u32) -> libc::Ioctl {
    libc::_IO(VFIO_TYPE as u32, VFIO_BASE + n)
}

/// `linux/vfio.h`: `VFIO_DEVICE_GET_INFO _IO(VFIO_TYPE, VFIO_BASE + 7)`.
pub(crate) const VFIO_DEVICE_GET_INFO: libc::Ioctl = vfio_io(7);
/// `linux/vfio.h`: `VFIO_DEVICE_GET_REGION_INFO _IO(VFIO_TYPE, VFIO_BASE + 8)`.
pub(crate) const VFIO_DEVICE_GET_REGION_INFO: libc::Ioctl = vfio_io(8);
/// `linux/vfio.h`: `VFIO_DEVICE_SET_IRQS _IO(VFIO_TYPE, VFIO_BASE + 10)`.
pub(crate) const VFIO_DEVICE_SET_IRQS: libc::Ioctl = vfio_io(10);
/// `linux/vfio.h`: `VFIO_DEVICE_RESET _IO(VFIO_TYPE, VFIO_BASE + 11)`.
pub(crate) const VFIO_DEVICE_RESET: libc::Ioctl = vfio_io(11);

/// The fd of a vfio-ioctls device, borrowed for as long as the device is.
pub(crate) fn device_fd(device: &vfio_ioctls::VfioDevice) -> BorrowedFd<'_> {
    // SAFETY: the device owns this fd and closes it only in its Drop, which cannot run while
    // `device` is borrowed; the returned BorrowedFd cannot outlive that borrow.
    unsafe { BorrowedFd::borrow_raw(device.as_raw_fd()) }
}

/// `VFIO_DEVICE_GET_INFO`: flags (reset support), region and irq counts.
pub(crate) fn device_info(device: BorrowedFd<'_>) -> io::Result<vfio_device_info> {
    crate::locks::assert_no_locks_held("VFIO_DEVICE_GET_INFO");
    let mut info = vfio_device_info {
        argsz: size_of::<vfio_device_info>() as u32,
        ..Default::default()
    };
    // SAFETY: the kernel writes at most `argsz` bytes into `info`, a live, writable struct of
    // exactly that size; `device` is an open fd.
    let rc = unsafe { libc::ioctl(device.as_raw_fd(), VFIO_DEVICE_GET_INFO, &mut info) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info)
}

/// `VFIO_DEVICE_GET_REGION_INFO` for one region index (capability chain not fetched).
pub(crate) fn region_info(device: BorrowedFd<'_>, index: u32) -> io::Result<vfio_region_info> {
    crate::locks::assert_no_locks_held("VFIO_DEVICE_GET_REGION_INFO");
    let mut info = vfio_region_info {
        argsz: size_of::<vfio_region_info>() as u32,
        index,
        ..Default::default()
    };
    // SAFETY: as for device_info: the kernel fills at most `argsz` bytes of this live struct (with
    // CAPS it only raises `argsz` to say a bigger buffer would hold the capability chain).
    let rc = unsafe { libc::ioctl(device.as_raw_fd(), VFIO_DEVICE_GET_REGION_INFO, &mut info) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info)
}

// The SET_IRQS buffer is built as u32 words: header fields in this order, then one fd per vector.
const _: () = {
    assert!(offset_of!(vfio_irq_set, argsz) == 0);
    assert!(offset_of!(vfio_irq_set, flags) == 4);
    assert!(offset_of!(vfio_irq_set, index) == 8);
    assert!(offset_of!(vfio_irq_set, start) == 12);
    assert!(offset_of!(vfio_irq_set, count) == 16);
    assert!(offset_of!(vfio_irq_set, data) == 20);
    assert!(size_of::<vfio_irq_set>() == 20);
};

/// The `vfio_irq_set` words for `flags` on irq `index`, vectors `0..fds.len()` (`count` 0 and
/// no data when `fds` is empty).
fn irq_set_words(flags: u32, index: u32, fds: &[BorrowedFd<'_>]) -> Vec<u32> {
    let argsz = (size_of::<vfio_irq_set>() + fds.len() * size_of::<u32>()) as u32;
    let mut words = vec![argsz, flags, index, 0, fds.len() as u32];
    words.extend(fds.iter().map(|fd| fd.as_raw_fd() as u32));
    words
}

/// Why `VFIO_DEVICE_SET_IRQS` enabled nothing.
#[derive(Debug)]
pub(crate) enum SetIrqsError {
    /// The ioctl failed with this errno.
    Os(io::Error),
    /// The kernel could allocate only this many of the MSI/MSI-X vectors asked, and enabled
    /// none of them.
    TooFewVectors(u32),
}

impl From<SetIrqsError> for io::Error {
    fn from(e: SetIrqsError) -> Self {
        match e {
            SetIrqsError::Os(e) => e,
            SetIrqsError::TooFewVectors(n) => io::Error::other(format!("only {n} vectors available")),
        }
    }
}

/// What a `VFIO_DEVICE_SET_IRQS` that returned `rc` did (`errno` is asked for only when `rc`
/// is negative).
///
/// A positive `rc` is a failure too: enabling MSI or MSI-X from nothing, vfio_msi_enable
/// (vfio_pci_intrs.c) asks pci_alloc_irq_vectors for 1 to `count` vectors and, given fewer,
/// frees them and returns the number it got, which vfio_pci_set_msi_trigger and
/// vfio_pci_ioctl_set_irqs hand to user space as the ioctl's result (QEMU retries with it). The
/// index stays disabled and no eventfd was installed.
fn set_irqs_outcome(rc: libc::c_int, errno: impl FnOnce() -> io::Error) -> Result<(), SetIrqsError> {
    match u32::try_from(rc) {
        Ok(0) => Ok(()),
        Ok(available) => Err(SetIrqsError::TooFewVectors(available)),
        Err(_) => Err(SetIrqsError::Os(errno())),
    }
}

fn set_irqs(device: BorrowedFd<'_>, words: &[u32]) -> Result<(), SetIrqsError> {
    crate::locks::assert_no_locks_held("VFIO_DEVICE_SET_IRQS");
    // SAFETY: `words` is a live, 4-aligned vfio_irq_set whose argsz (words[0]) equals its length
    // in bytes (built by irq_set_words); the kernel only reads it.
    let rc = unsafe { libc::ioctl(device.as_raw_fd(), VFIO_DEVICE_SET_IRQS, words.as_ptr()) };
    set_irqs_outcome(rc, io::Error::last_os_error)
}

/// `VFIO_DEVICE_SET_IRQS` with `DATA_EVENTFD | ACTION_TRIGGER`: vector i of irq `index` signals
/// `fds[i]`. The kernel takes its own reference to each eventfd.
///
/// # Errors
/// [`SetIrqsError::TooFewVectors`] when the kernel could not allocate `fds.len()` vectors (then
/// none is enabled); else the errno.
pub(crate) fn set_irq_eventfds(
    device: BorrowedFd<'_>,
    index: u32,
    fds: &[BorrowedFd<'_>],
) -> Result<(), SetIrqsError> {
    set_irqs(
        device,
        &irq_set_words(
            VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
            index,
            fds,
        ),
    )
}

/// `VFIO_DEVICE_SET_IRQS` with `DATA_NONE | ACTION_TRIGGER`, count 1: fire vector 0 of irq
/// `index` from user space (vfio.h: "DATA_NONE or DATA_BOOL ... loopback testing"), so its
/// eventfd is signalled as the device or the kernel would signal it; EINVAL when no eventfd is
/// registered there. The real-device test uses it to prove the device request eventfd is the
/// one the kernel signals.
#[cfg(test)]
pub(crate) fn trigger_irq_loopback(device: BorrowedFd<'_>, index: u32) -> io::Result<()> {
    let mut words = irq_set_words(VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER, index, &[]);
    // count (word 4) 1, no data: DATA_NONE carries none.
    words[4] = 1;
    set_irqs(device, &words).map_err(io::Error::from)
}

/// `VFIO_DEVICE_SET_IRQS` with `DATA_NONE | ACTION_TRIGGER`, count 0: disable every vector of
/// irq `index` (vfio.h: "the index can be disabled as a whole").
pub(crate) fn disable_irq_index(device: BorrowedFd<'_>, index: u32) -> io::Result<()> {
    // A disable allocates nothing: a positive result here would be a kernel we do not know.
    set_irqs(
        device,
        &irq_set_words(VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER, index, &[]),
    )
    .map_err(io::Error::from)
}

/// `VFIO_DEVICE_RESET`: function-level (or bus) reset; the errno is returned.
pub(crate) fn device_reset(device: BorrowedFd<'_>) -> io::Result<()> {
    crate::locks::assert_no_locks_held("VFIO_DEVICE_RESET");
    // SAFETY: an argument-less ioctl on an open fd; no memory is passed.
    let rc = unsafe { libc::ioctl(device.as_raw_fd(), VFIO_DEVICE_RESET) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The soft RLIMIT_MEMLOCK in bytes; `None` when unlimited.
pub(crate) fn memlock_soft_limit() -> io::Result<Option<u64>> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the live struct we pass.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur == libc::RLIM_INFINITY {
        return Ok(None);
    }
    // rlim_t is u64 on the glibc targets we build, narrower on some 32-bit ones.
    #[allow(clippy::unnecessary_cast)]
    let soft = lim.rlim_cur as u64;
    Ok(Some(soft))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EventFd;
    use std::os::fd::AsFd;

    #[test]
    fn ioctl_numbers_match_the_kernel_header() {
        // ';' is 0x3b, VFIO_BASE is 100 (0x64): the values strace prints for these calls.
        assert_eq!(VFIO_DEVICE_GET_INFO, 0x3b6b);
        assert_eq!(VFIO_DEVICE_GET_REGION_INFO, 0x3b6c);
        assert_eq!(VFIO_DEVICE_SET_IRQS, 0x3b6e);
        assert_eq!(VFIO_DEVICE_RESET, 0x3b6f);
    }

    #[test]
    fn irq_set_carries_one_fd_per_vector() {
        let a = EventFd::new().expect("eventfd");
        let b = EventFd::new().expect("eventfd");
        let words = irq_set_words(0x24, 2, &[a.as_fd(), b.as_fd()]);
        assert_eq!(words.len(), 7);
        assert_eq!(words[0] as usize, words.len() * 4, "argsz is the whole buffer");
        assert_eq!(&words[1..5], &[0x24, 2, 0, 2]);
        assert_eq!(words[5], a.as_fd().as_raw_fd() as u32);
        assert_eq!(words[6], b.as_fd().as_raw_fd() as u32);
        assert_eq!(irq_set_words(0x21, 2, &[]), vec![20, 0x21, 2, 0, 0]);
    }

    #[test]
    fn a_positive_set_irqs_result_is_the_vectors_available_and_a_failure() {
        let errno = || -> io::Error { panic!("errno read for a non-negative result") };
        assert!(set_irqs_outcome(0, errno).is_ok());
        assert!(matches!(
            set_irqs_outcome(3, errno),
            Err(SetIrqsError::TooFewVectors(3))
        ));
        assert!(matches!(
            set_irqs_outcome(-1, || io::Error::from_raw_os_error(libc::EINVAL)),
            Err(SetIrqsError::Os(e)) if e.raw_os_error() == Some(libc::EINVAL)
        ));
        // What enable_interrupts makes of it: the count, and what to do.
        let msg = crate::HalError::TooFewVectors {
            device: "0000:00:04.0".into(),
            vectors: 8,
            available: 3,
        }
        .to_string();
        assert!(msg.contains("only 3 of the 8 MSI-X vectors"), "{msg}");
        assert!(msg.contains("fewer workers"), "{msg}");
    }

    #[test]
    fn ioctls_on_a_non_vfio_fd_return_the_errno() {
        // An eventfd does not implement VFIO ioctls: the kernel answers ENOTTY, which must come
        // back as the error rather than be swallowed.
        let e = EventFd::new().expect("eventfd");
        let err = device_reset(e.as_fd()).expect_err("eventfd has no VFIO_DEVICE_RESET");
        assert_eq!(err.raw_os_error(), Some(libc::ENOTTY));
        let err = device_info(e.as_fd()).expect_err("eventfd has no VFIO_DEVICE_GET_INFO");
        assert_eq!(err.raw_os_error(), Some(libc::ENOTTY));
    }
}
