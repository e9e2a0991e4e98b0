//! How the file store fails: the errno of a failed transfer as a [`StoreStatus`], and the check
//! that keeps a write from silently growing a file truncated under the handler. Kept apart from
//! the transfer paths so that every I/O engine maps failures alike.
//!
//! - **EIO** (the device under the file failed) on a read is [`StoreStatus::ReadError`], on a
//!   write [`StoreStatus::WriteError`], at the first LBA that fails alone (the engine sends
//!   MEDIUM ERROR / UNRECOVERED READ ERROR or WRITE ERROR with it in INFORMATION).
//! - **ENOSPC, EDQUOT** on a write to a regular file: the file system could not allocate the
//!   block (a sparse image, or a hole UNMAP punched, on a full file system):
//!   [`StoreStatus::SpaceExhausted`], which the engine reports as SBC says for the disk's
//!   provisioning. On a block device ENOSPC is either a thin-provisioned device out of space
//!   (dm-thin, or a SCSI disk's DATA PROTECT / SPACE ALLOCATION FAILED WRITE PROTECT, 27/07,
//!   which Linux turns into ENOSPC), SpaceExhausted too, or a write past the device's end;
//!   the store range-checks every request against the size it opened with, so that means the
//!   device shrank under it. The device's size is read again on that error path only, and a
//!   failing block past the device's end now is a write error ([`out_of_space`]).
//! - **End of file inside the medium** on a read (a short read: another program truncated the
//!   file) is a read error at the first missing block: the capacity the initiator read did not
//!   change, so every LBA below it must return the data last written there; that data is gone,
//!   and GOOD over zeroes would hide the loss.
//! - **A write past the end of a truncated file** would grow it back, silently, with holes
//!   before: the store promises never to truncate nor grow. The file's size is read first (one
//!   stat per write on a regular file), and the write fails as a write error at the first
//!   missing block ([`Shared::past_end`]). The I/O threads fstat on their own thread
//!   ([`Shared::truncated_at`]). The io_uring engine fstats on the worker's thread where the
//!   file system answers a stat from memory ([`stat_is_local`]: ext2/3/4, XFS, Btrfs, F2FS,
//!   tmpfs, ramfs), and elsewhere puts an IORING_OP_STATX on its ring ahead of the write and
//!   pushes the write from that CQE, so the frontend's worker never waits for a stat that may
//!   be a round trip (on NFS or FUSE a write drops the cached attributes, and a hung server
//!   never answers). The STATX costs a trip through the kernel's io-wq per write, which on a
//!   local file system cost 23-50 % of the 4 KiB random-write IOPS (ext4, three alternated
//!   runs). A truncation between that check and the write is not caught (nothing atomic exists
//!   short of a lease); the next read past the cut reports it.

use super::Shared;
use super::StoreStatus;
use std::io;
use std::io::Seek;
use std::io::SeekFrom;
use std::os::fd::BorrowedFd;
use std::path::Path;

