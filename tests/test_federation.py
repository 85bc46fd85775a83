"""A national centre and two region nodes on loopback (DESIGN.md section 9): real
`headend serve` processes, each with its own store and NATS server, the regions'
servers leaf nodes of the centre's through links that the test cuts and heals.

Master data imported at the centre reaches the region that owns it (keys re-wrapped);
what the regions store reaches the centre exactly once through a cut link and kill -9
of either end's store and of the centre's NATS server; a command submitted at the
centre runs in the region and its outcome comes back; a debtor imported at the centre
is disconnected by its region and reconnected after a payment imported at the centre;
rows and commands for a region a node does not own are refused naming the owner."""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import pwd
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loadtest import grid, sim
from loadtest.federation import Federation

REGIONS = {"sa": ["UZ-SA"], "fa": ["UZ-FA"]}
POLICY = {
    "interval": 0.5,
    "warning_hours": 0.0,
    "allowed_hours": "0-23",
    "allowed_weekdays": "mon-sun",
    "debt_threshold": 1000.0,
    "overdue_days": 10,
}
COMMANDS = {
    "retry_delay": 0.3,
    "attempts": 2,
    "schedule_interval": 0.0,
    "dispatch_interval": 0.2,
    "request_timeout": 5.0,
}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fleet")
    grid.generate(300, 0.2, out, seed=23)
    return out


def meters_of(fleet: Path, region: str, role: str = "consumer") -> list[dict[str, str]]:
    with open(fleet / "meters.csv", newline="") as f:
        return [
            m for m in csv.DictReader(f) if m["node_id"].startswith(region) and m["role"] == role
        ]


