"""The append-only on-disk spool between workers and the store.

Each worker appends to its own directory ``<data>/spool/w<id>/`` in segments named by
creation time. A segment is a run of records::

    magic "HSP1" | table u8 | format u8 | rows u32 | length u32 | crc32 u32 | payload
    crc32 covers table..length and the payload, so a record is all there or not at all.

A worker appends one write() per event-loop turn (everything decoded in that turn) and
fsyncs by policy. A killed worker leaves at most a torn record at the end of its last
segment; readers stop at the first incomplete or corrupt record, and the restarted
worker opens a new segment, which seals the old one.

The store tracks its progress per segment in ``<segment>.ack`` (JSON): ``done`` is the
offset ingested and acknowledged by ClickHouse. The ranges of a round being ingested
are written first to a round-level intent (see :mod:`headend.store.ingest`), so after
a crash the same ranges are inserted again with the same deduplication tokens and
ClickHouse drops them: nothing is lost and nothing is doubled.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


class SpoolFull(OSError):
    """An append did not fit (no space, a quota, an I/O error): nothing of it stays in
    the segment, and the caller keeps the records to append again."""


MAGIC = b"HSP1"
HEADER = struct.Struct("<4sBBIII")  # magic, table, format, rows, length, crc
HEADER_SIZE = HEADER.size
MAX_RECORD = 256 << 20

# Tables a record may carry.
READINGS = 1
EVENTS = 2
SESSIONS = 3
COUNTERS = 4
TABLES = {
    READINGS: "readings",
    EVENTS: "events",
    SESSIONS: "sessions",
    COUNTERS: "invocation_counters",
}

# Payload formats.
ROWBINARY = 0  # ClickHouse RowBinary, columns in the order the writer's table declares
MSGPACK = 1  # a msgpack list of row lists


@dataclass(frozen=True)
class Record:
    offset: int
    end: int
    table: int
    fmt: int
    rows: int
    payload: bytes


def encode_record(table: int, fmt: int, rows: int, payload: bytes) -> bytes:
    head = struct.pack("<BBII", table, fmt, rows, len(payload))
    crc = zlib.crc32(payload, zlib.crc32(head))
    return HEADER.pack(MAGIC, table, fmt, rows, len(payload), crc) + payload


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SpoolWriter:
    """A worker's end of the spool."""

    def __init__(
        self,
        root: Path,
        worker_id: int,
        *,
        segment_bytes: int = 64 << 20,
        fsync: str = "interval",
        fsync_interval: float = 1.0,
        name: str | None = None,
    ) -> None:
        self.dir = root / (name or f"w{worker_id}")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.segment_bytes = segment_bytes
        self.fsync_policy = fsync
        self.fsync_interval = fsync_interval
        self._fd = -1
        self._size = 0
        self._last_sync = time.monotonic()
        self._dirty = False
        self.path: Path | None = None
        self.appended_bytes = 0
        self._open_new()

    def _open_new(self) -> None:
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)
        # Nanosecond names sort in creation order; a restarted worker never reuses one.
        name = f"{time.time_ns():020d}.seg"
        self.path = self.dir / name
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self._size = 0
        _fsync_dir(self.dir)

    def append(self, records: list[bytes]) -> None:
        """Appends encoded records in one write; rotates and syncs by policy. When the
        write fails (a full disk), what part of it was written is cut off again, so
        the segment ends at a whole record, and SpoolFull is raised."""
        if not records:
            return
        data = b"".join(records)
        view = memoryview(data)
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        except OSError as e:
            try:
                os.ftruncate(self._fd, self._size)
            except OSError as e2:
                # The torn record stays; a reader stops there, so start a new segment
                # (the old one is sealed at its last whole record).
                with contextlib.suppress(OSError):
                    self._open_new()
                raise SpoolFull(e.errno, f"spool append failed ({e.strerror}); cut: {e2}") from e
            raise SpoolFull(e.errno, f"spool append failed: {e.strerror}") from e
        self._size += len(data)
        self.appended_bytes += len(data)
        self._dirty = True
        if self.fsync_policy == "always":
            self.sync()
        if self._size >= self.segment_bytes:
            self._open_new()

    def maybe_sync(self) -> None:
        if (
            self._dirty
            and self.fsync_policy == "interval"
            and time.monotonic() - self._last_sync >= self.fsync_interval
        ):
            self.sync()

    def sync(self) -> None:
        if self._fd >= 0 and self._dirty:
            os.fsync(self._fd)
            self._dirty = False
            self._last_sync = time.monotonic()

    def close(self) -> None:
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1


