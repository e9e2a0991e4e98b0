//! The NVMe driver behind the device-independent contract of [`crate::engine`].

use super::NvmeController;
use super::NvmeQueue;
use crate::engine::Controller;
use crate::engine::DeviceCompletion;
use crate::engine::DeviceIds;
use crate::engine::DeviceRequest;
use crate::engine::EngineError;
use crate::engine::Geometry;
use crate::engine::QueueEngine;
use crate::engine::Recovered;
use crate::engine::SubmitError;
use scst_accel_dma::mapping::IovaLock;
use scst_accel_hal::DeviceBacking;
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

impl Controller for NvmeController {
    fn id(&self) -> &str {
        NvmeController::id(self)
    }

    fn geometry(&self) -> Geometry {
        NvmeController::geometry(self)
    }

    fn device_ids(&self) -> Option<DeviceIds> {
        let ns = &self.info().namespace;
        if self.config().bogus_device_ids {
            // Said once per open (the store asks once), and only when there was an id to drop.
            if ns.nguid != [0; 16] || ns.eui64 != [0; 8] {
                log::info!(
                    "{}: the namespace's NGUID/EUI64 are not used for the disk's identity: \
                     this board's devices report the same ones on every unit (quirk \
                     bogus_device_ids)",
                    self.id()
                );
            }
            return None;
        }
        DeviceIds::from_raw(ns.nguid, ns.eui64)
    }

    fn device(&self) -> &Arc<dyn DeviceBacking> {
        NvmeController::device(self)
    }

    fn iovas(&self) -> &Arc<IovaLock> {
        NvmeController::iovas(self)
    }

    fn is_gone(&self) -> bool {
        NvmeController::is_gone(self)
    }

    fn fatal(&self) -> Option<u32> {
        NvmeController::fatal(self)
    }

    fn reset(&self) -> Result<(), EngineError> {
        Ok(NvmeController::reset(self)?)
    }

    fn recover(&self) -> Result<Recovered, EngineError> {
        Ok(NvmeController::recover(self)?)
    }

    fn recover_since(&self, seen_resets: u64) -> Result<Recovered, EngineError> {
        Ok(NvmeController::recover_since(self, seen_resets)?)
    }

    fn reset_count(&self) -> u64 {
        NvmeController::reset_count(self)
    }

    fn recovery_bound(&self) -> std::time::Duration {
        NvmeController::recovery_wait_bound(self)
    }

    fn disable_interrupts(&self) {
        NvmeController::disable_interrupts(self);
    }

    fn shutdown(&self) -> Result<(), EngineError> {
        Ok(NvmeController::shutdown(self)?)
    }

    fn dump_registers(&self) -> String {
        NvmeController::dump_registers(self)
    }
}

impl QueueEngine for NvmeQueue {
    fn index(&self) -> u32 {
        u32::from(self.qid())
    }

    fn in_flight(&self) -> usize {
        NvmeQueue::in_flight(self)
    }

    fn is_running(&self) -> bool {
        NvmeQueue::is_running(self)
    }

    fn is_halted(&self) -> bool {
        false
    }

    fn oldest_submission(&self) -> Option<Instant> {
        NvmeQueue::oldest_submission(self)
    }

    fn expired(&self, cutoff: Instant) -> Vec<u64> {
        NvmeQueue::expired(self, cutoff)
    }

    fn notify_fd(&self) -> Option<BorrowedFd<'_>> {
        NvmeQueue::notify_fd(self)
    }

    fn submit(&mut self, req: &DeviceRequest<'_>) -> Result<(), SubmitError> {
        NvmeQueue::submit(self, req)
    }

    fn ring_doorbell(&mut self) {
        NvmeQueue::ring_doorbell(self);
    }

    fn prepare_to_wait(&mut self) -> bool {
        NvmeQueue::prepare_to_wait(self)
    }

    fn reap(&mut self, out: &mut Vec<DeviceCompletion>) -> usize {
        NvmeQueue::reap(self, out)
    }

    fn unknown_tags(&self) -> u64 {
        NvmeQueue::unknown_tags(self)
    }

    fn abort(&mut self, user_tags: &[u64]) -> Result<usize, EngineError> {
        Ok(NvmeQueue::abort(self, user_tags)?)
    }

    fn stop(&mut self) -> Result<(), EngineError> {
        Ok(NvmeQueue::stop(self)?)
    }

    fn stop_within(&mut self, bound: Duration) -> Result<(), EngineError> {
        Ok(NvmeQueue::stop_within(self, bound)?)
    }

    fn recoveries(&self) -> u64 {
        NvmeQueue::stats(self).recoveries
    }

    fn abandon_all(&mut self) -> Vec<u64> {
        NvmeQueue::abandon_all(self)
    }

    fn leak_on_drop(&mut self) {
        NvmeQueue::leak_on_drop(self);
    }

    fn restart(&mut self) -> Result<(), EngineError> {
        Ok(NvmeQueue::restart(self)?)
    }

    fn dump(&self) -> String {
        NvmeQueue::dump(self)
    }
}
