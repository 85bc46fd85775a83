//! ACSE APDUs in BER (Green Book 9.4.2, ISO/IEC 8650): AARQ, AARE, RLRQ, RLRE.
//!
//! ```text
//! AARQ 60 len
//!   A1 09 06 07 60 85 74 05 08 01 0x     application-context-name (LN=1, LN+ciphering=3)
//!   A6 0A 04 08 <system title>           calling-AP-title
//!   8A 02 07 80                          sender-acse-requirements (authentication)
//!   8B 07 60 85 74 05 08 02 0x           mechanism-name (LLS=1, HLS-GMAC=5)
//!   AC len 80 len <password/challenge>   calling-authentication-value
//!   BE len 04 len <xDLMS InitiateRequest or glo-initiateRequest>
//! AARE 61 len  A1 .. | A2 03 02 01 <result> | A3 05 A1|A2 03 02 01 <diagnostic>
//!   | A4 0A 04 08 <system title> | 88 02 07 80 | 89 07 .. | AA len 80 len <challenge> | BE ..
//! RLRQ 62 len [80 01 <reason>] [BE ..];  RLRE 63 len [80 01 <reason>] [BE ..]
//! ```

use serde::{Deserialize, Serialize};

use super::common::*;
use super::Apdu;
use crate::error::{Error, Result};
use crate::reader::{put_axdr_length, Reader};

/// 2.16.756.5.8 (DLMS UA), BER-encoded, followed by 1 (contexts) or 2 (mechanisms).
const DLMS_UA_OID: [u8; 5] = [0x60, 0x85, 0x74, 0x05, 0x08];

fn tlv<'a>(r: &mut Reader<'a>, what: &'static str) -> Result<(u8, usize, Reader<'a>)> {
    let at = r.offset();
    let tag = r.u8(what)?;
    let len = r.axdr_length(what)?;
    Ok((tag, at, r.sub(len, what)?))
}

fn put_tlv(out: &mut Vec<u8>, tag: u8, content: &[u8]) {
    out.push(tag);
    put_axdr_length(out, content.len());
    out.extend_from_slice(content);
}

fn expect_inner<'a>(c: &mut Reader<'a>, tag: u8, what: &'static str) -> Result<&'a [u8]> {
    let (t, at, mut inner) = tlv(c, what)?;
    if t != tag {
        return Err(Error::invalid(what, at, format!("inner tag {t:#04x} (expected {tag:#04x})")));
    }
    c.finish(what)?;
    Ok(inner.rest())
}

fn read_oid_arc(content: &[u8], kind: u8, at: usize, what: &'static str) -> Result<u8> {
    if content.len() == 7 && content[..5] == DLMS_UA_OID && content[5] == kind {
        Ok(content[6])
    } else {
        Err(Error::unsupported(
            what,
            at,
            format!("object identifier {} is not a DLMS UA name", crate::data_json::hex(content)),
        ))
    }
}

fn oid(kind: u8, arc: u8) -> [u8; 7] {
    [DLMS_UA_OID[0], DLMS_UA_OID[1], DLMS_UA_OID[2], DLMS_UA_OID[3], DLMS_UA_OID[4], kind, arc]
}

fn read_integer(bytes: &[u8], at: usize, what: &'static str) -> Result<i64> {
    if bytes.is_empty() || bytes.len() > 8 {
        return Err(Error::invalid(what, at, format!("INTEGER of {} bytes", bytes.len())));
    }
    let mut v: i64 = if bytes[0] & 0x80 != 0 { -1 } else { 0 };
    for &b in bytes {
        v = (v << 8) | b as i64;
    }
    Ok(v)
}

fn integer_bytes(v: i64) -> Vec<u8> {
    let b = v.to_be_bytes();
    let mut start = 0;
    while start < 7 {
        let (cur, next) = (b[start], b[start + 1]);
        if (cur == 0 && next & 0x80 == 0) || (cur == 0xFF && next & 0x80 != 0) {
            start += 1;
        } else {
            break;
        }
    }
    b[start..].to_vec()
}

fn read_acse_requirements(c: &mut Reader<'_>, at: usize) -> Result<bool> {
    let b = c.rest();
    if b.is_empty() || b.len() > 2 {
        return Err(Error::invalid("acse-requirements", at, format!("BIT STRING of {} bytes", b.len())));
    }
    Ok(b.len() == 2 && b[1] & 0x80 != 0)
}

fn put_acse_requirements(out: &mut Vec<u8>, tag: u8, authentication: bool) {
    put_tlv(out, tag, &[0x07, if authentication { 0x80 } else { 0x00 }]);
}

