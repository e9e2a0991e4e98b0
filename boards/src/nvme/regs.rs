//! NVMe controller registers (NVMe base spec 1.4 §3.1): offsets, decoded fields, doorbell
//! addresses, and 64-bit access that a board quirk may split into two 32-bit accesses.

use scst_accel_hal::RegisterIo;

/// What every register reads once the function is gone (surprise removal, a failed link).
pub const ALL_ONES_32: u32 = 0xFFFF_FFFF;

/// Register offsets (NVMe 1.4 §3.1, Figure 78).
pub mod offset {
    /// Controller Capabilities (64-bit).
    pub const CAP: u64 = 0x00;
    /// Version.
    pub const VS: u64 = 0x08;
    /// Interrupt Mask Set (pin/MSI only; not used with MSI-X, §3.1.3).
    pub const INTMS: u64 = 0x0C;
    /// Interrupt Mask Clear.
    pub const INTMC: u64 = 0x10;
    /// Controller Configuration.
    pub const CC: u64 = 0x14;
    /// Controller Status.
    pub const CSTS: u64 = 0x1C;
    /// Admin Queue Attributes.
    pub const AQA: u64 = 0x24;
    /// Admin Submission Queue base (64-bit).
    pub const ASQ: u64 = 0x28;
    /// Admin Completion Queue base (64-bit).
    pub const ACQ: u64 = 0x30;
    /// Controller Ready Timeouts (NVMe 2.0 §3.1.3.21, offset 68h, 32-bit): read only when
    /// CAP.CRMS.CRWMS says the controller has it.
    pub const CRTO: u64 = 0x68;
    /// First doorbell (§3.1.16).
    pub const DOORBELLS: u64 = 0x1000;
}

/// The most of CRTO.CRWMT a ready wait takes, in 500 ms units: 5 minutes
/// ([`Cap::ready_timeout`]).
pub const MAX_CRWMT_UNITS: u16 = 600;

/// Decoded CAP (NVMe 1.4 §3.1.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cap {
    /// Maximum Queue Entries Supported, 0-based (MQES + 1 entries per I/O queue).
    pub mqes: u16,
    /// Contiguous Queues Required.
    pub cqr: bool,
    /// Arbitration Mechanisms Supported (bit 0: weighted round robin, bit 1: vendor).
    pub ams: u8,
    /// Worst-case time for CSTS.RDY to change after CC.EN changes, in 500 ms units.
    pub to: u8,
    /// Doorbell Stride: doorbells are `4 << DSTRD` bytes apart.
    pub dstrd: u8,
    /// NVM Subsystem Reset Supported.
    pub nssrs: bool,
    /// Command Sets Supported (bit 0: NVM command set).
    pub css: u8,
    /// Memory Page Size Minimum: 2 ^ (12 + MPSMIN) bytes.
    pub mpsmin: u8,
    /// Memory Page Size Maximum.
    pub mpsmax: u8,
    /// Controller Ready With Media Support (CAP.CRMS.CRWMS, bit 59, NVMe 2.0 §3.1.3.1): the
    /// controller has the CRTO register, and CAP.TO holds at most FFh of its CRWMT.
    pub crwms: bool,
    /// Controller Ready Independent of Media Support (CAP.CRMS.CRIMS, bit 60). Decoded for
    /// the logs only: this driver leaves CC.CRIME 0 (see [`cc::config`]).
    pub crims: bool,
    /// CRTO.CRWMT (NVMe 2.0 §3.1.3.21, offset 68h, bits 15:0, 500 ms units): the worst-case time
    /// from CC.EN = 1 to CSTS.RDY = 1 with CC.CRIME = 0. Not a CAP field: 0 when decoded, set by
    /// [`Cap::with_crto`] once the register was read. Kept here, not beside CAP in the
    /// controller, so that [`Cap::ready_timeout`] stays the one bound every CSTS.RDY wait and
    /// every bound derived from them (reset, recovery) takes.
    pub crwmt: u16,
}

impl Cap {
    /// Decode the 64-bit register.
    pub const fn from_bits(bits: u64) -> Self {
        Self {
            mqes: (bits & 0xFFFF) as u16,
            cqr: bits & (1 << 16) != 0,
            ams: ((bits >> 17) & 0x3) as u8,
            to: ((bits >> 24) & 0xFF) as u8,
            dstrd: ((bits >> 32) & 0xF) as u8,
            nssrs: bits & (1 << 36) != 0,
            css: ((bits >> 37) & 0xFF) as u8,
            mpsmin: ((bits >> 48) & 0xF) as u8,
            mpsmax: ((bits >> 52) & 0xF) as u8,
            crwms: bits & (1 << 59) != 0,
            crims: bits & (1 << 60) != 0,
            crwmt: 0,
        }
    }

