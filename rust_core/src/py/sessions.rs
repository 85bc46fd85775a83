//! The server's side: the meter directory, the row sink and per-connection sessions.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

use crate::apdu::Apdu;
use crate::profile::Profile;
use crate::rows::{EventRow, RowSink as RsRowSink, EVENTS_COLUMNS, READINGS_COLUMNS};
use crate::security::{Keys, SystemTitle};
use crate::session::{Directory as RsDirectory, LookupKey, Session as RsSession, SessionEvent};
use crate::stream::StreamConfig;

use super::*;

/// The meters, models and keys a worker knows (filled lazily from the store).
#[pyclass(module = "headend._core")]
pub struct Directory {
    pub(super) inner: RsDirectory,
    /// LLS passwords, unwrapped here and used only inside `lls_aarq`.
    pub(super) passwords: std::collections::HashMap<u32, Vec<u8>>,
    /// Meters' master keys (KEK), used only to wrap new keys for `key_transfer`.
    pub(super) keks: std::collections::HashMap<u32, [u8; 16]>,
    /// New keys (EK, AK) of a rotation in progress, for `key_transfer` (the key table
    /// holds them as cipher keys, which cannot be read back).
    pub(super) pending: std::collections::HashMap<u32, ([u8; 16], [u8; 16])>,
}

