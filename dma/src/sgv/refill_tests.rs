//! Refill tests: arenas mapped ahead of need off the worker, the cap, and the thread's stop
//! before the pool unmaps. The refill is driven one step at a time
//! ([`SgvPool::refill_pending`]) wherever a figure is asserted, so no assertion depends on
//! how fast a thread runs on a loaded machine.
#![allow(unsafe_code)] // UNSAFETY: the gated mapper implements the unsafe `DmaMapper::map`.

use super::refill::low_water;
use super::shared::arena_len;
use super::*;
use crate::mapping::lock_iovas;
use crate::test_mapper::LedgerMapper;
use crate::IovaAllocator;
use scst_accel_hal::HalError;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::Instant;

const K4: usize = PAGE_SIZE;
const MIB: u64 = 1 << 20;

/// Held by every test here that starts a refill thread, so that one counting them sees only
/// its own come and go.
static THREAD_COUNTING: Mutex<()> = Mutex::new(());

fn serialized() -> std::sync::MutexGuard<'static, ()> {
    THREAD_COUNTING.lock().unwrap_or_else(|e| e.into_inner())
}

/// A ledger mapper whose next map, once armed, says so and then waits to be let go: a refill
/// caught in the middle of a map.
#[derive(Default)]
struct GatedMapper {
    ledger: LedgerMapper,
    armed: AtomicBool,
    entered: Mutex<Option<mpsc::Sender<()>>>,
    release: Mutex<Option<mpsc::Receiver<()>>>,
}

impl GatedMapper {
    /// Arm the gate: returns (a receiver told when a map enters, a sender that lets it go).
    fn arm(&self) -> (mpsc::Receiver<()>, mpsc::Sender<()>) {
        let (entered_tx, entered_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel();
        *self.entered.lock().expect("gate") = Some(entered_tx);
        *self.release.lock().expect("gate") = Some(release_rx);
        self.armed.store(true, Ordering::SeqCst);
        (entered_rx, release_tx)
    }
}

// SAFETY: it gates and counts: no device reaches the memory it is asked to map.
unsafe impl DmaMapper for GatedMapper {
    unsafe fn map(&self, iova: u64, host: u64, len: u64) -> Result<(), HalError> {
        if self.armed.swap(false, Ordering::SeqCst) {
            if let Some(entered) = self.entered.lock().expect("gate").take() {
                let _ = entered.send(());
            }
            if let Some(release) = self.release.lock().expect("gate").take() {
                let _ = release.recv_timeout(std::time::Duration::from_secs(60));
            }
        }
        // SAFETY: forwarded as is: the pool's caller gives the same guarantee to this mapper.
        unsafe { self.ledger.map(iova, host, len) }
    }

