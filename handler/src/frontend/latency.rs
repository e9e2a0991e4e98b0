//! EXEC latency as a fixed log-linear histogram, and the per-worker figures behind
//! [`super::FrontendStats`]' per-command counters.
//!
//! # Buckets
//! Values are nanoseconds. Bucket 0 holds everything below 1024 ns. Above, every power of two
//! `[2^k, 2^(k+1))` for `k` in 10..=35 (1.02 µs .. 68.7 s) is split into 4 equal sub-buckets,
//! so a bucket's upper bound is at most 5/4 of its lower bound. The last bucket holds
//! everything from 2^36 ns (68.7 s) up. A percentile is reported as the upper bound of the
//! bucket it falls in: never below the true value and at most 25% above it (bucket 0: at most
//! 1.024 µs).
//!
//! # Cost on the I/O path
//! Each worker owns one [`WorkerFigures`] on its own cache lines, and is its only writer: an
//! update is a relaxed load and a relaxed store (no read-modify-write, no lock prefix, no
//! contention); readers ([`super::Frontend::stats`]) load relaxed and sum over workers. A
//! reader may see a command's count before its bytes or latency: figures are monotonic, not a
//! consistent cut, which is all rates and percentiles over seconds need.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Sub-buckets per power of two.
const SUB: usize = 4;
/// log2 of the first bucket boundary (1024 ns).
const FIRST_SHIFT: u32 = 10;
/// log2 of the last finite boundary (2^36 ns = 68.7 s).
const LAST_SHIFT: u32 = 36;
/// Number of buckets: one below 1024 ns, `SUB` per octave, one overflow.
pub const LATENCY_BUCKETS: usize = 1 + (LAST_SHIFT - FIRST_SHIFT) as usize * SUB + 1;

/// The bucket of a latency of `ns` nanoseconds.
fn bucket_of(ns: u64) -> usize {
    if ns < 1 << FIRST_SHIFT {
        return 0;
    }
    let k = 63 - ns.leading_zeros();
    if k >= LAST_SHIFT {
        return LATENCY_BUCKETS - 1;
    }
    // The two bits under the leading one pick the quarter of the octave.
    let sub = ((ns >> (k - 2)) & (SUB as u64 - 1)) as usize;
    1 + (k - FIRST_SHIFT) as usize * SUB + sub
}

/// Exclusive upper bound of bucket `index` in ns; `None` for the overflow bucket.
fn upper_ns(index: usize) -> Option<u64> {
    if index == 0 {
        return Some(1 << FIRST_SHIFT);
    }
    if index >= LATENCY_BUCKETS - 1 {
        return None;
    }
    let k = FIRST_SHIFT + ((index - 1) / SUB) as u32;
    let sub = ((index - 1) % SUB) as u64;
    Some((SUB as u64 + sub + 1) << (k - 2))
}

/// Lower bound of bucket `index` in ns.
fn lower_ns(index: usize) -> u64 {
    match index {
        0 => 0,
        i => upper_ns(i - 1).unwrap_or(u64::MAX),
    }
}

/// A snapshot of EXEC latencies (see the module doc for the buckets and their precision).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct LatencyHistogram {
    counts: [u64; LATENCY_BUCKETS],
    sum_ns: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            counts: [0; LATENCY_BUCKETS],
            sum_ns: 0,
        }
    }
}

impl std::fmt::Debug for LatencyHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencyHistogram")
            .field("count", &self.count())
            .field("sum", &self.sum())
            .field("p50", &self.percentile(0.5))
            .field("p99", &self.percentile(0.99))
            .finish()
    }
}

