//! A-XDR `Data` (Green Book 9.5, "Data ::= CHOICE"; IEC 61334-6 encoding rules).
//!
//! ```text
//! Data   := tag(1) content
//! array / structure := tag length(A-XDR) Data*
//! compact-array     := 0x13 TypeDescription length(A-XDR) contents   (values without tags)
//! octet-, visible-, utf8-string := tag length bytes;  bit-string := 0x04 length-in-bits bytes
//! fixed-size numbers, float32/64, date-time(12), date(5), time(4): tag + big-endian bytes
//! ```
//! Decoding enforces a nesting depth ceiling and a node budget proportional to the
//! input, so hostile input (deep nesting, compact arrays of zero-size elements) gives an
//! error, never a stack overflow or unbounded allocation.

use std::fmt;

use crate::datetime::{Date, DateTime, Time};
use crate::error::{Error, Result};
use crate::reader::{put_axdr_bytes, put_axdr_length, Reader};

/// A-XDR type tags.
pub mod tag {
    pub const NULL_DATA: u8 = 0;
    pub const ARRAY: u8 = 1;
    pub const STRUCTURE: u8 = 2;
    pub const BOOLEAN: u8 = 3;
    pub const BIT_STRING: u8 = 4;
    pub const DOUBLE_LONG: u8 = 5;
    pub const DOUBLE_LONG_UNSIGNED: u8 = 6;
    pub const OCTET_STRING: u8 = 9;
    pub const VISIBLE_STRING: u8 = 10;
    pub const UTF8_STRING: u8 = 12;
    pub const BCD: u8 = 13;
    pub const INTEGER: u8 = 15;
    pub const LONG: u8 = 16;
    pub const UNSIGNED: u8 = 17;
    pub const LONG_UNSIGNED: u8 = 18;
    pub const COMPACT_ARRAY: u8 = 19;
    pub const LONG64: u8 = 20;
    pub const LONG64_UNSIGNED: u8 = 21;
    pub const ENUM: u8 = 22;
    pub const FLOAT32: u8 = 23;
    pub const FLOAT64: u8 = 24;
    pub const DATE_TIME: u8 = 25;
    pub const DATE: u8 = 26;
    pub const TIME: u8 = 27;
    pub const DELTA_INTEGER: u8 = 28;
    pub const DELTA_LONG: u8 = 29;
    pub const DELTA_DOUBLE_LONG: u8 = 30;
    pub const DELTA_UNSIGNED: u8 = 31;
    pub const DELTA_LONG_UNSIGNED: u8 = 32;
    pub const DELTA_DOUBLE_LONG_UNSIGNED: u8 = 33;
    pub const DONT_CARE: u8 = 255;
}

/// Maximum nesting of arrays, structures and type descriptions.
pub const MAX_DEPTH: usize = 32;

/// The standard's name of a type tag (as used in our JSON), or None for an unknown tag.
pub fn type_name(t: u8) -> Option<&'static str> {
    Some(match t {
        tag::NULL_DATA => "null-data",
        tag::ARRAY => "array",
        tag::STRUCTURE => "structure",
        tag::BOOLEAN => "boolean",
        tag::BIT_STRING => "bit-string",
        tag::DOUBLE_LONG => "double-long",
        tag::DOUBLE_LONG_UNSIGNED => "double-long-unsigned",
        tag::OCTET_STRING => "octet-string",
        tag::VISIBLE_STRING => "visible-string",
        tag::UTF8_STRING => "utf8-string",
        tag::BCD => "bcd",
        tag::INTEGER => "integer",
        tag::LONG => "long",
        tag::UNSIGNED => "unsigned",
        tag::LONG_UNSIGNED => "long-unsigned",
        tag::COMPACT_ARRAY => "compact-array",
        tag::LONG64 => "long64",
        tag::LONG64_UNSIGNED => "long64-unsigned",
        tag::ENUM => "enum",
        tag::FLOAT32 => "float32",
        tag::FLOAT64 => "float64",
        tag::DATE_TIME => "date-time",
        tag::DATE => "date",
        tag::TIME => "time",
        tag::DELTA_INTEGER => "delta-integer",
        tag::DELTA_LONG => "delta-long",
        tag::DELTA_DOUBLE_LONG => "delta-double-long",
        tag::DELTA_UNSIGNED => "delta-unsigned",
        tag::DELTA_LONG_UNSIGNED => "delta-long-unsigned",
        tag::DELTA_DOUBLE_LONG_UNSIGNED => "delta-double-long-unsigned",
        tag::DONT_CARE => "dont-care",
        _ => return None,
    })
}

