//! Meter keys at rest: wrapped under the deployment's master key.
//!
//! ```text
//! wrapped = version(1) = 0x01 | nonce(12) | AES-256-GCM(master, nonce, aad = purpose || serial)(key) | tag(16)
//! ```
//! The associated data binds a wrapped key to what it is for (`ek`, `ak`, `password`)
//! and to whose it is (the meter's serial), so a wrapped key copied onto another meter
//! or into another field does not unwrap. The master key itself never enters the store;
//! plaintext meter keys exist only inside [`crate::security::KeyTable`] (and briefly in
//! the importer that wraps them). Nonces come from the caller (the OS random source
//! lives in Python: this crate does no I/O).

use std::fmt;

use aes::Aes256;
use aes_gcm::aead::consts::{U12, U16};
use aes_gcm::aead::generic_array::GenericArray;
use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::AesGcm;

use crate::error::{Error, Result};

type Wrapper = AesGcm<Aes256, U12, U16>;

const VERSION: u8 = 0x01;
/// Bytes a wrapped value adds to the plaintext.
pub const OVERHEAD: usize = 1 + 12 + 16;

/// The master key (AES-256). Debug output and errors never show it.
#[derive(Clone)]
pub struct MasterKey {
    cipher: Wrapper,
    /// The first 8 bytes of the GCM tag of a fixed label under this key: tells operators
    /// which master key wrapped a value without revealing anything about it.
    fingerprint: [u8; 8],
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey(fingerprint {})", crate::data_json::hex(&self.fingerprint))
    }
}

impl MasterKey {
    pub fn new(key: &[u8]) -> Result<MasterKey> {
        let key: [u8; 32] = key
            .try_into()
            .map_err(|_| Error::encode("master key", format!("{} bytes (AES-256 needs 32)", key.len())))?;
        let cipher = Wrapper::new(GenericArray::from_slice(&key));
        let mut label = [];
        let tag = cipher
            .encrypt_in_place_detached(
                GenericArray::from_slice(&[0u8; 12]),
                b"headend master key fingerprint",
                &mut label,
            )
            .map_err(|_| Error::encode("master key", "cannot derive fingerprint"))?;
        let mut fingerprint = [0u8; 8];
        fingerprint.copy_from_slice(&tag[..8]);
        Ok(MasterKey { cipher, fingerprint })
    }

    /// A stable, non-secret identifier of this master key.
    pub fn fingerprint(&self) -> [u8; 8] {
        self.fingerprint
    }

    fn aad(purpose: &str, owner: &str) -> Vec<u8> {
        let mut a = Vec::with_capacity(purpose.len() + owner.len() + 1);
        a.extend_from_slice(purpose.as_bytes());
        a.push(0);
        a.extend_from_slice(owner.as_bytes());
        a
    }

    /// Wraps `secret` for `purpose` ("ek", "ak", "password") of meter `owner`.
    pub fn wrap(&self, secret: &[u8], purpose: &str, owner: &str, nonce: &[u8; 12]) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(secret.len() + OVERHEAD);
        out.push(VERSION);
        out.extend_from_slice(nonce);
        let mut body = secret.to_vec();
        let tag = self
            .cipher
            .encrypt_in_place_detached(GenericArray::from_slice(nonce), &Self::aad(purpose, owner), &mut body)
            .map_err(|_| Error::encode("wrapped key", "too long"))?;
        out.extend_from_slice(&body);
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Unwraps a value made by [`MasterKey::wrap`] with the same purpose and owner.
    /// A wrong master key, purpose, owner or a tampered value all give
    /// [`Error::AuthenticationFailed`].
    pub fn unwrap(&self, wrapped: &[u8], purpose: &str, owner: &str) -> Result<Vec<u8>> {
        if wrapped.len() < OVERHEAD || wrapped[0] != VERSION {
            return Err(Error::invalid("wrapped key", 0, "not a version-1 wrapped value"));
        }
        let nonce = GenericArray::<u8, U12>::from_slice(&wrapped[1..13]);
        let (body, tag) = wrapped[13..].split_at(wrapped.len() - 13 - 16);
        let mut plain = body.to_vec();
        self.cipher
            .decrypt_in_place_detached(
                nonce,
                &Self::aad(purpose, owner),
                &mut plain,
                GenericArray::<u8, U16>::from_slice(tag),
            )
            .map_err(|_| Error::AuthenticationFailed)?;
        Ok(plain)
    }

