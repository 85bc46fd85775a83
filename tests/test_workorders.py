"""Work orders on a running head-end: each cause (a theft suspect, a silent meter, a
tamper alarm, a failed disconnection, a clock that could not be set, a low battery)
opens exactly one order, sent to the service centre covering the meter's district;
meters silent together are an outage, not a fault of each; people with the service
role move orders through their states within their regions, and the outcomes are
recorded (a confirmed theft flags the account, a replaced meter names its successor)."""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loadtest.headend import free_port
from tests.server_harness import Meter, Server, keyed, running
from tests.test_web import TOKEN, add_user, get

GRID = """node_id,parent_id,level,commodity,name,admin_unit,lat,lon
UZ,,republic,any,Uzbekistan,UZ,41.3,69.2
TAS,UZ,region,any,Tashkent city,TAS,41.31,69.28
SAM,UZ,region,any,Samarkand,SAM,39.65,66.96
D-1,TAS,district,any,Yunusobod,TAS,41.36,69.28
D-2,TAS,district,any,Chilonzor,TAS,41.28,69.2
D-9,SAM,district,any,Urgut,SAM,39.4,67.2
TR-1,D-1,transformer,electricity,TP-1,TAS,41.36,69.29
TR-3,D-1,transformer,electricity,TP-3,TAS,41.37,69.3
TR-2,D-2,transformer,electricity,TP-2,TAS,41.28,69.21
GS-1,D-2,gas_segment,gas,GS-1,TAS,41.28,69.22
GS-9,TAS,gas_segment,gas,GS-9,TAS,41.3,69.25
"""
HEADER = "serial,kind,role,node_id,account_id,model,system_title,ek,ak,password,lat,lon\n"
SILENT_AFTER = 8


def meter(serial: str, n: int, node: str, model: str = "e1ph") -> Meter:
    m = keyed(serial, n, model)
    m.node = node
    return m


def now_iso(offset: float = 0.0) -> str:
    return dt.datetime.fromtimestamp(time.time() + offset, dt.UTC).isoformat()


@contextlib.contextmanager
def keep_pushing(srv: Server, meters: list[Meter]) -> Iterator[None]:
    """The meters push every half second until the block ends (alive meters)."""
    pushers = [srv.pusher() for _ in meters]
    stop = threading.Event()

    def run() -> None:
        i = 100
        while not stop.is_set():
            for p, m in zip(pushers, meters, strict=True):
                p.send(p.frame(m.push(i)))
            i += 1
            stop.wait(0.5)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join(5)


