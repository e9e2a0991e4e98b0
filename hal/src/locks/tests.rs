use std::collections::HashSet;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use super::levels;
use super::levels::Level;
use super::*;

type Table = OrderedMutex<Vec<u64>, levels::CmdTable>;
type Pool = OrderedMutex<Vec<u64>, levels::SgvPool>;

#[test]
fn levels_are_a_strict_order_with_unique_names() {
    let mut names = HashSet::new();
    for pair in levels::ALL.windows(2) {
        assert_eq!(pair[0].0 + 1, pair[1].0, "{} then {}", pair[0].1, pair[1].1);
    }
    for (_, name) in levels::ALL {
        assert!(names.insert(*name), "{name} twice");
    }
    assert_eq!(levels::ALL[0].0, 1);
}

/// Not gated on the checker, so that a checker compiled out by mistake fails here instead of
/// taking its own tests with it (hal/build.rs once derived it from `CARGO_CFG_DEBUG_ASSERTIONS`,
/// which Cargo gives build scripts only from 1.93 on): every build with debug assertions, so
/// every debug and test build, has it and refuses an inversion; a release build has it exactly
/// when the `lock-check` feature is on.
#[test]
fn every_build_with_debug_assertions_checks_the_order() {
    assert_eq!(
        LOCK_CHECK,
        cfg!(debug_assertions) || cfg!(feature = "lock-check"),
        "the runtime checker is in every build with debug assertions, and in release with the feature"
    );
    if !cfg!(debug_assertions) {
        return;
    }
    let table = Table::new(Vec::new());
    let pool = Pool::new(Vec::new());
    let _expected = expect_violations();
    let inversion = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _free_lists = pool.lock_unchecked_at_runtime();
        let _entries = table.lock_unchecked_at_runtime();
    }));
    assert!(inversion.is_err(), "the SCST inversion was let through");
    assert!(held_locks().is_empty(), "the unwound guards were popped");
}

#[test]
fn the_token_chain_takes_locks_in_order_and_frees_the_parent() {
    let table = Table::new(vec![1]);
    let pool = Pool::new(vec![2]);
    let mut token = LockToken::root();
    {
        let (mut entries, mut inner) = table.lock(&mut token);
        assert_eq!(inner.level(), levels::CmdTable::LEVEL);
        let (mut lists, _) = pool.lock(&mut inner);
        entries.extend(lists.pop());
        if LOCK_CHECK {
            assert_eq!(held_locks(), vec![("frontend.cmd_table", 2), ("sgv.pool", 9)]);
        }
    }
    assert!(held_locks().is_empty());
    assert!(no_checked_lock_held());
    {
        let _entries = table.lock(&mut token);
        assert_eq!(no_checked_lock_held(), !LOCK_CHECK, "a held lock is seen");
    }
    // The root token is usable again once the guards are gone.
    let (entries, _) = table.lock(&mut token);
    assert_eq!(*entries, vec![1, 2]);
}

#[test]
fn guards_may_be_dropped_out_of_order() {
    let table = Table::new(Vec::new());
    let pool = Pool::new(Vec::new());
    let t = table.lock_unchecked_at_runtime();
    let p = pool.lock_unchecked_at_runtime();
    drop(t);
    if LOCK_CHECK {
        assert_eq!(held_locks(), vec![("sgv.pool", 9)]);
    }
    drop(p);
    assert!(held_locks().is_empty());
    // Nothing held: any order again.
    drop(pool.lock_unchecked_at_runtime());
    drop(table.lock_unchecked_at_runtime());
}

#[cfg(any(debug_assertions, feature = "lock-check"))]
#[test]
#[should_panic(
    expected = "lock order violation: taking `frontend.cmd_table` (level 2) while holding `sgv.pool` (level 9)"
)]
fn the_scst_inversion_panics_at_run_time() {
    let _expected = expect_violations();
    // SCST's cleanup path: the pool lock, then the command list. Two threads doing this and the
    // I/O order would deadlock; the checker rejects the first thread alone, at once.
    let table = Table::new(Vec::new());
    let pool = Pool::new(Vec::new());
    let _free_lists = pool.lock_unchecked_at_runtime();
    let _entries = table.lock_unchecked_at_runtime();
}

