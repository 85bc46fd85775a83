"""The store's periodic balance pass: every `[store] balance_interval` the recent window's
consumption and balances are recomputed (late data inside it included), the hours
before it that late readings changed, and the gaps of meters back from a long silence,
are taken in for their meters (a bounded number per pass, oldest first), and every
`anomaly_interval` suspects are looked for."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Any, Protocol

from headend.balance import LateData
from headend.clock import Clock
from headend.config import Config
from headend.ownership import Ownership
from headend.store.db import Store

log = logging.getLogger("headend.store")

# Hours of late data one balance pass recomputes at most (the rest waits a pass).
LATE_HOURS_PER_PASS = 7 * 24


class Service(Protocol):
    """What the keeper reads of the store process (`StoreService`)."""

    cfg: Config
    clock: Clock
    store: Store
    owner: Ownership
    nodelink: Any  # NodeLink | None: hands over the hours its peers computed


class BalanceKeeper:
    def __init__(self, svc: Service) -> None:
        self.svc = svc

    async def run(self) -> None:
        """Recomputes the recent window's consumption and balances now and then, so
        they follow the data as it arrives (late data inside the window included); and,
        every `anomaly_interval`, looks for suspects under lossy transformers."""
        st = self.svc.cfg.store
        if st.balance_interval <= 0:
            return
        from headend import anomalies, balance

        loop = asyncio.get_running_loop()
        detected = time.monotonic()
        # Arrivals since shortly before the last pass of the previous run.
        late = balance.LateData(int(time.time() - 2 * st.balance_interval - 60))
        while True:
            await asyncio.sleep(st.balance_interval)
            now = self.svc.clock.now()
            end = balance.hour_floor(now) + 3600
            start = end - max(3600, st.balance_window)
            try:
                rep = await loop.run_in_executor(
                    None,
                    functools.partial(
                        balance.recompute, self.svc.store, start, end, now=now, owner=self.svc.owner
                    ),
                )
                # Meters back from a long silence: their gap is estimated with the late
                # hours, now that the sample after it exists.
                if rep.returning:
                    late.add_returning(rep.returning, (start, end))
                    log.info("%d meter(s) back from a silence: their gaps", len(rep.returning))
                if st.late_days > 0:
                    await loop.run_in_executor(
                        None, self.take_late, late, start, start - st.late_days * 86_400, now
                    )
            except Exception as e:
                log.error("recomputing balances failed (will retry): %s", e)
                continue
            if st.anomaly_interval > 0 and time.monotonic() - detected >= st.anomaly_interval:
                detected = time.monotonic()
                try:
                    det = await loop.run_in_executor(
                        None,
                        functools.partial(
                            anomalies.detect,
                            self.svc.store,
                            int(now) - st.anomaly_window,
                            int(now),
                            owner=self.svc.owner,
                            clock=self.svc.clock,
                        ),
                    )
                    log.info("anomaly detection: %s", det.summary())
                except Exception as e:
                    log.error("anomaly detection failed (will retry): %s", e)

    def take_late(self, late: LateData, before: int, oldest: int, now: float) -> None:
        """Recomputes the hours before the recent window that late readings changed, for
        the meters they came from (a bounded number of hours per pass)."""
        from headend import balance

        if self.svc.nodelink is not None:
            self.svc.nodelink.take_late_balances(before, oldest, now)
        if late.fetch(self.svc.store, before, oldest) == 0:
            return
        for start, end, meters in late.take(LATE_HOURS_PER_PASS):
            margin = late.margin(start, end, meters, balance.MARGIN)
            rep = balance.recompute(
                self.svc.store,
                start,
                end,
                now=now,
                meters=meters,
                owner=self.svc.owner,
                margin=margin,
            ).as_dict()
            who = "every meter" if meters is None else f"{len(meters)} meter(s)"
            log.info(
                "late data taken in: %s .. %s, %s: %d readings",
                rep["from"],
                rep["to"],
                who,
                rep["readings"],
            )
