//! `scst-accel bench`: the same verified workloads on several boards in one run, so speed is
//! reported as ratios measured side by side on the same machine at the same time (never as
//! absolute targets in tests: this machine is shared and noisy).
//!
//! Workloads: 4 KiB random read and write at QD32, 128 KiB sequential read and write at QD8
//! (the depth of the repository's other sequential figures, tests/hil/bench.sh). Layers:
//! `loopback` (initiator → loopback kernel model → SCSI engine → handler → store, what an
//! initiator sees) and `store` (the store alone through its queue interface, [`store`]), the
//! fair comparison with fio. `--fio` runs fio ([`fio`]) on the same file with the same block
//! size, pattern, queue depth, region and duration, and reports the file store's ratio to it.

pub mod fio;
pub mod handler;
pub mod store;

use crate::backend::BoardArg;
use crate::demo::measure;
use crate::demo::DemoArgs;
use crate::disk::DiskArgs;
use crate::exit;
use crate::units::parse_duration;
use crate::units::parse_size;
use clap::Args;
use clap::Parser;
use clap::ValueEnum;
use scst_accel_handler::store::file::FileStore;
use scst_accel_handler::store::file::FileStoreConfig;
use scst_accel_handler::store::file::FileStoreError;
use scst_accel_handler::store::file::IoEngine;
use serde_json::json;
use serde_json::Value;
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

/// `bench` arguments.
#[derive(Args, Debug)]
#[command(after_help = "\
Examples:
  scst-accel bench --boards ram,file --path /dev/shm/bench.img            file store on tmpfs vs RAM
  scst-accel bench --boards ram,file --path /var/tmp --fio --size 1G      O_DIRECT on a real file system, fio side by side

fio is not part of the build: install it with tools/bench/install-fio.sh (or apt-get install -y fio).
Without it, --fio reports the fio column as skipped, with the reason.")]
pub struct BenchArgs {
    /// Boards to compare; the first is the reference of the ratios (e.g. ram,file).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "ram,sim")]
    boards: Vec<BoardArg>,
    /// The image of --boards file (or the device of blockdev). A directory: a fresh image
    /// `scst-accel-bench-PID.img` is created there at --size and removed afterwards. A path
    /// that does not exist: created at --size, removed afterwards. An existing image: used as
    /// is at its own size (never truncated; its data is overwritten). Where it lives is what
    /// is measured: /dev/shm/x.img is tmpfs (memory); a path on ext4/XFS is a real file
    /// system with O_DIRECT.
    #[arg(long)]
    path: Option<PathBuf>,
    /// The PCI function of --boards sca1, nvme or qemu-nvme (bound to vfio-pci), e.g.
    /// 0000:00:04.0. Every hardware board of the run uses it.
    #[arg(long)]
    pci: Option<String>,
    /// File I/O mode: auto (O_DIRECT, or buffered where the file system refuses O_DIRECT:
    /// tmpfs before Linux 6.6), direct, or buffered. The mode that ran is reported, and fio
    /// runs in the same mode (direct=1 or 0).
    #[arg(long, value_enum, default_value_t = IoMode::Auto)]
    io_mode: IoMode,
    /// The file store's I/O engine: auto (io_uring where the kernel offers it, else threads),
    /// uring, or threads. The engine that ran is reported on each file row (`io_engine`).
    #[arg(long, default_value = "auto", value_parser = IoEngine::parse)]
    io_engine: IoEngine,
    /// Layers measured: handler (the handler alone: pre-built commands from a replay kernel,
    /// the null store; once per workload), loopback (initiator → loopback kernel model →
    /// handler → store), store (the store alone through its queue interface: no SCSI, no kernel
    /// model; the fair comparison with fio) and reference (one copy of the block size and one
    /// empty ioctl, measured in the same run). On an accelerator board the store layer is its
    /// engine alone (the NVMe or SCA-1 queues through VFIO, or the simulator): the fair
    /// comparison with the kernel's own driver.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "handler,loopback,store,reference"
    )]
    layers: Vec<Layer>,
    /// Workloads (default: all four).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "4k-randread-qd32,4k-randwrite-qd32,128k-seqread-qd8,128k-seqwrite-qd8"
    )]
    workloads: Vec<WorkloadArg>,
    /// Run fio on the same file side by side (same block size, pattern, queue depth, region,
    /// duration and I/O mode) and report the file store's ratio to it. Needs fio on PATH;
    /// without it the fio column is skipped, with the reason.
    #[arg(long)]
    fio: bool,
    /// fio's ioengine.
    #[arg(long, default_value = "io_uring")]
    fio_ioengine: String,
    /// Length of each timed run.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    duration: Duration,
    /// Disk size of each run (an existing --path image has its own).
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    size: u64,
    /// Repetitions of each cell (the median by IOPS is reported), in rounds that measure every
    /// board and layer in turn, so a change in the machine's load falls on all cells alike.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Initiator sessions of the loopback layer, the workload's queue depth split among them
    /// (each an ATTACH_SESS and a thread of the initiator, as `demo --sessions`). One
    /// initiator thread verifies each batch of answered reads before it sends the next, and
    /// the handler waits meanwhile: at 4 KiB it leaves a fifth of two CPUs idle
    /// (docs/performance.md "One initiator or two").
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    sessions: u16,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// The regression check (CI): a JSON file recording, for one workload, the handler's CPU
    /// per command over one copy of its block size (`workload`, `handler_cpu_per_copy`: the
    /// ratio `handler cpu per command / memcpy`); the run fails (exit 70) when the same ratio
    /// measured now is more than twice the recorded one. Needs `--layers handler,reference` and
    /// that workload. The repository's record: tools/bench/handler-baseline.json.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// Instead of the workloads: clone this many bytes on each board by EXTENDED COPY and by
    /// READ + WRITE through the initiator, and report time and process CPU for both
    /// ([`crate::clone`]; docs/xcopy.md). --size must hold three times it.
    #[arg(long, value_parser = parse_size)]
    clone: Option<u64>,
}

