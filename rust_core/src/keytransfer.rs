//! New keys for a meter: the Security Setup object's `key_transfer` (class 64, method 2,
//! Green Book 4.4.7), with each key wrapped under the meter's master key (KEK) by the
//! AES key wrap of RFC 3394.
//!
//! ```text
//! key_transfer parameter = array of structure {
//!     key_id      enum  (0 global unicast encryption key, 1 global broadcast encryption
//!                        key, 2 authentication key, 3 master key)
//!     key_wrapped octet-string (RFC 3394 under the KEK: 24 bytes for a 16-byte key)
//! }
//! RFC 3394: A = A6A6A6A6A6A6A6A6, R[i] = P[i] (64-bit blocks)
//!   for j in 0..6, i in 1..=n: B = AES(KEK, A | R[i]); A = MSB64(B) ^ (n*j + i); R[i] = LSB64(B)
//!   C = A | R[1..n]; unwrapping runs it backwards and checks A.
//! ```
//! Both sides live here: the head-end builds the parameter, the simulated meter (and the
//! tests' meters) take it apart. Unwrapping checks the integrity value, so a key wrapped
//! under another KEK, or altered on the way, is refused instead of installed.

use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit};
use aes::Aes128;

use crate::axdr::Data;
use crate::error::{Error, Result};

/// The Security Setup object of the current association's security (Green Book 4.4.7).
pub const SECURITY_SETUP: [u8; 6] = [0, 0, 43, 0, 0, 255];
/// The Security Setup interface class and its `key_transfer` method.
pub const CLASS: u16 = 64;
pub const METHOD_KEY_TRANSFER: i8 = 2;

/// `key_id` values of the key_transfer parameter.
pub const GLOBAL_UNICAST_ENCRYPTION: u8 = 0;
pub const GLOBAL_BROADCAST_ENCRYPTION: u8 = 1;
pub const AUTHENTICATION: u8 = 2;
pub const MASTER: u8 = 3;

const IV: u64 = 0xA6A6_A6A6_A6A6_A6A6;

/// RFC 3394 key wrap of `key` (a multiple of 8 bytes, at least 16) under `kek`.
pub fn wrap(kek: &[u8; 16], key: &[u8]) -> Result<Vec<u8>> {
    if key.len() < 16 || key.len() % 8 != 0 {
        return Err(Error::encode("key to wrap", format!("{} bytes; 16, 24, 32... needed", key.len())));
    }
    let aes = Aes128::new(kek.into());
    let n = key.len() / 8;
    let mut a = IV;
    let mut r: Vec<[u8; 8]> = key.chunks_exact(8).map(|c| c.try_into().expect("chunks of 8")).collect();
    for j in 0..6u64 {
        for (i, ri) in r.iter_mut().enumerate() {
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(&a.to_be_bytes());
            b[8..].copy_from_slice(ri);
            aes.encrypt_block((&mut b).into());
            let t = n as u64 * j + i as u64 + 1;
            a = u64::from_be_bytes(b[..8].try_into().expect("8 bytes")) ^ t;
            ri.copy_from_slice(&b[8..]);
        }
    }
    let mut out = Vec::with_capacity(8 * (n + 1));
    out.extend_from_slice(&a.to_be_bytes());
    for ri in &r {
        out.extend_from_slice(ri);
    }
    Ok(out)
}

/// RFC 3394 key unwrap; a wrong KEK or altered bytes fail the integrity check
/// ([`Error::AuthenticationFailed`]).
pub fn unwrap(kek: &[u8; 16], wrapped: &[u8]) -> Result<Vec<u8>> {
    if wrapped.len() < 24 || wrapped.len() % 8 != 0 {
        return Err(Error::invalid(
            "wrapped key",
            0,
            format!("{} bytes; a wrapped key is 24, 32, 40... bytes", wrapped.len()),
        ));
    }
    let aes = Aes128::new(kek.into());
    let n = wrapped.len() / 8 - 1;
    let mut a = u64::from_be_bytes(wrapped[..8].try_into().expect("8 bytes"));
    let mut r: Vec<[u8; 8]> = wrapped[8..].chunks_exact(8).map(|c| c.try_into().expect("chunks of 8")).collect();
    for j in (0..6u64).rev() {
        for i in (0..n).rev() {
            let t = n as u64 * j + i as u64 + 1;
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(&(a ^ t).to_be_bytes());
            b[8..].copy_from_slice(&r[i]);
            aes.decrypt_block((&mut b).into());
            a = u64::from_be_bytes(b[..8].try_into().expect("8 bytes"));
            r[i].copy_from_slice(&b[8..]);
        }
    }
    if a != IV {
        return Err(Error::AuthenticationFailed);
    }
    Ok(r.concat())
}

