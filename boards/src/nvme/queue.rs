//! One NVMe I/O queue pair (NVMe 1.4 §4.1, §7.2), owned by one thread: commands into the
//! submission queue, one doorbell per batch, completions validated against the in-flight table
//! before they are trusted, ABORT of single commands (NVMe 1.4 §5.1), and the stop (delete) /
//! restart (re-create) primitives recovery is built from.

use super::cmd::admin_opcode;
use super::cmd::io_opcode;
use super::cmd::sc;
use super::cmd::sct;
use super::cmd::Cqe;
use super::cmd::Sqe;
use super::cmd::Status;
use super::cmd::CDW12_DEAC;
use super::cmd::CDW12_FUA;
use super::cmd::CQE_STATUS_OFFSET;
use super::cmd::CQ_IEN;
use super::cmd::DSM_ATTR_DEALLOCATE;
use super::cmd::FUSE_FIRST;
use super::cmd::FUSE_SECOND;
use super::cmd::QUEUE_PC;
use super::controller::build_prps;
use super::controller::map_region;
use super::controller::NvmeController;
use super::controller::Quiesced;
use super::controller::PAGE_SIZE;
use super::error::NvmeError;
use crate::engine::DeviceCompletion;
use crate::engine::DeviceOp;
use crate::engine::DeviceRequest;
use crate::engine::DeviceStatus;
use crate::engine::SubmitError;
use crate::irq_gate::IrqGate;
use scst_accel_dma::CompletionRing;
use scst_accel_dma::MappedRegion;
use scst_accel_dma::SubmissionRing;
use scst_accel_hal::EventFd;
use std::fmt::Write as _;
use std::os::fd::AsFd;
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;
use zerocopy::IntoBytes;

/// Counters of work and device misbehaviour, for reports and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NvmeQueueStats {
    /// Commands submitted to the device.
    pub submitted: u64,
    /// Completions accepted.
    pub completed: u64,
    /// Requests completed without the device (an operation the controller lacks).
    pub refused: u64,
    /// Completions that matched nothing in flight (ignored).
    pub unknown_tags: u64,
    /// SQ tail doorbell writes.
    pub doorbells: u64,
    /// Reads of the interrupt eventfd: one per `prepare_to_wait` that finds nothing posted,
    /// and, for an owner that never prepares, one per reap that finds nothing twice in a row
    /// (`irq_gate.rs`).
    pub irq_reads: u64,
    /// Re-creations on the device.
    pub restarts: u64,
    /// Recoveries of the controller this queue's stops ran themselves (a recovery's reset had
    /// failed or overran: `NvmeController::await_quiesced`); the engine contract's
    /// `QueueEngine::recoveries`.
    pub recoveries: u64,
    /// ABORT commands sent for this queue's commands.
    pub aborts_sent: u64,
    /// ABORTs the controller carried out (the command then completes as aborted).
    pub aborts_accepted: u64,
}

#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    user_tag: Option<u64>,
    generation: u16,
    submitted: Option<Instant>,
    /// The other slot of a fused operation (NVMe 1.4 §4.12), with which the request
    /// completes: `Some((partner, true))` on the first command (the Compare), `(partner,
    /// false)` on the second (the Write).
    fused: Option<(u16, bool)>,
    /// A fused command's status, held until its partner completes too.
    held: Option<Status>,
}

/// The DSM range descriptor (NVMe 1.4 §6.7, Figure 364).
#[repr(C)]
#[derive(Clone, Copy, Debug, zerocopy::IntoBytes, zerocopy::Immutable)]
struct DsmRange {
    context_attributes: u32,
    blocks: u32,
    slba: u64,
}

static_assertions::assert_eq_size!(DsmRange, [u8; 16]);

/// A Copy source range entry, format 0 (NVMe 2.0 NVM Command Set Figure 42): SLBA at byte 8,
/// NLB (0's based) at byte 16; no end-to-end protection fields used.
#[repr(C)]
#[derive(Clone, Copy, Debug, zerocopy::IntoBytes, zerocopy::Immutable)]
struct CopyRange {
    reserved0: u64,
    slba: u64,
    nlb: u16,
    reserved1: [u8; 14],
}

static_assertions::assert_eq_size!(CopyRange, [u8; 32]);
const _: () = assert!(std::mem::offset_of!(CopyRange, slba) == 8);
const _: () = assert!(std::mem::offset_of!(CopyRange, nlb) == 16);

/// An I/O queue pair.
pub struct NvmeQueue {
    ctrl: Arc<NvmeController>,
    qid: u16,
    depth: u16,
    slot_bits: u32,
    generations: u16,
    sq: SubmissionRing,
    cq: CompletionRing,
    sq_iova: u64,
    cq_iova: u64,
    /// One page per slot: the slot's PRP list, or its DSM range.
    pages: MappedRegion,
    irq: Option<EventFd>,
    /// When a reap reads `irq` ([`IrqGate`]).
    irq_gate: IrqGate,
    slots: Vec<Slot>,
    free: Vec<u16>,
    /// Fused operations in flight: each holds two slots for one request.
    fused_pairs: usize,
    /// Requests completed without the device, returned by the next reap.
    local: Vec<DeviceCompletion>,
    running: bool,
    /// The controller epoch in which the queue was created on the device (None: it is not).
    live_epoch: Option<u64>,
    seen_resets: u64,
    sq_doorbell: u64,
    cq_doorbell: u64,
    last_sq_doorbell: u32,
    last_cq_doorbell: u32,
    stats: NvmeQueueStats,
}

