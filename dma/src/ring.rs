//! Submission and completion rings in a [`MappedRegion`] (`accelerator.md §3`, `§4`; the
//! same shape as NVMe's SQ/CQ pairs).
//!
//! A ring is a small struct of named indices over device-shared memory. The host owns the
//! submission tail and the completion head; the device's progress arrives only as values
//! (`sq_head` in a completion, phase bits in the completion ring), which are checked, never
//! trusted to index memory unchecked.

use crate::DmaError;
use crate::DmaRegion;
use crate::MappedRegion;
use crate::RingFull;
use std::mem::size_of;
use std::sync::atomic::fence;
use std::sync::atomic::Ordering;
use zerocopy::FromBytes;

/// A submission head reported by the device that lies outside the in-flight window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("device reported submission head {head}, outside the in-flight window {old_head}..={tail} of {entries} entries")]
pub struct InvalidHead {
    /// The value reported.
    pub head: u32,
    /// The head the host knew.
    pub old_head: u32,
    /// The host's tail.
    pub tail: u32,
    /// Ring size.
    pub entries: u32,
}

fn check_geometry(region: &MappedRegion, entries: u32, entry_size: usize) -> Result<(), DmaError> {
    let invalid = |reason| DmaError::InvalidRing {
        entries,
        entry_size,
        region_len: region.len(),
        reason,
    };
    if entries < 2 || !entries.is_power_of_two() {
        return Err(invalid("entries must be a power of two, at least 2"));
    }
    if entry_size == 0 {
        return Err(invalid("entry size must not be 0"));
    }
    match (entries as usize).checked_mul(entry_size) {
        Some(bytes) if bytes <= region.len() => Ok(()),
        _ => Err(invalid("the ring does not fit in the region")),
    }
}

/// The host side of a submission ring: entries are written at the tail, published by
/// [`SubmissionRing::commit`] (whose value goes to the SQ_TAIL doorbell, once per batch), and
/// freed when a completion reports the device's head.
#[derive(Debug)]
pub struct SubmissionRing {
    region: MappedRegion,
    entries: u32,
    entry_size: usize,
    /// Oldest slot the device may still read.
    head: u32,
    /// Next slot to write.
    tail: u32,
    /// Tail last handed to the doorbell.
    committed_tail: u32,
    /// Entries pushed since the last reset (wrapping): the next descriptor's `seq` (§3).
    pushed: u32,
}

impl SubmissionRing {
    /// Dropped, leave the ring mapped ([`MappedRegion::leak_on_drop`]).
    pub fn leak_on_drop(&mut self) {
        self.region.leak_on_drop();
    }

    /// A ring of `entries` slots of `entry_size` bytes at the start of `region`, zeroed.
    ///
    /// # Errors
    /// [`DmaError::InvalidRing`] unless `entries` is a power of two ≥ 2, `entry_size` > 0 and
    /// the ring fits in the region.
    pub fn new(region: MappedRegion, entries: u32, entry_size: usize) -> Result<Self, DmaError> {
        check_geometry(&region, entries, entry_size)?;
        let mut ring = Self {
            region,
            entries,
            entry_size,
            head: 0,
            tail: 0,
            committed_tail: 0,
            pushed: 0,
        };
        ring.reset();
        Ok(ring)
    }

    /// The ring's IOVA (for SQ_BASE).
    pub fn iova(&self) -> u64 {
        self.region.iova()
    }

    /// Slots in the ring (for RING_SIZE).
    pub fn entries(&self) -> u32 {
        self.entries
    }

    fn mask(&self) -> u32 {
        self.entries - 1
    }

    /// The device's head as last reported: slots before it were consumed by the device.
    pub fn head(&self) -> u32 {
        self.head
    }

    /// Slots written and not yet released by the device (committed or not).
    pub fn in_flight(&self) -> u32 {
        self.tail.wrapping_sub(self.head) & self.mask()
    }

