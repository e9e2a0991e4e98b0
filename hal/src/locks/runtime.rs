//! The runtime half of the checker, compiled in every build with debug assertions (debug and
//! test builds) and in release builds with the `lock-check` feature: `cfg(any(debug_assertions,
//! feature = "lock-check"))`, written out at each site rather than derived by a build script
//! (which cannot see debug assertions before Cargo 1.93). A per-thread stack of the
//! checked locks held, each with the place it was taken, asserted on every acquisition and at
//! every blocking point, and (debug builds) a global record of the (held → taken) edges
//! observed, in the manner of tracing-mutex.
//!
//! It catches what the types cannot see: acquisitions through
//! `lock_unchecked_at_runtime` (callbacks, trait objects), a second [`LockToken::root`] made
//! while a lock is held, and locks held across blocking calls. A violation names both locks and
//! both acquisition sites, and the process aborts, in every build: a handler that has broken
//! the order must stop before it deadlocks, and a panic in a worker thread could be caught (a
//! join that logs it, a poisoned lock recovered) and leave the deadlock to happen, or a test
//! pass that should have failed. The message goes to stderr (past libtest's capture, which an
//! abort would lose) and to the log. A test that provokes a violation on purpose holds
//! [`expect_violations`] on its thread; there (debug builds) a violation panics instead, so
//! that `should_panic` and `catch_unwind` see it. Without the checker
//! every function here is an empty inline function and a guard carries nothing but its hold
//! time for [`lock_stats`](super::lock_stats).
//!
//! [`LockToken::root`]: super::LockToken::root

#[cfg(any(debug_assertions, feature = "lock-check"))]
mod imp {
    use std::cell::Cell;
    use std::cell::RefCell;
    use std::panic::Location;

    /// One lock this thread holds.
    #[derive(Clone, Copy, Debug)]
    struct Entry {
        id: u64,
        level: u32,
        name: &'static str,
        site: &'static Location<'static>,
    }

    // Nothing depends on when these are destroyed: they describe only their own thread, and a
    // thread holds no guard once its closure has returned (issue 16: thread-local destructors
    // may run after a scope's implicit join or `is_finished` reported the thread done).
    thread_local! {
        static HELD: RefCell<Vec<Entry>> = const { RefCell::new(Vec::new()) };
        static NEXT_ID: Cell<u64> = const { Cell::new(1) };
        /// How many [`super::ExpectViolations`] guards this thread holds.
        static EXPECTING: Cell<u32> = const { Cell::new(0) };
    }

    /// Count one more (or one fewer) guard of [`super::expect_violations`] on this thread.
    pub(crate) fn expecting(more: bool) {
        let _ = EXPECTING.try_with(|n| {
            n.set(if more {
                n.get() + 1
            } else {
                n.get().saturating_sub(1)
            })
        });
    }

