"""Polled values become rows the way pushed ones do (issue 18's first findings): a
register's scaler applied by the same Rust code as pushes, and a meter clock that does
not state its deviation read at the model's `default_deviation`."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from headend import codec
from headend.server.client import MeterClock, _registers, scaled

WH = 30  # the COSEM unit code of Wh (Blue Book unit table)


class FakeMeter:
    """Answers GET like a meter holding register 1.0.1.8.0.255 = 2301 at scaler -1."""

    serial = "E1"

    def __init__(self, clock: dict[str, Any]) -> None:
        self.clock = clock

    async def get(self, cls: int, obis: str, attr: int, **_: Any) -> Any:
        if cls == 8:
            return self.clock
        if attr == 3:
            return codec.data("structure", [codec.data("integer", -1), codec.data("enum", WH)])
        return codec.data("double-long-unsigned", 2301)


def test_a_polled_register_is_scaled_as_a_pushed_one() -> None:
    assert codec.unit_info(WH)[0] == "Wh"
    clock = codec.date_time(
        dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.timezone(dt.timedelta(hours=5)))
    )
    rows = asyncio.run(
        _registers(FakeMeter(clock), ["1.0.1.8.0.255"], "0.0.1.0.0.255", MeterClock())  # type: ignore[arg-type]
    )
    assert rows == [["1.0.1.8.0.255", 1_795_417_200, 230.1, "Wh", 0]]
    # The same number the push path's scaling gives (Rust units::scale), not the
    # float arithmetic the poll path used to do.
    assert rows[0][2] == codec.scale(2301.0, -1) == scaled(2301, -1)
    assert 2301 * 10.0**-1 != 230.1


def test_a_clock_without_deviation_is_read_at_the_models_default() -> None:
    unstated = {"type": "date-time", "value": {"iso": "2026-11-23T12:00:00", "deviation": None}}
    tashkent = MeterClock.of({"default_deviation": -300}).parse(unstated)
    elsewhere = MeterClock.of({"default_deviation": -240}).parse(unstated)
    assert tashkent.utcoffset() == dt.timedelta(hours=5)
    assert elsewhere.utcoffset() == dt.timedelta(hours=4)
    assert elsewhere.timestamp() - tashkent.timestamp() == 3600