/// The tag of a type name (inverse of [`type_name`]).
pub fn type_tag(name: &str) -> Option<u8> {
    (0..=255u8).find(|&t| type_name(t) == Some(name))
}

/// A bit-string: `bits` significant bits, most significant bit of `bytes[0]` first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BitString {
    pub bits: usize,
    pub bytes: Vec<u8>,
}

impl BitString {
    pub fn new(bits: usize, bytes: Vec<u8>) -> Result<Self> {
        if bytes.len() != bits.div_ceil(8) {
            return Err(Error::encode(
                "bit-string",
                format!("{bits} bits need {} bytes, got {}", bits.div_ceil(8), bytes.len()),
            ));
        }
        Ok(BitString { bits, bytes })
    }

    /// Bit `i`, counting from the first (most significant) bit.
    pub fn get(&self, i: usize) -> bool {
        i < self.bits && self.bytes[i / 8] & (0x80 >> (i % 8)) != 0
    }
}

/// The type description of a compact array's elements.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TypeDesc {
    /// A simple type, by tag (not array, structure or compact-array).
    Simple(u8),
    Array {
        count: u16,
        element: Box<TypeDesc>,
    },
    Structure(Vec<TypeDesc>),
}

/// A DLMS/COSEM data value.
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    Null,
    Array(Vec<Data>),
    Structure(Vec<Data>),
    Boolean(bool),
    BitString(BitString),
    DoubleLong(i32),
    DoubleLongUnsigned(u32),
    OctetString(Vec<u8>),
    /// ASCII by the standard; kept as bytes so any input round-trips exactly.
    VisibleString(Vec<u8>),
    /// UTF-8 by the standard; kept as bytes so invalid input round-trips exactly.
    Utf8String(Vec<u8>),
    Bcd(u8),
    Integer(i8),
    Long(i16),
    Unsigned(u8),
    LongUnsigned(u16),
    CompactArray {
        description: TypeDesc,
        elements: Vec<Data>,
    },
    Long64(i64),
    Long64Unsigned(u64),
    Enum(u8),
    Float32(f32),
    Float64(f64),
    DateTime(DateTime),
    Date(Date),
    Time(Time),
    DeltaInteger(i8),
    DeltaLong(i16),
    DeltaDoubleLong(i32),
    DeltaUnsigned(u8),
    DeltaLongUnsigned(u16),
    DeltaDoubleLongUnsigned(u32),
    DontCare,
}

impl Data {
    /// The A-XDR tag of this value.
    pub fn tag(&self) -> u8 {
        match self {
            Data::Null => tag::NULL_DATA,
            Data::Array(_) => tag::ARRAY,
            Data::Structure(_) => tag::STRUCTURE,
            Data::Boolean(_) => tag::BOOLEAN,
            Data::BitString(_) => tag::BIT_STRING,
            Data::DoubleLong(_) => tag::DOUBLE_LONG,
            Data::DoubleLongUnsigned(_) => tag::DOUBLE_LONG_UNSIGNED,
            Data::OctetString(_) => tag::OCTET_STRING,
            Data::VisibleString(_) => tag::VISIBLE_STRING,
            Data::Utf8String(_) => tag::UTF8_STRING,
            Data::Bcd(_) => tag::BCD,
            Data::Integer(_) => tag::INTEGER,
            Data::Long(_) => tag::LONG,
            Data::Unsigned(_) => tag::UNSIGNED,
            Data::LongUnsigned(_) => tag::LONG_UNSIGNED,
            Data::CompactArray { .. } => tag::COMPACT_ARRAY,
            Data::Long64(_) => tag::LONG64,
            Data::Long64Unsigned(_) => tag::LONG64_UNSIGNED,
            Data::Enum(_) => tag::ENUM,
            Data::Float32(_) => tag::FLOAT32,
            Data::Float64(_) => tag::FLOAT64,
            Data::DateTime(_) => tag::DATE_TIME,
            Data::Date(_) => tag::DATE,
            Data::Time(_) => tag::TIME,
            Data::DeltaInteger(_) => tag::DELTA_INTEGER,
            Data::DeltaLong(_) => tag::DELTA_LONG,
            Data::DeltaDoubleLong(_) => tag::DELTA_DOUBLE_LONG,
            Data::DeltaUnsigned(_) => tag::DELTA_UNSIGNED,
            Data::DeltaLongUnsigned(_) => tag::DELTA_LONG_UNSIGNED,
            Data::DeltaDoubleLongUnsigned(_) => tag::DELTA_DOUBLE_LONG_UNSIGNED,
            Data::DontCare => tag::DONT_CARE,
        }
    }

