"""The DLMS/COSEM codec: the one place that imports the compiled ``headend._core``.

Everything else imports from here. Beside the re-exports, this module builds the
requests a head-end sends (AARQ, GET, SET, ACTION, RLRQ) from keyword arguments, on
top of the JSON form that ``encode_apdu`` takes; see ``rust_core/src/apdu`` for the
field names and the standard's clauses.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from typing import Any

from headend._core import (
    ApduIn,
    ConsumptionJob,
    Directory,
    Frame,
    FrameError,
    Identified,
    KeyTable,
    LinkFrame,
    Lookup,
    MasterKey,
    NodeSums,
    PushBatch,
    PushDecoder,
    ReadingSlice,
    Reject,
    RowSink,
    Session,
    StreamDecoder,
    __version__,
    decode_apdu,
    decode_data,
    decode_frame,
    decode_hdlc_parameters,
    decrypt,
    encode_apdu,
    encode_data,
    encrypt,
    format_obis,
    hdlc_frame,
    hdlc_parameters,
    hdlc_segments,
    hls_gmac,
    obis_to_int,
    parse_obis,
    scale,
    unit_info,
    wrap,
)

__all__ = [
    "CLOCK",
    "DEFAULT_CONFORMANCE",
    "ApduIn",
    "ConsumptionJob",
    "Directory",
    "Frame",
    "FrameError",
    "Identified",
    "KeyTable",
    "LinkFrame",
    "Lookup",
    "MasterKey",
    "NodeSums",
    "PushBatch",
    "PushDecoder",
    "ReadingSlice",
    "Reject",
    "RowSink",
    "Session",
    "StreamDecoder",
    "__version__",
    "aarq",
    "action_request",
    "data",
    "date_time",
    "decode_apdu",
    "decode_data",
    "decode_frame",
    "decode_hdlc_parameters",
    "decrypt",
    "encode_apdu",
    "encode_data",
    "encrypt",
    "format_obis",
    "get_request",
    "get_request_next",
    "get_request_with_list",
    "hdlc_frame",
    "hdlc_parameters",
    "hdlc_segments",
    "hls_gmac",
    "initiate_request",
    "invoke_id",
    "obis_to_int",
    "parse_obis",
    "range_descriptor",
    "rlrq",
    "scale",
    "set_request",
    "unit_info",
    "wrap",
]

#: The Clock object (class 8), used as the restricting object of range reads.
CLOCK = "0.0.1.0.0.255"

#: Conformance a head-end client proposes: get/set/action with block transfer,
#: selective access, multiple references, data and event notification.
DEFAULT_CONFORMANCE = [
    "priority-mgmt-supported",
    "attribute0-supported-with-get",
    "block-transfer-with-get-or-read",
    "block-transfer-with-set-or-write",
    "block-transfer-with-action",
    "multiple-references",
    "data-notification",
    "get",
    "set",
    "selective-access",
    "event-notification",
    "action",
]

JSON = dict[str, Any]


def invoke_id(n: int = 1, *, confirmed: bool = True, high_priority: bool = True) -> JSON:
    """Invoke-Id-And-Priority in the JSON form (invoke id 0..15)."""
    return {"invoke_id": n, "confirmed": confirmed, "high_priority": high_priority}


def data(type_name: str, value: Any = None, **extra: Any) -> JSON:
    """A Data value in the JSON form, e.g. ``data("long-unsigned", 5)``."""
    out: JSON = {"type": type_name, **extra}
    if value is not None:
        out["value"] = value
    return out


def date_time(
    when: _dt.datetime, *, deviation: int | None = None, clock_status: int | None = 0
) -> JSON:
    """A date-time Data value for an aware datetime, shown in its own offset.

    The COSEM deviation is UTC minus local time in minutes (Tashkent, UTC+5: -300);
    by default it is taken from ``when``'s offset.
    """
    if when.tzinfo is None:
        raise ValueError("date_time needs an aware datetime (tzinfo set)")
    offset = when.utcoffset() or _dt.timedelta(0)
    dev = -int(offset.total_seconds() // 60) if deviation is None else deviation
    iso = when.replace(tzinfo=None).isoformat(timespec="seconds")
    value: JSON = {"iso": iso, "deviation": dev}
    if clock_status is not None:
        value["clock_status"] = clock_status
    return {"type": "date-time", "value": value}


def range_descriptor(
    start: _dt.datetime,
    end: _dt.datetime,
    *,
    restricting_object: str = CLOCK,
    restricting_class: int = 8,
    restricting_attribute: int = 2,
    columns: list[JSON] | None = None,
) -> JSON:
    """Selective access by range (selector 1) for a profile generic buffer (Blue Book
    class 7, attribute 2): entries whose clock lies in [start, end]."""
    restricting = data(
        "structure",
        [
            data("long-unsigned", restricting_class),
            data("octet-string", parse_obis(restricting_object).hex()),
            data("integer", restricting_attribute),
            data("long-unsigned", 0),
        ],
    )
    params = data(
        "structure",
        [restricting, date_time(start), date_time(end), data("array", columns or [])],
    )
    return {"selector": 1, "parameters": params}


def _attribute(class_id: int, obis: str, attribute: int) -> JSON:
    return {"class_id": class_id, "instance_id": obis, "attribute_id": attribute}


def get_request(
    class_id: int,
    obis: str,
    attribute: int,
    *,
    invoke: int = 1,
    access: Mapping[str, Any] | None = None,
) -> bytes:
    """GET-Request-Normal for one attribute, with optional selective access."""
    return encode_apdu(
        {
            "apdu": "get-request",
            "kind": "normal",
            "invoke_id": invoke_id(invoke),
            "attribute": _attribute(class_id, obis, attribute),
            "access_selection": dict(access) if access else None,
        }
    )


def get_request_next(block_number: int, *, invoke: int = 1) -> bytes:
    """GET-Request-Next: asks for the block after ``block_number``."""
    return encode_apdu(
        {
            "apdu": "get-request",
            "kind": "next",
            "invoke_id": invoke_id(invoke),
            "block_number": block_number,
        }
    )


def get_request_with_list(attributes: list[tuple[int, str, int]], *, invoke: int = 1) -> bytes:
    """GET-Request-With-List for several (class, OBIS, attribute) at once."""
    return encode_apdu(
        {
            "apdu": "get-request",
            "kind": "with-list",
            "invoke_id": invoke_id(invoke),
            "attributes": [{"attribute": _attribute(*a)} for a in attributes],
        }
    )


def set_request(
    class_id: int, obis: str, attribute: int, value: Mapping[str, Any], *, invoke: int = 1
) -> bytes:
    """SET-Request-Normal writing ``value`` (a Data value in the JSON form)."""
    return encode_apdu(
        {
            "apdu": "set-request",
            "kind": "normal",
            "invoke_id": invoke_id(invoke),
            "attribute": _attribute(class_id, obis, attribute),
            "value": dict(value),
        }
    )


def action_request(
    class_id: int,
    obis: str,
    method: int,
    parameters: Mapping[str, Any] | None = None,
    *,
    invoke: int = 1,
) -> bytes:
    """ACTION-Request-Normal invoking ``method``, e.g. ``action_request(70,
    "0.0.96.3.10.255", 1, data("integer", 0))`` for remote_disconnect."""
    return encode_apdu(
        {
            "apdu": "action-request",
            "kind": "normal",
            "invoke_id": invoke_id(invoke),
            "method": {"class_id": class_id, "instance_id": obis, "method_id": method},
            "parameters": dict(parameters) if parameters is not None else None,
        }
    )


def initiate_request(
    *,
    max_pdu: int = 0xFFFF,
    conformance: list[str] | None = None,
    dedicated_key: bytes | None = None,
    dlms_version: int = 6,
) -> bytes:
    """xDLMS InitiateRequest (the AARQ's user-information, plain)."""
    return encode_apdu(
        {
            "apdu": "initiate-request",
            "dedicated_key": dedicated_key,
            "response_allowed": True,
            "proposed_quality_of_service": None,
            "proposed_dlms_version": dlms_version,
            "proposed_conformance": {"services": conformance or DEFAULT_CONFORMANCE},
            "client_max_receive_pdu_size": max_pdu,
        }
    )


def aarq(
    *,
    user_information: bytes,
    ciphered: bool = False,
    mechanism: str | None = None,
    authentication_value: bytes | None = None,
    calling_title: bytes | None = None,
) -> bytes:
    """AARQ for logical-name referencing.

    ``mechanism`` is None (lowest), "low" (LLS; ``authentication_value`` is the
    password) or "high-gmac" (HLS; it is the challenge CtoS). ``user_information`` is
    an encoded InitiateRequest, or a glo-initiateRequest in ciphered contexts, where
    ``calling_title`` is the client's system title.
    """
    authenticated = mechanism not in (None, "lowest")
    return encode_apdu(
        {
            "apdu": "aarq",
            "application_context": ("logical-name-with-ciphering" if ciphered else "logical-name"),
            "calling_ap_title": calling_title,
            "sender_acse_requirements": True if authenticated else None,
            "mechanism_name": mechanism if authenticated else None,
            "calling_authentication_value": authentication_value if authenticated else None,
            "user_information": decode_apdu(user_information),
        }
    )


def rlrq(*, reason: str | None = "normal", user_information: bytes | None = None) -> bytes:
    """RLRQ (release request)."""
    return encode_apdu(
        {
            "apdu": "rlrq",
            "reason": reason,
            "user_information": decode_apdu(user_information) if user_information else None,
        }
    )
