//! When a queue's reap reads its interrupt eventfd (issue 13: no eventfd read when the
//! completion ring's phase bit says nothing is there).
//!
//! A reap is called far more often than an interrupt arrives: the frontend reaps after every
//! submission batch and at the top of every loop, most of those finding nothing. Reading the
//! eventfd each time is a syscall per reap. The rules:
//!
//! - Something posted (the ring's head entry carries the expected phase): read the eventfd
//!   first, then pop. A completion posted after the read signals it again, so none is missed.
//! - Nothing posted: skip the read, unless the reap before found nothing either and no
//!   doorbell was rung since. Leaving the eventfd as it is never loses a wake-up (it only
//!   stays readable); what must not happen is a worker polling a readable eventfd for ever
//!   with nothing to reap, which a *stale* signal would cause: an interrupt raised for
//!   entries already reaped (the device posts, then raises; a reap may come in between), a
//!   queue halt, a coalescing timer. The second empty reap in a row clears it, so a worker
//!   (which reaps at least twice per loop, at its top and after submitting) makes at most
//!   one extra pass for a stale signal, never a spin. An empty reap right after a doorbell is
//!   the common opportunistic one: the device has had no time to complete anything.

/// The per-queue state of the rule above.
#[derive(Debug, Default)]
pub(crate) struct IrqGate {
    /// The previous reap found nothing and no doorbell was rung since.
    quiet: bool,
}

impl IrqGate {
    /// Whether this reap reads the eventfd, given whether the ring's head entry is posted.
    pub(crate) fn reads(&mut self, posted: bool) -> bool {
        if posted {
            self.quiet = false;
            return true;
        }
        let read = self.quiet;
        self.quiet = true;
        read
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
    fn a_posted_entry_always_reads() {
        let mut gate = IrqGate::default();
        assert!(gate.reads(true));
        gate.doorbell();
        assert!(gate.reads(true));
        assert!(gate.reads(true));
    }

    #[test]
    fn the_second_empty_reap_in_a_row_reads_and_a_doorbell_starts_over() {
        let mut gate = IrqGate::default();
        assert!(gate.reads(true));
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
}
