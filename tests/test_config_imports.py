"""Configuration loading and the CSV imports (bad rows reported, good rows loaded)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from headend import codec, profiles
from headend.config import REPO_ROOT, ConfigError, load
from headend.store.db import Store, migrate
from headend.store.imports import import_grid, import_meters, title_owners


def test_defaults_need_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HEADEND_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    cfg = load()
    assert cfg.server.port == 4059
    assert cfg.data_dir == tmp_path / "headend-data"
    assert cfg.dsn == f"chdb://{tmp_path / 'headend-data' / 'clickhouse'}"
    assert cfg.workers >= 1


def test_settings_are_checked_by_name_and_type(tmp_path: Path) -> None:
    f = tmp_path / "h.toml"
    f.write_text("[server]\nport = 5000\nworkers = 3\n[store]\ndsn = 'http://ch:8123'\n")
    cfg = load(f, tmp_path / "d")
    assert (cfg.server.port, cfg.workers, cfg.dsn) == (5000, 3, "http://ch:8123")
    for text, message in (
        ("[server]\nprot = 1\n", "unknown setting [server] prot"),
        ("[sever]\nport = 1\n", "unknown section [sever]"),
        ("[server]\nport = 'x'\n", "[server] port must be int"),
        ("[store]\nfsync = 'sometimes'\n", "choose one of always, interval, never"),
        ("[server]\nport = \n", "h.toml"),
    ):
        f.write_text(text)
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
            load(f, tmp_path / "d")


def test_the_annotated_example_loads() -> None:
    cfg = load(REPO_ROOT / "headend.example.toml", Path("/tmp/example-data"))
    assert cfg.server.port == 4059


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(f"chdb://{tmp_path / 'ch'}").connect()
    migrate(s)
    return s


GRID = """node_id,parent_id,level,commodity,name,admin_unit,lat,lon
UZ,,republic,any,Uzbekistan,UZ,41.3,69.2
T1,R1,transformer,electricity,T1,TAS,41.3,69.3
R1,UZ,region,any,Tashkent,TAS,41.3,69.2
X1,NOWHERE,feeder,electricity,lost,TAS,41,69
X2,UZ,planet,electricity,bad,TAS,41,69
X3,UZ,feeder,electricity,far,TAS,141,69
T1,R1,transformer,electricity,again,TAS,41.3,69.3
G1,UZ,gas_segment,gas,G1,TAS,,
"""


def test_grid_import_reports_bad_rows_and_loads_good_ones(tmp_path: Path, store: Store) -> None:
    (tmp_path / "grid.csv").write_text(GRID)
    r = import_grid(tmp_path / "grid.csv", store)
    assert r.loaded == 4
    assert r.lines() == [
        f"{tmp_path / 'grid.csv'}:5: parent_id NOWHERE is neither in the file nor in the store",
        f"{tmp_path / 'grid.csv'}:6: level 'planet' is not one of republic, region, city, district, generation, "
        "backbone_substation, distribution_substation, feeder, transformer, gas_station, gas_segment",
        f"{tmp_path / 'grid.csv'}:7: lat 141.0 is outside -90..90",
        f"{tmp_path / 'grid.csv'}:8: node_id T1 appears twice in the file",
    ]
    _, rows = store.query(
        "SELECT node_id, parent_id, lat FROM ami.grid_nodes FINAL ORDER BY node_id"
    )
    assert [r[:2] for r in rows] == [("G1", "UZ"), ("R1", "UZ"), ("T1", "R1"), ("UZ", "")]
    assert math.isnan(rows[0][2])
    # Re-import updates a node.
    (tmp_path / "g2.csv").write_text(
        GRID.splitlines()[0] + "\nT1,R1,transformer,electricity,TP-1 renamed,TAS,41.3,69.3\n"
    )
    assert import_grid(tmp_path / "g2.csv", store).loaded == 1
    _, rows = store.query("SELECT name FROM ami.grid_nodes FINAL WHERE node_id = 'T1'")
    assert rows == [("TP-1 renamed",)]


def test_meter_import_checks_every_field_and_wraps_keys(tmp_path: Path, store: Store) -> None:
    (tmp_path / "grid.csv").write_text(GRID)
    import_grid(tmp_path / "grid.csv", store)
    ek, ak = "00" * 16, "11" * 16
    header = "serial,kind,role,node_id,account_id,model,system_title,ek,ak,password,lat,lon"
    rows = [
        f"M1,electricity,consumer,T1,A1,e1ph,5A45000000000001,{ek},{ak},,41.3,69.3",
        "M2,electricity,consumer,T1,A2,e1ph,,,,secret,41.3,69.3",
        "M3,gas,consumer,G1,A3,gas-g4,,,,,41.3,69.3",
        "M4,electricity,consumer,T9,A4,e1ph,,,,,41,69",
        "M5,electricity,consumer,T1,A5,nosuch,,,,,41,69",
        "M6,gas,consumer,T1,A6,gas-g4,,,,,41,69",
        f"M7,electricity,consumer,T1,A7,e1ph,5A45000000000007,{ek},,,41,69",
        f"M8,electricity,consumer,T1,A8,e1ph,,{ek},{ak},,41,69",
        "M9,electricity,consumer,T1,A9,e1ph,XYZ,,,,41,69",
        "M10,electricity,consumer,T1,A10,e1ph,5A45000000000001,,,,41,69",
        "M1,electricity,consumer,T1,A1,e1ph,,,,,41,69",
        "M11,electricity,consumer,T1,A11,e3ph,,,,,41,69,extra",
    ]
    (tmp_path / "meters.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    master = codec.MasterKey(bytes(range(32)))
    models = profiles.kinds(profiles.load_all(REPO_ROOT / "protocols" / "profiles"))
    r = import_meters(tmp_path / "meters.csv", store, master, models)
    assert r.loaded == 3
    reasons = [reason for _, reason in r.bad]
    assert reasons == [
        "node_id 'T9' is not in grid_nodes (import the grid first)",
        "model 'nosuch' has no profile (known: e1ph, e3ph, gas-g4)",
        "a gas meter on electricity node T1",
        "give both ek and ak, or neither",
        "keys need the meter's system_title",
        "system_title must be 16 hex digits (8 bytes)",
        "system_title 5A45000000000001 is also meter M1's",
        "serial M1 appears twice in the file",
        "13 fields where the header has 12",
    ]
    assert [line for line, _ in r.bad] == [5, 6, 7, 8, 9, 10, 11, 12, 13]
    _, keys = store.query(
        "SELECT serial, ek, ak, password, master_key FROM ami.meter_keys FINAL ORDER BY serial"
    )
    by = {k[0]: k for k in keys}
    assert set(by) == {"M1", "M2", "M3"}
    # Wrapped, not plain, and unwrappable only with the master key into a directory.
    assert ek not in by["M1"][1].lower()
    assert by["M1"][4] == master.fingerprint
    assert by["M3"][1:4] == ("", "", "")
    d = codec.Directory()
    for p in profiles.load_all(REPO_ROOT / "protocols" / "profiles"):
        d.add_profile(p)
    d.add_meter(
        "M1",
        "e1ph",
        bytes.fromhex("5A45000000000001"),
        bytes.fromhex(by["M1"][1]),
        bytes.fromhex(by["M1"][2]),
        master,
    )
    with pytest.raises(Exception, match="authentication failed"):
        # The same wrapped key claimed by another meter does not unwrap.
        d.add_meter(
            "M2",
            "e1ph",
            bytes.fromhex("5A45000000000002"),
            bytes.fromhex(by["M1"][1]),
            bytes.fromhex(by["M1"][2]),
            master,
        )


def test_meter_ratios_are_read_as_fractions_or_numbers(tmp_path: Path, store: Store) -> None:
    """ct_ratio, vt_ratio: `200/5` or `40`; empty is a direct meter; nonsense, zero and
    ratios on gas meters are refused with the row named."""
    (tmp_path / "grid.csv").write_text(GRID)
    import_grid(tmp_path / "grid.csv", store)
    header = "serial,kind,role,node_id,account_id,model,system_title,ek,ak,password,lat,lon,"
    header += "ct_ratio,vt_ratio"
    rows = [
        "L1,electricity,consumer,T1,A1,e3ph,,,,,41,69,200/5,10000/100",
        "L2,electricity,consumer,T1,A2,e3ph,,,,,41,69,40,",
        "L3,electricity,consumer,T1,A3,e1ph,,,,,41,69,,",
        "L4,electricity,consumer,T1,A4,e3ph,,,,,41,69,200/0,",
        "L5,electricity,consumer,T1,A5,e3ph,,,,,41,69,,-100",
        "L6,gas,consumer,G1,A6,gas-g4,,,,,41,69,40,",
        "L7,electricity,consumer,T1,A7,e3ph,,,,,41,69,forty,",
    ]
    (tmp_path / "meters.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    master = codec.MasterKey(bytes(range(32)))
    models = profiles.kinds(profiles.load_all(REPO_ROOT / "protocols" / "profiles"))
    r = import_meters(tmp_path / "meters.csv", store, master, models)
    assert r.bad == [
        (5, "ct_ratio '200/0' is not a ratio (200/5 or 40)"),
        (6, "vt_ratio '-100' must be above 0 and at most 1e+06"),
        (7, "ct_ratio and vt_ratio are for electricity meters"),
        (8, "ct_ratio 'forty' is not a ratio (200/5 or 40)"),
    ]
    _, got = store.query("SELECT serial, ct_ratio, vt_ratio FROM ami.meters FINAL ORDER BY serial")
    assert got == [("L1", 40.0, 100.0), ("L2", 40.0, 1.0), ("L3", 1.0, 1.0)]


def test_a_system_title_moves_with_its_meter(tmp_path: Path, store: Store) -> None:
    """meter_titles finds meters by title; a title a meter gave up is free again and
    points to nobody."""
    (tmp_path / "grid.csv").write_text(GRID)
    import_grid(tmp_path / "grid.csv", store)
    header = "serial,kind,role,node_id,account_id,model,system_title,ek,ak,password,lat,lon\n"
    models = profiles.kinds(profiles.load_all(REPO_ROOT / "protocols" / "profiles"))
    master = codec.MasterKey(bytes(range(32)))

    def load(*rows: str) -> list[str]:
        (tmp_path / "m.csv").write_text(header + "\n".join(rows) + "\n")
        return [
            reason for _, reason in import_meters(tmp_path / "m.csv", store, master, models).bad
        ]

    t1, t2 = "5A45000000000001", "5A45000000000002"
    assert load(f"A,electricity,consumer,T1,A,e1ph,{t1},,,,41,69") == []
    assert title_owners(store, "ami", [t1, t2]) == {t1: "A"}
    assert load(f"B,electricity,consumer,T1,B,e1ph,{t1},,,,41,69") == [
        f"system_title {t1} already belongs to stored meter A"
    ]
    # A takes a new title; the old one is free for B.
    assert load(f"A,electricity,consumer,T1,A,e1ph,{t2},,,,41,69") == []
    assert title_owners(store, "ami", [t1, t2]) == {t2: "A"}
    assert load(f"B,electricity,consumer,T1,B,e1ph,{t1},,,,41,69") == []
    assert title_owners(store, "ami", [t1, t2]) == {t1: "B", t2: "A"}


def test_listening_meters_get_an_address(tmp_path: Path, store: Store) -> None:
    """The optional address column: stored in canonical form, a bad one rejects its
    row with the reason, and files without the column still load (no address)."""
    (tmp_path / "grid.csv").write_text(GRID)
    import_grid(tmp_path / "grid.csv", store)
    header = "serial,kind,role,node_id,account_id,model,system_title,ek,ak,password,lat,lon"
    models = profiles.kinds(profiles.load_all(REPO_ROOT / "protocols" / "profiles"))
    master = codec.MasterKey(bytes(range(32)))
    rows = [
        "L1,electricity,consumer,T1,A1,e1ph,,,,,41,69,10.2.0.7:4059",
        "L2,electricity,consumer,T1,A2,e1ph,,,,,41,69,hdlc://meter-2.example:5000",
        "L3,gas,consumer,G1,A3,gas-g4,,,,,41,69,wrapper://[fd00::7]:4059/3",
        "L4,electricity,consumer,T1,A4,e1ph,,,,,41,69,",
        "L5,electricity,consumer,T1,A5,e1ph,,,,,41,69,10.2.0.7",
        "L6,electricity,consumer,T1,A6,e1ph,,,,,41,69,ftp://10.2.0.7:21",
        "L7,electricity,consumer,T1,A7,e1ph,,,,,41,69,10.2.0.7:70000",
    ]
    (tmp_path / "m.csv").write_text(f"{header},address\n" + "\n".join(rows) + "\n")
    r = import_meters(tmp_path / "m.csv", store, master, models)
    assert r.loaded == 4
    assert [(line, reason) for line, reason in r.bad] == [
        (6, "address '10.2.0.7': expected HOST:PORT, got '10.2.0.7'"),
        (7, "address 'ftp://10.2.0.7:21': scheme 'ftp' is not wrapper:// or hdlc://"),
        (8, "port 70000 is outside 1..65535"),
    ]
    _, got = store.query("SELECT serial, address FROM ami.meters FINAL ORDER BY serial")
    assert got == [
        ("L1", "wrapper://10.2.0.7:4059/1"),
        ("L2", "hdlc://meter-2.example:5000/1/17"),
        ("L3", "wrapper://[fd00::7]:4059/3"),
        ("L4", ""),
    ]
    # Without the column: loaded, and the address is cleared.
    (tmp_path / "m.csv").write_text(f"{header}\n{rows[0].rsplit(',', 1)[0]}\n")
    r = import_meters(tmp_path / "m.csv", store, master, models)
    assert (r.loaded, r.bad) == (1, [])
    _, got = store.query("SELECT address FROM ami.meters FINAL WHERE serial = 'L1'")
    assert got == [("",)]


def test_empty_and_headerless_files(tmp_path: Path, store: Store) -> None:
    (tmp_path / "empty.csv").write_text("")
    assert import_grid(tmp_path / "empty.csv", store).lines() == [
        f"{tmp_path / 'empty.csv'}:1: the file is empty (a header line is expected)"
    ]
    (tmp_path / "nohead.csv").write_text("UZ,,republic,any,Uzbekistan,UZ,41,69\n")
    assert "header lacks column(s)" in import_grid(tmp_path / "nohead.csv", store).lines()[0]
    assert "cannot read the file" in import_grid(tmp_path / "missing.csv", store).lines()[0]


def test_the_example_names_every_setting() -> None:
    from dataclasses import fields

    from headend.config import SECTIONS

    text = (REPO_ROOT / "headend.example.toml").read_text()
    for section, cls in SECTIONS.items():
        assert f"[{section}]" in text
        for f in fields(cls):
            assert f"{f.name} = " in text, f"headend.example.toml lacks [{section}] {f.name}"
