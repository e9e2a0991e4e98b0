//! Worker heartbeats, for a health check that must tell a wedged worker (stuck in a store call)
//! from a busy one without taking a lock or waking anyone: each worker stores the time of its
//! latest loop iteration in its own [`Heartbeat`]; the checker compares it with the clock.

use crate::heartbeat::Heartbeat;
use std::time::Duration;

/// One heartbeat per worker ([`Heartbeat`]); the worker's store queue gets a clone of its own
/// ([`Liveness::heartbeat`]).
pub(crate) struct Liveness {
    beats: Box<[Heartbeat]>,
}

impl Liveness {
    /// `workers` heartbeats, all "now" (a worker that never gets to its loop is wedged once
    /// `max_age` passes).
    pub(crate) fn new(workers: usize) -> Self {
        Self {
            beats: (0..workers).map(|_| Heartbeat::new()).collect(),
        }
    }

    /// Worker `index`'s heartbeat, for its store queue.
    pub(crate) fn heartbeat(&self, index: usize) -> Option<Heartbeat> {
        self.beats.get(index).cloned()
    }

    /// Worker `index` is alive now ([`Heartbeat::beat`]).
    pub(crate) fn beat(&self, index: usize) {
        if let Some(beat) = self.beats.get(index) {
            beat.beat();
        }
    }

    /// Worker `index` is about to sleep for at most `bound` (an idle worker parked in poll):
    /// [`Heartbeat::beat_until`].
    pub(crate) fn beat_until(&self, index: usize, bound: Duration) {
        if let Some(beat) = self.beats.get(index) {
            beat.beat_until(bound);
        }
    }

    /// Worker `index` has ended.
    pub(crate) fn exited(&self, index: usize) {
        if let Some(beat) = self.beats.get(index) {
            beat.exited();
        }
    }

    /// Workers whose heartbeat is older than `max_age`, or that have ended.
    pub(crate) fn wedged(&self, max_age: Duration) -> Vec<usize> {
        self.beats
            .iter()
            .enumerate()
            .filter(|(_, beat)| beat.is_wedged(max_age))
            .map(|(index, _)| index)
            .collect()
    }
}

#[cfg(test)]
mod tests;
