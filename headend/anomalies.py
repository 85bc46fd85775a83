"""Suspicious consumers under lossy nodes, each with the evidence that flagged it.

`detect(store, start, end)` looks at the transformers and gas segments (`LEVELS`) whose
balance over [start, end) shows a loss of at least `min_loss_pct` with enough
completeness to trust it, and at every consumer meter under them, by its commodity's
flow register (active energy import; gas volume):

- `low_vs_peers`: consumed less than `peer_ratio` of the median of the other consumers
  of its transformer (a bypass shows as almost nothing);
- `drop_vs_history`: consumed less than `history_ratio` of what it did over the window
  before (when it has such a window);
- `tamper_events`: a magnetic field (the meter's own alarm), with any cover openings;
  under any node, lossy or not (a magnet has no innocent cause);
- `cover_opened`: cover openings alone: weak, as the utility's own crews open covers
  on inspections and replacements, where a magnet has no innocent cause;
- `zero_or_flat`: nothing at all, or the same every hour, while its peers vary;
- `reverse_energy`: a consumer whose export register runs;
- `consuming_while_off`: consumption in hours its disconnector (gas: valve) reported
  off;
- `loss_follows`: the node's loss, quarter hour by quarter hour, follows what the
  meter registers, well above the technical share every meter leaves
  (`headend.residual`; `FOLLOWS_T` standard errors): the meter registers only part of
  what it takes; `loss_follows_weakly` at `WEAK_T`;
- `below_peers`: consumed less than `weak_peer_ratio` of its peers' median (and not
  as little as `low_vs_peers` asks): weak alone, as honest meters sit there too.

Each rule adds its weight to a score; a meter with a score of at least 2 is a suspect.
Findings go to `anomaly_findings` (read through the `anomalies` view), one row per
meter and window, with the evidence as JSON. Nothing here is an accusation: a finding
says what to check on site and why.
"""

from __future__ import annotations

import datetime as dt
import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from headend import balance, replacements, residual
from headend.clock import Clock
from headend.levels import CONSUMER_LEVELS
from headend.ownership import Ownership

TAMPER_EVENTS = (
    "terminal-cover-opened",
    "meter-cover-opened",
    "magnetic-field-detected",
)
COVERS = ("terminal-cover-opened", "meter-cover-opened")
DISCONNECTOR_STATE = "0.0.96.3.10.255"
VALVE_STATE = "0.0.24.4.0.255"
# Network levels whose consumers are examined: the last link before them.
LEVELS = CONSUMER_LEVELS
WEIGHTS = {
    "low_vs_peers": 2,
    "drop_vs_history": 1,
    "tamper_events": 2,
    "cover_opened": 1,
    "zero_or_flat": 1,
    "reverse_energy": 2,
    "consuming_while_off": 3,
    "loss_follows": 2,
    "loss_follows_weakly": 1,
    "below_peers": 1,
}
# Standard errors by which a meter's share of the loss must stand above the technical
# share, and by how much (a meter registering under about 5/6 of what it takes).
FOLLOWS_T = 4.5
WEAK_T = 3.0
MIN_EXCESS = 0.2
# Days of quarter hours the loss is fitted over, at least (the window, if longer).
FIT_DAYS = 7
SUSPECT_SCORE = 2
# Hours on supply and switched on a meter needs in the window to be compared at all.
MIN_HOURS = 6
COLUMNS = [
    "window_start",
    "window_end",
    "meter",
    "node_id",
    "score",
    "rules",
    "evidence",
    "node_loss_pct",
    "computed_at",
]


@dataclass
class Finding:
    meter: str
    node_id: str
    node_loss_pct: float
    rules: list[str] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def score(self) -> int:
        return sum(WEIGHTS[r] for r in self.rules)

    def add(self, rule: str, **evidence: Any) -> None:
        self.rules.append(rule)
        self.evidence[rule] = evidence


@dataclass
class Detection:
    start: int
    end: int
    lossy_nodes: dict[str, float]
    consumers_checked: int
    findings: list[Finding]

    def suspects(self) -> list[Finding]:
        return [f for f in self.findings if f.score >= SUSPECT_SCORE]

    def summary(self) -> dict[str, Any]:
        return {
            "lossy_nodes": len(self.lossy_nodes),
            "consumers_examined": self.consumers_checked,
            "findings": len(self.findings),
            "suspects": len(self.suspects()),
        }


