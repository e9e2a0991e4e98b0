//! The structured random mode and the crash replayer of the fuzz targets (docs/fuzzing.md):
//!
//! - `fuzz_random run TARGET SECONDS SEED [CRASH_DIR]`: structured random inputs (no coverage
//!   guidance), mutated from the seed corpus, for SECONDS; prints `TARGET executions=N
//!   crashes=C`; the first crashing input is saved to CRASH_DIR and the exit status is 1;
//! - `fuzz_random replay TARGET FILE...`: run the target on each file and report which panic.

use std::panic;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;
use std::time::Instant;

fn usage() -> ExitCode {
    eprintln!("usage: fuzz_random run TARGET SECONDS SEED [CRASH_DIR] | replay TARGET FILE...");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(mode), Some(name)) = (args.first(), args.get(1)) else {
        return usage();
    };
    let Some(target) = scst_accel_fuzz::target(name) else {
        eprintln!("unknown target {name}");
        return usage();
    };
    match mode.as_str() {
        "run" => {
            let (Some(Ok(seconds)), Some(Ok(seed))) = (
                args.get(2).map(|s| s.parse::<u64>()),
                args.get(3).map(|s| s.parse::<u64>()),
            ) else {
                return usage();
            };
            let crash_dir = args.get(4).map(Path::new);
            let corpus: Vec<Vec<u8>> = scst_accel_fuzz::corpus(name)
                .map(|files| files.into_iter().map(|(_, data)| data).collect())
                .unwrap_or_default();
            let deadline = Instant::now() + Duration::from_secs(seconds);
            let mut last = Vec::new();
            let mut executions = 0u64;
            let result = panic::catch_unwind(panic::AssertUnwindSafe(|| {
                scst_accel_fuzz::random_run(target, &corpus, seed, u64::MAX, Some(deadline), |input| {
                    last.clear();
                    last.extend_from_slice(input);
                    executions += 1;
                })
            }));
            let crashed = result.is_err();
            println!("{name} executions={executions} crashes={}", u8::from(crashed));
            let accepted = match name.as_str() {
                "sca1" => Some(&scst_accel_fuzz::sca1::ACCEPTED),
                "nvme" => Some(&scst_accel_fuzz::nvme::ACCEPTED),
                _ => None,
            };
            if let Some(a) = accepted {
                println!(
                    "{name}: forged completions the driver accepted: {}",
                    a.load(std::sync::atomic::Ordering::Relaxed)
                );
            }
            if name == "scsi" {
                let caw = &scst_accel_fuzz::scsi::COMPARE_AND_WRITES;
                let fused = &scst_accel_fuzz::scsi::FUSED_COMPARE_AND_WRITES;
                println!(
                    "scsi: engine COMPARE AND WRITE planned: {} compare-then-write, {} fused",
                    caw.load(std::sync::atomic::Ordering::Relaxed),
                    fused.load(std::sync::atomic::Ordering::Relaxed)
                );
            }
            if crashed {
                if let Some(dir) = crash_dir {
                    let path = dir.join(format!("{name}-seed{seed}-crash"));
                    let saved = std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&path, &last));
                    match saved {
                        Ok(()) => println!("{name}: crashing input saved to {}", path.display()),
                        Err(e) => println!("{name}: cannot save the crashing input: {e}"),
                    }
                }
                return ExitCode::from(1);
            }
            ExitCode::SUCCESS
        }
        "replay" => {
            let mut failed = 0;
            for file in &args[2..] {
                let data = match std::fs::read(file) {
                    Ok(d) => d,
                    Err(e) => {
                        println!("{file}: {e}");
                        failed += 1;
                        continue;
                    }
                };
                if panic::catch_unwind(|| target(&data)).is_err() {
                    println!("{file}: CRASH");
                    failed += 1;
                } else {
                    println!("{file}: ok");
                }
            }
            if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        _ => usage(),
    }
}
