"""The store's clock: real time, or the simulated fleet's faster time.

In the demo the fleet's meters live in simulated time (a day in a few minutes), so
"now" for the balances window, the scheduler, the billing policy and "today" in the
situation room must be the fleet's time too; the `[clock]` settings say how it runs.
Everything that measures real durations (timeouts, retries, rates) keeps real time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from headend.config import ClockConfig


@dataclass(frozen=True)
class Clock:
    speed: float = 1.0
    start: float = 0.0
    anchor: float = 0.0

    @classmethod
    def from_config(cls, cfg: ClockConfig) -> Clock:
        return cls(cfg.speed, cfg.start, cfg.anchor)

    @property
    def real(self) -> bool:
        return self.speed == 1.0 and self.start == 0.0

    def now(self) -> float:
        return self.at(time.time())

    def at(self, real: float) -> float:
        """This clock's time at the real (wall-clock) time `real`: for what was stamped
        with the machine's time, such as a reading's arrival."""
        return real if self.real else self.start + (real - self.anchor) * self.speed

    def real_at(self, t: float) -> float:
        """The real (wall-clock) time at which this clock shows `t` (`at`'s inverse)."""
        return t if self.real else self.anchor + (t - self.start) / self.speed

    def real_seconds(self, simulated: float) -> float:
        """How long `simulated` seconds take in real time."""
        return simulated / self.speed
