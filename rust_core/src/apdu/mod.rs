//! xDLMS and ACSE APDUs: one enum, decoded from and encoded to bytes, and rendered to
//! and parsed from JSON (serde), so the decode tool, the Python boundary and the tests
//! share one representation.

pub mod acse;
pub mod common;
pub mod services;
pub mod xdlms;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

pub use acse::{Aare, Aarq, Diagnostic, Rlre, Rlrq};
pub use common::*;
pub use services::*;
pub use xdlms::{ConfirmedServiceError, Conformance, ExceptionResponse, InitiateRequest, InitiateResponse};

use crate::error::{Error, Result};
use crate::reader::{put_axdr_bytes, put_axdr_length, Reader};

/// APDU tags (Green Book 9.5, XDLMS-APDU and ACSE-APDU).
pub mod tag {
    pub const INITIATE_REQUEST: u8 = 0x01;
    pub const INITIATE_RESPONSE: u8 = 0x08;
    pub const CONFIRMED_SERVICE_ERROR: u8 = 0x0E;
    pub const DATA_NOTIFICATION: u8 = 0x0F;
    pub const AARQ: u8 = 0x60;
    pub const AARE: u8 = 0x61;
    pub const RLRQ: u8 = 0x62;
    pub const RLRE: u8 = 0x63;
    pub const GET_REQUEST: u8 = 0xC0;
    pub const SET_REQUEST: u8 = 0xC1;
    pub const EVENT_NOTIFICATION: u8 = 0xC2;
    pub const ACTION_REQUEST: u8 = 0xC3;
    pub const GET_RESPONSE: u8 = 0xC4;
    pub const SET_RESPONSE: u8 = 0xC5;
    pub const ACTION_RESPONSE: u8 = 0xC7;
    pub const EXCEPTION_RESPONSE: u8 = 0xD8;
    pub const GENERAL_GLO_CIPHERING: u8 = 0xDB;
    pub const GENERAL_DED_CIPHERING: u8 = 0xDC;
    pub const GENERAL_CIPHERING: u8 = 0xDD;
    pub const GENERAL_SIGNING: u8 = 0xDF;
    pub const GENERAL_BLOCK_TRANSFER: u8 = 0xE0;
    pub const GLO_INITIATE_REQUEST: u8 = 0x21;
    pub const GLO_INITIATE_RESPONSE: u8 = 0x28;
    pub const GLO_GET_REQUEST: u8 = 0xC8;
    pub const GLO_SET_REQUEST: u8 = 0xC9;
    pub const GLO_EVENT_NOTIFICATION: u8 = 0xCA;
    pub const GLO_ACTION_REQUEST: u8 = 0xCB;
    pub const GLO_GET_RESPONSE: u8 = 0xCC;
    pub const GLO_SET_RESPONSE: u8 = 0xCD;
    pub const GLO_ACTION_RESPONSE: u8 = 0xCF;
    pub const DED_GET_REQUEST: u8 = 0xD0;
    pub const DED_SET_REQUEST: u8 = 0xD1;
    pub const DED_EVENT_NOTIFICATION: u8 = 0xD2;
    pub const DED_ACTION_REQUEST: u8 = 0xD3;
    pub const DED_GET_RESPONSE: u8 = 0xD4;
    pub const DED_SET_RESPONSE: u8 = 0xD5;
    pub const DED_ACTION_RESPONSE: u8 = 0xD7;
}

/// True for a byte that can begin an APDU of the LN xDLMS and ACSE protocols (plain,
/// ciphered, or the general ones this codec refuses with a clear error). Stream
/// resynchronisation uses it to tell a frame start from coincidental bytes.
pub fn is_apdu_tag(t: u8) -> bool {
    matches!(
        t,
        tag::INITIATE_REQUEST
            | tag::INITIATE_RESPONSE
            | tag::CONFIRMED_SERVICE_ERROR
            | tag::DATA_NOTIFICATION
            | tag::AARQ
            | tag::AARE
            | tag::RLRQ
            | tag::RLRE
            | tag::GET_REQUEST
            | tag::SET_REQUEST
            | tag::EVENT_NOTIFICATION
            | tag::ACTION_REQUEST
            | tag::GET_RESPONSE
            | tag::SET_RESPONSE
            | tag::ACTION_RESPONSE
            | tag::EXCEPTION_RESPONSE
            | tag::GENERAL_CIPHERING
            | tag::GENERAL_SIGNING
            | tag::GENERAL_BLOCK_TRANSFER
    ) || CipheredKind::is_ciphered_tag(t)
}

