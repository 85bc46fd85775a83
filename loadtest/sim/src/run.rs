//! The running fleet: one task per connection on a single-threaded tokio runtime, a
//! simulated clock that may run faster than real time, faults on request, a status
//! line on stdout every few seconds and an optional record of everything sent.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use headend_core::datetime::{DateTime, DeviationSign};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio::time::{sleep, sleep_until, Instant};

use crate::cosem::{self, initial_invocation_counter, push_registers, Meter};
use crate::fleet::{Fleet, FleetOptions, Model};
use crate::grid::Grid;
use crate::link::{Link, Request};
use crate::model::{mix, unit, Rng, EPOCH};

pub const USAGE: &str = "\
headend-sim --fleet DIR [options]: run the meters of DIR/meters.csv against a head-end

Connection
  --host ADDR            head-end address (default 127.0.0.1)
  --port N               meter port (default 4059)
  --hdlc-port N          port for HDLC meters (default: the meter port)
  --source A[,B...]      local addresses to connect from, round robin (default 127.0.0.1);
                         each address has about 28,000 ports to a given head-end port
  --connect-rate N       new connections per second at start (default 5000)
                         Meters with an address in meters.csv listen there instead and
                         push nothing of their own: the head-end dials and reads them
Fleet
  --partition K/P        run partition K of P (default 0/1); run P processes for P parts
  --limit N              at most N meters of the partition
  --only S[,S...]        only these serials
  --under P[,P...]       only meters on grid nodes whose id starts with P (a region: UZ-SA)
  --concentrators F      share of transformers whose meters sit behind a concentrator (0.1)
  --hdlc F               share of connections speaking HDLC (0.05)
  --udp F                share of meters on their own that push over UDP to the meter
                         port (the wrapper over UDP, IEC 62056-47: NB-IoT; default 0)
  --drifting F           share of meters whose clock is minutes off (0.02)
  --refuse-keys X        meters whose firmware refuses a key transfer: a share (0.05)
                         or serials (S[,S...]); the others take new keys wrapped under
                         the kek of meters.csv (default: none refuse)
  --keys-file FILE       keys the head-end gives meters are kept here (serial,EK,AK)
                         and used on the next start, as meters keep them
  --fail-verify X        meters (share or serials) whose firmware fails every image's
                         verification (default: none)
  --drop-transfer X      meters (share or serials) whose link is lost once halfway
                         through an image transfer (default: none)
Time
  --start TIME           simulated time at start: ISO 8601 or Unix seconds (default: now)
  --speed X              simulated seconds per real second (default 1)
  --interval S           electricity push interval, simulated seconds (default 900)
  --gas-interval S       gas push interval, simulated seconds (default 3600)
  --spread F             pushes spread over this share of the interval (default 0.2)
  --duration S           stop after S real seconds (default: no limit)
  --pushes K             each meter sends K interval pushes, then the run ends
  --linger S             after the last push, keep connections S seconds (default 2)
Behaviour
  --events on|off        alarms and power-failure events (default on)
  --event-rate X         events X times as often as in life (default 1)
  --gaps F               share of meter-days with a modem outage of 1-6 h (default 0.01)
Faults (per push sent)
  --fault-drop P         close the connection after a push, reconnect
  --fault-garbage P      send random bytes, then close
  --fault-stall P        send half a frame, stall --stall-seconds, close (push lost)
  --stall-seconds S      (default 20)
  --storm-at S[:D][,...] at these real seconds every connection drops; the meters stay
                         offline D real seconds (a blackout; default 0), keep their
                         pushes meanwhile, and reconnect at once
Output
  --status-every S       a JSON status line on stdout every S seconds (default 5)
  --drain S              at the end, how long a connection waits for the head-end to
                         close after our FIN (default 30)
  --record FILE          JSON lines of every push, event and command (for tests)
";

#[derive(Clone, Debug)]
pub struct Options {
    pub fleet_dir: PathBuf,
    pub host: IpAddr,
    pub port: u16,
    pub hdlc_port: Option<u16>,
    pub sources: Vec<Ipv4Addr>,
    pub connect_rate: f64,
    pub fleet: FleetOptions,
    pub start: Option<f64>,
    pub speed: f64,
    pub interval: i64,
    pub gas_interval: i64,
    pub spread: f64,
    pub duration: Option<f64>,
    pub pushes: Option<u32>,
    pub linger: f64,
    pub events: bool,
    pub event_rate: f64,
    pub gaps: f64,
    pub fault_drop: f64,
    pub fault_garbage: f64,
    pub fault_stall: f64,
    pub stall_seconds: f64,
    /// (at, down): real seconds after the start, and how long the meters stay offline.
    pub storm_at: Vec<(f64, f64)>,
    pub status_every: f64,
    pub drain: f64,
    pub record: Option<PathBuf>,
}

fn parse_time(s: &str) -> Result<f64, String> {
    if let Ok(v) = s.parse::<f64>() {
        return Ok(v);
    }
    DateTime::parse_iso(s)
        .and_then(|d| d.to_unix(DeviationSign::Standard, Some(0)))
        .map(|t| t as f64)
        .ok_or_else(|| format!("--start {s:?}: not ISO 8601 (2026-11-01T00:00:00+05:00) or Unix seconds"))
}

