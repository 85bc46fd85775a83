"""The admin socket's client: ``headend ctl``, ``headend sql`` and imports while the
server runs. One JSON object per line each way over ``<data>/admin.sock`` (mode 0600).
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from headend.errors import HeadendError

# Rows per admin insert message.
INSERT_SLICE = 2000


class ServerNotRunning(HeadendError):
    """Nothing answers on the admin socket."""


class AdminError(HeadendError):
    """The server refused the command."""


def jsonable(v: Any) -> Any:
    """A value as the admin socket carries it in JSON: datetimes and dates as ISO text,
    bytes as hex, decimals as text, NaN and infinities as null."""
    if isinstance(v, dt.datetime):
        return v.isoformat()
    if isinstance(v, dt.date):
        return v.isoformat()
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, decimal.Decimal):
        return str(v)
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return str(v)


class AdminClient:
    def __init__(self, path: Path, timeout: float = 300.0) -> None:
        self.path = path
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buf = b""

    def _connect(self) -> socket.socket:
        if self._sock is None:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(self.timeout)
            try:
                s.connect(str(self.path))
            except (FileNotFoundError, ConnectionRefusedError):
                s.close()
                raise ServerNotRunning(f"no server answers on {self.path}") from None
            self._sock = s
        return self._sock

    def call(self, cmd: str, **args: Any) -> Any:
        s = self._connect()
        # A person's own token ($HEADEND_TOKEN) makes the command theirs: their roles
        # and regions apply. Without one, the socket's owner (the service user) acts.
        token = os.environ.get("HEADEND_TOKEN")
        req = {"cmd": cmd, **args, **({"token": token} if token else {})}
        s.sendall(json.dumps(req, default=jsonable).encode() + b"\n")
        while b"\n" not in self._buf:
            chunk = s.recv(1 << 20)
            if not chunk:
                self.close()
                raise ServerNotRunning("the server closed the admin connection")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        reply = json.loads(line)
        if not reply.get("ok"):
            raise AdminError(reply.get("error", "unknown error"))
        return reply.get("result")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # The SqlAccess protocol (imports through the running server).
    def query(
        self, sql: str, params: dict[str, Any] | None = None
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        r = self.call("query", query=sql, params=params)
        return r["columns"], [tuple(row) for row in r["rows"]]

    def insert_rows(
        self,
        table: str,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        token: str | None = None,
    ) -> None:
        # In slices: one admin message is parsed on the store's event loop, so a large
        # import must not arrive as one line of megabytes.
        for i in range(0, len(rows), INSERT_SLICE):
            part = [list(r) for r in rows[i : i + INSERT_SLICE]]
            self.call("insert", table=table, columns=list(columns), rows=part)
