//! Worker heartbeats, for a health check that must tell a wedged worker (stuck in a store call)
//! from a busy one without taking a lock or waking anyone: each worker stores the time of its
//! latest loop iteration in its own atomic; the checker compares it with the clock.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

/// The heartbeat of a worker that has ended (never beats again).
const EXITED: u64 = u64::MAX;

/// One heartbeat per worker: milliseconds since the frontend started.
pub(crate) struct Liveness {
    started: Instant,
    beats: Box<[AtomicU64]>,
}

impl Liveness {
    /// `workers` heartbeats, all "now" (a worker that never gets to its loop is wedged once
    /// `max_age` passes).
    pub(crate) fn new(workers: usize) -> Self {
        Self {
            started: Instant::now(),
            beats: (0..workers).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn now_ms(&self) -> u64 {
        // Saturates in 584 million years; never reaches EXITED in practice.
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(EXITED - 1)
    }

    /// Worker `index` is alive now. Relaxed: the checker only needs the value eventually, and
    /// a store per iteration must cost nothing on the I/O path.
    pub(crate) fn beat(&self, index: usize) {
        if let Some(beat) = self.beats.get(index) {
            beat.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    /// Worker `index` is about to sleep for at most `bound` (an idle worker parked in poll):
    /// its heartbeat is set to the time it will be back by, so a parked worker never looks
    /// wedged, and one that does not come back in time does once `max_age` has passed since.
    pub(crate) fn beat_until(&self, index: usize, bound: Duration) {
        if let Some(beat) = self.beats.get(index) {
            let ahead = u64::try_from(bound.as_millis()).unwrap_or(EXITED - 1);
            beat.store(
                self.now_ms().saturating_add(ahead).min(EXITED - 1),
                Ordering::Relaxed,
            );
        }
    }

    /// Worker `index` has ended.
    pub(crate) fn exited(&self, index: usize) {
        if let Some(beat) = self.beats.get(index) {
            beat.store(EXITED, Ordering::Relaxed);
        }
    }

    /// Workers whose heartbeat is older than `max_age`, or that have ended.
    pub(crate) fn wedged(&self, max_age: Duration) -> Vec<usize> {
        let now = self.now_ms();
        let max = u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX);
        self.beats
            .iter()
            .enumerate()
            .filter(|(_, beat)| {
                let last = beat.load(Ordering::Relaxed);
                last == EXITED || now.saturating_sub(last) > max
            })
            .map(|(index, _)| index)
            .collect()
    }
}

#[cfg(test)]
mod tests;
