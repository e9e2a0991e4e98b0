//! Register access through pread(2)/pwrite(2) on the VFIO device fd at a region's offset: the
//! fallback for a BAR the kernel does not let us mmap (no `VFIO_REGION_INFO_FLAG_MMAP`, or the
//! mmap failed, e.g. because the MSI-X table shares the BAR on an older kernel). Each access is
//! one system call, so this is slow but correct: vfio-pci performs the access at the same width.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;

use crate::RegisterIo;

/// A device region reached by pread/pwrite. Bounds and alignment are checked as for
/// [`super::MmioRegion`]; an I/O error reads as all-ones (what a PCIe read of a gone device
/// returns, so the driver's "device gone" check sees it) and a failed write is logged.
#[derive(Debug)]
pub struct FdRegion {
    file: File,
    /// Offset of the region in the device fd (`vfio_region_info.offset`).
    base: u64,
    len: u64,
    /// For logs.
    name: String,
    /// A failed read was logged at error level; later ones go to trace (a gone device is
    /// polled in loops, and one error line says it all).
    read_failure_logged: AtomicBool,
}

impl FdRegion {
    /// Access `len` bytes of `file` starting at `base`. `name` identifies the region in logs.
    pub fn new(file: File, base: u64, len: u64, name: String) -> Self {
        Self {
            file,
            base,
            len,
            name,
            read_failure_logged: AtomicBool::new(false),
        }
    }

    /// Absolute file offset of an access, after the checks.
    ///
    /// # Panics
    /// When the access is misaligned or not wholly inside the region.
    fn checked(&self, offset: u64, width: u64) -> u64 {
        assert!(
            offset.is_multiple_of(width),
            "misaligned {width}-byte register access at offset {offset:#x}"
        );
        assert!(
            offset.checked_add(width).is_some_and(|end| end <= self.len),
            "register access at offset {offset:#x} ({width} bytes) outside the {:#x}-byte region",
            self.len
        );
        self.base + offset
    }

    fn read<const N: usize>(&self, offset: u64) -> Result<[u8; N], io::Error> {
        let at = self.checked(offset, N as u64);
        let mut bytes = [0u8; N];
        self.file.read_exact_at(&mut bytes, at)?;
        Ok(bytes)
    }

    fn write(&self, offset: u64, bytes: &[u8]) {
        let at = self.checked(offset, bytes.len() as u64);
        if let Err(e) = self.file.write_all_at(bytes, at) {
            log::error!("{}: register write at {offset:#x} failed: {e}", self.name);
        }
    }

    fn gone(&self, offset: u64, e: &io::Error) {
        if self.read_failure_logged.swap(true, Ordering::Relaxed) {
            log::trace!(
                "{}: register read at {offset:#x} failed ({e}): reading all-ones",
                self.name
            );
        } else {
            log::error!(
                "{}: register read at {offset:#x} failed ({e}): reading all-ones",
                self.name
            );
        }
    }
}

impl RegisterIo for FdRegion {
    fn len(&self) -> u64 {
        self.len
    }

    fn read32(&self, offset: u64) -> u32 {
        match self.read::<4>(offset) {
            Ok(b) => u32::from_le_bytes(b),
            Err(e) => {
                self.gone(offset, &e);
                u32::MAX
            }
        }
    }

    fn write32(&self, offset: u64, value: u32) {
        self.write(offset, &value.to_le_bytes())
    }

    fn read64(&self, offset: u64) -> u64 {
        match self.read::<8>(offset) {
            Ok(b) => u64::from_le_bytes(b),
            Err(e) => {
                self.gone(offset, &e);
                u64::MAX
            }
        }
    }

    fn write64(&self, offset: u64, value: u64) {
        self.write(offset, &value.to_le_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A region over an unlinked temp file (nothing is left behind, even by a panicking test).
    fn temp_region(tag: &str, file_len: u64, base: u64, len: u64) -> FdRegion {
        let path = std::env::temp_dir().join(format!("scst-accel-fdregion-{tag}-{}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("temp file");
        std::fs::remove_file(&path).expect("unlink");
        file.set_len(file_len).expect("size");
        FdRegion::new(file, base, len, "test-bar".into())
    }

    #[test]
    fn accesses_land_at_the_region_offset() {
        let r = temp_region("offset", 0x3000, 0x1000, 0x1000);
        r.write32(0x10, 0xcafe_f00d);
        r.write64(0x18, 0x0102_0304_0506_0708);
        assert_eq!(r.read32(0x10), 0xcafe_f00d);
        assert_eq!(r.read64(0x18), 0x0102_0304_0506_0708);
        assert_eq!(r.read32(0x18), 0x0506_0708, "little-endian: low word first");
        let mut raw = [0u8; 4];
        r.file.read_exact_at(&mut raw, 0x1010).expect("pread");
        assert_eq!(
            u32::from_le_bytes(raw),
            0xcafe_f00d,
            "region offset 0x10 is file offset 0x1010"
        );
    }

    #[test]
    fn a_failed_read_returns_all_ones() {
        // The file is shorter than the region: the read hits EOF, as a read of a vanished
        // device fails, and must look like a gone device rather than a zero register.
        let r = temp_region("short", 0x10, 0, 0x1000);
        assert_eq!(r.read32(0x100), u32::MAX);
        assert_eq!(r.read64(0x100), u64::MAX);
    }

    #[test]
    #[should_panic(expected = "offset 0x1000")]
    fn access_past_the_end_panics_with_the_offset() {
        let r = temp_region("bounds", 0x2000, 0, 0x1000);
        r.read32(0x1000);
    }

    #[test]
    #[should_panic(expected = "misaligned 8-byte register access at offset 0xc")]
    fn misaligned_access_panics() {
        let r = temp_region("align", 0x2000, 0, 0x1000);
        r.write64(0xc, 0);
    }
}
