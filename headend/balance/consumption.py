"""Consumption of a window (VEE in Rust): the meters in slices of the primary key,
each slice's readings read as series with a margin of a few hours, the samples just
before and after it looked up for the series that need them, the typical days that
spread gaps; one streamed insert."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from typing import Any

from headend import codec
from headend.balance.common import (
    CHANNEL_CODES,
    CHANNELS,
    CONSUMPTION_COLUMNS,
    FLOW,
    HOUR,
    STATES,
    RawStore,
    RecomputeReport,
    _obis_ints,
    obis_int,
)
from headend.balance.late import MAX_GAP
from headend.ownership import Ownership

log = logging.getLogger("headend.balance")


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
    # Every window is read with a margin of a few hours; series that start inside it
    # get their last sample from before (back to `margin`), series that end inside it
    # their first sample after (up to `margin`, when the window is not at the present,
    # where nothing after it exists yet). Two days of every meter's readings on either
    # side was most of the work of a 6-hour pass, and of an hour of late data.
    near = min(margin, NEAR)

    def fetch(
        i: int,
    ) -> tuple[
        codec.ReadingSlice, list[tuple[bytes, int, list[float]]], bytes | None, dict[str, int]
    ]:
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
        # The slice's bytes are parsed once; the questions below ask the parsed slice.
        readings = codec.ReadingSlice(
            reader.raw_query(
                READINGS_SQL.format(db=db, bounds=bounds, a=rep.start - near, b=rep.end + near),
                params,
                fmt="Native",
            )
        )
        returning: dict[str, int] = {}
        if near < margin:
            returning = _add_earlier(
                reader,
                readings,
                params,
                start=rep.start,
                since=rep.start - margin,
                read_from=rep.start - near,
            )
        if near < margin and rep.end + near < now:
            _add_later(
                reader,
                readings,
                params,
                end=rep.end,
                read_to=rep.end + near,
                until=rep.end + margin,
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
        gappy = readings.gappy_meters(channels=CHANNEL_CODES)
        if gappy:
            only = {"obis": obis, "gappy": [m.decode() for m in gappy]}
            profiles = _profiles(reader, "meter IN {gappy:Array(String)}", only, rep.start)
        return readings, profiles, placed, returning

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
            readings, profiles, placed, returning = pending.result()
            rep.returning.update(returning)
            pending = pool.submit(fetch, n + 1) if n + 1 < len(firsts) else None
            out, stats = job.rows(
                readings,
                profiles=profiles,
                sums=sums,
                meter_nodes=placed,
                keep_from=rep.start,
                keep_to=rep.end,
                now=now,
                computed_at_ms=computed_at,
            )
            del readings
            rep.add(stats)
            if out:
                insert(out, stats["rows"])


NEAR = 3 * HOUR
# The last (`argMax`) or first (`argMin`) sample in [a, b) of each series of the meters
# named (a series a row, as READINGS_SQL gives them).
EDGE_SQL = (
    "SELECT meter, obis, [toUInt32({arg}(ts, ts))], [{arg}(value, ts)] "
    "FROM {db}.readings WHERE meter IN %(named)s AND obis IN %(with_states)s "
    "AND ts >= toDateTime({a}) AND ts < toDateTime({b}) "
    "GROUP BY meter, obis ORDER BY meter, obis"
)


def _edge_samples(
    reader: RawStore, params: dict[str, Any], meters: list[bytes], span: tuple[int, int], arg: str
) -> bytes:
    """Each series' last (`argMax`) or first (`argMin`) sample in `span` for `meters`."""
    a, b = span
    return reader.raw_query(
        EDGE_SQL.format(db=reader.db, arg=arg, a=a, b=b),
        {"with_states": params["with_states"], "named": [m.decode() for m in meters]},
        fmt="Native",
    )


def _add_earlier(
    reader: RawStore,
    readings: codec.ReadingSlice,
    params: dict[str, Any],
    *,
    start: int,
    since: int,
    read_from: int,
) -> dict[str, int]:
    """Adds to `readings` (read from `read_from` on), for the meters whose registers'
    first sample comes after the window's `start`, the last sample before it of each
    series (back to `since`). Supply states need no such look: meters report them with
    every interval push, so the few hours before the window hold them. Returns the
    meters with none back to `since` whose flow register has a sample within the
    longest estimate before it: back from a long silence, with that sample's time."""
    late = readings.late_starters(channels=CHANNEL_CODES, start=start)
    if not late:
        return {}
    earlier = _edge_samples(reader, params, late, (since, read_from), "argMax")
    if earlier:
        readings.add_earlier(earlier)
    silent = readings.late_starters(channels=list(FLOW.values()), start=start)
    if not silent:
        return {}
    _, rows = reader.query(
        f"SELECT meter, toInt64(max(ts)) FROM {reader.db}.readings "
        "WHERE meter IN %(m)s AND obis IN %(flow)s "
        "AND ts >= toDateTime(%(a)s) AND ts < toDateTime(%(b)s) GROUP BY meter",
        {
            "m": [m.decode() for m in silent],
            "flow": [obis_int(o) for o in FLOW.values()],
            "a": since - MAX_GAP,
            "b": since,
        },
    )
    return {str(m): int(t) for m, t in rows}


def _add_later(
    reader: RawStore,
    readings: codec.ReadingSlice,
    params: dict[str, Any],
    *,
    end: int,
    read_to: int,
    until: int,
) -> None:
    """Adds to `readings` (read up to `read_to`), for the meters whose registers' last
    sample comes before the window's `end`, the first sample after it of each series
    (up to `until`)."""
    early = readings.early_finishers(channels=CHANNEL_CODES, end=end)
    if not early:
        return
    later = _edge_samples(reader, params, early, (read_to, until), "argMin")
    if later:
        readings.add_later(later)


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
