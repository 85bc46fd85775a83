//! One simulated meter's application layer: its COSEM objects, its pushes, and the
//! xDLMS server that answers the head-end (no I/O; the connection task feeds APDUs in
//! and writes what comes out).
//!
//! Objects (logical-name referencing):
//!
//! | object | class | OBIS |
//! | --- | --- | --- |
//! | logical device name, device id | 1 | 0.0.42.0.0.255, 0.0.96.1.0.255 |
//! | clock (time, time_zone, status, clock_base) | 8 | 0.0.1.0.0.255 |
//! | registers with scaler_unit (energy, voltage, current, power; gas volumes, battery) | 3 | as the model's push |
//! | disconnect control / gas valve (output_state, control_state, control_mode; remote_disconnect, remote_reconnect) | 70 | 0.0.96.3.10.255 / 0.0.24.4.0.255 |
//! | load profile (15 min; gas hourly) with range and entry selection | 7 | 1.0.99.1.0.255 / 7.0.99.99.1.255 |
//! | event log | 7 | 0.0.99.98.0.255 |
//! | current association (object_list, reply_to_HLS_authentication) | 15 | 0.0.40.0.0.255 |
//!
//! Associations: lowest (read only), LLS with the meter's password (read, set the
//! clock), HLS-GMAC (everything, including the disconnector); LN and LN-with-ciphering
//! contexts; requests ciphered with glo-, ded- or general-glo/ded-ciphering are
//! answered in the same envelope. Responses larger than the client's PDU size go out
//! with GET block transfer. Invocation counters are checked: a replayed request is
//! refused with an ExceptionResponse.

use std::collections::VecDeque;

use headend_core::apdu::{
    tag, Aare, Aarq, AcseServiceUser, ActionOutcome, ActionRequest, ActionResponse, ActionResult, Apdu,
    ApplicationContext, AssociationResult, AttributeDescriptor, Ciphered, CipheredKind, ConfirmedService,
    ConfirmedServiceError, Conformance, DataAccessResult, DataBlockG, DataBlockResult, DataNotification, Diagnostic,
    EventNotification, ExceptionResponse, ExceptionServiceError, ExceptionStateError, GetDataResult, GetRequest,
    GetResponse, InitiateResponse, InvokeIdAndPriority, LongInvokeIdAndPriority, Mechanism, MethodDescriptor,
    ReleaseResponseReason, Rlre, SecurityControl, SelectiveAccess, ServiceErrorKind, SetRequest, SetResponse,
};
use headend_core::axdr::Data;
use headend_core::datetime::{DateTime, DeviationSign};
use headend_core::keytransfer;

use crate::image::{self, Firmware, ACTIVE_FIRMWARE, IMAGE_TRANSFER};
use headend_core::obis::ObisCode;
use headend_core::security::{decipher_with, encipher_with, Keys, Policy, SystemTitle};

use crate::fleet::{MeterSpec, Model, Theft};
use crate::grid::{Grid, Outage};
use crate::model::{hours, unit, Shape};

pub const EV_POWER_DOWN: u16 = 1;
pub const EV_POWER_UP: u16 = 2;
pub const EV_CLOCK_OLD: u16 = 4;
pub const EV_CLOCK_NEW: u16 = 5;
pub const EV_TERMINAL_COVER_OPENED: u16 = 40;
pub const EV_MAGNETIC: u16 = 42;
pub const EV_SUPPLY_DISCONNECTED: u16 = 70;
pub const EV_SUPPLY_RECONNECTED: u16 = 71;
pub const EV_GAS_VALVE_CLOSED: u16 = 80;
pub const EV_GAS_VALVE_OPENED: u16 = 81;
pub const EV_GAS_MAGNETIC: u16 = 83;
pub const EV_GAS_CASE_OPENED: u16 = 84;

/// Deviation of local time (Asia/Tashkent, UTC+5, no daylight saving) in the
/// standard's sign.
pub const DEVIATION: i16 = -300;

