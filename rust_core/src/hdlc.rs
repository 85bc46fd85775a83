//! HDLC frame type 3 (IEC 62056-46, Green Book 8.4).
//!
//! ```text
//! 7E | format(2) | dest addr (1,2,4) | src addr (1,2,4) | control | HCS(2) | information | FCS(2) | 7E
//!      1010 S LLLLLLLLLLL: type 3, segmentation bit, length of format..FCS (11 bits)
//! ```
//! HCS covers format..control, FCS covers format..information; both CRC-16/X.25,
//! least significant byte first. A frame without information has only the FCS. Address
//! bytes carry 7 bits each, the last one with its low bit set. The information field
//! of a frame carrying an xDLMS APDU starts with the LLC header E6 E6 00 (command) or
//! E6 E7 00 (response), in the first segment only.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub const FLAG: u8 = 0x7E;
/// Largest value of the 11-bit frame length field.
pub const MAX_FRAME_LEN: usize = 0x7FF;
pub const LLC_COMMAND: [u8; 3] = [0xE6, 0xE6, 0x00];
pub const LLC_RESPONSE: [u8; 3] = [0xE6, 0xE7, 0x00];

/// CRC-16/X.25 (reflected polynomial 0x1021, init and final XOR 0xFFFF).
pub fn crc16(data: &[u8]) -> u16 {
    let mut crc = 0xFFFFu16;
    for &b in data {
        crc = (crc >> 8) ^ CRC_TABLE[((crc ^ b as u16) & 0xFF) as usize];
    }
    !crc
}

static CRC_TABLE: [u16; 256] = {
    let mut t = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u16;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ 0x8408 } else { c >> 1 };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

/// An HDLC address: upper (logical device) and, for 2- and 4-byte server addresses,
/// lower (physical device). Client addresses are one byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Address {
    pub upper: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lower: Option<u16>,
    /// Encoded size in bytes: 1, 2 or 4.
    pub size: u8,
}

impl Address {
    /// A one-byte address (clients; servers addressed by logical device only).
    pub fn one(upper: u8) -> Self {
        Address { upper: upper as u16, lower: None, size: 1 }
    }

    /// A server address with upper and lower parts, two bytes if both fit in 7 bits,
    /// else four.
    pub fn server(upper: u16, lower: u16) -> Self {
        let size = if upper <= 0x7F && lower <= 0x7F { 2 } else { 4 };
        Address { upper, lower: Some(lower), size }
    }

    /// Appends the encoded address.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        let (limit, parts, n) = match (self.size, self.lower) {
            (1, None) => (0x7F, [self.upper, 0], 1),
            (2, Some(l)) => (0x7F, [self.upper, l], 2),
            (4, Some(l)) => (0x3FFF, [self.upper, l], 2),
            _ => {
                return Err(Error::encode(
                    "HDLC address",
                    format!("size {} with lower {:?} (1 byte without lower, 2 or 4 with)", self.size, self.lower),
                ))
            }
        };
        let start = out.len();
        for &p in &parts[..n] {
            if p > limit {
                out.truncate(start);
                return Err(Error::encode(
                    "HDLC address",
                    format!("{p} exceeds {limit} for a {}-byte address", self.size),
                ));
            }
            if self.size == 4 {
                out.push(((p >> 7) as u8) << 1);
            }
            out.push(((p & 0x7F) as u8) << 1);
        }
        if let Some(last) = out.last_mut() {
            *last |= 1;
        }
        Ok(())
    }

    /// Decodes an address at `buf[0..]`, returning it and its size.
    pub fn decode(buf: &[u8], offset: usize) -> Result<(Address, usize)> {
        let mut n = 0;
        loop {
            let Some(&b) = buf.get(n) else {
                return Err(Error::invalid("HDLC address", offset, "address runs past the frame header"));
            };
            n += 1;
            if b & 1 == 1 {
                break;
            }
            if n == 4 {
                return Err(Error::invalid("HDLC address", offset, "address longer than 4 bytes"));
            }
        }
        let v = |i: usize| (buf[i] >> 1) as u16;
        let a = match n {
            1 => Address::one(v(0) as u8),
            2 => Address { upper: v(0), lower: Some(v(1)), size: 2 },
            4 => Address { upper: v(0) << 7 | v(1), lower: Some(v(2) << 7 | v(3)), size: 4 },
            _ => return Err(Error::invalid("HDLC address", offset, "3-byte addresses are not allowed")),
        };
        Ok((a, n))
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.lower {
            None => write!(f, "{}", self.upper),
            Some(l) => write!(f, "{}/{}", self.upper, l),
        }
    }
}