impl Options {
    /// Parses the command line; Ok(None) for --help.
    pub fn parse(args: &[String]) -> Result<Option<Options>, String> {
        let mut o = Options {
            fleet_dir: PathBuf::new(),
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 4059,
            hdlc_port: None,
            sources: vec![Ipv4Addr::LOCALHOST],
            connect_rate: 5000.0,
            fleet: FleetOptions {
                partition: 0,
                partitions: 1,
                concentrators: 0.1,
                hdlc: 0.05,
                udp: 0.0,
                drifting: 0.02,
                limit: 0,
                only: Vec::new(),
                under: Vec::new(),
                refuse_keys: Vec::new(),
                refuse_keys_share: 0.0,
                fail_verify: Default::default(),
                drop_transfer: Default::default(),
                keys_file: None,
            },
            start: None,
            speed: 1.0,
            interval: 900,
            gas_interval: 3600,
            spread: 0.2,
            duration: None,
            pushes: None,
            linger: 2.0,
            events: true,
            event_rate: 1.0,
            gaps: 0.01,
            fault_drop: 0.0,
            fault_garbage: 0.0,
            fault_stall: 0.0,
            stall_seconds: 20.0,
            storm_at: Vec::new(),
            status_every: 5.0,
            drain: 30.0,
            record: None,
        };
        let mut have_fleet = false;
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            if flag == "--help" || flag == "-h" {
                return Ok(None);
            }
            let mut value = || it.next().cloned().ok_or_else(|| format!("{flag} needs a value"));
            let num = |v: String| v.parse::<f64>().map_err(|_| format!("{flag}: {v:?} is not a number"));
            let share = |v: f64| {
                if (0.0..=1.0).contains(&v) {
                    Ok(v)
                } else {
                    Err(format!("{flag}: {v} is not a share between 0 and 1"))
                }
            };
            match flag.as_str() {
                "--fleet" => {
                    o.fleet_dir = PathBuf::from(value()?);
                    have_fleet = true;
                }
                "--host" => o.host = value()?.parse().map_err(|_| format!("{flag}: not an IP address"))?,
                "--port" => o.port = value()?.parse().map_err(|_| format!("{flag}: not a port"))?,
                "--hdlc-port" => o.hdlc_port = Some(value()?.parse().map_err(|_| format!("{flag}: not a port"))?),
                "--source" => {
                    o.sources = value()?
                        .split(',')
                        .map(|s| s.trim().parse().map_err(|_| format!("{flag}: {s:?} is not an IPv4 address")))
                        .collect::<Result<_, _>>()?;
                    if o.sources.is_empty() {
                        return Err(format!("{flag}: no address"));
                    }
                }
                "--connect-rate" => o.connect_rate = num(value()?)?.max(1.0),
                "--partition" => {
                    let v = value()?;
                    let (k, p) = v.split_once('/').ok_or_else(|| format!("{flag}: {v:?} is not K/P"))?;
                    let (k, p): (u32, u32) = (
                        k.parse().map_err(|_| format!("{flag}: {v:?} is not K/P"))?,
                        p.parse().map_err(|_| format!("{flag}: {v:?} is not K/P"))?,
                    );
                    if p == 0 || k >= p {
                        return Err(format!("{flag}: {v:?}: K must be below P"));
                    }
                    o.fleet.partition = k;
                    o.fleet.partitions = p;
                }
                "--limit" => o.fleet.limit = num(value()?)? as usize,
                "--only" => o.fleet.only = value()?.split(',').map(|s| s.trim().to_string()).collect(),
                "--under" => o.fleet.under = value()?.split(',').map(|s| s.trim().to_string()).collect(),
                "--concentrators" => o.fleet.concentrators = share(num(value()?)?)?,
                "--hdlc" => o.fleet.hdlc = share(num(value()?)?)?,
                "--udp" => o.fleet.udp = share(num(value()?)?)?,
                "--drifting" => o.fleet.drifting = share(num(value()?)?)?,
                "--keys-file" => o.fleet.keys_file = Some(PathBuf::from(value()?)),
                "--fail-verify" => o.fleet.fail_verify = crate::fleet::Chosen::parse(&value()?)?,
                "--drop-transfer" => o.fleet.drop_transfer = crate::fleet::Chosen::parse(&value()?)?,
                "--refuse-keys" => {
                    let v = value()?;
                    match v.parse::<f64>() {
                        Ok(f) => o.fleet.refuse_keys_share = share(f)?,
                        Err(_) => o.fleet.refuse_keys = v.split(',').map(|s| s.trim().to_string()).collect(),
                    }
                }
                "--start" => o.start = Some(parse_time(&value()?)?),
                "--speed" => o.speed = num(value()?)?,
                "--interval" => o.interval = num(value()?)? as i64,
                "--gas-interval" => o.gas_interval = num(value()?)? as i64,
                "--spread" => o.spread = share(num(value()?)?)?,
                "--duration" => o.duration = Some(num(value()?)?),
                "--pushes" => o.pushes = Some(num(value()?)? as u32),
                "--linger" => o.linger = num(value()?)?.max(0.0),
                "--events" => {
                    o.events = match value()?.as_str() {
                        "on" => true,
                        "off" => false,
                        v => return Err(format!("{flag}: {v:?} (on or off)")),
                    }
                }
                "--gaps" => o.gaps = share(num(value()?)?)?,
                "--event-rate" => o.event_rate = num(value()?)?.max(1e-3),
                "--fault-drop" => o.fault_drop = share(num(value()?)?)?,
                "--fault-garbage" => o.fault_garbage = share(num(value()?)?)?,
                "--fault-stall" => o.fault_stall = share(num(value()?)?)?,
                "--stall-seconds" => o.stall_seconds = num(value()?)?.max(0.0),
                "--storm-at" => {
                    let mut storms = Vec::new();
                    for part in value()?.split(',') {
                        let (at, down) = part.trim().split_once(':').unwrap_or((part.trim(), "0"));
                        storms.push((num(at.to_string())?, num(down.to_string())?.clamp(0.0, 3600.0)));
                    }
                    o.storm_at = storms;
                }
                "--status-every" => o.status_every = num(value()?)?.max(0.1),
                "--drain" => o.drain = num(value()?)?.clamp(0.0, 600.0),
                "--record" => o.record = Some(PathBuf::from(value()?)),
                other => return Err(format!("unknown option {other}")),
            }
        }
        if !have_fleet {
            return Err("--fleet DIR is required".into());
        }
        if o.speed.is_nan() || o.speed <= 0.0 {
            return Err("--speed must be positive".into());
        }
        if o.interval < 1 || o.gas_interval < 1 {
            return Err("--interval and --gas-interval must be at least 1 second".into());
        }
        if let Some(s) = o.start {
            if s < EPOCH as f64 {
                return Err("--start must be 2024 or later (the consumption model starts there)".into());
            }
        }
        Ok(Some(o))
    }
}