/// The ciphered APDU types: (tag, name, dedicated key?, the plaintext APDU's tag).
/// Service-specific APDUs carry no system title; the general ones do.
const CIPHERED: &[(u8, &str, bool, Option<u8>)] = &[
    (0x21, "glo-initiate-request", false, Some(tag::INITIATE_REQUEST)),
    (0x28, "glo-initiate-response", false, Some(tag::INITIATE_RESPONSE)),
    (0x2E, "glo-confirmed-service-error", false, Some(tag::CONFIRMED_SERVICE_ERROR)),
    (0x25, "glo-read-request", false, Some(0x05)),
    (0x26, "glo-write-request", false, Some(0x06)),
    (0x2C, "glo-read-response", false, Some(0x0C)),
    (0x2D, "glo-write-response", false, Some(0x0D)),
    (0x36, "glo-unconfirmed-write-request", false, Some(0x16)),
    (0x38, "glo-information-report-request", false, Some(0x18)),
    (0x41, "ded-initiate-request", true, Some(tag::INITIATE_REQUEST)),
    (0x48, "ded-initiate-response", true, Some(tag::INITIATE_RESPONSE)),
    (0x4E, "ded-confirmed-service-error", true, Some(tag::CONFIRMED_SERVICE_ERROR)),
    (0xC8, "glo-get-request", false, Some(tag::GET_REQUEST)),
    (0xC9, "glo-set-request", false, Some(tag::SET_REQUEST)),
    (0xCA, "glo-event-notification-request", false, Some(tag::EVENT_NOTIFICATION)),
    (0xCB, "glo-action-request", false, Some(tag::ACTION_REQUEST)),
    (0xCC, "glo-get-response", false, Some(tag::GET_RESPONSE)),
    (0xCD, "glo-set-response", false, Some(tag::SET_RESPONSE)),
    (0xCF, "glo-action-response", false, Some(tag::ACTION_RESPONSE)),
    (0xD0, "ded-get-request", true, Some(tag::GET_REQUEST)),
    (0xD1, "ded-set-request", true, Some(tag::SET_REQUEST)),
    (0xD2, "ded-event-notification-request", true, Some(tag::EVENT_NOTIFICATION)),
    (0xD3, "ded-action-request", true, Some(tag::ACTION_REQUEST)),
    (0xD4, "ded-get-response", true, Some(tag::GET_RESPONSE)),
    (0xD5, "ded-set-response", true, Some(tag::SET_RESPONSE)),
    (0xD7, "ded-action-response", true, Some(tag::ACTION_RESPONSE)),
    (0xDB, "general-glo-ciphering", false, None),
    (0xDC, "general-ded-ciphering", true, None),
];

/// The tag of a ciphered APDU type, by name ("glo-get-request").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CipheredKind(pub u8);

impl CipheredKind {
    fn entry(self) -> Option<&'static (u8, &'static str, bool, Option<u8>)> {
        CIPHERED.iter().find(|e| e.0 == self.0)
    }

    pub fn is_ciphered_tag(t: u8) -> bool {
        CIPHERED.iter().any(|e| e.0 == t)
    }

    pub fn name(self) -> &'static str {
        self.entry().map_or("unknown", |e| e.1)
    }

    /// True for general-glo/ded-ciphering, which carry the sender's system title.
    pub fn is_general(self) -> bool {
        matches!(self.0, tag::GENERAL_GLO_CIPHERING | tag::GENERAL_DED_CIPHERING)
    }

    /// True when the dedicated (session) key protects it.
    pub fn is_dedicated(self) -> bool {
        self.entry().is_some_and(|e| e.2)
    }

    /// The tag the plaintext must have (service-specific APDUs only).
    pub fn plaintext_tag(self) -> Option<u8> {
        self.entry().and_then(|e| e.3)
    }

    /// The service-specific ciphered tag for a plaintext APDU tag.
    pub fn for_plaintext(plain_tag: u8, dedicated: bool) -> Option<CipheredKind> {
        CIPHERED.iter().find(|e| e.3 == Some(plain_tag) && e.2 == dedicated).map(|e| CipheredKind(e.0))
    }
}

