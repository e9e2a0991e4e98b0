//! The SCA-1 function driver's own rules against the simulated board, seen through interposers
//! that make it misbehave: what bring-up accepts from the device, how a failed bring-up leaves
//! the function, how a queue restarts, and how recoveries of one function are serialised.

use super::regs::control;
use super::regs::global;
use super::regs::queue;
use super::regs::Cap0;
use super::Sca1;
use super::Sca1Config;
use super::Sca1Error;
use crate::sim::create_sim_board;
use crate::sim::SimConfig;
use crate::sim::SimHandle;
use scst_accel_hal::BarInterposer;
use scst_accel_hal::DeviceBacking;
use scst_accel_hal::RegisterIo;
use std::sync::Arc;

/// A BAR whose 32-bit reads pass through `read(offset, value)`: a device that reports what the
/// test wants in the registers it names, and the board's own values elsewhere.
struct Bend<F> {
    inner: Arc<dyn DeviceBacking>,
    read: F,
}

impl<F: Fn(u64, u32) -> u32 + Send + Sync> RegisterIo for Bend<F> {
    fn len(&self) -> u64 {
        self.inner.bar0().len()
    }

    fn read32(&self, offset: u64) -> u32 {
        (self.read)(offset, self.inner.bar0().read32(offset))
    }

    fn write32(&self, offset: u64, value: u32) {
        self.inner.bar0().write32(offset, value);
    }

    fn read64(&self, offset: u64) -> u64 {
        self.inner.bar0().read64(offset)
    }

    fn write64(&self, offset: u64, value: u64) {
        self.inner.bar0().write64(offset, value);
    }
}

impl<F: Fn(u64, u32) -> u32 + Send + Sync> BarInterposer for Bend<F> {
    fn device(&self) -> &dyn DeviceBacking {
        self.inner.as_ref()
    }
}

/// A simulated board of `queues` queues (no vectors, 1024 blocks) and the device the driver
/// reaches it through: `bend` applied to its BAR reads.
fn board(
    name: &str,
    queues: u32,
    bend: impl Fn(u64, u32) -> u32 + Send + Sync + 'static,
) -> (Arc<dyn DeviceBacking>, Arc<dyn DeviceBacking>, SimHandle) {
    let config = SimConfig {
        queues,
        vectors: 0,
        num_blocks: 1024,
        ..SimConfig::default()
    };
    let (board, sim) = create_sim_board(name, config).expect("sim board");
    let board: Arc<dyn DeviceBacking> = board;
    let device: Arc<dyn DeviceBacking> = Arc::new(Bend {
        inner: Arc::clone(&board),
        read: bend,
    });
    (board, device, sim)
}

fn driver_config(queues: u32) -> Sca1Config {
    Sca1Config {
        queues,
        ring_entries: 16,
        interrupts: false,
        ..Sca1Config::default()
    }
}

/// Bring-up refused the device: the error, which must name `register`.
fn refused(name: &str, register: u64, value: u32) -> (Sca1Error, Arc<dyn DeviceBacking>) {
    let (board, device, _sim) = board(
        name,
        1,
        move |offset, real| if offset == register { value } else { real },
    );
    match Sca1::bring_up(device, &driver_config(1)) {
        Ok(_) => panic!("{name}: bring-up accepted {value:#x} at {register:#x}"),
        Err(e) => (e, board),
    }
}

/// The function is left reset: not enabled, no queue running (accelerator.md §7).
fn assert_left_reset(board: &dyn DeviceBacking) {
    let bar = board.bar0();
    assert_eq!(
        bar.read32(global::CONTROL) & control::ENABLE,
        0,
        "ENABLE left set"
    );
    assert_eq!(
        bar.read32(queue::reg(0, queue::Q_CONTROL)) & queue::RUN,
        0,
        "RUN left set"
    );
}

/// CAP0 whose largest ring is 2^0 entries (bits 15:8 = 0) was a panic in bring-up (a clamp
/// whose minimum exceeded its maximum); a ring holds at least 2 entries (accelerator.md §2).
#[test]
fn bring_up_refuses_a_cap0_with_no_ring() {
    let cap0 = Cap0 {
        queues: 1,
        max_ring_log2: 0,
        vectors: 0,
        max_sgl_log2: 8,
    };
    let (e, board) = refused("sca1-cap0-ring0", global::CAP0, cap0.to_bits());
    assert!(
        matches!(e, Sca1Error::Capability { register, .. } if register.starts_with("CAP0 largest ring")),
        "{e}"
    );
    assert_left_reset(board.as_ref());
}

/// CAP0's queue count is 1..=32 (INT_STATUS has one bit per queue, accelerator.md §1).
#[test]
fn bring_up_refuses_a_queue_count_outside_the_contract() {
    for queues in [0, 33, 255] {
        let cap0 = Cap0 {
            queues,
            max_ring_log2: 12,
            vectors: 0,
            max_sgl_log2: 8,
        };
        let (e, board) = refused("sca1-cap0-queues", global::CAP0, cap0.to_bits());
        assert!(
            matches!(e, Sca1Error::Capability { value, .. } if value == u64::from(queues)),
            "{queues} queues: {e}"
        );
        assert_left_reset(board.as_ref());
    }
}

/// BLOCK_SIZE is 512 or 4096 (accelerator.md §1): a device reporting another size would be
/// sent LBAs in units it does not use.
#[test]
fn bring_up_refuses_a_block_size_outside_the_contract() {
    for size in [0, 256, 1024, 8192] {
        let (e, board) = refused("sca1-block-size", global::BLOCK_SIZE, size);
        assert!(
            matches!(e, Sca1Error::Capability { register: "BLOCK_SIZE", value, .. } if value == u64::from(size)),
            "BLOCK_SIZE {size}: {e}"
        );
        assert_left_reset(board.as_ref());
    }
    let (e, _) = refused("sca1-cap1-zero", global::CAP1, 0);
    assert!(matches!(e, Sca1Error::Capability { register: "CAP1", .. }), "{e}");
}
