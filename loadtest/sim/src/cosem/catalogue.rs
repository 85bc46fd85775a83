//! The register catalogue: every object's OBIS code, the registers each model pushes
//! (with scaler and unit), and how a measurement becomes the raw integer of its type.

use headend_core::axdr::Data;
use headend_core::keytransfer;
use headend_core::obis::ObisCode;

use crate::fleet::Model;

/// Deviation of local time (Asia/Tashkent, UTC+5, no daylight saving) in the
/// standard's sign.
pub const DEVIATION: i16 = -300;

pub(crate) const fn obis(a: u8, b: u8, c: u8, d: u8, e: u8, f: u8) -> ObisCode {
    ObisCode([a, b, c, d, e, f])
}

pub const CLOCK: ObisCode = obis(0, 0, 1, 0, 0, 255);
pub const LDN: ObisCode = obis(0, 0, 42, 0, 0, 255);
pub const DEVICE_ID: ObisCode = obis(0, 0, 96, 1, 0, 255);
pub const ASSOCIATION: ObisCode = obis(0, 0, 40, 0, 0, 255);
pub const SECURITY_SETUP: ObisCode = ObisCode(keytransfer::SECURITY_SETUP);
pub const EVENT_LOG: ObisCode = obis(0, 0, 99, 98, 0, 255);
pub const EVENT_CODE: ObisCode = obis(0, 0, 96, 11, 0, 255);
pub const LP_STATUS: ObisCode = obis(0, 0, 96, 10, 1, 255);
pub const DISCONNECTOR: ObisCode = obis(0, 0, 96, 3, 10, 255);
pub const VALVE: ObisCode = obis(0, 0, 24, 4, 0, 255);
pub const LOAD_PROFILE: ObisCode = obis(1, 0, 99, 1, 0, 255);
pub const GAS_PROFILE: ObisCode = obis(7, 0, 99, 99, 1, 255);

pub const A_PLUS: ObisCode = obis(1, 0, 1, 8, 0, 255);
pub const A_MINUS: ObisCode = obis(1, 0, 2, 8, 0, 255);
pub const R_PLUS: ObisCode = obis(1, 0, 3, 8, 0, 255);
pub const R_MINUS: ObisCode = obis(1, 0, 4, 8, 0, 255);
pub const POWER: ObisCode = obis(1, 0, 1, 7, 0, 255);
pub const VOLTS: [ObisCode; 3] = [obis(1, 0, 32, 7, 0, 255), obis(1, 0, 52, 7, 0, 255), obis(1, 0, 72, 7, 0, 255)];
pub const AMPS: [ObisCode; 3] = [obis(1, 0, 31, 7, 0, 255), obis(1, 0, 51, 7, 0, 255), obis(1, 0, 71, 7, 0, 255)];
pub const GAS_VOLUME: ObisCode = obis(7, 0, 3, 0, 0, 255);
pub const GAS_CORRECTED: ObisCode = obis(7, 0, 13, 0, 0, 255);
pub const BATTERY: ObisCode = obis(0, 0, 96, 6, 3, 255);

pub(crate) const UNIT_WH: u8 = 30;
pub(crate) const UNIT_VARH: u8 = 32;
pub(crate) const UNIT_W: u8 = 27;
pub(crate) const UNIT_V: u8 = 35;
pub(crate) const UNIT_A: u8 = 33;
pub(crate) const UNIT_M3: u8 = 13;
pub(crate) const UNIT_M3_CORR: u8 = 14;
pub(crate) const UNIT_COUNT: u8 = 255;

/// Everything a meter measures at one instant, in physical units.
#[derive(Clone, Copy, Debug, Default)]
pub struct Values {
    /// Import register (kWh; gas m³).
    pub import: f64,
    pub export: f64,
    pub reactive_import: f64,
    pub reactive_export: f64,
    /// kW (gas m³/h).
    pub power: f64,
    pub volts: [f64; 3],
    pub amps: [f64; 3],
    pub output: bool,
    pub battery: f64,
}

/// One register of a model: OBIS, scaler and unit.
#[derive(Clone, Copy, Debug)]
pub struct Register {
    pub obis: ObisCode,
    pub scaler: i8,
    pub unit: u8,
}