impl Serialize for CipheredKind {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for CipheredKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        CIPHERED
            .iter()
            .find(|e| e.1 == s)
            .map(|e| CipheredKind(e.0))
            .ok_or_else(|| D::Error::custom(format!("unknown ciphered APDU {s:?}")))
    }
}

/// The security control byte (Green Book 9.2.7.2.4.1): bits 0-3 suite, 4 authentication,
/// 5 encryption, 6 key set (0 unicast, 1 broadcast), 7 compression.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SecurityControl(pub u8);

impl SecurityControl {
    pub const AUTHENTICATED: u8 = 0x10;
    pub const ENCRYPTED: u8 = 0x20;
    pub const BROADCAST_KEY: u8 = 0x40;
    pub const COMPRESSED: u8 = 0x80;

    pub fn new(authenticated: bool, encrypted: bool) -> Self {
        SecurityControl(
            if authenticated { Self::AUTHENTICATED } else { 0 } | if encrypted { Self::ENCRYPTED } else { 0 },
        )
    }

    pub fn suite(self) -> u8 {
        self.0 & 0x0F
    }

    pub fn authenticated(self) -> bool {
        self.0 & Self::AUTHENTICATED != 0
    }

    pub fn encrypted(self) -> bool {
        self.0 & Self::ENCRYPTED != 0
    }

    pub fn broadcast_key(self) -> bool {
        self.0 & Self::BROADCAST_KEY != 0
    }

    pub fn compressed(self) -> bool {
        self.0 & Self::COMPRESSED != 0
    }
}

#[derive(Serialize, Deserialize)]
struct SecurityControlJson {
    #[serde(default)]
    raw: Option<u8>,
    #[serde(default)]
    suite: u8,
    #[serde(default)]
    authenticated: bool,
    #[serde(default)]
    encrypted: bool,
    #[serde(default)]
    broadcast_key: bool,
    #[serde(default)]
    compressed: bool,
}

impl Serialize for SecurityControl {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        SecurityControlJson {
            raw: Some(self.0),
            suite: self.suite(),
            authenticated: self.authenticated(),
            encrypted: self.encrypted(),
            broadcast_key: self.broadcast_key(),
            compressed: self.compressed(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for SecurityControl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::Number(n) => n
                .as_u64()
                .and_then(|v| u8::try_from(v).ok())
                .map(SecurityControl)
                .ok_or_else(|| D::Error::custom("security control is one byte")),
            v => {
                let j: SecurityControlJson = serde_json::from_value(v).map_err(D::Error::custom)?;
                if let Some(raw) = j.raw {
                    return Ok(SecurityControl(raw));
                }
                if j.suite > 15 {
                    return Err(D::Error::custom("security suite is 0..15"));
                }
                Ok(SecurityControl(
                    j.suite
                        | (j.authenticated as u8) << 4
                        | (j.encrypted as u8) << 5
                        | (j.broadcast_key as u8) << 6
                        | (j.compressed as u8) << 7,
                ))
            }
        }
    }
}

/// Length of the authentication tag in security suite 0 (GCM tag truncated to 96 bits).
pub const TAG_LEN: usize = 12;

/// A ciphered APDU's envelope (Green Book 9.2.7.2.4):
/// ```text
/// service-specific: tag | len | SC | IC(4) | ciphertext | [tag(12)]
/// general-glo/ded:  tag | len system-title | len SC | IC(4) | ciphertext | [tag(12)]
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ciphered {
    pub cipher: CipheredKind,
    /// The sender's system title (general-glo/ded-ciphering only; may be empty when a
    /// meter model omits it).
    #[serde(default, with = "hexbytes::option")]
    pub system_title: Option<Vec<u8>>,
    pub security_control: SecurityControl,
    pub invocation_counter: u32,
    #[serde(with = "hexbytes")]
    pub ciphertext: Vec<u8>,
    /// The 12-byte authentication tag, present when the security control says so.
    #[serde(default, with = "hexbytes::option")]
    pub tag: Option<Vec<u8>>,
}

