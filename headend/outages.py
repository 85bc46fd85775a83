"""Outages: meters' power-down and power-up events grouped into interruptions of a
transformer or a feeder, with restoration meter by meter and the reliability indices
(SAIDI, SAIFI, MAIFI) per district, region and month.

A pass (with the work orders', every ``[outages] interval``) reads the power events
of the last ``lookback`` (further back while an outage is still open):

1. each meter's interruptions: a power-down and the next power-up (none yet: still
   out);
2. per transformer, interruptions that began within ``group_window`` of each other
   on at least two meters and ``min_share`` of the node's meters are one outage (one
   meter alone is that consumer's matter, not the grid's);
3. when at least two transformers and ``min_share`` of a feeder's transformers went
   out together, it is the feeder's outage (the transformer outages are merged into
   it).

An outage's consumers are every consumer meter under its node (those it cut off,
reported or not); it ended when its last reporting meter came back. One lasting
``sustained`` seconds or more (IEEE 1366: 5 minutes) counts in SAIDI and SAIFI; a
shorter one is momentary (MAIFI). Whether the node's balance meter saw it is
recorded. Everything is rewritten pass by pass as events arrive (the same outage
keeps its id), so late buffers complete what the first pass saw.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from headend import gridtree
from headend.balance import month_span
from headend.clock import Clock
from headend.config import OutagesConfig
from headend.errors import HeadendError
from headend.ownership import Ownership
from headend.people import Principal
from headend.store.imports import SqlAccess

log = logging.getLogger("headend.outages")

DOWN, UP = "power-down", "power-up"
COLUMNS = [
    "outage_id",
    "node_id",
    "level",
    "region",
    "district",
    "started_at",
    "ended_at",
    "consumers",
    "reported",
    "restored",
    "balance_saw",
    "sustained",
    "merged_into",
    "source",
    "updated_at",
]
METER_COLUMNS = ["outage_id", "meter", "role", "down_at", "up_at", "updated_at"]
UNITS = ("district", "region", "republic")
SILENCE_WINDOW = 1800.0
"""Meters that fall silent together were last heard within this (two push intervals):
each pushes only every quarter hour."""
LIST_KEYS = (
    "outage_id", "node_id", "level", "region", "district", "started_at", "ended_at",
    "consumers", "reported", "restored", "balance_saw", "sustained", "name",
)  # fmt: skip


class OutageError(HeadendError):
    """An outage request that cannot be answered as asked."""


@dataclass
class Cut:
    """One meter's interruption."""

    meter: str
    role: str
    down: int
    up: int = 0  # 0: not back yet
    source: str = "events"  # or "silence": last heard, heard again


@dataclass
class Outage:
    outage_id: str
    node_id: str
    level: str
    region: str
    district: str
    started_at: int
    ended_at: int
    consumers: int
    reported: int
    restored: int
    balance_saw: int
    sustained: int
    merged_into: str = ""
    cuts: list[Cut] = field(default_factory=list)

    @property
    def source(self) -> str:
        return "events" if any(c.source == "events" for c in self.cuts) else "silence"

    def public(self, now: float) -> dict[str, Any]:
        d = asdict(self)
        d.pop("cuts")
        d["minutes"] = round(((self.ended_at or now) - self.started_at) / 60, 1)
        d["ongoing"] = not self.ended_at
        return d


