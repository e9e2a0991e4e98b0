//! The PCI command register as vfio-pci presents it, and what the backend does with it that
//! depends on how vfio-pci virtualises it (drivers/vfio/pci/vfio_pci_config.c): clearing Bus
//! Master Enable without revoking the BAR mapping, and telling a function that is off the bus
//! from one that is not.
//!
//! The logic is written against [`ConfigIo`] so that the tests can run it on a model of
//! vfio-pci's rules instead of a device.

use std::io;

use crate::HalError;
use crate::PciIdentity;

/// PCI command register offset in config space (`linux/pci_regs.h` PCI_COMMAND).
pub(super) const PCI_COMMAND: u64 = 0x04;
/// PCI_COMMAND_MEMORY: the function answers memory-space (BAR) accesses.
pub(super) const PCI_COMMAND_MEMORY: u16 = 1 << 1;
/// PCI_COMMAND_MASTER: the function may issue DMA.
pub(super) const PCI_COMMAND_MASTER: u16 = 1 << 2;
/// PCI_COMMAND_INTX_DISABLE: the one bit of the command register vfio-pci virtualises.
const PCI_COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// Vendor ID offset in config space (`linux/pci_regs.h` PCI_VENDOR_ID).
const PCI_VENDOR_ID: u64 = 0x00;
/// Device ID offset (PCI_DEVICE_ID).
const PCI_DEVICE_ID: u64 = 0x02;
/// Revision ID and class code (PCI_CLASS_REVISION: revision 08h, class code 09h-0Bh).
const PCI_CLASS_REVISION: u64 = 0x08;

/// 16-bit access to a function's config space: the VFIO config region (`ConfigSpace` in
/// device.rs), or a model of vfio-pci in the tests.
pub(super) trait ConfigIo {
    /// Read the 16 bits at `offset`.
    fn read16(&self, offset: u64) -> io::Result<u16>;
    /// Write the 16 bits at `offset`.
    fn write16(&self, offset: u64, value: u16) -> io::Result<()>;
}

/// Whether a command register read through vfio-pci is a function off the bus (removed, or its
/// link down), whose config reads complete with all-ones.
///
/// Not `cmd == 0xFFFF`: vfio-pci virtualises INTx Disable (bit 10; init_pci_cap_basic_perm) and
/// takes that bit from its own copy (vfio_default_config_read), so such a function reads
/// 0xFBFF whenever the copy has it clear. Every other bit is the function's, and bits 11-15 are
/// reserved, read as 0 by a function that answers: a read with all fifteen set came from no
/// function. (The vendor ID is no witness either: vfio-pci virtualises it whole.)
pub(super) fn reads_off_the_bus(cmd: u16) -> bool {
    cmd | PCI_COMMAND_INTX_DISABLE == u16::MAX
}

/// Clear Bus Master Enable and read it back ([`crate::DeviceBacking::disable_bus_master`] of
/// the VFIO backend). Returns the command register before and after.
///
/// Memory Space Enable is written set, whatever was read. vfio-pci does not virtualise it
/// (init_pci_cap_basic_perm virtualises only INTx Disable in PCI_COMMAND), so the read gives
/// the function's own bit, which is clear exactly when this is called for a BAR that reads
/// all-ones because MSE was cleared under the driver (AER recovery, a failed config restore).
/// Written back clear, vfio_basic_config_write would zap every BAR mmap
/// (vfio_pci_zap_and_down_write_memory_lock) and keep MSE clear in its virtual copy, and the
/// next access to BAR0's mapping would fault to SIGBUS (vfio_pci_mmap_huge_fault:
/// !__vfio_pci_memory_enabled): the driver's next "is it gone?" read would kill the process.
/// Written set while the virtual copy has it set (our open set it) and the function has it
/// clear, vfio-pci takes it for a reset it did not see, restores the BARs (vfio_bar_restore)
/// and writes MSE through: the mapping stays valid, and the BAR answers again. Both bits are in
/// one byte, so no narrower write could leave MSE alone. MSE only lets the host reach the BAR;
/// with Bus Master Enable clear the function makes no memory request.
pub(super) fn clear_bus_master(config: &dyn ConfigIo, device: &str) -> Result<(u16, u16), HalError> {
    let fail = |reason: String| HalError::BusMaster {
        device: device.to_owned(),
        reason,
    };
    let cmd = config
        .read16(PCI_COMMAND)
        .map_err(|e| fail(format!("reading the command register: {e}")))?;
    let off_the_bus = || HalError::OffTheBus {
        device: device.to_owned(),
    };
    if reads_off_the_bus(cmd) {
        return Err(off_the_bus());
    }
    config
        .write16(PCI_COMMAND, (cmd | PCI_COMMAND_MEMORY) & !PCI_COMMAND_MASTER)
        .map_err(|e| fail(format!("writing the command register: {e}")))?;
    let now = config
        .read16(PCI_COMMAND)
        .map_err(|e| fail(format!("reading the command register back: {e}")))?;
    if reads_off_the_bus(now) {
        // It left the bus since the first read: it makes no memory request either.
        return Err(off_the_bus());
    }
    if now & PCI_COMMAND_MASTER != 0 {
        return Err(fail(format!(
            "the command register reads {now:#06x} after clearing Bus Master Enable"
        )));
    }
    Ok((cmd, now))
}

