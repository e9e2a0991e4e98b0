//! The UIO device of a TCMU backstore: find it in sysfs by the backstore's name, map it, wait
//! for the kernel's "new entries" event and kick the kernel after completions
//! (tcmu-design.rst, "Device Discovery" and "Writing a user pass-through handler").
//!
//! - Discovery: every `<sysfs>/class/uio/uioN/name` of a TCMU device reads
//!   `tcm-user/<hba_num>/<device_name>/<subtype>[/<config>]`; the backstore is
//!   `/sys/kernel/config/target/core/user_<hba_num>/<device_name>`. The mapping's size is
//!   `uioN/maps/map0/size` (hex, `0x...`), and mmap must ask for exactly that.
//! - Events: a read of 4 bytes from `/dev/uioN` blocks until the kernel posts, and returns the
//!   event count; here it is only done after `poll` says readable, with a timeout, so every
//!   wait is bounded. A 4-byte write makes the kernel reap completions (`tcmu_irqcontrol`).
//!
//! The sysfs and `/dev` directories are parameters so tests can use a scratch tree.
// UNSAFETY: mmap(2) and munmap(2) of the UIO device, whose mapping becomes a `SharedMemory`.
#![allow(unsafe_code)]

use super::region::Region;
use super::region::SharedMemory;
use std::fs::File;
use std::io;
use std::io::Read;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::fd::AsRawFd;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::path::PathBuf;
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Duration;

/// Prefix of every TCMU UIO name.
pub const TCMU_UIO_PREFIX: &str = "tcm-user";

/// What went wrong finding, mapping or talking to a UIO device.
#[derive(Debug, thiserror::Error)]
pub enum UioError {
    /// A sysfs directory or attribute could not be read.
    #[error("cannot read {path}")]
    Sysfs {
        /// What was read.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// `maps/map0/size` does not hold a non-zero number.
    #[error("{path} holds {text:?}, not a map size")]
    MapSize {
        /// The attribute.
        path: PathBuf,
        /// Its content.
        text: String,
    },
    /// No TCMU UIO device is named after the backstore.
    #[error("no UIO device for TCMU backstore user_{hba}/{device}")]
    NotFound {
        /// HBA number.
        hba: String,
        /// Device name.
        device: String,
    },
    /// `/dev/uioN` could not be opened.
    #[error("cannot open {path}")]
    Open {
        /// The node.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// mmap of the device failed.
    #[error("cannot map {len} bytes of {path}")]
    Map {
        /// The node.
        path: PathBuf,
        /// The size asked for.
        len: usize,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// poll or read of the event count failed.
    #[error("waiting for UIO events failed")]
    Wait(#[source] io::Error),
    /// The event read returned fewer than 4 bytes (0: the device is gone).
    #[error("UIO event read returned {0} bytes")]
    ShortRead(usize),
    /// The kick write failed.
    #[error("kicking the kernel failed")]
    Kick(#[source] io::Error),
}

/// A parsed TCMU UIO name: `tcm-user/<hba>/<device>/<subtype>[/<config>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcmuUioName {
    /// HBA number (`user_<hba>` in configfs).
    pub hba: String,
    /// Backstore device name.
    pub device: String,
    /// The handler subtype the backstore asked for.
    pub subtype: String,
    /// The handler-specific configuration string, if any (may contain '/').
    pub config: Option<String>,
}

impl TcmuUioName {
    /// Parse a `name` attribute (trailing newline allowed); `None` for other UIO devices or a
    /// TCMU name with an empty part.
    pub fn parse(name: &str) -> Option<Self> {
        let mut parts = name.trim_end_matches('\n').splitn(5, '/');
        if parts.next()? != TCMU_UIO_PREFIX {
            return None;
        }
        let hba = parts.next()?;
        let device = parts.next()?;
        let subtype = parts.next()?;
        if hba.is_empty() || device.is_empty() || subtype.is_empty() {
            return None;
        }
        Some(Self {
            hba: hba.to_owned(),
            device: device.to_owned(),
            subtype: subtype.to_owned(),
            config: parts.next().map(str::to_owned),
        })
    }
}

/// A TCMU UIO device found in sysfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UioInfo {
    /// N of `uioN`.
    pub index: u32,
    /// Its parsed name.
    pub name: TcmuUioName,
    /// The size of map 0, which mmap must ask for.
    pub map_size: usize,
}

fn read_attr(path: &Path) -> Result<String, UioError> {
    std::fs::read_to_string(path).map_err(|source| UioError::Sysfs {
        path: path.to_owned(),
        source,
    })
}

fn parse_size(text: &str) -> Option<usize> {
    let t = text.trim();
    let size = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => usize::from_str_radix(hex, 16).ok()?,
        None => t.parse().ok()?,
    };
    (size > 0).then_some(size)
}

/// Every TCMU UIO device under `<sysfs>/class/uio` (`sysfs` is normally `/sys`), by index.
/// Other UIO devices are skipped.
///
/// # Errors
/// [`UioError::Sysfs`] when the directory or a TCMU device's attribute cannot be read;
/// [`UioError::MapSize`] when a TCMU device's map size is not a number.
pub fn list_tcmu(sysfs: &Path) -> Result<Vec<UioInfo>, UioError> {
    let uio_class = sysfs.join("class/uio");
    let entries = std::fs::read_dir(&uio_class).map_err(|source| UioError::Sysfs {
        path: uio_class.clone(),
        source,
    })?;
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| UioError::Sysfs {
            path: uio_class.clone(),
            source,
        })?;
        let file_name = entry.file_name();
        let Some(index) = file_name
            .to_str()
            .and_then(|n| n.strip_prefix("uio"))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let dir = entry.path();
        let Some(name) = TcmuUioName::parse(&read_attr(&dir.join("name"))?) else {
            continue;
        };
        let size_path = dir.join("maps/map0/size");
        let text = read_attr(&size_path)?;
        let map_size = parse_size(&text).ok_or(UioError::MapSize {
            path: size_path,
            text,
        })?;
        found.push(UioInfo {
            index,
            name,
            map_size,
        });
    }
    found.sort_by_key(|i| i.index);
    Ok(found)
}

