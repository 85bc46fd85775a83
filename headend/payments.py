"""Payments as records (DESIGN.md section 7): ``payment_id,account_id,amount,paid_at``
from CSV (``headend billing payments FILE``) or HTTP (``POST /api/billing/payments``),
idempotent by payment id.

An account's debt follows from the billing system's last statement of it
(``billing_accounts``, as of its import) less the payments made after that statement:
a later statement already counts them. The disconnection policy reads the debt through
`accounts_sql`, so a payment that clears a debt reconnects the meter at the next
policy pass (the import runs one at once).

Every row is checked: the id (1-64 letters, digits or ``_.:/-``), a known account, a
positive amount, a time that is not in the future. A payment id already stored with the
same values is counted once and reported as repeated; with other values it is refused
(one id, one payment).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from headend.balance import parse_time
from headend.errors import HeadendError
from headend.ownership import Ownership
from headend.store.imports import CHUNK, ID, ImportReport, SqlAccess, _read

COLUMNS = ["payment_id", "account_id", "amount", "paid_at"]
MAX_AMOUNT = 1e12
FUTURE_SLACK = 86_400.0
"""A payment may be stamped up to a day ahead of the store's clock (time zones, clocks
of the billing system); further is a mistake."""


def accounts_sql(db: str) -> str:
    """Each account as the policy sees it: account_id, debt (the last statement less
    the payments after it), overdue_since, protected, and paid (those payments)."""
    return f"""
        (SELECT acc.account_id AS account_id,
                acc.debt - sumIf(p.amount, p.paid_at > acc.stated_at) AS debt,
                acc.overdue_since AS overdue_since, acc.protected AS protected,
                sumIf(p.amount, p.paid_at > acc.stated_at) AS paid
         FROM (SELECT account_id, argMax(debt, updated_at) AS debt,
                      max(updated_at) AS stated_at,
                      argMax(overdue_since, updated_at) AS overdue_since,
                      argMax(protected, updated_at) AS protected
               FROM {db}.billing_accounts GROUP BY account_id) AS acc
         LEFT JOIN (SELECT payment_id, argMax(account_id, imported_at) AS account_id,
                           argMax(amount, imported_at) AS amount,
                           argMax(paid_at, imported_at) AS paid_at
                    FROM {db}.payments GROUP BY payment_id) AS p
             ON p.account_id = acc.account_id
         GROUP BY acc.account_id, acc.debt, acc.stated_at, acc.overdue_since, acc.protected)
    """


def import_payments(
    path: Path,
    store: SqlAccess,
    db: str = "ami",
    owner: Ownership | None = None,
    *,
    now: float,
) -> ImportReport:
    """Payments from CSV; bad rows are reported with their line and skipped."""
    report = ImportReport(str(path))
    rows = _read(path, COLUMNS, report)
    return load_payments(rows, store, report, db=db, owner=owner, now=now, source="csv")


def payment_records(
    records: list[Any],
    store: SqlAccess,
    db: str = "ami",
    owner: Ownership | None = None,
    *,
    now: float,
    sees: Callable[[str], bool] | None = None,
    source: str = "request",
) -> ImportReport:
    """Payments sent as JSON objects (the HTTP API); bad ones reported by position."""
    report = ImportReport(source)
    rows: list[tuple[int, dict[str, str]]] = []
    for i, rec in enumerate(records, 1):
        if not isinstance(rec, dict):
            report.bad.append((i, "not an object"))
            continue
        unknown = sorted(set(rec) - set(COLUMNS))
        missing = [c for c in COLUMNS if c not in rec]
        if unknown or missing:
            why = f"unknown field(s) {', '.join(map(str, unknown))}" if unknown else ""
            why = why or f"missing {', '.join(missing)}"
            report.bad.append((i, why))
            continue
        rows.append((i, {c: "" if rec[c] is None else str(rec[c]) for c in COLUMNS}))
    return load_payments(rows, store, report, db=db, owner=owner, now=now, sees=sees, source="http")


def _row(r: dict[str, str], now: float) -> list[Any]:
    pid, acc = r["payment_id"].strip(), r["account_id"].strip()
    if not ID.match(pid):
        raise ValueError(f"payment_id {pid!r} must be 1-64 letters, digits or _.:/-")
    if not ID.match(acc):
        raise ValueError(f"account_id {acc!r} must be 1-64 letters, digits or _.:/-")
    try:
        amount = float(r["amount"])
    except ValueError:
        raise ValueError(f"amount {r['amount']!r} is not a number") from None
    if math.isnan(amount) or not 0 < amount <= MAX_AMOUNT:
        raise ValueError(f"amount {r['amount']!r} must be above 0 (a payment, not a charge)")
    try:
        paid = parse_time(r["paid_at"])
    except (HeadendError, ValueError, OverflowError, OSError):
        raise ValueError(f"paid_at {r['paid_at']!r} is not a time") from None
    if paid > now + FUTURE_SLACK:
        raise ValueError(f"paid_at {r['paid_at']} is in the future")
    return [pid, acc, round(amount, 2), dt.datetime.fromtimestamp(paid, dt.UTC)]


def _checked(
    rows: Iterable[tuple[int, dict[str, str]]], now: float, report: ImportReport
) -> list[tuple[int, list[Any]]]:
    """The rows that are payments in themselves (ids once each); the others refused."""
    checked: list[tuple[int, list[Any]]] = []
    seen: set[str] = set()
    for line, r in rows:
        try:
            row = _row(r, now)
            if row[0] in seen:
                raise ValueError(f"payment_id {row[0]} appears twice")
        except ValueError as e:
            report.bad.append((line, str(e)))
            continue
        seen.add(row[0])
        checked.append((line, row))
    return checked


def load_payments(
    rows: Iterable[tuple[int, dict[str, str]]],
    store: SqlAccess,
    report: ImportReport,
    *,
    db: str = "ami",
    owner: Ownership | None = None,
    now: float,
    sees: Callable[[str], bool] | None = None,
    source: str = "import",
) -> ImportReport:
    from headend.billing import account_regions

    checked = _checked(rows, now, report)
    if not checked:
        return report
    ids = sorted({row[0] for _, row in checked})
    stored: dict[str, tuple[str, float, float]] = {}
    for i in range(0, len(ids), CHUNK):
        _, found = store.query(
            f"SELECT payment_id, argMax(account_id, imported_at), argMax(amount, imported_at), "
            f"toFloat64(argMax(paid_at, imported_at)) FROM {db}.payments "
            f"WHERE payment_id IN %(ids)s GROUP BY payment_id",
            {"ids": ids[i : i + CHUNK]},
        )
        stored.update({str(p): (str(a), float(m), float(t)) for p, a, m, t in found})
    accounts = sorted({row[1] for _, row in checked})
    _, known = store.query(
        f"SELECT DISTINCT account_id FROM {db}.billing_accounts WHERE account_id IN %(a)s",
        {"a": accounts},
    )
    known_set = {str(k[0]) for k in known}
    regions = account_regions(store, db, accounts)
    good: list[list[Any]] = []
    stamp = dt.datetime.now(dt.UTC)
    for line, row in checked:
        pid, acc, amount, paid = row
        before = stored.get(pid)
        if before is not None:
            if before == (acc, amount, paid.timestamp()):
                report.repeated += 1
            else:
                report.bad.append(
                    (
                        line,
                        f"payment {pid} is already recorded for account {before[0]}, "
                        f"amount {before[1]:.2f}: one id, one payment",
                    )
                )
            continue
        if acc not in known_set:
            report.bad.append((line, f"no account {acc} (import the accounts first)"))
            continue
        where = sorted(regions.get(acc, ()))
        if sees is not None and any(not sees(r) for r in where):
            report.bad.append((line, f"account {acc} has meters outside your regions"))
            continue
        if owner is not None:
            refused = [r for r in where if not owner.accepts(r)]
            if refused:
                report.bad.append((line, owner.why_not(f"account {acc}", refused[0])))
                continue
        good.append([pid, acc, amount, paid, source, stamp])
    for i in range(0, len(good), CHUNK):
        store.insert_rows("payments", [*COLUMNS, "source", "imported_at"], good[i : i + CHUNK])
    report.loaded = len(good)
    report.bad.sort()
    return report
