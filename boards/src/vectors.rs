//! MSI-X vectors for a board's queues when the host cannot allocate as many as asked.
//!
//! A queue with a vector sleeps on its eventfd; a queue without one is polled: its worker
//! reaps by looking at the completion ring (`StoreQueue::notify_fd` is `None`). The engines
//! already give vectors to the first queues and poll the rest when the function's MSI-X table
//! is smaller than the queue count (`max_interrupts`). A host short of vectors is the same
//! situation one step later, and the start asks again for fewer instead of failing the disk.
//! vfio-pci says "short" in one of two ways, and enables none of the vectors either way:
//! - a positive count (`HalError::TooFewVectors`): vfio_msi_enable returns what
//!   pci_alloc_irq_vectors could allocate when that is fewer than asked, which the allocation
//!   paths that shrink a request report (the legacy arch_setup_msi_irqs ones, ppc64's quotas);
//! - ENOSPC (`HalError::Interrupts`): on x86 the irq domain reserves vectors at allocation and
//!   assigns them when vfio-pci requests each interrupt, so a host out of CPU vectors fails the
//!   whole ioctl there, with no count. The start halves what it asks for until the host
//!   accepts or no queue would get one.
//!
//! Nothing is shared: each queue keeps one owner and at most one eventfd of its own, so the
//! engines' concurrency is unchanged.

use scst_accel_hal::DeviceBacking;
use scst_accel_hal::EventFd;
use scst_accel_hal::HalError;

/// Enable `wanted` MSI-X vectors on `device`; when the host is short (module doc), enable as
/// many as it can give, or none when fewer than `useful` (a count that would give no queue a
/// vector: the NVMe engine's vector 0 belongs to the polled admin queue). Logged as a warning
/// naming both counts. The caller gives vector `i` to queue `i` and polls the queues past the
/// end of the returned list. Every retry asks for fewer than the one before, so there are at
/// most about log2(`wanted`) + 2 calls.
///
/// # Errors
/// What `enable_interrupts` returns for anything but a shortfall.
pub(crate) fn enable_available(
    device: &dyn DeviceBacking,
    wanted: u32,
    useful: u32,
) -> Result<Vec<EventFd>, HalError> {
    let at_least_useful = |n: u32| if n >= useful { n } else { 0 };
    let mut ask = wanted;
    loop {
        let next = match device.enable_interrupts(ask) {
            Ok(fds) => {
                if ask < wanted {
                    warn_short(device, wanted, ask);
                }
                return Ok(fds);
            }
            Err(HalError::TooFewVectors { available, .. }) if available < ask => at_least_useful(available),
            Err(HalError::Interrupts { source, .. })
                if ask > 0 && source.kind() == std::io::ErrorKind::StorageFull =>
            {
                log::info!(
                    "{}: the host has no room for {ask} MSI-X vectors (ENOSPC); asking for fewer",
                    device.id()
                );
                at_least_useful(ask / 2)
            }
            Err(e) => return Err(e),
        };
        ask = next;
    }
}

fn warn_short(device: &dyn DeviceBacking, wanted: u32, got: u32) {
    log::warn!(
        "{}: the host could allocate only {got} of the {wanted} MSI-X vectors asked (see dmesg \
         and /proc/interrupts); serving with {got}: the queues without a vector are polled, \
         their workers busy while they have commands in flight. To give every queue a vector, \
         give the disk fewer workers or free vectors held by other devices",
        device.id()
    );
}
