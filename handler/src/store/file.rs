//! The file store: a regular file or a block device behind the [`Store`] interface.
//!
//! - **No copy.** Reads and writes go between the medium and the command buffer SCST pinned
//!   (page aligned): the buffer's own address is the I/O buffer, on io_uring or through
//!   pread(2)/pwrite(2) on its pages ([`IoBuffer::pread`]); with O_DIRECT (the default) the
//!   kernel DMAs straight into it. Ops that need memory of their own (WRITE SAME, zeroing,
//!   VERIFY, COMPARE) use a page-aligned scratch buffer per I/O thread.
//! - **Two engines** ([`IoEngine`], `--io-engine`, `io_engine` in the config). *io_uring*
//!   (`uring`): each queue owns a ring, so submitting takes no lock (a queue belongs to one
//!   frontend worker); READ and WRITE go on it (`file/uring.rs` has the details), the other
//!   ops (FLUSH included, see Durability) to the thread pool below. *Threads* (`threads`): every op goes to the pool.
//!   `auto` (the default) probes io_uring when the store opens and falls back to the threads
//!   where the kernel lacks it or refuses it (ENOSYS, or EPERM under
//!   `kernel.io_uring_disabled`), saying why once in the log (a warning, later stores at info
//!   level); `uring` forced where it is unavailable is [`FileStoreError::UringUnavailable`].
//!   A queue whose own ring cannot be set up later (ENOMEM: the locked-memory limit before
//!   Linux 5.12) runs on the threads under `auto`, with a warning, and is refused under
//!   `uring`. [`FileStore::io_engine`] and the dump say what the queues opened so far run:
//!   `uring`, `threads`, or `uring+threads` when some of them fell back
//!   ([`RunningEngine`]; [`FileStore::engine_gauge`] for a report made after the queues open).
//! - **A bounded pool.** The thread engine's queues hand their requests to one shared pool of
//!   `workers` I/O threads through a bounded crossbeam channel, and get completions back
//!   through their own channel plus an eventfd ([`StoreQueue::notify_fd`]) the frontend polls;
//!   a ring signals that same eventfd. No thread per request; one lock only, the flush
//!   sequence's (a leaf taken to join or leave it, `file.flushes`: the threads and the rings
//!   otherwise share only the read-only files and atomics), never held across the I/O. At most `QUEUE_DEPTH` (256) requests per queue, in either engine.
//! - **Durability, exact.** The cache is write-back ([`StoreInfo::volatile_cache`] = true, so
//!   the caching mode page's WCE = 1 is the truth; with WCE = 0 the engine makes every WRITE
//!   FUA, and follows the writes that have no FUA here, WRITE SAME, WRITE ZEROES, EXTENDED
//!   COPY's [`StoreOp::Copy`] and UNMAP where LBPRZ is claimed, with a FLUSH before it
//!   answers GOOD; a MODE SELECT clearing WCE flushes before its GOOD). FLUSH (SYNCHRONIZE
//!   CACHE) is fdatasync(2) on an I/O thread, in both engines. A FUA write goes
//!   through a second fd opened with O_DSYNC (on a ring: RWF_DSYNC on the write), so it is on
//!   stable media when it completes (SBC-3 §5.39: FUA). On a block device with O_DIRECT the
//!   kernel sends such a write as REQ_FUA; a thread's synchronous write then also flushes the
//!   whole device's cache (block/fops.c's `blkdev_write_iter` ends a completed O_DSYNC write
//!   with `generic_write_sync`, 6.1 and mainline), where a ring's asynchronous one does not:
//!   the HIL power-cut logs show one flush per FUA write with the threads engine, none with
//!   io_uring. A cost of the fallback engine, not a durability difference. The fdatasync goes through a third
//!   fd opened for it alone, in both engines: Linux reports a write-back error once per open
//!   file description (errseq, `file->f_wb_err`), so a RWF_DSYNC write on the fd of the
//!   writes would take the EIO of pages written back before it, and a flush on that fd would
//!   then find nothing to report and answer GOOD over lost data. No write syncs the flush's
//!   description, so the error waits there for the next fdatasync. One fdatasync runs at a
//!   time, for the whole store (both engines: FLUSH goes to the I/O threads, not the rings):
//!   Linux reports the error to one of two fdatasyncs racing on a description, which could not
//!   tell whose pages it was of, so one could name too high an LBA and the other answer GOOD
//!   over a lost write. A FLUSH arriving while one runs joins the next, which the thread
//!   running the first starts for all that joined (no thread waits; as Linux's blk-flush and
//!   QEMU do, `Shared::flush_in_turn`). A failed write is
//!   [`StoreStatus::WriteError`] with the first failing LBA, a failed read
//!   [`StoreStatus::ReadError`]; never Good. A failed fdatasync is sticky: Linux may drop the
//!   dirty pages it could not write and report the error once only, so every later FLUSH
//!   fails too (with the lowest LBA written back since the last good flush, after the failure
//!   included: every block below it is durable, so the engine serves a FUA READ of blocks
//!   below it), until the disk is restarted; reporting GOOD would tell the initiator that lost
//!   data is safe (`Shared::flush_with`). An fdatasync failed with ENOSPC or EDQUOT (a file
//!   system or a thin pool out of space when the pages were written back) is
//!   [`StoreStatus::SpaceExhausted`] as a write's would be, and just as sticky: space freed
//!   later does not bring back the pages Linux gave up on. A FUA write failed with an I/O
//!   error is taken for a failed flush too, as sticky, when anything was written back since
//!   the last good flush: on a device without FUA of its own the kernel sends it as the write
//!   and a flush of the device's cache and answers both with one error, and a failed cache
//!   flush is recorded nowhere a later fdatasync would report (`Shared::fua_write_failed`).
//! - **Geometry from the medium.** A file's size is its length (it is created at
//!   `create_size` when absent, the file then its directory fsynced so that its name is as
//!   durable as its blocks, and never truncated nor grown); a block device's is its size
//!   (seek to the end) and its logical block size (sysfs). WRITE SAME writes every block of
//!   its range, a 1-block one included.
//! - **Failures.** A file system or a thin-provisioned device out of space is
//!   [`StoreStatus::SpaceExhausted`] (the engine answers as SBC says for the disk's
//!   provisioning), a failed write otherwise WriteError, a failed or short read ReadError,
//!   each at the first LBA that fails alone; a write to a file truncated under the store is
//!   refused rather than growing it (`file/failure.rs`, shared by the I/O paths).
//! - **One handler per image.** A file is flock'ed exclusively at open, a block device opened
//!   O_EXCL: a second handler gets [`FileStoreError::Locked`] or [`FileStoreError::Busy`]
//!   (`file/lock.rs`). The claim lives as long as anything may still write the image: an I/O
//!   thread left detached at the teardown, or a ring's request the kernel kept past its
//!   queue's drop (leaked with the store's state, so the claim then lasts until the process
//!   ends).
//! - **Deallocation.** On regular files UNMAP and WRITE ZEROES with deallocate punch holes
//!   (reads of a hole return zeroes, so [`StoreInfo::unmapped_reads_zero`] = true: LBPRZ).
//!   Whether the file system can is probed at open, by a punch just past the end of the file
//!   (`punch_works`): one that cannot (ramfs, vfat) is not offered deallocation
//!   ([`StoreInfo::supports_unmap`] false: the disk is served thick, with a warning, and the
//!   dump says so). Thin, it would deallocate nothing for any UNMAP, and a FORMAT UNIT would
//!   leave the old data where LBPRZ promises zeroes. Should a punch still be refused later,
//!   WRITE ZEROES writes zeroes and UNMAP (a hint, SBC-3 §4.7.3.4: the blocks may stay mapped)
//!   does nothing. On a block device deallocation is offered only when
//!   the device discards (sysfs `queue/discard_max_bytes` > 0): UNMAP is BLKDISCARD, WRITE
//!   ZEROES is BLKZEROOUT (BLKDISCARD for WRITE ZEROES with deallocate only when the device
//!   says discarded blocks read as zeroes, `queue/discard_zeroes_data`, which modern kernels
//!   always report 0), and LBPRZ is claimed only in that case. A discard smaller than the
//!   device's granularity frees nothing (dm-thin's blocks, 64 KiB by default), so
//!   `queue/discard_granularity`, in logical blocks rounded up, is
//!   [`StoreInfo::unmap_granularity_blocks`], hence VPD B0h's OPTIMAL UNMAP GRANULARITY (the
//!   engine's 4 KiB, with a warning, where sysfs does not give it; for a file, the engine's).
//!   The ioctls run on the I/O threads like every other request, holding no lock.
//! - **GET LBA STATUS** (SBC-3 §5.7) on regular files: SEEK_DATA/SEEK_HOLE give the extent
//!   from an LBA and whether it is a hole ([`StoreInfo::reports_lba_status`]); a block device
//!   cannot say what it discarded and does not offer it.
//! - **Physical blocks.** A block device's `queue/physical_block_size`, a file's file system
//!   block (st_blksize) become [`StoreInfo::physical_block_size`], hence READ CAPACITY(16)'s
//!   LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT (SBC-3 §5.16.2).

mod failure;
mod lock;
mod sys;
#[cfg(test)]
mod tests;
mod uring;

use super::IoBuffer;
use super::Store;
use super::StoreCompletion;
use super::StoreError;
use super::StoreInfo;
use super::StoreOp;
use super::StoreQueue;
use super::StoreRequest;
use super::StoreStatus;
use crossbeam_channel::Receiver;
use crossbeam_channel::RecvTimeoutError;
use crossbeam_channel::Sender;
use crossbeam_channel::TrySendError;
use scst_accel_dma::PageBuffer;
use scst_accel_hal::locks;
use scst_accel_hal::EventFd;
use std::fs::File;
use std::fs::OpenOptions;
use std::io;
use std::io::Seek;
use std::io::SeekFrom;
use std::os::fd::AsFd;
use std::os::fd::BorrowedFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use std::time::Instant;

/// Default I/O threads.
pub const DEFAULT_WORKERS: usize = 4;
/// Requests one queue may have in flight; beyond, `submit` answers QueueFull.
const QUEUE_DEPTH: usize = 256;
/// Scratch memory of each I/O thread (WRITE SAME, zeroing, VERIFY, COMPARE go by pieces of it).
const SCRATCH: usize = 1 << 20;
/// How often an idle I/O thread looks up from its channel (every wait is bounded).
const IDLE_POLL: Duration = Duration::from_millis(100);

/// The least a pool's close waits for each I/O thread, its deadline spent or not
/// (`Pool::close`): an idle thread ends within it once the channel disconnects.
const JOIN_FLOOR: Duration = Duration::from_millis(20);
/// How long the teardown waits in all: for the I/O threads when the pool closes (one deadline
/// for all of them, each finishing at most its current request), and for a ring's requests
/// plus the pool when a ring queue holds the pool's last reference.
const JOIN_BOUND: Duration = Duration::from_secs(10);
/// How long `abort_all` waits for requests already in a thread's hands.
const ABORT_WAIT: Duration = Duration::from_secs(2);

