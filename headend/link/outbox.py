"""The link's outbox: what this node sends to its peers, on disk before anything else.

A region node writes every insert into a table that travels up (readings, events,
sessions, consumption, balances, findings, commands, policy actions, master data) to
the outbox *before* its own ClickHouse sees it (`UpTap`, attached to the store); the
centre writes what it sends down to a region (master data, commands) the same way
(`headend.link.down`). The link's publisher drains the outbox into JetStream and
records its progress per segment; so a record is in the outbox, in the local stream,
or both, whichever process dies when, and the receiving end applies it with the
sender's deduplication token: once.

The outbox is a spool (`headend.store.spool`): a directory per writing process
(``store``, or ``cli-<pid>`` for a command run without the server), append-only
segments of CRC-checked records, ``.ack`` files for what was published. A record's
payload is an envelope (msgpack, zstd-compressed):

    {kind, dest, table, columns, token, rows, fmt, data, created}

`kind` is ``binary`` (`data`: RowBinary or Native bytes in `fmt`), ``rows`` (`data`:
row lists), ``delete`` (`data`: column -> value equalities), or a down-link action
(``command``, ``cancel``, ``policy``) with its `data`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
from backports import zstd

from headend.store import spool

LINK = 16
"""The spool record `table` of a link record (its payload is an envelope)."""
UP = "up"
"""The destination of what a region sends to the centre."""

# Tables whose rows travel up from a region (everything it stores but the keys, the
# counters and what views derive).
UP_TABLES = frozenset(
    {
        "readings",
        "events",
        "sessions",
        "consumption",
        "balances",
        "anomaly_findings",
        "commands",
        "policy_actions",
        "grid_nodes",
        "meters",
        "meter_titles",
        "billing_accounts",
        "audit",  # who did what, in every region, is on the national record
        # Keys a region changed (rotations), re-wrapped for the link: the centre keeps
        # them and passes them to the region's standby.
        "meter_keys",
        # Field work: the region's centres, its work orders and what they flagged.
        "service_centres",
        "work_order_log",
        "account_flags",
        "outages",
        "outage_meters",
        "payments",
        "notifications",
    }
)
# Master data the centre sends down to the region that owns it; people's accounts and
# tokens go to every region node (people are managed at the centre).
DOWN_TABLES = frozenset(
    {
        "grid_nodes",
        "meters",
        "meter_titles",
        "meter_keys",
        "billing_accounts",
        "service_centres",
        "payments",
        "users",
        "user_tokens",
    }
)
EVERY_REGION = frozenset({"users", "user_tokens"})
KINDS = frozenset({"binary", "rows", "delete", "command", "cancel", "policy"})

_DATE = 1  # msgpack extension: a date as ISO text


def _default(v: Any) -> Any:
    if isinstance(v, dt.datetime):
        return v if v.tzinfo else v.replace(tzinfo=dt.UTC)
    if isinstance(v, dt.date):
        return msgpack.ExtType(_DATE, v.isoformat().encode())
    if isinstance(v, tuple):
        return list(v)
    raise TypeError(f"cannot send a {type(v).__name__} on the link")


def _ext(code: int, data: bytes) -> Any:
    if code == _DATE:
        return dt.date.fromisoformat(data.decode())
    return msgpack.ExtType(code, data)


@dataclass
class Envelope:
    kind: str
    dest: str
    table: str = ""
    columns: list[str] = field(default_factory=list)
    token: str = ""
    rows: int = 0
    fmt: str = ""
    data: Any = None
    created: float = field(default_factory=time.time)

    def encode(self) -> bytes:
        body = msgpack.packb(
            {
                "kind": self.kind,
                "dest": self.dest,
                "table": self.table,
                "columns": list(self.columns),
                "token": self.token,
                "rows": self.rows,
                "fmt": self.fmt,
                "data": self.data,
                "created": self.created,
            },
            default=_default,
            datetime=True,
            use_bin_type=True,
        )
        return zstd.compress(body, level=1)

    @classmethod
    def decode(cls, payload: bytes) -> Envelope:
        """An envelope from its bytes; `ValueError` names what is wrong."""
        try:
            d = msgpack.unpackb(
                zstd.decompress(payload), timestamp=3, ext_hook=_ext, strict_map_key=False
            )
        except Exception as e:
            raise ValueError(f"unreadable link record: {type(e).__name__}: {e}") from None
        if not isinstance(d, dict) or d.get("kind") not in KINDS:
            raise ValueError("a link record without a known kind")
        return cls(
            kind=str(d["kind"]),
            dest=str(d.get("dest", "")),
            table=str(d.get("table", "")),
            columns=[str(c) for c in d.get("columns") or []],
            token=str(d.get("token", "")),
            rows=int(d.get("rows", 0)),
            fmt=str(d.get("fmt", "")),
            data=d.get("data"),
            created=float(d.get("created", 0.0)),
        )


def frame(env: Envelope) -> bytes:
    """An outbox record's payload: the destination and creation time ahead of the
    envelope, so the publisher routes it without unpacking it."""
    return f"{env.dest}\x00{env.created:.3f}\x00".encode() + env.encode()


def unframe(payload: bytes) -> tuple[str, float, bytes]:
    """(destination, creation time, envelope bytes) of an outbox record's payload."""
    dest, created, body = payload.split(b"\x00", 2)
    return dest.decode(), float(created), body


