//! Board definitions: what the driver needs to know about one product that the device does not
//! tell it, as data. A vendor adds a board by adding a [`BoardDefinition`] to [`BOARDS`] and
//! naming it for the command line (docs/boards.md, "Adding a board"), or by passing one to
//! [`crate::open::open_board`]; nothing in the handler changes.

use scst_accel_hal::PciIdentity;

/// How completions are signalled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterruptMode {
    /// One MSI-X vector per queue.
    Msix,
    /// No interrupts: the driver polls the completion rings.
    Poll,
}

/// Which driver speaks to the board.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineKind {
    /// The SCA-1 contract (docs/accelerator.md).
    Sca1,
    /// An NVMe controller (NVMe base specification 1.4, NVM command set).
    Nvme,
}

/// Device behaviours that differ from the contract and that the driver works around.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Quirks {
    /// 64-bit registers must be accessed as two 32-bit accesses, low word first (writes and
    /// reads): the register bus takes no 8-byte access. Both drivers honour it
    /// (`Sca1Config::split_64bit_mmio`, `NvmeConfig::split_64bit_mmio`).
    pub split_64bit_mmio: bool,
    /// The device reports a volatile write cache but completes a write that asks for Force
    /// Unit Access (NVMe CDW12 bit 30) before the data is on stable media: QEMU 7.2's
    /// emulated controller (hw/nvme), measured under the HIL suite (its host process makes no
    /// `fdatasync` for a FUA write, one for each Flush; docs/nvme.md "FUA"). The store then
    /// follows each FUA write with a Flush and completes the write only when the Flush has
    /// completed (`NvmeConfig::fua_ignored`, [`crate::engine::Geometry::fua_durable`]).
    pub fua_ignored: bool,
    /// The device's medium ids (an NVMe namespace's NGUID and EUI64) are not unique to the
    /// medium, so they must not be the disk's SCSI identity: initiators (multipath) would take
    /// two appliances' disks for one LUN. QEMU's emulated controller gives a namespace
    /// configured without an `eui64` the EUI64 52:54:00:00:00:00:00:00 + the namespace count
    /// (hw/nvme `NVME_EUI64_DEFAULT`), the same in every VM; Linux keeps the same workaround
    /// (`NVME_QUIRK_BOGUS_NID`) for drives that report one NGUID/EUI64 on every unit. The
    /// driver then reports no device ids ([`crate::engine::Controller::device_ids`]), and the
    /// identity is configured or generated and persisted instead.
    pub bogus_device_ids: bool,
}

/// The PCI class code of an NVM Express I/O controller: base class 01h (mass storage),
/// sub-class 08h (non-volatile memory), programming interface 02h (NVM Express).
pub const NVME_CLASS: u32 = 0x01_08_02;

/// One board.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BoardDefinition {
    /// Name used on the command line (`--board NAME`).
    pub name: &'static str,
    /// One line for `--help` and logs.
    pub description: &'static str,
    /// The driver.
    pub engine: EngineKind,
    /// PCI vendor ID the function must report (0: any vendor).
    pub vendor_id: u16,
    /// PCI device ID the function must report (0: any device).
    pub device_id: u16,
    /// PCI class code the function must report (0: any class): what a driver for a standard
    /// interface binds by, as Linux's nvme driver binds every NVM Express controller by
    /// [`NVME_CLASS`].
    pub class_code: u32,
    /// Queues the driver brings up (capped by CAP0).
    pub queues: u32,
    /// Ring entries per queue (capped by CAP0).
    pub queue_depth: u32,
    /// Largest transfer per descriptor (SCA-1) or command (NVMe) the board handles well, in
    /// whole 4 KiB pages: both drivers cap their geometry by it (`Sca1Config` and
    /// `NvmeConfig::max_transfer_bytes`), and the device caps it further (CAP1, MDTS).
    pub max_transfer_bytes: u32,
    /// Interrupt mode.
    pub interrupts: InterruptMode,
    /// Quirks.
    pub quirks: Quirks,
}

impl BoardDefinition {
    /// Whether a function that says it is `identity` is this board: every ID the definition
    /// names (not 0) matches. Checked before the driver touches the function's registers, so
    /// a wrong `--pci` address or `--board` name never has another device's BAR written as if
    /// it were this board's.
    pub fn admits(&self, identity: &PciIdentity) -> bool {
        (self.vendor_id == 0 || self.vendor_id == identity.vendor_id)
            && (self.device_id == 0 || self.device_id == identity.device_id)
            && (self.class_code == 0 || self.class_code == identity.class_code)
    }

    /// What [`BoardDefinition::admits`] asks for, in words.
    pub fn expected_identity(&self) -> String {
        let ids = match (self.vendor_id, self.device_id) {
            (0, 0) => "any vendor and device".to_owned(),
            (0, device) => format!("any vendor, device {device:04x}"),
            (vendor, 0) => format!("vendor {vendor:04x}, any device"),
            (vendor, device) => format!("{vendor:04x}:{device:04x}"),
        };
        match self.class_code {
            0 => format!("{ids}, any class"),
            class => format!("{ids}, class {class:06x}"),
        }
    }
}

