//! The controller's worker thread: takes commands from the submission queues the doorbells
//! announced, fetches each 64-byte entry through the IOMMU, executes it and posts its
//! completion with the phase tag (§4.6), then raises the completion queue's MSI-X vector (an
//! I/O worker once for the completions of commands it takes back to back: [`IrqBatch`]).
//!
//! One worker per submission queue (worker w serves SQ w; worker 0, the admin queue's, also
//! completes asynchronous events), as a controller with per-queue engines: the queues of
//! different host threads are served side by side, each woken by its own SQ doorbell only. An
//! I/O SQ's commands run in the thread that writes its tail doorbell instead when that needs no
//! wait ([`run_inline`]): it takes them as the worker would (marked busy under the lock, a CQ
//! slot promised), so worker and writer never hold one SQ's command at once.
//! The controller state (registers and queues) stays under one lock, never held across DMA.
//! Before every DMA step a worker checks that its command is still valid (same epoch: no reset
//! since, device present, not shutting down); otherwise it drops the command with no
//! completion. A controller reset clears CSTS.RDY only once every worker has let go
//! ([`ControllerState::release`]), so RDY = 0 proves no DMA follows; deleting an SQ waits for
//! its worker's command the same way.
//!
//! [`ControllerState::release`]: super::state::ControllerState::release

use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use zerocopy::FromBytes;
use zerocopy::IntoBytes;

use super::admin;
use super::controller::Counters;
use super::controller::Shared;
use super::controller::StateGuard;
use super::controller::Token;
use super::fault::Decision;
use super::io;
use super::irq_batch::IrqBatch;
use super::prp::PrpScratch;
use super::spec::nvm;
use super::spec::status;
use super::spec::Cqe;
use super::spec::Sqe;
use super::spec::Status;
use super::spec::CQE_BYTES;
use super::spec::SQE_BYTES;
use super::state::Job;
use super::state::Work;

/// Longest single wait: stop flags are re-checked at least this often.
const IDLE_WAIT: Duration = Duration::from_millis(50);
/// Most commands a doorbell's writer executes in one write ([`run_inline`]) before it hands
/// the rest to the SQ's worker thread: a writer is not kept by another thread's stream.
const INLINE_BUDGET: u16 = 64;

/// Why a command produced no completion of its own.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// A reset, device loss or shutdown took the command away: post nothing.
    Abandoned,
    /// Complete with this error status (dword 0 = 0).
    Status(Status),
}

impl From<Status> for Failure {
    fn from(status: Status) -> Self {
        Failure::Status(status)
    }
}

/// A command's successful result.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Reply {
    /// Complete with success and this dword 0.
    Done(u32),
    /// Post nothing now (a held Asynchronous Event Request).
    Held,
}

/// What a command handler returns.
pub(crate) type CmdResult = Result<Reply, Failure>;

/// A command being executed: the shared controller plus the job, for checked DMA. Its methods
/// that lock take the worker's token (`&mut Token`): a guard they return borrows it, so the
/// compiler refuses a DMA or a second lock while the state is held.
pub(crate) struct Exec<'a> {
    pub shared: &'a Shared,
    pub job: Job,
    /// The worker's pending interrupt ([`IrqBatch`]).
    pub irq: &'a IrqBatch,
    /// The worker's list of PRP pieces, lent to one command at a time ([`super::prp::pieces`]).
    pub prp: &'a PrpScratch,
    /// Executed by a doorbell's writer ([`run_inline`]), which must never wait.
    pub inline: bool,
}

