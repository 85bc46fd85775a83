//! The fleet a simulator process runs: meters.csv, grid.csv and ground_truth.json as
//! `python -m loadtest grid` writes them, split into partitions for several processes.
//!
//! Every process reads the whole fleet (so any process knows what any balance meter
//! must measure) but builds meters, keys and connections only for its own partition.
//! Partitions are whole backbone substations (electricity) and gas stations, so a
//! substation's balance meters and every consumer below them live in one process and
//! see each other's disconnections; the generation meter lives in partition 0.

use std::collections::HashMap;
use std::fs::File;
use std::net::SocketAddr;
use std::path::Path;

use headend_core::security::{Keys, SystemTitle};

use crate::model::{fnv, mix, unit, Class, Shape};

/// What a meter measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Model {
    /// Single-phase electricity meter (profile e1ph).
    E1ph,
    /// Three-phase electricity meter (profile e3ph).
    E3ph,
    /// Gas meter with valve (profile gas-g4).
    Gas,
}

impl Model {
    fn parse(s: &str) -> Option<Model> {
        Some(match s {
            "e1ph" => Model::E1ph,
            "e3ph" => Model::E3ph,
            "gas-g4" => Model::Gas,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Model::E1ph => "e1ph",
            Model::E3ph => "e3ph",
            Model::Gas => "gas-g4",
        }
    }

    pub fn is_gas(self) -> bool {
        self == Model::Gas
    }
}

/// How a thief's meter misreports.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Theft {
    /// Current goes around the meter: it registers `factor` (a few per cent) of it.
    Bypass(f64),
    /// Magnet or opened meter: registers `factor` (30-70 %).
    Tamper(f64),
    /// Phase and neutral swapped: consumption shows as export.
    Reverse,
}

/// One meter of this process.
pub struct MeterSpec {
    pub serial: String,
    pub model: Model,
    pub balance: bool,
    /// Grid node (index into [`Fleet::nodes`]).
    pub node: u32,
    pub title: Option<SystemTitle>,
    pub keys: Option<Keys>,
    /// The authentication key (also needed beside a dedicated key).
    pub ak: [u8; 16],
    pub password: Vec<u8>,
    /// Consumption (consumers only; balance meters read their node).
    pub shape: Option<Shape>,
    pub theft: Option<Theft>,
    /// Event code of the tamper alarm this thief's meter raises, if any.
    pub alarm: Option<u16>,
    /// The meter clock's error, seconds (meter time − true time).
    pub drift: i64,
    /// Stable identity for per-meter random streams.
    pub key: u64,
    /// Where it listens for the head-end (HDLC or wrapper), if it does not connect.
    pub address: Option<(bool, SocketAddr)>,
    /// The meter's master key (KEK): new keys arrive wrapped under it.
    pub kek: Option<[u8; 16]>,
    /// Its firmware refuses a key transfer (the head-end must leave its keys alone).
    pub refuses_keys: bool,
    /// How its firmware upgrade misbehaves.
    pub image_faults: crate::image::Faults,
}

/// A grid node as the simulator needs it.
pub struct Node {
    pub id: String,
    pub level: String,
    parent: Option<u32>,
    /// The node whose balance meter this node's input flows through (generation feeds
    /// the backbone substations).
    pub flow_parent: Option<u32>,
    pub loss: f64,
    pub balance: bool,
}

/// One TCP connection: a meter of its own or a data concentrator with several.
pub struct Endpoint {
    pub meters: Vec<u32>,
    pub hdlc: bool,
    pub concentrator: bool,
    /// A meter that listens here for the head-end instead of connecting to it.
    pub listen: Option<SocketAddr>,
    /// A meter on a datagram network (NB-IoT): the wrapper over UDP (IEC 62056-47).
    pub udp: bool,
}

