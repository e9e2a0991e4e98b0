//! A first executor: commands from a TCMU [`Ring`] through the SBC engine ([`Disk`]) and a
//! store queue, the way the scst_user worker drives them (`Disk::start`, a store request per
//! [`Plan::Io`], `Disk::finish` on its completion), on one thread.
//!
//! Data moves by copy: Data-Out from the ring's data area into a command buffer of the SGV
//! pool before a store write, Data-In from the buffer (or the engine's own data) back into the
//! data area before the response. Mapping the data area for the device instead is issue 14's
//! open question (docs/tcmu.md).
//!
//! [`Executor::step`] is one bounded turn of a serving loop: wait (with a timeout) for the
//! kernel's UIO event or the store's completions, serve, kick the kernel if `cmd_tail` moved.
//!
//! Every command in the store has a deadline ([`Executor::set_command_timeout`]);
//! [`Executor::check_deadlines`] escalates a missed one as the scst_user worker does
//! (handler/src/frontend/worker.rs `check_deadlines`): a dump of the commands and the
//! device's queue in the log, then the queue's `start_abort_all` (the aborted requests
//! complete through later polls), at most once a second.
//! [`Executor::drain`] is the teardown's half: no more ring entries, the store's requests
//! completed (or aborted) and answered, bounded; its [`Drained`] proves nothing is left in
//! the store. The thread that runs all this is [`super::worker`].
//!
//! COMPARE AND WRITE reaches this engine under LIO (its passthrough parser hands every opcode
//! but a few SPC ones to the TCMU device), so the disk runs it itself
//! (`CompareAndWrite::Handler`) and this executor keeps it atomic with the disk's range locks
//! ([`crate::scsi::ranges`]): before a command's first store request it takes the range
//! [`Disk::range_need`] names (writes shared, COMPARE AND WRITE exclusive, reads nothing), and
//! gives it back when the command is answered. A command whose range is busy is parked, not
//! waited for: the worker goes on serving, and when the holder (of this worker or another)
//! releases, the grant arrives in this executor's mailbox, whose eventfd [`Executor::step`]
//! polls with the others; the command is then submitted with its original deadline.
//!
//! Task management ([`Executor::poll`] on a `TCMU_OP_TMR` notice, `tmr_notification=1` in
//! the backstore's attributes): the kernel has aborted the listed commands and waits for each
//! to be completed before it answers the initiator's TMF, so the executor completes them as
//! soon as that is safe (see [`TaskManagementStats`] for the four cases), with TASK ABORTED
//! and no Data-In; a reset (LUN, target) also returns the engine's mode pages and PREVENT ALLOW
//! MEDIUM REMOVAL to their defaults, as the scst_user worker does on TASK_MGMT_DONE; a PR
//! preempt-and-abort (`LUN_RESET_PRO`) is no reset and clears PREVENT only
//! ([`Disk::preempt_and_abort`](crate::scsi::Disk::preempt_and_abort)).

use super::abi::mailbox_flags;
use super::abi::tmr_type;
use super::ring::DataIn;
use super::ring::Response;
use super::ring::Ring;
use super::ring::RingEntry;
use super::ring::RingError;
use super::ring::TcmuCommand;
use super::ring::TmrNotice;
use super::uio::UioError;
use super::uio::UioEvents;
use crate::abi::data_direction;
use crate::abi::sam_status;
use crate::scsi;
use crate::scsi::ranges::Acquire;
use crate::scsi::ranges::Mailbox;
use crate::scsi::ranges::RangeGrant;
use crate::scsi::ranges::WaitId;
use crate::scsi::DataOut;
use crate::scsi::Disk;
use crate::scsi::IoPlan;
use crate::scsi::Plan;
use crate::scsi::SenseBytes;
use crate::store::CmdBuffer;
use crate::store::IoBuffer;
use crate::store::StoreCompletion;
use crate::store::StoreOp;
use crate::store::StoreQueue;
use crate::store::StoreRequest;
use crate::store::StoreToken;
use scst_accel_dma::SgvPool;
use std::collections::HashMap;
use std::os::fd::AsFd;
use std::os::fd::BorrowedFd;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

/// A command's Data-Out read straight from the ring (MODE SELECT, UNMAP parameter lists).
struct RingDataOut<'a> {
    ring: &'a Ring,
    cmd: &'a TcmuCommand,
    /// A read failed: the ring was reset under the command (`tcmu_reset_ring` has already
    /// answered it to the initiator), so the engine read zeroes in place of the initiator's
    /// data and its plan must not run (a WRITE SAME of zeroes is a WRITE ZEROES, an unmap on a
    /// thin disk).
    failed: std::cell::Cell<bool>,
}

impl DataOut for RingDataOut<'_> {
    fn len(&self) -> usize {
        self.cmd.data_len()
    }

    fn read(&self, offset: usize, out: &mut [u8]) {
        // A broken ring's data area is not ours to read (the command's answer will not be
        // written either, `Ring::complete`): the engine sees zeroes.
        let n = self.ring.read_data(self.cmd, offset, out).unwrap_or_else(|e| {
            log::warn!("tcmu: cmd_id {}: Data-Out not read: {e}", self.cmd.cmd_id());
            self.failed.set(true);
            0
        });
        out[n..].fill(0);
    }
}

/// Why a serving step failed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The ring is broken.
    #[error("tcmu ring")]
    Ring(#[source] RingError),
    /// Waiting on or kicking the UIO device failed.
    #[error("tcmu uio device")]
    Uio(#[source] UioError),
}

/// What one [`Executor::poll`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Commands taken from the ring.
    pub started: usize,
    /// Commands answered.
    pub completed: usize,
    /// Malformed entries the ring refused (already answered).
    pub refused: usize,
    /// Task management notices seen.
    pub task_management: usize,
    /// Commands answered TASK ABORTED because a task management notice listed them.
    pub aborted: usize,
}

/// What task management did, in total (the executor's lifetime).
///
/// A command the kernel lists as aborted is, when the notice is read, in one of four places:
/// - **still queued** for the store (the queue was full): taken back and answered at once
///   (`cancelled`), its buffer back to the pool;
/// - **in the store, not changing the medium** (READ, VERIFY, compare, FLUSH, GET LBA
///   STATUS): answered at once (`answered_early`); the store's result is dropped when it
///   comes (the buffer stays the device's until then, and the drain still waits for it);
/// - **in the store, changing the medium** (WRITE, WRITE SAME, zeroes, UNMAP): answered when
///   the store completes it (`awaited`), with no further step (WRITE AND VERIFY's compare).
///   Answering earlier would let the kernel report the TMF complete while the write can still
///   land, after a later write to the same blocks that the initiator sends once the TMF is
///   done; the deadline escalation bounds the wait as for any command;
/// - **already answered** (its response waits for `cmd_tail`, or the kernel has it):
///   nothing to do (`already_answered`).
///
/// With `CAP_OOOC` (every current kernel) an early answer reaches the kernel at once, in the
/// entry at `cmd_tail`. Without it the ring hands answers over in ring order (`cmd_tail`
/// moves over a finished prefix only, docs/tcmu.md), so an early answer reaches the kernel
/// once every command posted before it is answered too; with a LUN reset, which lists them
/// all, that is when the last medium-changing one completes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TaskManagementStats {
    /// Notices read.
    pub notices: u64,
    /// Of those, resets (LUN reset, warm or cold target reset; not a PR preempt-and-abort).
    pub resets: u64,
    /// Listed commands taken back before the store had them: from the store queue before
    /// submission, or parked waiting for their range.
    pub cancelled: u64,
    /// Listed commands in the store that change nothing: answered at once.
    pub answered_early: u64,
    /// Listed commands in the store that change the medium: answered at their completion.
    pub awaited: u64,
    /// Listed ids with no command here any more.
    pub already_answered: u64,
    /// Store results dropped because their command had been answered early.
    pub dropped_results: u64,
}

struct Inflight {
    /// `None` once answered early after an abort: the store's result is then dropped.
    cmd: Option<TcmuCommand>,
    io: IoPlan,
    buffer: Option<IoBuffer>,
    /// The range the command holds until it is answered ([`Disk::range_need`]).
    grant: Option<RangeGrant>,
    received: Instant,
    deadline: Instant,
    /// Listed by a task management notice: answered TASK ABORTED at completion.
    aborted: bool,
}

/// The answer of an aborted command: the kernel does not send it (the command is aborted on
/// its side), but it must come, and it carries no data.
fn task_aborted() -> scsi::Response {
    scsi::Response {
        status: sam_status::TASK_ABORTED,
        sense: SenseBytes::new(),
        data: Vec::new(),
        data_in_len: 0,
    }
}

/// `TCMU_TMR_*` by name, for the log.
fn tmr_name(t: u8) -> &'static str {
    match t {
        tmr_type::ABORT_TASK => "abort task",
        tmr_type::ABORT_TASK_SET => "abort task set",
        tmr_type::CLEAR_ACA => "clear ACA",
        tmr_type::CLEAR_TASK_SET => "clear task set",
        tmr_type::LUN_RESET => "LUN reset",
        tmr_type::TARGET_WARM_RESET => "target warm reset",
        tmr_type::TARGET_COLD_RESET => "target cold reset",
        tmr_type::LUN_RESET_PRO => "PR preempt-and-abort",
        _ => "unknown",
    }
}

/// A command whose range is busy, waiting for its grant in the mailbox. Its deadline runs.
struct Parked {
    cmd: TcmuCommand,
    io: IoPlan,
    received: Instant,
    /// A task management notice aborted it after its grant was already on the way: answered
    /// TASK ABORTED, range given back, when the grant is taken.
    aborted: bool,
}

/// Proof, from [`Executor::drain`], that no request of the executor is left in its store
/// queue: every command buffer it handed to the device has come back.
#[derive(Debug)]
pub struct Drained(());

/// [`Executor::drain`] ran out of time: requests still in the store after the abort.
#[derive(Debug, thiserror::Error)]
#[error("{in_flight} store request(s) still in flight after the drain and the abort")]
pub struct NotDrained {
    /// Requests still in the store.
    pub in_flight: usize,
}

/// The default per-command deadline: half the kernel's default `cmd_time_out` (30 s), so
/// the escalation comes before the kernel fails the command itself (the rule:
/// [`super::worker::command_timeout_under`]; the service applies it to each backstore's own
/// `cmd_time_out`).
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(15);

/// Operation codes a pending unit attention does not answer: INQUIRY, REPORT LUNS, REQUEST
/// SENSE (SAM-5, unit attention conditions).
const UA_EXEMPT: [u8; 3] = [0x12, 0xa0, 0x03];

/// How long a step waits between looks at a polled store queue with requests in flight (no
/// notify fd to wake it): a completion is at most this late, and a device that stalls costs
/// at most one wake-up per this much, not a spinning CPU.
const POLLED_LOOK: Duration = Duration::from_micros(200);

/// Raises CAPACITY DATA HAS CHANGED (06/2A/09) for the next command of an [`Executor`], from
/// the thread that resized its disk ([`Executor::capacity_notice`]).
#[derive(Clone, Debug)]
pub struct CapacityNotice(Arc<AtomicBool>);

