//! The JSON form of [`Data`] and [`TypeDesc`], both directions.
//!
//! Every value is `{"type": "<standard type name>", "value": ...}`: numbers as numbers,
//! octet strings as hex, strings as text, date/time as objects with ISO 8601 text and
//! the exact bytes. Octet strings also carry hints a field engineer wants to see (an
//! OBIS code for 6 bytes, a date-time for 12, ASCII text); hints are ignored on input.
//! The form is lossless: `from_json(to_json(d))` encodes to the same bytes as `d` for
//! every value (non-finite floats and odd strings also carry their exact bytes).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{json, Map, Value};

use crate::axdr::{tag, type_name, type_tag, BitString, Data, TypeDesc};
use crate::datetime::DateTime;
use crate::obis::ObisCode;

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Parses hex, ignoring whitespace; errors name the problem.
pub fn unhex(s: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    if digits.len() % 2 != 0 {
        return Err(format!("hex string has an odd number of digits ({})", digits.len()));
    }
    let val = |c: u8| -> Result<u8, String> {
        match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            b'A'..=b'F' => Ok(c - b'A' + 10),
            _ => Err(format!("{:?} is not a hex digit", c as char)),
        }
    };
    digits.chunks(2).map(|p| Ok(val(p[0])? << 4 | val(p[1])?)).collect()
}

fn float_json(v: f64) -> Value {
    if v.is_nan() {
        json!("NaN")
    } else if v.is_infinite() {
        json!(if v > 0.0 { "inf" } else { "-inf" })
    } else {
        json!(v)
    }
}

fn float_from(v: &Value) -> Result<f64, String> {
    match v {
        Value::Number(n) => n.as_f64().ok_or_else(|| "not a float".to_string()),
        Value::String(s) => match s.as_str() {
            "NaN" | "nan" => Ok(f64::NAN),
            "inf" | "Infinity" => Ok(f64::INFINITY),
            "-inf" | "-Infinity" => Ok(f64::NEG_INFINITY),
            other => other.parse().map_err(|_| format!("{other:?} is not a float")),
        },
        other => Err(format!("{other} is not a float")),
    }
}

fn int_from<T: TryFrom<i128>>(v: &Value, ty: &str) -> Result<T, String> {
    let n: i128 = match v {
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                u as i128
            } else if let Some(i) = n.as_i64() {
                i as i128
            } else {
                return Err(format!("{ty} value {n} is not an integer"));
            }
        }
        Value::String(s) => s.trim().parse().map_err(|_| format!("{ty} value {s:?} is not an integer"))?,
        Value::Bool(b) => *b as i128,
        other => return Err(format!("{ty} value {other} is not an integer")),
    };
    T::try_from(n).map_err(|_| format!("{ty} value {n} is out of range"))
}

fn is_plausible_date_time(b: &[u8]) -> Option<String> {
    let arr: [u8; 12] = b.try_into().ok()?;
    let dt = DateTime::from_bytes(&arr);
    // Only hint when the calendar part is real; wildcard patterns stay hex.
    dt.local_seconds()?;
    Some(dt.iso())
}

