//! The batch fast path: pushed frames in, columnar rows out.
//!
//! A buffer of frames (as a meter connection delivers them, or many connections'
//! frames concatenated) is parsed, deciphered, replay-checked and decoded into flat
//! columns without building a `Data` tree or any per-value allocation. Every leaf of a
//! DataNotification body becomes one row, numbered depth-first; the meter-model profile
//! (a later layer) maps leaf numbers to OBIS codes, scalers and units.
//!
//! GET-Response-Normal carrying data (a register or a load-profile buffer read) is
//! flattened the same way, marked by `push_kind`, so polled data takes the same road
//! into the store. Anything else (events, block transfers, AAREs, errors) is handed back
//! in `others` for the general decoder, so nothing is lost on the fast path.

use crate::apdu::{tag as apdu_tag, Ciphered, CipheredKind, Envelope, SecurityControl};
use crate::axdr::{tag, Data, MAX_DEPTH};
use crate::datetime::{DateTime, DeviationSign};
use crate::error::{Error, Result};
use crate::hdlc::Address;
use crate::reader::Reader;
use crate::security::{KeyTable, Policy, SystemTitle};
use crate::stream::{Event, Framing, StreamConfig, StreamDecoder, Transport};
use crate::wrapper;

/// A DataNotification.
pub const KIND_NOTIFICATION: u8 = 0;
/// A GET-Response-Normal with data (its invoke id in `push_invoke_id`, no time).
pub const KIND_GET_RESPONSE: u8 = 1;

/// Most leaves one push may have.
pub const MAX_LEAVES: usize = u16::MAX as usize;

/// Columns of decoded pushes. Push-level columns have one entry per push, value-level
/// columns one per leaf; `value_push` links a value to its push.
#[derive(Default, Debug, Clone)]
pub struct PushBatch {
    /// Index of the input frame (or APDU) the push came from.
    pub push_frame: Vec<u32>,
    /// [`KIND_NOTIFICATION`] or [`KIND_GET_RESPONSE`].
    pub push_kind: Vec<u8>,
    /// The sender's system title as a big-endian u64; 0 for plain pushes.
    pub push_system_title: Vec<u64>,
    /// 0 for plain pushes.
    pub push_invocation_counter: Vec<u32>,
    pub push_security_control: Vec<u8>,
    pub push_invoke_id: Vec<u32>,
    /// The notification's date-time as Unix seconds; i64::MIN when absent or not a
    /// fully specified instant.
    pub push_time: Vec<i64>,
    /// Transport source: wrapper source wPort, or HDLC source address (upper << 16 | lower).
    pub push_source: Vec<u32>,
    /// Index of the push's first value.
    pub push_first_value: Vec<u32>,

    pub value_push: Vec<u32>,
    /// Leaf number within the push, depth-first from 0.
    pub value_index: Vec<u16>,
    /// The A-XDR type tag of the leaf.
    pub value_tag: Vec<u8>,
    /// Numeric value; Unix seconds for a date-time; NaN for strings, null and
    /// date-times that are not a fully specified instant.
    pub value: Vec<f64>,
    /// Raw bytes of string, date and time leaves: `blobs[start..start + len]`.
    pub value_blob_start: Vec<u32>,
    pub value_blob_len: Vec<u32>,
    pub blobs: Vec<u8>,

    /// Frames that failed, with the reason.
    pub errors: Vec<(u32, Error)>,
    /// Frames whose (deciphered) APDU is not a DataNotification: (frame, sender title or
    /// 0, plaintext APDU).
    pub others: Vec<(u32, u64, Vec<u8>)>,
}

impl PushBatch {
    pub fn pushes(&self) -> usize {
        self.push_frame.len()
    }

    pub fn values(&self) -> usize {
        self.value.len()
    }

    /// Empties the batch and keeps its memory: a worker's sink clears one batch per
    /// push, and rebuilding the vectors (as this did) cost a tenth of `Session.feed`.
    pub fn clear(&mut self) {
        // Every field, so a new one cannot be forgotten here.
        let PushBatch {
            push_frame,
            push_kind,
            push_system_title,
            push_invocation_counter,
            push_security_control,
            push_invoke_id,
            push_time,
            push_source,
            push_first_value,
            value_push,
            value_index,
            value_tag,
            value,
            value_blob_start,
            value_blob_len,
            blobs,
            errors,
            others,
        } = self;
        push_frame.clear();
        push_kind.clear();
        push_system_title.clear();
        push_invocation_counter.clear();
        push_security_control.clear();
        push_invoke_id.clear();
        push_time.clear();
        push_source.clear();
        push_first_value.clear();
        value_push.clear();
        value_index.clear();
        value_tag.clear();
        value.clear();
        value_blob_start.clear();
        value_blob_len.clear();
        blobs.clear();
        errors.clear();
        others.clear();
    }

