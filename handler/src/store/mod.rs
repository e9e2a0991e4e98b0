//! The store interface between the SCSI engine and storage (issue 2 §5).
//!
//! Asynchronous and queue-per-thread, in SPDK's model: each frontend worker opens its own
//! [`StoreQueue`], submits batches of tagged requests (one doorbell per batch on hardware) and
//! reaps completions, waiting on [`StoreQueue::notify_fd`] together with the scst_user fd.
//! Requests carry the command's buffer itself (host address and, on DMA-capable stores, IOVA),
//! so data moves between the SCST-pinned buffer and the medium without a copy in the handler.
//! The RAM store ([`ram::RamStore`]) implements it, the accelerator queue driver
//! ([`accel::AccelStore`]) and the file and block-device store ([`file::FileStore`]).

pub use crate::heartbeat::Heartbeat;
use scst_accel_hal::locks::levels::Root;
use scst_accel_hal::locks::LockToken;
use std::fmt;
use std::os::fd::BorrowedFd;
use std::sync::Arc;

pub mod accel;
pub mod buffer;
pub mod file;
pub mod null;
pub mod ram;

pub use buffer::CmdBuffer;
pub use scst_accel_boards::engine::DeviceIds;

/// What a store request does. LBAs and counts are in logical blocks of [`StoreInfo::block_size`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreOp {
    /// Medium → buffer.
    Read { lba: u64, blocks: u32 },
    /// Buffer → medium; `fua` forces it to stable media before completion.
    Write { lba: u64, blocks: u32, fua: bool },
    /// Make every completed write stable. A flush that leaves writes possibly lost ends
    /// [`StoreStatus::WriteError`] with `lba` the lowest block whose write may be lost: every
    /// block below it is on the medium (the engine serves a FUA READ of blocks below it,
    /// `scsi/rw.rs`), so a store that cannot tell says 0.
    Flush,
    /// Write the first block of the buffer to every block of the range (WRITE SAME).
    WriteSame { lba: u64, blocks: u32 },
    /// Zero the range; with `deallocate` the store may unmap it (reads then return zeroes).
    WriteZeroes { lba: u64, blocks: u32, deallocate: bool },
    /// Deallocate ranges (UNMAP); each range is (lba, blocks).
    Unmap { ranges: Box<[(u64, u32)]> },
    /// Check the range is readable (VERIFY with BYTCHK 0).
    Verify { lba: u64, blocks: u32 },
    /// Compare the buffer against the medium (VERIFY / WRITE AND VERIFY with BYTCHK 1).
    Compare { lba: u64, blocks: u32 },
    /// GET LBA STATUS (SBC-3 §5.7): write the parameter data for the extent starting at `lba`
    /// (one descriptor, [`lba_status_data`]) to the buffer, truncated to the buffer's length.
    /// Only sent to stores with [`StoreInfo::reports_lba_status`].
    LbaStatus { lba: u64 },
    /// Copy `blocks` blocks from `src_lba` to `dst_lba` inside the medium: an EXTENDED COPY
    /// segment SCST's copy manager hands over in EXT_COPY_REMAP (`docs/xcopy.md`). No data
    /// moves through a command buffer. The ranges may overlap: the result is that of reading
    /// the whole source first (memmove). Only sent to stores whose [`StoreInfo::copy`] is not
    /// [`CopyPath::None`]; [`StoreStatus::ReadError`] / [`StoreStatus::WriteError`] name the
    /// source / destination LBA that failed.
    Copy { src_lba: u64, dst_lba: u64, blocks: u32 },
    /// COMPARE AND WRITE in one atomic step of the device: compare the buffer's first
    /// `blocks` blocks with the medium and, only if equal, write its next `blocks` blocks
    /// there (NVMe's fused Compare and Write). Only sent to stores whose
    /// [`StoreInfo::compare_and_write_blocks`] is at least `blocks`; a mismatch is
    /// [`StoreStatus::Miscompare`] with the offset of the first differing byte, nothing
    /// written.
    CompareAndWrite { lba: u64, blocks: u32, fua: bool },
}

