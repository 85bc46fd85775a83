//! The Python binding, `headend._core`. The only module that mentions pyo3.
//!
//! The boundary is narrow and batch-minded: a stream decoder per connection fed with
//! whatever `data_received` got, a push decoder that turns a whole buffer of frames into
//! columns (without the GIL), a key table that never hands keys back, and JSON-form
//! encode/decode for everything else. Errors map in one place ([`to_pyerr`]) onto the
//! exception classes of `headend.errors`; panics are caught and reported, never allowed
//! to unwind into a worker.

use pyo3::prelude::*;

mod codec;
mod energy;
mod errors;
mod json;
mod security;
mod sessions;
mod stream;

use codec::*;
use energy::*;
use errors::*;
use json::*;
use security::*;
use sessions::*;
use stream::*;

#[pymodule]
#[pyo3(name = "_core")]
mod core_module {
    #[pymodule_export]
    use super::{
        decode_apdu, decode_data, decode_frame, decode_hdlc_parameters, decrypt, encode_apdu, encode_data, encrypt,
        format_obis, hdlc_frame, hdlc_parameters, hdlc_segments, hls_gmac, obis_to_int, parse_obis, scale, unit_info,
        wrap, ApduIn, ConsumptionJob, Directory, Frame, FrameError, Identified, KeyTable, LinkFrame, Lookup, MasterKey,
        NodeSums, PushBatch, PushDecoder, ReadingSlice, Reject, RowSink, Session, StreamDecoder,
    };

    #[pymodule_init]
    fn init(m: &pyo3::Bound<'_, pyo3::types::PyModule>) -> pyo3::PyResult<()> {
        use pyo3::types::PyModuleMethods;
        m.add("__version__", env!("CARGO_PKG_VERSION"))
    }
}
