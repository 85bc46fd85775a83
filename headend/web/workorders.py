"""The HTTP side of field work: work orders, service centres and outages
(``headend.workorders``, ``headend.outages``, run by the store's ``FieldWork``).
Reads are the person's regions; changes need the service role (``PERMISSION`` in
``headend.web.app``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from headend.outages import UNITS, OutageError
from headend.workorders import CAUSES, OUTCOMES, STATES, NoSuchOrder

if TYPE_CHECKING:
    from headend.web.app import Api

FIELDS = {
    "create": {"serial", "note", "priority"},
    "assign": {"to", "centre", "note"},
    "visit": {"note"},
    "close": {"outcome", "new_serial", "old_final", "new_initial", "replaced_at", "note"},
}
FILTERS = ("state", "cause", "centre", "region", "serial")


def add_routes(api: Api, r: web.UrlDispatcher) -> None:
    from headend.web.app import HttpError, ok

    async def request(what: str, req: dict[str, Any], who: Any) -> Any:
        try:
            return await api.b.fieldwork.request(what, req, who)
        except NoSuchOrder as e:
            raise HttpError(404, str(e)) from None

    async def body_of(request_: web.Request, what: str) -> dict[str, Any]:
        body = await api._json_body(request_) if request_.can_read_body else {}
        if not isinstance(body, dict):
            raise HttpError(400, "expected a JSON object")
        unknown = set(body) - FIELDS[what]
        if unknown:
            raise HttpError(400, f"unknown field(s) {', '.join(sorted(unknown))}")
        return body

    async def orders(request_: web.Request) -> web.StreamResponse:
        q = request_.query
        req: dict[str, Any] = {k: q.get(k, "") for k in FILTERS}
        req["limit"] = api._int(request_, "limit", 1000, hi=100_000)
        fmt = q.get("format", "json")
        if fmt not in ("json", "csv"):
            raise HttpError(400, "format is json or csv")
        req["format"] = fmt
        out = await request("list", req, api.who(request_))
        if fmt == "csv":
            return web.Response(
                text=out["csv"],
                content_type="text/csv",
                headers={"Content-Disposition": 'attachment; filename="workorders.csv"'},
            )
        return ok(out)

    async def show(request_: web.Request) -> web.Response:
        req = {"id": request_.match_info["order_id"]}
        return ok(await request("show", req, api.who(request_)))

    async def create(request_: web.Request) -> web.Response:
        body = await body_of(request_, "create")
        if not isinstance(body.get("serial"), str) or not isinstance(body.get("note"), str):
            raise HttpError(400, "expected {serial, note[, priority]}")
        return ok(await request("create", body, api.who(request_)), 201)

    def change(what: str) -> Any:
        async def handler(request_: web.Request) -> web.Response:
            body = await body_of(request_, what)
            req = {**body, "id": request_.match_info["order_id"]}
            return ok(await request(what, req, api.who(request_)))

        return handler

    async def precision(request_: web.Request) -> web.Response:
        return ok(await request("precision", {}, api.who(request_)))

    async def centres(request_: web.Request) -> web.Response:
        return ok(await request("centres", {}, api.who(request_)))

    r.add_get("/api/workorders", orders)
    r.add_post("/api/workorders", create)
    r.add_get("/api/workorders/precision", precision)
    r.add_get("/api/workorders/{order_id}", show)
    for what in ("assign", "visit", "close"):
        r.add_post(f"/api/workorders/{{order_id}}/{what}", change(what))
    r.add_get("/api/service-centres", centres)
    add_outage_routes(api, r)


def add_outage_routes(api: Api, r: web.UrlDispatcher) -> None:
    from headend.web.app import HttpError, ok

    async def outages(request_: web.Request) -> web.Response:
        start, end = api._window(request_, 86_400)
        req = {
            "start": start,
            "end": end,
            "region": request_.query.get("region", ""),
            "limit": api._int(request_, "limit", 500),
        }
        return ok(await api.b.fieldwork.outage_request("list", req, api.who(request_)))

    async def indices(request_: web.Request) -> web.Response:
        by = request_.query.get("by", "district")
        month = request_.query.get("month", "")
        if by not in UNITS:
            raise HttpError(400, f"by is one of {', '.join(UNITS)}")
        try:
            out = await api.b.fieldwork.outage_request(
                "indices", {"by": by, "month": month}, api.who(request_)
            )
        except OutageError as e:
            raise HttpError(400, str(e)) from None
        return ok(out)

    async def outage(request_: web.Request) -> web.Response:
        req = {"id": request_.match_info["outage_id"]}
        try:
            return ok(await api.b.fieldwork.outage_request("show", req, api.who(request_)))
        except OutageError as e:
            raise HttpError(404, str(e)) from None

    r.add_get("/api/outages", outages)
    r.add_get("/api/outages/indices", indices)
    r.add_get("/api/outages/{outage_id}", outage)


def spec(get: Any, post: Any, q: Any, p: Any) -> dict[str, Any]:
    """The OpenAPI paths of these routes (`headend.web.openapi`)."""
    order = [p("order_id", "the work order's id")]
    note = {"note": {"type": "string"}}
    return {
        "/api/workorders": {
            **get(
                "work orders in the person's regions, active first by priority and due "
                "time; format=csv gives the crews' list",
                [
                    q("state", "active (not closed) or one state", enum=["active", *STATES]),
                    q("cause", "one cause", enum=list(CAUSES)),
                    q("centre", "one service centre"),
                    q("region", "one region"),
                    q("serial", "one meter"),
                    q("format", "json or csv", enum=["json", "csv"]),
                    q("limit", "most orders", "integer", minimum=1, maximum=100_000),
                ],
            ),
            "post": post(
                "open a work order by hand (service role, in the meter's region)",
                {
                    "serial": {"type": "string"},
                    "note": {"type": "string"},
                    "priority": {"type": "integer", "enum": [1, 2, 3]},
                },
                ok_status="201",
            )["post"],
        },
        "/api/workorders/precision": get(
            "inspections closed with a verdict: theft confirmed over inspected, per "
            "detection rule and per region"
        ),
        "/api/workorders/{order_id}": get("one work order and its history", order),
        "/api/workorders/{order_id}/assign": post(
            "give the order to a crew (service role); centre moves it to another centre",
            {"to": {"type": "string"}, "centre": {"type": "string"}, **note},
            order,
        ),
        "/api/workorders/{order_id}/visit": post(
            "record the crew's visit (service role)", note, order
        ),
        "/api/workorders/{order_id}/close": post(
            "close with the crew's outcome (service role); replaced needs new_serial (a "
            "meter imported with its keys in the old one's place) and the registers read "
            "on site, old_final and new_initial (kWh or m³), at replaced_at (Unix seconds, "
            "default now); theft_confirmed flags the account for billing",
            {
                "outcome": {"type": "string", "enum": list(OUTCOMES)},
                "new_serial": {"type": "string"},
                "old_final": {"type": "number"},
                "new_initial": {"type": "number"},
                "replaced_at": {"type": "integer"},
                **note,
            },
            order,
        ),
        "/api/outages": get(
            "outages overlapping [from, to) (default: the last day), open ones first, in "
            "the person's regions: node, start, minutes, consumers cut off, meters that "
            "reported it and came back, whether the balance meter saw it",
            [
                q("from", "start: ISO date or date-time (Tashkent) or Unix seconds"),
                q("to", "end (exclusive); default now"),
                q("region", "one region"),
                q("limit", "most outages", "integer", minimum=1, maximum=10_000),
            ],
        ),
        "/api/outages/indices": get(
            "SAIDI (minutes), SAIFI and MAIFI for a local month per district, region or "
            "the republic",
            [
                q("by", "district, region or republic", enum=list(UNITS)),
                q("month", "YYYY-MM (Tashkent)"),
            ],
        ),
        "/api/outages/{outage_id}": get(
            "one outage, meter by meter: when each went down and came back",
            [p("outage_id", "the outage's id")],
        ),
        "/api/service-centres": get(
            "service centres in the person's regions, their districts and their active "
            "and overdue orders"
        ),
    }