/// The key_transfer parameter for `keys` ((key_id, key) pairs), each wrapped under `kek`.
pub fn parameter(kek: &[u8; 16], keys: &[(u8, [u8; 16])]) -> Result<Data> {
    let mut items = Vec::with_capacity(keys.len());
    for (id, key) in keys {
        items.push(Data::Structure(vec![Data::Enum(*id), Data::OctetString(wrap(kek, key)?)]));
    }
    Ok(Data::Array(items))
}

/// The keys of a key_transfer parameter, unwrapped with `kek`: what a meter does with it.
/// Every item must be well formed and unwrap, or nothing is returned.
pub fn keys_of(kek: &[u8; 16], parameter: &Data) -> Result<Vec<(u8, [u8; 16])>> {
    let Data::Array(items) = parameter else {
        return Err(Error::invalid("key_transfer parameter", 0, "not an array"));
    };
    if items.is_empty() {
        return Err(Error::invalid("key_transfer parameter", 0, "no keys"));
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let (id, wrapped) = match item {
            Data::Structure(f) if f.len() == 2 => match (&f[0], &f[1]) {
                (Data::Enum(id), Data::OctetString(w)) if *id <= MASTER => (*id, w),
                _ => return Err(Error::invalid("key_transfer item", i, "not {enum 0..3, octet-string}")),
            },
            _ => return Err(Error::invalid("key_transfer item", i, "not a structure of two")),
        };
        let key: [u8; 16] = unwrap(kek, wrapped)?
            .try_into()
            .map_err(|_| Error::unsupported("key_transfer item", i, "only 16-byte keys (suite 0)"))?;
        out.push((id, key));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn rfc3394_section_4_1_known_answer() {
        // RFC 3394 4.1: wrap 128 bits of key data with a 128-bit KEK.
        let kek: [u8; 16] = h("000102030405060708090A0B0C0D0E0F").try_into().unwrap();
        let key = h("00112233445566778899AABBCCDDEEFF");
        let want = h("1FA68B0A8112B447AEF34BD8FB5A7B829D3E862371D2CFE5");
        assert_eq!(wrap(&kek, &key).unwrap(), want);
        assert_eq!(unwrap(&kek, &want).unwrap(), key);
    }

    #[test]
    fn rfc3394_wraps_longer_key_data() {
        // 256 bits of key data under a 128-bit KEK: six rounds over four blocks.
        let kek = [7u8; 16];
        let key = h("00112233445566778899AABBCCDDEEFF000102030405060708090A0B0C0D0E0F");
        let w = wrap(&kek, &key).unwrap();
        assert_eq!(w.len(), 40);
        assert_eq!(unwrap(&kek, &w).unwrap(), key);
    }

    #[test]
    fn wrong_kek_or_altered_bytes_are_refused() {
        let kek = [1u8; 16];
        let mut w = wrap(&kek, &[9u8; 16]).unwrap();
        assert!(matches!(unwrap(&[2u8; 16], &w), Err(Error::AuthenticationFailed)));
        w[10] ^= 1;
        assert!(matches!(unwrap(&kek, &w), Err(Error::AuthenticationFailed)));
        assert!(unwrap(&kek, &w[..16]).is_err());
        assert!(wrap(&kek, &[0u8; 12]).is_err());
    }

    #[test]
    fn parameter_round_trips_through_a_x_dr() {
        let kek = [3u8; 16];
        let keys = [(GLOBAL_UNICAST_ENCRYPTION, [0x11u8; 16]), (AUTHENTICATION, [0x22u8; 16])];
        let p = parameter(&kek, &keys).unwrap();
        let bytes = p.to_bytes().unwrap();
        let back = Data::from_bytes(&bytes).unwrap();
        assert_eq!(keys_of(&kek, &back).unwrap(), keys.to_vec());
        assert!(keys_of(&[4u8; 16], &back).is_err());
        assert!(keys_of(&kek, &Data::Array(vec![])).is_err());
        assert!(keys_of(&kek, &Data::Array(vec![Data::Enum(0)])).is_err());
    }
}