impl Exec<'_> {
    /// Whether the job is still valid under `st`.
    fn valid(&self, st: &StateGuard<'_>) -> bool {
        !self.shared.gone() && !self.shared.stopping() && st.epoch == self.job.epoch
    }

    /// The controller state, if the job is still valid.
    pub(crate) fn lock_valid<'t>(&'t self, token: &'t mut Token<'_>) -> Result<StateGuard<'t>, Failure> {
        let st = self.shared.lock(token);
        if self.valid(&st) {
            Ok(st)
        } else {
            Err(Failure::Abandoned)
        }
    }

    /// Abandon unless the job is still valid. Before every DMA step, so without the lock:
    /// the epoch is published by every enable and reset. A reset that begins right after
    /// this check cannot make the step unsafe: RDY reads 0 (and a function reset or an SQ
    /// deletion returns) only once this worker has let go of its command, after the step.
    pub(crate) fn checkpoint(&self, _token: &mut Token<'_>) -> Result<(), Failure> {
        if !self.shared.gone() && !self.shared.stopping() && self.shared.epoch() == self.job.epoch {
            Ok(())
        } else {
            Err(Failure::Abandoned)
        }
    }

    /// Device read of host memory; an IOMMU fault (recorded by the IOMMU) is a Data Transfer
    /// Error.
    pub(crate) fn dma_read(&self, token: &mut Token<'_>, iova: u64, out: &mut [u8]) -> Result<(), Failure> {
        self.checkpoint(token)?;
        self.shared
            .iommu
            .dma_read(iova, out)
            .map_err(|_| Failure::Status(status::DATA_TRANSFER_ERROR))
    }

    /// Device write to host memory; an IOMMU fault is a Data Transfer Error.
    pub(crate) fn dma_write(&self, token: &mut Token<'_>, iova: u64, data: &[u8]) -> Result<(), Failure> {
        self.checkpoint(token)?;
        self.shared
            .iommu
            .dma_write(iova, data)
            .map_err(|_| Failure::Status(status::DATA_TRANSFER_ERROR))
    }

    /// Device write to host memory in pieces that land in order, each visible before the next
    /// (one hold of the IOMMU's table for all: [`Iommu::dma_write_ordered`]); every piece is
    /// checked first, so a fault writes none. An IOMMU fault is a Data Transfer Error.
    ///
    /// [`Iommu::dma_write_ordered`]: scst_accel_hal::sim::Iommu::dma_write_ordered
    pub(crate) fn dma_write_ordered(
        &self,
        token: &mut Token<'_>,
        pieces: &[(u64, &[u8])],
    ) -> Result<(), Failure> {
        self.checkpoint(token)?;
        self.shared
            .iommu
            .dma_write_ordered(pieces)
            .map_err(|_| Failure::Status(status::DATA_TRANSFER_ERROR))
    }

    /// Wait (bounded by [`IDLE_WAIT`]) for a worker to let go of a command, with `st`
    /// released meanwhile; the state back if the job is still valid.
    pub(crate) fn wait_valid<'t>(&self, st: StateGuard<'t>) -> Result<StateGuard<'t>, Failure> {
        let st = self.shared.wait(st, IDLE_WAIT);
        if self.valid(&st) {
            Ok(st)
        } else {
            Err(Failure::Abandoned)
        }
    }

    /// Wait until `until`, abandoning the command if it becomes invalid meanwhile.
    fn pause(&self, token: &mut Token<'_>, until: Instant) -> Result<(), Failure> {
        self.irq.flush(self.shared);
        loop {
            self.checkpoint(token)?;
            let now = Instant::now();
            if now >= until {
                return Ok(());
            }
            self.shared.park((until - now).min(IDLE_WAIT));
        }
    }
}

