"""Balance reports: nodes of a level or administrative units link by link, summed
into Tashkent hours, days, months and years (`report`); nodes ranked by loss against
their own history (`losses`)."""

from __future__ import annotations

import logging
from typing import Any

from headend import gridtree
from headend.balance.common import TASHKENT, BalanceError, run_query
from headend.levels import ADMIN_LEVELS, NETWORK_LEVELS

log = logging.getLogger("headend.balance")


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
