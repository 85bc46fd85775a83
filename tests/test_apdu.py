"""APDUs and Data through the JSON form: builders give the standard's bytes, every type
round-trips both ways."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from headend import codec

TZ = dt.timezone(dt.timedelta(hours=5))
ATTR = {"class_id": 3, "instance_id": "1.0.1.8.0.255", "attribute_id": 2}
METHOD = {"class_id": 70, "instance_id": "0.0.96.3.10.255", "method_id": 1}
INVOKE = {"invoke_id": 5, "confirmed": True, "high_priority": False}
BLOCK = {"last_block": False, "block_number": 3, "raw_data": "0102"}

DATA_SAMPLES: list[dict[str, Any]] = [
    codec.data("null-data"),
    codec.data("boolean", True),
    codec.data("bit-string", "1011001"),
    codec.data("double-long", -123456),
    codec.data("double-long-unsigned", 4294967295),
    codec.data("octet-string", "0000010000FF"),
    codec.data("visible-string", "LGZ E450"),
    codec.data("utf8-string", "Тошкент"),
    codec.data("bcd", 0x42),
    codec.data("integer", -128),
    codec.data("long", -300),
    codec.data("unsigned", 255),
    codec.data("long-unsigned", 65535),
    codec.data("long64", -(2**63)),
    codec.data("long64-unsigned", 2**64 - 1),
    codec.data("enum", 30),
    codec.data("float32", 1.5),
    codec.data("float64", -0.25),
    codec.date_time(dt.datetime(2026, 11, 23, 12, 0, tzinfo=TZ)),
    codec.data("date", {"iso": "2026-11-23"}),
    codec.data("time", {"iso": "12:30:05"}),
    codec.data("delta-integer", -1),
    codec.data("delta-long", 2),
    codec.data("delta-double-long", -3),
    codec.data("delta-unsigned", 4),
    codec.data("delta-long-unsigned", 5),
    codec.data("delta-double-long-unsigned", 6),
    codec.data("dont-care"),
    codec.data(
        "compact-array",
        [
            codec.data(
                "structure", [codec.data("double-long-unsigned", 1), codec.data("long", -1)]
            ),
            codec.data("structure", [codec.data("double-long-unsigned", 2), codec.data("long", 2)]),
        ],
        description={"structure": ["double-long-unsigned", "long"]},
    ),
    codec.data(
        "array", [codec.data("structure", [codec.data("unsigned", 1), codec.data("array", [])])]
    ),
]


@pytest.mark.parametrize("value", DATA_SAMPLES, ids=lambda v: v["type"])
def test_every_data_type_round_trips(value: dict[str, Any]) -> None:
    raw = codec.encode_data(value)
    back = codec.decode_data(raw)
    assert back["type"] == value["type"]
    assert codec.encode_data(back) == raw
    assert codec.decode_data(codec.encode_data(back)) == back


APDUS: list[dict[str, Any]] = [
    {
        "apdu": "get-request",
        "kind": "normal",
        "invoke_id": INVOKE,
        "attribute": ATTR,
        "access_selection": None,
    },
    {"apdu": "get-request", "kind": "next", "invoke_id": INVOKE, "block_number": 2},
    {
        "apdu": "get-request",
        "kind": "with-list",
        "invoke_id": INVOKE,
        "attributes": [{"attribute": ATTR}],
    },
    {
        "apdu": "get-response",
        "kind": "normal",
        "invoke_id": INVOKE,
        "result": {"data": codec.data("unsigned", 1)},
    },
    {
        "apdu": "get-response",
        "kind": "normal",
        "invoke_id": INVOKE,
        "result": {"data-access-result": "read-write-denied"},
    },
    {
        "apdu": "get-response",
        "kind": "with-datablock",
        "invoke_id": INVOKE,
        "block": {"last_block": True, "block_number": 1, "result": {"raw-data": "0102"}},
    },
    {
        "apdu": "get-response",
        "kind": "with-list",
        "invoke_id": INVOKE,
        "results": [{"data": codec.data("null-data")}],
    },
    {
        "apdu": "set-request",
        "kind": "normal",
        "invoke_id": INVOKE,
        "attribute": ATTR,
        "value": codec.data("long", 1),
    },
    {
        "apdu": "set-request",
        "kind": "with-first-datablock",
        "invoke_id": INVOKE,
        "attribute": ATTR,
        "block": BLOCK,
    },
    {"apdu": "set-request", "kind": "with-datablock", "invoke_id": INVOKE, "block": BLOCK},
    {
        "apdu": "set-request",
        "kind": "with-list",
        "invoke_id": INVOKE,
        "attributes": [{"attribute": ATTR}],
        "values": [codec.data("long", 1)],
    },
    {
        "apdu": "set-request",
        "kind": "with-list-and-first-datablock",
        "invoke_id": INVOKE,
        "attributes": [{"attribute": ATTR}],
        "block": BLOCK,
    },
    {"apdu": "set-response", "kind": "normal", "invoke_id": INVOKE, "result": "success"},
    {"apdu": "set-response", "kind": "datablock", "invoke_id": INVOKE, "block_number": 9},
    {
        "apdu": "set-response",
        "kind": "last-datablock",
        "invoke_id": INVOKE,
        "result": "success",
        "block_number": 9,
    },
    {
        "apdu": "set-response",
        "kind": "last-datablock-with-list",
        "invoke_id": INVOKE,
        "results": ["success"],
        "block_number": 9,
    },
    {
        "apdu": "set-response",
        "kind": "with-list",
        "invoke_id": INVOKE,
        "results": ["success", "type-unmatched"],
    },
    {
        "apdu": "action-request",
        "kind": "normal",
        "invoke_id": INVOKE,
        "method": METHOD,
        "parameters": codec.data("integer", 0),
    },
    {"apdu": "action-request", "kind": "next-pblock", "invoke_id": INVOKE, "block_number": 1},
    {
        "apdu": "action-request",
        "kind": "with-list",
        "invoke_id": INVOKE,
        "methods": [METHOD],
        "parameters": [codec.data("integer", 0)],
    },
    {
        "apdu": "action-request",
        "kind": "with-first-pblock",
        "invoke_id": INVOKE,
        "method": METHOD,
        "block": BLOCK,
    },
    {
        "apdu": "action-request",
        "kind": "with-list-and-first-pblock",
        "invoke_id": INVOKE,
        "methods": [METHOD],
        "block": BLOCK,
    },
    {"apdu": "action-request", "kind": "with-pblock", "invoke_id": INVOKE, "block": BLOCK},
    {
        "apdu": "action-response",
        "kind": "normal",
        "invoke_id": INVOKE,
        "response": {"result": "success", "return_parameters": None},
    },
    {"apdu": "action-response", "kind": "with-pblock", "invoke_id": INVOKE, "block": BLOCK},
    {
        "apdu": "action-response",
        "kind": "with-list",
        "invoke_id": INVOKE,
        "responses": [{"result": "temporary-failure"}],
    },
    {"apdu": "action-response", "kind": "next-pblock", "invoke_id": INVOKE, "block_number": 4},
    {
        "apdu": "data-notification",
        "long_invoke_id": {"invoke_id": 1},
        "date_time": None,
        "body": codec.data("structure", [codec.data("double-long-unsigned", 7)]),
    },
    {
        "apdu": "event-notification",
        "time": None,
        "attribute": ATTR,
        "value": codec.data("unsigned", 3),
    },
    {
        "apdu": "general-block-transfer",
        "last_block": True,
        "streaming": False,
        "window": 1,
        "block_number": 1,
        "block_number_ack": 0,
        "block_data": "C401C1000600000001",
    },
    {
        "apdu": "exception-response",
        "state_error": "service-not-allowed",
        "service_error": "invocation-counter-error",
        "invocation_counter": 77,
    },
    {
        "apdu": "exception-response",
        "state_error": "service-unknown",
        "service_error": "deciphering-error",
        "invocation_counter": None,
    },
    {
        "apdu": "confirmed-service-error",
        "service": "initiate-error",
        "error": "initiate",
        "detail": "dlms-version-too-low",
    },
    {
        "apdu": "initiate-response",
        "negotiated_quality_of_service": None,
        "negotiated_dlms_version": 6,
        "negotiated_conformance": {"hex": "00501F"},
        "server_max_receive_pdu_size": 1024,
        "vaa_name": 7,
    },
    {"apdu": "rlrq", "reason": "normal", "user_information": None},
    {"apdu": "rlre", "reason": "normal", "user_information": None},
    {
        "apdu": "aare",
        "protocol_version": None,
        "application_context": "logical-name",
        "result": "rejected-permanent",
        "diagnostic": {"acse-service-user": "authentication-failure"},
    },
]


@pytest.mark.parametrize("apdu", APDUS, ids=lambda a: f"{a['apdu']}-{a.get('kind', '')}")
def test_every_apdu_round_trips(apdu: dict[str, Any]) -> None:
    raw = codec.encode_apdu(apdu)
    back = codec.decode_apdu(raw)
    assert back["apdu"] == apdu["apdu"]
    if "kind" in apdu:
        assert back["kind"] == apdu["kind"]
    assert codec.encode_apdu(back) == raw


def test_builders_give_the_standards_bytes() -> None:
    # GET-Request-Normal for the clock, invoke-id 1, confirmed, high priority.
    assert codec.get_request(8, "0.0.1.0.0.255", 2) == bytes.fromhex("C001C100080000010000FF0200")
    assert codec.get_request_next(3) == bytes.fromhex("C002C100000003")
    # ACTION remote_disconnect(integer 0) on the disconnect control.
    assert codec.action_request(
        70, "0.0.96.3.10.255", 1, codec.data("integer", 0)
    ) == bytes.fromhex("C301C10046000060030AFF01010F00")
    # SET of the clock.
    when = dt.datetime(2026, 11, 23, 12, 0, tzinfo=TZ)
    set_clock = codec.set_request(8, "0.0.1.0.0.255", 2, codec.date_time(when))
    assert (
        set_clock.hex().upper() == "C101C100080000010000FF0200" + "19" + "07EA0B17010C000000FED400"
    )
    assert codec.rlrq() == bytes.fromhex("6203800100")


def test_range_descriptor_reads_a_load_profile() -> None:
    start = dt.datetime(2026, 11, 22, 0, 0, tzinfo=TZ)
    end = dt.datetime(2026, 11, 23, 0, 0, tzinfo=TZ)
    req = codec.get_request(7, "1.0.99.1.0.255", 2, access=codec.range_descriptor(start, end))
    d = codec.decode_apdu(req)
    sel = d["access_selection"]
    assert sel["selector"] == 1
    params = sel["parameters"]["value"]
    assert params[0]["value"][1]["obis"] == "0.0.1.0.0.255"
    assert params[1]["value"]["iso"] == "2026-11-22T00:00:00+05:00"
    assert params[2]["value"]["unix"] == int(end.timestamp())


def test_hls_aarq_carries_the_challenge() -> None:
    aarq = codec.aarq(
        user_information=codec.initiate_request(),
        mechanism="high-gmac",
        authentication_value=b"K56iVagY",
        ciphered=True,
        calling_title=b"HED00001",
    )
    d = codec.decode_apdu(aarq)
    assert d["mechanism_name"] == "high-gmac"
    assert d["sender_acse_requirements"] is True
    assert bytes.fromhex(d["calling_authentication_value"]) == b"K56iVagY"
    assert d["user_information"]["apdu"] == "initiate-request"


def test_obis_units_and_scaling() -> None:
    assert codec.parse_obis("1-0:1.8.0*255") == bytes([1, 0, 1, 8, 0, 255])
    assert codec.format_obis(bytes([1, 0, 1, 8, 0, 255])) == "1.0.1.8.0.255"
    assert codec.obis_to_int(codec.parse_obis("1.0.1.8.0.255")) == 0x0100010800FF
    assert codec.unit_info(30) == ("Wh", "active energy")
    assert codec.unit_info(13) == ("m³", "volume")
    assert codec.unit_info(200) is None
    assert codec.scale(1234, -3) == 1.234
    assert codec.scale(23012, -2) == 230.12
    assert codec.scale(5, 3) == 5000.0
