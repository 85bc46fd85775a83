//! Row batches for ClickHouse, built in Rust as RowBinary.
//!
//! Sessions append readings and events here as they decode them; the worker drains the
//! sink once per event-loop iteration into one spool record per table. The column order
//! of each table is fixed below and matches the store's migrations (a Python test
//! checks both against each other).
//!
//! RowBinary: numbers little-endian, String = LEB128 length + bytes, DateTime = u32
//! seconds, Enum8 = i8.

use crate::security::SystemTitle;

/// `readings` columns in RowBinary order.
pub const READINGS_COLUMNS: &[&str] =
    &["meter", "obis", "ts", "value", "unit", "status", "source", "quality", "received_at"];

/// `events` columns in RowBinary order.
pub const EVENTS_COLUMNS: &[&str] =
    &["meter", "ts", "code", "name", "category", "source", "peer", "detail", "received_at"];

/// `readings.source` values (Enum8).
pub const SOURCE_PUSH: i8 = 1;
pub const SOURCE_POLL: i8 = 2;
/// `readings.quality` values (Enum8).
pub const QUALITY_MEASURED: i8 = 1;
/// `readings.status` bit set when the head-end, not the meter, gave the time (a bit the
/// DLMS clock status leaves reserved).
pub const STATUS_TIME_FROM_HEADEND: u8 = 0x40;

/// A RowBinary String: LEB128 length, then the bytes.
pub(crate) fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    let mut n = s.len();
    loop {
        let b = (n & 0x7F) as u8;
        n >>= 7;
        if n == 0 {
            out.push(b);
            break;
        }
        out.push(b | 0x80);
    }
    out.extend_from_slice(s);
}

fn put_time(out: &mut Vec<u8>, unix: i64) {
    // DateTime holds 1970..2106; clamp rather than wrap a meter's odd clock.
    out.extend_from_slice(&(unix.clamp(0, u32::MAX as i64) as u32).to_le_bytes());
}

/// A reading ready for the store.
pub struct Reading<'a> {
    pub meter: &'a str,
    pub obis: u64,
    pub ts: i64,
    pub value: f64,
    pub unit: &'a str,
    pub status: u8,
    pub source: i8,
    pub quality: i8,
    pub received_at: i64,
}

/// An event ready for the store.
pub struct EventRow<'a> {
    pub meter: &'a str,
    pub ts: i64,
    pub code: u16,
    pub name: &'a str,
    pub category: &'a str,
    pub source: &'a str,
    pub peer: &'a str,
    pub detail: &'a str,
    pub received_at: i64,
}

/// Counts of what went into the sink, for status and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SinkStats {
    pub pushes: u64,
    pub readings: u64,
    pub events: u64,
    /// (reason, count) of rejected input.
    pub rejects: Vec<(&'static str, u64)>,
}

/// Accumulates rows of several tables until drained. Also holds the worker's scratch
/// space for decoding, so idle sessions carry none of it.
#[derive(Default)]
pub struct RowSink {
    /// Leaves of the push being decoded.
    pub(crate) leaves: crate::push::PushBatch,
    /// Plaintext of the APDU being deciphered.
    pub(crate) plain: Vec<u8>,
    readings: Vec<u8>,
    readings_rows: u64,
    events: Vec<u8>,
    events_rows: u64,
    /// Meters whose invocation counters moved since the last drain.
    // Titles of meters whose APDUs verified: fed per push, filled by no one else.
    touched: foldhash::HashSet<SystemTitle>,
    pub stats: SinkStats,
}

impl RowSink {
    pub fn new() -> Self {
        RowSink::default()
    }

    pub fn reading(&mut self, r: &Reading<'_>) {
        let out = &mut self.readings;
        put_string(out, r.meter.as_bytes());
        out.extend_from_slice(&r.obis.to_le_bytes());
        put_time(out, r.ts);
        out.extend_from_slice(&r.value.to_le_bytes());
        put_string(out, r.unit.as_bytes());
        out.push(r.status);
        out.push(r.source as u8);
        out.push(r.quality as u8);
        put_time(out, r.received_at);
        self.readings_rows += 1;
        self.stats.readings += 1;
    }

    pub fn event(&mut self, e: &EventRow<'_>) {
        let out = &mut self.events;
        put_string(out, e.meter.as_bytes());
        put_time(out, e.ts);
        out.extend_from_slice(&e.code.to_le_bytes());
        put_string(out, e.name.as_bytes());
        put_string(out, e.category.as_bytes());
        put_string(out, e.source.as_bytes());
        put_string(out, e.peer.as_bytes());
        put_string(out, e.detail.as_bytes());
        put_time(out, e.received_at);
        self.events_rows += 1;
        self.stats.events += 1;
    }

    pub fn count_push(&mut self) {
        self.stats.pushes += 1;
    }

    pub fn count_reject(&mut self, reason: &'static str) {
        match self.stats.rejects.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, n)) => *n += 1,
            None => self.stats.rejects.push((reason, 1)),
        }
    }

    pub fn touch(&mut self, st: SystemTitle) {
        self.touched.insert(st);
    }

    pub fn readings_rows(&self) -> u64 {
        self.readings_rows
    }

    pub fn events_rows(&self) -> u64 {
        self.events_rows
    }

    pub fn is_empty(&self) -> bool {
        self.readings_rows == 0 && self.events_rows == 0 && self.touched.is_empty()
    }

    /// Takes the accumulated rows: (readings RowBinary, rows), (events RowBinary, rows),
    /// and the meters whose counters moved.
    #[allow(clippy::type_complexity)]
    pub fn drain(&mut self) -> ((Vec<u8>, u64), (Vec<u8>, u64), Vec<SystemTitle>) {
        let r = (std::mem::take(&mut self.readings), std::mem::replace(&mut self.readings_rows, 0));
        let e = (std::mem::take(&mut self.events), std::mem::replace(&mut self.events_rows, 0));
        let t = self.touched.drain().collect();
        (r, e, t)
    }

    /// Takes the counters since the last call.
    pub fn take_stats(&mut self) -> SinkStats {
        std::mem::take(&mut self.stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rowbinary_layout() {
        let mut s = RowSink::new();
        s.reading(&Reading {
            meter: "M1",
            obis: 0x0100_0108_00FF,
            ts: 1_700_000_000,
            value: 1.5,
            unit: "Wh",
            status: 0,
            source: SOURCE_PUSH,
            quality: QUALITY_MEASURED,
            received_at: 1_700_000_001,
        });
        let ((r, n), (_, m), _) = s.drain();
        assert_eq!((n, m), (1, 0));
        let mut want = vec![2, b'M', b'1'];
        want.extend_from_slice(&0x0100_0108_00FFu64.to_le_bytes());
        want.extend_from_slice(&1_700_000_000u32.to_le_bytes());
        want.extend_from_slice(&1.5f64.to_le_bytes());
        want.extend_from_slice(&[2, b'W', b'h', 0, 1, 1]);
        want.extend_from_slice(&1_700_000_001u32.to_le_bytes());
        assert_eq!(r, want);
        assert!(s.is_empty());
    }

    #[test]
    fn leb128_lengths() {
        let mut out = Vec::new();
        put_string(&mut out, &[b'x'; 300]);
        assert_eq!(&out[..2], &[0xAC, 0x02]);
        assert_eq!(out.len(), 302);
    }
}
