//! The handler alone (`--layers handler`) and the physical reference (`--layers reference`).
//!
//! *handler*: the real frontend (workers, SCSI engine, buffer table, leases, SGV pool) serves
//! the replay kernel ([`ReplayKernel`]: pre-built EXECs as SCST sends them with a warm SGV cache,
//! every reply checked, no kernel model) over the null store ([`NullStore`]: completes every
//! request without touching data). What a command costs there is the handler's own cost, plus
//! the few atomic operations of the replay's bookkeeping, which a kernel costs at least. Figures
//! per command over the timed window: CPU of the worker threads (nanoseconds from schedstat),
//! heap allocations in the process (the binary's counting allocator), lock acquisitions per
//! lock level, REPLY_AND_GET_MULTI calls (each a syscall on a real kernel) and wake-ups from
//! poll.
//!
//! *reference*: in the same run, what touching the data once costs: a copy of the workload's
//! block size between random blocks of two regions of the run's size (`memcpy_us`: as a RAM
//! store copies; data an initiator sends is not in the handler's cache either), the same copy
//! of one block over and over (`memcpy_hot_us`: from and to the cache, for comparison), and one
//! empty ioctl (an scst_user request on /dev/null, answered ENOTTY: the syscall's entry and
//! exit and the VFS dispatch, nothing else).
//!
//! Locks: `shared_lock_acquisitions_per_command` counts every level but those in
//! [`PER_WORKER_LOCK_LEVELS`], whose every lock belongs to one worker and is taken per command
//! only by it.

use crate::cpu::thread_cpu_time;
use crate::cpu::threads_cpu_time_precise;
use scst_accel_dma::SgvPool;
use scst_accel_hal::alloc_stats;
use scst_accel_hal::locks::lock_stats;
use scst_accel_hal::locks::LockStat;
use scst_accel_handler::frontend::Frontend;
use scst_accel_handler::frontend::FrontendConfig;
use scst_accel_handler::frontend::FrontendStats;
use scst_accel_handler::frontend::PER_WORKER_LOCK_LEVELS;
use scst_accel_handler::scsi::Disk;
use scst_accel_handler::scsi::DiskConfig;
use scst_accel_handler::store::null::NullStore;
use scst_accel_handler::store::Store;
use scst_accel_handler::transport::register::default_options;
use scst_accel_handler::transport::replay::ReplayConfig;
use scst_accel_handler::transport::replay::ReplayKernel;
use scst_accel_handler::transport::replay::ReplayStats;
use scst_accel_handler::transport::ScstUserFd;
use serde_json::json;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

/// The handler's logical block size in this layer.
const BLOCK_SIZE: u32 = 512;
/// Untimed run before the window: the SGV cache fills (one miss per slot) and the workers'
/// containers reach their working size.
const WARM_UP: Duration = Duration::from_millis(300);
/// How long the stop may take: every slot's last command and its buffer's return.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Worker threads of the handler layer: one, so that CPU per command is one thread's work and
/// no figure mixes in contention between workers.
const WORKERS: usize = 1;

/// One workload of the handler layer.
#[derive(Clone, Copy, Debug)]
pub struct HandlerWorkload {
    /// The workload's name in the bench's rows.
    pub name: &'static str,
    /// Random (else sequential) LBAs.
    pub random: bool,
    /// WRITE (else READ).
    pub write: bool,
    /// Bytes per command.
    pub io_size: u32,
    /// Commands outstanding.
    pub queue_depth: usize,
    /// Timed length.
    pub duration: Duration,
    /// Bytes of the disk.
    pub region_bytes: u64,
}

/// Figures sampled at the edges of the window.
struct Sample {
    at: Instant,
    replay: ReplayStats,
    frontend: FrontendStats,
    cpu: Option<Duration>,
    allocations: u64,
    locks: Vec<LockStat>,
}

impl Sample {
    fn take(replay: &ReplayKernel, frontend: &Frontend) -> Self {
        Self {
            at: Instant::now(),
            replay: replay.stats(),
            frontend: frontend.stats(),
            cpu: threads_cpu_time_precise("scst-worker"),
            allocations: alloc_stats::allocations(),
            locks: lock_stats(),
        }
    }
}

