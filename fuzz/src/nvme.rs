//! Target `nvme`: the NVMe driver's I/O queue (`NvmeQueue`: submit, reap, stop, abandon,
//! restart) against a hostile controller. The project's NVMe simulator brings the controller
//! up and answers the admin queue; then an interposer takes the I/O queues away from it: their
//! submission doorbells no longer reach the simulator, and the fuzzer writes the completion
//! queue entries (any CID, SQID, phase, status, SQ head, anywhere in the ring) and forces
//! controller registers (CSTS, a gone device's all-ones) under the driver.
//!
//! Invariants beyond "no panic":
//! - a reap returns only requests in flight, each at most once;
//! - the driver's in-flight count equals the requests submitted and not yet returned;
//! - `expired` names only requests in flight; `abandon_all` returns exactly those in flight;
//! - a fused Compare and Write (two commands, two CIDs) is one request in all of the above,
//!   whatever completions the fuzzer forges for either half.

use crate::check;
use crate::device::take_in_flight;
use crate::device::ForgedCompletions;
use arbitrary::Result;
use arbitrary::Unstructured;
use scst_accel_boards::engine::DeviceOp;
use scst_accel_boards::engine::DeviceRequest;
use scst_accel_boards::nvme::cmd::Cqe;
use scst_accel_boards::nvme::NvmeConfig;
use scst_accel_boards::nvme::NvmeController;
use scst_accel_boards::sim::nvme::create_nvme_sim;
use scst_accel_boards::sim::nvme::NvmeSimConfig;
use scst_accel_hal::sim::SimDevice;
use scst_accel_hal::BarInterposer;
use scst_accel_hal::DeviceBacking;
use scst_accel_hal::RegisterIo;
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::time::Duration;
use std::time::Instant;

/// Completions the driver accepted, over every input of the process (the runner prints it:
/// a harness whose forged completions never land would fuzz nothing).
pub static ACCEPTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Operations per input.
const MAX_OPS: usize = 48;
/// NVMe register offsets (NVMe 1.4 §3.1), written out here rather than taken from the driver.
const CSTS: u64 = 0x1C;
const ASQ: u64 = 0x28;
const DOORBELLS: u64 = 0x1000;
const CREATE_IO_CQ: u8 = 0x05;

/// What the interposer learned and what the fuzzer forces.
#[derive(Debug, Default)]
struct State {
    /// Admin SQ tail read so far (to read each new admin command once).
    admin_tail: u32,
    /// Admin SQ tail the driver last rang.
    admin_rung: u32,
    /// I/O CQs created: qid -> (IOVA, entries).
    cqs: HashMap<u16, (u64, u32)>,
    /// Forced register values (reads return these).
    forced: HashMap<u64, u32>,
}

/// The interposer between the driver and the simulated controller.
struct Interposer {
    inner: Arc<SimDevice>,
    hostile: AtomicBool,
    state: Mutex<State>,
}

impl Interposer {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Read the admin commands the driver queued since the last call, to learn where I/O CQs
    /// live. Called by the target between driver calls: the driver holds its admin lock while
    /// it rings, and DMA from inside that call would be a blocking call under a lock.
    fn snoop_admin(&self) {
        let asq = self.inner.bar0().read64(ASQ);
        let mut st = self.state();
        let tail = st.admin_rung;
        let mut index = st.admin_tail;
        // The admin queue has at most 4096 entries; never loop on a bogus tail.
        for _ in 0..4096 {
            if index == tail {
                break;
            }
            let mut sqe = [0u8; 64];
            if self
                .inner
                .iommu()
                .dma_read(asq + u64::from(index) * 64, &mut sqe)
                .is_ok()
                && sqe[0] == CREATE_IO_CQ
            {
                let prp1 = u64::from_le_bytes(sqe[24..32].try_into().unwrap_or_default());
                let qid = u16::from_le_bytes([sqe[40], sqe[41]]);
                let size = u32::from(u16::from_le_bytes([sqe[42], sqe[43]])) + 1;
                st.cqs.insert(qid, (prp1, size));
            }
            index = (index + 1) % u32::from(scst_accel_boards::nvme::ADMIN_ENTRIES);
        }
        st.admin_tail = tail;
    }
}

impl RegisterIo for Interposer {
    fn len(&self) -> u64 {
        self.inner.bar0().len()
    }

    fn read32(&self, offset: u64) -> u32 {
        if let Some(&v) = self.state().forced.get(&offset) {
            return v;
        }
        self.inner.bar0().read32(offset)
    }

