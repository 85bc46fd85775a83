"""Where the head-end reaches a meter that listens (IEC 62056-47 over TCP, or HDLC
over TCP) instead of connecting in: the ``address`` column of ``meters``.

Forms (empty: the meter connects to the head-end):

- ``HOST:PORT`` or ``wrapper://HOST:PORT[/WPORT]``: the TCP wrapper, the meter's
  logical device at wPort ``WPORT`` (default 1, the management logical device);
- ``hdlc://HOST:PORT[/LOGICAL/PHYSICAL]``: HDLC over TCP, server address
  ``LOGICAL/PHYSICAL`` (default 1/17, the management logical device of the physical
  device 17, 0x11).

``HOST`` is a name, an IPv4 address or a bracketed IPv6 address.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

_HOSTPORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):([0-9]{1,5})$")


@dataclass(frozen=True)
class MeterAddress:
    framing: Literal["wrapper", "hdlc"]
    host: str
    port: int
    # The meter's link address as a connection's session reports it: the wPort, or
    # the HDLC server address as upper << 16 | lower.
    server: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.framing == "wrapper":
            return f"wrapper://{host}:{self.port}/{self.server}"
        return f"hdlc://{host}:{self.port}/{self.server >> 16}/{self.server & 0xFFFF}"


def _number(text: str, what: str, lo: int, hi: int) -> int:
    if not text.isdigit():
        raise ValueError(f"{what} {text!r} is not a number")
    n = int(text)
    if not lo <= n <= hi:
        raise ValueError(f"{what} {n} is outside {lo}..{hi}")
    return n


def parse(text: str) -> MeterAddress | None:
    """The address in `text`, None for an empty one; ValueError says what is wrong."""
    text = text.strip()
    if not text:
        return None
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "wrapper", text
    if scheme not in ("wrapper", "hdlc"):
        raise ValueError(f"address {text!r}: scheme {scheme!r} is not wrapper:// or hdlc://")
    hostport, _, path = rest.partition("/")
    m = _HOSTPORT.match(hostport)
    if m is None:
        raise ValueError(f"address {text!r}: expected HOST:PORT, got {hostport!r}")
    host = m.group(1).strip("[]")
    port = _number(m.group(2), "port", 1, 65535)
    parts = path.split("/") if path else []
    if scheme == "wrapper":
        if len(parts) > 1:
            raise ValueError(f"address {text!r}: a wrapper address has one wPort after the port")
        wport = _number(parts[0], "wPort", 1, 0xFFFF) if parts else 1
        return MeterAddress("wrapper", host, port, wport)
    if len(parts) not in (0, 2):
        raise ValueError(f"address {text!r}: an HDLC address gives LOGICAL/PHYSICAL after the port")
    logical = _number(parts[0], "HDLC logical address", 1, 0x3FFF) if parts else 1
    physical = _number(parts[1], "HDLC physical address", 0, 0x3FFF) if parts else 17
    return MeterAddress("hdlc", host, port, logical << 16 | physical)
