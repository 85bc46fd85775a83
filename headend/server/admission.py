"""Who may stay connected to a worker's meter port, and how refusals are told: the
worker's side of headend/server/sources.py (its limits, bans and tally) over the
worker's connections. The worker calls it when a connection opens, identifies a meter,
sends refused input or closes, and every second to tell what was refused.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from headend.server import sources

if TYPE_CHECKING:
    from headend.server.worker import MeterProtocol, Worker

log = logging.getLogger("headend.worker")

# What a refused connection is told in the events row, per reason.
REFUSALS = {
    "source-banned": "the address is banned for passing a limit",
    "source-rate": "too many new connections per second from the address",
    "source-untrusted": "too many connections without an identified meter from the address",
}
# Refusal lines logged per telling; the rest are summed in one line (all are in events).
LOG_LINES = 20


class Admission:
    def __init__(self, worker: Worker) -> None:
        self.w = worker
        self.cfg = worker.cfg.server
        self.guard = sources.SourceGuard(self.cfg)
        self.tally = sources.RefusalTally()
        # Connections on which no meter has been identified yet, oldest first.
        self.untrusted: dict[int, MeterProtocol] = {}
        self.told_at = 0.0

    def opened(self, proto: MeterProtocol) -> None:
        """An admitted connection starts (a dialled one is trusted from the start)."""
        if not proto.trusted:
            self.untrusted[proto.sid] = proto

    def trusted(self, proto: MeterProtocol) -> None:
        """A meter was identified on the connection."""
        if not proto.trusted:
            proto.trusted = True
            self.untrusted.pop(proto.sid, None)
            self.guard.trust(proto.addr)

    def closed(self, proto: MeterProtocol) -> None:
        self.untrusted.pop(proto.sid, None)
        if not proto.dialled:
            self.guard.release(proto.addr, proto.trusted)

    def admit(self, proto: MeterProtocol) -> bool:
        """Whether a new connection may stay: the worker is accepting, the source is
        within its limits, and there is room (a known meter address makes room by
        closing the oldest connection on which no meter was identified)."""
        now = time.time()
        addr = proto.addr
        if not self.w.accepting:
            self.refuse(addr, "draining", "the worker is shutting down", now)
            return False
        if proto.dialled:
            return True
        refusal = self.guard.admit(addr, now)
        if refusal is not None:
            self.refuse(addr, refusal, REFUSALS[refusal], now)
            return False
        full = len(self.w.connections) >= self.cfg.max_connections_per_worker
        if full and not (self.guard.known(addr) and self.evict_untrusted(addr, now)):
            self.guard.release(addr, trusted=False)
            self.refuse(addr, "capacity", "the worker holds its most connections", now)
            return False
        return True

    def refuse(self, addr: str, reason: str, message: str, now: float) -> None:
        """A connection refused at once: counted exactly, told in aggregate."""
        self.w.count_reject(reason)
        self.tally.add(addr, reason, "", message, now)

    def evict_untrusted(self, addr: str, now: float) -> bool:
        """Closes the oldest connection that has sent no valid frame, to make room for
        one from a known meter address (a connection whose pushes wait for a meter
        lookup is a meter coming back: closing it would lose what it sent)."""
        for sid, p in self.untrusted.items():
            if not p.closed and (p.session is None or p.session.stats["frames"] == 0):
                del self.untrusted[sid]
                self.w.count_reject("evicted")
                self.tally.add(
                    p.addr, "evicted", "", f"closed to make room for known address {addr}", now
                )
                self.w.close_reasons[p.sid] = "evicted"
                if p.transport is not None:
                    p.transport.abort()
                return True
        return False

    def on_bad(
        self, proto: MeterProtocol, reason: str, message: str, meter: str = "", counted: bool = True
    ) -> None:
        """Refused input on a connection: told in aggregate, held against its source
        (a ban closes the connection and the source's others without a meter), and a
        connection without a meter that keeps sending it is closed."""
        now = time.time()
        if not counted:
            self.w.count_reject(reason)
        self.tally.add(proto.addr, reason, meter, message, now)
        proto.bad += 1
        # A replay is what a meter sends again after losing a connection (a storm, a
        # worker gone): counted and told, not held against its address.
        held = not proto.dialled and reason != "replayed-invocation-counter"
        ban = self.guard.bad(proto.addr, now) if held else 0.0
        if ban:
            srv = self.cfg
            self.w.count_reject("source-banned")
            self.tally.add(
                proto.addr,
                "source-banned",
                "",
                f"banned for {ban:.0f} s: more than {srv.source_max_bad_frames} "
                "refused inputs in a minute",
                now,
            )
            proto.close("source-banned")
            for p in [p for p in self.untrusted.values() if p.addr == proto.addr]:
                p.close("source-banned")
        elif held and not proto.trusted and proto.bad >= self.cfg.max_bad_frames_per_connection:
            proto.close("bad-frames")

    def tell(self, final: bool = False) -> None:
        """One log line and one `events` row per source, reason and meter since the
        last telling (at most LOG_LINES lines, then a summary)."""
        now = time.time()
        due = now - self.told_at >= self.cfg.reject_report_interval
        if not len(self.tally) or not (due or final):
            return
        self.told_at = now
        rows = self.tally.take()
        for r in rows[:LOG_LINES]:
            who = f"{r.source} (meter {r.meter})" if r.meter else r.source
            log.warning(
                "%d refused from %s in %.0f s: %s: %s",
                r.count,
                who,
                max(1.0, r.last - r.first),
                r.reason,
                r.message,
            )
        if len(rows) > LOG_LINES:
            rest = rows[LOG_LINES:]
            log.warning(
                "%d more refused from %d more sources or reasons (in events)",
                sum(r.count for r in rest),
                len(rest),
            )
        self.w.sink.add_events(sources.event_rows(rows, now))
        self.w.mark_dirty()