/// `--io-mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum IoMode {
    /// O_DIRECT, falling back to buffered I/O where the file system refuses it.
    Auto,
    /// O_DIRECT only.
    Direct,
    /// Through the page cache.
    Buffered,
}

/// `--layers`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Layer {
    /// The handler alone: the real frontend serving pre-built commands (the replay kernel)
    /// over the null store ([`handler`]); once per workload, whatever the boards.
    Handler,
    /// Through the loopback kernel model, the SCSI engine and the handler.
    Loopback,
    /// The store alone.
    Store,
    /// The physical reference: one copy of the block size, one empty ioctl ([`handler`]).
    Reference,
}

impl Layer {
    fn name(self) -> &'static str {
        match self {
            Layer::Handler => "handler",
            Layer::Loopback => "loopback",
            Layer::Store => "store",
            Layer::Reference => "reference",
        }
    }
}

/// `--workloads`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum WorkloadArg {
    /// 4 KiB random read, QD32.
    #[value(name = "4k-randread-qd32")]
    RandRead4k,
    /// 4 KiB random write, QD32.
    #[value(name = "4k-randwrite-qd32")]
    RandWrite4k,
    /// 128 KiB sequential read, QD8.
    #[value(name = "128k-seqread-qd8")]
    SeqRead128k,
    /// 128 KiB sequential write, QD8.
    #[value(name = "128k-seqwrite-qd8")]
    SeqWrite128k,
}

/// One workload of the matrix.
#[derive(Clone, Copy, Debug)]
struct Spec {
    name: &'static str,
    random: bool,
    write: bool,
    bs: u32,
    queue_depth: usize,
}

impl WorkloadArg {
    fn spec(self) -> Spec {
        let (name, random, write, bs, queue_depth) = match self {
            WorkloadArg::RandRead4k => ("4k-randread-qd32", true, false, 4096, 32),
            WorkloadArg::RandWrite4k => ("4k-randwrite-qd32", true, true, 4096, 32),
            WorkloadArg::SeqRead128k => ("128k-seqread-qd8", false, false, 128 << 10, 8),
            WorkloadArg::SeqWrite128k => ("128k-seqwrite-qd8", false, true, 128 << 10, 8),
        };
        Spec {
            name,
            random,
            write,
            bs,
            queue_depth,
        }
    }
}

impl Spec {
    fn fio_rw(&self) -> &'static str {
        match (self.random, self.write) {
            (true, false) => "randread",
            (true, true) => "randwrite",
            (false, false) => "read",
            (false, true) => "write",
        }
    }
}

#[derive(Parser, Debug)]
struct DemoLine {
    #[command(flatten)]
    args: DemoArgs,
}

/// Why the bench could not prepare its file.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// A file board without --path.
    #[error("--boards {board} needs --path: a directory (a fresh image is made there), a new file, or an existing image; /dev/shm/bench.img for tmpfs, a path on ext4/XFS for O_DIRECT")]
    NoPath {
        /// The board.
        board: &'static str,
    },
    /// The fresh image's name is taken.
    #[error("{path} exists; remove it, or pass it as --path to use it as is")]
    Exists {
        /// The path.
        path: PathBuf,
    },
    /// The file cannot be examined.
    #[error("{path}: {source}; fix the path or its permissions")]
    Stat {
        /// The path.
        path: PathBuf,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
    /// The store refused the file.
    #[error(transparent)]
    Store(#[from] FileStoreError),
}

/// The file (or device) the file boards and fio run on.
struct Target {
    path: PathBuf,
    /// Its size (a created one's is --size).
    size: u64,
    /// Created by this run: removed at the end.
    created: bool,
    direct: bool,
    /// Why this mode (requested, or what auto found).
    mode_reason: String,
}

impl Drop for Target {
    fn drop(&mut self) {
        if self.created {
            if let Err(e) = std::fs::remove_file(&self.path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    log::warn!("cannot remove the bench image {}: {e}", self.path.display());
                }
            }
        }
    }
}

impl Target {
    fn json(&self) -> Value {
        json!({
            "path": self.path,
            "size": self.size,
            "created_and_removed": self.created,
            "io_mode": if self.direct { "direct" } else { "buffered" },
            "io_mode_reason": self.mode_reason,
        })
    }
}

