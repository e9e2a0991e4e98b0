//! The checks made before any VFIO ioctl, in the order a user fixes them: address, device,
//! vfio-pci loaded, IOMMU on, driver binding, group viability, group node permission. Each
//! failure is its own [`VfioError`] with the fix; the roots are parameters so tests run the
//! same code against a fake tree.

use std::fs::OpenOptions;
use std::io;
use std::path::Path;
use std::path::PathBuf;

use super::error::VfioError;

/// The driver a device must be bound to.
pub(crate) const VFIO_PCI: &str = "vfio-pci";

/// Drivers another member of the IOMMU group may have without making it unviable. The kernel
/// also accepts pci-stub, and any driver on a bridge (pcieport is the usual one); its own
/// VFIO_GROUP_GET_STATUS check runs afterwards and is authoritative.
const GROUP_DRIVERS_ALLOWED: [&str; 3] = [VFIO_PCI, "pci-stub", "pcieport"];

/// What the checks established.
#[derive(Debug)]
pub(crate) struct Preflight {
    /// `<sysfs>/bus/pci/devices/<addr>`.
    pub(crate) device_dir: PathBuf,
    /// IOMMU group number.
    pub(crate) group: u32,
}

/// Whether `addr` is `DDDD:BB:DD.F` in hex (domain 4 to 8 digits, device < 0x20, function < 8).
pub(crate) fn is_pci_address(addr: &str) -> bool {
    let Some((rest, function)) = addr.rsplit_once('.') else {
        return false;
    };
    let parts: Vec<&str> = rest.split(':').collect();
    let [domain, bus, device] = parts.as_slice() else {
        return false;
    };
    let hex = |s: &str, min: usize, max: usize| {
        (min..=max).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
    };
    hex(domain, 4, 8)
        && hex(bus, 2, 2)
        && hex(device, 2, 2)
        && u8::from_str_radix(device, 16).is_ok_and(|d| d < 0x20)
        && function.len() == 1
        && function.bytes().all(|b| (b'0'..=b'7').contains(&b))
}

/// The last component of a symlink's target (`driver` -> `.../drivers/nvme` gives `nvme`).
fn link_name(link: &Path) -> io::Result<String> {
    let target = std::fs::read_link(link)?;
    target
        .file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} has no name", target.display()),
            )
        })
}

/// The driver `device_dir` is bound to, `None` when unbound.
fn bound_driver(device_dir: &Path) -> Option<String> {
    link_name(&device_dir.join("driver")).ok()
}

/// The IOMMU group number of a device directory.
pub(crate) fn iommu_group(device_dir: &Path) -> io::Result<u32> {
    let name = link_name(&device_dir.join("iommu_group"))?;
    name.parse().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("iommu_group `{name}` is not a number"),
        )
    })
}

/// Turn an error opening `/dev/vfio/N` into the variant that says what to do.
pub(crate) fn group_open_error(addr: &str, group: u32, path: PathBuf, source: io::Error) -> VfioError {
    match source.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) => VfioError::GroupPermission { path, source },
        Some(libc::ENOENT) => VfioError::GroupNodeMissing {
            addr: addr.to_owned(),
            path,
        },
        Some(libc::EBUSY) => VfioError::GroupBusy { group, path },
        _ => VfioError::GroupOpen { path, source },
    }
}

