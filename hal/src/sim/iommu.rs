//! [`Iommu`]: the simulated device's IOMMU domain, an IOVA → host page table kept by
//! [`DmaMapper::map`]/[`DmaMapper::unmap`], and the only path from a device model to host
//! memory.
//!
//! Like a real IOMMU it refuses overlapping or unaligned mappings, and it unmaps only exactly
//! what one `map` call mapped: where VFIO type1 v2 unmaps every mapping inside a larger range
//! (and refuses one that bisects a mapping), both backends refuse any range but one whole
//! mapping ([`DmaMapper::unmap`], [`HalError::NotOneMapping`]), so they agree. It turns a
//! device access to any unmapped byte into a recorded fault that moves no data. A copy holds the table's read lock from translation to the last byte, and an unmap takes the
//! write lock, so when `unmap` returns no copy can still be touching that memory: the same
//! guarantee an IOTLB flush gives the VFIO backend. Every copy into or out of host memory is
//! byte-wise atomic ([`crate::shared_mem`]), as the `DmaMapper::map` contract requires of every
//! access to mapped memory: an engine and a driver thread touching the same bytes at once (a
//! driver bug, a late write after a timeout) tear the data, as on hardware, without a data race.
// UNSAFETY: the device side copies to and from raw host addresses that the `DmaMapper::map`
// contract keeps valid while mapped; implementing that `unsafe fn` also needs the opt-in.
#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

use crate::locks::levels;
use crate::locks::LockBefore;
use crate::locks::LockToken;
use crate::locks::OrderedMutex;
use crate::locks::OrderedReadGuard;
use crate::locks::OrderedRwLock;
use crate::shared_mem;
use crate::DmaMapper;
use crate::HalError;

/// IOMMU page size: mappings are made of whole 4 KiB pages, as with VFIO type1 on x86_64.
pub const IOMMU_PAGE_SIZE: u64 = 4096;

/// Faults kept for inspection by [`Iommu::faults`]; later ones are only counted.
pub const FAULTS_KEPT: usize = 64;

/// A device access that reached an unmapped IOVA. The access as the device issued it (start and
/// length), not just the first unmapped byte, so a test can tell which transfer went wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("IOMMU fault: device {} of {len} bytes at IOVA {iova:#x} reached unmapped memory", if *.write { "write" } else { "read" })]
pub struct IommuFault {
    /// First IOVA of the access.
    pub iova: u64,
    /// Length of the access in bytes.
    pub len: u64,
    /// Device write to host memory (true) or device read from it (false).
    pub write: bool,
}

/// One `map` call's range. The host address is kept as a number: the table never dereferences
/// it outside the copy functions below.
#[derive(Clone, Copy, Debug)]
struct Mapping {
    host: u64,
    len: u64,
}

/// The simulated IOMMU domain of one device.
#[derive(Debug)]
pub struct Iommu {
    device: String,
    /// IOVA of each mapping's first byte → mapping. Mappings never overlap. Level
    /// `iommu.table`: read-held for a whole copy, so an unmap (write) waits for copies; the fault
    /// record and the map limit are taken under it. A panic while holding it cannot leave the
    /// table half-updated (every update is one insert or remove), so a poisoned lock is used as
    /// is.
    table: OrderedRwLock<BTreeMap<u64, Mapping>, levels::IommuTable>,
    fault_count: AtomicU64,
    faults: OrderedMutex<Vec<IommuFault>, levels::IommuFaults>,
    /// Largest total of mapped bytes `map` accepts (None: no limit), standing in for the
    /// locked-memory limit (RLIMIT_MEMLOCK) that makes VFIO type1 refuse a map with ENOMEM.
    map_limit: OrderedMutex<Option<u64>, levels::IommuMapLimit>,
    /// Copies between translation and their last byte; lets tests see that an unmap waited.
    /// Counted in test builds only: two read-modify-writes of a line every engine shares,
    /// on each of the three IOMMU accesses per descriptor, for a figure only tests read.
    #[cfg(test)]
    copies_in_flight: AtomicU64,
    /// Bus Master Enable cleared ([`Iommu::disable_bus_master`]): the function issues no
    /// memory requests; every DMA fails before it touches anything.
    bus_master_off: std::sync::atomic::AtomicBool,
    /// DMAs refused because bus mastering was off (not IOMMU faults: nothing reached the IOMMU).
    blocked: AtomicU64,
}