/// A meters.csv `address`: (framing is HDLC, where to listen). The simulated meter
/// answers on wrapper port 1 and HDLC server address 1/17 whatever the path says.
pub fn parse_address(text: &str) -> Result<Option<(bool, SocketAddr)>, String> {
    if text.is_empty() {
        return Ok(None);
    }
    let (hdlc, rest) = match text.split_once("://") {
        Some(("hdlc", r)) => (true, r),
        Some(("wrapper", r)) => (false, r),
        Some((scheme, _)) => return Err(format!("address {text:?}: unknown scheme {scheme:?}")),
        None => (false, text),
    };
    let hostport = rest.split('/').next().unwrap_or("");
    let addr: SocketAddr = hostport.parse().map_err(|e| format!("address {text:?}: {e} (an IP address and port)"))?;
    Ok(Some((hdlc, addr)))
}

/// Options that shape the fleet (not the run).
#[derive(Clone, Debug)]
pub struct FleetOptions {
    pub partition: u32,
    pub partitions: u32,
    /// Share of transformers whose consumers sit behind one data concentrator.
    pub concentrators: f64,
    /// Share of connections that use HDLC framing instead of the wrapper.
    pub hdlc: f64,
    /// Share of the meters on their own (not behind a concentrator, not listening, not
    /// on HDLC) that push over UDP, as NB-IoT meters do.
    pub udp: f64,
    /// Share of consumer meters whose clocks drift by minutes.
    pub drifting: f64,
    /// Run only the first N meters of the partition (0: all).
    pub limit: usize,
    /// Run only these meters (empty: all of the partition).
    pub only: Vec<String>,
    /// Run only the meters on grid nodes whose id starts with one of these (a region's
    /// subtree, "UZ-SA"; empty: all).
    pub under: Vec<String>,
    /// Meters whose firmware refuses a key transfer: these serials, and this share of
    /// the rest.
    pub refuse_keys: Vec<String>,
    pub refuse_keys_share: f64,
    /// Meters whose firmware fails every image's verification; whose link drops once
    /// halfway through an image transfer.
    pub fail_verify: Chosen,
    pub drop_transfer: Chosen,
    /// Keys the head-end gave meters, kept across runs as a meter keeps them in its
    /// non-volatile memory: `serial,EK,AK` lines, the last one of a serial wins.
    pub keys_file: Option<std::path::PathBuf>,
}

/// Meters chosen by serial, or a share of them.
#[derive(Clone, Debug, Default)]
pub struct Chosen {
    pub serials: Vec<String>,
    pub share: f64,
}

impl Chosen {
    /// "0.05" (a share) or "S[,S...]" (serials).
    pub fn parse(v: &str) -> Result<Chosen, String> {
        match v.parse::<f64>() {
            Ok(f) if (0.0..=1.0).contains(&f) => Ok(Chosen { serials: Vec::new(), share: f }),
            Ok(f) => Err(format!("{f} is not a share between 0 and 1")),
            Err(_) => Ok(Chosen { serials: v.split(',').map(|s| s.trim().to_string()).collect(), share: 0.0 }),
        }
    }

    fn has(&self, serial: &str, draw: f64) -> bool {
        self.serials.iter().any(|s| s == serial) || draw < self.share
    }
}

pub struct Fleet {
    pub seed: u64,
    pub nodes: Vec<Node>,
    pub meters: Vec<MeterSpec>,
    pub endpoints: Vec<Endpoint>,
    /// Consumers (and illegal loads) under this process's balance meters: (node, shape).
    pub members: Vec<(u32, Shape)>,
    /// Meters in the whole fleet, all partitions.
    pub fleet_size: usize,
}

fn err<E: std::fmt::Display>(what: impl std::fmt::Display) -> impl FnOnce(E) -> String {
    move |e| format!("{what}: {e}")
}

fn hex16(s: &str, what: &str, line: usize) -> Result<[u8; 16], String> {
    let b = hex(s).ok_or_else(|| format!("meters.csv line {line}: {what} is not hex"))?;
    b.try_into().map_err(|_| format!("meters.csv line {line}: {what} is not 16 bytes"))
}

pub fn hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

struct Row {
    serial: String,
    role_balance: bool,
    node: u32,
    model: Model,
    title: String,
    ek: String,
    ak: String,
    password: String,
    address: Option<(bool, SocketAddr)>,
    kek: String,
    line: usize,
}

