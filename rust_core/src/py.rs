//! The Python binding, `headend._core`. The only module that mentions pyo3.
//!
//! The boundary is narrow and batch-minded: a stream decoder per connection fed with
//! whatever `data_received` got, a push decoder that turns a whole buffer of frames into
//! columns (without the GIL), a key table that never hands keys back, and JSON-form
//! encode/decode for everything else. Errors map in one place ([`to_pyerr`]) onto the
//! exception classes of `headend.errors`; panics are caught and reported, never allowed
//! to unwind into a worker.

use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple, PyType};
use serde_json::{Map, Number, Value};

use crate::apdu::{Apdu, Ciphered, CipheredKind, SecurityControl};
use crate::axdr::{self, Data};
use crate::consumption::{self, Channel, Job};
use crate::error::Error;
use crate::hdlc::{self, Address, Control};
use crate::keywrap::MasterKey as RsMasterKey;
use crate::obis::ObisCode;
use crate::profile::Profile;
use crate::push::{PushBatch as RsPushBatch, PushDecoder as RsPushDecoder};
use crate::rows::{EventRow, RowSink as RsRowSink, EVENTS_COLUMNS, READINGS_COLUMNS};
use crate::security::{self, KeyTable as RsKeyTable, Keys, Policy, SystemTitle};
use crate::session::{Directory as RsDirectory, LookupKey, Session as RsSession, SessionEvent};
use crate::stream::{self, Event, Framing, StreamConfig, Transport};
use crate::vee::VeeConfig;
use crate::{units, wrapper};

// ---------------------------------------------------------------------------------
// Errors

static ERROR_CLASSES: [PyOnceLock<Py<PyType>>; 8] = [const { PyOnceLock::new() }; 8];
const ERROR_NAMES: [&str; 8] = [
    "IncompleteData",
    "RemoteProtocolError",
    "LimitExceeded",
    "UnsupportedFeature",
    "AuthenticationFailed",
    "ReplayedInvocationCounter",
    "UnknownSystemTitle",
    "LocalProtocolError",
];

fn error_class<'py>(py: Python<'py>, index: usize) -> PyResult<&'py Bound<'py, PyType>> {
    ERROR_CLASSES[index].import(py, "headend.errors", ERROR_NAMES[index])
}

/// The one mapping from codec errors to Python exceptions.
fn to_pyerr(py: Python<'_>, e: &Error) -> PyErr {
    let index = match e {
        Error::Incomplete { .. } => 0,
        Error::Invalid { .. } => 1,
        Error::TooLong { .. } => 2,
        Error::Unsupported { .. } => 3,
        Error::AuthenticationFailed => 4,
        Error::Replay { .. } => 5,
        Error::UnknownSystemTitle { .. } => 6,
        Error::Encode { .. } => 7,
    };
    let build = || -> PyResult<PyErr> {
        let cls = error_class(py, index)?;
        let exc = cls.call1((e.to_string(),))?;
        exc.setattr("kind", e.kind())?;
        exc.setattr("dlms_error", e.exception_service_error())?;
        match e {
            Error::Incomplete { what, needed } => {
                exc.setattr("field", *what)?;
                exc.setattr("needed", *needed)?;
            }
            Error::Invalid { what, offset, .. } | Error::Unsupported { what, offset, .. } => {
                exc.setattr("field", *what)?;
                exc.setattr("offset", *offset)?;
            }
            Error::TooLong { what, offset, len, limit } => {
                exc.setattr("field", *what)?;
                exc.setattr("offset", *offset)?;
                exc.setattr("length", *len)?;
                exc.setattr("limit", *limit)?;
            }
            Error::Replay { system_title, received, last } => {
                exc.setattr("system_title", PyBytes::new(py, system_title))?;
                exc.setattr("received", *received)?;
                exc.setattr("last", *last)?;
            }
            Error::UnknownSystemTitle { system_title } => {
                exc.setattr("system_title", PyBytes::new(py, system_title))?;
            }
            Error::Encode { what, .. } => exc.setattr("field", *what)?,
            Error::AuthenticationFailed => {}
        }
        Ok(PyErr::from_value(exc))
    };
    build().unwrap_or_else(|err| err)
}

fn local_error(py: Python<'_>, what: &'static str, reason: impl Into<String>) -> PyErr {
    to_pyerr(py, &Error::encode(what, reason))
}

/// Runs codec work, optionally without the GIL, turning a panic into an exception.
/// A panic here is our bug; the worker must survive it and the connection be dropped.
fn guarded<T: Send>(py: Python<'_>, release_gil: bool, f: impl FnOnce() -> T + Send) -> PyResult<T> {
    let run = move || catch_unwind(AssertUnwindSafe(f));
    let out = if release_gil { py.detach(run) } else { run() };
    out.map_err(|p| {
        let msg = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        match error_class(py, 1) {
            Ok(cls) => PyErr::from_type(cls.clone(), format!("internal codec error: {msg}")),
            Err(e) => e,
        }
    })
}

/// An OBIS code from its text; a bad one is the caller's error.
fn obis_code(py: Python<'_>, text: &str) -> PyResult<ObisCode> {
    text.parse().map_err(|e: crate::obis::ObisParseError| local_error(py, "OBIS code", e.to_string()))
}

/// OBIS codes from their texts, packed as the tables store them.
fn obis_codes(py: Python<'_>, texts: &[String]) -> PyResult<Vec<u64>> {
    texts.iter().map(|t| Ok(obis_code(py, t)?.to_u64())).collect()
}

/// Meter serials as Python bytes.
fn serials<'py>(py: Python<'py>, found: &[Vec<u8>]) -> Vec<Bound<'py, PyBytes>> {
    found.iter().map(|m| PyBytes::new(py, m)).collect()
}

fn codec<T>(py: Python<'_>, r: crate::error::Result<T>) -> PyResult<T> {
    r.map_err(|e| to_pyerr(py, &e))
}

// ---------------------------------------------------------------------------------
// JSON form <-> Python objects

