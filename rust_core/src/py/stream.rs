//! Stream decoding: frames from whatever a connection read.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

use crate::hdlc::Control;
use crate::stream::{self, Event, StreamConfig, Transport};

use super::*;

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

pub(super) fn frame_to_py(py: Python<'_>, f: stream::Frame) -> Frame {
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
    pub(super) inner: stream::StreamDecoder,
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
