"""The simulated fleet's command line.

    python -m loadtest grid --meters N [--gas-share 0.3] --out DIR [--seed S] [--plain]
                            [--listening F]
    python -m loadtest run  --meters N --interval S --duration S [--encrypt] ...
    python -m loadtest score --run DIR --from T --to T
    python -m loadtest cluster --regions 3 --meters-per-region N --duration S

`grid` writes a grid and a fleet (grid.csv, meters.csv, ground_truth.json); `run`
measures a head-end under the simulated fleet (see loadtest/driver.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m loadtest",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = ap.add_subparsers(dest="command", required=True)
    g = sub.add_parser("grid", help="generate grid.csv, meters.csv and ground_truth.json")
    g.add_argument(
        "--meters", type=int, required=True, help="consumer meters (electricity and gas)"
    )
    g.add_argument("--gas-share", type=float, default=0.3, help="share of gas meters (default 0.3)")
    g.add_argument("--out", type=Path, required=True, help="directory for the three files")
    g.add_argument("--seed", type=int, default=1)
    g.add_argument("--plain", action="store_true", help="meters without keys (unciphered pushes)")
    g.add_argument(
        "--theft-share",
        type=float,
        default=0.03,
        help="about this share of consumers steal (default 0.03)",
    )
    g.add_argument(
        "--regions",
        help="only these regions, comma-separated codes (SA,FA,...; default: all 14)",
    )
    g.add_argument(
        "--listening",
        type=float,
        default=0.0,
        help="share of consumer meters that listen on 127.1.x.y for the head-end to dial "
        "(an address column; default 0)",
    )
    from loadtest import driver

    driver.add_arguments(
        sub.add_parser("run", help="run the fleet against a head-end and measure it")
    )
    from loadtest import score

    score.add_arguments(
        sub.add_parser("score", help="score theft detection on a kept run's ground truth")
    )
    from loadtest import cluster

    cluster.add_arguments(
        sub.add_parser(
            "cluster", help="a centre and region nodes on loopback, a fleet per region, faults"
        )
    )
    args = ap.parse_args(argv)
    if args.command == "grid":
        from loadtest.grid import generate

        try:
            fleet = generate(
                args.meters,
                args.gas_share,
                args.out,
                seed=args.seed,
                plain=args.plain,
                theft_share=args.theft_share,
                listening=args.listening,
                regions=args.regions.split(",") if args.regions else None,
            )
        except ValueError as e:
            print(f"loadtest grid: {e}", file=sys.stderr)
            return 2
        s = fleet.truth["summary"]
        print(
            f"{args.out}: {s['nodes']} grid nodes, {s['meters']} meters "
            f"({s['electricity_meters']} electricity, {s['gas_meters']} gas consumers, "
            f"{s['meters'] - s['consumer_meters']} balance), {s['thieves']} thieves, "
            f"{s['illegal_connections']} illegal connections"
        )
        return 0
    if args.command == "score":
        return score.main(args)
    if args.command == "cluster":
        return cluster.run(args)
    return driver.run(args)


if __name__ == "__main__":
    sys.exit(main())