impl CapacityNotice {
    /// The disk's capacity changed: the next command that is not exempt is answered CHECK
    /// CONDITION, UNIT ATTENTION, CAPACITY DATA HAS CHANGED, and not executed (the initiator
    /// retries it; in the HIL guest, Linux's sd logs "Capacity data has changed").
    pub fn raise(&self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Serves one ring with one disk and one store queue.
pub struct Executor {
    disk: Arc<Disk>,
    /// A resize happened that no initiator was told of yet ([`CapacityNotice`]).
    capacity_changed: Arc<AtomicBool>,
    queue: Box<dyn StoreQueue>,
    pool: Arc<SgvPool>,
    inflight: HashMap<u64, Inflight>,
    /// Commands waiting for a range, by the id their grant will carry.
    parked: HashMap<WaitId, Parked>,
    /// Where the disk's range locks deliver the grants of parked commands.
    mailbox: Arc<Mailbox>,
    next_tag: u64,
    submit: Vec<StoreRequest>,
    completions: Vec<StoreCompletion>,
    command_timeout: Duration,
    last_escalation: Option<Instant>,
    escalations: u64,
    /// Commands answered with a status other than GOOD.
    errors: u64,
    tmr: TaskManagementStats,
}

impl Executor {
    /// The serving worker's heartbeat, for the store queue ([`StoreQueue::set_heartbeat`]).
    pub fn set_heartbeat(&mut self, heartbeat: crate::heartbeat::Heartbeat) {
        self.queue.set_heartbeat(heartbeat);
    }

    /// An executor over `disk`, submitting to `queue`, with command buffers from `pool`.
    pub fn new(disk: Arc<Disk>, queue: Box<dyn StoreQueue>, pool: Arc<SgvPool>) -> Self {
        Self {
            disk,
            capacity_changed: Arc::new(AtomicBool::new(false)),
            queue,
            pool,
            inflight: HashMap::new(),
            parked: HashMap::new(),
            mailbox: Mailbox::new(),
            next_tag: 0,
            submit: Vec::new(),
            completions: Vec::new(),
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            last_escalation: None,
            escalations: 0,
            errors: 0,
            tmr: TaskManagementStats::default(),
        }
    }

    /// Commands answered with a status other than GOOD so far (CHECK CONDITION, TASK SET
    /// FULL, ...); malformed entries the ring refused are counted apart ([`Progress::refused`]).
    pub fn errors(&self) -> u64 {
        self.errors
    }

    /// What task management did so far.
    pub fn task_management(&self) -> TaskManagementStats {
        self.tmr
    }

    /// How long a command may stay in the store before [`Self::check_deadlines`] escalates.
    pub fn set_command_timeout(&mut self, timeout: Duration) {
        self.command_timeout = timeout;
    }

    /// Deadline escalations so far.
    pub fn escalations(&self) -> u64 {
        self.escalations
    }

    /// Escalate a missed deadline, at most once a second (a copy of the scst_user worker's
    /// policy, handler/src/frontend/worker.rs `check_deadlines`): log this executor's commands
    /// and the device's queue, then abort every request in the store; the aborted requests
    /// complete through the next poll, and their commands get their sense from the engine.
    /// Returns whether it escalated.
    pub fn check_deadlines(&mut self) -> bool {
        let now = Instant::now();
        if self
            .last_escalation
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return false;
        }
        let Some((&late, _)) = self.inflight.iter().find(|(_, f)| f.deadline <= now) else {
            return false;
        };
        self.last_escalation = Some(now);
        self.escalations += 1;
        log::error!(
            "tcmu: store request {late} missed its deadline; this ring's commands:\n{}",
            self.dump(now)
        );
        if let Some(device) = self.queue.dump() {
            log::error!("device queue at the escalation of request {late}:\n{device}");
        }
        // The aborted requests complete through the next polls: the worker serves meanwhile.
        if self.queue.start_abort_all() == 0 {
            log::error!(
                "the store could not abort its requests; they stay in flight until it completes them"
            );
        }
        true
    }

    /// One line per command in the store: request tag, ring cmd_id, age, deadline, op.
    pub fn dump(&self, now: Instant) -> String {
        let mut lines: Vec<String> = self
            .inflight
            .iter()
            .map(|(tag, f)| {
                format!(
                    "  request {tag}: cmd_id {}, age {:?}, deadline {}, op {:?}{}",
                    f.cmd
                        .as_ref()
                        .map_or_else(|| "answered".to_owned(), |c| c.cmd_id().to_string()),
                    now.duration_since(f.received),
                    if f.deadline <= now { "missed" } else { "pending" },
                    f.io.op,
                    if f.aborted { ", aborted" } else { "" }
                )
            })
            .collect();
        lines.sort();
        let mut parked: Vec<String> = self
            .parked
            .iter()
            .map(|(id, p)| {
                format!(
                    "  parked {id:?}: cmd_id {}, age {:?}, waiting for the range of {:?}",
                    p.cmd.cmd_id(),
                    now.duration_since(p.received),
                    p.io.op
                )
            })
            .collect();
        parked.sort();
        lines.extend(parked);
        format!(
            "{} command(s) in the store ({} reported by the queue), {} waiting for a range\n{}",
            self.inflight.len(),
            self.queue.in_flight(),
            self.parked.len(),
            lines.join("\n")
        )
    }

    /// The teardown's drain: take no more ring entries; wait for the store's requests,
    /// answering each command in the ring as it completes, and kick the kernel; when `budget`
    /// has passed, abort what is left (the store's own escalation: on hardware a reset that
    /// proves no more DMA) and wait up to `budget` again.
    ///
    /// # Errors
    /// [`NotDrained`] when requests are still in the store at the end: their buffers may
    /// still be the device's, so the caller must not release the pool.
    pub fn drain(
        &mut self,
        token: &mut StoreToken<'_>,
        ring: &mut Ring,
        events: &UioEvents,
        budget: Duration,
    ) -> Result<Drained, NotDrained> {
        let mut progress = Progress::default();
        let mut aborted = false;
        let mut deadline = Instant::now() + budget;
        self.cancel_parked(token, ring, &mut progress);
        while !self.inflight.is_empty() || !self.parked.is_empty() {
            let now = Instant::now();
            if now >= deadline {
                if aborted {
                    break;
                }
                log::warn!(
                    "tcmu drain: {} request(s) still in the store after {budget:?}; aborting them:\n{}",
                    self.inflight.len(),
                    self.dump(now)
                );
                self.queue.abort_all();
                aborted = true;
                deadline = now + budget;
            }
            if self.queue.prepare_to_wait() {
                // Completions already waiting: reaped by the flush below, no sleep.
            } else if let Some(fd) = self.queue.notify_fd() {
                let wait = deadline
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(50));
                if let Err(e) = scst_accel_hal::fdio::poll_readable(&[fd], wait) {
                    log::warn!("tcmu drain: waiting for the store: {e}");
                    scst_accel_hal::locks::sleep(Duration::from_millis(1));
                }
            } else {
                scst_accel_hal::locks::sleep(Duration::from_millis(1));
            }
            self.flush(token, ring, &mut progress);
            if ring.take_kick() {
                if let Err(e) = events.kick() {
                    log::warn!("tcmu drain: kicking the kernel: {e}");
                }
            }
        }
        if self.inflight.is_empty() {
            Ok(Drained(()))
        } else {
            Err(NotDrained {
                in_flight: self.inflight.len(),
            })
        }
    }

    /// Commands in the store.
    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    /// Commands waiting for a busy range.
    pub fn parked(&self) -> usize {
        self.parked.len()
    }

    /// Nothing to watch: no command in the store or waiting to be submitted, none parked for
    /// its range. Only a ring entry, a grant or a stop can then give the executor work, and
    /// no deadline can pass: the worker may wait long.
    pub fn is_idle(&self) -> bool {
        self.inflight.is_empty() && self.parked.is_empty() && self.submit.is_empty()
    }

    /// The teardown's half of the range locks: take every parked command of this executor out
    /// of the disk's wait list and answer it BUSY (the initiator retries on another path or
    /// later), so no grant is ever delivered to a mailbox nobody reads. A command granted just
    /// before stays parked until its grant is taken from the mailbox by [`Self::flush`]: it is
    /// then submitted and drained like the others.
    fn cancel_parked(&mut self, token: &mut StoreToken<'_>, ring: &mut Ring, progress: &mut Progress) {
        let ids: Vec<WaitId> = self.parked.keys().copied().collect();
        for id in ids {
            if self.disk.ranges().cancel(token, id) {
                if let Some(p) = self.parked.remove(&id) {
                    let busy = scsi::Response {
                        status: sam_status::BUSY,
                        sense: SenseBytes::new(),
                        data: Vec::new(),
                        data_in_len: 0,
                    };
                    self.answer(ring, p.cmd, None, &busy);
                    progress.completed += 1;
                }
            }
        }
    }

    /// The engine's plan for a command just taken from the ring: a pending unit attention, or
    /// the command started with its Data-Out read from the ring. A Data-Out read that fails
    /// (the ring was reset under the command: `tcmu_reset_ring` has already answered it) leaves
    /// zeroes where the initiator's data was, so that plan is not used: nothing made from them
    /// reaches the store (a WRITE SAME of zeroes would be a WRITE ZEROES, an unmap on a thin
    /// disk). Its answer is written nowhere (the ring is broken), but the command is accounted
    /// for as every other one.
    fn plan(&self, token: &mut StoreToken<'_>, ring: &Ring, cmd: &TcmuCommand) -> Plan {
        if let Some(attention) = self.pending_unit_attention(cmd.cdb()) {
            return Plan::Done(attention);
        }
        let data_out = RingDataOut {
            ring,
            cmd,
            failed: std::cell::Cell::new(false),
        };
        let plan = self.disk.start(token, cmd.cdb(), &data_out);
        if data_out.failed.get() {
            return Plan::Done(scsi::Response::check_condition(self.disk.sense(0x04, 0x44, 0x00)));
        }
        plan
    }

    /// Take every entry the ring has, start its command, submit store requests and move on
    /// every store completion there is. The caller kicks the kernel when
    /// [`Ring::take_kick`] says so.
    ///
    /// # Errors
    /// [`RingError::Broken`]: the ring cannot be read any more (commands in the store still
    /// complete on later polls).
    pub fn poll(&mut self, token: &mut StoreToken<'_>, ring: &mut Ring) -> Result<Progress, RingError> {
        let mut progress = Progress::default();
        let mut broken = None;
        loop {
            match ring.next_entry() {
                Ok(None) => break,
                Ok(Some(RingEntry::Command(cmd))) => {
                    progress.started += 1;
                    let received = Instant::now();
                    let plan = self.plan(token, ring, &cmd);
                    self.begin(token, ring, cmd, received, plan, &mut progress);
                }
                Ok(Some(RingEntry::TaskManagement(notice))) => {
                    progress.task_management += 1;
                    self.act_on_task_management(token, ring, &notice, &mut progress);
                }
                Err(e @ RingError::Refused { .. }) => {
                    log::warn!("tcmu: {e}");
                    progress.refused += 1;
                }
                Err(e) => {
                    broken = Some(e);
                    break;
                }
            }
        }
        self.flush(token, ring, &mut progress);
        match broken {
            Some(e) => Err(e),
            None => Ok(progress),
        }
    }

    /// One bounded turn of a serving loop: wait up to `timeout` for the kernel's event on
    /// `events` or for the store queue's notify fd, take the event (before reading the ring, so
    /// an entry posted after the read raises a new one), serve with [`Self::poll`], and kick
    /// the kernel when `cmd_tail` moved.
    ///
    /// # Errors
    /// [`StepError::Uio`] from the wait or the kick; [`StepError::Ring`] when the ring broke
    /// (the kernel is still kicked for what completed before).
    pub fn step(
        &mut self,
        token: &mut StoreToken<'_>,
        ring: &mut Ring,
        events: &UioEvents,
        timeout: Duration,
    ) -> Result<Progress, StepError> {
        self.step_or_wake(token, ring, events, timeout, None)
    }

