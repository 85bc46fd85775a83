"""The HTTP side of the store process: JSON API, Prometheus metrics, health, and the
situation-room page (aiohttp on the store's event loop).

Reads come from a snapshot refreshed every `[http] refresh` seconds (the grid view)
or from ClickHouse queries run in the executor (a meter's data, balances, rankings);
writes (billing accounts, commands) go through the same store methods as the admin
socket. The OpenAPI description is `openapi.SPEC`; a test keeps it and the routes in
step.

People (DESIGN.md section 10, `headend.people`): every request but the page's files,
/healthz, the API description and the login itself is made by a person, who logs in
(a session cookie, HttpOnly and SameSite=Strict, whose writes also carry the
X-CSRF-Token header) or sends a personal API token (``Authorization: Bearer
hk_...``). Each route needs a permission (`PERMISSION`), and what a person sees and
touches is kept to their regions. The Host header must name this server (no DNS
rebinding); slow headers and bodies are cut off.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import ipaddress
import logging
import ssl
import time
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
from headend.payments import payment_records
from headend.people import AccessError, LoginError, People, Principal
from headend.web import metrics, openapi, reports, room, workorders

log = logging.getLogger("headend.web")

STATIC = Path(__file__).parent / "static"
# Debian's libjs-leaflet and libjs-chart.js, served under /vendor/.
VENDOR = ("leaflet", "chart.js")
MAX_BODY = 32 << 20
MAX_LIMIT = 10_000
COOKIE = "headend_session"
WHO = web.RequestKey("who", Principal)
"""The person making the request (set by the middleware)."""

PUBLIC = {"/", "/healthz", "/api/openapi.json", "/api/login", "/api/me"}
"""Paths anyone may ask for (with /static/ and /vendor/): no grid data in them."""

PERMISSION: dict[tuple[str, str], str] = {
    ("POST", "/api/commands"): "command",
    ("GET", "/api/billing/status"): "policy",
    ("POST", "/api/billing/accounts"): "billing",
    ("POST", "/api/billing/payments"): "billing",
    ("GET", "/api/billing/determinants"): "billing",
    ("GET", "/api/users"): "admin",
    ("POST", "/api/users"): "admin",
    ("POST", "/api/users/{name}"): "admin",
    ("POST", "/api/users/{name}/password"): "read",  # their own, or an admin
    ("POST", "/api/users/{name}/tokens"): "read",  # their own, or an admin
    ("DELETE", "/api/tokens/{token_id}"): "read",  # their own, or an admin
    ("GET", "/api/audit"): "admin",
    ("POST", "/api/meters/{serial}/keys"): "admin",
    ("POST", "/api/waves"): "admin",
    ("POST", "/api/waves/{wave_id}/stop"): "admin",
    ("POST", "/api/waves/{wave_id}/resume"): "admin",
    ("POST", "/api/workorders"): "work",
    ("POST", "/api/workorders/{order_id}/assign"): "work",
    ("POST", "/api/workorders/{order_id}/visit"): "work",
    ("POST", "/api/workorders/{order_id}/close"): "work",
    ("POST", "/api/approvals/{approval_id}/approve"): "read",  # the request's role, checked
    ("POST", "/api/approvals/{approval_id}/reject"): "read",  # by the approvals
}
"""What each route needs beyond logging in (`headend.people.PERMISSIONS`); any other
route reads, which every role may (within its regions)."""


class Backend(Protocol):
    """What the store process offers the HTTP layer (see server/store.py)."""

    cfg: Config
    db: str
    clock: Clock
    owner: Ownership
    people: People
    submitter: Any
    fieldwork: Any

    @property
    def store(self) -> Any: ...
    @property
    def commands(self) -> Any: ...
    def status(self) -> dict[str, Any]: ...
    def online_by_node(self) -> dict[str, int]: ...
    async def submit_command(self, req: dict[str, Any], who: Principal) -> dict[str, Any]: ...
    async def submit_commands(
        self, items: list[Any], who: Principal, reason: str = ""
    ) -> dict[str, Any]: ...
    async def policy_pass(self, act: bool) -> dict[str, Any]: ...
    async def wave_request(self, what: str, req: dict[str, Any], who: Principal) -> Any: ...
    async def audit(
        self,
        who: Principal,
        action: str,
        target: str = "",
        outcome: str = "ok",
        detail: dict[str, Any] | None = None,
    ) -> None: ...


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
        self.tls = bool(self.cfg.tls_cert)
        self.snap: room.Snapshot | None = None
        self.snap_error: str | None = None
        self.refreshed = asyncio.Event()
        self.requests: dict[tuple[str, int], int] = {}

    # -- plumbing --------------------------------------------------------------------------

    async def run_db(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, functools.partial(fn, *args, **kw))

    def _trusted(self, request: web.Request) -> bool:
        peer = request.remote or ""
        try:
            ip = ipaddress.ip_address(peer.split("%")[0])
        except ValueError:
            return False
        return any(ip in n for n in self.trusted)

    def _host_ok(self, request: web.Request) -> bool:
        """The Host header names this server: an IP address, localhost, or one of
        `[http] server_names`. A page another site's name resolves here (DNS
        rebinding) names that site, and is refused."""
        host = request.headers.get("Host", "")
        if host.startswith("["):
            name = host[1 : host.find("]")] if "]" in host else host
        else:
            name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
        name = name.lower().rstrip(".")
        if not name:
            return False
        if name in ("localhost", *(n.lower() for n in self.cfg.server_names)):
            return True
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return True

    def _source(self, request: web.Request) -> str:
        return f"http:{request.remote}"

    async def _authenticate(self, request: web.Request, write: bool) -> Principal:
        """The person behind the request: a personal token, or a session cookie (whose
        writes must carry its CSRF token)."""
        people = self.b.people
        auth = request.headers.get("Authorization")
        if auth is not None:
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer" or not token:
                raise HttpError(401, "Authorization must be 'Bearer <personal API token>'")
            try:
                return people.by_token(token.strip(), self._source(request))
            except LoginError as e:
                raise HttpError(401, str(e)) from None
        sid = request.cookies.get(COOKIE)
        if not sid:
            raise HttpError(401, "log in first (POST /api/login) or send a personal API token")
        try:
            who, session = people.by_session(sid, self._source(request))
        except LoginError as e:
            raise HttpError(401, str(e)) from None
        if write and not hmac.compare_digest(
            request.headers.get("X-CSRF-Token", "").encode(), session.csrf.encode()
        ):
            raise HttpError(403, "this write needs the session's X-CSRF-Token header")
        return who

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        status = 500
        try:
            if not self._host_ok(request):
                raise HttpError(
                    421, f"Host {request.headers.get('Host', '')!r} is not a name of this server"
                )
            if self.tls and not request.secure and not self._trusted(request):
                raise HttpError(403, "this server speaks HTTPS: use https:// on its port")
            write = request.method not in ("GET", "HEAD")
            path = request.path
            resource = request.match_info.route.resource
            canonical = resource.canonical if resource is not None else path
            public = (
                path in PUBLIC
                or path.startswith(("/static/", "/vendor/"))
                or (path == "/metrics" and self._trusted(request))
            )
            if not public:
                who = await self._authenticate(request, write)
                request[WHO] = who
                who.require(PERMISSION.get((request.method, canonical), "read"))
            resp = await handler(request)
            status = resp.status
            return resp
        except HttpError as e:
            status = e.status
            return ok({"error": str(e)}, e.status)
        except AccessError as e:
            status = 403
            refused = request.get(WHO)
            if refused is not None and request.method not in ("GET", "HEAD"):
                # A write refused for want of a role is on the record too.
                await self.b.audit(
                    refused, "http", f"{request.method} {request.path}", "refused", {"why": str(e)}
                )
            return ok({"error": str(e)}, 403)
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

    @staticmethod
    def who(request: web.Request) -> Principal:
        return request[WHO]

    @classmethod
    def scope(cls, request: web.Request) -> tuple[str, ...] | None:
        """The person's regions (None: the republic)."""
        return cls.who(request).region_filter()

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

    @staticmethod
    def _time(name: str, raw: str) -> int:
        try:
            t = balance.parse_time(raw)
        except (HeadendError, ValueError, OverflowError, OSError) as e:
            raise HttpError(400, f"{name}={raw!r} is not a time: {e}") from None
        if not 0 <= t < 1 << 32:
            raise HttpError(400, f"{name}={raw!r} is out of range (1970..2106)")
        return t

    def _window(self, request: web.Request, default_span: int) -> tuple[int, int]:
        now = int(self.b.clock.now())
        a, b = request.query.get("from"), request.query.get("to")
        end = self._time("to", b) if b else now + 1
        start = self._time("from", a) if a else max(0, end - default_span)
        if end <= start:
            raise HttpError(400, "'to' must be after 'from'")
        return start, end

    async def _json_body(self, request: web.Request) -> Any:
        try:
            body = await asyncio.wait_for(request.read(), self.cfg.body_timeout)
        except TimeoutError:
            raise HttpError(408, f"the body took longer than {self.cfg.body_timeout:g} s") from None
        try:
            return orjson.loads(body)
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
                # Received by the workers, over this many real seconds (not simulated).
                "rates_window_s": st.get("rates_window_s", 0.0),
                "stored_rows_per_s": st["ingest"]["rows_per_s"],
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
        nodes = snap.node_list(level=level, parent=parent, regions=self.scope(request))
        return ok({"day": snap.day, "now": snap.now, "nodes": nodes})

    async def _visible_node(self, request: web.Request, node_id: str) -> room.Snapshot:
        """The snapshot, once `node_id` is known and within the person's regions (a
        node outside them is as unknown as one that does not exist)."""
        snap = await self.snapshot()
        if node_id not in snap.nodes or not snap.visible(node_id, self.scope(request)):
            raise HttpError(404, f"unknown grid node {node_id}")
        return snap

    async def node(self, request: web.Request) -> web.Response:
        node_id = request.match_info["node_id"]
        snap = await self._visible_node(request, node_id)
        scope = self.scope(request)
        n = snap.nodes[node_id]
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
                "children": [
                    c.public()
                    for c in sorted(n.children, key=lambda c: c.node_id)
                    if snap.visible(c.node_id, scope)
                ],
            }
        )

    async def node_meters(self, request: web.Request) -> web.Response:
        node_id = request.match_info["node_id"]
        snap = await self._visible_node(request, node_id)
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
                "rows": await self._visible_rows(request, room.table(cols, rows)),
            }
        )

    async def _visible_rows(
        self, request: web.Request, rows: list[dict[str, Any]], top: int | None = None
    ) -> list[dict[str, Any]]:
        """The rows (each with a node_id) within the person's regions, at most `top`."""
        scope = self.scope(request)
        if scope is not None:
            snap = await self.snapshot()
            rows = [r for r in rows if snap.visible(str(r.get("node_id")), scope)]
        return rows if top is None else rows[:top]

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
        if not 0.0 <= minc <= 1.0:  # NaN fails this too
            raise HttpError(400, f"min_completeness={minc} is out of range 0..1")
        top = self._int(request, "top", 20)
        # A person of some regions gets the top of their regions: rank them all first.
        cols, rows = await self.run_db(
            balance.losses,
            self.b.store,
            self.b.db,
            level=level,
            start=start,
            end=end,
            top=top if self.scope(request) is None else 1_000_000,
            min_completeness=minc,
        )
        found = await self._visible_rows(request, room.table(cols, rows), top)
        return ok({"level": level, "from": start, "to": end, "rows": found})

    async def anomalies(self, request: web.Request) -> web.Response:
        rows = await self.run_db(
            room.anomalies,
            self.b.store,
            self.b.db,
            self._int(request, "limit", 100),
            self.scope(request),
        )
        return ok({"rows": rows})

    async def _meter_or_404(self, request: web.Request, serial: str) -> dict[str, Any]:
        """The meter, if it exists within the person's regions."""
        m = await self.run_db(room.meter, self.b.store, self.b.db, serial)
        if m is None or not self.who(request).sees(str(m.get("region", ""))):
            raise HttpError(404, f"unknown meter {serial}")
        return dict(m)

    async def meter(self, request: web.Request) -> web.Response:
        serial = request.match_info["serial"]
        m = await self._meter_or_404(request, serial)
        pending = [c.public() for c in self.b.commands.commands.values() if c.serial == serial]
        return ok({**m, "commands_pending": pending})

    async def meter_readings(self, request: web.Request) -> web.Response:
        serial = request.match_info["serial"]
        await self._meter_or_404(request, serial)
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
        await self._meter_or_404(request, serial)
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
        await self._meter_or_404(request, serial)
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
            regions=self.scope(request),
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
            scope=self.scope(request),
        )
        st = self.b.status()
        out["sessions"] = st["sessions"]
        out["rejects"] = st["rejects"]
        return ok(out)

    async def commands(self, request: web.Request) -> web.Response:
        serial = request.query.get("serial") or None
        kinds = set(filter(None, request.query.get("kind", "").split(",")))
        scope = self.scope(request)
        queue = self.b.commands.commands
        snap = await self.snapshot() if scope is not None and queue else None
        pending = [
            c.public()
            for c in self.b.commands.commands.values()
            if (serial is None or c.serial == serial)
            and (not kinds or c.kind in kinds)
            and (snap is None or snap.visible(c.node_id, scope))
        ]
        history = await self.run_db(
            room.command_history,
            self.b.store,
            self.b.db,
            serial=serial,
            limit=self._int(request, "limit", 100),
            kinds=tuple(sorted(kinds)),
            regions=scope,
        )
        return ok({"pending": pending, "recent": history, "stats": self.b.commands.stats()})

    async def submit_command(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        who = self.who(request)
        if isinstance(body, list):  # a batch: queued, not waited for
            if len(body) > MAX_LIMIT:
                raise HttpError(400, f"at most {MAX_LIMIT} commands per request")
            r = await self.b.submit_commands(body, who)
            return ok(r, 202 if not r["rejected"] else 207)
        if not isinstance(body, dict) or "serial" not in body or "kind" not in body:
            raise HttpError(400, "expected an object with serial and kind")
        unknown = set(body) - {"serial", "kind", "args", "reason", "wait", "expires_in"}
        if unknown:
            raise HttpError(400, f"unknown field(s) {', '.join(sorted(unknown))}")
        req = dict(body)
        req.setdefault("wait", 0)
        result = await self.b.submit_command(req, who)
        waiting = ("queued", "running", "retry", "awaiting_approval")
        return ok(result, 202 if result["state"] in waiting else 200)

    async def billing_status(self, request: web.Request) -> web.Response:
        r = await self.b.policy_pass(False)
        rows = await self._visible_rows(
            request, room.table(r["columns"], [tuple(x) for x in r["rows"]])
        )
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
        who = self.who(request)
        report = await self.run_db(
            import_records,
            records,
            self.b.store,
            "request",
            self.b.db,
            self.b.owner,
            sees=None if who.republic else who.sees,
        )
        out: dict[str, Any] = {
            "loaded": report.loaded,
            "rejected": [{"index": i, "reason": why} for i, why in report.bad],
        }
        await self.b.audit(
            who,
            "billing.import",
            f"{report.loaded} accounts",
            "ok" if report.loaded else "refused",
            {"loaded": report.loaded, "rejected": len(report.bad)},
        )
        if report.loaded and self.b.cfg.billing.policy:
            done = await self.b.policy_pass(True)  # payments take effect now
            out["policy"] = done.get("done")
        return ok(out, 200 if not report.bad else 207)

    async def billing_payments(self, request: web.Request) -> web.Response:
        """Payments as records, idempotent by payment id; a policy pass at once."""
        body = await self._json_body(request)
        records = body.get("payments") if isinstance(body, dict) else body
        if not isinstance(records, list):
            raise HttpError(400, 'expected a list of payments (or {"payments": [...]})')
        who = self.who(request)
        report = await self.run_db(
            payment_records,
            records,
            self.b.store,
            self.b.db,
            self.b.owner,
            now=self.b.clock.now(),
            sees=None if who.republic else who.sees,
        )
        out: dict[str, Any] = {
            "loaded": report.loaded,
            "repeated": report.repeated,
            "rejected": [{"index": i, "reason": why} for i, why in report.bad],
        }
        await self.b.audit(
            who,
            "billing.payments",
            f"{report.loaded} payments",
            "ok" if report.loaded or report.repeated else "refused",
            {"loaded": report.loaded, "repeated": report.repeated, "rejected": len(report.bad)},
        )
        if report.loaded and self.b.cfg.billing.policy:
            done = await self.b.policy_pass(True)
            out["policy"] = done.get("done")
        return ok(out, 200 if not report.bad else 207)

    # -- people -----------------------------------------------------------------------

    def _secure(self, request: web.Request) -> bool:
        return request.secure

    async def login(self, request: web.Request) -> web.Response:
        """Name and password in, a session cookie and its CSRF token out. Repeated
        failures for a name or from an address are answered ever more slowly, and
        every attempt is an audit row."""
        body = await self._json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            raise HttpError(400, 'expected {"name": ..., "password": ...}')
        name, password = body["name"][:64], body.get("password")
        if not isinstance(password, str) or len(password) > 1024:
            raise HttpError(400, "password must be a string")
        people = self.b.people
        keys = [f"name:{name}", f"ip:{request.remote}"]
        delay = people.throttle.delay(keys, time.monotonic())
        if delay:
            await asyncio.sleep(delay)
        try:
            who = await self.run_db(people.by_password, name, password, self._source(request))
        except LoginError as e:
            people.throttle.failed(keys, time.monotonic())
            raise HttpError(401, str(e)) from None
        people.throttle.succeeded(keys)
        session = people.open_session(who)
        resp = ok({"user": who.public(), "csrf": session.csrf})
        resp.set_cookie(
            COOKIE,
            session.sid,
            httponly=True,
            samesite="Strict",
            secure=self._secure(request),
            path="/",
            max_age=int(self.cfg.session_max),
        )
        return resp

    async def logout(self, request: web.Request) -> web.Response:
        who = self.who(request)
        sid = request.cookies.get(COOKIE)
        if sid:
            self.b.people.close_session(sid)
        await self.b.audit(who, "logout", who.name)
        resp = ok({"ok": True})
        resp.del_cookie(COOKIE, path="/")
        return resp

    async def me(self, request: web.Request) -> web.Response:
        """Who is logged in (null: nobody), and for a page session the CSRF token its
        writes carry."""
        try:
            who = await self._authenticate(request, write=False)
        except HttpError as e:
            return ok({"user": None, "why": str(e), "node": self.b.owner.node})
        out: dict[str, Any] = {"user": who.public(), "node": self.b.owner.node}
        sid = request.cookies.get(COOKIE)
        if who.via == "session" and sid:
            s = self.b.people.sessions.get(sid)
            if s is not None:
                out["csrf"] = s.csrf
                out["expires_at"] = min(
                    s.last + self.b.people.idle, s.created + self.b.people.absolute
                )
        return ok(out)

    async def users(self, request: web.Request) -> web.Response:
        return ok({"users": self.b.people.list_users()})

    async def add_user(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        if not isinstance(body, dict):
            raise HttpError(400, "expected an object with name, roles, regions")
        unknown = set(body) - {"name", "roles", "regions", "password", "display_name"}
        if unknown:
            raise HttpError(400, f"unknown field(s) {', '.join(sorted(unknown))}")
        u = await self.run_db(
            lambda: self.b.people.add(
                self.who(request),
                str(body.get("name", "")),
                _strings(body.get("roles"), "roles"),
                _strings(body.get("regions"), "regions"),
                password=str(body.get("password") or ""),
                display_name=str(body.get("display_name") or ""),
            )
        )
        return ok(u.public(), 201)

    async def update_user(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        if not isinstance(body, dict):
            raise HttpError(400, "expected an object")
        unknown = set(body) - {"roles", "regions", "disabled", "display_name"}
        if unknown:
            raise HttpError(400, f"unknown field(s) {', '.join(sorted(unknown))}")
        if "disabled" in body and not isinstance(body["disabled"], bool):
            raise HttpError(400, "disabled must be true or false")
        u = await self.run_db(
            lambda: self.b.people.update(
                self.who(request),
                request.match_info["name"],
                roles=_strings(body["roles"], "roles") if "roles" in body else None,
                regions=_strings(body["regions"], "regions") if "regions" in body else None,
                disabled=body.get("disabled"),
                display_name=body.get("display_name"),
            )
        )
        return ok(u.public())

    async def set_password(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("password"), str):
            raise HttpError(400, 'expected {"password": ...}')
        await self.run_db(
            self.b.people.set_password,
            self.who(request),
            request.match_info["name"],
            body["password"],
        )
        return ok({"ok": True})

    async def issue_token(self, request: web.Request) -> web.Response:
        body = await self._json_body(request) if request.can_read_body else {}
        if not isinstance(body, dict):
            raise HttpError(400, "expected an object with label and expires_in")
        expires = body.get("expires_in")
        if expires is not None and (not isinstance(expires, (int, float)) or expires <= 0):
            raise HttpError(400, "expires_in must be a positive number of seconds")
        secret, t = await self.run_db(
            self.b.people.issue_token,
            self.who(request),
            request.match_info["name"],
            str(body.get("label") or ""),
            float(expires) if expires else None,
        )
        return ok({"token": secret, **t.public()}, 201)

    async def revoke_token(self, request: web.Request) -> web.Response:
        t = await self.run_db(
            self.b.people.revoke_token, self.who(request), request.match_info["token_id"]
        )
        return ok(t.public())

    async def audit(self, request: web.Request) -> web.Response:
        since = self._time("since", request.query["since"]) if "since" in request.query else 0
        rows = await self.run_db(
            lambda: self.b.people.read_audit(
                user=request.query.get("user") or None,
                action=request.query.get("action") or None,
                since=since,
                limit=self._int(request, "limit", 100),
            )
        )
        return ok({"rows": rows})

    # -- four eyes ---------------------------------------------------------------------

    async def approvals(self, request: web.Request) -> web.Response:
        """Requests waiting for a second person: the person's own, and those within
        their regions."""
        who = self.who(request)
        found = await self.run_db(self.b.submitter.approvals.visible, who)
        return ok({"pending": [r.public() for r in found]})

    async def _decide(self, request: web.Request, approve: bool) -> web.Response:
        body = await self._json_body(request) if request.can_read_body else {}
        note = str(body.get("note") or "") if isinstance(body, dict) else ""
        out = await self.b.submitter.decide(
            self.who(request), request.match_info["approval_id"], approve, note
        )
        return ok(out)

    async def approve(self, request: web.Request) -> web.Response:
        return await self._decide(request, True)

    async def reject(self, request: web.Request) -> web.Response:
        return await self._decide(request, False)

    async def waves(self, request: web.Request) -> web.Response:
        """Waves in the person's regions."""
        scope = self.scope(request)
        out = await self.b.wave_request("list", {}, self.who(request))
        return ok({"waves": [w for w in out["waves"] if scope is None or w["region"] in scope]})

    async def start_wave(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        if not isinstance(body, dict) or not {"kind", "region"} <= set(body):
            raise HttpError(400, "expected {kind, region, params, reason}")
        unknown = set(body) - {"kind", "region", "params", "reason"}
        if unknown:
            raise HttpError(400, f"unknown field(s) {', '.join(sorted(unknown))}")
        if not isinstance(body.get("params", {}), dict):
            raise HttpError(400, "params must be an object")
        return ok(await self.b.wave_request("start", body, self.who(request)), 201)

    async def stop_wave(self, request: web.Request) -> web.Response:
        body = await self._json_body(request) if request.can_read_body else {}
        why = str(body.get("why") or "") if isinstance(body, dict) else ""
        req = {"id": request.match_info["wave_id"], "why": why}
        return ok(await self.b.wave_request("stop", req, self.who(request)))

    async def resume_wave(self, request: web.Request) -> web.Response:
        req = {"id": request.match_info["wave_id"]}
        return ok(await self.b.wave_request("resume", req, self.who(request)))

    async def meter_keys(self, request: web.Request) -> web.Response:
        """New keys for a meter: wrapped at once, stored when a second admin approves."""
        body = await self._json_body(request)
        if not isinstance(body, dict) or set(body) - {"ek", "ak"} or not body:
            raise HttpError(400, 'expected {"ek": HEX, "ak": HEX}')
        serial = request.match_info["serial"]
        await self._meter_or_404(request, serial)
        r = await self.b.submitter.ask_keys(self.who(request), serial, body)
        return ok({"approval": r.public()}, 202)

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
        r.add_post("/api/login", self.login)
        r.add_post("/api/logout", self.logout)
        r.add_get("/api/me", self.me)
        r.add_get("/api/users", self.users)
        r.add_post("/api/users", self.add_user)
        r.add_post("/api/users/{name}", self.update_user)
        r.add_post("/api/users/{name}/password", self.set_password)
        r.add_post("/api/users/{name}/tokens", self.issue_token)
        r.add_delete("/api/tokens/{token_id}", self.revoke_token)
        r.add_get("/api/audit", self.audit)
        r.add_get("/api/approvals", self.approvals)
        r.add_post("/api/approvals/{approval_id}/approve", self.approve)
        r.add_post("/api/approvals/{approval_id}/reject", self.reject)
        r.add_post("/api/meters/{serial}/keys", self.meter_keys)
        r.add_get("/api/waves", self.waves)
        r.add_post("/api/waves", self.start_wave)
        r.add_post("/api/waves/{wave_id}/stop", self.stop_wave)
        r.add_post("/api/waves/{wave_id}/resume", self.resume_wave)
        for room_of_routes in (workorders, reports):
            room_of_routes.add_routes(self, r)
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
        r.add_post("/api/billing/payments", self.billing_payments)
        r.add_static("/static/", STATIC)
        js = Path(self.cfg.js_dir)
        for sub in VENDOR:
            if (js / sub).is_dir():
                r.add_static(f"/vendor/{sub}/", js / sub)
            else:
                log.warning("%s not found: the page needs Debian's libjs-%s", js / sub, sub)
        return app


def tls_context(cfg: Any) -> ssl.SSLContext | None:
    """The server's TLS context from `[http] tls_cert` and `tls_key`, or None."""
    if not cfg.tls_cert and not cfg.tls_key:
        return None
    if not cfg.tls_cert or not cfg.tls_key:
        raise HeadendError("[http] tls_cert and tls_key go together")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
    except (OSError, ssl.SSLError) as e:
        raise HeadendError(f"[http] cannot use {cfg.tls_cert} / {cfg.tls_key}: {e}") from e
    return ctx


async def serve(backend: Backend) -> tuple[web.AppRunner, Api] | None:
    """Starts the HTTP server on the running loop; None when `[http] port` is 0. With
    TLS configured, `port` speaks HTTPS and `plain_port` (if set) plain HTTP to
    `open_reads` networks only."""
    cfg = backend.cfg.http
    if cfg.port == 0:
        return None
    ctx = tls_context(cfg)
    api = Api(backend)
    # keepalive_timeout also closes a connection whose request's headers are not all
    # in by then (aiohttp counts it idle until they are): slow or half-open requests
    # hold nothing for long.
    runner = web.AppRunner(
        api.app(),
        access_log=None,
        handle_signals=False,
        keepalive_timeout=cfg.header_timeout,
    )
    await runner.setup()
    main = web.TCPSite(runner, cfg.host, cfg.port, reuse_address=True, ssl_context=ctx)
    sites = [(main, cfg.port)]
    if ctx is not None and cfg.plain_port:
        plain = web.TCPSite(runner, cfg.host, cfg.plain_port, reuse_address=True)
        sites.append((plain, cfg.plain_port))
    for site, port in sites:
        try:
            await site.start()
        except OSError as e:
            await runner.cleanup()
            raise HeadendError(f"HTTP cannot listen on {cfg.host}:{port}: {e.strerror}") from e
    scheme = "https" if ctx is not None else "http"
    log.info("HTTP API and situation room on %s://%s:%d/", scheme, cfg.host, cfg.port)
    return runner, api


def _strings(v: Any, what: str) -> list[str]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise HttpError(400, f"{what} must be a list of strings")
    return v
