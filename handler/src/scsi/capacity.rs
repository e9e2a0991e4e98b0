//! READ CAPACITY (10) and (16) parameter data (SBC-3 §5.15, §5.16).
//!
//! The block length reported must be the block size registered with SCST: the core snoops
//! these responses and updates its block shift from them (spec §3.10).

use super::caps::Capabilities;

/// RETURNED LOGICAL BLOCK ADDRESS of the last block; a disk of 0 blocks reports 0 (the field
/// cannot express an empty medium).
fn last_lba(num_blocks: u64) -> u64 {
    num_blocks.saturating_sub(1)
}

/// READ CAPACITY(10): last LBA (FFFFFFFFh when it does not fit: use READ CAPACITY(16)) and the
/// block length.
pub(crate) fn read_capacity_10(num_blocks: u64, block_size: u32) -> [u8; 8] {
    let last = u32::try_from(last_lba(num_blocks)).unwrap_or(u32::MAX);
    let mut d = [0u8; 8];
    d[..4].copy_from_slice(&last.to_be_bytes());
    d[4..].copy_from_slice(&block_size.to_be_bytes());
    d
}

/// READ CAPACITY(16) (SBC-3 §5.16.2): last LBA, block length, no protection, LOGICAL BLOCKS
/// PER PHYSICAL BLOCK EXPONENT from the store's physical block size, LBPME/LBPRZ from the
/// provisioning configuration, lowest aligned LBA 0 (LBA 0 starts a physical block).
pub(crate) fn read_capacity_16(num_blocks: u64, caps: &Capabilities) -> [u8; 32] {
    let mut d = [0u8; 32];
    d[..8].copy_from_slice(&last_lba(num_blocks).to_be_bytes());
    d[8..12].copy_from_slice(&caps.block_size.to_be_bytes());
    d[13] = caps.physical_block_exponent & 0x0F;
    if caps.provisioning.thin {
        d[14] |= 0x80; // LBPME
        if caps.provisioning.unmapped_reads_zero {
            d[14] |= 0x40; // LBPRZ
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::super::tests::disk_with;
    use super::super::tests::good_data;
    use super::super::DiskConfig;

    #[test]
    fn read_capacity_10_reports_last_lba_and_block_size() {
        let disk = disk_with(DiskConfig::new(4096, 1000));
        let data = good_data(&disk, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]);
        assert_eq!(data, [0, 0, 0x03, 0xE7, 0, 0, 0x10, 0]);
    }

    #[test]
    fn read_capacity_10_saturates_when_too_large() {
        let disk = disk_with(DiskConfig::new(512, 1 << 33));
        let data = good_data(&disk, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]);
        assert_eq!(data, [0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 2, 0]);
    }

    #[test]
    fn read_capacity_16_reports_full_lba_and_lbpme_when_thin() {
        let mut cfg = DiskConfig::new(512, 1 << 33);
        cfg.thin_provisioning = true;
        cfg.unmapped_reads_zero = true;
        let disk = disk_with(cfg);
        let cdb = [0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0];
        let data = good_data(&disk, &cdb, &[]);
        assert_eq!(data.len(), 32);
        assert_eq!(
            &data[..16],
            &[0, 0, 0, 1, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 2, 0, 0, 0, 0xC0, 0]
        );
    }

    #[test]
    fn read_capacity_16_truncates_to_allocation_length_and_is_thick_by_default() {
        let disk = disk_with(DiskConfig::new(512, 100));
        let cdb = [0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 12, 0, 0];
        assert_eq!(good_data(&disk, &cdb, &[]), [0, 0, 0, 0, 0, 0, 0, 99, 0, 0, 2, 0]);
        let cdb = [0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0];
        assert_eq!(good_data(&disk, &cdb, &[])[14], 0);
    }

    #[test]
    fn read_capacity_16_reports_the_physical_block_exponent() {
        let mut cfg = DiskConfig::new(512, 100);
        cfg.physical_block_exponent = 3; // 4096-byte physical blocks
        let disk = disk_with(cfg);
        let cdb = [0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0];
        let data = good_data(&disk, &cdb, &[]);
        assert_eq!(data[13], 3);
        assert_eq!(data[14], 0, "thick: no LBPME, and lowest aligned LBA 0");
    }

    fn get_lba_status(lba: u64, alloc: u32) -> [u8; 16] {
        let mut cdb = [0u8; 16];
        cdb[0] = 0x9E;
        cdb[1] = 0x12;
        cdb[2..10].copy_from_slice(&lba.to_be_bytes());
        cdb[10..14].copy_from_slice(&alloc.to_be_bytes());
        cdb
    }

    /// GET LBA STATUS (SBC-3 §5.7) is offered only on a thin disk whose store reports it; it
    /// asks the store for one descriptor, the data truncated to the allocation length.
    #[test]
    fn get_lba_status_asks_the_store_only_where_offered() {
        use super::super::tests::check_sense;
        use super::super::tests::io_op;
        use super::super::Plan;
        use crate::store::StoreOp;
        use crate::store::StoreStatus;

        let mut cfg = DiskConfig::new(512, 100);
        cfg.thin_provisioning = true;
        let disk = disk_with(cfg.clone());
        // Not offered: an unknown service action of SERVICE ACTION IN(16), byte 1 bit 4.
        check_sense(
            &disk,
            &get_lba_status(0, 24),
            &[],
            [5, 0x24, 0],
            Some([0xCC, 0, 1]),
        );
        cfg.lba_status = true;
        cfg.thin_provisioning = false;
        let thick = disk_with(cfg.clone());
        check_sense(
            &thick,
            &get_lba_status(0, 24),
            &[],
            [5, 0x24, 0],
            Some([0xCC, 0, 1]),
        );
        cfg.thin_provisioning = true;
        let disk = disk_with(cfg);
        assert_eq!(
            io_op(&disk, &get_lba_status(7, 4096), &[]),
            StoreOp::LbaStatus { lba: 7 }
        );
        for (alloc, len) in [(4096u32, 24usize), (24, 24), (8, 8)] {
            let Plan::Io(io) = disk.start(
                &mut scst_accel_hal::locks::LockToken::root(),
                &get_lba_status(99, alloc),
                &[0u8; 0],
            ) else {
                panic!("GET LBA STATUS goes to the store");
            };
            let Plan::Done(r) = disk.finish(&io, StoreStatus::Good) else {
                panic!("one step");
            };
            assert_eq!(r.data_in_len, len, "allocation length {alloc}");
        }
        assert!(good_data(&disk, &get_lba_status(0, 0), &[]).is_empty());
        // SBC-3 §5.7.1: a starting LBA past the last one is LBA OUT OF RANGE.
        check_sense(&disk, &get_lba_status(100, 24), &[], [5, 0x21, 0], None);
    }

    #[test]
    fn read_capacity_follows_set_num_blocks() {
        let disk = disk_with(DiskConfig::new(512, 100));
        disk.set_num_blocks(5000);
        let data = good_data(&disk, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]);
        assert_eq!(&data[..4], &[0, 0, 0x13, 0x87]);
        let cdb = [0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0];
        assert_eq!(&good_data(&disk, &cdb, &[])[..8], &[0, 0, 0, 0, 0, 0, 0x13, 0x87]);
        assert_eq!(disk.num_blocks(), 5000);
    }
}
