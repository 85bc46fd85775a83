//! The simulated meter's firmware: the Image Transfer object (class 18, 0.0.44.0.0.255,
//! Green Book 4.4.6) and the active firmware identifier (class 1, 1.0.0.2.0.255).
//!
//! ```text
//! attributes  2 image_block_size   3 image_transferred_blocks_status (bit-string)
//!             4 image_first_not_transferred_block_number   5 image_transfer_enabled
//!             6 image_transfer_status (0 not initiated, 1 initiated, 3 verification
//!               successful, 4 verification failed, 6 activation successful)
//!             7 image_to_activate_info: array of {size, identification, signature}
//! methods     1 initiate {identifier, size}   2 block {number, value}
//!             3 verify   4 activate
//! ```
//! A transfer initiated again with the same identifier and size keeps the blocks it
//! has (the head-end resumes instead of starting over). The meter verifies an image
//! the way real ones check a vendor signature: a simulated image ends with 8 bytes,
//! the FNV-1a-64 of everything before them (`loadtest/firmware.py` makes such images);
//! a transfer altered on the way fails verification.

use headend_core::apdu::{ActionResult, DataAccessResult};
use headend_core::axdr::{BitString, Data};
use headend_core::obis::ObisCode;

pub const IMAGE_TRANSFER: ObisCode = ObisCode([0, 0, 44, 0, 0, 255]);
pub const ACTIVE_FIRMWARE: ObisCode = ObisCode([1, 0, 0, 2, 0, 255]);
/// Bytes per block (fits an ACTION request in the meter's 1,024-byte PDU with room).
pub const BLOCK_SIZE: u32 = 192;
/// The largest image the simulated meter takes.
pub const MAX_IMAGE: u32 = 4 << 20;

/// FNV-1a, 64 bits: the simulated images' check value.
pub fn fnv64(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3))
}

/// How this meter's firmware misbehaves (from the simulator's options).
#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    /// Every image fails verification here.
    pub fail_verify: bool,
    /// Once, halfway through a transfer, a block goes unanswered (the link is lost).
    pub drop_once: bool,
}

struct Transfer {
    identifier: Vec<u8>,
    size: u32,
    data: Vec<u8>,
    have: Vec<bool>,
}

impl Transfer {
    fn blocks(&self) -> u32 {
        self.size.div_ceil(BLOCK_SIZE)
    }

    fn complete(&self) -> bool {
        self.have.iter().all(|&h| h)
    }
}

/// The firmware of one simulated meter.
pub struct Firmware {
    pub active: Vec<u8>,
    status: u8,
    transfer: Option<Transfer>,
    dropped: bool,
}

/// What an ACTION on the Image Transfer object gives: a result, or silence (a lost link).
pub enum Outcome {
    Result(ActionResult),
    Silent,
}

impl Firmware {
    /// Firmware whose identifier is not known yet (the meter fills in its model's).
    pub fn unset() -> Firmware {
        Firmware { active: Vec::new(), status: 0, transfer: None, dropped: false }
    }

    pub fn new(model: &str) -> Firmware {
        Firmware { active: format!("{model}-1.0.0").into_bytes(), status: 0, transfer: None, dropped: false }
    }

    pub fn get(&self, attribute: i8) -> Result<Data, DataAccessResult> {
        let t = self.transfer.as_ref();
        Ok(match attribute {
            2 => Data::DoubleLongUnsigned(BLOCK_SIZE),
            3 => {
                let have = t.map(|t| t.have.clone()).unwrap_or_default();
                let mut bytes = vec![0u8; have.len().div_ceil(8)];
                for (i, _) in have.iter().enumerate().filter(|(_, &h)| h) {
                    bytes[i / 8] |= 0x80 >> (i % 8);
                }
                Data::BitString(BitString { bits: have.len(), bytes })
            }
            4 => Data::DoubleLongUnsigned(
                t.map_or(0, |t| t.have.iter().position(|&h| !h).unwrap_or(t.have.len()) as u32),
            ),
            5 => Data::Boolean(true),
            6 => Data::Enum(self.status),
            7 => Data::Array(match t {
                Some(t) if self.status == 3 => vec![Data::Structure(vec![
                    Data::DoubleLongUnsigned(t.size),
                    Data::OctetString(t.identifier.clone()),
                    Data::OctetString(fnv64(&t.data).to_be_bytes().to_vec()),
                ])],
                _ => Vec::new(),
            }),
            _ => return Err(DataAccessResult(4)),
        })
    }