def detect(
    store: Any,
    start: int,
    end: int,
    *,
    min_loss_pct: float = 3.0,
    min_completeness: float = 0.8,
    peer_ratio: float = 0.4,
    weak_peer_ratio: float = 0.7,
    history_ratio: float = 0.5,
    write: bool = True,
    owner: Ownership | None = None,
    clock: Clock | None = None,
) -> Detection:
    """Finds suspects for [start, end) (Unix seconds) under the transformers and gas
    segments `owner` owns (all without it); balances must be computed."""
    db = store.db
    mine = "1" if owner is None else owner.nodes_sql(db)
    _, nodes = store.query(
        "SELECT node_id, sum(loss) / sum(input) * 100 AS pct, "
        "sum(measured) / greatest(sum(expected), 1) AS completeness "
        f"FROM {db}.balances FINAL WHERE level IN %(levels)s AND has_input = 1 AND {mine} "
        "AND period_start >= toDateTime(%(a)s) AND period_start < toDateTime(%(b)s) "
        "GROUP BY node_id HAVING sum(input) > 0",
        {"a": start, "b": end, "levels": list(LEVELS)},
    )
    lossy = {n: float(p) for n, p, c in nodes if p >= min_loss_pct and c >= min_completeness}
    loss_pct = {n: float(p) for n, p, _ in nodes}
    # The consumers' tamper alarms of the window, once: evidence under lossy nodes, and
    # a magnet's wherever it is.
    alarms = _tamper_events(store, (start, end), mine)
    findings, checked = (
        _findings(
            store,
            lossy,
            (start, end),
            alarms,
            peer_ratio=peer_ratio,
            weak_peer_ratio=weak_peer_ratio,
            history_ratio=history_ratio,
            clock=clock,
        )
        if lossy
        else ([], 0)
    )
    # A magnet is evidence wherever it is: one thief among a gas segment's two hundred
    # meters stays under the loss gate, its alarm does not.
    findings += _magnets_elsewhere(alarms, lossy, loss_pct)
    det = Detection(start, end, lossy, checked, findings)
    if write:
        _write(store, det)
    return det


