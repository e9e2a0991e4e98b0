//! INQUIRY: standard data (SPC-4 §6.6.2) and the vital product data pages (SPC-4 §7.8,
//! SBC-3 §6.6): 00h supported pages, 80h unit serial number, 83h device identification,
//! 86h extended INQUIRY data, B0h block limits, B1h block device characteristics, B2h logical block provisioning (thin
//! disks only). Identity comes from the [`DiskConfig`]; every capability from the disk's
//! [`Capabilities`].

use super::caps::Capabilities;
use super::caps::CopyOffload;
use super::sense::Sense;
use super::DiskConfig;
use crate::abi::TYPE_DISK;

/// IEEE company id of the default NAA 6 designator ([`super::Designator::default`], used only
/// where no identity was resolved). 0x001405 is the OUI the Linux target stack (LIO) reports
/// for software-defined logical units; generated identities use NAA 3 instead, which claims
/// no OUI.
pub const NAA_OUI: u32 = 0x00_1405;

/// Version descriptors claimed in standard INQUIRY data (SPC-4 table 150): SAM-5, SPC-4,
/// SBC-3, each "no version claimed".
const VERSION_DESCRIPTORS: [u16; 3] = [0x00A0, 0x0460, 0x04C0];

/// Standard INQUIRY data, 96 bytes: identity from the configuration, 3PC from the
/// capabilities.
pub(crate) fn standard(config: &DiskConfig, caps: &Capabilities) -> Vec<u8> {
    let mut d = vec![0u8; 96];
    d[0] = TYPE_DISK; // peripheral qualifier 0: connected
    d[2] = 0x06; // VERSION: SPC-4
    d[3] = 0x10 | 0x02; // HISUP, RESPONSE DATA FORMAT 2
    d[4] = (d.len() - 5) as u8; // ADDITIONAL LENGTH
                                // 3PC: third-party copy (EXTENDED COPY) only where the disk takes part in it.
    d[5] = match caps.copy_offload {
        CopyOffload::None => 0,
        CopyOffload::ScstCopyManager { .. } => 0x08,
    };
    d[7] = 0x02; // CMDQUE
    d[8..16].copy_from_slice(&ascii_field::<8>(&config.vendor));
    d[16..32].copy_from_slice(&ascii_field::<16>(&config.product));
    d[32..36].copy_from_slice(&ascii_field::<4>(&config.revision));
    for (i, v) in VERSION_DESCRIPTORS.iter().enumerate() {
        d[58 + 2 * i..60 + 2 * i].copy_from_slice(&v.to_be_bytes());
    }
    d
}

/// The VPD pages this disk offers, ascending.
fn supported_pages(caps: &Capabilities) -> Vec<u8> {
    let mut pages = vec![0x00, 0x80, 0x83, 0x86, 0xB0, 0xB1];
    if caps.provisioning.thin {
        pages.push(0xB2);
    }
    pages
}

/// A VPD page; an unsupported page → INVALID FIELD IN CDB at the PAGE CODE (byte 2).
pub(crate) fn vpd_page(page: u8, config: &DiskConfig, caps: &Capabilities) -> Result<Vec<u8>, Sense> {
    if !supported_pages(caps).contains(&page) {
        return Err(Sense::invalid_cdb_field(2, None));
    }
    let body = match page {
        0x00 => supported_pages(caps),
        0x80 => printable(&config.serial).into_bytes(),
        0x83 => device_identification(config),
        0x86 => extended_inquiry_data(caps),
        0xB0 => block_limits(caps),
        0xB1 => block_device_characteristics(caps),
        _ => logical_block_provisioning(caps),
    };
    let mut d = vec![TYPE_DISK, page];
    d.extend_from_slice(&u16::try_from(body.len()).unwrap_or(u16::MAX).to_be_bytes());
    d.extend_from_slice(&body);
    Ok(d)
}

/// Printable ASCII only (SPC-4 §4.4.1), at most 240 bytes so the 83h page stays small;
/// anything else becomes '_'.
fn printable(s: &str) -> String {
    s.chars()
        .take(240)
        .map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '_' })
        .collect()
}

/// A left-aligned, space-padded ASCII field.
fn ascii_field<const N: usize>(s: &str) -> [u8; N] {
    let mut out = [b' '; N];
    for (o, b) in out.iter_mut().zip(printable(s).bytes()) {
        *o = b;
    }
    out
}

