//! Doorbells executed by their writer (`engine::run_inline`, [`SimConfig::inline_doorbells`]):
//! a queue's descriptors run in the thread that wrote SQ_TAIL when nothing could make it wait,
//! and are left to the queue's engine thread otherwise.
//!
//! An engine thread also looks at its queue on its own (when a RUN write wakes it, and on its
//! 50 ms idle timer); one that looks in the microseconds between a doorbell's post and its
//! writer's claim takes the work itself, as it may. So a test that needs the writer to run the
//! work lets the engines settle first and tries on a fresh board up to
//! [`ATTEMPTS`](crate::sim::attempts::ATTEMPTS) times ([`on_some_attempt`]): what it checks
//! must hold on one of them, and with the writer's path taken out it holds on none.

use std::os::fd::AsFd;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

use scst_accel_hal::fdio::poll_readable;
use scst_accel_hal::locks::levels;
use scst_accel_hal::locks::LockToken;
use scst_accel_hal::locks::OrderedMutex;

use super::*;
use crate::sca1::desc::cq_status;
use crate::sim::attempts::check;
use crate::sim::attempts::on_some_attempt;
use crate::sim::Fault;

/// Queue `q` of a fresh enabled board, started, with its engine thread back asleep after the
/// wake-up of the RUN write.
fn settled_queue(rig: &mut Rig, q: u32, size: u32) -> TestQueue {
    let tq = TestQueue::start(rig, q, size);
    std::thread::sleep(Duration::from_millis(10));
    tq
}

/// Descriptors whose doorbell finds the engine idle, no fault standing and room in the
/// completion ring are complete when the doorbell write returns, with their interrupt raised,
/// and the engine thread is not woken.
#[test]
fn a_doorbell_completes_its_descriptors_before_the_write_returns() {
    on_some_attempt("inline completions", || {
        let mut rig = Rig::enabled();
        let shared = Arc::clone(rig.sim.shared());
        let mut tq = settled_queue(&mut rig, 1, 16);
        let data = pattern(4 * 4096, 21);
        let (src, src_iova) = rig.map_data(data.len());
        rig.buf(src).write_at(0, &data);
        let (dst, dst_iova) = rig.map_data(data.len());
        let (woken, raised) = (shared.wakes(1), rig.sim.stats().interrupts);
        tq.push(&rig, desc(opcode::WRITE, 1, 64, data.len() as u32, src_iova));
        for tag in 0..4u16 {
            let offset = u64::from(tag) * 4096;
            tq.push(
                &rig,
                desc(opcode::READ, 10 + tag, 64 + offset / 512, 4096, dst_iova + offset),
            );
        }
        tq.ring(&rig);
        // No wait: every completion is in the ring already.
        let got: Vec<_> = (0..5)
            .map(|i| tq.peek(&rig, i).map(|c| (c.tag, c.status)))
            .collect();
        let ok = cq_status::OK;
        let expected = [(1, ok), (10, ok), (11, ok), (12, ok), (13, ok)].map(Some);
        check(got == expected, || {
            format!("completions when the write returned: {got:?}")
        })?;
        check(!tq.busy(&rig), || "BUSY set when the write returned".into())?;
        check(rig.sim.stats().interrupts > raised, || {
            "no interrupt raised".into()
        })?;
        check(shared.wakes(1) == woken, || "the engine thread was woken".into())?;
        let stats = rig.sim.stats();
        check(stats.inline_descriptors == 5, || format!("{stats:?}"))?;
        assert_eq!(rig.read_buf(dst, 0, data.len()), data);
        Ok(())
    });
}