fn value_to_py<'py>(py: Python<'py>, v: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match v {
        Value::Null => py.None().into_bound(py),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                u.into_pyobject(py)?.into_any()
            } else if let Some(i) = n.as_i64() {
                i.into_pyobject(py)?.into_any()
            } else {
                n.as_f64().unwrap_or(f64::NAN).into_pyobject(py)?.into_any()
            }
        }
        Value::String(s) => PyString::new(py, s).into_any(),
        Value::Array(items) => {
            let list = PyList::empty(py);
            for x in items {
                list.append(value_to_py(py, x)?)?;
            }
            list.into_any()
        }
        Value::Object(m) => {
            let d = PyDict::new(py);
            for (k, x) in m {
                d.set_item(k, value_to_py(py, x)?)?;
            }
            d.into_any()
        }
    })
}

fn py_to_value(obj: &Bound<'_, PyAny>, depth: usize) -> PyResult<Value> {
    if depth > 64 {
        return Err(PyValueError::new_err("structure nested too deeply"));
    }
    if obj.is_none() {
        return Ok(Value::Null);
    }
    if let Ok(b) = obj.cast::<PyBool>() {
        return Ok(Value::Bool(b.is_true()));
    }
    if obj.is_instance_of::<PyInt>() {
        if let Ok(u) = obj.extract::<u64>() {
            return Ok(Value::Number(u.into()));
        }
        let i: i64 = obj.extract().map_err(|_| PyValueError::new_err(format!("integer {obj} does not fit 64 bits")))?;
        return Ok(Value::Number(i.into()));
    }
    if let Ok(f) = obj.cast::<PyFloat>() {
        let v = f.value();
        return Ok(Number::from_f64(v).map(Value::Number).unwrap_or_else(|| {
            Value::String(if v.is_nan() {
                "NaN".into()
            } else if v > 0.0 {
                "inf".into()
            } else {
                "-inf".into()
            })
        }));
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(Value::String(s.to_str()?.to_string()));
    }
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(Value::String(crate::data_json::hex(b.as_bytes())));
    }
    if let Ok(d) = obj.cast::<PyDict>() {
        let mut m = Map::new();
        for (k, v) in d.iter() {
            let key: String = k.extract().map_err(|_| PyTypeError::new_err("mapping keys must be str"))?;
            m.insert(key, py_to_value(&v, depth + 1)?);
        }
        return Ok(Value::Object(m));
    }
    if obj.is_instance_of::<PyList>() || obj.is_instance_of::<PyTuple>() {
        let mut out = Vec::new();
        for x in obj.try_iter()? {
            out.push(py_to_value(&x?, depth + 1)?);
        }
        return Ok(Value::Array(out));
    }
    Err(PyTypeError::new_err(format!("cannot express {} in the JSON form", obj.get_type().name()?)))
}

// ---------------------------------------------------------------------------------
// Small conversions

fn title(py: Python<'_>, b: &[u8]) -> PyResult<SystemTitle> {
    b.try_into().map_err(|_| local_error(py, "system title", format!("{} bytes (8 needed)", b.len())))
}

fn key16(py: Python<'_>, what: &'static str, b: &[u8]) -> PyResult<[u8; 16]> {
    b.try_into().map_err(|_| local_error(py, what, format!("{} bytes (16 needed)", b.len())))
}

fn framing_of(py: Python<'_>, s: &str) -> PyResult<Framing> {
    match s {
        "auto" => Ok(Framing::Auto),
        "wrapper" => Ok(Framing::Wrapper),
        "hdlc" => Ok(Framing::Hdlc),
        other => Err(local_error(py, "framing", format!("{other:?} (auto, wrapper or hdlc)"))),
    }
}

fn framing_name(f: Framing) -> &'static str {
    match f {
        Framing::Auto => "auto",
        Framing::Wrapper => "wrapper",
        Framing::Hdlc => "hdlc",
    }
}

// ---------------------------------------------------------------------------------
// Stream decoding

/// One frame from a stream: transport envelope and, when complete, the APDU.
#[pyclass(module = "headend._core", frozen, get_all)]
pub struct Frame {
    framing: &'static str,
    offset: u64,
    wire_len: usize,
    source: u32,
    destination: u32,
    source_lower: Option<u16>,
    destination_lower: Option<u16>,
    control: Option<&'static str>,
    send_seq: Option<u8>,
    recv_seq: Option<u8>,
    poll_final: bool,
    segmented: bool,
    llc: Option<&'static str>,
    apdu: Option<Py<PyBytes>>,
    info: Py<PyBytes>,
}

#[pymethods]
impl Frame {
    fn __repr__(&self) -> String {
        format!(
            "<Frame {} {} {}->{} apdu={}>",
            self.framing,
            self.control.unwrap_or(""),
            self.source,
            self.destination,
            self.apdu.as_ref().map_or("None".to_string(), |_| "bytes".to_string())
        )
    }
}

/// Bytes that were not a valid frame; the decoder skipped past them.
#[pyclass(module = "headend._core", frozen, get_all)]
pub struct FrameError {
    offset: u64,
    kind: &'static str,
    message: String,
}

#[pymethods]
impl FrameError {
    fn __repr__(&self) -> String {
        format!("<FrameError at {}: {}>", self.offset, self.message)
    }
}

fn frame_to_py(py: Python<'_>, f: stream::Frame) -> Frame {
    let mut out = Frame {
        framing: "wrapper",
        offset: f.offset,
        wire_len: f.wire_len,
        source: 0,
        destination: 0,
        source_lower: None,
        destination_lower: None,
        control: None,
        send_seq: None,
        recv_seq: None,
        poll_final: false,
        segmented: false,
        llc: None,
        apdu: f.apdu.map(|a| PyBytes::new(py, &a).unbind()),
        info: PyBytes::new(py, &f.info).unbind(),
    };
    match f.transport {
        Transport::Wrapper(h) => {
            out.source = h.source_wport as u32;
            out.destination = h.destination_wport as u32;
        }
        Transport::Hdlc { destination, source, control, segmented, llc } => {
            out.framing = "hdlc";
            out.source = source.upper as u32;
            out.destination = destination.upper as u32;
            out.source_lower = source.lower;
            out.destination_lower = destination.lower;
            out.control = Some(control.name());
            out.poll_final = control.poll_final();
            match control {
                Control::I { send_seq, recv_seq, .. } => {
                    out.send_seq = Some(send_seq);
                    out.recv_seq = Some(recv_seq);
                }
                Control::RR { recv_seq, .. } | Control::RNR { recv_seq, .. } => out.recv_seq = Some(recv_seq),
                _ => {}
            }
            out.segmented = segmented;
            out.llc = llc.map(|l| match l {
                stream::Llc::Command => "command",
                stream::Llc::Response => "response",
            });
        }
    }
    out
}