/// The UIO device of backstore `user_<hba>/<device>`.
///
/// # Errors
/// As [`list_tcmu`], and [`UioError::NotFound`].
pub fn find_backstore(sysfs: &Path, hba: &str, device: &str) -> Result<UioInfo, UioError> {
    list_tcmu(sysfs)?
        .into_iter()
        .find(|i| i.name.hba == hba && i.name.device == device)
        .ok_or_else(|| UioError::NotFound {
            hba: hba.to_owned(),
            device: device.to_owned(),
        })
}

/// A shared read-write mapping of a UIO device, unmapped on drop.
#[derive(Debug)]
pub struct UioMapping {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is process-wide memory, valid until `Drop` whichever thread drops it.
unsafe impl Send for UioMapping {}
// SAFETY: the value hands out only the raw base; accesses go through `Region`.
unsafe impl Sync for UioMapping {}

impl UioMapping {
    fn map(file: &File, path: &Path, len: usize) -> Result<Self, UioError> {
        let map_err = |source| UioError::Map {
            path: path.to_owned(),
            len,
            source,
        };
        // SAFETY: a fresh shared mapping chosen by the kernel (no fixed address), of a descriptor
        // we hold open for the call; the result is checked before use. Offset 0 selects map 0.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(map_err(io::Error::last_os_error()));
        }
        let base =
            NonNull::new(p.cast::<u8>()).ok_or_else(|| map_err(io::Error::from(io::ErrorKind::Other)))?;
        Ok(Self { base, len })
    }
}

// SAFETY: `base..base + len` is a live MAP_SHARED read-write mapping until `Drop`, page-aligned
// (mmap's result), and this type never forms a reference into it.
unsafe impl SharedMemory for UioMapping {
    fn base(&self) -> NonNull<u8> {
        self.base
    }

    fn len(&self) -> usize {
        self.len
    }
}

impl Drop for UioMapping {
    fn drop(&mut self) {
        // SAFETY: exactly the range mmap returned, unmapped once; every `Region` holds an `Arc`
        // of this value, so none outlives it.
        let rc = unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
        if rc != 0 {
            log::error!("munmap of a TCMU region failed: {}", io::Error::last_os_error());
        }
    }
}

/// The event side of a UIO fd: bounded waits for kernel events and kicks.
#[derive(Debug)]
pub struct UioEvents {
    file: File,
}

impl UioEvents {
    /// Wrap a descriptor (the UIO node, or in tests one end of a socket pair).
    pub fn new(fd: OwnedFd) -> Self {
        Self { file: File::from(fd) }
    }

