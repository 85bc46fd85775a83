//! What the balance meters measure: the energy into each grid node, from everything
//! below it.
//!
//! `input(n) = (Σ input(flow children) + Σ consumers at n + illegal loads at n) / (1 − loss(n))`
//!
//! The smooth part is a sum of coefficients fixed at start ([`crate::model::Agg`]);
//! the appliance noise is summed per quarter hour over the consumers below (cached);
//! consumers disconnected by the head-end are taken out for the time they were off.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use crate::fleet::Fleet;
use crate::model::{slot, Agg, Shape, SLOT_H};

/// A consumer switched off by its disconnector, for the time it was off.
#[derive(Clone, Copy, Debug)]
pub struct Outage {
    pub node: u32,
    pub shape: Shape,
    pub off_h: f64,
    pub on_h: Option<f64>,
}

impl Outage {
    /// Energy the consumer did not take up to hour `h`.
    pub fn missing(&self, h: f64) -> f64 {
        if h <= self.off_h {
            return 0.0;
        }
        let end = self.on_h.map_or(h, |on| on.min(h));
        self.shape.energy(end) - self.shape.energy(self.off_h)
    }
}

pub struct Grid {
    flow_parent: Vec<Option<u32>>,
    keep: Vec<f64>,
    agg: Vec<Agg>,
    /// Nodes deepest first, so a pass adds children before their parents.
    order: Vec<u32>,
    members: Vec<(u32, Shape)>,
    noise: RefCell<HashMap<i64, Rc<Vec<f64>>>>,
    outages: RefCell<Vec<Outage>>,
}

impl Grid {
    pub fn new(fleet: &Fleet) -> Grid {
        let n = fleet.nodes.len();
        let flow_parent: Vec<Option<u32>> = fleet.nodes.iter().map(|x| x.flow_parent).collect();
        let keep: Vec<f64> = fleet.nodes.iter().map(|x| 1.0 - x.loss.clamp(0.0, 0.9)).collect();
        let depth = |mut i: u32| {
            let mut d = 0;
            while let Some(p) = flow_parent[i as usize] {
                d += 1;
                i = p;
                if d > 64 {
                    break;
                }
            }
            d
        };
        let mut order: Vec<u32> = (0..n as u32).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(depth(i)));
        let mut direct = vec![Agg::default(); n];
        for (node, s) in &fleet.members {
            direct[*node as usize].add_scaled(&s.agg, 1.0);
        }
        let mut agg = vec![Agg::default(); n];
        for &i in &order {
            let i = i as usize;
            let mut a = agg[i];
            a.add_scaled(&direct[i], 1.0);
            let mut scaled = Agg::default();
            scaled.add_scaled(&a, 1.0 / keep[i]);
            agg[i] = scaled;
            if let Some(p) = flow_parent[i] {
                let add = agg[i];
                agg[p as usize].add_scaled(&add, 1.0);
            }
        }
        Grid {
            flow_parent,
            keep,
            agg,
            order,
            members: fleet.members.clone(),
            noise: RefCell::new(HashMap::new()),
            outages: RefCell::new(Vec::new()),
        }
    }

    /// The noise of every node's input at quarter hour `k`.
    fn noise(&self, k: i64) -> Rc<Vec<f64>> {
        if let Some(v) = self.noise.borrow().get(&k) {
            return v.clone();
        }
        let mut tot = vec![0.0; self.agg.len()];
        for (node, s) in &self.members {
            tot[*node as usize] += s.noise_at(k);
        }
        for &i in &self.order {
            let i = i as usize;
            tot[i] /= self.keep[i];
            if let Some(p) = self.flow_parent[i] {
                tot[p as usize] += tot[i];
            }
        }
        let v = Rc::new(tot);
        let mut cache = self.noise.borrow_mut();
        if cache.len() > 16 {
            let oldest = *cache.keys().min().unwrap_or(&k);
            cache.remove(&oldest);
        }
        cache.insert(k, v.clone());
        v
    }

    /// Weight of a consumer at `from` in the input of `node` (None: not below it).
    fn weight(&self, from: u32, node: u32) -> Option<f64> {
        let mut w = 1.0;
        let mut p = Some(from);
        while let Some(x) = p {
            w /= self.keep[x as usize];
            if x == node {
                return Some(w);
            }
            p = self.flow_parent[x as usize];
        }
        None
    }

    /// Cumulative energy into `node` at hour `h` (kWh, m³), as its balance meter counts.
    pub fn energy(&self, node: u32, h: f64) -> f64 {
        let (k, frac) = slot(h);
        let (a, b) = (self.noise(k)[node as usize], self.noise(k + 1)[node as usize]);
        let mut e = self.agg[node as usize].energy(h) + a + (b - a) * frac;
        for o in self.outages.borrow().iter() {
            if let Some(w) = self.weight(o.node, node) {
                e -= w * o.missing(h);
            }
        }
        e
    }

    /// Power into `node` at hour `h` (kW, m³/h).
    pub fn rate(&self, node: u32, h: f64) -> f64 {
        let (k, _) = slot(h);
        let mut p = self.agg[node as usize].rate(h)
            + (self.noise(k + 1)[node as usize] - self.noise(k)[node as usize]) / SLOT_H;
        for o in self.outages.borrow().iter() {
            let off = o.off_h < h && o.on_h.is_none_or(|on| on > h);
            if off {
                if let Some(w) = self.weight(o.node, node) {
                    p -= w * o.shape.rate(h);
                }
            }
        }
        p.max(0.0)
    }

    pub fn mean_rate(&self, node: u32) -> f64 {
        self.agg[node as usize].mean_rate()
    }

    /// Records a disconnection; returns its index for [`Grid::reconnected`].
    pub fn disconnected(&self, o: Outage) -> usize {
        let mut v = self.outages.borrow_mut();
        v.push(o);
        v.len() - 1
    }

    pub fn reconnected(&self, index: usize, on_h: f64) {
        if let Some(o) = self.outages.borrow_mut().get_mut(index) {
            o.on_h = Some(on_h);
        }
    }
}
