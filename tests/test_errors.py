"""The one mapping from codec errors to Python exceptions, and keys never leaking."""

from __future__ import annotations

import pytest

from headend import codec
from headend.errors import (
    AuthenticationFailed,
    HeadendError,
    IncompleteData,
    LimitExceeded,
    LocalProtocolError,
    RemoteProtocolError,
    ReplayedInvocationCounter,
    UnknownSystemTitle,
    UnsupportedFeature,
)

EK, AK = (
    bytes.fromhex("000102030405060708090A0B0C0D0E0F"),
    bytes.fromhex("D0D1D2D3D4D5D6D7D8D9DADBDCDDDEDF"),
)
ST = b"MMM\x00\x00\xbc\x61\x4e"
PLAIN = codec.get_request(8, "0.0.1.0.0.255", 2)


def test_malformed_input_names_field_and_offset() -> None:
    with pytest.raises(RemoteProtocolError) as e:
        codec.decode_apdu(bytes.fromhex("C0 09".replace(" ", "")))
    assert e.value.kind == "malformed"
    assert e.value.field == "GET-Request"
    assert e.value.offset == 1
    assert "unknown choice 9" in str(e.value)
    assert e.value.dlms_error == "operation-not-possible"


def test_truncation_is_incomplete_with_needed() -> None:
    with pytest.raises(IncompleteData) as e:
        codec.decode_frame(codec.wrap(PLAIN)[:-4])
    assert e.value.needed == 4
    assert e.value.kind == "truncated"


def test_limit_exceeded() -> None:
    with pytest.raises(LimitExceeded) as e:
        codec.decode_data(bytes([0x09, 0x84, 0x7F, 0xFF, 0xFF, 0xFF]))
    assert e.value.limit == 16 * 1024 * 1024
    assert e.value.length == 0x7FFFFFFF
    assert e.value.dlms_error == "pdu-too-long"


def test_unsupported() -> None:
    with pytest.raises(UnsupportedFeature) as e:
        codec.decode_apdu(bytes([0xDD, 0x00]))
    assert e.value.dlms_error == "service-not-supported"


def test_authentication_failure_says_nothing_more() -> None:
    enc = codec.encrypt(PLAIN, ek=EK, ak=AK, system_title=ST, invocation_counter=1)
    with pytest.raises(AuthenticationFailed) as e:
        codec.decrypt(enc, ek=bytes(16), ak=AK)
    assert str(e.value) == "authentication failed"
    assert e.value.dlms_error == "deciphering-error"
    tampered = bytearray(enc)
    tampered[-20] ^= 1
    with pytest.raises(AuthenticationFailed):
        codec.decrypt(bytes(tampered), ek=EK, ak=AK)


def test_replay_and_unknown_meter() -> None:
    keys = codec.KeyTable()
    enc = codec.encrypt(PLAIN, ek=EK, ak=AK, system_title=ST, invocation_counter=10)
    with pytest.raises(UnknownSystemTitle) as u:
        keys.decipher(enc)
    assert u.value.system_title == ST
    keys.set_keys(ST, EK, AK)
    assert keys.decipher(enc)[3] == PLAIN
    with pytest.raises(ReplayedInvocationCounter) as r:
        keys.decipher(enc)
    assert (r.value.received, r.value.last, r.value.system_title) == (10, 10, ST)
    assert r.value.dlms_error == "invocation-counter-error"


def test_counters_never_go_backwards() -> None:
    keys = codec.KeyTable()
    keys.set_keys(ST, EK, AK)
    keys.raise_received_counter(ST, 100)
    keys.raise_received_counter(ST, 50)
    assert keys.counters(ST) == (100, 1)
    keys.raise_sent_counter(ST, 9)
    keys.raise_sent_counter(ST, 3)
    assert keys.counters(ST) == (100, 9)
    # Re-keying keeps the counters.
    keys.set_keys(ST, AK, EK)
    assert keys.counters(ST) == (100, 9)
    old = codec.encrypt(PLAIN, ek=AK, ak=EK, system_title=ST, invocation_counter=100)
    with pytest.raises(ReplayedInvocationCounter):
        keys.decipher(old)
    # Sending uses and advances the counter.
    out = keys.encipher(ST, b"HEADEND1", PLAIN)
    assert codec.decode_apdu(out)["invocation_counter"] == 9
    assert keys.counters(ST) == (100, 10)


def test_local_errors_are_value_errors() -> None:
    with pytest.raises(LocalProtocolError) as e:
        codec.encode_apdu({"apdu": "no-such-apdu"})
    assert isinstance(e.value, ValueError)
    assert isinstance(e.value, HeadendError)
    with pytest.raises(LocalProtocolError, match="16 needed"):
        codec.KeyTable().set_keys(ST, EK[:15], AK)
    with pytest.raises(LocalProtocolError, match="8 needed"):
        codec.KeyTable().set_keys(ST[:7], EK, AK)
    with pytest.raises(LocalProtocolError, match="out of range"):
        codec.encode_data({"type": "unsigned", "value": 256})
    with pytest.raises(LocalProtocolError):
        codec.encode_data(
            {"type": "compact-array", "description": "null-data", "value": [{"type": "null-data"}]}
        )


def test_keys_never_appear_in_reprs_or_errors() -> None:
    keys = codec.KeyTable()
    keys.set_keys(ST, EK, AK)
    texts = [repr(keys)]
    for bad in (
        codec.encrypt(PLAIN, ek=AK, ak=EK, system_title=ST, invocation_counter=5),
        b"\xdb\x08" + ST + b"\x00",
    ):
        with pytest.raises(RemoteProtocolError) as e:
            keys.decipher(bad)
        texts += [str(e.value), repr(e.value), repr(vars(e.value))]
    joined = " ".join(texts).upper()
    for secret in (EK.hex().upper(), AK.hex().upper()):
        assert secret not in joined
