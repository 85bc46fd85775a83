"""Rows read from meters by commands (load profiles, registers), on their way into
`readings` (source "poll"): those of the commands that end within BATCH_DELAY go in
one insert, so thousands of profile reads (a recovery, the daily reads) make a few
inserts a second instead of one each, which held pushes back.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from headend import codec
from headend.store import spool
from headend.store.db import Store
from headend.store.ingest import COLUMNS

# Seconds polled rows wait for others before they are inserted together.
BATCH_DELAY = 0.2

Row = tuple[Any, ...]


class PolledRows:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.total = 0
        self._pending: list[tuple[list[Row], asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None

    async def add(self, serial: str, rows: list[list[Any]]) -> int:
        """A command's rows ([obis, ts, value, unit, status] each); returns their count
        once they are in ClickHouse, or raises what the insert raised."""
        out = self.rows(serial, rows)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((out, fut))
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._flush())
        await fut
        return len(out)

    async def _flush(self) -> None:
        await asyncio.sleep(BATCH_DELAY)
        loop = asyncio.get_running_loop()
        while self._pending:
            batch, self._pending = self._pending, []
            rows = [r for out, _ in batch for r in out]
            try:
                await loop.run_in_executor(
                    None, self.store.insert_rows, "readings", COLUMNS[spool.READINGS], rows
                )
            except Exception as e:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            self.total += len(rows)
            for _, fut in batch:
                if not fut.done():
                    fut.set_result(None)

    @staticmethod
    def rows(serial: str, rows: list[list[Any]]) -> list[Row]:
        """`readings` rows of a meter's polled values."""
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        return [
            (
                serial,
                codec.obis_to_int(codec.parse_obis(obis)),
                dt.datetime.fromtimestamp(int(ts), dt.UTC),
                float(value),
                unit,
                int(status),
                "poll",
                "measured",
                now,
            )
            for obis, ts, value, unit, status in rows
        ]