fn read_auth_value(c: &mut Reader<'_>) -> Result<Vec<u8>> {
    let (t, at, mut inner) = tlv(c, "authentication-value")?;
    match t {
        0x80 => Ok(inner.rest().to_vec()),
        0x81 => Err(Error::unsupported("authentication-value", at, "bitstring form")),
        t => Err(Error::invalid("authentication-value", at, format!("choice tag {t:#04x}"))),
    }
}

fn read_user_information(c: &mut Reader<'_>) -> Result<Box<Apdu>> {
    let at = c.offset();
    let xdlms = expect_inner(c, 0x04, "user-information")?;
    Apdu::decode_at(xdlms, at + 2).map(Box::new).map_err(|e| e.truncated_at("user-information", at))
}

fn put_user_information(out: &mut Vec<u8>, apdu: &Apdu) -> Result<()> {
    let inner = apdu.to_bytes()?;
    let mut octets = Vec::with_capacity(inner.len() + 3);
    put_tlv(&mut octets, 0x04, &inner);
    put_tlv(out, 0xBE, &octets);
    Ok(())
}

fn put_title(out: &mut Vec<u8>, tag: u8, v: &Option<Vec<u8>>) {
    if let Some(v) = v {
        let mut inner = Vec::with_capacity(v.len() + 2);
        put_tlv(&mut inner, 0x04, v);
        put_tlv(out, tag, &inner);
    }
}

fn put_invocation_id(out: &mut Vec<u8>, tag: u8, v: Option<i64>) {
    if let Some(v) = v {
        let mut inner = Vec::new();
        put_tlv(&mut inner, 0x02, &integer_bytes(v));
        put_tlv(out, tag, &inner);
    }
}

fn read_invocation_id(c: &mut Reader<'_>, at: usize) -> Result<i64> {
    let b = expect_inner(c, 0x02, "invocation-id")?;
    read_integer(b, at, "invocation-id")
}

/// AARQ: the client asks to associate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Aarq {
    #[serde(default, with = "hexbytes::option")]
    pub protocol_version: Option<Vec<u8>>,
    pub application_context: ApplicationContext,
    #[serde(default, with = "hexbytes::option")]
    pub called_ap_title: Option<Vec<u8>>,
    #[serde(default, with = "hexbytes::option")]
    pub called_ae_qualifier: Option<Vec<u8>>,
    #[serde(default)]
    pub called_ap_invocation_id: Option<i64>,
    #[serde(default)]
    pub called_ae_invocation_id: Option<i64>,
    /// The client's system title (8 bytes) in ciphered contexts.
    #[serde(default, with = "hexbytes::option")]
    pub calling_ap_title: Option<Vec<u8>>,
    #[serde(default, with = "hexbytes::option")]
    pub calling_ae_qualifier: Option<Vec<u8>>,
    #[serde(default)]
    pub calling_ap_invocation_id: Option<i64>,
    #[serde(default)]
    pub calling_ae_invocation_id: Option<i64>,
    /// Present and true when authentication is requested.
    #[serde(default)]
    pub sender_acse_requirements: Option<bool>,
    #[serde(default)]
    pub mechanism_name: Option<Mechanism>,
    /// The LLS password or the HLS challenge (CtoS).
    #[serde(default, with = "hexbytes::option")]
    pub calling_authentication_value: Option<Vec<u8>>,
    #[serde(default, with = "hexbytes::option")]
    pub implementation_information: Option<Vec<u8>>,
    #[serde(default)]
    pub user_information: Option<Box<Apdu>>,
}