/// The function's identity from its config header ([`crate::DeviceBacking::pci_identity`] of
/// the VFIO backend); [`HalError::OffTheBus`] when the command register says it is gone
/// ([`reads_off_the_bus`]). The vendor and device IDs read are vfio-pci's copies, taken when
/// the device was opened (init_pci_cap_basic_perm virtualises both), so they are no proof that
/// the function answers.
pub(super) fn read_identity(config: &dyn ConfigIo, device: &str) -> Result<PciIdentity, HalError> {
    let read = |offset| {
        config.read16(offset).map_err(|e| HalError::Config {
            device: device.to_owned(),
            reason: format!("reading offset {offset:#04x}: {e}"),
        })
    };
    if reads_off_the_bus(read(PCI_COMMAND)?) {
        return Err(HalError::OffTheBus {
            device: device.to_owned(),
        });
    }
    let vendor_id = read(PCI_VENDOR_ID)?;
    let device_id = read(PCI_DEVICE_ID)?;
    // 08h revision, 09h programming interface; 0Ah sub-class, 0Bh base class.
    let (low, high) = (read(PCI_CLASS_REVISION)?, read(PCI_CLASS_REVISION + 2)?);
    Ok(PciIdentity {
        vendor_id,
        device_id,
        class_code: (u32::from(high) << 8) | u32::from(low >> 8),
    })
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::cell::RefCell;

    use super::*;

    /// PCI_COMMAND_IO, the other bit vfio-pci tracks in its virtual copy.
    const PCI_COMMAND_IO: u16 = 1 << 0;
    /// The model's function: QEMU's NVMe controller (1b36:0010, class 010802, revision 2).
    const VENDOR: u16 = 0x1b36;
    const DEVICE: u16 = 0x0010;
    const CLASS_REVISION: [u16; 2] = [0x0202, 0x0108];

    /// vfio-pci's PCI_COMMAND of one function, after drivers/vfio/pci/vfio_pci_config.c:
    /// - a read gives the function's bits, except INTx Disable from the virtual copy
    ///   (vfio_default_config_read; init_pci_cap_basic_perm virtualises only that bit); the
    ///   vendor and device IDs are the virtual copy's, the class and revision the function's
    ///   (all-ones once it is off the bus);
    /// - a write (vfio_basic_config_write) with Memory Space Enable clear zaps every BAR mmap;
    ///   the virtual copy takes the written MSE, I/O and INTx Disable bits; the other bits go to
    ///   the function (vfio_default_config_write);
    /// - an access to a zapped BAR mapping faults in again only while the virtual MSE is set,
    ///   else SIGBUS (vfio_pci_mmap_huge_fault, __vfio_pci_memory_enabled).
    struct VfioCommand {
        /// The function's register; all-ones once it is off the bus.
        hw: Cell<u16>,
        /// vfio-pci's virtual copy (vconfig).
        virt: Cell<u16>,
        zapped: Cell<bool>,
        gone: Cell<bool>,
        /// The function leaves the bus at the next write (before it reaches it).
        leaves_at_write: Cell<bool>,
        writes: RefCell<Vec<u16>>,
    }

    impl VfioCommand {
        /// A function opened by `VfioDevice::open` (which wrote MSE and BME set), whose own
        /// register now holds `hw`.
        fn opened(hw: u16) -> Self {
            Self {
                hw: Cell::new(hw),
                virt: Cell::new(PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER),
                zapped: Cell::new(false),
                gone: Cell::new(false),
                leaves_at_write: Cell::new(false),
                writes: RefCell::new(Vec::new()),
            }
        }

        /// What a load through BAR0's mapping does now: `false` is SIGBUS.
        fn bar_mapping_usable(&self) -> bool {
            !self.zapped.get() || self.virt.get() & PCI_COMMAND_MEMORY != 0
        }
    }

    impl ConfigIo for VfioCommand {
        fn read16(&self, offset: u64) -> io::Result<u16> {
            let gone = self.gone.get();
            Ok(match offset {
                PCI_VENDOR_ID => VENDOR,
                PCI_DEVICE_ID => DEVICE,
                PCI_CLASS_REVISION | 0x0a if gone => u16::MAX,
                PCI_CLASS_REVISION => CLASS_REVISION[0],
                0x0a => CLASS_REVISION[1],
                PCI_COMMAND => {
                    let hw = if gone { u16::MAX } else { self.hw.get() };
                    (hw & !PCI_COMMAND_INTX_DISABLE) | (self.virt.get() & PCI_COMMAND_INTX_DISABLE)
                }
                _ => panic!("the model has no register at {offset:#x}"),
            })
        }

        fn write16(&self, offset: u64, value: u16) -> io::Result<()> {
            assert_eq!(offset, PCI_COMMAND, "the model has the command register only");
            self.writes.borrow_mut().push(value);
            if self.leaves_at_write.get() {
                self.gone.set(true);
            }
            if value & PCI_COMMAND_MEMORY == 0 {
                self.zapped.set(true);
            }
            let tracked = PCI_COMMAND_MEMORY | PCI_COMMAND_IO | PCI_COMMAND_INTX_DISABLE;
            self.virt.set((self.virt.get() & !tracked) | (value & tracked));
            if !self.gone.get() {
                let hw = self.hw.get();
                self.hw
                    .set((hw & PCI_COMMAND_INTX_DISABLE) | (value & !PCI_COMMAND_INTX_DISABLE));
            }
            Ok(())
        }
    }

    #[test]
    fn clearing_bus_master_keeps_the_bar_mapping_when_memory_space_was_cleared_under_us() {
        // AER recovery left the function with Memory Space Enable clear (its BAR reads
        // all-ones) and Bus Master Enable set: the case disable_bus_master is called for.
        let config = VfioCommand::opened(PCI_COMMAND_MASTER);
        let (before, after) = clear_bus_master(&config, "dev").expect("bus mastering cleared");
        assert_eq!(before, PCI_COMMAND_MASTER);
        assert_eq!(after & PCI_COMMAND_MASTER, 0);
        let writes = config.writes.borrow();
        assert!(
            writes.iter().all(|w| w & PCI_COMMAND_MEMORY != 0),
            "a write cleared Memory Space Enable: {writes:x?}"
        );
        assert!(
            config.bar_mapping_usable(),
            "BAR0's mapping would fault to SIGBUS after the writes {writes:x?}"
        );
        assert_eq!(
            config.hw.get() & PCI_COMMAND_MASTER,
            0,
            "the function's BME is clear"
        );
    }

    #[test]
    fn clearing_bus_master_of_a_live_function_changes_only_that_bit() {
        let live = PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER | (1 << 8);
        let config = VfioCommand::opened(live);
        let (before, after) = clear_bus_master(&config, "dev").expect("bus mastering cleared");
        assert_eq!((before, after), (live, live & !PCI_COMMAND_MASTER));
        assert_eq!(*config.writes.borrow(), vec![live & !PCI_COMMAND_MASTER]);
        assert!(config.bar_mapping_usable());
    }

    #[test]
    fn a_function_off_the_bus_reads_all_ones_but_the_virtual_intx_disable() {
        assert!(reads_off_the_bus(0xffff));
        assert!(reads_off_the_bus(0xfbff), "INTx Disable clear in vfio-pci's copy");
        // Live values: as opened, with INTx disabled, every defined bit set, nothing set.
        for live in [0x0006, 0x0406, 0x07ff, 0x0000, 0x0002] {
            assert!(!reads_off_the_bus(live), "{live:#06x}");
        }
    }

    #[test]
    fn a_removed_function_is_off_the_bus_whatever_vfio_pcis_intx_disable() {
        for intx in [0, PCI_COMMAND_INTX_DISABLE] {
            let config = VfioCommand::opened(PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
            config.virt.set(config.virt.get() | intx);
            config.gone.set(true);
            let read = config.read16(PCI_COMMAND).expect("read");
            assert!(
                matches!(clear_bus_master(&config, "dev"), Err(HalError::OffTheBus { .. })),
                "command register {read:#06x}"
            );
            assert!(config.writes.borrow().is_empty(), "nothing is written to it");
            assert!(
                matches!(read_identity(&config, "dev"), Err(HalError::OffTheBus { .. })),
                "identity with command register {read:#06x} (its vendor ID reads {VENDOR:#06x})"
            );
        }
    }

    #[test]
    fn a_function_that_leaves_the_bus_during_the_clear_is_off_the_bus() {
        let config = VfioCommand::opened(PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
        config.leaves_at_write.set(true);
        assert!(matches!(
            clear_bus_master(&config, "dev"),
            Err(HalError::OffTheBus { .. })
        ));
    }

    #[test]
    fn a_live_functions_identity_is_read_from_its_header() {
        let config = VfioCommand::opened(PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
        let id = read_identity(&config, "dev").expect("identity");
        assert_eq!(
            (id.vendor_id, id.device_id, id.class_code),
            (VENDOR, DEVICE, 0x010802)
        );
    }
}
