//! One recovery of a function at a time, its outcome shared with whoever waited for it
//! (docs/boards.md rule 5): the SCA-1 and NVMe drivers' `recover()`. Two recoveries at once
//! would undo each other (one's enable cleared by the other's reset), so a second caller waits
//! for the one running, bounded by what that recovery may take (each driver knows its own
//! bound), and takes its outcome.
//!
//! The state is one word, so that a waiter learns the outcome of the very recovery it waited
//! for: its generation (bits 63:2), running (bit 1), and whether the last one succeeded (bit 0).
//! A comparison of reset counts cannot do that: a caller that read the count after the running
//! recovery moved it, but before that recovery ended, would find it unchanged and take a
//! success for a failure.
//!
//! A turn may also be withdrawn ([`Recovering::withdraw`]): nothing reset, the word put back
//! as it was, the last recovery's outcome the outcome again. That recovery ended before a
//! waiter that came during the withdrawn turn looked, so its outcome proves nothing for the
//! waiter (its requests may have been submitted after that recovery's reset). The waiter
//! remembers the generation it found running ([`Waiting`]); a word that no longer runs with a
//! lower generation is a withdrawn turn ([`Outcome::Withdrawn`]), and the waiter takes a turn
//! again ([`RecoveryWord::begin`]) instead of an outcome: it recovers itself, or waits for the
//! recovery that runs by then.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

/// A recovery runs.
const RUNNING: u64 = 0b10;
/// The last recovery succeeded.
const OK: u64 = 0b01;

/// The recoveries of one function (see the module doc).
#[derive(Debug, Default)]
pub(crate) struct RecoveryWord(AtomicU64);

/// What [`RecoveryWord::begin`] found.
#[derive(Debug)]
pub(crate) enum Turn<'a> {
    /// No recovery ran: this caller runs one, and ends it with [`Recovering::finish`].
    Mine(Recovering<'a>),
    /// A recovery runs: poll [`RecoveryWord::outcome`] for it.
    Running(Waiting),
}

/// A waiter's note of the recovery it found running ([`Turn::Running`]): its generation.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Waiting {
    generation: u64,
}

/// What a waiter finds ([`RecoveryWord::outcome`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A recovery runs: the one waited for, or one begun after its turn ended.
    Running,
    /// The recovery waited for ended, or one begun after its turn ended did (which started
    /// from a newer failure and so is the one that says whether the function serves): whether
    /// it succeeded. Never a recovery that ended before the waiter looked.
    Ended(bool),
    /// The turn waited for was withdrawn, and so was any turn begun since: the word is again
    /// the outcome of a recovery that ended before the waiter looked, no proof of anything for
    /// it. Take a turn again ([`RecoveryWord::begin`]).
    Withdrawn,
}

/// The caller's own recovery. Dropped without [`Recovering::finish`] (a panic unwinding
/// through the recovery) it ends as failed, so that no later caller waits for it and takes
/// its own timeout for the device's failure.
#[derive(Debug)]
pub(crate) struct Recovering<'a> {
    word: &'a RecoveryWord,
    generation: u64,
    /// The word before this turn began: what [`Recovering::withdraw`] puts back.
    previous: u64,
    finished: bool,
}

impl Recovering<'_> {
    /// End this recovery with its outcome: every waiter for it takes this outcome.
    pub(crate) fn finish(mut self, ok: bool) {
        self.end(ok);
    }

    /// End the turn before anything of a recovery was done, as if it had never been taken: the
    /// word is again what it was when the turn began (no new recovery counted, the last one's
    /// outcome is still the outcome). For a caller that finds, once the turn is its own, that
    /// the recovery it wanted is no longer wanted: another one ended between its look and its
    /// turn, or (the NVMe controller) a caller's reset began then. Only the turn's owner writes
    /// the word while it runs, so nothing is lost. A waiter that came during the turn does not
    /// take that last outcome (it ended before the waiter looked): it finds
    /// [`Outcome::Withdrawn`] and takes a turn again.
    pub(crate) fn withdraw(mut self) {
        self.finished = true;
        self.word.0.store(self.previous, Ordering::SeqCst);
    }

    /// The last recovery before this turn succeeded (none before it: false). A caller that
    /// withdraws because another recovery ended meanwhile shares its outcome, so it withdraws
    /// only after a success: after a failure the function needs this recovery.
    pub(crate) fn after_success(&self) -> bool {
        self.previous & OK != 0
    }

    fn end(&mut self, ok: bool) {
        self.finished = true;
        self.word
            .0
            .store(self.generation | if ok { OK } else { 0 }, Ordering::SeqCst);
    }
}

