//! Interval consumption from ClickHouse readings to ClickHouse rows, in one pass.
//!
//! Input: RowBinary or Native blocks of `meter String, obis UInt64, ts Int64, value
//! Float64`, ordered by meter, obis, ts (as `ORDER BY meter, obis, ts` returns it;
//! ClickHouse writes Native about half again as fast); or Native blocks of a series a
//! row, `meter, obis, ts Array(UInt32), value Array(Float64)`, ordered by meter, obis
//! (`groupArray` ... `GROUP BY meter, obis ORDER BY meter, obis`: a third of the bytes). Output: RowBinary for the
//! `consumption` table (`meter, obis, interval_start, value, unit, quality, flags,
//! computed_at`). In between, [`crate::vee::derive`] over the whole batch; only the
//! intervals in `[keep_from, keep_to)` are written (the samples around the window are
//! there to bound its first and last intervals and to estimate gaps across its edges).

use std::collections::{HashMap, HashSet};

use crate::error::{Error, Result};
use crate::reader::Reader;
use crate::rows::put_string;
use crate::vee::{derive, Intervals, SeriesParams, VeeConfig, VeeStats};

/// A register that has consumption: its OBIS code (packed), the factor from the
/// register's unit to the consumption's (Wh -> kWh: 0.001), the consumption's unit,
/// and the most a consumer's connection carries, in register units per hour.
#[derive(Clone, Debug)]
pub struct Channel {
    pub obis: u64,
    pub scale: f64,
    pub unit: String,
    pub max_rate: f64,
}

/// One derivation over a batch of readings.
#[derive(Clone, Debug)]
pub struct Job {
    pub vee: VeeConfig,
    pub channels: Vec<Channel>,
    /// Meters with no rate limit (balance meters carry a feeder's load).
    pub unlimited: HashSet<Vec<u8>>,
    /// Typical consumption by local hour of day, per (meter, OBIS): gaps are spread by
    /// it (else by time).
    pub profiles: HashMap<(Vec<u8>, u64), [f64; 24]>,
    /// Registers that report the supply switch (disconnector output, gas valve): 0 off,
    /// else on. Off periods mark the meter's intervals; consumption in them is flagged.
    pub states: Vec<u64>,
    pub keep_from: i64,
    pub keep_to: i64,
    /// Version of the rows written (Unix milliseconds): the latest computation wins.
    pub computed_at_ms: i64,
    /// Write a Native block rather than RowBinary rows.
    pub native: bool,
    /// The readings come as Native blocks rather than RowBinary rows.
    pub native_input: bool,
}

/// What a job did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JobStats {
    pub readings: u64,
    pub series: u64,
    pub rows: u64,
    pub vee: VeeStats,
}

const MAX_SERIAL: usize = 256;

/// Runs `job` over readings (RowBinary, or Native blocks with `job.native_input`);
/// returns consumption rows.
pub fn run(job: &Job, data: &[u8]) -> Result<(Vec<u8>, JobStats)> {
    run_summing(job, &Slice::parse(data, job.native_input)?, None)
}

/// Balance sums: per network node, side (0 the consumers below it, 1 its balance
/// meters) and hour of a window, the consumption of the flow registers and how many of
/// its intervals were measured. They are what `balances` needs, gathered while the
/// consumption is derived, so the rows just written need not be read back.
#[derive(Clone, Debug, Default)]
pub struct NodeSums {
    pub start: i64,
    pub hours: usize,
    /// Registers that count (electricity import, gas volume, corrected gas volume).
    pub obis: Vec<u64>,
    /// (fallback, preferred) register pairs: a meter's fallback series counts only when
    /// it has no series of the preferred register (gas: the volume at metering
    /// conditions, unless the meter gives the temperature- and pressure-corrected one).
    pub prefer: Vec<(u64, u64)>,
    nodes: HashMap<Vec<u8>, u32>,
    /// `[(node * 2 + side) * hours + hour]`.
    pub value: Vec<f64>,
    pub measured: Vec<u32>,
    /// Measured intervals (meter-hours) that came from a preferred register.
    pub preferred: Vec<u32>,
    /// Series of flow registers whose meter has no network node here.
    pub unplaced: u64,
}

/// Most cells (nodes x 2 x hours) one `NodeSums` holds: 2 GiB of sums.
const MAX_CELLS: usize = 1 << 28;

impl NodeSums {
    pub fn new(nodes: Vec<Vec<u8>>, start: i64, hours: usize, obis: Vec<u64>, prefer: Vec<(u64, u64)>) -> Result<Self> {
        if let Some(&(f, p)) = prefer.iter().find(|(f, p)| !obis.contains(f) || !obis.contains(p)) {
            return Err(Error::invalid(
                "node sums",
                0,
                format!("preferring {p:#x} to {f:#x}: both must be among the registers that count"),
            ));
        }
        let cells = nodes.len().checked_mul(2 * hours).filter(|&c| c <= MAX_CELLS);
        let Some(cells) = cells else {
            return Err(Error::invalid(
                "node sums",
                0,
                format!("{} nodes x {hours} hours is too many: sum a shorter window", nodes.len()),
            ));
        };
        let n = nodes.len();
        let index: HashMap<Vec<u8>, u32> = nodes.into_iter().zip(0..).collect();
        if index.len() != n {
            return Err(Error::invalid("node sums", 0, "a node is named twice"));
        }
        Ok(NodeSums {
            start,
            hours,
            obis,
            prefer,
            nodes: index,
            value: vec![0.0; cells],
            measured: vec![0; cells],
            preferred: vec![0; cells],
            unplaced: 0,
        })
    }

    /// The cell group (node * 2 + side) of a meter's flow series, if it has one.
    fn group(&mut self, placed: &MeterNodes<'_>, meter: &[u8], obis: u64) -> Option<u32> {
        if !self.obis.contains(&obis) {
            return None;
        }
        let g =
            placed.0.get(meter).and_then(|&(node, balance)| self.nodes.get(node).map(|&i| i * 2 + u32::from(balance)));
        if g.is_none() {
            self.unplaced += 1;
        }
        g
    }

    fn add(&mut self, group: u32, start: i64, value: f64, measured: bool, preferred: bool) {
        let h = (start - self.start).div_euclid(3600);
        if (0..self.hours as i64).contains(&h) {
            let cell = group as usize * self.hours + h as usize;
            self.value[cell] += value;
            self.measured[cell] += u32::from(measured);
            self.preferred[cell] += u32::from(preferred && measured);
        }
    }

    fn is_preferred(&self, obis: u64) -> bool {
        self.prefer.iter().any(|&(_, p)| p == obis)
    }

    /// Drops (sets to `none`) the groups of fallback series whose meter has a series of
    /// the preferred register. `series`: each series' (meter, obis), meters contiguous.
    fn apply_preferences(&self, series: &[(&[u8], u64)], groups: &mut [u32], none: u32) {
        if self.prefer.is_empty() {
            return;
        }
        let mut s = 0;
        while s < series.len() {
            let meter = series[s].0;
            let e = s + series[s..].iter().take_while(|x| x.0 == meter).count();
            for &(fallback, preferred) in &self.prefer {
                if series[s..e].iter().zip(&groups[s..e]).any(|(x, &g)| x.1 == preferred && g != none) {
                    for k in s..e {
                        if series[k].1 == fallback {
                            groups[k] = none;
                        }
                    }
                }
            }
            s = e;
        }
    }
}

