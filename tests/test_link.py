"""The pieces of the link between region nodes and the centre, without processes:
the [node] settings, ownership, the outbox and its envelopes, the centre's routing of
master data (keys re-wrapped per receiving node), and applying a peer's records."""

from __future__ import annotations

import datetime as dt
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from headend import codec, profiles
from headend.config import ConfigError, from_dict, load
from headend.link.down import DownRouter, apply_insert, keep_changed_keys, rewrap_keys
from headend.link.keys import NodeSecrets, load_node_key, public_hex
from headend.link.natsconf import server_config
from headend.link.outbox import (
    DOWN_TABLES,
    UP,
    UP_TABLES,
    Envelope,
    Outbox,
    UpTap,
    frame,
    pending,
    unframe,
)
from headend.link.service import BadRecord
from headend.ownership import NATIONAL, Ownership, regions_of
from headend.store import keyring, spool
from headend.store.db import Store, migrate
from headend.store.imports import import_grid, import_meters

GRID = """node_id,parent_id,level,commodity,name,admin_unit,lat,lon
UZ,,republic,any,Uzbekistan,UZ,41.3,64.6
UZ-GEN,UZ,generation,electricity,Generation,UZ,41,64.5
UZ-SA,UZ,region,any,Samarkand,SA,39.6,66.9
SA-D1,UZ-SA,district,any,Samarkand d1,SA-D01,39.6,66.9
SA-T1,SA-D1,transformer,electricity,T1,SA-D01,39.6,66.9
UZ-FA,UZ,region,any,Fergana,FA,40.4,71.8
FA-T1,UZ-FA,transformer,electricity,T1,FA,40.4,71.8
"""
HEADER = "serial,kind,role,node_id,account_id,model,system_title,ek,ak,password,lat,lon\n"


def node_cfg(tmp: Path, name: str, role: str, text: str = "") -> Any:
    f = tmp / f"{name}.toml"
    f.write_text(f'[node]\nname = "{name}"\nrole = "{role}"\n{text}')
    return load(f, tmp / name)


def keys_for(tmp: Path, *names: str) -> dict[str, str]:
    out = {}
    for n in names:
        cfg = load(None, tmp / n)
        out[n] = public_hex(load_node_key(cfg, create=True))
    return out


def federation(tmp: Path) -> dict[str, Any]:
    """Configurations of a centre, sa (UZ-SA) and fa (UZ-FA, sa standing by)."""
    k = keys_for(tmp, "centre", "sa", "fa")
    peers = (
        f'[[peers]]\nname = "sa"\nrole = "region"\nregions = ["UZ-SA"]\npublic_key = "{k["sa"]}"\n'
        f'[[peers]]\nname = "fa"\nrole = "region"\nregions = ["UZ-FA"]\npublic_key = "{k["fa"]}"\n'
        'standby = "sa"\n'
    )
    centre_peer = f'[[peers]]\nname = "centre"\nrole = "centre"\npublic_key = "{k["centre"]}"\n'
    return {
        "centre": node_cfg(tmp, "centre", "centre", peers),
        "sa": node_cfg(
            tmp, "sa", "region", f'regions = ["UZ-SA"]\nupstream = "c:7422"\n{centre_peer}'
        ),
        "fa": node_cfg(
            tmp, "fa", "region", f'regions = ["UZ-FA"]\nupstream = "c:7422"\n{centre_peer}'
        ),
    }


