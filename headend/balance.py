"""Consumption and energy balances (DESIGN.md section 6).

`recompute(store, start, end)` rebuilds, for the hours in [start, end):

1. `consumption`: per meter and register, the energy or volume of each hour, by the
   Rust VEE (`rust_core/src/vee.rs`) over the raw `readings` (plus a margin on both
   sides, so the window's edge hours and gaps across its edges are bounded: two days,
   or for a window at the present a few hours and the last earlier sample of the
   series that start inside it); meters are taken in slices of the primary key, so
   memory stays bounded at any fleet size;
2. `balances`: per network node and hour, input (its balance meters), output (children
   with balance meters by their input, everything below without one by its meters'
   consumption), loss and completeness; summed in Rust on the way through 1 when every
   meter is recomputed, else from `consumption`.

Both tables keep the newest computation (ReplacingMergeTree on `computed_at`), so a
recompute is idempotent and late data corrects the hours it belongs to once the window
is recomputed. Reports (`report`, `losses`) sum hours into days, months and years in
Asia/Tashkent time.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, closing
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from headend import codec, gridtree
from headend.errors import HeadendError
from headend.levels import ADMIN_LEVELS, NETWORK_LEVELS
from headend.ownership import Ownership
from headend.store import native
from headend.store.imports import SqlAccess

log = logging.getLogger("headend.balance")

HOUR = 3600
TASHKENT = "Asia/Tashkent"

ELECTRICITY_IMPORT = "1.0.1.8.0.255"
ELECTRICITY_EXPORT = "1.0.2.8.0.255"
GAS_VOLUME = "7.0.3.0.0.255"
GAS_CORRECTED = "7.0.13.0.0.255"  # converted to base temperature and pressure
# (OBIS, scale from the register's unit, unit, most a consumer carries per hour in the
# register's unit): 100 kW for electricity (Wh), 25 m³/h for gas.
CHANNELS: list[tuple[str, float, str, float]] = [
    (ELECTRICITY_IMPORT, 0.001, "kWh", 100_000.0),
    (ELECTRICITY_EXPORT, 0.001, "kWh", 100_000.0),
    (GAS_VOLUME, 1.0, "m³", 25.0),
    (GAS_CORRECTED, 1.0, "m³ (corr)", 25.0),
]
CHANNEL_CODES = [c[0] for c in CHANNELS]
# What a meter passes through its node, by commodity: the register read for a consumer
# (reports, determinants, the page) and, in balances, the one counted where a meter has
# no preferred register.
FLOW = {"electricity": ELECTRICITY_IMPORT, "gas": GAS_VOLUME}
# Balances count a gas meter's corrected volume where it has one (volumes at metering
# conditions differ with temperature and pressure along a network: a balance of them
# shows losses that are physics), its volume otherwise; `balances.corrected` says how
# many measured meter-hours were corrected.
PREFER = [(GAS_VOLUME, GAS_CORRECTED)]
COUNTED = sorted({*FLOW.values(), *(p for _, p in PREFER)})
# Supply switches (0 off): the disconnector's output state and the gas valve.
STATES = ["0.0.96.3.10.255", "0.0.24.4.0.255"]
_SUMS = (
    "sum(input) AS i, sum(output) AS o, sum(loss) AS l, sum(measured) AS m, "
    "sum(expected) AS e, sum(corrected) AS c, any(commodity) AS k"
)
_FIGURES = (
    "round(i, 3) AS input, round(o, 3) AS output, round(l, 3) AS loss, "
    "round(if(i > 0, l / i * 100, NULL), 2) AS loss_pct, "
    "round(m / greatest(e, 1), 4) AS completeness, "
    # Which gas volume the figures are in: corrected (every measured meter-hour),
    # uncorrected (none) or mixed.
    "multiIf(k != 'gas', '', c = 0, 'uncorrected', c >= m, 'corrected', 'mixed') AS volume"
)
# Periods in Tashkent time, labelled as text (a day is its local date); % doubled for
# the parameterised query.
PERIODS = {
    "hour": f"formatDateTime(period_start, '%%Y-%%m-%%dT%%H:00+05:00', '{TASHKENT}')",
    "day": f"toString(toDate(period_start, '{TASHKENT}'))",
    "month": f"formatDateTime(period_start, '%%Y-%%m', '{TASHKENT}')",
    "year": f"toString(toYear(toTimeZone(period_start, '{TASHKENT}')))",
}
CONSUMPTION_COLUMNS = [
    "meter",
    "obis",
    "interval_start",
    "value",
    "unit",
    "quality",
    "flags",
    "computed_at",
]
BALANCE_COLUMNS = [
    "node_id",
    "level",
    "commodity",
    "admin_unit",
    "period_start",
    "input",
    "output",
    "loss",
    "measured",
    "expected",
    "has_input",
    "computed_at",
    "corrected",
]


class BalanceError(HeadendError):
    """A balance request that cannot be answered as asked."""


class RawStore(SqlAccess, Protocol):
    """What a recompute needs: the store itself (RowBinary both ways)."""

    db: str

    def raw_query(
        self, sql: str, params: dict[str, Any] | None = None, fmt: str = ...
    ) -> bytes: ...

    def insert_rowbinary(
        self,
        table: str,
        columns: Sequence[str],
        data: bytes,
        token: str,
        fmt: str = ...,
        *,
        rows: int = ...,
    ) -> None: ...

    def companion(self, *, tapped: bool = ...) -> RawStore: ...

    def insert_stream(
        self, table: str, columns: Sequence[str], token: str, fmt: str = ..., block_rows: int = ...
    ) -> AbstractContextManager[Callable[..., None]]: ...

    def close(self) -> None: ...


@dataclass
class RecomputeReport:
    start: int
    end: int
    readings: int = 0
    series: int = 0
    consumption_rows: int = 0
    balance_rows: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, stats: dict[str, int]) -> None:
        """Counts a slice's VEE statistics."""
        self.readings += stats["readings"]
        self.series += stats["series"]
        self.consumption_rows += stats["rows"]
        for k in ("future", "not_finite", "duplicates", "conflicts"):
            self.dropped[k] = self.dropped.get(k, 0) + stats[k]

    def as_dict(self) -> dict[str, Any]:
        return {
            "from": _iso(self.start),
            "to": _iso(self.end),
            "readings": self.readings,
            "series": self.series,
            "consumption_rows": self.consumption_rows,
            "balance_rows": self.balance_rows,
            "dropped": self.dropped,
            "seconds": self.seconds,
        }


