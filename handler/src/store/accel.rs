//! The accelerator store: [`Store`] on the queues of any device that keeps the engine contract
//! (`scst_accel_boards::engine`: the SCA-1 accelerator of docs/accelerator.md, or an NVMe
//! controller). Each frontend worker owns one device queue; a store request becomes one or more
//! device requests (split at the device's transfer limit; WRITE SAME as a scatter list repeating
//! the pattern block, or, where a block boundary is not a valid segment boundary (NVMe PRPs
//! with blocks smaller than a page), a scratch buffer filled with it; UNMAP as one DEALLOCATE
//! per range), and their completions are gathered back into one.
//!
//! Every completion is validated by the queue before it is trusted. A request the device does
//! not complete within `command_timeout` escalates: ask the device to abort the late requests
//! (NVMe ABORT), bounded; else stop the queue (RUN=0, bounded wait for BUSY=0; NVMe: delete
//! its SQ and CQ); if the engine stays busy, reset the function; then every request of the
//! queue is failed (ABORTED) and the queue restarted. A stop that finds another thread's reset
//! not yet proven holds the requests until that proof comes (`proof_pending`); the teardown's
//! abort answers those the device never saw (waiting in the store) ABORTED before its stop.
//! Nothing is failed, its buffer released, before something proves the device does no more DMA
//! for it (a stop, a reset, bus mastering cleared, the function off the bus); without a proof
//! the requests are held for good. A device that is gone fails everything at once and for good.
//! Nothing panics, and no wait is unbounded; queues of one function do wait for each other where
//! the function is shared: one recovery runs at a time (a second caller waits, bounded, for the
//! first's outcome; one that ended since the queue looked at the reset count is shared, not run
//! again: `Controller::recover_since`), and a queue restarts only once a recovery under way has
//! published its reset count (a restart refused meanwhile is not a failure toward giving up, but
//! the refusals are bounded in total: once restarts have not succeeded for longer than one whole
//! recovery, the engine's `Controller::recovery_bound`, and twice the command timeout, the store
//! gives up as on restarts that keep failing). A queue that is not running is restarted only with
//! nothing in flight: an NVMe queue whose controller another queue's recovery disabled, or an SCA-1
//! queue whose function another queue's reset stopped (every queue's RUN cleared, accelerator.md
//! §7), takes no new request and keeps those in flight until the reset count moves (they are failed
//! then) or their deadline escalates (the stop proving the end of their DMA). When the count moves,
//! only what the queue submitted is failed (with the rest of its store requests): requests that
//! only waited in the store for a ring slot or for the queue to run never reached the device, and
//! are submitted after the restart. A stopped queue with nothing to do retries its restart when the
//! next request comes.

use super::CopyPath;
use super::Heartbeat;
use super::IoBuffer;
use super::Store;
use super::StoreCompletion;
use super::StoreError;
use super::StoreInfo;
use super::StoreOp;
use super::StoreQueue;
use super::StoreRequest;
use super::StoreStatus;
use crate::int_map::IntMap;
use crate::int_map::IntSet;
use scst_accel_boards::engine::Controller;
use scst_accel_boards::engine::DeviceCompletion;
use scst_accel_boards::engine::DeviceOp;
use scst_accel_boards::engine::DeviceRequest;
use scst_accel_boards::engine::DeviceStatus;
use scst_accel_boards::engine::EngineError;
use scst_accel_boards::engine::Geometry;
use scst_accel_boards::engine::QueueEngine;
use scst_accel_boards::engine::Recovered;
use scst_accel_boards::engine::SubmitError;
use scst_accel_dma::split_for_device_into;
use scst_accel_dma::DmaRegion;
use scst_accel_dma::MappedRegion;
use scst_accel_hal::locks::levels;
use scst_accel_hal::locks::LockToken;
use scst_accel_hal::locks::OrderedMutex;
use scst_accel_hal::HalError;
use scst_accel_hal::RemovalRequest;
use std::collections::VecDeque;
use std::os::fd::BorrowedFd;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::Duration;
use std::time::Instant;

/// Largest piece of a scatter list entry: buffers above it are described by a scatter list,
/// as a device without an IOMMU would need for physically scattered pages.
const SGL_SEGMENT: usize = 64 << 10;

/// How long the teardown's abort waits for a queue to stop before it resets the function: a
/// queue stop that talks to the device (NVMe queue deletion) can otherwise take the whole admin
/// timeout on a hung controller, and the reset is what proves DMA has ended anyway.
const TEARDOWN_STOP_BOUND: Duration = Duration::from_millis(500);

/// Tuning of the accelerator store.
#[derive(Clone, Copy, Debug)]
pub struct AccelConfig {
    /// A device request older than this escalates (stop, reset, fail).
    pub command_timeout: Duration,
    /// How often a queue with requests in flight checks their deadlines, device loss and FATAL.
    pub health_interval: Duration,
}

impl Default for AccelConfig {
    fn default() -> Self {
        Self {
            command_timeout: Duration::from_secs(5),
            health_interval: Duration::from_millis(20),
        }
    }
}

/// Counters shared by every queue of the store.
#[derive(Debug, Default)]
pub struct AccelCounters {
    /// Requests that completed with a device error status.
    pub device_errors: AtomicU64,
    /// Requests failed because of a timeout escalation.
    pub timeouts: AtomicU64,
    /// Queue stop handshakes that succeeded during recovery.
    pub queue_stops: AtomicU64,
    /// Recoveries of the function (reset, then brought back to serving) the store ran, each
    /// counted once: those of its escalation's own [`Controller::recover`] that ran one
    /// ([`Recovered::Ran`]; not one it only waited for, counted by the caller that ran it, nor
    /// another caller's such as `demo --reset-during-load`), and those a queue's stop had to
    /// run itself ([`QueueEngine::recoveries`]: an NVMe stop after a recovery's reset proved
    /// nothing). A part of [`Controller::reset_count`], which counts every recovery of the
    /// function whoever ran it. The resets that leave the function disabled (the store giving
    /// up, the teardown) are no recoveries and are not counted.
    pub resets: AtomicU64,
    /// Requests failed because the device is gone.
    pub gone_failures: AtomicU64,
    /// Completions with unknown or duplicated tags (ignored).
    pub unknown_tags: AtomicU64,
    /// Late requests the device aborted on request (the first rung of the ladder).
    pub device_aborts: AtomicU64,
    /// Recoveries started because the device posted too many completions that cannot be
    /// trusted ([`UNTRUSTED_MIN`], [`UNTRUSTED_SHARE`]).
    pub untrusted_recoveries: AtomicU64,
}

/// A queue whose device posts at least this many untrusted completions (unknown or duplicated
/// tags, entries refused as not their request's: the engine's `unknown_tags`) within
/// [`TRUST_WINDOW`]...
pub const UNTRUSTED_MIN: u64 = 32;
/// ...and at least one for every `UNTRUSTED_SHARE` completions it accepted in that window, is
/// recovered (stop or reset, in-flight requests failed ABORTED, restart): a device that lies
/// that often is not one to keep trusting with DMA. An occasional bad entry is only counted.
pub const UNTRUSTED_SHARE: u64 = 8;
/// The window of those counts.
pub const TRUST_WINDOW: Duration = Duration::from_secs(1);

/// The store.
pub struct AccelStore {
    board: Arc<dyn Controller>,
    info: StoreInfo,
    queues: OrderedMutex<Vec<Box<dyn QueueEngine>>, levels::AccelSpareQueues>,
    total_queues: usize,
    config: AccelConfig,
    counters: Arc<AccelCounters>,
    /// Set once, by the first queue that finds the device unusable (gone, or recovery failed),
    /// or by [`Store::failure`] when the kernel asked for the device back.
    failure: Arc<OnceLock<String>>,
    /// The failure is the kernel's removal request ([`AccelStore::removal_requested`]).
    removal_requested: AtomicBool,
}

/// The largest transfer a request may have: the device's, and no more than its segment limit
/// can describe in [`SGL_SEGMENT`] pieces (a buffer starts on a page, so `n` pieces describe
/// `n` times [`SGL_SEGMENT`]). A board with a short scatter list would otherwise be handed
/// requests it must refuse as having too many segments.
fn max_transfer_bytes(geometry: &Geometry) -> u32 {
    let described = u64::from(geometry.max_segments.max(1)) * SGL_SEGMENT as u64;
    u64::from(geometry.max_transfer_bytes).min(described) as u32
}

impl AccelStore {
    /// A store over the queues of a brought-up board.
    pub fn new(board: Arc<dyn Controller>, queues: Vec<Box<dyn QueueEngine>>, config: AccelConfig) -> Self {
        let geometry = board.geometry();
        let block_size = geometry.block_size.max(512);
        let info = StoreInfo {
            block_size,
            num_blocks: geometry.capacity_blocks,
            // The board's geometry has no physical block size (nor a read-zeroes guarantee
            // for deallocated blocks): claim neither.
            physical_block_size: block_size,
            max_transfer_blocks: (max_transfer_bytes(&geometry) / block_size).max(1),
            supports_unmap: geometry.supports_deallocate,
            unmap_granularity_blocks: None,
            unmapped_reads_zero: false,
            reports_lba_status: false,
            volatile_cache: geometry.volatile_cache,
            // Device memory (SCA-1) or flash (NVMe).
            rotational: Some(false),
            device_ids: board.device_ids(),
            // The device copies (NVMe Copy when ONCS says so, the SCA-1 COPY descriptor when
            // CAP says so); otherwise EXTENDED COPY segments go back to SCST's copy manager.
            copy: if geometry.max_copy_blocks > 0 {
                CopyPath::Device
            } else {
                CopyPath::None
            },
            // NVMe's fused Compare and Write where the controller reports it (FUSES, ACWU).
            compare_and_write_blocks: geometry.max_compare_write_blocks,
        };
        let total_queues = queues.len();
        Self {
            board,
            info,
            queues: OrderedMutex::new(queues),
            total_queues,
            config,
            counters: Arc::default(),
            failure: Arc::default(),
            removal_requested: AtomicBool::new(false),
        }
    }

    /// Whether the store stopped serving because the kernel asked for the device back (an
    /// unbind from vfio-pci, a hot removal: [`RemovalRequest`]), not because the device
    /// failed: the function still works until it is closed, so its release may shut it down
    /// in order (NVMe: its volatile cache made stable) before the reset.
    pub fn removal_requested(&self) -> bool {
        self.removal_requested.load(Ordering::Acquire)
    }

    /// The kernel's request for the device, once: the store's failure from then on. Asked by
    /// whoever asks [`Store::failure`] (a frontend worker once per idle poll, the TCMU
    /// supervisor once per turn): one non-blocking eventfd read until it is seen.
    fn note_removal_request(&self) -> Option<String> {
        let device = self.board.device();
        if !device.removal_request().is_some_and(RemovalRequest::is_requested) {
            return None;
        }
        let id = self.board.id();
        let why = format!(
            "{id}: the kernel asked for the device back (an unbind from vfio-pci, or a hot removal); \
             the disk is stopped and the device closed so that the unbind can complete. To serve \
             it again, bind {id} to vfio-pci again and restart the service (or the disk)"
        );
        if self.failure.set(why.clone()).is_ok() {
            self.removal_requested.store(true, Ordering::Release);
            log::error!("{why}");
        }
        self.failure.get().cloned()
    }