/// Where a store performs [`StoreOp::Copy`], which says which path an EXTENDED COPY segment
/// takes on this store (`docs/xcopy.md` lists it per board).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyPath {
    /// The store cannot copy: the handler gives the segment back to SCST's copy manager as a
    /// leftover, which copies it with READ(16) and WRITE(16) through the handler.
    None,
    /// The handler copies inside the store (memmove on RAM, copy_file_range on a file): the
    /// data never crosses SCST's buffers nor the kernel boundary.
    Store,
    /// The device copies (an SCA-1 copy descriptor, the NVMe Copy command): the data does not
    /// cross the host's memory bus at all.
    Device,
}

impl StoreOp {
    /// Does this op read from or write into the request's buffer?
    pub fn uses_buffer(&self) -> bool {
        matches!(
            self,
            StoreOp::Read { .. }
                | StoreOp::Write { .. }
                | StoreOp::WriteSame { .. }
                | StoreOp::Compare { .. }
                | StoreOp::CompareAndWrite { .. }
                | StoreOp::LbaStatus { .. }
        )
    }

    /// Does the op take the command's Data-Out from its buffer (to the medium, or to compare
    /// with it)? Such a buffer must hold all the Data-Out before the request is submitted.
    pub fn takes_data_out(&self) -> bool {
        matches!(
            self,
            StoreOp::Write { .. }
                | StoreOp::WriteSame { .. }
                | StoreOp::Compare { .. }
                | StoreOp::CompareAndWrite { .. }
        )
    }

    /// Does the op change what the medium holds? (An aborted one must finish before it is
    /// answered: until then its blocks may still change.)
    pub fn changes_medium(&self) -> bool {
        matches!(
            self,
            StoreOp::Write { .. }
                | StoreOp::WriteSame { .. }
                | StoreOp::WriteZeroes { .. }
                | StoreOp::Unmap { .. }
                | StoreOp::Copy { .. }
                | StoreOp::CompareAndWrite { .. }
        )
    }

    /// Bytes of buffer the op needs, for a store with `block_size`.
    pub fn buffer_bytes(&self, block_size: u32) -> u64 {
        match self {
            StoreOp::Read { blocks, .. }
            | StoreOp::Write { blocks, .. }
            | StoreOp::Compare { blocks, .. } => u64::from(*blocks) * u64::from(block_size),
            StoreOp::WriteSame { .. } => u64::from(block_size),
            StoreOp::CompareAndWrite { blocks, .. } => 2 * u64::from(*blocks) * u64::from(block_size),
            _ => 0,
        }
    }
}

/// A command's data: a window of the buffer SCST pinned for it, owned by the handler.
#[derive(Clone, Debug)]
pub struct IoBuffer {
    /// The buffer (kept alive, and out of its pool, while the request is in flight).
    pub buffer: Arc<CmdBuffer>,
    /// Where the command's data starts inside it.
    pub offset: usize,
    /// Bytes of command data.
    pub len: usize,
}

impl IoBuffer {
    /// The whole of `buffer`'s first `len` bytes.
    pub fn new(buffer: Arc<CmdBuffer>, len: usize) -> Self {
        let len = len.min(buffer.len());
        Self {
            buffer,
            offset: 0,
            len,
        }
    }

    /// Device address of the data (buffer IOVA + offset), when the buffer is DMA-mapped.
    pub fn iova(&self) -> Option<u64> {
        self.buffer.iova().map(|iova| iova + self.offset as u64)
    }

    /// Copy out of the data window.
    ///
    /// # Panics
    /// If the range is outside the buffer.
    pub fn read_at(&self, offset: usize, out: &mut [u8]) {
        self.buffer.pages().read_at(self.offset + offset, out)
    }

    /// Copy into the data window.
    ///
    /// # Panics
    /// If the range is outside the buffer.
    pub fn write_at(&self, offset: usize, data: &[u8]) {
        self.buffer.pages().write_at(self.offset + offset, data)
    }

    /// One pread(2) from `fd` at `file_offset` straight into the data window at `offset`
    /// (no copy in the handler; see [`scst_accel_dma::PageBuffer::pread_from`]).
    ///
    /// # Errors
    /// The errno of pread(2).
    ///
    /// # Panics
    /// If the range is outside the buffer.
    pub fn pread(
        &self,
        fd: BorrowedFd<'_>,
        file_offset: u64,
        offset: usize,
        len: usize,
    ) -> std::io::Result<usize> {
        self.buffer
            .pages()
            .pread_from(fd, file_offset, self.offset + offset, len)
    }

