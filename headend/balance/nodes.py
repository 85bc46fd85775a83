"""The network as a tree of nodes and their hourly balances: sums from the Rust pass
or from `consumption`, what other owners' nodes pass up, written bottom-up."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from headend import codec
from headend.balance.common import BALANCE_COLUMNS, COUNTED, HOUR, PREFER, RawStore, _obis_ints
from headend.levels import NETWORK_LEVELS
from headend.ownership import Ownership
from headend.store import native

log = logging.getLogger("headend.balance")


@dataclass
class _Node:
    node_id: str
    parent: str
    level: str
    commodity: str
    admin_unit: str
    children: list[str] = field(default_factory=list)
    balance_meters: int = 0
    consumers: int = 0
    owned: bool = True  # this node computes its balance (else its owner does)


def _network(store: RawStore, owner: Ownership | None = None) -> dict[str, _Node]:
    """Network nodes, each with its nearest network ancestor as parent ('' for none).
    The top network nodes of a commodity hang under its generation node when there is
    exactly one (the producer feeds the backbone). With `owner`, the nodes of regions
    it does not own are marked (their balances are their owner's)."""
    db = store.db
    _, rows = store.query(
        f"SELECT node_id, parent_id, level, commodity, admin_unit, region "
        f"FROM {db}.grid_nodes FINAL"
    )
    parent_of = {r[0]: r[1] for r in rows}
    nodes = {
        r[0]: _Node(r[0], "", r[2], r[3], r[4], owned=owner is None or owner.owns(r[5]))
        for r in rows
        if r[2] in NETWORK_LEVELS
    }
    for n in nodes.values():
        p, seen = parent_of.get(n.node_id, ""), 0
        while p and p not in nodes and seen < 64:
            p, seen = parent_of.get(p, ""), seen + 1
        n.parent = p if p in nodes else ""
    gens = [n for n in nodes.values() if n.level == "generation"]
    for commodity in {n.commodity for n in nodes.values()}:
        g = [n for n in gens if n.commodity in (commodity, "any")]
        if len(g) == 1:
            for n in nodes.values():
                if n.parent == "" and n.level != "generation" and n.commodity == commodity:
                    n.parent = g[0].node_id
    for n in nodes.values():
        if n.parent:
            nodes[n.parent].children.append(n.node_id)
    # A meter taken away and its successor are one place (headend.replacements).
    _, counts = store.query(
        f"SELECT node_id, role, count() FROM {db}.meters FINAL "
        f"WHERE serial NOT IN (SELECT old_serial FROM {db}.meter_replacements) GROUP BY 1, 2"
    )
    for node_id, role, k in counts:
        if node_id in nodes:
            if role == "balance":
                nodes[node_id].balance_meters = int(k)
            else:
                nodes[node_id].consumers = int(k)
    return nodes


@dataclass
class _NodeHours:
    """Per network node, the hours' consumption below it (`cons`, and how many of its
    meter-hours were measured) and through its balance meters (`inp`)."""

    cons: dict[str, np.ndarray] = field(default_factory=dict)
    cons_m: dict[str, np.ndarray] = field(default_factory=dict)
    inp: dict[str, np.ndarray] = field(default_factory=dict)
    inp_m: dict[str, np.ndarray] = field(default_factory=dict)
    # Of the measured meter-hours, those on a preferred (corrected) register.
    cons_c: dict[str, np.ndarray] = field(default_factory=dict)
    inp_c: dict[str, np.ndarray] = field(default_factory=dict)
    # Nodes of other owners under this node's: (flow, measured, expected) per hour.
    foreign: dict[str, tuple[np.ndarray, np.ndarray, int]] = field(default_factory=dict)


def _balances(
    store: RawStore,
    start: int,
    end: int,
    nodes: dict[str, _Node],
    sums: codec.NodeSums | None,
    *,
    owner: Ownership | None = None,
) -> int:
    hours = (end - start) // HOUR
    if sums is None:
        got = _sum_from_table(store, start, end, nodes, owner)
    else:
        got = _NodeHours()
        values, measured, preferred = sums.arrays()
        v = np.frombuffer(values, dtype="<f8").reshape(len(nodes), 2, hours)
        m = np.frombuffer(measured, dtype="<u4").reshape(len(nodes), 2, hours).astype(np.float64)
        c = np.frombuffer(preferred, dtype="<u4").reshape(len(nodes), 2, hours).astype(np.float64)
        for k, node_id in enumerate(nodes):
            got.cons[node_id], got.inp[node_id] = v[k, 0], v[k, 1]
            got.cons_m[node_id], got.inp_m[node_id] = m[k, 0], m[k, 1]
            got.cons_c[node_id], got.inp_c[node_id] = c[k, 0], c[k, 1]
        if sums.unplaced:
            log.info("%d meter register(s) with readings belong to no network node", sums.unplaced)
    if any(not n.owned for n in nodes.values()):
        got.foreign = _foreign_flows(store, start, end, nodes)
    return _write_balances(store, start, end, nodes, got)


def _foreign_flows(
    store: RawStore, start: int, end: int, nodes: dict[str, _Node]
) -> dict[str, tuple[np.ndarray, np.ndarray, int]]:
    """What the nodes of other owners pass up to a node of this one's, hour by hour,
    with the measured meter-hours behind it and the expected count, as a standalone
    computation would: through their balance meters (their consumption, which their
    owners derived and sent here) where they have them, else from the balance their
    owners computed (its output, measured and expected are the node's own flow)."""
    wanted = sorted(c for n in nodes.values() if n.owned for c in n.children if not nodes[c].owned)
    if not wanted:
        return {}
    db = store.db
    hours = (end - start) // HOUR
    metered = [c for c in wanted if nodes[c].balance_meters]
    rest = [c for c in wanted if not nodes[c].balance_meters]
    out: dict[str, tuple[np.ndarray, np.ndarray, int]] = {}
    if metered:
        _, rows = store.query(
            f"SELECT node_id, groupArrayInsertAt(0., {hours})(v, k), "
            f"groupArrayInsertAt(toUInt64(0), {hours})(n, k) FROM ("
            "SELECT m.node_id AS node_id, "
            "toUInt32(intDiv(toInt64(c.interval_start) - %(a)s, 3600)) AS k, "
            "sum(c.value) AS v, countIf(c.quality = 'measured') AS n "
            "FROM ("
            + _flow_sql(
                db,
                f"meter IN (SELECT serial FROM {db}.meters FINAL "
                "WHERE role = 'balance' AND node_id IN %(n)s)",
            )
            + f") AS c INNER JOIN (SELECT serial, node_id FROM {db}.meters FINAL) AS m "
            "ON c.meter = m.serial GROUP BY node_id, k) GROUP BY node_id",
            {"a": start, "b": end, "n": metered},
        )
        for n, v, m in rows:
            out[str(n)] = (
                np.asarray(v, dtype=np.float64),
                np.asarray(m, dtype=np.float64),
                nodes[str(n)].balance_meters,
            )
        for c in metered:
            out.setdefault(c, (np.zeros(hours), np.zeros(hours), nodes[c].balance_meters))
    if rest:
        _, rows = store.query(
            f"SELECT node_id, groupArrayInsertAt(0., {hours})(output, k), "
            f"groupArrayInsertAt(toUInt64(0), {hours})(toUInt64(measured), k), max(expected) "
            "FROM (SELECT node_id, output, measured, expected, "
            "toUInt32(intDiv(toInt64(period_start) - %(a)s, 3600)) AS k "
            f"FROM {db}.balances FINAL WHERE node_id IN %(n)s "
            "AND period_start >= toDateTime(%(a)s) AND period_start < toDateTime(%(b)s)) "
            "GROUP BY node_id",
            {"n": rest, "a": start, "b": end},
        )
        for n, v, m, e in rows:
            out[str(n)] = (np.asarray(v, dtype=np.float64), np.asarray(m, dtype=np.float64), int(e))
    return out


def _sum_from_table(
    store: RawStore,
    start: int,
    end: int,
    nodes: dict[str, _Node],
    owner: Ownership | None = None,
) -> _NodeHours:
    """The balance sums of [start, end) from the `consumption` table (of the meters
    `owner` owns)."""
    db = store.db
    mine = "1" if owner is None else owner.sql("region")
    hours = (end - start) // HOUR
    # Per node and role, the hours' sums and measured counts as arrays (one row per
    # node, not per node and hour).
    _, sums = store.query(
        f"SELECT node_id, role, groupArrayInsertAt(0., {hours})(v, k), "
        f"groupArrayInsertAt(toUInt64(0), {hours})(n, k), "
        f"groupArrayInsertAt(toUInt64(0), {hours})(p, k) FROM ("
        "SELECT m.node_id AS node_id, m.role AS role, "
        "toUInt32(intDiv(toInt64(c.interval_start) - %(a)s, 3600)) AS k, "
        "sum(c.value) AS v, countIf(c.quality = 'measured') AS n, "
        "countIf(c.quality = 'measured' AND c.preferred) AS p "
        f"FROM ({_flow_sql(db)}) AS c "
        f"INNER JOIN (SELECT serial, node_id, role FROM {db}.meters FINAL WHERE {mine}) AS m "
        "ON c.meter = m.serial GROUP BY node_id, role, k) GROUP BY node_id, role",
        {"a": start, "b": end},
    )
    zeros = np.zeros(hours)
    got = _NodeHours()
    for node_id, role, values, measured, preferred in sums:
        if node_id not in nodes:
            continue
        v, m, c = (
            (got.inp, got.inp_m, got.inp_c)
            if role == "balance"
            else (got.cons, got.cons_m, got.cons_c)
        )
        v[node_id] = v.get(node_id, zeros) + np.asarray(values, dtype=np.float64)
        m[node_id] = m.get(node_id, zeros) + np.asarray(measured, dtype=np.float64)
        c[node_id] = c.get(node_id, zeros) + np.asarray(preferred, dtype=np.float64)
    return got


def _flow_sql(db: str, where: str = "1") -> str:
    """The consumption balances count in [%(a)s, %(b)s) of the meters `where` selects:
    (meter, interval_start, value, quality, preferred), each meter's preferred register
    where it has one in the window (`PREFER`), its fallback otherwise, as the Rust sums
    choose."""
    ints = _obis_ints()
    window = "interval_start >= toDateTime(%(a)s) AND interval_start < toDateTime(%(b)s)"
    preferred = sorted(ints[p] for _, p in PREFER)
    unless = "".join(
        f" AND NOT (obis = {ints[f]} AND meter IN (SELECT DISTINCT meter FROM "
        f"{db}.consumption WHERE obis = {ints[p]} AND {window} AND {where}))"
        for f, p in PREFER
    )
    counted = ", ".join(str(ints[o]) for o in COUNTED)
    return (
        f"SELECT meter, interval_start, value, quality, obis IN ({', '.join(map(str, preferred))}) "
        f"AS preferred FROM {db}.consumption FINAL WHERE obis IN ({counted}) AND {window} "
        f"AND {where}{unless}"
    )


def _write_balances(
    store: RawStore, start: int, end: int, nodes: dict[str, _Node], got: _NodeHours
) -> int:
    """Balances of every node from its sums: bottom-up through the grid, one Native
    block into `balances`."""
    hours = (end - start) // HOUR
    zeros = np.zeros(hours)
    cons, cons_m, inp, inp_m = got.cons, got.cons_m, got.inp, got.inp_m
    cons_c, inp_c = got.cons_c, got.inp_c

    # Bottom-up: what each node passes to its parent (flow), measured and expected
    # meter-hours behind that flow.
    flow: dict[str, np.ndarray] = {}
    flow_m: dict[str, np.ndarray] = {}
    flow_c: dict[str, np.ndarray] = {}
    flow_e: dict[str, int] = {}
    out: dict[str, tuple[np.ndarray, np.ndarray, int]] = {}
    out_c: dict[str, np.ndarray] = {}
    for n in _post_order(nodes):
        if not n.owned:
            # (Which of a foreign node's meter-hours were corrected is its owner's
            # figure; it counts as not here.)
            f, fm, fe = got.foreign.get(n.node_id, (zeros, zeros, 0))
            flow[n.node_id], flow_m[n.node_id], flow_e[n.node_id] = f, fm, fe
            flow_c[n.node_id] = zeros
            continue
        o = cons.get(n.node_id, zeros).copy()
        om = cons_m.get(n.node_id, zeros).copy()
        oc = cons_c.get(n.node_id, zeros).copy()
        oe = n.consumers
        for c in n.children:
            o += flow[c]
            om += flow_m[c]
            oc += flow_c[c]
            oe += flow_e[c]
        out[n.node_id] = (o, om, oe)
        out_c[n.node_id] = oc
        if n.balance_meters:
            flow[n.node_id] = inp.get(n.node_id, zeros)
            flow_m[n.node_id] = inp_m.get(n.node_id, zeros)
            flow_c[n.node_id] = inp_c.get(n.node_id, zeros)
            flow_e[n.node_id] = n.balance_meters
        else:
            flow[n.node_id], flow_m[n.node_id], flow_e[n.node_id] = o, om, oe
            flow_c[n.node_id] = oc

    order = [n for n in nodes.values() if n.owned]
    if not order:
        return 0
    i = np.stack([inp.get(n.node_id, zeros) for n in order])
    o = np.stack([out[n.node_id][0] for n in order])
    has = np.array([1 if n.balance_meters else 0 for n in order], dtype=np.uint8)
    expected = np.array([n.balance_meters + out[n.node_id][2] for n in order], dtype=np.uint32)
    # At most one measured meter-hour per place: in the hour a meter was replaced, the
    # old and the new meter each measured a part of it.
    measured = np.minimum(
        np.stack([inp_m.get(n.node_id, zeros) + out[n.node_id][1] for n in order]),
        expected[:, None],
    )
    corrected = np.minimum(
        np.stack([inp_c.get(n.node_id, zeros) + out_c[n.node_id] for n in order]), measured
    )
    block = native.block(
        len(order) * hours,
        [
            ("node_id", "String", native.strings([n.node_id for n in order], hours)),
            ("level", "String", native.strings([n.level for n in order], hours)),
            ("commodity", "String", native.strings([n.commodity for n in order], hours)),
            ("admin_unit", "String", native.strings([n.admin_unit for n in order], hours)),
            (
                "period_start",
                "DateTime('UTC')",
                np.tile(start + HOUR * np.arange(hours, dtype=np.uint32), len(order)).tobytes(),
            ),
            ("input", "Float64", i.astype("<f8").tobytes()),
            ("output", "Float64", o.astype("<f8").tobytes()),
            ("loss", "Float64", np.where(has[:, None] == 1, i - o, 0.0).astype("<f8").tobytes()),
            ("measured", "UInt32", measured.astype("<u4").tobytes()),
            ("expected", "UInt32", np.repeat(expected, hours).astype("<u4").tobytes()),
            ("has_input", "UInt8", np.repeat(has, hours).tobytes()),
            (
                "computed_at",
                "DateTime64(3, 'UTC')",
                np.full(len(order) * hours, int(time.time() * 1000), dtype="<i8").tobytes(),
            ),
            ("corrected", "UInt32", corrected.astype("<u4").tobytes()),
        ],
    )
    store.insert_rowbinary(
        "balances",
        BALANCE_COLUMNS,
        block,
        token=balances_token(start, end),
        fmt="Native",
        rows=len(order) * hours,
    )
    return len(order) * hours


def balances_token(start: int, end: int) -> str:
    """The deduplication token of a recompute's balances; it names the hours, so a node
    that receives them from a peer knows which hours changed (`token_hours`)."""
    return f"balances:{start}:{end}:{time.time_ns()}"


def token_hours(token: str) -> tuple[int, int] | None:
    """The hours [start, end) a balances token (as it travelled: prefixed) names."""
    parts = token.rsplit("balances:", 1)[-1].split(":")
    if len(parts) >= 2 and parts[0].isdigit() and parts[1].isdigit():
        return int(parts[0]), int(parts[1])
    return None


def _post_order(nodes: dict[str, _Node]) -> list[_Node]:
    """Children before parents (iteratively: grids are deep enough to matter)."""
    order: list[_Node] = []
    seen: set[str] = set()
    for root in [n for n in nodes.values() if not n.parent]:
        stack: list[tuple[_Node, bool]] = [(root, False)]
        while stack:
            n, done = stack.pop()
            if done:
                order.append(n)
                continue
            if n.node_id in seen:
                continue
            seen.add(n.node_id)
            stack.append((n, True))
            stack.extend((nodes[c], False) for c in n.children)
    # A cycle in the grid file leaves nodes unreached: they balance on their own.
    order.extend(n for n in nodes.values() if n.node_id not in seen)
    return order
