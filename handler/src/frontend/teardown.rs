//! The frontend's teardown (architecture.md §5, issue 4 §3): ONE sequence for every trigger
//! ([`TeardownTrigger`]: a request, the store failing, SCST closing the device, a worker
//! failing), run by [`Frontend::teardown`] on the owner's thread, each step bounded and logged
//! with its counts. It runs on the loom-checked primitives of [`crate::teardown`]: the intake
//! gate and in-flight count are the frontend's [`crate::teardown::Drain`], the device's hold on
//! command buffers its [`crate::teardown::LeaseTable`].
//!
//! 1. **stop intake** ([`Drain::close`](crate::teardown::Drain::close)): every later EXEC is
//!    refused at the gate and answered BUSY, ALLOC_MEM gets no buffer (SCST answers BUSY); never
//!    dropped. Returned buffers, sessions and task management keep being honoured.
//! 2. **drain** ([`Drain::wait_idle`](crate::teardown::Drain::wait_idle), bounded by
//!    [`TeardownConfig::drain`]): wait for every accepted EXEC's reply to be handed to SCST. Its
//!    [`Remaining`](crate::teardown::Remaining) feeds step 3.
//! 3. **abort** (only if commands remain or device leases are outstanding; bounded by
//!    [`TeardownConfig::abort`]): the escalation dump is logged (per-command states and the
//!    store's registers and rings, [`Frontend::dump`]); each worker calls its queue's
//!    `abort_all` once (the store stops the queue and resets the function if the engine does not
//!    go idle: the proof that no more DMA happens), answers the aborted commands (ABORTED
//!    COMMAND) and reports whether its queue is empty afterwards. Only if every worker proved
//!    it are the leases still outstanding revoked
//!    ([`LeaseTable::revoke_all`](crate::teardown::LeaseTable::revoke_all)); then the drain and
//!    the leases are waited for, within what is left of the bound.
//! 4. **return buffers**: no FLUSH_CACHE. It would suspend all of SCST's activity, every LUN's,
//!    until every command in flight anywhere is answered (up to the kernel's 90 s, spec §3.6),
//!    and while it runs the fd cannot close: a slow command of another handler would hold this
//!    teardown, and a teardown that left with the flush still in the kernel would leave its own
//!    commands unanswered for that long. SCST's close path (step 7) unpins every buffer it
//!    still caches, touching no other LUN. This step counts what came back on its own, and
//!    waits, with the workers still serving, for a flush a refused allocation had started
//!    (`cap_flush`) or one asked for from outside ([`Frontend::cache_flusher`]: SIGHUP),
//!    bounded by [`TeardownConfig::flush`]: the kernel's suspension waits for this device's
//!    commands too, and a thread inside FLUSH_CACHE keeps the fd from closing (spec §5.1).
//! 5. **leave**: the workers send what is pending and exit (bounded by the stop grace).
//! 6. **unmap permit** ([`LeaseTable::unmap_guard`](crate::teardown::LeaseTable::unmap_guard)):
//!    granted only with no device lease outstanding, and returned in
//!    [`FrontendReport::unmap`].
//! 7. **close**: the frontend drops its references to the scst_user fd; the last one closes
//!    it (a FLUSH_CACHE still in the kernel holds one: step 4). SCST's release then runs on a
//!    kernel thread of its own (spec §5.1, §5.2), answering whatever it still held and
//!    unpinning the buffers after `close` has returned: a pinned page stays allocated while
//!    the kernel holds it, so the pool's unmap below cannot hand SCST freed memory, and the
//!    device's DMA ended at the abort's reset. The step's time is the close call's.
//!
//! After it returns, the owner of the pool flushes and unmaps it under the permit, outside
//! every command-path lock, then disables interrupts and closes the device. Without a permit
//! the pool must be leaked (loudly), never unmapped: a leak is better than a DMA into unmapped
//! memory.

use super::Frontend;
use super::FrontendReport;
use super::Phase;
use super::TeardownTrigger;
use scst_accel_hal::locks::LockToken;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