/// Resolve `--path` and the I/O mode (auto: open with O_DIRECT; buffered if refused).
fn prepare(args: &BenchArgs, board: BoardArg) -> Result<Target, TargetError> {
    let board_name = crate::service::board_name(board);
    let given = args
        .path
        .as_ref()
        .ok_or(TargetError::NoPath { board: board_name })?;
    let (path, existing) = if given.is_dir() {
        let path = given.join(format!("scst-accel-bench-{}.img", std::process::id()));
        if path.exists() {
            return Err(TargetError::Exists { path });
        }
        (path, None)
    } else {
        match std::fs::metadata(given) {
            Ok(m) => (given.clone(), Some(m)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (given.clone(), None),
            Err(source) => {
                return Err(TargetError::Stat {
                    path: given.clone(),
                    source,
                })
            }
        }
    };
    let size = match &existing {
        Some(m) if m.is_file() => m.len(),
        _ => args.size,
    };
    let mut target = Target {
        path,
        size,
        created: existing.is_none(),
        direct: args.io_mode != IoMode::Buffered,
        mode_reason: match args.io_mode {
            IoMode::Auto => "auto: the file system takes O_DIRECT".into(),
            IoMode::Direct => "requested (--io-mode direct)".into(),
            IoMode::Buffered => "requested (--io-mode buffered)".into(),
        },
    };
    // Open once as the runs will (creating a new image at its size): auto learns whether
    // O_DIRECT works, and a refusal is reported here, before any run.
    let open = |direct: bool| {
        FileStore::open(&FileStoreConfig {
            create_size: (board == BoardArg::File).then_some(target.size),
            block_size: (board == BoardArg::File).then_some(DiskArgs::default().block_size),
            direct,
            workers: 1,
            io_engine: args.io_engine,
            ..FileStoreConfig::new(&target.path)
        })
        .map(drop)
    };
    match open(target.direct) {
        Ok(()) => {}
        Err(FileStoreError::DirectUnsupported { source, .. }) if args.io_mode == IoMode::Auto => {
            open(false)?;
            target.direct = false;
            target.mode_reason = format!("auto: the file system refuses O_DIRECT ({source}), buffered");
        }
        Err(e) => return Err(e.into()),
    }
    Ok(target)
}

/// What fio can do in this run.
enum FioPlan {
    NotRequested,
    Skipped(String),
    Ready { bin: PathBuf, version: Option<String> },
}

/// `--clone`: the clone figures of every board, side by side; returns the exit code.
fn run_clone(args: &BenchArgs, bytes: u64) -> u8 {
    let target = match args
        .boards
        .iter()
        .copied()
        .find(|b| matches!(b, BoardArg::File | BoardArg::Blockdev))
        .map(|b| prepare(args, b))
    {
        None => None,
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => {
            eprintln!("scst-accel bench: {e}");
            return exit::CONFIG;
        }
    };
    let load_before = load_average();
    let mut rows = Vec::new();
    for &board in &args.boards {
        let (disk, _) = disk_flags(args, board, target.as_ref());
        let mut line = vec![
            "demo".to_owned(),
            "--board".into(),
            crate::service::board_name(board).into(),
        ];
        line.extend(disk);
        let parsed = match DemoLine::try_parse_from(&line) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("scst-accel bench: {e}");
                return exit::USAGE;
            }
        };
        match crate::clone::measure(&parsed.args, bytes) {
            Ok(v) => rows.push(v),
            Err(e) => {
                eprintln!(
                    "scst-accel bench: clone on {}: {e}",
                    crate::service::board_name(board)
                );
                return exit::SOFTWARE;
            }
        }
    }
    let out = json!({
        "clone_bytes": bytes,
        "size": args.size,
        "file": target.as_ref().map(Target::json),
        "results": rows,
        "machine": machine(load_before),
    });
    if args.json {
        println!("{out}");
    } else {
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    }
    drop(target);
    0
}

