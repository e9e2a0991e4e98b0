//! Register file: reset values, W1S/W1C aliases, ENABLE → READY, RUN-only-while-stopped
//! registers (accelerator.md §1, §2, §7).

use super::*;
use crate::sca1::desc::cq_status;
use crate::sca1::regs::Cap0;
use crate::sca1::regs::Timeouts;
use crate::sca1::regs::ID_VALUE;
use crate::sca1::regs::VERSION_1_2;

#[test]
fn reset_values_describe_the_board() {
    let rig = Rig::new(small_config());
    assert_eq!(rig.read(global::ID), ID_VALUE);
    assert_eq!(
        rig.read(global::VERSION),
        VERSION_1_2,
        "contract 1.2: COPY and REARM offered"
    );
    assert_eq!(
        Cap0::from_bits(rig.read(global::CAP0)),
        Cap0 {
            queues: 2,
            max_ring_log2: 12,
            vectors: 2,
            max_sgl_log2: 8
        }
    );
    assert_eq!(rig.read(global::CAP1), 64, "256 KiB in 4 KiB units");
    assert_eq!(rig.bar().read64(global::CAPACITY), 8192);
    assert_eq!(rig.read(global::BLOCK_SIZE), 512);
    assert_eq!(
        Timeouts::from_bits(rig.read(global::TIMEOUTS)),
        Timeouts {
            stop_ms: 100,
            reset_ms: 1000
        }
    );
    assert_eq!(rig.read(global::CONTROL), 0);
    assert_eq!(rig.read(global::STATUS), 0);
    assert_eq!(rig.read(global::FATAL_CODE), 0);
    assert_eq!(rig.read(global::INT_STATUS), 0);
    assert_eq!(rig.read(global::INT_MASK), 0b11, "every queue masked");
    assert_eq!(rig.read(global::INT_COALESCE), 0);
    for q in 0..2 {
        for reg in [
            queue::SQ_BASE,
            queue::CQ_BASE,
            queue::RING_SIZE,
            queue::Q_CONTROL,
            queue::Q_STATUS,
            queue::Q_ERROR,
            queue::Q_ERROR_INDEX,
            queue::Q_VECTOR,
        ] {
            assert_eq!(rig.qread(q, reg), 0, "queue {q} register {reg:#x}");
        }
    }
    let big = Rig::new(SimConfig {
        num_blocks: 0x1_2345_6789,
        ..small_config()
    });
    assert_eq!(
        big.bar().read64(global::CAPACITY),
        0x1_2345_6789,
        "64-bit CAPACITY"
    );
}

#[test]
fn read_only_and_reserved_bits_ignore_writes() {
    let rig = Rig::new(small_config());
    rig.write(global::ID, 0);
    rig.write(global::CAP0, 0);
    rig.write(global::STATUS, 0xffff_ffff);
    assert_eq!(rig.read(global::ID), ID_VALUE);
    assert_eq!(Cap0::from_bits(rig.read(global::CAP0)).queues, 2);
    assert_eq!(rig.read(global::STATUS), 0);
    rig.write(global::INT_COALESCE, 0xffff_ffff);
    assert_eq!(
        rig.read(global::INT_COALESCE),
        0x01ff_ffff,
        "bit 24 REARM (1.2), bits 31:25 reserved"
    );
    assert_eq!(rig.read(global::INT_MASK_SET), 0, "write-only alias reads 0");
    assert_eq!(rig.read(doorbell::sq_tail(0)), 0, "doorbells read 0");
}

#[test]
fn interrupt_mask_aliases_set_and_clear_bits() {
    let rig = Rig::new(small_config());
    rig.write(global::INT_MASK_CLEAR, 0b01);
    assert_eq!(rig.read(global::INT_MASK), 0b10);
    rig.write(global::INT_MASK_CLEAR, 0b10);
    assert_eq!(rig.read(global::INT_MASK), 0);
    rig.write(global::INT_MASK_SET, 0b10);
    assert_eq!(rig.read(global::INT_MASK), 0b10);
    rig.write(global::INT_MASK_SET, 0xffff_ffff);
    assert_eq!(rig.read(global::INT_MASK), 0b11, "bits of absent queues stay 0");
    rig.write(global::INT_MASK, 0);
    assert_eq!(rig.read(global::INT_MASK), 0b11, "INT_MASK itself is read-only");
}

#[test]
fn enable_sets_ready_and_disable_clears_it() {
    let rig = Rig::new(small_config());
    rig.enable();
    assert_eq!(rig.read(global::CONTROL), control::ENABLE);
    assert_eq!(rig.read(global::STATUS), status::READY);
    rig.write(global::CONTROL, 0);
    assert_eq!(rig.read(global::STATUS) & status::READY, 0);
}

