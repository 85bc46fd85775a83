"""Spool to ClickHouse, exactly once.

For each segment, in order: take the complete records after ``done`` (up to a byte
budget), write the range as ``intent`` (durably), insert each table's rows of the range
with the deduplication token ``<worker>/<segment>:<start>:<end>:<table>``, then record
``done = end``. A crash anywhere repeats the same range with the same tokens, which
ClickHouse drops (the tables keep a deduplication window): no loss, no duplicates.
When ClickHouse is unreachable nothing advances; workers keep spooling.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from headend.store import spool
from headend.store.db import Store

log = logging.getLogger("headend.ingest")

#: Column order per spooled table. RowBinary tables must match rust_core/src/rows.rs
#: (a test compares them); msgpack tables are written by Python in this order.
COLUMNS: dict[int, list[str]] = {
    spool.READINGS: [
        "meter",
        "obis",
        "ts",
        "value",
        "unit",
        "status",
        "source",
        "quality",
        "received_at",
    ],
    spool.EVENTS: [
        "meter",
        "ts",
        "code",
        "name",
        "category",
        "source",
        "peer",
        "detail",
        "received_at",
    ],
    spool.SESSIONS: [
        "ts",
        "event",
        "session_id",
        "worker",
        "peer",
        "framing",
        "meters",
        "bytes_in",
        "frames",
        "pushes",
        "readings",
        "errors",
        "reason",
        "duration_s",
    ],
    spool.COUNTERS: ["system_title", "last_received", "next_sent"],
}

CountersCallback = Callable[[list[tuple[str, int, int]]], None]


@dataclass
class IngestStats:
    rows: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    bytes: int = 0
    inserts: int = 0
    segments_done: int = 0


def _session_row(row: list[Any]) -> list[Any]:
    out = list(row)
    out[0] = dt.datetime.fromtimestamp(float(row[0]), dt.UTC)
    return out


class Ingestor:
    def __init__(
        self,
        store: Store,
        root: Path,
        *,
        max_bytes: int = 64 << 20,
        on_counters: CountersCallback | None = None,
    ) -> None:
        self.store = store
        self.root = root
        self.max_bytes = max_bytes
        self.on_counters = on_counters
        self.totals = IngestStats()

    def run_once(self) -> IngestStats:
        """One pass over every segment; raises StoreError if ClickHouse refuses."""
        stats = IngestStats()
        for worker, segs in spool.segments(self.root).items():
            for i, seg in enumerate(segs):
                sealed = i < len(segs) - 1
                try:
                    self._segment(worker, seg, sealed, stats)
                except FileNotFoundError:
                    continue
        for k, v in stats.rows.items():
            self.totals.rows[k] += v
        self.totals.bytes += stats.bytes
        self.totals.inserts += stats.inserts
        self.totals.segments_done += stats.segments_done
        return stats

    def _segment(self, worker: str, seg: Path, sealed: bool, stats: IngestStats) -> None:
        ack = spool.read_ack(seg)
        size = seg.stat().st_size
        if ack.intent is not None:
            start, end = ack.intent
            records = [r for r in spool.read_records(seg, start) if r.end <= end]
            if not records or records[-1].end != end:
                self._quarantine(seg, f"records of the ingest intent {start}-{end} are unreadable")
                return
        else:
            start = ack.done
            records = list(spool.read_records(seg, start, self.max_bytes)) if start < size else []
            if not records:
                if sealed:
                    if start < size:
                        # A worker killed mid-append leaves a partial last record: it
                        # was never complete, so nothing of it was spooled.
                        log.warning(
                            "segment %s/%s ends with %d bytes of an incomplete record",
                            worker,
                            seg.name,
                            size - start,
                        )
                    self._remove(seg)
                    stats.segments_done += 1
                return
            end = records[-1].end
            spool.write_ack(seg, spool.Ack(done=start, intent=(start, end)))
        self._insert(f"{worker}/{seg.name}:{start}:{end}", records, stats)
        spool.write_ack(seg, spool.Ack(done=end, intent=None))
        stats.bytes += end - start

    def _insert(self, token: str, records: list[spool.Record], stats: IngestStats) -> None:
        by_table: dict[tuple[int, int], list[spool.Record]] = defaultdict(list)
        for r in records:
            by_table[(r.table, r.fmt)].append(r)
        for (table, fmt), recs in sorted(by_table.items()):
            name = spool.TABLES.get(table)
            if name is None:
                log.error(
                    "spool record for unknown table %d skipped (%d rows)",
                    table,
                    sum(r.rows for r in recs),
                )
                continue
            columns = COLUMNS[table]
            rows = sum(r.rows for r in recs)
            t = f"{token}:{name}:{fmt}"
            if fmt == spool.ROWBINARY:
                self.store.insert_rowbinary(name, columns, b"".join(r.payload for r in recs), t)
            elif fmt == spool.MSGPACK:
                data: list[list[Any]] = []
                for r in recs:
                    data.extend(msgpack.unpackb(r.payload, use_list=True))
                if table == spool.SESSIONS:
                    data = [_session_row(row) for row in data]
                if table == spool.COUNTERS and self.on_counters is not None:
                    self.on_counters([(str(a), int(b), int(c)) for a, b, c in data])
                self.store.insert_rows(name, columns, data, token=t)
            else:
                log.error("spool record format %d for %s skipped", fmt, name)
                continue
            stats.rows[name] += rows
            stats.inserts += 1

    def _remove(self, seg: Path) -> None:
        seg.unlink(missing_ok=True)
        spool.ack_path(seg).unlink(missing_ok=True)

    def _quarantine(self, seg: Path, why: str) -> None:
        dest = self.root / "quarantine"
        dest.mkdir(parents=True, exist_ok=True)
        target = dest / f"{seg.parent.name}-{seg.name}"
        log.error("spool segment %s quarantined to %s: %s", seg, target, why)
        shutil.move(str(seg), target)
        spool.ack_path(seg).unlink(missing_ok=True)


class Backoff:
    """Doubling delays for retrying a refused insert, capped."""

    def __init__(self, first: float, cap: float = 30.0) -> None:
        self.first, self.cap = first, cap
        self.delay = 0.0
        self.failing_since: float | None = None

    def failed(self) -> float:
        self.delay = self.first if self.delay == 0 else min(self.cap, self.delay * 2)
        if self.failing_since is None:
            self.failing_since = time.monotonic()
        return self.delay

    def ok(self) -> None:
        self.delay = 0.0
        self.failing_since = None
