"""``headend billing``: the billing system's accounts and payments, the
disconnection policy's decisions (``headend/billing.py``, ``headend/payments.py``) and
a month's billing determinants (``headend/determinants.py``), on the store or the
running server."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from headend import config as config_mod
from headend.cli import _Access, _config, _fail, _now, _print_rows, _report, _table_command
from headend.errors import HeadendError


def cmd_billing_import(args: argparse.Namespace) -> int:
    from headend.billing import import_accounts

    try:
        cfg = _config(args)
        acc = _Access(cfg)
        try:
            report = import_accounts(Path(args.file), acc.access, cfg.store.database, acc.owner)
            if acc.admin is not None and report.loaded and cfg.billing.policy:
                # Payments take effect now, not at the next policy pass.
                acc.admin.call("policy", act=True)
        finally:
            acc.close()
    except HeadendError as e:
        return _fail(e)
    return _report(report)


def cmd_billing_payments(args: argparse.Namespace) -> int:
    from headend.payments import import_payments

    try:
        cfg = _config(args)
        acc = _Access(cfg)
        try:
            report = import_payments(
                Path(args.file), acc.access, cfg.store.database, acc.owner, now=_now(cfg)
            )
            if acc.admin is not None and report.loaded and cfg.billing.policy:
                # A payment that clears a debt reconnects now, not at the next pass.
                acc.admin.call("policy", act=True)
        finally:
            acc.close()
    except HeadendError as e:
        return _fail(e)
    return _report(report)


def cmd_billing_determinants(args: argparse.Namespace) -> int:
    """The month's billing determinants per account (headend.determinants)."""
    from headend import determinants

    def work(
        cfg: config_mod.Config, acc: _Access, start: int, end: int
    ) -> tuple[list[str], list[Any]]:
        month = args.month or determinants.this_month(_now(cfg))
        return determinants.determinants(
            acc.access,
            cfg.store.database,
            month,
            cfg.billing.tariff_zones,
            account=args.account or "",
        )

    return _table_command(args, lambda a: (0, 1), work)


def cmd_billing_status(args: argparse.Namespace) -> int:
    """What the disconnection policy will do for each debtor's meter, and why."""
    from headend import billing

    try:
        cfg = _config(args)
        acc = _Access(cfg)
        try:
            if acc.admin is not None:
                r = acc.admin.call("policy", act=False)
                cols, rows = r["columns"], r["rows"]
            else:
                db = cfg.store.database
                queued = billing.pending_from_table(acc.store, db)
                decisions = billing.evaluate(
                    acc.store, cfg.billing, db, _now(cfg), queued.__contains__, owner=acc.owner
                )
                cols, rows = billing.DECISION_COLUMNS, [d.row() for d in decisions]
        finally:
            acc.close()
    except HeadendError as e:
        return _fail(e)
    if args.account:
        rows = [r for r in rows if r[0] == args.account]
    if not args.all:
        rows = [r for r in rows if r[6] != "none" or args.account]
    _print_rows(cols, rows, args.format)
    return 0


def add_parsers(sub: Any, add_common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("billing", help="debts, payments and the disconnection policy")
    bsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    bp = bsub.add_parser(
        "import",
        help="load accounts from the billing system (CSV: "
        "account_id,debt,overdue_since,protected,note)",
    )
    bp.add_argument("file", metavar="FILE.csv")
    add_common(bp)
    bp.set_defaults(func=cmd_billing_import)
    bp = bsub.add_parser(
        "payments",
        help="load payments (CSV: payment_id,account_id,amount,paid_at); the same payment "
        "sent again is counted once",
    )
    bp.add_argument("file", metavar="FILE.csv")
    add_common(bp)
    bp.set_defaults(func=cmd_billing_payments)
    bp = bsub.add_parser(
        "determinants",
        help="a month's billing determinants per account: energy by tariff zone, maximum "
        "demand, reactive energy, gas, the estimated part",
    )
    bp.add_argument("--month", metavar="YYYY-MM", help="a Tashkent month (default: this one)")
    bp.add_argument("--account", metavar="ID", help="only this account")
    bp.add_argument("--format", choices=("table", "csv", "json"), default="table")
    add_common(bp)
    bp.set_defaults(func=cmd_billing_determinants)
    bp = bsub.add_parser("status", help="what the policy will do for each debtor, and why")
    bp.add_argument("--account", metavar="ID", help="only this account")
    bp.add_argument("--all", action="store_true", help="also accounts the policy leaves alone")
    bp.add_argument("--format", choices=("table", "csv", "json"), default="table")
    add_common(bp)
    bp.set_defaults(func=cmd_billing_status)