/// A per-connection stream decoder (see `rust_core/src/stream.rs`).
#[pyclass(module = "headend._core")]
pub struct StreamDecoder {
    inner: stream::StreamDecoder,
}

#[pymethods]
impl StreamDecoder {
    #[new]
    #[pyo3(signature = (framing = "auto", max_apdu = 65535))]
    fn new(py: Python<'_>, framing: &str, max_apdu: usize) -> PyResult<Self> {
        let framing = framing_of(py, framing)?;
        Ok(StreamDecoder {
            inner: stream::StreamDecoder::new(StreamConfig {
                framing,
                max_wrapper_apdu: max_apdu.min(65_535),
                max_hdlc_apdu: max_apdu,
            }),
        })
    }

    /// Stores bytes; b"" means the peer closed the connection.
    fn receive(&mut self, data: &[u8]) {
        self.inner.receive(data);
    }

    /// Every frame and error available now.
    fn events<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let list = PyList::empty(py);
        let inner = &mut self.inner;
        let events = guarded(py, false, || std::iter::from_fn(|| inner.next_event()).collect::<Vec<_>>())?;
        for ev in events {
            match ev {
                Event::Frame(f) => list.append(Bound::new(py, frame_to_py(py, f))?)?,
                Event::Error { offset, error } => {
                    list.append(Bound::new(py, FrameError { offset, kind: error.kind(), message: error.to_string() })?)?
                }
            }
        }
        Ok(list)
    }

    /// `receive(data)` then `events()`.
    fn feed<'py>(&mut self, py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyList>> {
        self.inner.receive(data);
        self.events(py)
    }

    #[getter]
    fn framing(&self) -> &'static str {
        framing_name(self.inner.framing())
    }

    #[getter]
    fn pending(&self) -> usize {
        self.inner.pending()
    }

    #[getter]
    fn skipped(&self) -> u64 {
        self.inner.skipped()
    }
}

// ---------------------------------------------------------------------------------
// Keys

/// Per-meter keys and invocation counters. Keys go in and never come out.
#[pyclass(module = "headend._core")]
pub struct KeyTable {
    inner: RsKeyTable,
}

fn policy(require_authentication: bool, require_encryption: bool) -> Policy {
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

fn decipher_apdu(
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
fn encipher_apdu<'py>(
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
fn hls_pass3<'py>(
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

fn ciphered(py: Python<'_>, apdu: &[u8]) -> PyResult<Ciphered> {
    match guarded(py, false, || Apdu::decode(apdu))? {
        Ok(Apdu::Ciphered(c)) => Ok(c),
        Ok(other) => {
            Err(to_pyerr(py, &Error::invalid("ciphered APDU", 0, format!("{} is not ciphered", other.name()))))
        }
        Err(e) => Err(to_pyerr(py, &e)),
    }
}

fn envelope(py: Python<'_>, apdu: &[u8], general: bool, dedicated: bool) -> PyResult<CipheredKind> {
    if general {
        return Ok(CipheredKind(if dedicated { 0xDC } else { 0xDB }));
    }
    let t = *apdu.first().ok_or_else(|| local_error(py, "APDU", "empty"))?;
    CipheredKind::for_plaintext(t, dedicated).ok_or_else(|| {
        local_error(py, "APDU", format!("tag {t:#04x} has no service-specific ciphered form; use general=True"))
    })
}

// ---------------------------------------------------------------------------------
// Pushes

/// Decoded pushes as columns. See `rust_core/src/push.rs` for each column's meaning.
#[pyclass(module = "headend._core", frozen)]
pub struct PushBatch {
    inner: RsPushBatch,
    consumed: usize,
}

/// Little-endian encoding of a column's element type.
trait Le: Copy {
    const WIDTH: usize;
    fn put(self, out: &mut [u8]);
}

macro_rules! le {
    ($($t:ty),*) => {$(
        impl Le for $t {
            const WIDTH: usize = std::mem::size_of::<$t>();
            fn put(self, out: &mut [u8]) {
                out.copy_from_slice(&self.to_le_bytes());
            }
        }
    )*};
}
le!(u16, u32, u64, i64, f64);

/// A column as one new `bytes`, written in place (no intermediate copy).
fn le_bytes<'py, T: Le>(py: Python<'py>, v: &[T]) -> PyResult<Bound<'py, PyBytes>> {
    PyBytes::new_with(py, std::mem::size_of_val(v), |buf| {
        for (chunk, x) in buf.chunks_exact_mut(T::WIDTH).zip(v) {
            x.put(chunk);
        }
        Ok(())
    })
}

#[pymethods]
impl PushBatch {
    /// Number of pushes decoded.
    fn __len__(&self) -> usize {
        self.inner.pushes()
    }

    #[getter]
    fn values(&self) -> usize {
        self.inner.values()
    }

    /// Bytes of the input consumed (a partial trailing frame is not).
    #[getter]
    fn consumed(&self) -> usize {
        self.consumed
    }

