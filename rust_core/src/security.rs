//! Security suite 0 (Green Book 9.2.7.2.4, 9.2.7.4): AES-GCM-128 with a 96-bit tag.
//!
//! ```text
//! IV  = system title of the sender (8) || invocation counter (4)
//! SC 0x30 (authenticated + encrypted): AAD = SC || AK,             C = E(P),  T = tag
//! SC 0x10 (authenticated only):        AAD = SC || AK || P,        C = P,     T = tag
//! SC 0x20 (encrypted only):            no AAD, no tag,             C = E(P)
//! HLS-GMAC (mechanism 5) f(challenge) = SC || IC || GMAC(IV, AAD = SC || AK || challenge)
//! ```
//! The cipher is RustCrypto's `aes-gcm` (AES-NI and CLMUL when the CPU has them); no
//! cipher is written here. Tags are always verified, in constant time, before a byte of
//! plaintext is returned. Keys live only inside [`Keys`], which has no accessor and
//! whose Debug output hides them.

use std::fmt;

use aes::Aes128;
use aes_gcm::aead::consts::U12;
use aes_gcm::aead::generic_array::GenericArray;
use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::AesGcm;

use crate::apdu::{Ciphered, CipheredKind, SecurityControl, TAG_LEN};
use crate::error::{Error, Result};

type Suite0 = AesGcm<Aes128, U12, U12>;

/// A system title: 8 bytes, manufacturer id and serial (Green Book 9.2.4.8.2).
pub type SystemTitle = [u8; 8];

/// The encryption key (EK, block cipher key) and authentication key (AK) of one meter.
#[derive(Clone)]
pub struct Keys {
    cipher: Suite0,
    ak: [u8; 16],
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Keys(<hidden>)")
    }
}

fn iv(system_title: &SystemTitle, ic: u32) -> GenericArray<u8, U12> {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(system_title);
    n[8..].copy_from_slice(&ic.to_be_bytes());
    n.into()
}

impl Keys {
    pub fn new(ek: &[u8; 16], ak: &[u8; 16]) -> Keys {
        Keys { cipher: Suite0::new(GenericArray::from_slice(ek)), ak: *ak }
    }

    /// Builds keys from byte slices, checking their length.
    pub fn from_slices(ek: &[u8], ak: &[u8]) -> Result<Keys> {
        let ek: [u8; 16] = ek
            .try_into()
            .map_err(|_| Error::encode("encryption key", format!("{} bytes (AES-128 needs 16)", ek.len())))?;
        let ak: [u8; 16] = ak
            .try_into()
            .map_err(|_| Error::encode("authentication key", format!("{} bytes (16 needed)", ak.len())))?;
        Ok(Keys::new(&ek, &ak))
    }

    fn aad_prefix(&self, sc: SecurityControl) -> [u8; 17] {
        let mut a = [0u8; 17];
        a[0] = sc.0;
        a[1..].copy_from_slice(&self.ak);
        a
    }

    fn check_suite(sc: SecurityControl) -> Result<()> {
        if sc.suite() != 0 {
            return Err(Error::unsupported(
                "security control",
                0,
                format!("security suite {} (only suite 0, AES-GCM-128)", sc.suite()),
            ));
        }
        if sc.compressed() {
            return Err(Error::unsupported("security control", 0, "compression"));
        }
        Ok(())
    }

    /// Protects `plaintext` per `sc`: returns the ciphertext and the tag (if authenticated).
    pub fn seal(
        &self,
        sc: SecurityControl,
        system_title: &SystemTitle,
        ic: u32,
        plaintext: &[u8],
    ) -> Result<(Vec<u8>, Option<[u8; TAG_LEN]>)> {
        Self::check_suite(sc)?;
        let nonce = iv(system_title, ic);
        let mut buf = plaintext.to_vec();
        let tag = match (sc.authenticated(), sc.encrypted()) {
            (true, true) => Some(self.encrypt(&nonce, &self.aad_prefix(sc), &mut buf)?),
            (true, false) => {
                let mut aad = Vec::with_capacity(17 + plaintext.len());
                aad.extend_from_slice(&self.aad_prefix(sc));
                aad.extend_from_slice(plaintext);
                Some(self.encrypt(&nonce, &aad, &mut [])?)
            }
            (false, true) => {
                // GCM without authentication is its CTR keystream; the tag is dropped.
                self.encrypt(&nonce, &[], &mut buf)?;
                None
            }
            (false, false) => None,
        };
        Ok((buf, tag))
    }

