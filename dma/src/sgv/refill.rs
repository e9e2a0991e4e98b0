//! Arenas mapped ahead of need, off the workers (issue 13 item 3, docs/design/sgv-arenas.md
//! "Refill"). When a miss leaves its class with few free chunks (at or below the low-water
//! mark, a quarter of an arena), the pool asks for a refill: one more arena for that class,
//! mapped by someone other than the worker that missed, within the cap's worth of arena
//! bytes for the class (the rule [`super::SgvPool::premap`] follows). A miss never waits for
//! it: one that finds no free chunk maps on its own thread, as before, and is counted in
//! `PoolStats::worker_maps`.
//!
//! The requests: one flag per class (so a class is asked for once until served) and a
//! bounded crossbeam channel carrying the class. Asking is a swap and a `try_send`, no lock
//! and no wait. Serving: the pool's `sgv-refill` thread ([`RefillThread`], started by
//! [`super::SgvPool::with_refill`]), whose every wait is bounded; or, for a pool built with
//! [`super::SgvPool::with_refill_requests`], whoever calls
//! [`super::SgvPool::refill_pending`] (a supervisor's own loop, or a test, step by step).
//!
//! Locks: the refill thread starts from its own root token and takes the pool's locks one at
//! a time through the same paths as `premap` (the arena is made and mapped with no lock held,
//! then added under `sgv.pool`), so it adds no lock, no level and no nesting.

use super::shared::Shared;
use super::SGV_CLASSES;
use crossbeam_channel::Receiver;
use crossbeam_channel::RecvTimeoutError;
use crossbeam_channel::Sender;
use crossbeam_channel::TrySendError;
use scst_accel_hal::locks;
use scst_accel_hal::locks::LockToken;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Weak;
use std::thread::JoinHandle;
use std::time::Duration;

/// How long the refill thread sleeps on its channel before it checks whether its pool is
/// still there: for a pool dropped without [`RefillThread::stop`], whose request wakes it at
/// once (as does every refill request). Long, so an idle service's refill thread wakes once
/// per this, not ten times a second (issue 13: quiet when idle).
const IDLE_WAKE: Duration = Duration::from_secs(5);

/// How long stopping waits for the thread: one arena's map (an mmap and one map ioctl that
/// pins 16 MiB) takes milliseconds; past this the thread is left to finish on its own (it
/// unmaps what it mapped once it sees the pool closed, see [`Shared::refill_class`]).
pub(super) const STOP_WAIT: Duration = Duration::from_secs(5);

/// The refill thread's name (in `ps -L`, `top -H`, a debugger).
pub const REFILL_THREAD_NAME: &str = "sgv-refill";

/// What the refill channel carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Request {
    /// Map one more arena for this class, if it is still low.
    Class(u8),
    /// The refill thread ends.
    Stop,
}

/// The pool's refill requests: whether they are made at all, which classes are asked for,
/// and the channel that carries them.
#[derive(Debug)]
pub(super) struct Requests {
    enabled: AtomicBool,
    /// Set when a class is asked for, cleared when the refill takes the request: at most one
    /// request per class is in the channel, so `SGV_CLASSES` requests and one stop fit.
    asked: [AtomicBool; SGV_CLASSES],
    tx: Sender<Request>,
    rx: Receiver<Request>,
}

impl Default for Requests {
    fn default() -> Self {
        let (tx, rx) = crossbeam_channel::bounded(SGV_CLASSES + 1);
        Self {
            enabled: AtomicBool::new(false),
            asked: std::array::from_fn(|_| AtomicBool::new(false)),
            tx,
            rx,
        }
    }
}

impl Requests {
    pub(super) fn enable(&self) {
        self.enabled.store(true, Ordering::Relaxed);
    }

    pub(super) fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Ask for a refill of `class` unless one is already asked for. Never blocks.
    pub(super) fn ask(&self, class: u8) {
        let Some(asked) = self.asked.get(usize::from(class)) else {
            return;
        };
        if asked.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Err(e) = self.tx.try_send(Request::Class(class)) {
            // Unreachable with one request per class in a channel sized for all of them;
            // forget the request rather than block a worker, and let the next miss ask again.
            asked.store(false, Ordering::Release);
            log::debug!("SGV refill request for class {class} not queued: {e}");
        }
    }

    /// The next request already queued, without waiting; its class may be asked for again.
    pub(super) fn try_take(&self) -> Option<Request> {
        let request = self.rx.try_recv().ok()?;
        self.taken(request);
        Some(request)
    }