def _iso(t: int) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat()


LOCAL = dt.timezone(dt.timedelta(hours=5))
"""Tashkent time (Uzbekistan keeps no daylight saving time)."""


def parse_time(text: str) -> int:
    """A time as given on a command line: ISO date or date-time (Tashkent time unless it
    says otherwise), or Unix seconds."""
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError:
        raise BalanceError(
            f"cannot read the time {text!r}: use 2026-11-01, 2026-11-01T06:00 or Unix seconds"
        ) from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=LOCAL)
    return int(t.timestamp())


def last_period(period: str, before: int) -> tuple[int, int]:
    """The last whole hour, day, month or year (Tashkent time) that ends by `before`."""
    t = dt.datetime.fromtimestamp(before, LOCAL)
    if period == "hour":
        end = t.replace(minute=0, second=0, microsecond=0)
        return int(end.timestamp()) - HOUR, int(end.timestamp())
    end = t.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        start = end - dt.timedelta(days=1)
    elif period == "month":
        end = end.replace(day=1)
        start = (end - dt.timedelta(days=1)).replace(day=1)
    else:
        end = end.replace(month=1, day=1)
        start = end.replace(year=end.year - 1)
    return int(start.timestamp()), int(end.timestamp())


def obis_int(text: str) -> int:
    """An OBIS code as the UInt64 the tables store."""
    return codec.obis_to_int(codec.parse_obis(text))


def hour_floor(t: float) -> int:
    return int(t) // HOUR * HOUR


