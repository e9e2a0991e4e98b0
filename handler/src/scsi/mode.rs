//! Mode parameters (SPC-4 §7.5): the caching (08h), control (0Ah) and informational exceptions
//! control (1Ch) pages; MODE SENSE (6)/(10) and MODE SELECT (6)/(10).
//!
//! Each page is kept as its wire bytes together with a mask of the bits MODE SELECT may change:
//! WCE (caching), DEXCPT/MRIE/interval timer/report count (informational exceptions). Nothing
//! of the control page is changeable: D_SENSE is the value the device was registered with (see
//! [`ModePages::changeable`]). Saving pages is not supported (PS=0, SP=1 and PC=11b are
//! refused).

use super::caps::Capabilities;
use super::cdb::ModeSenseCdb;
use super::opcodes::highest_bit;
use super::sense::asc;
use super::sense::sense_key;
use super::sense::Sense;

const CACHING: u8 = 0x08;
const CONTROL: u8 = 0x0A;
const INFORMATIONAL_EXCEPTIONS: u8 = 0x1C;
/// MODE SENSE page code for "all pages".
const ALL_PAGES: u8 = 0x3F;
/// MODE SENSE subpage code for "all subpages".
const ALL_SUBPAGES: u8 = 0xFF;

/// The three mode pages, as wire bytes (byte 0 page code, byte 1 page length).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ModePages {
    caching: [u8; 20],
    control: [u8; 12],
    informational_exceptions: [u8; 12],
}

impl ModePages {
    /// Default values: WCE and D_SENSE from the configuration; queue algorithm modifier 1
    /// (unrestricted reordering, as SCST's fileio registers); informational exception
    /// reporting disabled (DEXCPT).
    pub fn defaults(caps: &Capabilities) -> Self {
        let mut caching = [0u8; 20];
        caching[0] = CACHING;
        caching[1] = 0x12;
        if caps.write_cache {
            caching[2] |= 0x04; // WCE
        }
        let mut control = [0u8; 12];
        control[0] = CONTROL;
        control[1] = 0x0A;
        if caps.d_sense {
            control[2] |= 0x04; // D_SENSE
        }
        // TST 001b (per I_T nexus task sets) and QAM 1: what scst-accel registers with SCST
        // (`transport::register::default_options`: tst 1, queue_alg 1), which SCST enforces.
        control[2] |= 0x20;
        control[3] = 0x10; // QUEUE ALGORITHM MODIFIER 1
        let mut iec = [0u8; 12];
        iec[0] = INFORMATIONAL_EXCEPTIONS;
        iec[1] = 0x0A;
        iec[2] = 0x08; // DEXCPT
        Self {
            caching,
            control,
            informational_exceptions: iec,
        }
    }

    /// The changeable-values masks (PC=01b).
    ///
    /// D_SENSE (control mode page) is not changeable: its changeable value is 0, so a MODE
    /// SELECT setting it otherwise is refused with INVALID FIELD IN PARAMETER LIST and the
    /// field pointer (SPC-4 MODE SELECT: a field the device server does not allow to change).
    /// The target core makes sense data too (SCST's unit attentions, its copy manager's errors)
    /// in the format it was registered with (scst_user's `Opt::d_sense`, which only SET_OPTIONS
    /// changes): were D_SENSE changeable here, one LUN would answer in two formats.
    fn changeable() -> Self {
        let mut caching = [0u8; 20];
        caching[0] = CACHING;
        caching[1] = 0x12;
        caching[2] = 0x04; // WCE
        let mut control = [0u8; 12];
        control[0] = CONTROL;
        control[1] = 0x0A;
        let mut iec = [0xFFu8; 12];
        iec[0] = INFORMATIONAL_EXCEPTIONS;
        iec[1] = 0x0A;
        iec[2] = 0x08; // DEXCPT
        iec[3] = 0x0F; // MRIE
        Self {
            caching,
            control,
            informational_exceptions: iec,
        }
    }

    /// Current WCE.
    pub fn wce(&self) -> bool {
        self.caching[2] & 0x04 != 0
    }

    /// Set WCE.
    pub fn set_wce(&mut self, wce: bool) {
        if wce {
            self.caching[2] |= 0x04;
        } else {
            self.caching[2] &= !0x04;
        }
    }

    /// The pages in ascending page code order.
    fn pages(&self) -> [&[u8]; 3] {
        [&self.caching, &self.control, &self.informational_exceptions]
    }

    fn page_mut(&mut self, code: u8) -> Option<&mut [u8]> {
        match code {
            CACHING => Some(&mut self.caching),
            CONTROL => Some(&mut self.control),
            INFORMATIONAL_EXCEPTIONS => Some(&mut self.informational_exceptions),
            _ => None,
        }
    }
}