/// A writer claims every descriptor its doorbell made waiting (as many as the completion ring
/// has free slots for) and fetches them in one burst: here six that run past the end of both
/// rings, whose completions land in the slots after the five before them, the phase flipped
/// from the ring's first slot on (§4).
#[test]
fn a_burst_across_the_end_of_the_rings_completes_in_order_with_the_phase_flipped() {
    on_some_attempt("a burst across the wrap", || {
        let mut rig = Rig::enabled();
        let mut tq = settled_queue(&mut rig, 0, 8);
        for tag in 1..=5 {
            tq.push(&rig, desc(opcode::FLUSH, tag, 0, 0, 0));
        }
        tq.ring(&rig);
        for tag in 1..=5 {
            assert_eq!(tq.next(&rig).tag, tag);
        }
        for tag in 6..=11 {
            tq.push(&rig, desc(opcode::FLUSH, tag, 0, 0, 0));
        }
        tq.ring(&rig);
        let got: Vec<_> = (0..6).map(|i| tq.peek(&rig, i).map(|c| c.tag)).collect();
        let by_writer = rig.sim.stats().inline_descriptors;
        check(by_writer == 11, || format!("{by_writer} run by the writer"))?;
        assert_eq!(
            got,
            (6..=11).map(Some).collect::<Vec<_>>(),
            "when the write returned"
        );
        for tag in 6..=11 {
            let c = tq.next(&rig);
            assert_eq!((c.tag, c.status), (tag, cq_status::OK));
        }
        Ok(())
    });
}

/// A burst whose third descriptor is stale (another seq): the two before it complete, and are
/// published (counted, INT_STATUS) before the queue halts at the third's index (§8), as one by
/// one; the fourth is not executed.
#[test]
fn a_stale_descriptor_in_a_burst_halts_the_queue_after_those_before_it() {
    on_some_attempt("a stale descriptor in a burst", || {
        let mut rig = Rig::enabled();
        let mut tq = settled_queue(&mut rig, 0, 8);
        tq.push(&rig, desc(opcode::FLUSH, 1, 0, 0, 0));
        tq.push(&rig, desc(opcode::FLUSH, 2, 0, 0, 0));
        tq.push_raw(
            &rig,
            Descriptor {
                seq: 9,
                ..desc(opcode::FLUSH, 3, 0, 0, 0)
            },
        );
        tq.seq += 1;
        tq.push(&rig, desc(opcode::FLUSH, 4, 0, 0, 0));
        tq.ring(&rig);
        let stats = rig.sim.stats();
        check(stats.inline_descriptors == 3, || format!("{stats:?}"))?;
        assert_eq!(
            rig.qread(0, queue::Q_STATUS) & queue::ERROR,
            queue::ERROR,
            "halted"
        );
        assert_eq!(rig.qread(0, queue::Q_ERROR), u32::from(cq_status::STALE));
        assert_eq!(rig.qread(0, queue::Q_ERROR_INDEX), 2);
        assert_eq!((stats.completions, stats.stale), (2, 1), "{stats:?}");
        assert_eq!((tq.next(&rig).tag, tq.next(&rig).tag), (1, 2));
        assert!(tq.stays_empty(&rig), "nothing after the stale slot is executed");
        Ok(())
    });
}

/// A burst that runs into a submission ring slot the IOMMU does not map: the descriptors
/// before it complete and are published, and the queue halts at that slot's index with
/// DMA_FAULT (§8), as one by one.
#[test]
fn a_burst_into_an_unmapped_ring_slot_halts_there_after_those_before_it() {
    on_some_attempt("a burst into an unmapped slot", || {
        let mut rig = Rig::enabled();
        let mut tq = settled_queue(&mut rig, 0, 256);
        // 126 descriptors through: the burst below starts two slots before the ring's second
        // page (32-byte descriptors, 128 to a page).
        for tag in 0..126u16 {
            tq.submit(&rig, desc(opcode::FLUSH, tag, 0, 0, 0));
            assert_eq!(tq.next(&rig).tag, tag);
        }
        let (sq_iova, sq_addr) = (0x1000_0000, rig.buf(tq.sq).addr());
        rig.unmap(tq.sq);
        // SAFETY: the ring's first page stays mapped to `tq.sq`'s buffer, which the rig owns
        // and frees only in its drop, after the reset that proves no DMA follows.
        unsafe { rig.dev.dma().map(sq_iova, sq_addr, 4096) }.expect("map the first page");
        let before = rig.sim.stats();
        for tag in 200..203 {
            tq.push(&rig, desc(opcode::FLUSH, tag, 0, 0, 0));
        }
        tq.ring(&rig);
        let stats = rig.sim.stats();
        let by_writer = stats.inline_descriptors - before.inline_descriptors;
        check(by_writer == 2, || format!("{by_writer} fetched by the writer"))?;
        assert_eq!(
            rig.qread(0, queue::Q_STATUS) & queue::ERROR,
            queue::ERROR,
            "halted"
        );
        assert_eq!(rig.qread(0, queue::Q_ERROR), u32::from(cq_status::DMA_FAULT));
        assert_eq!(rig.qread(0, queue::Q_ERROR_INDEX), 128);
        assert_eq!(stats.completions - before.completions, 2, "{stats:?}");
        assert_eq!((tq.next(&rig).tag, tq.next(&rig).tag), (200, 201));
        assert!(
            tq.stays_empty(&rig),
            "nothing after the unmapped slot is executed"
        );
        Ok(())
    });
}

