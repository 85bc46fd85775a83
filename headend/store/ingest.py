"""Spool to ClickHouse, exactly once, in large inserts.

A round takes the complete records appended since the last round from every segment
(oldest first, up to a byte budget) and writes the ranges, with a fresh round id, to
``<spool>/intent.json`` (durably). Then it inserts each table's rows of the whole round
at once with the deduplication token ``<round id>:<table>``, and finally records each
segment's new ``done`` offset and removes the intent. A crash anywhere leaves the
intent, so the next round repeats exactly those ranges with the same tokens, and
ClickHouse drops the repeat (the tables keep a deduplication window): nothing is lost,
nothing doubled. When ClickHouse is unreachable nothing advances; workers keep spooling.

Rounds are large on purpose: an insert of 600,000 rows costs about half the CPU per row
of one of 40,000 (measured on chdb), and fewer parts mean fewer merges.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import time
import uuid
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
    # The round took everything spooled when it began (not a replayed intent, not cut
    # by the byte budget): what was spooled before then is now queryable.
    complete: bool = False


@dataclass(frozen=True)
class Range:
    segment: Path
    start: int
    end: int


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
        self.intent_path = root / "intent.json"

    # -- the round -------------------------------------------------------------------

    def pending_bytes(self) -> int:
        return spool.backlog(self.root)

    def run_once(self) -> IngestStats:
        """One round; raises StoreError if ClickHouse refuses (nothing advances)."""
        stats = IngestStats()
        self.root.mkdir(parents=True, exist_ok=True)
        intent = self._read_intent()
        if intent is not None:
            round_id, ranges = intent
            records = self._records(ranges, exact=True)
            if records is None:
                return stats
        else:
            ranges, records = self._collect(stats)
            if not ranges:
                return stats
            round_id = uuid.uuid4().hex
            self._write_intent(round_id, ranges)
        self._insert(round_id, records, stats)
        for r in ranges:
            spool.write_ack(r.segment, spool.Ack(done=r.end))
            stats.bytes += r.end - r.start
        self.intent_path.unlink(missing_ok=True)
        self._remove_finished(stats)
        for k, v in stats.rows.items():
            self.totals.rows[k] += v
        self.totals.bytes += stats.bytes
        self.totals.inserts += stats.inserts
        self.totals.segments_done += stats.segments_done
        return stats

    def _collect(self, stats: IngestStats) -> tuple[list[Range], list[spool.Record]]:
        ranges: list[Range] = []
        records: list[spool.Record] = []
        budget = self.max_bytes
        for segs in spool.segments(self.root).values():
            for seg in segs:
                if budget <= 0:
                    break
                try:
                    ack = spool.read_ack(seg)
                    if seg.stat().st_size <= ack.done:
                        continue
                except FileNotFoundError:
                    continue
                recs = list(spool.read_records(seg, ack.done, budget))
                if recs:
                    ranges.append(Range(seg, ack.done, recs[-1].end))
                    records.extend(recs)
                    budget -= recs[-1].end - ack.done
        # The reader stops at the budget or where the data ends (or is torn): with
        # budget left, it found the end of every segment.
        stats.complete = budget > 0
        return ranges, records

    def _records(self, ranges: list[Range], *, exact: bool) -> list[spool.Record] | None:
        out: list[spool.Record] = []
        for r in ranges:
            try:
                recs = [x for x in spool.read_records(r.segment, r.start) if x.end <= r.end]
            except FileNotFoundError:
                recs = []
            if exact and (not recs or recs[-1].end != r.end):
                self._quarantine(
                    r.segment, f"records of the ingest intent {r.start}-{r.end} are unreadable"
                )
                self.intent_path.unlink(missing_ok=True)
                return None
            out.extend(recs)
        return out

    def _insert(self, round_id: str, records: list[spool.Record], stats: IngestStats) -> None:
        by_table: dict[tuple[int, int], list[spool.Record]] = defaultdict(list)
        for r in records:
            by_table[(r.table, r.fmt)].append(r)
        for (table, fmt), recs in sorted(by_table.items()):
            name = spool.TABLES.get(table)
            if name is None:
                log.error(
                    "spool records for unknown table %d skipped (%d rows)",
                    table,
                    sum(r.rows for r in recs),
                )
                continue
            columns = COLUMNS[table]
            rows = sum(r.rows for r in recs)
            token = f"{round_id}:{name}:{fmt}"
            if fmt == spool.ROWBINARY:
                self.store.insert_rowbinary(
                    name, columns, b"".join(r.payload for r in recs), token, rows=rows
                )
            elif fmt == spool.MSGPACK:
                data: list[list[Any]] = []
                for r in recs:
                    data.extend(msgpack.unpackb(r.payload, use_list=True))
                if table == spool.SESSIONS:
                    data = [_session_row(row) for row in data]
                if table == spool.COUNTERS and self.on_counters is not None:
                    self.on_counters([(str(a), int(b), int(c)) for a, b, c in data])
                self.store.insert_rows(name, columns, data, token=token)
            else:
                log.error("spool records of format %d for %s skipped", fmt, name)
                continue
            stats.rows[name] += rows
            stats.inserts += 1

    def _remove_finished(self, stats: IngestStats) -> None:
        """Deletes sealed segments (an older one of the same worker) fully ingested; a
        partial record at the end of a sealed segment was never complete."""
        for worker, segs in spool.segments(self.root).items():
            for seg in segs[:-1]:
                try:
                    done = spool.read_ack(seg).done
                    size = seg.stat().st_size
                except FileNotFoundError:
                    continue
                if any(True for _ in spool.read_records(seg, done)):
                    continue  # complete records left: ingest them first
                if size > done:
                    log.warning(
                        "segment %s/%s ends with %d bytes of an incomplete record",
                        worker,
                        seg.name,
                        size - done,
                    )
                seg.unlink(missing_ok=True)
                spool.ack_path(seg).unlink(missing_ok=True)
                stats.segments_done += 1

    # -- the intent ------------------------------------------------------------------

    def _read_intent(self) -> tuple[str, list[Range]] | None:
        try:
            d = json.loads(self.intent_path.read_text())
        except FileNotFoundError:
            return None
        return d["id"], [Range(self.root / w / s, int(a), int(b)) for w, s, a, b in d["ranges"]]

    def _write_intent(self, round_id: str, ranges: list[Range]) -> None:
        body = {
            "id": round_id,
            "ranges": [[r.segment.parent.name, r.segment.name, r.start, r.end] for r in ranges],
        }
        spool.durable_write(self.intent_path, json.dumps(body))

    def _quarantine(self, seg: Path, why: str) -> None:
        dest = self.root / "quarantine"
        dest.mkdir(parents=True, exist_ok=True)
        target = dest / f"{seg.parent.name}-{seg.name}"
        log.error("spool segment %s quarantined to %s: %s", seg, target, why)
        if seg.exists():
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
            self.failing_since = time.time()
        return self.delay

    def ok(self) -> None:
        self.delay = 0.0
        self.failing_since = None
