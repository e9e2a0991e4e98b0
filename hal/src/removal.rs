//! [`RemovalRequest`]: the kernel asking for a function back.
//!
//! When a function bound to vfio-pci is unbound (`echo BDF > /sys/bus/pci/drivers/vfio-pci/unbind`)
//! or hot-removed, `vfio_unregister_group_dev` (drivers/vfio/vfio_main.c) waits for every open
//! device fd to close, and calls the driver's `request` op at once and then every 10 s while it
//! waits. vfio-pci's `vfio_pci_core_request` signals the eventfd registered on
//! `VFIO_PCI_REQ_IRQ_INDEX`, or, with none registered, only logs "No device request channel
//! registered, blocked until released by user" and the unbind blocks for as long as the process
//! keeps the device open. The request is a plea, not a removal: the function still answers
//! until the fd is closed, so the owner can drain, reset and unmap in order before it closes.
//!
//! The simulator raises the same request ([`RemovalRequest::raise`]) so the owner's response is
//! tested on the same code path.

use std::os::fd::AsFd;
use std::os::fd::BorrowedFd;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;

use crate::EventFd;

/// The eventfd the kernel signals to ask for the device back, and whether it has asked.
///
/// The answer is latched: the kernel signals again every 10 s until the fd closes, and an
/// owner that looked once must not see the request vanish because it consumed the count.
#[derive(Debug)]
pub struct RemovalRequest {
    fd: EventFd,
    requested: AtomicBool,
}

impl RemovalRequest {
    /// A request channel nobody has signalled yet.
    ///
    /// # Errors
    /// The errno of eventfd(2).
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            fd: EventFd::new()?,
            requested: AtomicBool::new(false),
        })
    }

    /// Whether the kernel (or the simulator) has asked for the device back. Never blocks: one
    /// non-blocking read of the eventfd until the first request is seen, an atomic load after.
    pub fn is_requested(&self) -> bool {
        if self.requested.load(Ordering::Acquire) {
            return true;
        }
        if self.fd.clear() {
            self.requested.store(true, Ordering::Release);
            return true;
        }
        false
    }

    /// Ask for the device back as vfio-pci's `request` op does: signal the eventfd. For the
    /// simulator and tests; the kernel signals the eventfd itself.
    pub fn raise(&self) {
        self.fd.signal();
    }

    /// The eventfd, for an owner that polls it with its other fds (readable once asked, until
    /// [`RemovalRequest::is_requested`] reads it).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::RemovalRequest;
    use std::time::Duration;

    #[test]
    fn a_request_is_seen_once_raised_and_stays_seen() {
        let request = RemovalRequest::new().expect("eventfd");
        assert!(!request.is_requested());
        let ready = crate::fdio::poll_readable(&[request.fd()], Duration::ZERO).expect("poll");
        assert_eq!(ready, vec![false]);
        request.raise();
        let ready = crate::fdio::poll_readable(&[request.fd()], Duration::ZERO).expect("poll");
        assert_eq!(ready, vec![true], "the eventfd is pollable");
        assert!(request.is_requested());
        // The read consumed the count; the answer stays.
        assert!(request.is_requested());
    }
}
