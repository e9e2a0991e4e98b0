//! `scst-accel check-config FILE`: validate the service's configuration file without touching
//! SCST, sysfs or hardware, so a change can be checked before the service is restarted.

use crate::config::load::load;
use crate::config::ServiceConfig;
use crate::exit;
use clap::Args;
use clap::ValueEnum;
use std::path::PathBuf;

/// `check-config`.
#[derive(Args, Debug)]
pub struct CheckConfigArgs {
    /// The configuration file (e.g. /etc/scst-accel/scst-accel.toml).
    pub file: PathBuf,
}

/// Print a one-line summary (0) or every error with its line (exit::CONFIG).
pub fn run(args: CheckConfigArgs) -> u8 {
    match load(&args.file) {
        Ok(config) => {
            println!("{}: valid: {}", args.file.display(), summary(&config));
            0
        }
        Err(errors) => {
            eprintln!("{errors}");
            exit::CONFIG
        }
    }
}

/// `N disks (name on board, ...)`.
fn summary(config: &ServiceConfig) -> String {
    let disks: Vec<String> = config
        .disks
        .iter()
        .map(|d| {
            let board = d.board.to_possible_value().map(|v| v.get_name().to_owned());
            format!("{} on {}", d.args.name, board.unwrap_or_default())
        })
        .collect();
    format!("{} disks ({})", disks.len(), disks.join(", "))
}
