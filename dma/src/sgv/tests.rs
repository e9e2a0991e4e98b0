//! SGV pool tests: classes, reuse, cap, flush, shutdown, the map/unmap ledger, threads, arenas.
#![allow(unsafe_code)] // UNSAFETY: `still_mapped` asks mincore(2) whether leaked memory is still mapped.

use super::*;
use crate::mapping::IovaLock;
use crate::test_mapper::LedgerMapper;
use crate::IovaAllocator;
use scst_accel_hal::locks::LockToken;
use scst_accel_hal::locks::OrderedMutex;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

const K4: usize = PAGE_SIZE;

struct Fixture {
    mapper: Arc<LedgerMapper>,
    iovas: Arc<IovaLock>,
    pool: SgvPool,
}

fn fixture(max_bytes: u64) -> Fixture {
    let mapper = Arc::new(LedgerMapper::default());
    let iovas = Arc::new(IovaLock::new(IovaAllocator::new(0, 1 << 40)));
    let pool = SgvPool::new(Some(mapper.clone()), Some(iovas.clone()), max_bytes);
    Fixture { mapper, iovas, pool }
}

/// Every mapping the pool made was unmapped exactly, and every IOVA returned.
fn assert_clean(mapper: &LedgerMapper, iovas: &IovaLock) {
    assert_eq!(mapper.live(), vec![], "mappings left behind");
    let (maps, unmaps, bad) = mapper.counts();
    assert_eq!(bad, 0, "an unmap matched no live mapping");
    assert_eq!(maps, unmaps);
    assert_eq!(
        crate::mapping::lock_iovas(iovas, &mut LockToken::root())
            .0
            .allocated(),
        0
    );
}

/// The live mapping (iova, host, len) that covers a buffer of `len` bytes at `iova` / `addr`:
/// its arena's. Asserts the buffer sits at the same offset on both sides (IOVA = arena IOVA +
/// offset, host address = arena address + offset).
fn mapping_of(mapper: &LedgerMapper, iova: u64, addr: u64, len: u64) -> (u64, u64, u64) {
    let covering: Vec<_> = mapper
        .live()
        .into_iter()
        .filter(|&(i, _, l)| i <= iova && iova + len <= i + l)
        .collect();
    assert_eq!(covering.len(), 1, "one live mapping covers IOVA {iova:#x}+{len}");
    let (arena_iova, arena_addr, arena_len) = covering[0];
    assert_eq!(
        iova - arena_iova,
        addr - arena_addr,
        "same offset in IOVA and host space"
    );
    (arena_iova, arena_addr, arena_len)
}

impl Fixture {
    /// Shut the pool down (every buffer must be back) and check the ledger is clean.
    fn shutdown_clean(self) -> PoolStats {
        let Fixture { mapper, iovas, pool } = self;
        let stats = pool.shutdown().expect("every buffer returned");
        assert_clean(&mapper, &iovas);
        stats
    }
}

#[test]
fn pool_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<SgvPool>();
    assert_send_sync::<DmaBuffer>();
}

#[test]
fn requests_round_up_to_scst_size_classes() {
    let f = fixture(1 << 30);
    for (len, class, size) in [
        (0, 0, K4),
        (1, 0, K4),
        (K4, 0, K4),
        (K4 + 1, 1, 2 * K4),
        (3 * K4, 2, 4 * K4),
        (65536, 4, 65536),
        (MAX_CACHED_LEN, 10, MAX_CACHED_LEN),
        (MAX_CACHED_LEN + 1, UNCACHED_CLASS, MAX_CACHED_LEN + K4),
    ] {
        let b = f.pool.get(&mut LockToken::root(), len).expect("buffer");
        assert_eq!((b.class(), b.len()), (class, size), "request of {len} bytes");
        assert_eq!(b.addr() % K4 as u64, 0);
        let iova = b.iova().expect("mapped");
        assert_ne!(iova, 0);
        let (_, _, mapped) = mapping_of(&f.mapper, iova, b.addr(), size as u64);
        if class == UNCACHED_CLASS {
            assert_eq!(mapped, size as u64, "an exact buffer has its own mapping");
        }
    }
    f.shutdown_clean();
}

#[test]
fn returned_buffers_are_reused_without_remapping() {
    let f = fixture(1 << 30);
    let b = f.pool.get(&mut LockToken::root(), 10_000).expect("b");
    let (addr, iova) = (b.addr(), b.iova());
    b.pages().write_at(0, b"kept");
    f.pool.put(b);
    assert_eq!(f.pool.stats().cached, 1);
    let again = f.pool.get(&mut LockToken::root(), 16_384).expect("same class");
    assert_eq!((again.addr(), again.iova()), (addr, iova));
    let s = f.pool.stats();
    assert_eq!((s.allocations, s.reuses, s.in_use, s.cached), (1, 1, 1, 0));
    assert_eq!(f.mapper.counts(), (1, 0, 0), "mapped once, never remapped");
    drop(again); // dropping returns it too
    assert_eq!(f.pool.stats().cached, 1);
    f.shutdown_clean();
}

#[test]
fn never_hands_out_a_buffer_twice() {
    let f = fixture(1 << 30);
    let mut held = Vec::new();
    for round in 0..3 {
        for i in 0..40 {
            held.push(
                f.pool
                    .get(&mut LockToken::root(), (i % 5 + 1) * 3000)
                    .expect("buffer"),
            );
        }
        let mut ranges: Vec<(u64, u64)> = held
            .iter()
            .map(|b| (b.iova().expect("iova"), b.len() as u64))
            .collect();
        ranges.sort_unstable();
        assert!(
            ranges.windows(2).all(|w| w[0].0 + w[0].1 <= w[1].0),
            "IOVA ranges overlap"
        );
        let addrs: HashSet<u64> = held.iter().map(DmaBuffer::addr).collect();
        assert_eq!(
            addrs.len(),
            held.len(),
            "round {round}: a buffer was handed out twice"
        );
        // Return half, keep half, so the next round mixes reuse and allocation.
        let keep = held.split_off(held.len() / 2);
        for b in held.drain(..) {
            f.pool.put(b);
        }
        held = keep;
    }
    drop(held);
    assert_eq!(f.shutdown_clean().mapped_bytes, 0);
}

