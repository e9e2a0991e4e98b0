//! One SCA-1 queue pair, owned by one thread (accelerator.md §2–§6): descriptors into the
//! submission ring, one doorbell per batch, completions validated against the in-flight table
//! before they are trusted, and the stop / restart primitives recovery is built from.

use super::desc::flags;
use super::desc::Completion;
use super::desc::Descriptor;
use super::desc::SglEntry;
use super::driver::ResetState;
use super::driver::Sca1Error;
use super::regs;
use super::regs::control;
use super::regs::doorbell;
use super::regs::global;
use super::regs::queue;
use crate::irq_gate::IrqGate;
use scst_accel_dma::mapping::IovaLock;
use scst_accel_dma::CompletionRing;
use scst_accel_dma::DmaRegion;
use scst_accel_dma::MappedRegion;
use scst_accel_dma::SubmissionRing;
use scst_accel_hal::DeviceBacking;
use scst_accel_hal::DmaMapper;
use scst_accel_hal::EventFd;
use scst_accel_hal::HalError;
use std::os::fd::AsFd;
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;
use zerocopy::IntoBytes;

/// Bits of a tag that index the slot table; the rest is a generation that catches stale and
/// duplicated completions.
const SLOT_BITS: u16 = 12;
const SLOT_MASK: u16 = (1 << SLOT_BITS) - 1;

/// Queue geometry.
#[derive(Clone, Copy, Debug)]
pub struct QueueConfig {
    /// Queue index.
    pub index: u32,
    /// Ring entries (power of two, at most 4096).
    pub entries: u32,
    /// Scatter entries per descriptor.
    pub max_sgl: u32,
    /// STOP_TIMEOUT.
    pub stop_timeout: Duration,
    /// INT_COALESCE.REARM is on (accelerator.md §9): an acknowledgement must reach the device
    /// before the ring is looked at, so the INT_STATUS_CLEAR is flushed with a read.
    pub rearm: bool,
    /// SQ_BASE and CQ_BASE are written as two 32-bit halves, low first
    /// ([`super::Sca1Config::split_64bit_mmio`]).
    pub split_64bit_mmio: bool,
}

/// Clear queue `config.index`'s INT_STATUS bit (§1), which under REARM re-arms its vector
/// (§9). Under REARM the clear is then flushed by a read of INT_STATUS: a BAR write is posted
/// (PCIe lets it arrive later, and a read does not pass it), and a clear still in flight when
/// the host looks at the ring would let the device post an entry the look missed, with the
/// queue not yet re-armed, so no interrupt would follow: a lost wake-up until the deadline.
fn acknowledge(device: &dyn DeviceBacking, config: &QueueConfig) {
    let bar = device.bar0();
    bar.write32(global::INT_STATUS_CLEAR, 1 << config.index);
    if config.rearm {
        let _ = bar.read32(global::INT_STATUS);
    }
}

/// One request for the device.
#[derive(Clone, Copy, Debug)]
pub struct Sca1Request<'a> {
    /// Caller's tag, returned in the completion.
    pub user_tag: u64,
    /// [`super::desc::opcode`].
    pub opcode: u8,
    /// Force unit access.
    pub fua: bool,
    /// First block.
    pub lba: u64,
    /// Bytes.
    pub length: u32,
    /// Data segments (IOVA, bytes); one segment goes inline, more go in a scatter list.
    pub segments: &'a [(u64, u32)],
    /// COPY: the source LBA, carried in `addr` (no segments).
    pub source: Option<u64>,
}

/// A validated completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sca1Completion {
    /// The request's tag.
    pub user_tag: u64,
    /// [`super::desc::cq_status`].
    pub status: u8,
    /// Bytes moved.
    pub bytes: u32,
    /// Error detail.
    pub detail: u32,
}

pub use crate::engine::SubmitError;

