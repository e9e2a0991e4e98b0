//! [`SimConfig`]: the geometry, limits and medium of one simulated SCA-1 board, checked against
//! what the register file can express (accelerator.md §1–§4).

use std::path::PathBuf;

use super::SimError;
use crate::sca1::regs::Cap0;
use crate::sca1::regs::Timeouts;

/// 4 KiB: the unit of CAP1 (accelerator.md §1).
const CAP1_UNIT: u32 = 4096;

/// Where the simulated medium keeps its blocks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Backing {
    /// Process memory, allocated lazily in chunks on first write; unwritten blocks read as
    /// zeroes, so a 256 MiB medium costs only what was written.
    #[default]
    Ram,
    /// A sparse file of exactly the medium's size, created if missing (positional reads and
    /// writes, `fdatasync` for FLUSH and FUA). Its content survives the board.
    SparseFile(PathBuf),
}

/// The simulated board's capabilities and medium. [`Default`] is a typical small board.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimConfig {
    /// Queues (CAP0 7:0). 1..=32: INT_STATUS and INT_MASK have one bit per queue in 32 bits.
    pub queues: u32,
    /// log2 of the largest ring in entries (CAP0 15:8). 1..=16: `sq_head` is 16 bits (§4).
    pub max_ring_log2: u32,
    /// MSI-X vectors (CAP0 23:16). 0..=255; 0 means the driver must poll.
    pub vectors: u32,
    /// log2 of the largest scatter list (CAP0 31:24). 0..=15: `sgl_entries` is 16 bits (§3).
    pub max_sgl_log2: u32,
    /// Largest transfer of one descriptor in bytes; a multiple of 4 KiB (CAP1 is in 4 KiB units)
    /// and of the block size.
    pub max_transfer_bytes: u32,
    /// Logical block size: 512 or 4096.
    pub block_size: u32,
    /// Medium size in blocks (CAPACITY), at least 1.
    pub num_blocks: u64,
    /// Where the blocks live.
    pub backing: Backing,
    /// STOP_TIMEOUT advertised in TIMEOUTS (§6), ms, at least 1.
    pub stop_timeout_ms: u16,
    /// RESET_TIMEOUT advertised in TIMEOUTS (§7), ms, at least 1. Also bounds the model's own
    /// wait in a function reset.
    pub reset_timeout_ms: u16,
    /// The contract's minor version the engine implements (VERSION reads 1.minor), 0..=2:
    /// 1 adds the COPY descriptor (accelerator.md §3.1), 2 adds INT_COALESCE.REARM (§9).
    pub minor: u16,
    /// Whether the thread that writes an SQ_TAIL doorbell executes the queue's descriptors
    /// itself when it can do so without waiting (no fault standing, the queue's engine idle:
    /// `engine::run_inline`), instead of waking the queue's engine thread. On by default: a
    /// real board's work costs the host no CPU, and the hand-off to a thread costs it two
    /// context switches per doorbell. Off, every descriptor runs on the engine threads, with
    /// the timing of a device that answers later.
    pub inline_doorbells: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            queues: 4,
            max_ring_log2: 12,
            vectors: 4,
            max_sgl_log2: 8,
            max_transfer_bytes: 1 << 20,
            block_size: 512,
            num_blocks: (256 << 20) / 512,
            backing: Backing::Ram,
            stop_timeout_ms: 500,
            reset_timeout_ms: 2000,
            minor: 2,
            inline_doorbells: true,
        }
    }
}

impl SimConfig {
    /// Check every field against the register file and the wire formats.
    ///
    /// # Errors
    /// [`SimError::InvalidConfig`] naming the field and the accepted range.
    pub fn validate(&self) -> Result<(), SimError> {
        let bad = |field: &'static str, reason: String| Err(SimError::InvalidConfig { field, reason });
        if !(1..=32).contains(&self.queues) {
            return bad("queues", format!("{} is not in 1..=32", self.queues));
        }
        if !(1..=16).contains(&self.max_ring_log2) {
            return bad(
                "max_ring_log2",
                format!("{} is not in 1..=16", self.max_ring_log2),
            );
        }
        if self.vectors > 255 {
            return bad("vectors", format!("{} is not in 0..=255", self.vectors));
        }
        if self.max_sgl_log2 > 15 {
            return bad("max_sgl_log2", format!("{} is not in 0..=15", self.max_sgl_log2));
        }
        if self.block_size != 512 && self.block_size != 4096 {
            return bad(
                "block_size",
                format!("{} is neither 512 nor 4096", self.block_size),
            );
        }
        if self.max_transfer_bytes == 0
            || !self.max_transfer_bytes.is_multiple_of(CAP1_UNIT)
            || !self.max_transfer_bytes.is_multiple_of(self.block_size)
        {
            return bad(
                "max_transfer_bytes",
                format!("{} is not a non-zero multiple of 4096", self.max_transfer_bytes),
            );
        }
        if self.num_blocks == 0 || self.num_blocks.checked_mul(u64::from(self.block_size)).is_none() {
            return bad(
                "num_blocks",
                format!(
                    "{} blocks of {} bytes is empty or too large",
                    self.num_blocks, self.block_size
                ),
            );
        }
        if self.stop_timeout_ms == 0 {
            return bad("stop_timeout_ms", "must be at least 1".to_owned());
        }
        if self.reset_timeout_ms == 0 {
            return bad("reset_timeout_ms", "must be at least 1".to_owned());
        }
        if self.minor > 2 {
            return bad("minor", format!("{} is not in 0..=2", self.minor));
        }
        Ok(())
    }

