//! The system calls of the file store that std does not wrap: fallocate(2) to punch holes in
//! a file, copy_file_range(2) for EXTENDED COPY, the BLKDISCARD / BLKZEROOUT ioctls on a block device, and flock(2) on an image
//! (std's `File::try_lock` is newer than the crate's minimum Rust), fstatfs(2) for the file
//! system's type; for the tests, fcntl(2) F_GETFL and F_SETLK.
// UNSAFETY: fallocate(2), flock(2) and fcntl(2) are FFI calls taking only the fd and integers;
// fstatfs(2) writes one `statfs` we own for the duration of the call;
// copy_file_range(2) also updates two offsets we own; the two
// ioctls read one 16-byte range from memory we own for the duration of the call.
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

/// copy_file_range(2) of `len` bytes from `src` to `dst` inside the file behind `fd` (the
/// ranges must not overlap). Returns the bytes copied, which may be fewer (the caller loops).
///
/// # Errors
/// The errno: ENOSYS / EOPNOTSUPP / EXDEV / EINVAL where the kernel or file system cannot copy
/// this way (the caller copies through memory), EIO on a medium error.
pub(super) fn copy_file_range(fd: BorrowedFd<'_>, src: u64, dst: u64, len: usize) -> io::Result<usize> {
    let invalid = || io::Error::from(io::ErrorKind::InvalidInput);
    let mut off_in = libc::loff_t::try_from(src).map_err(|_| invalid())?;
    let mut off_out = libc::loff_t::try_from(dst).map_err(|_| invalid())?;
    // SAFETY: the kernel reads and updates the two offsets, locals that live through the call;
    // the fd is borrowed, hence open, for the call; no other memory of ours is touched.
    let rc =
        unsafe { libc::copy_file_range(fd.as_raw_fd(), &mut off_in, fd.as_raw_fd(), &mut off_out, len, 0) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc as usize)
}

/// `_IO(0x12, nr)` (linux/fs.h): no size, and the "none" direction, which is 1 (bit 29) on
/// the architectures with a 3-bit direction field and 0 elsewhere.
const fn block_io(nr: libc::Ioctl) -> libc::Ioctl {
    #[cfg(any(
        target_arch = "mips",
        target_arch = "mips64",
        target_arch = "powerpc",
        target_arch = "powerpc64",
        target_arch = "sparc",
        target_arch = "sparc64"
    ))]
    const NONE: libc::Ioctl = 0x2000_0000;
    #[cfg(not(any(
        target_arch = "mips",
        target_arch = "mips64",
        target_arch = "powerpc",
        target_arch = "powerpc64",
        target_arch = "sparc",
        target_arch = "sparc64"
    )))]
    const NONE: libc::Ioctl = 0;
    NONE | (0x12 << 8) | nr
}

/// BLKDISCARD: `_IO(0x12, 119)`.
const BLKDISCARD: libc::Ioctl = block_io(119);
/// BLKZEROOUT: `_IO(0x12, 127)`.
const BLKZEROOUT: libc::Ioctl = block_io(127);

