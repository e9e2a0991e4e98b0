//! Lock statistics, always on: for every lock level, how often it was taken, how often a
//! thread found it held and had to wait, and the longest hold. Counted per level (a level is
//! one kind of lock: `frontend.cmd_table`, `sgv.pool`...) with relaxed atomics, plus one read
//! of a cheap clock ([`crate::cycles`]: the TSC where the kernel trusts it) at acquisition and
//! one at release; the bench measures what that costs per command.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::OnceLock;
use std::time::Duration;

/// Levels counted; a level beyond is counted in the last slot.
const SLOTS: usize = 32;

struct Slot {
    name: OnceLock<&'static str>,
    acquisitions: AtomicU64,
    contended: AtomicU64,
    /// In [`crate::cycles`] ticks; converted when read.
    longest_hold_ticks: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)] // the array initializer: each slot is its own
const EMPTY: Slot = Slot {
    name: OnceLock::new(),
    acquisitions: AtomicU64::new(0),
    contended: AtomicU64::new(0),
    longest_hold_ticks: AtomicU64::new(0),
};

static SLOTS_TABLE: [Slot; SLOTS] = [EMPTY; SLOTS];

fn slot(level: u32) -> &'static Slot {
    &SLOTS_TABLE[(level as usize).min(SLOTS - 1)]
}

/// A lock of `level` was taken.
#[inline]
pub(crate) fn acquired(level: u32, name: &'static str, contended: bool) {
    let s = slot(level);
    s.name.get_or_init(|| name);
    s.acquisitions.fetch_add(1, Ordering::Relaxed);
    if contended {
        s.contended.fetch_add(1, Ordering::Relaxed);
    }
}

/// A lock of `level` was released after `held_ticks` ([`crate::cycles`] ticks).
#[inline]
pub(crate) fn released(level: u32, held_ticks: u64) {
    slot(level)
        .longest_hold_ticks
        .fetch_max(held_ticks, Ordering::Relaxed);
}

/// The figures of one lock level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockStat {
    /// The lock's name (its level's).
    pub name: &'static str,
    /// Its level.
    pub level: u32,
    /// Times taken.
    pub acquisitions: u64,
    /// Of those, times the taker found it held by another thread and waited.
    pub contended: u64,
    /// The longest time it was held.
    pub longest_hold: Duration,
}

/// The figures of every lock level taken at least once in this process, by level.
pub fn lock_stats() -> Vec<LockStat> {
    SLOTS_TABLE
        .iter()
        .enumerate()
        .filter_map(|(level, s)| {
            Some(LockStat {
                name: s.name.get().copied()?,
                level: level as u32,
                acquisitions: s.acquisitions.load(Ordering::Relaxed),
                contended: s.contended.load(Ordering::Relaxed),
                longest_hold: crate::cycles::to_duration(s.longest_hold_ticks.load(Ordering::Relaxed)),
            })
        })
        .collect()
}
