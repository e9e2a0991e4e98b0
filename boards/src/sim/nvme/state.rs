//! The controller's state behind one lock: the register file (§3.1), the queues the worker
//! serves, and the reset and enable transitions (§7.6.1, §7.6.2, §7.3). Pure state changes:
//! no DMA, no interrupt, no wait happens here; a register write returns its [`Effects`] for the
//! caller to carry out after unlocking.

use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use super::spec;
use super::spec::aqa;
use super::spec::cc;
use super::spec::csts;
use super::spec::reg;
use super::NvmeSimConfig;

/// I/O queue deletions [`ControllerState::deletions`] keeps (the newest).
const DELETIONS_KEPT: usize = 256;

/// One I/O queue deletion the controller carried out (Delete I/O Submission Queue, §5.6, or
/// Delete I/O Completion Queue, §5.5), as [`NvmeSimHandle::deletions`](super::NvmeSimHandle::deletions)
/// lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueDeletion {
    /// I/O submission queue `qid` deleted.
    Sq(u16),
    /// I/O completion queue `qid` deleted.
    Cq(u16),
}

/// A submission queue the controller serves.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SubQueue {
    pub base: u64,
    /// Entries (1-based).
    pub size: u16,
    /// Next entry to fetch.
    pub head: u16,
    /// Last tail doorbell value.
    pub tail: u16,
    pub cqid: u16,
}

/// A completion queue the controller posts to.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CompQueue {
    pub base: u64,
    /// Entries (1-based).
    pub size: u16,
    /// Last head doorbell value.
    pub head: u16,
    /// Next entry to post.
    pub tail: u16,
    /// Phase tag of the current pass (starts at 1, §4.6).
    pub phase: bool,
    pub vector: u16,
    pub ien: bool,
    /// Slots promised to commands taken from SQs that post here and not yet posted: with one
    /// worker per SQ, several SQs sharing this CQ must not each count the same free slot.
    pub reserved: u16,
}

impl CompQueue {
    /// A free slot exists for one more command: a queue of N entries holds at most N - 1
    /// completions (§4.1), counting those already promised.
    pub(crate) fn has_room(&self) -> bool {
        self.room() > 0
    }

    /// Free slots for more commands, those promised counted as taken.
    pub(crate) fn room(&self) -> u16 {
        let posted = (self.tail + self.size - self.head) % self.size;
        self.size.saturating_sub(posted + self.reserved + 1)
    }
}

/// Where the controller is between CC.EN and CSTS.RDY.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Readiness {
    /// CC.EN = 0, CSTS.RDY = 0.
    Disabled,
    /// CC.EN = 1; CSTS.RDY becomes 1 at `ready_at`.
    Enabling { ready_at: Instant },
    /// CC.EN = 1, CSTS.RDY = 1: commands are processed.
    Ready,
    /// CC.EN went 1→0 while a worker held a command, or less than the configured
    /// `disable_micros` ago: CSTS.RDY stays 1 until every worker lets go of its command (so
    /// RDY = 0 proves no DMA follows, §7.6.2) and `until` has passed.
    Resetting {
        /// RDY may clear from then on.
        until: Instant,
    },
}

/// What the worker should do next.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Work {
    /// Execute the command at `index` of SQ `sqid`.
    Command(Job),
    /// Complete the held Asynchronous Event Request `cid` with `dw0`.
    Event { epoch: u64, cid: u16, dw0: u32 },
}

/// One command taken from a submission queue.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Job {
    /// The controller epoch it was taken in: any reset makes it stale.
    pub epoch: u64,
    pub sqid: u16,
    pub index: u16,
    pub sq_base: u64,
    pub cqid: u16,
    /// SQ head after taking it, reported as SQHD.
    pub sqhd: u16,
}