impl Shared {
    /// The status of a write that failed with `e` (not EINVAL, see `not_a_medium_error`) at
    /// `lba`, logged.
    pub(super) fn write_failed(&self, e: &io::Error, lba: u64) -> StoreStatus {
        self.note_gone(e);
        let path = self.path.display();
        if matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) {
            if self.regular {
                log::error!(
                    "{path}: no space to store LBA {lba} ({e}); free space on its file system (or \
                     raise the quota), or preallocate the image (fallocate -l SIZE) so that \
                     every block is allocated"
                );
                return StoreStatus::SpaceExhausted { lba };
            }
            if self.note_gone_if_empty() {
                log::error!("{path}: write error at LBA {lba}: the device is gone");
                return StoreStatus::WriteError { lba };
            }
            if out_of_space(lba, self.info.block_size, || (&self.data).seek(SeekFrom::End(0))) {
                log::error!(
                    "{path}: the device has no space to store LBA {lba} ({e}): a thin-provisioned \
                     device out of space; extend its pool (lvextend on a thin pool)"
                );
                return StoreStatus::SpaceExhausted { lba };
            }
        }
        if matches!(e.raw_os_error(), Some(libc::EROFS | libc::EPERM)) {
            // A file system remounted read-only (after an error of its own, often), a block
            // device set read-only (`blockdev --setro`: EPERM from the block layer), an
            // immutable file: the medium refuses writes, which is DATA PROTECT, not a bad block.
            log::error!(
                "{path}: writes refused at LBA {lba} ({e}): the {} is read-only now; make it \
                 writable again (a file system remounted read-only needs its own repair first), \
                 then restart the disk",
                if self.regular {
                    "file or its file system"
                } else {
                    "device"
                },
            );
            return StoreStatus::WriteProtected;
        }
        log::error!("{path}: write error at LBA {lba}: {e}");
        StoreStatus::WriteError { lba }
    }

    /// An I/O that failed with ENODEV or ENXIO ("no such device") tells that the device is
    /// gone (a block device removed, a disk the kernel marked dead): the store fails
    /// ([`super::Shared::gone`]), once, said at error.
    pub(super) fn note_gone(&self, e: &io::Error) {
        if matches!(e.raw_os_error(), Some(libc::ENODEV | libc::ENXIO)) {
            self.mark_gone(&e.to_string());
        }
    }

    /// The store fails, the first time only, said at error: the device is gone (`how`).
    fn mark_gone(&self, how: &str) {
        let why = format!("{}: the device is gone ({how})", self.path.display());
        if self.gone.set(why.clone()).is_ok() {
            log::error!("{why}; the disk is torn down");
        }
    }

    /// A block device whose size is now 0 is gone: Linux sets a removed disk's capacity to 0
    /// (`del_gendisk`, `blk_mark_disk_dead`), after which a read finds its end at once and a
    /// write gets ENOSPC, not ENODEV. The store fails then ([`Self::note_gone`]); true if so.
    /// A device shrunk but not empty is not gone: its blocks past the new end are medium
    /// errors. A regular file cut to 0 is a truncation, said as such by the caller.
    pub(super) fn note_gone_if_empty(&self) -> bool {
        if self.regular || (&self.data).seek(SeekFrom::End(0)).ok() != Some(0) {
            return false;
        }
        self.mark_gone("its size is now 0");
        true
    }

    /// The status of a read that failed with `e` at `lba`, logged.
    pub(super) fn read_failed(&self, e: &io::Error, lba: u64) -> StoreStatus {
        self.note_gone(e);
        let path = self.path.display();
        if e.kind() == io::ErrorKind::UnexpectedEof && self.note_gone_if_empty() {
            log::error!("{path}: read error at LBA {lba}: the device is gone");
        } else if e.kind() == io::ErrorKind::UnexpectedEof {
            log::error!(
                "{path}: LBA {lba} is past the end of the {}: it was truncated (or shrunk) under \
                 the handler, and the data past its end is lost; restore it to {} bytes",
                if self.regular { "file" } else { "device" },
                self.info.num_blocks * u64::from(self.info.block_size),
            );
        } else {
            log::error!("{path}: read error at LBA {lba}: {e}");
        }
        StoreStatus::ReadError { lba }
    }

    /// A write to `[start, start+len)` of a regular file that no longer reaches there (it was
    /// truncated under the handler) would grow it: the first LBA of the range past its end, as
    /// a write error. `None` when the range is inside the file, on a block device, or when the
    /// size cannot be read (the write then reports what the medium says).
    pub(super) fn truncated_at(&self, start: u64, len: usize) -> Option<StoreStatus> {
        if !self.regular {
            return None;
        }
        #[cfg(test)]
        tests::FSTATS.with(|n| n.set(n.get() + 1));
        let size = match self.data.metadata() {
            Ok(meta) => meta.len(),
            Err(e) => {
                log::warn!("{}: fstat before a write: {e}", self.path.display());
                return None;
            }
        };
        self.past_end(start, len, size)
    }

    /// A write to `[start, start+len)` of a regular file of `size` bytes (read just before the
    /// write, by the caller) would grow it: the first LBA of the range past its end, as a write
    /// error, logged. The io_uring engine reads the size with IORING_OP_STATX (off the
    /// worker's thread) and calls this on its completion.
    pub(super) fn past_end(&self, start: u64, len: usize, size: u64) -> Option<StoreStatus> {
        if start + len as u64 <= size {
            return None;
        }
        // The block holding the end of the file is cut too (a size not a multiple of blocks).
        let lba = self.lba_of(size).max(self.lba_of(start));
        log::error!(
            "{}: the file has {size} bytes, {} expected: it was truncated under the handler; \
             the write at LBA {lba} would grow it and is refused; restore its size",
            self.path.display(),
            self.info.num_blocks * u64::from(self.info.block_size),
        );
        Some(StoreStatus::WriteError { lba })
    }
}