#[test]
fn ring_registers_are_writable_only_while_stopped() {
    let mut rig = Rig::enabled();
    let tq = TestQueue::start(&mut rig, 0, 8);
    assert_eq!(rig.qread(0, queue::Q_CONTROL), queue::RUN);
    assert_eq!(rig.bar().read64(queue::reg(0, queue::SQ_BASE)), 0x1000_0000);
    rig.bar().write64(queue::reg(0, queue::SQ_BASE), 0x5000_0000);
    rig.qwrite(0, queue::RING_SIZE, 16);
    assert_eq!(
        rig.bar().read64(queue::reg(0, queue::SQ_BASE)),
        0x1000_0000,
        "SQ_BASE kept while RUN"
    );
    assert_eq!(rig.qread(0, queue::RING_SIZE), 8, "RING_SIZE kept while RUN");
    rig.qwrite(0, queue::Q_VECTOR, 1);
    assert_eq!(rig.qread(0, queue::Q_VECTOR), 1, "Q_VECTOR is writable any time");

    tq.stop(&rig);
    rig.bar().write64(queue::reg(0, queue::CQ_BASE), 0x1_2345_6000);
    assert_eq!(
        rig.bar().read64(queue::reg(0, queue::CQ_BASE)),
        0x1_2345_6000,
        "64-bit base"
    );
    rig.qwrite(0, queue::RING_SIZE, 16);
    assert_eq!(rig.qread(0, queue::RING_SIZE), 16);
}

#[test]
fn starting_a_queue_with_an_unusable_ring_halts_it() {
    let rig = Rig::enabled();
    rig.bar().write64(queue::reg(1, queue::SQ_BASE), 0x1000_0000);
    rig.bar().write64(queue::reg(1, queue::CQ_BASE), 0x2000_0000);
    rig.qwrite(1, queue::RING_SIZE, 3);
    rig.qwrite(1, queue::Q_CONTROL, queue::RUN);
    assert_eq!(rig.qread(1, queue::Q_STATUS), queue::ERROR);
    assert_eq!(rig.qread(1, queue::Q_ERROR), u32::from(cq_status::INVALID_FIELD));
    assert_eq!(rig.sim.stats().halted_queues, 1);

    // RUN cleared, a valid size, RUN again: the error is gone.
    rig.qwrite(1, queue::Q_CONTROL, 0);
    rig.qwrite(1, queue::RING_SIZE, 4);
    rig.qwrite(1, queue::Q_CONTROL, queue::RUN);
    assert_eq!(rig.qread(1, queue::Q_STATUS), 0);
    assert_eq!(rig.qread(1, queue::Q_ERROR), 0);

    rig.qwrite(1, queue::Q_CONTROL, 0);
    rig.bar().write64(queue::reg(1, queue::SQ_BASE), 0x1000_0800);
    rig.qwrite(1, queue::Q_CONTROL, queue::RUN);
    assert_eq!(rig.qread(1, queue::Q_STATUS), queue::ERROR, "unaligned SQ_BASE");

    // §2: RING_SIZE is at most 2^CAP0.max_ring; the largest is usable, twice that is not.
    let max = 1u32 << Cap0::from_bits(rig.read(global::CAP0)).max_ring_log2;
    rig.qwrite(1, queue::Q_CONTROL, 0);
    rig.bar().write64(queue::reg(1, queue::SQ_BASE), 0x1000_0000);
    rig.qwrite(1, queue::RING_SIZE, max);
    rig.qwrite(1, queue::Q_CONTROL, queue::RUN);
    assert_eq!(rig.qread(1, queue::Q_STATUS), 0, "2^CAP0.max_ring entries");
    rig.qwrite(1, queue::Q_CONTROL, 0);
    rig.qwrite(1, queue::RING_SIZE, max * 2);
    rig.qwrite(1, queue::Q_CONTROL, queue::RUN);
    assert_eq!(
        rig.qread(1, queue::Q_STATUS),
        queue::ERROR,
        "above 2^CAP0.max_ring"
    );
    assert_eq!(rig.qread(1, queue::Q_ERROR), u32::from(cq_status::INVALID_FIELD));
    assert_eq!(rig.qread(1, queue::Q_ERROR_INDEX), 0);
}

#[test]
fn invalid_configurations_are_refused() {
    let err = create_sim_board(
        "bad",
        SimConfig {
            queues: 0,
            ..SimConfig::default()
        },
    )
    .expect_err("0 queues");
    assert!(err.to_string().contains("queues"), "{err}");
}

/// BAR accesses reach the board through the `RegisterIo` trait object, with no token and
/// possibly under a driver's lock (diag reads a spare queue's Q_STATUS under
/// `accel.spare_queues`): allowed there, soft reset included (its fault-plan and state locks
/// are taken on the same path), since an MMIO access is not a blocking call.
#[test]
fn register_accesses_and_a_soft_reset_under_a_driver_lock_are_allowed() {
    use scst_accel_hal::locks::levels;
    use scst_accel_hal::locks::LockToken;
    use scst_accel_hal::locks::OrderedMutex;

    let rig = Rig::enabled();
    let spare = OrderedMutex::<(), levels::AccelSpareQueues>::new(());
    let mut token = LockToken::root();
    let _held = spare.lock(&mut token);
    assert_eq!(rig.read(global::ID), ID_VALUE);
    rig.write(global::CONTROL, crate::sca1::regs::control::SOFT_RESET);
    assert!(
        wait_until(|| rig.read(global::CONTROL) & crate::sca1::regs::control::SOFT_RESET == 0),
        "the soft reset completes"
    );
}
