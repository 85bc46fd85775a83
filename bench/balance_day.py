"""Balance benchmark: all balances, all levels, for one day of an N-meter fleet.

    .venv/bin/python bench/balance_day.py --meters 1000000

Generates a grid and its meters (`loadtest.grid`, plain meters), imports them into a
fresh embedded store, writes one day of quarter-hour register readings for every
meter inside ClickHouse (INSERT ... SELECT, 97 samples a meter: midnight to midnight),
then times `headend.balance.recompute` for that day: reading the registers, the Rust
VEE, writing `consumption`, and the balances of every network node. Also times the
VEE alone on the bytes of one slice as the recompute reads them (a series a row;
readings per second on one core), and the server's periodic pass over the day's last six
hours as at the end of the day.

Results go to bench/results/balance-day-<time>.json with the command line and machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from headend import balance, codec, profiles  # noqa: E402
from headend.config import REPO_ROOT  # noqa: E402
from headend.store.db import Store, migrate  # noqa: E402
from headend.store.imports import import_grid, import_meters  # noqa: E402
from loadtest import results  # noqa: E402
from loadtest.grid import generate  # noqa: E402

DAY0 = 1_793_559_600  # 2026-11-02 00:00 in Tashkent (UTC+5)


def import_fleet(store: Store, tmp: Path, meters: int) -> None:
    """A grid of about `meters` plain meters (`loadtest.grid`, seed 1) into `store`."""
    generate(meters, 0.3, tmp / "grid", seed=1, plain=True)
    models = profiles.kinds(profiles.load_all(REPO_ROOT / "protocols" / "profiles"))
    import_grid(tmp / "grid" / "grid.csv", store)
    import_meters(tmp / "grid" / "meters.csv", store, codec.MasterKey(os.urandom(32)), models)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--meters", type=int, default=1_000_000)
    ap.add_argument("--keep", type=Path, help="use (or keep) the store in this directory")
    ap.add_argument("--no-results", action="store_true")
    args = ap.parse_args()
    tmp = args.keep or Path(tempfile.mkdtemp(prefix="balance-bench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    store = Store(f"chdb://{tmp / 'db'}", "ami").connect()
    migrate(store)
    setup: dict[str, float] = {}
    (have,) = store.query("SELECT count() FROM ami.meters")[1][0]
    if have == 0:
        t = time.monotonic()
        import_fleet(store, tmp, args.meters)
        setup["grid_and_import_s"] = round(time.monotonic() - t, 1)
        t = time.monotonic()
        e_obis = balance.obis_int(balance.ELECTRICITY_IMPORT)
        g_obis = balance.obis_int(balance.GAS_VOLUME)
        # Every meter rises by its own steady rate with noise, one sample a quarter hour;
        # balance meters (role 'balance') carry a hundred times more.
        store.command(
            "INSERT INTO ami.readings (meter, obis, ts, value, unit, status, source, quality, "
            "received_at) "
            f"SELECT serial, if(kind = 'gas', {g_obis}, {e_obis}), "
            f"toDateTime({DAY0} + n * 900), "
            "(n * (100 + cityHash64(serial) % 400) + cityHash64(serial, n) % 50) "
            "* if(role = 'balance', 100, 1) * if(kind = 'gas', 0.001, 1), "
            "if(kind = 'gas', 'm³', 'Wh'), 0, 'push', 'measured', "
            f"toDateTime({DAY0} + n * 900) "
            "FROM ami.meters FINAL ARRAY JOIN range(97) AS n",
            None,
        )
        store.command("OPTIMIZE TABLE ami.readings FINAL")
        setup["readings_s"] = round(time.monotonic() - t, 1)
    (readings,) = store.query("SELECT count() FROM ami.readings")[1][0]
    (meters,) = store.query("SELECT count() FROM ami.meters FINAL")[1][0]
    print(f"{meters} meters, {readings} readings; setup {setup}", file=sys.stderr)

    # The VEE alone, on one slice's bytes, repeated.
    _, first = store.query("SELECT serial FROM ami.meters FINAL ORDER BY serial LIMIT 1 OFFSET 0")
    _, last = store.query(
        "SELECT serial FROM ami.meters FINAL ORDER BY serial LIMIT 1 OFFSET 100000"
    )
    raw = store.raw_query(
        balance.READINGS_SQL.format(
            db="ami",
            bounds="meter >= %(a)s AND meter < %(b)s",
            a=DAY0 - 86_400,
            b=DAY0 + 2 * 86_400,
        ),
        {
            "a": first[0][0],
            "b": (last or first)[0][0],
            "with_states": sorted(balance.obis_int(c[0]) for c in balance.CHANNELS),
        },
        fmt="Native",
    )
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        _, st = codec.ConsumptionJob(balance.CHANNELS, native_input=True).rows(
            raw,
            keep_from=DAY0,
            keep_to=DAY0 + 86_400,
            now=DAY0 + 2 * 86_400,
            computed_at_ms=1,
        )
        best = min(best, time.perf_counter() - t)
    vee_rate = st["readings"] / best

    t = time.monotonic()
    rep = balance.recompute(store, DAY0, DAY0 + 86_400, now=DAY0 + 2 * 86_400)
    total = time.monotonic() - t
    # The server's periodic pass over the day's last 6 hours, as at the day's end (a
    # window at the present: a narrow margin and the samples before it looked up).
    t = time.monotonic()
    periodic = balance.recompute(store, DAY0 + 18 * 3600, DAY0 + 86_400, now=DAY0 + 86_400 + 60)
    periodic_s = time.monotonic() - t
    result = {
        "meters": meters,
        "readings_in_store": readings,
        "recompute_s": round(total, 2),
        "recompute": rep.as_dict(),
        "periodic_6h_pass_s": round(periodic_s, 2),
        "periodic_6h_pass": periodic.as_dict(),
        "vee_readings_per_s_one_core": round(vee_rate),
        "vee_sample_readings": st["readings"],
        "setup": setup,
    }
    print(json.dumps(result, indent=2))
    if not args.no_results:
        results.save("balance-day", results.record("python bench/balance_day.py", result))
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