impl Iommu {
    /// An empty domain for the device named `device` (used in errors and logs).
    pub fn new(device: &str) -> Self {
        Self {
            device: device.to_owned(),
            table: OrderedRwLock::new(BTreeMap::new()),
            fault_count: AtomicU64::new(0),
            faults: OrderedMutex::new(Vec::new()),
            map_limit: OrderedMutex::new(None),
            #[cfg(test)]
            copies_in_flight: AtomicU64::new(0),
            bus_master_off: std::sync::atomic::AtomicBool::new(false),
            blocked: AtomicU64::new(0),
        }
    }

    /// Bus Master Enable cleared: from now on every DMA of the function fails at once (it is
    /// counted in [`Iommu::blocked_dmas`], not as an IOMMU fault). Every copy checks the flag
    /// under the table's read lock and holds that lock to its last byte; taking the write lock
    /// once after setting the flag waits out the copies already past the check, so when this
    /// returns no DMA can reach memory any more.
    pub fn disable_bus_master(&self) {
        self.bus_master_off.store(true, Ordering::SeqCst);
        let mut token = LockToken::root();
        drop(self.table.write(&mut token));
    }

    /// Bus mastering was disabled ([`Iommu::disable_bus_master`]).
    pub fn bus_master_disabled(&self) -> bool {
        self.bus_master_off.load(Ordering::SeqCst)
    }

    /// DMAs refused since bus mastering was disabled.
    pub fn blocked_dmas(&self) -> u64 {
        self.blocked.load(Ordering::Relaxed)
    }

    /// A DMA refused with bus mastering off: counted, as the error the model sees.
    fn refuse(&self, iova: u64, len: u64, write: bool) -> IommuFault {
        self.blocked.fetch_add(1, Ordering::Relaxed);
        IommuFault { iova, len, write }
    }

    /// Device read of host memory: copy `out.len()` bytes at `iova` into `out`; a batch of one
    /// ([`DmaBatch::read`]).
    ///
    /// # Errors
    /// [`IommuFault`] (also recorded) when any byte of the range is unmapped; `out` is then left
    /// unchanged and no host memory was read.
    pub fn dma_read(&self, iova: u64, out: &mut [u8]) -> Result<(), IommuFault> {
        // A DMA copy is device work: the model calls it with no lock of its own held (the root
        // token asserts it), except through `dma_batch_under`.
        self.dma_batch_under(&mut LockToken::root(), |batch| batch.read(iova, out))
    }

    /// Device write to host memory: copy `data` to `iova`; a batch of one ([`DmaBatch::write`]).
    ///
    /// # Errors
    /// [`IommuFault`] (also recorded) when any byte of the range is unmapped; no host memory is
    /// then written, not even the mapped part.
    pub fn dma_write(&self, iova: u64, data: &[u8]) -> Result<(), IommuFault> {
        self.dma_batch_under(&mut LockToken::root(), |batch| batch.write(iova, data))
    }