impl Aarq {
    pub fn decode_body(r: &mut Reader<'_>) -> Result<Self> {
        let start = r.offset();
        let len = r.axdr_length("AARQ length")?;
        let mut body = r.sub(len, "AARQ")?;
        let mut a = Aarq {
            protocol_version: None,
            application_context: ApplicationContext(0),
            called_ap_title: None,
            called_ae_qualifier: None,
            called_ap_invocation_id: None,
            called_ae_invocation_id: None,
            calling_ap_title: None,
            calling_ae_qualifier: None,
            calling_ap_invocation_id: None,
            calling_ae_invocation_id: None,
            sender_acse_requirements: None,
            mechanism_name: None,
            calling_authentication_value: None,
            implementation_information: None,
            user_information: None,
        };
        let mut have_context = false;
        while !body.is_empty() {
            let (tag, at, mut c) = tlv(&mut body, "AARQ field")?;
            match tag {
                0x80 => a.protocol_version = Some(c.rest().to_vec()),
                0xA1 => {
                    let o = expect_inner(&mut c, 0x06, "application-context-name")?;
                    a.application_context = ApplicationContext(read_oid_arc(o, 1, at, "application-context-name")?);
                    have_context = true;
                }
                0xA2 => a.called_ap_title = Some(expect_inner(&mut c, 0x04, "called-AP-title")?.to_vec()),
                0xA3 => a.called_ae_qualifier = Some(expect_inner(&mut c, 0x04, "called-AE-qualifier")?.to_vec()),
                0xA4 => a.called_ap_invocation_id = Some(read_invocation_id(&mut c, at)?),
                0xA5 => a.called_ae_invocation_id = Some(read_invocation_id(&mut c, at)?),
                0xA6 => a.calling_ap_title = Some(expect_inner(&mut c, 0x04, "calling-AP-title")?.to_vec()),
                0xA7 => a.calling_ae_qualifier = Some(expect_inner(&mut c, 0x04, "calling-AE-qualifier")?.to_vec()),
                0xA8 => a.calling_ap_invocation_id = Some(read_invocation_id(&mut c, at)?),
                0xA9 => a.calling_ae_invocation_id = Some(read_invocation_id(&mut c, at)?),
                0x8A => a.sender_acse_requirements = Some(read_acse_requirements(&mut c, at)?),
                0x8B => a.mechanism_name = Some(Mechanism(read_oid_arc(c.rest(), 2, at, "mechanism-name")?)),
                0xAC => a.calling_authentication_value = Some(read_auth_value(&mut c)?),
                0x9D => a.implementation_information = Some(c.rest().to_vec()),
                0xBE => a.user_information = Some(read_user_information(&mut c)?),
                t => return Err(Error::invalid("AARQ", at, format!("unexpected field tag {t:#04x}"))),
            }
        }
        if !have_context {
            return Err(Error::invalid("AARQ", start, "application-context-name is missing"));
        }
        Ok(a)
    }

    pub fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        let mut b = Vec::with_capacity(128);
        if let Some(v) = &self.protocol_version {
            put_tlv(&mut b, 0x80, v);
        }
        let mut ctx = Vec::new();
        put_tlv(&mut ctx, 0x06, &oid(1, self.application_context.0));
        put_tlv(&mut b, 0xA1, &ctx);
        put_title(&mut b, 0xA2, &self.called_ap_title);
        put_title(&mut b, 0xA3, &self.called_ae_qualifier);
        put_invocation_id(&mut b, 0xA4, self.called_ap_invocation_id);
        put_invocation_id(&mut b, 0xA5, self.called_ae_invocation_id);
        put_title(&mut b, 0xA6, &self.calling_ap_title);
        put_title(&mut b, 0xA7, &self.calling_ae_qualifier);
        put_invocation_id(&mut b, 0xA8, self.calling_ap_invocation_id);
        put_invocation_id(&mut b, 0xA9, self.calling_ae_invocation_id);
        if let Some(auth) = self.sender_acse_requirements {
            put_acse_requirements(&mut b, 0x8A, auth);
        }
        if let Some(m) = self.mechanism_name {
            put_tlv(&mut b, 0x8B, &oid(2, m.0));
        }
        if let Some(v) = &self.calling_authentication_value {
            let mut inner = Vec::new();
            put_tlv(&mut inner, 0x80, v);
            put_tlv(&mut b, 0xAC, &inner);
        }
        if let Some(v) = &self.implementation_information {
            put_tlv(&mut b, 0x9D, v);
        }
        if let Some(u) = &self.user_information {
            put_user_information(&mut b, u)?;
        }
        put_tlv(out, 0x60, &b);
        Ok(())
    }
}

/// Associate-source-diagnostic: who rejected (or accepted) and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Diagnostic {
    AcseServiceUser(AcseServiceUser),
    AcseServiceProvider(AcseServiceProvider),
}

/// AARE: the server's answer to an AARQ.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Aare {
    #[serde(default, with = "hexbytes::option")]
    pub protocol_version: Option<Vec<u8>>,
    pub application_context: ApplicationContext,
    pub result: AssociationResult,
    pub diagnostic: Diagnostic,
    /// The meter's system title (8 bytes) in ciphered contexts.
    #[serde(default, with = "hexbytes::option")]
    pub responding_ap_title: Option<Vec<u8>>,
    #[serde(default, with = "hexbytes::option")]
    pub responding_ae_qualifier: Option<Vec<u8>>,
    #[serde(default)]
    pub responding_ap_invocation_id: Option<i64>,
    #[serde(default)]
    pub responding_ae_invocation_id: Option<i64>,
    #[serde(default)]
    pub responder_acse_requirements: Option<bool>,
    #[serde(default)]
    pub mechanism_name: Option<Mechanism>,
    /// The HLS challenge StoC.
    #[serde(default, with = "hexbytes::option")]
    pub responding_authentication_value: Option<Vec<u8>>,
    #[serde(default, with = "hexbytes::option")]
    pub implementation_information: Option<Vec<u8>>,
    #[serde(default)]
    pub user_information: Option<Box<Apdu>>,
}

