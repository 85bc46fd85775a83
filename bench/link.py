"""The link between a region node and the centre, measured.

    .venv/bin/python bench/link.py catchup --meters 100000 --hours 1
    .venv/bin/python bench/link.py cpu --meters 20000 --seconds 120

`catchup` starts a centre and one region node on loopback (`loadtest.federation`),
imports an N-meter region at the centre (it goes down to the region), cuts the
region's link and runs its fleet (the Rust simulator, meters behind concentrators, in
fast time) for `--hours` of simulated time, so the region stores what a cut of that
many real hours would leave behind; then stops the fleet, heals the link and times
until the centre holds every reading the region stored: the catch-up time, the rate
it drained at (readings/s, and bytes/s across the link), and its ratio to the live
rate (what the region produces per real second: the backlog over `--hours` hours).

`cpu` runs the same fleet for the same time against a standalone node and against a
region node linked to a centre, and reports the CPU seconds per stored reading of the
node's store process, and for the region of its NATS server too: what the link adds
per reading on a region node.

Results to bench/results/link-<mode>-<time>.json. Loopback only; bounded; stops by
itself.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loadtest import grid, results, sim  # noqa: E402
from loadtest.federation import Federation, wait_equal  # noqa: E402
from loadtest.headend import Headend, cpu_seconds, free_port  # noqa: E402

LOCAL = dt.timezone(dt.timedelta(hours=5))
REGION = "SA"


def fleet(root: Path, meters: int) -> Path:
    out = root / "fleet"
    grid.generate(meters, 0.2, out, seed=9, regions=[REGION])
    return out


def region_ready(fed: Federation, f: Path) -> None:
    """Waits until the region holds its meters and their titles (the import writes
    meters, then keys, then titles: the titles last, so their keys are there too)."""
    n = count_meters(f)
    sa = fed.nodes["sa"]
    for table in ("meters", "meter_titles"):
        fed.wait_equal(
            f"the region's {table}",
            lambda t=table: int(sa.h.scalar(f"SELECT count() FROM ami.{t} FINAL")),
            n,
            600,
        )


def count_meters(f: Path) -> int:
    """The region's meters (the generation's balance meter stays at the centre)."""
    with open(f / "meters.csv", newline="", encoding="utf-8") as fh:
        return sum(1 for m in csv.DictReader(fh) if m["node_id"].startswith(f"UZ-{REGION}"))


def clock(speed: float) -> dict[str, float]:
    """Simulated time from yesterday's midnight (Tashkent), `speed` times real time."""
    midnight = dt.datetime.now(LOCAL).replace(hour=0, minute=0, second=0, microsecond=0)
    return {
        "speed": speed,
        "start": (midnight - dt.timedelta(days=1)).timestamp(),
        "anchor": time.time(),
    }


def sim_time(c: dict[str, float]) -> int:
    return int(c["start"] + (time.time() - c["anchor"]) * c["speed"])


def run_fleet(f: Path, port: int, c: dict[str, float], seconds: float) -> dict[str, Any]:
    p = sim.start(
        f,
        port,
        *("--start", str(sim_time(c)), "--speed", str(c["speed"])),
        *("--duration", str(seconds), "--concentrators", "1.0", "--events", "off"),
        *("--gaps", "0", "--status-every", "30", "--drain", "20", "--under", f"UZ-{REGION}"),
    )
    out, _ = p.communicate(timeout=seconds + 300)
    lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    final: list[dict[str, Any]] = [x for x in lines if x.get("final")]
    if not final:
        raise RuntimeError("the simulator ended without its final status")
    return final[-1]


def node_settings(c: dict[str, float], workers: int = 1) -> dict[str, Any]:
    return {
        "server": {"workers": workers, "handshake_timeout": 120.0},
        "store": {"ingest_interval": 0.5, "balance_interval": 0.0, "anomaly_interval": 0.0},
        "sections": {
            "commands": {"schedule_interval": 0.0},
            "billing": {"policy": False},
            "clock": c,
        },
    }


def federation(root: Path, c: dict[str, float], workers: int = 1) -> Federation:
    s = node_settings(c, workers)
    fed = Federation(
        root,
        {"sa": [f"UZ-{REGION}"]},
        workers=workers,
        server=s["server"],
        store=s["store"],
        sections=s["sections"],
    )
    fed.setup()
    return fed


def readings(h: Headend) -> int:
    return int(h.scalar("SELECT count() FROM ami.readings"))