    /// VERSION as the board reports it.
    pub fn version(&self) -> u32 {
        (1 << 16) | u32::from(self.minor)
    }

    /// The engine offers the COPY descriptor (contract 1.1, accelerator.md §3.1).
    pub fn offers_copy(&self) -> bool {
        self.minor >= 1
    }

    /// The engine offers INT_COALESCE.REARM (contract 1.2, accelerator.md §9).
    pub fn offers_rearm(&self) -> bool {
        self.minor >= 2
    }

    /// Medium size in bytes (valid after [`SimConfig::validate`]).
    pub fn capacity_bytes(&self) -> u64 {
        self.num_blocks.saturating_mul(u64::from(self.block_size))
    }

    /// CAP0 as the board reports it.
    pub fn cap0(&self) -> u32 {
        Cap0 {
            queues: self.queues,
            max_ring_log2: self.max_ring_log2,
            vectors: self.vectors,
            max_sgl_log2: self.max_sgl_log2,
        }
        .to_bits()
    }

    /// CAP1 as the board reports it.
    pub fn cap1(&self) -> u32 {
        self.max_transfer_bytes / CAP1_UNIT
    }

    /// TIMEOUTS as the board reports it.
    pub fn timeouts(&self) -> u32 {
        Timeouts {
            stop_ms: u32::from(self.stop_timeout_ms),
            reset_ms: u32::from(self.reset_timeout_ms),
        }
        .to_bits()
    }

    /// Largest ring in entries.
    pub fn max_ring_entries(&self) -> u32 {
        1 << self.max_ring_log2
    }

    /// Largest scatter list in entries.
    pub fn max_sgl_entries(&self) -> u32 {
        1 << self.max_sgl_log2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_encodes_its_capabilities() {
        let c = SimConfig::default();
        c.validate().expect("default config");
        assert_eq!(Cap0::from_bits(c.cap0()).queues, 4);
        assert_eq!(Cap0::from_bits(c.cap0()).max_ring_log2, 12);
        assert_eq!(c.cap1(), 256);
        assert_eq!(c.capacity_bytes(), 256 << 20);
        assert_eq!(Timeouts::from_bits(c.timeouts()).reset_ms, 2000);
    }

    #[test]
    fn out_of_range_fields_are_named() {
        let cases: Vec<(SimConfig, &str)> = vec![
            (
                SimConfig {
                    queues: 0,
                    ..SimConfig::default()
                },
                "queues",
            ),
            (
                SimConfig {
                    queues: 33,
                    ..SimConfig::default()
                },
                "queues",
            ),
            (
                SimConfig {
                    max_ring_log2: 17,
                    ..SimConfig::default()
                },
                "max_ring_log2",
            ),
            (
                SimConfig {
                    max_sgl_log2: 16,
                    ..SimConfig::default()
                },
                "max_sgl_log2",
            ),
            (
                SimConfig {
                    block_size: 1024,
                    ..SimConfig::default()
                },
                "block_size",
            ),
            (
                SimConfig {
                    max_transfer_bytes: 1000,
                    ..SimConfig::default()
                },
                "max_transfer_bytes",
            ),
            (
                SimConfig {
                    num_blocks: 0,
                    ..SimConfig::default()
                },
                "num_blocks",
            ),
            (
                SimConfig {
                    reset_timeout_ms: 0,
                    ..SimConfig::default()
                },
                "reset_timeout_ms",
            ),
            (
                SimConfig {
                    minor: 3,
                    ..SimConfig::default()
                },
                "minor",
            ),
        ];
        for (config, want) in cases {
            match config.validate() {
                Err(SimError::InvalidConfig { field, .. }) => assert_eq!(field, want),
                other => panic!("{want}: expected InvalidConfig, got {other:?}"),
            }
        }
    }
}