    /// Several device accesses to host memory under one hold of the table, under the caller's
    /// lock chain: how a device moves one transfer to or from a buffer's pages (NVMe PRP
    /// entries, scatter list entries), with one hold of the translation table per transfer
    /// instead of one per page, and no walk of the table for an access inside the mapping of
    /// the one before it (an NVMe Read of 128 KiB in 4 KiB pages took the lock 32 times, a
    /// fifth of the simulated controller's time). `f` makes the accesses through [`DmaBatch`],
    /// each checked, faulted and copied as one [`Iommu::dma_read`] or [`Iommu::dma_write`]
    /// would be (a fault names that access and moves nothing of it; the accesses before it have
    /// happened), and an unmap waits for the whole batch as it waits for one copy. A device
    /// model that holds a lock of its own across the batch passes that lock's child token (the
    /// simulated medium, whose level is below `iommu.table`, copies between its blocks and host
    /// memory this way), and the nesting is checked like any other; nothing that lock guards
    /// may be waited for by a thread that holds `iommu.table`: the order forbids taking it
    /// there.
    ///
    /// Within one batch an access that [`DmaBatch::check_read`] admitted cannot fail after: the
    /// table cannot change while it is held, and bus mastering is read once, when the batch
    /// opens (`disable_bus_master` waits for the batch to end before it returns, as for a copy).
    /// So a device can check every piece of a transfer before it changes anything, and then move
    /// it: a WRITE that faults leaves the medium as it was.
    pub fn dma_batch_under<L: LockBefore<levels::IommuTable>, R>(
        &self,
        token: &mut LockToken<'_, L>,
        f: impl FnOnce(&mut DmaBatch<'_>) -> R,
    ) -> R {
        let (table, under_table) = self.table.read(token);
        // Read under the table's read lock, which `disable_bus_master` waits out.
        let bus_master_off = self.bus_master_off.load(Ordering::SeqCst);
        let mut batch = DmaBatch {
            iommu: self,
            table,
            under_table,
            bus_master_off,
            last: None,
            #[cfg(test)]
            copy: None,
        };
        f(&mut batch)
    }

    /// Device write to host memory in pieces that must land in order, each `(iova, bytes)`
    /// visible to the host before the next starts (a Release fence between them: the pieces'
    /// bytes are atomic stores, so a host acquire load that reads a byte of a later piece
    /// synchronizes with the fence and sees the earlier pieces whole), all under
    /// one hold of the table: how a device writes a completion entry's body and then the
    /// byte that publishes it. One translation for the lot instead of one per piece; the
    /// guarantee against `unmap` is the same as [`Iommu::dma_write`]'s.
    ///
    /// # Errors
    /// [`IommuFault`] (also recorded) for the first piece with an unmapped byte; every piece is
    /// checked before any is written, so on a fault no host memory was written.
    pub fn dma_write_ordered(&self, pieces: &[(u64, &[u8])]) -> Result<(), IommuFault> {
        self.dma_batch_under(&mut LockToken::root(), |batch| {
            for &(iova, data) in pieces {
                batch.admit(iova, data.len() as u64, true)?;
            }
            for (n, &(iova, data)) in pieces.iter().enumerate() {
                if n > 0 {
                    // The previous piece is visible before any byte of this one.
                    std::sync::atomic::fence(Ordering::Release);
                }
                // Admitted above in this hold of the table: cannot fail.
                batch.write(iova, data)?;
            }
            Ok(())
        })
    }

    /// Faults since the domain was created.
    pub fn fault_count(&self) -> u64 {
        self.fault_count.load(Ordering::Relaxed)
    }

    /// The first [`FAULTS_KEPT`] faults, oldest first.
    ///
    /// # Panics
    /// In debug and test builds, when the caller holds a checked lock: an inspection of the
    /// device's IOMMU (as VFIO's would be an ioctl) is made with none held.
    #[track_caller]
    pub fn faults(&self) -> Vec<IommuFault> {
        let mut token = LockToken::root();
        let (faults, _) = self.faults.lock(&mut token);
        faults.clone()
    }

    /// Bytes currently mapped.
    ///
    /// # Panics
    /// As [`Iommu::faults`].
    #[track_caller]
    pub fn mapped_bytes(&self) -> u64 {
        let mut token = LockToken::root();
        let (table, _) = self.table.read(&mut token);
        table.values().map(|m| m.len).sum()
    }

    /// Mappings currently live (one per successful `map` not yet unmapped).
    ///
    /// # Panics
    /// As [`Iommu::faults`].
    #[track_caller]
    pub fn mappings(&self) -> usize {
        let mut token = LockToken::root();
        let (table, _) = self.table.read(&mut token);
        table.len()
    }

    /// Limit the bytes that may be mapped at once (None: no limit); a `map` that would exceed it
    /// fails with ENOMEM, as VFIO does at the locked-memory limit. Lets tests exercise a
    /// driver's handling of that error. Existing mappings are kept even if above a new limit.
    ///
    /// # Panics
    /// As [`Iommu::faults`] (the limit stands for a process limit, set with no lock held).
    #[track_caller]
    pub fn set_map_limit(&self, limit: Option<u64>) {
        let mut token = LockToken::root();
        *self.map_limit.lock(&mut token).0 = limit;
    }

    /// Copies currently between translation and their last byte.
    #[cfg(test)]
    pub(crate) fn copies_in_flight(&self) -> u64 {
        self.copies_in_flight.load(Ordering::SeqCst)
    }

    /// Record a fault; called with the table read-held (`token` proves the order).
    fn fault<M: LockBefore<levels::IommuFaults>>(
        &self,
        token: &mut LockToken<'_, M>,
        iova: u64,
        len: u64,
        write: bool,
    ) -> IommuFault {
        let fault = IommuFault { iova, len, write };
        let n = self.fault_count.fetch_add(1, Ordering::Relaxed);
        if (n as usize) < FAULTS_KEPT {
            log::warn!("{}: {fault}", self.device);
            let (mut kept, _) = self.faults.lock(token);
            if kept.len() < FAULTS_KEPT {
                kept.push(fault);
            }
        } else {
            log::debug!("{}: {fault} (fault #{})", self.device, n + 1);
        }
        fault
    }

    fn map_error(&self, iova: u64, len: u64, errno: i32) -> HalError {
        HalError::Map {
            device: self.device.clone(),
            iova,
            len,
            source: io::Error::from_raw_os_error(errno),
        }
    }
}

// SAFETY: one table for the value's life; `unmap` returns `Ok` only when it removed exactly that
// mapping, under the table's write lock, which waits for every device copy in progress (each
// holds the read lock to its last byte, `DmaBatch`): after it, no simulated access can reach
// the range.
unsafe impl DmaMapper for Iommu {
    /// Add `iova..iova+len` → `host..host+len` to the table.
    ///
    /// # Safety
    /// As [`DmaMapper::map`]: the host range stays valid, and is never accessed through Rust
    /// references, until `unmap` of the same range returns.
    ///
    /// # Errors
    /// [`HalError::Map`] with EINVAL for a zero length, an IOVA, host address or length that is
    /// not a multiple of 4 KiB, a null host address or a range that wraps; EEXIST when the IOVA
    /// range overlaps an existing mapping; ENOMEM above the limit set by
    /// [`Iommu::set_map_limit`].
    unsafe fn map(&self, iova: u64, host: u64, len: u64) -> Result<(), HalError> {
        let aligned = [iova, host, len]
            .iter()
            .all(|v| v.is_multiple_of(IOMMU_PAGE_SIZE));
        if len == 0
            || !aligned
            || host == 0
            || iova.checked_add(len).is_none()
            || host.checked_add(len).is_none()
        {
            return Err(self.map_error(iova, len, libc::EINVAL));
        }
        // Stands for VFIO_IOMMU_MAP_DMA, a blocking ioctl: no lock may be held across it, which
        // `root` asserts in test builds, so the simulator catches what hardware would hang on.
        let mut token = LockToken::root();
        let (mut table, mut under_table) = self.table.write(&mut token);
        let end = iova + len;
        // Only the mapping starting at or before `iova`, and any starting inside the new range,
        // can overlap it: mappings in the table never overlap each other.
        let below = table
            .range(..=iova)
            .next_back()
            .is_some_and(|(&start, m)| start + m.len > iova);
        let inside = table.range(iova..end).next().is_some();
        if below || inside {
            return Err(self.map_error(iova, len, libc::EEXIST));
        }
        let limit = *self.map_limit.lock(&mut under_table).0;
        if let Some(limit) = limit {
            let mapped: u64 = table.values().map(|m| m.len).sum();
            if mapped.saturating_add(len) > limit {
                return Err(self.map_error(iova, len, libc::ENOMEM));
            }
        }
        table.insert(iova, Mapping { host, len });
        log::trace!("{}: mapped {len:#x} bytes at IOVA {iova:#x}", self.device);
        Ok(())
    }