def test_node_settings_are_checked(tmp_path: Path) -> None:
    cfgs = federation(tmp_path)
    assert cfgs["sa"].node.regions == ("UZ-SA",)
    assert [p.name for p in cfgs["centre"].peers] == ["sa", "fa"]
    # Through a child process's JSON and back, lists and all.
    again = from_dict(cfgs["centre"].to_dict())
    assert again.peers == cfgs["centre"].peers
    assert again.node == cfgs["centre"].node
    key = "0" * 64
    for text, message in (
        ('regions = ["UZ-SA"]\n', "needs \\[node\\] upstream"),
        ('upstream = "c:1"\n', "needs \\[node\\] regions"),
        ('regions = "UZ-SA"\nupstream = "c:1"\n', "regions must be a list of strings"),
        (
            'regions = ["UZ-SA"]\nupstream = "c:1"\n[[peers]]\nname = "c"\nrole = "centre"\n'
            'public_key = "xyz"\n',
            "public_key must be 64 hex digits",
        ),
        (
            f'regions = ["UZ-SA"]\nupstream = "c:1"\n[[peers]]\nname = "c"\nrole = "boss"\n'
            f'public_key = "{key}"\n',
            "choose one of centre, region",
        ),
    ):
        with pytest.raises(ConfigError, match=message):
            node_cfg(tmp_path, "r", "region", text)
    twice = (
        f'[[peers]]\nname = "a"\nregions = ["UZ-SA"]\npublic_key = "{key}"\n'
        f'[[peers]]\nname = "b"\nregions = ["UZ-SA"]\npublic_key = "{key}"\n'
    )
    with pytest.raises(ConfigError, match="owned by both a and b"):
        node_cfg(tmp_path, "c", "centre", twice)


def test_regions_are_found_up_the_tree_and_ownership_filters() -> None:
    tree = {
        "UZ": ("", "republic"),
        "UZ-GEN": ("UZ", "generation"),
        "UZ-SA": ("UZ", "region"),
        "D1": ("UZ-SA", "district"),
        "T1": ("D1", "transformer"),
        "LOOP1": ("LOOP2", "feeder"),
        "LOOP2": ("LOOP1", "feeder"),
        "LOST": ("NOWHERE", "feeder"),
    }
    assert regions_of(tree) == {
        "UZ": NATIONAL,
        "UZ-GEN": NATIONAL,
        "UZ-SA": "UZ-SA",
        "D1": "UZ-SA",
        "T1": "UZ-SA",
        "LOOP1": NATIONAL,
        "LOOP2": NATIONAL,
        "LOST": NATIONAL,
    }
    standalone = Ownership("h", "standalone", set())
    assert standalone.owns("UZ-XX")
    assert standalone.sql() == "1"
    region = Ownership("sa", "region", {"UZ-SA"}, {"UZ-SA": "sa"})
    assert region.sql("m.region") == "m.region IN ('UZ-SA')"
    assert not region.owns(NATIONAL)
    assert not region.accepts("UZ-FA")
    assert "not owned by this node (sa owns UZ-SA)" in region.why_not("meter M", "UZ-FA")
    assert region.assign({"UZ-FA": "fa"}) == (set(), set())
    assert "which node fa owns" in region.why_not("meter M", "UZ-FA")
    # The centre hands UZ-FA to sa (its standby) and later back: sa acts on it, then not.
    assert region.assign({"UZ-FA": "sa"}) == ({"UZ-FA"}, set())
    assert region.owns("UZ-FA")
    assert region.sql() == "region IN ('UZ-FA', 'UZ-SA')"
    assert region.assign({"UZ-FA": "fa"}) == (set(), {"UZ-FA"})
    assert not region.owns("UZ-FA")
    centre = Ownership("c", "centre", {NATIONAL}, {NATIONAL: "c", "UZ-SA": "sa"})
    assert centre.owns(NATIONAL)
    assert not centre.owns("UZ-SA")
    assert centre.accepts("UZ-SA")
    assert not centre.accepts("UZ-QQ")
    assert "which no node owns" in centre.why_not("meter M", "UZ-QQ")


