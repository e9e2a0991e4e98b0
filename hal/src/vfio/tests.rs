//! `open_with_sysfs` against a fake sysfs/dev tree, built up one fix at a time so each check
//! fails in turn, in order, with the fix its message must name; and a real open, skipped
//! where there is no VFIO.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::path::PathBuf;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering;

use super::VfioDevice;
use super::VfioError;
use crate::skip::test_skipped;
use crate::DeviceBacking;

const ADDR: &str = "0000:00:04.0";
const PEER: &str = "0000:00:04.1";
const GROUP: u32 = 7;

/// A fake `/sys` and `/dev` under a unique temp directory, removed on drop.
struct FakeTree {
    root: PathBuf,
}

impl FakeTree {
    fn new() -> Self {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let root = std::env::temp_dir().join(format!(
            "scst-accel-vfio-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("sys/bus/pci/devices")).expect("sysfs dir");
        fs::create_dir_all(root.join("dev")).expect("dev dir");
        Self { root }
    }

    fn sys(&self) -> PathBuf {
        self.root.join("sys")
    }

    fn dev(&self) -> PathBuf {
        self.root.join("dev")
    }

    /// `sys/devices/pci0000:00/ADDR` with `sys/bus/pci/devices/ADDR` linking to it, as in sysfs.
    fn add_device(&self, addr: &str) {
        let real = self.sys().join("devices/pci0000:00").join(addr);
        fs::create_dir_all(&real).expect("device dir");
        symlink(&real, self.sys().join("bus/pci/devices").join(addr)).expect("bus link");
    }

    fn device_dir(&self, addr: &str) -> PathBuf {
        self.sys().join("devices/pci0000:00").join(addr)
    }

    fn put_in_group(&self, addr: &str, group: u32) {
        let group_dir = self.sys().join("kernel/iommu_groups").join(group.to_string());
        fs::create_dir_all(group_dir.join("devices")).expect("group dir");
        symlink(&group_dir, self.device_dir(addr).join("iommu_group")).expect("iommu_group link");
        symlink(self.device_dir(addr), group_dir.join("devices").join(addr)).expect("group member link");
    }

    fn bind(&self, addr: &str, driver: &str) {
        let link = self.device_dir(addr).join("driver");
        let _ = fs::remove_file(&link);
        symlink(self.sys().join("bus/pci/drivers").join(driver), link).expect("driver link");
    }

    fn open(&self, addr: &str) -> VfioError {
        VfioDevice::open_with_sysfs(addr, &self.sys(), &self.dev()).expect_err("the fake tree has no device")
    }
}

impl Drop for FakeTree {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

fn assert_mentions(e: &VfioError, needles: &[&str]) {
    let msg = e.to_string();
    for n in needles {
        assert!(msg.contains(n), "`{n}` missing from: {msg}");
    }
}

#[test]
fn every_check_fails_in_order_with_its_fix() {
    let t = FakeTree::new();

    // 1. Address.
    let e = t.open("00:04.0");
    assert!(matches!(e, VfioError::BadAddress { .. }), "{e:?}");
    assert_mentions(&e, &["DDDD:BB:DD.F", "lspci -D"]);

    // 2. Device exists.
    let e = t.open(ADDR);
    assert!(matches!(e, VfioError::NoSuchDevice { .. }), "{e:?}");
    assert_mentions(&e, &[ADDR, "lspci -D"]);
    t.add_device(ADDR);

    // 3. vfio-pci loaded (/dev/vfio/vfio).
    let e = t.open(ADDR);
    assert!(matches!(e, VfioError::NoVfioContainer { .. }), "{e:?}");
    assert_mentions(&e, &["modprobe vfio-pci", "IOMMU"]);
    fs::create_dir_all(t.dev().join("vfio")).expect("dev/vfio");
    fs::write(t.dev().join("vfio/vfio"), b"").expect("container node");

    // 4. IOMMU on (iommu_group link).
    let e = t.open(ADDR);
    assert!(matches!(e, VfioError::NoIommuGroup { .. }), "{e:?}");
    assert_mentions(
        &e,
        &["the IOMMU is off", "intel_iommu=on iommu=pt", "amd_iommu=on"],
    );
    t.put_in_group(ADDR, GROUP);

    // 5a. Bound to no driver.
    let e = t.open(ADDR);
    assert!(matches!(e, VfioError::Unbound { .. }), "{e:?}");
    assert_mentions(
        &e,
        &[
            "echo vfio-pci > /sys/bus/pci/devices/0000:00:04.0/driver_override",
            "echo 0000:00:04.0 > /sys/bus/pci/drivers_probe",
        ],
    );

    // 5b. Bound to another driver, which is named with the unbind and the two commands.
    t.bind(ADDR, "nvme");
    let e = t.open(ADDR);
    assert!(
        matches!(&e, VfioError::WrongDriver { driver, .. } if driver == "nvme"),
        "{e:?}"
    );
    assert_mentions(
        &e,
        &[
            "bound to nvme",
            "echo 0000:00:04.0 > /sys/bus/pci/devices/0000:00:04.0/driver/unbind",
            "echo vfio-pci > /sys/bus/pci/devices/0000:00:04.0/driver_override",
            "echo 0000:00:04.0 > /sys/bus/pci/drivers_probe",
        ],
    );
    t.bind(ADDR, "vfio-pci");

    // 6. Group viable: another member bound to a host driver is named with its driver; an
    //    unbound member and a bridge on pcieport are fine.
    t.add_device(PEER);
    t.put_in_group(PEER, GROUP);
    t.bind(PEER, "e1000e");
    t.add_device("0000:00:04.2");
    t.put_in_group("0000:00:04.2", GROUP);
    t.add_device("0000:00:1c.0");
    t.put_in_group("0000:00:1c.0", GROUP);
    t.bind("0000:00:1c.0", "pcieport");
    let e = t.open(ADDR);
    assert!(
        matches!(&e, VfioError::GroupNotViable { group: GROUP, offenders }
            if offenders == &[(PEER.to_string(), "e1000e".to_string())]),
        "{e:?}"
    );
    assert_mentions(
        &e,
        &[
            "IOMMU group 7 is not viable",
            "0000:00:04.1 (bound to e1000e)",
            "driver/unbind",
        ],
    );
    t.bind(PEER, "vfio-pci");

    // 7. The group node. Missing:
    let e = t.open(ADDR);
    assert!(matches!(e, VfioError::GroupNodeMissing { .. }), "{e:?}");
    assert_mentions(&e, &["/vfio/7", "bound to vfio-pci"]);
    // Present but not openable read-write (a directory: EISDIR). As root a mode-000 node opens
    // anyway, so this proves the check really opens the node and reports its failure there;
    // the EACCES -> "run as root or chown" mapping is proven by preflight's errno test and by
    // `a_mode_000_group_node_is_permission_denied` below (run as `nobody` when root).
    fs::create_dir(t.dev().join("vfio/7")).expect("group node as a dir");
    let e = t.open(ADDR);
    assert!(
        matches!(&e, VfioError::GroupOpen { source, .. } if source.raw_os_error() == Some(libc::EISDIR)),
        "{e:?}"
    );
    fs::remove_dir(t.dev().join("vfio/7")).expect("rmdir");
    fs::write(t.dev().join("vfio/7"), b"").expect("group node");

    // Every check passes; the ioctls are not attempted against a fake /dev.
    let e = t.open(ADDR);
    assert!(matches!(e, VfioError::AlternateDevRoot { .. }), "{e:?}");
}

#[test]
fn an_unparsable_iommu_group_reads_as_iommu_off() {
    let t = FakeTree::new();
    t.add_device(ADDR);
    fs::create_dir_all(t.dev().join("vfio")).expect("dev/vfio");
    fs::write(t.dev().join("vfio/vfio"), b"").expect("container node");
    symlink("/nowhere/groups/abc", t.device_dir(ADDR).join("iommu_group")).expect("link");
    let e = t.open(ADDR);
    assert!(
        matches!(&e, VfioError::NoIommuGroup { source, .. } if source.kind() == std::io::ErrorKind::InvalidData),
        "{e:?}"
    );
}

#[test]
fn a_mode_000_group_node_is_permission_denied() {
    // The effective uid, from /proc (std has no geteuid and this file has no unsafe).
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .is_some_and(|euid| euid == "0");
    if root {
        // Root opens a mode-000 node anyway (CAP_DAC_OVERRIDE): run this test again in a child
        // process that is not root.
        return rerun_as_nobody("a_mode_000_group_node_is_permission_denied");
    }
    use std::os::unix::fs::PermissionsExt;
    let t = FakeTree::new();
    t.add_device(ADDR);
    fs::create_dir_all(t.dev().join("vfio")).expect("dev/vfio");
    fs::write(t.dev().join("vfio/vfio"), b"").expect("container node");
    t.put_in_group(ADDR, GROUP);
    t.bind(ADDR, "vfio-pci");
    let node = t.dev().join("vfio/7");
    fs::write(&node, b"").expect("group node");
    fs::set_permissions(&node, fs::Permissions::from_mode(0o000)).expect("chmod 000");
    let e = t.open(ADDR);
    assert!(matches!(e, VfioError::GroupPermission { .. }), "{e:?}");
    assert_mentions(&e, &["run as root", "chown USER"]);
}

/// Run the test `name` of this file again in a child process of this test binary, as uid and
/// gid 65534 (`nobody`), and fail unless it ran there and passed. For the checks only a user
/// without CAP_DAC_OVERRIDE can make; said as a skip only where root cannot drop to that user.
fn rerun_as_nobody(name: &str) {
    use std::os::unix::process::CommandExt;
    const NOBODY: u32 = 65534;
    let test = format!(
        "{}::{name}",
        module_path!().split_once("::").map_or("", |(_, m)| m)
    );
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            return test_skipped(
                name,
                &format!("running as root, and this test binary's path is unknown ({e})"),
            )
        }
    };
    let out = std::process::Command::new(&exe)
        .args(["--exact", &test, "--test-threads", "1"])
        .env("TMPDIR", "/tmp")
        .env_remove("SCST_ACCEL_SKIP_LOG")
        // std drops the supplementary groups too (setgroups(0)) when root sets a uid.
        .uid(NOBODY)
        .gid(NOBODY)
        .output();
    let out = match out {
        Ok(out) => out,
        Err(e) => {
            return test_skipped(
                name,
                &format!("running as root, which opens a mode-000 node anyway, and {exe:?} could not be run as uid {NOBODY}: {e}"),
            )
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{test} as uid {NOBODY}: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two adjacent pages mapped by two map calls: the kernel's type1 v2 unmap would take both for
/// a range over both, and the second for a range over it and the hole after it (then report a
/// size other than the one asked, after unmapping); half of the first it would refuse itself
/// (EINVAL: it splits no mapping). `VfioDma` refuses all three before the ioctl
/// (`HalError::NotOneMapping`), so both mappings are still the kernel's, which each exact unmap then proves (vfio-ioctls fails an
/// unmap whose size the kernel reports is not the size asked, so one that found nothing
/// mapped would fail).
#[allow(unsafe_code)] // UNSAFETY: DmaMapper::map is unsafe: the pages must outlive their mappings.
fn unmaps_are_exact_against_the_kernel(dev: &VfioDevice) {
    let pages = Box::into_raw(Box::new([Page([0; 4096]), Page([0; 4096])]));
    let host = pages as u64;
    let iova = 1 << 33;
    for i in 0..2 {
        // SAFETY: page `i` of a heap allocation of two page-aligned pages that this test
        // neither reads nor writes, and frees only after both unmaps returned Ok.
        unsafe { dev.dma().map(iova + i * 4096, host + i * 4096, 4096) }
            .unwrap_or_else(|e| panic!("map page {i}: {e}"));
    }
    assert_eq!(dev.vfio_dma().live_mappings(), 2);
    for (what, start, len) in [
        ("both mappings", iova, 8192),
        ("the second mapping and the hole after it", iova + 4096, 8192),
        ("half of the first mapping", iova, 2048),
    ] {
        match dev.dma().unmap(start, len) {
            Err(crate::HalError::NotOneMapping { .. }) => {}
            other => panic!("an unmap of {what} must be refused before the kernel sees it: {other:?}"),
        }
        assert_eq!(
            dev.vfio_dma().live_mappings(),
            2,
            "after the refused unmap of {what}"
        );
    }
    for i in 0..2 {
        if let Err(e) = dev.dma().unmap(iova + i * 4096, 4096) {
            panic!("page {i} was no longer the kernel's to unmap: {e}; the pages are leaked");
        }
    }
    assert_eq!(dev.vfio_dma().live_mappings(), 0);
    // SAFETY: made by `Box::into_raw` above, no longer mapped, not freed before.
    drop(unsafe { Box::from_raw(pages) });
}

/// One page, page-aligned: host memory for a DMA mapping, allocated without unsafe code.
#[repr(C, align(4096))]
struct Page([u8; 4096]);

/// Open the function named by `SCST_ACCEL_VFIO_DEVICE` (bound to vfio-pci): BAR0, MSI-X on and
/// off, a DMA map and unmap of one page, the reset, and bus mastering still on after it (the
/// kernel restores config space around the reset), then off and on again, and off again with
/// Memory Space Enable cleared under the driver (as root: it is cleared through sysfs).
#[test]
#[allow(unsafe_code)] // UNSAFETY: DmaMapper::map is unsafe: the test's page must outlive the mapping.
fn open_a_real_device_when_there_is_one() {
    const NAME: &str = "open_a_real_device_when_there_is_one";
    if !Path::new("/dev/vfio/vfio").exists() {
        return test_skipped(
            NAME,
            "no /dev/vfio/vfio on this machine; the QEMU HIL suite covers VFIO",
        );
    }
    let Ok(addr) = std::env::var("SCST_ACCEL_VFIO_DEVICE") else {
        return test_skipped(
            NAME,
            "/dev/vfio/vfio exists but SCST_ACCEL_VFIO_DEVICE names no device to open",
        );
    };
    let dev = VfioDevice::open(&addr).expect("open the VFIO device named by SCST_ACCEL_VFIO_DEVICE");
    assert_eq!(dev.id(), addr);
    assert!(!dev.bar0().is_empty());
    // The identity read through VFIO's config region is the one sysfs reports for the function.
    let sysfs = |file: &str| {
        let path = Path::new("/sys/bus/pci/devices").join(&addr).join(file);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        u32::from_str_radix(text.trim().trim_start_matches("0x"), 16).expect("a hex number in sysfs")
    };
    let identity = dev.pci_identity().expect("read the config space header");
    assert_eq!(
        (
            u32::from(identity.vendor_id),
            u32::from(identity.device_id),
            identity.class_code
        ),
        (sysfs("vendor"), sysfs("device"), sysfs("class")),
        "{identity}"
    );
    let vectors = dev.max_interrupts().min(2);
    let fds = dev.enable_interrupts(vectors).expect("enable MSI-X");
    assert_eq!(fds.len(), vectors as usize);
    dev.disable_interrupts().expect("disable MSI-X");

    // A raw pointer, not a live `Box`: no Rust reference to the page exists while it is
    // mapped, and a failed assertion below leaks it rather than free it mapped.
    let page = Box::into_raw(Box::new(Page([0; 4096])));
    let iova = 1 << 32;
    // SAFETY: `page` is a page-aligned heap allocation of 4096 bytes that this test neither
    // reads nor writes, and frees only after the unmap below has returned Ok.
    unsafe { dev.dma().map(iova, page as u64, 4096) }.expect("map one page");
    assert_eq!(dev.vfio_dma().live_mappings(), 1);
    if let Err(e) = dev.dma().unmap(iova, 4096) {
        panic!("unmap of the page just mapped failed: {e}; the page is leaked");
    }
    // SAFETY: made by `Box::into_raw` above, no longer mapped, not freed before.
    drop(unsafe { Box::from_raw(page) });
    assert_eq!(dev.vfio_dma().live_mappings(), 0);
    unmaps_are_exact_against_the_kernel(&dev);

    match dev.reset() {
        Ok(kind) => assert_eq!(kind, crate::ResetKind::Function),
        Err(crate::HalError::NoReset { .. }) => {}
        Err(e) => panic!("reset failed: {e}"),
    }
    let master = |dev: &VfioDevice| dev.pci_command().expect("read PCI_COMMAND") & (1 << 2) != 0;
    assert!(master(&dev), "bus mastering still enabled after the reset");
    dev.disable_bus_master().expect("disable bus mastering");
    assert!(!master(&dev), "Bus Master Enable reads back clear");
    dev.enable_bus_master().expect("enable bus mastering again");
    assert!(master(&dev), "Bus Master Enable reads back set");
    bus_master_off_under_a_dark_bar(&dev, &addr);
    the_removal_request_is_registered_where_the_kernel_signals(&dev);
}

/// vfio-pci offers its device request on every function (`vfio_pci_get_irq_count`), so the
/// open registered an eventfd there; a user-space trigger of that index (what
/// `vfio_pci_core_request` does on an unbind) is then seen as the kernel's request.
fn the_removal_request_is_registered_where_the_kernel_signals(dev: &VfioDevice) {
    let request = dev
        .removal_request()
        .expect("vfio-pci offers a device request (VFIO_PCI_REQ_IRQ_INDEX) on every function");
    assert!(!request.is_requested(), "nobody asked for the device yet");
    dev.trigger_removal_request()
        .expect("SET_IRQS loopback on VFIO_PCI_REQ_IRQ_INDEX: EINVAL means no eventfd is registered");
    assert!(
        request.is_requested(),
        "the kernel's signal reaches the registered eventfd"
    );
}

/// Memory Space Enable cleared behind vfio-pci's back (through sysfs, as AER recovery or a
/// failed config restore leaves it): BAR0 is dark while bus mastering is on, the case
/// `disable_bus_master` is called for. Clearing bus mastering then must leave BAR0's mapping
/// usable: after a write of MSE 0 through vfio-pci the next access to it is SIGBUS, which kills
/// this test binary. MSE reads set again afterwards (vfio-pci wrote it through).
fn bus_master_off_under_a_dark_bar(dev: &VfioDevice, addr: &str) {
    use super::command::PCI_COMMAND;
    use super::command::PCI_COMMAND_MASTER;
    use super::command::PCI_COMMAND_MEMORY;
    use std::os::unix::fs::FileExt;
    const NAME: &str = "open_a_real_device_when_there_is_one (bus master off under a dark BAR)";
    let path = Path::new("/sys/bus/pci/devices").join(addr).join("config");
    let sysfs = match fs::OpenOptions::new().read(true).write(true).open(&path) {
        Ok(f) => f,
        Err(e) => {
            return test_skipped(
                NAME,
                &format!(
                    "{} cannot be opened for writing ({e}): it takes root",
                    path.display()
                ),
            )
        }
    };
    let mut b = [0u8; 2];
    sysfs
        .read_exact_at(&mut b, PCI_COMMAND)
        .expect("read PCI_COMMAND through sysfs");
    let cmd = u16::from_le_bytes(b) & !PCI_COMMAND_MEMORY;
    sysfs
        .write_all_at(&cmd.to_le_bytes(), PCI_COMMAND)
        .expect("clear Memory Space Enable through sysfs");
    let dark = dev.pci_command().expect("read PCI_COMMAND");
    assert_eq!(
        dark & (PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER),
        PCI_COMMAND_MASTER,
        "vfio-pci shows the function's own Memory Space Enable: {dark:#06x}"
    );
    dev.disable_bus_master()
        .expect("disable bus mastering under a dark BAR");
    // SIGBUS here if the write revoked the BAR mapping.
    let id = dev.bar0().read32(0);
    let now = dev.pci_command().expect("read PCI_COMMAND");
    assert_eq!(
        now & (PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER),
        PCI_COMMAND_MEMORY,
        "after disable_bus_master: {now:#06x} (BAR0 offset 0 read {id:#010x})"
    );
    dev.enable_bus_master().expect("enable bus mastering again");
}