    /// One pwrite(2) of the data window at `offset` to `fd` at `file_offset`.
    ///
    /// # Errors
    /// The errno of pwrite(2).
    ///
    /// # Panics
    /// If the range is outside the buffer.
    pub fn pwrite(
        &self,
        fd: BorrowedFd<'_>,
        file_offset: u64,
        offset: usize,
        len: usize,
    ) -> std::io::Result<usize> {
        self.buffer
            .pages()
            .pwrite_to(fd, file_offset, self.offset + offset, len)
    }

    /// Fill part of the data window.
    ///
    /// # Panics
    /// If the range is outside the buffer.
    pub fn fill(&self, offset: usize, len: usize, byte: u8) {
        self.buffer.pages().fill(self.offset + offset, len, byte)
    }
}

/// One request.
#[derive(Clone, Debug)]
pub struct StoreRequest {
    /// Caller's tag, returned in the completion.
    pub tag: u64,
    /// The operation.
    pub op: StoreOp,
    /// The buffer, for ops that [`StoreOp::uses_buffer`].
    pub buffer: Option<IoBuffer>,
}

/// How a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreStatus {
    /// Done.
    Good,
    /// Compare found a difference at this byte offset of the range (`None`: the device
    /// found one without saying where, and it could not be found again).
    Miscompare { offset: Option<u64> },
    /// Unrecovered read error at this LBA.
    ReadError { lba: u64 },
    /// Write error at this LBA.
    WriteError { lba: u64 },
    /// The medium has no space left to store this LBA (a sparse image on a full file system:
    /// ENOSPC, EDQUOT). The engine reports it as SBC says for the disk's provisioning: DATA
    /// PROTECT / SPACE ALLOCATION FAILED WRITE PROTECT on a thin disk, a write error on a
    /// fully provisioned one.
    SpaceExhausted { lba: u64 },
    /// The range is outside the medium.
    OutOfRange,
    /// The request itself was malformed (buffer missing or too small).
    InvalidRequest,
    /// The device failed (hardware error).
    DeviceError,
    /// Aborted (queue stopped, reset, or the device asked for the command again): retryable.
    Aborted,
    /// The medium is not ready yet (NVMe Namespace Not Ready): NOT READY, retryable.
    NotReady,
    /// The medium is being formatted: NOT READY / FORMAT IN PROGRESS.
    FormatInProgress,
    /// The device refused a field of the request as the command gave it.
    InvalidField,
    /// Another host's reservation excludes the access: RESERVATION CONFLICT status.
    ReservationConflict,
    /// The medium refuses the access: DATA PROTECT.
    AccessDenied,
    /// The medium is write protected: DATA PROTECT / WRITE PROTECTED.
    WriteProtected,
}

impl StoreStatus {
    /// The block a failure names (the sense data's INFORMATION), if it names one.
    pub fn lba(self) -> Option<u64> {
        match self {
            Self::ReadError { lba } | Self::WriteError { lba } | Self::SpaceExhausted { lba } => Some(lba),
            _ => None,
        }
    }

    /// Of the outcomes of two pieces of one request (a split at the device's limits, in any
    /// completion order), the one that answers the request: a failure over success; of two
    /// failures, one that names no block (it claims none of the request done), else the one
    /// that names the lower block. An initiator takes every block below INFORMATION as
    /// transferred (Linux's `sd_completed_bytes`, for a WRITE too), so answering with a higher
    /// piece's failure would report a lower failed piece's blocks written.
    #[must_use]
    pub fn merge_piece(self, other: Self) -> Self {
        match (self, other) {
            (Self::Good, other) => other,
            (kept, Self::Good) => kept,
            (kept, other) => match (kept.lba(), other.lba()) {
                (Some(a), Some(b)) if b < a => other,
                (Some(_), None) => other,
                _ => kept,
            },
        }
    }
}

#[cfg(test)]
mod status_tests {
    use super::StoreStatus;

