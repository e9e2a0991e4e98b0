//! One frontend worker: a loop over REPLY_AND_GET_MULTI, the engine and its own store queue.
//!
//! Its part of the teardown (module doc of `teardown.rs`): every EXEC it accepts enters the
//! frontend's [`crate::teardown::Drain`] (refused: answered BUSY at once) and its token leaves
//! with the reply, when the reply is handed to SCST; every store request carrying a buffer
//! holds a device lease on it until its completion is reaped; in the `Aborting` phase it aborts
//! its queue once and reports whether the queue is empty afterwards. From its loop it also
//! detects teardown triggers (the store's failure, SCST closing the fd) and answers dump
//! requests.

use super::buffers::BufferCache;
use super::dump::DumpReceiver;
use super::dump::WorkerDump;
use super::fetch_size::FetchSize;
use super::latency::Direction;
use super::latency::Tally;
use super::latency::WorkerFigures;
use super::Phase;
use super::SessionInfo;
use super::Shared;
use super::TeardownTrigger;
use super::WorkerExit;
use super::LOOK_GAP;
use crate::abi;
use crate::abi::data_direction;
use crate::abi::sam_status;
use crate::abi::GetCmd;
use crate::abi::MultiBuffer;
use crate::abi::ReplyCmd;
use crate::int_map::IntMap;
use crate::scsi::DataOut;
use crate::scsi::IoPlan;
use crate::scsi::Plan;
use crate::scsi::Response;
use crate::scsi::SenseBytes;
use crate::store::CmdBuffer;
use crate::store::CopyPath;
use crate::store::IoBuffer;
use crate::store::StoreCompletion;
use crate::store::StoreQueue;
use crate::store::StoreRequest;
use crate::store::StoreStatus;
use crate::teardown::Admitted;
use crate::teardown::DrainDoor;
use crate::teardown::Lease;
use crate::teardown::Refused;
use crate::transport::Errno;
use scst_accel_hal::fdio::poll_ready;
use scst_accel_hal::locks::levels::Root;
use scst_accel_hal::locks::LockToken;
use std::borrow::Cow;
use std::os::fd::AsFd;
use std::os::fd::BorrowedFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

/// The first backoff after a readable fd gave nothing to fetch ([`Worker::back_off`]).
const READY_BACKOFF_FIRST: Duration = Duration::from_micros(50);
/// The longest: how late a command can be taken once a suspension ends.
const READY_BACKOFF_MAX: Duration = Duration::from_millis(5);

/// REPLY_AND_GET_MULTI calls in a row that may fail before the kernel reads any reply before
/// the replies are dropped and the disk torn down ([`Worker::replies_untaken`]).
const UNTAKEN_CALLS_MAX: u32 = 3;

/// While the store refuses the backlog (nothing else is fetched), one command is fetched this
/// often: SCST's ready list puts management first (ATTACH_SESS, DETACH_SESS, task management;
/// spec §4), and an ATTACH_SESS unanswered for 5 s fails the initiator's login or the LUN's
/// addition (§3.11, §7.3), however slow the store. An EXEC fetched so waits with the backlog;
/// at one per look the backlog grows by at most two commands a second.
const BACKLOG_LOOK: Duration = Duration::from_millis(500);

/// Spin, reading the clock between a few spin hints, until `at` (at most a look's gap away:
/// [`LOOK_GAP`]).
fn spin_until(at: Instant) {
    while Instant::now() < at {
        for _ in 0..16 {
            std::hint::spin_loop();
        }
    }
}

/// Does a message of `subcode` enter the drain (a command the store may work on)?
fn admits(subcode: u32) -> bool {
    matches!(subcode, abi::SCST_USER_EXEC | abi::SCST_USER_EXT_COPY_REMAP)
}

/// A lease of a command buffer, or the buffer back if the pool is being unmapped.
type LeaseGrant = Result<Lease<Arc<CmdBuffer>>, Refused<Arc<CmdBuffer>>>;

/// What an EXEC reply needs to know about its command.
struct ExecCtx {
    /// When SCST handed the command over, and by when it must be answered (the payload's
    /// timeout, capped by `FrontendConfig::max_command_timeout`).
    received: Instant,
    deadline: Instant,
    buffer: Option<IoBuffer>,
    direction: u8,
    bufflen: u32,
    /// Buffer allocated at EXEC time (pbuf was 0): must be named in the reply (spec §3.5).
    new_pbuf: u64,
    /// The command's place in the drain; `None` only for an EXEC refused at the gate. It goes
    /// with the reply and drops when the reply is handed to SCST.
    token: Option<Admitted>,
    /// The work answers an EXT_COPY_REMAP (an EXTENDED COPY segment copied in the store), not
    /// an EXEC: its reply is a remap reply ([`Worker::reply_remap`]).
    remap: bool,
}

impl ExecCtx {
    /// The context of an EXEC answered at once (refused, or failed before any work).
    fn immediate(received: Instant, direction: u8, bufflen: u32, token: Option<Admitted>) -> Self {
        Self {
            received,
            deadline: received,
            buffer: None,
            direction,
            bufflen,
            new_pbuf: 0,
            token,
            remap: false,
        }
    }
}

/// What a queued reply carries besides the reply itself.
struct ReplyMeta {
    /// The drain token of an accepted EXEC: never read, held so that it drops (the EXEC
    /// leaves the drain) when its reply is consumed.
    _token: Option<Admitted>,
    /// When its EXEC arrived; `None` for replies to other subcodes.
    received: Option<Instant>,
    /// A buffer allocated at EXEC time and named in this reply (spec §3.5), 0 if none: SCST
    /// owns it only once the reply is taken.
    new_pbuf: u64,
}

/// An EXEC whose store work is under way.
struct Inflight {
    /// The store tag of this step: cmd_h in the low 32 bits, the worker's step count in the
    /// high ones ([`Worker::store_steps`]), so a completion of an earlier step of the command
    /// (a store that completes a request twice) is told from this one's.
    tag: u64,
    io: IoPlan,
    ctx: ExecCtx,
    /// The device's lease on the command's buffer, released when the store completes it.
    lease: Option<Lease<Arc<CmdBuffer>>>,
}

/// The command buffer as the engine's data-out source.
struct BufferDataOut<'a> {
    buffer: Option<&'a IoBuffer>,
}

impl DataOut for BufferDataOut<'_> {
    fn len(&self) -> usize {
        self.buffer.map_or(0, |b| b.len)
    }

    fn read(&self, offset: usize, out: &mut [u8]) {
        if let Some(b) = self.buffer {
            let n = out.len().min(b.len.saturating_sub(offset));
            b.read_at(offset, &mut out[..n]);
        }
    }
}

/// Not `Send`: made on its own thread (it owns that thread's lock token).
pub(super) struct Worker {
    shared: Arc<Shared>,
    /// This thread's lock token (docs/locking.md), made when the worker starts: every lock the
    /// worker takes on the command path (the command table, the sessions, the lease table, the
    /// SGV pool, its store's locks) is taken from it, so the compiler checks their order, and
    /// no token exists for a lock taken out of order.
    token: LockToken<'static, Root>,
    queue: Box<dyn StoreQueue>,
    /// When the ioctl that fetched the commands being dispatched returned: their arrival.
    batch_arrived: Instant,
    /// The buffers this worker looked up, so an EXEC naming a known buffer takes no lock.
    buffer_cache: BufferCache,
    /// This worker released buffers since it last told the other workers (whose caches may
    /// hold them: they look at the table's generation when their doorbell rings).
    released_buffers_unannounced: bool,
    /// This worker's index, also the name of its store queue in dumps.
    index: usize,
    /// This worker's door to the drain: the EXECs of a batch enter it at once, and their
    /// exits are taken off it ([`DrainDoor::publish`]) at the top of each turn of the loop,
    /// right after the exchange that handed their replies to SCST (before the turn's store
    /// calls) and at the end of the turn (before `linger`, `poll_completions`, `wait`).
    door: DrainDoor,
    multi: MultiBuffer,
    /// Replies for the next ioctl, contiguous as the kernel reads them (`preplies`).
    replies: Vec<ReplyCmd>,
    /// One entry per reply: the drain token of an accepted EXEC, dropped with its reply, and
    /// when the EXEC arrived (for its latency, taken when the reply is handed to SCST).
    reply_tokens: Vec<ReplyMeta>,
    /// Sense bytes the replies point at; alive until their replies are consumed. Each in a
    /// heap buffer of its own (its address does not move when this list grows).
    senses: Vec<Vec<u8>>,
    /// Sense buffers whose replies were consumed, for the next CHECK CONDITIONs: once as many
    /// were needed at once, a CHECK CONDITION allocates nothing.
    spare_senses: Vec<Vec<u8>>,
    /// Leftover descriptors the remap replies point at; alive until their replies are
    /// consumed, like `senses`.
    leftovers: Vec<Box<[abi::ExtCopyDataDescr]>>,
    inflight: IntMap<u32, Inflight>,
    /// No command in `inflight` has a deadline before this (`None`: none is tracked). Lowered
    /// as commands enter, raised only by [`Worker::check_deadlines`]'s scan once it has passed,
    /// so that a turn of the loop reads the clock against it instead of scanning every command.
    earliest_deadline: Option<Instant>,
    /// Leases of the requests reaped in this pass, ended together ([`LeaseTable::release_batch`]).
    ///
    /// [`LeaseTable::release_batch`]: crate::teardown::LeaseTable::release_batch
    reaped_leases: Vec<Lease<Arc<CmdBuffer>>>,
    /// Their payloads, dropped after the lease table's lock (reused: no allocation per reap).
    released_buffers: Vec<Arc<CmdBuffer>>,
    submit: Vec<StoreRequest>,
    /// The store refused the last submission (its queue full, or failed): what it refused
    /// waits in `submit`, and nothing is fetched until it is in ([`Worker::flush_submissions`])
    /// but one command every [`BACKLOG_LOOK`].
    store_refused: bool,
    /// When the worker last fetched while the store refused ([`BACKLOG_LOOK`]).
    backlog_look: Instant,
    /// Buffers of the requests in `submit` not leased yet, by store tag ([`Worker::grant_leases`]).
    to_lease: Vec<(u64, Arc<CmdBuffer>)>,
    /// Store steps submitted so far, wrapping: the high half of each step's tag.
    store_steps: u32,
    /// Reused by [`Worker::grant_leases`]: no allocation per batch.
    granted: Vec<LeaseGrant>,
    completions: Vec<StoreCompletion>,
    last_escalation: Option<Instant>,
    /// Completions reaped from the store so far, and when the health check last saw that
    /// count move: the store's progress, for [`Worker::stuck_in_store`].
    store_completions: u64,
    progress_seen: (u64, Instant),
    /// Dump requests ([`super::Frontend::dump`]).
    dumps: DumpReceiver,
    /// Next time to ask the store whether it failed.
    next_health_check: Instant,
    /// This worker's queue was aborted in the `Aborting` phase: nothing new is submitted.
    aborted: bool,
    /// SCST closed the device under us (ENODEV / EBADF): nothing can be fetched or delivered.
    fd_closed: bool,
    /// Replies discarded because the fd was closed.
    undelivered: usize,
    /// REPLY_AND_GET_MULTI calls in a row that failed before the kernel read any reply.
    untaken_calls: u32,
    /// The last wait found the scst_user fd readable (or ended a backoff with it readable):
    /// the fetch that follows tells whether that readiness was real.
    fd_said_ready: bool,
    /// Fetches in a row that found nothing right after the fd polled readable. The kernel's
    /// POLLIN is level-triggered on SCST's active list as well as on the ready list (spec
    /// §3.9), and while SCST's activity is suspended (FLUSH_CACHE, SET_OPTIONS: up to 90 s)
    /// the active list cannot drain: POLLIN stays up and every fetch gets EAGAIN. Past
    /// zero, [`Worker::wait`] backs off instead of polling the fd again at once.
    empty_ready_fetches: u32,
    /// How many commands the next fetch asks for (fetch_size.rs).
    fetch_size: FetchSize,
}

