"""What opens work orders (`headend.workorders`): the causes found among the meters a
node owns, each a `Finding` with since when and its evidence. One query per cause,
each proportional to its window or to the fleet (``meter_seen`` is one row per meter),
never to the months stored."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from headend import replacements
from headend.anomalies import TAMPER_EVENTS
from headend.clock import Clock
from headend.config import WorkOrdersConfig
from headend.ownership import Ownership
from headend.store.imports import SqlAccess

LOW_BATTERY = ("battery-low",)
TAMPER = (*TAMPER_EVENTS, "case-opened")
"""The alarms that send a crew: the openings and fields, not their endings."""
SWITCHING = ("disconnect", "reconnect")
MIN_SILENT_GROUP = 3


@dataclass
class Finding:
    """A cause found on a meter: since when, and the evidence for the crew."""

    cause: str
    serial: str
    since: int
    evidence: dict[str, Any] = field(default_factory=dict)


def lit(values: Iterable[str]) -> str:
    """Validated or stored names as a SQL list of string literals."""
    return ", ".join("'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'" for v in values)


class Causes:
    def __init__(
        self,
        store: SqlAccess,
        db: str,
        cfg: WorkOrdersConfig,
        owner: Ownership,
        clock: Clock,
    ) -> None:
        self.store = store
        self.db = db
        self.cfg = cfg
        self.owner = owner
        self.clock = clock

    def find(self, now: float) -> tuple[list[Finding], int]:
        """Every cause among the owned meters; and how many silent meters were left
        to outages."""
        since = int(now - self.cfg.lookback)
        found: list[Finding] = []
        found += self._suspects(since)
        silent, outage = self.silent()
        found += silent
        found += self._events(since, "tamper", f"name IN ({lit(TAMPER)})")
        found += self._events(since, "low_battery", f"name IN ({lit(LOW_BATTERY)})")
        found += self._battery(since)
        found += self._failed(since, "switch_failed", SWITCHING)
        found += self._failed(since, "clock_uncorrected", ("clock",))
        return found, outage

    def _suspects(self, since: int) -> list[Finding]:
        _, rows = self.store.query(
            f"SELECT meter, toInt64(argMax(window_start, window_end)), "
            f"toInt64(max(window_end)), argMax(score, window_end), argMax(rules, window_end), "
            f"argMax(evidence, window_end), argMax(node_loss_pct, window_end) "
            f"FROM {self.db}.anomalies WHERE window_end > toDateTime({since}) GROUP BY meter"
        )
        out = []
        for meter, start, end, score, rules, evidence, loss in rows:
            try:
                ev = json.loads(evidence) if evidence else {}
            except ValueError:
                ev = {"text": evidence}
            out.append(
                Finding(
                    "theft_suspect",
                    meter,
                    int(start),
                    {
                        "window": [int(start), int(end)],
                        "score": int(score),
                        "rules": list(rules),
                        "node_loss_pct": round(float(loss), 2),
                        "evidence": ev,
                    },
                )
            )
        return out

    def silent(self) -> tuple[list[Finding], int]:
        """Meters not heard for `silent_after` (by arrival, in real time), without
        those whose grid node fell silent as a whole."""
        real_now = time.time()
        cut = int(real_now - self.clock.real_seconds(self.cfg.silent_after))
        _, rows = self.store.query(
            f"SELECT m.serial, m.node_id, toInt64(s.last), toInt64(m.first) FROM "
            f"(SELECT serial, argMax(node_id, updated_at) AS node_id, "
            f"argMax(region, updated_at) AS region, min(updated_at) AS first "
            f"FROM {self.db}.meters WHERE serial NOT IN {replacements.retired_sql(self.db)} "
            f"GROUP BY serial HAVING {self.owner.sql('region')}) AS m "
            f"LEFT JOIN (SELECT meter, max(last_received) AS last FROM {self.db}.meter_seen "
            f"GROUP BY meter) AS s ON s.meter = m.serial"
        )
        per_node: dict[str, int] = defaultdict(int)
        silent: list[tuple[str, str, int, bool]] = []
        for serial, node, last, first in rows:
            per_node[node] += 1
            heard = int(last) > 0
            if (last if heard else first) < cut:
                silent.append((serial, node, int(last) if heard else int(first), heard))
        quiet: dict[str, int] = defaultdict(int)
        for _, node, _, _ in silent:
            quiet[node] += 1
        out, outage = [], 0
        for serial, node, last, heard in silent:
            n = quiet[node]
            if n >= MIN_SILENT_GROUP and n >= self.cfg.outage_share * per_node[node]:
                outage += 1
                continue
            since = int(self.clock.at(last))
            out.append(
                Finding(
                    "silent",
                    serial,
                    since,
                    {"last_heard": since} if heard else {"never_heard": True, "imported": since},
                )
            )
        return out, outage

    def _events(self, since: int, cause: str, where: str) -> list[Finding]:
        _, rows = self.store.query(
            f"SELECT meter, toInt64(max(ts)), groupUniqArray(name), count() "
            f"FROM {self.db}.events WHERE ts >= toDateTime({since}) AND {where} "
            f"AND {self.owner.meters_sql(self.db, 'meter')} GROUP BY meter"
        )
        return [
            Finding(cause, meter, int(last), {"events": sorted(names), "count": int(n)})
            for meter, last, names, n in rows
        ]

    def _battery(self, since: int) -> list[Finding]:
        """Meters whose latest battery voltage, reported since `since`, is below
        `battery_low_volts` (one row per meter: `meter_battery`)."""
        _, rows = self.store.query(
            f"SELECT meter, argMaxMerge(volts) AS v, toInt64(max(last_ts)) AS t "
            f"FROM {self.db}.meter_battery WHERE {self.owner.meters_sql(self.db, 'meter')} "
            f"GROUP BY meter HAVING t >= {int(since)} AND v < {float(self.cfg.battery_low_volts)}"
        )
        return [
            Finding(
                "low_battery",
                meter,
                int(t),
                {"volts": round(float(v), 3), "below": self.cfg.battery_low_volts},
            )
            for meter, v, t in rows
        ]

    def _failed(self, since: int, cause: str, kinds: Sequence[str]) -> list[Finding]:
        """Meters whose last finished command of `kinds` failed."""
        _, rows = self.store.query(
            f"SELECT m, argMax(command_id, t), argMax(k, t), argMax(st, t), "
            f"argMax(err, t), toInt64(max(t)) FROM ("
            f"SELECT command_id, any(serial) AS m, any(kind) AS k, "
            f"argMax(state, ts) AS st, argMax(error, ts) AS err, max(ts) AS t "
            f"FROM {self.db}.commands WHERE requested_at >= toDateTime64({since}, 3) "
            f"AND kind IN ({lit(kinds)}) AND {self.owner.meters_sql(self.db)} "
            f"GROUP BY command_id HAVING st IN ('done', 'failed')"
            f") GROUP BY m"
        )
        return [
            Finding(cause, serial, int(t), {"command": cid, "kind": kind, "error": error})
            for serial, cid, kind, state, error, t in rows
            if state == "failed"
        ]
