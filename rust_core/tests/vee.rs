//! VEE: interval consumption from cumulative registers, against hand-computed answers.

use headend_core::vee::{derive, flags, Intervals, SeriesParams, VeeConfig, VeeStats, ESTIMATED, INVALID, MEASURED};

const H: i64 = 3600;
/// 2026-11-02 00:00 UTC (05:00 in Tashkent).
const T0: i64 = 1_793_577_600;

fn run(params: &[SeriesParams], samples: &[(u32, i64, f64)]) -> (Intervals, VeeStats) {
    run_cfg(&VeeConfig::default(), params, samples, &[])
}

fn run_cfg(
    cfg: &VeeConfig,
    params: &[SeriesParams],
    samples: &[(u32, i64, f64)],
    off: &[(u32, i64, i64)],
) -> (Intervals, VeeStats) {
    let series: Vec<u32> = samples.iter().map(|s| s.0).collect();
    let ts: Vec<i64> = samples.iter().map(|s| s.1).collect();
    let value: Vec<f64> = samples.iter().map(|s| s.2).collect();
    derive(cfg, params, &series, &ts, &value, off).expect("derive")
}

fn plain() -> SeriesParams {
    SeriesParams { max_rate: 30.0, ..SeriesParams::default() }
}

/// (hour offset from T0, value, quality, flags) of series 0.
fn rows(iv: &Intervals) -> Vec<(i64, f64, u8, u16)> {
    (0..iv.len())
        .map(|k| ((iv.start[k] - T0) / H, (iv.value[k] * 1e6).round() / 1e6, iv.quality[k], iv.flags[k]))
        .collect()
}

/// Quarter-hour samples of a register rising `per_q` a quarter, from `from` for `n` quarters.
fn quarters(series: u32, from: i64, start_value: f64, per_q: f64, n: i64) -> Vec<(u32, i64, f64)> {
    (0..=n).map(|q| (series, from + q * 900, start_value + per_q * q as f64)).collect()
}

#[test]
fn steady_quarter_hours_give_measured_hours() {
    let (iv, stats) = run(&[plain()], &quarters(0, T0, 1000.0, 0.25, 12));
    assert_eq!(rows(&iv), vec![(0, 1.0, MEASURED, 0), (1, 1.0, MEASURED, 0), (2, 1.0, MEASURED, 0)]);
    assert_eq!(stats.samples, 13);
}

#[test]
fn partial_hours_at_the_edges_are_not_emitted_and_unaligned_pairs_split_by_time() {
    // Samples at 00:30, 01:15, 02:10, 03:40: only hours 01 and 02 are wholly covered.
    let s = [(0, T0 + 1800, 10.0), (0, T0 + 4500, 13.0), (0, T0 + 7800, 14.1), (0, T0 + 13200, 17.1)];
    let (iv, _) = run(&[plain()], &s);
    // Hour 01: 15 min of the 45-min pair (3.0 -> 1.0) + 45 min of the 55-min pair (1.1 -> 0.9).
    // Hour 02: 10 min of that pair (0.2) + 50 min of the 90-min pair (3.0 -> 5/9 * 3.0).
    let hour2 = 0.2 + 3.0 * 50.0 / 90.0;
    let want = vec![(1, 1.9, MEASURED, 0), (2, (hour2 * 1e6_f64).round() / 1e6, ESTIMATED, flags::GAP)];
    assert_eq!(rows(&iv), want);
}

#[test]
fn a_gap_is_spread_linearly_and_estimated_then_late_data_replaces_it() {
    let mut s = quarters(0, T0, 500.0, 0.5, 4); // 00:00 .. 01:00, 2 kWh
    s.push((0, T0 + 5 * H, 510.0)); // back at 05:00: 8 kWh over four hours
    let (iv, _) = run(&[plain()], &s);
    assert_eq!(
        rows(&iv),
        vec![
            (0, 2.0, MEASURED, 0),
            (1, 2.0, ESTIMATED, flags::GAP),
            (2, 2.0, ESTIMATED, flags::GAP),
            (3, 2.0, ESTIMATED, flags::GAP),
            (4, 2.0, ESTIMATED, flags::GAP),
        ]
    );
    // The meter's buffered readings arrive days later: hourly 1, 3, 1 and 3 kWh.
    s.extend([(0, T0 + 2 * H, 503.0), (0, T0 + 3 * H, 506.0), (0, T0 + 4 * H, 507.0)]);
    let (late, _) = run(&[plain()], &s);
    assert_eq!(
        rows(&late),
        vec![
            (0, 2.0, MEASURED, 0),
            (1, 1.0, MEASURED, 0),
            (2, 3.0, MEASURED, 0),
            (3, 1.0, MEASURED, 0),
            (4, 3.0, MEASURED, 0),
        ]
    );
}

