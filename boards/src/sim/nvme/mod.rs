//! A simulated NVMe controller (NVMe base specification 1.4) for fast CI tests of the NVMe
//! driver, on hal's [`SimDevice`] like the simulated SCA-1 board. It is written from the
//! specification, independently of the driver, so a misreading on either side fails a test;
//! QEMU's NVMe model in a guest stays the final judge, and this model adds faults QEMU cannot
//! produce.
//!
//! - [`create_nvme_sim`] builds the function: BAR0 holds the controller registers (§3.1) and
//!   the doorbells at 0x1000 (CAP.DSTRD = 0); [`NvmeSimHandle`] injects [`NvmeFault`]s and
//!   reads [`NvmeSimStats`].
//! - CAP: MQES = 1023, CQR = 1, TO = `cap_to` (default 20: 10 s), CSS = NVM, MPSMIN = MPSMAX
//!   = 0 (4 KiB pages), CRMS.CRWMS (bit 59) when `crwmt` is non-zero, with CRTO (68h, NVMe
//!   2.0) reading CRWMT = `crwmt`; VS = 1.4.0; Identify RTD3E = `rtd3e_micros` (default 0).
//!   CC.EN 0→1 checks AQA/ASQ/ACQ and CC, then sets CSTS.RDY `enable_micros` (default 2 ms)
//!   later; CC.EN 1→0 is a controller
//!   reset (§7.6.1): every queue deleted, held AERs dropped, CFS and SHST cleared, and RDY
//!   cleared once the worker holds no command and `disable_micros` (default 0) have passed, so
//!   RDY = 0 proves no DMA follows. CC.SHN sets SHST to occurring, then complete
//!   `shutdown_micros` (default 2 ms) later; from SHN on no new command is fetched. A function reset is a controller reset plus every register back to its
//!   reset value, and returns only when the worker holds no command.
//! - One worker thread per submission queue (the admin queue's also posts asynchronous
//!   events) fetches that SQ's entries through the IOMMU, executes one command at a time and
//!   posts its completion (phase tag, SQHD, SQID, CID) before raising the CQ's MSI-X vector
//!   when IEN is set, once for the completions of commands taken back to back (at most
//!   `irq_batch`, 8, or `irq_hold_micros`, 20, apart; before any wait), as QEMU's controller
//!   raises once per pass that posts completions (module `irq_batch`); the SQs are served side by
//!   side, each woken by its own doorbell. A full
//!   CQ stalls the SQs that post to it (slots are promised when a command is taken, so SQs
//!   sharing a CQ never overflow it); Delete I/O SQ completes once its worker's command has.
//! - Admin: Identify (CNS 00h, 01h, 02h, and 06h with CSI 00h: DMRSL = `dmrsl`, WZSL = `wzsl`), Get/Set Features (Number of Queues, Volatile Write
//!   Cache, and the mandatory ones stored as given), Create/Delete I/O CQ/SQ with the
//!   specification's checks, Abort (always "not aborted"), Get Log Page (Error Information,
//!   empty), Asynchronous Event Request (held; completed by invalid doorbell writes).
//! - NVM on namespace 1: Read, Write (FUA), Flush, Write Zeroes (over 2^`wzsl` pages of 4 KiB:
//!   Invalid Field), Dataset Management
//!   (deallocate; a range above `dmrsl` is Invalid Field), with PRP1/PRP2/PRP-list walking
//!   (§4.3), LBA range checks and MDTS.
//!
//! Where this model differs from QEMU's (`hw/nvme`), on purpose:
//! - **DMA to an unmapped IOVA** (data or PRP list) is recorded as an IOMMU fault and the
//!   command completes with **Data Transfer Error (SCT 0, SC 04h)**. QEMU under an emulated
//!   IOMMU completes such a command with success and the data silently not moved, so a driver
//!   tested only on QEMU never sees this status. A fault fetching an SQ entry or posting a CQ
//!   entry has no command to report it on: the model sets CSTS.CFS, which is what CFS means.
//! - A PRP list that starts at an offset holds only the entries up to the end of its page,
//!   the last of which chains on when more are needed (§4.3). QEMU reads the first list as if
//!   it started at the page boundary; a driver should keep PRP lists page aligned.
//! - Like QEMU, and stricter than the specification, enabling requires IOSQES = 6 and
//!   IOCQES = 4 and non-zero, 4 KiB-aligned ASQ/ACQ; otherwise CSTS.CFS = 1 and RDY stays 0.
//! - Writes to AQA/ASQ/ACQ, and to CC.CSS/MPS/AMS/IOSQES/IOCQES, while CC.EN = 1 are ignored.
//!   Doorbell writes while not ready, to a queue that does not exist, or out of range are
//!   ignored and counted; the latter two post an Error asynchronous event (§5.2).
//! - INTMS/INTMC are stored and read back but mask nothing: the function has MSI-X only, where
//!   the specification forbids host use of them (§3.1.3).
//!
//! [`SimDevice`]: scst_accel_hal::sim::SimDevice