/// Counters of device misbehaviour and work, for reports and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Descriptors submitted.
    pub submitted: u64,
    /// Completions accepted.
    pub completed: u64,
    /// Completions whose tag matched nothing in flight (never followed).
    pub unknown_tags: u64,
    /// Completions whose tag matched a request in flight but which cannot be its completion:
    /// the engine had not consumed the descriptor yet (the entry's `sq_head` does not cover
    /// it), or status OK did not account for the request's bytes (§4). Refused, never
    /// followed; the request stays in flight for its real completion or its deadline.
    pub refused: u64,
    /// Doorbell writes.
    pub doorbells: u64,
    /// Reads of the interrupt eventfd: one per `prepare_to_wait` that finds nothing posted,
    /// and, for an owner that never prepares, one per reap that finds nothing twice in a row
    /// (`irq_gate.rs`).
    pub irq_reads: u64,
    /// Times the queue was restarted.
    pub restarts: u64,
}

#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    user_tag: Option<u64>,
    generation: u16,
    submitted: Option<Instant>,
    /// The request's length: an OK completion must report exactly this many bytes (§4).
    length: u32,
    /// Set once a completion's `sq_head` has moved past the descriptor: only then can the
    /// engine have executed it, so only then can a completion for its tag be its own.
    consumed: bool,
}

/// Lets rings map their memory through the device's IOMMU domain.
///
/// It reaches the domain through [`DeviceBacking::dma`] on every call, and a `DmaMapper` must
/// act on one domain for its whole life (its `# Safety`), which a safe `DeviceBacking` cannot be
/// trusted to keep. So the mapper notes the domain it first saw and refuses to map or unmap
/// through any other: an unmap refused is a leak (the memory stays allocated), never memory
/// freed while another domain still maps it.
struct DeviceMapper {
    device: Arc<dyn DeviceBacking>,
    /// The address of the domain `device.dma()` returned when this mapper was made.
    domain: usize,
}

impl DeviceMapper {
    fn new(device: Arc<dyn DeviceBacking>) -> Self {
        let domain = domain_of(device.dma());
        Self { device, domain }
    }

    /// The device's domain, if it is still the one this mapper was made with; else the error
    /// of `call` on `iova` and `len`, which names the refusal (one place for both calls, so
    /// map and unmap refuse alike).
    fn domain(&self, call: Call, iova: u64, len: u64) -> Result<&dyn DmaMapper, HalError> {
        let dma = self.device.dma();
        if domain_of(dma) == self.domain {
            return Ok(dma);
        }
        let device = self.device.id().to_owned();
        let source = std::io::Error::other(
            "the device's IOMMU domain changed since its rings were mapped (a DeviceBacking bug)",
        );
        Err(match call {
            Call::Map => HalError::Map {
                device,
                iova,
                len,
                source,
            },
            Call::Unmap => HalError::Unmap {
                device,
                iova,
                len,
                source,
            },
        })
    }
}

/// The [`DmaMapper`] call a refused domain fails ([`DeviceMapper::domain`]).
#[derive(Clone, Copy, Debug)]
enum Call {
    Map,
    Unmap,
}

/// A domain's identity: the address of the object behind the reference.
fn domain_of(dma: &dyn DmaMapper) -> usize {
    std::ptr::from_ref(dma).cast::<()>() as usize
}

// SAFETY: every map and unmap goes to the one domain this mapper was made with (checked on each
// call, `DeviceMapper::domain`), whose own `DmaMapper` implementation keeps the trait's promises;
// a call that would reach another is refused.
#[allow(unsafe_code)]
unsafe impl DmaMapper for DeviceMapper {
    unsafe fn map(&self, iova: u64, host: u64, len: u64) -> Result<(), HalError> {
        let dma = self.domain(Call::Map, iova, len)?;
        // SAFETY: our caller upholds `DmaMapper::map`'s contract, which we pass on unchanged.
        unsafe { dma.map(iova, host, len) }
    }

    fn unmap(&self, iova: u64, len: u64) -> Result<(), HalError> {
        let dma = self.domain(Call::Unmap, iova, len)?;
        dma.unmap(iova, len)
    }
}

/// Wrap a device so DMA users (rings, the SGV pool) can hold its mapper.
pub fn device_mapper(device: Arc<dyn DeviceBacking>) -> Arc<dyn DmaMapper> {
    Arc::new(DeviceMapper::new(device))
}

