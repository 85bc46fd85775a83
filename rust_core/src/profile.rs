//! Meter-model profiles: what a model's pushes carry and how it bends the standard.
//!
//! A profile is data (`protocols/profiles/*.toml`, parsed in Python, handed over as
//! JSON-form values): push layouts that map leaf numbers of a DataNotification body to
//! OBIS codes with scaler and unit, which leaf holds the device identifier and the
//! clock, event code names, and quirks such as the deviation sign. No model gets a code
//! branch; a new model is a new file.

use std::collections::HashMap;

use serde::Deserialize;

use crate::datetime::DeviationSign;
use crate::obis::ObisCode;
use crate::push::PushBatch;

/// One register in a push layout.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Register {
    /// Leaf number in the push body (depth-first, from 0).
    pub leaf: u16,
    pub obis: ObisCode,
    #[serde(default)]
    pub scaler: i8,
    /// Unit symbol as in the Blue Book table ("Wh", "V", "m³", "count").
    pub unit: String,
}

/// How to recognise and read one kind of push of a model.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Layout {
    pub name: String,
    /// The push carries exactly this many leaves.
    #[serde(default)]
    pub leaves: Option<u16>,
    /// Leaf `match_leaf` is an octet string equal to this OBIS code (push setups put
    /// their own logical name first).
    #[serde(default)]
    pub match_leaf: Option<u16>,
    #[serde(default)]
    pub match_obis: Option<ObisCode>,
    /// Leaf holding the logical device name / serial.
    #[serde(default)]
    pub device_id: Option<u16>,
    /// Leaf holding the measurement time (date-time, or a 12-byte octet string).
    #[serde(default)]
    pub clock: Option<u16>,
    /// Leaf holding an event code: the push becomes an event row.
    #[serde(default)]
    pub event_code: Option<u16>,
    #[serde(default)]
    pub registers: Vec<Register>,
}

/// A named event code.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EventName {
    pub code: u16,
    pub name: String,
    /// tamper, power, security, clock, supply, ...
    pub category: String,
}

/// Deviation sign in the profile file.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum SignSpec {
    #[default]
    Standard,
    Inverted,
}

/// A meter model. Unknown top-level keys are kept in `extra` for other layers
/// (polling, commands); inside layouts, registers and events they are errors.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Profile {
    /// The model identifier used in meters.csv.
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// electricity or gas.
    pub kind: String,
    #[serde(default)]
    pub deviation_sign: SignSpec,
    /// Minutes, standard sign, for clocks that leave the deviation unspecified.
    #[serde(default)]
    pub default_deviation: Option<i16>,
    #[serde(default)]
    pub layouts: Vec<Layout>,
    #[serde(default)]
    pub events: Vec<EventName>,
    /// Anything else the file says (polling objects, disconnect control, ...), kept for
    /// the layers that use it.
    #[serde(default, flatten)]
    pub extra: HashMap<String, serde_json::Value>,
}

impl Profile {
    pub fn from_json(v: &serde_json::Value) -> Result<Profile, String> {
        let p: Profile = serde_json::from_value(v.clone()).map_err(|e| format!("profile: {e}"))?;
        p.check()?;
        Ok(p)
    }

    fn check(&self) -> Result<(), String> {
        for l in &self.layouts {
            if l.leaves.is_none() && l.match_obis.is_none() {
                return Err(format!(
                    "layout {:?} of {}: give `leaves` or `match_obis` to recognise it",
                    l.name, self.name
                ));
            }
            if l.match_obis.is_some() != l.match_leaf.is_some() {
                return Err(format!("layout {:?} of {}: `match_leaf` and `match_obis` go together", l.name, self.name));
            }
            for r in &l.registers {
                if crate::codes::unit::code(&r.unit).is_none() {
                    return Err(format!("layout {:?} of {}: unknown unit {:?}", l.name, self.name, r.unit));
                }
            }
        }
        Ok(())
    }

    pub fn sign(&self) -> DeviationSign {
        match self.deviation_sign {
            SignSpec::Standard => DeviationSign::Standard,
            SignSpec::Inverted => DeviationSign::Inverted,
        }
    }

    /// The layout for a flattened push: values `first..first + n` of `leaves`.
    pub fn layout_for(&self, leaves: &PushBatch, first: usize, n: usize) -> Option<&Layout> {
        self.layouts.iter().find(|l| {
            if l.leaves.is_some_and(|want| want as usize != n) {
                return false;
            }
            match (l.match_leaf, l.match_obis) {
                (Some(i), Some(obis)) => {
                    let i = first + i as usize;
                    i < first + n && leaf_bytes(leaves, i) == obis.as_bytes()
                }
                _ => true,
            }
        })
    }

    pub fn event(&self, code: u16) -> Option<&EventName> {
        self.events.iter().find(|e| e.code == code)
    }
}

/// The raw bytes of leaf `i` (strings, dates); empty for numbers.
pub fn leaf_bytes(b: &PushBatch, i: usize) -> &[u8] {
    let (s, l) = (b.value_blob_start[i] as usize, b.value_blob_len[i] as usize);
    &b.blobs[s..s + l]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn profiles_validate_their_layouts() {
        let ok = json!({"name": "m", "kind": "electricity", "layouts": [
            {"name": "interval", "leaves": 3, "clock": 1, "registers": [{"leaf": 2, "obis": "1.0.1.8.0.255", "unit": "Wh"}]}
        ]});
        assert!(Profile::from_json(&ok).is_ok());
        let no_match = json!({"name": "m", "kind": "gas", "layouts": [{"name": "x"}]});
        assert!(Profile::from_json(&no_match).unwrap_err().contains("recognise"));
        let bad_unit = json!({"name": "m", "kind": "gas", "layouts": [
            {"name": "x", "leaves": 1, "registers": [{"leaf": 0, "obis": "7.0.3.0.0.255", "unit": "furlong"}]}
        ]});
        assert!(Profile::from_json(&bad_unit).unwrap_err().contains("furlong"));
        let typo = json!({"name": "m", "kind": "gas", "layots": []});
        // Unknown top-level keys are kept (other layers use them), typos in layouts are not.
        assert!(Profile::from_json(&typo).is_ok());
        let typo_in_layout = json!({"name": "m", "kind": "gas", "layouts": [{"name": "x", "leaves": 1, "clok": 0}]});
        assert!(Profile::from_json(&typo_in_layout).is_err());
    }
}