def test_envelopes_and_the_outbox_keep_what_was_written(tmp_path: Path) -> None:
    when = dt.datetime(2026, 12, 1, 10, 30, 15, 250_000, tzinfo=dt.UTC)
    env = Envelope(
        "rows",
        "fa",
        "billing_accounts",
        ["account_id", "debt", "overdue_since", "protected", "note", "updated_at"],
        "centre/abc",
        rows=2,
        data=[
            ["A1", 5000.5, dt.date(2026, 10, 1), True, "", when],
            ["A2", math.nan, None, False, "née", when],
        ],
    )
    back = Envelope.decode(env.encode())
    assert back.data[0] == env.data[0]
    assert math.isnan(back.data[1][1])
    assert back.data[1][2:] == env.data[1][2:]
    assert (back.kind, back.dest, back.table, back.token, back.rows) == (
        "rows",
        "fa",
        "billing_accounts",
        "centre/abc",
        2,
    )
    dest, created, body = unframe(frame(env))
    assert (dest, round(created, 3), Envelope.decode(body).table) == (
        "fa",
        round(env.created, 3),
        "billing_accounts",
    )
    for bad in (b"", b"garbage", Envelope("rows", "x").encode()[:-3]):
        with pytest.raises(ValueError, match="link record"):
            Envelope.decode(bad)
    with pytest.raises(TypeError, match="cannot send a set"):
        Envelope("rows", "x", data=[{1}]).encode()
    box = Outbox(tmp_path / "out", "store")
    box.append(
        [env, Envelope("binary", UP, "readings", ["meter"], "t", fmt="RowBinary", data=b"x")]
    )
    box.close()
    backlog = pending(tmp_path / "out")
    assert backlog.bytes > 0
    assert backlog.rows == 2  # the rows record's two, the binary one's none
    assert backlog.oldest == pytest.approx(env.created, abs=0.001)
    (seg,) = spool.segments(tmp_path / "out", named=True)["store"]
    assert oct(seg.stat().st_mode & 0o777) == "0o600"
    records = list(spool.read_records(seg, 0))
    assert [unframe(r.payload)[0] for r in records] == ["fa", UP]


@pytest.fixture
def centre_store(tmp_path: Path) -> Iterator[tuple[Store, Any, dict[str, Any], codec.MasterKey]]:
    """The centre's store with the grid and three meters imported through its tap."""
    cfgs = federation(tmp_path)
    cfg = cfgs["centre"]
    owner = Ownership.from_config(cfg)
    master = codec.MasterKey(os.urandom(32))
    router = DownRouter(
        cfg, owner, Outbox(tmp_path / "outbox", "store"), NodeSecrets.load(cfg), master
    )
    store = Store(f"chdb://{tmp_path / 'ch'}", tap=router).connect()
    router.store = store
    migrate(store)
    (tmp_path / "grid.csv").write_text(GRID)
    assert import_grid(tmp_path / "grid.csv", store, owner=owner).bad == []
    ek, ak = "00112233445566778899AABBCCDDEEFF", "FFEEDDCCBBAA99887766554433221100"
    (tmp_path / "meters.csv").write_text(
        HEADER
        + f"S1,electricity,consumer,SA-T1,ACC1,e1ph,5345000000000001,{ek},{ak},,39.6,66.9\n"
        + f"F1,electricity,consumer,FA-T1,ACC2,e1ph,5345000000000002,{ek},{ak},,40.4,71.8\n"
        + "G1,electricity,balance,UZ-GEN,,e3ph,,,,,41,64.5\n"
    )
    models = profiles.kinds(profiles.load_all(cfg.profiles_dir))
    report = import_meters(tmp_path / "meters.csv", store, master, models, owner=owner)
    assert report.bad == []
    yield store, router, cfgs, master
    store.close()


def _outbox(router: DownRouter) -> list[Envelope]:
    router.outbox.close()
    segs = spool.segments(router.outbox.root, named=True)["store"]
    return [Envelope.decode(unframe(r.payload)[2]) for s in segs for r in spool.read_records(s, 0)]