impl Worker {
    pub(super) fn new(
        shared: Arc<Shared>,
        queue: Box<dyn StoreQueue>,
        index: usize,
        dumps: DumpReceiver,
    ) -> Self {
        let multi = MultiBuffer::new(shared.config.cmds_per_call.max(1));
        let fetch_size = FetchSize::new(multi.capacity(), shared.config.fetch_bytes);
        let door = shared.drain.door();
        Self {
            shared,
            // The top of the worker's thread: nothing is held yet (asserted).
            token: LockToken::root(),
            queue,
            batch_arrived: Instant::now(),
            buffer_cache: BufferCache::new(),
            released_buffers_unannounced: false,
            index,
            door,
            multi,
            replies: Vec::new(),
            reply_tokens: Vec::new(),
            senses: Vec::new(),
            spare_senses: Vec::new(),
            leftovers: Vec::new(),
            inflight: IntMap::default(),
            earliest_deadline: None,
            reaped_leases: Vec::new(),
            released_buffers: Vec::new(),
            submit: Vec::new(),
            store_refused: false,
            backlog_look: Instant::now(),
            to_lease: Vec::new(),
            store_steps: 0,
            granted: Vec::new(),
            completions: Vec::new(),
            last_escalation: None,
            store_completions: 0,
            progress_seen: (0, Instant::now()),
            dumps,
            next_health_check: Instant::now(),
            aborted: false,
            fd_closed: false,
            undelivered: 0,
            untaken_calls: 0,
            fd_said_ready: false,
            empty_ready_fetches: 0,
            fetch_size,
        }
    }

    pub(super) fn run(mut self) -> WorkerExit {
        let mut leave_deadline: Option<Instant> = None;
        loop {
            // Liveness (`Frontend::wedged_workers`): one relaxed store per iteration. What one
            // iteration can block on, hence how old a live worker's heartbeat can get:
            // - `wait`: one poll(2) bounded by `idle_poll` (50 ms by default) while anything is
            //   pending; by `idle_park` (1 s) when idle, with the heartbeat set ahead to the
            //   end of that bound first (`Liveness::beat_until`), so parking never looks wedged;
            // - `flush_submissions`: never waits; what the store refuses stays in the backlog
            //   and this loop turns on (it then fetches nothing and waits ≤ `idle_poll`);
            // - store calls (`submit`, `reap`, `start_abort_all` in the deadline escalation,
            //   `abort_all` in the abort step): as long as the store's own bounded escalation
            //   (a device reset), for which the store sets this heartbeat ahead by its bound
            //   first (`StoreQueue::set_heartbeat`); the file store's `start_abort_all` does
            //   not wait;
            // - the REPLY_AND_GET_MULTI and GET_EXTENDED_CDB ioctls: never (non-blocking fd);
            // - `linger` and `poll_completions`: at most `FrontendConfig::linger_for` (10 µs
            //   by default at 4 KiB commands) and `completion_poll_for` (4 µs), never above
            //   `MAX_LINGER` (1 ms) each, of looks that do not wait.
            // A heartbeat older than a few seconds therefore means a store call that does not
            // return, or a store that accepts nothing: the service is wedged.
            self.shared.liveness.beat(self.index);
            // Exits counted since the last turn leave the drain before anything here can wait
            // (the store calls below: a teardown waiting for the drain must see them).
            self.door.publish();
            // Buffers another worker released leave this worker's cache now, so they return
            // to the pool (one atomic load when nothing changed).
            self.buffer_cache.purge_if_stale(&self.shared.buffers);
            self.reap_store();
            if !self.inflight.is_empty() {
                self.check_deadlines();
            }
            self.answer_dumps();
            self.check_store_health();
            let phase = self.shared.phase();
            if phase >= Phase::Aborting && !self.aborted {
                self.abort_queue();
            }
            if self.fd_closed {
                self.discard_replies();
            }
            if phase == Phase::Leaving {
                let deadline =
                    *leave_deadline.get_or_insert_with(|| Instant::now() + self.shared.config.stop_grace);
                if self.inflight.is_empty() && self.replies.is_empty() {
                    return WorkerExit {
                        abandoned: 0,
                        undelivered_replies: self.undelivered,
                    };
                }
                if Instant::now() >= deadline {
                    log::error!(
                        "worker {}: stop grace expired with {} store requests in flight and {} replies pending",
                        self.index,
                        self.inflight.len(),
                        self.replies.len()
                    );
                    return WorkerExit {
                        abandoned: self.inflight.len(),
                        undelivered_replies: self.undelivered + self.replies.len(),
                    };
                }
            }
            // Until the workers leave, they keep fetching: while draining, new commands are
            // answered (BUSY) and returned buffers honoured, never left to the close path.
            // Except while the store refuses a backlog: then one command per BACKLOG_LOOK (for
            // the management SCST queues first), and SCST keeps the rest (the initiators meet
            // a full queue there, not here).
            let want = if phase == Phase::Leaving || self.fd_closed {
                0
            } else if self.store_refused {
                usize::from(self.backlog_look_due())
            } else {
                self.fetch_size.want()
            };
            let fd_said_ready = std::mem::take(&mut self.fd_said_ready);
            // Replies go out in this turn's exchange: if it fetches nothing, the worker
            // lingers before it sleeps (the initiator's answer to them is on its way).
            let replied = !self.replies.is_empty();
            let fetched = if want > 0 || replied {
                self.exchange(want)
            } else {
                0
            };
            // The replies the exchange handed to SCST leave the drain now, before the store
            // calls of this turn (a reap can run the store's escalation: a device reset).
            self.door.publish();
            if fetched > 0 {
                // Every command of the batch was handed over by the ioctl that just returned:
                // one clock read for all of them.
                self.batch_arrived = Instant::now();
                self.empty_ready_fetches = 0;
            } else if fd_said_ready && want > 0 {
                self.empty_ready_fetches = self.empty_ready_fetches.saturating_add(1);
            }
            // The commands are read in place: the buffer is lent out while they are dispatched
            // (nothing in dispatch uses it), not copied 544 bytes at a time.
            let commands = std::mem::replace(&mut self.multi, MultiBuffer::empty());
            // The batch's EXECs (and remaps) enter the drain at once; each is admitted from
            // that reservation (`DrainDoor::admit`), and what is left goes back below.
            let admitted = (0..fetched)
                .filter(|&index| admits(commands.cmd(index).subcode))
                .count();
            self.door.reserve(admitted as u64);
            for index in 0..fetched {
                self.dispatch(commands.cmd(index));
            }
            self.multi = commands;
            self.announce_released_buffers();
            self.flush_submissions();
            // The replies consumed by this turn's exchange, the refusals and the reservation's
            // rest leave the drain before the worker lingers or waits.
            self.door.publish();
            if fetched == 0 && self.replies.is_empty() && self.completions_pending() == 0 {
                let fetching = phase != Phase::Leaving && !self.fd_closed && !self.store_refused;
                let lingered = replied && fetching && self.inflight.is_empty() && self.linger();
                if !lingered && !self.poll_completions() {
                    self.wait(fetching);
                }
            }
        }
    }

