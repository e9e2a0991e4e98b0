//! Identify data structures (NVMe 1.4 §5.15.2): the controller (CNS 01h), namespace 1
//! (CNS 00h), the active namespace list (CNS 02h) and the NVM Command Set's Identify
//! Controller data (CNS 06h, CSI 00h: NVM Command Set Specification 1.0 §4.1.5.3), each 4096
//! bytes, little endian.

use super::spec;
use super::NvmeSimConfig;

/// Bytes of every Identify data structure.
pub(crate) const IDENTIFY_BYTES: usize = 4096;

/// PCI vendor ID reported (VID, SSVID): the one QEMU's model uses, so a driver's quirk tables
/// treat both models alike.
const VENDOR_ID: u16 = super::PCI_IDENTITY.vendor_id;

fn put(buf: &mut [u8], at: usize, bytes: &[u8]) {
    buf[at..at + bytes.len()].copy_from_slice(bytes);
}

/// An ASCII field of `len` bytes, left justified and padded with spaces (§1.5).
fn put_ascii(buf: &mut [u8], at: usize, len: usize, text: &str) {
    let field = &mut buf[at..at + len];
    field.fill(b' ');
    let n = text.len().min(len);
    field[..n].copy_from_slice(&text.as_bytes()[..n]);
}

/// Identify Controller (Figure 247).
pub(crate) fn controller(id: &str, config: &NvmeSimConfig) -> Vec<u8> {
    let mut b = vec![0u8; IDENTIFY_BYTES];
    put(&mut b, 0, &VENDOR_ID.to_le_bytes()); // VID
    put(&mut b, 2, &VENDOR_ID.to_le_bytes()); // SSVID
    put_ascii(&mut b, 4, 20, &format!("SIM-{id}")); // SN
    put_ascii(&mut b, 24, 40, "scst-accel simulated NVMe controller"); // MN
    put_ascii(&mut b, 64, 8, "1.0"); // FR
    b[77] = config.mdts; // MDTS, in units of CAP.MPSMIN
    put(&mut b, 78, &1u16.to_le_bytes()); // CNTLID
    put(&mut b, 80, &spec::VERSION.to_le_bytes()); // VER
    put(&mut b, 88, &config.rtd3e_micros.to_le_bytes()); // RTD3E, microseconds
    b[111] = 1; // CNTRLTYPE: I/O controller
                // OACS (256) = 0: no optional admin commands.
    b[258] = spec::ACL;
    b[259] = spec::AERL;
    b[260] = 0x02; // FRMW: one firmware slot, slot 1 read/write
                   // LPA (261) = 0, ELPE (262) = 0: one Error Information log entry.
    put(&mut b, 266, &0x0157u16.to_le_bytes()); // WCTEMP: 343 K
    put(&mut b, 268, &0x0175u16.to_le_bytes()); // CCTEMP: 373 K
    b[512] = (spec::SQES << 4 | spec::SQES) as u8; // SQES: 0x66
    b[513] = (spec::CQES << 4 | spec::CQES) as u8; // CQES: 0x44
    put(&mut b, 516, &1u32.to_le_bytes()); // NN

    // ONCS: DSM (bit 2); Write Zeroes (bit 3), Compare (bit 0) and Copy (bit 8) when
    // configured.
    let copy = if config.copy_max_blocks > 0 { 1u16 << 8 } else { 0 };
    let compare = u16::from(config.compare_write_max_blocks > 0);
    let write_zeroes = if config.write_zeroes { 1u16 << 3 } else { 0 };
    put(
        &mut b,
        520,
        &(0x0004u16 | write_zeroes | copy | compare).to_le_bytes(),
    );
    if compare != 0 {
        put(&mut b, 522, &1u16.to_le_bytes()); // FUSES: Compare and Write
        let acwu = config.compare_write_max_blocks - 1; // 0's based
        put(&mut b, 532, &acwu.to_le_bytes()); // ACWU
    }
    if copy != 0 {
        put(&mut b, 534, &1u16.to_le_bytes()); // OCFS: copy format 0
    }
    b[525] = 0x01; // VWC: a volatile write cache is present
                   // SGLS (536) = 0: PRPs only.
                   // SUBNQN: UTF-8, NUL padded.
    let nqn = format!("nqn.2026-11.org.scst-accel:nvmesim:{id}");
    put(&mut b, 768, &nqn.as_bytes()[..nqn.len().min(255)]);
    put(&mut b, 2048, &2500u16.to_le_bytes()); // PSD0.MP: 25 W
    b
}

/// The NVM Command Set I/O Command Set specific Identify Controller data (CNS 06h, CSI 00h):
/// WZSL (byte 1) and DMRSL (bytes 7:4) as configured; VSL, WUSL, DMRL and DMSL 0 (no limit).
pub(crate) fn controller_nvm(config: &NvmeSimConfig) -> Vec<u8> {
    let mut b = vec![0u8; IDENTIFY_BYTES];
    b[1] = config.wzsl; // WZSL, 2^n pages of CAP.MPSMIN (4 KiB)
    put(&mut b, 4, &config.dmrsl.to_le_bytes()); // DMRSL
    b
}

/// Identify Namespace for namespace 1 (Figure 245).
pub(crate) fn namespace(config: &NvmeSimConfig) -> Vec<u8> {
    let mut b = vec![0u8; IDENTIFY_BYTES];
    for at in [0, 8, 16] {
        put(&mut b, at, &config.num_blocks.to_le_bytes()); // NSZE, NCAP, NUSE
    }
    // NSFEAT (24) = 0. NLBAF (25, 0's based) and FLBAS (26): the format in use is the last;
    // its index's bits 3:0 go to FLBAS bits 3:0, bits 5:4 to FLBAS bits 6:5 (NVMe 2.0 Base
    // Specification Figure 276).
    let index = config.lba_format_index;
    b[25] = index;
    b[26] = (index & 0xF) | (index & 0x30) << 1;
    b[33] = config.dlfeat; // DLFEAT: by default deallocated blocks read as zeroes
                           // NGUID (bytes 119:104) and EUI64 (bytes 127:120), NVMe 1.4 Figure 245: byte arrays in
                           // big-endian order, copied as they are. All zero would mean "not supported".
    put(&mut b, 104, &config.nguid.unwrap_or_default());
    put(&mut b, 120, &config.eui64.unwrap_or_default());
    if config.copy_max_blocks > 0 {
        // MSSRL (74), MCL (76), MSRC (80, 0's based): one range per Copy, as the driver sends.
        put(&mut b, 74, &config.copy_max_blocks.to_le_bytes());
        put(&mut b, 76, &u32::from(config.copy_max_blocks).to_le_bytes());
        b[80] = 0;
    }
    // LBAFn: MS = 0, LBADS, RP = 0. The formats not in use have another block size (4096 for
    // 512, else 512), so a host that reads the wrong one sees the wrong size.
    let lbads = config.block_size.trailing_zeros();
    let other = if config.block_size == 512 { 12u32 } else { 9 };
    for i in 0..=usize::from(index) {
        let l = if i == usize::from(index) { lbads } else { other };
        put(&mut b, 128 + 4 * i, &(l << 16).to_le_bytes());
    }
    b
}

/// Active Namespace ID list (CNS 02h): the active NSIDs greater than `nsid`, ascending.
pub(crate) fn active_namespaces(nsid: u32) -> Vec<u8> {
    let mut b = vec![0u8; IDENTIFY_BYTES];
    if nsid < 1 {
        put(&mut b, 0, &1u32.to_le_bytes());
    }
    b
}
