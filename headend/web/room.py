"""The situation room's figures: the grid with today's balances, load, consumers and
meters online per node, rolled up to districts, regions and the republic.

`snapshot()` reads ClickHouse (run it in an executor) and returns plain dicts; the
HTTP layer keeps the latest one and serves it from memory, so page refreshes by many
operators cost no queries. "Today" is the local (Tashkent) day of the store's clock.

Roll-up rules (DESIGN.md section 6): a network node's figures are its own balance
(input, output, loss, completeness). An administrative unit's input is the input of
the highest link of the chain present in it (generation for the republic, backbone
substations for a region), its loss the sum of the losses of every link in it, so
loss % is the share of what entered the unit that never reached a consumer's meter.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from dataclasses import dataclass, field
from typing import Any

from headend.balance import FLOW, HOUR, LOCAL, last_period
from headend.balance import obis_int as _obis
from headend.commands import latest_meters
from headend.levels import ADMIN_LEVELS, NETWORK_LEVELS

DAY = 86_400
LOAD_LOOKBACK = 3  # hours
COMMODITIES = ("electricity", "gas")
ALARM_CATEGORIES = ("tamper", "power")
CHAIN = NETWORK_LEVELS


def local_day_start(t: float) -> int:
    """The Unix time at which the Tashkent day holding `t` began (the end of the last
    whole day)."""
    return last_period("day", int(t))[1]


def local_date(t: float) -> str:
    return dt.datetime.fromtimestamp(t, LOCAL).date().isoformat()


def _pct(loss: float, inp: float) -> float | None:
    return round(loss / inp * 100, 2) if inp > 0 else None


@dataclass
class Figures:
    """One commodity's balance over a period, summed."""

    input: float = 0.0
    output: float = 0.0
    loss: float = 0.0
    measured: int = 0
    expected: int = 0
    # Measured meter-hours on the corrected gas volume.
    corrected: int = 0

    def add(self, other: Figures) -> None:
        self.input += other.input
        self.output += other.output
        self.loss += other.loss
        self.measured += other.measured
        self.expected += other.expected
        self.corrected += other.corrected

    def public(self, commodity: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {
            "input": round(self.input, 3),
            "output": round(self.output, 3),
            "loss": round(self.loss, 3),
            "loss_pct": _pct(self.loss, self.input),
            "completeness": round(self.measured / self.expected, 4) if self.expected else None,
        }
        if commodity == "gas":
            # Which volume the figures are in, as balance reports say it.
            c, m = self.corrected, self.measured
            out["volume"] = "uncorrected" if c == 0 else "corrected" if c >= m else "mixed"
        return out


@dataclass
class Node:
    node_id: str
    parent_id: str
    level: str
    commodity: str
    name: str
    admin_unit: str
    lat: float
    lon: float
    children: list[Node] = field(default_factory=list)
    consumers: int = 0
    meters: int = 0
    online: int = 0
    # Own balance (network nodes): today, and the latest measured hour.
    today: Figures | None = None
    hour_input: float | None = None
    # Roll-ups (administrative units), per commodity.
    totals: dict[str, Figures] = field(default_factory=dict)
    load: dict[str, float] = field(default_factory=dict)

    def public(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "node_id": self.node_id,
            "parent_id": self.parent_id or None,
            "level": self.level,
            "commodity": self.commodity,
            "name": self.name,
            "admin_unit": self.admin_unit,
            "lat": self.lat,
            "lon": self.lon,
            "children": len(self.children),
            "consumers": self.consumers,
            "meters": self.meters,
            "online": self.online,
        }
        if self.level in ADMIN_LEVELS:
            out["today"] = {c: f.public(c) for c, f in self.totals.items()}
            out["load"] = {c: round(v, 3) for c, v in self.load.items()}
        else:
            out["today"] = {self.commodity: (self.today or Figures()).public(self.commodity)}
            out["load"] = (
                {self.commodity: round(self.hour_input, 3)} if self.hour_input is not None else {}
            )
        return out


def _rollup(node: Node) -> None:
    """Counts and figures of `node`'s subtree (post-order, iterative: grids are deep)."""
    order: list[Node] = []
    stack = [node]
    while stack:
        n = stack.pop()
        order.append(n)
        stack.extend(n.children)
    for n in reversed(order):
        for c in n.children:
            n.consumers += c.consumers
            n.meters += c.meters
            n.online += c.online
    # Administrative units: the highest link's input and load, every link's loss.
    for n in order:
        if n.level not in ADMIN_LEVELS:
            continue
        links: dict[str, list[Node]] = {}
        inner = list(n.children)
        while inner:
            m = inner.pop()
            inner.extend(m.children)
            if m.level not in ADMIN_LEVELS and m.today is not None and m.today.input > 0:
                links.setdefault(m.commodity, []).append(m)
        for commodity, nodes in links.items():
            top = min(CHAIN.index(m.level) if m.level in CHAIN else 99 for m in nodes)
            head = [m for m in nodes if (CHAIN.index(m.level) if m.level in CHAIN else 99) == top]
            f = Figures()
            for m in head:
                assert m.today is not None
                f.input += m.today.input
                f.measured += m.today.measured
                f.expected += m.today.expected
                f.corrected += m.today.corrected
            f.loss = sum(m.today.loss for m in nodes if m.today is not None)
            f.output = f.input - f.loss
            n.totals[commodity] = f
            n.load[commodity] = sum(m.hour_input or 0.0 for m in head)


@dataclass
class Snapshot:
    at: float
    now: float
    day: str
    nodes: dict[str, Node]
    roots: list[str]
    seconds: float

    def node_list(
        self,
        *,
        level: str | None = None,
        parent: str | None = None,
        regions: tuple[str, ...] | None = None,
    ) -> list[dict[str, Any]]:
        out = []
        for n in self.nodes.values():
            if level and n.level != level:
                continue
            if parent is not None and n.parent_id != parent:
                continue
            if not self.visible(n.node_id, regions):
                continue
            out.append(n.public())
        return out

    def region_of(self, node_id: str) -> str:
        """The region-level node at or above `node_id` ('' above the regions)."""
        n = self.nodes.get(node_id)
        while n is not None:
            if n.level == "region":
                return n.node_id
            n = self.nodes.get(n.parent_id)
        return ""

    def visible(self, node_id: str, regions: tuple[str, ...] | None) -> bool:
        """Whether a person of `regions` (None: the republic) sees the node: what lies
        in their regions, and above the regions only the path down to them (the
        republic's totals), not generation or another region's nodes."""
        if regions is None:
            return True
        r = self.region_of(node_id)
        if r:
            return r in regions
        for reg in regions:
            n = self.nodes.get(reg)
            while n is not None:
                if n.node_id == node_id:
                    return True
                n = self.nodes.get(n.parent_id)
        return False

    def regions(self) -> list[dict[str, Any]]:
        return self.node_list(level="region")

    def summary(self) -> dict[str, Any]:
        republic = [self.nodes[r] for r in self.roots if self.nodes[r].level == "republic"]
        top = republic[0].public() if republic else {}
        meters = sum(self.nodes[r].meters for r in self.roots)
        online = sum(self.nodes[r].online for r in self.roots)
        return {
            "at": self.at,
            "now": self.now,
            "day": self.day,
            "meters": meters,
            "online": online,
            "consumers": sum(self.nodes[r].consumers for r in self.roots),
            "today": top.get("today", {}),
            "load": top.get("load", {}),
            "nodes": len(self.nodes),
            "seconds": round(self.seconds, 3),
        }


def snapshot(store: Any, db: str, now: float, online: dict[str, int]) -> Snapshot:
    """The grid and today's figures (Tashkent day of `now`), with `online` meters per
    node as the workers report them."""
    t0 = time.monotonic()
    _, rows = store.query(
        "SELECT node_id, argMax(parent_id, updated_at), argMax(level, updated_at), "
        "argMax(commodity, updated_at), argMax(name, updated_at), "
        "argMax(admin_unit, updated_at), argMax(lat, updated_at), argMax(lon, updated_at) "
        f"FROM {db}.grid_nodes GROUP BY node_id"
    )
    nodes = {
        r[0]: Node(r[0], r[1], r[2], r[3], r[4], r[5], _coord(r[6]), _coord(r[7])) for r in rows
    }
    roots = []
    for n in nodes.values():
        parent = nodes.get(n.parent_id)
        if parent is None:
            roots.append(n.node_id)
        else:
            parent.children.append(n)
    _, rows = store.query(
        "SELECT node, countIf(role = 'consumer'), count() FROM ("
        "SELECT serial, argMax(node_id, updated_at) AS node, argMax(role, updated_at) AS role "
        f"FROM {db}.meters GROUP BY serial) GROUP BY node"
    )
    for node_id, consumers, meters in rows:
        if node_id in nodes:
            nodes[node_id].consumers += int(consumers)
            nodes[node_id].meters += int(meters)
    for node_id, count in online.items():
        if node_id in nodes:
            nodes[node_id].online += count
    day0 = local_day_start(now)
    # Load: the input of the latest hour that has one. The newest hour reads 0 until the
    # readings that close it arrive, so look back a few hours.
    recent = int(now // HOUR * HOUR) - LOAD_LOOKBACK * HOUR
    _, rows = store.query(
        "SELECT node_id, sumIf(input, period_start >= toDateTime(%(d)s)), "
        "sumIf(output, period_start >= toDateTime(%(d)s)), "
        "sumIf(loss, period_start >= toDateTime(%(d)s)), "
        "sumIf(measured, period_start >= toDateTime(%(d)s)), "
        "sumIf(expected, period_start >= toDateTime(%(d)s)), "
        "argMaxIf(input, period_start, input > 0 AND period_start >= toDateTime(%(h)s)), "
        "max(has_input), sumIf(corrected, period_start >= toDateTime(%(d)s)) "
        f"FROM {db}.balances FINAL "
        "WHERE period_start >= toDateTime(%(from)s) AND period_start < toDateTime(%(to)s) "
        "GROUP BY node_id",
        {"d": day0, "h": recent, "from": min(day0, recent), "to": int(now) + HOUR},
    )
    for node_id, i, o, loss, m, e, hour, has_input, corrected in rows:
        found = nodes.get(node_id)
        if found is None:
            continue
        n = found
        n.today = Figures(float(i), float(o), float(loss), int(m), int(e), int(corrected))
        if has_input:
            n.hour_input = float(hour)
        else:
            n.today.input = 0.0  # without a balance meter there is no measured input
    for r in roots:
        _rollup(nodes[r])
    return Snapshot(time.time(), now, local_date(now), nodes, roots, time.monotonic() - t0)


def _coord(v: Any) -> float:
    f = float(v)
    return 0.0 if math.isnan(f) else f  # no coordinates


# -- queries behind the other endpoints ------------------------------------------------


def meter(store: Any, db: str, serial: str) -> dict[str, Any] | None:
    cols, rows = store.query(
        "SELECT serial, argMax(kind, updated_at) AS kind, argMax(role, updated_at) AS role, "
        "argMax(node_id, updated_at) AS node_id, argMax(account_id, updated_at) AS account_id, "
        "argMax(model, updated_at) AS model, argMax(system_title, updated_at) AS system_title, "
        "argMax(lat, updated_at) AS lat, argMax(lon, updated_at) AS lon, "
        "argMax(region, updated_at) AS region "
        f"FROM {db}.meters WHERE serial = %(s)s GROUP BY serial",
        {"s": serial},
    )
    if not rows:
        return None
    out = dict(zip(cols, rows[0], strict=True))
    for k in ("lat", "lon"):
        out[k] = _coord(out[k])
    return out


def node_meters(store: Any, db: str, node_id: str, now: float) -> list[dict[str, Any]]:
    """The meters attached directly to a node, with today's consumption (kWh or m³) and
    its completeness, and the latest suspicion score where there is one."""
    day0 = local_day_start(now)
    cols, rows = store.query(
        "SELECT m.serial AS serial, m.kind AS kind, m.role AS role, "
        "m.account_id AS account_id, m.lat AS lat, m.lon AS lon, "
        "round(c.total, 3) AS today, c.hours AS hours, c.measured AS measured_hours, "
        "a.score AS suspicion, a.rules AS rules FROM ("
        "SELECT serial, argMax(kind, updated_at) AS kind, argMax(role, updated_at) AS role, "
        "argMax(account_id, updated_at) AS account_id, argMax(lat, updated_at) AS lat, "
        "argMax(lon, updated_at) AS lon, argMax(node_id, updated_at) AS node "
        f"FROM {db}.meters GROUP BY serial HAVING node = %(n)s) AS m "
        "LEFT JOIN (SELECT meter, sum(value) AS total, count() AS hours, "
        "countIf(quality = 'measured') AS measured "
        f"FROM {db}.consumption FINAL WHERE interval_start >= toDateTime(%(d)s) "
        "AND obis IN %(o)s GROUP BY meter) AS c ON c.meter = m.serial "
        "LEFT JOIN (SELECT meter, argMax(score, window_end) AS score, "
        f"argMax(rules, window_end) AS rules FROM {db}.anomalies GROUP BY meter) AS a "
        "ON a.meter = m.serial ORDER BY m.role, m.serial",
        {"n": node_id, "d": day0, "o": [_obis(FLOW["electricity"]), _obis(FLOW["gas"])]},
        settings={"join_use_nulls": 1},
    )
    out = table(cols, rows)
    for r in out:
        r["lat"], r["lon"] = _coord(r["lat"]), _coord(r["lon"])
    return out


def table(cols: list[str], rows: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    return [dict(zip(cols, r, strict=True)) for r in rows]


def readings(
    store: Any, db: str, serial: str, *, start: int, end: int, limit: int
) -> list[dict[str, Any]]:
    cols, rows = store.query(
        "SELECT obis_code AS obis, ts, value, unit, status, source, quality "
        f"FROM {db}.readings WHERE meter = %(s)s "
        "AND ts >= toDateTime(%(a)s) AND ts < toDateTime(%(b)s) "
        "ORDER BY ts DESC, obis LIMIT %(n)s",
        {"s": serial, "a": start, "b": end, "n": limit},
    )
    return table(cols, rows)


def in_regions(column: str, db: str, regions: tuple[str, ...] | None) -> str:
    """A condition keeping `column` (a meter serial) to meters of `regions` (None: no
    condition); the regions go in as the parameter %(rg)s."""
    if regions is None:
        return "1"
    return f"{column} IN (SELECT serial FROM {db}.meters WHERE region IN %(rg)s)"


def events(
    store: Any,
    db: str,
    *,
    start: int,
    end: int,
    limit: int,
    serial: str | None = None,
    categories: tuple[str, ...] = (),
    regions: tuple[str, ...] | None = None,
) -> list[dict[str, Any]]:
    where = ["ts >= toDateTime(%(a)s)", "ts < toDateTime(%(b)s)", in_regions("meter", db, regions)]
    params: dict[str, Any] = {"a": start, "b": end, "n": limit, "rg": list(regions or ())}
    if serial:
        where.append("meter = %(s)s")
        params["s"] = serial
    if categories:
        where.append("category IN %(c)s")
        params["c"] = list(categories)
    cols, rows = store.query(
        "SELECT e.meter AS meter, e.ts AS ts, e.code AS code, e.name AS name, "
        "e.category AS category, e.source AS source, e.detail AS detail, m.node_id AS node_id "
        f"FROM (SELECT * FROM {db}.events WHERE {' AND '.join(where)} "
        "ORDER BY ts DESC LIMIT %(n)s) AS e "
        f"LEFT JOIN {latest_meters(db)} AS m ON m.serial = e.meter ORDER BY ts DESC",
        params,
    )
    return table(cols, rows)


def command_history(
    store: Any,
    db: str,
    *,
    serial: str | None,
    limit: int,
    kinds: tuple[str, ...] = (),
    regions: tuple[str, ...] | None = None,
) -> list[dict[str, Any]]:
    where = [] if regions is None else [in_regions("serial", db, regions)]
    if serial:
        where.append("serial = %(s)s")
    if kinds:
        where.append("kind IN %(k)s")
    cond = f"WHERE {' AND '.join(where)}" if where else ""
    cols, rows = store.query(
        "SELECT command_id, serial, kind, requested_by, reason, requested_at, state, attempts, "
        f"result, error, verified_state, updated_at FROM {db}.command_status {cond} "
        "ORDER BY updated_at DESC LIMIT %(n)s",
        {"s": serial or "", "k": list(kinds), "n": limit, "rg": list(regions or ())},
    )
    return table(cols, rows)


def anomalies(
    store: Any, db: str, limit: int, regions: tuple[str, ...] | None = None
) -> list[dict[str, Any]]:
    """Each suspect's latest finding, highest score first."""
    cols, rows = store.query(
        f"SELECT * FROM (SELECT * FROM {db}.anomalies WHERE {in_regions('meter', db, regions)} "
        "ORDER BY window_end DESC "
        "LIMIT 1 BY meter) ORDER BY score DESC, node_loss_pct DESC LIMIT %(n)s",
        {"n": limit, "rg": list(regions or ())},
    )
    return table(cols, rows)


def health(
    store: Any,
    db: str,
    now: float,
    snap: Snapshot | None,
    clock_threshold: float,
    *,
    scope: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """Fleet health: meters offline per region, clocks found off by the scheduler's
    checks in the last day, alarms in the last day by name (within `scope`'s regions,
    None: the republic)."""
    day = int(now) - DAY
    rg = {"rg": list(scope or ())}
    _, alarm_rows = store.query(
        f"SELECT category, name, count() FROM {db}.events "
        f"WHERE ts >= toDateTime(%(a)s) AND category IN %(c)s AND {in_regions('meter', db, scope)} "
        "GROUP BY category, name ORDER BY count() DESC",
        {"a": day, "c": list(ALARM_CATEGORIES), **rg},
    )
    _, clocks = store.query(
        "SELECT countIf(state = 'done'), "
        "countIf(state = 'done' AND JSONExtractBool(result, 'corrected')), "
        "countIf(state = 'failed') "
        f"FROM {db}.command_status WHERE kind = 'clock' AND updated_at >= now() - INTERVAL 1 DAY "
        f"AND {in_regions('serial', db, scope)}",
        rg,
    )
    checked, set_, failed = clocks[0] if clocks else (0, 0, 0)
    regions = []
    if snap is not None:
        for r in snap.node_list(level="region", regions=scope):
            regions.append(
                {
                    "node_id": r["node_id"],
                    "name": r["name"],
                    "meters": r["meters"],
                    "online": r["online"],
                    "offline": r["meters"] - r["online"],
                }
            )
    if scope is None:
        summary = snap.summary() if snap else {"meters": 0, "online": 0}
        meters, online = summary["meters"], summary["online"]
    else:
        meters = sum(r["meters"] for r in regions)
        online = sum(r["online"] for r in regions)
    return {
        "meters": meters,
        "online": online,
        "offline": meters - online,
        "regions": regions,
        "clocks": {
            "checked_last_day": int(checked),
            "set_last_day": int(set_),
            "failed_last_day": int(failed),
            "threshold_s": clock_threshold,
        },
        "alarms_last_day": [{"category": c, "name": n, "count": int(k)} for c, n, k in alarm_rows],
    }
