//! What every simulated meter measures, in closed form.
//!
//! A consumer's cumulative energy (kWh; m³ for gas) at time `h` (hours since
//! [`EPOCH`]) is
//!
//! ```text
//! E(h) = off + p̄·h + Σⱼ p̄·aⱼ/ωⱼ·(sin ωⱼ(h − φⱼ) − sin(−ωⱼφⱼ))  + noise(h)
//! ```
//!
//! the integral of a rate `p̄·(1 + Σⱼ aⱼ cos ωⱼ(h − φⱼ))` with daily, half-daily,
//! weekly, yearly and half-yearly harmonics (evening peaks, weekends, winter heating
//! and summer cooling in Uzbekistan), plus appliance noise. The noise is a random
//! value per quarter hour, interpolated linearly, whose slope never exceeds the
//! smallest smooth rate: registers only ever go up, and any interval's consumption is
//! exact and the same whenever and wherever it is computed (any process, any restart).
//!
//! Because E is linear in its coefficients, the energy through a grid node (what its
//! balance meter measures) is the same closed form with summed coefficients: consumers
//! below it, illegal loads, and the technical loss of every link on the way
//! (`input = output / (1 − loss)`), evaluated in O(1) per reading. Only the noise needs
//! a sum per quarter hour over the consumers below ([`crate::grid::Grid::noise`]).

use std::f64::consts::TAU;

/// 2024-01-01T00:00:00Z, a Monday: hour 0 of the model.
pub const EPOCH: i64 = 1_704_067_200;
/// The noise changes every quarter hour.
pub const SLOT_H: f64 = 0.25;
const OMEGA: [f64; 5] = [TAU / 24.0, TAU / 12.0, TAU / 168.0, TAU / 8766.0, TAU / 4383.0];
const HOURS_PER_YEAR: f64 = 8766.0;

/// Hours since [`EPOCH`] of a Unix time in seconds.
pub fn hours(unix: f64) -> f64 {
    (unix - EPOCH as f64) / 3600.0
}

/// splitmix64's finaliser: a well-mixed 64-bit hash of `z`.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform number in [0, 1) from a hash input.
pub fn unit(x: u64) -> f64 {
    (mix(x) >> 11) as f64 / (1u64 << 53) as f64
}

/// FNV-1a of a name: stable identities for serials and node ids.
pub fn fnv(s: &[u8]) -> u64 {
    s.iter().fold(0xCBF2_9CE4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01B3))
}

/// A small deterministic generator (splitmix64 stream).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64)
    }

    pub fn chance(&mut self, p: f64) -> bool {
        self.uniform(0.0, 1.0) < p
    }
}

/// Who consumes: the shape of the load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// A household on a single-phase meter: evening peak, weekends, winter.
    Household,
    /// A shop, workshop or office on a three-phase meter: daytime, weekdays.
    Commercial,
    /// A household gas meter: heating in winter, morning and evening cooking.
    Gas,
}

/// Coefficients of the closed form; sums of them describe grid nodes.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Agg {
    k0: f64,
    k1: f64,
    s: [f64; 5],
    c: [f64; 5],
}

impl Agg {
    /// `self += w · other`.
    pub fn add_scaled(&mut self, other: &Agg, w: f64) {
        self.k0 += w * other.k0;
        self.k1 += w * other.k1;
        for j in 0..5 {
            self.s[j] += w * other.s[j];
            self.c[j] += w * other.c[j];
        }
    }

    /// The smooth cumulative value at hour `h`.
    pub fn energy(&self, h: f64) -> f64 {
        let mut e = self.k0 + self.k1 * h;
        for (j, w) in OMEGA.iter().enumerate() {
            let (sn, cs) = (w * h).sin_cos();
            e += sn * self.s[j] - cs * self.c[j];
        }
        e
    }

    /// The smooth rate (kW, m³/h) at hour `h`: the derivative of [`Agg::energy`].
    pub fn rate(&self, h: f64) -> f64 {
        let mut p = self.k1;
        for (j, w) in OMEGA.iter().enumerate() {
            let (sn, cs) = (w * h).sin_cos();
            p += w * (cs * self.s[j] + sn * self.c[j]);
        }
        p
    }

    /// The mean rate.
    pub fn mean_rate(&self) -> f64 {
        self.k1
    }
}

/// One consumer's (or illegal load's) consumption.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub agg: Agg,
    /// Noise stream identity.
    key: u64,
    /// Noise amplitude per quarter hour (kWh, m³): at most the smallest smooth
    /// consumption of a quarter hour, so the cumulative value never decreases.
    noise: f64,
}

impl Shape {
    fn build(pbar: f64, off: f64, amp: [f64; 5], phase: [f64; 5], noise_share: f64, key: u64) -> Shape {
        let mut agg = Agg { k0: off, k1: pbar, ..Agg::default() };
        for j in 0..5 {
            let (sn, cs) = (OMEGA[j] * phase[j]).sin_cos();
            agg.s[j] = pbar * amp[j] / OMEGA[j] * cs;
            agg.c[j] = pbar * amp[j] / OMEGA[j] * sn;
            agg.k0 += agg.c[j];
        }
        Shape { agg, key, noise: noise_share * pbar * SLOT_H }
    }