#[test]
fn a_gap_with_a_typical_profile_follows_it() {
    // Profile by Tashkent hour: T0 is 05:00 local. Hours 06..08 local weigh 1, 2, 5.
    let mut profile = [0.0; 24];
    profile[6] = 1.0;
    profile[7] = 2.0;
    profile[8] = 5.0;
    let p = SeriesParams { max_rate: 30.0, profile: Some(profile), ..SeriesParams::default() };
    let s = [(0, T0, 0.0), (0, T0 + H, 1.0), (0, T0 + 4 * H, 9.0)];
    let (iv, _) = run(std::slice::from_ref(&p), &s);
    let est = ESTIMATED;
    let f = flags::GAP | flags::PROFILE;
    assert_eq!(rows(&iv), vec![(0, 1.0, MEASURED, 0), (1, 1.0, est, f), (2, 2.0, est, f), (3, 5.0, est, f)]);
    // A profile that is zero over the whole gap falls back to time.
    let s = [(0, T0 + 10 * H, 0.0), (0, T0 + 12 * H, 4.0)];
    let (iv, _) = run(&[p], &s);
    assert_eq!(rows(&iv), vec![(10, 2.0, est, flags::GAP), (11, 2.0, est, flags::GAP)]);
}

#[test]
fn a_reset_and_a_negative_delta_are_invalid_and_counting_resumes() {
    let s = [
        (0, T0, 100.0),
        (0, T0 + H, 101.0),
        (0, T0 + 2 * H, 0.4), // the register restarted
        (0, T0 + 3 * H, 1.4),
        (0, T0 + 4 * H, 0.9), // went down by 0.5, not a reset
        (0, T0 + 5 * H, 2.0),
    ];
    let (iv, _) = run(&[plain()], &s);
    assert_eq!(
        rows(&iv),
        vec![
            (0, 1.0, MEASURED, 0),
            (1, 0.0, INVALID, flags::RESET),
            (2, 1.0, MEASURED, 0),
            (3, 0.0, INVALID, flags::NEGATIVE),
            (4, 1.1, MEASURED, 0),
        ]
    );
}

#[test]
fn a_rollover_is_counted_and_a_spike_is_invalid() {
    let p = SeriesParams { max_rate: 10.0, rollover: 100_000.0, ..SeriesParams::default() };
    let s = [
        (0, T0, 99_998.0),
        (0, T0 + H, 99_999.5),
        (0, T0 + 2 * H, 0.7),  // passed 99,999.99... : 1.2 kWh
        (0, T0 + 3 * H, 60.7), // 60 kWh in an hour on a 10 kW connection
        (0, T0 + 4 * H, 65.7),
    ];
    let (iv, _) = run(&[p], &s);
    assert_eq!(
        rows(&iv),
        vec![
            (0, 1.5, MEASURED, 0),
            (1, 1.2, MEASURED, flags::ROLLOVER),
            (2, 0.0, INVALID, flags::SPIKE),
            (3, 5.0, MEASURED, 0),
        ]
    );
}

#[test]
fn clock_problems_duplicates_and_future_samples() {
    let cfg = VeeConfig { now: T0 + 3 * H, ..VeeConfig::default() };
    let s = [
        (0, T0, 10.0),
        (0, T0 + H, 11.0),
        (0, T0 + H, 11.0), // sent twice: harmless
        (0, T0 + 2 * H, 12.0),
        (0, T0 + 2 * H, 12.5), // same time, another value
        (0, T0 + 3 * H, 13.0),
        (0, T0 + 4 * H, 14.0), // an hour in the future
        (0, T0 + 3 * H + 600, f64::NAN),
    ];
    let (iv, stats) = run_cfg(&cfg, &[plain()], &s, &[]);
    assert_eq!(
        rows(&iv),
        vec![
            (0, 1.0, MEASURED, 0),
            (1, 0.0, INVALID, flags::DUPLICATE_CONFLICT),
            (2, 0.0, INVALID, flags::DUPLICATE_CONFLICT),
        ]
    );
    assert_eq!(stats, VeeStats { samples: 8, future: 1, not_finite: 1, duplicates: 1, conflicts: 1 });
}