    /// [`Self::step`] whose wait also ends when `wake` becomes readable (the worker's stop
    /// eventfd: a worker parked for long while idle still sees a stop at once). `wake` is only
    /// watched, never read.
    ///
    /// # Errors
    /// As [`Self::step`].
    pub fn step_or_wake(
        &mut self,
        token: &mut StoreToken<'_>,
        ring: &mut Ring,
        events: &UioEvents,
        timeout: Duration,
        wake: Option<BorrowedFd<'_>>,
    ) -> Result<Progress, StepError> {
        // Completions already waiting in the store: look at every fd without sleeping. A
        // polled store queue (no notify fd: an accelerator queue without an MSI-X vector) with
        // requests in flight has nothing to wake this wait: look again after POLLED_LOOK
        // rather than leave each completion up to `timeout` (idle_poll) late, and without
        // spinning on a device that stalls until the commands' deadlines.
        let polled_in_flight = self.queue.notify_fd().is_none() && self.queue.in_flight() > 0;
        let timeout = if self.queue.prepare_to_wait() {
            Duration::ZERO
        } else if polled_in_flight {
            timeout.min(POLLED_LOOK)
        } else {
            timeout
        };
        // At most four fds, on the stack: a step allocates nothing (it runs once per turn, and
        // every 200 us while a polled queue has requests in flight).
        let ready = {
            let mut fds = heapless::Vec::<BorrowedFd<'_>, 4>::new();
            for fd in [
                Some(events.as_fd()),
                self.queue.notify_fd(),
                self.mailbox.wake_fd(),
                wake,
            ]
            .into_iter()
            .flatten()
            {
                // Four slots for at most four fds: the push cannot fail.
                let _ = fds.push(fd);
            }
            scst_accel_hal::fdio::poll_ready(&fds, timeout).map_err(|e| StepError::Uio(UioError::Wait(e)))?
        };
        if ready.is_ready(0) {
            events.take_event().map_err(StepError::Uio)?;
        }
        let served = self.poll(token, ring);
        if ring.take_kick() {
            events.kick().map_err(StepError::Uio)?;
        }
        served.map_err(StepError::Ring)
    }

    /// Act on a task management notice (the module doc and [`TaskManagementStats`]).
    fn act_on_task_management(
        &mut self,
        token: &mut StoreToken<'_>,
        ring: &mut Ring,
        notice: &TmrNotice,
        progress: &mut Progress,
    ) {
        self.tmr.notices += 1;
        let reset = matches!(
            notice.tmr_type,
            tmr_type::LUN_RESET | tmr_type::TARGET_WARM_RESET | tmr_type::TARGET_COLD_RESET
        );
        let before = self.tmr;
        for &id in &notice.cmd_ids {
            if self.abort_parked(token, ring, id, progress) {
                continue;
            }
            let Some(tag) = self
                .inflight
                .iter()
                .find(|(_, f)| f.cmd.as_ref().is_some_and(|c| c.cmd_id() == id))
                .map(|(&tag, _)| tag)
            else {
                self.tmr.already_answered += 1;
                continue;
            };
            if let Some(at) = self.submit.iter().position(|r| r.tag == tag) {
                // Never given to the store: nothing of it can reach the medium.
                self.submit.remove(at);
                if let Some(state) = self.inflight.remove(&tag) {
                    self.release_range(token, state.grant);
                    if let Some(cmd) = state.cmd {
                        self.answer(ring, cmd, None, &task_aborted());
                        self.tmr.cancelled += 1;
                        progress.completed += 1;
                        progress.aborted += 1;
                    }
                }
                continue;
            }
            let Some(state) = self.inflight.get_mut(&tag) else {
                continue;
            };
            state.aborted = true;
            if state.io.op.changes_medium() {
                self.tmr.awaited += 1;
                continue;
            }
            if let Some(cmd) = state.cmd.take() {
                self.answer(ring, cmd, None, &task_aborted());
                self.tmr.answered_early += 1;
                progress.completed += 1;
                progress.aborted += 1;
            }
        }
        if reset {
            self.tmr.resets += 1;
            self.disk.reset(token);
        } else if notice.tmr_type == tmr_type::LUN_RESET_PRO {
            self.disk.preempt_and_abort();
        }
        log::info!(
            "tcmu task management {} ({}) for {} command(s): {} cancelled before the store, \
             {} answered at once, {} answered when the store completes them, {} already answered",
            notice.tmr_type,
            tmr_name(notice.tmr_type),
            notice.cmd_ids.len(),
            self.tmr.cancelled - before.cancelled,
            self.tmr.answered_early - before.answered_early,
            self.tmr.awaited - before.awaited,
            self.tmr.already_answered - before.already_answered,
        );
    }

    /// A task management notice names `cmd_id`: if it is parked waiting for its range, it
    /// never reached the store, so it is taken out of the disk's wait list and answered TASK
    /// ABORTED now (counted as cancelled); if its grant is already on the way, it is marked so
    /// that the grant is given back and the command answered when it arrives ([`Self::flush`]).
    /// Whether the command was parked.
    fn abort_parked(
        &mut self,
        token: &mut StoreToken<'_>,
        ring: &mut Ring,
        cmd_id: u16,
        progress: &mut Progress,
    ) -> bool {
        let Some(wait) = self
            .parked
            .iter()
            .find(|(_, p)| p.cmd.cmd_id() == cmd_id)
            .map(|(&wait, _)| wait)
        else {
            return false;
        };
        self.tmr.cancelled += 1;
        if !self.disk.ranges().cancel(token, wait) {
            if let Some(p) = self.parked.get_mut(&wait) {
                p.aborted = true;
            }
            return true;
        }
        if let Some(p) = self.parked.remove(&wait) {
            self.answer(ring, p.cmd, None, &task_aborted());
            progress.completed += 1;
            progress.aborted += 1;
        }
        true
    }

    fn flush(&mut self, token: &mut StoreToken<'_>, ring: &mut Ring, progress: &mut Progress) {
        loop {
            // Parked commands whose range was released (by this worker or another): cleared
            // before the take, so a grant delivered after it raises the eventfd again.
            self.mailbox.clear_wake();
            while let Some(grant) = self.mailbox.take() {
                match self.parked.remove(&grant.wait_id()) {
                    Some(p) if p.aborted => {
                        self.disk.ranges().release(token, grant);
                        self.answer(ring, p.cmd, None, &task_aborted());
                        progress.completed += 1;
                        progress.aborted += 1;
                    }
                    Some(p) => {
                        let plan = Plan::Io(p.io);
                        self.advance(token, ring, p.cmd, None, Some(grant), p.received, plan, progress);
                    }
                    None => {
                        log::error!("range grant {grant:?} for no parked command; released");
                        self.disk.ranges().release(token, grant);
                    }
                }
            }
            if !self.submit.is_empty() {
                if let Err(e) = self.queue.submit(token, &mut self.submit) {
                    log::debug!("tcmu store queue: {e}");
                }
            }
            let mut done = std::mem::take(&mut self.completions);
            self.queue.reap(&mut done);
            let reaped = done.len();
            for completion in done.drain(..) {
                let Some(state) = self.inflight.remove(&completion.tag) else {
                    log::error!("store completed unknown tag {}; ignored", completion.tag);
                    continue;
                };
                // Dropping the state returns an early-answered command's buffer to the pool
                // now that the store is done with it.
                // An aborted command's range (COMPARE AND WRITE's, a write's) is held until the
                // store is done with it, whenever its answer went.
                let Some(cmd) = state.cmd else {
                    self.release_range(token, state.grant);
                    self.tmr.dropped_results += 1;
                    continue;
                };
                if state.aborted {
                    // The aborted write has finished on the medium: now its answer may go.
                    self.release_range(token, state.grant);
                    self.answer(ring, cmd, None, &task_aborted());
                    progress.completed += 1;
                    progress.aborted += 1;
                    continue;
                }
                let plan = self.disk.finish(&state.io, completion.status);
                self.advance(
                    token,
                    ring,
                    cmd,
                    state.buffer,
                    state.grant,
                    state.received,
                    plan,
                    progress,
                );
            }
            self.completions = done;
            // Stop when nothing new was queued and nothing came back: the rest completes later.
            // A grant a completion released to this worker's own parked command is taken on
            // the next turn of this loop.
            if (self.submit.is_empty() || reaped == 0) && self.mailbox.is_empty() {
                return;
            }
        }
    }

    /// The handle a resize uses to have the next command answered with CAPACITY DATA HAS
    /// CHANGED ([`CapacityNotice::raise`]); it outlives the executor's move to its worker.
    pub fn capacity_notice(&self) -> CapacityNotice {
        CapacityNotice(Arc::clone(&self.capacity_changed))
    }

    /// The unit attention a resize left pending, as the answer to `cdb` if it is the first
    /// command since that is not exempt (INQUIRY, REPORT LUNS, REQUEST SENSE: SAM-5's unit
    /// attention conditions). Under scst_user SCST raises it for every I_T nexus
    /// (`DEVICE_CAPACITY_CHANGED`); LIO raises none for a TCMU backstore's new size, and a ring
    /// entry does not name its I_T nexus, so here it is one notice, for whichever initiator's
    /// command comes next.
    fn pending_unit_attention(&self, cdb: &[u8]) -> Option<scsi::Response> {
        // A plain load on every command; the read-modify-write only when one is pending.
        if !self.capacity_changed.load(Ordering::Acquire) {
            return None;
        }
        let op = *cdb.first()?;
        if UA_EXEMPT.contains(&op) || !self.capacity_changed.swap(false, Ordering::AcqRel) {
            return None;
        }
        log::info!("tcmu: unit attention CAPACITY DATA HAS CHANGED on a command {op:#04x}");
        Some(scsi::Response::check_condition(self.disk.sense(
            scsi::sense::sense_key::UNIT_ATTENTION,
            0x2a,
            0x09,
        )))
    }

    /// A new command's first plan: take the range [`Disk::range_need`] names (or park the
    /// command until its grant comes), then [`Self::advance`].
    fn begin(
        &mut self,
        token: &mut StoreToken<'_>,
        ring: &mut Ring,
        cmd: TcmuCommand,
        received: Instant,
        plan: Plan,
        progress: &mut Progress,
    ) {
        let need = match &plan {
            Plan::Io(io) => self.disk.range_need(io),
            Plan::Done(_) => None,
        };
        let grant = match need {
            None => None,
            Some((range, mode)) => match self.disk.ranges().acquire(token, range, mode, &self.mailbox) {
                Acquire::Granted(g) => Some(g),
                Acquire::Parked(id) => {
                    log::trace!(
                        "tcmu cmd_id {}: range {range:?} busy, parked as {id:?}",
                        cmd.cmd_id()
                    );
                    if let Plan::Io(io) = plan {
                        self.parked.insert(
                            id,
                            Parked {
                                cmd,
                                io,
                                received,
                                aborted: false,
                            },
                        );
                    }
                    return;
                }
            },
        };
        self.advance(token, ring, cmd, None, grant, received, plan, progress);
    }