/// Where meters are: serial -> (node id, is a balance meter), from a Native block of
/// `serial String, node_id String, balance UInt8`.
pub struct MeterNodes<'a>(HashMap<&'a [u8], (&'a [u8], bool)>);

impl<'a> MeterNodes<'a> {
    pub fn read(data: &'a [u8]) -> Result<Self> {
        const COLS: [(&str, &str); 3] = [("serial", "String"), ("node_id", "String"), ("balance", "UInt8")];
        let mut r = Reader::new(data);
        let mut map = HashMap::new();
        while !r.is_empty() {
            let at = r.position();
            let columns = leb128(&mut r)?;
            let n = leb128(&mut r)?;
            if columns != COLS.len() {
                return Err(Error::invalid("meter nodes", at, format!("a Native block of {columns} columns, not 3")));
            }
            let mut cols: [Vec<&[u8]>; 2] = [Vec::with_capacity(n), Vec::with_capacity(n)];
            for (c, (name, ty)) in COLS.into_iter().enumerate() {
                let col_at = r.position();
                let len = leb128(&mut r)?;
                r.bytes(len, "column name")?;
                let len = leb128(&mut r)?;
                let got = r.bytes(len, "column type")?;
                if got != ty.as_bytes() {
                    let got = String::from_utf8_lossy(got);
                    return Err(Error::invalid("meter nodes", col_at, format!("column {name} is {got}, not {ty}")));
                }
                if c < 2 {
                    for _ in 0..n {
                        let len = leb128(&mut r)?;
                        cols[c].push(r.bytes(len, name)?);
                    }
                } else {
                    let flags = r.bytes(n, name)?;
                    for k in 0..n {
                        map.insert(cols[0][k], (cols[1][k], flags[k] != 0));
                    }
                }
            }
        }
        Ok(MeterNodes(map))
    }
}

/// A slice of meters' readings, parsed once: each series (a meter's register) with its
/// samples, in the input's order (meter, obis; a series' samples by time). It answers
/// what the balance pass asks of a slice before deriving it (which meters start after
/// the window's start, which have gaps an estimate spreads), takes in the samples
/// before a narrow window, and is what [`run_summing`] derives: the bytes are read once.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Slice {
    /// The serials one after another; a series names its meter by range.
    meters: Vec<u8>,
    series: Vec<Series>,
    ts: Vec<i64>,
    value: Vec<f64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Series {
    meter: (usize, usize),
    obis: u64,
    first: usize,
    end: usize,
}

impl Slice {
    /// The readings of `data` (RowBinary rows, or Native blocks with `native_input`: a
    /// reading a row or a series a row), ordered by meter and obis.
    pub fn parse(data: &[u8], native_input: bool) -> Result<Slice> {
        let mut rows = Rows::new(data, native_input);
        let mut s = Slice::default();
        let mut last: Option<(&[u8], u64)> = None;
        while let Some(Reading { at, meter, obis, t, v, .. }) = rows.next()? {
            if s.ts.is_empty() {
                // Room for every reading up front (a row of one reading takes at least
                // 26 bytes of the input, serials are about 10; in arrays a reading
                // takes 12): regrowing columns of millions costs more.
                let cap = data.len() / if rows.block.arrays { 12 } else { 34 };
                s.ts.reserve(cap);
                s.value.reserve(cap);
            }
            if last != Some((meter, obis)) {
                if last.is_some_and(|previous| previous > (meter, obis)) {
                    return Err(Error::invalid("readings", at, "rows not ordered by meter, obis, ts"));
                }
                s.open(meter, obis);
                last = Some((meter, obis));
            }
            s.ts.push(t);
            s.value.push(v);
        }
        s.close();
        Ok(s)
    }

    /// Starts a series (its meter's bytes shared with the series before when the same).
    fn open(&mut self, meter: &[u8], obis: u64) {
        self.close();
        let range = match self.series.last() {
            Some(p) if &self.meters[p.meter.0..p.meter.1] == meter => p.meter,
            _ => {
                let a = self.meters.len();
                self.meters.extend_from_slice(meter);
                (a, self.meters.len())
            }
        };
        let at = self.ts.len();
        self.series.push(Series { meter: range, obis, first: at, end: at });
    }

    fn close(&mut self) {
        let end = self.ts.len();
        if let Some(p) = self.series.last_mut() {
            p.end = end;
        }
    }

    fn meter(&self, s: &Series) -> &[u8] {
        &self.meters[s.meter.0..s.meter.1]
    }

    /// Readings in the slice.
    pub fn readings(&self) -> usize {
        self.ts.len()
    }

    /// Series (a meter's register) in the slice.
    pub fn series(&self) -> usize {
        self.series.len()
    }

    /// The meters (each once, in order) with a series of `channels` that `pick` picks
    /// by its times.
    fn meters_where(&self, channels: &[u64], pick: impl Fn(&[i64]) -> bool) -> Vec<Vec<u8>> {
        let mut out: Vec<Vec<u8>> = Vec::new();
        for s in &self.series {
            let meter = self.meter(s);
            if channels.contains(&s.obis)
                && out.last().map(Vec::as_slice) != Some(meter)
                && pick(&self.ts[s.first..s.end])
            {
                out.push(meter.to_vec());
            }
        }
        out
    }

    /// Meters with a series of `channels` that has a gap (two samples further apart
    /// than `measured_gap` and at most `max_span`): the ones whose typical day may
    /// spread an estimate, so the caller fetches typical days for these alone.
    pub fn gappy_meters(&self, channels: &[u64], measured_gap: i64, max_span: i64) -> Vec<Vec<u8>> {
        self.meters_where(channels, |ts| ts.windows(2).any(|w| w[1] - w[0] > measured_gap && w[1] - w[0] <= max_span))
    }

    /// Meters with a series of `channels` whose first sample comes after `start`: the
    /// interval before it needs the sample before the window that was read.
    pub fn late_starters(&self, channels: &[u64], start: i64) -> Vec<Vec<u8>> {
        self.meters_where(channels, |ts| ts.first().is_some_and(|&t| t > start))
    }

    /// Meters with a series of `channels` whose last sample comes before `end`: the
    /// interval after it needs the sample after the window that was read.
    pub fn early_finishers(&self, channels: &[u64], end: i64) -> Vec<Vec<u8>> {
        self.meters_where(channels, |ts| ts.last().is_some_and(|&t| t < end))
    }

    /// Puts the readings of `earlier` (Native blocks ordered by meter, obis; either
    /// shape) in front of their series: the samples before a narrow window that bound
    /// its first intervals.
    pub fn add_earlier(&mut self, earlier: &[u8]) -> Result<()> {
        self.merge(earlier, true)
    }

    /// Puts the readings of `later` behind their series: the samples after a narrow
    /// window that bound its last intervals.
    pub fn add_later(&mut self, later: &[u8]) -> Result<()> {
        self.merge(later, false)
    }

    /// Merges the series of `other` into this slice's, `other`'s samples in front of a
    /// series' own (`before`) or behind them.
    fn merge(&mut self, other: &[u8], before: bool) -> Result<()> {
        let b = Slice::parse(other, true)?;
        if b.series.is_empty() {
            return Ok(());
        }
        let a = std::mem::take(self);
        let mut out = Slice::default();
        out.ts.reserve(a.ts.len() + b.ts.len());
        out.value.reserve(a.ts.len() + b.ts.len());
        let key = |s: &Slice, i: usize| (s.meter(&s.series[i]).to_vec(), s.series[i].obis);
        let (mut i, mut j) = (0, 0);
        while i < a.series.len() || j < b.series.len() {
            let take_b = j < b.series.len()
                && (i >= a.series.len() || {
                    let (kb, ka) = (key(&b, j), key(&a, i));
                    if before {
                        kb <= ka
                    } else {
                        kb < ka
                    }
                });
            let (from, k) = if take_b { (&b, j) } else { (&a, i) };
            let s = from.series[k];
            let meter = from.meter(&s);
            let same = out.series.last().is_some_and(|p| out.meter(p) == meter && p.obis == s.obis);
            if !same {
                out.open(meter, s.obis);
            }
            out.ts.extend_from_slice(&from.ts[s.first..s.end]);
            out.value.extend_from_slice(&from.value[s.first..s.end]);
            out.close();
            if take_b {
                j += 1;
            } else {
                i += 1;
            }
        }
        *self = out;
        Ok(())
    }
}

/// Runs `job` over a slice of readings, adding the flow registers' intervals in
/// `[keep_from, keep_to)` to `sums` by the meters' nodes when given.
pub fn run_summing(
    job: &Job,
    slice: &Slice,
    mut sums: Option<(&mut NodeSums, &MeterNodes<'_>)>,
) -> Result<(Vec<u8>, JobStats)> {
    let data = slice.meters.as_slice();
    let mut groups: Vec<u32> = Vec::new(); // per series: its cell group, or NONE
    const NONE: u32 = u32::MAX;
    let mut keys: Vec<(usize, usize, usize)> = Vec::new(); // meter start, meter end, channel
    let mut params: Vec<SeriesParams> = Vec::new();
    let n = slice.readings();
    let (mut series, mut ts, mut value) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    // Supply-off periods per meter, from its state register: from a 0 to the next
    // non-zero sample, or one measured gap past the last 0 when none follows.
    let mut off_by_meter: HashMap<&[u8], Vec<(i64, i64)>> = HashMap::new();
    let mut open: Option<(&[u8], i64, i64)> = None; // meter, since, last 0 seen
    let gap = job.vee.measured_gap;
    for sr in &slice.series {
        let (m0, m1) = sr.meter;
        let meter = &data[m0..m1];
        let obis = sr.obis;
        let samples = sr.first..sr.end;
        if job.states.contains(&obis) {
            if open.is_some_and(|o| o.0 != meter) {
                close_off(&mut open, &mut off_by_meter, gap);
            }
            for k in samples {
                let (t, v) = (slice.ts[k], slice.value[k]);
                match (&mut open, v == 0.0) {
                    (Some(o), true) => o.2 = t,
                    (None, true) => open = Some((meter, t, t)),
                    (Some(o), false) => {
                        off_by_meter.entry(o.0).or_default().push((o.1, t));
                        open = None;
                    }
                    (None, false) => {}
                }
            }
            continue;
        }
        let Some(ch) = job.channels.iter().position(|c| c.obis == obis) else {
            continue;
        };
        let c = &job.channels[ch];
        let limit = if job.unlimited.contains(meter) { 0.0 } else { c.max_rate };
        let profile = if job.profiles.is_empty() { None } else { job.profiles.get(&(meter.to_vec(), obis)).copied() };
        keys.push((m0, m1, ch));
        if let Some((sums, placed)) = sums.as_mut() {
            groups.push(sums.group(placed, meter, obis).unwrap_or(NONE));
        }
        // A switched-off meter may still show a trickle (its own electronics, rounding).
        let idle_rate = c.max_rate * 0.0005;
        params.push(SeriesParams { max_rate: limit, profile, idle_rate, ..SeriesParams::default() });
        let id = (keys.len() - 1) as u32;
        series.extend(std::iter::repeat_n(id, samples.len()));
        ts.extend_from_slice(&slice.ts[samples.clone()]);
        value.extend_from_slice(&slice.value[samples]);
    }
    close_off(&mut open, &mut off_by_meter, gap);
    let mut off = Vec::new();
    if !off_by_meter.is_empty() {
        for (k, &(m0, m1, _)) in keys.iter().enumerate() {
            if let Some(periods) = off_by_meter.get(&data[m0..m1]) {
                off.extend(periods.iter().map(|&(a, b)| (k as u32, a, b)));
            }
        }
    }
    let (iv, vee) = derive(&job.vee, &params, &series, &ts, &value, &off)?;
    let keep: Vec<usize> = (0..iv.len()).filter(|&k| (job.keep_from..job.keep_to).contains(&iv.start[k])).collect();
    if let Some((sums, _)) = sums {
        let ids: Vec<(&[u8], u64)> = keys.iter().map(|&(m0, m1, ch)| (&data[m0..m1], job.channels[ch].obis)).collect();
        sums.apply_preferences(&ids, &mut groups, NONE);
        let preferred: Vec<bool> = ids.iter().map(|&(_, o)| sums.is_preferred(o)).collect();
        for &k in &keep {
            let s = iv.series[k] as usize;
            if groups[s] != NONE {
                let scale = job.channels[keys[s].2].scale;
                let measured = iv.quality[k] == crate::vee::MEASURED;
                sums.add(groups[s], iv.start[k], iv.value[k] * scale, measured, preferred[s]);
            }
        }
    }
    let rows = keep.len() as u64;
    let out =
        if job.native { native_block(job, data, &keys, &iv, &keep) } else { row_binary(job, data, &keys, &iv, &keep) };
    let stats = JobStats { readings: n as u64, series: keys.len() as u64, rows, vee };
    Ok((out, stats))
}

/// One reading of the input: where its row starts (for errors), and its fields.
struct Reading<'a> {
    at: usize,
    meter: &'a [u8],
    obis: u64,
    t: i64,
    v: f64,
}

/// The readings of the input, RowBinary rows or Native blocks, in order.
struct Rows<'a> {
    data: &'a [u8],
    r: Reader<'a>,
    native: bool,
    block: Block<'a>,
}

