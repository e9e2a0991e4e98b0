//! Sense data (SPC-4 §4.5): the error a command ends with, in fixed (0x70) or descriptor (0x72)
//! format.
//!
//! Which format is chosen follows the D_SENSE bit of the control mode page (or the DESC bit of
//! REQUEST SENSE). SCST copies at most 252 bytes (spec §3.4 "Sense", pitfall 11); both formats
//! built here are far shorter (18 and 28 bytes).

/// Sense keys (SPC-4 table 48).
pub mod sense_key {
    /// No sense (REQUEST SENSE with nothing to report).
    pub const NO_SENSE: u8 = 0x0;
    /// Recovered error.
    pub const RECOVERED_ERROR: u8 = 0x1;
    /// Not ready (stopped unit).
    pub const NOT_READY: u8 = 0x2;
    /// Medium error (unrecovered read/write).
    pub const MEDIUM_ERROR: u8 = 0x3;
    /// Hardware error.
    pub const HARDWARE_ERROR: u8 = 0x4;
    /// Illegal request (CDB or parameter list).
    pub const ILLEGAL_REQUEST: u8 = 0x5;
    /// Unit attention.
    pub const UNIT_ATTENTION: u8 = 0x6;
    /// Data protect (write to a read-only unit).
    pub const DATA_PROTECT: u8 = 0x7;
    /// Aborted command.
    pub const ABORTED_COMMAND: u8 = 0xB;
    /// Miscompare (VERIFY / WRITE AND VERIFY with BYTCHK).
    pub const MISCOMPARE: u8 = 0xE;
}

/// Additional sense codes used by the engine, as (ASC, ASCQ) pairs (SPC-4 table 49).
pub mod asc {
    /// No additional sense information.
    pub const NO_ADDITIONAL_SENSE: (u8, u8) = (0x00, 0x00);
    /// FORMAT COMMAND FAILED (with MEDIUM ERROR: SBC-4, FORMAT UNIT).
    pub const FORMAT_COMMAND_FAILED: (u8, u8) = (0x31, 0x01);
    /// Logical unit not ready, initializing command required (after STOP UNIT).
    pub const NOT_READY_INIT_REQUIRED: (u8, u8) = (0x04, 0x02);
    /// LOGICAL UNIT NOT READY, CAUSE NOT REPORTABLE.
    pub const NOT_READY_CAUSE_NOT_REPORTABLE: (u8, u8) = (0x04, 0x00);
    /// LOGICAL UNIT NOT READY, FORMAT IN PROGRESS.
    pub const NOT_READY_FORMAT_IN_PROGRESS: (u8, u8) = (0x04, 0x04);
    /// ACCESS DENIED - NO ACCESS RIGHTS.
    pub const ACCESS_DENIED_NO_ACCESS_RIGHTS: (u8, u8) = (0x20, 0x02);
    /// Write error.
    pub const WRITE_ERROR: (u8, u8) = (0x0C, 0x00);
    /// Unrecovered read error.
    pub const UNRECOVERED_READ_ERROR: (u8, u8) = (0x11, 0x00);
    /// Parameter list length error.
    pub const PARAMETER_LIST_LENGTH_ERROR: (u8, u8) = (0x1A, 0x00);
    /// Miscompare during verify operation.
    pub const MISCOMPARE_DURING_VERIFY: (u8, u8) = (0x1D, 0x00);
    /// Invalid command operation code.
    pub const INVALID_OPCODE: (u8, u8) = (0x20, 0x00);
    /// Logical block address out of range.
    pub const LBA_OUT_OF_RANGE: (u8, u8) = (0x21, 0x00);
    /// Invalid field in CDB.
    pub const INVALID_FIELD_IN_CDB: (u8, u8) = (0x24, 0x00);
    /// Invalid field in parameter list.
    pub const INVALID_FIELD_IN_PARAMETER_LIST: (u8, u8) = (0x26, 0x00);
    /// Write protected.
    pub const WRITE_PROTECTED: (u8, u8) = (0x27, 0x00);
    /// Space allocation failed write protect (a thin provisioned disk out of space).
    pub const SPACE_ALLOCATION_FAILED_WRITE_PROTECT: (u8, u8) = (0x27, 0x07);
    /// Saving parameters not supported.
    pub const SAVING_PARAMETERS_NOT_SUPPORTED: (u8, u8) = (0x39, 0x00);
    /// Internal target failure.
    pub const INTERNAL_TARGET_FAILURE: (u8, u8) = (0x44, 0x00);
    /// Medium removal prevented.
    pub const MEDIUM_REMOVAL_PREVENTED: (u8, u8) = (0x53, 0x02);
}

