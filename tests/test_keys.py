"""Key rotation against simulated meters over real TCP: the Security Setup object's
key transfer (keys wrapped under each meter's master key), verified by a fresh
association before the store makes the new keys current; a meter that refuses keeps
its keys; pushes go on being stored across the change."""

from __future__ import annotations

import csv
import json
import re
import time
from pathlib import Path

import pytest

from headend.web.metrics import render
from loadtest.grid import generate
from tests.server_harness import Server
from tests.test_commands import ctl, online, serve, start_fleet, stop_fleet
from tests.test_sim import consumer


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fleet")
    generate(300, 0.3, out, seed=11)
    return out


def keys_row(srv: Server, serial: str) -> dict[str, str]:
    cols = ["ek", "ak", "kek", "pending_ek", "previous_ek", "source"]
    row = srv.sql(
        f"SELECT {', '.join(cols)}, previous_until > now() "
        f"FROM ami.meter_keys FINAL WHERE serial = '{serial}'"
    )[0]
    return {**dict(zip(cols, row, strict=False)), "previous_kept": row[-1]}


def await_pushes(srv: Server, serial: str, since: float, n: int) -> None:
    """Waits until `n` readings pushed by `serial` arrived after `since`."""
    srv.wait_for(
        f"SELECT count() >= {n} FROM ami.readings WHERE meter = '{serial}' "
        f"AND source = 'push' AND received_at > toDateTime64({since}, 3)",
        1,
        timeout=30,
    )


def test_rotation_verified_refused_and_kept_across_reimport(fleet: Path, tmp_path: Path) -> None:
    a, refuser, keyless = (consumer(fleet, skip=i)["serial"] for i in (1, 2, 3))
    with serve(fleet, tmp_path / "a") as srv:
        # The simulator's `--refuse-keys` makes one meter's firmware refuse a transfer.
        sim = start_fleet(fleet, srv.port, [a, refuser, keyless], refuse_keys=refuser)
        try:
            for s in (a, refuser, keyless):
                online(srv, s)
            before = keys_row(srv, a)
            assert before["source"] == "import"
            assert before["kek"]
            assert not before["pending_ek"]

            r = ctl(srv, "rekey", a, "--reason", "yearly rotation")
            assert r["state"] == "done", r
            assert r["result"]["verified"] is True
            assert r["result"]["resumed"] is False
            after = keys_row(srv, a)
            assert after["ek"] != before["ek"]
            assert after["ak"] != before["ak"]
            assert after["previous_ek"] == before["ek"]  # kept for late frames
            assert after["previous_kept"] == 1
            assert (after["source"], after["pending_ek"]) == ("rotation", "")
            assert after["kek"] == before["kek"]
            # The meter works under its new keys: a new association, and its pushes
            # (ciphered under the new keys now) are still stored.
            rotated_at = time.time()
            r = ctl(srv, "read", a, "1.0.1.8.0.255")
            assert r["state"] == "done", r
            await_pushes(srv, a, rotated_at, 2)

            # A meter whose firmware refuses the transfer keeps its keys, says so, and
            # still works.
            before_r = keys_row(srv, refuser)
            r = ctl(srv, "rekey", refuser, check=False)
            assert r["state"] == "failed", r
            assert "refused the new keys" in r["error"]
            assert "keeps its keys" in r["error"]
            after_r = keys_row(srv, refuser)
            assert (after_r["ek"], after_r["ak"]) == (before_r["ek"], before_r["ak"])
            assert after_r["pending_ek"] == ""
            assert after_r["source"] == "import"
            assert ctl(srv, "read", refuser, "1.0.1.8.0.255")["state"] == "done"
            refused_at = time.time()
            await_pushes(srv, refuser, refused_at, 1)

            # Without a master key (KEK) there is nothing to send new keys under.
            rows = read_meters(fleet)
            row = next(m for m in rows if m["serial"] == keyless)
            row["kek"] = ""
            write_meters(tmp_path / "nokek.csv", [row])
            srv.cli("meters", "import", str(tmp_path / "nokek.csv"))
            time.sleep(0.5)  # the workers reload the meter
            r = ctl(srv, "rekey", keyless, check=False)
            assert r["state"] == "failed", r
            assert "no master key (kek)" in r["error"], r

            # Re-importing the delivery file does not put the old keys back over the
            # rotated ones (and says so); the meter still answers.
            out = srv.cli("meters", "import", str(fleet / "meters.csv"))
            assert "kept the stored keys of 1 meters" in out.stdout + out.stderr
            assert keys_row(srv, a)["ek"] == after["ek"]
            time.sleep(0.5)
            assert ctl(srv, "read", a, "1.0.1.8.0.255")["state"] == "done"

            # Audited in the name of who asked, step by step; no key material in it.
            steps = srv.sql(
                "SELECT target, action FROM ami.audit WHERE action LIKE 'keys.%' "
                "ORDER BY at, action"
            )
            assert [s for s in steps if s[0] == a] == [[a, "keys.pending"], [a, "keys.current"]]
            # Pending, then dropped; not tried again (the meter would refuse again).
            attempts = int(
                srv.scalar(
                    f"SELECT attempts FROM ami.command_status WHERE serial = '{refuser}' AND kind = 'rekey'"
                )
            )
            assert attempts == 1
            assert [s for s in steps if s[0] == refuser] == attempts * [
                [refuser, "keys.pending"],
                [refuser, "keys.drop"],
            ]
            details = srv.sql("SELECT detail FROM ami.audit WHERE action LIKE 'keys.%'")
            assert all(after["ek"] not in d[0] for d in details)
        finally:
            stop_fleet(sim)


