//! User memory access of the loopback kernel: `copy_from_user`, `copy_to_user` and the
//! page pin, done exactly as the kernel sees user memory. Every pointer field of the ABI
//! (`version_str`, `preply`, `pbuf`, `psense_buffer`, `ws_descriptors`...) is a user virtual
//! address of this very process; it is accessed only through `process_vm_readv` /
//! `process_vm_writev` on our own pid, so an invalid address returns `EFAULT` instead of
//! crashing the process, exactly like `copy_from_user` in the kernel (spec §3.2, §3.4).
// UNSAFETY: process_vm_readv/process_vm_writev take raw iovecs; they are the one way to touch
// arbitrary user addresses without risking a fault in our own address space.
#![allow(unsafe_code)]

use crate::transport::Errno;

/// Kernel page size (x86_64).
pub(crate) const PAGE_SIZE: u64 = 4096;

/// Largest chunk moved per syscall; keeps the iovecs of a partial transfer simple.
const CHUNK: usize = 1 << 20;

/// Copy `out.len()` bytes from user address `addr` into `out` (the kernel's `copy_from_user`).
///
/// # Errors
/// `EFAULT` if any byte of the range is not readable.
pub(crate) fn copy_from_user(addr: u64, out: &mut [u8]) -> Result<(), Errno> {
    super::device::assert_unlocked("copy_from_user");
    let mut done = 0usize;
    while done < out.len() {
        let len = (out.len() - done).min(CHUNK);
        let remote = addr.checked_add(done as u64).ok_or(Errno::EFAULT)?;
        let local_iov = libc::iovec {
            iov_base: out[done..].as_mut_ptr().cast(),
            iov_len: len,
        };
        let remote_iov = libc::iovec {
            iov_base: remote as usize as *mut libc::c_void,
            iov_len: len,
        };
        // SAFETY: the local iovec covers `len` bytes of `out`, which we borrow mutably for the
        // call; the remote iovec is only dereferenced by the kernel, which checks it and returns
        // EFAULT for unmapped addresses instead of faulting.
        let n = unsafe { libc::process_vm_readv(libc::getpid(), &local_iov, 1, &remote_iov, 1, 0) };
        if n <= 0 {
            return Err(Errno::EFAULT);
        }
        done += n as usize;
    }
    Ok(())
}

/// Copy `data` to user address `addr` (the kernel's `copy_to_user`).
///
/// # Errors
/// `EFAULT` if any byte of the range is not writable.
pub(crate) fn copy_to_user(addr: u64, data: &[u8]) -> Result<(), Errno> {
    super::device::assert_unlocked("copy_to_user");
    let mut done = 0usize;
    while done < data.len() {
        let len = (data.len() - done).min(CHUNK);
        let remote = addr.checked_add(done as u64).ok_or(Errno::EFAULT)?;
        let local_iov = libc::iovec {
            iov_base: data[done..].as_ptr() as *mut libc::c_void,
            iov_len: len,
        };
        let remote_iov = libc::iovec {
            iov_base: remote as usize as *mut libc::c_void,
            iov_len: len,
        };
        // SAFETY: the local iovec covers `len` bytes of `data` and is only read by the kernel;
        // the remote iovec is checked by the kernel, which returns EFAULT for bad addresses.
        let n = unsafe { libc::process_vm_writev(libc::getpid(), &local_iov, 1, &remote_iov, 1, 0) };
        if n <= 0 {
            return Err(Errno::EFAULT);
        }
        done += n as usize;
    }
    Ok(())
}

/// "Pin" `[addr, addr + len)`: probe one byte of every page the range spans, as
/// `get_user_pages` would fault each page in. The model treats a successful probe as the pin.
///
/// # Errors
/// `EFAULT` if a page of the range is not mapped readable, or the range wraps.
pub(crate) fn pin_user_pages(addr: u64, len: u64) -> Result<(), Errno> {
    if len == 0 {
        return Ok(());
    }
    let end = addr.checked_add(len).ok_or(Errno::EFAULT)?;
    let mut page = addr & !(PAGE_SIZE - 1);
    let mut byte = [0u8; 1];
    while page < end {
        copy_from_user(page.max(addr), &mut byte)?;
        page += PAGE_SIZE;
    }
    Ok(())
}

