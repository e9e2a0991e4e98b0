//! scst-accel board definitions (register map, queue geometry, limits, quirks) and the
//! simulated accelerator board. Depends on hal and dma only; knows nothing of SCSI.

pub mod sca1;