    /// Teardown step 3 on this worker's queue, once: abort what the store holds (it stops the
    /// queue and resets the function if needed), move the aborted completions on, and report
    /// whether the queue is empty now (the proof that the device holds none of our buffers).
    fn abort_queue(&mut self) {
        self.aborted = true;
        let n = self.queue.abort_all() + self.abort_backlog(None);
        self.reap_store();
        let left = self.queue.in_flight();
        if n > 0 {
            log::warn!(
                "teardown: worker {}: {n} store requests aborted on the device",
                self.index
            );
        }
        if left > 0 {
            log::error!(
                "teardown: worker {}: {left} store requests still held by the store after abort_all; \
                 their buffers stay leased to the device",
                self.index
            );
        }
        self.shared
            .counters
            .aborted
            .fetch_add(n as u64, Ordering::Relaxed);
        self.shared.abort.report(left == 0);
    }

    /// Teardown trigger (a): ask the store whether it failed, at most once per idle poll (not
    /// per command: a failed store fails its requests anyway, the trigger only starts the
    /// teardown).
    fn check_store_health(&mut self) {
        let now = Instant::now();
        if now < self.next_health_check {
            return;
        }
        self.next_health_check = now + self.shared.config.idle_poll;
        if self.shared.trigger.get().is_some() {
            return;
        }
        if self.store_completions != self.progress_seen.0 {
            self.progress_seen = (self.store_completions, now);
        }
        if let Some(why) = self.shared.store.failure() {
            self.shared.trigger.fire(TeardownTrigger::StoreFailed(why));
        } else if let Some(why) = self.stuck_in_store(now) {
            log::error!("worker {}: {why}; tearing the disk down", self.index);
            self.shared.trigger.fire(TeardownTrigger::StoreFailed(why));
        }
    }

    /// A command the store has neither completed nor aborted `max_command_timeout` after its
    /// deadline, the escalation's abort included ([`Worker::check_deadlines`]), while the
    /// store completed nothing at all for as long: the store no longer serves, whatever its
    /// [`Store::failure`](crate::store::Store::failure) says (a file store whose I/O threads
    /// hang in a dead device; an accelerator store resets and fails its requests long before).
    /// The disk then goes alone, as for a device that failed beyond recovery, rather than keep
    /// answering every later command ABORTED. A store that still completes other requests is
    /// slow, not dead: one request stuck in it is left to the initiator's abort.
    fn stuck_in_store(&self, now: Instant) -> Option<String> {
        let grace = self.shared.config.max_command_timeout;
        if now.saturating_duration_since(self.progress_seen.1) <= grace {
            return None;
        }
        let (cmd_h, stuck) = self
            .inflight
            .iter()
            .find(|(_, f)| now.saturating_duration_since(f.ctx.deadline) > grace)?;
        Some(format!(
            "cmd_h {cmd_h} ({:?}) is still with the store {:?} after its deadline, its abort \
             included: the store no longer completes requests",
            stuck.io.op,
            now.duration_since(stuck.ctx.deadline)
        ))
    }

    /// Answer the dump requests waiting (one `try_recv` when there are none).
    fn answer_dumps(&mut self) {
        while let Ok(request) = self.dumps.try_recv() {
            let text = self.dump(Instant::now());
            // The asker may have given up waiting: nothing to do then.
            let _ = request.reply.send(WorkerDump {
                worker: self.index,
                text,
            });
        }
    }

    /// The fd is closed: replies can never be handed to SCST, whose close path answers their
    /// commands. Drop them (and their drain tokens), counted.
    fn discard_replies(&mut self) {
        if !self.replies.is_empty() {
            self.undelivered += self.replies.len();
            self.consume_replies(self.replies.len(), false);
        }
    }

    /// The payload's timeout in seconds (0: none given), capped by configuration.
    fn command_timeout(&self, seconds: i32) -> Duration {
        let cap = self.shared.config.max_command_timeout;
        match u64::try_from(seconds) {
            Ok(s) if s > 0 => Duration::from_secs(s).min(cap),
            _ => cap,
        }
    }

    /// Watchdog (architecture.md §6): a command past its deadline is logged with the state of
    /// every command of this worker and the store's register/ring dump, then everything in
    /// flight on the queue is aborted on the device (stop, reset if needed) and answered
    /// ABORTED COMMAND. Never blocks the I/O path for longer than the store's own bounded
    /// escalation; re-escalates at most once a second.
    fn check_deadlines(&mut self) {
        let now = Instant::now();
        if self.earliest_deadline.is_none_or(|earliest| now < earliest) {
            return;
        }
        if self
            .last_escalation
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        let Some((&late, _)) = self.inflight.iter().find(|(_, f)| f.ctx.deadline <= now) else {
            // The bound passed, but the commands it came from are gone: the next one due.
            self.earliest_deadline = self.inflight.values().map(|f| f.ctx.deadline).min();
            return;
        };
        self.last_escalation = Some(now);
        log::error!(
            "cmd_h {late} missed its deadline; state of this worker's commands:\n{}",
            self.dump(now)
        );
        if let Some(device) = self.shared.store.dump() {
            log::error!("device state at the escalation of cmd_h {late}:\n{device}");
        }
        // A late command the store refused (its queue full) never reached it: ended here. The
        // store's aborted requests complete through the next reaps: the worker serves meanwhile.
        let aborted = self.queue.start_abort_all() + self.abort_backlog(Some(now));
        self.shared
            .counters
            .deadline_escalations
            .fetch_add(1, Ordering::Relaxed);
        if aborted == 0 {
            log::error!(
                "the store could not abort its requests; they stay in flight until it completes them"
            );
        }
    }

    /// A header line, then one line per command this worker holds: tag (cmd_h), state, age,
    /// queue, store op, buffer, lease; then a summary of the replies waiting to be sent.
    fn dump(&self, now: Instant) -> String {
        let mut lines: Vec<String> = self
            .inflight
            .iter()
            .map(|(cmd_h, f)| {
                format!(
                    "  cmd_h {cmd_h}: EXEC {}, age {:?}, deadline {}, queue {}, op {:?}, buffer {}, lease {}",
                    if self.submit.iter().any(|r| r.tag as u32 == *cmd_h) {
                        "waiting for room in the store"
                    } else {
                        "in store"
                    },
                    now.duration_since(f.ctx.received),
                    if f.ctx.deadline <= now {
                        "missed"
                    } else {
                        "pending"
                    },
                    self.index,
                    f.io.op,
                    f.ctx
                        .buffer
                        .as_ref()
                        .map_or("none".into(), |b| format!("{:#x}", b.buffer.addr())),
                    if f.lease.is_some() { "held" } else { "none" },
                )
            })
            .collect();
        lines.sort();
        let waiting: Vec<String> = self
            .replies
            .iter()
            .map(|r| format!("{}/{:#x}", r.cmd_h, r.subcode))
            .collect();
        format!(
            "worker {} (queue {}): {} command(s) in the store ({} reported by the queue), {} reply(ies) to send{}{}\n{}{}",
            self.index,
            self.index,
            self.inflight.len(),
            self.queue.in_flight(),
            self.replies.len(),
            if waiting.is_empty() {
                String::new()
            } else {
                format!(" [cmd_h/subcode {}]", waiting.join(" "))
            },
            if self.fd_closed { "; fd closed by SCST" } else { "" },
            lines.join("\n"),
            if lines.is_empty() { "" } else { "\n" },
        )
    }

    fn completions_pending(&self) -> usize {
        if self.queue.notify_fd().is_none() {
            self.queue.in_flight()
        } else {
            0
        }
    }

