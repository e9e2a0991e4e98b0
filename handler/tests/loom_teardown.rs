//! Loom models of the teardown primitives (architecture.md §5: drain before unmap).
//!
//! Run with `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test -p scst-accel-handler
//! --release --test loom_teardown` (the loom step of `.ci/run`). Under `cfg(loom)` the handler's
//! sync facade is loom's, so these models explore the real `Drain` and `LeaseTable` through their
//! public API. Under loom a non-zero timeout never expires: a wait ends only by its wake-up, so a
//! lost wake-up is reported by loom as a deadlock; `Duration::ZERO` makes the timeout path
//! reachable deterministically.
#![cfg(loom)]

use std::time::Duration;

use loom::sync::atomic::AtomicBool;
use loom::sync::atomic::AtomicUsize;
use loom::sync::atomic::Ordering;
use loom::sync::mpsc;
use loom::sync::Arc;
use loom::thread;
use scst_accel_hal::locks::levels::Root;
use scst_accel_hal::locks::LockToken;
use scst_accel_handler::teardown::Drain;
use scst_accel_handler::teardown::InFlightOwned;
use scst_accel_handler::teardown::LeaseTable;
use scst_accel_handler::teardown::Remaining;

/// A model thread's lock token: it holds no lock (the table's lock is loom's here, taken
/// through the same token API as in the product).
fn t() -> LockToken<'static, Root> {
    LockToken::root()
}

/// Longer than any model runs: only a wake-up ends such a wait under loom.
const LONG: Duration = Duration::from_secs(3600);

/// Model 1: stop flag vs enter. A worker that entered before `close` is always waited for (its
/// work is visible once `wait_idle` returns), after `close` returns nothing enters, and a refused
/// entry is never counted.
#[test]
fn close_races_enter() {
    loom::model(|| {
        let drain = Arc::new(Drain::new());
        let done = Arc::new(AtomicUsize::new(0));
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let drain = Arc::clone(&drain);
                let done = Arc::clone(&done);
                thread::spawn(move || {
                    let saw_closed = drain.is_closed();
                    match drain.try_enter() {
                        Some(token) => {
                            assert!(!saw_closed, "entered a drain already seen closed");
                            // Relaxed on purpose: only the drain's own ordering can make this
                            // visible to the waiter.
                            done.fetch_add(1, Ordering::Relaxed);
                            drop(token);
                            true
                        }
                        None => {
                            assert!(drain.is_closed(), "refused while open");
                            false
                        }
                    }
                })
            })
            .collect();

        drain.close();
        assert!(drain.try_enter().is_none(), "entered after close returned");
        drain.wait_idle(LONG).expect("every worker inside leaves");
        let done_seen = done.load(Ordering::Relaxed);
        assert_eq!(drain.in_flight(), 0);

        let entered = workers
            .into_iter()
            .map(|w| w.join().expect("worker"))
            .filter(|&e| e)
            .count();
        assert_eq!(
            done_seen, entered,
            "wait_idle returned before a worker inside finished"
        );
    });
}

/// Model 2: completion handoff. A token moved to another thread and dropped there wakes
/// `wait_idle` (no lost wake-up), and the non-blocking probe and the zero-timeout wait report
/// the command still inside instead of blocking.
#[test]
fn owned_exit_on_completion_thread_wakes_waiter() {
    loom::model(|| {
        let drain = Drain::new();
        let done = Arc::new(AtomicBool::new(false));
        let token = drain.try_enter_owned().expect("open drain admits");
        let completer = {
            let done = Arc::clone(&done);
            thread::spawn(move || {
                done.store(true, Ordering::Relaxed);
                drop(token);
            })
        };

        drain.close();
        for probe in [drain.try_wait_idle(), drain.wait_idle(Duration::ZERO)] {
            match probe {
                Ok(()) => assert!(done.load(Ordering::Relaxed), "idle before the completion"),
                Err(Remaining { in_flight }) => assert_eq!(in_flight, 1),
            }
        }
        drain
            .wait_idle(LONG)
            .expect("the completer's exit wakes the waiter");
        assert!(done.load(Ordering::Relaxed), "idle before the completion");
        completer.join().expect("completer");
    });
}