@dataclass
class Grid:
    """What a pass needs of the grid and the meters."""

    nodes: dict[str, tuple[str, str, str]]  # node → (parent, level, region)
    meters: dict[str, tuple[str, str]]  # serial → (node, role) (electricity)
    consumers: dict[str, int]  # node → consumer meters at it
    at_node: dict[str, int]  # node → electricity meters at it
    balances: dict[str, int]  # node → balance meters at it

    def above(self, node: str, level: str) -> str:
        return gridtree.above(self.nodes, node, level)

    def children(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = defaultdict(list)
        for n, (parent, _, _) in self.nodes.items():
            out[parent].append(n)
        return out


@dataclass
class ScanReport:
    events: int = 0
    outages: int = 0
    ongoing: int = 0
    feeders: int = 0
    single_meter: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _dt(t: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(t, dt.UTC)


def cuts_of(events: Iterable[tuple[str, int, str]], roles: dict[str, str]) -> list[Cut]:
    """Each meter's interruptions from its power events in time order (a repeated
    power-down keeps the first; a power-up without a power-down before it in the
    window is the end of something older, and is left alone)."""
    out: list[Cut] = []
    open_: dict[str, Cut] = {}
    for meter, ts, name in events:
        if name == DOWN:
            if meter not in open_:
                c = Cut(meter, roles.get(meter, "consumer"), ts)
                open_[meter] = c
                out.append(c)
        elif name == UP:
            c2 = open_.pop(meter, None)
            if c2 is not None:
                c2.up = ts
    return out


def group(cuts: list[Cut], window: float) -> list[list[Cut]]:
    """Interruptions that began within `window` of the first of their group."""
    groups: list[list[Cut]] = []
    for c in sorted(cuts, key=lambda c: (c.down, c.meter)):
        if groups and c.down - groups[-1][0].down <= window:
            groups[-1].append(c)
        else:
            groups.append([c])
    return groups


class Outages:
    """The node's outages (store queries; run in the store process's executor)."""

    def __init__(
        self, store: SqlAccess, db: str, cfg: OutagesConfig, owner: Ownership, clock: Clock
    ) -> None:
        self.store = store
        self.db = db
        self.cfg = cfg
        self.owner = owner
        self.clock = clock

    def _grid(self) -> Grid:
        nodes = gridtree.tree(self.store.query(gridtree.tree_sql(self.db))[1])
        _, rows = self.store.query(
            f"SELECT serial, argMax(node_id, updated_at), argMax(role, updated_at) "
            f"FROM {self.db}.meters GROUP BY serial "
            f"HAVING argMax(kind, updated_at) = 'electricity' "
            f"AND {self.owner.sql('argMax(region, updated_at)')}"
        )
        meters = {r[0]: (r[1], r[2]) for r in rows}
        consumers: dict[str, int] = defaultdict(int)
        at_node: dict[str, int] = defaultdict(int)
        balances: dict[str, int] = defaultdict(int)
        for node, role in meters.values():
            at_node[node] += 1
            if role == "consumer":
                consumers[node] += 1
            elif role == "balance":
                balances[node] += 1
        return Grid(nodes, meters, consumers, at_node, balances)

    def _stored(self, since: int) -> dict[str, list[tuple[str, int]]]:
        """Outages stored from `since` on: node → [(id, start)]."""
        _, rows = self.store.query(
            f"SELECT outage_id, node_id, toInt64(started_at) FROM {self.db}.outages FINAL "
            f"WHERE started_at >= toDateTime({max(0, since)}) AND {self.owner.sql('region')}"
        )
        out: dict[str, list[tuple[str, int]]] = defaultdict(list)
        for oid, node, start in rows:
            out[node].append((oid, int(start)))
        return out

    def scan(self) -> ScanReport:
        t0 = time.monotonic()
        now = int(self.clock.now())
        cfg = self.cfg
        since = now - cfg.lookback
        _, rows = self.store.query(
            f"SELECT toInt64(min(started_at)) FROM {self.db}.outages FINAL "
            f"WHERE ended_at = toDateTime(0) AND merged_into = '' AND {self.owner.sql('region')}"
        )
        if rows and rows[0][0]:
            since = min(since, int(rows[0][0]) - int(cfg.group_window))
        _, events = self.store.query(
            f"SELECT meter, toInt64(ts), name FROM {self.db}.events "
            f"WHERE ts >= toDateTime({since}) AND name IN ('{DOWN}', '{UP}') "
            f"AND {self.owner.meters_sql(self.db, 'meter')} ORDER BY ts, meter"
        )
        grid = self._grid()
        report = ScanReport(events=len(events))
        roles = {m: r for m, (_, r) in grid.meters.items()}
        per_node: dict[str, list[Cut]] = defaultdict(list)
        cuts = cuts_of(((m, int(t), n) for m, t, n in events), roles)
        cuts += self._silences(roles, {c.meter for c in cuts})
        for c in cuts:
            node = grid.meters.get(c.meter, ("", ""))[0]
            if node:
                per_node[node].append(c)
        outages = self._transformers(grid, per_node, report)
        outages = self._feeders(grid, outages, per_node)
        self._write(outages, grid, since, now, report)
        report.seconds = time.monotonic() - t0
        return report

    def _silences(self, roles: dict[str, str], reporting: set[str]) -> list[Cut]:
        """Meters that report no power events and fell silent: each a cut from when
        it was last heard, to when it was heard again (0: not yet). A meter with power
        events in the window is left to them."""
        if self.cfg.silent_after <= 0:
            return []
        cut = time.time() - self.clock.real_seconds(self.cfg.silent_after)
        _, rows = self.store.query(
            f"SELECT meter, toInt64(max(last_received)) FROM {self.db}.meter_seen "
            f"WHERE {self.owner.meters_sql(self.db, 'meter')} GROUP BY meter "
            f"HAVING max(last_received) < toDateTime({int(cut)})"
        )
        out = [
            Cut(m, roles[m], int(self.clock.at(int(t))), 0, "silence")
            for m, t in rows
            if m in roles and m not in reporting
        ]
        silent = {c.meter for c in out}
        # Meters of open silence outages heard again: back when first heard after.
        _, rows = self.store.query(
            f"SELECT om.meter, toInt64(om.down_at) FROM {self.db}.outage_meters AS om FINAL "
            f"WHERE om.outage_id IN (SELECT outage_id FROM {self.db}.outages FINAL "
            f"WHERE source = 'silence' AND ended_at = toDateTime(0) AND merged_into = '' "
            f"AND {self.owner.sql('region')})"
        )
        back = {str(m): int(d) for m, d in rows if m not in silent and m not in reporting}
        if back:
            ms = sorted(back)
            after = [int(self.clock.real_at(back[m])) for m in ms]
            _, rows = self.store.query(
                f"SELECT meter, toInt64(min(received_at)) FROM {self.db}.readings "
                f"WHERE meter IN %(m)s AND received_at > toDateTime(%(t)s) "
                f"AND toInt64(received_at) > transform(meter, %(m)s, %(after)s, toInt64(0)) "
                f"GROUP BY meter",
                {"m": ms, "t": min(after), "after": after},
            )
            first = {str(m): int(t) for m, t in rows}
            for m, down in back.items():
                up = int(self.clock.at(first[m])) if m in first else 0
                if up > down and m in roles:
                    out.append(Cut(m, roles[m], down, up, "silence"))
        return out

    def _transformers(
        self, grid: Grid, per_node: dict[str, list[Cut]], report: ScanReport
    ) -> list[Outage]:
        out: list[Outage] = []
        wide = max(self.cfg.group_window, SILENCE_WINDOW)
        for node, cuts in per_node.items():
            heard = [c for c in cuts if c.source == "events"]
            quiet = [c for c in cuts if c.source != "events"]
            groups = group(heard, self.cfg.group_window) + group(quiet, wide)
            for g in groups:
                meters = {c.meter for c in g}
                if len(meters) < 2 or len(meters) < self.cfg.min_share * grid.at_node[node]:
                    report.single_meter += len(meters)
                    continue
                out.append(self._outage(grid, node, g, grid.consumers[node]))
        return out

    def _outage(self, grid: Grid, node: str, cuts: list[Cut], consumers: int) -> Outage:
        _, level, region = grid.nodes.get(node, ("", "", ""))
        reporters = [c for c in cuts if c.role == "consumer"] or cuts
        start = min(c.down for c in cuts)
        ended = 0 if any(not c.up for c in cuts) else max(c.up for c in cuts)
        saw = -1
        if grid.balances[node]:
            saw = int(any(c.role == "balance" and grid.meters[c.meter][0] == node for c in cuts))
        return Outage(
            outage_id="",
            node_id=node,
            level=level,
            region=region,
            district=grid.above(node, "district"),
            started_at=start,
            ended_at=ended,
            consumers=consumers,
            reported=len({c.meter for c in reporters if c.role == "consumer"}),
            restored=len({c.meter for c in reporters if c.role == "consumer" and c.up}),
            balance_saw=saw,
            sustained=0,
            cuts=list(cuts),
        )

    def _feeders(
        self, grid: Grid, outages: list[Outage], per_node: dict[str, list[Cut]]
    ) -> list[Outage]:
        """Transformer outages that are most of a feeder's at once become the feeder's."""
        children = grid.children()
        by_feeder: dict[str, list[Outage]] = defaultdict(list)
        for o in outages:
            parent = grid.nodes.get(o.node_id, ("", "", ""))[0]
            if grid.nodes.get(parent, ("", "", ""))[1] == "feeder":
                by_feeder[parent].append(o)
        out = list(outages)
        for feeder, members in by_feeder.items():
            transformers = [n for n in children[feeder] if grid.nodes[n][1] == "transformer"]
            members.sort(key=lambda o: o.started_at)
            clusters: list[list[Outage]] = []
            for o in members:
                if clusters and o.started_at - clusters[-1][0].started_at <= self.cfg.group_window:
                    clusters[-1].append(o)
                else:
                    clusters.append([o])
            for cl in clusters:
                if len(cl) < 2 or len(cl) < self.cfg.min_share * len(transformers):
                    continue
                start = min(o.started_at for o in cl)
                head = [
                    c
                    for c in per_node.get(feeder, [])
                    if abs(c.down - start) <= self.cfg.group_window
                ]
                cuts = [c for o in cl for c in o.cuts] + head
                f = self._outage(grid, feeder, cuts, sum(grid.consumers[t] for t in transformers))
                f.reported = sum(o.reported for o in cl)
                f.restored = sum(o.restored for o in cl)
                out.append(f)
                for o in cl:
                    o.merged_into = f"@{id(f)}"  # named when the feeder's has its id
        return out

    def _write(
        self, outages: list[Outage], grid: Grid, since: int, now: int, report: ScanReport
    ) -> None:
        stored = self._stored(since - int(self.cfg.group_window))
        taken: set[str] = set()
        for o in outages:
            for oid, start in stored.get(o.node_id, []):
                if oid not in taken and abs(start - o.started_at) <= self.cfg.group_window:
                    o.outage_id = oid
                    break
            else:
                o.outage_id = f"OUT-{o.node_id}-{o.started_at}"
            taken.add(o.outage_id)
            o.sustained = int((o.ended_at or now) - o.started_at >= self.cfg.sustained)
        ids = {f"@{id(o)}": o.outage_id for o in outages}
        for o in outages:
            if o.merged_into:
                o.merged_into = ids.get(o.merged_into, o.merged_into)
        stamp = _dt(time.time())
        rows, meter_rows = [], []
        for o in outages:
            rows.append(
                [
                    o.outage_id,
                    o.node_id,
                    o.level,
                    o.region,
                    o.district,
                    _dt(o.started_at),
                    _dt(o.ended_at),
                    o.consumers,
                    o.reported,
                    o.restored,
                    o.balance_saw,
                    o.sustained,
                    o.merged_into,
                    o.source,
                    stamp,
                ]
            )
            for c in o.cuts:
                meter_rows.append([o.outage_id, c.meter, c.role, _dt(c.down), _dt(c.up), stamp])
            if not o.merged_into:
                report.outages += 1
                report.ongoing += not o.ended_at
                report.feeders += o.level == "feeder"
        if rows:
            self.store.insert_rows("outages", COLUMNS, rows)
            self.store.insert_rows("outage_meters", METER_COLUMNS, meter_rows)

    # -- reading -----------------------------------------------------------------------

    def _rows(self, conds: list[str], params: dict[str, Any], limit: int) -> list[dict[str, Any]]:
        _, rows = self.store.query(
            f"SELECT o.outage_id, o.node_id, o.level, o.region, o.district, "
            f"toInt64(o.started_at), toInt64(o.ended_at), o.consumers, o.reported, o.restored, "
            f"o.balance_saw, o.sustained, g.name, g.lat, g.lon FROM "
            f"(SELECT * FROM {self.db}.outages FINAL WHERE {' AND '.join(conds)}) AS o "
            f"LEFT JOIN (SELECT node_id, argMax(lat, updated_at) AS lat, "
            f"argMax(lon, updated_at) AS lon, argMax(name, updated_at) AS name "
            f"FROM {self.db}.grid_nodes GROUP BY node_id) AS g ON g.node_id = o.node_id "
            f"ORDER BY o.ended_at != toDateTime(0), o.started_at DESC "
            f"LIMIT {max(1, min(int(limit), 10_000))}",
            params,
        )
        now = self.clock.now()
        out = []
        for r in rows:
            d = dict(zip(LIST_KEYS, r[:13], strict=True))
            d["ongoing"] = not d["ended_at"]
            d["minutes"] = round(((d["ended_at"] or now) - d["started_at"]) / 60, 1)
            d["lat"], d["lon"] = (None if x is None or math.isnan(x) else float(x) for x in r[13:])
            out.append(d)
        return out

    def listing(
        self, who: Principal, *, start: int, end: int, region: str = "", limit: int = 500
    ) -> list[dict[str, Any]]:
        """Outages (not merged into a feeder's) that overlap [start, end), open ones
        first, in `who`'s regions."""
        conds = [
            "merged_into = ''",
            f"started_at < toDateTime({int(end)})",
            f"(ended_at = toDateTime(0) OR ended_at >= toDateTime({int(start)}))",
        ]
        scope = who.region_filter()
        params: dict[str, Any] = {}
        if scope is not None:
            conds.append("region IN {regions:Array(String)}")
            params["regions"] = list(scope)
        if region:
            conds.append("region = {region:String}")
            params["region"] = region
        return self._rows(conds, params, limit)

    def show(self, who: Principal, outage_id: str) -> dict[str, Any]:
        """One outage with its meters, when each went down and came back."""
        found = self._rows(["outage_id = {id:String}"], {"id": outage_id}, 1)
        if not found:
            raise OutageError(f"no outage {outage_id!r}")
        head = found[0]
        who.require_region(head["region"], f"outage {outage_id}")
        _, meters = self.store.query(
            f"SELECT meter, role, toInt64(down_at), toInt64(up_at) FROM {self.db}.outage_meters "
            f"FINAL WHERE outage_id IN (SELECT outage_id FROM {self.db}.outages FINAL "
            f"WHERE outage_id = {{id:String}} OR merged_into = {{id:String}}) ORDER BY meter",
            {"id": outage_id},
        )
        seen: dict[str, dict[str, Any]] = {}
        for m, r, d, u in meters:
            seen.setdefault(m, {"meter": m, "role": r, "down_at": d, "up_at": u or None})
        head["meters"] = list(seen.values())
        head["not_restored"] = sorted(m for m, x in seen.items() if not x["up_at"])
        return head

    def indices(self, who: Principal, by: str, month: str) -> list[dict[str, Any]]:
        """SAIDI (minutes), SAIFI and MAIFI per unit (`by`: district, region, republic)
        for a local month (YYYY-MM): customer minutes and interruptions of the month's
        sustained outages (momentary for MAIFI) over the consumers the unit serves."""
        if by not in UNITS:
            raise OutageError(f"by is one of {', '.join(UNITS)}")
        a, b = month_span(month)
        grid = self._grid()
        served: dict[str, int] = defaultdict(int)
        scope = who.region_filter()
        for node, n in grid.consumers.items():
            region = grid.nodes.get(node, ("", "", ""))[2]
            if scope is not None and region not in scope:
                continue
            served[self._unit(grid, node, by)] += n
        now = min(self.clock.now(), b)
        _, rows = self.store.query(
            f"SELECT node_id, toInt64(started_at), toInt64(ended_at), consumers, sustained "
            f"FROM {self.db}.outages FINAL WHERE merged_into = '' "
            f"AND started_at >= toDateTime({a}) AND started_at < toDateTime({b})"
        )
        cmi: dict[str, float] = defaultdict(float)
        ci: dict[str, int] = defaultdict(int)
        mi: dict[str, int] = defaultdict(int)
        count: dict[str, int] = defaultdict(int)
        for node, start, end, consumers, sustained in rows:
            unit = self._unit(grid, node, by)
            if unit not in served:
                continue
            if sustained:
                cmi[unit] += consumers * (min(end or now, b) - start) / 60
                ci[unit] += consumers
                count[unit] += 1
            else:
                mi[unit] += consumers
        return [
            {
                "unit": u,
                "month": month,
                "consumers": n,
                "outages": count[u],
                "customer_minutes": round(cmi[u], 1),
                "saidi_min": round(cmi[u] / n, 3),
                "saifi": round(ci[u] / n, 4),
                "maifi": round(mi[u] / n, 4),
            }
            for u, n in sorted(served.items())
            if n
        ]

    @staticmethod
    def _unit(grid: Grid, node: str, by: str) -> str:
        if by == "republic":
            return "republic"
        if by == "region":
            return grid.nodes.get(node, ("", "", ""))[2] or "national"
        return grid.above(node, "district") or "(no district)"
