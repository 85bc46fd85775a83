//! Validation, estimation and editing (VEE): interval consumption from cumulative
//! registers (DESIGN.md section 6).
//!
//! The input is a batch of register samples (series, time, value) — a series is one
//! register of one meter (active energy import, export, gas volume) — and the output is
//! the consumption of every interval (hourly base) that the samples cover, each with
//! its quality and the flags that explain it.
//!
//! The derivation is a pure function of the samples: run again over the same samples
//! it gives the same rows, and run over samples that include late data (a meter back
//! after days offline) it replaces the estimates of the gap with measured values. The
//! caller keeps the rows in a table that keeps the latest computation per (series,
//! interval), which makes recomputation idempotent.
//!
//! Rules, per consecutive pair of samples (a, b) of one series:
//! - `b - a` spans at most `measured_gap` seconds: the delta is measured and spread over
//!   the intervals the pair covers in proportion to time;
//! - it spans more: a gap; the delta is spread by the series' typical daily profile
//!   where there is one (else in proportion to time) and the intervals are estimated;
//!   a gap longer than `max_estimate_span` is not estimated at all (its intervals are
//!   missing, which is what completeness counts);
//! - the register went down: a rollover past the register's modulus when that is
//!   plausible (measured), else a counter reset (the new value looks like counting from
//!   zero) or a negative delta: the intervals are invalid;
//! - the delta is more than the connection can carry (`max_rate`): a spike, invalid;
//! - two samples at the same time with different values: a clock problem, the
//!   intervals around it are invalid; samples in the future (beyond `now` plus a
//!   tolerance) and non-finite values are dropped and counted.
//!
//! An interval is as good as the worst contribution to it (measured < estimated <
//! invalid); invalid contributions add nothing to its value. Intervals only partly
//! covered (before the first sample, after the last) are not emitted: the samples that
//! complete them will come. Periods when the meter's supply was switched off mark their
//! intervals, and consumption in them is flagged.
//!
//! Architecture invariant: no clock, no time zone database; local time is a fixed
//! offset (Uzbekistan keeps no daylight saving time).

use crate::error::{Error, Result};

/// Quality of an interval's value.
pub const MEASURED: u8 = 0;
pub const ESTIMATED: u8 = 1;
pub const INVALID: u8 = 2;
/// Internal: an interval no pair has reached (never emitted).
const UNTOUCHED: u8 = u8::MAX;

/// Flags: why an interval has its quality (several may be set).
pub mod flags {
    /// The samples around it were further apart than a measured pair may be.
    pub const GAP: u16 = 1;
    /// The register restarted from (about) zero.
    pub const RESET: u16 = 1 << 1;
    /// The register went down, and it was neither a rollover nor a reset.
    pub const NEGATIVE: u16 = 1 << 2;
    /// More energy than the connection can carry in the time.
    pub const SPIKE: u16 = 1 << 3;
    /// The register passed its modulus and started again (the delta is counted).
    pub const ROLLOVER: u16 = 1 << 4;
    /// Two samples at the same time with different values.
    pub const DUPLICATE_CONFLICT: u16 = 1 << 5;
    /// The estimate was spread by the series' typical daily profile.
    pub const PROFILE: u16 = 1 << 6;
    /// The meter's supply was off during (part of) the interval.
    pub const DISCONNECTED: u16 = 1 << 7;
    /// ... and it registered consumption all the same.
    pub const CONSUMED_WHILE_OFF: u16 = 1 << 8;
}

/// Settings of one derivation (all times in seconds; Unix time, UTC).
#[derive(Clone, Debug)]
pub struct VeeConfig {
    /// Interval length; divides an hour (900, 1800, 3600).
    pub interval: i64,
    /// A pair of samples at most this far apart is measured.
    pub measured_gap: i64,
    /// A gap longer than this is not estimated.
    pub max_estimate_span: i64,
    /// Local time minus UTC, for the hour of day of typical profiles.
    pub local_offset: i64,
    /// The current time, from the caller; samples later than `now + future_tolerance`
    /// are dropped.
    pub now: i64,
    pub future_tolerance: i64,
}

impl Default for VeeConfig {
    fn default() -> Self {
        VeeConfig {
            interval: 3600,
            measured_gap: 3600,
            max_estimate_span: 62 * 86_400,
            local_offset: 5 * 3600,
            now: i64::MAX / 4,
            future_tolerance: 600,
        }
    }
}

