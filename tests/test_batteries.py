"""Battery-powered meters' batteries, hand-computed: the latest voltage per meter from
`meter_battery` (kept by a materialized view on readings), the fall per year, the days
left, and a low-battery work order below `[workorders] battery_low_volts`."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from headend import codec, profiles, reports
from headend.clock import Clock
from headend.config import REPO_ROOT, WorkOrdersConfig
from headend.ownership import Ownership
from headend.store.db import Store, migrate
from headend.store.imports import import_grid, import_meters
from headend.workorder_causes import Causes

DAY = 86_400
GRID = """node_id,parent_id,level,commodity,name,admin_unit,lat,lon
UZ,,republic,any,Uzbekistan,UZ,41.3,64.6
TK,UZ,region,any,Tashkent,TK,41.3,69.3
GS,TK,gas_segment,gas,Segment,TK,41.3,69.3
"""
BATTERY = codec.obis_to_int(codec.parse_obis("0.0.96.6.3.255"))


def test_battery_levels_their_pace_and_low_battery_orders(tmp_path: Path) -> None:
    st = Store(f"chdb://{tmp_path / 'db'}", "ami").connect()
    migrate(st)
    (tmp_path / "grid.csv").write_text(GRID)
    assert not import_grid(tmp_path / "grid.csv", st).bad
    header = "serial,kind,role,node_id,account_id,model,system_title,ek,ak,password,lat,lon\n"
    body = "".join(f"{s},gas,consumer,GS,A-{s},gas-g4,,,,,41.3,69.3\n" for s in ("OLD", "NEW"))
    (tmp_path / "meters.csv").write_text(header + body)
    models = profiles.kinds(profiles.load_all(REPO_ROOT / "protocols" / "profiles"))
    assert not import_meters(tmp_path / "meters.csv", st, codec.MasterKey(bytes(32)), models).bad
    now = int(dt.datetime.now(dt.UTC).timestamp()) // DAY * DAY
    # OLD: 3.60 V a year ago, 3.25 V half a year ago, 3.10 V yesterday (0.5 V a year).
    # NEW: 3.62 V ten days ago and now (too short to have a pace).
    samples = [
        ("OLD", now - 365 * DAY, 3.60),
        ("OLD", now - 182 * DAY, 3.25),
        ("OLD", now - DAY, 3.10),
        ("NEW", now - 10 * DAY, 3.62),
        ("NEW", now, 3.62),
    ]
    rows: list[list[Any]] = []
    for meter, t, v in samples:
        when = dt.datetime.fromtimestamp(t, dt.UTC)
        rows.append([meter, BATTERY, when, v, "V", 0, "push", "measured", when])
    cols = ["meter", "obis", "ts", "value", "unit", "status", "source", "quality", "received_at"]
    st.insert_rows("readings", cols, rows)

    got_cols, got = reports.batteries(st, "ami", low_volts=3.2)
    by = {r[0]: dict(zip(got_cols, r, strict=True)) for r in got}
    assert [r[0] for r in got] == ["OLD", "NEW"]  # lowest first
    old = by["OLD"]
    assert (old["volts"], old["first_volts"], old["low"]) == (3.1, 3.6, True)
    assert old["volts_per_year"] == 0.5017  # 0.5 V over 364 days: x 365.25 / 364
    assert old["days_left"] == 0
    new = by["NEW"]
    assert (new["volts"], new["volts_per_year"], new["days_left"], new["low"]) == (
        3.62,
        None,
        None,
        False,
    )
    assert reports.batteries(st, "ami", low_volts=3.2, regions=("UZ-XX",))[1] == []

    causes = Causes(st, "ami", WorkOrdersConfig(), Ownership("n1", "standalone", set()), Clock())
    low = causes._battery(now - 2 * DAY)
    assert [(f.cause, f.serial, f.evidence) for f in low] == [
        ("low_battery", "OLD", {"volts": 3.1, "below": 3.2})
    ]
    # A voltage last reported before the pass's lookback is no finding.
    assert causes._battery(now) == []
    st.close()
