"""What people's safeguards cost, measured on the real pieces.

    .venv/bin/python bench/people.py [--rows 1000000] [--repeat 20]

- a password check (Argon2id, RFC 9106's second parameters), which every page login
  pays once;
- a personal token check (SHA-256 and a dictionary), which every API request pays;
- people's SQL (`headend.sqlguard`): the guard's own work (ClickHouse re-prints the
  query, prints its syntax tree, every table name is looked up) and a query of a
  region's analyst (with `additional_table_filters`) against the same query unguarded,
  on an embedded store holding `--rows` readings of meters in two regions.

Results to bench/results/people-<time>.json. Local only; bounded; stops by itself.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from headend.people import People, Principal, hash_password, verify_password
from headend.sqlguard import Guard
from headend.store.db import Store, migrate

RESULTS = Path(__file__).parent / "results"


def timed(fn: Any, repeat: int) -> dict[str, float]:
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return {
        "median_ms": round(statistics.median(runs) * 1000, 3),
        "p90_ms": round(sorted(runs)[int(0.9 * (len(runs) - 1))] * 1000, 3),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    out: dict[str, Any] = {"rows": args.rows, "repeat": args.repeat}

    phc = hash_password("a long enough password")
    out["password_hash"] = timed(lambda: hash_password("a long enough password"), 5)
    out["password_check"] = timed(lambda: verify_password("a long enough password", phc), 5)

    with tempfile.TemporaryDirectory() as tmp:
        store = Store(f"chdb://{tmp}/ch").connect()
        migrate(store)
        people = People(store, "ami", "bench")
        admin = Principal.system("bench", "bench", "bench")
        people.add(admin, "ana", ["analyst"], ["UZ-SA"])
        token, _ = people.issue_token(admin, "ana")
        out["token_check"] = timed(lambda: people.by_token(token, "bench"), 1000)

        meters = 2000
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        store.command(
            "INSERT INTO ami.meters (serial, kind, role, node_id, account_id, model, "
            "system_title, lat, lon, region, updated_at) SELECT concat('M', toString(number)), "
            "'electricity', 'consumer', 'T', '', 'e1ph', '', 0, 0, "
            "if(number % 2 = 0, 'UZ-SA', 'UZ-FA'), now64(3) "
            f"FROM numbers({meters})"
        )
        store.command(
            "INSERT INTO ami.readings (meter, obis, ts, value, unit, status, source, quality, "
            f"received_at) SELECT concat('M', toString(number % {meters})), 1, "
            f"toDateTime('{now:%Y-%m-%d %H:%M:%S}') - intDiv(number, {meters}) * 900, "
            "number, 'kWh', 0, 'push', 'measured', now() "
            f"FROM numbers({args.rows})"
        )
        guard = Guard(store, "ami")
        query = (
            "SELECT meter, count(), sum(value) FROM ami.readings "
            "WHERE ts >= now() - INTERVAL 30 DAY GROUP BY meter ORDER BY meter"
        )
        guard.functions()  # the function list is read once per process
        out["guard_prepare"] = timed(lambda: guard.prepare(query, ("UZ-SA",)), args.repeat)
        out["query_unguarded"] = timed(lambda: store.query(query), args.repeat)
        scoped = guard.prepare(query, ("UZ-SA",))
        whole = guard.prepare(query, None)
        out["query_guarded_republic"] = timed(lambda: store.query(whole), args.repeat)
        out["query_guarded_region"] = timed(lambda: store.query(scoped), args.repeat)
        out["region_rows"] = len(store.query(scoped)[1])
        out["all_rows"] = len(store.query(query)[1])
        store.close()

    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"people-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}.json"
    path.write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
