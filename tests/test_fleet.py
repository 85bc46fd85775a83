"""The generated grid and fleet: the files are what DESIGN.md section 7 says and load
into the head-end; a short run of the simulated fleet against `headend serve` stores
exactly what the fleet sent."""

from __future__ import annotations

import collections
import csv
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from loadtest import sim
from loadtest.grid import METER_HEADER, REGIONS, Generator, generate
from tests.server_harness import running

START = "2026-11-01T00:00:00+05:00"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fleet")
    generate(250, 0.3, out, seed=21)
    return out


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_grid_command_writes_the_three_files(tmp_path: Path) -> None:
    out = tmp_path / "f"
    cmd = [sys.executable, "-m", "loadtest", "grid", "--meters", "400", "--out", str(out)]
    r = subprocess.run([*cmd, "--seed", "4"], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert "grid nodes" in r.stdout
    grid, meters = rows(out / "grid.csv"), rows(out / "meters.csv")
    truth = json.loads((out / "ground_truth.json").read_text())
    assert list(meters[0]) == METER_HEADER
    regions = [g for g in grid if g["level"] == "region"]
    assert sorted(g["name"] for g in regions) == sorted(r[1] for r in REGIONS)
    tashkent = next(g for g in regions if g["name"] == "Tashkent city")
    assert (float(tashkent["lat"]), float(tashkent["lon"])) == (41.31, 69.28)
    ids = {g["node_id"] for g in grid}
    assert all(g["parent_id"] in ids for g in grid if g["parent_id"])
    # Balance meters at every feeder head, transformer, gas station and segment.
    balanced = {m["node_id"] for m in meters if m["role"] == "balance"}
    levels = {"feeder", "transformer", "gas_station", "gas_segment"}
    assert {g["node_id"] for g in grid if g["level"] in levels} <= balanced
    consumers = [m for m in meters if m["role"] == "consumer"]
    assert len(consumers) == 400
    assert sum(m["kind"] == "gas" for m in consumers) == 120
    assert all(len(m["system_title"]) == 16 and len(m["ek"]) == 32 for m in meters)
    assert len({m["system_title"] for m in meters}) == len(meters)
    # The truth names real meters and nodes, and a loss for every balanced node.
    serials = {m["serial"] for m in meters}
    assert truth["thieves"]
    assert all(t["serial"] in serials and t["node"] in ids for t in truth["thieves"])
    assert balanced <= set(truth["technical_loss"])
    # The same seed, the same fleet; another seed, another.
    again = tmp_path / "g"
    subprocess.run([*cmd[:-1], str(again), "--seed", "4"], check=True, capture_output=True)
    assert (again / "meters.csv").read_bytes() == (out / "meters.csv").read_bytes()
    bad = subprocess.run(
        [*cmd[:5], "5", "--out", str(tmp_path / "x")], capture_output=True, text=True, check=False
    )
    assert bad.returncode == 2
    assert "at least 14" in bad.stderr


def test_a_national_fleet_has_the_shape_of_one() -> None:
    fleet = Generator(60_000, 0.3, seed=2, plain=True, theft_share=0.03).build()
    per_transformer = collections.Counter(
        m[3] for m in fleet.meters if m[2] == "consumer" and m[1] == "electricity"
    )
    sizes = sorted(per_transformer.values())
    assert sizes[len(sizes) // 10] >= 50
    assert sizes[-len(sizes) // 10] <= 150
    # Consumers follow the population: Samarkand has about four times Syrdarya's.
    node_region = {n.node_id: n.node_id.split("-")[1] for n in fleet.nodes if n.node_id.count("-")}
    by_region = collections.Counter(node_region.get(m[3], "") for m in fleet.meters)
    assert 3.0 < by_region["SA"] / by_region["SI"] < 6.0
    loss = fleet.truth["technical_loss"]
    assert all(0.004 <= v <= 0.1 for v in loss.values())
    # Longer feeders lose more.
    feeders = [
        (float(n.name.split("(")[1].split()[0]), loss[n.node_id])
        for n in fleet.nodes
        if n.level == "feeder"
    ]
    short = [v for km, v in feeders if km < 8]
    long_ = [v for km, v in feeders if km > 20]
    assert max(short) < min(long_)
    share = len(fleet.truth["thieves"]) / 60_000
    assert 0.01 < share < 0.06


def expected_readings(record: Path) -> dict[tuple[str, str, int], float]:
    models, lines = sim.read_record(record)
    out = {}
    for r in lines:
        if r["k"] != "p":
            continue
        for (obis, scaler), raw in zip(models[r["m"]], r["v"], strict=True):
            out[(r["s"], obis, int(r["ts"]))] = raw * 10.0**scaler
    return out


def test_a_short_fleet_run_stores_exactly_what_the_fleet_sent(fleet: Path, tmp_path: Path) -> None:
    meters = rows(fleet / "meters.csv")
    nodes = rows(fleet / "grid.csv")
    with running(tmp_path / "srv", [], fleet=fleet) as srv:
        assert srv.scalar("SELECT count() FROM ami.grid_nodes FINAL") == len(nodes)
        assert srv.scalar("SELECT count() FROM ami.meters FINAL") == len(meters)
        record = tmp_path / "record.jsonl"
        p = sim.start(
            fleet,
            srv.port,
            "--start", START,
            "--speed", "900",
            "--pushes", "3",
            "--gas-interval", "900",
            "--spread", "0.5",
            "--hdlc", "0.2",
            "--concentrators", "0.3",
            "--gaps", "0",
            "--event-rate", "96",
            "--status-every", "60",
            "--record", str(record),
        )  # fmt: skip
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0
        final = [json.loads(x) for x in out.splitlines() if x.startswith("{")][-1]
        assert final["pushes"] == 3 * len(meters)
        assert final["link_errors"] == 0
        expected = expected_readings(record)
        assert final["readings"] == len(expected)
        srv.wait_for("SELECT count() FROM ami.readings", len(expected), timeout=60)
        stored: dict[tuple[str, str, int], Any] = {
            (m, o, int(t)): v
            for m, o, t, v in srv.sql(
                "SELECT meter, obis_code, toUnixTimestamp(ts), value FROM ami.readings"
            )
        }
        assert stored.keys() == expected.keys()
        wrong = [k for k, v in expected.items() if not math.isclose(stored[k], v, rel_tol=1e-12)]
        assert not wrong, [(k, stored[k], expected[k]) for k in wrong[:5]]
        # Alarms and events the fleet sent are events, nothing was refused.
        _, lines = sim.read_record(record)
        sent_events = sorted((r["s"], int(r["ts"]), int(r["code"])) for r in lines if r["k"] == "e")
        deadline = time.monotonic() + 30
        got: list[tuple[str, int, int]] = []
        while time.monotonic() < deadline:
            got = sorted(
                (m, int(t), int(c))
                for m, t, c in srv.sql(
                    "SELECT meter, toUnixTimestamp(ts), code FROM ami.events "
                    "WHERE source IN ('push', 'event-notification')"
                )
            )
            if len(got) >= len(sent_events):
                break
            time.sleep(0.2)
        assert len(sent_events) > 10
        assert got == sent_events
        assert srv.admin("status")["rejects"] == {}
        assert srv.scalar("SELECT count() FROM ami.events WHERE category = 'reject'") == 0
