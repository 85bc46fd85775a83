"""A replaced meter keeps the consumer's history whole, on a hand-computed day: the old
meter is read hourly until it is taken away at 12:30 (its register then 17.5 kWh), the
new one (100 kWh when put in) from 13:00; the consumer uses 1 kWh an hour all day and
so does a neighbour; the transformer's balance meter sees 2 kWh an hour."""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path
from typing import Any

import pytest

from headend import anomalies, balance, codec, profiles
from headend.clock import Clock
from headend.config import REPO_ROOT, WorkOrdersConfig
from headend.ownership import Ownership
from headend.people import Principal
from headend.replacements import ReplacementError
from headend.store.db import Store, migrate
from headend.store.imports import import_grid, import_meters
from headend.workorders import Book

H = 3600
GRID = """node_id,parent_id,level,commodity,name,admin_unit,lat,lon
UZ,,republic,any,Uzbekistan,UZ,41.3,69.2
TAS,UZ,region,any,Tashkent city,TAS,41.31,69.28
D-1,TAS,district,any,Yunusobod,TAS,41.36,69.28
TR-1,D-1,transformer,electricity,TP-1,TAS,41.36,69.29
"""
HEADER = "serial,kind,role,node_id,account_id,model,system_title,ek,ak,password,lat,lon\n"


def _meters(path: Path, rows: list[tuple[str, str, str]]) -> str:
    lines = [
        f"{s},electricity,{role},TR-1,{acc},e1ph,{os.urandom(8).hex().upper()},"
        f"{os.urandom(16).hex()},{os.urandom(16).hex()},,41.3,69.3\n"
        for s, role, acc in rows
    ]
    path.write_text(HEADER + "".join(lines))
    return str(path)


def test_a_replaced_meter_joins_the_old_meters_last_reading_to_the_new_ones_first(
    tmp_path: Path,
) -> None:
    st = Store(f"chdb://{tmp_path / 'db'}", "ami").connect()
    migrate(st)
    (tmp_path / "grid.csv").write_text(GRID)
    assert not import_grid(tmp_path / "grid.csv", st).bad
    models = profiles.kinds(profiles.load_all(REPO_ROOT / "protocols" / "profiles"))
    master = codec.MasterKey(bytes(range(32)))
    first = [("BX", "balance", "ACC-BX"), ("O", "consumer", "ACC-O"), ("K", "consumer", "ACC-K")]
    assert not import_meters(Path(_meters(tmp_path / "m.csv", first)), st, master, models).bad

    t0 = (int(time.time()) // 86_400 - 2) * 86_400  # a whole day two days ago (UTC)
    swap = t0 + 12 * H + 1800
    samples: list[tuple[str, int, float]] = []
    for k in range(25):
        t = t0 + k * H
        samples += [("BX", t, 2000.0 * k), ("K", t, 1000.0 * k)]
        if t < swap:
            samples.append(("O", t, 5000.0 + 1000.0 * k))
        else:
            samples.append(("N", t, 100_000.0 + 1000.0 * (t - swap) / H))
    obis = balance.obis_int(balance.ELECTRICITY_IMPORT)
    cols = ["meter", "obis", "ts", "value", "unit", "status", "source", "quality", "received_at"]
    st.insert_rows(
        "readings",
        cols,
        [
            [m, obis, when, v, "Wh", 0, "push", "measured", when]
            for m, t, v in samples
            for when in [dt.datetime.fromtimestamp(t, dt.UTC)]
        ],
    )

    who = Principal.system("crew-lead", "test", "test")
    book = Book(st, "ami", WorkOrdersConfig(), Ownership("n1", "standalone", set()), Clock())
    order = book.create(who, "O", "meter display dead: replace it")
    book.change(who, order.order_id, "assign", to="crew 4")
    close: dict[str, Any] = {"outcome": "replaced", "new_serial": "N", "replaced_at": swap}
    # The new meter must be imported (with its keys, in the old one's place) first.
    with pytest.raises(ReplacementError, match="meter N is not imported with its keys"):
        book.change(who, order.order_id, "close", old_final=17.5, new_initial=100.0, **close)
    new = [("N", "consumer", "ACC-O")]
    assert not import_meters(Path(_meters(tmp_path / "n.csv", new)), st, master, models).bad
    with pytest.raises(ReplacementError, match="needs old_final"):
        book.change(who, order.order_id, "close", new_initial=100.0, **close)
    with pytest.raises(ReplacementError, match="below the old meter's last stored register 17"):
        book.change(who, order.order_id, "close", old_final=16.0, new_initial=100.0, **close)
    done = book.change(who, order.order_id, "close", old_final=17.5, new_initial=100.0, **close)
    assert (done.state, done.outcome, done.new_serial, done.replaced_at) == (
        "closed",
        "replaced",
        "N",
        swap,
    )
    _, rows = st.query(
        "SELECT meter, toInt64(ts) - %(s)s, value FROM ami.readings WHERE source = 'manual' "
        "ORDER BY meter, ts",
        {"s": swap},
    )
    # As read on site at the swap; and the registers off the grid: the new one's before
    # (at 12:00), the old one's after (at 13:00).
    assert rows == [
        ("N", -1800, 100_000.0),
        ("N", 0, 100_000.0),
        ("O", 0, 17_500.0),
        ("O", 1800, 17_500.0),
    ]

    balance.recompute(st, t0, t0 + 24 * H, now=time.time())
    _, rows = st.query(
        "SELECT toInt64(interval_start), sum(value), groupArray(meter) FROM ami.consumption "
        "FINAL WHERE meter IN ('O', 'N') AND obis = %(o)s GROUP BY 1 ORDER BY 1",
        {"o": obis},
    )
    # 1 kWh every hour: the swap's hour is half the old meter's, half the new one's.
    assert [round(v, 6) for _, v, _ in rows] == [1.0] * 24, [
        ((t - t0) // H, v, m) for t, v, m in rows if round(v, 6) != 1.0 or len(m) > 1
    ] + [len(rows)]
    assert sorted(rows[12][2]) == ["N", "O"]
    _, rows = st.query(
        "SELECT round(input, 6), round(output, 6), round(loss, 6), measured, expected "
        "FROM ami.balances FINAL WHERE node_id = 'TR-1' ORDER BY period_start"
    )
    # Two places (the neighbour, and the old and new meter as one) and the balance meter.
    assert rows == [(2.0, 2.0, 0.0, 3, 3)] * 24

    # The old meter is not silent after it was taken away, and its hours after (the new
    # one's before) say nothing of theft.
    silent, _ = book.causes.silent()
    assert "O" not in {f.serial for f in silent}
    off = anomalies.unavailable(st, ["O", "N"], {"O": "TR-1", "N": "TR-1"}, t0, t0 + 24 * H)
    assert min(off["O"]) == t0 + 12 * H
    assert max(off["N"]) == t0 + 12 * H
    st.close()
