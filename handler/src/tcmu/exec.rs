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
//! device's queue in the log, then the queue's `abort_all`, at most once a second.
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
//! Not here yet: task management beyond logging the notice.

use super::ring::Response;
use super::ring::Ring;
use super::ring::RingEntry;
use super::ring::RingError;
use super::ring::TcmuCommand;
use super::uio::UioError;
use super::uio::UioEvents;
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
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

/// A command's Data-Out read straight from the ring (MODE SELECT, UNMAP parameter lists).
struct RingDataOut<'a> {
    ring: &'a Ring,
    cmd: &'a TcmuCommand,
}

impl DataOut for RingDataOut<'_> {
    fn len(&self) -> usize {
        self.cmd.data_len()
    }

    fn read(&self, offset: usize, out: &mut [u8]) {
        let n = self.ring.read_data(self.cmd, offset, out);
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
}

struct Inflight {
    cmd: TcmuCommand,
    io: IoPlan,
    buffer: Option<IoBuffer>,
    /// The range the command holds until it is answered ([`Disk::range_need`]).
    grant: Option<RangeGrant>,
    received: Instant,
    deadline: Instant,
}

/// A command whose range is busy, waiting for its grant in the mailbox. Its deadline runs.
struct Parked {
    cmd: TcmuCommand,
    io: IoPlan,
    received: Instant,
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

/// The default per-command deadline (the scst_user frontend's `--command-timeout` default).
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves one ring with one disk and one store queue.
pub struct Executor {
    disk: Arc<Disk>,
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
}

impl Executor {
    /// An executor over `disk`, submitting to `queue`, with command buffers from `pool`.
    pub fn new(disk: Arc<Disk>, queue: Box<dyn StoreQueue>, pool: Arc<SgvPool>) -> Self {
        Self {
            disk,
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
        }
    }