def _findings(
    store: Any,
    lossy: dict[str, float],
    window: tuple[int, int],
    alarms: dict[str, tuple[str, dict[str, int]]],
    *,
    peer_ratio: float,
    weak_peer_ratio: float,
    history_ratio: float,
    clock: Clock | None = None,
) -> tuple[list[Finding], int]:
    """The findings, and how many consumers were examined."""
    db = store.db
    start, end = window
    span = end - start
    # Each meter's flow register: a meter has one of them (electricity or gas).
    imp = [balance.obis_int(o) for o in balance.FLOW.values()]
    exp = balance.obis_int(balance.ELECTRICITY_EXPORT)
    _, members = store.query(
        f"SELECT serial, node_id, kind FROM {db}.meters FINAL "
        "WHERE role = 'consumer' AND node_id IN %(nodes)s",
        {"nodes": sorted(lossy)},
    )
    # Evidence in the meter's unit: kWh, or m³ for gas.
    unit = {m: "m3" if k == "gas" else "kwh" for m, _, k in members}
    members = [(m, n) for m, n, _ in members]
    # Hours a meter was switched off by us or had no supply say nothing of theft: they
    # are left out of every rule that compares how much it consumed.
    off = unavailable(store, [m for m, _ in members], dict(members), start - span, end, clock=clock)
    pairs = sorted((m, h) for m, hours in off.items() for h in hours)
    # (Reverse energy stays evidence in them.)
    skip = (
        "AND NOT (obis IN %(imp)s AND (meter, toInt64(interval_start)) IN %(off)s) "
        if pairs
        else ""
    )
    _, rows = store.query(
        "SELECT c.meter, m.node_id, "
        "sumIf(c.value, c.obis IN %(imp)s AND c.interval_start >= toDateTime(%(a)s)) AS now_, "
        "sumIf(c.value, c.obis IN %(imp)s AND c.interval_start < toDateTime(%(a)s)) AS before_, "
        "countIf(c.obis IN %(imp)s AND c.interval_start < toDateTime(%(a)s)) AS before_hours, "
        "countIf(c.obis IN %(imp)s AND c.interval_start >= toDateTime(%(a)s)) AS hours, "
        "stddevPopIf(c.value, c.obis IN %(imp)s AND c.interval_start >= toDateTime(%(a)s)) "
        "AS sd, "
        "sumIf(c.value, c.obis = %(exp)s AND c.interval_start >= toDateTime(%(a)s)) AS export_ "
        f"FROM (SELECT meter, obis, interval_start, value FROM {db}.consumption FINAL "
        "      WHERE (obis IN %(imp)s OR obis = %(exp)s) AND quality != 'invalid' "
        "      AND interval_start >= toDateTime(%(before)s) "
        f"      AND interval_start < toDateTime(%(b)s) {skip}) AS c "
        f"INNER JOIN (SELECT serial, node_id FROM {db}.meters FINAL "
        "            WHERE role = 'consumer' AND node_id IN %(nodes)s) AS m "
        "ON c.meter = m.serial GROUP BY c.meter, m.node_id",
        {
            "imp": imp,
            "exp": exp,
            "a": start,
            "b": end,
            "before": start - span,
            "nodes": sorted(lossy),
            "off": pairs,
        },
    )
    meters = [r[0] for r in rows]
    tamper = {m: alarms[m][1] for m in meters if m in alarms}
    # The fit reaches back FIT_DAYS when the window is shorter: a meter's share of the
    # loss shows more surely over more slots.
    follows, _ = residual.fit(
        store,
        sorted(lossy),
        min(start, end - FIT_DAYS * 86_400),
        end,
        min_excess=MIN_EXCESS,
        min_t=FOLLOWS_T,
    )
    while_off = _consuming_while_off(store, meters, start, end)
    by_node: dict[str, list[tuple[Any, ...]]] = {}
    for r in rows:
        by_node.setdefault(r[1], []).append(r)
    findings: list[Finding] = []
    for node, members_ in by_node.items():
        # Compared per hour on supply and switched on: a debtor switched off half the
        # window is judged on the other half.
        rates = {r[0]: float(r[2]) / r[5] for r in members_ if r[5] >= MIN_HOURS}
        for meter, _, now_, before, before_hours, hours, sd, export in members_:
            f = Finding(meter, node, round(lossy[node], 2))
            excluded = sum(1 for h in off.get(meter, ()) if h >= start)
            peers = [v for m, v in rates.items() if m != meter]
            median = statistics.median(peers) if peers else 0.0
            rate = float(now_) / hours if hours else 0.0
            u = unit.get(meter, "kwh")
            if hours >= MIN_HOURS and median > 0 and rate < peer_ratio * median:
                f.add(
                    "low_vs_peers",
                    **{f"{u}_per_h": round(rate, 4), f"peer_median_{u}_per_h": round(median, 4)},
                    hours=hours,
                    hours_excluded=excluded,
                )
            elif hours >= MIN_HOURS and median > 0 and rate < weak_peer_ratio * median:
                f.add(
                    "below_peers",
                    **{f"{u}_per_h": round(rate, 4), f"peer_median_{u}_per_h": round(median, 4)},
                )
            full_history = before_hours >= 0.8 * hours >= MIN_HOURS
            before_rate = float(before) / before_hours if before_hours else 0.0
            if full_history and before_rate > 0 and rate < history_ratio * before_rate:
                f.add(
                    "drop_vs_history",
                    **{f"{u}_per_h": round(rate, 4), f"before_{u}_per_h": round(before_rate, 4)},
                )
            if meter in tamper:
                _alarms(f, tamper[meter])
            if hours >= 12 and (now_ <= 1e-6 or sd <= 1e-6) and median > 0:
                f.add("zero_or_flat", **{u: round(now_, 3)}, hourly_sd=round(sd, 6), hours=hours)
            if export > 0.01:
                f.add("reverse_energy", export_kwh=round(export, 3))
            if meter in follows:
                _loss_follows(f, follows[meter])
            if meter in while_off:
                w = while_off[meter]
                f.add("consuming_while_off", hours=w["hours"], **{u: w["kwh"]})
            if f.rules:
                findings.append(f)
    findings.sort(key=lambda f: (-f.score, f.node_id, f.meter))
    return findings, len(rows)


def _magnets_elsewhere(
    alarms: dict[str, tuple[str, dict[str, int]]],
    lossy: dict[str, float],
    loss_pct: dict[str, float],
) -> list[Finding]:
    """Consumers of nodes that are not lossy (or have no balance) whose own alarms
    report a magnetic field: `tamper_events` findings, with any cover openings beside."""
    out = []
    for meter, (node, seen) in sorted(alarms.items()):
        if node not in lossy and any(name not in COVERS for name in seen):
            f = Finding(meter, node, round(loss_pct.get(node, 0.0), 2))
            f.add("tamper_events", events=seen)
            out.append(f)
    return out


def _alarms(f: Finding, events: dict[str, int]) -> None:
    """A magnet is theft's; cover openings alone may be our own crews'."""
    magnet = any(name not in COVERS for name in events)
    f.add("tamper_events" if magnet else "cover_opened", events=events)


