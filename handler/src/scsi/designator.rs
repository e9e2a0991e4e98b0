//! The logical unit's own designator in the Device Identification VPD page (SPC-4 §7.8.6):
//! an NAA designator (type 3, §7.8.6.6) or an EUI-64 based one (type 2, §7.8.6.5).
//!
//! The NAA forms are what a configuration or a generated identity gives: NAA 6 (IEEE
//! Registered Extended, 16 bytes, §7.8.6.6.4) and NAA 3 (locally assigned, 8 bytes,
//! §7.8.6.6.3). The EUI-64 forms are what an NVMe namespace gives: the NVM Express SCSI
//! Translation Reference (1.5, §6.1.4.4) maps a non-zero NGUID to a 16-byte EUI-64 based
//! designator and, failing that, a non-zero EUI64 to an 8-byte one. An NGUID is not an NAA 6
//! value (its first nibble is not 6, and forcing it to 6 would claim an IEEE OUI that is not
//! there), so the designator type follows the source instead of everything being called NAA.

use std::fmt;
use std::str::FromStr;

/// The designator VPD 83h reports for the logical unit (association 0, binary code set).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Designator {
    /// NAA 6, IEEE Registered Extended (SPC-4 §7.8.6.6.4): NAA (4 bits) = 6, IEEE company id
    /// (24), vendor specific identifier (36), vendor specific identifier extension (64). The
    /// bytes are the whole designator; the first nibble is 6.
    RegisteredExtended([u8; 16]),
    /// NAA 3, locally assigned (SPC-4 §7.8.6.6.3): NAA (4 bits) = 3, then 60 bits the owner
    /// assigns. Unique only as far as whoever assigned it made it so. The first nibble is 3.
    Local([u8; 8]),
    /// EUI-64 (designator type 2, SPC-4 §7.8.6.5.2): an NVMe namespace's EUI64
    /// (Identify Namespace bytes 127:120).
    Eui64([u8; 8]),
    /// EUI-64 based 16-byte designator (type 2, SPC-4 §7.8.6.5.4): identifier extension (8),
    /// IEEE company id (3), vendor specific extension identifier (5) — the layout of an NVMe
    /// namespace's NGUID (Identify Namespace bytes 119:104), copied as is.
    Eui64Extended([u8; 16]),
}

/// Designator type codes (SPC-4 table 460).
const TYPE_EUI64: u8 = 0x2;
const TYPE_NAA: u8 = 0x3;
/// Code set 1: binary (SPC-4 table 456).
const CODE_SET_BINARY: u8 = 0x1;

/// A designator string that is none of the accepted forms.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{text:?} is not a designator: give 32 hex digits starting with 6 (NAA 6, IEEE Registered \
     Extended), 16 hex digits starting with 3 (NAA 3, locally assigned), or eui.<16 or 32 hex \
     digits> (EUI-64)"
)]
pub struct DesignatorParseError {
    /// What was given.
    pub text: String,
}

impl Designator {
    /// NAA 6 from its fields: `oui` (low 24 bits), `vendor_id` (low 36 bits), `extension`.
    pub fn registered_extended(oui: u32, vendor_id: u64, extension: u64) -> Self {
        let high = (6u64 << 60) | (u64::from(oui & 0x00FF_FFFF) << 36) | (vendor_id & 0xF_FFFF_FFFF);
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&high.to_be_bytes());
        b[8..].copy_from_slice(&extension.to_be_bytes());
        Self::RegisteredExtended(b)
    }

    /// NAA 3 from 60 bits (the high 4 of `value` are replaced by the NAA field).
    pub fn local(value: u64) -> Self {
        let v = (3u64 << 60) | (value & 0x0FFF_FFFF_FFFF_FFFF);
        Self::Local(v.to_be_bytes())
    }

    /// The designator field's bytes.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Self::RegisteredExtended(b) | Self::Eui64Extended(b) => b,
            Self::Local(b) | Self::Eui64(b) => b,
        }
    }

    /// The DESIGNATOR TYPE field (SPC-4 table 460): 3 for NAA, 2 for EUI-64 based.
    pub fn designator_type(&self) -> u8 {
        match self {
            Self::RegisteredExtended(_) | Self::Local(_) => TYPE_NAA,
            Self::Eui64(_) | Self::Eui64Extended(_) => TYPE_EUI64,
        }
    }

    /// The whole designation descriptor (SPC-4 §7.8.6.1, table 455): byte 0 PROTOCOL
    /// IDENTIFIER 0 | CODE SET 1 (binary); byte 1 PIV 0 | ASSOCIATION 0 (logical unit) |
    /// DESIGNATOR TYPE; byte 2 reserved; byte 3 DESIGNATOR LENGTH; then the designator.
    pub fn descriptor(&self) -> Vec<u8> {
        let bytes = self.bytes();
        let mut d = vec![CODE_SET_BINARY, self.designator_type(), 0, bytes.len() as u8];
        d.extend_from_slice(bytes);
        d
    }
}

