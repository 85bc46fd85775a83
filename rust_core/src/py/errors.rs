//! Errors: `headend.errors` classes for the core's errors, panics caught, and the
//! small conversions every area uses.

use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyType};

use crate::error::Error;
use crate::obis::ObisCode;
use crate::security::SystemTitle;
use crate::stream::Framing;

// ---------------------------------------------------------------------------------
// Errors

static ERROR_CLASSES: [PyOnceLock<Py<PyType>>; 9] = [const { PyOnceLock::new() }; 9];
const ERROR_NAMES: [&str; 9] = [
    "IncompleteData",
    "RemoteProtocolError",
    "LimitExceeded",
    "UnsupportedFeature",
    "AuthenticationFailed",
    "ReplayedInvocationCounter",
    "UnknownSystemTitle",
    "LocalProtocolError",
    "InternalError",
];
/// Where a panic goes: our bug, not the peer's.
const INTERNAL: usize = 8;

pub(super) fn error_class<'py>(py: Python<'py>, index: usize) -> PyResult<&'py Bound<'py, PyType>> {
    ERROR_CLASSES[index].import(py, "headend.errors", ERROR_NAMES[index])
}

/// The one mapping from codec errors to Python exceptions.
pub(super) fn to_pyerr(py: Python<'_>, e: &Error) -> PyErr {
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

pub(super) fn local_error(py: Python<'_>, what: &'static str, reason: impl Into<String>) -> PyErr {
    to_pyerr(py, &Error::encode(what, reason))
}

/// Runs codec work, optionally without the GIL, turning a panic into an exception.
/// A panic here is our bug; the worker must survive it and the connection be dropped.
pub(super) fn guarded<T: Send>(py: Python<'_>, release_gil: bool, f: impl FnOnce() -> T + Send) -> PyResult<T> {
    let run = move || catch_unwind(AssertUnwindSafe(f));
    let out = if release_gil { py.detach(run) } else { run() };
    out.map_err(|p| {
        let msg = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        match error_class(py, INTERNAL) {
            Ok(cls) => PyErr::from_type(cls.clone(), format!("internal error in the Rust core: {msg}")),
            Err(e) => e,
        }
    })
}

/// An OBIS code from its text; a bad one is the caller's error.
pub(super) fn obis_code(py: Python<'_>, text: &str) -> PyResult<ObisCode> {
    text.parse().map_err(|e: crate::obis::ObisParseError| local_error(py, "OBIS code", e.to_string()))
}

/// OBIS codes from their texts, packed as the tables store them.
pub(super) fn obis_codes(py: Python<'_>, texts: &[String]) -> PyResult<Vec<u64>> {
    texts.iter().map(|t| Ok(obis_code(py, t)?.to_u64())).collect()
}

/// Meter serials as Python bytes.
pub(super) fn serials<'py>(py: Python<'py>, found: &[Vec<u8>]) -> Vec<Bound<'py, PyBytes>> {
    found.iter().map(|m| PyBytes::new(py, m)).collect()
}

pub(super) fn codec<T>(py: Python<'_>, r: crate::error::Result<T>) -> PyResult<T> {
    r.map_err(|e| to_pyerr(py, &e))
}

// ---------------------------------------------------------------------------------
// Small conversions

pub(super) fn title(py: Python<'_>, b: &[u8]) -> PyResult<SystemTitle> {
    b.try_into().map_err(|_| local_error(py, "system title", format!("{} bytes (8 needed)", b.len())))
}

pub(super) fn key16(py: Python<'_>, what: &'static str, b: &[u8]) -> PyResult<[u8; 16]> {
    b.try_into().map_err(|_| local_error(py, what, format!("{} bytes (16 needed)", b.len())))
}

pub(super) fn framing_of(py: Python<'_>, s: &str) -> PyResult<Framing> {
    match s {
        "auto" => Ok(Framing::Auto),
        "wrapper" => Ok(Framing::Wrapper),
        "hdlc" => Ok(Framing::Hdlc),
        other => Err(local_error(py, "framing", format!("{other:?} (auto, wrapper or hdlc)"))),
    }
}

pub(super) fn framing_name(f: Framing) -> &'static str {
    match f {
        Framing::Auto => "auto",
        Framing::Wrapper => "wrapper",
        Framing::Hdlc => "hdlc",
    }
}