/// File systems whose stat(2) of an open file is answered from the inode in memory, never
/// by a server or a user-space daemon (linux/magic.h): ext2/3/4, XFS, Btrfs, F2FS, tmpfs,
/// ramfs. Any other (NFS, CIFS, Ceph, 9p, FUSE, overlayfs over any of them...) may make a stat
/// a round trip, which a hung server holds for ever.
const LOCAL_STAT_FILE_SYSTEMS: [(i64, &str); 6] = [
    (0xEF53, "ext2/3/4"),
    (0x5846_5342, "XFS"),
    (0x9123_683E, "Btrfs"),
    (0xF2F5_2010, "F2FS"),
    (0x0102_1994, "tmpfs"),
    (0x8584_58F6, "ramfs"),
];

/// Does the file system holding `fd` answer a stat from memory ([`LOCAL_STAT_FILE_SYSTEMS`])?
/// Then the io_uring engine stats the image on the worker's thread before a write (a fraction
/// of a microsecond); elsewhere with IORING_OP_STATX through the ring, off that thread. A type
/// that cannot be read counts as remote (the safe side).
pub(super) fn stat_is_local(fd: BorrowedFd<'_>, path: &Path) -> bool {
    match super::sys::file_system_magic(fd) {
        Ok(magic) => {
            let local = LOCAL_STAT_FILE_SYSTEMS.iter().find(|(m, _)| *m == magic);
            log::debug!(
                "{}: file system {magic:#x} ({}): the image's size is read before each ring \
                 write {}",
                path.display(),
                local.map_or("not known to answer stat locally", |(_, name)| name),
                if local.is_some() {
                    "on the worker"
                } else {
                    "by IORING_OP_STATX"
                }
            );
            local.is_some()
        }
        Err(e) => {
            log::warn!(
                "{}: fstatfs: {e}; the image's size is read before each ring write by \
                 IORING_OP_STATX",
                path.display()
            );
            false
        }
    }
}

/// A block device's write of the block `lba` (of `block_size` bytes) failed with ENOSPC: is the
/// device out of space (thin provisioning), rather than ending before that block (it shrank
/// under the store)? `device_size` is the device's size now; when it cannot be read, the
/// failure stays a write error, which any medium may report.
pub(super) fn out_of_space(lba: u64, block_size: u32, device_size: impl FnOnce() -> io::Result<u64>) -> bool {
    let block_end = lba.saturating_add(1).saturating_mul(u64::from(block_size));
    match device_size() {
        Ok(size) => size >= block_end,
        Err(e) => {
            log::warn!("cannot read the device's size after ENOSPC at LBA {lba}: {e}");
            false
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::cell::Cell;

    thread_local! {
        /// The fstat calls of [`super::Shared::truncated_at`] made on this thread: the io_uring
        /// engine's submitting thread must make none (a stat there blocks the frontend's
        /// worker on a hung NFS or FUSE server).
        pub(in crate::store::file) static FSTATS: Cell<u64> = const { Cell::new(0) };
    }
}