/// Run the matrix; returns the exit code.
pub fn run(args: BenchArgs) -> u8 {
    if let Some(bytes) = args.clone {
        return run_clone(&args, bytes);
    }
    let file_board = args
        .boards
        .iter()
        .copied()
        .find(|b| matches!(b, BoardArg::File | BoardArg::Blockdev));
    let target = match file_board.map(|b| prepare(&args, b)) {
        None => None,
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => {
            eprintln!("scst-accel bench: {e}");
            return match e {
                TargetError::Store(e) => crate::backend::file_error_exit_code(&e),
                TargetError::NoPath { .. } => exit::USAGE,
                _ => exit::CONFIG,
            };
        }
    };
    let fio_plan = match (&args.fio, &target) {
        (false, _) => FioPlan::NotRequested,
        (true, None) => FioPlan::Skipped(
            "no file to run fio on: add file (or blockdev) to --boards and give --path".into(),
        ),
        (true, Some(_)) => match fio::locate() {
            Ok(bin) => FioPlan::Ready {
                version: fio::version(&bin),
                bin,
            },
            Err(e) => FioPlan::Skipped(e.to_string()),
        },
    };
    if let FioPlan::Skipped(reason) = &fio_plan {
        eprintln!("scst-accel bench: fio skipped: {reason}");
    }
    let load_before = load_average();
    let mut rows = Vec::new();
    let mut fio_errors = Vec::new();
    let mut healthy = true;
    for spec in args.workloads.iter().map(|w| w.spec()) {
        let mut first: std::collections::HashMap<&'static str, f64> = Default::default();
        let mut cells: Vec<Value> = Vec::new();
        match boardless_cells(&args, &spec) {
            Ok(c) => cells.extend(c),
            Err(e) => {
                eprintln!("scst-accel bench: {}: {e}", spec.name);
                return exit::SOFTWARE;
            }
        }
        healthy &= cells.iter().all(|c| c["healthy"].as_bool().unwrap_or(false));
        // The cells of the boards, each measured once per round: the rounds take every board
        // and layer in turn, so a change in the machine's load (a shared host) falls on every
        // cell's repeats alike instead of on one board's, and the ratios of one run compare
        // like with like.
        let cell_keys: Vec<(BoardArg, Layer)> = args
            .boards
            .iter()
            .flat_map(|&board| args.layers.iter().map(move |&layer| (board, layer)))
            .filter(|(_, layer)| !matches!(layer, Layer::Handler | Layer::Reference))
            .collect();
        let mut cell_runs: Vec<Vec<Value>> = cell_keys.iter().map(|_| Vec::new()).collect();
        for _ in 0..args.repeat.max(1) {
            for (&(board, layer), runs) in cell_keys.iter().zip(&mut cell_runs) {
                let measured = match layer {
                    Layer::Loopback => loopback(&args, board, &spec, target.as_ref()),
                    Layer::Store => store_only(&args, board, &spec, target.as_ref()),
                    Layer::Handler | Layer::Reference => unreachable!("measured once per workload"),
                };
                match measured {
                    Ok(v) => runs.push(v),
                    Err((code, e)) => {
                        eprintln!(
                            "scst-accel bench: {} on {} ({}): {e}",
                            spec.name,
                            crate::service::board_name(board),
                            layer.name()
                        );
                        return code;
                    }
                }
            }
        }
        for (&(_, layer), runs) in cell_keys.iter().zip(cell_runs) {
            let mut cell = median(runs);
            cell["host_cpu_us_per_command"] = host_cpu_per_command(&cell);
            healthy &= cell["healthy"].as_bool().unwrap_or(false);
            let iops = cell["iops"].as_f64().unwrap_or(0.0);
            let reference = *first.entry(layer.name()).or_insert(iops);
            cell["ratio_to_first"] = json!(if reference > 0.0 { iops / reference } else { 0.0 });
            cells.push(cell);
        }
        if let (FioPlan::Ready { bin, .. }, Some(t)) = (&fio_plan, &target) {
            let mut runs = Vec::new();
            for _ in 0..args.repeat.max(1) {
                match run_fio(&args, bin, &spec, t) {
                    Ok(v) => runs.push(v),
                    Err(e) => {
                        eprintln!("scst-accel bench: fio, {}: {e}", spec.name);
                        fio_errors.push(json!({ "workload": spec.name, "error": e.to_string() }));
                        break;
                    }
                }
            }
            if !runs.is_empty() {
                let fio_row = median(runs);
                let fio_iops = fio_row["iops"].as_f64().unwrap_or(0.0);
                for cell in &mut cells {
                    if cell["io_mode"].is_string() && fio_iops > 0.0 {
                        let iops = cell["iops"].as_f64().unwrap_or(0.0);
                        cell["ratio_to_fio"] = json!(iops / fio_iops);
                    }
                }
                cells.push(fio_row);
            }
        }
        rows.extend(cells);
    }
    let fio_json = match &fio_plan {
        FioPlan::NotRequested => json!({ "status": "not requested" }),
        FioPlan::Skipped(reason) => json!({ "status": "skipped", "reason": reason }),
        FioPlan::Ready { bin, version } => json!({
            "status": if fio_errors.is_empty() { "ran" } else { "failed" },
            "bin": bin,
            "version": version,
            "ioengine": args.fio_ioengine,
            "direct": target.as_ref().map(|t| t.direct),
            "errors": fio_errors,
        }),
    };
    let notes = notes(&args, target.as_ref(), &fio_plan);
    let ratios = ratios(&args, &rows);
    let baseline = match args.baseline.as_deref().map(|path| check_baseline(path, &ratios)) {
        None => None,
        Some(Ok(check)) => Some(check),
        Some(Err(e)) => {
            eprintln!("scst-accel bench: --baseline: {e}");
            return exit::USAGE;
        }
    };
    if args.json {
        println!(
            "{}",
            json!({
                "duration_s": args.duration.as_secs_f64(),
                "repeat": args.repeat,
                "sessions": args.sessions,
                "size": args.size,
                "boards": args.boards.iter().map(|&b| crate::service::board_name(b)).collect::<Vec<_>>(),
                "file": target.as_ref().map(Target::json),
                "fio": fio_json,
                "results": rows,
                "ratios": ratios,
                "notes": notes,
                "machine": machine(load_before),
                "healthy": healthy,
                "baseline": baseline.as_ref().map(BaselineCheck::json),
            })
        );
    } else {
        print_table(&rows, &ratios, target.as_ref(), &fio_json, &notes);
        let m = machine(load_before);
        println!(
            "machine: {} CPUs, Linux {}, load average {} at start, {} at end",
            m["cpus"],
            m["kernel"].as_str().unwrap_or("?"),
            m["loadavg_start"].as_str().unwrap_or("?"),
            m["loadavg_end"].as_str().unwrap_or("?"),
        );
    }
    drop(target);
    if let Some(check) = &baseline {
        eprintln!("scst-accel bench: {check}");
        if !check.passed() {
            return exit::SOFTWARE;
        }
    }
    if healthy {
        0
    } else {
        exit::DATA
    }
}

/// The recorded handler cost (`--baseline`).
#[derive(Debug, serde::Deserialize)]
struct Baseline {
    workload: String,
    handler_cpu_per_copy: f64,
}

/// How much the handler's cost may grow against the record before the check fails.
pub const BASELINE_TOLERANCE: f64 = 2.0;

/// A measured ratio against its record.
#[derive(Debug)]
pub struct BaselineCheck {
    workload: String,
    recorded: f64,
    measured: f64,
}

impl BaselineCheck {
    fn passed(&self) -> bool {
        self.measured <= self.recorded * BASELINE_TOLERANCE
    }

    fn json(&self) -> Value {
        json!({
            "workload": self.workload,
            "recorded": self.recorded,
            "measured": self.measured,
            "limit": self.recorded * BASELINE_TOLERANCE,
            "passed": self.passed(),
        })
    }
}

impl std::fmt::Display for BaselineCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "handler cost check, {}: CPU per command / one copy = {:.3}, recorded {:.3}, limit {:.3}: {}",
            self.workload,
            self.measured,
            self.recorded,
            self.recorded * BASELINE_TOLERANCE,
            if self.passed() {
                "passed"
            } else {
                "FAILED: the handler's cost per command more than doubled; find the change (bench --layers handler shows allocations and locks per command)"
            }
        )
    }
}

/// Compare this run's handler/copy ratio with the record at `path`.
fn check_baseline(path: &Path, ratios: &Value) -> Result<BaselineCheck, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let baseline: Baseline = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    if !baseline.handler_cpu_per_copy.is_finite() || baseline.handler_cpu_per_copy <= 0.0 {
        return Err(format!(
            "{}: handler_cpu_per_copy must be a positive number",
            path.display()
        ));
    }
    let measured = ratios[&baseline.workload][HANDLER_TO_COPY]
        .as_f64()
        .ok_or_else(|| {
            format!(
                "workload {} has no handler/copy ratio in this run: run it with --layers handler,reference",
                baseline.workload
            )
        })?;
    Ok(BaselineCheck {
        workload: baseline.workload,
        recorded: baseline.handler_cpu_per_copy,
        measured,
    })
}

