//! Lock statistics, always on: for every lock level, how often it was taken, how often a
//! thread found it held and had to wait, and the longest hold. Counted per level (a level is
//! one kind of lock: `frontend.cmd_table`, `sgv.pool`...) with relaxed atomics, plus one read
//! of a cheap clock ([`crate::cycles`]: the TSC where the kernel trusts it) at acquisition and
//! one at release; the bench measures what that costs per command.
//!
//! Each thread counts in its own shard of the counters (threads are given shards in turn;
//! beyond [`SHARDS`] threads, shards are shared), and [`lock_stats`] adds the shards up. One
//! table written by every thread was a cache line that each acquisition and release of every
//! lock pulled from whichever CPU had touched it last: two threads each taking a mutex of its
//! own paid 280-305 ns per hold for it, 49-51 ns now (`hal/examples/lock_cost.rs`). The longest
//! hold is written only when a hold beats it, so a release reads that figure and leaves its
//! line shared. docs/performance.md, "Lock statistics in the thread's own cache line".

use std::cell::Cell;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::sync::OnceLock;
use std::time::Duration;

/// Levels counted; a level beyond is counted in the last slot.
const SLOTS: usize = 32;
/// Shards of the counters: one per thread for the first this many threads of the process.
const SHARDS: usize = 16;

/// One level's counters in one shard: what a guard updates when its lock is released.
#[derive(Debug)]
pub(crate) struct Counters {
    acquisitions: AtomicU64,
    contended: AtomicU64,
    /// In [`crate::cycles`] ticks; converted when read.
    longest_hold_ticks: AtomicU64,
}

/// Every level's counters of the threads given this shard, on cache lines of their own.
#[repr(align(128))]
struct Shard([Counters; SLOTS]);

#[allow(clippy::declare_interior_mutable_const)] // the array initializers: each is its own
const EMPTY: Counters = Counters {
    acquisitions: AtomicU64::new(0),
    contended: AtomicU64::new(0),
    longest_hold_ticks: AtomicU64::new(0),
};
#[allow(clippy::declare_interior_mutable_const)]
const EMPTY_SHARD: Shard = Shard([EMPTY; SLOTS]);
#[allow(clippy::declare_interior_mutable_const)]
const NO_NAME: OnceLock<&'static str> = OnceLock::new();

static TABLE: [Shard; SHARDS] = [EMPTY_SHARD; SHARDS];
/// Each level's name, set by its first acquisition and only read after: a line no hot path
/// writes.
static NAMES: [OnceLock<&'static str>; SLOTS] = [NO_NAME; SLOTS];
/// The shard the next thread to count is given.
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's shard, chosen at its first count (`usize::MAX` until then). Plain data
    /// with no destructor: readable for the whole life of the thread, its exit included.
    static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn slot_index(level: u32) -> usize {
    (level as usize).min(SLOTS - 1)
}

/// This thread's counters of `level`.
fn counters(level: u32) -> &'static Counters {
    let shard = SHARD
        .try_with(|shard| {
            if shard.get() == usize::MAX {
                shard.set(NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS);
            }
            shard.get()
        })
        .unwrap_or(0);
    &TABLE[shard].0[slot_index(level)]
}

/// A lock of `level` was taken: counted in this thread's shard, whose counters come back for
/// [`released`] (the guard keeps them, so the release looks nothing up).
#[inline]
pub(crate) fn acquired(level: u32, name: &'static str, contended: bool) -> &'static Counters {
    NAMES[slot_index(level)].get_or_init(|| name);
    let c = counters(level);
    c.acquisitions.fetch_add(1, Ordering::Relaxed);
    if contended {
        c.contended.fetch_add(1, Ordering::Relaxed);
    }
    c
}

/// The lock counted in `counters` ([`acquired`]) was released after `held_ticks`
/// ([`crate::cycles`] ticks).
#[inline]
pub(crate) fn released(counters: &Counters, held_ticks: u64) {
    let longest = &counters.longest_hold_ticks;
    // A read first: after the first holds almost none beats the longest, and a read leaves
    // the line shared where a `fetch_max` would take it for writing every time.
    if held_ticks > longest.load(Ordering::Relaxed) {
        longest.fetch_max(held_ticks, Ordering::Relaxed);
    }
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
    NAMES
        .iter()
        .enumerate()
        .filter_map(|(index, name)| {
            let shards = TABLE.iter().map(|shard| &shard.0[index]);
            let sum = |field: fn(&Counters) -> &AtomicU64| {
                shards
                    .clone()
                    .map(|c| field(c).load(Ordering::Relaxed))
                    .sum::<u64>()
            };
            let longest = shards
                .clone()
                .map(|c| c.longest_hold_ticks.load(Ordering::Relaxed))
                .max()
                .unwrap_or(0);
            Some(LockStat {
                name: name.get().copied()?,
                level: index as u32,
                acquisitions: sum(|c| &c.acquisitions),
                contended: sum(|c| &c.contended),
                longest_hold: crate::cycles::to_duration(longest),
            })
        })
        .collect()
}