    fn encrypt(&self, nonce: &GenericArray<u8, U12>, aad: &[u8], buf: &mut [u8]) -> Result<[u8; TAG_LEN]> {
        let t = self
            .cipher
            .encrypt_in_place_detached(nonce, aad, buf)
            .map_err(|_| Error::encode("ciphertext", "message too long for AES-GCM"))?;
        Ok(t.into())
    }

    /// Verifies and decrypts in place: `buf` holds the ciphertext on entry and the
    /// plaintext on success; on failure its contents are unspecified and must be dropped.
    pub fn open_in_place(
        &self,
        sc: SecurityControl,
        system_title: &SystemTitle,
        ic: u32,
        buf: &mut [u8],
        tag: Option<&[u8]>,
    ) -> Result<()> {
        Self::check_suite(sc)?;
        let nonce = iv(system_title, ic);
        if sc.authenticated() {
            let tag = tag.filter(|t| t.len() == TAG_LEN).ok_or(Error::AuthenticationFailed)?;
            let tag = GenericArray::from_slice(tag);
            if sc.encrypted() {
                self.cipher
                    .decrypt_in_place_detached(&nonce, &self.aad_prefix(sc), buf, tag)
                    .map_err(|_| Error::AuthenticationFailed)?;
            } else {
                let mut aad = Vec::with_capacity(17 + buf.len());
                aad.extend_from_slice(&self.aad_prefix(sc));
                aad.extend_from_slice(buf);
                self.cipher
                    .decrypt_in_place_detached(&nonce, &aad, &mut [], tag)
                    .map_err(|_| Error::AuthenticationFailed)?;
            }
        } else if sc.encrypted() {
            // CTR keystream only (no tag to verify: the policy decides if that is allowed).
            self.encrypt(&nonce, &[], buf)?;
        }
        Ok(())
    }

    /// HLS-GMAC: the 12-byte tag over SC || AK || challenge.
    pub fn gmac(&self, sc: SecurityControl, system_title: &SystemTitle, ic: u32, challenge: &[u8]) -> [u8; TAG_LEN] {
        let mut aad = Vec::with_capacity(17 + challenge.len());
        aad.extend_from_slice(&self.aad_prefix(sc));
        aad.extend_from_slice(challenge);
        // Encrypting an empty message cannot fail.
        self.encrypt(&iv(system_title, ic), &aad, &mut []).unwrap_or([0; TAG_LEN])
    }

    /// The HLS pass-3/4 value f(challenge) = SC || IC || GMAC (17 bytes), as the
    /// AARQ/AARE-following ACTION carries it.
    pub fn hls_response(&self, system_title: &SystemTitle, ic: u32, challenge: &[u8]) -> Vec<u8> {
        let sc = SecurityControl(SecurityControl::AUTHENTICATED);
        let mut out = Vec::with_capacity(5 + TAG_LEN);
        out.push(sc.0);
        out.extend_from_slice(&ic.to_be_bytes());
        out.extend_from_slice(&self.gmac(sc, system_title, ic, challenge));
        out
    }

    /// Checks a peer's f(challenge) (17 bytes: SC || IC || tag) in constant time; returns
    /// the invocation counter it used.
    pub fn verify_hls_response(&self, system_title: &SystemTitle, challenge: &[u8], f: &[u8]) -> Result<u32> {
        if f.len() != 5 + TAG_LEN {
            return Err(Error::AuthenticationFailed);
        }
        let sc = SecurityControl(f[0]);
        if !sc.authenticated() || sc.encrypted() || sc.suite() != 0 {
            return Err(Error::AuthenticationFailed);
        }
        let ic = u32::from_be_bytes([f[1], f[2], f[3], f[4]]);
        let mut aad = Vec::with_capacity(17 + challenge.len());
        aad.extend_from_slice(&self.aad_prefix(sc));
        aad.extend_from_slice(challenge);
        self.cipher
            .decrypt_in_place_detached(&iv(system_title, ic), &aad, &mut [], GenericArray::from_slice(&f[5..]))
            .map_err(|_| Error::AuthenticationFailed)?;
        Ok(ic)
    }
}

/// What a receiver accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Reject APDUs without an authentication tag (SC 0x00, 0x20). Default true: an
    /// unauthenticated APDU can be forged by anyone on the path.
    pub require_authentication: bool,
    /// Reject APDUs that are not encrypted (SC 0x10). Default false.
    pub require_encryption: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy { require_authentication: true, require_encryption: false }
    }
}

