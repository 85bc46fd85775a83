"""The batch push path: frames in, columns out."""

from __future__ import annotations

import array
import datetime as dt

import pytest

from headend import codec

TZ = dt.timezone(dt.timedelta(hours=5))
EK, AK = bytes(range(16)), bytes(range(16, 32))


def title(i: int) -> bytes:
    return b"UZE" + i.to_bytes(5, "big")


def push(serial: str, energy: int, voltage: int, when: dt.datetime, invoke: int = 1) -> bytes:
    return codec.encode_apdu(
        {
            "apdu": "data-notification",
            "long_invoke_id": {"invoke_id": invoke},
            "date_time": codec.date_time(when)["value"],
            "body": codec.data(
                "structure",
                [
                    codec.data("octet-string", serial.encode().hex()),
                    codec.data("double-long-unsigned", energy),
                    codec.data("long-unsigned", voltage),
                ],
            ),
        }
    )


def column(batch: codec.PushBatch, name: str) -> list[float] | list[int]:
    code, raw = batch.column(name)  # type: ignore[arg-type]
    return array.array(code, raw).tolist()


def test_encrypted_pushes_from_many_meters_become_columns() -> None:
    keys = codec.KeyTable()
    meters = 20
    for m in range(meters):
        keys.set_keys(title(m), EK, AK)
    when = dt.datetime(2026, 11, 23, 12, 0, tzinfo=TZ)
    frames = []
    for i in range(100):
        m = i % meters
        apdu = push(f"M{m:04}", 1000 * i, 23000 + i, when, invoke=i)
        enc = codec.encrypt(
            apdu, ek=EK, ak=AK, system_title=title(m), invocation_counter=i // meters + 1
        )
        frames.append(codec.wrap(enc))
    data = b"".join(frames)
    batch = codec.PushDecoder().decode(keys, data)
    assert batch.errors() == []
    assert len(batch) == 100
    assert batch.values == 300
    assert batch.consumed == len(data)
    assert column(batch, "push_frame") == list(range(100))
    assert column(batch, "push_system_title") == [
        int.from_bytes(title(i % meters), "big") for i in range(100)
    ]
    assert column(batch, "push_invocation_counter") == [i // meters + 1 for i in range(100)]
    assert column(batch, "push_time") == [int(when.timestamp())] * 100
    values = column(batch, "value")
    assert values[1::3] == [1000.0 * i for i in range(100)]
    assert values[2::3] == [23000.0 + i for i in range(100)]
    assert column(batch, "value_index")[:6] == [0, 1, 2, 0, 1, 2]
    assert bytes(column(batch, "value_tag")[:3]) == bytes([9, 6, 18])  # type: ignore[arg-type]
    blobs = batch.column("blobs")[1]
    start, length = column(batch, "value_blob_start")[0], column(batch, "value_blob_len")[0]
    assert blobs[int(start) : int(start + length)] == b"M0000"
    # Counters advanced to the last accepted value per meter.
    assert keys.counters(title(0)) == (5, 1)


def test_replay_forgery_garbage_and_other_apdus_per_frame() -> None:
    keys = codec.KeyTable()
    keys.set_keys(title(1), EK, AK)
    when = dt.datetime(2026, 11, 23, 12, 0, tzinfo=TZ)
    apdu = push("X", 1, 2, when)
    good = codec.encrypt(apdu, ek=EK, ak=AK, system_title=title(1), invocation_counter=7)
    forged = codec.encrypt(apdu, ek=bytes(16), ak=AK, system_title=title(1), invocation_counter=8)
    stranger = codec.encrypt(apdu, ek=EK, ak=AK, system_title=title(2), invocation_counter=1)
    response = codec.encode_apdu(
        {
            "apdu": "get-response",
            "kind": "normal",
            "invoke_id": 0xC1,
            "result": {"data-access-result": "object-undefined"},
        }
    )
    frames = [good, good, forged, stranger, apdu[:9], response, push("Y", 3, 4, when)]
    batch = codec.PushDecoder().decode(keys, b"".join(codec.wrap(f) for f in frames))
    assert [(f, kind) for f, kind, _ in batch.errors()] == [
        (1, "replayed-invocation-counter"),
        (2, "authentication-failed"),
        (3, "unknown-system-title"),
        (4, "malformed"),
    ]
    assert len(batch) == 2  # the good one and the plain one
    assert batch.others() == [(5, None, response)]
    # A forged frame never advances the counter.
    assert keys.counters(title(1))[0] == 7


def test_plain_pushes_refused_only_by_policy_on_ciphered_frames() -> None:
    keys = codec.KeyTable()
    keys.set_keys(title(1), EK, AK)
    apdu = push("X", 1, 2, dt.datetime(2026, 1, 1, tzinfo=TZ))
    enc_only = codec.encrypt(
        apdu, ek=EK, ak=AK, system_title=title(1), invocation_counter=1, security_control=0x20
    )
    strict = codec.PushDecoder().decode(keys, codec.wrap(enc_only))
    assert [k for _, k, _ in strict.errors()] == ["malformed"]
    assert "requires authentication" in strict.errors()[0][2]
    lax = codec.PushDecoder(require_authentication=False).decode(keys, codec.wrap(enc_only))
    assert lax.errors() == []
    assert len(lax) == 1


def test_partial_trailing_frame_is_not_consumed() -> None:
    f = codec.wrap(push("X", 1, 2, dt.datetime(2026, 1, 1, tzinfo=TZ)))
    batch = codec.PushDecoder().decode(codec.KeyTable(), f + f[:11])
    assert len(batch) == 1
    assert batch.consumed == len(f)


def test_hdlc_framed_pushes() -> None:
    when = dt.datetime(2026, 11, 23, 12, 15, tzinfo=TZ)
    # Each push split over several segments (max_info 24), three meters in a row.
    frames = b"".join(
        segment
        for i in range(3)
        for segment in codec.hdlc_segments(
            (0x10, None), (1, 17 + i), push(f"H{i}", i, 230, when), command=False, max_info=24
        )
    )
    batch = codec.PushDecoder().decode(codec.KeyTable(), frames, "hdlc")
    assert batch.errors() == []
    assert len(batch) == 3
    assert column(batch, "push_source") == [(1 << 16) | (17 + i) for i in range(3)]


@pytest.mark.parametrize("size", [10, 2000])
def test_large_batches_release_the_gil_and_agree(size: int) -> None:
    """Batches above 16 KiB run without the GIL; results must not depend on that."""
    keys = codec.KeyTable()
    keys.set_keys(title(1), EK, AK)
    when = dt.datetime(2026, 1, 1, tzinfo=TZ)
    frames = b"".join(
        codec.wrap(
            codec.encrypt(
                push("Z", i, 1, when), ek=EK, ak=AK, system_title=title(1), invocation_counter=i + 1
            )
        )
        for i in range(size)
    )
    batch = codec.PushDecoder().decode(keys, frames)
    assert len(batch) == size
    assert column(batch, "value")[1::3] == [float(i) for i in range(size)]


def test_decode_apdus_with_service_specific_ciphering() -> None:
    """glo- APDUs carry no system title; the caller knows the sender."""
    keys = codec.KeyTable()
    keys.set_keys(title(3), EK, AK)
    event = codec.encode_apdu(
        {
            "apdu": "event-notification",
            "time": None,
            "attribute": {"class_id": 1, "instance_id": "0.0.96.11.0.255", "attribute_id": 2},
            "value": codec.data("unsigned", 44),
        }
    )
    glo = codec.encrypt(
        event, ek=EK, ak=AK, system_title=title(3), invocation_counter=1, service_specific=True
    )
    batch = codec.PushDecoder().decode_apdus(keys, [glo], sender=title(3))
    assert batch.errors() == []
    assert batch.others() == [(0, title(3), event)]


def test_load_profile_get_response_is_flattened() -> None:
    """A 96-interval load profile read (GET-Response-Normal with an array of rows)."""
    start = dt.datetime(2026, 11, 22, 0, 0, tzinfo=TZ)
    rows = [
        codec.data(
            "structure",
            [
                codec.data(
                    "octet-string",
                    codec.encode_data(codec.date_time(start + dt.timedelta(minutes=15 * i)))[
                        1:
                    ].hex(),
                ),
                codec.data("unsigned", 0),
                codec.data("double-long-unsigned", 10_000 + 25 * i),
            ],
        )
        for i in range(96)
    ]
    resp = codec.encode_apdu(
        {
            "apdu": "get-response",
            "kind": "normal",
            "invoke_id": codec.invoke_id(2),
            "result": {"data": codec.data("array", rows)},
        }
    )
    batch = codec.PushDecoder().decode(codec.KeyTable(), codec.wrap(resp))
    assert batch.errors() == []
    assert column(batch, "push_kind") == [1]
    assert column(batch, "push_invoke_id") == [0xC2]
    values = column(batch, "value")
    assert len(values) == 96 * 3
    assert values[2::3] == [10_000.0 + 25 * i for i in range(96)]
    # The octet-string timestamps come through as raw bytes for the profile layer.
    assert bytes(column(batch, "value_tag")[0:1]) == b"\x09"  # type: ignore[arg-type]