    pub fn action(&mut self, method: i8, p: Option<&Data>, faults: Faults) -> Outcome {
        let bad = Outcome::Result(ActionResult(12)); // type-unmatched
        let denied = Outcome::Result(ActionResult(3)); // read-write-denied
        match (method, p) {
            (1, Some(Data::Structure(f))) => {
                let (Some(Data::OctetString(id)), Some(Data::DoubleLongUnsigned(size))) = (f.first(), f.get(1)) else {
                    return bad;
                };
                if *size == 0 || *size > MAX_IMAGE || id.is_empty() || id.len() > 48 {
                    return Outcome::Result(ActionResult(250));
                }
                // The same image again while it is under way (or verified): resumed.
                let same = self.transfer.as_ref().is_some_and(|t| &t.identifier == id && t.size == *size);
                if !(same && matches!(self.status, 1 | 3)) {
                    self.transfer = Some(Transfer {
                        identifier: id.clone(),
                        size: *size,
                        data: vec![0u8; *size as usize],
                        have: vec![false; size.div_ceil(BLOCK_SIZE) as usize],
                    });
                }
                self.status = 1;
                Outcome::Result(ActionResult(0))
            }
            (2, Some(Data::Structure(f))) => {
                let (Some(Data::DoubleLongUnsigned(n)), Some(Data::OctetString(value))) = (f.first(), f.get(1)) else {
                    return bad;
                };
                let Some(t) = self.transfer.as_mut().filter(|_| self.status == 1) else { return denied };
                if *n >= t.blocks() {
                    return Outcome::Result(ActionResult(250));
                }
                let start = (*n * BLOCK_SIZE) as usize;
                let len = (t.size as usize - start).min(BLOCK_SIZE as usize);
                if value.len() != len {
                    return bad;
                }
                let received = t.have.iter().filter(|&&h| h).count();
                if faults.drop_once && !self.dropped && received * 2 >= t.have.len() {
                    self.dropped = true;
                    return Outcome::Silent;
                }
                t.data[start..start + len].copy_from_slice(value);
                t.have[*n as usize] = true;
                Outcome::Result(ActionResult(0))
            }
            (3, _) => {
                let Some(t) = self.transfer.as_ref().filter(|_| matches!(self.status, 1 | 3 | 4)) else {
                    return denied;
                };
                if !t.complete() {
                    return Outcome::Result(ActionResult(250));
                }
                let signed = t.data.len() > 8 && {
                    let (body, tail) = t.data.split_at(t.data.len() - 8);
                    fnv64(body).to_be_bytes() == tail
                };
                if signed && !faults.fail_verify {
                    self.status = 3;
                    Outcome::Result(ActionResult(0))
                } else {
                    self.status = 4;
                    Outcome::Result(ActionResult(250))
                }
            }
            (4, _) => {
                if self.status != 3 {
                    return denied;
                }
                let t = self.transfer.take().expect("verified transfer");
                self.active = t.identifier;
                self.status = 6;
                Outcome::Result(ActionResult(0))
            }
            _ => bad,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(n: usize) -> Vec<u8> {
        let mut v: Vec<u8> = (0..n).map(|i| (i * 7) as u8).collect();
        let h = fnv64(&v);
        v.extend_from_slice(&h.to_be_bytes());
        v
    }

    fn send(fw: &mut Firmware, image: &[u8], id: &[u8], faults: Faults) -> Vec<u32> {
        let init = Data::Structure(vec![Data::OctetString(id.to_vec()), Data::DoubleLongUnsigned(image.len() as u32)]);
        assert!(matches!(fw.action(1, Some(&init), faults), Outcome::Result(ActionResult(0))));
        let mut silent = Vec::new();
        for (i, chunk) in image.chunks(BLOCK_SIZE as usize).enumerate() {
            let p = Data::Structure(vec![Data::DoubleLongUnsigned(i as u32), Data::OctetString(chunk.to_vec())]);
            if let Outcome::Silent = fw.action(2, Some(&p), faults) {
                silent.push(i as u32);
            }
        }
        silent
    }

    #[test]
    fn transfer_resume_verify_and_activate() {
        let image = signed(1000);
        let mut fw = Firmware::new("e3ph");
        let faults = Faults { fail_verify: false, drop_once: true };
        let lost = send(&mut fw, &image, b"e3ph-2.0.0", faults);
        assert_eq!(lost.len(), 1);
        assert!(matches!(fw.action(3, None, faults), Outcome::Result(ActionResult(250))));
        // Initiated again with the same image: the blocks it has stay; only the lost
        // one is needed.
        let init = Data::Structure(vec![Data::OctetString(b"e3ph-2.0.0".to_vec()), Data::DoubleLongUnsigned(1008)]);
        assert!(matches!(fw.action(1, Some(&init), faults), Outcome::Result(ActionResult(0))));
        let Ok(Data::DoubleLongUnsigned(first)) = fw.get(4) else { panic!() };
        assert_eq!(first, lost[0]);
        let i = lost[0] as usize * BLOCK_SIZE as usize;
        let chunk = image[i..(i + BLOCK_SIZE as usize).min(image.len())].to_vec();
        let p = Data::Structure(vec![Data::DoubleLongUnsigned(lost[0]), Data::OctetString(chunk)]);
        assert!(matches!(fw.action(2, Some(&p), faults), Outcome::Result(ActionResult(0))));
        assert!(matches!(fw.action(3, None, faults), Outcome::Result(ActionResult(0))));
        assert!(matches!(fw.get(7), Ok(Data::Array(a)) if a.len() == 1));
        assert!(matches!(fw.action(4, None, faults), Outcome::Result(ActionResult(0))));
        assert_eq!(fw.active, b"e3ph-2.0.0");
    }

    #[test]
    fn a_corrupted_or_unsigned_image_fails_verification_and_cannot_activate() {
        let mut image = signed(500);
        image[3] ^= 1;
        let mut fw = Firmware::new("e1ph");
        send(&mut fw, &image, b"x", Faults::default());
        assert!(matches!(fw.action(3, None, Faults::default()), Outcome::Result(ActionResult(250))));
        assert!(matches!(fw.action(4, None, Faults::default()), Outcome::Result(ActionResult(3))));
        assert_eq!(fw.active, b"e1ph-1.0.0");
        let mut fw = Firmware::new("e1ph");
        let faults = Faults { fail_verify: true, drop_once: false };
        send(&mut fw, &signed(300), b"y", faults);
        assert!(matches!(fw.action(3, None, faults), Outcome::Result(ActionResult(250))));
    }
}