impl Ciphered {
    /// Parses SC | IC | ciphertext | tag.
    pub fn parse_content(cipher: CipheredKind, system_title: Option<Vec<u8>>, c: &mut Reader<'_>) -> Result<Ciphered> {
        let at = c.offset();
        let security_control =
            SecurityControl(c.u8("security control").map_err(|e| e.truncated_at("ciphered content", at))?);
        let invocation_counter = c.u32("invocation counter").map_err(|e| e.truncated_at("ciphered content", at))?;
        let rest = c.rest();
        let (ciphertext, tag) = if security_control.authenticated() {
            if rest.len() < TAG_LEN {
                return Err(Error::invalid(
                    "ciphered content",
                    at,
                    format!(
                        "{} bytes after the invocation counter; the authentication tag alone needs {TAG_LEN}",
                        rest.len()
                    ),
                ));
            }
            let (ct, t) = rest.split_at(rest.len() - TAG_LEN);
            (ct.to_vec(), Some(t.to_vec()))
        } else {
            (rest.to_vec(), None)
        };
        Ok(Ciphered { cipher, system_title, security_control, invocation_counter, ciphertext, tag })
    }

    fn decode_body(cipher: CipheredKind, r: &mut Reader<'_>) -> Result<Self> {
        let system_title = if cipher.is_general() {
            let at = r.offset();
            let st = r.axdr_bytes("system-title")?;
            if !(st.is_empty() || st.len() == 8) {
                return Err(Error::invalid("system-title", at, format!("{} bytes (8 expected)", st.len())));
            }
            Some(st.to_vec())
        } else {
            None
        };
        let len = r.axdr_length("ciphered content length")?;
        let mut c = r.sub(len, "ciphered content")?;
        Ciphered::parse_content(cipher, system_title, &mut c)
    }

    /// SC | IC | ciphertext | tag, the part the general APDUs wrap in an octet string.
    pub fn content(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(5 + self.ciphertext.len() + TAG_LEN);
        out.push(self.security_control.0);
        out.extend_from_slice(&self.invocation_counter.to_be_bytes());
        out.extend_from_slice(&self.ciphertext);
        if let Some(t) = &self.tag {
            out.extend_from_slice(t);
        }
        out
    }

    fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        if self.security_control.authenticated() != self.tag.is_some() {
            return Err(Error::encode("ciphered APDU", "a tag goes with, and only with, the authentication bit"));
        }
        if self.tag.as_ref().is_some_and(|t| t.len() != TAG_LEN) {
            return Err(Error::encode("ciphered APDU", format!("the tag must be {TAG_LEN} bytes")));
        }
        out.push(self.cipher.0);
        if self.cipher.is_general() {
            put_axdr_bytes(out, self.system_title.as_deref().unwrap_or(&[]));
        } else if self.system_title.is_some() {
            return Err(Error::encode("ciphered APDU", format!("{} carries no system title", self.cipher.name())));
        }
        let content = self.content();
        put_axdr_length(out, content.len());
        out.extend_from_slice(&content);
        Ok(())
    }
}

/// A ciphered APDU's envelope, borrowed from the bytes (the hot path's form of
/// [`Ciphered`]: nothing is copied until the ciphertext is decrypted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Envelope<'a> {
    pub kind: CipheredKind,
    /// The system title of general-glo/ded-ciphering when present (8 bytes).
    pub system_title: Option<&'a [u8; 8]>,
    pub security_control: SecurityControl,
    pub invocation_counter: u32,
    pub ciphertext: &'a [u8],
    pub tag: Option<&'a [u8]>,
}