#[test]
fn cap_refuses_at_once_and_evicts_idle_buffers_first() {
    let f = fixture(16 * K4 as u64);
    let mut held: Vec<DmaBuffer> = (0..16)
        .map(|_| f.pool.get(&mut LockToken::root(), K4).expect("under cap"))
        .collect();
    assert!(
        f.pool.get(&mut LockToken::root(), 1).is_none(),
        "cap reached: refused, not waited for"
    );
    assert_eq!(f.pool.stats().refused, 1);
    // Return them all: 64 KiB idle. A 64 KiB request evicts them instead of being refused.
    for b in held.drain(..) {
        f.pool.put(b);
    }
    assert_eq!(f.pool.stats().cached_bytes, 16 * K4 as u64);
    let big = f
        .pool
        .get(&mut LockToken::root(), 16 * K4)
        .expect("fits after eviction");
    let s = f.pool.stats();
    assert_eq!((s.cached, s.in_use_bytes, s.refused), (0, 16 * K4 as u64, 1));
    assert_eq!(s.mapped_bytes, 16 * K4 as u64, "evicted buffers were unmapped");
    assert!(
        f.pool.get(&mut LockToken::root(), K4).is_none(),
        "nothing idle to evict while the big one is out"
    );
    drop(big);
    f.shutdown_clean();
}

#[test]
fn flush_releases_idle_buffers_only() {
    let f = fixture(1 << 30);
    let keep = f.pool.get(&mut LockToken::root(), 8 * K4).expect("keep");
    for len in [K4, 2 * K4, 1 << 20, 4 << 20] {
        let b = f.pool.get(&mut LockToken::root(), len).expect("b");
        f.pool.put(b);
    }
    assert_eq!(f.pool.stats().cached, 4);
    assert_eq!(f.pool.flush(&mut LockToken::root()), 4);
    let s = f.pool.stats();
    assert_eq!((s.cached, s.cached_bytes, s.in_use), (0, 0, 1));
    // Only the arena of the buffer still out stays mapped.
    let arena = mapping_of(&f.mapper, keep.iova().expect("iova"), keep.addr(), 8 * K4 as u64);
    assert_eq!(f.mapper.live(), vec![arena]);
    assert_eq!((s.mapped_bytes, s.mappings, s.arenas), (arena.2, 1, 1));
    assert_eq!(
        f.mapper.live_bytes(),
        s.mapped_bytes,
        "the counter agrees with the IOMMU"
    );
    assert_eq!(f.pool.flush(&mut LockToken::root()), 0);
    f.pool.put(keep);
    f.shutdown_clean();
}

#[test]
fn shutdown_with_buffers_in_use_is_refused_and_keeps_them_mapped() {
    let f = fixture(1 << 30);
    let out = f.pool.get(&mut LockToken::root(), 3 * K4).expect("out");
    let idle = f.pool.get(&mut LockToken::root(), K4).expect("idle");
    f.pool.put(idle);
    let Fixture { mapper, iovas, pool } = f;
    let err = pool.shutdown().expect_err("a buffer is still out");
    assert_eq!((err.in_use, err.in_use_bytes), (1, 4 * K4 as u64));
    assert_eq!(err.stats.cached, 0, "idle buffers were still flushed");
    // The idle buffer's arena was unmapped; the one holding `out` stays.
    let arena = mapping_of(&mapper, out.iova().expect("iova"), out.addr(), 4 * K4 as u64);
    assert_eq!(mapper.live(), vec![arena]);
    // The device is done with it (after a reset, say): returning it now unmaps it.
    out.pages().write_at(0, b"still usable");
    drop(out);
    assert_clean(&mapper, &iovas);
}

#[test]
fn a_foreign_buffer_is_counted_and_goes_home() {
    let a = fixture(1 << 30);
    let b = fixture(1 << 30);
    let buf = a.pool.get(&mut LockToken::root(), K4).expect("from a");
    b.pool.put(buf);
    assert_eq!(b.pool.stats().foreign_puts, 1);
    assert_eq!(b.pool.stats().cached, 0, "b's lists untouched");
    assert_eq!(a.pool.stats().cached, 1, "back in its own pool");
    assert_eq!(a.pool.stats().in_use, 0);
    a.shutdown_clean();
    b.shutdown_clean();
}

#[test]
fn large_requests_are_exact_and_never_cached() {
    let f = fixture(1 << 30);
    let b = f.pool.get(&mut LockToken::root(), 5 << 20).expect("large");
    assert_eq!((b.class(), b.len()), (UNCACHED_CLASS, 5 << 20));
    f.pool.put(b);
    let s = f.pool.stats();
    assert_eq!((s.cached, s.mapped_bytes, s.in_use), (0, 0, 0));
    f.shutdown_clean();
}

