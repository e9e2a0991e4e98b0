//! What a driver observes under each injected [`Fault`].

use super::*;
use crate::sca1::desc::cq_status;
use crate::sca1::regs::ALL_ONES;
use crate::sim::Fault;

#[test]
fn latency_delays_but_completes() {
    let mut rig = Rig::enabled();
    rig.sim.inject(Fault::Latency {
        queue: Some(0),
        micros: 60_000_000,
    });
    let mut tq = TestQueue::start(&mut rig, 0, 8);
    let (_, iova) = rig.map_data(4096);
    tq.submit(&rig, desc(opcode::READ, 1, 0, 512, iova));
    assert!(wait_until(|| tq.busy(&rig)), "the engine took the descriptor");
    assert!(
        tq.stays_empty(&rig) && tq.busy(&rig),
        "held while the latency runs"
    );
    rig.sim.clear_faults();
    tq.stop(&rig);
    tq.restart(&rig);
    rig.sim.inject(Fault::Latency {
        queue: Some(0),
        micros: 2_000,
    });
    rig.sim.inject(Fault::Latency {
        queue: Some(1),
        micros: 60_000_000,
    });
    tq.submit(&rig, desc(opcode::READ, 2, 0, 512, iova));
    assert_eq!(tq.next(&rig).status, cq_status::OK);
}

#[test]
fn never_complete_drops_every_nth_completion_after_doing_the_dma() {
    let mut rig = Rig::enabled();
    rig.sim.inject(Fault::NeverComplete {
        queue: Some(0),
        every: 2,
    });
    let mut tq = TestQueue::start(&mut rig, 0, 8);
    let data = pattern(4096, 8);
    let (src, src_iova) = rig.map_data(4096);
    rig.buf(src).write_at(0, &data);
    for tag in 1..=4u16 {
        tq.push(&rig, desc(opcode::WRITE, tag, u64::from(tag) * 8, 4096, src_iova));
    }
    tq.ring(&rig);
    assert_eq!(tq.next(&rig).tag, 1);
    assert_eq!(tq.next(&rig).tag, 3);
    assert!(wait_until(|| rig.sim.stats().descriptors == 4 && !tq.busy(&rig)));
    assert!(tq.stays_empty(&rig), "tags 2 and 4 never complete");
    assert_eq!(rig.sim.stats().bytes_written, 4 * 4096, "their data still moved");
    rig.sim.clear_faults();
    let (dst, dst_iova) = rig.map_data(4096);
    tq.submit(&rig, desc(opcode::READ, 5, 16, 4096, dst_iova));
    assert_eq!(tq.next(&rig).status, cq_status::OK);
    assert_eq!(
        rig.read_buf(dst, 0, 4096),
        data,
        "tag 2's WRITE reached the medium"
    );
}

#[test]
fn error_status_reports_every_nth_descriptor() {
    let mut rig = Rig::enabled();
    rig.sim.inject("error:every=2,status=5".parse().expect("fault"));
    let mut tq = TestQueue::start(&mut rig, 1, 8);
    let (_, iova) = rig.map_data(4096);
    for tag in 1..=4u16 {
        tq.push(&rig, desc(opcode::READ, tag, 7, 512, iova));
    }
    tq.ring(&rig);
    let got: Vec<(u16, u8)> = (0..4).map(|_| tq.next(&rig)).map(|c| (c.tag, c.status)).collect();
    assert_eq!(
        got,
        vec![
            (1, 0),
            (2, cq_status::READ_ERROR),
            (3, 0),
            (4, cq_status::READ_ERROR)
        ]
    );
}

#[test]
fn a_hung_engine_stays_busy_until_a_reset() {
    let mut rig = Rig::enabled();
    rig.sim.inject(Fault::EngineHang { queue: Some(0) });
    let mut tq = TestQueue::start(&mut rig, 0, 8);
    let (_, iova) = rig.map_data(4096);
    tq.submit(&rig, desc(opcode::READ, 1, 0, 512, iova));
    assert!(wait_until(|| tq.busy(&rig)));
    rig.qwrite(0, queue::Q_CONTROL, 0);
    assert!(
        holds_for_a_while(|| tq.busy(&rig) && tq.peek(&rig, 0).is_none()),
        "BUSY stays past STOP_TIMEOUT: the queue is hung"
    );
    assert_eq!(rig.sim.stats().descriptors, 0, "a hung engine fetched nothing");

    rig.write(global::CONTROL, control::SOFT_RESET);
    assert!(
        wait_until(|| rig.read(global::CONTROL) & control::SOFT_RESET == 0),
        "reset completes"
    );
    assert!(!tq.busy(&rig));
    assert!(rig.sim.faults().is_empty(), "the reset released the hang");
    rig.enable();
    let mut tq = TestQueue::start(&mut rig, 0, 8);
    tq.submit(&rig, desc(opcode::READ, 2, 0, 512, iova));
    assert_eq!(tq.next(&rig).status, cq_status::OK);
}