/// The current Native block: its meters (position, length) and fixed-width columns.
/// A block has one reading a row (`ts Int64, value Float64`), or a series' readings a
/// row (`ts Array(UInt32), value Array(Float64)`, as `groupArray` gives them: a third
/// as many bytes for ClickHouse to write, since the serial is not repeated).
#[derive(Default)]
struct Block<'a> {
    at: usize,
    meters: Vec<(usize, usize)>,
    obis: &'a [u8],
    ts: &'a [u8],
    value: &'a [u8],
    /// Array rows: where each row's readings end (ClickHouse's offsets, UInt64).
    ends: &'a [u8],
    arrays: bool,
    /// The next row, the current row, and its readings [next, end).
    row: usize,
    current: usize,
    next: usize,
    end: usize,
    /// The current row's readings by time, when the array is not in time order
    /// (`groupArray` keeps the order it reads in, which several threads may mix).
    order: Vec<usize>,
    first: usize,
}

impl Block<'_> {
    #[inline]
    fn end_of(&self, row: usize) -> usize {
        if !self.arrays {
            return row + 1;
        }
        u64::from_le_bytes(self.ends[8 * row..8 * row + 8].try_into().expect("8 bytes")) as usize
    }

    #[inline]
    fn ts(&self, k: usize) -> i64 {
        if self.arrays {
            i64::from(u32::from_le_bytes(self.ts[4 * k..4 * k + 4].try_into().expect("4 bytes")))
        } else {
            i64::from_le_bytes(self.ts[8 * k..8 * k + 8].try_into().expect("8 bytes"))
        }
    }

    /// Moves to the next row; false when the block has no more.
    fn enter_row(&mut self) -> bool {
        if self.row >= self.meters.len() {
            return false;
        }
        let row = self.row;
        self.row += 1;
        self.current = row;
        self.first = if row == 0 { 0 } else { self.end_of(row - 1) };
        self.next = self.first;
        self.end = self.end_of(row);
        self.order.clear();
        if self.arrays && (self.first + 1..self.end).any(|k| self.ts(k - 1) > self.ts(k)) {
            self.order.extend(self.first..self.end);
            let mut order = std::mem::take(&mut self.order);
            order.sort_by_key(|&k| self.ts(k));
            self.order = order;
        }
        true
    }
}

