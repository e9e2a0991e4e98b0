//! The driver against the project's simulated NVMe controller (`crate::sim::nvme`, written from
//! the NVMe 1.4 specification independently of this driver): bring-up, I/O with PRP lists,
//! the optional commands, completion validation, stop / restart, recovery with commands in
//! flight, timeouts, controller fatal status, escalation to a function reset, shutdown and a
//! gone device. Misbehaviour comes from the simulator's faults ([`NvmeFault`]); the
//! [`interposer`] adds the little the simulator cannot do.
//!
//! Every test ends by checking the simulated IOMMU: no mapping left (queues, controller and
//! buffers dropped cleanly) and no DMA fault (nothing touched memory after it was unmapped or
//! before it was mapped).

mod abort;
mod fused;
mod interposer;
mod io;
mod layouts;
mod recovery;

use super::controller::map_region;
use super::NvmeConfig;
use super::NvmeController;
use super::NvmeQueue;
use crate::engine::Controller;
use crate::engine::DeviceCompletion;
use crate::engine::DeviceOp;
use crate::engine::DeviceRequest;
use crate::engine::DeviceStatus;
use crate::engine::QueueEngine;
use crate::sim::nvme::create_nvme_sim;
use crate::sim::nvme::NvmeFault;
use crate::sim::nvme::NvmeSimConfig;
use crate::sim::nvme::NvmeSimHandle;
use scst_accel_dma::MappedRegion;
use scst_accel_hal::sim::SimDevice;
use scst_accel_hal::DeviceBacking;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

/// Bound of every wait in these tests for something that must happen.
const WAIT: Duration = Duration::from_secs(5);

/// The driver settings most tests use: two polled queues of 16 entries.
fn config() -> NvmeConfig {
    NvmeConfig {
        queues: 2,
        queue_depth: 16,
        interrupts: false,
        iova_base: 1 << 32,
        iova_size: 1 << 30,
        admin_timeout: Duration::from_secs(2),
        split_64bit_mmio: false,
        fua_ignored: false,
        bogus_device_ids: false,
        shutdown_timeout: Duration::from_millis(500),
        max_transfer_bytes: crate::nvme::MAX_TRANSFER,
    }
}

/// A fresh simulated controller named `id`.
fn sim(id: &str, config: NvmeSimConfig) -> (Arc<SimDevice>, NvmeSimHandle) {
    create_nvme_sim(id, config).expect("simulated NVMe controller")
}

/// A controller brought up by the driver, its queues, and the simulator's handle.
struct Rig {
    ctrl: Arc<NvmeController>,
    queues: Vec<NvmeQueue>,
    sim: NvmeSimHandle,
}

impl Rig {
    /// Bring up a fresh simulated controller named `id`.
    fn up(id: &str, sim_config: NvmeSimConfig, config: &NvmeConfig) -> Rig {
        let (device, handle) = sim(id, sim_config);
        Rig::up_on(device, handle, config)
    }

    /// Bring up `device` (the simulator, or the interposer in front of it).
    fn up_on(device: Arc<dyn DeviceBacking>, sim: NvmeSimHandle, config: &NvmeConfig) -> Rig {
        let (ctrl, queues) = NvmeController::bring_up(device, config).expect("bring-up");
        Rig { ctrl, queues, sim }
    }

    /// The orderly end of a run: stop every queue (nothing may be left in flight), shut the
    /// controller down, drop everything, then check the IOMMU.
    fn finish(mut self) {
        for q in &mut self.queues {
            QueueEngine::stop(q).expect("stop");
            assert_eq!(q.abandon_all(), Vec::<u64>::new(), "nothing left in flight");
        }
        Controller::shutdown(self.ctrl.as_ref()).expect("shutdown");
        assert!(!self.ctrl.is_enabled());
        assert_eq!(self.ctrl.admin_unknown_completions(), 0);
        self.release();
    }

    /// Drop the queues and the controller, then check that they left no IOMMU mapping behind
    /// and that the controller never faulted on the IOMMU.
    fn release(self) {
        let Rig { ctrl, queues, sim } = self;
        drop(queues);
        drop(ctrl);
        assert_released(&sim);
    }
}

/// Every mapping is gone and the controller never hit an unmapped IOVA. Call when every
/// driver object and buffer of the run is dropped.
fn assert_released(sim: &NvmeSimHandle) {
    let iommu = sim.iommu();
    assert_eq!(
        iommu.mappings(),
        0,
        "mappings left behind: {} bytes",
        iommu.mapped_bytes()
    );
    assert_eq!(iommu.fault_count(), 0, "IOMMU faults: {:?}", iommu.faults());
}

fn req(tag: u64, op: DeviceOp, lba: u64, length: u32, segments: &[(u64, u32)]) -> DeviceRequest<'_> {
    DeviceRequest {
        user_tag: tag,
        op,
        fua: false,
        lba,
        length,
        segments,
    }
}

/// Submit, ring once, reap until every request completed.
fn run(q: &mut NvmeQueue, reqs: &[DeviceRequest<'_>]) -> Vec<DeviceCompletion> {
    for r in reqs {
        q.submit(r).expect("submit");
    }
    q.ring_doorbell();
    reap_n(q, reqs.len())
}

/// Reap until `n` completions arrived (bounded: the test fails rather than hangs).
fn reap_n(q: &mut NvmeQueue, n: usize) -> Vec<DeviceCompletion> {
    let mut out = Vec::new();
    wait_until(|| {
        q.reap(&mut out);
        out.len() >= n
    });
    assert_eq!(out.len(), n, "every request completed: {}", q.dump());
    out
}

/// Poll `done` every millisecond for up to [`WAIT`]; returns whether it held.
fn wait_until(mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + WAIT;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u8)
                .wrapping_mul(31)
                .wrapping_add(seed)
                .wrapping_add((i >> 9) as u8)
        })
        .collect()
}

/// Write 8 blocks of a pattern at `lba` through `q`, read them back into another buffer and
/// compare byte for byte: the queue serves, and data really moves.
fn verified_io(q: &mut NvmeQueue, lba: u64, seed: u8) {
    let ctrl = Arc::clone(q.controller());
    let len = 8 * ctrl.geometry().block_size;
    let out = buffer(&ctrl, len as usize);
    let back = buffer(&ctrl, len as usize);
    let data = pattern(len as usize, seed);
    out.region().write_at(0, &data);
    let tag = 1000 + 2 * u64::from(seed);
    let w = run(q, &[req(tag, DeviceOp::Write, lba, len, &[(out.iova(), len)])]);
    assert_eq!(w, vec![ok(tag)]);
    let r = run(
        q,
        &[req(tag + 1, DeviceOp::Read, lba, len, &[(back.iova(), len)])],
    );
    assert_eq!(r, vec![ok(tag + 1)]);
    let mut got = vec![0u8; len as usize];
    back.region().read_at(0, &mut got);
    assert!(got == data, "data read back differs");
}

/// A zeroed buffer of `len` bytes mapped on the controller's device.
fn buffer(ctrl: &NvmeController, len: usize) -> MappedRegion {
    map_region(ctrl.device(), ctrl.iovas(), len, "test buffer").expect("buffer")
}

fn ok(tag: u64) -> DeviceCompletion {
    DeviceCompletion {
        user_tag: tag,
        status: DeviceStatus::Ok,
        failing_lba_low: None,
    }
}

/// A simulator fault in its command-line form (`hang`, `latency:20ms`, ...), as an operator
/// would inject it.
fn fault(text: &str) -> NvmeFault {
    text.parse().expect("fault")
}
