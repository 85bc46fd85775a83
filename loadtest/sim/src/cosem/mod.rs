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

mod association;
mod catalogue;
pub mod events;
mod services;

pub use catalogue::*;
pub use events::*;
pub use services::{disconnect_code, profile_period, reconnect_code};

/// Largest APDU the meter accepts, announced in the InitiateResponse.
pub const SERVER_MAX_PDU: u16 = 1024;
/// Bytes the GET-Response-with-datablock header and ciphering add around a block.
const BLOCK_OVERHEAD: usize = 48;
/// Entries the meter keeps in its load profile (60 days of quarter hours; gas: 90 days
/// of hours) and in its event log.
const LP_DEPTH_ELECTRICITY: i64 = 60 * 96;
const LP_DEPTH_GAS: i64 = 90 * 24;
const EVENT_LOG_DEPTH: usize = 100;

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
}

// -- shared by the association and the services ------------------------------------

fn exception(state: u8, service: u8) -> Vec<u8> {
    Apdu::ExceptionResponse(ExceptionResponse {
        state_error: ExceptionStateError(state),
        service_error: ExceptionServiceError(service),
        invocation_counter: None,
    })
    .to_bytes()
    .unwrap_or_default()
}

fn action_response(invoke_id: InvokeIdAndPriority, result: ActionResult, ret: Option<GetDataResult>) -> Apdu {
    Apdu::ActionResponse(ActionResponse::Normal {
        invoke_id,
        response: ActionOutcome { result, return_parameters: ret },
    })
}

fn assoc_ok(assoc: &Option<Association>, conformance: &Conformance) -> bool {
    assoc.is_some() && conformance.has("action")
}
