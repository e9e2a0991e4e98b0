//! Small safe wrappers over the fd system calls that devices, transports and the frontend share:
//! an eventfd used as a level-triggered readiness flag, and a bounded `poll(2)`.
#![allow(unsafe_code)] // UNSAFETY: eventfd(2), read(2)/write(2) on it, and poll(2) are FFI calls.

use std::io;
use std::os::fd::AsFd;
use std::os::fd::AsRawFd;
use std::os::fd::BorrowedFd;
use std::os::fd::FromRawFd;
use std::os::fd::OwnedFd;
use std::time::Duration;

/// A non-blocking eventfd.
#[derive(Debug)]
pub struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    /// Create one, initially not readable.
    ///
    /// # Errors
    /// The errno of eventfd(2) (EMFILE when out of file descriptors).
    pub fn new() -> io::Result<Self> {
        // SAFETY: eventfd takes no pointers; the result is checked before use.
        let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor this process owns and nobody else closes.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(Self { fd })
    }

    /// Make it readable (adds 1 to the counter; saturating is harmless for a flag).
    pub fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an eventfd we own.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        if n != 8 {
            // EAGAIN means the counter is at its maximum: still readable, which is what we want.
            log::trace!("eventfd signal: {}", io::Error::last_os_error());
        }
    }

    /// Make it not readable; returns whether it was signalled.
    pub fn clear(&self) -> bool {
        let mut value: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from a non-blocking eventfd we own.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), (&mut value as *mut u64).cast(), 8) };
        n == 8
    }
}

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Wait until at least one of `fds` is readable or `timeout` passes; returns one flag per fd.
/// EINTR is reported as "nothing readable" so callers re-check their stop conditions.
///
/// # Errors
/// Any other errno of poll(2).
///
/// # Panics
/// In debug and test builds, when a checked lock is held ([`crate::locks`]): poll blocks.
pub fn poll_readable(fds: &[BorrowedFd<'_>], timeout: Duration) -> io::Result<Vec<bool>> {
    crate::locks::assert_no_locks_held("poll");
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    // SAFETY: `pfds` is a live array of `pfds.len()` pollfd structs for the duration of the call.
    let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
    if n < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EINTR) {
            return Ok(vec![false; fds.len()]);
        }
        return Err(err);
    }
    Ok(pfds
        .iter()
        .map(|p| p.revents & (libc::POLLIN | libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eventfd_is_a_level_flag() {
        let e = EventFd::new().expect("eventfd");
        assert_eq!(
            poll_readable(&[e.as_fd()], Duration::ZERO).expect("poll"),
            vec![false]
        );
        e.signal();
        e.signal();
        assert_eq!(
            poll_readable(&[e.as_fd()], Duration::ZERO).expect("poll"),
            vec![true]
        );
        assert!(e.clear());
        assert!(!e.clear());
        assert_eq!(
            poll_readable(&[e.as_fd()], Duration::from_millis(1)).expect("poll"),
            vec![false]
        );
    }
}
