//! `scst-accel bench`: the same verified workloads on several boards in one run, so speed is
//! reported as ratios measured side by side on the same machine at the same time (never as
//! absolute targets in tests: this machine is shared and noisy).

use crate::demo::measure;
use crate::demo::DemoArgs;
use crate::exit;
use clap::Args;
use clap::Parser;
use serde_json::json;

/// `bench` arguments.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Boards to compare; the first is the reference of the ratios.
    #[arg(long, value_delimiter = ',', default_value = "ram,sim")]
    boards: Vec<String>,
    /// Length of each timed run.
    #[arg(long, default_value = "5s")]
    duration: String,
    /// Disk size of each run.
    #[arg(long, default_value = "256M")]
    size: String,
    /// Repetitions of each cell (the median is reported).
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Parser, Debug)]
struct DemoLine {
    #[command(flatten)]
    args: DemoArgs,
}

/// The workloads compared: 4 KiB random read at QD32 and 128 KiB sequential read at QD8.
const WORKLOADS: [(&str, &[&str]); 2] = [
    (
        "4k-randread-qd32",
        &[
            "--rw",
            "read",
            "--pattern",
            "random",
            "--bs",
            "4k",
            "--queue-depth",
            "32",
        ],
    ),
    (
        "128k-seqread-qd8",
        &[
            "--rw",
            "read",
            "--pattern",
            "sequential",
            "--bs",
            "128k",
            "--queue-depth",
            "8",
        ],
    ),
];

/// Run the matrix; returns the exit code.
pub fn run(args: BenchArgs) -> u8 {
    let mut rows = Vec::new();
    let mut healthy = true;
    for (name, flags) in WORKLOADS {
        let mut cells = Vec::new();
        for board in &args.boards {
            let mut runs = Vec::new();
            for _ in 0..args.repeat.max(1) {
                let mut line = vec![
                    "demo",
                    "--board",
                    board,
                    "--duration",
                    &args.duration,
                    "--size",
                    &args.size,
                ];
                line.extend_from_slice(flags);
                let parsed = match DemoLine::try_parse_from(&line) {
                    Ok(p) => p,
                    Err(e) => {
                        eprintln!("scst-accel bench: {e}");
                        return exit::USAGE;
                    }
                };
                match measure(&parsed.args) {
                    Ok((value, ok)) => {
                        healthy &= ok;
                        runs.push(value);
                    }
                    Err(e) => {
                        eprintln!("scst-accel bench: {name} on {board}: {e}");
                        return exit::SOFTWARE;
                    }
                }
            }
            runs.sort_by(|a, b| {
                a["iops"]
                    .as_f64()
                    .partial_cmp(&b["iops"].as_f64())
                    .unwrap_or(std::cmp::Ordering::Equal)
            });
            cells.push((board.clone(), runs.swap_remove(runs.len() / 2)));
        }
        let reference = cells.first().and_then(|(_, v)| v["iops"].as_f64()).unwrap_or(0.0);
        for (board, v) in cells {
            let iops = v["iops"].as_f64().unwrap_or(0.0);
            rows.push(json!({
                "workload": name,
                "board": board,
                "iops": iops,
                "mb_per_s": v["mb_per_s"],
                "latency_us": v["latency_us"],
                "cpu_us_per_command": v["cpu_us_per_command"],
                "ratio_to_first": if reference > 0.0 { iops / reference } else { 0.0 },
                "verify_errors": v["verify_errors"],
                "unanswered_commands": v["unanswered_commands"],
                "iommu_faults": v["iommu_faults"],
            }));
        }
    }
    if args.json {
        println!(
            "{}",
            json!({ "duration": args.duration, "repeat": args.repeat, "results": rows })
        );
    } else {
        println!(
            "{:<18} {:<6} {:>10} {:>9} {:>9} {:>9} {:>8}",
            "workload", "board", "IOPS", "MB/s", "p50 us", "p99 us", "ratio"
        );
        for r in &rows {
            println!(
                "{:<18} {:<6} {:>10.0} {:>9.1} {:>9.1} {:>9.1} {:>8.2}",
                r["workload"].as_str().unwrap_or(""),
                r["board"].as_str().unwrap_or(""),
                r["iops"].as_f64().unwrap_or(0.0),
                r["mb_per_s"].as_f64().unwrap_or(0.0),
                r["latency_us"]["p50"].as_f64().unwrap_or(0.0),
                r["latency_us"]["p99"].as_f64().unwrap_or(0.0),
                r["ratio_to_first"].as_f64().unwrap_or(0.0),
            );
        }
    }
    if healthy {
        0
    } else {
        exit::DATA
    }
}