    /// The standard's type name ("double-long-unsigned").
    pub fn type_name(&self) -> &'static str {
        type_name(self.tag()).unwrap_or("unknown")
    }

    /// The numeric value of an integer, float, enum or boolean as f64 (for scaling).
    pub fn as_f64(&self) -> Option<f64> {
        Some(match *self {
            Data::Boolean(b) => b as u8 as f64,
            Data::DoubleLong(v) | Data::DeltaDoubleLong(v) => v as f64,
            Data::DoubleLongUnsigned(v) | Data::DeltaDoubleLongUnsigned(v) => v as f64,
            Data::Integer(v) | Data::DeltaInteger(v) => v as f64,
            Data::Long(v) | Data::DeltaLong(v) => v as f64,
            Data::Unsigned(v) | Data::Enum(v) | Data::DeltaUnsigned(v) | Data::Bcd(v) => v as f64,
            Data::LongUnsigned(v) | Data::DeltaLongUnsigned(v) => v as f64,
            Data::Long64(v) => v as f64,
            Data::Long64Unsigned(v) => v as f64,
            Data::Float32(v) => v as f64,
            Data::Float64(v) => v,
            _ => return None,
        })
    }

    /// The integer value of an integer-typed value (exact, unlike [`Data::as_f64`]).
    pub fn as_i128(&self) -> Option<i128> {
        Some(match *self {
            Data::Boolean(b) => b as i128,
            Data::DoubleLong(v) | Data::DeltaDoubleLong(v) => v as i128,
            Data::DoubleLongUnsigned(v) | Data::DeltaDoubleLongUnsigned(v) => v as i128,
            Data::Integer(v) | Data::DeltaInteger(v) => v as i128,
            Data::Long(v) | Data::DeltaLong(v) => v as i128,
            Data::Unsigned(v) | Data::Enum(v) | Data::DeltaUnsigned(v) | Data::Bcd(v) => v as i128,
            Data::LongUnsigned(v) | Data::DeltaLongUnsigned(v) => v as i128,
            Data::Long64(v) => v as i128,
            Data::Long64Unsigned(v) => v as i128,
            _ => return None,
        })
    }

    /// Decodes one value, consuming exactly its bytes from `r`.
    pub fn decode(r: &mut Reader<'_>) -> Result<Data> {
        let budget = r.remaining().saturating_mul(8).saturating_add(1024);
        let mut d = Decoder { budget };
        d.data(r, 0)
    }

    /// Decodes a buffer that must hold exactly one value.
    pub fn from_bytes(buf: &[u8]) -> Result<Data> {
        let mut r = Reader::new(buf);
        let v = Data::decode(&mut r)?;
        r.finish("Data")?;
        Ok(v)
    }

    /// Appends the A-XDR encoding.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        out.push(self.tag());
        self.encode_content(out, 0)
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.encode(&mut out)?;
        Ok(out)
    }

    /// The encoding without the tag (the form inside compact arrays), after the caller
    /// has checked the value against its type description.
    fn encode_content(&self, out: &mut Vec<u8>, depth: usize) -> Result<()> {
        if depth > MAX_DEPTH {
            return Err(Error::encode("Data", format!("nesting deeper than {MAX_DEPTH}")));
        }
        match self {
            Data::Null | Data::DontCare => {}
            Data::Array(items) | Data::Structure(items) => {
                put_axdr_length(out, items.len());
                for item in items {
                    item.encode_inner(out, depth + 1)?;
                }
            }
            Data::Boolean(b) => out.push(*b as u8),
            Data::BitString(bs) => {
                if bs.bytes.len() != bs.bits.div_ceil(8) {
                    return Err(Error::encode(
                        "bit-string",
                        format!("{} bits need {} bytes, got {}", bs.bits, bs.bits.div_ceil(8), bs.bytes.len()),
                    ));
                }
                put_axdr_length(out, bs.bits);
                out.extend_from_slice(&bs.bytes);
            }
            Data::DoubleLong(v) | Data::DeltaDoubleLong(v) => out.extend_from_slice(&v.to_be_bytes()),
            Data::DoubleLongUnsigned(v) | Data::DeltaDoubleLongUnsigned(v) => out.extend_from_slice(&v.to_be_bytes()),
            Data::OctetString(b) | Data::VisibleString(b) | Data::Utf8String(b) => put_axdr_bytes(out, b),
            Data::Bcd(v) | Data::Unsigned(v) | Data::Enum(v) | Data::DeltaUnsigned(v) => out.push(*v),
            Data::Integer(v) | Data::DeltaInteger(v) => out.push(*v as u8),
            Data::Long(v) | Data::DeltaLong(v) => out.extend_from_slice(&v.to_be_bytes()),
            Data::LongUnsigned(v) | Data::DeltaLongUnsigned(v) => out.extend_from_slice(&v.to_be_bytes()),
            Data::CompactArray { description, elements } => {
                if description.is_zero_size() && !elements.is_empty() {
                    return Err(Error::encode(
                        "compact-array",
                        "elements of zero size (null-data only) cannot be told apart in the contents",
                    ));
                }
                description.encode(out, 0)?;
                let mut contents = Vec::new();
                for (i, e) in elements.iter().enumerate() {
                    encode_compact(e, description, &mut contents, depth + 1)
                        .map_err(|err| Error::encode("compact-array", format!("element {i}: {err}")))?;
                }
                put_axdr_bytes(out, &contents);
            }
            Data::Long64(v) => out.extend_from_slice(&v.to_be_bytes()),
            Data::Long64Unsigned(v) => out.extend_from_slice(&v.to_be_bytes()),
            Data::Float32(v) => out.extend_from_slice(&v.to_be_bytes()),
            Data::Float64(v) => out.extend_from_slice(&v.to_be_bytes()),
            Data::DateTime(dt) => out.extend_from_slice(&dt.to_bytes()),
            Data::Date(d) => out.extend_from_slice(&d.to_bytes()),
            Data::Time(t) => out.extend_from_slice(&t.to_bytes()),
        }
        Ok(())
    }

    fn encode_inner(&self, out: &mut Vec<u8>, depth: usize) -> Result<()> {
        out.push(self.tag());
        self.encode_content(out, depth)
    }
}