    /// Slots that can be pushed now. One slot is always kept empty, so that a full ring
    /// (tail one behind head) is distinguishable from an empty one (tail == head).
    pub fn free_slots(&self) -> u32 {
        self.entries - 1 - self.in_flight()
    }

    /// The sequence number the next pushed descriptor must carry (`accelerator.md §3`: 0 for
    /// the first descriptor after RUN, +1 per descriptor, wrapping).
    pub fn next_seq(&self) -> u32 {
        self.pushed
    }

    /// Write `entry` into the tail slot (zero-padded to the entry size) and advance the tail.
    /// The device does not see it until [`SubmissionRing::commit`] and the doorbell write.
    /// Returns the slot index.
    ///
    /// # Errors
    /// [`RingFull`] when no slot is free.
    ///
    /// # Panics
    /// If `entry` is longer than the ring's entry size (a driver bug).
    pub fn push(&mut self, entry: &[u8]) -> Result<u32, RingFull> {
        assert!(
            entry.len() <= self.entry_size,
            "entry of {} bytes pushed into a ring of {}-byte entries",
            entry.len(),
            self.entry_size
        );
        if self.free_slots() == 0 {
            return Err(RingFull {
                entries: self.entries,
            });
        }
        let slot = self.tail;
        let offset = slot as usize * self.entry_size;
        let region = self.region.region();
        region.write_at(offset, entry);
        if entry.len() < self.entry_size {
            region.fill(offset + entry.len(), self.entry_size - entry.len(), 0);
        }
        self.tail = (self.tail + 1) & self.mask();
        self.pushed = self.pushed.wrapping_add(1);
        Ok(slot)
    }

    /// Publish what was pushed: a release fence orders the entry writes before the doorbell
    /// write that follows. Returns the new tail to write to SQ_TAIL, or `None` when nothing was
    /// pushed since the last commit (no doorbell needed: one doorbell per batch, §3).
    pub fn commit(&mut self) -> Option<u32> {
        if self.tail == self.committed_tail {
            return None;
        }
        fence(Ordering::Release);
        self.committed_tail = self.tail;
        Some(self.tail)
    }

    /// The device's head from a completion's `sq_head` (§4): slots before it may be reused.
    /// A value outside the in-flight window is ignored (logged); use
    /// [`SubmissionRing::try_update_head`] to treat it as the device error it is.
    pub fn update_head(&mut self, head: u32) {
        if let Err(e) = self.try_update_head(head) {
            log::warn!("{e}; ignored");
        }
    }

    /// As [`SubmissionRing::update_head`], reporting an impossible head.
    ///
    /// # Errors
    /// [`InvalidHead`] if `head` is not within `old head ..= committed tail`: the device
    /// cannot have consumed slots it was never given.
    pub fn try_update_head(&mut self, head: u32) -> Result<(), InvalidHead> {
        let advance = head.wrapping_sub(self.head) & self.mask();
        let published = self.committed_tail.wrapping_sub(self.head) & self.mask();
        if head >= self.entries || advance > published {
            return Err(InvalidHead {
                head,
                old_head: self.head,
                tail: self.committed_tail,
                entries: self.entries,
            });
        }
        self.head = head;
        Ok(())
    }

    /// Back to empty with zeroed slots and `seq` 0, as the device is after RUN is set again
    /// (§2 Q_CONTROL). Call only while the queue is stopped.
    pub fn reset(&mut self) {
        self.region
            .region()
            .fill(0, self.entries as usize * self.entry_size, 0);
        self.head = 0;
        self.tail = 0;
        self.committed_tail = 0;
        self.pushed = 0;
    }

    /// The ring memory (for dumps and tests).
    pub fn region(&self) -> &DmaRegion {
        self.region.region()
    }

    /// Give the mapping back, to unmap it once the queue is stopped and idle (§6).
    pub fn into_mapped(self) -> MappedRegion {
        self.region
    }
}