/// Model 2b: a token entered on a submitter thread, handed over a channel to a completion thread
/// and dropped there, while the main thread closes and waits.
#[test]
fn handoff_across_three_threads() {
    loom::model(|| {
        let drain = Arc::new(Drain::new());
        // Loom's channel does not report a dropped sender, so exactly one message always goes.
        let (tx, rx) = mpsc::channel::<Option<InFlightOwned>>();
        let submitter = {
            let drain = Arc::clone(&drain);
            thread::spawn(move || {
                tx.send(drain.try_enter_owned()).expect("completion thread alive");
            })
        };
        let completion = thread::spawn(move || {
            let token = rx.recv().expect("submitter sends once");
            let completed = token.is_some();
            drop(token);
            completed
        });

        drain
            .wait_idle(LONG)
            .expect("the handed-over token's drop wakes the waiter");
        assert!(drain.try_enter_owned().is_none());
        assert_eq!(drain.in_flight(), 0);
        submitter.join().expect("submitter");
        // Entered or refused, nothing is left inside once both threads are done.
        let _entered = completion.join().expect("completion");
        assert_eq!(drain.try_wait_idle(), Ok(()));
    });
}

/// Model 2c: a worker's door (`DrainDoor`): a batch reserved at once, its commands admitted
/// from the reservation, their exits published in one step, against a close and a wait. The
/// wait returns only after the worker's work is done and published; a reservation after the
/// close is refused; nothing is left counted at the end.
#[test]
fn a_doors_batch_races_close() {
    loom::model(|| {
        let drain = Arc::new(Drain::new());
        let done = Arc::new(AtomicUsize::new(0));
        let worker = {
            let drain = Arc::clone(&drain);
            let done = Arc::clone(&done);
            thread::spawn(move || {
                let mut door = drain.door();
                // Three reserved, two admitted: the publish takes off two exits and the
                // reservation's rest at once (one `fetch_sub` of 3, which must wake the waiter).
                if !door.reserve(3) {
                    assert!(drain.is_closed(), "reservation refused while open");
                    assert!(door.admit().is_none(), "admitted after a refused reservation");
                    return 0;
                }
                let a = door.admit().expect("reserved");
                let b = door.admit().expect("reserved");
                // Relaxed on purpose: only the drain's own ordering can make this visible.
                done.fetch_add(2, Ordering::Relaxed);
                drop(a);
                drop(b);
                door.publish();
                drop(door);
                2
            })
        };

        drain.close();
        drain
            .wait_idle(LONG)
            .expect("the door's publish wakes the waiter");
        let done_seen = done.load(Ordering::Relaxed);
        assert_eq!(drain.in_flight(), 0);
        let admitted = worker.join().expect("worker");
        assert_eq!(
            done_seen, admitted,
            "wait_idle returned before the door's commands were done"
        );
    });
}

/// A pooled buffer: its `Drop` is its return to the pool.
struct Buf {
    table: Arc<LeaseTable<Arc<Buf>>>,
    returns: Arc<AtomicUsize>,
}

impl Drop for Buf {
    fn drop(&mut self) {
        // The only lease in the model is on this buffer. `outstanding()` takes the table's lock:
        // were the payload dropped under it, loom would report the self-deadlock.
        assert_eq!(
            self.table.outstanding(&mut t()),
            0,
            "buffer returned to the pool while leased to the device"
        );
        self.returns.fetch_add(1, Ordering::SeqCst);
    }
}

