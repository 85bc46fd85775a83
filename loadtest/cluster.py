"""`python -m loadtest cluster`: a simulated country on loopback.

    python -m loadtest cluster --regions 3 --meters-per-region 2000 --duration 300

starts a national centre and a node per region (real `headend serve` processes with
their own data directories, ports and NATS servers; each region's link to the centre
a relay the driver cuts), generates a grid of those regions, imports it at the centre
(it goes down to the regions), runs a simulated fleet per region against its node in
fast time, and meanwhile injects faults on a schedule:

- the first region's link cut for a fifth of the run (an hour of simulated time at
  the default speed), then healed;
- the centre killed -9 (every process of it) and restarted;
- the second region's store killed -9 (its supervisor restarts it);
- the centre's NATS server killed -9, then the third region's;
- the third region lost for good: its node killed and never restarted, its meters
  pointed at its standby (the first region's node), which stores their pushes and
  sends them up.

It reports per region and at the centre: readings sent, stored in the region (the
lost node's store read from its disk), stored at the centre, lost, duplicated, the
longest lag seen, catch-up time after each heal, push-to-queryable at the centre
(probes: a meter of the driver's own per region, while links are up), and whether
every hour's balances at the centre equal each region's own. Results go to
`bench/results/cluster-*.json`.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtest import grid, results, sim
from loadtest.driver import Probe, percentiles
from loadtest.federation import CENTRE, Federation, Node

LOCAL = dt.timezone(dt.timedelta(hours=5))
# Regions by population, most first: the nodes are named after their codes.
BY_SIZE = [r[0] for r in sorted(grid.REGIONS, key=lambda r: -r[4])]
FAULTS = ("cut", "centre", "store", "nats", "lost")
CAUGHT_UP_S = 5.0  # a peer is caught up when its oldest unconfirmed record is younger


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--regions", type=int, default=3, help="region nodes (1-14; default 3)")
    p.add_argument("--meters-per-region", type=int, default=2000, help="consumers per region")
    p.add_argument("--duration", type=float, default=300.0, help="real seconds of fleet")
    p.add_argument(
        "--speed", type=float, default=60.0, help="simulated seconds per real second (60)"
    )
    p.add_argument("--interval", type=int, default=900, help="push interval, simulated s")
    p.add_argument("--gas-share", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=5)
    p.add_argument(
        "--faults",
        default=",".join(FAULTS),
        help=f"comma-separated, from {', '.join(FAULTS)}, or none (default: all)",
    )
    p.add_argument("--workers", type=int, default=1, help="workers per node (default 1)")
    p.add_argument("--probes-per-s", type=float, default=1.0, help="probe pushes per region")
    p.add_argument("--keep", type=Path, help="keep the nodes' directories here")
    p.add_argument("--results", type=Path, default=results.DEFAULT_DIR)
    p.add_argument("--no-results", action="store_true", help="do not write bench/results")


@dataclass
class Fault:
    name: str
    at: float  # seconds into the run
    detail: str = ""
    done_at: float | None = None
    healed_at: float | None = None
    caught_up_s: float | None = None


@dataclass
class Run:
    args: argparse.Namespace
    root: Path
    fed: Federation
    codes: dict[str, str]  # node name -> region code
    sim_start: float
    anchor: float
    began: float = 0.0
    sims: dict[str, list[subprocess.Popen[str]]] = field(default_factory=dict)
    sent: dict[str, int] = field(default_factory=dict)  # readings
    pushes: dict[str, int] = field(default_factory=dict)
    probes: dict[str, Probe] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    lag_max: dict[str, float] = field(default_factory=dict)
    lost_node: str | None = None
    lost_at: float = 0.0  # Unix time
    standby: dict[str, str] = field(default_factory=dict)
    down: set[str] = field(default_factory=set)  # nodes now unreachable (cut, killed)
    stop: threading.Event = field(default_factory=threading.Event)

    def t(self) -> float:
        return time.monotonic() - self.began


def run(args: argparse.Namespace) -> int:
    try:
        result = measure(args)
    except (RuntimeError, ValueError, FileNotFoundError) as e:
        print(f"loadtest cluster: {e}", file=sys.stderr)
        return 1
    rec = results.record("python -m loadtest", result)
    print(json.dumps(rec, indent=2))
    if not args.no_results:
        results.save("cluster", rec, args.results)
    ok = all(r["lost"] == 0 and r["duplicated"] == 0 for r in result["regions"].values())
    return 0 if ok and result["balances_match"] else 3


def measure(args: argparse.Namespace) -> dict[str, Any]:
    if not 1 <= args.regions <= len(BY_SIZE):
        raise ValueError(f"--regions must be 1..{len(BY_SIZE)}")
    faults = [] if args.faults == "none" else [f.strip() for f in args.faults.split(",")]
    wrong = sorted(set(faults) - set(FAULTS))
    if wrong:
        raise ValueError(f"unknown fault(s) {', '.join(wrong)}: from {', '.join(FAULTS)}")
    sim.binary()
    tmp = None
    if args.keep:
        root = args.keep
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
    else:
        tmp = tempfile.mkdtemp(prefix="headend-cluster-")
        root = Path(tmp)
    try:
        return _measure(args, root, faults)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def _measure(args: argparse.Namespace, root: Path, faults: list[str]) -> dict[str, Any]:
    codes = {c.lower(): c for c in BY_SIZE[: args.regions]}
    fleet = root / "fleet"
    grid.generate(
        args.meters_per_region * args.regions,
        args.gas_share,
        fleet,
        seed=args.seed,
        regions=list(codes.values()),
    )
    names = list(codes)
    standby = {names[2]: names[0]} if len(names) >= 3 and "lost" in faults else {}
    speed = float(args.speed)
    # Simulated time starts at yesterday's midnight in Tashkent, so what the run
    # leaves is in the past for the real clock too.
    midnight = dt.datetime.now(LOCAL).replace(hour=0, minute=0, second=0, microsecond=0)
    sim_start = (midnight - dt.timedelta(days=1)).timestamp()
    anchor = time.time() + 30  # the fleet starts once the nodes are up (re-anchored)
    fed = Federation(
        root,
        {n: [f"UZ-{c}"] for n, c in codes.items()},
        standby=standby,
        workers=args.workers,
        server={"handshake_timeout": 60.0},
        store={
            "ingest_interval": 0.2,
            "balance_interval": max(5.0, 4 * args.interval / speed),
            "balance_window": 6 * 3600,
            "anomaly_interval": 0.0,
        },
        sections={
            # The scheduler backfills estimated hours from the meters' load profiles
            # (what a lost node took with it); no daily reads or clock checks here.
            "commands": {
                "schedule_interval": 20.0,
                "backfill_days": 2,
                "daily_read_days": 0.0,
                "clock_check_days": 0.0,
            },
            "billing": {"policy": False},
        },
    )
    fed.setup()
    r = Run(args, root, fed, codes, sim_start, anchor, standby=standby)
    try:
        _run(r, fleet, faults)
        return _report(r, faults)
    finally:
        r.stop.set()
        for procs in r.sims.values():
            for proc in procs:
                with contextlib.suppress(Exception):
                    proc.kill()
                    proc.communicate(timeout=10)
        for probe in r.probes.values():
            probe.stop.set()
        fed.stop()


def _clock(r: Run) -> dict[str, Any]:
    return {"speed": r.args.speed, "start": r.sim_start, "anchor": r.anchor}


def _run(r: Run, fleet: Path, faults: list[str]) -> None:
    fed, args = r.fed, r.args
    # Every node's clock follows the fleet's: written before they start.
    for n in fed.nodes.values():
        text = n.h.config.read_text()
        clock = _clock(r)
        n.h.config.write_text(
            text + "[clock]\n" + "".join(f"{k} = {v}\n" for k, v in clock.items())
        )
    fed.start()
    c = fed.centre.h
    c.import_fleet(fleet / "grid.csv", fleet / "meters.csv")
    probes = _probe_meters(r, fleet)
    c.cli("meters", "import", str(probes))
    for name in r.codes:
        n = fed.nodes[name]
        expected = _count_csv(fleet / "meters.csv", f"UZ-{r.codes[name]}") + 1
        fed.wait_equal(
            f"{name}'s meters",
            lambda n=n, name=name: int(
                n.h.scalar(
                    f"SELECT count() FROM ami.meters FINAL WHERE region = 'UZ-{r.codes[name]}'"
                )
            ),
            expected,
            timeout=120,
        )
    # The fleet's simulated time must match the nodes' clocks from here on.
    r.began = time.monotonic()
    now_sim = r.sim_start + (time.time() - r.anchor) * args.speed
    for name in r.codes:
        r.sims[name] = [
            _start_sim(
                r, fleet, name, fed.nodes[name].port, now_sim=now_sim, duration=args.duration
            )
        ]
    for probe in r.probes.values():
        probe.start()
    monitor = threading.Thread(target=_monitor, args=(r,), daemon=True)
    monitor.start()
    _faults(r, fleet, faults)
    for name, procs in r.sims.items():
        r.sent[name] = r.pushes[name] = 0
        for proc in procs:
            left = max(30.0, args.duration - r.t() + 60)
            final = _final(proc, left)
            r.sent[name] += final["readings"]
            r.pushes[name] += final["pushes"]
    for probe in r.probes.values():
        probe.stop.set()
        probe.join(130)
    _drain(r)
    r.stop.set()


def _count_csv(path: Path, region: str) -> int:
    with open(path, newline="", encoding="utf-8") as f:
        return sum(1 for m in csv.DictReader(f) if m["node_id"].startswith(region))


def _probe_meters(r: Run, fleet: Path) -> Path:
    """A meter of the driver's own per region (no simulator runs it), on the
    region's first transformer; its pushes are timed until the centre has them."""
    with open(fleet / "grid.csv", newline="", encoding="utf-8") as f:
        nodes = [n for n in csv.DictReader(f) if n["level"] == "transformer"]
    lines = ["serial,kind,role,node_id,account_id,model,system_title,ek,ak,password,lat,lon"]
    for k, (name, code) in enumerate(r.codes.items()):
        node = next(n["node_id"] for n in nodes if n["node_id"].startswith(f"UZ-{code}-"))
        m: dict[str, Any] = {
            "serial": f"PROBE-{code}",
            "title": b"PRB" + (k + 1).to_bytes(5, "big"),
            "ek": os.urandom(16),
            "ak": os.urandom(16),
        }
        lines.append(
            f"{m['serial']},electricity,consumer,{node},PROBE,e1ph,{m['title'].hex()},"
            f"{m['ek'].hex()},{m['ak'].hex()},,41.3,69.3"
        )
        n = r.fed.nodes[name]
        probe = Probe(n.h, n.port, m, r.args.probes_per_s, True, check=r.fed.centre.h)
        probe.unaffected = functools.partial(_clear, r, name)
        r.probes[name] = probe
    path = r.root / "probes.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def _clear(r: Run, name: str) -> bool:
    """Whether nothing keeps `name`'s pushes from the centre now (its link, the centre)."""
    return name not in r.down and CENTRE not in r.down