impl Aare {
    pub fn decode_body(r: &mut Reader<'_>) -> Result<Self> {
        let start = r.offset();
        let len = r.axdr_length("AARE length")?;
        let mut body = r.sub(len, "AARE")?;
        let mut context = None;
        let mut result = None;
        let mut diagnostic = None;
        let mut a = Aare {
            protocol_version: None,
            application_context: ApplicationContext(0),
            result: AssociationResult(0),
            diagnostic: Diagnostic::AcseServiceUser(AcseServiceUser(0)),
            responding_ap_title: None,
            responding_ae_qualifier: None,
            responding_ap_invocation_id: None,
            responding_ae_invocation_id: None,
            responder_acse_requirements: None,
            mechanism_name: None,
            responding_authentication_value: None,
            implementation_information: None,
            user_information: None,
        };
        while !body.is_empty() {
            let (tag, at, mut c) = tlv(&mut body, "AARE field")?;
            match tag {
                0x80 => a.protocol_version = Some(c.rest().to_vec()),
                0xA1 => {
                    let o = expect_inner(&mut c, 0x06, "application-context-name")?;
                    context = Some(ApplicationContext(read_oid_arc(o, 1, at, "application-context-name")?));
                }
                0xA2 => {
                    let b = expect_inner(&mut c, 0x02, "result")?;
                    let v = read_integer(b, at, "result")?;
                    result = Some(AssociationResult(
                        u8::try_from(v).map_err(|_| Error::invalid("result", at, format!("{v}")))?,
                    ));
                }
                0xA3 => {
                    let (which, dat, mut inner) = tlv(&mut c, "result-source-diagnostic")?;
                    let b = expect_inner(&mut inner, 0x02, "result-source-diagnostic")?;
                    let v = u8::try_from(read_integer(b, dat, "result-source-diagnostic")?)
                        .map_err(|_| Error::invalid("result-source-diagnostic", dat, "out of range"))?;
                    diagnostic = Some(match which {
                        0xA1 => Diagnostic::AcseServiceUser(AcseServiceUser(v)),
                        0xA2 => Diagnostic::AcseServiceProvider(AcseServiceProvider(v)),
                        t => {
                            return Err(Error::invalid("result-source-diagnostic", dat, format!("choice tag {t:#04x}")))
                        }
                    });
                    c.finish("result-source-diagnostic")?;
                }
                0xA4 => a.responding_ap_title = Some(expect_inner(&mut c, 0x04, "responding-AP-title")?.to_vec()),
                0xA5 => {
                    a.responding_ae_qualifier = Some(expect_inner(&mut c, 0x04, "responding-AE-qualifier")?.to_vec())
                }
                0xA6 => a.responding_ap_invocation_id = Some(read_invocation_id(&mut c, at)?),
                0xA7 => a.responding_ae_invocation_id = Some(read_invocation_id(&mut c, at)?),
                0x88 => a.responder_acse_requirements = Some(read_acse_requirements(&mut c, at)?),
                0x89 => a.mechanism_name = Some(Mechanism(read_oid_arc(c.rest(), 2, at, "mechanism-name")?)),
                0xAA => a.responding_authentication_value = Some(read_auth_value(&mut c)?),
                0x9D => a.implementation_information = Some(c.rest().to_vec()),
                0xBE => a.user_information = Some(read_user_information(&mut c)?),
                t => return Err(Error::invalid("AARE", at, format!("unexpected field tag {t:#04x}"))),
            }
        }
        a.application_context =
            context.ok_or_else(|| Error::invalid("AARE", start, "application-context-name is missing"))?;
        a.result = result.ok_or_else(|| Error::invalid("AARE", start, "result is missing"))?;
        a.diagnostic =
            diagnostic.ok_or_else(|| Error::invalid("AARE", start, "result-source-diagnostic is missing"))?;
        Ok(a)
    }