/// How to open a file store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileStoreConfig {
    /// A regular file or a block device.
    pub path: PathBuf,
    /// Create a regular file of this many bytes when `path` does not exist. An existing file
    /// must already have this size: it is never truncated nor grown. A block device must have
    /// it, when given ([`FileStoreError::DeviceSize`]).
    pub create_size: Option<u64>,
    /// Logical block size of a regular file (default 512). A block device has its own, which
    /// this must be, when given ([`FileStoreError::DeviceBlockSize`]).
    pub block_size: Option<u32>,
    /// O_DIRECT (the default): no page cache between the command buffers and the medium.
    /// `false`: buffered I/O, for file systems that refuse O_DIRECT (tmpfs before Linux 6.6).
    pub direct: bool,
    /// I/O threads of the pool shared by every queue.
    pub workers: usize,
    /// Largest transfer in blocks the store announces.
    pub max_transfer_blocks: u32,
    /// How reads, writes and flushes reach the medium (see the module doc).
    pub io_engine: IoEngine,
}

/// How a file store does its reads, writes and flushes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IoEngine {
    /// io_uring where the kernel offers it, else the thread pool (said once in the log).
    #[default]
    Auto,
    /// io_uring, one ring per queue; opening fails where the kernel does not offer it.
    Uring,
    /// The bounded pool of I/O threads with pread(2)/pwrite(2).
    Threads,
}

impl IoEngine {
    /// The name the command line and the configuration use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Uring => "uring",
            Self::Threads => "threads",
        }
    }

    /// Parse the command line's or the configuration's name.
    ///
    /// # Errors
    /// What the accepted names are.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "auto" => Ok(Self::Auto),
            "uring" | "io_uring" => Ok(Self::Uring),
            "threads" => Ok(Self::Threads),
            _ => Err(format!(
                "unknown I/O engine {text:?}; use \"auto\", \"uring\" or \"threads\""
            )),
        }
    }
}

impl std::fmt::Display for IoEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for IoEngine {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Self::parse(text)
    }
}

impl FileStoreConfig {
    /// O_DIRECT, [`DEFAULT_WORKERS`] threads, 512-byte blocks for a file, 2048-block transfers.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            create_size: None,
            block_size: None,
            direct: true,
            workers: DEFAULT_WORKERS,
            max_transfer_blocks: 2048,
            io_engine: IoEngine::Auto,
        }
    }
}

/// Why a file store did not open: what is wrong and what to do.
#[derive(Debug, thiserror::Error)]
pub enum FileStoreError {
    /// No such file, and no size to create it with.
    #[error(
        "{path}: no such file; give a size (--size, or `size` in the config) to create it, or fix the path"
    )]
    Missing {
        /// The path.
        path: PathBuf,
    },
    /// The file is to be created in a directory that does not exist.
    #[error("{path}: cannot create it, its directory does not exist; create the directory or fix the path")]
    NoDirectory {
        /// The path.
        path: PathBuf,
    },
    /// Neither a regular file nor a block device.
    #[error("{path}: neither a regular file nor a block device; point it at a disk image or /dev/<disk>")]
    NotFileOrDevice {
        /// The path.
        path: PathBuf,
    },
    /// The block size is not one a disk can have.
    #[error("block size {block_size} is not a power of two from 512 to 65536; use 512 or 4096")]
    BlockSize {
        /// The size asked for.
        block_size: u32,
    },
    /// A block size was given for a block device that has another.
    #[error("{path}: the device's logical block size is {device}, not {requested}; leave the block size out for a block device (it is the device's)")]
    DeviceBlockSize {
        /// The path.
        path: PathBuf,
        /// The device's.
        device: u32,
        /// The one asked for.
        requested: u32,
    },
    /// The size is not a whole number of blocks.
    #[error("{path}: size {size} is not a multiple of the block size {block_size}; resize the file to a multiple (truncate -s), or choose a block size that divides it")]
    NotMultiple {
        /// The path.
        path: PathBuf,
        /// Bytes.
        size: u64,
        /// Block size.
        block_size: u32,
    },
    /// Not even one block.
    #[error("{path}: size {size} is smaller than one block of {block_size} bytes; use a larger file")]
    TooSmall {
        /// The path.
        path: PathBuf,
        /// Bytes.
        size: u64,
        /// Block size.
        block_size: u32,
    },
    /// A block device of another size than the one asked for.
    #[error("{path}: the device has {actual} bytes, not the {requested} asked for; leave the size out for a block device (it is the device's), or ask for {actual} bytes")]
    DeviceSize {
        /// The path.
        path: PathBuf,
        /// Its size.
        actual: u64,
        /// The size asked for.
        requested: u64,
    },
    /// An existing file of another size than the one asked for.
    #[error("{path}: the file has {actual} bytes, not the {requested} asked for; it is never truncated nor grown: ask for {actual} bytes (--size, or `size` in the config), or resize the file yourself")]
    SizeMismatch {
        /// The path.
        path: PathBuf,
        /// Its size.
        actual: u64,
        /// The size asked for.
        requested: u64,
    },
    /// O_DIRECT refused: by the file system (EINVAL), or at this block size.
    #[error("{path}: the file system refuses O_DIRECT at {block_size}-byte blocks; use buffered I/O (--buffered, or buffered = true in the config), or a block size of at least the file system's")]
    DirectUnsupported {
        /// The path.
        path: PathBuf,
        /// The block size tried.
        block_size: u32,
        /// The errno.
        #[source]
        source: io::Error,
    },
    /// No permission.
    #[error("{path}: permission denied; run as a user that may read and write it (root for /dev/<disk>), or fix its mode")]
    PermissionDenied {
        /// The path.
        path: PathBuf,
        /// The errno.
        #[source]
        source: io::Error,
    },
    /// The block device is in use (mounted, or held exclusively by another program).
    #[error("{path}: the device is in use (mounted, part of a RAID/LVM, or open exclusively by another process, such as another scst-accel serving it); release it first (find the holder with `fuser -v {path}`, `lsof {path}` or `findmnt --source {path}`)")]
    Busy {
        /// The path.
        path: PathBuf,
        /// The errno.
        #[source]
        source: io::Error,
    },
    /// Another process (or another store of this one) serves the image: it holds the exclusive
    /// lock taken at open, and two handlers on one image would corrupt it.
    #[error("{path}: another process is serving this image (it holds its exclusive lock); stop it, or serve another image (find it with `fuser -v {path}` or `lsof {path}`)")]
    Locked {
        /// The path.
        path: PathBuf,
    },
    /// Another I/O error while opening (EIO: the medium itself).
    #[error("{path}: {what} failed; check the device (dmesg) and the file system")]
    Io {
        /// The path.
        path: PathBuf,
        /// The step that failed.
        what: &'static str,
        /// The errno.
        #[source]
        source: io::Error,
    },
    /// io_uring was asked for and this kernel does not offer it.
    #[error("io_uring is not available: {reason}; use the thread pool (--io-engine threads or auto, io_engine = \"threads\" or \"auto\" in the config), or allow io_uring (sysctl kernel.io_uring_disabled=0)")]
    UringUnavailable {
        /// Why, as the kernel said it.
        reason: String,
    },
    /// Out of memory or threads for the pool.
    #[error("cannot start the file store's I/O threads; lower their number or free memory")]
    Resources {
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl FileStoreError {
    /// An error of the medium or the system (EIO, no resources), rather than of the
    /// configuration: a service manager may retry these.
    pub fn is_io(&self) -> bool {
        matches!(self, Self::Io { .. } | Self::Resources { .. })
    }

    /// Classify an errno of `what` on `path`.
    fn from_io(path: &Path, what: &'static str, source: io::Error) -> Self {
        let path = path.to_owned();
        match source.raw_os_error() {
            Some(libc::EACCES | libc::EPERM | libc::EROFS) => Self::PermissionDenied { path, source },
            Some(libc::EBUSY) => Self::Busy { path, source },
            Some(libc::ENOENT) => Self::Missing { path },
            _ => Self::Io { path, what, source },
        }
    }
}

/// A store over a regular file or a block device.
#[derive(Debug, Clone)]
pub struct FileStore {
    shared: Arc<Shared>,
    pool: Arc<Pool>,
    /// The engine chosen at open: [`IoEngine::Uring`] or [`IoEngine::Threads`], never Auto.
    engine: IoEngine,
    /// What the queues opened so far run: under `auto` a queue whose ring cannot be set up
    /// runs on the threads though `engine` is io_uring.
    queues: EngineGauge,
    /// `uring` was asked for, not `auto`: a queue whose ring cannot be set up is an error,
    /// not a queue on the threads.
    uring_forced: bool,
}

/// The engine a file store's queues run, as the dump and the tools' reports say it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunningEngine {
    /// io_uring: every queue opened so far has its ring (a store with no queue yet whose
    /// engine is io_uring says so too).
    Uring,
    /// The I/O threads: the engine chosen (`threads`, or `auto` without io_uring), or under
    /// `auto` every queue opened so far could not set up its ring.
    Threads,
    /// Under `auto`, some queues run their rings and others, whose ring could not be set up,
    /// the I/O threads.
    UringAndThreads,
}

impl RunningEngine {
    /// The name reports use: "uring", "threads", or "uring+threads".
    pub fn name(self) -> &'static str {
        match self {
            Self::Uring => "uring",
            Self::Threads => "threads",
            Self::UringAndThreads => "uring+threads",
        }
    }
}

impl std::fmt::Display for RunningEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Counts of a file store's queues by the engine they run, read when a report is made
/// ([`FileStore::engine_gauge`]): queues are opened when the workers start, after the store
/// opened, so an engine read at open could not say that a ring was refused. It holds the
/// counts only, neither the image nor the threads, so a report may keep it past the store.
#[derive(Clone, Debug)]
pub struct EngineGauge(Arc<QueueEngines>);

#[derive(Debug)]
struct QueueEngines {
    /// The engine chosen at open (never Auto).
    chosen: IoEngine,
    /// Queues opened with their ring.
    rings: AtomicUsize,
    /// Queues opened on the threads because their ring could not be set up (`auto` only).
    fell_back: AtomicUsize,
}

impl EngineGauge {
    fn new(chosen: IoEngine) -> Self {
        Self(Arc::new(QueueEngines {
            chosen,
            rings: AtomicUsize::new(0),
            fell_back: AtomicUsize::new(0),
        }))
    }

    /// What the queues opened so far run (every queue ever opened counts, closed ones too:
    /// a report says what served the disk).
    pub fn running(&self) -> RunningEngine {
        let q = &self.0;
        if q.chosen != IoEngine::Uring {
            return RunningEngine::Threads;
        }
        match (
            q.rings.load(Ordering::Relaxed),
            q.fell_back.load(Ordering::Relaxed),
        ) {
            (_, 0) => RunningEngine::Uring,
            (0, _) => RunningEngine::Threads,
            _ => RunningEngine::UringAndThreads,
        }
    }
}

/// The first fallback from io_uring to the threads is a warning; later ones (more disks on
/// the same kernel) say the same at info level, so the log says it once.
static FALLBACK_WARNED: AtomicBool = AtomicBool::new(false);

/// Resolve Auto: io_uring when `uring_available` says so, else the threads (logged once).
fn choose_engine(
    wanted: IoEngine,
    path: &Path,
    uring_available: impl FnOnce() -> Result<(), String>,
) -> Result<IoEngine, FileStoreError> {
    match wanted {
        IoEngine::Threads => Ok(IoEngine::Threads),
        IoEngine::Uring => uring_available()
            .map(|()| IoEngine::Uring)
            .map_err(|reason| FileStoreError::UringUnavailable { reason }),
        IoEngine::Auto => match uring_available() {
            Ok(()) => Ok(IoEngine::Uring),
            Err(reason) => {
                let message = format!(
                    "{}: io_uring is not available ({reason}); the file store uses its pool of I/O threads",
                    path.display()
                );
                if FALLBACK_WARNED.swap(true, Ordering::AcqRel) {
                    log::info!("{message}");
                } else {
                    log::warn!("{message}");
                }
                Ok(IoEngine::Threads)
            }
        },
    }
}

