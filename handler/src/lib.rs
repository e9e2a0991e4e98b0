//! scst-accel handler: the scst_user protocol and everything above the device.
//!
//! - [`abi`]: the kernel ABI, byte-exact (spec §1–§2).
//! - [`transport`]: the scst_user fd as a trait; the real `/dev/scst_user`.
//! - [`loopback`]: an in-process model of the kernel side, which also acts as the initiator.
//! - [`scsi`]: the SCSI block command (SBC) engine.
//! - [`store`]: the asynchronous store interface and the RAM store.
//! - [`frontend`]: the worker threads that serve an scst_user fd with the engine and a store.
//! - [`tcmu`]: LIO's target_core_user ring and UIO device, for a frontend on mainline kernels.
#![deny(unsafe_code)]

pub mod abi;
pub mod frontend;
pub mod heartbeat;
mod int_map;
pub mod loopback;
pub mod scsi;
pub mod store;
mod sync;
pub mod tcmu;
pub mod teardown;
pub mod transport;
pub mod workload;
