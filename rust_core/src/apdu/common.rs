//! Pieces shared by the xDLMS APDUs: invoke-ids, COSEM attribute and method
//! descriptors, selective access, data blocks, and the standard's code lists as types
//! that print by name (Green Book 9.5).

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::axdr::Data;
use crate::codes;
use crate::data_json::{hex, unhex};
use crate::error::{Error, Result};
use crate::obis::ObisCode;
use crate::reader::{put_axdr_length, Reader};

/// Serde helpers for byte fields rendered as hex.
pub mod hexbytes {
    use super::*;

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&hex(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        unhex(&s).map_err(D::Error::custom)
    }

    pub mod option {
        use super::*;

        pub fn serialize<S: Serializer>(b: &Option<Vec<u8>>, s: S) -> std::result::Result<S::Ok, S::Error> {
            match b {
                Some(b) => s.serialize_str(&hex(b)),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<Vec<u8>>, D::Error> {
            match Option::<String>::deserialize(d)? {
                Some(s) => unhex(&s).map(Some).map_err(D::Error::custom),
                None => Ok(None),
            }
        }
    }
}

/// Declares a code from one of the standard's lists: a `u8` newtype that serializes as
/// its name when the list knows it and as the number otherwise, and accepts both.
macro_rules! code_type {
    ($(#[$doc:meta])* $name:ident, $table:path) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub struct $name(pub u8);

        impl $name {
            /// The standard's name for this code, if it has one.
            pub fn name(self) -> Option<&'static str> {
                use $table as table;
                table::name(self.0)
            }

            /// The code with this name.
            pub fn from_name(name: &str) -> Option<Self> {
                use $table as table;
                table::code(name).map($name)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                match self.name() {
                    Some(n) => f.write_str(n),
                    None => write!(f, "{}", self.0),
                }
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                match self.name() {
                    Some(n) => s.serialize_str(n),
                    None => s.serialize_u8(self.0),
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                match Value::deserialize(d)? {
                    Value::String(s) => $name::from_name(&s)
                        .ok_or_else(|| D::Error::custom(format!("unknown {} {s:?}", stringify!($name)))),
                    Value::Number(n) => n
                        .as_u64()
                        .and_then(|v| u8::try_from(v).ok())
                        .map($name)
                        .ok_or_else(|| D::Error::custom(format!("{} {n} is out of range", stringify!($name)))),
                    other => Err(D::Error::custom(format!("{} must be a name or number, got {other}", stringify!($name)))),
                }
            }
        }
    };
}

code_type!(
    /// Data-Access-Result (GET/SET results).
    DataAccessResult,
    codes::data_access_result
);
code_type!(
    /// Action-Result.
    ActionResult,
    codes::action_result
);
code_type!(
    /// ExceptionResponse state-error.
    ExceptionStateError,
    codes::exception_state_error
);
code_type!(
    /// ExceptionResponse service-error.
    ExceptionServiceError,
    codes::exception_service_error
);
code_type!(
    /// ConfirmedServiceError: which service failed.
    ConfirmedService,
    codes::confirmed_service
);
code_type!(
    /// ConfirmedServiceError: the ServiceError choice.
    ServiceErrorKind,
    codes::service_error
);
code_type!(
    /// AARE result.
    AssociationResult,
    codes::association_result
);
code_type!(
    /// AARE diagnostic from the ACSE service user.
    AcseServiceUser,
    codes::acse_service_user
);
code_type!(
    /// AARE diagnostic from the ACSE service provider.
    AcseServiceProvider,
    codes::acse_service_provider
);
code_type!(
    /// Application context name, last arc of 2.16.756.5.8.1.x.
    ApplicationContext,
    codes::application_context
);
code_type!(
    /// Authentication mechanism name, last arc of 2.16.756.5.8.2.x.
    Mechanism,
    codes::mechanism
);
code_type!(
    /// RLRQ reason.
    ReleaseRequestReason,
    codes::release_request_reason
);
code_type!(
    /// RLRE reason.
    ReleaseResponseReason,
    codes::release_response_reason
);

impl DataAccessResult {
    pub const SUCCESS: DataAccessResult = DataAccessResult(0);
}

impl ActionResult {
    pub const SUCCESS: ActionResult = ActionResult(0);
}

/// Invoke-Id-And-Priority (one byte): bits 0-3 invoke id, bit 6 service class
/// (1 = confirmed), bit 7 priority (1 = high); bits 4-5 reserved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InvokeIdAndPriority(pub u8);

impl InvokeIdAndPriority {
    /// A confirmed, high-priority request with this invoke id (the usual client choice).
    pub fn new(invoke_id: u8, confirmed: bool, high_priority: bool) -> Self {
        InvokeIdAndPriority((invoke_id & 0x0F) | (confirmed as u8) << 6 | (high_priority as u8) << 7)
    }

    pub fn invoke_id(self) -> u8 {
        self.0 & 0x0F
    }

    pub fn confirmed(self) -> bool {
        self.0 & 0x40 != 0
    }

    pub fn high_priority(self) -> bool {
        self.0 & 0x80 != 0
    }
}

#[derive(Serialize, Deserialize)]
struct InvokeIdJson {
    invoke_id: u8,
    confirmed: bool,
    high_priority: bool,
    #[serde(default, skip_serializing_if = "is_zero")]
    reserved: u8,
}

fn is_zero(v: &u8) -> bool {
    *v == 0
}

impl Serialize for InvokeIdAndPriority {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        InvokeIdJson {
            invoke_id: self.invoke_id(),
            confirmed: self.confirmed(),
            high_priority: self.high_priority(),
            reserved: (self.0 >> 4) & 0x03,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for InvokeIdAndPriority {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::Number(n) => n
                .as_u64()
                .and_then(|v| u8::try_from(v).ok())
                .map(InvokeIdAndPriority)
                .ok_or_else(|| D::Error::custom("invoke-id-and-priority must be 0..255")),
            v => {
                let j: InvokeIdJson = serde_json::from_value(v).map_err(D::Error::custom)?;
                if j.invoke_id > 15 || j.reserved > 3 {
                    return Err(D::Error::custom("invoke_id is 0..15, reserved 0..3"));
                }
                Ok(InvokeIdAndPriority(
                    InvokeIdAndPriority::new(j.invoke_id, j.confirmed, j.high_priority).0 | j.reserved << 4,
                ))
            }
        }
    }
}

/// Long-Invoke-Id-And-Priority (four bytes, DataNotification): bits 0-23 invoke id,
/// bit 28 self-descriptive, bit 29 processing option (break on error), bit 30 service
/// class (confirmed), bit 31 priority (high).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LongInvokeIdAndPriority(pub u32);

impl LongInvokeIdAndPriority {
    pub fn invoke_id(self) -> u32 {
        self.0 & 0x00FF_FFFF
    }
}

#[derive(Serialize, Deserialize)]
struct LongInvokeIdJson {
    invoke_id: u32,
    #[serde(default)]
    self_descriptive: bool,
    #[serde(default)]
    break_on_error: bool,
    #[serde(default)]
    confirmed: bool,
    #[serde(default)]
    high_priority: bool,
    #[serde(default, skip_serializing_if = "is_zero")]
    reserved: u8,
}

impl Serialize for LongInvokeIdAndPriority {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let v = self.0;
        LongInvokeIdJson {
            invoke_id: self.invoke_id(),
            self_descriptive: v & (1 << 28) != 0,
            break_on_error: v & (1 << 29) != 0,
            confirmed: v & (1 << 30) != 0,
            high_priority: v & (1 << 31) != 0,
            reserved: ((v >> 24) & 0x0F) as u8,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for LongInvokeIdAndPriority {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::Number(n) => n
                .as_u64()
                .and_then(|v| u32::try_from(v).ok())
                .map(LongInvokeIdAndPriority)
                .ok_or_else(|| D::Error::custom("long-invoke-id-and-priority must fit in 32 bits")),
            v => {
                let j: LongInvokeIdJson = serde_json::from_value(v).map_err(D::Error::custom)?;
                if j.invoke_id > 0x00FF_FFFF || j.reserved > 0x0F {
                    return Err(D::Error::custom("invoke_id is 24 bits, reserved 4 bits"));
                }
                Ok(LongInvokeIdAndPriority(
                    j.invoke_id
                        | (j.reserved as u32) << 24
                        | (j.self_descriptive as u32) << 28
                        | (j.break_on_error as u32) << 29
                        | (j.confirmed as u32) << 30
                        | (j.high_priority as u32) << 31,
                ))
            }
        }
    }
}

/// Cosem-Attribute-Descriptor: class id, instance (OBIS), attribute id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AttributeDescriptor {
    pub class_id: u16,
    pub instance_id: ObisCode,
    pub attribute_id: i8,
}

/// Cosem-Method-Descriptor: class id, instance (OBIS), method id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MethodDescriptor {
    pub class_id: u16,
    pub instance_id: ObisCode,
    pub method_id: i8,
}

fn read_class_instance(r: &mut Reader<'_>) -> Result<(u16, ObisCode)> {
    let class_id = r.u16("class-id")?;
    let instance_id = ObisCode(r.array("instance-id")?);
    Ok((class_id, instance_id))
}

impl AttributeDescriptor {
    pub fn decode(r: &mut Reader<'_>) -> Result<Self> {
        let (class_id, instance_id) = read_class_instance(r)?;
        Ok(AttributeDescriptor { class_id, instance_id, attribute_id: r.i8("attribute-id")? })
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.class_id.to_be_bytes());
        out.extend_from_slice(&self.instance_id.0);
        out.push(self.attribute_id as u8);
    }
}

