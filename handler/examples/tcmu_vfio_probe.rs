//! Can a device DMA straight into a TCMU data area? Maps pieces of a served backstore's data
//! area into a VFIO container (`VFIO_IOMMU_MAP_DMA`, which pins the pages) and reports what the
//! kernel answers, then unmaps them. Run in the HIL guest beside `serve --frontend tcmu` on the
//! RAM board after some I/O, with the NVMe function bound to vfio-pci (docs/tcmu.md, "VFIO
//! straight into the data area"):
//!
//! `tcmu_vfio_probe UIO_DEV MAP0_BYTES PCI_ADDRESS` e.g. `tcmu_vfio_probe /dev/uio0 0x40800000 0000:00:01.0`
//!
//! Probes: the first data page (allocated by the kernel once a command used it), the whole data
//! area at once (what a zero-copy design needs: one mapping made at start), and the data area's
//! last page (never allocated unless the ring was full).
// UNSAFETY: one mmap of the UIO device, two volatile reads of its mailbox, the VFIO mapping of
// pieces of it (a probe: the very thing under test).
#![allow(unsafe_code)]

use scst_accel_hal::vfio::VfioDevice;
use scst_accel_hal::DmaMapper;
use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::process::ExitCode;

/// IOVA where the probe maps: inside a 39-bit IOMMU aperture (QEMU's intel-iommu default).
const IOVA: u64 = 1 << 32;
const PAGE: u64 = 4096;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [uio, map_len, pci] = args.as_slice() else {
        eprintln!("usage: tcmu_vfio_probe UIO_DEV MAP0_BYTES PCI_ADDRESS");
        return ExitCode::from(2);
    };
    let Some(len) = parse_u64(map_len) else {
        eprintln!("MAP0_BYTES: a number (0x... allowed)");
        return ExitCode::from(2);
    };
    match probe(uio, len, pci) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tcmu_vfio_probe: {e}");
            ExitCode::FAILURE
        }
    }
}

/// An error and its sources, one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

fn parse_u64(text: &str) -> Option<u64> {
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

fn probe(uio: &str, len: u64, pci: &str) -> Result<(), String> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(uio)
        .map_err(|e| format!("{uio}: {e}"))?;
    let size = usize::try_from(len).map_err(|e| e.to_string())?;
    // SAFETY: a fresh shared mapping of the UIO device's map 0 (offset 0), `size` bytes as sysfs
    // says; only read through raw pointers below and handed to the kernel for pinning.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(format!("mmap {uio}: {}", std::io::Error::last_os_error()));
    }
    let host = base as u64;
    // tcmu_mailbox: cmdr_off at byte 4, cmdr_size at byte 8 (uapi target_core_user.h).
    // SAFETY: both are inside the mapping's first page, 4-byte aligned.
    let (cmdr_off, cmdr_size) = unsafe {
        (
            std::ptr::read_volatile(base.cast::<u8>().add(4).cast::<u32>()),
            std::ptr::read_volatile(base.cast::<u8>().add(8).cast::<u32>()),
        )
    };
    let data_off = u64::from(cmdr_off) + u64::from(cmdr_size);
    if data_off.saturating_add(PAGE) > len {
        // SAFETY: the mapping made above, not used past here.
        unsafe { libc::munmap(base, size) };
        return Err(format!(
            "the mailbox puts the data area at {data_off:#x}, past the {len:#x}-byte map0: not a TCMU ring this probe understands"
        ));
    }
    println!("map0 {len:#x} bytes at {host:#x}: command ring at {cmdr_off:#x}, {cmdr_size:#x} bytes; data area at {data_off:#x}, {:#x} bytes", len - data_off);
    let device = VfioDevice::open(pci).map_err(|e| format!("VFIO {pci}: {e}"))?;
    let dma = device.vfio_dma();
    // The control: an ordinary anonymous page, which VFIO must accept at the same IOVA.
    let control = vec![0u8; 2 * PAGE as usize];
    let control_page = (control.as_ptr() as u64).next_multiple_of(PAGE);
    // SAFETY: the page lies inside `control`, alive until after the unmap below, and is not
    // touched while mapped.
    match unsafe { dma.map(IOVA, control_page, PAGE) } {
        Ok(()) => {
            println!("MAP_DMA an anonymous page (the control): ok");
            if let Err(e) = dma.unmap(IOVA, PAGE) {
                println!("  UNMAP_DMA: {e}; the page stays allocated");
                std::mem::forget(control);
            }
        }
        Err(e) => println!("MAP_DMA an anonymous page (the control): refused: {}", chain(&e)),
    }
    let tries = [
        ("the first data page", data_off, PAGE),
        ("the whole data area", data_off, len - data_off),
        ("the last data page", len - PAGE, PAGE),
    ];
    let mut still_mapped = false;
    for (what, off, bytes) in tries {
        // SAFETY: host+off..+bytes lies in our live mapping, which outlives the mapping made
        // here (unmapped right after); nothing reads or writes it through a reference.
        match unsafe { dma.map(IOVA, host + off, bytes) } {
            Ok(()) => {
                println!("MAP_DMA {what} ({bytes:#x} bytes at +{off:#x}): ok");
                if let Err(e) = dma.unmap(IOVA, bytes) {
                    println!("  UNMAP_DMA: {e}");
                    still_mapped = true;
                }
            }
            Err(e) => println!(
                "MAP_DMA {what} ({bytes:#x} bytes at +{off:#x}): refused: {}",
                chain(&e)
            ),
        }
    }
    if still_mapped {
        // The device may still reach part of it: the process keeps it until it exits.
        println!("map0 left mapped: an IOMMU mapping of it could not be removed");
    } else {
        // SAFETY: the mapping made above, no longer used, and no IOMMU mapping of it left.
        unsafe { libc::munmap(base, size) };
    }
    Ok(())
}