    /// Move a command on: answer it (giving its range back), or submit its next store step.
    #[allow(clippy::too_many_arguments)] // one command's state, taken apart from `Inflight`
    fn advance(
        &mut self,
        token: &mut StoreToken<'_>,
        ring: &mut Ring,
        cmd: TcmuCommand,
        buffer: Option<IoBuffer>,
        grant: Option<RangeGrant>,
        received: Instant,
        plan: Plan,
        progress: &mut Progress,
    ) {
        let io = match plan {
            Plan::Done(response) => {
                self.answer(ring, cmd, buffer.as_ref(), &response);
                progress.completed += 1;
                self.release_range(token, grant);
                return;
            }
            Plan::Io(io) => io,
        };
        if buffer.is_none() {
            // The Data-Out the op takes to the medium (or compares with it) must all be
            // there. LIO checks the CDB's transfer length against the initiator's for its own
            // backstores but not for TCMU's (passthrough_parse_cdb), so a WRITE of 2 blocks
            // with 1 block of Data-Out reaches us; the buffer would hold zeroes for the rest,
            // and zeroes nobody sent would be written. Refused as LIO refuses it for its own
            // backstores (and as libiscsi's residual tests accept): ILLEGAL REQUEST, INVALID
            // FIELD IN COMMAND INFORMATION UNIT.
            let needs = if io.op.takes_data_out() {
                io.op.buffer_bytes(self.disk.block_size())
            } else {
                0
            };
            if (cmd.data_len() as u64) < needs {
                log::debug!(
                    "tcmu: cmd_id {}: {} bytes of Data-Out for {:?}, which needs {needs}",
                    cmd.cmd_id(),
                    cmd.data_len(),
                    io.op
                );
                let short = scsi::Response::check_condition(self.disk.sense(0x05, 0x0e, 0x03));
                self.answer(ring, cmd, None, &short);
                progress.completed += 1;
                self.release_range(token, grant);
                return;
            }
        }
        let buffer = match buffer {
            Some(b) => Some(b),
            None if io.op.uses_buffer() => match self.buffer_for(token, ring, &cmd, &io.op) {
                Some(b) => Some(b),
                None => {
                    let busy = scsi::Response {
                        status: sam_status::TASK_SET_FULL,
                        sense: SenseBytes::new(),
                        data: Vec::new(),
                        data_in_len: 0,
                    };
                    self.answer(ring, cmd, None, &busy);
                    progress.completed += 1;
                    self.release_range(token, grant);
                    return;
                }
            },
            None => None,
        };
        let tag = self.next_tag;
        self.next_tag = self.next_tag.wrapping_add(1);
        // The step's data starts `buffer_offset` bytes into the command's buffer (COMPARE AND
        // WRITE's write instance); the whole buffer stays with the command for later steps.
        let window = buffer.as_ref().map(|b| {
            let at = io.buffer_offset().min(b.len);
            IoBuffer {
                buffer: Arc::clone(&b.buffer),
                offset: b.offset + at,
                len: b.len - at,
            }
        });
        self.submit.push(StoreRequest {
            tag,
            op: io.op.clone(),
            buffer: window,
        });
        self.inflight.insert(
            tag,
            Inflight {
                cmd: Some(cmd),
                io,
                buffer,
                grant,
                received,
                deadline: received + self.command_timeout,
                aborted: false,
            },
        );
    }

    /// A command buffer for `op`, holding the command's Data-Out when the op writes it to the
    /// medium or compares against it. `None` when the pool is exhausted, or when the ring is
    /// broken and the Data-Out cannot be copied (logged).
    fn buffer_for(
        &mut self,
        token: &mut StoreToken<'_>,
        ring: &Ring,
        cmd: &TcmuCommand,
        op: &StoreOp,
    ) -> Option<IoBuffer> {
        let need = usize::try_from(op.buffer_bytes(self.disk.block_size())).unwrap_or(usize::MAX);
        let len = need.max(cmd.data_len());
        let buffer = IoBuffer::new(CmdBuffer::allocate(token, &self.pool, len)?, len);
        if op.takes_data_out() {
            // One copy, data area to command buffer (the kernel copied the initiator's data in).
            // A broken ring lends nothing: no buffer, so nothing reaches the medium (the
            // caller's answer, TASK SET FULL, is not written either: a broken ring takes none).
            if let Err(e) = ring.copy_data_out(cmd, buffer.buffer.pages(), buffer.offset) {
                log::warn!("tcmu: cmd_id {}: Data-Out not copied: {e}", cmd.cmd_id());
                return None;
            }
        }
        Some(buffer)
    }

    /// Give back the range a command held (if any) once it is answered or its store step is
    /// over ([`Disk::range_need`]); a grant that is never released parks later writers forever.
    fn release_range(&self, token: &mut StoreToken<'_>, grant: Option<RangeGrant>) {
        if let Some(grant) = grant {
            self.disk.ranges().release(token, grant);
        }
    }

    /// Whether `cmd`'s buffer is one the kernel copies back to the initiator: a BIDI command's
    /// Data-In buffer, or the data buffer of any command that does not transfer Data-Out
    /// (the ring entry does not say the direction; the CDB does, and an undecodable CDB counts
    /// as Data-In).
    fn has_data_in(&self, cmd: &TcmuCommand) -> bool {
        !cmd.bidi_in().is_empty()
            || !matches!(self.disk.cdb_info(cmd.cdb()), Ok(info) if info.direction == data_direction::WRITE)
    }

