//! scst-accel board definitions (register map, queue geometry, limits, quirks) and the
//! simulated accelerator board. Depends on hal and dma only; knows nothing of SCSI.

pub mod definition;
pub mod engine;
mod irq_gate;
pub mod nvme;
pub mod open;
mod recovery;
pub mod sca1;
pub mod sim;
mod vectors;