@pytest.fixture(scope="module")
def fed(fleet: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    others = [f"UZ-{r[0]}" for r in grid.REGIONS if f"UZ-{r[0]}" not in ("UZ-SA", "UZ-FA")]
    f = Federation(
        tmp_path_factory.mktemp("federation"),
        REGIONS,
        centre_regions=others,
        standby={"fa": "sa"},
        server={"handshake_timeout": 30.0, "unknown_meter_ttl": 2.0},
        store={"ingest_interval": 0.05, "fsync": "always", "balance_interval": 0.0},
        sections={"commands": COMMANDS, "billing": POLICY},
    )
    f.setup()
    try:
        f.start()
        # Imported at the centre while it runs: the rows go down from its store.
        f.centre.h.import_fleet(fleet / "grid.csv", fleet / "meters.csv")
        # Each test may run alone: its meters must be known where they connect (pushes
        # from a meter its node does not know yet are refused, as they should be).
        q = "SELECT count() FROM ami.meters FINAL WHERE region = '{}'"
        for name, region in (("sa", "UZ-SA"), ("fa", "UZ-FA")):
            n = len(meters_of(fleet, region)) + len(meters_of(fleet, region, "balance"))
            node = f.nodes[name]
            f.wait(
                f"{region}'s meters at {name}",
                lambda node=node, region=region, n=n: count(node, q.format(region)) == n,
            )
        yield f
    finally:
        f.stop()


def count(node: Any, sql: str) -> int:
    return int(node.h.scalar(sql))


def run_fleet(fleet: Path, port: int, serials: list[str], *extra: str) -> subprocess.Popen[str]:
    return sim.start(
        fleet,
        port,
        "--only",
        ",".join(serials),
        "--events",
        "off",
        "--gaps",
        "0",
        "--hdlc",
        "0",
        "--concentrators",
        "0",
        "--spread",
        "0",
        "--status-every",
        "60",
        "--drain",
        "2",
        *extra,
    )


def stop(p: subprocess.Popen[str]) -> None:
    if p.poll() is None:
        p.terminate()
    p.communicate(timeout=30)


def final(p: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    out, _ = p.communicate(timeout=timeout)
    lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    return next(x for x in reversed(lines) if x.get("final"))


def test_master_data_reaches_its_owner_and_its_standby(fed: Federation, fleet: Path) -> None:
    sa, fa, centre = fed.nodes["sa"], fed.nodes["fa"], fed.centre
    n_sa = len(meters_of(fleet, "UZ-SA", "consumer")) + len(meters_of(fleet, "UZ-SA", "balance"))
    n_fa = len(meters_of(fleet, "UZ-FA", "consumer")) + len(meters_of(fleet, "UZ-FA", "balance"))
    with open(fleet / "meters.csv", newline="") as f:
        assert count(centre, "SELECT count() FROM ami.meters FINAL") == len(list(csv.DictReader(f)))
    q = "SELECT count() FROM ami.meters FINAL WHERE region = '{}'"
    fed.wait("fa's meters at fa", lambda: count(fa, q.format("UZ-FA")) == n_fa)
    # sa owns UZ-SA and stands by for fa: it holds UZ-FA's meters too, and nothing else.
    fed.wait("sa's meters at sa", lambda: count(sa, q.format("UZ-SA")) == n_sa)
    fed.wait("fa's meters at its standby", lambda: count(sa, q.format("UZ-FA")) == n_fa)
    assert count(sa, "SELECT count() FROM ami.meters FINAL") == n_sa + n_fa
    assert count(fa, "SELECT count() FROM ami.meters FINAL") == n_fa
    assert count(fa, "SELECT count() FROM ami.grid_nodes FINAL WHERE region != 'UZ-FA'") == 0
    # Keys travel re-wrapped and rest under the receiving node's own master key.
    for node in (sa, fa):
        master = node.h.data / "secrets" / "master.key"
        assert oct(master.stat().st_mode & 0o777) == "0o600"
    # The ownership map came with the centre's heartbeats.
    fed.wait(
        "the centre's map at sa",
        (sa.h.data / "link" / "federation.json").exists,
    )


def test_rows_and_commands_for_another_region_are_refused_naming_the_owner(
    fed: Federation, fleet: Path, tmp_path: Path
) -> None:
    sa = fed.nodes["sa"]
    fed.wait("the centre's map at sa", (sa.h.data / "link" / "federation.json").exists)
    bad = tmp_path / "meters.csv"
    with open(fleet / "meters.csv", newline="") as f:
        rows = list(csv.reader(f))
    fa_row = next(r for r in rows[1:] if r[3].startswith("UZ-FA") and r[2] == "consumer")
    sa_row = next(r for r in rows[1:] if r[3].startswith("UZ-SA") and r[2] == "consumer")
    with open(bad, "w", newline="") as f:
        csv.writer(f).writerows([rows[0], sa_row, fa_row])
    r = subprocess.run(
        [
            *(sys.executable, "-m", "headend", "meters", "import", str(bad)),
            *("--config", str(sa.h.config)),
        ],
        capture_output=True,
        text=True,
        env=sa.h.env,
        check=False,
    )
    assert r.returncode == 1
    assert f"{bad}:3: meter {fa_row[0]}" in r.stderr
    assert "which node fa owns" in r.stderr
    assert "1 rows loaded, 1 refused" in r.stdout
    # sa holds fa's meters (standby) but does not act on them.
    with pytest.raises(Exception, match="which node fa owns"):
        sa.h.admin(
            "command", serial=fa_row[0], kind="read", args={"objects": [[8, "0.0.1.0.0.255", 2]]}
        )


def test_a_command_at_the_centre_runs_in_its_region(fed: Federation, fleet: Path) -> None:
    sa, centre = fed.nodes["sa"], fed.centre
    meter = meters_of(fleet, "UZ-SA")[0]["serial"]
    p = run_fleet(fleet, sa.port, [meter], "--interval", "5", "--gas-interval", "5")
    try:
        fed.wait(
            "the meter online at sa",
            lambda: any(
                m == meter for s in sa.h.admin("sessions")["sessions"] for m in s["meters"]
            ),
        )
        c = centre.h.admin(
            "command",
            serial=meter,
            kind="read",
            args={"objects": [[3, "1.0.1.8.0.255", 2]]},
            wait=60,
        )
        assert c["state"] == "done", c
        assert c["result"]["values"][0]["value"]["value"] > 0
        cid = c["command_id"]
        # The same command in the region's audit trail and, after it, at the centre.
        row = sa.h.admin(
            "query",
            query=f"SELECT state, requested_by FROM ami.command_status WHERE command_id = '{cid}'",
        )["rows"]
        # Attributed to the person at the centre: the admin socket's user, named by
        # the kernel, whatever the client claims.
        assert row == [["done", f"os:{pwd.getpwuid(os.getuid()).pw_name}"]]
        fed.wait(
            "the outcome at the centre",
            lambda: (
                centre.h.scalar(f"SELECT state FROM ami.command_status WHERE command_id = '{cid}'")
                == "done"
            ),
        )
    finally:
        stop(p)


def test_people_made_at_the_centre_reach_every_region_and_regions_audit_goes_up(
    fed: Federation,
) -> None:
    sa, fa, centre = fed.nodes["sa"], fed.nodes["fa"], fed.centre
    centre.h.admin("users.add", name="nodira", roles=["operator"], regions=["UZ-SA"])
    token = centre.h.admin("users.token", name="nodira", label="dispatch")["token"]

    def known(node: Any) -> bool:
        users = {u["name"]: u for u in node.h.admin("users.list")["users"]}
        u = users.get("nodira")
        return u is not None and u["regions"] == ["UZ-SA"] and len(u["tokens"]) == 1

    fed.wait("the account at sa and fa", lambda: known(sa) and known(fa))
    # Disabled at the centre: disabled in the regions too.
    centre.h.admin("users.set", name="nodira", disabled=True)
    fed.wait(
        "the account disabled at sa",
        lambda: next(u for u in sa.h.admin("users.list")["users"] if u["name"] == "nodira")[
            "disabled"
        ],
    )
    assert token.startswith("hk_")
    # What people did at a region is on the centre's record, with the region's name.
    sa.h.admin("users.list")
    sa.h.admin("sql", query="SELECT count() FROM ami.meters")
    fed.wait(
        "sa's audit rows at the centre",
        lambda: (
            centre.h.scalar("SELECT count() FROM ami.audit WHERE node = 'sa' AND action = 'sql'")
            >= 1
        ),
    )


def test_a_debtor_imported_at_the_centre_is_switched_by_its_region(
    fed: Federation, fleet: Path, tmp_path: Path
) -> None:
    sa, centre = fed.nodes["sa"], fed.centre
    debtor = meters_of(fleet, "UZ-SA")[3]
    p = run_fleet(fleet, sa.port, [debtor["serial"]], "--interval", "5", "--gas-interval", "5")
    accounts = tmp_path / "accounts.csv"
    long_ago = (dt.date.today() - dt.timedelta(days=60)).isoformat()

    def state(node: Any, kind: str) -> Any:
        rows = node.h.admin(
            "query",
            query="SELECT state, requested_by, verified_state FROM ami.command_status "
            f"WHERE serial = '{debtor['serial']}' AND kind = '{kind}'",
        )["rows"]
        return rows[0] if rows else None

    try:
        fed.wait(
            "the debtor online at sa",
            lambda: any(
                m == debtor["serial"]
                for s in sa.h.admin("sessions")["sessions"]
                for m in s["meters"]
            ),
        )
        accounts.write_text(
            "account_id,debt,overdue_since,protected,note\n"
            f"{debtor['account_id']},5000,{long_ago},false,\n"
        )
        centre.h.cli("billing", "import", str(accounts))
        fed.wait(
            "disconnected by the region, seen at the centre",
            lambda: state(centre, "disconnect") == ["done", "policy", "disconnected"],
            timeout=90,
        )
        assert state(sa, "disconnect") == ["done", "policy", "disconnected"]
        # Nobody at the centre acted on it: the policy actions are the region's.
        acts = centre.h.admin(
            "query",
            query=f"SELECT action FROM ami.policy_actions WHERE serial = '{debtor['serial']}' "
            "ORDER BY ts",
        )["rows"]
        assert [a[0] for a in acts] == ["warn", "disconnect"]
        accounts.write_text(
            f"account_id,debt,overdue_since,protected,note\n{debtor['account_id']},0,,false,\n"
        )
        centre.h.cli("billing", "import", str(accounts))
        fed.wait(
            "reconnected after the payment",
            lambda: state(centre, "reconnect") == ["done", "policy", "connected"],
            timeout=90,
        )
    finally:
        stop(p)


def _kill_store(node: Any) -> None:
    os.kill(node.h.pids()[1], signal.SIGKILL)


def test_what_regions_store_reaches_the_centre_once_through_cuts_and_kills(
    fed: Federation, fleet: Path
) -> None:
    sa, fa, centre = fed.nodes["sa"], fed.nodes["fa"], fed.centre
    serials = {
        n: [m["serial"] for m in meters_of(fleet, r)] for n, r in (("sa", "UZ-SA"), ("fa", "UZ-FA"))
    }
    # Readings of this run only (the meters' clocks start two days on).
    start = int(time.time()) // 86_400 * 86_400 + 2 * 86_400
    runs = {
        n: run_fleet(
            fleet,
            fed.nodes[n].port,
            serials[n],
            *("--start", str(start), "--speed", "30", "--pushes", "30"),
            *("--interval", "30", "--gas-interval", "30"),
        )
        for n in ("sa", "fa")
    }
    seen_cut = False
    try:
        time.sleep(3)
        fed.cut("sa")
        fed.wait(
            "the centre sees sa cut",
            lambda: (
                not next(p for p in fed.link("centre")["peers"] if p["peer"] == "sa")["connected"]
            ),
            timeout=30,
        )
        seen_cut = True
        _kill_store(sa)  # a region's store, while its link is cut
        time.sleep(4)
        _kill_store(centre)  # the centre's store
        time.sleep(4)
        fed.heal("sa")
        pid = centre.nats_pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)  # the centre's NATS server
        sent = {n: final(p, 120) for n, p in runs.items()}
    finally:
        for p in runs.values():
            stop(p)
    assert seen_cut
    # By the meters' time, not by arrival: a push of the previous test may arrive in
    # this test's first second; the other tests' meters keep the real clock, a day or
    # more behind these.
    window = f"ts >= toDateTime({start - 43_200})"
    for name, node in (("sa", sa), ("fa", fa)):
        expected = sent[name]["readings"]
        assert sent[name]["pushes"] == 30 * len(serials[name])
        fed.wait_equal(
            f"{name}'s readings in {name}",
            lambda node=node: count(node, f"SELECT count() FROM ami.readings WHERE {window}"),
            expected,
        )
        mine = f"meter IN ({', '.join(repr(s) for s in serials[name])})"
        fed.wait_equal(
            f"{name}'s readings at the centre",
            lambda mine=mine: count(
                centre, f"SELECT count() FROM ami.readings WHERE {window} AND {mine}"
            ),
            expected,
            timeout=120,
        )
        # Exactly once: no row twice at the centre, even before any merge.
        assert (
            count(
                centre,
                f"SELECT uniqExact(meter, obis, ts) FROM ami.readings WHERE {window} AND {mine}",
            )
            == expected
        )
    # Everything else the regions stored is at the centre too, once: the centre stores
    # nothing of its own in these tables (no meters of its own connect in this test;
    # its own command rows are those it sent down).
    for table, where in (
        ("sessions", "1"),
        ("events", "1"),
        ("commands", "state != 'sent'"),
        ("policy_actions", "1"),
    ):
        sql = f"SELECT count() FROM ami.{table} WHERE {where}"
        fed.wait_equal(
            f"{table} at the centre",
            lambda sql=sql: count(centre, sql) - count(sa, sql) - count(fa, sql),
            0,
        )
    link = fed.link("centre")
    assert all(p["connected"] for p in link["peers"]), link
    assert all(p["rejected_records"] == 0 for p in link["peers"]), link


def test_a_lost_regions_meters_go_to_its_standby_which_takes_over(
    fed: Federation, fleet: Path
) -> None:
    """Runs last: fa's node is lost for good."""
    sa, centre = fed.nodes["sa"], fed.centre
    meter = meters_of(fleet, "UZ-FA")[1]["serial"]
    read = {"serial": meter, "kind": "read", "args": {"objects": [[3, "1.0.1.8.0.255", 2]]}}
    # Before the loss, fa gives the meter new keys: they reach the centre and fa's
    # standby, which would otherwise hold only the delivered ones.
    fa = fed.nodes["fa"]
    # The simulated meter keeps the keys it is given across its restarts, as meters do.
    kept = fleet.parent / "meter-keys.csv"
    p = run_fleet(
        fleet, fa.port, [meter], "--interval", "5", "--gas-interval", "5", "--keys-file", str(kept)
    )
    try:
        fed.wait(
            "the meter online at fa",
            lambda: any(
                m == meter for s in fa.h.admin("sessions")["sessions"] for m in s["meters"]
            ),
        )
        c = fa.h.admin("command", serial=meter, kind="rekey", wait=60)
        assert c["state"] == "done", c
    finally:
        stop(p)
    keys = f"SELECT source FROM ami.meter_keys FINAL WHERE serial = '{meter}'"
    fed.wait("the rotated keys at the centre", lambda: centre.h.scalar(keys) == "rotation")
    fed.wait("the rotated keys at fa's standby", lambda: sa.h.scalar(keys) == "rotation")
    lost_at = int(time.time())
    fed.kill("fa")
    # Its meters are pointed at the standby, which holds their keys in advance (the
    # rotated ones too: reads below associate under them).
    p = run_fleet(
        fleet, sa.port, [meter], "--interval", "5", "--gas-interval", "5", "--keys-file", str(kept)
    )
    try:
        fed.wait(
            "fa's meter online at its standby",
            lambda: any(
                m == meter for s in sa.h.admin("sessions")["sessions"] for m in s["meters"]
            ),
        )
        # Its pushes are stored there and reach the centre...
        fed.wait(
            "fa's meter's pushes at the centre, through sa",
            lambda: (
                count(
                    centre,
                    f"SELECT count() FROM ami.readings WHERE meter = '{meter}' "
                    f"AND received_at >= toDateTime({lost_at})",
                )
                > 0
            ),
        )
        # ...but sa does not act on a region it does not own.
        with pytest.raises(Exception, match="which node fa owns"):
            sa.h.admin("command", **read)
        out = centre.h.cli("node", "handover", "UZ-FA", "--to", "sa")
        assert "UZ-FA: from fa to sa" in out
        fed.wait("sa owns UZ-FA", lambda: "UZ-FA" in sa.h.admin("status")["node"]["regions"])
        # A command at the centre for fa's meter now goes to sa and runs there.
        c = centre.h.admin("command", **read, wait=60)
        assert c["state"] == "done", c
        assert (
            sa.h.scalar(
                f"SELECT count() FROM ami.command_status WHERE command_id = '{c['command_id']}'"
            )
            == 1
        )
        # The last samples the centre held of fa's meters came down with the region.
        fed.wait(
            "the last samples at sa",
            lambda: (
                count(
                    sa,
                    "SELECT count() FROM ami.readings WHERE meter IN (SELECT serial FROM "
                    f"ami.meters FINAL WHERE region = 'UZ-FA') AND received_at < toDateTime({lost_at})",
                )
                > 0
            ),
        )
        # The centre's map says so everywhere, and the centre routes fa's rows to sa.
        assert (
            json.loads((sa.h.data / "link" / "federation.json").read_text())["owners"]["UZ-FA"]
            == "sa"
        )
        # fa's data centre comes back: the region goes back to it, with what sa stored
        # of its meters meanwhile.
        fa = fed.nodes["fa"]
        fa.h.start()
        fed.wait(
            "fa heard at the centre again",
            lambda: next(x for x in fed.link("centre")["peers"] if x["peer"] == "fa")["connected"],
        )
        # What sa stored of the meter while it held the region, once the centre has it
        # all (the meter keeps pushing to sa: later readings are not part of this).
        seen = (
            f"SELECT uniqExact(ts) FROM ami.readings WHERE meter = '{meter}' "
            f"AND received_at >= toDateTime({lost_at})"
        )
        stored_at_sa = count(sa, seen)
        assert stored_at_sa > 0
        fed.wait("sa's readings at the centre", lambda: count(centre, seen) >= stored_at_sa)
        out = centre.h.cli("node", "handover", "UZ-FA", "--to", "fa")
        assert "UZ-FA: from sa to fa" in out
        fed.wait("fa owns UZ-FA again", lambda: "UZ-FA" in fa.h.admin("status")["node"]["regions"])
        fed.wait("sa gave UZ-FA up", lambda: "UZ-FA" not in sa.h.admin("status")["node"]["regions"])
        fed.wait("what sa stored of fa's meter, at fa", lambda: count(fa, seen) >= stored_at_sa)
    finally:
        stop(p)
