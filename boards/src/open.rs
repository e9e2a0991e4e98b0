//! Opening a board: a simulated one or a PCIe function through VFIO, then its driver's bring-up
//! (SCA-1 or NVMe, as the board definition says) with the definition's geometry.

use crate::definition::BoardDefinition;
use crate::definition::EngineKind;
use crate::definition::InterruptMode;
use crate::engine::Controller;
use crate::engine::QueueEngine;
use crate::nvme::NvmeConfig;
use crate::nvme::NvmeController;
use crate::nvme::NvmeError;
use crate::sca1::Sca1;
use crate::sca1::Sca1Config;
use crate::sca1::Sca1Error;
use crate::sca1::Sca1Queue;
use crate::sim::create_sim_board;
use crate::sim::nvme::create_nvme_sim;
use crate::sim::nvme::NvmeSimConfig;
use crate::sim::nvme::NvmeSimHandle;
use crate::sim::SimConfig;
use crate::sim::SimError;
use crate::sim::SimHandle;
use scst_accel_hal::vfio::VfioDevice;
use scst_accel_hal::vfio::VfioError;
use scst_accel_hal::DeviceBacking;
use scst_accel_hal::HalError;
use scst_accel_hal::PciIdentity;
use std::sync::Arc;

/// Where the device comes from.
#[derive(Clone, Debug)]
pub enum BoardSource {
    /// A simulated SCA-1 with this configuration.
    Sim(SimConfig),
    /// A simulated NVMe controller with this configuration.
    NvmeSim(NvmeSimConfig),
    /// A PCIe function at this address (`0000:03:00.0`), bound to vfio-pci.
    Pci(String),
}

/// An opened, enabled board.
pub struct OpenedBoard {
    /// The controller.
    pub controller: Arc<dyn Controller>,
    /// Its queues, one per worker.
    pub queues: Vec<Box<dyn QueueEngine>>,
    /// Fault injection and statistics of a simulated SCA-1 board.
    pub sim: Option<SimHandle>,
    /// Fault injection and statistics of a simulated NVMe controller.
    pub nvme_sim: Option<NvmeSimHandle>,
    /// The definition it was opened with.
    pub definition: &'static BoardDefinition,
}

