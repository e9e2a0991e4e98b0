//! scst-accel's service library: everything the `scst-accel` binary runs, usable from tests.
//!
//! - [`serve`], [`service`]: the appliance service (one process, many disks, systemd-native);
//! - [`config`]: the TOML configuration file and `check-config`;
//! - [`demo`], [`bench`](mod@bench), [`diag`]: the loopback demo/benchmark and diagnostics;
//! - [`backend`], [`disk`]: what stands behind a disk, and how it registers with SCST;
//! - [`status`], [`control`], [`metrics`]: what the service says about its disks, over the
//!   control socket (`scst-accel status`, `dump`, `resize`) and the Prometheus endpoint.
//! - [`identity`]: the disk's stable identity (serial, VPD 83h designator), and `identity`;
//!   [`mode_state`]: a TCMU disk's current WCE, kept for `serve --tcmu-adopt`.
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
pub mod fs_states;
pub mod identity;
pub mod journal;
pub mod log_writes;
pub mod metrics;
pub mod mode_state;
pub mod notify;
pub mod serve;
pub mod service;
pub mod state_file;
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

    /// A start failure a restart cannot mend (the unit's `RestartPreventExitStatus=`).
    fn is_start_class(code: u8) -> bool {
        matches!(code, USAGE | CONFIG)
    }

    /// A service's exit code from its disks' (`codes`, in configuration order, 0 for a disk
    /// stopped cleanly; [`crate::service::Service::exit_code`], the TCMU service's). A failure
    /// while serving, or a start failure a restart may mend (69, 77), outranks one of
    /// [`CONFIG`] or [`USAGE`] wherever it is in the file: the service manager restarts on it
    /// (the other disks serve again meanwhile), where a start class would end the restarts for
    /// good. When the stop was asked for (a signal, a stop request), start failures of those
    /// classes alone exit 0: the stop did what was asked, and the disks that never started
    /// were reported when they failed (status, log) and fail again at the next start.
    pub fn of_service(codes: impl IntoIterator<Item = u8>, stop_requested: bool) -> u8 {
        let codes: Vec<u8> = codes.into_iter().filter(|&c| c != 0).collect();
        match codes.iter().find(|&&c| !is_start_class(c)) {
            Some(&code) => code,
            None if stop_requested => 0,
            None => codes.first().copied().unwrap_or(0),
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_failure_while_serving_outranks_a_start_failure_wherever_it_is() {
            // Clean, or start failures only, on a requested stop: 0.
            assert_eq!(of_service([0, 0], true), 0);
            assert_eq!(of_service([0, 0], false), 0);
            assert_eq!(of_service([CONFIG, 0], true), 0);
            assert_eq!(of_service([USAGE, CONFIG], true), 0);
            // Every disk ended by itself: the first start class.
            assert_eq!(of_service([0, CONFIG, USAGE], false), CONFIG);
            // A failure a restart may mend wins over a start class before it in the file, so
            // the restarts go on; requested or not.
            for requested in [false, true] {
                assert_eq!(of_service([CONFIG, IOERR], requested), IOERR);
                assert_eq!(of_service([CONFIG, UNAVAILABLE, IOERR], requested), UNAVAILABLE);
                assert_eq!(of_service([0, SOFTWARE, CONFIG], requested), SOFTWARE);
            }
        }
    }
}