/// Designation descriptors (SPC-4 §7.8.6): the LU's own designator (NAA or EUI-64 based,
/// binary) and a T10 vendor ID designator (ASCII, §7.8.6.4), both for the logical unit.
fn device_identification(config: &DiskConfig) -> Vec<u8> {
    let mut d = config.designator.descriptor();
    // T10 vendor ID: vendor (8) + the serial, or the designator in hex when there is no serial.
    let mut t10 = ascii_field::<8>(&config.vendor).to_vec();
    let serial = printable(&config.serial);
    if serial.is_empty() {
        t10.extend_from_slice(config.designator.to_string().as_bytes());
    } else {
        t10.extend_from_slice(serial.as_bytes());
    }
    d.extend_from_slice(&[0x02, 0x01, 0x00, t10.len() as u8]); // ASCII; LU; T10 vendor ID
    d.extend_from_slice(&t10);
    d
}

/// Extended INQUIRY Data (86h), 60 bytes after the header (SPC-4 §7.8.7): no protection
/// information; the SIMPLE, ORDERED and HEAD OF QUEUE task attributes (SCST's core orders the
/// commands of every device it serves, as for its own vdisk); V_SUP where a volatile cache
/// exists (FUA and SYNCHRONIZE CACHE then mean something); LUICLR, which SPC-4 requires
/// ("shall be set to one"): SCST's core answers REPORT LUNS and clears REPORTED LUNS DATA HAS
/// CHANGED on every logical unit of that I_T nexus (`scst_report_luns_local`).
fn extended_inquiry_data(caps: &Capabilities) -> Vec<u8> {
    let mut d = vec![0u8; 0x3C];
    d[1] = 0x07; // HEADSUP, ORDSUP, SIMPSUP
    if caps.volatile_cache {
        d[2] = 0x01; // V_SUP
    }
    d[3] = 0x01; // LUICLR
    d
}

/// Block Limits (B0h), 60 bytes after the header (SBC-3 §6.6.3), from the normalised limits.
fn block_limits(caps: &Capabilities) -> Vec<u8> {
    let l = &caps.limits;
    let mut d = vec![0u8; 0x3C];
    // d[0]: WSNZ=0: WRITE SAME with 0 blocks means "to the end".
    // d[1]: MAXIMUM COMPARE AND WRITE LENGTH (0: not supported).
    d[1] = caps.compare_and_write.max_blocks();
    // OPTIMAL TRANSFER LENGTH GRANULARITY (page bytes 6-7): the physical block, so initiators
    // avoid read-modify-write below it (Linux takes it as io_min); 0 = not reported.
    if caps.granularity_blocks > 1 {
        let granularity = u16::try_from(caps.granularity_blocks).unwrap_or(u16::MAX);
        d[2..4].copy_from_slice(&granularity.to_be_bytes());
    }
    d[4..8].copy_from_slice(&l.max_transfer_blocks.to_be_bytes());
    d[8..12].copy_from_slice(&l.optimal_transfer_blocks.to_be_bytes());
    if caps.provisioning.thin {
        d[16..20].copy_from_slice(&l.max_unmap_lba_count.to_be_bytes());
        d[20..24].copy_from_slice(&l.max_unmap_descriptors.to_be_bytes());
        d[24..28].copy_from_slice(&l.unmap_granularity.to_be_bytes());
    }
    d[32..40].copy_from_slice(&l.max_write_same_blocks.to_be_bytes());
    d
}

/// Block Device Characteristics (B1h): the medium rotation rate (SBC-3 §6.6.2).
fn block_device_characteristics(caps: &Capabilities) -> Vec<u8> {
    let mut d = vec![0u8; 0x3C];
    d[0..2].copy_from_slice(&caps.rotation_rate.to_be_bytes());
    d
}

/// Logical Block Provisioning (B2h): UNMAP and WRITE SAME (10)/(16) with UNMAP, thin
/// provisioned (SBC-3 §6.6.4).
fn logical_block_provisioning(caps: &Capabilities) -> Vec<u8> {
    let mut b1 = 0x80 | 0x40 | 0x20; // LBPU, LBPWS, LBPWS10
    if caps.provisioning.unmapped_reads_zero {
        b1 |= 0x04; // LBPRZ
    }
    vec![0x00, b1, 0x02, 0x00] // threshold exponent, flags, PROVISIONING TYPE 010b thin
}

#[cfg(test)]
mod tests {
    use super::super::tests::check_sense;
    use super::super::tests::disk_with;
    use super::super::tests::good_data;
    use super::super::DiskConfig;

    fn config() -> DiskConfig {
        let mut cfg = DiskConfig::new(512, 2048);
        cfg.vendor = "ACME".into();
        cfg.product = "Disk".into();
        cfg.revision = "1.0".into();
        cfg.serial = "SN01".into();
        cfg.designator =
            super::super::Designator::registered_extended(super::NAA_OUI, 0, 0x0123_4567_89AB_CDEF);
        cfg
    }

