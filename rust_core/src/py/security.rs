//! Keys: the key table, ciphering helpers and the deployment's master key.

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::apdu::{Apdu, Ciphered, CipheredKind, SecurityControl};
use crate::error::Error;
use crate::keywrap::MasterKey as RsMasterKey;
use crate::security::{KeyTable as RsKeyTable, Keys, Policy, SystemTitle};

use super::*;

// ---------------------------------------------------------------------------------
// Keys

/// Per-meter keys and invocation counters. Keys go in and never come out.
#[pyclass(module = "headend._core")]
pub struct KeyTable {
    pub(super) inner: RsKeyTable,
}

pub(super) fn policy(require_authentication: bool, require_encryption: bool) -> Policy {
    Policy { require_authentication, require_encryption }
}

#[pymethods]
impl KeyTable {
    #[new]
    fn new() -> Self {
        KeyTable { inner: RsKeyTable::new() }
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    fn __contains__(&self, system_title: &[u8]) -> bool {
        system_title.try_into().is_ok_and(|st: SystemTitle| self.inner.contains(&st))
    }

    fn __repr__(&self) -> String {
        format!("<KeyTable of {} meters>", self.inner.len())
    }

    /// Sets a meter's global encryption and authentication keys (counters are kept).
    fn set_keys(&mut self, py: Python<'_>, system_title: &[u8], ek: &[u8], ak: &[u8]) -> PyResult<()> {
        let st = title(py, system_title)?;
        let keys = Keys::new(&key16(py, "encryption key", ek)?, &key16(py, "authentication key", ak)?);
        self.inner.insert(st, keys);
        Ok(())
    }

    fn remove(&mut self, py: Python<'_>, system_title: &[u8]) -> PyResult<bool> {
        Ok(self.inner.remove(&title(py, system_title)?))
    }

    #[pyo3(signature = (system_title, key))]
    fn set_dedicated_key(&mut self, py: Python<'_>, system_title: &[u8], key: Option<&[u8]>) -> PyResult<()> {
        let st = title(py, system_title)?;
        let k = key.map(|k| key16(py, "dedicated key", k)).transpose()?;
        codec(py, self.inner.set_dedicated_key(&st, k.as_ref()))
    }

    /// Raises the floor for counters received from the meter; never lowers it.
    fn raise_received_counter(&mut self, py: Python<'_>, system_title: &[u8], invocation_counter: u32) -> PyResult<()> {
        let st = title(py, system_title)?;
        codec(py, self.inner.raise_received_counter(&st, invocation_counter))
    }

    /// Raises the next counter used towards the meter; never lowers it.
    fn raise_sent_counter(&mut self, py: Python<'_>, system_title: &[u8], next: u32) -> PyResult<()> {
        let st = title(py, system_title)?;
        codec(py, self.inner.raise_sent_counter(&st, next))
    }

    /// (last received, next to send).
    fn counters(&self, py: Python<'_>, system_title: &[u8]) -> PyResult<(Option<u32>, u32)> {
        let st = title(py, system_title)?;
        codec(py, self.inner.counters(&st))
    }

    /// Every meter's (system title, last received, next to send), for persisting.
    fn all_counters<'py>(&self, py: Python<'py>) -> Vec<(Bound<'py, PyBytes>, Option<u32>, u32)> {
        self.inner.all_counters().into_iter().map(|(st, r, s)| (PyBytes::new(py, &st), r, s)).collect()
    }