    /// This CAP with CRTO (read from [`offset::CRTO`]) applied: its CRWMT when CRWMS is set,
    /// else nothing (the register is then reserved and may read anything).
    pub const fn with_crto(self, crto: u32) -> Self {
        Self {
            crwmt: if self.crwms { (crto & 0xFFFF) as u16 } else { 0 },
            ..self
        }
    }

    /// Encode (for simulators and tests).
    pub const fn to_bits(self) -> u64 {
        self.mqes as u64
            | (self.cqr as u64) << 16
            | ((self.ams & 0x3) as u64) << 17
            | (self.to as u64) << 24
            | ((self.dstrd & 0xF) as u64) << 32
            | (self.nssrs as u64) << 36
            | (self.css as u64) << 37
            | ((self.mpsmin & 0xF) as u64) << 48
            | ((self.mpsmax & 0xF) as u64) << 52
            | (self.crwms as u64) << 59
            | (self.crims as u64) << 60
    }

    /// The bound on a CSTS.RDY transition: the larger of CAP.TO (§3.1.1) and, when CRWMS is
    /// set, CRTO.CRWMT; at least 500 ms, since a controller reporting 0 still needs time.
    ///
    /// With CRWMS set, CAP.TO is only CRWMT capped at FFh (127.5 s, NVMe 2.0 §3.1.3.1), so a
    /// controller that needs longer to get its media ready says so in CRTO alone. Linux's
    /// `nvme_enable_ctrl()` waits for the larger of the two as well, and warns when CRWMT is
    /// below CAP.TO, which some controllers report wrongly. The same bound serves the waits
    /// for RDY = 0 (Linux's `nvme_disable_ctrl()` takes CAP.TO alone there): a disable first
    /// waits out an enable in progress, which may take CRWMT, and a longer bound on a wait
    /// that ends when RDY clears costs nothing on a controller that clears it in time.
    ///
    /// CRWMT counts up to [`MAX_CRWMT_UNITS`] (5 minutes): the field reaches 9 hours, and the
    /// bound is multiplied into every reset's and recovery's (four and five times it), which a
    /// worker's heartbeat is set ahead by; a garbage CRTO must not blind the watchdog for days.
    /// A controller that truly needs longer fails its bring-up with a timeout, said so.
    pub fn ready_timeout(self) -> std::time::Duration {
        let crwmt = self.crwmt.min(MAX_CRWMT_UNITS);
        let units = u64::from(self.to).max(u64::from(crwmt)).max(1);
        std::time::Duration::from_millis(500 * units)
    }

    /// Smallest memory page size in bytes.
    pub const fn min_page_size(self) -> u64 {
        1 << (12 + self.mpsmin as u32)
    }

    /// Offset of the doorbell of queue `qid`: `k = 0` SQ tail, `k = 1` CQ head (§3.1.16).
    pub const fn doorbell(self, qid: u16, completion: bool) -> u64 {
        offset::DOORBELLS + (2 * qid as u64 + completion as u64) * (4 << self.dstrd as u64)
    }
}

/// CC fields (NVMe 1.4 §3.1.5).
pub mod cc {
    /// Enable.
    pub const EN: u32 = 1 << 0;
    /// I/O Command Set Selected: 000b NVM.
    pub const CSS_NVM: u32 = 0 << 4;
    /// Memory Page Size: 2 ^ (12 + MPS); 0 = 4 KiB.
    pub const MPS_SHIFT: u32 = 7;
    /// Arbitration Mechanism Selected: 000b round robin.
    pub const AMS_RR: u32 = 0 << 11;
    /// Shutdown Notification field.
    pub const SHN_MASK: u32 = 0x3 << 14;
    /// Shutdown Notification: normal shutdown.
    pub const SHN_NORMAL: u32 = 0x1 << 14;
    /// I/O Submission Queue Entry Size: 2^6 = 64 bytes.
    pub const IOSQES_64: u32 = 6 << 16;
    /// I/O Completion Queue Entry Size: 2^4 = 16 bytes.
    pub const IOCQES_16: u32 = 4 << 20;

    /// The configuration this driver runs with: NVM command set, 4 KiB pages, round robin,
    /// 64-byte SQEs, 16-byte CQEs; `enable` sets EN. CC.CRIME (bit 24, NVMe 2.0 §3.1.3.5)
    /// stays 0, as Linux's `nvme_enable_ctrl()` leaves it: CSTS.RDY then means the media is
    /// ready too, so no command completes Admin Command Media Not Ready, and CRTO.CRWMT is the
    /// enable's bound ([`Cap::ready_timeout`](super::Cap::ready_timeout)).
    pub const fn config(enable: bool) -> u32 {
        CSS_NVM | AMS_RR | IOSQES_64 | IOCQES_16 | enable as u32
    }
}

