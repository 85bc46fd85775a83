//! Units and scaler-unit (Blue Book, class 3 "Register" attribute 3).
//!
//! A register's value is an integer; the physical value is `value × 10^scaler` in
//! `unit`. The unit enumeration comes from `protocols/dlms_codes.toml` through the
//! generated [`crate::codes::unit`] table.

use std::fmt;

use crate::codes;

/// A unit code of the Blue Book's enumeration (255 = count, no unit).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Unit(pub u8);

impl Unit {
    pub const WATT_HOUR: Unit = Unit(30);
    pub const VAR_HOUR: Unit = Unit(32);
    pub const WATT: Unit = Unit(27);
    pub const VOLT: Unit = Unit(35);
    pub const AMPERE: Unit = Unit(33);
    pub const CUBIC_METRE: Unit = Unit(13);
    pub const COUNT: Unit = Unit(255);

    /// The symbol ("Wh"), or None for a code the table does not know.
    pub fn symbol(self) -> Option<&'static str> {
        codes::unit::name(self.0)
    }

    pub fn quantity(self) -> Option<&'static str> {
        codes::unit::quantity(self.0)
    }
}

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.symbol() {
            Some(s) => f.write_str(s),
            None => write!(f, "unit({})", self.0),
        }
    }
}

/// A register's scaler and unit: physical value = raw × 10^scaler.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ScalerUnit {
    pub scaler: i8,
    pub unit: Unit,
}

impl ScalerUnit {
    pub const fn new(scaler: i8, unit: u8) -> Self {
        ScalerUnit { scaler, unit: Unit(unit) }
    }

    /// `raw × 10^scaler`.
    #[inline]
    pub fn apply(self, raw: f64) -> f64 {
        scale(raw, self.scaler)
    }
}

/// `raw × 10^scaler`, correctly rounded wherever f64 holds the power of ten exactly
/// (|scaler| <= 22): negative scalers divide by the exact positive power, because
/// multiplying by an inexact 0.001 can land one ulp off (1234 × 10^-3 must be 1.234).
/// Scaling is on the hot path of every reading; a table beats `powi`.
#[inline]
pub fn scale(raw: f64, scaler: i8) -> f64 {
    let e = scaler.unsigned_abs() as usize;
    if e < EXACT.len() {
        if scaler < 0 {
            raw / EXACT[e]
        } else {
            raw * EXACT[e]
        }
    } else {
        raw * pow10(scaler)
    }
}

/// A meter's instrument transformers: current (CT) and voltage (VT) ratios, primary
/// over secondary (a 200/5 A CT is 40). A meter wired through them measures secondary
/// quantities; the head-end stores primary ones, each register multiplied by what its
/// unit says: energy and power by CT × VT, current by CT, voltage by VT (Blue Book
/// units; counts, frequency, angles, volumes and the rest are left as they are).
#[derive(Clone, Copy, PartialEq, Debug)]
pub struct Ratios {
    pub ct: f64,
    pub vt: f64,
}

impl Default for Ratios {
    fn default() -> Self {
        Ratios::DIRECT
    }
}

impl Ratios {
    /// A directly connected meter.
    pub const DIRECT: Ratios = Ratios { ct: 1.0, vt: 1.0 };

    /// Ratios a meter can have: finite, positive and at most 1,000,000.
    pub fn new(ct: f64, vt: f64) -> Option<Ratios> {
        let ok = |r: f64| r.is_finite() && r > 0.0 && r <= 1e6;
        (ok(ct) && ok(vt)).then_some(Ratios { ct, vt })
    }

    pub fn is_direct(self) -> bool {
        self.ct == 1.0 && self.vt == 1.0
    }

    /// What a secondary value in `unit` (the symbol, as profiles and rows carry it) is
    /// multiplied by to give the primary value.
    pub fn factor(self, unit: &str) -> f64 {
        let Ratios { ct, vt } = self;
        match unit {
            "W" | "VA" | "var" | "Wh" | "VAh" | "varh" => ct * vt,
            "A" | "Ah" | "C" => ct,
            "V" => vt,
            "A²h" => ct * ct,
            "V²h" => vt * vt,
            "Ω" => vt / ct,
            "1/(Wh)" | "1/(varh)" | "1/(VAh)" => 1.0 / (ct * vt),
            "1/(A²h)" => 1.0 / (ct * ct),
            "1/(V²h)" => 1.0 / (vt * vt),
            _ => 1.0,
        }
    }

    /// The primary value of `value` (secondary, in `unit`).
    #[inline]
    pub fn primary(self, value: f64, unit: &str) -> f64 {
        if self.is_direct() {
            value
        } else {
            value * self.factor(unit)
        }
    }
}

/// The powers of ten that f64 represents exactly.
static EXACT: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20,
    1e21, 1e22,
];

/// 10^n for any i8 (as a float; inexact beyond 10^22 and below 10^-22).
pub fn pow10(n: i8) -> f64 {
    10f64.powi(n as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaling_is_exact_for_common_scalers() {
        assert_eq!(ScalerUnit::new(-1, 30).apply(1234.0), 123.4);
        assert_eq!(ScalerUnit::new(-3, 30).apply(1234.0), 1.234);
        assert_eq!(ScalerUnit::new(2, 30).apply(5.0), 500.0);
        assert_eq!(ScalerUnit::new(0, 30).apply(7.0), 7.0);
        assert_eq!(ScalerUnit::new(-2, 35).apply(23012.0), 230.12);
        assert!((pow10(-128) / 1e-128 - 1.0).abs() < 1e-12);
        assert!((scale(3.0, 100) / 3e100 - 1.0).abs() < 1e-12);
    }

    #[test]
    fn instrument_transformers_scale_by_unit() {
        // A 200/5 A CT (40) and a 10 kV/100 V VT (100): hand-computed primaries.
        let r = Ratios::new(40.0, 100.0).unwrap();
        assert_eq!(r.primary(12.5, "Wh"), 50_000.0);
        assert_eq!(r.primary(1.5, "var"), 6_000.0);
        assert_eq!(r.primary(5.12, "A"), 204.8);
        assert_eq!(r.primary(230.1, "V"), 23_010.0);
        assert_eq!(r.primary(49.98, "Hz"), 49.98);
        assert_eq!(r.primary(1.0, "count"), 1.0);
        assert_eq!(r.primary(2.0, "A²h"), 3_200.0);
        assert_eq!(Ratios::DIRECT.primary(0.1 + 0.2, "Wh"), 0.1 + 0.2);
        assert!(Ratios::new(0.0, 1.0).is_none());
        assert!(Ratios::new(f64::NAN, 1.0).is_none());
        assert!(Ratios::new(40.0, 2e6).is_none());
    }

    #[test]
    fn units_render_symbols_and_unknowns() {
        assert_eq!(Unit::WATT_HOUR.to_string(), "Wh");
        assert_eq!(Unit(13).to_string(), "m³");
        assert_eq!(Unit(200).to_string(), "unit(200)");
        assert_eq!(Unit(255).quantity(), Some("no unit, unitless, count"));
    }
}
