//! `scst-accel`: the service an appliance boots (`serve`), the demo/benchmark (`demo`,
//! `bench`) and diagnostics (`diag`).
#![forbid(unsafe_code)]

mod backend;
mod bench;
mod cpu;
mod demo;
mod diag;
mod disk;
mod serve;
mod units;

use clap::Parser;
use clap::Subcommand;
use std::process::ExitCode;

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

#[derive(Parser, Debug)]
#[command(
    name = "scst-accel",
    version,
    about = "User-space SCST device handler for storage accelerators"
)]
struct Cli {
    /// Log filter (error, warn, info, debug, trace; or env_logger syntax). RUST_LOG also works.
    #[arg(long, global = true, default_value = "warn")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a verified workload through the loopback kernel and report IOPS, latency and checks.
    Demo(demo::DemoArgs),
    /// Serve a disk on /dev/scst_user until SIGINT/SIGTERM.
    Serve(serve::ServeArgs),
    /// Compare boards on the same verified workloads in one run (ratios, not targets).
    Bench(bench::BenchArgs),
    /// Open a board, print its geometry, registers and queue rings, and release it.
    Diag(diag::DiagArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let env = env_logger::Env::default().default_filter_or(cli.log.as_str());
    env_logger::Builder::from_env(env)
        .format_timestamp_millis()
        .init();
    let code = match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Diag(args) => diag::run(args),
    };
    ExitCode::from(code)
}
