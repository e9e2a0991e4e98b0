//! The store alone (`--layers store`): the workload driven straight through the [`Store`]
//! interface, one queue and one submitting thread, without the loopback kernel model or the
//! SCSI engine. This is the fair comparison with fio, which also goes straight to the file.
//!
//! Every block written carries a 16-byte header (its LBA, the unit's write generation and a
//! magic), and every block read is checked against it: misplaced and lost writes are caught
//! without the full-block pattern of the loopback layer, whose cost (a few microseconds per
//! 128 KiB) would be charged to the store and not to fio.

use scst_accel_dma::SgvPool;
use scst_accel_hal::alloc_stats;
use scst_accel_handler::store::CmdBuffer;
use scst_accel_handler::store::IoBuffer;
use scst_accel_handler::store::Store;
use scst_accel_handler::store::StoreCompletion;
use scst_accel_handler::store::StoreError;
use scst_accel_handler::store::StoreOp;
use scst_accel_handler::store::StoreRequest;
use scst_accel_handler::store::StoreStatus;
use scst_accel_handler::store::StoreToken;
use scst_accel_handler::workload::stamp::Rng;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

/// "SCAB": the header magic of the store-only layer.
const MAGIC: u32 = 0x5343_4142;
/// Generation of a unit whose content is unknown (never written, or a write failed).
const UNKNOWN: u32 = 0;
/// Longest wait for any completion before the run gives up on what is outstanding.
const COMPLETION_TIMEOUT: Duration = Duration::from_secs(30);

/// The workload.
#[derive(Clone, Copy, Debug)]
pub struct StoreWorkload {
    /// Random (else sequential) units.
    pub random: bool,
    /// Writes (else reads); either after an untimed prefill of the region.
    pub write: bool,
    /// Bytes per request.
    pub io_size: u32,
    /// Requests in flight.
    pub queue_depth: usize,
    /// Timed length.
    pub duration: Duration,
    /// Bytes of the store used from LBA 0.
    pub region_bytes: u64,
    /// Seed of the random pattern.
    pub seed: u64,
}

/// Why the store-only run could not run.
#[derive(Debug, thiserror::Error)]
pub enum StoreBenchError {
    /// The I/O size is not a multiple of the block size.
    #[error("I/O size {io_size} is not a positive multiple of the store's block size {block_size}")]
    IoSize {
        /// Bytes per request.
        io_size: u32,
        /// The store's block size.
        block_size: u32,
    },
    /// Too few units for the queue depth without two requests on one unit.
    #[error("a region of {units} I/O units is too small for queue depth {queue_depth}; enlarge --size")]
    RegionTooSmall {
        /// Units in the region.
        units: u64,
        /// Queue depth.
        queue_depth: usize,
    },
    /// The store gave no queue or failed a submission.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The buffer pool refused a buffer.
    #[error("the buffer pool refused {len} bytes; raise --buffer-memory")]
    NoBuffer {
        /// Bytes asked for.
        len: usize,
    },
    /// Waiting on the queue's notify fd failed.
    #[error("poll on the store's completion fd: {0}")]
    Poll(#[source] std::io::Error),
}

/// What the run measured.
#[derive(Clone, Debug, Default)]
pub struct StoreReport {
    /// Requests completed in the timed phase.
    pub commands: u64,
    /// Bytes moved by successful requests in the timed phase.
    pub bytes: u64,
    /// Wall time of the timed phase.
    pub elapsed: Duration,
    /// Completion latency percentiles and mean, microseconds.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Mean.
    pub mean_us: f64,
    /// Blocks whose header was checked.
    pub verified_blocks: u64,
    /// Blocks whose header was wrong.
    pub verify_errors: u64,
    /// Requests that did not complete Good.
    pub errors: u64,
    /// Requests never completed.
    pub unanswered: u64,
    /// Process CPU (all threads: this one and the store's) over the timed phase.
    pub cpu: Option<Duration>,
    /// Of that, the simulated board's threads ([`crate::cpu::simulated_device_cpu_time`]).
    pub device_cpu: Option<Duration>,
    /// Heap allocations of the whole process (this thread, the store's and the board's) over
    /// the timed phase; `None` where the binary does not count them
    /// ([`alloc_stats::start_counting`]).
    pub allocations: Option<u64>,
    /// The first few problems, in words.
    pub first_errors: Vec<String>,
}

impl StoreReport {
    /// Requests per second.
    pub fn iops(&self) -> f64 {
        self.commands as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Megabytes (10^6) per second.
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// No wrong data, no failed or unanswered request.
    pub fn healthy(&self) -> bool {
        self.verify_errors == 0 && self.errors == 0 && self.unanswered == 0 && self.commands > 0
    }
}

struct Slot {
    buffer: Arc<CmdBuffer>,
    busy: Option<InFlight>,
}

#[derive(Clone, Copy)]
struct InFlight {
    unit: u64,
    write: bool,
    generation: u32,
    started: Instant,
    timed: bool,
}

/// Which phase the driver loop runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Write every unit once, in order (untimed).
    Prefill,
    /// The measured workload until the deadline.
    Timed,
}

struct Driver<'a> {
    w: &'a StoreWorkload,
    block_size: u32,
    blocks_per_unit: u32,
    units: u64,
    generation: Vec<u32>,
    busy: Vec<bool>,
    slots: Vec<Slot>,
    rng: Rng,
    cursor: u64,
    latencies: Vec<u32>,
    report: StoreReport,
}