    #[test]
    fn the_pieces_of_a_request_answer_with_their_first_failed_block() {
        let read = |lba| StoreStatus::ReadError { lba };
        let write = |lba| StoreStatus::WriteError { lba };
        let good = StoreStatus::Good;
        assert_eq!(good.merge_piece(good), good);
        assert_eq!(good.merge_piece(write(9)), write(9));
        assert_eq!(write(9).merge_piece(good), write(9));
        // The higher piece failed first: the lower one's failure answers, in either order.
        assert_eq!(write(4096).merge_piece(write(7)), write(7));
        assert_eq!(write(7).merge_piece(write(4096)), write(7));
        assert_eq!(
            read(300).merge_piece(StoreStatus::SpaceExhausted { lba: 20 }),
            StoreStatus::SpaceExhausted { lba: 20 }
        );
        // A failure that names no block claims nothing done: it wins over one that does.
        assert_eq!(
            write(4096).merge_piece(StoreStatus::Aborted),
            StoreStatus::Aborted
        );
        assert_eq!(StoreStatus::Aborted.merge_piece(write(7)), StoreStatus::Aborted);
        assert_eq!(
            StoreStatus::DeviceError.merge_piece(StoreStatus::Aborted),
            StoreStatus::DeviceError
        );
    }
}

/// A completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreCompletion {
    /// The request's tag.
    pub tag: u64,
    /// Outcome.
    pub status: StoreStatus,
}

/// What a store offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreInfo {
    /// Logical block size in bytes.
    pub block_size: u32,
    /// Capacity in blocks.
    pub num_blocks: u64,
    /// Physical block size in bytes: a power-of-two multiple of `block_size` (equal to it when
    /// the medium says nothing better). READ CAPACITY(16) reports the ratio as LOGICAL BLOCKS
    /// PER PHYSICAL BLOCK EXPONENT (SBC-3 §5.16.2), so initiators align their writes to it.
    pub physical_block_size: u32,
    /// Largest single transfer in blocks.
    pub max_transfer_blocks: u32,
    /// Deallocation (UNMAP, WRITE ZEROES with deallocate) is supported.
    pub supports_unmap: bool,
    /// The medium's deallocation granularity in logical blocks (at least 1), where it says
    /// one: a block device's discard granularity, below which a discard frees nothing. VPD
    /// B0h's OPTIMAL UNMAP GRANULARITY follows it; `None` leaves the engine's default (4 KiB,
    /// [`crate::scsi::DiskConfig::new`]).
    pub unmap_granularity_blocks: Option<u32>,
    /// Deallocated blocks read as zeroes (LBPRZ, SBC-3 §4.7.3.5 and §6.6.4): true only where
    /// the store guarantees it (a punched hole in a file, the RAM store's zeroing), false for a
    /// device whose discard leaves the data undefined.
    pub unmapped_reads_zero: bool,
    /// The store knows which blocks are mapped and answers [`StoreOp::LbaStatus`] (GET LBA
    /// STATUS is offered only then).
    pub reports_lba_status: bool,
    /// A volatile write cache exists (FLUSH and FUA mean something).
    pub volatile_cache: bool,
    /// The medium spins: `Some(true)` for a hard disk, `Some(false)` for memory and flash
    /// (RAM, SCA-1, NVMe, an SSD), `None` when nothing says (a file on a file system without a
    /// block device, such as tmpfs). VPD B1h's MEDIUM ROTATION RATE follows it.
    pub rotational: Option<bool>,
    /// Identifiers the device gives the medium (an NVMe namespace's NGUID/EUI64), which the
    /// SCSI identity uses when the configuration gives none. `None` on the RAM store, SCA-1,
    /// and an NVMe namespace that reports both as zero.
    pub device_ids: Option<DeviceIds>,
    /// Where [`StoreOp::Copy`] runs, or [`CopyPath::None`] when the store does not take it.
    pub copy: CopyPath,
    /// Most blocks of one [`StoreOp::CompareAndWrite`], the device's atomic compare and
    /// write; 0 when the store does not take it (the engine then compares and writes in two
    /// steps under its range lock).
    pub compare_and_write_blocks: u32,
}