impl Default for Designator {
    /// NAA 6 with [`super::NAA_OUI`] and zero identifiers: what a disk reports when nobody gave it
    /// an identity (tests, the engine's defaults). Never unique: real disks get one resolved.
    fn default() -> Self {
        Self::registered_extended(super::NAA_OUI, 0, 0)
    }
}

fn hex(bytes: &[u8], f: &mut fmt::Formatter<'_>) -> fmt::Result {
    bytes.iter().try_for_each(|b| write!(f, "{b:02x}"))
}

impl fmt::Display for Designator {
    /// NAA forms as bare hex (as the configuration takes them); EUI-64 forms as `eui.` + hex,
    /// the notation NVMe and Linux use for them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.designator_type() == TYPE_EUI64 {
            f.write_str("eui.")?;
        }
        hex(self.bytes(), f)
    }
}

fn parse_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N || !text.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

impl FromStr for Designator {
    type Err = DesignatorParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = || DesignatorParseError {
            text: text.to_owned(),
        };
        let t = text.trim();
        if let Some(eui) = t.strip_prefix("eui.").or_else(|| t.strip_prefix("EUI.")) {
            return parse_hex::<8>(eui)
                .map(Self::Eui64)
                .or_else(|| parse_hex::<16>(eui).map(Self::Eui64Extended))
                .ok_or_else(err);
        }
        let t = t.strip_prefix("naa.").unwrap_or(t);
        match (t.len(), t.as_bytes().first()) {
            (32, Some(b'6')) => parse_hex::<16>(t).map(Self::RegisteredExtended),
            (16, Some(b'3')) => parse_hex::<8>(t).map(Self::Local),
            _ => None,
        }
        .ok_or_else(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn naa6_descriptor_bytes() {
        let d = Designator::registered_extended(0x001405, 0xA_BCDE_F012, 0x0123_4567_89AB_CDEF);
        assert_eq!(
            d.descriptor(),
            [
                0x01, 0x03, 0x00, 16, // binary; PIV 0, LU, NAA; length 16
                0x60, 0x01, 0x40, 0x5A, 0xBC, 0xDE, 0xF0, 0x12, // NAA 6 | OUI | vendor id
                0x01, 0x23, 0x45, 0x67, 0x89, 0xAB, 0xCD, 0xEF, // extension
            ]
        );
        assert_eq!(d.to_string(), "6001405abcdef0120123456789abcdef");
    }

    #[test]
    fn naa3_descriptor_bytes() {
        let d = Designator::local(0xFFFF_0000_1111_2222);
        assert_eq!(
            d.descriptor(),
            [0x01, 0x03, 0x00, 8, 0x3F, 0xFF, 0x00, 0x00, 0x11, 0x11, 0x22, 0x22]
        );
        assert_eq!(d.to_string(), "3fff000011112222");
    }

    #[test]
    fn eui64_descriptor_bytes() {
        let e = Designator::Eui64([1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(e.descriptor(), [0x01, 0x02, 0x00, 8, 1, 2, 3, 4, 5, 6, 7, 8]);
        let g = Designator::Eui64Extended([0xAA; 16]);
        let d = g.descriptor();
        assert_eq!(&d[..4], &[0x01, 0x02, 0x00, 16]);
        assert_eq!(&d[4..], &[0xAA; 16]);
        assert_eq!(e.to_string(), "eui.0102030405060708");
    }

    #[test]
    fn parse_round_trips_and_refuses_wrong_nibbles() {
        for text in [
            "6001405abcdef0120123456789abcdef",
            "3fff000011112222",
            "eui.0102030405060708",
            "eui.aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        ] {
            let d: Designator = text.parse().unwrap();
            assert_eq!(d.to_string(), text);
        }
        assert_eq!(
            "6001405ABCDEF0120123456789ABCDEF"
                .parse::<Designator>()
                .unwrap()
                .to_string(),
            "6001405abcdef0120123456789abcdef"
        );
        for bad in [
            "",
            "5001405abcdef012",                 // NAA 5 is not accepted
            "3001405abcdef0120123456789abcdef", // 32 digits must be NAA 6
            "6fff000011112222",                 // 16 digits must be NAA 3
            "3fff00001111222g",
            "eui.01020304",
        ] {
            assert!(bad.parse::<Designator>().is_err(), "{bad}");
        }
    }
}
