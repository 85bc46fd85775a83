"""The store process under load: is /healthz (and so everything else on its event loop:
ingest rounds, meter lookups, the command queue) held up by large requests?

    .venv/bin/python bench/store_load.py --meters 20000

Generates a fleet, starts `headend serve` with HTTP, and samples `GET /healthz` every
10 ms from a thread while, one after another:

1. nothing (the baseline);
2. `POST /api/commands` with a batch of 10,000 reads over 10,000 meters;
3. `POST /api/commands` with 10,000 reads of one meter (its queue's cap refuses most);
4. `headend meters import` of the whole fleet again, through the running server;
5. `headend balance --recompute` of a day, through the running server.

Reports each phase's wall time and the /healthz latency while it ran and for 3 s after
(p50, p99, max; the target is a max below 100 ms). Results go to
bench/results/store-load-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from headend.balance import ELECTRICITY_IMPORT, GAS_VOLUME, obis_int  # noqa: E402
from loadtest import results  # noqa: E402
from loadtest.grid import generate  # noqa: E402
from loadtest.headend import Headend, free_port  # noqa: E402

READ = {"objects": [[1, "0.0.96.1.0.255", 2]]}
AFTER = 3.0  # seconds sampled after each phase ends
DAY0 = 1_793_559_600  # 2026-11-02 00:00 in Tashkent (UTC+5)
# As bench/balance_day.py: each meter rises at its own rate with noise.
FILL_DAY = (
    "INSERT INTO ami.readings (meter, obis, ts, value, unit, status, source, quality, "
    "received_at) "
    f"SELECT serial, if(kind = 'gas', {obis_int(GAS_VOLUME)}, {obis_int(ELECTRICITY_IMPORT)}), "
    f"toDateTime({DAY0} + n * 900), "
    "(n * (100 + cityHash64(serial) % 400) + cityHash64(serial, n) % 50) "
    "* if(role = 'balance', 100, 1) * if(kind = 'gas', 0.001, 1), "
    "if(kind = 'gas', 'm³', 'Wh'), 0, 'push', 'measured', "
    f"toDateTime({DAY0} + n * 900) "
    "FROM ami.meters FINAL ARRAY JOIN range(97) AS n"
)


class Sampler(threading.Thread):
    """GET /healthz every `every` seconds; (start time, latency) of each."""

    def __init__(self, url: str, every: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.url, self.every = url, every
        self.samples: list[tuple[float, float]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            t = time.monotonic()
            try:
                with urllib.request.urlopen(self.url, timeout=30) as r:  # noqa: S310
                    r.read()
            except OSError:
                pass
            self.samples.append((t, time.monotonic() - t))
            time.sleep(max(0.0, self.every - (time.monotonic() - t)))

    def between(self, t0: float, t1: float) -> dict[str, Any]:
        lat = sorted(x for t, x in self.samples if t0 <= t <= t1)
        if not lat:
            return {"samples": 0}
        return {
            "samples": len(lat),
            "p50_ms": round(1000 * lat[len(lat) // 2], 1),
            "p99_ms": round(1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], 1),
            "max_ms": round(1000 * lat[-1], 1),
        }


def post(url: str, token: str, body: Any) -> tuple[int, Any]:
    req = urllib.request.Request(  # noqa: S310 (http only)
        url,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=600) as r:  # noqa: S310
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--meters", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--results", type=Path, default=results.DEFAULT_DIR)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="store-load-") as tmp:
        root = Path(tmp)
        fleet = root / "fleet"
        generate(args.meters, 0.3, fleet, seed=5, plain=False)
        http_port = free_port()
        h = Headend(
            root / "he",
            port=free_port(),
            sections={
                "http": {"port": http_port, "host": "127.0.0.1"},
                "commands": {"schedule_interval": 0.0},
                "billing": {"policy": False},
            },
        )
        h.import_fleet(fleet / "grid.csv", fleet / "meters.csv")
        h.add_people({"bench": ("admin,operator", "*")})
        token = h.cli("users", "token", "bench", "--label", "bench").strip()
        h.start()
        base = f"http://127.0.0.1:{http_port}"
        serials = [
            line.split(",")[0]
            for line in (fleet / "meters.csv").read_text().splitlines()[1:]
            if line
        ]
        sampler = Sampler(base + "/healthz")
        sampler.start()
        phases: dict[str, Any] = {}

        def phase(name: str, fn: Any) -> Any:
            t0 = time.monotonic()
            out = fn()
            t1 = time.monotonic()
            # What a request leaves behind runs after its answer (dispatching queued
            # commands, writing their records): sampled too.
            time.sleep(AFTER)
            phases[name] = {
                "seconds": round(t1 - t0, 2),
                "healthz": sampler.between(t0, t1 + AFTER),
            }
            print(name, json.dumps(phases[name]), flush=True)
            return out

        try:
            phase("baseline", lambda: time.sleep(5))
            many = [
                {"serial": s, "kind": "read", "args": READ, "expires_in": 600}
                for s in serials[: args.batch]
            ]
            _, r = phase("batch_many_meters", lambda: post(base + "/api/commands", token, many))
            phases["batch_many_meters"]["queued"] = len(r.get("queued", []))
            one = [{**many[0], "serial": serials[-1]}] * args.batch
            _, r = phase("batch_one_meter", lambda: post(base + "/api/commands", token, one))
            phases["batch_one_meter"].update(
                queued=len(r.get("queued", [])), rejected=len(r.get("rejected", []))
            )
            phase("meters_import", lambda: h.cli("meters", "import", str(fleet / "meters.csv")))
            # A day of quarter-hour readings for every meter (setup, not measured), then
            # its recomputation: consumption, VEE and every balance.
            h.admin("maintain", query=FILL_DAY)
            recompute = ["balance", "--level", "transformer", "--recompute"]
            span = ["--from", str(DAY0), "--to", str(DAY0 + 86_400)]
            phase("recompute_day", lambda: h.cli(*recompute, *span))
        finally:
            sampler.stop.set()
            h.stop()
    worst = max(p["healthz"].get("max_ms", 0.0) for k, p in phases.items() if k != "baseline")
    out = {"meters": args.meters, "batch": args.batch, "phases": phases, "worst_healthz_ms": worst}
    path = results.save(
        "store-load", results.record("python bench/store_load.py", out), args.results
    )
    print(json.dumps(out, indent=2))
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