/// A queue pair.
pub struct Sca1Queue {
    device: Arc<dyn DeviceBacking>,
    config: QueueConfig,
    sq: SubmissionRing,
    cq: CompletionRing,
    sgl: MappedRegion,
    irq: Option<EventFd>,
    /// When a reap reads `irq` ([`IrqGate`]).
    irq_gate: IrqGate,
    slots: Vec<Slot>,
    free: Vec<u16>,
    /// Submission-ring index -> slot, for descriptors the engine has not consumed yet.
    unconsumed: Vec<Option<u16>>,
    seq: u32,
    running: bool,
    stats: QueueStats,
    /// The function's resets: no restart while one is under way.
    resets: Arc<ResetState>,
    /// [`ResetState::started`] when this run of the queue began (its creation or its last
    /// restart): a reset started since cleared its RUN (accelerator.md §7), whichever queue's
    /// recovery it was, so the queue is not running whatever `running` says.
    ran_under: u64,
    /// Reused by the engine-contract reap (no allocation per reap).
    pub(super) reaped: Vec<Sca1Completion>,
}

impl Sca1Queue {
    /// Allocate and map the rings and scatter lists, program the queue registers and set RUN.
    ///
    /// # Errors
    /// [`Sca1Error::Setup`] when memory or mappings cannot be had.
    pub fn create(
        device: Arc<dyn DeviceBacking>,
        iovas: Arc<IovaLock>,
        config: QueueConfig,
        irq: Option<EventFd>,
    ) -> Result<Self, Sca1Error> {
        Self::create_in(device, iovas, config, irq, Arc::default())
    }

    /// [`Sca1Queue::create`] for a queue of the function whose resets `resets` follows.
    pub(super) fn create_in(
        device: Arc<dyn DeviceBacking>,
        iovas: Arc<IovaLock>,
        config: QueueConfig,
        irq: Option<EventFd>,
        resets: Arc<ResetState>,
    ) -> Result<Self, Sca1Error> {
        let entries = config.entries.clamp(2, 1 << SLOT_BITS);
        let setup = |what: &str, e: &dyn std::fmt::Display| Sca1Error::Setup {
            device: device.id().to_owned(),
            what: format!("queue {}: {what}: {e}", config.index),
        };
        let mapper = device_mapper(Arc::clone(&device));
        let map = |bytes: usize| -> Result<MappedRegion, Sca1Error> {
            let region = DmaRegion::new(bytes.max(4096)).map_err(|e| setup("ring memory", &e))?;
            MappedRegion::new(region, Arc::clone(&mapper), Arc::clone(&iovas))
                .map_err(|e| setup("ring mapping", &e))
        };
        let sq = SubmissionRing::new(map(entries as usize * 32)?, entries, 32)
            .map_err(|e| setup("submission ring", &e))?;
        let cq = CompletionRing::new(map(entries as usize * 16)?, entries, 16, 3, super::desc::CQ_PHASE)
            .map_err(|e| setup("completion ring", &e))?;
        let sgl = map(entries as usize * config.max_sgl.max(1) as usize * 16)?;
        // N − 1 tags for a ring of N (accelerator.md §4): the ring's one empty slot bounds only
        // what the engine has not consumed, and an engine that fetches ahead (§3) reports
        // sq_head past descriptors it has not completed, so with N tags a host could have N
        // requests outstanding, one more than a device may size its state on.
        let tags = entries as u16 - 1;
        let mut q = Self {
            device,
            config: QueueConfig { entries, ..config },
            sq,
            cq,
            sgl,
            irq,
            irq_gate: IrqGate::default(),
            slots: vec![Slot::default(); usize::from(tags)],
            free: (0..tags).rev().collect(),
            unconsumed: vec![None; entries as usize],
            seq: 0,
            running: false,
            stats: QueueStats::default(),
            // Read before RUN is set: a reset that starts after this stops the run below.
            ran_under: resets.started(),
            resets,
            reaped: Vec::new(),
        };
        q.program_and_run();
        Ok(q)
    }

    fn reg(&self, offset: u64) -> u64 {
        queue::reg(self.config.index, offset)
    }

    /// Program SQ/CQ base, size, vector, unmask, RUN (accelerator.md §7 bring-up).
    fn program_and_run(&mut self) {
        let bar = self.device.bar0();
        let split = self.config.split_64bit_mmio;
        super::driver::write64(bar, split, self.reg(queue::SQ_BASE), self.sq.iova());
        super::driver::write64(bar, split, self.reg(queue::CQ_BASE), self.cq.iova());
        bar.write32(self.reg(queue::RING_SIZE), self.config.entries);
        bar.write32(self.reg(queue::Q_VECTOR), self.config.index);
        if self.irq.is_some() {
            bar.write32(global::INT_MASK_CLEAR, 1 << self.config.index);
        }
        bar.write32(self.reg(queue::Q_CONTROL), queue::RUN);
        self.running = true;
    }