/// What every I/O thread reads: the files and the geometry. No lock: the atomics are the only
/// mutable state.
#[derive(Debug)]
struct Shared {
    path: PathBuf,
    info: StoreInfo,
    /// Holds the claim on the image (see `open`); never used for I/O.
    _claim: File,
    /// Reads, write-back writes (and on a ring the FUA ones, with RWF_DSYNC).
    data: File,
    /// Write-through (FUA) writes of the threads: the same file opened with O_DSYNC.
    sync: File,
    /// fdatasync and nothing else (FLUSH, both engines): a write-back error is reported once
    /// per open file description, so no write on this one may take it first (module doc).
    flush: File,
    /// A regular file (hole punching may work) rather than a block device.
    regular: bool,
    /// Opened with O_DIRECT.
    direct: bool,
    /// The file system punches holes (cleared on the first EOPNOTSUPP).
    punch: AtomicBool,
    /// copy_file_range(2) works on this medium (cleared on the first ENOSYS, EOPNOTSUPP,
    /// EXDEV or EINVAL: EXTENDED COPY then copies through the I/O thread's scratch buffer).
    copy_range: AtomicBool,
    /// A block device that discards (cleared on the first EOPNOTSUPP).
    discard: AtomicBool,
    /// A block device whose discarded blocks read as zeroes (sysfs discard_zeroes_data).
    discard_zeroes: bool,
    /// Lowest LBA written back (not FUA) since the last good flush, by a write, a copy or a
    /// WRITE ZEROES however done (a hole, a discard, BLKZEROOUT); `u64::MAX` if none.
    dirty_low: AtomicU64,
    /// The `dirty_low` a running fdatasync took over (`u64::MAX` while none runs): what a
    /// failed FUA write during it may have lost ([`Shared::fua_write_failed`]).
    flushing_low: AtomicU64,
    /// A flush failed: every later flush fails with this LBA (`u64::MAX` while none has).
    flush_failed_lba: AtomicU64,
    /// The failed flush ran out of space (ENOSPC, EDQUOT): later flushes fail alike.
    flush_failed_space: AtomicBool,
    /// One fdatasync at a time, and the FLUSHes waiting for the next (`flush_in_turn`).
    flushes: locks::OrderedMutex<FlushSeq, locks::levels::FileFlushes>,
    /// Writes the io_uring engine sent with RWF_DSYNC (FUA), counted from the rw_flags of the
    /// SQEs it pushed, for the dump and the tests.
    dsync_writes: AtomicU64,
    /// The io_uring engine reads a regular file's size before each write with an
    /// IORING_OP_STATX on the ring instead of an fstat on the worker's thread: set unless the
    /// file system answers a stat from memory (`failure::stat_is_local`). A network or FUSE
    /// file system may make each stat a round trip that a hung server holds for ever, where the
    /// frontend's stuck-in-store detection cannot run; on a local one the fstat costs a
    /// fraction of a microsecond and the STATX a trip through io-wq per write (23-50 % of the
    /// 4 KiB random-write IOPS on ext4 in three alternated runs). Tests may set it.
    stat_on_ring: AtomicBool,
    /// The device is gone: an I/O answered ENODEV or ENXIO ("no such device"), or a block
    /// device's size went to 0 (Linux's mark of a removed disk: reads then end at once and
    /// writes get ENOSPC). Every later I/O would fail the same way, so the store fails
    /// ([`Store::failure`]) and the disk is torn down, instead of answering MEDIUM ERROR for
    /// ever.
    gone: std::sync::OnceLock<String>,
    /// Tests: while set, an I/O thread that takes a job holds it before running it, as if
    /// hung in a system call (at most [`TEST_STALL_BOUND`]).
    #[cfg(test)]
    stall: AtomicBool,
    /// Tests: I/O threads that took a job while `stall` was set.
    #[cfg(test)]
    stalled: AtomicUsize,
}

/// Tests: the longest an I/O thread stalls (`Shared::stall`).
#[cfg(test)]
const TEST_STALL_BOUND: Duration = Duration::from_secs(60);

/// The I/O threads and their request channel.
#[derive(Debug)]
struct Pool {
    jobs: Option<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

/// One request travelling to an I/O thread.
struct Job {
    req: StoreRequest,
    /// The queue's abort epoch when it was submitted: a newer epoch aborts it unstarted.
    epoch: u64,
    queue: Arc<QueueShared>,
}

/// The part of a queue the I/O threads see.
#[derive(Debug)]
struct QueueShared {
    done: Sender<StoreCompletion>,
    notify: EventFd,
    abort_epoch: AtomicU64,
}

impl FileStore {
    /// Open (or create) the file or device of `config` and start its I/O threads.
    ///
    /// # Errors
    /// [`FileStoreError`], saying what to do.
    pub fn open(config: &FileStoreConfig) -> Result<Self, FileStoreError> {
        Self::open_probing(config, uring::available, sys::punch_hole)
    }

    /// [`FileStore::open`], with the io_uring probe and the hole punch that probes a file
    /// ([`punch_works`]) given (tests make them fail).
    fn open_probing(
        config: &FileStoreConfig,
        uring_available: impl FnOnce() -> Result<(), String>,
        punch_hole: impl FnOnce(BorrowedFd<'_>, u64, u64) -> io::Result<()>,
    ) -> Result<Self, FileStoreError> {
        let path = &config.path;
        // First: a forced engine the kernel lacks must not create the file.
        let engine = choose_engine(config.io_engine, path, uring_available)?;
        let meta = match std::fs::metadata(path) {
            Ok(meta) => Some(meta),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(FileStoreError::from_io(path, "stat", e)),
        };
        let block_device = meta.as_ref().is_some_and(|m| m.file_type().is_block_device());
        if meta.as_ref().is_some_and(|m| !m.is_file() && !block_device) {
            return Err(FileStoreError::NotFileOrDevice { path: path.clone() });
        }
        if let Some(bs) = config.block_size {
            if !bs.is_power_of_two() || !(512..=65536).contains(&bs) {
                return Err(FileStoreError::BlockSize { block_size: bs });
            }
        }
        // The claim on the image (flock on a file, O_EXCL on a device) is held by an fd of its
        // own, which no io_uring ring ever registers: a ring's files are released by the kernel
        // asynchronously after the ring is closed or its process killed, and a claim on a
        // registered fd would outlive a SIGKILLed handler long enough to refuse its restart.
        let (claim, data, block_size, size, queue) = if block_device {
            let claim = open_medium(path, false, 0, true)?;
            let data = open_medium(path, config.direct, 0, false)?;
            let queue = device_queue(path, &data)?;
            let block_size = queue.logical_block_size;
            if let Some(requested) = config.block_size.filter(|&b| b != block_size) {
                return Err(FileStoreError::DeviceBlockSize {
                    path: path.clone(),
                    device: block_size,
                    requested,
                });
            }
            let size = (&data)
                .seek(SeekFrom::End(0))
                .map_err(|e| FileStoreError::from_io(path, "seek to the end of the device", e))?;
            if let Some(requested) = config.create_size.filter(|&s| s != size) {
                return Err(FileStoreError::DeviceSize {
                    path: path.clone(),
                    actual: size,
                    requested,
                });
            }
            (claim, data, block_size, size, Some(queue))
        } else {
            let block_size = config.block_size.unwrap_or(512);
            let data = match (meta, config.create_size) {
                (None, None) => return Err(FileStoreError::Missing { path: path.clone() }),
                (None, Some(size)) => create_file(path, size, block_size, config.direct)?,
                (Some(_), _) => open_medium(path, config.direct, 0, false)?,
            };
            let claim = lock::open_and_lock_image(path)?;
            let size = data
                .metadata()
                .map_err(|e| FileStoreError::from_io(path, "stat", e))?
                .len();
            if let Some(requested) = config.create_size.filter(|&s| s != size) {
                return Err(FileStoreError::SizeMismatch {
                    path: path.clone(),
                    actual: size,
                    requested,
                });
            }
            (claim, data, block_size, size, None)
        };
        let bs = u64::from(block_size);
        if size < bs {
            return Err(FileStoreError::TooSmall {
                path: path.clone(),
                size,
                block_size,
            });
        }
        if !size.is_multiple_of(bs) {
            return Err(FileStoreError::NotMultiple {
                path: path.clone(),
                size,
                block_size,
            });
        }
        // The file system's block is the file's physical block: a write of less is a
        // read-modify-write there (st_blksize; 4096 on ext4 and XFS).
        let physical_block_size = match &queue {
            Some(queue) => queue.physical_block_size,
            None => data
                .metadata()
                .map_err(|e| FileStoreError::from_io(path, "stat", e))?
                .blksize()
                .try_into()
                .unwrap_or(block_size),
        };
        let physical_block_size = if physical_block_size > block_size && physical_block_size.is_power_of_two()
        {
            physical_block_size
        } else {
            block_size
        };
        // Where the io_uring engine reads a regular file's size before a write (`stat_on_ring`).
        let stat_on_ring = !block_device && !failure::stat_is_local(data.as_fd(), path);
        // The device under the medium: the block device itself, or the one the file's file
        // system lives on (st_dev); none for tmpfs and other file systems without a device.
        let medium_device = if block_device {
            data.metadata().map(|m| m.rdev())
        } else {
            data.metadata().map(|m| m.dev())
        };
        let rotational = medium_device.ok().and_then(device_rotational);
        let discard = queue.as_ref().is_some_and(|q| q.discard);
        let discard_zeroes = queue.as_ref().is_some_and(|q| q.discard && q.discard_zeroes);
        let punch = !block_device && punch_works(path, &data, size, physical_block_size, punch_hole);
        let sync = open_medium(path, config.direct, libc::O_DSYNC, false)?;
        same_file(path, &data, &sync)?;
        // No I/O goes through it, so no O_DIRECT to refuse.
        let flush = open_medium(path, false, 0, false)?;
        same_file(path, &data, &flush)?;
        let scratch = |n: usize| -> Result<Vec<PageBuffer>, FileStoreError> {
            (0..n)
                .map(|_| {
                    PageBuffer::new(SCRATCH).map_err(|e| FileStoreError::Resources {
                        source: io::Error::other(e),
                    })
                })
                .collect()
        };
        let workers = config.workers.max(1);
        let mut scratches = scratch(workers)?;
        if config.direct {
            probe_direct(path, &data, block_size, size, &scratches[0])?;
        }
        let shared = Arc::new(Shared {
            path: path.clone(),
            info: StoreInfo {
                block_size,
                num_blocks: size / bs,
                physical_block_size,
                max_transfer_blocks: config.max_transfer_blocks.max(1),
                // Deallocation only where it happens: thin over a file system that cannot
                // punch holes, a FORMAT UNIT would leave the old data where LBPRZ promises
                // zeroes, and no UNMAP would free anything.
                supports_unmap: punch || discard,
                // A block device's discard granularity; a file's holes are its file system's
                // blocks, which the engine's default (4 KiB) already is on ext4 and XFS.
                unmap_granularity_blocks: queue.as_ref().and_then(|q| q.unmap_granularity_blocks),
                // A hole reads as zeroes; a discarded device block only if the device says so.
                unmapped_reads_zero: !block_device || discard_zeroes,
                // Holes of a file are known (SEEK_DATA/SEEK_HOLE); a device does not say
                // what it discarded.
                reports_lba_status: !block_device,
                volatile_cache: true,
                rotational,
                device_ids: None,
                // copy_file_range(2) inside the file or device (a reflink or an in-kernel
                // copy), or the I/O thread's scratch buffer where it cannot.
                copy: super::CopyPath::Store,
                // A file has no atomic compare and write: the engine's two steps under its
                // range lock.
                compare_and_write_blocks: 0,
            },
            _claim: claim,
            data,
            sync,
            flush,
            regular: !block_device,
            direct: config.direct,
            punch: AtomicBool::new(punch),
            copy_range: AtomicBool::new(true),
            discard: AtomicBool::new(discard),
            discard_zeroes,
            dirty_low: AtomicU64::new(u64::MAX),
            flushing_low: AtomicU64::new(u64::MAX),
            flush_failed_lba: AtomicU64::new(u64::MAX),
            flush_failed_space: AtomicBool::new(false),
            flushes: locks::OrderedMutex::new(FlushSeq::default()),
            dsync_writes: AtomicU64::new(0),
            stat_on_ring: AtomicBool::new(stat_on_ring),
            gone: std::sync::OnceLock::new(),
            #[cfg(test)]
            stall: AtomicBool::new(false),
            #[cfg(test)]
            stalled: AtomicUsize::new(0),
        });
        let (jobs, rx) = crossbeam_channel::bounded::<Job>(workers * QUEUE_DEPTH);
        let mut threads = Vec::with_capacity(workers);
        for index in 0..workers {
            let rx = rx.clone();
            let shared = Arc::clone(&shared);
            let scratch = scratches.pop().expect("one scratch per thread");
            let spawned = std::thread::Builder::new()
                .name(format!("file-io-{index}"))
                .spawn(move || io_thread(&shared, &rx, &scratch));
            match spawned {
                Ok(handle) => threads.push(handle),
                Err(source) => {
                    // Dropping the pool closes the channel and joins the threads started.
                    drop(Pool {
                        jobs: Some(jobs),
                        threads,
                    });
                    return Err(FileStoreError::Resources { source });
                }
            }
        }
        log::info!(
            "file store {}: {} blocks of {block_size} bytes, {}, {}, {workers} I/O threads",
            path.display(),
            size / bs,
            if config.direct { "O_DIRECT" } else { "buffered" },
            match engine {
                IoEngine::Uring => "io_uring (one ring per queue; the threads take the other ops)",
                _ => "thread pool",
            },
        );
        Ok(Self {
            shared,
            pool: Arc::new(Pool {
                jobs: Some(jobs),
                threads,
            }),
            engine,
            queues: EngineGauge::new(engine),
            uring_forced: config.io_engine == IoEngine::Uring,
        })
    }

    /// What the queues opened so far run ([`EngineGauge::running`]): Auto resolved, and a
    /// queue that fell back to the threads counted as such.
    pub fn io_engine(&self) -> RunningEngine {
        self.queues.running()
    }

    /// A handle that says what the queues run whenever it is asked, the queues opened after
    /// this call included, and that keeps neither the image nor the I/O threads: for reports
    /// made while or after the disk serves.
    pub fn engine_gauge(&self) -> EngineGauge {
        self.queues.clone()
    }

    /// A queue of the thread engine.
    fn thread_queue(&self) -> Result<FileQueue, StoreError> {
        let Some(jobs) = self.pool.jobs.clone() else {
            return Err(StoreError::Device(
                "the file store's I/O threads are stopped".into(),
            ));
        };
        let notify =
            EventFd::new().map_err(|e| StoreError::Device(format!("eventfd for a file store queue: {e}")))?;
        let (done, completions) = crossbeam_channel::unbounded();
        Ok(FileQueue {
            jobs,
            pool: Some(Arc::clone(&self.pool)),
            completions,
            shared: Arc::new(QueueShared {
                done,
                notify,
                abort_epoch: AtomicU64::new(0),
            }),
            in_flight: Arc::new(AtomicUsize::new(0)),
            submitted: 0,
        })
    }

    /// The file or device.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }
}

impl Store for FileStore {
    fn info(&self) -> StoreInfo {
        self.shared.info
    }