/// Latencies the record holds before it grows.
const LATENCIES_RESERVED: usize = 1 << 20;

/// Run `w` on `store` with buffers from `pool`.
///
/// # Errors
/// [`StoreBenchError`] when the parameters cannot work or the store refuses; I/O errors and
/// wrong data are counted in the report.
pub fn run(
    store: &dyn Store,
    pool: &Arc<SgvPool>,
    w: &StoreWorkload,
) -> Result<StoreReport, StoreBenchError> {
    let info = store.info();
    let block_size = info.block_size;
    if w.io_size == 0 || !w.io_size.is_multiple_of(block_size) {
        return Err(StoreBenchError::IoSize {
            io_size: w.io_size,
            block_size,
        });
    }
    let region = w.region_bytes.min(info.num_blocks * u64::from(block_size));
    let units = region / u64::from(w.io_size);
    if units < 2 * w.queue_depth.max(1) as u64 {
        return Err(StoreBenchError::RegionTooSmall {
            units,
            queue_depth: w.queue_depth,
        });
    }
    let mut queue = store.open_queue()?;
    // This thread's lock token (docs/locking.md): the bench is a store's only submitter.
    let mut token = StoreToken::root();
    let slots = (0..w.queue_depth.max(1))
        .map(|_| {
            CmdBuffer::allocate(&mut token, pool, w.io_size as usize)
                .map(|buffer| Slot { buffer, busy: None })
                .ok_or(StoreBenchError::NoBuffer {
                    len: w.io_size as usize,
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut d = Driver {
        w,
        block_size,
        blocks_per_unit: w.io_size / block_size,
        units,
        generation: vec![UNKNOWN; units as usize],
        busy: vec![false; units as usize],
        slots,
        rng: Rng::new(w.seed),
        cursor: 0,
        latencies: Vec::new(),
        report: StoreReport::default(),
    };
    // Untimed prefill for writes too: a fresh RAM store or sparse image allocates on first
    // touch (page faults, extents), which a write run would otherwise charge to the store
    // (4 KiB random writes on RAM measured a fifth of their steady rate in a 1 s run).
    d.drive(queue.as_mut(), Phase::Prefill)?;
    d.cursor = 0;
    // Room for a million latencies before the clock starts (4 MiB), so the record's growth
    // is not counted as the store's allocations in any but the longest runs.
    d.latencies.reserve(LATENCIES_RESERVED);
    let counting = alloc_stats::start_counting();
    let cpu_before = crate::cpu::process_cpu_time();
    let device_before = crate::cpu::simulated_device_cpu_time();
    let allocations_before = alloc_stats::allocations();
    d.drive(queue.as_mut(), Phase::Timed)?;
    d.report.allocations = counting.then(|| alloc_stats::allocations() - allocations_before);
    d.report.cpu = cpu_before
        .zip(crate::cpu::process_cpu_time())
        .map(|(a, b)| b.saturating_sub(a));
    d.report.device_cpu = device_before
        .zip(crate::cpu::simulated_device_cpu_time())
        .map(|(a, b)| b.saturating_sub(a));
    d.finish();
    Ok(d.report)
}

impl Driver<'_> {
    /// Issue until the phase ends, then wait (bounded) for everything in flight.
    fn drive(
        &mut self,
        queue: &mut dyn scst_accel_handler::store::StoreQueue,
        phase: Phase,
    ) -> Result<(), StoreBenchError> {
        let started = Instant::now();
        let deadline = started + self.w.duration;
        let mut prefilled = 0u64;
        // The bench thread's lock token: it holds nothing while it drives the queue.
        let mut token = StoreToken::root();
        let mut batch: Vec<StoreRequest> = Vec::with_capacity(self.slots.len());
        let mut done: Vec<StoreCompletion> = Vec::with_capacity(self.slots.len());
        let mut last_progress = Instant::now();
        loop {
            let issuing = match phase {
                Phase::Prefill => prefilled < self.units,
                Phase::Timed => Instant::now() < deadline,
            };
            if issuing && batch.is_empty() {
                for index in 0..self.slots.len() {
                    if self.slots[index].busy.is_some() {
                        continue;
                    }
                    if phase == Phase::Prefill && prefilled >= self.units {
                        break;
                    }
                    let unit = match phase {
                        Phase::Prefill => {
                            prefilled += 1;
                            prefilled - 1
                        }
                        Phase::Timed => self.pick(),
                    };
                    let write = phase == Phase::Prefill || self.w.write;
                    batch.push(self.request(index, unit, write, phase == Phase::Timed));
                }
            }
            if !batch.is_empty() {
                match queue.submit(&mut token, &mut batch) {
                    Ok(()) | Err(StoreError::QueueFull { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            let in_flight = self.slots.iter().filter(|s| s.busy.is_some()).count();
            if in_flight == 0 && batch.is_empty() && !issuing {
                break;
            }
            if queue.in_flight() > 0 && !queue.prepare_to_wait() {
                if let Some(fd) = queue.notify_fd() {
                    // `poll_ready`, not `poll_readable`: the bench's own wait allocates nothing,
                    // so the allocations it reports per command are the store's.
                    scst_accel_hal::fdio::poll_ready(&[fd], Duration::from_millis(100))
                        .map_err(StoreBenchError::Poll)?;
                }
            }
            done.clear();
            if queue.reap(&mut done) > 0 {
                last_progress = Instant::now();
            }
            for c in &done {
                self.complete(c);
            }
            if last_progress.elapsed() > COMPLETION_TIMEOUT && in_flight > 0 {
                let left = self.slots.iter().filter(|s| s.busy.is_some()).count() as u64;
                self.report.unanswered += left;
                self.note(format!(
                    "{left} requests unanswered after {COMPLETION_TIMEOUT:?}; the store is stuck"
                ));
                break;
            }
        }
        if phase == Phase::Timed {
            self.report.elapsed = started.elapsed();
        }
        Ok(())
    }

    /// A free unit: the next in order, or a random one, never one in flight.
    fn pick(&mut self) -> u64 {
        let mut unit = if self.w.random {
            self.rng.below(self.units)
        } else {
            self.cursor % self.units
        };
        while self.busy[unit as usize] {
            unit = (unit + 1) % self.units;
        }
        self.cursor = unit + 1;
        unit
    }

    fn request(&mut self, index: usize, unit: u64, write: bool, timed: bool) -> StoreRequest {
        let lba = unit * u64::from(self.blocks_per_unit);
        let slot = &mut self.slots[index];
        let generation = if write {
            let g = self.generation[unit as usize].wrapping_add(1).max(1);
            let mut header = [0u8; 16];
            for b in 0..u64::from(self.blocks_per_unit) {
                header[..8].copy_from_slice(&(lba + b).to_le_bytes());
                header[8..12].copy_from_slice(&g.to_le_bytes());
                header[12..].copy_from_slice(&MAGIC.to_le_bytes());
                slot.buffer
                    .pages()
                    .write_at((b * u64::from(self.block_size)) as usize, &header);
            }
            g
        } else {
            self.generation[unit as usize]
        };
        self.busy[unit as usize] = true;
        slot.busy = Some(InFlight {
            unit,
            write,
            generation,
            started: Instant::now(),
            timed,
        });
        let blocks = self.blocks_per_unit;
        StoreRequest {
            tag: index as u64,
            op: if write {
                StoreOp::Write {
                    lba,
                    blocks,
                    fua: false,
                }
            } else {
                StoreOp::Read { lba, blocks }
            },
            buffer: Some(IoBuffer::new(Arc::clone(&slot.buffer), self.w.io_size as usize)),
        }
    }

    fn complete(&mut self, c: &StoreCompletion) {
        let Some(slot) = self.slots.get_mut(c.tag as usize) else {
            self.note(format!("completion with unknown tag {}", c.tag));
            return;
        };
        let Some(f) = slot.busy.take() else {
            self.note(format!("second completion of tag {}", c.tag));
            return;
        };
        let buffer = Arc::clone(&slot.buffer);
        self.busy[f.unit as usize] = false;
        let good = c.status == StoreStatus::Good;
        if f.write {
            self.generation[f.unit as usize] = if good { f.generation } else { UNKNOWN };
        } else if good && f.generation != UNKNOWN {
            let lba = f.unit * u64::from(self.blocks_per_unit);
            let mut header = [0u8; 16];
            for b in 0..u64::from(self.blocks_per_unit) {
                buffer
                    .pages()
                    .read_at((b * u64::from(self.block_size)) as usize, &mut header);
                let found_lba = u64::from_le_bytes(header[..8].try_into().unwrap_or_default());
                let found_gen = u32::from_le_bytes(header[8..12].try_into().unwrap_or_default());
                let found_magic = u32::from_le_bytes(header[12..].try_into().unwrap_or_default());
                if f.timed {
                    self.report.verified_blocks += 1;
                }
                if (found_lba, found_gen, found_magic) != (lba + b, f.generation, MAGIC) {
                    self.report.verify_errors += 1;
                    self.note(format!(
                        "block {}: found LBA {found_lba} generation {found_gen} magic {found_magic:#x}, \
                         expected generation {}",
                        lba + b,
                        f.generation
                    ));
                }
            }
        }
        if !good {
            self.report.errors += 1;
            self.note(format!("unit {}: {}", f.unit, c.status));
        }
        if f.timed {
            self.report.commands += 1;
            if good {
                self.report.bytes += u64::from(self.w.io_size);
            }
            let ns = f.started.elapsed().as_nanos();
            self.latencies.push(u32::try_from(ns).unwrap_or(u32::MAX));
        }
    }

    fn note(&mut self, text: String) {
        if self.report.first_errors.len() < 8 {
            self.report.first_errors.push(text);
        }
    }

    /// Latency percentiles from the samples.
    fn finish(&mut self) {
        let l = &mut self.latencies;
        if l.is_empty() {
            return;
        }
        l.sort_unstable();
        let at = |q: f64| f64::from(l[((l.len() - 1) as f64 * q).round() as usize]) / 1e3;
        self.report.p50_us = at(0.5);
        self.report.p99_us = at(0.99);
        self.report.p999_us = at(0.999);
        self.report.mean_us = l.iter().map(|&n| f64::from(n)).sum::<f64>() / l.len() as f64 / 1e3;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scst_accel_handler::store::ram::RamStore;

    fn workload(random: bool, write: bool) -> StoreWorkload {
        StoreWorkload {
            random,
            write,
            io_size: 4096,
            queue_depth: 8,
            duration: Duration::from_millis(100),
            region_bytes: 1 << 20,
            seed: 3,
        }
    }

    #[test]
    fn a_ram_store_runs_every_pattern_clean() {
        let store = RamStore::new(512, 2048, 256);
        let pool = Arc::new(SgvPool::new(None, None, 64 << 20));
        for (random, write) in [(true, false), (true, true), (false, false), (false, true)] {
            let r = run(&store, &pool, &workload(random, write)).expect("runs");
            assert!(r.healthy(), "random {random} write {write}: {r:?}");
            assert!(r.commands > 0 && r.p50_us > 0.0, "{r:?}");
            if !write {
                assert_eq!(r.verified_blocks, r.commands * 8, "{r:?}");
            }
        }
    }

    #[test]
    fn a_region_too_small_for_the_depth_is_refused() {
        let store = RamStore::new(512, 64, 256);
        let pool = Arc::new(SgvPool::new(None, None, 64 << 20));
        let e = run(&store, &pool, &workload(true, false)).expect_err("refused");
        assert!(matches!(e, StoreBenchError::RegionTooSmall { .. }), "{e}");
    }
}