impl Job {
    /// The job of the command `n` entries after this one in an SQ of `sq_size` entries, taken
    /// with it ([`ControllerState::take_burst`]); its SQHD is the head just past it.
    pub(crate) fn nth(&self, n: u16, sq_size: u16) -> Self {
        let index = (self.index + n) % sq_size;
        Self {
            index,
            sqhd: (index + 1) % sq_size,
            ..*self
        }
    }
}

/// What a register write asks the caller to do after unlocking.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Effects {
    /// Wake the worker (new work, or a reset it must notice).
    pub wake: bool,
    /// The doorbell write was invalid (§4.1, asynchronous event "Invalid Doorbell ...").
    pub invalid_doorbell: bool,
    /// A controller reset started.
    pub reset: bool,
    /// A shutdown notification started (CC.SHN set while enabled).
    pub shutdown: bool,
    /// ...and found I/O queues still existing (the host should delete them first, §7.6.2).
    pub shutdown_with_io_queues: bool,
}

/// Register file and queues.
#[derive(Debug)]
pub(crate) struct ControllerState {
    /// CAP as advertised (its TO and CRWMS from the configuration).
    cap: u64,
    /// CRTO as advertised: CRWMT from the configuration, CRIMT 0.
    crto: u32,
    /// Time from CC.EN = 1 to CSTS.RDY = 1 (a real controller takes up to CAP.TO, or CRWMT).
    enable_delay: Duration,
    /// Time from CC.SHN = 01b to CSTS.SHST = 10b.
    shutdown_delay: Duration,
    /// Time from CC.EN 1→0 to CSTS.RDY = 0, at least.
    disable_delay: Duration,
    pub cc: u32,
    pub aqa: u32,
    pub asq: u64,
    pub acq: u64,
    /// INTMS/INTMC mask. Kept and read back only: with MSI-X the spec forbids host access
    /// (§3.1.3) and masking is the MSI-X table's job.
    pub intms: u32,
    pub readiness: Readiness,
    pub cfs: bool,
    /// CSTS.SHST.
    pub shst: u32,
    shutdown_done_at: Option<Instant>,
    /// Bumped by every enable and reset: work taken under an older epoch is abandoned.
    pub epoch: u64,
    /// `epoch` as last published, for the workers' checks before each DMA step, which take
    /// no lock ([`Exec::checkpoint`](super::worker::Exec::checkpoint)).
    published_epoch: Arc<AtomicU64>,
    /// Indexed by queue id, 0 = admin.
    pub sqs: Vec<Option<SubQueue>>,
    pub cqs: Vec<Option<CompQueue>>,
    /// I/O queues granted by Set Features Number of Queues (1-based).
    pub nsqa: u16,
    pub ncqa: u16,
    /// Volatile Write Cache enable (feature 06h).
    pub wce: bool,
    /// Other stored features, by identifier.
    pub features: BTreeMap<u8, u32>,
    /// CIDs of held Asynchronous Event Requests.
    pub aers: Vec<u16>,
    /// Events waiting for an AER (completion dword 0).
    pub events: VecDeque<u32>,
    /// An error event was reported and the host has not read the Error Information log since
    /// (§5.2: the event type is masked until then).
    pub error_event_masked: bool,
    /// Per worker (worker w serves SQ w; worker 0 also posts asynchronous events): it holds a
    /// command.
    pub busy: Vec<bool>,
    /// Per worker: the CQ its command holds promised slots on ([`CompQueue::reserved`]), and
    /// how many (two for a fused pair, one for any other command).
    reservations: Vec<Option<(u16, u16)>>,
    /// [`NvmeFault::Hang`](super::NvmeFault::Hang) is in effect.
    pub hung: bool,
    /// [`NvmeFault::ShutdownHang`](super::NvmeFault::ShutdownHang) is standing.
    pub shutdown_hang: bool,
    /// [`NvmeFault::ResetIgnored`](super::NvmeFault::ResetIgnored) is standing.
    pub reset_ignored: bool,
    /// [`NvmeFault::BusMasterStuck`](super::NvmeFault::BusMasterStuck) is standing.
    pub bus_master_stuck: bool,
    /// The newest I/O queue deletions carried out, oldest first.
    pub deletions: VecDeque<QueueDeletion>,
    max_queues: u16,
}