impl StoreInfo {
    /// LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT (SBC-3 §5.16.2): log2(physical / logical),
    /// 0 when the physical size is not a larger power-of-two multiple of the logical one (the
    /// field can only say "2^n logical blocks per physical block"), capped at the field's 4 bits.
    pub fn physical_block_exponent(&self) -> u8 {
        let (logical, physical) = (self.block_size.max(1), self.physical_block_size);
        if physical <= logical || !physical.is_multiple_of(logical) || !(physical / logical).is_power_of_two()
        {
            return 0;
        }
        let exponent = (physical / logical).trailing_zeros();
        u8::try_from(exponent).map_or(0, |e| if e > 15 { 0 } else { e })
    }
}

/// Bytes of GET LBA STATUS parameter data with one descriptor (SBC-3 §5.7.2): the 8-byte
/// header and one 16-byte LBA status descriptor.
pub const LBA_STATUS_DATA_LEN: usize = 24;

/// GET LBA STATUS parameter data (SBC-3 §5.7.2, §5.7.3) describing one extent: `blocks`
/// blocks from `lba`, deallocated (PROVISIONING STATUS 1) or mapped (0). One descriptor is
/// enough: the device server may return fewer than fit, and the initiator asks again from
/// the first LBA not described.
pub fn lba_status_data(lba: u64, blocks: u32, deallocated: bool) -> [u8; LBA_STATUS_DATA_LEN] {
    let mut d = [0u8; LBA_STATUS_DATA_LEN];
    // PARAMETER DATA LENGTH: the bytes that follow it (4 reserved + one 16-byte descriptor).
    d[..4].copy_from_slice(&(LBA_STATUS_DATA_LEN as u32 - 4).to_be_bytes());
    d[8..16].copy_from_slice(&lba.to_be_bytes());
    d[16..20].copy_from_slice(&blocks.to_be_bytes());
    d[20] = u8::from(deallocated);
    d
}

impl IoBuffer {
    /// Write GET LBA STATUS parameter data, truncated to the window (the allocation length).
    pub fn put_lba_status(&self, data: &[u8; LBA_STATUS_DATA_LEN]) {
        let n = self.len.min(data.len());
        self.write_at(0, &data[..n]);
    }
}

/// Errors opening or driving a store queue.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The queue is full: reap completions, then resubmit the rest.
    #[error("store queue full ({in_flight} requests in flight); reap completions before submitting more")]
    QueueFull {
        /// Requests in flight.
        in_flight: usize,
    },
    /// No more queues.
    #[error("store has no free queue (all {max} in use); start fewer workers")]
    NoQueue {
        /// Queues the store has.
        max: usize,
    },
    /// The device is gone or failed.
    #[error("store device failed: {0}")]
    Device(String),
    /// The store's capacity is the device's (an NVMe namespace, a board's medium): it cannot
    /// be changed from here.
    #[error("this store's capacity is the device's; resize the device (or namespace) itself, then restart the disk")]
    FixedCapacity,
    /// A resize asked for fewer blocks than the store has: data would be lost under initiators.
    #[error("cannot shrink from {current} to {requested} blocks: only growing is supported (data past the new end would vanish under initiators)")]
    Shrink {
        /// Blocks now.
        current: u64,
        /// Blocks asked for.
        requested: u64,
    },
    /// A resize asked for more than the store can address.
    #[error("{requested} blocks is more than this store can hold; ask for less")]
    TooLarge {
        /// Blocks asked for.
        requested: u64,
    },
}

/// A store: shared by all workers, each of which opens its own queue.
pub trait Store: Send + Sync {
    /// Geometry and capabilities.
    fn info(&self) -> StoreInfo;
    /// Open a queue for the calling worker.
    ///
    /// # Errors
    /// [`StoreError::NoQueue`] when every queue is taken.
    fn open_queue(&self) -> Result<Box<dyn StoreQueue>, StoreError>;
    /// Why the store can no longer serve, once it cannot: the device is gone, or a fatal
    /// error or timeout that recovery could not clear. The frontend then runs its teardown
    /// (one sequence for every trigger, architecture.md §5). `None` while healthy.
    fn failure(&self) -> Option<String> {
        None
    }
    /// Registers, rings and queue states of the device behind the store, for logs on
    /// escalation and for dumps on demand; `None` for stores without a device.
    fn dump(&self) -> Option<String> {
        None
    }
    /// Grow the medium to `num_blocks` blocks while I/O goes on; [`Store::info`] reports the
    /// new size once this returns. The caller then tells the engine and SCST
    /// ([`crate::frontend::Frontend::resize`] does both).
    ///
    /// # Errors
    /// [`StoreError::FixedCapacity`] by default (the capacity is the device's);
    /// [`StoreError::Shrink`] or [`StoreError::TooLarge`] from stores that can grow.
    fn resize(&self, num_blocks: u64) -> Result<(), StoreError> {
        let _ = num_blocks;
        Err(StoreError::FixedCapacity)
    }
}

