//! The cost of an SGV pool miss: IOMMU maps per miss and wall time per miss, per size class.
//!
//! `cargo run --release -p scst-accel-dma --example sgv_miss`
//!
//! For each class it fills a 256 MiB pool (IOVA-window placement) with buffers that are all
//! kept out, so every `get` is a miss, then returns and flushes them (untimed), in rounds until
//! at least 65,536 misses were timed, and counts the `DmaMapper::map` calls the pool made. The
//! mapper only counts (no ioctl), so the time is the pool's own work per miss (memory, IOVA,
//! bookkeeping); on VFIO each map adds a `VFIO_IOMMU_MAP_DMA` ioctl that pins the pages.
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

impl DmaMapper for CountingMapper {
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

fn main() {
    println!("class  size      misses   maps  maps/miss  ns/miss  live mappings at cap");
    for order in [0u8, 2, 4, 6, 8, 10] {
        let size = PAGE_SIZE << order;
        let mapper = Arc::new(CountingMapper::default());
        let iovas = Arc::new(IovaLock::new(IovaAllocator::new(1 << 20, 1 << 40)));
        let pool = SgvPool::new(Some(mapper.clone()), Some(iovas), CAP);
        let mut token = LockToken::root();
        let per_round = (CAP / size as u64) as usize;
        let rounds = MIN_MISSES.div_ceil(per_round);
        let mut held = Vec::with_capacity(per_round);
        let (mut got, mut live_at_cap) = (0u64, 0u64);
        let mut elapsed = Duration::ZERO;
        for _ in 0..rounds {
            let start = Instant::now();
            for _ in 0..per_round {
                match pool.get(&mut token, size) {
                    Some(buffer) => held.push(buffer),
                    None => break,
                }
            }
            elapsed += start.elapsed();
            got += held.len() as u64;
            live_at_cap = mapper.maps.load(Ordering::Relaxed) - mapper.unmaps.load(Ordering::Relaxed);
            // Untimed: return everything and flush, so the next round misses again.
            held.clear();
            pool.flush(&mut token);
        }
        let maps = mapper.maps.load(Ordering::Relaxed);
        println!(
            "{order:>5}  {size:>8}  {got:>7}  {maps:>5}  {:>9.5}  {:>7}  {live_at_cap}",
            maps as f64 / got.max(1) as f64,
            elapsed.as_nanos() / u128::from(got.max(1)),
        );
        if pool.shutdown().is_err() {
            eprintln!("pool shutdown refused: buffers still out");
        }
    }
}