def read_records(path: Path, start: int, limit: int | None = None) -> Iterator[Record]:
    """Complete, valid records from `start`, up to about `limit` bytes. Stops at the
    first incomplete or corrupt record (a torn tail, or a segment still being written)."""
    with open(path, "rb") as f:
        f.seek(start)
        offset = start
        read = 0
        while limit is None or read < limit:
            head = f.read(HEADER_SIZE)
            if len(head) < HEADER_SIZE:
                return
            magic, table, fmt, rows, length, crc = HEADER.unpack(head)
            if magic != MAGIC or length > MAX_RECORD:
                return
            payload = f.read(length)
            if len(payload) < length:
                return
            head_fields = struct.pack("<BBII", table, fmt, rows, length)
            if zlib.crc32(payload, zlib.crc32(head_fields)) != crc:
                return
            end = offset + HEADER_SIZE + length
            yield Record(offset, end, table, fmt, rows, payload)
            read += end - offset
            offset = end


def record_headers(path: Path, start: int) -> Iterator[tuple[int, int, int]]:
    """(offset, end, rows) of the records from `start`, reading headers only (no
    payload, no CRC check: for counting what a segment holds, not for using it)."""
    with open(path, "rb") as f:
        offset = start
        size = os.fstat(f.fileno()).st_size
        while offset + HEADER_SIZE <= size:
            f.seek(offset)
            magic, _, _, rows, length, _ = HEADER.unpack(f.read(HEADER_SIZE))
            end = offset + HEADER_SIZE + length
            if magic != MAGIC or length > MAX_RECORD or end > size:
                return
            yield offset, end, rows
            offset = end


@dataclass
class Ack:
    done: int = 0


def ack_path(segment: Path) -> Path:
    return segment.with_suffix(".ack")


def read_ack(segment: Path) -> Ack:
    try:
        d = json.loads(ack_path(segment).read_text())
    except FileNotFoundError:
        return Ack()
    return Ack(done=int(d.get("done", 0)))


def durable_write(path: Path, text: str) -> None:
    """Replaces `path` atomically (temporary file, fsync, rename, fsync of the
    directory): after a crash it holds the old text or the new, never a mixture. The
    temporary file is the writer's own (two threads replacing one file must not
    rename each other's)."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def write_ack(segment: Path, ack: Ack) -> None:
    """Records the store's progress in a segment, durably."""
    durable_write(ack_path(segment), json.dumps({"done": ack.done}))


def segments(root: Path, *, named: bool = False) -> dict[str, list[Path]]:
    """Each worker directory's segments, oldest first (`named`: every writer's
    directory, whatever its name, as in the link's outbox)."""
    out: dict[str, list[Path]] = {}
    if not root.exists():
        return out
    for d in sorted(root.iterdir()):
        # Worker directories are w<id>; others (quarantine) hold no live segments.
        if not d.is_dir() or d.name == "quarantine":
            continue
        if named or (d.name[:1] == "w" and d.name[1:].isdigit()):
            out[d.name] = sorted(d.glob("*.seg"))
    return out


def backlog(root: Path, *, named: bool = False) -> int:
    """Bytes appended but not yet acknowledged by the store."""
    total = 0
    for segs in segments(root, named=named).values():
        for s in segs:
            try:
                total += max(0, s.stat().st_size - read_ack(s).done)
            except FileNotFoundError:
                continue
    return total