    /// Cleared before the class is looked at, so a miss that brings it low again after the
    /// look asks again instead of being lost.
    fn taken(&self, request: Request) {
        if let Request::Class(class) = request {
            if let Some(asked) = self.asked.get(usize::from(class)) {
                asked.store(false, Ordering::Release);
            }
        }
    }
}

/// Fewest misses a refill has to map the next arena in, where the arena holds that many.
const MIN_SLACK: usize = 8;

/// The low-water mark of a class whose arenas hold `chunks_per_arena` chunks: a quarter of an
/// arena, but at least [`MIN_SLACK`] chunks (or the whole arena when it holds fewer). A miss
/// that leaves the class with this many free chunks or fewer asks for a refill, so the refill
/// has that many misses' time to map the next arena before a worker would have to (1,024
/// misses for 4 KiB buffers; 8 for 1 MiB and 2 MiB ones; 4, a whole arena, for 4 MiB ones:
/// a quarter of their 4-chunk arena would leave one miss, less than the refill thread's
/// wake-up on a loaded host, measured in docs/design/sgv-arenas.md). Never more than an
/// arena, so one arena mapped always lifts the class above the mark.
pub(super) fn low_water(chunks_per_arena: usize) -> usize {
    (chunks_per_arena / 4).max(MIN_SLACK.min(chunks_per_arena)).max(1)
}

/// The running `sgv-refill` thread of a pool and how to stop it.
#[derive(Debug)]
pub(super) struct RefillThread {
    stop: Arc<AtomicBool>,
    tx: Sender<Request>,
    handle: JoinHandle<()>,
}

/// The refill thread could not be started.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the SGV pool's {REFILL_THREAD_NAME} thread: {0}")]
pub struct RefillStartError(#[source] pub std::io::Error);

impl RefillThread {
    /// Start the thread serving `shared`'s requests. It holds the pool only weakly (and
    /// strongly only for one step), so it never keeps a dropped pool alive.
    pub(super) fn start(shared: &Arc<Shared>) -> Result<Self, RefillStartError> {
        let stop = Arc::new(AtomicBool::new(false));
        let pool = Arc::downgrade(shared);
        let rx = shared.refill.rx.clone();
        let thread_stop = stop.clone();
        let handle = std::thread::Builder::new()
            .name(REFILL_THREAD_NAME.into())
            .spawn(move || serve(&pool, &rx, &thread_stop))
            .map_err(RefillStartError)?;
        Ok(Self {
            stop,
            tx: shared.refill.tx.clone(),
            handle,
        })
    }

    /// Stop the thread and wait for it (bounded by [`STOP_WAIT`], no lock held: the caller
    /// has the root token). Returns whether it ended within the bound; a thread caught in a
    /// long map finishes that step alone (and, the pool being closed by then, unmaps it).
    pub(super) fn stop(self, token: &mut LockToken<'_, locks::levels::Root>) -> bool {
        let _ = token;
        self.stop.store(true, Ordering::Release);
        // Wakes it at once; a full channel (impossible, see `Requests`) leaves the flag and
        // the bounded wait to end it.
        if let Err(TrySendError::Full(_)) = self.tx.try_send(Request::Stop) {
            log::debug!("SGV refill channel full at stop; the thread sees the flag at its next request");
        }
        match locks::join_bounded(self.handle, STOP_WAIT) {
            Ok(Ok(())) => true,
            Ok(Err(_)) => {
                log::error!("the {REFILL_THREAD_NAME} thread panicked");
                true
            }
            Err(_running) => {
                log::warn!(
                    "the {REFILL_THREAD_NAME} thread did not stop within {STOP_WAIT:?} (a map still \
                     running?); left to finish, it unmaps what it maps into a closed pool"
                );
                false
            }
        }
    }
}

/// The refill thread's loop: serve requests until told to stop or the pool is gone.
fn serve(pool: &Weak<Shared>, rx: &Receiver<Request>, stop: &AtomicBool) {
    // This thread holds no lock, ever, outside the pool's own short sections.
    let mut token = LockToken::root();
    loop {
        if stop.load(Ordering::Acquire) {
            return;
        }
        let received = locks::blocking("sgv refill wait", || rx.recv_timeout(IDLE_WAKE));
        match received {
            Ok(Request::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            Ok(request @ Request::Class(class)) => {
                let Some(shared) = pool.upgrade() else { return };
                shared.refill.taken(request);
                if stop.load(Ordering::Acquire) {
                    return;
                }
                shared.refill_class(&mut token, class);
            }
            Err(RecvTimeoutError::Timeout) => {
                if pool.strong_count() == 0 {
                    return;
                }
            }
        }
    }
}