impl Data {
    /// The JSON form (see module docs).
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("type".into(), json!(self.type_name()));
        // Hints and descriptions follow the value, in this order.
        let mut extra = Map::new();
        let value = match self {
            Data::Null | Data::DontCare => None,
            Data::Array(items) | Data::Structure(items) => {
                Some(Value::Array(items.iter().map(Data::to_json).collect()))
            }
            Data::Boolean(b) => Some(json!(b)),
            Data::BitString(bs) => {
                let bits: String = (0..bs.bits).map(|i| if bs.get(i) { '1' } else { '0' }).collect();
                // Padding bits should be zero; when a meter sets them, keep the exact bytes.
                let pad = (8 - bs.bits % 8) % 8;
                if bs.bytes.last().is_some_and(|&b| b & ((1u16 << pad) - 1) as u8 != 0) {
                    extra.insert("hex".into(), json!(hex(&bs.bytes)));
                }
                Some(json!(bits))
            }
            Data::DoubleLong(v) | Data::DeltaDoubleLong(v) => Some(json!(v)),
            Data::DoubleLongUnsigned(v) | Data::DeltaDoubleLongUnsigned(v) => Some(json!(v)),
            Data::OctetString(b) => {
                if b.len() == 6 {
                    let o = ObisCode([b[0], b[1], b[2], b[3], b[4], b[5]]);
                    extra.insert("obis".into(), json!(o.to_string()));
                }
                if let Some(iso) = is_plausible_date_time(b) {
                    extra.insert("date_time".into(), json!(iso));
                }
                if b.len() >= 2 && b.iter().all(|c| (0x20..0x7F).contains(c)) {
                    extra.insert("ascii".into(), json!(String::from_utf8_lossy(b)));
                }
                Some(json!(hex(b)))
            }
            Data::VisibleString(b) => {
                if !b.iter().all(|c| c.is_ascii()) {
                    extra.insert("hex".into(), json!(hex(b)));
                }
                Some(json!(String::from_utf8_lossy(b)))
            }
            Data::Utf8String(b) => {
                if std::str::from_utf8(b).is_err() {
                    extra.insert("hex".into(), json!(hex(b)));
                }
                Some(json!(String::from_utf8_lossy(b)))
            }
            Data::Bcd(v) | Data::Unsigned(v) | Data::Enum(v) | Data::DeltaUnsigned(v) => Some(json!(v)),
            Data::Integer(v) | Data::DeltaInteger(v) => Some(json!(v)),
            Data::Long(v) | Data::DeltaLong(v) => Some(json!(v)),
            Data::LongUnsigned(v) | Data::DeltaLongUnsigned(v) => Some(json!(v)),
            Data::CompactArray { description, elements } => {
                extra.insert("description".into(), description.to_json());
                Some(Value::Array(elements.iter().map(Data::to_json).collect()))
            }
            Data::Long64(v) => Some(json!(v)),
            Data::Long64Unsigned(v) => Some(json!(v)),
            Data::Float32(v) => {
                // NaN payloads and the sign of infinities survive only as bytes.
                if !v.is_finite() {
                    extra.insert("hex".into(), json!(hex(&v.to_be_bytes())));
                }
                Some(float_json(*v as f64))
            }
            Data::Float64(v) => {
                if !v.is_finite() {
                    extra.insert("hex".into(), json!(hex(&v.to_be_bytes())));
                }
                Some(float_json(*v))
            }
            Data::DateTime(dt) => Some(serde_json::to_value(dt).unwrap_or(Value::Null)),
            Data::Date(d) => Some(serde_json::to_value(d).unwrap_or(Value::Null)),
            Data::Time(t) => Some(serde_json::to_value(t).unwrap_or(Value::Null)),
        };
        if let Some(v) = value {
            m.insert("value".into(), v);
        }
        m.extend(extra);
        Value::Object(m)
    }

    /// Parses the JSON form; the error says which value and why.
    pub fn from_json(v: &Value) -> Result<Data, String> {
        Self::from_json_at(v, 0)
    }

    fn from_json_at(v: &Value, depth: usize) -> Result<Data, String> {
        if depth > crate::axdr::MAX_DEPTH {
            return Err("Data nested too deeply".into());
        }
        let obj = v.as_object().ok_or_else(|| format!("a Data value must be an object with \"type\", got {v}"))?;
        let ty = obj
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| "a Data value needs a string \"type\"".to_string())?;
        let t = type_tag(ty).ok_or_else(|| format!("unknown data type {ty:?}"))?;
        let null = Value::Null;
        let val = obj.get("value").unwrap_or(&null);
        let bytes_of = |what: &str| -> Result<Vec<u8>, String> {
            match obj.get("hex").and_then(Value::as_str) {
                Some(h) => unhex(h),
                None => match val {
                    Value::String(s) if what == "octet-string" => unhex(s),
                    Value::String(s) => Ok(s.as_bytes().to_vec()),
                    other => Err(format!("{what} value must be a string, got {other}")),
                },
            }
        };
        let items = |depth: usize| -> Result<Vec<Data>, String> {
            val.as_array()
                .ok_or_else(|| format!("{ty} value must be a list"))?
                .iter()
                .map(|x| Data::from_json_at(x, depth + 1))
                .collect()
        };
        Ok(match t {
            tag::NULL_DATA => Data::Null,
            tag::DONT_CARE => Data::DontCare,
            tag::ARRAY => Data::Array(items(depth)?),
            tag::STRUCTURE => Data::Structure(items(depth)?),
            tag::BOOLEAN => Data::Boolean(match val {
                Value::Bool(b) => *b,
                other => int_from::<u8>(other, ty)? != 0,
            }),
            tag::BIT_STRING => {
                let s = val.as_str().ok_or("bit-string value must be a string of 0 and 1")?;
                if let Some(h) = obj.get("hex").and_then(Value::as_str) {
                    let bytes = unhex(h)?;
                    if bytes.len() != s.len().div_ceil(8) {
                        return Err(format!("bit-string hex has {} bytes for {} bits", bytes.len(), s.len()));
                    }
                    return Ok(Data::BitString(BitString { bits: s.len(), bytes }));
                }
                let mut bytes = vec![0u8; s.len().div_ceil(8)];
                for (i, c) in s.chars().enumerate() {
                    match c {
                        '1' => bytes[i / 8] |= 0x80 >> (i % 8),
                        '0' => {}
                        _ => return Err(format!("bit-string has {c:?}; only 0 and 1 allowed")),
                    }
                }
                Data::BitString(BitString { bits: s.len(), bytes })
            }
            tag::DOUBLE_LONG => Data::DoubleLong(int_from(val, ty)?),
            tag::DOUBLE_LONG_UNSIGNED => Data::DoubleLongUnsigned(int_from(val, ty)?),
            tag::OCTET_STRING => Data::OctetString(bytes_of("octet-string")?),
            tag::VISIBLE_STRING => Data::VisibleString(bytes_of("visible-string")?),
            tag::UTF8_STRING => Data::Utf8String(bytes_of("utf8-string")?),
            tag::BCD => Data::Bcd(int_from(val, ty)?),
            tag::INTEGER => Data::Integer(int_from(val, ty)?),
            tag::LONG => Data::Long(int_from(val, ty)?),
            tag::UNSIGNED => Data::Unsigned(int_from(val, ty)?),
            tag::LONG_UNSIGNED => Data::LongUnsigned(int_from(val, ty)?),
            tag::COMPACT_ARRAY => {
                let description = TypeDesc::from_json(
                    obj.get("description").ok_or("compact-array needs a \"description\"")?,
                    depth + 1,
                )?;
                Data::CompactArray { description, elements: items(depth)? }
            }
            tag::LONG64 => Data::Long64(int_from(val, ty)?),
            tag::LONG64_UNSIGNED => Data::Long64Unsigned(int_from(val, ty)?),
            tag::ENUM => Data::Enum(int_from(val, ty)?),
            tag::FLOAT32 => match obj.get("hex").and_then(Value::as_str) {
                Some(h) => Data::Float32(f32::from_be_bytes(
                    unhex(h)?.try_into().map_err(|_| "float32 hex must be 4 bytes".to_string())?,
                )),
                None => Data::Float32(float_from(val)? as f32),
            },
            tag::FLOAT64 => match obj.get("hex").and_then(Value::as_str) {
                Some(h) => Data::Float64(f64::from_be_bytes(
                    unhex(h)?.try_into().map_err(|_| "float64 hex must be 8 bytes".to_string())?,
                )),
                None => Data::Float64(float_from(val)?),
            },
            tag::DATE_TIME => {
                Data::DateTime(serde_json::from_value(val.clone()).map_err(|e| format!("date-time: {e}"))?)
            }
            tag::DATE => Data::Date(serde_json::from_value(val.clone()).map_err(|e| format!("date: {e}"))?),
            tag::TIME => Data::Time(serde_json::from_value(val.clone()).map_err(|e| format!("time: {e}"))?),
            tag::DELTA_INTEGER => Data::DeltaInteger(int_from(val, ty)?),
            tag::DELTA_LONG => Data::DeltaLong(int_from(val, ty)?),
            tag::DELTA_DOUBLE_LONG => Data::DeltaDoubleLong(int_from(val, ty)?),
            tag::DELTA_UNSIGNED => Data::DeltaUnsigned(int_from(val, ty)?),
            tag::DELTA_LONG_UNSIGNED => Data::DeltaLongUnsigned(int_from(val, ty)?),
            tag::DELTA_DOUBLE_LONG_UNSIGNED => Data::DeltaDoubleLongUnsigned(int_from(val, ty)?),
            other => return Err(format!("data type {other} has no JSON form")),
        })
    }
}

