//! fio side by side (`scst-accel bench --fio`): the same block size, pattern, queue depth, file,
//! region and duration as the store's run, with fio's own engine (io_uring by default) straight
//! on the file, its JSON output (`--output-format=json`) parsed for IOPS, bandwidth, latency
//! and CPU.
//!
//! fio is not a dependency of the build: [`locate`] finds it on `PATH` or says how to install
//! it (`tools/bench/install-fio.sh`, or `apt-get install -y fio`), and the bench then reports
//! the fio column as skipped with that reason.

use std::path::Path;
use std::path::PathBuf;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

/// How to install fio, for messages.
pub const INSTALL_HINT: &str =
    "install it with tools/bench/install-fio.sh (or `apt-get install -y fio` / `dnf install -y fio`)";

/// Extra time fio gets beyond its runtime (start-up, file open, JSON) before it is killed.
pub const GRACE: Duration = Duration::from_secs(60);

/// Why fio did not give a result.
#[derive(Debug, thiserror::Error)]
pub enum FioError {
    /// No `fio` executable on `PATH`.
    #[error("fio not found on PATH ({path}); {INSTALL_HINT}")]
    Missing {
        /// The PATH searched.
        path: String,
    },
    /// fio could not be started.
    #[error("cannot run {bin}: {source}; check it is executable, or reinstall it ({INSTALL_HINT})")]
    Spawn {
        /// The executable.
        bin: PathBuf,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
    /// fio ran past its runtime plus [`GRACE`] and was killed.
    #[error("fio ran for more than {limit:?} and was killed; is the file's device hung? (see `dmesg`)")]
    Timeout {
        /// The limit.
        limit: Duration,
    },
    /// fio exited with an error.
    #[error("fio failed (exit {code:?}): {stderr}; run the command by hand to see why (an ioengine the kernel refuses: try --fio-ioengine libaio)")]
    Failed {
        /// Its exit code.
        code: Option<i32>,
        /// The end of its stderr.
        stderr: String,
    },
    /// Its output is not the JSON this parser knows.
    #[error("fio's JSON output is not as expected ({what}); this parser knows fio 3.x")]
    Output {
        /// What was missing or wrong.
        what: String,
    },
    /// Scratch files for its output could not be made or read.
    #[error("fio's output file {path}: {source}")]
    Scratch {
        /// The file.
        path: PathBuf,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
}

/// One fio job, as the bench runs it.
#[derive(Clone, Debug)]
pub struct FioJob {
    /// The file (or block device) to run on.
    pub filename: PathBuf,
    /// fio's `rw`: randread, randwrite, read, write.
    pub rw: &'static str,
    /// Bytes per I/O.
    pub bs: u64,
    /// I/Os in flight.
    pub iodepth: usize,
    /// Timed length.
    pub runtime: Duration,
    /// Bytes of the file used from offset 0 (the store's workload region).
    pub size: u64,
    /// O_DIRECT (`direct=1`).
    pub direct: bool,
    /// fio's ioengine (io_uring).
    pub ioengine: String,
}

impl FioJob {
    /// fio's command line, `--output` naming the JSON file.
    pub fn args(&self, output: &Path) -> Vec<String> {
        let mut args = vec![
            "--name=scst-accel-bench".to_owned(),
            format!("--filename={}", self.filename.display()),
            format!("--ioengine={}", self.ioengine),
            format!("--direct={}", u8::from(self.direct)),
            format!("--rw={}", self.rw),
            format!("--bs={}", self.bs),
            format!("--iodepth={}", self.iodepth),
            format!("--size={}", self.size),
            format!("--runtime={}ms", self.runtime.as_millis().max(1)),
            "--time_based".to_owned(),
            "--numjobs=1".to_owned(),
            "--allow_file_create=0".to_owned(),
            "--output-format=json".to_owned(),
            format!("--output={}", output.display()),
        ];
        if self.rw.starts_with("rand") {
            // Uniformly random offsets, like the store's workload (no fio random map).
            args.push("--norandommap".to_owned());
            args.push("--randrepeat=0".to_owned());
        }
        args
    }
}

/// What fio measured.
#[derive(Clone, Debug, PartialEq)]
pub struct FioResult {
    /// I/Os per second.
    pub iops: f64,
    /// Megabytes (10^6) per second.
    pub mb_per_s: f64,
    /// Completion latency percentiles and mean, microseconds.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Mean.
    pub mean_us: f64,
    /// I/Os completed.
    pub ios: u64,
    /// fio's user CPU, percent of one core over the run.
    pub usr_cpu: f64,
    /// fio's system CPU, percent of one core over the run.
    pub sys_cpu: f64,
    /// (usr + sys) CPU per I/O, microseconds.
    pub cpu_us_per_io: f64,
}

/// The `fio` executable on `PATH`.
///
/// # Errors
/// [`FioError::Missing`] with the PATH searched and how to install it.
pub fn locate() -> Result<PathBuf, FioError> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join("fio");
        if std::fs::metadata(&candidate).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0) {
            return Ok(candidate);
        }
    }
    Err(FioError::Missing {
        path: path.to_string_lossy().into_owned(),
    })
}

