"""The HTTP API, metrics and the situation room: routes against the OpenAPI
description, the token rules, and then a live head-end with a simulated fleet (fast
simulated time, balances recomputed) read over HTTP and in a real headless chromium."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from headend.balance import LOCAL
from headend.clock import Clock
from headend.config import CommandsConfig, HttpConfig
from headend.web import openapi
from headend.web.app import Api
from loadtest import sim
from loadtest.grid import generate
from loadtest.headend import free_port
from tests.browser import Browser
from tests.server_harness import Server, running
from tests.test_sim import consumer, meters

TOKEN = "test-token-0123456789"  # noqa: S105 (a test server's token)
ARTIFACTS = Path(
    os.environ.get("HEADEND_ARTIFACTS", Path(__file__).parent.parent / "test-artifacts")
)


# -- without a server ----------------------------------------------------------------------


class FakeStore:
    def query(
        self, sql: str, params: Any = None, settings: Any = None
    ) -> tuple[list[str], list[Any]]:
        return [], []


def fake_backend(**http: Any) -> Any:
    cfg = SimpleNamespace(http=HttpConfig(**http), commands=CommandsConfig(), workers=2)
    queue = SimpleNamespace(commands={}, stats=lambda: {"pending": 0})
    return SimpleNamespace(cfg=cfg, db="ami", clock=Clock(), store=FakeStore(), commands=queue)


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
            assert "200" in op["responses"] or "202" in op["responses"], path


def test_reads_and_writes_need_the_token() -> None:
    async def go() -> None:
        # Loopback is not in open_reads here: reads need the token too.
        api = Api(fake_backend(token=TOKEN, open_reads="10.0.0.0/8"))
        async with TestClient(TestServer(api.app())) as c:
            r = await c.get("/api/commands")
            assert r.status == 401
            assert "bearer token" in (await r.json())["error"]
            r = await c.get("/api/commands", headers={"Authorization": "Bearer wrong"})
            assert r.status == 401
            r = await c.get("/api/commands", headers={"Authorization": f"Bearer {TOKEN}"})
            assert r.status == 200
            assert (await r.json())["pending"] == []
            r = await c.post("/api/billing/accounts", json=[])
            assert r.status == 401
            # The API description is public; bad parameters say what is wrong.
            assert (await c.get("/api/openapi.json")).status == 200
            r = await c.get("/api/commands?limit=x", headers={"Authorization": f"Bearer {TOKEN}"})
            assert r.status == 400
            assert "limit='x' is not a whole number" in (await r.json())["error"]
        # Without a configured token, writes are refused whoever asks.
        api = Api(fake_backend(token=""))
        async with TestClient(TestServer(api.app())) as c:
            r = await c.post("/api/commands", json={"serial": "X", "kind": "read"})
            assert r.status == 403
            assert "set [http] token" in (await r.json())["error"]
            assert (await c.get("/api/commands")).status == 200  # loopback reads are open

    asyncio.run(go())


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


def get(url: str, token: str | None = None, data: Any = None) -> tuple[int, Any]:
    headers = {"Accept": "application/json"}
    body = None
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if data is not None:
        body = json.dumps(data).encode()
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=body, headers=headers)  # noqa: S310 (http only)
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
            "http": {"port": port, "token": TOKEN, "refresh": 1.0},
            # The store's clock stands at Tashkent noon, running at real speed.
            "clock": {"speed": 1.0, "start": float(noon), "anchor": time.time()},
            "commands": {"schedule_interval": 0.0, "request_timeout": 5.0},
            "billing": {"interval": 0.0},
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
    assert get(url + "/api/billing/accounts", data=accounts)[0] == 401
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
    assert get(url + "/api/commands", data=cmd)[0] == 401
    status, c = get(url + "/api/commands", token=TOKEN, data=cmd)
    assert status == 200, c
    assert c["state"] == "done", c
    assert c["requested_by"].startswith("http:")
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


def test_situation_room_in_a_real_browser(live: Live) -> None:
    url = live.url
    shot = ARTIFACTS / "situation-room.png"

    async def go() -> tuple[list[dict[str, Any]], list[str], list[str], str]:
        async with Browser() as b:
            await b.goto(url + "/")
            await b.wait_for("document.body.dataset.ready === '1'")
            rows = await b.js(
                "[...document.querySelectorAll('#regions tbody tr')].map(tr => ({"
                "node: tr.dataset.node, name: tr.cells[0].textContent,"
                "input: tr.querySelector('.in').textContent}))"
            )
            await b.wait_for("Number(document.body.dataset.marks) >= 14")  # regions on the map
            await b.screenshot(shot)
            # Drill down: a region's row opens the region, its districts below.
            await b.js("document.querySelector('#regions tbody tr[data-node=\"UZ-TK\"]').click()")
            await b.wait_for(
                "document.querySelector('#crumbs').textContent.includes('Tashkent city')"
            )
            crumbs = await b.js(
                "[...document.querySelectorAll('#crumbs a')].map(a => a.textContent)"
            )
            await b.wait_for("document.querySelectorAll('#children tbody tr.click').length > 0")
            title = await b.js("document.querySelector('#children-title').textContent")
            return rows, crumbs, list(b.errors), title

    rows, crumbs, errors, title = asyncio.run(go())
    assert errors == [], errors
    assert shot.stat().st_size > 20_000
    _, regions = get(url + "/api/nodes?level=region")
    api = {r["node_id"]: r for r in regions["nodes"]}
    assert {r["node"] for r in rows} == set(api)
    for r in rows:
        want = api[r["node"]]
        assert r["name"] == want["name"]
        e = want["today"].get("electricity")
        if e is None:
            assert r["input"] == "\u2013"  # an en dash: no figure
        else:
            assert float(r["input"]) == pytest.approx(e["input"], abs=0.051)
    assert crumbs == ["Republic of Uzbekistan", "Tashkent city"]
    assert title == "Districts"