    /// Unwraps a value made under this key and wraps it under `to` for the same purpose
    /// and owner with a fresh `nonce`: a meter key moves to another node's key (the
    /// link's) without its plaintext leaving this function. The plaintext is wiped.
    pub fn rewrap(
        &self,
        to: &MasterKey,
        wrapped: &[u8],
        purpose: &str,
        owner: &str,
        nonce: &[u8; 12],
    ) -> Result<Vec<u8>> {
        let mut plain = self.unwrap(wrapped, purpose, owner)?;
        let out = to.wrap(&plain, purpose, owner, nonce);
        plain.iter_mut().for_each(|b| *b = 0);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrap_moves_a_key_to_another_master_and_keeps_its_binding() {
        let a = MasterKey::new(&[1u8; 32]).unwrap();
        let b = MasterKey::new(&[2u8; 32]).unwrap();
        let wrapped = a.wrap(b"0123456789abcdef", "ek", "M1", &[7u8; 12]).unwrap();
        let moved = a.rewrap(&b, &wrapped, "ek", "M1", &[9u8; 12]).unwrap();
        assert_eq!(b.unwrap(&moved, "ek", "M1").unwrap(), b"0123456789abcdef");
        assert!(matches!(a.unwrap(&moved, "ek", "M1"), Err(Error::AuthenticationFailed)));
        assert!(matches!(b.unwrap(&moved, "ak", "M1"), Err(Error::AuthenticationFailed)));
        // Under the wrong source key, or bound to another meter, nothing moves.
        assert!(matches!(b.rewrap(&a, &wrapped, "ek", "M1", &[9u8; 12]), Err(Error::AuthenticationFailed)));
        assert!(matches!(a.rewrap(&b, &wrapped, "ek", "M2", &[9u8; 12]), Err(Error::AuthenticationFailed)));
    }

    #[test]
    fn wrap_round_trip_binds_purpose_and_owner() {
        let m = MasterKey::new(&[7; 32]).unwrap();
        let w = m.wrap(&[1; 16], "ek", "UZ0001", &[9; 12]).unwrap();
        assert_eq!(w.len(), 16 + OVERHEAD);
        assert_eq!(m.unwrap(&w, "ek", "UZ0001").unwrap(), vec![1; 16]);
        assert_eq!(m.unwrap(&w, "ak", "UZ0001"), Err(Error::AuthenticationFailed));
        assert_eq!(m.unwrap(&w, "ek", "UZ0002"), Err(Error::AuthenticationFailed));
        let other = MasterKey::new(&[8; 32]).unwrap();
        assert_eq!(other.unwrap(&w, "ek", "UZ0001"), Err(Error::AuthenticationFailed));
        let mut bad = w.clone();
        bad[20] ^= 1;
        assert_eq!(m.unwrap(&bad, "ek", "UZ0001"), Err(Error::AuthenticationFailed));
        assert!(matches!(m.unwrap(&w[..10], "ek", "UZ0001"), Err(Error::Invalid { .. })));
    }

    #[test]
    fn fingerprint_is_stable_and_distinct() {
        let a = MasterKey::new(&[7; 32]).unwrap();
        assert_eq!(a.fingerprint(), MasterKey::new(&[7; 32]).unwrap().fingerprint());
        assert_ne!(a.fingerprint(), MasterKey::new(&[8; 32]).unwrap().fingerprint());
        assert!(!format!("{a:?}").contains("0707"));
        assert!(MasterKey::new(&[1; 16]).is_err());
    }
}