impl Fleet {
    pub fn load(dir: &Path, opts: &FleetOptions) -> Result<Fleet, String> {
        let truth: serde_json::Value = {
            let p = dir.join("ground_truth.json");
            let f = File::open(&p).map_err(err(p.display()))?;
            serde_json::from_reader(std::io::BufReader::new(f)).map_err(err(p.display()))?
        };
        let seed = truth["seed"].as_u64().ok_or("ground_truth.json: no seed")?;
        let loss_of = |id: &str| truth["technical_loss"][id].as_f64().unwrap_or(0.0);

        // Grid.
        let mut nodes: Vec<Node> = Vec::new();
        let mut index: HashMap<String, u32> = HashMap::new();
        let mut parents: Vec<String> = Vec::new();
        let p = dir.join("grid.csv");
        let mut rd = csv::Reader::from_path(&p).map_err(err(p.display()))?;
        for (i, rec) in rd.records().enumerate() {
            let rec = rec.map_err(err(format!("grid.csv line {}", i + 2)))?;
            let (id, parent, level) = (rec.get(0).unwrap_or(""), rec.get(1).unwrap_or(""), rec.get(2).unwrap_or(""));
            if id.is_empty() {
                return Err(format!("grid.csv line {}: empty node_id", i + 2));
            }
            index.insert(id.to_string(), nodes.len() as u32);
            parents.push(parent.to_string());
            nodes.push(Node {
                id: id.to_string(),
                level: level.to_string(),
                parent: None,
                flow_parent: None,
                loss: loss_of(id),
                balance: false,
            });
        }
        for (i, p) in parents.iter().enumerate() {
            if !p.is_empty() {
                let pi = *index.get(p).ok_or_else(|| format!("grid.csv: parent {p} of {} is unknown", nodes[i].id))?;
                nodes[i].parent = Some(pi);
            }
        }

        // Meters (all of them: the balance meters need their consumers).
        let mut rows = Vec::new();
        let p = dir.join("meters.csv");
        let mut rd = csv::Reader::from_path(&p).map_err(err(p.display()))?;
        for (i, rec) in rd.records().enumerate() {
            let line = i + 2;
            let rec = rec.map_err(err(format!("meters.csv line {line}")))?;
            let f = |k: usize| rec.get(k).unwrap_or("").to_string();
            let node = *index.get(&f(3)).ok_or_else(|| format!("meters.csv line {line}: unknown node {}", f(3)))?;
            let model = Model::parse(&f(5))
                .ok_or_else(|| format!("meters.csv line {line}: model {:?} is not simulated", f(5)))?;
            let role_balance = f(2) == "balance";
            if role_balance {
                nodes[node as usize].balance = true;
            }
            rows.push(Row {
                serial: f(0),
                role_balance,
                node,
                model,
                title: f(6),
                ek: f(7),
                ak: f(8),
                password: f(9),
                address: parse_address(&f(12)).map_err(|e| format!("meters.csv line {line}: {e}"))?,
                kek: f(13),
                line,
            });
        }
        let fleet_size = rows.len();
        if let Some(p) = &opts.keys_file {
            if let Ok(text) = std::fs::read_to_string(p) {
                let given: HashMap<&str, (&str, &str)> = text
                    .lines()
                    .filter_map(|l| {
                        let mut f = l.split(',');
                        Some((f.next()?, (f.next()?, f.next()?)))
                    })
                    .collect();
                for r in rows.iter_mut() {
                    if let Some((ek, ak)) = given.get(r.serial.as_str()) {
                        r.ek = ek.to_string();
                        r.ak = ak.to_string();
                    }
                }
            }
        }

        // Energy flows up through balance meters; generation feeds the backbone.
        let generation = truth["generation"].as_str().and_then(|g| index.get(g).copied());
        for i in 0..nodes.len() {
            let mut p = nodes[i].parent;
            while let Some(pi) = p {
                if nodes[pi as usize].balance {
                    break;
                }
                p = nodes[pi as usize].parent;
            }
            if p.is_none() && nodes[i].level == "backbone_substation" {
                p = generation;
            }
            nodes[i].flow_parent = p;
        }

        // Partitions: whole backbone substations and gas stations, biggest first onto
        // the least loaded partition; the generation meter in partition 0.
        let root_of = |mut n: u32| -> Option<u32> {
            loop {
                let node = &nodes[n as usize];
                if node.level == "backbone_substation" || node.level == "gas_station" {
                    return Some(n);
                }
                n = node.parent?;
            }
        };
        let mut weight: HashMap<u32, usize> = HashMap::new();
        for r in &rows {
            if let Some(root) = root_of(r.node) {
                *weight.entry(root).or_default() += 1;
            }
        }
        let mut roots: Vec<(u32, usize)> = weight.into_iter().collect();
        roots.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let parts = opts.partitions.max(1) as usize;
        let mut load = vec![0usize; parts];
        load[0] += 1; // the generation meter
        let mut part_of_root: HashMap<u32, u32> = HashMap::new();
        for (root, w) in roots {
            let k = (0..parts).min_by_key(|&k| (load[k], k)).unwrap_or(0);
            load[k] += w;
            part_of_root.insert(root, k as u32);
        }
        let part_of = |n: u32| root_of(n).and_then(|r| part_of_root.get(&r).copied()).unwrap_or(0);

        // Which balance nodes are ours, and so which consumers' noise we must sum.
        let local_balance: Vec<bool> =
            (0..nodes.len()).map(|n| nodes[n].balance && part_of(n as u32) == opts.partition).collect();
        let needed = |n: u32| -> bool {
            let mut p = Some(n);
            while let Some(x) = p {
                if local_balance[x as usize] {
                    return true;
                }
                p = nodes[x as usize].flow_parent;
            }
            false
        };
        let flow_node = |n: u32| -> Option<u32> {
            if nodes[n as usize].balance {
                Some(n)
            } else {
                nodes[n as usize].flow_parent
            }
        };

        let thieves: HashMap<&str, &serde_json::Value> = truth["thieves"]
            .as_array()
            .map(|a| a.iter().filter_map(|t| Some((t["serial"].as_str()?, t))).collect())
            .unwrap_or_default();
        let mut members = Vec::new();
        if let Some(ill) = truth["illegal"].as_array() {
            for x in ill {
                let (Some(node), Some(kw)) = (x["node"].as_str(), x["kw"].as_f64()) else { continue };
                let Some(&n) = index.get(node) else { continue };
                if needed(n) {
                    members.push((n, Shape::illegal(seed, node, kw)));
                }
            }
        }

        let mut meters = Vec::new();
        for r in rows {
            let class = match r.model {
                Model::E1ph => Class::Household,
                Model::E3ph => Class::Commercial,
                Model::Gas => Class::Gas,
            };
            let local = part_of(r.node) == opts.partition
                && (opts.limit == 0 || meters.len() < opts.limit)
                && (opts.only.is_empty() || opts.only.contains(&r.serial))
                && (opts.under.is_empty()
                    || opts.under.iter().any(|p| nodes[r.node as usize].id.starts_with(p.as_str())));
            let shape = if r.role_balance {
                None
            } else {
                let fnode = flow_node(r.node);
                let need = fnode.is_some_and(needed);
                if !need && !local {
                    continue;
                }
                let s = Shape::consumer(seed, &r.serial, class);
                if let (Some(f), true) = (fnode, need) {
                    members.push((f, s));
                }
                Some(s)
            };
            if !local {
                continue;
            }
            let (title, keys, ak) = if r.title.is_empty() {
                (None, None, [0u8; 16])
            } else {
                let t = hex(&r.title)
                    .and_then(|b| SystemTitle::try_from(b.as_slice()).ok())
                    .ok_or_else(|| format!("meters.csv line {}: system_title is not 16 hex digits", r.line))?;
                let ek = hex16(&r.ek, "ek", r.line)?;
                let ak = hex16(&r.ak, "ak", r.line)?;
                (Some(t), Some(Keys::new(&ek, &ak)), ak)
            };
            let key = mix(seed ^ fnv(r.serial.as_bytes()) ^ 0xD1F7);
            let (theft, alarm) = match thieves.get(r.serial.as_str()) {
                Some(t) => {
                    let factor = t["factor"].as_f64().unwrap_or(0.0);
                    let theft = match t["type"].as_str() {
                        Some("bypass") => Theft::Bypass(factor),
                        Some("reverse") => Theft::Reverse,
                        _ => Theft::Tamper(factor),
                    };
                    let alarm = t["alarm"].as_str().map(|a| alarm_code(r.model, a));
                    (Some(theft), alarm)
                }
                None => (None, None),
            };
            // Most clocks keep within seconds; a few have drifted by minutes.
            let drift = if r.role_balance {
                0
            } else if unit(key ^ 0xC10C) < opts.drifting {
                let m = 2.0 + 28.0 * unit(key ^ 0xC10D);
                (if unit(key ^ 0xC10E) < 0.5 { -m } else { m } * 60.0) as i64
            } else {
                (unit(key ^ 0xC10F) * 6.0) as i64 - 3
            };
            let refuses_keys = opts.refuse_keys.contains(&r.serial) || unit(key ^ 0x4B45) < opts.refuse_keys_share;
            let serial = r.serial.clone();
            meters.push(MeterSpec {
                serial: r.serial,
                model: r.model,
                balance: r.role_balance,
                node: r.node,
                title,
                keys,
                ak,
                password: r.password.into_bytes(),
                shape,
                theft,
                alarm,
                drift,
                key,
                address: r.address,
                kek: if r.kek.is_empty() { None } else { Some(hex16(&r.kek, "kek", r.line)?) },
                refuses_keys,
                image_faults: crate::image::Faults {
                    fail_verify: opts.fail_verify.has(&serial, unit(key ^ 0x1A6E)),
                    drop_once: opts.drop_transfer.has(&serial, unit(key ^ 0x1A6F)),
                },
            });
        }

        let endpoints = group_endpoints(seed, &nodes, &meters, opts);
        Ok(Fleet { seed, nodes, meters, endpoints, members, fleet_size })
    }
}