    fn unmap(&self, iova: u64, len: u64) -> Result<(), HalError> {
        self.ledger.unmap(iova, len)
    }
}

fn iovas() -> Arc<IovaLock> {
    Arc::new(IovaLock::new(IovaAllocator::new(0, 1 << 40)))
}

fn assert_clean(mapper: &LedgerMapper, iovas: &IovaLock) {
    assert_eq!(mapper.live(), vec![], "mappings left behind");
    let (maps, unmaps, bad) = mapper.counts();
    assert_eq!((maps, bad), (unmaps, 0), "every map unmapped exactly once");
    assert_eq!(lock_iovas(iovas, &mut LockToken::root()).0.allocated(), 0);
}

/// A pool whose refill requests are served only by the test's own steps.
fn stepped_pool(max_bytes: u64) -> (Arc<LedgerMapper>, Arc<IovaLock>, SgvPool) {
    let mapper = Arc::new(LedgerMapper::default());
    let iovas = iovas();
    let pool = SgvPool::new(Some(mapper.clone()), Some(iovas.clone()), max_bytes).with_refill_requests();
    (mapper, iovas, pool)
}

#[test]
fn a_steady_miss_stream_with_the_refill_keeping_up_maps_nothing_on_the_worker() {
    // Arrange: a 1 GiB pool (three arenas of every class fit), one arena of each class
    // pre-mapped at start-up (the first miss of a class has nothing to carve from otherwise).
    const CAP: u64 = 1024 * MIB;
    let (mapper, iovas, pool) = stepped_pool(CAP);
    let mut token = LockToken::root();
    for order in 0..SGV_CLASSES {
        let size = K4 << order;
        assert!(pool.premap(&mut token, size, 1) > 0);
    }
    let premapped = pool.stats().arenas;
    assert_eq!(premapped, SGV_CLASSES as u64);

    // Act: per class, three arenas' worth of misses, all kept out (every get is a miss), the
    // refill stepped once per low-water mark of misses: the fastest miss rate it can follow.
    let mut held = Vec::new();
    let mut misses = 0u64;
    for order in 0..SGV_CLASSES {
        let size = K4 << order;
        let chunks = arena_len(CAP, size) / size;
        let step_every = low_water(chunks);
        for i in 0..3 * chunks {
            held.push(pool.get(&mut token, size).expect("within the cap"));
            misses += 1;
            if (i + 1) % step_every == 0 {
                pool.refill_pending(&mut token);
            }
        }
    }

    // Assert: every miss carved from an arena mapped ahead; none mapped on the worker.
    let s = pool.stats();
    assert_eq!((s.allocations, s.reuses), (misses, 0));
    assert_eq!(s.worker_maps, 0, "no miss mapped: {s:?}");
    // Per class the low-water mark is reached after 3/4, 7/4 and 11/4 arenas' worth: three
    // arenas mapped ahead, the last one not yet used.
    assert_eq!(s.refill_maps, 3 * SGV_CLASSES as u64, "{s:?}");
    assert_eq!(
        mapper.counts().0,
        premapped + s.refill_maps,
        "every map was ahead of need"
    );
    drop(held);
    pool.shutdown().expect("all returned");
    assert_clean(&mapper, &iovas);
}

#[test]
fn without_a_refill_step_the_miss_maps_on_its_worker_and_is_counted() {
    // Arrange: requests are made but nobody serves them.
    let (mapper, iovas, pool) = stepped_pool(64 * MIB);
    let mut token = LockToken::root();
    let chunks = shared::ARENA_BYTES / K4;
    assert_eq!(pool.premap(&mut token, K4, 1), chunks);

    // Act: one arena's worth of misses and one more.
    let held: Vec<DmaBuffer> = (0..=chunks)
        .map(|_| pool.get(&mut token, K4).expect("b"))
        .collect();

    // Assert: the last miss found no free chunk and mapped on this thread, without waiting.
    let s = pool.stats();
    assert_eq!((s.worker_maps, s.refill_maps, s.arenas), (1, 0, 2));
    // The request made before is stale now (the new arena is nearly free): served late, it
    // maps nothing more.
    assert_eq!(pool.refill_pending(&mut token), 0);
    assert_eq!(pool.stats().refill_maps, 0);
    assert_eq!(mapper.counts().0, 2);
    drop(held);
    pool.shutdown().expect("all returned");
    assert_clean(&mapper, &iovas);
}

#[test]
fn a_pool_without_refill_makes_no_requests() {
    let mapper = Arc::new(LedgerMapper::default());
    let iovas = iovas();
    let pool = SgvPool::new(Some(mapper.clone()), Some(iovas.clone()), 64 * MIB);
    let mut token = LockToken::root();
    let held: Vec<DmaBuffer> = (0..4000).map(|_| pool.get(&mut token, K4).expect("b")).collect();
    assert_eq!(pool.refill_pending(&mut token), 0, "no request was queued");
    let s = pool.stats();
    assert_eq!((s.worker_maps, s.refill_maps), (1, 0));
    drop(held);
    pool.shutdown().expect("all returned");
    assert_clean(&mapper, &iovas);
}

#[test]
fn the_refill_stays_within_the_cap() {
    // Arrange: a 32 MiB cap holds two arenas of 4 KiB chunks.
    const CAP: u64 = 32 * MIB;
    let (mapper, iovas, pool) = stepped_pool(CAP);
    let mut token = LockToken::root();
    let chunks = shared::ARENA_BYTES / K4;
    pool.premap(&mut token, K4, 1);

    // Act: miss until the cap refuses, stepping the refill after every miss.
    let mut held = Vec::new();
    while let Some(b) = pool.get(&mut token, K4) {
        held.push(b);
        pool.refill_pending(&mut token);
        let s = pool.stats();
        assert!(s.mapped_bytes <= CAP, "the refill mapped past the cap: {s:?}");
        assert!(s.in_use_bytes + s.cached_bytes <= CAP);
    }

    // Assert: the cap's worth was handed out from two arenas, the second mapped ahead; at the
    // cap the refill maps nothing more.
    assert_eq!(held.len(), 2 * chunks);
    let s = pool.stats();
    assert_eq!((s.arenas, s.refill_maps, s.worker_maps, s.refused), (2, 1, 0, 1));
    assert_eq!(s.mapped_bytes, CAP);
    drop(held);
    pool.shutdown().expect("all returned");
    assert_clean(&mapper, &iovas);

    // A cap smaller than an arena: the one arena is the cap's worth, the refill never adds.
    let (mapper, iovas, pool) = stepped_pool(16 * K4 as u64);
    let held: Vec<DmaBuffer> = (0..16).map(|_| pool.get(&mut token, K4).expect("b")).collect();
    pool.refill_pending(&mut token);
    let s = pool.stats();
    assert_eq!((s.arenas, s.refill_maps, s.worker_maps), (1, 0, 1));
    drop(held);
    pool.shutdown().expect("all returned");
    assert_clean(&mapper, &iovas);
}

/// The names of this process's threads.
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim_end().to_owned())
        .collect()
}