/// Counters for the status lines.
#[derive(Default)]
pub struct Stats {
    connected: Cell<u64>,
    connects: Cell<u64>,
    connect_failures: Cell<u64>,
    closed_by_peer: Cell<u64>,
    pushes: Cell<u64>,
    readings: Cell<u64>,
    alarms: Cell<u64>,
    events: Cell<u64>,
    skipped: Cell<u64>,
    dropped_offline: Cell<u64>,
    requests: Cell<u64>,
    responses: Cell<u64>,
    disconnects: Cell<u64>,
    reconnects: Cell<u64>,
    bytes_out: Cell<u64>,
    bytes_in: Cell<u64>,
    link_errors: Cell<u64>,
    fault_drop: Cell<u64>,
    fault_garbage: Cell<u64>,
    fault_stall: Cell<u64>,
    aborted_pushes: Cell<u64>,
    unconfirmed_closes: Cell<u64>,
    storms: Cell<u64>,
    /// Meters listening for the head-end, and those that could not bind their address.
    listening: Cell<u64>,
    listen_failures: Cell<u64>,
    max_lag: Cell<f64>,
}

fn inc(c: &Cell<u64>, n: u64) {
    c.set(c.get() + n);
}

struct Shared {
    opt: Options,
    fleet: Fleet,
    grid: Grid,
    t0: Instant,
    start_unix: f64,
    first_ic: u32,
    stats: Stats,
    record: RefCell<Option<BufWriter<File>>>,
    /// Bumped by storms; `u32::MAX` means stop.
    epoch: watch::Sender<u32>,
    /// When the meters a storm dropped come back (the blackout's end).
    back_at: Cell<Option<Instant>>,
    meters_left: Cell<usize>,
    addr: SocketAddr,
    hdlc_addr: SocketAddr,
}

const STOP: u32 = u32::MAX;
/// Pushes a meter keeps while it cannot connect (a day of quarter hours).
const QUEUE_LIMIT: usize = 96;

impl Shared {
    /// How long a stopping connection waits for the head-end to read everything.
    fn drain(&self) -> Duration {
        Duration::from_secs_f64(self.opt.drain)
    }

    fn sim_now(&self) -> f64 {
        self.start_unix + self.t0.elapsed().as_secs_f64() * self.opt.speed
    }

    fn instant_at(&self, sim_unix: f64) -> Instant {
        let real = ((sim_unix - self.start_unix) / self.opt.speed).max(0.0);
        self.t0 + Duration::from_secs_f64(real.min(1e9))
    }

    fn stopping(&self) -> bool {
        *self.epoch.borrow() == STOP
    }

    fn record(&self, line: impl FnOnce(&mut String)) {
        if let Some(w) = self.record.borrow_mut().as_mut() {
            let mut s = String::with_capacity(160);
            line(&mut s);
            s.push('\n');
            let _ = w.write_all(s.as_bytes());
        }
    }
}

/// One meter's place in its connection's schedule.
struct Slot {
    meter: Meter,
    interval: i64,
    /// Sim seconds after each boundary this meter pushes.
    delay: f64,
    /// Next capture boundary, meter time.
    next: i64,
    due: Instant,
    left: Option<u32>,
}

/// What a queued frame is, for the counters (which count frames actually written).
#[derive(Clone, Copy)]
enum Kind {
    /// An interval push with this many register values.
    Interval(u32),
    Alarm,
    Event,
}

/// A framed push waiting to go out, with its record line.
struct Outgoing {
    bytes: Vec<u8>,
    record: Option<String>,
    kind: Kind,
}

enum End {
    Stop,
    Storm,
    Closed,
    Fault,
}

pub fn run(opt: Options) -> Result<(), String> {
    raise_open_files();
    let fleet = Fleet::load(&opt.fleet_dir, &opt.fleet)?;
    let grid = Grid::new(&fleet);
    let now_wall = SystemTime::now().duration_since(UNIX_EPOCH).map_err(|e| e.to_string())?.as_secs_f64();
    let start_unix = opt.start.unwrap_or(now_wall.floor());
    let record = match &opt.record {
        Some(p) => Some(BufWriter::new(File::create(p).map_err(|e| format!("{}: {e}", p.display()))?)),
        None => None,
    };
    let (epoch, _) = watch::channel(0u32);
    let addr = SocketAddr::new(opt.host, opt.port);
    let hdlc_addr = SocketAddr::new(opt.host, opt.hdlc_port.unwrap_or(opt.port));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let local = tokio::task::LocalSet::new();
    let meters = fleet.meters.len();
    eprintln!(
        "headend-sim: partition {}/{}: {} meters on {} connections ({} concentrators, {} HDLC) of a fleet of {}",
        opt.fleet.partition,
        opt.fleet.partitions,
        meters,
        fleet.endpoints.len(),
        fleet.endpoints.iter().filter(|e| e.concentrator).count(),
        fleet.endpoints.iter().filter(|e| e.hdlc).count(),
        fleet.fleet_size
    );
    local.block_on(&rt, async move {
        let sh = Rc::new(Shared {
            first_ic: initial_invocation_counter(now_wall),
            opt,
            fleet,
            grid,
            t0: Instant::now(),
            start_unix,
            stats: Stats::default(),
            record: RefCell::new(record),
            epoch,
            back_at: Cell::new(None),
            meters_left: Cell::new(meters),
            addr,
            hdlc_addr,
        });
        if sh.record.borrow().is_some() {
            let mut line = String::from("{\"k\":\"models\"");
            for m in [Model::E1ph, Model::E3ph, Model::Gas] {
                let _ = write!(line, ",\"{}\":[", m.name());
                for (i, r) in push_registers(m).iter().enumerate() {
                    let _ = write!(line, "{}[\"{}\",{}]", if i > 0 { "," } else { "" }, r.obis, r.scaler);
                }
                line.push(']');
            }
            line.push('}');
            sh.record(|s| s.push_str(&line));
        }
        let mut tasks = Vec::new();
        for e in 0..sh.fleet.endpoints.len() {
            if sh.fleet.endpoints[e].listen.is_some() {
                tasks.push(tokio::task::spawn_local(listener(sh.clone(), e)));
            } else if sh.fleet.endpoints[e].udp {
                tasks.push(tokio::task::spawn_local(udp_endpoint(sh.clone(), e)));
            } else {
                tasks.push(tokio::task::spawn_local(endpoint(sh.clone(), e)));
            }
        }
        let status = tokio::task::spawn_local(status_lines(sh.clone()));
        for &(at, down) in &sh.opt.storm_at {
            let sh2 = sh.clone();
            tokio::task::spawn_local(async move {
                let when = sh2.t0 + Duration::from_secs_f64(at.max(0.0));
                sleep_until(when).await;
                if !sh2.stopping() {
                    inc(&sh2.stats.storms, 1);
                    sh2.back_at.set(Some(when + Duration::from_secs_f64(down)));
                    sh2.epoch.send_modify(|e| *e += 1);
                }
            });
        }
        wait_for_end(&sh).await;
        sh.epoch.send_replace(STOP);
        let deadline = Instant::now() + sh.drain() + Duration::from_secs(5);
        for t in tasks {
            let _ = tokio::time::timeout_at(deadline, t).await;
        }
        status.abort();
        print_status(&sh, true);
        let mut rec = sh.record.borrow_mut();
        if let Some(w) = rec.as_mut() {
            let _ = w.flush();
        }
    });
    Ok(())
}

