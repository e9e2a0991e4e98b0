//! Register access through pread(2)/pwrite(2) on the VFIO device fd at a region's offset: the
//! fallback for a BAR the kernel does not let us mmap (no `VFIO_REGION_INFO_FLAG_MMAP`, or the
//! mmap failed, e.g. because the MSI-X table shares the BAR on an older kernel). Each access is
//! one system call, so this is slow but correct.
//!
//! Widths: a 4-byte pread/pwrite becomes one 4-byte access of the BAR. An 8-byte one does not
//! behave the same on every kernel: vfio-pci (`vfio_pci_core_do_io_rw`) makes it one 8-byte
//! access only on recent kernels (the 8-byte path was added in 2024, and is compiled in only
//! where the build has 64-bit I/O accessors); older ones make it two 4-byte accesses. So a
//! 64-bit register is always reached here as two 4-byte system calls, low word (at `offset`)
//! first, then the high word, for reads and writes alike: [`super::Access64::Split`]'s order,
//! on every kernel. Another agent can observe the register between the halves, as under
//! `Split`, and a read can tear (the halves are two reads).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;

use crate::RegisterIo;

/// Positional I/O on the device fd: [`File`], or a recording stand-in in the tests.
trait PositionalIo: Send + Sync + std::fmt::Debug {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
}

impl PositionalIo for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(self, buf, offset)
    }
}

/// A device region reached by pread/pwrite, one 4-byte system call per 32-bit access and two
/// per 64-bit access (low word first; see the module's note on widths). Bounds and alignment
/// are checked as for [`super::MmioRegion`]; an I/O error reads as all-ones (what a PCIe read
/// of a gone device returns, so the driver's "device gone" check sees it) and a failed write
/// is logged.
#[derive(Debug)]
pub struct FdRegion {
    file: Box<dyn PositionalIo>,
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
        Self::over(Box::new(file), base, len, name)
    }

    fn over(file: Box<dyn PositionalIo>, base: u64, len: u64, name: String) -> Self {
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
        self.checked(offset, 8);
        let halves = self
            .read::<4>(offset)
            .and_then(|low| Ok((low, self.read::<4>(offset + 4)?)));
        match halves {
            Ok((low, high)) => {
                u64::from(u32::from_le_bytes(low)) | (u64::from(u32::from_le_bytes(high)) << 32)
            }
            Err(e) => {
                self.gone(offset, &e);
                u64::MAX
            }
        }
    }

    fn write64(&self, offset: u64, value: u64) {
        self.checked(offset, 8);
        self.write(offset, &(value as u32).to_le_bytes());
        self.write(offset + 4, &((value >> 32) as u32).to_le_bytes());
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

    /// A region that remembers every pread/pwrite made on it: (write, file offset, length).
    #[derive(Debug, Default)]
    struct Recording {
        bytes: std::sync::Mutex<Vec<u8>>,
        calls: std::sync::Mutex<Vec<(bool, u64, usize)>>,
    }

    impl PositionalIo for std::sync::Arc<Recording> {
        fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            self.calls.lock().expect("calls").push((false, offset, buf.len()));
            let at = offset as usize;
            buf.copy_from_slice(&self.bytes.lock().expect("bytes")[at..at + buf.len()]);
            Ok(())
        }

        fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
            self.calls.lock().expect("calls").push((true, offset, buf.len()));
            let at = offset as usize;
            self.bytes.lock().expect("bytes")[at..at + buf.len()].copy_from_slice(buf);
            Ok(())
        }
    }

    /// 64-bit accesses reach the fd as two 4-byte ones, low word first, for reads and writes:
    /// what every kernel's vfio-pci then performs as two 4-byte BAR accesses in that order.
    #[test]
    fn a_64_bit_access_is_two_32_bit_ones_low_word_first() {
        let io = std::sync::Arc::new(Recording {
            bytes: std::sync::Mutex::new(vec![0; 0x2000]),
            ..Recording::default()
        });
        let r = FdRegion::over(Box::new(io.clone()), 0x1000, 0x1000, "test-bar".into());
        r.write64(0x18, 0x1111_2222_3333_4444);
        assert_eq!(r.read64(0x18), 0x1111_2222_3333_4444);
        r.write32(0x20, 5);
        assert_eq!(
            *io.calls.lock().expect("calls"),
            [
                (true, 0x1018, 4),
                (true, 0x101c, 4),
                (false, 0x1018, 4),
                (false, 0x101c, 4),
                (true, 0x1020, 4)
            ]
        );
        assert_eq!(
            io.bytes.lock().expect("bytes")[0x1018..0x1020],
            [0x44, 0x44, 0x33, 0x33, 0x22, 0x22, 0x11, 0x11],
            "little-endian, low word at the offset"
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