def test_the_centre_sends_master_data_to_its_owner_and_standby(
    centre_store: tuple[Store, Any, dict[str, Any], codec.MasterKey], tmp_path: Path
) -> None:
    store, router, cfgs, master = centre_store
    assert store.query("SELECT serial, region FROM ami.meters FINAL ORDER BY serial")[1] == [
        ("F1", "UZ-FA"),
        ("G1", ""),
        ("S1", "UZ-SA"),
    ]
    sent = _outbox(router)
    by = {(e.dest, e.table): e for e in sent}
    # The grid: each region's nodes to its owner (and fa's to its standby sa); the
    # nodes above the regions stay at the centre.
    assert sorted(r[0] for r in by[("sa", "grid_nodes")].data) == [
        "FA-T1",
        "SA-D1",
        "SA-T1",
        "UZ-FA",
        "UZ-SA",
    ]
    assert sorted(r[0] for r in by[("fa", "grid_nodes")].data) == ["FA-T1", "UZ-FA"]
    assert sorted(r[0] for r in by[("sa", "meters")].data) == ["F1", "S1"]
    assert [r[0] for r in by[("fa", "meters")].data] == ["F1"]
    assert not any(r[0] == "G1" for e in sent for r in e.data if e.table == "meters")
    assert {e.dest for e in sent} == {"sa", "fa"}
    # Keys: re-wrapped for each receiver, under the key only it and the centre derive.
    centre = NodeSecrets.load(cfgs["centre"])
    cols = by[("fa", "meter_keys")].columns
    for dest in ("sa", "fa"):
        rows = by[(dest, "meter_keys")].data
        link = centre.link_key(dest)
        assert {r[cols.index("master_key")] for r in rows} == {link.fingerprint}
        # They come off under this link's key, as the receiving node does it...
        mine = NodeSecrets.load(cfgs[dest]).link_key("centre")
        assert mine.fingerprint == link.fingerprint
        local = codec.MasterKey(os.urandom(32))
        moved = rewrap_keys(cols, rows, mine, local)
        assert {r[cols.index("master_key")] for r in moved} == {local.fingerprint}
        # ...and not under the other region's or the centre's own master key.
        other = centre.link_key("sa" if dest == "fa" else "fa")
        for wrong in (other, master):
            with pytest.raises(BadRecord, match="do not unwrap"):
                rewrap_keys(cols, rows, wrong, local)
    # Accounts go where their meters are.
    router.outbox = Outbox(tmp_path / "outbox2", "store")
    store.insert_rows(
        "billing_accounts",
        ["account_id", "debt", "overdue_since", "protected", "note", "updated_at"],
        [
            ["ACC1", 10.0, None, False, "", dt.datetime.now(dt.UTC)],
            ["ACC2", 20.0, None, False, "", dt.datetime.now(dt.UTC)],
            ["ACC9", 30.0, None, False, "", dt.datetime.now(dt.UTC)],
        ],
    )
    accounts = {(e.dest, r[0]) for e in _outbox(router) for r in e.data}
    assert accounts == {("sa", "ACC1"), ("sa", "ACC2"), ("fa", "ACC2")}


def test_imports_refuse_rows_of_regions_the_node_does_not_own(tmp_path: Path) -> None:
    cfg = federation(tmp_path)["sa"]
    owner = Ownership.from_config(cfg)
    owner.assign({"UZ-FA": "fa"})
    store = Store(f"chdb://{tmp_path / 'ch'}").connect()
    migrate(store)
    (tmp_path / "grid.csv").write_text(GRID)
    try:
        _refused(tmp_path, cfg, owner, store)
    finally:
        store.close()


def _refused(tmp_path: Path, cfg: Any, owner: Ownership, store: Store) -> None:
    rep = import_grid(tmp_path / "grid.csv", store, owner=owner)
    # The nodes above the regions are kept as the tree's root; fa's are refused.
    assert rep.loaded == 5
    assert [line for line, _ in rep.bad] == [7, 8]
    assert "grid node UZ-FA is in region UZ-FA, which node fa owns" in rep.lines()[0]
    (tmp_path / "meters.csv").write_text(
        HEADER
        + "S1,electricity,consumer,SA-T1,ACC1,e1ph,,,,,39.6,66.9\n"
        + "G1,electricity,balance,UZ-GEN,,e3ph,,,,,41,64.5\n"
    )
    models = profiles.kinds(profiles.load_all(cfg.profiles_dir))
    rep = import_meters(
        tmp_path / "meters.csv", store, codec.MasterKey(os.urandom(32)), models, owner=owner
    )
    assert rep.loaded == 1
    assert "meter G1 (on UZ-GEN) is in above the regions (national)" in rep.lines()[0]


