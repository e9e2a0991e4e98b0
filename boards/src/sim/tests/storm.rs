//! [`Fault::Storm`]: completions withheld, then posted in bursts with one interrupt each,
//! never overwriting an entry the host has not released (§4), and dropped by a stop (§6) or a
//! reset (§7) with no DMA after.

use super::*;
use crate::sca1::desc::cq_status;
use crate::sim::Fault;

/// Far longer than a few small READs take, so a whole batch is withheld before its burst.
const LONG_HOLD_MICROS: u64 = 250_000;

fn storm(hold_micros: u64) -> Fault {
    Fault::Storm {
        queue: Some(0),
        hold_micros,
    }
}

/// Submit READs of 512 bytes with `tags` in one doorbell, wait until the engine has executed
/// them all (their DMA done), and check that none has completed yet: they are withheld.
fn submit_and_see_them_withheld(
    rig: &Rig,
    tq: &mut TestQueue,
    iova: u64,
    tags: std::ops::RangeInclusive<u16>,
) {
    let before = rig.sim.stats();
    let n = u64::from(tags.end() - tags.start() + 1);
    for tag in tags {
        tq.push(rig, desc(opcode::READ, tag, u64::from(tag), 512, iova));
    }
    tq.ring(rig);
    assert!(
        wait_until(|| rig.sim.stats().bytes_read == before.bytes_read + n * 512),
        "the engine executed the descriptors"
    );
    assert_eq!(
        rig.sim.stats().completions,
        before.completions,
        "executed but withheld (if this fails the machine took longer than the hold to run {n} \
         small READs)"
    );
}

/// Read the next `n` entries, then release them with a single CQ_HEAD write.
fn take(rig: &Rig, tq: &mut TestQueue, n: u32) -> Vec<Completion> {
    let entries: Vec<Completion> = (0..n)
        .map(|i| {
            tq.peek(rig, i)
                .unwrap_or_else(|| panic!("entry {i} of {n} is written"))
        })
        .collect();
    let head = tq.head + n;
    if head >= tq.size {
        tq.phase = !tq.phase;
    }
    tq.head = head % tq.size;
    rig.write(doorbell::cq_head(tq.q), tq.head);
    entries
}

fn tags(entries: &[Completion]) -> Vec<u16> {
    entries.iter().map(|c| c.tag).collect()
}

#[test]
fn withheld_completions_arrive_in_bursts_with_one_interrupt_each() {
    let mut rig = Rig::enabled();
    rig.sim.inject("storm:hold=250ms,queue=0".parse().expect("fault"));
    assert_eq!(rig.sim.faults(), vec![storm(LONG_HOLD_MICROS)]);
    let mut tq = TestQueue::start(&mut rig, 0, 16);
    let (_, iova) = rig.map_data(4096);

    let mut per_interrupt = Vec::new();
    for batch in [1..=8u16, 9..=11] {
        let n = u32::from(batch.end() - batch.start() + 1);
        let interrupts = rig.sim.stats().interrupts;
        submit_and_see_them_withheld(&rig, &mut tq, iova, batch.clone());
        assert!(
            wait_until(|| rig.sim.stats().interrupts == interrupts + 1),
            "the burst is signalled"
        );
        assert!(
            tq.peek(&rig, n - 1).is_some(),
            "the whole batch is posted before its interrupt"
        );
        assert!(
            holds_for_a_while(|| rig.sim.stats().interrupts == interrupts + 1 && tq.peek(&rig, n).is_none()),
            "one interrupt per burst, nothing more"
        );
        let got = take(&rig, &mut tq, n);
        assert_eq!(
            tags(&got),
            batch.clone().collect::<Vec<_>>(),
            "in submission order"
        );
        assert!(got.iter().all(|c| c.status == cq_status::OK && c.bytes == 512));
        assert_eq!(got.last().map(|c| c.sq_head), Some(*batch.end() % 16));
        per_interrupt.push(got.len());
    }
    assert_eq!(per_interrupt, vec![8, 3], "completions posted per interrupt");
    assert_eq!(rig.sim.stats().completions, 11);
    assert!(tq.stays_empty(&rig));
}

