"""ClickHouse's HTTP interface on a live head-end (headend/web/chhttp.py): analysts'
tools (clickhouse-connect over http://, and plain HTTP as curl sends it) read their
region's rows and are refused the key table; and a second head-end whose store is the
first one's embedded store, reached with clickhouse-connect's http:// client and the
node credential, ingests meters' pushes into it: the code path a ClickHouse server
would take, run for real."""

from __future__ import annotations

import os
import time
import urllib.request
from pathlib import Path

import clickhouse_connect
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError

from loadtest.headend import free_port
from tests.server_harness import GRID, Meter, Server, keyed, running

REGISTERS = 6  # values in an e1ph push (as tests/test_durability.py counts them)

SECRET = "node-secret-0123456789abcdef"


def fleet_of_two_regions(root: Path, meters: list[Meter]) -> Path:
    """The harness's grid plus a second region, a meter in each."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "grid.csv").write_text(
        GRID + "SAM,UZ,region,any,Samarkand,SAM,39.65,66.96\n"
        "TR-2,SAM,transformer,electricity,TP-2,SAM,39.66,66.97\n"
    )
    header = "serial,kind,role,node_id,account_id,model,system_title,ek,ak,password,lat,lon\n"
    (root / "meters.csv").write_text(header + "\n".join(m.csv() for m in meters) + "\n")
    return root


def push(srv: Server, meter: Meter, pushes: range) -> None:
    p = srv.pusher()
    p.send(b"".join(p.frame(meter.push(i)) for i in pushes))
    p.close()


def test_analysts_tools_and_a_second_head_end_over_clickhouse_http(tmp_path: Path) -> None:
    tas, sam = keyed("E1", 1), keyed("E2", 2)
    sam.node = "TR-2"
    fleet = fleet_of_two_regions(tmp_path / "fleet", [tas, sam])
    secret = tmp_path / "node.secret"
    secret.write_text(SECRET)
    secret.chmod(0o600)
    cp = free_port()
    http = {"port": 0, "clickhouse_port": cp, "clickhouse_node_secret_file": str(secret)}
    with running(tmp_path / "a", [], fleet=fleet, sections={"http": http}) as srv:
        push(srv, tas, range(3))
        push(srv, sam, range(2))
        srv.wait_for("SELECT count() FROM ami.readings", 5 * REGISTERS)
        srv.admin("users.add", name="ana", roles=["analyst"], regions=["TAS"])
        srv.admin("users.add", name="vic", roles=["viewer"], regions=["TAS"])
        ana = srv.admin("users.token", name="ana")["token"]
        vic = srv.admin("users.token", name="vic")["token"]

        # An analyst with clickhouse-connect over http://: their region only.
        client = clickhouse_connect.get_client(
            host="127.0.0.1", port=cp, username="ana", password=ana, compress=True
        )
        rows = client.query(
            "SELECT meter, count() FROM ami.readings GROUP BY meter ORDER BY meter"
        ).result_rows
        assert rows == [("E1", 3 * REGISTERS)]
        assert client.command("SELECT count() FROM ami.meters FINAL") == 1
        for probe in (
            "SELECT * FROM ami.meter_keys",
            "SELECT file('/etc/passwd')",
            "SELECT * FROM url('http://127.0.0.1:1/', 'CSV')",
        ):
            with pytest.raises(DatabaseError, match="Not enough privileges"):
                client.query(probe)
        with pytest.raises(DatabaseError):
            client.command("DROP TABLE ami.readings")
        client.close()
        # A viewer is not an analyst; a wrong token is nobody.
        for user, password in (("vic", vic), ("ana", "hk_nope_nope")):
            with pytest.raises(DatabaseError, match=r"516|497"):
                clickhouse_connect.get_client(
                    host="127.0.0.1", port=cp, username=user, password=password
                )
        # As curl sends it.
        req = urllib.request.Request(
            f"http://127.0.0.1:{cp}/?default_format=CSV",
            data=b"SELECT count() FROM ami.readings",
            headers={"X-ClickHouse-User": "ana", "X-ClickHouse-Key": ana},
        )
        with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310
            assert r.read() == f"{3 * REGISTERS}\n".encode()
            assert r.headers["X-ClickHouse-Format"] == "CSV"
        assert (
            srv.scalar("SELECT count() FROM ami.audit WHERE user = 'ana' AND action = 'sql'") >= 4
        )

        # A second head-end whose store is this one's, over HTTP with the node
        # credential: its migrations, imports, meter lookups and ingest all go through
        # clickhouse-connect's http:// client.
        b = Server(
            tmp_path / "b",
            free_port(),
            [],
            fleet=fleet,
            store_settings={"dsn": f"http://node:{SECRET}@127.0.0.1:{cp}", "balance_interval": 0.0},
            sections={
                "http": {"port": 0},
                "security": {"master_key_file": str(srv.data / "secrets" / "master.key")},
                "commands": {"schedule_interval": 0.0},
                "billing": {"policy": False},
            },
        )
        b.setup()
        b.start()
        try:
            t0 = time.time()
            push(b, tas, range(3, 8))  # five later pushes, to B
            srv.wait_for("SELECT count() FROM ami.readings WHERE meter = 'E1'", 8 * REGISTERS)
            st = b.admin("status")
            assert st["ingest"]["error"] is None
            assert b.scalar("SELECT count() FROM ami.readings WHERE meter = 'E1'") == 8 * REGISTERS
            # B's own read-only queries (its admin socket's `query`) leave it able to
            # write: two more pushes are stored.
            push(b, tas, range(8, 10))
            srv.wait_for("SELECT count() FROM ami.readings WHERE meter = 'E1'", 10 * REGISTERS)
            # The node's writes are the store's: the sessions B saw are in A's tables.
            srv.wait_for(
                f"SELECT count() > 0 FROM ami.sessions WHERE has(meters, 'E1') "
                f"AND ts >= fromUnixTimestamp64Milli({int(t0 * 1000)})",
                1,
            )
            # A wrong node secret is refused.
            with pytest.raises(DatabaseError, match="516"):
                clickhouse_connect.get_client(
                    host="127.0.0.1", port=cp, username="node", password="wrong-secret-000000"
                )
        finally:
            assert b.stop() == 0
    assert os.path.exists(secret)
