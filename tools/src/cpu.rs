//! CPU time of this process (all threads), from /proc/self/stat.

use std::time::Duration;

/// User + system CPU time consumed so far, or `None` where /proc is unavailable.
pub fn process_cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every Linux architecture scst-accel supports.
    Some(Duration::from_millis((utime + stime) * 10))
}

/// CPU time of this process's threads whose name starts with `prefix` (e.g. the frontend's
/// `scst-worker-` threads), from /proc/self/task/*/stat; `None` where /proc is unavailable.
pub fn threads_cpu_time(prefix: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    for entry in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if !stat[open + 1..close].starts_with(prefix) {
            continue;
        }
        let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        total += Duration::from_millis((ticks(11) + ticks(12)) * 10);
    }
    Some(total)
}

/// Like [`threads_cpu_time`], in nanoseconds where the kernel offers them (the first field of
/// /proc/self/task/*/schedstat, the time the scheduler ran the thread); in 10 ms ticks from
/// `stat` otherwise. Short measurements (the bench's handler layer) need the nanoseconds.
pub fn threads_cpu_time_precise(prefix: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    for entry in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let Ok(comm) = std::fs::read_to_string(entry.path().join("comm")) else {
            continue;
        };
        if !comm.trim_end().starts_with(prefix) {
            continue;
        }
        let ns = std::fs::read_to_string(entry.path().join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok());
        match ns {
            Some(ns) => total += Duration::from_nanos(ns),
            None => return threads_cpu_time(prefix),
        }
    }
    Some(total)
}

/// CPU time of the simulated boards' threads in this process (the SCA-1 simulator's engines,
/// `sim<N>-q<Q>`, and the NVMe simulator's workers, `nvme-sim<N>-nvme<W>`): on a real board
/// that work is the device's, not the host's. Nanoseconds where the kernel offers them
/// ([`threads_cpu_time_precise`]); zero when no board is simulated.
pub fn simulated_device_cpu_time() -> Option<Duration> {
    Some(threads_cpu_time_precise("sim")? + threads_cpu_time_precise("nvme-sim")?)
}

/// CPU time of the calling thread, in nanoseconds (/proc/thread-self/schedstat); `None` where
/// the kernel does not offer it. Unlike the wall clock, time the thread spent preempted is not
/// in it: what a loop costs on a machine shared with other work.
pub fn thread_cpu_time() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    Some(Duration::from_nanos(
        text.split_whitespace().next()?.parse().ok()?,
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn cpu_time_grows_with_work() {
        let before = super::process_cpu_time().expect("/proc/self/stat readable");
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_millis(60) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        let after = super::process_cpu_time().expect("/proc/self/stat readable");
        assert!(after >= before, "{after:?} < {before:?} ({x})");
    }

    #[test]
    fn a_named_threads_precise_cpu_time_counts_its_work() {
        // Spin until the thread itself has run 20 ms (its own schedstat), however loaded the
        // machine: the named threads' figure must then hold at least that much.
        let worker = std::thread::Builder::new()
            .name("cpu-probe-busy".into())
            .spawn(|| {
                let own = || super::thread_cpu_time().expect("/proc/thread-self/schedstat");
                let start = own();
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
                let mut x = 0u64;
                while own() - start < std::time::Duration::from_millis(20)
                    && std::time::Instant::now() < deadline
                {
                    for _ in 0..10_000 {
                        x = x.wrapping_add(std::hint::black_box(1));
                    }
                }
                let ran = own();
                let named = super::threads_cpu_time_precise("cpu-probe-busy").expect("/proc readable");
                (x, ran, named)
            })
            .unwrap();
        let (_, ran, named) = worker.join().unwrap();
        assert!(
            ran >= std::time::Duration::from_millis(20),
            "spun {ran:?} in 60 s"
        );
        assert!(named >= ran, "named threads {named:?} < the thread's own {ran:?}");
        assert_eq!(
            super::threads_cpu_time_precise("no-such-thread-name"),
            Some(std::time::Duration::ZERO)
        );
    }
}
