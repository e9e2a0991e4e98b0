//! The device contract every storage engine offers the handler: a [`Controller`] (one PCIe
//! function: geometry, health, reset) and its [`QueueEngine`]s (one submission/completion pair
//! per frontend worker). The SCA-1 driver and the NVMe driver both implement it, so the
//! accelerator store (request splitting, deadlines, the escalation ladder, teardown) is written
//! once, in the manner of SPDK's bdev modules over different transports.
//!
//! The rules both implementations keep:
//! - A completion is trusted only when its tag matches a request in flight (tags carry a
//!   generation) and, where the device's completion format lets the host check it, it can be
//!   that request's own (SCA-1: the engine consumed the descriptor and OK moved every byte);
//!   anything else is counted in [`QueueEngine::unknown_tags`] and ignored.
//! - [`QueueEngine::abandon_all`] is called only after [`QueueEngine::stop`] succeeded or the
//!   function was reset (or is gone): only then can no DMA for the abandoned requests happen.
//! - Every wait on the device is bounded (by a value the device advertises where it advertises
//!   one) and is made with no lock held.

use scst_accel_dma::mapping::IovaLock;
use scst_accel_hal::DeviceBacking;
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::time::Instant;

/// What a device request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceOp {
    /// Medium → host memory.
    Read,
    /// Host memory → medium.
    Write,
    /// Make completed writes stable.
    Flush,
    /// Zero the range (no data transfer): reads return zeroes afterwards.
    WriteZeroes {
        /// The device may deallocate the blocks where it still guarantees they read zeroes
        /// (NVMe Write Zeroes with DEAC, only where DLFEAT says so); otherwise only a hint.
        deallocate: bool,
    },
    /// Deallocate the range (UNMAP). What the blocks read afterwards is the device's: NVMe's
    /// Dataset Management is advisory (the controller may keep the data, NVMe 1.4 §6.7), so
    /// this never stands in for [`DeviceOp::WriteZeroes`].
    Deallocate,
    /// Copy `length` bytes from `src_lba` to the request's `lba` inside the medium, with no
    /// data transfer (EXTENDED COPY offloaded: NVMe Copy, the SCA-1 COPY descriptor). Only
    /// for devices with [`Geometry::max_copy_blocks`] > 0, at most that many blocks; the
    /// ranges must not overlap.
    Copy {
        /// First source block.
        src_lba: u64,
    },
    /// Compare the first `length` bytes of the segments with the medium at `lba` and, only
    /// if they are equal, write the next `length` bytes there, atomically against every other
    /// access to those blocks, from any host (NVMe's fused Compare and Write). The segments
    /// carry 2 x `length` bytes. Only for devices with [`Geometry::max_compare_write_blocks`]
    /// > 0, at most that many blocks; a mismatch completes [`DeviceStatus::Miscompare`].
    CompareAndWrite,
}

/// One request for the device.
#[derive(Clone, Copy, Debug)]
pub struct DeviceRequest<'a> {
    /// Caller's tag, returned in the completion.
    pub user_tag: u64,
    /// The operation.
    pub op: DeviceOp,
    /// Force unit access (writes).
    pub fua: bool,
    /// First block.
    pub lba: u64,
    /// Bytes (a multiple of the block size; 0 for Flush).
    pub length: u32,
    /// Data segments (IOVA, bytes) in order; empty for ops without data. The caller splits
    /// at [`Geometry::max_transfer_bytes`] and keeps at most [`Geometry::max_segments`].
    pub segments: &'a [(u64, u32)],
}