    /// The board's controller.
    pub fn board(&self) -> &Arc<dyn Controller> {
        &self.board
    }

    /// Counters.
    pub fn counters(&self) -> &Arc<AccelCounters> {
        &self.counters
    }

    /// Dumps of the queues no worker has opened (for `diag`; an opened queue is dumped by its
    /// worker through [`StoreQueue::dump`]). Register reads only: nothing blocks under the lock.
    /// An API entry (`diag`, the control socket): the caller holds no lock (asserted).
    pub fn spare_queue_dumps(&self) -> Vec<String> {
        self.queues
            .lock(&mut LockToken::root())
            .0
            .iter()
            .map(|q| q.dump())
            .collect()
    }
}

impl Store for AccelStore {
    fn info(&self) -> StoreInfo {
        self.info
    }

    fn open_queue(&self) -> Result<Box<dyn StoreQueue>, StoreError> {
        // Called by the frontend as it starts a worker, with nothing held (asserted): the
        // trait has no token parameter because opening is not on the command path.
        let queue = self.queues.lock(&mut LockToken::root()).0.pop();
        match queue {
            Some(q) => Ok(Box::new(AccelQueue::new(
                Arc::clone(&self.board),
                q,
                self.info,
                self.config,
                Arc::clone(&self.counters),
                Arc::clone(&self.failure),
            ))),
            None => Err(StoreError::NoQueue {
                max: self.total_queues,
            }),
        }
    }

    fn failure(&self) -> Option<String> {
        self.failure
            .get()
            .cloned()
            .or_else(|| self.note_removal_request())
    }

    fn dump(&self) -> Option<String> {
        let c = &self.counters;
        Some(format!(
            "{}\nstore: device_errors {} device_aborts {} timeouts {} queue_stops {} resets {} \
             gone_failures {} unknown_tags {}{}",
            self.board.dump_registers(),
            c.device_errors.load(Ordering::Relaxed),
            c.device_aborts.load(Ordering::Relaxed),
            c.timeouts.load(Ordering::Relaxed),
            c.queue_stops.load(Ordering::Relaxed),
            c.resets.load(Ordering::Relaxed),
            c.gone_failures.load(Ordering::Relaxed),
            c.unknown_tags.load(Ordering::Relaxed),
            self.failure().map_or(String::new(), |f| format!("; FAILED: {f}")),
        ))
    }
}

/// One device request of a store request.
#[derive(Clone, Debug)]
struct Child {
    parent: u64,
    op: DeviceOp,
    fua: bool,
    lba: u64,
    length: u32,
    segments: Segments,
}

/// A device request's data, as a description: the scatter list itself is written into the
/// queue's scratch list when the request is submitted ([`Segments::describe`]), so planning a
/// request allocates nothing, whatever its size, and a queue's scratch list stops growing once
/// it has held its longest request.
#[derive(Clone, Copy, Debug)]
enum Segments {
    /// No data (FLUSH, WRITE ZEROES, DEALLOCATE, COPY).
    None,
    /// `len` bytes at `iova`, in pieces of at most [`SGL_SEGMENT`] (the first shortened to end
    /// on a page when `iova` is inside one): one inline address up to it (the single-descriptor
    /// fast path), a scatter list above it.
    Contiguous { iova: u64, len: usize },
    /// `len` bytes at `iova` as one piece, whatever the length: WRITE SAME's expanded pattern
    /// (at most 64 blocks), one inline address.
    Whole { iova: u64, len: u32 },
    /// One `block` at `iova`, `count` times: WRITE SAME as a scatter list that repeats the
    /// pattern block (accelerator.md §3).
    Repeat { iova: u64, block: u32, count: u32 },
}

impl Segments {
    /// `len` bytes from `iova` (none when `len` is 0).
    fn of(iova: u64, len: usize) -> Self {
        if len == 0 {
            Segments::None
        } else {
            Segments::Contiguous { iova, len }
        }
    }

    /// The scatter list, written into `scratch` (cleared first; its capacity kept).
    fn describe(self, scratch: &mut Vec<(u64, u32)>) -> &[(u64, u32)] {
        scratch.clear();
        match self {
            Segments::None => {}
            Segments::Contiguous { iova, len } => split_for_device_into(scratch, iova, len, SGL_SEGMENT),
            Segments::Whole { iova, len } => scratch.push((iova, len)),
            Segments::Repeat { iova, block, count } => {
                scratch.extend(std::iter::repeat_n((iova, block), count as usize));
            }
        }
        scratch
    }
}

/// The device requests of one store request. The first is held inline: a store request that
/// becomes one device request (the single-descriptor fast path: every READ and WRITE up to
/// the transfer limit) allocates nothing to be planned.
#[derive(Debug, Default)]
struct Children {
    first: Option<Child>,
    rest: Vec<Child>,
}

impl Children {
    fn push(&mut self, child: Child) {
        if self.first.is_none() {
            self.first = Some(child);
        } else {
            self.rest.push(child);
        }
    }

    fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }

    fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    /// The blocks the device requests move, in blocks of `bs` bytes.
    fn blocks(&self, bs: u64) -> u64 {
        self.first
            .iter()
            .chain(&self.rest)
            .map(|c| u64::from(c.length) / bs.max(1))
            .sum()
    }
}

impl Extend<Child> for Children {
    fn extend<I: IntoIterator<Item = Child>>(&mut self, children: I) {
        for child in children {
            self.push(child);
        }
    }
}

impl FromIterator<Child> for Children {
    fn from_iter<I: IntoIterator<Item = Child>>(children: I) -> Self {
        let mut out = Self::default();
        out.extend(children);
        out
    }
}

/// `blocks` blocks from `lba` in pieces of at most `per` (at least one block each): (first
/// block, blocks) of each.
fn pieces(lba: u64, blocks: u64, per: u64) -> impl Iterator<Item = (u64, u64)> {
    let per = per.max(1);
    (0..blocks.div_ceil(per)).map(move |i| (lba + i * per, per.min(blocks - i * per)))
}

impl IntoIterator for Children {
    type Item = Child;
    type IntoIter = std::iter::Chain<std::option::IntoIter<Child>, std::vec::IntoIter<Child>>;

    fn into_iter(self) -> Self::IntoIter {
        self.first.into_iter().chain(self.rest)
    }
}

/// For Compare: the command's data and the scratch buffer the medium is read into.
type ComparePair = (IoBuffer, IoBuffer);

/// Fused attempts at one COMPARE AND WRITE before a miscompare the re-read cannot find is
/// answered without its offset.
const CAW_ATTEMPTS: u8 = 3;

/// A COMPARE AND WRITE the device runs atomically ([`DeviceOp::CompareAndWrite`]). NVMe's
/// Compare Failure does not say where the data differs, and SBC-3 §5.3 wants the offset of
/// the first differing byte: after a miscompare the range is read into `scratch` and compared
/// on the host. Should it now be equal (another host of the namespace wrote between: the
/// handler's own writers are kept out by the engine's range lock), the fused command is sent
/// again, up to [`CAW_ATTEMPTS`] times.
struct DeviceCompareAndWrite {
    /// The command's data: the compare half, then the write half.
    data: IoBuffer,
    /// Where the range is read after a miscompare.
    scratch: IoBuffer,
    lba: u64,
    blocks: u32,
    fua: bool,
    attempts: u8,
    /// The outstanding child is the re-read, not the fused command.
    rereading: bool,
}

/// The Flush that makes a FUA write durable on a device that ignores FUA
/// ([`Geometry::fua_durable`] false: the board quirk `fua_ignored`).
///
/// [`Geometry::fua_durable`]: scst_accel_boards::engine::Geometry::fua_durable
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FuaFlush {
    /// Nothing follows the request.
    None,
    /// A FUA write (or COMPARE AND WRITE) starting at `lba`: once it has succeeded, a Flush
    /// follows, and the request completes with the Flush.
    After { lba: u64 },
    /// The request's Flush is outstanding; a write error it reports is the write's, at `lba`.
    Flushing { lba: u64 },
}

/// A store request being carried out.
struct Parent {
    remaining: usize,
    status: StoreStatus,
    fua_flush: FuaFlush,
    /// For Compare: the command's data and the scratch the medium is read into.
    compare: Option<ComparePair>,
    /// For COMPARE AND WRITE in the device.
    compare_and_write: Option<DeviceCompareAndWrite>,
    /// For VERIFY: the blocks not read yet, planned a piece at a time as earlier pieces end.
    verify: Option<VerifyCursor>,
    /// Memory the device reads for this request besides the command's buffer (the expanded
    /// WRITE SAME pattern): kept until the last child completes.
    #[expect(
        dead_code,
        reason = "held, never read: keeps the pattern alive while the device reads it"
    )]
    scratch: Option<IoBuffer>,
}

/// VERIFY (BYTCHK 0) reads its range into one scratch chunk nobody reads ([`AccelQueue`]'s
/// `verify_scratch`), at most [`VERIFY_WINDOW`] pieces in flight: a VERIFY may name up to 2^32
/// blocks, far more than one request's pieces should be planned at once.
#[derive(Clone, Copy, Debug)]
struct VerifyCursor {
    /// The first block not planned yet.
    next: u64,
    /// Blocks not planned yet.
    left: u64,
}

impl VerifyCursor {
    /// The next piece of at most `per` blocks, if any is left.
    fn take(&mut self, per: u64) -> Option<(u64, u64)> {
        let n = self.left.min(per.max(1));
        (n > 0).then(|| {
            let piece = (self.next, n);
            self.next += n;
            self.left -= n;
            piece
        })
    }
}

/// One piece of a VERIFY of request `parent`: `blocks` blocks from `lba` read into the scratch
/// chunk at `iova`.
fn verify_read(parent: u64, lba: u64, blocks: u64, bs: u64, iova: u64) -> Child {
    let len = (blocks * bs) as u32;
    Child {
        parent,
        op: DeviceOp::Read,
        fua: false,
        lba,
        length: len,
        segments: Segments::Whole { iova, len },
    }
}

/// Pieces of one VERIFY in flight at once.
const VERIFY_WINDOW: u64 = 8;

