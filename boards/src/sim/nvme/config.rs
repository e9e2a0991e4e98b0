//! [`NvmeSimConfig`]: the geometry and limits of one simulated NVMe controller.

use super::super::SimError;
use super::spec::PAGE_SIZE;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering;

/// Largest number of I/O queue pairs a model offers (it keeps BAR0 at 8 KiB).
pub const MAX_IO_QUEUES: u16 = 64;

/// Largest MDTS accepted: 2^10 pages of 4 KiB = 4 MiB per command, the bound of the model's
/// per-command bounce buffer.
pub const MAX_MDTS: u8 = 10;

/// The simulated controller's capabilities and its one namespace. [`Default`] is a small
/// controller: 512-byte blocks, 64 MiB, 4 I/O queue pairs, 5 MSI-X vectors, MDTS 5.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NvmeSimConfig {
    /// Namespace 1's logical block size (Identify Namespace LBAF0.LBADS): a power of two
    /// from 512 to 65536 ([`MAX_BLOCK_SIZE`], the largest the driver serves), within one
    /// transfer of `mdts`. Blocks above 4 KiB, beyond a page, are what make a small `wzsl`
    /// hold less than one block.
    pub block_size: u32,
    /// Namespace 1's size in blocks (NSZE = NCAP = NUSE), at least 1.
    pub num_blocks: u64,
    /// I/O queue pairs offered (the most Set Features Number of Queues grants),
    /// 1..=[`MAX_IO_QUEUES`].
    pub queues: u16,
    /// MSI-X vectors of the function, 1..=2048 (the admin CQ uses vector 0).
    pub interrupts: u32,
    /// Maximum Data Transfer Size as Identify reports it: 2^mdts pages of 4 KiB,
    /// 1..=[`MAX_MDTS`]. Transfers above it complete with Invalid Field in Command.
    pub mdts: u8,
    /// Namespace 1's NGUID (Identify Namespace bytes 119:104), `None`: derived when the
    /// controller is built from the pid and a process-wide counter, so two simulated
    /// controllers (in one process or in two) report different ones, as two drives would.
    pub nguid: Option<[u8; 16]>,
    /// Namespace 1's EUI64 (Identify Namespace bytes 127:120), `None`: derived like `nguid`.
    pub eui64: Option<[u8; 8]>,
    /// The Copy command (NVMe 2.0 NVM Command Set §3.3.1, source range format 0): its
    /// largest single source range and largest copy, in blocks (Identify Namespace MSSRL and
    /// MCL); 0 = no Copy (ONCS bit 8 clear). QEMU's model reports Copy with 128 and 128.
    pub copy_max_blocks: u16,
    /// The fused Compare and Write (NVMe 1.4 §4.12, §6.2): its Atomic Compare & Write Unit
    /// in blocks (Identify Controller ACWU, reported 0's based), the most blocks a fused
    /// operation may cover; 0 = neither Compare nor fused operations (ONCS bit 0 and FUSES
    /// bit 0 clear, as QEMU 7.2's model reports).
    pub compare_write_max_blocks: u16,
    /// Write Zeroes (ONCS bit 3, optional: NVMe 1.4 §6.16); default true, as QEMU's model.
    /// Without it the opcode completes Invalid Command Opcode.
    pub write_zeroes: bool,
    /// Namespace 1's DLFEAT (Identify Namespace byte 33, NVMe 1.4 Figure 245): bits 2:0 are
    /// 001b (default: Dataset Management deallocates and the blocks read zeroes, as QEMU's
    /// model reports) or 000b (nothing reported: the model then keeps the data on a
    /// deallocation, which Dataset Management, advisory, allows); bit 3: Write Zeroes takes
    /// DEAC. Other bits are refused.
    pub dlfeat: u8,
    /// Interrupts of the I/O queues (the simulator's `irq_batch` module): at most this
    /// many completions, of commands a worker takes back to back, share one MSI-X raise,
    /// 1..=[`MAX_IRQ_BATCH`]; 1 raises the vector for every completion at once.
    pub irq_batch: u32,
    /// ...and a completion waits at most this many microseconds for others to share its raise
    /// (looked at before the worker takes its next command), 0..=[`MAX_IRQ_HOLD_MICROS`].
    pub irq_hold_micros: u32,
    /// Whether the thread that writes an I/O SQ's tail doorbell executes the commands itself
    /// when it can do so without waiting (no fault standing, the SQ's worker idle, CQ room:
    /// `worker::run_inline`), instead of waking the SQ's worker thread. On by default: a real
    /// controller's work costs the host no CPU, and the hand-off to a thread costs it two
    /// context switches per doorbell. Off, every command runs on the worker threads, with the
    /// timing of a controller that answers later.
    pub inline_doorbells: bool,
    /// CAP.TO (§3.1.1), in 500 ms units, 1..=255: what the controller advertises as the worst
    /// case of a CSTS.RDY transition. Default 20 (10 s). The model itself takes
    /// [`NvmeSimConfig::disable_micros`] for a disable, whatever it advertises.
    pub cap_to: u8,
    /// CRTO.CRWMT (NVMe 2.0 §3.1.3.21, offset 68h, bits 15:0), in 500 ms units: the controller's
    /// own worst case from CC.EN = 1 to CSTS.RDY = 1. Non-zero sets CAP.CRMS.CRWMS (bit 59)
    /// and makes CRTO read it; 0 (default): CRWMS clear and CRTO reads 0, as an NVMe 1.x
    /// controller. Not checked against `cap_to`: a `cap_to` below it models a controller whose
    /// CAP.TO understates its worst case (CAP.TO holds at most FFh of CRWMT, §3.1.3.1).
    pub crwmt: u16,
    /// How long this model takes from CC.EN 0→1 to CSTS.RDY = 1, in microseconds, at most
    /// [`MAX_ENABLE_MICROS`]; default 2000. Set it above CAP.TO (and below `crwmt`) to model a
    /// controller that gets its media ready later than CAP.TO says.
    pub enable_micros: u32,
    /// RTD3 Entry Latency (Identify Controller bytes 91:88, §5.15.2.1): the microseconds the
    /// controller says a normal shutdown (CC.SHN = 01b to CSTS.SHST = 10b) may take; 0 = not
    /// reported (as QEMU's model), at most [`MAX_SHUTDOWN_MICROS`].
    pub rtd3e_micros: u32,
    /// How long this model takes from CC.SHN = 01b to CSTS.SHST = 10b, in microseconds, at
    /// most [`MAX_SHUTDOWN_MICROS`]; default 2000. Set it above RTD3E to model a controller
    /// slower than it reports, or near RTD3E to model one that needs what it reports.
    pub shutdown_micros: u32,
    /// How long this model takes from CC.EN 1→0 to CSTS.RDY = 0 (§7.3.2), in microseconds, at
    /// most [`MAX_DISABLE_MICROS`]; default 0 (RDY clears once no worker holds a command). A
    /// function reset is not slowed.
    pub disable_micros: u32,
    /// Do nothing for a write's FUA bit (CDW12 bit 30), as QEMU 7.2's model does (measured:
    /// docs/nvme.md "FUA"): the write completes without the medium's flush, only a Flush
    /// command makes it stable. Default false (NVMe 1.4 §6.15: FUA makes the write stable
    /// before it completes). The board quirk `fua_ignored` is the driver's answer to it.
    pub fua_ignored: bool,
    /// The index of namespace 1's LBA format, 0..=63: the namespace reports this many formats
    /// and one more (NLBAF = the index), `block_size` at this index, another size (4096 for
    /// 512, else 512) at every other, with FLBAS bits 3:0 and 6:5 naming it (NVMe 2.0 Base
    /// Specification Figure 276). Default 0: one format, as NVMe 1.4 controllers report.
    pub lba_format_index: u8,
    /// Dataset Management Range Size Limit (DMRSL) in blocks, reported in the NVM Command Set
    /// Identify Controller data (CNS 06h, CSI 00h; NVM Command Set Specification 1.0
    /// §4.1.5.3): a Dataset Management range longer than it completes Invalid Field in
    /// Command, as a controller reporting it refuses it. Default 0: no limit (QEMU's model
    /// reports its block layer's largest request).
    pub dmrsl: u32,
    /// Write Zeroes Size Limit (WZSL), reported in the NVM Command Set Identify Controller data
    /// (CNS 06h, byte 1): the most one Write Zeroes may zero is 2 ^ `wzsl` pages of 4 KiB (the
    /// minimum memory page size), 0..=[`MAX_WZSL`]; a Write Zeroes over more blocks completes
    /// Invalid Field in Command, as a controller reporting it refuses it. Default 0: no limit.
    pub wzsl: u8,
    /// Answer Identify CNS 06h (the I/O Command Set specific controller data, NVMe 2.0);
    /// default true. False: Invalid Field in Command, as a controller that predates NVMe 2.0
    /// may answer it (its DMRSL then unknown to the host, whatever `dmrsl` is).
    pub identify_io_command_set: bool,
}