    /// Remove the mapping made by one `map(iova, _, len)`. Waits for copies in progress (they hold
    /// the read lock), so when it returns the model can no longer reach that memory.
    ///
    /// # Errors
    /// [`HalError::NotOneMapping`] unless exactly that range is mapped: a range over several
    /// mappings, which VFIO type1 v2 would unmap together, is refused as on `VfioDma`
    /// ([`DmaMapper::unmap`]).
    fn unmap(&self, iova: u64, len: u64) -> Result<(), HalError> {
        // VFIO_IOMMU_UNMAP_DMA on hardware: asserted lock-free like `map`.
        let mut token = LockToken::root();
        let (mut table, _) = self.table.write(&mut token);
        crate::take_one_mapping(&mut table, |m| m.len, &self.device, iova, len)?;
        log::trace!("{}: unmapped {len:#x} bytes at IOVA {iova:#x}", self.device);
        Ok(())
    }
}

/// Whether every byte of `iova..iova+len` is mapped (a zero-length access touches nothing and is
/// always allowed; a range that wraps never is).
fn covered(table: &BTreeMap<u64, Mapping>, iova: u64, len: u64) -> bool {
    let Some(end) = iova.checked_add(len) else {
        return false;
    };
    let mut at = iova;
    while at < end {
        match table.range(..=at).next_back() {
            // `start + m.len` cannot wrap: `map` refused ranges that do.
            Some((&start, m)) if at < start + m.len => at = start + m.len,
            _ => return false,
        }
    }
    true
}

/// The host pieces of an IOVA range already checked by [`covered`]: yields
/// `(host address, offset into the access, length)`.
struct Segments<'a> {
    table: &'a BTreeMap<u64, Mapping>,
    iova: u64,
    at: u64,
    end: u64,
}