struct AccelQueue {
    board: Arc<dyn Controller>,
    queue: Box<dyn QueueEngine>,
    info: StoreInfo,
    config: AccelConfig,
    counters: Arc<AccelCounters>,
    parents: IntMap<u64, Parent>,
    children: IntMap<u64, Child>,
    /// Device requests not yet submitted, in order: waiting for a ring slot, or for the queue
    /// to run again. The device has never seen them.
    backlog: VecDeque<u64>,
    /// The scatter list of the request being submitted ([`Segments::describe`]).
    segments: Vec<(u64, u32)>,
    next_child: u64,
    done: Vec<StoreCompletion>,
    completions: Vec<DeviceCompletion>,
    last_health: Instant,
    seen_resets: u64,
    /// The queue's own count of the recoveries its stops ran ([`QueueEngine::recoveries`]),
    /// as far as [`AccelCounters::resets`] has them.
    seen_stop_recoveries: u64,
    seen_unknown: u64,
    /// Start of the current [`TRUST_WINDOW`], and the untrusted and accepted completions in it.
    trust_window: (Instant, u64, u64),
    gone: bool,
    /// Requests are held on the device with nothing proving it stopped DMA for them
    /// ([`AccelQueue::give_up`]): dropped, the queue keeps them and its rings.
    dma_unproven: bool,
    /// Since when a bounded stop ([`AccelQueue::recover_with`]) has been waiting for another
    /// thread's reset to prove the end of DMA ([`EngineError::StopPending`]): the requests are
    /// held, and each health check asks again; the proof releases them.
    proof_pending: Option<Instant>,
    failure: Arc<OnceLock<String>>,
    /// The device can describe WRITE SAME as a scatter list repeating the pattern block
    /// (enough segments, and a block boundary is a valid segment boundary).
    repeats_blocks: bool,
    /// Most blocks of one device copy ([`Geometry::max_copy_blocks`]); 0: the device cannot.
    ///
    /// [`Geometry::max_copy_blocks`]: scst_accel_boards::engine::Geometry::max_copy_blocks
    copy_blocks: u32,
    /// Most blocks of one device deallocation ([`Geometry::max_deallocate_blocks`]).
    ///
    /// [`Geometry::max_deallocate_blocks`]: scst_accel_boards::engine::Geometry::max_deallocate_blocks
    deallocate_blocks: u32,
    /// Restarts have failed since the first instant, the last one at the second (another
    /// queue's recovery may still be running).
    restart_failing_since: Option<(Instant, Instant)>,
    /// Restarts have not succeeded since the first instant, the last attempt at the second, the
    /// run begun by a refusal ([`EngineError::ResetUnderWay`]: a recovery under way); ordinary
    /// failures in it go on with it. Only a successful restart ends it (or the queue idle,
    /// nothing retried, for twice the command timeout). The store gives up once it lasted
    /// longer than one whole recovery and the give-up bound of ordinary failures
    /// ([`AccelQueue::refusal_bound`]).
    restart_refused_since: Option<(Instant, Instant)>,
    /// The device zeroes without a data transfer ([`Geometry::supports_write_zeroes`]).
    write_zeroes: bool,
    /// Most blocks of one device write zeroes ([`Geometry::max_write_zeroes_blocks`]).
    ///
    /// [`Geometry::max_write_zeroes_blocks`]: scst_accel_boards::engine::Geometry::max_write_zeroes_blocks
    write_zeroes_blocks: u32,
    /// The device has a volatile cache and ignores FUA ([`Geometry::fua_durable`] false): a
    /// FUA write is made durable by a Flush after it ([`FuaFlush`]).
    fua_by_flush: bool,
    /// The owning worker's heartbeat, set ahead around each device call of a recovery
    /// ([`AccelQueue::device_call`]); one nobody reads until the owner gives its own.
    heartbeat: Heartbeat,
    /// On a device without write zeroes: one WRITE SAME chunk of zero blocks, mapped for the
    /// device when first needed, the data of the writes that zero a range. Declared last, so
    /// it is unmapped after the queue (stopped in `drop`) is gone.
    zeroes: Option<MappedRegion>,
    /// One WRITE SAME chunk the device reads VERIFY's blocks into (SCA-1 has no media verify,
    /// NVMe's Verify is optional): mapped at the first VERIFY, never read by the host.
    verify_scratch: Option<MappedRegion>,
}

impl AccelQueue {
    fn new(
        board: Arc<dyn Controller>,
        queue: Box<dyn QueueEngine>,
        info: StoreInfo,
        config: AccelConfig,
        counters: Arc<AccelCounters>,
        failure: Arc<OnceLock<String>>,
    ) -> Self {
        let seen_resets = board.reset_count();
        let seen_stop_recoveries = queue.recoveries();
        let geometry = board.geometry();
        let repeats_blocks = u64::from(geometry.max_segments) >= write_same_chunk(info)
            && info.block_size.is_multiple_of(geometry.segment_alignment.max(1));
        Self {
            board,
            queue,
            info,
            config,
            counters,
            parents: IntMap::default(),
            children: IntMap::default(),
            backlog: VecDeque::new(),
            segments: Vec::new(),
            next_child: 1,
            done: Vec::new(),
            completions: Vec::new(),
            last_health: Instant::now(),
            seen_resets,
            seen_stop_recoveries,
            seen_unknown: 0,
            trust_window: (Instant::now(), 0, 0),
            gone: false,
            dma_unproven: false,
            proof_pending: None,
            failure,
            repeats_blocks,
            copy_blocks: geometry.max_copy_blocks,
            deallocate_blocks: geometry.max_deallocate_blocks,
            restart_failing_since: None,
            restart_refused_since: None,
            write_zeroes: geometry.supports_write_zeroes,
            write_zeroes_blocks: geometry.max_write_zeroes_blocks,
            fua_by_flush: geometry.volatile_cache && !geometry.fua_durable,
            heartbeat: Heartbeat::new(),
            zeroes: None,
            verify_scratch: None,
        }
    }

    fn bs(&self) -> u64 {
        u64::from(self.info.block_size)
    }

    /// Split a store request into device requests; `pattern` is the expanded WRITE SAME
    /// pattern when the device cannot repeat a block through a scatter list.
    fn plan(&self, req: &StoreRequest, pattern: Option<&IoBuffer>) -> Result<Children, StoreStatus> {
        let bs = self.bs();
        let max_blocks = u64::from(self.info.max_transfer_blocks);
        let in_range = |lba: u64, blocks: u64| {
            lba.checked_add(blocks)
                .is_some_and(|end| end <= self.info.num_blocks)
        };
        let buffer_iova = |needed: u64| -> Result<(u64, &IoBuffer), StoreStatus> {
            let buf = req.buffer.as_ref().ok_or(StoreStatus::InvalidRequest)?;
            let iova = buf.iova().ok_or(StoreStatus::InvalidRequest)?;
            if (buf.len as u64) < needed {
                return Err(StoreStatus::InvalidRequest);
            }
            Ok((iova, buf))
        };
        let child = |op: DeviceOp, fua: bool, lba: u64, blocks: u64, segments: Segments| Child {
            parent: req.tag,
            op,
            fua,
            lba,
            length: (blocks * bs) as u32,
            segments,
        };
        let split = |op: DeviceOp, fua: bool, lba: u64, blocks: u64, iova: Option<u64>| -> Children {
            let mut out = Children::default();
            let mut done = 0;
            while done < blocks {
                let n = (blocks - done).min(max_blocks);
                // Large transfers go to the device as scatter lists of SGL_SEGMENT pieces
                // (accelerator.md §3); a small one is a single inline address.
                let segments = iova.map_or(Segments::None, |base| {
                    Segments::of(base + done * bs, (n * bs) as usize)
                });
                out.push(child(op, fua, lba + done, n, segments));
                done += n;
            }
            out
        };
        match &req.op {
            StoreOp::CompareAndWrite { lba, blocks, fua } => {
                let blocks = u64::from(*blocks);
                if !in_range(*lba, blocks) {
                    return Err(StoreStatus::OutOfRange);
                }
                if blocks > u64::from(self.info.compare_and_write_blocks) {
                    return Err(StoreStatus::InvalidRequest);
                }
                let (iova, _) = buffer_iova(2 * blocks * bs)?;
                let mut out = Children::default();
                out.push(child(
                    DeviceOp::CompareAndWrite,
                    *fua,
                    *lba,
                    blocks,
                    Segments::of(iova, (2 * blocks * bs) as usize),
                ));
                Ok(out)
            }
            StoreOp::Read { lba, blocks }
            | StoreOp::Write { lba, blocks, .. }
            | StoreOp::Compare { lba, blocks } => {
                let blocks = u64::from(*blocks);
                if !in_range(*lba, blocks) {
                    return Err(StoreStatus::OutOfRange);
                }
                let (iova, _) = buffer_iova(blocks * bs)?;
                Ok(match req.op {
                    StoreOp::Write { fua, .. } => split(DeviceOp::Write, fua, *lba, blocks, Some(iova)),
                    _ => split(DeviceOp::Read, false, *lba, blocks, Some(iova)),
                })
            }
            StoreOp::WriteSame { lba, blocks } => {
                let blocks = u64::from(*blocks);
                if !in_range(*lba, blocks) {
                    return Err(StoreStatus::OutOfRange);
                }
                let (iova, _) = buffer_iova(bs)?;
                let per = write_same_chunk(self.info);
                let mut out = Children::default();
                let mut done = 0;
                while done < blocks {
                    let n = (blocks - done).min(per);
                    let segments = match pattern.and_then(IoBuffer::iova) {
                        // The pattern expanded in scratch memory, shared by every chunk.
                        Some(expanded) => Segments::Whole {
                            iova: expanded,
                            len: (n * bs) as u32,
                        },
                        // One scatter list repeats the pattern block (accelerator.md §3).
                        None => Segments::Repeat {
                            iova,
                            block: bs as u32,
                            count: n as u32,
                        },
                    };
                    out.push(child(DeviceOp::Write, false, lba + done, n, segments));
                    done += n;
                }
                Ok(out)
            }
            StoreOp::WriteZeroes {
                lba,
                blocks,
                deallocate,
            } => {
                let blocks = u64::from(*blocks);
                if !in_range(*lba, blocks) {
                    return Err(StoreStatus::OutOfRange);
                }
                if !self.write_zeroes {
                    // No write zeroes on the device (NVMe: ONCS bit 3 clear, or a WZSL below one
                    // block): WRITE SAME's writes, of the zero chunk mapped by `start`.
                    let iova = self
                        .zeroes
                        .as_ref()
                        .map(MappedRegion::iova)
                        .ok_or(StoreStatus::DeviceError)?;
                    let per = write_same_chunk(self.info);
                    let mut out = Children::default();
                    let mut done = 0;
                    while done < blocks {
                        let n = (blocks - done).min(per);
                        let segments = Segments::Whole {
                            iova,
                            len: (n * bs) as u32,
                        };
                        out.push(child(DeviceOp::Write, false, lba + done, n, segments));
                        done += n;
                    }
                    return Ok(out);
                }
                // Always the device's write zeroes, which guarantees zeroes: a deallocation does
                // not (NVMe's Dataset Management is advisory, NVMe 1.4 §6.7, and a namespace
                // whose DLFEAT is 000b may return the old data). The device deallocates as
                // well only where the blocks still read zeroes (NVMe: DEAC with DLFEAT 001b).
                let op = DeviceOp::WriteZeroes {
                    deallocate: *deallocate && self.info.supports_unmap,
                };
                // At MAXIMUM TRANSFER, as before, and at what the device zeroes in one: an NVMe
                // controller's WZSL (NVM Command Set Specification 1.0 §4.1.5.3), above which it
                // refuses the command with Invalid Field in Command, as Linux caps a write
                // zeroes at it (`max_zeroes_sectors`, `nvme_init_non_mdts_limits()`).
                let per = max_blocks.min(u64::from(self.write_zeroes_blocks));
                Ok(pieces(*lba, blocks, per)
                    .map(|(at, n)| child(op, false, at, n, Segments::None))
                    .collect())
            }
            StoreOp::Unmap { ranges } => {
                // A deallocation moves no data, so MAXIMUM TRANSFER does not bound it: one device
                // request per range, up to what a request's byte length holds (u32; SCA-1's
                // DEALLOCATE takes that much) and what the device takes in one: an NVMe
                // controller's DMRSL and DMSL (NVM Command Set Specification 1.0 §4.1.5.3),
                // above which it refuses the command with Invalid Field in Command, as Linux
                // caps a discard at DMRSL (`nvme_config_discard()`). A thin disk's
                // whole-capacity FORMAT UNIT of a 4 TB namespace is then about a thousand
                // requests where the device sets no limit, not two million of MAXIMUM TRANSFER
                // each. The SCSI limits (VPD B0h) stay as configured: this split serves any
                // UNMAP they allow.
                let per = (u64::from(u32::MAX) / bs).min(u64::from(self.deallocate_blocks));
                let mut out = Children::default();
                for &(lba, blocks) in ranges.iter() {
                    let blocks = u64::from(blocks);
                    if !in_range(lba, blocks) {
                        return Err(StoreStatus::OutOfRange);
                    }
                    out.extend(
                        pieces(lba, blocks, per)
                            .map(|(at, n)| child(DeviceOp::Deallocate, false, at, n, Segments::None)),
                    );
                }
                Ok(out)
            }
            StoreOp::Flush => {
                let mut out = Children::default();
                out.push(child(DeviceOp::Flush, false, 0, 0, Segments::None));
                Ok(out)
            }
            // Not offered on boards (reports_lba_status = false): the engine never sends it.
            StoreOp::LbaStatus { .. } => Err(StoreStatus::InvalidRequest),
            // One device copy per `max_copy_blocks`, no data segments. The ranges must not
            // overlap (the handler sends overlapping copies back to the copy manager): the
            // children may then run in any order.
            StoreOp::Copy {
                src_lba,
                dst_lba,
                blocks,
            } => {
                let per = u64::from(self.copy_blocks);
                let blocks = u64::from(*blocks);
                if per == 0 {
                    return Err(StoreStatus::InvalidRequest);
                }
                if !in_range(*src_lba, blocks) || !in_range(*dst_lba, blocks) {
                    return Err(StoreStatus::OutOfRange);
                }
                let mut out = Children::default();
                let mut done = 0;
                while done < blocks {
                    let n = (blocks - done).min(per);
                    let op = DeviceOp::Copy {
                        src_lba: src_lba + done,
                    };
                    out.push(child(op, false, dst_lba + done, n, Segments::None));
                    done += n;
                }
                Ok(out)
            }
            // VERIFY with BYTCHK 0 (SBC-4): the blocks are read from the medium, so one the
            // device cannot read fails with its MEDIUM ERROR. SCA-1 1.0 has no media verify and
            // NVMe's Verify is optional, so the device reads them into a scratch chunk:
            // the first [`VERIFY_WINDOW`] pieces here, the rest as pieces end (`child_done`).
            StoreOp::Verify { lba, blocks } => {
                if !in_range(*lba, u64::from(*blocks)) {
                    return Err(StoreStatus::OutOfRange);
                }
                if *blocks == 0 {
                    return Ok(Children::default());
                }
                let iova = self
                    .verify_scratch
                    .as_ref()
                    .map(MappedRegion::iova)
                    .ok_or(StoreStatus::DeviceError)?;
                let mut cursor = VerifyCursor {
                    next: *lba,
                    left: u64::from(*blocks),
                };
                let per = write_same_chunk(self.info);
                Ok(std::iter::from_fn(|| cursor.take(per))
                    .take(VERIFY_WINDOW as usize)
                    .map(|(lba, n)| verify_read(req.tag, lba, n, bs, iova))
                    .collect())
            }
        }
    }