/// Entries of the Identify Namespace LBA Format table (bytes 383:128, NVM Command Set
/// Specification 1.0 Figure 97): [`NvmeSimConfig::lba_format_index`] is below it.
pub const MAX_LBA_FORMATS: usize = 64;

/// Largest [`NvmeSimConfig::block_size`]: 64 KiB (LBADS 16), the largest block the driver
/// serves.
pub const MAX_BLOCK_SIZE: u32 = 65536;

/// Largest [`NvmeSimConfig::rtd3e_micros`] and [`NvmeSimConfig::shutdown_micros`]: 120 s.
pub const MAX_SHUTDOWN_MICROS: u32 = 120_000_000;
/// Largest [`NvmeSimConfig::disable_micros`]: 60 s.
pub const MAX_DISABLE_MICROS: u32 = 60_000_000;
/// Largest [`NvmeSimConfig::enable_micros`]: 60 s.
pub const MAX_ENABLE_MICROS: u32 = 60_000_000;
/// Largest [`NvmeSimConfig::wzsl`]: 2^20 pages of 4 KiB, 4 GiB, more than the 16-bit NLB of a
/// Write Zeroes covers at any block size.
pub const MAX_WZSL: u8 = 20;

/// [`NvmeSimConfig::dlfeat`] bits 2:0 = 001b: deallocated blocks read zeroes.
pub const DLFEAT_READS_ZEROES: u8 = 0b001;
/// [`NvmeSimConfig::dlfeat`] bit 3: Write Zeroes supports the Deallocate bit.
pub const DLFEAT_WRITE_ZEROES_DEAC: u8 = 0b1000;

