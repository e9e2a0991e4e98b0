//! MSI-X vectors for a board's queues when the host cannot allocate as many as asked.
//!
//! A queue with a vector sleeps on its eventfd; a queue without one is polled: its worker
//! reaps by looking at the completion ring (`StoreQueue::notify_fd` is `None`). The engines
//! already give vectors to the first queues and poll the rest when the function's MSI-X table
//! is smaller than the queue count (`max_interrupts`). A host short of vectors is the same
//! situation one step later: vfio-pci enables none of them and reports how many it could
//! allocate (`HalError::TooFewVectors`, vfio_msi_enable), so the start asks again for that
//! many instead of failing the disk. Nothing is shared: each queue keeps one owner and at most
//! one eventfd of its own, so the engines' concurrency is unchanged.

use scst_accel_hal::DeviceBacking;
use scst_accel_hal::EventFd;
use scst_accel_hal::HalError;

/// Enable `wanted` MSI-X vectors on `device`; when the host can allocate only `available` of
/// them, enable `available` instead (logged as a warning naming both counts), or none when
/// fewer than `useful` (a count that would give no queue a vector: the NVMe engine's vector
/// 0 belongs to the polled admin queue). The caller gives vector `i` to queue `i` and polls
/// the queues past the end of the returned list.
///
/// # Errors
/// What `enable_interrupts` returns otherwise, and the second call's error when the host had
/// fewer vectors still by then.
pub(crate) fn enable_available(
    device: &dyn DeviceBacking,
    wanted: u32,
    useful: u32,
) -> Result<Vec<EventFd>, HalError> {
    match device.enable_interrupts(wanted) {
        Err(HalError::TooFewVectors { available, .. }) if available < wanted => {
            let take = if available >= useful { available } else { 0 };
            log::warn!(
                "{}: the host could allocate only {available} of the {wanted} MSI-X vectors asked \
                 (see dmesg and /proc/interrupts); serving with {take}: the queues without a \
                 vector are polled, their workers busy while they have commands in flight. To \
                 give every queue a vector, give the disk fewer workers or free vectors held by \
                 other devices",
                device.id()
            );
            device.enable_interrupts(take)
        }
        other => other,
    }
}
