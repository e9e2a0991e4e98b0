//! The simulated SCA-1 board: a software model of the accelerator held to the same contract as
//! the hardware (docs/accelerator.md), behind hal's [`SimDevice`], so the real queue driver runs
//! unchanged on any Linux machine.
//!
//! - [`create_sim_board`] builds a [`SimDevice`] whose BAR0 is the SCA-1 register file
//!   (§1, §2) and a [`SimHandle`] for fault injection and counters;
//! - one engine thread per queue fetches descriptors, moves data and posts completions
//!   (§3–§6, §9) only through the device's IOMMU model, so DMA to memory the driver unmapped
//!   is a recorded fault, never corruption; when nothing could make it wait, the thread that
//!   writes a queue's SQ_TAIL runs that engine's work itself before the write returns
//!   ([`SimConfig::inline_doorbells`]), under the same checks;
//! - soft and function resets (§7) abandon all in-flight work and return only when no DMA can
//!   follow;
//! - [`Fault`]s, chosen at run time, make the board slow, lossy, hung, gone or wrong in the ways
//!   a driver must survive.
//!
//! Beyond the contract, where it is silent: the engine keeps one completion slot free (a ring of
//! N entries holds N - 1 completions, as in NVMe); a halted queue (§8) posts no completion but
//! sets its INT_STATUS bit and raises its vector; a queue started with an unusable ring (size not
//! a power of two from 2 to 2^CAP0.max_ring, base not 4 KiB aligned) halts at once with
//! INVALID_FIELD at index 0; FLUSH ignores LBA and length; an out-of-range READ, WRITE,
//! WRITE_ZEROES or DEALLOCATE reports in LBA_RANGE's detail the first block that fails, the
//! larger of its first block and CAPACITY (a COPY reports its offending range's first block, as
//! §3.1 says); WRITE_ZEROES and DEALLOCATE report `bytes = length` and deallocated blocks read as
//! zeroes; an interrupt that comes due while masked is latched and delivered on unmask; at most
//! 32 queues, since INT_STATUS has 32 bits; writing RUN = 1 to a queue whose RUN is already 1
//! changes nothing (§2 resets head, tail, phase and sequence on "setting RUN", read here as RUN
//! going from 0 to 1: a driver restarts a queue by clearing RUN and waiting for BUSY = 0 first,
//! §6, and a rewrite of the same value is no transition).
//!
//! [`SimDevice`]: scst_accel_hal::sim::SimDevice

mod board;
mod config;
mod engine;
mod fault;
mod handle;
mod medium;
pub mod nvme;
mod registers;
mod scatter;

#[cfg(test)]
mod attempts;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;

use scst_accel_hal::PciIdentity;

/// What the simulated function's config space says it is: the IDs the `sca1` board definition
/// names (`definition::SCA1_PCI`), class 12h (processing accelerator, PCI Code and ID
/// Assignment specification). Board definitions are matched against it as against a real
/// function's.
pub const PCI_IDENTITY: PciIdentity = PciIdentity {
    vendor_id: 0x1d0f,
    device_id: 0x5ca1,
    class_code: 0x12_00_00,
};

use scst_accel_hal::sim::SimDevice;
use scst_accel_hal::sim::SimModel;

pub use config::Backing;
pub use config::SimConfig;
pub use fault::Fault;
pub use fault::FaultParseError;
pub use fault::FAULT_KINDS;
pub use handle::SimHandle;
pub use handle::SimStats;

use crate::sca1::regs::bar0_len;
use board::SimBoard;
use medium::Medium;

/// Errors building a simulated board.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A configuration field is out of range; fix the field named.
    #[error("invalid simulated board configuration: {field}: {reason}")]
    InvalidConfig {
        /// The field.
        field: &'static str,
        /// What is wrong and what is accepted.
        reason: String,
    },
    /// The sparse backing file cannot be opened, created or sized; check the path and space.
    #[error("cannot use {} as the simulated medium", path.display())]
    Backing {
        /// The file.
        path: PathBuf,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
    /// An engine thread could not be started (raise the process's thread limit).
    #[error("cannot start the simulated board's engine threads")]
    Spawn {
        /// The errno.
        #[source]
        source: std::io::Error,
    },
}

/// Build a simulated SCA-1 board named `id` (`sim0`) with `config`, in its reset state
/// (ENABLE = 0, every queue stopped, interrupts masked).
///
/// # Errors
/// [`SimError::InvalidConfig`], [`SimError::Backing`] or [`SimError::Spawn`].
pub fn create_sim_board(id: &str, config: SimConfig) -> Result<(Arc<SimDevice>, SimHandle), SimError> {
    config.validate()?;
    let medium = match &config.backing {
        Backing::Ram => Medium::ram(config.capacity_bytes()),
        Backing::SparseFile(path) => {
            Medium::sparse_file(path, config.capacity_bytes()).map_err(|source| SimError::Backing {
                path: path.clone(),
                source,
            })?
        }
    };
    let bar_len = bar0_len(config.queues);
    let vectors = config.vectors;
    let mut built: Option<Arc<SimBoard>> = None;
    let device = SimDevice::new(id, bar_len, vectors, |ctx| {
        let board = Arc::new(SimBoard::new(id, config, medium, ctx));
        built = Some(Arc::clone(&board));
        board as Arc<dyn SimModel>
    });
    let Some(board) = built else {
        // SimDevice::new always calls `build`; without a board there is nothing to run.
        return Err(SimError::Spawn {
            source: std::io::Error::other("the simulated device did not build its model"),
        });
    };
    // On failure `device` is dropped here, which shuts down the engines already started.
    board
        .start_engines()
        .map_err(|source| SimError::Spawn { source })?;
    log::info!("{id}: simulated SCA-1 board ready");
    Ok((Arc::new(device), SimHandle::new(board.shared())))
}