    /// One column as little-endian machine values with its `array` typecode.
    fn column<'py>(&self, py: Python<'py>, name: &str) -> PyResult<(&'static str, Bound<'py, PyBytes>)> {
        let b = &self.inner;
        Ok(match name {
            "push_frame" => ("I", le_bytes(py, &b.push_frame)?),
            "push_kind" => ("B", PyBytes::new(py, &b.push_kind)),
            "push_system_title" => ("Q", le_bytes(py, &b.push_system_title)?),
            "push_invocation_counter" => ("I", le_bytes(py, &b.push_invocation_counter)?),
            "push_security_control" => ("B", PyBytes::new(py, &b.push_security_control)),
            "push_invoke_id" => ("I", le_bytes(py, &b.push_invoke_id)?),
            "push_time" => ("q", le_bytes(py, &b.push_time)?),
            "push_source" => ("I", le_bytes(py, &b.push_source)?),
            "push_first_value" => ("I", le_bytes(py, &b.push_first_value)?),
            "value_push" => ("I", le_bytes(py, &b.value_push)?),
            "value_index" => ("H", le_bytes(py, &b.value_index)?),
            "value_tag" => ("B", PyBytes::new(py, &b.value_tag)),
            "value" => ("d", le_bytes(py, &b.value)?),
            "value_blob_start" => ("I", le_bytes(py, &b.value_blob_start)?),
            "value_blob_len" => ("I", le_bytes(py, &b.value_blob_len)?),
            "blobs" => ("B", PyBytes::new(py, &b.blobs)),
            other => return Err(PyValueError::new_err(format!("no column {other:?}"))),
        })
    }

    /// Every value as (frame, system title, invocation counter, leaf index, type name,
    /// value, raw bytes or None). For tests and inspection; use `column` for volume.
    fn rows<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let b = &self.inner;
        let list = PyList::empty(py);
        for i in 0..b.values() {
            let p = b.value_push[i] as usize;
            let (s, l) = (b.value_blob_start[i] as usize, b.value_blob_len[i] as usize);
            let blob = (l > 0).then(|| PyBytes::new(py, &b.blobs[s..s + l]));
            list.append((
                b.push_frame[p],
                PyBytes::new(py, &b.push_system_title[p].to_be_bytes()),
                b.push_invocation_counter[p],
                b.value_index[i],
                axdr::type_name(b.value_tag[i]).unwrap_or("unknown"),
                b.value[i],
                blob,
            ))?;
        }
        Ok(list)
    }

    /// Frames that failed: (frame, kind, message).
    fn errors(&self) -> Vec<(u32, &'static str, String)> {
        self.inner.errors.iter().map(|(f, e)| (*f, e.kind(), e.to_string())).collect()
    }

    /// Frames that were not pushes: (frame, sender system title or None, plaintext APDU).
    fn others<'py>(&self, py: Python<'py>) -> Vec<(u32, Option<Bound<'py, PyBytes>>, Bound<'py, PyBytes>)> {
        self.inner
            .others
            .iter()
            .map(|(f, st, apdu)| (*f, (*st != 0).then(|| PyBytes::new(py, &st.to_be_bytes())), PyBytes::new(py, apdu)))
            .collect()
    }
}

/// Decodes buffers of pushed frames into `PushBatch` columns, without the GIL.
#[pyclass(module = "headend._core")]
pub struct PushDecoder {
    inner: RsPushDecoder,
}

#[pymethods]
impl PushDecoder {
    #[new]
    #[pyo3(signature = (*, require_authentication = true, require_encryption = false, max_apdu = 65535))]
    fn new(require_authentication: bool, require_encryption: bool, max_apdu: usize) -> Self {
        let mut inner = RsPushDecoder::new(policy(require_authentication, require_encryption));
        inner.max_apdu = max_apdu;
        PushDecoder { inner }
    }

    /// Decodes the complete frames in `frames` (back to back, one framing); a partial
    /// trailing frame is left (see `PushBatch.consumed`).
    #[pyo3(signature = (keys, frames, framing = "wrapper", first_frame = 0))]
    fn decode(
        &mut self,
        py: Python<'_>,
        keys: &mut KeyTable,
        frames: &[u8],
        framing: &str,
        first_frame: u32,
    ) -> PyResult<PushBatch> {
        let framing = framing_of(py, framing)?;
        let (dec, table) = (&mut self.inner, &mut keys.inner);
        // Releasing the GIL costs more than decoding a handful of frames.
        let release = frames.len() > 16 * 1024;
        let (batch, consumed) = guarded(py, release, || {
            let mut out = RsPushBatch::default();
            let used = dec.decode_frames(table, frames, framing, first_frame, &mut out);
            (out, used)
        })?;
        Ok(PushBatch { inner: batch, consumed })
    }

    /// Decodes a sequence of APDUs (already unframed). `sender` is the system title for
    /// service-specific ciphered APDUs.
    #[pyo3(signature = (keys, apdus, sender = None))]
    fn decode_apdus(
        &mut self,
        py: Python<'_>,
        keys: &mut KeyTable,
        apdus: Vec<Vec<u8>>,
        sender: Option<&[u8]>,
    ) -> PyResult<PushBatch> {
        let sender = sender.map(|s| title(py, s)).transpose()?;
        let (dec, table) = (&mut self.inner, &mut keys.inner);
        let batch = guarded(py, apdus.len() > 64, || {
            let mut out = RsPushBatch::default();
            for (i, a) in apdus.iter().enumerate() {
                dec.decode_apdu(table, a, i as u32, sender.as_ref(), 0, &mut out);
            }
            out
        })?;
        Ok(PushBatch { inner: batch, consumed: 0 })
    }
}

// ---------------------------------------------------------------------------------
// Server: master key, directory, row sink, sessions

