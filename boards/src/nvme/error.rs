//! [`NvmeError`]: what can fail while bringing up or driving an NVMe controller, and its
//! conversion to the store's [`EngineError`].

use super::cmd::Status;
use crate::engine::EngineError;
use scst_accel_dma::DmaError;
use scst_accel_hal::HalError;
use std::time::Duration;

/// Errors of the NVMe driver.
#[derive(Debug, thiserror::Error)]
pub enum NvmeError {
    /// Registers read all-ones.
    #[error("{device}: the device is gone (registers read all-ones)")]
    Gone {
        /// Device.
        device: String,
    },
    /// A bounded wait expired.
    #[error("{device}: {what} did not happen within {timeout:?}")]
    Timeout {
        /// Device.
        device: String,
        /// What was waited for.
        what: &'static str,
        /// The bound.
        timeout: Duration,
    },
    /// CSTS.CFS is set: only a controller reset helps.
    #[error("{device}: controller fatal status (CSTS {csts:#010x}); reset the controller")]
    Fatal {
        /// Device.
        device: String,
        /// CSTS as read.
        csts: u32,
    },
    /// An admin command completed with an error status.
    #[error("{device}: admin command {command} failed with status {status}")]
    Command {
        /// Device.
        device: String,
        /// Which command.
        command: &'static str,
        /// The completion's status field.
        status: Status,
    },
    /// An admin command was lost to a controller reset while it waited.
    #[error("{device}: admin command {command} was dropped by a controller reset; retry after recovery")]
    ResetDuringCommand {
        /// Device.
        device: String,
        /// Which command.
        command: &'static str,
    },
    /// The controller is disabled (reset or shut down): recover it first.
    #[error("{device}: the controller is disabled; recover it before issuing commands")]
    Disabled {
        /// Device.
        device: String,
    },
    /// A queue cannot be re-created while a recovery of its controller is under way.
    #[error(
        "{device}: I/O queue {queue} not re-created: a recovery of the controller is under way; \
         restart it again once the reset count moves"
    )]
    ResetUnderWay {
        /// Device.
        device: String,
        /// The queue.
        queue: u16,
    },
    /// A queue found the controller disabled by another thread's reset that had not proven
    /// CSTS.RDY = 0 within the caller's bound: nothing of the queue may be released yet.
    #[error(
        "{device}: another thread's controller reset has not proven CSTS.RDY = 0 within {waited:?}; \
         hold the queue's requests and rings, and stop it again later"
    )]
    DisableUnproven {
        /// Device.
        device: String,
        /// How long the queue waited.
        waited: Duration,
    },
    /// The controller lacks something this driver needs.
    #[error("{device}: unsupported controller: {what}")]
    Unsupported {
        /// Device.
        device: String,
        /// What is missing.
        what: String,
    },
    /// Queue or buffer memory could not be had or mapped.
    #[error("{device}: cannot set up {what}; check RLIMIT_MEMLOCK and the IOVA window")]
    Memory {
        /// Device.
        device: String,
        /// What was being set up.
        what: String,
        /// Cause.
        #[source]
        source: Box<DmaError>,
    },
    /// The HAL failed (interrupts, function reset).
    #[error("{device}: device access failed")]
    Hal {
        /// Device.
        device: String,
        /// Cause.
        #[source]
        source: Box<HalError>,
    },
}

impl From<NvmeError> for EngineError {
    fn from(e: NvmeError) -> Self {
        match e {
            NvmeError::Gone { device } => EngineError::Gone { device },
            NvmeError::Timeout {
                device,
                what,
                timeout,
            } => EngineError::Timeout {
                device,
                what,
                timeout,
            },
            NvmeError::DisableUnproven { device, waited } => EngineError::StopPending { device, waited },
            NvmeError::ResetUnderWay { device, queue } => EngineError::ResetUnderWay {
                device,
                queue: u32::from(queue),
            },
            NvmeError::Fatal { ref device, .. }
            | NvmeError::Command { ref device, .. }
            | NvmeError::ResetDuringCommand { ref device, .. }
            | NvmeError::Disabled { ref device }
            | NvmeError::Unsupported { ref device, .. }
            | NvmeError::Memory { ref device, .. }
            | NvmeError::Hal { ref device, .. } => {
                let mut message = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    message.push_str(": ");
                    message.push_str(&s.to_string());
                    source = s.source();
                }
                EngineError::Failed {
                    device: device.clone(),
                    message,
                }
            }
        }
    }
}