/// Body of worker `w`'s thread (SQ w): runs until the SimDevice shuts down.
pub(crate) fn run(shared: Arc<Shared>, w: usize) {
    // Before the first look at the state: a doorbell written from now on unparks this thread.
    shared.register_worker(w);
    let mut token = Token::root();
    let irq = IrqBatch::new(&shared, w);
    let prp = PrpScratch::default();
    log::debug!("{}: NVMe worker {w} started", shared.id);
    while let Some(work) = next_work(&shared, &mut token, w, &irq) {
        match work {
            Work::Command(job) => {
                let exec = Exec {
                    shared: &shared,
                    job,
                    irq: &irq,
                    prp: &prp,
                    inline: false,
                };
                // A worker thread waits where it must: it never gives a command back.
                let _ = command(&exec, &mut token);
            }
            Work::Event { epoch, cid, dw0 } => {
                let job = Job {
                    epoch,
                    sqid: 0,
                    index: 0,
                    sq_base: 0,
                    cqid: 0,
                    sqhd: 0,
                };
                // The SQ head to report is the admin SQ's current head.
                let sqhd = shared.lock(&mut token).sqs[0].map_or(0, |sq| sq.head);
                let exec = Exec {
                    shared: &shared,
                    job: Job { sqhd, ..job },
                    irq: &irq,
                    prp: &prp,
                    inline: false,
                };
                let _ = post(&exec, &mut token, cid, dw0, Status::SUCCESS);
            }
        }
        shared.lock(&mut token).release(w);
        // Letting go is news for a reset or a queue deletion waiting for it, and (a slot
        // promised and not posted is free again) for a worker stalled on a full CQ; the
        // other workers wait for their own doorbells.
        shared.released();
        irq.flush_if_held(&shared);
    }
    log::debug!("{}: NVMe worker {w} stopped", shared.id);
}

thread_local! {
    /// The PRP list of the commands this thread executes as a doorbell's writer
    /// ([`run_inline`]), kept from one doorbell to the next as a worker thread keeps its own.
    static INLINE_PRP: PrpScratch = PrpScratch::default();
}

/// Execute I/O SQ `w`'s waiting commands in the thread that wrote its tail doorbell, as its
/// worker thread would (the same checks, DMA through the IOMMU model, completions, interrupts
/// batched the same way and raised before the write returns), when that needs no wait: no
/// fault standing, the writer holding no checked lock (no DMA is started under a lock), the
/// worker idle and CQ room for each command (promised as it is taken). A controller may
/// complete a command any time after its doorbell; a real one costs the
/// host no CPU, while the hand-off to a worker thread cost it two context switches per
/// doorbell, which `bench` then measured as the NVMe engine's. The admin queue is always its
/// worker's (asynchronous events, and admin commands that wait for I/O queues to drain). The
/// writer takes every waiting command the CQ has room for at once (a controller fetching a
/// burst of entries) and fetches them in one IOMMU access ([`run_burst`]): one hold of the
/// state takes a burst and releases the one before.
///
/// `false` when the worker thread must look (the caller wakes it): the conditions above
/// unmet, a fused operation whose second needs CQ room not there yet (given back untouched),
/// or more than [`INLINE_BUDGET`] commands.
pub(crate) fn run_inline(shared: &Shared, w: usize) -> bool {
    if w == 0 || shared.faults_standing() || !scst_accel_hal::locks::no_checked_lock_held() {
        return false;
    }
    let mut token = Token::root();
    let irq = IrqBatch::new(shared, w);
    let handled = INLINE_PRP.with(|prp| {
        let mut st = shared.lock(&mut token);
        let mut released = false;
        let mut budget = INLINE_BUDGET;
        loop {
            let burst = if budget > 0 {
                inline_take(shared, &mut st, w, budget)
            } else {
                None
            };
            let drained = st.sq_drained(w);
            drop(st);
            if released {
                // As a worker thread's release: news for a reset, an SQ deletion or a worker
                // stalled on a full CQ.
                shared.released();
            }
            // Nothing waiting (true), or work the writer must not take (false).
            let Some((first, count, sq_size)) = burst else {
                return budget > 0 && drained;
            };
            let ran = run_burst(shared, &irq, prp, &mut token, first, count, sq_size);
            st = shared.lock(&mut token);
            if let Some(job) = ran.given_back {
                st.give_back(w, &job);
                drop(st);
                // Fetched again by the worker: counted once.
                shared
                    .stats
                    .commands
                    .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                Counters::add(&shared.stats.fused_given_back);
                shared.released();
                return false;
            }
            // Released and the next burst taken in one hold of the state.
            st.release(w);
            released = true;
            budget = budget.saturating_sub(ran.executed.max(1));
        }
    });
    irq.flush(shared);
    handled
}