def recompute(
    store: RawStore,
    start: int,
    end: int,
    *,
    now: float | None = None,
    margin: int = 2 * 86_400,
    meters_per_slice: int = 20_000,
    meters: Sequence[str] | None = None,
    owner: Ownership | None = None,
) -> RecomputeReport:
    """Rebuilds consumption and balances for the hours in [start, end) (Unix seconds);
    the consumption of `meters` only when given (late data for a few meters), the
    balances of every node. With `owner`, only what the node owns: its meters'
    consumption and its grid nodes' balances (a node of another's below one of its
    own counts with the balance its owner computed)."""
    start, end = hour_floor(start), hour_floor(end + HOUR - 1)
    if end <= start:
        raise BalanceError("the window is empty: --to must be after --from")
    if end - start > 400 * 86_400:
        raise BalanceError("a window longer than 400 days: recompute it in parts")
    now = time.time() if now is None else now
    rep = RecomputeReport(start, end)
    t0 = time.monotonic()
    nodes = _network(store, owner)
    hours = (end - start) // HOUR
    # Every meter's consumption is derived here: the balances are summed on the way
    # (in Rust), not read back from `consumption`. A few meters' (late data) leave the
    # others' where they are, so their balances are summed from the table.
    sums = None
    if meters is None and len(nodes) * 2 * hours <= SUMS_CELLS:
        sums = codec.NodeSums(list(nodes), start, hours, COUNTED, PREFER)
    _consumption(
        store, rep, int(now), margin, meters_per_slice, meters=meters, sums=sums, owner=owner
    )
    rep.seconds["consumption"] = round(time.monotonic() - t0, 3)
    refused = sum(rep.dropped.values())
    if rep.readings and not rep.consumption_rows and 2 * refused >= rep.readings:
        # Input rejected wholesale (a clock that puts the readings in the future, most
        # often): balances summed from nothing would overwrite good ones with zeros.
        why = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in sorted(rep.dropped.items()) if n)
        raise BalanceError(
            f"refusing to write balances for {_iso(start)} .. {_iso(end)}: {refused} of "
            f"{rep.readings} readings were refused ({why}) and no consumption came of them; "
            f"now is {_iso(int(now))} by this command's clock: is it the server's "
            "([clock] in the --config the server runs with)?"
        )
    t1 = time.monotonic()
    rep.balance_rows = _balances(store, start, end, nodes, sums, owner=owner)
    rep.seconds["balances"] = round(time.monotonic() - t1, 3)
    log.info(
        "recomputed %s .. %s: %d readings, %d consumption rows, %d balance rows",
        _iso(start),
        _iso(end),
        rep.readings,
        rep.consumption_rows,
        rep.balance_rows,
    )
    return rep


# Most cells (nodes x 2 x hours) of balance sums gathered in Rust (12 bytes each);
# beyond, the balances are summed from the `consumption` table.
SUMS_CELLS = 50_000_000
# Late data: at most this many meters are named per hour; beyond, every meter's
# consumption is recomputed (the store was away, a whole fleet's data is late).
LATE_METERS = 100_000
# Seconds between a late reading's arrival (its insert block's now()) and the fetch
# that may count it: every block of an insert is visible well within this.
LATE_SETTLE = 10