/// The deployment's master key (AES-256). Wraps meter keys for storage; there is no
/// unwrap here: only `Directory.add_meter` unwraps, straight into its key table.
#[pyclass(module = "headend._core", frozen)]
pub struct MasterKey {
    inner: RsMasterKey,
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

/// The meters, models and keys a worker knows (filled lazily from the store).
#[pyclass(module = "headend._core")]
pub struct Directory {
    inner: RsDirectory,
    /// LLS passwords, unwrapped here and used only inside `lls_aarq`.
    passwords: std::collections::HashMap<u32, Vec<u8>>,
    /// Meters' master keys (KEK), used only to wrap new keys for `key_transfer`.
    keks: std::collections::HashMap<u32, [u8; 16]>,
    /// New keys (EK, AK) of a rotation in progress, for `key_transfer` (the key table
    /// holds them as cipher keys, which cannot be read back).
    pending: std::collections::HashMap<u32, ([u8; 16], [u8; 16])>,
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
    /// meter's master key, which wraps new keys for `key_transfer`.
    #[pyo3(signature = (serial, model, system_title = None, wrapped_ek = None, wrapped_ak = None, master = None, last_received = None, next_sent = None, *, wrapped_password = None, wrapped_kek = None, wrapped_previous = None, wrapped_pending = None))]
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
    ) -> PyResult<u32> {
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
    inner: RsRowSink,
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

fn session_events<'py>(py: Python<'py>, dir: &RsDirectory, events: Vec<SessionEvent>) -> PyResult<Bound<'py, PyList>> {
    let list = PyList::empty(py);
    for ev in events {
        let item = match ev {
            SessionEvent::Lookup(LookupKey::Title(st)) => {
                ("lookup", PyBytes::new(py, &st), py.None()).into_pyobject(py)?.into_any()
            }
            SessionEvent::Lookup(LookupKey::Serial(s)) => {
                ("lookup", py.None(), PyBytes::new(py, &s)).into_pyobject(py)?.into_any()
            }
            SessionEvent::Identified { meter, source } => {
                ("identified", meter, dir.meter(meter).serial.clone(), source).into_pyobject(py)?.into_any()
            }
            SessionEvent::Apdu { source, meter, apdu } => {
                ("apdu", source, meter, PyBytes::new(py, &apdu)).into_pyobject(py)?.into_any()
            }
            SessionEvent::Link { source, destination, control, byte, segmented, info } => {
                ("link", source, destination, control, PyBytes::new(py, &info), byte, segmented)
                    .into_pyobject(py)?
                    .into_any()
            }
            SessionEvent::Reject { kind, message, meter } => {
                ("reject", kind, message, meter).into_pyobject(py)?.into_any()
            }
        };
        list.append(item)?;
    }
    Ok(list)
}

/// One meter connection: bytes in, rows into a RowSink, a few events out.
#[pyclass(module = "headend._core")]
pub struct Session {
    inner: RsSession,
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
    /// `sink`; returns the events Python must act on.
    fn feed<'py>(
        &mut self,
        py: Python<'py>,
        data: &[u8],
        now: i64,
        directory: &mut Directory,
        sink: &mut RowSink,
    ) -> PyResult<Bound<'py, PyList>> {
        let (s, d, k) = (&mut self.inner, &mut directory.inner, &mut sink.inner);
        let events = guarded(py, false, || {
            let mut out = Vec::new();
            s.feed(data, now, d, k, &mut out);
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

// ---------------------------------------------------------------------------------
// Functions

/// Decodes one APDU into its JSON form (dicts, lists, str, int, float, bool, None).
#[pyfunction]
fn decode_apdu<'py>(py: Python<'py>, apdu: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    let v = codec(py, guarded(py, false, || Apdu::decode(apdu).map(|a| a.to_json()))?)?;
    value_to_py(py, &v)
}

/// Encodes an APDU from its JSON form; bytes are accepted wherever hex is.
#[pyfunction]
fn encode_apdu<'py>(py: Python<'py>, apdu: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
    let v = py_to_value(apdu, 0)?;
    let a = Apdu::from_json(&v).map_err(|e| local_error(py, "APDU", e))?;
    Ok(PyBytes::new(py, &codec(py, a.to_bytes())?))
}

/// Decodes one A-XDR value into its JSON form.
#[pyfunction]
fn decode_data<'py>(py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    let v = codec(py, guarded(py, false, || Data::from_bytes(data).map(|d| d.to_json()))?)?;
    value_to_py(py, &v)
}

/// Encodes one A-XDR value from its JSON form.
#[pyfunction]
fn encode_data<'py>(py: Python<'py>, value: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
    let v = py_to_value(value, 0)?;
    let d = Data::from_json(&v).map_err(|e| local_error(py, "Data", e))?;
    Ok(PyBytes::new(py, &codec(py, d.to_bytes())?))
}

/// Decodes exactly one frame (wrapper, HDLC, or a bare APDU with framing "apdu") into
/// {"framing": {...} | None, "apdu": bytes | None, "info": bytes}.
#[pyfunction]
#[pyo3(signature = (frame, framing = "auto"))]
fn decode_frame<'py>(py: Python<'py>, frame: &[u8], framing: &str) -> PyResult<Bound<'py, PyDict>> {
    let framing = match framing {
        "apdu" => None,
        "auto" if frame.first().is_some_and(|&b| b != 0x00 && b != hdlc::FLAG) => None,
        other => Some(framing_of(py, other)?),
    };
    let out = PyDict::new(py);
    let Some(framing) = framing else {
        out.set_item("framing", py.None())?;
        out.set_item("apdu", PyBytes::new(py, frame))?;
        out.set_item("info", PyBytes::new(py, &[]))?;
        return Ok(out);
    };
    let mut d = stream::StreamDecoder::new(StreamConfig { framing, max_wrapper_apdu: 65_535, max_hdlc_apdu: 1 << 20 });
    d.receive(frame);
    d.receive(&[]);
    let events = guarded(py, false, || std::iter::from_fn(|| d.next_event()).collect::<Vec<_>>())?;
    let mut frames = Vec::new();
    for ev in events {
        match ev {
            Event::Frame(f) => frames.push(f),
            Event::Error { offset, error } => {
                return Err(to_pyerr(py, &relocate(error, offset)));
            }
        }
    }
    // One frame, or the segments of one APDU.
    let Some(last) = frames.last() else {
        return Err(to_pyerr(py, &Error::Incomplete { what: "frame", needed: 1 }));
    };
    if frames.iter().filter(|f| f.apdu.is_some()).count() > 1 {
        return Err(local_error(py, "frame", "the input holds more than one frame; decode them one at a time"));
    }
    let transport = serde_json::to_value(&last.transport).unwrap_or(Value::Null);
    let t = value_to_py(py, &transport)?;
    if let Ok(td) = t.cast::<PyDict>() {
        td.set_item("segments", frames.len())?;
        td.set_item("wire_len", frames.iter().map(|f| f.wire_len).sum::<usize>())?;
    }
    out.set_item("framing", t)?;
    out.set_item("apdu", last.apdu.as_ref().map(|a| PyBytes::new(py, a)))?;
    out.set_item("info", PyBytes::new(py, &last.info))?;
    Ok(out)
}