/// The commands at the head of SQ `w` for a doorbell's writer, `max` at most, taken
/// ([`ControllerState::take_burst`]: the worker marked busy, a CQ slot promised for each), if
/// the writer may run them: the first's job, the count and the SQ's size.
///
/// [`ControllerState::take_burst`]: super::state::ControllerState::take_burst
fn inline_take(shared: &Shared, st: &mut StateGuard<'_>, w: usize, max: u16) -> Option<(Job, u16, u16)> {
    if shared.gone() || shared.stopping() || shared.faults_standing() {
        return None;
    }
    st.take_burst(w, max)
}

/// What a doorbell's writer did with a burst ([`run_burst`]).
struct BurstRun {
    /// Commands executed (completed, failed or abandoned).
    executed: u16,
    /// A fused operation's first, untouched, to give back to the SQ (its second needs CQ room
    /// not there yet: executing it would have meant waiting).
    given_back: Option<Job>,
}

/// Fetch the `count` commands a writer took from `first` on in one IOMMU access (the first
/// entry that faults ends the burst), and execute them in order as the worker would, each
/// through [`execute`]. A fused operation runs as the worker runs it: its first at the head of
/// a burst of its own (the first takes its second from the SQ itself), so a burst ends before
/// it, and the entries after the burst's end go back to the SQ untouched
/// ([`ControllerState::return_burst_tail`]). An entry that cannot be fetched sets CSTS.CFS, as
/// [`fetch`] does, once the commands before it are done.
///
/// [`ControllerState::return_burst_tail`]: super::state::ControllerState::return_burst_tail
fn run_burst(
    shared: &Shared,
    irq: &IrqBatch,
    prp: &PrpScratch,
    token: &mut Token<'_>,
    first: Job,
    count: u16,
    sq_size: u16,
) -> BurstRun {
    let exec_of = |job| Exec {
        shared,
        job,
        irq,
        prp,
        inline: true,
    };
    let mut run = BurstRun {
        executed: 0,
        given_back: None,
    };
    if exec_of(first).checkpoint(token).is_err() {
        return run;
    }
    let mut raw = [[0u8; SQE_BYTES as usize]; INLINE_BUDGET as usize];
    let entries = &mut raw[..usize::from(count)];
    let fetched = shared.iommu.dma_batch_under(&mut Token::root(), |batch| {
        for (n, entry) in (0..count).zip(entries.iter_mut()) {
            let job = first.nth(n, sq_size);
            if batch
                .read(job.sq_base + u64::from(job.index) * SQE_BYTES, entry)
                .is_err()
            {
                return n;
            }
        }
        count
    });
    let parsed = |n: u16| Sqe::read_from_bytes(&raw[usize::from(n)]).ok();
    let fuses = shared.config.compare_write_max_blocks > 0;
    let fused_at = (0..fetched).find(|&n| fuses && parsed(n).is_some_and(|sqe| sqe.fuse() == FUSE_FIRST));
    let kept = match fused_at {
        Some(0) => 1,
        Some(n) => n,
        None => fetched,
    };
    if kept < count {
        let w = usize::from(first.sqid);
        let end = (first.index + count) % sq_size;
        shared
            .lock(token)
            .return_burst_tail(w, &first.nth(kept, sq_size), end, count - kept);
    }
    for n in 0..kept {
        let exec = exec_of(first.nth(n, sq_size));
        // Abandoned (a reset, device loss, shutdown): the rest with it, uncounted, as `fetch`
        // counts only a command whose check passed.
        let (Some(sqe), Ok(())) = (parsed(n), exec.checkpoint(token)) else {
            return run;
        };
        Counters::add(&shared.stats.commands);
        run.executed += 1;
        if execute(&exec, token, &sqe) == Taken::GiveBack {
            run.given_back = Some(exec.job);
            return run;
        }
        irq.flush_if_held(shared);
    }
    // The entry that could not be fetched ended the burst (not a fused first at its head,
    // whose second's fetch is its own).
    if fused_at.is_none() && fetched < count {
        let job = first.nth(fetched, sq_size);
        // No command identifier to complete with: CSTS.CFS (§3.1.6), as `fetch` sets it.
        fatal(
            &exec_of(job),
            token,
            &format!("cannot fetch SQ {} entry {}", job.sqid, job.index),
        );
    }
    run
}

