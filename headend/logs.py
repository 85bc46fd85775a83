"""Structured logs: key=value text or one JSON object per line.

Every process logs to stderr (the supervisor collects it) with its role and pid. A
connection's messages go through :class:`PeerLogger`, which prefixes the peer and the
meter, and arguments stay lazy (``%s``) so nothing is formatted unless emitted.
Keys never reach a log: nothing here is given any.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import MutableMapping
from typing import Any

_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message"}


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        t = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        extras = " ".join(
            f"{k}={v}"
            for k, v in record.__dict__.items()
            if k not in _RESERVED and not k.startswith("_")
        )
        msg = record.getMessage()
        line = f"{t}Z {record.levelname.lower():7} {record.name}: {msg}"
        if extras:
            line += f" | {extras}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in record.__dict__.items():
            if k not in _RESERVED and not k.startswith("_"):
                out[k] = v if isinstance(v, (str, int, float, bool, type(None))) else str(v)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup(role: str, level: str = "info", fmt: str = "text") -> None:
    """Configures the root logger of this process."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    old = logging.getLogRecordFactory()
    pid = os.getpid()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = old(*args, **kwargs)
        record.role = role
        record.pid = pid
        return record

    logging.setLogRecordFactory(factory)


class PeerLogger(logging.LoggerAdapter[logging.Logger]):
    """Prefixes a connection's messages with its peer and meter."""

    def __init__(self, logger: logging.Logger, peer: str) -> None:
        super().__init__(logger, {"peer": peer})
        self.meter: str | None = None

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        extra = dict(kwargs.get("extra") or {})
        extra["peer"] = self.extra["peer"] if self.extra else "?"
        if self.meter:
            extra["meter"] = self.meter
        kwargs["extra"] = extra
        return msg, kwargs