/// The host side of a completion ring: entries are valid while their phase bit matches the
/// expected phase, which starts at 1 and flips at each wrap (`accelerator.md §4`).
#[derive(Debug)]
pub struct CompletionRing {
    region: MappedRegion,
    entries: u32,
    entry_size: usize,
    phase_offset: usize,
    phase_mask: u8,
    head: u32,
    /// The phase value a newly written entry carries on this pass.
    phase: bool,
}

impl CompletionRing {
    /// Dropped, leave the ring mapped ([`MappedRegion::leak_on_drop`]).
    pub fn leak_on_drop(&mut self) {
        self.region.leak_on_drop();
    }

    /// A ring of `entries` entries of `entry_size` bytes at the start of `region`, zeroed,
    /// whose phase bit is `phase_mask` in the byte at `phase_offset` of each entry (SCA-1:
    /// 16, 3, 0x01).
    ///
    /// # Errors
    /// [`DmaError::InvalidRing`] unless `entries` is a power of two ≥ 2, the ring fits in the
    /// region, the phase byte lies inside an entry and `phase_mask` is not 0.
    pub fn new(
        region: MappedRegion,
        entries: u32,
        entry_size: usize,
        phase_offset: usize,
        phase_mask: u8,
    ) -> Result<Self, DmaError> {
        check_geometry(&region, entries, entry_size)?;
        if phase_offset >= entry_size || phase_mask == 0 {
            return Err(DmaError::InvalidRing {
                entries,
                entry_size,
                region_len: region.len(),
                reason: "the phase bit must be a non-empty mask of a byte inside the entry",
            });
        }
        let mut ring = Self {
            region,
            entries,
            entry_size,
            phase_offset,
            phase_mask,
            head: 0,
            phase: true,
        };
        ring.reset();
        Ok(ring)
    }

    /// The ring's IOVA (for CQ_BASE).
    pub fn iova(&self) -> u64 {
        self.region.iova()
    }

    /// Entries in the ring.
    pub fn entries(&self) -> u32 {
        self.entries
    }

    /// Whether the head entry's phase bit matches the expected phase (the device has written
    /// it), read as [`CompletionRing::pop`] reads it (acquire), without popping.
    pub fn head_posted(&self) -> bool {
        let offset = self.head as usize * self.entry_size + self.phase_offset;
        let flags = self.region.region().load_u8_acquire(offset);
        (flags & self.phase_mask != 0) == self.phase
    }

    /// If the head entry's phase bit matches the expected phase, copy it out as a `T` and
    /// advance the head (flipping the expected phase at the wrap); otherwise `None` (not
    /// written yet). The phase byte is acquire-loaded first, so the copy sees the whole entry
    /// the device wrote before it (§4: flags byte last).
    ///
    /// # Panics
    /// If `T` is larger than an entry (a driver bug).
    pub fn pop<T: FromBytes>(&mut self) -> Option<T> {
        assert!(
            size_of::<T>() <= self.entry_size,
            "completion type of {} bytes read from {}-byte entries",
            size_of::<T>(),
            self.entry_size
        );
        if !self.head_posted() {
            return None;
        }
        let entry = self
            .region
            .region()
            .read_obj::<T>(self.head as usize * self.entry_size);
        self.head = (self.head + 1) & (self.entries - 1);
        if self.head == 0 {
            self.phase = !self.phase;
        }
        Some(entry)
    }

    /// The index of the next entry the host will read (for the CQ_HEAD doorbell).
    pub fn head(&self) -> u32 {
        self.head
    }

    /// The phase a fresh entry at the head must carry (for dumps).
    pub fn expected_phase(&self) -> bool {
        self.phase
    }

    /// Zero the ring, expect phase 1, head 0: the state matching a queue after RUN (§4).
    /// Call only while the queue is stopped.
    pub fn reset(&mut self) {
        self.region
            .region()
            .fill(0, self.entries as usize * self.entry_size, 0);
        self.head = 0;
        self.phase = true;
    }