/// An uncached buffer must be unmapped, a blocking call; dropped by a thread that holds a
/// checked lock (a caller's bug), it is queued for the pool's next call instead of the drop
/// asserting that no lock is held, whose panic would have unwound with it half released.
#[test]
#[cfg_attr(
    miri,
    ignore = "asks mincore(2), which Miri does not have, whether memory is still mapped"
)]
fn an_uncached_buffer_dropped_under_a_lock_is_released_by_the_next_pool_call() {
    let f = fixture(1 << 30);
    let mut token = LockToken::root();
    let b = f.pool.get(&mut token, 5 << 20).expect("large");
    let (addr, len) = (b.addr(), b.len());
    {
        let (_iovas, _) = crate::mapping::lock_iovas(&f.iovas, &mut token);
        drop(b);
    }
    assert_eq!(f.mapper.live().len(), 1, "unmapped under the lock");
    assert!(still_mapped(addr, len as u64), "freed under the lock");
    assert_eq!(f.pool.stats().in_use, 0);
    let small = f.pool.get(&mut token, K4).expect("small");
    assert_eq!(
        f.mapper.live().len(),
        1,
        "the next call released the large buffer (one arena mapped for the small one)"
    );
    drop(small);
    f.shutdown_clean();
}

/// A cached-class buffer dropped by a thread that holds a checked lock while its pool closes
/// (the close lands after the drop first found the pool open, before it queued the buffer) is
/// left queued, not released under the lock: the release there took a root token, whose
/// assertion panicked in the dropping thread with the buffer half returned. The next return to
/// the closed pool, from a thread holding no lock, releases it.
#[test]
#[cfg_attr(
    miri,
    ignore = "asks mincore(2), which Miri does not have, whether memory is still mapped"
)]
fn a_cached_buffer_dropped_under_a_lock_while_its_pool_closes_is_released_by_the_next_return() {
    let Fixture { mapper, iovas, pool } = fixture(1 << 20);
    let mut token = LockToken::root();
    let b = pool.get(&mut token, K4).expect("b");
    // Still out at the shutdown: they keep the pool's state alive for the returns after it.
    let kept = pool.get(&mut token, K4).expect("kept");
    let last = pool.get(&mut token, K4).expect("last");
    let (addr, len) = (b.addr(), b.len() as u64);
    let (entered_tx, entered) = std::sync::mpsc::channel();
    let (go, go_rx) = std::sync::mpsc::channel();
    shared::tests_hook::arm_return(pool.shared.id, entered_tx, go_rx);
    let table = OrderedMutex::<(), levels::CmdTable>::new(());
    let dropper = std::thread::spawn(move || {
        let mut token = LockToken::root();
        let (_table, _) = table.lock(&mut token);
        drop(b);
    });
    entered.recv().expect("the drop reached its return");
    let refused = pool.shutdown().expect_err("kept is still out");
    assert_eq!(refused.in_use, 2, "b counts as returned, kept and last as in use");
    go.send(()).expect("resume the drop");
    dropper.join().expect("the drop under a lock did not panic");
    assert_eq!(mapper.live().len(), 1, "the arena was unmapped under the lock");
    assert!(still_mapped(addr, len), "b's memory was freed under the lock");
    assert_eq!(last.pool().stats().cached, 1, "b is left queued");
    // With no lock held, the next return releases b too, not only itself.
    drop(kept);
    let stats = last.pool().stats();
    assert_eq!(
        (stats.cached, stats.in_use),
        (0, 1),
        "b was not released by the next return"
    );
    drop(last);
    assert_clean(&mapper, &iovas);
}

/// The last reference to a closed pool, dropped by a thread that holds a checked lock (a buffer
/// still out at shutdown, returned under a lock: a caller's bug), cannot unmap what the pool
/// still has mapped, a blocking call: the arena stays mapped and allocated, leaked on purpose
/// (and logged), instead of the final flush's root token panicking with the pool half dropped.
#[test]
#[cfg_attr(
    miri,
    ignore = "asks mincore(2), which Miri does not have, whether memory is still mapped"
)]
fn the_last_reference_to_a_closed_pool_dropped_under_a_lock_leaks_its_mapped_memory() {
    let Fixture { mapper, iovas, pool } = fixture(1 << 20);
    let mut token = LockToken::root();
    let b = pool.get(&mut token, K4).expect("b");
    let (addr, len) = (b.addr(), b.len() as u64);
    pool.shutdown().expect_err("b is still out");
    let live = mapper.live();
    assert_eq!(live.len(), 1, "b's arena stays mapped while b is out");
    let table = OrderedMutex::<(), levels::CmdTable>::new(());
    {
        let (_table, _) = table.lock(&mut token);
        drop(b);
    }
    assert_eq!(mapper.live(), live, "unmapped under a lock");
    assert!(still_mapped(addr, len), "freed while still mapped");
    let allocated = crate::mapping::lock_iovas(&iovas, &mut token).0.allocated();
    assert_eq!(
        allocated, live[0].2,
        "its IOVA range went back for reuse while mapped"
    );
}

#[test]
fn host_only_and_iova_as_va_pools() {
    let host = SgvPool::new(None, None, 1 << 20);
    let b = host.get(&mut LockToken::root(), K4).expect("host buffer");
    assert_eq!(b.iova(), None);
    drop(b);
    assert_eq!(host.shutdown().expect("clean").mapped_bytes, 0);

    let mapper = Arc::new(LedgerMapper::default());
    let identity = SgvPool::new(Some(mapper.clone()), None, 1 << 20);
    let b = identity.get(&mut LockToken::root(), K4).expect("identity buffer");
    assert_eq!(b.iova(), Some(b.addr()));
    drop(b);
    identity.shutdown().expect("clean");
    assert_eq!(mapper.live(), vec![]);
}

#[test]
fn map_failures_and_iova_exhaustion_fail_fast() {
    let f = fixture(1 << 30);
    f.mapper.fail_maps.store(true, Ordering::Relaxed);
    assert!(f.pool.get(&mut LockToken::root(), K4).is_none());
    f.mapper.fail_maps.store(false, Ordering::Relaxed);
    let s = f.pool.stats();
    assert_eq!((s.failures, s.in_use, s.allocations), (1, 0, 0));
    assert!(
        f.pool.get(&mut LockToken::root(), K4).is_some(),
        "the reservation was given back"
    );
    f.shutdown_clean();

    let mapper = Arc::new(LedgerMapper::default());
    let iovas = Arc::new(IovaLock::new(IovaAllocator::new(0x1000, 2 * K4 as u64)));
    let pool = SgvPool::new(Some(mapper.clone()), Some(iovas.clone()), 1 << 30);
    let a = pool
        .get(&mut LockToken::root(), 2 * K4)
        .expect("fills the window");
    assert!(pool.get(&mut LockToken::root(), K4).is_none(), "no IOVA left");
    assert_eq!(pool.stats().failures, 1);
    drop(a);
    pool.shutdown().expect("clean");
    assert_eq!(mapper.live(), vec![]);
}

