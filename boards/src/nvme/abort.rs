//! ABORT (NVMe 1.4 §5.1) under the controller-wide Abort Command Limit: never more than
//! ACL + 1 ABORTs outstanding on the controller, whichever queue's owner thread sends them
//! (§5.1: more fail with Abort Command Limit Exceeded). An ABORT whose waiter timed out stays
//! outstanding as far as the limit is concerned until a reset drops it.

use super::cmd;
use super::cmd::admin_opcode;
use super::cmd::Sqe;
use super::controller::NvmeController;
use super::error::NvmeError;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

/// The controller's ABORT slots: how many are taken, and by whom.
pub(super) struct AbortSlots {
    /// ABORT commands outstanding on the controller, held by [`AbortPermit`]s.
    outstanding: AtomicU32,
    /// ABORT commands whose waiter timed out: still outstanding as far as the controller's
    /// Abort Command Limit is concerned, until the next reset drops them.
    abandoned: AtomicU32,
}

impl AbortSlots {
    /// No ABORT outstanding.
    pub(super) fn new() -> Self {
        Self {
            outstanding: AtomicU32::new(0),
            abandoned: AtomicU32::new(0),
        }
    }

    /// The controller was disabled: it dropped every command, abandoned ABORTs included.
    pub(super) fn forget_abandoned(&self) {
        self.abandoned.store(0, Ordering::Release);
    }

    /// Wait, bounded by `timeout`, until fewer than `limit` (ACL + 1) ABORTs are outstanding,
    /// and take one of the slots.
    /// A free slot, waited for until `deadline` (`timeout` is the bound the error names).
    fn acquire(
        &self,
        device: &str,
        limit: u32,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<AbortPermit<'_>, NvmeError> {
        let mut pause = Duration::from_micros(10);
        loop {
            let outstanding = self.outstanding.load(Ordering::Acquire);
            let abandoned = self.abandoned.load(Ordering::Acquire);
            if outstanding.saturating_add(abandoned) < limit
                && self
                    .outstanding
                    .compare_exchange(outstanding, outstanding + 1, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                return Ok(AbortPermit { slots: self });
            }
            if Instant::now() >= deadline {
                return Err(NvmeError::Timeout {
                    device: device.to_owned(),
                    what: "a free ABORT slot (Abort Command Limit)",
                    timeout,
                });
            }
            scst_accel_hal::locks::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(1));
        }
    }
}

/// One of the controller's ACL + 1 ABORT slots, returned on drop.
struct AbortPermit<'a> {
    slots: &'a AbortSlots,
}

impl AbortPermit<'_> {
    /// The ABORT's waiter timed out: the ABORT stays outstanding on the controller until a
    /// reset drops it, so its slot stays taken (as abandoned) after this permit is gone.
    fn abandon(self) {
        self.slots.abandoned.fetch_add(1, Ordering::AcqRel);
    }
}

impl Drop for AbortPermit<'_> {
    fn drop(&mut self) {
        self.slots.outstanding.fetch_sub(1, Ordering::AcqRel);
    }
}

impl NvmeController {
    /// ABORT (NVMe 1.4 §5.1) the command `cid` of submission queue `sqid`, the wait for a free
    /// abort slot and the command together bounded by `deadline` (the caller's one admin
    /// timeout for all its ABORTs). Never more than ACL + 1 ABORTs are outstanding on the
    /// controller, whichever threads send them (§5.1: more fail with Abort Command Limit
    /// Exceeded). Returns whether the controller aborted it (its own completion then carries
    /// Command Abort Requested).
    ///
    /// # Errors
    /// As [`NvmeController`]'s admin commands; [`NvmeError::Timeout`] also when no time is
    /// left for the command once a slot is free (nothing is sent then).
    pub(crate) fn abort_command(&self, sqid: u16, cid: u16, deadline: Instant) -> Result<bool, NvmeError> {
        let bound = self.config().admin_timeout;
        let limit = self.info().controller.abort_limit();
        let permit = self.aborts.acquire(self.id(), limit, deadline, bound)?;
        let timeout = deadline.saturating_duration_since(Instant::now());
        if timeout.is_zero() {
            return Err(NvmeError::Timeout {
                device: self.id().to_owned(),
                what: "ABORT (no time left once an abort slot was free)",
                timeout: bound,
            });
        }
        let sqe = Sqe {
            opcode: admin_opcode::ABORT,
            cdw10: cmd::abort_cdw10(sqid, cid),
            ..Sqe::default()
        };
        match self.admin_within("ABORT", sqe, timeout) {
            Ok(cqe) => Ok(cmd::abort_succeeded(cqe.dw0)),
            Err(NvmeError::Timeout { device, what, .. }) => {
                // Still outstanding on the controller until a reset drops it.
                permit.abandon();
                // The bound that ran out is the caller's budget, whatever part of it was
                // left for this ABORT.
                Err(NvmeError::Timeout {
                    device,
                    what,
                    timeout: bound,
                })
            }
            Err(e) => {
                drop(permit);
                Err(e)
            }
        }
    }

    /// Count `n` ABORTs as abandoned (outstanding until the next reset), to test the limit.
    #[cfg(test)]
    pub(crate) fn abandon_abort_slots(&self, n: u32) {
        self.aborts.abandoned.fetch_add(n, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_slot_timeout(r: Result<AbortPermit<'_>, NvmeError>) -> bool {
        matches!(r, Err(NvmeError::Timeout { what, .. }) if what.contains("Abort Command Limit"))
    }

    #[test]
    fn slots_are_bounded_by_the_limit_and_abandoned_ones_last_until_a_reset() {
        let slots = AbortSlots::new();
        let first = slots
            .acquire("dev", 2, Instant::now(), Duration::ZERO)
            .expect("first slot");
        let second = slots
            .acquire("dev", 2, Instant::now(), Duration::ZERO)
            .expect("second slot");
        assert!(is_slot_timeout(slots.acquire(
            "dev",
            2,
            Instant::now(),
            Duration::ZERO
        )));

        drop(first);
        let third = slots
            .acquire("dev", 2, Instant::now(), Duration::ZERO)
            .expect("a returned slot is free");
        third.abandon();
        assert!(
            is_slot_timeout(slots.acquire("dev", 2, Instant::now(), Duration::ZERO)),
            "an abandoned ABORT still holds its slot"
        );

        slots.forget_abandoned();
        drop(second);
        let _a = slots
            .acquire("dev", 2, Instant::now(), Duration::ZERO)
            .expect("free after the reset");
        let _b = slots
            .acquire("dev", 2, Instant::now(), Duration::ZERO)
            .expect("both free after the reset");
    }
}
