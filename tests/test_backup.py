"""headend backup and headend restore: a node's store to a directory and back into an
empty node, with the master key kept apart (headend/store/backup.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from server_harness import Server, free_port, keyed, running

M = keyed("B1", 700)
N = keyed("B2", 701)


def counts(srv: Server) -> dict[str, int]:
    tables = [
        "grid_nodes",
        "meters",
        "meter_keys",
        "readings",
        "events",
        "sessions",
        "late_readings",
        "commands",
        "audit",
    ]
    return {t: int(srv.scalar(f"SELECT count() FROM ami.{t}")) for t in tables}


def test_a_backup_restores_into_an_empty_node(tmp_path: Path) -> None:
    out = tmp_path / "backup"
    with running(tmp_path / "a", [M, N]) as a:
        p = a.pusher()
        frames = [p.frame(M.push(i)) for i in range(8)]
        p.send(b"".join(frames) + p.frame(N.push(0)))
        p.close()
        a.wait_for("SELECT count() FROM ami.readings", 9 * 6)
        # The backup holds the counters ClickHouse has (written every counters_interval).
        assert M.title is not None
        a.wait_for(
            "SELECT max(last_received) FROM ami.invocation_counters "
            f"WHERE system_title = '{M.title.hex().upper()}'",
            8,
        )
        # Taken while the server runs, through its store process.
        r = json.loads(a.cli("backup", str(out), "--json").stdout)
        assert r["tables"]["readings"] == 9 * 6
        before = counts(a)
        readings = a.sql(
            "SELECT obis, ts, value FROM ami.readings WHERE meter = 'B1' ORDER BY obis, ts"
        )
        sent = int(a.scalar("SELECT max(next_sent) FROM ami.invocation_counters"))
        # A second backup into the same directory is refused.
        again = a.cli("backup", str(out), check=False)
        assert again.returncode == 1
        assert "not an empty directory" in again.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert (out.stat().st_mode & 0o077) == 0
    assert "master.key" not in {f.name for f in out.iterdir()}
    assert manifest["tables"]["meter_keys"]["rows"] == 2

    # A new node: no master key yet, so the restore refuses (the keys would not unwrap).
    b = Server(tmp_path / "b", free_port(), [])
    b.write_config()
    r = b.cli("restore", str(out), check=False)
    assert r.returncode == 1
    assert "no master key" in r.stderr
    (b.data / "secrets").mkdir(parents=True, mode=0o700)
    shutil.copy2(tmp_path / "a" / "data" / "secrets" / "master.key", b.data / "secrets")
    # A damaged file is found before anything is written.
    damaged = tmp_path / "damaged"
    shutil.copytree(out, damaged)
    f = damaged / "readings.native.zst"
    f.write_bytes(f.read_bytes()[:-1] + b"\0")
    r = b.cli("restore", str(damaged), check=False)
    assert r.returncode == 1
    assert "damaged" in r.stderr
    r = json.loads(b.cli("restore", str(out), "--json").stdout)
    assert r["tables"]["readings"] == 9 * 6
    # Into a store that holds rows: refused.
    r2 = b.cli("restore", str(out), check=False)
    assert r2.returncode == 1
    assert "restore into an empty store" in r2.stderr
    b.start()
    try:
        after = counts(b)
        held = {t: manifest["tables"][t]["rows"] for t in after}
        assert held == {**before, "audit": before["audit"] - 1}  # the backup's row came after
        # What the backup held, and the restore's own audit row (the harness's probe
        # of the meter port adds sessions).
        assert after["sessions"] >= held["sessions"]
        assert {**after, "sessions": 0} == {**held, "audit": held["audit"] + 1, "sessions": 0}
        assert (
            b.sql("SELECT obis, ts, value FROM ami.readings WHERE meter = 'B1' ORDER BY obis, ts")
            == readings
        )
        # The head-end's own counters were raised (never reused), and the meter keys
        # unwrap: the next push is deciphered and stored, a replay is refused.
        assert (
            int(b.scalar("SELECT max(next_sent) FROM ami.invocation_counters")) >= sent + 1_000_000
        )
        p = b.pusher()
        p.send(frames[7] + p.frame(M.push(8)))
        p.close()
        b.wait_for("SELECT count() FROM ami.readings WHERE meter = 'B1'", 9 * 6)
        b.wait_for(
            "SELECT count() FROM ami.events WHERE name = 'reject:replayed-invocation-counter'", 1
        )
        assert b.scalar("SELECT count() FROM ami.audit WHERE action = 'restore'") == 1
        stored = int(b.scalar("SELECT count() FROM ami.readings"))
    finally:
        b.stop()
    # With the server stopped, the command line opens the store itself.
    r = json.loads(b.cli("backup", str(tmp_path / "offline"), "--json").stdout)
    assert r["tables"]["readings"] == stored