#[test]
#[cfg_attr(
    miri,
    ignore = "asks mincore(2), which Miri does not have, whether memory is still mapped"
)]
fn failed_unmaps_leak_instead_of_freeing_mapped_memory() {
    let f = fixture(1 << 30);
    let b = f.pool.get(&mut LockToken::root(), K4).expect("b");
    f.pool.put(b);
    f.mapper.fail_unmaps.store(true, Ordering::Relaxed);
    assert_eq!(f.pool.flush(&mut LockToken::root()), 0);
    let s = f.pool.stats();
    let arena_bytes = shared::arena_len(1 << 30, K4) as u64;
    assert_eq!(
        (s.leaked, s.cached, s.mapped_bytes, s.mappings, s.arenas),
        (1, 0, arena_bytes, 1, 0)
    );
    let live = f.mapper.live();
    assert_eq!(live.len(), 1, "still mapped, so its memory was kept");
    // The leaked arena's memory is still this process's: readable, not unmapped under the
    // device (a freed mapping would fault here or be reused by the next mmap).
    let (_, host, len) = live[0];
    assert!(still_mapped(host, len), "the leaked arena's memory was unmapped");
}

#[test]
fn an_exiting_thread_returns_its_stash() {
    let f = fixture(1 << 30);
    let pool = &f.pool;
    let addr = std::thread::scope(|s| {
        s.spawn(|| {
            let b = pool.get(&mut LockToken::root(), K4).expect("b");
            let addr = b.addr();
            pool.put(b);
            addr
        })
        .join()
        .expect("thread")
    });
    assert_eq!(f.pool.stats().cached, 1);
    let b = f
        .pool
        .get(&mut LockToken::root(), K4)
        .expect("reused from the shared list");
    assert_eq!(b.addr(), addr);
    assert_eq!(f.pool.stats().reuses, 1);
    drop(b);
    f.shutdown_clean();
}

#[test]
fn stash_spills_to_the_shared_lists_and_flush_reaches_other_threads() {
    let f = fixture(1 << 30);
    let pool = &f.pool;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|s| {
        // Joined explicitly below: an implicit scope join returns before the thread's
        // thread-local destructors (its stash) have run (rust-lang/rust#116237).
        let worker = s.spawn(move || {
            let held: Vec<DmaBuffer> = (0..40)
                .map(|_| pool.get(&mut LockToken::root(), K4).expect("b"))
                .collect();
            drop(held); // 40 returns: the stash keeps at most 16, the rest spill.
            ready_tx.send(()).expect("send");
            // Stay alive (stash still owned by this thread) until the main thread has flushed.
            let _ = done_rx.recv_timeout(std::time::Duration::from_secs(10));
        });
        ready_rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("worker ready");
        assert_eq!(pool.stats().cached, 40);
        assert_eq!(
            pool.flush(&mut LockToken::root()),
            40,
            "flush drains the live thread's stash too"
        );
        done_tx.send(()).expect("send");
        worker.join().expect("worker");
    });
    assert_eq!(f.pool.stats().cached, 0);
    f.shutdown_clean();
}

#[test]
fn concurrent_get_and_put_from_several_threads() {
    const THREADS: u64 = 4;
    const ROUNDS: u64 = 1500;
    let f = fixture(48 << 20);
    let out: Mutex<HashSet<u64>> = Mutex::new(HashSet::new());
    let pool = &f.pool;
    let out_ref = &out;
    std::thread::scope(|s| {
        let mut workers = Vec::new();
        for t in 0..THREADS {
            workers.push(s.spawn(move || {
                let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ t;
                let mut held: Vec<(DmaBuffer, u64)> = Vec::new();
                for round in 0..ROUNDS {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let len = 1 + (seed >> 33) as usize % (300 * 1024);
                    if let Some(b) = pool.get(&mut LockToken::root(), len) {
                        assert!(b.len() >= len);
                        assert!(
                            out_ref.lock().expect("set").insert(b.addr()),
                            "buffer handed out twice"
                        );
                        let tag = t << 32 | round;
                        b.pages().write_at(0, &tag.to_le_bytes());
                        b.pages().write_at(b.len() - 8, &tag.to_le_bytes());
                        held.push((b, tag));
                    }
                    if held.len() > 3 || (seed >> 20) & 1 == 1 {
                        if let Some((b, tag)) = held.pop() {
                            let mut first = [0u8; 8];
                            let mut last = [0u8; 8];
                            b.pages().read_at(0, &mut first);
                            b.pages().read_at(b.len() - 8, &mut last);
                            assert_eq!((u64::from_le_bytes(first), u64::from_le_bytes(last)), (tag, tag));
                            assert!(out_ref.lock().expect("set").remove(&b.addr()));
                            pool.put(b);
                        }
                    }
                    if round % 500 == 499 && t == 0 {
                        pool.flush(&mut LockToken::root());
                    }
                }
                for (b, _) in held {
                    out_ref.lock().expect("set").remove(&b.addr());
                    pool.put(b);
                }
                // What a pool's worker thread does last: its idle buffers go back now, not
                // whenever its thread-local destructor happens to run.
                pool.return_thread_stash(&mut LockToken::root());
            }));
        }
        // Explicit joins: the scope's implicit join does not wait for thread-local destructors.
        for w in workers {
            w.join().expect("worker");
        }
    });
    let s = f.pool.stats();
    assert_eq!((s.in_use, s.in_use_bytes), (0, 0));
    assert!(s.reuses > 0, "the cache served requests");
    assert!(s.allocations + s.reuses + s.refused >= THREADS * ROUNDS);
    let end = f.shutdown_clean();
    assert_eq!((end.mapped_bytes, end.cached), (0, 0));
}

