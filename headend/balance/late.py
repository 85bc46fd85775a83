"""Late data: the hours whose readings arrived after their recompute, with the
meters concerned, taken oldest first in bounded runs."""

from __future__ import annotations

import logging

from headend.balance.common import HOUR, RawStore

log = logging.getLogger("headend.balance")


# Late data: at most this many meters are named per hour; beyond, every meter's
# consumption is recomputed (the store was away, a whole fleet's data is late).
LATE_METERS = 100_000
# The longest gap an estimate spans (the VEE's `max_estimate_span`, 62 days).
MAX_GAP = 62 * 86_400
# Seconds between a late reading's arrival (its insert block's now()) and the fetch
# that may count it: every block of an insert is visible well within this.
LATE_SETTLE = 10


class LateData:
    """Hours with readings that arrived after the recent window's recomputations had
    passed them (`late_readings`), with the meters concerned; the store takes them in
    a bounded number of hours per pass, oldest first, and keeps the rest for the next.

    ``None`` for an hour's meters means every meter."""

    def __init__(self, since: int) -> None:
        self.since = since  # arrivals from here on (Unix seconds, real time) not yet seen
        self.pending: dict[int, set[str] | None] = {}
        # Returning meters: their gap, from the last sample before it to by when the
        # sample that ended it came (the end of the window they came back in).
        self.gaps: dict[str, tuple[int, int]] = {}
        # Gaps already queued, by meter: the last sample before each. The periodic
        # pass names a returning meter on every pass while its window covers the
        # return; its gap is queued once.
        self.queued: dict[str, int] = {}

    def fetch(self, store: RawStore, before: int, oldest: int, until: int | None = None) -> int:
        """Adds the hours in [oldest, before) with readings that arrived since the last
        fetch and before `until` (default: `LATE_SETTLE` seconds ago by ClickHouse's
        clock, so a block still being written is not missed); returns how many hours
        are pending."""
        db = store.db
        if until is None:
            _, rows = store.query(f"SELECT toInt64(now()) - {LATE_SETTLE}")
            until = int(rows[0][0])
        if until <= self.since:
            return len(self.pending)
        _, rows = store.query(
            f"SELECT toInt64(hour), groupUniqArray({LATE_METERS + 1})(meter) "
            f"FROM {db}.late_readings WHERE arrived >= toDateTime({int(self.since)}) "
            f"AND arrived < toDateTime({int(until)}) "
            f"AND hour >= toDateTime({int(oldest)}) AND hour < toDateTime({int(before)}) "
            "GROUP BY hour"
        )
        for hour, meters in rows:
            have = self.pending.get(int(hour), set())
            if have is None or len(meters) > LATE_METERS:
                self.pending[int(hour)] = None
            else:
                have.update(meters)
                self.pending[int(hour)] = None if len(have) > LATE_METERS else have
        self.since = until
        return len(self.pending)

    def add_returning(self, returning: dict[str, int], window: tuple[int, int]) -> int:
        """The hours from each returning meter's last sample (`RecomputeReport.returning`)
        up to the start of `window`, the one it came back in: its gap, to be estimated
        now that the sample after it (somewhere in the window) exists. Returns how many
        hours are pending."""
        before, back = window
        for meter, last in returning.items():
            if self.queued.get(meter) == last:
                continue
            self.queued[meter] = last
            since, until = self.gaps.get(meter, (last, back))
            self.gaps[meter] = (min(since, last), max(until, back))
            h = last // HOUR * HOUR
            while h < before:
                have = self.pending.get(h, set())
                if have is not None:
                    have.add(meter)
                    self.pending[h] = None if len(have) > LATE_METERS else have
                h += HOUR
        # Forget gaps too old to be named again (the longest estimate, past the window).
        for meter, last in list(self.queued.items()):
            if last < before - MAX_GAP:
                del self.queued[meter]
        return len(self.pending)

    def margin(self, start: int, end: int, meters: list[str] | None, least: int) -> int:
        """The margin a recompute of [start, end) for `meters` reads around it: `least`,
        or enough to reach both samples around a returning meter's gap, so a gap longer
        than a pass's hours is estimated whole, piece by piece."""
        if meters is None:
            return least
        reach = [
            max(end_of - end, start - since)
            for m in meters
            if m in self.gaps
            for since, end_of in [self.gaps[m]]
        ]
        return max([least, *reach])

    def take(self, max_hours: int) -> list[tuple[int, int, list[str] | None]]:
        """Ranges to recompute, [start, end) with their meters, covering at most
        `max_hours` pending hours, oldest first. A late reading changes the intervals on
        either side of it, so each run of hours is widened by an hour before and two
        after."""
        if not self.pending:
            # Every gap was taken in by the ranges the last call gave.
            self.gaps.clear()
        hours = sorted(self.pending)[:max_hours]
        out: list[tuple[int, int, list[str] | None]] = []
        run: list[int] = []
        for h in [*hours, None]:
            if run and (h is None or h - run[-1] > 2 * HOUR):
                meters: set[str] | None = set()
                for x in run:
                    got = self.pending.pop(x)
                    meters = None if got is None or meters is None else meters | got
                out.append(
                    (run[0] - HOUR, run[-1] + 3 * HOUR, None if meters is None else sorted(meters))
                )
                run = []
            if h is not None:
                run.append(h)
        return out