/// Read a C string the way `dev_user_check_version` does: copy a FIXED `len` bytes (all must
/// be readable), force a NUL at the last byte, stop at the first NUL (spec §1.4).
///
/// # Errors
/// `EFAULT` if the fixed-size range is not readable.
pub(crate) fn copy_fixed_c_string(addr: u64, len: usize) -> Result<Vec<u8>, Errno> {
    let mut buf = vec![0u8; len];
    copy_from_user(addr, &mut buf)?;
    if let Some(last) = buf.last_mut() {
        *last = 0;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    buf.truncate(end);
    Ok(buf)
}

/// Whether `fd` polls readable right now (test helper for the level-triggered poll fd).
#[cfg(test)]
pub(crate) fn poll_readable(fd: std::os::fd::BorrowedFd<'_>) -> bool {
    use std::os::fd::AsRawFd;
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd on the stack, count 1, zero timeout: poll only writes revents.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n == 1 && pfd.revents & libc::POLLIN != 0
}

/// Test helper: two anonymous pages, the second made inaccessible, so that a string can end
/// right before unreadable memory (to check fixed-size reads, spec §1.4).
#[cfg(test)]
pub(crate) struct GuardedPage {
    base: *mut libc::c_void,
}

#[cfg(test)]
impl GuardedPage {
    pub(crate) fn new() -> Self {
        // SAFETY: anonymous private mapping of two pages, checked below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                2 * PAGE_SIZE as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED, "mmap");
        // SAFETY: the second page lies inside the mapping just created.
        let rc = unsafe {
            libc::mprotect(
                base.cast::<u8>().add(PAGE_SIZE as usize).cast(),
                PAGE_SIZE as usize,
                libc::PROT_NONE,
            )
        };
        assert_eq!(rc, 0, "mprotect");
        Self { base }
    }

    /// Write `bytes` so that they end exactly at the guard page; returns their address.
    pub(crate) fn place_at_end(&self, bytes: &[u8]) -> u64 {
        let addr = self.base as u64 + PAGE_SIZE - bytes.len() as u64;
        copy_to_user(addr, bytes).expect("first page is writable");
        addr
    }
}

#[cfg(test)]
impl Drop for GuardedPage {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping created in `new`.
        unsafe { libc::munmap(self.base, 2 * PAGE_SIZE as usize) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_round_trip_and_bad_addresses_fault() {
        let mut target = vec![0u8; 10_000];
        let addr = target.as_mut_ptr() as u64;
        copy_to_user(addr + 5, b"hello").unwrap();
        let mut out = [0u8; 5];
        copy_from_user(addr + 5, &mut out).unwrap();
        assert_eq!(&out, b"hello");
        assert_eq!(&target[5..10], b"hello");
        assert_eq!(copy_from_user(8, &mut out), Err(Errno::EFAULT));
        assert_eq!(copy_to_user(8, b"x"), Err(Errno::EFAULT));
        assert_eq!(pin_user_pages(8, 4096), Err(Errno::EFAULT));
        pin_user_pages(addr, 10_000).unwrap();
    }

    #[test]
    fn fixed_c_string_reads_exactly_len_and_forces_nul() {
        let mut s = *b"GPLxxxx\0";
        s[3] = 0;
        assert_eq!(copy_fixed_c_string(s.as_ptr() as u64, 8).unwrap(), b"GPL");
        let full = *b"abcdefgh";
        assert_eq!(copy_fixed_c_string(full.as_ptr() as u64, 8).unwrap(), b"abcdefg");
    }
}