impl MethodDescriptor {
    pub fn decode(r: &mut Reader<'_>) -> Result<Self> {
        let (class_id, instance_id) = read_class_instance(r)?;
        Ok(MethodDescriptor { class_id, instance_id, method_id: r.i8("method-id")? })
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.class_id.to_be_bytes());
        out.extend_from_slice(&self.instance_id.0);
        out.push(self.method_id as u8);
    }
}

/// Selective-Access-Descriptor: access selector and its parameters (Blue Book: 1 is
/// range_descriptor, 2 entry_descriptor for profile generic buffers).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SelectiveAccess {
    pub selector: u8,
    pub parameters: Data,
}

/// Decodes `OPTIONAL` presence: 0 absent, anything else present.
pub fn read_optional(r: &mut Reader<'_>, what: &'static str) -> Result<bool> {
    Ok(r.u8(what)? != 0)
}

impl SelectiveAccess {
    /// Reads `Selective-Access-Descriptor OPTIONAL`.
    pub fn decode_optional(r: &mut Reader<'_>) -> Result<Option<Self>> {
        if !read_optional(r, "access-selection")? {
            return Ok(None);
        }
        let selector = r.u8("access-selector")?;
        let parameters = Data::decode(r)?;
        Ok(Some(SelectiveAccess { selector, parameters }))
    }