mod admin;
mod config;
mod controller;
mod fault;
mod handle;
mod identify;
mod io;
mod irq_batch;
mod prp;
mod spec;
mod state;
mod worker;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use scst_accel_hal::PciIdentity;

use scst_accel_hal::sim::SimDevice;
use scst_accel_hal::sim::SimModel;

/// What the simulated controller's config space says it is: QEMU's NVMe model's IDs (1b36:0010,
/// the vendor ID its Identify Controller reports too) and the NVMe I/O controller class
/// (01h mass storage, 08h non-volatile memory, 02h NVM Express), the class Linux's nvme driver
/// binds by.
pub const PCI_IDENTITY: PciIdentity = PciIdentity {
    vendor_id: 0x1b36,
    device_id: 0x0010,
    class_code: 0x01_08_02,
};

pub use config::NvmeSimConfig;
pub use config::DLFEAT_READS_ZEROES;
pub use config::DLFEAT_WRITE_ZEROES_DEAC;
pub use config::MAX_BLOCK_SIZE;
pub use config::MAX_DISABLE_MICROS;
pub use config::MAX_ENABLE_MICROS;
pub use config::MAX_IO_QUEUES;
pub use config::MAX_IRQ_BATCH;
pub use config::MAX_IRQ_HOLD_MICROS;
pub use config::MAX_MDTS;
pub use config::MAX_SHUTDOWN_MICROS;
pub use config::MAX_WZSL;
pub use fault::NvmeFault;
pub use fault::NvmeFaultParseError;
pub use fault::NVME_FAULT_KINDS;
pub use handle::NvmeSimHandle;
pub use handle::NvmeSimStats;
pub use state::QueueDeletion;

use super::medium::Medium;
use super::SimError;
use controller::NvmeController;

/// Build a simulated NVMe controller named `id` with `config`, in its power-on state
/// (CC.EN = 0, no queues).
///
/// # Errors
/// [`SimError::InvalidConfig`] naming the bad field; [`SimError::Spawn`] when the worker
/// thread cannot be started.
pub fn create_nvme_sim(id: &str, config: NvmeSimConfig) -> Result<(Arc<SimDevice>, NvmeSimHandle), SimError> {
    config.validate()?;
    let medium = Medium::ram(config.capacity_bytes());
    let bar_len = config.bar0_len();
    let vectors = config.interrupts;
    let mut built: Option<Arc<NvmeController>> = None;
    let device = SimDevice::new(id, bar_len, vectors, |ctx| {
        let controller = Arc::new(NvmeController::new(id, config, medium, ctx));
        built = Some(Arc::clone(&controller));
        controller as Arc<dyn SimModel>
    });
    let Some(controller) = built else {
        return Err(SimError::Spawn {
            source: std::io::Error::other("the simulated device did not build its model"),
        });
    };
    // On failure `device` is dropped here, which shuts the (unstarted) model down.
    controller.start().map_err(|source| SimError::Spawn { source })?;
    log::info!("{id}: simulated NVMe controller ready");
    Ok((Arc::new(device), NvmeSimHandle::new(controller.shared())))
}