impl ControllerState {
    /// The state after power-on: every register at its reset value.
    pub(crate) fn new(config: &NvmeSimConfig) -> Self {
        let n = usize::from(config.queues) + 1;
        Self {
            cap: spec::cap::value(config.cap_to, config.crwmt != 0),
            crto: u32::from(config.crwmt),
            enable_delay: Duration::from_micros(u64::from(config.enable_micros)),
            shutdown_delay: Duration::from_micros(u64::from(config.shutdown_micros)),
            disable_delay: Duration::from_micros(u64::from(config.disable_micros)),
            cc: 0,
            aqa: 0,
            asq: 0,
            acq: 0,
            intms: 0,
            readiness: Readiness::Disabled,
            cfs: false,
            shst: 0,
            shutdown_done_at: None,
            epoch: 0,
            published_epoch: Arc::new(AtomicU64::new(0)),
            sqs: vec![None; n],
            cqs: vec![None; n],
            nsqa: config.queues,
            ncqa: config.queues,
            wce: true,
            features: BTreeMap::new(),
            aers: Vec::new(),
            events: VecDeque::new(),
            error_event_masked: false,
            busy: vec![false; n],
            reservations: vec![None; n],
            hung: false,
            shutdown_hang: false,
            reset_ignored: false,
            bus_master_stuck: false,
            deletions: VecDeque::new(),
            max_queues: config.queues,
        }
    }

