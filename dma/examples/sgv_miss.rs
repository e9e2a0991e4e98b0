//! The cost of an SGV pool miss: IOMMU maps per miss and wall time per miss, per size class.
//!
//! `cargo run --release -p scst-accel-dma --example sgv_miss`
//!
//! For each class it fills a 256 MiB pool (IOVA-window placement) with buffers that are all
//! kept out, so every `get` is a miss, then returns and flushes them (untimed), in rounds until
//! at least 65,536 misses were timed, and counts the `DmaMapper::map` calls the pool made. The
//! mapper only counts (no ioctl), so the time is the pool's own work per miss (memory, IOVA,
//! bookkeeping); on VFIO each map adds a `VFIO_IOMMU_MAP_DMA` ioctl that pins the pages.
//! Each class runs twice: refill off (every arena mapped by a miss), then refill on (the
//! pool's `sgv-refill` thread, one arena pre-mapped per round, untimed), counting the arenas
//! a miss still had to map on the worker (`worker_maps`): a tight loop of misses is the
//! fastest miss stream there is, so this is the refill's worst case.
//! docs/design/sgv-arenas.md records the figures.
// UNSAFETY: the counting mapper implements the unsafe `DmaMapper::map`; it records only.
#![expect(unsafe_code)]

use scst_accel_dma::mapping::IovaLock;
use scst_accel_dma::IovaAllocator;
use scst_accel_dma::SgvPool;
use scst_accel_dma::PAGE_SIZE;
use scst_accel_hal::locks::LockToken;
use scst_accel_hal::DmaMapper;
use scst_accel_hal::HalError;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

/// Pool cap per run.
const CAP: u64 = 256 << 20;

/// Counts maps and unmaps; the device side of a map is not modelled.
#[derive(Default)]
struct CountingMapper {
    maps: AtomicU64,
    unmaps: AtomicU64,
}