/// MODE SENSE parameter data (untruncated).
pub(crate) fn mode_sense(
    cdb: &ModeSenseCdb,
    current: &ModePages,
    caps: &Capabilities,
    num_blocks: u64,
) -> Result<Vec<u8>, Sense> {
    let source = match cdb.pc {
        0 => current.clone(),
        1 => ModePages::changeable(),
        2 => ModePages::defaults(caps),
        _ => {
            return Err(Sense::new(
                sense_key::ILLEGAL_REQUEST,
                asc::SAVING_PARAMETERS_NOT_SUPPORTED,
            ))
        }
    };
    if cdb.subpage != 0 && cdb.subpage != ALL_SUBPAGES {
        return Err(Sense::invalid_cdb_field(3, None));
    }
    let mut pages = Vec::new();
    for page in source.pages() {
        if cdb.page == ALL_PAGES || cdb.page == page[0] {
            pages.extend_from_slice(page);
        }
    }
    if pages.is_empty() {
        return Err(Sense::invalid_cdb_field(2, Some(5)));
    }
    let block_descriptor = if cdb.dbd {
        Vec::new()
    } else if cdb.llbaa {
        let mut bd = vec![0u8; 16];
        bd[..8].copy_from_slice(&num_blocks.to_be_bytes());
        bd[12..].copy_from_slice(&caps.block_size.to_be_bytes());
        bd
    } else {
        // SBC-3 §6.4.2: a capacity that does not fit reports FFFFFFFFh.
        let mut bd = vec![0u8; 8];
        bd[..4].copy_from_slice(&u32::try_from(num_blocks).unwrap_or(u32::MAX).to_be_bytes());
        bd[5..].copy_from_slice(&caps.block_size.to_be_bytes()[1..]);
        bd
    };
    // DEVICE-SPECIFIC PARAMETER: WP, DPOFUA (DPO and FUA are accepted).
    let wp = if caps.read_only { 0x80 } else { 0 };
    let dpofua = if caps.dpo_fua { 0x10 } else { 0 };
    let dsp = wp | dpofua;
    let mut d = if cdb.ten {
        let mut h = vec![0u8; 8];
        h[3] = dsp;
        h[4] = u8::from(cdb.llbaa && !cdb.dbd); // LONGLBA
        h[6..8].copy_from_slice(&(block_descriptor.len() as u16).to_be_bytes());
        h
    } else {
        vec![0, 0, dsp, block_descriptor.len() as u8]
    };
    d.extend_from_slice(&block_descriptor);
    d.extend_from_slice(&pages);
    // MODE DATA LENGTH excludes itself.
    if cdb.ten {
        let len = u16::try_from(d.len() - 2).unwrap_or(u16::MAX);
        d[..2].copy_from_slice(&len.to_be_bytes());
    } else {
        d[0] = u8::try_from(d.len() - 1).unwrap_or(u8::MAX);
    }
    Ok(d)
}

