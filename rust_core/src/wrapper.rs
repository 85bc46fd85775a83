//! The TCP-UDP/IP wrapper (IEC 62056-47, Green Book 7.3.3.3).
//!
//! ```text
//! +---------+----------------+---------------------+--------+---------------+
//! | version | source wPort   | destination wPort   | length | APDU (length) |
//! | 0x0001  | u16            | u16                 | u16    |               |
//! +---------+----------------+---------------------+--------+---------------+
//! ```
//! wPorts name application processes: 0x0001 is the management logical device, 0x0010
//! the public client, 0x0066 a pre-established push; a concentrator uses them to put
//! several meters on one connection.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::reader::Reader;

pub const VERSION: u16 = 0x0001;
pub const HEADER_LEN: usize = 8;

/// A wrapper header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrapperHeader {
    pub version: u16,
    pub source_wport: u16,
    pub destination_wport: u16,
    pub length: u16,
}

impl WrapperHeader {
    /// Parses a header from the first 8 bytes of `buf` (Incomplete if fewer).
    pub fn parse(buf: &[u8]) -> Result<WrapperHeader> {
        // Check the version as soon as two bytes are in, so garbage is rejected early
        // instead of waiting for a full header that may never come.
        if buf.len() >= 2 {
            let version = u16::from_be_bytes([buf[0], buf[1]]);
            if version != VERSION {
                return Err(Error::invalid(
                    "wrapper header",
                    0,
                    format!("version {version:#06x} (only 0x0001 is defined)"),
                ));
            }
        }
        if buf.len() < HEADER_LEN {
            return Err(Error::Incomplete { what: "wrapper header", needed: HEADER_LEN - buf.len() });
        }
        let mut r = Reader::new(&buf[..HEADER_LEN]);
        Ok(WrapperHeader {
            version: r.u16("wrapper version")?,
            source_wport: r.u16("wrapper source wPort")?,
            destination_wport: r.u16("wrapper destination wPort")?,
            length: r.u16("wrapper length")?,
        })
    }
}

/// Parses one complete wrapper frame from the start of `buf`: the header, the APDU
/// slice, and the number of bytes consumed. `max_apdu` caps the length field.
pub fn parse_frame(buf: &[u8], max_apdu: usize) -> Result<(WrapperHeader, &[u8], usize)> {
    let h = WrapperHeader::parse(buf)?;
    let len = h.length as usize;
    if len > max_apdu {
        return Err(Error::TooLong { what: "wrapper frame", offset: 6, len, limit: max_apdu });
    }
    if len == 0 {
        return Err(Error::invalid("wrapper frame", 6, "length 0: a wrapper frame carries an APDU"));
    }
    let total = HEADER_LEN + len;
    if buf.len() < total {
        return Err(Error::Incomplete { what: "wrapper frame", needed: total - buf.len() });
    }
    Ok((h, &buf[HEADER_LEN..total], total))
}

/// Wraps `apdu` for sending.
pub fn encode(source_wport: u16, destination_wport: u16, apdu: &[u8]) -> Result<Vec<u8>> {
    let len = u16::try_from(apdu.len())
        .map_err(|_| Error::encode("wrapper frame", format!("APDU of {} bytes exceeds 65535", apdu.len())))?;
    let mut out = Vec::with_capacity(HEADER_LEN + apdu.len());
    out.extend_from_slice(&VERSION.to_be_bytes());
    out.extend_from_slice(&source_wport.to_be_bytes());
    out.extend_from_slice(&destination_wport.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(apdu);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let f = encode(0x10, 0x01, &[0xC0, 0x01]).unwrap();
        assert_eq!(f, [0, 1, 0, 0x10, 0, 1, 0, 2, 0xC0, 0x01]);
        let (h, apdu, used) = parse_frame(&f, 1024).unwrap();
        assert_eq!((h.source_wport, h.destination_wport, h.length), (0x10, 1, 2));
        assert_eq!(apdu, [0xC0, 0x01]);
        assert_eq!(used, 10);
    }

    #[test]
    fn errors() {
        assert!(matches!(parse_frame(&[0, 2, 0, 1, 0, 1, 0, 1, 0], 10), Err(Error::Invalid { .. })));
        assert_eq!(
            parse_frame(&[0, 1, 0, 1, 0, 1, 0, 3, 0xC0], 10),
            Err(Error::Incomplete { what: "wrapper frame", needed: 2 })
        );
        assert!(matches!(parse_frame(&[0, 1, 0, 1, 0, 1, 0x10, 0], 100), Err(Error::TooLong { .. })));
        assert!(matches!(parse_frame(&[0, 1], 100), Err(Error::Incomplete { needed: 6, .. })));
        assert!(matches!(parse_frame(&[0x7E, 0xA0], 100), Err(Error::Invalid { .. })));
        assert!(encode(1, 1, &vec![0; 70_000]).is_err());
    }
}