#[test]
fn return_thread_stash_hands_the_idle_buffers_back_at_once() {
    let f = fixture(1 << 30);
    let pool = &f.pool;
    std::thread::scope(|s| {
        let worker = s.spawn(|| {
            let held: Vec<DmaBuffer> = (0..4)
                .map(|_| pool.get(&mut LockToken::root(), K4).expect("b"))
                .collect();
            drop(held);
            let before = pool.stats().cached;
            assert!(
                pool.return_thread_stash(&mut LockToken::root()),
                "this thread had a stash"
            );
            assert!(
                !pool.return_thread_stash(&mut LockToken::root()),
                "and now has none"
            );
            // Still cached, but in the shared lists: another thread reuses them.
            before
        });
        assert_eq!(worker.join().expect("worker"), 4);
        let b = pool
            .get(&mut LockToken::root(), K4)
            .expect("from the shared lists");
        assert_eq!(pool.stats().reuses, 1);
        drop(b);
    });
    f.shutdown_clean();
}

/// The failure CI hit (issue 16): a thread that had ended (as far as `thread::scope`'s implicit
/// join could tell) was still running its stash's thread-local destructor, with the slots out
/// of the stash and not yet in the shared lists, while `shutdown` ran; `shutdown` returned with
/// those buffers still mapped. The hook stalls the destructor inside that window on purpose;
/// `shutdown` must wait for it and leave nothing mapped.
#[test]
fn shutdown_waits_for_a_stash_caught_in_transit() {
    let f = fixture(1 << 30);
    let (entered_tx, entered_rx) = std::sync::mpsc::channel();
    super::shared::tests_hook::arm(f.pool.shared.id, entered_tx);
    let Fixture { mapper, iovas, pool } = f;
    let pool = Arc::new(pool);
    let worker = {
        let pool = Arc::clone(&pool);
        std::thread::spawn(move || {
            let held: Vec<DmaBuffer> = (0..8)
                .map(|_| pool.get(&mut LockToken::root(), K4).expect("b"))
                .collect();
            drop(held);
            drop(pool);
            // The closure ends here; the stash goes back in the thread-local destructor.
        })
    };
    entered_rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("the stash destructor reached the window");
    let pool = Arc::try_unwrap(pool).expect("the worker dropped its reference before exiting");
    let stats = pool.shutdown().expect("nothing in use");
    assert_eq!(stats.in_use, 0);
    assert_clean(&mapper, &iovas);
    worker.join().expect("worker");
}

/// Whether `addr..addr + len` is still mapped in this process (mincore fails with ENOMEM on
/// an unmapped page).
fn still_mapped(addr: u64, len: u64) -> bool {
    let pages = len.div_ceil(K4 as u64) as usize;
    let mut vec = vec![0u8; pages];
    // SAFETY: mincore only reads the page tables of the range and writes `pages` bytes to
    // `vec`, which holds that many.
    let rc = unsafe { libc::mincore(addr as *mut libc::c_void, len as usize, vec.as_mut_ptr()) };
    rc == 0
}

/// Live mappings by IOVA, for looking up the one covering a buffer in O(log n).
fn live_by_iova(mapper: &LedgerMapper) -> std::collections::BTreeMap<u64, (u64, u64)> {
    mapper.live().into_iter().map(|(i, h, l)| (i, (h, l))).collect()
}

/// Every buffer lies inside one live mapping at the same offset on the host and device side,
/// and no two buffers overlap, on either side.
fn assert_carved_from_live_mappings(mapper: &LedgerMapper, held: &[DmaBuffer]) {
    let live = live_by_iova(mapper);
    let mut iovas = Vec::with_capacity(held.len());
    let mut addrs = Vec::with_capacity(held.len());
    for b in held {
        let (iova, len) = (b.iova().expect("mapped"), b.len() as u64);
        let (&base, &(host, mapped)) = live.range(..=iova).next_back().expect("a mapping below");
        assert!(
            iova + len <= base + mapped,
            "buffer at {iova:#x} outside its mapping"
        );
        assert_eq!(b.addr() - host, iova - base, "IOVA = arena IOVA + offset");
        iovas.push((iova, len));
        addrs.push((b.addr(), len));
    }
    for ranges in [&mut iovas, &mut addrs] {
        ranges.sort_unstable();
        assert!(
            ranges.windows(2).all(|w| w[0].0 + w[0].1 <= w[1].0),
            "two buffers overlap"
        );
    }
}

#[test]
fn a_1_gib_cap_of_4_kib_buffers_takes_at_most_64_mappings() {
    // Arrange: the cap VFIO type1's 65,535-mapping default could not hold with one mapping per
    // buffer (262,144).
    const CAP: u64 = 1 << 30;
    let f = fixture(CAP);
    let count = (CAP / K4 as u64) as usize;
    let mut token = LockToken::root();

    // Act: every buffer of the cap handed out at once, each a miss.
    let held: Vec<DmaBuffer> = (0..count)
        .map(|i| f.pool.get(&mut token, K4).unwrap_or_else(|| panic!("buffer {i}")))
        .collect();

    // Assert
    let s = f.pool.stats();
    let (maps, _, _) = f.mapper.counts();
    assert_eq!(
        (s.allocations, s.in_use, s.in_use_bytes),
        (count as u64, count as u64, CAP)
    );
    assert!(maps <= 64, "{maps} mappings for {count} buffers");
    assert_eq!((s.mappings, s.arenas), (maps, maps));
    assert_eq!(f.mapper.live().len() as u64, s.mappings);
    assert_eq!(s.mapped_bytes, f.mapper.live_bytes());
    assert_eq!(s.mapped_bytes, CAP, "the arenas are exactly full");
    assert_carved_from_live_mappings(&f.mapper, &held);
    assert!(f.pool.get(&mut token, K4).is_none(), "cap reached");

    // Every buffer back, then a flush: every arena unmapped, every IOVA returned.
    drop(held);
    assert_eq!(f.pool.flush(&mut token), count);
    let s = f.pool.stats();
    assert_eq!((s.mappings, s.arenas, s.mapped_bytes, s.cached), (0, 0, 0, 0));
    assert_clean(&f.mapper, &f.iovas);
    f.shutdown_clean();
}

