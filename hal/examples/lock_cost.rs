//! What one hold of a checked lock costs: `cargo run --release -p scst-accel-hal --features
//! lock-check --example lock_cost`. Takes and releases an uncontended [`OrderedMutex`] in a
//! loop, on one thread and then on two threads at once, each with its own mutex: the locks are
//! never shared, so any difference between the two lines is the bookkeeping every lock does
//! (the order checker's per-thread stack, the always-on [`lock_stats`] counters and hold
//! timing) pulling cache lines between CPUs. docs/performance.md, "Lock statistics in the
//! thread's own cache line".
//!
//! [`lock_stats`]: scst_accel_hal::locks::lock_stats

use std::time::Instant;

use scst_accel_hal::locks::levels;
use scst_accel_hal::locks::OrderedMutex;

const HOLDS: u64 = 5_000_000;

fn main() {
    println!("lock checker compiled in: {}", scst_accel_hal::locks::LOCK_CHECK);
    for threads in [1, 2] {
        let started = Instant::now();
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| {
                    let lock = OrderedMutex::<u64, levels::ScsiModePages>::new(0);
                    for _ in 0..HOLDS {
                        *lock.lock_unchecked_at_runtime() += 1;
                    }
                    std::hint::black_box(&lock);
                });
            }
        });
        let ns = started.elapsed().as_nanos() as f64 / HOLDS as f64;
        println!("{threads} thread(s), a mutex each: {ns:.1} ns per hold (take and release)");
    }
}