/// Wait for worker `w`'s work; `None` at shutdown. Marks the worker busy. Before it sleeps it
/// raises the interrupt it owes (`irq`).
fn next_work(shared: &Shared, token: &mut Token<'_>, w: usize, irq: &IrqBatch) -> Option<Work> {
    loop {
        if shared.stopping() {
            return None;
        }
        if !shared.gone() {
            // Before the look: a doorbell counted after this is seen by `mark_stalled`.
            let seen = shared.doorbells();
            let mut st = shared.lock(token);
            if let Some(work) = st.next_work(w) {
                return Some(work);
            }
            let stalled = st.stalled(w);
            drop(st);
            // A worker stalled on a full CQ is woken by that CQ's head doorbell; the flag is
            // published before it compares the doorbell count with `seen`, so none is missed.
            if shared.mark_stalled(w, stalled, seen) {
                continue;
            }
        }
        // Every change that makes work (its SQ's doorbell, a CQ head doorbell while stalled,
        // a CC write, a fault, a reset, shutdown) unparks this thread after making it, so one
        // found nothing above is not slept over.
        irq.flush(shared);
        shared.park(IDLE_WAIT);
    }
}

/// FUSE field values (CDW0 bits 9:8, §4.12).
const FUSE_NORMAL: u32 = 0;
const FUSE_FIRST: u32 = 1;
const FUSE_SECOND: u32 = 2;

/// Fetch the job's 64-byte entry through the IOMMU; `None` when the command is abandoned or
/// the fetch faulted (then the controller is fatal: there is no CID to complete with).
fn fetch(exec: &Exec<'_>, token: &mut Token<'_>) -> Option<Sqe> {
    let job = exec.job;
    let mut raw = [0u8; SQE_BYTES as usize];
    let slot = job.sq_base + u64::from(job.index) * SQE_BYTES;
    match exec.dma_read(token, slot, &mut raw) {
        Ok(()) => {}
        Err(Failure::Abandoned) => return None,
        Err(Failure::Status(_)) => {
            // No command identifier to complete with: a fatal error the controller cannot
            // report in a completion queue, which is what CSTS.CFS means (§3.1.6).
            fatal(
                exec,
                token,
                &format!("cannot fetch SQ {} entry {}", job.sqid, job.index),
            );
            return None;
        }
    }
    Counters::add(&exec.shared.stats.commands);
    Sqe::read_from_bytes(&raw).ok()
}

/// What became of a command a doorbell's writer took ([`run_inline`]).
#[derive(Debug, PartialEq, Eq)]
#[must_use]
enum Taken {
    /// Executed (completed, failed or abandoned), as a worker thread would have.
    Done,
    /// Untouched, to be given back to the SQ: executing it would have meant waiting (the CQ
    /// room a fused operation's second command needs).
    GiveBack,
}

/// Fetch, execute and complete one command (or, for the first of a fused operation, both).
fn command(exec: &Exec<'_>, token: &mut Token<'_>) -> Taken {
    let Some(sqe) = fetch(exec, token) else {
        return Taken::Done;
    };
    execute(exec, token, &sqe)
}