    fn mark(&self) -> (usize, usize) {
        (self.value.len(), self.blobs.len())
    }

    fn rollback(&mut self, (values, blobs): (usize, usize)) {
        self.value_push.truncate(values);
        self.value_index.truncate(values);
        self.value_tag.truncate(values);
        self.value.truncate(values);
        self.value_blob_start.truncate(values);
        self.value_blob_len.truncate(values);
        self.blobs.truncate(blobs);
    }

    fn leaf(&mut self, push: u32, index: usize, t: u8, v: f64, blob: &[u8]) -> Result<()> {
        if index >= MAX_LEAVES {
            return Err(Error::TooLong { what: "push values", offset: 0, len: index + 1, limit: MAX_LEAVES });
        }
        self.value_push.push(push);
        self.value_index.push(index as u16);
        self.value_tag.push(t);
        self.value.push(v);
        self.value_blob_start.push(self.blobs.len() as u32);
        self.value_blob_len.push(blob.len() as u32);
        self.blobs.extend_from_slice(blob);
        Ok(())
    }
}

/// Decodes pushes in batches; holds scratch space so the hot loop does not allocate.
pub struct PushDecoder {
    pub policy: Policy,
    pub max_apdu: usize,
    scratch: Vec<u8>,
}

impl Default for PushDecoder {
    fn default() -> Self {
        PushDecoder { policy: Policy::default(), max_apdu: 65_535, scratch: Vec::with_capacity(1024) }
    }
}

fn title_u64(st: &SystemTitle) -> u64 {
    u64::from_be_bytes(*st)
}

fn address_u32(a: &Address) -> u32 {
    (a.upper as u32) << 16 | a.lower.unwrap_or(0) as u32
}

impl PushDecoder {
    pub fn new(policy: Policy) -> Self {
        PushDecoder { policy, ..Default::default() }
    }

    /// Decodes every frame in `buf` (complete frames of one framing, back to back).
    /// Frames are numbered from `first_frame`. Returns the number of bytes consumed: a
    /// partial frame at the end is left for the caller to complete.
    pub fn decode_frames(
        &mut self,
        keys: &mut KeyTable,
        buf: &[u8],
        framing: Framing,
        first_frame: u32,
        out: &mut PushBatch,
    ) -> usize {
        match framing {
            Framing::Hdlc => self.decode_hdlc(keys, buf, first_frame, out),
            Framing::Wrapper | Framing::Auto if buf.first() == Some(&crate::hdlc::FLAG) => {
                self.decode_hdlc(keys, buf, first_frame, out)
            }
            _ => self.decode_wrapped(keys, buf, first_frame, out),
        }
    }

    fn decode_wrapped(&mut self, keys: &mut KeyTable, buf: &[u8], first_frame: u32, out: &mut PushBatch) -> usize {
        let mut pos = 0;
        let mut frame = first_frame;
        while pos < buf.len() {
            match wrapper::parse_frame(&buf[pos..], self.max_apdu) {
                Ok((h, apdu, used)) => {
                    self.decode_apdu(keys, apdu, frame, None, h.source_wport as u32, out);
                    pos += used;
                }
                Err(Error::Incomplete { .. }) => break,
                Err(e) => {
                    // A batch has no way to resynchronise reliably: stop here.
                    out.errors.push((frame, e));
                    return buf.len();
                }
            }
            frame += 1;
        }
        pos
    }

    fn decode_hdlc(&mut self, keys: &mut KeyTable, buf: &[u8], first_frame: u32, out: &mut PushBatch) -> usize {
        let mut d = StreamDecoder::new(StreamConfig {
            framing: Framing::Hdlc,
            max_wrapper_apdu: self.max_apdu,
            max_hdlc_apdu: self.max_apdu,
        });
        d.receive(buf);
        let mut frame = first_frame;
        while let Some(ev) = d.next_event() {
            match ev {
                Event::Frame(f) => {
                    if let (Some(apdu), Transport::Hdlc { source, .. }) = (&f.apdu, &f.transport) {
                        self.decode_apdu(keys, apdu, frame, None, address_u32(source), out);
                    }
                }
                Event::Error { error, .. } => out.errors.push((frame, error)),
            }
            frame += 1;
        }
        buf.len() - d.pending()
    }