def _loss_follows(f: Finding, share: residual.Share) -> None:
    """The loss follows the meter well above the technical share: strongly at
    FOLLOWS_T standard errors, weakly at WEAK_T."""
    if share.excess >= MIN_EXCESS and share.t >= WEAK_T:
        f.add(
            "loss_follows" if share.t >= FOLLOWS_T else "loss_follows_weakly",
            registered_share=share.registered_share,
            excess=share.excess,
            technical=share.technical,
            t=share.t,
            slots=share.slots,
        )


def _write(store: Any, det: Detection) -> None:
    start, end, findings = det.start, det.end, det.findings
    # A rerun replaces the window's findings, including those that no longer hold.
    store.delete(
        "anomaly_findings",
        {
            "window_start": dt.datetime.fromtimestamp(start, dt.UTC),
            "window_end": dt.datetime.fromtimestamp(end, dt.UTC),
        },
    )
    if findings:
        now = dt.datetime.now(dt.UTC)
        a, b = (dt.datetime.fromtimestamp(t, dt.UTC) for t in (start, end))
        store.insert_rows(
            "anomaly_findings",
            COLUMNS,
            [
                [a, b, f.meter, f.node_id, f.score, f.rules, json.dumps(f.evidence), *tail]
                for f in findings
                for tail in [(f.node_loss_pct, now)]
            ],
        )


def _tamper_events(
    store: Any, window: tuple[int, int], mine: str
) -> dict[str, tuple[str, dict[str, int]]]:
    """Each consumer (of the nodes `mine` keeps) with tamper alarms in the window: its
    node and the alarms by name."""
    db = store.db
    start, end = window
    _, rows = store.query(
        f"SELECT e.meter, m.node_id, e.name, count() FROM {db}.events AS e "
        f"INNER JOIN (SELECT serial, node_id FROM {db}.meters FINAL "
        f"            WHERE role = 'consumer' AND {mine}) AS m ON e.meter = m.serial "
        "WHERE e.name IN %(names)s AND e.ts >= toDateTime(%(a)s) AND e.ts < toDateTime(%(b)s) "
        "GROUP BY e.meter, m.node_id, e.name",
        {"names": list(TAMPER_EVENTS), "a": start, "b": end},
    )
    out: dict[str, tuple[str, dict[str, int]]] = {}
    for meter, node, name, n in rows:
        out.setdefault(meter, (node, {}))[1][name] = int(n)
    return out


def _consuming_while_off(
    store: Any, meters: list[str], start: int, end: int
) -> dict[str, dict[str, Any]]:
    """Hours where the meter's disconnector (gas: valve) reported off all through the
    hour and the hour before (not the hour it was switched in, which holds what came
    before the switch) and it still registered more than 0.05 kWh (m³)."""
    if not meters:
        return {}
    db = store.db
    _, rows = store.query(
        f"SELECT meter, toInt64(toStartOfHour(ts)) AS h FROM {db}.readings "
        "WHERE meter IN %(m)s AND obis IN %(state)s "
        "AND ts >= toDateTime(%(a)s) AND ts < toDateTime(%(b)s) "
        "GROUP BY meter, h HAVING max(value) = 0",
        {
            "m": meters,
            "state": _states(),
            "a": start - 3600,
            "b": end,
        },
    )
    off = {(m, int(h)) for m, h in rows}
    whole = sorted({m for m, h in off if (m, h - 3600) in off})
    if not whole:
        return {}
    _, rows = store.query(
        f"SELECT meter, toInt64(interval_start), value FROM {db}.consumption FINAL "
        "WHERE meter IN %(m)s AND obis IN %(imp)s AND quality != 'invalid' AND value > 0.05 "
        "AND interval_start >= toDateTime(%(a)s) AND interval_start < toDateTime(%(b)s)",
        {
            "m": whole,
            "imp": [balance.obis_int(o) for o in balance.FLOW.values()],
            "a": start,
            "b": end,
        },
    )
    out: dict[str, dict[str, Any]] = {}
    for meter, h, v in rows:
        if (meter, int(h)) in off and (meter, int(h) - 3600) in off:
            d = out.setdefault(meter, {"hours": 0, "kwh": 0.0})
            d["hours"] += 1
            d["kwh"] = round(d["kwh"] + float(v), 3)
    return out


def _states() -> list[int]:
    """The supply switches' registers: the disconnector and the gas valve (0: off)."""
    return [balance.obis_int(DISCONNECTOR_STATE), balance.obis_int(VALVE_STATE)]