    pub fn encode_optional(s: &Option<Self>, out: &mut Vec<u8>) -> Result<()> {
        match s {
            None => out.push(0),
            Some(s) => {
                out.push(1);
                out.push(s.selector);
                s.parameters.encode(out)?;
            }
        }
        Ok(())
    }
}

/// An attribute with optional selective access (the item of with-list requests).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttributeWithSelection {
    pub attribute: AttributeDescriptor,
    #[serde(default)]
    pub access_selection: Option<SelectiveAccess>,
}

impl AttributeWithSelection {
    pub fn decode(r: &mut Reader<'_>) -> Result<Self> {
        Ok(AttributeWithSelection {
            attribute: AttributeDescriptor::decode(r)?,
            access_selection: SelectiveAccess::decode_optional(r)?,
        })
    }

    pub fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        self.attribute.encode(out);
        SelectiveAccess::encode_optional(&self.access_selection, out)
    }
}

/// Get-Data-Result: the value or why there is none.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GetDataResult {
    Data(Data),
    DataAccessResult(DataAccessResult),
}

impl GetDataResult {
    pub fn decode(r: &mut Reader<'_>) -> Result<Self> {
        let at = r.offset();
        match r.u8("Get-Data-Result choice")? {
            0 => Ok(GetDataResult::Data(Data::decode(r)?)),
            1 => Ok(GetDataResult::DataAccessResult(DataAccessResult(r.u8("data-access-result")?))),
            c => Err(Error::invalid("Get-Data-Result", at, format!("choice {c} (0 data, 1 data-access-result)"))),
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        match self {
            GetDataResult::Data(d) => {
                out.push(0);
                d.encode(out)
            }
            GetDataResult::DataAccessResult(r) => {
                out.extend_from_slice(&[1, r.0]);
                Ok(())
            }
        }
    }
}

/// DataBlock-G (get-response-with-datablock): raw data or a data-access-result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataBlockG {
    pub last_block: bool,
    pub block_number: u32,
    pub result: DataBlockResult,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DataBlockResult {
    RawData(#[serde(with = "hexbytes")] Vec<u8>),
    DataAccessResult(DataAccessResult),
}

impl DataBlockG {
    pub fn decode(r: &mut Reader<'_>) -> Result<Self> {
        let last_block = r.boolean("last-block")?;
        let block_number = r.u32("block-number")?;
        let at = r.offset();
        let result = match r.u8("DataBlock-G result choice")? {
            0 => DataBlockResult::RawData(r.axdr_bytes("raw-data")?.to_vec()),
            1 => DataBlockResult::DataAccessResult(DataAccessResult(r.u8("data-access-result")?)),
            c => {
                return Err(Error::invalid(
                    "DataBlock-G",
                    at,
                    format!("result choice {c} (0 raw-data, 1 data-access-result)"),
                ))
            }
        };
        Ok(DataBlockG { last_block, block_number, result })
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.last_block as u8);
        out.extend_from_slice(&self.block_number.to_be_bytes());
        match &self.result {
            DataBlockResult::RawData(b) => {
                out.push(0);
                put_axdr_length(out, b.len());
                out.extend_from_slice(b);
            }
            DataBlockResult::DataAccessResult(r) => out.extend_from_slice(&[1, r.0]),
        }
    }
}

/// DataBlock-SA (set and action block transfer).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataBlockSA {
    pub last_block: bool,
    pub block_number: u32,
    #[serde(with = "hexbytes")]
    pub raw_data: Vec<u8>,
}

