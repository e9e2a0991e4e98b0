//! Blocking calls that first assert that no checked lock is held: the only way the rule "no
//! lock across a blocking call" (docs/locking.md) is checked rather than hoped for. Use these
//! instead of `std::thread::sleep`, `JoinHandle::join` and `recv_timeout` in product code.

use std::thread::JoinHandle;
use std::time::Duration;
use std::time::Instant;

use super::runtime::assert_no_locks_held;

/// Polling period of [`join_bounded`].
const JOIN_POLL: Duration = Duration::from_millis(1);

/// Run the blocking call `f`, named `what` in the message, after asserting that no checked lock
/// is held. For blocking calls without a helper here (a crossbeam `recv_timeout`, a `poll`).
///
/// # Panics
/// A violation aborts the process (docs/locking.md; a panic where the thread holds
/// [`expect_violations`](crate::locks::expect_violations)), with the runtime checker: when a checked lock is held.
#[track_caller]
pub fn blocking<R>(what: &str, f: impl FnOnce() -> R) -> R {
    assert_no_locks_held(what);
    f()
}

/// `std::thread::sleep` with no lock held.
///
/// # Panics
/// A violation aborts the process (docs/locking.md; a panic where the thread holds
/// [`expect_violations`](crate::locks::expect_violations)), with the runtime checker: when a checked lock is held.
#[track_caller]
pub fn sleep(duration: Duration) {
    assert_no_locks_held("sleep");
    std::thread::sleep(duration);
}

/// `JoinHandle::join` with no lock held. Unbounded: only for a thread already told to stop
/// whose loop is bounded; otherwise use [`join_bounded`].
///
/// # Errors
/// The thread's panic payload, as `JoinHandle::join`.
///
/// # Panics
/// A violation aborts the process (docs/locking.md; a panic where the thread holds
/// [`expect_violations`](crate::locks::expect_violations)), with the runtime checker: when a checked lock is held.
#[track_caller]
pub fn join<T>(handle: JoinHandle<T>) -> std::thread::Result<T> {
    assert_no_locks_held("join");
    handle.join()
}

/// Join `handle` if its thread ends within `bound`; otherwise give the handle back (the caller
/// logs and leaves the thread detached, or escalates).
///
/// # Errors
/// `Err(handle)` when the thread is still running after `bound`.
///
/// # Panics
/// A violation aborts the process (docs/locking.md; a panic where the thread holds
/// [`expect_violations`](crate::locks::expect_violations)), with the runtime checker: when a checked lock is held.
#[track_caller]
pub fn join_bounded<T>(
    handle: JoinHandle<T>,
    bound: Duration,
) -> Result<std::thread::Result<T>, JoinHandle<T>> {
    assert_no_locks_held("join");
    let deadline = Instant::now() + bound;
    while !handle.is_finished() {
        let now = Instant::now();
        if now >= deadline {
            return Err(handle);
        }
        std::thread::sleep(JOIN_POLL.min(deadline - now));
    }
    Ok(handle.join())
}

/// A channel receiver with a bounded receive, so that [`recv_timeout`] serves any channel
/// type. Implemented here for `std::sync::mpsc::Receiver`; for another channel (crossbeam),
/// wrap the call in [`blocking`].
pub trait TimedRecv {
    /// What is received.
    type Item;
    /// Why nothing was (timeout or disconnection).
    type Error;
    /// Wait at most `timeout` for one item.
    ///
    /// # Errors
    /// Timeout or disconnection, as the channel reports them.
    fn recv_within(&self, timeout: Duration) -> Result<Self::Item, Self::Error>;
}

impl<T> TimedRecv for std::sync::mpsc::Receiver<T> {
    type Item = T;
    type Error = std::sync::mpsc::RecvTimeoutError;

    fn recv_within(&self, timeout: Duration) -> Result<T, Self::Error> {
        self.recv_timeout(timeout)
    }
}

/// `rx.recv_timeout(timeout)` with no lock held.
///
/// # Errors
/// The channel's timeout or disconnection error.
///
/// # Panics
/// A violation aborts the process (docs/locking.md; a panic where the thread holds
/// [`expect_violations`](crate::locks::expect_violations)), with the runtime checker: when a checked lock is held.
#[track_caller]
pub fn recv_timeout<R: TimedRecv>(rx: &R, timeout: Duration) -> Result<R::Item, R::Error> {
    assert_no_locks_held("recv_timeout");
    rx.recv_within(timeout)
}