/// Bounds of each teardown step.
#[derive(Clone, Copy, Debug)]
pub struct TeardownConfig {
    /// Step 2: how long accepted commands may take to be answered.
    pub drain: Duration,
    /// Step 3: how long the aborts, their answers and the device leases' end may take.
    pub abort: Duration,
    /// Step 4: how long a FLUSH_CACHE still in the kernel (started when the buffer cap refused
    /// an allocation) may take to return while the workers keep serving.
    pub flush: Duration,
}

impl Default for TeardownConfig {
    fn default() -> Self {
        Self {
            drain: Duration::from_secs(2),
            abort: Duration::from_secs(3),
            flush: Duration::from_secs(2),
        }
    }
}

/// The bound of a step that waits for nothing (stopping intake, an abort step with nothing to
/// abort): longer means the thread was starved or blocked where nothing should block.
pub const NO_WAIT_STEP_BOUND: Duration = Duration::from_secs(1);

/// The bound of the close step: the close call only starts SCST's release, which runs on a
/// kernel thread (scst_user.md §5.1); by then the earlier steps have answered everything the
/// handler could.
pub const CLOSE_STEP_BOUND: Duration = Duration::from_secs(5);

/// One step of the teardown.
#[derive(Clone, Debug, PartialEq)]
pub struct TeardownStep {
    /// Step name.
    pub name: &'static str,
    /// How long it took.
    pub duration: Duration,
    /// What it counted (commands drained, aborted, buffers returned...).
    pub count: u64,
    /// Whether it finished within its bound.
    pub within_bound: bool,
}

/// What the frontend's teardown did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TeardownReport {
    /// What triggered it (the first trigger; [`TeardownTrigger::Requested`] if none fired
    /// before [`Frontend::teardown`] was called).
    pub trigger: TeardownTrigger,
    /// The steps, in order.
    pub steps: Vec<TeardownStep>,
    /// Total time.
    pub duration: Duration,
    /// EXECs accepted and not yet answered when intake stopped (the drain's count).
    pub in_flight_at_start: u64,
    /// Of those, answered within the drain bound.
    pub drained: u64,
    /// Store requests aborted on the device.
    pub aborted: u64,
    /// Whether the abort step ran, and every worker's queue proved empty after it (the
    /// condition for revoking device leases). `true` when no abort was needed.
    pub abort_proven: bool,
    /// Device leases revoked after a proven abort.
    pub leases_revoked: u64,
    /// Device leases still outstanding at the end: the device may still DMA into those
    /// buffers, so there is no unmap permit (must be 0).
    pub leases_outstanding: u64,
    /// Whether [`FrontendReport::unmap`] holds the permit to unmap the pool.
    pub unmap_permitted: bool,
    /// EXEC replies sent after intake stopped (completed, failed, BUSY).
    pub answered: u64,
    /// Store requests still in flight when the workers that left in time left: their commands
    /// were answered by the close path, and their buffers stay leased (must be 0). A worker
    /// that did not leave (counted in [`FrontendReport::panicked_workers`](super::FrontendReport))
    /// is not asked: what it holds shows in [`TeardownReport::leases_outstanding`].
    pub zombies_left: u64,
    /// Buffers SCST still held when the fd was closed (returned by the close itself).
    pub buffers_held_at_close: u64,
}

