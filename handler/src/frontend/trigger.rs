//! Teardown triggers (issue 4 §3, architecture.md §5): what made the frontend's teardown
//! necessary, recorded once, and a level-triggered wake-up for whoever waits to run it.
//!
//! Every trigger runs the one teardown sequence ([`super::Frontend::teardown`]) on the owner's
//! thread. The frontend only *detects* them (workers and their idle loop) and publishes the first
//! one here; the owner waits with [`super::Frontend::wait_trigger`] (bounded) or polls
//! [`super::Frontend::trigger_fd`] together with its own descriptors (a signal pipe), then calls
//! the teardown. No lock: the trigger is a `OnceLock`, the wake-up an eventfd that is signalled
//! once and never cleared, so any number of waiters see it, whenever they look.

use crate::transport::fdio::poll_readable;
use crate::transport::fdio::EventFd;
use std::fmt;
use std::os::fd::AsFd;
use std::os::fd::BorrowedFd;
use std::sync::OnceLock;
use std::time::Duration;
use std::time::Instant;

/// Why the frontend's teardown runs (the first trigger wins; later ones are logged only).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum TeardownTrigger {
    /// The owner asked: a signal, `serve` stopping, the end of a demo or test.
    #[default]
    Requested,
    /// The store can no longer serve ([`crate::store::Store::failure`]): the device is gone, or
    /// a fatal error or timeout that recovery could not clear.
    StoreFailed(String),
    /// SCST closed or unregistered the device under us: the scst_user fd answered ENODEV or
    /// EBADF to a worker's REPLY_AND_GET_MULTI. What we still held is answered by SCST's close
    /// path (scst_user.md §5.3), not by us.
    ScstClosed,
    /// A worker thread panicked or left while the frontend was serving: its commands are
    /// answered by the close path and its queue cannot be trusted.
    WorkerFailed,
    /// The kernel failed REPLY_AND_GET_MULTI several times in a row before reading any of the
    /// worker's replies (the errno, e.g. EFAULT reading the header): they cannot be delivered,
    /// and SCST never completes a command it handed to the handler on its own (spec §4), nor
    /// finishes task management that waits for one, so only the close path (§5.3) can answer
    /// them.
    RepliesRefused(String),
}

impl fmt::Display for TeardownTrigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Requested => f.write_str("requested"),
            Self::StoreFailed(why) => write!(f, "store failed: {why}"),
            Self::ScstClosed => f.write_str("SCST closed the device"),
            Self::WorkerFailed => f.write_str("a worker failed"),
            Self::RepliesRefused(errno) => write!(f, "the kernel refused to read the replies ({errno})"),
        }
    }
}

/// What an owner has the trigger call when it fires (a wake-up of its own loop).
pub type TriggerNotify = Box<dyn Fn() + Send + Sync>;

/// The first trigger and its wake-up.
pub(crate) struct Trigger {
    first: OnceLock<TeardownTrigger>,
    /// Signalled once, when `first` is set; never cleared (level-triggered for every waiter).
    wake: EventFd,
    /// Called when a trigger fires (or at once, if one had when it was set); twice when the
    /// two happen together, each side seeing the other: harmless for a wake-up.
    notify: OnceLock<TriggerNotify>,
}

impl fmt::Debug for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Trigger")
            .field("first", &self.first)
            .field("notify", &self.notify.get().is_some())
            .finish_non_exhaustive()
    }
}

impl Trigger {
    /// No trigger yet.
    ///
    /// # Errors
    /// The eventfd could not be created (out of file descriptors).
    pub(crate) fn new() -> std::io::Result<Self> {
        Ok(Self {
            first: OnceLock::new(),
            wake: EventFd::new()?,
            notify: OnceLock::new(),
        })
    }

    /// Records `trigger` if it is the first; returns whether it was. Never blocks.
    pub(crate) fn fire(&self, trigger: TeardownTrigger) -> bool {
        let mut fresh = false;
        let first = self.first.get_or_init(|| {
            fresh = true;
            trigger.clone()
        });
        if fresh {
            // An asked-for stop is routine; every other trigger is a failure worth a warning.
            if *first == TeardownTrigger::Requested {
                log::info!("teardown triggered: {first}");
            } else {
                log::warn!("teardown triggered: {first}");
            }
            self.wake.signal();
            // Paired with `set_notify`'s fence: either it sees `first` or this sees `notify`.
            std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
            if let Some(notify) = self.notify.get() {
                notify();
            }
        } else if *first != trigger {
            log::info!("teardown trigger {trigger} ignored: already triggered by {first}");
        }
        fresh
    }

