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
    fn units_render_symbols_and_unknowns() {
        assert_eq!(Unit::WATT_HOUR.to_string(), "Wh");
        assert_eq!(Unit(13).to_string(), "m³");
        assert_eq!(Unit(200).to_string(), "unit(200)");
        assert_eq!(Unit(255).quantity(), Some("no unit, unitless, count"));
    }
}
