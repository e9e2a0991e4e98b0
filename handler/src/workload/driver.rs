//! One thread per session: keep the session's share of the queue depth busy, check every read.

use super::stamp;
use super::Geometry;
use super::Latency;
use super::Mix;
use super::Pattern;
use super::Progress;
use super::WorkloadConfig;
use super::WorkloadError;
use super::WorkloadReport;
use crate::abi::queue_type;
use crate::abi::sam_status;
use crate::int_map::IntMap;
use crate::loopback::ScsiCompletion;
use crate::loopback::ScsiRequest;
use crate::loopback::Session;
use hdrhistogram::Histogram;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

const MAX_ERRORS_KEPT: usize = 10;

/// Figures shared with the progress reporter.
#[derive(Default)]
struct Live {
    /// Drivers done with their prefill.
    prefilled: AtomicUsize,
    /// Set by the coordinator when the timed phase starts.
    go: AtomicBool,
    issued: AtomicU64,
    commands: AtomicU64,
    bytes: AtomicU64,
    verify_errors: AtomicU64,
}

struct Pending {
    unit: usize,
    write_gen: Option<u32>,
    /// When its batch was handed to the session.
    started: Instant,
}

/// Commands prepared for one submission, with what the driver keeps of each.
#[derive(Default)]
struct Batch {
    requests: Vec<ScsiRequest>,
    pending: Vec<(u64, Pending)>,
}

struct Driver<'a> {
    session: &'a Session,
    config: &'a WorkloadConfig,
    block_size: u32,
    blocks_per_io: u32,
    /// Global unit numbers this driver owns.
    units: Vec<u64>,
    gens: Vec<u32>,
    busy: Vec<bool>,
    cursor: usize,
    prefilling: bool,
    rng: stamp::Rng,
    inflight: IntMap<u64, Pending>,
    /// The clock as read at the last submission or the last wake-up with completions: one
    /// read per batch serves the batch's start times, its completions' latencies and the
    /// run's deadline (three reads per command made 1.3 % of a 4 KiB run's CPU).
    now: Instant,
    /// Commands and bytes answered and not yet added to the shared progress counters: added
    /// once per wake-up with completions, not per command (the drivers of several sessions
    /// would take turns at the same cache line).
    unpublished: (u64, u64),
    next_tag: u64,
    depth: usize,
    live: &'a Live,
    report: WorkloadReport,
    histogram: Histogram<u64>,
}

pub(super) fn run_all(
    sessions: &[Session],
    geometry: Geometry,
    config: &WorkloadConfig,
    units: u64,
    progress: &mut dyn FnMut(Progress),
) -> Result<WorkloadReport, WorkloadError> {
    let live = Live::default();
    let n = sessions.len();
    let (elapsed, results) = std::thread::scope(|scope| {
        let mut handles = Vec::new();
        for (index, session) in sessions.iter().enumerate() {
            let depth = config.queue_depth.max(1) / n + usize::from(index < config.queue_depth.max(1) % n);
            let owned: Vec<u64> = (index as u64..units).step_by(n).collect();
            let live = &live;
            let spawned = std::thread::Builder::new()
                .name(format!("workload-{index}"))
                .spawn_scoped(scope, move || {
                    Driver::new(session, geometry, config, owned, depth, index, live).run()
                });
            match spawned {
                Ok(h) => handles.push(h),
                Err(e) => return Err(WorkloadError::Spawn(e)),
            }
        }
        // Untimed prefill first: wait (1 ms polls) until every driver is done with it or has left,
        // then start the clock and release them together.
        while config.prefill
            && live.prefilled.load(Ordering::Acquire) < n
            && !handles.iter().any(|h| h.is_finished())
        {
            std::thread::park_timeout(Duration::from_millis(1));
        }
        live.commands.store(0, Ordering::Relaxed);
        live.bytes.store(0, Ordering::Relaxed);
        let start = Instant::now();
        live.go.store(true, Ordering::Release);
        let snapshot = || Progress {
            elapsed: start.elapsed(),
            commands: live.commands.load(Ordering::Relaxed),
            bytes: live.bytes.load(Ordering::Relaxed),
            verify_errors: live.verify_errors.load(Ordering::Relaxed),
        };
        progress(snapshot());
        let mut last = Instant::now();
        while !handles.iter().all(|h| h.is_finished()) {
            std::thread::park_timeout(Duration::from_millis(100));
            if last.elapsed() >= Duration::from_secs(1) {
                progress(snapshot());
                last = Instant::now();
            }
        }
        progress(snapshot());
        Ok((
            start.elapsed(),
            handles
                .into_iter()
                .map(|h| scst_accel_hal::locks::blocking("join", || h.join()))
                .collect::<Vec<_>>(),
        ))
    })?;
    let mut total = WorkloadReport::default();
    let mut histogram = new_histogram();
    for result in results {
        match result {
            Ok((report, h)) => {
                merge(&mut total, report);
                if let Err(e) = histogram.add(&h) {
                    log::warn!("latency histogram merge: {e}");
                }
            }
            Err(_) => total.first_errors.push("a workload thread panicked".into()),
        }
    }
    total.elapsed = elapsed;
    total.latency = Latency {
        p50: histogram.value_at_quantile(0.50) as f64 / 1000.0,
        p99: histogram.value_at_quantile(0.99) as f64 / 1000.0,
        p999: histogram.value_at_quantile(0.999) as f64 / 1000.0,
        max: histogram.max() as f64 / 1000.0,
        mean: histogram.mean() / 1000.0,
    };
    Ok(total)
}