def test_a_regions_writes_reach_its_outbox_first_and_apply_once(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "out", "store")
    # One embedded engine per process: the centre is another database of it.
    region = Store(f"chdb://{tmp_path / 'ch'}", tap=UpTap(box, "sa")).connect()
    migrate(region)
    centre = Store(f"chdb://{tmp_path / 'ch'}", "centre").connect()
    migrate(centre)
    try:
        _round_trip(tmp_path, box, region, centre)
    finally:
        centre.close()
        region.close()


def _round_trip(tmp_path: Path, box: Outbox, region: Store, centre: Store) -> None:
    when = dt.datetime(2026, 12, 1, 10, 0, tzinfo=dt.UTC)
    cols = ["window_start", "window_end", "meter", "node_id", "score", "rules", "evidence"]
    cols += ["node_loss_pct", "computed_at"]
    row = [when, when, "S1", "T1", 3, ["low_vs_peers"], "{}", 9.5, when]
    region.insert_rows("anomaly_findings", cols, [row])
    region.delete("anomaly_findings", {"window_start": when, "window_end": when})
    region.insert_rows("anomaly_findings", cols, [[*row[:2], "S2", *row[3:]]])
    region.insert_rowbinary("readings", ["meter"], b"", "round-1")  # nothing: still recorded
    region.insert_rows(
        "late_readings", ["meter", "hour", "arrived", "rows"], [["S1", when, when, 1]]
    )
    box.close()
    (seg,) = spool.segments(tmp_path / "out", named=True)["store"]
    envs = [Envelope.decode(unframe(r.payload)[2]) for r in spool.read_records(seg, 0)]
    assert [(e.kind, e.table) for e in envs] == [
        ("rows", "anomaly_findings"),
        ("delete", "anomaly_findings"),
        ("rows", "anomaly_findings"),
        ("binary", "readings"),
    ]
    assert all(e.dest == UP and e.token.startswith("sa/") for e in envs)
    for e in envs[:3]:
        apply_insert(centre, "sa", e, UP_TABLES)
        apply_insert(centre, "sa", e, UP_TABLES)  # twice: the token keeps it once
    got = centre.query("SELECT meter FROM centre.anomaly_findings")[1]
    assert got == [("S2",)]
    for bad, message in (
        (Envelope("rows", UP, "users", ["name"], "t", data=[["x"]]), "does not travel"),
        (Envelope("rows", UP, "meters", ["serial; DROP"], "t", data=[["x"]]), "bad column"),
        (Envelope("rows", UP, "meters", ["serial"], "t", data=[["x", "y"]]), "do not match"),
        (Envelope("delete", UP, "meters", data={}), "without column"),
        (Envelope("binary", UP, "readings", ["meter"], "t", fmt="CSV", data=b""), "format"),
    ):
        with pytest.raises(BadRecord, match=message):
            apply_insert(centre, "sa", bad, UP_TABLES)
    assert "meter_keys" in DOWN_TABLES
    assert "meter_keys" in UP_TABLES  # a region's rotations, re-wrapped (below)


