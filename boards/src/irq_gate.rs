//! When a queue reads its interrupt eventfd (issue 13: no eventfd read when the completion
//! ring's phase bit says nothing is there, and none per reap).
//!
//! A reap is called far more often than an interrupt arrives: the frontend reaps after every
//! submission batch and at the top of every loop. The eventfd only needs to be empty when its
//! owner is about to sleep on it; reading it on every reap that finds completions was a
//! syscall per reap (0.39 per command on the simulated board against 0.17 polls). The rules:
//!
//! - A reap never reads it when something is posted: the entries are popped, and the signal the
//!   device raised for them (posted first, then raised) stays until the owner is about to
//!   sleep.
//! - Before sleeping on the fd, the owner calls `prepare_to_wait`: with a completion posted it
//!   reaps instead (no read); otherwise one read (clears what was raised for entries already
//!   reaped), then a second look at the ring. A completion posted after the read raises the fd
//!   again; one posted before it is seen by the look, and the owner reaps instead of
//!   sleeping. No wake-up is lost, and no sleep ends at once on a stale signal.
//! - For owners that never call it (tests, tools polling the fd directly), an empty reap
//!   still reads when the reap before found nothing either and no doorbell was rung since:
//!   a stale signal then costs at most two extra passes, never a spin. An empty reap right
//!   after a doorbell is the common opportunistic one: the device has had no time to
//!   complete anything. Once the owner has called `prepare_to_wait`, it clears the fd before
//!   every sleep and empty reaps read nothing either.
//!
//! A device may also hold back interrupts until the host acknowledges the last one (SCA-1's
//! INT_COALESCE.REARM, accelerator.md §9: a vector is raised once per setting of the queue's
//! INT_STATUS bit, and INT_STATUS_CLEAR re-arms it). The caller passes that acknowledgement
//! (`acknowledge`; nothing for a device without one), and the gate calls it where a look at
//! the ring must be covered by a fresh interrupt: before every read of the fd (the look that
//! follows then finds whatever was posted before it, and anything posted after raises
//! again), and, for an owner that does not prepare its waits, before it pops a posted ring.
//! An owner that prepares its waits acknowledges only there: while it is busy reaping, the
//! device raises nothing (NAPI's rule: no interrupts while the host polls).

use scst_accel_dma::CompletionRing;
use scst_accel_hal::EventFd;

/// The per-queue state of the rule above.
#[derive(Debug, Default)]
pub(crate) struct IrqGate {
    /// The previous reap found nothing and no doorbell was rung since.
    quiet: bool,
    /// The owner clears the fd before it sleeps (`prepare_to_wait`): no read for stale
    /// signals is needed.
    prepared: bool,
}

impl IrqGate {
    /// Whether this reap reads the eventfd, given whether the ring's head entry is posted.
    fn reads(&mut self, posted: bool) -> bool {
        if posted || self.prepared {
            self.quiet = false;
            return false;
        }
        let read = self.quiet;
        self.quiet = true;
        read
    }

    /// A queue's reap, before it pops, for its interrupt eventfd `irq` and its completion
    /// ring `cq`: acknowledge and read the eventfd when the rules above say so. Whether the
    /// ring's head entry is posted (looked at again after a read), and whether the eventfd was
    /// read.
    pub(crate) fn reap(
        &mut self,
        irq: Option<&EventFd>,
        cq: &CompletionRing,
        acknowledge: impl Fn(),
    ) -> (bool, bool) {
        let posted = cq.head_posted();
        let Some(irq) = irq else {
            return (posted, false);
        };
        if posted && !self.prepared {
            acknowledge();
        }
        if !self.reads(posted) {
            return (posted, false);
        }
        (Self::clear_and_look(irq, cq, acknowledge), true)
    }

    /// A queue's `prepare_to_wait` (the rules above), for its interrupt eventfd `irq` and its
    /// completion ring `cq`: whether a completion is posted, and whether the eventfd was read.
    /// From the first call on, the owner prepares its waits and reaps read nothing.
    pub(crate) fn prepare_to_wait(
        &mut self,
        irq: Option<&EventFd>,
        cq: &CompletionRing,
        acknowledge: impl Fn(),
    ) -> (bool, bool) {
        self.prepared = true;
        if cq.head_posted() {
            return (true, false);
        }
        let Some(irq) = irq else {
            return (false, false);
        };
        (Self::clear_and_look(irq, cq, acknowledge), true)
    }

    /// The read of the fd that may precede a sleep: acknowledge the device, clear the fd, look
    /// at the ring again. A completion posted before the acknowledgement is seen by the look;
    /// one posted after it signals the fd. Whether a completion is posted.
    fn clear_and_look(irq: &EventFd, cq: &CompletionRing, acknowledge: impl Fn()) -> bool {
        acknowledge();
        irq.clear();
        cq.head_posted()
    }

    /// A doorbell was rung: an empty reap right after it is an opportunistic one.
    pub(crate) fn doorbell(&mut self) {
        self.quiet = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_posted_entry_never_reads() {
        let mut gate = IrqGate::default();
        assert!(!gate.reads(true));
        gate.doorbell();
        assert!(!gate.reads(true));
        assert!(!gate.reads(true));
    }

    #[test]
    fn the_second_empty_reap_in_a_row_reads_and_a_doorbell_starts_over() {
        let mut gate = IrqGate::default();
        assert!(!gate.reads(true));
        assert!(
            !gate.reads(false),
            "the first empty reap after a posted one skips"
        );
        assert!(
            gate.reads(false),
            "the second in a row reads (a stale signal is cleared)"
        );
        assert!(gate.reads(false), "and so does every further one");
        gate.doorbell();
        assert!(!gate.reads(false), "right after a doorbell an empty reap skips");
        assert!(gate.reads(false));
    }

    #[test]
    fn an_owner_that_prepares_its_waits_never_reads_on_a_reap() {
        let mut gate = IrqGate {
            prepared: true,
            ..IrqGate::default()
        };
        for posted in [true, false, false, false] {
            assert!(!gate.reads(posted));
        }
    }
}