/// Validate a MODE SELECT parameter list against `current` and return the new pages.
///
/// Header and block descriptor (SPC-4 §7.5.4, SBC-3 §6.4.2): medium type 0; block descriptor
/// length 0, 8, or 16 with LONGLBA; the descriptor's block length must be the block size and
/// its block count 0, the current capacity or all ones (capacity cannot be changed here).
/// Pages: known page code, no subpage format, the page's own length, and only changeable bits
/// may differ from the current values (SPC-4 §6.11). Truncated structures → PARAMETER LIST
/// LENGTH ERROR. Nothing is applied unless the whole list is valid.
pub(crate) fn mode_select(
    ten: bool,
    param: &[u8],
    current: &ModePages,
    block_size: u32,
    num_blocks: u64,
) -> Result<ModePages, Sense> {
    if param.is_empty() {
        return Ok(current.clone());
    }
    let header_len = if ten { 8 } else { 4 };
    let Some(header) = param.get(..header_len) else {
        return Err(Sense::param_list_length());
    };
    let medium_type_at = if ten { 2 } else { 1 };
    if header[medium_type_at] != 0 {
        return Err(Sense::invalid_param_field(medium_type_at, None));
    }
    let (long_lba, bd_len, bd_len_at) = if ten {
        (
            header[4] & 0x01 != 0,
            usize::from(u16::from_be_bytes([header[6], header[7]])),
            6,
        )
    } else {
        (false, usize::from(header[3]), 3)
    };
    match (bd_len, long_lba) {
        (0, _) | (8, false) | (16, true) => {}
        _ => return Err(Sense::invalid_param_field(bd_len_at, None)),
    }
    let Some(bd) = param.get(header_len..header_len + bd_len) else {
        return Err(Sense::param_list_length());
    };
    check_block_descriptor(bd, header_len, block_size, num_blocks)?;

    let changeable = ModePages::changeable();
    let mut new = current.clone();
    let mut off = header_len + bd_len;
    while off < param.len() {
        let Some(&[b0, len]) = param.get(off..off + 2) else {
            return Err(Sense::param_list_length());
        };
        if b0 & 0x40 != 0 {
            return Err(Sense::invalid_param_field(off, Some(6))); // SPF: no subpages here
        }
        let code = b0 & 0x3F;
        let Some(page) = new.page_mut(code) else {
            return Err(Sense::invalid_param_field(off, Some(5)));
        };
        if usize::from(len) != page.len() - 2 {
            return Err(Sense::invalid_param_field(off + 1, None));
        }
        let Some(sent) = param.get(off..off + page.len()) else {
            return Err(Sense::param_list_length());
        };
        let mask = changeable
            .pages()
            .into_iter()
            .find(|p| p[0] == code)
            .unwrap_or(&[]);
        // Bytes 0..2 were checked above (the PS bit is reserved in MODE SELECT and ignored).
        for i in 2..page.len() {
            let m = mask.get(i).copied().unwrap_or(0);
            let diff = (sent[i] ^ page[i]) & !m;
            if diff != 0 {
                return Err(Sense::invalid_param_field(off + i, Some(highest_bit(diff))));
            }
            page[i] = (page[i] & !m) | (sent[i] & m);
        }
        // MRIE (SPC-5, Informational Exceptions Control): 0h-6h are methods, Ch-Fh vendor
        // specific; 7h-Bh are reserved, a value no device server supports: INVALID FIELD IN
        // PARAMETER LIST, at the field's most significant bit.
        if code == INFORMATIONAL_EXCEPTIONS && (0x7..=0xB).contains(&(page[3] & 0x0F)) {
            return Err(Sense::invalid_param_field(off + 3, Some(3)));
        }
        off += page.len();
    }
    Ok(new)
}