    fn finish_parent(&mut self, tag: u64, status: StoreStatus) {
        self.done.push(StoreCompletion { tag, status });
    }

    fn start(&mut self, token: &mut crate::store::StoreToken<'_>, req: StoreRequest) {
        if self.gone {
            self.counters.gone_failures.fetch_add(1, Ordering::Relaxed);
            return self.finish_parent(req.tag, StoreStatus::DeviceError);
        }
        let (req, compare) = match self.compare_scratch(token, req) {
            Ok(pair) => pair,
            Err(failed) => return self.finish_parent(failed.tag, failed.status),
        };
        let scratch = match self.expand_write_same(token, &req) {
            Ok(scratch) => scratch,
            Err(status) => return self.finish_parent(req.tag, status),
        };
        if let Err(status) = self.map_chunks_for(&req.op) {
            return self.finish_parent(req.tag, status);
        }
        let compare_and_write = match self.compare_and_write_scratch(token, &req) {
            Ok(caw) => caw,
            Err(status) => return self.finish_parent(req.tag, status),
        };
        let children = match self.plan(&req, scratch.as_ref()) {
            Ok(c) => c,
            Err(status) => return self.finish_parent(req.tag, status),
        };
        if children.is_empty() {
            return self.finish_parent(req.tag, StoreStatus::Good);
        }
        let fua_flush = match req.op {
            StoreOp::Write { lba, fua: true, .. } | StoreOp::CompareAndWrite { lba, fua: true, .. }
                if self.fua_by_flush =>
            {
                FuaFlush::After { lba }
            }
            _ => FuaFlush::None,
        };
        // A VERIFY goes on after the pieces `plan` made, whatever they covered.
        let verify = match req.op {
            StoreOp::Verify { lba, blocks } => {
                let planned = children.blocks(self.bs()).min(u64::from(blocks));
                Some(VerifyCursor {
                    next: lba + planned,
                    left: u64::from(blocks) - planned,
                })
            }
            _ => None,
        };
        self.parents.insert(
            req.tag,
            Parent {
                remaining: children.len(),
                status: StoreStatus::Good,
                fua_flush,
                compare,
                compare_and_write,
                verify,
                scratch,
            },
        );
        for c in children {
            self.enqueue(c);
        }
    }

    /// WRITE SAME on a device that cannot repeat one block through a scatter list: expand the
    /// pattern into scratch memory next to the command buffer (one chunk, read by every child).
    fn expand_write_same(
        &self,
        token: &mut crate::store::StoreToken<'_>,
        req: &StoreRequest,
    ) -> Result<Option<IoBuffer>, StoreStatus> {
        let StoreOp::WriteSame { blocks, .. } = req.op else {
            return Ok(None);
        };
        if self.repeats_blocks {
            return Ok(None);
        }
        let per = write_same_chunk(self.info);
        let data = req.buffer.as_ref().ok_or(StoreStatus::InvalidRequest)?;
        let bs = self.bs() as usize;
        if data.len < bs {
            return Err(StoreStatus::InvalidRequest);
        }
        let len = (u64::from(blocks).min(per) as usize).max(1) * bs;
        let scratch = data
            .buffer
            .pool_sibling(token, len)
            .ok_or(StoreStatus::DeviceError)?;
        let scratch = IoBuffer::new(scratch, len);
        let mut block = vec![0u8; bs];
        data.read_at(0, &mut block);
        for i in 0..len / bs {
            scratch.write_at(i * bs, &block);
        }
        Ok(Some(scratch))
    }

    /// One WRITE SAME chunk of zero blocks ([`write_same_chunk`]), mapped for the device.
    /// Map, at their first use, the chunks `op` needs the device to reach besides the command's
    /// buffer: the zero blocks an emulated WRITE ZEROES writes from, the scratch VERIFY reads into.
    fn map_chunks_for(&mut self, op: &StoreOp) -> Result<(), StoreStatus> {
        let (slot, what) = match op {
            StoreOp::WriteZeroes { .. } if !self.write_zeroes => {
                (&self.zeroes, "zero blocks for a write zeroes")
            }
            StoreOp::Verify { blocks, .. } if *blocks > 0 => {
                (&self.verify_scratch, "the scratch a verify reads into")
            }
            _ => return Ok(()),
        };
        if slot.is_some() {
            return Ok(());
        }
        let region = self.map_chunk().map_err(|e| {
            log::error!(
                "{} queue {}: mapping {what}: {e}",
                self.board.id(),
                self.queue.index()
            );
            StoreStatus::DeviceError
        })?;
        match op {
            StoreOp::WriteZeroes { .. } => self.zeroes = Some(region),
            _ => self.verify_scratch = Some(region),
        }
        Ok(())
    }

    /// One WRITE SAME chunk of fresh memory, mapped for the device: the zero blocks emulated
    /// WRITE ZEROES writes from (fresh anonymous memory is zeroes), the blocks VERIFY reads into.
    fn map_chunk(&self) -> Result<MappedRegion, scst_accel_dma::DmaError> {
        let len = write_same_chunk(self.info) as usize * self.bs() as usize;
        let region = DmaRegion::new(len)?;
        MappedRegion::new(
            region,
            scst_accel_boards::sca1::device_mapper(Arc::clone(self.board.device())),
            Arc::clone(self.board.iovas()),
        )
    }

    /// COMPARE AND WRITE in the device: scratch for the re-read a miscompare needs, next to
    /// the command buffer (allocated up front: a completion has no pool token to take it).
    fn compare_and_write_scratch(
        &self,
        token: &mut crate::store::StoreToken<'_>,
        req: &StoreRequest,
    ) -> Result<Option<DeviceCompareAndWrite>, StoreStatus> {
        let StoreOp::CompareAndWrite { lba, blocks, fua } = req.op else {
            return Ok(None);
        };
        let data = req.buffer.clone().ok_or(StoreStatus::InvalidRequest)?;
        let len = u64::from(blocks) * self.bs();
        let scratch = data
            .buffer
            .pool_sibling(token, len as usize)
            .ok_or(StoreStatus::DeviceError)?;
        Ok(Some(DeviceCompareAndWrite {
            data,
            scratch: IoBuffer::new(scratch, len as usize),
            lba,
            blocks,
            fua,
            attempts: 1,
            rereading: false,
        }))
    }

