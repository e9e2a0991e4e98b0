//! SGV pool tests: classes, reuse, cap, flush, shutdown, the map/unmap ledger, threads.

use super::*;
use crate::mapping::IovaLock;
use crate::test_mapper::LedgerMapper;
use crate::IovaAllocator;
use scst_accel_hal::locks::LockToken;
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
        assert!(f.mapper.live().contains(&(iova, b.addr(), size as u64)));
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
    assert_eq!(s.mapped_bytes, 8 * K4 as u64);
    assert_eq!(
        f.mapper.live_bytes(),
        s.mapped_bytes,
        "the counter agrees with the IOMMU"
    );
    assert_eq!(f.mapper.live().len(), 1);
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
    assert_eq!(
        mapper.live(),
        vec![(out.iova().expect("iova"), out.addr(), 4 * K4 as u64)]
    );
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
fn failed_unmaps_leak_instead_of_freeing_mapped_memory() {
    let f = fixture(1 << 30);
    let b = f.pool.get(&mut LockToken::root(), K4).expect("b");
    f.pool.put(b);
    f.mapper.fail_unmaps.store(true, Ordering::Relaxed);
    assert_eq!(f.pool.flush(&mut LockToken::root()), 0);
    let s = f.pool.stats();
    assert_eq!((s.leaked, s.cached, s.mapped_bytes), (1, 0, K4 as u64));
    assert_eq!(f.mapper.live().len(), 1, "still mapped, so its memory was kept");
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