/// The event code a model's firmware uses for a tamper alarm named in the truth file.
fn alarm_code(model: Model, name: &str) -> u16 {
    match (model.is_gas(), name) {
        (true, "case-opened") => crate::cosem::events::EV_GAS_CASE_OPENED,
        (true, _) => crate::cosem::events::EV_GAS_MAGNETIC,
        (false, "terminal-cover-opened") => crate::cosem::events::EV_TERMINAL_COVER_OPENED,
        (false, _) => crate::cosem::events::EV_MAGNETIC,
    }
}

/// Meters into connections: the consumers of a transformer share a data concentrator
/// when the transformer draws one (by its id); everyone else connects alone.
fn group_endpoints(seed: u64, nodes: &[Node], meters: &[MeterSpec], opts: &FleetOptions) -> Vec<Endpoint> {
    const MAX_PER_CONCENTRATOR: usize = 250;
    let mut out = Vec::new();
    let mut by_node: HashMap<u32, usize> = HashMap::new();
    for (i, m) in meters.iter().enumerate() {
        if let Some((hdlc, at)) = m.address {
            out.push(Endpoint { meters: vec![i as u32], hdlc, concentrator: false, listen: Some(at), udp: false });
            continue;
        }
        let n = &nodes[m.node as usize];
        let behind = !m.balance
            && !m.model.is_gas()
            && n.level == "transformer"
            && unit(seed ^ fnv(n.id.as_bytes()) ^ 0xDC) < opts.concentrators;
        if behind {
            if let Some(&e) = by_node.get(&m.node) {
                let ep: &mut Endpoint = &mut out[e];
                if ep.meters.len() < MAX_PER_CONCENTRATOR {
                    ep.meters.push(i as u32);
                    continue;
                }
            }
            by_node.insert(m.node, out.len());
            out.push(Endpoint { meters: vec![i as u32], hdlc: false, concentrator: true, listen: None, udp: false });
        } else {
            out.push(Endpoint { meters: vec![i as u32], hdlc: false, concentrator: false, listen: None, udp: false });
        }
    }
    for ep in out.iter_mut().filter(|e| e.listen.is_none()) {
        let first = &meters[ep.meters[0] as usize];
        ep.hdlc = unit(first.key ^ 0x4D1C) < opts.hdlc;
        ep.udp = !ep.hdlc && !ep.concentrator && unit(first.key ^ 0x0DB0) < opts.udp;
    }
    out
}
