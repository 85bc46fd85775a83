//! The balance meters measure what flows below them: consumers (whatever their meters
//! register), illegal loads and technical losses, in any partition of the fleet.

use std::path::PathBuf;

use headend_sim::cosem::Meter;
use headend_sim::fleet::{Fleet, FleetOptions};
use headend_sim::grid::Grid;
use headend_sim::model::hours;

const GRID: &str = "node_id,parent_id,level,commodity,name,admin_unit,lat,lon
UZ,,republic,any,UZ,UZ,41,64
GEN,UZ,generation,electricity,Generation,UZ,41,64
R,UZ,region,any,Region,R,41,69
BS1,R,backbone_substation,electricity,BS1,R,41,69
DS1,BS1,distribution_substation,electricity,DS1,R,41,69
F1,DS1,feeder,electricity,F1,R,41,69
T1,F1,transformer,electricity,T1,R,41,69
T2,F1,transformer,electricity,T2,R,41,69
BS2,R,backbone_substation,electricity,BS2,R,41,69
DS2,BS2,distribution_substation,electricity,DS2,R,41,69
F2,DS2,feeder,electricity,F2,R,41,69
T3,F2,transformer,electricity,T3,R,41,69
GS,R,gas_station,gas,GS,R,41,69
SEG,GS,gas_segment,gas,SEG,R,41,69
";

const TRUTH: &str = r#"{"seed": 9, "generation": "GEN",
 "thieves": [{"serial": "E02", "node": "T1", "type": "bypass", "factor": 0.02},
             {"serial": "E03", "node": "T1", "type": "tamper", "factor": 0.5},
             {"serial": "E04", "node": "T1", "type": "reverse", "factor": -1.0}],
 "illegal": [{"node": "T2", "kw": 2.5}],
 "technical_loss": {"GEN": 0.025, "BS1": 0.007, "DS1": 0.01, "F1": 0.05, "T1": 0.03, "T2": 0.02,
                    "BS2": 0.006, "DS2": 0.009, "F2": 0.04, "T3": 0.025, "GS": 0.01, "SEG": 0.02},
 "tamper_alarms": []}"#;

fn fleet_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(write_fleet).clone()
}

fn write_fleet() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("headend-sim-balance-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut meters = String::from("serial,kind,role,node_id,account_id,model,system_title,ek,ak,password,lat,lon\n");
    let mut b = 0;
    for node in ["GEN", "BS1", "DS1", "F1", "T1", "T2", "BS2", "DS2", "F2", "T3"] {
        b += 1;
        meters.push_str(&format!("B{b:02},electricity,balance,{node},,e3ph,,,,,41,69\n"));
    }
    for (node, n) in [("T1", 1..=8), ("T2", 9..=15), ("T3", 16..=20)] {
        for i in n {
            let model = if i % 5 == 0 { "e3ph" } else { "e1ph" };
            meters.push_str(&format!("E{i:02},electricity,consumer,{node},A{i},{model},,,,,41,69\n"));
        }
    }
    meters.push_str("B90,gas,balance,GS,,gas-g4,,,,,41,69\nB91,gas,balance,SEG,,gas-g4,,,,,41,69\n");
    for i in 1..=6 {
        meters.push_str(&format!("G{i:02},gas,consumer,SEG,GA{i},gas-g4,,,,,41,69\n"));
    }
    std::fs::write(dir.join("grid.csv"), GRID).unwrap();
    std::fs::write(dir.join("meters.csv"), meters).unwrap();
    std::fs::write(dir.join("ground_truth.json"), TRUTH).unwrap();
    dir
}

fn options(partition: u32, partitions: u32) -> FleetOptions {
    FleetOptions {
        partition,
        partitions,
        concentrators: 0.0,
        hdlc: 0.0,
        udp: 0.0,
        drifting: 0.0,
        limit: 0,
        only: Vec::new(),
        under: Vec::new(),
        refuse_keys: Vec::new(),
        refuse_keys_share: 0.0,
        fail_verify: Default::default(),
        drop_transfer: Default::default(),
        keys_file: None,
    }
}

struct World {
    fleet: Fleet,
    grid: Grid,
    meters: Vec<Meter>,
}

fn world(partition: u32, partitions: u32) -> World {
    let fleet = Fleet::load(&fleet_dir(), &options(partition, partitions)).unwrap();
    let grid = Grid::new(&fleet);
    let meters = fleet
        .meters
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let node = &fleet.nodes[m.node as usize];
            let flow = if node.balance { Some(m.node) } else { node.flow_parent };
            Meter::new(i as u32, flow, 1)
        })
        .collect();
    World { fleet, grid, meters }
}

impl World {
    fn index(&self, serial: &str) -> usize {
        self.fleet.meters.iter().position(|m| m.serial == serial).unwrap_or_else(|| panic!("{serial}"))
    }

    /// What meter `serial` registers (kWh, m³) at Unix time `t`.
    fn import(&self, serial: &str, t: f64) -> f64 {
        let i = self.index(serial);
        self.meters[i].values(&self.fleet.meters[i], &self.grid, hours(t)).import
    }

    /// What consumer `serial` truly consumed between t0 and t1.
    fn consumed(&self, serial: &str, t0: f64, t1: f64) -> f64 {
        let s = self.fleet.meters[self.index(serial)].shape.unwrap();
        s.energy(hours(t1)) - s.energy(hours(t0))
    }

    fn delta(&self, serial: &str, t0: f64, t1: f64) -> f64 {
        self.import(serial, t1) - self.import(serial, t0)
    }
}

