"""The head-end over real TCP into the embedded ClickHouse: pushes, concentrators,
garbage, wrong keys, replays, limits, admin commands."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from server_harness import START, Meter, Server, keyed, running

from headend import codec

E1 = keyed("E1", 1)
E3 = keyed("E3", 3, "e3ph")
G1 = keyed("G1", 11, "gas-g4")
P1 = Meter("P1", "e1ph")  # a plain meter (no keys)
C = [keyed(f"C{i}", 20 + i) for i in range(3)]  # behind one concentrator
WK = keyed("WK", 30)  # will push with a wrong key
RP = keyed("RP", 31)  # will be replayed
NB = keyed("NB", 33)  # an NB-IoT meter: pushes over UDP
CT = keyed("CT", 32, "e3ph")  # a large consumer on a 200/5 A CT and a 10 kV/100 V VT
CT.ct, CT.vt = "200/5", "10000/100"
ALL = [E1, E3, G1, P1, *C, WK, RP, CT, NB]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # A short wake window: the UDP meter's commands wait for its next datagram soon.
    with running(tmp_path_factory.mktemp("srv"), ALL, server_settings={"wake_window": 2.0}) as srv:
        yield srv


def readings(srv: Server, meter: str) -> int:
    return int(srv.scalar(f"SELECT count() FROM ami.readings WHERE meter = '{meter}'"))


def test_encrypted_pushes_over_the_wrapper_become_scaled_readings(server: Server) -> None:
    p = server.pusher()
    for i in range(4):
        assert p.send(p.frame(E1.push(i)))
    p.close()
    server.wait_for("SELECT count() FROM ami.readings WHERE meter = 'E1'", 4 * 6)
    rows = server.sql(
        "SELECT toUnixTimestamp(ts), value FROM ami.readings "
        "WHERE meter = 'E1' AND obis_code = '1.0.1.8.0.255' ORDER BY ts"
    )
    assert rows == [
        [int((START + dt.timedelta(minutes=15 * i)).timestamp()), 100_000 + 250 * i]
        for i in range(4)
    ]
    volts = server.sql(
        "SELECT DISTINCT value, unit FROM ami.readings "
        "WHERE meter = 'E1' AND obis_code = '1.0.32.7.0.255'"
    )
    assert volts == [[230.1, "V"]]
    amps = server.sql(
        "SELECT DISTINCT value FROM ami.readings WHERE meter = 'E1' AND obis_code = '1.0.31.7.0.255'"
    )
    assert amps == [[5.12]]


def test_a_meter_on_instrument_transformers_stores_primary_values(server: Server) -> None:
    """CT 200/5 = 40, VT 10,000/100 = 100: energy x 4,000, current x 40, voltage x 100,
    hand-computed from the secondary values the meter pushes."""
    p = server.pusher()
    assert p.send(p.frame(CT.push(0)))
    p.close()
    server.wait_for("SELECT count() FROM ami.readings WHERE meter = 'CT'", CT.registers)
    rows = server.sql(
        "SELECT obis_code, value, unit FROM ami.readings WHERE meter = 'CT' ORDER BY obis"
    )
    assert rows == [
        ["1.0.1.8.0.255", 100_000 * 4_000.0, "Wh"],  # 100,000 Wh secondary
        ["1.0.2.8.0.255", 0.0, "Wh"],
        ["1.0.3.8.0.255", 5_000 * 4_000.0, "varh"],
        ["1.0.4.8.0.255", 0.0, "varh"],
        ["1.0.31.7.0.255", 204.8, "A"],  # 5.12 A
        ["1.0.32.7.0.255", 23_010.0, "V"],  # 230.1 V
        ["1.0.51.7.0.255", 205.2, "A"],  # 5.13 A
        ["1.0.52.7.0.255", 23_020.0, "V"],
        ["1.0.71.7.0.255", 205.6, "A"],
        ["1.0.72.7.0.255", 23_030.0, "V"],
    ]
    # E3, the same model without transformers, stores the secondary values as pushed.
    assert server.scalar(
        "SELECT count() FROM ami.meters FINAL WHERE serial = 'E3' AND ct_ratio = 1 AND vt_ratio = 1"
    )


def test_pushes_over_udp_each_datagram_on_its_own(server: Server) -> None:
    """The wrapper over UDP (IEC 62056-47): a datagram a push, deciphered and stored as
    over TCP; a datagram cut short is refused alone and the next one stored."""
    with socket.socket(type=socket.SOCK_DGRAM) as u:
        u.bind(("127.0.0.77", 0))
        to = ("127.0.0.1", server.port)
        for i in range(3):
            u.sendto(codec.wrap(NB.push(i), 1, 1), to)
        cut = codec.wrap(NB.push(3), 1, 1)
        u.sendto(cut[: len(cut) // 2], to)
        u.sendto(codec.wrap(NB.push(4), 1, 1), to)
        server.wait_for("SELECT count() FROM ami.readings WHERE meter = 'NB'", 4 * NB.registers)
        ts = server.sql(
            "SELECT DISTINCT toUnixTimestamp(ts) FROM ami.readings WHERE meter = 'NB' ORDER BY 1"
        )
        start = int(START.timestamp())
        assert [t[0] for t in ts] == [start + 900 * i for i in (0, 1, 2, 4)]
        server.wait_for(
            "SELECT count() FROM ami.events WHERE name = 'reject:truncated' "
            "AND peer LIKE '127.0.0.77%'",
            1,
        )
        # One session for the peer's address, its meter identified on it.
        sessions = server.admin("sessions", meter="NB")["sessions"]
        assert len(sessions) == 1
        assert sessions[0]["peer"].startswith("127.0.0.77:")

        # The meter sleeps between uplinks: a command asked past its wake window waits
        # (no attempt) until its next datagram, then starts.
        time.sleep(2.5)
        r = server.cli(
            "ctl", "read", "NB", "0.0.96.1.0.255:2", "--class", "1", "--wait", "0", "--json"
        )
        cid = json.loads(r.stdout)["command_id"]
        state = f"SELECT state FROM ami.command_status WHERE command_id = '{cid}'"
        time.sleep(1.5)
        assert server.sql(state) == [["queued"]]
        u.sendto(codec.wrap(NB.push(5), 1, 1), to)
        server.wait_for(f"SELECT state != 'queued' FROM ({state})", 1)


def test_three_phase_and_gas_over_hdlc(server: Server) -> None:
    p = server.pusher("hdlc")
    p.send(p.frame(E3.push(0)))
    p.send(p.frame(G1.push(0), source=2))
    p.close()
    server.wait_for("SELECT count() FROM ami.readings WHERE meter IN ('E3', 'G1')", 10 + 4)
    gas = server.sql(
        "SELECT obis_code, value, unit FROM ami.readings WHERE meter = 'G1' ORDER BY obis"
    )
    assert gas == [
        ["0.0.24.4.0.255", 1.0, "count"],
        ["0.0.96.6.3.255", 3.62, "V"],
        ["7.0.3.0.0.255", 1000.0, "m³"],
        ["7.0.13.0.0.255", 990.0, "m³ (corr)"],
    ]


def test_plain_meter_identified_by_its_device_id(server: Server) -> None:
    p = server.pusher()
    p.send(p.frame(P1.push(0)) + p.frame(P1.push(1)))
    p.close()
    server.wait_for("SELECT count() FROM ami.readings WHERE meter = 'P1'", 12)


def test_concentrator_connection_carries_several_meters(server: Server) -> None:
    p = server.pusher()
    data = b""
    for i in range(3):
        for k, m in enumerate(C):
            data += codec.wrap(m.push(i), 0x11 + k, 1)
    p.send(data)
    p.close()
    for m in C:
        server.wait_for(f"SELECT count() FROM ami.readings WHERE meter = '{m.serial}'", 18)


# Refusals are stored aggregated: one row per source, reason and meter per interval,
# the count first in its detail ("2 in 1 s: ...").
REFUSED = "sum(toUInt64OrZero(splitByChar(' ', detail)[1]))"


def test_bad_frames_interleaved_with_good_ones(server: Server) -> None:
    malformed = f"SELECT {REFUSED} FROM ami.events WHERE name = 'reject:malformed'"
    before = int(server.scalar(malformed))
    p = server.pusher()
    good = [p.frame(E1.push(10 + i)) for i in range(3)]
    oversized = (
        b"\x00\x01\x00\x01\x00\x01\xff\xff"  # a header claiming 65,535 bytes, then nothing sane
    )
    p.send(good[0] + b"\x13\x37 GET / HTTP/1.1\r\n\r\n" + good[1] + b"\x00\x02\x00\x01" + good[2])
    p.close()
    server.wait_for(
        "SELECT count() FROM ami.readings WHERE meter = 'E1' AND ts >= toDateTime('2026-11-23 02:00:00', 'Asia/Tashkent')",
        18,
    )
    server.wait_for(malformed, before + 2)
    time.sleep(1.5)  # a later telling adds nothing
    assert int(server.scalar(malformed)) == before + 2
    assert oversized  # used below
    p = server.pusher()
    p.send(oversized + b"x" * 100)
    p.close()
    server.wait_for(
        "SELECT count() FROM ami.events WHERE name IN ('reject:truncated', 'reject:oversize') AND detail != ''",
        1,
    )


def test_wrong_key_and_replay_are_refused_and_recorded(server: Server) -> None:
    p = server.pusher()
    p.send(p.frame(WK.push(0, ek=os.urandom(16))))
    first = RP.push(0)
    p.send(p.frame(first) + p.frame(first) + p.frame(RP.push(1)))
    p.close()
    server.wait_for(
        "SELECT count() FROM ami.events WHERE meter = 'WK' AND name = 'reject:authentication-failed'",
        1,
    )
    server.wait_for(
        "SELECT count() FROM ami.events WHERE meter = 'RP' AND name = 'reject:replayed-invocation-counter'",
        1,
    )
    server.wait_for("SELECT count() FROM ami.readings WHERE meter = 'RP'", 12)
    assert readings(server, "WK") == 0
    detail = str(server.scalar("SELECT detail FROM ami.events WHERE meter = 'WK' LIMIT 1"))
    assert detail.startswith("1 in "), detail
    assert detail.endswith(" s: authentication failed"), detail
    assert server.scalar("SELECT peer FROM ami.events WHERE meter = 'WK' LIMIT 1") == "127.0.0.1"


def test_unknown_meter_is_refused_and_recorded(server: Server) -> None:
    stranger = keyed("NOPE", 99)
    p = server.pusher()
    p.send(p.frame(stranger.push(0)))
    p.close()
    assert stranger.title is not None
    title = stranger.title.hex().upper()
    server.wait_for(
        f"SELECT count() FROM ami.events WHERE name = 'reject:unknown-meter' AND detail LIKE '%{title}%'",
        1,
    )


def test_alarm_push_becomes_an_event(server: Server) -> None:
    p = server.pusher()
    p.send(p.frame(E1.event(40, START)))
    p.close()
    server.wait_for(
        "SELECT count() FROM ami.events WHERE meter = 'E1' AND name = 'terminal-cover-opened'", 1
    )
    assert (
        server.scalar(
            "SELECT category FROM ami.events WHERE name = 'terminal-cover-opened' LIMIT 1"
        )
        == "tamper"
    )


def test_handshake_timeout_closes_silent_connections(server: Server) -> None:
    s = socket.create_connection(("127.0.0.1", server.port))
    s.settimeout(10)
    t = time.monotonic()
    assert s.recv(1) == b""  # closed by the head-end
    assert time.monotonic() - t < 8
    s.close()


def test_junk_does_not_make_a_connection_trusted(server: Server) -> None:
    # A well-framed APDU that identifies no meter: the handshake timeout still holds
    # (it used to move the connection to the 30-minute idle timeout).
    s = socket.create_connection(("127.0.0.1", server.port))
    s.settimeout(10)
    t = time.monotonic()
    s.sendall(codec.wrap(b"\x0b\x0b\x0b", 1, 1))
    assert s.recv(1) == b""
    assert time.monotonic() - t < 8
    s.close()
    server.wait_for("SELECT count() > 0 FROM ami.events WHERE name = 'reject:handshake-timeout'", 1)


def test_sessions_status_and_sql_through_the_server(server: Server) -> None:
    p = server.pusher()
    p.send(p.frame(E3.push(5)))
    server.wait_for("SELECT count() FROM ami.readings WHERE meter = 'E3'", 20)
    sessions = server.admin("sessions", meter="E3")["sessions"]
    assert len(sessions) == 1
    assert sessions[0]["meters"] == ["E3"]
    p.close()
    st = server.admin("status")
    assert {w["worker"] for w in st["workers"]} == {0, 1}
    assert st["rejects"].get("authentication-failed", 0) >= 1
    r = server.cli("ctl", "status")
    assert "sessions" in r.stdout
    r = server.cli("sql", "SELECT count() AS n FROM ami.meters FINAL", "--format", "json")
    assert f'"n": {len(ALL)}' in r.stdout
    r = server.cli("sql", "SELECT * FROM ami.meter_keys", check=False)
    assert r.returncode == 1
    assert "not readable" in r.stderr
    server.wait_for(
        "SELECT count() > 0 FROM ami.sessions WHERE event = 'disconnect' AND has(meters, 'E3')", 1
    )


def test_keys_never_reach_the_log(server: Server) -> None:
    text = Path(server.log).read_text().upper()
    for m in ALL:
        if m.ek and m.ak:
            assert m.ek.hex().upper() not in text
            assert m.ak.hex().upper() not in text
