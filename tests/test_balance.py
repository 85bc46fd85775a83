"""Consumption and balances end to end through ClickHouse, against hand-computed values.

The grid: feeder F1 (balance meter BF) feeds transformer T1 (balance meter BT1;
consumers C1, C2) and transformer T2 (no balance meter; consumer C3); gas station GS
(balance meter BG; consumer G1). Registers are read every hour from T0 for four hours.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from headend import balance, codec, profiles
from headend.config import REPO_ROOT
from headend.errors import HeadendError
from headend.store.db import Store, migrate
from headend.store.imports import import_grid, import_meters

H = 3600
T0 = 1_793_577_600  # 2026-11-02 00:00 UTC, 05:00 in Tashkent
END = T0 + 4 * H

GRID = """node_id,parent_id,level,commodity,name,admin_unit,lat,lon
UZ,,republic,any,Uzbekistan,UZ,41.3,64.6
TK,UZ,region,any,Tashkent,TK,41.3,69.3
TK-D01,TK,district,any,District 1,TK-D01,41.3,69.3
F1,TK-D01,feeder,electricity,Feeder 1,TK-D01,41.3,69.3
T1,F1,transformer,electricity,T1,TK-D01,41.3,69.3
T2,F1,transformer,electricity,T2,TK-D01,41.3,69.3
GS,TK,gas_station,gas,Gas station,TK,41.3,69.3
"""
METERS = [
    ("BF", "electricity", "balance", "F1", "e3ph"),
    ("BT1", "electricity", "balance", "T1", "e3ph"),
    ("C1", "electricity", "consumer", "T1", "e1ph"),
    ("C2", "electricity", "consumer", "T1", "e1ph"),
    ("C3", "electricity", "consumer", "T2", "e1ph"),
    ("BG", "gas", "balance", "GS", "gas-g4"),
    ("G1", "gas", "consumer", "GS", "gas-g4"),
]
# Register values (Wh; m³ for gas) at T0 + k hours; None: the push never came.
REGISTERS: dict[str, list[float | None]] = {
    "BF": [0, 10_000, 20_000, 30_000, 40_000],
    "BT1": [0, 6_000, 12_000, 18_000, 24_000],
    "C1": [0, 2_000, 4_000, 6_000, 50],  # the register restarted in the last hour
    "C2": [0, 3_000, None, 9_000, 12_000],  # the push at T0+2h is missing
    "C3": [0, 3_000, 6_000, 9_000, 12_000],
    "BG": [0, 5, 10, 15, 20],
    "G1": [0, 4, 8, 12, 16],
}


_obis = balance.obis_int


def _readings(store: Store, samples: list[tuple[str, int, float]]) -> None:
    rows = []
    for meter, t, v in samples:
        gas = meter in ("BG", "G1")
        rows.append(
            [
                meter,
                _obis(balance.GAS_VOLUME if gas else balance.ELECTRICITY_IMPORT),
                dt.datetime.fromtimestamp(t, dt.UTC),
                float(v),
                "m³" if gas else "Wh",
                0,
                "push",
                "measured",
                dt.datetime.fromtimestamp(t, dt.UTC),
            ]
        )
    cols = ["meter", "obis", "ts", "value", "unit", "status", "source", "quality", "received_at"]
    store.insert_rows("readings", cols, rows)


@pytest.fixture
def store(tmp_path: Path) -> Any:
    st = Store(f"chdb://{tmp_path / 'db'}", "ami").connect()
    migrate(st)
    (tmp_path / "grid.csv").write_text(GRID)
    assert not import_grid(tmp_path / "grid.csv", st).bad
    header = "serial,kind,role,node_id,account_id,model,system_title,ek,ak,password,lat,lon\n"
    body = "".join(f"{s},{k},{r},{n},A-{s},{m},,,,,41.3,69.3\n" for s, k, r, n, m in METERS)
    (tmp_path / "meters.csv").write_text(header + body)
    models = profiles.kinds(profiles.load_all(REPO_ROOT / "protocols" / "profiles"))
    master = codec.MasterKey(bytes(range(32)))
    assert not import_meters(tmp_path / "meters.csv", st, master, models).bad
    _readings(
        st,
        [
            (m, T0 + k * H, v)
            for m, values in REGISTERS.items()
            for k, v in enumerate(values)
            if v is not None
        ],
    )
    yield st
    st.close()


def hourly(store: Store, node: str) -> list[tuple[float, float, float, int, int, int]]:
    _, rows = store.query(
        "SELECT input, output, loss, measured, expected, has_input FROM ami.balances FINAL "
        "WHERE node_id = %(n)s ORDER BY period_start",
        {"n": node},
    )
    return [(round(a, 6), round(b, 6), round(c, 6), d, e, f) for a, b, c, d, e, f in rows]


def consumption(store: Store, meter: str) -> list[tuple[float, str, int]]:
    _, rows = store.query(
        "SELECT value, quality, flags FROM ami.consumption FINAL WHERE meter = %(m)s "
        "ORDER BY interval_start",
        {"m": meter},
    )
    return [(round(v, 6), q, f) for v, q, f in rows]


def _corrected(store: Store, meter: str, per_hour: float) -> None:
    """Corrected gas volume (7.0.13.0.0.255) of `meter`, `per_hour` m³ an hour from T0."""
    at = [dt.datetime.fromtimestamp(T0 + k * H, dt.UTC) for k in range(5)]
    rows = [
        [meter, _obis(balance.GAS_CORRECTED), t, per_hour * k, "m³ (corr)", 0, "push",
         "measured", t]
        for k, t in enumerate(at)
    ]  # fmt: skip
    cols = ["meter", "obis", "ts", "value", "unit", "status", "source", "quality", "received_at"]
    store.insert_rows("readings", cols, rows)


def test_gas_balances_count_the_corrected_volume_where_a_meter_has_it(store: Store) -> None:
    """GS: BG measures 5 m³ an hour (4.8 corrected), G1 4 m³ (3.9 corrected). With only
    BG's corrected volume the balance is 4.8 in, 4 out, mixed; with G1's too, 4.8 in,
    3.9 out, corrected. The volume is never counted twice."""

    def gs() -> list[tuple[float, float, int, int]]:
        _, rows = store.query(
            "SELECT input, output, measured, corrected FROM ami.balances FINAL "
            "WHERE node_id = 'GS' ORDER BY period_start"
        )
        return [(round(i, 6), round(o, 6), m, c) for i, o, m, c in rows]

    def volume() -> str:
        cols, rows = balance.report(
            store, "ami", level="gas_station", period="day", start=T0, end=END
        )
        got = dict(zip(cols, rows[0], strict=True))
        return str(got["volume"])

    _corrected(store, "BG", 4.8)
    balance.recompute(store, T0, END, now=END + 60)
    assert gs() == [(4.8, 4.0, 2, 1)] * 4
    assert volume() == "mixed"
    _corrected(store, "G1", 3.9)
    balance.recompute(store, T0, END, now=END + 60)
    assert gs() == [(4.8, 3.9, 2, 2)] * 4
    assert volume() == "corrected"
    # Summed from the consumption table (late data for a few meters), the same.
    assert balance._balances(store, T0, END, balance._network(store), None) == 4 * 4
    assert gs() == [(4.8, 3.9, 2, 2)] * 4
    # Electricity has no such choice; its report says nothing of volumes.
    cols, rows = balance.report(store, "ami", level="transformer", period="day", start=T0, end=END)
    assert {dict(zip(cols, r, strict=True))["volume"] for r in rows} == {""}


def test_hand_computed_balances(store: Store) -> None:
    rep = balance.recompute(store, T0, END, now=END + 60)
    assert rep.consumption_rows == 7 * 4
    # C2's missing push: hours 1 and 2 share the 6 kWh between the pushes around it.
    assert consumption(store, "C2") == [
        (3.0, "measured", 0),
        (3.0, "estimated", 1),
        (3.0, "estimated", 1),
        (3.0, "measured", 0),
    ]
    # C1's register restarted: the last hour is invalid and counts for nothing.
    assert consumption(store, "C1")[3] == (0.0, "invalid", 2)
    assert consumption(store, "G1") == [(4.0, "measured", 0)] * 4
    # T1: input 6 kWh an hour; output C1 + C2; completeness over BT1, C1, C2.
    assert hourly(store, "T1") == [
        (6.0, 5.0, 1.0, 3, 3, 1),
        (6.0, 5.0, 1.0, 2, 3, 1),
        (6.0, 5.0, 1.0, 2, 3, 1),
        (6.0, 3.0, 3.0, 2, 3, 1),
    ]
    # T2 has no balance meter: no input, no loss; its consumption counts at F1.
    assert hourly(store, "T2") == [(0.0, 3.0, 0.0, 1, 1, 0)] * 4
    # F1: input 10; output T1's input (6) + T2's consumers (3).
    assert hourly(store, "F1") == [(10.0, 9.0, 1.0, 3, 3, 1)] * 4
    assert hourly(store, "GS") == [(5.0, 4.0, 1.0, 2, 2, 1)] * 4
    # Those were summed in Rust while the consumption was derived; summed from the
    # `consumption` table (as for a few meters' late data) they are the same.
    nodes = ("F1", "T1", "T2", "GS")
    summed = {n: hourly(store, n) for n in nodes}
    assert balance._balances(store, T0, END, balance._network(store), None) == 4 * 4
    assert {n: hourly(store, n) for n in nodes} == summed

    # The day in Tashkent time (05:00-09:00 of 2 November).
    cols, rows = balance.report(store, "ami", level="transformer", period="day", start=T0, end=END)
    got = [dict(zip(cols, r, strict=True)) for r in rows]
    assert [(g["node_id"], g["input"], g["output"], g["loss"], g["loss_pct"]) for g in got] == [
        ("T1", 24.0, 18.0, 6.0, 25.0),
        ("T2", 0.0, 12.0, 0.0, None),
    ]
    assert got[0]["completeness"] == pytest.approx(9 / 12, abs=1e-4)
    assert str(got[0]["period"]).startswith("2026-11-02")
    for period, label in (("month", "2026-11"), ("year", "2026"), ("hour", "2026-11-02T05:00")):
        _, rows = balance.report(
            store, "ami", level="transformer", period=period, start=T0, end=END, node="T1"
        )
        assert rows[0][:2] == ("T1", label + ("+05:00" if period == "hour" else ""))
        assert sum(r[2] for r in rows) == 24.0
    # The region, link by link.
    cols, rows = balance.report(store, "ami", level="region", period="day", start=T0, end=END)
    links = {(r[0], r[1]): (r[3], r[4], r[5]) for r in rows}
    assert links == {
        ("TK", "feeder"): (40.0, 36.0, 4.0),
        ("TK", "transformer"): (24.0, 18.0, 6.0),
        ("TK", "gas_station"): (20.0, 16.0, 4.0),
    }


def test_a_recompute_whose_readings_are_all_refused_writes_nothing(store: Store) -> None:
    balance.recompute(store, T0, END, now=END + 60)
    before = hourly(store, "F1")
    assert before == [(10.0, 9.0, 1.0, 3, 3, 1)] * 4
    # A clock a day behind puts every reading in the future: nothing comes of them,
    # and the balances computed before stay as they were instead of becoming zeros.
    with pytest.raises(balance.BalanceError, match="refusing to write balances") as e:
        balance.recompute(store, T0, END, now=T0 - 86_400)
    assert "future" in str(e.value)
    assert "[clock]" in str(e.value)
    assert hourly(store, "F1") == before


def test_late_data_replaces_the_estimate_and_reruns_change_nothing(store: Store) -> None:
    balance.recompute(store, T0, END, now=END + 60)
    first = {n: hourly(store, n) for n in ("T1", "T2", "F1", "GS")}
    rep = balance.recompute(store, T0, END, now=END + 60, meters_per_slice=2)  # 4 slices
    assert rep.series == 7
    assert {n: hourly(store, n) for n in first} == first
    # C2's buffered reading arrives: 2 kWh in hour 1, 4 kWh in hour 2.
    _readings(store, [("C2", T0 + 2 * H, 5_000)])
    balance.recompute(store, T0, END, now=END + 60)
    assert consumption(store, "C2")[1:3] == [(2.0, "measured", 0), (4.0, "measured", 0)]
    assert hourly(store, "T1")[1:3] == [(6.0, 4.0, 2.0, 3, 3, 1), (6.0, 6.0, 0.0, 3, 3, 1)]


def test_late_data_is_found_and_taken_in_for_its_meters(store: Store) -> None:
    """Readings that arrive after their hours left the recent window are found in
    `late_readings` by arrival, and recomputed for their meters only."""
    balance.recompute(store, T0, END, now=END + 60)
    before = {m: consumption(store, m) for m in ("C1", "C3", "G1")}
    since = int(time.time()) + 1  # the fixture's own arrivals are older
    late = balance.LateData(since)
    time.sleep(1.1)
    _readings(store, [("C2", T0 + 2 * H, 5_000)])  # the missing push, weeks late
    until = int(time.time()) + 2
    assert late.fetch(store, before=END + H, oldest=T0 - 30 * 86_400, until=until) == 1
    assert late.pending == {T0 + 2 * H: {"C2"}}
    # Outside [oldest, before), and a second fetch over the same arrivals, add nothing.
    again = balance.LateData(since)
    assert again.fetch(store, before=T0 + 2 * H, oldest=T0 - 86_400, until=until) == 0
    assert late.fetch(store, before=END + H, oldest=T0 - 30 * 86_400, until=until) == 1
    ranges = late.take(24)
    assert ranges == [(T0 + H, T0 + 5 * H, ["C2"])]
    assert late.pending == {}
    for start, end, meters in ranges:
        rep = balance.recompute(store, start, end, now=END + 60, meters=meters)
        assert rep.readings == 5  # C2's, nobody else's
    assert consumption(store, "C2")[1:3] == [(2.0, "measured", 0), (4.0, "measured", 0)]
    assert hourly(store, "T1")[1:3] == [(6.0, 4.0, 2.0, 3, 3, 1), (6.0, 6.0, 0.0, 3, 3, 1)]
    assert {m: consumption(store, m) for m in before} == before


def test_late_hours_are_taken_oldest_first_in_runs() -> None:
    late = balance.LateData(0)
    day = T0
    late.pending = {
        day: {"A"},
        day + H: {"B"},
        day + 3 * H: {"A"},  # two hours on: the same run (its widening overlaps)
        day + 10 * H: None,  # every meter
        day + 11 * H: {"C"},
        day + 30 * H: {"D"},
    }
    assert late.take(5) == [
        (day - H, day + 6 * H, ["A", "B"]),
        (day + 9 * H, day + 14 * H, None),
    ]
    assert late.pending == {day + 30 * H: {"D"}}
    assert late.take(5) == [(day + 29 * H, day + 33 * H, ["D"])]
    assert late.take(5) == []


def test_losses_rank_complete_nodes_only(store: Store) -> None:
    balance.recompute(store, T0, END, now=END + 60)
    cols, rows = balance.losses(store, "ami", level="transformer", start=T0, end=END, top=5)
    assert rows == []  # T1 is 75 % complete: its loss is not presented
    cols, rows = balance.losses(
        store, "ami", level="feeder", start=T0, end=END, top=5, min_completeness=0.9
    )
    assert [(r[0], r[2], r[3]) for r in rows] == [("F1", 4.0, 10.0)]
    assert cols[:4] == ["node_id", "admin_unit", "loss", "loss_pct"]


def test_the_command_line(store: Store, tmp_path: Path) -> None:
    store.close()
    cfg = tmp_path / "h.toml"
    cfg.write_text(f"[store]\ndsn = 'chdb://{tmp_path / 'db'}'\n")
    base = [sys.executable, "-m", "headend"]
    common = ["--config", str(cfg), "--data", str(tmp_path / "data")]
    args = ["--level", "feeder", "--period", "hour", "--from", "2026-11-02T05:00"]
    args += ["--to", "2026-11-02T09:00", "--format", "json", "--recompute"]
    r = subprocess.run(
        [*base, "balance", *args, *common], capture_output=True, text=True, check=False
    )
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [(x["input"], x["output"], x["loss"], x["loss_pct"]) for x in rows] == [
        (10.0, 9.0, 1.0, 10.0)
    ] * 4
    day = ["--level", "feeder", "--period", "day", "--to", "2026-11-03T00:00"]
    r = subprocess.run(
        [*base, "losses", *day, "--format", "json", *common],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert [(x["node_id"], x["loss"], x["loss_pct"]) for x in json.loads(r.stdout)] == [
        ("F1", 4.0, 10.0)
    ]
    # The command judges "now" by the configured clock, as the server does: one a day
    # behind the data refuses to recompute instead of writing zeros over the balances.
    behind = tmp_path / "behind.toml"
    behind.write_text(
        cfg.read_text() + f"[clock]\nspeed = 1.0\nstart = {T0 - 86_400}\nanchor = {time.time()}\n"
    )
    r = subprocess.run(
        [*base, "balance", *args, "--config", str(behind), "--data", str(tmp_path / "data")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 1
    assert "refusing to write balances" in r.stderr
    r = subprocess.run(
        [*base, "balance", *args[:-1], *common], capture_output=True, text=True, check=False
    )
    assert [x["input"] for x in json.loads(r.stdout)] == [10.0] * 4
    for bad, message in (
        (["balance", "--level", "nowhere"], "unknown level 'nowhere'"),
        (["losses", "--from", "yesterday"], "cannot read the time 'yesterday'"),
    ):
        r = subprocess.run([*base, *bad, *common], capture_output=True, text=True, check=False)
        assert r.returncode == 1, r.stderr
        assert message in r.stderr


def _events(store: Store, rows: list[tuple[str, int, str]]) -> None:
    cols = ["meter", "ts", "code", "name", "category", "source", "peer", "detail", "received_at"]
    store.insert_rows(
        "events",
        cols,
        [
            [m, when, 1, name, "alarm", "push", "", "", when]
            for m, t, name in rows
            for when in [dt.datetime.fromtimestamp(t, dt.UTC)]
        ],
    )


def test_suspects_under_a_lossy_transformer_with_their_evidence(store: Store) -> None:
    from headend import anomalies

    # C1 raised magnetic-field alarms; C2's export register runs (0.5 kWh an hour) and
    # it reported its disconnector off through the hour before and the first hour while
    # consuming 3 kWh in it.
    _events(store, [("C1", T0 + 600, "magnetic-field-detected")] * 2)
    # C3's magnet is evidence though T2 has no balance meter (a magnet has no innocent
    # cause); C3's cover opening beside it goes with it.
    _events(store, [("C3", T0 + 600, "magnetic-field-detected")])
    _events(store, [("C3", T0 + 700, "terminal-cover-opened")])
    export = _obis(balance.ELECTRICITY_EXPORT)
    state = _obis(anomalies.DISCONNECTOR_STATE)
    cols = ["meter", "obis", "ts", "value", "unit", "status", "source", "quality", "received_at"]
    store.insert_rows(
        "readings",
        cols,
        [
            [m, o, when, v, u, 0, "push", "measured", when]
            for m, o, t, v, u in [
                *(("C2", export, T0 + k * H, 500.0 * k, "Wh") for k in range(5)),
                ("C2", state, T0 - H + 900, 0.0, "count"),
                ("C2", state, T0 + 900, 0.0, "count"),
            ]
            for when in [dt.datetime.fromtimestamp(t, dt.UTC)]
        ],
    )
    balance.recompute(store, T0, END, now=END + 60)
    # The off reports mark C2's hours for one measured gap (flag 128; hour 1 is also a
    # gap, 1), and its first hour, off all through yet registering, 256.
    _, flags = store.query(
        "SELECT obis, groupArray(flags) FROM (SELECT obis, flags FROM ami.consumption FINAL "
        "WHERE meter = 'C2' ORDER BY interval_start) GROUP BY obis ORDER BY obis"
    )
    got_flags = [f[1] for f in flags]
    assert got_flags == [[384, 129, 1, 0], [384, 128, 0, 0]], got_flags  # import, export
    det = anomalies.detect(store, T0, END, min_completeness=0.7)
    assert det.lossy_nodes == {"T1": 25.0}
    assert det.consumers_checked == 2
    got = {f.meter: (f.rules, f.evidence, f.score) for f in det.suspects()}
    assert got == {
        "C1": (["tamper_events"], {"tamper_events": {"events": {"magnetic-field-detected": 2}}}, 2),
        "C2": (
            ["reverse_energy", "consuming_while_off"],
            {
                "reverse_energy": {"export_kwh": 2.0},
                "consuming_while_off": {"hours": 1, "kwh": 3.0},
            },
            5,
        ),
        "C3": (
            ["tamper_events"],
            {
                "tamper_events": {
                    "events": {"magnetic-field-detected": 1, "terminal-cover-opened": 1}
                }
            },
            2,
        ),
    }
    assert next(f for f in det.findings if f.meter == "C3").node_loss_pct == 0.0
    _, rows = store.query("SELECT meter, score, rules FROM ami.anomalies ORDER BY meter")
    assert rows == [
        ("C1", 2, ["tamper_events"]),
        ("C2", 5, ["reverse_energy", "consuming_while_off"]),
        ("C3", 2, ["tamper_events"]),
    ]
    # With completeness required at 0.8, T1 (0.75) is not trusted: its consumers are
    # not compared, the window's earlier findings are gone; the magnets stay.
    det = anomalies.detect(store, T0, END)
    assert det.lossy_nodes == {}
    _, rows = store.query("SELECT meter, rules FROM ami.anomalies ORDER BY meter")
    assert rows == [("C1", ["tamper_events"]), ("C3", ["tamper_events"])]


def test_suspects_under_a_lossy_gas_segment(store: Store, tmp_path: Path) -> None:
    """A gas segment (balance meter BS, 4 m³ an hour in) with consumers G2 and G3 (1 m³
    an hour each), G4 (uses 1, registers 0.2) and G5 (valve closed: nothing, and no
    evidence of theft). Eight hours: loss 4 - 2.2 = 1.8 m³ an hour, 45 %."""
    from headend import anomalies

    extra = "GSEG,GS,gas_segment,gas,Segment 1,TK,41.3,69.3\n"
    (tmp_path / "seg.csv").write_text(GRID.splitlines()[0] + "\n" + extra)
    assert not import_grid(tmp_path / "seg.csv", store).bad
    header = "serial,kind,role,node_id,account_id,model,system_title,ek,ak,password,lat,lon\n"
    layout = [("BS", "balance"), ("G2", "consumer"), ("G3", "consumer")]
    layout += [("G4", "consumer"), ("G5", "consumer")]
    body = "".join(f"{s},gas,{r},GSEG,A-{s},gas-g4,,,,,41.3,69.3\n" for s, r in layout)
    (tmp_path / "seg-meters.csv").write_text(header + body)
    models = profiles.kinds(profiles.load_all(REPO_ROOT / "protocols" / "profiles"))
    master = codec.MasterKey(bytes(range(32)))
    assert not import_meters(tmp_path / "seg-meters.csv", store, master, models).bad
    per_hour = {"BS": 4.0, "G2": 1.0, "G3": 1.0, "G4": 0.2, "G5": 0.0}
    vol, valve = _obis(balance.GAS_VOLUME), _obis(anomalies.VALVE_STATE)
    end = T0 + 8 * H
    rows = []
    for k in range(9):
        when = dt.datetime.fromtimestamp(T0 + k * H, dt.UTC)
        for m, v in per_hour.items():
            rows.append([m, vol, when, v * k, "m³", 0, "push", "measured", when])
        rows.append(["G5", valve, when, 0.0, "count", 0, "push", "measured", when])
    cols = ["meter", "obis", "ts", "value", "unit", "status", "source", "quality", "received_at"]
    store.insert_rows("readings", cols, rows)
    balance.recompute(store, T0, end, now=end + 60)
    det = anomalies.detect(store, T0, end, write=False)
    assert det.lossy_nodes["GSEG"] == pytest.approx(45.0)
    got = {f.meter: f for f in det.suspects() if f.node_id == "GSEG"}
    assert set(got) == {"G4"}
    assert got["G4"].rules == ["low_vs_peers"]
    assert got["G4"].evidence["low_vs_peers"] == {
        "m3_per_h": 0.2,
        "peer_median_m3_per_h": 1.0,
        "hours": 8,
        "hours_excluded": 0,
    }
    assert all(f.meter != "G5" for f in det.findings)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


def test_the_server_keeps_recent_balances_up_to_date(tmp_path: Path) -> None:
    from tests.server_harness import Meter, running

    settings = {"balance_interval": 0.5, "balance_window": 6 * H}
    with running(tmp_path, [Meter("P1", "e1ph")], store_settings=settings) as srv:
        hour = int(time.time()) // H * H
        obis = _obis(balance.ELECTRICITY_IMPORT)
        rows = [
            ["P1", obis, when, v, "Wh", 0, "push", "measured", when]
            for t, v in ((hour - 3 * H, 1000.0), (hour - 2 * H, 1500.0), (hour - H, 2500.0))
            for when in [dt.datetime.fromtimestamp(t, dt.UTC).isoformat()]
        ]
        cols = ["meter", "obis", "ts", "value", "unit", "status", "source", "quality"]
        srv.admin("insert", table="readings", columns=[*cols, "received_at"], rows=rows)
        srv.wait_for("SELECT round(sum(value), 3) FROM ami.consumption FINAL", 1.5)
        srv.wait_for(
            "SELECT round(sum(output), 3) FROM ami.balances FINAL WHERE node_id = 'TR-1'", 1.5
        )
        # The commands go through the running server (which owns the embedded store).
        rep = srv.admin("recompute", start=hour - 3 * H, end=hour)
        assert (rep["readings"], rep["consumption_rows"]) == (3, 2)
        assert srv.admin("detect", start=hour - 3 * H, end=hour) == {
            "lossy_nodes": 0,
            "consumers_examined": 0,
            "findings": 0,
            "suspects": 0,
        }
        r = srv.cli(
            "balance",
            "--level",
            "transformer",
            "--period",
            "hour",
            "--from",
            str(hour - 3 * H),
            "--to",
            str(hour),
            "--recompute",
            "--format",
            "json",
        )
        got = [(x["node_id"], x["output"]) for x in json.loads(r.stdout)]
        assert got == [("TR-1", 0.5), ("TR-1", 1.0), ("TR-1", 0.0)]

        # Two days late, far outside the window: taken in by the server on its own.
        day = hour - 48 * H
        rows = [
            ["P1", obis, when, v, "Wh", 0, "poll", "measured", now]
            for t, v in ((day, 100.0), (day + H, 400.0))
            for when, now in [(dt.datetime.fromtimestamp(t, dt.UTC).isoformat(), _now())]
        ]
        srv.admin("insert", table="readings", columns=[*cols, "received_at"], rows=rows)
        srv.wait_for(
            "SELECT round(sum(value), 3) FROM ami.consumption FINAL "
            f"WHERE interval_start = toDateTime({day})",
            0.3,
            timeout=60,
        )
        srv.wait_for(
            "SELECT round(sum(output), 3) FROM ami.balances FINAL "
            f"WHERE node_id = 'TR-1' AND period_start = toDateTime({day})",
            0.3,
        )


def test_a_gap_is_spread_by_the_meters_own_typical_day(store: Store) -> None:
    # C3's next day, hourly: 1 kWh in even Tashkent hours, 3 kWh in odd ones (T0 + k
    # hours is local hour 5 + k). Its register was 12,000 Wh at T0 + 4 h.
    def used(k: int) -> float:
        return 1_000.0 if (5 + k) % 24 % 2 == 0 else 3_000.0

    values = {4: 12_000.0}
    for k in range(4, 32):
        values[k + 1] = values[k] + used(k)
    del values[30]  # no push at T0 + 30 h: hours 29 and 30 form a gap
    _readings(store, [("C3", T0 + k * H, v) for k, v in values.items() if k > 4])
    balance.recompute(store, T0 + 4 * H, T0 + 28 * H, now=T0 + 40 * H)  # its history
    balance.recompute(store, T0 + 28 * H, T0 + 32 * H, now=T0 + 40 * H)
    _, rows = store.query(
        "SELECT value, quality, flags FROM ami.consumption FINAL WHERE meter = 'C3' "
        "AND interval_start >= toDateTime(%(a)s) ORDER BY interval_start",
        {"a": T0 + 28 * H},
    )
    # Hours 29 and 30 (local 10 and 11) share their 4 kWh as the typical day does: 1 and
    # 3, not 2 and 2; estimated, by profile (flags 1 gap + 64 profile).
    assert [(round(v, 6), q, f) for v, q, f in rows] == [
        (3.0, "measured", 0),
        (1.0, "estimated", 65),
        (3.0, "estimated", 65),
        (1.0, "measured", 0),
    ]


def test_a_window_at_the_present_reads_a_narrow_margin_and_the_samples_before(
    store: Store,
) -> None:
    # C3 goes quiet after T0+4h and is back at T0+10h (18 kWh later); the window
    # [T0+8h, T0+12h) is the present, so it is read from three hours before its start
    # and C3's last sample before that (T0+4h) is looked up.
    _readings(store, [("C3", T0 + 10 * H, 30_000)])
    start, end = T0 + 8 * H, T0 + 12 * H
    rep = balance.recompute(store, start, end, now=end + 60)
    assert rep.readings == 1 + 1  # C3's sample in the window and the one looked up
    gap = [(3.0, "estimated", 1), (3.0, "estimated", 1)]
    assert consumption(store, "C3")[-2:] == gap
    assert hourly(store, "T2")[-4:-2] == [(0.0, 3.0, 0.0, 0, 1, 0)] * 2
    # A window in the past reads only what it needs too (C3's sample after it is the
    # one in it): the same rows as the whole margin gives.
    narrow = consumption(store, "C3")
    rep = balance.recompute(store, start, end, now=end + 30 * 86_400)
    assert rep.readings == 2
    assert consumption(store, "C3") == narrow


def _native(rows: list[tuple[str, int, int, float]]) -> bytes:
    """A Native block of a reading a row: meter, obis, ts Int64, value."""
    import numpy as np

    from headend.store import native

    return native.block(
        len(rows),
        [
            ("meter", "String", native.strings([r[0] for r in rows])),
            ("obis", "UInt64", np.array([r[1] for r in rows], "<u8").tobytes()),
            ("ts", "Int64", np.array([r[2] for r in rows], "<i8").tobytes()),
            ("value", "Float64", np.array([r[3] for r in rows], "<f8").tobytes()),
        ],
    )


def test_a_slice_is_parsed_once_and_answers_before_it_is_derived() -> None:
    """The balance pass's questions of a slice, asked of one parsed `ReadingSlice`:
    C1's import misses two hours (a gap), C2's starts after the window's start (a late
    starter); its earlier sample taken in, the slice derives what the whole read gives,
    and bytes still derive as before."""
    imp = _obis(balance.ELECTRICITY_IMPORT)
    whole = [("C1", imp, T0 + k * H, 1000.0 * k) for k in (0, 1, 4)]
    whole += [("C2", imp, T0 + k * H, 500.0 * k) for k in range(5)]
    narrow = [r for r in whole if not (r[0] == "C2" and r[2] < T0 + 2 * H)]
    slice_ = codec.ReadingSlice(_native(narrow))
    assert (slice_.readings, slice_.series) == (6, 2)
    channels = balance.CHANNEL_CODES
    assert slice_.gappy_meters(channels=channels) == [b"C1"]
    assert slice_.gappy_meters(channels=channels, max_estimate_span=2 * H) == []
    assert slice_.late_starters(channels=channels, start=T0) == [b"C2"]
    with pytest.raises(HeadendError, match="incomplete value"):
        slice_.add_earlier(_native(whole)[:-3])
    assert slice_.readings == 6  # a refused block changes nothing
    slice_.add_earlier(_native([r for r in whole if r[0] == "C2" and r[2] < T0 + 2 * H]))
    assert (slice_.readings, slice_.late_starters(channels=channels, start=T0)) == (8, [])
    job = codec.ConsumptionJob(balance.CHANNELS, native_input=True)
    kw = {"keep_from": T0, "keep_to": END, "now": END, "computed_at_ms": 1}
    got, stats = job.rows(slice_, **kw)
    assert (got, stats) == job.rows(_native(whole), **kw)
    assert stats["rows"] == 8  # four hours of each
    with pytest.raises(HeadendError, match="not ordered"):
        codec.ReadingSlice(_native(list(reversed(whole))))


def test_a_window_in_the_past_reads_a_narrow_margin_and_the_samples_after(
    store: Store,
) -> None:
    """C3 is quiet from T0+4h to T0+10h (18 kWh later). A past window [T0+2h, T0+6h)
    is read a few hours either side; C3's series ends inside what was read, so its
    first sample after (T0+10h) is looked up: the gap's hours in the window are
    estimated as a wider recompute estimates them."""
    _readings(store, [("C3", T0 + 10 * H, 30_000)])
    wide = balance.recompute(store, T0, T0 + 12 * H, now=T0 + 30 * 86_400)
    assert wide.readings > 0
    want = consumption(store, "C3")[2:6]
    assert want[2:] == [(3.0, "estimated", 1)] * 2
    # (The sample at T0+10h lies past what the window reads, T0+9h: only the look-up
    # can bound the gap.)
    balance.recompute(store, T0 + 2 * H, T0 + 6 * H, now=T0 + 30 * 86_400)
    assert consumption(store, "C3")[2:6] == want


def test_a_meter_back_from_a_long_silence_has_its_gap_estimated(store: Store) -> None:
    """C3 falls silent after T0+4h (12 kWh) and is back ten days later, 240 kWh on. The
    periodic pass over the window it came back in names it (no sample within its
    two-day margin), and the late hours take its gap in, in two passes of at most a
    week each, each reading as far as the sample that ended the gap: every hour of the
    gap estimated, 1 kWh each, without an operator."""
    back = T0 + 4 * H + 240 * H
    _readings(store, [("C3", back, 12_000 + 240_000), ("C3", back + H, 12_000 + 241_000)])
    start, end = back - H, back + 2 * H
    rep = balance.recompute(store, start, end, now=end + 60)
    assert rep.returning == {"C3": T0 + 4 * H}
    late = balance.LateData(0)
    assert late.add_returning(rep.returning, (start, end)) == 240 + 4 - 5  # T0+4h .. start
    runs = []
    while late.pending:
        for a, b, meters in late.take(7 * 24):
            margin = late.margin(a, b, meters, balance.MARGIN)
            runs.append((a, b, meters, margin > balance.MARGIN))
            balance.recompute(store, a, b, now=end + 60, meters=meters, margin=margin)
    assert len(runs) == 2
    assert all(r[2] == ["C3"] for r in runs)
    # Each piece reads past its two days, to the samples on both sides of the gap.
    assert all(r[3] for r in runs)
    assert late.take(7 * 24) == []
    assert late.gaps == {}
    _, rows = store.query(
        "SELECT toInt64(interval_start), value, quality FROM ami.consumption FINAL "
        "WHERE meter = 'C3' AND obis = %(o)s AND interval_start >= toDateTime(%(a)s) "
        "AND interval_start < toDateTime(%(b)s) ORDER BY interval_start",
        {"o": _obis(balance.ELECTRICITY_IMPORT), "a": T0 + 4 * H, "b": back},
    )
    assert len(rows) == 240
    assert {q for _, _, q in rows} == {"estimated"}
    assert sum(v for _, v, _ in rows) == pytest.approx(240.0)
    # The next pass over the same window names C3 again; its gap is not queued twice.
    rep = balance.recompute(store, start, end, now=end + 60)
    assert rep.returning == {"C3": T0 + 4 * H}
    assert late.add_returning(rep.returning, (start, end)) == 0
    # Once its window has moved past the return, nobody is named.
    rep = balance.recompute(store, back + 2 * H, back + 3 * H, now=back + 3 * H + 60)
    assert rep.returning == {}


def test_each_node_balances_what_it_owns(tmp_path: Path) -> None:
    """A region node derives its meters' consumption and its grid's balances; the
    centre derives the generation above it, counting the region's feeder with the
    balance the region computed; neither writes the other's."""
    from headend.ownership import NATIONAL, Ownership

    st = Store(f"chdb://{tmp_path / 'db'}", "ami").connect()
    migrate(st)
    (tmp_path / "grid.csv").write_text(GRID + "GEN,UZ,generation,electricity,Generation,UZ,41,64\n")
    assert not import_grid(tmp_path / "grid.csv", st).bad
    header = "serial,kind,role,node_id,account_id,model,system_title,ek,ak,password,lat,lon\n"
    meters = [*METERS, ("BGEN", "electricity", "balance", "GEN", "e3ph")]
    body = "".join(f"{s},{k},{r},{n},A-{s},{m},,,,,41.3,69.3\n" for s, k, r, n, m in meters)
    (tmp_path / "meters.csv").write_text(header + body)
    models = profiles.kinds(profiles.load_all(REPO_ROOT / "protocols" / "profiles"))
    assert not import_meters(tmp_path / "meters.csv", st, codec.MasterKey(bytes(32)), models).bad
    samples = [
        (m, T0 + k * H, v) for m, vs in REGISTERS.items() for k, v in enumerate(vs) if v is not None
    ]
    _readings(st, [*samples, *((("BGEN", T0 + k * H, 11_000.0 * k)) for k in range(5))])
    try:
        region = Ownership("tk", "region", {"TK"}, {"TK": "tk", NATIONAL: "c"})
        centre = Ownership("c", "centre", {NATIONAL}, {"TK": "tk", NATIONAL: "c"})
        rep = balance.recompute(st, T0, END, now=END + 60, owner=region)
        assert rep.consumption_rows == 7 * 4  # not BGEN's: the centre's meter
        assert consumption(st, "BGEN") == []
        assert hourly(st, "GEN") == []
        assert hourly(st, "F1") == [(10.0, 9.0, 1.0, 3, 3, 1)] * 4
        assert hourly(st, "T1")[0] == (6.0, 5.0, 1.0, 3, 3, 1)
        _, stamp = st.query("SELECT max(computed_at) FROM ami.balances FINAL WHERE node_id = 'F1'")
        rep = balance.recompute(st, T0, END, now=END + 60, owner=centre)
        assert rep.consumption_rows == 4  # BGEN's four hours only
        # GEN: 11 kWh in, 10 out through F1's balance meter (its consumption as the
        # region derived it); completeness over BGEN and BF, as standalone.
        assert hourly(st, "GEN") == [(11.0, 10.0, 1.0, 2, 2, 1)] * 4
        # The region's rows are left as they were.
        assert (
            st.query("SELECT max(computed_at) FROM ami.balances FINAL WHERE node_id = 'F1'")[1]
            == stamp
        )
        # Standalone, everything at once, the same figures.
        balance.recompute(st, T0, END, now=END + 60)
        assert hourly(st, "GEN") == [(11.0, 10.0, 1.0, 2, 2, 1)] * 4
        assert hourly(st, "F1") == [(10.0, 9.0, 1.0, 3, 3, 1)] * 4
    finally:
        st.close()


