"""``headend report consumption``: consumer meters' consumption by account category or
administrative unit (``headend/reports.py``), on the store or the running server."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from headend.reports import BY, PERIODS


def cmd_report(args: argparse.Namespace) -> int:
    from headend import reports
    from headend.cli import _Access, _table_command, _window

    if args.what == "batteries":

        def batteries(cfg: Any, acc: _Access, start: int, end: int) -> tuple[list[str], list[Any]]:
            cols, rows = reports.batteries(
                acc.access, cfg.store.database, low_volts=cfg.workorders.battery_low_volts
            )
            return cols, list(rows)

        return _table_command(args, _window, batteries)

    def work(cfg: Any, acc: _Access, start: int, end: int) -> tuple[list[str], list[Any]]:
        cols, rows = reports.consumption(
            acc.access, cfg.store.database, by=args.by, period=args.period, start=start, end=end
        )
        return cols, list(rows)

    return _table_command(args, _window, work)


def add_parsers(sub: Any, add_common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser(
        "report",
        help="consumption by account category or administrative unit; meters' batteries",
    )
    rsub = p.add_subparsers(dest="what", required=True, metavar="WHAT")
    cp = rsub.add_parser(
        "consumption",
        help="consumer meters' kWh and m³ per Tashkent day or month, by category (from the "
        "billing file), district, city, region or the republic",
    )
    cp.add_argument("--by", choices=BY, default="category")
    cp.add_argument("--period", choices=tuple(PERIODS), default="day")
    cp.add_argument("--from", dest="from_", metavar="T", help="default: a day before --to")
    cp.add_argument("--to", metavar="T", help="default: this hour")
    cp.add_argument("--format", choices=("table", "csv", "json"), default="table")
    add_common(cp)
    cp.set_defaults(func=cmd_report)
    bp = rsub.add_parser(
        "batteries",
        help="battery-powered meters: the latest voltage, its fall per year and the days "
        "left until [workorders] battery_low_volts, lowest first",
    )
    bp.add_argument("--format", choices=("table", "csv", "json"), default="table")
    add_common(bp)
    bp.set_defaults(func=cmd_report, from_=None, to=None)