    /// Decodes one APDU (plain or ciphered) into `out`. `sender` is the system title for
    /// service-specific ciphered APDUs, which do not carry one.
    pub fn decode_apdu(
        &mut self,
        keys: &mut KeyTable,
        apdu: &[u8],
        frame: u32,
        sender: Option<&SystemTitle>,
        source: u32,
        out: &mut PushBatch,
    ) {
        if let Err(e) = self.try_decode_apdu(keys, apdu, frame, sender, source, out) {
            out.errors.push((frame, e));
        }
    }

    fn try_decode_apdu(
        &mut self,
        keys: &mut KeyTable,
        apdu: &[u8],
        frame: u32,
        sender: Option<&SystemTitle>,
        source: u32,
        out: &mut PushBatch,
    ) -> Result<()> {
        let Some(&t) = apdu.first() else {
            return Err(Error::invalid("APDU", 0, "empty"));
        };
        if !CipheredKind::is_ciphered_tag(t) {
            if !decode_plain(apdu, frame, 0, 0, 0, source, out)? {
                out.others.push((frame, 0, apdu.to_vec()));
            }
            return Ok(());
        }
        // Parse the envelope by borrowing, decrypt into the scratch buffer.
        let env = Envelope::parse(apdu)?;
        let kind = env.kind;
        self.scratch.clear();
        self.scratch.extend_from_slice(env.ciphertext);
        let (st, sc, ic) = keys.decipher_in_place(
            kind,
            env.system_title.map(|t| &t[..]),
            env.security_control,
            env.invocation_counter,
            &mut self.scratch,
            env.tag,
            sender,
            self.policy,
        )?;
        if let Some(want) = kind.plaintext_tag() {
            if self.scratch.first() != Some(&want) {
                return Err(Error::invalid(
                    "deciphered APDU",
                    0,
                    format!("{} does not contain the APDU its tag names", kind.name()),
                ));
            }
        }
        if !decode_plain(&self.scratch, frame, title_u64(&st), ic, sc.0, source, out)? {
            out.others.push((frame, title_u64(&st), self.scratch.clone()));
        }
        Ok(())
    }
}

/// The push-level fields of one record.
struct PushHeader {
    frame: u32,
    kind: u8,
    st: u64,
    ic: u32,
    sc: u8,
    invoke: u32,
    time: i64,
    source: u32,
}

