"""Command benchmark: commands per second, round trip, profile reads per hour.

    .venv/bin/python bench/commands.py --meters 2000 --burst 4000 --serial 200

Generates a grid, starts `headend serve` and the simulated fleet (every meter
connected, wrapper, HLS-GMAC with ciphered APDUs), then:

1. round trip: `--serial` reads of the clock, one at a time, each waited for through
   the admin socket (submit -> offer -> claim -> AARQ/HLS -> GET -> RLRQ -> outcome);
2. throughput: `--burst` reads queued at once over all meters, timed until the last
   is done; once one admin request per command, once in batches of `--batch` (one
   meter lookup per batch);
3. profile reads: one day of the load profile (97 entries, block transfer) for
   `--profiles` meters at once, timed until done, as profile reads per hour;
4. with `--listening F`, that share of the consumers listen instead of connecting
   (`loadtest grid --listening`): the round trip and the batched burst again for
   them, each command over a connection the head-end dials and hangs up.

Results go to bench/results/commands-<time>.json with the command line and machine.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from headend.server.admin import AdminClient  # noqa: E402
from loadtest import results, sim  # noqa: E402
from loadtest.grid import generate  # noqa: E402
from loadtest.headend import Headend, free_port  # noqa: E402


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(p * len(xs)))], 4)


def wait_done(h: Headend, timeout: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        st = h.admin("commands")["stats"]
        if st["pending"] == 0:
            return time.monotonic() - t0
        time.sleep(0.05)
    raise RuntimeError(f"commands still pending after {timeout} s: {st}")


READ_CLOCK = {"objects": [[8, "0.0.1.0.0.255", 2]]}


def round_trip(h: Headend, electric: list[str], n: int) -> dict[str, float]:
    rtt = []
    for i in range(n):
        t = time.monotonic()
        c = h.admin(
            "command", serial=electric[i % len(electric)], kind="read", wait=30, args=READ_CLOCK
        )
        rtt.append(time.monotonic() - t)
        assert c["state"] == "done", c
    return {
        "p50": pct(rtt, 0.5),
        "p99": pct(rtt, 0.99),
        "mean": round(statistics.mean(rtt), 4),
        "n": n,
    }


def burst(h: Headend, meters: list[str], n: int) -> dict[str, float]:
    def submit(i: int) -> None:
        c = AdminClient(h.data / "admin.sock")
        try:
            c.call("command", serial=meters[i % len(meters)], kind="read", wait=0, args=READ_CLOCK)
        finally:
            c.close()

    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        list(ex.map(submit, range(n)))
    queued = time.monotonic() - t0
    total = queued + wait_done(h, 600)
    stats = h.admin("commands")["stats"]
    return {
        "commands": n,
        "queue_s": round(queued, 2),
        "total_s": round(total, 2),
        "commands_per_s": round(n / total, 1),
        "job_p50_s": stats["p50_s"],
        "job_p99_s": stats["p99_s"],
    }


def batched(h: Headend, meters: list[str], n: int, size: int) -> dict[str, float]:
    """The same burst submitted in batches (`submit`: one meter lookup per batch)."""
    c = AdminClient(h.data / "admin.sock", timeout=300)
    t0 = time.monotonic()
    try:
        for start in range(0, n, size):
            items = [
                {"serial": meters[i % len(meters)], "kind": "read", "args": READ_CLOCK}
                for i in range(start, min(n, start + size))
            ]
            r = c.call("submit", commands=items)
            if r["rejected"]:
                raise RuntimeError(f"rejected: {r['rejected'][:3]}")
    finally:
        c.close()
    queued = time.monotonic() - t0
    total = queued + wait_done(h, 600)
    return {
        "commands": n,
        "batch": size,
        "queue_s": round(queued, 2),
        "total_s": round(total, 2),
        "commands_per_s": round(n / total, 1),
    }


def profile_reads(h: Headend, electric: list[str], n: int) -> dict[str, float]:
    now = int(time.time()) // 900 * 900
    n = min(n, len(electric))
    t0 = time.monotonic()
    for s in electric[:n]:
        h.admin("command", serial=s, kind="profile", wait=0, args={"from": now - 86_400, "to": now})
    wait_done(h, 1800)
    total = time.monotonic() - t0
    return {
        "reads": n,
        "total_s": round(total, 2),
        "per_hour": round(n / total * 3600),
        "readings_stored": h.admin("status")["commands"]["polled_readings"],
    }


def wait_connected(h: Headend, n: int, timeout: float = 300) -> None:
    """Until the connecting meters are connected and have identified themselves (by a
    push): commands run on meters the head-end knows on a connection."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if h.admin("status")["sessions"] >= n * 0.99:
            break
        time.sleep(1)
    while time.monotonic() < deadline:
        if h.scalar("SELECT uniqExact(meter) FROM ami.readings") >= n * 0.99:
            break
        time.sleep(2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--meters", type=int, default=2000)
    ap.add_argument("--burst", type=int, default=4000)
    ap.add_argument("--serial", type=int, default=200)
    ap.add_argument("--batch", type=int, default=1000, help="batch size of the batched burst")
    ap.add_argument("--profiles", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--listening", type=float, default=0.0, help="share of consumers dialled")
    ap.add_argument("--keep", type=Path)
    args = ap.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-commands-"))
    fleet = root / "fleet"
    generate(args.meters, 0.3, fleet, seed=5, listening=args.listening)
    with open(fleet / "meters.csv", encoding="utf-8") as f:
        consumers = [m for m in csv.DictReader(f) if m["role"] == "consumer"]
    meters = [m["serial"] for m in consumers if not m["address"]]
    listening = [m["serial"] for m in consumers if m["address"]]
    electric = [s for s in meters if s.startswith("E")]
    h = Headend(root / "he", port=free_port(), server={"workers": args.workers})
    with open(h.config, "a") as f:
        f.write(
            "[commands]\nschedule_interval = 0.0\ndispatch_interval = 0.05\n"
            "max_per_node = 64\n[billing]\npolicy = false\n"
        )
    h.import_fleet(fleet / "grid.csv", fleet / "meters.csv")
    h.start()
    p = sim.start(
        fleet,
        h.port,
        *("--drifting", "0", "--hdlc", "0", "--concentrators", "0", "--events", "off"),
        *(
            "--gaps",
            "0",
            "--interval",
            "60",
            "--gas-interval",
            "60",
            "--spread",
            "0",
            "--status-every",
            "60",
        ),
    )
    out: dict[str, object] = {
        "meters": len(meters),
        "listening": len(listening),
        "workers": args.workers,
    }
    try:
        wait_connected(h, len(meters))
        out["round_trip_s"] = round_trip(h, electric, args.serial)
        out["burst"] = burst(h, meters, args.burst)
        out["batched"] = batched(h, meters, args.burst, args.batch)
        out["profiles"] = profile_reads(h, electric, args.profiles)
        if listening:
            out["dialled_round_trip_s"] = round_trip(h, listening, args.serial)
            out["dialled_batched"] = batched(h, listening, args.burst, args.batch)
        failed = h.scalar("SELECT countIf(state = 'failed') FROM ami.command_status")
        out["failed"] = failed
    finally:
        p.terminate()
        p.communicate(timeout=60)
        h.stop()
    print(json.dumps(out, indent=2))
    results.save("commands", results.record("bench/commands.py", out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