/// Encodes a compact-array element (no tags) after checking it against `desc`.
fn encode_compact(v: &Data, desc: &TypeDesc, out: &mut Vec<u8>, depth: usize) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(Error::encode("compact-array", format!("nesting deeper than {MAX_DEPTH}")));
    }
    match (desc, v) {
        (TypeDesc::Array { count, element }, Data::Array(items)) => {
            if items.len() != *count as usize {
                return Err(Error::encode(
                    "compact-array",
                    format!("array of {} items where the description says {count}", items.len()),
                ));
            }
            for item in items {
                encode_compact(item, element, out, depth + 1)?;
            }
            Ok(())
        }
        (TypeDesc::Structure(fields), Data::Structure(items)) => {
            if items.len() != fields.len() {
                return Err(Error::encode(
                    "compact-array",
                    format!("structure of {} fields where the description says {}", items.len(), fields.len()),
                ));
            }
            for (item, f) in items.iter().zip(fields) {
                encode_compact(item, f, out, depth + 1)?;
            }
            Ok(())
        }
        (TypeDesc::Simple(t), v) if *t == v.tag() => v.encode_content(out, depth),
        (desc, v) => {
            Err(Error::encode("compact-array", format!("a {} where the description says {desc}", v.type_name())))
        }
    }
}

