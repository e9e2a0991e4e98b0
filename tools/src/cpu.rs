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
    Some(ThreadsSample::take(prefix)?.total())
}

/// The CPU time of each of this process's threads whose name starts with a prefix, by thread
/// id: a window's CPU is the difference of two samples ([`ThreadsSample::since`]), which is
/// only a measurement when every thread of the first sample is still there at the second (the
/// CPU of a thread that exited in between is gone from /proc with it).
#[derive(Clone, Debug, Default)]
pub struct ThreadsSample {
    by_tid: Vec<(u32, Duration)>,
}

impl ThreadsSample {
    /// Sample the threads named `prefix*`, in nanoseconds (schedstat) where the kernel offers
    /// them, else in 10 ms ticks ([`threads_cpu_time`]'s source); `None` where /proc is
    /// unavailable. A thread that exits during the scan is left out (its schedstat is gone),
    /// not a reason to fall back to ticks for all of them.
    pub fn take(prefix: &str) -> Option<Self> {
        let precise = std::fs::metadata("/proc/thread-self/schedstat").is_ok();
        let mut by_tid = Vec::new();
        for entry in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
            let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(comm) = std::fs::read_to_string(entry.path().join("comm")) else {
                continue;
            };
            if !comm.trim_end().starts_with(prefix) {
                continue;
            }
            let cpu = if precise {
                std::fs::read_to_string(entry.path().join("schedstat"))
                    .ok()
                    .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                    .map(Duration::from_nanos)
            } else {
                ticks_of(&entry.path())
            };
            if let Some(cpu) = cpu {
                by_tid.push((tid, cpu));
            }
        }
        Some(Self { by_tid })
    }

    /// CPU of every sampled thread.
    pub fn total(&self) -> Duration {
        self.by_tid.iter().map(|&(_, cpu)| cpu).sum()
    }

    /// The CPU the threads of `self` and those started since spent between `self` and `now`,
    /// or `None` when a thread of `self` is not in `now` (it exited: its CPU cannot be known).
    pub fn since(&self, now: &Self) -> Option<Duration> {
        let mut total = Duration::ZERO;
        for &(tid, before) in &self.by_tid {
            let &(_, after) = now.by_tid.iter().find(|&&(t, _)| t == tid)?;
            total += after.saturating_sub(before);
        }
        let new = now
            .by_tid
            .iter()
            .filter(|(tid, _)| !self.by_tid.iter().any(|(t, _)| t == tid))
            .map(|&(_, cpu)| cpu);
        Some(total + new.sum::<Duration>())
    }
}

/// User + system time of the thread whose /proc directory is `task`, in 10 ms ticks.
fn ticks_of(task: &std::path::Path) -> Option<Duration> {
    let stat = std::fs::read_to_string(task.join("stat")).ok()?;
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    Some(Duration::from_millis((ticks(11)? + ticks(12)?) * 10))
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

    #[test]
    fn a_window_in_which_a_sampled_thread_exited_is_no_measurement() {
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let (named, started) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("cpu-probe-exits".into())
            .spawn(move || {
                // The name is set by the thread itself as it starts: sample after that.
                named.send(()).unwrap();
                let _ = wait.recv();
            })
            .unwrap();
        started.recv().unwrap();
        let before = super::ThreadsSample::take("cpu-probe-exits").expect("/proc readable");
        assert_eq!(before.by_tid.len(), 1, "{before:?}");
        let still = super::ThreadsSample::take("cpu-probe-exits").expect("/proc readable");
        assert!(before.since(&still).is_some(), "the thread is still there");
        go.send(()).unwrap();
        thread.join().unwrap();
        let after = super::ThreadsSample::take("cpu-probe-exits").expect("/proc readable");
        assert_eq!(before.since(&after), None, "{before:?} -> {after:?}");
    }
}