    /// Edges observed by any thread, by lock name (debug builds: the tests compare them with
    /// docs/locking.md). A plain std mutex: it is the checker's own, never held while anything
    /// else is taken. Not kept in release builds, where it would be one more shared lock per
    /// nested acquisition.
    #[cfg(debug_assertions)]
    static EDGES: std::sync::Mutex<std::collections::BTreeSet<(&'static str, &'static str)>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());

    /// Report a violation: a panic on a thread of a debug build that expects one
    /// ([`super::expect_violations`]); anywhere else the message on stderr and in the log, and
    /// an abort.
    #[cold]
    fn fail(message: String) -> ! {
        if cfg!(debug_assertions) && EXPECTING.try_with(Cell::get).unwrap_or(0) > 0 {
            panic!("{message}");
        }
        log::error!("{message}");
        // Straight to the file, not through eprintln!: libtest captures that per test and the
        // abort would discard it.
        let backtrace = std::backtrace::Backtrace::force_capture();
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            format!("scst-accel: {message}; aborting\n{backtrace}\n").as_bytes(),
        );
        std::process::abort();
    }

    /// The held lock that forbids taking `level`: the highest one at or above it.
    fn violation(level: u32) -> Option<Entry> {
        HELD.try_with(|held| {
            held.try_borrow().ok().and_then(|held| {
                held.iter()
                    .filter(|e| e.level >= level)
                    .max_by_key(|e| e.level)
                    .copied()
            })
        })
        .ok()
        .flatten()
    }

    /// Fails unless every lock this thread holds is of a level strictly below `level`.
    #[track_caller]
    pub(crate) fn check_acquire(level: u32, name: &'static str) {
        if let Some(held) = violation(level) {
            fail(format!(
                "lock order violation: taking `{name}` (level {level}) while holding `{}` \
                 (level {}); taken at {}, the held one at {} (docs/locking.md: a lock may only \
                 be taken while holding locks of lower levels)",
                held.name,
                held.level,
                Location::caller(),
                held.site
            ));
        }
    }

    /// Record that this thread now holds the lock; returns the id to release it with.
    #[track_caller]
    pub(crate) fn push(level: u32, name: &'static str) -> u64 {
        let site = Location::caller();
        let id = NEXT_ID
            .try_with(|next| {
                let id = next.get();
                next.set(id + 1);
                id
            })
            .unwrap_or(0);
        let _ = HELD.try_with(|held| {
            if let Ok(mut held) = held.try_borrow_mut() {
                // Debug builds record the edge from every held lock to this one; the set
                // already holds it after the first time, so this allocates nothing then.
                #[cfg(debug_assertions)]
                if !held.is_empty() {
                    let mut edges = EDGES.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    for below in held.iter() {
                        edges.insert((below.name, name));
                    }
                }
                held.push(Entry {
                    id,
                    level,
                    name,
                    site,
                });
            }
        });
        id
    }

    /// The lock pushed as `id` was released (guards may drop in any order). Never panics: it
    /// runs in guard drops, also while unwinding and during thread-local teardown.
    pub(crate) fn pop(id: u64) {
        let _ = HELD.try_with(|held| {
            if let Ok(mut held) = held.try_borrow_mut() {
                if let Some(at) = held.iter().rposition(|e| e.id == id) {
                    held.remove(at);
                }
            }
        });
    }

    /// The checked locks this thread holds, as (name, level), oldest first.
    pub(crate) fn held() -> Vec<(&'static str, u32)> {
        HELD.try_with(|held| {
            held.try_borrow()
                .map(|held| held.iter().map(|e| (e.name, e.level)).collect())
                .unwrap_or_default()
        })
        .unwrap_or_default()
    }

    /// Whether this thread holds no checked lock; `false` when its record cannot be read (the
    /// thread's locals being torn down, or a borrow in progress): unknown is not none.
    pub(crate) fn none_held() -> bool {
        HELD.try_with(|held| held.try_borrow().is_ok_and(|held| held.is_empty()))
            .unwrap_or(false)
    }

    /// Fails if this thread holds any checked lock (before a blocking call `what`).
    #[track_caller]
    pub(crate) fn assert_none_held(what: &str) {
        let held = HELD
            .try_with(|held| held.try_borrow().map(|h| h.clone()).unwrap_or_default())
            .unwrap_or_default();
        if let Some(last) = held.last() {
            let all: Vec<String> = held
                .iter()
                .map(|e| format!("`{}` (level {}) taken at {}", e.name, e.level, e.site))
                .collect();
            fail(format!(
                "blocking call `{what}` while holding `{}` (level {}); called at {}; held: {}. \
                 No lock may be held across a blocking call (docs/locking.md)",
                last.name,
                last.level,
                Location::caller(),
                all.join(", ")
            ));
        }
    }

    /// Every (held → taken) pair seen so far, by name (debug builds; empty otherwise).
    pub(crate) fn observed_edges() -> Vec<(&'static str, &'static str)> {
        #[cfg(debug_assertions)]
        {
            EDGES
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
                .copied()
                .collect()
        }
        #[cfg(not(debug_assertions))]
        Vec::new()
    }
}