/// Response code of current-error fixed-format sense.
pub const FIXED_CURRENT: u8 = 0x70;
/// Response code of current-error descriptor-format sense.
pub const DESCRIPTOR_CURRENT: u8 = 0x72;
/// Length of fixed-format sense as built here (SCST_STANDARD_SENSE_LEN).
pub const FIXED_LEN: usize = 18;

/// The longest sense the engine builds: descriptor format with an information descriptor
/// (12 bytes) and a sense-key-specific descriptor (8) after its 8-byte header.
pub const SENSE_MAX: usize = 28;

/// Sense bytes, held inline (a fixed-capacity vector): a CHECK CONDITION allocates nothing.
/// Its capacity is the longest sense the engine builds, well under the 252 bytes SCST copies.
pub type SenseBytes = heapless::Vec<u8, SENSE_MAX>;

/// Where in the CDB or parameter list the offending field is (SPC-4 §4.5.2.4.2, the
/// sense-key-specific "field pointer").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldPointer {
    /// C/D: true for the CDB, false for the parameter list.
    pub in_cdb: bool,
    /// Byte offset of the field.
    pub byte: u16,
    /// Bit number (7..=0) of the field's most significant bit, when it is not the whole byte.
    pub bit: Option<u8>,
}

impl FieldPointer {
    /// A field in the CDB.
    pub fn cdb(byte: usize, bit: Option<u8>) -> Self {
        Self {
            in_cdb: true,
            byte: clamp_u16(byte),
            bit,
        }
    }

    /// A field in the parameter list (data-out).
    pub fn param(byte: usize, bit: Option<u8>) -> Self {
        Self {
            in_cdb: false,
            byte: clamp_u16(byte),
            bit,
        }
    }

    /// The three sense-key-specific bytes with SKSV set.
    fn bytes(self) -> [u8; 3] {
        let mut b0 = 0x80;
        if self.in_cdb {
            b0 |= 0x40;
        }
        if let Some(bit) = self.bit {
            b0 |= 0x08 | (bit & 0x07);
        }
        let [hi, lo] = self.byte.to_be_bytes();
        [b0, hi, lo]
    }
}

fn clamp_u16(v: usize) -> u16 {
    u16::try_from(v).unwrap_or(u16::MAX)
}

/// A command's error: sense key, additional sense code and the optional INFORMATION and field
/// pointer. Built by the engine, turned into bytes by [`Sense::encode`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sense {
    /// Sense key ([`sense_key`]).
    pub key: u8,
    /// Additional sense code.
    pub asc: u8,
    /// Additional sense code qualifier.
    pub ascq: u8,
    /// INFORMATION field (LBA of a medium error, byte offset of a miscompare).
    pub information: Option<u64>,
    /// Sense-key-specific field pointer (ILLEGAL REQUEST).
    pub field: Option<FieldPointer>,
}

impl Sense {
    /// Sense for `key` and an (ASC, ASCQ) pair, without INFORMATION or field pointer.
    pub fn new(key: u8, (asc, ascq): (u8, u8)) -> Self {
        Self {
            key,
            asc,
            ascq,
            information: None,
            field: None,
        }
    }

    /// ILLEGAL REQUEST / INVALID FIELD IN CDB pointing at `byte` (and `bit`) of the CDB.
    pub fn invalid_cdb_field(byte: usize, bit: Option<u8>) -> Self {
        Self::new(sense_key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB)
            .with_field(FieldPointer::cdb(byte, bit))
    }

    /// ILLEGAL REQUEST / INVALID FIELD IN PARAMETER LIST pointing at `byte` (and `bit`) of the
    /// parameter list.
    pub fn invalid_param_field(byte: usize, bit: Option<u8>) -> Self {
        Self::new(sense_key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_PARAMETER_LIST)
            .with_field(FieldPointer::param(byte, bit))
    }