    /// Wait for the fd (when `fetching`), the store queue or this worker's doorbell. Bounded by
    /// `idle_poll` while anything is pending (commands in the store, deadlines to watch, the
    /// teardown under way), by `idle_park` when there is nothing at all: then only a command,
    /// a completion, a teardown step or a dump (which ring the doorbell) wakes the worker, and
    /// an idle service costs one wake-up per `idle_park` per worker. After a readable fd gave
    /// nothing to fetch, back off instead ([`Worker::back_off`]). Completions already waiting
    /// in the store ([`StoreQueue::prepare_to_wait`]) end the wait before it sleeps.
    fn wait(&mut self, fetching: bool) {
        if fetching && self.empty_ready_fetches > 0 {
            self.back_off();
            return;
        }
        // The store's completion fd is cleared of what was already reaped; with completions
        // waiting, the loop reaps them instead of sleeping.
        if self.queue.prepare_to_wait() {
            return;
        }
        let idle = fetching
            && self.inflight.is_empty()
            && self.replies.is_empty()
            && self.shared.phase() == Phase::Serving;
        let bound = if idle {
            self.shared.config.idle_park.max(self.shared.config.idle_poll)
        } else {
            self.shared.config.idle_poll
        };
        let doorbell = self.shared.doorbells.get(self.index);
        let fd = Some(self.shared.fd.poll_fd()).filter(|_| fetching);
        // At most three fds, in a fixed array: no allocation per wait.
        let mut fds: [BorrowedFd<'_>; 3] = [self.shared.fd.poll_fd(); 3];
        let mut count = 0;
        for polled in fd
            .into_iter()
            .chain(self.queue.notify_fd())
            .chain(doorbell.map(AsFd::as_fd))
        {
            fds[count] = polled;
            count += 1;
        }
        if idle {
            self.shared.liveness.beat_until(self.index, bound);
        }
        let rung = match poll_ready(&fds[..count], bound) {
            Ok(ready) => {
                self.fd_said_ready = fetching && ready.is_ready(0);
                // The doorbell is the last fd polled.
                doorbell.is_some() && ready.is_ready(count - 1)
            }
            Err(e) => {
                log::warn!("poll on the scst_user fd failed: {e}");
                scst_accel_hal::locks::sleep(self.shared.config.idle_poll);
                true
            }
        };
        if let (Some(doorbell), true) = (doorbell, rung) {
            // Read only when rung (no syscall otherwise); either way the loop looks at the
            // phase and the dumps next.
            doorbell.clear();
        }
        self.figures().woke();
    }

    /// After a turn that sent replies and fetched nothing: look at the fd again, yielding the
    /// CPU between looks, for up to [`FrontendConfig::linger_for`] the size of the commands
    /// this worker has been serving, before sleeping. True when it became readable (the loop
    /// fetches at once, as after a wake-up).
    fn linger(&mut self) -> bool {
        let linger = self.shared.config.linger_for(self.fetch_size.mean_bytes());
        if !linger.is_zero() {
            self.figures().linger_began();
        }
        self.look_yielding(linger, LOOK_GAP, |worker| {
            worker.figures().lingered();
            let readable = worker.fd_readable_now();
            worker.fd_said_ready |= readable;
            readable
        })
    }

    /// With requests in flight on an asynchronous store and nothing else to do: look for their
    /// completions, yielding the CPU between looks, for up to
    /// [`FrontendConfig::completion_poll_for`] the size of this worker's commands before
    /// sleeping on the store's interrupt. True when a look reaped some (the loop goes on at
    /// once, as after a wake-up). A command arriving meanwhile waits for the first reap or the
    /// end of the poll, at most [`super::MAX_LINGER`].
    fn poll_completions(&mut self) -> bool {
        if self.inflight.is_empty() || self.queue.notify_fd().is_none() {
            return false;
        }
        let poll = self
            .shared
            .config
            .completion_poll_for(self.fetch_size.mean_bytes());
        // Looks back to back: a reap reads the completion ring (no syscall), and a spin between
        // looks kept the device's own threads (a simulator's) from the CPU they needed: the
        // NVMe simulator at 128 KiB lost about a tenth with a gap of LOOK_GAP.
        self.look_yielding(poll, Duration::ZERO, |worker| {
            worker.figures().polled_completions();
            worker.reap_store() > 0
        })
    }

    /// Yield the CPU, then `look`, until a look finds what it looks for (true) or `bound` has
    /// passed (false); a zero bound looks not at all. Looks are `gap` apart at least: a yield
    /// that comes back sooner (nothing else wanted the CPU) is followed by a spin on the
    /// clock, not by another look. A zero gap reads the clock once per look, for the bound.
    fn look_yielding(
        &mut self,
        bound: Duration,
        gap: Duration,
        mut look: impl FnMut(&mut Self) -> bool,
    ) -> bool {
        if bound.is_zero() {
            return false;
        }
        let until = Instant::now() + bound;
        let mut next_look = None;
        loop {
            std::thread::yield_now();
            if let Some(at) = next_look {
                spin_until(at);
            }
            if look(self) {
                return true;
            }
            let now = Instant::now();
            if now >= until {
                return false;
            }
            next_look = (!gap.is_zero()).then(|| (now + gap).min(until));
        }
    }

    /// Whether the scst_user fd polls readable now (a `poll` that does not wait; an error reads
    /// as not readable, and the next blocking wait reports it).
    fn fd_readable_now(&self) -> bool {
        let fd = self.shared.fd.poll_fd();
        // `poll_ready`: a look allocates nothing (the linger makes one every few µs).
        poll_ready(&[fd], Duration::ZERO).is_ok_and(|r| r.is_ready(0))
    }

    /// The fd polled readable and the fetch found nothing (spec §3.9: POLLIN on SCST's active
    /// list, which a suspension keeps full). Wait for the store's completions only, for a time
    /// that doubles with each empty fetch up to [`READY_BACKOFF_MAX`], then look at the fd
    /// without waiting: still readable, the next fetch tries again; not readable, the
    /// readiness was a passing one and the normal wait resumes. Commands cannot be delivered
    /// while the suspension lasts, so the backoff delays none; once it ends, the next fetch
    /// after at most [`READY_BACKOFF_MAX`] takes them.
    fn back_off(&mut self) {
        let shift = (self.empty_ready_fetches - 1).min(16);
        let pause = READY_BACKOFF_FIRST
            .saturating_mul(1 << shift)
            .min(READY_BACKOFF_MAX)
            .min(self.shared.config.idle_poll);
        if !self.queue.prepare_to_wait() {
            match self.queue.notify_fd() {
                Some(store) => {
                    if let Err(e) = poll_ready(&[store], pause) {
                        log::warn!("poll on the store queue failed: {e}");
                        scst_accel_hal::locks::sleep(pause);
                    }
                }
                None => scst_accel_hal::locks::sleep(pause),
            }
        }
        if self.fd_readable_now() {
            self.fd_said_ready = true;
        } else {
            self.empty_ready_fetches = 0;
        }
    }

    /// One REPLY_AND_GET_MULTI: deliver pending replies, fetch up to `want` commands. Returns
    /// the number of commands fetched. Reply bookkeeping follows spec §3.3 and pitfall §8.3: a
    /// reply the kernel failed on is consumed and never resent.
    ///
    /// `replies_done` is preset to -1 so that "the kernel wrote nothing" (it failed before
    /// reading any reply, e.g. EFAULT on the header) is told apart from "reply 0 failed": in
    /// the first case no reply was consumed, none is lost, and all are sent again (a bounded
    /// number of times, [`UNTAKEN_CALLS_MAX`]).
    fn exchange(&mut self, want: usize) -> usize {
        let replies_cnt = self.replies.len().min(i16::MAX as usize);
        self.multi.set_header(abi::GetMultiHeader {
            preplies: if replies_cnt > 0 {
                self.replies.as_ptr() as u64
            } else {
                0
            },
            replies_cnt: replies_cnt as i16,
            replies_done: -1,
            cmds_cnt: want as i16,
            _pad: 0,
        });
        self.figures().tally(Tally::Ioctl);
        if want > 0 && want < self.multi.capacity() {
            self.figures().tally(Tally::CappedFetch);
        }
        let result = self.shared.fd.reply_and_get_multi(&mut self.multi);
        let header = self.multi.header();
        let done = (header.replies_done.max(0) as usize).min(replies_cnt);
        // `cmds_cnt` still holds our `want` when the kernel failed before writing anything
        // (`replies_done` left at -1: EFAULT reading the header, say); it writes
        // `replies_done` before it fetches, and `cmds_cnt` after (spec §3.3). The slots then
        // hold an earlier call's commands: none is new.
        let fetched = if result.is_err() && header.replies_done < 0 {
            0
        } else {
            (header.cmds_cnt.max(0) as usize).min(want)
        };
        match result {
            Ok(()) => self.consume_replies(replies_cnt, true),
            Err(errno) if errno == Errno::ENODEV || errno.0 == libc::EBADF => {
                // Teardown trigger (b): SCST closed or unregistered the device under us. What
                // we still hold is answered by its close path (scst_user.md §5.3).
                if !self.fd_closed {
                    log::error!(
                        "worker {}: REPLY_AND_GET_MULTI: {errno}: SCST closed the device; {} replies undeliverable",
                        self.index,
                        self.replies.len()
                    );
                }
                self.fd_closed = true;
                self.shared.trigger.fire(TeardownTrigger::ScstClosed);
                self.discard_replies();
                return 0;
            }
            Err(errno) if replies_cnt > 0 && header.replies_done < 0 => {
                // The kernel wrote nothing (§3.3 writes replies_done before it fetches, even
                // on a reply failure): it read no reply and fetched nothing.
                return self.replies_untaken(errno);
            }
            Err(errno) if done < replies_cnt => {
                let failed = self.replies[done];
                self.shared.counters.reply_errors.fetch_add(1, Ordering::Relaxed);
                log::error!(
                    "kernel refused reply for cmd_h {} subcode {:#x}: {errno}; it is consumed and not resent",
                    failed.cmd_h,
                    failed.subcode
                );
                self.free_unattached_buffer(done, errno);
                self.consume_replies(done + 1, true);
            }
            Err(Errno::EAGAIN) => self.consume_replies(replies_cnt, true),
            Err(errno) => {
                self.consume_replies(replies_cnt, true);
                log::warn!("REPLY_AND_GET_MULTI failed after all replies were taken: {errno}");
            }
        }
        self.untaken_calls = 0;
        fetched
    }

    /// The kernel refused reply `index`. If that reply named a buffer it allocated, SCST took
    /// it only if it got as far as attaching it, and no ON_CACHED_MEM_FREE will ever return one
    /// it did not: that one is freed here. An ALLOC_MEM reply's buffer is attached last, by
    /// `dev_user_map_buf`, whose failures (ENOMEM, EFAULT: the pin) are the reply's, so any
    /// refusal means it never was (spec §3.4). An EXEC reply's: ESRCH (no such command) and
    /// EINVAL (a reply the kernel rejects, spec §3.4 and §3.5: checked before the pin) mean it
    /// never was; after any other errno (EFAULT copying sense happens after the attach) SCST
    /// may own it: it stays, and is returned by SCST or at the close.
    fn free_unattached_buffer(&mut self, index: usize, errno: Errno) {
        let pbuf = self.reply_tokens[index].new_pbuf;
        if pbuf == 0 {
            return;
        }
        let alloc_mem = self.replies[index].subcode == abi::SCST_USER_ALLOC_MEM;
        if alloc_mem || errno == Errno::ESRCH || errno == Errno::EINVAL {
            self.free_reply_buffer(index, "the refused reply");
        } else {
            log::warn!("buffer {pbuf:#x} of the refused reply ({errno}) may be SCST's: kept until SCST or the close returns it");
        }
    }

    /// Reply `index` named a buffer allocated at EXEC time that SCST never attached (`what`
    /// says which reply): free it; nothing else will return it.
    fn free_reply_buffer(&mut self, index: usize, what: &str) {
        let pbuf = self.reply_tokens[index].new_pbuf;
        if pbuf != 0 && self.release_buffer(pbuf) {
            log::warn!("buffer {pbuf:#x} of {what} was never SCST's: freed");
        }
    }

    /// REPLY_AND_GET_MULTI failed before the kernel read any reply: keep them all for the next
    /// call. After [`UNTAKEN_CALLS_MAX`] such calls in a row the kernel is taken not to read
    /// them at all: the disk is torn down ([`TeardownTrigger::RepliesRefused`]), since SCST
    /// never completes a command handed to the handler on its own (spec §4) and a dropped
    /// reply would leave its command, and any task management waiting for it, hung for as long
    /// as the fd stays open; the close path (§5.3) answers them. The replies are dropped
    /// (counted as refused, logged), as when SCST closes the device, and a worker that resent
    /// forever would never reach its teardown checks. A buffer allocated at EXEC time and named
    /// in a dropped reply was never attached (the kernel read none of them, spec §3.3), so no
    /// ON_CACHED_MEM_FREE will return it: it is freed with its reply. Returns 0: nothing was
    /// fetched.
    fn replies_untaken(&mut self, errno: Errno) -> usize {
        self.untaken_calls += 1;
        if self.untaken_calls < UNTAKEN_CALLS_MAX {
            log::warn!(
                "worker {}: REPLY_AND_GET_MULTI failed ({errno}) before the kernel read any of {} replies; sending them again",
                self.index,
                self.replies.len()
            );
            return 0;
        }
        log::error!(
            "worker {}: REPLY_AND_GET_MULTI failed ({errno}) {} times in a row before reading any reply; \
             dropping {} replies and tearing the disk down: SCST's close path answers their commands",
            self.index,
            self.untaken_calls,
            self.replies.len()
        );
        self.shared
            .trigger
            .fire(TeardownTrigger::RepliesRefused(errno.to_string()));
        self.shared
            .counters
            .reply_errors
            .fetch_add(self.replies.len() as u64, Ordering::Relaxed);
        for index in 0..self.replies.len() {
            self.free_reply_buffer(index, "a dropped reply");
        }
        self.consume_replies(self.replies.len(), false);
        self.untaken_calls = 0;
        0
    }

    /// The first `n` replies were handed to SCST (or consumed by a refusal): forget them and
    /// drop their EXECs' drain tokens (the command is answered, it leaves the drain).
    ///
    /// `delivered`: the kernel took them, so their EXECs' latencies end now (replies discarded
    /// because the fd closed are not counted).
    fn consume_replies(&mut self, n: usize, delivered: bool) {
        self.replies.drain(..n);
        if delivered {
            // One clock read per batch: every reply of the batch was handed over by this call.
            let mut now = None;
            let figures = self.figures();
            for meta in &self.reply_tokens[..n] {
                if let Some(received) = meta.received {
                    let now = *now.get_or_insert_with(Instant::now);
                    figures.latency(now.saturating_duration_since(received));
                }
            }
        }
        self.reply_tokens.drain(..n);
        if self.replies.is_empty() {
            self.spare_senses.append(&mut self.senses);
            self.leftovers.clear();
        }
    }

    /// Queue a reply; `token` is the drain token of the EXEC it answers.
    fn push_reply(&mut self, reply: ReplyCmd, token: Option<Admitted>) {
        self.push_reply_timed(reply, token, None);
    }

    /// Queue a reply, with its EXEC's arrival time for the latency figures.
    fn push_reply_timed(&mut self, reply: ReplyCmd, token: Option<Admitted>, received: Option<Instant>) {
        self.replies.push(reply);
        self.reply_tokens.push(ReplyMeta {
            _token: token,
            received,
            new_pbuf: 0,
        });
    }

    /// Release `pbuf` (SCST gave it back, or never took it): true if it was ours. The other
    /// workers' caches may hold it; they are told after this batch of commands.
    fn release_buffer(&mut self, pbuf: u64) -> bool {
        let released = self.shared.buffers.release(&mut self.token, pbuf);
        self.released_buffers_unannounced |= released;
        released
    }

    /// Ring the other workers' doorbells if this worker released buffers: an idle worker's
    /// cache would otherwise keep them out of the pool until its next wake-up.
    fn announce_released_buffers(&mut self) {
        if !std::mem::take(&mut self.released_buffers_unannounced) {
            return;
        }
        for other in (0..self.shared.doorbells.len()).filter(|&i| i != self.index) {
            self.shared.ring(other);
        }
    }

    /// This worker's own figures (it is their only writer).
    fn figures(&self) -> &WorkerFigures {
        &self.shared.figures[self.index]
    }

    fn dispatch(&mut self, cmd: &GetCmd) {
        let figures = &self.shared.figures[self.index];
        match cmd.subcode {
            abi::SCST_USER_EXEC => {
                figures.tally(Tally::Exec);
                self.exec(cmd);
            }
            abi::SCST_USER_ALLOC_MEM => {
                figures.tally(Tally::AllocMem);
                self.alloc_mem(cmd);
            }
            abi::SCST_USER_ON_FREE_CMD => {
                figures.tally(Tally::OnFree);
                let free: abi::ScsiOnFreeCmd = cmd.read_payload();
                if free.buffer_cached == 0 && free.pbuf != 0 {
                    self.release_buffer(free.pbuf);
                }
                self.push_reply(ReplyCmd::new(cmd.cmd_h, cmd.subcode), None);
            }
            abi::SCST_USER_ON_CACHED_MEM_FREE => {
                figures.tally(Tally::OnCachedMemFree);
                let free: abi::OnCachedMemFree = cmd.read_payload();
                if !self.release_buffer(free.pbuf) {
                    log::warn!(
                        "ON_CACHED_MEM_FREE for unknown buffer {:#x} (owner cmd_h {})",
                        free.pbuf,
                        cmd.cmd_h
                    );
                }
                self.push_reply(ReplyCmd::new(cmd.cmd_h, cmd.subcode), None);
            }
            abi::SCST_USER_PARSE => {
                figures.tally(Tally::Parse);
                self.parse(cmd);
            }
            abi::SCST_USER_ATTACH_SESS | abi::SCST_USER_DETACH_SESS => self.session(cmd),
            abi::SCST_USER_TASK_MGMT_RECEIVED | abi::SCST_USER_TASK_MGMT_DONE => self.task_mgmt(cmd),
            abi::SCST_USER_EXT_COPY_REMAP => self.ext_copy_remap(cmd),
            other => log::error!("unknown subcode {other:#x} for cmd_h {}; not answered", cmd.cmd_h),
        }
    }

    fn session(&mut self, cmd: &GetCmd) {
        let sess: abi::Sess = cmd.read_payload();
        let reply = {
            let (mut sessions, _) = self.shared.sessions.lock(&mut self.token);
            if cmd.subcode == abi::SCST_USER_ATTACH_SESS {
                self.shared.counters.attach.fetch_add(1, Ordering::Relaxed);
                let info = SessionInfo {
                    lun: sess.lun,
                    initiator: abi::c_name(&sess.initiator_name),
                    rd_only: sess.rd_only != 0,
                    attached_by: cmd.cmd_h,
                };
                log::info!(
                    "session {:#x} attached: LUN {} initiator {}",
                    sess.sess_h,
                    info.lun,
                    info.initiator
                );
                // `sess_h` is the kernel's `tgt_dev` address (spec §8.15), handed out again
                // once that one is freed: after a DETACH another worker may not have taken
                // yet, or with none at all when an earlier ATTACH timed out (its late reply
                // was dropped, spec §7). A known `sess_h` is therefore a new session, never a
                // reason to refuse one.
                if let Some(earlier) = sessions.insert(sess.sess_h, info) {
                    log::warn!(
                        "session {:#x} attached again (ATTACH {}; the earlier one, ATTACH {}, \
                         initiator {}, ended without a DETACH seen here yet)",
                        sess.sess_h,
                        cmd.cmd_h,
                        earlier.attached_by,
                        earlier.initiator
                    );
                }
                ReplyCmd::with_result(cmd.cmd_h, cmd.subcode, 0)
            } else {
                self.shared.counters.detach.fetch_add(1, Ordering::Relaxed);
                // An earlier session's DETACH taken by another worker after the new one's
                // ATTACH removes the new entry too: the table then misses a live session (its
                // EXT_COPY_REMAP is copied by SCST's core, not here; status does not list it),
                // never holds a dead one, whose `sess_h` the kernel's slab may give to another
                // device's session. Telling the two DETACHes apart by handle fails once the
                // kernel's per-device counter (every ucmd's) has moved 2^31 since the ATTACH.
                sessions.remove(&sess.sess_h);
                log::info!("session {:#x} detached", sess.sess_h);
                ReplyCmd::new(cmd.cmd_h, cmd.subcode)
            }
        };
        self.push_reply(reply, None);
    }

    fn task_mgmt(&mut self, cmd: &GetCmd) {
        self.shared.counters.task_mgmt.fetch_add(1, Ordering::Relaxed);
        let tm: abi::Tm = cmd.read_payload();
        log::info!(
            "task management {} fn {} cmd_h_to_abort {} ({} commands in flight here)",
            if cmd.subcode == abi::SCST_USER_TASK_MGMT_RECEIVED {
                "received"
            } else {
                "done"
            },
            tm.fn_,
            tm.cmd_h_to_abort,
            self.inflight.len()
        );
        if cmd.subcode == abi::SCST_USER_TASK_MGMT_DONE {
            match tm.fn_ {
                abi::tm_fn::LUN_RESET | abi::tm_fn::TARGET_RESET => self.shared.disk.reset(&mut self.token),
                abi::tm_fn::PR_ABORT_ALL => self.shared.disk.preempt_and_abort(),
                _ => {}
            }
        }
        // Affected EXECs finish on their own (the store completes them); spec §4 only asks that
        // every one of them is answered, which the in-flight table guarantees.
        self.push_reply(
            ReplyCmd::with_result(cmd.cmd_h, cmd.subcode, abi::tm_result::SUCCESS),
            None,
        );
    }

    /// EXT_COPY_REMAP (spec §3.8, `docs/xcopy.md`): one EXTENDED COPY segment, sent on the
    /// EXTENDED COPY command's own handle. When source and destination are both sessions of
    /// this device (the copy manager's tgt_devs for it) and the store can copy, the segment is
    /// copied in the store, asynchronously like an EXEC (in flight, with the command's
    /// deadline, answered in [`Worker::reply_remap`]) and no data crosses SCST's buffers; the
    /// reply then has no leftovers. Otherwise the whole segment goes back as one leftover
    /// descriptor and SCST's copy manager copies it with READ(16) / WRITE(16) through us.
    fn ext_copy_remap(&mut self, cmd: &GetCmd) {
        let received = self.batch_arrived;
        let remap: abi::ExtCopyRemap = cmd.read_payload();
        self.shared
            .counters
            .ext_copy_remap
            .fetch_add(1, Ordering::Relaxed);
        let Some(token) = self.door.admit() else {
            // Intake is stopped (teardown step 1): BUSY, as for an EXEC.
            self.shared
                .counters
                .refused_in_teardown
                .fetch_add(1, Ordering::Relaxed);
            let ctx = ExecCtx {
                remap: true,
                ..ExecCtx::immediate(received, data_direction::NONE, 0, None)
            };
            return self.reply_remap(cmd.cmd_h, ctx, busy());
        };
        let segment = remap.data_descr;
        let own = {
            let (sessions, _) = self.shared.sessions.lock(&mut self.token);
            copy_inside_this_device(remap.src_sess_h, remap.dst_sess_h, |h| sessions.contains_key(&h))
        };
        let path = self.shared.store.info().copy;
        let bs = u64::from(self.shared.disk.block_size());
        let len = u64::try_from(segment.data_len).unwrap_or(0);
        let overlap = segment.src_lba < segment.dst_lba.saturating_add(len / bs)
            && segment.dst_lba < segment.src_lba.saturating_add(len / bs);
        // A device copy of overlapping ranges has no defined result (NVMe Copy, SCA-1): the
        // copy manager's READ/WRITE pairs do it instead.
        let store_copies = match path {
            CopyPath::None => false,
            CopyPath::Store => true,
            CopyPath::Device => !overlap,
        };
        if !own || !store_copies || segment.data_len <= 0 {
            log::debug!(
                "cmd_h {}: EXTENDED COPY segment {} -> {} ({} bytes) given back to the copy manager ({})",
                cmd.cmd_h,
                segment.src_lba,
                segment.dst_lba,
                segment.data_len,
                if !own {
                    "not inside this device"
                } else {
                    "the store does not copy it"
                }
            );
            self.shared
                .counters
                .remap_leftovers
                .fetch_add(1, Ordering::Relaxed);
            let descrs: Box<[abi::ExtCopyDataDescr]> = if segment.data_len > 0 {
                Box::new([segment])
            } else {
                // Nothing to copy (the core skips empty segments; a kernel that did not):
                // no leftovers, the segment is done.
                Box::new([])
            };
            let reply = abi::ExtCopyReplyRemap {
                remap_descriptors: if descrs.is_empty() {
                    0
                } else {
                    descrs.as_ptr() as u64
                },
                remap_descriptors_len: (descrs.len() * size_of::<abi::ExtCopyDataDescr>()) as u16,
                ..Default::default()
            };
            self.leftovers.push(descrs);
            return self.push_reply(
                ReplyCmd::with_payload(cmd.cmd_h, cmd.subcode, &reply),
                Some(token),
            );
        }
        let plan = self
            .shared
            .disk
            .copy_segment(segment.src_lba, segment.dst_lba, segment.data_len);
        // The remap has no timeout of its own: the EXTENDED COPY's is not passed on, so the
        // default command timeout bounds it (capped like every command's).
        let deadline = received + self.command_timeout(0);
        let ctx = ExecCtx {
            received,
            deadline,
            buffer: None,
            direction: data_direction::NONE,
            bufflen: 0,
            new_pbuf: 0,
            token: Some(token),
            remap: true,
        };
        self.continue_exec(cmd.cmd_h, ctx, plan);
    }

    /// The remap reply of a segment the store copied (or failed to): no leftovers on GOOD,
    /// else the status and sense, which SCST's copy manager makes the EXTENDED COPY's.
    fn reply_remap(&mut self, cmd_h: u32, ctx: ExecCtx, response: Response) {
        if response.status != sam_status::GOOD {
            self.shared.counters.exec_errors.fetch_add(1, Ordering::Relaxed);
        }
        let (sense_len, psense_buffer) = self.keep_sense(&response.sense);
        let reply = abi::ExtCopyReplyRemap {
            status: response.status,
            sense_len,
            psense_buffer,
            ..Default::default()
        };
        self.push_reply(
            ReplyCmd::with_payload(cmd_h, abi::SCST_USER_EXT_COPY_REMAP, &reply),
            ctx.token,
        );
    }

    fn parse(&mut self, cmd: &GetCmd) {
        let parse: abi::ScsiCmdParse = cmd.read_payload();
        let cdb_len = usize::from(parse.cdb_len).min(abi::SCST_MAX_CDB_SIZE);
        let reply = match self.shared.disk.cdb_info(&parse.cdb[..cdb_len]) {
            Ok(info) => ReplyCmd::with_payload(
                cmd.cmd_h,
                cmd.subcode,
                &abi::ParseReply {
                    status: 0,
                    queue_type: parse.queue_type,
                    data_direction: info.direction,
                    cdb_len: 0,
                    lba: info.lba as i64,
                    data_len: info.data_len as i64,
                    bufflen: info.transfer_len as i32,
                    // Keep what SCST set (e.g. LOCAL_CMD), add what the engine knows.
                    op_flags: parse.op_flags | info.op_flags | abi::op_flags::INFO_VALID,
                    out_bufflen: 0,
                    ..Default::default()
                },
            ),
            Err(response) => {
                let (sense_len, psense_buffer) = self.keep_sense(&response.sense);
                ReplyCmd::with_payload(
                    cmd.cmd_h,
                    cmd.subcode,
                    &abi::ParseReplySense {
                        status: response.status,
                        sense_len,
                        psense_buffer,
                        ..Default::default()
                    },
                )
            }
        };
        self.push_reply(reply, None);
    }

    fn alloc_mem(&mut self, cmd: &GetCmd) {
        let alloc: abi::ScsiCmdAllocMem = cmd.read_payload();
        let pbuf = match usize::try_from(alloc.alloc_len) {
            // Once intake is closed no new buffer is handed out: pbuf 0 makes SCST answer BUSY.
            _ if self.shared.drain.is_closed() => 0,
            Ok(len) if len > 0 => match self.shared.buffers.allocate(&mut self.token, len) {
                Some(buffer) => buffer.addr(),
                None => {
                    self.cap_refused();
                    0
                }
            },
            _ => 0,
        };
        if pbuf == 0 {
            // spec §3.4: pbuf 0 makes the kernel answer BUSY; nothing waits.
            self.shared.counters.busy.fetch_add(1, Ordering::Relaxed);
        }
        self.push_reply(
            ReplyCmd::with_payload(cmd.cmd_h, cmd.subcode, &abi::AllocMemReply { pbuf }),
            None,
        );
        // Named so that a refused reply frees it (`free_unattached_buffer`).
        if let Some(meta) = self.reply_tokens.last_mut() {
            meta.new_pbuf = pbuf;
        }
    }

    /// The buffer-memory cap refused an allocation: have SCST return its cached buffers now
    /// rather than at its next purge (a minute or two of BUSY), unless the teardown runs.
    fn cap_refused(&self) {
        if !self.shared.drain.is_closed() {
            self.shared.cap_flush.request(&self.shared.fd);
        }
    }

    /// Full CDB: the inline 16 bytes, borrowed from the EXEC (no copy, no allocation: the
    /// command path's common case), plus GET_EXTENDED_CDB for longer ones (spec §3.9), which
    /// are rare enough to allocate.
    fn cdb<'e>(&self, cmd_h: u32, exec: &'e abi::ScsiCmdExec) -> Result<Cow<'e, [u8]>, Errno> {
        let len = usize::from(exec.cdb_len);
        if len <= abi::SCST_MAX_CDB_SIZE {
            return Ok(Cow::Borrowed(&exec.cdb[..len]));
        }
        let mut cdb = vec![0u8; len];
        cdb[..abi::SCST_MAX_CDB_SIZE].copy_from_slice(&exec.cdb);
        let ext = &mut cdb[abi::SCST_MAX_CDB_SIZE..];
        let arg = abi::GetExtCdb {
            cmd_h,
            _pad: 0,
            ext_cdb_buffer: ext.as_mut_ptr() as u64,
        };
        self.shared.fd.get_extended_cdb(&arg)?;
        Ok(Cow::Owned(cdb))
    }

    fn exec(&mut self, cmd: &GetCmd) {
        // The EXEC's latency starts when the ioctl that fetched it returned.
        let received = self.batch_arrived;
        let exec: abi::ScsiCmdExec = cmd.read_payload();
        let bufflen = exec.bufflen.max(0) as u32;
        let direction = exec.data_direction;
        self.fetch_size.record(bufflen);
        let Some(token) = self.door.admit() else {
            // Intake is stopped (teardown step 1): answered at once, never dropped.
            self.shared
                .counters
                .refused_in_teardown
                .fetch_add(1, Ordering::Relaxed);
            let ctx = ExecCtx::immediate(received, direction, bufflen, None);
            return self.reply_exec(cmd.cmd_h, ctx, busy());
        };
        let (buffer, new_pbuf) = match self.exec_buffer(&exec) {
            Ok(found) => found,
            Err(response) => {
                let ctx = ExecCtx::immediate(received, direction, bufflen, Some(token));
                return self.reply_exec(cmd.cmd_h, ctx, response);
            }
        };
        let cdb = match self.cdb(cmd.cmd_h, &exec) {
            Ok(cdb) => cdb,
            Err(errno) => {
                log::error!("GET_EXTENDED_CDB for cmd_h {} failed: {errno}", cmd.cmd_h);
                let response = self.check_condition(0x04, 0x44, 0x00);
                let mut ctx = ExecCtx::immediate(received, direction, bufflen, Some(token));
                ctx.buffer = buffer;
                ctx.new_pbuf = new_pbuf;
                return self.reply_exec(cmd.cmd_h, ctx, response);
            }
        };
        let writes = matches!(direction, data_direction::WRITE | data_direction::BIDI);
        let data_out = BufferDataOut {
            buffer: buffer.as_ref().filter(|_| writes),
        };
        let plan = self.shared.disk.start(&mut self.token, &cdb, &data_out);
        let deadline = received + self.command_timeout(exec.timeout);
        let ctx = ExecCtx {
            received,
            deadline,
            buffer,
            direction,
            bufflen,
            new_pbuf,
            token: Some(token),
            remap: false,
        };
        self.continue_exec(cmd.cmd_h, ctx, plan);
    }

    /// Find or allocate the EXEC's buffer (spec §3.5): the cached/ALLOC_MEM buffer named by
    /// `pbuf`, or a new one of `alloc_len` for a delayed READ allocation.
    fn exec_buffer(&mut self, exec: &abi::ScsiCmdExec) -> Result<(Option<IoBuffer>, u64), Response> {
        let bufflen = exec.bufflen.max(0) as usize;
        if exec.pbuf != 0 {
            return match self
                .buffer_cache
                .get(&self.shared.buffers, &mut self.token, exec.pbuf)
            {
                Some(pages) => Ok((Some(io_buffer(pages, bufflen)), 0)),
                None => {
                    log::error!(
                        "EXEC names buffer {:#x} that this handler never handed out",
                        exec.pbuf
                    );
                    Err(self.check_condition(0x04, 0x44, 0x00))
                }
            };
        }
        if exec.data_direction == data_direction::NONE || bufflen == 0 {
            return Ok((None, 0));
        }
        if matches!(exec.data_direction, data_direction::WRITE | data_direction::BIDI) {
            // spec §3.5: a WRITE's EXEC comes with its buffer, which already holds the
            // initiator's data (allocation is delayed to EXEC only for READs, §4). pbuf 0 here
            // is a kernel contract violation; a fresh buffer would put zeroes on the medium.
            log::error!(
                "EXEC for a {}-byte WRITE names no buffer (pbuf 0): the kernel broke the scst_user contract; answered HARDWARE ERROR, nothing written",
                bufflen
            );
            return Err(self.check_condition(0x04, 0x44, 0x00));
        }
        let len = (exec.alloc_len.max(0) as usize).max(bufflen);
        match self.shared.buffers.allocate(&mut self.token, len) {
            Some(pages) => {
                let addr = pages.addr();
                Ok((Some(io_buffer(pages, bufflen)), addr))
            }
            None => {
                self.shared.counters.busy.fetch_add(1, Ordering::Relaxed);
                self.cap_refused();
                Err(Response {
                    status: sam_status::TASK_SET_FULL,
                    sense: SenseBytes::new(),
                    data: Vec::new(),
                    data_in_len: 0,
                })
            }
        }
    }

    fn continue_exec(&mut self, cmd_h: u32, ctx: ExecCtx, plan: Plan) {
        let io = match plan {
            Plan::Done(response) => return self.reply_exec(cmd_h, ctx, response),
            Plan::Io(io) => io,
        };
        if self.aborted {
            // The queue was aborted for the teardown: nothing new reaches the device (a
            // command's next store step after an aborted one).
            let response = self.check_condition(0x0b, 0x00, 0x00);
            return self.reply_exec(cmd_h, ctx, response);
        }
        let std::collections::hash_map::Entry::Vacant(slot) = self.inflight.entry(cmd_h) else {
            // SCST reuses a handle only after the reply: a second EXEC with a handle still in
            // the store is a kernel bug. The first keeps its entry and its lease (its request
            // may still be on the device, and its completion must find its own entry: a
            // store tag does not tell the two apart), and the second reaches nothing. The
            // first's completion replies for the handle once more later: the kernel refuses
            // that (ESRCH, consumed, counted) unless it reused the handle meanwhile, a second
            // kernel bug this does not guard against.
            log::error!("cmd_h {cmd_h}: EXEC while an earlier EXEC of that handle is in the store; refused");
            let response = self.check_condition(0x04, 0x44, 0x00);
            return self.reply_exec(cmd_h, ctx, response);
        };
        // The device's reference to the buffer is a lease, released by the completion; granted
        // with the rest of the batch, before the batch reaches the store
        // ([`Worker::grant_leases`]).
        let tag = (u64::from(self.store_steps) << 32) | u64::from(cmd_h);
        self.store_steps = self.store_steps.wrapping_add(1);
        if let Some(buffer) = &ctx.buffer {
            self.to_lease.push((tag, Arc::clone(&buffer.buffer)));
        }
        self.submit.push(StoreRequest {
            tag,
            op: io.op.clone(),
            buffer: ctx.buffer.clone(),
        });
        self.earliest_deadline = Some(
            self.earliest_deadline
                .map_or(ctx.deadline, |earliest| earliest.min(ctx.deadline)),
        );
        slot.insert(Inflight {
            tag,
            io,
            ctx,
            lease: None,
        });
    }

    /// Lease the buffers of the requests queued since the last batch, under one acquisition of
    /// this worker's lease table, before any of them reaches the store. A refused lease (the
    /// pool is being unmapped) takes its request out of the batch: the buffer must not reach
    /// the device, and the command is answered BUSY.
    fn grant_leases(&mut self) {
        if self.to_lease.is_empty() {
            return;
        }
        let mut granted = std::mem::take(&mut self.granted);
        self.shared
            .leases
            .worker(self.index)
            .grant_batch(&mut self.token, &mut self.to_lease, &mut granted);
        for outcome in granted.drain(..) {
            match outcome {
                Ok(lease) => {
                    let cmd_h = lease.id() as u32;
                    match self.inflight.get_mut(&cmd_h) {
                        Some(entry) => entry.lease = Some(lease),
                        // Not reachable (a request is queued with its entry); were it, the
                        // lease stays outstanding (logged by its Drop) rather than end early.
                        None => log::error!("lease for cmd_h {cmd_h} has no command in flight"),
                    }
                }
                Err(refused) => {
                    let cmd_h = refused.id as u32;
                    log::warn!("cmd_h {cmd_h}: {refused}");
                    self.submit.retain(|r| r.tag != refused.id);
                    if let Some(entry) = self.inflight.remove(&cmd_h) {
                        self.reply_exec(cmd_h, entry.ctx, busy());
                    }
                }
            }
        }
        self.granted = granted;
    }

    /// Whether a [`BACKLOG_LOOK`] is due while the store refuses (and take it).
    fn backlog_look_due(&mut self) -> bool {
        let due = self.backlog_look.elapsed() >= BACKLOG_LOOK;
        if due {
            self.backlog_look = Instant::now();
        }
        due
    }

    /// Submit what is queued, reaping after each accepted batch (a reap can queue a command's
    /// next store step, which is submitted in the same call). Reaps at least once. What the
    /// store refuses (its queue is full, or it failed) stays queued in `submit`, the backlog,
    /// and the worker goes back to its loop: deadlines, the store's health, the teardown's
    /// steps, dumps and the heartbeat keep running while the store accepts nothing, and
    /// nothing more is fetched until the backlog is in ([`Worker::run`]). A store that never
    /// takes the backlog again is found by [`Worker::stuck_in_store`]: backlogged commands are
    /// in `inflight` with their deadlines.
    fn flush_submissions(&mut self) {
        loop {
            self.grant_leases();
            if !self.submit.is_empty() {
                if let Err(e) = self.queue.submit(&mut self.token, &mut self.submit) {
                    log::debug!("store queue: {e}; {} requests wait for room", self.submit.len());
                    self.store_refused = true;
                    self.reap_store();
                    return;
                }
            }
            self.store_refused = false;
            self.reap_store();
            if self.submit.is_empty() {
                return;
            }
        }
    }

    /// End backlogged requests (queued, refused by the store, never on the device) with
    /// ABORTED, as the store's own abort ends the ones it holds: all of them (`late_at` None)
    /// or those whose deadline is not after `late_at`. Their leases end with them: the device
    /// never saw their buffers. Returns how many.
    fn abort_backlog(&mut self, late_at: Option<Instant>) -> usize {
        let inflight = &self.inflight;
        let late = |r: &StoreRequest| {
            late_at.is_none_or(|now| {
                inflight
                    .get(&(r.tag as u32))
                    .is_none_or(|f| f.ctx.deadline <= now)
            })
        };
        let before = self.completions.len();
        for request in self.submit.iter().filter(|r| late(r)) {
            self.completions.push(StoreCompletion {
                tag: request.tag,
                status: StoreStatus::Aborted,
            });
        }
        let n = self.completions.len() - before;
        if n > 0 {
            let aborted = &self.completions[before..];
            self.submit.retain(|r| !aborted.iter().any(|c| c.tag == r.tag));
            self.finish_completions();
        }
        n
    }

    /// Reap store completions and move their commands on. Returns how many were reaped.
    fn reap_store(&mut self) -> usize {
        let n = self.queue.reap(&mut self.completions);
        self.store_completions += n as u64;
        self.finish_completions();
        n
    }

    /// Move on the commands whose completions are in `completions` (the store's, or the
    /// backlog's aborted ones), ending their leases under one acquisition of the lease table.
    fn finish_completions(&mut self) {
        // Reuse the completion buffer: no allocation per loop on the I/O path.
        let mut done = std::mem::take(&mut self.completions);
        for completion in done.drain(..) {
            let cmd_h = completion.tag as u32;
            let std::collections::hash_map::Entry::Occupied(step) = self.inflight.entry(cmd_h) else {
                log::error!("store completed unknown tag {:#x}; ignored", completion.tag);
                continue;
            };
            if step.get().tag != completion.tag {
                // An earlier step's tag: the store completed that request twice. Taken for
                // this step's, it would answer the command before this step ran (a READ's data
                // not read yet) and end the lease the device may still use.
                log::error!(
                    "store completed tag {:#x}, an earlier step of cmd_h {cmd_h}, again; ignored",
                    completion.tag
                );
                continue;
            }
            let state = step.remove();
            // The device is done with the buffer: its lease ends with the reap's others, under
            // one acquisition of the lease table below.
            if let Some(lease) = state.lease {
                self.reaped_leases.push(lease);
            }
            let plan = self.shared.disk.finish(&state.io, completion.status);
            self.continue_exec(cmd_h, state.ctx, plan);
        }
        self.completions = done;
        self.shared.leases.worker(self.index).release_batch(
            &mut self.token,
            &mut self.reaped_leases,
            &mut self.released_buffers,
        );
        // The device's references to the buffers go here, outside any lock.
        self.released_buffers.clear();
    }

    fn check_condition(&self, key: u8, asc: u8, ascq: u8) -> Response {
        Response {
            status: sam_status::CHECK_CONDITION,
            sense: self.shared.disk.sense(key, asc, ascq),
            data: Vec::new(),
            data_in_len: 0,
        }
    }

    /// Keep `sense` alive until its reply is consumed, in a spare buffer when there is one;
    /// returns (sense_len, psense_buffer).
    fn keep_sense(&mut self, sense: &[u8]) -> (u8, u64) {
        if sense.is_empty() {
            return (0, 0);
        }
        let sense = &sense[..sense.len().min(abi::SCST_SENSE_BUFFERSIZE)];
        // Sized for the longest sense the engine builds, so a spare never grows.
        let mut kept = self
            .spare_senses
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(crate::scsi::sense::SENSE_MAX));
        kept.clear();
        kept.extend_from_slice(sense);
        let len = kept.len() as u8;
        let addr = kept.as_ptr() as u64;
        self.senses.push(kept);
        (len, addr)
    }

    /// Queue the EXEC's reply; its drain token (in `ctx`) goes with it and drops when the reply
    /// is handed to SCST.
    fn reply_exec(&mut self, cmd_h: u32, ctx: ExecCtx, response: Response) {
        if ctx.remap {
            return self.reply_remap(cmd_h, ctx, response);
        }
        let ExecCtx {
            received,
            direction,
            bufflen,
            buffer,
            new_pbuf,
            token,
            ..
        } = ctx;
        let buffer = buffer.as_ref();
        if response.status != sam_status::GOOD {
            self.shared.counters.exec_errors.fetch_add(1, Ordering::Relaxed);
        }
        if self.shared.drain.is_closed() {
            self.shared
                .counters
                .answered_in_teardown
                .fetch_add(1, Ordering::Relaxed);
        }
        // spec §3.5: resp_data_len only for direction READ, never above bufflen.
        let mut resp_data_len = 0usize;
        if direction == data_direction::READ {
            if let Some(buf) = buffer {
                let engine_data = response.data.len().min(buf.len);
                if engine_data > 0 {
                    buf.write_at(0, &response.data[..engine_data]);
                }
                resp_data_len = response.data_in_len.min(bufflen as usize).min(buf.len);
            }
        }
        if resp_data_len == 0 && new_pbuf != 0 {
            // The kernel ignores a pbuf with no data (spec §3.5): the buffer stays ours to free.
            self.release_buffer(new_pbuf);
        }
        let (figure_direction, bytes) = match direction {
            data_direction::READ => (Direction::Read, resp_data_len as u64),
            data_direction::WRITE | data_direction::BIDI => (
                Direction::Write,
                if response.status == sam_status::GOOD {
                    u64::from(bufflen)
                } else {
                    0
                },
            ),
            _ => (Direction::Other, 0),
        };
        self.figures().answered(figure_direction, bytes);
        let (sense_len, psense_buffer) = self.keep_sense(&response.sense);
        let reply = abi::ExecReply {
            resp_data_len: resp_data_len as i32,
            pbuf: if resp_data_len > 0 { new_pbuf } else { 0 },
            reply_type: abi::exec_reply_type::COMPLETED,
            status: response.status,
            sense_len,
            psense_buffer,
            ..Default::default()
        };
        self.push_reply_timed(
            ReplyCmd::with_payload(cmd_h, abi::SCST_USER_EXEC, &reply),
            token,
            Some(received),
        );
        if let Some(meta) = self.reply_tokens.last_mut() {
            meta.new_pbuf = reply.pbuf;
        }
    }
}

