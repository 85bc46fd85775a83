"""The store's meter lookups (headend/server/lookups.py) on the embedded ClickHouse:
requests that arrive while a round runs are merged into one round; a meter is found
by system title or serial, with its wrapped keys, ratios and counters; a title it gave
up finds nobody; the counters still in the spool raise the stored ones."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import msgpack

from headend import codec, profiles
from headend.config import REPO_ROOT
from headend.server.lookups import CounterScanner, Lookups
from headend.store import spool
from headend.store.db import Store, migrate
from headend.store.imports import import_grid, import_meters

GRID = """node_id,parent_id,level,commodity,name,admin_unit,lat,lon
UZ,,republic,any,Uzbekistan,UZ,41.3,64.6
TK,UZ,region,any,Tashkent,TK,41.3,69.3
T1,TK,transformer,electricity,T1,TK,41.3,69.3
"""
TITLE = "5A45000000000001"


def test_lookups_merge_rounds_and_find_meters(tmp_path: Path) -> None:
    st = Store(f"chdb://{tmp_path / 'db'}", "ami").connect()
    migrate(st)
    (tmp_path / "grid.csv").write_text(GRID)
    assert not import_grid(tmp_path / "grid.csv", st).bad
    ek, ak = os.urandom(16).hex(), os.urandom(16).hex()
    header = "serial,kind,role,node_id,account_id,model,system_title,ek,ak,password,lat,lon,"
    header += "ct_ratio,vt_ratio\n"
    rows = f"M1,electricity,consumer,T1,A1,e3ph,{TITLE},{ek},{ak},,41.3,69.3,200/5,\n"
    rows += "M2,electricity,consumer,T1,A2,e1ph,,,,,41.3,69.3,,\n"
    (tmp_path / "meters.csv").write_text(header + rows)
    models = profiles.kinds(profiles.load_all(REPO_ROOT / "protocols" / "profiles"))
    assert not import_meters(tmp_path / "meters.csv", st, codec.MasterKey(bytes(32)), models).bad
    # A counter a worker spooled that ClickHouse has not taken in yet.
    root = tmp_path / "spool"
    w = spool.SpoolWriter(root, 0)
    w.append(
        [spool.encode_record(spool.COUNTERS, spool.MSGPACK, 1, msgpack.packb([[TITLE, 41, 7]]))]
    )
    w.close()
    lookups = Lookups(st, "ami", CounterScanner(root))

    async def both() -> list[dict[str, object]]:
        by_title = {"titles": [bytes.fromhex(TITLE), b"\x00" * 8], "serials": []}
        by_serial = {"titles": [], "serials": [b"M2", b"NOPE"]}
        return list(await asyncio.gather(lookups.answer(by_title), lookups.answer(by_serial)))

    a, b = asyncio.run(both())
    assert lookups.stats == {"rounds": 1, "requests": 2, "keys": 4}
    (m1,) = a["meters"]  # type: ignore[misc]
    assert (m1["serial"], m1["model"], m1["ct_ratio"], m1["vt_ratio"]) == ("M1", "e3ph", 40.0, 1.0)
    assert len(m1["ek"]) > 16  # wrapped (nonce and tag around it), not plain
    assert len(m1["ak"]) > 16
    assert (m1["last_received"], m1["next_sent"]) == (41, 7)  # from the spool
    assert a["unknown_titles"] == [b"\x00" * 8]
    assert [m["serial"] for m in b["meters"]] == ["M2"]  # type: ignore[attr-defined]
    assert b["unknown_serials"] == [b"NOPE"]
    st.close()
