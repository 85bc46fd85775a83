//! VEE throughput (opt-in: `cargo test --release -p headend-core --test vee_bench -- --ignored --nocapture`).
//! One day of quarter-hour register samples for 200,000 meters, sorted as ClickHouse
//! returns them (by meter, then time); reports samples per second on one core.

use headend_core::vee::{derive, SeriesParams, VeeConfig};
use std::time::Instant;

#[test]
#[ignore = "benchmark"]
fn vee_throughput() {
    let meters = 200_000u32;
    let per_day = 96 + 1;
    let t0 = 1_793_577_600i64;
    let n = meters as usize * per_day;
    let (mut series, mut ts, mut value) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for m in 0..meters {
        let mut v = f64::from(m % 9000) * 3.7;
        for q in 0..per_day as i64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x % 200 == 0 {
                continue; // a missed push now and then: gaps to estimate
            }
            v += (x % 1000) as f64 / 1000.0;
            series.push(m);
            ts.push(t0 + q * 900);
            value.push(v);
        }
    }
    let params = vec![SeriesParams { max_rate: 30.0, ..SeriesParams::default() }; meters as usize];
    let cfg = VeeConfig::default();
    let mut best = f64::INFINITY;
    let mut rows = 0;
    for _ in 0..5 {
        let t = Instant::now();
        let (iv, _) = derive(&cfg, &params, &series, &ts, &value, &[]).unwrap();
        best = best.min(t.elapsed().as_secs_f64());
        rows = iv.len();
    }
    println!(
        "vee: {} samples -> {} hourly rows in {:.3} s: {:.1} M samples/s on one core",
        series.len(),
        rows,
        best,
        series.len() as f64 / best / 1e6
    );
    // A meter that missed its first or last push of the day has an edge hour fewer.
    let full = meters as usize * 24;
    assert!(rows <= full && rows * 100 >= full * 99, "{rows} of {full}");
}