fn new_histogram() -> Histogram<u64> {
    // Nanoseconds from 1 ns to 10 minutes at 3 significant digits; these bounds are valid.
    match Histogram::new_with_bounds(1, 600_000_000_000, 3) {
        Ok(h) => h,
        Err(_) => unreachable!("static histogram bounds are valid"),
    }
}

fn merge(total: &mut WorkloadReport, part: WorkloadReport) {
    total.commands += part.commands;
    total.reads += part.reads;
    total.writes += part.writes;
    total.bytes += part.bytes;
    total.verified_bytes += part.verified_bytes;
    total.verify_errors += part.verify_errors;
    total.scsi_errors += part.scsi_errors;
    total.unanswered += part.unanswered;
    for e in part.first_errors {
        if total.first_errors.len() < MAX_ERRORS_KEPT {
            total.first_errors.push(e);
        }
    }
}

impl<'a> Driver<'a> {
    fn new(
        session: &'a Session,
        geometry: Geometry,
        config: &'a WorkloadConfig,
        units: Vec<u64>,
        depth: usize,
        index: usize,
        live: &'a Live,
    ) -> Self {
        let initial = if config.expect_zeroed {
            stamp::GEN_ZERO
        } else {
            stamp::GEN_UNKNOWN
        };
        let count = units.len();
        Self {
            session,
            config,
            block_size: geometry.block_size,
            blocks_per_io: config.io_size / geometry.block_size,
            units,
            gens: vec![initial; count],
            busy: vec![false; count],
            cursor: 0,
            prefilling: false,
            rng: stamp::Rng::new(config.seed.wrapping_add(index as u64 * 0x1000_0001)),
            inflight: IntMap::default(),
            now: Instant::now(),
            unpublished: (0, 0),
            next_tag: (index as u64) << 48,
            depth,
            live,
            report: WorkloadReport::default(),
            histogram: new_histogram(),
        }
    }

    fn run(mut self) -> (WorkloadReport, Histogram<u64>) {
        if self.config.prefill {
            self.prefill();
            // Failed prefill writes leave their units unverifiable (GEN_UNKNOWN), not the run
            // invalid; only commands left unanswered end it.
            if self.report.unanswered > 0 {
                return (self.report, self.histogram);
            }
            self.report = WorkloadReport::default();
            self.histogram.reset();
            self.live.prefilled.fetch_add(1, Ordering::AcqRel);
            // Bounded: the coordinator releases every driver once all are prefilled.
            let deadline = Instant::now() + self.config.completion_timeout;
            while !self.live.go.load(Ordering::Acquire) && Instant::now() < deadline {
                scst_accel_hal::locks::sleep(Duration::from_micros(200));
            }
        }
        let deadline = Instant::now() + self.config.duration;
        self.pump(|d| d.now < deadline && d.may_issue(), |d| d.is_read());
        (self.report, self.histogram)
    }

    /// Write every owned unit once, in order.
    fn prefill(&mut self) {
        let mut remaining = self.units.len();
        self.cursor = 0;
        self.prefilling = true;
        self.pump(
            move |_| {
                let go = remaining > 0;
                remaining = remaining.saturating_sub(1);
                go
            },
            |_| false,
        );
        self.prefilling = false;
        self.cursor = 0;
    }