    /// Put the Data-In into the ring and complete the command.
    fn answer(
        &mut self,
        ring: &mut Ring,
        cmd: TcmuCommand,
        buffer: Option<&IoBuffer>,
        response: &scsi::Response,
    ) {
        let source = if !response.data.is_empty() {
            DataIn::Bytes(&response.data)
        } else if let (Some(buffer), true) = (buffer, response.data_in_len > 0) {
            // One copy, command buffer to data area (the kernel copies it on to the initiator).
            DataIn::Pages {
                from: buffer.buffer.pages(),
                from_off: buffer.offset,
                len: response.data_in_len.min(buffer.len),
            }
        } else {
            DataIn::Nothing
        };
        // A short Data-In (engine data shorter than the allocation length) is reported so the
        // kernel copies only that and sets the residual; a full one needs nothing.
        let buffer_len = if cmd.bidi_in().is_empty() {
            cmd.data_len()
        } else {
            cmd.bidi_in().iter().map(|s| s.len).sum()
        };
        let read_len_of = |data_in: usize| (data_in > 0 && data_in < buffer_len).then_some(data_in as u32);
        // What the kernel sends the initiator of a Data-In buffer is not what we filled but
        // the command's whole data length, unless it honours read_len (tcmu_handle_completion:
        // only with TCMU_UFLAG_READ_LEN, a non-zero rsp.read_len and CAP_READ_LEN; a length of
        // 0 cannot be said), and gather_data_area copies the data area as it is. Its blocks are
        // reused uncleared, so whatever we did not fill (all of it for a READ of 0 blocks,
        // answered GOOD with no data) would hand an earlier command's data, maybe another
        // initiator's, to this one: zeroed. Not a Data-Out buffer (a WRITE's): the kernel
        // copies nothing back from it, and it holds this command's own data.
        // Not trusted for a BIDI command's Data-In (the kernel's read_len handling is written
        // for DMA_FROM_DEVICE): its unfilled part is always zeroed.
        // The copy and the zeroing go through one call, so the ring is checked once for both.
        let read_len_trusted = ring.flags() & mailbox_flags::CAP_READ_LEN != 0 && cmd.bidi_in().is_empty();
        let zero_rest = |data_in: usize| {
            let read_len_honoured = read_len_of(data_in).is_some() && read_len_trusted;
            !read_len_honoured && data_in < buffer_len && self.has_data_in(&cmd)
        };
        // A broken ring (a reset: the command's blocks are the kernel's again, maybe a new
        // command's, maybe unmapped) gets no Data-In, no zeroing, and no answer: `complete`
        // refuses too.
        let data_in = match ring.put_data_in(&cmd, source, zero_rest) {
            Ok(n) => n,
            Err(e) => {
                log::warn!("tcmu: cmd_id {}: Data-In dropped: {e}", cmd.cmd_id());
                // Handed to `complete` to free the command's slot; the broken ring writes no
                // answer, this one included.
                let busy = Response {
                    status: sam_status::BUSY,
                    sense: &[],
                    read_len: None,
                };
                if let Err(e) = ring.complete(cmd, &busy) {
                    log::debug!("tcmu: {e}");
                }
                return;
            }
        };
        let read_len = read_len_of(data_in);
        if response.status != sam_status::GOOD {
            self.errors += 1;
        }
        // A Data-In of 0 bytes cannot be said either, so for a failed command that delivered
        // none the kernel reports the whole buffer transferred (no residual), and an initiator
        // counts the blocks before the sense's INFORMATION as read (Linux's
        // `sd_completed_bytes`): blocks it was never sent (zeroed above). Its INFORMATION is
        // marked not valid, so the initiator fails or retries the whole command instead.
        let mut sense = None;
        if response.status == sam_status::CHECK_CONDITION && data_in == 0 && self.has_data_in(&cmd) {
            let mut s = response.sense.clone();
            if crate::scsi::sense::invalidate_information(&mut s) {
                sense = Some(s);
            }
        }
        let rsp = Response {
            status: response.status,
            sense: sense.as_ref().unwrap_or(&response.sense),
            read_len,
        };
        if let Err(e) = ring.complete(cmd, &rsp) {
            log::error!("tcmu: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::DiskConfig;
    use crate::store::ram::RamStore;
    use crate::store::Store;
    use crate::tcmu::abi::mailbox_flags;
    use crate::tcmu::abi::Iovec;
    use crate::tcmu::sim::SimCompletion;
    use crate::tcmu::sim::SimConfig;
    use crate::tcmu::sim::SimKernel;

    const BS: u32 = 512;

    struct Rig {
        sim: SimKernel,
        ring: Ring,
        exec: Executor,
    }

    /// A rig on a current kernel: `read_len` and out-of-order completion.
    fn rig() -> Rig {
        rig_with(mailbox_flags::CAP_READ_LEN | mailbox_flags::CAP_OOOC)
    }

    /// [`rig`] with a kernel advertising `flags`.
    fn rig_with(flags: u16) -> Rig {
        let store = RamStore::new(BS, 2048, 256);
        let disk = Arc::new(Disk::new(DiskConfig::for_store(&store.info())));
        let queue = store.open_queue().expect("queue");
        let pool = Arc::new(SgvPool::new(None, None, 1 << 24));
        let sim = SimKernel::new(SimConfig {
            cmdr_size: 8192,
            data_size: 256 * 1024,
            flags,
        });
        let ring = Ring::attach(sim.region().clone()).expect("attach");
        Rig {
            sim,
            ring,
            exec: Executor::new(disk, queue, pool),
        }
    }

    impl Rig {
        /// Post `cdb` with a data buffer of `len` bytes at data offset `at` (holding `out`, if
        /// given), run the executor, reap the one completion.
        fn run(&mut self, id: u16, cdb: &[u8], at: usize, len: usize, out: Option<&[u8]>) -> SimCompletion {
            let off = self.sim.data_off() + at;
            if let Some(out) = out {
                self.sim.write_data(off, out);
            }
            let iov = if len > 0 {
                vec![Iovec {
                    iov_base: off as u64,
                    iov_len: len as u64,
                }]
            } else {
                vec![]
            };
            self.sim.post_cmd(id, cdb, &iov, &[]).expect("post");
            let progress = self
                .exec
                .poll(&mut StoreToken::root(), &mut self.ring)
                .expect("poll");
            assert_eq!((progress.started, progress.completed), (1, 1));
            assert!(self.ring.take_kick());
            let mut done = self.sim.reap().expect("reap");
            assert_eq!(done.len(), 1);
            done.remove(0)
        }
    }

    fn rw10(op: u8, lba: u32, blocks: u16) -> [u8; 10] {
        let mut c = [0u8; 10];
        c[0] = op;
        c[2..6].copy_from_slice(&lba.to_be_bytes());
        c[7..9].copy_from_slice(&blocks.to_be_bytes());
        c
    }

    #[test]
    fn a_write_then_a_read_return_the_same_bytes_through_the_ram_store() {
        let mut r = rig();
        let data: Vec<u8> = (0..4 * BS as usize).map(|i| (i * 7 % 251) as u8).collect();
        let w = r.run(1, &rw10(0x2a, 100, 4), 0, data.len(), Some(&data));
        assert_eq!(w.status, sam_status::GOOD, "{:?}", w.sense);
        let rd = r.run(2, &rw10(0x28, 100, 4), 8192, data.len(), None);
        assert_eq!(rd.status, sam_status::GOOD, "{:?}", rd.sense);
        assert_eq!(r.sim.read_data(r.sim.data_off() + 8192, data.len()), data);
        assert_eq!(
            rd.uflags & crate::tcmu::abi::uflags::READ_LEN,
            0,
            "a full read has no residual"
        );
        // Another range reads zeroes: the data went to LBA 100, nowhere else.
        let other = r.run(3, &rw10(0x28, 0, 1), 16384, BS as usize, None);
        assert_eq!(other.status, sam_status::GOOD);
        assert_eq!(
            r.sim.read_data(r.sim.data_off() + 16384, BS as usize),
            vec![0; BS as usize]
        );
    }

    #[test]
    fn write_same_takes_its_block_from_the_ring() {
        let mut r = rig();
        let block: Vec<u8> = (0..BS as usize).map(|i| (i % 13) as u8 + 1).collect();
        // WRITE SAME(10): LBA 10, 8 blocks, one block of Data-Out.
        let ws = r.run(
            1,
            &[0x41, 0, 0, 0, 0, 10, 0, 0, 8, 0],
            0,
            BS as usize,
            Some(&block),
        );
        assert_eq!(ws.status, sam_status::GOOD, "{:?}", ws.sense);
        let rd = r.run(2, &rw10(0x28, 9, 10), 4096, 10 * BS as usize, None);
        assert_eq!(rd.status, sam_status::GOOD);
        let back = r.sim.read_data(r.sim.data_off() + 4096, 10 * BS as usize);
        let bs = BS as usize;
        assert_eq!(&back[..bs], &vec![0; bs][..], "LBA 9 untouched");
        for lba in 1..9 {
            assert_eq!(&back[lba * bs..(lba + 1) * bs], &block[..], "LBA {}", 9 + lba);
        }
        assert_eq!(&back[9 * bs..], &vec![0; bs][..], "LBA 18 untouched");
    }

    /// A ring reset between taking a WRITE SAME and reading its block (`tcmu_reset_ring` has
    /// answered the command already): the engine read zeroes in place of the block, and a
    /// plan made from them (a WRITE ZEROES) must not reach the store.
    #[test]
    fn a_data_out_lost_to_a_ring_reset_plans_nothing_for_the_store() {
        let mut r = rig();
        let off = r.sim.data_off();
        r.sim.write_data(off, &vec![0xaa; BS as usize]);
        let iov = [Iovec {
            iov_base: off as u64,
            iov_len: u64::from(BS),
        }];
        // WRITE SAME(10): LBA 10, 8 blocks of 0xaa.
        r.sim
            .post_cmd(1, &[0x41, 0, 0, 0, 0, 10, 0, 0, 8, 0], &iov, &[])
            .expect("post");
        let Ok(Some(RingEntry::Command(cmd))) = r.ring.next_entry() else {
            panic!("the WRITE SAME is not read");
        };
        assert!(
            matches!(r.exec.plan(&mut StoreToken::root(), &r.ring, &cmd), Plan::Io(_)),
            "before the reset: the WRITE SAME's own plan"
        );
        r.sim.reset_ring();
        match r.exec.plan(&mut StoreToken::root(), &r.ring, &cmd) {
            Plan::Done(answer) => assert_eq!(answer.status, sam_status::CHECK_CONDITION),
            Plan::Io(io) => panic!("a plan made from zeroes reaches the store: {io:?}"),
        }
    }

    #[test]
    fn engine_data_lands_in_data_in_with_its_length() {
        let mut r = rig();
        // INQUIRY, allocation length 255: the standard data is shorter, so READ_LEN says how much.
        let inq = r.run(1, &[0x12, 0, 0, 0, 255, 0], 0, 255, None);
        assert_eq!(inq.status, sam_status::GOOD);
        assert_eq!(
            inq.uflags & crate::tcmu::abi::uflags::READ_LEN,
            crate::tcmu::abi::uflags::READ_LEN
        );
        let n = inq.read_len as usize;
        assert!((36..255).contains(&n), "standard INQUIRY data is {n} bytes");
        let data = r.sim.read_data(r.sim.data_off(), n);
        assert_eq!(data[0] & 0x1f, 0, "direct-access block device");
        assert_eq!(
            usize::from(data[4]) + 5,
            n,
            "ADDITIONAL LENGTH matches what was sent"
        );
        // READ CAPACITY(10): the RAM store's 2048 blocks of 512 bytes.
        let cap = r.run(2, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], 512, 8, None);
        assert_eq!(cap.status, sam_status::GOOD);
        let d = r.sim.read_data(r.sim.data_off() + 512, 8);
        assert_eq!(u32::from_be_bytes([d[0], d[1], d[2], d[3]]), 2047);
        assert_eq!(u32::from_be_bytes([d[4], d[5], d[6], d[7]]), BS);
    }

    #[test]
    fn a_read_of_no_blocks_hands_back_zeroes_not_the_last_commands_data() {
        let mut r = rig();
        // A WRITE leaves its data in the data area, as the kernel's reused blocks do.
        let data: Vec<u8> = (0..BS as usize).map(|i| (i % 251) as u8 + 1).collect();
        let w = r.run(1, &rw10(0x2a, 7, 1), 0, data.len(), Some(&data));
        assert_eq!(w.status, sam_status::GOOD, "{:?}", w.sense);
        assert_eq!(
            r.sim.read_data(r.sim.data_off(), data.len()),
            data,
            "a WRITE's Data-Out buffer is not cleared: the kernel copies nothing back from it"
        );
        // READ(10) of 0 blocks whose initiator expects 512 bytes, in the same blocks: GOOD with
        // no data, which the kernel cannot express (read_len 0 means the whole buffer) and so
        // copies the whole buffer to the initiator.
        let rd = r.run(2, &rw10(0x28, 7, 0), 0, BS as usize, None);
        assert_eq!(rd.status, sam_status::GOOD, "{:?}", rd.sense);
        assert_eq!(rd.uflags & crate::tcmu::abi::uflags::READ_LEN, 0);
        assert_eq!(
            r.sim.read_data(r.sim.data_off(), BS as usize),
            vec![0; BS as usize],
            "the buffer the kernel copies back holds zeroes, not the WRITE's data"
        );
    }

    #[test]
    fn without_read_len_a_short_data_in_is_padded_with_zeroes_not_old_data() {
        // A kernel without CAP_READ_LEN copies the whole buffer whatever we say.
        let mut r = rig_with(0);
        let old = vec![0xa5u8; 255];
        r.sim.write_data(r.sim.data_off(), &old);
        let inq = r.run(1, &[0x12, 0, 0, 0, 255, 0], 0, 255, None);
        assert_eq!(inq.status, sam_status::GOOD);
        assert_eq!(inq.uflags & crate::tcmu::abi::uflags::READ_LEN, 0);
        let back = r.sim.read_data(r.sim.data_off(), 255);
        let n = usize::from(back[4]) + 5;
        assert!((36..255).contains(&n), "standard INQUIRY data is {n} bytes");
        assert_eq!(&back[n..], &vec![0; 255 - n][..], "after the INQUIRY data");
    }

    /// The ring is looked at (`Ring::data_fault`: two mailbox loads and a header read) once
    /// per command's Data-In, not once for its copy and again for the zeroing after it: a
    /// short INQUIRY on a kernel without CAP_READ_LEN (copy, then zeroes), a READ of no blocks
    /// (zeroes only), a full READ (copy only), a WRITE (its Data-Out only; no Data-In, so no
    /// look for it). The data still lands as it must.
    #[test]
    fn a_short_data_in_and_its_zeroing_look_at_the_ring_once() {
        let mut r = rig_with(0);
        r.sim.write_data(r.sim.data_off(), &[0xa5; BS as usize]);
        let looks = |r: &mut Rig, id: u16, cdb: &[u8], out: Option<&[u8]>| {
            let before = r.ring.data_checks();
            let done = r.run(id, cdb, 0, BS as usize, out);
            assert_eq!(done.status, sam_status::GOOD, "{:?}", done.sense);
            r.ring.data_checks() - before
        };
        assert_eq!(
            looks(&mut r, 1, &[0x12, 0, 0, 0, 255, 0], None),
            1,
            "short INQUIRY"
        );
        let back = r.sim.read_data(r.sim.data_off(), BS as usize);
        let n = usize::from(back[4]) + 5;
        assert_eq!(
            &back[n..],
            &vec![0; BS as usize - n][..],
            "zeroed after the INQUIRY data"
        );
        let data = vec![0x3cu8; BS as usize];
        assert_eq!(looks(&mut r, 2, &rw10(0x2a, 7, 1), Some(&data)), 1, "WRITE");
        assert_eq!(looks(&mut r, 3, &rw10(0x28, 7, 0), None), 1, "READ of no blocks");
        assert_eq!(
            r.sim.read_data(r.sim.data_off(), BS as usize),
            vec![0; BS as usize]
        );
        assert_eq!(looks(&mut r, 4, &rw10(0x28, 7, 1), None), 1, "full READ");
        assert_eq!(r.sim.read_data(r.sim.data_off(), BS as usize), data);
    }

    #[test]
    fn a_step_waits_for_the_event_serves_and_kicks() {
        use std::io::Read;
        use std::io::Write;
        use std::os::fd::OwnedFd;
        use std::os::unix::net::UnixStream;

        let mut r = rig();
        let (ours, mut kernel) = UnixStream::pair().expect("pair");
        kernel.set_nonblocking(true).expect("nonblocking");
        let events = UioEvents::new(OwnedFd::from(ours));
        let mut token = StoreToken::root();
        // Nothing posted, no event: the step returns after its timeout and kicks nobody.
        let start = std::time::Instant::now();
        let idle = r
            .exec
            .step(&mut token, &mut r.ring, &events, Duration::from_millis(30))
            .expect("idle");
        assert_eq!(idle, Progress::default());
        assert!(start.elapsed() >= Duration::from_millis(25));
        let mut kick = [0u8; 4];
        assert!(kernel.read(&mut kick).is_err(), "no kick without a completion");
        // A WRITE posted and signalled: served within one step, then the kernel is kicked.
        let data = vec![0xa5u8; BS as usize];
        let off = r.sim.data_off();
        r.sim.write_data(off, &data);
        let iov = [Iovec {
            iov_base: off as u64,
            iov_len: BS.into(),
        }];
        r.sim.post_cmd(9, &rw10(0x2a, 5, 1), &iov, &[]).expect("post");
        kernel.write_all(&1u32.to_ne_bytes()).expect("event");
        let busy = r
            .exec
            .step(&mut token, &mut r.ring, &events, Duration::from_secs(2))
            .expect("step");
        assert_eq!((busy.started, busy.completed), (1, 1));
        kernel.read_exact(&mut kick).expect("kicked");
        let done = r.sim.reap().expect("reap");
        assert_eq!(
            done.iter().map(|c| (c.cmd_id, c.status)).collect::<Vec<_>>(),
            [(9, 0)]
        );
        // The event was taken: the next step waits its whole timeout again.
        let start = std::time::Instant::now();
        let idle = r
            .exec
            .step(&mut token, &mut r.ring, &events, Duration::from_millis(30))
            .expect("idle");
        assert_eq!(idle, Progress::default());
        assert!(start.elapsed() >= Duration::from_millis(25));
    }

    #[test]
    fn errors_come_back_as_check_condition_with_sense() {
        let mut r = rig();
        let past_end = r.run(1, &rw10(0x28, 2048, 1), 0, BS as usize, None);
        assert_eq!(past_end.status, sam_status::CHECK_CONDITION);
        // ILLEGAL REQUEST / LOGICAL BLOCK ADDRESS OUT OF RANGE, fixed format.
        assert_eq!((past_end.sense[2] & 0x0f, past_end.sense[12]), (0x05, 0x21));
        let unknown = r.run(2, &[0xd5, 0, 0, 0, 0, 0, 0, 0, 0, 0], 0, 0, None);
        assert_eq!(unknown.status, sam_status::CHECK_CONDITION);
        assert_eq!((unknown.sense[2] & 0x0f, unknown.sense[12]), (0x05, 0x20));
        assert_eq!(r.exec.in_flight(), 0);
    }

    #[test]
    fn a_write_with_less_data_out_than_its_cdb_says_is_refused_and_writes_nothing() {
        let mut r = rig();
        let old = vec![0x61u8; 2 * BS as usize];
        let w = r.run(1, &rw10(0x2a, 20, 2), 0, old.len(), Some(&old));
        assert_eq!(w.status, sam_status::GOOD);
        // WRITE(10) of 2 blocks with 1 block of Data-Out (iSCSI EDTL < the CDB's length).
        let new = vec![0x62u8; BS as usize];
        let short = r.run(2, &rw10(0x2a, 20, 2), 8192, new.len(), Some(&new));
        assert_eq!(short.status, sam_status::CHECK_CONDITION);
        // ILLEGAL REQUEST / INVALID FIELD IN COMMAND INFORMATION UNIT.
        assert_eq!(
            (short.sense[2] & 0x0f, short.sense[12], short.sense[13]),
            (0x05, 0x0e, 0x03)
        );
        // None: no Data-Out at all.
        let none = r.run(3, &rw10(0x2a, 20, 1), 0, 0, None);
        assert_eq!(none.status, sam_status::CHECK_CONDITION);
        let rd = r.run(4, &rw10(0x28, 20, 2), 16384, old.len(), None);
        assert_eq!(rd.status, sam_status::GOOD);
        assert_eq!(
            r.sim.read_data(r.sim.data_off() + 16384, old.len()),
            old,
            "the blocks hold what was written before, not the short write's data or zeroes"
        );
        // More Data-Out than the CDB says is fine: the CDB's blocks are written.
        let long = vec![0x63u8; 3 * BS as usize];
        let w = r.run(5, &rw10(0x2a, 20, 1), 0, long.len(), Some(&long));
        assert_eq!(w.status, sam_status::GOOD);
        let rd = r.run(6, &rw10(0x28, 20, 2), 16384, old.len(), None);
        assert_eq!(rd.status, sam_status::GOOD);
        let back = r.sim.read_data(r.sim.data_off() + 16384, old.len());
        assert_eq!(&back[..BS as usize], &long[..BS as usize]);
        assert_eq!(&back[BS as usize..], &old[BS as usize..]);
    }

    /// A store queue that holds every request until the test releases it or `abort_all`
    /// ends it (a device that stalls).
    struct HeldQueue {
        held: Arc<std::sync::Mutex<Vec<StoreRequest>>>,
        done: Arc<std::sync::Mutex<Vec<StoreCompletion>>>,
        /// Whether `abort_all` works (a device that cannot be stopped when false).
        abortable: bool,
        aborts: Arc<std::sync::atomic::AtomicUsize>,
        /// Requests the queue takes before it says `QueueFull`.
        capacity: usize,
    }

    impl StoreQueue for HeldQueue {
        fn submit(
            &mut self,
            _token: &mut StoreToken<'_>,
            batch: &mut Vec<StoreRequest>,
        ) -> Result<(), crate::store::StoreError> {
            let mut held = self.held.lock().expect("held");
            let room = self.capacity.saturating_sub(held.len()).min(batch.len());
            held.extend(batch.drain(..room));
            if batch.is_empty() {
                Ok(())
            } else {
                Err(crate::store::StoreError::QueueFull {
                    in_flight: held.len(),
                })
            }
        }

        fn reap(&mut self, out: &mut Vec<StoreCompletion>) -> usize {
            let mut done = self.done.lock().expect("done");
            let n = done.len();
            out.append(&mut done);
            n
        }

        fn notify_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
            None
        }

        fn in_flight(&self) -> usize {
            self.held.lock().expect("held").len() + self.done.lock().expect("done").len()
        }

        fn abort_all(&mut self) -> usize {
            self.aborts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if !self.abortable {
                return 0;
            }
            let held: Vec<StoreRequest> = std::mem::take(&mut *self.held.lock().expect("held"));
            let n = held.len();
            self.done
                .lock()
                .expect("done")
                .extend(held.into_iter().map(|r| StoreCompletion {
                    tag: r.tag,
                    status: crate::store::StoreStatus::Aborted,
                }));
            n
        }
    }

    /// A store queue without a notify fd (polled: an accelerator queue without an MSI-X
    /// vector) holding a request: a step does not sleep its timeout, since nothing would wake
    /// it for the completion (it looks again after POLLED_LOOK), and serves the completion
    /// once there.
    #[test]
    fn a_step_with_a_polled_store_busy_does_not_sleep() {
        use std::os::fd::OwnedFd;
        use std::os::unix::net::UnixStream;

        let mut r = held_rig(true);
        let (ours, _kernel) = UnixStream::pair().expect("pair");
        let events = UioEvents::new(OwnedFd::from(ours));
        let mut token = StoreToken::root();
        let off = r.sim.data_off();
        let iov = [Iovec {
            iov_base: off as u64,
            iov_len: BS.into(),
        }];
        r.sim.post_cmd(1, &rw10(0x28, 3, 1), &iov, &[]).expect("post");
        let p = r.exec.poll(&mut token, &mut r.ring).expect("poll");
        assert_eq!(p.started, 1);
        let start = std::time::Instant::now();
        let p = r
            .exec
            .step(&mut token, &mut r.ring, &events, Duration::from_secs(5))
            .expect("step");
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "slept {:?} with a polled request in flight",
            start.elapsed()
        );
        assert_eq!(p.completed, 0, "nothing completed yet");
        assert_eq!(r.complete_held(), 1);
        let p = r
            .exec
            .step(&mut token, &mut r.ring, &events, Duration::from_secs(5))
            .expect("step");
        assert_eq!(p.completed, 1);
        assert_eq!(r.sim.reap().expect("reap").len(), 1);
    }