def read_meters(fleet: Path) -> list[dict[str, str]]:
    with open(fleet / "meters.csv", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def write_meters(path: Path, rows: list[dict[str, str]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def transformer_meters(fleet: Path, least: int, most: int) -> tuple[str, list[str]]:
    """A transformer with between `least` and `most` meters, and its meters."""
    by_node: dict[str, list[str]] = {}
    for m in read_meters(fleet):
        if m["kind"] == "electricity" and m["ek"]:
            by_node.setdefault(m["node_id"], []).append(m["serial"])
    node = next(n for n, s in sorted(by_node.items()) if least <= len(s) <= most)
    return node, sorted(by_node[node])


def waves(srv: Server, *args: str) -> dict[str, object]:
    r = srv.cli("waves", *args, "--json")
    out: dict[str, object] = json.loads(r.stdout)
    return out


def test_waves_limit_stop_on_failures_and_resume_across_a_restart(
    fleet: Path, tmp_path: Path
) -> None:
    node, serials = transformer_meters(fleet, 8, 14)
    refuser = serials[1]
    with serve(fleet, tmp_path / "w") as srv:
        sim = start_fleet(fleet, srv.port, serials, refuse_keys=refuser)
        try:
            for s in serials:
                online(srv, s)
            region = srv.scalar(f"SELECT region FROM ami.meters WHERE serial = '{serials[0]}'")

            # A wave that stops itself at the first failure (any failure is too many
            # here): the meters after it are not asked until someone resumes it.
            w = waves(
                srv,
                "start",
                "rekey",
                "--region",
                region,
                "--under",
                node,
                "--concurrency",
                "1",
                "--min-sample",
                "1",
                "--max-failure-rate",
                "0",
                "--reason",
                "test halt",
            )
            wid = str(w["wave_id"])
            assert w["meters"] == len(serials)
            srv.wait_for(f"SELECT state FROM ami.waves FINAL WHERE wave_id = '{wid}'", "halted")
            shown = waves(srv, "show", wid)
            assert shown["outcomes"] == {"done": 1, "failed": 1}, shown
            assert "more than the 0% allowed" in str(shown["detail"])
            asked = srv.scalar(
                "SELECT count(DISTINCT serial) FROM ami.command_status "
                f"WHERE JSONExtractString(args, 'wave') = '{wid}'"
            )
            assert asked == 2  # concurrency 1: nothing else was under way

            # Resumed, with the server restarted in the middle: the wave goes on where
            # it stood, asks every other meter once, and ends done.
            waves(srv, "resume", wid)
            srv.stop()
            srv.start()
            srv.wait_for(
                f"SELECT state FROM ami.waves FINAL WHERE wave_id = '{wid}'", "done", timeout=120
            )
            per_meter = srv.sql(
                "SELECT serial, count(DISTINCT command_id), argMax(state, updated_at) "
                "FROM ami.command_status "
                f"WHERE JSONExtractString(args, 'wave') = '{wid}' GROUP BY serial ORDER BY serial"
            )
            assert [r[0] for r in per_meter] == serials
            assert all(r[1] == 1 for r in per_meter), per_meter
            assert {r[0]: r[2] for r in per_meter if r[2] != "done"} == {refuser: "failed"}
            rotated = srv.scalar(
                "SELECT count() FROM ami.meter_keys FINAL "
                f"WHERE source = 'rotation' AND serial IN "
                f"({', '.join(repr(s) for s in serials)})"
            )
            assert rotated == len(serials) - 1
            # Every rotated meter still works under its new keys.
            for s in serials[-2:]:
                assert ctl(srv, "read", s, "1.0.1.8.0.255")["state"] == "done"
            # /metrics (rendered from the status the HTTP layer serves) shows the wave's
            # meters by outcome and the commands by kind.
            text = render(srv.admin("status"), {}, {})
            assert (
                f'headend_wave_meters{{wave="{wid}",kind="rekey",state="done",outcome="done"}} {len(serials) - 1}'
                in text
            )
            # (Counted since this store process started: after the restart.)
            assert re.search(
                r'^headend_command_transitions_by_kind_total\{kind="rekey",state="done"\} [1-9]',
                text,
                re.M,
            )
            audit = srv.sql(f"SELECT action FROM ami.audit WHERE target = '{wid}' ORDER BY at")
            assert [a[0] for a in audit] == ["wave.start", "wave.resume"]
        finally:
            stop_fleet(sim)