/// What is known of one series.
#[derive(Clone, Debug, Default)]
pub struct SeriesParams {
    /// Most the connection can carry, in register units per hour (kWh/h = kW; m³/h);
    /// 0 or less: no limit.
    pub max_rate: f64,
    /// The register's modulus (it counts up to this and starts again at 0); 0: none.
    pub rollover: f64,
    /// Typical consumption by local hour of day (any scale); `None`: spread by time.
    pub profile: Option<[f64; 24]>,
    /// Consumption per hour below which a switched-off meter counts as idle.
    pub idle_rate: f64,
}

/// The derived intervals, as columns.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Intervals {
    pub series: Vec<u32>,
    /// Interval start, Unix seconds (UTC).
    pub start: Vec<i64>,
    pub value: Vec<f64>,
    pub quality: Vec<u8>,
    pub flags: Vec<u16>,
}

impl Intervals {
    fn reserve(&mut self, n: usize) {
        self.series.reserve(n);
        self.start.reserve(n);
        self.value.reserve(n);
        self.quality.reserve(n);
        self.flags.reserve(n);
    }

    pub fn len(&self) -> usize {
        self.series.len()
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    fn push(&mut self, series: u32, start: i64, value: f64, quality: u8, flags: u16) {
        self.series.push(series);
        self.start.push(start);
        self.value.push(value);
        self.quality.push(quality);
        self.flags.push(flags);
    }
}

/// Counts of samples that did not become part of any interval.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VeeStats {
    pub samples: u64,
    pub future: u64,
    pub not_finite: u64,
    pub duplicates: u64,
    pub conflicts: u64,
}

/// A period with the meter's supply off: series, from, to (Unix seconds).
pub type OffPeriod = (u32, i64, i64);

/// Interval consumption of every series in the batch. `series`, `ts` and `value` are
/// parallel columns (any order); `params[s]` describes series `s`; `off` lists supply-off
/// periods (any order).
pub fn derive(
    cfg: &VeeConfig,
    params: &[SeriesParams],
    series: &[u32],
    ts: &[i64],
    value: &[f64],
    off: &[OffPeriod],
) -> Result<(Intervals, VeeStats)> {
    check_config(cfg)?;
    if series.len() != ts.len() || series.len() != value.len() {
        return Err(Error::invalid(
            "VEE batch",
            0,
            format!("columns differ in length: series {}, ts {}, value {}", series.len(), ts.len(), value.len()),
        ));
    }
    if let Some(&s) = series.iter().find(|&&s| s as usize >= params.len()) {
        return Err(Error::invalid("VEE batch", 0, format!("series {s} has no parameters ({} given)", params.len())));
    }
    // The batch's order: usually as given (the query sorts), then without an index.
    let order = sorted_order(series, ts);
    let at = |k: usize| order.as_ref().map_or(k, |o| o[k]);
    let mut off_sorted: Vec<OffPeriod> = off.iter().copied().filter(|p| p.2 > p.1).collect();
    off_sorted.sort_unstable();

    let mut out = Intervals::default();
    // About one interval per sample at most (hourly intervals of quarter-hour samples,
    // plus the estimated ones): room up front spares regrowing the columns.
    out.reserve(series.len() / 2);
    let mut stats = VeeStats { samples: series.len() as u64, ..VeeStats::default() };
    let mut work = Work::default();
    let mut i = 0;
    while i < series.len() {
        let s = series[at(i)];
        let mut j = i;
        while j < series.len() && series[at(j)] == s {
            j += 1;
        }
        work.samples.clear();
        match &order {
            Some(o) => clean_samples(cfg, o[i..j].iter().copied(), ts, value, &mut work.samples, &mut stats),
            None => clean_samples(cfg, i..j, ts, value, &mut work.samples, &mut stats),
        }
        let lo = off_sorted.partition_point(|p| p.0 < s);
        let hi = off_sorted.partition_point(|p| p.0 <= s);
        one_series(cfg, &params[s as usize], s, &mut work, &off_sorted[lo..hi], &mut out);
        i = j;
    }
    Ok((out, stats))
}