fn io_buffer(buffer: Arc<CmdBuffer>, bufflen: usize) -> IoBuffer {
    IoBuffer::new(buffer, bufflen)
}

/// BUSY, no sense: "try again later" (intake closed, or the pool is being unmapped).
fn busy() -> Response {
    Response {
        status: sam_status::BUSY,
        sense: SenseBytes::new(),
        data: Vec::new(),
        data_in_len: 0,
    }
}

/// Whether an EXT_COPY_REMAP segment from `src_sess_h` to `dst_sess_h` copies inside this
/// device (`attached`: a session handle ATTACHed here and not DETACHed). Both ends must be the
/// copy manager's one tgt_dev for this device: SCST's copy manager gives every designator of a
/// device the tgt_dev of its own LUN of that device (`scst_copy_mgr.c`: `des->desig_tgt_dev =
/// cmd->tgt_dev`), so a copy inside the device names the same handle twice, and it is attached
/// here. Two different handles both attached here cannot both be this device's: one is stale
/// (a session the kernel freed without a DETACH, its address since reused for another device's
/// tgt_dev: spec §3.8, §7.3), and copying inside this device would write the wrong disk and
/// answer GOOD. The copy manager copies such a segment itself.
fn copy_inside_this_device(src_sess_h: u64, dst_sess_h: u64, attached: impl Fn(u64) -> bool) -> bool {
    src_sess_h == dst_sess_h && attached(src_sess_h)
}

#[cfg(test)]
mod copy_tests {
    #[test]
    fn a_copy_is_inside_this_device_only_between_one_attached_handle() {
        let attached = |h: u64| h == 0x10 || h == 0x20;
        assert!(super::copy_inside_this_device(0x10, 0x10, attached));
        // Two attached handles: one is stale, the copy is not this device's to make.
        assert!(!super::copy_inside_this_device(0x10, 0x20, attached));
        assert!(!super::copy_inside_this_device(0x30, 0x30, attached));
        assert!(!super::copy_inside_this_device(0x10, 0x30, attached));
    }
}