/// The simulated SCA-1 board (boards/src/sim), used by the demo and the test suites.
pub const SIM: BoardDefinition = BoardDefinition {
    name: "sim",
    description: "simulated SCA-1 accelerator (IOMMU model, fault injection)",
    engine: EngineKind::Sca1,
    vendor_id: 0,
    device_id: 0,
    class_code: 0,
    queues: 4,
    queue_depth: 256,
    max_transfer_bytes: 1 << 20,
    interrupts: InterruptMode::Msix,
    quirks: Quirks {
        split_64bit_mmio: false,
        fua_ignored: false,
        bogus_device_ids: false,
    },
};

/// A PCIe function implementing the SCA-1 contract, through VFIO.
pub const SCA1_PCI: BoardDefinition = BoardDefinition {
    name: "sca1",
    description: "SCA-1 contract accelerator on PCIe (VFIO, --pci ADDRESS)",
    engine: EngineKind::Sca1,
    vendor_id: 0x1d0f,
    device_id: 0x5ca1,
    class_code: 0,
    queues: 4,
    queue_depth: 1024,
    max_transfer_bytes: 1 << 20,
    interrupts: InterruptMode::Msix,
    quirks: Quirks {
        split_64bit_mmio: true,
        fua_ignored: false,
        bogus_device_ids: false,
    },
};

/// Any NVMe controller on PCIe (VFIO, --pci ADDRESS): queue count, depth and transfer size are
/// capped by what the controller reports (CAP.MQES, SET FEATURES Number of Queues, MDTS). Its
/// 64-bit registers (CAP, ASQ, ACQ) are accessed as two 32-bit halves, low first, as Linux's
/// nvme driver always does (`lo_hi_readq`/`lo_hi_writeq` in `nvme_pci_reg_read64` and
/// `nvme_pci_configure_admin_queue`): an unknown controller may not take 8-byte accesses, and
/// they are made only at bring-up, resets and register dumps, so the split costs nothing.
pub const NVME: BoardDefinition = BoardDefinition {
    name: "nvme",
    description: "NVMe controller on PCIe (VFIO, --pci ADDRESS)",
    engine: EngineKind::Nvme,
    vendor_id: 0,
    device_id: 0,
    class_code: NVME_CLASS,
    queues: 8,
    queue_depth: 1024,
    max_transfer_bytes: 1 << 20,
    interrupts: InterruptMode::Msix,
    quirks: Quirks {
        split_64bit_mmio: true,
        fua_ignored: false,
        bogus_device_ids: false,
    },
};

/// QEMU's emulated NVMe controller (the HIL suite's device, tests/hil): 1b36:0010. Its MMIO is
/// emulated, so every register access costs an exit; a modest depth is as fast as a deep one.
/// It ignores FUA ([`Quirks::fua_ignored`]), and its default EUI64 is the same in every VM
/// ([`Quirks::bogus_device_ids`]).
pub const QEMU_NVME: BoardDefinition = BoardDefinition {
    name: "qemu-nvme",
    description: "QEMU's emulated NVMe controller (VFIO in a guest, --pci ADDRESS)",
    engine: EngineKind::Nvme,
    vendor_id: 0x1b36,
    device_id: 0x0010,
    class_code: NVME_CLASS,
    queues: 4,
    queue_depth: 256,
    max_transfer_bytes: 1 << 20,
    interrupts: InterruptMode::Msix,
    quirks: Quirks {
        split_64bit_mmio: false,
        fua_ignored: true,
        bogus_device_ids: true,
    },
};

/// The simulated NVMe controller (boards/src/sim/nvme): the NVMe engine in CI without QEMU.
pub const NVME_SIM: BoardDefinition = BoardDefinition {
    name: "nvme-sim",
    description: "simulated NVMe controller (IOMMU model, fault injection)",
    engine: EngineKind::Nvme,
    vendor_id: 0,
    device_id: 0,
    class_code: NVME_CLASS,
    queues: 4,
    queue_depth: 256,
    max_transfer_bytes: 1 << 20,
    interrupts: InterruptMode::Msix,
    quirks: Quirks {
        split_64bit_mmio: false,
        fua_ignored: false,
        bogus_device_ids: false,
    },
};

/// Every known board.
pub const BOARDS: &[BoardDefinition] = &[SIM, SCA1_PCI, NVME, QEMU_NVME, NVME_SIM];

/// The board called `name`.
pub fn find(name: &str) -> Option<&'static BoardDefinition> {
    BOARDS.iter().find(|b| b.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boards_are_found_by_name_and_names_are_unique() {
        assert_eq!(find("sim"), Some(&SIM));
        assert!(find("nope").is_none());
        let mut names: Vec<_> = BOARDS.iter().map(|b| b.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), BOARDS.len());
    }
}
