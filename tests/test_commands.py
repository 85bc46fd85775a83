"""Commands to simulated meters over real TCP: the head-end is the DLMS client on the
meters' own connections (HLS-GMAC, ciphered), through `headend ctl`, with the
`commands` table as the audit trail."""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import json
import os
import pwd
import re
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from headend.meter_address import parse as parse_address
from loadtest import sim
from loadtest.grid import generate
from tests.server_harness import Server, running
from tests.test_sim import consumer, meters

SETTINGS = {
    "commands": {
        "retry_delay": 0.3,
        "attempts": 2,
        "schedule_interval": 0.0,
        "dispatch_interval": 0.2,
        "request_timeout": 5.0,
        # Only the daily-read test schedules daily reads.
        "daily_read_days": 0.0,
    },
}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fleet")
    generate(300, 0.3, out, seed=11)
    return out


def start_fleet(
    fleet: Path,
    port: int,
    serials: list[str],
    *,
    drifting: str = "0",
    hdlc: str = "0",
    udp: str = "0",
    concentrators: str = "0",
    refuse_keys: str = "0",
    drop_transfer: str = "0",
    fail_verify: str = "0",
) -> subprocess.Popen[str]:
    return sim.start(
        fleet,
        port,
        "--refuse-keys",
        refuse_keys,
        "--drop-transfer",
        drop_transfer,
        "--fail-verify",
        fail_verify,
        "--only",
        ",".join(serials),
        "--events",
        "off",
        "--gaps",
        "0",
        "--drifting",
        drifting,
        "--hdlc",
        hdlc,
        "--udp",
        udp,
        "--concentrators",
        concentrators,
        "--interval",
        "5",
        "--gas-interval",
        "5",
        "--spread",
        "0",
        "--status-every",
        "60",
        "--drain",
        "2",
    )


def stop_fleet(p: subprocess.Popen[str]) -> dict[str, Any]:
    p.terminate()
    out, _ = p.communicate(timeout=30)
    lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    final: dict[str, Any] = lines[-1]
    return final


def serve(
    fleet: Path, tmp_path: Path, **commands: Any
) -> contextlib.AbstractContextManager[Server]:
    """A head-end for the simulated `fleet` (sims need longer handshakes), with the
    module's command settings and `commands` on top."""
    return running(
        tmp_path / "srv",
        [],
        fleet=fleet,
        server_settings={"handshake_timeout": 30.0},
        sections={"commands": {**SETTINGS["commands"], **commands}},
    )


def ctl(srv: Server, *args: str, check: bool = True) -> dict[str, Any]:
    r = srv.cli("ctl", *args, "--json", check=check)
    out: dict[str, Any] = json.loads(r.stdout) if r.stdout else {"stderr": r.stderr}
    out["code"] = r.returncode
    return out


