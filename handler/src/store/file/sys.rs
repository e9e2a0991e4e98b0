//! The one system call of the file store that std does not wrap: fallocate(2) to punch holes.
// UNSAFETY: fallocate(2) is an FFI call; it takes no pointers, only the fd and two offsets.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::AsRawFd;
use std::os::fd::BorrowedFd;

/// Deallocate `len` bytes at `offset` of a regular file, keeping its size: later reads of the
/// range return zeroes (what UNMAP and WRITE SAME with UNMAP need, SBC-3 §4.7.3.4 with LBPRZ).
///
/// # Errors
/// The errno: EOPNOTSUPP when the file system cannot punch holes (the caller writes zeroes or
/// treats the UNMAP as the hint it is), EIO, EINVAL on offsets beyond `off_t`.
pub(super) fn punch_hole(fd: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<()> {
    let invalid = || io::Error::from(io::ErrorKind::InvalidInput);
    let offset = libc::off_t::try_from(offset).map_err(|_| invalid())?;
    let len = libc::off_t::try_from(len).map_err(|_| invalid())?;
    // SAFETY: fallocate reads no memory of ours; the fd is borrowed, hence open, for the call.
    let rc = unsafe {
        libc::fallocate(
            fd.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
