//! The runtime half of the checker, compiled in debug and test builds only
//! (`cfg(debug_assertions)`): a per-thread stack of the checked locks held, asserted on every
//! acquisition and at every blocking point, and a global record of the (held → taken) edges
//! observed, in the manner of tracing-mutex.
//!
//! It catches what the types cannot see: acquisitions through
//! `lock_unchecked_at_runtime` (callbacks, trait objects), a second [`LockToken::root`] made
//! while a lock is held, and locks held across blocking calls. In release builds every function
//! here is an empty inline function and a guard carries nothing extra.
//!
//! [`LockToken::root`]: super::LockToken::root

#[cfg(debug_assertions)]
mod imp {
    use std::cell::Cell;
    use std::cell::RefCell;
    use std::collections::BTreeSet;
    use std::sync::Mutex;
    use std::sync::PoisonError;

    /// One lock this thread holds.
    #[derive(Clone, Copy, Debug)]
    struct Entry {
        id: u64,
        level: u32,
        name: &'static str,
    }

    // Nothing depends on when these are destroyed: they describe only their own thread, and a
    // thread holds no guard once its closure has returned (issue 16: thread-local destructors
    // may run after a scope's implicit join or `is_finished` reported the thread done).
    thread_local! {
        static HELD: RefCell<Vec<Entry>> = const { RefCell::new(Vec::new()) };
        static NEXT_ID: Cell<u64> = const { Cell::new(1) };
    }

    /// Edges observed by any thread, by lock name. A plain std mutex: it is the checker's own,
    /// never held while anything else is taken.
    static EDGES: Mutex<BTreeSet<(&'static str, &'static str)>> = Mutex::new(BTreeSet::new());

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

    /// Panics unless every lock this thread holds is of a level strictly below `level`.
    pub(crate) fn check_acquire(level: u32, name: &'static str) {
        if let Some(held) = violation(level) {
            panic!(
                "lock order violation: taking `{name}` (level {level}) while holding `{}` (level {}) \
                 (docs/locking.md: a lock may only be taken while holding locks of lower levels)",
                held.name, held.level
            );
        }
    }

    /// Record that this thread now holds the lock; returns the id to release it with.
    pub(crate) fn push(level: u32, name: &'static str) -> u64 {
        let id = NEXT_ID
            .try_with(|next| {
                let id = next.get();
                next.set(id + 1);
                id
            })
            .unwrap_or(0);
        let below: Vec<&'static str> = HELD
            .try_with(|held| match held.try_borrow_mut() {
                Ok(mut held) => {
                    let below = held.iter().map(|e| e.name).collect();
                    held.push(Entry { id, level, name });
                    below
                }
                Err(_) => Vec::new(),
            })
            .unwrap_or_default();
        if !below.is_empty() {
            let mut edges = EDGES.lock().unwrap_or_else(PoisonError::into_inner);
            for held in below {
                edges.insert((held, name));
            }
        }
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

    /// Every (held → taken) pair seen so far, by name.
    pub(crate) fn observed_edges() -> Vec<(&'static str, &'static str)> {
        EDGES
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .copied()
            .collect()
    }
}

#[cfg(not(debug_assertions))]
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
    pub(crate) fn observed_edges() -> Vec<(&'static str, &'static str)> {
        Vec::new()
    }
}

pub(crate) use imp::check_acquire;
#[cfg(debug_assertions)]
pub(crate) use imp::pop;
pub(crate) use imp::push;

/// This thread holds one checked lock for as long as this lives (empty in release builds).
#[derive(Debug)]
pub(crate) struct Held {
    #[cfg(debug_assertions)]
    id: u64,
}

impl Held {
    /// Check the order for a lock of `level` about to be taken (panics on a violation, before
    /// blocking on the lock, so an inversion is a panic and not a deadlock).
    #[inline]
    pub(crate) fn check(level: u32, name: &'static str) {
        check_acquire(level, name);
    }

    /// The lock was taken: record it.
    #[inline]
    pub(crate) fn acquired(level: u32, name: &'static str) -> Self {
        let _id = push(level, name);
        Self {
            #[cfg(debug_assertions)]
            id: _id,
        }
    }
}

impl Drop for Held {
    #[inline]
    fn drop(&mut self) {
        #[cfg(debug_assertions)]
        pop(self.id);
    }
}

/// The checked locks this thread holds now, as (name, level), oldest first. Always empty in
/// release builds, where nothing is tracked.
pub fn held_locks() -> Vec<(&'static str, u32)> {
    imp::held()
}

/// Every (held → taken) pair of lock names observed in this process so far (debug and test
/// builds; empty in release): the real nesting of the code, to compare with docs/locking.md.
pub fn observed_edges() -> Vec<(&'static str, &'static str)> {
    imp::observed_edges()
}

/// Panics (debug and test builds) if this thread holds any checked lock: call it before every
/// blocking call (an ioctl, a wait on the device, a channel receive, a sleep, a join). `what`
/// names the call in the message. Free in release builds.
///
/// # Panics
/// In debug and test builds, when a checked lock is held.
#[track_caller]
#[inline]
pub fn assert_no_locks_held(what: &str) {
    #[cfg(debug_assertions)]
    {
        let held = imp::held();
        if let Some((name, level)) = held.last() {
            let all: Vec<String> = held.iter().map(|(n, l)| format!("`{n}` (level {l})")).collect();
            panic!(
                "blocking call `{what}` while holding `{name}` (level {level}); held: {}. \
                 No lock may be held across a blocking call (docs/locking.md)",
                all.join(", ")
            );
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = what;
}
