//! A worker's heartbeat: the time until which its owner knows the worker alive, for a health
//! check (the service's systemd watchdog) that must tell a wedged worker from a busy one
//! without taking a lock or waking anyone.
//!
//! Three writers, one atomic: the worker at the top of each turn of its loop (now); the worker
//! before a wait of known bound (an idle park: the wait's end); and its store queue before a
//! device call that can outlast a turn (a recovery's queue stop, function reset or queue
//! restart, each bounded by the board's own timeouts: the call's end), through
//! [`StoreQueue::set_heartbeat`](crate::store::StoreQueue::set_heartbeat). A worker that has
//! not beaten by the time it promised is wedged once the checker's `max_age` has passed since.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

/// The heartbeat of a worker that has ended (never beats again).
const EXITED: u64 = u64::MAX;

/// One worker's heartbeat, shared by the worker, its store queue and the checker (clones share
/// it).
#[derive(Clone, Debug)]
pub struct Heartbeat(Arc<Beat>);

#[derive(Debug)]
struct Beat {
    origin: Instant,
    /// Milliseconds since `origin` until which the worker is known alive; [`EXITED`] once it
    /// has ended.
    until_ms: AtomicU64,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Self::new()
    }
}

impl Heartbeat {
    /// A heartbeat that beat now (a worker that never gets to its loop is wedged once the
    /// checker's `max_age` passes).
    pub fn new() -> Self {
        Self(Arc::new(Beat {
            origin: Instant::now(),
            until_ms: AtomicU64::new(0),
        }))
    }

    fn now_ms(&self) -> u64 {
        // Saturates in 584 million years; never reaches EXITED in practice.
        u64::try_from(self.0.origin.elapsed().as_millis()).unwrap_or(EXITED - 1)
    }

    /// Alive now. Relaxed: the checker only needs the value eventually, and a store per turn
    /// must cost nothing on the I/O path.
    pub fn beat(&self) {
        self.0.until_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// About to be away for at most `bound` (a park, a bounded device call): alive until then,
    /// so the wait never looks wedged, and one that does not come back in time does once the
    /// checker's `max_age` has passed since.
    pub fn beat_until(&self, bound: Duration) {
        let ahead = u64::try_from(bound.as_millis()).unwrap_or(EXITED - 1);
        self.0.until_ms.store(
            self.now_ms().saturating_add(ahead).min(EXITED - 1),
            Ordering::Relaxed,
        );
    }

    /// The worker has ended.
    pub fn exited(&self) {
        self.0.until_ms.store(EXITED, Ordering::Relaxed);
    }

    /// How long ago the worker was last known alive: zero while it is within a bound it set
    /// ahead; `None` once it has ended.
    pub fn age(&self) -> Option<Duration> {
        let until = self.0.until_ms.load(Ordering::Relaxed);
        (until != EXITED).then(|| Duration::from_millis(self.now_ms().saturating_sub(until)))
    }

    /// Ended, or not known alive for longer than `max_age`.
    pub fn is_wedged(&self, max_age: Duration) -> bool {
        self.age().is_none_or(|age| age > max_age)
    }
}