/// How a device request ended, in the device-independent terms the store maps to SCSI sense.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceStatus {
    /// Success.
    Ok,
    /// The range is outside the medium.
    LbaRange,
    /// Unrecovered read error.
    ReadError,
    /// Write fault.
    WriteError,
    /// Aborted by the device (abort command, queue deletion, reset).
    Aborted,
    /// A [`DeviceOp::CompareAndWrite`] found the medium different: nothing was written. The
    /// device does not say where the first difference is.
    Miscompare,
    /// The medium is not ready (NVMe Namespace Not Ready): the initiator may retry later.
    NotReady,
    /// The medium is being formatted (NVMe Format In Progress).
    FormatInProgress,
    /// The device refused a field of the command (NVMe Invalid Field in Command).
    InvalidField,
    /// A thin provisioned medium has no space left for the write (NVMe Capacity Exceeded).
    CapacityExceeded,
    /// Another host holds a reservation that excludes this access (NVMe Reservation Conflict).
    ReservationConflict,
    /// The medium refuses this access (NVMe Access Denied).
    AccessDenied,
    /// The medium is write protected (NVMe Namespace is Write Protected).
    WriteProtected,
    /// Any other device error; the raw status code for the log.
    Other(u32),
}

/// A validated completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceCompletion {
    /// The request's tag.
    pub user_tag: u64,
    /// Outcome.
    pub status: DeviceStatus,
    /// For a medium error, the low 32 bits of the failing LBA when the device reports it
    /// (SCA-1's `detail`, accelerator.md §4); the caller places them inside the request's range.
    pub failing_lba_low: Option<u32>,
}

/// The failing LBA of a request of `blocks` blocks from `first`, from the low 32 bits the
/// device reported: the one LBA of the range with those low bits. `first` when the device
/// reported none, or bits that name no block of the range (a device that lies is not believed).
pub fn failing_lba(first: u64, blocks: u64, low: Option<u32>) -> u64 {
    let Some(low) = low else { return first };
    let end = first.saturating_add(blocks.max(1));
    let candidate = (first & !0xFFFF_FFFF) | u64::from(low);
    [candidate, candidate.wrapping_add(1 << 32)]
        .into_iter()
        .find(|&lba| lba >= first && lba < end)
        .unwrap_or(first)
}

/// Which recovery a successful [`Controller::recover`] was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recovered {
    /// This call ran the recovery: its reset, its enable, the move of the reset count.
    Ran,
    /// Another caller's recovery was under way: this call waited for it and shares its
    /// outcome; that caller ran (and counts) it.
    Shared,
}

/// Why a request was not queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// No free slot: reap first.
    #[error("queue full")]
    Full,
    /// More segments than one request can describe.
    #[error("{segments} segments exceed the limit of {max}")]
    TooManySegments {
        /// Segments asked for.
        segments: usize,
        /// The limit.
        max: u32,
    },
    /// A segment the device cannot describe (e.g. an NVMe PRP needs page-aligned middles).
    #[error("segment layout the device cannot describe: {0}")]
    Unaligned(&'static str),
    /// The queue is stopped (by its own stop or by a reset of its function), halted, being
    /// recreated, or the device gone: recover or restart first.
    #[error("queue is not running")]
    NotRunning,
    /// An operation the device does not offer (its [`Geometry`] says so).
    #[error("the device does not offer {0}")]
    Unsupported(&'static str),
}

/// Errors of controller and queue operations that the store escalates on.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The device is gone (registers read all-ones): nothing more can be done with it.
    #[error("{device}: the device is gone (registers read all-ones)")]
    Gone {
        /// Device.
        device: String,
    },
    /// A bounded wait on the device expired.
    #[error("{device}: {what} did not happen within {timeout:?}")]
    Timeout {
        /// Device.
        device: String,
        /// What was waited for.
        what: &'static str,
        /// The bound.
        timeout: std::time::Duration,
    },
    /// A queue's stop found the function disabled by another thread's reset that had not yet
    /// proven the end of DMA (NVMe: CSTS.RDY = 0) within the caller's bound: nothing of the
    /// queue may be released yet. Stop again later: it succeeds once that reset proved it.
    #[error(
        "{device}: another thread's reset has not proven the end of DMA within {waited:?}; \
         hold the queue's requests and rings, and stop it again later"
    )]
    StopPending {
        /// Device.
        device: String,
        /// How long the stop waited for the proof.
        waited: std::time::Duration,
    },
    /// A queue's restart refused because a reset or recovery of the function is under way
    /// (docs/boards.md rule 5: no queue restarts between a reset and the move of the reset
    /// count): not yet, rather than failed. Nothing was changed; restart again later (that
    /// reset or recovery is bounded).
    #[error(
        "{device}: queue {queue} not restarted: a reset or recovery of the function is under way; \
         restart it again once the reset count moves"
    )]
    ResetUnderWay {
        /// Device.
        device: String,
        /// The queue ([`QueueEngine::index`]).
        queue: u32,
    },
    /// Anything else, with what to do in the message.
    #[error("{device}: {message}")]
    Failed {
        /// Device.
        device: String,
        /// What failed and what to do.
        message: String,
    },
}