class LateData:
    """Hours with readings that arrived after the recent window's recomputations had
    passed them (`late_readings`), with the meters concerned; the store takes them in
    a bounded number of hours per pass, oldest first, and keeps the rest for the next.

    ``None`` for an hour's meters means every meter."""

    def __init__(self, since: int) -> None:
        self.since = since  # arrivals from here on (Unix seconds, real time) not yet seen
        self.pending: dict[int, set[str] | None] = {}

    def fetch(self, store: RawStore, before: int, oldest: int, until: int | None = None) -> int:
        """Adds the hours in [oldest, before) with readings that arrived since the last
        fetch and before `until` (default: `LATE_SETTLE` seconds ago by ClickHouse's
        clock, so a block still being written is not missed); returns how many hours
        are pending."""
        db = store.db
        if until is None:
            _, rows = store.query(f"SELECT toInt64(now()) - {LATE_SETTLE}")
            until = int(rows[0][0])
        if until <= self.since:
            return len(self.pending)
        _, rows = store.query(
            f"SELECT toInt64(hour), groupUniqArray({LATE_METERS + 1})(meter) "
            f"FROM {db}.late_readings WHERE arrived >= toDateTime({int(self.since)}) "
            f"AND arrived < toDateTime({int(until)}) "
            f"AND hour >= toDateTime({int(oldest)}) AND hour < toDateTime({int(before)}) "
            "GROUP BY hour"
        )
        for hour, meters in rows:
            have = self.pending.get(int(hour), set())
            if have is None or len(meters) > LATE_METERS:
                self.pending[int(hour)] = None
            else:
                have.update(meters)
                self.pending[int(hour)] = None if len(have) > LATE_METERS else have
        self.since = until
        return len(self.pending)

    def take(self, max_hours: int) -> list[tuple[int, int, list[str] | None]]:
        """Ranges to recompute, [start, end) with their meters, covering at most
        `max_hours` pending hours, oldest first. A late reading changes the intervals on
        either side of it, so each run of hours is widened by an hour before and two
        after."""
        hours = sorted(self.pending)[:max_hours]
        out: list[tuple[int, int, list[str] | None]] = []
        run: list[int] = []
        for h in [*hours, None]:
            if run and (h is None or h - run[-1] > 2 * HOUR):
                meters: set[str] | None = set()
                for x in run:
                    got = self.pending.pop(x)
                    meters = None if got is None or meters is None else meters | got
                out.append(
                    (run[0] - HOUR, run[-1] + 3 * HOUR, None if meters is None else sorted(meters))
                )
                run = []
            if h is not None:
                run.append(h)
        return out


# The registers of a slice of meters for the VEE: a series (meter and register) a row,
# its times and values as arrays. A third of the bytes of a reading a row, which is what
# ClickHouse spends its time writing; the series are read in key order, so grouping
# them costs little.
READINGS_SQL = (
    "SELECT meter, obis, groupArray(toUInt32(ts)), groupArray(value) "
    "FROM {db}.readings WHERE {bounds} AND obis IN %(with_states)s "
    "AND ts >= toDateTime({a}) AND ts < toDateTime({b}) "
    "GROUP BY meter, obis ORDER BY meter, obis "
    "SETTINGS optimize_aggregation_in_order = 1, max_threads = 1"
)


def _obis_ints() -> dict[str, int]:
    return {c[0]: obis_int(c[0]) for c in CHANNELS}


def _slices(
    store: RawStore, per: int, meters: Sequence[str] | None, mine: str
) -> tuple[list[str], list[str]]:
    """The meters named (of those `mine` keeps) and the first serial of every slice
    of `per` meters (not every serial: 20 million would not fit well in this
    process)."""
    db = store.db
    if meters is not None:
        chosen = sorted(set(meters))
        if mine != "1" and chosen:
            _, rows = store.query(
                f"SELECT serial FROM {db}.meters FINAL WHERE serial IN %(s)s AND {mine}",
                {"s": chosen},
            )
            chosen = sorted(r[0] for r in rows)
        return chosen, chosen[::per]
    _, rows = store.query(
        "SELECT serial FROM (SELECT serial, row_number() OVER (ORDER BY serial) AS n "
        f"FROM (SELECT DISTINCT serial FROM {db}.meters WHERE {mine})) "
        f"WHERE (n - 1) % {int(per)} = 0 ORDER BY serial"
    )
    return [], [r[0] for r in rows]


