//! The lock nesting docs/locking.md lists ("The nesting the code has") against the nesting
//! the runtime checker records (`locks::observed_edges`, debug builds): a pair recorded in this
//! process that the document does not list fails, so the document cannot drift silently.

use scst_accel_hal::locks;
use scst_accel_hal::locks::levels;
use scst_accel_hal::locks::LockToken;
use scst_accel_hal::locks::OrderedMutex;

use super::desc;
use super::pattern;
use super::wait_until;
use super::write_then_read;
use super::Rig;
use super::TestQueue;
use crate::sca1::desc::cq_status;
use crate::sca1::desc::opcode;
use crate::sca1::regs::control;
use crate::sca1::regs::global;
use crate::sca1::regs::ID_VALUE;

const LOCKING_MD: &str = include_str!("../../../../docs/locking.md");

/// The `held → taken` pairs in docs/locking.md's list of the nesting the code has.
fn documented_nesting() -> Vec<(&'static str, &'static str)> {
    let start = LOCKING_MD
        .find("The nesting the code has (held → taken)")
        .expect("docs/locking.md lists the nesting the code has");
    let list = &LOCKING_MD[start..];
    let list = &list[..list.find("Every other lock is taken").expect("the list's end")];
    list.split('`')
        .skip(1)
        .step_by(2)
        .filter_map(|code| code.split_once(" → "))
        .collect()
}

#[test]
fn every_nesting_recorded_in_this_process_is_in_the_locking_document() {
    let documented = documented_nesting();
    let names: Vec<_> = levels::ALL.iter().map(|(_, name)| *name).collect();
    for (held, taken) in &documented {
        assert!(
            names.contains(held) && names.contains(taken),
            "docs/locking.md lists `{held} → {taken}`, which names no lock level"
        );
    }
    assert!(
        !documented.is_empty(),
        "no `held → taken` pair parsed from the list"
    );
    if !cfg!(debug_assertions) {
        return scst_accel_hal::skip::test_skipped(
            "every_nesting_recorded_in_this_process_is_in_the_locking_document",
            "edges are recorded in debug builds only",
        );
    }

    // The paths that nest: maps (the table, then the map limit), DMA copies in place across
    // medium chunks (the medium, then the table), one that faults (then the fault record), and
    // register reads and a soft reset under a driver lock below the simulators.
    let mut rig = Rig::enabled();
    let mut tq = TestQueue::start(&mut rig, 0, 16);
    let data = pattern(128 << 10, 40);
    assert_eq!(write_then_read(&mut rig, &mut tq, 100, &data), data);
    let (dst, dst_iova) = rig.map_data(4096);
    tq.submit(&rig, desc(opcode::READ, 3, 0, 8192, dst_iova));
    assert_eq!(tq.next(&rig).status, cq_status::DMA_FAULT);
    let _ = dst;
    {
        let spare = OrderedMutex::<(), levels::AccelSpareQueues>::new(());
        let mut token = LockToken::root();
        let _held = spare.lock(&mut token);
        assert_eq!(rig.read(global::ID), ID_VALUE);
        rig.write(global::CONTROL, control::SOFT_RESET);
        assert!(
            wait_until(|| rig.read(global::CONTROL) & control::SOFT_RESET == 0),
            "the soft reset completes"
        );
    }

    let observed = locks::observed_edges();
    for edge in [
        ("iommu.table", "iommu.map_limit"),
        ("sim.medium", "iommu.table"),
        ("sim.medium", "iommu.faults"),
        ("iommu.table", "iommu.faults"),
        ("accel.spare_queues", "sim.state"),
        ("accel.spare_queues", "sim.faults"),
    ] {
        assert!(observed.contains(&edge), "{edge:?} was exercised: {observed:?}");
    }
    let undocumented: Vec<_> = observed.iter().filter(|e| !documented.contains(e)).collect();
    assert!(
        undocumented.is_empty(),
        "nesting recorded in this process that docs/locking.md does not list under \"The \
         nesting the code has\": {undocumented:?}"
    );
}