    fn write32(&self, offset: u64, value: u32) {
        // Doorbells at stride 4 (the simulator's CAP.DSTRD is 0): even index = SQ tail.
        if offset >= DOORBELLS && (offset - DOORBELLS).is_multiple_of(8) {
            let qid = (offset - DOORBELLS) / 8;
            if qid == 0 {
                self.state().admin_rung = value;
            } else if self.hostile.load(Ordering::Relaxed) {
                return;
            }
        }
        self.inner.bar0().write32(offset, value);
    }

    fn read64(&self, offset: u64) -> u64 {
        let forced = self.state().forced.get(&offset).copied();
        match forced {
            Some(v) => u64::from(v) | (u64::from(self.read32(offset + 4)) << 32),
            None => self.inner.bar0().read64(offset),
        }
    }

    fn write64(&self, offset: u64, value: u64) {
        self.inner.bar0().write64(offset, value);
    }
}

impl BarInterposer for Interposer {
    fn device(&self) -> &dyn DeviceBacking {
        self.inner.as_ref()
    }

    fn before_reset(&self) {
        let mut st = self.state();
        st.admin_tail = 0;
        st.admin_rung = 0;
    }
}

/// The admin timeout of a second bring-up, after the short one failed on a loaded machine.
const BRING_UP_RETRY_TIMEOUT: Duration = Duration::from_secs(10);

/// Run one input.
pub fn target(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let _ = run(&mut u);
}

