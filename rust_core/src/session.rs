//! One meter connection, from TCP bytes to rows: the head-end's hot path.
//!
//! ```text
//! bytes ─▶ StreamDecoder ─▶ APDU ─▶ who sent it? ─▶ decipher + replay check ─▶ leaves ─▶ layout ─▶ readings / events
//!                                     │ system title (ciphered)        (KeyTable)          (Profile)       (RowSink, RowBinary)
//!                                     │ device id leaf (plain push)
//!                                     │ address learned on this connection (concentrators)
//!                                     └ unknown: queue the APDU, ask Python to look the meter up
//! ```
//! Python sees only what it must act on: lookups, non-push APDUs (responses to its own
//! requests), HDLC link frames and rejects. Every reject is counted in the sink's stats
//! and reported to Python, which aggregates them per source address, reason, meter and
//! interval into `events` rows and log lines (a flood cannot write a row per bad frame),
//! so nothing refused is invisible.

use std::collections::VecDeque;

use crate::apdu::{tag as apdu_tag, CipheredKind, Envelope};
use crate::axdr::{tag, Data};
use crate::datetime::DateTime;
pub use crate::directory::{Directory, LookupKey, MeterInfo};
use crate::error::{Error, Result};
use crate::hdlc::Address;
use crate::profile::leaf_bytes;
use crate::push::{flatten_value, PushBatch};
use crate::reader::Reader;
use crate::rows::{EventRow, Reading, RowSink, QUALITY_MEASURED, SOURCE_PUSH, STATUS_TIME_FROM_HEADEND};
use crate::stream::{Event, StreamConfig, StreamDecoder, Transport};

/// What the Python side must act on.
#[derive(Clone, Debug, PartialEq)]
pub enum SessionEvent {
    /// Ask the store about this meter; the APDU waits in the session.
    Lookup(LookupKey),
    /// A meter spoke on this connection for the first time, from link address
    /// `source` (wrapper port, or HDLC upper << 16 | lower): requests to it go there.
    Identified { meter: u32, source: u32 },
    /// A (deciphered) APDU that is not a push: a response to the head-end's request,
    /// an AARE, an exception.
    Apdu { source: u32, meter: Option<u32>, apdu: Vec<u8> },
    /// An HDLC frame other than UI: its control field's name and byte (sequence numbers
    /// for I and RR), whether more segments follow, and the information field of frames
    /// that carry no APDU (the UA's parameters). An I-frame's APDU follows as `Apdu`.
    Link { source: u32, destination: u32, control: &'static str, byte: u8, segmented: bool, info: Vec<u8> },
    /// Input refused; already counted and written as an events row.
    Reject { kind: &'static str, message: String, meter: Option<u32> },
}

/// Per-connection counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionStats {
    pub bytes_in: u64,
    pub frames: u64,
    pub pushes: u64,
    pub readings: u64,
    pub events: u64,
    pub errors: u64,
    pub meters: Vec<u32>,
}

struct Pending {
    source: u32,
    apdu: Vec<u8>,
}

/// One meter connection (or one concentrator connection with several meters).
pub struct Session {
    pub peer: String,
    stream: StreamDecoder,
    learned: Vec<(u32, u32)>,
    pending: VecDeque<Pending>,
    waiting: Vec<LookupKey>,
    max_pending: usize,
    pub stats: SessionStats,
}

fn address_u32(a: &Address) -> u32 {
    (a.upper as u32) << 16 | a.lower.unwrap_or(0) as u32
}

/// Context shared by the handlers of one call.
struct Ctx<'a> {
    now: i64,
    dir: &'a mut Directory,
    sink: &'a mut RowSink,
    out: &'a mut Vec<SessionEvent>,
}

impl Session {
    pub fn new(peer: String, cfg: StreamConfig, max_pending: usize) -> Self {
        Session {
            peer,
            stream: StreamDecoder::new(cfg),
            learned: Vec::new(),
            pending: VecDeque::new(),
            waiting: Vec::new(),
            max_pending,
            stats: SessionStats::default(),
        }
    }

    /// Frames the stream decoder holds back (a partial frame).
    pub fn buffered(&self) -> usize {
        self.stream.pending()
    }