    fn failure(&self) -> Option<String> {
        self.shared.gone.get().cloned()
    }

    fn open_queue(&self) -> Result<Box<dyn StoreQueue>, StoreError> {
        let threads = self.thread_queue()?;
        if self.engine != IoEngine::Uring {
            return Ok(Box::new(threads));
        }
        // The queue's own ring; its eventfd is the thread queue's, so one fd says both.
        let kernel_workers = u32::try_from(self.pool.threads.len()).unwrap_or(u32::MAX);
        match uring::UringQueue::new(Arc::clone(&self.shared), threads, kernel_workers) {
            Ok(queue) => {
                self.queues.0.rings.fetch_add(1, Ordering::Relaxed);
                Ok(Box::new(queue))
            }
            Err((e, _)) if self.uring_forced => Err(StoreError::Device(format!(
                "{}: cannot set up an io_uring for a queue: {}; io_engine = \"uring\" was asked \
                 for (\"auto\" would use the I/O threads for this queue)",
                self.shared.path.display(),
                uring::explain(e)
            ))),
            Err((e, threads)) => {
                log::warn!(
                    "{}: cannot set up an io_uring for a queue ({}); this queue uses the I/O threads",
                    self.shared.path.display(),
                    uring::explain(e)
                );
                self.queues.0.fell_back.fetch_add(1, Ordering::Relaxed);
                Ok(Box::new(threads))
            }
        }
    }

    /// The medium, its mode and the durability state; the disk keeps serving after a failed
    /// flush (every later flush fails, see the module doc), so this is where an operator sees
    /// it besides the log.
    fn dump(&self) -> Option<String> {
        let shared = &self.shared;
        let failed = shared.flush_failed_lba.load(Ordering::Acquire);
        let low = shared.dirty_low.load(Ordering::Acquire);
        Some(format!(
            "file store {} ({}, {}, engine {}): {} blocks of {}; {}; {}; {}; {} I/O threads; {} FUA writes with RWF_DSYNC",
            shared.path.display(),
            if shared.regular { "file" } else { "block device" },
            if shared.direct { "O_DIRECT" } else { "buffered" },
            self.io_engine(),
            shared.info.num_blocks,
            shared.info.block_size,
            match (shared.regular, shared.info.supports_unmap) {
                (true, true) => "deallocates by punching holes",
                (true, false) => "the file system cannot punch holes: no deallocation (thick)",
                (false, true) => "deallocates by discarding",
                (false, false) => "the device does not discard: no deallocation (thick)",
            },
            if low == u64::MAX {
                "nothing written back since the last flush".to_owned()
            } else {
                format!("written back since the last flush from LBA {low}")
            },
            if failed == u64::MAX {
                "flushes good".to_owned()
            } else {
                format!(
                    "a flush FAILED: writes from LBA {} on may be lost; every flush fails until restart",
                    failed.min(low)
                )
            },
            self.pool.threads.len(),
            shared.dsync_writes.load(Ordering::Relaxed),
        ))
    }
}

impl Pool {
    /// Close the channel and join the threads, all of them by `deadline`: one bound for the
    /// whole pool, not one per thread (hung threads would add up past the service's stop
    /// timeout), plus at most [`JOIN_FLOOR`] a thread once it has passed (a look that lets an
    /// idle thread woken by the close end). A thread not ended by then is left detached; it
    /// keeps the store's shared state (its files, the image's lock) until its system call
    /// returns.
    ///
    /// What the threads still do: crossbeam hands out the jobs queued before the close, so
    /// each thread takes what is left before it sees the channel closed. Every such job is of
    /// a queue already dropped (each queue holds the pool), and a queue's drop aborts its
    /// queued jobs (`FileQueue`'s `Drop`): the threads answer them Aborted, to nobody, without
    /// running them. So a thread ends after at most the request it was running.
    fn close(&mut self, deadline: Instant) {
        drop(self.jobs.take());
        for handle in self.threads.drain(..) {
            // At least a moment each: an idle thread woken by the disconnect just now is not a
            // hung one, even when a ring's wait spent the deadline already.
            let left = deadline.saturating_duration_since(Instant::now()).max(JOIN_FLOOR);
            if let Err(handle) = locks::join_bounded(handle, left) {
                log::error!(
                    "file store I/O thread {:?} not ended by the teardown's deadline ({JOIN_BOUND:?} \
                     in all): still in a system call; left detached",
                    handle.thread().name()
                );
            }
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.close(Instant::now() + JOIN_BOUND);
    }
}

/// One worker's queue: submits to the shared pool, reaps from its own channel.
struct FileQueue {
    jobs: Sender<Job>,
    /// Keeps the threads alive while the queue lives (`None` once `release_pool` let go).
    pool: Option<Arc<Pool>>,
    completions: Receiver<StoreCompletion>,
    shared: Arc<QueueShared>,
    /// Submitted and not yet reaped (the threads do not touch it: only this queue's owner).
    in_flight: Arc<AtomicUsize>,
    submitted: u64,
}

impl FileQueue {
    /// Abort every request not yet started; returns how many are in flight.
    fn abort_start(&self) -> usize {
        let n = self.in_flight();
        if n > 0 {
            self.shared.abort_epoch.fetch_add(1, Ordering::AcqRel);
        }
        n
    }

    /// The queue is going away: its jobs not yet started are never run (the threads answer
    /// them Aborted, to nobody). Those already in a thread's hands finish.
    fn abandon(&self) {
        self.shared.abort_epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// Let go of the pool; if this was its last reference, close it by `deadline` (a ring
    /// queue's drop shares its own deadline with the pool's joins).
    fn release_pool(&mut self, deadline: Instant) {
        // This queue's own sender first: the channel disconnects only once every sender is
        // gone, and idle threads learn of the close only from that (else each would be waited
        // for until the deadline and left detached as if hung). A plain queue's fields drop in
        // this order by themselves; a ring queue calls this from its `Drop`, with them alive.
        let (closed, _) = crossbeam_channel::bounded(0);
        drop(std::mem::replace(&mut self.jobs, closed));
        if let Some(mut pool) = self.pool.take().and_then(Arc::into_inner) {
            pool.close(deadline);
        }
    }

    /// Have the `n` requests in flight at [`FileQueue::abort_start`] all completed?
    fn abort_settled(&self, n: usize) -> bool {
        self.completions.len() >= n
    }

    /// The eventfd completions signal (the io_uring engine registers it with its ring).
    fn notify(&self) -> &EventFd {
        &self.shared.notify
    }

    /// [`StoreQueue::submit`] without a token (the file store takes no lock): also the io_uring
    /// engine's way to hand a request to the I/O threads.
    pub(super) fn submit_requests(&mut self, batch: &mut Vec<StoreRequest>) -> Result<(), StoreError> {
        let epoch = self.shared.abort_epoch.load(Ordering::Acquire);
        let mut refused: Option<StoreError> = None;
        // Allocates only when the pool refuses part of the batch.
        let mut rest = Vec::new();
        for req in batch.drain(..) {
            if refused.is_some() {
                rest.push(req);
                continue;
            }
            if self.in_flight.load(Ordering::Relaxed) >= QUEUE_DEPTH {
                refused = Some(StoreError::QueueFull {
                    in_flight: QUEUE_DEPTH,
                });
                rest.push(req);
                continue;
            }
            let job = Job {
                req,
                epoch,
                queue: Arc::clone(&self.shared),
            };
            match self.jobs.try_send(job) {
                Ok(()) => {
                    self.in_flight.fetch_add(1, Ordering::Relaxed);
                    self.submitted += 1;
                }
                Err(TrySendError::Full(job)) => {
                    refused = Some(StoreError::QueueFull {
                        in_flight: self.in_flight.load(Ordering::Relaxed),
                    });
                    rest.push(job.req);
                }
                Err(TrySendError::Disconnected(job)) => {
                    refused = Some(StoreError::Device("the file store's I/O threads are gone".into()));
                    rest.push(job.req);
                }
            }
        }
        batch.append(&mut rest);
        refused.map_or(Ok(()), Err)
    }
}

impl StoreQueue for FileQueue {
    fn submit(
        &mut self,
        _token: &mut crate::store::StoreToken<'_>,
        batch: &mut Vec<StoreRequest>,
    ) -> Result<(), StoreError> {
        self.submit_requests(batch)
    }