    pub fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        let mut b = Vec::with_capacity(128);
        if let Some(v) = &self.protocol_version {
            put_tlv(&mut b, 0x80, v);
        }
        let mut ctx = Vec::new();
        put_tlv(&mut ctx, 0x06, &oid(1, self.application_context.0));
        put_tlv(&mut b, 0xA1, &ctx);
        put_tlv(&mut b, 0xA2, &[0x02, 0x01, self.result.0]);
        let (which, v) = match self.diagnostic {
            Diagnostic::AcseServiceUser(d) => (0xA1, d.0),
            Diagnostic::AcseServiceProvider(d) => (0xA2, d.0),
        };
        let mut diag = Vec::new();
        put_tlv(&mut diag, 0x02, &integer_bytes(v as i64));
        let mut choice = Vec::new();
        put_tlv(&mut choice, which, &diag);
        put_tlv(&mut b, 0xA3, &choice);
        put_title(&mut b, 0xA4, &self.responding_ap_title);
        put_title(&mut b, 0xA5, &self.responding_ae_qualifier);
        put_invocation_id(&mut b, 0xA6, self.responding_ap_invocation_id);
        put_invocation_id(&mut b, 0xA7, self.responding_ae_invocation_id);
        if let Some(auth) = self.responder_acse_requirements {
            put_acse_requirements(&mut b, 0x88, auth);
        }
        if let Some(m) = self.mechanism_name {
            put_tlv(&mut b, 0x89, &oid(2, m.0));
        }
        if let Some(v) = &self.responding_authentication_value {
            let mut inner = Vec::new();
            put_tlv(&mut inner, 0x80, v);
            put_tlv(&mut b, 0xAA, &inner);
        }
        if let Some(v) = &self.implementation_information {
            put_tlv(&mut b, 0x9D, v);
        }
        if let Some(u) = &self.user_information {
            put_user_information(&mut b, u)?;
        }
        put_tlv(out, 0x61, &b);
        Ok(())
    }
}

/// RLRQ: release request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rlrq {
    #[serde(default)]
    pub reason: Option<ReleaseRequestReason>,
    #[serde(default)]
    pub user_information: Option<Box<Apdu>>,
}

/// RLRE: release response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rlre {
    #[serde(default)]
    pub reason: Option<ReleaseResponseReason>,
    #[serde(default)]
    pub user_information: Option<Box<Apdu>>,
}

fn decode_release(r: &mut Reader<'_>, what: &'static str) -> Result<(Option<u8>, Option<Box<Apdu>>)> {
    let len = r.axdr_length(what)?;
    let mut body = r.sub(len, what)?;
    let (mut reason, mut user) = (None, None);
    while !body.is_empty() {
        let (tag, at, mut c) = tlv(&mut body, what)?;
        match tag {
            0x80 => {
                let v = read_integer(c.rest(), at, "release reason")?;
                reason = Some(u8::try_from(v).map_err(|_| Error::invalid("release reason", at, format!("{v}")))?);
            }
            0xBE => user = Some(read_user_information(&mut c)?),
            t => return Err(Error::invalid(what, at, format!("unexpected field tag {t:#04x}"))),
        }
    }
    Ok((reason, user))
}

fn encode_release(out: &mut Vec<u8>, tag: u8, reason: Option<u8>, user: &Option<Box<Apdu>>) -> Result<()> {
    let mut b = Vec::new();
    if let Some(r) = reason {
        put_tlv(&mut b, 0x80, &integer_bytes(r as i64));
    }
    if let Some(u) = user {
        put_user_information(&mut b, u)?;
    }
    put_tlv(out, tag, &b);
    Ok(())
}

impl Rlrq {
    pub fn decode_body(r: &mut Reader<'_>) -> Result<Self> {
        let (reason, user_information) = decode_release(r, "RLRQ")?;
        Ok(Rlrq { reason: reason.map(ReleaseRequestReason), user_information })
    }

    pub fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        encode_release(out, 0x62, self.reason.map(|r| r.0), &self.user_information)
    }
}

impl Rlre {
    pub fn decode_body(r: &mut Reader<'_>) -> Result<Self> {
        let (reason, user_information) = decode_release(r, "RLRE")?;
        Ok(Rlre { reason: reason.map(ReleaseResponseReason), user_information })
    }

    pub fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        encode_release(out, 0x63, self.reason.map(|r| r.0), &self.user_information)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_use_minimal_twos_complement() {
        for v in [0i64, 1, 127, 128, 255, 256, -1, -128, -129, i64::MAX, i64::MIN] {
            let b = integer_bytes(v);
            assert_eq!(read_integer(&b, 0, "x").unwrap(), v, "{v} -> {b:02X?}");
        }
        assert_eq!(integer_bytes(0), [0]);
        assert_eq!(integer_bytes(128), [0, 128]);
        assert_eq!(integer_bytes(-1), [0xFF]);
    }
}