    /// Keep `depth` commands in flight while `more` allows, choosing reads with `read`; then
    /// drain. Every wait is bounded by `completion_timeout`.
    fn pump(&mut self, mut more: impl FnMut(&mut Self) -> bool, mut read: impl FnMut(&mut Self) -> bool) {
        let mut batch = Batch::default();
        loop {
            while self.inflight.len() + batch.requests.len() < self.depth && more(self) {
                let is_read = read(self);
                if !self.prepare(is_read, &mut batch) {
                    break;
                }
            }
            self.submit(&mut batch);
            if self.inflight.is_empty() {
                break;
            }
            let timeout = self.config.completion_timeout;
            let completions = self.session.completions();
            match scst_accel_hal::locks::blocking("completion wait", || completions.recv_timeout(timeout)) {
                Ok(completion) => {
                    self.now = Instant::now();
                    self.complete(completion);
                    // Everything else already answered too, before the refill goes out as one
                    // batch.
                    while let Ok(c) = completions.try_recv() {
                        self.complete(c);
                    }
                    self.publish_progress();
                }
                Err(e) => {
                    let n = self.inflight.len() as u64;
                    self.error(format!(
                        "{n} commands unanswered after {:?}: {e}",
                        self.config.completion_timeout
                    ));
                    self.report.unanswered += n;
                    break;
                }
            }
        }
    }

    fn may_issue(&self) -> bool {
        match self.config.max_commands {
            Some(max) => self.live.issued.fetch_add(1, Ordering::Relaxed) < max,
            None => true,
        }
    }

    fn pick_unit(&mut self) -> Option<usize> {
        let n = self.units.len();
        let start = match self.config.pattern {
            _ if self.prefilling => self.cursor,
            Pattern::Sequential => self.cursor,
            Pattern::Random => self.rng.below(n as u64) as usize,
        };
        let found = (0..n).map(|i| (start + i) % n).find(|&i| !self.busy[i])?;
        self.cursor = (found + 1) % n;
        Some(found)
    }

    fn is_read(&mut self) -> bool {
        match self.config.mix {
            Mix::Read => true,
            Mix::Write => false,
            Mix::Mixed { read_percent } => self.rng.below(100) < u64::from(read_percent),
        }
    }

    /// Build one command on a free unit into `batch`; false when every unit is busy.
    fn prepare(&mut self, read: bool, batch: &mut Batch) -> bool {
        let Some(unit) = self.pick_unit() else {
            return false;
        };
        let lba = self.units[unit] * u64::from(self.blocks_per_io);
        let (cdb, data_out, write_gen) = if read {
            (rw_cdb(false, lba, self.blocks_per_io), Vec::new(), None)
        } else {
            let gen = next_generation(self.gens[unit]);
            let mut data = self.session.spare_buffer();
            data.resize(self.config.io_size as usize, 0);
            for (i, block) in data.chunks_exact_mut(self.block_size as usize).enumerate() {
                stamp::stamp(block, lba + i as u64, gen);
            }
            (rw_cdb(true, lba, self.blocks_per_io), data, Some(gen))
        };
        let tag = self.next_tag;
        self.next_tag += 1;
        batch.requests.push(ScsiRequest {
            tag,
            cdb,
            data_out,
            expected_data_in: if read { self.config.io_size } else { 0 },
            queue_type: queue_type::SIMPLE,
            timeout_secs: 30,
        });
        batch.pending.push((
            tag,
            Pending {
                unit,
                write_gen,
                // Set again when its batch is handed over ([`Driver::submit`]).
                started: self.now,
            },
        ));
        self.busy[unit] = true;
        true
    }

    /// Hand the prepared commands to the session in one call; the ones it refused free their
    /// units again.
    fn submit(&mut self, batch: &mut Batch) {
        if batch.requests.is_empty() {
            return;
        }
        self.now = Instant::now();
        let accepted = match self.session.submit_batch(batch.requests.drain(..)) {
            Ok(()) => batch.pending.len(),
            Err((accepted, e)) => {
                self.error(format!("submit failed: {e}"));
                accepted
            }
        };
        for (i, (tag, mut pending)) in batch.pending.drain(..).enumerate() {
            if i < accepted {
                pending.started = self.now;
                self.inflight.insert(tag, pending);
            } else {
                self.busy[pending.unit] = false;
            }
        }
    }