/// Execute and complete the command `sqe` fetched for `exec`'s job (or, for the first of a
/// fused operation, both).
fn execute(exec: &Exec<'_>, token: &mut Token<'_>, sqe: &Sqe) -> Taken {
    let (shared, job) = (exec.shared, exec.job);
    let io_command = job.sqid != 0;
    // Inline, the writer saw no fault standing before it took the command: the verdict is the
    // default one, as for any command taken before a fault is injected (`Shared::decide`);
    // so it never pauses here.
    let plan = if exec.inline {
        Decision::default()
    } else {
        shared.decide(token, io_command, io_command && sqe.opcode() == nvm::READ)
    };
    if plan.latency_micros > 0
        && exec
            .pause(token, Instant::now() + Duration::from_micros(plan.latency_micros))
            .is_err()
    {
        return Taken::Done;
    }
    let fuses = io_command && shared.config.compare_write_max_blocks > 0;
    let result = match sqe.fuse() {
        FUSE_FIRST if fuses => return fused(exec, token, sqe, plan.never_complete),
        // A second without a first before it (a first takes its second with it).
        FUSE_SECOND if fuses => Err(Failure::Status(status::ABORTED_MISSING_FUSED)),
        FUSE_NORMAL if io_command => match plan.status {
            Some((sct, sc)) => Err(Failure::Status(Status::injected(sct, sc))),
            None => io::execute(exec, token, sqe, plan.media_error),
        },
        FUSE_NORMAL => admin::execute(exec, token, sqe),
        // Fused operations where the controller reports none (FUSES = 0), and the reserved 11b.
        _ => Err(Failure::Status(status::INVALID_FIELD)),
    };
    complete(exec, token, sqe, result, plan.never_complete);
    Taken::Done
}

/// Post a command's completion, unless it was abandoned, held, or its completion is to be
/// dropped (injected fault).
fn complete(exec: &Exec<'_>, token: &mut Token<'_>, sqe: &Sqe, result: CmdResult, never_complete: bool) {
    let (dw0, status) = match result {
        Ok(Reply::Done(dw0)) => (dw0, Status::SUCCESS),
        Ok(Reply::Held) | Err(Failure::Abandoned) => return,
        Err(Failure::Status(status)) => (0, status),
    };
    if never_complete {
        log::debug!(
            "{}: SQ {} CID {}: completion dropped (injected)",
            exec.shared.id,
            exec.job.sqid,
            sqe.cid()
        );
        return;
    }
    let _ = post(exec, token, sqe.cid(), dw0, status);
}

/// A fused operation (§4.12) whose first command `first` this worker holds: take the next
/// entry of the SQ with it and execute the two as one ([`io::fused_compare_write`]), each
/// completing with its own status. The host must have made both available with one doorbell
/// write; when the next entry is not there, or is not the second of a fused operation, the
/// first completes as Command Aborted due to Missing Fused Command (and an entry that is not a
/// second runs as the ordinary command it is).
fn fused(exec: &Exec<'_>, token: &mut Token<'_>, first: &Sqe, never_complete: bool) -> Taken {
    // The wait for the second's CQ slot below may need the host to reap.
    exec.irq.flush(exec.shared);
    let w = usize::from(exec.job.sqid);
    let second_job = {
        let Ok(mut st) = exec.lock_valid(token) else {
            return Taken::Done;
        };
        // A worker may wait below for a CQ head doorbell: counted before its first look, under
        // the lock, so that doorbell notifies it (`Shared::ring`); a writer never waits.
        let _waiting = (!exec.inline).then(|| FusedWait::new(exec.shared));
        loop {
            match st.take_fused_second(w, &exec.job) {
                Ok(job) => break Some(job),
                Err(false) => break None,
                // A doorbell's writer may be the host that would free the room: it gives
                // the first back, for the worker thread to wait with.
                Err(true) if exec.inline => return Taken::GiveBack,
                // No CQ room for a second entry: bounded waits, each re-checking that the
                // command is still valid (a reset or shutdown abandons it).
                Err(true) => match exec.wait_valid(st) {
                    Ok(again) => st = again,
                    Err(_) => return Taken::Done,
                },
            }
        }
    };
    let missing = || Err(Failure::Status(status::ABORTED_MISSING_FUSED));
    let Some(second_job) = second_job else {
        complete(exec, token, first, missing(), never_complete);
        return Taken::Done;
    };
    let second_exec = Exec {
        job: second_job,
        ..*exec
    };
    let Some(second) = fetch(&second_exec, token) else {
        return Taken::Done;
    };
    if second.fuse() != FUSE_SECOND {
        complete(exec, token, first, missing(), never_complete);
        let result = match second.fuse() {
            FUSE_NORMAL => io::execute(&second_exec, token, &second, false),
            FUSE_FIRST => missing(), // two firsts in a row: this one has no second either
            _ => Err(Failure::Status(status::INVALID_FIELD)),
        };
        complete(&second_exec, token, &second, result, never_complete);
        return Taken::Done;
    }
    let (first_result, second_result) = io::fused_compare_write(exec, token, first, &second);
    complete(exec, token, first, first_result, never_complete);
    complete(&second_exec, token, &second, second_result, never_complete);
    Taken::Done
}