    /// The next step of a device COMPARE AND WRITE whose outstanding child ended with
    /// `status`: after a miscompare, read the range; after that read, find the first
    /// differing byte, or (none: the blocks changed since) send the fused command again.
    /// `None` when a step was queued and the request goes on.
    fn compare_and_write_step(
        &mut self,
        tag: u64,
        mut caw: DeviceCompareAndWrite,
        status: StoreStatus,
        fua_flush: FuaFlush,
    ) -> Option<StoreStatus> {
        let bs = self.bs();
        let (op, length, segments) = match (caw.rereading, status) {
            (false, StoreStatus::Miscompare { .. }) => {
                // `None` here means "a step was queued": a buffer without an IOVA (never the
                // case for a pool mapped for the device) must end the request, not strand it.
                let Some(iova) = caw.scratch.iova() else {
                    return Some(StoreStatus::InvalidRequest);
                };
                caw.rereading = true;
                let len = u64::from(caw.blocks) * bs;
                (DeviceOp::Read, len, Segments::of(iova, len as usize))
            }
            (true, StoreStatus::Good) => {
                let found = compare(&caw.data, &caw.scratch);
                if found != StoreStatus::Good {
                    return Some(found);
                }
                if caw.attempts >= CAW_ATTEMPTS {
                    log::warn!(
                        "queue {}: COMPARE AND WRITE at LBA {}: the device reported a miscompare \
                         {} times and the blocks read back equal each time; answering MISCOMPARE \
                         without the offset",
                        self.queue.index(),
                        caw.lba,
                        caw.attempts
                    );
                    return Some(StoreStatus::Miscompare { offset: None });
                }
                let Some(iova) = caw.data.iova() else {
                    return Some(StoreStatus::InvalidRequest);
                };
                caw.attempts += 1;
                caw.rereading = false;
                let len = u64::from(caw.blocks) * bs;
                (
                    DeviceOp::CompareAndWrite,
                    len,
                    Segments::of(iova, 2 * len as usize),
                )
            }
            (_, status) => return Some(status),
        };
        let child = Child {
            parent: tag,
            op,
            fua: caw.fua && op == DeviceOp::CompareAndWrite,
            lba: caw.lba,
            length: length as u32,
            segments,
        };
        self.next_step(tag, child, fua_flush, Some(caw));
        None
    }

    /// Queue `child` as the one outstanding device request of request `tag`, whose earlier
    /// ones have all completed: its next step.
    fn next_step(&mut self, tag: u64, child: Child, fua_flush: FuaFlush, caw: Option<DeviceCompareAndWrite>) {
        self.enqueue(child);
        self.parents.insert(
            tag,
            Parent {
                remaining: 1,
                status: StoreStatus::Good,
                fua_flush,
                compare: None,
                compare_and_write: caw,
                verify: None,
                scratch: None,
            },
        );
    }

    /// Queue a device request behind the backlog (submitted by the next `pump`).
    fn enqueue(&mut self, child: Child) {
        let id = self.next_child;
        self.next_child += 1;
        self.children.insert(id, child);
        self.backlog.push_back(id);
    }

    /// Compare reads the medium into scratch memory: allocate it next to the command buffer.
    fn compare_scratch(
        &self,
        token: &mut crate::store::StoreToken<'_>,
        req: StoreRequest,
    ) -> Result<(StoreRequest, Option<ComparePair>), StoreCompletion> {
        let StoreOp::Compare { blocks, .. } = req.op else {
            return Ok((req, None));
        };
        let Some(data) = req.buffer.clone() else {
            return Err(StoreCompletion {
                tag: req.tag,
                status: StoreStatus::InvalidRequest,
            });
        };
        let len = u64::from(blocks) * self.bs();
        let Some(scratch) = data.buffer.pool_sibling(token, len as usize) else {
            return Err(StoreCompletion {
                tag: req.tag,
                status: StoreStatus::DeviceError,
            });
        };
        let scratch = IoBuffer::new(scratch, len as usize);
        let read = StoreRequest {
            tag: req.tag,
            op: req.op.clone(),
            buffer: Some(scratch.clone()),
        };
        Ok((read, Some((data, scratch))))
    }

    /// Push backlog children into the ring; one doorbell for the batch.
    fn pump(&mut self) {
        while let Some(&id) = self.backlog.front() {
            let Some(c) = self.children.get(&id) else {
                self.backlog.pop_front();
                continue;
            };
            let request = DeviceRequest {
                user_tag: id,
                op: c.op,
                fua: c.fua,
                lba: c.lba,
                length: c.length,
                segments: c.segments.describe(&mut self.segments),
            };
            match self.queue.submit(&request) {
                Ok(()) => {
                    self.backlog.pop_front();
                }
                Err(SubmitError::Full) | Err(SubmitError::NotRunning) => break,
                Err(
                    e @ (SubmitError::TooManySegments { .. }
                    | SubmitError::Unaligned(_)
                    | SubmitError::Unsupported(_)),
                ) => {
                    log::error!("queue {}: {e}", self.queue.index());
                    self.backlog.pop_front();
                    self.child_done(id, StoreStatus::InvalidRequest);
                }
            }
        }
        self.queue.ring_doorbell();
    }

    fn child_done(&mut self, id: u64, status: StoreStatus) {
        let Some(child) = self.children.remove(&id) else {
            return;
        };
        let Some(parent) = self.parents.get_mut(&child.parent) else {
            return;
        };
        // Pieces complete in any order (an NVMe controller's own): the request answers with
        // its first failed block, not with the first failure to arrive.
        parent.status = parent.status.merge_piece(status);
        parent.remaining -= 1;
        // A VERIFY reads on while its pieces succeed, one new piece for each that ended.
        let per = write_same_chunk(self.info);
        let next = match (parent.status, parent.verify.as_mut()) {
            (StoreStatus::Good, Some(cursor)) => cursor.take(per),
            _ => None,
        };
        if let Some((lba, n)) = next {
            // Mapped by `start` before the first window: without it the rest is unread, and
            // the VERIFY must not answer GOOD.
            match self.verify_scratch.as_ref().map(MappedRegion::iova) {
                Some(iova) => {
                    parent.remaining += 1;
                    let piece = verify_read(child.parent, lba, n, self.bs(), iova);
                    self.enqueue(piece);
                }
                None => parent.status = parent.status.merge_piece(StoreStatus::DeviceError),
            }
        }
        let Some(parent) = self.parents.get_mut(&child.parent) else {
            return;
        };
        if parent.remaining > 0 {
            return;
        }
        let Some(parent) = self.parents.remove(&child.parent) else {
            return;
        };
        let fua_flush = parent.fua_flush;
        if let Some(caw) = parent.compare_and_write {
            if let Some(status) = self.compare_and_write_step(child.parent, caw, parent.status, fua_flush) {
                self.complete(child.parent, status, fua_flush);
            }
            return;
        }
        let status = match (parent.status, parent.compare) {
            (StoreStatus::Good, Some((data, scratch))) => compare(&data, &scratch),
            (status, _) => status,
        };
        self.complete(child.parent, status, fua_flush);
    }

    /// A request whose device requests have all ended with `status`: finished, or, a FUA write
    /// on a device that ignores FUA that succeeded, followed by its Flush ([`FuaFlush`]).
    fn complete(&mut self, tag: u64, status: StoreStatus, fua_flush: FuaFlush) {
        match (fua_flush, status) {
            (FuaFlush::After { lba }, StoreStatus::Good) => self.flush_after_fua(tag, lba),
            // The data may not be stable: the write failed, at its first block.
            (FuaFlush::Flushing { lba }, StoreStatus::WriteError { .. }) => {
                self.finish_parent(tag, StoreStatus::WriteError { lba });
            }
            _ => self.finish_parent(tag, status),
        }
    }

    /// Queue the Flush that makes request `tag`, a FUA write at `lba` the device completed,
    /// durable: the request completes when the Flush does (NVMe 1.4 §6.8: a Flush commits
    /// every write completed before it was submitted).
    fn flush_after_fua(&mut self, tag: u64, lba: u64) {
        let flush = Child {
            parent: tag,
            op: DeviceOp::Flush,
            fua: false,
            lba: 0,
            length: 0,
            segments: Segments::None,
        };
        self.next_step(tag, flush, FuaFlush::Flushing { lba }, None);
    }

    fn device_status(&self, c: &DeviceCompletion, child: Option<&Child>) -> StoreStatus {
        // MEDIUM ERROR's INFORMATION: the failing block where the device says which one.
        let lba = child.map_or(0, |ch| {
            let blocks = u64::from(ch.length) / u64::from(self.info.block_size.max(1));
            // A copy's read error is about its source blocks, its write error its destination.
            let first = match ch.op {
                DeviceOp::Copy { src_lba } if c.status == DeviceStatus::ReadError => src_lba,
                _ => ch.lba,
            };
            scst_accel_boards::engine::failing_lba(first, blocks, c.failing_lba_low)
        });
        match c.status {
            DeviceStatus::Ok => StoreStatus::Good,
            DeviceStatus::LbaRange => StoreStatus::OutOfRange,
            DeviceStatus::ReadError => StoreStatus::ReadError { lba },
            DeviceStatus::WriteError => StoreStatus::WriteError { lba },
            DeviceStatus::Aborted => StoreStatus::Aborted,
            // Where: found by the re-read of `compare_and_write_step`. Only a compare and write
            // can miscompare: from any other request it is a device that lies.
            DeviceStatus::Miscompare if child.is_some_and(|ch| ch.op == DeviceOp::CompareAndWrite) => {
                StoreStatus::Miscompare { offset: None }
            }
            DeviceStatus::Miscompare => StoreStatus::DeviceError,
            DeviceStatus::NotReady => StoreStatus::NotReady,
            DeviceStatus::FormatInProgress => StoreStatus::FormatInProgress,
            DeviceStatus::InvalidField => StoreStatus::InvalidField,
            // A thin namespace out of capacity: out of space at the request's first block.
            DeviceStatus::CapacityExceeded => StoreStatus::SpaceExhausted { lba },
            DeviceStatus::ReservationConflict => StoreStatus::ReservationConflict,
            DeviceStatus::AccessDenied => StoreStatus::AccessDenied,
            DeviceStatus::WriteProtected => StoreStatus::WriteProtected,
            DeviceStatus::Other(_) => StoreStatus::DeviceError,
        }
    }

    fn reap_device(&mut self) -> usize {
        let n = self.queue.reap(&mut self.completions);
        let unknown = self.queue.unknown_tags();
        let untrusted = unknown.saturating_sub(self.seen_unknown);
        if untrusted > 0 {
            self.counters.unknown_tags.fetch_add(untrusted, Ordering::Relaxed);
            self.seen_unknown = unknown;
        }
        // Reuse the completion buffer: no allocation per reap on the I/O path.
        let mut completions = std::mem::take(&mut self.completions);
        for c in completions.drain(..) {
            let status = self.device_status(&c, self.children.get(&c.user_tag));
            // A miscompare is an answer, not a device error.
            if !matches!(status, StoreStatus::Good | StoreStatus::Miscompare { .. }) {
                self.counters.device_errors.fetch_add(1, Ordering::Relaxed);
                log::warn!(
                    "queue {}: device status {:?} for request {}",
                    self.queue.index(),
                    c.status,
                    c.user_tag
                );
            }
            self.child_done(c.user_tag, status);
        }
        self.completions = completions;
        self.weigh_trust(untrusted, n as u64);
        n
    }