    fn reap(&mut self, out: &mut Vec<StoreCompletion>) -> usize {
        // Clear first, then drain: a completion sent after the drain signals again, so the fd
        // is readable whenever a completion waits (level-triggered, no lost wake-up).
        self.shared.notify.clear();
        let mut n = 0;
        while let Ok(c) = self.completions.try_recv() {
            out.push(c);
            n += 1;
        }
        self.in_flight.fetch_sub(n, Ordering::Relaxed);
        n
    }

    fn notify_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.shared.notify.as_fd())
    }

    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Requests not yet started complete with [`StoreStatus::Aborted`]; those in a thread's
    /// system call finish it (a pread cannot be taken back) and complete with their outcome.
    /// Waits at most [`ABORT_WAIT`] for them, so the frontend finds them reaped.
    fn abort_all(&mut self) -> usize {
        let n = self.start_abort_all();
        let deadline = std::time::Instant::now() + ABORT_WAIT;
        while !self.abort_settled(n) && std::time::Instant::now() < deadline {
            locks::sleep(Duration::from_millis(1));
        }
        n
    }

    /// As `abort_all`, without the wait: each job keeps its request, and so its buffer, until
    /// a thread answers it (Aborted, unless it was running), so nothing is let go early.
    fn start_abort_all(&mut self) -> usize {
        self.abort_start()
    }

    fn dump(&self) -> Option<String> {
        Some(format!(
            "file store queue: {} in flight, {} completions waiting, {} submitted",
            self.in_flight(),
            self.completions.len(),
            self.submitted
        ))
    }
}

impl Drop for FileQueue {
    /// A dropped queue's requests not yet started do not run: a frontend that drops a queue
    /// (its stop's grace expired) has given up on them, and a write landing afterwards would
    /// change the medium behind its back. Their buffers stay with the jobs until a thread
    /// answers them, as before. The pool, if this was its last reference, closes within
    /// [`JOIN_BOUND`].
    fn drop(&mut self) {
        self.abandon();
    }
}

/// An I/O thread: take a job, run it with no lock held, send the completion, signal the queue.
fn io_thread(shared: &Shared, rx: &Receiver<Job>, scratch: &PageBuffer) {
    let mut compare = Vec::new();
    loop {
        let job = match locks::blocking("file store: wait for a request", || rx.recv_timeout(IDLE_POLL)) {
            Ok(job) => job,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let Job { req, epoch, queue } = job;
        let aborted = epoch < queue.abort_epoch.load(Ordering::Acquire);
        if !aborted && req.op == StoreOp::Flush {
            // Answered by whichever thread runs the fdatasync it joins (perhaps this one).
            let waiter = FlushWaiter {
                tag: req.tag,
                epoch,
                queue,
            };
            drop(req);
            shared.flush_in_turn(waiter, &|| shared.flush.sync_data());
            continue;
        }
        let status = if aborted {
            StoreStatus::Aborted
        } else {
            #[cfg(test)]
            shared.stall_if_asked();
            shared.execute(&req, scratch, &mut compare)
        };
        let tag = req.tag;
        // Let go of the buffer before completing: the worker's reference is then the last, and
        // the buffer goes back to the pool from the worker's thread (its SGV stash).
        drop(req);
        // A queue dropped meanwhile has nobody to tell.
        if queue.done.send(StoreCompletion { tag, status }).is_ok() {
            queue.notify.signal();
        }
    }
}

/// Which fd a write goes through.
#[derive(Clone, Copy)]
enum Through {
    WriteBack,
    Fua,
}

impl Shared {
    /// Tests: hold the job just taken while `stall` is set (bounded), as a hung system call.
    #[cfg(test)]
    fn stall_if_asked(&self) {
        if !self.stall.load(Ordering::Acquire) {
            return;
        }
        self.stalled.fetch_add(1, Ordering::AcqRel);
        let deadline = Instant::now() + TEST_STALL_BOUND;
        while self.stall.load(Ordering::Acquire) && Instant::now() < deadline {
            locks::sleep(Duration::from_millis(2));
        }
    }

    fn fd(&self, through: Through) -> BorrowedFd<'_> {
        match through {
            Through::WriteBack => self.data.as_fd(),
            Through::Fua => self.sync.as_fd(),
        }
    }

    /// Byte offset and length of `blocks` at `lba`, if inside the medium.
    fn range(&self, lba: u64, blocks: u32) -> Option<(u64, usize)> {
        let end = lba.checked_add(u64::from(blocks))?;
        if end > self.info.num_blocks {
            return None;
        }
        let bs = u64::from(self.info.block_size);
        Some((lba * bs, usize::try_from(u64::from(blocks) * bs).ok()?))
    }

    fn lba_of(&self, byte: u64) -> u64 {
        byte / u64::from(self.info.block_size)
    }

    /// The request's buffer, if its op uses one and it is large enough; InvalidRequest if not.
    fn checked_buffer<'r>(&self, req: &'r StoreRequest) -> Result<Option<&'r IoBuffer>, StoreStatus> {
        let needed = req.op.buffer_bytes(self.info.block_size) as usize;
        match (&req.buffer, req.op.uses_buffer()) {
            (Some(b), true) if b.len >= needed && b.offset + needed <= b.buffer.len() => Ok(Some(b)),
            (_, true) => Err(StoreStatus::InvalidRequest),
            (_, false) => Ok(None),
        }
    }

    fn execute(&self, req: &StoreRequest, scratch: &PageBuffer, compare: &mut Vec<u8>) -> StoreStatus {
        let buffer = match self.checked_buffer(req) {
            Ok(buffer) => buffer,
            Err(status) => return status,
        };
        match (&req.op, buffer) {
            (StoreOp::Read { lba, blocks }, Some(buf)) => match self.range(*lba, *blocks) {
                Some((start, len)) => self.read(start, len, |fd, at, done, n| buf.pread(fd, at, done, n)),
                None => StoreStatus::OutOfRange,
            },
            (StoreOp::Write { lba, blocks, fua }, Some(buf)) => match self.range(*lba, *blocks) {
                Some((start, len)) => {
                    let through = if *fua { Through::Fua } else { Through::WriteBack };
                    self.write(start, len, through, |fd, at, done, n| buf.pwrite(fd, at, done, n))
                }
                None => StoreStatus::OutOfRange,
            },
            (StoreOp::WriteSame { lba, blocks }, Some(buf)) => match self.range(*lba, *blocks) {
                Some((start, len)) => self.write_same(start, len, buf, scratch),
                None => StoreStatus::OutOfRange,
            },
            (StoreOp::Compare { lba, blocks }, Some(buf)) => match self.range(*lba, *blocks) {
                Some((start, len)) => self.compare(start, len, buf, scratch, compare),
                None => StoreStatus::OutOfRange,
            },
            (StoreOp::Verify { lba, blocks }, _) => match self.range(*lba, *blocks) {
                Some((start, len)) => self.by_scratch(start, len, scratch, |_, _| None),
                None => StoreStatus::OutOfRange,
            },
            (
                StoreOp::WriteZeroes {
                    lba,
                    blocks,
                    deallocate,
                },
                _,
            ) => match self.range(*lba, *blocks) {
                Some((start, len)) => {
                    // Neither a hole nor the device's zeroes are durable before a flush, and
                    // one that fails part-way may have changed some blocks already: owed to
                    // the next flush from the first attempt on.
                    self.wrote_back(start);
                    // Deallocate on a device only where the blocks then read as zeroes: WRITE
                    // ZEROES must leave zeroes (SBC-3 §5.50), whatever LBPRZ says.
                    let done = (*deallocate && self.punch_hole(start, len as u64))
                        || (*deallocate && self.discard_zeroes && self.discard(start, len as u64))
                        || self.zero_out(start, len as u64);
                    if done {
                        return StoreStatus::Good;
                    }
                    self.write_zeroes(start, len, scratch)
                }
                None => StoreStatus::OutOfRange,
            },
            (StoreOp::Unmap { ranges }, _) => {
                let resolved: Option<Vec<_>> = ranges.iter().map(|&(l, b)| self.range(l, b)).collect();
                let Some(resolved) = resolved else {
                    return StoreStatus::OutOfRange;
                };
                // UNMAP is a hint (SBC-3 §4.7.3.4) and the disk does not claim LBPRZ from it:
                // where no hole can be punched the blocks simply stay mapped. A hole or a
                // discard is not durable before a flush: owed to the next one like a write
                // (a failed flush then names an LBA no higher than it; the engine follows an
                // UNMAP with a flush under WCE 0 where LBPRZ is claimed, `scsi/rw.rs`), from
                // the attempt on: a punch that fails part-way (EIO, ENOSPC splitting an
                // extent) may have deallocated some of the range, and the UNMAP is still GOOD.
                for (start, len) in resolved {
                    self.wrote_back(start);
                    if self.regular {
                        self.punch_hole(start, len as u64);
                    } else {
                        self.discard(start, len as u64);
                    }
                }
                StoreStatus::Good
            }
            (
                StoreOp::Copy {
                    src_lba,
                    dst_lba,
                    blocks,
                },
                _,
            ) => match (self.range(*src_lba, *blocks), self.range(*dst_lba, *blocks)) {
                (Some((src, len)), Some((dst, _))) => self.copy(src, dst, len, scratch),
                _ => StoreStatus::OutOfRange,
            },
            (StoreOp::LbaStatus { lba }, Some(buf)) => match self.lba_status(*lba) {
                Ok(Some((blocks, deallocated))) => {
                    buf.put_lba_status(&super::lba_status_data(*lba, blocks, deallocated));
                    StoreStatus::Good
                }
                Ok(None) => StoreStatus::OutOfRange,
                Err(e) => {
                    log::warn!("{}: SEEK_DATA/SEEK_HOLE failed: {e}", self.path.display());
                    StoreStatus::ReadError { lba: *lba }
                }
            },
            // Buffer ops without a buffer were answered above. FLUSH never comes here:
            // `io_thread` hands it to `flush_in_turn`, which runs one fdatasync at a time.
            _ => StoreStatus::InvalidRequest,
        }
    }

