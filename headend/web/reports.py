"""``/api/consumption``: consumer meters' consumption by account category or
administrative unit, and ``/api/batteries``: battery-powered meters' batteries
(``headend.reports``), within the person's regions; ``/api/levels``: the grid's level
vocabulary (``headend.levels``), which the page reads."""

from __future__ import annotations

import csv
import io
from typing import TYPE_CHECKING, Any

from aiohttp import web

from headend.reports import BY, PERIODS

if TYPE_CHECKING:
    from headend.web.app import Api


def add_routes(api: Api, r: web.UrlDispatcher) -> None:
    from headend import levels, reports
    from headend.web.app import HttpError, ok

    async def consumption(request: web.Request) -> web.Response:
        by = request.query.get("by", "category")
        period = request.query.get("period", "day")
        if by not in BY or period not in PERIODS:
            raise HttpError(400, f"by is one of {', '.join(BY)}; period day or month")
        start, end = api._window(request, 86_400)
        cols, rows = await api.run_db(
            reports.consumption,
            api.b.store,
            api.b.db,
            by=by,
            period=period,
            start=start,
            end=end,
            regions=api.scope(request),
        )
        return ok({"columns": cols, "rows": [dict(zip(cols, x, strict=True)) for x in rows]})

    async def determinants_(request: web.Request) -> web.StreamResponse:
        from headend import determinants
        from headend.errors import HeadendError

        month = request.query.get("month") or determinants.this_month(api.b.clock.now())
        fmt = request.query.get("format", "json")
        if fmt not in ("json", "csv"):
            raise HttpError(400, "format is json or csv")
        try:
            cols, rows = await api.run_db(
                determinants.determinants,
                api.b.store,
                api.b.db,
                month,
                api.b.cfg.billing.tariff_zones,
                regions=api.scope(request),
            )
        except HeadendError as e:
            raise HttpError(400, str(e)) from None
        if fmt == "csv":
            out = io.StringIO()
            w = csv.writer(out, lineterminator="\n")
            w.writerow(cols)
            w.writerows(rows)
            return web.Response(
                text=out.getvalue(),
                content_type="text/csv",
                headers={"Content-Disposition": f'attachment; filename="determinants-{month}.csv"'},
            )
        return ok({"columns": cols, "rows": [dict(zip(cols, x, strict=True)) for x in rows]})

    async def batteries(request: web.Request) -> web.Response:
        cols, rows = await api.run_db(
            reports.batteries,
            api.b.store,
            api.b.db,
            low_volts=api.b.cfg.workorders.battery_low_volts,
            regions=api.scope(request),
        )
        return ok({"columns": cols, "rows": [dict(zip(cols, x, strict=True)) for x in rows]})

    async def levels_(request: web.Request) -> web.Response:
        return ok(levels.public())

    r.add_get("/api/levels", levels_)
    r.add_get("/api/consumption", consumption)
    r.add_get("/api/batteries", batteries)
    r.add_get("/api/billing/determinants", determinants_)


def spec(get: Any, q: Any) -> dict[str, Any]:
    return {
        "/api/billing/determinants": get(
            "a Tashkent month's billing determinants per account (billing role): energy in "
            "total and by tariff zone, maximum demand (kW, when), reactive energy, gas, the "
            "estimated part; format=csv for the billing system",
            [
                q("month", "YYYY-MM (default: this month)"),
                q("format", "json or csv", enum=["json", "csv"]),
            ],
        ),
        "/api/levels": get(
            "the grid's levels: administrative and network, each commodity's chain from "
            "the source to the consumers, what the nodes below each level are called",
            [],
        ),
        "/api/batteries": get(
            "battery-powered meters in the person's regions: the latest battery voltage, "
            "its fall per year and the days left until [workorders] battery_low_volts, "
            "lowest first",
            [],
        ),
        "/api/consumption": get(
            "consumer meters' consumption (kWh, m³) per Tashkent day or month by account "
            "category or administrative unit, with the estimated part, in the person's regions",
            [
                q("by", "category, republic, region, city or district", enum=list(BY)),
                q("period", "day or month", enum=list(PERIODS)),
                q("from", "start: ISO date or date-time (Tashkent) or Unix seconds"),
                q("to", "end (exclusive); default now"),
            ],
        ),
    }
