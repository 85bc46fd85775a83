"""Hostile traffic on the meter port: per-source limits, bans, aggregated refusals,
and room for known meters when a worker is full (headend/server/sources.py)."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator

import pytest
from server_harness import Server, keyed, running

from headend import codec

M = keyed("H1", 600)
N = keyed("H2", 601)

# Refusals are stored one row per source, reason and meter per interval, the count
# first in the detail ("14 in 2 s: ...").
REFUSED = "sum(toUInt64OrZero(splitByChar(' ', detail)[1]))"


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Two workers of three connections each."""
    settings = {"max_connections_per_worker": 3, "handshake_timeout": 30.0}
    with running(tmp_path_factory.mktemp("full"), [M], server_settings=settings) as srv:
        yield srv


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Tight per-source limits; 127.0.0.7 exempt."""
    settings = {
        "handshake_timeout": 30.0,
        "source_max_untrusted": 20,
        "source_connect_rate": 50.0,
        "source_connect_burst": 100,
        "source_max_bad_frames": 30,
        "source_ban": 2.0,
        "trusted_sources": ["127.0.0.7/32"],
    }
    with running(tmp_path_factory.mktemp("guard"), [N], server_settings=settings) as srv:
        yield srv


def _held(socks: list[socket.socket], wait: float = 0.5) -> list[socket.socket]:
    """The sockets the head-end has not closed."""
    time.sleep(wait)
    held = []
    for s in socks:
        s.setblocking(False)
        try:
            gone = s.recv(1) == b""
        except BlockingIOError:
            gone = False
        except OSError:
            gone = True
        if not gone:
            held.append(s)
    return held


def _open(server: Server, source: str, n: int) -> list[socket.socket]:
    out = []
    for _ in range(n):
        # (refused while the listen backlog overflowed: it did not get in either)
        with contextlib.suppress(OSError):
            out.append(
                socket.create_connection(
                    ("127.0.0.1", server.port), timeout=5, source_address=(source, 0)
                )
            )
    return out


def _rejects(server: Server, reason: str, n: int) -> int:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        got = int(server.admin("status")["rejects"].get(reason, 0))
        if got >= n:
            return got
        time.sleep(0.2)
    return int(server.admin("status")["rejects"].get(reason, 0))


def _lines(server: Server, text: str) -> int:
    return sum(1 for line in server.log.read_text().splitlines() if text in line)


def test_a_full_worker_refuses_strangers_and_makes_room_for_known_meters(full: Server) -> None:
    # Meters identified from 127.0.0.1 make it a known address on both workers (12
    # connections: the kernel spreads them over the two).
    for i in range(12):
        p = full.pusher()
        p.send(p.frame(M.push(i)))
        p.close()
        full.wait_for(
            "SELECT count() FROM ami.sessions WHERE event = 'disconnect' AND has(meters, 'H1')",
            i + 1,
        )
    # Two workers, three connections each: of 20 idle ones from an unknown address, six
    # are held and the rest closed at once, counted as capacity.
    socks = _open(full, "127.0.0.3", 20)
    try:
        held = _held(socks)
        assert len(held) == 6
        assert _rejects(full, "capacity", 14) == 14
        # A known meter address makes room: the oldest idle connection is closed and
        # the meter's push is stored.
        before = int(full.scalar("SELECT count() FROM ami.readings WHERE meter = 'H1'"))
        p = full.pusher()
        p.send(p.frame(M.push(100)))
        assert len(_held(held)) == 5
        assert _rejects(full, "evicted", 1) == 1
        full.wait_for("SELECT count() FROM ami.readings WHERE meter = 'H1'", before + 6)
        p.close()
    finally:
        for s in socks:
            s.close()
    # Told once per source and reason on each worker, not once per connection.
    full.wait_for(
        f"SELECT {REFUSED} FROM ami.events WHERE name = 'reject:capacity' AND peer = '127.0.0.3'",
        14,
    )
    rows = full.sql(
        "SELECT count() FROM ami.events WHERE name = 'reject:capacity' AND peer = '127.0.0.3'"
    )
    assert rows[0][0] <= 4  # a row per worker and telling
    assert 1 <= _lines(full, ": capacity: ") <= 4


def test_an_idle_flood_from_one_address_is_refused_while_meters_push(guarded: Server) -> None:
    flood = _open(guarded, "127.0.0.5", 300)
    try:
        # The meter pushes from elsewhere meanwhile and all of it is stored.
        p = guarded.pusher()
        for i in range(5):
            p.send(p.frame(N.push(i)))
        guarded.wait_for("SELECT count() FROM ami.readings WHERE meter = 'H2'", 30)
        p.close()
        held = _held(flood)
        # At most 20 connections without a meter per worker.
        assert 0 < len(held) <= 40
        refused = len(flood) - len(held)
        deadline = time.monotonic() + 5  # workers report every second
        while time.monotonic() < deadline:
            untrusted = guarded.admin("status")["sources"]["untrusted_connections"]
            if untrusted == len(held):
                break
            time.sleep(0.2)
        assert untrusted == len(held)
    finally:
        for s in flood:
            s.close()
    by_reason = {
        r: n
        for r, n in guarded.admin("status")["rejects"].items()
        if r in ("source-untrusted", "source-rate", "source-banned")
    }
    assert sum(by_reason.values()) >= refused
    assert by_reason.get("source-untrusted", 0) >= 1
    # The refusals are rows per reason and worker, with exact counts.
    query = (
        f"SELECT {REFUSED} FROM ami.events WHERE peer = '127.0.0.5' "
        "AND name IN ('reject:source-untrusted', 'reject:source-rate', 'reject:source-banned')"
    )
    guarded.wait_for(query, sum(by_reason.values()))
    n_rows = guarded.scalar("SELECT count() FROM ami.events WHERE peer = '127.0.0.5'")
    assert n_rows <= 12, n_rows
    assert _lines(guarded, "127.0.0.5") <= 12


def test_junk_bans_its_source_for_a_while(guarded: Server) -> None:
    junk = codec.wrap(b"\x0b\x0b\x0b\x0b", 1, 1)  # well framed, no APDU we know
    s = socket.create_connection(
        ("127.0.0.1", guarded.port), timeout=5, source_address=("127.0.0.6", 0)
    )
    with s:
        # A connection without a meter is closed after 20 refused inputs.
        s.sendall(junk * 200)
        assert s.recv(1) == b""
    # More junk from the same address: past 30 refused inputs a minute (on one worker)
    # it is banned, and new connections from it are refused at once.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not _rejects(guarded, "source-banned", 1):
        for c in _open(guarded, "127.0.0.6", 2):
            with c:
                try:
                    c.sendall(junk * 40)
                    c.recv(1)
                except OSError:
                    pass
    assert _rejects(guarded, "source-banned", 1) >= 1
    banned = guarded.admin("status")["sources"]["banned"]
    assert banned >= 1
    # A meter elsewhere is untouched; the ban ends (2 s) and the address may connect.
    time.sleep(2.5)
    again = _open(guarded, "127.0.0.6", 1)
    try:
        assert len(_held(again)) == 1
    finally:
        for c in again:
            c.close()
    # Hundreds of refused inputs, a bounded number of log lines and rows.
    guarded.wait_for(
        "SELECT count() > 0 FROM ami.events WHERE peer = '127.0.0.6' AND name = 'reject:source-banned'",
        1,
    )
    assert _lines(guarded, "127.0.0.6") <= 20
    assert guarded.scalar("SELECT count() FROM ami.events WHERE peer = '127.0.0.6'") <= 20


def test_trusted_sources_are_not_limited(guarded: Server) -> None:
    socks = _open(guarded, "127.0.0.7", 60)
    try:
        assert len(_held(socks)) == 60
    finally:
        for s in socks:
            s.close()
