//! One handler per image: two processes serving the same file or device would interleave their
//! writes (and each trust its own cache) and corrupt it.
//!
//! - A regular file gets an exclusive flock(2) when the store opens ([`open_and_lock_image`]),
//!   held by an fd of its own (never registered with io_uring, whose registered files the
//!   kernel releases asynchronously) until the store drops or the process dies (a SIGKILLed
//!   handler leaves no stale lock). flock belongs to the open file description, so a second store on the same
//!   file fails in this process too. It is advisory: `dd` or a program that does not lock is not
//!   kept out, but every scst-accel is.
//! - A block device is opened once more with O_EXCL, by an fd that only holds the claim (the
//!   I/O goes through fds opened without it): the kernel's exclusive claim, which
//!   also refuses a mounted device or one in a RAID/LVM; a second claim is EBUSY
//!   ([`FileStoreError::Busy`]).

use super::sys;
use super::FileStoreError;
use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;

/// Open `path` once more, only to hold its lock, and lock it for this store alone.
///
/// # Errors
/// As [`lock_image`], or [`FileStoreError::Io`] when it cannot be opened.
pub(super) fn open_and_lock_image(path: &Path) -> Result<File, FileStoreError> {
    let claim = File::open(path).map_err(|source| FileStoreError::Io {
        path: path.to_owned(),
        what: "open (for the exclusive lock that keeps a second handler off the image)",
        source,
    })?;
    lock_image(path, &claim)?;
    Ok(claim)
}

/// Lock the image `file` opened from `path` for this store alone.
///
/// # Errors
/// [`FileStoreError::Locked`] when another open of it holds the lock; [`FileStoreError::Io`]
/// when the file system cannot lock.
pub(super) fn lock_image(path: &Path, file: &File) -> Result<(), FileStoreError> {
    match sys::lock_exclusive(file.as_fd()) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Err(FileStoreError::Locked {
            path: path.to_owned(),
        }),
        Err(source) => Err(FileStoreError::Io {
            path: path.to_owned(),
            what: "flock (the exclusive lock that keeps a second handler off the image)",
            source,
        }),
    }
}
