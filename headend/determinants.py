"""Monthly billing determinants per account (issue 20, DESIGN.md section 7): what the
billing system needs to bill a month, from the head-end's interval data.

Per account and Tashkent month: its consumer meters, active energy in total and by
time-of-use zone (``[billing] tariff_zones``, local hours, from the hourly intervals),
the maximum demand (the largest hourly energy of the account's meters together, in
kW, and when), reactive energy imported and exported (kvarh, the registers' growth over
the month, for meters that have them), gas volume (m³), and how much of the energy was
estimated. ``headend billing determinants --month YYYY-MM``, ``/api/billing/
determinants``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from headend.balance import (
    FLOW,
    GAS_CORRECTED,
    LOCAL,
    TASHKENT,
    month_span,
    obis_int,
    run_query,
)
from headend.errors import HeadendError

__all__ = ["LOCAL", "determinants", "month_span", "this_month", "zones"]
REACTIVE = {"kvarh_import": "1.0.3.8.0.255", "kvarh_export": "1.0.4.8.0.255"}


def zones(text: str) -> dict[int, str]:
    """Local hour -> zone name from "name:from-to,..." (every hour exactly once)."""
    out: dict[int, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, span = part.partition(":")
        a, _, b = span.partition("-")
        if not name.isidentifier() or not a.isdigit() or not b.isdigit():
            raise HeadendError(f"[billing] tariff_zones: {part!r} is not name:from-to")
        lo, hi = int(a), int(b)
        if not (0 <= lo < 24 and 0 <= hi <= 24) or lo == hi:
            raise HeadendError(f"[billing] tariff_zones: {part!r} hours are 0-24")
        h = lo
        while h != hi % 24:
            if h in out:
                raise HeadendError(f"[billing] tariff_zones: hour {h} is in two zones")
            out[h] = name
            h = (h + 1) % 24
    missing = sorted(set(range(24)) - set(out))
    if missing:
        raise HeadendError(f"[billing] tariff_zones: hours {missing} are in no zone")
    return out


def this_month(now: float) -> str:
    """The Tashkent month of `now`, YYYY-MM."""
    return dt.datetime.fromtimestamp(now, LOCAL).strftime("%Y-%m")


def determinants(
    access: Any,
    db: str,
    month: str,
    tariff_zones: str,
    *,
    regions: tuple[str, ...] | None = None,
    account: str = "",
) -> tuple[list[str], list[list[Any]]]:
    """The month's determinants, one row per account with consumer meters."""
    hour_zone = zones(tariff_zones)
    names = sorted(set(hour_zone.values()))
    a, b = month_span(month)
    meters = (
        f"(SELECT serial, argMax(account_id, updated_at) AS account_id, "
        f"argMax(region, updated_at) AS region FROM {db}.meters GROUP BY serial "
        f"HAVING argMax(role, updated_at) = 'consumer' AND account_id != ''"
        f"{' AND region IN %(regions)s' if regions is not None else ''}"
        f"{' AND account_id = %(account)s' if account else ''})"
    )
    params: dict[str, Any] = {
        "a": a,
        "b": b,
        "e": obis_int(FLOW["electricity"]),
        "g": obis_int(FLOW["gas"]),
        "gc": obis_int(GAS_CORRECTED),
        "hours": list(hour_zone),
        "zones": [hour_zone[h] for h in hour_zone],
        "regions": list(regions or ()) or [""],
        "account": account,
    }
    # Per account and hour, its meters together; then per account: by zone, the
    # largest hour, gas, estimated.
    _, rows = run_query(
        access,
        f"SELECT account_id, sum(kwh), groupArray((zone, kwh)), max(kwh), "
        f"toInt64(argMax(h, kwh)), sum(m3), sum(est), max(n), sum(m3c) FROM ("
        f"SELECT m.account_id AS account_id, c.interval_start AS h, "
        f"sumIf(c.value, c.obis = %(e)s) AS kwh, sumIf(c.value, c.obis = %(g)s) AS m3, "
        f"sumIf(c.value, c.obis = %(gc)s) AS m3c, "
        f"sumIf(c.value, c.obis = %(e)s AND c.quality = 'estimated') AS est, "
        f"uniqExact(c.meter) AS n, "
        f"transform(toHour(c.interval_start, '{TASHKENT}'), %(hours)s, %(zones)s, '') AS zone "
        f"FROM (SELECT meter, obis, interval_start, value, quality FROM {db}.consumption FINAL "
        f"WHERE obis IN (%(e)s, %(g)s, %(gc)s) AND quality != 'invalid' "
        f"AND interval_start >= toDateTime(%(a)s) AND interval_start < toDateTime(%(b)s)) AS c "
        f"INNER JOIN {meters} AS m ON m.serial = c.meter "
        f"GROUP BY account_id, h, zone) GROUP BY account_id ORDER BY account_id",
        params,
    )
    reactive: dict[str, dict[str, float]] = {}
    for key, code in REACTIVE.items():
        _, got = run_query(
            access,
            f"SELECT m.account_id, sum(r.grow) FROM (SELECT meter, max(value) - min(value) "
            f"AS grow FROM {db}.readings WHERE obis = %(o)s AND ts >= toDateTime(%(a)s) "
            f"AND ts <= toDateTime(%(b)s) GROUP BY meter) AS r "
            f"INNER JOIN {meters} AS m ON m.serial = r.meter GROUP BY m.account_id",
            {**params, "o": obis_int(code)},
        )
        for acc, v in got:
            reactive.setdefault(str(acc), {})[key] = round(float(v) / 1000.0, 3)
    _, cats = run_query(
        access,
        f"SELECT account_id, argMax(category, updated_at) FROM {db}.billing_accounts "
        f"GROUP BY account_id",
        {},
    )
    category = {str(x): str(c) for x, c in cats}
    cols = [
        "account_id", "category", "month", "meters", "kwh",
        *(f"kwh_{z}" for z in names),
        "max_demand_kw", "max_demand_at", "kvarh_import", "kvarh_export", "gas_m3",
        "gas_m3_corrected", "estimated_kwh",
    ]  # fmt: skip
    out = []
    for acc, kwh, by_zone, peak, peak_at, m3, est, n, m3c in rows:
        per_zone = dict.fromkeys(names, 0.0)
        for z, v in by_zone:
            if z in per_zone:
                per_zone[z] += float(v)
        at = dt.datetime.fromtimestamp(int(peak_at), LOCAL).strftime("%Y-%m-%d %H:%M")
        r = reactive.get(str(acc), {})
        out.append(
            [
                acc, category.get(str(acc), ""), month, int(n), round(float(kwh), 3),
                *(round(per_zone[z], 3) for z in names),
                round(float(peak), 3), at if float(peak) > 0 else "",
                r.get("kvarh_import", 0.0), r.get("kvarh_export", 0.0),
                round(float(m3), 3), round(float(m3c), 3), round(float(est), 3),
            ]
        )  # fmt: skip
    return cols, out
