//! Verified workloads driven through loopback-kernel sessions: the initiator side of the demo
//! and of the end-to-end tests.
//!
//! The region is cut into I/O units of `io_size`; each session gets its own interleaved share of
//! units and one thread, so no two commands in flight ever touch the same block and every read
//! can be checked against the last completed write (see [`stamp`]).

mod driver;
mod scan;
pub mod stamp;

pub use scan::scan;
pub use scan::ScanReport;

use crate::loopback::Session;
use std::time::Duration;

/// Access pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pattern {
    /// Units in order, wrapping.
    Sequential,
    /// Uniformly random units.
    Random,
}

/// Read/write mix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mix {
    /// Reads only.
    Read,
    /// Writes only.
    Write,
    /// This percentage of reads, the rest writes.
    Mixed {
        /// 0..=100.
        read_percent: u8,
    },
}

/// A workload.
#[derive(Clone, Debug)]
pub struct WorkloadConfig {
    /// Pattern.
    pub pattern: Pattern,
    /// Mix.
    pub mix: Mix,
    /// Bytes per command (a multiple of the block size).
    pub io_size: u32,
    /// Commands in flight in total, shared out over the sessions.
    pub queue_depth: usize,
    /// How long to issue commands.
    pub duration: Duration,
    /// Stop after this many commands (whichever comes first).
    pub max_commands: Option<u64>,
    /// Bytes of the disk to use from LBA 0 (0 = the whole disk).
    pub region_bytes: u64,
    /// Seed of the access pattern.
    pub seed: u64,
    /// Blocks never written by this run are expected to read as zeroes (a fresh disk).
    pub expect_zeroed: bool,
    /// Before the timed phase, write every unit of the region once (untimed), so reads check
    /// stamped data rather than zeroes.
    pub prefill: bool,
    /// Longest wait for any one completion before the run gives up on what is outstanding.
    pub completion_timeout: Duration,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        Self {
            pattern: Pattern::Random,
            mix: Mix::Mixed { read_percent: 70 },
            io_size: 4096,
            queue_depth: 32,
            duration: Duration::from_secs(5),
            max_commands: None,
            region_bytes: 0,
            seed: 1,
            expect_zeroed: true,
            prefill: false,
            completion_timeout: Duration::from_secs(30),
        }
    }
}

/// The disk as the initiator sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Logical block size.
    pub block_size: u32,
    /// Blocks.
    pub num_blocks: u64,
}

/// Latency percentiles in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

/// Live figures of the timed phase: reported once when it starts (all zero, after any prefill),
/// then about once a second, then at the end.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Time since start.
    pub elapsed: Duration,
    /// Commands completed.
    pub commands: u64,
    /// Bytes moved.
    pub bytes: u64,
    /// Verification failures.
    pub verify_errors: u64,
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct WorkloadReport {
    /// Commands completed (any status).
    pub commands: u64,
    /// READs completed.
    pub reads: u64,
    /// WRITEs completed.
    pub writes: u64,
    /// Bytes moved by successful commands.
    pub bytes: u64,
    /// Bytes read and checked against their stamps.
    pub verified_bytes: u64,
    /// Blocks that failed verification.
    pub verify_errors: u64,
    /// Commands that ended with a status other than GOOD.
    pub scsi_errors: u64,
    /// Commands submitted that never completed.
    pub unanswered: u64,
    /// Wall time of the timed phase (prefill excluded).
    pub elapsed: Duration,
    /// Completion latency.
    pub latency: Latency,
    /// The first few problems, in words.
    pub first_errors: Vec<String>,
}

impl WorkloadReport {
    /// Commands per second.
    pub fn iops(&self) -> f64 {
        self.commands as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Megabytes (10^6) per second.
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Why a workload cannot run.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// io_size is not a positive multiple of the block size.
    #[error("I/O size {io_size} is not a positive multiple of the block size {block_size}")]
    IoSize {
        /// I/O size.
        io_size: u32,
        /// Block size.
        block_size: u32,
    },
    /// Not enough units to keep the queue depth busy without overlap.
    #[error("region of {units} I/O units is too small for queue depth {queue_depth}; enlarge --size or lower --queue-depth")]
    RegionTooSmall {
        /// Units in the region.
        units: u64,
        /// Requested depth.
        queue_depth: usize,
    },
    /// No sessions given.
    #[error("a workload needs at least one session")]
    NoSession,
    /// A driver thread could not be spawned.
    #[error("cannot spawn workload thread")]
    Spawn(#[source] std::io::Error),
}

/// Run `config` over `sessions`, calling `progress` about once a second.
///
/// # Errors
/// [`WorkloadError`] when the parameters cannot work; I/O errors are counted in the report.
pub fn run(
    sessions: &[Session],
    geometry: Geometry,
    config: &WorkloadConfig,
    progress: &mut dyn FnMut(Progress),
) -> Result<WorkloadReport, WorkloadError> {
    let bs = geometry.block_size;
    if config.io_size == 0 || !config.io_size.is_multiple_of(bs) {
        return Err(WorkloadError::IoSize {
            io_size: config.io_size,
            block_size: bs,
        });
    }
    if sessions.is_empty() {
        return Err(WorkloadError::NoSession);
    }
    let disk_bytes = geometry.num_blocks * u64::from(bs);
    let region = if config.region_bytes == 0 {
        disk_bytes
    } else {
        config.region_bytes.min(disk_bytes)
    };
    let units = region / u64::from(config.io_size);
    let depth = config.queue_depth.max(1);
    if units < (depth as u64) * 2 {
        return Err(WorkloadError::RegionTooSmall {
            units,
            queue_depth: depth,
        });
    }
    driver::run_all(sessions, geometry, config, units, progress)
}
