//! xDLMS initiate, conformance and error APDUs (Green Book 9.5).
//!
//! ```text
//! InitiateRequest  01 | dedicated-key OPT | response-allowed DEFAULT TRUE | QoS OPT
//!                     | dlms-version u8 | conformance 5F1F 04 00 xxxxxx | client-max-pdu u16
//! InitiateResponse 08 | QoS OPT | dlms-version u8 | conformance | server-max-pdu u16 | vaa-name u16
//! ConfirmedServiceError 0E | service choice | ServiceError choice | detail
//! ExceptionResponse     D8 | state-error | service-error [| invocation counter u32]
//! ```

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{json, Value};

use super::common::{
    hexbytes, read_optional, ConfirmedService, ExceptionServiceError, ExceptionStateError, ServiceErrorKind,
};
use crate::codes;
use crate::data_json::{hex, unhex};
use crate::error::{Error, Result};
use crate::reader::{put_axdr_bytes, Reader};

/// The 24-bit conformance block; bit 0 is the most significant bit of the first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Conformance(pub u32);

impl Conformance {
    /// What a head-end client proposes: GET/SET/ACTION with block transfer, selective
    /// access, multiple references, data and event notification.
    pub const CLIENT_DEFAULT: Conformance = Conformance(0x00_7E_1F | 1 << (23 - 16));

    /// True when the service named (Green Book 9.4.6.1) is in the block.
    pub fn has(self, name: &str) -> bool {
        codes::conformance::code(name).is_some_and(|bit| self.0 & (1 << (23 - bit as u32)) != 0)
    }

    pub fn names(self) -> Vec<&'static str> {
        (0..24u8)
            .filter(|&bit| self.0 & (1 << (23 - bit as u32)) != 0)
            .map(|bit| codes::conformance::name(bit).unwrap_or("unknown"))
            .collect()
    }

    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> std::result::Result<Self, String> {
        let mut v = 0u32;
        for n in names {
            let bit = codes::conformance::code(n).ok_or_else(|| format!("unknown conformance bit {n:?}"))?;
            v |= 1 << (23 - bit as u32);
        }
        Ok(Conformance(v))
    }

    /// `5F 1F 04 00 b0 b1 b2`: [APPLICATION 31] IMPLICIT BIT STRING (SIZE(24)).
    pub fn decode(r: &mut Reader<'_>) -> Result<Self> {
        let at = r.offset();
        let t = r.array::<2>("conformance tag")?;
        if t != [0x5F, 0x1F] {
            return Err(Error::invalid("conformance", at, format!("tag {:02X}{:02X} (expected 5F1F)", t[0], t[1])));
        }
        let len = r.u8("conformance length")?;
        if len != 4 {
            return Err(Error::invalid("conformance", at + 2, format!("length {len} (expected 4)")));
        }
        let _unused_bits = r.u8("conformance unused bits")?;
        let b = r.array::<3>("conformance bits")?;
        Ok(Conformance(u32::from_be_bytes([0, b[0], b[1], b[2]])))
    }

    pub fn encode(self, out: &mut Vec<u8>) {
        let b = self.0.to_be_bytes();
        out.extend_from_slice(&[0x5F, 0x1F, 0x04, 0x00, b[1], b[2], b[3]]);
    }
}

impl Serialize for Conformance {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        json!({"hex": hex(&self.0.to_be_bytes()[1..]), "services": self.names()}).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Conformance {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        let from_hex = |h: &str| -> std::result::Result<Conformance, String> {
            let b = unhex(h)?;
            if b.len() != 3 {
                return Err("conformance hex must be 3 bytes".into());
            }
            Ok(Conformance(u32::from_be_bytes([0, b[0], b[1], b[2]])))
        };
        match &v {
            Value::String(h) => from_hex(h),
            Value::Object(o) => match (o.get("hex"), o.get("services")) {
                (Some(Value::String(h)), _) => from_hex(h),
                (_, Some(Value::Array(names))) => Conformance::from_names(names.iter().filter_map(Value::as_str)),
                _ => Err("conformance needs \"hex\" or \"services\"".into()),
            },
            Value::Array(names) => Conformance::from_names(names.iter().filter_map(Value::as_str)),
            _ => Err(format!("{v} is not a conformance block")),
        }
        .map_err(D::Error::custom)
    }
}