    /// Run `io(fd, file offset, offset in the range, bytes)` until `len` bytes are done,
    /// retrying EINTR and short transfers. On failure: the byte offset in the range where the
    /// failing call started, and its error (EOF inside the range is UnexpectedEof: the file
    /// was truncated under us).
    fn transfer(
        fd: BorrowedFd<'_>,
        start: u64,
        len: usize,
        mut io: impl FnMut(BorrowedFd<'_>, u64, usize, usize) -> io::Result<usize>,
    ) -> Result<(), (usize, io::Error)> {
        let mut done = 0;
        while done < len {
            match io(fd, start + done as u64, done, len - done) {
                Ok(0) => return Err((done, io::Error::from(io::ErrorKind::UnexpectedEof))),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err((done, e)),
            }
        }
        Ok(())
    }

    /// The first block of `[start, start+len)` that fails alone, from the block holding byte
    /// `failed_at`, so the sense data names the failing LBA rather than the first of the
    /// transfer; if every block succeeds on retry, the block where the failure was seen.
    fn locate(
        &self,
        fd: BorrowedFd<'_>,
        start: u64,
        len: usize,
        failed_at: usize,
        mut io: impl FnMut(BorrowedFd<'_>, u64, usize, usize) -> io::Result<usize>,
    ) -> u64 {
        let bs = self.info.block_size as usize;
        let first = failed_at / bs * bs;
        for at in (first..len).step_by(bs) {
            let one = Self::transfer(fd, start + at as u64, bs, |fd, pos, done, n| {
                io(fd, pos, at + done, n)
            });
            if one.is_err() {
                return self.lba_of(start + at as u64);
            }
        }
        self.lba_of(start + first as u64)
    }

    fn read(
        &self,
        start: u64,
        len: usize,
        mut io: impl FnMut(BorrowedFd<'_>, u64, usize, usize) -> io::Result<usize>,
    ) -> StoreStatus {
        let fd = self.data.as_fd();
        match Self::transfer(fd, start, len, &mut io) {
            Ok(()) => StoreStatus::Good,
            Err((at, e)) => {
                if let Some(status) = self.not_a_medium_error(&e, "read") {
                    return status;
                }
                let lba = self.locate(fd, start, len, at, io);
                self.read_failed(&e, lba)
            }
        }
    }

    fn write(
        &self,
        start: u64,
        len: usize,
        through: Through,
        mut io: impl FnMut(BorrowedFd<'_>, u64, usize, usize) -> io::Result<usize>,
    ) -> StoreStatus {
        if let Some(status) = self.truncated_at(start, len) {
            return status;
        }
        let fd = self.fd(through);
        match Self::transfer(fd, start, len, &mut io) {
            Ok(()) => {
                if matches!(through, Through::WriteBack) {
                    self.wrote_back(start);
                }
                StoreStatus::Good
            }
            Err((at, e)) => {
                if matches!(through, Through::WriteBack) {
                    // The blocks before the failure may be in the cache now: the next flush
                    // owes them, and a failed one may have lost them (`read_write_back_failed`).
                    self.wrote_back(start);
                }
                if let Some(status) = self.not_a_medium_error(&e, "write") {
                    return status;
                }
                if matches!(through, Through::Fua) {
                    self.fua_write_failed(&e);
                }
                let lba = self.locate(fd, start, len, at, io);
                self.write_failed(&e, lba)
            }
        }
    }

    /// A FUA write failed with `e`. Where the device has no FUA of its own, the kernel made it
    /// the write and a flush of the device's cache (the block layer's post-flush, or the file
    /// system's `blkdev_issue_flush` under O_DSYNC), and answers both with this one error. A
    /// failed cache flush may have lost every write-back write since the last good flush, and
    /// the kernel records it nowhere a later fdatasync would report (unlike a failed page
    /// write-back, kept in the file's errseq): the next flush would succeed over the loss. The
    /// two causes cannot be told apart here, so the failure is taken for a failed flush, sticky
    /// as [`Shared::flush_with`]'s, whenever such writes exist (`dirty_low`, or the range a
    /// running fdatasync took over); with none, the write's own error loses nothing else and
    /// the disk's flushes stay good. Only an error of the device's I/O can be a failed cache
    /// flush ([`is_device_io_error`]); any other (out of space, a truncated file, a resource
    /// or retry error of the submission: ENOMEM, EAGAIN, ECANCELED, a read-only file system)
    /// is the write's own, which never reached the device.
    pub(super) fn fua_write_failed(&self, e: &io::Error) {
        if !e.raw_os_error().is_some_and(is_device_io_error) {
            return;
        }
        // dirty_low before flushing_low: a flush sets flushing_low (to 0, then to what it
        // took) before it takes dirty_low over, so one of the two reads sees it. What this
        // does not cover: a FUA write failed on the device whose failure no thread has seen
        // yet (unreaped on another queue's ring) while a concurrent fdatasync succeeds; that
        // flush answers GOOD.
        let exposed = self
            .dirty_low
            .load(Ordering::SeqCst)
            .min(self.flushing_low.load(Ordering::SeqCst));
        if exposed == u64::MAX {
            return;
        }
        self.flush_failed_lba.fetch_min(exposed, Ordering::AcqRel);
        log::error!(
            "{}: a FUA write failed ({e}); the device's cache flush may have failed with it: \
             writes from LBA {exposed} on may be lost, every later flush fails until the disk is \
             restarted",
            self.path.display()
        );
    }

    /// A change from byte `start` that is not yet durable completed (a write-back write, a copy,
    /// a hole, a discard, BLKZEROOUT): the next flush must cover it.
    fn wrote_back(&self, start: u64) {
        self.dirty_low.fetch_min(self.lba_of(start), Ordering::AcqRel);
    }

    /// EINVAL means a request O_DIRECT cannot take (a misaligned buffer: a handler bug), not
    /// a bad medium; say so instead of blaming an LBA.
    fn not_a_medium_error(&self, e: &io::Error, what: &str) -> Option<StoreStatus> {
        (e.raw_os_error() == Some(libc::EINVAL)).then(|| {
            log::error!(
                "{}: {what} refused with EINVAL (buffer or offset not aligned for O_DIRECT?)",
                self.path.display()
            );
            StoreStatus::InvalidRequest
        })
    }

    /// WRITE SAME: the first block of the buffer to every block of the range, a 1-block range
    /// included (SBC-3 §5.42; fileio_tgt skips the single block). The block is replicated into
    /// the scratch buffer once, then written a scratch-full at a time.
    fn write_same(&self, start: u64, len: usize, buf: &IoBuffer, scratch: &PageBuffer) -> StoreStatus {
        let bs = self.info.block_size as usize;
        let mut block = vec![0u8; bs];
        buf.read_at(0, &mut block);
        let piece = len.min(SCRATCH / bs * bs);
        for at in (0..piece).step_by(bs) {
            scratch.write_at(at, &block);
        }
        self.by_pieces(start, len, piece, Through::WriteBack, scratch)
    }

    fn write_zeroes(&self, start: u64, len: usize, scratch: &PageBuffer) -> StoreStatus {
        let piece = len.min(SCRATCH);
        scratch.fill(0, piece, 0);
        self.by_pieces(start, len, piece, Through::WriteBack, scratch)
    }

    /// Write the first `piece` bytes of `scratch` over `[start, start+len)`, repeatedly.
    fn by_pieces(
        &self,
        start: u64,
        len: usize,
        piece: usize,
        through: Through,
        scratch: &PageBuffer,
    ) -> StoreStatus {
        let mut done = 0;
        while done < len {
            let n = piece.min(len - done);
            let at = start + done as u64;
            let status = self.write(at, n, through, |fd, pos, off, k| {
                scratch.pwrite_to(fd, pos, off, k)
            });
            if status != StoreStatus::Good {
                return status;
            }
            done += n;
        }
        StoreStatus::Good
    }

    /// Read `[start, start+len)` a scratch-full at a time, handing each piece to `check(offset
    /// in the range, bytes)`; a read error is [`StoreStatus::ReadError`] at the failing LBA.
    fn by_scratch(
        &self,
        start: u64,
        len: usize,
        scratch: &PageBuffer,
        mut check: impl FnMut(usize, usize) -> Option<StoreStatus>,
    ) -> StoreStatus {
        let mut done = 0;
        while done < len {
            let n = SCRATCH.min(len - done);
            let status = self.read(start + done as u64, n, |fd, pos, off, k| {
                scratch.pread_from(fd, pos, off, k)
            });
            if status != StoreStatus::Good {
                return status;
            }
            if let Some(status) = check(done, n) {
                return status;
            }
            done += n;
        }
        StoreStatus::Good
    }

    /// COMPARE: the medium against the buffer; the first difference is a miscompare at its
    /// byte offset in the range (SBC-3 §5.34, the INFORMATION field).
    fn compare(
        &self,
        start: u64,
        len: usize,
        buf: &IoBuffer,
        scratch: &PageBuffer,
        expected: &mut Vec<u8>,
    ) -> StoreStatus {
        let mut medium = vec![0u8; SCRATCH.min(len)];
        self.by_scratch(start, len, scratch, |done, n| {
            expected.resize(n, 0);
            buf.read_at(done, expected);
            scratch.read_at(0, &mut medium[..n]);
            medium[..n]
                .iter()
                .zip(expected.iter())
                .position(|(a, b)| a != b)
                .map(|p| StoreStatus::Miscompare {
                    offset: Some((done + p) as u64),
                })
        })
    }

    /// EXTENDED COPY inside the medium: copy_file_range(2) on the data fd (the file system may
    /// reflink; no data crosses into user space), as a write-back write. Overlapping ranges
    /// (which copy_file_range refuses with EINVAL), and a kernel or file system that cannot
    /// (ENOSYS, EOPNOTSUPP, EXDEV, EINVAL on O_DIRECT), go through the scratch buffer, piece by
    /// piece in memmove order.
    fn copy(&self, src: u64, dst: u64, len: usize, scratch: &PageBuffer) -> StoreStatus {
        if src == dst || len == 0 {
            return StoreStatus::Good;
        }
        if let Some(status) = self.truncated_at(dst, len) {
            return status;
        }
        let overlap = src < dst + len as u64 && dst < src + len as u64;
        if !overlap && self.copy_range.load(Ordering::Relaxed) {
            let fd = self.data.as_fd();
            let mut done = 0usize;
            while done < len {
                match sys::copy_file_range(fd, src + done as u64, dst + done as u64, len - done) {
                    Ok(0) => break,
                    Ok(n) => done += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        if matches!(
                            e.raw_os_error(),
                            Some(libc::ENOSYS | libc::EOPNOTSUPP | libc::EXDEV | libc::EINVAL)
                        ) {
                            log::info!(
                                "{}: copy_file_range refused ({e}); EXTENDED COPY copies through the I/O thread from now on",
                                self.path.display()
                            );
                            self.copy_range.store(false, Ordering::Relaxed);
                        } else {
                            log::warn!(
                                "{}: copy_file_range failed: {e}; copying through the I/O thread",
                                self.path.display()
                            );
                        }
                        break;
                    }
                }
            }
            // What copy_file_range wrote is owed to the next flush, whatever the rest does.
            if done > 0 {
                self.wrote_back(dst);
            }
            if done == len {
                return StoreStatus::Good;
            }
            // What was copied is copied; the rest goes the slow way (same bytes either way).
            return self.copy_by_scratch(src + done as u64, dst + done as u64, len - done, scratch);
        }
        self.copy_by_scratch(src, dst, len, scratch)
    }

    /// The copy through the scratch buffer, a scratch-full at a time, from the end when the
    /// destination overlaps the source from above (memmove).
    fn copy_by_scratch(&self, src: u64, dst: u64, len: usize, scratch: &PageBuffer) -> StoreStatus {
        let backward = dst > src && dst < src + len as u64;
        let mut done = 0usize;
        while done < len {
            let n = SCRATCH.min(len - done);
            let offset = if backward { len - done - n } else { done } as u64;
            let status = self.read(src + offset, n, |fd, pos, off, k| {
                scratch.pread_from(fd, pos, off, k)
            });
            if status != StoreStatus::Good {
                return status;
            }
            let status = self.write(dst + offset, n, Through::WriteBack, |fd, pos, off, k| {
                scratch.pwrite_to(fd, pos, off, k)
            });
            if status != StoreStatus::Good {
                return status;
            }
            done += n;
        }
        StoreStatus::Good
    }

    /// Punch a hole; `false` when it cannot be done here (block device, or the file system
    /// said EOPNOTSUPP once: then never again) or failed, so the caller writes zeroes.
    fn punch_hole(&self, start: u64, len: u64) -> bool {
        if !self.regular || !self.punch.load(Ordering::Relaxed) {
            return false;
        }
        match sys::punch_hole(self.data.as_fd(), start, len) {
            Ok(()) => true,
            Err(e) => {
                if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
                    log::info!(
                        "{}: the file system cannot punch holes; deallocation writes zeroes",
                        self.path.display()
                    );
                    self.punch.store(false, Ordering::Relaxed);
                } else {
                    log::warn!("{}: punching a hole failed: {e}", self.path.display());
                }
                false
            }
        }
    }

    /// BLKDISCARD on a block device; `false` when the device does not discard (then never
    /// again after its first EOPNOTSUPP) or the discard failed. UNMAP ignores that (a hint);
    /// WRITE ZEROES then zeroes the range another way.
    fn discard(&self, start: u64, len: u64) -> bool {
        if self.regular || !self.discard.load(Ordering::Relaxed) {
            return false;
        }
        match sys::discard(self.data.as_fd(), start, len) {
            Ok(()) => true,
            Err(e) => {
                if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
                    log::info!(
                        "{}: the device refuses to discard; UNMAP is ignored from now on",
                        self.path.display()
                    );
                    self.discard.store(false, Ordering::Relaxed);
                } else {
                    log::warn!("{}: discard failed: {e}", self.path.display());
                }
                false
            }
        }
    }

    /// BLKZEROOUT on a block device; `false` on a regular file or when it failed, so the
    /// caller writes the zeroes itself (and reports the exact LBA if that fails too).
    fn zero_out(&self, start: u64, len: u64) -> bool {
        if self.regular {
            return false;
        }
        match sys::zero_out(self.data.as_fd(), start, len) {
            Ok(()) => true,
            Err(e) => {
                log::warn!(
                    "{}: BLKZEROOUT failed: {e}; writing the zeroes instead",
                    self.path.display()
                );
                false
            }
        }
    }

    /// The extent from `lba` with one provisioning status (SBC-3 §5.7.3): its length in blocks
    /// (capped at u32::MAX) and whether it is deallocated (a hole); `None` past the end. A
    /// block with any data in it is mapped (a logical block larger than the file system's
    /// may be partly a hole).
    fn lba_status(&self, lba: u64) -> io::Result<Option<(u32, bool)>> {
        let total = self.info.num_blocks;
        if !self.regular || lba >= total {
            return Ok(None);
        }
        let bs = u64::from(self.info.block_size);
        let fd = self.data.as_fd();
        let start = lba * bs;
        let data_byte = sys::seek(fd, start, true)?;
        let data = data_byte.map_or(total, |d| (d / bs).min(total));
        let (end, deallocated) = if data > lba {
            (data, true)
        } else {
            // Data at `lba` (or in it): mapped up to the next hole, rounded up to a block.
            let from = data_byte.unwrap_or(start).max(start);
            let hole = sys::seek(fd, from, false)?.unwrap_or(total * bs);
            (hole.div_ceil(bs).clamp(lba + 1, total), false)
        };
        Ok(Some((u32::try_from(end - lba).unwrap_or(u32::MAX), deallocated)))
    }

    /// SYNCHRONIZE CACHE, one fdatasync of the flush fd at a time (module doc): `waiter`'s
    /// FLUSH joins the next fdatasync that begins after it arrived, and is answered with its
    /// outcome through its queue.
    ///
    /// Why one at a time: Linux reports a write-back error to one fdatasync of a file
    /// description only (errseq), and two running at once on the flush fd cannot tell whose
    /// pages the error was of: the one that got it would name its own lowest LBA, perhaps above
    /// the lost block the other owed, and the other would answer GOOD over it. With one at a
    /// time the error goes to the fdatasync that follows its write-back, whose flush owes every
    /// write completed before it began and not covered by the one before (Linux's blk-flush and
    /// QEMU's `bdrv_co_flush` serialize their flushes the same way).
    ///
    /// No thread waits: a FLUSH arriving while an fdatasync runs is put on the waiting list and
    /// its I/O thread goes back to the pool; the thread running the fdatasync runs the next one
    /// for every FLUSH on the list (one fdatasync for all of them) and answers them, until the
    /// list is empty. So a FLUSH waits for at most the fdatasync running when it arrived plus
    /// its own, and the lock is held only to join or to take the list, never across the
    /// fdatasync (docs/locking.md, `file.flushes`). `sync` is the fdatasync (the tests make it
    /// fail or wait as a medium would).
    fn flush_in_turn(&self, waiter: FlushWaiter, sync: &dyn Fn() -> io::Result<()>) {
        let mut batch = {
            let mut token = locks::LockToken::root();
            let (mut seq, _) = self.flushes.lock(&mut token);
            if seq.running {
                seq.waiting.push(waiter);
                return;
            }
            seq.running = true;
            vec![waiter]
        };
        // Should this thread unwind (a panic in the fdatasync or an answer), the next FLUSH
        // takes the turn, serving those left waiting, instead of every later one waiting for
        // a turn nobody holds.
        let turn = FlushTurn(self);
        loop {
            // A FLUSH whose queue was aborted while it waited never began: Aborted, and the
            // dirty range stays owed to the next fdatasync (none is run for it).
            let (aborted, live): (Vec<_>, Vec<_>) = batch.drain(..).partition(FlushWaiter::aborted);
            for waiter in aborted {
                waiter.answer(StoreStatus::Aborted);
            }
            if !live.is_empty() {
                let status = self.flush_with(sync);
                for waiter in live {
                    waiter.answer(status);
                }
            }
            let mut token = locks::LockToken::root();
            let (mut seq, _) = self.flushes.lock(&mut token);
            if seq.waiting.is_empty() {
                seq.running = false;
                drop(seq);
                std::mem::forget(turn);
                return;
            }
            batch = std::mem::take(&mut seq.waiting);
        }
    }

    /// One fdatasync for the FLUSHes of a batch of [`Shared::flush_in_turn`] (never two at
    /// once): its outcome, sticky on failure.
    ///
    /// Before the fdatasync: the sticky failure if one failed already (no fdatasync then),
    /// else the lowest LBA written back since the last one is taken (writes completing from
    /// here on are owed to the next). The failure's LBA is the lowest whose write may be lost,
    /// every block below it durable (the [`StoreOp::Flush`] contract, on which the engine
    /// serves a FUA READ of blocks below it): so a later flush's answer is lowered by what was
    /// written back after the failure too, which no fdatasync will make durable any more.
    ///
    /// ENOSPC or EDQUOT (a thin-provisioned device or a file system out of space for pages
    /// written back) is [`StoreStatus::SpaceExhausted`], as for a write; EIO and the rest
    /// [`StoreStatus::WriteError`]. Either stays: Linux clears the dirty state of pages whose
    /// write-back failed (the error is kept in the mapping's errseq, reported once), so a
    /// later fdatasync does not write them again and would succeed over their loss, whatever
    /// space was freed meanwhile. Only a restart (the image reopened) starts afresh.
    fn flush_with(&self, sync: &dyn Fn() -> io::Result<()>) -> StoreStatus {
        let failed = self.flush_failed_lba.load(Ordering::Acquire);
        if failed != u64::MAX {
            let lba = failed.min(self.dirty_low.load(Ordering::Acquire));
            return self.flush_failure(lba);
        }
        // For a FUA write failing meanwhile (`fua_write_failed`): while dirty_low is taken
        // over, what it covered is not known there, so the worst (LBA 0) is assumed; then the
        // range taken.
        self.flushing_low.store(0, Ordering::SeqCst);
        let low = self.dirty_low.swap(u64::MAX, Ordering::SeqCst);
        self.flushing_low.store(low, Ordering::SeqCst);
        let synced = sync();
        self.flushing_low.store(u64::MAX, Ordering::SeqCst);
        let Err(e) = synced else {
            // A FUA write that failed during the fdatasync may have lost what it covers.
            let failed = self.flush_failed_lba.load(Ordering::Acquire);
            if failed != u64::MAX {
                self.dirty_low.fetch_min(low, Ordering::AcqRel);
                return self.flush_failure(failed.min(low));
            }
            return StoreStatus::Good;
        };
        self.note_gone(&e);
        // Nothing written back since the last flush: the error may be of anything, say 0.
        let lba = if low == u64::MAX { 0 } else { low };
        // Recorded before anything else (the log included): a flush that looks from here on
        // finds the failure.
        if matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) {
            self.flush_failed_space.store(true, Ordering::Release);
        }
        self.flush_failed_lba.fetch_min(lba, Ordering::AcqRel);
        self.dirty_low.fetch_min(lba, Ordering::AcqRel);
        let status = self.flush_failure(lba);
        log::error!(
            "{}: fdatasync failed: {e}; writes from LBA {lba} on may be lost, every later flush \
             fails until the disk is restarted{}",
            self.path.display(),
            if matches!(status, StoreStatus::SpaceExhausted { .. }) {
                " (out of space: free space on the file system or extend the thin pool, then restart)"
            } else {
                ""
            }
        );
        status
    }

