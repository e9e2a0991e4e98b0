//! SCA-1 register map (docs/accelerator.md §1, §2): offsets and bit fields, nothing else.

/// `ID` value of an SCA-1 function (accelerator.md §1).
pub const ID_VALUE: u32 = 0x5343_4131;
/// What every register reads once the device is gone.
pub const ALL_ONES: u32 = 0xFFFF_FFFF;
/// Contract version implemented: major 1, minor 0.
pub const VERSION_1_0: u32 = 1 << 16;
/// Contract 1.1: 1.0 plus the COPY descriptor (accelerator.md §3.1).
pub const VERSION_1_1: u32 = (1 << 16) | 1;
/// Contract 1.2: 1.1 plus INT_COALESCE.REARM (accelerator.md §9).
pub const VERSION_1_2: u32 = (1 << 16) | 2;

/// Global register offsets.
pub mod global {
    /// ID.
    pub const ID: u64 = 0x000;
    /// VERSION.
    pub const VERSION: u64 = 0x004;
    /// CAP0: queues, log2 max ring, MSI-X vectors, log2 max scatter list.
    pub const CAP0: u64 = 0x008;
    /// CAP1: max transfer in 4 KiB units.
    pub const CAP1: u64 = 0x00C;
    /// CAPACITY (64-bit): blocks.
    pub const CAPACITY: u64 = 0x010;
    /// BLOCK_SIZE.
    pub const BLOCK_SIZE: u64 = 0x018;
    /// TIMEOUTS: stop ms (15:0), reset ms (31:16).
    pub const TIMEOUTS: u64 = 0x01C;
    /// CONTROL.
    pub const CONTROL: u64 = 0x020;
    /// STATUS.
    pub const STATUS: u64 = 0x024;
    /// FATAL_CODE.
    pub const FATAL_CODE: u64 = 0x028;
    /// INT_STATUS.
    pub const INT_STATUS: u64 = 0x030;
    /// INT_STATUS_CLEAR (W1C).
    pub const INT_STATUS_CLEAR: u64 = 0x034;
    /// INT_MASK.
    pub const INT_MASK: u64 = 0x038;
    /// INT_MASK_SET (W1S).
    pub const INT_MASK_SET: u64 = 0x03C;
    /// INT_MASK_CLEAR (W1C).
    pub const INT_MASK_CLEAR: u64 = 0x040;
    /// INT_COALESCE: count (7:0), time µs (23:8), REARM (24, contract 1.2).
    pub const INT_COALESCE: u64 = 0x044;
}

/// INT_COALESCE bits.
pub mod coalesce {
    /// Count (7:0) and time in µs (23:8): the fields every version has.
    pub const COUNT_AND_TIME: u32 = 0x00ff_ffff;
    /// REARM (contract 1.2, accelerator.md §9): a queue's vector is raised at most once per
    /// setting of its INT_STATUS bit; the host re-arms it with INT_STATUS_CLEAR.
    pub const REARM: u32 = 1 << 24;
}

/// CONTROL bits.
pub mod control {
    /// ENABLE.
    pub const ENABLE: u32 = 1 << 0;
    /// SOFT_RESET (reads 1 while resetting).
    pub const SOFT_RESET: u32 = 1 << 1;
}

/// STATUS bits.
pub mod status {
    /// READY.
    pub const READY: u32 = 1 << 0;
    /// FATAL.
    pub const FATAL: u32 = 1 << 1;
    /// BUSY (any queue).
    pub const BUSY: u32 = 1 << 2;
    /// RESETTING.
    pub const RESETTING: u32 = 1 << 3;
}