#[cfg(any(debug_assertions, feature = "lock-check"))]
#[test]
#[should_panic(
    expected = "lock order violation: taking `sgv.stash` (level 10) while holding `sgv.stash` (level 10)"
)]
fn two_locks_of_one_level_are_never_nested() {
    let _expected = expect_violations();
    let mine = OrderedMutex::<(), levels::SgvStash>::new(());
    let other = OrderedMutex::<(), levels::SgvStash>::new(());
    let _a = mine.lock_unchecked_at_runtime();
    let _b = other.lock_unchecked_at_runtime();
}

#[cfg(any(debug_assertions, feature = "lock-check"))]
#[test]
#[should_panic(expected = "lock order violation: taking `iommu.table` (level 20)")]
fn a_recursive_read_panics() {
    let _expected = expect_violations();
    let table = OrderedRwLock::<u32, levels::IommuTable>::new(0);
    let _a = table.read_unchecked_at_runtime();
    let _b = table.read_unchecked_at_runtime();
}

#[cfg(any(debug_assertions, feature = "lock-check"))]
#[test]
#[should_panic(expected = "blocking call `VFIO_DEVICE_RESET` while holding `sim.state` (level 18)")]
fn a_blocking_call_under_a_lock_panics() {
    let _expected = expect_violations();
    let state = OrderedMutex::<(), levels::SimState>::new(());
    let _g = state.lock_unchecked_at_runtime();
    assert_no_locks_held("VFIO_DEVICE_RESET");
}

#[cfg(any(debug_assertions, feature = "lock-check"))]
#[test]
#[should_panic(expected = "blocking call `LockToken::root` while holding `frontend.cmd_table`")]
fn a_root_token_under_a_lock_panics() {
    let _expected = expect_violations();
    let table = Table::new(Vec::new());
    let _g = table.lock_unchecked_at_runtime();
    let _second_root = LockToken::root();
}

#[cfg(any(debug_assertions, feature = "lock-check"))]
#[test]
#[should_panic(expected = "blocking call `sleep` while holding `dma.iova` (level 11)")]
fn sleep_under_a_lock_panics() {
    let _expected = expect_violations();
    let iovas = OrderedMutex::<(), levels::DmaIova>::new(());
    let _g = iovas.lock_unchecked_at_runtime();
    sleep(Duration::ZERO);
}

#[cfg(any(debug_assertions, feature = "lock-check"))]
#[test]
#[should_panic(
    expected = "blocking call `Condvar::wait_timeout` while holding `frontend.sessions` (level 1)"
)]
fn a_condvar_wait_under_another_lock_panics() {
    let _expected = expect_violations();
    let sessions = OrderedMutex::<(), levels::FrontendSessions>::new(());
    let state = OrderedMutex::<(), levels::SimState>::new(());
    let cond = OrderedCondvar::new();
    let _outer = sessions.lock_unchecked_at_runtime();
    let g = state.lock_unchecked_at_runtime();
    let _ = cond.wait_timeout(g, Duration::ZERO);
}

#[test]
fn a_condvar_wait_releases_and_retakes_its_mutex() {
    let shared = Arc::new((
        OrderedMutex::<bool, levels::SimState>::new(false),
        OrderedCondvar::new(),
    ));
    let setter = {
        let shared = Arc::clone(&shared);
        std::thread::spawn(move || {
            *shared.0.lock_unchecked_at_runtime() = true;
            shared.1.notify_all();
        })
    };
    let mut g = shared.0.lock_unchecked_at_runtime();
    for _ in 0..1000 {
        if *g {
            break;
        }
        // The setter can only take the mutex because the wait released it.
        g = shared.1.wait_timeout(g, Duration::from_millis(10)).0;
        if LOCK_CHECK {
            assert_eq!(
                held_locks(),
                vec![("sim.state", levels::SimState::LEVEL)],
                "re-pushed after the wait"
            );
        }
    }
    assert!(*g, "the setter ran while we waited");
    drop(g);
    assert!(held_locks().is_empty());
    join(setter).expect("setter");
}

