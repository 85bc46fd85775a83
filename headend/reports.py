"""Consumption reports by account category and administrative unit (issue 20):
``headend report consumption --by category|district|city|region|republic`` and
``/api/consumption``.

Energy (kWh) and gas (m³) consumed by consumer meters, per Tashkent day or month,
summed from ``consumption`` (measured and estimated intervals, never invalid ones,
with how much of it was estimated) and grouped by the account's category from the
billing file (household, commercial, large, greenhouse, gas_filling, ...; "none" when
the billing system gave none) or by the administrative unit above the meter's grid
node (its nearest district, city or region). All in one query.
"""

from __future__ import annotations

from typing import Any

from headend.balance import (
    FLOW,
    TASHKENT,
    BalanceError,
    admin_units,
    obis_int,
)
from headend.balance import run_query as _run
from headend.levels import ADMIN_LEVELS

BY = ("category", *ADMIN_LEVELS)
PERIODS = {
    "day": f"toString(toDate(interval_start, '{TASHKENT}'))",
    "month": f"formatDateTime(interval_start, '%%Y-%%m', '{TASHKENT}')",
}
COLUMNS = ["unit", "commodity", "period", "consumption", "unit_of_measure", "estimated", "meters"]


def consumption(
    access: Any,
    db: str,
    *,
    by: str,
    period: str,
    start: int,
    end: int,
    regions: tuple[str, ...] | None = None,
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Consumer meters' consumption in [start, end) by `by` and `period`; `regions`
    keeps it to the meters of those regions (None: all)."""
    if by not in BY:
        raise BalanceError(f"by {by!r}: one of {', '.join(BY)}")
    if period not in PERIODS:
        raise BalanceError(f"period {period!r}: one of {', '.join(PERIODS)}")
    params: dict[str, Any] = {
        "a": start,
        "b": end,
        "flows": [obis_int(FLOW[k]) for k in ("electricity", "gas")],
        "electricity": obis_int(FLOW["electricity"]),
    }
    if by == "category":
        unit = "if(ifNull(acc.category, '') = '', 'none', acc.category)"
        join = (
            f"LEFT JOIN (SELECT account_id, argMax(category, updated_at) AS category "
            f"FROM {db}.billing_accounts GROUP BY account_id) AS acc "
            "ON acc.account_id = m.account_id"
        )
    else:
        ids, units = admin_units(access, db, by)
        unit = "transform(m.node_id, %(ids)s, %(units)s, '')"
        params.update(ids=ids or [""], units=units or [""])
        join = ""
    scope = ""
    if regions is not None:
        scope = "AND region IN %(regions)s"
        params["regions"] = list(regions) or [""]
    sql = (
        f"SELECT unit, commodity, period, round(sum(v), 3) AS consumption, "
        f"if(commodity = 'electricity', 'kWh', 'm³') AS unit_of_measure, "
        f"round(sumIf(v, q = 'estimated'), 3) AS estimated, uniqExact(meter) AS meters FROM ("
        f"SELECT {unit} AS unit, if(c.obis = %(electricity)s, 'electricity', 'gas') "
        f"AS commodity, {PERIODS[period]} AS period, c.value AS v, toString(c.quality) AS q, "
        f"c.meter AS meter "
        f"FROM (SELECT meter, obis, interval_start, value, quality FROM {db}.consumption FINAL "
        f"WHERE obis IN %(flows)s AND quality != 'invalid' "
        f"AND interval_start >= toDateTime(%(a)s) AND interval_start < toDateTime(%(b)s)) AS c "
        f"INNER JOIN (SELECT serial, argMax(node_id, updated_at) AS node_id, "
        f"argMax(account_id, updated_at) AS account_id, argMax(region, updated_at) AS region "
        f"FROM {db}.meters GROUP BY serial HAVING argMax(role, updated_at) = 'consumer' "
        f"{scope}) AS m ON m.serial = c.meter {join}"
        f") WHERE unit != '' GROUP BY unit, commodity, period ORDER BY unit, commodity, period"
    )
    cols, rows = _run(access, sql, params)
    return cols, rows


BATTERY_COLUMNS = [
    "serial",
    "node_id",
    "region",
    "volts",
    "at",
    "first_volts",
    "since",
    "volts_per_year",
    "days_left",
    "low",
]


def batteries(
    access: Any,
    db: str,
    *,
    low_volts: float,
    regions: tuple[str, ...] | None = None,
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Battery-powered meters' batteries (``meter_battery``: one row per meter): the
    latest voltage and when, the first one reported and since when, the fall per year
    between them, and the days until `low_volts` at that pace (None: not falling, or
    not known for a month yet); lowest first. `regions` keeps it to the meters of those
    regions (None: all)."""
    scope = "" if regions is None else " AND region IN %(regions)s"
    sql = (
        "SELECT b.meter, m.node_id, m.region, b.v, b.t, b.v0, b.t0 FROM ("
        "SELECT meter, argMaxMerge(volts) AS v, toInt64(max(last_ts)) AS t, "
        "argMinMerge(first_volts) AS v0, toInt64(min(first_ts)) AS t0 "
        f"FROM {db}.meter_battery GROUP BY meter) AS b "
        "INNER JOIN (SELECT serial, argMax(node_id, updated_at) AS node_id, "
        f"argMax(region, updated_at) AS region FROM {db}.meters GROUP BY serial) AS m "
        f"ON m.serial = b.meter WHERE 1{scope} ORDER BY b.v, b.meter"
    )
    _, rows = _run(access, sql, {"regions": list(regions or ()) or [""]})
    out = []
    for serial, node, region, v, t, v0, t0 in rows:
        years = (int(t) - int(t0)) / (365.25 * 86_400)
        # A pace needs a month of reports; a battery that is not falling has no end.
        per_year = (float(v0) - float(v)) / years if years >= 30 / 365.25 else None
        left = None
        if per_year is not None and per_year > 0:
            left = max(0, round((float(v) - low_volts) / per_year * 365.25))
        out.append(
            (
                serial,
                node,
                region,
                round(float(v), 3),
                int(t),
                round(float(v0), 3),
                int(t0),
                None if per_year is None else round(per_year, 4),
                left,
                float(v) < low_volts,
            )
        )
    return BATTERY_COLUMNS, out