/// The 1, 5 and 15 minute load averages (/proc/loadavg), to judge how noisy a run was.
fn load_average() -> Option<String> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(text.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

/// What the figures were measured on.
fn machine(load_before: Option<String>) -> Value {
    json!({
        "cpus": std::thread::available_parallelism().map_or(0, usize::from),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").ok().map(|k| k.trim().to_owned()),
        "loadavg_start": load_before,
        "loadavg_end": load_average(),
    })
}

/// The median of `runs` by IOPS. A cell whose runs report health is healthy only if every run
/// was (a repeat that failed its checks is not hidden behind the median's), with the count of
/// those that were not in `unhealthy_repeats`; with several runs, every run's IOPS in
/// `repeat_iops` (ascending), so the spread is seen next to the median.
fn median(mut runs: Vec<Value>) -> Value {
    let iops = |v: &Value| v["iops"].as_f64();
    runs.sort_by(|a, b| iops(a).partial_cmp(&iops(b)).unwrap_or(std::cmp::Ordering::Equal));
    let unhealthy = runs
        .iter()
        .filter(|r| r.get("healthy").is_some_and(|h| h.as_bool() != Some(true)))
        .count();
    let spread: Vec<Option<f64>> = runs.iter().map(iops).collect();
    let mid = runs.len() / 2;
    let mut cell = runs.swap_remove(mid);
    if cell.get("healthy").is_some() {
        cell["healthy"] = json!(unhealthy == 0);
        cell["unhealthy_repeats"] = json!(unhealthy);
    }
    if spread.len() > 1 {
        cell["repeat_iops"] = json!(spread);
    }
    cell
}

fn disk_flags(args: &BenchArgs, board: BoardArg, target: Option<&Target>) -> (Vec<String>, u64) {
    match (board, target) {
        (BoardArg::File | BoardArg::Blockdev, Some(t)) => {
            let mut flags = vec![
                "--path".to_owned(),
                t.path.display().to_string(),
                "--size".to_owned(),
                t.size.to_string(),
            ];
            if !t.direct {
                flags.push("--buffered".into());
            }
            flags.push("--io-engine".into());
            flags.push(args.io_engine.name().into());
            (flags, t.size)
        }
        _ => {
            let mut flags = vec!["--size".to_owned(), args.size.to_string()];
            if let Some(pci) = args.pci.as_ref().filter(|_| board.is_hardware()) {
                flags.push("--pci".into());
                flags.push(pci.clone());
            }
            (flags, args.size)
        }
    }
}

type CellResult = Result<Value, (u8, String)>;

/// One cell through the loopback kernel model (the demo's verified workload).
fn loopback(args: &BenchArgs, board: BoardArg, spec: &Spec, target: Option<&Target>) -> CellResult {
    let (disk, region) = disk_flags(args, board, target);
    let mut line: Vec<String> = [
        "demo",
        "--board",
        crate::service::board_name(board),
        "--duration",
        &format!("{}ms", args.duration.as_millis()),
        "--rw",
        if spec.write { "write" } else { "read" },
        "--pattern",
        if spec.random { "random" } else { "sequential" },
        "--bs",
        &spec.bs.to_string(),
        "--queue-depth",
        &spec.queue_depth.to_string(),
        "--sessions",
        &args.sessions.to_string(),
        // Steady state for writes too, as the store layer: first-touch allocation of a fresh
        // medium is not the path's cost.
        "--prefill",
        "true",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    line.extend(disk);
    let mut parsed = DemoLine::try_parse_from(&line).map_err(|e| (exit::USAGE, e.to_string()))?;
    // The image is the bench's scratch: its other cells and fio overwrite it with data of their
    // own, so the demo's check of an earlier run's stamps does not apply.
    parsed.args.scratch_medium = true;
    // Its figures are the command path's: not the model's ownership check (a second read of
    // every buffer; demo and the tests make it).
    parsed.args.no_ownership_check = true;
    let (v, ok) = measure(&parsed.args).map_err(|e| (exit::SOFTWARE, e))?;
    Ok(json!({
        "workload": spec.name,
        "board": crate::service::board_name(board),
        "layer": "loopback",
        "io_mode": io_mode(board, target),
        "io_engine": v["io_engine"],
        "region_bytes": region,
        "iops": v["iops"],
        "mb_per_s": v["mb_per_s"],
        "latency_us": v["latency_us"],
        "cpu_us_per_command": v["cpu_us_per_command"],
        "device_cpu_us_per_command": v["device_cpu_us_per_command"],
        "allocations_per_command": v["allocations_per_command"],
        "kernel_model_syscalls_per_command": v["kernel_model"]["syscalls_per_command"],
        "handler_syscalls_per_command": v["frontend"]["handler_syscalls_per_exec"],
        "commands_per_ioctl": v["frontend"]["commands_per_ioctl"],
        // The sessions the handler saw attach (ATTACH_SESS), not the count asked for.
        "sessions": v["frontend"]["attach"],
        "commands": v["commands"],
        "verified_bytes": v["verified_bytes"],
        "verify_errors": v["verify_errors"],
        "errors": v["scsi_errors"],
        "unanswered_commands": v["unanswered_commands"],
        "iommu_faults": v["iommu_faults"],
        "healthy": ok,
    }))
}

fn io_mode(board: BoardArg, target: Option<&Target>) -> Option<&'static str> {
    match (board, target) {
        (BoardArg::File | BoardArg::Blockdev, Some(t)) => Some(if t.direct { "direct" } else { "buffered" }),
        _ => None,
    }
}

/// One cell on the store alone.
fn store_only(args: &BenchArgs, board: BoardArg, spec: &Spec, target: Option<&Target>) -> CellResult {
    let (_, region) = disk_flags(args, board, target);
    let mut disk = DiskArgs {
        size: region,
        ..DiskArgs::default()
    };
    if let Some(t) = target.filter(|_| matches!(board, BoardArg::File | BoardArg::Blockdev)) {
        disk.path = Some(t.path.clone());
        disk.buffered = !t.direct;
        disk.io_engine = args.io_engine;
    }
    let blocks = disk.validate().map_err(|e| (exit::USAGE, e))?;
    let pci = args.pci.as_deref().filter(|_| board.is_hardware());
    let backend =
        crate::backend::build(board, &disk, blocks, pci, &[]).map_err(|e| (e.exit_code, e.message))?;
    let workload = store::StoreWorkload {
        random: spec.random,
        write: spec.write,
        io_size: spec.bs,
        queue_depth: spec.queue_depth,
        duration: args.duration,
        region_bytes: region,
        seed: 1,
    };
    let outcome = store::run(backend.store.as_ref(), &backend.pool, &workload);
    let released = backend.shutdown_unserved();
    // Read at the release, after the run opened its queues (one may have fallen back).
    let engine = released.io_engine;
    let r = outcome.map_err(|e| (exit::SOFTWARE, e.to_string()))?;
    // A device that timed out, reset or completed an unknown tag did not serve the run as
    // measured, whatever the requests' statuses say.
    let device_clean = released.timeouts == 0
        && released.resets == 0
        && released.unknown_tags == 0
        && released.iommu_faults.unwrap_or(0) == 0
        && !released.device_not_quiesced;
    let healthy = r.healthy() && device_clean && released.mapped_after == 0 && released.leaked_buffers == 0;
    Ok(json!({
        "workload": spec.name,
        "board": crate::service::board_name(board),
        "layer": "store",
        "io_mode": io_mode(board, target),
        "io_engine": engine,
        "region_bytes": region,
        "iops": r.iops(),
        "mb_per_s": r.mb_per_s(),
        "latency_us": { "p50": r.p50_us, "p99": r.p99_us, "p999": r.p999_us, "mean": r.mean_us },
        "cpu_us_per_command": r.cpu.map(|c| c.as_secs_f64() * 1e6 / r.commands.max(1) as f64),
        "device_cpu_us_per_command": r.device_cpu.map(|c| c.as_secs_f64() * 1e6 / r.commands.max(1) as f64),
        // The whole process's, the bench's own driver included (its latency record has room
        // for a million commands before it grows).
        "allocations_per_command": r.allocations.map(|a| a as f64 / r.commands.max(1) as f64),
        "commands": r.commands,
        "verified_blocks": r.verified_blocks,
        "verify_errors": r.verify_errors,
        "errors": r.errors,
        "unanswered_commands": r.unanswered,
        "healthy": healthy,
        "first_errors": r.first_errors,
        "device": {
            "errors": released.device_errors,
            "timeouts": released.timeouts,
            "resets": released.resets,
            "unknown_tags": released.unknown_tags,
            "iommu_faults": released.iommu_faults,
        },
    }))
}

/// The cells of the layers measured once per workload, whatever the boards: the handler alone
/// and the physical reference (in that order, right before the boards' cells).
fn boardless_cells(args: &BenchArgs, spec: &Spec) -> Result<Vec<Value>, String> {
    let w = handler::HandlerWorkload {
        name: spec.name,
        random: spec.random,
        write: spec.write,
        io_size: spec.bs,
        queue_depth: spec.queue_depth,
        duration: args.duration,
        region_bytes: args.size,
    };
    let mut cells = Vec::new();
    if args.layers.contains(&Layer::Handler) {
        let runs = (0..args.repeat.max(1))
            .map(|_| handler::run(&w))
            .collect::<Result<Vec<_>, _>>()?;
        cells.push(median(runs));
    }
    if args.layers.contains(&Layer::Reference) {
        cells.push(handler::reference(&w)?);
    }
    Ok(cells)
}

/// fio on the target, same workload.
fn run_fio(args: &BenchArgs, bin: &Path, spec: &Spec, t: &Target) -> Result<Value, fio::FioError> {
    let job = fio::FioJob {
        filename: t.path.clone(),
        rw: spec.fio_rw(),
        bs: u64::from(spec.bs),
        iodepth: spec.queue_depth,
        runtime: args.duration,
        size: t.size,
        direct: t.direct,
        ioengine: args.fio_ioengine.clone(),
    };
    let r = fio::run(bin, &job, &std::env::temp_dir())?;
    Ok(json!({
        "workload": spec.name,
        "board": "fio",
        "layer": args.fio_ioengine,
        "region_bytes": t.size,
        "direct": t.direct,
        "iops": r.iops,
        "mb_per_s": r.mb_per_s,
        "latency_us": { "p50": r.p50_us, "p99": r.p99_us, "p999": r.p999_us, "mean": r.mean_us },
        "cpu_us_per_command": r.cpu_us_per_io,
        "usr_cpu_percent": r.usr_cpu,
        "sys_cpu_percent": r.sys_cpu,
        "commands": r.ios,
        "command_line": job.args(Path::new("<out>.json")),
    }))
}

/// The ratio of the handler's CPU per command (`--layers handler`) to one copy of the block
/// size (`--layers reference`), in the same run: below 1, the handler costs less than touching
/// the data once.
pub const HANDLER_TO_COPY: &str = "handler cpu per command / memcpy";

/// The same against a copy from and to the cache (for comparison only: on this shared machine a
/// copy in cache varies twofold from run to run with what the sibling CPU does, while the
/// region copy, bound by memory, stays within about 10 %; the regression check uses the latter).
pub const HANDLER_TO_HOT_COPY: &str = "handler cpu per command / memcpy in cache";

/// A row's CPU per command less its simulated board's ([`crate::cpu::simulated_device_cpu_time`]):
/// what the host spends, the device's work left out as a real board would take it. The process
/// CPU is counted in 10 ms ticks and the device's in nanoseconds, so a run of a fraction of a
/// second can put the difference below zero: it is then 0. `null` without both figures.
fn host_cpu_per_command(row: &Value) -> Value {
    match (
        row["cpu_us_per_command"].as_f64(),
        row["device_cpu_us_per_command"].as_f64(),
    ) {
        (Some(cpu), Some(device)) => json!((cpu - device).max(0.0)),
        _ => Value::Null,
    }
}

/// Per workload: each later board against the first, per layer; each file row against fio; the
/// handler's CPU per command against one copy of the data.
fn ratios(args: &BenchArgs, rows: &[Value]) -> Value {
    let first = args
        .boards
        .first()
        .map(|&b| crate::service::board_name(b))
        .unwrap_or("");
    let mut out = serde_json::Map::new();
    for row in rows {
        let (Some(workload), Some(board), Some(layer)) = (
            row["workload"].as_str(),
            row["board"].as_str(),
            row["layer"].as_str(),
        ) else {
            continue;
        };
        let entry = out.entry(workload.to_owned()).or_insert_with(|| json!({}));
        if layer == "handler" || layer == "reference" {
            continue;
        }
        if board != first && board != "fio" {
            if let Some(r) = row["ratio_to_first"].as_f64() {
                entry[format!("{board}/{first} ({layer})")] = json!(r);
            }
            if let Some(r) = host_cpu_ratio(rows, row, workload, first, layer) {
                entry[format!("{board}/{first} {HOST_CPU} ({layer})")] = json!(r);
            }
        }
        if let Some(r) = row["ratio_to_fio"].as_f64() {
            entry[format!("{board}/fio ({layer})")] = json!(r);
        }
    }
    for (workload, entry) in &mut out {
        let cell = |layer: &str| {
            rows.iter().find(|r| {
                r["workload"].as_str() == Some(workload.as_str()) && r["layer"].as_str() == Some(layer)
            })
        };
        let handler_cpu = cell("handler").and_then(|r| r["cpu_us_per_command"].as_f64());
        for (key, copy) in [
            (HANDLER_TO_COPY, "memcpy_us"),
            (HANDLER_TO_HOT_COPY, "memcpy_hot_us"),
        ] {
            let copy = cell("reference").and_then(|r| r[copy].as_f64());
            if let (Some(cpu), Some(copy)) = (handler_cpu, copy.filter(|c| *c > 0.0)) {
                entry[key] = json!(cpu / copy);
            }
        }
        let Some(copy_us) = cell("reference")
            .and_then(|r| r["memcpy_us"].as_f64())
            .filter(|c| *c > 0.0)
        else {
            continue;
        };
        let copy_mb = cell("reference").and_then(|r| r["memcpy_mb_per_s"].as_f64());
        for row in rows.iter().filter(|r| {
            r["workload"].as_str() == Some(workload.as_str())
                && matches!(r["layer"].as_str(), Some("loopback" | "store"))
        }) {
            let (board, layer) = (
                row["board"].as_str().unwrap_or(""),
                row["layer"].as_str().unwrap_or(""),
            );
            // Per CPU: one copy's CPU over the command's (all threads of the process). Above
            // 0.8, the layer moves data at least at 0.8 of memcpy's rate per CPU second.
            if let Some(cpu) = row["cpu_us_per_command"].as_f64().filter(|c| *c > 0.0) {
                entry[format!("{board} {COPY_PER_CPU} ({layer})")] = json!(copy_us / cpu);
            }
            // Wall clock: the layer's bandwidth over one thread's memcpy bandwidth.
            if let (Some(mb), Some(copy_mb)) = (row["mb_per_s"].as_f64(), copy_mb.filter(|c| *c > 0.0)) {
                entry[format!("{board} {BANDWIDTH_TO_COPY} ({layer})")] = json!(mb / copy_mb);
            }
        }
    }
    Value::Object(out)
}

/// Ratio key: the host's CPU per command ([`host_cpu_per_command`]) of one board over the first.
const HOST_CPU: &str = "host cpu per command";

/// `row`'s host CPU per command over the first board's in the same workload and layer.
fn host_cpu_ratio(rows: &[Value], row: &Value, workload: &str, first: &str, layer: &str) -> Option<f64> {
    let reference = rows.iter().find(|r| {
        r["workload"].as_str() == Some(workload)
            && r["board"].as_str() == Some(first)
            && r["layer"].as_str() == Some(layer)
    })?;
    let host = row["host_cpu_us_per_command"].as_f64()?;
    let first_host = reference["host_cpu_us_per_command"]
        .as_f64()
        .filter(|h| *h > 0.0)?;
    Some(host / first_host)
}

/// Ratio key: one copy of the block (reference) over the layer's CPU per command.
const COPY_PER_CPU: &str = "memcpy / cpu per command";
/// Ratio key: the layer's MB/s over one thread's memcpy MB/s of the block size.
const BANDWIDTH_TO_COPY: &str = "MB/s / memcpy MB/s";

fn notes(args: &BenchArgs, target: Option<&Target>, fio: &FioPlan) -> Vec<String> {
    let mut notes = Vec::new();
    if args.layers.contains(&Layer::Loopback) {
        notes.push(format!(
            "loopback: initiator ({} session{}) -> loopback kernel model -> SCSI engine -> handler -> \
                 store, all in this process, every byte of every read verified",
            args.sessions,
            if args.sessions == 1 { "" } else { "s" }
        ));
    }
    if args.layers.contains(&Layer::Store) {
        notes.push(format!(
            "store: the store alone through its queue interface (one submitting thread{}), block \
             headers verified",
            if target.is_some() {
                format!(
                    "; the file store with --io-engine {} ({} I/O threads with threads)",
                    args.io_engine,
                    scst_accel_handler::store::file::DEFAULT_WORKERS.max(DiskArgs::default().workers)
                )
            } else {
                String::new()
            }
        ));
    }
    if let Some(t) = target {
        notes.push(format!(
            "file: {} ({}, {}{})",
            t.path.display(),
            if t.direct { "O_DIRECT" } else { "buffered" },
            t.mode_reason,
            if t.created {
                "; created for this run and removed"
            } else {
                "; existing, used as is"
            }
        ));
    }
    match fio {
        FioPlan::Ready { .. } => notes.push(format!(
            "fio ({}, direct={}) goes straight to the file: file/fio (loopback) includes the whole \
             SCSI path through the kernel model, file/fio (store) is the fair comparison",
            args.fio_ioengine,
            u8::from(target.is_some_and(|t| t.direct))
        )),
        FioPlan::Skipped(reason) => notes.push(format!("fio skipped: {reason}")),
        FioPlan::NotRequested => {}
    }
    if args.boards.iter().any(|b| b.is_simulated()) {
        notes.push(
            "dev us/IO: CPU of the simulated board's own threads, which a real board would spend \
             itself; `host cpu per command` ratios leave it out (CPU us/IO - dev us/IO). The \
             model's work a doorbell's writer runs itself (the simulators' default, \
             inline_doorbells) is in the host's threads and counted as host CPU"
                .into(),
        );
    }
    notes.push("ratios measured in one run on this machine; not targets".into());
    notes
}

fn print_table(rows: &[Value], ratios: &Value, target: Option<&Target>, fio: &Value, notes: &[String]) {
    println!(
        "{:<18} {:<8} {:<9} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>7}",
        "workload",
        "board",
        "layer",
        "IOPS",
        "MB/s",
        "p50 us",
        "p99 us",
        "CPU us/IO",
        "dev us/IO",
        "ratio",
        "vs fio"
    );
    let num = |v: &Value, width: usize, prec: usize| {
        v.as_f64()
            .map_or_else(|| format!("{:>width$}", "-"), |x| format!("{x:>width$.prec$}"))
    };
    for r in rows {
        println!(
            "{:<18} {:<8} {:<9} {} {} {} {} {} {} {} {}",
            r["workload"].as_str().unwrap_or(""),
            r["board"].as_str().unwrap_or(""),
            r["layer"].as_str().unwrap_or(""),
            num(&r["iops"], 10, 0),
            num(&r["mb_per_s"], 9, 1),
            num(&r["latency_us"]["p50"], 9, 1),
            num(&r["latency_us"]["p99"], 9, 1),
            num(&r["cpu_us_per_command"], 9, 2),
            num(&r["device_cpu_us_per_command"], 9, 2),
            num(&r["ratio_to_first"], 7, 2),
            num(&r["ratio_to_fio"], 7, 2),
        );
    }
    for r in rows.iter().filter(|r| r["layer"] == "reference") {
        println!(
            "{}: reference: one copy of the block size {:.3} us ({:.3} us in cache), an empty ioctl {:.3} us",
            r["workload"].as_str().unwrap_or(""),
            r["memcpy_us"].as_f64().unwrap_or(0.0),
            r["memcpy_hot_us"].as_f64().unwrap_or(0.0),
            r["empty_ioctl_us"].as_f64().unwrap_or(0.0),
        );
    }
    if let Some(map) = ratios.as_object() {
        println!();
        // In the order the workloads ran.
        let mut order: Vec<&str> = rows.iter().filter_map(|r| r["workload"].as_str()).collect();
        order.dedup();
        for workload in order {
            let Some(pairs) = map
                .get(workload)
                .and_then(Value::as_object)
                .filter(|p| !p.is_empty())
            else {
                continue;
            };
            let text: Vec<String> = pairs
                .iter()
                .map(|(k, v)| format!("{k} {:.2}", v.as_f64().unwrap_or(0.0)))
                .collect();
            println!("{workload}: {}", text.join(", "));
        }
    }
    println!();
    if let Some(t) = target {
        let mut engines: Vec<&str> = rows.iter().filter_map(|r| r["io_engine"].as_str()).collect();
        engines.sort_unstable();
        engines.dedup();
        println!(
            "file: {} ({} bytes, {}, file store engine {})",
            t.path.display(),
            t.size,
            if t.direct { "O_DIRECT" } else { "buffered" },
            if engines.is_empty() {
                "-".to_owned()
            } else {
                engines.join(", ")
            }
        );
    }
    if let Some(status) = fio["status"].as_str() {
        match fio["reason"].as_str() {
            Some(reason) => println!("fio: {status}: {reason}"),
            None => println!("fio: {status}"),
        }
    }
    for n in notes {
        println!("note: {n}");
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn a_repeat_that_failed_its_checks_makes_the_cell_unhealthy_though_the_median_passed() {
        let run = |iops: f64, healthy: bool| json!({ "iops": iops, "healthy": healthy });
        let cell = super::median(vec![run(300.0, true), run(100.0, false), run(200.0, true)]);
        assert_eq!(cell["iops"], 200.0, "the median run's figures: {cell}");
        assert_eq!(cell["healthy"], false, "{cell}");
        assert_eq!(cell["unhealthy_repeats"], 1, "{cell}");
        assert_eq!(cell["repeat_iops"], json!([100.0, 200.0, 300.0]));
        let clean = super::median(vec![run(1.0, true), run(2.0, true), run(3.0, true)]);
        assert_eq!(clean["healthy"], true, "{clean}");
        // A fio row reports no health: none is made up for it.
        let fio = super::median(vec![json!({ "iops": 5.0 })]);
        assert!(
            fio.get("healthy").is_none() && fio.get("repeat_iops").is_none(),
            "{fio}"
        );
    }
}