def _start_sim(
    r: Run, fleet: Path, name: str, port: int, *, now_sim: float, duration: float
) -> subprocess.Popen[str]:
    log = open(r.root / f"sim-{name}.log", "ab")  # noqa: SIM115 - the child keeps it
    try:
        return sim.start(
            fleet,
            port,
            *("--under", f"UZ-{r.codes[name]}"),
            *("--start", str(int(now_sim)), "--speed", str(r.args.speed)),
            *("--interval", str(r.args.interval), "--gas-interval", str(r.args.interval)),
            *("--duration", str(max(5.0, duration)), "--status-every", "10"),
            *("--events", "off", "--gaps", "0", "--drain", "10"),
            stderr=log,
        )
    finally:
        log.close()


def _final(p: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    out, _ = p.communicate(timeout=timeout)
    lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    final: list[dict[str, Any]] = [x for x in lines if x.get("final")]
    if not final:
        raise RuntimeError("a simulator ended without its final status")
    return final[-1]


def _monitor(r: Run) -> None:
    """Samples the centre's view of each region every second: the longest lag."""
    while not r.stop.is_set():
        with contextlib.suppress(Exception):
            for p in r.fed.link(CENTRE)["peers"]:
                if p["peer"] != r.lost_node:
                    r.lag_max[p["peer"]] = max(r.lag_max.get(p["peer"], 0.0), p["lag_s"])
        r.stop.wait(1.0)


def _lag(r: Run, name: str) -> float | None:
    with contextlib.suppress(Exception):
        for p in r.fed.link(CENTRE)["peers"]:
            if p["peer"] == name:
                return float(p["lag_s"]) if p["connected"] else None
    return None


def _caught_up(r: Run, fault: Fault, names: list[str], timeout: float = 300.0) -> None:
    """Seconds from the heal until every one of `names` is caught up at the centre."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lags = [_lag(r, n) for n in names]
        if all(x is not None and x < CAUGHT_UP_S for x in lags):
            assert fault.healed_at is not None
            fault.caught_up_s = round(r.t() - fault.healed_at, 1)
            return
        time.sleep(0.5)


def _faults(r: Run, fleet: Path, faults: list[str]) -> None:
    """The faults at their times (fractions of the run)."""
    d = r.args.duration
    names = list(r.codes)
    plan: list[tuple[float, str]] = []
    if "cut" in faults:
        plan += [(0.15 * d, "cut"), (0.35 * d, "heal")]
    if "centre" in faults:
        plan += [(0.45 * d, "centre-kill"), (0.5 * d, "centre-start")]
    if "store" in faults and len(names) >= 2:
        plan.append((0.55 * d, "store"))
    if "nats" in faults:
        plan.append((0.6 * d, "centre-nats"))
        if len(names) >= 3:
            plan.append((0.65 * d, "region-nats"))
    if "lost" in faults and len(names) >= 3:
        plan.append((0.75 * d, "lost"))
    steps = _Steps(r, fleet)
    for at, step in sorted(plan):
        while r.t() < at:
            time.sleep(0.1)
        getattr(steps, step.replace("-", "_"))(at)


class _Steps:
    """Each fault, injected (and healed) by name."""

    def __init__(self, r: Run, fleet: Path) -> None:
        self.r, self.fleet = r, fleet
        self.names = list(r.codes)
        self.open: dict[str, Fault] = {}

    def _begin(self, key: str, name: str, at: float, detail: str) -> None:
        self.open[key] = f = Fault(name, at, detail, self.r.t())
        self.r.faults.append(f)

    def _heal(self, key: str, names: list[str]) -> None:
        f = self.open.pop(key)
        f.healed_at = self.r.t()
        _caught_up(self.r, f, names)

    def cut(self, at: float) -> None:
        self.r.fed.cut(self.names[0])
        self.r.down.add(self.names[0])
        self._begin("cut", "link cut", at, f"{self.names[0]} <-> centre")

    def heal(self, at: float) -> None:
        self.r.fed.heal(self.names[0])
        self.r.down.discard(self.names[0])
        self._heal("cut", [self.names[0]])

    def centre_kill(self, at: float) -> None:
        self.r.fed.kill(CENTRE)
        self.r.down.add(CENTRE)
        self._begin("centre", "centre killed -9", at, "every process; restarted later")

    def centre_start(self, at: float) -> None:
        self.r.fed.centre.h.start()
        self.r.down.discard(CENTRE)
        self._heal("centre", [n for n in self.names if n != self.r.lost_node])

    def store(self, at: float) -> None:
        os.kill(self.r.fed.nodes[self.names[1]].h.pids()[1], signal.SIGKILL)
        self.r.faults.append(Fault("region store killed -9", at, self.names[1], self.r.t()))

    def centre_nats(self, at: float) -> None:
        self._kill_nats(self.r.fed.centre, at)

    def region_nats(self, at: float) -> None:
        self._kill_nats(self.r.fed.nodes[self.names[2]], at)

    def _kill_nats(self, node: Node, at: float) -> None:
        pid = node.nats_pid()
        if pid is None:
            raise RuntimeError(f"{node.name}'s NATS server is not running")
        os.kill(pid, signal.SIGKILL)
        self.r.faults.append(Fault("NATS server killed -9", at, node.name, self.r.t()))

    def lost(self, at: float) -> None:
        _lose(self.r, self.fleet, self.names[2], self.names[0])


def _lose(r: Run, fleet: Path, lost: str, standby: str) -> None:
    """A region's data centre lost for good: its node killed -9 and never restarted,
    its meters pointed at the standby (as an APN or DNS change would)."""
    fed = r.fed
    f = Fault("region lost for good", r.t(), f"{lost}; its meters to {standby}", r.t())
    r.faults.append(f)
    fed.kill(lost)
    r.lost_node = lost
    r.lost_at = time.time()
    r.down.add(lost)
    (p,) = r.sims[lost]
    p.send_signal(signal.SIGTERM)  # the meters lose their head-end...
    final = _final(p, 60)
    r.sent[f"{lost}:before"] = final["readings"]
    r.pushes[f"{lost}:before"] = final["pushes"]
    left = r.args.duration - r.t()
    now_sim = r.sim_start + (time.time() - r.anchor) * r.args.speed
    # ...and find the standby: the rest of the run there.
    r.sims[lost] = [
        _start_sim(r, fleet, lost, fed.nodes[standby].port, now_sim=now_sim, duration=left)
    ]
    probe = r.probes.get(lost)
    if probe is not None:
        probe.stop.set()
    # The centre hands the region to the standby, which then acts on it (and reads
    # back from the meters what died with the lost node).
    out = fed.centre.h.cli("node", "handover", f"UZ-{r.codes[lost]}", "--to", standby)
    f.detail += f"; {out.strip()}"


def _drain(r: Run, timeout: float = 300.0) -> None:
    """Waits until the centre holds what every live node stored (or the time is up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lags = [_lag(r, n) for n in r.codes if n != r.lost_node]
        if all(x is not None and x < 1.0 for x in lags):
            time.sleep(3)  # the last records in flight
            return
        time.sleep(1.0)


def _sql(node: Node, query: str, running: bool) -> Any:
    """A scalar from a node (see `_rows`)."""
    rows = _rows(node, query, running)
    return rows[0][0] if rows else None


def _report(r: Run, faults: list[str]) -> dict[str, Any]:
    fed = r.fed
    centre = fed.centre
    regions: dict[str, Any] = {}
    for name, code in r.codes.items():
        meters = (
            f"meter IN (SELECT serial FROM ami.meters FINAL WHERE region = 'UZ-{code}' "
            "AND serial NOT LIKE 'PROBE-%')"
        )
        pushed = f"{meters} AND source = 'push'"
        q = f"SELECT count() FROM ami.readings WHERE {pushed}"
        uniq = f"SELECT uniqExact(meter, obis, ts) FROM ami.readings WHERE {pushed}"
        at_centre = int(centre.h.scalar(q))
        distinct = int(centre.h.scalar(uniq))
        sent = r.sent[name] + r.sent.get(f"{name}:before", 0)
        row: dict[str, Any] = {
            "meters": _count_csv(r.root / "fleet" / "meters.csv", f"UZ-{code}"),
            "sent": sent,
            "stored_in_region": int(_sql(fed.nodes[name], uniq, running=name != r.lost_node)),
            "stored_at_centre": at_centre,
            "lost": max(0, sent - distinct),
            "duplicated": at_centre - distinct,
            "longest_lag_s": round(r.lag_max.get(name, 0.0), 1),
        }
        if name != r.lost_node:
            row["bytes_per_meter_day"] = _storage(r, fed.nodes[name], row["meters"])
        if name == r.lost_node:
            standby = fed.nodes[r.standby[name]]
            # At the standby: what it took in after the loss (what it got at the
            # handover from the centre is counted above already).
            row["stored_at_standby"] = int(
                standby.h.scalar(f"{uniq} AND received_at >= toDateTime({int(r.lost_at)})")
            )
            row["stored_in_region"] += row["stored_at_standby"]
            row.update(_recovered(r, meters))
        regions[name] = row
    probes = {n: p.latencies for n, p in r.probes.items()}
    all_lat = [x for v in probes.values() for x in v]
    return {
        "regions_n": len(r.codes),
        "meters_per_region": r.args.meters_per_region,
        "duration_s": r.args.duration,
        "speed": r.args.speed,
        "simulated_hours": round(r.args.duration * r.args.speed / 3600, 2),
        "faults": [f.__dict__ for f in r.faults],
        "regions": regions,
        "push_to_queryable_at_centre_s": percentiles(all_lat),
        "probe_pushes": {n: p.sent for n, p in r.probes.items()},
        "probe_errors": {n: p.error for n, p in r.probes.items() if p.error},
        "link": {n: fed.link(n)["peers"] for n in fed.nodes if n != r.lost_node},
        **_balances(r),
    }


def _storage(r: Run, node: Node, meters: int) -> dict[str, float]:
    """Compressed bytes per meter and simulated day in the region's tables."""
    days = r.args.duration * r.args.speed / 86_400
    out = {}
    for table in ("readings", "consumption", "events", "balances"):
        size = int(
            node.h.scalar(
                "SELECT sum(data_compressed_bytes) FROM system.parts "
                f"WHERE database = 'ami' AND table = '{table}' AND active"
            )
        )
        out[table] = round(size / max(1, meters) / days, 1)
    return out


def _recovered(r: Run, meters: str) -> dict[str, Any]:
    """For the lost region: the energy (or gas volume) intervals missing at the
    centre, counted from the pushes its fleet sent (each push carries one), and how
    many the standby read back from the meters' load profiles."""
    from headend import balance

    codes = ", ".join(str(balance.obis_int(o)) for o in balance.FLOW.values())
    flow = f"obis IN ({codes})"
    centre = r.fed.centre.h
    have = int(
        centre.scalar(f"SELECT uniqExact(meter, ts) FROM ami.readings WHERE {meters} AND {flow}")
    )
    polled = int(
        centre.scalar(
            "SELECT uniqExact(meter, ts) FROM ami.readings WHERE "
            f"{meters} AND {flow} AND source = 'poll'"
        )
    )
    name = r.lost_node or ""
    pushes = r.pushes.get(name, 0) + r.pushes.get(f"{name}:before", 0)
    return {
        "flow_intervals_pushed": pushes,
        "flow_intervals_at_centre": have,
        "flow_intervals_read_back_from_profiles": polled,
        "flow_intervals_missing_at_centre": max(0, pushes - have),
    }


def _balances(r: Run, timeout: float = 120.0) -> dict[str, Any]:
    """Whether every hour's balance at the centre, per region, equals the region's own
    (input, output and loss summed over the region's nodes, and the rows counted). A
    region recomputes its recent hours every few seconds here, so a comparison that
    meets one in flight is made again. A region lost for good is left out: its last
    computations died with it (its standby does not balance what it does not own)."""
    deadline = time.monotonic() + timeout
    while True:
        hours, mismatches = _compare_balances(r)
        if not mismatches or time.monotonic() > deadline:
            break
        time.sleep(5)
    return {
        "balance_hours_checked": hours,
        "balance_mismatches": mismatches[:20],
        "balances_match": hours > 0 and not mismatches,
    }


def _compare_balances(r: Run) -> tuple[int, list[dict[str, Any]]]:
    fed = r.fed
    per_hour = (
        "SELECT toInt64(period_start) AS h, round(sum(input), 3), round(sum(output), 3), "
        "round(sum(loss), 3), count() FROM ami.balances FINAL WHERE node_id IN "
        "(SELECT node_id FROM ami.grid_nodes FINAL WHERE region = '{}') GROUP BY h ORDER BY h"
    )
    mismatches: list[dict[str, Any]] = []
    hours = 0
    for name, code in r.codes.items():
        if name == r.lost_node:
            continue
        q = per_hour.format(f"UZ-{code}")
        mine = _rows(fed.nodes[name], q, running=True)
        theirs = {x[0]: x[1:] for x in fed.centre.h.admin("query", query=q)["rows"]}
        for h, *figures in mine:
            hours += 1
            if theirs.get(h) != figures:
                mismatches.append(
                    {"region": name, "hour": h, "region_has": figures, "centre_has": theirs.get(h)}
                )
    return hours, mismatches


def _rows(node: Node, query: str, running: bool) -> list[list[Any]]:
    """Rows from a node: through its server, or from its store on disk when its node
    is gone (a command opens the embedded store then)."""
    if running:
        return node.h.admin("query", query=query)["rows"]  # type: ignore[no-any-return]
    out = subprocess.run(
        [sys.executable, "-m", "headend", "sql", query, "--format", "json"],
        env={**os.environ, "HEADEND_DATA": str(node.h.data)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [list(x.values()) for x in json.loads(out)]
