//! [`InterruptLines`]: the simulated function's MSI-X vectors. The model raises a vector; if the
//! driver has enabled it, its eventfd is signalled, as `VFIO_DEVICE_SET_IRQS` with
//! `DATA_EVENTFD` wires a real vector to an eventfd.

use std::fs::File;
use std::io;
use std::io::Write;
use std::os::fd::AsFd;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

use crate::locks::levels;
use crate::locks::LockToken;
use crate::locks::OrderedRwLock;
use crate::EventFd;
use crate::HalError;

/// The MSI-X vectors of one simulated function.
#[derive(Debug)]
pub struct InterruptLines {
    device: String,
    vectors: u32,
    /// How many vectors the host can allocate (the kernel's share of interrupt vectors, which
    /// can be below what the function offers): `u32::MAX` unless a test limits it
    /// ([`InterruptLines::limit_grants`]).
    grantable: AtomicU32,
    /// How a shortfall is answered: ENOSPC with no count (x86's irq domain) when set, the
    /// count the host could allocate otherwise ([`InterruptLines::answer_shortfall_with_enospc`]).
    shortfall_enospc: std::sync::atomic::AtomicBool,
    /// One entry per enabled vector: a duplicate of the descriptor handed to the driver, kept as
    /// a `File` so that signalling is a plain `write(2)` of a u64 with no unsafe code.
    /// Level `interrupts.lines`: a leaf, read-held for one non-blocking eventfd write.
    lines: OrderedRwLock<Vec<File>, levels::InterruptLines>,
    raised: AtomicU64,
    delivered: AtomicU64,
}

impl InterruptLines {
    /// `vectors` MSI-X vectors, all disabled, for the device named `device`.
    pub fn new(device: &str, vectors: u32) -> Self {
        Self {
            device: device.to_owned(),
            vectors,
            grantable: AtomicU32::new(u32::MAX),
            shortfall_enospc: std::sync::atomic::AtomicBool::new(false),
            lines: OrderedRwLock::new(Vec::new()),
            raised: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
        }
    }

    /// The model asserts `vector`: its eventfd is signalled if the driver enabled it; otherwise
    /// the message is lost, as an MSI-X write with the vector disabled is. A vector the
    /// function does not have is a model bug: logged and ignored.
    ///
    /// # Panics
    /// In debug and test builds, when the caller holds a checked lock: a model raises its
    /// interrupts after releasing its own state (docs/locking.md, `interrupts.lines` is taken
    /// alone).
    #[track_caller]
    pub fn raise(&self, vector: u32) {
        if !self.valid(vector) {
            return;
        }
        let mut token = LockToken::root();
        let (lines, _) = self.lines.read(&mut token);
        self.signal(&lines, vector);
    }

    /// [`InterruptLines::raise`] for a raise caused by a register access (an unmask that
    /// delivers a latched interrupt), where the model has no token: BAR accesses arrive through
    /// the `RegisterIo` trait object, with whatever locks the driver holds there (an MMIO
    /// access is not a blocking call). Checked at run time only: every driver lock is below
    /// `interrupts.lines`.
    ///
    /// # Panics
    /// In debug and test builds, when the caller holds `interrupts.lines` or a lock above it.
    #[track_caller]
    pub fn raise_unchecked_at_runtime(&self, vector: u32) {
        if !self.valid(vector) {
            return;
        }
        // Unchecked: reached from a BAR access through the `RegisterIo` trait object, which
        // carries no token, possibly under a driver's lock (see above).
        let lines = self.lines.read_unchecked_at_runtime();
        self.signal(&lines, vector);
    }

    /// A vector the function has (counted as raised), or a model bug (logged).
    fn valid(&self, vector: u32) -> bool {
        if vector >= self.vectors {
            log::warn!(
                "{}: model raised vector {vector} but the function has only {}",
                self.device,
                self.vectors
            );
            return false;
        }
        self.raised.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Signal `vector`'s eventfd if enabled in `lines`.
    fn signal(&self, lines: &[File], vector: u32) {
        let Some(mut line) = lines.get(vector as usize) else {
            log::trace!("{}: vector {vector} raised while disabled", self.device);
            return;
        };
        match line.write(&1u64.to_ne_bytes()) {
            Ok(_) => {}
            // EAGAIN: the counter is at its maximum, so the eventfd is readable anyway.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => {
                log::warn!("{}: cannot signal vector {vector}: {e}", self.device);
                return;
            }
        }
        self.delivered.fetch_add(1, Ordering::Relaxed);
    }