def online(srv: Server, serial: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if srv.admin("sessions", meter=serial)["sessions"]:
            return
        time.sleep(0.2)
    raise AssertionError(f"meter {serial} never connected")


def state_of(srv: Server, command_id: str) -> list[Any]:
    return srv.sql(
        f"SELECT state, error, verified_state, result FROM ami.command_status "
        f"WHERE command_id = '{command_id}'"
    )[0]


def test_reads_switching_clock_and_profile_on_live_meters(fleet: Path, tmp_path: Path) -> None:
    a, b, drifted = (consumer(fleet, skip=i)["serial"] for i in (1, 2, 3))
    gas = consumer(fleet, "gas-g4")["serial"]
    with serve(fleet, tmp_path) as srv:
        # A command to a meter that is offline waits in the queue...
        queued = ctl(srv, "read", b, "0.0.96.1.0.255:2", "--class", "1", "--wait", "0")
        assert queued["state"] == "queued"
        with pytest.raises(AssertionError, match="unknown meter"):
            srv.cli("ctl", "disconnect", "NO-SUCH-METER")
        p = start_fleet(fleet, srv.port, [a, b, gas])
        # One more meter whose clock is minutes off (and its own simulator).
        p2 = start_fleet(fleet, srv.port, [drifted], drifting="1")
        try:
            # ... and runs when the meter connects.
            srv.wait_for(
                f"SELECT state FROM ami.command_status WHERE command_id = '{queued['command_id']}'",
                "done",
                timeout=60,
            )
            got = json.loads(state_of(srv, queued["command_id"])[3])
            assert got["values"][0]["value"]["value"] == b

            online(srv, a)
            r = ctl(srv, "read", a, "0.0.1.0.0.255", "1.0.1.8.0.255", "0.0.96.3.10.255:2")
            assert r["state"] == "done", r
            clock, energy, output = (v["value"] for v in r["result"]["values"])
            assert clock["type"] == "octet-string"
            assert energy["value"] > 0
            assert output == {"type": "boolean", "value": True}

            # Disconnect: verified by reading the disconnector back; consumption stops.
            r = ctl(srv, "disconnect", a, "--reason", "test debt")
            assert r["state"] == "done", r
            assert r["result"] == {"output_state": False, "control_state": "disconnected"}
            assert r["verified_state"] == "disconnected"
            power = ctl(srv, "read", a, "1.0.1.7.0.255")["result"]["values"][0]["value"]
            assert power["value"] == 0
            r = ctl(srv, "reconnect", a)
            assert r["result"] == {"output_state": True, "control_state": "connected"}
            power = ctl(srv, "read", a, "1.0.1.7.0.255")["result"]["values"][0]["value"]
            assert power["value"] > 0
            # The gas valve the same way.
            r = ctl(srv, "disconnect", gas)
            assert r["state"] == "done", r
            assert r["result"]["output_state"] is False

            # Clocks: one within seconds is left alone; one minutes off is set and read
            # back within bounds.
            r = ctl(srv, "clock", a, "--threshold", "10")
            assert r["state"] == "done", r
            assert abs(r["result"]["drift_s"]) <= 10
            assert r["result"]["corrected"] is False
            online(srv, drifted)
            r = ctl(srv, "clock", drifted, "--threshold", "10")
            assert r["state"] == "done", r
            assert abs(r["result"]["drift_s"]) >= 110
            assert r["result"]["corrected"] is True
            assert abs(r["result"]["drift_after_s"]) <= 10

            # A profile read fills readings (source poll) for a period with no pushes.
            now = int(time.time()) // 900 * 900
            start = dt.datetime.fromtimestamp(now - 4 * 3600, dt.UTC).isoformat()
            end = dt.datetime.fromtimestamp(now - 3 * 3600, dt.UTC).isoformat()
            r = ctl(srv, "profile", a, "--from", start, "--to", end)
            assert r["state"] == "done", r
            assert r["result"]["entries"] == 5
            assert r["result"]["readings"] == 10  # A+ and A- per entry
            rows = srv.sql(
                f"SELECT obis_code, count(), min(value) > 0 FROM ami.readings "
                f"WHERE meter = '{a}' AND source = 'poll' GROUP BY obis_code ORDER BY obis_code"
            )
            assert rows == [["1.0.1.8.0.255", 5, 1], ["1.0.2.8.0.255", 5, 0]]

            # The scheduler backfills what is still missing: between the polled hour
            # and the first push the consumption is estimated; a scheduled profile read
            # brings the measurements, and the recomputation uses them.
            def estimated() -> int:
                srv.admin("recompute", start=now - 5 * 3600, end=now + 3600)
                return int(
                    srv.scalar(
                        f"SELECT countIf(quality = 'estimated') FROM ami.consumption FINAL "
                        f"WHERE meter = '{a}' AND obis = {0x0100010800FF}"
                    )
                )

            assert estimated() >= 2
            queued = srv.admin("schedule")
            assert queued["backfill"] >= 1
            srv.wait_for(
                f"SELECT state FROM ami.command_status WHERE serial = '{a}' "
                f"AND kind = 'profile' AND requested_by = 'scheduler'",
                "done",
                timeout=30,
            )
            assert estimated() == 0

            # Wrong keys (a botched re-keying): the meter refuses the association and
            # the command's record says so.
            with open(fleet / "meters.csv", encoding="utf-8") as f:
                rows_csv = list(csv.DictReader(f))
            row = next(m for m in rows_csv if m["serial"] == a)
            row["ak"] = "00" * 16
            bad = tmp_path / "rekey.csv"
            with open(bad, "w", newline="", encoding="utf-8") as f:
                w = csv.DictWriter(f, fieldnames=list(row))
                w.writeheader()
                w.writerow(row)
            srv.cli("meters", "import", str(bad))
            time.sleep(0.5)  # the workers reload the meter
            r = ctl(srv, "disconnect", a, check=False)
            assert (r["code"], r["state"]) == (1, "failed"), r
            assert "refused the association" in r["error"], r
            history = srv.sql(
                f"SELECT state, attempts, error FROM ami.commands WHERE serial = '{a}' "
                f"AND kind = 'disconnect' ORDER BY ts"
            )
            assert history[-1][0] == "failed"
            assert history[-1][1] == 2
            assert "retry" in [h[0] for h in history]
        finally:
            final = stop_fleet(p)
            stop_fleet(p2)
        assert final["disconnects"] == 2
        assert final["reconnects"] == 1
        # Every transition is in the audit trail with who asked: the person on the
        # admin socket as the kernel names them, whatever the client claimed.
        who = srv.sql("SELECT DISTINCT requested_by FROM ami.commands WHERE kind = 'disconnect'")
        assert who == [[f"os:{pwd.getpwuid(os.getuid()).pw_name}"]]
        audited = srv.sql(
            f"SELECT count() FROM ami.audit WHERE action = 'command' AND target = '{a}' "
            "AND user LIKE 'os:%' AND source LIKE 'socket:uid=%'"
        )
        assert audited[0][0] >= 3


def test_debtors_are_disconnected_and_reconnected_after_paying(fleet: Path, tmp_path: Path) -> None:
    debtor, protected, small = (consumer(fleet, skip=i) for i in (4, 5, 6))
    policy = {
        "interval": 0.5,
        "warning_hours": 0.0,
        "allowed_hours": "0-23",
        "allowed_weekdays": "mon-sun",
        "debt_threshold": 1000.0,
        "overdue_days": 10,
    }
    accounts = tmp_path / "accounts.csv"

    def bill(rows: list[tuple[str, float, str, str]]) -> None:
        accounts.write_text(
            "account_id,debt,overdue_since,protected,note\n"
            + "".join(f"{a},{d},{s},{p},\n" for a, d, s, p in rows)
        )
        srv.cli("billing", "import", str(accounts))

    long_ago = (dt.date.today() - dt.timedelta(days=60)).isoformat()
    with running(
        tmp_path / "srv",
        [],
        fleet=fleet,
        server_settings={"handshake_timeout": 30.0},
        sections={**SETTINGS, "billing": policy},
    ) as srv:
        p = start_fleet(fleet, srv.port, [m["serial"] for m in (debtor, protected, small)])
        try:
            for m in (debtor, protected, small):
                online(srv, m["serial"])
            # Bad rows are named and skipped; good ones load.
            accounts.write_text(
                "account_id,debt,overdue_since,protected,note\n"
                "X1,lots,2026-01-01,false,\nX2,5,yesterday,false,\nX3,5,,maybe,\n"
            )
            r = srv.cli("billing", "import", str(accounts), check=False)
            assert "is not a number" in r.stdout + r.stderr
            assert "is not a date" in r.stdout + r.stderr
            assert "is not true or false" in r.stdout + r.stderr
            bill(
                [
                    (debtor["account_id"], 5000.0, long_ago, "false"),
                    (protected["account_id"], 9000.0, long_ago, "true"),
                    (small["account_id"], 500.0, long_ago, "false"),
                ]
            )
            # Warned first, then disconnected by the policy, verified off.
            srv.wait_for(
                f"SELECT state FROM ami.command_status WHERE serial = '{debtor['serial']}' "
                f"AND kind = 'disconnect'",
                "done",
                timeout=60,
            )
            steps = srv.sql(
                f"SELECT action FROM ami.policy_actions WHERE serial = '{debtor['serial']}' "
                f"ORDER BY ts"
            )
            assert [s[0] for s in steps] == ["warn", "disconnect"]
            assert (
                srv.scalar(
                    f"SELECT count() FROM ami.events WHERE meter = '{debtor['serial']}' "
                    f"AND name = 'disconnect-warning'"
                )
                == 1
            )
            row = srv.sql(
                f"SELECT requested_by, verified_state, reason FROM ami.command_status "
                f"WHERE serial = '{debtor['serial']}'"
            )[0]
            assert row[:2] == ["policy", "disconnected"]
            assert debtor["account_id"] in row[2]
            # Its consumption stops: pushes carry zero power and an open disconnector.
            t0 = time.time()
            srv.wait_for(
                f"SELECT value FROM ami.readings WHERE meter = '{debtor['serial']}' "
                f"AND obis_code = '0.0.96.3.10.255' ORDER BY ts DESC LIMIT 1",
                0.0,
                timeout=30,
            )
            srv.wait_for(
                f"SELECT value FROM ami.readings WHERE meter = '{debtor['serial']}' "
                f"AND obis_code = '1.0.1.7.0.255' AND received_at >= toDateTime({int(t0)}) "
                f"ORDER BY ts DESC LIMIT 1",
                0.0,
                timeout=30,
            )
            # The protected account and the small debt are never touched; status says why.
            status = json.loads(srv.cli("billing", "status", "--all", "--format", "json").stdout)
            why = {r["serial"]: (r["action"], r["reason"]) for r in status}
            assert why[protected["serial"]] == ("none", "protected account: never disconnected")
            assert why[small["serial"]][0] == "none"
            assert why[debtor["serial"]][0] == "none"
            assert "stays off" in why[debtor["serial"]][1]

            # Payments as records: bad ones named and skipped.
            acc = debtor["account_id"]
            pay = tmp_path / "payments.csv"
            pay.write_text(
                "payment_id,account_id,amount,paid_at\n"
                f"P0,{acc},-5,2026-12-01T10:00\n"
                "P1,NO-SUCH-ACCOUNT,100,2026-12-01T10:00\n"
                f"P2,{acc},100,2099-01-01T00:00\n"
            )
            r = srv.cli("billing", "payments", str(pay), check=False)
            assert r.returncode == 1
            assert "payments.csv:2: amount '-5' must be above 0" in r.stderr
            assert "payments.csv:3: no account NO-SUCH-ACCOUNT" in r.stderr
            assert "payments.csv:4: paid_at 2099-01-01T00:00 is in the future" in r.stderr
            # A part of the debt paid: 2,000 still owed, above the threshold; still off.
            now_iso = dt.datetime.now(dt.UTC).isoformat()
            pay.write_text(f"payment_id,account_id,amount,paid_at\nP10,{acc},3000,{now_iso}\n")
            srv.cli("billing", "payments", str(pay))
            status = json.loads(srv.cli("billing", "status", "--all", "--format", "json").stdout)
            assert {r["serial"]: r["debt"] for r in status}[debtor["serial"]] == 2000.0
            assert (
                srv.scalar(
                    f"SELECT count() FROM ami.commands WHERE serial = '{debtor['serial']}' "
                    "AND kind = 'reconnect'"
                )
                == 0
            )
            # The same payment sent again is not counted twice; one id is one payment.
            r = srv.cli("billing", "payments", str(pay))
            assert "1 already recorded, not counted again" in r.stderr
            pay.write_text(f"payment_id,account_id,amount,paid_at\nP10,{acc},9000,{now_iso}\n")
            r = srv.cli("billing", "payments", str(pay), check=False)
            assert "payment P10 is already recorded for account" in r.stderr
            # The rest is paid: reconnected at once (the import runs a policy pass).
            pay.write_text(f"payment_id,account_id,amount,paid_at\nP11,{acc},2000,{now_iso}\n")
            srv.cli("billing", "payments", str(pay))
            srv.wait_for(
                f"SELECT state FROM ami.command_status WHERE serial = '{debtor['serial']}' "
                f"AND kind = 'reconnect'",
                "done",
                timeout=30,
            )
            assert (
                srv.scalar(
                    f"SELECT argMax(verified_state, updated_at) FROM ami.command_status "
                    f"WHERE serial = '{debtor['serial']}'"
                )
                == "connected"
            )
            # The account's other meter (gas, not connected in this run) had its
            # disconnection queued; paying called it off.
            with open(fleet / "meters.csv", encoding="utf-8") as f:
                others = [
                    m["serial"]
                    for m in csv.DictReader(f)
                    if m["account_id"] == debtor["account_id"] and m["serial"] != debtor["serial"]
                ]
            assert others
            for serial in others:
                srv.wait_for(
                    f"SELECT state FROM ami.command_status WHERE serial = '{serial}'",
                    "cancelled",
                    timeout=10,
                )
            touched = srv.sql(
                "SELECT DISTINCT serial FROM ami.commands WHERE requested_by = 'policy' "
                "ORDER BY serial"
            )
            assert touched == [[s] for s in sorted([debtor["serial"], *others])]
            assert srv.sql(
                f"SELECT payment_id, amount FROM ami.payments FINAL WHERE account_id = '{acc}' "
                "ORDER BY payment_id"
            ) == [["P10", 3000.0], ["P11", 2000.0]]
        finally:
            final = stop_fleet(p)
        assert (final["disconnects"], final["reconnects"]) == (1, 1)


def test_commands_over_hdlc_links_and_udp(fleet: Path, tmp_path: Path) -> None:
    """HDLC meters: the head-end sets up the link (SNRM/UA), numbers its I-frames,
    asks for each segment of a long response with RR, and disconnects (DISC); alone on
    a connection and behind a concentrator that multiplexes meters by HDLC address.
    A gas meter on NB-IoT: pushes and commands over UDP (IEC 62056-47)."""
    alone = consumer(fleet, skip=4)["serial"]
    nb = consumer(fleet, "gas-g4", skip=1)["serial"]
    node = next(m for m in meters(fleet) if m["serial"] == alone)["node_id"]
    neighbours = [
        m["serial"]
        for m in meters(fleet)
        if m["node_id"] == node and m["role"] == "consumer" and m["serial"] != alone
    ][:2]
    with serve(fleet, tmp_path) as srv:
        p = start_fleet(fleet, srv.port, [alone], hdlc="1")
        p2 = start_fleet(fleet, srv.port, neighbours, hdlc="1", concentrators="1")
        p3 = start_fleet(fleet, srv.port, [nb], udp="1")
        try:
            for serial in (alone, *neighbours):
                online(srv, serial)
            sessions = srv.admin("sessions")["sessions"]
            assert {s["framing"] for s in sessions if nb not in s["meters"]} == {"hdlc"}
            assert any(sorted(s["meters"]) == sorted(neighbours) for s in sessions)

            # NB-IoT: its pushes arrive as datagrams; the head-end answers to the
            # address they came from, a datagram a frame (the valve verified by reading
            # it back; a profile read in blocks).
            online(srv, nb)
            srv.wait_for(f"SELECT count() > 0 FROM ami.readings WHERE meter = '{nb}'", 1)
            (session,) = srv.admin("sessions", meter=nb)["sessions"]
            assert (session["transport"], session["framing"]) == ("udp", "wrapper")
            r = ctl(srv, "read", nb, "0.0.96.1.0.255:2", "--class", "1")
            assert r["state"] == "done", r
            assert r["result"]["values"][0]["value"]["value"] == nb
            r = ctl(srv, "disconnect", nb)
            assert r["state"] == "done", r
            assert r["verified_state"] == "disconnected"
            now = int(time.time()) // 900 * 900
            start = dt.datetime.fromtimestamp(now - 6 * 3600, dt.UTC).isoformat()
            end = dt.datetime.fromtimestamp(now - 3600, dt.UTC).isoformat()
            r = ctl(srv, "profile", nb, "--from", start, "--to", end)
            assert r["state"] == "done", r
            assert r["result"]["entries"] > 0

            r = ctl(srv, "read", alone, "0.0.96.1.0.255:2", "--class", "1")
            assert r["state"] == "done", r
            assert r["result"]["values"][0]["value"]["value"] == alone
            r = ctl(srv, "disconnect", alone)
            assert r["state"] == "done", r
            assert r["verified_state"] == "disconnected"
            r = ctl(srv, "reconnect", alone)
            assert r["verified_state"] == "connected"

            # A day of load profile: block transfer, each block in many HDLC segments.
            now = int(time.time()) // 900 * 900
            start = dt.datetime.fromtimestamp(now - 25 * 3600, dt.UTC).isoformat()
            end = dt.datetime.fromtimestamp(now - 3600, dt.UTC).isoformat()
            r = ctl(srv, "profile", alone, "--from", start, "--to", end)
            assert r["state"] == "done", r
            assert r["result"]["entries"] == 97

            # Behind the concentrator: each meter at its own HDLC address, in turn.
            for serial in neighbours:
                r = ctl(srv, "read", serial, "0.0.96.1.0.255:2", "--class", "1")
                assert r["state"] == "done", r
                assert r["result"]["values"][0]["value"]["value"] == serial
        finally:
            stop_fleet(p)
            stop_fleet(p2)
            assert stop_fleet(p3)["disconnects"] == 1


def test_daily_read_brings_registers_profile_and_missed_events(fleet: Path, tmp_path: Path) -> None:
    """The scheduler's daily read: billing registers (stamped with the meter's clock),
    the load profile since the last stored interval, and the event log since the last
    stored event; events already stored are not added twice, missed ones are."""
    truth = json.loads((fleet / "ground_truth.json").read_text())
    a = next(t["serial"] for t in truth["thieves"] if t.get("alarm"))
    model = next(m["model"] for m in meters(fleet) if m["serial"] == a)
    with serve(fleet, tmp_path, daily_read_days=1.0) as srv:
        # Meter time two hours back, a minute per second: the thief's alarms and the
        # transformer's supply interruptions come within seconds.
        p = sim.start(
            fleet,
            srv.port,
            "--only",
            a,
            "--start",
            str(int(time.time()) - 7200),
            "--speed",
            "60",
            "--event-rate",
            "1440",
            "--interval",
            "300",
            "--spread",
            "0",
            "--gaps",
            "0",
            "--drifting",
            "0",
            "--hdlc",
            "0",
            "--concentrators",
            "0",
            "--status-every",
            "60",
            "--drain",
            "2",
        )
        try:
            online(srv, a)
            pushed = srv.wait_for(
                f"SELECT count() >= 3 FROM ami.events WHERE meter = '{a}' "
                "AND source IN ('push', 'event-notification')",
                1,
                timeout=60,
            )
            assert pushed == 1
            # The scheduled daily read: registers, the profile and the log since what is
            # stored (nothing there is new: it was all pushed).
            queued = srv.admin("schedule")
            assert queued["daily"] >= 1
            srv.wait_for(
                f"SELECT state FROM ami.command_status WHERE serial = '{a}' AND kind = 'daily'",
                "done",
                timeout=60,
            )
            result = json.loads(
                srv.sql(
                    f"SELECT result FROM ami.command_status WHERE serial = '{a}' AND kind = 'daily'"
                )[0][0]
            )
            assert result["registers"] == {"e1ph": 2, "e3ph": 4}[model]  # A+, A- (R+, R-)
            assert 0 <= result["events_new"] <= result["events_read"]
            regs = srv.sql(
                f"SELECT obis_code, value > 0 FROM ami.readings WHERE meter = '{a}' "
                "AND source = 'poll' AND obis_code IN ('1.0.1.8.0.255', '1.0.2.8.0.255')"
            )
            assert {r[0] for r in regs} == {"1.0.1.8.0.255", "1.0.2.8.0.255"}
            assert any(r[1] for r in regs)

            # Lose the events on the way (as if a spool disk had died) ...
            srv.admin(
                "maintain",
                query=f"ALTER TABLE ami.events DELETE WHERE meter = '{a}' "
                "SETTINGS mutations_sync = 2",
            )
            # ... a daily read over the log brings them back, named from the model
            # profile, and what was pushed meanwhile is not stored twice.
            start = dt.datetime.fromtimestamp(time.time() - 3 * 3600, dt.UTC).isoformat()
            r = ctl(srv, "daily", a, "--from", start)
            assert r["state"] == "done", r
            assert r["result"]["events_new"] >= 3
            n, distinct, named = srv.sql(
                f"SELECT count(), uniqExact(ts, code), min(name != '' AND category != '') "
                f"FROM ami.events WHERE meter = '{a}'"
            )[0]
            assert n == distinct
            assert named == 1
            assert (
                srv.scalar(
                    f"SELECT count() FROM ami.events WHERE meter = '{a}' AND source = 'poll'"
                )
                == r["result"]["events_new"]
            )
        finally:
            stop_fleet(p)


def test_lls_for_meters_with_a_password_and_no_keys(tmp_path: Path) -> None:
    """Meters without keys: the head-end associates with LLS when the meter has a
    password (put into the AARQ by Rust) and at the lowest level otherwise; the meter
    lets LLS set its clock, and refuses a wrong password."""
    fleet = tmp_path / "fleet"
    generate(120, 0.0, fleet, seed=3, plain=True)
    rows = [m for m in meters(fleet) if m["role"] == "consumer"]
    drifted, plain = rows[0]["serial"], rows[1]["serial"]
    with serve(fleet, tmp_path) as srv:
        # The second meter loses its password: lowest level for it.
        no_pw = tmp_path / "no-password.csv"
        with open(no_pw, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[1]))
            w.writeheader()
            w.writerow({**rows[1], "password": ""})
        srv.cli("meters", "import", str(no_pw))
        p = start_fleet(fleet, srv.port, [drifted], drifting="1")
        p2 = start_fleet(fleet, srv.port, [plain])
        try:
            online(srv, drifted)
            online(srv, plain)
            # Setting the clock needs at least LLS on these meters.
            r = ctl(srv, "clock", drifted, "--threshold", "10")
            assert r["state"] == "done", r
            assert r["result"]["corrected"] is True
            assert abs(r["result"]["drift_after_s"]) <= 10
            # The lowest level reads but may not set.
            r = ctl(srv, "read", plain, "0.0.96.1.0.255:2", "--class", "1")
            assert r["state"] == "done", r
            assert r["result"]["values"][0]["value"]["value"] == plain
            log = srv.log.read_text()
            assert re.search(rf"clock for meter {drifted} \(lls\): done", log)
            assert re.search(rf"read for meter {plain} \(lowest\): done", log)
            assert rows[0]["password"] not in log  # never logged

            # A wrong password: the meter refuses the association, the record says so.
            bad = tmp_path / "bad-password.csv"
            with open(bad, "w", newline="", encoding="utf-8") as f:
                w = csv.DictWriter(f, fieldnames=list(rows[0]))
                w.writeheader()
                w.writerow({**rows[0], "password": "00000000"})
            srv.cli("meters", "import", str(bad))
            time.sleep(1.0)  # the workers reload the meter
            r = ctl(srv, "clock", drifted, "--threshold", "10", "--wait", "20", check=False)
            assert r["state"] == "failed", r
            assert "refused the association" in r["error"]
        finally:
            stop_fleet(p)
            stop_fleet(p2)