    /// The answer of a failed flush (sticky) at `lba`: of the kind the failed fdatasync was.
    fn flush_failure(&self, lba: u64) -> StoreStatus {
        if self.flush_failed_space.load(Ordering::Acquire) {
            StoreStatus::SpaceExhausted { lba }
        } else {
            StoreStatus::WriteError { lba }
        }
    }
}

/// The fdatasync turn of one I/O thread ([`Shared::flush_in_turn`]), given back should the
/// thread unwind: dropped only then (the normal end forgets it, having cleared `running` under
/// the lock itself).
struct FlushTurn<'a>(&'a Shared);

impl Drop for FlushTurn<'_> {
    fn drop(&mut self) {
        let mut token = locks::LockToken::root();
        self.0.flushes.lock(&mut token).0.running = false;
        log::error!(
            "{}: an I/O thread unwound during a flush; the next FLUSH serves those waiting",
            self.0.path.display()
        );
    }
}

/// The flushes of one store (`Shared::flush_in_turn`), under the `file.flushes` lock.
#[derive(Debug, Default)]
struct FlushSeq {
    /// An I/O thread runs fdatasyncs; it serves `waiting` before it clears this.
    running: bool,
    /// FLUSHes that arrived while an fdatasync ran: the next one serves them all.
    waiting: Vec<FlushWaiter>,
}

/// A FLUSH waiting for the fdatasync that answers it.
#[derive(Debug)]
struct FlushWaiter {
    tag: u64,
    /// Its queue's abort epoch when it was submitted.
    epoch: u64,
    queue: Arc<QueueShared>,
}

impl FlushWaiter {
    /// Its queue was aborted since it was submitted.
    fn aborted(&self) -> bool {
        self.epoch < self.queue.abort_epoch.load(Ordering::Acquire)
    }

    /// Complete it with `status` (a queue dropped meanwhile has nobody to tell).
    fn answer(self, status: StoreStatus) {
        if self
            .queue
            .done
            .send(StoreCompletion {
                tag: self.tag,
                status,
            })
            .is_ok()
        {
            self.queue.notify.signal();
        }
    }
}