fn check_config(cfg: &VeeConfig) -> Result<()> {
    let bad = |why: String| Err(Error::invalid("VEE settings", 0, why));
    if cfg.interval <= 0 || 3600 % cfg.interval != 0 {
        return bad(format!("interval {} s does not divide an hour", cfg.interval));
    }
    if cfg.measured_gap < cfg.interval.min(900) {
        return bad(format!("measured_gap {} s is shorter than the push cadence", cfg.measured_gap));
    }
    if cfg.max_estimate_span < cfg.measured_gap || cfg.max_estimate_span > 400 * 86_400 {
        return bad(format!("max_estimate_span {} s out of range", cfg.max_estimate_span));
    }
    Ok(())
}

/// Indices of the batch in (series, ts) order; None when it is in that order already.
fn sorted_order(series: &[u32], ts: &[i64]) -> Option<Vec<usize>> {
    if (1..series.len()).all(|k| (series[k - 1], ts[k - 1]) <= (series[k], ts[k])) {
        return None;
    }
    let mut order: Vec<usize> = (0..series.len()).collect();
    order.sort_by_key(|&k| (series[k], ts[k]));
    Some(order)
}

/// One sample kept for the pairs; `conflict` marks a time with disagreeing values.
#[derive(Clone, Copy, Debug)]
struct Sample {
    t: i64,
    v: f64,
    conflict: bool,
}

#[derive(Default)]
struct Work {
    samples: Vec<Sample>,
    value: Vec<f64>,
    quality: Vec<u8>,
    flags: Vec<u16>,
}

fn clean_samples(
    cfg: &VeeConfig,
    idx: impl Iterator<Item = usize>,
    ts: &[i64],
    value: &[f64],
    out: &mut Vec<Sample>,
    stats: &mut VeeStats,
) {
    let limit = cfg.now.saturating_add(cfg.future_tolerance);
    for k in idx {
        let (t, v) = (ts[k], value[k]);
        if !v.is_finite() {
            stats.not_finite += 1;
            continue;
        }
        if t > limit {
            stats.future += 1;
            continue;
        }
        if let Some(last) = out.last_mut() {
            if last.t == t {
                if (last.v - v).abs() <= 1e-9 * last.v.abs().max(1.0) {
                    stats.duplicates += 1;
                } else {
                    stats.conflicts += 1;
                    last.conflict = true;
                }
                continue;
            }
        }
        out.push(Sample { t, v, conflict: false });
    }
}

fn one_series(cfg: &VeeConfig, p: &SeriesParams, s: u32, w: &mut Work, off: &[OffPeriod], out: &mut Intervals) {
    let iv = cfg.interval;
    let (Some(first), Some(last)) = (w.samples.first(), w.samples.last()) else {
        return;
    };
    // Intervals wholly inside [first, last]: k0 .. k1 (exclusive).
    let k0 = first.t.div_euclid(iv) + i64::from(first.t.rem_euclid(iv) != 0);
    let k1 = last.t.div_euclid(iv);
    if k1 <= k0 {
        return;
    }
    let n = (k1 - k0) as usize;
    w.value.clear();
    w.value.resize(n, 0.0);
    w.quality.clear();
    w.quality.resize(n, UNTOUCHED);
    w.flags.clear();
    w.flags.resize(n, 0);
    let samples = std::mem::take(&mut w.samples);
    for pair in samples.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        let span = b.t - a.t;
        if span > cfg.max_estimate_span {
            continue;
        }
        let (delta, mut quality, mut fl) = judge(cfg, p, a, b, span);
        if a.conflict || b.conflict {
            quality = INVALID;
            fl |= flags::DUPLICATE_CONFLICT;
        }
        let by_profile = quality == ESTIMATED && p.profile.is_some();
        spread(cfg, p, a.t, b.t, k0, k1, delta, quality, fl, by_profile, w);
    }
    w.samples = samples;
    mark_off(cfg, p, k0, off, w);
    for k in 0..n {
        if w.quality[k] != UNTOUCHED {
            out.push(s, (k0 + k as i64) * iv, w.value[k], w.quality[k], w.flags[k]);
        }
    }
}