/// The outcome of deciphering an APDU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deciphered {
    pub system_title: SystemTitle,
    pub security_control: SecurityControl,
    pub invocation_counter: u32,
    pub plaintext: Vec<u8>,
}

/// Keys and counters of one meter.
#[derive(Clone, Debug)]
struct Entry {
    global: Keys,
    /// The keys before the last rotation, accepted for late frames while kept.
    previous: Option<Keys>,
    /// Keys sent to the meter (or about to be) and not yet confirmed by a fresh
    /// association: a frame they open shows the meter has them.
    pending: Option<Keys>,
    dedicated: Option<Keys>,
    /// Highest invocation counter accepted from the meter; None before the first.
    last_received: Option<u32>,
    /// Next invocation counter to use towards the meter.
    next_sent: u32,
}

/// Per-meter keys and invocation counters, keyed by the meter's system title.
///
/// Counters only move forward: received counters must exceed the last accepted one
/// (replay protection, Green Book 9.2.7.2.4.3), and floors set from the store can
/// raise but never lower them.
#[derive(Clone, Debug, Default)]
pub struct KeyTable {
    // Looked up on every push; filled only with meters the store knows, never with
    // what a peer sends, so a fast hash (seeded per process) cannot be flooded.
    meters: foldhash::HashMap<SystemTitle, Entry>,
}

impl KeyTable {
    pub fn new() -> Self {
        KeyTable::default()
    }

    pub fn len(&self) -> usize {
        self.meters.len()
    }

    pub fn is_empty(&self) -> bool {
        self.meters.is_empty()
    }

    pub fn contains(&self, system_title: &SystemTitle) -> bool {
        self.meters.contains_key(system_title)
    }

    /// Sets a meter's global keys, keeping its counters if it is already known.
    pub fn insert(&mut self, system_title: SystemTitle, keys: Keys) {
        match self.meters.get_mut(&system_title) {
            Some(e) => e.global = keys,
            None => {
                self.meters.insert(
                    system_title,
                    Entry {
                        global: keys,
                        previous: None,
                        pending: None,
                        dedicated: None,
                        last_received: None,
                        next_sent: 1,
                    },
                );
            }
        }
    }

    /// Sets the keys a meter may also be using during a rotation: `previous` (the
    /// keys before the last one, kept for late frames) and `pending` (sent, not yet
    /// confirmed).
    pub fn set_alternates(
        &mut self,
        system_title: &SystemTitle,
        previous: Option<Keys>,
        pending: Option<Keys>,
    ) -> Result<()> {
        let e = self.entry_mut(system_title)?;
        e.previous = previous;
        e.pending = pending;
        Ok(())
    }

    /// The pending keys become the meter's keys; its keys until now become the previous
    /// ones. Counters are untouched: they run on across a key change (a counter must
    /// never repeat under a key; nothing asks it to restart).
    pub fn promote(&mut self, system_title: &SystemTitle) -> Result<()> {
        let e = self.entry_mut(system_title)?;
        let new = e.pending.take().ok_or_else(|| Error::encode("key rotation", "no pending keys to make current"))?;
        e.previous = Some(std::mem::replace(&mut e.global, new));
        e.dedicated = None;
        Ok(())
    }

    /// Undoes [`KeyTable::promote`]: the previous keys are the meter's again and the new
    /// ones pending (the meter did not take them, or not yet).
    pub fn revert(&mut self, system_title: &SystemTitle) -> Result<()> {
        let e = self.entry_mut(system_title)?;
        let old = e.previous.take().ok_or_else(|| Error::encode("key rotation", "no previous keys to go back to"))?;
        e.pending = Some(std::mem::replace(&mut e.global, old));
        e.dedicated = None;
        Ok(())
    }

    /// Forgets the previous keys (their grace time is over).
    pub fn drop_previous(&mut self, system_title: &SystemTitle) -> Result<()> {
        self.entry_mut(system_title)?.previous = None;
        Ok(())
    }

    /// Forgets the pending keys (the meter refused them).
    pub fn drop_pending(&mut self, system_title: &SystemTitle) -> Result<()> {
        self.entry_mut(system_title)?.pending = None;
        Ok(())
    }

    /// Whether the meter has keys besides its current ones (previous, pending).
    pub fn alternates(&self, system_title: &SystemTitle) -> Result<(bool, bool)> {
        let e = self.entry(system_title)?;
        Ok((e.previous.is_some(), e.pending.is_some()))
    }