/// Flattens a plain DataNotification or GET-Response-Normal with data; false for any
/// other APDU (left for the general decoder).
fn decode_plain(apdu: &[u8], frame: u32, st: u64, ic: u32, sc: u8, source: u32, out: &mut PushBatch) -> Result<bool> {
    let mut h = PushHeader { frame, kind: KIND_NOTIFICATION, st, ic, sc, invoke: 0, time: i64::MIN, source };
    match apdu {
        [apdu_tag::DATA_NOTIFICATION, ..] => {
            let mut r = Reader::new(apdu);
            let (invoke, time) = notification_header(&mut r).map_err(|e| e.truncated_at("DataNotification", 0))?;
            h.invoke = invoke & 0x00FF_FFFF;
            h.time = time;
            flatten_body(&mut r, h, out, "DataNotification")?;
            Ok(true)
        }
        // get-response-normal (choice 1), invoke id, Get-Data-Result choice data (0).
        [apdu_tag::GET_RESPONSE, 1, invoke, 0, ..] => {
            h.kind = KIND_GET_RESPONSE;
            h.invoke = *invoke as u32;
            flatten_body(&mut Reader::with_base(&apdu[4..], 4), h, out, "GET-Response")?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Tag, long-invoke-id and date-time of a DataNotification.
fn notification_header(r: &mut Reader<'_>) -> Result<(u32, i64)> {
    r.u8("APDU tag")?;
    let invoke = r.u32("long-invoke-id-and-priority")?;
    let at = r.offset();
    let dt = r.axdr_bytes("date-time")?;
    let time = match dt.len() {
        0 => i64::MIN,
        12 => DateTime::from_bytes(dt.try_into().expect("length checked"))
            .to_unix(DeviationSign::Standard, None)
            .unwrap_or(i64::MIN),
        n => return Err(Error::invalid("date-time", at, format!("{n} bytes (empty or 12)"))),
    };
    Ok((invoke, time))
}

/// Walks one Data value (the body) into value rows, then records the push; all or
/// nothing.
fn flatten_body(r: &mut Reader<'_>, h: PushHeader, out: &mut PushBatch, what: &'static str) -> Result<()> {
    let push = out.push_frame.len() as u32;
    let mark = out.mark();
    let mut leaves = 0usize;
    let walked = walk(r, 0, push, &mut leaves, out).and_then(|_| r.finish(what));
    if let Err(e) = walked {
        out.rollback(mark);
        return Err(e.truncated_at(what, 0));
    }
    out.push_frame.push(h.frame);
    out.push_kind.push(h.kind);
    out.push_system_title.push(h.st);
    out.push_invocation_counter.push(h.ic);
    out.push_security_control.push(h.sc);
    out.push_invoke_id.push(h.invoke);
    out.push_time.push(h.time);
    out.push_source.push(h.source);
    out.push_first_value.push(mark.0 as u32);
    Ok(())
}

/// Flattens one A-XDR value from `r` into the value columns of `out` as leaves of push
/// number `push` (no push-level row is added). Used by sessions that inspect the leaves
/// before deciding what rows they make.
pub fn flatten_value(r: &mut Reader<'_>, push: u32, out: &mut PushBatch) -> Result<usize> {
    let mut leaves = 0usize;
    walk(r, 0, push, &mut leaves, out)?;
    Ok(leaves)
}

/// Walks one A-XDR value, appending its leaves.
fn walk(r: &mut Reader<'_>, depth: usize, push: u32, leaves: &mut usize, out: &mut PushBatch) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(r.invalid("Data", format!("nested deeper than {MAX_DEPTH}")));
    }
    let t = r.peek().ok_or(Error::Incomplete { what: "Data tag", needed: 1 })?;
    if t == tag::COMPACT_ARRAY {
        // Rare in pushes: decode the general way, then flatten.
        let d = Data::decode(r)?;
        return flatten(&d, push, leaves, out);
    }
    r.u8("Data tag")?;
    let i = *leaves;
    let mut leaf = |out: &mut PushBatch, v: f64, blob: &[u8]| -> Result<()> {
        *leaves += 1;
        out.leaf(push, i, t, v, blob)
    };
    match t {
        tag::ARRAY | tag::STRUCTURE => {
            let n = r.axdr_length("Data length")?;
            if n > r.remaining() {
                return Err(Error::Incomplete { what: "Data", needed: n - r.remaining() });
            }
            for _ in 0..n {
                walk(r, depth + 1, push, leaves, out)?;
            }
            Ok(())
        }
        tag::NULL_DATA | tag::DONT_CARE => leaf(out, f64::NAN, &[]),
        tag::BOOLEAN | tag::UNSIGNED | tag::ENUM | tag::BCD | tag::DELTA_UNSIGNED => {
            let v = r.u8("Data")?;
            leaf(out, if t == tag::BOOLEAN { (v != 0) as u8 as f64 } else { v as f64 }, &[])
        }
        tag::INTEGER | tag::DELTA_INTEGER => leaf(out, r.i8("integer")? as f64, &[]),
        tag::LONG | tag::DELTA_LONG => leaf(out, r.i16("long")? as f64, &[]),
        tag::LONG_UNSIGNED | tag::DELTA_LONG_UNSIGNED => leaf(out, r.u16("long-unsigned")? as f64, &[]),
        tag::DOUBLE_LONG | tag::DELTA_DOUBLE_LONG => leaf(out, r.i32("double-long")? as f64, &[]),
        tag::DOUBLE_LONG_UNSIGNED | tag::DELTA_DOUBLE_LONG_UNSIGNED => {
            leaf(out, r.u32("double-long-unsigned")? as f64, &[])
        }
        tag::LONG64 => leaf(out, r.i64("long64")? as f64, &[]),
        tag::LONG64_UNSIGNED => leaf(out, r.u64("long64-unsigned")? as f64, &[]),
        tag::FLOAT32 => leaf(out, f32::from_be_bytes(r.array("float32")?) as f64, &[]),
        tag::FLOAT64 => leaf(out, f64::from_be_bytes(r.array("float64")?), &[]),
        tag::OCTET_STRING | tag::VISIBLE_STRING | tag::UTF8_STRING => {
            let b = r.axdr_bytes("string")?;
            leaf(out, f64::NAN, b)
        }
        tag::BIT_STRING => {
            let bits = r.axdr_length("bit-string length")?;
            let b = r.bytes(bits.div_ceil(8), "bit-string")?;
            leaf(out, f64::NAN, b)
        }
        tag::DATE_TIME => {
            let b: [u8; 12] = r.array("date-time")?;
            let v = DateTime::from_bytes(&b).to_unix(DeviationSign::Standard, None).map_or(f64::NAN, |s| s as f64);
            leaf(out, v, &b)
        }
        tag::DATE => {
            let b: [u8; 5] = r.array("date")?;
            leaf(out, f64::NAN, &b)
        }
        tag::TIME => {
            let b: [u8; 4] = r.array("time")?;
            leaf(out, f64::NAN, &b)
        }
        7 | 8 => Err(r.invalid_back(1, "Data", format!("data type {t} is reserved"))),
        t => Err(r.invalid_back(1, "Data", format!("unknown data type {t}"))),
    }
}

/// Leaves of an already decoded value, in the same order and form as [`walk`].
fn flatten(d: &Data, push: u32, leaves: &mut usize, out: &mut PushBatch) -> Result<()> {
    let mut leaf = |out: &mut PushBatch, v: f64, blob: &[u8]| -> Result<()> {
        let i = *leaves;
        *leaves += 1;
        out.leaf(push, i, d.tag(), v, blob)
    };
    match d {
        Data::Array(items) | Data::Structure(items) => {
            for x in items {
                flatten(x, push, leaves, out)?;
            }
            Ok(())
        }
        Data::CompactArray { elements, .. } => {
            for x in elements {
                flatten(x, push, leaves, out)?;
            }
            Ok(())
        }
        Data::OctetString(b) | Data::VisibleString(b) | Data::Utf8String(b) => leaf(out, f64::NAN, b),
        Data::BitString(bs) => leaf(out, f64::NAN, &bs.bytes),
        Data::DateTime(dt) => {
            let v = dt.to_unix(DeviationSign::Standard, None).map_or(f64::NAN, |s| s as f64);
            leaf(out, v, &dt.to_bytes())
        }
        Data::Date(x) => leaf(out, f64::NAN, &x.to_bytes()),
        Data::Time(x) => leaf(out, f64::NAN, &x.to_bytes()),
        other => leaf(out, other.as_f64().unwrap_or(f64::NAN), &[]),
    }
}

/// Ciphered envelope of a plain APDU, as a meter would send it (for simulators and
/// benchmarks): general-glo-ciphering with the meter's own system title.
pub fn encipher_push(
    keys: &crate::security::Keys,
    system_title: &SystemTitle,
    ic: u32,
    sc: SecurityControl,
    apdu: &[u8],
) -> Result<Vec<u8>> {
    let c: Ciphered = crate::security::encipher_with(
        keys,
        CipheredKind(apdu_tag::GENERAL_GLO_CIPHERING),
        sc,
        system_title,
        ic,
        apdu,
    )?;
    crate::apdu::Apdu::Ciphered(c).to_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apdu::{Apdu, DataNotification, LongInvokeIdAndPriority};
    use crate::security::Keys;

    fn notification(values: Vec<Data>) -> Vec<u8> {
        Apdu::DataNotification(DataNotification {
            long_invoke_id: LongInvokeIdAndPriority(7),
            date_time: Some(DateTime::from_unix(1_700_000_000, -300, 0)),
            body: Data::Structure(values),
        })
        .to_bytes()
        .unwrap()
    }

    fn sample() -> Vec<Data> {
        vec![
            Data::OctetString(b"LGZ0001".to_vec()),
            Data::DateTime(DateTime::from_unix(1_700_000_900, -300, 0)),
            Data::DoubleLongUnsigned(123_456),
            Data::Long(-5),
            Data::Structure(vec![Data::Unsigned(1), Data::Enum(30)]),
        ]
    }

    #[test]
    fn plain_and_encrypted_pushes_flatten_identically() {
        let keys = Keys::new(&[1; 16], &[2; 16]);
        let st = *b"ABC00001";
        let plain = notification(sample());
        let enc = encipher_push(&keys, &st, 10, SecurityControl(0x30), &plain).unwrap();
        let buf = [wrapper::encode(1, 1, &plain).unwrap(), wrapper::encode(1, 1, &enc).unwrap()].concat();
        let mut table = KeyTable::new();
        table.insert(st, keys);
        let mut out = PushBatch::default();
        let used = PushDecoder::default().decode_frames(&mut table, &buf, Framing::Wrapper, 0, &mut out);
        assert_eq!(used, buf.len());
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        assert_eq!(out.pushes(), 2);
        assert_eq!(out.values(), 12);
        assert_eq!(out.push_system_title, [0, u64::from_be_bytes(st)]);
        assert_eq!(out.push_invocation_counter, [0, 10]);
        assert_eq!(out.push_time, [1_700_000_000, 1_700_000_000]);
        assert_eq!(&out.value[2..6], &[123_456.0, -5.0, 1.0, 30.0]);
        assert_eq!(out.value[1], 1_700_000_900.0);
        assert_eq!(&out.value_index[..6], &[0, 1, 2, 3, 4, 5]);
        let (s, l) = (out.value_blob_start[0] as usize, out.value_blob_len[0] as usize);
        assert_eq!(&out.blobs[s..s + l], b"LGZ0001");
        // Same values from both pushes.
        assert_eq!(out.value[2..6], out.value[8..12]);
    }

    #[test]
    fn replay_wrong_key_and_garbage_are_per_frame_errors() {
        let keys = Keys::new(&[1; 16], &[2; 16]);
        let st = *b"ABC00001";
        let plain = notification(sample());
        let enc = encipher_push(&keys, &st, 10, SecurityControl(0x30), &plain).unwrap();
        let forged = encipher_push(&Keys::new(&[9; 16], &[2; 16]), &st, 11, SecurityControl(0x30), &plain).unwrap();
        let broken = notification(sample())[..20].to_vec();
        let buf = [
            wrapper::encode(1, 1, &enc).unwrap(),
            wrapper::encode(1, 1, &enc).unwrap(),
            wrapper::encode(1, 1, &forged).unwrap(),
            wrapper::encode(1, 1, &broken).unwrap(),
            // A GET-Response with a data-access-result (object-undefined): not data.
            wrapper::encode(1, 1, &[0xC4, 1, 0xC1, 1, 4]).unwrap(),
        ]
        .concat();
        let mut table = KeyTable::new();
        table.insert(st, keys);
        let mut out = PushBatch::default();
        PushDecoder::default().decode_frames(&mut table, &buf, Framing::Wrapper, 0, &mut out);
        assert_eq!(out.pushes(), 1);
        let kinds: Vec<_> = out.errors.iter().map(|(f, e)| (*f, e.kind())).collect();
        assert_eq!(kinds, [(1, "replayed-invocation-counter"), (2, "authentication-failed"), (3, "malformed")]);
        // The broken push left no partial values behind.
        assert_eq!(out.values(), 6);
        // The GET-Response went to the slow path untouched.
        assert_eq!(out.others, vec![(4, 0, vec![0xC4, 1, 0xC1, 1, 4])]);
        // The forged frame did not advance the counter.
        assert_eq!(table.counters(&st).unwrap().0, Some(10));
    }

    #[test]
    fn get_response_with_a_load_profile_is_flattened() {
        let rows: Vec<Data> = (0..96u32)
            .map(|i| {
                Data::Structure(vec![
                    Data::OctetString(DateTime::from_unix(1_700_000_000 + 900 * i as i64, -300, 0).to_bytes().to_vec()),
                    Data::Unsigned(0),
                    Data::DoubleLongUnsigned(1000 + i),
                    Data::DoubleLongUnsigned(i),
                ])
            })
            .collect();
        let resp = Apdu::GetResponse(crate::apdu::GetResponse::Normal {
            invoke_id: crate::apdu::InvokeIdAndPriority(0xC1),
            result: crate::apdu::GetDataResult::Data(Data::Array(rows)),
        })
        .to_bytes()
        .unwrap();
        let mut out = PushBatch::default();
        PushDecoder::default().decode_apdu(&mut KeyTable::new(), &resp, 0, None, 0, &mut out);
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        assert_eq!(out.push_kind, [KIND_GET_RESPONSE]);
        assert_eq!(out.push_invoke_id, [0xC1]);
        assert_eq!(out.values(), 96 * 4);
        assert_eq!(out.value[2], 1000.0);
        assert_eq!(out.value[4 * 95 + 3], 95.0);
    }

    #[test]
    fn partial_trailing_frame_is_left_for_later() {
        let f = wrapper::encode(1, 1, &notification(sample())).unwrap();
        let buf = [f.clone(), f[..10].to_vec()].concat();
        let mut out = PushBatch::default();
        let used = PushDecoder::default().decode_frames(&mut KeyTable::new(), &buf, Framing::Wrapper, 0, &mut out);
        assert_eq!(used, f.len());
        assert_eq!(out.pushes(), 1);
    }
}
