//! Doorbells executed by their writer (`engine::run_inline`, [`SimConfig::inline_doorbells`]):
//! a queue's descriptors run in the thread that wrote SQ_TAIL when nothing could make it wait,
//! and are left to the queue's engine thread otherwise.

use scst_accel_hal::locks::levels;
use scst_accel_hal::locks::LockToken;
use scst_accel_hal::locks::OrderedMutex;

use super::*;
use crate::sca1::desc::cq_status;
use crate::sim::Fault;

/// Descriptors whose doorbell finds the engine idle, no fault standing and room in the
/// completion ring are complete when the doorbell write returns, with their interrupt raised,
/// and the engine thread is not woken.
#[test]
fn a_doorbell_completes_its_descriptors_before_the_write_returns() {
    let mut rig = Rig::enabled();
    let shared = Arc::clone(rig.sim.shared());
    let mut tq = TestQueue::start(&mut rig, 1, 16);
    let data = pattern(4 * 4096, 21);
    let (src, src_iova) = rig.map_data(data.len());
    rig.buf(src).write_at(0, &data);
    let (dst, dst_iova) = rig.map_data(data.len());
    let woken = shared.wakes(1);
    tq.submit(&rig, desc(opcode::WRITE, 1, 64, data.len() as u32, src_iova));
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
    assert_eq!(
        got,
        [(1, ok), (10, ok), (11, ok), (12, ok), (13, ok)].map(Some),
        "completions when the doorbell write returned"
    );
    assert!(!tq.busy(&rig), "BUSY clear when the write returned");
    assert_ne!(
        rig.read(global::INT_STATUS) & (1 << 1),
        0,
        "queue 1's interrupt raised"
    );
    assert_eq!(rig.read_buf(dst, 0, data.len()), data);
    assert_eq!(shared.wakes(1), woken, "the engine thread was woken");
    let stats = rig.sim.stats();
    assert_eq!((stats.descriptors, stats.inline_descriptors), (5, 5), "{stats:?}");
}

/// With a fault standing anywhere on the board, a doorbell wakes its engine thread: a fault
/// may make the engine wait (latency, hang, a storm's hold), which a writer must never do.
#[test]
fn with_a_fault_standing_the_engine_thread_runs_the_queue() {
    let mut rig = Rig::enabled();
    let shared = Arc::clone(rig.sim.shared());
    let mut tq = TestQueue::start(&mut rig, 1, 16);
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
    tq.submit(&rig, desc(opcode::FLUSH, 7, 0, 0, 0));
    assert_eq!(tq.peek(&rig, 0).map(|c| c.tag), Some(7), "inline again");
    assert_eq!(rig.sim.stats().inline_descriptors, 1);
}

/// A writer holding a checked lock (a driver's) starts no DMA: its doorbell wakes the engine
/// thread, which completes the descriptor.
#[test]
fn a_writer_holding_a_lock_leaves_the_queue_to_the_engine_thread() {
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
    let mut rig = Rig::enabled();
    let shared = Arc::clone(rig.sim.shared());
    let mut tq = TestQueue::start(&mut rig, 0, 128);
    let woken = shared.wakes(0);
    for tag in 0..100 {
        tq.push(&rig, desc(opcode::FLUSH, tag, 0, 0, 0));
    }
    tq.ring(&rig);
    assert!(
        tq.peek(&rig, 63).is_some(),
        "the first 64 completed by the writer"
    );
    for tag in 0..100 {
        assert_eq!(tq.next(&rig).tag, tag);
    }
    assert_eq!(shared.wakes(0), woken + 1, "one hand-off");
    assert_eq!(rig.sim.stats().inline_descriptors, 64);
}

/// A doorbell that finds the completion ring full leaves the queue to its engine thread,
/// which waits for the slot (a writer must never wait for its own reap).
#[test]
fn a_full_completion_ring_leaves_the_queue_to_the_engine_thread() {
    let mut rig = Rig::enabled();
    let shared = Arc::clone(rig.sim.shared());
    let mut tq = TestQueue::start(&mut rig, 0, 4);
    for tag in 1..=3 {
        tq.push(&rig, desc(opcode::FLUSH, tag, 0, 0, 0));
    }
    tq.ring(&rig);
    assert!(tq.peek(&rig, 2).is_some(), "three completions fill the ring");
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