    /// Wait up to `timeout` for the kernel's event; `Some(event count)` when one came, `None`
    /// on timeout or a signal.
    ///
    /// # Errors
    /// [`UioError::Wait`] from poll or read; [`UioError::ShortRead`] when the read returns
    /// fewer than 4 bytes (0 after the device went away).
    pub fn wait(&self, timeout: Duration) -> Result<Option<u32>, UioError> {
        let ready =
            scst_accel_hal::fdio::poll_readable(&[self.file.as_fd()], timeout).map_err(UioError::Wait)?;
        if !ready.first().copied().unwrap_or(false) {
            return Ok(None);
        }
        self.take_event()
    }

    /// Read the event count after `poll` said the fd is readable (it blocks otherwise), which
    /// makes the fd unreadable until the kernel's next event. `None` on a signal.
    ///
    /// # Errors
    /// As [`Self::wait`].
    pub fn take_event(&self) -> Result<Option<u32>, UioError> {
        let mut count = [0u8; 4];
        match (&self.file).read(&mut count) {
            Ok(4) => Ok(Some(u32::from_ne_bytes(count))),
            Ok(n) => Err(UioError::ShortRead(n)),
            Err(e) if matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock) => Ok(None),
            Err(e) => Err(UioError::Wait(e)),
        }
    }

    /// Tell the kernel that `cmd_tail` moved (a 4-byte write; the value is ignored).
    ///
    /// # Errors
    /// [`UioError::Kick`].
    pub fn kick(&self) -> Result<(), UioError> {
        match (&self.file).write(&0u32.to_ne_bytes()) {
            Ok(4) => Ok(()),
            Ok(n) => Err(UioError::Kick(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("kick wrote {n} of 4 bytes"),
            ))),
            Err(e) => Err(UioError::Kick(e)),
        }
    }
}

impl AsFd for UioEvents {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// An open, mapped TCMU UIO device.
#[derive(Debug)]
pub struct UioDevice {
    info: UioInfo,
    events: UioEvents,
    /// The mapping (a `UioMapping`, or in tests the simulated kernel's memory).
    region: Region,
}

impl UioDevice {
    /// Open `<dev_dir>/uio<N>` (normally `/dev`) read-write and map all of map 0.
    ///
    /// # Errors
    /// [`UioError::Open`], [`UioError::Map`].
    pub fn open(dev_dir: &Path, info: &UioInfo) -> Result<Self, UioError> {
        let path = dev_dir.join(format!("uio{}", info.index));
        let file = File::options()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|source| UioError::Open {
                path: path.clone(),
                source,
            })?;
        let mapping = Arc::new(UioMapping::map(&file, &path, info.map_size)?);
        log::info!(
            "tcmu: mapped {} ({} bytes) for backstore user_{}/{}",
            path.display(),
            info.map_size,
            info.name.hba,
            info.name.device
        );
        Ok(Self {
            info: info.clone(),
            events: UioEvents::new(OwnedFd::from(file)),
            region: Region::new(mapping),
        })
    }

    /// A device over memory and an event fd of the caller's: the simulated kernel's region
    /// ([`super::sim::SimKernel`]) and one end of a socket pair, so a service can be tested
    /// serving a ring without target_core_user.
    pub fn from_parts(info: UioInfo, region: Region, events: UioEvents) -> Self {
        Self { info, events, region }
    }

    /// What sysfs said about the device.
    pub fn info(&self) -> &UioInfo {
        &self.info
    }

    /// A view of the mapping (keeps it mapped while it lives).
    pub fn region(&self) -> Region {
        self.region.clone()
    }