/// With a fault standing anywhere on the board, a doorbell wakes its engine thread: a fault
/// may make the engine wait (latency, hang, a storm's hold), which a writer must never do.
/// Once the plan is empty the writer runs the queue again.
#[test]
fn with_a_fault_standing_the_engine_thread_runs_the_queue() {
    on_some_attempt("the thread under a fault, the writer after", || {
        let mut rig = Rig::enabled();
        let shared = Arc::clone(rig.sim.shared());
        let mut tq = settled_queue(&mut rig, 1, 16);
        // A fault of queue 0 only: queue 1's descriptors run as ever, on its engine thread.
        rig.sim.inject(Fault::Latency {
            queue: Some(0),
            micros: 1000,
        });
        let woken = shared.wakes(1);
        for tag in 0..3 {
            tq.submit(&rig, desc(opcode::FLUSH, tag, 0, 0, 0));
            assert_eq!(tq.next(&rig).tag, tag);
        }
        assert_eq!(shared.wakes(1), woken + 3, "one wake-up per doorbell");
        assert_eq!(rig.sim.stats().inline_descriptors, 0);

        rig.sim.clear_faults();
        // The clearing woke every engine: let them look and sleep again.
        std::thread::sleep(Duration::from_millis(10));
        tq.submit(&rig, desc(opcode::FLUSH, 7, 0, 0, 0));
        let first = tq.peek(&rig, 0).map(|c| c.tag);
        check(first == Some(7), || {
            format!("not posted by the writer: {first:?}")
        })?;
        let inline = rig.sim.stats().inline_descriptors;
        check(inline == 1, || format!("{inline} run by the writer"))
    });
}

/// A writer holding a checked lock (a driver's) starts no DMA: its doorbell wakes the engine
/// thread, which completes the descriptor.
#[test]
fn a_writer_holding_a_lock_leaves_the_queue_to_the_engine_thread() {
    if !scst_accel_hal::locks::LOCK_CHECK {
        eprintln!("skipped: built without the lock checker, a writer cannot know it holds a lock");
        return;
    }
    let mut rig = Rig::enabled();
    let shared = Arc::clone(rig.sim.shared());
    let mut tq = TestQueue::start(&mut rig, 0, 16);
    let (_, iova) = rig.map_data(4096);
    let woken = shared.wakes(0);
    {
        let spare = OrderedMutex::<(), levels::AccelSpareQueues>::new(());
        let mut token = LockToken::root();
        let _held = spare.lock(&mut token);
        tq.submit(&rig, desc(opcode::READ, 5, 0, 4096, iova));
    }
    let c = tq.next(&rig);
    assert_eq!((c.tag, c.status), (5, cq_status::OK));
    assert_eq!(shared.wakes(0), woken + 1);
    assert_eq!(rig.sim.stats().inline_descriptors, 0);
}

/// A writer runs at most `INLINE_BUDGET` (64) descriptors per doorbell and hands the rest to
/// the engine thread, so another thread's stream cannot keep it.
#[test]
fn a_doorbell_beyond_the_budget_hands_the_rest_to_the_engine_thread() {
    on_some_attempt("the budget", || {
        let mut rig = Rig::enabled();
        let shared = Arc::clone(rig.sim.shared());
        let mut tq = settled_queue(&mut rig, 0, 128);
        let woken = shared.wakes(0);
        for tag in 0..100 {
            tq.push(&rig, desc(opcode::FLUSH, tag, 0, 0, 0));
        }
        tq.ring(&rig);
        let by_writer = rig.sim.stats().inline_descriptors;
        check(by_writer == 64, || format!("{by_writer} run by the writer"))?;
        check(tq.peek(&rig, 63).is_some(), || {
            "the writer's 64 not posted".into()
        })?;
        for tag in 0..100 {
            assert_eq!(tq.next(&rig).tag, tag);
        }
        assert_eq!(shared.wakes(0), woken + 1, "one hand-off");
        assert_eq!(rig.sim.stats().inline_descriptors, 64);
        Ok(())
    });
}