const fn reg(obis: ObisCode, scaler: i8, unit: u8) -> Register {
    Register { obis, scaler, unit }
}

const E1PH_REGS: [Register; 6] = [
    reg(A_PLUS, 0, UNIT_WH),
    reg(A_MINUS, 0, UNIT_WH),
    reg(VOLTS[0], -1, UNIT_V),
    reg(AMPS[0], -2, UNIT_A),
    reg(POWER, 0, UNIT_W),
    reg(DISCONNECTOR, 0, UNIT_COUNT),
];
const E3PH_REGS: [Register; 10] = [
    reg(A_PLUS, 0, UNIT_WH),
    reg(A_MINUS, 0, UNIT_WH),
    reg(R_PLUS, 0, UNIT_VARH),
    reg(R_MINUS, 0, UNIT_VARH),
    reg(VOLTS[0], -1, UNIT_V),
    reg(VOLTS[1], -1, UNIT_V),
    reg(VOLTS[2], -1, UNIT_V),
    reg(AMPS[0], -2, UNIT_A),
    reg(AMPS[1], -2, UNIT_A),
    reg(AMPS[2], -2, UNIT_A),
];
const GAS_REGS: [Register; 4] = [
    reg(GAS_VOLUME, -3, UNIT_M3),
    reg(GAS_CORRECTED, -3, UNIT_M3_CORR),
    reg(VALVE, 0, UNIT_COUNT),
    reg(BATTERY, -2, UNIT_V),
];

/// The registers an interval push carries, in push order (after device id and clock).
pub fn push_registers(model: Model) -> &'static [Register] {
    match model {
        Model::E1ph => &E1PH_REGS,
        Model::E3ph => &E3PH_REGS,
        Model::Gas => &GAS_REGS,
    }
}

/// Raw register values for the push registers of `model` (integers, before scaler).
pub(crate) fn raw_values(model: Model, v: &Values) -> Vec<f64> {
    let wh = |x: f64| (x * 1000.0).max(0.0).floor();
    let tenths = |x: f64| (x * 10.0).round().max(0.0);
    let hundredths = |x: f64| (x * 100.0).round().max(0.0);
    match model {
        Model::E1ph => vec![
            wh(v.import),
            wh(v.export),
            tenths(v.volts[0]),
            hundredths(v.amps[0]),
            (v.power * 1000.0).round().max(0.0),
            v.output as u8 as f64,
        ],
        Model::E3ph => vec![
            wh(v.import),
            wh(v.export),
            wh(v.reactive_import),
            wh(v.reactive_export),
            tenths(v.volts[0]),
            tenths(v.volts[1]),
            tenths(v.volts[2]),
            hundredths(v.amps[0]),
            hundredths(v.amps[1]),
            hundredths(v.amps[2]),
        ],
        Model::Gas => vec![wh(v.import), wh(v.import * 0.975), v.output as u8 as f64, hundredths(v.battery)],
    }
}

/// A raw register value as the meter's data type.
pub(crate) fn typed(model: Model, balance: bool, i: usize, raw: f64) -> Data {
    let big = |x: f64| {
        if balance {
            Data::Long64Unsigned(x as u64)
        } else {
            Data::DoubleLongUnsigned(x.min(u32::MAX as f64) as u32)
        }
    };
    let u16v = |x: f64| Data::LongUnsigned(x.min(u16::MAX as f64) as u16);
    let u32v = |x: f64| Data::DoubleLongUnsigned(x.min(u32::MAX as f64) as u32);
    match (model, i) {
        (Model::E1ph, 0 | 1) => big(raw),
        (Model::E1ph, 2 | 3) => u16v(raw),
        (Model::E1ph, 4) => u32v(raw),
        (Model::E1ph, _) => Data::Boolean(raw != 0.0),
        (Model::E3ph, 0..=3) => big(raw),
        (Model::E3ph, 4..=6) => u16v(raw),
        (Model::E3ph, _) => u32v(raw),
        (Model::Gas, 0 | 1) => big(raw),
        (Model::Gas, 2) => Data::Unsigned(raw as u8),
        (Model::Gas, _) => u16v(raw),
    }
}