#[pymethods]
impl Directory {
    #[new]
    #[pyo3(signature = (*, require_authentication = true, require_encryption = false, device_leaf = 0))]
    fn new(require_authentication: bool, require_encryption: bool, device_leaf: u16) -> Self {
        let mut inner = RsDirectory::new();
        inner.policy = policy(require_authentication, require_encryption);
        inner.device_leaf = device_leaf;
        Directory { inner, passwords: Default::default(), keks: Default::default(), pending: Default::default() }
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    /// Adds or replaces a meter-model profile (the parsed TOML of protocols/profiles).
    fn add_profile(&mut self, py: Python<'_>, profile: &Bound<'_, PyAny>) -> PyResult<()> {
        let v = py_to_value(profile, 0)?;
        let p = Profile::from_json(&v).map_err(|e| local_error(py, "profile", e))?;
        self.inner.add_profile(p);
        Ok(())
    }

    #[getter]
    fn models(&self) -> Vec<String> {
        self.inner.profile_names()
    }

    /// Adds or updates a meter; wrapped keys are unwrapped with `master` into the key
    /// table (never into Python). Counters from the store raise the meter's floors.
    ///
    /// During a key rotation, `wrapped_previous` (the keys before the last rotation,
    /// kept for late frames) and `wrapped_pending` (keys sent and not yet confirmed) are
    /// (EK, AK) pairs the meter's frames may also come under; `wrapped_kek` is the
    /// meter's master key, which wraps new keys for `key_transfer`. `ct_ratio` and
    /// `vt_ratio`: its instrument transformers (its readings are stored as primary
    /// values).
    #[pyo3(signature = (serial, model, system_title = None, wrapped_ek = None, wrapped_ak = None, master = None, last_received = None, next_sent = None, *, wrapped_password = None, wrapped_kek = None, wrapped_previous = None, wrapped_pending = None, ct_ratio = 1.0, vt_ratio = 1.0))]
    #[allow(clippy::too_many_arguments)]
    fn add_meter(
        &mut self,
        py: Python<'_>,
        serial: &str,
        model: &str,
        system_title: Option<&[u8]>,
        wrapped_ek: Option<&[u8]>,
        wrapped_ak: Option<&[u8]>,
        master: Option<&MasterKey>,
        last_received: Option<u32>,
        next_sent: Option<u32>,
        wrapped_password: Option<&[u8]>,
        wrapped_kek: Option<&[u8]>,
        wrapped_previous: Option<(Vec<u8>, Vec<u8>)>,
        wrapped_pending: Option<(Vec<u8>, Vec<u8>)>,
        ct_ratio: f64,
        vt_ratio: f64,
    ) -> PyResult<u32> {
        if crate::units::Ratios::new(ct_ratio, vt_ratio).is_none() {
            return Err(local_error(
                py,
                "meter ratios",
                format!("{serial}: CT ratio {ct_ratio} and VT ratio {vt_ratio} must be above 0 and at most 1e6"),
            ));
        }
        let unwrap_pair = |pair: Option<(Vec<u8>, Vec<u8>)>| -> PyResult<Option<([u8; 16], [u8; 16])>> {
            let Some((ek, ak)) = pair else { return Ok(None) };
            let m = master.ok_or_else(|| local_error(py, "meter keys", "give the master key too"))?;
            let ek = key16(py, "ek", &codec(py, m.inner.unwrap(&ek, "ek", serial))?)?;
            let ak = key16(py, "ak", &codec(py, m.inner.unwrap(&ak, "ak", serial))?)?;
            Ok(Some((ek, ak)))
        };
        let previous = unwrap_pair(wrapped_previous)?;
        let pending = unwrap_pair(wrapped_pending)?;
        let kek = match (wrapped_kek, master) {
            (Some(w), Some(m)) => Some(key16(py, "kek", &codec(py, m.inner.unwrap(w, "kek", serial))?)?),
            (Some(_), None) => return Err(local_error(py, "meter master key", "give the master key too")),
            (None, _) => None,
        };
        let password = match (wrapped_password, master) {
            (Some(w), Some(m)) => Some(codec(py, m.inner.unwrap(w, "password", serial))?),
            (Some(_), None) => return Err(local_error(py, "meter password", "give the master key too")),
            (None, _) => None,
        };
        let st = system_title.map(|t| title(py, t)).transpose()?;
        let keys = match (wrapped_ek, wrapped_ak, master) {
            (Some(ek), Some(ak), Some(m)) => {
                let ek = codec(py, m.inner.unwrap(ek, "ek", serial))?;
                let ak = codec(py, m.inner.unwrap(ak, "ak", serial))?;
                Some(codec(py, Keys::from_slices(&ek, &ak))?)
            }
            (None, None, _) => None,
            _ => return Err(local_error(py, "meter keys", "give both wrapped keys and the master key")),
        };
        let keyed = keys.is_some();
        let id = codec(py, self.inner.add_meter(serial, model, st, keys, last_received, next_sent))?;
        codec(py, self.inner.set_ratios(id, ct_ratio, vt_ratio))?;
        match password {
            Some(pw) => self.passwords.insert(id, pw),
            None => self.passwords.remove(&id),
        };
        match kek {
            Some(k) => self.keks.insert(id, k),
            None => self.keks.remove(&id),
        };
        match pending {
            Some(p) => self.pending.insert(id, p),
            None => self.pending.remove(&id),
        };
        if let (Some(st), true) = (st, keyed) {
            let to_keys = |p: Option<([u8; 16], [u8; 16])>| p.map(|(e, a)| Keys::new(&e, &a));
            codec(py, self.inner.keys.set_alternates(&st, to_keys(previous), to_keys(pending)))?;
        }
        Ok(id)
    }

    /// Meter `meter`'s (CT ratio, VT ratio).
    fn ratios(&self, meter: u32) -> PyResult<(f64, f64)> {
        let r = self.known(meter)?.ratios;
        Ok((r.ct, r.vt))
    }

    /// Polled rows `[obis, ts, value, unit, status]` of meter `meter` to primary values,
    /// in place, by the same rule as its pushes (value × the factor of its unit). One
    /// call per command's rows; returns how many values changed.
    fn to_primary(&self, meter: u32, rows: &Bound<'_, PyList>) -> PyResult<usize> {
        let r = self.known(meter)?.ratios;
        if r.is_direct() {
            return Ok(0);
        }
        let mut changed = 0;
        for row in rows.iter() {
            let row = row.cast::<PyList>()?;
            let value: f64 = row.get_item(2)?.extract()?;
            let unit: String = row.get_item(3)?.extract()?;
            let f = r.factor(&unit);
            if f != 1.0 {
                row.set_item(2, value * f)?;
                changed += 1;
            }
        }
        Ok(changed)
    }

    /// (has previous keys, has pending keys) of meter `meter`: where a rotation stands.
    fn rotation_state(&self, py: Python<'_>, meter: u32) -> PyResult<(bool, bool)> {
        let st = self.title_of(meter)?;
        codec(py, self.inner.keys.alternates(&st))
    }

    /// Whether meter `meter` has a master key (KEK) to receive new keys under.
    fn has_kek(&self, meter: u32) -> bool {
        self.keks.contains_key(&meter)
    }

    /// Draws new keys (EK, AK) for meter `meter` from the OS random source, here, and
    /// holds them as its pending keys; returns them wrapped under `master` (for the
    /// store) with the 24 bytes of `nonces`. They never exist in Python.
    fn new_keys<'py>(
        &mut self,
        py: Python<'py>,
        meter: u32,
        master: &MasterKey,
        nonces: &[u8],
    ) -> PyResult<(Bound<'py, PyBytes>, Bound<'py, PyBytes>)> {
        let st = self.title_of(meter)?;
        if !self.keks.contains_key(&meter) {
            let serial = &self.known(meter)?.serial;
            return Err(local_error(
                py,
                "key rotation",
                format!("meter {serial} has no master key (kek) to wrap new keys"),
            ));
        }
        if nonces.len() != 24 {
            return Err(local_error(py, "nonces", "24 bytes needed"));
        }
        let mut fresh = [0u8; 32];
        getrandom::fill(&mut fresh).map_err(|e| local_error(py, "random source", e.to_string()))?;
        let ek: [u8; 16] = fresh[..16].try_into().expect("16 bytes");
        let ak: [u8; 16] = fresh[16..].try_into().expect("16 bytes");
        let serial = self.known(meter)?.serial.clone();
        let n1: [u8; 12] = nonces[..12].try_into().expect("12 bytes");
        let n2: [u8; 12] = nonces[12..].try_into().expect("12 bytes");
        let wek = codec(py, master.inner.wrap(&ek, "ek", &serial, &n1))?;
        let wak = codec(py, master.inner.wrap(&ak, "ak", &serial, &n2))?;
        let (previous, _) = codec(py, self.inner.keys.alternates(&st))?;
        if previous {
            // A second rotation before the first one's grace ran out: the oldest keys go.
            codec(py, self.inner.keys.drop_previous(&st))?;
        }
        codec(py, self.inner.keys.set_alternates(&st, None, Some(Keys::new(&ek, &ak))))?;
        self.pending.insert(meter, (ek, ak));
        Ok((PyBytes::new(py, &wek), PyBytes::new(py, &wak)))
    }

