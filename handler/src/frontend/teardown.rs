//! The frontend's part of the teardown (architecture.md §5), one sequence for every trigger,
//! each step bounded and logged with counts:
//!
//! 1. **stop intake**: new EXECs are answered BUSY and ALLOC_MEM gets no buffer (SCST answers
//!    BUSY), never dropped; returned buffers and task management keep being honoured;
//! 2. **drain**: wait, bounded, for the store requests in flight;
//! 3. **abort zombies**: what is still in flight is aborted on the device (stop the queue, reset
//!    the function if the engine stays busy: the reset proves no more DMA), and answered with
//!    ABORTED COMMAND;
//! 4. **return buffers**: FLUSH_CACHE from this (non-worker) thread, so SCST hands back every
//!    cached buffer while the workers still serve (spec §3.6, §8 pitfall 13), bounded;
//! 5. **leave**: the workers send what is pending and exit; the fd is closed, and the kernel
//!    (or loopback) answers whatever it still held (spec §5.3).
//!
//! Unmapping the buffer pool and resetting the board come after this, outside every
//! command-path lock, in the owner of the board (it alone knows when DMA is provably over).

use super::Frontend;
use super::FrontendReport;
use super::Phase;
use std::time::Duration;
use std::time::Instant;

/// The return-buffers step ends early when no buffer came back for this long.
const FLUSH_STALL: Duration = Duration::from_millis(50);

/// Bounds of each teardown step.
#[derive(Clone, Copy, Debug)]
pub struct TeardownConfig {
    /// Step 2: how long in-flight store requests may take to finish.
    pub drain: Duration,
    /// Step 3: how long aborted requests may take to be answered.
    pub abort: Duration,
    /// Step 4: how long SCST may take to return cached buffers.
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

/// One step of the teardown.
#[derive(Clone, Debug, PartialEq)]
pub struct TeardownStep {
    /// Step name.
    pub name: &'static str,
    /// How long it took.
    pub duration: Duration,
    /// What it counted (requests drained, aborted, buffers returned...).
    pub count: u64,
    /// Whether it finished within its bound.
    pub within_bound: bool,
}

/// What the frontend's teardown did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TeardownReport {
    /// The steps, in order.
    pub steps: Vec<TeardownStep>,
    /// Total time.
    pub duration: Duration,
    /// Store requests in flight when intake stopped.
    pub in_flight_at_start: u64,
    /// Of those, finished normally.
    pub drained: u64,
    /// Store requests aborted on the device.
    pub aborted: u64,
    /// EXEC replies sent after intake stopped (completed, failed, BUSY).
    pub answered: u64,
    /// Store requests still in flight when the workers left: their commands were answered by
    /// the close path, and the board owner must reset before unmapping (must be 0).
    pub zombies_left: u64,
    /// Buffers SCST still held when the fd was closed (returned by the close itself).
    pub buffers_held_at_close: u64,
}

impl Frontend {
    /// Tear down (module doc): stop intake, drain, abort zombies, get every buffer back, leave,
    /// close the fd. Bounded by the sum of `config`'s steps plus the workers' stop grace.
    pub fn teardown(mut self, config: TeardownConfig) -> FrontendReport {
        let start = Instant::now();
        let shared = std::sync::Arc::clone(&self.shared);
        let in_flight = || shared.inflight.load(std::sync::atomic::Ordering::Relaxed) as u64;
        let mut report = TeardownReport::default();

        shared.advance(Phase::Draining);
        report.in_flight_at_start = in_flight();
        log::info!(
            "teardown: intake stopped, {} store requests in flight",
            report.in_flight_at_start
        );

        let step = Instant::now();
        let drained_ok = wait_until(config.drain, || in_flight() == 0);
        report.drained = report.in_flight_at_start.saturating_sub(in_flight());
        report.steps.push(TeardownStep {
            name: "drain",
            duration: step.elapsed(),
            count: report.drained,
            within_bound: drained_ok,
        });

        let step = Instant::now();
        let before_abort = in_flight();
        shared.advance(Phase::Aborting);
        let aborted_ok = wait_until(config.abort, || in_flight() == 0);
        report.aborted = shared.counters.aborted.load(std::sync::atomic::Ordering::Relaxed);
        report.steps.push(TeardownStep {
            name: "abort",
            duration: step.elapsed(),
            count: before_abort,
            within_bound: aborted_ok,
        });
        if before_abort > 0 {
            log::warn!(
                "teardown: {before_abort} requests did not drain; {} aborted on the device",
                report.aborted
            );
        }

        let step = Instant::now();
        let held_before = shared.buffers.figures().buffers;
        if let Err(e) = shared.fd.flush_cache() {
            log::warn!("teardown: FLUSH_CACHE failed: {e}; cached buffers come back when the fd closes");
        }
        // Under load SCST keeps re-caching buffers for the commands it is answering BUSY, so
        // "all returned" may never come while the initiator keeps sending: wait until they
        // are all back or the returns stop making progress (the close returns the rest).
        let mut last = (held_before, Instant::now());
        let flushed_ok = wait_until(config.flush, || {
            let held = shared.buffers.figures().buffers;
            if held < last.0 {
                last = (held, Instant::now());
            }
            held == 0 || last.1.elapsed() >= FLUSH_STALL
        });
        let held_after = shared.buffers.figures().buffers;
        report.steps.push(TeardownStep {
            name: "return buffers",
            duration: step.elapsed(),
            count: held_before.saturating_sub(held_after),
            within_bound: flushed_ok,
        });

        let step = Instant::now();
        let (workers, panicked_workers) = self.stop_workers();
        report.zombies_left = in_flight();
        report.answered = shared
            .counters
            .answered_in_teardown
            .load(std::sync::atomic::Ordering::Relaxed);
        report.buffers_held_at_close = shared.buffers.figures().buffers;
        let stats = shared.stats();
        report.steps.push(TeardownStep {
            name: "leave",
            duration: step.elapsed(),
            count: workers.len() as u64,
            within_bound: workers.iter().all(|w| w.abandoned == 0),
        });
        drop(shared);
        let step = Instant::now();
        // The fd closes with the last reference (inside `self`): SCST's close path answers
        // what it still held and unpins every buffer before the table drops them.
        drop(self);
        report.steps.push(TeardownStep {
            name: "close",
            duration: step.elapsed(),
            count: report.buffers_held_at_close,
            within_bound: true,
        });
        report.duration = start.elapsed();
        log::info!(
            "teardown: {:?}: drained {}, aborted {}, answered {}, zombies left {}, buffers held at close {}",
            report.duration,
            report.drained,
            report.aborted,
            report.answered,
            report.zombies_left,
            report.buffers_held_at_close
        );
        FrontendReport {
            stats,
            workers,
            panicked_workers,
            teardown: report,
        }
    }
}

/// Poll `done` until true or `bound` passes (1 ms sleeps; this thread holds no lock).
fn wait_until(bound: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + bound;
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