/// CSTS fields (NVMe 1.4 §3.1.6).
pub mod csts {
    /// Ready.
    pub const RDY: u32 = 1 << 0;
    /// Controller Fatal Status.
    pub const CFS: u32 = 1 << 1;
    /// Shutdown Status field.
    pub const SHST_MASK: u32 = 0x3 << 2;
    /// Shutdown Status: shutdown processing complete.
    pub const SHST_COMPLETE: u32 = 0x2 << 2;
    /// Processing Paused.
    pub const PP: u32 = 1 << 5;
}

/// AQA value for an admin queue pair of `entries` entries each (0-based sizes, §3.1.8).
pub const fn aqa(entries: u16) -> u32 {
    let n = (entries - 1) as u32 & 0xFFF;
    n | (n << 16)
}

/// BAR0 access with the board's 64-bit quirk applied.
#[derive(Clone, Copy)]
pub struct Registers<'a> {
    bar: &'a dyn RegisterIo,
    split_64bit: bool,
}

impl<'a> Registers<'a> {
    /// Wrap `bar`; with `split_64bit` every 64-bit access is two 32-bit ones, low then high.
    pub fn new(bar: &'a dyn RegisterIo, split_64bit: bool) -> Self {
        Self { bar, split_64bit }
    }

    /// 32-bit read.
    pub fn read32(&self, offset: u64) -> u32 {
        self.bar.read32(offset)
    }

    /// 32-bit write.
    pub fn write32(&self, offset: u64, value: u32) {
        self.bar.write32(offset, value);
    }

    /// 64-bit read (low half first when split).
    pub fn read64(&self, offset: u64) -> u64 {
        if self.split_64bit {
            let low = self.bar.read32(offset);
            let high = self.bar.read32(offset + 4);
            u64::from(low) | (u64::from(high) << 32)
        } else {
            self.bar.read64(offset)
        }
    }

    /// 64-bit write (low half first when split, as NVMe 1.4 §3.1 allows for 64-bit registers).
    pub fn write64(&self, offset: u64, value: u64) {
        if self.split_64bit {
            self.bar.write32(offset, value as u32);
            self.bar.write32(offset + 4, (value >> 32) as u32);
        } else {
            self.bar.write64(offset, value);
        }
    }

    /// CAP.
    pub fn cap(&self) -> u64 {
        self.read64(offset::CAP)
    }

    /// CSTS.
    pub fn csts(&self) -> u32 {
        self.read32(offset::CSTS)
    }

    /// CC.
    pub fn cc(&self) -> u32 {
        self.read32(offset::CC)
    }

    /// CRTO (a 32-bit register: no 64-bit quirk applies).
    pub fn crto(&self) -> u32 {
        self.read32(offset::CRTO)
    }
}

