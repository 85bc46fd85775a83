"""Theft detection scored against the fleet's ground truth.

    python -m loadtest score --run DIR --from 2026-11-15T06:00 --to 2026-11-17T18:00

DIR is the directory of a finished `python -m loadtest run ... --keep DIR` (its fleet
and its head-end's data; the head-end must be stopped). Recomputes consumption and
balances for the window, runs `headend.anomalies.detect`, and compares the suspects with
`ground_truth.json`: precision and recall over thieving consumers (and by kind of
theft), and how many of the transformers with theft show as lossy. Results go to
bench/results/theft-score-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from loadtest import results


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--run", type=Path, required=True, help="the --keep directory of a run")
    ap.add_argument("--from", dest="from_", required=True, help="ISO time (Tashkent if naive)")
    ap.add_argument("--to", required=True)
    ap.add_argument("--results", type=Path, default=results.DEFAULT_DIR)
    ap.add_argument("--no-results", action="store_true")


def score(run: Path, start: int, end: int) -> dict[str, Any]:
    from headend import anomalies, balance
    from headend.clock import Clock
    from headend.config import Config, OutagesConfig
    from headend.outages import Outages
    from headend.ownership import Ownership
    from headend.store.db import Store, migrate

    truth = json.loads((run / "fleet" / "ground_truth.json").read_text())
    store = Store(f"chdb://{run / 'data' / 'clickhouse'}", "ami").connect()
    try:
        migrate(store)
        t = time.monotonic()
        rep = balance.recompute(store, start, end, now=end + 86_400)
        # Outages over the window, as the server's passes would have found them (hours
        # without supply are no evidence of theft).
        clock = Clock(1.0, float(end), time.time())
        owner = Ownership.from_config(Config(data_dir=run / "data"))
        cfg = OutagesConfig(lookback=end - start + 86_400)
        outages = Outages(store, "ami", cfg, owner, clock).scan().as_dict()
        # The run's own clock (a demo's runs fast): commands are stamped in real time.
        from headend import config

        conf = run / "headend.toml"
        run_clock = Clock.from_config(config.load(conf).clock) if conf.exists() else None
        det = anomalies.detect(store, start, end, clock=run_clock)
        _, rows = store.query(
            "SELECT DISTINCT serial FROM ami.command_status "
            "WHERE kind = 'disconnect' AND state = 'done'"
        )
        switched_off = {r[0] for r in rows}
        seconds = round(time.monotonic() - t, 2)
    finally:
        store.close()
    thieves = {t["serial"]: t["type"] for t in truth["thieves"]}
    suspects = {f.meter for f in det.suspects()}
    caught = suspects & set(thieves)
    theft_nodes = set(truth["theft_nodes"]) | {i["node"] for i in truth["illegal"]}
    lossy = set(det.lossy_nodes)
    return {
        "window": {"from": rep.as_dict()["from"], "to": rep.as_dict()["to"]},
        "readings": rep.readings,
        "consumers_examined": det.consumers_checked,
        "thieves": len(thieves),
        "suspects": len(suspects),
        "true_positives": len(caught),
        "precision": round(len(caught) / len(suspects), 3) if suspects else None,
        "recall": round(len(caught) / len(thieves), 3) if thieves else None,
        "recall_by_kind": {
            kind: f"{Counter(thieves[m] for m in caught)[kind]}/{n}"
            for kind, n in Counter(thieves.values()).items()
        },
        # Gas consumers are the generator's G serials.
        "recall_gas": (
            f"{sum(1 for m in caught if m.startswith('G'))}/"
            f"{sum(1 for m in thieves if m.startswith('G'))}"
        ),
        "false_positives_by_rule": dict(
            Counter(r for f in det.suspects() if f.meter not in thieves for r in f.rules)
        ),
        "outages": outages,
        "switched_off_by_policy": len(switched_off),
        "switched_off_suspected": len(switched_off & suspects),
        "lossy_nodes": len(lossy),  # transformers and gas segments
        "theft_transformers": len(theft_nodes),
        "theft_transformers_lossy": len(lossy & theft_nodes),
        "seconds": seconds,
    }


def main(args: argparse.Namespace) -> int:
    from headend.balance import parse_time

    result = score(args.run, parse_time(args.from_), parse_time(args.to))
    print(json.dumps(result, indent=2))
    if not args.no_results:
        results.save("theft-score", results.record("python -m loadtest", result), args.results)
    return 0