/// Notifications are sent only to counted waiters: a ping-pong of turns, each side waiting for
/// its turn with a long bound, loses no wake-up (a lost one shows as a timed-out wait, which
/// ends both sides).
#[test]
fn no_wake_up_is_lost_when_notifies_without_waiters_are_skipped() {
    const ROUNDS: u32 = 2000;
    // (turn, a wait timed out)
    let shared = Arc::new((
        OrderedMutex::<(u32, bool), levels::SimState>::new((0, false)),
        OrderedCondvar::new(),
    ));
    let side = |parity: u32| {
        let shared = Arc::clone(&shared);
        std::thread::spawn(move || {
            let mut g = shared.0.lock_unchecked_at_runtime();
            while g.0 < ROUNDS && !g.1 {
                if g.0 % 2 == parity {
                    g.0 += 1;
                    drop(g);
                    shared.1.notify_all();
                    g = shared.0.lock_unchecked_at_runtime();
                } else {
                    let (next, timed_out) = shared.1.wait_timeout(g, Duration::from_secs(10));
                    g = next;
                    if timed_out && g.0 % 2 != parity {
                        g.1 = true;
                        drop(g);
                        shared.1.notify_all();
                        return;
                    }
                }
            }
        })
    };
    let (even, odd) = (side(0), side(1));
    join(even).expect("even side");
    join(odd).expect("odd side");
    let (turn, lost) = *shared.0.lock_unchecked_at_runtime();
    assert!(!lost, "a wait timed out at turn {turn}: a lost wake-up");
    assert_eq!(turn, ROUNDS);
}

#[test]
fn a_poisoned_lock_is_recovered_with_its_value() {
    let m = Arc::new(OrderedMutex::<u32, levels::ScsiModePages>::new(1));
    let m2 = Arc::clone(&m);
    let r = std::thread::spawn(move || {
        let mut g = m2.lock_unchecked_at_runtime();
        *g = 2;
        panic!("poison it");
    })
    .join();
    assert!(r.is_err());
    assert_eq!(*m.lock_unchecked_at_runtime(), 2);
    assert!(held_locks().is_empty(), "the panicking thread's stack is its own");

    let rw = Arc::new(OrderedRwLock::<u32, levels::RamChunk>::new(1));
    let rw2 = Arc::clone(&rw);
    let r = std::thread::spawn(move || {
        let mut g = rw2.write_unchecked_at_runtime();
        *g = 3;
        panic!("poison it");
    })
    .join();
    assert!(r.is_err());
    assert_eq!(*rw.read_unchecked_at_runtime(), 3);
    *rw.write_unchecked_at_runtime() = 4;
    assert_eq!(Arc::try_unwrap(rw).map(OrderedRwLock::into_inner).ok(), Some(4));
}