#[test]
fn a_miss_maps_only_when_its_class_has_no_free_chunk() {
    // 64 KiB cap: the class-0 arena is 64 KiB (16 chunks), not 16 MiB.
    let f = fixture(16 * K4 as u64);
    let mut token = LockToken::root();
    let first = f.pool.get(&mut token, K4).expect("first");
    assert_eq!(f.mapper.counts().0, 1, "the first miss maps the arena");
    let rest: Vec<DmaBuffer> = (1..16).map(|_| f.pool.get(&mut token, K4).expect("b")).collect();
    let s = f.pool.stats();
    assert_eq!((s.allocations, s.reuses), (16, 0), "all misses");
    assert_eq!(f.mapper.counts().0, 1, "15 more misses, no map");
    assert_eq!(
        f.mapper.live(),
        vec![mapping_of(
            &f.mapper,
            first.iova().expect("iova"),
            first.addr(),
            K4 as u64
        )]
    );
    assert_eq!(
        f.mapper.live_bytes(),
        16 * K4 as u64,
        "the arena is no larger than the cap"
    );
    drop((first, rest));
    f.shutdown_clean();
}

#[test]
fn host_only_pools_carve_arenas_and_map_nothing() {
    let pool = SgvPool::new(None, None, 1 << 20);
    let mut token = LockToken::root();
    let a = pool.get(&mut token, K4).expect("a");
    let b = pool.get(&mut token, K4).expect("b");
    assert_eq!(b.addr(), a.addr() + K4 as u64, "neighbouring chunks of one arena");
    let s = pool.stats();
    assert_eq!((s.arenas, s.mappings, s.mapped_bytes), (1, 0, 0));
    b.pages().write_at(0, b"arena");
    drop((a, b));
    assert_eq!(pool.flush(&mut token), 2);
    assert_eq!(pool.stats().arenas, 0, "an empty arena is freed");
    pool.shutdown().expect("clean");
}

#[test]
fn an_arena_too_large_for_the_iova_window_falls_back_to_one_chunk() {
    let mapper = Arc::new(LedgerMapper::default());
    // Room for 4 pages: a 16 MiB arena does not fit, one-chunk arenas do.
    let iovas = Arc::new(IovaLock::new(IovaAllocator::new(0x1000, 4 * K4 as u64)));
    let pool = SgvPool::new(Some(mapper.clone()), Some(iovas.clone()), 1 << 30);
    let mut token = LockToken::root();
    let held: Vec<DmaBuffer> = (0..4).map(|_| pool.get(&mut token, K4).expect("b")).collect();
    assert!(pool.get(&mut token, K4).is_none(), "window full");
    let s = pool.stats();
    assert_eq!((s.mappings, s.arenas, s.failures), (4, 4, 1));
    assert_carved_from_live_mappings(&mapper, &held);
    drop(held);
    pool.shutdown().expect("clean");
    assert_clean(&mapper, &iovas);
}

#[test]
fn an_arena_stays_mapped_until_its_last_chunk_is_released() {
    let f = fixture(32 * K4 as u64);
    let mut token = LockToken::root();
    let a = f.pool.get(&mut token, K4).expect("a");
    let b = f.pool.get(&mut token, K4).expect("b");
    drop(a);
    assert_eq!(f.pool.flush(&mut token), 1);
    assert_eq!(f.pool.stats().mappings, 1, "b still uses the arena");
    // `b` keeps working, and the next miss reuses the freed chunk, not a new arena.
    b.pages().write_at(0, b"still mapped");
    let c = f.pool.get(&mut token, K4).expect("c");
    assert_eq!(f.mapper.counts().0, 1);
    drop((b, c));
    assert_eq!(f.pool.flush(&mut token), 2);
    assert_eq!(f.mapper.counts(), (1, 1, 0), "unmapped once, when empty");
    f.shutdown_clean();
}

#[test]
#[cfg_attr(
    miri,
    ignore = "asks mincore(2), which Miri does not have, whether memory is still mapped"
)]
fn a_leaked_arena_keeps_its_memory_for_views_still_held() {
    let f = fixture(1 << 30);
    let mut token = LockToken::root();
    let b = f.pool.get(&mut token, K4).expect("b");
    // A handle on the pages outliving the buffer (which `pages()` no longer lends out) stays
    // valid memory: the view keeps its region alive.
    let pages = b.pages_handle();
    drop(b);
    f.mapper.fail_unmaps.store(true, Ordering::Relaxed);
    assert_eq!(f.pool.flush(&mut token), 0);
    pages.write_at(0, b"region alive");
    drop(pages);
    let live = f.mapper.live();
    assert_eq!(live.len(), 1);
    assert!(
        still_mapped(live[0].1, live[0].2),
        "a leaked arena is never freed"
    );
}