impl TypeDesc {
    /// Decodes a type description (Green Book 9.5, TypeDescription).
    pub fn decode(r: &mut Reader<'_>, depth: usize) -> Result<TypeDesc> {
        if depth > MAX_DEPTH {
            return Err(r.invalid("type description", format!("nested deeper than {MAX_DEPTH}")));
        }
        let at = r.offset();
        let t = r.u8("type description")?;
        match t {
            tag::ARRAY => {
                let count = r.u16("type description array count")?;
                let element = Box::new(TypeDesc::decode(r, depth + 1)?);
                Ok(TypeDesc::Array { count, element })
            }
            tag::STRUCTURE => {
                let n = r.axdr_length("type description structure length")?;
                if n > r.remaining() {
                    return Err(Error::Incomplete { what: "type description", needed: n - r.remaining() });
                }
                let mut fields = Vec::with_capacity(n);
                for _ in 0..n {
                    fields.push(TypeDesc::decode(r, depth + 1)?);
                }
                Ok(TypeDesc::Structure(fields))
            }
            tag::COMPACT_ARRAY => Err(Error::invalid(
                "type description",
                at,
                "a compact-array cannot describe its own elements as compact-array",
            )),
            t if type_name(t).is_some() => Ok(TypeDesc::Simple(t)),
            t => Err(Error::invalid("type description", at, format!("unknown data type {t}"))),
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>, depth: usize) -> Result<()> {
        if depth > MAX_DEPTH {
            return Err(Error::encode("type description", format!("nesting deeper than {MAX_DEPTH}")));
        }
        match self {
            TypeDesc::Simple(t) => {
                if matches!(*t, tag::ARRAY | tag::STRUCTURE | tag::COMPACT_ARRAY) || type_name(*t).is_none() {
                    return Err(Error::encode("type description", format!("{t} is not a simple type")));
                }
                out.push(*t)
            }
            TypeDesc::Array { count, element } => {
                out.push(tag::ARRAY);
                out.extend_from_slice(&count.to_be_bytes());
                element.encode(out, depth + 1)?;
            }
            TypeDesc::Structure(fields) => {
                out.push(tag::STRUCTURE);
                put_axdr_length(out, fields.len());
                for f in fields {
                    f.encode(out, depth + 1)?;
                }
            }
        }
        Ok(())
    }

    /// True when an element of this type occupies no bytes (only null-data / dont-care),
    /// which would let a compact array claim unbounded elements from no content.
    fn is_zero_size(&self) -> bool {
        match self {
            TypeDesc::Simple(t) => matches!(*t, tag::NULL_DATA | tag::DONT_CARE),
            TypeDesc::Array { count, element } => *count == 0 || element.is_zero_size(),
            TypeDesc::Structure(fields) => fields.iter().all(TypeDesc::is_zero_size),
        }
    }
}

impl fmt::Display for TypeDesc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TypeDesc::Simple(t) => f.write_str(type_name(*t).unwrap_or("unknown")),
            TypeDesc::Array { count, element } => write!(f, "array[{count}] of {element}"),
            TypeDesc::Structure(fields) => {
                f.write_str("structure(")?;
                for (i, x) in fields.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{x}")?;
                }
                f.write_str(")")
            }
        }
    }
}

/// Decoding state: the node budget shared by one top-level value.
struct Decoder {
    budget: usize,
}

impl Decoder {
    fn spend(&mut self, r: &Reader<'_>) -> Result<()> {
        if self.budget == 0 {
            return Err(r.invalid("Data", "too many elements for the size of the input"));
        }
        self.budget -= 1;
        Ok(())
    }