/// A doorbell that finds the completion ring full leaves the queue to its engine thread,
/// which waits for the slot (a writer must never wait for its own reap).
#[test]
fn a_full_completion_ring_leaves_the_queue_to_the_engine_thread() {
    on_some_attempt("a full ring", || {
        let mut rig = Rig::enabled();
        let shared = Arc::clone(rig.sim.shared());
        let mut tq = settled_queue(&mut rig, 0, 4);
        for tag in 1..=3 {
            tq.push(&rig, desc(opcode::FLUSH, tag, 0, 0, 0));
        }
        tq.ring(&rig);
        let by_writer = rig.sim.stats().inline_descriptors;
        check(by_writer == 3, || format!("{by_writer} run by the writer"))?;
        assert!(tq.peek(&rig, 2).is_some(), "three completions posted");
        let woken = shared.wakes(0);
        tq.submit(&rig, desc(opcode::FLUSH, 4, 0, 0, 0));
        assert_eq!(shared.wakes(0), woken + 1, "the engine thread was woken");
        assert!(
            wait_until(|| shared.awaits_cq_slot(0)),
            "the engine waits for a completion slot"
        );
        for tag in 1..=4 {
            assert_eq!(tq.next(&rig).tag, tag);
        }
        assert_eq!(rig.sim.stats().inline_descriptors, 3);
        Ok(())
    });
}

/// A claim takes no more descriptors than the completion ring has free slots for, one slot
/// always left empty (§4): with two completions of a four-entry ring not reaped, a doorbell of
/// two runs one, and the engine thread runs the other once the host reaps (no entry the host
/// has not released is overwritten).
#[test]
fn a_claim_takes_no_more_than_the_completion_ring_has_room_for() {
    on_some_attempt("a claim bounded by the ring's room", || {
        let mut rig = Rig::enabled();
        let mut tq = settled_queue(&mut rig, 0, 4);
        for tag in 1..=2 {
            tq.push(&rig, desc(opcode::FLUSH, tag, 0, 0, 0));
        }
        tq.ring(&rig);
        check(rig.sim.stats().inline_descriptors == 2, || {
            "the first two not run by the writer".into()
        })?;
        for tag in 3..=4 {
            tq.push(&rig, desc(opcode::FLUSH, tag, 0, 0, 0));
        }
        tq.ring(&rig);
        let by_writer = rig.sim.stats().inline_descriptors;
        check(by_writer == 3, || format!("{by_writer} run by the writer"))?;
        let posted: Vec<_> = (0..3).map(|i| tq.peek(&rig, i).map(|c| c.tag)).collect();
        assert_eq!(posted, [Some(1), Some(2), Some(3)], "the fourth waits for a slot");
        for tag in 1..=4 {
            assert_eq!(tq.next(&rig).tag, tag);
        }
        assert_eq!(rig.sim.stats().inline_descriptors, 3);
        Ok(())
    });
}

/// A completion the writer posts under interrupt coalescing (count 8, 500 µs) starts the
/// coalescing timer, which is the engine thread's to fire: the writer wakes it, and the
/// interrupt comes.
#[test]
fn a_coalescing_timer_the_writer_starts_is_fired_by_the_engine_thread() {
    on_some_attempt("coalescing", || {
        let mut rig = Rig::enabled();
        let fds = rig.dev.enable_interrupts(2).expect("MSI-X");
        let shared = Arc::clone(rig.sim.shared());
        let mut tq = settled_queue(&mut rig, 1, 8);
        rig.write(global::INT_COALESCE, 8 | (500 << 8));
        std::thread::sleep(Duration::from_millis(10));
        let woken = shared.wakes(1);
        tq.submit(&rig, desc(opcode::FLUSH, 3, 0, 0, 0));
        let posted = tq.peek(&rig, 0).map(|c| c.tag);
        check(posted == Some(3), || {
            format!("not posted by the writer: {posted:?}")
        })?;
        let by_writer = rig.sim.stats().inline_descriptors;
        check(by_writer == 1, || format!("{by_writer} run by the writer"))?;
        assert_eq!(
            shared.wakes(1),
            woken + 1,
            "the engine thread woken for the timer"
        );
        let readable = poll_readable(&[fds[1].as_fd()], WAIT).expect("poll")[0];
        assert!(readable, "the coalesced interrupt fires");
        Ok(())
    });
}