def _consumption(
    store: RawStore,
    rep: RecomputeReport,
    now: int,
    margin: int,
    per: int,
    *,
    meters: Sequence[str] | None = None,
    sums: codec.NodeSums | None = None,
    owner: Ownership | None = None,
) -> None:
    """Consumption of every meter (or of `meters`), a slice of `per` meters at a time;
    the next slice is read from ClickHouse while Rust works on this one (it runs
    without the GIL). With `sums`, each slice's flow registers are added to their
    meters' network nodes as well. With `owner`, of the meters it owns only."""
    db = store.db
    mine = "1" if owner is None else owner.sql("region")
    chosen, firsts = _slices(store, per, meters, mine)
    if not firsts:
        return
    _, rows = store.query(f"SELECT serial FROM {db}.meters FINAL WHERE role = 'balance'")
    unlimited = [r[0].encode() for r in rows]
    job = codec.ConsumptionJob(
        CHANNELS, unlimited=unlimited, states=STATES, native=True, native_input=True
    )
    obis = sorted(_obis_ints().values())
    states = [obis_int(o) for o in STATES]
    computed_at = int(time.time() * 1000)
    # A window that reaches the present (the periodic pass) is read with a margin of a
    # few hours; series that start inside it get their last sample from before. Nothing
    # after it exists yet, and two days of every meter's readings for each 6-hour pass
    # was most of the pass's work. Older windows are read with the whole margin.
    near = min(margin, NEAR) if rep.end + NEAR > now else margin

    def fetch(i: int) -> tuple[bytes, list[tuple[bytes, int, list[float]]], bytes | None]:
        last = i + 1 >= len(firsts)
        params: dict[str, Any] = {"lo": firsts[i], "obis": obis, "with_states": obis + states}
        if not last:
            params["hi"] = firsts[i + 1]
        serials = "serial >= %(lo)s" + ("" if last else " AND serial < %(hi)s")
        if meters is not None:
            params["only"] = chosen[i * per : (i + 1) * per]
            serials = "serial IN %(only)s"  # of those this node owns (see _slices)
        bounds = serials.replace("serial", "meter")
        if mine != "1" and meters is None:
            # Another node's meters may sit between these serials (a standby's): their
            # consumption is their owner's to derive.
            serials += f" AND {mine}"
            bounds += f" AND meter IN (SELECT serial FROM {db}.meters FINAL WHERE {serials})"
        raw = reader.raw_query(
            READINGS_SQL.format(db=db, bounds=bounds, a=rep.start - near, b=rep.end + near),
            params,
            fmt="Native",
        )
        if near < margin:
            raw = _with_earlier(
                reader,
                raw,
                params,
                start=rep.start,
                since=rep.start - margin,
                read_from=rep.start - near,
            )
        placed = None
        if sums is not None:
            placed = reader.raw_query(
                "SELECT serial, node_id, CAST(role = 'balance', 'UInt8') "
                f"FROM {db}.meters FINAL WHERE {serials}",
                params,
                fmt="Native",
            )
        # Typical days spread estimates over gaps: only meters with a gap need theirs.
        profiles = []
        gappy = codec.gappy_meters(raw, channels=CHANNEL_CODES, native_input=True)
        if gappy:
            only = {"obis": obis, "gappy": [m.decode() for m in gappy]}
            profiles = _profiles(reader, "meter IN {gappy:Array(String)}", only, rep.start)
        return raw, profiles, placed

    # The slices are read through a client of their own while the previous one is
    # derived, and the consumption goes into one streamed insert through another.
    with (
        closing(store.companion()) as reader,
        closing(store.companion()) as writer,
        writer.insert_stream(
            "consumption",
            CONSUMPTION_COLUMNS,
            token=f"consumption:{rep.start}:{rep.end}:{computed_at}",
            block_rows=INSERT_ROWS,
        ) as insert,
        ThreadPoolExecutor(1, thread_name_prefix="balance-fetch") as pool,
    ):
        pending = pool.submit(fetch, 0) if firsts else None
        for n in range(len(firsts)):
            assert pending is not None
            raw, profiles, placed = pending.result()
            pending = pool.submit(fetch, n + 1) if n + 1 < len(firsts) else None
            out, stats = job.rows(
                raw,
                profiles=profiles,
                sums=sums,
                meter_nodes=placed,
                keep_from=rep.start,
                keep_to=rep.end,
                now=now,
                computed_at_ms=computed_at,
            )
            del raw
            rep.add(stats)
            if out:
                insert(out, stats["rows"])


NEAR = 3 * HOUR
# The last sample before [a, b) of each series of the meters named (a series a row, as
# READINGS_SQL gives them).
EARLIER_SQL = (
    "SELECT meter, obis, [toUInt32(max(ts))], [argMax(value, ts)] "
    "FROM {db}.readings WHERE meter IN %(late)s AND obis IN %(with_states)s "
    "AND ts >= toDateTime({a}) AND ts < toDateTime({b}) "
    "GROUP BY meter, obis ORDER BY meter, obis"
)


