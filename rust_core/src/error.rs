//! The one error type of the codec.
//!
//! Every parser answers one of three ways: a complete item, [`Error::Incomplete`] (give
//! me more bytes), or an error naming what was wrong and where. Offsets are absolute
//! within the buffer handed to the outermost decoder. No variant carries key material,
//! and [`Error::AuthenticationFailed`] deliberately says nothing more than that.

use std::fmt;

/// Errors of the DLMS/COSEM codec and security layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The input ends inside `what`; at least `needed` more bytes are required.
    Incomplete { what: &'static str, needed: usize },
    /// The bytes at `offset` are not a valid `what`.
    Invalid { what: &'static str, offset: usize, reason: String },
    /// A length or count at `offset` exceeds the ceiling set for `what`.
    TooLong { what: &'static str, offset: usize, len: usize, limit: usize },
    /// Valid DLMS/COSEM that this implementation does not handle.
    Unsupported { what: &'static str, offset: usize, reason: String },
    /// A GCM tag or HLS-GMAC value did not verify.
    AuthenticationFailed,
    /// The invocation counter is not above the last one accepted from that system title.
    Replay { system_title: [u8; 8], received: u32, last: u32 },
    /// No keys are known for this system title.
    UnknownSystemTitle { system_title: [u8; 8] },
    /// Our side asked to encode something the standard cannot express.
    Encode { what: &'static str, reason: String },
}

/// The codec's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn invalid(what: &'static str, offset: usize, reason: impl Into<String>) -> Self {
        Error::Invalid { what, offset, reason: reason.into() }
    }

    pub(crate) fn unsupported(what: &'static str, offset: usize, reason: impl Into<String>) -> Self {
        Error::Unsupported { what, offset, reason: reason.into() }
    }

    pub(crate) fn encode(what: &'static str, reason: impl Into<String>) -> Self {
        Error::Encode { what, reason: reason.into() }
    }

    /// True when the peer's bytes are at fault (everything but [`Error::Encode`]).
    pub fn is_remote(&self) -> bool {
        !matches!(self, Error::Encode { .. })
    }

    /// The ExceptionResponse service-error a server answers this error with
    /// (Green Book 9.5, ExceptionResponse): a name from `codes::exception_service_error`.
    pub fn exception_service_error(&self) -> &'static str {
        match self {
            Error::AuthenticationFailed | Error::UnknownSystemTitle { .. } => "deciphering-error",
            Error::Replay { .. } => "invocation-counter-error",
            Error::TooLong { .. } => "pdu-too-long",
            Error::Unsupported { .. } => "service-not-supported",
            Error::Incomplete { .. } | Error::Invalid { .. } | Error::Encode { .. } => "operation-not-possible",
        }
    }

    /// A short stable name for counting errors by kind (metrics, `sessions` table).
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Incomplete { .. } => "truncated",
            Error::Invalid { .. } => "malformed",
            Error::TooLong { .. } => "oversize",
            Error::Unsupported { .. } => "unsupported",
            Error::AuthenticationFailed => "authentication-failed",
            Error::Replay { .. } => "replayed-invocation-counter",
            Error::UnknownSystemTitle { .. } => "unknown-system-title",
            Error::Encode { .. } => "encode",
        }
    }

    /// Re-labels an [`Error::Incomplete`] as a truncation of a complete container: once a
    /// frame's length says the APDU is complete, "need more" means the APDU is broken.
    pub fn truncated_at(self, what: &'static str, offset: usize) -> Self {
        match self {
            Error::Incomplete { what: inner, needed } => {
                Error::invalid(what, offset, format!("{inner} is truncated ({needed} more bytes expected)"))
            }
            other => other,
        }
    }
}

fn hex8(bytes: &[u8; 8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Incomplete { what, needed } => {
                write!(f, "incomplete {what}: {needed} more bytes needed")
            }
            Error::Invalid { what, offset, reason } => write!(f, "invalid {what} at offset {offset}: {reason}"),
            Error::TooLong { what, offset, len, limit } => {
                write!(f, "{what} at offset {offset} is too long: {len} exceeds the limit of {limit}")
            }
            Error::Unsupported { what, offset, reason } => write!(f, "unsupported {what} at offset {offset}: {reason}"),
            Error::AuthenticationFailed => f.write_str("authentication failed"),
            Error::Replay { system_title, received, last } => write!(
                f,
                "replayed invocation counter from {}: received {received}, last accepted {last}",
                hex8(system_title)
            ),
            Error::UnknownSystemTitle { system_title } => {
                write!(f, "no keys for system title {}", hex8(system_title))
            }
            Error::Encode { what, reason } => write!(f, "cannot encode {what}: {reason}"),
        }
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_field_and_offset() {
        let e = Error::invalid("HDLC frame", 7, "bad FCS");
        assert_eq!(e.to_string(), "invalid HDLC frame at offset 7: bad FCS");
        assert_eq!(e.kind(), "malformed");
        assert!(e.is_remote());
    }

    #[test]
    fn authentication_failure_says_nothing_more() {
        assert_eq!(Error::AuthenticationFailed.to_string(), "authentication failed");
        assert_eq!(Error::AuthenticationFailed.exception_service_error(), "deciphering-error");
    }

    #[test]
    fn truncation_inside_a_complete_frame_becomes_invalid() {
        let e = Error::Incomplete { what: "octet-string", needed: 3 }.truncated_at("APDU", 0);
        assert_eq!(e.kind(), "malformed");
        assert!(e.to_string().contains("3 more bytes"));
    }

    #[test]
    fn replay_names_counters_in_hex_title() {
        let e = Error::Replay { system_title: *b"MMM\x00\x00\xbc\x61\x4e", received: 5, last: 9 };
        assert_eq!(e.to_string(), "replayed invocation counter from 4D4D4D0000BC614E: received 5, last accepted 9");
        assert_eq!(e.exception_service_error(), "invocation-counter-error");
    }
}
