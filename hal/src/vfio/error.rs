//! Errors of opening a VFIO device. Every variant a user can hit says what to do in its message;
//! the paths in those fixes are the real `/sys` and `/dev` ones (what the user acts on), even
//! when the checks ran against another root in tests.

use std::io;
use std::path::PathBuf;

/// Why a VFIO device could not be opened or set up, with the fix in the message.
#[derive(Debug, thiserror::Error)]
pub enum VfioError {
    /// The address is not of the form `DDDD:BB:DD.F`.
    #[error("`{addr}` is not a PCI address: expected DDDD:BB:DD.F, e.g. 0000:00:04.0 (see `lspci -D`)")]
    BadAddress {
        /// What was given.
        addr: String,
    },
    /// No such device under `/sys/bus/pci/devices`.
    #[error("no PCI device {addr} (looked in {}): check the address with `lspci -D`", .path.display())]
    NoSuchDevice {
        /// PCI address.
        addr: String,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// `/dev/vfio/vfio` is missing: vfio-pci is not loaded.
    #[error(
        "{} does not exist: load vfio-pci with `modprobe vfio-pci` (and `modprobe vfio_iommu_type1`); \
         VFIO also needs the IOMMU on (intel_iommu=on or amd_iommu=on on the kernel command line)",
        .path.display()
    )]
    NoVfioContainer {
        /// The container node looked for.
        path: PathBuf,
    },
    /// The device has no `iommu_group` link (or an unreadable one): the IOMMU is off.
    #[error(
        "{addr} has no IOMMU group: the IOMMU is off: boot with intel_iommu=on iommu=pt (or amd_iommu=on) \
         and check `dmesg | grep -i -e DMAR -e IOMMU`"
    )]
    NoIommuGroup {
        /// PCI address.
        addr: String,
        /// Reading or parsing the link.
        #[source]
        source: io::Error,
    },
    /// The device is bound to no driver.
    #[error(
        "{addr} is bound to no driver: bind it to vfio-pci with \
         `echo vfio-pci > /sys/bus/pci/devices/{addr}/driver_override` and then \
         `echo {addr} > /sys/bus/pci/drivers_probe`"
    )]
    Unbound {
        /// PCI address.
        addr: String,
    },
    /// The device is bound to another driver.
    #[error(
        "{addr} is bound to {driver}, not vfio-pci: unbind it from {driver} with \
         `echo {addr} > /sys/bus/pci/devices/{addr}/driver/unbind`, then \
         `echo vfio-pci > /sys/bus/pci/devices/{addr}/driver_override` and \
         `echo {addr} > /sys/bus/pci/drivers_probe`"
    )]
    WrongDriver {
        /// PCI address.
        addr: String,
        /// The driver it is bound to.
        driver: String,
    },
    /// The IOMMU group cannot be listed.
    #[error("cannot list the devices of IOMMU group {group} ({})", .path.display())]
    GroupUnreadable {
        /// Group number.
        group: u32,
        /// The directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Another device of the group is bound to a host driver.
    #[error(
        "IOMMU group {group} is not viable: {} must be bound to vfio-pci or unbound as well, because \
         the whole group goes to user space together: for each, \
         `echo BDF > /sys/bus/pci/devices/BDF/driver/unbind` (or bind it to vfio-pci like the device)",
        list_offenders(.offenders)
    )]
    GroupNotViable {
        /// Group number.
        group: u32,
        /// (PCI address, driver) of each offending device.
        offenders: Vec<(String, String)>,
    },
    /// Permission denied on `/dev/vfio/N`.
    #[error(
        "permission denied opening {}: run as root, or give the service's user the group node \
         (`chown USER {}` or a udev rule for vfio)",
        .path.display(), .path.display()
    )]
    GroupPermission {
        /// The group node.
        path: PathBuf,
        /// EACCES or EPERM.
        #[source]
        source: io::Error,
    },
    /// `/dev/vfio/N` does not exist although the device is bound to vfio-pci.
    #[error(
        "{} does not exist although {addr} is bound to vfio-pci: check `ls -l /dev/vfio` and that \
         devtmpfs/udev is running",
        .path.display()
    )]
    GroupNodeMissing {
        /// PCI address.
        addr: String,
        /// The group node.
        path: PathBuf,
    },
    /// `/dev/vfio/N` is held by another process.
    #[error(
        "{} is busy: another process (QEMU, another scst-accel) holds IOMMU group {group}; stop it first",
        .path.display()
    )]
    GroupBusy {
        /// Group number.
        group: u32,
        /// The group node.
        path: PathBuf,
    },
    /// Any other failure opening `/dev/vfio/N`.
    #[error("cannot open the VFIO group node {}", .path.display())]
    GroupOpen {
        /// The group node.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Every check passed against a test root; the vfio-ioctls crate opens `/dev/vfio` itself,
    /// so nothing past the checks is done with another root.
    #[error("all VFIO checks passed against {}; opening the device needs the real /dev", .dev_root.display())]
    AlternateDevRoot {
        /// The root the checks used.
        dev_root: PathBuf,
    },
    /// Container creation, TYPE1v2 IOMMU selection or the kernel's own viability check failed.
    #[error(
        "cannot set up the VFIO container with the TYPE1v2 IOMMU for {addr}: check `modprobe vfio_iommu_type1` \
         and that the IOMMU is on"
    )]
    Container {
        /// PCI address.
        addr: String,
        /// Cause from vfio-ioctls.
        #[source]
        source: vfio_ioctls::VfioError,
    },
    /// Getting the device fd from its group failed (group not viable per the kernel, device busy).
    #[error(
        "cannot get the VFIO device fd of {addr} from its group (the kernel found the group not viable, \
         or the device is in use by another process)"
    )]
    DeviceFd {
        /// PCI address.
        addr: String,
        /// Cause from vfio-ioctls.
        #[source]
        source: vfio_ioctls::VfioError,
    },
    /// A device information ioctl failed.
    #[error("{what} failed on {addr}")]
    DeviceInfo {
        /// PCI address.
        addr: String,
        /// The ioctl or step.
        what: &'static str,
        /// Cause (errno).
        #[source]
        source: io::Error,
    },
    /// BAR0 is absent or not a memory BAR the handler can use.
    #[error("BAR0 of {addr} is not usable ({reason}): is this the accelerator function?")]
    Bar0 {
        /// PCI address.
        addr: String,
        /// What is wrong.
        reason: String,
    },
    /// PCI configuration space could not be read or written.
    #[error("cannot {what} the PCI command register of {addr}")]
    Config {
        /// PCI address.
        addr: String,
        /// Read, write or verify.
        what: &'static str,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Pinning memory for DMA needs more than RLIMIT_MEMLOCK allows.
    #[error(
        "pinning {needed} bytes for DMA exceeds RLIMIT_MEMLOCK ({limit} bytes): raise it to at least \
         {needed} bytes: `ulimit -l {needed_kib}` in the shell that starts the service, or \
         `LimitMEMLOCK={needed_kib}K` in its systemd unit (a process with CAP_IPC_LOCK, e.g. root, is \
         not limited)"
    )]
    MemlockLimit {
        /// Bytes the process needs pinned in total.
        needed: u64,
        /// The soft limit in bytes.
        limit: u64,
        /// `needed` in KiB, rounded up (the unit of `ulimit -l`).
        needed_kib: u64,
    },
}

/// `0000:00:04.1 (e1000e), 0000:00:04.2 (snd_hda_intel)`.
fn list_offenders(offenders: &[(String, String)]) -> String {
    offenders
        .iter()
        .map(|(addr, driver)| format!("{addr} (bound to {driver})"))
        .collect::<Vec<_>>()
        .join(", ")
}