    #[test]
    fn standard_inquiry() {
        let disk = disk_with(config());
        let d = good_data(&disk, &[0x12, 0, 0, 0, 0xFF, 0], &[]);
        assert_eq!(d.len(), 96);
        assert_eq!(&d[..8], &[0x00, 0x00, 0x06, 0x12, 91, 0, 0, 0x02]);
        assert_eq!(&d[8..36], b"ACME    Disk            1.0 ");
        assert_eq!(&d[58..64], &[0x00, 0xA0, 0x04, 0x60, 0x04, 0xC0]);
    }

    #[test]
    fn inquiry_truncates_to_allocation_length() {
        let disk = disk_with(config());
        assert_eq!(good_data(&disk, &[0x12, 0, 0, 0, 5, 0], &[]).len(), 5);
        assert!(good_data(&disk, &[0x12, 0, 0, 0, 0, 0], &[]).is_empty());
    }

    #[test]
    fn vpd_supported_pages_follow_provisioning() {
        let disk = disk_with(config());
        assert_eq!(
            good_data(&disk, &[0x12, 1, 0, 0, 0xFF, 0], &[]),
            [0, 0, 0, 6, 0, 0x80, 0x83, 0x86, 0xB0, 0xB1]
        );
        let mut cfg = config();
        cfg.thin_provisioning = true;
        let disk = disk_with(cfg);
        assert_eq!(
            good_data(&disk, &[0x12, 1, 0, 0, 0xFF, 0], &[])[3..],
            [7, 0, 0x80, 0x83, 0x86, 0xB0, 0xB1, 0xB2]
        );
    }

    #[test]
    fn vpd_unit_serial_number() {
        let disk = disk_with(config());
        assert_eq!(
            good_data(&disk, &[0x12, 1, 0x80, 0, 0xFF, 0], &[]),
            b"\0\x80\0\x04SN01"
        );
    }

    #[test]
    fn vpd_device_identification_has_naa6_and_t10() {
        let disk = disk_with(config());
        let d = good_data(&disk, &[0x12, 1, 0x83, 0, 0xFF, 0], &[]);
        assert_eq!(&d[..4], &[0, 0x83, 0, 20 + 16]);
        assert_eq!(&d[4..8], &[0x01, 0x03, 0x00, 16]);
        assert_eq!(&d[8..16], &[0x60, 0x01, 0x40, 0x50, 0, 0, 0, 0]);
        assert_eq!(&d[16..24], &[0x01, 0x23, 0x45, 0x67, 0x89, 0xAB, 0xCD, 0xEF]);
        assert_eq!(&d[24..28], &[0x02, 0x01, 0x00, 12]);
        assert_eq!(&d[28..40], b"ACME    SN01");
    }

    #[test]
    fn vpd_device_identification_has_naa3_and_t10() {
        let mut cfg = config();
        cfg.designator = super::super::Designator::local(0x0123_4567_89AB_CDEF);
        let disk = disk_with(cfg);
        let d = good_data(&disk, &[0x12, 1, 0x83, 0, 0xFF, 0], &[]);
        assert_eq!(&d[..4], &[0, 0x83, 0, 12 + 16]);
        assert_eq!(&d[4..8], &[0x01, 0x03, 0x00, 8]); // binary; LU, NAA; 8 bytes
        assert_eq!(&d[8..16], &[0x31, 0x23, 0x45, 0x67, 0x89, 0xAB, 0xCD, 0xEF]);
        assert_eq!(&d[16..20], &[0x02, 0x01, 0x00, 12]);
        assert_eq!(&d[20..32], b"ACME    SN01");
    }

    #[test]
    fn vpd_device_identification_has_eui64_from_nguid() {
        let mut cfg = config();
        cfg.serial.clear();
        let nguid = [
            0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0, 0x14, 0x05, 1, 2, 3, 4, 5,
        ];
        cfg.designator = super::super::Designator::Eui64Extended(nguid);
        let disk = disk_with(cfg);
        let d = good_data(&disk, &[0x12, 1, 0x83, 0, 0xFF, 0], &[]);
        assert_eq!(&d[4..8], &[0x01, 0x02, 0x00, 16]); // binary; LU, EUI-64; 16 bytes
        assert_eq!(&d[8..24], &nguid);
        // Without a serial the T10 vendor ID designator carries the designator's text.
        let t10 = b"ACME    eui.10111213141516170014050102030405";
        assert_eq!(&d[24..28], &[0x02, 0x01, 0x00, t10.len() as u8]);
        assert_eq!(&d[28..], t10);
    }

