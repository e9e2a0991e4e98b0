//! One handler per image: two processes serving the same file or device would interleave their
//! writes (and each trust its own cache) and corrupt it.
//!
//! - A regular file gets an exclusive flock(2) when the store opens ([`open_and_lock_image`]),
//!   held by an fd of its own (never registered with io_uring, whose registered files the
//!   kernel releases asynchronously) until the store drops or the process dies (a SIGKILLed
//!   handler leaves no stale lock). On a local file system flock belongs to the open file
//!   description, so a second store on the same file fails in this process too. On NFS it does
//!   not: Linux's NFS client emulates flock with a POSIX (fcntl) lock of the whole file
//!   (flock(2), "NFS details"), which belongs to the process: a second store of this process on
//!   the same image gets the lock as well, and closing any fd of the image in the process
//!   releases it. The store closes none of its fds of the image while it serves, and the
//!   service's configuration refuses two disks on one image however its path is spelled (a
//!   symlink, a hard link: `Medium` in tools/src/config/load.rs), so one process never opens
//!   an image twice; other processes are kept out as on a local file system (the
//!   lock goes to the server). The lock's fd is opened read-write, never used for I/O: the
//!   emulated exclusive lock is an fcntl write lock, which needs a descriptor open for writing
//!   (EBADF otherwise). The store has no read-only mode (every fd of the image is opened
//!   read-write), so this asks for no access it lacks. A held lock is retried for 200 ms
//!   before the open fails:
//!   a child being spawned shares the description (and the lock) of an image just closed until
//!   it execs, and a disk reopened at that moment must not be refused. It is advisory: `dd` or a program that does not lock is not
//!   kept out, but every scst-accel is.
//! - A block device is opened once more with O_EXCL, by an fd that only holds the claim (the
//!   I/O goes through fds opened without it): the kernel's exclusive claim, which
//!   also refuses a mounted device or one in a RAID/LVM; a second claim is EBUSY
//!   ([`FileStoreError::Busy`]).

use super::sys;
use super::FileStoreError;
use std::fs::File;
use std::fs::OpenOptions;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::Duration;
use std::time::Instant;

/// Open `path` once more, only to hold its lock, and lock it for this store alone. Read-write
/// (no I/O goes through it): on NFS the exclusive flock is an fcntl write lock, refused with
/// EBADF on a descriptor not open for writing (module doc).
///
/// # Errors
/// As [`lock_image`], or [`FileStoreError::Io`] when it cannot be opened.
pub(super) fn open_and_lock_image(path: &Path) -> Result<File, FileStoreError> {
    let claim = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|source| FileStoreError::Io {
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
    let deadline = Instant::now() + LOCK_PATIENCE;
    loop {
        match sys::lock_exclusive(file.as_fd()) {
            Ok(()) => return Ok(()),
            // Held: by another handler (for good), or for a moment by a child this process is
            // forking (between fork and exec it shares the open file description of an image
            // just closed, and with it the lock). Look again briefly before saying Locked.
            Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => {
                if Instant::now() >= deadline {
                    return Err(FileStoreError::Locked {
                        path: path.to_owned(),
                    });
                }
                scst_accel_hal::locks::sleep(LOCK_RETRY);
            }
            Err(source) => {
                return Err(FileStoreError::Io {
                    path: path.to_owned(),
                    what: "flock (the exclusive lock that keeps a second handler off the image)",
                    source,
                })
            }
        }
    }
}

/// How long a held lock is retried before the open fails [`FileStoreError::Locked`]: far longer
/// than a fork-to-exec window, far shorter than anything an operator would notice.
const LOCK_PATIENCE: Duration = Duration::from_millis(200);
/// Pause between tries.
const LOCK_RETRY: Duration = Duration::from_millis(5);