    pub fn remove(&mut self, system_title: &SystemTitle) -> bool {
        self.meters.remove(system_title).is_some()
    }

    /// Sets or clears the dedicated (session) key agreed in the AARQ.
    pub fn set_dedicated_key(&mut self, system_title: &SystemTitle, key: Option<&[u8; 16]>) -> Result<()> {
        let e = self.entry_mut(system_title)?;
        e.dedicated = key.map(|k| Keys::new(k, &e.global.ak));
        Ok(())
    }

    fn entry_mut(&mut self, system_title: &SystemTitle) -> Result<&mut Entry> {
        self.meters.get_mut(system_title).ok_or(Error::UnknownSystemTitle { system_title: *system_title })
    }

    fn entry(&self, system_title: &SystemTitle) -> Result<&Entry> {
        self.meters.get(system_title).ok_or(Error::UnknownSystemTitle { system_title: *system_title })
    }

    /// Raises the floor for counters received from the meter (e.g. the last value
    /// persisted before a restart). Never lowers it.
    pub fn raise_received_counter(&mut self, system_title: &SystemTitle, ic: u32) -> Result<()> {
        let e = self.entry_mut(system_title)?;
        e.last_received = Some(e.last_received.map_or(ic, |l| l.max(ic)));
        Ok(())
    }

    /// Raises the next counter to send to the meter. Never lowers it.
    pub fn raise_sent_counter(&mut self, system_title: &SystemTitle, next: u32) -> Result<()> {
        let e = self.entry_mut(system_title)?;
        e.next_sent = e.next_sent.max(next);
        Ok(())
    }

    /// (last received, next to send) for persisting.
    pub fn counters(&self, system_title: &SystemTitle) -> Result<(Option<u32>, u32)> {
        let e = self.entry(system_title)?;
        Ok((e.last_received, e.next_sent))
    }

    /// Every meter's counters, for persisting in one batch.
    pub fn all_counters(&self) -> Vec<(SystemTitle, Option<u32>, u32)> {
        self.meters.iter().map(|(st, e)| (*st, e.last_received, e.next_sent)).collect()
    }

    /// The meter's global keys (for HLS-GMAC computations by the session).
    pub fn keys(&self, system_title: &SystemTitle) -> Result<&Keys> {
        Ok(&self.entry(system_title)?.global)
    }

    /// Verifies, decrypts and replay-checks a ciphered APDU from a meter.
    ///
    /// The sender's system title is the one in a general-glo/ded APDU, else `sender`
    /// (known from the association). The counter is recorded only after the tag
    /// verified, so a forged APDU cannot advance it.
    pub fn decipher(&mut self, c: &Ciphered, sender: Option<&SystemTitle>, policy: Policy) -> Result<Deciphered> {
        let mut buf = c.ciphertext.clone();
        let (st, sc, ic) = self.decipher_in_place(
            c.cipher,
            c.system_title.as_deref(),
            c.security_control,
            c.invocation_counter,
            &mut buf,
            c.tag.as_deref(),
            sender,
            policy,
        )?;
        Ok(Deciphered { system_title: st, security_control: sc, invocation_counter: ic, plaintext: buf })
    }

    /// [`KeyTable::decipher`] on borrowed parts, decrypting `buf` in place (the hot path).
    #[allow(clippy::too_many_arguments)]
    pub fn decipher_in_place(
        &mut self,
        cipher: CipheredKind,
        apdu_title: Option<&[u8]>,
        sc: SecurityControl,
        ic: u32,
        buf: &mut [u8],
        tag: Option<&[u8]>,
        sender: Option<&SystemTitle>,
        policy: Policy,
    ) -> Result<(SystemTitle, SecurityControl, u32)> {
        let st = sender_title(apdu_title, sender)?;
        check_policy(sc, policy)?;
        let e = self.entry_mut(&st)?;
        if let Some(last) = e.last_received {
            if ic <= last {
                return Err(Error::Replay { system_title: st, received: ic, last });
            }
        }
        if cipher.is_dedicated() {
            e.dedicated
                .as_ref()
                .ok_or_else(|| Error::invalid("ciphered APDU", 0, "dedicated ciphering but no dedicated key agreed"))?
                .open_in_place(sc, &st, ic, buf, tag)?;
        } else {
            match e.global.open_in_place(sc, &st, ic, buf, tag) {
                // During a rotation a frame may come under the keys before it (late)
                // or after it (the meter took the new ones first). Only a verified tag
                // can tell, and a failed check leaves `buf` as it was.
                Err(Error::AuthenticationFailed) if sc.authenticated() => {
                    let opened = [e.previous.as_ref(), e.pending.as_ref()]
                        .into_iter()
                        .flatten()
                        .any(|k| k.open_in_place(sc, &st, ic, buf, tag).is_ok());
                    if !opened {
                        return Err(Error::AuthenticationFailed);
                    }
                }
                other => other?,
            }
        }
        e.last_received = Some(ic);
        Ok((st, sc, ic))
    }

