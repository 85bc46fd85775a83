"""Debts from the billing system and the disconnection policy.

The billing system reports accounts (``headend billing import FILE.csv``): the debt,
since when it is overdue, whether the account is protected. The policy decides, per
meter of each account, one of:

- ``reconnect``: the policy disconnected it and the debt is now at most
  ``reconnect_at`` (any hour, any day: within a policy pass of the payment);
- ``warn``: the debt is over ``debt_threshold`` and overdue by ``overdue_days``, and no
  warning was given since: a warning event goes to the meter's record first;
- ``disconnect``: as for warn, warned at least ``warning_hours`` ago, within allowed
  hours and weekdays, not a holiday, and the meter's grid node has not reached its
  hourly limit;
- ``wait`` (with why: outside hours, holiday, node limit, warning too recent, a
  command already queued) or ``none`` (protected account, no debt, ...).

``headend billing status`` shows these decisions without acting; the store process
acts on them every ``interval`` seconds, writing ``policy_actions`` and queuing
commands whose requester is ``policy``.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from headend.balance import LOCAL as TASHKENT
from headend.commands import latest_meters
from headend.config import BillingConfig, ConfigError
from headend.ownership import Ownership
from headend.payments import accounts_sql
from headend.store import ingest, spool
from headend.store.imports import CHUNK, ID, ImportReport, SqlAccess, _read

ACCOUNT_COLUMNS = ["account_id", "debt", "overdue_since", "protected", "note"]
OPTIONAL_ACCOUNT_COLUMNS = ("category",)
"""`category`: the billing system's class of the account (e.g. household, large,
critical); `[approval] categories` name those whose disconnection needs four eyes."""
CATEGORY = re.compile(r"^[a-z0-9_-]{0,32}$")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
TRUE = {"1", "true", "yes", "y"}
FALSE = {"0", "false", "no", "n", ""}


# -- import -----------------------------------------------------------------------------


def import_accounts(
    path: Path, store: SqlAccess, db: str = "ami", owner: Ownership | None = None
) -> ImportReport:
    """Loads the billing system's accounts from CSV; bad rows are reported and skipped
    (as are accounts whose meters are in regions `owner` does not own)."""
    report = ImportReport(str(path))
    rows = _read(path, ACCOUNT_COLUMNS, report, OPTIONAL_ACCOUNT_COLUMNS)
    return load_accounts(rows, store, report, db=db, owner=owner)


def import_records(
    records: list[Any],
    store: SqlAccess,
    source: str = "request",
    db: str = "ami",
    owner: Ownership | None = None,
    *,
    sees: Callable[[str], bool] | None = None,
) -> ImportReport:
    """Loads accounts sent as JSON objects (the HTTP API): the CSV's columns as keys,
    numbers and booleans allowed; bad records are reported by position and skipped.
    `sees` (the person's regions) refuses accounts with meters outside them."""
    report = ImportReport(source)

    def text(v: Any) -> str:
        if v is None:
            return ""
        if isinstance(v, bool):
            return "true" if v else "false"
        return str(v)

    rows: list[tuple[int, dict[str, str]]] = []
    for i, rec in enumerate(records, 1):
        if not isinstance(rec, dict):
            report.bad.append((i, "not an object"))
            continue
        unknown = sorted(set(rec) - {*ACCOUNT_COLUMNS, *OPTIONAL_ACCOUNT_COLUMNS})
        if unknown:
            report.bad.append((i, f"unknown field(s) {', '.join(map(str, unknown))}"))
            continue
        if "account_id" not in rec or "debt" not in rec:
            report.bad.append((i, "account_id and debt are required"))
            continue
        rows.append(
            (i, {c: text(rec.get(c)) for c in (*ACCOUNT_COLUMNS, *OPTIONAL_ACCOUNT_COLUMNS)})
        )
    return load_accounts(rows, store, report, db=db, owner=owner, sees=sees)


def load_accounts(
    rows: Iterable[tuple[int, dict[str, str]]],
    store: SqlAccess,
    report: ImportReport,
    *,
    db: str = "ami",
    owner: Ownership | None = None,
    sees: Callable[[str], bool] | None = None,
) -> ImportReport:
    """Checks each (line, record) and inserts the good ones into `billing_accounts`;
    an account whose meters lie in a region `owner` does not own is refused naming the
    owner (an account with no meters here yet is taken), and so is one with meters in
    a region the importing person may not reach (`sees`)."""
    good: list[list[Any]] = []
    lines: list[int] = []
    seen: set[str] = set()
    now = dt.datetime.now(dt.UTC)
    for line, r in rows:
        try:
            acc = r["account_id"]
            if acc in seen:
                raise ValueError(f"account_id {acc} appears twice")
            row = _account_row(r, now)
        except ValueError as e:
            report.bad.append((line, str(e)))
            continue
        seen.add(acc)
        good.append(row)
        lines.append(line)
    if sees is not None and good:
        lines, good = _within(store, db, sees, lines=lines, good=good, report=report)
    if owner is not None and not owner.everything and good:
        good = _owned_accounts(store, db, owner, zip(lines, good, strict=True), report)
    for i in range(0, len(good), CHUNK):
        store.insert_rows(
            "billing_accounts",
            [*ACCOUNT_COLUMNS, *OPTIONAL_ACCOUNT_COLUMNS, "updated_at"],
            good[i : i + CHUNK],
        )
    report.loaded = len(good)
    report.bad.sort()
    return report


def _account_row(r: dict[str, str], now: dt.datetime) -> list[Any]:
    """One checked account row, or ValueError naming what is wrong."""
    acc = r["account_id"]
    if not ID.match(acc):
        raise ValueError(f"account_id {acc!r} must be 1-64 letters, digits or _.:/-")
    try:
        debt = float(r["debt"])
    except ValueError:
        raise ValueError(f"debt {r['debt']!r} is not a number") from None
    if math.isnan(debt) or abs(debt) > 1e15:
        raise ValueError(f"debt {r['debt']!r} is not a usable amount")
    since = None
    if r["overdue_since"]:
        try:
            since = dt.date.fromisoformat(r["overdue_since"])
        except ValueError:
            raise ValueError(
                f"overdue_since {r['overdue_since']!r} is not a date (YYYY-MM-DD)"
            ) from None
    flag = r["protected"].lower()
    if flag not in TRUE | FALSE:
        raise ValueError(f"protected {r['protected']!r} is not true or false")
    category = r.get("category", "").strip().lower()
    if not CATEGORY.match(category):
        raise ValueError(f"category {r['category']!r}: up to 32 letters, digits, - or _")
    return [acc, debt, since, flag in TRUE, r["note"], category, now]


def _within(
    store: SqlAccess,
    db: str,
    sees: Callable[[str], bool],
    *,
    lines: list[int],
    good: list[list[Any]],
    report: ImportReport,
) -> tuple[list[int], list[list[Any]]]:
    """The accounts (and their lines) whose meters all lie in regions the importing
    person reaches; the others are refused by line."""
    regions = account_regions(store, db, [g[0] for g in good])
    kept: list[tuple[int, list[Any]]] = []
    for line, g in zip(lines, good, strict=True):
        outside = sorted(r for r in regions.get(g[0], ()) if not sees(r))
        if outside:
            where = outside[0] or "above the regions"
            report.bad.append((line, f"account {g[0]} has meters in {where}, outside yours"))
        else:
            kept.append((line, g))
    return [n for n, _ in kept], [g for _, g in kept]


def _owned_accounts(
    store: SqlAccess,
    db: str,
    owner: Ownership,
    rows: Iterable[tuple[int, list[Any]]],
    report: ImportReport,
) -> list[list[Any]]:
    """The accounts (with their lines) whose meters this node may take; the others
    are refused by line."""
    numbered = list(rows)
    regions = account_regions(store, db, [g[0] for _, g in numbered])
    kept = []
    for line, g in numbered:
        foreign = sorted(r for r in regions.get(g[0], ()) if not owner.accepts(r))
        if foreign:
            report.bad.append((line, owner.why_not(f"account {g[0]}", foreign[0])))
        else:
            kept.append(g)
    return kept


def second_person_needed(
    store: SqlAccess, db: str, serials: list[str], categories: Sequence[str]
) -> dict[str, str]:
    """Why disconnecting each of `serials` needs a second person (four eyes): its
    account is protected, or of one of `categories`. Meters absent need nobody."""
    out: dict[str, str] = {}
    cats = [c for c in categories if c] or ["\x00"]  # an empty IN () is not SQL
    for i in range(0, len(serials), 10_000):
        _, rows = store.query(
            "SELECT m.serial, m.account_id, a.protected, a.category FROM (SELECT serial, "
            f"argMax(account_id, updated_at) AS account_id FROM {db}.meters "
            "WHERE serial IN %(s)s GROUP BY serial) AS m INNER JOIN (SELECT account_id, "
            "argMax(protected, updated_at) AS protected, argMax(category, updated_at) AS category "
            f"FROM {db}.billing_accounts GROUP BY account_id) AS a ON a.account_id = m.account_id "
            "WHERE a.protected OR a.category IN %(c)s",
            {"s": serials[i : i + 10_000], "c": cats},
        )
        for serial, account, protected, category in rows:
            out[str(serial)] = (
                f"account {account} is protected"
                if protected
                else f"account {account} is a {category} account"
            )
    return out


def account_regions(store: SqlAccess, db: str, accounts: list[str]) -> dict[str, set[str]]:
    """The regions of each account's meters (accounts with no meters are absent)."""
    out: dict[str, set[str]] = {}
    for i in range(0, len(accounts), 10_000):
        _, rows = store.query(
            f"SELECT account_id, groupUniqArray(region) FROM (SELECT serial, "
            f"argMax(account_id, updated_at) AS account_id, argMax(region, updated_at) AS region "
            f"FROM {db}.meters GROUP BY serial) WHERE account_id IN %(a)s GROUP BY account_id",
            {"a": accounts[i : i + 10_000]},
        )
        out.update({str(a): {str(r) for r in regions} for a, regions in rows})
    return out


# -- policy -----------------------------------------------------------------------------


def _hours(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d{1,2})\s*-\s*(\d{1,2})\s*", text)
    if not m or not (0 <= int(m[1]) <= 23 and 0 <= int(m[2]) <= 23):
        raise ConfigError(f"[billing] allowed_hours {text!r} must be like 9-17 (hours 0-23)")
    return int(m[1]), int(m[2])


def _weekdays(text: str) -> set[int]:
    out: set[int] = set()
    for part in text.lower().replace(" ", "").split(","):
        if not part:
            continue
        a, _, b = part.partition("-")
        if a not in WEEKDAYS or (b and b not in WEEKDAYS):
            raise ConfigError(f"[billing] allowed_weekdays {text!r}: use mon..sun, e.g. mon-fri")
        i, j = WEEKDAYS.index(a), WEEKDAYS.index(b or a)
        out.update(range(i, j + 1) if i <= j else [*range(i, 7), *range(0, j + 1)])
    return out


def _holidays(text: str) -> set[dt.date]:
    out = set()
    for part in text.replace(" ", "").split(","):
        if part:
            try:
                out.add(dt.date.fromisoformat(part))
            except ValueError:
                raise ConfigError(f"[billing] holidays: {part!r} is not YYYY-MM-DD") from None
    return out


@dataclass
class Decision:
    account_id: str
    serial: str
    node_id: str
    debt: float
    protected: bool
    supply: str
    action: str
    reason: str

    def row(self) -> list[Any]:
        return [round(self.debt, 2) if f == "debt" else getattr(self, f) for f in DECISION_COLUMNS]


DECISION_COLUMNS = [f.name for f in fields(Decision)]


class Policy:
    def __init__(self, cfg: BillingConfig) -> None:
        self.cfg = cfg
        self.hours = _hours(cfg.allowed_hours)
        self.weekdays = _weekdays(cfg.allowed_weekdays)
        self.holidays = _holidays(cfg.holidays)

    def window_closed(self, now: float) -> str | None:
        """Why disconnections may not start at `now`, or None."""
        local = dt.datetime.fromtimestamp(now, TASHKENT)
        if local.date() in self.holidays:
            return f"{local.date()} is a holiday"
        if local.weekday() not in self.weekdays:
            return f"no disconnections on {WEEKDAYS[local.weekday()]}"
        lo, hi = self.hours
        if not (lo <= local.hour <= hi):
            return f"outside allowed hours {lo}-{hi} (now {local:%H:%M} Tashkent)"
        return None

    def decide(
        self,
        rows: list[tuple[Any, ...]],
        now: float,
        pending: Callable[[str], bool],
        node_disconnects: dict[str, int],
    ) -> list[Decision]:
        """One decision per meter. `rows`: account_id, debt, overdue_since, protected,
        serial, node_id, supply (connected/disconnected/unknown), disconnected by
        policy (bool), last warning (unix or 0), last reconnect (unix or 0)."""
        per_node = dict(node_disconnects)
        closed = self.window_closed(now)
        today = dt.datetime.fromtimestamp(now, TASHKENT).date()
        out = []
        for acc, amount, since, protected, serial, node, supply, by_policy, warned, back in rows:
            debt = float(amount)
            if supply == "disconnected":
                action, reason = self._switched_off(debt, bool(by_policy), pending(serial))
            else:
                action, reason = self._debtor(
                    debt,
                    since,
                    bool(protected),
                    today,
                    queued=pending(serial),
                    warned=warned,
                    back=back,
                    now=now,
                )
                if action == "disconnect":
                    if closed:
                        action, reason = "wait", closed
                    elif per_node.get(node, 0) >= self.cfg.max_per_node_per_hour:
                        limit = self.cfg.max_per_node_per_hour
                        action, reason = "wait", f"node {node} reached {limit} this hour"
                    else:
                        per_node[node] = per_node.get(node, 0) + 1
            out.append(Decision(acc, serial, node, debt, bool(protected), supply, action, reason))
        return out

    def _switched_off(self, debt: float, by_policy: bool, queued: bool) -> tuple[str, str]:
        cfg = self.cfg
        if not by_policy:
            return "none", "disconnected by an operator, not by the policy"
        if debt > cfg.reconnect_at:
            return "none", f"stays off: debt {debt:.2f}"
        if queued:
            return "wait", "a command for this meter is already queued"
        return "reconnect", f"debt {debt:.2f} paid down to at most {cfg.reconnect_at:g}"

    def _exempt(
        self, debt: float, since: dt.date | None, protected: bool, today: dt.date
    ) -> tuple[str | None, int]:
        """Why a debtor is left alone (or None), and the days overdue."""
        cfg = self.cfg
        overdue = (today - since).days if since is not None else -1
        if debt <= cfg.debt_threshold:
            return f"debt {debt:.2f} within {cfg.debt_threshold:g}", overdue
        if protected:
            return "protected account: never disconnected", overdue
        if overdue < cfg.overdue_days:
            return f"overdue {max(overdue, 0)} of {cfg.overdue_days} days", overdue
        return None, overdue

    def _debtor(
        self,
        debt: float,
        since: dt.date | None,
        protected: bool,
        today: dt.date,
        *,
        queued: bool,
        warned: float,
        back: float,
        now: float,
    ) -> tuple[str, str]:
        exempt, overdue = self._exempt(debt, since, protected, today)
        if exempt:
            return "none", exempt
        if queued:
            return "wait", "a command for this meter is already queued"
        if not warned or warned < back:
            return "warn", f"debt {debt:.2f} overdue {overdue} days: warning first"
        ready = warned + self.cfg.warning_hours * 3600
        if now < ready:
            when = dt.datetime.fromtimestamp(ready, TASHKENT)
            return "wait", f"warned; disconnect from {when:%Y-%m-%d %H:%M}"
        return "disconnect", f"debt {debt:.2f} overdue {overdue} days, warned"


def policy_rows(store: SqlAccess, db: str, owner: Ownership | None = None) -> list[tuple[Any, ...]]:
    """The accounts' meters with their supply state and policy history (the meters
    `owner` owns: the policy acts only there); debts less the payments since the
    billing system's last statement (`headend.payments`)."""
    mine = "1" if owner is None else owner.sql("region")
    _, rows = store.query(
        f"""
        SELECT a.account_id, a.debt, a.overdue_since, a.protected, m.serial, m.node_id,
               if(s.supply_state = '', 'unknown', s.supply_state) AS supply,
               s.by_policy,
               toFloat64(ifNull(w.warned, 0)), toFloat64(ifNull(w.back, 0))
        FROM {accounts_sql(db)} AS a
        INNER JOIN (SELECT serial, argMax(node_id, updated_at) AS node_id,
                           argMax(account_id, updated_at) AS account_id,
                           argMax(role, updated_at) AS role,
                           argMax(region, updated_at) AS region
                    FROM {db}.meters GROUP BY serial HAVING {mine}) AS m
            ON m.account_id = a.account_id AND m.role = 'consumer'
        LEFT JOIN (SELECT serial, argMax(verified_state, updated_at) AS supply_state,
                          argMax(requested_by, updated_at) = 'policy' AS by_policy
                   FROM {db}.command_status
                   WHERE kind IN ('disconnect', 'reconnect') AND state = 'done'
                   GROUP BY serial) AS s ON s.serial = m.serial
        LEFT JOIN (SELECT serial,
                          maxIf(toUnixTimestamp64Milli(ts), action = 'warn') / 1000 AS warned,
                          maxIf(toUnixTimestamp64Milli(ts), action = 'reconnect') / 1000 AS back
                   FROM {db}.policy_actions GROUP BY serial) AS w ON w.serial = m.serial
        ORDER BY a.account_id, m.serial
        """
    )
    return [tuple(r) for r in rows]


def node_disconnects(store: SqlAccess, db: str, now: float) -> dict[str, int]:
    """Policy disconnections per grid node in the last hour."""
    _, rows = store.query(
        f"SELECT m.node_id, count() FROM {db}.policy_actions AS p "
        f"INNER JOIN {latest_meters(db)} AS m ON m.serial = p.serial "
        f"WHERE p.action = 'disconnect' AND p.ts >= toDateTime64({{since:Float64}}, 3) "
        f"GROUP BY m.node_id",
        {"since": now - 3600},
    )
    return {r[0]: int(r[1]) for r in rows}


def evaluate(
    store: SqlAccess,
    cfg: BillingConfig,
    db: str,
    now: float,
    pending: Callable[[str], bool],
    *,
    owner: Ownership | None = None,
) -> list[Decision]:
    return Policy(cfg).decide(
        policy_rows(store, db, owner), now, pending, node_disconnects(store, db, now)
    )


def pending_from_table(store: SqlAccess, db: str) -> set[str]:
    """Meters with a command not yet final (when no server holds the queue)."""
    _, rows = store.query(
        f"SELECT DISTINCT serial FROM {db}.command_status "
        f"WHERE state NOT IN ('done', 'failed', 'expired', 'cancelled')"
    )
    return {r[0] for r in rows}


ACTION_COLUMNS = ["ts", "account_id", "serial", "action", "reason", "command_id"]
EVENT_COLUMNS = ingest.COLUMNS[spool.EVENTS]


def record(
    store: SqlAccess, decisions: list[Decision], command_ids: dict[str, str], now: float
) -> dict[str, int]:
    """Writes what a policy pass did: policy_actions (with the command queued for each
    disconnect/reconnect, by serial) and the warning events."""
    ts = dt.datetime.fromtimestamp(now, dt.UTC)
    second = ts.replace(microsecond=0)
    actions: list[list[Any]] = []
    events: list[list[Any]] = []
    done: dict[str, int] = {}
    for d in decisions:
        if d.action not in ("warn", "disconnect", "reconnect"):
            continue
        if d.action == "warn":
            detail = f"account {d.account_id}: {d.reason}"
            events.append(
                [d.serial, second, 0, "disconnect-warning", "billing", "policy", "", detail, second]
            )
        actions.append(
            [ts, d.account_id, d.serial, d.action, d.reason, command_ids.get(d.serial, "")]
        )
        done[d.action] = done.get(d.action, 0) + 1
    if events:
        store.insert_rows("events", EVENT_COLUMNS, events)
    if actions:
        store.insert_rows("policy_actions", ACTION_COLUMNS, actions)
    return done