async fn wait_for_end(sh: &Rc<Shared>) {
    let deadline = sh.opt.duration.map(|d| sh.t0 + Duration::from_secs_f64(d));
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    loop {
        let tick = sleep(Duration::from_millis(200));
        tokio::select! {
            _ = tick => {}
            _ = tokio::signal::ctrl_c() => return,
            _ = async { match sigterm.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => return,
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return;
        }
        if sh.opt.pushes.is_some() && sh.meters_left.get() == 0 {
            sleep(Duration::from_secs_f64(sh.opt.linger)).await;
            return;
        }
    }
}

async fn status_lines(sh: Rc<Shared>) {
    loop {
        sleep(Duration::from_secs_f64(sh.opt.status_every)).await;
        print_status(&sh, false);
    }
}

fn print_status(sh: &Shared, last: bool) {
    let s = &sh.stats;
    let line = format!(
        concat!(
            "{{\"final\":{},\"partition\":{},\"t\":{:.3},\"sim_time\":{:.0},\"meters\":{},\"connections\":{},",
            "\"connected\":{},\"connects\":{},\"connect_failures\":{},\"closed_by_peer\":{},\"pushes\":{},\"readings\":{},",
            "\"alarms\":{},\"events\":{},\"skipped\":{},\"dropped_offline\":{},\"requests\":{},\"responses\":{},",
            "\"disconnects\":{},\"reconnects\":{},\"bytes_out\":{},\"bytes_in\":{},\"link_errors\":{},",
            "\"faults\":{{\"drop\":{},\"garbage\":{},\"stall\":{},\"storms\":{}}},\"aborted_pushes\":{},",
            "\"unconfirmed_closes\":{},\"listening\":{},\"listen_failures\":{},\"max_lag_s\":{:.3},",
            "\"meters_left\":{}}}"
        ),
        last,
        sh.opt.fleet.partition,
        sh.t0.elapsed().as_secs_f64(),
        sh.sim_now(),
        sh.fleet.meters.len(),
        sh.fleet.endpoints.len(),
        s.connected.get(),
        s.connects.get(),
        s.connect_failures.get(),
        s.closed_by_peer.get(),
        s.pushes.get(),
        s.readings.get(),
        s.alarms.get(),
        s.events.get(),
        s.skipped.get(),
        s.dropped_offline.get(),
        s.requests.get(),
        s.responses.get(),
        s.disconnects.get(),
        s.reconnects.get(),
        s.bytes_out.get(),
        s.bytes_in.get(),
        s.link_errors.get(),
        s.fault_drop.get(),
        s.fault_garbage.get(),
        s.fault_stall.get(),
        s.storms.get(),
        s.aborted_pushes.get(),
        s.unconfirmed_closes.get(),
        s.listening.get(),
        s.listen_failures.get(),
        s.max_lag.get(),
        sh.meters_left.get(),
    );
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn raise_open_files() {
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

fn first_slot(sh: &Shared, index: u32) -> Slot {
    let spec = &sh.fleet.meters[index as usize];
    let node = &sh.fleet.nodes[spec.node as usize];
    let flow = if node.balance { Some(spec.node) } else { node.flow_parent };
    let meter = Meter::new(index, flow, sh.first_ic);
    let interval = if spec.model.is_gas() { sh.opt.gas_interval } else { sh.opt.interval };
    let delay = sh.opt.spread * interval as f64 * unit(spec.key ^ 0x5EED);
    // The first capture whose push falls after the start, so pushes spread over the
    // first interval at once instead of waiting for the next boundary.
    let m0 = meter.meter_time(spec, sh.start_unix);
    let next = ((m0 - delay) / interval as f64).ceil() as i64 * interval;
    let mut s = Slot { meter, interval, delay, next, due: sh.t0, left: sh.opt.pushes };
    s.due = due_of(sh, &s, index);
    s
}

fn due_of(sh: &Shared, s: &Slot, index: u32) -> Instant {
    let spec = &sh.fleet.meters[index as usize];
    sh.instant_at(s.meter.true_time(spec, s.next as f64) + s.delay)
}

/// With probability `p`, a time within period number `day` of `period` seconds.
fn day_event(key: u64, day: i64, salt: u64, p: f64, period: i64) -> Option<f64> {
    let k = key ^ (day as u64).wrapping_mul(0x9E37_79B9) ^ salt;
    (unit(k) < p).then(|| (day * period) as f64 + unit(k ^ 0xABCD) * period as f64)
}

/// Generates the pushes due now into `queue`.
fn due_pushes(sh: &Shared, ep: usize, slots: &mut [Slot], queue: &mut VecDeque<Outgoing>) {
    let now = Instant::now();
    let endpoint = &sh.fleet.endpoints[ep];
    for (k, s) in slots.iter_mut().enumerate() {
        while s.due <= now && s.left != Some(0) {
            let lag = now.duration_since(s.due).as_secs_f64();
            if lag > sh.stats.max_lag.get() {
                sh.stats.max_lag.set(lag);
            }
            let index = s.meter.index;
            let spec = &sh.fleet.meters[index as usize];
            let b = s.next;
            // Events that happened since the previous capture, in time order.
            if sh.opt.events {
                for (t, code, alarm) in events_between(sh, spec, b - s.interval, b) {
                    let (apdu, kind) = if alarm {
                        (s.meter.alarm_push(spec, t, code), Kind::Alarm)
                    } else {
                        (s.meter.event_notification(spec, t, code), Kind::Event)
                    };
                    let rec = record_event(sh, &spec.serial, t, code, if alarm { "alarm" } else { "event" });
                    queue.push_back(Outgoing { bytes: frame_push(endpoint, k, &apdu), record: rec, kind });
                }
            }
            let h = crate::model::hours(s.meter.true_time(spec, b as f64));
            if let Some(code) = s.meter.settle(spec, &sh.grid, h) {
                let apdu = s.meter.alarm_push(spec, b, code);
                let rec = record_event(sh, &spec.serial, b, code, "alarm");
                queue.push_back(Outgoing { bytes: frame_push(endpoint, k, &apdu), record: rec, kind: Kind::Alarm });
            }
            if in_gap(sh, spec.key, b) {
                inc(&sh.stats.skipped, 1);
            } else {
                let (apdu, rec) = s.meter.interval_push(spec, &sh.grid, b);
                let record = sh.record.borrow().is_some().then(|| {
                    let mut line = format!(
                        "{{\"k\":\"p\",\"s\":\"{}\",\"m\":\"{}\",\"ts\":{},\"v\":[",
                        spec.serial,
                        spec.model.name(),
                        rec.ts
                    );
                    for (i, v) in rec.raw.iter().enumerate() {
                        let _ = write!(line, "{}{}", if i > 0 { "," } else { "" }, v);
                    }
                    line.push_str("]}");
                    line
                });
                let kind = Kind::Interval(rec.raw.len() as u32);
                queue.push_back(Outgoing { bytes: frame_push(endpoint, k, &apdu), record, kind });
            }
            if let Some(l) = s.left.as_mut() {
                *l -= 1;
                if *l == 0 {
                    sh.meters_left.set(sh.meters_left.get().saturating_sub(1));
                }
            }
            s.next += s.interval;
            s.due = due_of(sh, s, index);
        }
    }
    // A meter keeps a day of pushes while offline; older ones are lost (counted).
    let limit = QUEUE_LIMIT * slots.len();
    while queue.len() > limit {
        queue.pop_front();
        inc(&sh.stats.dropped_offline, 1);
    }
}

fn record_event(sh: &Shared, serial: &str, t: i64, code: u16, via: &str) -> Option<String> {
    sh.record
        .borrow()
        .is_some()
        .then(|| format!("{{\"k\":\"e\",\"s\":\"{serial}\",\"ts\":{t},\"code\":{code},\"via\":\"{via}\"}}"))
}

/// Modem outages: whole pushes that never leave the meter.
fn in_gap(sh: &Shared, key: u64, b: i64) -> bool {
    if sh.opt.gaps <= 0.0 {
        return false;
    }
    let day = b.div_euclid(86_400);
    for d in [day - 1, day] {
        if let Some(start) = day_event(key, d, 0x6A95, sh.opt.gaps, 86_400) {
            let len = 3600.0 * (1.0 + 5.0 * unit(key ^ d as u64 ^ 0x6A96));
            if (b as f64) >= start && (b as f64) < start + len {
                return true;
            }
        }
    }
    false
}

/// Alarms and events of one meter in (from, to], meter time: (time, code, as an alarm
/// push (true) or an EventNotification (false)).
fn events_between(sh: &Shared, spec: &crate::fleet::MeterSpec, from: i64, to: i64) -> Vec<(i64, u16, bool)> {
    let mut out = Vec::new();
    let node_key = mix(sh.fleet.seed ^ crate::model::fnv(sh.fleet.nodes[spec.node as usize].id.as_bytes()));
    // Events come per "day"; --event-rate shortens the day for tests and demos.
    let period = ((86_400.0 / sh.opt.event_rate) as i64).max(60);
    for day in from.div_euclid(period)..=to.div_euclid(period) {
        let within = |t: f64| t > from as f64 && t <= to as f64;
        // The thief's magnet or opened cover, every few days.
        if let Some(code) = spec.alarm {
            if let Some(t) = day_event(spec.key, day, 0x7A, 1.0 / 3.0, period) {
                if within(t) {
                    out.push((t as i64, code, true));
                }
            }
        }
        // An honest meter's cover opened now and then (an inspection).
        if let Some(t) = day_event(spec.key, day, 0x7B, 0.0005, period) {
            if within(t) {
                let code =
                    if spec.model.is_gas() { cosem::EV_GAS_CASE_OPENED } else { cosem::EV_TERMINAL_COVER_OPENED };
                out.push((t as i64, code, true));
            }
        }
        // Short supply interruptions hit every meter of a transformer together; the
        // meter reports power-down and power-up once it is back.
        if !spec.model.is_gas() {
            if let Some(t) = day_event(node_key, day, 0x7C, 0.03, period) {
                let up = t + 30.0 + 140.0 * unit(node_key ^ day as u64);
                if within(up) {
                    out.push((t as i64, cosem::EV_POWER_DOWN, false));
                    out.push((up as i64, cosem::EV_POWER_UP, false));
                }
            }
        }
    }
    out.sort_by_key(|e| e.0);
    out
}

fn frame_push(ep: &crate::fleet::Endpoint, slot: usize, apdu: &[u8]) -> Vec<u8> {
    crate::link::push_frame(ep.hdlc, ep.concentrator, slot, apdu)
}

async fn connect(sh: &Shared, ep: usize) -> std::io::Result<TcpStream> {
    let src = sh.opt.sources[ep % sh.opt.sources.len()];
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(IpAddr::V4(src), 0))?;
    let to = if sh.fleet.endpoints[ep].hdlc { sh.hdlc_addr } else { sh.addr };
    let s = tokio::time::timeout(Duration::from_secs(15), sock.connect(to))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    s.set_nodelay(true)?;
    Ok(s)
}

async fn endpoint(sh: Rc<Shared>, ep: usize) {
    let mut slots: Vec<Slot> = sh.fleet.endpoints[ep].meters.iter().map(|&m| first_slot(&sh, m)).collect();
    let mut queue: VecDeque<Outgoing> = VecDeque::new();
    let key = sh.fleet.meters[sh.fleet.endpoints[ep].meters[0] as usize].key;
    let mut rng = Rng::new(key ^ 0xFA17);
    let mut epoch_rx = sh.epoch.subscribe();
    // Connections open at --connect-rate, in order.
    let mut wait_until = Some(sh.t0 + Duration::from_secs_f64(ep as f64 / sh.opt.connect_rate));
    let mut failures = 0u32;
    loop {
        // Offline: keep generating pushes until it is time to (re)connect.
        if let Some(until) = wait_until.take() {
            offline_until(&sh, ep, &mut slots, &mut queue, until, &mut epoch_rx).await;
        }
        if sh.stopping() {
            return;
        }
        let sock = match connect(&sh, ep).await {
            Ok(s) => s,
            Err(_) => {
                inc(&sh.stats.connect_failures, 1);
                failures = (failures + 1).min(5);
                let backoff = (1u64 << failures) as f64 * (0.5 + rng.uniform(0.0, 0.5));
                wait_until = Some(Instant::now() + Duration::from_secs_f64(backoff.min(30.0)));
                continue;
            }
        };
        failures = 0;
        inc(&sh.stats.connects, 1);
        inc(&sh.stats.connected, 1);
        let epoch = *epoch_rx.borrow_and_update();
        let end = connection(&sh, ep, &mut slots, &mut queue, sock, &mut rng, &mut epoch_rx, epoch).await;
        sh.stats.connected.set(sh.stats.connected.get() - 1);
        wait_until = match end {
            End::Stop => return,
            // A storm: everyone reconnects at once, when the blackout ends.
            End::Storm => Some(sh.back_at.get().unwrap_or_else(Instant::now)),
            End::Closed | End::Fault => Some(Instant::now() + Duration::from_secs_f64(rng.uniform(1.0, 5.0))),
        };
    }
}

/// Generates pushes until `until` (or the run stops), as a meter does while it cannot
/// reach the head-end.
async fn offline_until(
    sh: &Shared,
    ep: usize,
    slots: &mut [Slot],
    queue: &mut VecDeque<Outgoing>,
    until: Instant,
    epoch_rx: &mut watch::Receiver<u32>,
) {
    loop {
        due_pushes(sh, ep, slots, queue);
        if sh.stopping() || Instant::now() >= until {
            return;
        }
        let next = slots.iter().map(|s| s.due).min().unwrap_or(until).min(until);
        tokio::select! {
            _ = sleep_until(next) => {}
            _ = epoch_rx.changed() => {}
        }
    }
}

/// A meter on a datagram network (NB-IoT): the wrapper over UDP (IEC 62056-47) to the
/// meter port, a datagram a frame, from one socket (one source address and port) for
/// the run. The head-end's requests come back to that address; a blackout holds the
/// pushes until it ends, as on TCP. Nothing confirms a datagram: what the network
/// loses is lost (the counters count what was sent).
async fn udp_endpoint(sh: Rc<Shared>, ep: usize) {
    let e = &sh.fleet.endpoints[ep];
    let mut slots: Vec<Slot> = e.meters.iter().map(|&m| first_slot(&sh, m)).collect();
    let mut queue: VecDeque<Outgoing> = VecDeque::new();
    let mut epoch_rx = sh.epoch.subscribe();
    let start = sh.t0 + Duration::from_secs_f64(ep as f64 / sh.opt.connect_rate);
    offline_until(&sh, ep, &mut slots, &mut queue, start, &mut epoch_rx).await;
    if sh.stopping() {
        return;
    }
    let src = sh.opt.sources[ep % sh.opt.sources.len()];
    let sock = match UdpSocket::bind(SocketAddr::new(IpAddr::V4(src), 0)).await {
        Ok(s) => s,
        Err(_) => {
            inc(&sh.stats.connect_failures, 1);
            return;
        }
    };
    if sock.connect(sh.addr).await.is_err() {
        inc(&sh.stats.connect_failures, 1);
        return;
    }
    inc(&sh.stats.connects, 1);
    inc(&sh.stats.connected, 1);
    let mut epoch = *epoch_rx.borrow_and_update();
    let mut link = Link::new(false, false, e.meters.len());
    let mut requests: Vec<Request> = Vec::new();
    let mut wire: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 65_536];
    loop {
        let current = *epoch_rx.borrow();
        if current == STOP {
            send_datagrams(&sh, &sock, &mut queue).await;
            break;
        }
        if current != epoch {
            // A blackout: no network until it ends; pushes wait in the meter.
            let back = sh.back_at.get().unwrap_or_else(Instant::now);
            offline_until(&sh, ep, &mut slots, &mut queue, back, &mut epoch_rx).await;
            epoch = current;
            continue;
        }
        if !queue.is_empty() {
            send_datagrams(&sh, &sock, &mut queue).await;
            continue;
        }
        let next = slots.iter().filter(|s| s.left != Some(0)).map(|s| s.due).min();
        tokio::select! {
            _ = epoch_rx.changed() => {}
            r = sock.recv(&mut buf) => {
                let Ok(n) = r else { continue }; // ICMP unreachable: the head-end is away
                inc(&sh.stats.bytes_in, n as u64);
                link.receive(&buf[..n], &mut requests, &mut wire);
                inc(&sh.stats.link_errors, std::mem::take(&mut link.errors));
                serve(&sh, e, &mut slots, &mut link, &mut requests, &mut wire, &mut queue);
                // A datagram a response frame.
                for frame in wrapper_frames(&wire) {
                    inc(&sh.stats.bytes_out, frame.len() as u64);
                    let _ = sock.send(frame).await;
                }
                wire.clear();
            }
            _ = async { match next { Some(t) => sleep_until(t).await, None => std::future::pending().await } } => {
                due_pushes(&sh, ep, &mut slots, &mut queue);
            }
        }
    }
    sh.stats.connected.set(sh.stats.connected.get() - 1);
}

/// The wrapper frames (8-byte header, its length field last) in `wire`.
fn wrapper_frames(wire: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 8 <= wire.len() {
        let len = u16::from_be_bytes([wire[at + 6], wire[at + 7]]) as usize;
        let end = (at + 8 + len).min(wire.len());
        out.push(&wire[at..end]);
        at = end;
    }
    out
}

/// Counts a frame that went out and writes its record line.
fn sent(sh: &Shared, o: Outgoing) {
    inc(&sh.stats.bytes_out, o.bytes.len() as u64);
    match o.kind {
        Kind::Interval(n) => {
            inc(&sh.stats.pushes, 1);
            inc(&sh.stats.readings, n as u64);
        }
        Kind::Alarm => inc(&sh.stats.alarms, 1),
        Kind::Event => inc(&sh.stats.events, 1),
    }
    if let Some(r) = o.record {
        sh.record(|l| l.push_str(&r));
    }
}

/// Sends the queued frames, a datagram each, counting them as `flush` does.
async fn send_datagrams(sh: &Shared, sock: &UdpSocket, queue: &mut VecDeque<Outgoing>) {
    while let Some(o) = queue.pop_front() {
        if sock.send(&o.bytes).await.is_err() {
            // The head-end's port is unreachable now (ICMP): the meter tries again with
            // its next push.
            queue.push_front(o);
            sleep(Duration::from_millis(200)).await;
            return;
        }
        sent(sh, o);
    }
}

fn bind_listener(at: SocketAddr) -> std::io::Result<TcpListener> {
    let sock = if at.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    sock.set_reuseaddr(true)?;
    sock.bind(at)?;
    sock.listen(16)
}

/// A meter that listens for the head-end instead of connecting: it pushes nothing on
/// its own (the head-end reads it), answers one connection at a time, and pushes its
/// disconnector and clock events on the connection that caused them.
async fn listener(sh: Rc<Shared>, ep: usize) {
    let e = &sh.fleet.endpoints[ep];
    let at = e.listen.expect("a listening endpoint");
    if sh.opt.pushes.is_some() {
        // No pushes of its own: the run's end does not wait for it.
        sh.meters_left.set(sh.meters_left.get().saturating_sub(e.meters.len()));
    }
    let listen = match bind_listener(at) {
        Ok(l) => l,
        Err(err) => {
            eprintln!("headend-sim: cannot listen on {at}: {err}");
            inc(&sh.stats.listen_failures, 1);
            return;
        }
    };
    inc(&sh.stats.listening, 1);
    let mut slots: Vec<Slot> = e.meters.iter().map(|&m| first_slot(&sh, m)).collect();
    for s in &mut slots {
        s.left = Some(0);
    }
    let mut queue: VecDeque<Outgoing> = VecDeque::new();
    let mut rng = Rng::new(sh.fleet.meters[e.meters[0] as usize].key ^ 0x115E);
    let mut epoch_rx = sh.epoch.subscribe();
    loop {
        let sock = tokio::select! {
            r = listen.accept() => match r {
                Ok((s, _)) => s,
                Err(_) => {
                    sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = epoch_rx.changed() => {
                if sh.stopping() {
                    return;
                }
                continue;
            }
        };
        let _ = sock.set_nodelay(true);
        inc(&sh.stats.connects, 1);
        inc(&sh.stats.connected, 1);
        let epoch = *epoch_rx.borrow_and_update();
        let end = connection(&sh, ep, &mut slots, &mut queue, sock, &mut rng, &mut epoch_rx, epoch).await;
        sh.stats.connected.set(sh.stats.connected.get() - 1);
        if matches!(end, End::Stop) {
            return;
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn connection(
    sh: &Shared,
    ep: usize,
    slots: &mut [Slot],
    queue: &mut VecDeque<Outgoing>,
    mut sock: TcpStream,
    rng: &mut Rng,
    epoch_rx: &mut watch::Receiver<u32>,
    epoch: u32,
) -> End {
    let e = &sh.fleet.endpoints[ep];
    let mut link = Link::new(e.hdlc, e.concentrator, e.meters.len());
    let mut requests: Vec<Request> = Vec::new();
    let mut wire: Vec<u8> = Vec::new();
    loop {
        let current = *epoch_rx.borrow();
        if current == STOP {
            let _ = flush(sh, &mut sock, queue, rng, false).await;
            let _ = sock.shutdown().await;
            // The head-end closes once it has read everything up to our FIN: only then
            // is every push counted as sent really in its hands (a process that exits
            // earlier leaves orphaned sockets the kernel may reset).
            let mut buf = [0u8; 1024];
            let drained = tokio::time::timeout(sh.drain(), async {
                loop {
                    match tokio::io::AsyncReadExt::read(&mut sock, &mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
            })
            .await;
            if drained.is_err() {
                inc(&sh.stats.unconfirmed_closes, 1);
            }
            return End::Stop;
        }
        if current != epoch {
            return End::Storm;
        }
        if !queue.is_empty() {
            if let Some(end) = flush(sh, &mut sock, queue, rng, true).await {
                return end;
            }
            continue;
        }
        let next = slots.iter().filter(|s| s.left != Some(0)).map(|s| s.due).min();
        tokio::select! {
            _ = epoch_rx.changed() => {}
            r = sock.readable() => {
                if r.is_err() {
                    inc(&sh.stats.closed_by_peer, 1);
                    return End::Closed;
                }
                let mut buf = vec![0u8; 4096];
                match sock.try_read(&mut buf) {
                    Ok(0) => {
                        inc(&sh.stats.closed_by_peer, 1);
                        return End::Closed;
                    }
                    Ok(n) => {
                        inc(&sh.stats.bytes_in, n as u64);
                        link.receive(&buf[..n], &mut requests, &mut wire);
                        inc(&sh.stats.link_errors, std::mem::take(&mut link.errors));
                        serve(sh, e, slots, &mut link, &mut requests, &mut wire, queue);
                        if !wire.is_empty() {
                            inc(&sh.stats.bytes_out, wire.len() as u64);
                            if sock.write_all(&wire).await.is_err() {
                                inc(&sh.stats.closed_by_peer, 1);
                                return End::Closed;
                            }
                            wire.clear();
                        }
                    }
                    Err(ref x) if x.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => {
                        inc(&sh.stats.closed_by_peer, 1);
                        return End::Closed;
                    }
                }
            }
            _ = async { match next { Some(t) => sleep_until(t).await, None => std::future::pending().await } } => {
                due_pushes(sh, ep, slots, queue);
            }
        }
    }
}

fn hex_upper(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

/// Answers the requests read so far.
fn serve(
    sh: &Shared,
    e: &crate::fleet::Endpoint,
    slots: &mut [Slot],
    link: &mut Link,
    requests: &mut Vec<Request>,
    wire: &mut Vec<u8>,
    queue: &mut VecDeque<Outgoing>,
) {
    for req in requests.drain(..) {
        let Some(s) = slots.get_mut(req.slot) else { continue };
        inc(&sh.stats.requests, 1);
        let spec = &sh.fleet.meters[s.meter.index as usize];
        let now = sh.sim_now();
        let out = s.meter.handle(spec, &sh.grid, now, &req.apdu);
        for apdu in &out.apdus {
            inc(&sh.stats.responses, 1);
            link.respond(req.slot, req.client, apdu, wire);
        }
        if let (Some((ek, ak)), Some(p)) = (out.rekeyed, &sh.opt.fleet.keys_file) {
            let line = format!("{},{},{}\n", spec.serial, hex_upper(&ek), hex_upper(&ak));
            let kept = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .and_then(|mut f| std::io::Write::write_all(&mut f, line.as_bytes()));
            if let Err(err) = kept {
                eprintln!("headend-sim: cannot keep {}'s new keys in {}: {err}", spec.serial, p.display());
            }
        }
        if let Some(off) = out.switched {
            inc(if off { &sh.stats.disconnects } else { &sh.stats.reconnects }, 1);
            let what = if off { "disconnected" } else { "reconnected" };
            sh.record(|l| {
                let _ = write!(l, "{{\"k\":\"c\",\"s\":\"{}\",\"ts\":{:.0},\"what\":\"{what}\"}}", spec.serial, now);
            });
        }
        // Disconnector and clock events are pushed as alarms right away.
        let meter_now = s.meter.meter_time(spec, sh.sim_now()) as i64;
        for code in out.events {
            let apdu = s.meter.alarm_push(spec, meter_now, code);
            let rec = record_event(sh, &spec.serial, meter_now, code, "alarm");
            queue.push_back(Outgoing { bytes: frame_push(e, req.slot, &apdu), record: rec, kind: Kind::Alarm });
        }
    }
}

/// Writes the queued pushes, applying faults when `faults` is set; returns how the
/// connection ended if it did.
async fn flush(
    sh: &Shared,
    sock: &mut TcpStream,
    queue: &mut VecDeque<Outgoing>,
    rng: &mut Rng,
    faults: bool,
) -> Option<End> {
    while let Some(o) = queue.pop_front() {
        if faults && sh.opt.fault_stall > 0.0 && rng.chance(sh.opt.fault_stall) {
            inc(&sh.stats.fault_stall, 1);
            inc(&sh.stats.aborted_pushes, 1);
            let half = o.bytes.len() / 2;
            let _ = sock.write_all(&o.bytes[..half]).await;
            let mut rx = sh.epoch.subscribe();
            tokio::select! {
                _ = sleep(Duration::from_secs_f64(sh.opt.stall_seconds)) => {}
                _ = rx.changed() => {}
            }
            return Some(End::Fault);
        }
        if sock.write_all(&o.bytes).await.is_err() {
            // Not sent: it goes back to the queue for the next connection.
            queue.push_front(o);
            inc(&sh.stats.closed_by_peer, 1);
            return Some(End::Closed);
        }
        sent(sh, o);
        if faults && sh.opt.fault_garbage > 0.0 && rng.chance(sh.opt.fault_garbage) {
            inc(&sh.stats.fault_garbage, 1);
            let n = 16 + (rng.next_u64() % 240) as usize;
            let junk: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            let _ = sock.write_all(&junk).await;
            let _ = sock.shutdown().await;
            return Some(End::Fault);
        }
        if faults && sh.opt.fault_drop > 0.0 && rng.chance(sh.opt.fault_drop) {
            inc(&sh.stats.fault_drop, 1);
            let _ = sock.shutdown().await;
            return Some(End::Fault);
        }
    }
    None
}