impl TypeDesc {
    /// `"long-unsigned"`, `{"array": {"count": n, "element": ...}}` or `{"structure": [...]}`.
    pub fn to_json(&self) -> Value {
        match self {
            TypeDesc::Simple(t) => json!(type_name(*t).unwrap_or("unknown")),
            TypeDesc::Array { count, element } => {
                json!({"array": {"count": count, "element": element.to_json()}})
            }
            TypeDesc::Structure(fields) => {
                json!({"structure": fields.iter().map(TypeDesc::to_json).collect::<Vec<_>>()})
            }
        }
    }

    pub fn from_json(v: &Value, depth: usize) -> Result<TypeDesc, String> {
        if depth > crate::axdr::MAX_DEPTH {
            return Err("type description nested too deeply".into());
        }
        match v {
            Value::String(name) => {
                let t = type_tag(name).ok_or_else(|| format!("unknown data type {name:?}"))?;
                if matches!(t, tag::ARRAY | tag::STRUCTURE | tag::COMPACT_ARRAY) {
                    return Err(format!("{name} needs an object form in a type description"));
                }
                Ok(TypeDesc::Simple(t))
            }
            Value::Object(o) if o.contains_key("array") => {
                let a = &o["array"];
                let count = int_from::<u16>(a.get("count").unwrap_or(&Value::Null), "array count")?;
                let element = TypeDesc::from_json(a.get("element").ok_or("array needs an element")?, depth + 1)?;
                Ok(TypeDesc::Array { count, element: Box::new(element) })
            }
            Value::Object(o) if o.contains_key("structure") => Ok(TypeDesc::Structure(
                o["structure"]
                    .as_array()
                    .ok_or("structure must be a list")?
                    .iter()
                    .map(|f| TypeDesc::from_json(f, depth + 1))
                    .collect::<Result<_, _>>()?,
            )),
            other => Err(format!("{other} is not a type description")),
        }
    }
}

