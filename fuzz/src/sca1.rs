//! Target `sca1`: the SCA-1 driver's queue (`Sca1Queue`: submit, reap, stop, abandon, restart)
//! against a hostile device: completion entries with any tag, status, phase, byte count and
//! submission head, written anywhere in the completion ring, and queue registers (Q_STATUS,
//! Q_ERROR...) that change under the driver between any two calls.
//!
//! Invariants beyond "no panic":
//! - a reap returns only requests in flight, each at most once (never twice, never one that
//!   was abandoned or never submitted);
//! - a completion with status OK accounts for the request's whole length;
//! - the driver's in-flight count equals the requests submitted and not yet returned;
//! - `expired` names only requests in flight; `abandon_all` returns exactly those in flight;
//! - the DMA it does is inside its own mappings (no IOMMU fault is caused by the driver).

use crate::check;
use crate::device::hostile_device;
use crate::device::take_in_flight;
use crate::device::ForgedCompletions;
use arbitrary::Result;
use arbitrary::Unstructured;
use scst_accel_boards::sca1::desc::cq_status;
use scst_accel_boards::sca1::desc::Completion;
use scst_accel_boards::sca1::desc::CQ_PHASE;
use scst_accel_boards::sca1::regs::global;
use scst_accel_boards::sca1::regs::queue;
use scst_accel_boards::sca1::QueueConfig;
use scst_accel_boards::sca1::Sca1Queue;
use scst_accel_boards::sca1::Sca1Request;
use scst_accel_dma::mapping::IovaLock;
use scst_accel_dma::IovaAllocator;
use scst_accel_hal::DeviceBacking;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

/// Completions the driver accepted, over every input of the process (the runner prints it:
/// a harness whose forged completions never land would fuzz nothing).
pub static ACCEPTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Operations per input.
const MAX_OPS: usize = 64;

/// Run one input.
pub fn target(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let _ = run(&mut u);
}