/// The control field (Green Book 8.4.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum Control {
    /// Information frame: N(S), N(R), poll/final.
    I { send_seq: u8, recv_seq: u8, poll_final: bool },
    /// Receive ready.
    RR { recv_seq: u8, poll_final: bool },
    /// Receive not ready.
    RNR { recv_seq: u8, poll_final: bool },
    /// Set normal response mode.
    SNRM { poll_final: bool },
    /// Disconnect.
    DISC { poll_final: bool },
    /// Unnumbered acknowledge.
    UA { poll_final: bool },
    /// Disconnected mode.
    DM { poll_final: bool },
    /// Frame reject.
    FRMR { poll_final: bool },
    /// Unnumbered information.
    UI { poll_final: bool },
}

const PF: u8 = 0x10;

impl Control {
    pub fn to_byte(self) -> u8 {
        let pf = |p: bool| if p { PF } else { 0 };
        match self {
            Control::I { send_seq, recv_seq, poll_final } => (recv_seq & 7) << 5 | pf(poll_final) | (send_seq & 7) << 1,
            Control::RR { recv_seq, poll_final } => (recv_seq & 7) << 5 | pf(poll_final) | 0x01,
            Control::RNR { recv_seq, poll_final } => (recv_seq & 7) << 5 | pf(poll_final) | 0x05,
            Control::SNRM { poll_final } => 0x83 | pf(poll_final),
            Control::DISC { poll_final } => 0x43 | pf(poll_final),
            Control::UA { poll_final } => 0x63 | pf(poll_final),
            Control::DM { poll_final } => 0x0F | pf(poll_final),
            Control::FRMR { poll_final } => 0x87 | pf(poll_final),
            Control::UI { poll_final } => 0x03 | pf(poll_final),
        }
    }

    pub fn from_byte(b: u8) -> Option<Control> {
        let poll_final = b & PF != 0;
        let recv_seq = b >> 5;
        if b & 1 == 0 {
            return Some(Control::I { send_seq: (b >> 1) & 7, recv_seq, poll_final });
        }
        match b & 0x0F {
            0x01 => return Some(Control::RR { recv_seq, poll_final }),
            0x05 => return Some(Control::RNR { recv_seq, poll_final }),
            _ => {}
        }
        Some(match b & !PF {
            0x83 => Control::SNRM { poll_final },
            0x43 => Control::DISC { poll_final },
            0x63 => Control::UA { poll_final },
            0x0F => Control::DM { poll_final },
            0x87 => Control::FRMR { poll_final },
            0x03 => Control::UI { poll_final },
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Control::I { .. } => "I",
            Control::RR { .. } => "RR",
            Control::RNR { .. } => "RNR",
            Control::SNRM { .. } => "SNRM",
            Control::DISC { .. } => "DISC",
            Control::UA { .. } => "UA",
            Control::DM { .. } => "DM",
            Control::FRMR { .. } => "FRMR",
            Control::UI { .. } => "UI",
        }
    }

    pub fn poll_final(self) -> bool {
        self.to_byte() & PF != 0
    }
}

/// One decoded HDLC frame, borrowing its information field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub segmented: bool,
    pub destination: Address,
    pub source: Address,
    pub control: Control,
    pub info: &'a [u8],
}

