"""The HTTP API, metrics and the situation room: routes against the OpenAPI
description, the token rules, and then a live head-end with a simulated fleet (fast
simulated time, balances recomputed) read over HTTP and in a real headless chromium."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from headend.balance import LOCAL
from headend.certs import write_pair
from headend.clock import Clock
from headend.config import CommandsConfig, HttpConfig
from headend.people import People, Principal
from headend.server.admin import AdminError
from headend.web import openapi
from headend.web.app import Api, serve
from loadtest import sim
from loadtest.grid import generate
from loadtest.headend import free_port
from tests.browser import Browser
from tests.server_harness import Server, running
from tests.test_sim import consumer, meters

TOKEN = "test-token-0123456789"
ARTIFACTS = Path(
    os.environ.get("HEADEND_ARTIFACTS", Path(__file__).parent.parent / "test-artifacts")
)


# -- without a server ----------------------------------------------------------------------


class FakeStore:
    """Answers queries with nothing and keeps what is inserted (the audit rows)."""

    def __init__(self) -> None:
        self.rows: dict[str, list[list[Any]]] = {}

    def query(
        self, sql: str, params: Any = None, settings: Any = None
    ) -> tuple[list[str], list[Any]]:
        return [], []

    def insert_rows(self, table: str, columns: Any, rows: Any, token: Any = None) -> None:
        self.rows.setdefault(table, []).extend([list(r) for r in rows])


def fake_backend(**http: Any) -> Any:
    cfg = SimpleNamespace(http=HttpConfig(**http), commands=CommandsConfig(), workers=2)
    queue = SimpleNamespace(commands={}, stats=lambda: {"pending": 0})
    store = FakeStore()
    people = People(store, "ami", "n1")
    admin = Principal.system("test-admin", "test", "test")
    people.add(admin, "vera", ["viewer"], ["UZ-SA"], password="viewer-password-1")
    people.add(admin, "otto", ["operator"], ["UZ-SA"], password="operator-password-1")

    async def submit_command(req: dict[str, Any], who: Principal) -> dict[str, Any]:
        who.require("command")
        return {"state": "queued", "requested_by": who.name}

    async def audit(who: Principal, action: str, *args: Any, **kw: Any) -> None:
        people.audit(who, action, *args, **kw)

    return SimpleNamespace(
        cfg=cfg,
        db="ami",
        clock=Clock(),
        store=store,
        commands=queue,
        people=people,
        owner=SimpleNamespace(node="n1"),
        submit_command=submit_command,
        audit=audit,
    )


def test_openapi_describes_every_route() -> None:
    app = Api(fake_backend()).app()
    routed = {
        (r.method.lower(), r.resource.canonical)
        for r in app.router.routes()
        if r.resource is not None
        and r.method != "HEAD"
        and r.resource.canonical.startswith(("/api", "/healthz", "/metrics"))
    }
    described = {(m, p) for p, ops in openapi.SPEC["paths"].items() for m in ops}
    assert routed == described
    # Every operation answers errors in the documented shape.
    for path, ops in openapi.SPEC["paths"].items():
        for op in ops.values():
            assert {"200", "201", "202"} & set(op["responses"]), path


def test_people_log_in_and_act_within_their_roles() -> None:
    async def go() -> None:
        backend = fake_backend()
        people: People = backend.people
        vera_token, _ = people.issue_token(Principal.system("t", "t", "t"), "vera")
        api = Api(backend)
        async with TestClient(TestServer(api.app())) as c:
            # Nobody: grid data needs a person; the page, its description and the login
            # do not.
            r = await c.get("/api/commands")
            assert r.status == 401
            assert "log in first" in (await r.json())["error"]
            assert (await c.get("/api/openapi.json")).status == 200
            assert (await (await c.get("/api/me")).json())["user"] is None
            r = await c.get("/api/commands", headers={"Authorization": "Bearer hk_nope_nope"})
            assert r.status == 401
            # A viewer reads and may not command; the 403 names the role needed.
            bearer = {"Authorization": f"Bearer {vera_token}"}
            r = await c.get("/api/commands", headers=bearer)
            assert r.status == 200
            assert (await r.json())["pending"] == []
            r = await c.post("/api/commands", json={"serial": "X", "kind": "read"}, headers=bearer)
            assert r.status == 403
            assert "needs the role admin or operator" in (await r.json())["error"]
            r = await c.get("/api/users", headers=bearer)
            assert r.status == 403
            # Bad parameters say what is wrong, with a 400 and no traceback.
            r = await c.get("/api/commands?limit=x", headers=bearer)
            assert r.status == 400
            assert "limit='x' is not a whole number" in (await r.json())["error"]
            r = await c.get("/api/alarms?to=99999999999999999999", headers=bearer)
            assert r.status == 400
            assert "out of range" in (await r.json())["error"]
            r = await c.get("/api/alarms?from=yesterday", headers=bearer)
            assert r.status == 400
            # Another site's name for this address (DNS rebinding) is refused.
            r = await c.get("/api/summary", headers={**bearer, "Host": "evil.example"})
            assert r.status == 421
            r = await c.get("/", headers={"Host": "evil.example:80"})
            assert r.status == 421

            # A page login: wrong password, then right; the cookie alone cannot write.
            r = await c.post("/api/login", json={"name": "otto", "password": "wrong-password"})
            assert r.status == 401
            r = await c.post("/api/login", json={"name": "otto", "password": "operator-password-1"})
            assert r.status == 200
            body = await r.json()
            csrf = body["csrf"]
            assert body["user"]["roles"] == ["operator"]
            cookie = r.cookies["headend_session"]
            assert cookie["httponly"]
            assert cookie["samesite"] == "Strict"
            me = await (await c.get("/api/me")).json()
            assert me["user"]["name"] == "otto"
            assert me["csrf"] == csrf
            cmd = {"serial": "X", "kind": "read"}
            r = await c.post("/api/commands", json=cmd)  # a stolen cookie, no CSRF token
            assert r.status == 403
            assert "X-CSRF-Token" in (await r.json())["error"]
            r = await c.post("/api/commands", json=cmd, headers={"X-CSRF-Token": "guess"})
            assert r.status == 403
            r = await c.post("/api/commands", json=cmd, headers={"X-CSRF-Token": csrf})
            assert r.status == 202
            assert (await r.json())["requested_by"] == "otto"
            r = await c.post("/api/logout", json={}, headers={"X-CSRF-Token": csrf})
            assert r.status == 200
            assert (await c.get("/api/commands")).status == 401
        # Every login, good or bad, and the logout are audit rows.
        audit = [(r[2], r[5], r[7]) for r in backend.store.rows["audit"]]
        assert ("otto", "login", "refused") in audit
        assert ("otto", "login", "ok") in audit
        assert ("otto", "logout", "ok") in audit

    asyncio.run(go())


def test_https_and_plain_http_for_local_tools(tmp_path: Path) -> None:
    cert, key = write_pair(tmp_path / "pki", ["127.0.0.1"])
    assert (key.stat().st_mode & 0o077) == 0

    async def go(open_reads: str) -> dict[str, Any]:
        port, plain = free_port(), free_port()
        backend = fake_backend(
            port=port,
            plain_port=plain,
            tls_cert=str(cert),
            tls_key=str(key),
            open_reads=open_reads,
        )
        served = await serve(backend)
        assert served is not None
        out: dict[str, Any] = {}
        try:
            trust = ssl.create_default_context(cafile=str(cert))
            async with aiohttp.ClientSession() as s:
                login = {"name": "vera", "password": "viewer-password-1"}
                r = await s.post(f"https://127.0.0.1:{port}/api/login", json=login, ssl=trust)
                out["login"] = r.status
                out["secure"] = r.cookies["headend_session"]["secure"]
                r = await s.get(f"http://127.0.0.1:{plain}/healthz")
                out["plain"] = r.status
                out["plain_error"] = (await r.json()).get("error", "")
                try:
                    await s.get(f"https://127.0.0.1:{port}/api/me")  # not trusting it
                    out["untrusted"] = "answered"
                except aiohttp.ClientConnectorCertificateError:
                    out["untrusted"] = "refused"
        finally:
            await served[0].cleanup()
        return out

    # Plain HTTP from an address outside open_reads is turned away, towards HTTPS.
    out = asyncio.run(go("10.0.0.0/8"))
    assert out["login"] == 200
    assert out["secure"]  # the session cookie never travels in clear
    assert out["plain"] == 403
    assert "https" in out["plain_error"]
    assert out["untrusted"] == "refused"
    # Local tools (open_reads) may use the plain port.
    assert asyncio.run(go("127.0.0.0/8"))["plain"] != 403


# -- a live head-end ---------------------------------------------------------------------------


@dataclass
class Live:
    srv: Server
    url: str
    fleet: Path
    noon: int
    sim: subprocess.Popen[str]


def local_noon() -> int:
    """Today's noon in Tashkent if it has passed, else yesterday's: a time with whole
    hours of "today" before it, whenever the tests run."""
    now = dt.datetime.now(LOCAL)
    noon = now.replace(hour=12, minute=0, second=0, microsecond=0)
    if noon > now:
        noon -= dt.timedelta(days=1)
    return int(noon.timestamp())


def get(
    url: str,
    token: str | None = TOKEN,
    data: Any = None,
    headers: dict[str, str] | None = None,
    method: str | None = None,
) -> tuple[int, Any]:
    """A request as `token`'s person (the retired [http] token: token-admin)."""
    headers = {"Accept": "application/json", **(headers or {})}
    body = None
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if data is not None:
        body = json.dumps(data).encode()
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(  # noqa: S310 (http only)
        url, data=body, headers=headers, method=method
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:  # noqa: S310
            raw = r.read()
            status = r.status
            ctype = r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        raw, status, ctype = e.read(), e.code, e.headers.get("Content-Type", "")
    return status, json.loads(raw) if "json" in ctype else raw.decode()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    root = tmp_path_factory.mktemp("web")
    fleet = root / "fleet"
    generate(400, 0.3, fleet, seed=5)
    noon = local_noon()
    port = free_port()
    with running(
        root / "srv",
        [],
        fleet=fleet,
        server_settings={"handshake_timeout": 30.0},
        store_settings={"balance_interval": 0.0},
        sections={
            "http": {"port": port, "token": TOKEN, "refresh": 1.0, "header_timeout": 2.0},
            # The store's clock stands at Tashkent noon, running at real speed.
            "clock": {"speed": 1.0, "start": float(noon), "anchor": time.time()},
            "commands": {"schedule_interval": 0.0, "request_timeout": 5.0},
            "billing": {"interval": 0.0},
            "approval": {"batch_size": 2},
        },
    ) as srv:
        # Two simulated hours before noon in about 30 s: eight quarter-hour pushes.
        p = sim.start(
            fleet,
            srv.port,
            "--start",
            str(noon - 7500),
            "--speed",
            "240",
            "--interval",
            "900",
            "--gas-interval",
            "900",
            "--pushes",
            "8",
            "--linger",
            "600",
            "--gaps",
            "0",
            "--drifting",
            "0",
            "--hdlc",
            "0",
            "--event-rate",
            "200",
            "--status-every",
            "60",
            "--drain",
            "2",
        )
        try:
            url = f"http://127.0.0.1:{port}"
            n = len(meters(fleet))
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                last = srv.scalar(
                    "SELECT count() FROM (SELECT meter FROM ami.readings "
                    f"WHERE ts >= toDateTime({noon - 1000}) GROUP BY meter)"
                )
                if last >= n:
                    break
                time.sleep(1)
            srv.admin("recompute", start=noon - 3 * 3600, end=noon + 3600)
            srv.admin("detect", start=noon - 3 * 3600, end=noon)
            # The snapshot refreshes every second: wait for today's figures.
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                _, s = get(url + "/api/summary")
                if isinstance(s, dict) and (s.get("today") or {}).get("electricity"):
                    break
                time.sleep(0.5)
            yield Live(srv, url, fleet, noon, p)
        finally:
            p.terminate()
            try:
                p.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.communicate()


def test_grid_balances_and_meters_over_http(live: Live) -> None:
    url, srv = live.url, live.srv
    status, health = get(url + "/healthz")
    assert status == 200, health
    assert health["ok"] is True

    # The level vocabulary the page reads: one place (headend/levels.py).
    status, lv = get(url + "/api/levels")
    assert status == 200
    assert lv["admin"] == ["republic", "region", "city", "district"]
    assert lv["chains"]["gas"] == ["gas_station", "gas_segment"]
    assert lv["levels"] == [*lv["admin"], *lv["network"]]
    assert lv["below"]["feeder"] == "Transformers"

    status, s = get(url + "/api/summary")
    assert status == 200
    fleet = meters(live.fleet)
    assert s["meters"] == len(fleet)
    assert s["consumers"] == sum(1 for m in fleet if m["role"] == "consumer")
    assert 0 < s["online"] <= s["meters"]
    assert s["day"] == dt.datetime.fromtimestamp(live.noon, LOCAL).date().isoformat()
    elec = s["today"]["electricity"]
    assert elec["input"] > 0
    assert elec["loss"] > 0
    assert 0 < elec["completeness"] <= 1

    # Each region's electricity input today is its backbone substations' input.
    _, regions = get(url + "/api/nodes?level=region")
    assert len(regions["nodes"]) == 14
    day0 = live.noon - 12 * 3600
    sums = dict(
        (unit, value)
        for unit, value in srv.sql(
            "SELECT splitByChar('-', admin_unit)[1], sum(input) FROM ami.balances FINAL "
            f"WHERE level = 'backbone_substation' AND period_start >= toDateTime({day0}) "
            "GROUP BY 1"
        )
    )
    checked = 0
    for r in regions["nodes"]:
        got = r["today"].get("electricity")
        want = sums.get(r["admin_unit"], 0.0)
        if want:
            assert got is not None, r
            assert got["input"] == pytest.approx(want, rel=1e-6), r
            checked += 1
    assert checked >= 5
    assert sum(r["consumers"] for r in regions["nodes"]) == s["consumers"]

    # Drill down to a transformer and its consumers.
    tr = next(
        n for n in get(url + "/api/nodes?level=transformer")[1]["nodes"] if n["consumers"] > 0
    )
    status, d = get(url + f"/api/nodes/{tr['node_id']}")
    assert status == 200
    assert [p["level"] for p in d["path"]][:3] == ["republic", "region", "district"]
    assert d["node"]["today"]["electricity"]["input"] > 0
    _, ms = get(url + f"/api/nodes/{tr['node_id']}/meters")
    consumers = [m for m in ms["meters"] if m["role"] == "consumer"]
    assert len(consumers) == tr["consumers"]
    assert any(m["today"] and m["today"] > 0 for m in consumers)

    # Balances, losses, a meter's data, alarms, fleet health.
    _, b = get(url + f"/api/balances?level=transformer&period=hour&from={day0}")
    assert b["rows"]
    assert {"node_id", "period", "input", "loss_pct"} <= set(b["rows"][0])
    status, lr = get(url + "/api/losses?level=transformer&top=5&min_completeness=0.5")
    assert status == 200
    assert len(lr["rows"]) <= 5
    assert [r["loss"] for r in lr["rows"]] == sorted((r["loss"] for r in lr["rows"]), reverse=True)
    serial = consumer(live.fleet)["serial"]
    _, rd = get(url + f"/api/meters/{serial}/readings?from={day0}")
    assert rd["rows"]
    assert all(r["source"] == "push" for r in rd["rows"])
    assert get(url + "/api/meters/NO-SUCH-METER")[0] == 404
    status, err = get(url + "/api/balances?period=fortnight")
    assert status == 400
    assert "fortnight" in err["error"]
    _, alarms = get(url + "/api/alarms?limit=500")
    assert alarms["rows"], "the fleet raised events at 200x the usual rate"
    assert {a["category"] for a in alarms["rows"]} <= {"tamper", "power"}
    _, h = get(url + "/api/health")
    assert h["meters"] == s["meters"]
    assert len(h["regions"]) == 14

    # Prometheus text: every sample line is name{labels} value.
    status, text = get(url + "/metrics")
    assert status == 200
    sample = re.compile(r'^[a-z_]+(\{([a-z_]+="[^"]*",?)*\})? -?[0-9.e+]+$')
    lines = [x for x in text.splitlines() if x and not x.startswith("#")]
    assert all(sample.match(x) for x in lines), [x for x in lines if not sample.match(x)]
    pushes = sum(float(x.split()[-1]) for x in lines if x.startswith("headend_pushes_total"))
    assert pushes >= len(fleet)
    assert re.search(r"^headend_meters_online \d+$", text, re.M)


def test_billing_and_commands_over_http(live: Live) -> None:
    url = live.url
    serial = consumer(live.fleet, skip=3)["serial"]
    account = next(m for m in meters(live.fleet) if m["serial"] == serial)["account_id"]
    accounts = [
        {"account_id": account, "debt": 250000, "overdue_since": "2020-01-01", "protected": False},
        {"account_id": "BAD ID!", "debt": "lots"},
    ]
    assert get(url + "/api/billing/accounts", token=None, data=accounts)[0] == 401
    status, r = get(url + "/api/billing/accounts", token=TOKEN, data={"accounts": accounts})
    assert status == 207
    assert r["loaded"] == 1
    assert r["rejected"][0]["index"] == 2
    assert "account_id" in r["rejected"][0]["reason"]
    _, st = get(url + f"/api/billing/status?account={account}")
    assert serial in [x["serial"] for x in st["rows"]]
    assert st["rows"][0]["action"] in ("warn", "disconnect", "wait")

    # An on-demand read through the API, answered by the meter on its connection.
    cmd = {
        "serial": serial,
        "kind": "read",
        "args": {"objects": [[1, "0.0.96.1.0.255", 2]]},
        "wait": 30,
    }
    assert get(url + "/api/commands", token=None, data=cmd)[0] == 401
    status, c = get(url + "/api/commands", token=TOKEN, data=cmd)
    assert status == 200, c
    assert c["state"] == "done", c
    assert c["requested_by"] == "token-admin"  # the retired token's account
    status, bad = get(url + "/api/commands", token=TOKEN, data={**cmd, "serial": "NOPE"})
    assert status == 404
    assert "unknown meter" in bad["error"]
    _, q = get(url + "/api/commands?kind=read&limit=5")
    assert q["recent"]
    assert {h["kind"] for h in q["recent"]} == {"read"}
    assert c["command_id"] in {h["command_id"] for h in q["recent"]}
    _, q = get(url + "/api/commands?kind=disconnect")
    assert all(h["kind"] == "disconnect" for h in q["recent"] + q["pending"])
    # A batch: one lookup for all, bad items rejected by index, the rest queued.
    batch = [
        {"serial": serial, "kind": "read", "args": {"objects": [[1, "0.0.96.1.0.255", 2]]}},
        {"serial": "NOPE", "kind": "read", "args": {"objects": [[1, "0.0.96.1.0.255", 2]]}},
        {"serial": serial, "kind": "explode"},
    ]
    status, b = get(url + "/api/commands", token=TOKEN, data=batch)
    assert status == 207
    assert [x["serial"] for x in b["queued"]] == [serial]
    assert [(x["index"], "unknown meter" in x["reason"]) for x in b["rejected"]] == [
        (1, True),
        (2, False),
    ]
    assert "explode" in b["rejected"][1]["reason"]
    live.srv.wait_for(
        f"SELECT state FROM ami.command_status WHERE command_id = '{b['queued'][0]['command_id']}'",
        "done",
    )
    _, hist = get(url + f"/api/meters/{serial}/commands")
    assert any(h["command_id"] == c["command_id"] and h["state"] == "done" for h in hist["rows"])


def add_user(url: str, name: str, roles: list[str], regions: list[str]) -> str:
    """An account made by the admin over the API; returns its password."""
    password = f"{name}-password-0"
    status, r = get(
        url + "/api/users",
        data={"name": name, "roles": roles, "regions": regions, "password": password},
    )
    assert status == 201, r
    return password


async def log_in(b: Browser, name: str, password: str) -> None:
    await b.wait_for("!document.getElementById('login').hidden")
    await b.js(
        f"document.getElementById('login-name').value = {json.dumps(name)};"
        f"document.getElementById('login-password').value = {json.dumps(password)};"
        "document.getElementById('login-submit').click(); true"
    )
    await b.wait_for("document.body.dataset.ready === '1'")


async def log_out(b: Browser) -> bool:
    await b.js("document.getElementById('logout').click(); true")
    await b.wait_for("!document.getElementById('login').hidden")
    return bool(await b.js("fetch('/api/me').then(r => r.json()).then(j => j.user === null)"))


def test_situation_room_in_a_real_browser(live: Live) -> None:
    url = live.url
    shot = ARTIFACTS / "situation-room.png"
    ria = add_user(url, "ria", ["viewer"], ["*"])
    tash = add_user(url, "tash", ["viewer"], ["UZ-TK"])

    async def go() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with Browser() as b:
            await b.goto(url + "/")
            # Nobody is logged in: the page asks, and shows nothing of the grid.
            await b.wait_for("!document.getElementById('login').hidden")
            out["before"] = await b.js("document.querySelectorAll('#regions tbody tr').length")
            await log_in(b, "ria", ria)
            out["who"] = await b.js("document.getElementById('who').textContent")
            out["rows"] = await b.js(
                "[...document.querySelectorAll('#regions tbody tr')].map(tr => ({"
                "node: tr.dataset.node, name: tr.cells[0].textContent,"
                "input: tr.querySelector('.in').textContent}))"
            )
            await b.wait_for("Number(document.body.dataset.marks) >= 14")  # regions on the map
            # The country and its five neighbours, from the Makefile's outline.json.
            await b.wait_for("document.getElementById('map').dataset.outline === '6'")
            await b.screenshot(shot)
            # Drill down: a region's row opens the region, its districts below.
            await b.js("document.querySelector('#regions tbody tr[data-node=\"UZ-TK\"]').click()")
            await b.wait_for(
                "document.querySelector('#crumbs').textContent.includes('Tashkent city')"
            )
            out["crumbs"] = await b.js(
                "[...document.querySelectorAll('#crumbs a')].map(a => a.textContent)"
            )
            await b.wait_for("document.querySelectorAll('#children tbody tr.click').length > 0")
            out["title"] = await b.js("document.querySelector('#children-title').textContent")
            out["errors"] = list(b.errors)
            out["ria_out"] = await log_out(b)
            # A viewer of one region sees that region only.
            await log_in(b, "tash", tash)
            out["tash_rows"] = await b.js(
                "[...document.querySelectorAll('#regions tbody tr')].map(tr => tr.dataset.node)"
            )
            out["errors"] += list(b.errors[len(out["errors"]) :])
            out["tash_out"] = await log_out(b)
            # After logging out, a refresh in flight may meet a 401; nothing else.
            out["late"] = [e for e in b.errors[len(out["errors"]) :] if "401" not in e]
        return out

    out = asyncio.run(go())
    assert out["errors"] == [], out["errors"]
    assert out["late"] == [], out["late"]
    assert out["before"] == 0
    assert out["who"].startswith("ria · viewer · republic")
    assert shot.stat().st_size > 20_000
    _, regions = get(url + "/api/nodes?level=region")
    api = {r["node_id"]: r for r in regions["nodes"]}
    rows = out["rows"]
    assert {r["node"] for r in rows} == set(api)
    for r in rows:
        want = api[r["node"]]
        assert r["name"] == want["name"]
        e = want["today"].get("electricity")
        if e is None:
            assert r["input"] == "\u2013"  # an en dash: no figure
        else:
            assert float(r["input"]) == pytest.approx(e["input"], abs=0.051)
    assert out["crumbs"] == ["Republic of Uzbekistan", "Tashkent city"]
    assert out["title"] == "Districts and cities"  # /api/levels: what lies below a region
    assert out["tash_rows"] == ["UZ-TK"]
    assert out["ria_out"]
    assert out["tash_out"]


def test_people_act_within_their_roles_and_regions(live: Live) -> None:
    url, srv = live.url, live.srv
    mine = consumer(live.fleet, skip=3)["serial"]  # online, answers reads
    regions = dict(
        (s, r) for s, r in srv.sql("SELECT serial, region FROM ami.meters FINAL WHERE region != ''")
    )
    a = regions[mine]
    other = next(s for s, r in sorted(regions.items()) if r != a)
    b = regions[other]
    add_user(url, "vi", ["viewer"], [a])
    add_user(url, "op", ["operator"], [a])
    tokens = {}
    for name in ("vi", "op"):
        status, t = get(url + f"/api/users/{name}/tokens", data={"label": "test"})
        assert status == 201, t
        tokens[name] = t["token"]
    vi, op = tokens["vi"], tokens["op"]

    # A viewer sees its region and nothing of another's; it may not command.
    _, nodes = get(url + "/api/nodes?level=region", token=vi)
    assert [n["node_id"] for n in nodes["nodes"]] == [a]
    assert get(url + f"/api/meters/{mine}", token=vi)[0] == 200
    assert get(url + f"/api/meters/{other}", token=vi)[0] == 404
    assert get(url + f"/api/meters/{other}/readings", token=vi)[0] == 404
    _, alarms = get(url + "/api/alarms?limit=500", token=vi)
    assert all(regions.get(x["meter"]) == a for x in alarms["rows"])
    read = {"kind": "read", "args": {"objects": [[1, "0.0.96.1.0.255", 2]]}}
    status, r = get(url + "/api/commands", token=vi, data={"serial": mine, **read})
    assert status == 403
    assert "operator" in r["error"]
    assert get(url + "/api/audit", token=vi)[0] == 403
    # An operator of region a cannot disconnect (or read) a meter of region b, alone
    # or in a batch.
    for cmd in ({"serial": other, "kind": "disconnect"}, {"serial": other, **read}):
        status, r = get(url + "/api/commands", token=op, data=cmd)
        assert status == 403, r
        assert f"region {b}" in r["error"]
    status, c = get(url + "/api/commands", token=op, data={"serial": mine, **read, "wait": 30})
    assert status == 200, c
    assert c["state"] == "done", c
    assert c["requested_by"] == "op"
    status, batch = get(
        url + "/api/commands", token=op, data=[{"serial": mine, **read}, {"serial": other, **read}]
    )
    assert status == 207
    assert [x["index"] for x in batch["rejected"]] == [1]
    assert "outside op's regions" in batch["rejected"][0]["reason"]

    # The command line through the server, as a person ($HEADEND_TOKEN): the same rules.
    def cli(token: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "headend", *args, "--config", str(srv.config)],
            env={**srv.env(), "HEADEND_TOKEN": token},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    r = cli(op, "ctl", "disconnect", other, "--wait", "0")
    assert r.returncode != 0
    assert f"region {b}" in r.stderr
    r = cli(op, "sql", "SELECT count() FROM ami.readings")
    assert r.returncode != 0
    assert "analyst" in r.stderr
    r = cli(vi, "users", "list")
    assert r.returncode != 0
    assert "admin" in r.stderr
    # Each of these is an audit row: who, what, on what, how it ended.
    status, audit = get(url + "/api/audit?limit=200")
    assert status == 200
    rows = [(x["user"], x["action"], x["target"], x["outcome"]) for x in audit["rows"]]
    assert ("op", "command", other, "refused") in rows
    assert ("op", "command", mine, "ok") in rows
    assert ("vi", "http", "POST /api/commands", "refused") in rows
    assert ("token-admin", "user.add", "op", "ok") in rows
    assert any(x[:2] == ("op", "batch") for x in rows)
    mine_rows = [x for x in audit["rows"] if x["user"] == "op" and x["action"] == "command"]
    # From the API and from the command line, each with where it came from.
    assert {x["source"].split(":")[0] for x in mine_rows} == {"http", "socket"}
    assert {x["roles"] for x in mine_rows} == {"operator"}
    # The same rows in ClickHouse, where nothing in the API can change them.
    assert srv.scalar("SELECT count() FROM ami.audit WHERE user = 'op'") >= 3


def test_the_http_server_holds_off_hostile_requests(live: Live) -> None:
    url, srv = live.url, live.srv
    port = int(url.rsplit(":", 1)[1])
    # Another site's name for this address (DNS rebinding): refused.
    status, r = get(url + "/api/summary", headers={"Host": "attacker.example"})
    assert status == 421
    assert "attacker.example" in r["error"]
    # A time out of range: a 400 naming it, and no traceback in the log.
    status, r = get(url + "/api/alarms?to=99999999999999999999")
    assert status == 400, r
    assert "to='99999999999999999999' is out of range" in r["error"]
    for bad in ("nan", "2", "-0.5"):
        status, r = get(url + f"/api/losses?level=transformer&min_completeness={bad}")
        assert status == 400, (bad, r)
        assert "min_completeness" in r["error"]
    # Half-open requests: headers never finished. Every one is cut off after
    # [http] header_timeout (2 s here), none is held.
    socks = []
    for _ in range(1500):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET /api/summary HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        socks.append(s)
    time.sleep(6)
    closed = 0
    for s in socks:
        s.settimeout(2)
        try:
            closed += s.recv(1024) == b""
        except ConnectionResetError:
            closed += 1
        except TimeoutError:
            pass
        finally:
            s.close()
    assert closed == len(socks)
    assert get(url + "/api/summary")[0] == 200  # and the server still answers
    assert "Traceback" not in srv.log.read_text()
    # Settings and data are the service user's alone.
    assert (srv.data.stat().st_mode & 0o077) == 0
    assert ((srv.data / "run" / "config.json").stat().st_mode & 0o077) == 0


def test_command_requests_out_of_range_leave_nothing_behind(live: Live) -> None:
    url, srv = live.url, live.srv
    serial = consumer(live.fleet, skip=7)["serial"]
    read = {"serial": serial, "kind": "read", "args": {"objects": [[1, "0.0.96.1.0.255", 2]]}}
    queued = f"SELECT count() FROM ami.commands WHERE serial = '{serial}' AND state = 'queued'"
    before = int(srv.scalar(queued))
    # Numbers out of range: a 400 naming the field, and no command (1e308 used to
    # answer 500 and leave a command that failed every claim).
    for field, value in (("expires_in", 1e308), ("expires_in", -1), ("wait", 1e9)):
        status, r = get(url + "/api/commands", data={**read, field: value})
        assert status == 400, (field, value, r)
        assert field in r["error"]
    status, r = get(url + "/api/commands", data={**read, "args": {"objects": [[1, "x", 999]]}})
    assert status == 400
    assert "attribute" in r["error"]
    # 10,000 reads of one meter: the meter's queue takes its cap (100), the rest are
    # refused one by one with the reason.
    status, b = get(url + "/api/commands", data=[{**read, "expires_in": 600}] * 10_000)
    assert status == 207
    assert len(b["queued"]) + len(b["rejected"]) == 10_000
    assert 100 <= len(b["queued"]) < 200
    assert all("max_pending_per_meter" in x["reason"] for x in b["rejected"])
    assert get(url + "/healthz", token=None)[0] == 200
    for q in b["queued"]:
        with contextlib.suppress(AdminError):  # one may be running already
            srv.admin("cancel", id=q["command_id"])
    srv.wait_for(queued, before + len(b["queued"]))


def test_four_eyes_for_mass_and_sensitive_disconnections_and_keys(live: Live) -> None:
    url, srv = live.url, live.srv
    a = srv.sql(
        "SELECT region FROM ami.meters FINAL WHERE role = 'consumer' AND region != '' "
        "GROUP BY region ORDER BY count() DESC LIMIT 1"
    )[0][0]
    b = srv.sql(f"SELECT any(region) FROM ami.meters FINAL WHERE region NOT IN ('', '{a}')")[0][0]
    mine = [
        r[0]
        for r in srv.sql(
            f"SELECT serial FROM ami.meters FINAL WHERE region = '{a}' AND role = 'consumer' "
            "ORDER BY serial LIMIT 5"
        )
    ]
    people = {
        "asker": (["operator"], [a]),
        "second": (["operator"], [a]),
        "elsewhere": (["operator"], [b]),
        "watcher": (["viewer"], [a]),
        "keeper": (["admin"], ["*"]),
    }
    tok = {}
    for name, (roles, regions) in people.items():
        add_user(url, name, roles, regions)
        tok[name] = get(url + f"/api/users/{name}/tokens", data={})[1]["token"]

    # A batch of three disconnections, over the batch size of two: nothing runs yet.
    cut = [{"serial": s, "kind": "disconnect", "reason": "debt"} for s in mine[:3]]
    status, r = get(url + "/api/commands", token=tok["asker"], data=cut)
    assert status == 202, r
    assert r["queued"] == []
    req = r["approval"]
    assert req["state"] == "pending"
    assert "3 disconnections (over 2)" in req["why"]
    assert srv.scalar("SELECT count() FROM ami.commands WHERE requested_by = 'asker'") == 0
    approve = url + f"/api/approvals/{req['approval_id']}/approve"
    # Not the asker, not a viewer, not an operator of another region.
    for who, why in (
        ("asker", "a different person approves it"),
        ("watcher", "needs the role"),
        ("elsewhere", f"region {a}"),
    ):
        status, r = get(approve, token=tok[who], data={})
        assert status == 403, (who, r)
        assert why in r["error"], (who, r)
    _, seen = get(url + "/api/approvals", token=tok["second"])
    assert req["approval_id"] in [x["approval_id"] for x in seen["pending"]]
    assert get(url + "/api/approvals", token=tok["elsewhere"])[1]["pending"] == []
    status, r = get(approve, token=tok["second"], data={"note": "checked the debts"})
    assert status == 200, r
    assert r["approval"]["decided_by"] == "second"
    queued = r["result"]["queued"]
    assert sorted(q["serial"] for q in queued) == sorted(mine[:3])
    assert {(q["requested_by"], q["approved_by"]) for q in queued} == {("asker", "second")}
    # Both names in command_status, and the decision cannot be taken twice.
    ids = ", ".join(f"'{q['command_id']}'" for q in queued)
    assert srv.sql(
        "SELECT DISTINCT requested_by, approved_by FROM ami.command_status "
        f"WHERE command_id IN ({ids})"
    ) == [["asker", "second"]]
    assert get(approve, token=tok["second"], data={})[0] == 400

    # A critical account's meter: one disconnection waits too; the second person may
    # reject it, and nothing runs.
    account = next(m for m in meters(live.fleet) if m["serial"] == mine[3])["account_id"]
    status, _ = get(
        url + "/api/billing/accounts",
        data=[{"account_id": account, "debt": 0, "category": "critical"}],
    )
    assert status == 200
    status, r = get(
        url + "/api/commands", token=tok["asker"], data={"serial": mine[3], "kind": "disconnect"}
    )
    assert status == 202, r
    assert r["state"] == "awaiting_approval"
    assert f"account {account} is a critical account" in r["why"]
    status, d = get(url + f"/api/approvals/{r['approval_id']}/reject", token=tok["second"], data={})
    assert status == 200
    assert d["approval"]["state"] == "rejected"
    assert (
        srv.scalar(
            f"SELECT count() FROM ami.commands WHERE serial = '{mine[3]}' AND kind = 'disconnect'"
        )
        == 0
    )

    # New keys for a meter: wrapped at once, stored when a second admin approves.
    m = next(x for x in meters(live.fleet) if x["serial"] == mine[4])
    before = srv.sql(f"SELECT ek, updated_at FROM ami.meter_keys FINAL WHERE serial = '{mine[4]}'")
    status, r = get(url + f"/api/meters/{mine[4]}/keys", data={"ek": m["ek"], "ak": m["ak"]})
    assert status == 202, r
    kid = r["approval"]["approval_id"]
    assert m["ek"] not in str(
        srv.sql(f"SELECT payload FROM ami.approvals WHERE approval_id = '{kid}'")
    )
    status, r = get(url + f"/api/approvals/{kid}/approve", token=tok["second"], data={})
    assert status == 403  # an operator does not approve keys
    status, r = get(url + f"/api/approvals/{kid}/approve", token=tok["keeper"], data={})
    assert status == 200, r
    after = srv.sql(f"SELECT ek, updated_at FROM ami.meter_keys FINAL WHERE serial = '{mine[4]}'")
    assert after != before
    assert m["ek"] not in after[0][0]
    # The record: who asked, who refused to, who approved and rejected.
    _, audit = get(url + "/api/audit?limit=500")
    rows = {(x["user"], x["action"], x["outcome"]) for x in audit["rows"]}
    assert {
        ("asker", "approval.ask", "ok"),
        ("asker", "approval.approve", "refused"),
        ("second", "approval.approve", "ok"),
        ("second", "approval.reject", "ok"),
        ("token-admin", "approval.ask", "ok"),
        ("keeper", "approval.approve", "ok"),
        ("token-admin", "keys.change", "ok"),
    } <= rows