/// Run the handler layer; the cell's JSON, or why it could not run.
pub fn run(w: &HandlerWorkload) -> Result<Value, String> {
    let counting = alloc_stats::start_counting();
    let blocks_per_command = w.io_size / BLOCK_SIZE;
    if blocks_per_command == 0 || !w.io_size.is_multiple_of(BLOCK_SIZE) {
        return Err(format!(
            "I/O size {} is not a multiple of {BLOCK_SIZE}",
            w.io_size
        ));
    }
    let region_blocks = w.region_bytes / u64::from(BLOCK_SIZE);
    let store = Arc::new(NullStore::new(
        BLOCK_SIZE,
        region_blocks,
        blocks_per_command.max(2048),
    ));
    let disk = Disk::try_new(DiskConfig::for_store(&store.info())).map_err(|e| e.to_string())?;
    let options = default_options();
    let replay = Arc::new(
        ReplayKernel::new(ReplayConfig {
            queue_depth: w.queue_depth,
            block_size: BLOCK_SIZE,
            blocks_per_command,
            region_blocks,
            write: w.write,
            random: w.random,
            seed: 1,
            on_free_cmd: options.on_free_cmd_type == scst_accel_handler::abi::on_free_cmd_type::CALL,
        })
        .map_err(|e| e.to_string())?,
    );
    let pool = Arc::new(SgvPool::new(None, None, 1 << 30));
    let frontend = Frontend::start(
        Arc::clone(&replay) as Arc<dyn ScstUserFd>,
        Arc::new(disk),
        store,
        Arc::clone(&pool),
        FrontendConfig {
            workers: WORKERS,
            ..FrontendConfig::default()
        },
    )
    .map_err(|e| e.to_string())?;
    std::thread::sleep(WARM_UP);
    let start = Sample::take(&replay, &frontend);
    std::thread::sleep(w.duration);
    let end = Sample::take(&replay, &frontend);
    replay.stop();
    let deadline = Instant::now() + STOP_TIMEOUT;
    while !replay.finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    let finished = replay.finished();
    let report = frontend.shutdown();
    let last = replay.stats();
    let held = report.stats.buffers.buffers;
    let healthy = finished
        && last.bad_replies == 0
        && held == 0
        && report.stats.exec_errors == 0
        && report.panicked_workers == 0;
    Ok(cell(w, &start, &end, counting, finished, held, last, healthy))
}

#[allow(clippy::too_many_arguments)] // one cell's JSON from what the run measured
fn cell(
    w: &HandlerWorkload,
    start: &Sample,
    end: &Sample,
    counting: bool,
    finished: bool,
    held: u64,
    last: ReplayStats,
    healthy: bool,
) -> Value {
    let commands = end.replay.commands - start.replay.commands;
    let per = |x: f64| if commands > 0 { x / commands as f64 } else { 0.0 };
    let secs = end.at.duration_since(start.at).as_secs_f64();
    let cpu = start
        .cpu
        .zip(end.cpu)
        .map(|(a, b)| b.saturating_sub(a).as_secs_f64() * 1e6);
    let mut locks = serde_json::Map::new();
    let mut total_locks = 0u64;
    let mut shared_locks = 0u64;
    for after in &end.locks {
        let before = start
            .locks
            .iter()
            .find(|b| b.level == after.level)
            .map_or(0, |b| b.acquisitions);
        let taken = after.acquisitions - before;
        if taken > 0 {
            total_locks += taken;
            if !PER_WORKER_LOCK_LEVELS.contains(&after.name) {
                shared_locks += taken;
            }
            locks.insert(after.name.to_owned(), json!(per(taken as f64)));
        }
    }
    let calls = end.frontend.ioctls - start.frontend.ioctls;
    json!({
        "workload": w.name,
        "board": "null",
        "layer": "handler",
        "region_bytes": w.region_bytes,
        "workers": WORKERS,
        "iops": commands as f64 / secs.max(1e-9),
        "mb_per_s": commands as f64 * f64::from(w.io_size) / 1e6 / secs.max(1e-9),
        "cpu_us_per_command": cpu.map(per),
        "commands": commands,
        "allocations_per_command": counting.then(|| per((end.allocations - start.allocations) as f64)),
        "lock_acquisitions_per_command": per(total_locks as f64),
        "shared_lock_acquisitions_per_command": per(shared_locks as f64),
        "per_worker_lock_levels": PER_WORKER_LOCK_LEVELS,
        "locks_per_command": locks,
        "reply_and_get_multi_per_command": per(calls as f64),
        "commands_per_call": if calls > 0 { commands as f64 / calls as f64 } else { 0.0 },
        "wakeups_per_command": per((end.frontend.wakeups - start.frontend.wakeups) as f64),
        "linger_looks_per_command": per((end.frontend.linger_looks - start.frontend.linger_looks) as f64),
        "on_free_cmd_per_command": per((end.replay.on_free_cmd - start.replay.on_free_cmd) as f64),
        "replay": {
            "finished": finished,
            "bad_replies": last.bad_replies,
            "buffers_returned": last.cached_frees,
            "readiness_changes": last.readiness_changes,
        },
        "buffers_left_in_handler": held,
        "healthy": healthy,
    })
}