fn relocate(e: Error, base: u64) -> Error {
    match e {
        Error::Invalid { what, offset, reason } => Error::Invalid { what, offset: offset + base as usize, reason },
        Error::TooLong { what, offset, len, limit } => {
            Error::TooLong { what, offset: offset + base as usize, len, limit }
        }
        other => other,
    }
}

/// Decodes HDLC SNRM/UA information (negotiated parameters).
#[pyfunction]
fn decode_hdlc_parameters<'py>(py: Python<'py>, info: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    let p = codec(py, hdlc::Parameters::decode(info))?;
    value_to_py(py, &serde_json::to_value(p).unwrap_or(Value::Null))
}

/// Wraps an APDU in an IEC 62056-47 wrapper frame.
#[pyfunction]
#[pyo3(signature = (apdu, source_wport = 0x0001, destination_wport = 0x0001))]
fn wrap<'py>(py: Python<'py>, apdu: &[u8], source_wport: u16, destination_wport: u16) -> PyResult<Bound<'py, PyBytes>> {
    Ok(PyBytes::new(py, &codec(py, wrapper::encode(source_wport, destination_wport, apdu))?))
}

fn address(py: Python<'_>, upper: u16, lower: Option<u16>, size: Option<u8>) -> PyResult<Address> {
    let a = match lower {
        None => Address { upper, lower: None, size: 1 },
        Some(l) => {
            let mut a = Address::server(upper, l);
            if let Some(s) = size {
                a.size = s;
            }
            a
        }
    };
    // Validate by encoding.
    codec(py, a.encode(&mut Vec::new()))?;
    Ok(a)
}

/// Encodes one HDLC frame. `control` is I, RR, RNR, SNRM, DISC, UA, DM, FRMR or UI;
/// addresses are (upper, lower or None); `info` for I/UI frames should start with the
/// LLC header (see `hdlc_segments` to build a whole APDU's frames).
#[pyfunction]
#[pyo3(signature = (destination, source, control, info = None, *, send_seq = 0, recv_seq = 0, poll_final = true, segmented = false))]
#[allow(clippy::too_many_arguments)]
fn hdlc_frame<'py>(
    py: Python<'py>,
    destination: (u16, Option<u16>),
    source: (u16, Option<u16>),
    control: &str,
    info: Option<&[u8]>,
    send_seq: u8,
    recv_seq: u8,
    poll_final: bool,
    segmented: bool,
) -> PyResult<Bound<'py, PyBytes>> {
    let ctl = control_of(py, control, send_seq, recv_seq, poll_final)?;
    let d = address(py, destination.0, destination.1, None)?;
    let s = address(py, source.0, source.1, None)?;
    Ok(PyBytes::new(py, &codec(py, hdlc::encode_frame(d, s, ctl, info.unwrap_or_default(), segmented))?))
}

fn control_of(py: Python<'_>, control: &str, send_seq: u8, recv_seq: u8, poll_final: bool) -> PyResult<Control> {
    if send_seq > 7 || recv_seq > 7 {
        return Err(local_error(py, "HDLC control", "sequence numbers are 0..7"));
    }
    Ok(match control {
        "I" => Control::I { send_seq, recv_seq, poll_final },
        "RR" => Control::RR { recv_seq, poll_final },
        "RNR" => Control::RNR { recv_seq, poll_final },
        "SNRM" => Control::SNRM { poll_final },
        "DISC" => Control::DISC { poll_final },
        "UA" => Control::UA { poll_final },
        "DM" => Control::DM { poll_final },
        "FRMR" => Control::FRMR { poll_final },
        "UI" => Control::UI { poll_final },
        other => return Err(local_error(py, "HDLC control", format!("{other:?} is not a frame type"))),
    })
}

/// The I-frames carrying one APDU: LLC header added, split at `max_info` bytes, send
/// sequence numbers from `send_seq`, segmentation bits set on all but the last.
#[pyfunction]
#[pyo3(signature = (destination, source, apdu, *, command = true, max_info = 128, send_seq = 0, recv_seq = 0))]
#[allow(clippy::too_many_arguments)]
fn hdlc_segments<'py>(
    py: Python<'py>,
    destination: (u16, Option<u16>),
    source: (u16, Option<u16>),
    apdu: &[u8],
    command: bool,
    max_info: usize,
    send_seq: u8,
    recv_seq: u8,
) -> PyResult<Vec<Bound<'py, PyBytes>>> {
    if max_info < 4 {
        return Err(local_error(py, "HDLC segments", "max_info below 4 bytes"));
    }
    let d = address(py, destination.0, destination.1, None)?;
    let s = address(py, source.0, source.1, None)?;
    let llc = if command { hdlc::LLC_COMMAND } else { hdlc::LLC_RESPONSE };
    let info = [&llc[..], apdu].concat();
    let chunks: Vec<&[u8]> = info.chunks(max_info).collect();
    let mut out = Vec::with_capacity(chunks.len());
    for (i, c) in chunks.iter().enumerate() {
        let ctl =
            Control::I { send_seq: (send_seq.wrapping_add(i as u8)) & 7, recv_seq: recv_seq & 7, poll_final: true };
        out.push(PyBytes::new(py, &codec(py, hdlc::encode_frame(d, s, ctl, c, i + 1 < chunks.len()))?));
    }
    Ok(out)
}

/// Encodes SNRM/UA parameter information.
#[pyfunction]
#[pyo3(signature = (*, max_info_transmit = None, max_info_receive = None, window_transmit = None, window_receive = None))]
fn hdlc_parameters<'py>(
    py: Python<'py>,
    max_info_transmit: Option<u32>,
    max_info_receive: Option<u32>,
    window_transmit: Option<u32>,
    window_receive: Option<u32>,
) -> Bound<'py, PyBytes> {
    let p = hdlc::Parameters { max_info_transmit, max_info_receive, window_transmit, window_receive };
    PyBytes::new(py, &p.encode())
}