    /// The published epoch, shared with the workers' lock-free checks.
    pub(crate) fn published_epoch(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.published_epoch)
    }

    /// [`ControllerState::tick`] at the current time, reading the clock only when a
    /// transition waits for it (an enable not yet ready, a disable or a shutdown not yet
    /// complete): the state is locked several times per command, and a clock read on each was
    /// 5 % of a worker's time at 4 KiB.
    pub(crate) fn tick_now(&mut self) {
        if matches!(
            self.readiness,
            Readiness::Enabling { .. } | Readiness::Resetting { .. }
        ) || self.shutdown_done_at.is_some()
        {
            self.tick(Instant::now());
        }
    }

    /// Let time-driven transitions happen: RDY after the enable delay, RDY = 0 after the
    /// disable delay (once no worker holds a command), SHST after shutdown.
    pub(crate) fn tick(&mut self, now: Instant) {
        match self.readiness {
            Readiness::Enabling { ready_at } if now >= ready_at => self.readiness = Readiness::Ready,
            Readiness::Resetting { until } if now >= until && !self.any_busy() => {
                self.readiness = Readiness::Disabled;
            }
            _ => {}
        }
        if let Some(at) = self.shutdown_done_at {
            if now >= at {
                self.shst = csts::SHST_COMPLETE;
                self.shutdown_done_at = None;
            }
        }
    }

    /// 32-bit register read.
    pub(crate) fn read32(&self, offset: u64) -> u32 {
        match offset {
            reg::CAP => self.cap as u32,
            o if o == reg::CAP + 4 => (self.cap >> 32) as u32,
            reg::VS => spec::VERSION,
            reg::INTMS | reg::INTMC => self.intms,
            reg::CC => self.cc,
            reg::CSTS => self.csts(),
            reg::AQA => self.aqa,
            reg::ASQ => self.asq as u32,
            o if o == reg::ASQ + 4 => (self.asq >> 32) as u32,
            reg::ACQ => self.acq as u32,
            o if o == reg::ACQ + 4 => (self.acq >> 32) as u32,
            reg::CRTO => self.crto,
            // Optional registers (CMB, BP, PMR) read as 0 ("not supported"); doorbells are
            // write-only and read as 0 too.
            _ => 0,
        }
    }

    fn csts(&self) -> u32 {
        let rdy = matches!(self.readiness, Readiness::Ready | Readiness::Resetting { .. });
        let rdy = if rdy { csts::RDY } else { 0 };
        let cfs = if self.cfs { csts::CFS } else { 0 };
        rdy | cfs | (self.shst << csts::SHST_SHIFT)
    }

    /// 32-bit register write at `offset`.
    pub(crate) fn write32(&mut self, offset: u64, value: u32, now: Instant, id: &str) -> Effects {
        let enabled = self.cc & cc::EN != 0;
        let mut fx = Effects::default();
        match offset {
            reg::INTMS => self.intms |= value,
            reg::INTMC => self.intms &= !value,
            reg::CC => fx = self.write_cc(value, now, id),
            // §3.1.8-§3.1.10: the admin queue registers are read when CC.EN goes to 1; a write
            // while enabled would describe a queue the controller is not using.
            o if (reg::AQA..reg::ACQ + 8).contains(&o) && enabled => log::warn!(
                "{id}: write of {value:#x} to admin queue register {offset:#x} while CC.EN = 1 ignored"
            ),
            reg::AQA => self.aqa = value & aqa::WRITABLE,
            reg::ASQ => self.asq = (self.asq & !0xFFFF_FFFF) | u64::from(value),
            o if o == reg::ASQ + 4 => self.asq = (self.asq & 0xFFFF_FFFF) | (u64::from(value) << 32),
            reg::ACQ => self.acq = (self.acq & !0xFFFF_FFFF) | u64::from(value),
            o if o == reg::ACQ + 4 => self.acq = (self.acq & 0xFFFF_FFFF) | (u64::from(value) << 32),
            o if o >= reg::DOORBELLS => fx = self.doorbell(o, value, id),
            _ => {
                log::debug!("{id}: write of {value:#x} to read-only or reserved register {offset:#x} ignored")
            }
        }
        fx
    }

    /// CC (§3.1.5): EN 0→1 enables, EN 1→0 resets, SHN starts a shutdown.
    fn write_cc(&mut self, value: u32, now: Instant, id: &str) -> Effects {
        let old = self.cc;
        let mut value = value & cc::WRITABLE;
        let mut fx = Effects {
            wake: true,
            ..Effects::default()
        };
        let was_enabled = old & cc::EN != 0;
        if was_enabled && value & cc::EN == 0 && self.reset_ignored {
            // NvmeFault::ResetIgnored: the write does not take; the controller stays enabled
            // (CC.EN and CSTS.RDY read 1) and keeps running.
            log::warn!("{id}: CC write {value:#x} clearing EN ignored (injected): no controller reset");
            return Effects::default();
        }
        let enable = value & cc::EN != 0;
        if was_enabled && enable && (old ^ value) & cc::FROZEN_WHILE_ENABLED != 0 {
            log::warn!(
                "{id}: CC write {value:#x} changes CSS/MPS/AMS/IOSQES/IOCQES while enabled; kept {old:#x}"
            );
            value = (value & !cc::FROZEN_WHILE_ENABLED) | (old & cc::FROZEN_WHILE_ENABLED);
        }
        self.cc = value;
        match (was_enabled, enable) {
            (false, true) => self.enable(now, id),
            (true, false) => {
                log::info!("{id}: controller reset (CC.EN 1 -> 0)");
                self.controller_reset();
                if !self.disable_delay.is_zero() {
                    // A controller that takes this long to report RDY = 0.
                    self.readiness = Readiness::Resetting {
                        until: now + self.disable_delay,
                    };
                }
                fx.reset = true;
            }
            _ => {}
        }
        let shn_old = old & cc::SHN_MASK;
        let shn = value & cc::SHN_MASK;
        if shn != 0 && shn_old == 0 && enable {
            // §7.6.2: processing stops; the worker takes no new command from here on.
            self.shst = csts::SHST_OCCURRING;
            fx.shutdown = true;
            fx.shutdown_with_io_queues = self.any_io_queue();
            self.shutdown_done_at = (!self.shutdown_hang).then_some(now + self.shutdown_delay);
            log::info!("{id}: shutdown notification (SHN {:#x})", shn >> 14);
        } else if shn == 0 && shn_old != 0 && enable {
            // As QEMU: clearing SHN clears SHST; the host must still reset before new I/O.
            self.shst = 0;
            self.shutdown_done_at = None;
        }
        fx
    }

    /// CC.EN 0→1 (§7.6.1): check the admin queue and CC, then set RDY after the configured enable delay.
    /// A configuration the controller cannot run sets CSTS.CFS and leaves RDY = 0, as QEMU
    /// does; this model is as strict as QEMU about IOSQES/IOCQES (6 and 4 when EN is set).
    fn enable(&mut self, now: Instant, id: &str) {
        let asqs = self.aqa & aqa::ASQS_MASK;
        let acqs = (self.aqa >> aqa::ACQS_SHIFT) & aqa::ASQS_MASK;
        let iosqes = (self.cc >> cc::IOSQES_SHIFT) & 0xF;
        let iocqes = (self.cc >> cc::IOCQES_SHIFT) & 0xF;
        let misaligned = |a: u64| a == 0 || !a.is_multiple_of(spec::PAGE_SIZE);
        let problem = if asqs == 0 || acqs == 0 {
            Some(format!(
                "AQA {:#x}: admin queues need at least 2 entries",
                self.aqa
            ))
        } else if misaligned(self.asq) {
            Some(format!("ASQ {:#x} is zero or not 4 KiB aligned", self.asq))
        } else if misaligned(self.acq) {
            Some(format!("ACQ {:#x} is zero or not 4 KiB aligned", self.acq))
        } else if self.cc & (cc::CSS_MASK | cc::MPS_MASK | cc::AMS_MASK) != 0 {
            Some(format!(
                "CC {:#x}: only CSS = NVM, MPS = 0 (4 KiB), AMS = round robin",
                self.cc
            ))
        } else if iosqes != spec::SQES || iocqes != spec::CQES {
            Some(format!("CC {:#x}: IOSQES must be 6 and IOCQES 4", self.cc))
        } else {
            None
        };
        self.epoch += 1;
        self.published_epoch.store(self.epoch, Ordering::Release);
        if let Some(problem) = problem {
            log::error!("{id}: cannot enable: {problem}; CSTS.CFS set");
            self.cfs = true;
            return;
        }
        self.sqs[0] = Some(SubQueue {
            base: self.asq,
            size: asqs as u16 + 1,
            head: 0,
            tail: 0,
            cqid: 0,
        });
        self.cqs[0] = Some(CompQueue {
            base: self.acq,
            size: acqs as u16 + 1,
            head: 0,
            tail: 0,
            phase: true,
            vector: 0,
            ien: true,
            reserved: 0,
        });
        self.readiness = Readiness::Enabling {
            ready_at: now + self.enable_delay,
        };
        log::info!(
            "{id}: enabling (admin SQ {} entries, CQ {} entries)",
            asqs + 1,
            acqs + 1
        );
    }

    /// Controller reset (§7.3.2 via CC.EN 1→0): stop every queue, delete them all, drop held
    /// AERs and pending events, clear CFS, SHST and the hang, return features to defaults.
    /// AQA, ASQ and ACQ keep their values. RDY clears at once unless the worker holds a
    /// command; then it clears when the worker lets go ([`ControllerState::release`]).
    pub(crate) fn controller_reset(&mut self) {
        self.epoch += 1;
        self.published_epoch.store(self.epoch, Ordering::Release);
        self.sqs.iter_mut().for_each(|q| *q = None);
        self.cqs.iter_mut().for_each(|q| *q = None);
        self.nsqa = self.max_queues;
        self.ncqa = self.max_queues;
        self.wce = true;
        self.features.clear();
        self.aers.clear();
        self.events.clear();
        self.error_event_masked = false;
        self.cfs = false;
        self.hung = false;
        self.shst = 0;
        self.shutdown_done_at = None;
        // The CQs holding them are gone.
        self.reservations.iter_mut().for_each(|r| *r = None);
        self.readiness = if self.any_busy() {
            Readiness::Resetting {
                until: Instant::now(),
            }
        } else {
            Readiness::Disabled
        };
    }

    /// Function reset: a controller reset, then every register to its reset value.
    pub(crate) fn function_reset(&mut self) {
        self.controller_reset();
        self.cc = 0;
        self.aqa = 0;
        self.asq = 0;
        self.acq = 0;
        self.intms = 0;
    }

    /// Some worker holds a command.
    pub(crate) fn any_busy(&self) -> bool {
        self.busy.iter().any(|&b| b)
    }

    /// Worker `w` let go of its command (a slot it promised and did not post is free again);
    /// a reset waiting for the last one completes (RDY = 0).
    pub(crate) fn release(&mut self, w: usize) {
        self.busy[w] = false;
        while self.reservations[w].is_some() {
            self.unreserve(w);
        }
        if let Readiness::Resetting { until } = self.readiness {
            if !self.any_busy() && Instant::now() >= until {
                self.readiness = Readiness::Disabled;
            }
        }
    }

    /// Give back one of worker `w`'s promised CQ slots, if it holds one: it posts (the slot
    /// becomes the entry) or it lets go of its command without posting.
    pub(crate) fn unreserve(&mut self, w: usize) {
        let Some((cqid, count)) = self.reservations[w] else {
            return;
        };
        self.reservations[w] = (count > 1).then_some((cqid, count - 1));
        if let Some(cq) = self.cqs[usize::from(cqid)].as_mut() {
            cq.reserved = cq.reserved.saturating_sub(1);
        }
    }

    /// Promise worker `w` a slot of CQ `cqid` (checked with [`CompQueue::has_room`]).
    fn reserve(&mut self, w: usize, cqid: u16) {
        if let Some(cq) = self.cqs[usize::from(cqid)].as_mut() {
            cq.reserved += 1;
            let count = self.reservations[w].map_or(0, |(_, n)| n);
            self.reservations[w] = Some((cqid, count + 1));
        }
    }

    /// The second command of a fused operation (NVMe 1.4 §4.12), for worker `w` that holds the
    /// first: the next entry of its SQ, taken with a second promised CQ slot. `Err(false)`:
    /// the host has not made the next entry available (the first is then aborted as Missing
    /// Fused Command); `Err(true)`: the CQ has no room for a second entry yet (wait for a CQ
    /// head doorbell and ask again).
    pub(crate) fn take_fused_second(&mut self, w: usize, first: &Job) -> Result<Job, bool> {
        let Some(sq) = self.sqs.get(w).copied().flatten() else {
            return Err(false);
        };
        if sq.head == sq.tail {
            return Err(false);
        }
        if !self.cqs[usize::from(sq.cqid)].is_some_and(|cq| cq.has_room()) {
            return Err(true);
        }
        let head = (sq.head + 1) % sq.size;
        if let Some(taken) = self.sqs[w].as_mut() {
            taken.head = head;
        }
        self.reserve(w, sq.cqid);
        Ok(Job {
            index: sq.head,
            sqhd: head,
            ..*first
        })
    }

    /// A doorbell write (§3.1.24, §3.1.25). An invalid one is ignored and reported as an
    /// asynchronous event (§4.1, §5.2).
    fn doorbell(&mut self, offset: u64, value: u32, id: &str) -> Effects {
        let index = (offset - reg::DOORBELLS) / 4;
        let qid = (index / 2) as usize;
        let is_cq = index % 2 == 1;
        let mut fx = Effects::default();
        if self.readiness != Readiness::Ready {
            log::warn!("{id}: doorbell {offset:#x} written ({value}) while the controller is not ready");
            fx.invalid_doorbell = true;
            return fx;
        }
        let verdict = if is_cq {
            match self.cqs.get_mut(qid).and_then(Option::as_mut) {
                None => Err(spec::AEI_INVALID_DOORBELL_REGISTER),
                Some(cq) => {
                    // The new head may release only entries that were posted.
                    let posted = (cq.tail + cq.size - cq.head) % cq.size;
                    let released = (value as u16).wrapping_add(cq.size).wrapping_sub(cq.head) % cq.size;
                    if value >= u32::from(cq.size) || released > posted {
                        Err(spec::AEI_INVALID_DOORBELL_VALUE)
                    } else {
                        cq.head = value as u16;
                        Ok(())
                    }
                }
            }
        } else {
            match self.sqs.get_mut(qid).and_then(Option::as_mut) {
                None => Err(spec::AEI_INVALID_DOORBELL_REGISTER),
                Some(sq) if value >= u32::from(sq.size) => Err(spec::AEI_INVALID_DOORBELL_VALUE),
                Some(sq) => {
                    sq.tail = value as u16;
                    Ok(())
                }
            }
        };
        match verdict {
            Ok(()) => fx.wake = true,
            Err(info) => {
                log::warn!(
                    "{id}: invalid {} doorbell write {value} for queue {qid} (event info {info:#x})",
                    if is_cq { "CQ head" } else { "SQ tail" }
                );
                fx.invalid_doorbell = true;
                fx.wake = self.error_event(info);
            }
        }
        fx
    }

    /// Queue an Error Status asynchronous event unless that type is masked; returns whether
    /// one was queued.
    fn error_event(&mut self, info: u8) -> bool {
        if self.error_event_masked {
            return false;
        }
        self.error_event_masked = true;
        self.events.push_back(spec::async_error_event(info));
        true
    }

    /// Take worker `w`'s next piece of work, or `None` when there is nothing it may do. Worker
    /// w serves SQ w (so the SQs are served side by side, each in order: CC.AMS = 0 round
    /// robin leaves the order across SQs open); worker 0, the admin queue's, also completes
    /// held Asynchronous Event Requests. A queue whose completion queue is full, counting
    /// the slots promised to the other workers' commands, waits (§4.1: a full CQ stalls,
    /// never overflows).
    pub(crate) fn next_work(&mut self, w: usize) -> Option<Work> {
        if self.readiness != Readiness::Ready || self.cfs || self.hung || self.shst != 0 || self.busy[w] {
            return None;
        }
        if w == 0 {
            let admin_room = self.cqs[0].is_some_and(|cq| cq.has_room());
            if admin_room && !self.events.is_empty() && !self.aers.is_empty() {
                let cid = self.aers.remove(0);
                let dw0 = self.events.pop_front().unwrap_or_default();
                self.busy[w] = true;
                self.reserve(w, 0);
                return Some(Work::Event {
                    epoch: self.epoch,
                    cid,
                    dw0,
                });
            }
        }
        let sq = self.sqs.get(w).copied().flatten()?;
        if sq.head == sq.tail || !self.cqs[usize::from(sq.cqid)].is_some_and(|cq| cq.has_room()) {
            return None;
        }
        let head = (sq.head + 1) % sq.size;
        if let Some(taken) = self.sqs[w].as_mut() {
            taken.head = head;
        }
        self.busy[w] = true;
        self.reserve(w, sq.cqid);
        Some(Work::Command(Job {
            epoch: self.epoch,
            sqid: w as u16,
            index: sq.head,
            sq_base: sq.base,
            cqid: sq.cqid,
            sqhd: head,
        }))
    }

    /// Up to `max` commands at the head of SQ `w` for a doorbell's writer, taken at once as
    /// [`ControllerState::next_work`] takes one (the worker busy, a CQ slot promised for each):
    /// as many as are waiting and their CQ has room for. Returns the first one's job, the
    /// count and the SQ's size (the others' jobs: [`Job::nth`]).
    pub(crate) fn take_burst(&mut self, w: usize, max: u16) -> Option<(Job, u16, u16)> {
        // The admin queue's worker also takes asynchronous events: never a writer's.
        if w == 0 {
            return None;
        }
        let sq = self.sqs.get(w).copied().flatten()?;
        let Some(Work::Command(first)) = self.next_work(w) else {
            return None;
        };
        // The first is taken (its slot promised, counted in `room`); the head is past it.
        let head = first.sqhd;
        let room = self.cqs[usize::from(sq.cqid)].map_or(0, |cq| cq.room());
        let more = ((sq.tail + sq.size - head) % sq.size)
            .min(room)
            .min(max.saturating_sub(1));
        if let Some(taken) = self.sqs[w].as_mut() {
            taken.head = (head + more) % sq.size;
        }
        for _ in 0..more {
            self.reserve(w, sq.cqid);
        }
        Some((first, more + 1, sq.size))
    }

    /// Give the commands of a burst from `from` on back to SQ `w` untouched (the head back at
    /// `from`'s entry, their `count` CQ slots no longer promised), when the head is still
    /// where the burst left it (`end`) in `from`'s epoch: a doorbell's writer that must not
    /// run them now (a fused pair, run at the head of a burst of its own; the entries after
    /// one that could not be fetched). The worker stays busy with the commands before.
    pub(crate) fn return_burst_tail(&mut self, w: usize, from: &Job, end: u16, count: u16) {
        if self.epoch != from.epoch {
            return;
        }
        if let Some(sq) = self.sqs[w].as_mut().filter(|sq| sq.head == end) {
            sq.head = from.index;
            for _ in 0..count {
                self.unreserve(w);
            }
        }
    }

    /// Nothing for SQ `w`'s worker to do, nor in hand: a doorbell's writer that found no
    /// command to take need not wake it (`worker::run_inline`).
    pub(crate) fn sq_drained(&self, w: usize) -> bool {
        !self.busy[w]
            && self
                .sqs
                .get(w)
                .copied()
                .flatten()
                .is_none_or(|sq| sq.head == sq.tail)
    }

    /// Give worker `w`'s command `job` back to its SQ untouched (a doorbell's writer that
    /// would have had to wait to execute it): the head back at its entry, the worker idle,
    /// its CQ slots no longer promised. The host saw nothing of it (the head is reported only
    /// in completions, and none was posted); under a new epoch (a reset since) only the
    /// release is left to do.
    pub(crate) fn give_back(&mut self, w: usize, job: &Job) {
        if self.epoch == job.epoch {
            if let Some(sq) = self.sqs[w].as_mut().filter(|sq| sq.head == job.sqhd) {
                sq.head = job.index;
            }
        }
        self.release(w);
    }

    /// Worker `w` has commands in its SQ but no room in their CQ: it waits for a CQ head
    /// doorbell ([`Shared::ring`](super::controller::Shared) wakes the stalled workers).
    pub(crate) fn stalled(&self, w: usize) -> bool {
        let full = |cqid: u16| !self.cqs[usize::from(cqid)].is_some_and(|cq| cq.has_room());
        let event_due = w == 0 && !self.events.is_empty() && !self.aers.is_empty();
        (event_due && full(0))
            || self
                .sqs
                .get(w)
                .copied()
                .flatten()
                .is_some_and(|sq| sq.head != sq.tail && full(sq.cqid))
    }

    /// Record an I/O queue deletion (the newest [`DELETIONS_KEPT`] are kept).
    pub(crate) fn deleted(&mut self, deletion: QueueDeletion) {
        if self.deletions.len() == DELETIONS_KEPT {
            self.deletions.pop_front();
        }
        self.deletions.push_back(deletion);
    }

    /// Any I/O queue exists (Set Features Number of Queues is then refused, §5.21.1.7).
    pub(crate) fn any_io_queue(&self) -> bool {
        self.sqs[1..].iter().any(Option::is_some) || self.cqs[1..].iter().any(Option::is_some)
    }
}