impl<'a> Segments<'a> {
    fn new(table: &'a BTreeMap<u64, Mapping>, iova: u64, len: u64) -> Self {
        Self {
            table,
            iova,
            at: iova,
            end: iova.saturating_add(len),
        }
    }
}

impl Iterator for Segments<'_> {
    type Item = (u64, usize, usize);

    fn next(&mut self) -> Option<Self::Item> {
        if self.at >= self.end {
            return None;
        }
        let (&start, m) = self.table.range(..=self.at).next_back()?;
        let seg_end = (start + m.len).min(self.end);
        if seg_end <= self.at {
            // Not covered: cannot happen after `covered`, but stop rather than loop.
            return None;
        }
        let item = (
            m.host + (self.at - start),
            (self.at - self.iova) as usize,
            (seg_end - self.at) as usize,
        );
        self.at = seg_end;
        Some(item)
    }
}

/// Device accesses to host memory under one read hold of an [`Iommu`]'s table
/// ([`Iommu::dma_batch_under`]).
pub struct DmaBatch<'a> {
    /// Counted in the domain's copies in flight from the batch's first admitted access (a
    /// translation that succeeded) to its end: an attempt that only faults copies nothing.
    /// Declared first, so dropped first: the count falls before the table's read lock is
    /// released, and an `unmap` that waited for the lock never sees this batch counted. Test
    /// builds only, as the count.
    #[cfg(test)]
    copy: Option<CopyInFlight<'a>>,
    iommu: &'a Iommu,
    table: OrderedReadGuard<'a, BTreeMap<u64, Mapping>, levels::IommuTable>,
    under_table: LockToken<'a, levels::IommuTable>,
    /// Bus mastering as it was when the batch opened.
    bus_master_off: bool,
    /// The mapping (its first IOVA and itself) that held the last access whole: the table
    /// cannot change while it is read-held, so an access inside it needs no lookup.
    last: Option<(u64, Mapping)>,
}