    /// ILLEGAL REQUEST / PARAMETER LIST LENGTH ERROR.
    pub fn param_list_length() -> Self {
        Self::new(sense_key::ILLEGAL_REQUEST, asc::PARAMETER_LIST_LENGTH_ERROR)
    }

    /// ILLEGAL REQUEST / INVALID COMMAND OPERATION CODE.
    pub fn invalid_opcode() -> Self {
        Self::new(sense_key::ILLEGAL_REQUEST, asc::INVALID_OPCODE)
    }

    /// ILLEGAL REQUEST / LOGICAL BLOCK ADDRESS OUT OF RANGE.
    pub fn lba_out_of_range() -> Self {
        Self::new(sense_key::ILLEGAL_REQUEST, asc::LBA_OUT_OF_RANGE)
    }

    /// NOT READY / INITIALIZING COMMAND REQUIRED: the unit was stopped by START STOP UNIT.
    pub fn not_ready_stopped() -> Self {
        Self::new(sense_key::NOT_READY, asc::NOT_READY_INIT_REQUIRED)
    }

    /// DATA PROTECT / WRITE PROTECTED.
    pub fn write_protected() -> Self {
        Self::new(sense_key::DATA_PROTECT, asc::WRITE_PROTECTED)
    }

    /// With INFORMATION set.
    pub fn with_information(mut self, information: u64) -> Self {
        self.information = Some(information);
        self
    }

    /// With a field pointer.
    pub fn with_field(mut self, field: FieldPointer) -> Self {
        self.field = Some(field);
        self
    }

    /// The sense bytes: descriptor format (0x72) when `descriptor`, else fixed format (0x70).
    pub fn encode(&self, descriptor: bool) -> SenseBytes {
        if descriptor {
            self.encode_descriptor()
        } else {
            self.encode_fixed()
        }
    }

    /// Fixed format, 18 bytes (SPC-4 §4.5.3). INFORMATION is 4 bytes: a value that does not fit
    /// is not reported (VALID=0), as SPC-4 requires.
    fn encode_fixed(&self) -> SenseBytes {
        let mut s = [0u8; FIXED_LEN];
        s[0] = FIXED_CURRENT;
        s[2] = self.key & 0x0F;
        if let Some(info) = self.information.and_then(|i| u32::try_from(i).ok()) {
            s[0] |= 0x80;
            s[3..7].copy_from_slice(&info.to_be_bytes());
        }
        s[7] = (FIXED_LEN - 8) as u8;
        s[12] = self.asc;
        s[13] = self.ascq;
        if let Some(field) = self.field {
            s[15..18].copy_from_slice(&field.bytes());
        }
        SenseBytes::from_iter(s)
    }

    /// Descriptor format (SPC-4 §4.5.2): header, then an information descriptor (type 0x00)
    /// and a sense-key-specific descriptor (type 0x02) when those are present.
    fn encode_descriptor(&self) -> SenseBytes {
        let mut s = [0u8; SENSE_MAX];
        s[..4].copy_from_slice(&[DESCRIPTOR_CURRENT, self.key & 0x0F, self.asc, self.ascq]);
        let mut len = 8;
        if let Some(info) = self.information {
            s[len..len + 4].copy_from_slice(&[0x00, 0x0A, 0x80, 0x00]);
            s[len + 4..len + 12].copy_from_slice(&info.to_be_bytes());
            len += 12;
        }
        if let Some(field) = self.field {
            s[len..len + 4].copy_from_slice(&[0x02, 0x06, 0x00, 0x00]);
            s[len + 4..len + 7].copy_from_slice(&field.bytes());
            len += 8;
        }
        s[7] = (len - 8) as u8;
        SenseBytes::from_iter(s[..len].iter().copied())
    }
}