/// A worker counted among those that may wait for a fused second's CQ room, until dropped.
struct FusedWait<'a>(&'a Shared);

impl<'a> FusedWait<'a> {
    fn new(shared: &'a Shared) -> Self {
        shared.fused_wait(true);
        Self(shared)
    }
}

impl Drop for FusedWait<'_> {
    fn drop(&mut self) {
        self.0.fused_wait(false);
    }
}

/// Post a completion on the job's CQ (§4.6): claim the slot (advance the tail, flipping the
/// phase on wrap) before the entry becomes visible, so a host that consumes it at once and
/// writes the CQ head doorbell never gets ahead of the controller's own tail; then write the
/// body first and the dword holding the phase tag last, so a host that sees the new phase sees
/// the whole entry; raise the vector if the CQ has interrupts enabled (an I/O worker's raise
/// may be shared with its next completions: [`IrqBatch`]).
pub(crate) fn post(
    exec: &Exec<'_>,
    token: &mut Token<'_>,
    cid: u16,
    dw0: u32,
    status: Status,
) -> Result<(), Failure> {
    let job = exec.job;
    let (slot_addr, phase, sqid, vector) = {
        let mut st = exec.lock_valid(token)?;
        // The slot promised when the command was taken becomes this entry.
        st.unreserve(usize::from(job.sqid));
        let Some(cq) = st.cqs[usize::from(job.cqid)].as_mut() else {
            return Err(Failure::Abandoned);
        };
        let claimed = (cq.base + u64::from(cq.tail) * CQE_BYTES, cq.phase, job.sqid);
        cq.tail = (cq.tail + 1) % cq.size;
        if cq.tail == 0 {
            cq.phase = !cq.phase;
        }
        (
            claimed.0,
            claimed.1,
            claimed.2,
            cq.ien.then_some(u32::from(cq.vector)),
        )
    };
    let entry = Cqe {
        dw0,
        dw1: 0,
        sqhd: job.sqhd,
        sqid,
        cid,
        status: status.field(phase),
    };
    let bytes = entry.as_bytes();
    // The entry's first 12 bytes, then the dword with the phase tag that publishes it.
    let written = exec.dma_write_ordered(
        token,
        &[(slot_addr, &bytes[..12]), (slot_addr + 12, &bytes[12..])],
    );
    match written {
        Ok(()) => {}
        Err(Failure::Status(_)) => {
            fatal(exec, token, &format!("cannot post to CQ {}", job.cqid));
            return Err(Failure::Abandoned);
        }
        Err(e) => return Err(e),
    }
    Counters::add(&exec.shared.stats.completions);
    if exec.inline {
        Counters::add(&exec.shared.stats.inline_completions);
    }
    if let Some(vector) = vector {
        exec.irq.posted(exec.shared, vector, job.epoch);
    }
    Ok(())
}

/// Set CSTS.CFS: the controller stops processing until a controller reset.
fn fatal(exec: &Exec<'_>, token: &mut Token<'_>, what: &str) {
    if let Ok(mut st) = exec.lock_valid(token) {
        log::error!(
            "{}: {what}: IOMMU fault; controller fatal status (CSTS.CFS) set",
            exec.shared.id
        );
        st.cfs = true;
    }
}
