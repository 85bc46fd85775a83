"""Storage per meter-day: compressed bytes in `readings`, `consumption` and `events`,
by meter model, measured on what the head-end itself stored.

    .venv/bin/python bench/storage.py --meters 3000 --days 10

1. runs the load driver (`python -m loadtest run`) with the fleet pushing every
   simulated quarter hour for `--days` simulated days ending about now (a quarter hour
   per `interval` real seconds), kept in a temporary directory;
2. opens the kept store, recomputes consumption for those days (`balance.recompute`,
   the server's own code);
3. for each model (e3ph, the 15-minute three-phase meter; e1ph; gas), copies its meters'
   rows of each table into a table of the same definition (same codecs), merges it to
   one part per partition (as ClickHouse does over time), and reads the compressed and
   uncompressed bytes of its parts, and per column for `readings`.

Reports bytes per meter-day per table and model, the codecs, and a 20 M-meter year.
Results go to bench/results/storage-<time>.json with the command line and machine.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from headend import balance, config  # noqa: E402
from headend.store.db import Store  # noqa: E402
from loadtest import results  # noqa: E402

TABLES = ("readings", "consumption", "events")
MODELS = ("e3ph", "e1ph", "gas-g4")


def run_fleet(keep: Path, meters: int, days: float, interval: float) -> float:
    """The load driver over `days` simulated days ending now; returns the start time."""
    duration = days * 96 * interval
    start = time.time() - days * 86_400
    cmd = [
        sys.executable, "-m", "loadtest", "run",
        "--meters", str(meters), "--interval", str(interval), "--duration", str(duration),
        "--encrypt", "--start", str(int(start)), "--keep", str(keep), "--no-results",
        "--probes-per-s", "0",
    ]  # fmt: skip
    print("running:", " ".join(cmd[1:]), file=sys.stderr, flush=True)
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    if r.returncode not in (0, 3):
        raise RuntimeError(f"loadtest run failed ({r.returncode}): {r.stderr[-2000:]}")
    return start


def measure(store: Store, serials: list[str], table: str) -> dict[str, Any]:
    db = store.db
    tmp = f"size_{table}"
    store.command(f"DROP TABLE IF EXISTS {db}.{tmp}")
    store.command(f"CREATE TABLE {db}.{tmp} AS {db}.{table}")
    # Wide parts, as a fleet's day of readings makes (hundreds of MB a partition): a
    # few thousand meters' day would be a compact part (under 10 MB), whose columns
    # share one file and report no sizes of their own.
    store.command(
        f"ALTER TABLE {db}.{tmp} MODIFY SETTING min_bytes_for_wide_part = 0, "
        "min_rows_for_wide_part = 0"
    )
    for i in range(0, len(serials), 5000):
        store.command(
            f"INSERT INTO {db}.{tmp} SELECT * FROM {db}.{table} WHERE meter IN %(m)s",
            {"m": serials[i : i + 5000]},
        )
    store.command(f"OPTIMIZE TABLE {db}.{tmp} FINAL")
    _, rows = store.query(
        "SELECT sum(rows), sum(data_compressed_bytes), sum(data_uncompressed_bytes), "
        "sum(bytes_on_disk), count() FROM system.parts "
        "WHERE database = %(db)s AND table = %(t)s AND active",
        {"db": db, "t": tmp},
    )
    n, comp, raw, disk, parts = rows[0]
    _, cols = store.query(
        "SELECT name, compression_codec, data_compressed_bytes, data_uncompressed_bytes "
        "FROM system.columns WHERE database = %(db)s AND table = %(t)s ORDER BY position",
        {"db": db, "t": tmp},
    )
    store.command(f"DROP TABLE {db}.{tmp}")
    return {
        "rows": int(n or 0),
        "compressed_bytes": int(comp or 0),
        "uncompressed_bytes": int(raw or 0),
        "bytes_on_disk": int(disk or 0),
        "parts": int(parts or 0),
        "columns": [
            {"name": c[0], "codec": c[1], "compressed": int(c[2]), "uncompressed": int(c[3])}
            for c in cols
        ],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--meters", type=int, default=3000)
    ap.add_argument("--days", type=float, default=10.0)
    ap.add_argument("--interval", type=float, default=0.05, help="real seconds per quarter hour")
    ap.add_argument("--keep", type=Path, help="keep (or reuse) the run in this directory")
    ap.add_argument("--results", type=Path, default=results.DEFAULT_DIR)
    args = ap.parse_args()
    keep = args.keep or Path(tempfile.mkdtemp(prefix="storage-bench-"))
    if not (keep / "data").exists():
        run_fleet(keep, args.meters, args.days, args.interval)
    cfg = config.load(keep / "headend.toml", keep / "data")
    store = Store(cfg.dsn, cfg.store.database).connect()
    _, span = store.query(
        "SELECT toInt64(min(ts)), toInt64(max(ts)) FROM ami.readings WHERE source = 'push'"
    )
    first, last = int(span[0][0]), int(span[0][1])
    t = time.monotonic()
    start = first // 3600 * 3600
    rep = balance.recompute(store, start, last // 3600 * 3600, now=last + 3600)
    recompute_s = round(time.monotonic() - t, 1)
    with open(keep / "fleet" / "meters.csv", encoding="utf-8") as f:
        by_model: dict[str, list[str]] = {}
        for r in csv.DictReader(f):
            if r["role"] == "consumer":
                by_model.setdefault(r["model"], []).append(r["serial"])
    out: dict[str, Any] = {
        "meters": args.meters,
        "simulated_days": round((last - first) / 86_400, 2),
        "recompute": {"seconds": recompute_s, **rep.as_dict()},
        "models": {},
    }
    for model in MODELS:
        serials = by_model.get(model, [])
        if not serials:
            continue
        _, r = store.query(
            "SELECT sum(toInt64(mx) - toInt64(mn)) / 86400 FROM (SELECT meter, "
            "min(ts) AS mn, max(ts) AS mx FROM ami.readings WHERE meter IN %(m)s "
            "AND source = 'push' GROUP BY meter)",
            {"m": serials},
        )
        meter_days = float(r[0][0] or 0)
        tables = {t: measure(store, serials, t) for t in TABLES}
        out["models"][model] = {
            "meters": len(serials),
            "meter_days": round(meter_days, 1),
            "tables": tables,
            "bytes_per_meter_day": {
                t: round(v["compressed_bytes"] / max(meter_days, 1e-9), 1)
                for t, v in tables.items()
            },
            "rows_per_meter_day": {
                t: round(v["rows"] / max(meter_days, 1e-9), 1) for t, v in tables.items()
            },
        }
        print(model, json.dumps(out["models"][model]["bytes_per_meter_day"]), file=sys.stderr)
    store.close()
    e3 = out["models"].get("e3ph", {}).get("bytes_per_meter_day", {})
    if e3:
        day = sum(e3.values())
        out["year_of_20M_e3ph_meters_bytes"] = round(day * 365 * 20e6)
    path = results.save("storage", results.record("python bench/storage.py", out), args.results)
    print(json.dumps({k: v for k, v in out.items() if k != "models"}, indent=1))
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