    /// Count untrusted and accepted completions in the [`TRUST_WINDOW`]; past the threshold
    /// ([`UNTRUSTED_MIN`], [`UNTRUSTED_SHARE`]) climb the recovery ladder.
    fn weigh_trust(&mut self, untrusted: u64, accepted: u64) {
        let now = Instant::now();
        if now.duration_since(self.trust_window.0) >= TRUST_WINDOW {
            self.trust_window = (now, 0, 0);
        }
        self.trust_window.1 += untrusted;
        self.trust_window.2 += accepted;
        let (_, bad, good) = self.trust_window;
        if bad >= UNTRUSTED_MIN && bad * UNTRUSTED_SHARE > good {
            self.trust_window = (now, 0, 0);
            self.counters.untrusted_recoveries.fetch_add(1, Ordering::Relaxed);
            self.recover(&format!(
                "the device posted {bad} completions that cannot be trusted (unknown or duplicated \
                 tags, entries that are not their request's) against {good} accepted within {TRUST_WINDOW:?}"
            ));
        }
    }

    /// Fail every request of this queue with `status` (after a stop or reset proved no DMA).
    fn fail_all(&mut self, status: StoreStatus) -> usize {
        let abandoned = self.queue.abandon_all();
        let ids: Vec<u64> = self.children.keys().copied().collect();
        self.backlog.clear();
        for id in ids {
            self.child_done(id, status);
        }
        abandoned.len()
    }

    /// A reset of the function proved the end of DMA for what this queue submitted: fail with
    /// `status` the device requests the device may have seen (submitted), and with them the
    /// rest of their store requests, which are answered failed anyway (submitting the rest
    /// would only make the answer wait for the restart, and write part of a failed command).
    /// Keep the store requests none of whose device requests was submitted: the device never
    /// saw them, so no DMA of theirs can be under way, and the queue submits them once it runs
    /// again. They stay bounded as any request waiting for the queue: the restart's give-up
    /// ([`AccelQueue::restart_queue`]), the frontend's deadline and teardown (`abort_all`),
    /// and their own deadline once submitted. Their order against the failed ones needs no
    /// keeping: SCST's core orders commands before the handler sees them
    /// (`has_own_order_mgmt` 0), so what the store holds at once may run in any order; a kept
    /// FLUSH makes stable what one sent after the restart would (failing it guarded nothing),
    /// and a kept write keeps its FUA. Returns how many device requests were failed.
    fn fail_submitted(&mut self, status: StoreStatus) -> usize {
        // What the engine held goes with the reset; the store's children say what was
        // submitted (the engine may have completed some without our having reaped them).
        let _ = self.queue.abandon_all();
        let (mut failed, parents) = self.on_device();
        failed.extend(self.take_from_backlog(|parent| parents.contains(&parent)));
        let n = failed.len();
        for id in failed {
            self.child_done(id, status);
        }
        n
    }

    /// Fail with `status` the store requests none of whose device requests is on the device:
    /// all they have left wait in the backlog (any submitted before has completed), so no DMA
    /// of theirs can be under way, and they need no proof that it ended. A store request with
    /// a device request on the device is left whole (its waiting ones too: failed with it once
    /// the proof comes). Returns how many store requests were answered.
    fn fail_unsubmitted(&mut self, status: StoreStatus) -> usize {
        let (_, parents) = self.on_device();
        let failed = self.take_from_backlog(|parent| !parents.contains(&parent));
        let before = self.parents.len();
        for id in failed {
            self.child_done(id, status);
        }
        before - self.parents.len()
    }

    /// The device requests submitted to the device (every child not waiting in the backlog),
    /// and their store requests.
    fn on_device(&self) -> (Vec<u64>, IntSet<u64>) {
        let waiting: IntSet<u64> = self.backlog.iter().copied().collect();
        let mut submitted = Vec::new();
        let mut parents = IntSet::default();
        for (&id, child) in &self.children {
            if !waiting.contains(&id) {
                submitted.push(id);
                parents.insert(child.parent);
            }
        }
        (submitted, parents)
    }

    /// Take out of the backlog, and return, the device requests whose store request `take`
    /// chooses.
    fn take_from_backlog(&mut self, take: impl Fn(u64) -> bool) -> Vec<u64> {
        let children = &self.children;
        let mut taken = Vec::new();
        self.backlog.retain(|id| {
            let chosen = children.get(id).is_some_and(|c| take(c.parent));
            if chosen {
                taken.push(*id);
            }
            !chosen
        });
        taken
    }

    /// A request missed its deadline. First rung: ask the device to abort the late requests
    /// (NVMe ABORT) and wait, bounded, for their aborted completions; if the device refuses or
    /// they do not come, climb the rest of the ladder ([`AccelQueue::recover`]).
    fn escalate_timeout(&mut self) {
        let cutoff = Instant::now() - self.config.command_timeout;
        let late = self.queue.expired(cutoff);
        match self.device_call(|q| q.queue.abort(&late)) {
            Ok(n) if n > 0 && n == late.len() => {
                let deadline = Instant::now() + self.config.command_timeout.min(Duration::from_secs(1));
                while Instant::now() < deadline {
                    self.reap_device();
                    if late.iter().all(|id| !self.children.contains_key(id)) {
                        self.counters.device_aborts.fetch_add(n as u64, Ordering::Relaxed);
                        log::warn!(
                            "{} queue {}: {n} late requests aborted on the device",
                            self.board.id(),
                            self.queue.index()
                        );
                        return;
                    }
                    // A wait on the device: no lock is held here.
                    scst_accel_hal::locks::sleep(Duration::from_millis(1));
                }
            }
            Ok(_) => {}
            Err(e) => {
                log::warn!(
                    "{} queue {}: abort failed: {e}",
                    self.board.id(),
                    self.queue.index()
                );
                if matches!(e, EngineError::Timeout { .. }) {
                    // The device does not answer admin commands: a stop (queue deletion) would
                    // time out the same way, so go straight to the reset.
                    return self
                        .recover_by_reset("a request exceeded the command timeout and the abort timed out");
                }
            }
        }
        self.recover("a request exceeded the command timeout")
    }

    /// The last rungs without the stop: reset the function (the proof no DMA happens), fail
    /// what was in flight, restart.
    fn recover_by_reset(&mut self, why: &str) {
        log::error!(
            "{} queue {}: {why}; {} requests in flight: resetting the function",
            self.board.id(),
            self.queue.index(),
            self.queue.in_flight()
        );
        log::error!("{}", self.queue.dump());
        if self.reset_function() {
            let n = self.fail_all(StoreStatus::Aborted);
            self.counters.timeouts.fetch_add(n as u64, Ordering::Relaxed);
            self.restart_queue();
        } else {
            self.give_up(why);
        }
    }

    /// Escalate (architecture.md §6): stop the queue; if the engine does not go idle, or the
    /// function is FATAL, reset and re-enable the function; then fail what was in flight
    /// (ABORTED: no DMA can happen for it any more) and restart. A gone device fails
    /// everything, for good.
    fn recover(&mut self, why: &str) {
        self.recover_with(why, None)
    }