    /// Queue index.
    pub fn index(&self) -> u32 {
        self.config.index
    }

    /// Counters.
    pub fn stats(&self) -> QueueStats {
        self.stats
    }

    /// Requests in flight: at most RING_SIZE − 1 (§4).
    pub fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Whether the queue accepts requests: it runs, and no reset of the function started since
    /// its run began. A reset clears every queue's RUN (accelerator.md §7), so a queue that
    /// another queue's recovery reset is stopped too, though it stopped nothing itself: its
    /// engine takes nothing more from the ring, and a request put there would only wait for
    /// its deadline. What it has in flight stays in flight (a stop, or the reset count's move,
    /// ends it: docs/boards.md rule 5); [`Sca1Queue::restart`] runs it again.
    pub fn is_running(&self) -> bool {
        self.running && self.resets.started() == self.ran_under
    }

    /// The oldest in-flight request's submission time (for deadlines).
    pub fn oldest_submission(&self) -> Option<Instant> {
        self.slots.iter().filter_map(|s| s.submitted).min()
    }

    /// Tags in flight submitted before `cutoff`.
    pub fn expired(&self, cutoff: Instant) -> Vec<u64> {
        self.slots
            .iter()
            .filter(|s| s.submitted.is_some_and(|t| t < cutoff))
            .filter_map(|s| s.user_tag)
            .collect()
    }