impl DmaBatch<'_> {
    /// Device write of `data` to `iova`, as [`Iommu::dma_write`] makes it.
    ///
    /// # Errors
    /// [`IommuFault`] (also recorded) when any byte of the range is unmapped; no host memory is
    /// then written by this write, not even the mapped part.
    pub fn write(&mut self, iova: u64, data: &[u8]) -> Result<(), IommuFault> {
        for (host, at, n) in self.translate(iova, data.len() as u64, true)? {
            // SAFETY: `host..host+n` lies inside one live mapping, checked against the table
            // under this read hold (`translate`); the caller of `map` promised that memory stays
            // valid until `unmap` returns, which needs the write lock this hold excludes, and
            // that every other access to it is byte-wise atomic, as this copy is. `data` is a
            // Rust reference, which the map contract forbids into mapped memory, so the ranges
            // cannot overlap.
            unsafe { copy_to_host(&data[at..at + n], host) };
        }
        Ok(())
    }

    /// Device read of `out.len()` bytes at `iova` into `out`, as [`Iommu::dma_read`] makes it.
    ///
    /// # Errors
    /// [`IommuFault`] (also recorded) when any byte of the range is unmapped; `out` is then left
    /// unchanged.
    pub fn read(&mut self, iova: u64, out: &mut [u8]) -> Result<(), IommuFault> {
        for (host, at, n) in self.translate(iova, out.len() as u64, false)? {
            // SAFETY: as in `write`: the source lies inside one live mapping that cannot be
            // unmapped under this hold and is only accessed byte-wise atomically, and `out` (a
            // Rust reference) cannot overlap it.
            unsafe { copy_from_host(host, &mut out[at..at + n]) };
        }
        Ok(())
    }

    /// Whether a device read of `len` bytes at `iova` would pass, without reading: a refusal
    /// is recorded (fault or blocked count) as that read's would be. A read of the same range
    /// later in this batch then cannot fail.
    ///
    /// # Errors
    /// The [`IommuFault`] that read would have met.
    pub fn check_read(&mut self, iova: u64, len: u64) -> Result<(), IommuFault> {
        self.admit(iova, len, false).map(|_| ())
    }

    /// Admit an access of `len` bytes at `iova` and give its host pieces, `(host address, offset
    /// into the access, length)`: one when a mapping holds it whole ([`DmaBatch::admit`]), else
    /// the walk of the mappings it crosses.
    fn translate(&mut self, iova: u64, len: u64, write: bool) -> Result<Pieces<'_>, IommuFault> {
        Ok(match self.admit(iova, len, write)? {
            Some(host) => Pieces::Whole(Some((host, 0, len as usize))),
            None => Pieces::Across(Segments::new(&self.table, iova, len)),
        })
    }

    /// An access was admitted: the batch is a copy in flight until it ends.
    fn copying(&mut self) {
        #[cfg(test)]
        if self.copy.is_none() {
            self.copy = Some(CopyInFlight::new(&self.iommu.copies_in_flight));
        }
    }

    /// Admit an access of `len` bytes at `iova`: `Some(host)` when one mapping holds it whole
    /// (the remembered one, or the one a lookup finds), `None` when it is mapped across
    /// mappings (the caller walks [`Segments`]).
    fn admit(&mut self, iova: u64, len: u64, write: bool) -> Result<Option<u64>, IommuFault> {
        if self.bus_master_off {
            return Err(self.iommu.refuse(iova, len, write));
        }
        let inside = |(start, m): (u64, Mapping)| {
            iova >= start && iova.checked_add(len).is_some_and(|end| end <= start + m.len)
        };
        let holder = match self.last.filter(|&held| inside(held)) {
            Some(held) => Some(held),
            None => self
                .table
                .range(..=iova)
                .next_back()
                .map(|(&start, &m)| (start, m))
                .filter(|&held| inside(held)),
        };
        if let Some((start, m)) = holder {
            self.last = holder;
            self.copying();
            return Ok(Some(m.host + (iova - start)));
        }
        if covered(&self.table, iova, len) {
            self.copying();
            Ok(None)
        } else {
            Err(self.iommu.fault(&mut self.under_table, iova, len, write))
        }
    }
}

/// The host pieces of one access in a batch ([`DmaBatch::translate`]).
enum Pieces<'a> {
    /// Held whole by one mapping: one piece, the usual case (the hot path of every engine).
    Whole(Option<(u64, usize, usize)>),
    /// Across mappings: the walk of the table.
    Across(Segments<'a>),
}

impl Iterator for Pieces<'_> {
    type Item = (u64, usize, usize);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Self::Whole(piece) => piece.take(),
            Self::Across(segments) => segments.next(),
        }
    }
}

/// Counts a copy in progress for as long as it lives (test builds).
#[cfg(test)]
struct CopyInFlight<'a>(&'a AtomicU64);

#[cfg(test)]
impl<'a> CopyInFlight<'a> {
    fn new(counter: &'a AtomicU64) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        Self(counter)
    }
}

#[cfg(test)]
impl Drop for CopyInFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Copy host memory at `host` into `out`: a byte-wise atomic copy ([`shared_mem`]), never a
/// reference, so a driver writing the same memory meanwhile (a driver bug) tears the data, as on
/// hardware, without undefined behaviour.
///
/// # Safety
/// `host..host+out.len()` must be readable memory of this process, valid for the whole call,
/// accessed by other threads only byte-wise atomically (the `DmaMapper::map` contract), and must
/// not overlap `out`.
unsafe fn copy_from_host(host: u64, out: &mut [u8]) {
    // SAFETY: the caller guarantees the source range is valid, shared only atomically and
    // disjoint from `out`.
    unsafe { shared_mem::copy_from_shared_into(host as *const u8, out) }
}

/// Copy `data` into host memory at `host`, byte-wise atomically as [`copy_from_host`].
///
/// # Safety
/// `host..host+data.len()` must be writable memory of this process, valid for the whole call,
/// accessed by other threads only byte-wise atomically, and must not overlap `data`.
unsafe fn copy_to_host(data: &[u8], host: u64) {
    // SAFETY: the caller guarantees the destination range is valid, shared only atomically and
    // disjoint from `data`.
    unsafe { shared_mem::copy_to_shared(data, host as *mut u8) }
}