impl EngineError {
    /// Is the device gone for good?
    pub fn is_gone(&self) -> bool {
        matches!(self, EngineError::Gone { .. })
    }
}

/// What a controller offers the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Logical block size in bytes.
    pub block_size: u32,
    /// Capacity in blocks.
    pub capacity_blocks: u64,
    /// Largest transfer of one device request in bytes.
    pub max_transfer_bytes: u32,
    /// Most data segments one device request may carry.
    pub max_segments: u32,
    /// Every segment but the first must start, and every segment but the last must end, on a
    /// multiple of this many bytes of IOVA (NVMe PRPs: the memory page; SCA-1 scatter lists:
    /// 1, any byte). A layout that breaks it is refused with [`SubmitError::Unaligned`].
    pub segment_alignment: u32,
    /// The device deallocates (UNMAP).
    pub supports_deallocate: bool,
    /// Most blocks one [`DeviceOp::Deallocate`] may cover, never 0 (NVMe: the DMRSL and DMSL
    /// of the NVM Command Set Identify Controller data, one range per command; u32::MAX where
    /// the device sets no limit). A request's u32 byte length bounds it as well. The device
    /// refuses a larger one: the store splits at it.
    pub max_deallocate_blocks: u32,
    /// The device zeroes a range without a data transfer ([`DeviceOp::WriteZeroes`]; NVMe:
    /// ONCS bit 3, and a WZSL of at least one block). Without it the store writes zero blocks
    /// instead.
    pub supports_write_zeroes: bool,
    /// Most blocks one [`DeviceOp::WriteZeroes`] may cover (NVMe: the WZSL of the NVM Command
    /// Set Identify Controller data and the 16-bit NLB; u32::MAX where the device sets no
    /// limit), never 0 but where that limit is below one block, which also clears
    /// [`Geometry::supports_write_zeroes`]. No data moves, so the largest transfer does not
    /// bound it here; the device refuses a larger one: the store splits at it.
    pub max_write_zeroes_blocks: u32,
    /// The device has a volatile write cache (FLUSH and FUA mean something).
    pub volatile_cache: bool,
    /// A write sent with FUA is on stable media when it completes. False for a device that
    /// ignores FUA (the board quirk [`crate::definition::Quirks::fua_ignored`]): the store
    /// then makes such a write durable with a [`DeviceOp::Flush`] after it.
    pub fua_durable: bool,
    /// Most blocks one [`DeviceOp::Copy`] may move; 0 when the device cannot copy.
    pub max_copy_blocks: u32,
    /// Most blocks one [`DeviceOp::CompareAndWrite`] may cover (NVMe: ACWU + 1, within the
    /// largest transfer); 0 when the device cannot compare and write atomically.
    pub max_compare_write_blocks: u32,
}

/// Identifiers the device itself gives the medium (an NVMe namespace's NGUID and EUI64), for
/// the SCSI identity. Each is `None` when the device reports it all zero, which the NVMe spec
/// (1.4 Figure 245) defines as "not supported".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DeviceIds {
    /// Namespace Globally Unique Identifier (16 bytes, big-endian as stored).
    pub nguid: Option<[u8; 16]>,
    /// IEEE Extended Unique Identifier (8 bytes, big-endian as stored).
    pub eui64: Option<[u8; 8]>,
}

/// QEMU's OUI (52:54:00, locally administered). QEMU's emulated NVMe controller gives a
/// namespace configured without an `eui64` the EUI64 52:54:00:00:00:00:00:00 + the namespace
/// count (hw/nvme `NVME_EUI64_DEFAULT`): the first namespace of every VM reports the same one.
pub const QEMU_OUI: [u8; 3] = [0x52, 0x54, 0x00];