/// Model 3: last-reference release of a buffer. The device (a lease) and the command table (an
/// `Arc`) both reference it; a late completion's release races `revoke_all` after a reset. The
/// lease ends exactly once, the buffer returns to the pool exactly once and never while leased,
/// and an unmap permit is only granted with no lease alive.
#[test]
fn revoke_races_late_completion() {
    loom::model(|| {
        let table = Arc::new(LeaseTable::<Arc<Buf>>::new());
        let returns = Arc::new(AtomicUsize::new(0));
        let buf = Arc::new(Buf {
            table: Arc::clone(&table),
            returns: Arc::clone(&returns),
        });
        let lease = table.grant(&mut t(), 1, Arc::clone(&buf)).expect("no permit");
        let cmd_table_ref = buf;

        let completion = thread::spawn({
            let table = Arc::clone(&table);
            move || {
                let payload = table.release(&mut t(), lease);
                let ended_it = payload.is_some();
                drop(payload);
                drop(cmd_table_ref);
                ended_it
            }
        });
        let teardown = {
            let table = Arc::clone(&table);
            thread::spawn(move || {
                let revoked = table.revoke_all(&mut t());
                let count = revoked.len();
                drop(revoked);
                if let Some(permit) = table.unmap_guard(&mut t()) {
                    assert_eq!(
                        table.outstanding(&mut t()),
                        0,
                        "unmap permitted with a lease alive"
                    );
                    drop(permit);
                }
                count
            })
        };

        let released = usize::from(completion.join().expect("completion"));
        let revoked = teardown.join().expect("teardown");
        assert_eq!(released + revoked, 1, "the lease ended exactly once");
        assert_eq!(
            returns.load(Ordering::SeqCst),
            1,
            "the buffer returned to the pool exactly once"
        );
        let stats = table.stats(&mut t());
        assert_eq!((stats.released, stats.revoked), (released as u64, revoked as u64));
        assert_eq!(
            stats.late_releases, revoked as u64,
            "a revoked lease's release is a no-op"
        );
        assert_eq!(table.outstanding(&mut t()), 0);
    });
}

/// Model 4: `unmap_guard` vs `grant`. While an unmap permit lives no lease is granted, and a
/// permit is never given while a lease lives.
#[test]
fn unmap_guard_excludes_grant() {
    loom::model(|| {
        let table = Arc::new(LeaseTable::<()>::new());
        let unmapping = Arc::new(AtomicBool::new(false));
        let submitter = {
            let table = Arc::clone(&table);
            let unmapping = Arc::clone(&unmapping);
            thread::spawn(move || match table.grant(&mut t(), 7, ()) {
                Ok(lease) => {
                    assert!(
                        !unmapping.load(Ordering::SeqCst),
                        "a lease lives during the unmap"
                    );
                    assert!(table.release(&mut t(), lease).is_some());
                    true
                }
                Err(refused) => {
                    assert_eq!(refused.id, 7);
                    false
                }
            })
        };

        if let Some(permit) = table.unmap_guard(&mut t()) {
            unmapping.store(true, Ordering::SeqCst);
            assert_eq!(table.outstanding(&mut t()), 0);
            unmapping.store(false, Ordering::SeqCst);
            drop(permit);
        }

        let granted = submitter.join().expect("submitter");
        let stats = table.stats(&mut t());
        assert_eq!(stats.granted, u64::from(granted));
        assert_eq!(stats.refused, u64::from(!granted));
        assert_eq!(table.outstanding(&mut t()), 0);
    });
}

/// Model 5: `wait_released` is woken by a completion on another thread (no lost wake-up), after
/// which the memory may be unmapped.
#[test]
fn wait_released_is_woken() {
    loom::model(|| {
        let table = Arc::new(LeaseTable::<()>::new());
        let lease = table.grant(&mut t(), 1, ()).expect("no permit");
        let completion = {
            let table = Arc::clone(&table);
            thread::spawn(move || table.release(&mut t(), lease).is_some())
        };

        match table.wait_released(&mut t(), Duration::ZERO) {
            Ok(()) => {}
            Err(e) => assert_eq!(e.outstanding, 1),
        }
        table
            .wait_released(&mut t(), LONG)
            .expect("the completion's release wakes the waiter");
        assert!(
            table.unmap_guard(&mut t()).is_some(),
            "nothing outstanding after wait_released"
        );
        assert!(completion.join().expect("completion"));
    });
}