impl Serialize for Data {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Data {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        Data::from_json(&v).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trips_every_kind() {
        let dt = DateTime::from_unix(1_709_276_400, -300, 0);
        let v = Data::Structure(vec![
            Data::Null,
            Data::Boolean(true),
            Data::BitString(BitString::new(3, vec![0b1010_0000]).unwrap()),
            Data::DoubleLong(-5),
            Data::DoubleLongUnsigned(u32::MAX),
            Data::OctetString(vec![1, 0, 1, 8, 0, 255]),
            Data::VisibleString(b"abc".to_vec()),
            Data::VisibleString(vec![0xFF]),
            Data::Utf8String("Тошкент".as_bytes().to_vec()),
            Data::Utf8String(vec![0xC3]),
            Data::Bcd(0x99),
            Data::Integer(-128),
            Data::Long(i16::MIN),
            Data::Unsigned(255),
            Data::LongUnsigned(u16::MAX),
            Data::Long64(i64::MIN),
            Data::Long64Unsigned(u64::MAX),
            Data::Enum(3),
            Data::Float32(f32::INFINITY),
            Data::Float64(-0.5),
            Data::DateTime(dt),
            Data::Date(dt.date),
            Data::Time(dt.time),
            Data::DeltaLong(-3),
            Data::DontCare,
            Data::CompactArray {
                description: TypeDesc::Array {
                    count: 1,
                    element: Box::new(TypeDesc::Structure(vec![TypeDesc::Simple(tag::UNSIGNED)])),
                },
                elements: vec![Data::Array(vec![Data::Structure(vec![Data::Unsigned(1)])])],
            },
        ]);
        let j = v.to_json();
        assert_eq!(Data::from_json(&j).unwrap(), v);
        let text = serde_json::to_string(&v).unwrap();
        let back: Data = serde_json::from_str(&text).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn octet_strings_carry_hints() {
        let j = Data::OctetString(vec![0, 0, 1, 0, 0, 255]).to_json();
        assert_eq!(j["obis"], "0.0.1.0.0.255");
        assert_eq!(j["value"], "0000010000FF");
        let dt = DateTime::from_unix(1_709_276_400, -300, 0);
        let j = Data::OctetString(dt.to_bytes().to_vec()).to_json();
        assert_eq!(j["date_time"], "2024-03-01T12:00:00+05:00");
        let j = Data::OctetString(b"LGZ1234".to_vec()).to_json();
        assert_eq!(j["ascii"], "LGZ1234");
    }

    #[test]
    fn errors_name_the_problem() {
        let e = Data::from_json(&json!({"type": "unsigned", "value": 300})).unwrap_err();
        assert!(e.contains("out of range"), "{e}");
        let e = Data::from_json(&json!({"type": "wat"})).unwrap_err();
        assert!(e.contains("unknown data type"), "{e}");
        let e = Data::from_json(&json!({"type": "octet-string", "value": "ABC"})).unwrap_err();
        assert!(e.contains("odd number"), "{e}");
    }
}
