//! `scst-accel`: the service an appliance boots (`serve`), the demo/benchmark (`demo`,
//! `bench`) and diagnostics (`diag`).
#![forbid(unsafe_code)]

use clap::Parser;
use clap::Subcommand;
use scst_accel::bench;
use scst_accel::check_config;
use scst_accel::control;
use scst_accel::crash;
use scst_accel::demo;
use scst_accel::diag;
use scst_accel::exit;
use scst_accel::identity;
use scst_accel::journal;
use scst_accel::serve;
use std::process::ExitCode;

/// Counts allocations once asked (`bench --layers handler` reports them per command).
#[global_allocator]
static ALLOCATOR: scst_accel_hal::alloc_stats::CountingAllocator =
    scst_accel_hal::alloc_stats::CountingAllocator;

#[derive(Parser, Debug)]
#[command(
    name = "scst-accel",
    version,
    about = "User-space SCST device handler for storage accelerators"
)]
struct Cli {
    /// Log filter (error, warn, info, debug, trace; or env_logger syntax). RUST_LOG also works.
    /// Default: info for `serve` (one line per disk when it serves), warn otherwise.
    #[arg(long, global = true)]
    log: Option<String>,
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
    /// Validate a service configuration file (every error with its line); touches nothing else.
    CheckConfig(check_config::CheckConfigArgs),
    /// Ask the running service how its disks are (state, capacity, IOPS, MB/s, p99, errors).
    Status(control::StatusArgs),
    /// Ask the running service to dump a disk's commands in flight and device state.
    Dump(control::DumpArgs),
    /// Grow a disk of the running service (RAM store) and tell the initiators.
    Resize(control::ResizeArgs),
    /// Resolve a disk's identity (serial, VPD 83h designator) as `serve` would, persisting a
    /// generated one in the state directory, and print it.
    Identity(identity::IdentityArgs),
    /// For the crash-consistency test (tools/tests/crash.rs): serve a file disk in-process and
    /// write stamped blocks with FUA, SYNCHRONIZE CACHE and unsynced writes, journaling which
    /// writes were submitted and which acknowledged durable, until killed. Hidden: a test tool.
    #[command(hide = true)]
    CrashWriter(crash::CrashArgs),
    /// Check what a crash writer left against its journal: an image as it is (a process kill),
    /// or the states a power cut may leave, from a log of its device's writes (Linux's
    /// dm-log-writes, or QEMU's blklogwrites). Prints JSON. Hidden: a test tool
    /// (tests/hil/scenarios/power-cut.sh, power-cut-vfio.host.sh).
    #[command(hide = true)]
    CrashCheck(crash::CheckArgs),
}

/// Print clap's message and exit 0 for `--help` and `--version`, otherwise 64 (EX_USAGE), as
/// the README's exit table says: clap's own code for a usage error is 2, which a unit's
/// `RestartPreventExitStatus=64 78` does not list, so systemd would restart a misspelt flag
/// until its start limit.
fn command_line_error(e: &clap::Error) -> ExitCode {
    let _ = e.print();
    match e.kind() {
        clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => ExitCode::SUCCESS,
        _ => ExitCode::from(exit::USAGE),
    }
}

fn main() -> ExitCode {
    // The matches are kept so that `serve` can tell which flags were given (they override the
    // configuration file's).
    let matches = match <Cli as clap::CommandFactory>::command().try_get_matches() {
        Ok(matches) => matches,
        Err(e) => return command_line_error(&e),
    };
    let mut cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => return command_line_error(&e),
    };
    // A block device's size and block size are its own: note which were given, so that one
    // that is not the device's is refused rather than ignored.
    if let Some((_, sub)) = matches.subcommand() {
        let disk = match &mut cli.command {
            Command::Demo(args) => Some(args.disk_mut()),
            Command::Serve(args) => Some(&mut args.disk),
            Command::Diag(args) => Some(args.disk_mut()),
            Command::CrashWriter(args) => Some(args.disk_mut()),
            _ => None,
        };
        if let Some(disk) = disk {
            disk.note_given(sub);
        }
    }
    let default_level = match cli.command {
        Command::Serve(_) => "info",
        _ => "warn",
    };
    let env = env_logger::Env::default().default_filter_or(cli.log.as_deref().unwrap_or(default_level));
    let mut logger = env_logger::Builder::from_env(env);
    if journal::stderr_is_journal() {
        // Under systemd: the priority first, for `journalctl -p`; the journal stamps the time.
        logger.format(|buf, record| {
            use std::io::Write;
            let line = journal::line(record.level(), record.target(), &record.args().to_string());
            buf.write_all(line.as_bytes())
        });
    } else {
        logger.format_timestamp_millis();
    }
    logger.init();
    let code = match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Serve(args) => serve::run(args, matches.subcommand_matches("serve")),
        Command::Bench(args) => bench::run(args),
        Command::Diag(args) => diag::run(args),
        Command::CheckConfig(args) => check_config::run(args),
        Command::Status(args) => control::run_status(args),
        Command::Dump(args) => control::run_dump(args),
        Command::Resize(args) => control::run_resize(args),
        Command::Identity(args) => identity::run(args),
        Command::CrashWriter(args) => crash::run(args),
        Command::CrashCheck(args) => crash::run_check(args),
    };
    ExitCode::from(code)
}
