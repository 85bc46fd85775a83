"""Polled values become rows the way pushed ones do (issue 18's first findings): a
register's scaler applied by the same Rust code as pushes, and a meter clock that does
not state its deviation read at the model's `default_deviation`."""

from __future__ import annotations

import asyncio
import datetime as dt
import struct
from typing import Any

import pytest

from headend import codec
from headend.errors import LocalProtocolError
from headend.server.client import MeterClock, _registers, scaled

WH = 30  # the COSEM unit code of Wh (Blue Book unit table)
VOLT = 35


class FakeMeter:
    """Answers GET like a meter holding register 1.0.1.8.0.255 = 2301 at scaler -1."""

    serial = "E1"

    def __init__(self, clock: dict[str, Any], unit: int = WH) -> None:
        self.clock = clock
        self.unit = unit

    async def get(self, cls: int, obis: str, attr: int, **_: Any) -> Any:
        if cls == 8:
            return self.clock
        if attr == 3:
            return codec.data(
                "structure", [codec.data("integer", -1), codec.data("enum", self.unit)]
            )
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


def test_a_ct_meters_polled_register_is_primary_as_its_pushes() -> None:
    """A meter on a 200/5 A CT and a 10 kV/100 V VT: its voltage 2301 at scaler -1
    (230.1 V secondary) is 23,010 V pushed, and the same polled."""
    from server_harness import Meter

    from headend import profiles
    from headend.config import REPO_ROOT

    d = codec.Directory(require_authentication=False)
    for p in profiles.load_all(REPO_ROOT / "protocols" / "profiles"):
        d.add_profile(p)
    meter = d.add_meter("P1", "e1ph", ct_ratio=40.0, vt_ratio=100.0)
    assert d.ratios(meter) == (40.0, 100.0)
    # Pushed: the e1ph push carries the voltage 2301 at scaler -1.
    sink = codec.RowSink()
    session = codec.Session("10.0.0.1:50000", "auto", 4096, 16)
    events = session.feed(codec.wrap(Meter("P1", "e1ph").push(0), 1, 1), 1_800_000_000, d, sink)
    assert isinstance(events[0], codec.Identified), events
    pushed = sink.drain()[0]
    # Polled: the register's value and scaler_unit read from the meter.
    clock = codec.date_time(dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC))
    rows = asyncio.run(
        _registers(FakeMeter(clock, VOLT), ["1.0.32.7.0.255"], "0.0.1.0.0.255", MeterClock())  # type: ignore[arg-type]
    )
    assert rows[0][2:4] == [230.1, "V"]
    assert d.to_primary(meter, rows) == 1
    assert rows[0][2] == 23_010.0
    assert struct.pack("<d", 23_010.0) in pushed  # the pushed row holds the same double
    assert struct.pack("<d", 230.1) not in pushed
    # Counts and frequencies have no ratio; a direct meter's rows are left alone.
    other = [["0.0.96.3.10.255", 0, 1.0, "count", 0]]
    assert d.to_primary(meter, other) == 0
    assert other[0][2] == 1.0
    direct = d.add_meter("P2", "e1ph")
    same = [["1.0.32.7.0.255", 0, 230.1, "V", 0]]
    assert d.to_primary(direct, same) == 0
    assert same[0][2] == 230.1
    with pytest.raises(LocalProtocolError, match="CT ratio 0"):
        d.add_meter("P3", "e1ph", ct_ratio=0.0)
