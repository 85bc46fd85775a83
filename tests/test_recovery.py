"""A worker killed -9 under load: the pushes its meters had put in its sockets die with
it, and the head-end reads those meters' load profiles back from their last stored
push, so no interval of energy is missing (issue 19)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from headend.balance import ELECTRICITY_IMPORT, obis_int
from loadtest import sim
from loadtest.grid import generate
from tests.server_harness import Server, running

A_PLUS = obis_int(ELECTRICITY_IMPORT)
PERIOD = 900  # the electricity meters' load-profile period and push interval


def missing(srv: Server, where: str = "") -> int:
    """Quarter hours without an A+ reading between each meter's first and last one."""
    return int(
        srv.scalar(
            "SELECT sum(gaps) FROM (SELECT meter, "
            "intDiv(toInt64(max(ts)) - toInt64(min(ts)), 900) + 1 - uniqExact(ts) AS gaps "
            f"FROM ami.readings WHERE obis = {A_PLUS} AND toInt64(ts) % {PERIOD} = 0 {where} "
            "GROUP BY meter)"
        )
    )


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fleet")
    generate(120, 0.0, out, seed=23)
    return out


def test_a_killed_worker_loses_nothing_after_recovery(fleet: Path, tmp_path: Path) -> None:
    commands = {
        "schedule_interval": 0.0,
        "dispatch_interval": 0.2,
        "request_timeout": 10.0,
        "retry_delay": 0.5,
        "daily_read_days": 0.0,
    }
    with running(
        tmp_path / "srv",
        [],
        fleet=fleet,
        server_settings={"handshake_timeout": 30.0},
        sections={"commands": commands},
    ) as srv:
        # A quarter hour of meter time a second, starting a day ago.
        p = sim.start(
            fleet, srv.port,
            "--start", str(int(time.time()) - 86_400),
            "--speed", "900", "--interval", "900", "--gas-interval", "900",
            "--spread", "0.5", "--events", "off", "--gaps", "0", "--concentrators", "0",
            "--hdlc", "0", "--drifting", "0", "--status-every", "60", "--drain", "2",
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                workers = srv.admin("status")["workers"]
                if sum(w["sessions"] for w in workers) >= 100:
                    break
                time.sleep(0.5)
            time.sleep(3)
            victim = max(workers, key=lambda w: w["sessions"])
            # Stopped, the worker's sockets fill with pushes the meters think delivered;
            # killed, they are gone.
            os.kill(victim["pid"], signal.SIGSTOP)
            time.sleep(3)
            os.kill(victim["pid"], signal.SIGKILL)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if srv.admin("status")["commands"]["recovery_reads"] > 0:
                    break
                time.sleep(0.5)
            reads = srv.admin("status")["commands"]["recovery_reads"]
            assert reads >= victim["sessions"] // 2, (reads, victim)
            srv.wait_for(
                "SELECT countIf(state = 'done') = count() AND count() > 0 "
                "FROM ami.command_status WHERE requested_by = 'recovery'",
                1,
                timeout=120,
            )
            time.sleep(3)
        finally:
            p.terminate()
            out, _ = p.communicate(timeout=60)
        final = [json.loads(x) for x in out.splitlines() if x.startswith("{")][-1]
        assert final["pushes"] > 0
        time.sleep(2)
        # Pushes alone miss quarter hours (what died with the worker) ...
        lost = missing(srv, "AND source = 'push'")
        assert lost > 0
        # ... which the profile reads brought back: none is missing.
        assert missing(srv) == 0
        assert (
            srv.scalar(
                f"SELECT count() FROM ami.readings WHERE source = 'poll' AND obis = {A_PLUS}"
            )
            >= lost
        )
        assert "went away holding" in srv.log.read_text()
