//! scst-accel board definitions (register map, queue geometry, limits, quirks) and the
//! simulated accelerator board.
//!
//! Empty until the accelerator issue; it will depend on hal and dma only.