    /// The consumer with this serial, in a fleet of this seed.
    pub fn consumer(seed: u64, serial: &str, class: Class) -> Shape {
        let key = mix(seed ^ fnv(serial.as_bytes()));
        let mut r = Rng::new(key);
        let (annual, amp, phase, noise) = match class {
            Class::Household => {
                let s = r.uniform(0.7, 1.2);
                (
                    r.uniform(1500.0, 4000.0),
                    [0.30 * s, 0.12 * s, 0.05, 0.08, 0.12],
                    // Evening peak about 20:00 local (15:00 UTC), morning 08:00; Sunday;
                    // mid-January and mid-July.
                    [15.0 + r.uniform(-1.5, 1.5), 3.0 + r.uniform(-1.0, 1.0), 156.0, 360.0, 360.0],
                    0.2,
                )
            }
            Class::Commercial => (
                r.uniform(5000.0, 30000.0),
                [0.30, 0.08, 0.15, 0.06, 0.10],
                // Early-afternoon peak, Wednesday.
                [8.0 + r.uniform(-1.0, 1.0), 3.0, 60.0, 360.0, 360.0],
                0.2,
            ),
            Class::Gas => (
                r.uniform(600.0, 2400.0),
                [0.15, 0.08, 0.02, 0.55, 0.0],
                // Evening 19:00 and morning 07:00 local; heating in winter.
                [14.0 + r.uniform(-1.0, 1.0), 2.0, 156.0, 360.0, 0.0],
                0.1,
            ),
        };
        let pbar = annual / HOURS_PER_YEAR;
        // Registers had run 0-2 years before the model's epoch.
        let off = pbar * r.uniform(0.0, 2.0 * HOURS_PER_YEAR);
        Shape::build(pbar, off, amp, phase, noise, key)
    }

    /// An illegal connection of `kw` average load at a grid node (no meter, no noise).
    pub fn illegal(seed: u64, node: &str, kw: f64) -> Shape {
        let key = mix(seed ^ fnv(node.as_bytes()) ^ 0x1111);
        Shape::build(kw, 0.0, [0.3, 0.1, 0.05, 0.1, 0.1], [16.0, 3.0, 156.0, 360.0, 360.0], 0.0, key)
    }

    /// The noise value at quarter hour `k` (kWh, m³).
    pub fn noise_at(&self, k: i64) -> f64 {
        if self.noise == 0.0 {
            return 0.0;
        }
        self.noise * (unit(self.key ^ (k as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93)) - 0.5)
    }

    /// Cumulative consumption at hour `h` (kWh, m³).
    pub fn energy(&self, h: f64) -> f64 {
        let (k, frac) = slot(h);
        let (a, b) = (self.noise_at(k), self.noise_at(k + 1));
        self.agg.energy(h) + a + (b - a) * frac
    }

    /// Instantaneous rate at hour `h` (kW, m³/h).
    pub fn rate(&self, h: f64) -> f64 {
        let (k, _) = slot(h);
        self.agg.rate(h) + (self.noise_at(k + 1) - self.noise_at(k)) / SLOT_H
    }

    pub fn mean_rate(&self) -> f64 {
        self.agg.k1
    }
}

/// The quarter hour of `h` and the fraction into it.
pub fn slot(h: f64) -> (i64, f64) {
    let x = h / SLOT_H;
    let k = x.floor();
    (k as i64, x - k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_never_decrease_and_rates_match_differences() {
        for (i, class) in [Class::Household, Class::Commercial, Class::Gas].into_iter().enumerate() {
            let s = Shape::consumer(7, &format!("E{i:09}"), class);
            let mut last = s.energy(20_000.0);
            let step = 1.0 / 60.0;
            for n in 1..(24 * 60 * 14) {
                let h = 20_000.0 + n as f64 * step;
                let e = s.energy(h);
                assert!(e >= last, "{class:?} decreased at {h}: {last} -> {e}");
                // The rate is the derivative: compare with a central difference.
                let d = (s.energy(h + 1e-4) - s.energy(h - 1e-4)) / 2e-4;
                let (_, frac) = slot(h);
                if frac > 0.01 && frac < 0.99 {
                    assert!((d - s.rate(h)).abs() < 1e-3 * s.mean_rate(), "{d} vs {}", s.rate(h));
                }
                last = e;
            }
        }
    }

    #[test]
    fn yearly_consumption_is_what_the_class_says() {
        let s = Shape::consumer(1, "E000000001", Class::Household);
        let year = s.energy(8766.0 * 2.0) - s.energy(8766.0);
        assert!((1500.0..4000.0).contains(&year), "{year} kWh");
        let g = Shape::consumer(1, "G000000001", Class::Gas);
        // Winter (January) burns several times what summer (July) does.
        let jan = g.energy(24.0 * 31.0) - g.energy(0.0);
        let jul = g.energy(24.0 * 212.0) - g.energy(24.0 * 181.0);
        assert!(jan > 2.5 * jul, "January {jan} m³, July {jul} m³");
    }

    #[test]
    fn sums_of_coefficients_are_sums_of_energies() {
        let shapes: Vec<Shape> = (0..50).map(|i| Shape::consumer(3, &format!("E{i:09}"), Class::Household)).collect();
        let mut agg = Agg::default();
        for s in &shapes {
            agg.add_scaled(&s.agg, 1.0 / (1.0 - 0.03));
        }
        for h in [0.0, 123.4, 20_000.75] {
            let direct: f64 = shapes.iter().map(|s| s.agg.energy(h)).sum::<f64>() / 0.97;
            assert!((agg.energy(h) - direct).abs() < 1e-6 * direct, "{h}");
            let rate: f64 = shapes.iter().map(|s| s.agg.rate(h)).sum::<f64>() / 0.97;
            assert!((agg.rate(h) - rate).abs() < 1e-9 * rate.abs().max(1.0));
        }
    }

    #[test]
    fn the_same_serial_gives_the_same_meter() {
        let a = Shape::consumer(5, "E000000042", Class::Household);
        let b = Shape::consumer(5, "E000000042", Class::Household);
        let c = Shape::consumer(6, "E000000042", Class::Household);
        assert_eq!(a.energy(1000.3), b.energy(1000.3));
        assert_ne!(a.energy(1000.3), c.energy(1000.3));
    }
}
