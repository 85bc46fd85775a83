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