/// The delta a pair contributes, its quality and flags.
fn judge(cfg: &VeeConfig, p: &SeriesParams, a: Sample, b: Sample, span: i64) -> (f64, u8, u16) {
    let hours = span as f64 / 3600.0;
    let carry = if p.max_rate > 0.0 { p.max_rate * hours * (1.0 + 1e-9) + 1e-9 } else { f64::INFINITY };
    let gap = span > cfg.measured_gap;
    let (ok_quality, ok_flags) = if gap { (ESTIMATED, flags::GAP) } else { (MEASURED, 0) };
    let mut delta = b.v - a.v;
    let noise = 1e-9 * a.v.abs().max(1.0);
    if delta < 0.0 && delta >= -noise {
        delta = 0.0;
    }
    if delta < 0.0 {
        if p.rollover > 0.0 && a.v < p.rollover && b.v >= 0.0 {
            let wrapped = p.rollover - a.v + b.v;
            if wrapped <= carry {
                return (wrapped, ok_quality, ok_flags | flags::ROLLOVER);
            }
        }
        // Counting again from zero: small against what it was, and no more than the
        // connection could have carried since.
        let from_zero = b.v >= 0.0 && b.v <= carry && b.v < 0.5 * a.v;
        let why = if from_zero { flags::RESET } else { flags::NEGATIVE };
        return (0.0, INVALID, why | ok_flags);
    }
    if delta > carry {
        return (0.0, INVALID, flags::SPIKE | ok_flags);
    }
    (delta, ok_quality, ok_flags)
}

/// Spreads `delta` over the intervals [ta, tb] covers (only those in k0..k1 are kept).
#[allow(clippy::too_many_arguments)]
fn spread(
    cfg: &VeeConfig,
    p: &SeriesParams,
    ta: i64,
    tb: i64,
    k0: i64,
    k1: i64,
    delta: f64,
    quality: u8,
    fl: u16,
    by_profile: bool,
    w: &mut Work,
) {
    let iv = cfg.interval;
    let first = ta.div_euclid(iv).max(k0);
    let end = (tb.div_euclid(iv) + i64::from(tb.rem_euclid(iv) != 0)).min(k1);
    if end <= first {
        return;
    }
    let overlap = |k: i64| (tb.min((k + 1) * iv) - ta.max(k * iv)).max(0) as f64;
    let weight = |k: i64| -> f64 {
        match (&p.profile, by_profile) {
            (Some(prof), true) => {
                let hour = ((k * iv + cfg.local_offset).rem_euclid(86_400) / 3600) as usize;
                prof[hour].max(0.0) * overlap(k)
            }
            _ => overlap(k),
        }
    };
    // The pair's total weight (over all of [ta, tb], not only the emitted part), so an
    // interval's share does not depend on which neighbours are emitted.
    let all_first = ta.div_euclid(iv);
    let all_end = tb.div_euclid(iv) + i64::from(tb.rem_euclid(iv) != 0);
    let mut total: f64 = (all_first..all_end).map(weight).sum();
    let linear = total <= 0.0 || !total.is_finite();
    let fl = if linear {
        total = (tb - ta) as f64;
        fl
    } else if by_profile {
        fl | flags::PROFILE
    } else {
        fl
    };
    for k in first..end {
        let share = if linear { overlap(k) } else { weight(k) };
        let slot = (k - k0) as usize;
        if quality != INVALID {
            w.value[slot] += delta * share / total;
        }
        let q = &mut w.quality[slot];
        *q = if *q == UNTOUCHED { quality } else { (*q).max(quality) };
        w.flags[slot] |= fl;
    }
}

fn mark_off(cfg: &VeeConfig, p: &SeriesParams, k0: i64, off: &[OffPeriod], w: &mut Work) {
    let iv = cfg.interval;
    let n = w.value.len() as i64;
    for &(_, from, to) in off {
        let first = (from.div_euclid(iv) - k0).max(0);
        let end = ((to.div_euclid(iv) + i64::from(to.rem_euclid(iv) != 0)) - k0).min(n);
        for k in first..end.max(first) {
            let slot = k as usize;
            if w.quality[slot] == UNTOUCHED {
                continue;
            }
            w.flags[slot] |= flags::DISCONNECTED;
            let t0 = (k0 + k) * iv;
            let off_secs = (to.min(t0 + iv) - from.max(t0)).max(0) as f64;
            let allowed = p.idle_rate.max(0.0) * iv as f64 / 3600.0 + 1e-9;
            if off_secs >= iv as f64 && w.value[slot] > allowed {
                w.flags[slot] |= flags::CONSUMED_WHILE_OFF;
            }
        }
    }
}
