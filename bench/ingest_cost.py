"""Where the store's CPU per reading goes on insert (issue 17: "report what the time
goes to"): the embedded ClickHouse's insert of readings as the ingest sends them
(RowBinary, one insert per round, with the round's deduplication token), by rows per
insert, with the views fed by `readings` and without them.

    .venv/bin/python bench/ingest_cost.py

For each block size, a fresh store (all migrations) takes 1.2 M readings of 2,000
meters (six registers a push, times after now, so none counts as late) in inserts of
that many rows; the process's CPU time over the inserts (every ClickHouse thread
included) is divided by the rows. Then the same with the three views that every insert
into `readings` feeds (late readings, when each meter was last heard, battery levels)
dropped, which tells their share. Results go to bench/results/ingest-cost-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from headend.store import spool  # noqa: E402
from headend.store.db import Store, migrate  # noqa: E402
from headend.store.ingest import COLUMNS  # noqa: E402
from loadtest import results  # noqa: E402

VIEWS = ("late_readings_mv", "meter_seen_mv", "meter_battery_mv")
METERS = 2_000
REGISTERS = 6
ENERGY = 0x0100010800FF  # 1.0.1.8.0.255; the others follow in the E field


def rows_of(block: int, pushes: int, now: int) -> bytes:
    """RowBinary readings (as the workers spool them) of `pushes` pushes of every
    meter, block `block`'s minutes after `now`."""
    out = bytearray()
    for m in range(METERS):
        serial = f"E{m:07d}".encode()
        for p in range(pushes):
            ts = now + 60 * (block * pushes + p)
            for r in range(REGISTERS):
                out += bytes([len(serial)]) + serial
                out += struct.pack("<QId", ENERGY + (r << 8), ts, float(block * 1000 + p))
                out += bytes([2]) + b"Wh" + bytes([0, 1, 1])
                out += struct.pack("<I", ts)
    return bytes(out)


def measure(rows_per_insert: int, total: int, drop_views: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ingest-cost-") as tmp:
        store = Store(f"chdb://{tmp}/db", "ami").connect()
        migrate(store)
        if drop_views:
            for v in VIEWS:
                store.command(f"DROP VIEW IF EXISTS ami.{v}")
        pushes = rows_per_insert // (METERS * REGISTERS)
        now = int(time.time())
        blocks = [rows_of(b, pushes, now) for b in range(total // rows_per_insert)]
        per = METERS * REGISTERS * pushes
        cpu, wall = time.process_time(), time.monotonic()
        for i, b in enumerate(blocks):
            store.insert_rowbinary("readings", COLUMNS[spool.READINGS], b, f"b{i}", rows=per)
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall
        (stored,) = store.query("SELECT count() FROM ami.readings")[1][0]
        store.close()
    n = per * len(blocks)
    if stored != n:
        raise SystemExit(f"{stored} readings stored of {n}")
    return {
        "rows_per_insert": per,
        "views": not drop_views,
        "readings": n,
        "cpu_us_per_reading": round(cpu / n * 1e6, 3),
        "wall_us_per_reading": round(wall / n * 1e6, 3),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--readings", type=int, default=1_200_000)
    ap.add_argument("--no-results", action="store_true")
    args = ap.parse_args()
    runs = []
    for size in (60_000, 300_000, 600_000):
        for drop in (False, True):
            r = measure(size, args.readings, drop)
            print(json.dumps(r), file=sys.stderr)
            runs.append(r)
    result = {"meters": METERS, "registers_per_push": REGISTERS, "runs": runs}
    print(json.dumps(result, indent=2))
    if not args.no_results:
        results.save("ingest-cost", results.record("python bench/ingest_cost.py", result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
