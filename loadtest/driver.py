"""The load driver: a simulated fleet against a head-end, measured.

    python -m loadtest run --meters 100000 --interval 1 --duration 60 --encrypt

1. generates a grid and fleet (`loadtest.grid`) and starts `headend serve` on a fresh
   data directory with them imported (or, with ``--connect PORT --data DIR``, imports
   them into a head-end that is already running on loopback);
2. runs the Rust simulator (`headend-sim`) in as many processes as the connections
   need (each process holds at most ~15,000, from its own 127.x source addresses), each
   meter pushing once every ``--interval`` real seconds for ``--duration`` seconds;
3. meanwhile sends probe pushes from a meter of its own and times each until its
   reading is queryable in ClickHouse;
4. when the fleet stops, waits for the store to settle and counts what reached
   ClickHouse against what the simulators report they sent.

It reports connections, pushes sent, readings stored, lost and duplicated readings
(must be zero), pushes/s sent and stored in the steady window, push-to-stored latency
percentiles, CPU of the head-end and of the simulators, and the head-end's resident
memory per session; and names the bottleneck. Results go to
``bench/results/loadtest-<time>.json`` with the command line and the machine.

Loopback only; bounded in meters (5 M) and time (2 h); stops by itself.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import itertools
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from headend.balance import ELECTRICITY_IMPORT, GAS_VOLUME, obis_int
from loadtest import results, sim, waves
from loadtest.grid import generate
from loadtest.headend import Headend, cpu_times, free_port, rss_kib

ROOT = Path(__file__).resolve().parent.parent
MAX_METERS = 5_000_000
MAX_DURATION = 7200.0
PER_PROCESS = 15_000
SIM_INTERVAL = 900  # each push advances the simulated clock a quarter hour
TZ = dt.timezone(dt.timedelta(hours=5))


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "--meters", type=int, required=True, help="consumer meters (balance meters come on top)"
    )
    ap.add_argument(
        "--interval", type=float, required=True, help="real seconds between a meter's pushes"
    )
    ap.add_argument("--duration", type=float, required=True, help="real seconds the fleet pushes")
    ap.add_argument(
        "--encrypt", action="store_true", help="meters have keys and push AES-GCM ciphered"
    )
    ap.add_argument("--gas-share", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--spread", type=float, default=1.0, help="share of the interval pushes spread over"
    )
    ap.add_argument(
        "--workers", type=int, default=0, help="head-end workers (default: enough for the sessions)"
    )
    ap.add_argument(
        "--processes", type=int, default=0, help="simulator processes (default: 1 per 15,000)"
    )
    ap.add_argument("--hdlc", type=float, default=0.05, help="share of HDLC connections")
    ap.add_argument(
        "--udp", type=float, default=0.0, help="share of single meters pushing over UDP (NB-IoT)"
    )
    ap.add_argument(
        "--concentrators", type=float, default=0.1, help="share of transformers with a concentrator"
    )
    ap.add_argument(
        "--connect-rate", type=float, default=5000.0, help="connections/s per simulator process"
    )
    ap.add_argument("--fault-drop", type=float, default=0.0)
    ap.add_argument("--fault-garbage", type=float, default=0.0)
    ap.add_argument("--fault-stall", type=float, default=0.0)
    ap.add_argument(
        "--storm-at",
        default="",
        metavar="S[:D],...",
        help="real seconds after the fleet starts when every connection drops; :D keeps "
        "the meters offline D seconds (a blackout) before they all reconnect; the report's "
        "`storm` gives the time to all online and to the store catching up",
    )
    ap.add_argument(
        "--attack",
        default="",
        metavar="KIND:N,...",
        help="hostile traffic from 127.254.0.1 while the fleet pushes (loadtest/attack.py): "
        "idle:N connections that never speak, garbage:K writing random bytes, junk:K "
        "writing well-framed junk APDUs; e.g. idle:19000,garbage:20",
    )
    ap.add_argument(
        "--attack-rate", type=float, default=2000.0, help="the attacker's new connections/s"
    )
    ap.add_argument(
        "--kill-worker-at",
        type=float,
        default=0.0,
        metavar="S",
        help="kill -9 the busiest head-end worker S real seconds after the fleet starts; "
        "the report counts what died with it and what the recovery reads brought back",
    )
    ap.add_argument(
        "--wave",
        default="",
        metavar="rekey|firmware[:BYTES]",
        help="while the fleet pushes, a wave per region: new keys (needs --encrypt), or a "
        "firmware image of BYTES (64 KiB) for every meter; the report's `wave` says how "
        "long they took and each meter's outcome",
    )
    ap.add_argument("--wave-at", type=float, default=10.0, help="real seconds after the start")
    ap.add_argument("--wave-concurrency", type=int, default=200, help="meters at a time per wave")
    ap.add_argument(
        "--wave-faults",
        default="",
        metavar="refuse=F,verify=F,drop=F",
        help="shares of meters that refuse new keys, fail an image's verification, lose "
        "the link once halfway through a transfer",
    )
    ap.add_argument(
        "--ingest-interval",
        type=float,
        default=0.5,
        help="the head-end's store ingest round (default 0.5 s, the head-end's default)",
    )
    ap.add_argument(
        "--probes-per-s", type=float, default=5.0, help="probe pushes per second (latency)"
    )
    ap.add_argument(
        "--settle", type=float, default=120.0, help="at most this long for the store to catch up"
    )
    ap.add_argument(
        "--connect", type=int, default=0, metavar="PORT", help="use a running head-end on this port"
    )
    ap.add_argument("--data", type=Path, help="its data directory (with --connect)")
    ap.add_argument("--keep", type=Path, help="keep the fleet, data and logs in this directory")
    ap.add_argument(
        "--start",
        help="simulated time at the start (ISO 8601; default now): with a fast clock, "
        "start in the past to keep the readings out of the future",
    )
    ap.add_argument("--results", type=Path, default=results.DEFAULT_DIR, help="where the JSON goes")
    ap.add_argument("--no-results", action="store_true", help="print only, write no result file")


class SimProcess:
    """One simulator process and the status lines it prints."""

    def __init__(self, proc: subprocess.Popen[str], log: IO[str]) -> None:
        self.proc = proc
        self.log = log
        self.last: dict[str, Any] = {}
        self.lines: list[tuple[float, dict[str, Any]]] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for st in sim.status_lines(self.proc.stdout):
            self.last = st
            self.lines.append((time.monotonic(), st))


class Sampler(threading.Thread):
    """Once a second: readings stored (pushed), and the store's CPU seconds and RSS;
    the simulators' own lines give what they sent and how many are connected."""

    def __init__(self, h: Headend, store_pid: int) -> None:
        super().__init__(daemon=True)
        self.h, self.store_pid = h, store_pid
        self.samples: list[tuple[float, int, float, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            t = time.monotonic()
            try:
                stored = int(self.h.scalar(f"SELECT count() FROM ami.readings WHERE {PUSHED}"))
            except Exception:  # the store is busy or away: the sample is skipped
                stored = -1
            cpu = sum(cpu_times(self.store_pid))
            with contextlib.suppress(OSError):
                self.samples.append((t, stored, cpu, rss_kib(self.store_pid)))
            self.stop.wait(max(0.0, 1.0 - (time.monotonic() - t)))


class Probe(threading.Thread):
    """A meter of the driver's own: one push every 1/rate seconds on its own
    connection, each timed until its reading can be queried."""

    def __init__(
        self,
        h: Headend,
        port: int,
        meter: dict[str, Any],
        rate: float,
        encrypt: bool,
        *,
        check: Headend | None = None,
    ) -> None:
        super().__init__(daemon=True)
        self.h, self.port, self.meter, self.rate, self.encrypt = h, port, meter, rate, encrypt
        # Where the reading must show (another node: the centre), and whether a push
        # counts for the latency (not while a fault keeps it from getting there).
        self.check = check or h
        self.unaffected: Callable[[], bool] = lambda: True
        self.latencies: list[float] = []
        self.sent = 0
        self.stop = threading.Event()
        self.error = ""

    def run(self) -> None:
        try:
            self._run()
        except Exception as e:
            self.error = f"{type(e).__name__}: {e}"

    def _run(self) -> None:
        from headend import codec
        from headend.server.admin import AdminClient, AdminError, ServerNotRunning

        m = self.meter
        try:
            sock = socket.create_connection(("127.0.0.1", self.port))
            admin = AdminClient(self.check.data / "admin.sock", timeout=120)
        except OSError as e:
            self.error = str(e)
            return
        start = dt.datetime(2026, 1, 1, tzinfo=TZ)
        i = 0
        while not self.stop.is_set():
            when = start + dt.timedelta(minutes=15 * i)
            clock = codec.data("octet-string", codec.encode_data(codec.date_time(when))[1:].hex())
            apdu = codec.encode_apdu(
                {
                    "apdu": "data-notification",
                    "long_invoke_id": {"invoke_id": i & 0xFFFFFF},
                    "date_time": None,
                    "body": codec.data(
                        "structure",
                        [
                            codec.data("octet-string", m["serial"].encode().hex()),
                            clock,
                            codec.data("double-long-unsigned", 1000 + i),
                            codec.data("double-long-unsigned", 0),
                            codec.data("long-unsigned", 2300),
                            codec.data("long-unsigned", 100),
                            codec.data("double-long-unsigned", 230),
                            codec.data("boolean", True),
                        ],
                    ),
                }
            )
            if self.encrypt:
                apdu = codec.encrypt(
                    apdu,
                    ek=m["ek"],
                    ak=m["ak"],
                    system_title=m["title"],
                    # From the wall clock, as the simulator's meters count.
                    invocation_counter=int((time.time() - 1_735_689_600) * 8) + i,
                )
            t0 = time.perf_counter()
            clear = self.unaffected()
            sock.sendall(codec.wrap(apdu))
            self.sent += 1
            ts = int(when.timestamp())
            q = (
                f"SELECT count() FROM ami.readings WHERE meter = '{m['serial']}' "
                f"AND ts = toDateTime({ts}, 'UTC')"
            )
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not self.stop.is_set():
                try:
                    seen = admin.call("query", query=q)["rows"][0][0] >= 6
                except (AdminError, ServerNotRunning, OSError):
                    # The node checked restarts: ask again once it is back.
                    admin.close()
                    time.sleep(0.5)
                    admin = AdminClient(self.check.data / "admin.sock", timeout=120)
                    continue
                if seen:
                    if clear and self.unaffected():
                        self.latencies.append(time.perf_counter() - t0)
                    break
                # Every query costs the store a few milliseconds of CPU: poll at 20/s.
                time.sleep(0.05)
            i += 1
            self.stop.wait(max(0.0, 1.0 / self.rate - (time.perf_counter() - t0)))
        sock.close()
        admin.close()


def percentiles(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {"samples": 0}
    s = sorted(xs)

    def p(q: float) -> float:
        return round(s[min(len(s) - 1, int(len(s) * q))], 4)

    return {"samples": len(s), "p50": p(0.5), "p90": p(0.9), "p99": p(0.99), "max": round(s[-1], 4)}


def probe_meter(fleet: Path, encrypt: bool) -> tuple[dict[str, Any], Path]:
    """A meter outside the fleet (so no simulator runs it), on the first transformer."""
    import csv as _csv

    with open(fleet / "grid.csv", encoding="utf-8") as f:
        node = next(r["node_id"] for r in _csv.DictReader(f) if r["level"] == "transformer")
    m: dict[str, Any] = {"serial": "PROBE00001", "title": b"PRB" + (1).to_bytes(5, "big")}
    m["ek"], m["ak"] = os.urandom(16), os.urandom(16)
    keys = f"{m['title'].hex()},{m['ek'].hex()},{m['ak'].hex()}" if encrypt else ",,"
    path = fleet.parent / "probe.csv"
    path.write_text(
        "serial,kind,role,node_id,account_id,model,system_title,ek,ak,password,lat,lon\n"
        f"{m['serial']},electricity,consumer,{node},PROBE,e1ph,{keys},,41.3,69.3\n"
    )
    return m, path


def run(args: argparse.Namespace) -> int:
    try:
        result = measure(args)
    except (RuntimeError, ValueError, FileNotFoundError) as e:
        print(f"loadtest run: {e}", file=sys.stderr)
        return 1
    rec = results.record("python -m loadtest", result)
    print(json.dumps(rec, indent=2))
    if not args.no_results:
        results.save("loadtest", rec, args.results)
    if result["duplicated_readings"]:
        return 3
    kill = result.get("worker_kill")
    if kill:  # the business-level figure: energy intervals missing after recovery
        return 0 if kill["energy_intervals_missing_after_recovery"] == 0 else 3
    return 0 if result["lost_readings"] == 0 else 3


def measure(args: argparse.Namespace) -> dict[str, Any]:
    if not 0 < args.meters <= MAX_METERS:
        raise ValueError(f"--meters must be 1..{MAX_METERS}")
    if not 0 < args.duration <= MAX_DURATION:
        raise ValueError(f"--duration must be at most {MAX_DURATION:.0f} s")
    if args.interval <= 0:
        raise ValueError("--interval must be positive")
    if args.connect and not args.data:
        raise ValueError("--connect needs --data DIR of the running head-end")
    sim.binary()
    tmp = None
    if args.keep:
        root = args.keep
        root.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.mkdtemp(prefix="headend-loadtest-")
        root = Path(tmp)
    try:
        return _measure(args, root)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


EVENT_SOURCES = "source IN ('push', 'event-notification')"
PUSHED = "source = 'push'"
A_PLUS = obis_int(ELECTRICITY_IMPORT)
GAS = obis_int(GAS_VOLUME)


@dataclass
class Window:
    """Counters at the start or the end of the steady window."""

    t: float = 0.0
    pushes: int = 0
    stored: int = 0
    cpu: dict[int, tuple[float, float]] = field(default_factory=dict)
    cpu_sims: tuple[float, float] = (0.0, 0.0)


ATTACK_KINDS = ("idle", "garbage", "junk")
ATTACK_SOURCE = "127.254.0.1"


def parse_attack(spec: str) -> dict[str, int]:
    """`idle:19000,garbage:20` -> {"idle": 19000, "garbage": 20}."""
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        kind, _, n = part.partition(":")
        if kind not in ATTACK_KINDS or not n.isdigit() or int(n) <= 0:
            raise SystemExit(
                f"--attack: {part!r} is not KIND:N with KIND one of {', '.join(ATTACK_KINDS)}"
            )
        out[kind] = int(n)
    return out


def _measure(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    r = LoadRun(args, root)
    r.prepare()
    try:
        r.start_fleet()
        r.sampler = Sampler(r.h, r.store_pid)
        r.sampler.start()
        r.wait_connected()
        r.start_attack()
        w0 = r.window_edge()
        probe = Probe(r.h, r.port, r.probe, args.probes_per_s, args.encrypt)
        if args.probes_per_s > 0:
            probe.start()
        # The window ends a second before the simulators stop.
        while time.monotonic() < r.t_start + r.ramp + args.duration - 1.0:
            if (
                args.kill_worker_at
                and not r.killed
                and (time.monotonic() >= r.t_start + args.kill_worker_at)
            ):
                r.kill_worker()
            if r.wave is not None:
                if not r.wave.waves and time.monotonic() >= r.t_start + args.wave_at:
                    r.wave.start()
                elif r.wave.waves:
                    r.wave.poll()
            time.sleep(0.5)
        w1 = r.window_edge()
        probe.stop.set()
        r.finish(probe)
        r.sampler.stop.set()
        return r.report(w0, w1, probe)
    finally:
        r.cleanup()


class LoadRun:
    def __init__(self, args: argparse.Namespace, root: Path) -> None:
        self.args, self.root = args, root
        self.fleet_dir = root / "fleet"
        self.logs = root / "sim-logs"
        self.procs: list[SimProcess] = []
        self.finals: list[dict[str, Any]] = []
        self.setup_s: dict[str, float] = {}
        self.connections = self.connected_at_steady = self.sessions = 0
        self.rss0: dict[int, int] = {}
        self.rss1: dict[int, int] = {}
        self.t_start = 0.0
        self.attack = parse_attack(args.attack)
        self.killed: dict[str, Any] = {}
        self.cpu_dead: dict[int, tuple[float, float]] = {}
        self.sampler: Sampler | None = None
        self.attacker: subprocess.Popen[str] | None = None
        self.attack_result: dict[str, Any] = {}
        self.wave: waves.WaveRun | None = None

    def prepare(self) -> None:
        args = self.args
        t = time.monotonic()
        fleet = generate(
            args.meters, args.gas_share, self.fleet_dir, seed=args.seed, plain=not args.encrypt
        )
        self.total_meters = int(fleet.truth["summary"]["meters"])
        self.setup_s["grid"] = round(time.monotonic() - t, 1)
        self.processes = args.processes or max(1, math.ceil(self.total_meters / PER_PROCESS))
        self.workers = args.workers or max(
            os.cpu_count() or 1, math.ceil(self.total_meters / 18_000)
        )
        self.speed = SIM_INTERVAL / args.interval
        self.ramp = self.total_meters / self.processes / args.connect_rate
        self.probe, probe_csv = probe_meter(self.fleet_dir, args.encrypt)
        if args.connect:
            self.port = args.connect
            self.h = Headend(self.root, port=self.port, data=args.data)
        else:
            self.port = free_port()
            self.h = Headend(
                self.root,
                port=self.port,
                server={
                    "workers": self.workers,
                    "max_connections_per_worker": 19_000,
                    "handshake_timeout": 600.0,
                    "idle_timeout": 3600.0,
                    "sweep_interval": 5.0,
                },
                store={"ingest_interval": args.ingest_interval, "fsync": "interval"},
            )
        t = time.monotonic()
        self.h.import_fleet(self.fleet_dir / "grid.csv", self.fleet_dir / "meters.csv")
        self.h.cli("meters", "import", str(probe_csv))
        self.setup_s["import"] = round(time.monotonic() - t, 1)
        if not args.connect:
            self.h.start()
        self.worker_pids, self.store_pid = self.h.pids()
        if args.wave:
            self.wave = waves.WaveRun(
                self.h,
                self.root,
                args.wave,
                args.wave_concurrency,
                skip=(str(self.probe["serial"]),),
            )
        self.rss0 = {p: rss_kib(p) for p in self.worker_pids}
        self.base_rows = int(self.h.scalar("SELECT count() FROM ami.readings"))
        self.base_events = int(
            self.h.scalar(f"SELECT count() FROM ami.events WHERE {EVENT_SOURCES}")
        )

    def sim_args(self, k: int) -> list[str]:
        a = self.args
        sources = sim.fleet_sources(k, math.ceil(self.total_meters / self.processes))
        extra = [
            "--partition", f"{k}/{self.processes}",
            "--source", ",".join(sources),
            "--speed", str(self.speed),
            "--interval", str(SIM_INTERVAL),
            "--gas-interval", str(SIM_INTERVAL),
            "--spread", str(a.spread),
            "--duration", str(a.duration + self.ramp),
            "--connect-rate", str(a.connect_rate),
            "--hdlc", str(a.hdlc),
            "--udp", str(a.udp),
            "--concentrators", str(a.concentrators),
            "--gaps", "0",
            "--status-every", "1",
            "--fault-drop", str(a.fault_drop),
            "--fault-garbage", str(a.fault_garbage),
            "--fault-stall", str(a.fault_stall),
        ]  # fmt: skip
        if a.storm_at:
            extra += ["--storm-at", a.storm_at]
        extra += waves.sim_faults(a.wave_faults)
        if a.start:
            extra += ["--start", a.start]
        return extra

    def start_fleet(self) -> None:
        self.logs.mkdir(exist_ok=True)
        for k in range(self.processes):
            log = open(self.logs / f"sim-{k}.log", "w", encoding="utf-8")  # noqa: SIM115
            proc = sim.start(self.fleet_dir, self.port, *self.sim_args(k), stderr=log)
            self.procs.append(SimProcess(proc, log))
        self.t_start = time.monotonic()

    def wait_connected(self) -> None:
        deadline = self.t_start + self.ramp + 120
        while time.monotonic() < deadline:
            time.sleep(0.5)
            if any(p.proc.poll() is not None for p in self.procs):
                raise RuntimeError("a simulator exited early: " + _tail(self.logs))
            if all(p.last for p in self.procs):
                self.connections = sum(int(p.last["connections"]) for p in self.procs)
                if sum(int(p.last["connected"]) for p in self.procs) >= self.connections:
                    break
        self.connected_at_steady = sum(int(p.last.get("connected", 0)) for p in self.procs)
        time.sleep(2.0)
        self.sessions = int(self.h.admin("status")["sessions"])
        self.rss1 = {p: rss_kib(p) for p in self.worker_pids}

    def kill_worker(self) -> None:
        """kill -9 of the worker holding the most sessions."""
        workers = self.h.admin("status")["workers"]
        w = max(workers, key=lambda x: x["sessions"])
        # Its CPU up to the kill stands for it at the window's end (it is gone then).
        self.cpu_dead[int(w["pid"])] = cpu_times(int(w["pid"]))
        os.kill(int(w["pid"]), signal.SIGKILL)
        self.killed = {
            "at_s": round(time.monotonic() - self.t_start, 1),
            "worker": w["worker"],
            "pid": w["pid"],
            "sessions": w["sessions"],
        }

    def wait_recovered(self) -> None:
        """Until the recovery reads queued for the killed worker's meters are final."""
        deadline = time.monotonic() + self.args.settle
        while time.monotonic() < deadline:
            done, total = self.h.admin(
                "query",
                query="SELECT countIf(state IN ('done', 'failed', 'expired', 'cancelled')), "
                "count() FROM ami.command_status WHERE requested_by = 'recovery'",
            )["rows"][0]
            if total and done == total:
                break
            time.sleep(1.0)

    def energy_missing(self, where: str) -> int:
        """Intervals without an energy reading between each meter's first and last one:
        A+ every quarter hour (electricity), the gas volume every hour (the gas load
        profile's period), the probe meter apart."""
        return int(
            self.h.scalar(
                "SELECT sum(gaps) FROM (SELECT meter, obis, "
                "intDiv(toInt64(max(ts)) - toInt64(min(ts)), any(period)) + 1 "
                "- uniqExact(ts) AS gaps FROM (SELECT meter, obis, ts, "
                f"if(obis = {A_PLUS}, 900, 3600) AS period FROM ami.readings "
                f"WHERE ((obis = {A_PLUS} AND toInt64(ts) % 900 = 0) "
                f"OR (obis = {GAS} AND toInt64(ts) % 3600 = 0)) "
                f"AND meter != '{self.probe['serial']}' {where}) GROUP BY meter, obis)"
            )
            or 0
        )

    def kill_report(self) -> dict[str, Any]:
        st = self.h.admin("status")
        recovered = int(
            self.h.scalar(
                "SELECT count() FROM (SELECT meter, obis, ts FROM ami.readings "
                "GROUP BY meter, obis, ts HAVING countIf(source = 'push') = 0)"
            )
        )
        return {
            **self.killed,
            "recovery_reads": st["commands"].get("recovery_reads", 0),
            "recovery_reads_done": int(
                self.h.scalar(
                    "SELECT count() FROM ami.command_status "
                    "WHERE requested_by = 'recovery' AND state = 'done'"
                )
            ),
            "readings_lost_in_flight": self.expected - self.distinct,
            "readings_recovered": recovered,
            "energy_intervals_missing_pushes": self.energy_missing("AND source = 'push'"),
            "energy_intervals_missing_after_recovery": self.energy_missing(""),
        }

    def storm_report(self) -> dict[str, Any]:
        """The first storm: when the meters were all back online after the blackout,
        when the store had caught up with what they sent (buffered pushes included),
        and the store's peak CPU and memory meanwhile."""
        first = self.args.storm_at.split(",")[0]
        at_s, _, down_s = first.partition(":")
        at, down = float(at_s), float(down_s or 0)
        t_storm = self.t_start + at
        t_back = t_storm + down
        # Sums over the simulators' status lines, by time.
        lines = sorted((t, i, st) for i, p in enumerate(self.procs) for t, st in p.lines)
        latest: dict[int, dict[str, Any]] = {}
        series: list[tuple[float, int, int]] = []
        for t, i, st in lines:
            latest[i] = st
            series.append(
                (
                    t,
                    sum(int(x.get("connected", 0)) for x in latest.values()),
                    sum(int(x.get("readings", 0)) for x in latest.values()),
                )
            )
        all_online = next(
            (t for t, conn, _ in series if t >= t_back and conn >= self.connections), None
        )
        samples = self.sampler.samples if self.sampler else []

        def sent_at(t: float) -> int:
            before = [r for tt, _, r in series if tt <= t]
            return before[-1] if before else 0

        # Caught up: stored (pushed readings) reaches what the fleet had sent a second
        # earlier, counted from a second after all were online (their buffers sent).
        since = (all_online if all_online is not None else t_back) + 1.0
        caught_up = next(
            (t for t, stored, _, _ in samples if t >= since and stored >= sent_at(t - 1.0)),
            None,
        )
        during = [x for x in samples if t_storm <= x[0] <= t_back + 120]
        cores = [(b[2] - a[2]) / max(1e-9, b[0] - a[0]) for a, b in itertools.pairwise(during)]
        return {
            "at_s": at,
            "blackout_s": down,
            "connections": self.connections,
            "all_online_after_s": None if all_online is None else round(all_online - t_back, 1),
            "readings_sent_during_return": sent_at(since) - sent_at(t_back),
            "stored_caught_up_after_s": None if caught_up is None else round(caught_up - t_back, 1),
            "store_peak_cores": round(max(cores), 2) if cores else None,
            "store_peak_rss_kib": max((x[3] for x in during), default=None),
        }

    def start_attack(self) -> None:
        """The attacker runs from now until the fleet stops."""
        if not self.attack:
            return
        left = self.t_start + self.ramp + self.args.duration - time.monotonic()
        cmd = [
            sys.executable, "-m", "loadtest.attack",
            "--port", str(self.port),
            "--source", ATTACK_SOURCE,
            "--rate", str(self.args.attack_rate),
            "--duration", str(max(1.0, left)),
        ]  # fmt: skip
        for kind, n in self.attack.items():
            cmd += [f"--{kind}", str(n)]
        self.attacker = subprocess.Popen(
            cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def stop_attack(self) -> None:
        if self.attacker is None:
            return
        try:
            out, err = self.attacker.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.attacker.kill()
            out, err = self.attacker.communicate()
        for line in out.splitlines():
            if line.startswith("{"):
                self.attack_result = json.loads(line)["attack"]
        if not self.attack_result:
            self.attack_result = {"error": err[-2000:]}

    def window_edge(self) -> Window:
        return Window(
            t=time.monotonic(),
            pushes=sum(int(p.last.get("pushes", 0)) for p in self.procs),
            stored=int(self.h.scalar(f"SELECT count() FROM ami.readings WHERE {PUSHED}")),
            cpu={
                p: self.cpu_dead.get(p) or cpu_times(p) for p in [*self.worker_pids, self.store_pid]
            },
            cpu_sims=(
                sum(cpu_times(p.proc.pid)[0] for p in self.procs),
                sum(cpu_times(p.proc.pid)[1] for p in self.procs),
            ),
        )

    def finish(self, probe: Probe) -> None:
        self.stop_attack()
        for p in self.procs:
            p.proc.wait(timeout=120)
            p.thread.join(10)
            p.log.close()
        if probe.is_alive():
            probe.join(150)
        self.finals = [p.last for p in self.procs]
        if not all(f.get("final") for f in self.finals):
            raise RuntimeError("a simulator did not finish cleanly: " + _tail(self.logs))
        self.sent_readings = sum(int(f["readings"]) for f in self.finals)
        self.sent_events = sum(int(f["alarms"]) + int(f["events"]) for f in self.finals)
        # Every probe push counts, also one whose reading did not show in time.
        self.expected = self.base_rows + self.sent_readings + 6 * probe.sent
        t = time.monotonic()
        stored, last_change = -1, t
        while time.monotonic() - t < self.args.settle and time.monotonic() - last_change < 30:
            now_rows = int(self.h.scalar(f"SELECT count() FROM ami.readings WHERE {PUSHED}"))
            if now_rows != stored:
                stored, last_change = now_rows, time.monotonic()
            if stored >= self.expected:
                break
            time.sleep(0.5)
        self.settle_s = time.monotonic() - t
        self.stored = stored
        # What the meters pushed (a recovery's profile reads come on top, as source
        # 'poll', and are counted apart).
        self.distinct = int(
            self.h.scalar(f"SELECT uniqExact(meter, obis, ts) FROM ami.readings WHERE {PUSHED}")
        )
        if self.killed:
            self.wait_recovered()
        self.stored_events = int(
            self.h.scalar(f"SELECT count() FROM ami.events WHERE {EVENT_SOURCES}")
        )
        st = self.h.admin("status")
        self.rejects = st.get("rejects", {})
        self.sources = st.get("sources", {})
        # What the refusals cost in log lines and rows (told in aggregate).
        self.reject_rows = int(
            self.h.scalar("SELECT count() FROM ami.events WHERE category = 'reject'")
        )
        log = self.h.log.read_text(errors="replace") if self.h.log.exists() else ""
        self.log_lines = len(log.splitlines())
        self.refusal_lines = sum(1 for line in log.splitlines() if " refused from " in line)

    def cleanup(self) -> None:
        if self.attacker is not None and self.attacker.poll() is None:
            self.attacker.kill()
        for p in self.procs:
            if p.proc.poll() is None:
                p.proc.kill()
            if not p.log.closed:
                p.log.close()
        if not self.args.connect and hasattr(self, "h"):
            self.h.stop()

    def bottleneck(self, target: float, sent: float, stored: float, lag: float, busy: float) -> str:
        cores = os.cpu_count() or 1
        if busy > 0.9 * cores and (sent < 0.97 * target or stored < 0.97 * sent):
            return (
                f"CPU: head-end and simulators kept the machine's {cores} cores "
                f"{100 * busy / cores:.0f} % busy"
            )
        if sent < 0.97 * target and lag > 1.0:
            return f"simulator: it fell behind its schedule (max lag {lag:.1f} s)"
        if stored < 0.97 * sent:
            return "head-end: stored fewer pushes/s than were sent (the store fell behind)"
        if sent < 0.97 * target:
            return "head-end: it read slower than the fleet pushed (TCP backpressure)"
        return "none: the fleet's rate was sent and stored"

    def report(self, w0: Window, w1: Window, probe: Probe) -> dict[str, Any]:
        a, f = self.args, self.finals
        window = max(1e-9, w1.t - w0.t)
        pushes = sum(int(x["pushes"]) for x in f)
        avg_regs = self.sent_readings / max(1, pushes)

        def used(pids: list[int]) -> tuple[float, float]:
            return (
                sum(w1.cpu[p][0] - w0.cpu[p][0] for p in pids),
                sum(w1.cpu[p][1] - w0.cpu[p][1] for p in pids),
            )

        workers_us, store_us = used(self.worker_pids), used([self.store_pid])
        sims_us = (w1.cpu_sims[0] - w0.cpu_sims[0], w1.cpu_sims[1] - w0.cpu_sims[1])
        cpu_workers, cpu_store, cpu_sims = sum(workers_us), sum(store_us), sum(sims_us)
        target = self.total_meters / a.interval
        window_pushes = max(1, w1.pushes - w0.pushes)
        sent_rate = (w1.pushes - w0.pushes) / window
        stored_rate = (w1.stored - w0.stored) / max(avg_regs, 1e-9) / window
        lag = max(float(x.get("max_lag_s", 0.0)) for x in f)
        return {
            "parameters": {
                "meters": a.meters,
                "meters_with_balance": self.total_meters,
                "interval_s": a.interval,
                "duration_s": a.duration,
                "encrypt": a.encrypt,
                "gas_share": a.gas_share,
                "speed": self.speed,
                "hdlc_share": a.hdlc,
                "concentrator_share": a.concentrators,
                "head_end_workers": None if a.connect else self.workers,
                "simulator_processes": self.processes,
                "faults": {
                    "drop": a.fault_drop,
                    "garbage": a.fault_garbage,
                    "stall": a.fault_stall,
                    "storm_at": a.storm_at,
                },
            },
            "setup_seconds": self.setup_s,
            "connections": self.connections,
            "connected_at_steady": self.connected_at_steady,
            "head_end_sessions": self.sessions,
            "connects": sum(int(x["connects"]) for x in f),
            "connect_failures": sum(int(x["connect_failures"]) for x in f),
            "pushes_sent": pushes,
            "alarms_and_events_sent": self.sent_events,
            "readings_sent": self.sent_readings,
            "probe_pushes": probe.sent,
            "readings_expected": self.expected - self.base_rows,
            "readings_stored": self.stored - self.base_rows,
            "lost_readings": self.expected - self.distinct,
            "duplicated_readings": self.stored - self.distinct,
            "events_stored": self.stored_events - self.base_events,
            "aborted_pushes_by_faults": sum(int(x["aborted_pushes"]) for x in f),
            "unconfirmed_closes": sum(int(x.get("unconfirmed_closes", 0)) for x in f),
            "dropped_offline": sum(int(x["dropped_offline"]) for x in f),
            "steady_window_s": round(window, 2),
            "target_pushes_per_s": round(target, 1),
            "pushes_per_s_sent": round(sent_rate, 1),
            "pushes_per_s_stored": round(stored_rate, 1),
            "readings_per_s_stored": round((w1.stored - w0.stored) / window, 1),
            "settle_seconds": round(self.settle_s, 1),
            "push_to_stored_latency_s": percentiles(probe.latencies),
            "probe_error": probe.error or None,
            "cpu_seconds_in_window": {
                "head_end_workers": round(cpu_workers, 2),
                "head_end_store": round(cpu_store, 2),
                "simulators": round(cpu_sims, 2),
                "user_system": {
                    "head_end_workers": [round(x, 2) for x in workers_us],
                    "head_end_store": [round(x, 2) for x in store_us],
                    "simulators": [round(x, 2) for x in sims_us],
                },
            },
            "cpu_microseconds_per_push": {
                "head_end": round(1e6 * (cpu_workers + cpu_store) / window_pushes, 2),
                "simulators": round(1e6 * cpu_sims / window_pushes, 2),
            },
            "cpu_cores_busy": {
                "head_end": round((cpu_workers + cpu_store) / window, 2),
                "simulators": round(cpu_sims / window, 2),
            },
            "head_end_rss_kib": {
                "before": sum(self.rss0.values()),
                "connected": sum(self.rss1.values()),
            },
            "head_end_bytes_per_session": round(
                (sum(self.rss1.values()) - sum(self.rss0.values())) * 1024 / max(1, self.sessions)
            ),
            "simulator_max_lag_s": lag,
            "rejects": self.rejects,
            "attack": {
                "spec": self.attack,
                "source": ATTACK_SOURCE if self.attack else None,
                "rate": a.attack_rate if self.attack else None,
                "attacker": self.attack_result,
                "sources": self.sources,
                "reject_event_rows": self.reject_rows,
                "log_lines": self.log_lines,
                "refusal_log_lines": self.refusal_lines,
            },
            "worker_kill": self.kill_report() if self.killed else None,
            "storm": self.storm_report() if a.storm_at else None,
            "wave": self.wave.report() if self.wave is not None else None,
            "bottleneck": self.bottleneck(
                target, sent_rate, stored_rate, lag, (cpu_workers + cpu_store + cpu_sims) / window
            ),
        }


def _tail(logs: Path) -> str:
    out = []
    for f in sorted(logs.glob("*.log")):
        with contextlib.suppress(OSError):
            out.append(f"{f.name}: {f.read_text()[-500:]}")
    return "\n".join(out)