/// Largest [`NvmeSimConfig::irq_batch`].
pub const MAX_IRQ_BATCH: u32 = 256;
/// Largest [`NvmeSimConfig::irq_hold_micros`]: one second.
pub const MAX_IRQ_HOLD_MICROS: u32 = 1_000_000;

impl Default for NvmeSimConfig {
    fn default() -> Self {
        Self {
            block_size: 512,
            num_blocks: (64 << 20) / 512,
            queues: 4,
            interrupts: 5,
            mdts: 5,
            nguid: None,
            eui64: None,
            copy_max_blocks: 8192,
            compare_write_max_blocks: 16,
            write_zeroes: true,
            dlfeat: DLFEAT_READS_ZEROES,
            irq_batch: 8,
            irq_hold_micros: 20,
            inline_doorbells: true,
            cap_to: 20,
            crwmt: 0,
            enable_micros: 2000,
            rtd3e_micros: 0,
            shutdown_micros: 2000,
            disable_micros: 0,
            fua_ignored: false,
            lba_format_index: 0,
            dmrsl: 0,
            wzsl: 0,
            identify_io_command_set: true,
        }
    }
}

impl NvmeSimConfig {
    /// Check every field.
    ///
    /// # Errors
    /// [`SimError::InvalidConfig`] naming the field and the accepted range.
    pub fn validate(&self) -> Result<(), SimError> {
        let bad = |field: &'static str, reason: String| Err(SimError::InvalidConfig { field, reason });
        if !self.block_size.is_power_of_two() || !(512..=MAX_BLOCK_SIZE).contains(&self.block_size) {
            return bad(
                "block_size",
                format!(
                    "{} is not a power of two from 512 to {MAX_BLOCK_SIZE}",
                    self.block_size
                ),
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
        if !(1..=MAX_IO_QUEUES).contains(&self.queues) {
            return bad("queues", format!("{} is not in 1..={MAX_IO_QUEUES}", self.queues));
        }
        if !(1..=2048).contains(&self.interrupts) {
            return bad(
                "interrupts",
                format!("{} is not in 1..=2048 (MSI-X)", self.interrupts),
            );
        }
        if !(1..=MAX_MDTS).contains(&self.mdts) {
            return bad("mdts", format!("{} is not in 1..={MAX_MDTS}", self.mdts));
        }
        // A controller that cannot move one block in a command could not be read at all.
        if self.max_transfer_bytes() < u64::from(self.block_size) {
            return bad(
                "mdts",
                format!(
                    "{} ({} bytes) is less than one block of {}",
                    self.mdts,
                    self.max_transfer_bytes(),
                    self.block_size
                ),
            );
        }
        if self.dlfeat & !(0b111 | DLFEAT_WRITE_ZEROES_DEAC) != 0 || self.dlfeat & 0b111 > DLFEAT_READS_ZEROES
        {
            return bad(
                "dlfeat",
                format!(
                    "{:#x}: bits 2:0 must be 000b or 001b, only bit 3 besides",
                    self.dlfeat
                ),
            );
        }
        if !(1..=MAX_IRQ_BATCH).contains(&self.irq_batch) {
            return bad(
                "irq_batch",
                format!("{} is not in 1..={MAX_IRQ_BATCH}", self.irq_batch),
            );
        }
        if self.irq_hold_micros > MAX_IRQ_HOLD_MICROS {
            return bad(
                "irq_hold_micros",
                format!("{} is above {MAX_IRQ_HOLD_MICROS}", self.irq_hold_micros),
            );
        }
        if self.cap_to == 0 {
            return bad("cap_to", "0 is not in 1..=255 (500 ms units)".to_owned());
        }
        if self.enable_micros > MAX_ENABLE_MICROS {
            return bad(
                "enable_micros",
                format!("{} is above {MAX_ENABLE_MICROS}", self.enable_micros),
            );
        }
        if self.rtd3e_micros > MAX_SHUTDOWN_MICROS {
            return bad(
                "rtd3e_micros",
                format!("{} is above {MAX_SHUTDOWN_MICROS}", self.rtd3e_micros),
            );
        }
        if self.shutdown_micros > MAX_SHUTDOWN_MICROS {
            return bad(
                "shutdown_micros",
                format!("{} is above {MAX_SHUTDOWN_MICROS}", self.shutdown_micros),
            );
        }
        if self.disable_micros > MAX_DISABLE_MICROS {
            return bad(
                "disable_micros",
                format!("{} is above {MAX_DISABLE_MICROS}", self.disable_micros),
            );
        }
        if self.wzsl > MAX_WZSL {
            return bad("wzsl", format!("{} is above {MAX_WZSL}", self.wzsl));
        }
        if usize::from(self.lba_format_index) >= MAX_LBA_FORMATS {
            return bad(
                "lba_format_index",
                format!("{} is not below {MAX_LBA_FORMATS}", self.lba_format_index),
            );
        }
        Ok(())
    }

    /// This config with `nguid` and `eui64` filled in: given ones are kept, absent ones derived
    /// (pid, then a process-wide counter). The company id is a CID-format value (ZYXM = 1010,
    /// the U/L bit set: locally administered), not a registered OUI, so it can never equal a
    /// real drive's.
    pub(crate) fn with_device_ids(mut self) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(1);
        const CID: [u8; 3] = [0x5A, 0xCC, 0xE1];
        if self.nguid.is_some() && self.eui64.is_some() {
            return self;
        }
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // NGUID (NVMe 1.4 Figure 245 note): identifier extension (8), company id (3), vendor
        // specific extension identifier (5), big-endian as the bytes of the field.
        let mut nguid = [0u8; 16];
        nguid[..4].copy_from_slice(&pid.to_be_bytes());
        nguid[4..8].copy_from_slice(&n.to_be_bytes());
        nguid[8..11].copy_from_slice(&CID);
        nguid[11..16].copy_from_slice(b"NVSIM");
        // EUI64: company id (3), then 5 bytes: the pid's low 24 bits and the counter's low 16.
        let mut eui64 = [0u8; 8];
        eui64[..3].copy_from_slice(&CID);
        eui64[3..6].copy_from_slice(&pid.to_be_bytes()[1..]);
        eui64[6..8].copy_from_slice(&(n as u16).to_be_bytes());
        self.nguid.get_or_insert(nguid);
        self.eui64.get_or_insert(eui64);
        self
    }

    /// Largest data transfer of one command in bytes (MDTS in units of CAP.MPSMIN = 4 KiB).
    pub fn max_transfer_bytes(&self) -> u64 {
        PAGE_SIZE << self.mdts
    }

    /// Namespace 1's capacity in bytes.
    pub fn capacity_bytes(&self) -> u64 {
        self.num_blocks * u64::from(self.block_size)
    }

    /// BAR0 length: the registers' 4 KiB page, then the doorbells of the admin queue pair and
    /// every I/O queue pair (8 bytes each with CAP.DSTRD = 0), rounded up to 4 KiB.
    pub fn bar0_len(&self) -> u64 {
        PAGE_SIZE + (8 * (u64::from(self.queues) + 1)).next_multiple_of(PAGE_SIZE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_device_ids_differ_between_controllers_and_given_ones_are_kept() {
        let a = NvmeSimConfig::default().with_device_ids();
        let b = NvmeSimConfig::default().with_device_ids();
        assert_ne!(a.nguid, b.nguid);
        assert_ne!(a.eui64, b.eui64);
        assert!(a.nguid.is_some_and(|g| g != [0; 16]));
        assert!(a.eui64.is_some_and(|e| e != [0; 8]));
        let given = NvmeSimConfig {
            nguid: Some([7; 16]),
            eui64: Some([9; 8]),
            ..NvmeSimConfig::default()
        }
        .with_device_ids();
        assert_eq!((given.nguid, given.eui64), (Some([7; 16]), Some([9; 8])));
    }

    #[test]
    fn each_field_out_of_range_is_named() {
        let cases: [(&str, NvmeSimConfig); 21] = [
            (
                "wzsl",
                NvmeSimConfig {
                    wzsl: MAX_WZSL + 1,
                    ..Default::default()
                },
            ),
            (
                "cap_to",
                NvmeSimConfig {
                    cap_to: 0,
                    ..Default::default()
                },
            ),
            (
                "rtd3e_micros",
                NvmeSimConfig {
                    rtd3e_micros: MAX_SHUTDOWN_MICROS + 1,
                    ..Default::default()
                },
            ),
            (
                "shutdown_micros",
                NvmeSimConfig {
                    shutdown_micros: MAX_SHUTDOWN_MICROS + 1,
                    ..Default::default()
                },
            ),
            (
                "disable_micros",
                NvmeSimConfig {
                    disable_micros: MAX_DISABLE_MICROS + 1,
                    ..Default::default()
                },
            ),
            (
                "enable_micros",
                NvmeSimConfig {
                    enable_micros: MAX_ENABLE_MICROS + 1,
                    ..Default::default()
                },
            ),
            (
                "dlfeat",
                NvmeSimConfig {
                    dlfeat: 0b010,
                    ..Default::default()
                },
            ),
            (
                "dlfeat",
                NvmeSimConfig {
                    dlfeat: 0b1_0000,
                    ..Default::default()
                },
            ),
            (
                "irq_batch",
                NvmeSimConfig {
                    irq_batch: 0,
                    ..Default::default()
                },
            ),
            (
                "irq_batch",
                NvmeSimConfig {
                    irq_batch: MAX_IRQ_BATCH + 1,
                    ..Default::default()
                },
            ),
            (
                "irq_hold_micros",
                NvmeSimConfig {
                    irq_hold_micros: MAX_IRQ_HOLD_MICROS + 1,
                    ..Default::default()
                },
            ),
            (
                "block_size",
                NvmeSimConfig {
                    block_size: 3072,
                    ..Default::default()
                },
            ),
            (
                "block_size",
                NvmeSimConfig {
                    block_size: 256,
                    ..Default::default()
                },
            ),
            (
                "block_size",
                NvmeSimConfig {
                    block_size: MAX_BLOCK_SIZE * 2,
                    ..Default::default()
                },
            ),
            (
                "mdts",
                NvmeSimConfig {
                    block_size: 16384,
                    mdts: 1,
                    ..Default::default()
                },
            ),
            (
                "num_blocks",
                NvmeSimConfig {
                    num_blocks: 0,
                    ..Default::default()
                },
            ),
            (
                "queues",
                NvmeSimConfig {
                    queues: 0,
                    ..Default::default()
                },
            ),
            (
                "queues",
                NvmeSimConfig {
                    queues: MAX_IO_QUEUES + 1,
                    ..Default::default()
                },
            ),
            (
                "interrupts",
                NvmeSimConfig {
                    interrupts: 0,
                    ..Default::default()
                },
            ),
            (
                "mdts",
                NvmeSimConfig {
                    mdts: 0,
                    ..Default::default()
                },
            ),
            (
                "mdts",
                NvmeSimConfig {
                    mdts: MAX_MDTS + 1,
                    ..Default::default()
                },
            ),
        ];
        for (field, config) in cases {
            match config.validate() {
                Err(SimError::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
        NvmeSimConfig::default().validate().expect("the default is valid");
        for block_size in [1024, 16384, MAX_BLOCK_SIZE] {
            let config = NvmeSimConfig {
                block_size,
                ..Default::default()
            };
            config.validate().expect("a power of two within one transfer");
        }
    }

    #[test]
    fn bar_holds_every_doorbell() {
        let config = NvmeSimConfig {
            queues: MAX_IO_QUEUES,
            ..Default::default()
        };
        assert_eq!(config.bar0_len(), 0x2000);
        assert_eq!(NvmeSimConfig::default().max_transfer_bytes(), 128 * 1024);
    }
}