#[test]
fn premapped_arenas_take_the_map_off_the_miss_path() {
    // Arrange: a 32 MiB pool; two 16 MiB arenas of 4 KiB chunks mapped up front.
    let f = fixture(32 << 20);
    let mut token = LockToken::root();
    assert_eq!(f.pool.premap(&mut token, K4, 5000), 8192);
    assert_eq!(f.mapper.counts().0, 2);
    let s = f.pool.stats();
    assert_eq!((s.arenas, s.mappings, s.in_use, s.cached), (2, 2, 0, 0));

    // Act: 5000 misses.
    let held: Vec<DmaBuffer> = (0..5000)
        .map(|_| f.pool.get(&mut token, K4).expect("b"))
        .collect();

    // Assert: none of them mapped.
    assert_eq!(f.pool.stats().allocations, 5000);
    assert_eq!(f.mapper.counts().0, 2, "no map on the miss path");
    assert_carved_from_live_mappings(&f.mapper, &held);
    drop(held);
    f.pool.flush(&mut token);
    assert_eq!(f.pool.stats().mappings, 0);
    f.shutdown_clean();
}

#[test]
fn premap_stays_within_the_cap_and_a_flush_unmaps_unused_arenas() {
    let f = fixture(16 * K4 as u64);
    let mut token = LockToken::root();
    assert_eq!(
        f.pool.premap(&mut token, K4, 1000),
        16,
        "one 64 KiB arena: the cap's worth"
    );
    assert_eq!(
        f.pool.premap(&mut token, 8 << 20, 1),
        0,
        "exact sizes are never pre-mapped"
    );
    assert_eq!(
        f.pool.premap(&mut token, 1 << 20, 1),
        0,
        "a 1 MiB buffer never fits the cap"
    );
    assert_eq!(f.mapper.live().len(), 1);
    assert_eq!(f.pool.flush(&mut token), 0, "no buffer to release");
    assert_eq!(f.pool.stats().mappings, 0, "the unused arena was unmapped");
    f.shutdown_clean();
}

#[test]
fn fragmentation_can_map_more_than_the_cap_but_each_class_stays_bounded() {
    // Arrange: a 64 MiB cap filled with 4 KiB buffers: 4 full arenas of 16 MiB.
    const CAP: u64 = 64 << 20;
    let f = fixture(CAP);
    let mut token = LockToken::root();
    let mut small: Vec<DmaBuffer> = (0..CAP / K4 as u64)
        .map(|_| f.pool.get(&mut token, K4).expect("small"))
        .collect();
    assert_eq!(f.pool.stats().arenas, 4);

    // Act: keep one buffer per arena in use, flush the rest, fill the cap with 64 KiB ones.
    let chunks_per_arena = shared::ARENA_BYTES / K4;
    let kept: Vec<DmaBuffer> = small
        .drain(..)
        .enumerate()
        .filter_map(|(i, b)| (i % chunks_per_arena == 0).then_some(b))
        .collect();
    f.pool.flush(&mut token);
    let kept_bytes = kept.len() as u64 * K4 as u64;
    let large: Vec<DmaBuffer> = std::iter::from_fn(|| f.pool.get(&mut token, 16 * K4)).collect();

    // Assert: the cap still bounds the buffer bytes, but the 4 partly used arenas stay mapped
    // beside the new class's: mapped bytes pass the cap (what docs/design/sgv-arenas.md
    // calls the fragmentation bound: at most cap / arena + 1 arenas per class).
    let s = f.pool.stats();
    assert_eq!(kept.len(), 4);
    assert_eq!(s.in_use_bytes, kept_bytes + large.len() as u64 * 16 * K4 as u64);
    assert!(s.in_use_bytes <= CAP);
    assert_eq!(
        s.arenas, 8,
        "4 arenas of 4 KiB chunks (one used each) + 4 of 64 KiB chunks"
    );
    assert_eq!(s.mapped_bytes, 2 * CAP);
    drop((kept, large));
    f.pool.flush(&mut token);
    assert_eq!(f.pool.stats().mapped_bytes, 0);
    f.shutdown_clean();
}

