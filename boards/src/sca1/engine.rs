//! The SCA-1 driver behind the device-independent contract of [`crate::engine`], so the
//! accelerator store serves SCA-1 and NVMe boards with one implementation.

use super::desc::cq_status;
use super::desc::opcode;
use super::regs;
use super::regs::global;
use super::regs::queue;
use super::Sca1;
use super::Sca1Error;
use super::Sca1Queue;
use super::Sca1Request;
use crate::engine::Controller;
use crate::engine::DeviceCompletion;
use crate::engine::DeviceOp;
use crate::engine::DeviceRequest;
use crate::engine::DeviceStatus;
use crate::engine::EngineError;
use crate::engine::Geometry;
use crate::engine::QueueEngine;
use crate::engine::Recovered;
use crate::engine::SubmitError;
use scst_accel_dma::mapping::IovaLock;
use scst_accel_hal::DeviceBacking;
use std::fmt::Write as _;
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::time::Instant;

impl From<Sca1Error> for EngineError {
    fn from(e: Sca1Error) -> Self {
        match e {
            Sca1Error::Gone { device } => EngineError::Gone { device },
            Sca1Error::ResetUnderWay { device, queue } => EngineError::ResetUnderWay { device, queue },
            Sca1Error::Timeout {
                device,
                what,
                timeout,
            } => EngineError::Timeout {
                device,
                what,
                timeout,
            },
            Sca1Error::NotSca1 { ref device, .. }
            | Sca1Error::Version { ref device, .. }
            | Sca1Error::Fatal { ref device, .. }
            | Sca1Error::Capability { ref device, .. }
            | Sca1Error::DmaUnproven { ref device, .. }
            | Sca1Error::RecoveryFailed { ref device, .. }
            | Sca1Error::Disabled { ref device, .. }
            | Sca1Error::Setup { ref device, .. } => EngineError::Failed {
                device: device.clone(),
                message: e.to_string(),
            },
            Sca1Error::Hal(hal) => EngineError::Failed {
                device: String::new(),
                message: hal.to_string(),
            },
        }
    }
}

/// SCA-1 completion status (accelerator.md §4) in device-independent terms.
fn device_status(status: u8) -> DeviceStatus {
    match status {
        cq_status::OK => DeviceStatus::Ok,
        cq_status::LBA_RANGE => DeviceStatus::LbaRange,
        cq_status::READ_ERROR => DeviceStatus::ReadError,
        cq_status::WRITE_ERROR => DeviceStatus::WriteError,
        cq_status::ABORTED => DeviceStatus::Aborted,
        other => DeviceStatus::Other(u32::from(other)),
    }
}

impl Controller for Sca1 {
    fn id(&self) -> &str {
        Sca1::id(self)
    }

    fn geometry(&self) -> Geometry {
        let caps = self.caps();
        Geometry {
            block_size: caps.block_size,
            capacity_blocks: caps.capacity_blocks,
            max_transfer_bytes: caps.max_transfer_bytes,
            max_segments: 1 << caps.cap0.max_sgl_log2.min(12),
            segment_alignment: 1,
            supports_deallocate: true,
            // A DEALLOCATE descriptor has no limit but its u32 byte length (accelerator.md §3).
            max_deallocate_blocks: u32::MAX,
            supports_write_zeroes: true,
            // A WRITE ZEROES descriptor, like a DEALLOCATE, is bounded by its u32 byte length
            // only (accelerator.md §3).
            max_write_zeroes_blocks: u32::MAX,
            volatile_cache: true,
            // accelerator.md §3: a WRITE with FUA completes once its data is stable.
            fua_durable: true,
            // COPY (contract 1.1) moves at most one transfer's worth per descriptor.
            max_copy_blocks: if caps.copy {
                caps.max_transfer_bytes / caps.block_size.max(1)
            } else {
                0
            },
            // accelerator.md has no atomic compare-and-write descriptor: the handler compares
            // then writes under its range lock.
            max_compare_write_blocks: 0,
        }
    }

    fn device(&self) -> &Arc<dyn DeviceBacking> {
        Sca1::device(self)
    }

    fn iovas(&self) -> &Arc<IovaLock> {
        Sca1::iovas(self)
    }

    fn is_gone(&self) -> bool {
        Sca1::is_gone(self)
    }

    fn fatal(&self) -> Option<u32> {
        Sca1::fatal(self)
    }

    fn reset(&self) -> Result<(), EngineError> {
        Ok(Sca1::reset(self)?)
    }

    fn recover(&self) -> Result<Recovered, EngineError> {
        Ok(Sca1::recover(self)?)
    }

    fn recover_since(&self, seen_resets: u64) -> Result<Recovered, EngineError> {
        Ok(Sca1::recover_since(self, seen_resets)?)
    }

    fn reset_count(&self) -> u64 {
        Sca1::reset_count(self)
    }

    fn recovery_bound(&self) -> std::time::Duration {
        Sca1::recovery_bound(self)
    }

    fn disable_interrupts(&self) {
        let bar = Sca1::device(self).bar0();
        bar.write32(global::INT_MASK_SET, regs::ALL_ONES);
        if let Err(e) = Sca1::device(self).disable_interrupts() {
            log::warn!("{}: disabling interrupts: {e}", Sca1::id(self));
        }
    }