/// Whether holes can be punched in the regular file `data` (`size` bytes, `block` its file
/// system's block), found once at open by punching `block` bytes just past its end with
/// KEEP_SIZE: no byte the file holds is deallocated and its size stays, while a file system
/// that cannot punch refuses that as any other (EOPNOTSUPP: it checks the mode before the range;
/// ramfs, vfat). Anything but success is a no, with a warning: the disk is then served thick
/// (UNMAP not offered, WRITE ZEROES writes zeroes) rather than thin with nothing deallocated,
/// where a FORMAT UNIT would leave the old data though LBPRZ promises zeroes. `punch_hole` is
/// [`sys::punch_hole`] (tests give another).
fn punch_works(
    path: &Path,
    data: &File,
    size: u64,
    block: u32,
    punch_hole: impl FnOnce(BorrowedFd<'_>, u64, u64) -> io::Result<()>,
) -> bool {
    match punch_hole(data.as_fd(), size, u64::from(block)) {
        Ok(()) => true,
        Err(e) => {
            log::warn!(
                "{}: cannot punch holes in it ({e}): no deallocation offered, so a disk with \
                 thin_provisioning is served thick, and WRITE ZEROES writes zeroes; put the \
                 image on a file system that punches holes (ext4, XFS, btrfs, tmpfs) for thin \
                 provisioning",
                path.display()
            );
            false
        }
    }
}

/// Open the medium read-write, with O_DIRECT when `direct`, plus `flags`; a block device
/// exclusively (O_EXCL: the kernel refuses a mounted device).
fn open_medium(
    path: &Path,
    direct: bool,
    flags: libc::c_int,
    exclusive: bool,
) -> Result<File, FileStoreError> {
    let mut flags = flags | libc::O_CLOEXEC;
    if direct {
        flags |= libc::O_DIRECT;
    }
    if exclusive {
        flags |= libc::O_EXCL;
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(flags)
        .open(path)
        .map_err(|e| direct_refused(path, e, 0).unwrap_or_else(|e| FileStoreError::from_io(path, "open", e)))
}

/// EINVAL with O_DIRECT is the file system refusing it.
fn direct_refused(path: &Path, e: io::Error, block_size: u32) -> Result<FileStoreError, io::Error> {
    if e.raw_os_error() == Some(libc::EINVAL) {
        return Ok(FileStoreError::DirectUnsupported {
            path: path.to_owned(),
            block_size,
            source: e,
        });
    }
    Err(e)
}

/// Create a sparse file of `size` bytes (checked first: nothing is created for a bad size).
fn create_file(path: &Path, size: u64, block_size: u32, direct: bool) -> Result<File, FileStoreError> {
    create_file_syncing(path, size, block_size, direct, sync_directory)
}

/// [`create_file`] with the directory's fsync given (the tests see it called, or make it fail).
fn create_file_syncing(
    path: &Path,
    size: u64,
    block_size: u32,
    direct: bool,
    sync_dir: impl FnOnce(&Path) -> io::Result<()>,
) -> Result<File, FileStoreError> {
    let bs = u64::from(block_size);
    if size < bs {
        return Err(FileStoreError::TooSmall {
            path: path.to_owned(),
            size,
            block_size,
        });
    }
    if !size.is_multiple_of(bs) {
        return Err(FileStoreError::NotMultiple {
            path: path.to_owned(),
            size,
            block_size,
        });
    }
    let created = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(path);
    match created {
        Ok(file) => {
            file.set_len(size).map_err(|e| {
                let _ = std::fs::remove_file(path);
                FileStoreError::from_io(path, "set the new file's size", e)
            })?;
            file.sync_all()
                .map_err(|e| FileStoreError::from_io(path, "sync the new file", e))?;
            // fsync(2) on a file does not make the directory entry naming it durable: without
            // the directory's own fsync a crash could lose the new image's name though its
            // size and blocks were synced, and the disk would come back "missing" after the
            // initiator had written to it. The file stays if this fails (it was created, and
            // a restart opens it as an existing image of the right size).
            let dir = directory_of(path);
            sync_dir(dir)
                .map_err(|e| FileStoreError::from_io(dir, "sync the directory of the new file", e))?;
            log::info!("{}: created, {size} bytes", path.display());
        }
        // Created by someone else meanwhile: open it as an existing file (its size is checked).
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(FileStoreError::NoDirectory {
                path: path.to_owned(),
            })
        }
        Err(e) => return Err(FileStoreError::from_io(path, "create", e)),
    }
    open_medium(path, direct, 0, false)
}

/// The directory holding `path` (`.` for a bare file name).
/// Whether `errno` is what Linux returns for a failed I/O of the device (`blk_status_to_errno`:
/// BLK_STS_IOERR EIO, MEDIUM ENODATA, TARGET EREMOTEIO, NEXUS EBADE, TRANSPORT ENOLINK,
/// PROTECTION EILSEQ, TIMEOUT ETIMEDOUT; a device gone ENXIO or ENODEV): the failures a FUA
/// write's cache flush may have shared. A write refused before it reached the device (ENOMEM,
/// EAGAIN, EINTR, ECANCELED, EBUSY, EROFS, EPERM, EINVAL...) is none of them.
fn is_device_io_error(errno: i32) -> bool {
    matches!(
        errno,
        libc::EIO
            | libc::ENODATA
            | libc::EREMOTEIO
            | libc::EBADE
            | libc::ENOLINK
            | libc::EILSEQ
            | libc::ETIMEDOUT
            | libc::ENXIO
            | libc::ENODEV
    )
}

fn directory_of(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// fsync the directory `dir` (opened read-only: fsync needs no write access on a directory).
fn sync_directory(dir: &Path) -> io::Result<()> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)?
        .sync_all()
}

/// Two opens must be of one file (a rename between them would split reads and FUA writes, or
/// writes and flushes).
fn same_file(path: &Path, a: &File, b: &File) -> Result<(), FileStoreError> {
    let id = |f: &File| f.metadata().map(|m| (m.dev(), m.ino(), m.rdev()));
    let (a, b) = (
        id(a).map_err(|e| FileStoreError::from_io(path, "stat", e))?,
        id(b).map_err(|e| FileStoreError::from_io(path, "stat", e))?,
    );
    if a != b {
        return Err(FileStoreError::Io {
            path: path.to_owned(),
            what: "open (the path changed to another file while it was opened twice)",
            source: io::Error::other("path replaced"),
        });
    }
    Ok(())
}

/// Some file systems accept O_DIRECT at open and refuse the first transfer (EINVAL), or take
/// it only at their own block size: read one block (the second when there is one, to test the
/// alignment of the block size too) and say what to do rather than fail every command.
fn probe_direct(
    path: &Path,
    file: &File,
    block_size: u32,
    size: u64,
    scratch: &PageBuffer,
) -> Result<(), FileStoreError> {
    let bs = u64::from(block_size);
    let at = if size >= 2 * bs { bs } else { 0 };
    match scratch.pread_from(file.as_fd(), at, 0, block_size as usize) {
        Ok(_) => Ok(()),
        Err(e) => Err(direct_refused(path, e, block_size)
            .unwrap_or_else(|e| FileStoreError::from_io(path, "the first O_DIRECT read", e))),
    }
}

/// Does the block device `dev` (major:minor) spin? sysfs `queue/rotational` (a partition has
/// no queue of its own and uses its disk's, one directory up); `None` when sysfs has no such
/// device (tmpfs, overlay and network file systems have anonymous device numbers).
fn device_rotational(dev: u64) -> Option<bool> {
    let base = PathBuf::from(format!(
        "/sys/dev/block/{}:{}",
        libc::major(dev),
        libc::minor(dev)
    ));
    [base.join("queue/rotational"), base.join("../queue/rotational")]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .and_then(|text| match text.trim() {
            "0" => Some(false),
            "1" => Some(true),
            _ => None,
        })
}

/// What sysfs says about a block device's request queue.
#[derive(Clone, Copy, Debug)]
struct DeviceQueue {
    logical_block_size: u32,
    /// `physical_block_size`, or the logical size when absent.
    physical_block_size: u32,
    /// `discard_max_bytes` > 0: the device takes BLKDISCARD.
    discard: bool,
    /// `discard_zeroes_data` = 1 (absent on kernels since 6.x, always 0 since 4.12).
    discard_zeroes: bool,
    /// `discard_granularity` in logical blocks, rounded up, at least 1, on a device that
    /// discards; `None` when it does not, or sysfs does not say (logged).
    unmap_granularity_blocks: Option<u32>,
}

/// A block device's queue limits, from sysfs (`/sys/dev/block/MAJ:MIN/queue`; a partition has
/// no queue of its own and uses its disk's, one directory up).
fn device_queue(path: &Path, file: &File) -> Result<DeviceQueue, FileStoreError> {
    let rdev = file
        .metadata()
        .map_err(|e| FileStoreError::from_io(path, "stat", e))?
        .rdev();
    queue_limits(Path::new("/sys"), path, libc::major(rdev), libc::minor(rdev))
}

/// [`device_queue`] of device `major:minor` under the sysfs mounted at `sys` (tests give a
/// directory of their own).
fn queue_limits(sys: &Path, path: &Path, major: u32, minor: u32) -> Result<DeviceQueue, FileStoreError> {
    let base = sys.join(format!("dev/block/{major}:{minor}"));
    let read = |name: &str| -> Option<u64> {
        [base.join("queue").join(name), base.join("../queue").join(name)]
            .iter()
            .find_map(|p| std::fs::read_to_string(p).ok())
            .and_then(|text| text.trim().parse().ok())
    };
    let logical = read("logical_block_size")
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| FileStoreError::Io {
            path: path.to_owned(),
            what: "reading the logical block size from /sys/dev/block (is sysfs mounted?)",
            source: io::Error::from(io::ErrorKind::NotFound),
        })?;
    if !logical.is_power_of_two() || !(512..=65536).contains(&logical) {
        return Err(FileStoreError::BlockSize { block_size: logical });
    }
    let physical = read("physical_block_size")
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(logical);
    let discard = read("discard_max_bytes").is_some_and(|n| n > 0);
    let discard_zeroes = read("discard_zeroes_data") == Some(1);
    let unmap_granularity_blocks = if discard {
        match read("discard_granularity").filter(|&bytes| bytes > 0) {
            // Rounded up: a discard of less than the granularity frees nothing.
            Some(bytes) => Some(
                u32::try_from(bytes.div_ceil(u64::from(logical)))
                    .unwrap_or(u32::MAX)
                    .max(1),
            ),
            None => {
                log::warn!(
                    "{}: sysfs gives no discard granularity ({}/queue/discard_granularity absent, \
                     unreadable or 0); UNMAP advertises the engine's default granularity (4 KiB), \
                     and smaller discards than the device's may free nothing",
                    path.display(),
                    base.display()
                );
                None
            }
        }
    } else {
        None
    };
    log::info!(
        "{}: logical block size {logical}, physical {physical}, discard {}{}",
        path.display(),
        match unmap_granularity_blocks {
            Some(blocks) => format!("yes, by {blocks} blocks"),
            None if discard => "yes".to_owned(),
            None => "no".to_owned(),
        },
        if discard_zeroes {
            " (discarded blocks read as zeroes)"
        } else {
            ""
        },
    );
    Ok(DeviceQueue {
        logical_block_size: logical,
        physical_block_size: physical,
        discard,
        discard_zeroes,
        unmap_granularity_blocks,
    })
}