def test_a_recompute_for_tens_of_thousands_of_named_meters(store: Store) -> None:
    """A late-data pass may name up to 100,000 meters: their serials go in the query's
    text, past ClickHouse's default 256 KiB (the demo's recompute failed on that)."""
    balance.recompute(store, T0, END, now=END + 60)
    before = consumption(store, "C2")
    named = ["C2", *(f"NOT-A-METER-{i:06d}" for i in range(40_000))]
    rep = balance.recompute(store, T0, END, now=END + 60, meters=named)
    assert rep.readings > 0
    assert consumption(store, "C2") == before


def test_hours_switched_off_are_no_evidence_of_theft(tmp_path: Path) -> None:
    """A debtor we switched off consumes nothing for those hours; the hour it was
    switched in holds what it used before. Neither makes it a suspect; a thief who
    registers a twentieth of its use still is, and so is a meter that registers while
    its disconnector says off all through."""
    from headend import anomalies

    st = Store(f"chdb://{tmp_path / 'db'}", "ami").connect()
    migrate(st)
    grid = GRID.replace("T2,F1,transformer", "TX,F1,transformer")
    (tmp_path / "grid.csv").write_text(grid)
    assert not import_grid(tmp_path / "grid.csv", st).bad
    meters = [("BX", "balance"), ("H1", "consumer"), ("H2", "consumer"), ("H3", "consumer")]
    meters += [("D", "consumer"), ("W", "consumer"), ("T", "consumer")]
    header = "serial,kind,role,node_id,account_id,model,system_title,ek,ak,password,lat,lon\n"
    body = "".join(f"{s},electricity,{r},TX,A-{s},e1ph,,,,,41.3,69.3\n" for s, r in meters)
    (tmp_path / "meters.csv").write_text(header + body)
    models = profiles.kinds(profiles.load_all(REPO_ROOT / "protocols" / "profiles"))
    assert not import_meters(tmp_path / "meters.csv", st, codec.MasterKey(bytes(32)), models).bad
    start, end = T0 + 24 * H, T0 + 48 * H
    off_from = start + 4 * H + 900  # D and W switched off at 04:15 of the window's day
    # Wh an hour: the honest use 1 kWh; D nothing once off (a quarter of an hour in the
    # hour it was switched); W goes on registering while off; T registers 50 Wh.
    use = {
        "H1": lambda t: 1000.0,
        "H2": lambda t: 1000.0,
        "H3": lambda t: 1000.0,
        "D": lambda t: 1000.0 if t + H <= off_from else (250.0 if t < off_from else 0.0),
        "W": lambda t: 1000.0,
        "T": lambda t: 50.0,
    }
    samples: list[tuple[str, int, float]] = []
    total = dict.fromkeys([*use, "BX"], 0.0)
    for k in range(49):
        t = T0 + k * H
        for m in total:
            samples.append((m, t, total[m]))
        true = sum(1000.0 if m != "D" else use["D"](t) for m in use)
        for m, f in use.items():
            total[m] += f(t)
        total["BX"] += true
    _readings(st, samples)
    state = _obis(anomalies.DISCONNECTOR_STATE)
    cols = ["meter", "obis", "ts", "value", "unit", "status", "source", "quality", "received_at"]
    st.insert_rows(
        "readings",
        cols,
        [
            [m, state, when, 0.0, "count", 0, "push", "measured", when]
            for m in ("D", "W")
            for t in range(off_from, end, H)
            for when in [dt.datetime.fromtimestamp(t, dt.UTC)]
        ],
    )
    balance.recompute(st, T0, end, now=end + 60)
    det = anomalies.detect(st, start, end, write=False)
    assert set(det.lossy_nodes) == {"TX"}
    got = {f.meter: f for f in det.suspects()}
    assert set(got) == {"T", "W"}
    assert got["T"].rules == ["low_vs_peers", "zero_or_flat"]
    assert got["T"].evidence["low_vs_peers"]["kwh_per_h"] == 0.05
    # W: the 19 hours after 05:00 (its disconnector off through them and the hour before).
    assert got["W"].rules == ["consuming_while_off"]
    assert got["W"].evidence["consuming_while_off"] == {"hours": 19, "kwh": 19.0}
    # D was judged on the hours it was on: as much as its peers.
    d = next((f for f in det.findings if f.meter == "D"), None)
    assert d is None, d
    st.close()