#[test]
fn order_does_not_matter_and_reruns_are_identical() {
    let mut s = quarters(0, T0, 0.0, 0.3, 40);
    s.extend(quarters(1, T0 + 450, 7.0, 0.1, 40));
    s.push((2, T0, 5.0));
    s.push((2, T0 + 9 * H, 50.0));
    let params = vec![plain(), plain(), plain()];
    let (a, _) = run(&params, &s);
    let mut shuffled = s.clone();
    shuffled.reverse();
    shuffled.swap(3, 17);
    let (b, _) = run(&params, &shuffled);
    let (c, _) = run(&params, &s);
    assert_eq!(a, b);
    assert_eq!(a, c);
    // Energy is conserved: measured and estimated hours add up to the register's rise
    // over the whole hours covered.
    let total2: f64 = (0..a.len()).filter(|&k| a.series[k] == 2).map(|k| a.value[k]).sum();
    assert!((total2 - 45.0).abs() < 1e-9, "{total2}");
    assert_eq!((0..a.len()).filter(|&k| a.series[k] == 0).count(), 10);
    assert_eq!((0..a.len()).filter(|&k| a.series[k] == 1).count(), 9);
}

#[test]
fn a_gap_too_long_is_not_estimated() {
    let cfg = VeeConfig { max_estimate_span: 2 * 86_400, ..VeeConfig::default() };
    let s = [(0, T0, 0.0), (0, T0 + H, 1.0), (0, T0 + H + 3 * 86_400, 50.0), (0, T0 + 2 * H + 3 * 86_400, 51.0)];
    let (iv, _) = run_cfg(&cfg, &[plain()], &s, &[]);
    assert_eq!(iv.len(), 2);
    assert_eq!(iv.start, vec![T0, T0 + H + 3 * 86_400]);
    assert_eq!(iv.quality, vec![MEASURED, MEASURED]);
}

#[test]
fn switched_off_hours_are_marked_and_consumption_in_them_flagged() {
    let p = SeriesParams { max_rate: 30.0, idle_rate: 0.01, ..SeriesParams::default() };
    let s = [
        (0, T0, 0.0),
        (0, T0 + H, 2.0),
        (0, T0 + 2 * H, 2.0), // off: nothing
        (0, T0 + 3 * H, 3.5), // off, and 1.5 kWh went through: a bypass
        (0, T0 + 4 * H, 4.0),
    ];
    let off = [(0, T0 + H + 1800, T0 + 3 * H)]; // from 01:30 to 03:00
    let (iv, _) = run_cfg(&VeeConfig::default(), &[p], &s, &off);
    let d = flags::DISCONNECTED;
    assert_eq!(
        rows(&iv),
        vec![
            (0, 2.0, MEASURED, 0),
            (1, 0.0, MEASURED, d), // half the hour off, nothing to flag
            (2, 1.5, MEASURED, d | flags::CONSUMED_WHILE_OFF),
            (3, 0.5, MEASURED, 0),
        ]
    );
}

#[test]
fn quarter_hour_intervals() {
    let cfg = VeeConfig { interval: 900, measured_gap: 900, ..VeeConfig::default() };
    let mut s = quarters(0, T0, 0.0, 0.25, 2);
    s.push((0, T0 + 4 * 900, 1.5));
    let (iv, _) = run_cfg(&cfg, &[plain()], &s, &[]);
    assert_eq!(iv.value, vec![0.25, 0.25, 0.5, 0.5]);
    assert_eq!(iv.quality, vec![MEASURED, MEASURED, ESTIMATED, ESTIMATED]);
}

#[test]
fn bad_batches_are_refused_with_the_reason() {
    let cfg = VeeConfig::default();
    let e = derive(&cfg, &[plain()], &[0, 0], &[T0], &[1.0], &[]).unwrap_err();
    assert!(e.to_string().contains("columns differ in length"), "{e}");
    let e = derive(&cfg, &[plain()], &[3], &[T0], &[1.0], &[]).unwrap_err();
    assert!(e.to_string().contains("series 3 has no parameters"), "{e}");
    let bad = VeeConfig { interval: 7, ..VeeConfig::default() };
    let e = derive(&bad, &[plain()], &[0], &[T0], &[1.0], &[]).unwrap_err();
    assert!(e.to_string().contains("does not divide an hour"), "{e}");
    // An empty batch is no error.
    let (iv, stats) = derive(&cfg, &[], &[], &[], &[], &[]).unwrap();
    assert!(iv.is_empty());
    assert_eq!(stats.samples, 0);
}
