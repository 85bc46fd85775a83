"""The scheduler: scheduled work queued as low-priority commands (gap backfill, clock
checks, daily reads of registers, profile and event log), bounded per pass. The queue
itself is `headend/commands.py`."""

from __future__ import annotations

import time
from typing import Any

from headend import balance
from headend.commands import SCHEDULED, CommandQueue, latest_meters
from headend.config import CommandsConfig


class Scheduler:
    """Queues scheduled work as low-priority commands, bounded per pass:

    - gap backfill: meters whose consumption in the last `backfill_days` has estimated
      hours (data missing) get a load-profile read over those hours; once the readings
      are in, the next recomputation turns the estimates into measurements;
    - clock checks: meters whose clock was not checked within `clock_check_days` (by
      the `commands` table, so the schedule survives restarts) get a clock job, which
      sets the clock when it drifted beyond `clock_threshold`.
    """

    def __init__(self, queue: CommandQueue, cfg: CommandsConfig) -> None:
        self.queue = queue
        self.cfg = cfg
        self.db = queue.db
        self.full = False  # the last pass found a full batch of some kind

    def pass_due(self, elapsed: float) -> bool:
        """Whether the next pass is due, `elapsed` seconds after the last: after
        `schedule_interval`, or, when the last pass left more due, as soon as half a
        batch of scheduled commands or fewer wait (a fleet of millions is read in many
        batches a day, as fast as its meters answer)."""
        if elapsed >= self.cfg.schedule_interval:
            return True
        return self.full and self.queue.scheduled_waiting <= self.cfg.schedule_batch // 2

    def candidates(self, now: float) -> dict[str, list[tuple[Any, ...]]]:
        """What is due, by kind: (serial, node, args) rows (queries: an executor).
        `now` is the data's time (the store's clock) for the backfill window; clock
        checks are spaced in real time, like the `commands` rows they are read from."""
        since = int(now - self.cfg.backfill_days * 86_400)
        _, gaps = self.queue.store.query(
            f"SELECT c.meter, any(m.node_id), toInt64(min(c.interval_start)), "
            f"toInt64(max(c.interval_start)) "
            f"FROM {self.db}.consumption AS c FINAL "
            f"INNER JOIN {latest_meters(self.db, self.queue.owner)} AS m ON m.serial = c.meter "
            f"WHERE c.interval_start >= toDateTime({{since:Int64}}) AND c.quality = 'estimated' "
            f"GROUP BY c.meter ORDER BY c.meter LIMIT {{n:UInt32}}",
            {"since": since, "n": self.cfg.schedule_batch},
        )
        threshold = {"threshold": self.cfg.clock_threshold}
        daily = self._due("daily", self.cfg.daily_read_days)
        starts = self._daily_starts([serial for serial, _ in daily], since, int(now))
        clock = self._due("clock", self.cfg.clock_check_days)
        self.full = max(len(gaps), len(daily), len(clock)) >= self.cfg.schedule_batch
        return {
            # The profile entries that close the first and last estimated hour.
            "profile": [
                (serial, node, {"from": int(first) - 3600, "to": int(last) + 3600})
                for serial, node, first, last in gaps
            ],
            "clock": [(serial, node, threshold) for serial, node in clock],
            "daily": [(serial, node, starts[serial]) for serial, node in daily],
        }

    def _due(self, kind: str, every_days: float) -> list[tuple[Any, ...]]:
        """Meters with no `kind` command queued, done or failed within `every_days`
        (real time), longest waiting first; none when `every_days` is 0.

        A meter whose command is still waiting is not due, so meters that never answer
        (their commands expire) cannot fill every pass's batch and starve the rest:
        they are asked again once per period, behind the meters never asked."""
        if every_days <= 0:
            return []
        now = time.time()
        _, rows = self.queue.store.query(
            f"SELECT m.serial, m.node_id FROM {latest_meters(self.db, self.queue.owner)} AS m "
            f"LEFT JOIN (SELECT serial, max(ts) AS last FROM {self.db}.commands "
            f"WHERE kind = {{kind:String}} AND state IN ('queued', 'done', 'failed') "
            # Older activity does not matter (such meters are due); the bound keeps the
            # scan to the recent partitions.
            f"AND requested_at >= toDateTime64({{window:Int64}}, 3) "
            f"GROUP BY serial) AS k ON k.serial = m.serial "
            f"WHERE k.last < toDateTime64({{due:Int64}}, 3) "
            f"ORDER BY k.last, m.serial LIMIT {{n:UInt32}}",
            {
                "kind": kind,
                "due": int(now - every_days * 86_400),
                "window": int(now - 4 * every_days * 86_400),
                "n": self.cfg.schedule_batch,
            },
        )
        return rows

    def _daily_starts(self, serials: list[str], since: int, now: int) -> dict[str, dict[str, int]]:
        """Where each meter's daily read starts: after its last stored interval of
        energy or gas volume, and after its last stored meter event (at most
        `backfill_days` back)."""
        if not serials:
            return {}
        _, last_reading = self.queue.store.query(
            f"SELECT meter, toInt64(max(ts)) FROM {self.db}.readings "
            "WHERE meter IN {m:Array(String)} AND obis IN {o:Array(UInt64)} "
            # Older ones would start the read at `since` all the same; the bound keeps
            # the lookup to the days it needs (readings are partitioned by day).
            "AND ts >= toDateTime({since:Int64}) GROUP BY meter",
            {
                "m": serials,
                "o": [balance.obis_int(o) for o in balance.FLOW.values()],
                "since": since,
            },
        )
        _, last_event = self.queue.store.query(
            f"SELECT meter, toInt64(max(ts)) FROM {self.db}.events "
            "WHERE meter IN {m:Array(String)} "
            "AND source IN ('push', 'event-notification', 'poll') GROUP BY meter",
            {"m": serials},
        )
        readings = dict(last_reading)
        events = dict(last_event)
        return {
            s: {
                "profile_from": max(since, int(readings.get(s, since)) + 1),
                "events_from": max(since, int(events.get(s, since)) + 1),
                "to": now,
            }
            for s in serials
        }

    def queue_due(self, due: dict[str, list[tuple[Any, ...]]]) -> dict[str, int]:
        """Queues what :meth:`candidates` found, skipping meters that already have such
        a command waiting (on the event loop)."""
        reasons = {
            "profile": "backfill estimated consumption",
            "clock": "clock check",
            "daily": "daily read: billing registers, load profile and event log since the last",
        }
        expires = {
            "clock": self.cfg.clock_check_days * 86_400,
            "daily": self.cfg.daily_read_days * 86_400,
        }
        out = {}
        for kind, rows in due.items():
            n = 0
            for serial, node, args in rows:
                if self.queue.pending(serial, kind):
                    continue
                self.queue.submit(
                    serial,
                    kind,
                    args,
                    requested_by="scheduler",
                    reason=reasons[kind],
                    priority=SCHEDULED,
                    node_id=node,
                    expires_in=expires.get(kind),
                )
                n += 1
            out[kind] = n
        return out