CITY_GRID = """node_id,parent_id,level,commodity,name,admin_unit,lat,lon
UZ,,republic,any,Uzbekistan,UZ,41.3,64.6
TK,UZ,region,any,Tashkent region,TK,41.3,69.3
TK-D01,TK,district,any,District 1,TK-D01,41.3,69.3
TK-C1,TK,city,any,Chirchiq,TK-C1,41.47,69.58
T1,TK-D01,transformer,electricity,T1,TK-D01,41.3,69.3
TC,TK-C1,transformer,electricity,TC,TK-C1,41.47,69.58
GS,TK,gas_station,gas,Gas station,TK,41.3,69.3
"""


def test_consumption_by_category_and_city(tmp_path: Path) -> None:
    """A city beside a district in a region; accounts of three categories (one the
    billing system gave none); four hours of hand-made registers."""
    from headend import reports
    from headend.billing import import_accounts

    st = Store(f"chdb://{tmp_path / 'db'}", "ami").connect()
    migrate(st)
    (tmp_path / "grid.csv").write_text(CITY_GRID)
    assert not import_grid(tmp_path / "grid.csv", st).bad
    layout = [
        ("A", "electricity", "consumer", "T1", "e1ph"),  # household, 1 kWh an hour
        ("B", "electricity", "consumer", "TC", "e3ph"),  # commercial, 2 kWh an hour
        ("C", "electricity", "consumer", "TC", "e1ph"),  # no category, 0.5 kWh an hour
        ("BTC", "electricity", "balance", "TC", "e3ph"),  # the city transformer's input
        ("G1", "gas", "consumer", "GS", "gas-g4"),  # greenhouse, 1 m³ an hour
    ]
    header = "serial,kind,role,node_id,account_id,model,system_title,ek,ak,password,lat,lon\n"
    body = "".join(f"{s},{k},{r},{n},A-{s},{m},,,,,41.3,69.3\n" for s, k, r, n, m in layout)
    (tmp_path / "meters.csv").write_text(header + body)
    models = profiles.kinds(profiles.load_all(REPO_ROOT / "protocols" / "profiles"))
    assert not import_meters(tmp_path / "meters.csv", st, codec.MasterKey(bytes(32)), models).bad
    (tmp_path / "accounts.csv").write_text(
        "account_id,debt,overdue_since,protected,note,category\n"
        "A-A,0,,false,,household\nA-B,0,,false,,commercial\nA-C,0,,false,,\n"
        "A-G1,0,,false,,greenhouse\n"
    )
    assert not import_accounts(tmp_path / "accounts.csv", st).bad
    rate = {"A": 1000.0, "B": 2000.0, "C": 500.0, "BTC": 2600.0, "G1": 1.0}
    _readings(st, [(m, T0 + k * H, r * k) for m, r in rate.items() for k in range(5)])
    balance.recompute(st, T0, END, now=END + 60)

    def table(by: str) -> set[tuple[Any, ...]]:
        cols, rows = reports.consumption(st, "ami", by=by, period="day", start=T0, end=END)
        assert cols == reports.COLUMNS
        return {(r[0], r[1], r[3], r[4], r[5], r[6]) for r in rows}

    day = "2026-11-02"
    assert all(
        r[2] == day
        for r in reports.consumption(st, "ami", by="category", period="day", start=T0, end=END)[1]
    )
    assert table("category") == {
        ("household", "electricity", 4.0, "kWh", 0.0, 1),
        ("commercial", "electricity", 8.0, "kWh", 0.0, 1),
        ("none", "electricity", 2.0, "kWh", 0.0, 1),
        ("greenhouse", "gas", 4.0, "m³", 0.0, 1),
    }
    assert table("city") == {("TK-C1", "electricity", 10.0, "kWh", 0.0, 2)}
    assert table("district") == {("TK-D01", "electricity", 4.0, "kWh", 0.0, 1)}
    assert table("region") == {
        ("TK", "electricity", 14.0, "kWh", 0.0, 3),
        ("TK", "gas", 4.0, "m³", 0.0, 1),
    }
    # The city's balance, link by link: its transformer took 10.4 kWh and passed 10.
    _, rows = balance.report(st, "ami", level="city", period="day", start=T0, end=END)
    assert [(r[0], r[1], r[3], r[4], r[5]) for r in rows] == [
        ("TK-C1", "transformer", 10.4, 10.0, 0.4)
    ]
    _, rows = balance.report(st, "ami", level="district", period="day", start=T0, end=END)
    assert rows == []  # T1 has no balance meter: no balance of its own
    st.close()


