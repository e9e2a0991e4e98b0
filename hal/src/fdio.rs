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
    if fds.len() <= MAX_POLLED {
        let ready = poll_ready(fds, timeout)?;
        return Ok((0..fds.len()).map(|i| ready.is_ready(i)).collect());
    }
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
    Ok(pfds.iter().map(|p| p.revents & READABLE != 0).collect())
}

/// The revents that make a read worth trying (it returns the data or the error).
const READABLE: libc::c_short = libc::POLLIN | libc::POLLERR | libc::POLLHUP | libc::POLLNVAL;

/// Most fds [`poll_ready`] takes at once.
pub const MAX_POLLED: usize = 8;

/// Which fds of a [`poll_ready`] call were readable: bit `i` for `fds[i]`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadySet(u8);

impl ReadySet {
    /// `fds[index]` was readable (or in error: the caller's read will say).
    pub fn is_ready(self, index: usize) -> bool {
        index < MAX_POLLED && self.0 & (1 << index) != 0
    }

    /// Nothing was readable (the timeout passed, or EINTR).
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// [`poll_readable`] without allocating (the worker's wait, once per idle turn): at most
/// [`MAX_POLLED`] fds, the answer as a [`ReadySet`]. EINTR is "nothing readable".
///
/// # Errors
/// Any other errno of poll(2); `EINVAL` for more than [`MAX_POLLED`] fds.
///
/// # Panics
/// In debug and test builds, when a checked lock is held ([`crate::locks`]): poll blocks.
pub fn poll_ready(fds: &[BorrowedFd<'_>], timeout: Duration) -> io::Result<ReadySet> {
    crate::locks::assert_no_locks_held("poll");
    if fds.len() > MAX_POLLED {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut pfds = [libc::pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    }; MAX_POLLED];
    for (pfd, fd) in pfds.iter_mut().zip(fds) {
        pfd.fd = fd.as_raw_fd();
        pfd.events = libc::POLLIN;
    }
    let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    // SAFETY: `pfds` is a live array of at least `fds.len()` pollfd structs for the duration of
    // the call, and only that many are passed.
    let n = unsafe { libc::poll(pfds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    if n < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EINTR) {
            return Ok(ReadySet::default());
        }
        return Err(err);
    }
    let mut ready = 0u8;
    for (i, p) in pfds[..fds.len()].iter().enumerate() {
        if p.revents & READABLE != 0 {
            ready |= 1 << i;
        }
    }
    Ok(ReadySet(ready))
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

    #[test]
    fn poll_ready_names_the_readable_fds_and_refuses_too_many() {
        let a = EventFd::new().expect("eventfd");
        let b = EventFd::new().expect("eventfd");
        let set = poll_ready(&[a.as_fd(), b.as_fd()], Duration::ZERO).expect("poll");
        assert!(set.is_empty());
        b.signal();
        let set = poll_ready(&[a.as_fd(), b.as_fd()], Duration::ZERO).expect("poll");
        assert!(!set.is_ready(0) && set.is_ready(1) && !set.is_empty());
        let many = vec![a.as_fd(); MAX_POLLED + 1];
        assert_eq!(
            poll_ready(&many, Duration::ZERO).map_err(|e| e.raw_os_error()),
            Err(Some(libc::EINVAL))
        );
        // The allocating form takes any number, in one poll(2).
        let flags = poll_readable(&many, Duration::ZERO).expect("poll");
        assert_eq!(flags, vec![false; MAX_POLLED + 1]);
    }
}