/// Parses one frame from `buf`, which must start with the opening flag. Returns the
/// frame and the bytes consumed up to, not including, the closing flag (which may open
/// the next frame).
pub fn parse_frame(buf: &[u8]) -> Result<(Frame<'_>, usize)> {
    if buf.first() != Some(&FLAG) {
        return Err(Error::invalid("HDLC frame", 0, "does not start with the flag 0x7E"));
    }
    if buf.len() < 3 {
        return Err(Error::Incomplete { what: "HDLC frame format", needed: 3 - buf.len() });
    }
    let format = u16::from_be_bytes([buf[1], buf[2]]);
    if format >> 12 != 0xA {
        return Err(Error::invalid(
            "HDLC frame",
            1,
            format!("format type {:X} (only type 3, 0xA, is used)", format >> 12),
        ));
    }
    let segmented = format & 0x0800 != 0;
    let len = (format & 0x07FF) as usize;
    // format(2) + addresses(>=2) + control(1) + FCS(2)
    if len < 7 {
        return Err(Error::invalid("HDLC frame", 1, format!("length {len} is shorter than the smallest frame (7)")));
    }
    let total = len + 2;
    if buf.len() < total {
        return Err(Error::Incomplete { what: "HDLC frame", needed: total - buf.len() });
    }
    if buf[len + 1] != FLAG {
        return Err(Error::invalid(
            "HDLC frame",
            len + 1,
            "closing flag 0x7E missing where the length says the frame ends",
        ));
    }
    let body = &buf[1..=len];
    let (destination, dn) = Address::decode(&body[2..len - 2], 3)?;
    let (source, sn) = Address::decode(&body[2 + dn..len - 2], 3 + dn)?;
    let ci = 2 + dn + sn;
    if ci >= len - 2 {
        return Err(Error::invalid("HDLC frame", ci + 1, "no room for the control field"));
    }
    let control = Control::from_byte(body[ci]).ok_or_else(|| {
        Error::invalid("HDLC control field", ci + 1, format!("unknown control byte {:#04x}", body[ci]))
    })?;
    let header_len = ci + 1;
    let fcs = u16::from_le_bytes([body[len - 2], body[len - 1]]);
    if crc16(&body[..len - 2]) != fcs {
        return Err(Error::invalid("HDLC frame", len - 1, "FCS does not match the frame contents"));
    }
    let info: &[u8] = if len == header_len + 2 {
        &[]
    } else {
        if len < header_len + 4 {
            return Err(Error::invalid("HDLC frame", header_len + 1, "a frame with information needs an HCS"));
        }
        let hcs = u16::from_le_bytes([body[header_len], body[header_len + 1]]);
        if crc16(&body[..header_len]) != hcs {
            return Err(Error::invalid("HDLC frame", header_len + 1, "HCS does not match the frame header"));
        }
        &body[header_len + 2..len - 2]
    };
    if segmented && !matches!(control, Control::I { .. } | Control::UI { .. }) {
        return Err(Error::invalid("HDLC frame", 1, format!("segmentation bit set on a {} frame", control.name())));
    }
    Ok((Frame { segmented, destination, source, control, info }, len + 1))
}