impl Frontend {
    /// Tear down (module doc): stop intake, drain, abort what remains (revoking device leases
    /// only after a proven abort), get every buffer back, leave, close the fd, and hand out the
    /// pool's unmap permit if no lease is outstanding. The same sequence for every trigger; the
    /// trigger that fired first is recorded ([`TeardownTrigger::Requested`] if none).
    /// Bounded by the sum of `config`'s steps plus the workers' stop grace.
    pub fn teardown(mut self, config: TeardownConfig) -> FrontendReport {
        // The teardown's thread: it holds no lock (asserted), and takes the lease table from
        // this token at each step.
        let mut token = LockToken::root();
        let start = Instant::now();
        let shared = std::sync::Arc::clone(&self.shared);
        let workers_started = self.workers.len();
        let mut report = TeardownReport::default();
        shared.trigger.fire(TeardownTrigger::Requested);
        report.trigger = shared.trigger.get().cloned().unwrap_or_default();
        let scst_closed = report.trigger == TeardownTrigger::ScstClosed;

        // 1. Stop intake.
        let step = Instant::now();
        shared.drain.close();
        report.in_flight_at_start = shared.drain.in_flight();
        log::info!(
            "teardown ({}): intake stopped, {} command(s) in flight, {} device lease(s) outstanding",
            report.trigger,
            report.in_flight_at_start,
            shared.leases.outstanding(&mut token)
        );
        let duration = step.elapsed();
        report.steps.push(TeardownStep {
            name: "stop intake",
            duration,
            count: report.in_flight_at_start,
            within_bound: duration <= NO_WAIT_STEP_BOUND,
        });

        // 2. Drain.
        let step = Instant::now();
        let remaining = match shared.drain.wait_idle(config.drain) {
            Ok(()) => 0,
            Err(remaining) => remaining.in_flight,
        };
        report.drained = report.in_flight_at_start.saturating_sub(remaining);
        log::info!(
            "teardown: drain: {} answered, {remaining} still in flight",
            report.drained
        );
        report.steps.push(TeardownStep {
            name: "drain",
            duration: step.elapsed(),
            count: report.drained,
            within_bound: remaining == 0,
        });

        // 3. Abort what remains, then revoke the device's leases if the abort is proven.
        let step = Instant::now();
        let leases_before = shared.leases.outstanding(&mut token);
        report.abort_proven = true;
        if remaining > 0 || leases_before > 0 {
            log::warn!(
                "teardown: escalating: {remaining} command(s) in flight, {leases_before} device lease(s) \
                 outstanding; state:\n{}",
                self.dump()
            );
            let deadline = Instant::now() + config.abort;
            shared.advance(Phase::Aborting);
            let tally = &shared.abort;
            let all_reported = wait_until(deadline, || {
                tally.reported.load(Ordering::Acquire) + tally.failed.load(Ordering::Acquire)
                    >= workers_started
            });
            report.abort_proven = all_reported
                && tally.failed.load(Ordering::Acquire) == 0
                && tally.unproven.load(Ordering::Acquire) == 0
                && tally.reported.load(Ordering::Acquire) == workers_started;
            let left = || deadline.saturating_duration_since(Instant::now());
            let answered = shared.drain.wait_idle(left());
            if report.abort_proven {
                // Every queue is empty after its abort (reset if needed): no DMA can happen
                // for any lease still outstanding. Payloads drop here, no lock held.
                let revoked = shared.leases.revoke_all(&mut token);
                report.leases_revoked = revoked.len() as u64;
                drop(revoked);
            } else {
                log::error!(
                    "teardown: abort not proven ({} of {workers_started} worker(s) reported, {} with \
                     requests left, {} failed): device leases are NOT revoked",
                    tally.reported.load(Ordering::Acquire),
                    tally.unproven.load(Ordering::Acquire),
                    tally.failed.load(Ordering::Acquire)
                );
            }
            let released = shared.leases.wait_released(&mut token, left());
            report.aborted = shared.counters.aborted.load(Ordering::Relaxed);
            log::warn!(
                "teardown: abort: {} store request(s) aborted, {} lease(s) revoked, {} command(s) and {} \
                 lease(s) left",
                report.aborted,
                report.leases_revoked,
                shared.drain.in_flight(),
                shared.leases.outstanding(&mut token)
            );
            report.steps.push(TeardownStep {
                name: "abort",
                duration: step.elapsed(),
                count: report.aborted,
                within_bound: all_reported && answered.is_ok() && released.is_ok(),
            });
        } else {
            let duration = step.elapsed();
            report.steps.push(TeardownStep {
                name: "abort",
                duration,
                count: 0,
                within_bound: duration <= NO_WAIT_STEP_BOUND,
            });
        }

        // 4. Return buffers.
        let step = Instant::now();
        let held_before = shared.buffers.figures().buffers;
        let flushed_ok = if scst_closed {
            log::info!("teardown: SCST closed the device: its close path returns the buffers");
            true
        } else {
            // Workers leave in the next step: a flush still in the kernel would then wait for
            // commands nobody answers, and hold the close with it.
            let idle = shared.cap_flush.wait_idle(config.flush);
            if !idle {
                log::error!(
                    "teardown: a FLUSH_CACHE is still in the kernel after {:?} (SCST waits for a slow \
                     command, possibly another LUN's); the close follows once the kernel ends it",
                    config.flush
                );
            }
            idle
        };
        let held_after = shared.buffers.figures().buffers;
        log::info!(
            "teardown: return buffers: {} returned, {held_after} still held by SCST",
            held_before.saturating_sub(held_after)
        );
        report.steps.push(TeardownStep {
            name: "return buffers",
            duration: step.elapsed(),
            count: held_before.saturating_sub(held_after),
            within_bound: flushed_ok,
        });

        // 5. Leave.
        let step = Instant::now();
        let (workers, panicked_workers) = self.stop_workers();
        report.zombies_left = workers.iter().map(|w| w.abandoned as u64).sum();
        report.answered = shared.counters.answered_in_teardown.load(Ordering::Relaxed);
        report.buffers_held_at_close = shared.buffers.figures().buffers;
        let stats = shared.stats();
        log::info!(
            "teardown: leave: {} worker(s) joined, {panicked_workers} panicked, {} store request(s) abandoned",
            workers.len(),
            report.zombies_left
        );
        report.steps.push(TeardownStep {
            name: "leave",
            duration: step.elapsed(),
            count: workers.len() as u64,
            within_bound: panicked_workers == 0 && workers.iter().all(|w| w.abandoned == 0),
        });

        // 6. The permit to unmap the pool: only with no device lease outstanding. The workers
        // that left can grant or release no lease any more; one left detached (stuck in a store
        // call) may still release its own when the call returns, and any grant it tries is
        // refused while the permit lives (`LeaseTable::unmap_guard`): what it still leases keeps
        // the permit from being given at all.
        let step = Instant::now();
        let unmap = shared.leases.unmap_guard(&mut token);
        report.leases_outstanding = shared.leases.outstanding(&mut token) as u64;
        report.unmap_permitted = unmap.is_some();
        if unmap.is_none() {
            log::error!(
                "teardown: {} device lease(s) still outstanding (cmd_h {:?}): NO permit to unmap the \
                 buffer pool; it must be leaked, not unmapped",
                report.leases_outstanding,
                shared.leases.outstanding_ids(&mut token)
            );
        }
        report.steps.push(TeardownStep {
            name: "unmap permit",
            duration: step.elapsed(),
            count: report.leases_outstanding,
            within_bound: unmap.is_some(),
        });
        // 7. Close: the fd closes with the last reference (inside `self`, unless a FLUSH_CACHE
        // that outlived step 4's bound still holds one); SCST's release, on a kernel thread,
        // answers what it still held and unpins the buffers (spec §5.1-§5.2).
        let step = Instant::now();
        drop(shared);
        drop(self);
        let duration = step.elapsed();
        report.steps.push(TeardownStep {
            name: "close",
            duration,
            count: report.buffers_held_at_close,
            within_bound: duration <= CLOSE_STEP_BOUND,
        });

        report.duration = start.elapsed();
        log::info!(
            "teardown ({}): {:?}: drained {}, aborted {}, revoked {}, answered {}, zombies left {}, \
             buffers held at close {}, leases outstanding {}, unmap {}",
            report.trigger,
            report.duration,
            report.drained,
            report.aborted,
            report.leases_revoked,
            report.answered,
            report.zombies_left,
            report.buffers_held_at_close,
            report.leases_outstanding,
            if report.unmap_permitted {
                "permitted"
            } else {
                "REFUSED"
            }
        );
        FrontendReport {
            stats,
            workers,
            panicked_workers,
            teardown: report,
            unmap,
        }
    }
}

/// Poll `done` until true or `deadline` passes (1 ms sleeps; this thread holds no lock).
fn wait_until(deadline: Instant, mut done: impl FnMut() -> bool) -> bool {
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        scst_accel_hal::locks::sleep(Duration::from_millis(1));
    }
}