    /// APDUs waiting for a meter lookup.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    pub fn framing(&self) -> crate::stream::Framing {
        self.stream.framing()
    }

    /// Says which meter answers at link address `source` on this connection, before it
    /// has sent anything: a connection the head-end opened to a listening meter. The
    /// meter's responses are then deciphered with its keys like those of a meter that
    /// identified itself.
    /// Returns whether the meter is new on this connection.
    pub fn bind(&mut self, source: u32, meter: u32) -> bool {
        match self.learned.iter_mut().find(|(s, _)| *s == source) {
            Some(e) => e.1 = meter,
            None => self.learned.push((source, meter)),
        }
        let new = !self.stats.meters.contains(&meter);
        if new {
            self.stats.meters.push(meter);
        }
        new
    }

    /// Bytes from the peer (empty: the peer closed).
    pub fn feed(
        &mut self,
        data: &[u8],
        now: i64,
        dir: &mut Directory,
        sink: &mut RowSink,
        out: &mut Vec<SessionEvent>,
    ) {
        self.stats.bytes_in += data.len() as u64;
        let mut cx = Ctx { now, dir, sink, out };
        // Whole wrapper frames go from `data` to the APDU without a copy (most reads
        // hold one whole push); the rest through the stream decoder's buffer.
        let mut rest = data;
        while self.pending.len() < self.max_pending {
            let Some((header, apdu, used)) = self.stream.direct_wrapper(rest) else { break };
            self.stats.frames += 1;
            rest = &rest[used..];
            self.apdu(&mut cx, header.source_wport as u32, apdu);
        }
        if data.is_empty() || !rest.is_empty() {
            self.stream.receive(rest); // empty only when the peer closed
        }
        self.decode(&mut cx);
    }

    /// One datagram from the peer (UDP, IEC 62056-47: a whole wrapper frame, or
    /// several): what it holds beyond its whole frames is refused (`truncated`), never
    /// joined to the next datagram. Frames still waiting for room in the lookup queue
    /// stay, as on a stream.
    pub fn feed_datagram(
        &mut self,
        data: &[u8],
        now: i64,
        dir: &mut Directory,
        sink: &mut RowSink,
        out: &mut Vec<SessionEvent>,
    ) {
        if data.is_empty() {
            return; // an empty datagram is nothing (on a stream it would be the end)
        }
        self.stats.bytes_in += data.len() as u64;
        self.stream.receive(data);
        let mut cx = Ctx { now, dir, sink, out };
        self.decode(&mut cx);
        if self.pending.len() < self.max_pending && self.stream.pending() > 0 {
            let n = self.stream.discard_partial();
            let msg = format!("a datagram ended {n} bytes into a frame");
            self.reject_kind(&mut cx, "truncated", &msg, None);
        }
    }

    /// Frames from the stream decoder, until it holds no whole frame or the queue of
    /// APDUs waiting for a meter lookup is full: what is left stays in the decoder (the
    /// worker stops reading meanwhile) and is decoded after the lookup, never refused
    /// for want of room (a concentrator's buffered pushes after a blackout).
    fn decode(&mut self, cx: &mut Ctx<'_>) {
        while self.pending.len() < self.max_pending {
            let Some(ev) = self.stream.next_event() else { break };
            match ev {
                Event::Error { error, .. } => self.reject(cx, &error, None),
                Event::Frame(f) => {
                    self.stats.frames += 1;
                    let (source, destination) = match &f.transport {
                        Transport::Wrapper(h) => (h.source_wport as u32, h.destination_wport as u32),
                        Transport::Hdlc { source, destination, .. } => (address_u32(source), address_u32(destination)),
                    };
                    // The HDLC link layer is the client's business (SNRM/UA, sequence
                    // numbers, RR for the next segment): every frame but UI is reported,
                    // I-frames too (before their APDU), with their control byte.
                    if let Transport::Hdlc { control, segmented, .. } = f.transport {
                        if !matches!(control, crate::hdlc::Control::UI { .. }) {
                            let info = if f.apdu.is_none() && !matches!(control, crate::hdlc::Control::I { .. }) {
                                f.info
                            } else {
                                Vec::new()
                            };
                            cx.out.push(SessionEvent::Link {
                                source,
                                destination,
                                control: control.name(),
                                byte: control.to_byte(),
                                segmented,
                                info,
                            });
                        }
                    }
                    if let Some(apdu) = f.apdu {
                        self.apdu(cx, source, &apdu);
                    }
                }
            }
        }
    }

    /// Runs the APDUs that waited for a lookup again (after the directory learned the
    /// meter, or learned that it is unknown).
    pub fn retry(&mut self, now: i64, dir: &mut Directory, sink: &mut RowSink, out: &mut Vec<SessionEvent>) {
        self.waiting.clear();
        let queued: Vec<Pending> = self.pending.drain(..).collect();
        let mut cx = Ctx { now, dir, sink, out };
        for p in queued {
            self.apdu(&mut cx, p.source, &p.apdu);
        }
        // Then the frames that waited in the decoder for room in the queue.
        self.decode(&mut cx);
    }

    fn reject(&mut self, cx: &mut Ctx<'_>, e: &Error, meter: Option<u32>) {
        self.reject_kind(cx, e.kind(), &e.to_string(), meter);
    }

    fn reject_kind(&mut self, cx: &mut Ctx<'_>, kind: &'static str, message: &str, meter: Option<u32>) {
        self.stats.errors += 1;
        cx.sink.count_reject(kind);
        let message: String = message.chars().take(300).collect();
        cx.out.push(SessionEvent::Reject { kind, message, meter });
    }

    fn learned(&self, source: u32) -> Option<u32> {
        self.learned.iter().find(|(s, _)| *s == source).map(|(_, m)| *m)
    }

    fn learn(&mut self, cx: &mut Ctx<'_>, source: u32, meter: u32) {
        if self.bind(source, meter) {
            cx.out.push(SessionEvent::Identified { meter, source });
        }
    }

    /// Queues an APDU until the meter is looked up, or refuses it when the store said
    /// the meter is unknown.
    fn wait_for(&mut self, cx: &mut Ctx<'_>, key: LookupKey, source: u32, apdu: Vec<u8>) {
        if cx.dir.known_unknown(&key, cx.now) {
            let who = match &key {
                LookupKey::Title(st) => format!("system title {}", crate::data_json::hex(st)),
                LookupKey::Serial(s) => format!("device {:?}", String::from_utf8_lossy(s)),
            };
            self.reject_kind(cx, "unknown-meter", &format!("no meter with {who}"), None);
            return;
        }
        if self.pending.len() >= self.max_pending {
            self.reject_kind(cx, "pending-overflow", "too many APDUs waiting for a meter lookup", None);
            return;
        }
        self.pending.push_back(Pending { source, apdu });
        if !self.waiting.contains(&key) {
            self.waiting.push(key.clone());
            cx.out.push(SessionEvent::Lookup(key));
        }
    }

    /// An APDU, borrowed: it is copied only to wait for a lookup or to go up as an event.
    fn apdu(&mut self, cx: &mut Ctx<'_>, source: u32, apdu: &[u8]) {
        let Some(&t) = apdu.first() else {
            self.reject_kind(cx, "malformed", "empty APDU", None);
            return;
        };
        if CipheredKind::is_ciphered_tag(t) {
            self.ciphered(cx, source, apdu);
        } else {
            self.plain_apdu(cx, source, apdu);
        }
    }

    fn ciphered(&mut self, cx: &mut Ctx<'_>, source: u32, apdu: &[u8]) {
        let env = match Envelope::parse(apdu) {
            Ok(e) => e,
            Err(e) => return self.reject(cx, &e, self.learned(source)),
        };
        let (kind, title) = (env.kind, env.system_title.copied());
        // Who sent it: the title in the APDU, else the meter learned on this address.
        let st = match title.or_else(|| self.learned(source).and_then(|m| cx.dir.meter(m).system_title)) {
            Some(st) => st,
            None => {
                return self.reject_kind(
                    cx,
                    "malformed",
                    &format!("{} without a system title from an unidentified sender", kind.name()),
                    None,
                )
            }
        };
        let Some(meter) = cx.dir.by_title(&st) else {
            return self.wait_for(cx, LookupKey::Title(st), source, apdu.to_vec());
        };
        let mut plain = std::mem::take(&mut cx.sink.plain);
        plain.clear();
        plain.extend_from_slice(env.ciphertext);
        let policy = cx.dir.policy;
        let opened = cx.dir.keys.decipher_in_place(
            kind,
            title.as_ref().map(|t| &t[..]),
            env.security_control,
            env.invocation_counter,
            &mut plain,
            env.tag,
            Some(&st),
            policy,
        );
        if let Err(e) = opened {
            cx.sink.plain = plain;
            return self.reject(cx, &e, Some(meter));
        }
        cx.sink.touch(st);
        if let Some(want) = kind.plaintext_tag() {
            if plain.first() != Some(&want) {
                cx.sink.plain = plain;
                let e = Error::invalid(
                    "deciphered APDU",
                    0,
                    format!("{} does not contain the APDU its tag names", kind.name()),
                );
                return self.reject(cx, &e, Some(meter));
            }
        }
        self.learn(cx, source, meter);
        self.known(cx, source, meter, &plain);
        // Give the buffer back for the next APDU (`known` may have used the sink's
        // other scratch, never this one).
        cx.sink.plain = plain;
    }

    fn plain_apdu(&mut self, cx: &mut Ctx<'_>, source: u32, apdu: &[u8]) {
        // A push that names its device says who sent it; the address learned on this
        // connection only stands in when it does not.
        let meter = if apdu[0] == apdu_tag::DATA_NOTIFICATION {
            match self.device_id(cx, apdu) {
                Ok(Some(serial)) => match cx.dir.by_serial(&serial) {
                    Some(m) => Some(m),
                    None => return self.wait_for(cx, LookupKey::Serial(serial), source, apdu.to_vec()),
                },
                Ok(None) => self.learned(source),
                Err(e) => return self.reject(cx, &e, None),
            }
        } else {
            self.learned(source)
        };
        match meter {
            Some(m) if cx.dir.meter(m).ciphered && is_push(apdu[0]) => {
                let serial = cx.dir.meter(m).serial.clone();
                self.reject_kind(
                    cx,
                    "unciphered",
                    &format!("plain {} claiming meter {serial}, which has keys", push_name(apdu[0])),
                    Some(m),
                );
            }
            Some(m) => {
                self.learn(cx, source, m);
                self.known(cx, source, m, apdu);
            }
            None if is_push(apdu[0]) => self.reject_kind(
                cx,
                "unidentified",
                &format!("plain {} from an unidentified sender", push_name(apdu[0])),
                None,
            ),
            None => cx.out.push(SessionEvent::Apdu { source, meter: None, apdu: apdu.to_vec() }),
        }
    }

    /// The device identifier leaf of a plain DataNotification, if it is a string.
    fn device_id(&mut self, cx: &mut Ctx<'_>, apdu: &[u8]) -> Result<Option<Vec<u8>>> {
        let mut r = Reader::new(apdu);
        notification_header(&mut r)?;
        let leaves = &mut cx.sink.leaves;
        leaves.clear();
        let n = flatten_value(&mut r, 0, leaves).map_err(|e| e.truncated_at("DataNotification", 0))?;
        let i = cx.dir.device_leaf as usize;
        if i < n && matches!(leaves.value_tag[i], tag::OCTET_STRING | tag::VISIBLE_STRING | tag::UTF8_STRING) {
            let b = leaf_bytes(leaves, i);
            if !b.is_empty() {
                return Ok(Some(b.to_vec()));
            }
        }
        Ok(None)
    }

    /// A plaintext APDU from an identified meter.
    fn known(&mut self, cx: &mut Ctx<'_>, source: u32, meter: u32, apdu: &[u8]) {
        let result = match apdu.first() {
            Some(&apdu_tag::DATA_NOTIFICATION) => self.notification(cx, meter, apdu),
            Some(&apdu_tag::EVENT_NOTIFICATION) => self.event_notification(cx, meter, apdu),
            _ => {
                cx.out.push(SessionEvent::Apdu { source, meter: Some(meter), apdu: apdu.to_vec() });
                Ok(())
            }
        };
        if let Err(e) = result {
            self.reject(cx, &e, Some(meter));
        }
    }

    fn notification(&mut self, cx: &mut Ctx<'_>, meter: u32, apdu: &[u8]) -> Result<()> {
        // The leaves live in the worker's sink (scratch shared by all sessions); take
        // them out while rows go into the same sink.
        let mut leaves = std::mem::take(&mut cx.sink.leaves);
        let result = self.notification_rows(cx, meter, apdu, &mut leaves);
        cx.sink.leaves = leaves;
        result
    }

    fn notification_rows(&mut self, cx: &mut Ctx<'_>, meter: u32, apdu: &[u8], leaves: &mut PushBatch) -> Result<()> {
        let mut r = Reader::new(apdu);
        let (_, header_time) = notification_header(&mut r)?;
        leaves.clear();
        let n = flatten_value(&mut r, 0, leaves).map_err(|e| e.truncated_at("DataNotification", 0))?;
        r.finish("DataNotification")?;
        // Borrowed, not cloned (a serial's String a push): the directory is only read.
        let Ctx { now, dir, sink, .. } = cx;
        let now = *now;
        let info = dir.meter(meter);
        let profile = dir.profile(info.profile);
        let Some(layout) = profile.layout_for(leaves, 0, n) else {
            return Err(Error::unsupported(
                "push",
                0,
                format!("no layout of model {} matches a push of {n} values", profile.name),
            ));
        };
        // The measurement time: the layout's clock leaf, else the notification's own
        // date-time, else the time of receipt (flagged).
        let clock_of = |bytes: &[u8]| -> Option<(i64, u8)> {
            let b: [u8; 12] = bytes.try_into().ok()?;
            let dt = DateTime::from_bytes(&b);
            let ts = dt.to_unix(profile.sign(), profile.default_deviation)?;
            Some((ts, if dt.clock_status == 0xFF { 0 } else { dt.clock_status }))
        };
        let (ts, status) = layout
            .clock
            .filter(|&c| (c as usize) < n)
            .and_then(|c| clock_of(leaf_bytes(leaves, c as usize)))
            .or_else(|| header_time.as_deref().and_then(clock_of))
            .unwrap_or((now, STATUS_TIME_FROM_HEADEND));
        if let Some(i) = layout.device_id.filter(|&i| (i as usize) < n) {
            let claimed = leaf_bytes(leaves, i as usize);
            if !claimed.is_empty() && claimed != info.serial.as_bytes() {
                sink.event(&EventRow {
                    meter: &info.serial,
                    ts,
                    code: 0,
                    name: "device-id-mismatch",
                    category: "configuration",
                    source: "head-end",
                    peer: &self.peer,
                    detail: &format!("push names device {:?}", String::from_utf8_lossy(claimed)),
                    received_at: now,
                });
            }
        }
        for reg in &layout.registers {
            let i = reg.leaf as usize;
            if i >= n {
                continue;
            }
            let raw = leaves.value[i];
            if raw.is_nan() {
                continue;
            }
            sink.reading(&Reading {
                meter: &info.serial,
                obis: reg.obis.to_u64(),
                ts,
                value: info.ratios.primary(crate::units::scale(raw, reg.scaler), &reg.unit),
                unit: &reg.unit,
                status,
                source: SOURCE_PUSH,
                quality: QUALITY_MEASURED,
                received_at: now,
            });
            self.stats.readings += 1;
        }
        if let Some(i) = layout.event_code.filter(|&i| (i as usize) < n) {
            let code = leaves.value[i as usize];
            if code.is_finite() && (0.0..=65535.0).contains(&code) {
                let code = code as u16;
                let (name, category) = match profile.event(code) {
                    Some(e) => (e.name.clone(), e.category.clone()),
                    None => (format!("event-{code}"), "unknown".to_string()),
                };
                sink.event(&EventRow {
                    meter: &info.serial,
                    ts,
                    code,
                    name: &name,
                    category: &category,
                    source: "push",
                    peer: &self.peer,
                    detail: &layout.name,
                    received_at: now,
                });
                self.stats.events += 1;
            }
        }
        sink.count_push();
        self.stats.pushes += 1;
        Ok(())
    }

    fn event_notification(&mut self, cx: &mut Ctx<'_>, meter: u32, apdu: &[u8]) -> Result<()> {
        let Ok(crate::apdu::Apdu::EventNotification(ev)) = crate::apdu::Apdu::decode(apdu) else {
            return Err(Error::invalid("EventNotification", 0, "does not decode"));
        };
        let info = cx.dir.meter(meter).clone();
        let profile = cx.dir.profile(info.profile);
        let ts = ev.time.and_then(|t| t.to_unix(profile.sign(), profile.default_deviation)).unwrap_or(cx.now);
        let code = ev.value.as_i128().and_then(|c| u16::try_from(c).ok()).unwrap_or(0);
        let (name, category) = match profile.event(code) {
            Some(e) => (e.name.clone(), e.category.clone()),
            None => (format!("event-{code}"), "unknown".to_string()),
        };
        let a = ev.attribute;
        let detail = match &ev.value {
            Data::OctetString(_) | Data::VisibleString(_) | Data::Structure(_) | Data::Array(_) => {
                format!("{}/{}/{} {}", a.class_id, a.instance_id, a.attribute_id, ev.value.to_json())
            }
            _ => format!("{}/{}/{}", a.class_id, a.instance_id, a.attribute_id),
        };
        cx.sink.event(&EventRow {
            meter: &info.serial,
            ts,
            code,
            name: &name,
            category: &category,
            source: "event-notification",
            peer: &self.peer,
            detail: &detail,
            received_at: cx.now,
        });
        self.stats.events += 1;
        cx.sink.count_push();
        Ok(())
    }
}