    struct HeldRig {
        sim: SimKernel,
        ring: Ring,
        exec: Executor,
        aborts: Arc<std::sync::atomic::AtomicUsize>,
        held: Arc<std::sync::Mutex<Vec<StoreRequest>>>,
        done: Arc<std::sync::Mutex<Vec<StoreCompletion>>>,
        disk: Arc<Disk>,
    }

    /// A held rig on a current kernel: out-of-order completion (`CAP_OOOC`), as
    /// `tcmu_configure_device` advertises it.
    fn held_rig(abortable: bool) -> HeldRig {
        held_rig_with(abortable, usize::MAX, mailbox_flags::CAP_OOOC)
    }

    /// A rig whose queue holds at most `capacity` requests, on a ring with `flags`.
    fn held_rig_with(abortable: bool, capacity: usize, flags: u16) -> HeldRig {
        held_rig_on(
            abortable,
            capacity,
            flags,
            crate::scsi::CompareAndWriteBy::ScstCore,
        )
    }

    /// [`held_rig_with`] on a disk whose COMPARE AND WRITE is run by `caw` (`Handler`: writes
    /// take the disk's range locks, as under LIO).
    fn held_rig_on(
        abortable: bool,
        capacity: usize,
        flags: u16,
        caw: crate::scsi::CompareAndWriteBy,
    ) -> HeldRig {
        let store = RamStore::new(BS, 2048, 256);
        let mut config = DiskConfig::for_store(&store.info());
        config.compare_and_write = caw;
        held_rig_of(Arc::new(Disk::new(config)), abortable, capacity, flags)
    }

    /// A held rig with task management notices on a disk whose writes take the range locks
    /// (COMPARE AND WRITE run by the engine, as under LIO), its store taking `capacity`
    /// requests at a time.
    fn range_locked_rig(capacity: usize) -> HeldRig {
        held_rig_on(
            true,
            capacity,
            mailbox_flags::CAP_TMR | mailbox_flags::CAP_OOOC,
            crate::scsi::CompareAndWriteBy::Handler,
        )
    }

    /// A held rig (its own ring, executor and held store queue) serving `disk`, which another
    /// rig may serve too: two workers of one disk, sharing its range locks.
    fn held_rig_of(disk: Arc<Disk>, abortable: bool, capacity: usize, flags: u16) -> HeldRig {
        let aborts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let held: Arc<std::sync::Mutex<Vec<StoreRequest>>> = Arc::default();
        let done: Arc<std::sync::Mutex<Vec<StoreCompletion>>> = Arc::default();
        let queue = HeldQueue {
            held: Arc::clone(&held),
            done: Arc::clone(&done),
            abortable,
            aborts: Arc::clone(&aborts),
            capacity,
        };
        let pool = Arc::new(SgvPool::new(None, None, 1 << 24));
        let sim = SimKernel::new(SimConfig {
            cmdr_size: 8192,
            data_size: 256 * 1024,
            flags: crate::tcmu::abi::mailbox_flags::CAP_READ_LEN | flags,
        });
        let ring = Ring::attach(sim.region().clone()).expect("attach");
        HeldRig {
            sim,
            ring,
            exec: Executor::new(Arc::clone(&disk), Box::new(queue), pool),
            aborts,
            held,
            done,
            disk,
        }
    }

    impl HeldRig {
        fn post_read(&mut self, id: u16, lba: u32) {
            let off = self.sim.data_off() + usize::from(id) * BS as usize;
            let iov = [Iovec {
                iov_base: off as u64,
                iov_len: BS.into(),
            }];
            self.sim
                .post_cmd(id, &rw10(0x28, lba, 1), &iov, &[])
                .expect("post");
        }

        fn post_write(&mut self, id: u16, lba: u32) {
            let off = self.sim.data_off() + usize::from(id) * BS as usize;
            self.sim.write_data(off, &[0x5a; BS as usize]);
            let iov = [Iovec {
                iov_base: off as u64,
                iov_len: BS.into(),
            }];
            self.sim
                .post_cmd(id, &rw10(0x2a, lba, 1), &iov, &[])
                .expect("post");
        }

        /// A COMPARE AND WRITE of one block at `lba` (Data-Out: two blocks, in the slots of
        /// `id` and `id + 1`).
        fn post_compare_and_write(&mut self, id: u16, lba: u32) {
            let off = self.sim.data_off() + usize::from(id) * BS as usize;
            self.sim.write_data(off, &[0u8; 2 * BS as usize]);
            let iov = [Iovec {
                iov_base: off as u64,
                iov_len: (2 * BS).into(),
            }];
            let mut cdb = [0u8; 16];
            cdb[0] = 0x89;
            cdb[2..10].copy_from_slice(&u64::from(lba).to_be_bytes());
            cdb[13] = 1;
            self.sim.post_cmd(id, &cdb, &iov, &[]).expect("post");
        }

        /// The device completes every request it holds, successfully.
        fn complete_held(&self) -> usize {
            self.complete_held_with(crate::store::StoreStatus::Good)
        }

        /// The device completes every request it holds with `status`. Returns how many.
        fn complete_held_with(&self, status: crate::store::StoreStatus) -> usize {
            let held: Vec<StoreRequest> = std::mem::take(&mut *self.held.lock().expect("held"));
            let n = held.len();
            self.done
                .lock()
                .expect("done")
                .extend(held.into_iter().map(|r| StoreCompletion { tag: r.tag, status }));
            n
        }

        /// Poll, then the (cmd_id, status) pairs the kernel reaps.
        fn poll_and_reap(&mut self) -> (Progress, Vec<(u16, u8)>) {
            let p = self
                .exec
                .poll(&mut StoreToken::root(), &mut self.ring)
                .expect("poll");
            self.ring.take_kick();
            let done = self.sim.reap().expect("reap");
            (p, done.iter().map(|c| (c.cmd_id, c.status)).collect())
        }
    }

