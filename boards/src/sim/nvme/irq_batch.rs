//! When an I/O worker raises its completion queue's vector: once for the completions of the
//! commands it takes back to back, as QEMU's controller does (`hw/nvme`: completions are
//! queued and posted by one pass, `nvme_post_cqes`, which asserts the CQ's interrupt once for
//! all it posted), instead of once per completion.
//!
//! Each completion is posted to the CQ at once, as before; only the MSI-X raise waits. The
//! worker raises what it owes:
//! - before it waits for anything: its SQ empty, a full CQ, an injected latency, the room a
//!   fused second needs (so a host that waits for the interrupt to reap is never what the
//!   worker waits for);
//! - after `irq_batch` completions ([`NvmeSimConfig`](super::NvmeSimConfig), default 8), so
//!   a deep queue still interrupts regularly;
//! - before it takes another command when the oldest unsignalled completion is
//!   `irq_hold_micros` old (default 20), so a run of long commands delays an interrupt by at
//!   most one command past the hold.
//!
//! The admin queue's worker (admin commands and asynchronous events) raises at once, and so
//! does every worker with `irq_batch` 1.
//!
//! What it saves (the store bench, 4 KiB random reads at QD32, `perf record -e
//! syscalls:sys_enter_write`): the controller's worker made about one eventfd write per
//! command, many of them a wake-up of the sleeping host thread; batched, 0.13 per command,
//! and the store alone went from 424k-449k to 466k-613k IOPS in three alternated pairs
//! (docs/performance.md).

use std::cell::Cell;
use std::time::Duration;
use std::time::Instant;

use super::controller::Shared;

/// Completions one worker posted and has not signalled yet.
#[derive(Clone, Copy, Debug)]
struct Unsignalled {
    vector: u32,
    count: u32,
    since: Instant,
    /// The controller epoch they were posted under: a reset since makes them the host's
    /// past, and their raise is dropped.
    epoch: u64,
}

/// A worker's pending raise (one worker thread owns it: a `Cell`, no lock).
#[derive(Debug)]
pub(crate) struct IrqBatch {
    /// Completions per raise at most (1: every completion raises at once).
    batch: u32,
    hold: Duration,
    pending: Cell<Option<Unsignalled>>,
}

impl IrqBatch {
    /// For worker `w` (0 is the admin queue's, which raises at once) of `shared`.
    pub(crate) fn new(shared: &Shared, w: usize) -> Self {
        Self {
            batch: if w == 0 { 1 } else { shared.config.irq_batch.max(1) },
            hold: Duration::from_micros(u64::from(shared.config.irq_hold_micros)),
            pending: Cell::new(None),
        }
    }

    /// A completion was posted on a CQ with interrupts enabled on `vector` under `epoch`.
    pub(crate) fn posted(&self, shared: &Shared, vector: u32, epoch: u64) {
        if self.batch == 1 {
            shared.raise(vector);
            return;
        }
        let next = match self.pending.take() {
            Some(p) if p.vector == vector && p.epoch == epoch => Unsignalled {
                count: p.count + 1,
                ..p
            },
            other => {
                self.raise(shared, other);
                Unsignalled {
                    vector,
                    count: 1,
                    since: Instant::now(),
                    epoch,
                }
            }
        };
        if next.count >= self.batch {
            self.raise(shared, Some(next));
        } else {
            self.pending.set(Some(next));
        }
    }

    /// Raise what is owed: before the worker waits for anything.
    pub(crate) fn flush(&self, shared: &Shared) {
        self.raise(shared, self.pending.take());
    }

    /// Raise what is owed if the oldest of it has waited the hold: before the next command.
    pub(crate) fn flush_if_held(&self, shared: &Shared) {
        if self.pending.get().is_some_and(|p| p.since.elapsed() >= self.hold) {
            self.flush(shared);
        }
    }

    fn raise(&self, shared: &Shared, owed: Option<Unsignalled>) {
        if let Some(p) = owed {
            if !shared.gone() && shared.epoch() == p.epoch {
                shared.raise(p.vector);
            }
        }
    }
}