/// Protects an APDU with explicit keys (the meter's side, tools and tests). The
/// envelope is general-glo-ciphering unless `service_specific` asks for the glo- tag.
#[pyfunction]
#[pyo3(signature = (apdu, *, ek, ak, system_title, invocation_counter, security_control = 0x30, service_specific = false))]
#[allow(clippy::too_many_arguments)]
fn encrypt<'py>(
    py: Python<'py>,
    apdu: &[u8],
    ek: &[u8],
    ak: &[u8],
    system_title: &[u8],
    invocation_counter: u32,
    security_control: u8,
    service_specific: bool,
) -> PyResult<Bound<'py, PyBytes>> {
    let keys = Keys::new(&key16(py, "encryption key", ek)?, &key16(py, "authentication key", ak)?);
    let st = title(py, system_title)?;
    let kind = envelope(py, apdu, !service_specific, false)?;
    let c = codec(
        py,
        security::encipher_with(&keys, kind, SecurityControl(security_control), &st, invocation_counter, apdu),
    )?;
    Ok(PyBytes::new(py, &codec(py, Apdu::Ciphered(c).to_bytes())?))
}

/// Verifies and decrypts with explicit keys, without replay state (the decode tool).
/// Returns {"system_title", "security_control", "invocation_counter", "plaintext"}.
#[pyfunction]
#[pyo3(signature = (apdu, *, ek, ak, system_title = None, require_authentication = true))]
fn decrypt<'py>(
    py: Python<'py>,
    apdu: &[u8],
    ek: &[u8],
    ak: &[u8],
    system_title: Option<&[u8]>,
    require_authentication: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let keys = Keys::new(&key16(py, "encryption key", ek)?, &key16(py, "authentication key", ak)?);
    let sender = system_title.map(|s| title(py, s)).transpose()?;
    let c = ciphered(py, apdu)?;
    let d = codec(py, security::decipher_with(&keys, &c, sender.as_ref(), policy(require_authentication, false)))?;
    let out = PyDict::new(py);
    out.set_item("system_title", PyBytes::new(py, &d.system_title))?;
    out.set_item("security_control", d.security_control.0)?;
    out.set_item("invocation_counter", d.invocation_counter)?;
    out.set_item("plaintext", PyBytes::new(py, &d.plaintext))?;
    Ok(out)
}

/// HLS-GMAC f(challenge) = SC || IC || GMAC with explicit keys.
#[pyfunction]
#[pyo3(signature = (challenge, *, ek, ak, system_title, invocation_counter))]
fn hls_gmac<'py>(
    py: Python<'py>,
    challenge: &[u8],
    ek: &[u8],
    ak: &[u8],
    system_title: &[u8],
    invocation_counter: u32,
) -> PyResult<Bound<'py, PyBytes>> {
    let keys = Keys::new(&key16(py, "encryption key", ek)?, &key16(py, "authentication key", ak)?);
    let st = title(py, system_title)?;
    Ok(PyBytes::new(py, &keys.hls_response(&st, invocation_counter, challenge)))
}

/// Parses an OBIS code ("1.0.1.8.0.255" or "1-0:1.8.0*255") into its 6 bytes.
#[pyfunction]
fn parse_obis<'py>(py: Python<'py>, text: &str) -> PyResult<Bound<'py, PyBytes>> {
    let o = obis_code(py, text)?;
    Ok(PyBytes::new(py, &o.0))
}

/// Formats 6 bytes as "a.b.c.d.e.f".
#[pyfunction]
fn format_obis(py: Python<'_>, code: &[u8]) -> PyResult<String> {
    let b: [u8; 6] =
        code.try_into().map_err(|_| local_error(py, "OBIS code", format!("{} bytes (6 needed)", code.len())))?;
    Ok(ObisCode(b).to_string())
}

/// The OBIS code packed into an int (A in the most significant of 48 bits).
#[pyfunction]
fn obis_to_int(py: Python<'_>, code: &[u8]) -> PyResult<u64> {
    let b: [u8; 6] =
        code.try_into().map_err(|_| local_error(py, "OBIS code", format!("{} bytes (6 needed)", code.len())))?;
    Ok(ObisCode(b).to_u64())
}

/// The unit's symbol ("Wh") and quantity, or None for a code the standard's table lacks.
#[pyfunction]
fn unit_info(code: u8) -> Option<(&'static str, &'static str)> {
    Some((crate::codes::unit::name(code)?, crate::codes::unit::quantity(code)?))
}

/// Applies a scaler: value × 10^scaler, correctly rounded where f64 allows.
#[pyfunction]
fn scale(value: f64, scaler: i8) -> f64 {
    units::scale(value, scaler)
}

/// (serial, packed OBIS, 24 typical values by local hour).
type ProfileRow = (Vec<u8>, u64, Vec<f64>);