def test_billing_determinants_by_tariff_zone_with_maximum_demand(tmp_path: Path) -> None:
    """One account, two meters, a local day: A uses 1 kWh every hour; B 0.5 kWh, but
    2 kWh at 19:00 and 2.5 kWh at 20:00 (Tashkent); A's reactive register grows 12
    kvarh. Zones: night 23-7 (8 hours), day 7-23 (16)."""
    from headend import determinants

    st = Store(f"chdb://{tmp_path / 'db'}", "ami").connect()
    migrate(st)
    (tmp_path / "grid.csv").write_text(GRID)
    assert not import_grid(tmp_path / "grid.csv", st).bad
    header = "serial,kind,role,node_id,account_id,model,system_title,ek,ak,password,lat,lon\n"
    body = "A,electricity,consumer,T1,ACC-1,e1ph,,,,,41.3,69.3\n"
    body += "B,electricity,consumer,T1,ACC-1,e3ph,,,,,41.3,69.3\n"
    (tmp_path / "meters.csv").write_text(header + body)
    models = profiles.kinds(profiles.load_all(REPO_ROOT / "protocols" / "profiles"))
    assert not import_meters(tmp_path / "meters.csv", st, codec.MasterKey(bytes(32)), models).bad
    midnight = T0 - 5 * H  # 2026-11-02 00:00 in Tashkent
    use_b = {19: 2000.0, 20: 2500.0}
    samples, a, b = [], 0.0, 0.0
    for k in range(25):
        samples += [("A", midnight + k * H, a), ("B", midnight + k * H, b)]
        a += 1000.0
        b += use_b.get(k, 500.0)
    _readings(st, samples)
    reactive = _obis("1.0.3.8.0.255")
    cols = ["meter", "obis", "ts", "value", "unit", "status", "source", "quality", "received_at"]
    st.insert_rows(
        "readings",
        cols,
        [
            ["A", reactive, when, 500.0 * k, "varh", 0, "push", "measured", when]
            for k in range(25)
            for when in [dt.datetime.fromtimestamp(midnight + k * H, dt.UTC)]
        ],
    )
    balance.recompute(st, midnight, midnight + 24 * H, now=midnight + 25 * H)
    names, rows = determinants.determinants(st, "ami", "2026-11", "night:23-7,day:7-23")
    got = dict(zip(names, rows[0], strict=True))
    assert got == {
        "account_id": "ACC-1",
        "category": "",
        "month": "2026-11",
        "meters": 2,
        "kwh": 24.0 + 11.0 + 4.5,
        "kwh_day": 16.0 + 14 * 0.5 + 4.5,
        "kwh_night": 8.0 + 8 * 0.5,
        "max_demand_kw": 3.5,
        "max_demand_at": "2026-11-02 20:00",
        "kvarh_import": 12.0,
        "kvarh_export": 0.0,
        "gas_m3": 0.0,
        "gas_m3_corrected": 0.0,
        "estimated_kwh": 0.0,
    }
    with pytest.raises(HeadendError, match="hours \\[7\\] are in no zone"):
        determinants.determinants(st, "ami", "2026-11", "night:23-7,day:8-23")
    with pytest.raises(HeadendError, match="not YYYY-MM"):
        determinants.determinants(st, "ami", "11/2026", "night:23-7,day:7-23")
    st.close()