    /// The `key_transfer` parameter (A-XDR) carrying meter `meter`'s pending keys, each
    /// wrapped under its master key (RFC 3394): the global unicast encryption key and
    /// the authentication key.
    fn key_transfer<'py>(&self, py: Python<'py>, meter: u32) -> PyResult<Bound<'py, PyBytes>> {
        let serial = &self.known(meter)?.serial;
        let kek = self
            .keks
            .get(&meter)
            .ok_or_else(|| local_error(py, "key rotation", format!("meter {serial} has no master key (kek)")))?;
        let (ek, ak) = self
            .pending
            .get(&meter)
            .ok_or_else(|| local_error(py, "key rotation", format!("meter {serial} has no new keys pending")))?;
        let p = codec(
            py,
            crate::keytransfer::parameter(
                kek,
                &[(crate::keytransfer::GLOBAL_UNICAST_ENCRYPTION, *ek), (crate::keytransfer::AUTHENTICATION, *ak)],
            ),
        )?;
        Ok(PyBytes::new(py, &codec(py, p.to_bytes())?))
    }

    /// Makes meter `meter`'s pending keys current (its current ones become previous), to
    /// verify them with a fresh association.
    fn promote_keys(&mut self, py: Python<'_>, meter: u32) -> PyResult<()> {
        let st = self.title_of(meter)?;
        codec(py, self.inner.keys.promote(&st))
    }

    /// Undoes `promote_keys`: the previous keys are current again, the new ones pending.
    fn revert_keys(&mut self, py: Python<'_>, meter: u32) -> PyResult<()> {
        let st = self.title_of(meter)?;
        codec(py, self.inner.keys.revert(&st))
    }

    /// Forgets meter `meter`'s previous keys (their grace time is over) or, with
    /// `pending`, its pending ones (the meter refused them).
    #[pyo3(signature = (meter, *, pending = false))]
    fn drop_keys(&mut self, py: Python<'_>, meter: u32, pending: bool) -> PyResult<()> {
        let st = self.title_of(meter)?;
        if pending {
            self.pending.remove(&meter);
            codec(py, self.inner.keys.drop_pending(&st))
        } else {
            codec(py, self.inner.keys.drop_previous(&st))
        }
    }

    /// Whether meter `meter` has an LLS password.
    fn has_password(&self, meter: u32) -> bool {
        self.passwords.contains_key(&meter)
    }

    /// Completes an AARQ for LLS (mechanism "low", built without a value) with meter
    /// `meter`'s password; the password never reaches Python.
    fn lls_aarq<'py>(&self, py: Python<'py>, meter: u32, aarq: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
        let pw = self
            .passwords
            .get(&meter)
            .ok_or_else(|| local_error(py, "LLS", format!("meter {meter} has no password")))?;
        let mut a = match codec(py, Apdu::decode(aarq))? {
            Apdu::Aarq(a) if a.mechanism_name.map(|m| m.0) == Some(1) => a,
            _ => return Err(local_error(py, "LLS", "expected an AARQ with the low-level mechanism")),
        };
        a.calling_authentication_value = Some(pw.clone());
        Ok(PyBytes::new(py, &codec(py, Apdu::Aarq(a).to_bytes())?))
    }

    /// Remembers, until `until` (Unix seconds), that the store does not know a meter.
    #[pyo3(signature = (*, until, system_title = None, serial = None))]
    fn mark_unknown(
        &mut self,
        py: Python<'_>,
        until: i64,
        system_title: Option<&[u8]>,
        serial: Option<&[u8]>,
    ) -> PyResult<()> {
        match (system_title, serial) {
            (Some(t), None) => self.inner.mark_unknown(LookupKey::Title(title(py, t)?), until),
            (None, Some(s)) => self.inner.mark_unknown(LookupKey::Serial(s.to_vec()), until),
            _ => return Err(local_error(py, "lookup key", "give exactly one of system_title and serial")),
        }
        Ok(())
    }

    fn serial(&self, meter: u32) -> PyResult<String> {
        Ok(self.known(meter)?.serial.clone())
    }

    /// The meter id of a serial or system title, if the directory has it.
    #[pyo3(signature = (*, serial = None, system_title = None))]
    fn find(&self, serial: Option<&str>, system_title: Option<&[u8]>) -> Option<u32> {
        if let Some(s) = serial {
            return self.inner.by_serial(s.as_bytes());
        }
        system_title.and_then(|t| <[u8; 8]>::try_from(t).ok()).and_then(|st| self.inner.by_title(&st))
    }

    /// (serial, model, system title or None, has keys) of a meter id.
    #[allow(clippy::type_complexity)]
    fn meter_info<'py>(
        &self,
        py: Python<'py>,
        meter: u32,
    ) -> PyResult<(String, String, Option<Bound<'py, PyBytes>>, bool)> {
        let m = self.known(meter)?;
        let model = self.inner.profile(m.profile).name.clone();
        Ok((m.serial.clone(), model, m.system_title.map(|t| PyBytes::new(py, &t)), m.ciphered))
    }

    /// Protects a request to meter `meter` with its keys and the next counter towards it
    /// (as `KeyTable.encipher`); the caller persists the counters of the meter's title.
    #[pyo3(signature = (meter, own_title, apdu, *, security_control = 0x30, general = false))]
    fn encipher<'py>(
        &mut self,
        py: Python<'py>,
        meter: u32,
        own_title: &[u8],
        apdu: &[u8],
        security_control: u8,
        general: bool,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let (st, own) = (self.title_of(meter)?, title(py, own_title)?);
        encipher_apdu(py, &mut self.inner.keys, &st, &own, apdu, security_control, general, false)
    }

    /// Verifies, decrypts and replay-checks a ciphered APDU from meter `meter` (one
    /// without a system title of its own, such as the glo-initiate-response inside an
    /// AARE) under the directory's policy; returns the plaintext APDU.
    fn decipher<'py>(&mut self, py: Python<'py>, meter: u32, apdu: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
        let st = self.title_of(meter)?;
        let policy = self.inner.policy;
        let d = decipher_apdu(py, &mut self.inner.keys, apdu, Some(&st), policy)?;
        Ok(PyBytes::new(py, &d.plaintext))
    }

    /// HLS-GMAC pass 3 towards meter `meter` (see `KeyTable.hls_response`).
    fn hls_response<'py>(
        &mut self,
        py: Python<'py>,
        meter: u32,
        own_title: &[u8],
        challenge: &[u8],
    ) -> PyResult<Bound<'py, PyBytes>> {
        let (st, own) = (self.title_of(meter)?, title(py, own_title)?);
        hls_pass3(py, &mut self.inner.keys, &st, &own, challenge)
    }

    /// HLS-GMAC pass 4: checks meter `meter`'s f(challenge); returns its counter.
    fn verify_hls_response(&self, py: Python<'_>, meter: u32, challenge: &[u8], response: &[u8]) -> PyResult<u32> {
        let st = self.title_of(meter)?;
        codec(py, codec(py, self.inner.keys.keys(&st))?.verify_hls_response(&st, challenge, response))
    }

    /// (system title, last received, next to send) for each title, to persist.
    fn counters<'py>(&self, py: Python<'py>, titles: Vec<Vec<u8>>) -> Vec<(Bound<'py, PyBytes>, Option<u32>, u32)> {
        titles
            .iter()
            .filter_map(|t| <[u8; 8]>::try_from(t.as_slice()).ok())
            .filter_map(|st| self.inner.keys.counters(&st).ok().map(|(r, s)| (PyBytes::new(py, &st), r, s)))
            .collect()
    }
}

