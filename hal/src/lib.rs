//! scst-accel hardware access layer: the device trait (registers, DMA map/unmap, interrupts,
//! reset, device-gone detection) with its VFIO and simulator backends.
//!
//! Empty until the accelerator issue; the layering holds already: hal depends on nothing of
//! scst-accel, everything else may depend on it.