    /// Verifies, decrypts and replay-checks a ciphered APDU from a meter. Returns
    /// (system title, security control, invocation counter, plaintext APDU).
    #[pyo3(signature = (apdu, sender = None, *, require_authentication = true, require_encryption = false))]
    fn decipher<'py>(
        &mut self,
        py: Python<'py>,
        apdu: &[u8],
        sender: Option<&[u8]>,
        require_authentication: bool,
        require_encryption: bool,
    ) -> PyResult<(Bound<'py, PyBytes>, u8, u32, Bound<'py, PyBytes>)> {
        let sender = sender.map(|s| title(py, s)).transpose()?;
        let d = decipher_apdu(
            py,
            &mut self.inner,
            apdu,
            sender.as_ref(),
            policy(require_authentication, require_encryption),
        )?;
        Ok((
            PyBytes::new(py, &d.system_title),
            d.security_control.0,
            d.invocation_counter,
            PyBytes::new(py, &d.plaintext),
        ))
    }

    /// Protects `apdu` for meter `meter` as sender `own_title` with the next counter.
    /// The envelope is the service-specific glo-/ded- APDU, or general-glo/ded-ciphering
    /// when `general` is true (required for APDUs without a service-specific form).
    #[pyo3(signature = (meter, own_title, apdu, *, security_control = 0x30, general = false, dedicated = false))]
    #[allow(clippy::too_many_arguments)]
    fn encipher<'py>(
        &mut self,
        py: Python<'py>,
        meter: &[u8],
        own_title: &[u8],
        apdu: &[u8],
        security_control: u8,
        general: bool,
        dedicated: bool,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let (m, own) = (title(py, meter)?, title(py, own_title)?);
        encipher_apdu(py, &mut self.inner, &m, &own, apdu, security_control, general, dedicated)
    }

    /// HLS-GMAC f(challenge) = SC || IC || GMAC for meter `meter`'s keys, computed as
    /// `own_title` with the next counter towards the meter (pass 3 for a client).
    fn hls_response<'py>(
        &mut self,
        py: Python<'py>,
        meter: &[u8],
        own_title: &[u8],
        challenge: &[u8],
    ) -> PyResult<Bound<'py, PyBytes>> {
        let (m, own) = (title(py, meter)?, title(py, own_title)?);
        hls_pass3(py, &mut self.inner, &m, &own, challenge)
    }

    /// Checks the meter's f(challenge) for our challenge (pass 4); returns its counter.
    fn verify_hls_response(&self, py: Python<'_>, meter: &[u8], challenge: &[u8], response: &[u8]) -> PyResult<u32> {
        let m = title(py, meter)?;
        codec(py, codec(py, self.inner.keys(&m))?.verify_hls_response(&m, challenge, response))
    }
}

pub(super) fn decipher_apdu(
    py: Python<'_>,
    keys: &mut RsKeyTable,
    apdu: &[u8],
    sender: Option<&SystemTitle>,
    policy: Policy,
) -> PyResult<crate::security::Deciphered> {
    let c = ciphered(py, apdu)?;
    let d = guarded(py, false, || keys.decipher(&c, sender, policy))?;
    codec(py, d)
}

#[allow(clippy::too_many_arguments)]
pub(super) fn encipher_apdu<'py>(
    py: Python<'py>,
    keys: &mut RsKeyTable,
    meter: &SystemTitle,
    own: &SystemTitle,
    apdu: &[u8],
    security_control: u8,
    general: bool,
    dedicated: bool,
) -> PyResult<Bound<'py, PyBytes>> {
    let kind = envelope(py, apdu, general, dedicated)?;
    let c = codec(py, keys.encipher(meter, own, kind, SecurityControl(security_control), apdu))?;
    Ok(PyBytes::new(py, &codec(py, Apdu::Ciphered(c).to_bytes())?))
}

/// HLS-GMAC pass 3: f(challenge) with the next counter towards the meter, which moves on.
pub(super) fn hls_pass3<'py>(
    py: Python<'py>,
    keys: &mut RsKeyTable,
    meter: &SystemTitle,
    own: &SystemTitle,
    challenge: &[u8],
) -> PyResult<Bound<'py, PyBytes>> {
    let (_, next) = codec(py, keys.counters(meter))?;
    let f = codec(py, keys.keys(meter))?.hls_response(own, next, challenge);
    codec(py, keys.raise_sent_counter(meter, next.saturating_add(1)))?;
    Ok(PyBytes::new(py, &f))
}