    fn data(&mut self, r: &mut Reader<'_>, depth: usize) -> Result<Data> {
        if depth > MAX_DEPTH {
            return Err(r.invalid("Data", format!("nested deeper than {MAX_DEPTH}")));
        }
        self.spend(r)?;
        let at = r.offset();
        let t = r.u8("Data tag")?;
        match t {
            tag::ARRAY | tag::STRUCTURE => {
                let n = r.axdr_length(if t == tag::ARRAY { "array length" } else { "structure length" })?;
                // Every element takes at least its tag byte.
                if n > r.remaining() {
                    return Err(Error::Incomplete {
                        what: if t == tag::ARRAY { "array" } else { "structure" },
                        needed: n - r.remaining(),
                    });
                }
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.data(r, depth + 1)?);
                }
                Ok(if t == tag::ARRAY { Data::Array(items) } else { Data::Structure(items) })
            }
            tag::COMPACT_ARRAY => {
                let description = TypeDesc::decode(r, depth + 1)?;
                let len = r.axdr_length("compact-array contents length")?;
                let mut c = r.sub(len, "compact-array contents")?;
                if description.is_zero_size() && !c.is_empty() {
                    return Err(Error::invalid(
                        "compact-array",
                        at,
                        "elements of zero size cannot fill non-empty contents",
                    ));
                }
                let mut elements = Vec::new();
                while !c.is_empty() {
                    let e = self
                        .typed(&mut c, &description, depth + 1)
                        .map_err(|e| e.truncated_at("compact-array contents", at))?;
                    elements.push(e);
                }
                Ok(Data::CompactArray { description, elements })
            }
            t if type_name(t).is_some() => self.simple(r, t),
            7 | 8 => Err(Error::unsupported("Data", at, format!("data type {t} is reserved"))),
            t => Err(Error::invalid("Data", at, format!("unknown data type {t}"))),
        }
    }

    /// An element of a compact array: content only, typed by `desc`.
    fn typed(&mut self, r: &mut Reader<'_>, desc: &TypeDesc, depth: usize) -> Result<Data> {
        if depth > MAX_DEPTH {
            return Err(r.invalid("compact-array", format!("nested deeper than {MAX_DEPTH}")));
        }
        self.spend(r)?;
        match desc {
            TypeDesc::Simple(t) => self.simple(r, *t),
            TypeDesc::Array { count, element } => {
                let mut items = Vec::with_capacity((*count as usize).min(r.remaining() + 1));
                for _ in 0..*count {
                    items.push(self.typed(r, element, depth + 1)?);
                }
                Ok(Data::Array(items))
            }
            TypeDesc::Structure(fields) => {
                let mut items = Vec::with_capacity(fields.len());
                for f in fields {
                    items.push(self.typed(r, f, depth + 1)?);
                }
                Ok(Data::Structure(items))
            }
        }
    }

    /// The content of a simple (non-composite) type.
    fn simple(&mut self, r: &mut Reader<'_>, t: u8) -> Result<Data> {
        Ok(match t {
            tag::NULL_DATA => Data::Null,
            tag::DONT_CARE => Data::DontCare,
            tag::BOOLEAN => Data::Boolean(r.boolean("boolean")?),
            tag::BIT_STRING => {
                let bits = r.axdr_length("bit-string length")?;
                let bytes = r.bytes(bits.div_ceil(8), "bit-string")?.to_vec();
                Data::BitString(BitString { bits, bytes })
            }
            tag::DOUBLE_LONG => Data::DoubleLong(r.i32("double-long")?),
            tag::DOUBLE_LONG_UNSIGNED => Data::DoubleLongUnsigned(r.u32("double-long-unsigned")?),
            tag::OCTET_STRING => Data::OctetString(r.axdr_bytes("octet-string")?.to_vec()),
            tag::VISIBLE_STRING => Data::VisibleString(r.axdr_bytes("visible-string")?.to_vec()),
            tag::UTF8_STRING => Data::Utf8String(r.axdr_bytes("utf8-string")?.to_vec()),
            tag::BCD => Data::Bcd(r.u8("bcd")?),
            tag::INTEGER => Data::Integer(r.i8("integer")?),
            tag::LONG => Data::Long(r.i16("long")?),
            tag::UNSIGNED => Data::Unsigned(r.u8("unsigned")?),
            tag::LONG_UNSIGNED => Data::LongUnsigned(r.u16("long-unsigned")?),
            tag::LONG64 => Data::Long64(r.i64("long64")?),
            tag::LONG64_UNSIGNED => Data::Long64Unsigned(r.u64("long64-unsigned")?),
            tag::ENUM => Data::Enum(r.u8("enum")?),
            tag::FLOAT32 => Data::Float32(f32::from_be_bytes(r.array("float32")?)),
            tag::FLOAT64 => Data::Float64(f64::from_be_bytes(r.array("float64")?)),
            tag::DATE_TIME => Data::DateTime(DateTime::from_bytes(&r.array("date-time")?)),
            tag::DATE => Data::Date(Date::from_bytes(&r.array("date")?)),
            tag::TIME => Data::Time(Time::from_bytes(&r.array("time")?)),
            tag::DELTA_INTEGER => Data::DeltaInteger(r.i8("delta-integer")?),
            tag::DELTA_LONG => Data::DeltaLong(r.i16("delta-long")?),
            tag::DELTA_DOUBLE_LONG => Data::DeltaDoubleLong(r.i32("delta-double-long")?),
            tag::DELTA_UNSIGNED => Data::DeltaUnsigned(r.u8("delta-unsigned")?),
            tag::DELTA_LONG_UNSIGNED => Data::DeltaLongUnsigned(r.u16("delta-long-unsigned")?),
            tag::DELTA_DOUBLE_LONG_UNSIGNED => Data::DeltaDoubleLongUnsigned(r.u32("delta-double-long-unsigned")?),
            // Composite tags never reach here: `data` and `typed` handle them.
            t => return Err(r.invalid_back(1, "Data", format!("data type {t} is not simple"))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt(d: &Data) -> Vec<u8> {
        let b = d.to_bytes().unwrap();
        assert_eq!(&Data::from_bytes(&b).unwrap(), d, "round trip of {b:02X?}");
        b
    }

    #[test]
    fn simple_types_encode_as_the_standard_says() {
        assert_eq!(rt(&Data::Null), [0x00]);
        assert_eq!(rt(&Data::Boolean(true)), [0x03, 0x01]);
        assert_eq!(rt(&Data::DoubleLongUnsigned(0x0102_0304)), [0x06, 1, 2, 3, 4]);
        assert_eq!(rt(&Data::DoubleLong(-2)), [0x05, 0xFF, 0xFF, 0xFF, 0xFE]);
        assert_eq!(rt(&Data::Long(-300)), [0x10, 0xFE, 0xD4]);
        assert_eq!(rt(&Data::LongUnsigned(1200)), [0x12, 0x04, 0xB0]);
        assert_eq!(rt(&Data::Integer(-1)), [0x0F, 0xFF]);
        assert_eq!(rt(&Data::Unsigned(200)), [0x11, 200]);
        assert_eq!(rt(&Data::Enum(30)), [0x16, 30]);
        assert_eq!(rt(&Data::Long64(-1)), [0x14, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]);
        assert_eq!(rt(&Data::Long64Unsigned(1)), [0x15, 0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(rt(&Data::Float32(1.5)), [0x17, 0x3F, 0xC0, 0, 0]);
        assert_eq!(rt(&Data::Float64(1.5)), [0x18, 0x3F, 0xF8, 0, 0, 0, 0, 0, 0]);
        assert_eq!(rt(&Data::OctetString(vec![1, 2])), [0x09, 2, 1, 2]);
        assert_eq!(rt(&Data::VisibleString(b"AB".to_vec())), [0x0A, 2, b'A', b'B']);
        assert_eq!(rt(&Data::Utf8String("ü".as_bytes().to_vec())), [0x0C, 2, 0xC3, 0xBC]);
        assert_eq!(rt(&Data::Bcd(0x42)), [0x0D, 0x42]);
        assert_eq!(rt(&Data::DontCare), [0xFF]);
        assert_eq!(rt(&Data::DeltaInteger(-1)), [0x1C, 0xFF]);
        assert_eq!(rt(&Data::DeltaDoubleLongUnsigned(7)), [0x21, 0, 0, 0, 7]);
        assert_eq!(rt(&Data::BitString(BitString::new(10, vec![0xFF, 0xC0]).unwrap())), [0x04, 10, 0xFF, 0xC0]);
    }

    #[test]
    fn composite_types_and_long_lengths() {
        let s = Data::Structure(vec![Data::Unsigned(1), Data::Array(vec![Data::Null; 200])]);
        let b = rt(&s);
        // 200 elements need the long form 0x81 0xC8.
        assert_eq!(&b[..6], &[0x02, 0x02, 0x11, 0x01, 0x01, 0x81]);
        let long = Data::OctetString(vec![0xAB; 300]);
        assert_eq!(&rt(&long)[..4], &[0x09, 0x82, 0x01, 0x2C]);
    }

    #[test]
    fn date_time_types() {
        let dt = DateTime::from_unix(1_709_276_400, -300, 0);
        let b = rt(&Data::DateTime(dt));
        assert_eq!(b.len(), 13);
        rt(&Data::Date(dt.date));
        rt(&Data::Time(dt.time));
    }

    #[test]
    fn compact_array_of_structures() {
        // Green Book style: array of (double-long-unsigned, long) pairs.
        let desc = TypeDesc::Structure(vec![TypeDesc::Simple(tag::DOUBLE_LONG_UNSIGNED), TypeDesc::Simple(tag::LONG)]);
        let v = Data::CompactArray {
            description: desc.clone(),
            elements: vec![
                Data::Structure(vec![Data::DoubleLongUnsigned(1), Data::Long(-1)]),
                Data::Structure(vec![Data::DoubleLongUnsigned(2), Data::Long(2)]),
            ],
        };
        let b = rt(&v);
        assert_eq!(b, [0x13, 0x02, 0x02, 0x06, 0x10, 0x0C, 0, 0, 0, 1, 0xFF, 0xFF, 0, 0, 0, 2, 0, 2]);
        // An element that does not match the description cannot be encoded.
        let bad = Data::CompactArray { description: desc, elements: vec![Data::Unsigned(1)] };
        assert!(matches!(bad.to_bytes(), Err(Error::Encode { .. })));
    }

    #[test]
    fn compact_array_with_nested_fixed_array_and_strings() {
        let desc = TypeDesc::Array { count: 2, element: Box::new(TypeDesc::Simple(tag::OCTET_STRING)) };
        let v = Data::CompactArray {
            description: desc,
            elements: vec![Data::Array(vec![Data::OctetString(vec![1]), Data::OctetString(vec![])])],
        };
        assert_eq!(rt(&v), [0x13, 0x01, 0x00, 0x02, 0x09, 0x03, 0x01, 0x01, 0x00]);
    }

    #[test]
    fn hostile_input_is_an_error_not_a_crash() {
        // Nesting far beyond the ceiling.
        let deep = [0x02, 0x01].repeat(1000);
        assert!(matches!(Data::from_bytes(&deep), Err(Error::Invalid { .. })));
        // A huge array count with no elements behind it.
        assert!(matches!(Data::from_bytes(&[0x01, 0x84, 0x00, 0xFF, 0xFF, 0xFF]), Err(Error::Incomplete { .. })));
        // A compact array of null elements claiming content.
        assert!(matches!(Data::from_bytes(&[0x13, 0x00, 0x02, 0x00, 0x00]), Err(Error::Invalid { .. })));
        // A compact array of nulls within a fixed array with empty contents is fine.
        assert!(Data::from_bytes(&[0x13, 0x00, 0x00]).is_ok());
        // Unknown and reserved tags.
        assert!(matches!(Data::from_bytes(&[0x30]), Err(Error::Invalid { .. })));
        assert!(matches!(Data::from_bytes(&[0x07]), Err(Error::Unsupported { .. })));
        // Truncated content of a compact array is invalid, not "need more".
        assert!(matches!(Data::from_bytes(&[0x13, 0x06, 0x03, 0x00, 0x00, 0x01]), Err(Error::Invalid { .. })));
        // Trailing bytes after a complete value.
        assert!(matches!(Data::from_bytes(&[0x00, 0x00]), Err(Error::Invalid { .. })));
    }

    #[test]
    fn truncation_reports_missing_bytes() {
        assert_eq!(Data::from_bytes(&[0x06, 0x00]), Err(Error::Incomplete { what: "double-long-unsigned", needed: 3 }));
    }

    #[test]
    fn type_names_are_bijective() {
        for t in 0..=255u8 {
            if let Some(n) = type_name(t) {
                assert_eq!(type_tag(n), Some(t));
            }
        }
    }
}