def unavailable(
    store: Any,
    meters: list[str],
    nodes: dict[str, str],
    start: int,
    end: int,
    *,
    clock: Clock | None = None,
) -> dict[str, set[int]]:
    """The hours (their starts, Unix seconds) in [start, end) each meter was switched
    off by the head-end or had no supply: its disconnector reported off, a
    disconnection of ours was in force, or an outage covered it (its own power-down,
    or an outage of its transformer or the feeder above)."""
    if not meters:
        return {}
    db = store.db
    out: dict[str, set[int]] = {}

    def mark(meter: str, a: int, b: int) -> None:
        h = max(a, start) // 3600 * 3600
        while h < min(b, end):
            out.setdefault(meter, set()).add(h)
            h += 3600

    _, rows = store.query(
        f"SELECT meter, toInt64(toStartOfHour(ts)) FROM {db}.readings "
        "WHERE meter IN %(m)s AND obis IN %(state)s AND value = 0 "
        "AND ts >= toDateTime(%(a)s) AND ts < toDateTime(%(b)s) GROUP BY 1, 2",
        {"m": meters, "state": _states(), "a": start, "b": end},
    )
    for meter, h in rows:
        mark(meter, int(h), int(h) + 1)
    # Our switching: from each done disconnection to the next done reconnection. Commands
    # are stamped with the machine's time; the data with the store's clock (`clock`,
    # the demo's runs fast).
    at = clock.at if clock is not None else float
    real = clock.real_at if clock is not None else float
    _, rows = store.query(
        f"SELECT serial, kind, toInt64(max(ts)) AS t FROM {db}.commands "
        "WHERE serial IN %(m)s AND kind IN ('disconnect', 'reconnect') AND state = 'done' "
        "AND requested_at >= toDateTime64(%(since)s, 3) AND requested_at < toDateTime64(%(b)s, 3) "
        "GROUP BY command_id, serial, kind ORDER BY serial, t",
        {"m": meters, "since": int(real(start - 31 * 86_400)), "b": int(real(end)) + 1},
    )
    off_since: dict[str, int] = {}
    for serial, kind, t in rows:
        if kind == "disconnect":
            off_since.setdefault(serial, int(at(t)))
        elif serial in off_since:
            mark(serial, off_since.pop(serial), int(at(t)))
    for serial, t in off_since.items():
        mark(serial, t, end)
    _outage_hours(store, meters, nodes, (start, end), mark)
    # A replaced meter after it was taken away, its successor before it was put in.
    for meter, (since, until) in replacements.service_hours(store, db, meters).items():
        if since:
            mark(meter, start, since)
        if until:
            mark(meter, until, end)
    return out


def _outage_hours(
    store: Any,
    meters: list[str],
    nodes: dict[str, str],
    window: tuple[int, int],
    mark: Callable[[str, int, int], None],
) -> None:
    """Outages over the window: the meters' own interruptions, and those of their
    transformer or the feeder above it."""
    db = store.db
    start, end = window
    _, rows = store.query(
        f"SELECT meter, toInt64(down_at), toInt64(up_at) FROM {db}.outage_meters FINAL "
        "WHERE meter IN %(m)s AND down_at < toDateTime(%(b)s) "
        "AND (up_at = toDateTime(0) OR up_at >= toDateTime(%(a)s))",
        {"m": meters, "a": start, "b": end},
    )
    for meter, down, up in rows:
        mark(meter, int(down), int(up) or end)
    _, parents = store.query(
        f"SELECT node_id, argMax(parent_id, updated_at) FROM {db}.grid_nodes "
        "WHERE node_id IN %(n)s GROUP BY node_id",
        {"n": sorted(set(nodes.values()))},
    )
    above = dict(parents)
    _, rows = store.query(
        f"SELECT node_id, toInt64(started_at), toInt64(ended_at) FROM {db}.outages FINAL "
        "WHERE merged_into = '' AND node_id IN %(n)s AND started_at < toDateTime(%(b)s) "
        "AND (ended_at = toDateTime(0) OR ended_at >= toDateTime(%(a)s))",
        {"n": sorted(set(nodes.values()) | set(above.values())), "a": start, "b": end},
    )
    spans: dict[str, list[tuple[int, int]]] = {}
    for node, a, b in rows:
        spans.setdefault(node, []).append((int(a), int(b) or end))
    for meter, node in nodes.items():
        for a, b in spans.get(node, []) + spans.get(above.get(node, ""), []):
            mark(meter, a, b)
