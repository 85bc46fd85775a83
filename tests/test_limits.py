"""Limits and operations on a server configured tight: a separate HDLC port, idle
timeout, backpressure from the spool backlog, socket modes. (Connections per worker
and per source: test_hostile.py.)"""

from __future__ import annotations

import stat
import time
from collections.abc import Iterator

import pytest
from server_harness import Server, free_port, keyed, running

M = keyed("L1", 500)
H = keyed("L2", 501)
HDLC_PORT = free_port()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    settings = {
        "hdlc_port": HDLC_PORT,
        "idle_timeout": 2.0,
        "pause_backlog_bytes": 1,
        "resume_backlog_bytes": 0,
    }
    # Rows wait 1.5 s in the spool, so the store's backlog reports (every 0.5 s) see them.
    store = {"ingest_interval": 1.5}
    with running(
        tmp_path_factory.mktemp("lim"), [M, H], server_settings=settings, store_settings=store
    ) as srv:
        yield srv


def test_separate_hdlc_port(server: Server) -> None:
    p = server.pusher("hdlc", HDLC_PORT)
    p.send(p.frame(H.push(0)))
    p.close()
    server.wait_for("SELECT count() FROM ami.readings WHERE meter = 'L2'", 6)
    # The HDLC port only speaks HDLC: a wrapper frame there is refused.
    before = int(server.scalar("SELECT count() FROM ami.events WHERE name = 'reject:malformed'"))
    w = server.pusher(port=HDLC_PORT)
    w.send(w.frame(H.push(1)))
    w.close()
    server.wait_for("SELECT count() FROM ami.events WHERE name = 'reject:malformed'", before + 1)


def test_backpressure_pauses_and_resumes_without_loss(server: Server) -> None:
    # With a 1-byte pause threshold every backlog pauses reading until it is ingested.
    p = server.pusher()
    for i in range(40):
        p.send(p.frame(M.push(i)))
    p.close()
    server.wait_for("SELECT count() FROM ami.readings WHERE meter = 'L1'", 40 * 6)
    # The workers resume at the next backlog report once everything is ingested.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and "resuming reads" not in server.log.read_text():
        time.sleep(0.2)
    log = server.log.read_text()
    assert "pausing reads" in log
    assert "resuming reads" in log


def test_idle_connections_are_closed(server: Server) -> None:
    p = server.pusher()
    p.send(p.frame(M.push(100)))
    assert p.sock is not None
    p.sock.settimeout(15)
    t = time.monotonic()
    assert p.sock.recv(1) == b""
    assert 1.5 < time.monotonic() - t < 12
    p.close()
    server.wait_for("SELECT count() > 0 FROM ami.sessions WHERE reason = 'idle-timeout'", 1)


def test_sockets_and_secrets_are_private(server: Server) -> None:
    for path in (server.data / "admin.sock", server.data / "run" / "control.sock"):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path} is mode {mode:o}"
    key = server.data / "secrets" / "master.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
