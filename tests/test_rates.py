"""The push and reading rates people see are taken over a window of the workers'
reports, not over the last second: a fleet pushes in bursts."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from headend.server import store as store_mod
from headend.server.store import RATE_WINDOW, StoreService


def test_rates_cover_a_window_and_restart_with_the_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(store_mod.time, "monotonic", lambda: clock[0])
    svc = SimpleNamespace(rates={})

    def report(t: float, pushes: int) -> tuple[dict[str, float], float]:
        clock[0] = 1000.0 + t
        return StoreService._rates(svc, 0, {"pushes": pushes})  # type: ignore[arg-type]

    assert report(0, 0) == ({}, 0.0)
    # A burst of 600 pushes in the first second, then nothing for a minute: the rate
    # over the window is 10/s, where the last second alone would say 0 (or 600).
    assert report(1, 600) == ({"pushes": 600.0}, 1.0)
    for t in range(2, 61):
        rates, window = report(t, 600)
    assert window == 60.0
    assert rates == {"pushes": 10.0}
    # Older reports fall out of the window.
    rates, window = report(62, 600)
    assert window <= RATE_WINDOW + 1
    assert rates["pushes"] < 10.0
    # A restarted worker's counts begin again: no negative rate, a fresh window.
    assert report(63, 5) == ({}, 0.0)
    assert report(64, 15) == ({"pushes": 10.0}, 1.0)