/// Encodes a frame with both flags. `info` may be empty.
pub fn encode_frame(
    destination: Address,
    source: Address,
    control: Control,
    info: &[u8],
    segmented: bool,
) -> Result<Vec<u8>> {
    let mut header = Vec::with_capacity(16);
    header.extend_from_slice(&[0, 0]);
    destination.encode(&mut header)?;
    source.encode(&mut header)?;
    header.push(control.to_byte());
    let len = if info.is_empty() { header.len() + 2 } else { header.len() + 2 + info.len() + 2 };
    if len > MAX_FRAME_LEN {
        return Err(Error::encode(
            "HDLC frame",
            format!("length {len} exceeds {MAX_FRAME_LEN}; segment the information"),
        ));
    }
    let format = 0xA000u16 | if segmented { 0x0800 } else { 0 } | len as u16;
    header[..2].copy_from_slice(&format.to_be_bytes());
    let mut out = Vec::with_capacity(len + 2);
    out.push(FLAG);
    out.extend_from_slice(&header);
    if !info.is_empty() {
        out.extend_from_slice(&crc16(&header).to_le_bytes());
        out.extend_from_slice(info);
    }
    let fcs = crc16(&out[1..]);
    out.extend_from_slice(&fcs.to_le_bytes());
    out.push(FLAG);
    Ok(out)
}

/// HDLC parameters negotiated in SNRM/UA (Green Book 8.4.5.3.2): format 0x81, group
/// 0x80, then (id, length, value) for max information length and window size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parameters {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_info_transmit: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_info_receive: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_transmit: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_receive: Option<u32>,
}

