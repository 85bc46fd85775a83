"""The warning before a disconnection reaches the consumer through the notification
gateway (an HTTP webhook) and its delivery is recorded: a real HTTP receiver on
loopback that accepts one account's notice and refuses the other's."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loadtest.headend import free_port
from tests.server_harness import keyed, running


@pytest.fixture
def gateway() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    got: list[dict[str, Any]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            body["_key"] = self.headers.get("Idempotency-Key")
            got.append(body)
            code = 500 if body["account_id"] == "ACC-M2" else 202
            self.send_response(code)
            self.end_headers()
            self.wfile.write(b"gateway down" if code == 500 else b"")

        def log_message(self, *args: Any) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://user:secret@127.0.0.1:{srv.server_address[1]}/notify", got
    finally:
        srv.shutdown()
        srv.server_close()


def test_warnings_are_sent_to_the_gateway_and_their_delivery_recorded(
    tmp_path: Path, gateway: tuple[str, list[dict[str, Any]]]
) -> None:
    url, got = gateway
    meters = [keyed("M1", 1), keyed("M2", 2), keyed("M3", 3)]
    policy = {
        "interval": 0.5,
        "warning_hours": 48.0,
        "allowed_hours": "0-23",
        "allowed_weekdays": "mon-sun",
        "debt_threshold": 1000.0,
        "overdue_days": 10,
        "notify_url": url,
        "notify_attempts": 1,
        "notify_timeout": 5.0,
    }
    with running(tmp_path, meters, sections={"billing": policy}) as srv:
        overdue = (dt.date.today() - dt.timedelta(days=40)).isoformat()
        (tmp_path / "accounts.csv").write_text(
            "account_id,debt,overdue_since,protected,note\n"
            f"ACC-M1,5000,{overdue},false,\nACC-M2,7000,{overdue},false,\n"
            f"ACC-M3,50,{overdue},false,\n"
        )
        srv.cli("billing", "import", str(tmp_path / "accounts.csv"))
        srv.wait_for("SELECT count() FROM ami.notifications FINAL WHERE state != 'pending'", 2)
        rows = srv.sql(
            "SELECT account_id, serial, state, attempts, status, error, gateway "
            "FROM ami.notifications FINAL ORDER BY account_id"
        )
        gw = url.replace("user:secret@", "")
        assert rows == [
            ["ACC-M1", "M1", "delivered", 1, 202, "", gw],
            ["ACC-M2", "M2", "failed", 1, 500, "gateway down", gw],
        ]
        # What the gateway received: who, how much, from when, in words.
        m1 = next(x for x in got if x["account_id"] == "ACC-M1")
        assert (m1["kind"], m1["serial"], m1["debt"]) == ("disconnect-warning", "M1", 5000.0)
        assert m1["_key"] == m1["id"]
        assert "may be disconnected from" in m1["message"]
        assert m1["disconnect_from"].endswith("+05:00")
        # Passes go on (every half second); a warned account is not told twice, the
        # small debt never.
        time.sleep(2.5)
        assert srv.scalar("SELECT count() FROM ami.policy_actions WHERE action = 'warn'") == 2
        assert len(got) == 2
        assert srv.scalar("SELECT count() FROM ami.notifications FINAL") == 2