impl<'a> Envelope<'a> {
    /// Parses a whole ciphered APDU (tag included) without copying.
    pub fn parse(apdu: &'a [u8]) -> Result<Envelope<'a>> {
        let mut r = Reader::new(apdu);
        let t = r.u8("APDU tag")?;
        if !CipheredKind::is_ciphered_tag(t) {
            return Err(Error::invalid("APDU", 0, format!("tag {t:#04x} is not a ciphered APDU")));
        }
        let kind = CipheredKind(t);
        let system_title = if kind.is_general() {
            let at = r.offset();
            let st = r.axdr_bytes("system-title")?;
            match st.len() {
                0 => None,
                8 => Some(st.try_into().expect("length checked")),
                n => return Err(Error::invalid("system-title", at, format!("{n} bytes (8 expected)"))),
            }
        } else {
            None
        };
        let len = r.axdr_length("ciphered content length")?;
        let start = r.offset();
        let content = r.bytes(len, "ciphered content").map_err(|e| e.truncated_at("APDU", 0))?;
        r.finish("APDU")?;
        if content.len() < 5 {
            return Err(Error::invalid("ciphered content", start, "shorter than security control and counter"));
        }
        let security_control = SecurityControl(content[0]);
        let invocation_counter = u32::from_be_bytes([content[1], content[2], content[3], content[4]]);
        let body = &content[5..];
        let (ciphertext, tag) = if security_control.authenticated() {
            if body.len() < TAG_LEN {
                return Err(Error::invalid("ciphered content", start + 5, "too short for the authentication tag"));
            }
            let (c, t) = body.split_at(body.len() - TAG_LEN);
            (c, Some(t))
        } else {
            (body, None)
        };
        Ok(Envelope { kind, system_title, security_control, invocation_counter, ciphertext, tag })
    }
}

/// Every APDU of the LN xDLMS and ACSE protocols.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "apdu", rename_all = "kebab-case")]
#[allow(clippy::large_enum_variant)]
pub enum Apdu {
    InitiateRequest(InitiateRequest),
    InitiateResponse(InitiateResponse),
    ConfirmedServiceError(ConfirmedServiceError),
    DataNotification(DataNotification),
    Aarq(Aarq),
    Aare(Aare),
    Rlrq(Rlrq),
    Rlre(Rlre),
    GetRequest(GetRequest),
    SetRequest(SetRequest),
    EventNotification(EventNotification),
    ActionRequest(ActionRequest),
    GetResponse(GetResponse),
    SetResponse(SetResponse),
    ActionResponse(ActionResponse),
    ExceptionResponse(ExceptionResponse),
    GeneralBlockTransfer(GeneralBlockTransfer),
    Ciphered(Ciphered),
}

impl Apdu {
    /// Decodes a buffer holding exactly one APDU.
    pub fn decode(buf: &[u8]) -> Result<Apdu> {
        Apdu::decode_at(buf, 0)
    }

    /// As [`Apdu::decode`], with error offsets relative to `base`.
    pub fn decode_at(buf: &[u8], base: usize) -> Result<Apdu> {
        let mut r = Reader::with_base(buf, base);
        let apdu = Apdu::decode_one(&mut r).map_err(|e| e.truncated_at("APDU", base))?;
        r.finish("APDU")?;
        Ok(apdu)
    }

    fn decode_one(r: &mut Reader<'_>) -> Result<Apdu> {
        let at = r.offset();
        let t = r.u8("APDU tag")?;
        Ok(match t {
            tag::INITIATE_REQUEST => Apdu::InitiateRequest(InitiateRequest::decode_body(r)?),
            tag::INITIATE_RESPONSE => Apdu::InitiateResponse(InitiateResponse::decode_body(r)?),
            tag::CONFIRMED_SERVICE_ERROR => Apdu::ConfirmedServiceError(ConfirmedServiceError::decode_body(r)?),
            tag::DATA_NOTIFICATION => Apdu::DataNotification(DataNotification::decode_body(r)?),
            tag::AARQ => Apdu::Aarq(Aarq::decode_body(r)?),
            tag::AARE => Apdu::Aare(Aare::decode_body(r)?),
            tag::RLRQ => Apdu::Rlrq(Rlrq::decode_body(r)?),
            tag::RLRE => Apdu::Rlre(Rlre::decode_body(r)?),
            tag::GET_REQUEST => Apdu::GetRequest(GetRequest::decode_body(r)?),
            tag::SET_REQUEST => Apdu::SetRequest(SetRequest::decode_body(r)?),
            tag::EVENT_NOTIFICATION => Apdu::EventNotification(EventNotification::decode_body(r)?),
            tag::ACTION_REQUEST => Apdu::ActionRequest(ActionRequest::decode_body(r)?),
            tag::GET_RESPONSE => Apdu::GetResponse(GetResponse::decode_body(r)?),
            tag::SET_RESPONSE => Apdu::SetResponse(SetResponse::decode_body(r)?),
            tag::ACTION_RESPONSE => Apdu::ActionResponse(ActionResponse::decode_body(r)?),
            tag::EXCEPTION_RESPONSE => Apdu::ExceptionResponse(ExceptionResponse::decode_body(r)?),
            tag::GENERAL_BLOCK_TRANSFER => Apdu::GeneralBlockTransfer(GeneralBlockTransfer::decode_body(r)?),
            t if CipheredKind::is_ciphered_tag(t) => Apdu::Ciphered(Ciphered::decode_body(CipheredKind(t), r)?),
            tag::GENERAL_CIPHERING | tag::GENERAL_SIGNING => {
                return Err(Error::unsupported(
                    "APDU",
                    at,
                    format!("{t:#04x} (general-ciphering / general-signing with key agreement)"),
                ))
            }
            0x05 | 0x06 | 0x0C | 0x0D | 0x16 | 0x18 => {
                return Err(Error::unsupported(
                    "APDU",
                    at,
                    format!("{t:#04x} is a short-name service; only logical names are used"),
                ))
            }
            t => return Err(Error::invalid("APDU", at, format!("unknown APDU tag {t:#04x}"))),
        })
    }