    /// The event side.
    pub fn events(&self) -> &UioEvents {
        &self.events
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;
    use std::time::Instant;

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("scst-accel-tcmu-uio-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir
    }

    fn fake_uio(sysfs: &Path, index: u32, name: &str, size: &str) {
        let dir = sysfs.join(format!("class/uio/uio{index}"));
        std::fs::create_dir_all(dir.join("maps/map0")).expect("uio dir");
        std::fs::write(dir.join("name"), format!("{name}\n")).expect("name");
        std::fs::write(dir.join("maps/map0/size"), format!("{size}\n")).expect("size");
    }

    #[test]
    fn names_parse_with_and_without_a_config_string() {
        let n = TcmuUioName::parse("tcm-user/3/disk0/scst-accel/ram/size=1g\n").expect("tcmu name");
        assert_eq!(
            n,
            TcmuUioName {
                hba: "3".into(),
                device: "disk0".into(),
                subtype: "scst-accel".into(),
                config: Some("ram/size=1g".into()),
            }
        );
        let n = TcmuUioName::parse("tcm-user/1/d/sub").expect("no config");
        assert_eq!(n.config, None);
        assert_eq!(TcmuUioName::parse("uio_pci_generic"), None);
        assert_eq!(TcmuUioName::parse("tcm-user/1/d"), None);
        assert_eq!(TcmuUioName::parse("tcm-user/1//sub"), None);
    }

    #[test]
    fn the_backstore_is_found_by_hba_and_name_among_other_uio_devices() {
        let sysfs = scratch("find");
        fake_uio(&sysfs, 0, "uio_pci_generic", "0x1000");
        fake_uio(&sysfs, 1, "tcm-user/1/disk0/scst-accel", "0x0000000000802000");
        fake_uio(&sysfs, 12, "tcm-user/2/disk0/scst-accel/x", "4096");
        std::fs::create_dir_all(sysfs.join("class/uio/not-a-uio")).expect("dir");
        let all = list_tcmu(&sysfs).expect("list");
        assert_eq!(all.iter().map(|i| i.index).collect::<Vec<_>>(), [1, 12]);
        let info = find_backstore(&sysfs, "2", "disk0").expect("found");
        assert_eq!((info.index, info.map_size), (12, 4096));
        assert_eq!(
            find_backstore(&sysfs, "1", "disk0").expect("found").map_size,
            0x802000
        );
        let err = find_backstore(&sysfs, "3", "disk0").expect_err("no such backstore");
        assert!(matches!(err, UioError::NotFound { .. }), "{err:?}");
        let _ = std::fs::remove_dir_all(&sysfs);
    }

    #[test]
    fn a_bad_map_size_is_an_error_not_a_zero_mapping() {
        for bad in ["0x", "0", "lots", ""] {
            let sysfs = scratch("badsize");
            fake_uio(&sysfs, 0, "tcm-user/1/d/s", bad);
            let err = list_tcmu(&sysfs).expect_err("bad size");
            assert!(matches!(err, UioError::MapSize { .. }), "{bad:?}: {err:?}");
            let _ = std::fs::remove_dir_all(&sysfs);
        }
    }

    #[test]
    fn a_missing_class_directory_keeps_its_errno() {
        let err = list_tcmu(Path::new("/nonexistent")).expect_err("missing");
        match err {
            UioError::Sysfs { source, .. } => assert_eq!(source.raw_os_error(), Some(libc::ENOENT)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn open_maps_the_node_shared() {
        // A regular file stands in for /dev/uioN: the mapping must be MAP_SHARED, so bytes
        // written through the region reach the file (as they reach the kernel's pages).
        let dev = scratch("dev");
        let node = dev.join("uio5");
        std::fs::write(&node, vec![0u8; 8192]).expect("node");
        let info = UioInfo {
            index: 5,
            name: TcmuUioName::parse("tcm-user/1/d/s").expect("name"),
            map_size: 8192,
        };
        let device = UioDevice::open(&dev, &info).expect("open");
        let region = device.region();
        assert_eq!(region.len(), 8192);
        region.write(4096, b"shared");
        region.store_u32_release(64, 0x0102_0304);
        drop(device); // the region keeps the mapping alive
        assert_eq!(region.load_u32_acquire(64), 0x0102_0304);
        drop(region);
        let bytes = std::fs::read(&node).expect("read back");
        assert_eq!(&bytes[4096..4102], b"shared");
        assert_eq!(&bytes[64..68], &0x0102_0304u32.to_ne_bytes());
        let missing = UioInfo { index: 6, ..info };
        assert!(matches!(
            UioDevice::open(&dev, &missing),
            Err(UioError::Open { .. })
        ));
        let _ = std::fs::remove_dir_all(&dev);
    }

    #[test]
    fn waits_are_bounded_and_return_the_event_count() {
        let (ours, mut kernel) = UnixStream::pair().expect("pair");
        let events = UioEvents::new(OwnedFd::from(ours));
        let start = Instant::now();
        assert_eq!(events.wait(Duration::from_millis(30)).expect("wait"), None);
        assert!(start.elapsed() >= Duration::from_millis(25));
        kernel.write_all(&7u32.to_ne_bytes()).expect("event");
        assert_eq!(events.wait(Duration::from_secs(2)).expect("wait"), Some(7));
        events.kick().expect("kick");
        let mut kicked = [0u8; 4];
        kernel.read_exact(&mut kicked).expect("kick arrives");
        assert_eq!(kicked, [0; 4]);
        drop(kernel);
        let err = events.wait(Duration::from_secs(2)).expect_err("peer gone");
        assert!(matches!(err, UioError::ShortRead(0)), "{err:?}");
    }
}