/// InitiateRequest (carried in the AARQ user-information).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InitiateRequest {
    #[serde(default, with = "hexbytes::option")]
    pub dedicated_key: Option<Vec<u8>>,
    #[serde(default = "yes")]
    pub response_allowed: bool,
    #[serde(default)]
    pub proposed_quality_of_service: Option<i8>,
    pub proposed_dlms_version: u8,
    pub proposed_conformance: Conformance,
    pub client_max_receive_pdu_size: u16,
}

fn yes() -> bool {
    true
}

impl InitiateRequest {
    pub fn decode_body(r: &mut Reader<'_>) -> Result<Self> {
        let dedicated_key =
            if read_optional(r, "dedicated-key")? { Some(r.axdr_bytes("dedicated-key")?.to_vec()) } else { None };
        // DEFAULT TRUE: 0x00 means "the default", else the value follows.
        let response_allowed =
            if read_optional(r, "response-allowed")? { r.boolean("response-allowed")? } else { true };
        let proposed_quality_of_service = if read_optional(r, "proposed-quality-of-service")? {
            Some(r.i8("proposed-quality-of-service")?)
        } else {
            None
        };
        Ok(InitiateRequest {
            dedicated_key,
            response_allowed,
            proposed_quality_of_service,
            proposed_dlms_version: r.u8("proposed-dlms-version-number")?,
            proposed_conformance: Conformance::decode(r)?,
            client_max_receive_pdu_size: r.u16("client-max-receive-pdu-size")?,
        })
    }

    pub fn encode_body(&self, out: &mut Vec<u8>) {
        match &self.dedicated_key {
            Some(k) => {
                out.push(1);
                put_axdr_bytes(out, k);
            }
            None => out.push(0),
        }
        if self.response_allowed {
            out.push(0);
        } else {
            out.extend_from_slice(&[1, 0]);
        }
        match self.proposed_quality_of_service {
            Some(q) => out.extend_from_slice(&[1, q as u8]),
            None => out.push(0),
        }
        out.push(self.proposed_dlms_version);
        self.proposed_conformance.encode(out);
        out.extend_from_slice(&self.client_max_receive_pdu_size.to_be_bytes());
    }
}

/// InitiateResponse (carried in the AARE user-information).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InitiateResponse {
    #[serde(default)]
    pub negotiated_quality_of_service: Option<i8>,
    pub negotiated_dlms_version: u8,
    pub negotiated_conformance: Conformance,
    pub server_max_receive_pdu_size: u16,
    /// 0x0007 for logical-name referencing.
    #[serde(default = "ln_vaa")]
    pub vaa_name: u16,
}

fn ln_vaa() -> u16 {
    0x0007
}

impl InitiateResponse {
    pub fn decode_body(r: &mut Reader<'_>) -> Result<Self> {
        let negotiated_quality_of_service = if read_optional(r, "negotiated-quality-of-service")? {
            Some(r.i8("negotiated-quality-of-service")?)
        } else {
            None
        };
        Ok(InitiateResponse {
            negotiated_quality_of_service,
            negotiated_dlms_version: r.u8("negotiated-dlms-version-number")?,
            negotiated_conformance: Conformance::decode(r)?,
            server_max_receive_pdu_size: r.u16("server-max-receive-pdu-size")?,
            vaa_name: r.u16("vaa-name")?,
        })
    }