#[test]
#[cfg_attr(
    miri,
    ignore = "reads /proc/self/task, which does not show the threads Miri interprets"
)]
fn the_refill_thread_maps_ahead_of_the_misses() {
    // Arrange: a pool with its thread; one arena of 4 KiB chunks pre-mapped.
    let _serialized = serialized();
    let mapper = Arc::new(LedgerMapper::default());
    let iovas = iovas();
    let pool = SgvPool::new(Some(mapper.clone()), Some(iovas.clone()), 64 * MIB)
        .with_refill()
        .expect("thread");
    // The new thread names itself once it runs: wait for it (bounded).
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    while !thread_names().iter().any(|n| n == REFILL_THREAD_NAME) {
        assert!(Instant::now() < deadline, "no {REFILL_THREAD_NAME} thread");
        scst_accel_hal::locks::sleep(std::time::Duration::from_millis(1));
    }
    let mut token = LockToken::root();
    let chunks = shared::ARENA_BYTES / K4;
    pool.premap(&mut token, K4, 1);

    // Act: take the class to its low-water mark, give the thread time (bounded), then miss
    // past the first arena's end.
    let mut held: Vec<DmaBuffer> = (0..chunks - low_water(chunks))
        .map(|_| pool.get(&mut token, K4).expect("b"))
        .collect();
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    while pool.stats().refill_maps == 0 && Instant::now() < deadline {
        scst_accel_hal::locks::sleep(std::time::Duration::from_millis(1));
    }
    held.extend((0..chunks).map(|_| pool.get(&mut token, K4).expect("b")));

    // Assert: the thread mapped the next arena; no miss did.
    let s = pool.stats();
    assert_eq!(s.worker_maps, 0, "{s:?}");
    assert!(s.refill_maps >= 1, "{s:?}");
    drop(held);
    pool.shutdown().expect("all returned");
    assert_clean(&mapper, &iovas);
}

#[test]
fn shutdown_joins_a_refill_caught_mapping_before_it_unmaps() {
    // Arrange: a pool with its thread; the refill's map will stop at the gate.
    let _serialized = serialized();
    let mapper = Arc::new(GatedMapper::default());
    let iovas = iovas();
    let pool = SgvPool::new(Some(mapper.clone()), Some(iovas.clone()), 64 * MIB)
        .with_refill()
        .expect("thread");
    let mut token = LockToken::root();
    let chunks = shared::ARENA_BYTES / K4;
    pool.premap(&mut token, K4, 1);
    let (entered, release) = mapper.arm();
    let held: Vec<DmaBuffer> = (0..chunks - low_water(chunks))
        .map(|_| pool.get(&mut token, K4).expect("b"))
        .collect();
    entered
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("the refill thread reached its map");
    drop(held);

    // Act: shut down while the refill is inside its map.
    let shutdown = std::thread::spawn(move || pool.shutdown());
    std::thread::sleep(std::time::Duration::from_millis(200));
    let waited = !shutdown.is_finished();
    release.send(()).expect("gate");
    let stats = shutdown.join().expect("shutdown thread").expect("all returned");

    // Assert: shutdown waited for the map, then unmapped both arenas (the one the refill
    // added included): nothing left mapped, every IOVA back.
    assert!(waited, "shutdown returned while the refill was still mapping");
    assert_eq!((stats.mapped_bytes, stats.mappings, stats.arenas), (0, 0, 0));
    assert_eq!(stats.refill_maps, 1);
    assert_eq!(mapper.ledger.counts().0, 2);
    assert_clean(&mapper.ledger, &iovas);
}

