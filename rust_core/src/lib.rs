//! headend-core: the DLMS/COSEM codec, security suite 0 and row batches of the headend.
//!
//! Architecture invariant: this crate does no I/O, reads no clock and knows nothing of
//! asyncio or ClickHouse. Time comes in as an argument; bytes come in as slices.
//! Architecture invariant: only the `py` module (feature `python`) mentions pyo3.
//!
//! Layers, bottom up:
//! - [`reader`]: bounded cursor; every parser answers complete / incomplete / invalid.
//! - [`wrapper`], [`hdlc`]: transport framing (IEC 62056-47, -46).
//! - [`stream`]: per-connection reassembly from arbitrary TCP chunks.
//! - [`axdr`], [`datetime`], [`obis`], [`units`]: A-XDR data and COSEM value types.
//! - [`apdu`]: ACSE and xDLMS APDUs; [`security`]: AES-GCM-128, HLS-GMAC, key table.
//! - [`push`]: the batch fast path from pushed frames to columnar rows.

pub mod apdu;
pub mod axdr;
#[rustfmt::skip]
pub mod codes;
pub mod consumption;
pub mod data_json;
pub mod datetime;
pub mod directory;
pub mod error;
pub mod hdlc;
pub mod keytransfer;
pub mod keywrap;
pub mod obis;
pub mod profile;
pub mod push;
pub mod reader;
pub mod rows;
pub mod security;
pub mod session;
pub mod stream;
pub mod units;
pub mod vee;
pub mod wrapper;

#[cfg(feature = "python")]
mod py;

pub use error::{Error, Result};

/// The extension's own allocator: the balance job allocates and frees columns of
/// millions of values per slice; the system allocator hands such blocks back to the
/// kernel each time (fresh pages, faults, zeroing), mimalloc keeps and reuses them.
#[cfg(feature = "python")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