/// [`sc::INVALID_QUEUE_IDENTIFIER`], a command specific status.
fn is_invalid_queue_identifier(status: Status) -> bool {
    status.sct() == sct::COMMAND_SPECIFIC && status.sc() == sc::INVALID_QUEUE_IDENTIFIER
}

impl NvmeQueue {
    /// Allocate and map the rings and PRP pages of queue `qid` with `depth` entries (a power
    /// of two); nothing is sent to the controller (`create_on_device` creates the CQ and SQ
    /// there). Separate, so that a creation that fails leaves the caller the queue, whose
    /// rings must stay mapped until the controller is proven disabled.
    ///
    /// # Errors
    /// [`NvmeError`] from memory setup.
    pub(super) fn new(
        ctrl: Arc<NvmeController>,
        qid: u16,
        depth: u16,
        irq: Option<EventFd>,
    ) -> Result<Self, NvmeError> {
        let device = Arc::clone(ctrl.device());
        let iovas = Arc::clone(ctrl.iovas());
        let memory = |what: String, source| NvmeError::Memory {
            device: device.id().to_owned(),
            what,
            source: Box::new(source),
        };
        let entries = u32::from(depth);
        let sq_region = map_region(&device, &iovas, usize::from(depth) * 64, "an I/O SQ")?;
        let cq_region = map_region(&device, &iovas, usize::from(depth) * 16, "an I/O CQ")?;
        let (sq_iova, cq_iova) = (sq_region.iova(), cq_region.iova());
        let sq = SubmissionRing::new(sq_region, entries, size_of::<Sqe>())
            .map_err(|e| memory(format!("I/O SQ {qid}"), e))?;
        let cq = CompletionRing::new(cq_region, entries, size_of::<Cqe>(), CQE_STATUS_OFFSET, 1)
            .map_err(|e| memory(format!("I/O CQ {qid}"), e))?;
        let pages = map_region(
            &device,
            &iovas,
            usize::from(depth) * PAGE_SIZE as usize,
            "PRP list pages",
        )?;
        let slot_bits = depth.trailing_zeros();
        let cap = ctrl.cap();
        let usable = depth - 1; // one SQ entry always stays empty
        let q = Self {
            qid,
            depth,
            slot_bits,
            generations: ((1u32 << (16 - slot_bits)) - 1) as u16,
            sq,
            cq,
            sq_iova,
            cq_iova,
            pages,
            irq,
            irq_gate: IrqGate::default(),
            slots: vec![Slot::default(); usize::from(usable)],
            free: (0..usable).rev().collect(),
            fused_pairs: 0,
            local: Vec::new(),
            running: false,
            live_epoch: None,
            seen_resets: ctrl.reset_count(),
            sq_doorbell: cap.doorbell(qid, false),
            cq_doorbell: cap.doorbell(qid, true),
            last_sq_doorbell: 0,
            last_cq_doorbell: 0,
            stats: NvmeQueueStats::default(),
            ctrl,
        };
        Ok(q)
    }

    /// Queue identifier (1-based).
    pub fn qid(&self) -> u16 {
        self.qid
    }

    /// Entries per ring.
    pub fn depth(&self) -> u16 {
        self.depth
    }

    /// Counters.
    pub fn stats(&self) -> NvmeQueueStats {
        self.stats
    }

    /// The controller.
    pub fn controller(&self) -> &Arc<NvmeController> {
        &self.ctrl
    }

    /// The queue exists on the controller (created, and the controller not disabled since).
    fn live_on_device(&self) -> bool {
        self.live_epoch == Some(self.ctrl.epoch()) && self.ctrl.is_enabled()
    }

    /// CREATE I/O CQ then CREATE I/O SQ (NVMe 1.4 §5.3, §5.4), physically contiguous; the
    /// queue counts as live in `epoch`, read before the commands were sent (a reset that began
    /// since leaves it not live).
    pub(super) fn create_on_device(&mut self, epoch: u64) -> Result<(), NvmeError> {
        let size = u32::from(self.depth - 1) << 16;
        let qid = u32::from(self.qid);
        let interrupts = match self.irq {
            Some(_) => CQ_IEN | (qid << 16),
            None => 0,
        };
        let create_cq = Sqe {
            opcode: admin_opcode::CREATE_CQ,
            prp1: self.cq_iova,
            cdw10: qid | size,
            cdw11: QUEUE_PC | interrupts,
            ..Sqe::default()
        };
        match self.ctrl.admin("CREATE I/O CQ", create_cq) {
            Err(NvmeError::Command { status, .. }) if is_invalid_queue_identifier(status) => {
                // The controller has this queue though the driver holds it not live: a creation
                // that lost a race with a recovery (it ran after the recovery's enable, the
                // queue read the epoch before it). It takes no request of this driver, but
                // would refuse every creation from now on: delete it (its SQ, then its CQ; a
                // deletion of what is not there fails harmlessly) and create it once more.
                log::warn!(
                    "{}: I/O queue {} exists on the controller though it is not live here (created across a \
                     recovery): deleting it and creating it again",
                    self.ctrl.id(),
                    self.qid
                );
                self.delete_best_effort("DELETE I/O SQ", admin_opcode::DELETE_SQ);
                self.delete_best_effort("DELETE I/O CQ", admin_opcode::DELETE_CQ);
                self.ctrl.admin("CREATE I/O CQ", create_cq)?;
            }
            r => {
                r?;
            }
        }
        let sq = self.ctrl.admin(
            "CREATE I/O SQ",
            Sqe {
                opcode: admin_opcode::CREATE_SQ,
                prp1: self.sq_iova,
                cdw10: qid | size,
                // QPRIO 0 (ignored under round robin arbitration), CQID = this queue.
                cdw11: QUEUE_PC | (qid << 16),
                ..Sqe::default()
            },
        );
        if let Err(e) = sq {
            self.delete_best_effort("DELETE I/O CQ", admin_opcode::DELETE_CQ);
            return Err(e);
        }
        self.live_epoch = Some(epoch);
        self.ctrl.queue_created(self.qid, epoch);
        self.seen_resets = self.ctrl.reset_count();
        self.running = true;
        self.last_sq_doorbell = 0;
        self.last_cq_doorbell = 0;
        log::debug!(
            "{}: I/O queue {} created ({} entries)",
            self.ctrl.id(),
            self.qid,
            self.depth
        );
        Ok(())
    }