/// `fio --version`, bounded; `None` if it does not answer.
pub fn version(bin: &Path) -> Option<String> {
    let out = run_bounded(Command::new(bin).arg("--version"), Duration::from_secs(10), None).ok()?;
    Some(out.trim().to_owned())
}

/// Run `job` with `bin`, killing fio if it overruns its runtime by [`GRACE`].
///
/// # Errors
/// [`FioError`]: fio could not start, failed, overran, or its output is not fio 3.x JSON.
pub fn run(bin: &Path, job: &FioJob, scratch: &Path) -> Result<FioResult, FioError> {
    let output = scratch.join(format!("fio-{}-{}.json", std::process::id(), job.rw));
    let mut command = Command::new(bin);
    command.args(job.args(&output));
    let result = run_bounded(&mut command, job.runtime + GRACE, Some(bin)).and_then(|_| {
        std::fs::read_to_string(&output).map_err(|source| FioError::Scratch {
            path: output.clone(),
            source,
        })
    });
    let _ = std::fs::remove_file(&output);
    parse(&result?, job.rw)
}

/// Run `command` to completion within `limit`, returning its stdout; killed (and reaped) when
/// it overruns.
fn run_bounded(command: &mut Command, limit: Duration, bin: Option<&Path>) -> Result<String, FioError> {
    let bin = bin.map_or_else(|| PathBuf::from(command.get_program()), Path::to_path_buf);
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| FioError::Spawn {
            bin: bin.clone(),
            source,
        })?;
    // Drain both pipes on threads so a chatty fio cannot block on a full pipe.
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() < limit => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(FioError::Timeout { limit });
            }
        }
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    if !status.success() {
        let tail: String = stderr
            .trim()
            .lines()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
            .join(" / ");
        return Err(FioError::Failed {
            code: status.code(),
            stderr: tail,
        });
    }
    Ok(stdout)
}

