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
}