impl LatencyHistogram {
    /// Add one latency (tests, and merging figures built elsewhere).
    pub fn record(&mut self, latency: Duration) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.counts[bucket_of(ns)] += 1;
        self.sum_ns = self.sum_ns.saturating_add(ns);
    }

    /// Add every count of `other`.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a = a.saturating_add(*b);
        }
        self.sum_ns = self.sum_ns.saturating_add(other.sum_ns);
    }

    /// Latencies recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Sum of the latencies recorded (exact, not bucketed).
    pub fn sum(&self) -> Duration {
        Duration::from_nanos(self.sum_ns)
    }

    /// The `q`-quantile (0.0..=1.0), as the upper bound of its bucket (at most 25% above the
    /// true value; the overflow bucket reports its lower bound, 68.7 s). `None` when empty.
    pub fn percentile(&self, q: f64) -> Option<Duration> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        let q = if q.is_nan() { 1.0 } else { q.clamp(0.0, 1.0) };
        // The rank of the value wanted, 1-based: the smallest with cumulative >= q * count.
        let rank = ((q * count as f64).ceil() as u64).clamp(1, count);
        let mut seen = 0;
        for (index, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(Duration::from_nanos(upper_ns(index).unwrap_or(lower_ns(index))));
            }
        }
        None
    }

    /// Upper bound of the highest non-empty bucket (the overflow bucket: its lower bound).
    pub fn max_bucket(&self) -> Option<Duration> {
        let index = self.counts.iter().rposition(|&n| n > 0)?;
        Some(Duration::from_nanos(upper_ns(index).unwrap_or(lower_ns(index))))
    }

    /// Every bucket as (exclusive upper bound, cumulative count up to it), ascending; the last
    /// (overflow) bucket's bound is `Duration::MAX` (Prometheus' `+Inf`).
    pub fn buckets(&self) -> impl Iterator<Item = (Duration, u64)> + '_ {
        let mut cumulative = 0u64;
        self.counts.iter().enumerate().map(move |(index, &n)| {
            cumulative += n;
            let bound = upper_ns(index).map_or(Duration::MAX, Duration::from_nanos);
            (bound, cumulative)
        })
    }

    /// What was recorded since `earlier` (a snapshot of the same figures taken before): the
    /// histogram of a window. Counts that went backwards (a frontend restarted) give 0.
    pub fn delta(&self, earlier: &LatencyHistogram) -> LatencyHistogram {
        let mut out = *self;
        for (a, b) in out.counts.iter_mut().zip(earlier.counts.iter()) {
            *a = a.saturating_sub(*b);
        }
        out.sum_ns = self.sum_ns.saturating_sub(earlier.sum_ns);
        out
    }
}

/// Which way an EXEC moved data, for the per-direction figures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    /// No data, or another direction (counted in `other_commands`).
    Other,
    /// Data to the initiator.
    Read,
    /// Data from the initiator (BIDI counts as a write).
    Write,
}

/// What a worker counts per message or per call on the command path (the rest of
/// [`super::Counters`] counts rare events and stays shared).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tally {
    /// An EXEC arrived.
    Exec,
    /// An ALLOC_MEM arrived.
    AllocMem,
    /// An ON_FREE_CMD arrived.
    OnFree,
    /// An ON_CACHED_MEM_FREE arrived.
    OnCachedMemFree,
    /// A PARSE arrived.
    Parse,
    /// One ioctl call (REPLY_AND_GET_MULTI).
    Ioctl,
    /// A REPLY_AND_GET_MULTI asked for fewer commands than its buffer holds. Keep it last:
    /// [`TALLIES`] counts up to it.
    CappedFetch,
}

/// Number of [`Tally`] kinds (the last one's index and one).
const TALLIES: usize = Tally::CappedFetch as usize + 1;

/// One worker's figures. Aligned so that two workers never share a cache line (the hot path
/// must not bounce lines between cores).
#[repr(align(128))]
pub(crate) struct WorkerFigures {
    read_commands: AtomicU64,
    write_commands: AtomicU64,
    other_commands: AtomicU64,
    read_bytes: AtomicU64,
    write_bytes: AtomicU64,
    sum_ns: AtomicU64,
    counts: [AtomicU64; LATENCY_BUCKETS],
    /// Returns from the worker's wait in poll (woken, or its bound passed).
    wakeups: AtomicU64,
    lingers: AtomicU64,
    linger_looks: AtomicU64,
    completion_polls: AtomicU64,
    /// By [`Tally`].
    tallies: [AtomicU64; TALLIES],
}