/// Interval consumption (VEE) from RowBinary readings, or (`native_input`) Native
/// blocks (`meter, obis, ts Int64, value`, ordered by meter, obis, ts) to
/// `consumption` rows, RowBinary or (`native`) one Native block; without the GIL.
/// `channels`: (obis, scale, unit, max_rate per hour in register units).
/// Returns (rows, stats).
#[pyfunction]
#[pyo3(signature = (
    readings, *, channels, unlimited, keep_from, keep_to, now, computed_at_ms, profiles = None, states = None, native = false,
    native_input = false, sums = None, meter_nodes = None, interval = 3600, measured_gap = 3600, max_estimate_span = 5_356_800,
    local_offset = 18_000, future_tolerance = 600
))]
#[allow(clippy::too_many_arguments)]
fn consumption_rows<'py>(
    py: Python<'py>,
    readings: &[u8],
    channels: Vec<(String, f64, String, f64)>,
    unlimited: Vec<Vec<u8>>,
    keep_from: i64,
    keep_to: i64,
    now: i64,
    computed_at_ms: i64,
    profiles: Option<Vec<ProfileRow>>,
    states: Option<Vec<String>>,
    native: bool,
    native_input: bool,
    sums: Option<PyRefMut<'py, NodeSums>>,
    meter_nodes: Option<&[u8]>,
    interval: i64,
    measured_gap: i64,
    max_estimate_span: i64,
    local_offset: i64,
    future_tolerance: i64,
) -> PyResult<(Bound<'py, PyBytes>, Bound<'py, PyDict>)> {
    let mut chans = Vec::with_capacity(channels.len());
    for (code, scale, unit, max_rate) in channels {
        let obis = obis_code(py, &code)?;
        chans.push(Channel { obis: obis.to_u64(), scale, unit, max_rate });
    }
    let state_codes = obis_codes(py, &states.unwrap_or_default())?;
    let profiles = profiles.unwrap_or_default();
    let mut by_series = std::collections::HashMap::with_capacity(profiles.len());
    for (meter, obis, hours) in profiles {
        let Ok(p) = <[f64; 24]>::try_from(hours.as_slice()) else {
            return Err(local_error(py, "profile", format!("{} values, not 24", hours.len())));
        };
        by_series.insert((meter, obis), p);
    }
    let job = Job {
        vee: VeeConfig { interval, measured_gap, max_estimate_span, local_offset, now, future_tolerance },
        channels: chans,
        unlimited: unlimited.into_iter().collect(),
        profiles: by_series,
        states: state_codes,
        native,
        native_input,
        keep_from,
        keep_to,
        computed_at_ms,
    };
    let (rows, st) = match (sums, meter_nodes) {
        (None, None) => codec(py, guarded(py, true, || consumption::run(&job, readings))?)?,
        (Some(mut sums), Some(placed)) => {
            let sums = &mut sums.inner;
            codec(
                py,
                guarded(py, true, || {
                    let placed = consumption::MeterNodes::read(placed)?;
                    consumption::run_summing(&job, readings, Some((sums, &placed)))
                })?,
            )?
        }
        _ => return Err(local_error(py, "node sums", "sums and meter_nodes go together")),
    };
    let d = PyDict::new(py);
    d.set_item("readings", st.readings)?;
    d.set_item("series", st.series)?;
    d.set_item("rows", st.rows)?;
    d.set_item("future", st.vee.future)?;
    d.set_item("not_finite", st.vee.not_finite)?;
    d.set_item("duplicates", st.vee.duplicates)?;
    d.set_item("conflicts", st.vee.conflicts)?;
    Ok((PyBytes::new(py, &rows), d))
}

/// Meters of the readings (as `consumption_rows` takes them) with a gap in one of the
/// `channels` registers (OBIS codes) that an estimate spreads: the ones whose typical
/// day is worth fetching. Without the GIL.
#[pyfunction]
#[pyo3(signature = (readings, *, channels, native_input = false, measured_gap = 3600, max_estimate_span = 5_356_800))]
fn gappy_meters<'py>(
    py: Python<'py>,
    readings: &[u8],
    channels: Vec<String>,
    native_input: bool,
    measured_gap: i64,
    max_estimate_span: i64,
) -> PyResult<Vec<Bound<'py, PyBytes>>> {
    let codes = obis_codes(py, &channels)?;
    let found = guarded(py, true, || {
        consumption::gappy_meters(readings, native_input, &codes, measured_gap, max_estimate_span)
    })?;
    Ok(serials(py, &codec(py, found)?))
}

/// Meters of the readings with a series of the `channels` registers whose first
/// sample comes after `start`. Without the GIL.
#[pyfunction]
#[pyo3(signature = (readings, *, channels, start, native_input = false))]
fn late_starters<'py>(
    py: Python<'py>,
    readings: &[u8],
    channels: Vec<String>,
    start: i64,
    native_input: bool,
) -> PyResult<Vec<Bound<'py, PyBytes>>> {
    let codes = obis_codes(py, &channels)?;
    let found = guarded(py, true, || consumption::late_starters(readings, native_input, &codes, start))?;
    Ok(serials(py, &codec(py, found)?))
}

/// The Native readings with the `earlier` ones put in front of their series, as one
/// Native block of a series a row. Without the GIL.
#[pyfunction]
fn with_earlier<'py>(py: Python<'py>, readings: &[u8], earlier: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
    let out = guarded(py, true, || consumption::with_earlier(readings, earlier))?;
    Ok(PyBytes::new(py, &codec(py, out)?))
}

/// Balance sums gathered by `consumption_rows`: per network node (in the order given),
/// side (0 the consumers below it, 1 its balance meters) and hour of the window from
/// `start`, the consumption of the `obis` registers and how many of its intervals
/// were measured.
#[pyclass(module = "headend._core")]
pub struct NodeSums {
    inner: consumption::NodeSums,
}

#[pymethods]
impl NodeSums {
    #[new]
    fn new(py: Python<'_>, nodes: Vec<String>, start: i64, hours: usize, obis: Vec<String>) -> PyResult<Self> {
        let codes = obis_codes(py, &obis)?;
        let nodes = nodes.into_iter().map(String::into_bytes).collect();
        Ok(NodeSums { inner: codec(py, consumption::NodeSums::new(nodes, start, hours, codes))? })
    }

    /// (values, measured): little-endian float64 and uint32, `[node][side][hour]`.
    fn arrays<'py>(&self, py: Python<'py>) -> (Bound<'py, PyBytes>, Bound<'py, PyBytes>) {
        let v: Vec<u8> = self.inner.value.iter().flat_map(|x| x.to_le_bytes()).collect();
        let m: Vec<u8> = self.inner.measured.iter().flat_map(|x| x.to_le_bytes()).collect();
        (PyBytes::new(py, &v), PyBytes::new(py, &m))
    }

    /// Series of the registers whose meter has no network node among `nodes`.
    #[getter]
    fn unplaced(&self) -> u64 {
        self.inner.unplaced
    }
}

#[pymodule]
#[pyo3(name = "_core")]
mod core_module {
    #[pymodule_export]
    use super::{
        consumption_rows, decode_apdu, decode_data, decode_frame, decode_hdlc_parameters, decrypt, encode_apdu,
        encode_data, encrypt, format_obis, gappy_meters, hdlc_frame, hdlc_parameters, hdlc_segments, hls_gmac,
        late_starters, obis_to_int, parse_obis, scale, unit_info, with_earlier, wrap, Directory, Frame, FrameError,
        KeyTable, MasterKey, NodeSums, PushBatch, PushDecoder, RowSink, Session, StreamDecoder,
    };

    #[pymodule_init]
    fn init(m: &pyo3::Bound<'_, pyo3::types::PyModule>) -> pyo3::PyResult<()> {
        use pyo3::types::PyModuleMethods;
        m.add("__version__", env!("CARGO_PKG_VERSION"))
    }
}
