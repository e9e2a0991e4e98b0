//! One worker per submission queue: a deletion waits for the command its queue's worker
//! holds, and SQs that share a completion queue never overflow it.

use std::time::Instant;

use super::super::spec::admin as admin_op;
use super::super::spec::nvm;
use super::*;
use crate::sim::nvme::NvmeFault;

/// Delete I/O Submission Queue (admin command with the queue id in CDW10).
fn delete_sq(qid: u16) -> Sqe {
    Sqe {
        cdw10: u32::from(qid),
        ..sqe(admin_op::DELETE_IO_SQ, 0)
    }
}

#[test]
fn deleting_an_sq_completes_after_the_command_its_worker_holds() {
    let mut rig = Rig::with_io_queue(8);
    let hold = Duration::from_millis(300);
    rig.sim.inject(NvmeFault::Latency {
        micros: hold.as_micros() as u64,
    });
    let commands = rig.sim.stats().commands;
    let started = Instant::now();
    let cid = rig.submit(1, sqe(nvm::FLUSH, 1));
    // SQ 1's worker has fetched the FLUSH and waits out the latency with it...
    assert!(wait_until(|| rig.sim.stats().commands == commands + 1), "fetched");
    // ...while the admin worker, with no latency any more, deletes SQ 1.
    rig.sim.clear_faults();
    let deleted = rig.admin(delete_sq(1));
    assert_eq!(status(&deleted), Status::SUCCESS);
    // The deletion's completion is the host's licence to reclaim the SQ's buffers: the
    // FLUSH must be complete by then, its entry already posted.
    assert!(
        started.elapsed() >= hold,
        "the deletion waited for the held command"
    );
    let flushed = rig
        .next_completion_within(1, Duration::ZERO)
        .expect("the held command completed before its SQ's deletion");
    assert_eq!(flushed.cid, cid);
    assert_eq!(status(&flushed), Status::SUCCESS);
}

#[test]
fn sqs_sharing_a_cq_never_overflow_it() {
    let mut rig = Rig::enabled();
    // CQ 1 of 4 entries holds at most 3 completions (§4.1); SQs 1 and 2 both post to it.
    let cq_entries = 4u16;
    // The rig's host view has one size for a queue's SQ and CQ.
    let sq_entries = cq_entries;
    let cq = rig.alloc(usize::from(cq_entries) * 16);
    let c = rig.admin(create_cq(1, cq_entries, rig.iova(cq), 1, true));
    assert_eq!(status(&c), Status::SUCCESS);
    let mut sqs = Vec::new();
    for qid in 1..=2u16 {
        let sq = rig.alloc(usize::from(sq_entries) * 64);
        let c = rig.admin(create_sq(qid, sq_entries, rig.iova(sq), 1));
        assert_eq!(status(&c), Status::SUCCESS, "create SQ {qid}");
        sqs.push(sq);
    }
    // The rig's host view of queue 1 reads CQ 1; queue 2 shares it, so its view is only
    // used to write SQ 2's entries and doorbell.
    rig.queues = vec![
        None,
        Some(TestQueue {
            size: cq_entries,
            sq: sqs[0],
            cq,
            tail: 0,
            head: 0,
            phase: true,
        }),
        Some(TestQueue {
            size: sq_entries,
            sq: sqs[1],
            cq,
            tail: 0,
            head: 0,
            phase: true,
        }),
    ];
    // Two completions posted and not consumed: room for one more.
    let before = rig.sim.stats().completions;
    let mut cids = Vec::new();
    for _ in 0..2 {
        cids.push((1, rig.submit(1, sqe(nvm::FLUSH, 1))));
    }
    assert!(
        wait_until(|| rig.sim.stats().completions == before + 2),
        "two posted"
    );
    // Both workers then take a command at once (each waits out the latency holding it): only
    // one may count on the last free slot; the other waits for a CQ head doorbell.
    let hold = Duration::from_millis(100);
    rig.sim.inject(NvmeFault::Latency {
        micros: hold.as_micros() as u64,
    });
    for _ in 0..2 {
        for qid in 1..=2u16 {
            cids.push((qid, rig.submit(qid, sqe(nvm::FLUSH, 1))));
        }
    }
    // Before the host consumes anything, exactly three entries can be posted, and the slot
    // that must stay empty keeps the previous pass's phase (0, never written).
    assert!(
        wait_until(|| rig.sim.stats().completions == before + 3),
        "the CQ filled up to N - 1 entries"
    );
    std::thread::sleep(QUIET + 2 * hold);
    assert_eq!(
        rig.sim.stats().completions,
        before + 3,
        "no completion beyond N - 1"
    );
    let empty_slot_phase = rig
        .region(cq)
        .load_u8_acquire(usize::from(cq_entries - 1) * 16 + 14)
        & 1;
    assert_eq!(
        empty_slot_phase, 0,
        "the slot that must stay empty was never written"
    );
    // Consuming them (CQ head doorbells) lets the stalled workers finish: every command
    // completes once, on the SQ it came from.
    rig.sim.clear_faults();
    let mut seen = Vec::new();
    for _ in 0..cids.len() {
        let c = rig.next_completion(1);
        assert_eq!(status(&c), Status::SUCCESS);
        seen.push((c.sqid, c.cid));
    }
    seen.sort_unstable();
    cids.sort_unstable();
    assert_eq!(seen, cids);
}
