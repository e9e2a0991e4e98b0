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
        BoardSource::Pci(address) => Arc::new(VfioDevice::open(&address)?),
    };
    let (controller, queues) = match definition.engine {
        EngineKind::Sca1 => bring_up_sca1(definition, device, queues)?,
        EngineKind::Nvme => bring_up_nvme(definition, device, queues)?,
    };
    Ok(OpenedBoard {
        controller,
        queues,
        sim,
        nvme_sim,
        definition,
    })
}

type Engines = (Arc<dyn Controller>, Vec<Box<dyn QueueEngine>>);

fn bring_up_sca1(
    definition: &BoardDefinition,
    device: Arc<dyn DeviceBacking>,
    queues: u32,
) -> Result<Engines, OpenBoardError> {
    let config = Sca1Config {
        queues: queues.min(definition.queues).max(1),
        ring_entries: definition.queue_depth,
        interrupts: definition.interrupts == InterruptMode::Msix,
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
        ..NvmeConfig::default()
    };
    let (controller, queues) = NvmeController::bring_up(device, &config)?;
    let queues = queues
        .into_iter()
        .map(|q| Box::new(q) as Box<dyn QueueEngine>)
        .collect();
    Ok((controller, queues))
}