/// The columns a Native input block must have, in order, with their types (one
/// reading a row, or arrays of a series' readings).
const INPUT: [(&str, &str); 4] = [("meter", "String"), ("obis", "UInt64"), ("ts", "Int64"), ("value", "Float64")];
const ARRAYS: [&str; 2] = ["Array(UInt32)", "Array(Float64)"];

impl<'a> Rows<'a> {
    fn new(data: &'a [u8], native: bool) -> Self {
        Rows { data, r: Reader::new(data), native, block: Block::default() }
    }

    #[inline]
    fn next(&mut self) -> Result<Option<Reading<'a>>> {
        if !self.native {
            return self.next_row();
        }
        while self.block.next >= self.block.end {
            if !self.block.enter_row() {
                if self.r.is_empty() {
                    return Ok(None);
                }
                self.read_block()?;
            }
        }
        let b = &mut self.block;
        let j = b.next;
        b.next += 1;
        let k = if b.order.is_empty() { j } else { b.order[j - b.first] };
        let (start, len) = b.meters[b.current];
        let row = b.current;
        Ok(Some(Reading {
            at: b.at,
            meter: &self.data[start..start + len],
            obis: u64::from_le_bytes(b.obis[8 * row..8 * row + 8].try_into().expect("8 bytes")),
            t: b.ts(k),
            v: f64::from_le_bytes(b.value[8 * k..8 * k + 8].try_into().expect("8 bytes")),
        }))
    }

    fn next_row(&mut self) -> Result<Option<Reading<'a>>> {
        let r = &mut self.r;
        if r.is_empty() {
            return Ok(None);
        }
        let at = r.position();
        let len = leb128(r)?;
        if len > MAX_SERIAL {
            return Err(Error::invalid("readings", at, format!("meter serial of {len} bytes")));
        }
        let meter = r.bytes(len, "meter")?;
        let obis = u64::from_le_bytes(r.array::<8>("obis")?);
        let t = i64::from_le_bytes(r.array::<8>("ts")?);
        let v = f64::from_le_bytes(r.array::<8>("value")?);
        Ok(Some(Reading { at, meter, obis, t, v }))
    }

    /// A Native block: column count, row count, then each column's name, type and data
    /// (an array column: each row's end offset, then the values of all rows).
    fn read_block(&mut self) -> Result<()> {
        let r = &mut self.r;
        let at = r.position();
        let columns = leb128(r)?;
        let n = leb128(r)?;
        if columns != INPUT.len() {
            return Err(Error::invalid("readings", at, format!("a Native block of {columns} columns, not 4")));
        }
        let Some(size) = n.checked_mul(8) else {
            return Err(Error::invalid("readings", at, format!("a Native block of {n} rows")));
        };
        let mut block = Block { at, order: std::mem::take(&mut self.block.order), ..Block::default() };
        let mut values = 0usize; // readings in an array block
        for (c, (name, ty)) in INPUT.into_iter().enumerate() {
            let col_at = r.position();
            let len = leb128(r)?;
            r.bytes(len, "column name")?;
            let len = leb128(r)?;
            let got = r.bytes(len, "column type")?;
            if c == 2 {
                block.arrays = got == ARRAYS[0].as_bytes();
            }
            let want = if c >= 2 && block.arrays { ARRAYS[c - 2] } else { ty };
            if got != want.as_bytes() {
                let got = String::from_utf8_lossy(got);
                let also = if c == 2 { format!(" or {}", ARRAYS[0]) } else { String::new() };
                return Err(Error::invalid("readings", col_at, format!("column {name} is {got}, not {want}{also}")));
            }
            match name {
                "meter" => {
                    block.meters.reserve(n);
                    for _ in 0..n {
                        let m_at = r.position();
                        let len = leb128(r)?;
                        if len > MAX_SERIAL {
                            return Err(Error::invalid("readings", m_at, format!("meter serial of {len} bytes")));
                        }
                        block.meters.push((r.position(), len));
                        r.bytes(len, "meter")?;
                    }
                }
                "obis" => block.obis = r.bytes(size, name)?,
                _ if !block.arrays => {
                    let col = r.bytes(size, name)?;
                    if name == "ts" {
                        block.ts = col;
                    } else {
                        block.value = col;
                    }
                }
                "ts" => {
                    let ends_at = r.position();
                    block.ends = r.bytes(size, "array offsets")?;
                    let mut last = 0u64;
                    for e in block.ends.chunks_exact(8) {
                        let e = u64::from_le_bytes(e.try_into().expect("8 bytes"));
                        if e < last {
                            return Err(Error::invalid("readings", ends_at, "array offsets go down"));
                        }
                        last = e;
                    }
                    let Some(bytes) = usize::try_from(last).ok().and_then(|v| v.checked_mul(8)) else {
                        return Err(Error::invalid("readings", ends_at, format!("arrays of {last} readings")));
                    };
                    values = bytes / 8;
                    block.ts = r.bytes(values * 4, name)?;
                }
                _ => {
                    let ends_at = r.position();
                    if r.bytes(size, "array offsets")? != block.ends {
                        return Err(Error::invalid("readings", ends_at, "ts and value arrays differ in length"));
                    }
                    block.value = r.bytes(values * 8, name)?;
                }
            }
        }
        self.block = block;
        Ok(())
    }
}

/// Interval start as ClickHouse `DateTime` (UInt32 seconds).
fn datetime(start: i64) -> u32 {
    start.clamp(0, i64::from(u32::MAX)) as u32
}

/// The rows as RowBinary.
fn row_binary(job: &Job, data: &[u8], keys: &[(usize, usize, usize)], iv: &Intervals, keep: &[usize]) -> Vec<u8> {
    let mut out = Vec::with_capacity(keep.len() * 48);
    for &k in keep {
        let (m0, m1, ch) = keys[iv.series[k] as usize];
        let c = &job.channels[ch];
        put_string(&mut out, &data[m0..m1]);
        out.extend_from_slice(&c.obis.to_le_bytes());
        out.extend_from_slice(&datetime(iv.start[k]).to_le_bytes());
        out.extend_from_slice(&(iv.value[k] * c.scale).to_le_bytes());
        put_string(&mut out, c.unit.as_bytes());
        out.push(iv.quality[k] + 1); // Enum8: measured 1, estimated 2, invalid 3
        out.extend_from_slice(&iv.flags[k].to_le_bytes());
        out.extend_from_slice(&job.computed_at_ms.to_le_bytes());
    }
    out
}

