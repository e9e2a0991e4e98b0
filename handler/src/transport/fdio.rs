//! The fd helpers live in hal (devices use them for interrupts); re-exported here for the
//! transports and the frontend.

pub use scst_accel_hal::fdio::poll_readable;
pub use scst_accel_hal::fdio::EventFd;
