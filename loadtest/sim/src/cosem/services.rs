//! The xDLMS services the meter serves: GET (with block transfer), SET and ACTION on
//! its objects (clock, registers, disconnector or valve, load profile and event log
//! with selective access, the association's object list, key transfer, firmware).

use super::*;

impl Meter {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn service(
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

    pub(super) fn get_denied(&self, g: &GetRequest) -> Apdu {
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
    pub(super) fn send_get(
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
    pub(super) fn block(&mut self, n: u32) -> Apdu {
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

    pub(super) fn next_block(&mut self, invoke_id: InvokeIdAndPriority, acknowledged: u32) -> Apdu {
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
    pub(super) fn get(
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

    pub(super) fn register(&self, spec: &MeterSpec, obis: ObisCode) -> Option<(usize, Register)> {
        push_registers(spec.model)
            .iter()
            .enumerate()
            .find(|(_, r)| r.obis == obis && r.unit != UNIT_COUNT)
            .map(|(i, r)| (i, *r))
    }

    pub(super) fn class_of(&self, spec: &MeterSpec, obis: ObisCode) -> Option<u16> {
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

    pub(super) fn object_list(&self, spec: &MeterSpec) -> Data {
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
    pub(super) fn load_profile(
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

    pub(super) fn event_log(&self, access: Option<&SelectiveAccess>) -> Result<Data, DataAccessResult> {
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

    pub(super) fn set(
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
    pub(super) fn action(
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
    pub(super) fn key_transfer(&mut self, spec: &MeterSpec, parameters: Option<&Data>) -> ActionResult {
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
}

pub(super) fn set_invoke(s: &SetRequest) -> InvokeIdAndPriority {
    match s {
        SetRequest::Normal { invoke_id, .. }
        | SetRequest::WithFirstDatablock { invoke_id, .. }
        | SetRequest::WithDatablock { invoke_id, .. }
        | SetRequest::WithList { invoke_id, .. }
        | SetRequest::WithListAndFirstDatablock { invoke_id, .. } => *invoke_id,
    }
}

pub(super) fn action_invoke(a: &ActionRequest) -> InvokeIdAndPriority {
    match a {
        ActionRequest::Normal { invoke_id, .. }
        | ActionRequest::NextPblock { invoke_id, .. }
        | ActionRequest::WithList { invoke_id, .. }
        | ActionRequest::WithFirstPblock { invoke_id, .. }
        | ActionRequest::WithListAndFirstPblock { invoke_id, .. }
        | ActionRequest::WithPblock { invoke_id, .. } => *invoke_id,
    }
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

pub(super) fn capture_object(class: u16, obis: ObisCode, attribute: i8) -> Data {
    Data::Structure(vec![
        Data::LongUnsigned(class),
        Data::OctetString(obis.0.to_vec()),
        Data::Integer(attribute),
        Data::LongUnsigned(0),
    ])
}

/// Load profile columns: clock, status, import and export (gas: volume and corrected).
pub(super) fn profile_columns(model: Model) -> &'static [(u16, ObisCode)] {
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

pub(super) fn profile_depth(model: Model) -> i64 {
    if model.is_gas() {
        LP_DEPTH_GAS
    } else {
        LP_DEPTH_ELECTRICITY
    }
}

pub(super) fn event_row(t: i64, code: u16, cols: &[usize]) -> Data {
    let all = [Data::OctetString(DateTime::from_unix(t, DEVIATION, 0).to_bytes().to_vec()), Data::LongUnsigned(code)];
    Data::Structure(cols.iter().map(|&c| all[c].clone()).collect())
}

/// A date-time in an attribute value or selection: octet-string(12) or date-time.
pub(super) fn clock_value(d: &Data) -> Option<i64> {
    let dt = match d {
        Data::OctetString(b) if b.len() == 12 => DateTime::from_bytes(b.as_slice().try_into().ok()?),
        Data::DateTime(dt) => *dt,
        _ => return None,
    };
    dt.to_unix(DeviationSign::Standard, Some(DEVIATION))
}

/// Which columns a `selected_values` array picks (empty: all).
pub(super) fn columns_of(sel: Option<&Data>, cols: &[(u16, ObisCode)]) -> Result<Vec<usize>, DataAccessResult> {
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
pub(super) fn entries(
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
pub(super) fn select(
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