/// The physical reference of a workload: one copy of its block size, one empty ioctl.
pub fn reference(w: &HandlerWorkload) -> Result<Value, String> {
    let time = w.duration.min(Duration::from_secs(1));
    let copy_ns = copy_cost(w.io_size as usize, w.region_bytes, time);
    // The same block over and over: what a copy costs from and to the cache, for comparison.
    let hot_ns = copy_cost(w.io_size as usize, 0, time / 4);
    let ioctl_ns = ioctl_cost(Duration::from_millis(300))?;
    let bandwidth = f64::from(w.io_size) / copy_ns.max(1e-9) * 1e9 / 1e6;
    Ok(json!({
        "workload": w.name,
        "board": "reference",
        "layer": "reference",
        "region_bytes": w.region_bytes,
        "memcpy_us": copy_ns / 1e3,
        "memcpy_hot_us": hot_ns / 1e3,
        "memcpy_mb_per_s": bandwidth,
        "empty_ioctl_us": ioctl_ns / 1e3,
        "healthy": true,
    }))
}

/// CPU nanoseconds per copy of `size` bytes from a random block of one region to a random block of
/// another (each `region` bytes, at most 65536 blocks), over `time`; a region of 0 copies one
/// block to one block (in cache after the first copy).
fn copy_cost(size: usize, region: u64, time: Duration) -> f64 {
    let blocks = (usize::try_from(region).unwrap_or(usize::MAX) / size).clamp(1, 1 << 16);
    let source: Vec<u8> = (0..blocks * size).map(|i| i as u8).collect();
    // Written once before the clock starts: first-touch page faults (zeroing a huge page can
    // take 100 µs) are not a copy's cost.
    let mut target = vec![1u8; blocks * size];
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut copies = 0u64;
    let clock = CpuClock::start();
    let start = Instant::now();
    while start.elapsed() < time {
        for _ in 0..64 {
            // xorshift: a random pair of blocks per copy, so caches hold what a store's would.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let from = (x as usize % blocks) * size;
            let to = ((x >> 32) as usize % blocks) * size;
            target[to..to + size].copy_from_slice(&source[from..from + size]);
            copies += 1;
        }
    }
    std::hint::black_box(&target);
    clock.elapsed(start).as_nanos() as f64 / copies.max(1) as f64
}

/// The calling thread's CPU time since `start` (so preemption by other work on a shared
/// machine is not counted), or the wall time where the kernel does not tell.
struct CpuClock(Option<Duration>);

impl CpuClock {
    fn start() -> Self {
        Self(thread_cpu_time())
    }

    fn elapsed(&self, wall_start: Instant) -> Duration {
        match (self.0, thread_cpu_time()) {
            (Some(a), Some(b)) => b.saturating_sub(a),
            _ => wall_start.elapsed(),
        }
    }
}

/// CPU nanoseconds per empty ioctl over `time`.
fn ioctl_cost(time: Duration) -> Result<f64, String> {
    use std::os::fd::AsFd;
    let null = std::fs::File::open("/dev/null").map_err(|e| format!("/dev/null: {e}"))?;
    let mut calls = 0u64;
    let clock = CpuClock::start();
    let start = Instant::now();
    while start.elapsed() < time {
        for _ in 0..64 {
            // An scst_user request on a file that is not /dev/scst_user: ENOTTY, nothing done.
            let _ = scst_accel_handler::transport::sys::flush_cache(null.as_fd());
            calls += 1;
        }
    }
    Ok(clock.elapsed(start).as_nanos() as f64 / calls.max(1) as f64)
}