/// Per-queue register block: `QUEUE_BASE + q * QUEUE_STRIDE + offset`.
pub mod queue {
    /// Base of queue 0's block.
    pub const QUEUE_BASE: u64 = 0x1000;
    /// Stride between queue blocks.
    pub const QUEUE_STRIDE: u64 = 0x100;
    /// SQ_BASE (64-bit).
    pub const SQ_BASE: u64 = 0x00;
    /// CQ_BASE (64-bit).
    pub const CQ_BASE: u64 = 0x08;
    /// RING_SIZE.
    pub const RING_SIZE: u64 = 0x10;
    /// Q_CONTROL.
    pub const Q_CONTROL: u64 = 0x14;
    /// Q_STATUS.
    pub const Q_STATUS: u64 = 0x18;
    /// Q_ERROR.
    pub const Q_ERROR: u64 = 0x1C;
    /// Q_ERROR_INDEX.
    pub const Q_ERROR_INDEX: u64 = 0x20;
    /// Q_VECTOR.
    pub const Q_VECTOR: u64 = 0x24;
    /// Q_CONTROL.RUN.
    pub const RUN: u32 = 1 << 0;
    /// Q_STATUS.BUSY.
    pub const BUSY: u32 = 1 << 0;
    /// Q_STATUS.ERROR.
    pub const ERROR: u32 = 1 << 1;

    /// Offset of register `reg` of queue `q`.
    pub const fn reg(q: u32, reg: u64) -> u64 {
        QUEUE_BASE + q as u64 * QUEUE_STRIDE + reg
    }
}

/// Doorbells, each on its own page (accelerator.md §2).
pub mod doorbell {
    /// Base of the doorbell area.
    pub const BASE: u64 = 0x10000;
    /// Stride between queues' doorbell pairs.
    pub const STRIDE: u64 = 0x2000;

    /// SQ_TAIL doorbell of queue `q`.
    pub const fn sq_tail(q: u32) -> u64 {
        BASE + q as u64 * STRIDE
    }

    /// CQ_HEAD doorbell of queue `q`.
    pub const fn cq_head(q: u32) -> u64 {
        BASE + q as u64 * STRIDE + 0x1000
    }
}

/// BAR0 size for `queues` queues.
pub const fn bar0_len(queues: u32) -> u64 {
    doorbell::BASE + queues as u64 * doorbell::STRIDE
}

/// Decoded CAP0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cap0 {
    /// Queues.
    pub queues: u32,
    /// log2 of the largest ring.
    pub max_ring_log2: u32,
    /// MSI-X vectors.
    pub vectors: u32,
    /// log2 of the largest scatter list.
    pub max_sgl_log2: u32,
}

impl Cap0 {
    /// Decode.
    pub const fn from_bits(bits: u32) -> Self {
        Self {
            queues: bits & 0xff,
            max_ring_log2: (bits >> 8) & 0xff,
            vectors: (bits >> 16) & 0xff,
            max_sgl_log2: (bits >> 24) & 0xff,
        }
    }

    /// Encode.
    pub const fn to_bits(self) -> u32 {
        (self.queues & 0xff)
            | ((self.max_ring_log2 & 0xff) << 8)
            | ((self.vectors & 0xff) << 16)
            | ((self.max_sgl_log2 & 0xff) << 24)
    }
}

/// Decoded TIMEOUTS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Stop handshake bound in ms (§6).
    pub stop_ms: u32,
    /// Reset bound in ms (§7).
    pub reset_ms: u32,
}

impl Timeouts {
    /// Decode.
    pub const fn from_bits(bits: u32) -> Self {
        Self {
            stop_ms: bits & 0xffff,
            reset_ms: bits >> 16,
        }
    }

    /// Encode.
    pub const fn to_bits(self) -> u32 {
        (self.stop_ms & 0xffff) | ((self.reset_ms & 0xffff) << 16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_contract() {
        assert_eq!(queue::reg(2, queue::Q_STATUS), 0x1218);
        assert_eq!(doorbell::sq_tail(1), 0x12000);
        assert_eq!(doorbell::cq_head(1), 0x13000);
        assert_eq!(bar0_len(4), 0x18000);
        let cap = Cap0 {
            queues: 4,
            max_ring_log2: 12,
            vectors: 4,
            max_sgl_log2: 8,
        };
        assert_eq!(Cap0::from_bits(cap.to_bits()), cap);
        assert_eq!(
            Timeouts::from_bits(
                Timeouts {
                    stop_ms: 500,
                    reset_ms: 2000
                }
                .to_bits()
            )
            .reset_ms,
            2000
        );
    }
}