const T0: f64 = 1_793_473_200.0; // 2026-11-01T00:00:00+05:00
const DAY: f64 = 86_400.0;

fn close(a: f64, b: f64, what: &str) {
    assert!((a - b).abs() <= 1e-9 * a.abs().max(1.0), "{what}: {a} vs {b}");
}

#[test]
fn transformer_meters_see_consumers_thieves_illegal_loads_and_losses() {
    let w = world(0, 1);
    for (t0, t1) in [(T0, T0 + 900.0), (T0 + 3_000.0, T0 + DAY), (T0, T0 + 30.0 * DAY)] {
        // T1: eight consumers, three of them stealing; the transformer meter sees the
        // true consumption plus 3 % loss.
        let truth: f64 = (1..=8).map(|i| w.consumed(&format!("E{i:02}"), t0, t1)).sum();
        close(w.delta("B05", t0, t1), truth / 0.97, "T1 input");
        let registered: f64 = (1..=8).map(|i| w.delta(&format!("E{i:02}"), t0, t1)).sum();
        assert!(registered < 0.9 * truth, "thieves under-register: {registered} of {truth}");
        close(w.delta("E02", t0, t1), 0.02 * w.consumed("E02", t0, t1), "bypass");
        close(w.delta("E03", t0, t1), 0.5 * w.consumed("E03", t0, t1), "tamper");
        assert_eq!(w.delta("E04", t0, t1), 0.0, "a reversed meter registers no import");
        let i = w.index("E04");
        let v1 = w.meters[i].values(&w.fleet.meters[i], &w.grid, hours(t1)).export;
        let v0 = w.meters[i].values(&w.fleet.meters[i], &w.grid, hours(t0)).export;
        close(v1 - v0, w.consumed("E04", t0, t1), "reversed shows as export");
        // T2 feeds an illegal 2.5 kW load besides its seven consumers.
        let t2: f64 = (9..=15).map(|i| w.consumed(&format!("E{i:02}"), t0, t1)).sum();
        let extra = w.delta("B06", t0, t1) * 0.98 - t2;
        let hours_ = (t1 - t0) / 3600.0;
        assert!(extra > 0.5 * 2.5 * hours_ && extra < 1.6 * 2.5 * hours_, "illegal load {extra} kWh in {hours_} h");
        // Up the chain: feeder, distribution, backbone, generation.
        close(w.delta("B04", t0, t1), (w.delta("B05", t0, t1) + w.delta("B06", t0, t1)) / 0.95, "F1");
        close(w.delta("B03", t0, t1), w.delta("B04", t0, t1) / 0.99, "DS1");
        close(w.delta("B02", t0, t1), w.delta("B03", t0, t1) / 0.993, "BS1");
        close(w.delta("B01", t0, t1), (w.delta("B02", t0, t1) + w.delta("B07", t0, t1)) / 0.975, "generation");
        // Gas: segment and station.
        let gas: f64 = (1..=6).map(|i| w.consumed(&format!("G{i:02}"), t0, t1)).sum();
        close(w.delta("B91", t0, t1), gas / 0.98, "gas segment");
        close(w.delta("B90", t0, t1), w.delta("B91", t0, t1) / 0.99, "gas station");
    }
}

#[test]
fn registers_never_go_back_and_balance_meters_read_the_same_in_every_process() {
    let whole = world(0, 1);
    let parts = [world(0, 2), world(1, 2)];
    for serial in ["B01", "B02", "B05", "B07", "B10", "B90", "B91"] {
        let owner = parts.iter().find(|p| p.fleet.meters.iter().any(|m| m.serial == serial)).unwrap();
        for k in 0..200 {
            let t = T0 + k as f64 * 437.0;
            close(owner.import(serial, t), whole.import(serial, t), serial);
            assert!(whole.import(serial, t + 437.0) >= whole.import(serial, t));
        }
    }
    // The generation meter is in partition 0; each backbone substation with its
    // consumers lives in one partition.
    assert!(parts[0].fleet.meters.iter().any(|m| m.serial == "B01"));
    for p in &parts {
        let has = |s: &str| p.fleet.meters.iter().any(|m| m.serial == s);
        assert_eq!(has("B02"), has("E01"));
        assert_eq!(has("B07"), has("E16"));
    }
}

#[test]
fn a_disconnected_consumer_stops_and_its_transformer_sees_it() {
    let mut w = world(0, 1);
    let i = w.index("E01");
    let (t_off, t_on, t_end) = (T0 + 3_600.0, T0 + 5.0 * 3_600.0, T0 + 8.0 * 3_600.0);
    let before = w.delta("B05", T0, t_end);
    let missing = w.consumed("E01", t_off, t_on);
    assert!(missing > 0.0);
    // Off through the xDLMS server's state machine (what an ACTION does).
    let spec = &w.fleet.meters[i];
    let m = &mut w.meters[i];
    m.force_supply(spec, &w.grid, hours(t_off), false);
    m.force_supply(spec, &w.grid, hours(t_on), true);
    close(w.delta("E01", t_off, t_on), 0.0, "no consumption while off");
    close(w.delta("E01", T0, t_end), w.consumed("E01", T0, t_end) - missing, "meter");
    close(w.delta("B05", T0, t_end), before - missing / 0.97, "transformer");
    close(w.delta("B04", T0, t_end), w.delta("B05", T0, t_end) / 0.95 + w.delta("B06", T0, t_end) / 0.95, "feeder");
}
