//! A cheap clock for timing short intervals on hot paths: the lock statistics time every hold
//! of every lock, release builds included, and `Instant::now()` twice per acquisition cost about
//! 70 ns on this project's build host, more than the rest of a lock's bookkeeping together (the
//! simulated accelerator took some 35 locks per command through the loopback kernel then; about
//! 9 since). An RDTSC is about 8 ns there.
//!
//! On x86_64, when the kernel itself keeps time with the TSC (its clocksource is `tsc`, which it
//! only selects when the counter is invariant and synchronized across CPUs), a tick is one TSC
//! count read with RDTSC (no system call, no vDSO page); ticks become nanoseconds with a rate
//! calibrated once against the monotonic clock, when a figure is first asked for. Elsewhere
//! (another clocksource, another architecture) a tick is a nanosecond of `Instant`; so is it
//! under Miri, which has neither RDTSC nor the sysfs file (`docs/miri.md`).
// UNSAFETY: one RDTSC instruction.
#![allow(unsafe_code)]

use std::sync::OnceLock;
use std::time::Duration;
use std::time::Instant;

/// Where the kernel says which clocksource it uses.
const CLOCKSOURCE: &str = "/sys/devices/system/clocksource/clocksource0/current_clocksource";
/// How long the calibration compares the TSC with the monotonic clock.
const CALIBRATION: Duration = Duration::from_millis(2);

/// The clock behind [`now`], chosen once per process.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Source {
    /// The TSC (x86_64, kernel clocksource `tsc`).
    Tsc,
    /// Nanoseconds since [`epoch`].
    Monotonic,
}

fn source() -> Source {
    static SOURCE: OnceLock<Source> = OnceLock::new();
    *SOURCE.get_or_init(|| {
        let tsc = cfg!(all(target_arch = "x86_64", not(miri)))
            && std::fs::read_to_string(CLOCKSOURCE).is_ok_and(|s| s.trim() == "tsc");
        if tsc {
            Source::Tsc
        } else {
            Source::Monotonic
        }
    })
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

#[inline]
fn tsc() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: RDTSC reads the time-stamp counter into registers: no memory access, no
        // precondition, present on every x86_64 CPU.
        unsafe { core::arch::x86_64::_rdtsc() }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        0
    }
}

/// The current tick; subtract two with `saturating_sub` (a thread may move between CPUs).
#[inline]
pub fn now() -> u64 {
    match source() {
        Source::Tsc => tsc(),
        Source::Monotonic => u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(u64::MAX),
    }
}

/// Ticks per nanosecond (1 for the monotonic fallback).
fn rate() -> f64 {
    static RATE: OnceLock<f64> = OnceLock::new();
    *RATE.get_or_init(|| match source() {
        Source::Monotonic => 1.0,
        Source::Tsc => {
            // The median of a few windows: a preemption between a window's clock and counter
            // reads skews that window only.
            let mut rates: Vec<f64> = (0..CALIBRATION_WINDOWS).filter_map(|_| window_rate()).collect();
            rates.sort_by(f64::total_cmp);
            rates.get(rates.len() / 2).copied().unwrap_or(1.0)
        }
    })
}

/// Windows of the calibration.
const CALIBRATION_WINDOWS: usize = 5;

/// TSC ticks per nanosecond over one window of [`CALIBRATION`].
fn window_rate() -> Option<f64> {
    let (t0, c0) = (Instant::now(), tsc());
    while t0.elapsed() < CALIBRATION {
        std::hint::spin_loop();
    }
    let (c1, t1) = (tsc(), Instant::now());
    let ns = t1.duration_since(t0).as_nanos() as f64;
    let ticks = c1.saturating_sub(c0) as f64;
    (ns > 0.0 && ticks > 0.0).then_some(ticks / ns)
}

/// `ticks` as a duration.
pub fn to_duration(ticks: u64) -> Duration {
    Duration::from_nanos((ticks as f64 / rate()) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ticks converted back are nanoseconds, not counts: an interval measured in ticks inside
    /// one measured with `Instant` comes out within a factor of two of it (a unit error, ticks
    /// taken for nanoseconds at GHz rates, is off by more).
    #[test]
    fn ticks_convert_to_the_time_that_passed() {
        let _ = to_duration(0); // calibrate first, outside the interval
        let i0 = Instant::now();
        let t0 = now();
        std::thread::sleep(Duration::from_millis(20));
        let measured = to_duration(now().saturating_sub(t0));
        let real = i0.elapsed();
        assert!(measured <= real * 2, "{measured:?} for {real:?}");
        assert!(measured >= Duration::from_millis(10), "{measured:?} for {real:?}");
    }
}
