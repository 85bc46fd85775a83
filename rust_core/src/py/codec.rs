//! The codec: pushes as columns, APDUs and data in their JSON form, framing,
//! OBIS codes and units.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};
use serde_json::Value;

use crate::apdu::{Apdu, SecurityControl};
use crate::axdr::{self, Data};
use crate::error::Error;
use crate::hdlc::{self, Address, Control};
use crate::obis::ObisCode;
use crate::push::{PushBatch as RsPushBatch, PushDecoder as RsPushDecoder};
use crate::security::{self, Keys};
use crate::stream::{self, Event, StreamConfig};
use crate::{units, wrapper};

use super::*;

// ---------------------------------------------------------------------------------
// Pushes

/// Decoded pushes as columns. See `rust_core/src/push.rs` for each column's meaning.
#[pyclass(module = "headend._core", frozen)]
pub struct PushBatch {
    pub(super) inner: RsPushBatch,
    consumed: usize,
}

/// Little-endian encoding of a column's element type.
pub(super) trait Le: Copy {
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
pub(super) fn le_bytes<'py, T: Le>(py: Python<'py>, v: &[T]) -> PyResult<Bound<'py, PyBytes>> {
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
    pub(super) inner: RsPushDecoder,
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
// Functions

/// Decodes one APDU into its JSON form (dicts, lists, str, int, float, bool, None).
#[pyfunction]
pub(super) fn decode_apdu<'py>(py: Python<'py>, apdu: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    let v = codec(py, guarded(py, false, || Apdu::decode(apdu).map(|a| a.to_json()))?)?;
    value_to_py(py, &v)
}

/// Encodes an APDU from its JSON form; bytes are accepted wherever hex is.
#[pyfunction]
pub(super) fn encode_apdu<'py>(py: Python<'py>, apdu: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
    let v = py_to_value(apdu, 0)?;
    let a = Apdu::from_json(&v).map_err(|e| local_error(py, "APDU", e))?;
    Ok(PyBytes::new(py, &codec(py, a.to_bytes())?))
}

/// Decodes one A-XDR value into its JSON form.
#[pyfunction]
pub(super) fn decode_data<'py>(py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    let v = codec(py, guarded(py, false, || Data::from_bytes(data).map(|d| d.to_json()))?)?;
    value_to_py(py, &v)
}

/// Encodes one A-XDR value from its JSON form.
#[pyfunction]
pub(super) fn encode_data<'py>(py: Python<'py>, value: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
    let v = py_to_value(value, 0)?;
    let d = Data::from_json(&v).map_err(|e| local_error(py, "Data", e))?;
    Ok(PyBytes::new(py, &codec(py, d.to_bytes())?))
}

/// Decodes exactly one frame (wrapper, HDLC, or a bare APDU with framing "apdu") into
/// {"framing": {...} | None, "apdu": bytes | None, "info": bytes}.
#[pyfunction]
#[pyo3(signature = (frame, framing = "auto"))]
pub(super) fn decode_frame<'py>(py: Python<'py>, frame: &[u8], framing: &str) -> PyResult<Bound<'py, PyDict>> {
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

pub(super) fn relocate(e: Error, base: u64) -> Error {
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
pub(super) fn decode_hdlc_parameters<'py>(py: Python<'py>, info: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    let p = codec(py, hdlc::Parameters::decode(info))?;
    value_to_py(py, &serde_json::to_value(p).unwrap_or(Value::Null))
}

/// Wraps an APDU in an IEC 62056-47 wrapper frame.
#[pyfunction]
#[pyo3(signature = (apdu, source_wport = 0x0001, destination_wport = 0x0001))]
pub(super) fn wrap<'py>(
    py: Python<'py>,
    apdu: &[u8],
    source_wport: u16,
    destination_wport: u16,
) -> PyResult<Bound<'py, PyBytes>> {
    Ok(PyBytes::new(py, &codec(py, wrapper::encode(source_wport, destination_wport, apdu))?))
}

pub(super) fn address(py: Python<'_>, upper: u16, lower: Option<u16>, size: Option<u8>) -> PyResult<Address> {
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
pub(super) fn hdlc_frame<'py>(
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

pub(super) fn control_of(
    py: Python<'_>,
    control: &str,
    send_seq: u8,
    recv_seq: u8,
    poll_final: bool,
) -> PyResult<Control> {
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
pub(super) fn hdlc_segments<'py>(
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
pub(super) fn hdlc_parameters<'py>(
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
pub(super) fn encrypt<'py>(
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
pub(super) fn decrypt<'py>(
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
pub(super) fn hls_gmac<'py>(
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
pub(super) fn parse_obis<'py>(py: Python<'py>, text: &str) -> PyResult<Bound<'py, PyBytes>> {
    let o = obis_code(py, text)?;
    Ok(PyBytes::new(py, &o.0))
}

/// Formats 6 bytes as "a.b.c.d.e.f".
#[pyfunction]
pub(super) fn format_obis(py: Python<'_>, code: &[u8]) -> PyResult<String> {
    let b: [u8; 6] =
        code.try_into().map_err(|_| local_error(py, "OBIS code", format!("{} bytes (6 needed)", code.len())))?;
    Ok(ObisCode(b).to_string())
}

/// The OBIS code packed into an int (A in the most significant of 48 bits).
#[pyfunction]
pub(super) fn obis_to_int(py: Python<'_>, code: &[u8]) -> PyResult<u64> {
    let b: [u8; 6] =
        code.try_into().map_err(|_| local_error(py, "OBIS code", format!("{} bytes (6 needed)", code.len())))?;
    Ok(ObisCode(b).to_u64())
}

/// The unit's symbol ("Wh") and quantity, or None for a code the standard's table lacks.
#[pyfunction]
pub(super) fn unit_info(code: u8) -> Option<(&'static str, &'static str)> {
    Some((crate::codes::unit::name(code)?, crate::codes::unit::quantity(code)?))
}

/// Applies a scaler: value × 10^scaler, correctly rounded where f64 allows.
#[pyfunction]
pub(super) fn scale(value: f64, scaler: i8) -> f64 {
    units::scale(value, scaler)
}