    /// Times the model raised a valid vector, enabled or not.
    pub fn raised(&self) -> u64 {
        self.raised.load(Ordering::Relaxed)
    }

    /// Times a raise signalled an enabled vector's eventfd.
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Vectors the function offers.
    pub fn vectors(&self) -> u32 {
        self.vectors
    }

    /// Vectors currently enabled (0: the driver polls).
    ///
    /// # Panics
    /// In debug and test builds, when the caller holds a checked lock (an inspection, made
    /// with none held).
    #[track_caller]
    pub fn enabled(&self) -> u32 {
        let mut token = LockToken::root();
        let (lines, _) = self.lines.read(&mut token);
        lines.len() as u32
    }

    /// From now on the host allocates at most `max` vectors: an enable of more fails with
    /// [`HalError::TooFewVectors`] and enables none, as `VFIO_DEVICE_SET_IRQS` does when
    /// `pci_alloc_irq_vectors` returns fewer than asked (vfio_msi_enable). The function still
    /// offers [`InterruptLines::vectors`]: this is the host running short, not the device.
    pub fn limit_grants(&self, max: u32) {
        self.grantable.store(max, Ordering::Relaxed);
    }

    /// Answer an enable past [`InterruptLines::limit_grants`] as vfio-pci does on x86 (`enospc`):
    /// the ioctl fails with ENOSPC and no count ([`HalError::Interrupts`]), since the irq domain
    /// assigns the vectors only when vfio-pci requests each interrupt; otherwise with the count
    /// ([`HalError::TooFewVectors`]).
    pub fn answer_shortfall_with_enospc(&self, enospc: bool) {
        self.shortfall_enospc.store(enospc, Ordering::Relaxed);
    }

    /// Enable vectors `0..count`, each with a fresh eventfd, replacing any enabled before; 0
    /// disables them all and hands out none, as the VFIO backend does. Stands for
    /// `VFIO_DEVICE_SET_IRQS`, a blocking ioctl: asserts (debug and test builds) that the
    /// caller holds no checked lock, as the VFIO backend does.
    #[track_caller]
    pub(crate) fn enable(&self, count: u32) -> Result<Vec<EventFd>, HalError> {
        let error = |source: io::Error| HalError::Interrupts {
            device: self.device.clone(),
            vectors: count,
            source,
        };
        if count == 0 {
            self.disable();
            return Ok(Vec::new());
        }
        if count > self.vectors {
            return Err(error(io::Error::from_raw_os_error(libc::EINVAL)));
        }
        let grantable = self.grantable.load(Ordering::Relaxed);
        if count > grantable {
            // As vfio-pci: what was enabled before is gone, and nothing is enabled now.
            self.disable();
            if self.shortfall_enospc.load(Ordering::Relaxed) {
                return Err(error(io::Error::from_raw_os_error(libc::ENOSPC)));
            }
            return Err(HalError::TooFewVectors {
                device: self.device.clone(),
                vectors: count,
                available: grantable,
            });
        }
        let mut handed_out = Vec::with_capacity(count as usize);
        let mut kept = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let fd = EventFd::new().map_err(error)?;
            kept.push(File::from(fd.as_fd().try_clone_to_owned().map_err(error)?));
            handed_out.push(fd);
        }
        let mut token = LockToken::root();
        *self.lines.write(&mut token).0 = kept;
        log::debug!("{}: enabled {count} MSI-X vectors", self.device);
        Ok(handed_out)
    }

    /// Disable every vector; the driver's eventfds stay open but are never signalled again.
    /// `VFIO_DEVICE_SET_IRQS` again: asserts that no checked lock is held, like [`Self::enable`].
    #[track_caller]
    pub(crate) fn disable(&self) {
        let mut token = LockToken::root();
        self.lines.write(&mut token).0.clear();
        log::debug!("{}: disabled MSI-X", self.device);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_enable_past_the_grant_limit_fails_as_vfio_does_and_enables_none() {
        let lines = InterruptLines::new("sim-grants", 4);
        assert_eq!(lines.enable(4).expect("4 of 4").len(), 4);
        lines.limit_grants(2);
        match lines.enable(4) {
            Err(HalError::TooFewVectors {
                vectors: 4,
                available: 2,
                ..
            }) => {}
            other => panic!("expected TooFewVectors(2 of 4), got {other:?}"),
        }
        assert_eq!(lines.enabled(), 0, "none enabled, the earlier ones gone too");
        assert_eq!(lines.vectors(), 4, "the function still offers 4");
        assert_eq!(lines.enable(2).expect("2 granted").len(), 2);
        assert_eq!(lines.enabled(), 2);
    }
}