    /// Have `notify` called when a trigger fires, at once if one has (the first setting
    /// stays). It runs on the thread that fires the trigger (a worker): it must not block.
    pub(crate) fn set_notify(&self, notify: TriggerNotify) {
        if self.notify.set(notify).is_err() {
            log::debug!("teardown trigger: a notify was already set; the first stays");
            return;
        }
        // Paired with `fire`'s fence: a trigger fired before the setting is called here.
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        if self.first.get().is_some() {
            if let Some(notify) = self.notify.get() {
                notify();
            }
        }
    }

    /// The first trigger, if any.
    pub(crate) fn get(&self) -> Option<&TeardownTrigger> {
        self.first.get()
    }

    /// Readable once a trigger fired.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    /// Waits at most `timeout` for a trigger (poll on the eventfd: no lock, no spinning).
    pub(crate) fn wait(&self, timeout: Duration) -> Option<TeardownTrigger> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(t) = self.first.get() {
                return Some(t.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            if let Err(e) = poll_readable(&[self.wake.as_fd()], left) {
                // Cannot wait on the fd: fall back to a short sleep so the wait stays bounded
                // and does not spin.
                log::warn!("poll on the teardown trigger failed: {e}");
                scst_accel_hal::locks::sleep(left.min(Duration::from_millis(10)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A notify is called once a trigger fires, and at once when one had fired before it was
    /// set; later triggers call nothing more.
    #[test]
    fn a_notify_is_called_when_the_trigger_fires() {
        use std::sync::atomic::AtomicUsize;
        use std::sync::atomic::Ordering;
        use std::sync::Arc;
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = |calls: &Arc<AtomicUsize>| -> TriggerNotify {
            let calls = Arc::clone(calls);
            Box::new(move || {
                calls.fetch_add(1, Ordering::SeqCst);
            })
        };
        let trigger = Trigger::new().expect("eventfd");
        trigger.set_notify(counted(&calls));
        assert_eq!(calls.load(Ordering::SeqCst), 0, "nothing fired yet");
        assert!(trigger.fire(TeardownTrigger::WorkerFailed));
        assert!(!trigger.fire(TeardownTrigger::ScstClosed));
        assert_eq!(calls.load(Ordering::SeqCst), 1, "the first trigger, once");

        let late = Arc::new(AtomicUsize::new(0));
        let fired = Trigger::new().expect("eventfd");
        assert!(fired.fire(TeardownTrigger::Requested));
        fired.set_notify(counted(&late));
        assert_eq!(late.load(Ordering::SeqCst), 1, "fired before the notify was set");
    }

    #[test]
    fn the_first_trigger_wins_and_wakes_every_waiter() {
        let trigger = Trigger::new().expect("eventfd");
        assert_eq!(trigger.wait(Duration::ZERO), None);
        assert_eq!(trigger.wait(Duration::from_millis(5)), None);
        std::thread::scope(|s| {
            let waiters: Vec<_> = (0..2)
                .map(|_| s.spawn(|| trigger.wait(Duration::from_secs(30))))
                .collect();
            assert!(trigger.fire(TeardownTrigger::ScstClosed));
            for w in waiters {
                assert_eq!(w.join().expect("waiter"), Some(TeardownTrigger::ScstClosed));
            }
        });
        assert!(!trigger.fire(TeardownTrigger::Requested), "only the first counts");
        assert_eq!(trigger.get(), Some(&TeardownTrigger::ScstClosed));
        // Level-triggered: a late waiter sees it at once, and so does poll on the fd.
        assert_eq!(trigger.wait(Duration::ZERO), Some(TeardownTrigger::ScstClosed));
        assert_eq!(
            poll_readable(&[trigger.fd()], Duration::ZERO).expect("poll"),
            vec![true]
        );
    }
}