fn run(u: &mut Unstructured<'_>) -> Result<()> {
    let index = u.int_in_range(0..=3u32)?;
    let entries = *u.choose(&[2u32, 4, 8, 16, 3, 0])?;
    let max_sgl = u.int_in_range(0..=4u32)?;
    // Both ways (with REARM the acknowledgement reads INT_STATUS back), chosen by the queue
    // index rather than a draw of its own, which would shift every later draw of the corpus.
    let rearm = index % 2 == 0;
    let (device, model, iommu) = hostile_device("fuzz-sca1", 0x2_0000);
    let device: Arc<dyn DeviceBacking> = device;
    let iovas = Arc::new(IovaLock::new(IovaAllocator::new(1 << 32, 1 << 30)));
    let config = QueueConfig {
        index,
        entries,
        max_sgl,
        stop_timeout: Duration::ZERO,
        rearm,
        split_64bit_mmio: false,
    };
    let created = Sca1Queue::create(Arc::clone(&device), iovas, config, None);
    // Only a ring size the ring cannot have (3, 0 is clamped to 2) may refuse: anything else
    // means the rig fuzzes nothing.
    let Ok(mut q) = created else {
        check!(
            !entries.clamp(2, 4096).is_power_of_two(),
            "queue of {entries} entries refused"
        );
        return Ok(());
    };
    let reg = |r: u64| queue::reg(index, r);
    let ring = model
        .regs()
        .written
        .get(&reg(queue::RING_SIZE))
        .copied()
        .unwrap_or(0);
    check!(ring.is_power_of_two() && ring >= 2, "ring size {ring} programmed");
    // The device's view: completion tail and phase, reset when the driver sets RUN.
    let mut forged = ForgedCompletions::new(ring);
    let mut runs = 1usize;
    // The host's view: user tag -> length, for requests in flight.
    let mut in_flight: HashMap<u64, u32> = HashMap::new();
    let mut next_tag = 0u64;
    let mut out = Vec::new();
    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        let runs_now = model
            .regs()
            .log
            .iter()
            .filter(|&&(o, v)| o == reg(queue::Q_CONTROL) && v & queue::RUN != 0)
            .count();
        if runs_now != runs {
            runs = runs_now;
            forged.restart();
        }
        match u.int_in_range(0..=11u8)? {
            0..=2 => {
                let segs: Vec<(u64, u32)> = (0..u.int_in_range(0..=5usize)?)
                    .map(|_| Ok((u.arbitrary::<u64>()?, u.arbitrary::<u32>()?)))
                    .collect::<Result<_>>()?;
                let length = if u.arbitrary()? {
                    u.arbitrary()?
                } else {
                    segs.iter().fold(0u32, |a, s| a.wrapping_add(s.1))
                };
                let tag = next_tag;
                next_tag += 1;
                let req = Sca1Request {
                    user_tag: tag,
                    opcode: u.int_in_range(0..=5)?,
                    fua: u.arbitrary()?,
                    lba: u.arbitrary()?,
                    length,
                    segments: &segs,
                    source: None,
                };
                if q.submit(&req).is_ok() {
                    in_flight.insert(tag, length);
                }
            }
            3 => q.ring_doorbell(),
            4..=6 => {
                // The device posts a completion: mostly for a descriptor it was given.
                let sq = model.written64(reg(queue::SQ_BASE));
                let cq = model.written64(reg(queue::CQ_BASE));
                let sq_index = u.int_in_range(0..=ring - 1)?;
                let mut desc = [0u8; 32];
                let _ = iommu.dma_read(sq + u64::from(sq_index) * 32, &mut desc);
                let desc_tag = u16::from_le_bytes([desc[2], desc[3]]);
                let desc_len = u32::from_le_bytes([desc[16], desc[17], desc[18], desc[19]]);
                let c = Completion {
                    tag: if u.ratio(3, 4)? { desc_tag } else { u.arbitrary()? },
                    status: if u.ratio(2, 3)? {
                        cq_status::OK
                    } else {
                        u.arbitrary()?
                    },
                    flags: if u.ratio(7, 8)? {
                        u8::from(forged.phase) * CQ_PHASE
                    } else {
                        u.arbitrary()?
                    },
                    bytes: if u.ratio(3, 4)? { desc_len } else { u.arbitrary()? },
                    detail: u.arbitrary()?,
                    sq_head: if u.ratio(3, 4)? {
                        ((sq_index + 1) % ring) as u16
                    } else {
                        u.arbitrary()?
                    },
                    reserved: u.arbitrary()?,
                };
                let at = forged.slot(u)?;
                let bytes = zerocopy::IntoBytes::as_bytes(&c).to_vec();
                let _ = iommu.dma_write(cq + u64::from(at) * 16, &bytes);
                forged.written(at);
            }
            7 => {
                out.clear();
                let n = q.reap(&mut out);
                ACCEPTED.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                check!(n == out.len(), "reap said {n}, returned {}", out.len());
                for c in &out {
                    let length = take_in_flight(&mut in_flight, c.user_tag, c);
                    if c.status == cq_status::OK {
                        check!(c.bytes == length, "OK for {} of {length} bytes: {c:?}", c.bytes);
                    }
                }
            }
            8 => {
                let offset = *u.choose(&[
                    reg(queue::Q_STATUS),
                    reg(queue::Q_ERROR),
                    reg(queue::Q_ERROR_INDEX),
                    reg(queue::Q_CONTROL),
                    global::STATUS,
                    global::INT_STATUS,
                ])?;
                let value = if u.arbitrary()? { u.arbitrary()? } else { u32::MAX };
                model.regs().forced.insert(offset, value);
            }
            9 => {
                let _ = q.error_registers();
                let _ = q.status();
                let expired = q.expired(Instant::now() + Duration::from_secs(3600));
                check!(
                    expired.iter().all(|t| in_flight.contains_key(t)),
                    "expired {expired:?}"
                );
                check!(
                    expired.len() == in_flight.len(),
                    "expired {expired:?} of {in_flight:?}"
                );
            }
            10 => {
                model.regs().forced.clear();
            }
            _ => {
                // Recovery: stop (the device may stay BUSY: then a reset), abandon, restart.
                if q.stop().is_err() {
                    let _ = device.reset();
                }
                let mut abandoned = q.abandon_all();
                abandoned.sort_unstable();
                let mut expected: Vec<u64> = in_flight.drain().map(|(t, _)| t).collect();
                expected.sort_unstable();
                check!(
                    abandoned == expected,
                    "abandoned {abandoned:?}, in flight {expected:?}"
                );
                // A restart may fail (the device keeps BUSY, or reads all-ones): the queue then
                // stays stopped and refuses submissions, which the invariants below allow.
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
    Ok(())
}