    pub fn encode_body(&self, out: &mut Vec<u8>) {
        match self.negotiated_quality_of_service {
            Some(q) => out.extend_from_slice(&[1, q as u8]),
            None => out.push(0),
        }
        out.push(self.negotiated_dlms_version);
        self.negotiated_conformance.encode(out);
        out.extend_from_slice(&self.server_max_receive_pdu_size.to_be_bytes());
        out.extend_from_slice(&self.vaa_name.to_be_bytes());
    }
}

/// ConfirmedServiceError: which service failed, the ServiceError choice, and its detail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfirmedServiceError {
    pub service: ConfirmedService,
    pub error: ServiceErrorKind,
    pub detail: u8,
}

impl ConfirmedServiceError {
    pub fn detail_name(&self) -> Option<&'static str> {
        codes::service_error_detail::name(self.error.0, self.detail)
    }

    pub fn decode_body(r: &mut Reader<'_>) -> Result<Self> {
        Ok(ConfirmedServiceError {
            service: ConfirmedService(r.u8("ConfirmedServiceError service")?),
            error: ServiceErrorKind(r.u8("ServiceError choice")?),
            detail: r.u8("ServiceError detail")?,
        })
    }

    pub fn encode_body(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[self.service.0, self.error.0, self.detail]);
    }
}

impl Serialize for ConfirmedServiceError {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let detail = match self.detail_name() {
            Some(n) => json!(n),
            None => json!(self.detail),
        };
        json!({"service": self.service, "error": self.error, "detail": detail}).serialize(s)
    }
}

impl<'de> Deserialize<'de> for ConfirmedServiceError {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct J {
            service: ConfirmedService,
            error: ServiceErrorKind,
            detail: Value,
        }
        let j = J::deserialize(d)?;
        let detail = match &j.detail {
            Value::String(n) => codes::service_error_detail::code(j.error.0, n)
                .ok_or_else(|| D::Error::custom(format!("unknown detail {n:?} for {}", j.error)))?,
            Value::Number(n) => {
                n.as_u64().and_then(|v| u8::try_from(v).ok()).ok_or_else(|| D::Error::custom("detail out of range"))?
            }
            other => return Err(D::Error::custom(format!("detail must be a name or number, got {other}"))),
        };
        Ok(ConfirmedServiceError { service: j.service, error: j.error, detail })
    }
}

/// ExceptionResponse: the server could not process the APDU at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExceptionResponse {
    pub state_error: ExceptionStateError,
    pub service_error: ExceptionServiceError,
    /// The expected invocation counter, with service-error invocation-counter-error.
    #[serde(default)]
    pub invocation_counter: Option<u32>,
}

impl ExceptionResponse {
    const INVOCATION_COUNTER_ERROR: u8 = 6;

    pub fn decode_body(r: &mut Reader<'_>) -> Result<Self> {
        let state_error = ExceptionStateError(r.u8("state-error")?);
        let service_error = ExceptionServiceError(r.u8("service-error")?);
        let invocation_counter = if service_error.0 == Self::INVOCATION_COUNTER_ERROR {
            Some(r.u32("invocation-counter-error")?)
        } else {
            None
        };
        Ok(ExceptionResponse { state_error, service_error, invocation_counter })
    }

    pub fn encode_body(&self, out: &mut Vec<u8>) -> Result<()> {
        out.extend_from_slice(&[self.state_error.0, self.service_error.0]);
        match (self.service_error.0 == Self::INVOCATION_COUNTER_ERROR, self.invocation_counter) {
            (true, Some(ic)) => out.extend_from_slice(&ic.to_be_bytes()),
            (false, None) => {}
            (true, None) => {
                return Err(Error::encode("ExceptionResponse", "invocation-counter-error needs the invocation counter"))
            }
            (false, Some(_)) => {
                return Err(Error::encode(
                    "ExceptionResponse",
                    "an invocation counter goes only with invocation-counter-error",
                ))
            }
        }
        Ok(())
    }
}
