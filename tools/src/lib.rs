//! scst-accel's service library: everything the `scst-accel` binary runs, usable from tests.
//!
//! - [`serve`], [`service`]: the appliance service (one process, many disks, systemd-native);
//! - [`config`]: the TOML configuration file and `check-config`;
//! - [`demo`], [`bench`](mod@bench), [`diag`]: the loopback demo/benchmark and diagnostics;
//! - [`backend`], [`disk`]: what stands behind a disk, and how it registers with SCST;
//! - [`status`], [`control`], [`metrics`]: what the service says about its disks, over the
//!   control socket (`scst-accel status`, `dump`, `resize`) and the Prometheus endpoint.
//! - [`identity`]: the disk's stable identity (serial, VPD 83h designator), and `identity`.
// Unsafe code is denied (the workspace's lints) but for one module: `dm_message`'s ioctl.
#![deny(unsafe_code)]
// The demo's JSON report is one `serde_json::json!` literal, deeper than the default limit (128).
#![recursion_limit = "256"]

pub mod backend;
pub mod bench;
pub mod check_config;
pub mod clone;
pub mod config;
pub mod control;
pub mod cpu;
pub mod crash;
pub mod demo;
pub mod demo_config;
pub mod diag;
pub mod disk;
pub mod dm_message;
pub mod export;
pub mod identity;
pub mod log_writes;
pub mod metrics;
pub mod notify;
pub mod serve;
pub mod service;
pub mod status;
pub mod tcmu;
pub mod units;

/// Exit codes a service manager can act on (sysexits.h values).
pub mod exit {
    /// Bad command line.
    pub const USAGE: u8 = 64;
    /// A verify error, an unanswered command, or another failed check in a demo.
    pub const DATA: u8 = 65;
    /// /dev/scst_user is missing: the SCST modules are not loaded. Retrying later may work.
    pub const UNAVAILABLE: u8 = 69;
    /// Internal failure (a worker died): restart.
    pub const SOFTWARE: u8 = 70;
    /// The device failed while serving (gone, fatal, a timeout recovery could not clear); the
    /// teardown ran. Check the device (`scst-accel diag`), then restart.
    pub const IOERR: u8 = 74;
    /// Permission denied on /dev/scst_user.
    pub const NOPERM: u8 = 77;
    /// Registration refused (license, version, name) or invalid configuration: do not restart.
    pub const CONFIG: u8 = 78;
}
