//! One handler per image: two processes serving the same file or device would interleave their
//! writes (and each trust its own cache) and corrupt it.
//!
//! - A regular file gets an exclusive flock(2) when the store opens ([`lock_image`]), held by
//!   the store's main fd until the store drops or the process dies (a SIGKILLed handler leaves
//!   no stale lock). flock belongs to the open file description, so a second store on the same
//!   file fails in this process too. It is advisory: `dd` or a program that does not lock is not
//!   kept out, but every scst-accel is.
//! - A block device is opened with O_EXCL (`open_medium`): the kernel's exclusive claim, which
//!   also refuses a mounted device or one in a RAID/LVM; a second claim is EBUSY
//!   ([`FileStoreError::Busy`]).

use super::sys;
use super::FileStoreError;
use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;

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
