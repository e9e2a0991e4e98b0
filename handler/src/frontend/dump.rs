//! State dumps on demand (issue 4 §2, architecture.md §6): every worker's commands (state, age,
//! queue, tag, buffer), the frontend's drain and lease figures, and the store's register and
//! ring dump.
//!
//! A worker's commands are its own (no shared table, no lock on the I/O path), so a dump is a
//! question put to each worker through its own channel: the worker answers from its loop (at
//! the latest after one idle poll) with the text of its state. The caller waits, bounded, for
//! the answers; a worker that does not answer in time (stuck in a store call, or gone) is named
//! as such. Nothing here holds a lock, and the I/O path pays one `try_recv` per loop.

use super::Frontend;
use crossbeam_channel::Receiver;
use crossbeam_channel::Sender;
use crossbeam_channel::TrySendError;
use std::fmt::Write as _;
use std::time::Duration;
use std::time::Instant;

/// Shortest wait for the workers' answers (a worker answers after at most one idle poll).
const MIN_DUMP_WAIT: Duration = Duration::from_millis(200);

/// A question to one worker: "send me your state".
pub(crate) struct DumpRequest {
    pub(crate) reply: Sender<WorkerDump>,
}

/// A worker's answer.
pub(crate) struct WorkerDump {
    pub(crate) worker: usize,
    pub(crate) text: String,
}

/// The frontend's side of one worker's dump channel.
pub(crate) type DumpSender = Sender<DumpRequest>;
/// The worker's side.
pub(crate) type DumpReceiver = Receiver<DumpRequest>;

/// A channel for one worker (a few requests may queue; more are refused, never waited for).
pub(crate) fn channel() -> (DumpSender, DumpReceiver) {
    crossbeam_channel::bounded(4)
}

impl Frontend {
    /// The state of the frontend and of the device behind it, as text for a log or an operator:
    /// per worker, every command it holds (state, age, queue, tag, buffer) and its pending
    /// replies; the drain, lease and trigger figures; then [`crate::store::Store::dump`]
    /// (registers, rings).
    ///
    /// Callable from any thread. Bounded: waits at most about three idle polls (at least
    /// 200 ms) for the workers' answers and holds no lock meanwhile; the workers answer from
    /// their loop, so the I/O path is never blocked by a dump.
    pub fn dump(&self) -> String {
        let shared = &self.shared;
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut out = String::new();
        let mut asked = Vec::new();
        for (worker, sender) in self.dumpers.iter().enumerate() {
            match sender.try_send(DumpRequest { reply: tx.clone() }) {
                Ok(()) => {
                    // An idle worker sleeps in poll for up to `idle_park`: wake it.
                    shared.ring(worker);
                    asked.push(worker);
                }
                Err(TrySendError::Full(_)) => {
                    let _ = writeln!(out, "worker {worker}: busy (earlier dump requests unanswered)");
                }
                Err(TrySendError::Disconnected(_)) => {
                    let _ = writeln!(out, "worker {worker}: exited");
                }
            }
        }
        drop(tx);
        let bound = (shared.config.idle_poll * 3).max(MIN_DUMP_WAIT);
        let deadline = Instant::now() + bound;
        let mut answers: Vec<WorkerDump> = Vec::new();
        while answers.len() < asked.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match scst_accel_hal::locks::blocking("dump answers", || rx.recv_timeout(left)) {
                Ok(answer) => answers.push(answer),
                Err(_) => break,
            }
        }
        answers.sort_by_key(|a| a.worker);
        for worker in &asked {
            match answers.iter().find(|a| a.worker == *worker) {
                Some(answer) => out.push_str(&answer.text),
                None => {
                    let _ = writeln!(
                        out,
                        "worker {worker}: no answer within {bound:?} (stuck in a store call?)"
                    );
                }
            }
        }
        // The asking thread holds no lock (an API entry; asserted).
        let mut token = scst_accel_hal::locks::LockToken::root();
        let leases = shared.leases.stats(&mut token);
        let _ = writeln!(
            out,
            "frontend: intake {}, {} command(s) in flight, {} device lease(s) outstanding \
             (granted {}, released {}, revoked {}, late {}), trigger {}",
            if shared.drain.is_closed() {
                "closed"
            } else {
                "open"
            },
            shared.drain.in_flight(),
            shared.leases.outstanding(&mut token),
            leases.granted,
            leases.released,
            leases.revoked,
            leases.late_releases,
            shared
                .trigger
                .get()
                .map_or_else(|| "none".to_string(), ToString::to_string),
        );
        match shared.store.dump() {
            Some(store) => {
                out.push_str(&store);
                if !store.ends_with('\n') {
                    out.push('\n');
                }
            }
            None => out.push_str("store: no device state\n"),
        }
        out
    }
}
