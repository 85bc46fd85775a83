"""The HTTP side of the store process: JSON API, Prometheus metrics, health, and the
situation-room page (aiohttp on the store's event loop).

Reads come from a snapshot refreshed every `[http] refresh` seconds (the grid view)
or from ClickHouse queries run in the executor (a meter's data, balances, rankings);
writes (billing accounts, commands) go through the same store methods as the admin
socket and need the bearer token. The OpenAPI description is `openapi.SPEC`; a test
keeps it and the routes in step.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import orjson
from aiohttp import web

from headend import balance
from headend.billing import import_records
from headend.clock import Clock
from headend.config import Config
from headend.errors import HeadendError
from headend.ownership import Ownership
from headend.web import metrics, openapi, room

log = logging.getLogger("headend.web")

STATIC = Path(__file__).parent / "static"
# Debian's libjs-leaflet and libjs-chart.js, served under /vendor/.
VENDOR = ("leaflet", "chart.js")
MAX_BODY = 32 << 20
MAX_LIMIT = 10_000


class Backend(Protocol):
    """What the store process offers the HTTP layer (see server/store.py)."""

    cfg: Config
    db: str
    clock: Clock
    owner: Ownership

    @property
    def store(self) -> Any: ...
    @property
    def commands(self) -> Any: ...
    def status(self) -> dict[str, Any]: ...
    def online_by_node(self) -> dict[str, int]: ...
    async def submit_command(self, req: dict[str, Any]) -> dict[str, Any]: ...
    async def submit_commands(
        self, items: list[Any], requested_by: str, reason: str = ""
    ) -> dict[str, Any]: ...
    async def policy_pass(self, act: bool) -> dict[str, Any]: ...


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, default=str, option=orjson.OPT_NON_STR_KEYS)


def ok(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=dumps(obj), status=status, content_type="application/json")


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Api:
    def __init__(self, backend: Backend) -> None:
        self.b = backend
        self.cfg = backend.cfg.http
        self.trusted = [
            ipaddress.ip_network(n.strip(), strict=False)
            for n in self.cfg.open_reads.split(",")
            if n.strip()
        ]
        self.snap: room.Snapshot | None = None
        self.snap_error: str | None = None
        self.refreshed = asyncio.Event()
        self.requests: dict[tuple[str, int], int] = {}

    # -- plumbing --------------------------------------------------------------------------

    async def run_db(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, functools.partial(fn, *args, **kw))

    def _token_ok(self, request: web.Request) -> bool:
        token = self.cfg.token
        given = request.headers.get("Authorization", "")
        return bool(token) and hmac.compare_digest(given.encode(), f"Bearer {token}".encode())

    def _trusted(self, request: web.Request) -> bool:
        peer = request.remote or ""
        try:
            ip = ipaddress.ip_address(peer.split("%")[0])
        except ValueError:
            return False
        return any(ip in n for n in self.trusted)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        status = 500
        try:
            write = request.method not in ("GET", "HEAD")
            # The page, its scripts, /healthz, /metrics and the API description hold no
            # grid data; everything else under /api/ does.
            public = not request.path.startswith("/api/") or request.path == "/api/openapi.json"
            if write and not self.cfg.token:
                raise HttpError(403, "writes are disabled: set [http] token")
            if write and not self._token_ok(request):
                raise HttpError(401, "this needs the bearer token of [http] token")
            if (
                not write
                and not public
                and not self._trusted(request)
                and not self._token_ok(request)
            ):
                raise HttpError(401, "reads from this address need the bearer token")
            resp = await handler(request)
            status = resp.status
            return resp
        except HttpError as e:
            status = e.status
            return ok({"error": str(e)}, e.status)
        except web.HTTPException as e:
            status = e.status
            if e.status >= 400:
                return ok({"error": e.reason}, e.status)
            raise
        except HeadendError as e:
            status = 404 if "unknown meter" in str(e) else 400
            return ok({"error": str(e)}, status)
        except Exception as e:  # never let a request take the store down
            log.exception("HTTP %s %s failed", request.method, request.path)
            return ok({"error": f"internal error: {type(e).__name__}"}, 500)
        finally:
            route = request.match_info.route.resource
            key = (route.canonical if route is not None else "other", status)
            self.requests[key] = self.requests.get(key, 0) + 1

    # -- parameters ----------------------------------------------------------------------

    @staticmethod
    def _int(
        request: web.Request, name: str, default: int, lo: int = 1, hi: int = MAX_LIMIT
    ) -> int:
        raw = request.query.get(name)
        if raw is None:
            return default
        try:
            v = int(raw)
        except ValueError:
            raise HttpError(400, f"{name}={raw!r} is not a whole number") from None
        if not lo <= v <= hi:
            raise HttpError(400, f"{name}={v} is out of range {lo}..{hi}")
        return v

    def _window(self, request: web.Request, default_span: int) -> tuple[int, int]:
        now = int(self.b.clock.now())
        a, b = request.query.get("from"), request.query.get("to")
        end = balance.parse_time(b) if b else now + 1
        start = balance.parse_time(a) if a else end - default_span
        if end <= start:
            raise HttpError(400, "'to' must be after 'from'")
        return start, end

    async def _json_body(self, request: web.Request) -> Any:
        try:
            return orjson.loads(await request.read())
        except orjson.JSONDecodeError as e:
            raise HttpError(400, f"the body is not JSON: {e}") from None

    # -- the snapshot ---------------------------------------------------------------------

    async def refresh_once(self) -> None:
        online = self.b.online_by_node()
        snap = await self.run_db(room.snapshot, self.b.store, self.b.db, self.b.clock.now(), online)
        self.snap, self.snap_error = snap, None
        self.refreshed.set()

    async def keep_fresh(self) -> None:
        while True:
            try:
                await self.refresh_once()
            except Exception as e:
                self.snap_error = str(e)
                log.error("situation-room refresh failed (will retry): %s", e)
            await asyncio.sleep(self.cfg.refresh)

    async def snapshot(self) -> room.Snapshot:
        if self.snap is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.refreshed.wait(), 30)
        if self.snap is None:
            raise HttpError(503, f"the grid view is not ready yet ({self.snap_error or 'loading'})")
        return self.snap

    # -- handlers -------------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        st = self.b.status()
        ingest = st["ingest"]
        problems = []
        if ingest.get("error"):
            problems.append(f"ingest failing: {ingest['error']}")
        expected = self.b.cfg.workers
        connected = sum(1 for w in st["workers"] if w["connected"])
        if connected < expected:
            problems.append(f"{connected} of {expected} workers connected")
        body = {
            "ok": not problems,
            "problems": problems,
            "workers": connected,
            "sessions": st["sessions"],
            "spool_backlog_bytes": st["spool_backlog_bytes"],
            "uptime_s": st["uptime_s"],
        }
        return ok(body, 200 if not problems else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        text = metrics.render(self.b.status(), self.b.online_by_node(), self.requests)
        return web.Response(
            text=text,
            content_type="text/plain",
            charset="utf-8",
            headers={"X-Content-Format": "prometheus-0.0.4"},
        )

    async def spec(self, request: web.Request) -> web.Response:
        return ok(openapi.SPEC)

    async def summary(self, request: web.Request) -> web.Response:
        snap = await self.snapshot()
        st = self.b.status()
        return ok(
            {
                **snap.summary(),
                "sessions": st["sessions"],
                "pushes_per_s": st["pushes_per_s"],
                "readings_per_s": st["readings_per_s"],
                "clock_speed": self.b.clock.speed,
                "commands": st["commands"],
            }
        )

    async def link(self, request: web.Request) -> web.Response:
        """This node's place (role, what it owns) and its link to its peers."""
        st = self.b.status()
        return ok({"node": st["node"], "link": st["link"]})

    async def nodes(self, request: web.Request) -> web.Response:
        snap = await self.snapshot()
        level = request.query.get("level")
        parent = request.query.get("parent")
        return ok(
            {"day": snap.day, "now": snap.now, "nodes": snap.node_list(level=level, parent=parent)}
        )

    async def node(self, request: web.Request) -> web.Response:
        snap = await self.snapshot()
        node_id = request.match_info["node_id"]
        n = snap.nodes.get(node_id)
        if n is None:
            raise HttpError(404, f"unknown grid node {node_id}")
        path = []
        p = snap.nodes.get(n.parent_id)
        while p is not None:
            path.append({"node_id": p.node_id, "name": p.name, "level": p.level})
            p = snap.nodes.get(p.parent_id)
        return ok(
            {
                "day": snap.day,
                "node": n.public(),
                "path": path[::-1],
                "children": [c.public() for c in sorted(n.children, key=lambda c: c.node_id)],
            }
        )

    async def node_meters(self, request: web.Request) -> web.Response:
        snap = await self.snapshot()
        node_id = request.match_info["node_id"]
        if node_id not in snap.nodes:
            raise HttpError(404, f"unknown grid node {node_id}")
        rows = await self.run_db(
            room.node_meters, self.b.store, self.b.db, node_id, self.b.clock.now()
        )
        return ok({"node_id": node_id, "day": snap.day, "meters": rows})

    async def balances(self, request: web.Request) -> web.Response:
        level = request.query.get("level", "transformer")
        period = request.query.get("period", "hour")
        start, end = self._window(request, 86_400)
        if end - start > 400 * 86_400:
            raise HttpError(400, "a window longer than 400 days")
        cols, rows = await self.run_db(
            balance.report,
            self.b.store,
            self.b.db,
            level=level,
            period=period,
            start=start,
            end=end,
            node=request.query.get("node") or None,
        )
        return ok(
            {
                "level": level,
                "period": period,
                "from": start,
                "to": end,
                "rows": room.table(cols, rows),
            }
        )

    async def losses(self, request: web.Request) -> web.Response:
        level = request.query.get("level", "transformer")
        period = request.query.get("period")
        now = int(self.b.clock.now())
        if period:
            if period not in balance.PERIODS:
                raise HttpError(400, f"unknown period {period!r}")
            start, end = balance.last_period(period, now)
        elif "from" in request.query or "to" in request.query:
            start, end = self._window(request, 86_400)
        else:  # today so far
            start, end = room.local_day_start(now), now + 1
        try:
            minc = float(request.query.get("min_completeness", "0.9"))
        except ValueError:
            raise HttpError(400, "min_completeness is not a number") from None
        cols, rows = await self.run_db(
            balance.losses,
            self.b.store,
            self.b.db,
            level=level,
            start=start,
            end=end,
            top=self._int(request, "top", 20),
            min_completeness=minc,
        )
        return ok({"level": level, "from": start, "to": end, "rows": room.table(cols, rows)})

    async def anomalies(self, request: web.Request) -> web.Response:
        rows = await self.run_db(
            room.anomalies, self.b.store, self.b.db, self._int(request, "limit", 100)
        )
        return ok({"rows": rows})

    async def _meter_or_404(self, serial: str) -> dict[str, Any]:
        m = await self.run_db(room.meter, self.b.store, self.b.db, serial)
        if m is None:
            raise HttpError(404, f"unknown meter {serial}")
        return dict(m)

    async def meter(self, request: web.Request) -> web.Response:
        serial = request.match_info["serial"]
        m = await self._meter_or_404(serial)
        pending = [c.public() for c in self.b.commands.commands.values() if c.serial == serial]
        return ok({**m, "commands_pending": pending})

    async def meter_readings(self, request: web.Request) -> web.Response:
        serial = request.match_info["serial"]
        await self._meter_or_404(serial)
        start, end = self._window(request, 86_400)
        rows = await self.run_db(
            room.readings,
            self.b.store,
            self.b.db,
            serial,
            start=start,
            end=end,
            limit=self._int(request, "limit", 1000),
        )
        return ok({"serial": serial, "from": start, "to": end, "rows": rows})

    async def meter_events(self, request: web.Request) -> web.Response:
        serial = request.match_info["serial"]
        await self._meter_or_404(serial)
        start, end = self._window(request, 30 * 86_400)
        rows = await self.run_db(
            room.events,
            self.b.store,
            self.b.db,
            start=start,
            end=end,
            limit=self._int(request, "limit", 1000),
            serial=serial,
        )
        return ok({"serial": serial, "from": start, "to": end, "rows": rows})

    async def meter_commands(self, request: web.Request) -> web.Response:
        serial = request.match_info["serial"]
        await self._meter_or_404(serial)
        rows = await self.run_db(
            room.command_history,
            self.b.store,
            self.b.db,
            serial=serial,
            limit=self._int(request, "limit", 100),
        )
        return ok({"serial": serial, "rows": rows})

    async def alarms(self, request: web.Request) -> web.Response:
        start, end = self._window(request, 86_400)
        rows = await self.run_db(
            room.events,
            self.b.store,
            self.b.db,
            start=start,
            end=end,
            limit=self._int(request, "limit", 50),
            categories=room.ALARM_CATEGORIES,
        )
        return ok({"from": start, "to": end, "rows": rows})

    async def health(self, request: web.Request) -> web.Response:
        out = await self.run_db(
            room.health,
            self.b.store,
            self.b.db,
            self.b.clock.now(),
            self.snap,
            self.b.cfg.commands.clock_threshold,
        )
        st = self.b.status()
        out["sessions"] = st["sessions"]
        out["rejects"] = st["rejects"]
        return ok(out)

    async def commands(self, request: web.Request) -> web.Response:
        serial = request.query.get("serial") or None
        kinds = set(filter(None, request.query.get("kind", "").split(",")))
        pending = [
            c.public()
            for c in self.b.commands.commands.values()
            if (serial is None or c.serial == serial) and (not kinds or c.kind in kinds)
        ]
        history = await self.run_db(
            room.command_history,
            self.b.store,
            self.b.db,
            serial=serial,
            limit=self._int(request, "limit", 100),
            kinds=tuple(sorted(kinds)),
        )
        return ok({"pending": pending, "recent": history, "stats": self.b.commands.stats()})

    async def submit_command(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        if isinstance(body, list):  # a batch: queued, not waited for
            if len(body) > MAX_LIMIT:
                raise HttpError(400, f"at most {MAX_LIMIT} commands per request")
            r = await self.b.submit_commands(body, requested_by=f"http:{request.remote}")
            return ok(r, 202 if not r["rejected"] else 207)
        if not isinstance(body, dict) or "serial" not in body or "kind" not in body:
            raise HttpError(400, "expected an object with serial and kind")
        unknown = set(body) - {"serial", "kind", "args", "reason", "wait", "expires_in"}
        if unknown:
            raise HttpError(400, f"unknown field(s) {', '.join(sorted(unknown))}")
        req = {**body, "requested_by": f"http:{request.remote}"}
        req.setdefault("wait", 0)
        result = await self.b.submit_command(req)
        return ok(result, 202 if result["state"] in ("queued", "running", "retry") else 200)

    async def billing_status(self, request: web.Request) -> web.Response:
        r = await self.b.policy_pass(False)
        rows = room.table(r["columns"], [tuple(x) for x in r["rows"]])
        acc = request.query.get("account")
        if acc:
            rows = [x for x in rows if x["account_id"] == acc]
        elif request.query.get("all") not in ("1", "true"):
            rows = [x for x in rows if x["action"] != "none"]
        return ok({"rows": rows})

    async def billing_accounts(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        records = body.get("accounts") if isinstance(body, dict) else body
        if not isinstance(records, list):
            raise HttpError(400, 'expected a list of accounts (or {"accounts": [...]})')
        report = await self.run_db(
            import_records, records, self.b.store, "request", self.b.db, self.b.owner
        )
        out: dict[str, Any] = {
            "loaded": report.loaded,
            "rejected": [{"index": i, "reason": why} for i, why in report.bad],
        }
        if report.loaded and self.b.cfg.billing.policy:
            done = await self.b.policy_pass(True)  # payments take effect now
            out["policy"] = done.get("done")
        return ok(out, 200 if not report.bad else 207)

    async def index(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")

    # -- the application ---------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.middleware], client_max_size=MAX_BODY)
        r = app.router
        r.add_get("/", self.index)
        r.add_get("/healthz", self.healthz)
        r.add_get("/metrics", self.metrics)
        r.add_get("/api/openapi.json", self.spec)
        r.add_get("/api/summary", self.summary)
        r.add_get("/api/link", self.link)
        r.add_get("/api/nodes", self.nodes)
        r.add_get("/api/nodes/{node_id}", self.node)
        r.add_get("/api/nodes/{node_id}/meters", self.node_meters)
        r.add_get("/api/balances", self.balances)
        r.add_get("/api/losses", self.losses)
        r.add_get("/api/anomalies", self.anomalies)
        r.add_get("/api/alarms", self.alarms)
        r.add_get("/api/health", self.health)
        r.add_get("/api/meters/{serial}", self.meter)
        r.add_get("/api/meters/{serial}/readings", self.meter_readings)
        r.add_get("/api/meters/{serial}/events", self.meter_events)
        r.add_get("/api/meters/{serial}/commands", self.meter_commands)
        r.add_get("/api/commands", self.commands)
        r.add_post("/api/commands", self.submit_command)
        r.add_get("/api/billing/status", self.billing_status)
        r.add_post("/api/billing/accounts", self.billing_accounts)
        r.add_static("/static/", STATIC)
        js = Path(self.cfg.js_dir)
        for sub in VENDOR:
            if (js / sub).is_dir():
                r.add_static(f"/vendor/{sub}/", js / sub)
            else:
                log.warning("%s not found: the page needs Debian's libjs-%s", js / sub, sub)
        return app


async def serve(backend: Backend) -> tuple[web.AppRunner, Api] | None:
    """Starts the HTTP server on the running loop; None when `[http] port` is 0."""
    cfg = backend.cfg.http
    if cfg.port == 0:
        return None
    api = Api(backend)
    runner = web.AppRunner(api.app(), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, cfg.host, cfg.port, reuse_address=True)
    try:
        await site.start()
    except OSError as e:
        await runner.cleanup()
        raise HeadendError(f"HTTP cannot listen on {cfg.host}:{cfg.port}: {e.strerror}") from e
    log.info("HTTP API and situation room on http://%s:%d/", cfg.host, cfg.port)
    return runner, api