/// The rows as one block of ClickHouse's Native format (columns one after another):
/// ClickHouse reads it several times faster than RowBinary. `unit` goes as String and
/// becomes the table's LowCardinality(String) on insert.
fn native_block(job: &Job, data: &[u8], keys: &[(usize, usize, usize)], iv: &Intervals, keep: &[usize]) -> Vec<u8> {
    let n = keep.len();
    let mut out = Vec::with_capacity(n * 48 + 256);
    put_varuint(&mut out, COLUMNS.len() as u64);
    put_varuint(&mut out, n as u64);
    let channel = |k: usize| &job.channels[keys[iv.series[k] as usize].2];
    for (name, ty) in COLUMNS {
        put_string(&mut out, name.as_bytes());
        put_string(&mut out, ty.as_bytes());
        match name {
            "meter" => {
                for &k in keep {
                    let (m0, m1, _) = keys[iv.series[k] as usize];
                    put_string(&mut out, &data[m0..m1]);
                }
            }
            "obis" => keep.iter().for_each(|&k| out.extend_from_slice(&channel(k).obis.to_le_bytes())),
            "interval_start" => keep.iter().for_each(|&k| out.extend_from_slice(&datetime(iv.start[k]).to_le_bytes())),
            "value" => {
                keep.iter().for_each(|&k| out.extend_from_slice(&(iv.value[k] * channel(k).scale).to_le_bytes()))
            }
            "unit" => keep.iter().for_each(|&k| put_string(&mut out, channel(k).unit.as_bytes())),
            "quality" => keep.iter().for_each(|&k| out.push(iv.quality[k] + 1)),
            "flags" => keep.iter().for_each(|&k| out.extend_from_slice(&iv.flags[k].to_le_bytes())),
            _ => (0..n).for_each(|_| out.extend_from_slice(&job.computed_at_ms.to_le_bytes())),
        }
    }
    out
}

/// The `consumption` columns and the types a Native block declares for them.
pub const COLUMNS: [(&str, &str); 8] = [
    ("meter", "String"),
    ("obis", "UInt64"),
    ("interval_start", "DateTime('UTC')"),
    ("value", "Float64"),
    ("unit", "String"),
    ("quality", "Enum8('measured' = 1, 'estimated' = 2, 'invalid' = 3)"),
    ("flags", "UInt16"),
    ("computed_at", "DateTime64(3, 'UTC')"),
];

fn put_varuint(out: &mut Vec<u8>, mut n: u64) {
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

/// Ends a meter's open off period one measured gap after its last 0.
fn close_off<'a>(open: &mut Option<(&'a [u8], i64, i64)>, map: &mut HashMap<&'a [u8], Vec<(i64, i64)>>, gap: i64) {
    if let Some((m, since, last0)) = open.take() {
        map.entry(m).or_default().push((since, last0 + gap));
    }
}