/// The lock token a store is given with each submission: the worker's, which holds no lock
/// when it submits (docs/locking.md). A store that takes locks on the command path (the RAM
/// store's chunks, the SGV pool for scratch memory) takes them from it, so the compiler checks
/// their order; the others ignore it.
pub type StoreToken<'a> = LockToken<'a, Root>;

/// One worker's queue. Not shared: the owning thread submits and reaps without locks.
pub trait StoreQueue: Send {
    /// Submit requests in order; the accepted ones are drained from the front of `batch`.
    /// `token` is the submitting worker's (no lock held).
    ///
    /// # Errors
    /// [`StoreError::QueueFull`] with the rest left in `batch`.
    fn submit(&mut self, token: &mut StoreToken<'_>, batch: &mut Vec<StoreRequest>)
        -> Result<(), StoreError>;
    /// Move finished completions into `out`; returns how many.
    fn reap(&mut self, out: &mut Vec<StoreCompletion>) -> usize;
    /// Readable while completions may be waiting; `None` for a store that completes every
    /// request inside [`StoreQueue::submit`].
    fn notify_fd(&self) -> Option<BorrowedFd<'_>>;
    /// Called right before the owner sleeps on [`StoreQueue::notify_fd`]: consume what made the
    /// fd readable for completions already reaped, and say whether completions are waiting now
    /// (`true`: reap instead of sleeping). A store whose reap keeps its fd's readiness exact
    /// (the file store's eventfd is read by its reap) keeps the default; the accelerator
    /// store's reaps leave the interrupt eventfd alone and clear it here instead: one read per
    /// sleep rather than one per reap (`boards/src/irq_gate.rs`). A queue without a notify fd
    /// answers `false`, so an owner may call it before any wait.
    fn prepare_to_wait(&mut self) -> bool {
        false
    }
    /// The owning worker's heartbeat ([`Heartbeat`]). A queue whose calls can keep the worker
    /// longer than one turn of its loop (a device recovery: a queue stop, a function reset, a
    /// queue restart, each bounded by the board's own timeouts) sets it ahead by such a call's
    /// bound before making it, so the service's liveness check (its systemd watchdog) tells a
    /// recovery from a wedged worker. Stores whose calls never block keep the default, which
    /// drops it; a wrapper queue forwards it to the queue it wraps.
    fn set_heartbeat(&mut self, heartbeat: Heartbeat) {
        let _ = heartbeat;
    }
    /// Requests submitted and not yet reaped.
    fn in_flight(&self) -> usize;
    /// Teardown escalation: end every request in flight now. On hardware this stops the queue
    /// and, if the engine does not go idle, resets the function (the proof that no more DMA
    /// will happen); the requests then complete with [`StoreStatus::Aborted`] through
    /// [`StoreQueue::reap`]. Returns how many were aborted. Stores that complete inside
    /// `submit` have nothing to abort.
    fn abort_all(&mut self) -> usize {
        0
    }
    /// The deadline escalation's abort: what [`StoreQueue::abort_all`] does to the requests in
    /// flight, without waiting for them to complete; they complete through
    /// [`StoreQueue::reap`] as ever, their buffers held by the store until then, while the
    /// owner goes on serving (a request hung in a system call would otherwise hold the worker
    /// for the store's whole wait at every escalation). Returns how many were in flight. The
    /// default is `abort_all`: a board's abort is a queue stop and perhaps a function reset,
    /// whose end is the proof that no DMA follows. The teardown calls `abort_all`: it must
    /// find the queue empty right after.
    fn start_abort_all(&mut self) -> usize {
        self.abort_all()
    }
    /// This queue's device state (ring pointers, requests in flight), for logs on escalation
    /// and dumps on demand; `None` for stores without a device.
    fn dump(&self) -> Option<String> {
        None
    }
}

impl fmt::Display for StoreStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}
