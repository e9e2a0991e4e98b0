//! `scst-accel`: the service an appliance boots (`serve`), the demo/benchmark (`demo`,
//! `bench`) and diagnostics (`diag`).
#![forbid(unsafe_code)]

use clap::Parser;
use clap::Subcommand;
use scst_accel::bench;
use scst_accel::demo;
use scst_accel::diag;
use scst_accel::identity;
use scst_accel::serve;
use std::process::ExitCode;

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
    /// Resolve a disk's identity (serial, VPD 83h designator) as `serve` would, persisting a
    /// generated one in the state directory, and print it.
    Identity(identity::IdentityArgs),
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
        Command::Identity(args) => identity::run(args),
    };
    ExitCode::from(code)
}
