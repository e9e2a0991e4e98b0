//! The SCA-1 reference accelerator (docs/accelerator.md): register map, wire formats, and the
//! driver (function bring-up and reset, queue pairs).

pub mod desc;
mod driver;
mod engine;
mod queue;
pub mod regs;

pub use driver::Sca1;
pub use driver::Sca1Caps;
pub use driver::Sca1Config;
pub use driver::Sca1Error;
pub use queue::device_mapper;
pub use queue::QueueConfig;
pub use queue::QueueStats;
pub use queue::Sca1Completion;
pub use queue::Sca1Queue;
pub use queue::Sca1Request;
pub use queue::SubmitError;

#[cfg(test)]
mod driver_tests;
#[cfg(test)]
mod tests;