impl DeviceIds {
    /// From the raw fields, keeping only ids that can stand for this medium alone: not all
    /// zero ("not supported"), and not under QEMU's OUI ([`QEMU_OUI`]; the OUI is an EUI64's
    /// bytes 0-2 and an NGUID's bytes 8-10, per the NVMe NGUID format). `None` when none is
    /// left. A dropped QEMU id is logged, naming the board that knows (`qemu-nvme`): two VMs
    /// would otherwise export the same SCSI identity, and multipath would merge their LUNs.
    /// The one definition of a usable device id: the identity (`tools/src/identity.rs`) takes
    /// what the store reports.
    pub fn from_raw(nguid: [u8; 16], eui64: [u8; 8]) -> Option<Self> {
        let ids = Self {
            nguid: Some(nguid).filter(|g| usable_id("NGUID", g, &g[8..11])),
            eui64: Some(eui64).filter(|e| usable_id("EUI64", e, &e[..3])),
        };
        (ids.nguid.is_some() || ids.eui64.is_some()).then_some(ids)
    }
}

/// Whether a namespace id (`kind`, with its OUI `oui`) may be the disk's identity.
fn usable_id(kind: &str, id: &[u8], oui: &[u8]) -> bool {
    if id.iter().all(|&b| b == 0) {
        return false;
    }
    if oui == QEMU_OUI {
        let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
        log::warn!(
            "namespace {kind} {hex} has QEMU's OUI 52:54:00: QEMU gives it to every VM, so it is \
             not used for the disk's identity (configured, or generated and persisted, instead); \
             on QEMU's controller use --board qemu-nvme (quirk bogus_device_ids)"
        );
        return false;
    }
    true
}

/// One PCIe function as the store sees it. Shared by every queue.
pub trait Controller: Send + Sync {
    /// Name for logs (the PCI address or the simulator's name).
    fn id(&self) -> &str;
    /// Medium geometry and limits.
    fn geometry(&self) -> Geometry;
    /// Identifiers the device gives the medium, if it has any (SCA-1: none).
    fn device_ids(&self) -> Option<DeviceIds> {
        None
    }
    /// The device, for DMA mappings of command buffers.
    fn device(&self) -> &Arc<dyn DeviceBacking>;
    /// The IOVA space rings and buffers share.
    fn iovas(&self) -> &Arc<IovaLock>;
    /// Registers read all-ones.
    fn is_gone(&self) -> bool;
    /// A fatal controller status (SCA-1 FATAL, NVMe CSTS.CFS), with a code for the log.
    fn fatal(&self) -> Option<u32>;
    /// Reset the function and leave it disabled: when this returns `Ok`, no DMA of this
    /// function can happen (the teardown's proof). Bounded.
    ///
    /// # Errors
    /// [`EngineError`].
    fn reset(&self) -> Result<(), EngineError>;
    /// Reset and bring the function back to serving: queues notice through
    /// [`Controller::reset_count`], fail what they had in flight and [`QueueEngine::restart`].
    /// One recovery runs at a time: a caller that finds one under way waits for it and shares
    /// its outcome ([`Recovered::Shared`]) instead of running another; the caller that ran it
    /// gets [`Recovered::Ran`]. So a caller counting the recoveries it caused counts each once.
    ///
    /// # Errors
    /// [`EngineError`]; the store then treats the device as gone.
    fn recover(&self) -> Result<Recovered, EngineError>;
    /// [`Controller::recover`] for a caller that chose to recover after reading `seen_resets`
    /// from [`Controller::reset_count`] (the store: the count had not moved, so no recovery
    /// was its proof yet). Once the recovery's turn is its own, the call looks again: a
    /// recovery that ended since that read and left the function serving (its reset proved the
    /// end of DMA for all the caller had submitted) makes another needless, and the call
    /// shares it ([`Recovered::Shared`], counted by the caller that ran it) instead of
    /// resetting a function that serves, which failed every other queue's requests in flight
    /// for nothing (docs/boards.md rule 5).
    ///
    /// The default runs [`Controller::recover`]: always correct (a second recovery proves the
    /// end of DMA as well as the first), only needlessly disruptive, so a board written before
    /// this call existed keeps building; both drivers here override it.
    ///
    /// # Errors
    /// As [`Controller::recover`].
    fn recover_since(&self, seen_resets: u64) -> Result<Recovered, EngineError> {
        let _ = seen_resets;
        self.recover()
    }
    /// Bumped by every recovery, whoever ran it ([`Controller::recover`], or a queue's stop
    /// that had to recover the function itself: [`QueueEngine::recoveries`]): a queue that sees
    /// it change knows its requests were dropped.
    fn reset_count(&self) -> u64;
    /// The longest one recovery ([`Controller::recover`]) of the function may take, reset
    /// included: how long a restart may be refused ([`EngineError::ResetUnderWay`]) because of
    /// one. The store gives up on a queue whose restarts were refused for longer than this
    /// plus twice its command timeout (docs/boards.md rule 5). The default, a minute (what
    /// Linux allows a function that keeps answering "retry" after a reset), is for an
    /// implementation that knows no bound of its own.
    fn recovery_bound(&self) -> std::time::Duration {
        std::time::Duration::from_secs(60)
    }
    /// Mask every interrupt of the function (teardown, before the device is closed).
    fn disable_interrupts(&self);
    /// Orderly stop at the end of a run (NVMe shutdown notification, then the controller
    /// reset; SCA-1 reset), bounded. `Ok` proves what [`Controller::reset`]'s `Ok` proves: no
    /// DMA of this function can happen.
    ///
    /// # Errors
    /// [`EngineError`]; the caller falls back to [`Controller::reset`].
    fn shutdown(&self) -> Result<(), EngineError> {
        self.reset()
    }
    /// The function's registers, decoded, for logs on escalation and for `diag`.
    fn dump_registers(&self) -> String;
}