#[test]
fn a_burst_stops_at_a_full_ring_and_resumes_when_cq_head_advances() {
    let mut rig = Rig::enabled();
    rig.sim.inject(storm(LONG_HOLD_MICROS));
    // 8 entries: the ring holds 7 completions (§4, N − 1).
    let mut tq = TestQueue::start(&mut rig, 0, 8);
    let (_, iova) = rig.map_data(4096);
    let interrupts = rig.sim.stats().interrupts;

    // First burst: 5 entries, left unconsumed.
    submit_and_see_them_withheld(&rig, &mut tq, iova, 1..=5);
    assert!(wait_until(|| rig.sim.stats().completions == 5));
    assert!(wait_until(|| rig.sim.stats().interrupts == interrupts + 1));

    // Second burst of 5: 2 fit, the engine signals them and stalls.
    submit_and_see_them_withheld(&rig, &mut tq, iova, 6..=10);
    assert!(wait_until(|| rig.sim.stats().completions == 7), "the ring fills");
    assert!(
        wait_until(|| rig.sim.stats().interrupts == interrupts + 2),
        "what was posted is signalled before the engine waits for CQ_HEAD"
    );
    assert!(
        holds_for_a_while(|| rig.sim.stats().completions == 7 && rig.sim.stats().interrupts == interrupts + 2),
        "a full ring stalls the burst"
    );
    let got = take(&rig, &mut tq, 7);
    assert_eq!(
        tags(&got),
        (1..=7).collect::<Vec<_>>(),
        "no entry overwritten before its release"
    );

    // CQ_HEAD advanced by 7: the rest of the burst (3) posts, across the wrap, with one more
    // interrupt.
    assert!(wait_until(|| rig.sim.stats().completions == 10));
    assert!(wait_until(|| rig.sim.stats().interrupts == interrupts + 3));
    assert!(holds_for_a_while(|| rig.sim.stats().interrupts == interrupts + 3));
    let rest = take(&rig, &mut tq, 3);
    assert_eq!(tags(&rest), vec![8, 9, 10]);
    assert!(tq.stays_empty(&rig));
    assert_eq!(rig.sim.stats().iommu_faults, 0);
}

/// Four READs are executed and withheld; `stop` (RUN = 0 or a reset) runs and every buffer,
/// rings included, is unmapped at once: nothing may be posted, not even when the hold ends.
/// Then a fresh start completes new work only.
fn withheld_completions_are_dropped_by(stop: impl FnOnce(&mut Rig, &TestQueue)) {
    let mut rig = Rig::enabled();
    rig.sim.inject(storm(100_000));
    let mut tq = TestQueue::start(&mut rig, 0, 8);
    let (_, iova) = rig.map_data(4096);
    submit_and_see_them_withheld(&rig, &mut tq, iova, 1..=4);
    stop(&mut rig, &tq);
    assert!(!tq.busy(&rig), "BUSY = 0: the host may reclaim the buffers (§6)");
    rig.unmap_all();
    let quiet = || rig.sim.stats().completions == 0 && rig.sim.stats().iommu_faults == 0;
    // Twice QUIET: well past the 100 ms hold.
    assert!(
        holds_for_a_while(quiet) && holds_for_a_while(quiet),
        "withheld completions dropped, no ring write"
    );

    if rig.read(global::CONTROL) & control::ENABLE == 0 {
        rig.enable();
    }
    let mut tq = TestQueue::start(&mut rig, 0, 8);
    let (_, iova) = rig.map_data(4096);
    tq.submit(&rig, desc(opcode::READ, 9, 0, 512, iova));
    let c = tq.next(&rig);
    assert_eq!((c.tag, c.status, c.sq_head), (9, cq_status::OK, 1));
    assert!(tq.stays_empty(&rig), "none of the dropped completions appears");
    assert_eq!(rig.sim.stats().completions, 1);
    assert_eq!(rig.sim.stats().iommu_faults, 0);
}

#[test]
fn clearing_run_drops_withheld_completions() {
    withheld_completions_are_dropped_by(|rig, tq| tq.stop(rig));
}

#[test]
fn a_reset_drops_withheld_completions() {
    withheld_completions_are_dropped_by(|rig, _| {
        rig.write(global::CONTROL, control::SOFT_RESET);
        assert!(
            wait_until(|| rig.read(global::CONTROL) & control::SOFT_RESET == 0),
            "reset completes"
        );
        assert_eq!(rig.read(global::STATUS) & status::BUSY, 0);
    });
}