fn run(u: &mut Unstructured<'_>) -> Result<()> {
    let depth = *u.choose(&[4u32, 8, 2, 16])?;
    let sim_config = NvmeSimConfig {
        queues: 1,
        interrupts: 1,
        ..NvmeSimConfig::default()
    };
    let split_64bit_mmio = u.arbitrary()?;
    // The rig itself must come up: a harness that silently does nothing would fuzz nothing.
    // The admin timeout is short so a hostile phase costs little per input; on a loaded machine
    // the simulator's own bring-up may take longer, and the honest simulator is then given a
    // generous one (a fresh one: a failed bring-up leaves the controller half-configured).
    let mut rig = None;
    for admin_timeout in [Duration::from_millis(100), BRING_UP_RETRY_TIMEOUT] {
        let (inner, _handle) =
            create_nvme_sim("fuzz-nvme", sim_config.clone()).expect("the NVMe simulator starts");
        let device = Arc::new(Interposer {
            inner,
            hostile: AtomicBool::new(false),
            state: Mutex::new(State::default()),
        });
        let config = NvmeConfig {
            queues: 1,
            queue_depth: depth,
            interrupts: false,
            iova_base: 1 << 32,
            iova_size: 1 << 30,
            admin_timeout,
            split_64bit_mmio,
            ..NvmeConfig::default()
        };
        match NvmeController::bring_up(Arc::clone(&device) as Arc<dyn DeviceBacking>, &config) {
            Ok((ctrl, queues)) => {
                rig = Some((device, ctrl, queues));
                break;
            }
            Err(e) if admin_timeout < BRING_UP_RETRY_TIMEOUT => {
                log::warn!("fuzz nvme: bring-up within {admin_timeout:?} failed ({e}); again with {BRING_UP_RETRY_TIMEOUT:?}");
            }
            Err(e) => panic!("the simulator is brought up: {e}"),
        }
    }
    let Some((device, ctrl, mut queues)) = rig else {
        unreachable!("the last try panics on failure")
    };
    device.hostile.store(true, Ordering::Relaxed);
    let mut q = queues.pop().expect("one I/O queue");
    let qid = q.qid();
    let iommu = Arc::clone(device.inner.iommu());
    // The device's completion tail and phase, per CQ (a restart makes a new CQ).
    let mut cq_seen = None;
    let mut forged = ForgedCompletions::new(1);
    let mut in_flight: HashMap<u64, ()> = HashMap::new();
    let mut next_tag = 0u64;
    let mut out = Vec::new();
    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        device.snoop_admin();
        let cq = device.state().cqs.get(&qid).copied();
        if cq != cq_seen {
            cq_seen = cq;
            forged = ForgedCompletions::new(cq.map_or(1, |(_, entries)| entries.clamp(1, 4096)));
        }
        match u.int_in_range(0..=10u8)? {
            0..=2 => {
                let segs: Vec<(u64, u32)> = (0..u.int_in_range(0..=3usize)?)
                    .map(|_| {
                        let iova = if u.arbitrary()? {
                            (1 << 33) + u64::from(u.arbitrary::<u16>()?) * 512
                        } else {
                            u.arbitrary()?
                        };
                        Ok((iova, if u.arbitrary()? { 4096 } else { u.arbitrary()? }))
                    })
                    .collect::<Result<_>>()?;
                let op = *u.choose(&[
                    DeviceOp::Read,
                    DeviceOp::Write,
                    DeviceOp::Flush,
                    DeviceOp::WriteZeroes { deallocate: false },
                    DeviceOp::WriteZeroes { deallocate: true },
                    DeviceOp::Deallocate,
                    DeviceOp::CompareAndWrite,
                ])?;
                let total = segs.iter().fold(0u32, |a, s| a.wrapping_add(s.1));
                let length = match u.int_in_range(0..=2u8)? {
                    0 => u.arbitrary()?,
                    // A fused pair's segments carry the compare half and the write half.
                    1 if op == DeviceOp::CompareAndWrite => total / 2,
                    _ => total,
                };
                let tag = next_tag;
                next_tag += 1;
                let req = DeviceRequest {
                    user_tag: tag,
                    op,
                    fua: u.arbitrary()?,
                    lba: if u.arbitrary()? {
                        u.arbitrary()?
                    } else {
                        u64::from(u.arbitrary::<u8>()?)
                    },
                    length,
                    segments: &segs,
                };
                if q.submit(&req).is_ok() {
                    in_flight.insert(tag, ());
                }
            }
            3 => q.ring_doorbell(),
            4..=6 => {
                let Some((base, _)) = cq_seen else {
                    continue;
                };
                let slot_bits = q.depth().trailing_zeros();
                let cid = if u.ratio(3, 4)? {
                    // A plausible CID: a slot with a small generation.
                    let slot = u.int_in_range(0..=q.depth() - 1)?;
                    let generation = u.int_in_range(0..=3u16)?;
                    (generation << slot_bits) | slot
                } else {
                    u.arbitrary()?
                };
                let status_phase = u16::from(forged.phase);
                let cqe = Cqe {
                    dw0: u.arbitrary()?,
                    dw1: u.arbitrary()?,
                    sq_head: if u.ratio(3, 4)? {
                        u.int_in_range(0..=q.depth())?
                    } else {
                        u.arbitrary()?
                    },
                    sq_id: if u.ratio(7, 8)? { qid } else { u.arbitrary()? },
                    cid,
                    status: if u.ratio(7, 8)? {
                        (if u.ratio(2, 3)? {
                            0
                        } else {
                            u.arbitrary::<u16>()? & !1
                        }) | status_phase
                    } else {
                        u.arbitrary()?
                    },
                };
                let at = forged.slot(u)?;
                let _ = iommu.dma_write(base + u64::from(at) * 16, zerocopy::IntoBytes::as_bytes(&cqe));
                forged.written(at);
            }
            7 => {
                out.clear();
                let n = q.reap(&mut out);
                ACCEPTED.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                check!(n == out.len(), "reap said {n}, returned {}", out.len());
                for c in &out {
                    take_in_flight(&mut in_flight, c.user_tag, c);
                }
            }
            8 => {
                let value = if u.arbitrary()? { u32::MAX } else { u.arbitrary()? };
                if u.arbitrary()? {
                    device.state().forced.insert(CSTS, value);
                } else {
                    device.state().forced.clear();
                }
            }
            9 => {
                let expired = q.expired(Instant::now() + Duration::from_secs(3600));
                check!(
                    expired.iter().all(|t| in_flight.contains_key(t)),
                    "expired {expired:?}"
                );
            }
            _ => {
                let _ = q.stop_within(Duration::from_millis(20));
                let mut abandoned = q.abandon_all();
                abandoned.sort_unstable();
                let mut expected: Vec<u64> = in_flight.drain().map(|(t, ())| t).collect();
                expected.sort_unstable();
                check!(
                    abandoned == expected,
                    "abandoned {abandoned:?}, in flight {expected:?}"
                );
                device.state().forced.clear();
                let _ = q.restart();
            }
        }
        check!(
            q.in_flight() == in_flight.len(),
            "driver {} in flight, host {}",
            q.in_flight(),
            in_flight.len()
        );
    }
    // Teardown against a well-behaved controller again (a forced CSTS would make the shutdown
    // wait out CAP.TO on every input).
    device.state().forced.clear();
    device.hostile.store(false, Ordering::Relaxed);
    drop(q);
    drop(ctrl);
    Ok(())
}