    /// Commands answered with a status other than GOOD so far (CHECK CONDITION, TASK SET
    /// FULL, ...); malformed entries the ring refused are counted apart ([`Progress::refused`]).
    pub fn errors(&self) -> u64 {
        self.errors
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
        if self.queue.abort_all() == 0 {
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
                    "  request {tag}: cmd_id {}, age {:?}, deadline {}, op {:?}",
                    f.cmd.cmd_id(),
                    now.duration_since(f.received),
                    if f.deadline <= now { "missed" } else { "pending" },
                    f.io.op
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
            if let Some(fd) = self.queue.notify_fd() {
                let wait = deadline
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(50));
                if let Err(e) = scst_accel_hal::fdio::poll_readable(&[fd], wait) {
                    log::warn!("tcmu drain: waiting for the store: {e}");
                    std::thread::sleep(Duration::from_millis(1));
                }
            } else {
                std::thread::sleep(Duration::from_millis(1));
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
                        sense: Vec::new(),
                        data: Vec::new(),
                        data_in_len: 0,
                    };
                    self.answer(ring, p.cmd, None, &busy);
                    progress.completed += 1;
                }
            }
        }
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
                    let plan = {
                        let data_out = RingDataOut { ring, cmd: &cmd };
                        self.disk.start(token, cmd.cdb(), &data_out)
                    };
                    self.begin(token, ring, cmd, received, plan, &mut progress);
                }
                Ok(Some(RingEntry::TaskManagement(notice))) => {
                    // The kernel has already decided; the listed commands may still complete.
                    log::info!(
                        "tcmu task management {} for {:?}",
                        notice.tmr_type,
                        notice.cmd_ids
                    );
                    progress.task_management += 1;
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
        let ready = {
            let mut fds = vec![events.as_fd()];
            fds.extend(self.queue.notify_fd());
            fds.extend(self.mailbox.wake_fd());
            scst_accel_hal::fdio::poll_readable(&fds, timeout)
                .map_err(|e| StepError::Uio(UioError::Wait(e)))?
        };
        if ready.first().copied().unwrap_or(false) {
            events.take_event().map_err(StepError::Uio)?;
        }
        let served = self.poll(token, ring);
        if ring.take_kick() {
            events.kick().map_err(StepError::Uio)?;
        }
        served.map_err(StepError::Ring)
    }

    fn flush(&mut self, token: &mut StoreToken<'_>, ring: &mut Ring, progress: &mut Progress) {
        loop {
            // Parked commands whose range was released (by this worker or another): cleared
            // before the take, so a grant delivered after it raises the eventfd again.
            self.mailbox.clear_wake();
            while let Some(grant) = self.mailbox.take() {
                match self.parked.remove(&grant.wait_id()) {
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
                let plan = self.disk.finish(&state.io, completion.status);
                self.advance(
                    token,
                    ring,
                    state.cmd,
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
                        self.parked.insert(id, Parked { cmd, io, received });
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
                if let Some(grant) = grant {
                    self.disk.ranges().release(token, grant);
                }
                return;
            }
            Plan::Io(io) => io,
        };

        let buffer = match buffer {
            Some(b) => Some(b),
            None if io.op.uses_buffer() => match self.buffer_for(token, ring, &cmd, &io.op) {
                Some(b) => Some(b),
                None => {
                    let busy = scsi::Response {
                        status: sam_status::TASK_SET_FULL,
                        sense: Vec::new(),
                        data: Vec::new(),
                        data_in_len: 0,
                    };
                    self.answer(ring, cmd, None, &busy);
                    progress.completed += 1;
                    if let Some(grant) = grant {
                        self.disk.ranges().release(token, grant);
                    }
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
                cmd,
                io,
                buffer,
                grant,
                received,
                deadline: received + self.command_timeout,
            },
        );
    }

    /// A command buffer for `op`, holding the command's Data-Out when the op writes it to the
    /// medium or compares against it. `None` when the pool is exhausted.
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
        if matches!(
            op,
            StoreOp::Write { .. } | StoreOp::WriteSame { .. } | StoreOp::Compare { .. }
        ) {
            // One copy, data area to command buffer (the kernel copied the initiator's data in).
            ring.data_out_pieces(cmd, |at, bytes| buffer.write_at(at, bytes));
        }
        Some(buffer)
    }

    /// Put the Data-In into the ring and complete the command.
    fn answer(
        &mut self,
        ring: &mut Ring,
        cmd: TcmuCommand,
        buffer: Option<&IoBuffer>,
        response: &scsi::Response,
    ) {
        let data_in = if !response.data.is_empty() {
            ring.write_data(&cmd, 0, &response.data)
        } else if let (Some(buffer), true) = (buffer, response.data_in_len > 0) {
            // One copy, command buffer to data area (the kernel copies it on to the initiator).
            let len = response.data_in_len.min(buffer.len);
            ring.data_in_pieces(&cmd, len, |at, bytes| buffer.read_at(at, bytes))
        } else {
            0
        };
        // A short Data-In (engine data shorter than the allocation length) is reported so the
        // kernel sets the residual; a full one or none needs nothing.
        let buffer_len = if cmd.bidi_in().is_empty() {
            cmd.data_len()
        } else {
            cmd.bidi_in().iter().map(|s| s.len).sum()
        };
        let read_len = (data_in > 0 && data_in < buffer_len).then_some(data_in as u32);
        if response.status != sam_status::GOOD {
            self.errors += 1;
        }
        let rsp = Response {
            status: response.status,
            sense: &response.sense,
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

    fn rig() -> Rig {
        let store = RamStore::new(BS, 2048, 256);
        let disk = Arc::new(Disk::new(DiskConfig::for_store(&store.info())));
        let queue = store.open_queue().expect("queue");
        let pool = Arc::new(SgvPool::new(None, None, 1 << 24));
        let sim = SimKernel::new(SimConfig {
            cmdr_size: 8192,
            data_size: 256 * 1024,
            flags: crate::tcmu::abi::mailbox_flags::CAP_READ_LEN,
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

    /// A store queue that holds every request until the test releases it or `abort_all`
    /// ends it (a device that stalls).
    struct HeldQueue {
        held: Arc<std::sync::Mutex<Vec<StoreRequest>>>,
        done: Vec<StoreCompletion>,
        /// Whether `abort_all` works (a device that cannot be stopped when false).
        abortable: bool,
        aborts: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl StoreQueue for HeldQueue {
        fn submit(
            &mut self,
            _token: &mut StoreToken<'_>,
            batch: &mut Vec<StoreRequest>,
        ) -> Result<(), crate::store::StoreError> {
            self.held.lock().expect("held").append(batch);
            Ok(())
        }

        fn reap(&mut self, out: &mut Vec<StoreCompletion>) -> usize {
            let n = self.done.len();
            out.append(&mut self.done);
            n
        }

        fn notify_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
            None
        }

        fn in_flight(&self) -> usize {
            self.held.lock().expect("held").len() + self.done.len()
        }

        fn abort_all(&mut self) -> usize {
            self.aborts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if !self.abortable {
                return 0;
            }
            let held: Vec<StoreRequest> = std::mem::take(&mut *self.held.lock().expect("held"));
            let n = held.len();
            self.done.extend(held.into_iter().map(|r| StoreCompletion {
                tag: r.tag,
                status: crate::store::StoreStatus::Aborted,
            }));
            n
        }
    }

    struct HeldRig {
        sim: SimKernel,
        ring: Ring,
        exec: Executor,
        aborts: Arc<std::sync::atomic::AtomicUsize>,
    }

    fn held_rig(abortable: bool) -> HeldRig {
        let store = RamStore::new(BS, 2048, 256);
        let disk = Arc::new(Disk::new(DiskConfig::for_store(&store.info())));
        let aborts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let queue = HeldQueue {
            held: Arc::default(),
            done: Vec::new(),
            abortable,
            aborts: Arc::clone(&aborts),
        };
        let pool = Arc::new(SgvPool::new(None, None, 1 << 24));
        let sim = SimKernel::new(SimConfig {
            cmdr_size: 8192,
            data_size: 256 * 1024,
            flags: crate::tcmu::abi::mailbox_flags::CAP_READ_LEN,
        });
        let ring = Ring::attach(sim.region().clone()).expect("attach");
        HeldRig {
            sim,
            ring,
            exec: Executor::new(disk, Box::new(queue), pool),
            aborts,
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
    }

    fn socket_events() -> (UioEvents, std::os::unix::net::UnixStream) {
        let (ours, kernel) = std::os::unix::net::UnixStream::pair().expect("pair");
        kernel.set_nonblocking(true).expect("nonblocking");
        (UioEvents::new(std::os::fd::OwnedFd::from(ours)), kernel)
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
}
