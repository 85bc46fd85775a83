"""Meter lookups for the workers: a worker that meets a meter it does not know asks
the store; requests that arrive while a round runs are merged into the next one, and
a round is a handful of primary-key queries (system title through `meter_titles`,
then `meters`, `meter_keys`, `invocation_counters`), so under a reconnect storm the
rounds grow instead of the queue. The counters not yet in ClickHouse are read from
the spool (`CounterScanner`), so a meter that moved between workers never gets a
stale (lower) floor."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgpack

from headend.store import spool
from headend.store.db import Store

LOOKUP_GATHER = 0.05
"""Seconds a lookup round waits for more requests (the workers' requests are merged)."""


class CounterScanner:
    """Invocation counters from spool records not yet in ClickHouse, so a meter looked up
    by another worker right after moving never gets a stale (lower) floor."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pos: dict[Path, int] = {}
        self.found: dict[Path, dict[str, tuple[int, int]]] = {}

    def scan(self) -> dict[str, tuple[int, int]]:
        live = set()
        for segs in spool.segments(self.root).values():
            for seg in segs:
                live.add(seg)
                done = spool.read_ack(seg).done
                start = max(self.pos.get(seg, 0), done)
                found = self.found.setdefault(seg, {})
                end = start
                for r in spool.read_records(seg, start):
                    end = r.end
                    if r.table == spool.COUNTERS:
                        for title, last, nxt in msgpack.unpackb(r.payload):
                            old = found.get(title, (-1, 0))
                            found[title] = (max(old[0], last), max(old[1], nxt))
                self.pos[seg] = end
                if done >= end:
                    found.clear()  # all of it is in ClickHouse now
        for gone in set(self.pos) - live:
            self.pos.pop(gone, None)
            self.found.pop(gone, None)
        merged: dict[str, tuple[int, int]] = {}
        for found in self.found.values():
            for title, (last, nxt) in found.items():
                old = merged.get(title, (-1, 0))
                merged[title] = (max(old[0], last), max(old[1], nxt))
        return merged


class Lookups:
    def __init__(self, store: Store, db: str, scanner: CounterScanner) -> None:
        self.store = store
        self.db = db
        self.scanner = scanner
        self.pending: list[tuple[list[str], list[str], asyncio.Future[Any]]] = []
        self.task: asyncio.Task[None] | None = None
        self.stats = {"rounds": 0, "requests": 0, "keys": 0}

    async def answer(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Answers one worker's lookup. Requests that arrive while a lookup runs are
        merged into the next one: a lookup's cost is mostly fixed (a handful of
        primary-key queries), so under a reconnect storm the batches grow instead of
        the queue."""
        titles = [bytes(t).hex().upper() for t in msg.get("titles", [])]
        serials = [bytes(s).decode("utf-8", "replace") for s in msg.get("serials", [])]
        fut: asyncio.Future[tuple[dict[str, dict[str, Any]], dict[str, Any]]]
        fut = asyncio.get_running_loop().create_future()
        self.pending.append((titles, serials, fut))
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._rounds())
        by_serial, recent = await fut
        out, found_titles, found_serials = [], set(), set()
        want_titles, want_serials = set(titles), set(serials)
        for m in by_serial.values():
            th = m["system_title_hex"]
            if m["serial"] not in want_serials and th not in want_titles:
                continue
            found_titles.add(th)
            found_serials.add(m["serial"])
            last, nxt = m["last_received"], m["next_sent"]
            if th in recent:
                last = max(last, recent[th][0])
                nxt = max(nxt, recent[th][1])
            answer = {k: v for k, v in m.items() if k != "system_title_hex"}
            answer["last_received"] = None if last < 0 else last
            answer["next_sent"] = nxt if nxt > 0 else None
            out.append(answer)
        return {
            "meters": out,
            "unknown_titles": [bytes.fromhex(t) for t in titles if t not in found_titles],
            "unknown_serials": [s.encode() for s in serials if s not in found_serials],
        }

    async def _rounds(self) -> None:
        loop = asyncio.get_running_loop()
        while self.pending:
            await asyncio.sleep(LOOKUP_GATHER)
            batch, self.pending = self.pending, []
            titles = sorted({t for b in batch for t in b[0]})
            serials = sorted({s for b in batch for s in b[1]})
            try:
                meters, recent = await loop.run_in_executor(None, self._sql, titles, serials)
            except Exception as e:
                for _, _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            self.stats["rounds"] += 1
            self.stats["requests"] += len(batch)
            self.stats["keys"] += len(titles) + len(serials)
            by_serial = {m["serial"]: m for m in meters}
            for _, _, fut in batch:
                if not fut.done():
                    fut.set_result((by_serial, recent))

    def _sql(
        self, titles: list[str], serials: list[str]
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        db = self.db
        recent = self.scanner.scan()
        # Both by primary key: titles through meter_titles, then meters by serial. A
        # title counts only if the meter still has it (the meters row confirms it).
        claimed: list[tuple[Any, ...]] = []
        if titles:
            _, claimed = self.store.query(
                f"SELECT system_title, serial FROM {db}.meter_titles FINAL "
                "WHERE system_title IN %(t)s",
                {"t": titles},
            )
        wanted = sorted({*serials, *(c[1] for c in claimed)})
        if not wanted:
            return [], recent
        _, rows = self.store.query(
            "SELECT serial, model, system_title, node_id, ct_ratio, vt_ratio "
            f"FROM {db}.meters FINAL WHERE serial IN %(s)s",
            {"s": wanted},
        )
        asked = set(serials)
        owners = {(t, s) for t, s in claimed}
        rows = [r for r in rows if r[0] in asked or (r[2], r[0]) in owners]
        if not rows:
            return [], recent
        found = {r[0]: r for r in rows}
        # Previous keys only while their grace lasts; the worker drops them then too.
        _, keys = self.store.query(
            f"SELECT serial, ek, ak, password, kek, pending_ek, pending_ak, "
            f"if(previous_until > now(), previous_ek, ''), "
            f"if(previous_until > now(), previous_ak, ''), toUnixTimestamp(previous_until) "
            f"FROM {db}.meter_keys FINAL WHERE serial IN %(s)s",
            {"s": list(found)},
        )
        key_of = {k[0]: k[1:] for k in keys}
        meter_titles = [r[2] for r in rows if r[2]]
        counters: dict[str, tuple[int, int]] = {}
        if meter_titles:
            _, crows = self.store.query(
                "SELECT system_title, max(last_received), max(next_sent) "
                f"FROM {db}.invocation_counters "
                "WHERE system_title IN %(t)s GROUP BY system_title",
                {"t": meter_titles},
            )
            counters = {c[0]: (int(c[1]), int(c[2])) for c in crows}
        out = []
        for serial, model, title, node, ct, vt in rows:
            ek, ak, password, kek, pek, pak, vek, vak, until = key_of.get(
                serial, ("", "", "", "", "", "", "", "", 0)
            )
            last, nxt = counters.get(title, (-1, 0))
            out.append(
                {
                    "serial": serial,
                    "model": model,
                    "node_id": node,
                    "ct_ratio": float(ct),
                    "vt_ratio": float(vt),
                    "system_title": bytes.fromhex(title) if title else None,
                    "system_title_hex": title,
                    "ek": bytes.fromhex(ek) if ek else None,
                    "ak": bytes.fromhex(ak) if ak else None,
                    "password": bytes.fromhex(password) if password else None,
                    "kek": bytes.fromhex(kek) if kek else None,
                    "pending": [bytes.fromhex(pek), bytes.fromhex(pak)] if pek else None,
                    "previous": [bytes.fromhex(vek), bytes.fromhex(vak)] if vek else None,
                    "previous_until": int(until) if vek else 0,
                    "last_received": last,
                    "next_sent": nxt,
                }
            )
        return out, recent
