//! OBIS codes (IEC 62056-6-1): the six value groups A..F that name every COSEM object.
//!
//! Written as `a.b.c.d.e.f` (the form our JSON and tables use); the conventional
//! `A-B:C.D.E*F` and `A-B:C.D.E.F` forms are accepted on input. Packed big-endian into
//! a `u64` (`0x0000_AABB_CCDD_EEFF`) for ClickHouse, where integers sort and compress
//! better than strings.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A six-byte OBIS code.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ObisCode(pub [u8; 6]);

impl ObisCode {
    pub const fn new(a: u8, b: u8, c: u8, d: u8, e: u8, f: u8) -> Self {
        ObisCode([a, b, c, d, e, f])
    }

    /// The code packed into the low 48 bits of a u64, A in the most significant byte.
    pub fn to_u64(self) -> u64 {
        self.0.iter().fold(0u64, |acc, &b| (acc << 8) | b as u64)
    }

    /// The inverse of [`ObisCode::to_u64`]; None when bits above 48 are set.
    pub fn from_u64(v: u64) -> Option<Self> {
        if v >> 48 != 0 {
            return None;
        }
        let b = v.to_be_bytes();
        Some(ObisCode([b[2], b[3], b[4], b[5], b[6], b[7]]))
    }

    pub fn as_bytes(&self) -> &[u8; 6] {
        &self.0
    }
}

impl fmt::Display for ObisCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a}.{b}.{c}.{d}.{e}.{g}")
    }
}

impl fmt::Debug for ObisCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObisCode({self})")
    }
}

/// Why a string is not an OBIS code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObisParseError(pub String);

impl fmt::Display for ObisParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid OBIS code {:?}: expected six values 0-255 as a.b.c.d.e.f or A-B:C.D.E*F", self.0)
    }
}

impl std::error::Error for ObisParseError {}

impl FromStr for ObisCode {
    type Err = ObisParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ObisParseError(s.to_string());
        let parts: Vec<&str> = s.trim().split(['.', '-', ':', '*']).collect();
        if parts.len() != 6 {
            return Err(err());
        }
        let mut out = [0u8; 6];
        for (slot, part) in out.iter_mut().zip(&parts) {
            if part.is_empty() || part.len() > 3 || !part.bytes().all(|c| c.is_ascii_digit()) {
                return Err(err());
            }
            *slot = part.parse::<u8>().map_err(|_| err())?;
        }
        Ok(ObisCode(out))
    }
}

impl Serialize for ObisCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ObisCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_notations() {
        let want = ObisCode::new(1, 0, 1, 8, 0, 255);
        assert_eq!("1.0.1.8.0.255".parse::<ObisCode>().unwrap(), want);
        assert_eq!("1-0:1.8.0*255".parse::<ObisCode>().unwrap(), want);
        assert_eq!("1-0:1.8.0.255".parse::<ObisCode>().unwrap(), want);
        assert_eq!(want.to_string(), "1.0.1.8.0.255");
    }

    #[test]
    fn rejects_malformed() {
        for bad in ["", "1.0.1.8.0", "1.0.1.8.0.256", "1.0.1.8.0.x", "1..1.8.0.255", "1.0.1.8.0.255.1"] {
            assert!(bad.parse::<ObisCode>().is_err(), "{bad}");
        }
    }

    #[test]
    fn packs_into_u64() {
        let c = ObisCode::new(1, 0, 1, 8, 0, 255);
        assert_eq!(c.to_u64(), 0x0100_0108_00FF);
        assert_eq!(ObisCode::from_u64(c.to_u64()), Some(c));
        assert_eq!(ObisCode::from_u64(1 << 50), None);
    }
}
