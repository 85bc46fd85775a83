"""Does the periodic pass cost the same on day 30 as on day 1? (issue 17)

    .venv/bin/python bench/flat_pass.py --meters 200000 --days 30

Generates a grid and its meters (`loadtest.grid`, plain meters) into a fresh embedded
store, writes day 1's quarter-hour register readings for every meter (inside
ClickHouse, INSERT ... SELECT), and times the server's periodic pass over the day's
last six hours as at its end (`balance.recompute` of a window at the present, as
`server/keeper.py` runs it). Then writes the following days one by one up to `--days`
(days in UTC, all inside October, so at most 30) and times the same pass at the end of
the last day, when the store holds them all: as the parts stand after the inserts, and
again once every partition is merged into one part (OPTIMIZE ... FINAL), as
ClickHouse's background merges leave it late in a month. (`readings` was partitioned
by month until migration 0021: then the merged month cost 11.9 times day 1; by day, a
pass reads its own days' partitions however they are merged.) Each pass is run three
times; the least is reported, with the readings it read and the ratios to day 1.
Results go to bench/results/flat-pass-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.balance_day import import_fleet  # noqa: E402
from headend import balance  # noqa: E402
from headend.store.db import Store, migrate  # noqa: E402
from loadtest import results  # noqa: E402

# 2026-10-01 00:00 UTC: thirty days stay inside one month, so the comparison holds for
# any layout by month as well as by day (a pass just past a month's turn would read a
# fresh monthly partition and look cheaper than it is).
DAY0 = 1_790_812_800
SLOTS = 96


def write_day(store: Store, day: int) -> None:
    """Day `day`'s quarter hours (and the midnight that closes it on the last slot) for
    every meter: a steady rate of its own with noise; balance meters a hundred times."""
    e_obis = balance.obis_int(balance.ELECTRICITY_IMPORT)
    g_obis = balance.obis_int(balance.GAS_VOLUME)
    first = day * SLOTS + (0 if day == 0 else 1)
    count = SLOTS + 1 if day == 0 else SLOTS
    store.command(
        "INSERT INTO ami.readings (meter, obis, ts, value, unit, status, source, quality, "
        "received_at) "
        f"SELECT serial, if(kind = 'gas', {g_obis}, {e_obis}), "
        f"toDateTime({DAY0} + n * 900), "
        "(n * (100 + cityHash64(serial) % 400) + cityHash64(serial, n) % 50) "
        "* if(role = 'balance', 100, 1) * if(kind = 'gas', 0.001, 1), "
        "if(kind = 'gas', 'm³', 'Wh'), 0, 'push', 'measured', "
        f"toDateTime({DAY0} + n * 900) "
        f"FROM ami.meters FINAL ARRAY JOIN range({first}, {first + count}) AS n",
        None,
    )


def timed_pass(store: Store, day_end: int) -> dict[str, Any]:
    """The periodic pass over the six hours before `day_end`, as at `day_end`: the least
    of three runs."""
    best = float("inf")
    rep: dict[str, Any] = {}
    for _ in range(3):
        t = time.monotonic()
        got = balance.recompute(store, day_end - 6 * 3600, day_end, now=day_end + 60)
        spent = time.monotonic() - t
        if spent < best:
            best, rep = spent, got.as_dict()
    return {"seconds": round(best, 2), "readings": rep["readings"], "pass": rep}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--meters", type=int, default=200_000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--keep", type=Path, help="keep the store in this directory")
    ap.add_argument("--no-results", action="store_true")
    args = ap.parse_args()
    if not 1 < args.days <= 30:
        print("--days: 2 to 30 (the days must stay inside one month)", file=sys.stderr)
        return 2
    tmp = args.keep or Path(tempfile.mkdtemp(prefix="flat-pass-"))
    tmp.mkdir(parents=True, exist_ok=True)
    store = Store(f"chdb://{tmp / 'db'}", "ami").connect()
    migrate(store)
    (have,) = store.query("SELECT count() FROM ami.meters")[1][0]
    if have:
        print(f"{tmp} already holds a store: give an empty directory", file=sys.stderr)
        return 2
    t = time.monotonic()
    import_fleet(store, tmp, args.meters)
    setup = {"grid_and_import_s": round(time.monotonic() - t, 1)}
    t = time.monotonic()
    write_day(store, 0)
    setup["day_1_readings_s"] = round(time.monotonic() - t, 1)
    first = timed_pass(store, DAY0 + 86_400)
    (first["readings_in_store"],) = store.query("SELECT count() FROM ami.readings")[1][0]
    print(f"day 1: {first['seconds']} s, {first['readings_in_store']} stored", file=sys.stderr)
    t = time.monotonic()
    for day in range(1, args.days):
        write_day(store, day)
    setup["later_days_readings_s"] = round(time.monotonic() - t, 1)
    last = timed_pass(store, DAY0 + args.days * 86_400)
    (last["readings_in_store"],) = store.query("SELECT count() FROM ami.readings")[1][0]
    (last["parts"],) = store.query("SELECT uniqExact(_part) FROM ami.readings")[1][0]
    # ClickHouse merges each partition's parts in the background: the same pass once
    # every partition is one part (by month, no part's time range let it skip a day).
    t = time.monotonic()
    store.command("OPTIMIZE TABLE ami.readings FINAL")
    setup["merge_s"] = round(time.monotonic() - t, 1)
    merged = timed_pass(store, DAY0 + args.days * 86_400)
    (merged["parts"],) = store.query("SELECT uniqExact(_part) FROM ami.readings")[1][0]
    (meters,) = store.query("SELECT count() FROM ami.meters FINAL")[1][0]
    result = {
        "meters": meters,
        "days": args.days,
        "pass_day_1": first,
        f"pass_day_{args.days}": last,
        f"pass_day_{args.days}_merged": merged,
        "ratio": round(last["seconds"] / first["seconds"], 2),
        "ratio_merged": round(merged["seconds"] / first["seconds"], 2),
        "setup": setup,
    }
    print(json.dumps(result, indent=2))
    if not args.no_results:
        results.save("flat-pass", results.record("python bench/flat_pass.py", result))
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