    /// Protects `plaintext` (an APDU) for the meter `meter`, as sender `own_title`,
    /// with the next invocation counter; `kind` chooses the envelope (a service-specific
    /// glo-/ded- tag or general-glo/ded-ciphering).
    pub fn encipher(
        &mut self,
        meter: &SystemTitle,
        own_title: &SystemTitle,
        kind: CipheredKind,
        sc: SecurityControl,
        plaintext: &[u8],
    ) -> Result<Ciphered> {
        let e = self.entry_mut(meter)?;
        let ic = e.next_sent;
        let next = ic
            .checked_add(1)
            .ok_or_else(|| Error::encode("invocation counter", "exhausted; the meter's keys must be renewed"))?;
        let keys = if kind.is_dedicated() {
            e.dedicated.as_ref().ok_or_else(|| Error::encode("ciphered APDU", "no dedicated key agreed"))?
        } else {
            &e.global
        };
        let (ciphertext, tag) = keys.seal(sc, own_title, ic, plaintext)?;
        e.next_sent = next;
        Ok(Ciphered {
            cipher: kind,
            system_title: kind.is_general().then(|| own_title.to_vec()),
            security_control: sc,
            invocation_counter: ic,
            ciphertext,
            tag: tag.map(|t| t.to_vec()),
        })
    }
}

/// Protects an APDU with explicit keys and counter (for tools, tests and simulators
/// that play the meter's side): `kind` chooses the envelope.
pub fn encipher_with(
    keys: &Keys,
    kind: CipheredKind,
    sc: SecurityControl,
    system_title: &SystemTitle,
    ic: u32,
    plaintext: &[u8],
) -> Result<Ciphered> {
    let (ciphertext, tag) = keys.seal(sc, system_title, ic, plaintext)?;
    Ok(Ciphered {
        cipher: kind,
        system_title: kind.is_general().then(|| system_title.to_vec()),
        security_control: sc,
        invocation_counter: ic,
        ciphertext,
        tag: tag.map(|t| t.to_vec()),
    })
}

/// Deciphers with explicit keys and no replay state (for the decode tool and tests).
/// For dedicated ciphering, pass the dedicated key as the encryption key.
pub fn decipher_with(keys: &Keys, c: &Ciphered, sender: Option<&SystemTitle>, policy: Policy) -> Result<Deciphered> {
    let st = sender_title(c.system_title.as_deref(), sender)?;
    check_policy(c.security_control, policy)?;
    let mut buf = c.ciphertext.clone();
    keys.open_in_place(c.security_control, &st, c.invocation_counter, &mut buf, c.tag.as_deref())?;
    Ok(Deciphered {
        system_title: st,
        security_control: c.security_control,
        invocation_counter: c.invocation_counter,
        plaintext: buf,
    })
}

fn sender_title(apdu_title: Option<&[u8]>, sender: Option<&SystemTitle>) -> Result<SystemTitle> {
    match apdu_title {
        Some(t) if t.len() == 8 => Ok(t.try_into().expect("length checked")),
        _ => sender.copied().ok_or_else(|| {
            Error::invalid("ciphered APDU", 0, "no system title in the APDU and none known from the association")
        }),
    }
}

fn check_policy(sc: SecurityControl, policy: Policy) -> Result<()> {
    if policy.require_authentication && !sc.authenticated() {
        return Err(Error::invalid(
            "security control",
            0,
            format!("{:#04x} is not authenticated; policy requires authentication", sc.0),
        ));
    }
    if policy.require_encryption && !sc.encrypted() {
        return Err(Error::invalid(
            "security control",
            0,
            format!("{:#04x} is not encrypted; policy requires encryption", sc.0),
        ));
    }
    if sc.broadcast_key() {
        return Err(Error::unsupported("security control", 0, "broadcast key set"));
    }
    Ok(())
}