def test_a_regions_rotated_keys_go_up_rewrapped_and_on_to_its_standby_only(
    centre_store: tuple[Store, Any, dict[str, Any], codec.MasterKey], tmp_path: Path
) -> None:
    _, router, cfgs, centre_master = centre_store
    fa_master = codec.MasterKey(os.urandom(32))
    fa_link = NodeSecrets.load(cfgs["fa"]).link_key("centre")
    box = Outbox(tmp_path / "fa-out", "store")
    tap = UpTap(box, "fa", rewrap=lambda cols, rows: rewrap_keys(cols, rows, fa_master, fa_link))
    new_ek, new_ak = os.urandom(16), os.urandom(16)
    cols = ["serial", "system_title", "ek", "ak", "password", "source", "master_key"]
    row = [
        "F1",
        "5345000000000002",
        fa_master.wrap(new_ek, "ek", "F1", os.urandom(12)).hex(),
        fa_master.wrap(new_ak, "ak", "F1", os.urandom(12)).hex(),
        "",
        "rotation",
        fa_master.fingerprint,
    ]
    tap.rows("meter_keys", cols, [row], None)
    tap.binary("meter_keys", cols, b"bulk", "Native", None, rows=1)  # a restore: stays home
    box.close()
    (seg,) = spool.segments(tmp_path / "fa-out", named=True)["store"]
    (env,) = [Envelope.decode(unframe(r.payload)[2]) for r in spool.read_records(seg, 0)]
    assert (env.dest, env.table) == (UP, "meter_keys")
    # Under the link's key, not the region's master: only the centre can take them off.
    assert env.data[0][cols.index("master_key")] == fa_link.fingerprint
    with pytest.raises(BadRecord, match="do not unwrap"):
        rewrap_keys(cols, env.data, NodeSecrets.load(cfgs["centre"]).link_key("sa"), fa_master)
    at_centre = rewrap_keys(
        cols, env.data, NodeSecrets.load(cfgs["centre"]).link_key("fa"), centre_master
    )
    # Passed on to fa's region's other node (its standby sa), never back to fa.
    router.outbox = Outbox(tmp_path / "centre-out", "store")
    router.rows("meter_keys", cols, at_centre, env.token, skip="fa")
    (down,) = _outbox(router)
    assert down.dest == "sa"
    sa_link = NodeSecrets.load(cfgs["sa"]).link_key("centre")
    local = codec.MasterKey(os.urandom(32))
    (moved,) = rewrap_keys(cols, down.data, sa_link, local)
    assert moved[cols.index("source")] == "rotation"
    assert moved[cols.index("master_key")] == local.fingerprint


def test_the_nats_configuration_names_only_the_peers(tmp_path: Path) -> None:
    cfgs = federation(tmp_path)
    centre = NodeSecrets.load(cfgs["centre"])
    text = server_config(cfgs["centre"], centre)
    for peer in ("sa", "fa"):
        password = NodeSecrets.load(cfgs[peer]).leaf_password("centre")
        assert password == centre.leaf_password(peer)
        assert f'{{ user: "{peer}", password: "{password}" }}' in text
    assert 'domain: "centre"' in text
    assert "remotes" not in text
    region = server_config(cfgs["sa"], NodeSecrets.load(cfgs["sa"]))
    assert f"nats-leaf://sa:{centre.leaf_password('sa')}@c:7422" in region
    assert "leafnodes" in region
    assert 'listen: "0.0.0.0' not in region
    assert centre.local_password() != NodeSecrets.load(cfgs["sa"]).local_password()


def test_delivered_keys_from_the_centre_never_go_back_over_changed_ones(
    centre_store: tuple[Store, Any, dict[str, Any], codec.MasterKey],
) -> None:
    store, _, _, master = centre_store
    # S1's keys were changed here (by two admins, as a rotation would); F1's are as
    # delivered.
    (row,) = store.query(
        "SELECT serial, system_title, ek, ak FROM ami.meter_keys FINAL WHERE serial = 'S1'"
    )[1]
    keyring.replace(store, "S1", row[1], (row[2], row[3]), master.fingerprint)
    cols = ["serial", "ek", "source"]
    incoming = [["S1", "old", "import"], ["F1", "old", "import"], ["S1", "new", "rotation"]]
    assert keep_changed_keys(store, "ami", cols, incoming) == [
        ["F1", "old", "import"],
        ["S1", "new", "rotation"],  # a change made elsewhere (the standby's) goes in
    ]
    # Rows from a centre that says no source are delivered ones.
    assert keep_changed_keys(store, "ami", ["serial", "ek"], [["S1", "x"], ["F1", "y"]]) == [
        ["F1", "y"]
    ]