impl Directory {
    fn known(&self, meter: u32) -> PyResult<&crate::session::MeterInfo> {
        if (meter as usize) < self.inner.len() {
            Ok(self.inner.meter(meter))
        } else {
            Err(PyValueError::new_err(format!("no meter {meter}")))
        }
    }

    fn title_of(&self, meter: u32) -> PyResult<SystemTitle> {
        let m = self.known(meter)?;
        m.system_title.ok_or_else(|| PyValueError::new_err(format!("meter {} has no system title", m.serial)))
    }
}

/// Rows of the worker's sessions, as RowBinary, until drained (once per loop turn).
#[pyclass(module = "headend._core")]
pub struct RowSink {
    pub(super) inner: RsRowSink,
}

#[pymethods]
impl RowSink {
    #[new]
    fn new() -> Self {
        RowSink { inner: RsRowSink::new() }
    }

    #[getter]
    fn empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// (readings RowBinary, rows, events RowBinary, rows, system titles whose counters moved).
    #[allow(clippy::type_complexity)]
    fn drain<'py>(
        &mut self,
        py: Python<'py>,
    ) -> (Bound<'py, PyBytes>, u64, Bound<'py, PyBytes>, u64, Vec<Bound<'py, PyBytes>>) {
        let ((r, rn), (e, en), touched) = self.inner.drain();
        (PyBytes::new(py, &r), rn, PyBytes::new(py, &e), en, touched.iter().map(|t| PyBytes::new(py, t)).collect())
    }

    /// Appends `events` rows made in Python (the worker's aggregated refusals), each
    /// (meter, ts, code, name, category, source, peer, detail, received_at): one road
    /// for events into the spool, whoever made them.
    #[allow(clippy::type_complexity)]
    fn add_events(&mut self, rows: Vec<(String, i64, u16, String, String, String, String, String, i64)>) {
        for (meter, ts, code, name, category, source, peer, detail, received_at) in &rows {
            self.inner.event(&EventRow {
                meter,
                ts: *ts,
                code: *code,
                name,
                category,
                source,
                peer,
                detail,
                received_at: *received_at,
            });
        }
    }

    /// Counts since the last call: pushes, readings, events and rejects by reason.
    fn take_stats<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.inner.take_stats();
        let d = PyDict::new(py);
        d.set_item("pushes", s.pushes)?;
        d.set_item("readings", s.readings)?;
        d.set_item("events", s.events)?;
        let rejects = PyDict::new(py);
        for (k, n) in s.rejects {
            rejects.set_item(k, n)?;
        }
        d.set_item("rejects", rejects)?;
        Ok(d)
    }

    /// Column order of the RowBinary blocks, per table.
    #[staticmethod]
    fn columns() -> Vec<(&'static str, Vec<&'static str>)> {
        vec![("readings", READINGS_COLUMNS.to_vec()), ("events", EVENTS_COLUMNS.to_vec())]
    }
}

