"""The simulated fleet: its meters answer a head-end the way the standard says, with
the project's own codec on the head-end's side, over real TCP."""

from __future__ import annotations

import csv
import datetime as dt
import itertools
import json
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from headend import codec
from loadtest import sim
from loadtest.grid import generate
from tests.sim_peer import MANAGEMENT_CLIENT, Peer, accept

TZ = dt.timezone(dt.timedelta(hours=5))
START = dt.datetime(2026, 11, 1, 0, 0, 10, tzinfo=TZ)
LP = "1.0.99.1.0.255"
CLOCK = "0.0.1.0.0.255"
LDN = "0.0.42.0.0.255"
DISCONNECTOR = "0.0.96.3.10.255"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fleet")
    generate(300, 0.3, out, seed=11)
    return out


def meters(fleet: Path) -> list[dict[str, str]]:
    with open(fleet / "meters.csv", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def consumer(fleet: Path, model: str = "e1ph", skip: int = 0) -> dict[str, str]:
    thieves = {
        t["serial"] for t in json.loads((fleet / "ground_truth.json").read_text())["thieves"]
    }
    rows = [
        m
        for m in meters(fleet)
        if m["role"] == "consumer" and m["model"] == model and m["serial"] not in thieves
    ]
    return rows[skip]


class Listener:
    """A head-end stand-in's listening socket; accepted connections close with it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = int(self.sock.getsockname()[1])
        self.accepted: list[socket.socket] = []

    def accept(self) -> socket.socket:
        c = accept(self.sock)
        self.accepted.append(c)
        return c

    def close(self) -> None:
        for c in self.accepted:
            c.close()
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    ls = Listener()
    yield ls
    ls.close()


def start_sim(fleet: Path, port: int, *args: str) -> subprocess.Popen[str]:
    return sim.start(
        fleet,
        port,
        "--start",
        START.isoformat(),
        "--events",
        "off",
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
        "--drain",  # these peers never close first
        "1",
        *args,
    )


def stop_sim(p: subprocess.Popen[str]) -> dict[str, Any]:
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=30)
    assert p.returncode == 0, out
    lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    final: dict[str, Any] = lines[-1]
    assert final["final"] is True
    return final


def clock_of(value: dict[str, Any]) -> dt.datetime:
    d = codec.decode_data(b"\x19" + bytes.fromhex(value["value"]))["value"]
    local = dt.datetime.fromisoformat(d["iso"])
    return local.replace(tzinfo=dt.timezone(dt.timedelta(minutes=-d["deviation"])))


def octets(value: dict[str, Any]) -> bytes:
    assert value["type"] == "octet-string", value
    return bytes.fromhex(value["value"])


def keys_for(m: dict[str, str]) -> codec.KeyTable:
    kt = codec.KeyTable()
    kt.set_keys(bytes.fromhex(m["system_title"]), bytes.fromhex(m["ek"]), bytes.fromhex(m["ak"]))
    return kt


def test_lowest_and_lls_associations(fleet: Path, listener: Listener) -> None:
    m = consumer(fleet)
    p = start_sim(fleet, listener.port, "--only", m["serial"])
    try:
        peer = Peer(listener.accept())
        aare = peer.associate()
        assert aare["result"] == "accepted"
        services = aare["user_information"]["negotiated_conformance"]["services"]
        assert {
            "get",
            "set",
            "action",
            "selective-access",
            "block-transfer-with-get-or-read",
        } <= set(services)
        assert octets(peer.get(1, LDN, 2)) == m["serial"].encode()
        now = clock_of(peer.get(8, CLOCK, 2))
        assert abs((now - START).total_seconds()) < 30
        assert peer.get(8, CLOCK, 3) == codec.data("long", -300)
        assert peer.get(3, "1.0.1.8.0.255", 3) == codec.data(
            "structure", [codec.data("integer", 0), codec.data("enum", 30)]
        )
        assert peer.get(3, "1.0.32.7.0.255", 3)["value"][0] == codec.data("integer", -1)
        energy = peer.get(3, "1.0.1.8.0.255", 2)
        assert energy["type"] == "double-long-unsigned"
        assert energy["value"] > 0
        # What the lowest level may not do, and objects that are not there.
        assert peer.set(8, CLOCK, 2, codec.date_time(START)) == "read-write-denied"
        assert peer.action(70, DISCONNECTOR, 1) == "read-write-denied"
        assert peer.get(3, "1.0.99.99.0.255", 2) == {"error": "object-undefined"}
        assert peer.get(3, CLOCK, 2) == {"error": "object-class-inconsistent"}
        listed = peer.request(
            codec.get_request_with_list([(1, LDN, 2), (70, DISCONNECTOR, 2), (1, "9.9.9.9.9.9", 2)])
        )
        assert [next(iter(r)) for r in listed["results"]] == ["data", "data", "data-access-result"]
        assert listed["results"][1]["data"] == codec.data("boolean", True)
        assert peer.release()["apdu"] == "rlre"

        # LLS: the wrong password is refused, the right one may set the clock.
        peer.client = 0x20
        bad = peer.associate(mechanism="low", password=b"00000000")
        assert (bad["result"], bad["diagnostic"]) == (
            "rejected-permanent",
            {"acse-service-user": "authentication-failure"},
        )
        assert (
            peer.associate(mechanism="low", password=m["password"].encode())["result"] == "accepted"
        )
        target = START + dt.timedelta(minutes=5)
        assert peer.set(8, CLOCK, 2, codec.date_time(target)) == "success"
        assert abs((clock_of(peer.get(8, CLOCK, 2)) - target).total_seconds()) < 5
        assert peer.action(70, DISCONNECTOR, 1) == "read-write-denied"
        peer.release()
        # Requests outside an association are refused.
        peer.send_apdu(codec.get_request(1, LDN, 2))
        assert codec.decode_apdu(peer.recv_apdu())["apdu"] == "exception-response"
    finally:
        final = stop_sim(p)
    assert final["requests"] >= 15
    assert final["connected"] == 0


def test_hls_ciphered_association_profile_and_disconnector(fleet: Path, listener: Listener) -> None:
    m = consumer(fleet, skip=1)
    title = bytes.fromhex(m["system_title"])
    p = start_sim(fleet, listener.port, "--only", m["serial"], "--speed", "60")
    try:
        peer = Peer(
            listener.accept(), client=MANAGEMENT_CLIENT, keys=keys_for(m), meter_title=title
        )
        aare = peer.associate(mechanism="high-gmac", ciphered=True, max_pdu=512)
        assert aare["result"] == "accepted"
        assert aare["diagnostic"] == {"acse-service-user": "authentication-required"}
        assert bytes.fromhex(aare["responding_ap_title"]) == title
        assert aare["user_information"]["apdu"] == "initiate-response"

        # A day of the load profile by date range: 97 quarter hours, in blocks of 512.
        day = codec.range_descriptor(START - dt.timedelta(days=1, seconds=10), START)
        rows = peer.get(7, LP, 2, access=day)["value"]
        assert peer.blocks > 3
        assert len(rows) == 97
        times = [clock_of(r["value"][0]) for r in rows]
        assert times[0] == START - dt.timedelta(days=1, seconds=10)
        assert all((b - a).total_seconds() == 900 for a, b in itertools.pairwise(times))
        energy = [r["value"][2]["value"] for r in rows]
        assert energy == sorted(energy)
        assert energy[-1] > energy[0]
        # Column selection: just the clock and A+.
        cols = [
            codec.data(
                "structure",
                [
                    codec.data("long-unsigned", c),
                    codec.data("octet-string", codec.parse_obis(o).hex()),
                    codec.data("integer", 2),
                    codec.data("long-unsigned", 0),
                ],
            )
            for c, o in [(8, CLOCK), (3, "1.0.1.8.0.255")]
        ]
        narrow = codec.range_descriptor(times[90], times[96], columns=cols)
        picked = peer.get(7, LP, 2, access=narrow)["value"]
        assert [r["value"][1]["value"] for r in picked] == energy[90:97]
        # Entry selection: the last 4 entries, all columns.
        entries = {
            "selector": 2,
            "parameters": codec.data(
                "structure",
                [codec.data("double-long-unsigned", 5757), codec.data("double-long-unsigned", 5760)]
                + [codec.data("long-unsigned", 0)] * 2,
            ),
        }
        assert len(peer.get(7, LP, 2, access=entries)["value"]) == 4

        # The disconnector: off, consumption stops, an alarm is pushed; then back on.
        assert peer.action(70, DISCONNECTOR, 1) == "success"
        assert peer.get(70, DISCONNECTOR, 2) == codec.data("boolean", False)
        assert peer.get(70, DISCONNECTOR, 3) == codec.data("enum", 0)
        assert peer.get(3, "1.0.1.7.0.255", 2)["value"] == 0
        assert peer.get(3, "1.0.31.7.0.255", 2)["value"] == 0
        assert peer.action(70, DISCONNECTOR, 2) == "success"
        assert peer.get(70, DISCONNECTOR, 2) == codec.data("boolean", True)
        assert peer.get(3, "1.0.1.7.0.255", 2)["value"] > 0
        codes = [
            x["body"]["value"][2]["value"]
            for x in peer.pushes
            if x["apdu"] == "data-notification" and len(x["body"]["value"]) == 3
        ]
        assert codes[:2] == [70, 71], (peer.pushes, peer.raw_pushes)

        # A replayed request is refused; so is a plain one in a ciphered association.
        req = peer.protect(codec.get_request(1, LDN, 2))
        peer.send_apdu(req)
        assert peer.open(peer.recv_apdu())["apdu"] == "get-response"
        peer.send_apdu(req)
        replay = codec.decode_apdu(peer.recv_apdu())
        assert replay["apdu"] == "exception-response"
        assert replay["service_error"] == "invocation-counter-error"
        peer.send_apdu(codec.get_request(1, LDN, 2))
        assert codec.decode_apdu(peer.recv_apdu())["apdu"] == "exception-response"
        # general-glo-ciphering is answered in kind.
        peer.general = True
        assert octets(peer.get(1, LDN, 2)) == m["serial"].encode()
        peer.general = False
        peer.release()

        # A wrong key fails HLS pass 3.
        wrong = codec.KeyTable()
        wrong.set_keys(title, bytes.fromhex(m["ek"]), bytes(16))
        peer.keys = wrong
        with pytest.raises(Exception, match=r"authentication|refused|deciph"):
            peer.associate(mechanism="high-gmac", ciphered=False)
    finally:
        final = stop_sim(p)
    assert (final["disconnects"], final["reconnects"]) == (1, 1)


def test_hdlc_link_layer_and_segmentation(fleet: Path, listener: Listener) -> None:
    m = consumer(fleet, skip=2)
    p = start_sim(fleet, listener.port, "--only", m["serial"], "--hdlc", "1")
    try:
        peer = Peer(listener.accept(), framing="hdlc", meter_address=0x11)
        params = peer.hdlc_connect(max_info=128)
        assert params["max_info_transmit"] == 128
        assert params["window_receive"] == 1
        assert peer.associate()["result"] == "accepted"
        assert octets(peer.get(1, LDN, 2)) == m["serial"].encode()
        # Half a day of profile in one APDU of ~2 KB: segmented I-frames, one RR each.
        half = codec.range_descriptor(START - dt.timedelta(hours=12, seconds=10), START)
        rows = peer.get(7, LP, 2, access=half)["value"]
        assert len(rows) == 49
        assert peer.release()["apdu"] == "rlre"
        assert peer.hdlc_disconnect() == "UA"
        assert peer.hdlc_disconnect() == "DM"
    finally:
        stop_sim(p)


def test_concentrator_serves_each_meter_on_its_port(fleet: Path, listener: Listener) -> None:
    a, b = consumer(fleet, skip=3), consumer(fleet, skip=4)
    assert a["node_id"] == b["node_id"]
    p = start_sim(
        fleet, listener.port, "--only", f"{a['serial']},{b['serial']}", "--concentrators", "1"
    )
    try:
        peer = Peer(listener.accept())
        for port, m in [(0x12, b), (0x11, a)]:
            peer.meter_address = port
            assert peer.associate()["result"] == "accepted"
            assert octets(peer.get(1, LDN, 2)) == m["serial"].encode()
            peer.release()
    finally:
        final = stop_sim(p)
    assert final["connections"] == 1
    assert final["meters"] == 2


def test_pushes_decode_with_the_codec_and_follow_the_record(
    fleet: Path, listener: Listener, tmp_path: Path
) -> None:
    """An hour of quarter-hour pushes at 900x: each decodes with the project's codec
    (the meter's keys, replay-checked) into the values the simulator recorded."""
    m = consumer(fleet, skip=5)
    title = bytes.fromhex(m["system_title"])
    rec = tmp_path / "record.jsonl"
    p = start_sim(
        fleet,
        listener.port,
        "--only",
        m["serial"],
        "--speed",
        "900",
        "--pushes",
        "4",
        "--spread",
        "0",
        "--record",
        str(rec),
    )
    conn = listener.accept()
    conn.settimeout(20)
    data = b""
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    out, _ = p.communicate(timeout=30)
    assert p.returncode == 0, out
    keys = keys_for(m)
    dec = codec.StreamDecoder("wrapper")
    pushes = []
    for f in dec.feed(data):
        assert not isinstance(f, codec.FrameError)
        assert f.apdu is not None
        assert f.apdu[0] == 0xDB
        st, sc, _ic, plain = keys.decipher(f.apdu)
        assert (st, sc) == (title, 0x30)
        pushes.append(codec.decode_apdu(plain)["body"]["value"])
    _, lines = sim.read_record(rec)
    assert len(pushes) == len(lines) == 4
    for body, line in zip(pushes, lines, strict=True):
        assert bytes.fromhex(body[0]["value"]).decode() == m["serial"]
        assert int(clock_of(body[1]).timestamp()) == line["ts"]
        assert [
            x["value"] if x["type"] != "boolean" else int(x["value"]) for x in body[2:]
        ] == line["v"]
    stamps = [x["ts"] for x in lines]
    assert stamps == [stamps[0] + 900 * i for i in range(4)]
    # Cumulative energy grows by what a household uses in a quarter hour.
    deltas = [b["v"][0] - a["v"][0] for a, b in itertools.pairwise(lines)]
    assert all(0 < d < 2000 for d in deltas), deltas