    /// [`AccelQueue::recover`] with the stop bounded by `stop_bound` instead of the device's
    /// own timeout (the teardown resets a device that does not stop promptly).
    fn recover_with(&mut self, why: &str, stop_bound: Option<Duration>) {
        log::error!(
            "{} queue {}: {why}; {} requests in flight, {} waiting: stopping the queue",
            self.board.id(),
            self.queue.index(),
            self.queue.in_flight(),
            self.backlog.len()
        );
        // The register and ring state at the moment of escalation (issue 4 §2).
        log::error!("{}", self.board.dump_registers());
        log::error!("{}", self.queue.dump());
        let stopped = self.stop_engine(stop_bound);
        let mut alive = match stopped {
            Ok(()) => {
                self.proof_pending = None;
                self.counters.queue_stops.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(EngineError::Gone { .. }) => false,
            Err(e @ EngineError::StopPending { .. }) => {
                // Another thread's reset is under way and will be the proof: a reset of our own
                // would outlast the caller's bound. Nothing is failed or released meanwhile.
                log::error!(
                    "{e}: {} requests of queue {} held until then",
                    self.parents.len(),
                    self.queue.index()
                );
                self.proof_pending.get_or_insert_with(Instant::now);
                return;
            }
            Err(e) => {
                log::error!("{}: {e}; resetting the function", self.board.id());
                self.reset_function()
            }
        };
        if alive && self.board.fatal().is_some() {
            alive = self.reset_function();
        }
        if alive {
            let n = self.fail_all(StoreStatus::Aborted);
            self.counters.timeouts.fetch_add(n as u64, Ordering::Relaxed);
            self.restart_queue();
        } else {
            self.give_up(why);
        }
    }

    /// Restart after a stop or reset. While a reset or recovery of the function runs on another
    /// thread the queue refuses ([`EngineError::ResetUnderWay`]): it stays stopped, its
    /// requests waiting, and the health check retries. A refusal is not counted as a failure,
    /// but it is bounded in total: the refusal ends only when the recovery does, which depends
    /// on a function reset with no bound of its own, and recoveries of other queues may follow
    /// each other. So from the first refusal on, the queue keeps retrying until a restart
    /// succeeds, and gives up (as below) once restarts have not succeeded for longer than
    /// [`AccelQueue::refusal_bound`]: one whole recovery
    /// ([`Controller::recovery_bound`](scst_accel_boards::engine::Controller::recovery_bound))
    /// and twice the command timeout. Ordinary failures after a refusal go on with that run
    /// (they do not start it again), and attempts further apart than twice the command timeout
    /// (the queue idle in between) start it again.
    /// A restart can also fail (an NVMe queue is re-created through the admin queue, the
    /// controller may be disabled); it is retried the same way. A restart that keeps failing
    /// for twice the command timeout, or a gone device, makes the store give up: failures
    /// further apart than that (the queue idle in between, so nothing retried) start the count
    /// again.
    ///
    /// A restarted queue has seen every reset so far: no restart runs while a recovery is under
    /// way (rule 5, docs/boards.md), so the count read here, before anything is submitted, is
    /// the one the queue runs under, and a later move of it is a reset after this restart.
    /// (Read after: a whole recovery that completes in between stopped the queue without the
    /// count saying so here. The queue notices it itself (NVMe by its controller's count,
    /// SCA-1 by the resets started since its restart): it takes no request, and is restarted
    /// once it has none in flight; requests the NVMe queue took before that recovery meet
    /// their deadline and escalate, the stop then proving the end of DMA. Nothing is released
    /// early either way.) Without this, a queue restarted by a path that did not read the
    /// count (a stop that succeeded after another queue's recovery) kept the old one, and its
    /// next health check failed the requests submitted since as ABORTED while the device ran
    /// them.
    fn restart_queue(&mut self) -> bool {
        let gap = self.config.command_timeout * 2;
        let restarted = self.restart_engine();
        match restarted {
            Ok(()) => {
                self.seen_resets = self.board.reset_count();
                self.restart_failing_since = None;
                self.restart_refused_since = None;
                true
            }
            Err(e @ EngineError::ResetUnderWay { .. }) if !self.board.is_gone() => {
                // Not yet, rather than failed: neither a failure of the run nor the end of
                // one. But the recovery under way ends only when its function reset does,
                // which nothing of ours bounds, and another may follow it: the refusals are
                // bounded in total.
                let now = Instant::now();
                let since = failing_since(self.restart_refused_since, now, gap);
                self.restart_refused_since = Some((since, now));
                let bound = self.refusal_bound();
                if since.elapsed() >= bound {
                    log::error!(
                        "{} queue {}: {e}; restarts refused or failing for {:?}, longer than a \
                         recovery may take and twice the command timeout ({bound:?})",
                        self.board.id(),
                        self.queue.index(),
                        since.elapsed()
                    );
                    self.give_up("the queue's restarts were refused for longer than a recovery may take");
                } else {
                    log::debug!("queue {}: {e}", self.queue.index());
                }
                false
            }
            Err(e) => {
                let now = Instant::now();
                let since = failing_since(self.restart_failing_since, now, gap);
                self.restart_failing_since = Some((since, now));
                // A run of refusals goes on through failures: they do not start it again.
                let refused = self.restart_refused_since.map(|(first, last)| {
                    let first = failing_since(Some((first, last)), now, gap);
                    self.restart_refused_since = Some((first, now));
                    first
                });
                log::warn!(
                    "{} queue {}: restart failed: {e}; retrying ({:?} so far)",
                    self.board.id(),
                    self.queue.index(),
                    since.elapsed()
                );
                if e.is_gone()
                    || self.board.is_gone()
                    || since.elapsed() >= gap
                    || refused.is_some_and(|first| first.elapsed() >= self.refusal_bound())
                {
                    self.give_up("the queue could not be restarted");
                }
                false
            }
        }
    }

    /// How long restarts may go without succeeding once one was refused because a recovery
    /// was under way ([`AccelQueue::restart_queue`]): one whole recovery of the function
    /// ([`Controller::recovery_bound`](scst_accel_boards::engine::Controller::recovery_bound))
    /// and the give-up bound of ordinary restart failures, twice the command timeout.
    fn refusal_bound(&self) -> Duration {
        self.board.recovery_bound() + self.config.command_timeout * 2
    }

    /// The device cannot serve any more: fail everything, for good, and tell the frontend
    /// ([`Store::failure`]) so it runs the teardown. Requests the device may still hold are
    /// failed, their buffers released for reuse, only once no more DMA for them can happen: the
    /// function is reset, or its bus mastering cleared and read back, as the release does; for
    /// a device whose BAR reads all-ones, bus mastering is cleared, or its config space reads
    /// all-ones too ([`AccelQueue::dark_bar_stops_dma`]). Without a proof they are held: never
    /// answered here, their buffers never reused (the frontend's teardown counts them as
    /// zombies and leaks the pool rather than unmap what the device may write).
    fn give_up(&mut self, why: &str) {
        self.gone = true;
        let stopped = |q: &mut Self| {
            if q.board.is_gone() {
                q.dark_bar_stops_dma()
            } else {
                q.stop_dma()
            }
        };
        if self.queue.in_flight() > 0 && !stopped(self) {
            self.dma_unproven = true;
            let backlog: Vec<u64> = self.backlog.drain(..).collect();
            for id in backlog {
                self.child_done(id, StoreStatus::DeviceError);
            }
            log::error!(
                "{} queue {}: {} requests stay held: nothing proves the device stopped DMA for \
                 them, so their buffers are not released",
                self.board.id(),
                self.queue.index(),
                self.queue.in_flight()
            );
        } else {
            let n = self.fail_all(StoreStatus::DeviceError);
            self.counters.gone_failures.fetch_add(n as u64, Ordering::Relaxed);
        }
        let reason = if self.board.is_gone() {
            format!("{}: the device is gone ({why})", self.board.id())
        } else {
            format!("{}: recovery failed after: {why}", self.board.id())
        };
        if self.failure.set(reason.clone()).is_ok() {
            log::error!("{reason}; the store can no longer serve");
        }
    }

    /// A BAR that reads all-ones proves nothing about DMA: Memory Space Enable cleared under
    /// the driver (AER recovery, a failed config restore) darkens the BAR while Bus Master
    /// Enable stays set and the function's engines run on. So clear bus mastering through
    /// config space and read it back; a function whose config space reads all-ones as well
    /// is off the bus (removed, link down) and can make no memory request, the condition
    /// under which Linux too ends a removed controller's requests (`nvme_dev_disable`). False
    /// when neither holds (the bit would not clear, config space unreachable).
    fn dark_bar_stops_dma(&self) -> bool {
        match self.board.device().disable_bus_master() {
            Ok(()) | Err(HalError::OffTheBus { .. }) => true,
            Err(e) => {
                log::error!("{}: its BAR reads all-ones and {e}", self.board.id());
                false
            }
        }
    }

    /// Make sure the function does no more DMA: reset it, else clear its bus mastering and read
    /// it back. False when neither could be confirmed.
    fn stop_dma(&mut self) -> bool {
        // A reset (an NVMe one waits up to four ready timeouts: CAP.TO, or CRTO.CRWMT when
        // larger): a device call like a recovery's.
        match self.device_call(|q| q.board.reset()) {
            Ok(()) => return true,
            Err(e) => log::error!("{}: reset after a failed recovery: {e}", self.board.id()),
        }
        match self.board.device().disable_bus_master() {
            Ok(()) => true,
            Err(e) => {
                log::error!("{e}");
                false
            }
        }
    }

    /// Reset and re-enable the function; false when the device is gone or will not recover.
    fn reset_function(&mut self) -> bool {
        let resets = self.board.reset_count();
        // FATAL is read after the count: the reset that moved it was complete by then and
        // cleared FATAL (accelerator.md §7), so FATAL now came after it and only another reset
        // clears it (§8). That reset remains this queue's proof of the end of DMA, but taken
        // for the reset this queue needed it left the function FATAL until a later health
        // check with work, whose reset failed the requests submitted meanwhile. (A recovery
        // still running is waited for by `recover` below, not repeated.)
        if resets != self.seen_resets && self.board.fatal().is_none() {
            // Another queue reset the function after every request of ours was submitted
            // (requests submitted since we last saw the count went to a queue that reset
            // destroyed): that reset is our proof too, and a second one would only disturb the
            // other queues' restart.
            self.seen_resets = resets;
            return true;
        }
        // `recover_since`: a recovery that ends between the look above and this call is the
        // proof as well; the board then shares it instead of resetting the function again.
        match self.device_call(|q| q.board.recover_since(resets)) {
            Ok(recovered) => {
                // A recovery this call only waited for is its runner's to count (another
                // queue's of this store, or another caller's): counted here, it was counted
                // twice, or as the store's when it was not.
                if recovered == Recovered::Ran {
                    self.counters.resets.fetch_add(1, Ordering::Relaxed);
                }
                self.seen_resets = self.board.reset_count();
                true
            }
            Err(EngineError::Gone { .. }) => false,
            Err(e) => {
                log::error!(
                    "{}: recovery failed: {e}; treating the device as gone",
                    self.board.id()
                );
                false
            }
        }
    }

    /// Stop the queue's engine: within `bound` ([`QueueEngine::stop_within`]), else within the
    /// device's own timeout ([`QueueEngine::stop`]). A stop may have to recover the function
    /// itself (an NVMe stop after a recovery's reset proved nothing); such a recovery is the
    /// store's, so it is counted here, whatever the stop's outcome. Every stop of the store goes
    /// through here, so no caller can leave one uncounted.
    fn stop_engine(&mut self, bound: Option<Duration>) -> Result<(), EngineError> {
        let stopped = self.device_call(|q| match bound {
            Some(bound) => q.queue.stop_within(bound),
            None => q.queue.stop(),
        });
        self.count_stop_recoveries();
        stopped
    }

    /// Restart the queue's engine ([`QueueEngine::restart`]), counting the recoveries its stop
    /// ran (a restart stops the queue first), as [`AccelQueue::stop_engine`] does. The restart's
    /// bookkeeping (the reset count it runs under, the give-up) is [`AccelQueue::restart_queue`]'s.
    fn restart_engine(&mut self) -> Result<(), EngineError> {
        let restarted = self.device_call(|q| q.queue.restart());
        self.count_stop_recoveries();
        restarted
    }

    /// Make one device call of an abort or a recovery (an abort of late requests, a queue stop,
    /// a recovery of the function, a queue restart) with the worker's heartbeat set ahead by
    /// [`AccelQueue::device_call_bound`] for it, and set to now after: such a call can keep the
    /// worker far longer than a turn of its loop (an NVMe recovery waits up to five ready timeouts),
    /// and the service's watchdog must not take it for a wedge; one that overruns its bound
    /// is one.
    fn device_call<T>(&mut self, call: impl FnOnce(&mut Self) -> T) -> T {
        self.heartbeat.beat_until(self.device_call_bound());
        let result = call(self);
        self.heartbeat.beat();
        result
    }

    /// The longest one device call of an abort or a recovery may keep the worker: each waits
    /// at most for one recovery of the function ([`Controller::recovery_bound`]: a stop or
    /// restart that has to recover it itself, a reset, or the wait for another caller's) and
    /// the admin commands around it, which that bound already counts once; twice the bound
    /// covers both with room.
    ///
    /// [`Controller::recovery_bound`]: scst_accel_boards::engine::Controller::recovery_bound
    fn device_call_bound(&self) -> Duration {
        self.board.recovery_bound() * 2
    }

    /// Count in [`AccelCounters::resets`] the recoveries the queue's stops ran since it last
    /// looked ([`QueueEngine::recoveries`]); only [`AccelQueue::stop_engine`] and
    /// [`AccelQueue::restart_engine`] call it. Such a recovery is the store's as much as one its
    /// escalation asks for: without it the counter missed every recovery that an NVMe stop ran
    /// after a recovery's reset proved nothing.
    fn count_stop_recoveries(&mut self) {
        let recoveries = self.queue.recoveries();
        let new = recoveries.saturating_sub(self.seen_stop_recoveries);
        if new > 0 {
            self.counters.resets.fetch_add(new, Ordering::Relaxed);
        }
        self.seen_stop_recoveries = recoveries;
    }

    /// A bounded stop is waiting for another thread's reset to prove the end of DMA
    /// ([`AccelQueue::proof_pending`]): ask again without waiting. Proven, fail what was in
    /// flight (ABORTED) and restart; still pending, keep holding, for at most twice the command
    /// timeout, then escalate as on a stop that failed. Returns whether the queue still waits.
    fn poll_pending_proof(&mut self) -> bool {
        let Some(since) = self.proof_pending else {
            return false;
        };
        // Asked once per health interval, as the other health checks: a stop that finds the
        // proof still pending reads registers and logs why.
        if self.last_health.elapsed() < self.config.health_interval {
            return true;
        }
        self.last_health = Instant::now();
        let stopped = self.stop_engine(Some(Duration::ZERO));
        match stopped {
            Ok(()) => {
                self.proof_pending = None;
                // Every request of this queue is failed here, so every reset so far is seen.
                self.seen_resets = self.board.reset_count();
                self.counters.queue_stops.fetch_add(1, Ordering::Relaxed);
                let n = self.fail_all(StoreStatus::Aborted);
                self.counters.timeouts.fetch_add(n as u64, Ordering::Relaxed);
                log::warn!(
                    "{} queue {}: the reset proved the end of DMA after {:?}; {n} held requests failed",
                    self.board.id(),
                    self.queue.index(),
                    since.elapsed()
                );
                self.restart_queue();
                false
            }
            Err(EngineError::StopPending { .. }) if since.elapsed() < self.config.command_timeout * 2 => true,
            Err(e) => {
                self.proof_pending = None;
                log::error!(
                    "{} queue {}: still no proof that DMA ended after {:?}: {e}",
                    self.board.id(),
                    self.queue.index(),
                    since.elapsed()
                );
                self.recover("another thread's reset did not prove the end of DMA");
                false
            }
        }
    }

    /// Deadlines and health, checked on every reap (the worker reaps at least every idle poll).
    fn check_health(&mut self) {
        if self.poll_pending_proof() {
            return;
        }
        let resets = self.board.reset_count();
        if resets != self.seen_resets {
            // Another queue reset the function: our engine was stopped with it, so what we had
            // submitted will never complete and can no longer be touched by DMA. What only
            // waited in the backlog never reached the device: it is kept for the restart.
            self.seen_resets = resets;
            let n = self.fail_submitted(StoreStatus::Aborted);
            log::warn!(
                "queue {}: function was reset; {n} device requests failed, {} never submitted \
                 kept for the restart",
                self.queue.index(),
                self.backlog.len()
            );
            self.restart_queue();
        }
        if self.gone {
            return;
        }
        if self.queue.in_flight() == 0 && self.backlog.is_empty() {
            return;
        }
        // Deadlines and device health are checked every health interval, not on every reap:
        // finding the oldest request scans the queue's slots, and the health checks read
        // registers (uncached MMIO on hardware).
        if self.last_health.elapsed() < self.config.health_interval {
            return;
        }
        self.last_health = Instant::now();
        if let Some(oldest) = self.queue.oldest_submission() {
            if oldest.elapsed() >= self.config.command_timeout {
                return self.escalate_timeout();
            }
        }
        if self.board.is_gone() {
            return self.recover("the device is gone");
        }
        if let Some(code) = self.board.fatal() {
            log::error!("{}: FATAL {code:#x}", self.board.id());
            return self.recover("the device reported FATAL");
        }
        if self.queue.is_halted() {
            return self.recover("the queue halted on an error");
        }
        // Only with nothing in flight (`QueueEngine::restart`). Requests still on a queue that
        // is not running (an NVMe queue whose controller another queue's recovery disabled, an
        // SCA-1 queue whose function another queue's reset stopped) are failed when the reset
        // count moves, or meet their deadline and escalate, the stop proving the end of their
        // DMA; a restart now would be refused and counted toward giving up (NVMe), or empty
        // the rings under them (SCA-1).
        if !self.queue.is_running() && self.queue.in_flight() == 0 && !self.gone {
            self.restart_queue();
        }
    }
}

/// Since when restarts have been failing, one failing at `now`: since the first of a run of
/// failures each less than `gap` after the one before (`previous`: the run's first and last),
/// else since `now`. A queue retries only while it has work, so a run ends when the queue went
/// idle after a failure; counting from its first failure, one failure hours later would give up
/// the store at once.
fn failing_since(previous: Option<(Instant, Instant)>, now: Instant, gap: Duration) -> Instant {
    match previous {
        Some((first, last)) if now.saturating_duration_since(last) < gap => first,
        _ => now,
    }
}

/// Blocks per WRITE SAME device request.
fn write_same_chunk(info: StoreInfo) -> u64 {
    u64::from(info.max_transfer_blocks).min(64)
}

fn compare(data: &IoBuffer, scratch: &IoBuffer) -> StoreStatus {
    let mut a = vec![0u8; data.len.min(scratch.len)];
    let mut b = vec![0u8; a.len()];
    data.read_at(0, &mut a);
    scratch.read_at(0, &mut b);
    match a.iter().zip(&b).position(|(x, y)| x != y) {
        Some(offset) => StoreStatus::Miscompare {
            offset: Some(offset as u64),
        },
        None => StoreStatus::Good,
    }
}

impl StoreQueue for AccelQueue {
    fn submit(
        &mut self,
        token: &mut crate::store::StoreToken<'_>,
        batch: &mut Vec<StoreRequest>,
    ) -> Result<(), StoreError> {
        for req in batch.drain(..) {
            self.start(token, req);
        }
        self.pump();
        Ok(())
    }

