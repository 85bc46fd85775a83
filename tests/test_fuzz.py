"""Random and mutated bytes give only protocol errors, never another exception."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headend import codec
from headend.errors import RemoteProtocolError

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
EK, AK = bytes(range(16)), bytes(range(16, 32))
ST = b"FUZZ0001"

VALID = [
    codec.wrap(codec.get_request(8, "0.0.1.0.0.255", 2)),
    codec.wrap(
        codec.encrypt(
            codec.get_request(8, "0.0.1.0.0.255", 2),
            ek=EK,
            ak=AK,
            system_title=ST,
            invocation_counter=3,
        )
    ),
    *codec.hdlc_segments(
        (1, 17), (0x10, None), codec.aarq(user_information=codec.initiate_request()), max_info=40
    ),
]


def only_protocol_errors(fn: Callable[..., object], *args: object) -> None:
    """Calls fn; a RemoteProtocolError is the expected answer to bad input, anything
    else propagates and fails the test."""
    with contextlib.suppress(RemoteProtocolError):
        fn(*args)


@SETTINGS
@given(st.binary(max_size=600))
def test_random_bytes(data: bytes) -> None:
    only_protocol_errors(codec.decode_apdu, data)
    only_protocol_errors(codec.decode_data, data)
    only_protocol_errors(codec.decode_frame, data)
    only_protocol_errors(codec.decode_hdlc_parameters, data)
    stream = codec.StreamDecoder()
    stream.feed(data)
    stream.feed(b"")
    keys = codec.KeyTable()
    keys.set_keys(ST, EK, AK)
    codec.PushDecoder().decode(keys, data, "auto")
    only_protocol_errors(keys.decipher, data, ST)


@SETTINGS
@given(
    st.sampled_from(VALID),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), max_size=4),
    st.integers(0, 10_000),
)
def test_mutated_frames(frame: bytes, flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(frame)
    for i, x in flips:
        data[i % len(data)] ^= x
    mutated = bytes(data[: 1 + cut % len(data)])
    only_protocol_errors(codec.decode_frame, mutated)
    stream = codec.StreamDecoder()
    for ev in stream.feed(mutated) + stream.feed(b""):
        if isinstance(ev, codec.Frame) and ev.apdu is not None:
            only_protocol_errors(codec.decode_apdu, ev.apdu)


# The server's own path: a worker's Session over a Directory with a keyed meter and the
# project's models, fed random and mutated bytes in random chunks. Whatever arrives, it
# answers with events (rejects among them), never an exception.
MASTER = codec.MasterKey(bytes(range(32)))
EVENT_KINDS = (codec.Lookup, codec.Identified, codec.Reject, codec.ApduIn, codec.LinkFrame)


def _directory() -> codec.Directory:
    from headend import profiles
    from headend.config import REPO_ROOT
    from headend.keys import wrap

    d = codec.Directory(require_authentication=False, require_encryption=False)
    for p in profiles.load_all(REPO_ROOT / "protocols" / "profiles"):
        d.add_profile(p)
    d.add_meter(
        "E1", "e1ph", ST, wrap(MASTER, EK, "ek", "E1"), wrap(MASTER, AK, "ak", "E1"), MASTER
    )
    d.add_meter("P1", "e1ph")
    return d


DIRECTORY = _directory()


def _feed(data: bytes, step: int) -> None:
    sink = codec.RowSink()
    s = codec.Session("10.0.0.1:50000", "auto", 4096, 16)
    for i in range(0, len(data), step):
        for ev in s.feed(data[i : i + step], 1_700_000_000, DIRECTORY, sink):
            assert isinstance(ev, EVENT_KINDS), ev
            if isinstance(ev, codec.Lookup):
                DIRECTORY.mark_unknown(
                    until=1_700_000_060,
                    **(
                        {"system_title": ev.system_title}
                        if ev.system_title is not None
                        else {"serial": ev.serial}
                    ),
                )
        if s.pending:
            for ev in s.retry(1_700_000_000, DIRECTORY, sink):
                assert isinstance(ev, EVENT_KINDS), ev
    s.feed(b"", 1_700_000_000, DIRECTORY, sink)
    sink.drain()


@SETTINGS
@given(st.binary(max_size=800), st.integers(1, 64))
def test_session_feed_random_bytes(data: bytes, step: int) -> None:
    _feed(data, step)


def _pushes() -> list[bytes]:
    """Frames a meter of the directory would push: ciphered (E1) and plain (P1)."""
    from tests.server_harness import Meter

    keyed = Meter("E1", "e1ph", title=ST, ek=EK, ak=AK)
    plain = Meter("P1", "e1ph")
    return [
        codec.wrap(keyed.push(0), 1, 1) + codec.wrap(keyed.push(1), 1, 1),
        codec.wrap(plain.push(0), 1, 1),
    ]


PUSHES = _pushes()


def test_the_session_seeds_are_accepted() -> None:
    # The frames mutated below are good ones: unmutated, they are stored.
    sink = codec.RowSink()
    s = codec.Session("10.0.0.1:50000", "auto", 4096, 16)
    events = [e for p in PUSHES for e in s.feed(p, 1_700_000_000, DIRECTORY, sink)]
    assert [type(e) for e in events] == [codec.Identified, codec.Identified], events
    assert sink.drain()[1] > 0


@SETTINGS
@given(
    st.sampled_from(VALID + PUSHES),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), max_size=4),
    st.integers(0, 10_000),
    st.integers(1, 64),
)
def test_session_feed_mutated_frames(
    frame: bytes, flips: list[tuple[int, int]], cut: int, step: int
) -> None:
    data = bytearray(frame * 2)
    for i, x in flips:
        data[i % len(data)] ^= x
    _feed(bytes(data[: 1 + cut % len(data)]), step)