#[test]
fn a_gone_device_reads_all_ones_and_never_does_dma_again() {
    let mut rig = Rig::enabled();
    rig.sim.inject(Fault::Latency {
        queue: None,
        micros: 50_000,
    });
    let mut tq = TestQueue::start(&mut rig, 0, 8);
    let (_, iova) = rig.map_data(4096);
    tq.submit(&rig, desc(opcode::READ, 1, 0, 512, iova));
    assert!(wait_until(|| tq.busy(&rig)));
    rig.sim.inject("gone".parse().expect("fault"));
    for offset in [
        global::ID,
        global::STATUS,
        global::CONTROL,
        queue::reg(0, queue::Q_STATUS),
    ] {
        assert_eq!(rig.read(offset), ALL_ONES, "offset {offset:#x}");
    }
    assert_eq!(rig.bar().read64(global::CAPACITY), u64::MAX);
    rig.sim.clear_faults();
    tq.submit(&rig, desc(opcode::READ, 2, 0, 512, iova));
    assert!(tq.stays_empty(&rig));
    rig.dev.reset().expect("reset");
    rig.write(global::CONTROL, control::SOFT_RESET);
    assert_eq!(rig.read(global::ID), ALL_ONES, "no reset revives it");
    rig.unmap_all();
    assert!(
        holds_for_a_while(|| rig.sim.stats().iommu_faults == 0),
        "no DMA at all"
    );
    assert_eq!(rig.sim.stats().completions, 0);
}

#[test]
fn fatal_stops_completions_until_a_reset() {
    let mut rig = Rig::enabled();
    let mut tq = TestQueue::start(&mut rig, 0, 8);
    let (_, iova) = rig.map_data(4096);
    rig.sim.inject(Fault::Fatal { code: 7 });
    let st = rig.read(global::STATUS);
    assert_eq!((st & status::FATAL, st & status::READY), (status::FATAL, 0));
    assert_eq!(rig.read(global::FATAL_CODE), 7);
    tq.submit(&rig, desc(opcode::READ, 1, 0, 512, iova));
    assert!(tq.stays_empty(&rig), "no completion while FATAL");

    rig.write(global::CONTROL, control::SOFT_RESET);
    assert!(wait_until(|| rig.read(global::CONTROL) & control::SOFT_RESET == 0));
    assert_eq!(rig.read(global::STATUS) & status::FATAL, 0);
    assert_eq!(rig.read(global::FATAL_CODE), 0);
    rig.enable();
    let mut tq = TestQueue::start(&mut rig, 0, 8);
    tq.submit(&rig, desc(opcode::READ, 2, 0, 512, iova));
    assert_eq!(tq.next(&rig).tag, 2);
}

#[test]
fn unknown_tag_adds_a_completion_for_a_tag_never_submitted() {
    let mut rig = Rig::enabled();
    rig.sim.inject("unknown-tag:every=1".parse().expect("fault"));
    let mut tq = TestQueue::start(&mut rig, 0, 8);
    let (_, iova) = rig.map_data(4096);
    tq.submit(&rig, desc(opcode::READ, 5, 0, 512, iova));
    let real = tq.next(&rig);
    let extra = tq.next(&rig);
    assert_eq!((real.tag, real.status), (5, cq_status::OK));
    assert_ne!(extra.tag, 5, "a tag never submitted");
    assert_eq!(extra.sq_head, real.sq_head);
    assert!(tq.stays_empty(&rig));
    assert_eq!(rig.sim.stats().completions, 2);
}

