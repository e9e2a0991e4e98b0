//! An NVMe controller driven from user space (NVMe base specification 1.4), as a storage
//! engine behind [`crate::engine`]'s `Controller` / `QueueEngine` contract, over any
//! [`DeviceBacking`](scst_accel_hal::DeviceBacking): a VFIO function or a simulator.
//!
//! What is implemented: controller bring-up and reset (§7.6.1, §7.3.2), normal shutdown (§7.6.2),
//! the admin queue shared by threads (IDENTIFY, SET FEATURES Number of Queues, CREATE / DELETE I/O
//! SQ and CQ, ABORT, GET LOG PAGE Error Information), I/O queue pairs with one owner thread each
//! (READ, WRITE with FUA, FLUSH, WRITE ZEROES, DATASET MANAGEMENT deallocate), PRP lists of one
//! page per command, MSI-X per I/O queue or polling, command identifiers with generations.
//!
//! What is not: namespace management and more than one namespace (the first active NSID is
//! served), SGLs, metadata / protection information, fused commands, asynchronous
//! events, weighted round robin arbitration, controller memory buffers, PRP list chaining
//! (transfers are limited to what one PRP list page describes, 2 MiB, and to MDTS).
//!
//! Files: [`regs`] (registers), [`cmd`] (wire formats, IDENTIFY), [`prp`] (PRP
//! construction), `admin` (admin queue), `controller` ([`NvmeController`]'s lifecycle:
//! bring-up, reset, recovery, shutdown), `bringup` (the enable / IDENTIFY / queue count steps
//! and the geometry they imply), `abort` (ABORT under the Abort Command Limit), `error_log`
//! (the Error Information log), `queue` ([`NvmeQueue`]), `engine` (the trait
//! implementations), `error` ([`NvmeError`]).

mod abort;
mod admin;
mod bringup;
pub mod cmd;
mod controller;
mod engine;
mod error;
mod error_log;
pub mod prp;
mod queue;
pub mod regs;

#[cfg(test)]
mod tests;

pub use admin::ADMIN_ENTRIES;
pub use controller::shutdown_timeout;
pub use controller::NvmeConfig;
pub use controller::NvmeController;
pub use controller::NvmeInfo;
pub use controller::DEFAULT_SHUTDOWN_TIMEOUT;
pub use controller::MAX_SHUTDOWN_TIMEOUT;
pub use controller::MAX_TRANSFER;
pub use controller::PAGE_SIZE;
pub use controller::PRP_LIST_ENTRIES;
pub use error::NvmeError;
pub use error_log::DUMP_ERROR_LOG_TIMEOUT;
pub use error_log::ERROR_LOG_MAX_ENTRIES;
pub use queue::NvmeQueue;
pub use queue::NvmeQueueStats;