#[test]
fn try_lock_reports_a_held_lock() {
    let m = Arc::new(OrderedMutex::<(), levels::SimEngines>::new(()));
    let (held_tx, held_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let holder = {
        let m = Arc::clone(&m);
        std::thread::spawn(move || {
            let _g = m.lock_unchecked_at_runtime();
            held_tx.send(()).expect("send");
            let _ = release_rx.recv_timeout(Duration::from_secs(10));
        })
    };
    recv_timeout(&held_rx, Duration::from_secs(10)).expect("holder has the lock");
    assert!(m.try_lock_unchecked_at_runtime().is_none());
    release_tx.send(()).expect("release");
    join(holder).expect("holder");
    assert!(m.try_lock_unchecked_at_runtime().is_some());
}

// Edges are recorded with debug assertions only (not in a release build with the feature).
#[cfg(debug_assertions)]
#[test]
fn nesting_is_recorded_as_edges() {
    let table = OrderedRwLock::<(), levels::IommuTable>::new(());
    let faults = OrderedMutex::<(), levels::IommuFaults>::new(());
    let mut token = LockToken::root();
    let (_t, mut inner) = table.read(&mut token);
    drop(faults.lock(&mut inner));
    assert!(observed_edges().contains(&("iommu.table", "iommu.faults")));
}

#[test]
fn join_bounded_gives_back_a_running_thread() {
    let (tx, rx) = mpsc::channel::<()>();
    let worker = std::thread::spawn(move || {
        let _ = rx.recv_timeout(Duration::from_secs(30));
        7
    });
    // The worker cannot finish before we send, so the bound must run out.
    let worker = match join_bounded(worker, Duration::from_millis(5)) {
        Err(handle) => handle,
        Ok(_) => panic!("the worker was still waiting for us"),
    };
    tx.send(()).expect("send");
    let joined = join_bounded(worker, Duration::from_secs(30));
    assert!(matches!(joined, Ok(Ok(7))));
}

#[test]
fn blocking_helpers_run_their_call() {
    let (tx, rx) = mpsc::channel();
    tx.send(5).expect("send");
    assert_eq!(recv_timeout(&rx, Duration::ZERO), Ok(5));
    assert_eq!(
        recv_timeout(&rx, Duration::ZERO),
        Err(mpsc::RecvTimeoutError::Timeout)
    );
    assert_eq!(blocking("compute", || 6), 6);
    sleep(Duration::ZERO);
}

/// Lock statistics count every acquisition, the ones that waited behind another thread, and
/// the longest hold (the figures only grow, so other tests taking the same level in parallel
/// cannot make this fail).
#[test]
fn lock_stats_count_acquisitions_contention_and_the_longest_hold() {
    let find = || {
        lock_stats()
            .into_iter()
            .find(|s| s.name == levels::ScsiModePages::NAME)
            .map_or((0, 0, Duration::ZERO), |s| {
                (s.acquisitions, s.contended, s.longest_hold)
            })
    };
    let (acquired_before, contended_before, _) = find();
    let lock = Arc::new(OrderedMutex::<u32, levels::ScsiModePages>::new(0));
    let (held_tx, held_rx) = mpsc::channel();
    let holder = {
        let lock = Arc::clone(&lock);
        std::thread::spawn(move || {
            let guard = lock.lock_unchecked_at_runtime();
            held_tx.send(()).expect("send");
            std::thread::sleep(Duration::from_millis(80));
            drop(guard);
        })
    };
    held_rx.recv().expect("held");
    *lock.lock_unchecked_at_runtime() += 1; // waits for the holder
    holder.join().expect("holder");
    let (acquired, contended, longest) = find();
    assert!(
        acquired >= acquired_before + 2,
        "{acquired} after {acquired_before}"
    );
    assert!(contended > contended_before, "the second taker waited");
    assert!(longest >= Duration::from_millis(80), "{longest:?}");
}

/// The calling thread's voluntary context switches and CPU time so far
/// (`/proc/thread-self/status` and `schedstat`): a thread that sleeps on a futex switches
/// voluntarily, one that spins does not.
fn thread_switches_and_cpu() -> (i64, Duration) {
    let status = std::fs::read_to_string("/proc/thread-self/status").expect("thread status");
    let switches = status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("voluntary_ctxt_switches in /proc/thread-self/status");
    let schedstat = std::fs::read_to_string("/proc/thread-self/schedstat").expect("thread schedstat");
    let cpu_ns = schedstat
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .expect("run time in /proc/thread-self/schedstat");
    (switches, Duration::from_nanos(cpu_ns))
}

/// A thread takes the lock, signals, holds it for `hold`, and releases it; the caller takes it
/// with `lock_spinning(spin)` once it is held. Returns the caller's voluntary switches and CPU
/// time during that take.
fn take_behind_a_holder(hold: Duration, spin: Duration) -> (i64, Duration) {
    let m = Arc::new(OrderedMutex::<u32, levels::SimEngines>::new(0));
    let (held_tx, held_rx) = mpsc::channel();
    let holder = {
        let m = Arc::clone(&m);
        std::thread::spawn(move || {
            let mut g = m.lock_unchecked_at_runtime();
            held_tx.send(()).expect("send");
            std::thread::sleep(hold);
            *g += 1;
        })
    };
    recv_timeout(&held_rx, Duration::from_secs(10)).expect("holder has the lock");
    let (switches_before, cpu_before) = thread_switches_and_cpu();
    let mut token = LockToken::root();
    let seen = {
        let (g, _) = m.lock_spinning(&mut token, spin);
        *g
    };
    let (switches, cpu) = thread_switches_and_cpu();
    join(holder).expect("holder");
    assert_eq!(seen, 1, "the lock was taken after the holder's release");
    (switches - switches_before, cpu.saturating_sub(cpu_before))
}

#[test]
fn a_spinning_lock_waits_out_a_short_hold_without_sleeping() {
    let (switches, _) = take_behind_a_holder(Duration::from_millis(20), Duration::from_secs(5));
    assert_eq!(switches, 0, "the waiter slept instead of spinning");
    // The same wait without a spin sleeps on the futex: the measure sees a sleep.
    let (switches, _) = take_behind_a_holder(Duration::from_millis(20), Duration::ZERO);
    assert!(switches >= 1, "a blocking wait switched {switches} times");
}

#[test]
fn a_spinning_lock_sleeps_once_its_spin_is_spent() {
    let (switches, cpu) = take_behind_a_holder(Duration::from_millis(300), Duration::from_millis(20));
    assert!(switches >= 1, "the waiter never slept");
    assert!(
        cpu < Duration::from_millis(150),
        "the waiter spun for {cpu:?} of a 300 ms hold with a 20 ms spin"
    );
}

/// Each thread counts in its own shard of the statistics; [`lock_stats`] adds every shard up,
/// with more threads than shards (some share one) and after they have exited.
#[test]
fn lock_stats_add_up_the_counts_of_every_thread() {
    const THREADS: u64 = 20;
    const HOLDS: u64 = 100;
    let acquisitions = || {
        lock_stats()
            .into_iter()
            .find(|s| s.name == levels::ScsiModePages::NAME)
            .map_or(0, |s| s.acquisitions)
    };
    let before = acquisitions();
    let lock = Arc::new(OrderedMutex::<u32, levels::ScsiModePages>::new(0));
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let lock = Arc::clone(&lock);
            std::thread::spawn(move || {
                for _ in 0..HOLDS {
                    *lock.lock_unchecked_at_runtime() += 1;
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("counting thread");
    }
    assert_eq!(*lock.lock_unchecked_at_runtime(), (THREADS * HOLDS) as u32);
    let after = acquisitions();
    assert!(
        after > before + THREADS * HOLDS,
        "{after} after {before}: {} holds on {THREADS} threads and one here",
        THREADS * HOLDS
    );
}

/// The variable that makes [`a_violation_on_a_thread_that_expects_none_aborts_the_process`]'s
/// second run (in a child process) commit the violation.
const ABORT_CHILD: &str = "SCST_ACCEL_LOCKS_ABORT_CHILD";

/// A violation on a thread that holds no [`expect_violations`] aborts the whole process, with
/// the message on stderr, also in a test build: a worker's panic would only reach a bounded join
/// that logs it (the file store's I/O threads, the simulators' engines, the SGV refill thread)
/// and the test would pass. The test runs itself again in a child process that commits the
/// inversion on such a thread, and requires SIGABRT and the message.
#[cfg(debug_assertions)]
#[test]
fn a_violation_on_a_thread_that_expects_none_aborts_the_process() {
    use std::os::unix::process::ExitStatusExt;

    if std::env::var_os(ABORT_CHILD).is_some() {
        let worker = std::thread::spawn(|| {
            let table = Table::new(Vec::new());
            let pool = Pool::new(Vec::new());
            let _free_lists = pool.lock_unchecked_at_runtime();
            let _entries = table.lock_unchecked_at_runtime();
        });
        // As those joiners do: a panic is a value here, which the test would not look at.
        let _ = join_bounded(worker, Duration::from_secs(10));
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().expect("the test binary"))
        .args([
            "--exact",
            "locks::tests::a_violation_on_a_thread_that_expects_none_aborts_the_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ABORT_CHILD, "1")
        .output()
        .expect("run the test binary again");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGABRT),
        "the inversion did not abort the child: {:?}, stderr:\n{stderr}",
        out.status
    );
    assert!(
        stderr.contains(
            "lock order violation: taking `frontend.cmd_table` (level 2) while holding `sgv.pool` (level 9)"
        ) && stderr.contains("aborting"),
        "stderr:\n{stderr}"
    );
}