    fn reap(&mut self, out: &mut Vec<StoreCompletion>) -> usize {
        if !self.gone {
            self.reap_device();
            self.check_health();
            self.pump();
        }
        let n = self.done.len();
        out.append(&mut self.done);
        n
    }

    fn notify_fd(&self) -> Option<BorrowedFd<'_>> {
        self.queue.notify_fd()
    }

    fn prepare_to_wait(&mut self) -> bool {
        if self.queue.notify_fd().is_none() {
            // Polled: no fd to sleep on (the owner reaps while requests are in flight).
            return false;
        }
        if !self.done.is_empty() {
            return true;
        }
        !self.gone && self.queue.prepare_to_wait()
    }

    fn set_heartbeat(&mut self, heartbeat: Heartbeat) {
        self.heartbeat = heartbeat;
    }

    fn in_flight(&self) -> usize {
        self.parents.len() + self.done.len()
    }

    fn dump(&self) -> Option<String> {
        Some(format!(
            "{}; store requests {} (device requests {}, waiting for a ring slot {}){}",
            self.queue.dump(),
            self.parents.len(),
            self.children.len(),
            self.backlog.len(),
            if self.gone { "; device failed" } else { "" }
        ))
    }

    fn abort_all(&mut self) -> usize {
        if self.gone || self.parents.is_empty() {
            return 0;
        }
        let n = self.parents.len();
        // Requests the device never saw are aborted at once: the stop below may have to wait
        // for another thread's reset to prove the end of DMA (`proof_pending`), and they need
        // no such proof. They used to be held with the rest until it came.
        let unsubmitted = self.fail_unsubmitted(StoreStatus::Aborted);
        if unsubmitted > 0 {
            log::warn!(
                "{} queue {}: abort: {unsubmitted} requests the device never saw aborted at once",
                self.board.id(),
                self.queue.index()
            );
        }
        if !self.parents.is_empty() {
            self.recover_with(
                "abort (teardown or a deadline): stopping the queue with requests on the device",
                Some(TEARDOWN_STOP_BOUND),
            );
        }
        // Those still here are held (no proof yet that the device stopped DMA for them:
        // `proof_pending`, or a store that gave up without one): not aborted.
        n - self.parents.len()
    }
}

impl Drop for AccelQueue {
    /// Safety net (the orderly path stops queues before dropping them): the rings are unmapped
    /// right after this, and the requests' buffers go back to the pool, so first make sure the
    /// engine holds nothing: the stop handshake, else a function reset, else bus mastering
    /// cleared and read back ([`AccelQueue::stop_dma`]). With none of them (or with requests
    /// already held for that reason, [`AccelQueue::give_up`]) the rings stay mapped and the
    /// requests' own device memory (WRITE SAME patterns, compare scratch) is kept: the device
    /// may still read or write them, and an IOVA or a buffer handed out again would take its
    /// late writes. The command buffers are the frontend's, kept by its leases.
    fn drop(&mut self) {
        let stopped = if self.dma_unproven {
            false
        } else if self.gone || (!self.queue.is_running() && self.queue.in_flight() == 0) {
            return;
        } else {
            match self.stop_engine(None) {
                Ok(()) => true,
                Err(EngineError::Gone { .. }) => self.dark_bar_stops_dma(),
                Err(e) => {
                    log::error!(
                        "{}: {e} while closing queue {}; resetting the function",
                        self.board.id(),
                        self.queue.index()
                    );
                    self.stop_dma()
                }
            }
        };
        if !stopped {
            log::error!(
                "{} queue {}: closed with nothing proving the device stopped DMA: its rings and \
                 the device memory of its {} requests stay mapped, never reused",
                self.board.id(),
                self.queue.index(),
                self.parents.len()
            );
            self.queue.leak_on_drop();
            // The zero blocks emulated WRITE ZEROES read from, too.
            if let Some(zeroes) = self.zeroes.as_mut() {
                zeroes.leak_on_drop();
            }
            if let Some(scratch) = self.verify_scratch.as_mut() {
                scratch.leak_on_drop();
            }
            std::mem::forget(std::mem::take(&mut self.parents));
            std::mem::forget(std::mem::take(&mut self.children));
            return;
        }
        let abandoned = self.queue.abandon_all();
        if !abandoned.is_empty() {
            log::warn!(
                "queue {} closed with {} requests abandoned",
                self.queue.index(),
                abandoned.len()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::failing_since;
    use std::time::Duration;
    use std::time::Instant;

    /// Restart failures close together are one run, counted from its first; one that comes
    /// after a longer quiet (the queue idle, nothing retried) starts a new run.
    /// The pieces a split makes: none of nothing, whole ones, the rest last; a zero limit
    /// still moves one block at a time.
    #[test]
    fn pieces_cover_the_range_in_order() {
        let all = |lba, blocks, per| super::pieces(lba, blocks, per).collect::<Vec<_>>();
        assert_eq!(all(5, 0, 4), []);
        assert_eq!(all(5, 8, 4), [(5, 4), (9, 4)]);
        assert_eq!(all(5, 9, 4), [(5, 4), (9, 4), (13, 1)]);
        assert_eq!(all(0, 3, 0), [(0, 1), (1, 1), (2, 1)]);
        assert_eq!(all(7, 2, u64::MAX), [(7, 2)]);
    }

    #[test]
    fn restart_failures_far_apart_start_the_count_again() {
        let gap = Duration::from_secs(2);
        let t0 = Instant::now();
        let t = |ms| t0 + Duration::from_millis(ms);
        assert_eq!(failing_since(None, t0, gap), t0);
        assert_eq!(
            failing_since(Some((t0, t(1500))), t(3000), gap),
            t0,
            "1.5 s after the last"
        );
        assert_eq!(
            failing_since(Some((t0, t(1500))), t(3_600_000), gap),
            t(3_600_000),
            "an hour later"
        );
    }
}
