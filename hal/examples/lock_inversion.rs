//! Takes SCST's historical inversion (the SGV pool lock, then the command table) through the
//! runtime-checked path, as a callback would. Built in release with `--features lock-check`
//! (`.ci/run` does), the checker must log both acquisition sites and abort (exit by SIGABRT)
//! instead of going on to a deadlock; without the checker the inversion goes unnoticed here
//! (one thread cannot deadlock itself on two locks) and the program says so and exits 1.

use scst_accel_hal::locks::levels;
use scst_accel_hal::locks::OrderedMutex;
use scst_accel_hal::locks::LOCK_CHECK;

fn main() {
    let pool = OrderedMutex::<u32, levels::SgvPool>::new(0);
    let table = OrderedMutex::<u32, levels::CmdTable>::new(0);
    let _pool = pool.lock_unchecked_at_runtime();
    let _table = table.lock_unchecked_at_runtime();
    eprintln!("inversion not caught (runtime lock checker compiled in: {LOCK_CHECK})");
    std::process::exit(1);
}
