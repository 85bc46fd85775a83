"""The per-connection stream decoder through the Python boundary."""

from __future__ import annotations

import random

from conftest import feeds

from headend import codec

SERVER = (1, 17)
CLIENT = (0x10, None)


def collect(
    stream: codec.StreamDecoder, chunks: list[bytes]
) -> list[codec.Frame | codec.FrameError]:
    return [ev for c in chunks for ev in stream.feed(c)]


def apdus(events: list[codec.Frame | codec.FrameError]) -> list[bytes]:
    return [ev.apdu for ev in events if isinstance(ev, codec.Frame) and ev.apdu is not None]


def test_wrapper_frames_whole_bytewise_and_split() -> None:
    payloads = [
        codec.get_request(8, "0.0.1.0.0.255", 2),
        b"\x0f" * 300,
        b"\xc4\x01\xc1\x00\x12\x00\x05",
    ]
    data = b"".join(codec.wrap(p, 0x10, 0x01) for p in payloads)
    for chunks in feeds(data):
        s = codec.StreamDecoder("wrapper")
        assert apdus(collect(s, chunks)) == payloads
        assert s.pending == 0
    rnd = random.Random(7)
    for _ in range(50):
        cuts = sorted(rnd.sample(range(1, len(data)), 5))
        chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        assert apdus(collect(codec.StreamDecoder(), chunks)) == payloads


def test_garbage_between_frames_is_one_error_and_skipped() -> None:
    good = codec.wrap(b"\xc0\x01\xc1\x00\x08\x00\x00\x01\x00\x00\xff\x02\x00")
    s = codec.StreamDecoder()
    events = s.feed(good + b"GET / HTTP/1.1\r\n\r\n" + good)
    errors = [e for e in events if isinstance(e, codec.FrameError)]
    assert len(apdus(events)) == 2
    assert len(errors) == 1
    assert errors[0].kind == "malformed"
    assert errors[0].offset == len(good)
    assert s.skipped == len(b"GET / HTTP/1.1\r\n\r\n")


def test_garbage_before_first_frame_then_auto_detects() -> None:
    s = codec.StreamDecoder()
    events = s.feed(b"\x16\x03\x01garbage" + codec.wrap(b"\xc0\x01"))
    assert isinstance(events[0], codec.FrameError)
    assert apdus(events) == [b"\xc0\x01"]
    assert s.framing == "wrapper"


def test_oversize_frame_is_refused() -> None:
    s = codec.StreamDecoder(max_apdu=100)
    events = s.feed(codec.wrap(b"\x0f" * 101) + codec.wrap(b"\x0f" * 100))
    kinds = [e.kind for e in events if isinstance(e, codec.FrameError)]
    assert kinds[0] == "oversize"
    assert apdus(events)[-1] == b"\x0f" * 100


def test_close_inside_a_frame_is_reported_as_truncated() -> None:
    f = codec.wrap(b"\xc0\x01\xc1\x00\x08")
    s = codec.StreamDecoder()
    assert s.feed(f[:10]) == []
    events = s.feed(b"")
    assert len(events) == 1
    assert isinstance(events[0], codec.FrameError)
    assert events[0].kind == "truncated"
    assert s.feed(b"") == []


def test_hdlc_segments_reassembled_and_each_reported() -> None:
    apdu = bytes(range(256)) * 2
    frames = codec.hdlc_segments(CLIENT, SERVER, apdu, command=False, max_info=128)
    assert len(frames) == 5
    for chunks in feeds(b"".join(frames)):
        s = codec.StreamDecoder()
        events = collect(s, chunks)
        assert all(isinstance(e, codec.Frame) for e in events)
        frs = [e for e in events if isinstance(e, codec.Frame)]
        assert [f.segmented for f in frs] == [True, True, True, True, False]
        assert [f.send_seq for f in frs] == [0, 1, 2, 3, 4]
        assert [f.apdu for f in frs[:-1]] == [None] * 4
        assert frs[-1].apdu == apdu
        assert frs[-1].llc == "response"
        assert (frs[-1].source, frs[-1].source_lower) == SERVER
        assert frs[-1].destination == 0x10


def test_concentrator_meters_do_not_mix() -> None:
    """Two meters behind one connection, their segments interleaved."""
    a = codec.hdlc_segments(CLIENT, (1, 17), b"\x0f" + b"A" * 300, command=False)
    b = codec.hdlc_segments(CLIENT, (1, 18), b"\x0f" + b"B" * 300, command=False)
    interleaved = [f for pair in zip(a, b, strict=True) for f in pair]
    events = codec.StreamDecoder().feed(b"".join(interleaved))
    done = {
        (e.source, e.source_lower): e.apdu for e in events if isinstance(e, codec.Frame) and e.apdu
    }
    assert done == {(1, 17): b"\x0f" + b"A" * 300, (1, 18): b"\x0f" + b"B" * 300}


def test_hdlc_link_frames_and_parameters() -> None:
    params = codec.hdlc_parameters(
        max_info_transmit=512, max_info_receive=512, window_transmit=1, window_receive=1
    )
    data = codec.hdlc_frame((1, None), CLIENT, "SNRM") + codec.hdlc_frame(
        CLIENT, (1, None), "UA", params
    )
    events = codec.StreamDecoder().feed(data)
    snrm, ua = events
    assert isinstance(snrm, codec.Frame)
    assert isinstance(ua, codec.Frame)
    assert (snrm.control, snrm.poll_final, snrm.apdu) == ("SNRM", True, None)
    assert ua.control == "UA"
    assert codec.decode_hdlc_parameters(ua.info) == {
        "max_info_transmit": 512,
        "max_info_receive": 512,
        "window_transmit": 1,
        "window_receive": 1,
    }
    rr = codec.StreamDecoder().feed(codec.hdlc_frame(SERVER, CLIENT, "RR", recv_seq=3))
    assert isinstance(rr[0], codec.Frame)
    assert (rr[0].control, rr[0].recv_seq) == ("RR", 3)


def test_corrupted_hdlc_frame_is_dropped_and_stream_recovers() -> None:
    good = codec.hdlc_segments(
        SERVER, CLIENT, b"\xc0\x01\xc1\x00\x08\x00\x00\x01\x00\x00\xff\x02\x00"
    )[0]
    bad = bytearray(good)
    bad[10] ^= 0x55
    events = codec.StreamDecoder().feed(good + bytes(bad) + good)
    assert len(apdus(events)) == 2
    errors = [e for e in events if isinstance(e, codec.FrameError)]
    assert len(errors) == 1
    assert "FCS" in errors[0].message or "HCS" in errors[0].message