impl Drop for Recovering<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.end(false);
        }
    }
}

impl RecoveryWord {
    /// Take the turn to recover, waiting with `wait` for each recovery found running instead:
    /// `wait` answers whether that recovery's outcome is the caller's to share (`true`: then
    /// `None` here), or that its turn was withdrawn (`false`: the turn is asked for again), by
    /// `deadline`, which is set at the first wait (`bound` from then) and kept for every one
    /// after, so that the waits together end by it. Both drivers' `recover()`.
    pub(crate) fn take_turn<E>(
        &self,
        bound: Duration,
        mut wait: impl FnMut(Waiting, Instant) -> Result<bool, E>,
    ) -> Result<Option<Recovering<'_>>, E> {
        let mut deadline = None;
        loop {
            match self.begin() {
                Turn::Mine(turn) => return Ok(Some(turn)),
                Turn::Running(waiting) => {
                    let deadline = *deadline.get_or_insert_with(|| Instant::now() + bound);
                    if wait(waiting, deadline)? {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Take the turn to recover, or learn which recovery runs. Sequentially consistent with
    /// the drivers' other reset state (the SCA-1 driver's reset counts, the NVMe controller's
    /// epoch), which their queues read around this word.
    pub(crate) fn begin(&self) -> Turn<'_> {
        let mut seen = self.0.load(Ordering::SeqCst);
        loop {
            if seen & RUNNING != 0 {
                return Turn::Running(Waiting {
                    generation: seen >> 2,
                });
            }
            let next = ((seen >> 2) + 1) << 2;
            match self
                .0
                .compare_exchange(seen, next | RUNNING, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => {
                    return Turn::Mine(Recovering {
                        word: self,
                        generation: next,
                        previous: seen,
                        finished: false,
                    })
                }
                Err(now) => seen = now,
            }
        }
    }

    /// A recovery runs.
    pub(crate) fn running(&self) -> bool {
        self.0.load(Ordering::SeqCst) & RUNNING != 0
    }

    /// What became of the recovery `waiting` found running ([`Turn::Running`]); a waiter polls
    /// it, bounded. [`Outcome::Ended`] is the outcome of that recovery, or of one begun after
    /// its turn ended: every turn that ended (not withdrawn) before that one began has a lower
    /// generation, and a withdrawn turn puts back the word of such a turn (or the initial one,
    /// generation 0), so an ended word of the generation seen or a higher one was written by
    /// the end of that turn or of a later one. A lower one: [`Outcome::Withdrawn`].
    pub(crate) fn outcome(&self, waiting: Waiting) -> Outcome {
        let now = self.0.load(Ordering::SeqCst);
        if now & RUNNING != 0 {
            Outcome::Running
        } else if now >> 2 < waiting.generation {
            Outcome::Withdrawn
        } else {
            Outcome::Ended(now & OK != 0)
        }
    }

    /// Once no recovery runs, whether the last one succeeded; `None` while one runs.
    #[cfg(test)]
    pub(crate) fn last_outcome(&self) -> Option<bool> {
        let now = self.0.load(Ordering::SeqCst);
        (now & RUNNING == 0).then_some(now & OK != 0)
    }

    /// Stand in for a recovery of `generation`: running, or ended with `ok`.
    #[cfg(test)]
    pub(crate) fn stand_in(&self, generation: u64, running: bool, ok: bool) {
        let bits = if running {
            RUNNING
        } else if ok {
            OK
        } else {
            0
        };
        self.0.store((generation << 2) | bits, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One turn at a time; a waiter gets the outcome of the recovery it waited for, also when
    /// another began after it, and a new turn starts a new generation.
    #[test]
    fn a_waiter_takes_the_outcome_of_the_recovery_it_waited_for() {
        let word = RecoveryWord::default();
        let Turn::Mine(first) = word.begin() else {
            panic!("no recovery ran");
        };
        assert!(word.running());
        let Turn::Running(waiting) = word.begin() else {
            panic!("the second caller must wait");
        };
        assert_eq!(word.outcome(waiting), Outcome::Running, "still running");
        first.finish(true);
        assert_eq!(word.outcome(waiting), Outcome::Ended(true));
        assert!(!word.running());
        let Turn::Mine(second) = word.begin() else {
            panic!("the first one ended");
        };
        assert_eq!(
            word.outcome(waiting),
            Outcome::Running,
            "a newer one runs: wait for it"
        );
        second.finish(false);
        assert_eq!(
            word.outcome(waiting),
            Outcome::Ended(false),
            "and take its outcome"
        );
    }

    /// A withdrawn turn leaves the word as it was: the last recovery's outcome stands, and the
    /// next caller takes a turn of its own.
    #[test]
    fn a_withdrawn_turn_leaves_the_last_outcome() {
        let word = RecoveryWord::default();
        let Turn::Mine(first) = word.begin() else {
            panic!("no recovery ran");
        };
        first.finish(true);
        let before = word.0.load(Ordering::SeqCst);
        let Turn::Mine(second) = word.begin() else {
            panic!("the first one ended");
        };
        assert!(matches!(word.begin(), Turn::Running(_)));
        second.withdraw();
        assert_eq!(word.0.load(Ordering::SeqCst), before);
        assert_eq!(word.last_outcome(), Some(true), "the first one's outcome");
        assert!(matches!(word.begin(), Turn::Mine(_)));
    }

    /// A caller that found a turn taken, which was then withdrawn, does not take the outcome
    /// the withdraw put back (a recovery that ended before it looked, whose reset proves
    /// nothing for requests it submitted since): it learns of the withdraw and takes a turn
    /// itself. A turn begun after the withdrawn one is waited for and its outcome taken.
    #[test]
    fn a_waiter_for_a_withdrawn_turn_takes_a_turn_again() {
        let word = RecoveryWord::default();
        let Turn::Mine(old) = word.begin() else {
            panic!("no recovery ran");
        };
        old.finish(true);
        let Turn::Mine(withdrawn) = word.begin() else {
            panic!("the old one ended");
        };
        let Turn::Running(waiting) = word.begin() else {
            panic!("the second caller must wait");
        };
        withdrawn.withdraw();
        assert_eq!(
            word.outcome(waiting),
            Outcome::Withdrawn,
            "the old recovery's success is no proof for the waiter"
        );
        let Turn::Mine(own) = word.begin() else {
            panic!("the waiter takes the turn itself");
        };
        own.finish(false);
        assert_eq!(word.outcome(waiting), Outcome::Ended(false));

        // Withdrawn again, but another caller's turn began after it: that one is waited for.
        let Turn::Mine(withdrawn) = word.begin() else {
            panic!("none runs");
        };
        let Turn::Running(waiting) = word.begin() else {
            panic!("the second caller must wait");
        };
        withdrawn.withdraw();
        let Turn::Mine(later) = word.begin() else {
            panic!("none runs");
        };
        assert_eq!(word.outcome(waiting), Outcome::Running);
        later.finish(true);
        assert_eq!(word.outcome(waiting), Outcome::Ended(true));
    }

    /// A recovery that panics ends as failed: no later caller waits for it.
    #[test]
    fn a_recovery_that_panics_ends_as_failed() {
        let word = RecoveryWord::default();
        let unwound = std::panic::catch_unwind(|| {
            let Turn::Mine(_turn) = word.begin() else {
                panic!("no recovery ran");
            };
            panic!("the recovery panics");
        });
        assert!(unwound.is_err());
        assert!(!word.running());
        assert_eq!(word.last_outcome(), Some(false));
        assert!(
            matches!(word.begin(), Turn::Mine(_)),
            "the next caller recovers itself"
        );
    }
}
