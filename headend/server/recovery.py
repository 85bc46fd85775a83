"""Meters a worker took with it: the store's view of which meters each worker holds
(from the workers' reports), and the load-profile reads that bring back what a worker
killed without a clean exit had read but not spooled.

A worker reports every second the meters identified or gone on its connections (all
of them after it connects to the store) and says "bye" when it exits cleanly. When its
channel closes without that, or a restarted worker says hello first, each meter it held
gets a low-priority `profile` command (requested by "recovery") from its last stored
push for `[commands] recovery_window` seconds of meter time: energy intervals are never
lost with a worker's sockets. Readings already stored are replaced by the same values.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from headend.commands import SCHEDULED
from headend.errors import HeadendError

if TYPE_CHECKING:
    from headend.server.store import StoreService

log = logging.getLogger("headend.store")

#: Seconds back a lost worker's meters' last push is looked for (a week).
LOOKBACK = 7 * 86_400


class Recovery:
    def __init__(self, svc: StoreService) -> None:
        self.svc = svc
        # Meters identified on each worker's connections, by worker id.
        self.meters_on: dict[int, set[str]] = {}
        # Profile reads queued after workers went away holding meters.
        self.reads = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def track(self, wid: int, msg: dict[str, Any]) -> None:
        """A worker's report: all its meters after it connects, then what changed."""
        if "meters_all" in msg:
            self.meters_on[wid] = set(msg["meters_all"])
            return
        on = self.meters_on.setdefault(wid, set())
        for serial, online in (msg.get("meters") or {}).items():
            if online:
                on.add(serial)
            else:
                on.discard(serial)

    def clean_exit(self, wid: int) -> None:
        """The worker said bye: its meters' connections were closed, nothing to read."""
        self.meters_on.pop(wid, None)

    def worker_gone(self, wid: int) -> None:
        """The worker went away without a bye: its meters' profiles are read back."""
        lost = self.meters_on.pop(wid, set())
        svc = self.svc
        if not lost or svc.stopping.is_set() or svc.cfg.commands.recovery_window <= 0:
            return
        task = asyncio.get_running_loop().create_task(self.recover(wid, lost))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def recover(self, wid: int, lost: set[str]) -> None:
        """Once what the worker spooled is in ClickHouse, a profile read per meter from
        its last stored push."""
        svc = self.svc
        loop = asyncio.get_running_loop()
        serials = sorted(lost)
        log.warning(
            "worker %d went away holding %d meters' connections: reading their load "
            "profiles from their last stored readings",
            wid,
            len(serials),
        )
        try:
            await svc.spool_ingested(time.monotonic())
            places = await loop.run_in_executor(None, svc.commands.nodes_of, serials)
            last = await loop.run_in_executor(None, self.last_pushed, serials)
        except Exception as e:
            log.error("recovery after worker %d: looking up its meters failed: %s", wid, e)
            return
        window = int(svc.cfg.commands.recovery_window)
        queued = 0
        for serial in serials:
            place = places.get(serial)
            since = last.get(serial)
            if place is None or since is None or not svc.owner.owns(place.region):
                continue
            try:
                svc.commands.submit(
                    serial,
                    "profile",
                    {"from": since, "to": since + window},
                    requested_by="recovery",
                    reason=f"worker {wid} went away with the meter's connection",
                    node_id=place.node_id,
                    address=place.address,
                    priority=SCHEDULED,
                    expires_in=svc.cfg.commands.expire,
                )
                queued += 1
            except HeadendError as e:
                log.warning("recovery read for %s not queued: %s", serial, e)
        self.reads += queued
        svc.commands.dispatch()
        log.info("recovery after worker %d: %d profile reads queued", wid, queued)

    def last_pushed(self, serials: list[str]) -> dict[str, int]:
        """Each meter's newest pushed reading (Unix seconds) within LOOKBACK; a query:
        an executor. A meter that pushed nothing for longer is left to the scheduler's
        backfill (the lookup reads only the days it names: readings are partitioned by
        day)."""
        svc = self.svc
        out: dict[str, int] = {}
        since = int(svc.clock.now()) - LOOKBACK
        for i in range(0, len(serials), 10_000):
            _, rows = svc.store.query(
                f"SELECT meter, toInt64(max(ts)) FROM {svc.db}.readings "
                "WHERE meter IN {m:Array(String)} AND source = 'push' "
                "AND ts >= toDateTime({since:Int64}) GROUP BY meter",
                {"m": serials[i : i + 10_000], "since": since},
            )
            out.update({str(m): int(t) for m, t in rows})
        return out