    fn dump_registers(&self) -> String {
        let bar = Sca1::device(self).bar0();
        let r = |off| bar.read32(off);
        format!(
            "{}: SCA-1 ID {:#010x} VERSION {:#010x} CAP0 {:#010x} CAP1 {:#010x} CONTROL {:#x} \
             STATUS {:#x} FATAL_CODE {:#x} INT_STATUS {:#x} INT_MASK {:#x} INT_COALESCE {:#x} resets {}{}",
            Sca1::id(self),
            r(global::ID),
            r(global::VERSION),
            r(global::CAP0),
            r(global::CAP1),
            r(global::CONTROL),
            r(global::STATUS),
            r(global::FATAL_CODE),
            r(global::INT_STATUS),
            r(global::INT_MASK),
            r(global::INT_COALESCE),
            Sca1::reset_count(self),
            match self.queues_and_vectors() {
                (queues, vectors) if vectors < queues => format!(
                    "; {vectors} MSI-X vectors for {queues} queues: queues {vectors}..{} polled",
                    queues - 1
                ),
                _ => String::new(),
            },
        )
    }
}

impl QueueEngine for Sca1Queue {
    fn index(&self) -> u32 {
        Sca1Queue::index(self)
    }

    fn in_flight(&self) -> usize {
        Sca1Queue::in_flight(self)
    }

    fn is_running(&self) -> bool {
        Sca1Queue::is_running(self)
    }

    fn is_halted(&self) -> bool {
        self.status().is_some_and(|s| s & queue::ERROR != 0)
    }

    fn oldest_submission(&self) -> Option<Instant> {
        Sca1Queue::oldest_submission(self)
    }

    fn expired(&self, cutoff: Instant) -> Vec<u64> {
        Sca1Queue::expired(self, cutoff)
    }

    fn notify_fd(&self) -> Option<BorrowedFd<'_>> {
        Sca1Queue::notify_fd(self)
    }

    fn submit(&mut self, req: &DeviceRequest<'_>) -> Result<(), SubmitError> {
        let opcode = match req.op {
            DeviceOp::CompareAndWrite => {
                return Err(SubmitError::Unsupported(
                    "compare and write (the SCA-1 contract has no such descriptor)",
                ))
            }
            DeviceOp::Read => opcode::READ,
            DeviceOp::Write => opcode::WRITE,
            DeviceOp::Flush => opcode::FLUSH,
            DeviceOp::WriteZeroes { .. } => opcode::WRITE_ZEROES,
            DeviceOp::Deallocate => opcode::DEALLOCATE,
            // Sent only where the geometry offers copies (contract 1.1); a 1.0 engine would
            // complete it INVALID_OPCODE.
            DeviceOp::Copy { .. } => opcode::COPY,
        };
        let source = match req.op {
            DeviceOp::Copy { src_lba } => Some(src_lba),
            _ => None,
        };
        Sca1Queue::submit(
            self,
            &Sca1Request {
                user_tag: req.user_tag,
                opcode,
                fua: req.fua,
                lba: req.lba,
                length: req.length,
                segments: req.segments,
                source,
            },
        )
    }

    fn ring_doorbell(&mut self) {
        Sca1Queue::ring_doorbell(self)
    }

    fn prepare_to_wait(&mut self) -> bool {
        Sca1Queue::prepare_to_wait(self)
    }

    fn reap(&mut self, out: &mut Vec<DeviceCompletion>) -> usize {
        let mut raw = std::mem::take(&mut self.reaped);
        let n = Sca1Queue::reap(self, &mut raw);
        out.extend(raw.drain(..).map(|c| {
            let status = device_status(c.status);
            DeviceCompletion {
                user_tag: c.user_tag,
                status,
                // accelerator.md §4-§5: a medium error's detail is the failing LBA's low bits.
                failing_lba_low: matches!(status, DeviceStatus::ReadError | DeviceStatus::WriteError)
                    .then_some(c.detail),
            }
        }));
        self.reaped = raw;
        n
    }

    fn unknown_tags(&self) -> u64 {
        let stats = self.stats();
        stats.unknown_tags + stats.refused
    }

    fn stop(&mut self) -> Result<(), EngineError> {
        Ok(Sca1Queue::stop(self)?)
    }

    fn abandon_all(&mut self) -> Vec<u64> {
        Sca1Queue::abandon_all(self)
    }

    fn leak_on_drop(&mut self) {
        Sca1Queue::leak_on_drop(self);
    }

    fn restart(&mut self) -> Result<(), EngineError> {
        Ok(Sca1Queue::restart(self)?)
    }

    fn dump(&self) -> String {
        let mut out = String::new();
        let stats = self.stats();
        let _ = write!(
            out,
            "queue {}: running {} in_flight {} Q_STATUS {} submitted {} completed {} doorbells {} \
             unknown_tags {} refused {} restarts {}",
            Sca1Queue::index(self),
            Sca1Queue::is_running(self),
            Sca1Queue::in_flight(self),
            self.status()
                .map_or("all-ones (gone)".to_owned(), |s| format!("{s:#x}")),
            stats.submitted,
            stats.completed,
            stats.doorbells,
            stats.unknown_tags,
            stats.refused,
            stats.restarts,
        );
        if Sca1Queue::notify_fd(self).is_none() {
            out.push_str(" polled (no MSI-X vector)");
        }
        if let Some(err) = self.error_registers() {
            let _ = write!(out, " Q_ERROR {:#x} Q_ERROR_INDEX {}", err.0, err.1);
        }
        if let Some(o) = self.oldest_submission() {
            let _ = write!(out, " oldest {:?} ago", o.elapsed());
        }
        out
    }
}