def catchup(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    f = fleet(root, args.meters)
    c = clock(args.speed)
    # A worker holds at most 19,000 connections (20,000 open files a process here).
    fed = federation(root, c, workers=args.workers)
    fed.start()
    try:
        sa, centre = fed.nodes["sa"], fed.centre
        centre.h.import_fleet(f / "grid.csv", f / "meters.csv")
        region_ready(fed, f)
        fed.cut("sa")
        seconds = args.hours * 3600 / args.speed
        sent = run_fleet(f, sa.port, c, seconds)
        fed.wait_equal("the region stored all", lambda: readings(sa.h), sent["readings"], 300)
        backlog = readings(sa.h) - readings(centre.h)
        link = fed.links["sa"]
        bytes0 = link.stats.bytes_up
        t0 = time.monotonic()
        fed.heal("sa")
        fed.wait_equal("the centre caught up", lambda: readings(centre.h), sent["readings"], 1800)
        drain = time.monotonic() - t0
        moved = link.stats.bytes_up - bytes0
        live = backlog / (args.hours * 3600)
        return {
            "meters": count_meters(f),
            "cut_simulated_hours": args.hours,
            "readings_sent": sent["readings"],
            "pushes_sent": sent["pushes"],
            "backlog_readings": backlog,
            "catch_up_s": round(drain, 2),
            "drain_readings_per_s": round(backlog / drain),
            "link_bytes": moved,
            "link_bytes_per_reading": round(moved / max(1, backlog), 1),
            "link_mb_per_s": round(moved / drain / 1e6, 2),
            "live_readings_per_s": round(live, 1),
            "catch_up_vs_live": round(backlog / drain / live, 1),
            "lost": sent["readings"] - readings(centre.h),
        }
    finally:
        fed.stop()


def cpu(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    f = fleet(root, args.meters)
    out: dict[str, Any] = {"meters": args.meters, "seconds": args.seconds}
    # Standalone: one node, no link.
    c = clock(args.speed)
    s = node_settings(c)
    h = Headend(root / "standalone", port=free_port(), **s)
    h.import_fleet(f / "grid.csv", f / "meters.csv")
    h.start()
    try:
        out["standalone"] = _measure(h, f, c, args.seconds, nats=None)
    finally:
        h.stop()
    # A region node linked to a centre.
    c = clock(args.speed)
    fed = federation(root / "fed", c)
    fed.start()
    try:
        sa = fed.nodes["sa"]
        fed.centre.h.import_fleet(f / "grid.csv", f / "meters.csv")
        region_ready(fed, f)
        out["region"] = _measure(sa.h, f, c, args.seconds, nats=sa.nats_pid())
        fed.wait_equal("the centre caught up", lambda: readings(fed.centre.h), readings(sa.h), 300)
    finally:
        fed.stop()
    a, b = out["standalone"], out["region"]
    out["link_us_per_reading"] = round(b["us_per_reading"] - a["us_per_reading"], 3)
    return out


def _measure(
    h: Headend, f: Path, c: dict[str, float], seconds: float, nats: int | None
) -> dict[str, Any]:
    _, store = h.pids()
    before = readings(h)
    cpu0 = cpu_seconds(store) + (cpu_seconds(nats) if nats else 0.0)
    sent = run_fleet(f, h.port, c, seconds)
    wait_equal("all stored", lambda: readings(h) - before, sent["readings"], 300)
    time.sleep(2)  # the last ingest round's outbox work
    used = cpu_seconds(store) + (cpu_seconds(nats) if nats else 0.0) - cpu0
    stored = readings(h) - before
    return {
        "readings": stored,
        "readings_per_s": round(stored / seconds),
        "cpu_s": round(used, 2),
        "us_per_reading": round(used / max(1, stored) * 1e6, 3),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("catchup", help="catch-up after a cut of --hours")
    p.add_argument("--meters", type=int, default=100_000)
    p.add_argument("--hours", type=float, default=1.0, help="simulated hours of cut")
    p.add_argument("--speed", type=float, default=60.0)
    p.add_argument("--workers", type=int, default=2, help="the region's workers (2)")
    p = sub.add_parser("cpu", help="a region node's CPU per reading, with and without the link")
    p.add_argument("--meters", type=int, default=20_000)
    p.add_argument("--seconds", type=float, default=120.0)
    p.add_argument("--speed", type=float, default=30.0)
    for q in sub.choices.values():
        q.add_argument("--keep", type=Path)
        q.add_argument("--no-results", action="store_true")
    args = ap.parse_args()
    sim.binary()
    root = args.keep or Path(tempfile.mkdtemp(prefix="link-bench-"))
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    try:
        result = catchup(args, root) if args.mode == "catchup" else cpu(args, root)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    rec = results.record("bench/link.py", result)
    print(json.dumps(rec, indent=2))
    if not args.no_results:
        results.save(f"link-{args.mode}", rec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