def orders(srv: Server, **filters: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = srv.admin("workorders.list", **filters)["orders"]
    return out


def test_each_cause_opens_one_order_for_its_centre_and_crews_close_them(tmp_path: Path) -> None:
    alive = {
        "A": meter("A", 1, "TR-1"),
        "B": meter("B", 2, "TR-1"),  # a tamper alarm
        "D": meter("D", 3, "TR-1"),  # disconnection failed, then succeeded
        "S": meter("S", 4, "TR-2"),  # disconnection failed
        "K": meter("K", 5, "TR-2"),  # clock could not be set
        "T": meter("T", 6, "TR-2"),  # theft suspect
        "G": meter("G", 7, "GS-1", "gas-g4"),  # battery low
        "G9": meter("G9", 30, "GS-9", "gas-g4"),  # battery low, in no district
    }
    silent = {"C": meter("C", 8, "TR-1")}
    outage = {s: meter(s, 9 + i, "TR-3") for i, s in enumerate(("O1", "O2", "O3"))}
    fleet = tmp_path / "fleet"
    fleet.mkdir()
    (fleet / "grid.csv").write_text(GRID)
    every = {**alive, **silent, **outage}
    (fleet / "meters.csv").write_text(HEADER + "\n".join(m.csv() for m in every.values()) + "\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with running(
        tmp_path / "srv",
        [],
        fleet=fleet,
        store_settings={"balance_interval": 0.0},
        sections={
            "http": {"port": port, "token": TOKEN},
            "commands": {"schedule_interval": 0.0},
            "billing": {"interval": 0.0},
            "workorders": {"interval": 0.0, "silent_after": SILENT_AFTER},
        },
    ) as srv:
        # Centres: SC-1 covers district D-1; nothing covers D-2. Bad rows say why.
        (tmp_path / "centres.csv").write_text(
            "centre_id,name,districts,phone\n"
            "SC-1,Yunusobod service centre,D-1,+998 71 000 00 01\n"
            "SC-2,Nowhere,D-7,\n"
            "SC-3,Two regions,D-2;D-9,\n"
            "SC-4,Taker,D-1,\n"
            "SC-1,Again,D-2,\n"
        )
        r = srv.cli("centres", "import", str(tmp_path / "centres.csv"), check=False)
        assert r.returncode == 1
        assert "1 rows loaded, 4 refused" in r.stdout
        assert "centres.csv:3: D-7: not grid nodes of level district" in r.stderr
        assert "centres.csv:4: its districts lie in several regions (SAM, TAS)" in r.stderr
        assert "centres.csv:5: district(s) already covered by another centre: D-1 (SC-1)" in (
            r.stderr
        )
        assert "centres.csv:6: centre_id SC-1 appears twice in the file" in r.stderr

        # Every meter is heard once; then C and the three of TR-3 fall silent.
        first = [srv.pusher() for _ in every]
        for p, m in zip(first, every.values(), strict=True):
            p.send(p.frame(m.push(1)))
        srv.wait_for("SELECT uniqExact(meter) FROM ami.meter_seen", len(every))
        time.sleep(SILENT_AFTER + 1.5)
        with keep_pushing(srv, list(alive.values())):
            srv.wait_for(
                "SELECT max(last_received) >= now() - 2 FROM ami.meter_seen WHERE meter = 'A'", 1
            )
            # The meters' own alarms, over DLMS: a terminal cover opened, a battery low.
            p = srv.pusher()
            p.send(p.frame(alive["B"].event(40, dt.datetime.now(dt.UTC))))
            p.send(p.frame(alive["G"].event(82, dt.datetime.now(dt.UTC))))
            p.send(p.frame(alive["G9"].event(82, dt.datetime.now(dt.UTC))))
            srv.wait_for("SELECT count() FROM ami.events WHERE meter IN ('B', 'G', 'G9')", 3)
            # What the other parts of the head-end leave behind: a suspect, and the
            # command trail of switching and clock setting.
            srv.admin(
                "insert",
                table="anomaly_findings",
                columns=[
                    "window_start",
                    "window_end",
                    "meter",
                    "node_id",
                    "score",
                    "rules",
                    "evidence",
                    "node_loss_pct",
                    "computed_at",
                ],
                rows=[
                    [
                        now_iso(-86400),
                        now_iso(),
                        "T",
                        "TR-2",
                        3,
                        ["low_vs_peers", "drop_vs_history"],
                        json.dumps({"low_vs_peers": {"ratio": 0.08}}),
                        23.5,
                        now_iso(),
                    ]
                ],
            )
            cols = ["command_id", "serial", "kind", "state", "error", "requested_at", "ts"]
            rows = [
                ["c-s", "S", "disconnect", "failed", "disconnect not verified", now_iso(-60)],
                ["c-k", "K", "clock", "failed", "clock set but still 95 s off", now_iso(-60)],
                ["c-d1", "D", "disconnect", "failed", "meter did not answer", now_iso(-120)],
                ["c-d2", "D", "disconnect", "done", "", now_iso(-30)],
            ]
            srv.admin("insert", table="commands", columns=cols, rows=[[*x, x[-1]] for x in rows])

            # Every alive meter heard within the last 3 s (a loaded machine may store
            # pushes late; none of them may pass for silent).
            names = ", ".join(f"'{m}'" for m in alive)
            srv.wait_for(
                "SELECT countIf(t >= now() - 3) FROM (SELECT meter, max(last_received) AS t "
                f"FROM ami.meter_seen WHERE meter IN ({names}) GROUP BY meter)",
                len(alive),
            )
            report = srv.admin("workorders.scan")
            assert report["opened"] == {
                "theft_suspect": 1,
                "silent": 1,
                "tamper": 1,
                "low_battery": 2,
                "switch_failed": 1,
                "clock_uncorrected": 1,
            }, report
            assert report["outage_meters"] == 3  # TR-3 fell silent as a whole
            assert report["no_centre"] == 4  # D-2 has no centre yet
            # Exactly one per cause and meter: a second pass opens nothing.
            assert srv.admin("workorders.scan")["opened"] == {}

        found = {(o["cause"], o["serial"]): o for o in orders(srv)}
        assert set(found) == {
            ("theft_suspect", "T"),
            ("silent", "C"),
            ("tamper", "B"),
            ("low_battery", "G"),
            ("low_battery", "G9"),
            ("switch_failed", "S"),
            ("clock_uncorrected", "K"),
        }
        silent_c = found[("silent", "C")]
        assert (silent_c["district"], silent_c["centre_id"], silent_c["node_id"]) == (
            "D-1",
            "SC-1",
            "TR-1",
        )
        assert silent_c["evidence"]["last_heard"] > 0
        assert (found[("tamper", "B")]["centre_id"], found[("tamper", "B")]["priority"]) == (
            "SC-1",
            2,
        )
        assert found[("tamper", "B")]["evidence"]["events"] == ["terminal-cover-opened"]
        # A meter in no district (a gas network under the region): the region's centre.
        g9 = found[("low_battery", "G9")]
        assert (g9["district"], g9["centre_id"]) == ("", "SC-1")
        switch = found[("switch_failed", "S")]
        assert (switch["district"], switch["centre_id"], switch["priority"]) == ("D-2", "", 1)
        assert switch["evidence"]["error"] == "disconnect not verified"
        assert switch["due_at"] - switch["created_at"] == pytest.approx(24 * 3600, abs=2)
        theft = found[("theft_suspect", "T")]
        assert theft["evidence"]["rules"] == ["low_vs_peers", "drop_vs_history"]
        assert theft["account_id"] == "ACC-T"

        # People: a service engineer of the region, a viewer, one of another region.
        for name, roles, regions in (
            ("svc", ["service"], ["TAS"]),
            ("vi", ["viewer"], ["TAS"]),
            ("far", ["service"], ["SAM"]),
        ):
            add_user(url, name, roles, regions)
        tok = {}
        for name in ("svc", "vi", "far"):
            status, t = get(url + f"/api/users/{name}/tokens", data={"label": "test"})
            assert status == 201, t
            tok[name] = t["token"]
        tid = theft["order_id"]
        status, r = get(url + f"/api/workorders/{tid}/assign", tok["vi"], data={"to": "crew 7"})
        assert status == 403, r
        assert "service" in r["error"]
        status, r = get(url + "/api/workorders", tok["far"])
        assert (status, r["orders"]) == (200, [])
        # The region's own people see them with where the meter is (the map's squares).
        status, r = get(url + "/api/workorders?state=active", tok["vi"])
        mine = {o["order_id"]: o for o in r["orders"]}
        assert (mine[tid]["lat"], mine[tid]["lon"]) == (41.3, 69.3)
        status, r = get(url + f"/api/workorders/{tid}/assign", tok["far"], data={"to": "x"})
        assert status == 403, r
        assert get(url + "/api/workorders/WO-NOPE", tok["svc"])[0] == 404

        # open -> assigned -> visited -> closed; the wrong order of steps is refused.
        status, r = get(url + f"/api/workorders/{tid}/close", tok["svc"], data={"outcome": "x"})
        assert status == 400
        assert "is open: close only when assigned or visited" in r["error"]
        status, r = get(
            url + f"/api/workorders/{tid}/assign",
            tok["svc"],
            data={"to": "crew 7", "centre": "SC-9"},
        )
        assert status == 400
        assert "no service centre 'SC-9'" in r["error"]
        status, r = get(url + f"/api/workorders/{tid}/assign", tok["svc"], data={"to": "crew 7"})
        assert (status, r["state"], r["assignee"]) == (200, "assigned", "crew 7"), r
        status, r = get(
            url + f"/api/workorders/{tid}/visit", tok["svc"], data={"note": "seal broken"}
        )
        assert (status, r["state"]) == (200, "visited")
        status, r = get(
            url + f"/api/workorders/{tid}/close",
            tok["svc"],
            data={"outcome": "theft_confirmed", "note": "bypass cable removed"},
        )
        assert (status, r["state"], r["outcome"]) == (200, "closed", "theft_confirmed")
        assert srv.sql("SELECT account_id, flag, serial, by FROM ami.account_flags") == [
            ["ACC-T", "theft_confirmed", "T", "svc"]
        ]
        status, shown = get(url + f"/api/workorders/{tid}", tok["vi"])
        assert [(h["state"], h["by"]) for h in shown["history"]] == [
            ("open", "workorders"),
            ("assigned", "svc"),
            ("visited", "svc"),
            ("closed", "svc"),
        ]
        status, prec = get(url + "/api/workorders/precision", tok["vi"])
        assert (prec["inspected"], prec["confirmed"], prec["precision"]) == (1, 1, 1.0)
        assert {x["name"] for x in prec["by_rule"]} == {"low_vs_peers", "drop_vs_history"}

        # A replaced meter: the new one must be imported with its keys first.
        cid = found[("silent", "C")]["order_id"]
        srv.cli("workorders", "assign", cid, "--to", "crew 2")
        r = srv.cli("workorders", "close", cid, "--outcome", "replaced", check=False)
        assert r.returncode != 0
        assert "needs the new meter's serial" in r.stderr
        swap = ["--outcome", "replaced", "--new-serial", "C2"]
        r = srv.cli("workorders", "close", cid, *swap, check=False)
        assert "needs old_final" in r.stderr
        # C's register stood at 100.25 kWh when it was last heard.
        swap += ["--old-final", "100.5", "--new-initial", "0.0"]
        r = srv.cli("workorders", "close", cid, *swap, check=False)
        assert "meter C2 is not imported with its keys" in r.stderr
        new = meter("C2", 20, "TR-1")
        (tmp_path / "new.csv").write_text(HEADER + new.csv().replace("ACC-C2", "ACC-C") + "\n")
        srv.cli("meters", "import", str(tmp_path / "new.csv"))
        out = srv.cli("workorders", "close", cid, *swap, "--json")
        closed = json.loads(out.stdout)
        assert (closed["state"], closed["outcome"], closed["new_serial"]) == (
            "closed",
            "replaced",
            "C2",
        )

        # The crews' list, as CSV, in Tashkent time.
        status, text = get(url + "/api/workorders?state=active&format=csv", tok["svc"])
        assert status == 200
        lines = list(csv.DictReader(io.StringIO(text)))
        assert {x["serial"] for x in lines} == {"B", "G", "G9", "S", "K"}
        b_line = next(x for x in lines if x["serial"] == "B")
        assert b_line["centre_id"] == "SC-1"
        assert b_line["why"].startswith("terminal-cover-opened")
        assert b_line["lat"] == "41.30000"

        # After an order is closed, only newer evidence opens another.
        bid = found[("tamper", "B")]["order_id"]
        srv.cli("workorders", "assign", bid, "--to", "crew 3")
        srv.cli("workorders", "close", bid, "--outcome", "no_fault")
        assert "tamper" not in srv.admin("workorders.scan")["opened"]
        time.sleep(1.1)
        p = srv.pusher()
        p.send(p.frame(alive["B"].event(42, dt.datetime.now(dt.UTC))))
        srv.wait_for("SELECT count() FROM ami.events WHERE meter = 'B'", 2)
        assert srv.admin("workorders.scan")["opened"].get("tamper") == 1

        # Every person's change is on the audit record.
        acts = srv.sql(
            "SELECT user, action, target FROM ami.audit WHERE action LIKE 'workorders.%' "
            "AND outcome = 'ok' ORDER BY at"
        )
        assert ["svc", "workorders.close", tid] in acts
        assert any(a[1] == "workorders.close" and a[2] == cid for a in acts)
        refused = srv.sql(
            "SELECT user FROM ami.audit WHERE action = 'workorders.assign' AND outcome = 'failed'"
        )
        assert ["far"] in refused


OUTAGE_GRID = """node_id,parent_id,level,commodity,name,admin_unit,lat,lon
UZ,,republic,any,Uzbekistan,UZ,41.3,69.2
TAS,UZ,region,any,Tashkent city,TAS,41.31,69.28
D-1,TAS,district,any,Yunusobod,TAS,41.36,69.28
D-2,TAS,district,any,Chilonzor,TAS,41.28,69.2
F-1,D-1,feeder,electricity,Feeder 1,TAS,41.36,69.29
TR-A,F-1,transformer,electricity,TP-A,TAS,41.36,69.29
TR-B,F-1,transformer,electricity,TP-B,TAS,41.36,69.3
TR-C,F-1,transformer,electricity,TP-C,TAS,41.37,69.3
TR-D,D-2,transformer,electricity,TP-D,TAS,41.28,69.21
TR-E,D-2,transformer,electricity,TP-E,TAS,41.29,69.22
"""


def test_power_events_become_outages_with_restoration_and_indices(tmp_path: Path) -> None:
    layout = {
        "TR-A": ["a1", "a2"],
        "TR-B": ["b1", "b2"],
        "TR-C": ["c1", "c2", "c3"],
        "TR-D": ["d1", "d2", "d3"],
        "TR-E": ["e1", "e2", "e3", "e4"],  # no power events: they fall silent
    }
    ms: dict[str, Meter] = {}
    for node, serials in layout.items():
        for s in serials:
            ms[s] = meter(s, len(ms) + 1, node)
    ms["bC"] = meter("bC", 50, "TR-C", "e3ph")  # TR-C's balance meter
    fleet = tmp_path / "fleet"
    fleet.mkdir()
    (fleet / "grid.csv").write_text(OUTAGE_GRID)
    lines = [m.csv() for m in ms.values()]
    lines[-1] = lines[-1].replace(",consumer,", ",balance,")
    (fleet / "meters.csv").write_text(HEADER + "\n".join(lines) + "\n")
    now = int(time.time())
    t0 = now - 3 * 3600  # TR-C out for 15 minutes (c3 back last)
    t1 = t0 + 3600  # a1 alone: that consumer's matter, not an outage
    t2 = t0 + 1800  # TR-A and TR-B together: most of feeder F-1, for 2 minutes
    t3 = now - 1800  # TR-D out, only d1 back yet
    events: list[tuple[str, int, int]] = [
        *((s, t0 + i, 1) for i, s in enumerate(("c1", "c2", "c3"))),
        ("bC", t0 + 5, 1),
        ("c1", t0 + 600, 2),
        ("c2", t0 + 600, 2),
        ("bC", t0 + 600, 2),
        ("c3", t0 + 900, 2),
        ("a1", t1, 1),
        ("a1", t1 + 100, 2),
        *((s, t2 + i, 1) for i, s in enumerate(("a1", "a2", "b1", "b2"))),
        *((s, t2 + 120, 2) for s in ("a1", "a2", "b1", "b2")),
        *((s, t3, 1) for s in ("d1", "d2", "d3")),
        ("d1", t3 + 60, 2),
    ]
    with running(
        tmp_path / "srv",
        [],
        fleet=fleet,
        store_settings={"balance_interval": 0.0},
        sections={
            "commands": {"schedule_interval": 0.0},
            "billing": {"interval": 0.0},
            "workorders": {"interval": 0.0},
            "outages": {"interval": 0.0, "silent_after": 3.0},
        },
    ) as srv:
        p = srv.pusher()
        # Half before the first pass, half after: a later pass completes the outages
        # the first saw, under the same ids.
        half = len(events) // 2
        for serial, t, code in events[:half]:
            p.send(p.frame(ms[serial].event(code, dt.datetime.fromtimestamp(t, dt.UTC))))
        srv.wait_for("SELECT count() FROM ami.events", half)
        srv.admin("outages.scan")
        first = {o["node_id"]: o["outage_id"] for o in srv.admin("outages.list")["outages"]}
        for serial, t, code in events[half:]:
            p.send(p.frame(ms[serial].event(code, dt.datetime.fromtimestamp(t, dt.UTC))))
        srv.wait_for("SELECT count() FROM ami.events", len(events))
        report = srv.admin("outages.scan")
        assert (report["outages"], report["ongoing"], report["feeders"]) == (3, 1, 1), report
        assert report["single_meter"] == 1  # a1 alone

        got = {o["node_id"]: o for o in srv.admin("outages.list")["outages"]}
        assert set(got) == {"TR-C", "F-1", "TR-D"}
        c = got["TR-C"]
        assert first["TR-C"] == c["outage_id"]
        assert (c["started_at"], c["ended_at"], c["minutes"]) == (t0, t0 + 900, 15.0)
        assert (c["consumers"], c["reported"], c["restored"]) == (3, 3, 3)
        assert (c["balance_saw"], c["sustained"], c["district"]) == (1, 1, "D-1")
        f = got["F-1"]
        assert (f["level"], f["started_at"], f["ended_at"]) == ("feeder", t2, t2 + 120)
        assert (f["consumers"], f["reported"], f["restored"]) == (7, 4, 4)
        assert (f["balance_saw"], f["sustained"]) == (-1, 0)  # no feeder-head meter
        d = got["TR-D"]
        assert d["ongoing"]
        assert (d["consumers"], d["reported"], d["restored"]) == (3, 3, 1)
        shown = srv.admin("outages.show", id=d["outage_id"])
        assert shown["not_restored"] == ["d2", "d3"]
        feeder = srv.admin("outages.show", id=f["outage_id"])
        assert {m["meter"] for m in feeder["meters"]} == {"a1", "a2", "b1", "b2"}
        # The transformer outages were merged into the feeder's.
        assert srv.sql(
            "SELECT node_id, merged_into FROM ami.outages FINAL WHERE merged_into != '' "
            "ORDER BY node_id"
        ) == [["TR-A", f["outage_id"]], ["TR-B", f["outage_id"]]]

        # SAIDI, SAIFI, MAIFI of district D-1 (7 consumers) for TR-C's month: 3
        # consumers out 15 minutes (sustained); 7 out 2 minutes (momentary) if the
        # feeder's outage fell in the same local month.
        local = dt.timezone(dt.timedelta(hours=5))
        month = dt.datetime.fromtimestamp(t0, local).strftime("%Y-%m")
        same = dt.datetime.fromtimestamp(t2, local).strftime("%Y-%m") == month
        ix = {
            x["unit"]: x
            for x in srv.admin("outages.indices", by="district", month=month)["indices"]
        }
        assert ix["D-1"]["consumers"] == 7
        assert ix["D-1"]["saidi_min"] == pytest.approx(3 * 15 / 7, abs=1e-3)
        assert ix["D-1"]["saifi"] == pytest.approx(3 / 7, abs=1e-4)
        assert ix["D-1"]["maifi"] == pytest.approx(1.0 if same else 0.0)
        with pytest.raises(AssertionError, match="YYYY-MM"):
            srv.cli("outages", "indices", "--month", "12/2026")
        out = srv.cli("outages", "list", "--format", "csv").stdout
        assert out.count("\n") == 4  # the header and three outages

        # Meters that report no power events: three of TR-E's four fall silent
        # together (e4 goes on pushing), then come back.
        def push(serials: list[str], i: int) -> None:
            for serial in serials:
                p.send(p.frame(ms[serial].push(i)))

        push(["e1", "e2", "e3", "e4"], 1)
        srv.wait_for("SELECT uniqExact(meter) FROM ami.meter_seen", 4)
        time.sleep(4.5)
        push(["e4"], 2)
        srv.wait_for("SELECT count() FROM ami.readings WHERE meter = 'e4'", 2 * 6)
        srv.admin("outages.scan")
        quiet = next(o for o in srv.admin("outages.list")["outages"] if o["node_id"] == "TR-E")
        assert quiet["ongoing"]
        assert (quiet["consumers"], quiet["reported"], quiet["restored"]) == (4, 3, 0)
        assert (
            srv.scalar(
                f"SELECT source FROM ami.outages FINAL WHERE outage_id = '{quiet['outage_id']}'"
            )
            == "silence"
        )
        back_at = time.time()
        push(["e1", "e2", "e3", "e4"], 3)
        srv.wait_for("SELECT count() FROM ami.readings WHERE meter IN ('e1', 'e2', 'e3')", 36)
        srv.admin("outages.scan")
        ended = srv.admin("outages.show", id=quiet["outage_id"])
        assert not ended["ongoing"], ended
        assert (ended["restored"], ended["not_restored"]) == (3, [])
        assert abs(ended["ended_at"] - back_at) <= 2
        assert ended["sustained"] == 0  # seconds, not minutes