fn check_block_descriptor(bd: &[u8], at: usize, block_size: u32, num_blocks: u64) -> Result<(), Sense> {
    let (count, all_ones, current, len_at) = match bd.len() {
        8 => (
            u64::from(u32::from_be_bytes([bd[0], bd[1], bd[2], bd[3]])),
            u64::from(u32::MAX),
            num_blocks.min(u64::from(u32::MAX)),
            5,
        ),
        16 => {
            let mut n = [0u8; 8];
            n.copy_from_slice(&bd[..8]);
            (u64::from_be_bytes(n), u64::MAX, num_blocks, 12)
        }
        _ => return Ok(()),
    };
    let len_bytes = &bd[len_at..];
    let length = len_bytes.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b));
    if length != block_size {
        return Err(Sense::invalid_param_field(at + len_at, None));
    }
    if count != 0 && count != all_ones && count != current {
        return Err(Sense::invalid_param_field(at, None));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::check_sense;
    use super::super::tests::disk_with;
    use super::super::tests::good;
    use super::super::tests::good_data;
    use super::super::DiskConfig;
    use super::super::Plan;
    use super::super::Response;
    use crate::abi::sam_status;
    use crate::store::StoreOp;
    use crate::store::StoreStatus;

    fn disk() -> super::super::Disk {
        disk_with(DiskConfig::new(512, 1000))
    }

    const SENSE6_ALL: [u8; 6] = [0x1A, 0, 0x3F, 0, 0xFF, 0];

    #[test]
    fn mode_sense6_all_pages_with_block_descriptor() {
        let d = good_data(&disk(), &SENSE6_ALL, &[]);
        assert_eq!(d.len(), 4 + 8 + 20 + 12 + 12);
        assert_eq!(&d[..4], &[55, 0, 0x10, 8]);
        assert_eq!(&d[4..12], &[0, 0, 0x03, 0xE8, 0, 0, 0x02, 0]);
        assert_eq!(&d[12..15], &[0x08, 0x12, 0x04]);
        assert_eq!(&d[32..35], &[0x0A, 0x0A, 0x20]);
        assert_eq!(&d[44..47], &[0x1C, 0x0A, 0x08]);
    }

    #[test]
    fn mode_sense_reports_write_protect() {
        let mut cfg = DiskConfig::new(512, 1000);
        cfg.read_only = true;
        assert_eq!(good_data(&disk_with(cfg), &SENSE6_ALL, &[])[2], 0x90);
    }

    #[test]
    fn mode_sense10_long_lba_descriptor_and_dbd() {
        let d = good_data(&disk(), &[0x5A, 0x10, 0x08, 0, 0, 0, 0, 0, 0xFF, 0], &[]);
        assert_eq!(&d[..8], &[0, 6 + 16 + 20, 0, 0x10, 1, 0, 0, 16]);
        assert_eq!(
            &d[8..24],
            &[0, 0, 0, 0, 0, 0, 0x03, 0xE8, 0, 0, 0, 0, 0, 0, 0x02, 0]
        );
        assert_eq!(d[24], 0x08);
        let d = good_data(&disk(), &[0x5A, 0x18, 0x0A, 0, 0, 0, 0, 0, 0xFF, 0], &[]);
        assert_eq!(&d[..8], &[0, 6 + 12, 0, 0x10, 0, 0, 0, 0]);
        assert_eq!(d[8], 0x0A);
    }

    #[test]
    fn mode_sense_changeable_and_default_values() {
        let d = good_data(&disk(), &[0x1A, 0x08, 0x48, 0, 0xFF, 0], &[]);
        assert_eq!(&d[4..7], &[0x08, 0x12, 0x04]);
        assert!(d[7..].iter().all(|&b| b == 0));
        let disk = disk();
        disk.reset(&mut scst_accel_hal::locks::LockToken::root());
        let d = good_data(&disk, &[0x1A, 0x08, 0x8A, 0, 0xFF, 0], &[]);
        assert_eq!(&d[4..8], &[0x0A, 0x0A, 0x20, 0x10]);
    }

    #[test]
    fn mode_sense_errors() {
        let disk = disk();
        check_sense(&disk, &[0x1A, 0, 0xC8, 0, 0xFF, 0], &[], [5, 0x39, 0], None);
        check_sense(
            &disk,
            &[0x1A, 0, 0x19, 0, 0xFF, 0],
            &[],
            [5, 0x24, 0],
            Some([0xCD, 0, 2]),
        );
        check_sense(
            &disk,
            &[0x1A, 0, 0x08, 1, 0xFF, 0],
            &[],
            [5, 0x24, 0],
            Some([0xC0, 0, 3]),
        );
        // Subpage FFh (all subpages) is fine.
        assert_eq!(
            good_data(&disk, &[0x1A, 0x08, 0x08, 0xFF, 0xFF, 0], &[]).len(),
            24
        );
    }

    /// Round trip: sense the caching page, clear WCE, select it back, sense again.
    #[test]
    fn mode_select_round_trip_changes_wce() {
        let disk = disk();
        assert!(disk.write_cache_enabled());
        let mut d = good_data(&disk, &[0x1A, 0, 0x08, 0, 0xFF, 0], &[]);
        d[0] = 0; // mode data length is reserved in MODE SELECT
        d[2] = 0; // so are WP/DPOFUA
        d[12 + 2] &= !0x04;
        // Clearing WCE flushes first (`clearing_wce_flushes_the_cache_before_good`).
        let Plan::Io(flush) = disk.start(
            &mut scst_accel_hal::locks::LockToken::root(),
            &[0x15, 0x10, 0, 0, d.len() as u8, 0],
            &d,
        ) else {
            panic!("clearing WCE flushes")
        };
        assert!(matches!(disk.finish(&flush, StoreStatus::Good), Plan::Done(r) if r == Response::good()));
        assert!(!disk.write_cache_enabled());
        let again = good_data(&disk, &[0x1A, 0, 0x08, 0, 0xFF, 0], &[]);
        assert_eq!(again[14] & 0x04, 0);
    }

    /// A disk whose default WCE is 0 (`DiskConfig::write_cache` false over a volatile cache:
    /// the operator's write-through) reports WCE 0 as the current and the default value (PC
    /// 00b, 10b), WCE still changeable (PC 01b) and V_SUP still 1; every write is planned FUA.
    /// An initiator may turn the cache on; a LOGICAL UNIT RESET restores WCE 0 (SAM-5: a page
    /// that cannot be saved returns to its default), a PREEMPT AND ABORT leaves it as it is.
    #[test]
    fn a_disk_written_through_by_default_stays_so_across_a_reset() {
        let mut cfg = DiskConfig::new(512, 1000);
        cfg.write_cache = false;
        let disk = disk_with(cfg);
        let wce = |pc: u8| good_data(&disk, &[0x1A, 0x08, (pc << 6) | 0x08, 0, 0xFF, 0], &[])[6] & 0x04;
        assert_eq!(
            (wce(0), wce(1), wce(2)),
            (0, 0x04, 0),
            "current, changeable, default"
        );
        assert!(!disk.write_cache_enabled());
        assert_eq!(
            good_data(&disk, &[0x12, 1, 0x86, 0, 0xFF, 0], &[])[6],
            0x01,
            "V_SUP"
        );
        let write = [0x2A, 0, 0, 0, 0, 1, 0, 0, 1, 0];
        let fua = |disk: &super::super::Disk| {
            matches!(
                super::super::tests::io_op(disk, &write, &[0; 512]),
                StoreOp::Write { fua: true, .. }
            )
        };
        assert!(fua(&disk), "written through");
        let (on, on_data) = caching_select(true);
        good(&disk, &on, &on_data);
        assert_eq!((wce(0), wce(2)), (0x04, 0), "turned on; the default stays 0");
        assert!(!fua(&disk));
        disk.preempt_and_abort();
        assert!(disk.write_cache_enabled(), "PREEMPT AND ABORT is no reset");
        disk.reset(&mut scst_accel_hal::locks::LockToken::root());
        assert_eq!((wce(0), wce(2)), (0, 0), "the reset restored the default");
        assert!(!disk.write_cache_enabled() && fua(&disk));
    }

    /// D_SENSE is the registered value and not changeable: SCST's core makes sense (unit
    /// attentions, the copy manager's errors) in that format, so a LUN whose engine switched
    /// would answer in two. The changeable mask has nothing of the control page; a MODE
    /// SELECT(10) setting D_SENSE otherwise is INVALID FIELD IN PARAMETER LIST pointing at byte
    /// 10 (8-byte header + 2) bit 2, and the sense stays fixed; the current value is accepted.
    #[test]
    fn mode_select_cannot_change_d_sense() {
        let disk = disk();
        let d = good_data(&disk, &[0x1A, 0x08, 0x4A, 0, 0xFF, 0], &[]);
        assert_eq!(&d[4..6], &[0x0A, 0x0A]);
        assert!(
            d[6..].iter().all(|&b| b == 0),
            "changeable control page: {d:02x?}"
        );
        let select = |control2: u8| {
            let mut p = vec![0u8; 8];
            p.extend_from_slice(&[0x0A, 0x0A, control2, 0x10, 0, 0, 0, 0, 0, 0, 0, 0]);
            p
        };
        let p = select(0x24);
        check_sense(
            &disk,
            &[0x55, 0x10, 0, 0, 0, 0, 0, 0, p.len() as u8, 0],
            &p,
            [5, 0x26, 0],
            Some([0x8A, 0, 10]),
        );
        assert!(!disk.descriptor_sense());
        assert_eq!(disk.sense(5, 0x20, 0)[0], 0x70);
        let p = select(0x20);
        good(&disk, &[0x55, 0x10, 0, 0, 0, 0, 0, 0, p.len() as u8, 0], &p);
        // A disk registered with descriptor sense keeps it the same way.
        let mut cfg = DiskConfig::new(512, 1000);
        cfg.d_sense = true;
        let disk = disk_with(cfg);
        let d = good_data(&disk, &[0x1A, 0x08, 0x0A, 0, 0xFF, 0], &[]);
        assert_eq!(d[6] & 0x04, 0x04, "D_SENSE reported");
        good(&disk, &[0x55, 0x10, 0, 0, 0, 0, 0, 0, 20, 0], &select(0x24));
        let p = select(0x20);
        let cdb = [0x55, 0x10, 0, 0, 0, 0, 0, 0, p.len() as u8, 0];
        let Plan::Done(r) = disk.start(&mut scst_accel_hal::locks::LockToken::root(), &cdb, &p) else {
            panic!("MODE SELECT plans no I/O")
        };
        assert_eq!(
            (r.sense[0], r.sense[1]),
            (0x72, 5),
            "refused, in descriptor format"
        );
        assert!(disk.descriptor_sense());
    }

    #[test]
    fn mode_select_with_short_block_descriptor() {
        let disk = disk();
        let p = [0, 0, 0, 8, 0, 0, 0x03, 0xE8, 0, 0, 0x02, 0];
        good(&disk, &[0x15, 0x10, 0, 0, p.len() as u8, 0], &p);
        // Wrong block length: pointer at the LOGICAL BLOCK LENGTH field (byte 4 + 5).
        let p = [0, 0, 0, 8, 0, 0, 0x03, 0xE8, 0, 0, 0x10, 0];
        check_sense(
            &disk,
            &[0x15, 0x10, 0, 0, p.len() as u8, 0],
            &p,
            [5, 0x26, 0],
            Some([0x80, 0, 9]),
        );
        // Wrong block descriptor length.
        let p = [0, 0, 0, 4, 0, 0, 0, 0];
        check_sense(
            &disk,
            &[0x15, 0x10, 0, 0, p.len() as u8, 0],
            &p,
            [5, 0x26, 0],
            Some([0x80, 0, 3]),
        );
    }

    #[test]
    fn mode_select_refuses_a_reserved_mrie() {
        let disk = disk();
        let param = |mrie: u8| {
            let mut p = vec![0u8; 4];
            p.extend_from_slice(&[0x1C, 0x0A, 0x08, mrie, 0, 0, 0, 0, 0, 0, 0, 0]);
            p
        };
        for mrie in [0x0, 0x4, 0x6, 0xC, 0xF] {
            good(&disk, &[0x15, 0x10, 0, 0, 16, 0], &param(mrie));
        }
        for mrie in 0x7..=0xB {
            check_sense(
                &disk,
                &[0x15, 0x10, 0, 0, 16, 0],
                &param(mrie),
                [5, 0x26, 0],
                Some([0x8B, 0, 7]),
            );
        }
    }

    #[test]
    fn mode_select_refuses_unchangeable_bits_with_pointer() {
        let disk = disk();
        let mut p = vec![0u8, 0, 0, 0];
        let mut page = [0u8; 20];
        page[0] = 0x08;
        page[1] = 0x12;
        page[2] = 0x04 | 0x01; // RCD is not changeable
        p.extend_from_slice(&page);
        check_sense(
            &disk,
            &[0x15, 0x10, 0, 0, p.len() as u8, 0],
            &p,
            [5, 0x26, 0],
            Some([0x88, 0, 6]),
        );
        assert!(disk.write_cache_enabled());
    }

    #[test]
    fn mode_select_header_and_page_errors() {
        let disk = disk();
        // Truncated header.
        check_sense(&disk, &[0x15, 0x10, 0, 0, 2, 0], &[0, 0], [5, 0x1A, 0], None);
        // Medium type.
        check_sense(
            &disk,
            &[0x15, 0x10, 0, 0, 4, 0],
            &[0, 1, 0, 0],
            [5, 0x26, 0],
            Some([0x80, 0, 1]),
        );
        // Unknown page.
        let p = [0, 0, 0, 0, 0x19, 0x02, 0, 0];
        check_sense(
            &disk,
            &[0x15, 0x10, 0, 0, 8, 0],
            &p,
            [5, 0x26, 0],
            Some([0x8D, 0, 4]),
        );
        // Wrong page length.
        let p = [0, 0, 0, 0, 0x0A, 0x02, 0, 0];
        check_sense(
            &disk,
            &[0x15, 0x10, 0, 0, 8, 0],
            &p,
            [5, 0x26, 0],
            Some([0x80, 0, 5]),
        );
        // Truncated page.
        let p = [0, 0, 0, 0, 0x0A, 0x0A, 0, 0];
        check_sense(&disk, &[0x15, 0x10, 0, 0, 8, 0], &p, [5, 0x1A, 0], None);
        // Parameter list length 0 changes nothing.
        good(&disk, &[0x15, 0x10, 0, 0, 0, 0], &[]);
    }

    #[test]
    fn mode_select_is_all_or_nothing() {
        let disk = disk();
        let mut p = vec![0u8, 0, 0, 0];
        let mut caching = [0u8; 20];
        caching[0] = 0x08;
        caching[1] = 0x12; // WCE off: allowed
        p.extend_from_slice(&caching);
        p.extend_from_slice(&[0x0A, 0x0A, 0x20, 0x18, 0, 0, 0, 0, 0, 0, 0, 0]); // NUAR: not allowed
        check_sense(
            &disk,
            &[0x15, 0x10, 0, 0, p.len() as u8, 0],
            &p,
            [5, 0x26, 0],
            Some([0x8B, 0, 27]),
        );
        assert!(disk.write_cache_enabled());
    }

    /// MODE SELECT(6) of the caching page with WCE as given, every other field as it is.
    fn caching_select(wce: bool) -> ([u8; 6], Vec<u8>) {
        let mut p = vec![0u8; 4];
        let mut caching = [0u8; 20];
        caching[0] = 0x08;
        caching[1] = 0x12;
        caching[2] = if wce { 0x04 } else { 0 };
        p.extend_from_slice(&caching);
        ([0x15, 0x10, 0, 0, p.len() as u8, 0], p)
    }

    /// A [`super::super::ModeRecorder`] that keeps what it is given, failing while `fail` is set.
    #[derive(Debug, Default)]
    struct Records {
        kept: std::sync::Mutex<Vec<super::super::CurrentMode>>,
        fail: std::sync::atomic::AtomicBool,
    }

    impl super::super::ModeRecorder for std::sync::Arc<Records> {
        fn record(&self, mode: super::super::CurrentMode) -> Result<(), String> {
            if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
                return Err("the state directory is read-only".into());
            }
            self.kept.lock().expect("records").push(mode);
            Ok(())
        }
    }

    fn recorded(disk: &super::super::Disk) -> std::sync::Arc<Records> {
        let records = std::sync::Arc::new(Records::default());
        disk.record_mode_with(Box::new(std::sync::Arc::clone(&records)))
            .expect("the first recorder");
        records
    }

    /// A MODE SELECT that changes WCE is recorded before it is answered: the record is there
    /// when the engine plans the flush that precedes the GOOD of WCE 1 -> 0 (and before the
    /// GOOD of 0 -> 1, which plans none); one that leaves WCE as it is records nothing. A
    /// record that fails refuses the MODE SELECT (HARDWARE ERROR / INTERNAL TARGET FAILURE)
    /// and changes nothing.
    #[test]
    fn a_mode_select_changing_wce_is_recorded_before_it_is_answered() {
        use super::super::CurrentMode;
        let disk = disk();
        let records = recorded(&disk);
        assert!(
            disk.record_mode_with(Box::new(std::sync::Arc::clone(&records)))
                .is_err(),
            "once"
        );
        let kept = || records.kept.lock().expect("records").clone();
        let (off, off_data) = caching_select(false);
        let Plan::Io(flush) = disk.start(&mut scst_accel_hal::locks::LockToken::root(), &off, &off_data)
        else {
            panic!("WCE 1 -> 0 flushes first")
        };
        assert_eq!(
            kept(),
            [CurrentMode { wce: false }],
            "recorded before the flush and its GOOD"
        );
        assert!(matches!(disk.finish(&flush, StoreStatus::Good), Plan::Done(r) if r == Response::good()));
        good(&disk, &off, &off_data);
        assert_eq!(kept().len(), 1, "no change, no record");
        let (on, on_data) = caching_select(true);
        good(&disk, &on, &on_data);
        assert_eq!(kept(), [CurrentMode { wce: false }, CurrentMode { wce: true }]);
        assert_eq!(disk.current_mode(), CurrentMode { wce: true });

        records.fail.store(true, std::sync::atomic::Ordering::SeqCst);
        check_sense(&disk, &off, &off_data, [4, 0x44, 0], None);
        assert!(disk.write_cache_enabled(), "a change not recorded is not made");
        good(&disk, &on, &on_data);
    }

    /// A reset back to the default WCE is recorded (its record failing is logged: a reset
    /// cannot be refused); a restored mode is served as current, the default staying the
    /// configuration's, and is not recorded again.
    #[test]
    fn a_reset_is_recorded_and_a_restored_mode_is_served() {
        use super::super::CurrentMode;
        let disk = disk();
        let records = recorded(&disk);
        let kept = || records.kept.lock().expect("records").clone();
        disk.restore_mode(
            &mut scst_accel_hal::locks::LockToken::root(),
            CurrentMode { wce: false },
        );
        assert!(!disk.write_cache_enabled());
        let caching = |pc: u8| good_data(&disk, &[0x1A, 0x08, (pc << 6) | 0x08, 0, 0xFF, 0], &[])[6];
        assert_eq!(
            (caching(0) & 0x04, caching(2) & 0x04),
            (0, 0x04),
            "current 0, default 1"
        );
        assert!(kept().is_empty(), "a restore is what the record says already");
        disk.reset(&mut scst_accel_hal::locks::LockToken::root());
        assert_eq!(kept(), [CurrentMode { wce: true }]);
        disk.reset(&mut scst_accel_hal::locks::LockToken::root());
        assert_eq!(kept().len(), 1, "no change, no record");
        disk.restore_mode(
            &mut scst_accel_hal::locks::LockToken::root(),
            CurrentMode { wce: false },
        );
        records.fail.store(true, std::sync::atomic::Ordering::SeqCst);
        disk.reset(&mut scst_accel_hal::locks::LockToken::root());
        assert!(disk.write_cache_enabled(), "the reset happens all the same");
    }

    /// A write planned while WCE was 1 that completes after a MODE SELECT turned WCE to 0 is
    /// flushed before its GOOD: the MODE SELECT's flush may have run before the write reached
    /// the cache, and the initiator sends no SYNCHRONIZE CACHE under WCE 0. One that completes
    /// while WCE is still 1 is answered at once, as is one planned under WCE 0 (FUA).
    #[test]
    fn a_cached_write_that_completes_after_wce_went_to_0_is_flushed_first() {
        let disk = disk();
        assert!(disk.write_cache_enabled());
        let write = [0x2A, 0, 0, 0, 0, 1, 0, 0, 1, 0];
        let data = [0u8; 512];
        let plan = |disk: &super::super::Disk| match disk.start(
            &mut scst_accel_hal::locks::LockToken::root(),
            &write,
            &data.as_slice(),
        ) {
            Plan::Io(io) => io,
            Plan::Done(r) => panic!("{r:?}"),
        };
        // WCE stays 1: GOOD at once.
        let cached = plan(&disk);
        assert!(matches!(cached.op, StoreOp::Write { fua: false, .. }));
        assert!(matches!(disk.finish(&cached, StoreStatus::Good), Plan::Done(r) if r == Response::good()));
        // Planned under WCE 1, in the store while WCE goes to 0 (the MODE SELECT's flush ends).
        let cached = plan(&disk);
        let (cdb, off) = caching_select(false);
        let Plan::Io(select_flush) = disk.start(&mut scst_accel_hal::locks::LockToken::root(), &cdb, &off)
        else {
            panic!("WCE 1 -> 0 flushes")
        };
        assert!(matches!(
            disk.finish(&select_flush, StoreStatus::Good),
            Plan::Done(_)
        ));
        let Plan::Io(flush) = disk.finish(&cached, StoreStatus::Good) else {
            panic!("a write left in the cache answered GOOD under WCE 0")
        };
        assert_eq!(flush.op, StoreOp::Flush);
        assert!(matches!(disk.finish(&flush, StoreStatus::Good), Plan::Done(r) if r == Response::good()));
        // Its flush failing fails the write.
        let Plan::Io(flush) = disk.finish(&cached, StoreStatus::Good) else {
            panic!("flush expected")
        };
        let Plan::Done(r) = disk.finish(&flush, StoreStatus::WriteError { lba: 1 }) else {
            panic!("a failed flush ends the write")
        };
        assert_eq!(r.status, sam_status::CHECK_CONDITION);
        // Planned under WCE 0: FUA, answered at once.
        let through = plan(&disk);
        assert!(matches!(through.op, StoreOp::Write { fua: true, .. }));
        assert!(matches!(disk.finish(&through, StoreStatus::Good), Plan::Done(r) if r == Response::good()));
    }

    /// WCE 1 -> 0: with WCE 0 GOOD to a write means it is on the medium, and the initiator
    /// stops sending SYNCHRONIZE CACHE, so the writes the cache still holds must reach the
    /// medium before the MODE SELECT's GOOD: it is a flush of the store, WCE already 0 for every
    /// write planned meanwhile (FUA), and a failed flush is its sense (MEDIUM ERROR / WRITE
    /// ERROR at the flush's LBA), the change staying made. WCE 0 -> 0 and 0 -> 1 flush nothing.
    #[test]
    fn clearing_wce_flushes_the_cache_before_good() {
        let disk = disk();
        assert!(disk.write_cache_enabled());
        let (cdb, off) = caching_select(false);
        let Plan::Io(flush) = disk.start(&mut scst_accel_hal::locks::LockToken::root(), &cdb, &off) else {
            panic!("WCE 1 -> 0 answered before any flush")
        };
        assert_eq!(flush.op, StoreOp::Flush);
        assert!(!disk.write_cache_enabled(), "WCE is 0 before the flush runs");
        let write = [0x2A, 0, 0, 0, 0, 1, 0, 0, 1, 0];
        assert_eq!(
            super::super::tests::io_op(&disk, &write, &[0; 512]),
            StoreOp::Write {
                lba: 1,
                blocks: 1,
                fua: true
            },
            "a write planned while the flush runs is written through"
        );
        let Plan::Done(r) = disk.finish(&flush, StoreStatus::Good) else {
            panic!("GOOD after the flush")
        };
        assert_eq!(r, Response::good());
        let Plan::Done(r) = disk.finish(&flush, StoreStatus::WriteError { lba: 7 }) else {
            panic!("a failed flush ends the MODE SELECT")
        };
        assert_eq!(r.status, sam_status::CHECK_CONDITION);
        assert_eq!(
            (r.sense[0], r.sense[2], r.sense[6], r.sense[12], r.sense[13]),
            (0xF0, 0x03, 7, 0x0C, 0x00),
            "MEDIUM ERROR / WRITE ERROR at LBA 7: {:02x?}",
            r.sense
        );
        assert!(!disk.write_cache_enabled(), "the change stays made");
        // Nothing can be cached behind WCE 0, and turning the cache on makes nothing durable.
        good(&disk, &cdb, &off);
        let (on, on_data) = caching_select(true);
        good(&disk, &on, &on_data);
        assert!(disk.write_cache_enabled());
        // A MODE SELECT that leaves WCE 1 (the informational exceptions page alone) neither.
        let mut iec = vec![0u8; 4];
        iec.extend_from_slice(&[0x1C, 0x0A, 0x08, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        good(&disk, &[0x15, 0x10, 0, 0, iec.len() as u8, 0], &iec);
        assert!(matches!(
            disk.start(&mut scst_accel_hal::locks::LockToken::root(), &cdb, &off),
            Plan::Io(ref io) if io.op == StoreOp::Flush
        ));
    }
}