fn leb128(r: &mut Reader<'_>) -> Result<usize> {
    let mut n: usize = 0;
    for shift in (0..35).step_by(7) {
        let b = r.u8("string length")?;
        n |= usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(n);
        }
    }
    Err(r.invalid("string length", "LEB128 longer than 5 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(out: &mut Vec<u8>, meter: &str, obis: u64, t: i64, v: f64) {
        put_string(out, meter.as_bytes());
        out.extend_from_slice(&obis.to_le_bytes());
        out.extend_from_slice(&t.to_le_bytes());
        out.extend_from_slice(&v.to_le_bytes());
    }

    /// `rows` as RowBinary.
    fn row_binary_of(rows: &[Sample<'_>]) -> Vec<u8> {
        let mut data = Vec::new();
        rows.iter().for_each(|r| row(&mut data, r.0, r.1, r.2, r.3));
        data
    }

    fn job() -> Job {
        Job {
            vee: VeeConfig::default(),
            channels: vec![Channel { obis: 7, scale: 0.001, unit: "kWh".into(), max_rate: 1e6 }],
            unlimited: HashSet::new(),
            profiles: HashMap::new(),
            states: vec![3],
            keep_from: 0,
            keep_to: i64::MAX,
            computed_at_ms: 42,
            native: false,
            native_input: false,
        }
    }

    #[test]
    fn rows_in_rows_out() {
        let mut data = Vec::new();
        for (m, base) in [("A", 0.0), ("B", 100.0)] {
            for h in 0..3 {
                row(&mut data, m, 7, 3600 * h, base + 1000.0 * h as f64);
            }
            row(&mut data, m, 9, 0, 5.0); // not a channel: skipped
        }
        let (out, st) = run(&job(), &data).unwrap();
        assert_eq!((st.readings, st.series, st.rows), (8, 2, 4));
        // First row: "A", obis 7, 0 s, 1.0 kWh, "kWh", measured, no flags, version 42.
        let mut want = vec![1, b'A'];
        want.extend_from_slice(&7u64.to_le_bytes());
        want.extend_from_slice(&0u32.to_le_bytes());
        want.extend_from_slice(&1.0f64.to_le_bytes());
        want.extend_from_slice(&[3, b'k', b'W', b'h', 1, 0, 0]);
        want.extend_from_slice(&42i64.to_le_bytes());
        assert_eq!(&out[..want.len()], &want[..]);
        assert_eq!(out.len(), want.len() * 4);
    }

    /// meter, obis, ts, value.
    type Sample<'a> = (&'a str, u64, i64, f64);

    /// `rows` as Native blocks of at most `per` rows each.
    fn native_input(rows: &[Sample<'_>], per: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in rows.chunks(per) {
            put_varuint(&mut out, 4);
            put_varuint(&mut out, chunk.len() as u64);
            let mut col = |name: &str, ty: &str, f: &dyn Fn(&mut Vec<u8>, &Sample<'_>)| {
                put_string(&mut out, name.as_bytes());
                put_string(&mut out, ty.as_bytes());
                chunk.iter().for_each(|r| f(&mut out, r));
            };
            col("meter", "String", &|o, r| put_string(o, r.0.as_bytes()));
            col("obis", "UInt64", &|o, r| o.extend_from_slice(&r.1.to_le_bytes()));
            col("toInt64(ts)", "Int64", &|o, r| o.extend_from_slice(&r.2.to_le_bytes()));
            col("value", "Float64", &|o, r| o.extend_from_slice(&r.3.to_le_bytes()));
        }
        out
    }

    #[test]
    fn native_blocks_in_give_what_rows_in_give() {
        let mut rows = Vec::new();
        for (m, base) in [("A", 0.0), ("B", 100.0), ("CC", 7.0)] {
            rows.push((m, 3, 0, 1.0)); // the supply state: on
            for h in 0..5 {
                if (m, h) != ("B", 2) {
                    rows.push((m, 7, 3600 * h, base + 1000.0 * h as f64));
                }
            }
            rows.push((m, 9, 0, 5.0));
        }
        let data = row_binary_of(&rows);
        let want = run(&job(), &data).unwrap();
        let j = Job { native_input: true, ..job() };
        for per in [1, 2, 5, rows.len()] {
            assert_eq!(run(&j, &native_input(&rows, per)).unwrap(), want, "{per} rows a block");
        }
        assert_eq!(run(&j, &[]).unwrap().1.readings, 0);
        // An empty block (ClickHouse may send one) is no reading.
        let mut empty = native_input(&rows[..0], 1);
        put_varuint(&mut empty, 4);
        put_varuint(&mut empty, 0);
        for (name, ty) in INPUT {
            put_string(&mut empty, name.as_bytes());
            put_string(&mut empty, ty.as_bytes());
        }
        let mut with_empty = empty.clone();
        with_empty.extend_from_slice(&native_input(&rows, 4));
        assert_eq!(run(&j, &with_empty).unwrap(), want);
    }

    /// `rows` as Native blocks of a series a row (at most `per` rows a block), each
    /// series' readings in reverse time order when `reverse`.
    fn array_input(rows: &[Sample<'_>], per: usize, reverse: bool) -> Vec<u8> {
        let mut series: Vec<Vec<Sample<'_>>> = Vec::new();
        for r in rows {
            match series.last_mut() {
                Some(s) if (s[0].0, s[0].1) == (r.0, r.1) => s.push(*r),
                _ => series.push(vec![*r]),
            }
        }
        if reverse {
            series.iter_mut().for_each(|s| s.reverse());
        }
        let mut out = Vec::new();
        for chunk in series.chunks(per) {
            put_varuint(&mut out, 4);
            put_varuint(&mut out, chunk.len() as u64);
            let offsets = |out: &mut Vec<u8>| {
                let mut end = 0u64;
                for s in chunk {
                    end += s.len() as u64;
                    out.extend_from_slice(&end.to_le_bytes());
                }
            };
            put_string(&mut out, b"meter");
            put_string(&mut out, b"String");
            chunk.iter().for_each(|s| put_string(&mut out, s[0].0.as_bytes()));
            put_string(&mut out, b"obis");
            put_string(&mut out, b"UInt64");
            chunk.iter().for_each(|s| out.extend_from_slice(&s[0].1.to_le_bytes()));
            put_string(&mut out, b"groupArray(toUInt32(ts))");
            put_string(&mut out, b"Array(UInt32)");
            offsets(&mut out);
            chunk.iter().flatten().for_each(|r| out.extend_from_slice(&(r.2 as u32).to_le_bytes()));
            put_string(&mut out, b"groupArray(value)");
            put_string(&mut out, b"Array(Float64)");
            offsets(&mut out);
            chunk.iter().flatten().for_each(|r| out.extend_from_slice(&r.3.to_le_bytes()));
        }
        out
    }

    fn sample_rows() -> Vec<Sample<'static>> {
        let mut rows = Vec::new();
        for (m, base) in [("A", 0.0), ("B", 100.0), ("CC", 7.0)] {
            rows.push((m, 3, 0, 1.0)); // the supply state: on
            if m == "B" {
                rows.push((m, 3, 7200, 0.0)); // off from 2 h
                rows.push((m, 3, 10800, 1.0)); // on again at 3 h
            }
            for h in 0..5 {
                if (m, h) != ("B", 2) {
                    rows.push((m, 7, 3600 * h, base + 1000.0 * h as f64));
                }
            }
            rows.push((m, 9, 0, 5.0));
        }
        rows
    }

    #[test]
    fn series_arrays_in_give_what_rows_in_give() {
        let rows = sample_rows();
        let data = row_binary_of(&rows);
        let want = run(&job(), &data).unwrap();
        assert!(want.1.rows > 0);
        let j = Job { native_input: true, ..job() };
        for per in [1, 2, 5, rows.len()] {
            for reverse in [false, true] {
                let got = run(&j, &array_input(&rows, per, reverse)).unwrap();
                assert_eq!(got, want, "{per} series a block, reversed {reverse}");
            }
        }
        // Blocks of one reading a row and blocks of arrays may follow one another.
        let mut mixed = native_input(&rows[..7], 3);
        mixed.extend_from_slice(&array_input(&rows[7..], 2, false));
        assert_eq!(run(&j, &mixed).unwrap(), want);
        // A row with empty arrays is no reading.
        let mut empty = Vec::new();
        put_varuint(&mut empty, 4);
        put_varuint(&mut empty, 1);
        for (name, ty, data) in [
            ("meter", "String", &b"\x01Z"[..]),
            ("obis", "UInt64", &7u64.to_le_bytes()[..]),
            ("ts", ARRAYS[0], &[0; 8][..]),
            ("value", ARRAYS[1], &[0; 8][..]),
        ] {
            put_string(&mut empty, name.as_bytes());
            put_string(&mut empty, ty.as_bytes());
            empty.extend_from_slice(data);
        }
        assert_eq!(run(&j, &empty).unwrap().1, JobStats::default());
        empty.extend_from_slice(&array_input(&rows, 3, true));
        assert_eq!(run(&j, &empty).unwrap(), want);
    }

    #[test]
    fn bad_series_arrays_are_named() {
        let j = Job { native_input: true, ..job() };
        let good = array_input(&[("A", 7, 0, 1.0), ("A", 7, 3600, 2.0), ("B", 7, 0, 1.0)], 2, false);
        assert_eq!(run(&j, &good).unwrap().1.readings, 3);
        for cut in 1..good.len() {
            let e = run(&j, &good[..cut]).unwrap_err();
            assert!(matches!(e, Error::Incomplete { .. } | Error::Invalid { .. }), "{cut}: {e}");
        }
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        // The value offsets (second offsets column) not the ts offsets.
        let at =
            |needle: &[u8], from: usize| from + good[from..].windows(needle.len()).position(|w| w == needle).unwrap();
        let value_offsets = at(b"Array(Float64)", 0) + b"Array(Float64)".len();
        let mut differ = good.clone();
        differ[value_offsets] = 1;
        assert!(run(&j, &differ).unwrap_err().to_string().contains("differ in length"), "{}", text(&differ));
        let ts_offsets = at(b"Array(UInt32)", 0) + b"Array(UInt32)".len();
        let mut down = good.clone();
        down[ts_offsets + 8] = 0; // second row ends before the first
        let e = run(&j, &down).unwrap_err().to_string();
        assert!(e.contains("offsets go down"), "{e}");
        let renamed = text(&good).replace("Array(Float64)", "Array(Float32)").into_bytes();
        let e = run(&j, &renamed).unwrap_err().to_string();
        assert!(e.contains("column value is Array(Float32), not Array(Float64)"), "{e}");
        let renamed = text(&good).replace("Array(UInt32)", "Array(UInt16)").into_bytes();
        let e = run(&j, &renamed).unwrap_err().to_string();
        assert!(e.contains("column ts is Array(UInt16), not Int64 or Array(UInt32)"), "{e}");
        let backwards = array_input(&[("B", 7, 0, 1.0), ("A", 7, 0, 1.0)], 1, false);
        assert!(run(&j, &backwards).unwrap_err().to_string().contains("not ordered"));
    }

    fn meter_nodes_block(rows: &[(&str, &str, u8)]) -> Vec<u8> {
        let mut out = Vec::new();
        put_varuint(&mut out, 3);
        put_varuint(&mut out, rows.len() as u64);
        put_string(&mut out, b"serial");
        put_string(&mut out, b"String");
        rows.iter().for_each(|r| put_string(&mut out, r.0.as_bytes()));
        put_string(&mut out, b"node_id");
        put_string(&mut out, b"String");
        rows.iter().for_each(|r| put_string(&mut out, r.1.as_bytes()));
        put_string(&mut out, b"balance");
        put_string(&mut out, b"UInt8");
        rows.iter().for_each(|r| out.push(r.2));
        out
    }

    #[test]
    fn node_sums_add_each_meters_hours_to_its_node() {
        let mut data = Vec::new();
        // A consumer (1 kWh an hour, hour 2 missing: hours 1 and 2 estimated), its
        // transformer's balance meter (3 kWh an hour), a meter of no known node, and
        // export (obis 8), which is not a flow register.
        for h in (0..5).filter(|&h| h != 2) {
            row(&mut data, "A", 7, 3600 * h, 1000.0 * h as f64);
        }
        for h in 0..5 {
            row(&mut data, "A", 8, 3600 * h, 10.0 * h as f64);
        }
        for (m, per) in [("B", 3000.0), ("Z", 5000.0)] {
            for h in 0..5 {
                row(&mut data, m, 7, 3600 * h, per * h as f64);
            }
        }
        let mut j = job();
        j.channels.push(Channel { obis: 8, scale: 0.001, unit: "kWh".into(), max_rate: 1e6 });
        j.keep_from = 3600; // hours 1.. of the sums' window [0, 3 h)
        let block = meter_nodes_block(&[("A", "T1", 0), ("B", "T1", 1), ("Z", "elsewhere", 0)]);
        let placed = MeterNodes::read(&block).unwrap();
        let mut sums = NodeSums::new(vec![b"F1".to_vec(), b"T1".to_vec()], 0, 3, vec![7], vec![]).unwrap();
        let (out, st) =
            run_summing(&j, &Slice::parse(&data, j.native_input).unwrap(), Some((&mut sums, &placed))).unwrap();
        assert_eq!((out, st), run(&j, &data).unwrap(), "the rows do not change");
        // T1 is node 1: consumers at cells 6.., balance meters at 9..
        assert_eq!(sums.value, vec![0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 3.0, 3.0]);
        assert_eq!(sums.measured, vec![0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1]);
        assert_eq!(sums.unplaced, 1, "Z's import");

        assert!(NodeSums::new(vec![b"T".to_vec(), b"T".to_vec()], 0, 3, vec![7], vec![]).is_err());
        assert!(NodeSums::new(vec![b"T".to_vec()], 0, 3, vec![7], vec![(7, 9)]).is_err(), "9 does not count");
        let e = NodeSums::new(vec![b"T".to_vec(); 1 << 20], 0, 400 * 24, vec![7], vec![]).unwrap_err().to_string();
        assert!(e.contains("too many"), "{e}");
        for cut in 1..block.len() {
            assert!(MeterNodes::read(&block[..cut]).is_err(), "{cut}");
        }
        let bad = String::from_utf8_lossy(&block).replace("UInt8", "Int16").into_bytes();
        let e = MeterNodes::read(&bad).err().unwrap().to_string();
        assert!(e.contains("column balance is Int16, not UInt8"), "{e}");
    }

    #[test]
    fn node_sums_prefer_the_corrected_register_where_a_meter_has_it() {
        // Gas: G has the volume (obis 7, 1 m³ an hour) and the corrected volume (obis
        // 9, 0.9 m³ an hour); H only the volume (2 m³ an hour); S, the segment's
        // balance meter, both (3.2 and 3.0). Hand-computed, per hour: consumers
        // 0.9 (G corrected) + 2 (H, no corrected) = 2.9; input 3.0 (corrected).
        let mut data = Vec::new();
        for (m, obis, per) in [("G", 7, 1.0), ("G", 9, 0.9), ("H", 7, 2.0), ("S", 7, 3.2), ("S", 9, 3.0)] {
            for h in 0..4 {
                row(&mut data, m, obis, 3600 * h, per * h as f64);
            }
        }
        let mut j = job();
        j.channels = vec![
            Channel { obis: 7, scale: 1.0, unit: "m³".into(), max_rate: 1e6 },
            Channel { obis: 9, scale: 1.0, unit: "m³ (corr)".into(), max_rate: 1e6 },
        ];
        let block = meter_nodes_block(&[("G", "GS", 0), ("H", "GS", 0), ("S", "GS", 1)]);
        let placed = MeterNodes::read(&block).unwrap();
        let mut sums = NodeSums::new(vec![b"GS".to_vec()], 3600, 2, vec![7, 9], vec![(7, 9)]).unwrap();
        run_summing(&j, &Slice::parse(&data, j.native_input).unwrap(), Some((&mut sums, &placed))).unwrap();
        let close = |got: &[f64], want: &[f64]| got.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-9);
        assert!(close(&sums.value, &[2.9, 2.9, 3.0, 3.0]), "{:?}", sums.value);
        assert_eq!(sums.measured, vec![2, 2, 1, 1]);
        // Of the meter-hours, G's and S's came from the corrected register, H's not.
        assert_eq!(sums.preferred, vec![1, 1, 1, 1]);
        // Without the preference both registers would count: the volume twice.
        let mut both = NodeSums::new(vec![b"GS".to_vec()], 3600, 2, vec![7, 9], vec![]).unwrap();
        run_summing(&j, &Slice::parse(&data, j.native_input).unwrap(), Some((&mut both, &placed))).unwrap();
        assert!(close(&both.value, &[3.9, 3.9, 6.2, 6.2]), "{:?}", both.value);
    }

    /// The meters `Slice::gappy_meters` names in `data`.
    fn gappy(data: &[u8], native: bool, channels: &[u64], max_span: i64) -> Result<Vec<Vec<u8>>> {
        Ok(Slice::parse(data, native)?.gappy_meters(channels, 3600, max_span))
    }

    #[test]
    fn gappy_meters_are_the_ones_with_a_gap() {
        let rows = sample_rows(); // B's import misses the sample at 2 h
        let data = row_binary_of(&rows);
        assert_eq!(gappy(&data, false, &[7], 86_400).unwrap(), vec![b"B".to_vec()]);
        // In arrays, reversed (sorted by the reader), the same.
        let arrays = array_input(&rows, 2, true);
        assert_eq!(gappy(&arrays, true, &[7], 86_400).unwrap(), vec![b"B".to_vec()]);
        // Only the registers asked for count (obis 9 has one sample a meter); a gap
        // longer than the longest estimate is no estimate.
        assert!(gappy(&data, false, &[9], 86_400).unwrap().is_empty());
        assert!(gappy(&data, false, &[7], 7199).unwrap().is_empty());
        assert!(gappy(&arrays[..arrays.len() - 1], true, &[7], 86_400).is_err());
        // Blocks of a reading a row, and such blocks after array blocks.
        let scalar = native_input(&rows, 4);
        assert_eq!(gappy(&scalar, true, &[7], 86_400).unwrap(), vec![b"B".to_vec()]);
        let mut mixed = array_input(&rows[..1], 1, false);
        mixed.extend_from_slice(&scalar);
        assert_eq!(gappy(&mixed, true, &[7], 86_400).unwrap(), vec![b"B".to_vec()]);
        let mut after = array_input(&rows[..rows.len() / 2], 1, false);
        after.extend_from_slice(&native_input(&rows[rows.len() / 2..], 3));
        assert_eq!(gappy(&after, true, &[7], 86_400).unwrap(), vec![b"B".to_vec()]);
    }

    #[test]
    fn a_slice_is_the_same_whatever_shape_its_readings_came_in() {
        let rows = sample_rows();
        let want = Slice::parse(&row_binary_of(&rows), false).unwrap();
        assert_eq!(want.readings(), rows.len());
        for (data, native) in
            [(array_input(&rows, 2, true), true), (array_input(&rows, 1, false), true), (native_input(&rows, 3), true)]
        {
            assert_eq!(Slice::parse(&data, native).unwrap(), want);
        }
        // One series a meter's register, the meter's bytes once for all its registers.
        assert_eq!(want.series(), want.series.iter().map(|s| (s.meter, s.obis)).collect::<HashSet<_>>().len());
        assert_eq!(want.meters, b"ABCC".to_vec());
    }

    #[test]
    fn earlier_samples_bound_a_narrow_window() {
        let rows = sample_rows();
        let whole = row_binary_of(&rows);
        let want = run(&job(), &whole).unwrap();
        // A window read from 1 h: every meter's import starts after 0 h; the samples
        // at 0 h (import, states, obis 9) come as the earlier ones.
        let narrow: Vec<Sample<'_>> = rows.iter().copied().filter(|r| r.2 >= 3600).collect();
        let before: Vec<Sample<'_>> = rows.iter().copied().filter(|r| r.2 < 3600).collect();
        let data = array_input(&narrow, 2, false);
        let slice = Slice::parse(&data, true).unwrap();
        assert_eq!(slice.late_starters(&[7], 0), vec![b"A".to_vec(), b"B".to_vec(), b"CC".to_vec()]);
        assert!(slice.late_starters(&[7], 3600).is_empty());
        let j = Job { native_input: true, ..job() };
        for earlier in [array_input(&before, 3, true), native_input(&before, 2)] {
            let mut merged = slice.clone();
            merged.add_earlier(&earlier).unwrap();
            assert_eq!(run_summing(&j, &merged, None).unwrap(), want, "the whole day again");
            assert_eq!(merged, Slice::parse(&whole, false).unwrap());
        }
        // Series only in one of them, and nothing earlier at all.
        let only_a: Vec<Sample<'_>> = before.iter().copied().filter(|r| r.0 == "A").collect();
        let mut merged = slice.clone();
        merged.add_earlier(&array_input(&only_a, 1, false)).unwrap();
        assert_eq!(run_summing(&j, &merged, None).unwrap().1.readings, (narrow.len() + only_a.len()) as u64);
        let mut same = slice.clone();
        same.add_earlier(&[]).unwrap();
        assert_eq!(same, slice);
        assert!(same.add_earlier(&data[..data.len() - 1]).is_err());
        assert_eq!(same, slice, "a refused earlier block changes nothing");
    }

    #[test]
    fn later_samples_bound_a_narrow_window() {
        let rows = sample_rows();
        let whole = row_binary_of(&rows);
        let want = run(&job(), &whole).unwrap();
        // A window read up to 3 h: every meter's import ends before 4 h; the samples
        // at 4 h come as the later ones, and with the earlier ones the whole day again.
        let narrow: Vec<Sample<'_>> = rows.iter().copied().filter(|r| r.2 < 4 * 3600).collect();
        let after: Vec<Sample<'_>> = rows.iter().copied().filter(|r| r.2 >= 4 * 3600).collect();
        let mut slice = Slice::parse(&array_input(&narrow, 2, false), true).unwrap();
        assert_eq!(slice.early_finishers(&[7], 4 * 3600), vec![b"A".to_vec(), b"B".to_vec(), b"CC".to_vec()]);
        assert!(slice.early_finishers(&[7], 3 * 3600).is_empty());
        slice.add_later(&native_input(&after, 2)).unwrap();
        assert_eq!(slice, Slice::parse(&whole, false).unwrap());
        let j = Job { native_input: true, ..job() };
        assert_eq!(run_summing(&j, &slice, None).unwrap(), want);
        // A series only in the later block, between two of the slice's.
        let mut slice = Slice::parse(&array_input(&narrow, 1, false), true).unwrap();
        slice.add_later(&native_input(&[("B", 8, 9 * 3600, 1.0)], 1)).unwrap();
        assert_eq!(slice.series(), Slice::parse(&array_input(&narrow, 1, false), true).unwrap().series() + 1);
    }

    #[test]
    fn bad_native_input_is_named() {
        let rows = [("A", 7, 0, 1.0), ("A", 7, 3600, 2.0)];
        let j = Job { native_input: true, ..job() };
        let good = native_input(&rows, 2);
        for cut in 1..good.len() {
            let e = run(&j, &good[..cut]).unwrap_err();
            assert!(matches!(e, Error::Incomplete { .. } | Error::Invalid { .. }), "{cut}: {e}");
        }
        let mut trailing = good.clone();
        trailing.push(4);
        assert!(matches!(run(&j, &trailing).unwrap_err(), Error::Incomplete { .. }));
        let mut three = Vec::new();
        put_varuint(&mut three, 3);
        put_varuint(&mut three, 0);
        assert!(run(&j, &three).unwrap_err().to_string().contains("3 columns, not 4"));
        let renamed = String::from_utf8_lossy(&good).replace("Float64", "Float32").into_bytes();
        assert!(run(&j, &renamed).unwrap_err().to_string().contains("column value is Float32, not Float64"));
        // Out of order across blocks is caught as in rows.
        let backwards = native_input(&[("B", 7, 0, 1.0), ("A", 7, 0, 1.0)], 1);
        assert!(run(&j, &backwards).unwrap_err().to_string().contains("not ordered"));
    }

    #[test]
    fn a_native_block_holds_the_same_rows_by_column() {
        let mut data = Vec::new();
        for h in 0..3 {
            row(&mut data, "AB", 7, 3600 * h, 1000.0 * h as f64);
        }
        let (rb, _) = run(&job(), &data).unwrap();
        let (nb, st) = run(&Job { native: true, ..job() }, &data).unwrap();
        assert_eq!(st.rows, 2);
        let mut want = vec![8, 2];
        let mut col = |name: &str, ty: &str, bytes: &[u8]| {
            put_string(&mut want, name.as_bytes());
            put_string(&mut want, ty.as_bytes());
            want.extend_from_slice(bytes);
        };
        col("meter", "String", b"\x02AB\x02AB");
        col("obis", "UInt64", &[7, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0]);
        col("interval_start", "DateTime('UTC')", &[0, 0, 0, 0, 0x10, 0x0e, 0, 0]);
        col("value", "Float64", &[1.0f64.to_le_bytes(), 1.0f64.to_le_bytes()].concat());
        col("unit", "String", b"\x03kWh\x03kWh");
        col("quality", COLUMNS[5].1, &[1, 1]);
        col("flags", "UInt16", &[0, 0, 0, 0]);
        col("computed_at", "DateTime64(3, 'UTC')", &[42i64.to_le_bytes(), 42i64.to_le_bytes()].concat());
        assert_eq!(nb, want);
        assert_eq!(rb.len(), 2 * 38);
    }

    #[test]
    fn supply_off_periods_come_from_the_state_register() {
        use crate::vee::flags::{CONSUMED_WHILE_OFF, DISCONNECTED};
        let mut data = Vec::new();
        // The state (obis 3) sorts before the energy register (obis 7): off from 1 h to
        // 3 h; meter B reports off at 2 h and nothing after (off for one measured gap).
        for (t, v) in [(0, 1.0), (3600, 0.0), (7200, 0.0), (10800, 1.0)] {
            row(&mut data, "A", 3, t, v);
        }
        for h in 0..5 {
            row(&mut data, "A", 7, 3600 * h, 1000.0 * h as f64 * if h >= 2 { 1.0 } else { 0.5 });
        }
        row(&mut data, "B", 3, 7200, 0.0);
        for h in 0..5 {
            row(&mut data, "B", 7, 3600 * h, 0.0);
        }
        let (out, st) = run(&job(), &data).unwrap();
        assert_eq!(st.rows, 8);
        // Each row is 1+1 (serial) + 8 + 4 + 8 + 4 (unit) + 1 + then flags (u16) + 8.
        let row_len = 2 + 8 + 4 + 8 + 4 + 1 + 2 + 8;
        let flags: Vec<u16> = (0..8)
            .map(|k| {
                let at = k * row_len + 2 + 8 + 4 + 8 + 4 + 1;
                u16::from_le_bytes([out[at], out[at + 1]])
            })
            .collect();
        let off = DISCONNECTED;
        let eaten = DISCONNECTED | CONSUMED_WHILE_OFF;
        // A: hour 1 consumed 1.5 kWh while off, hour 2 1 kWh; B consumed nothing.
        assert_eq!(flags, vec![0, eaten, eaten, 0, 0, 0, off, 0]);
    }

    #[test]
    fn bad_input_names_the_field_and_offset() {
        let mut data = Vec::new();
        row(&mut data, "B", 7, 0, 1.0);
        row(&mut data, "A", 7, 0, 1.0);
        let e = run(&job(), &data).unwrap_err().to_string();
        assert!(e.contains("not ordered"), "{e}");
        let e = run(&job(), &data[..data.len() - 3]).unwrap_err();
        assert!(matches!(e, Error::Incomplete { .. } | Error::Invalid { .. }), "{e}");
        let e = run(&job(), &[0xff, 0x7f]).unwrap_err().to_string();
        assert!(e.contains("serial"), "{e}");
    }
}