    /// The ring memory (for dumps and tests).
    pub fn region(&self) -> &DmaRegion {
        self.region.region()
    }

    /// Give the mapping back, to unmap it once the queue is stopped and idle (§6).
    pub fn into_mapped(self) -> MappedRegion {
        self.region
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::IovaLock;
    use crate::test_mapper::LedgerMapper;
    use crate::IovaAllocator;
    use crate::PAGE_SIZE;
    use std::sync::Arc;
    use zerocopy::Immutable;
    use zerocopy::IntoBytes;
    use zerocopy::KnownLayout;

    /// The SCA-1 completion layout (§4), redeclared here: dma does not depend on boards.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
    struct Cqe {
        tag: u16,
        status: u8,
        flags: u8,
        bytes: u32,
        detail: u32,
        sq_head: u16,
        reserved: u16,
    }

    fn mapped(len: usize) -> (MappedRegion, Arc<LedgerMapper>) {
        let mapper = Arc::new(LedgerMapper::default());
        let iovas = Arc::new(IovaLock::new(IovaAllocator::new(0x10_0000, 1 << 24)));
        let region = DmaRegion::new(len).expect("region");
        (
            MappedRegion::new(region, mapper.clone(), iovas).expect("map"),
            mapper,
        )
    }

    fn sq(entries: u32) -> SubmissionRing {
        SubmissionRing::new(mapped(PAGE_SIZE).0, entries, 32).expect("sq")
    }

    /// The device side: write a completion with the flags byte last, as §4 requires.
    fn post(ring: &CompletionRing, index: u32, tag: u16, phase: bool) {
        let off = index as usize * 16;
        let cqe = Cqe {
            tag,
            sq_head: tag,
            ..Cqe::default()
        };
        ring.region().write_at(off, &cqe.as_bytes()[..3]);
        ring.region().write_at(off + 4, &cqe.as_bytes()[4..]);
        ring.region().store_u8_release(off + 3, u8::from(phase));
    }

    #[test]
    fn push_commit_gives_the_doorbell_value_once_per_batch() {
        let mut r = sq(8);
        assert_eq!(r.commit(), None, "nothing pushed, no doorbell");
        assert_eq!(r.push(&[1; 32]), Ok(0));
        assert_eq!(r.next_seq(), 1);
        assert_eq!(r.push(&[2; 8]), Ok(1));
        assert_eq!(r.commit(), Some(2));
        assert_eq!(r.commit(), None, "no new entries since the last commit");
        let mut slot = [0xffu8; 32];
        r.region().read_at(32, &mut slot);
        assert_eq!(&slot[..8], &[2; 8]);
        assert_eq!(&slot[8..], &[0; 24], "short entries are zero-padded");
    }

    #[test]
    fn full_ring_keeps_one_slot_empty_and_update_head_frees_slots() {
        let mut r = sq(4);
        assert_eq!(r.free_slots(), 3);
        for i in 0..3 {
            assert_eq!(r.push(&[i as u8]), Ok(i));
        }
        assert_eq!(r.push(&[9]), Err(RingFull { entries: 4 }));
        assert_eq!(r.commit(), Some(3));
        r.update_head(2);
        assert_eq!(r.free_slots(), 2);
        assert_eq!(r.in_flight(), 1);
        // Wrap: slots 3 and 0.
        assert_eq!(r.push(&[3]), Ok(3));
        assert_eq!(r.push(&[4]), Ok(0));
        assert_eq!(r.push(&[5]), Err(RingFull { entries: 4 }));
        assert_eq!(r.commit(), Some(1));
        assert_eq!(r.next_seq(), 5, "seq keeps counting across the wrap");
        r.update_head(1);
        assert_eq!(r.free_slots(), 3);
    }

    #[test]
    fn impossible_heads_from_the_device_are_rejected() {
        let mut r = sq(8);
        for _ in 0..4 {
            r.push(&[0]).expect("push");
        }
        r.commit();
        r.push(&[0]).expect("pushed but not committed");
        assert!(r.try_update_head(5).is_err(), "slot 4 was never published");
        assert!(r.try_update_head(8).is_err(), "outside the ring");
        assert!(r.try_update_head(u32::MAX).is_err());
        r.update_head(7); // ignored, logged
        assert_eq!(r.in_flight(), 5);
        assert_eq!(r.try_update_head(4), Ok(()));
        assert!(r.try_update_head(3).is_err(), "the head never moves backwards");
        assert_eq!(r.try_update_head(4), Ok(()), "the same head again is harmless");
    }

    #[test]
    fn reset_empties_and_zeroes() {
        let mut r = sq(4);
        r.push(&[0xaa; 32]).expect("push");
        r.commit();
        r.reset();
        assert_eq!(r.free_slots(), 3);
        assert_eq!(r.next_seq(), 0);
        assert_eq!(r.commit(), None);
        assert_eq!(r.region().read_obj::<[u8; 32]>(0), [0; 32]);
    }

    #[test]
    fn bad_geometry_is_refused() {
        for (entries, size) in [(3, 32), (1, 32), (0, 32), (8, 0), (256, 32)] {
            let err = SubmissionRing::new(mapped(PAGE_SIZE).0, entries, size).expect_err("refused");
            assert!(matches!(err, DmaError::InvalidRing { .. }), "{entries}x{size}");
        }
        assert!(CompletionRing::new(mapped(PAGE_SIZE).0, 8, 16, 16, 1).is_err());
        assert!(CompletionRing::new(mapped(PAGE_SIZE).0, 8, 16, 3, 0).is_err());
    }

    #[test]
    fn completion_phase_flips_across_two_wraps() {
        let (region, _mapper) = mapped(PAGE_SIZE);
        let mut cq = CompletionRing::new(region, 4, 16, 3, 1).expect("cq");
        assert_eq!(
            cq.pop::<Cqe>(),
            None,
            "zeroed ring: phase 0 is not the expected 1"
        );
        let mut tag = 0u16;
        for pass in 0..3 {
            let phase = pass % 2 == 0;
            assert_eq!(cq.expected_phase(), phase);
            for i in 0..4 {
                post(&cq, i, tag, phase);
                let c = cq.pop::<Cqe>().expect("posted entry");
                assert_eq!((c.tag, c.sq_head), (tag, tag));
                assert_eq!(c.flags & 1 != 0, phase);
                assert_eq!(cq.head(), (i + 1) % 4);
                assert_eq!(cq.pop::<Cqe>(), None, "the next entry is stale until posted");
                tag += 1;
            }
        }
        assert_eq!(tag, 12);
    }

    #[test]
    fn completion_reset_restarts_at_phase_one() {
        let (region, _mapper) = mapped(PAGE_SIZE);
        let mut cq = CompletionRing::new(region, 2, 16, 3, 1).expect("cq");
        post(&cq, 0, 7, true);
        post(&cq, 1, 8, true);
        assert!(cq.pop::<Cqe>().is_some());
        assert!(cq.pop::<Cqe>().is_some());
        assert!(!cq.expected_phase());
        cq.reset();
        assert_eq!((cq.head(), cq.expected_phase()), (0, true));
        assert_eq!(cq.pop::<Cqe>(), None, "old entries were zeroed");
        post(&cq, 0, 9, true);
        assert_eq!(cq.pop::<Cqe>().map(|c| c.tag), Some(9));
    }

    #[test]
    fn rings_unmap_when_dropped() {
        let (region, mapper) = mapped(PAGE_SIZE);
        let cq = CompletionRing::new(region, 4, 16, 3, 1).expect("cq");
        let iova = cq.iova();
        assert_eq!(mapper.live().len(), 1);
        assert_eq!(mapper.live()[0].0, iova);
        let region = cq.into_mapped().unmap().expect("unmap");
        assert_eq!(region.len(), PAGE_SIZE);
        assert_eq!(mapper.live(), vec![]);
    }
}