fn is_push(t: u8) -> bool {
    t == apdu_tag::DATA_NOTIFICATION || t == apdu_tag::EVENT_NOTIFICATION
}

fn push_name(t: u8) -> &'static str {
    if t == apdu_tag::DATA_NOTIFICATION {
        "DataNotification"
    } else {
        "EventNotification"
    }
}

/// Tag, long-invoke-id and the optional date-time bytes of a DataNotification.
fn notification_header(r: &mut Reader<'_>) -> Result<(u32, Option<Vec<u8>>)> {
    r.u8("APDU tag")?;
    let invoke = r.u32("long-invoke-id-and-priority")?;
    let at = r.offset();
    let dt = r.axdr_bytes("date-time")?;
    match dt.len() {
        0 => Ok((invoke, None)),
        12 => Ok((invoke, Some(dt.to_vec()))),
        n => Err(Error::invalid("date-time", at, format!("{n} bytes (empty or 12)"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apdu::{
        Apdu, AttributeDescriptor, DataNotification, EventNotification, LongInvokeIdAndPriority, SecurityControl,
    };
    use crate::obis::ObisCode;
    use crate::profile::Profile;
    use crate::security::{encipher_with, Keys, SystemTitle};
    use crate::wrapper;
    use serde_json::json;

    fn profile() -> Profile {
        Profile::from_json(&json!({
            "name": "em-test", "kind": "electricity",
            "layouts": [
                {"name": "interval", "leaves": 4, "device_id": 0, "clock": 1, "registers": [
                    {"leaf": 2, "obis": "1.0.1.8.0.255", "unit": "Wh"},
                    {"leaf": 3, "obis": "1.0.32.7.0.255", "scaler": -1, "unit": "V"}
                ]},
                {"name": "alarm", "leaves": 3, "device_id": 0, "clock": 1, "event_code": 2}
            ],
            "events": [{"code": 40, "name": "terminal-cover-opened", "category": "tamper"}]
        }))
        .unwrap()
    }

    const ST: SystemTitle = *b"UZE00001";

    fn dir() -> Directory {
        let mut d = Directory::new();
        d.add_profile(profile());
        d.add_meter("E1", "em-test", Some(ST), Some(Keys::new(&[1; 16], &[2; 16])), None, None).unwrap();
        d.add_meter("P1", "em-test", None, None, None, None).unwrap();
        d
    }

    fn push(serial: &str, energy: u32, volts: u16, t: i64) -> Vec<u8> {
        Apdu::DataNotification(DataNotification {
            long_invoke_id: LongInvokeIdAndPriority(1),
            date_time: None,
            body: Data::Structure(vec![
                Data::OctetString(serial.as_bytes().to_vec()),
                Data::OctetString(DateTime::from_unix(t, -300, 0).to_bytes().to_vec()),
                Data::DoubleLongUnsigned(energy),
                Data::LongUnsigned(volts),
            ]),
        })
        .to_bytes()
        .unwrap()
    }

    fn enc(apdu: &[u8], ic: u32) -> Vec<u8> {
        let c = encipher_with(&Keys::new(&[1; 16], &[2; 16]), CipheredKind(0xDB), SecurityControl(0x30), &ST, ic, apdu)
            .unwrap();
        Apdu::Ciphered(c).to_bytes().unwrap()
    }

    /// The kinds of the refusals among `out`, in order.
    fn refusals(out: &[SessionEvent]) -> Vec<&'static str> {
        out.iter()
            .filter_map(|e| match e {
                SessionEvent::Reject { kind, .. } => Some(*kind),
                _ => None,
            })
            .collect()
    }

    fn run(s: &mut Session, d: &mut Directory, sink: &mut RowSink, frames: &[Vec<u8>]) -> Vec<SessionEvent> {
        let mut out = Vec::new();
        for f in frames {
            s.feed(&wrapper::encode(1, 1, f).unwrap(), 1_800_000_000, d, sink, &mut out);
        }
        out
    }

    #[test]
    fn hdlc_link_frames_reach_the_client_with_their_control_byte() {
        use crate::hdlc::{encode_frame, Address, Control, LLC_RESPONSE};
        let mut d = dir();
        let mut sink = RowSink::new();
        let mut s = new_session();
        let (client, meter) = (Address::one(1), Address::server(1, 0x11));
        let mut out = Vec::new();
        let mut feed = |s: &mut Session, bytes: Vec<u8>, out: &mut Vec<SessionEvent>| {
            s.feed(&bytes, 1_800_000_000, &mut d, &mut sink, out);
        };
        // The UA answering our SNRM, with its parameters.
        let ua = encode_frame(client, meter, Control::UA { poll_final: true }, &[0x81, 0x80, 0x00], false).unwrap();
        feed(&mut s, ua, &mut out);
        let src = 1 << 16 | 0x11;
        assert_eq!(
            out,
            vec![SessionEvent::Link {
                source: src,
                destination: 1 << 16,
                control: "UA",
                byte: 0x73,
                segmented: false,
                info: vec![0x81, 0x80, 0x00]
            }]
        );
        // A response in two segments: the first is reported (so the client sends RR),
        // the last comes before the reassembled APDU.
        out.clear();
        let apdu = [0xC4, 0x01, 0xC1, 0x00, 0x09, 0x02, 0x41, 0x42];
        let info = [&LLC_RESPONSE[..], &apdu].concat();
        let (a, b) = info.split_at(6);
        let i0 = Control::I { send_seq: 0, recv_seq: 1, poll_final: true };
        let i1 = Control::I { send_seq: 1, recv_seq: 1, poll_final: true };
        feed(&mut s, encode_frame(client, meter, i0, a, true).unwrap(), &mut out);
        feed(&mut s, encode_frame(client, meter, i1, b, false).unwrap(), &mut out);
        let link = |byte: u8, segmented: bool| SessionEvent::Link {
            source: src,
            destination: 1 << 16,
            control: "I",
            byte,
            segmented,
            info: vec![],
        };
        assert_eq!(out[0], link(i0.to_byte(), true));
        assert_eq!(out[1], link(i1.to_byte(), false));
        assert!(matches!(&out[2], SessionEvent::Apdu { source, apdu: got, .. } if *source == src && got[..] == apdu));
        assert_eq!(out.len(), 3);
    }

    fn new_session() -> Session {
        Session::new("10.0.0.1:50000".into(), StreamConfig::default(), 16)
    }

    #[test]
    fn encrypted_push_becomes_scaled_readings() {
        let (mut d, mut sink, mut s) = (dir(), RowSink::new(), new_session());
        let out = run(&mut s, &mut d, &mut sink, &[enc(&push("E1", 123_456, 2301, 1_700_000_000), 5)]);
        assert_eq!(out, vec![SessionEvent::Identified { meter: 0, source: 1 }]);
        assert_eq!(sink.readings_rows(), 2);
        assert_eq!(s.stats.pushes, 1);
        let ((r, _), _, touched) = sink.drain();
        assert_eq!(touched, vec![ST]);
        // meter "E1", obis 1.0.1.8.0.255, ts, value 123456.0
        assert_eq!(&r[..3], &[2, b'E', b'1']);
        assert_eq!(&r[3..11], &ObisCode::new(1, 0, 1, 8, 0, 255).to_u64().to_le_bytes());
        assert_eq!(&r[11..15], &1_700_000_000u32.to_le_bytes());
        assert_eq!(&r[15..23], &123_456f64.to_le_bytes());
        // The voltage is scaled by 10^-1; the first row is 33 bytes ("Wh" is one byte
        // longer than "V").
        let v_at = 33 + 15;
        assert_eq!(&r[v_at..v_at + 8], &230.1f64.to_le_bytes());
    }

    /// Whole frames in a read go straight from it (no copy into the stream buffer);
    /// frames split across reads, garbage and a frame after it go through the buffer.
    /// Every way of cutting the same bytes gives the same rows and the same refusals.
    #[test]
    fn frames_read_whole_or_in_pieces_give_the_same_rows_and_refusals() {
        let frame =
            |ic: u32| wrapper::encode(1, 1, &enc(&push("E1", ic, 2300, 1_700_000_000 + ic as i64), ic)).unwrap();
        let mut bytes = Vec::new();
        for ic in 5..9 {
            bytes.extend(frame(ic));
        }
        bytes.extend(b"\xde\xad\xbe\xef");
        bytes.extend(frame(9));
        bytes.extend(frame(9)); // a replay
        let feed_in = |cuts: &[usize]| {
            let (mut d, mut sink, mut s) = (dir(), RowSink::new(), new_session());
            let mut out = Vec::new();
            let mut at = 0;
            for &c in cuts.iter().chain([bytes.len()].iter()) {
                s.feed(&bytes[at..c], 1_800_000_000, &mut d, &mut sink, &mut out);
                at = c;
            }
            let ((rows, n), _, _) = sink.drain();
            let refused = refusals(&out);
            (rows, n, refused, s.stats.frames, s.stream.pending())
        };
        let whole = feed_in(&[]);
        assert_eq!(whole.1, 10, "five pushes of two readings");
        assert_eq!(whole.2, ["malformed", "replayed-invocation-counter"]);
        assert_eq!(whole.4, 0);
        let one = bytes.len() / 7;
        for cuts in [vec![1], vec![one], vec![one, 2 * one, 3 * one + 1], (1..bytes.len()).collect()] {
            assert_eq!(feed_in(&cuts), whole, "cut at {:?}", &cuts[..cuts.len().min(4)]);
        }
    }

    #[test]
    fn a_meter_on_instrument_transformers_stores_primary_values() {
        // CT 200/5 (40), VT 10,000/100 (100): 123,456 Wh secondary is 493,824,000 Wh
        // primary; 230.1 V secondary is 23,010 V.
        let (mut d, mut sink, mut s) = (dir(), RowSink::new(), new_session());
        assert!(d.set_ratios(0, 0.0, 100.0).is_err());
        d.set_ratios(0, 40.0, 100.0).unwrap();
        run(&mut s, &mut d, &mut sink, &[enc(&push("E1", 123_456, 2301, 1_700_000_000), 5)]);
        let ((r, _), _, _) = sink.drain();
        assert_eq!(&r[15..23], &493_824_000f64.to_le_bytes());
        assert_eq!(&r[33 + 15..33 + 23], &23_010f64.to_le_bytes());
        // Re-adding the meter (a lookup after a re-import) makes it direct again until
        // the ratios are set: the directory never keeps stale ratios.
        d.add_meter("E1", "em-test", Some(ST), Some(Keys::new(&[1; 16], &[2; 16])), None, None).unwrap();
        assert!(d.meter(0).ratios.is_direct());
    }

    #[test]
    fn a_datagram_that_ends_inside_a_frame_is_refused_alone() {
        let (mut d, mut sink, mut s) = (dir(), RowSink::new(), new_session());
        let whole = wrapper::encode(1, 1, &enc(&push("E1", 1, 2300, 1_700_000_000), 1)).unwrap();
        let mut out = Vec::new();
        // Half a frame, then a whole one: the half is refused, the whole one stored.
        s.feed_datagram(&whole[..whole.len() / 2], 1_800_000_000, &mut d, &mut sink, &mut out);
        assert!(matches!(out[..], [SessionEvent::Reject { kind: "truncated", .. }]), "{out:?}");
        assert_eq!(s.buffered(), 0);
        out.clear();
        let next = wrapper::encode(1, 1, &enc(&push("E1", 2, 2300, 1_700_000_900), 2)).unwrap();
        s.feed_datagram(&next, 1_800_000_000, &mut d, &mut sink, &mut out);
        assert_eq!(out, vec![SessionEvent::Identified { meter: 0, source: 1 }]);
        assert_eq!(sink.readings_rows(), 2);
        // An empty datagram is nothing, not the end of the session.
        s.feed_datagram(&[], 1_800_000_000, &mut d, &mut sink, &mut out);
        assert_eq!(sink.take_stats().rejects, vec![("truncated", 1)]);
    }

    #[test]
    fn plain_push_identified_by_device_id_and_refused_for_keyed_meters() {
        let (mut d, mut sink, mut s) = (dir(), RowSink::new(), new_session());
        let out =
            run(&mut s, &mut d, &mut sink, &[push("P1", 1, 2300, 1_700_000_000), push("E1", 1, 2300, 1_700_000_000)]);
        assert_eq!(sink.readings_rows(), 2, "{out:?}");
        assert!(matches!(out[1], SessionEvent::Reject { kind: "unciphered", meter: Some(_), .. }), "{out:?}");
        assert_eq!(sink.take_stats().rejects, vec![("unciphered", 1)]);
    }

    #[test]
    fn unknown_meters_wait_for_lookup_then_flow() {
        let (mut d, mut sink, mut s) = (Directory::new(), RowSink::new(), new_session());
        d.add_profile(profile());
        let frames = [enc(&push("E1", 1, 2300, 1_700_000_000), 1), enc(&push("E1", 2, 2300, 1_700_000_900), 2)];
        let out = run(&mut s, &mut d, &mut sink, &frames);
        assert_eq!(out, vec![SessionEvent::Lookup(LookupKey::Title(ST))]);
        assert_eq!(s.pending(), 2);
        d.add_meter("E1", "em-test", Some(ST), Some(Keys::new(&[1; 16], &[2; 16])), None, None).unwrap();
        let mut out = Vec::new();
        s.retry(1_800_000_000, &mut d, &mut sink, &mut out);
        assert_eq!(sink.readings_rows(), 4);
        assert_eq!(s.pending(), 0);
        // An unknown meter the store does not know either is refused, and recorded.
        let mut s2 = new_session();
        let other: SystemTitle = *b"UZE99999";
        d.mark_unknown(LookupKey::Title(other), 1_900_000_000);
        let c = encipher_with(
            &Keys::new(&[1; 16], &[2; 16]),
            CipheredKind(0xDB),
            SecurityControl(0x30),
            &other,
            1,
            &push("X", 1, 1, 1),
        )
        .unwrap();
        let out = run(&mut s2, &mut d, &mut sink, &[Apdu::Ciphered(c).to_bytes().unwrap()]);
        assert!(matches!(out[0], SessionEvent::Reject { kind: "unknown-meter", .. }), "{out:?}");
    }

    #[test]
    fn a_burst_bigger_than_the_lookup_queue_waits_in_the_decoder() {
        // Ten buffered pushes in one read, a queue of four: none is refused; the rest
        // stay in the stream decoder until the lookup is answered.
        let (mut d, mut sink) = (Directory::new(), RowSink::new());
        d.add_profile(profile());
        let mut s = Session::new("10.0.0.1:50000".into(), StreamConfig::default(), 4);
        let bytes: Vec<u8> = (0..10u32)
            .flat_map(|i| {
                let apdu = enc(&push("E1", i, 2300, 1_700_000_000 + 900 * i as i64), i + 1);
                wrapper::encode(1, 1, &apdu).unwrap()
            })
            .collect();
        let mut out = Vec::new();
        s.feed(&bytes, 1_800_000_000, &mut d, &mut sink, &mut out);
        assert_eq!(out, vec![SessionEvent::Lookup(LookupKey::Title(ST))]);
        assert_eq!(s.pending(), 4);
        d.add_meter("E1", "em-test", Some(ST), Some(Keys::new(&[1; 16], &[2; 16])), None, None).unwrap();
        let mut out = Vec::new();
        s.retry(1_800_000_000, &mut d, &mut sink, &mut out);
        assert!(out.iter().all(|e| !matches!(e, SessionEvent::Reject { .. })), "{out:?}");
        assert_eq!(sink.readings_rows(), 20);
        assert_eq!(s.pending(), 0);
        assert!(sink.take_stats().rejects.is_empty());
    }

    #[test]
    fn replay_wrong_key_and_garbage_are_rejected_and_recorded() {
        let (mut d, mut sink, mut s) = (dir(), RowSink::new(), new_session());
        let good = enc(&push("E1", 1, 2300, 1_700_000_000), 7);
        let forged = {
            let c = encipher_with(
                &Keys::new(&[9; 16], &[2; 16]),
                CipheredKind(0xDB),
                SecurityControl(0x30),
                &ST,
                8,
                &push("E1", 1, 1, 1),
            )
            .unwrap();
            Apdu::Ciphered(c).to_bytes().unwrap()
        };
        let mut out = run(&mut s, &mut d, &mut sink, &[good.clone(), good, forged]);
        s.feed(b"\xde\xad\xbe\xef", 1_800_000_000, &mut d, &mut sink, &mut out);
        assert_eq!(refusals(&out), ["replayed-invocation-counter", "authentication-failed", "malformed"]);
        assert_eq!(sink.readings_rows(), 2);
        // Rejects are counted, and rows are Python's (aggregated per source): none here.
        assert_eq!(sink.events_rows(), 0);
        assert_eq!(sink.take_stats().rejects.len(), 3);
        assert_eq!(d.keys.counters(&ST).unwrap().0, Some(7));
    }

    #[test]
    fn alarm_push_and_event_notification_become_events() {
        let (mut d, mut sink, mut s) = (dir(), RowSink::new(), new_session());
        let alarm = Apdu::DataNotification(DataNotification {
            long_invoke_id: LongInvokeIdAndPriority(2),
            date_time: None,
            body: Data::Structure(vec![
                Data::OctetString(b"E1".to_vec()),
                Data::DateTime(DateTime::from_unix(1_700_000_000, -300, 0)),
                Data::Unsigned(40),
            ]),
        })
        .to_bytes()
        .unwrap();
        let event = cover_opened_event();
        let out = run(&mut s, &mut d, &mut sink, &[enc(&alarm, 1), enc(&event, 2)]);
        assert_eq!(out, vec![SessionEvent::Identified { meter: 0, source: 1 }]);
        assert_eq!(sink.events_rows(), 2);
        let (_, (e, _), _) = sink.drain();
        let text = String::from_utf8_lossy(&e);
        assert_eq!(text.matches("terminal-cover-opened").count(), 2);
    }

    #[test]
    fn concentrator_addresses_are_learned_per_connection() {
        let (mut d, mut sink, mut s) = (dir(), RowSink::new(), new_session());
        // The meter identifies itself once with a general-glo APDU on wPort 0x11 ...
        let mut out = Vec::new();
        s.feed(
            &wrapper::encode(0x11, 1, &enc(&push("E1", 1, 2300, 1_700_000_000), 1)).unwrap(),
            1_800_000_000,
            &mut d,
            &mut sink,
            &mut out,
        );
        // ... then sends a service-specific glo-event-notification (no title) on the same port.
        let event = cover_opened_event();
        let c =
            encipher_with(&Keys::new(&[1; 16], &[2; 16]), CipheredKind(0xCA), SecurityControl(0x30), &ST, 2, &event)
                .unwrap();
        s.feed(
            &wrapper::encode(0x11, 1, &Apdu::Ciphered(c.clone()).to_bytes().unwrap()).unwrap(),
            1_800_000_000,
            &mut d,
            &mut sink,
            &mut out,
        );
        assert_eq!(sink.events_rows(), 1, "{out:?}");
        // The same APDU from another port of the concentrator has no sender.
        let c3 =
            encipher_with(&Keys::new(&[1; 16], &[2; 16]), CipheredKind(0xCA), SecurityControl(0x30), &ST, 3, &event)
                .unwrap();
        s.feed(
            &wrapper::encode(0x12, 1, &Apdu::Ciphered(c3).to_bytes().unwrap()).unwrap(),
            1_800_000_000,
            &mut d,
            &mut sink,
            &mut out,
        );
        assert!(matches!(out.last(), Some(SessionEvent::Reject { kind: "malformed", .. })), "{out:?}");
    }

    /// An EventNotification of event 40 (terminal cover opened) in the standard event log.
    fn cover_opened_event() -> Vec<u8> {
        Apdu::EventNotification(EventNotification {
            time: None,
            attribute: AttributeDescriptor {
                class_id: 1,
                instance_id: ObisCode::new(0, 0, 96, 11, 0, 255),
                attribute_id: 2,
            },
            value: Data::Unsigned(40),
        })
        .to_bytes()
        .unwrap()
    }

    #[test]
    fn a_bound_address_deciphers_before_the_meter_speaks() {
        // A connection the head-end dialled: no push has named the meter, so a
        // service-specific glo APDU (no title) has no sender until the address is bound.
        let (mut d, mut sink) = (dir(), RowSink::new());
        let event = cover_opened_event();
        let keys = Keys::new(&[1; 16], &[2; 16]);
        let frame = |ic: u32| {
            let c = encipher_with(&keys, CipheredKind(0xCA), SecurityControl(0x30), &ST, ic, &event).unwrap();
            wrapper::encode(1, 1, &Apdu::Ciphered(c).to_bytes().unwrap()).unwrap()
        };
        let mut out = Vec::new();
        let mut unbound = new_session();
        unbound.feed(&frame(5), 1_800_000_000, &mut d, &mut sink, &mut out);
        assert!(matches!(out.last(), Some(SessionEvent::Reject { kind: "malformed", .. })), "{out:?}");
        let meter = d.by_serial(b"E1").unwrap();
        let mut bound = new_session();
        bound.bind(1, meter);
        out.clear();
        let before = sink.events_rows(); // the refusal above is an events row too
        bound.feed(&frame(6), 1_800_000_000, &mut d, &mut sink, &mut out);
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(sink.events_rows(), before + 1);
        assert_eq!(bound.stats.meters, vec![meter]);
        // Another address on the same connection is still nobody.
        bound.feed(&wrapper::encode(2, 1, &[0xCA]).unwrap(), 1_800_000_000, &mut d, &mut sink, &mut out);
        assert!(matches!(out.last(), Some(SessionEvent::Reject { .. })), "{out:?}");
    }

    #[test]
    fn unknown_layout_is_refused_with_a_reason() {
        let (mut d, mut sink, mut s) = (dir(), RowSink::new(), new_session());
        let odd = Apdu::DataNotification(DataNotification {
            long_invoke_id: LongInvokeIdAndPriority(1),
            date_time: None,
            body: Data::Structure(vec![Data::Unsigned(1); 9]),
        })
        .to_bytes()
        .unwrap();
        let out = run(&mut s, &mut d, &mut sink, &[enc(&odd, 1)]);
        assert!(
            matches!(&out[1], SessionEvent::Reject { kind: "unsupported", message, .. } if message.contains("9 values")),
            "{out:?}"
        );
    }

    #[test]
    fn non_push_apdus_go_to_python() {
        let (mut d, mut sink, mut s) = (dir(), RowSink::new(), new_session());
        let resp = vec![0xC4, 1, 0xC1, 0, 0x11, 5];
        let out = run(&mut s, &mut d, &mut sink, std::slice::from_ref(&resp));
        assert_eq!(out, vec![SessionEvent::Apdu { source: 1, meter: None, apdu: resp }]);
    }
}
