"""The meter port's per-source limits and refusal tally on their own (time is an
argument): headend/server/sources.py. The server-level behaviour is test_hostile.py."""

from __future__ import annotations

from dataclasses import replace

from headend.config import ServerConfig
from headend.server.sources import RefusalTally, SourceGuard, address_of, event_rows

CFG = replace(
    ServerConfig(),
    source_max_untrusted=3,
    source_connect_rate=10.0,
    source_connect_burst=5,
    source_max_bad_frames=4,
    source_ban=10.0,
    source_ban_max=40.0,
)


def test_untrusted_connections_per_address_and_trust() -> None:
    g = SourceGuard(CFG)
    assert [g.admit("10.0.0.1", 0.0) for _ in range(3)] == [None, None, None]
    assert g.admit("10.0.0.1", 0.0) == "source-untrusted"
    # The offence bans the address: even after the connections close.
    for _ in range(3):
        g.release("10.0.0.1", trusted=False)
    assert g.admit("10.0.0.1", 1.0) == "source-banned"
    assert g.admit("10.0.0.2", 1.0) is None  # another address is not affected
    # After the ban, a meter identified on a connection frees its place: meters behind
    # one address do not count against it.
    assert g.admit("10.0.0.1", 11.0) is None
    g.trust("10.0.0.1")
    assert g.known("10.0.0.1")
    assert not g.known("10.0.0.2")
    assert [g.admit("10.0.0.1", 11.0) for _ in range(3)] == [None, None, None]


def test_connection_rate_and_bans_that_double() -> None:
    g = SourceGuard(CFG)
    for _ in range(5):  # the burst, each closed at once
        assert g.admit("10.0.0.3", 0.0) is None
        g.release("10.0.0.3", trusted=False)
    assert g.admit("10.0.0.3", 0.0) == "source-rate"
    assert g.banned("10.0.0.3", 9.9)
    assert not g.banned("10.0.0.3", 10.1)
    # A second offence while remembered: 20 s; a third: 40 s (the cap), then 40 s.
    assert g.bad("10.0.0.3", 10.1, 5) == 20.0
    assert g.banned("10.0.0.3", 29.0)
    assert g.bad("10.0.0.3", 31.0, 5) == 40.0
    assert g.bad("10.0.0.3", 72.0, 5) == 40.0
    # Quiet for longer than the longest ban: it starts again at 10 s.
    assert g.bad("10.0.0.3", 200.0, 5) == 10.0


def test_bad_frames_per_minute() -> None:
    g = SourceGuard(CFG)
    assert [g.bad("10.0.0.4", 0.0) for _ in range(4)] == [0.0] * 4
    assert g.bad("10.0.0.4", 1.0) == 10.0
    # The window restarts after a minute.
    g2 = SourceGuard(CFG)
    for t in (0.0, 20.0, 40.0, 59.0):
        assert g2.bad("10.0.0.5", t) == 0.0
    assert g2.bad("10.0.0.5", 61.0) == 0.0


def test_subnets_and_trusted_networks() -> None:
    g = SourceGuard(
        replace(
            CFG,
            source_subnet_prefix=24,
            source_subnet_factor=2,
            trusted_sources=("192.0.2.0/28",),
        )
    )
    # Three addresses of one /24: the /24 holds at most 6 untrusted connections.
    got = [g.admit(f"198.51.100.{1 + i % 3}", 0.0) for i in range(7)]
    assert got[:6] == [None] * 6
    assert got[6] == "source-untrusted"
    assert g.admit("198.51.101.1", 0.0) is None  # the next /24
    # A trusted network passes every limit.
    assert all(g.admit("192.0.2.5", 0.0) is None for _ in range(50))
    assert g.bad("192.0.2.5", 0.0, 1000) == 0.0


def test_prune_forgets_only_what_holds_nothing() -> None:
    g = SourceGuard(CFG)
    g.admit("10.0.0.6", 0.0)  # holds a connection
    g.admit("10.0.0.7", 0.0)
    g.release("10.0.0.7", trusted=False)
    g.bad("10.0.0.8", 0.0, 10)  # banned
    g.prune(30.0)
    # The one holding a connection and the one banned recently stay.
    assert len(g) == 2
    assert g.banned_now(5.0) == 1
    g.release("10.0.0.6", trusted=False)
    g.prune(100.0)
    assert len(g) == 0


def test_the_tally_counts_per_source_reason_and_meter() -> None:
    t = RefusalTally()
    for i in range(1000):
        t.add("10.0.0.9", "malformed", "", "bad frame", 100.0 + i / 100)
    t.add("10.0.0.9", "authentication-failed", "E1", "authentication failed", 105.0)
    rows = t.take()
    assert [(r.reason, r.count) for r in rows] == [
        ("malformed", 1000),
        ("authentication-failed", 1),
    ]
    assert len(t) == 0
    ev = event_rows(rows, 200.0)
    assert ev[0][3] == "reject:malformed"
    assert ev[0][6] == "10.0.0.9"
    assert ev[0][7] == "1000 in 10 s: bad frame"
    assert ev[1][0] == "E1"


def test_peer_addresses() -> None:
    assert address_of("10.1.2.3:4059") == "10.1.2.3"
    assert address_of("[2001:db8::1]:4059") == "2001:db8::1"
    assert address_of("unix") == "unix"
