"""Field work in the store process: the work-order and outage passes, and people's
requests on work orders, service centres and outages from the admin socket and the
HTTP API (`headend.workorders` and `headend.outages` do the work; this runs it
beside the event loop and leaves the audit rows)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from headend.errors import HeadendError
from headend.outages import Outages
from headend.outages import ScanReport as OutageReport
from headend.workorders import ACTIONS, Book, Order, ScanReport

if TYPE_CHECKING:
    from headend.people import Principal
    from headend.server.store import StoreService

log = logging.getLogger("headend.workorders")

READS = ("list", "show", "export", "precision", "centres")
WRITES = ("scan", "create", *ACTIONS)


class FieldWork:
    def __init__(self, svc: StoreService) -> None:
        self.svc = svc
        self.book = Book(svc.store, svc.db, svc.cfg.workorders, svc.owner, svc.clock)
        self.outages = Outages(svc.store, svc.db, svc.cfg.outages, svc.owner, svc.clock)
        self.last: ScanReport | None = None
        self.last_outages: dict[str, Any] | None = None

    async def _run(self, fn: Any, *args: Any, **kw: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, lambda: fn(*args, **kw))

    async def scan(self) -> ScanReport:
        report: ScanReport = await self._run(self.book.scan)
        self.last = report
        if report.opened:
            log.info("work orders: %s", report.summary())
        return report

    async def run(self) -> None:
        """The passes: outages every `[outages] interval`, work orders every
        `[workorders] interval` (each after its first interval, so a starting node's
        late data is in), outages first, so silent meters of an outage are known."""
        cfg = self.svc.cfg
        every = {"outages": cfg.outages.interval, "workorders": cfg.workorders.interval}
        every = {k: v for k, v in every.items() if v > 0}
        if not every:
            return
        due = {k: time.monotonic() + v for k, v in every.items()}
        while True:
            await asyncio.sleep(max(0.0, min(due.values()) - time.monotonic()))
            for what in ("outages", "workorders"):
                if what not in due or due[what] > time.monotonic():
                    continue
                due[what] = time.monotonic() + every[what]
                try:
                    if what == "outages":
                        await self.scan_outages()
                    else:
                        await self.scan()
                except Exception as e:
                    log.error("%s pass failed (will retry): %s", what, e)

    async def scan_outages(self) -> dict[str, Any]:
        found: OutageReport = await self._run(self.outages.scan)
        report = found.as_dict()
        self.last_outages = report
        return report

    async def outage_request(self, what: str, req: dict[str, Any], who: Principal) -> Any:
        """`headend outages WHAT` and /api/outages for `who`."""
        o = self.outages
        if what == "list":
            now = int(self.svc.clock.now())
            start = int(req.get("start") or now - 86_400)
            end = int(req.get("end") or now + 1)
            rows = await self._run(
                o.listing,
                who,
                start=start,
                end=end,
                region=str(req.get("region") or ""),
                limit=int(req.get("limit") or 500),
            )
            return {"outages": rows}
        if what == "show":
            return await self._run(o.show, who, str(req.get("id") or ""))
        if what == "indices":
            rows = await self._run(
                o.indices, who, str(req.get("by") or "district"), str(req.get("month") or "")
            )
            return {"indices": rows}
        if what == "scan":
            who.require("admin", "run an outage pass")
            report = await self.scan_outages()
            await self.svc.audit(who, "outages.scan", detail=report)
            return report
        raise HeadendError(f"unknown outage request {what!r}")

    async def request(self, what: str, req: dict[str, Any], who: Principal) -> Any:
        """`headend workorders WHAT` and /api/workorders for `who`."""
        b = self.book
        if what == "list":
            orders: list[Order] = await self._run(
                b.list,
                who,
                state=str(req.get("state") or ""),
                cause=str(req.get("cause") or ""),
                centre=str(req.get("centre") or ""),
                region=str(req.get("region") or ""),
                serial=str(req.get("serial") or ""),
                limit=int(req.get("limit") or 1000),
            )
            if req.get("format") == "csv":
                return {"csv": await self._run(b.export_csv, orders)}
            at = await self._run(b.coordinates, sorted({o.serial for o in orders}))
            return {
                "orders": [
                    {**o.public(), "lat": at.get(o.serial, (None, None))[0],
                     "lon": at.get(o.serial, (None, None))[1]}
                    for o in orders
                ]
            }  # fmt: skip
        if what == "show":
            order = await self._run(b.get, str(req.get("id") or ""), who)
            return {**order.public(), "history": await self._run(b.history, order.order_id)}
        if what == "precision":
            return await self._run(b.precision, who)
        if what == "centres":
            return {"centres": await self._run(self.centres, who)}
        if what not in WRITES:
            raise HeadendError(f"unknown work-order request {what!r}")
        try:
            out = await self._write(what, req, who)
        except HeadendError as e:
            await self.svc.audit(
                who,
                f"workorders.{what}",
                str(req.get("id") or req.get("serial") or ""),
                "failed",
                {"why": str(e)},
            )
            raise
        return out

    async def _write(self, what: str, req: dict[str, Any], who: Principal) -> Any:
        b = self.book
        if what == "scan":
            who.require("admin", "run a work-order pass")
            report = await self.scan()
            await self.svc.audit(who, "workorders.scan", detail=report.as_dict())
            return report.as_dict()
        if what == "create":
            prio = req.get("priority")
            order = await self._run(
                b.create,
                who,
                str(req.get("serial") or ""),
                str(req.get("note") or ""),
                None if prio is None else int(prio),
            )
        else:
            names = ("to", "centre", "note", "outcome", "new_serial", "old_final", "new_initial")
            kw = {k: req.get(k) for k in (*names, "replaced_at")}
            order = await self._run(b.change, who, str(req.get("id") or ""), what, **kw)
        detail = {
            k: v
            for k, v in (
                ("state", order.state),
                ("serial", order.serial),
                ("assignee", order.assignee),
                ("centre", order.centre_id),
                ("outcome", order.outcome),
                ("new_serial", order.new_serial),
                ("replaced_at", order.replaced_at),
                ("old_final", order.old_final if order.new_serial else None),
                ("new_initial", order.new_initial if order.new_serial else None),
                ("note", order.note),
            )
            if v
        }
        await self.svc.audit(who, f"workorders.{what}", order.order_id, detail=detail)
        return order.public()

    def centres(self, who: Principal) -> list[dict[str, Any]]:
        """Service centres in `who`'s regions, with their open orders."""
        scope = who.region_filter()
        db = self.svc.db
        where = ""
        if scope is not None:
            where = "HAVING region IN ({regions:Array(String)})"
        _, rows = self.svc.store.query(
            f"SELECT c.centre_id, c.name, c.region, c.districts, c.phone, "
            f"ifNull(o.active, 0), ifNull(o.overdue, 0) FROM "
            f"(SELECT centre_id, argMax(name, updated_at) AS name, "
            f"argMax(region, updated_at) AS region, argMax(districts, updated_at) AS districts, "
            f"argMax(phone, updated_at) AS phone FROM {db}.service_centres "
            f"GROUP BY centre_id {where}) AS c "
            f"LEFT JOIN (SELECT centre_id, countIf(state != 'closed') AS active, "
            f"countIf(state != 'closed' AND due_at < toDateTime({{now:Int64}})) AS overdue "
            f"FROM {db}.work_orders GROUP BY centre_id) AS o ON o.centre_id = c.centre_id "
            f"ORDER BY c.region, c.centre_id",
            {"regions": list(scope or ()), "now": int(self.svc.clock.now())},
        )
        keys = ("centre_id", "name", "region", "districts", "phone", "active", "overdue")
        return [dict(zip(keys, r, strict=True)) for r in rows]