impl Parameters {
    pub fn decode(info: &[u8]) -> Result<Parameters> {
        let mut p = Parameters::default();
        if info.is_empty() {
            return Ok(p);
        }
        if info.len() < 3 || info[0] != 0x81 || info[1] != 0x80 {
            return Err(Error::invalid("HDLC parameters", 0, "expected format 0x81, group 0x80"));
        }
        let glen = info[2] as usize;
        if 3 + glen != info.len() {
            return Err(Error::invalid(
                "HDLC parameters",
                2,
                format!("group length {glen} does not match the {} bytes present", info.len() - 3),
            ));
        }
        let mut i = 3;
        while i < info.len() {
            if i + 2 > info.len() {
                return Err(Error::invalid("HDLC parameters", i, "truncated parameter"));
            }
            let (id, n) = (info[i], info[i + 1] as usize);
            if n == 0 || n > 4 || i + 2 + n > info.len() {
                return Err(Error::invalid("HDLC parameters", i + 1, format!("parameter length {n}")));
            }
            let v = info[i + 2..i + 2 + n].iter().fold(0u32, |a, &b| a << 8 | b as u32);
            match id {
                0x05 => p.max_info_transmit = Some(v),
                0x06 => p.max_info_receive = Some(v),
                0x07 => p.window_transmit = Some(v),
                0x08 => p.window_receive = Some(v),
                other => return Err(Error::invalid("HDLC parameters", i, format!("unknown parameter {other:#04x}"))),
            }
            i += 2 + n;
        }
        Ok(p)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        let mut put = |id: u8, v: Option<u32>, window: bool| {
            if let Some(v) = v {
                // Windows are sent as 4 bytes by convention; lengths in 1 or 2.
                let bytes = v.to_be_bytes();
                let n = if window {
                    4
                } else if v <= 0xFF {
                    1
                } else if v <= 0xFFFF {
                    2
                } else {
                    4
                };
                body.push(id);
                body.push(n as u8);
                body.extend_from_slice(&bytes[4 - n..]);
            }
        };
        put(0x05, self.max_info_transmit, false);
        put(0x06, self.max_info_receive, false);
        put(0x07, self.window_transmit, true);
        put(0x08, self.window_receive, true);
        if body.is_empty() {
            return body;
        }
        let mut out = vec![0x81, 0x80, body.len() as u8];
        out.extend_from_slice(&body);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_check_value() {
        // CRC-16/X.25 check value (catalogue of CRC algorithms).
        assert_eq!(crc16(b"123456789"), 0x906E);
    }

    #[test]
    fn control_bytes() {
        for b in 0..=255u8 {
            if let Some(c) = Control::from_byte(b) {
                assert_eq!(c.to_byte(), b, "{c:?}");
            }
        }
        assert_eq!(Control::SNRM { poll_final: true }.to_byte(), 0x93);
        assert_eq!(Control::UA { poll_final: true }.to_byte(), 0x73);
        assert_eq!(Control::DISC { poll_final: true }.to_byte(), 0x53);
        assert_eq!(Control::from_byte(0x10), Some(Control::I { send_seq: 0, recv_seq: 0, poll_final: true }));
        assert_eq!(Control::from_byte(0x32), Some(Control::I { send_seq: 1, recv_seq: 1, poll_final: true }));
        assert_eq!(Control::from_byte(0x51), Some(Control::RR { recv_seq: 2, poll_final: true }));
        assert_eq!(Control::from_byte(0x1F), Some(Control::DM { poll_final: true }));
        assert_eq!(Control::from_byte(0xFF), None);
    }

    #[test]
    fn addresses_of_every_size() {
        for a in [
            Address::one(0x10),
            Address::one(0x01),
            Address::server(1, 17),
            Address::server(1, 0x3FFF),
            Address::server(0x1234, 5),
        ] {
            let mut out = Vec::new();
            a.encode(&mut out).unwrap();
            assert_eq!(out.len(), a.size as usize);
            let (b, n) = Address::decode(&out, 0).unwrap();
            assert_eq!((b, n), (a, a.size as usize));
        }
        let mut out = Vec::new();
        Address::server(1, 17).encode(&mut out).unwrap();
        assert_eq!(out, [0x02, 0x23]);
        assert!(Address::server(0x4000, 0).encode(&mut Vec::new()).is_err());
        assert!(Address::decode(&[0, 0, 1], 0).is_err());
    }

    #[test]
    fn snrm_of_a_known_capture() {
        // The SNRM every DLMS client opens with: client 0x10 to server logical device 1,
        // one-byte addresses, no information field.
        let want = [0x7E, 0xA0, 0x07, 0x03, 0x21, 0x93, 0x0F, 0x01, 0x7E];
        let f =
            encode_frame(Address::one(1), Address::one(0x10), Control::SNRM { poll_final: true }, &[], false).unwrap();
        assert_eq!(f, want);
        let (frame, used) = parse_frame(&want).unwrap();
        assert_eq!(used, want.len() - 1);
        assert_eq!(frame.control, Control::SNRM { poll_final: true });
        assert_eq!(frame.destination, Address::one(1));
        assert_eq!(frame.source, Address::one(0x10));
        assert!(frame.info.is_empty());
    }

    #[test]
    fn i_frame_round_trip_and_corruption() {
        let info = [LLC_COMMAND.as_slice(), &[0xC0, 0x01, 0xC1, 0x00, 0x08]].concat();
        let ctl = Control::I { send_seq: 0, recv_seq: 0, poll_final: true };
        let f = encode_frame(Address::server(1, 17), Address::one(0x10), ctl, &info, false).unwrap();
        let (frame, _) = parse_frame(&f).unwrap();
        assert_eq!(frame.info, &info[..]);
        for i in 1..f.len() - 1 {
            let mut bad = f.clone();
            bad[i] ^= 0x01;
            assert!(parse_frame(&bad).is_err(), "flipped byte {i} went unnoticed");
        }
        assert!(matches!(parse_frame(&f[..f.len() - 1]), Err(Error::Incomplete { needed: 1, .. })));
    }

    #[test]
    fn parameters_round_trip() {
        let p = Parameters {
            max_info_transmit: Some(128),
            max_info_receive: Some(1024),
            window_transmit: Some(1),
            window_receive: Some(1),
        };
        let b = p.encode();
        assert_eq!(
            b,
            [
                0x81, 0x80, 0x13, 0x05, 0x01, 0x80, 0x06, 0x02, 0x04, 0x00, 0x07, 0x04, 0, 0, 0, 1, 0x08, 0x04, 0, 0,
                0, 1
            ]
        );
        assert_eq!(Parameters::decode(&b).unwrap(), p);
        assert!(Parameters::decode(&[0x81, 0x80, 0x05, 0x05, 0x01]).is_err());
    }
}