/// CAP, VS, CC, CSTS, AQA and INTMS decoded as one line per register, for logs and `diag`.
pub fn describe(regs: &Registers<'_>) -> String {
    let cap_bits = regs.cap();
    let cap = Cap::from_bits(cap_bits);
    let vs = regs.read32(offset::VS);
    let cc = regs.cc();
    let csts = regs.csts();
    let aqa = regs.read32(offset::AQA);
    let intms = regs.read32(offset::INTMS);
    format!(
        "CAP   {cap_bits:#018x}: MQES {} CQR {} TO {} ms DSTRD {} CSS {:#x} MPSMIN {} MPSMAX {} \
         CRWMS {} CRIMS {}\n\
         VS    {vs:#010x}: {}.{}.{}\n\
         CC    {cc:#010x}: EN {} CSS {} MPS {} AMS {} SHN {} IOSQES {} IOCQES {}\n\
         CSTS  {csts:#010x}: RDY {} CFS {} SHST {} PP {}\n\
         AQA   {aqa:#010x}: ASQS {} ACQS {}\n\
         INTMS {intms:#010x}\n\
         ASQ   {:#018x}  ACQ {:#018x}\n{}",
        u32::from(cap.mqes) + 1,
        u8::from(cap.cqr),
        u32::from(cap.to) * 500,
        cap.dstrd,
        cap.css,
        cap.mpsmin,
        cap.mpsmax,
        u8::from(cap.crwms),
        u8::from(cap.crims),
        vs >> 16,
        (vs >> 8) & 0xFF,
        vs & 0xFF,
        cc & 1,
        (cc >> 4) & 0x7,
        (cc >> 7) & 0xF,
        (cc >> 11) & 0x7,
        (cc >> 14) & 0x3,
        (cc >> 16) & 0xF,
        (cc >> 20) & 0xF,
        csts & 1,
        (csts >> 1) & 1,
        (csts >> 2) & 0x3,
        (csts >> 5) & 1,
        (aqa & 0xFFF) + 1,
        ((aqa >> 16) & 0xFFF) + 1,
        regs.read64(offset::ASQ),
        regs.read64(offset::ACQ),
        if cap.crwms {
            let crto = regs.crto();
            format!(
                "CRTO  {crto:#010x}: CRWMT {} ms CRIMT {} ms\n",
                u64::from(crto & 0xFFFF) * 500,
                u64::from(crto >> 16) * 500
            )
        } else {
            String::new()
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_round_trips_and_decodes_qemu_values() {
        // QEMU 7.2's model: MQES 2047, CQR 1, TO 15, DSTRD 0, CSS NVM, MPSMIN 0, MPSMAX 4.
        let cap = Cap {
            mqes: 2047,
            cqr: true,
            ams: 0,
            to: 15,
            dstrd: 0,
            nssrs: false,
            css: 1,
            mpsmin: 0,
            mpsmax: 4,
            crwms: false,
            crims: false,
            crwmt: 0,
        };
        let bits = cap.to_bits();
        assert_eq!(bits & 0xFFFF, 2047);
        assert_eq!((bits >> 24) & 0xFF, 15);
        assert_eq!((bits >> 37) & 1, 1);
        assert_eq!(Cap::from_bits(bits), cap);
        assert_eq!(cap.ready_timeout(), std::time::Duration::from_millis(7500));
        assert_eq!(cap.min_page_size(), 4096);
    }

    /// CRMS (CAP bits 60:59) decodes, and CRTO.CRWMT raises the ready timeout above CAP.TO
    /// only when CRWMS is set and only when it is the larger (NVMe 2.0 §3.1.3.1, CRTO at offset
    /// 68h, §3.1.3.21; Linux's `nvme_enable_ctrl()`).
    #[test]
    fn crms_and_crto_decode_and_the_larger_ready_timeout_wins() {
        use std::time::Duration;
        let base = Cap::from_bits(0x0000_0020_0100_03FF); // TO 1 (500 ms), CSS NVM, MQES 1023
        assert!(!base.crwms && !base.crims);
        assert_eq!(base.ready_timeout(), Duration::from_millis(500));
        let crto = 8 | (3 << 16); // CRWMT 4 s, CRIMT 1.5 s
        assert_eq!(base.with_crto(crto).crwmt, 0, "CRTO is reserved without CRWMS");
        assert_eq!(base.with_crto(crto).ready_timeout(), Duration::from_millis(500));

        let cap = Cap::from_bits(base.to_bits() | 1 << 59);
        assert!(cap.crwms && !cap.crims);
        assert_eq!(cap.to, 1);
        let cap = cap.with_crto(crto);
        assert_eq!(cap.crwmt, 8);
        assert_eq!(cap.ready_timeout(), Duration::from_secs(4), "CRWMT above CAP.TO");
        // CRWMT below CAP.TO (a wrong CRTO): CAP.TO is kept.
        let long = Cap { to: 20, ..cap };
        assert_eq!(long.ready_timeout(), Duration::from_secs(10));
        // CRWMT beyond what CAP.TO can hold: 0x200 units, 256 s.
        assert_eq!(
            Cap { to: 0xFF, ..cap }.with_crto(0x200).ready_timeout(),
            Duration::from_secs(256)
        );
        // A garbage CRWMT (0xFFFF units, 9 hours) counts up to 5 minutes.
        assert_eq!(
            Cap { to: 0xFF, ..cap }.with_crto(0xFFFF).ready_timeout(),
            Duration::from_secs(300)
        );

        let both = Cap::from_bits(1 << 59 | 1 << 60);
        assert!(both.crwms && both.crims);
        assert_eq!(
            both.to_bits(),
            1 << 59 | 1 << 60,
            "CRMS round-trips; CRWMT is no CAP bit"
        );
        assert_eq!(cap.to_bits(), base.to_bits() | 1 << 59);
    }

    #[test]
    fn doorbells_follow_the_stride() {
        let mut cap = Cap::from_bits(0);
        assert_eq!(cap.doorbell(0, false), 0x1000);
        assert_eq!(cap.doorbell(0, true), 0x1004);
        assert_eq!(cap.doorbell(3, false), 0x1018);
        assert_eq!(cap.doorbell(3, true), 0x101C);
        cap.dstrd = 2; // 16-byte stride
        assert_eq!(cap.doorbell(1, false), 0x1020);
        assert_eq!(cap.doorbell(1, true), 0x1030);
    }

    #[test]
    fn cc_and_aqa_encode_the_spec_layout() {
        assert_eq!(cc::config(true), 0x0046_0001);
        assert_eq!(cc::config(false), 0x0046_0000);
        assert_eq!(aqa(32), 0x001F_001F);
    }
}