    /// Appends the encoding.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        match self {
            Apdu::InitiateRequest(x) => {
                out.push(tag::INITIATE_REQUEST);
                x.encode_body(out);
            }
            Apdu::InitiateResponse(x) => {
                out.push(tag::INITIATE_RESPONSE);
                x.encode_body(out);
            }
            Apdu::ConfirmedServiceError(x) => {
                out.push(tag::CONFIRMED_SERVICE_ERROR);
                x.encode_body(out);
            }
            Apdu::DataNotification(x) => {
                out.push(tag::DATA_NOTIFICATION);
                x.encode_body(out)?;
            }
            Apdu::Aarq(x) => x.encode(out)?,
            Apdu::Aare(x) => x.encode(out)?,
            Apdu::Rlrq(x) => x.encode(out)?,
            Apdu::Rlre(x) => x.encode(out)?,
            Apdu::GetRequest(x) => {
                out.push(tag::GET_REQUEST);
                x.encode_body(out)?;
            }
            Apdu::SetRequest(x) => {
                out.push(tag::SET_REQUEST);
                x.encode_body(out)?;
            }
            Apdu::EventNotification(x) => {
                out.push(tag::EVENT_NOTIFICATION);
                x.encode_body(out)?;
            }
            Apdu::ActionRequest(x) => {
                out.push(tag::ACTION_REQUEST);
                x.encode_body(out)?;
            }
            Apdu::GetResponse(x) => {
                out.push(tag::GET_RESPONSE);
                x.encode_body(out)?;
            }
            Apdu::SetResponse(x) => {
                out.push(tag::SET_RESPONSE);
                x.encode_body(out);
            }
            Apdu::ActionResponse(x) => {
                out.push(tag::ACTION_RESPONSE);
                x.encode_body(out)?;
            }
            Apdu::ExceptionResponse(x) => {
                out.push(tag::EXCEPTION_RESPONSE);
                x.encode_body(out)?;
            }
            Apdu::GeneralBlockTransfer(x) => {
                out.push(tag::GENERAL_BLOCK_TRANSFER);
                x.encode_body(out)?;
            }
            Apdu::Ciphered(x) => x.encode(out)?,
        }
        Ok(())
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(64);
        self.encode(&mut out)?;
        Ok(out)
    }

    /// The JSON form.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or_else(|e| Value::String(format!("unrenderable APDU: {e}")))
    }

    /// Parses the JSON form; the error names the field.
    pub fn from_json(v: &Value) -> std::result::Result<Apdu, String> {
        serde_json::from_value(v.clone()).map_err(|e| e.to_string())
    }

    /// A short name: "get-request", "data-notification", "glo-get-request", ...
    pub fn name(&self) -> &'static str {
        match self {
            Apdu::InitiateRequest(_) => "initiate-request",
            Apdu::InitiateResponse(_) => "initiate-response",
            Apdu::ConfirmedServiceError(_) => "confirmed-service-error",
            Apdu::DataNotification(_) => "data-notification",
            Apdu::Aarq(_) => "aarq",
            Apdu::Aare(_) => "aare",
            Apdu::Rlrq(_) => "rlrq",
            Apdu::Rlre(_) => "rlre",
            Apdu::GetRequest(_) => "get-request",
            Apdu::SetRequest(_) => "set-request",
            Apdu::EventNotification(_) => "event-notification",
            Apdu::ActionRequest(_) => "action-request",
            Apdu::GetResponse(_) => "get-response",
            Apdu::SetResponse(_) => "set-response",
            Apdu::ActionResponse(_) => "action-response",
            Apdu::ExceptionResponse(_) => "exception-response",
            Apdu::GeneralBlockTransfer(_) => "general-block-transfer",
            Apdu::Ciphered(c) => c.cipher.name(),
        }
    }
}
