//! Sense data the SCST core injects itself (spec §2.6 "Sense triples the kernel injects"),
//! in fixed or descriptor format depending on the device's `d_sense` option.

/// A sense key / ASC / ASCQ triple.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SenseCode {
    pub key: u8,
    pub asc: u8,
    pub ascq: u8,
}

const fn code(key: u8, asc: u8, ascq: u8) -> SenseCode {
    SenseCode { key, asc, ascq }
}

/// HARDWARE ERROR 04/44/00: the handler's reply was invalid.
pub(crate) const HARDWARE_ERROR: SenseCode = code(0x04, 0x44, 0x00);
/// ABORTED COMMAND 0B/44/00: internal failure (fault copying sense or pages, bad EXEC reply).
pub(crate) const INTERNAL_FAILURE: SenseCode = code(0x0b, 0x44, 0x00);
/// ILLEGAL REQUEST 05/25/00 LOGICAL UNIT NOT SUPPORTED: sent-unreplied command unjammed.
pub(crate) const LUN_NOT_SUPPORTED: SenseCode = code(0x05, 0x25, 0x00);
/// ILLEGAL REQUEST 05/20/00 INVALID COMMAND OPERATION CODE.
pub(crate) const INVALID_OPCODE: SenseCode = code(0x05, 0x20, 0x00);
/// ILLEGAL REQUEST 05/49/00 INVALID MESSAGE ERROR: the parsed data direction is not the
/// initiator's (`scst_sense_invalid_message`, scst_targ.c:1187).
pub(crate) const INVALID_MESSAGE: SenseCode = code(0x05, 0x49, 0x00);
/// UNIT ATTENTION 06/2A/09 CAPACITY DATA HAS CHANGED.
pub(crate) const CAPACITY_CHANGED: SenseCode = code(0x06, 0x2a, 0x09);
/// DATA PROTECT 07/27/00 WRITE PROTECTED.
pub(crate) const WRITE_PROTECTED: SenseCode = code(0x07, 0x27, 0x00);

/// Build sense bytes: 18-byte fixed format (0x70) or 8-byte descriptor format (0x72).
pub(crate) fn build(d_sense: bool, c: SenseCode) -> Vec<u8> {
    if d_sense {
        vec![0x72, c.key, c.asc, c.ascq, 0, 0, 0, 0]
    } else {
        let mut s = vec![0u8; crate::abi::SCST_STANDARD_SENSE_LEN];
        s[0] = 0x70;
        s[2] = c.key;
        s[7] = 10;
        s[12] = c.asc;
        s[13] = c.ascq;
        s
    }
}

/// Key/ASC/ASCQ of fixed or descriptor sense bytes, if well formed.
pub fn decode(sense: &[u8]) -> Option<(u8, u8, u8)> {
    match sense.first()? & 0x7f {
        0x70 | 0x71 if sense.len() >= 14 => Some((sense[2] & 0x0f, sense[12], sense[13])),
        0x72 | 0x73 if sense.len() >= 4 => Some((sense[1] & 0x0f, sense[2], sense[3])),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_and_descriptor_formats_decode_to_the_same_triple() {
        for d in [false, true] {
            assert_eq!(decode(&build(d, LUN_NOT_SUPPORTED)), Some((0x05, 0x25, 0x00)));
        }
        assert_eq!(build(false, HARDWARE_ERROR).len(), 18);
    }
}
