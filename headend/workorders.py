"""Work orders: what the head-end finds, turned into work for the meter service
centres (DESIGN.md sections 1 and 10, issue 20).

A pass (every ``[workorders] interval``, or ``headend workorders scan``) looks for
causes among the meters this node owns (``headend.workorder_causes``) and opens one
order per cause and meter:

- ``theft_suspect``: a suspect of the anomaly detection (the inspection, with its
  rules and evidence);
- ``silent``: a meter not heard for ``silent_after`` (never heard: since it was
  imported), unless most meters of its grid node fell silent with it (an outage, not
  a fault of each meter);
- ``tamper``: the meter's own tamper alarms (cover opened, magnetic field);
- ``switch_failed``: the last disconnection or reconnection of the meter failed
  (refused, or not verified when read back): the switching is done on site;
- ``clock_uncorrected``: the last clock correction failed;
- ``low_battery``: a battery-powered meter reported its battery low;
- ``manual``: opened by a person.

"One per cause and meter": while an order for a cause and meter is not closed, the
pass opens no other; after it is closed, only evidence newer than the closing opens a
new one (and, after an inspection that confirmed nothing, not for ``theft_recheck``).

An order goes open → assigned (to a crew) → visited → closed, with the crew's
outcome. Each change is a row of ``work_order_log`` (the whole order as it stood);
``work_orders`` is the latest. Orders are sent to the service centre covering the
meter's district (``service_centres``). People with the service role (and admins)
assign, visit and close, within their regions; every change names its person.
A confirmed theft flags the account for billing (``account_flags``).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import logging
import math
import secrets
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from headend import gridtree, replacements
from headend.balance import LOCAL
from headend.clock import Clock
from headend.config import WorkOrdersConfig
from headend.errors import HeadendError
from headend.ownership import Ownership
from headend.people import Principal
from headend.store.imports import SqlAccess
from headend.workorder_causes import Causes, Finding, lit

log = logging.getLogger("headend.workorders")

CAUSES: dict[str, int] = {
    "switch_failed": 1,
    "theft_suspect": 2,
    "tamper": 2,
    "silent": 3,
    "clock_uncorrected": 3,
    "low_battery": 3,
    "manual": 3,
}
"""Each cause and its priority (1 urgent, 2 high, 3 normal)."""
STATES = ("open", "assigned", "visited", "closed")
OUTCOMES = ("theft_confirmed", "no_fault", "repaired", "replaced", "unreachable")
ACTIONS: dict[str, tuple[str, ...]] = {
    "assign": ("open", "assigned"),  # to a crew (again: to another)
    "visit": ("assigned",),
    "close": ("assigned", "visited"),
}
"""Each change and the states it is allowed from."""
COLUMNS = [
    "order_id",
    "cause",
    "serial",
    "account_id",
    "node_id",
    "district",
    "region",
    "centre_id",
    "priority",
    "since",
    "due_at",
    "evidence",
    "state",
    "assignee",
    "outcome",
    "new_serial",
    "note",
    "by",
    "ts",
    "replaced_at",
    "old_final",
    "new_initial",
]
REPLACEMENT_FIELDS = ("new_serial", "old_final", "new_initial", "replaced_at")
SYSTEM = "workorders"
"""Who opens the orders the passes find."""
DISTRICT = "district"
MAX_TEXT = 2000
EXPORT = [
    "order_id",
    "priority",
    "due_local",
    "cause",
    "serial",
    "account_id",
    "node_id",
    "district",
    "centre_id",
    "lat",
    "lon",
    "state",
    "assignee",
    "why",
]


class WorkOrderError(HeadendError):
    """A work order cannot be opened or changed as asked."""


class NoSuchOrder(WorkOrderError):
    """No work order by that id (HTTP 404)."""


@dataclass
class Place:
    """Where a meter is, for its orders."""

    serial: str
    account_id: str
    node_id: str
    district: str
    region: str
    centre_id: str
    lat: float = 0.0
    lon: float = 0.0


@dataclass
class Order:
    order_id: str
    cause: str
    serial: str
    account_id: str
    node_id: str
    district: str
    region: str
    centre_id: str
    priority: int
    since: int
    due_at: int
    evidence: str
    state: str = "open"
    assignee: str = ""
    outcome: str = ""
    new_serial: str = ""
    note: str = ""
    by: str = ""
    ts: float = 0.0
    created_at: float = 0.0
    # A replaced meter: when, and the registers read on site (old's last, new's first).
    replaced_at: int = 0
    old_final: float = 0.0
    new_initial: float = 0.0

    def row(self) -> list[Any]:
        d = asdict(self)
        d["since"] = _dt(self.since)
        d["due_at"] = _dt(self.due_at)
        d["ts"] = _dt(self.ts)
        d["replaced_at"] = _dt(self.replaced_at)
        return [d[c] for c in COLUMNS]

    def public(self) -> dict[str, Any]:
        d = asdict(self)
        d["updated_by"] = d.pop("by")
        d["updated_at"] = d.pop("ts")
        try:
            d["evidence"] = json.loads(self.evidence) if self.evidence else {}
        except ValueError:
            d["evidence"] = {"text": self.evidence}
        return d


@dataclass
class ScanReport:
    """What one pass found and opened."""

    found: dict[str, int] = field(default_factory=dict)
    opened: dict[str, int] = field(default_factory=dict)
    outage_meters: int = 0
    no_centre: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        opened = ", ".join(f"{n} {c}" for c, n in sorted(self.opened.items())) or "none"
        return (
            f"opened {opened}; found {sum(self.found.values())} causes; "
            f"{self.outage_meters} silent meters left to outages; "
            f"{self.no_centre} orders with no centre covering the district "
            f"({self.seconds:.2f} s)"
        )


def _dt(t: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(t, dt.UTC)


def _ts(v: Any) -> float:
    if isinstance(v, dt.datetime):
        return (v if v.tzinfo else v.replace(tzinfo=dt.UTC)).timestamp()
    return float(v or 0)


def _text(v: Any, name: str) -> str:
    s = "" if v is None else str(v)
    if len(s) > MAX_TEXT:
        raise WorkOrderError(f"{name} is longer than {MAX_TEXT} characters")
    return s


class Book:
    """The node's work orders (store queries; called from the store process's
    executor, so changes to one order are serialised by a lock)."""

    def __init__(
        self,
        store: SqlAccess,
        db: str,
        cfg: WorkOrdersConfig,
        owner: Ownership,
        clock: Clock,
    ) -> None:
        self.store = store
        self.db = db
        self.cfg = cfg
        self.owner = owner
        self.clock = clock
        self._lock = threading.Lock()
        self.causes = Causes(store, db, cfg, owner, clock)

    # -- where meters are ------------------------------------------------------------

    def _coverage(self) -> dict[str, str]:
        """Each district's centre (the latest import of each centre), and for what lies
        in no district (a gas network under its region), the region's first centre."""
        _, rows = self.store.query(
            f"SELECT centre_id, argMax(districts, updated_at), argMax(region, updated_at) "
            f"FROM {self.db}.service_centres GROUP BY centre_id ORDER BY centre_id"
        )
        out: dict[str, str] = {}
        for centre, districts, region in rows:
            for d in districts:
                out.setdefault(d, centre)
            out.setdefault(f"region:{region}", centre)
        return out

    def places(self, serials: Iterable[str]) -> dict[str, Place]:
        wanted = sorted(set(serials))
        if not wanted:
            return {}
        tree = gridtree.tree(self.store.query(gridtree.tree_sql(self.db))[1])
        cover = self._coverage()
        out: dict[str, Place] = {}
        fields = ("account_id", "node_id", "region", "lat", "lon")
        for serial, (account, node, region, lat, lon) in self._meters(wanted, fields).items():
            district = gridtree.above(tree, node, DISTRICT)
            out[serial] = Place(
                serial,
                account,
                node,
                district,
                region,
                cover.get(district or f"region:{region}", ""),
                0.0 if math.isnan(lat) else float(lat),
                0.0 if math.isnan(lon) else float(lon),
            )
        return out

    def _meters(self, serials: list[str], fields: Sequence[str]) -> dict[str, tuple[Any, ...]]:
        """Each meter's latest `fields` from `meters`, in chunks of 20,000 serials."""
        cols = ", ".join(f"argMax({f}, updated_at)" for f in fields)
        out: dict[str, tuple[Any, ...]] = {}
        for i in range(0, len(serials), 20_000):
            _, rows = self.store.query(
                f"SELECT serial, {cols} FROM {self.db}.meters "
                f"WHERE serial IN %(s)s GROUP BY serial",
                {"s": serials[i : i + 20_000]},
            )
            out.update({str(r[0]): tuple(r[1:]) for r in rows})
        return out

    # -- finding causes --------------------------------------------------------------

    # -- opening -----------------------------------------------------------------------

    def _latest(self, serials: Sequence[str]) -> dict[tuple[str, str], tuple[str, str, float]]:
        """(cause, serial) → (state, outcome, ts) of the newest order for it."""
        out: dict[tuple[str, str], tuple[str, str, float]] = {}
        for i in range(0, len(serials), 20_000):
            _, rows = self.store.query(
                f"SELECT any(cause), any(serial), argMax(state, ts), argMax(outcome, ts), "
                f"max(ts), min(ts) FROM {self.db}.work_order_log "
                f"WHERE serial IN ({lit(serials[i : i + 20_000])}) GROUP BY order_id"
            )
            for cause, serial, state, outcome, ts, _created in sorted(rows, key=lambda r: r[5]):
                key = (cause, serial)
                prev = out.get(key)
                if prev is None or prev[0] == "closed":
                    out[key] = (state, outcome, _ts(ts))
        return out

    def _due(self, priority: int, now: float) -> int:
        hours = {
            1: self.cfg.due_urgent_hours,
            2: self.cfg.due_high_hours,
        }.get(priority, self.cfg.due_normal_hours)
        return int(now + hours * 3600)

    def _new(
        self,
        finding: Finding,
        place: Place,
        now: float,
        *,
        by: str,
        priority: int,
        note: str = "",
    ) -> Order:
        day = _dt(now).strftime("%y%m%d")
        return Order(
            order_id=f"WO{day}-{secrets.token_hex(4)}",
            cause=finding.cause,
            serial=finding.serial,
            account_id=place.account_id,
            node_id=place.node_id,
            district=place.district,
            region=place.region,
            centre_id=place.centre_id,
            priority=priority,
            since=finding.since,
            due_at=self._due(priority, now),
            evidence=json.dumps(finding.evidence, sort_keys=True, default=str),
            note=note,
            by=by,
            ts=now,
            created_at=now,
        )

    def open_for(self, findings: Sequence[Finding], now: float, report: ScanReport) -> list[Order]:
        """Orders for the findings that have none (see the module's rule)."""
        for f in findings:
            report.found[f.cause] = report.found.get(f.cause, 0) + 1
        with self._lock:
            serials = sorted({f.serial for f in findings})
            latest = self._latest(serials)
            places = self.places(serials)
            orders: list[Order] = []
            seen: set[tuple[str, str]] = set()
            for f in findings:
                key = (f.cause, f.serial)
                place = places.get(f.serial)
                if key in seen or place is None or not self.owner.owns(place.region):
                    continue
                seen.add(key)
                prev = latest.get(key)
                if prev is not None:
                    state, outcome, closed = prev
                    if state != "closed" or f.since <= closed:
                        continue
                    if (
                        f.cause == "theft_suspect"
                        and outcome != "theft_confirmed"
                        and f.since <= closed + self.cfg.theft_recheck
                    ):
                        continue
                orders.append(self._new(f, place, now, by=SYSTEM, priority=CAUSES[f.cause]))
            if orders:
                self.store.insert_rows("work_order_log", COLUMNS, [o.row() for o in orders])
        for o in orders:
            report.opened[o.cause] = report.opened.get(o.cause, 0) + 1
            report.no_centre += not o.centre_id
        return orders

    def scan(self) -> ScanReport:
        t0 = time.monotonic()
        now = self.clock.now()
        report = ScanReport()
        findings, report.outage_meters = self.causes.find(now)
        self.open_for(findings, now, report)
        report.seconds = time.monotonic() - t0
        return report

    def create(self, who: Principal, serial: str, note: str, priority: int | None = None) -> Order:
        """An order opened by a person (cause ``manual``)."""
        who.require("work", "opening work orders")
        note = _text(note, "note")
        if not note.strip():
            raise WorkOrderError("say what the crew is to do (a note)")
        prio = CAUSES["manual"] if priority is None else int(priority)
        if prio not in (1, 2, 3):
            raise WorkOrderError("priority is 1 (urgent), 2 (high) or 3 (normal)")
        place = self.places([serial]).get(serial)
        if place is None:
            raise WorkOrderError(f"no meter {serial!r}")
        who.require_region(place.region, f"meter {serial}")
        self.owner.check(f"meter {serial}", place.region)
        now = self.clock.now()
        order = self._new(
            Finding("manual", serial, int(now)), place, now, by=who.name, priority=prio, note=note
        )
        with self._lock:
            self.store.insert_rows("work_order_log", COLUMNS, [order.row()])
        return order

    # -- reading -----------------------------------------------------------------------

    def _orders(self, where: str, params: dict[str, Any], limit: int) -> list[Order]:
        _, rows = self.store.query(
            f"SELECT order_id, cause, serial, account_id, node_id, district, region, "
            f"centre_id, priority, toInt64(since), toInt64(due_at), evidence, state, assignee, "
            f"outcome, new_serial, note, updated_by, toFloat64(updated_at), "
            f"toFloat64(created_at) FROM {self.db}.work_orders WHERE {where} "
            f"ORDER BY state = 'closed', priority, due_at, order_id LIMIT {int(limit)}",
            params,
        )
        return [
            Order(
                order_id=r[0],
                cause=r[1],
                serial=r[2],
                account_id=r[3],
                node_id=r[4],
                district=r[5],
                region=r[6],
                centre_id=r[7],
                priority=int(r[8]),
                since=int(r[9]),
                due_at=int(r[10]),
                evidence=r[11],
                state=r[12],
                assignee=r[13],
                outcome=r[14],
                new_serial=r[15],
                note=r[16],
                by=r[17],
                ts=float(r[18]),
                created_at=float(r[19]),
            )
            for r in rows
        ]

    def get(self, order_id: str, who: Principal | None = None) -> Order:
        found = self._orders("order_id = {id:String}", {"id": order_id}, 1)
        if not found:
            raise NoSuchOrder(f"no work order {order_id!r}")
        order = found[0]
        if who is not None:
            who.require_region(order.region, f"work order {order_id}")
        return order

    def history(self, order_id: str) -> list[dict[str, Any]]:
        _, rows = self.store.query(
            f"SELECT state, assignee, outcome, new_serial, note, by, toFloat64(ts), centre_id "
            f"FROM {self.db}.work_order_log WHERE order_id = {{id:String}} ORDER BY ts",
            {"id": order_id},
        )
        keys = ("state", "assignee", "outcome", "new_serial", "note", "by", "ts", "centre_id")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def coordinates(self, serials: list[str]) -> dict[str, tuple[float, float]]:
        """Where each meter is (lat, lon), for the map."""
        return {
            s: (float(a), float(b))
            for s, (a, b) in self._meters(serials, ("lat", "lon")).items()
            if a or b
        }

    def list(
        self,
        who: Principal,
        *,
        state: str = "",
        cause: str = "",
        centre: str = "",
        region: str = "",
        serial: str = "",
        limit: int = 1000,
    ) -> list[Order]:
        conds, params = ["1"], {}
        if state == "active":
            conds.append("state != 'closed'")
        elif state:
            if state not in STATES:
                raise WorkOrderError(f"state {state!r} is not one of active, {', '.join(STATES)}")
            conds.append("state = {state:String}")
            params["state"] = state
        if cause:
            if cause not in CAUSES:
                raise WorkOrderError(f"cause {cause!r} is not one of {', '.join(CAUSES)}")
            conds.append("cause = {cause:String}")
            params["cause"] = cause
        for name, value in (("centre_id", centre), ("region", region), ("serial", serial)):
            if value:
                conds.append(f"{name} = {{{name}:String}}")
                params[name] = value
        scope = who.region_filter()
        if scope is not None:
            conds.append(f"region IN ({lit(scope) or chr(39) * 2})")
        return self._orders(" AND ".join(conds), params, max(1, min(limit, 100_000)))

    # -- changing ----------------------------------------------------------------------

    def change(self, who: Principal, order_id: str, action: str, **kw: Any) -> Order:
        """`action` (assign, visit, close) on an order by `who`, with its details:
        assign: ``to`` (the crew), optionally ``centre``; visit: ``note``; close:
        ``outcome``, ``note``, and for a replaced meter ``new_serial``."""
        who.require("work", f"work orders ({action})")
        if action not in ACTIONS:
            raise WorkOrderError(f"unknown change {action!r}; one of {', '.join(ACTIONS)}")
        note = _text(kw.get("note"), "note")
        with self._lock:
            order = self.get(order_id, who)
            self.owner.check(f"work order {order_id}", order.region)
            if order.state not in ACTIONS[action]:
                raise WorkOrderError(
                    f"work order {order_id} is {order.state}: {action} only when "
                    f"{' or '.join(ACTIONS[action])}"
                )
            now = max(self.clock.now(), order.ts + 0.001)
            rep: replacements.Replacement | None = None
            order.note = note
            order.by = who.name
            order.ts = now
            flag = False
            if action == "assign":
                to = _text(kw.get("to"), "crew").strip()
                if not to:
                    raise WorkOrderError("assign to whom? (a crew or person: --to)")
                order.assignee = to
                centre = str(kw.get("centre") or "")
                if centre:
                    self._check_centre(centre, order.region)
                    order.centre_id = centre
                order.state = "assigned"
            elif action == "visit":
                order.state = "visited"
            else:
                outcome = str(kw.get("outcome") or "")
                if outcome not in OUTCOMES:
                    raise WorkOrderError(f"outcome {outcome!r} is not one of {', '.join(OUTCOMES)}")
                if outcome == "replaced":
                    rep = replacements.check(
                        self.store,
                        self.db,
                        order.serial,
                        kw,
                        created_at=order.created_at,
                        now=now,
                    )
                    order.new_serial = rep.new_serial
                    order.replaced_at = rep.replaced_at
                    order.old_final = rep.old_final
                    order.new_initial = rep.new_initial
                elif any(kw.get(k) not in (None, "") for k in REPLACEMENT_FIELDS):
                    raise WorkOrderError(
                        f"{', '.join(REPLACEMENT_FIELDS)} go only with the outcome replaced"
                    )
                order.outcome = outcome
                order.state = "closed"
                flag = outcome == "theft_confirmed" and bool(order.account_id)
            self.store.insert_rows("work_order_log", COLUMNS, [order.row()])
            if rep is not None:
                replacements.record(self.store, rep, now)
            if flag:
                self.store.insert_rows(
                    "account_flags",
                    ["account_id", "flag", "serial", "order_id", "cleared", "by", "at"],
                    [
                        [
                            order.account_id,
                            "theft_confirmed",
                            order.serial,
                            order_id,
                            0,
                            who.name,
                            _dt(now),
                        ]
                    ],
                )
        return order

    def _check_centre(self, centre: str, region: str) -> None:
        _, rows = self.store.query(
            f"SELECT argMax(region, updated_at) FROM {self.db}.service_centres "
            f"WHERE centre_id = {{c:String}} GROUP BY centre_id",
            {"c": centre},
        )
        if not rows:
            raise WorkOrderError(f"no service centre {centre!r} (headend centres list)")
        if rows[0][0] != region:
            raise WorkOrderError(
                f"service centre {centre} is in region {rows[0][0]}, the order in {region}"
            )

    # -- what the outcomes say ---------------------------------------------------------

    def precision(self, who: Principal) -> dict[str, Any]:
        """Inspections closed with a verdict (theft confirmed or no fault), per rule and
        per region: how often the head-end's suspicion was right."""
        scope = who.region_filter()
        where = "" if scope is None else f" AND region IN ({lit(scope) or chr(39) * 2})"
        _, rows = self.store.query(
            f"SELECT region, evidence, outcome FROM {self.db}.work_orders "
            f"WHERE cause = 'theft_suspect' AND state = 'closed' "
            f"AND outcome IN ('theft_confirmed', 'no_fault'){where}"
        )
        by_rule: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        by_region: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for region, evidence, outcome in rows:
            hit = int(outcome == "theft_confirmed")
            try:
                rules = json.loads(evidence).get("rules") or []
            except (ValueError, AttributeError):
                rules = []
            for rule in rules:
                by_rule[rule][0] += hit
                by_rule[rule][1] += 1
            by_region[region][0] += hit
            by_region[region][1] += 1

        def table(d: dict[str, list[int]]) -> list[dict[str, Any]]:
            return [
                {"name": k, "confirmed": c, "inspected": n, "precision": round(c / n, 3)}
                for k, (c, n) in sorted(d.items())
            ]

        total = sum(r[0] for r in by_region.values()), sum(r[1] for r in by_region.values())
        return {
            "inspected": total[1],
            "confirmed": total[0],
            "precision": round(total[0] / total[1], 3) if total[1] else None,
            "by_rule": table(by_rule),
            "by_region": table(by_region),
        }

    def export_csv(self, orders: Sequence[Order]) -> str:
        """The crews' list: one line per order, due time in local time, where the
        meter is, and why in a few words."""
        places = self.places([o.serial for o in orders])
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n")
        w.writerow(EXPORT)
        for o in orders:
            p = places.get(o.serial)
            w.writerow(
                [
                    o.order_id,
                    o.priority,
                    _dt(o.due_at).astimezone(LOCAL).strftime("%Y-%m-%d %H:%M"),
                    o.cause,
                    o.serial,
                    o.account_id,
                    o.node_id,
                    o.district,
                    o.centre_id,
                    f"{p.lat:.5f}" if p and p.lat else "",
                    f"{p.lon:.5f}" if p and p.lon else "",
                    o.state,
                    o.assignee,
                    why(o),
                ]
            )
        return out.getvalue()


def why(o: Order) -> str:
    """An order's reason in a few words, for a crew."""
    try:
        ev = json.loads(o.evidence) if o.evidence else {}
    except ValueError:
        ev = {}
    if o.cause == "theft_suspect":
        rules = ", ".join(ev.get("rules") or [])
        return f"inspect: {rules}; transformer loss {ev.get('node_loss_pct')} %"
    if o.cause == "silent":
        if ev.get("never_heard"):
            return "never heard since installed"
        return f"silent since {_dt(o.since).astimezone(LOCAL):%Y-%m-%d %H:%M}"
    if o.cause in ("tamper", "low_battery"):
        return f"{', '.join(ev.get('events') or [])} ({ev.get('count', 0)}x)"
    if o.cause in ("switch_failed", "clock_uncorrected"):
        return f"{ev.get('kind', '')} failed: {ev.get('error', '')}"[:200]
    return o.note[:200]