    /// Add the commands and bytes answered since the last call to the shared counters.
    fn publish_progress(&mut self) {
        let (commands, bytes) = std::mem::take(&mut self.unpublished);
        self.live.commands.fetch_add(commands, Ordering::Relaxed);
        self.live.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    fn complete(&mut self, c: ScsiCompletion) {
        let Some(p) = self.inflight.remove(&c.tag) else {
            self.error(format!("completion for unknown tag {:#x}", c.tag));
            return;
        };
        self.busy[p.unit] = false;
        let nanos = self
            .now
            .saturating_duration_since(p.started)
            .as_nanos()
            .min(u128::from(u64::MAX)) as u64;
        if let Err(e) = self.histogram.record(nanos.max(1)) {
            log::debug!("latency {nanos} ns not recorded: {e}");
        }
        self.report.commands += 1;
        self.unpublished.0 += 1;
        let lba = self.units[p.unit] * u64::from(self.blocks_per_io);
        if c.status != sam_status::GOOD {
            self.report.scsi_errors += 1;
            let sense: Vec<String> = c.sense.iter().take(18).map(|b| format!("{b:02x}")).collect();
            self.error(format!(
                "LBA {lba}: status {:#04x} sense {}",
                c.status,
                sense.join("")
            ));
            if p.write_gen.is_some() {
                self.gens[p.unit] = stamp::GEN_UNKNOWN;
            }
            return;
        }
        self.report.bytes += u64::from(self.config.io_size);
        self.unpublished.1 += u64::from(self.config.io_size);
        match p.write_gen {
            Some(gen) => {
                self.report.writes += 1;
                self.gens[p.unit] = gen;
            }
            None => {
                self.report.reads += 1;
                self.verify(p.unit, lba, &c.data_in);
                self.session.recycle(c.data_in);
            }
        }
    }

    fn verify(&mut self, unit: usize, lba: u64, data: &[u8]) {
        let gen = self.gens[unit];
        if data.len() != self.config.io_size as usize {
            self.report.verify_errors += 1;
            self.live.verify_errors.fetch_add(1, Ordering::Relaxed);
            self.error(format!(
                "LBA {lba}: read returned {} bytes, expected {}",
                data.len(),
                self.config.io_size
            ));
            return;
        }
        let mut bad = 0;
        for (i, block) in data.chunks_exact(self.block_size as usize).enumerate() {
            if let Err(m) = stamp::verify(block, lba + i as u64, gen) {
                bad += 1;
                self.error(format!(
                    "LBA {}: {m:?} (expected generation {gen})",
                    lba + i as u64
                ));
            }
        }
        if bad == 0 {
            if gen != stamp::GEN_UNKNOWN {
                self.report.verified_bytes += data.len() as u64;
            }
        } else {
            self.report.verify_errors += bad;
            self.live.verify_errors.fetch_add(bad, Ordering::Relaxed);
        }
    }

    fn error(&mut self, message: String) {
        log::warn!("workload: {message}");
        if self.report.first_errors.len() < MAX_ERRORS_KEPT {
            self.report.first_errors.push(message);
        }
    }
}

fn next_generation(current: u32) -> u32 {
    match current.wrapping_add(1) {
        stamp::GEN_UNKNOWN | stamp::GEN_ZERO => 1,
        next => next,
    }
}

/// READ/WRITE(10) when the LBA and length fit, else (16).
pub(crate) fn rw_cdb(write: bool, lba: u64, blocks: u32) -> Vec<u8> {
    if lba <= u64::from(u32::MAX) && blocks <= u32::from(u16::MAX) {
        let mut cdb = vec![0u8; 10];
        cdb[0] = if write { 0x2a } else { 0x28 };
        cdb[2..6].copy_from_slice(&(lba as u32).to_be_bytes());
        cdb[7..9].copy_from_slice(&(blocks as u16).to_be_bytes());
        cdb
    } else {
        let mut cdb = vec![0u8; 16];
        cdb[0] = if write { 0x8a } else { 0x88 };
        cdb[2..10].copy_from_slice(&lba.to_be_bytes());
        cdb[10..14].copy_from_slice(&blocks.to_be_bytes());
        cdb
    }
}