impl DataBlockSA {
    pub fn decode(r: &mut Reader<'_>) -> Result<Self> {
        Ok(DataBlockSA {
            last_block: r.boolean("last-block")?,
            block_number: r.u32("block-number")?,
            raw_data: r.axdr_bytes("raw-data")?.to_vec(),
        })
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.last_block as u8);
        out.extend_from_slice(&self.block_number.to_be_bytes());
        put_axdr_length(out, self.raw_data.len());
        out.extend_from_slice(&self.raw_data);
    }
}

/// Reads a SEQUENCE OF count, bounded by the bytes left (each item takes at least
/// `min_item` bytes), so a hostile count cannot force a huge allocation.
pub fn read_seq_len(r: &mut Reader<'_>, what: &'static str, min_item: usize) -> Result<usize> {
    let n = r.axdr_length(what)?;
    let need = n.saturating_mul(min_item.max(1));
    if need > r.remaining() {
        return Err(Error::Incomplete { what, needed: need - r.remaining() });
    }
    Ok(n)
}

/// Decodes `SEQUENCE OF T`.
pub fn read_seq<T>(
    r: &mut Reader<'_>,
    what: &'static str,
    min_item: usize,
    mut item: impl FnMut(&mut Reader<'_>) -> Result<T>,
) -> Result<Vec<T>> {
    let n = read_seq_len(r, what, min_item)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(item(r)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_print_by_name_and_accept_numbers() {
        let r = DataAccessResult(4);
        assert_eq!(serde_json::to_value(r).unwrap(), "object-undefined");
        assert_eq!(serde_json::to_value(DataAccessResult(77)).unwrap(), 77);
        let back: DataAccessResult = serde_json::from_value(serde_json::json!("object-undefined")).unwrap();
        assert_eq!(back, r);
        let num: DataAccessResult = serde_json::from_value(serde_json::json!(77)).unwrap();
        assert_eq!(num.0, 77);
        assert!(serde_json::from_value::<DataAccessResult>(serde_json::json!("nope")).is_err());
    }

    #[test]
    fn invoke_id_flags() {
        let i = InvokeIdAndPriority::new(1, true, true);
        assert_eq!(i.0, 0xC1);
        let j = serde_json::to_value(i).unwrap();
        assert_eq!(j, serde_json::json!({"invoke_id": 1, "confirmed": true, "high_priority": true}));
        assert_eq!(serde_json::from_value::<InvokeIdAndPriority>(j).unwrap(), i);
        let raw: InvokeIdAndPriority = serde_json::from_value(serde_json::json!(0x81)).unwrap();
        assert_eq!(raw.0, 0x81);
        let l = LongInvokeIdAndPriority(0xC000_01DB);
        let back: LongInvokeIdAndPriority = serde_json::from_value(serde_json::to_value(l).unwrap()).unwrap();
        assert_eq!(back, l);
    }

    #[test]
    fn hostile_sequence_counts_are_bounded() {
        let mut r = Reader::new(&[0x84, 0x00, 0xFF, 0xFF, 0xFF, 0x00]);
        assert!(matches!(read_seq_len(&mut r, "list", 9), Err(Error::Incomplete { .. })));
    }
}
