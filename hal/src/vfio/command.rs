//! The PCI command register as vfio-pci presents it, and what the backend does with it that
//! depends on how vfio-pci virtualises it (drivers/vfio/pci/vfio_pci_config.c): clearing Bus
//! Master Enable without revoking the BAR mapping.
//!
//! The logic is written against [`ConfigIo`] so that the tests can run it on a model of
//! vfio-pci's rules instead of a device.

use std::io;

use crate::HalError;

/// PCI command register offset in config space (`linux/pci_regs.h` PCI_COMMAND).
pub(super) const PCI_COMMAND: u64 = 0x04;
/// PCI_COMMAND_MEMORY: the function answers memory-space (BAR) accesses.
pub(super) const PCI_COMMAND_MEMORY: u16 = 1 << 1;
/// PCI_COMMAND_MASTER: the function may issue DMA.
pub(super) const PCI_COMMAND_MASTER: u16 = 1 << 2;

/// 16-bit access to a function's config space: the VFIO config region (`ConfigSpace` in
/// device.rs), or a model of vfio-pci in the tests.
pub(super) trait ConfigIo {
    /// Read the 16 bits at `offset`.
    fn read16(&self, offset: u64) -> io::Result<u16>;
    /// Write the 16 bits at `offset`.
    fn write16(&self, offset: u64, value: u16) -> io::Result<()>;
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
    if cmd == u16::MAX {
        return Err(HalError::OffTheBus {
            device: device.to_owned(),
        });
    }
    config
        .write16(PCI_COMMAND, (cmd | PCI_COMMAND_MEMORY) & !PCI_COMMAND_MASTER)
        .map_err(|e| fail(format!("writing the command register: {e}")))?;
    let now = config
        .read16(PCI_COMMAND)
        .map_err(|e| fail(format!("reading the command register back: {e}")))?;
    if now == u16::MAX || now & PCI_COMMAND_MASTER != 0 {
        return Err(fail(format!(
            "the command register reads {now:#06x} after clearing Bus Master Enable"
        )));
    }
    Ok((cmd, now))
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::cell::RefCell;

    use super::*;

    /// PCI_COMMAND_IO, the other bit vfio-pci tracks in its virtual copy.
    const PCI_COMMAND_IO: u16 = 1 << 0;
    /// PCI_COMMAND_INTX_DISABLE, the bit vfio-pci virtualises.
    const PCI_COMMAND_INTX_DISABLE: u16 = 1 << 10;

    /// vfio-pci's PCI_COMMAND of one function, after drivers/vfio/pci/vfio_pci_config.c:
    /// - a read gives the function's bits, except INTx Disable from the virtual copy
    ///   (vfio_default_config_read; init_pci_cap_basic_perm virtualises only that bit);
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
            assert_eq!(offset, PCI_COMMAND, "the model has the command register only");
            let hw = if self.gone.get() { u16::MAX } else { self.hw.get() };
            Ok((hw & !PCI_COMMAND_INTX_DISABLE) | (self.virt.get() & PCI_COMMAND_INTX_DISABLE))
        }

        fn write16(&self, offset: u64, value: u16) -> io::Result<()> {
            assert_eq!(offset, PCI_COMMAND, "the model has the command register only");
            self.writes.borrow_mut().push(value);
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
}