/// Errors opening a board.
#[derive(Debug, thiserror::Error)]
pub enum OpenBoardError {
    /// The simulator refused its configuration.
    #[error("simulated board")]
    Sim(#[from] SimError),
    /// VFIO could not open the function.
    #[error("PCIe function")]
    Vfio(#[from] VfioError),
    /// SCA-1 bring-up failed.
    #[error("bring-up")]
    Driver(#[from] Sca1Error),
    /// NVMe bring-up failed.
    #[error("NVMe controller bring-up")]
    Nvme(#[from] NvmeError),
    /// The function's config space could not be read to learn what it is.
    #[error("reading what the function is (its config space header)")]
    Identity(#[source] HalError),
    /// The function is not the board named: nothing was written to it.
    #[error(
        "{device} is {found}, not a `{board}` board ({expected}); nothing was written to it: \
         check the PCI address and the board name (`--help` lists the boards); a function with \
         other IDs needs a board definition of its own (docs/boards.md)"
    )]
    NotThisBoard {
        /// The function opened.
        device: String,
        /// What it says it is.
        found: PciIdentity,
        /// The board definition's name.
        board: &'static str,
        /// What the definition asks for ([`BoardDefinition::expected_identity`]).
        expected: String,
    },
}

/// Open `source` as `definition` and bring it up with `queues` queues (at most the board's).
///
/// # Errors
/// [`OpenBoardError`] naming the step that failed.
pub fn open_board(
    definition: &'static BoardDefinition,
    source: BoardSource,
    queues: u32,
) -> Result<OpenedBoard, OpenBoardError> {
    let (mut sim, mut nvme_sim) = (None, None);
    let device: Arc<dyn DeviceBacking> = match source {
        BoardSource::Sim(config) => {
            let (device, handle) = create_sim_board("sim0", config)?;
            sim = Some(handle);
            device
        }
        BoardSource::NvmeSim(config) => {
            let (device, handle) = create_nvme_sim("nvme-sim0", config)?;
            nvme_sim = Some(handle);
            device
        }
        BoardSource::Pci(address) => {
            let device: Arc<dyn DeviceBacking> = Arc::new(VfioDevice::open(&address)?);
            warn_if_fua_trusted(definition, device.as_ref());
            device
        }
    };
    let (controller, queues) = bring_up(definition, device, queues)?;
    Ok(OpenedBoard {
        controller,
        queues,
        sim,
        nvme_sim,
        definition,
    })
}

type Engines = (Arc<dyn Controller>, Vec<Box<dyn QueueEngine>>);

/// QEMU's controller (a PCIe function; the simulated controller reports the same IDs but
/// honours FUA) under a board that trusts its FUA, the generic `nvme`: say what the quirk is
/// for (docs/nvme.md "FUA") rather than let FUA writes be answered before they are durable
/// unsaid.
fn warn_if_fua_trusted(definition: &BoardDefinition, device: &dyn DeviceBacking) {
    let Ok(found) = device.pci_identity() else {
        return; // bring_up reports it
    };
    if trusts_ignored_fua(definition, &found) {
        log::warn!(
            "{}: {found} is QEMU's NVMe controller, which completes a FUA write before it is \
             durable; the `{}` board trusts FUA: use --board {} (its quirk follows each FUA \
             write with a Flush)",
            device.id(),
            definition.name,
            crate::definition::QEMU_NVME.name
        );
    }
}

/// Whether `definition` would trust the FUA of a function that says it is `found` while that
/// function is QEMU's controller, which ignores FUA.
fn trusts_ignored_fua(definition: &BoardDefinition, found: &PciIdentity) -> bool {
    definition.engine == EngineKind::Nvme
        && !definition.quirks.fua_ignored
        && crate::definition::QEMU_NVME.admits(found)
}

/// Bring `device` up with `definition`'s driver, geometry and quirks, once it has shown to be
/// that board ([`BoardDefinition::admits`]).
fn bring_up(
    definition: &BoardDefinition,
    device: Arc<dyn DeviceBacking>,
    queues: u32,
) -> Result<Engines, OpenBoardError> {
    let found = device.pci_identity().map_err(OpenBoardError::Identity)?;
    if !definition.admits(&found) {
        return Err(OpenBoardError::NotThisBoard {
            device: device.id().to_owned(),
            found,
            board: definition.name,
            expected: definition.expected_identity(),
        });
    }
    log::debug!("{}: {found}, a `{}` board", device.id(), definition.name);
    match definition.engine {
        EngineKind::Sca1 => bring_up_sca1(definition, device, queues),
        EngineKind::Nvme => bring_up_nvme(definition, device, queues),
    }
}

fn bring_up_sca1(
    definition: &BoardDefinition,
    device: Arc<dyn DeviceBacking>,
    queues: u32,
) -> Result<Engines, OpenBoardError> {
    let config = Sca1Config {
        queues: queues.min(definition.queues).max(1),
        ring_entries: definition.queue_depth,
        interrupts: definition.interrupts == InterruptMode::Msix,
        split_64bit_mmio: definition.quirks.split_64bit_mmio,
        max_transfer_bytes: definition.max_transfer_bytes,
        ..Sca1Config::default()
    };
    let (sca1, queues) = Sca1::bring_up(device, &config)?;
    let queues = queues
        .into_iter()
        .map(|q: Sca1Queue| Box::new(q) as Box<dyn QueueEngine>)
        .collect();
    Ok((Arc::new(sca1), queues))
}

fn bring_up_nvme(
    definition: &BoardDefinition,
    device: Arc<dyn DeviceBacking>,
    queues: u32,
) -> Result<Engines, OpenBoardError> {
    let config = NvmeConfig {
        queues: queues.min(definition.queues).clamp(1, u32::from(u16::MAX)) as u16,
        queue_depth: definition.queue_depth,
        interrupts: definition.interrupts == InterruptMode::Msix,
        split_64bit_mmio: definition.quirks.split_64bit_mmio,
        fua_ignored: definition.quirks.fua_ignored,
        bogus_device_ids: definition.quirks.bogus_device_ids,
        max_transfer_bytes: definition.max_transfer_bytes,
        ..NvmeConfig::default()
    };
    let (controller, queues) = NvmeController::bring_up(device, &config)?;
    let queues = queues
        .into_iter()
        .map(|q| Box::new(q) as Box<dyn QueueEngine>)
        .collect();
    Ok((controller, queues))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::NVME;
    use crate::definition::NVME_SIM;
    use crate::definition::QEMU_NVME;
    use crate::definition::SCA1_PCI;
    use crate::definition::SIM;
    use crate::sca1::regs::global;
    use crate::sca1::regs::queue;
    use crate::sim::Fault;
    use scst_accel_hal::BarInterposer;
    use scst_accel_hal::RegisterIo;
    use std::sync::Mutex;

    /// One BAR access: (width in bytes, write, offset, value).
    type Access = (u8, bool, u64, u64);

    /// A device that records every BAR access the driver makes, with its width, then passes it
    /// on: a stand-in for a register bus that must see only the accesses it can take.
    struct Recorder {
        inner: Arc<dyn DeviceBacking>,
        log: Mutex<Vec<Access>>,
    }

    impl Recorder {
        fn note(&self, access: Access) {
            self.log.lock().expect("log").push(access);
        }

        fn accesses(&self) -> Vec<Access> {
            self.log.lock().expect("log").clone()
        }
    }

    impl RegisterIo for Recorder {
        fn len(&self) -> u64 {
            self.inner.bar0().len()
        }

        fn read32(&self, offset: u64) -> u32 {
            let value = self.inner.bar0().read32(offset);
            self.note((4, false, offset, u64::from(value)));
            value
        }

        fn write32(&self, offset: u64, value: u32) {
            self.note((4, true, offset, u64::from(value)));
            self.inner.bar0().write32(offset, value);
        }

        fn read64(&self, offset: u64) -> u64 {
            let value = self.inner.bar0().read64(offset);
            self.note((8, false, offset, value));
            value
        }

        fn write64(&self, offset: u64, value: u64) {
            self.note((8, true, offset, value));
            self.inner.bar0().write64(offset, value);
        }
    }

    impl BarInterposer for Recorder {
        fn device(&self) -> &dyn DeviceBacking {
            self.inner.as_ref()
        }
    }

    /// Bring the simulated SCA-1 up as `definition` says, through a [`Recorder`]; returns its
    /// accesses and the ring base the board holds for queue 0.
    fn bring_up_recorded(definition: &BoardDefinition, name: &str) -> (Vec<Access>, u64) {
        let config = SimConfig {
            queues: 1,
            vectors: 1,
            ..SimConfig::default()
        };
        let (board, _sim) = create_sim_board(name, config).expect("sim board");
        let recorder = Arc::new(Recorder {
            inner: board.clone(),
            log: Mutex::new(Vec::new()),
        });
        let (controller, queues) = bring_up(definition, recorder.clone(), 1).expect("bring-up");
        let sq_base = board.bar0().read64(queue::reg(0, queue::SQ_BASE));
        drop(queues);
        controller.reset().expect("reset");
        (recorder.accesses(), sq_base)
    }

    /// The `sca1` board's `split_64bit_mmio` quirk reaches the SCA-1 driver: bring-up makes no
    /// 8-byte BAR access; SQ_BASE arrives as two 4-byte writes, low word first, and CAPACITY is
    /// read as two 4-byte reads, low word first. The `sim` board (no quirk) uses 8-byte ones.
    #[test]
    fn the_sca1_board_splits_its_64_bit_registers() {
        let (accesses, sq_base) = bring_up_recorded(&SCA1_PCI, "open-split");
        assert!(
            sq_base >> 32 != 0,
            "the ring lies above 4 GiB, so both halves matter"
        );
        let wide: Vec<_> = accesses.iter().filter(|a| a.0 == 8).collect();
        assert!(wide.is_empty(), "8-byte accesses under the quirk: {wide:x?}");
        let sq = queue::reg(0, queue::SQ_BASE);
        let at = accesses
            .iter()
            .position(|a| a.1 && a.2 == sq)
            .expect("SQ_BASE written");
        assert_eq!(
            accesses[at..at + 2],
            [
                (4, true, sq, sq_base & 0xffff_ffff),
                (4, true, sq + 4, sq_base >> 32)
            ],
            "SQ_BASE as two 32-bit writes, low word first"
        );
        let at = accesses
            .iter()
            .position(|a| !a.1 && a.2 == global::CAPACITY)
            .expect("CAPACITY read");
        assert_eq!(
            (accesses[at].0, accesses[at + 1].0, accesses[at + 1].2),
            (4, 4, global::CAPACITY + 4),
            "CAPACITY as two 32-bit reads, low word first"
        );

        let (accesses, sq_base) = bring_up_recorded(&SIM, "open-native");
        let sq = queue::reg(0, queue::SQ_BASE);
        assert!(
            accesses.contains(&(8, true, sq, sq_base)),
            "without the quirk SQ_BASE is one 64-bit write"
        );
    }

    fn sca1_sim(name: &str) -> (Arc<dyn DeviceBacking>, SimHandle) {
        let config = SimConfig {
            queues: 1,
            vectors: 1,
            ..SimConfig::default()
        };
        let (board, handle) = create_sim_board(name, config).expect("sim board");
        (board, handle)
    }

    fn nvme_sim(name: &str) -> Arc<dyn DeviceBacking> {
        create_nvme_sim(name, NvmeSimConfig::default())
            .expect("nvme sim")
            .0
    }

    /// Bring `device` up as `definition` through a [`Recorder`]; the refusal and the BAR
    /// accesses made before it.
    fn refused(definition: &BoardDefinition, device: Arc<dyn DeviceBacking>) -> (OpenBoardError, usize) {
        let recorder = Arc::new(Recorder {
            inner: device,
            log: Mutex::new(Vec::new()),
        });
        match bring_up(definition, recorder.clone(), 1) {
            Ok(_) => panic!("`{}` brought up a function it does not admit", definition.name),
            Err(e) => (e, recorder.accesses().len()),
        }
    }

    /// A definition is matched against the function's config space before its driver makes
    /// one BAR access: an SCA-1 function is no NVMe controller (class), nor QEMU's (IDs); an
    /// NVMe controller is no `sca1` board (IDs). The refusal names what the function is and
    /// what the board asks for.
    #[test]
    fn a_function_that_is_not_the_board_named_is_refused_before_any_register_access() {
        for (definition, wanted) in [(&NVME, "class 010802"), (&QEMU_NVME, "1b36:0010")] {
            let (device, _sim) = sca1_sim("identity-sca1");
            let (e, accesses) = refused(definition, device);
            assert_eq!(accesses, 0, "{e}");
            let OpenBoardError::NotThisBoard { found, board, .. } = &e else {
                panic!("{e:?}");
            };
            assert_eq!((*found, *board), (crate::sim::PCI_IDENTITY, definition.name));
            let text = e.to_string();
            assert!(
                text.contains("1d0f:5ca1 class 120000") && text.contains(wanted),
                "{text}"
            );
        }
        let (e, accesses) = refused(&SCA1_PCI, nvme_sim("identity-nvme"));
        assert_eq!(accesses, 0, "{e}");
        assert!(
            matches!(e, OpenBoardError::NotThisBoard { board: "sca1", .. }),
            "{e:?}"
        );
    }

    /// The boards that name the simulators' identities (or none) bring them up: the NVMe
    /// definitions admit the simulated controller by its class (and QEMU's IDs), the SCA-1 ones
    /// the simulated SCA-1 function.
    #[test]
    fn the_simulated_functions_are_admitted_by_their_boards() {
        for definition in [&SIM, &SCA1_PCI] {
            let (device, _sim) = sca1_sim("identity-sca1-ok");
            let (controller, queues) = bring_up(definition, device, 1).expect("bring-up");
            assert_eq!(queues.len(), 1);
            drop(queues);
            controller.reset().expect("reset");
        }
        for definition in [&NVME, &QEMU_NVME, &NVME_SIM] {
            assert!(
                definition.admits(&crate::sim::nvme::PCI_IDENTITY),
                "{}",
                definition.name
            );
            let (controller, queues) =
                bring_up(definition, nvme_sim("identity-nvme-ok"), 1).expect("bring-up");
            drop(queues);
            // QEMU's controller ignores FUA: its board says so to the store (`fua_ignored`).
            assert_eq!(
                controller.geometry().fua_durable,
                definition.name != "qemu-nvme",
                "{}",
                definition.name
            );
            controller.shutdown().expect("shutdown");
        }
    }

    /// The generic `nvme` board on QEMU's controller is warned about (it would trust FUA);
    /// `qemu-nvme` (the quirk), another controller, and an SCA-1 board are not.
    #[test]
    fn the_generic_nvme_board_on_qemus_controller_is_warned_about_fua() {
        let qemu = crate::sim::nvme::PCI_IDENTITY;
        assert!(trusts_ignored_fua(&NVME, &qemu));
        assert!(!trusts_ignored_fua(&QEMU_NVME, &qemu));
        let other = PciIdentity {
            vendor_id: 0x144d,
            ..qemu
        };
        assert!(!trusts_ignored_fua(&NVME, &other));
        assert!(!trusts_ignored_fua(&SCA1_PCI, &qemu));
    }

    /// The definition's `max_transfer_bytes` reaches the geometry the store splits requests by
    /// (the simulated controller's MDTS allows 2 MiB).
    #[test]
    fn a_definitions_transfer_limit_caps_the_geometry() {
        let config = NvmeSimConfig {
            mdts: 9,
            ..NvmeSimConfig::default()
        };
        for (limit, expected) in [(2 << 20, 2 << 20), (64 << 10, 64 << 10)] {
            let definition = BoardDefinition {
                max_transfer_bytes: limit,
                ..NVME_SIM
            };
            let device = create_nvme_sim("identity-mdts", config.clone())
                .expect("nvme sim")
                .0;
            let (controller, queues) = bring_up(&definition, device, 1).expect("bring-up");
            assert_eq!(controller.geometry().max_transfer_bytes, expected);
            drop(queues);
            controller.shutdown().expect("shutdown");
        }
    }

    /// The same for the SCA-1 driver (the simulated function's CAP1 offers 1 MiB).
    #[test]
    fn a_definitions_transfer_limit_caps_the_sca1_geometry() {
        for (limit, expected) in [
            (4 << 20, 1 << 20),
            (64 << 10, 64 << 10),
            (70_000, 17 * 4096),
            (1, 4096),
        ] {
            let definition = BoardDefinition {
                max_transfer_bytes: limit,
                ..SIM
            };
            let (device, _sim) = sca1_sim("identity-cap1");
            let (controller, queues) = bring_up(&definition, device, 1).expect("bring-up");
            assert_eq!(
                controller.geometry().max_transfer_bytes,
                expected,
                "limit {limit}"
            );
            drop(queues);
            controller.reset().expect("reset");
        }
    }

    /// A function whose config space reads all-ones (removed) is not brought up at all.
    #[test]
    fn a_function_off_the_bus_is_not_brought_up() {
        let (device, sim) = sca1_sim("identity-gone");
        sim.inject(Fault::DeviceGone);
        let (e, accesses) = refused(&SIM, device);
        assert_eq!(accesses, 0, "{e}");
        assert!(
            matches!(e, OpenBoardError::Identity(HalError::OffTheBus { .. })),
            "{e:?}"
        );
    }

    #[test]
    fn a_definition_says_what_it_admits() {
        assert_eq!(SIM.expected_identity(), "any vendor and device, any class");
        assert_eq!(NVME.expected_identity(), "any vendor and device, class 010802");
        assert_eq!(QEMU_NVME.expected_identity(), "1b36:0010, class 010802");
        let other = PciIdentity {
            vendor_id: 0x1b36,
            device_id: 0x0010,
            class_code: 0x01_06_01,
        };
        assert!(!QEMU_NVME.admits(&other), "the class is checked too");
        assert!(SIM.admits(&other));
    }
}