const fn obis(a: u8, b: u8, c: u8, d: u8, e: u8, f: u8) -> ObisCode {
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

const UNIT_WH: u8 = 30;
const UNIT_VARH: u8 = 32;
const UNIT_W: u8 = 27;
const UNIT_V: u8 = 35;
const UNIT_A: u8 = 33;
const UNIT_M3: u8 = 13;
const UNIT_M3_CORR: u8 = 14;
const UNIT_COUNT: u8 = 255;

/// Largest APDU the meter accepts, announced in the InitiateResponse.
pub const SERVER_MAX_PDU: u16 = 1024;
/// Bytes the GET-Response-with-datablock header and ciphering add around a block.
const BLOCK_OVERHEAD: usize = 48;
/// Entries the meter keeps in its load profile (60 days of quarter hours; gas: 90 days
/// of hours) and in its event log.
const LP_DEPTH_ELECTRICITY: i64 = 60 * 96;
const LP_DEPTH_GAS: i64 = 90 * 24;
const EVENT_LOG_DEPTH: usize = 100;

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
fn raw_values(model: Model, v: &Values) -> Vec<f64> {
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
fn typed(model: Model, balance: bool, i: usize, raw: f64) -> Data {
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

/// What the head-end is owed after a push or a request.
#[derive(Debug, Default)]
pub struct Output {
    /// APDUs to send, in order.
    pub apdus: Vec<Vec<u8>>,
    /// The supply was switched off (true) or on (false) at the head-end's command.
    pub switched: Option<bool>,
    /// A push-worthy event happened (code); the connection decides how to send it.
    pub events: Vec<u16>,
    /// The head-end gave the meter new keys (EK, AK), in use from now on.
    pub rekeyed: Option<([u8; 16], [u8; 16])>,
}

/// A pushed interval reading, for the record file.
#[derive(Debug, Clone)]
pub struct PushRecord {
    pub ts: i64,
    pub raw: Vec<f64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Envelope {
    Plain,
    /// Service-specific glo-/ded- APDU.
    Specific {
        dedicated: bool,
        sc: SecurityControl,
    },
    /// general-glo/ded-ciphering.
    General {
        dedicated: bool,
        sc: SecurityControl,
    },
}

struct Association {
    ciphered: bool,
    mechanism: u8,
    client_title: Option<SystemTitle>,
    /// False while HLS waits for the client's pass 3.
    authenticated: bool,
    stoc: Vec<u8>,
    ctos: Vec<u8>,
    max_pdu: usize,
    conformance: Conformance,
    dedicated: Option<[u8; 16]>,
    dedicated_ic: Option<u32>,
}

struct Blocks {
    invoke: InvokeIdAndPriority,
    data: Vec<u8>,
    /// Block number of the last block sent.
    sent: u32,
    size: usize,
}

/// The disconnector (class 70) or gas valve.
struct Disconnector {
    output: bool,
    /// 0 disconnected, 1 connected, 2 ready for reconnection.
    state: u8,
    mode: u8,
    /// Index of the open outage in the grid.
    outage: Option<usize>,
    /// (off, on) hours of every outage, for the registers and the load profile.
    history: Vec<(f64, Option<f64>)>,
    /// When the consumer will press the button (ready_for_reconnection).
    button_at: Option<f64>,
}

/// A meter's state while the simulator runs.
pub struct Meter {
    pub index: u32,
    /// The grid node whose balance meter sees this consumer.
    pub flow: Option<u32>,
    next_ic: u32,
    client_ic: Option<u32>,
    /// Seconds the head-end moved the clock by.
    clock_adjust: i64,
    disconnector: Disconnector,
    events: VecDeque<(i64, u16)>,
    assoc: Option<Association>,
    blocks: Option<Blocks>,
    pub push_seq: u32,
    challenge_seq: u64,
    /// Keys (and AK) set by the head-end's key transfer, replacing the delivered ones.
    rotated: Option<(Keys, [u8; 16])>,
    /// Keys accepted by a key transfer, taken into use once its response is sent.
    rotate_after: Option<([u8; 16], [u8; 16])>,
    firmware: Firmware,
    /// The request just handled gets no answer (a link lost on the way).
    silent: bool,
}

/// The meter's global keys now: the last ones transferred to it, else its delivered ones.
fn keys_of<'a>(rotated: &'a Option<(Keys, [u8; 16])>, spec: &'a MeterSpec) -> Option<&'a Keys> {
    rotated.as_ref().map(|r| &r.0).or(spec.keys.as_ref())
}

/// Invocation counters start from the wall clock (8 per second since 2025), so a
/// restarted simulator never repeats one the head-end has seen.
pub fn initial_invocation_counter(now_unix: f64) -> u32 {
    ((now_unix - 1_735_689_600.0).max(0.0) * 8.0) as u32
}

impl Meter {
    pub fn new(index: u32, flow: Option<u32>, first_ic: u32) -> Meter {
        Meter {
            index,
            flow,
            next_ic: first_ic.max(1),
            client_ic: None,
            clock_adjust: 0,
            disconnector: Disconnector {
                output: true,
                state: 1,
                mode: 2,
                outage: None,
                history: Vec::new(),
                button_at: None,
            },
            events: VecDeque::new(),
            assoc: None,
            blocks: None,
            push_seq: 0,
            challenge_seq: 0,
            rotated: None,
            rotate_after: None,
            firmware: Firmware::unset(),
            silent: false,
        }
    }

    /// The identifier of the firmware running now (the model's first release until
    /// an image is activated).
    fn active_firmware(&self, spec: &MeterSpec) -> Vec<u8> {
        if self.firmware.active.is_empty() {
            Firmware::new(spec.model.name()).active
        } else {
            self.firmware.active.clone()
        }
    }

    /// The authentication key now (not readable from `Keys`; kept beside).
    fn ak(&self, spec: &MeterSpec) -> [u8; 16] {
        self.rotated.as_ref().map_or(spec.ak, |r| r.1)
    }

    /// The meter's clock at true time `unix`.
    pub fn meter_time(&self, spec: &MeterSpec, unix: f64) -> f64 {
        unix + (spec.drift + self.clock_adjust) as f64
    }

    /// True time at which the meter's clock shows `meter_unix`.
    pub fn true_time(&self, spec: &MeterSpec, meter_unix: f64) -> f64 {
        meter_unix - (spec.drift + self.clock_adjust) as f64
    }

    pub fn output(&self) -> bool {
        self.disconnector.output
    }

    fn take_ic(&mut self) -> u32 {
        let ic = self.next_ic;
        self.next_ic = self.next_ic.saturating_add(1);
        ic
    }

    /// Applies a pending button press (consumer reconnects a ready disconnector).
    pub fn settle(&mut self, spec: &MeterSpec, grid: &Grid, h: f64) -> Option<u16> {
        match self.disconnector.button_at {
            Some(at) if at <= h => {
                self.disconnector.button_at = None;
                self.connect(spec, grid, at);
                Some(reconnect_code(spec.model))
            }
            _ => None,
        }
    }

    /// Switches the supply at hour `h` as the disconnector's methods do.
    pub fn force_supply(&mut self, spec: &MeterSpec, grid: &Grid, h: f64, on: bool) {
        if on {
            self.connect(spec, grid, h);
        } else {
            self.disconnect(spec, grid, h);
        }
    }

    fn connect(&mut self, spec: &MeterSpec, grid: &Grid, h: f64) {
        let d = &mut self.disconnector;
        d.output = true;
        d.state = 1;
        if let Some(last) = d.history.last_mut() {
            if last.1.is_none() {
                last.1 = Some(h);
            }
        }
        if let Some(o) = d.outage.take() {
            grid.reconnected(o, h);
        }
        let _ = spec;
    }

    fn disconnect(&mut self, spec: &MeterSpec, grid: &Grid, h: f64) {
        let d = &mut self.disconnector;
        if !d.output {
            d.state = 0;
            d.button_at = None;
            return;
        }
        d.output = false;
        d.state = 0;
        d.button_at = None;
        d.history.push((h, None));
        if let (Some(shape), Some(flow)) = (spec.shape, self.flow) {
            d.outage = Some(grid.disconnected(Outage { node: flow, shape, off_h: h, on_h: None }));
        }
    }

    /// Energy this consumer did not take because its supply was off, up to hour `h`.
    fn missing(&self, shape: &Shape, h: f64) -> f64 {
        self.disconnector
            .history
            .iter()
            .map(
                |&(off, on)| {
                    if h <= off {
                        0.0
                    } else {
                        shape.energy(on.map_or(h, |on| on.min(h))) - shape.energy(off)
                    }
                },
            )
            .sum()
    }

    fn supplied_at(&self, h: f64) -> bool {
        !self.disconnector.history.iter().any(|&(off, on)| off <= h && on.is_none_or(|on| h < on))
    }

    /// What the meter measures at true hour `h`.
    pub fn values(&self, spec: &MeterSpec, grid: &Grid, h: f64) -> Values {
        let key = spec.key;
        let (k, _) = crate::model::slot(h);
        let (energy, power, mean) = match (spec.balance, spec.shape) {
            (true, _) | (false, None) => {
                (grid.energy(spec.node, h), grid.rate(spec.node, h), grid.mean_rate(spec.node))
            }
            (false, Some(s)) => {
                let p = if self.supplied_at(h) { s.rate(h) } else { 0.0 };
                (s.energy(h) - self.missing(&s, h), p, s.mean_rate())
            }
        };
        let load = if mean > 0.0 { power / mean } else { 0.0 };
        let mut v = Values { output: self.disconnector.output, ..Values::default() };
        // Voltage sags a little under load; a few tenths of noise per reading.
        let mut volts = [0.0; 3];
        for (i, x) in volts.iter_mut().enumerate() {
            let n = unit(key ^ (k as u64).wrapping_mul(31) ^ i as u64) - 0.5;
            *x = 231.0 + 3.0 * n - 4.0 * (load - 1.0).clamp(-1.0, 2.0);
        }
        if !self.disconnector.output && spec.model != Model::Gas {
            // Voltage is measured on the grid side of the disconnector: still there.
        }
        v.volts = volts;
        let (mut reg, mut export, mut meas_power, mut meas_amps_factor) = (energy, 0.0, power, 1.0);
        match spec.theft {
            Some(Theft::Bypass(f)) | Some(Theft::Tamper(f)) => {
                reg = energy * f;
                meas_power = power * f;
                meas_amps_factor = f;
            }
            Some(Theft::Reverse) => {
                let base = spec.shape.map_or(0.0, |s| s.energy(0.0));
                reg = base;
                export = (energy - base).max(0.0);
                meas_power = 0.0;
            }
            None => {}
        }
        v.import = reg;
        v.export = export;
        v.power = meas_power;
        let tan_phi = 0.2 + 0.25 * unit(key ^ 7);
        v.reactive_import = reg * tan_phi;
        v.reactive_export = reg * 0.01;
        let watts = power * 1000.0 * meas_amps_factor;
        match spec.model {
            Model::E1ph => v.amps[0] = watts / v.volts[0],
            Model::E3ph => {
                let w = [1.0 + 0.2 * unit(key ^ 11), 1.0 + 0.2 * unit(key ^ 12), 1.0 + 0.2 * unit(key ^ 13)];
                let s: f64 = w.iter().sum();
                for (i, wi) in w.iter().enumerate() {
                    v.amps[i] = watts * wi / s / v.volts[i];
                }
            }
            Model::Gas => {
                let years = h / 8766.0;
                v.battery = (3.62 - 0.04 * years - 0.01 * unit(key ^ 5)).max(2.9);
            }
        }
        v
    }

    /// The interval push for the capture at meter time `meter_unix` (a boundary).
    pub fn interval_push(&mut self, spec: &MeterSpec, grid: &Grid, meter_unix: i64) -> (Vec<u8>, PushRecord) {
        let h = hours(self.true_time(spec, meter_unix as f64));
        let v = self.values(spec, grid, h);
        let raw = raw_values(spec.model, &v);
        let mut body = Vec::with_capacity(2 + raw.len());
        body.push(Data::OctetString(spec.serial.as_bytes().to_vec()));
        body.push(Data::OctetString(DateTime::from_unix(meter_unix, DEVIATION, 0).to_bytes().to_vec()));
        for (i, &x) in raw.iter().enumerate() {
            body.push(typed(spec.model, spec.balance, i, x));
        }
        let apdu = self.notification(spec, Data::Structure(body));
        (apdu, PushRecord { ts: meter_unix, raw })
    }

    /// An alarm push (device id, clock, event code), logged in the event log.
    pub fn alarm_push(&mut self, spec: &MeterSpec, meter_unix: i64, code: u16) -> Vec<u8> {
        self.log_event(meter_unix, code);
        let body = Data::Structure(vec![
            Data::OctetString(spec.serial.as_bytes().to_vec()),
            Data::OctetString(DateTime::from_unix(meter_unix, DEVIATION, 0).to_bytes().to_vec()),
            Data::LongUnsigned(code),
        ]);
        self.notification(spec, body)
    }

    /// An EventNotification of the event code object, logged in the event log.
    pub fn event_notification(&mut self, spec: &MeterSpec, meter_unix: i64, code: u16) -> Vec<u8> {
        self.log_event(meter_unix, code);
        let apdu = Apdu::EventNotification(EventNotification {
            time: Some(DateTime::from_unix(meter_unix, DEVIATION, 0)),
            attribute: AttributeDescriptor { class_id: 1, instance_id: EVENT_CODE, attribute_id: 2 },
            value: Data::LongUnsigned(code),
        });
        self.protect_push(spec, &apdu.to_bytes().unwrap_or_default())
    }

    fn log_event(&mut self, meter_unix: i64, code: u16) {
        if self.events.len() >= EVENT_LOG_DEPTH {
            self.events.pop_front();
        }
        self.events.push_back((meter_unix, code));
    }

    fn notification(&mut self, spec: &MeterSpec, body: Data) -> Vec<u8> {
        self.push_seq = self.push_seq.wrapping_add(1) & 0x00FF_FFFF;
        let apdu = Apdu::DataNotification(DataNotification {
            long_invoke_id: LongInvokeIdAndPriority(self.push_seq),
            date_time: None,
            body,
        });
        self.protect_push(spec, &apdu.to_bytes().unwrap_or_default())
    }

    /// Pushes go out in general-glo-ciphering (authenticated and encrypted) when the
    /// meter has keys.
    fn protect_push(&mut self, spec: &MeterSpec, plain: &[u8]) -> Vec<u8> {
        match (keys_of(&self.rotated, spec).is_some(), spec.title) {
            (true, Some(title)) => {
                let ic = self.take_ic();
                let keys = keys_of(&self.rotated, spec).expect("checked");
                headend_core::push::encipher_push(keys, &title, ic, SecurityControl(0x30), plain)
                    .unwrap_or_else(|_| plain.to_vec())
            }
            _ => plain.to_vec(),
        }
    }

    /// A frame from the head-end: returns what to answer.
    pub fn handle(&mut self, spec: &MeterSpec, grid: &Grid, now_unix: f64, apdu: &[u8]) -> Output {
        let mut out = Output::default();
        let decoded = match Apdu::decode(apdu) {
            Ok(a) => a,
            Err(_) => {
                out.apdus.push(exception(2, 2));
                return out;
            }
        };
        match decoded {
            Apdu::Aarq(a) => {
                self.blocks = None;
                let reply = self.associate(spec, &a);
                out.apdus.push(reply);
            }
            Apdu::Rlrq(_) => {
                self.assoc = None;
                self.blocks = None;
                let r = Apdu::Rlre(Rlre { reason: Some(ReleaseResponseReason(0)), user_information: None });
                out.apdus.push(r.to_bytes().unwrap_or_default());
            }
            Apdu::Ciphered(c) => self.ciphered(spec, grid, now_unix, c, &mut out),
            other => {
                let plain = apdu.to_vec();
                if self.assoc.as_ref().is_some_and(|a| a.ciphered) {
                    // A ciphered association takes only ciphered requests.
                    out.apdus.push(exception(1, 1));
                } else {
                    self.service(spec, grid, now_unix, other, &plain, Envelope::Plain, &mut out);
                }
            }
        }
        out
    }

    fn associate(&mut self, spec: &MeterSpec, a: &Aarq) -> Vec<u8> {
        self.assoc = None;
        let reject = |diag: u8, user: Option<Apdu>| {
            Apdu::Aare(Aare {
                protocol_version: None,
                application_context: a.application_context,
                result: AssociationResult(1),
                diagnostic: Diagnostic::AcseServiceUser(AcseServiceUser(diag)),
                responding_ap_title: None,
                responding_ae_qualifier: None,
                responding_ap_invocation_id: None,
                responding_ae_invocation_id: None,
                responder_acse_requirements: None,
                mechanism_name: None,
                responding_authentication_value: None,
                implementation_information: None,
                user_information: user.map(Box::new),
            })
            .to_bytes()
            .unwrap_or_default()
        };
        let ciphered = match a.application_context.0 {
            1 => false,
            3 if keys_of(&self.rotated, spec).is_some() => true,
            _ => return reject(2, None),
        };
        let mechanism = a.mechanism_name.map_or(0, |m| m.0);
        let client_title: Option<SystemTitle> =
            a.calling_ap_title.as_deref().and_then(|t| SystemTitle::try_from(t).ok());
        match mechanism {
            0 => {}
            1 => {
                let pw = a.calling_authentication_value.as_deref().unwrap_or_default();
                if spec.password.is_empty() || pw != spec.password.as_slice() {
                    return reject(13, None);
                }
            }
            5 => {
                if keys_of(&self.rotated, spec).is_none() || client_title.is_none() {
                    return reject(11, None);
                }
                let c = a.calling_authentication_value.as_deref().unwrap_or_default();
                if !(8..=64).contains(&c.len()) {
                    return reject(13, None);
                }
            }
            _ => return reject(11, None),
        }
        if ciphered && client_title.is_none() {
            return reject(3, None);
        }
        // The InitiateRequest, plain or as glo-initiate-request.
        let initiate = match a.user_information.as_deref() {
            Some(Apdu::InitiateRequest(i)) if !ciphered => Some(i.clone()),
            Some(Apdu::Ciphered(c)) if ciphered && c.cipher.0 == tag::GLO_INITIATE_REQUEST => {
                match self.open(spec, c, client_title, false) {
                    Ok(plain) => match Apdu::decode(&plain) {
                        Ok(Apdu::InitiateRequest(i)) => Some(i),
                        _ => None,
                    },
                    Err(_) => None,
                }
            }
            _ => None,
        };
        let Some(init) = initiate else {
            return reject(1, Some(initiate_error(1)));
        };
        if init.proposed_dlms_version < 6 {
            return reject(1, Some(initiate_error(1)));
        }
        let supported = Conformance::from_names([
            "block-transfer-with-get-or-read",
            "multiple-references",
            "data-notification",
            "get",
            "set",
            "selective-access",
            "event-notification",
            "action",
            "priority-mgmt-supported",
        ])
        .unwrap_or(Conformance(0));
        let conformance = Conformance(init.proposed_conformance.0 & supported.0);
        let max_pdu = match init.client_max_receive_pdu_size {
            0 => 0xFFFF,
            n => n.max(64),
        } as usize;
        let hls = mechanism == 5;
        self.challenge_seq += 1;
        let stoc: Vec<u8> = if hls {
            (0..16u64).map(|i| (crate::model::mix(spec.key ^ self.challenge_seq << 8 ^ i) & 0xFF) as u8).collect()
        } else {
            Vec::new()
        };
        let response = Apdu::InitiateResponse(InitiateResponse {
            negotiated_quality_of_service: None,
            negotiated_dlms_version: 6,
            negotiated_conformance: conformance,
            server_max_receive_pdu_size: SERVER_MAX_PDU,
            vaa_name: 0x0007,
        })
        .to_bytes()
        .unwrap_or_default();
        let user = if ciphered {
            let ic = self.take_ic();
            let (Some(keys), Some(title)) = (keys_of(&self.rotated, spec), spec.title) else { return reject(2, None) };
            match encipher_with(
                keys,
                CipheredKind(tag::GLO_INITIATE_RESPONSE),
                SecurityControl(0x30),
                &title,
                ic,
                &response,
            ) {
                Ok(c) => Apdu::Ciphered(c),
                Err(_) => return reject(1, None),
            }
        } else {
            match Apdu::decode(&response) {
                Ok(a) => a,
                Err(_) => return reject(1, None),
            }
        };
        self.assoc = Some(Association {
            ciphered,
            mechanism,
            client_title,
            authenticated: !hls,
            stoc: stoc.clone(),
            ctos: a.calling_authentication_value.clone().unwrap_or_default(),
            max_pdu,
            conformance,
            dedicated: init.dedicated_key.as_deref().and_then(|k| <[u8; 16]>::try_from(k).ok()),
            dedicated_ic: None,
        });
        Apdu::Aare(Aare {
            protocol_version: None,
            application_context: ApplicationContext(a.application_context.0),
            result: AssociationResult(0),
            diagnostic: Diagnostic::AcseServiceUser(AcseServiceUser(if hls { 14 } else { 0 })),
            responding_ap_title: (ciphered || hls).then(|| spec.title.map(|t| t.to_vec())).flatten(),
            responding_ae_qualifier: None,
            responding_ap_invocation_id: None,
            responding_ae_invocation_id: None,
            responder_acse_requirements: hls.then_some(true),
            mechanism_name: hls.then_some(Mechanism(5)),
            responding_authentication_value: hls.then_some(stoc),
            implementation_information: None,
            user_information: Some(Box::new(user)),
        })
        .to_bytes()
        .unwrap_or_default()
    }

    /// Verifies and deciphers a request; enforces the client's invocation counter.
    fn open(
        &mut self,
        spec: &MeterSpec,
        c: &Ciphered,
        sender: Option<SystemTitle>,
        dedicated: bool,
    ) -> Result<Vec<u8>, ExceptionResponse> {
        let deciphering = ExceptionResponse {
            state_error: ExceptionStateError(1),
            service_error: ExceptionServiceError(5),
            invocation_counter: None,
        };
        let Some(keys) = keys_of(&self.rotated, spec) else { return Err(deciphering) };
        let policy = Policy { require_authentication: true, require_encryption: false };
        let d = if dedicated {
            let Some(dk) = self.assoc.as_ref().and_then(|a| a.dedicated) else { return Err(deciphering) };
            // The dedicated key replaces the encryption key; AK stays.
            let ak = self.ak(spec);
            let k = Keys::new(&dk, &ak);
            decipher_with(&k, c, sender.as_ref(), policy)
        } else {
            decipher_with(keys, c, sender.as_ref(), policy)
        }
        .map_err(|_| deciphering)?;
        let last = if dedicated { self.assoc.as_ref().and_then(|a| a.dedicated_ic) } else { self.client_ic };
        if last.is_some_and(|l| d.invocation_counter <= l) {
            return Err(ExceptionResponse {
                state_error: ExceptionStateError(1),
                service_error: ExceptionServiceError(6),
                invocation_counter: Some(last.unwrap_or(0).saturating_add(1)),
            });
        }
        if dedicated {
            if let Some(a) = self.assoc.as_mut() {
                a.dedicated_ic = Some(d.invocation_counter);
            }
        } else {
            self.client_ic = Some(d.invocation_counter);
        }
        Ok(d.plaintext)
    }

    fn ciphered(&mut self, spec: &MeterSpec, grid: &Grid, now_unix: f64, c: Ciphered, out: &mut Output) {
        let Some(assoc) = &self.assoc else {
            out.apdus.push(exception(1, 1));
            return;
        };
        if !assoc.ciphered {
            out.apdus.push(exception(1, 1));
            return;
        }
        let dedicated = c.cipher.is_dedicated();
        let envelope = if c.cipher.is_general() {
            Envelope::General { dedicated, sc: c.security_control }
        } else {
            Envelope::Specific { dedicated, sc: c.security_control }
        };
        let sender = assoc.client_title;
        let plain = match self.open(spec, &c, sender, dedicated) {
            Ok(p) => p,
            Err(e) => {
                out.apdus.push(Apdu::ExceptionResponse(e).to_bytes().unwrap_or_default());
                return;
            }
        };
        if let Some(want) = c.cipher.plaintext_tag() {
            if plain.first() != Some(&want) {
                out.apdus.push(exception(2, 2));
                return;
            }
        }
        match Apdu::decode(&plain) {
            Ok(a) => self.service(spec, grid, now_unix, a, &plain, envelope, out),
            Err(_) => out.apdus.push(exception(2, 2)),
        }
    }

    /// Protects a response in the envelope its request came in.
    fn seal(&mut self, spec: &MeterSpec, envelope: Envelope, plain: Vec<u8>) -> Vec<u8> {
        let (dedicated, sc, general) = match envelope {
            Envelope::Plain => return plain,
            Envelope::Specific { dedicated, sc } => (dedicated, sc, false),
            Envelope::General { dedicated, sc } => (dedicated, sc, true),
        };
        if keys_of(&self.rotated, spec).is_none() || spec.title.is_none() {
            return plain;
        }
        let kind = if general {
            CipheredKind(if dedicated { tag::GENERAL_DED_CIPHERING } else { tag::GENERAL_GLO_CIPHERING })
        } else {
            match plain.first().and_then(|&t| CipheredKind::for_plaintext(t, dedicated)) {
                Some(k) => k,
                None => return plain,
            }
        };
        let ic = self.take_ic();
        let (Some(keys), Some(title)) = (keys_of(&self.rotated, spec), spec.title) else { return plain };
        let sealed = if dedicated {
            match self.assoc.as_ref().and_then(|a| a.dedicated) {
                Some(dk) => encipher_with(&Keys::new(&dk, &self.ak(spec)), kind, sc, &title, ic, &plain),
                None => return plain,
            }
        } else {
            encipher_with(keys, kind, sc, &title, ic, &plain)
        };
        match sealed.and_then(|c| Apdu::Ciphered(c).to_bytes()) {
            Ok(b) => b,
            Err(_) => plain,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn service(
        &mut self,
        spec: &MeterSpec,
        grid: &Grid,
        now_unix: f64,
        apdu: Apdu,
        _plain: &[u8],
        envelope: Envelope,
        out: &mut Output,
    ) {
        let Some(assoc) = &self.assoc else {
            out.apdus.push(exception(1, 1));
            return;
        };
        let authenticated = assoc.authenticated;
        let level = if authenticated { assoc.mechanism } else { 0 };
        let conformance = assoc.conformance;
        let max_pdu = assoc.max_pdu;
        let h = hours(now_unix);
        if let Some(code) = self.settle(spec, grid, h) {
            out.events.push(code);
        }
        let response = match apdu {
            Apdu::GetRequest(g) => {
                if !authenticated || !conformance.has("get") {
                    self.get_denied(&g)
                } else {
                    match g {
                        GetRequest::Normal { invoke_id, attribute, access_selection } => {
                            let result = self.get(spec, grid, now_unix, &attribute, access_selection.as_ref());
                            return self.send_get(spec, invoke_id, result, max_pdu, envelope, conformance, out);
                        }
                        GetRequest::Next { invoke_id, block_number } => self.next_block(invoke_id, block_number),
                        GetRequest::WithList { invoke_id, attributes } => {
                            let results = attributes
                                .iter()
                                .map(|a| {
                                    match self.get(spec, grid, now_unix, &a.attribute, a.access_selection.as_ref()) {
                                        Ok(d) => GetDataResult::Data(d),
                                        Err(e) => GetDataResult::DataAccessResult(e),
                                    }
                                })
                                .collect();
                            Apdu::GetResponse(GetResponse::WithList { invoke_id, results })
                        }
                    }
                }
            }
            Apdu::SetRequest(s) => self.set(spec, now_unix, s, level, authenticated && conformance.has("set"), out),
            Apdu::ActionRequest(a) => {
                self.action(spec, grid, now_unix, a, level, assoc_ok(&self.assoc, &conformance), out)
            }
            _ => {
                out.apdus.push(exception(2, 2));
                return;
            }
        };
        if std::mem::take(&mut self.silent) {
            return;
        }
        let bytes = response.to_bytes().unwrap_or_default();
        let sealed = self.seal(spec, envelope, bytes);
        out.apdus.push(sealed);
        if let Some((ek, ak)) = self.rotate_after.take() {
            // The response went out under the old keys; from here on, the new ones.
            self.rotated = Some((Keys::new(&ek, &ak), ak));
            out.rekeyed = Some((ek, ak));
        }
    }

    fn get_denied(&self, g: &GetRequest) -> Apdu {
        let denied = DataAccessResult(3);
        match g {
            GetRequest::Normal { invoke_id, .. } => Apdu::GetResponse(GetResponse::Normal {
                invoke_id: *invoke_id,
                result: GetDataResult::DataAccessResult(denied),
            }),
            GetRequest::Next { invoke_id, block_number } => Apdu::GetResponse(GetResponse::WithDatablock {
                invoke_id: *invoke_id,
                block: DataBlockG {
                    last_block: true,
                    block_number: *block_number,
                    result: DataBlockResult::DataAccessResult(denied),
                },
            }),
            GetRequest::WithList { invoke_id, attributes } => Apdu::GetResponse(GetResponse::WithList {
                invoke_id: *invoke_id,
                results: attributes.iter().map(|_| GetDataResult::DataAccessResult(denied)).collect(),
            }),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn send_get(
        &mut self,
        spec: &MeterSpec,
        invoke_id: InvokeIdAndPriority,
        result: Result<Data, DataAccessResult>,
        max_pdu: usize,
        envelope: Envelope,
        conformance: Conformance,
        out: &mut Output,
    ) {
        let normal = |r: GetDataResult| Apdu::GetResponse(GetResponse::Normal { invoke_id, result: r });
        let data = match result {
            Ok(d) => d,
            Err(e) => {
                let b = normal(GetDataResult::DataAccessResult(e)).to_bytes().unwrap_or_default();
                out.apdus.push(self.seal(spec, envelope, b));
                return;
            }
        };
        let encoded = data.to_bytes().unwrap_or_default();
        if encoded.len() + BLOCK_OVERHEAD <= max_pdu {
            let b = normal(GetDataResult::Data(data)).to_bytes().unwrap_or_default();
            out.apdus.push(self.seal(spec, envelope, b));
            return;
        }
        if !conformance.has("block-transfer-with-get-or-read") {
            let b = normal(GetDataResult::DataAccessResult(DataAccessResult(11))).to_bytes().unwrap_or_default();
            out.apdus.push(self.seal(spec, envelope, b));
            return;
        }
        let size = max_pdu.saturating_sub(BLOCK_OVERHEAD).max(16);
        self.blocks = Some(Blocks { invoke: invoke_id, data: encoded, sent: 0, size });
        let first = self.block(1);
        let b = first.to_bytes().unwrap_or_default();
        out.apdus.push(self.seal(spec, envelope, b));
    }

    /// Block `n` (from 1) of the transfer in progress.
    fn block(&mut self, n: u32) -> Apdu {
        let Some(bl) = self.blocks.as_mut() else {
            return Apdu::ExceptionResponse(ExceptionResponse {
                state_error: ExceptionStateError(1),
                service_error: ExceptionServiceError(1),
                invocation_counter: None,
            });
        };
        let start = (n as usize - 1) * bl.size;
        let end = (start + bl.size).min(bl.data.len());
        let last = end >= bl.data.len();
        let raw = bl.data.get(start..end).unwrap_or_default().to_vec();
        bl.sent = n;
        let invoke = bl.invoke;
        if last {
            self.blocks = None;
        }
        Apdu::GetResponse(GetResponse::WithDatablock {
            invoke_id: invoke,
            block: DataBlockG { last_block: last, block_number: n, result: DataBlockResult::RawData(raw) },
        })
    }

    fn next_block(&mut self, invoke_id: InvokeIdAndPriority, acknowledged: u32) -> Apdu {
        let fail = |code: u8| {
            Apdu::GetResponse(GetResponse::WithDatablock {
                invoke_id,
                block: DataBlockG {
                    last_block: true,
                    block_number: acknowledged,
                    result: DataBlockResult::DataAccessResult(DataAccessResult(code)),
                },
            })
        };
        match &self.blocks {
            None => fail(16), // no-long-get-in-progress
            Some(b) if b.sent != acknowledged => {
                self.blocks = None;
                fail(19) // data-block-number-invalid
            }
            Some(_) => self.block(acknowledged + 1),
        }
    }

    /// The value of one attribute.
    fn get(
        &self,
        spec: &MeterSpec,
        grid: &Grid,
        now_unix: f64,
        a: &AttributeDescriptor,
        access: Option<&SelectiveAccess>,
    ) -> Result<Data, DataAccessResult> {
        let undefined = DataAccessResult(4);
        let inconsistent = DataAccessResult(9);
        let h = hours(now_unix);
        let meter_now = self.meter_time(spec, now_unix).floor() as i64;
        let Some(class) = self.class_of(spec, a.instance_id) else { return Err(undefined) };
        if class != a.class_id {
            return Err(inconsistent);
        }
        if a.attribute_id == 1 {
            return Ok(Data::OctetString(a.instance_id.0.to_vec()));
        }
        let obis = a.instance_id;
        match (class, a.attribute_id) {
            (1, 2) if obis == LDN => Ok(Data::OctetString(spec.serial.as_bytes().to_vec())),
            (1, 2) if obis == DEVICE_ID => Ok(Data::VisibleString(spec.serial.as_bytes().to_vec())),
            (1, 2) if obis == ACTIVE_FIRMWARE => Ok(Data::OctetString(self.active_firmware(spec))),
            (18, n) => self.firmware.get(n),
            (8, 2) => Ok(Data::OctetString(DateTime::from_unix(meter_now, DEVIATION, 0).to_bytes().to_vec())),
            (8, 3) => Ok(Data::Long(DEVIATION)),
            (8, 4) => Ok(Data::Unsigned(0)),
            (8, 8) => Ok(Data::Enum(1)),
            (3, 2) => {
                let (i, _) = self.register(spec, obis).ok_or(undefined)?;
                let v = self.values(spec, grid, h);
                let raw = raw_values(spec.model, &v);
                Ok(typed(spec.model, spec.balance, i, raw[i]))
            }
            (3, 3) => {
                let (_, r) = self.register(spec, obis).ok_or(undefined)?;
                Ok(Data::Structure(vec![Data::Integer(r.scaler), Data::Enum(r.unit)]))
            }
            (70, 2) => Ok(Data::Boolean(self.disconnector.output)),
            (70, 3) => Ok(Data::Enum(self.disconnector.state)),
            (70, 4) => Ok(Data::Enum(self.disconnector.mode)),
            (7, 2) if obis == EVENT_LOG => self.event_log(access),
            (7, 3) if obis == EVENT_LOG => {
                Ok(Data::Array(vec![capture_object(8, CLOCK, 2), capture_object(1, EVENT_CODE, 2)]))
            }
            (7, 7) if obis == EVENT_LOG => Ok(Data::DoubleLongUnsigned(self.events.len() as u32)),
            (7, 8) if obis == EVENT_LOG => Ok(Data::DoubleLongUnsigned(EVENT_LOG_DEPTH as u32)),
            (7, 2) => self.load_profile(spec, grid, meter_now, access),
            (7, 3) => {
                Ok(Data::Array(profile_columns(spec.model).iter().map(|c| capture_object(c.0, c.1, 2)).collect()))
            }
            (7, 4) => Ok(Data::DoubleLongUnsigned(profile_period(spec.model) as u32)),
            (7, 5) => Ok(Data::Enum(1)),
            (7, 7) | (7, 8) => Ok(Data::DoubleLongUnsigned(profile_depth(spec.model) as u32)),
            (15, 2) => Ok(self.object_list(spec)),
            (15, 8) => Ok(Data::Enum(if self.assoc.as_ref().is_some_and(|a| a.authenticated) { 2 } else { 1 })),
            _ => Err(undefined),
        }
    }

    fn register(&self, spec: &MeterSpec, obis: ObisCode) -> Option<(usize, Register)> {
        push_registers(spec.model)
            .iter()
            .enumerate()
            .find(|(_, r)| r.obis == obis && r.unit != UNIT_COUNT)
            .map(|(i, r)| (i, *r))
    }

    fn class_of(&self, spec: &MeterSpec, obis: ObisCode) -> Option<u16> {
        let disc = if spec.model.is_gas() { VALVE } else { DISCONNECTOR };
        let lp = if spec.model.is_gas() { GAS_PROFILE } else { LOAD_PROFILE };
        Some(match obis {
            o if o == LDN || o == DEVICE_ID => 1,
            o if o == CLOCK => 8,
            o if o == ASSOCIATION => 15,
            o if o == SECURITY_SETUP && spec.kek.is_some() => 64,
            o if o == IMAGE_TRANSFER && spec.title.is_some() => 18,
            o if o == ACTIVE_FIRMWARE => 1,
            o if o == EVENT_LOG || o == lp => 7,
            o if o == disc && !spec.balance => 70,
            o if self.register(spec, o).is_some() => 3,
            _ => return None,
        })
    }

    fn object_list(&self, spec: &MeterSpec) -> Data {
        let disc = if spec.model.is_gas() { VALVE } else { DISCONNECTOR };
        let lp = if spec.model.is_gas() { GAS_PROFILE } else { LOAD_PROFILE };
        // (class, version, logical name, attribute access modes, methods)
        type Entry = (u16, u8, ObisCode, Vec<(i8, u8)>, Vec<i8>);
        let mut objects: Vec<Entry> = vec![
            (1, 0, LDN, vec![(1, 1), (2, 1)], vec![]),
            (1, 0, DEVICE_ID, vec![(1, 1), (2, 1)], vec![]),
            (8, 0, CLOCK, vec![(1, 1), (2, 3), (3, 1), (4, 1), (8, 1)], vec![]),
            (15, 2, ASSOCIATION, vec![(1, 1), (2, 1), (8, 1)], vec![1]),
            (7, 1, EVENT_LOG, vec![(1, 1), (2, 1), (3, 1), (7, 1), (8, 1)], vec![]),
            (7, 1, lp, vec![(1, 1), (2, 1), (3, 1), (4, 1), (5, 1), (7, 1), (8, 1)], vec![]),
        ];
        if !spec.balance {
            objects.push((70, 0, disc, vec![(1, 1), (2, 1), (3, 1), (4, 3)], vec![1, 2]));
        }
        if spec.kek.is_some() {
            objects.push((64, 1, SECURITY_SETUP, vec![(1, 1), (2, 1), (3, 1), (4, 1), (5, 1)], vec![2]));
        }
        objects.push((1, 0, ACTIVE_FIRMWARE, vec![(1, 1), (2, 1)], vec![]));
        if spec.title.is_some() {
            let attrs = (1..=7).map(|a| (a, 1)).collect();
            objects.push((18, 0, IMAGE_TRANSFER, attrs, vec![1, 2, 3, 4]));
        }
        for r in push_registers(spec.model).iter().filter(|r| r.unit != UNIT_COUNT) {
            objects.push((3, 0, r.obis, vec![(1, 1), (2, 1), (3, 1)], vec![]));
        }
        Data::Array(
            objects
                .into_iter()
                .map(|(class, version, ln, attrs, methods)| {
                    Data::Structure(vec![
                        Data::LongUnsigned(class),
                        Data::Unsigned(version),
                        Data::OctetString(ln.0.to_vec()),
                        Data::Structure(vec![
                            Data::Array(
                                attrs
                                    .into_iter()
                                    .map(|(id, mode)| {
                                        Data::Structure(vec![Data::Integer(id), Data::Enum(mode), Data::Null])
                                    })
                                    .collect(),
                            ),
                            Data::Array(
                                methods
                                    .into_iter()
                                    .map(|id| Data::Structure(vec![Data::Integer(id), Data::Enum(1)]))
                                    .collect(),
                            ),
                        ]),
                    ])
                })
                .collect(),
        )
    }

    /// The load profile buffer, whole or selected by date range (selector 1) or entry
    /// numbers (selector 2).
    fn load_profile(
        &self,
        spec: &MeterSpec,
        grid: &Grid,
        meter_now: i64,
        access: Option<&SelectiveAccess>,
    ) -> Result<Data, DataAccessResult> {
        let period = profile_period(spec.model);
        let depth = profile_depth(spec.model);
        let newest = meter_now.div_euclid(period) * period;
        let oldest = newest - (depth - 1) * period;
        let columns = profile_columns(spec.model);
        let (from, to, cols) = select(access, oldest, newest, period, columns)?;
        let mut rows = Vec::new();
        let mut t = from.max(oldest).div_euclid(period) * period;
        if t < from {
            t += period;
        }
        while t <= to.min(newest) {
            let h = hours(self.true_time(spec, t as f64));
            let v = self.values(spec, grid, h);
            let raw = raw_values(spec.model, &v);
            let status: u8 = if self.supplied_at(h) { 0 } else { 0x04 };
            let all = [
                Data::OctetString(DateTime::from_unix(t, DEVIATION, 0).to_bytes().to_vec()),
                Data::Unsigned(status),
                typed(spec.model, spec.balance, 0, raw[0]),
                typed(spec.model, spec.balance, 1, raw[1]),
            ];
            rows.push(Data::Structure(cols.iter().map(|&c| all[c].clone()).collect()));
            t += period;
        }
        Ok(Data::Array(rows))
    }

    fn event_log(&self, access: Option<&SelectiveAccess>) -> Result<Data, DataAccessResult> {
        let cols = [(8u16, CLOCK), (1, EVENT_CODE)];
        let newest = self.events.back().map_or(0, |e| e.0);
        let oldest = self.events.front().map_or(0, |e| e.0);
        let (from, to, which) = match access {
            Some(sa) if sa.selector == 2 => {
                // Entry numbers over the log itself.
                let (first, last, c) = entries(sa, self.events.len() as i64, &cols)?;
                let rows = self
                    .events
                    .iter()
                    .skip(first as usize - 1)
                    .take((last - first + 1).max(0) as usize)
                    .map(|&(t, code)| event_row(t, code, &c))
                    .collect();
                return Ok(Data::Array(rows));
            }
            _ => select(access, oldest, newest, 1, &cols)?,
        };
        Ok(Data::Array(
            self.events
                .iter()
                .filter(|e| e.0 >= from && e.0 <= to)
                .map(|&(t, code)| event_row(t, code, &which))
                .collect(),
        ))
    }

    fn set(
        &mut self,
        spec: &MeterSpec,
        now_unix: f64,
        s: SetRequest,
        level: u8,
        allowed: bool,
        out: &mut Output,
    ) -> Apdu {
        let (invoke_id, attribute, value) = match s {
            SetRequest::Normal { invoke_id, attribute, value, .. } => (invoke_id, attribute, value),
            other => {
                // Block and list SETs are not supported by this firmware.
                let invoke_id = set_invoke(&other);
                return Apdu::SetResponse(SetResponse::Normal { invoke_id, result: DataAccessResult(250) });
            }
        };
        let result = if !allowed || level < 1 {
            DataAccessResult(3)
        } else {
            match (self.class_of(spec, attribute.instance_id), attribute.attribute_id) {
                (Some(8), 2) if attribute.class_id == 8 => match clock_value(&value) {
                    Some(t) => {
                        let before = self.meter_time(spec, now_unix).floor() as i64;
                        self.log_event(before, EV_CLOCK_OLD);
                        self.clock_adjust += t - before;
                        self.log_event(t, EV_CLOCK_NEW);
                        out.events.push(EV_CLOCK_NEW);
                        DataAccessResult(0)
                    }
                    None => DataAccessResult(12),
                },
                (Some(70), 4) if attribute.class_id == 70 => match value {
                    Data::Enum(m) if m <= 6 => {
                        self.disconnector.mode = m;
                        DataAccessResult(0)
                    }
                    _ => DataAccessResult(12),
                },
                (Some(c), _) if c != attribute.class_id => DataAccessResult(9),
                (Some(_), _) => DataAccessResult(3),
                (None, _) => DataAccessResult(4),
            }
        };
        Apdu::SetResponse(SetResponse::Normal { invoke_id, result })
    }

    #[allow(clippy::too_many_arguments)]
    fn action(
        &mut self,
        spec: &MeterSpec,
        grid: &Grid,
        now_unix: f64,
        a: ActionRequest,
        level: u8,
        allowed: bool,
        out: &mut Output,
    ) -> Apdu {
        let (invoke_id, method, parameters) = match a {
            ActionRequest::Normal { invoke_id, method, parameters } => (invoke_id, method, parameters),
            other => {
                let invoke_id = action_invoke(&other);
                return action_response(invoke_id, ActionResult(250), None);
            }
        };
        // HLS pass 3: the only method open before authentication.
        if method.class_id == 15 && method.instance_id == ASSOCIATION && method.method_id == 1 {
            return self.reply_to_hls(spec, invoke_id, parameters);
        }
        if !allowed || level < 5 {
            return action_response(invoke_id, ActionResult(3), None);
        }
        let disc = if spec.model.is_gas() { VALVE } else { DISCONNECTOR };
        let h = hours(now_unix);
        let result = match (method, self.class_of(spec, method.instance_id)) {
            (MethodDescriptor { class_id: 70, instance_id, method_id: 1 }, Some(70)) if instance_id == disc => {
                let was = self.disconnector.output;
                self.disconnect(spec, grid, h);
                if was {
                    out.switched = Some(true);
                    out.events.push(disconnect_code(spec.model));
                }
                ActionResult(0)
            }
            (MethodDescriptor { class_id: 70, instance_id, method_id: 2 }, Some(70)) if instance_id == disc => {
                if !self.disconnector.output {
                    if matches!(self.disconnector.mode, 1 | 3 | 5) {
                        // Ready for reconnection: the consumer presses the button
                        // some minutes later.
                        self.disconnector.state = 2;
                        let delay = 5.0 + 55.0 * unit(spec.key ^ h.to_bits());
                        self.disconnector.button_at = Some(h + delay / 60.0);
                    } else {
                        self.connect(spec, grid, h);
                        out.switched = Some(false);
                        out.events.push(reconnect_code(spec.model));
                    }
                }
                ActionResult(0)
            }
            (MethodDescriptor { class_id: 64, instance_id, method_id: 2 }, Some(64))
                if instance_id == SECURITY_SETUP =>
            {
                self.key_transfer(spec, parameters.as_ref())
            }
            (MethodDescriptor { class_id: 18, method_id, .. }, Some(18)) => {
                if self.firmware.active.is_empty() {
                    self.firmware.active = self.active_firmware(spec);
                }
                match self.firmware.action(method_id, parameters.as_ref(), spec.image_faults) {
                    image::Outcome::Result(r) => r,
                    image::Outcome::Silent => {
                        self.silent = true;
                        ActionResult(0)
                    }
                }
            }
            (m, Some(c)) if c != m.class_id => ActionResult(9),
            (_, Some(_)) => ActionResult(3),
            (_, None) => ActionResult(4),
        };
        action_response(invoke_id, result, None)
    }

    /// Security Setup `key_transfer`: new global keys wrapped under the meter's master
    /// key (RFC 3394). Both the encryption and the authentication key must come, and
    /// unwrap, or nothing changes; they are used from the next APDU after the response.
    fn key_transfer(&mut self, spec: &MeterSpec, parameters: Option<&Data>) -> ActionResult {
        let (Some(kek), Some(p)) = (spec.kek, parameters) else { return ActionResult(3) };
        if spec.refuses_keys {
            return ActionResult(3);
        }
        let Ok(keys) = keytransfer::keys_of(&kek, p) else { return ActionResult(12) };
        let find = |id: u8| keys.iter().find(|(i, _)| *i == id).map(|(_, k)| *k);
        match (find(keytransfer::GLOBAL_UNICAST_ENCRYPTION), find(keytransfer::AUTHENTICATION)) {
            (Some(ek), Some(ak)) => {
                self.rotate_after = Some((ek, ak));
                ActionResult(0)
            }
            _ => ActionResult(12),
        }
    }

    fn reply_to_hls(&mut self, spec: &MeterSpec, invoke_id: InvokeIdAndPriority, parameters: Option<Data>) -> Apdu {
        let fail = action_response(invoke_id, ActionResult(250), None);
        let (Some(keys), Some(title)) = (keys_of(&self.rotated, spec).cloned(), spec.title) else { return fail };
        let Some(assoc) = &self.assoc else { return fail };
        if assoc.mechanism != 5 || assoc.authenticated {
            return action_response(invoke_id, ActionResult(3), None);
        }
        let Some(client) = assoc.client_title else { return fail };
        let Some(Data::OctetString(f)) = parameters else { return action_response(invoke_id, ActionResult(12), None) };
        let stoc = assoc.stoc.clone();
        let ctos = assoc.ctos.clone();
        // StoC is fresh for every association, so a replayed f(StoC) fails here; its
        // counter is not held against the envelope's (the client may number them in
        // either order).
        if keys.verify_hls_response(&client, &stoc, &f).is_err() {
            return fail;
        }
        let my_ic = self.take_ic();
        let reply = keys.hls_response(&title, my_ic, &ctos);
        if let Some(a) = self.assoc.as_mut() {
            a.authenticated = true;
        }
        action_response(invoke_id, ActionResult(0), Some(GetDataResult::Data(Data::OctetString(reply))))
    }
}

fn assoc_ok(assoc: &Option<Association>, conformance: &Conformance) -> bool {
    assoc.is_some() && conformance.has("action")
}

fn action_response(invoke_id: InvokeIdAndPriority, result: ActionResult, ret: Option<GetDataResult>) -> Apdu {
    Apdu::ActionResponse(ActionResponse::Normal {
        invoke_id,
        response: ActionOutcome { result, return_parameters: ret },
    })
}

fn set_invoke(s: &SetRequest) -> InvokeIdAndPriority {
    match s {
        SetRequest::Normal { invoke_id, .. }
        | SetRequest::WithFirstDatablock { invoke_id, .. }
        | SetRequest::WithDatablock { invoke_id, .. }
        | SetRequest::WithList { invoke_id, .. }
        | SetRequest::WithListAndFirstDatablock { invoke_id, .. } => *invoke_id,
    }
}

fn action_invoke(a: &ActionRequest) -> InvokeIdAndPriority {
    match a {
        ActionRequest::Normal { invoke_id, .. }
        | ActionRequest::NextPblock { invoke_id, .. }
        | ActionRequest::WithList { invoke_id, .. }
        | ActionRequest::WithFirstPblock { invoke_id, .. }
        | ActionRequest::WithListAndFirstPblock { invoke_id, .. }
        | ActionRequest::WithPblock { invoke_id, .. } => *invoke_id,
    }
}

fn exception(state: u8, service: u8) -> Vec<u8> {
    Apdu::ExceptionResponse(ExceptionResponse {
        state_error: ExceptionStateError(state),
        service_error: ExceptionServiceError(service),
        invocation_counter: None,
    })
    .to_bytes()
    .unwrap_or_default()
}

fn initiate_error(detail: u8) -> Apdu {
    Apdu::ConfirmedServiceError(ConfirmedServiceError {
        service: ConfirmedService(1),
        error: ServiceErrorKind(6),
        detail,
    })
}

pub fn disconnect_code(model: Model) -> u16 {
    if model.is_gas() {
        EV_GAS_VALVE_CLOSED
    } else {
        EV_SUPPLY_DISCONNECTED
    }
}

pub fn reconnect_code(model: Model) -> u16 {
    if model.is_gas() {
        EV_GAS_VALVE_OPENED
    } else {
        EV_SUPPLY_RECONNECTED
    }
}

fn capture_object(class: u16, obis: ObisCode, attribute: i8) -> Data {
    Data::Structure(vec![
        Data::LongUnsigned(class),
        Data::OctetString(obis.0.to_vec()),
        Data::Integer(attribute),
        Data::LongUnsigned(0),
    ])
}

/// Load profile columns: clock, status, import and export (gas: volume and corrected).
fn profile_columns(model: Model) -> &'static [(u16, ObisCode)] {
    const E: [(u16, ObisCode); 4] = [(8, CLOCK), (1, LP_STATUS), (3, A_PLUS), (3, A_MINUS)];
    const G: [(u16, ObisCode); 4] = [(8, CLOCK), (1, LP_STATUS), (3, GAS_VOLUME), (3, GAS_CORRECTED)];
    if model.is_gas() {
        &G
    } else {
        &E
    }
}

pub fn profile_period(model: Model) -> i64 {
    if model.is_gas() {
        3600
    } else {
        900
    }
}

fn profile_depth(model: Model) -> i64 {
    if model.is_gas() {
        LP_DEPTH_GAS
    } else {
        LP_DEPTH_ELECTRICITY
    }
}

fn event_row(t: i64, code: u16, cols: &[usize]) -> Data {
    let all = [Data::OctetString(DateTime::from_unix(t, DEVIATION, 0).to_bytes().to_vec()), Data::LongUnsigned(code)];
    Data::Structure(cols.iter().map(|&c| all[c].clone()).collect())
}

/// A date-time in an attribute value or selection: octet-string(12) or date-time.
fn clock_value(d: &Data) -> Option<i64> {
    let dt = match d {
        Data::OctetString(b) if b.len() == 12 => DateTime::from_bytes(b.as_slice().try_into().ok()?),
        Data::DateTime(dt) => *dt,
        _ => return None,
    };
    dt.to_unix(DeviationSign::Standard, Some(DEVIATION))
}

/// Which columns a `selected_values` array picks (empty: all).
fn columns_of(sel: Option<&Data>, cols: &[(u16, ObisCode)]) -> Result<Vec<usize>, DataAccessResult> {
    let all: Vec<usize> = (0..cols.len()).collect();
    let Some(Data::Array(items)) = sel else { return Ok(all) };
    if items.is_empty() {
        return Ok(all);
    }
    items
        .iter()
        .map(|it| {
            let Data::Structure(f) = it else { return Err(DataAccessResult(12)) };
            let (Some(Data::LongUnsigned(class)), Some(Data::OctetString(ln))) = (f.first(), f.get(1)) else {
                return Err(DataAccessResult(12));
            };
            cols.iter().position(|(c, o)| c == class && o.0.as_slice() == ln.as_slice()).ok_or(DataAccessResult(4))
        })
        .collect()
}

/// Entry numbers (1-based, inclusive) and columns of an entry_descriptor.
fn entries(
    sa: &SelectiveAccess,
    count: i64,
    cols: &[(u16, ObisCode)],
) -> Result<(i64, i64, Vec<usize>), DataAccessResult> {
    let Data::Structure(f) = &sa.parameters else { return Err(DataAccessResult(12)) };
    let num = |i: usize| f.get(i).and_then(|d| d.as_i128()).map(|v| v as i64);
    let (Some(from), Some(to), Some(c0), Some(c1)) = (num(0), num(1), num(2), num(3)) else {
        return Err(DataAccessResult(12));
    };
    let to = if to == 0 { count } else { to.min(count) };
    let from = from.max(1);
    let n = cols.len() as i64;
    let c1 = if c1 == 0 { n } else { c1.min(n) };
    let c0 = c0.max(1);
    if c0 > c1 {
        return Err(DataAccessResult(12));
    }
    Ok((from, to, ((c0 - 1) as usize..c1 as usize).collect()))
}

/// Time range (inclusive, meter time) and columns of a selective access on a profile.
fn select(
    access: Option<&SelectiveAccess>,
    oldest: i64,
    newest: i64,
    period: i64,
    cols: &[(u16, ObisCode)],
) -> Result<(i64, i64, Vec<usize>), DataAccessResult> {
    let all: Vec<usize> = (0..cols.len()).collect();
    let Some(sa) = access else { return Ok((oldest, newest, all)) };
    match sa.selector {
        1 => {
            let Data::Structure(f) = &sa.parameters else { return Err(DataAccessResult(12)) };
            if f.len() < 3 {
                return Err(DataAccessResult(12));
            }
            let from = clock_value(&f[1]).unwrap_or(i64::MIN);
            let to = clock_value(&f[2]).unwrap_or(i64::MAX);
            Ok((from, to, columns_of(f.get(3), cols)?))
        }
        2 => {
            let count = (newest - oldest) / period + 1;
            let (first, last, c) = entries(sa, count, cols)?;
            if first > last {
                return Ok((1, 0, c));
            }
            Ok((oldest + (first - 1) * period, oldest + (last - 1) * period, c))
        }
        _ => Err(DataAccessResult(12)),
    }
}