    impl HeldRig {
        /// The device completes the held requests `which` picks, successfully; the others stay
        /// held. Returns how many it completed.
        fn complete_held_where(&self, which: impl Fn(&StoreOp) -> bool) -> usize {
            let mut held = self.held.lock().expect("held");
            let (go, stay): (Vec<StoreRequest>, Vec<StoreRequest>) =
                std::mem::take(&mut *held).into_iter().partition(|r| which(&r.op));
            *held = stay;
            let n = go.len();
            self.done
                .lock()
                .expect("done")
                .extend(go.into_iter().map(|r| StoreCompletion {
                    tag: r.tag,
                    status: crate::store::StoreStatus::Good,
                }));
            n
        }
    }

    /// A WRITE the device holds, then a READ it serves: on a kernel that takes completions out
    /// of order (`CAP_OOOC`, as every current kernel) the READ's GOOD reaches the kernel at the
    /// next poll, written into the WRITE's entry at `cmd_tail` under the READ's `cmd_id`,
    /// instead of waiting for the WRITE (and, were the WRITE stuck, being failed with it by the
    /// kernel's `cmd_time_out`). The WRITE's answer follows when the device completes it, into
    /// the READ's entry, and the ring is empty again. The simulated kernel reaps by `cmd_id`,
    /// so a response under a wrong id fails this.
    #[test]
    fn out_of_order_a_served_read_is_reaped_while_an_earlier_write_is_held() {
        let mut r = held_rig_with(true, usize::MAX, mailbox_flags::CAP_OOOC);
        r.post_write(1, 10);
        r.post_read(2, 20);
        let (p, done) = r.poll_and_reap();
        assert_eq!((p.started, p.completed), (2, 0));
        assert_eq!(done, []);
        assert_eq!(r.complete_held_where(|op| matches!(op, StoreOp::Read { .. })), 1);
        let (p, done) = r.poll_and_reap();
        assert_eq!(p.completed, 1);
        assert_eq!(done, [(2, sam_status::GOOD)], "the READ, before the held WRITE");
        assert_eq!(r.exec.in_flight(), 1, "the WRITE still runs");
        assert_eq!(r.sim.commands(), 1);
        assert_eq!(r.complete_held(), 1);
        let (p, done) = r.poll_and_reap();
        assert_eq!(p.completed, 1);
        assert_eq!(done, [(1, sam_status::GOOD)]);
        assert_eq!(r.sim.commands(), 0);
        assert_eq!(r.sim.free(), 8192 - 1, "the ring's space is all free again");
        assert_eq!(r.ring.state().unretired, 0);
        assert_eq!(r.ring.state().outstanding, 0);
    }

    /// The same on a kernel that does not advertise `CAP_OOOC`: the READ's answer waits in
    /// memory until the WRITE before it is answered, then both reach the kernel in ring order,
    /// each in its own entry.
    #[test]
    fn in_order_a_served_read_waits_for_an_earlier_held_write() {
        let mut r = held_rig_with(true, usize::MAX, 0);
        r.post_write(1, 10);
        r.post_read(2, 20);
        let (p, _) = r.poll_and_reap();
        assert_eq!(p.started, 2);
        assert_eq!(r.complete_held_where(|op| matches!(op, StoreOp::Read { .. })), 1);
        let (p, done) = r.poll_and_reap();
        assert_eq!(p.completed, 1);
        assert_eq!(done, [], "held back behind the WRITE");
        assert_eq!(r.ring.state().unretired, 2);
        assert_eq!(r.complete_held(), 1);
        let (p, done) = r.poll_and_reap();
        assert_eq!(p.completed, 1);
        assert_eq!(done, [(1, sam_status::GOOD), (2, sam_status::GOOD)]);
        assert_eq!(r.sim.free(), 8192 - 1);
    }

    fn socket_events() -> (UioEvents, std::os::unix::net::UnixStream) {
        let (ours, kernel) = std::os::unix::net::UnixStream::pair().expect("pair");
        kernel.set_nonblocking(true).expect("nonblocking");
        (UioEvents::new(std::os::fd::OwnedFd::from(ours)), kernel)
    }

    /// A READ of 4 blocks that fails at its third (MEDIUM ERROR, INFORMATION 12): no Data-In can
    /// be said to be empty, so the kernel reports the buffer transferred, and an initiator that
    /// trusted INFORMATION would take blocks 10 and 11 (zeroed, never read) as good data. The
    /// sense keeps its key and codes with INFORMATION marked not valid.
    #[test]
    fn a_failed_read_reports_no_information_an_initiator_would_count_blocks_by() {
        let mut r = held_rig(true);
        let off = r.sim.data_off();
        let iov = [Iovec {
            iov_base: off as u64,
            iov_len: (4 * BS).into(),
        }];
        r.sim.post_cmd(1, &rw10(0x28, 10, 4), &iov, &[]).expect("post");
        let p = r.exec.poll(&mut StoreToken::root(), &mut r.ring).expect("poll");
        assert_eq!(p.started, 1);
        assert_eq!(
            r.complete_held_with(crate::store::StoreStatus::ReadError { lba: 12 }),
            1
        );
        r.exec.poll(&mut StoreToken::root(), &mut r.ring).expect("poll");
        r.ring.take_kick();
        let done = r.sim.reap().expect("reap");
        assert_eq!(done.len(), 1);
        let c = &done[0];
        assert_eq!(c.status, sam_status::CHECK_CONDITION);
        assert_eq!(
            (c.sense[2] & 0x0f, c.sense[12], c.sense[13]),
            (0x03, 0x11, 0x00),
            "{:02x?}",
            c.sense
        );
        assert_eq!(c.sense[0] & 0x80, 0, "INFORMATION marked valid: {:02x?}", c.sense);
        assert_eq!(r.sim.read_data(off, 4 * BS as usize), vec![0u8; 4 * BS as usize]);
    }

    #[test]
    fn a_missed_deadline_aborts_the_store_once_a_second_and_answers_with_sense() {
        let mut r = held_rig(true);
        r.exec.set_command_timeout(Duration::from_millis(20));
        let mut token = StoreToken::root();
        r.post_read(1, 7);
        let p = r.exec.poll(&mut token, &mut r.ring).expect("poll");
        assert_eq!((p.started, p.completed, r.exec.in_flight()), (1, 0, 1));
        assert!(!r.exec.check_deadlines(), "not late yet");
        std::thread::sleep(Duration::from_millis(30));
        assert!(r.exec.check_deadlines(), "late: escalated");
        assert_eq!(r.aborts.load(std::sync::atomic::Ordering::Relaxed), 1);
        let p = r.exec.poll(&mut token, &mut r.ring).expect("poll");
        assert_eq!((p.completed, r.exec.in_flight()), (1, 0));
        assert!(r.ring.take_kick());
        let done = r.sim.reap().expect("reap");
        assert_eq!(done.len(), 1);
        assert_eq!(
            done[0].status,
            sam_status::CHECK_CONDITION,
            "an aborted read is not GOOD"
        );
        // Another late command within the second: no second escalation yet.
        r.post_read(2, 8);
        r.exec.poll(&mut token, &mut r.ring).expect("poll");
        std::thread::sleep(Duration::from_millis(30));
        assert!(!r.exec.check_deadlines(), "at most one escalation a second");
        assert_eq!(r.exec.escalations(), 1);
    }

    #[test]
    fn the_drain_takes_no_new_entry_aborts_at_its_budget_and_proves_the_store_empty() {
        let mut r = held_rig(true);
        let (events, _kernel) = socket_events();
        let mut token = StoreToken::root();
        r.post_read(1, 1);
        r.exec.poll(&mut token, &mut r.ring).expect("poll");
        r.post_read(2, 2); // posted after intake stopped: the drain must not take it
        let start = Instant::now();
        let drained = r
            .exec
            .drain(&mut token, &mut r.ring, &events, Duration::from_millis(40));
        assert!(drained.is_ok(), "{drained:?}");
        assert!(
            start.elapsed() >= Duration::from_millis(40),
            "waited its budget first"
        );
        assert_eq!(r.aborts.load(std::sync::atomic::Ordering::Relaxed), 1);
        let done = r.sim.reap().expect("reap");
        assert_eq!(done.iter().map(|c| c.cmd_id).collect::<Vec<_>>(), [1]);
        assert_eq!(
            r.ring.next_entry().expect("ring").map(|_| ()),
            Some(()),
            "entry 2 left"
        );
    }

