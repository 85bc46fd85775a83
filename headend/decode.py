"""``headend decode``: a field engineer's translator for one captured frame.

Input is hex (spaces, colons and a 0x prefix allowed); output is the frame as JSON:
the framing, the APDU with every value's DLMS type, OBIS codes as a.b.c.d.e.f, times
as ISO 8601 with the meter's deviation, and, with keys, the deciphered APDU (also
inside AARQ/AARE user-information). Keys are never echoed.
"""

from __future__ import annotations

import string
from typing import Any

from headend import codec
from headend.errors import HeadendError, LocalProtocolError

HEX_DIGITS = frozenset(string.hexdigits)


def parse_hex(text: str, what: str = "frame") -> bytes:
    """Hex digits, ignoring whitespace, ':' and '-' separators and a 0x prefix."""
    t = text.strip()
    if t[:2].lower() == "0x":
        t = t[2:]
    digits = "".join(c for c in t if c not in " \t\r\n:-")
    bad = next((c for c in digits if c not in HEX_DIGITS), None)
    if bad is not None:
        raise LocalProtocolError(f"{what} is not hex: unexpected character {bad!r}")
    if len(digits) % 2:
        raise LocalProtocolError(f"{what} has an odd number of hex digits ({len(digits)})")
    if not digits:
        raise LocalProtocolError(f"{what} is empty")
    return bytes.fromhex(digits)


def parse_key(text: str | None, what: str, size: int = 16) -> bytes | None:
    if text is None:
        return None
    b = parse_hex(text, what)
    if len(b) != size:
        raise LocalProtocolError(
            f"{what} must be {size} bytes ({2 * size} hex digits), got {len(b)}"
        )
    return b


class Keys:
    """Explicit keys for deciphering, or none."""

    def __init__(self, ek: bytes | None, ak: bytes | None, system_title: bytes | None) -> None:
        if (ek is None) != (ak is None):
            raise LocalProtocolError("give both --ek and --ak, or neither")
        self.ek = ek
        self.ak = ak
        self.system_title = system_title

    def __bool__(self) -> bool:
        return self.ek is not None

    def __repr__(self) -> str:
        return "Keys(<hidden>)"


def _decipher(node: dict[str, Any], keys: Keys, sender: bytes | None) -> None:
    """Adds "deciphered" to a ciphered APDU node; recurses into user-information."""
    if node.get("apdu") in ("aarq", "aare"):
        title_field = "calling_ap_title" if node["apdu"] == "aarq" else "responding_ap_title"
        title = node.get(title_field)
        inner = node.get("user_information")
        if isinstance(inner, dict):
            _decipher(inner, keys, bytes.fromhex(title) if title else sender)
        return
    if node.get("apdu") != "ciphered":
        return
    if not keys:
        node["note"] = "ciphered: give --ek and --ak to decipher"
        return
    assert keys.ek is not None
    assert keys.ak is not None
    title = node.get("system_title")
    st = bytes.fromhex(title) if title else (sender or keys.system_title)
    if st is None:
        raise LocalProtocolError(
            f"{node['cipher']} carries no system title; give --system-title (the sender's)"
        )
    raw = codec.encode_apdu(node)
    plain = codec.decrypt(raw, ek=keys.ek, ak=keys.ak, system_title=st)
    inner_apdu = codec.decode_apdu(plain["plaintext"])
    _decipher(inner_apdu, keys, sender)
    node["deciphered"] = {
        "system_title": plain["system_title"].hex().upper(),
        "invocation_counter": plain["invocation_counter"],
        "plaintext": plain["plaintext"].hex().upper(),
        "apdu": inner_apdu,
    }


def decode(raw: bytes, *, framing: str = "auto", keys: Keys | None = None) -> dict[str, Any]:
    """The JSON form of one captured frame (see module docs)."""
    keys = keys or Keys(None, None, None)
    frame = codec.decode_frame(raw, framing)  # type: ignore[arg-type]
    out: dict[str, Any] = {"framing": frame["framing"]}
    if frame["apdu"] is None:
        info: bytes = frame["info"]
        if info:
            out["info"] = info.hex().upper()
            control = (frame["framing"] or {}).get("control", {}).get("kind")
            if control in ("SNRM", "UA"):
                out["parameters"] = codec.decode_hdlc_parameters(info)
        return out
    apdu = codec.decode_apdu(frame["apdu"])
    _decipher(apdu, keys, keys.system_title)
    out["apdu"] = apdu
    return out


def describe_error(e: BaseException) -> str:
    """The one-line message for an error (keys never appear in these)."""
    if isinstance(e, HeadendError):
        return str(e)
    return f"{type(e).__name__}: {e}"