    #[test]
    fn vpd_block_limits() {
        let mut cfg = config();
        cfg.thin_provisioning = true;
        cfg.limits.max_transfer_blocks = 0x800;
        cfg.limits.max_unmap_descriptors = 7;
        let disk = disk_with(cfg.clone());
        let d = good_data(&disk, &[0x12, 1, 0xB0, 0, 0xFF, 0], &[]);
        assert_eq!(d.len(), 64);
        assert_eq!(&d[..4], &[0, 0xB0, 0, 0x3C]);
        assert_eq!(&d[8..12], &[0, 0, 0x08, 0]);
        assert_eq!(&d[24..28], &[0, 0, 0, 7]);
        assert_eq!(&d[36..44], &cfg.limits.max_write_same_blocks.to_be_bytes());
        assert_eq!(&d[6..8], &[0, 0], "one logical block per physical: not reported");
        cfg.physical_block_exponent = 3;
        let d = good_data(&disk_with(cfg), &[0x12, 1, 0xB0, 0, 0xFF, 0], &[]);
        assert_eq!(&d[6..8], &[0, 8], "8 logical blocks per physical block");
    }

    /// OPTIMAL TRANSFER LENGTH never exceeds MAXIMUM TRANSFER LENGTH (an NVMe board's MDTS
    /// clamps the maximum to 1024 blocks while the optimal stayed 2048, which Linux rejects),
    /// and is a multiple of the granularity.
    #[test]
    fn vpd_block_limits_optimal_is_at_most_the_maximum() {
        let optimal = |max: u32, optimal: u32, exponent: u8| {
            let mut cfg = config();
            cfg.limits.max_transfer_blocks = max;
            cfg.limits.optimal_transfer_blocks = optimal;
            cfg.physical_block_exponent = exponent;
            let d = good_data(&disk_with(cfg), &[0x12, 1, 0xB0, 0, 0xFF, 0], &[]);
            u32::from_be_bytes(d[12..16].try_into().expect("4 bytes"))
        };
        assert_eq!(optimal(1024, 2048, 0), 1024);
        assert_eq!(optimal(4096, 2048, 0), 2048);
        assert_eq!(optimal(1020, 2048, 3), 1016, "a multiple of 8 under the maximum");
    }

    /// Extended INQUIRY Data: task attributes, LUICLR, and V_SUP only over a volatile cache,
    /// whatever the default WCE (a cache started written through is still there).
    #[test]
    fn vpd_extended_inquiry_data() {
        let d = good_data(&disk_with(config()), &[0x12, 1, 0x86, 0, 0xFF, 0], &[]);
        assert_eq!(d.len(), 64);
        assert_eq!(&d[..8], &[0, 0x86, 0, 0x3C, 0, 0x07, 0x01, 0x01]);
        assert!(d[8..].iter().all(|&b| b == 0));
        let mut cfg = config();
        cfg.write_cache = false;
        let d = good_data(&disk_with(cfg.clone()), &[0x12, 1, 0x86, 0, 0xFF, 0], &[]);
        assert_eq!(d[6], 0x01, "written through by default: V_SUP still");
        cfg.volatile_cache = false;
        let d = good_data(&disk_with(cfg), &[0x12, 1, 0x86, 0, 0xFF, 0], &[]);
        assert_eq!(d[6], 0, "no volatile cache: no V_SUP");
    }

    #[test]
    fn vpd_characteristics_and_provisioning() {
        let mut cfg = config();
        cfg.thin_provisioning = true;
        let disk = disk_with(cfg);
        let d = good_data(&disk, &[0x12, 1, 0xB1, 0, 0xFF, 0], &[]);
        assert_eq!(&d[..6], &[0, 0xB1, 0, 0x3C, 0, 1]);
        let d = good_data(&disk, &[0x12, 1, 0xB2, 0, 0xFF, 0], &[]);
        assert_eq!(d, [0, 0xB2, 0, 4, 0, 0xE0, 0x02, 0]);
    }

    #[test]
    fn unsupported_vpd_page_is_invalid_field() {
        let disk = disk_with(config());
        check_sense(
            &disk,
            &[0x12, 1, 0xB2, 0, 0xFF, 0],
            &[],
            [5, 0x24, 0],
            Some([0xC0, 0, 2]),
        );
        check_sense(
            &disk,
            &[0x12, 1, 0x81, 0, 0xFF, 0],
            &[],
            [5, 0x24, 0],
            Some([0xC0, 0, 2]),
        );
    }
}
