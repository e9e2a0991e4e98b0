//! Helpers shared by the tools' integration tests (each test binary includes what it uses).
// Each test binary compiles this module on its own and uses a part of it.
#![allow(dead_code)]

use std::path::Path;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use std::time::Instant;

/// A fresh directory of its own under cargo's scratch directory for integration tests.
pub fn scratch(prefix: &str, name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{prefix}-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Run the binary with `args` (bounded: it must end within two minutes): exit code, stdout,
/// stderr.
pub fn scst_accel(args: &[&str]) -> (Option<i32>, String, String) {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_scst-accel"))
        .args(args)
        .output()
        .expect("run scst-accel");
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "took {:?}",
        started.elapsed()
    );
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Whether this process runs as root (losetup needs it).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(2))
            == Some("0")
    })
}

/// A loop device over a file, detached on drop (a failing assertion included).
pub struct LoopDevice(pub PathBuf);

impl LoopDevice {
    /// Attach `backing`, with `sector_size`-byte logical blocks when given.
    ///
    /// # Errors
    /// Why it cannot be had here (not root, no losetup, no free loop device), for the skip.
    pub fn attach(backing: &Path, sector_size: Option<usize>) -> Result<Self, String> {
        if !is_root() {
            return Err("not root (losetup needs it)".into());
        }
        let mut cmd = Command::new("losetup");
        cmd.args(["--find", "--show"]);
        if let Some(size) = sector_size {
            cmd.args(["--sector-size", &size.to_string()]);
        }
        let out = cmd
            .arg(backing)
            .output()
            .map_err(|e| format!("cannot run losetup: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "losetup: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let lo = Self(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
        if !lo.0.exists() {
            return Err(format!("{} attached but has no device node here", lo.0.display()));
        }
        Ok(lo)
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}
