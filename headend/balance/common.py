"""What the balance rooms share: the registers they read (flow, corrected gas,
supply switches), the tables' columns, time in Tashkent, the report of a recompute,
and running a query on the store or over the admin socket."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from headend import codec
from headend.errors import HeadendError
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

# Seconds of readings read on either side of a window (samples that bound its first and
# last intervals, and gaps that cross its edges).
MARGIN = 2 * 86_400

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
    # Meters back from a silence longer than the margin read before a window at the
    # present: their last sample before it (Unix seconds). The hours between are theirs
    # to estimate again (`LateData.add_returning`).
    returning: dict[str, int] = field(default_factory=dict)

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
            "returning": len(self.returning),
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


def _obis_ints() -> dict[str, int]:
    return {c[0]: obis_int(c[0]) for c in CHANNELS}


def month_span(month: str) -> tuple[int, int]:
    """[start, end) of a Tashkent month given as YYYY-MM, Unix seconds."""
    try:
        first = dt.datetime.strptime(month, "%Y-%m").replace(tzinfo=LOCAL)
    except ValueError:
        raise BalanceError(f"month {month!r} is not YYYY-MM") from None
    nxt = (first + dt.timedelta(days=32)).replace(day=1)
    return int(first.timestamp()), int(nxt.timestamp())


def run_query(
    access: Any, sql: str, params: dict[str, Any]
) -> tuple[list[str], list[tuple[Any, ...]]]:
    if hasattr(access, "call"):
        r = access.call("query", query=sql, params=params)
        return r["columns"], [tuple(x) for x in r["rows"]]
    cols, rows = access.query(sql, params)
    return list(cols), rows