// SAFETY: it only counts: no device reaches the memory it is asked to map.
unsafe impl DmaMapper for CountingMapper {
    unsafe fn map(&self, _iova: u64, _host: u64, _len: u64) -> Result<(), HalError> {
        self.maps.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn unmap(&self, _iova: u64, _len: u64) -> Result<(), HalError> {
        self.unmaps.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Misses timed per class at least (large classes repeat fill-and-flush rounds).
const MIN_MISSES: usize = 1 << 16;

/// One class's figures.
struct Run {
    misses: u64,
    maps: u64,
    worker_maps: u64,
    refill_maps: u64,
    ns_per_miss: u128,
    live_at_cap: u64,
}

/// Time `MIN_MISSES` misses of `size` bytes. With `refill`, the pool runs its `sgv-refill`
/// thread and each round starts, untimed, with one arena pre-mapped (what a start-up premap
/// does; a flush unmaps unused arenas, so every round starts from none).
fn run(size: usize, refill: bool, pace: Option<Duration>) -> Run {
    let mapper = Arc::new(CountingMapper::default());
    let iovas = Arc::new(IovaLock::new(IovaAllocator::new(1 << 20, 1 << 40)));
    let mut pool = SgvPool::new(Some(mapper.clone()), Some(iovas), CAP);
    if refill {
        pool = match pool.with_refill() {
            Ok(pool) => pool,
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1);
            }
        };
    }
    let mut token = LockToken::root();
    let per_round = (CAP / size as u64) as usize;
    let rounds = MIN_MISSES.div_ceil(per_round);
    let mut held = Vec::with_capacity(per_round);
    let (mut got, mut live_at_cap) = (0u64, 0u64);
    let mut elapsed = Duration::ZERO;
    for _ in 0..rounds {
        if refill {
            pool.premap(&mut token, size, 1);
        }
        let start = Instant::now();
        for i in 0..per_round {
            if let Some(pace) = pace {
                // Spin to this miss's start: a sleep would be rounded up to the scheduler's
                // tick, and the pace is the figure under test.
                let due = start + pace * i as u32;
                while Instant::now() < due {
                    std::hint::spin_loop();
                }
            }
            let miss = Instant::now();
            match pool.get(&mut token, size) {
                Some(buffer) => held.push(buffer),
                None => break,
            }
            elapsed += miss.elapsed();
        }
        got += held.len() as u64;
        live_at_cap = mapper.maps.load(Ordering::Relaxed) - mapper.unmaps.load(Ordering::Relaxed);
        // Untimed: return everything and flush, so the next round misses again.
        held.clear();
        pool.flush(&mut token);
    }
    let stats = pool.stats();
    if pool.shutdown().is_err() {
        eprintln!("pool shutdown refused: buffers still out");
    }
    Run {
        misses: got,
        maps: mapper.maps.load(Ordering::Relaxed),
        worker_maps: stats.worker_maps,
        refill_maps: stats.refill_maps,
        ns_per_miss: elapsed.as_nanos() / u128::from(got.max(1)),
        live_at_cap,
    }
}

/// The refill's latency: from the miss that asks for a refill (the class at its low-water
/// mark) until the arena is in the pool, seen by the thread that missed spinning on
/// `refill_maps`. 1 MiB buffers (16 per arena, low-water mark 8), `samples` times.
fn refill_latency(samples: usize) {
    let size = 1 << 20;
    let mapper = Arc::new(CountingMapper::default());
    let iovas = Arc::new(IovaLock::new(IovaAllocator::new(1 << 20, 1 << 40)));
    let pool = match SgvPool::new(Some(mapper), Some(iovas), CAP).with_refill() {
        Ok(pool) => pool,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    let mut token = LockToken::root();
    let mut latencies = Vec::with_capacity(samples);
    for _ in 0..samples {
        pool.premap(&mut token, size, 1);
        let before = pool.stats().refill_maps;
        let held: Vec<_> = (0..7).filter_map(|_| pool.get(&mut token, size)).collect();
        // The 8th miss leaves 8 free chunks: the low-water mark; it asks.
        let asked = Instant::now();
        let last = pool.get(&mut token, size);
        while pool.stats().refill_maps == before && asked.elapsed() < Duration::from_secs(1) {
            std::hint::spin_loop();
        }
        latencies.push(asked.elapsed());
        drop((held, last));
        pool.flush(&mut token);
    }
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    println!(
        "refill latency over {samples} asks (1 MiB class): median {:?}, p90 {:?}, p99 {:?}, max {:?}",
        at(0.5),
        at(0.9),
        at(0.99),
        at(1.0)
    );
    if pool.shutdown().is_err() {
        eprintln!("pool shutdown refused: buffers still out");
    }
}

fn main() {
    // `--paced NS`: refill on only, one miss every NS nanoseconds (a miss stream slower than a
    // tight loop: how fast a stream the refill thread follows).
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--latency") {
        refill_latency(1000);
        return;
    }
    let pace = match args.iter().position(|a| a == "--paced") {
        Some(at) => match args.get(at + 1).and_then(|ns| ns.parse::<u64>().ok()) {
            Some(ns) => Some(Duration::from_nanos(ns)),
            None => {
                eprintln!("usage: sgv_miss [--paced NANOSECONDS | --latency]");
                std::process::exit(2);
            }
        },
        None => None,
    };
    let modes: &[bool] = if pace.is_some() { &[true] } else { &[false, true] };
    println!("refill  class  size      misses   maps  worker maps  maps/miss on worker  refill maps  ns/miss  live mappings at cap");
    for &refill in modes {
        for order in [0u8, 2, 4, 6, 8, 10] {
            let size = PAGE_SIZE << order;
            let r = run(size, refill, pace);
            println!(
                "{:>6}  {order:>5}  {size:>8}  {:>7}  {:>5}  {:>11}  {:>19.5}  {:>11}  {:>7}  {}",
                match (refill, pace) {
                    (false, _) => "off".to_owned(),
                    (true, None) => "on".to_owned(),
                    (true, Some(p)) => format!("{}us", p.as_micros()),
                },
                r.misses,
                r.maps,
                r.worker_maps,
                r.worker_maps as f64 / r.misses.max(1) as f64,
                r.refill_maps,
                r.ns_per_miss,
                r.live_at_cap,
            );
        }
    }
}