def _with_earlier(
    reader: RawStore, raw: bytes, params: dict[str, Any], *, start: int, since: int, read_from: int
) -> bytes:
    """`raw` (read from `read_from` on) with, for the meters whose registers' first
    sample in it comes after the window's `start`, the last sample before it of each
    series (back to `since`). Supply states need no such look: meters report them with
    every interval push, so the few hours before the window hold them."""
    late = codec.late_starters(raw, channels=CHANNEL_CODES, start=start, native_input=True)
    if not late:
        return raw
    earlier = reader.raw_query(
        EARLIER_SQL.format(db=reader.db, a=since, b=read_from),
        {"with_states": params["with_states"], "late": [m.decode() for m in late]},
        fmt="Native",
    )
    return codec.with_earlier(raw, earlier) if earlier else raw


# Consumption rows a part of the streamed insert (fewer, larger parts: less for
# ClickHouse to merge behind us).
INSERT_ROWS = 5_000_000
PROFILE_DAYS = 28
PROFILE_MIN_HOURS = 12


def _profiles(
    store: RawStore, bounds: str, params: dict[str, Any], before: int
) -> list[tuple[bytes, int, list[float]]]:
    """Each series' typical consumption by Tashkent hour of day, from its measured hours
    of the four weeks before `before`; hours never measured take the mean of the others.
    Series with fewer than 12 hours of the day measured get none (their gaps are spread
    by time). Parameters are bound by ClickHouse (`{name:Type}` in `bounds`): a slice's
    gappy meters can be tens of thousands, more than a query's text may hold."""
    _, rows = store.query(
        "SELECT meter, obis, groupArray((h, v)) FROM ("
        "SELECT meter, obis, toHour(toTimeZone(interval_start, 'Asia/Tashkent')) AS h, "
        "avg(value) AS v "
        f"FROM {store.db}.consumption FINAL WHERE {bounds} AND obis IN {{obis:Array(UInt64)}} "
        "AND quality = 'measured' "
        f"AND interval_start >= toDateTime({before - PROFILE_DAYS * 86_400}) "
        f"AND interval_start < toDateTime({before}) GROUP BY meter, obis, h"
        ") GROUP BY meter, obis",
        params,
    )
    out = []
    for meter, obis, hours in rows:
        if len(hours) < PROFILE_MIN_HOURS:
            continue
        known = {int(h): max(float(v), 0.0) for h, v in hours}
        mean = sum(known.values()) / len(known)
        out.append((meter.encode(), int(obis), [known.get(h, mean) for h in range(24)]))
    return out


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


# -- reports --------------------------------------------------------------------------