    /// Delete this queue's SQ or CQ, logging a failure: cleanup whose failure changes nothing
    /// the caller does next.
    fn delete_best_effort(&self, command: &'static str, opcode: u8) {
        let r = self.ctrl.admin(
            command,
            Sqe {
                opcode,
                cdw10: u32::from(self.qid),
                ..Sqe::default()
            },
        );
        if let Err(e) = r {
            log::warn!("{}: {command} {} (cleanup): {e}", self.ctrl.id(), self.qid);
        }
    }

    /// Requests submitted and not yet completed or abandoned.
    pub fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len() - self.fused_pairs + self.local.len()
    }

    /// Accepting submissions: created on the device, and no controller reset since.
    pub fn is_running(&self) -> bool {
        self.running && self.seen_resets == self.ctrl.reset_count() && self.live_on_device()
    }

    /// When the oldest request in flight was submitted.
    pub fn oldest_submission(&self) -> Option<Instant> {
        self.slots.iter().filter_map(|s| s.submitted).min()
    }

    /// User tags of the commands in flight submitted before `cutoff`.
    pub fn expired(&self, cutoff: Instant) -> Vec<u64> {
        self.slots
            .iter()
            .filter(|s| s.submitted.is_some_and(|t| t < cutoff))
            .filter(|s| !matches!(s.fused, Some((_, false)))) // a fused pair once
            .filter_map(|s| s.user_tag)
            .collect()
    }

    /// The MSI-X eventfd of this queue, when interrupts are used.
    pub fn notify_fd(&self) -> Option<BorrowedFd<'_>> {
        self.irq.as_ref().map(|e| e.as_fd())
    }

    /// Completions whose CID matched nothing in flight, so far.
    pub fn unknown_tags(&self) -> u64 {
        self.stats.unknown_tags
    }

    /// Queue one request (visible after [`NvmeQueue::ring_doorbell`]).
    ///
    /// # Errors
    /// [`SubmitError`]: not running, full, or a layout or size one command cannot describe.
    pub fn submit(&mut self, req: &DeviceRequest<'_>) -> Result<(), SubmitError> {
        if !self.is_running() {
            return Err(SubmitError::NotRunning);
        }
        if req.op == DeviceOp::CompareAndWrite {
            return self.submit_compare_and_write(req);
        }
        let geometry = self.ctrl.geometry();
        let nsid = self.ctrl.info().nsid;
        let block_size = geometry.block_size;
        if !req.length.is_multiple_of(block_size) {
            return Err(SubmitError::Unaligned(
                "length is not a multiple of the block size",
            ));
        }
        let blocks = req.length / block_size;
        let op = req.op;
        if op != DeviceOp::Flush && blocks == 0 {
            return Err(SubmitError::Unaligned("zero-length request"));
        }
        if matches!(
            op,
            DeviceOp::Read | DeviceOp::Write | DeviceOp::WriteZeroes { .. }
        ) && blocks > 65536
        {
            return Err(SubmitError::Unaligned("more than 65536 blocks in one command"));
        }
        let controller = &self.ctrl.info().controller;
        let supported = match op {
            DeviceOp::WriteZeroes { .. } => controller.supports_write_zeroes(),
            DeviceOp::Deallocate => controller.supports_dsm(),
            DeviceOp::Copy { .. } => controller.supports_copy(),
            _ => true,
        };
        if !supported {
            // The controller lacks it (ONCS): complete it here as the device would, with
            // Invalid Command Opcode, rather than send a command it must refuse.
            self.local.push(DeviceCompletion {
                user_tag: req.user_tag,
                status: DeviceStatus::Other(u32::from(Status::new(sct::GENERIC, sc::INVALID_OPCODE).0)),
                failing_lba_low: None,
            });
            self.stats.refused += 1;
            return Ok(());
        }
        if op == DeviceOp::Deallocate && blocks > geometry.max_deallocate_blocks {
            // The controller would refuse the range with Invalid Field in Command.
            return Err(SubmitError::Unaligned(
                "more blocks than one Dataset Management range may cover (DMRSL, DMSL)",
            ));
        }
        if matches!(op, DeviceOp::WriteZeroes { .. }) && blocks > geometry.max_write_zeroes_blocks {
            // The controller would refuse it with Invalid Field in Command.
            return Err(SubmitError::Unaligned(
                "more blocks than one Write Zeroes may cover (WZSL)",
            ));
        }
        if matches!(op, DeviceOp::Copy { .. }) && blocks > geometry.max_copy_blocks {
            return Err(SubmitError::Unaligned(
                "more blocks than one Copy may move (MSSRL, MCL)",
            ));
        }
        if matches!(op, DeviceOp::Read | DeviceOp::Write) {
            if req.length > geometry.max_transfer_bytes {
                return Err(SubmitError::Unaligned(
                    "longer than the controller's largest transfer",
                ));
            }
            if req.segments.len() > geometry.max_segments as usize {
                return Err(SubmitError::TooManySegments {
                    segments: req.segments.len(),
                    max: geometry.max_segments,
                });
            }
            let total: u64 = req.segments.iter().map(|&(_, l)| u64::from(l)).sum();
            if total != u64::from(req.length) {
                return Err(SubmitError::Unaligned("segments do not add up to the length"));
            }
        }
        if self.sq.free_slots() == 0 {
            return Err(SubmitError::Full);
        }
        let Some(slot) = self.free.pop() else {
            return Err(SubmitError::Full);
        };
        let page = usize::from(slot) * PAGE_SIZE as usize;
        let slba = req.lba;
        let rw_cdw12 = (blocks.wrapping_sub(1) & 0xFFFF) | if req.fua { CDW12_FUA } else { 0 };
        let mut sqe = Sqe {
            nsid,
            cdw10: slba as u32,
            cdw11: (slba >> 32) as u32,
            ..Sqe::default()
        };
        match op {
            DeviceOp::Read | DeviceOp::Write => {
                let prps = match build_prps(req.segments, &self.pages, page) {
                    Ok(p) => p,
                    Err(e) => {
                        self.free.push(slot);
                        return Err(e);
                    }
                };
                sqe.opcode = if op == DeviceOp::Read {
                    io_opcode::READ
                } else {
                    io_opcode::WRITE
                };
                sqe.prp1 = prps.prp1;
                sqe.prp2 = prps.prp2;
                sqe.cdw12 = rw_cdw12;
            }
            DeviceOp::Flush => {
                sqe.opcode = io_opcode::FLUSH;
                sqe.cdw10 = 0;
                sqe.cdw11 = 0;
            }
            DeviceOp::WriteZeroes { deallocate } => {
                sqe.opcode = io_opcode::WRITE_ZEROES;
                sqe.cdw12 = rw_cdw12;
                if deallocate && self.ctrl.info().namespace.write_zeroes_may_deallocate() {
                    sqe.cdw12 |= CDW12_DEAC;
                }
            }
            DeviceOp::Deallocate => {
                let range = DsmRange {
                    context_attributes: 0,
                    blocks,
                    slba,
                };
                self.pages.region().write_obj(page, &range);
                sqe.opcode = io_opcode::DSM;
                sqe.prp1 = self.pages.iova() + page as u64;
                sqe.cdw10 = 0; // one range (NR is 0-based)
                sqe.cdw11 = DSM_ATTR_DEALLOCATE;
            }
            DeviceOp::CompareAndWrite => unreachable!("submitted as a fused pair above"),
            DeviceOp::Copy { src_lba } => {
                // One source range in the slot's page; SDLBA (CDW10-11) is the request's LBA.
                let range = CopyRange {
                    reserved0: 0,
                    slba: src_lba,
                    nlb: (blocks - 1) as u16,
                    reserved1: [0; 14],
                };
                self.pages.region().write_obj(page, &range);
                sqe.opcode = io_opcode::COPY;
                sqe.prp1 = self.pages.iova() + page as u64;
                sqe.cdw12 = 0; // NR 0 (one range), DESFMT 0
            }
        }
        let entry = &mut self.slots[usize::from(slot)];
        sqe.cid = (entry.generation << self.slot_bits) | slot;
        if self.sq.push(sqe.as_bytes()).is_err() {
            self.free.push(slot);
            return Err(SubmitError::Full);
        }
        entry.user_tag = Some(req.user_tag);
        entry.submitted = Some(Instant::now());
        self.stats.submitted += 1;
        Ok(())
    }

    /// A fused Compare (FUSE 01b) and Write (FUSE 10b) of the same blocks (NVMe 1.4 §4.12,
    /// §6.2) in two adjacent SQ entries, queued together so one doorbell write makes both
    /// available, as the specification requires. The first half of the segments is the
    /// Compare's data, the second half the Write's; each command has its own slot, CID and
    /// PRP list page, and the request completes when both have ([`NvmeQueue::reap`]).
    fn submit_compare_and_write(&mut self, req: &DeviceRequest<'_>) -> Result<(), SubmitError> {
        let geometry = self.ctrl.geometry();
        if geometry.max_compare_write_blocks == 0 {
            return Err(SubmitError::Unsupported(
                "compare and write (the controller reports no fused Compare and Write: FUSES)",
            ));
        }
        let block_size = geometry.block_size;
        if req.length == 0 || !req.length.is_multiple_of(block_size) {
            return Err(SubmitError::Unaligned("length is not a whole number of blocks"));
        }
        let blocks = req.length / block_size;
        if blocks > geometry.max_compare_write_blocks {
            return Err(SubmitError::Unaligned(
                "more blocks than one fused Compare and Write covers (ACWU)",
            ));
        }
        let total: u64 = req.segments.iter().map(|&(_, l)| u64::from(l)).sum();
        if total != 2 * u64::from(req.length) {
            return Err(SubmitError::Unaligned(
                "segments are not twice the length (compare data, then write data)",
            ));
        }
        let (compare, write) = split_segments(req.segments, req.length);
        for half in [&compare, &write] {
            if half.len() > geometry.max_segments as usize {
                return Err(SubmitError::TooManySegments {
                    segments: half.len(),
                    max: geometry.max_segments,
                });
            }
        }
        if self.sq.free_slots() < 2 || self.free.len() < 2 {
            return Err(SubmitError::Full);
        }
        let (Some(first), Some(second)) = (self.free.pop(), self.free.pop()) else {
            return Err(SubmitError::Full);
        };
        let write_fua = if req.fua { CDW12_FUA } else { 0 };
        let entries = [
            (first, io_opcode::COMPARE, FUSE_FIRST, 0),
            (second, io_opcode::WRITE, FUSE_SECOND, write_fua),
        ];
        let mut sqes = [Sqe::default(); 2];
        for (i, (&(slot, opcode, fuse, flags), half)) in entries.iter().zip([&compare, &write]).enumerate() {
            let page = usize::from(slot) * PAGE_SIZE as usize;
            let prps = match build_prps(half, &self.pages, page) {
                Ok(p) => p,
                Err(e) => {
                    self.free.extend([second, first]);
                    return Err(e);
                }
            };
            sqes[i] = Sqe {
                opcode,
                flags: fuse,
                cid: (self.slots[usize::from(slot)].generation << self.slot_bits) | slot,
                nsid: self.ctrl.info().nsid,
                prp1: prps.prp1,
                prp2: prps.prp2,
                cdw10: req.lba as u32,
                cdw11: (req.lba >> 32) as u32,
                cdw12: (blocks - 1) | flags,
                ..Sqe::default()
            };
        }
        // Two free SQ entries were checked above, and only this thread pushes.
        for sqe in &sqes {
            if self.sq.push(sqe.as_bytes()).is_err() {
                log::error!(
                    "{} queue {}: SQ full between the check and the push of a fused pair",
                    self.ctrl.id(),
                    self.qid
                );
            }
        }
        let now = Instant::now();
        for (slot, partner, is_first) in [(first, second, true), (second, first, false)] {
            let entry = &mut self.slots[usize::from(slot)];
            entry.user_tag = Some(req.user_tag);
            entry.submitted = Some(now);
            entry.fused = Some((partner, is_first));
            entry.held = None;
        }
        self.fused_pairs += 1;
        self.stats.submitted += 2;
        Ok(())
    }

    /// One SQ tail doorbell write for everything queued since the last one.
    pub fn ring_doorbell(&mut self) {
        if let Some(tail) = self.sq.commit() {
            if self.live_on_device() {
                self.ctrl.registers().write32(self.sq_doorbell, tail);
                self.last_sq_doorbell = tail;
                self.stats.doorbells += 1;
                self.irq_gate.doorbell();
            }
        }
    }

    fn release(&mut self, slot: u16) {
        let entry = &mut self.slots[usize::from(slot)];
        if matches!(entry.fused, Some((_, true))) {
            self.fused_pairs -= 1;
        }
        entry.fused = None;
        entry.held = None;
        entry.user_tag = None;
        entry.submitted = None;
        entry.generation = (entry.generation + 1) % self.generations;
        self.free.push(slot);
    }

    /// Move posted completions into `out`, trusting none whose SQID, slot and generation do
    /// not match a command in flight. Returns how many were added.
    ///
    /// At most depth - 1 entries are taken per call: an honest controller posts no more before
    /// the host releases them with the CQ head doorbell written at the end of the call (a full
    /// CQ keeps one entry empty, NVMe 1.4 §4.1), so the budget only stops a controller that
    /// ignores the CQ head doorbell and keeps writing valid-phase entries from holding the
    /// owner here, away from its deadlines and health checks. What is left is taken by the
    /// next call ([`NvmeQueue::prepare_to_wait`] reports it posted). Untrusted entries are
    /// logged once per call (the first and a count).
    pub fn reap(&mut self, out: &mut Vec<DeviceCompletion>) -> usize {
        // Posted: the head carries the expected phase tag (§4.6).
        // NVMe has no interrupt status to acknowledge (MSI-X; INTMS and INTMC, §3.1.3 and
        // §3.1.4, are for pin-based and MSI interrupts only).
        let (_, read) = self.irq_gate.reap(self.irq.as_ref(), &self.cq, || {});
        self.stats.irq_reads += u64::from(read);
        let mut accepted = 0;
        let mut consumed = 0;
        let budget = self.depth - 1;
        // The first untrusted entry of the call and how many there were, for one log line.
        let mut unknown: Option<(Cqe, u64)> = None;
        while consumed < budget {
            let Some(cqe) = self.cq.pop::<Cqe>() else {
                break;
            };
            consumed += 1;
            let slot = cqe.cid & ((1 << self.slot_bits) - 1);
            let generation = cqe.cid >> self.slot_bits;
            let user_tag = self
                .slots
                .get(usize::from(slot))
                .filter(|s| s.generation == generation)
                .and_then(|s| s.user_tag);
            let Some(user_tag) = user_tag.filter(|_| cqe.sq_id == self.qid) else {
                self.stats.unknown_tags += 1;
                unknown.get_or_insert((cqe, 0)).1 += 1;
                continue;
            };
            if let Err(e) = self.sq.try_update_head(u32::from(cqe.sq_head)) {
                log::warn!("{} queue {}: {e}; ignored", self.ctrl.id(), self.qid);
            }
            let mut status = Status::from_cqe(cqe.status).device_status();
            if let Some((partner, is_first)) = self.slots[usize::from(slot)].fused {
                let own = Status::from_cqe(cqe.status);
                if self.slots[usize::from(slot)].held.is_some() {
                    // A second completion for a CID already completed: not trusted.
                    self.stats.unknown_tags += 1;
                    unknown.get_or_insert((cqe, 0)).1 += 1;
                    continue;
                }
                let Some(other) = self.slots[usize::from(partner)].held else {
                    // The request completes with its partner.
                    self.slots[usize::from(slot)].held = Some(own);
                    self.stats.completed += 1;
                    continue;
                };
                let (compare, write) = if is_first { (own, other) } else { (other, own) };
                status = fused_status(compare, write);
                self.release(partner);
            }
            self.release(slot);
            self.stats.completed += 1;
            out.push(DeviceCompletion {
                user_tag,
                status,
                // The CQE has no LBA; the error log page does (error_log.rs), not read per I/O.
                failing_lba_low: None,
            });
            accepted += 1;
        }
        if consumed > 0 && self.live_on_device() {
            let head = self.cq.head();
            self.ctrl.registers().write32(self.cq_doorbell, head);
            self.last_cq_doorbell = head;
        }
        if let Some((cqe, n)) = unknown {
            log::warn!(
                "{} queue {}: {n} completions matched nothing in flight (the first: CID {:#06x} SQID \
                 {}, status {:#x}); ignored",
                self.ctrl.id(),
                self.qid,
                cqe.cid,
                cqe.sq_id,
                cqe.status >> 1
            );
        }
        if consumed == budget && self.cq.head_posted() {
            log::debug!(
                "{} queue {}: {budget} completions taken in one reap and more posted; the rest on the \
                 next",
                self.ctrl.id(),
                self.qid
            );
        }
        accepted += self.local.len();
        out.append(&mut self.local);
        accepted
    }

    /// [`QueueEngine::prepare_to_wait`](crate::engine::QueueEngine::prepare_to_wait): with a
    /// completion posted, say so (the owner reaps; no read). Otherwise read the interrupt
    /// eventfd (the signals of completions reaped so far), then look at the ring again: a
    /// completion posted after the read signals again (`irq_gate.rs`).
    pub fn prepare_to_wait(&mut self) -> bool {
        let (posted, read) = self.irq_gate.prepare_to_wait(self.irq.as_ref(), &self.cq, || {});
        self.stats.irq_reads += u64::from(read);
        posted
    }

    /// ABORT (NVMe 1.4 §5.1), through the admin queue, each of `user_tags` that is in flight
    /// on the device, one after another (each waited for, bounded by the admin timeout; the
    /// controller-wide Abort Command Limit is kept by the controller). Tags not in flight, and
    /// requests completed without the device, are skipped; so is everything when the queue no
    /// longer exists on the controller (a reset dropped its commands). Returns how many the
    /// controller agreed to abort: their completions, status
    /// [`DeviceStatus::Aborted`], come through [`NvmeQueue::reap`]. A refused abort ("not
    /// aborted", or an error status such as Abort Command Limit Exceeded) leaves the command in
    /// flight, to complete or be stopped.
    ///
    /// The ABORTs of one call share one admin timeout: a controller slow on its admin queue
    /// answering each just inside the timeout would otherwise hold the caller N timeouts for N
    /// late commands (Linux's `nvme_timeout` likewise resets the controller when an abort's
    /// own timer expires, not after all of them). Past it no more ABORT is sent.
    ///
    /// # Errors
    /// [`NvmeError::Timeout`] when the ABORTs did not complete within the admin timeout (the
    /// admin queue is stuck or slow: stop the queue or reset), [`NvmeError::Gone`], and every
    /// other admin error except a completion with an error status.
    pub fn abort(&mut self, user_tags: &[u64]) -> Result<usize, NvmeError> {
        if !self.live_on_device() {
            log::debug!(
                "{} queue {}: not on the controller; nothing to abort",
                self.ctrl.id(),
                self.qid
            );
            return Ok(0);
        }
        let budget = self.ctrl.config().admin_timeout;
        let deadline = Instant::now() + budget;
        let mut aborted = 0;
        let mut sent: Vec<usize> = Vec::new();
        for &tag in user_tags {
            // The CID cannot be reused before this thread reaps the completion, so the ABORT
            // can only ever name this command. Both commands of a fused pair are aborted
            // (NVMe 1.4 §4.12: each completes, the other as aborted due to a failed fused
            // command); the request counts as aborted when either ABORT is carried out.
            let slots: Vec<usize> = (0..self.slots.len())
                .filter(|&i| self.slots[i].user_tag == Some(tag) && !sent.contains(&i))
                .collect();
            let mut carried_out = false;
            for slot in slots {
                if Instant::now() >= deadline {
                    return Err(NvmeError::Timeout {
                        device: self.ctrl.id().to_owned(),
                        what: "the ABORTs of late commands (one admin timeout for all)",
                        timeout: budget,
                    });
                }
                sent.push(slot);
                carried_out |= self.abort_slot(slot, tag, deadline)?;
            }
            if carried_out {
                aborted += 1;
            }
        }
        Ok(aborted)
    }

    /// ABORT the command in `slot` (of request `tag`); whether the controller carried it out.
    fn abort_slot(&mut self, slot: usize, tag: u64, deadline: Instant) -> Result<bool, NvmeError> {
        let cid = (self.slots[slot].generation << self.slot_bits) | slot as u16;
        self.stats.aborts_sent += 1;
        match self.ctrl.abort_command(self.qid, cid, deadline) {
            Ok(true) => {
                self.stats.aborts_accepted += 1;
                Ok(true)
            }
            Ok(false) => {
                log::info!(
                    "{} queue {}: the controller did not abort CID {cid:#06x} (tag {tag})",
                    self.ctrl.id(),
                    self.qid
                );
                Ok(false)
            }
            Err(NvmeError::Command { status, .. }) => {
                log::warn!(
                    "{} queue {}: ABORT of CID {cid:#06x} (tag {tag}) failed with status {status}; \
                     the command stays in flight",
                    self.ctrl.id(),
                    self.qid
                );
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    fn delete(
        &mut self,
        command: &'static str,
        opcode: u8,
        bound: Duration,
        caller_bound: Option<Duration>,
    ) -> Result<(), NvmeError> {
        let r = self.ctrl.admin_within(
            command,
            Sqe {
                opcode,
                cdw10: u32::from(self.qid),
                ..Sqe::default()
            },
            bound,
        );
        match r {
            Ok(_) => Ok(()),
            // The controller was disabled meanwhile: the queue is gone with it, once the end of
            // its DMA is proven.
            Err(_) if !self.live_on_device() && !self.ctrl.is_gone() => self.await_disabled(caller_bound),
            Err(e) => Err(e),
        }
    }

    /// The controller was disabled under the queue (another thread's reset): its commands
    /// are dropped, but only that disable's end (CSTS.RDY = 0) proves the controller no longer
    /// moves their data. Waits for it (no longer than `caller_bound`, when given), or resets or
    /// recovers the controller (`NvmeController::await_quiesced`), counted in the queue's
    /// `recoveries`.
    fn await_disabled(&mut self, caller_bound: Option<Duration>) -> Result<(), NvmeError> {
        let Some(epoch) = self.live_epoch else {
            return Ok(());
        };
        if self.ctrl.await_quiesced(epoch, caller_bound)? == Quiesced::Recovered {
            self.stats.recoveries += 1;
        }
        Ok(())
    }

    /// Stop: NVMe has no per-queue stop, so delete the SQ (Delete I/O Submission Queue, NVMe 1.4
    /// §5.6), then the CQ (Delete I/O Completion Queue, §5.5). Before the SQ deletion completes
    /// the controller completes or aborts every command of it, and it may abort commands it has
    /// not fetched without posting completions for them: `Ok` means the device holds none of
    /// this queue's requests and no further completion for them will be reaped, not that each
    /// one completed. The requests still in flight then are the caller's to collect with
    /// [`NvmeQueue::abandon_all`]. A queue the controller no longer has (reset, disabled) is
    /// stopped once that disable is proven (CSTS.RDY = 0): one under way on another thread is
    /// waited for, one that failed is done again here, bounded, as a recovery when it was a
    /// recovery's, so that the controller serves again and the restart that follows succeeds
    /// (`NvmeController::await_quiesced`).
    ///
    /// # Errors
    /// [`NvmeError::Gone`]; [`NvmeError::Timeout`] (only a controller reset helps);
    /// [`NvmeError::Fatal`] when the controller reports CSTS.CFS (as an engine error:
    /// `EngineError::Failed`; only a controller reset helps); [`NvmeError::Command`] when the
    /// controller refuses a deletion; a reset's or a recovery's error when the controller was
    /// disabled under the queue and this stop's own reset or recovery failed.
    pub fn stop(&mut self) -> Result<(), NvmeError> {
        self.stop_bounded(self.ctrl.config().admin_timeout, None)
    }

    /// [`NvmeQueue::stop`] with each deletion bounded by `bound` instead of the admin timeout
    /// (the teardown's abort step cannot wait the admin timeout for a hung controller: it
    /// resets it instead), and so is the wait for another thread's reset to prove the end of
    /// DMA: when `bound` runs out first, the stop fails with [`NvmeError::DisableUnproven`]
    /// and releases nothing; a later stop succeeds once that reset has proven it.
    ///
    /// # Errors
    /// As [`NvmeQueue::stop`], and [`NvmeError::DisableUnproven`].
    pub fn stop_within(&mut self, bound: Duration) -> Result<(), NvmeError> {
        self.stop_bounded(bound, Some(bound))
    }

    /// The stop, each deletion bounded by `bound`, the wait for another thread's reset by
    /// `caller_bound` (None: what that reset may take, then a reset of this thread's own).
    fn stop_bounded(&mut self, bound: Duration, caller_bound: Option<Duration>) -> Result<(), NvmeError> {
        self.running = false;
        if !self.live_on_device() {
            // Stopped with the controller, once that is proven: a queue is failed on another
            // thread's reset only after CSTS.RDY = 0, never while it may still be DMAing.
            self.await_disabled(caller_bound)?;
            self.live_epoch = None;
            return Ok(());
        }
        if self.ctrl.is_gone() {
            return Err(NvmeError::Gone {
                device: self.ctrl.id().to_owned(),
            });
        }
        self.delete("DELETE I/O SQ", admin_opcode::DELETE_SQ, bound, caller_bound)?;
        self.delete("DELETE I/O CQ", admin_opcode::DELETE_CQ, bound, caller_bound)?;
        self.ctrl.queue_deleted(self.qid);
        self.live_epoch = None;
        log::debug!("{}: I/O queue {} deleted", self.ctrl.id(), self.qid);
        Ok(())
    }

    /// When dropped, leave the rings and the PRP/DSM pages mapped (the controller may still
    /// read or write them: nothing proved it stopped).
    pub fn leak_on_drop(&mut self) {
        self.sq.leak_on_drop();
        self.cq.leak_on_drop();
        self.pages.leak_on_drop();
    }

    /// Forget every request in flight and return their tags. Only after a successful
    /// [`NvmeQueue::stop`] or a controller reset (then no DMA for them can happen).
    pub fn abandon_all(&mut self) -> Vec<u64> {
        let mut tags: Vec<u64> = self.local.drain(..).map(|c| c.user_tag).collect();
        for slot in 0..self.slots.len() as u16 {
            let entry = self.slots[usize::from(slot)];
            if let Some(tag) = entry.user_tag {
                if !matches!(entry.fused, Some((_, false))) {
                    tags.push(tag); // a fused pair once, at its first command
                }
                self.release(slot);
            }
        }
        tags
    }

    /// Run again after a stop or a controller reset: zeroed rings, head, tail and phase back
    /// to the start, and the CQ then the SQ created again through the admin queue. Not while
    /// a recovery of the controller is under way: its enable lets the admin queue serve before
    /// its reset count moves, and requests of a queue re-created then would be failed by that
    /// move (the store fails a queue's requests ABORTED when the count moves) while the
    /// controller may still run them and move their data.
    ///
    /// # Errors
    /// [`NvmeError::Unsupported`] when requests are still in flight (abandon them first);
    /// [`NvmeError::ResetUnderWay`] while a recovery runs and [`NvmeError::Disabled`] when the
    /// controller is not enabled (restart again once the reset count moves); errors of the
    /// admin commands. The queue is left stopped.
    pub fn restart(&mut self) -> Result<(), NvmeError> {
        if self.in_flight() > 0 {
            return Err(NvmeError::Unsupported {
                device: self.ctrl.id().to_owned(),
                what: format!(
                    "restart of queue {} with {} requests in flight: abandon them first",
                    self.qid,
                    self.in_flight()
                ),
            });
        }
        // Deletes the queue, or proves the controller dropped it (no DMA into the rings).
        self.stop()?;
        // The epoch before the recovery flag (see `NvmeController::recovery_under_way`).
        let epoch = self.ctrl.epoch();
        if self.ctrl.recovery_under_way() {
            return Err(NvmeError::ResetUnderWay {
                device: self.ctrl.id().to_owned(),
                queue: self.qid,
            });
        }
        if !self.ctrl.is_enabled() {
            return Err(NvmeError::Disabled {
                device: self.ctrl.id().to_owned(),
            });
        }
        self.running = false;
        self.live_epoch = None;
        self.sq.reset();
        self.cq.reset();
        if let Some(irq) = &self.irq {
            irq.clear();
        }
        self.create_on_device(epoch)?;
        self.stats.restarts += 1;
        Ok(())
    }

    /// Ring pointers and doorbell values, for logs and `diag`.
    pub fn dump(&self) -> String {
        let mut s = String::new();
        let _ = write!(
            s,
            "queue {}: depth {}, {} in flight, running {}, on device {}, SQ tail doorbell {} with {} entries \
             not yet consumed, CQ head {} (doorbell {}) phase {}, unknown completions {}, submitted {}, \
             completed {}, restarts {}, aborts sent {} accepted {}",
            self.qid,
            self.depth,
            self.in_flight(),
            self.is_running(),
            self.live_on_device(),
            self.last_sq_doorbell,
            self.sq.in_flight(),
            self.cq.head(),
            self.last_cq_doorbell,
            u8::from(self.cq.expected_phase()),
            self.stats.unknown_tags,
            self.stats.submitted,
            self.stats.completed,
            self.stats.restarts,
            self.stats.aborts_sent,
            self.stats.aborts_accepted
        );
        if self.irq.is_none() {
            s.push_str(", polled (no MSI-X vector)");
        }
        s
    }
}

/// Data segments (IOVA, bytes).
type SegmentList = Vec<(u64, u32)>;

/// Split `segments` at byte `at` into the segments before it and those from it on.
fn split_segments(segments: &[(u64, u32)], at: u32) -> (SegmentList, SegmentList) {
    let (mut before, mut after) = (Vec::new(), Vec::new());
    let mut offset = 0u32;
    for &(iova, len) in segments {
        let end = offset.saturating_add(len);
        if end <= at {
            before.push((iova, len));
        } else if offset >= at {
            after.push((iova, len));
        } else {
            let head = at - offset;
            before.push((iova, head));
            after.push((iova + u64::from(head), len - head));
        }
        offset = end;
    }
    (before, after)
}

/// The device-independent status of a fused Compare and Write from its two commands' (NVMe
/// 1.4 §4.12): the Compare's failure names the outcome (Compare Failure is the miscompare);
/// a Compare that succeeded, or was aborted because the Write failed, leaves it to the Write.
fn fused_status(compare: Status, write: Status) -> DeviceStatus {
    let aborted_for_the_other = |s: Status| s.sct() == sct::GENERIC && s.sc() == sc::ABORTED_FAILED_FUSED;
    if compare.is_success() || aborted_for_the_other(compare) {
        write.device_status()
    } else {
        compare.device_status()
    }
}

impl Drop for NvmeQueue {
    /// Safety net: a queue still on the device is deleted before its rings are unmapped
    /// (bounded by the admin timeout; errors logged, never a panic).
    fn drop(&mut self) {
        if self.live_epoch.is_some() && !self.ctrl.is_gone() {
            if let Err(e) = self.stop() {
                log::error!(
                    "{}: queue {} on drop: {e}; its rings stay mapped: nothing proves the \
                     controller stopped using them",
                    self.ctrl.id(),
                    self.qid
                );
                self.leak_on_drop();
            }
        }
    }
}