impl Default for WorkerFigures {
    fn default() -> Self {
        Self {
            read_commands: AtomicU64::new(0),
            write_commands: AtomicU64::new(0),
            other_commands: AtomicU64::new(0),
            read_bytes: AtomicU64::new(0),
            write_bytes: AtomicU64::new(0),
            sum_ns: AtomicU64::new(0),
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            wakeups: AtomicU64::new(0),
            lingers: AtomicU64::new(0),
            linger_looks: AtomicU64::new(0),
            completion_polls: AtomicU64::new(0),
            tallies: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// Add `n` to a counter this thread alone writes: a relaxed load and store (no atomic
/// read-modify-write is needed with a single writer, and it costs a locked instruction).
#[inline]
fn bump(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

impl WorkerFigures {
    /// An EXEC answered with `bytes` transferred. Called by the owning worker only.
    #[inline]
    pub(crate) fn answered(&self, direction: Direction, bytes: u64) {
        match direction {
            Direction::Read => {
                bump(&self.read_commands, 1);
                bump(&self.read_bytes, bytes);
            }
            Direction::Write => {
                bump(&self.write_commands, 1);
                bump(&self.write_bytes, bytes);
            }
            Direction::Other => bump(&self.other_commands, 1),
        }
    }

    /// An EXEC's reply was handed to the kernel `latency` after it arrived. Called by the
    /// owning worker only.
    #[inline]
    pub(crate) fn latency(&self, latency: Duration) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        bump(&self.counts[bucket_of(ns)], 1);
        bump(&self.sum_ns, ns);
    }

    /// One more of `what`. Called by the owning worker only.
    #[inline]
    pub(crate) fn tally(&self, what: Tally) {
        bump(&self.tallies[what as usize], 1);
    }

    /// The worker came back from its wait. Called by the owning worker only.
    pub(crate) fn woke(&self) {
        bump(&self.wakeups, 1);
    }

    /// A linger begins. Called by the owning worker only.
    pub(crate) fn linger_began(&self) {
        bump(&self.lingers, 1);
    }

    /// One look at the fd while lingering. Called by the owning worker only.
    pub(crate) fn lingered(&self) {
        bump(&self.linger_looks, 1);
    }

    /// One look at the store's completions before sleeping on them. Called by the owning
    /// worker only.
    pub(crate) fn polled_completions(&self) {
        bump(&self.completion_polls, 1);
    }

    /// Add this worker's figures to `out` (reads, relaxed).
    pub(crate) fn add_to(&self, out: &mut super::FrontendStats) {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        out.read_commands += get(&self.read_commands);
        out.write_commands += get(&self.write_commands);
        out.other_commands += get(&self.other_commands);
        out.read_bytes += get(&self.read_bytes);
        out.write_bytes += get(&self.write_bytes);
        out.wakeups += get(&self.wakeups);
        out.lingers += get(&self.lingers);
        out.linger_looks += get(&self.linger_looks);
        out.completion_polls += get(&self.completion_polls);
        let tally = |what: Tally| get(&self.tallies[what as usize]);
        out.exec += tally(Tally::Exec);
        out.alloc_mem += tally(Tally::AllocMem);
        out.on_free += tally(Tally::OnFree);
        out.on_cached_mem_free += tally(Tally::OnCachedMemFree);
        out.parse += tally(Tally::Parse);
        out.ioctls += tally(Tally::Ioctl);
        out.capped_fetches += tally(Tally::CappedFetch);
        let mut h = LatencyHistogram::default();
        for (a, b) in h.counts.iter_mut().zip(self.counts.iter()) {
            *a = get(b);
        }
        h.sum_ns = get(&self.sum_ns);
        out.latency.merge(&h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries_are_contiguous_and_within_a_quarter() {
        for index in 1..LATENCY_BUCKETS - 1 {
            let lo = lower_ns(index);
            let hi = upper_ns(index).unwrap();
            assert!(hi > lo, "bucket {index}");
            assert!(hi * 4 <= lo * 5, "bucket {index}: {lo}..{hi} wider than 25%");
            assert_eq!(bucket_of(lo), index);
            assert_eq!(bucket_of(hi - 1), index);
            assert_eq!(bucket_of(hi), index + 1);
        }
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(1023), 0);
        assert_eq!(bucket_of(u64::MAX), LATENCY_BUCKETS - 1);
        assert_eq!(upper_ns(LATENCY_BUCKETS - 2), Some(1 << 36));
    }

    #[test]
    fn percentiles_of_known_data_are_within_25_percent() {
        let mut h = LatencyHistogram::default();
        assert_eq!(h.percentile(0.5), None);
        // 1..=1000 µs, one each.
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        assert_eq!(h.count(), 1000);
        assert_eq!(h.sum(), Duration::from_micros(500_500));
        for (q, truth) in [(0.5, 500.0), (0.99, 990.0), (0.999, 999.0), (1.0, 1000.0)] {
            let got = h.percentile(q).unwrap().as_secs_f64() * 1e6;
            assert!(
                got >= truth && got <= truth * 1.25,
                "p{q}: {got} µs vs {truth} µs"
            );
        }
        let max = h.max_bucket().unwrap().as_secs_f64() * 1e6;
        assert!((1000.0..=1250.0).contains(&max), "{max}");
        // Cumulative buckets end at the count, with +Inf last.
        let last = h.buckets().last().unwrap();
        assert_eq!(last, (Duration::MAX, 1000));
        assert!(h
            .buckets()
            .zip(h.buckets().skip(1))
            .all(|(a, b)| a.0 < b.0 && a.1 <= b.1));
    }

    #[test]
    fn delta_is_the_window() {
        let mut earlier = LatencyHistogram::default();
        for _ in 0..100 {
            earlier.record(Duration::from_micros(10));
        }
        let mut now = earlier;
        for _ in 0..10 {
            now.record(Duration::from_millis(5));
        }
        let window = now.delta(&earlier);
        assert_eq!(window.count(), 10);
        assert_eq!(window.sum(), Duration::from_millis(50));
        let p50 = window.percentile(0.5).unwrap();
        assert!(p50 >= Duration::from_millis(5) && p50 <= Duration::from_micros(6250));
        // Backwards counts (a restart) give an empty window, not a wrap.
        assert_eq!(earlier.delta(&now).count(), 0);
    }

    #[test]
    fn worker_figures_sum_into_stats() {
        let a = WorkerFigures::default();
        let b = WorkerFigures::default();
        a.answered(Direction::Read, 4096);
        a.latency(Duration::from_micros(20));
        b.answered(Direction::Write, 512);
        b.answered(Direction::Other, 0);
        b.latency(Duration::from_micros(40));
        a.tally(Tally::Exec);
        b.tally(Tally::Exec);
        b.tally(Tally::Ioctl);
        let mut stats = super::super::FrontendStats::default();
        a.add_to(&mut stats);
        b.add_to(&mut stats);
        assert_eq!((stats.read_commands, stats.read_bytes), (1, 4096));
        assert_eq!((stats.write_commands, stats.write_bytes), (1, 512));
        assert_eq!(stats.other_commands, 1);
        assert_eq!(stats.latency.count(), 2);
        assert_eq!(stats.latency.sum(), Duration::from_micros(60));
        assert_eq!((stats.exec, stats.ioctls, stats.parse), (2, 1, 0));
    }
}