def report(
    access: Any,
    db: str,
    *,
    level: str,
    period: str,
    start: int,
    end: int,
    node: str | None = None,
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Balances of `level` nodes (or of administrative units, link by link) summed over
    `period`s in Tashkent time."""
    if period not in PERIODS:
        raise BalanceError(f"unknown period {period!r}: one of {', '.join(PERIODS)}")
    p = PERIODS[period]
    params: dict[str, Any] = {"a": start, "b": end}
    node_filter = ""
    if level in NETWORK_LEVELS:
        if node:
            node_filter = "AND node_id = %(node)s"
            params["node"] = node
        params["level"] = level
        sql = (
            f"SELECT node_id, period, {_FIGURES} FROM ("
            f"SELECT node_id, {p} AS period, {_SUMS} "
            f"FROM {db}.balances FINAL WHERE level = %(level)s "
            "AND period_start >= toDateTime(%(a)s) AND period_start < toDateTime(%(b)s) "
            f"{node_filter} GROUP BY node_id, period) ORDER BY node_id, period"
        )
        return run_query(access, sql, params)
    if level in ADMIN_LEVELS:
        # Each network node's unit at `level`: the nearest node of that level above it
        # in the grid (nodes under none are left out); each link of the chain (network
        # level) on its own row.
        ids, units = admin_units(access, db, level)
        if node:
            node_filter = "AND unit = %(node)s"
            params["node"] = node
        sql = (
            f"SELECT unit, link, period, {_FIGURES} FROM ("
            f"SELECT transform(node_id, %(ids)s, %(units)s, '') AS unit, level AS link, "
            f"{p} AS period, {_SUMS} "
            f"FROM {db}.balances FINAL WHERE has_input = 1 "
            "AND period_start >= toDateTime(%(a)s) AND period_start < toDateTime(%(b)s) "
            f"GROUP BY unit, link, period) WHERE unit != '' {node_filter} "
            "ORDER BY unit, period, indexOf(%(order)s, link)"
        )
        # (A placeholder pair keeps the arrays typed when no node has such a unit.)
        params.update(order=list(NETWORK_LEVELS), ids=ids or [""], units=units or [""])
        return run_query(access, sql, params)
    raise BalanceError(
        f"unknown level {level!r}: one of {', '.join(NETWORK_LEVELS + ADMIN_LEVELS)}"
    )


def losses(
    access: Any,
    db: str,
    *,
    level: str,
    start: int,
    end: int,
    top: int,
    min_completeness: float = 0.9,
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Nodes of `level` ranked by loss (kWh or m³) over [start, end), only where
    completeness is at least `min_completeness`, with their loss % over the same length
    of time before (the trend against their own history)."""
    if level not in NETWORK_LEVELS:
        raise BalanceError(f"losses are ranked per network level: one of {NETWORK_LEVELS}")
    span = end - start
    sql = (
        "SELECT node_id, admin_unit, round(l, 3) AS loss, "
        "round(if(i > 0, l / i * 100, NULL), 2) AS loss_pct, "
        "round(if(i0 > 0, l0 / i0 * 100, NULL), 2) AS loss_pct_before, "
        "round(m / greatest(e, 1), 4) AS completeness FROM ("
        "SELECT node_id, admin_unit, sumIf(loss, now_) AS l, sumIf(input, now_) AS i, "
        "sumIf(loss, NOT now_) AS l0, sumIf(input, NOT now_) AS i0, "
        "sumIf(measured, now_) AS m, sumIf(expected, now_) AS e "
        "FROM (SELECT *, period_start >= toDateTime(%(a)s) AS now_ "
        f"      FROM {db}.balances FINAL WHERE level = %(level)s AND has_input = 1 "
        "      AND period_start >= toDateTime(%(before)s) AND period_start < toDateTime(%(b)s)) "
        "GROUP BY node_id, admin_unit) WHERE m / greatest(e, 1) >= %(minc)s "
        "ORDER BY l DESC LIMIT %(top)s"
    )
    params = {
        "a": start,
        "b": end,
        "before": start - span,
        "level": level,
        "minc": min_completeness,
        "top": top,
    }
    return run_query(access, sql, params)


def month_span(month: str) -> tuple[int, int]:
    """[start, end) of a Tashkent month given as YYYY-MM, Unix seconds."""
    try:
        first = dt.datetime.strptime(month, "%Y-%m").replace(tzinfo=LOCAL)
    except ValueError:
        raise BalanceError(f"month {month!r} is not YYYY-MM") from None
    nxt = (first + dt.timedelta(days=32)).replace(day=1)
    return int(first.timestamp()), int(nxt.timestamp())


def admin_units(access: Any, db: str, level: str) -> tuple[list[str], list[str]]:
    """(grid node ids, their unit at `level`): the nearest node of that level at or
    above each node ("republic" for the republic level); nodes under none are left
    out."""
    _, rows = run_query(access, gridtree.tree_sql(db), {})
    nodes = gridtree.tree(rows)
    ids, units = [], []
    for node in nodes:
        unit = gridtree.above(nodes, node, level)
        if unit:
            ids.append(node)
            units.append("republic" if level == "republic" else unit)
    return ids, units


def run_query(
    access: Any, sql: str, params: dict[str, Any]
) -> tuple[list[str], list[tuple[Any, ...]]]:
    if hasattr(access, "call"):
        r = access.call("query", query=sql, params=params)
        return r["columns"], [tuple(x) for x in r["rows"]]
    cols, rows = access.query(sql, params)
    return list(cols), rows