// -- what a session tells Python: one class per kind of event ------------------------

/// The session does not know the sender: look the meter up by its system title or its
/// serial (one of them is set). Its APDUs wait meanwhile.
#[pyclass(module = "headend._core", frozen, get_all)]
pub struct Lookup {
    pub system_title: Option<Py<PyBytes>>,
    pub serial: Option<Py<PyBytes>>,
}

/// A meter of the directory (`meter`, its serial) spoke for the first time on this
/// connection, at link address `source`.
#[pyclass(module = "headend._core", frozen, get_all)]
pub struct Identified {
    pub meter: u32,
    pub serial: String,
    pub source: u32,
}

/// An APDU that is not a push (a response to the head-end's own request, deciphered
/// and replay-checked), from link address `source` (and meter, when known).
#[pyclass(module = "headend._core", frozen, get_all)]
pub struct ApduIn {
    pub source: u32,
    pub meter: Option<u32>,
    pub apdu: Py<PyBytes>,
}

/// An HDLC frame that is not UI (the client's link layer: UA, RR, I, DISC...), with
/// its control byte; `info` only where the frame carries no APDU.
#[pyclass(module = "headend._core", frozen, get_all)]
pub struct LinkFrame {
    pub source: u32,
    pub destination: u32,
    pub control: &'static str,
    pub info: Py<PyBytes>,
    pub byte: u8,
    pub segmented: bool,
}