/// One queue pair, owned by one worker thread (no locks on the I/O path).
pub trait QueueEngine: Send {
    /// Queue index (1-based on NVMe, whose queue 0 is the admin queue).
    fn index(&self) -> u32;
    /// Requests submitted and not yet completed or abandoned.
    fn in_flight(&self) -> usize;
    /// Accepting submissions: false after a stop, and also once a reset of the function that
    /// the queue did not ask for stopped it (another queue's recovery), until it restarts
    /// (docs/boards.md rule 5). Requests in flight may remain on a queue that is not running.
    fn is_running(&self) -> bool;
    /// The queue reported an error that halts it (SCA-1 Q_STATUS.ERROR); NVMe never halts a
    /// single queue.
    fn is_halted(&self) -> bool;
    /// When the oldest request in flight was submitted.
    fn oldest_submission(&self) -> Option<Instant>;
    /// User tags of the requests in flight submitted before `cutoff` (the late ones).
    fn expired(&self, cutoff: Instant) -> Vec<u64>;
    /// Readable when completions may have been posted (an MSI-X eventfd); `None` when polling.
    fn notify_fd(&self) -> Option<BorrowedFd<'_>>;
    /// Queue one request (visible to the device after [`QueueEngine::ring_doorbell`]).
    ///
    /// # Errors
    /// [`SubmitError`].
    fn submit(&mut self, req: &DeviceRequest<'_>) -> Result<(), SubmitError>;
    /// Make queued requests visible: one doorbell write per batch, only if anything is new.
    fn ring_doorbell(&mut self);
    /// Move validated completions into `out`; returns how many.
    fn reap(&mut self, out: &mut Vec<DeviceCompletion>) -> usize;
    /// Before sleeping on [`QueueEngine::notify_fd`]: acknowledge the device where it waits
    /// for that before it interrupts again (SCA-1's INT_STATUS under REARM, cleared and read
    /// back, accelerator.md §9), consume the interrupt signalled so far (reaps leave it,
    /// `irq_gate.rs`), then say whether a completion is posted; if so, reap instead of
    /// sleeping. Otherwise every completion posted after the call signals the fd. Without an
    /// interrupt fd, whether a completion is posted.
    fn prepare_to_wait(&mut self) -> bool;
    /// Completions not trusted so far: tags matching nothing in flight, and (where checked)
    /// completions that cannot be their request's own.
    fn unknown_tags(&self) -> u64;
    /// Ask the device to abort these requests (by user tag) without stopping the queue: the
    /// first rung of the escalation ladder (NVMe ABORT, NVMe 1.4 §5.1). Returns how many the
    /// device agreed to abort; their completions (status `Aborted`) then come through
    /// [`QueueEngine::reap`]. A device may refuse (QEMU's controller always does); devices
    /// without a per-request abort return `Ok(0)`. Bounded.
    ///
    /// # Errors
    /// [`EngineError`] when the abort itself failed (the store then stops the queue).
    fn abort(&mut self, user_tags: &[u64]) -> Result<usize, EngineError> {
        let _ = user_tags;
        Ok(0)
    }

    /// Stop the queue and wait, bounded, until the device holds none of its requests.
    ///
    /// # Errors
    /// [`EngineError::Gone`], [`EngineError::Timeout`] when only a reset will help, or
    /// [`EngineError::Failed`] when the device reports a fatal state (NVMe: CSTS.CFS) or
    /// refuses the stop.
    fn stop(&mut self) -> Result<(), EngineError>;
    /// [`QueueEngine::stop`] waiting at most `bound` (where the stop itself talks to the device,
    /// as NVMe's queue deletion does), for callers that escalate to a reset sooner than the
    /// device's own timeout (the teardown). Devices whose stop is bounded by the device's own
    /// short handshake keep the default.
    ///
    /// # Errors
    /// As [`QueueEngine::stop`].
    fn stop_within(&mut self, bound: std::time::Duration) -> Result<(), EngineError> {
        let _ = bound;
        self.stop()
    }

    /// Recoveries of the function this queue's stops ran themselves so far (a stop, or the stop
    /// inside a restart, whose only proof of the end of DMA could be a recovery of its own:
    /// NVMe after a recovery's reset failed or overran, docs/boards.md rule 5), each also
    /// counted by [`Controller::reset_count`]. A caller counting the recoveries it caused
    /// counts these with its own [`Controller::recover`]s. 0 for an engine whose stop never
    /// recovers the function (SCA-1: its stop fails instead, and the caller recovers).
    fn recoveries(&self) -> u64 {
        0
    }

    /// Forget every request in flight and return their tags (see the module rules).
    fn abandon_all(&mut self) -> Vec<u64>;
    /// When dropped, leave the queue's rings (and any other memory the device reads or writes
    /// for it) mapped, their IOVAs taken: nothing proved the device stopped using them.
    fn leak_on_drop(&mut self);
    /// Run again after a stop or a reset, with nothing in flight (re-creating the queue on
    /// the device where the reset destroyed it).
    ///
    /// # Errors
    /// [`EngineError::ResetUnderWay`] while a reset or recovery of the function runs (the
    /// store retries, until restarts have not succeeded for longer than
    /// [`Controller::recovery_bound`] and twice its command timeout); other [`EngineError`]s,
    /// which the store retries for a bounded time and then treats the device as gone.
    fn restart(&mut self) -> Result<(), EngineError>;
    /// The queue's registers and ring pointers, for logs on escalation and for `diag`.
    fn dump(&self) -> String;
}

#[cfg(test)]
mod failing_lba_tests {
    use super::failing_lba;

    #[test]
    fn the_reported_low_bits_name_a_block_of_the_request_or_are_not_believed() {
        // Inside the range.
        assert_eq!(failing_lba(1000, 8, Some(1005)), 1005);
        // Nothing reported: the first block.
        assert_eq!(failing_lba(1000, 8, None), 1000);
        // Bits naming a block outside the request: not believed.
        assert_eq!(failing_lba(1000, 8, Some(2000)), 1000);
        assert_eq!(failing_lba(1000, 8, Some(999)), 1000);
        // High bits come from the request, across a 2^32 boundary too.
        let first = (7u64 << 32) | 0xFFFF_FFFE;
        assert_eq!(failing_lba(first, 4, Some(1)), (8u64 << 32) | 1);
        assert_eq!(
            failing_lba(first, 4, Some(0xFFFF_FFFF)),
            (7u64 << 32) | 0xFFFF_FFFF
        );
    }
}