    /// The interrupt eventfd, readable when completions may have been posted.
    pub fn notify_fd(&self) -> Option<BorrowedFd<'_>> {
        self.irq.as_ref().map(|e| e.as_fd())
    }

    /// Queue one request (not visible to the device until [`Sca1Queue::ring_doorbell`]).
    ///
    /// # Errors
    /// [`SubmitError`].
    pub fn submit(&mut self, req: &Sca1Request<'_>) -> Result<(), SubmitError> {
        // A reset that starts after this look clears the ring under the request: the store
        // fails it when the recovery's count moves, or a stop ends it at its deadline (a plain
        // reset), as any request in flight across a reset.
        if !self.is_running() {
            return Err(SubmitError::NotRunning);
        }
        if req.segments.len() > self.config.max_sgl as usize {
            return Err(SubmitError::TooManySegments {
                segments: req.segments.len(),
                max: self.config.max_sgl,
            });
        }
        if self.sq.free_slots() == 0 {
            return Err(SubmitError::Full);
        }
        let Some(slot) = self.free.pop() else {
            return Err(SubmitError::Full);
        };
        let (desc_flags, addr, sgl_entries) = match req.segments {
            [] => (0, req.source.unwrap_or(0), 0),
            [(iova, _)] => (0, *iova, 0),
            many => {
                let base = slot as usize * self.config.max_sgl as usize * 16;
                for (i, &(iova, length)) in many.iter().enumerate() {
                    let entry = SglEntry {
                        iova,
                        length,
                        reserved: 0,
                    };
                    self.sgl.region().write_obj(base + i * 16, &entry);
                }
                (flags::SGL, self.sgl.iova() + base as u64, many.len() as u16)
            }
        };
        let entry = &mut self.slots[slot as usize];
        entry.user_tag = Some(req.user_tag);
        entry.submitted = Some(Instant::now());
        entry.length = req.length;
        entry.consumed = false;
        let tag = (entry.generation << SLOT_BITS) | slot;
        let desc = Descriptor {
            opcode: req.opcode,
            flags: desc_flags | if req.fua { flags::FUA } else { 0 },
            tag,
            seq: self.seq,
            lba: req.lba,
            length: req.length,
            sgl_entries,
            reserved: 0,
            addr,
        };
        match self.sq.push(desc.as_bytes()) {
            Ok(index) => self.unconsumed[index as usize] = Some(slot),
            Err(_) => {
                self.release(slot);
                return Err(SubmitError::Full);
            }
        }
        self.seq = self.seq.wrapping_add(1);
        self.stats.submitted += 1;
        Ok(())
    }

    /// Make queued descriptors visible: one doorbell write per batch, only if anything is new.
    pub fn ring_doorbell(&mut self) {
        if let Some(tail) = self.sq.commit() {
            self.device
                .bar0()
                .write32(doorbell::sq_tail(self.config.index), tail);
            self.stats.doorbells += 1;
            self.irq_gate.doorbell();
        }
    }

    fn release(&mut self, slot: u16) {
        let entry = &mut self.slots[slot as usize];
        entry.user_tag = None;
        entry.submitted = None;
        entry.consumed = false;
        entry.generation = (entry.generation + 1) & (u16::MAX >> SLOT_BITS);
        self.free.push(slot);
    }

    /// Move posted completions into `out`, trusting none before its tag matches a request in
    /// flight with the same generation (unknown and duplicated tags are counted and logged,
    /// never followed) and it can be that request's completion (see `Sca1Queue::vet`).
    /// Returns how many were accepted.
    ///
    /// At most ring size - 1 entries are taken per call: an honest device posts no more before
    /// the host releases them with the CQ_HEAD written at the end of the call (§4: one slot
    /// stays empty), so the budget only stops a device that ignores CQ_HEAD and keeps writing
    /// valid-phase entries from holding the owner here, away from its deadlines and health
    /// checks. What is left is taken by the next call. Bad entries are logged once per call.
    pub fn reap(&mut self, out: &mut Vec<Sca1Completion>) -> usize {
        // The head entry carries the expected phase (§4): the device has posted it.
        let (device, config) = (&self.device, &self.config);
        let (posted, read) = self.irq_gate.reap(self.irq.as_ref(), &self.cq, || {
            acknowledge(device.as_ref(), config)
        });
        self.stats.irq_reads += u64::from(read);
        if !posted {
            return 0;
        }
        let mut accepted = 0;
        let mut consumed = 0;
        let budget = self.config.entries - 1;
        // The first untrusted entry of the call and how many followed, for one log line each.
        let mut unknown: Option<(Completion, u64)> = None;
        let mut refused: Option<(Completion, &'static str, u64)> = None;
        while consumed < budget {
            let Some(c) = self.cq.pop::<Completion>() else {
                break;
            };
            consumed += 1;
            let slot = c.tag & SLOT_MASK;
            let generation = c.tag >> SLOT_BITS;
            let matches = self
                .slots
                .get(slot as usize)
                .is_some_and(|s| s.user_tag.is_some() && s.generation == generation);
            if !matches {
                self.stats.unknown_tags += 1;
                unknown.get_or_insert((c, 0)).1 += 1;
                continue;
            }
            self.advance_head(c.sq_head);
            if let Err(why) = self.vet(slot, &c) {
                self.stats.refused += 1;
                refused.get_or_insert((c, why, 0)).2 += 1;
                continue;
            }
            let user_tag = self.slots[slot as usize].user_tag.unwrap_or_default();
            self.release(slot);
            self.stats.completed += 1;
            out.push(Sca1Completion {
                user_tag,
                status: c.status,
                bytes: c.bytes,
                detail: c.detail,
            });
            accepted += 1;
        }
        if consumed > 0 {
            let bar = self.device.bar0();
            bar.write32(doorbell::cq_head(self.config.index), self.cq.head());
        }
        if let Some((c, n)) = unknown {
            log::warn!(
                "{} queue {}: {n} completions matched nothing in flight (the first: tag {:#06x}, status \
                 {}); ignored",
                self.device.id(),
                self.config.index,
                c.tag,
                c.status
            );
        }
        if let Some((c, why, n)) = refused {
            log::warn!(
                "{} queue {}: {n} completions cannot be their requests' (the first: tag {:#06x}, status \
                 {}, {} bytes: {why}); refused, the requests stay in flight",
                self.device.id(),
                self.config.index,
                c.tag,
                c.status,
                c.bytes
            );
        }
        if consumed == budget && self.cq.head_posted() {
            log::debug!(
                "{} queue {}: {budget} completions taken in one reap and more posted; the rest on \
                 the next",
                self.device.id(),
                self.config.index
            );
        }
        accepted
    }

    /// [`QueueEngine::prepare_to_wait`](crate::engine::QueueEngine::prepare_to_wait): with a
    /// completion posted, say so (the owner reaps; no read). Otherwise clear the queue's
    /// INT_STATUS bit (under REARM this re-arms its vector, §9), read the interrupt eventfd
    /// (the signals of completions reaped so far), then look at the ring again: a completion
    /// posted after the clear signals again (`irq_gate.rs`).
    pub fn prepare_to_wait(&mut self) -> bool {
        let (device, config) = (&self.device, &self.config);
        let (posted, read) = self.irq_gate.prepare_to_wait(self.irq.as_ref(), &self.cq, || {
            acknowledge(device.as_ref(), config)
        });
        self.stats.irq_reads += u64::from(read);
        posted
    }

    /// Take the engine's submission head from a completion (§4) and mark every descriptor it
    /// moved past as consumed. A head outside the in-flight window is logged and ignored.
    fn advance_head(&mut self, sq_head: u16) {
        let old = self.sq.head();
        if let Err(e) = self.sq.try_update_head(u32::from(sq_head)) {
            log::warn!("{} queue {}: {e}; ignored", self.device.id(), self.config.index);
            return;
        }
        let mask = self.config.entries - 1;
        let mut index = old;
        while index != self.sq.head() {
            if let Some(slot) = self.unconsumed[index as usize].take() {
                self.slots[slot as usize].consumed = true;
            }
            index = (index + 1) & mask;
        }
    }

    /// Whether completion `c`, whose tag matches `slot`, can be that request's completion. A
    /// device that posts a tag it was never given can hit a tag the host has just submitted
    /// (it cannot know the host's next tags), so a matching tag is not enough: the engine
    /// must have consumed the descriptor, and OK must account for every byte (§4).
    fn vet(&self, slot: u16, c: &Completion) -> Result<(), &'static str> {
        let s = &self.slots[slot as usize];
        if !s.consumed {
            return Err("the engine has not consumed its descriptor (sq_head does not cover it)");
        }
        if c.status == super::desc::cq_status::OK && c.bytes != s.length {
            return Err("status OK with a byte count other than the request's length");
        }
        Ok(())
    }

    /// Q_ERROR and Q_ERROR_INDEX when Q_STATUS.ERROR is set.
    pub fn error_registers(&self) -> Option<(u32, u32)> {
        let bar = self.device.bar0();
        self.status().filter(|s| s & queue::ERROR != 0).map(|_| {
            (
                bar.read32(self.reg(queue::Q_ERROR)),
                bar.read32(self.reg(queue::Q_ERROR_INDEX)),
            )
        })
    }

    /// Q_STATUS, or `None` when the device is gone.
    pub fn status(&self) -> Option<u32> {
        let s = self.device.bar0().read32(self.reg(queue::Q_STATUS));
        (s != regs::ALL_ONES).then_some(s)
    }

    /// Stop handshake (accelerator.md §6): clear RUN and wait, bounded by STOP_TIMEOUT, for BUSY
    /// to clear. `Ok` means the queue's engine holds nothing: buffers of its abandoned
    /// descriptors may be reclaimed.
    ///
    /// # Errors
    /// [`Sca1Error::Gone`] or [`Sca1Error::Timeout`] (the engine is hung: only a reset helps).
    pub fn stop(&mut self) -> Result<(), Sca1Error> {
        self.running = false;
        let bar = self.device.bar0();
        bar.write32(self.reg(queue::Q_CONTROL), 0);
        self.wait_idle()
    }

    /// Wait, bounded by STOP_TIMEOUT, for Q_STATUS.BUSY to clear after RUN = 0 (§6).
    fn wait_idle(&self) -> Result<(), Sca1Error> {
        let deadline = Instant::now() + self.config.stop_timeout;
        let mut pause = Duration::from_micros(10);
        loop {
            match self.status() {
                None => {
                    return Err(Sca1Error::Gone {
                        device: self.device.id().to_owned(),
                    })
                }
                Some(s) if s & queue::BUSY == 0 => return Ok(()),
                Some(_) if Instant::now() >= deadline => {
                    return Err(Sca1Error::Timeout {
                        device: self.device.id().to_owned(),
                        what: "queue BUSY to clear after RUN=0",
                        timeout: self.config.stop_timeout,
                    })
                }
                Some(_) => {
                    // A wait on the device: no lock may be held (asserted in test builds).
                    scst_accel_hal::locks::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(1));
                }
            }
        }
    }

    /// When dropped, leave the rings and the scatter-list area mapped (the engine may still
    /// read or write them: no stop, reset or cleared bus master proved it does not).
    pub fn leak_on_drop(&mut self) {
        self.sq.leak_on_drop();
        self.cq.leak_on_drop();
        self.sgl.leak_on_drop();
    }

    /// Forget every request in flight and return their tags. Call only after [`Sca1Queue::stop`]
    /// succeeded or the function was reset (or is gone): then no DMA for them can happen.
    pub fn abandon_all(&mut self) -> Vec<u64> {
        let slots: Vec<u16> = (0..self.slots.len() as u16)
            .filter(|&s| self.slots[s as usize].user_tag.is_some())
            .collect();
        let mut tags = Vec::with_capacity(slots.len());
        for slot in slots {
            if let Some(tag) = self.slots[slot as usize].user_tag {
                tags.push(tag);
            }
            self.release(slot);
        }
        self.unconsumed.fill(None);
        tags
    }

    /// Empty the rings and run again (after a stop or a reset, with nothing in flight). RUN is
    /// cleared first and the engine waited for (bounded by STOP_TIMEOUT): the ring registers
    /// are writable only while RUN = 0, and only a RUN 0 → 1 edge starts the engine's head,
    /// phase and sequence over with the host's (accelerator.md §2); a queue still running
    /// would keep its old ring state while the host starts a new one, and nothing would
    /// complete. No restart while a reset of the function is under way (see `ResetState`),
    /// nor on a function a plain reset left disabled (the teardown's, a store's give-up):
    /// RUN is set only on an enabled function (accelerator.md §7 bring-up), and a queue run
    /// on a disabled one would take requests no engine executes, each waiting for its
    /// deadline.
    ///
    /// # Errors
    /// [`Sca1Error::ResetUnderWay`] (restart again once the function's reset count moves),
    /// [`Sca1Error::Disabled`] (CONTROL.ENABLE reads 0: recover the function first), or as
    /// [`Sca1Queue::stop`]. The queue is left stopped.
    pub fn restart(&mut self) -> Result<(), Sca1Error> {
        debug_assert_eq!(self.in_flight(), 0, "restart with requests in flight");
        let Some(quiet) = self.resets.quiet() else {
            self.running = false;
            return Err(self.reset_under_way());
        };
        self.stop()?;
        // ENABLE, not READY: a FATAL function is enabled and not READY, and its queue restarts
        // as before (the store's health check recovers it). A reset that starts after this
        // read is caught by `still_quiet` below.
        if self.device.bar0().read32(global::CONTROL) & control::ENABLE == 0 {
            // A recovery whose reset began after the look above is under way, not a disable
            // for good: the caller retries it as such.
            if !self.resets.still_quiet(quiet) {
                return Err(self.reset_under_way());
            }
            return Err(Sca1Error::Disabled {
                device: self.device.id().to_owned(),
                queue: self.config.index,
            });
        }
        self.sq.reset();
        self.cq.reset();
        self.unconsumed.fill(None);
        self.seq = 0;
        self.program_and_run();
        // A read does not pass the writes before it: once it returns, RUN has reached the
        // device, so a reset that starts after the check below stops this run of the queue.
        let _ = self.status();
        if !self.resets.still_quiet(quiet) {
            // A reset started meanwhile, and RUN may have reached the device after it: requests
            // submitted now could run after the reset, to be failed when its recovery publishes
            // its count. Stopped again; the caller restarts once the count moves.
            self.running = false;
            self.device.bar0().write32(self.reg(queue::Q_CONTROL), 0);
            return Err(self.reset_under_way());
        }
        // No reset started between the look before RUN was set and now: this run began under
        // `quiet`, and the next reset to start stops it.
        self.ran_under = quiet;
        self.stats.restarts += 1;
        Ok(())
    }

    fn reset_under_way(&self) -> Sca1Error {
        Sca1Error::ResetUnderWay {
            device: self.device.id().to_owned(),
            queue: self.config.index,
        }
    }
}