/// Discard (deallocate) `len` bytes at `offset` of a block device: UNMAP, and WRITE ZEROES
/// with deallocate when the device guarantees zeroes after a discard. The data of the range
/// is then undefined unless the device says otherwise (SBC-3 §4.7.3.4: LBPRZ 0).
///
/// # Errors
/// The errno: EOPNOTSUPP when the device cannot discard, EINVAL on a range not aligned to
/// the logical block size or past the end, EIO.
pub(super) fn discard(fd: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<()> {
    block_range_ioctl(fd, BLKDISCARD, offset, len)
}

/// Zero `len` bytes at `offset` of a block device (WRITE ZEROES). The kernel uses the
/// device's write-zeroes command or writes zero pages itself, and does not deallocate
/// (BLKZEROOUT asks for BLKDEV_ZERO_NOUNMAP).
///
/// # Errors
/// The errno: EINVAL on a misaligned range, EIO when the device failed.
pub(super) fn zero_out(fd: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<()> {
    block_range_ioctl(fd, BLKZEROOUT, offset, len)
}

fn block_range_ioctl(fd: BorrowedFd<'_>, request: libc::Ioctl, offset: u64, len: u64) -> io::Result<()> {
    let range: [u64; 2] = [offset, len];
    // SAFETY: both ioctls read a `uint64_t[2]` (start, length) from the pointer and write
    // nothing back; `range` lives on our stack for the whole call, and the fd is borrowed,
    // hence open, for it.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request, range.as_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Where the next data (SEEK_DATA) or hole (SEEK_HOLE) of a regular file starts at or after
/// `offset` (lseek(2)); `None` for SEEK_DATA past the last data (ENXIO). End of file counts as
/// a hole. For GET LBA STATUS (SBC-3 §5.7). Moves the shared file offset, which nothing else
/// uses: every transfer is pread/pwrite at an explicit offset.
///
/// # Errors
/// The errno: EINVAL when the file system does not support SEEK_DATA/SEEK_HOLE semantics
/// beyond the trivial ones, EIO.
pub(super) fn seek(fd: BorrowedFd<'_>, offset: u64, data: bool) -> io::Result<Option<u64>> {
    let offset = libc::off_t::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let whence = if data { libc::SEEK_DATA } else { libc::SEEK_HOLE };
    // SAFETY: lseek reads no memory of ours; the fd is borrowed, hence open, for the call.
    let at = unsafe { libc::lseek(fd.as_raw_fd(), offset, whence) };
    if at < 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ENXIO) {
            Ok(None)
        } else {
            Err(e)
        };
    }
    Ok(u64::try_from(at).ok())
}

/// Take an exclusive flock(2) on a regular file without waiting (LOCK_EX | LOCK_NB): two
/// handlers serving one image would interleave their writes and corrupt it. The lock belongs to
/// the open file description, so it holds against a second open in this process too, and goes
/// with the last fd of it (the store's drop, or the process's death: a SIGKILLed handler leaves
/// no stale lock behind).
///
/// # Errors
/// EWOULDBLOCK when another open of the file holds it; ENOLCK, EINTR (not retried: the caller
/// reports it), EINVAL on a file system without flock.
pub(super) fn lock_exclusive(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: flock reads no memory of ours; the fd is borrowed, hence open, for the call.
    let rc = unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The type of the file system holding `fd` (fstatfs(2) `f_type`: its magic number, as in
/// linux/magic.h).
///
/// # Errors
/// The errno (EBADF, EIO, ENOSYS).
pub(super) fn file_system_magic(fd: BorrowedFd<'_>) -> io::Result<i64> {
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: fstatfs writes at most one `statfs` into `st`, which lives for the call; the fd
    // is borrowed, hence open, for the call.
    let rc = unsafe { libc::fstatfs(fd.as_raw_fd(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstatfs returned 0, so it filled `st`.
    let st = unsafe { st.assume_init() };
    #[allow(clippy::unnecessary_cast)] // `__fsword_t` is i64 on x86_64, not on every target.
    Ok(st.f_type as i64)
}

/// The file status flags of `fd` (fcntl(2) F_GETFL: O_DSYNC, O_DIRECT and the access mode),
/// for the tests to check how the store opened its files.
///
/// # Errors
/// The errno (EBADF).
#[cfg(test)]
pub(super) fn status_flags(fd: BorrowedFd<'_>) -> io::Result<libc::c_int> {
    // SAFETY: F_GETFL reads no memory of ours and takes no third argument; the fd is borrowed,
    // hence open, for the call.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(flags)
}

/// Take a POSIX write lock of the whole file behind `fd` (fcntl(2) F_SETLK, F_WRLCK), as
/// Linux's NFS client does for an exclusive flock: for the tests to show the lock's fd can.
///
/// # Errors
/// The errno (EBADF on a descriptor not open for writing, EAGAIN when held elsewhere).
#[cfg(test)]
pub(super) fn posix_write_lock(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: all-zero is a valid `struct flock` (plain integers); the fields set below are
    // the whole file's write lock.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_WRLCK as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: F_SETLK reads the `struct flock` we own for the duration of the call and writes
    // nothing; the fd is borrowed, hence open, for the call.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETLK, &lock) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