/// Something refused: its reason (the `reject:` kind), what was wrong, the meter when
/// known (directory id). Already counted in the sink's stats.
#[pyclass(module = "headend._core", frozen, get_all)]
pub struct Reject {
    pub reason: &'static str,
    pub message: String,
    pub meter: Option<u32>,
}

/// `__match_args__` (so `case Identified(meter, serial, source)` works) and a repr.
macro_rules! event_class {
    ($t:ident: $($f:ident),*) => {
        #[pymethods]
        impl $t {
            #[classattr]
            fn __match_args__() -> ($(event_class!(@str $f),)*) {
                ($(stringify!($f),)*)
            }

            fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
                let fields: Vec<String> = [$(stringify!($f)),*]
                    .iter()
                    .map(|f| Ok(format!("{f}={}", slf.getattr(*f)?.repr()?)))
                    .collect::<PyResult<_>>()?;
                Ok(format!("{}({})", stringify!($t), fields.join(", ")))
            }
        }
    };
    (@str $f:ident) => { &'static str };
}
event_class!(Lookup: system_title, serial);
event_class!(Identified: meter, serial, source);
event_class!(ApduIn: source, meter, apdu);
event_class!(LinkFrame: source, destination, control, info, byte, segmented);
event_class!(Reject: reason, message, meter);

pub(super) fn session_events<'py>(
    py: Python<'py>,
    dir: &RsDirectory,
    events: Vec<SessionEvent>,
) -> PyResult<Bound<'py, PyList>> {
    let list = PyList::empty(py);
    for ev in events {
        let item = match ev {
            SessionEvent::Lookup(LookupKey::Title(st)) => {
                Bound::new(py, Lookup { system_title: Some(PyBytes::new(py, &st).unbind()), serial: None })?.into_any()
            }
            SessionEvent::Lookup(LookupKey::Serial(s)) => {
                Bound::new(py, Lookup { system_title: None, serial: Some(PyBytes::new(py, &s).unbind()) })?.into_any()
            }
            SessionEvent::Identified { meter, source } => {
                Bound::new(py, Identified { meter, serial: dir.meter(meter).serial.clone(), source })?.into_any()
            }
            SessionEvent::Apdu { source, meter, apdu } => {
                Bound::new(py, ApduIn { source, meter, apdu: PyBytes::new(py, &apdu).unbind() })?.into_any()
            }
            SessionEvent::Link { source, destination, control, byte, segmented, info } => Bound::new(
                py,
                LinkFrame { source, destination, control, info: PyBytes::new(py, &info).unbind(), byte, segmented },
            )?
            .into_any(),
            SessionEvent::Reject { kind, message, meter } => {
                Bound::new(py, Reject { reason: kind, message, meter })?.into_any()
            }
        };
        list.append(item)?;
    }
    Ok(list)
}