/// Threads of this process named [`REFILL_THREAD_NAME`].
fn refill_threads() -> usize {
    thread_names().iter().filter(|n| *n == REFILL_THREAD_NAME).count()
}

#[test]
#[cfg_attr(
    miri,
    ignore = "reads /proc/self/task, which does not show the threads Miri interprets"
)]
fn a_pool_runs_one_refill_thread_and_its_shutdown_ends_it() {
    // Other tests' pools run their own threads; a pool's own is seen by the count growing.
    // Hold `serialized` so that no other test here starts or stops one meanwhile.
    let _serialized = serialized();
    let before = refill_threads();
    let pool = SgvPool::new(None, None, 64 * MIB)
        .with_refill()
        .expect("thread")
        .with_refill()
        .expect("the same thread");
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    while refill_threads() < before + 1 && Instant::now() < deadline {
        scst_accel_hal::locks::sleep(std::time::Duration::from_millis(1));
    }
    // Asked twice, one thread.
    scst_accel_hal::locks::sleep(std::time::Duration::from_millis(50));
    assert_eq!(refill_threads(), before + 1);
    pool.shutdown().expect("clean");
    // Ended (the kernel drops its /proc entry just after a join can return, so wait bounded;
    // that shutdown waits for the thread is `shutdown_joins_a_refill_caught_mapping_...`).
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    while refill_threads() > before && Instant::now() < deadline {
        scst_accel_hal::locks::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(refill_threads(), before);
}

/// Voluntary context switches of this process's threads named [`REFILL_THREAD_NAME`], summed:
/// how often they went to sleep.
fn refill_thread_sleeps() -> u64 {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|task| {
            let path = task.ok()?.path();
            let name = std::fs::read_to_string(path.join("comm")).ok()?;
            (name.trim_end() == REFILL_THREAD_NAME).then_some(path)
        })
        .filter_map(|path| std::fs::read_to_string(path.join("status")).ok())
        .filter_map(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|n| n.trim().parse::<u64>().ok())
        })
        .sum()
}

/// An idle pool's refill thread sleeps on its channel, not in short turns: over a second with
/// nothing asked it wakes at most once or twice (ten times with 100 ms turns).
#[test]
#[cfg_attr(
    miri,
    ignore = "reads /proc/self/task, which does not show the threads Miri interprets"
)]
fn an_idle_refill_thread_stays_asleep() {
    let _serialized = serialized();
    let pool = SgvPool::new(None, None, 64 * MIB).with_refill().expect("thread");
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    while refill_threads() == 0 {
        assert!(Instant::now() < deadline, "no {REFILL_THREAD_NAME} thread");
        scst_accel_hal::locks::sleep(std::time::Duration::from_millis(1));
    }
    scst_accel_hal::locks::sleep(std::time::Duration::from_millis(50));
    let before = refill_thread_sleeps();
    scst_accel_hal::locks::sleep(std::time::Duration::from_secs(1));
    let woke = refill_thread_sleeps().saturating_sub(before);
    assert!(woke <= 2, "the idle refill thread slept {woke} times in a second");
    pool.shutdown().expect("clean");
}

#[test]
fn dropping_a_pool_stops_its_refill_thread_and_unmaps() {
    let _serialized = serialized();
    let mapper = Arc::new(LedgerMapper::default());
    let iovas = iovas();
    let pool = SgvPool::new(Some(mapper.clone()), Some(iovas.clone()), 64 * MIB)
        .with_refill()
        .expect("thread");
    let mut token = LockToken::root();
    pool.premap(&mut token, K4, 1);
    let held: Vec<DmaBuffer> = (0..100).map(|_| pool.get(&mut token, K4).expect("b")).collect();
    drop(held);
    drop(pool);
    assert_clean(&mapper, &iovas);
}