#[cfg(not(any(debug_assertions, feature = "lock-check")))]
mod imp {
    #[inline(always)]
    pub(crate) fn check_acquire(_level: u32, _name: &'static str) {}

    #[inline(always)]
    pub(crate) fn push(_level: u32, _name: &'static str) -> u64 {
        0
    }

    #[inline(always)]
    pub(crate) fn held() -> Vec<(&'static str, u32)> {
        Vec::new()
    }

    #[inline(always)]
    pub(crate) fn none_held() -> bool {
        true
    }

    #[inline(always)]
    pub(crate) fn assert_none_held(_what: &str) {}

    #[inline(always)]
    pub(crate) fn observed_edges() -> Vec<(&'static str, &'static str)> {
        Vec::new()
    }

    #[inline(always)]
    pub(crate) fn expecting(_more: bool) {}
}

/// Whether the runtime checker is compiled in (debug and test builds; release builds with the
/// `lock-check` feature).
pub const LOCK_CHECK: bool = cfg!(any(debug_assertions, feature = "lock-check"));

/// While this lives, a lock-order violation or a lock held across a blocking call on this
/// thread panics (debug builds) instead of aborting the process: for a test that provokes one
/// on purpose (`should_panic`, `catch_unwind`). Only this thread: a violation on any other
/// still aborts. A release build with `lock-check` aborts regardless.
#[must_use = "violations are expected only while the guard lives"]
#[derive(Debug)]
pub struct ExpectViolations {
    /// Not Send: the expectation is this thread's.
    _thread: std::marker::PhantomData<*const ()>,
}

/// A test expects a violation on this thread ([`ExpectViolations`]).
pub fn expect_violations() -> ExpectViolations {
    imp::expecting(true);
    ExpectViolations {
        _thread: std::marker::PhantomData,
    }
}

impl Drop for ExpectViolations {
    fn drop(&mut self) {
        imp::expecting(false);
    }
}

/// This thread holds one checked lock for as long as this lives; it also times the hold for
/// [`lock_stats`](super::lock_stats).
#[derive(Debug)]
pub(crate) struct Held {
    #[cfg(any(debug_assertions, feature = "lock-check"))]
    id: u64,
    /// Where its release is counted (this thread's shard of the statistics, its level).
    counters: &'static super::stats::Counters,
    /// When it was taken, in [`crate::cycles`] ticks (a cheap clock: this is on every lock).
    since: u64,
}

impl Held {
    /// Check the order for a lock of `level` about to be taken (fails on a violation, before
    /// blocking on the lock, so an inversion is a panic or an abort and not a deadlock).
    #[inline]
    #[track_caller]
    pub(crate) fn check(level: u32, name: &'static str) {
        imp::check_acquire(level, name);
    }

    /// The lock was taken (`contended`: another thread held it first): record it.
    #[inline]
    #[track_caller]
    pub(crate) fn acquired(level: u32, name: &'static str, contended: bool) -> Self {
        let _id = imp::push(level, name);
        let counters = super::stats::acquired(level, name, contended);
        Self {
            #[cfg(any(debug_assertions, feature = "lock-check"))]
            id: _id,
            counters,
            since: crate::cycles::now(),
        }
    }
}

impl Drop for Held {
    #[inline]
    fn drop(&mut self) {
        #[cfg(any(debug_assertions, feature = "lock-check"))]
        imp::pop(self.id);
        super::stats::released(self.counters, crate::cycles::now().saturating_sub(self.since));
    }
}

/// The checked locks this thread holds now, as (name, level), oldest first. Always empty
/// without the runtime checker, where nothing is tracked.
pub fn held_locks() -> Vec<(&'static str, u32)> {
    imp::held()
}

/// Whether this thread holds no checked lock, without building a list: for a caller that may
/// take a root token only then (a simulated doorbell's writer running the device's engine,
/// `boards::sim`). `false` when the checker cannot read its record. Always `true` without the
/// runtime checker, where nothing is tracked.
pub fn no_checked_lock_held() -> bool {
    imp::none_held()
}

/// Every (held → taken) pair of lock names observed in this process so far (debug and test
/// builds; empty in release): the real nesting of the code, to compare with docs/locking.md.
pub fn observed_edges() -> Vec<(&'static str, &'static str)> {
    imp::observed_edges()
}

/// Fails if this thread holds any checked lock: call it before every blocking call (an ioctl,
/// a wait on the device, a channel receive, a sleep, a join). `what` names the call in the
/// message. Panics in debug and test builds, logs and aborts in release builds with the
/// `lock-check` feature, and is free without it.
///
/// # Panics
/// A violation aborts the process (docs/locking.md; a panic where the thread holds
/// [`expect_violations`](crate::locks::expect_violations)), with the runtime checker: when a checked lock is held.
#[track_caller]
#[inline]
pub fn assert_no_locks_held(what: &str) {
    imp::assert_none_held(what);
}