/// Parse fio's JSON output (one job) for the direction of `rw`.
///
/// # Errors
/// [`FioError::Output`] naming what is missing; [`FioError::Failed`] when the job reports an
/// error of its own.
pub fn parse(text: &str, rw: &str) -> Result<FioResult, FioError> {
    let missing = |what: &str| FioError::Output {
        what: what.to_owned(),
    };
    // fio may print notes before the JSON object.
    let start = text.find('{').ok_or_else(|| missing("no JSON object"))?;
    let json: serde_json::Value =
        serde_json::from_str(&text[start..]).map_err(|e| missing(&format!("not JSON: {e}")))?;
    let job = &json["jobs"][0];
    if job.is_null() {
        return Err(missing("jobs[0]"));
    }
    if let Some(error) = job["error"].as_i64().filter(|&e| e != 0) {
        return Err(FioError::Failed {
            code: None,
            stderr: format!(
                "job error {error} ({})",
                std::io::Error::from_raw_os_error(error as i32)
            ),
        });
    }
    let dir = if rw.contains("read") { "read" } else { "write" };
    let side = &job[dir];
    let number = |v: &serde_json::Value, what: &str| v.as_f64().ok_or_else(|| missing(what));
    let iops = number(&side["iops"], "iops")?;
    let bw = number(&side["bw_bytes"], "bw_bytes")?;
    let ios = side["total_ios"].as_u64().ok_or_else(|| missing("total_ios"))?;
    let clat = &side["clat_ns"];
    let pct = |key: &str| clat["percentile"][key].as_f64().map_or(0.0, |ns| ns / 1e3);
    let usr = number(&job["usr_cpu"], "usr_cpu")?;
    let sys = number(&job["sys_cpu"], "sys_cpu")?;
    let runtime_s = number(&job["job_runtime"], "job_runtime")? / 1e3;
    Ok(FioResult {
        iops,
        mb_per_s: bw / 1e6,
        p50_us: pct("50.000000"),
        p99_us: pct("99.000000"),
        p999_us: pct("99.900000"),
        mean_us: clat["mean"].as_f64().unwrap_or(0.0) / 1e3,
        ios,
        usr_cpu: usr,
        sys_cpu: sys,
        cpu_us_per_io: (usr + sys) / 100.0 * runtime_s * 1e6 / (ios.max(1) as f64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A trimmed fio 3.33 output, with a note before the JSON as fio prints on some systems.
    const SAMPLE: &str = r#"note: both iodepth >= 1 and synchronous I/O engine are selected
{
  "fio version" : "fio-3.33",
  "jobs" : [
    {
      "jobname" : "scst-accel-bench",
      "error" : 0,
      "job_runtime" : 1000,
      "read" : {
        "io_bytes" : 341573632, "bw_bytes" : 341232399, "iops" : 83308.691309, "total_ios" : 83392,
        "clat_ns" : { "mean" : 380000.5, "percentile" : { "50.000000" : 370688, "99.000000" : 700416, "99.900000" : 1040384 } }
      },
      "write" : { "iops" : 0.0, "bw_bytes" : 0, "total_ios" : 0, "clat_ns" : { "mean" : 0.0 } },
      "usr_cpu" : 5.8,
      "sys_cpu" : 31.7
    }
  ]
}"#;

    #[test]
    fn parses_fio_json() {
        let r = parse(SAMPLE, "randread").expect("parsed");
        assert_eq!(r.ios, 83392);
        assert!((r.iops - 83308.69).abs() < 0.01);
        assert!((r.mb_per_s - 341.232399).abs() < 1e-6);
        assert!((r.p50_us - 370.688).abs() < 1e-9);
        assert!((r.p99_us - 700.416).abs() < 1e-9);
        // 37.5 % of one core over 1 s for 83392 I/Os.
        assert!((r.cpu_us_per_io - 0.375e6 / 83392.0).abs() < 1e-6);
    }

    #[test]
    fn a_failed_job_or_odd_output_is_an_error() {
        let failed = SAMPLE.replace("\"error\" : 0", "\"error\" : 22");
        assert!(matches!(parse(&failed, "randread"), Err(FioError::Failed { .. })));
        assert!(matches!(
            parse("fio: engine io_uring not loadable", "read"),
            Err(FioError::Output { .. })
        ));
        assert!(matches!(
            parse("{\"jobs\": []}", "read"),
            Err(FioError::Output { .. })
        ));
    }

    #[test]
    fn the_command_line_matches_the_store_s_run() {
        let job = FioJob {
            filename: "/srv/x.img".into(),
            rw: "randwrite",
            bs: 4096,
            iodepth: 32,
            runtime: Duration::from_millis(1500),
            size: 16 << 20,
            direct: true,
            ioengine: "io_uring".into(),
        };
        let args = job.args(Path::new("/tmp/o.json"));
        for want in [
            "--filename=/srv/x.img",
            "--ioengine=io_uring",
            "--direct=1",
            "--rw=randwrite",
            "--bs=4096",
            "--iodepth=32",
            "--size=16777216",
            "--runtime=1500ms",
            "--time_based",
            "--output-format=json",
            "--output=/tmp/o.json",
            "--norandommap",
        ] {
            assert!(args.iter().any(|a| a == want), "{want} missing from {args:?}");
        }
    }
}
