//! How many commands a worker asks for in one REPLY_AND_GET_MULTI.
//!
//! The ioctl hands a worker up to `cmds_cnt` ready commands at once (spec §3.3), and the worker
//! then runs them one after the other: a synchronous store (RAM, a file without io_uring) copies
//! each command's data in the worker's own thread before the next one starts, and every reply of
//! the batch goes back in the worker's next call. For small commands a full batch is what makes
//! the path cheap (one ioctl for many commands). For large ones it serializes the data movement
//! on one CPU: with 8 commands of 128 KiB queued, the first worker to wake takes all 8 and copies
//! 1 MiB while the other workers find nothing, and the first completion waits for the eighth
//! copy. So a worker asks for as many commands as hold about [`FrontendConfig::fetch_bytes`] of
//! data at the sizes it has been seeing, at least one and at most the buffer's capacity; the
//! commands it leaves are taken by the next worker that looks.
//!
//! The sizes are the EXECs' `bufflen` (0 for a command without data), averaged per worker with a
//! weight of 1/8 for each new command: no state is shared between workers, and a change of
//! workload is followed within a few dozen commands. Before the first EXEC, and with
//! `fetch_bytes` 0, a worker asks for its whole capacity. The same mean sizes the worker's
//! linger after its replies ([`FrontendConfig::linger_for`]).
//!
//! [`FrontendConfig::fetch_bytes`]: super::FrontendConfig::fetch_bytes
//! [`FrontendConfig::linger_for`]: super::FrontendConfig::linger_for

/// Weight of the newest command in the mean size: 1 / 2^`MEAN_SHIFT`.
const MEAN_SHIFT: u32 = 3;

/// One worker's fetch size.
#[derive(Debug)]
pub(super) struct FetchSize {
    /// Slots of the worker's REPLY_AND_GET_MULTI buffer.
    capacity: usize,
    /// Data bytes a fetch aims at; 0: no limit.
    budget: u64,
    /// Mean data bytes per EXEC, scaled by 2^`MEAN_SHIFT`; `None` before the first.
    mean_scaled: Option<u64>,
}

impl FetchSize {
    pub(super) fn new(capacity: usize, budget: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            budget: budget as u64,
            mean_scaled: None,
        }
    }

    /// An EXEC of `bufflen` data bytes was fetched.
    pub(super) fn record(&mut self, bufflen: u32) {
        let sample = u64::from(bufflen) << MEAN_SHIFT;
        self.mean_scaled = Some(match self.mean_scaled {
            // The first EXEC sets the mean: a worker serving large commands sizes its second
            // fetch by them already.
            None => sample,
            Some(mean) => mean - (mean >> MEAN_SHIFT) + (sample >> MEAN_SHIFT),
        });
    }

    /// The mean data bytes per EXEC of this worker's recent commands (0 before the first).
    pub(super) fn mean_bytes(&self) -> u64 {
        self.mean_scaled.unwrap_or(0) >> MEAN_SHIFT
    }

    /// Commands to ask for in the next fetch.
    pub(super) fn want(&self) -> usize {
        let mean = self.mean_bytes();
        if self.budget == 0 || mean == 0 {
            return self.capacity;
        }
        // Rounded to the nearest: a mean a few bytes above a divisor of the budget (which a
        // moving mean of equal sizes reaches only from above) still gives that divisor's count.
        usize::try_from((self.budget + mean / 2) / mean)
            .unwrap_or(usize::MAX)
            .clamp(1, self.capacity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: usize = 256 << 10;

    #[test]
    fn small_commands_fill_the_buffer() {
        let mut f = FetchSize::new(16, BUDGET);
        assert_eq!(f.want(), 16, "before any EXEC");
        for _ in 0..100 {
            f.record(4096);
        }
        assert_eq!(f.want(), 16, "16 x 4 KiB is well under the budget");
    }

    #[test]
    fn large_commands_are_fetched_a_budget_at_a_time() {
        let mut f = FetchSize::new(16, BUDGET);
        f.record(128 << 10);
        assert_eq!(f.want(), 2, "the first EXEC sets the size");
        for _ in 0..50 {
            f.record(1 << 20);
        }
        assert_eq!(f.want(), 1, "never fewer than one");
        for _ in 0..100 {
            f.record(64 << 10);
        }
        assert_eq!(f.want(), 4, "a change of size is followed");
    }

    #[test]
    fn the_mean_follows_a_mix() {
        let mut f = FetchSize::new(32, BUDGET);
        // Three 4 KiB commands for each 128 KiB one: a mean of about 35 KiB.
        for _ in 0..200 {
            f.record(128 << 10);
            for _ in 0..3 {
                f.record(4 << 10);
            }
        }
        assert!((5..=10).contains(&f.want()), "{}", f.want());
        // Commands without data count as size 0 and leave the buffer full again.
        for _ in 0..200 {
            f.record(0);
        }
        assert_eq!(f.want(), 32);
    }

    #[test]
    fn a_zero_budget_never_caps() {
        let mut f = FetchSize::new(8, 0);
        f.record(u32::MAX);
        assert_eq!(f.want(), 8);
    }
}
