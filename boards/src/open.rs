//! Opening a board: the simulated one or a PCIe function through VFIO, then the SCA-1 driver's
//! bring-up with the board definition's geometry.

use crate::definition::BoardDefinition;
use crate::definition::InterruptMode;
use crate::engine::Controller;
use crate::engine::QueueEngine;
use crate::sca1::Sca1;
use crate::sca1::Sca1Config;
use crate::sca1::Sca1Error;
use crate::sca1::Sca1Queue;
use crate::sim::create_sim_board;
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
    /// A PCIe function at this address (`0000:03:00.0`), bound to vfio-pci.
    Pci(String),
}

/// An opened, enabled board.
pub struct OpenedBoard {
    /// The controller.
    pub controller: Arc<dyn Controller>,
    /// Its queues, one per worker.
    pub queues: Vec<Box<dyn QueueEngine>>,
    /// Fault injection and statistics of a simulated board.
    pub sim: Option<SimHandle>,
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
    /// Bring-up failed.
    #[error("bring-up")]
    Driver(#[from] Sca1Error),
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
    let (device, sim): (Arc<dyn DeviceBacking>, Option<SimHandle>) = match source {
        BoardSource::Sim(config) => {
            let (device, handle) = create_sim_board("sim0", config)?;
            (device, Some(handle))
        }
        BoardSource::Pci(address) => (Arc::new(VfioDevice::open(&address)?), None),
    };
    let config = Sca1Config {
        queues: queues.min(definition.queues).max(1),
        ring_entries: definition.queue_depth,
        interrupts: definition.interrupts == InterruptMode::Msix,
        ..Sca1Config::default()
    };
    let (sca1, queues) = Sca1::bring_up(device, &config)?;
    Ok(OpenedBoard {
        controller: Arc::new(sca1),
        queues: queues
            .into_iter()
            .map(|q: Sca1Queue| Box::new(q) as Box<dyn QueueEngine>)
            .collect(),
        sim,
        definition,
    })
}