/// A reset while writers run bursts of READs: the reset completes only once the writer lets go
/// of its descriptors, and nothing the writer does after touches host memory (the buffer is
/// unmapped the moment the reset returns, so any later DMA is a recorded IOMMU fault), the
/// descriptors of its burst not yet executed included.
#[test]
fn a_reset_waits_for_a_writers_descriptor_and_no_dma_follows() {
    const LEN: usize = 256 * 1024;
    /// Tells the writer to stop when dropped: on every way out of the scope, a panic's too,
    /// so the scope's join never waits on a writer that loops.
    struct StopOnDrop<'a>(&'a AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    for round in 0..5u64 {
        // Declared before the rig, so dropped after it: the rig's drop resets the board (no
        // DMA after) before the buffer's memory goes.
        let buf = PageBuffer::new(LEN).expect("page buffer");
        let mut rig = Rig::enabled();
        let mut tq = settled_queue(&mut rig, 0, 64);
        let iova = 0x7000_0000;
        // SAFETY: `buf` outlives the mapping: it is unmapped below once the reset has proved
        // that no DMA follows, and otherwise (a panic) the rig's drop resets the board before
        // `buf` is dropped; the device reaches it only through the IOMMU model.
        unsafe { rig.dev.dma().map(iova, buf.addr(), LEN as u64) }.expect("map");
        let stop = AtomicBool::new(false);
        let served = AtomicU64::new(0);
        std::thread::scope(|s| {
            let _stop = StopOnDrop(&stop);
            let writer = s.spawn(|| {
                let mut tag = 0u16;
                while !stop.load(Ordering::Relaxed) {
                    // Four per doorbell: one claim, the reset landing inside it.
                    for _ in 0..4 {
                        tag = tag.wrapping_add(1);
                        tq.push(&rig, desc(opcode::READ, tag, 0, LEN as u32, iova));
                    }
                    tq.ring(&rig);
                    // Bounded: after the reset nothing completes.
                    let deadline = Instant::now() + Duration::from_millis(50);
                    let mut reaped = 0;
                    while reaped < 4 && Instant::now() < deadline {
                        reaped += usize::from(tq.poll(&rig).is_some());
                    }
                    served.fetch_add(1, Ordering::Relaxed);
                }
            });
            assert!(wait_until(|| served.load(Ordering::Relaxed) > 20 + round));
            assert_eq!(
                rig.dev.reset().expect("reset"),
                scst_accel_hal::ResetKind::Simulated
            );
            rig.dev.dma().unmap(iova, LEN as u64).expect("unmap");
            std::thread::sleep(Duration::from_millis(20));
            stop.store(true, Ordering::Relaxed);
            writer.join().expect("the writer thread");
        });
        let stats = rig.sim.stats();
        assert_eq!(
            stats.iommu_faults,
            0,
            "DMA after the reset: {:?}",
            rig.sim.iommu().faults()
        );
        assert!(stats.inline_descriptors > 0, "{stats:?}");
        assert_eq!(rig.read(global::CONTROL), 0, "reset done");
    }
}

/// Off, every descriptor runs on the engine threads.
#[test]
fn with_inline_doorbells_off_the_engine_threads_run_everything() {
    let mut rig = Rig::new(threaded_config());
    rig.enable();
    let mut tq = TestQueue::start(&mut rig, 0, 8);
    let data = pattern(8192, 5);
    assert_eq!(write_then_read(&mut rig, &mut tq, 12, &data), data);
    let stats = rig.sim.stats();
    assert_eq!((stats.descriptors, stats.inline_descriptors), (2, 0), "{stats:?}");
}