@dataclass
class Marks:
    """A segment's progress on the link: records up to `published` are in the local
    stream, records up to `confirmed` are applied by their peers (only those may go)."""

    published: int = 0
    confirmed: int = 0


def read_marks(segment: Path) -> Marks:
    try:
        d = json.loads(spool.ack_path(segment).read_text())
    except (FileNotFoundError, ValueError):
        return Marks()
    done = int(d.get("done", 0))
    return Marks(done, min(done, int(d.get("confirmed", 0))))


def write_marks(segment: Path, marks: Marks) -> None:
    spool.durable_write(
        spool.ack_path(segment), json.dumps({"done": marks.published, "confirmed": marks.confirmed})
    )


@dataclass
class Backlog:
    """What the outbox holds beyond the published marks."""

    bytes: int = 0
    rows: int = 0
    oldest: float | None = None  # when its oldest record was made


def pending(root: Path) -> Backlog:
    """The records not yet published (headers only, and the first payload of each
    segment for its age)."""
    out = Backlog()
    for segs in spool.segments(root, named=True).values():
        for seg in segs:
            try:
                done = read_marks(seg).published
                left = seg.stat().st_size - done
                if left <= 0:
                    continue
                out.bytes += left
                out.rows += sum(rows for _, _, rows in spool.record_headers(seg, done))
                for rec in spool.read_records(seg, done, 1):
                    created = unframe(rec.payload)[1]
                    out.oldest = created if out.oldest is None else min(out.oldest, created)
            except FileNotFoundError:
                continue
    return out


class Outbox:
    """One process's end of the outbox. Appends are durable (fsynced) when they
    return: the caller inserts into its own store only after."""

    def __init__(self, root: Path, writer: str) -> None:
        self.root = root
        self.writer = writer
        self._spool: spool.SpoolWriter | None = None
        self.appended = 0

    def _open(self) -> spool.SpoolWriter:
        if self._spool is None:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._spool = spool.SpoolWriter(
                self.root, 0, segment_bytes=64 << 20, fsync="always", name=self.writer
            )
        return self._spool

    def append(self, envelopes: Sequence[Envelope]) -> None:
        if not envelopes:
            return
        records = [
            spool.encode_record(LINK, spool.MSGPACK, min(e.rows, 0xFFFFFFFF), frame(e))
            for e in envelopes
        ]
        self._open().append(records)
        self.appended += len(records)

    def close(self) -> None:
        if self._spool is not None:
            self._spool.close()
            self._spool = None


def writer_name(kind: str) -> str:
    """A directory name for a writing process: ``store``, or ``cli-<pid>-<random>``."""
    if kind == "store":
        return "store"
    return f"{kind}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class UpTap:
    """Attached to a region's store: every insert into a table that travels up (and
    every delete from one) is written to the outbox first, with a token the centre
    inserts it under."""

    def __init__(
        self,
        outbox: Outbox,
        origin: str,
        rewrap: Callable[[Sequence[str], Sequence[Sequence[Any]]], list[list[Any]]] | None = None,
    ) -> None:
        self.outbox = outbox
        self.origin = origin
        # Meter keys leave wrapped under the link's key, never under this node's master.
        self.rewrap = rewrap

    @staticmethod
    def wants(table: str) -> bool:
        return table in UP_TABLES

    def _token(self, token: str | None) -> str:
        return f"{self.origin}/{token or uuid.uuid4().hex}"

    def binary(
        self,
        table: str,
        columns: Sequence[str],
        data: bytes,
        fmt: str,
        token: str | None,
        *,
        rows: int = 0,
    ) -> None:
        if table == "meter_keys":
            # Keys travel only as rows, re-wrapped for the link (`rows`); a bulk load
            # (a restore) stays here.
            return
        self.outbox.append(
            [
                Envelope(
                    "binary",
                    UP,
                    table,
                    list(columns),
                    self._token(token),
                    rows=rows,
                    fmt=fmt,
                    data=bytes(data),
                )
            ]
        )

    def rows(
        self,
        table: str,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        token: str | None,
    ) -> None:
        data = [list(r) for r in rows]
        if table == "meter_keys":
            if self.rewrap is None:
                raise ValueError("meter keys cannot travel up without the link's key")
            data = self.rewrap(columns, data)
        self.outbox.append(
            [
                Envelope(
                    "rows",
                    UP,
                    table,
                    list(columns),
                    self._token(token),
                    rows=len(rows),
                    data=data,
                )
            ]
        )

    def delete(self, table: str, where: dict[str, Any]) -> None:
        self.outbox.append([Envelope("delete", UP, table, token=self._token(None), data=where)])
