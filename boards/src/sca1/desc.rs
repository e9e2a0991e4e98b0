//! SCA-1 descriptor, scatter entry and completion formats (docs/accelerator.md §3–§5).

use static_assertions::const_assert_eq;
use std::mem::offset_of;
use std::mem::size_of;
use zerocopy::FromBytes;
use zerocopy::Immutable;
use zerocopy::IntoBytes;
use zerocopy::KnownLayout;

/// Descriptor opcodes (§3).
pub mod opcode {
    /// Medium → host.
    pub const READ: u8 = 1;
    /// Host → medium.
    pub const WRITE: u8 = 2;
    /// Flush volatile state.
    pub const FLUSH: u8 = 3;
    /// Zero a range.
    pub const WRITE_ZEROES: u8 = 4;
    /// Deallocate a range.
    pub const DEALLOCATE: u8 = 5;
    /// Copy blocks inside the medium (contract 1.1): `lba` is the destination, `addr` the
    /// source LBA, no data transfer.
    pub const COPY: u8 = 6;
}

/// Descriptor flags (§3).
pub mod flags {
    /// Force unit access.
    pub const FUA: u8 = 1 << 0;
    /// `addr` points to a scatter list.
    pub const SGL: u8 = 1 << 1;
}

/// Completion status values (§5).
pub mod cq_status {
    /// Done.
    pub const OK: u8 = 0;
    /// Unknown opcode.
    pub const INVALID_OPCODE: u8 = 1;
    /// Invalid field.
    pub const INVALID_FIELD: u8 = 2;
    /// LBA out of range.
    pub const LBA_RANGE: u8 = 3;
    /// DMA fault (IOMMU).
    pub const DMA_FAULT: u8 = 4;
    /// Unrecovered read error.
    pub const READ_ERROR: u8 = 5;
    /// Write error.
    pub const WRITE_ERROR: u8 = 6;
    /// Aborted.
    pub const ABORTED: u8 = 7;
    /// Stale descriptor (sequence mismatch): halts the queue.
    pub const STALE: u8 = 8;
    /// Internal error.
    pub const INTERNAL: u8 = 9;
}

/// Completion flag: phase (§4).
pub const CQ_PHASE: u8 = 1;

/// A submission descriptor (§3): 32 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Descriptor {
    /// [`opcode`].
    pub opcode: u8,
    /// [`flags`].
    pub flags: u8,
    /// Host tag.
    pub tag: u16,
    /// Submission sequence number.
    pub seq: u32,
    /// First block.
    pub lba: u64,
    /// Bytes.
    pub length: u32,
    /// Scatter entries (with [`flags::SGL`]).
    pub sgl_entries: u16,
    /// Reserved.
    pub reserved: u16,
    /// Data IOVA or scatter-list IOVA.
    pub addr: u64,
}

/// A scatter list entry (§3): 16 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct SglEntry {
    /// IOVA.
    pub iova: u64,
    /// Bytes.
    pub length: u32,
    /// Reserved.
    pub reserved: u32,
}

/// A completion entry (§4): 16 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Completion {
    /// Descriptor tag.
    pub tag: u16,
    /// [`cq_status`].
    pub status: u8,
    /// [`CQ_PHASE`].
    pub flags: u8,
    /// Bytes moved.
    pub bytes: u32,
    /// Error detail.
    pub detail: u32,
    /// Engine's submission head after this descriptor.
    pub sq_head: u16,
    /// Reserved.
    pub reserved: u16,
}

const_assert_eq!(size_of::<Descriptor>(), 32);
const_assert_eq!(offset_of!(Descriptor, tag), 2);
const_assert_eq!(offset_of!(Descriptor, seq), 4);
const_assert_eq!(offset_of!(Descriptor, lba), 8);
const_assert_eq!(offset_of!(Descriptor, length), 16);
const_assert_eq!(offset_of!(Descriptor, sgl_entries), 20);
const_assert_eq!(offset_of!(Descriptor, addr), 24);
const_assert_eq!(size_of::<SglEntry>(), 16);
const_assert_eq!(offset_of!(SglEntry, length), 8);
const_assert_eq!(size_of::<Completion>(), 16);
const_assert_eq!(offset_of!(Completion, status), 2);
const_assert_eq!(offset_of!(Completion, flags), 3);
const_assert_eq!(offset_of!(Completion, bytes), 4);
const_assert_eq!(offset_of!(Completion, detail), 8);
const_assert_eq!(offset_of!(Completion, sq_head), 12);