    #[test]
    fn a_store_that_cannot_abort_is_reported_not_drained_within_twice_the_budget() {
        let mut r = held_rig(false);
        let (events, _kernel) = socket_events();
        let mut token = StoreToken::root();
        r.post_read(1, 1);
        r.exec.poll(&mut token, &mut r.ring).expect("poll");
        let start = Instant::now();
        let err = r
            .exec
            .drain(&mut token, &mut r.ring, &events, Duration::from_millis(30))
            .expect_err("stuck");
        assert_eq!(err.in_flight, 1);
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(60) && took < Duration::from_secs(2),
            "{took:?}"
        );
    }

    #[test]
    fn an_aborted_read_in_the_store_is_answered_at_once_and_its_result_dropped() {
        let mut r = held_rig_with(true, usize::MAX, mailbox_flags::CAP_TMR | mailbox_flags::CAP_OOOC);
        r.post_read(1, 7);
        r.post_read(2, 8);
        let (p, done) = r.poll_and_reap();
        assert_eq!((p.started, p.completed, done.len()), (2, 0, 0));
        r.sim.post_tmr(tmr_type::ABORT_TASK, &[1]).expect("tmr");
        let (p, done) = r.poll_and_reap();
        assert_eq!((p.task_management, p.aborted, p.completed), (1, 1, 1));
        assert_eq!(
            done,
            [(1, sam_status::TASK_ABORTED)],
            "answered before the store completed it"
        );
        assert_eq!(r.exec.in_flight(), 2, "the device still holds both buffers");
        // The device completes both: the aborted read's result is dropped, the other answered.
        assert_eq!(r.complete_held(), 2);
        let (p, done) = r.poll_and_reap();
        assert_eq!((p.completed, p.aborted), (1, 0));
        assert_eq!(done, [(2, sam_status::GOOD)]);
        assert_eq!(r.exec.in_flight(), 0);
        let t = r.exec.task_management();
        assert_eq!(
            (
                t.notices,
                t.answered_early,
                t.dropped_results,
                t.awaited,
                t.cancelled
            ),
            (1, 1, 1, 0, 0)
        );
    }

    #[test]
    fn an_aborted_write_in_the_store_is_answered_only_when_the_device_is_done_with_it() {
        let mut r = held_rig_with(true, usize::MAX, mailbox_flags::CAP_TMR | mailbox_flags::CAP_OOOC);
        r.post_write(1, 7);
        let (_, done) = r.poll_and_reap();
        assert!(done.is_empty());
        r.sim.post_tmr(tmr_type::ABORT_TASK, &[1]).expect("tmr");
        let (p, done) = r.poll_and_reap();
        assert_eq!((p.task_management, p.aborted), (1, 0));
        assert!(
            done.is_empty(),
            "no answer while the write can still reach the medium: {done:?}"
        );
        assert_eq!(r.exec.task_management().awaited, 1);
        assert_eq!(r.complete_held(), 1);
        let (p, done) = r.poll_and_reap();
        assert_eq!((p.completed, p.aborted), (1, 1));
        assert_eq!(done, [(1, sam_status::TASK_ABORTED)], "not GOOD: it was aborted");
        assert_eq!(r.exec.in_flight(), 0);
    }

    /// An aborted write holds its range (shared, on a disk whose engine runs COMPARE AND WRITE)
    /// until the device is done with it, then gives it back: a range kept by an aborted
    /// command would park every later COMPARE AND WRITE of those blocks forever.
    #[test]
    fn an_aborted_write_gives_its_range_back_when_the_device_is_done() {
        let mut r = range_locked_rig(usize::MAX);
        let mut token = StoreToken::root();
        r.post_write(1, 7);
        r.poll_and_reap();
        assert_eq!(
            r.disk.ranges().counts(&mut token),
            (1, 0),
            "the write holds its range"
        );
        r.sim.post_tmr(tmr_type::ABORT_TASK, &[1]).expect("tmr");
        r.poll_and_reap();
        assert_eq!(
            r.disk.ranges().counts(&mut token),
            (1, 0),
            "held while the device has it"
        );
        assert_eq!(r.complete_held(), 1);
        let (_, done) = r.poll_and_reap();
        assert_eq!(done, [(1, sam_status::TASK_ABORTED)]);
        assert_eq!(r.disk.ranges().counts(&mut token), (0, 0), "given back");
    }

    /// A COMPARE AND WRITE parked behind a write's range and then aborted never reaches the
    /// store: it leaves the disk's wait list and is answered TASK ABORTED at once, not
    /// executed when the write gives its range back.
    #[test]
    fn an_aborted_parked_compare_and_write_is_answered_at_once_and_never_executed() {
        let mut r = range_locked_rig(usize::MAX);
        let mut token = StoreToken::root();
        r.post_write(1, 7);
        r.post_compare_and_write(2, 7);
        r.poll_and_reap();
        assert_eq!(
            r.exec.parked(),
            1,
            "the compare and write waits for the write's range"
        );
        assert_eq!(r.disk.ranges().counts(&mut token), (1, 1));
        r.sim.post_tmr(tmr_type::ABORT_TASK, &[2]).expect("tmr");
        let (p, done) = r.poll_and_reap();
        assert_eq!((p.aborted, r.exec.parked()), (1, 0));
        assert_eq!(
            done,
            [(2, sam_status::TASK_ABORTED)],
            "reaped at once: out of order, not behind the write"
        );
        assert_eq!(r.exec.task_management().cancelled, 1);
        assert_eq!(r.disk.ranges().counts(&mut token), (1, 0), "out of the wait list");
        assert_eq!(r.complete_held(), 1, "only the write reached the store");
        let (_, done) = r.poll_and_reap();
        assert_eq!(done, [(1, sam_status::GOOD)]);
        assert!(
            r.held.lock().expect("held").is_empty(),
            "the compare and write never ran"
        );
        assert_eq!(r.disk.ranges().counts(&mut token), (0, 0));
    }

    /// The other order: the COMPARE AND WRITE parked on worker B is granted (worker A's write
    /// completed and gave its range back, the grant waits in B's mailbox) before B reads the
    /// notice that aborts it. It cannot leave the wait list any more, so it is answered TASK
    /// ABORTED when B takes the grant, and the range goes back unused: it never runs.
    #[test]
    fn an_aborted_compare_and_write_whose_grant_is_on_its_way_never_runs() {
        let mut a = range_locked_rig(usize::MAX);
        let mut b = held_rig_of(
            Arc::clone(&a.disk),
            true,
            usize::MAX,
            mailbox_flags::CAP_TMR | mailbox_flags::CAP_OOOC,
        );
        let mut token = StoreToken::root();
        a.post_write(1, 7);
        a.poll_and_reap();
        b.post_compare_and_write(2, 7);
        b.poll_and_reap();
        assert_eq!(b.exec.parked(), 1);
        // A's write completes: its range goes back and the grant goes to B's mailbox.
        assert_eq!(a.complete_held(), 1);
        let (_, done) = a.poll_and_reap();
        assert_eq!(done, [(1, sam_status::GOOD)]);
        assert_eq!(
            a.disk.ranges().counts(&mut token),
            (1, 0),
            "granted to B, not yet taken"
        );
        // B reads the abort before its mailbox (the notice is a ring entry: poll takes the
        // ring first), then takes the grant in the same poll.
        b.sim.post_tmr(tmr_type::ABORT_TASK, &[2]).expect("tmr");
        let (p, done) = b.poll_and_reap();
        assert_eq!(done, [(2, sam_status::TASK_ABORTED)]);
        assert_eq!((p.aborted, b.exec.parked()), (1, 0));
        assert_eq!(b.exec.task_management().cancelled, 1);
        assert!(
            b.held.lock().expect("held").is_empty(),
            "the compare and write never ran"
        );
        assert_eq!(a.disk.ranges().counts(&mut token), (0, 0), "the grant given back");
    }

    /// A write aborted before the store ever saw it gives its range back at once.
    #[test]
    fn an_aborted_queued_write_gives_its_range_back_at_once() {
        let mut r = range_locked_rig(1);
        let mut token = StoreToken::root();
        r.post_write(1, 7);
        r.post_write(2, 8);
        r.poll_and_reap();
        assert_eq!(r.disk.ranges().counts(&mut token), (2, 0));
        r.sim.post_tmr(tmr_type::ABORT_TASK, &[2]).expect("tmr");
        let (p, done) = r.poll_and_reap();
        assert_eq!(p.aborted, 1);
        assert_eq!(
            done,
            [(2, sam_status::TASK_ABORTED)],
            "reaped at once: out of order, not after command 1"
        );
        assert_eq!(
            r.disk.ranges().counts(&mut token),
            (1, 0),
            "only the submitted write's"
        );
        assert_eq!(r.complete_held(), 1);
        let (_, done) = r.poll_and_reap();
        assert_eq!(done, [(1, sam_status::GOOD)]);
        assert_eq!(r.disk.ranges().counts(&mut token), (0, 0));
    }

    #[test]
    fn an_aborted_command_still_queued_for_the_store_is_taken_back_and_never_submitted() {
        // The queue takes one request; the second waits in the executor's submission queue.
        let mut r = held_rig_with(true, 1, mailbox_flags::CAP_TMR | mailbox_flags::CAP_OOOC);
        r.post_write(1, 7);
        r.post_write(2, 8);
        let (p, done) = r.poll_and_reap();
        assert_eq!(
            (p.started, done.len(), r.held.lock().expect("held").len()),
            (2, 0, 1)
        );
        r.sim.post_tmr(tmr_type::ABORT_TASK_SET, &[2]).expect("tmr");
        let (p, done) = r.poll_and_reap();
        assert_eq!((p.aborted, r.exec.task_management().cancelled), (1, 1));
        assert_eq!(r.exec.in_flight(), 1, "only write 1 is left, in the device");
        // Answered, and reaped at once: out of order, write 1 before it holds nothing back.
        assert_eq!(done, [(2, sam_status::TASK_ABORTED)]);
        // The device finishes write 1 and the queue has room again: write 2 never reaches it.
        assert_eq!(r.complete_held(), 1);
        let (_, done) = r.poll_and_reap();
        assert_eq!(done, [(1, sam_status::GOOD)]);
        assert!(
            r.held.lock().expect("held").is_empty(),
            "the cancelled write was submitted"
        );
        assert_eq!(r.exec.in_flight(), 0);
    }

    /// A PR preempt-and-abort (`LUN_RESET_PRO`) is no reset (SPC-4 §5.12.11.2.6): it clears
    /// PREVENT ALLOW MEDIUM REMOVAL, as SCST's vdisk does on PR_ABORT_ALL, and leaves the mode
    /// pages as MODE SELECT made them; a LUN reset returns them to their defaults.
    #[test]
    fn a_preempt_and_abort_clears_prevent_and_keeps_the_mode_pages() {
        let mut r = held_rig_with(true, usize::MAX, mailbox_flags::CAP_TMR | mailbox_flags::CAP_OOOC);
        let default_wce = r.disk.write_cache_enabled();
        r.sim.post_cmd(1, &[0x1e, 0, 0, 0, 1, 0], &[], &[]).expect("post");
        r.poll_and_reap();
        assert!(r.disk.removal_prevented());
        // MODE SELECT(6) of the caching page with WCE flipped, straight to the disk the
        // executor serves (a flush it plans answered GOOD).
        let mut list = vec![0u8; 4];
        list.extend_from_slice(&[0x08, 0x12, if default_wce { 0 } else { 0x04 }]);
        list.extend_from_slice(&[0u8; 17]);
        let select = [0x15, 0x10, 0, 0, list.len() as u8, 0];
        let token = &mut scst_accel_hal::locks::LockToken::root();
        match r.disk.start(token, &select, &list) {
            Plan::Io(flush) => {
                r.disk.finish(&flush, crate::store::StoreStatus::Good);
            }
            Plan::Done(done) => assert_eq!(done.status, sam_status::GOOD, "{done:?}"),
        }
        assert_eq!(r.disk.write_cache_enabled(), !default_wce);
        r.sim.post_tmr(tmr_type::LUN_RESET_PRO, &[]).expect("tmr");
        r.poll_and_reap();
        assert!(!r.disk.removal_prevented(), "preempt-and-abort cleared PREVENT");
        assert_eq!(
            r.disk.write_cache_enabled(),
            !default_wce,
            "preempt-and-abort reset the caching page"
        );
        assert_eq!(r.exec.task_management().resets, 0);
        r.sim.post_tmr(tmr_type::LUN_RESET, &[]).expect("tmr");
        r.poll_and_reap();
        assert_eq!(
            r.disk.write_cache_enabled(),
            default_wce,
            "a LUN reset restores the default"
        );
        assert_eq!(r.exec.task_management().resets, 1);
    }

    #[test]
    fn a_lun_reset_naming_answered_commands_resets_the_engine_state_only() {
        let mut r = held_rig_with(true, usize::MAX, mailbox_flags::CAP_TMR | mailbox_flags::CAP_OOOC);
        // PREVENT ALLOW MEDIUM REMOVAL, prevent: engine state a LUN reset clears.
        r.sim.post_cmd(1, &[0x1e, 0, 0, 0, 1, 0], &[], &[]).expect("post");
        let (_, done) = r.poll_and_reap();
        assert_eq!(done, [(1, sam_status::GOOD)]);
        assert!(r.disk.removal_prevented());
        // Id 1 was answered (and is reused only after cmd_tail passed it): nothing to abort.
        r.sim.post_tmr(tmr_type::LUN_RESET, &[1]).expect("tmr");
        let (p, done) = r.poll_and_reap();
        assert_eq!((p.task_management, p.aborted, done.len()), (1, 0, 0));
        assert!(!r.disk.removal_prevented(), "the reset cleared PREVENT");
        let t = r.exec.task_management();
        assert_eq!((t.resets, t.already_answered), (1, 1));
        // An ABORT TASK is no reset.
        r.sim.post_cmd(2, &[0x1e, 0, 0, 0, 1, 0], &[], &[]).expect("post");
        r.poll_and_reap();
        r.sim.post_tmr(tmr_type::ABORT_TASK, &[]).expect("tmr");
        r.poll_and_reap();
        assert!(r.disk.removal_prevented());
        assert_eq!(r.exec.task_management().resets, 1);
    }

    #[test]
    fn the_drain_waits_for_an_early_answered_read_the_device_still_holds() {
        let mut r = held_rig_with(true, usize::MAX, mailbox_flags::CAP_TMR | mailbox_flags::CAP_OOOC);
        let (events, _kernel) = socket_events();
        r.post_read(1, 7);
        r.poll_and_reap();
        r.sim.post_tmr(tmr_type::ABORT_TASK, &[1]).expect("tmr");
        let (_, done) = r.poll_and_reap();
        assert_eq!(done, [(1, sam_status::TASK_ABORTED)]);
        // Answered, but its buffer is the device's: the drain must abort it before proving empty.
        let drained = r.exec.drain(
            &mut StoreToken::root(),
            &mut r.ring,
            &events,
            Duration::from_millis(20),
        );
        assert!(drained.is_ok(), "{drained:?}");
        assert_eq!(r.aborts.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert!(
            r.sim.reap().expect("reap").is_empty(),
            "no second answer for cmd_id 1"
        );
        assert_eq!(r.exec.task_management().dropped_results, 1);
    }
}