def accepting(address: str, timeout: float = 20.0) -> None:
    """Waits until something listens at a meters-file address."""
    where = parse_address(address)
    assert where is not None
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((where.host, where.port), timeout=1.0).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_listening_meters_are_dialled(tmp_path: Path) -> None:
    """Meters that listen instead of connecting (an `address` in the meters file): the
    head-end opens the connection (wrapper or HDLC over TCP), binds the meter to it,
    associates with HLS-GMAC, runs the command, releases and hangs up; a meter that
    cannot be reached fails with a record that names its address."""
    fleet = tmp_path / "fleet"
    generate(200, 0.3, fleet, seed=7, listening=0.25)
    rows = [m for m in meters(fleet) if m["address"]]
    wrapper = next(m for m in rows if m["model"] != "gas-g4" and "://" not in m["address"])
    hdlc = next(m for m in rows if m["address"].startswith("hdlc://"))
    gas = next(m for m in rows if m["model"] == "gas-g4" and m is not hdlc)
    absent = next(m for m in rows if m not in (wrapper, hdlc, gas))
    with serve(fleet, tmp_path) as srv:
        p = start_fleet(fleet, srv.port, [wrapper["serial"], hdlc["serial"], gas["serial"]])
        try:
            # Nothing connects in: the meters only listen.
            for m in (wrapper, hdlc, gas):
                accepting(m["address"])
            assert srv.admin("sessions")["sessions"] == []

            r = ctl(srv, "read", wrapper["serial"], "0.0.96.1.0.255:2", "--class", "1")
            assert r["state"] == "done", r
            assert r["result"]["values"][0]["value"]["value"] == wrapper["serial"]
            r = ctl(srv, "disconnect", wrapper["serial"])
            assert (r["state"], r["verified_state"]) == ("done", "disconnected"), r
            r = ctl(srv, "reconnect", wrapper["serial"])
            assert (r["state"], r["verified_state"]) == ("done", "connected"), r
            r = ctl(srv, "disconnect", gas["serial"])  # the valve
            assert (r["state"], r["verified_state"]) == ("done", "disconnected"), r

            # HDLC over TCP: a day of load profile in segmented blocks.
            now = int(time.time()) // 900 * 900
            start = dt.datetime.fromtimestamp(now - 25 * 3600, dt.UTC).isoformat()
            end = dt.datetime.fromtimestamp(now - 3600, dt.UTC).isoformat()
            r = ctl(srv, "profile", hdlc["serial"], "--from", start, "--to", end)
            assert r["state"] == "done", r
            assert r["result"]["entries"] == 97

            # Every job on its own connection, opened by the head-end and closed after
            # (the harness's readiness probe, which never framed, left aside).
            dialled = "FROM ami.sessions WHERE framing != 'auto'"
            srv.wait_for(f"SELECT count() {dialled} AND event = 'disconnect'", 5)
            rows_ = srv.sql(f"SELECT event, reason, framing, meters {dialled} ORDER BY ts")
            connects = [s for s in rows_ if s[0] == "connect"]
            assert len(connects) == 5, rows_
            assert {s[1] for s in connects} == {"dialled"}, rows_
            ends = [s for s in rows_ if s[0] == "disconnect"]
            assert {s[1] for s in ends} == {"jobs-done"}, ends
            assert sorted({s[3][0] for s in ends}) == sorted(
                [wrapper["serial"], hdlc["serial"], gas["serial"]]
            )
            assert {s[2] for s in ends if s[3] == [hdlc["serial"]]} == {"hdlc"}

            # A listening meter nobody answers for: retried, then failed, with why.
            r = ctl(srv, "read", absent["serial"], "0.0.96.1.0.255:2", "--class", "1", check=False)
            assert (r["state"], r["code"]) == ("failed", 1), r
            where = parse_address(absent["address"])
            assert where is not None
            assert "cannot connect" in r["error"], r
            assert f"{where.host}:{where.port}" in r["error"], r
        finally:
            final = stop_fleet(p)
        counts = ("listening", "listen_failures", "pushes", "disconnects", "reconnects")
        # Read, never pushing; two disconnects (the relay, the valve), one reconnect.
        assert [final[k] for k in counts] == [3, 0, 0, 2, 1], final