/// Mark the INFORMATION of encoded sense data not valid (fixed format: VALID, byte 0 bit 7;
/// descriptor format: the information descriptor's VALID, its byte 2 bit 7), keeping the rest:
/// for a command whose Data-In cannot be reported empty (TCMU), where an initiator would count
/// the blocks before INFORMATION as read (Linux's `sd_completed_bytes` does when no residual
/// says otherwise). Returns whether a valid INFORMATION was there.
pub fn invalidate_information(sense: &mut [u8]) -> bool {
    match sense.first().map(|b| b & 0x7f) {
        Some(0x70 | 0x71) => {
            let valid = sense[0] & 0x80 != 0;
            sense[0] &= 0x7f;
            valid
        }
        Some(0x72 | 0x73) => {
            let end = sense
                .len()
                .min(8 + usize::from(sense.get(7).copied().unwrap_or(0)));
            let mut at = 8;
            while at + 2 <= end {
                let len = 2 + usize::from(sense[at + 1]);
                if sense[at] == 0x00 && at + 2 < end {
                    let valid = sense[at + 2] & 0x80 != 0;
                    sense[at + 2] &= 0x7f;
                    return valid;
                }
                at += len;
            }
            false
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn information_is_marked_not_valid_in_both_formats() {
        let medium = || {
            Sense::new(0x03, (0x11, 0x00))
                .with_information(12)
                .with_field(FieldPointer::cdb(2, None))
        };
        for descriptor in [false, true] {
            let mut s = medium().encode(descriptor);
            let before = s.clone();
            assert!(invalidate_information(&mut s), "{descriptor}: {s:02x?}");
            let changed: Vec<usize> = (0..s.len()).filter(|&i| s[i] != before[i]).collect();
            let valid_byte = if descriptor { 10 } else { 0 };
            assert_eq!(
                changed,
                [valid_byte],
                "only VALID changes: {before:02x?} -> {s:02x?}"
            );
            assert!(!invalidate_information(&mut s), "already not valid");
        }
        let mut none = Sense::new(0x03, (0x11, 0x00)).encode(true);
        assert!(!invalidate_information(&mut none));
    }

    #[test]
    fn fixed_invalid_field_in_cdb_has_field_pointer() {
        let s = Sense::invalid_cdb_field(2, Some(5)).encode(false);
        assert_eq!(
            s,
            [
                0x70,
                0,
                0x05,
                0,
                0,
                0,
                0,
                10,
                0,
                0,
                0,
                0,
                0x24,
                0x00,
                0,
                0xC0 | 0x08 | 5,
                0,
                2
            ]
        );
    }

    #[test]
    fn fixed_parameter_field_pointer_has_cd_clear_and_no_bit_pointer() {
        let s = Sense::invalid_param_field(0x1234, None).encode(false);
        assert_eq!(&s[12..18], &[0x26, 0x00, 0, 0x80, 0x12, 0x34]);
    }

    #[test]
    fn fixed_information_sets_valid_when_it_fits() {
        let s = Sense::new(sense_key::MEDIUM_ERROR, asc::UNRECOVERED_READ_ERROR)
            .with_information(0x0102_0304)
            .encode(false);
        assert_eq!(&s[..8], &[0xF0, 0, 0x03, 1, 2, 3, 4, 10]);
        assert_eq!(&s[12..14], &[0x11, 0x00]);
    }

    #[test]
    fn fixed_information_too_large_is_not_valid() {
        let s = Sense::new(sense_key::MEDIUM_ERROR, asc::UNRECOVERED_READ_ERROR)
            .with_information(1 << 40)
            .encode(false);
        assert_eq!(&s[..7], &[0x70, 0, 0x03, 0, 0, 0, 0]);
    }

    #[test]
    fn descriptor_without_extras_is_eight_bytes() {
        let s = Sense::invalid_opcode().encode(true);
        assert_eq!(s, [0x72, 0x05, 0x20, 0x00, 0, 0, 0, 0]);
    }

    #[test]
    fn descriptor_with_information_and_field_pointer() {
        let s = Sense::new(sense_key::MISCOMPARE, asc::MISCOMPARE_DURING_VERIFY)
            .with_information(1 << 40)
            .with_field(FieldPointer::cdb(1, Some(2)))
            .encode(true);
        assert_eq!(
            s,
            [
                0x72, 0x0E, 0x1D, 0x00, 0, 0, 0, 20, // header
                0x00, 0x0A, 0x80, 0, 0, 0, 1, 0, 0, 0, 0, 0, // information
                0x02, 0x06, 0, 0, 0xCA, 0, 1, 0, // sense key specific
            ]
        );
    }
}