#[test]
fn an_unknown_tag_is_never_one_submitted_but_not_yet_fetched() {
    let mut rig = Rig::enabled();
    rig.sim.inject("unknown-tag:every=1".parse().expect("fault"));
    let mut tq = TestQueue::start(&mut rig, 0, 8);
    let (_, iova) = rig.map_data(4096);
    // The tags the engine would pick if it excluded only those it has fetched: when it
    // completes tag 1, the others wait in the ring, submitted and not yet fetched.
    let submitted = [1u16, 0x8001, 0x8002, 0x8003];
    for tag in submitted {
        tq.push(&rig, desc(opcode::READ, tag, 0, 512, iova));
    }
    tq.ring(&rig);
    let got: Vec<u16> = (0..8).map(|_| tq.next(&rig).tag).collect();
    let real: Vec<u16> = got.iter().step_by(2).copied().collect();
    let extra: Vec<u16> = got.iter().skip(1).step_by(2).copied().collect();
    assert_eq!(real, submitted, "each command completed once, in order");
    for tag in extra {
        assert!(
            !submitted.contains(&tag),
            "extra completion {tag:#x} names a submitted command"
        );
    }
    assert!(tq.stays_empty(&rig));
}

#[test]
fn duplicate_posts_the_same_completion_twice() {
    let mut rig = Rig::enabled();
    rig.sim.inject(Fault::DuplicateCompletion {
        queue: None,
        every: 2,
    });
    let mut tq = TestQueue::start(&mut rig, 0, 8);
    let (_, iova) = rig.map_data(4096);
    tq.push(&rig, desc(opcode::READ, 1, 0, 512, iova));
    tq.push(&rig, desc(opcode::READ, 2, 0, 1024, iova));
    tq.ring(&rig);
    let got: Vec<Completion> = (0..3).map(|_| tq.next(&rig)).collect();
    assert_eq!(got[0].tag, 1);
    assert_eq!(got[1], got[2], "the second descriptor's completion, twice");
    assert_eq!((got[1].tag, got[1].bytes, got[1].sq_head), (2, 1024, 2));
    assert!(tq.stays_empty(&rig));
}

#[test]
fn bad_phase_is_invisible_then_posted_once() {
    let mut rig = Rig::enabled();
    rig.sim.inject(Fault::BadPhase {
        queue: None,
        every: 1,
    });
    let mut tq = TestQueue::start(&mut rig, 0, 4);
    let (_, iova) = rig.map_data(4096);
    // Across a wrap, so both phase values are exercised.
    for tag in 1..=6u16 {
        tq.submit(&rig, desc(opcode::READ, tag, 0, 512, iova));
        let c = tq.next(&rig);
        assert_eq!((c.tag, c.status), (tag, cq_status::OK));
        assert!(tq.stays_empty(&rig), "exactly one completion for tag {tag}");
    }
    assert_eq!(rig.sim.stats().completions, 6);
}

/// Fetch ahead (§3, §4): each completion reports `sq_head` past every descriptor fetched so
/// far, ahead of the completions, which still come once each, in order, with the data moved.
#[test]
fn prefetch_reports_sq_head_past_descriptors_not_yet_completed() {
    let mut rig = Rig::enabled();
    rig.sim.inject(Fault::Prefetch {
        queue: Some(0),
        depth: 3,
    });
    let mut tq = TestQueue::start(&mut rig, 0, 16);
    let data = pattern(6 * 512, 7);
    let (src, src_iova) = rig.map_data(data.len());
    rig.buf(src).write_at(0, &data);
    for i in 0..6u16 {
        let at = u64::from(i) * 512;
        tq.push(&rig, desc(opcode::WRITE, i + 1, u64::from(i), 512, src_iova + at));
    }
    // One doorbell: the engine's first look sees all six.
    tq.ring(&rig);
    let got: Vec<(u16, u8, u16)> = (0..6)
        .map(|_| {
            let c = tq.next(&rig);
            (c.tag, c.status, c.sq_head)
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (1, cq_status::OK, 4),
            (2, cq_status::OK, 5),
            (3, cq_status::OK, 6),
            (4, cq_status::OK, 6),
            (5, cq_status::OK, 6),
            (6, cq_status::OK, 6)
        ],
        "the head runs three descriptors ahead of the completions"
    );
    assert!(tq.stays_empty(&rig), "one completion each");
    let (dst, dst_iova) = rig.map_data(data.len());
    tq.submit(&rig, desc(opcode::READ, 7, 0, data.len() as u32, dst_iova));
    assert_eq!(tq.next(&rig).status, cq_status::OK);
    assert!(rig.read_buf(dst, 0, data.len()) == data, "every WRITE landed");
}