/// Run every check for `addr` against `sysfs_root` (normally `/sys`) and `dev_root` (`/dev`).
pub(crate) fn preflight(addr: &str, sysfs_root: &Path, dev_root: &Path) -> Result<Preflight, VfioError> {
    if !is_pci_address(addr) {
        return Err(VfioError::BadAddress {
            addr: addr.to_owned(),
        });
    }
    let device_dir = sysfs_root.join("bus/pci/devices").join(addr);
    if !device_dir.exists() {
        return Err(VfioError::NoSuchDevice {
            addr: addr.to_owned(),
            path: device_dir,
        });
    }
    let container = dev_root.join("vfio/vfio");
    if !container.exists() {
        return Err(VfioError::NoVfioContainer { path: container });
    }
    let group = iommu_group(&device_dir).map_err(|source| VfioError::NoIommuGroup {
        addr: addr.to_owned(),
        source,
    })?;
    match bound_driver(&device_dir) {
        None => {
            return Err(VfioError::Unbound {
                addr: addr.to_owned(),
            })
        }
        Some(driver) if driver != VFIO_PCI => {
            return Err(VfioError::WrongDriver {
                addr: addr.to_owned(),
                driver,
            })
        }
        Some(_) => {}
    }
    check_group_members(addr, group, sysfs_root)?;
    let node = dev_root.join("vfio").join(group.to_string());
    // Opened and closed again: only the permission is in question here; vfio-ioctls opens it
    // for real next (a group node may be open only once, so this one must be closed first).
    match OpenOptions::new().read(true).write(true).open(&node) {
        Ok(_) => {}
        Err(source) => return Err(group_open_error(addr, group, node, source)),
    }
    log::debug!("{addr}: VFIO checks passed, IOMMU group {group}");
    Ok(Preflight { device_dir, group })
}

/// Every other device of the group must be bound to an allowed driver or unbound.
fn check_group_members(addr: &str, group: u32, sysfs_root: &Path) -> Result<(), VfioError> {
    let dir = sysfs_root
        .join("kernel/iommu_groups")
        .join(group.to_string())
        .join("devices");
    let entries = std::fs::read_dir(&dir).map_err(|source| VfioError::GroupUnreadable {
        group,
        path: dir.clone(),
        source,
    })?;
    let mut offenders = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| VfioError::GroupUnreadable {
            group,
            path: dir.clone(),
            source,
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == addr {
            continue;
        }
        if let Some(driver) = bound_driver(&entry.path()) {
            if !GROUP_DRIVERS_ALLOWED.contains(&driver.as_str()) {
                offenders.push((name, driver));
            }
        }
    }
    if offenders.is_empty() {
        return Ok(());
    }
    offenders.sort();
    Err(VfioError::GroupNotViable { group, offenders })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_addresses() {
        for good in ["0000:00:04.0", "0000:ff:1f.7", "10000:00:00.0", "abcd:EF:01.3"] {
            assert!(is_pci_address(good), "{good}");
        }
        for bad in [
            "",
            "00:04.0",
            "0000:00:04",
            "0000:00:4.0",
            "0000:00:04.8",
            "0000:00:20.0",
            "0000:0g:04.0",
            "0000:00:04.0.1",
            "0000:00:00:04.0",
            "000:00:04.0",
            "0000:00:04.00",
        ] {
            assert!(!is_pci_address(bad), "{bad}");
        }
    }

    #[test]
    fn group_open_errors_are_classified_by_errno() {
        // The mapping the real EACCES on a mode-000 node goes through (root cannot reproduce
        // that in a test; see vfio/tests.rs for what the fake tree proves).
        let p = || PathBuf::from("/dev/vfio/7");
        let e = group_open_error("0000:00:04.0", 7, p(), io::Error::from_raw_os_error(libc::EACCES));
        assert!(matches!(e, VfioError::GroupPermission { .. }));
        let msg = e.to_string();
        assert!(
            msg.contains("run as root") && msg.contains("chown USER /dev/vfio/7"),
            "{msg}"
        );
        let e = group_open_error("0000:00:04.0", 7, p(), io::Error::from_raw_os_error(libc::EPERM));
        assert!(matches!(e, VfioError::GroupPermission { .. }));
        let e = group_open_error("0000:00:04.0", 7, p(), io::Error::from_raw_os_error(libc::EBUSY));
        assert!(e.to_string().contains("another process"), "{e}");
        let e = group_open_error("0000:00:04.0", 7, p(), io::Error::from_raw_os_error(libc::ENOENT));
        assert!(matches!(e, VfioError::GroupNodeMissing { .. }));
        let e = group_open_error("0000:00:04.0", 7, p(), io::Error::from_raw_os_error(libc::EISDIR));
        assert!(matches!(e, VfioError::GroupOpen { .. }));
    }
}
