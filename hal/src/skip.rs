//! Saying loudly that a test did not run. A test that returns early because the machine lacks
//! something (a device, a tool, root) calls [`test_skipped`]: the reason goes to stderr, which
//! cargo test shows only for failing tests, and is appended to the file named by
//! `SCST_ACCEL_SKIP_LOG`, which `.ci/run` prints after the suite, so no skip passes unseen.

use std::io::Write;

/// Report that `test` did not run, and why. Never fails: a log that cannot be written is
/// itself reported on stderr.
pub fn test_skipped(test: &str, reason: &str) {
    let line = format!("SKIPPED {test}: {reason}");
    eprintln!("{line}");
    let Some(path) = std::env::var_os("SCST_ACCEL_SKIP_LOG") else {
        return;
    };
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| writeln!(f, "{line}"));
    if let Err(e) = written {
        eprintln!(
            "cannot append to SCST_ACCEL_SKIP_LOG {}: {e}",
            path.to_string_lossy()
        );
    }
}