mod accounting {
    //! Random get/put/flush sequences against a model of what is handed out.
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        /// Get a buffer of order `0..=10` (or, for 11, an exact one above 4 MiB).
        Get(u8),
        /// Return the held buffer at this index (modulo how many are held).
        Put(usize),
        Flush,
        /// Pre-map arenas for this many buffers of order `0..=10`.
        Premap(u8, usize),
        /// Serve the refill requests queued (one step of the refill thread).
        Refill,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0u8..=11).prop_map(Op::Get),
            5 => any::<usize>().prop_map(Op::Put),
            1 => Just(Op::Flush),
            1 => (0u8..=10, 0usize..5000).prop_map(|(order, n)| Op::Premap(order, n)),
            2 => Just(Op::Refill),
        ]
    }

    /// Bytes of every chunk handed out by the arenas (in use or cached).
    fn carved_bytes(pool: &SgvPool) -> u64 {
        pool.shared
            .lock_free_lists(&mut LockToken::root())
            .0
            .arenas
            .carved_bytes()
    }

    /// A class gets a new arena on a miss only when all of its arenas are full, and ahead of
    /// need (premap, refill) only within the cap's worth of arena bytes, so it never has more
    /// than `cap / arena_len + 1` (one thread; a one-chunk fallback never happens here).
    fn assert_arenas_bounded(pool: &SgvPool, cap: u64) {
        let per_class = pool
            .shared
            .lock_free_lists(&mut LockToken::root())
            .0
            .arenas
            .per_class();
        for (class, &count) in per_class.iter().enumerate() {
            let arena = shared::arena_len(cap, K4 << class) as u64;
            assert!(
                count as u64 <= cap / arena + 1,
                "class {class}: {count} arenas, cap {cap}"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn counters_match_the_model_and_the_iommu(
            cap_pages in 1u64..3000,
            ops in proptest::collection::vec(op(), 1..120),
        ) {
            let Fixture { mapper, iovas, pool } = fixture(cap_pages * K4 as u64);
            let f = Fixture { mapper, iovas, pool: pool.with_refill_requests() };
            let mut token = LockToken::root();
            let mut held: Vec<DmaBuffer> = Vec::new();
            let (mut gets, mut served) = (0u64, 0u64);
            // Maps the pool made: exact buffers (one each) and arenas mapped by `premap`; the
            // others must be counted as worker or refill maps.
            let (mut exact_maps, mut premapped) = (0u64, 0u64);
            for op in ops {
                match op {
                    Op::Get(order) => {
                        let len = if order > 10 { MAX_CACHED_LEN + K4 } else { K4 << order };
                        gets += 1;
                        if let Some(b) = f.pool.get(&mut token, len) {
                            served += 1;
                            exact_maps += u64::from(b.class() == UNCACHED_CLASS);
                            held.push(b);
                        }
                    }
                    Op::Put(i) if !held.is_empty() => {
                        let b = held.swap_remove(i % held.len());
                        f.pool.put(b);
                    }
                    Op::Put(_) => {}
                    Op::Flush => {
                        f.pool.flush(&mut token);
                        prop_assert_eq!(f.pool.stats().cached, 0);
                    }
                    Op::Premap(order, n) => {
                        let before = f.pool.stats();
                        f.pool.premap(&mut token, K4 << order, n);
                        let after = f.pool.stats();
                        prop_assert_eq!(
                            (after.in_use, after.cached, after.allocations),
                            (before.in_use, before.cached, before.allocations),
                            "pre-mapping hands out and caches nothing"
                        );
                        premapped += after.arenas - before.arenas;
                    }
                    Op::Refill => {
                        let before = f.pool.stats();
                        let mapped = f.pool.refill_pending(&mut token) as u64;
                        let after = f.pool.stats();
                        prop_assert_eq!(
                            (after.in_use, after.cached, after.allocations, after.worker_maps),
                            (before.in_use, before.cached, before.allocations, before.worker_maps),
                            "a refill hands out and caches nothing"
                        );
                        prop_assert_eq!(after.refill_maps, before.refill_maps + mapped);
                        prop_assert_eq!(after.arenas, before.arenas + mapped);
                    }
                }
                let s = f.pool.stats();
                let cached_classes: Vec<&DmaBuffer> =
                    held.iter().filter(|b| b.class() != UNCACHED_CLASS).collect();
                let exact = held.len() - cached_classes.len();
                let exact_bytes: u64 = held.iter().filter(|b| b.class() == UNCACHED_CLASS).map(|b| b.len() as u64).sum();
                // What is handed out, exactly.
                prop_assert_eq!(s.in_use, held.len() as u64);
                prop_assert_eq!(s.in_use_bytes, held.iter().map(|b| b.len() as u64).sum::<u64>());
                // Every get counted once.
                prop_assert_eq!(s.allocations + s.reuses, served);
                prop_assert_eq!(s.allocations + s.reuses + s.refused + s.failures, gets);
                // The cap, and the chunk maps agree with the byte counters.
                prop_assert!(s.in_use_bytes + s.cached_bytes <= cap_pages * K4 as u64);
                prop_assert_eq!(carved_bytes(&f.pool), s.in_use_bytes + s.cached_bytes - exact_bytes);
                // The IOMMU agrees with the pool.
                prop_assert_eq!(f.mapper.live().len() as u64, s.mappings);
                prop_assert_eq!(f.mapper.live_bytes(), s.mapped_bytes);
                prop_assert_eq!(s.mappings, s.arenas + exact as u64);
                prop_assert_eq!(s.arenas as usize, f.pool.idle_lists(&mut token).0.arenas());
                assert_carved_from_live_mappings(&f.mapper, &held);
                assert_arenas_bounded(&f.pool, cap_pages * K4 as u64);
                // Every arena map is a worker's, the refill's or a premap's.
                prop_assert_eq!(f.mapper.counts().0, exact_maps + premapped + s.worker_maps + s.refill_maps);
            }
            drop(held);
            f.pool.flush(&mut token);
            let s = f.pool.stats();
            prop_assert_eq!((s.in_use, s.cached, s.mappings, s.arenas, s.mapped_bytes), (0, 0, 0, 0, 0));
            f.shutdown_clean();
        }
    }
}

#[test]
#[cfg_attr(
    miri,
    ignore = "Miri has no huge pages (regions are plain pages there) and cannot read /sys"
)]
fn an_arena_placed_for_huge_pages_is_mapped_at_a_2_mib_aligned_iova() {
    // A 1 GiB cap: the 4 KiB class's arena is 16 MiB, large enough for huge pages (reserved
    // ones where the host has them, else transparent ones where its kernel has THP).
    if !std::path::Path::new("/sys/kernel/mm/transparent_hugepage").exists() {
        scst_accel_hal::skip::test_skipped(
            "an_arena_placed_for_huge_pages_is_mapped_at_a_2_mib_aligned_iova",
            "this kernel has no transparent huge pages (and no arena is placed for them)",
        );
        return;
    }
    let f = fixture(1 << 30);
    let mut token = LockToken::root();
    let b = f.pool.get(&mut token, K4).expect("a buffer");
    let (iova, host, len) = mapping_of(&f.mapper, b.iova().expect("mapped"), b.addr(), K4 as u64);
    assert_eq!(len, 16 << 20, "one 16 MiB arena");
    let huge = crate::HUGE_PAGE_SIZE as u64;
    assert_eq!(host % huge, 0, "the arena's memory starts on a 2 MiB boundary");
    assert_eq!(
        iova % huge,
        0,
        "and so does its IOVA: one IOMMU entry per huge page"
    );
    drop(b);
    f.pool.flush(&mut token);
    f.shutdown_clean();
}