/// One meter connection: bytes in, rows into a RowSink, a few events out.
#[pyclass(module = "headend._core")]
pub struct Session {
    pub(super) inner: RsSession,
}

#[pymethods]
impl Session {
    #[new]
    #[pyo3(signature = (peer, framing = "auto", max_apdu = 65535, max_pending = 64))]
    fn new(py: Python<'_>, peer: String, framing: &str, max_apdu: usize, max_pending: usize) -> PyResult<Self> {
        let framing = framing_of(py, framing)?;
        let cfg = StreamConfig { framing, max_wrapper_apdu: max_apdu.min(65_535), max_hdlc_apdu: max_apdu };
        Ok(Session { inner: RsSession::new(peer, cfg, max_pending) })
    }

    /// Feeds bytes (b"": the peer closed) at time `now` (Unix seconds); rows go to
    /// `sink`; returns the events Python must act on. `datagram`: `data` is one UDP
    /// datagram (whole frames; a partial one is refused, not joined to the next).
    #[pyo3(signature = (data, now, directory, sink, datagram = false))]
    fn feed<'py>(
        &mut self,
        py: Python<'py>,
        data: &[u8],
        now: i64,
        directory: &mut Directory,
        sink: &mut RowSink,
        datagram: bool,
    ) -> PyResult<Bound<'py, PyList>> {
        let (s, d, k) = (&mut self.inner, &mut directory.inner, &mut sink.inner);
        let events = guarded(py, false, || {
            let mut out = Vec::new();
            if datagram {
                s.feed_datagram(data, now, d, k, &mut out);
            } else {
                s.feed(data, now, d, k, &mut out);
            }
            out
        })?;
        session_events(py, &directory.inner, events)
    }

    /// Runs the APDUs that waited for a meter lookup again.
    fn retry<'py>(
        &mut self,
        py: Python<'py>,
        now: i64,
        directory: &mut Directory,
        sink: &mut RowSink,
    ) -> PyResult<Bound<'py, PyList>> {
        let (s, d, k) = (&mut self.inner, &mut directory.inner, &mut sink.inner);
        let events = guarded(py, false, || {
            let mut out = Vec::new();
            s.retry(now, d, k, &mut out);
            out
        })?;
        session_events(py, &directory.inner, events)
    }

    #[getter]
    fn peer(&self) -> &str {
        &self.inner.peer
    }

    #[getter]
    fn framing(&self) -> &'static str {
        framing_name(self.inner.framing())
    }

    /// APDUs waiting for a meter lookup.
    #[getter]
    fn pending(&self) -> usize {
        self.inner.pending()
    }

    /// Binds meter `meter` (a directory id) to link address `source` on this
    /// connection: the head-end dialled it, so it is known before it speaks.
    fn bind(&mut self, source: u32, meter: u32) {
        self.inner.bind(source, meter);
    }

    /// Bytes of a partial frame held back.
    #[getter]
    fn buffered(&self) -> usize {
        self.inner.buffered()
    }

    /// Counters: bytes_in, frames, pushes, readings, events, errors, meters (ids).
    #[getter]
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = &self.inner.stats;
        let d = PyDict::new(py);
        d.set_item("bytes_in", s.bytes_in)?;
        d.set_item("frames", s.frames)?;
        d.set_item("pushes", s.pushes)?;
        d.set_item("readings", s.readings)?;
        d.set_item("events", s.events)?;
        d.set_item("errors", s.errors)?;
        d.set_item("meters", s.meters.clone())?;
        Ok(d)
    }
}