pub(super) fn ciphered(py: Python<'_>, apdu: &[u8]) -> PyResult<Ciphered> {
    match guarded(py, false, || Apdu::decode(apdu))? {
        Ok(Apdu::Ciphered(c)) => Ok(c),
        Ok(other) => {
            Err(to_pyerr(py, &Error::invalid("ciphered APDU", 0, format!("{} is not ciphered", other.name()))))
        }
        Err(e) => Err(to_pyerr(py, &e)),
    }
}

pub(super) fn envelope(py: Python<'_>, apdu: &[u8], general: bool, dedicated: bool) -> PyResult<CipheredKind> {
    if general {
        return Ok(CipheredKind(if dedicated { 0xDC } else { 0xDB }));
    }
    let t = *apdu.first().ok_or_else(|| local_error(py, "APDU", "empty"))?;
    CipheredKind::for_plaintext(t, dedicated).ok_or_else(|| {
        local_error(py, "APDU", format!("tag {t:#04x} has no service-specific ciphered form; use general=True"))
    })
}

// ---------------------------------------------------------------------------------
// Server: master key, directory, row sink, sessions

/// The deployment's master key (AES-256). Wraps meter keys for storage; there is no
/// unwrap here: only `Directory.add_meter` unwraps, straight into its key table.
#[pyclass(module = "headend._core", frozen)]
pub struct MasterKey {
    pub(super) inner: RsMasterKey,
}

#[pymethods]
impl MasterKey {
    #[new]
    fn new(py: Python<'_>, key: &[u8]) -> PyResult<Self> {
        Ok(MasterKey { inner: codec(py, RsMasterKey::new(key))? })
    }

    /// A non-secret identifier of this key (hex).
    #[getter]
    fn fingerprint(&self) -> String {
        crate::data_json::hex(&self.inner.fingerprint())
    }

    /// Wraps `secret` for `purpose` ("ek", "ak", "password") of meter `owner`;
    /// `nonce` must be 12 fresh random bytes.
    fn wrap<'py>(
        &self,
        py: Python<'py>,
        secret: &[u8],
        purpose: &str,
        owner: &str,
        nonce: &[u8],
    ) -> PyResult<Bound<'py, PyBytes>> {
        let n: [u8; 12] = nonce.try_into().map_err(|_| local_error(py, "nonce", "12 bytes needed"))?;
        Ok(PyBytes::new(py, &codec(py, self.inner.wrap(secret, purpose, owner, &n))?))
    }

    /// Moves wrapped values from this key to `to`: each `(wrapped, purpose, owner)`
    /// item is unwrapped here and wrapped under `to`, with the next 12 bytes of
    /// `nonces` (fresh random, 12 per item). The plaintext never reaches Python; a
    /// value that does not unwrap fails the whole batch with AuthenticationFailed.
    fn rewrap<'py>(
        &self,
        py: Python<'py>,
        to: &MasterKey,
        items: Vec<(Vec<u8>, String, String)>,
        nonces: &[u8],
    ) -> PyResult<Vec<Bound<'py, PyBytes>>> {
        if nonces.len() != 12 * items.len() {
            return Err(local_error(py, "nonces", "12 bytes per item needed"));
        }
        let mut out = Vec::with_capacity(items.len());
        for ((wrapped, purpose, owner), nonce) in items.iter().zip(nonces.chunks_exact(12)) {
            let n: [u8; 12] = nonce.try_into().expect("chunks of 12");
            let moved = codec(py, self.inner.rewrap(&to.inner, wrapped, purpose, owner, &n))?;
            out.push(PyBytes::new(py, &moved));
        }
        Ok(out)
    }

    fn __repr__(&self) -> String {
        format!("<MasterKey {}>", self.fingerprint())
    }
}
