"""CSV imports of the grid and the meters (formats in DESIGN.md section 7).

Every row is checked; a bad row is reported with file, line and reason and skipped;
good rows are loaded; nothing half-loads silently. Re-importing a row updates it (the
tables keep the latest ``updated_at``). Meter keys are wrapped under the master key
here, before they leave this process.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from headend import meter_address
from headend.codec import MasterKey
from headend.keys import wrap
from headend.levels import LEVELS
from headend.ownership import NATIONAL, Ownership, regions_of

GRID_COLUMNS = ["node_id", "parent_id", "level", "commodity", "name", "admin_unit", "lat", "lon"]
METER_COLUMNS = [
    "serial",
    "kind",
    "role",
    "node_id",
    "account_id",
    "model",
    "system_title",
    "ek",
    "ak",
    "password",
    "lat",
    "lon",
]
# Columns a meters file may leave out (then empty): where a listening meter is reached,
# the meter's master key (KEK, 32 hex digits), which new keys are sent under, and its
# instrument transformers' ratios (`200/5` or `40`; empty: a direct meter).
OPTIONAL_METER_COLUMNS = ["address", "kek", "ct_ratio", "vt_ratio"]
MAX_RATIO = 1e6
COMMODITIES = ("electricity", "gas", "any")
KINDS = ("electricity", "gas")
ROLES = ("consumer", "balance")
ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,63}$")
HEX = re.compile(r"^[0-9A-Fa-f]*$")
CHUNK = 20_000


class SqlAccess(Protocol):
    """What an import needs of the store: queries and inserts (the store directly, or
    the running server through its admin socket)."""

    def query(
        self, sql: str, params: dict[str, Any] | None = None
    ) -> tuple[list[str], list[tuple[Any, ...]]]: ...

    def insert_rows(
        self,
        table: str,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        token: str | None = None,
    ) -> None: ...


@dataclass
class ImportReport:
    file: str
    loaded: int = 0
    bad: list[tuple[int, str]] = field(default_factory=list)
    # Meters whose keys the head-end has changed since they were delivered (rotated,
    # or changed by admins): the file's keys are older and were not put back.
    kept_keys: list[str] = field(default_factory=list)
    # Records already stored as they are (a payment sent again): not counted twice.
    repeated: int = 0

    def lines(self) -> list[str]:
        out = [f"{self.file}:{line}: {reason}" for line, reason in self.bad]
        if self.repeated:
            out.append(f"{self.file}: {self.repeated} already recorded, not counted again")
        if self.kept_keys:
            shown = ", ".join(self.kept_keys[:10])
            more = f" and {len(self.kept_keys) - 10} more" if len(self.kept_keys) > 10 else ""
            out.append(
                f"{self.file}: kept the stored keys of {len(self.kept_keys)} meters whose keys "
                f"the head-end changed since delivery ({shown}{more}); the file's are older"
            )
        return out


def _read(
    path: Path, columns: list[str], report: ImportReport, optional: Sequence[str] = ()
) -> Iterable[tuple[int, dict[str, str]]]:
    try:
        f = open(path, newline="", encoding="utf-8-sig")  # noqa: SIM115 - closed below
    except OSError as e:
        report.bad.append((0, f"cannot read the file: {e.strerror}"))
        return
    with f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            report.bad.append((1, "the file is empty (a header line is expected)"))
            return
        except (csv.Error, UnicodeDecodeError) as e:
            report.bad.append((1, f"unreadable header: {e}"))
            return
        header = [h.strip() for h in header]
        missing = [c for c in columns if c not in header]
        if missing:
            report.bad.append(
                (1, f"header lacks column(s) {', '.join(missing)}; expected {','.join(columns)}")
            )
            return
        extra = [h for h in header if h not in columns and h not in optional]
        absent = {c: "" for c in optional if c not in header}
        if extra:
            report.bad.append((1, f"unknown column(s) {', '.join(extra)} ignored"))
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except (csv.Error, UnicodeDecodeError) as e:
                report.bad.append((reader.line_num, f"unreadable line: {e}"))
                continue
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(header):
                report.bad.append(
                    (reader.line_num, f"{len(row)} fields where the header has {len(header)}")
                )
                continue
            yield (
                reader.line_num,
                {**absent, **{h: v.strip() for h, v in zip(header, row, strict=True)}},
            )


def _coord(text: str, name: str, lo: float, hi: float) -> float:
    if text == "":
        return math.nan
    try:
        v = float(text)
    except ValueError:
        raise ValueError(f"{name} {text!r} is not a number") from None
    if not (lo <= v <= hi):
        raise ValueError(f"{name} {v} is outside {lo}..{hi}")
    return v


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def import_grid(
    path: Path, store: SqlAccess, db: str = "ami", owner: Ownership | None = None
) -> ImportReport:
    """`owner`: what this node owns; rows of other regions are refused naming their
    owner (nodes above the regions are kept everywhere as the tree's root)."""
    report = ImportReport(str(path))
    _, existing = store.query(f"SELECT node_id, parent_id, level FROM {db}.grid_nodes FINAL")
    known = {r[0] for r in existing}
    tree: dict[str, tuple[str, str]] = {r[0]: (r[1], r[2]) for r in existing}
    rows: list[tuple[int, list[Any]]] = []
    seen: set[str] = set()
    for line, r in _read(path, GRID_COLUMNS, report):
        try:
            node = r["node_id"]
            if not ID.match(node):
                raise ValueError(f"node_id {node!r} must be 1-64 letters, digits or _.:/-")
            if node in seen:
                raise ValueError(f"node_id {node} appears twice in the file")
            if r["level"] not in LEVELS:
                raise ValueError(f"level {r['level']!r} is not one of {', '.join(LEVELS)}")
            if r["commodity"] not in COMMODITIES:
                raise ValueError(
                    f"commodity {r['commodity']!r} is not one of {', '.join(COMMODITIES)}"
                )
            parent = r["parent_id"]
            if parent == node:
                raise ValueError("a node cannot be its own parent")
            if not parent and r["level"] != "republic":
                raise ValueError(
                    f"only the republic has no parent; this {r['level']} needs a parent_id"
                )
            lat = _coord(r["lat"], "lat", -90, 90)
            lon = _coord(r["lon"], "lon", -180, 180)
        except ValueError as e:
            report.bad.append((line, str(e)))
            continue
        seen.add(node)
        rows.append(
            (line, [node, parent, r["level"], r["commodity"], r["name"], r["admin_unit"], lat, lon])
        )
    # Parents may come later in the file or already be stored.
    good = []
    names = known | seen
    tree.update({row[0]: (row[1], row[2]) for _, row in rows})
    region = regions_of(tree)
    for line, row in rows:
        if row[1] and row[1] not in names:
            report.bad.append((line, f"parent_id {row[1]} is neither in the file nor in the store"))
            continue
        where = region.get(row[0], NATIONAL)
        if owner is not None and where != NATIONAL and not owner.accepts(where):
            report.bad.append((line, owner.why_not(f"grid node {row[0]}", where)))
            continue
        good.append([*row, where])
    now = _now()
    for i in range(0, len(good), CHUNK):
        store.insert_rows(
            "grid_nodes",
            [*GRID_COLUMNS, "region", "updated_at"],
            [[*g, now] for g in good[i : i + CHUNK]],
        )
    report.loaded = len(good)
    report.bad.sort()
    return report


def import_meters(
    path: Path,
    store: SqlAccess,
    master: MasterKey,
    models: dict[str, str],
    db: str = "ami",
    *,
    owner: Ownership | None = None,
) -> ImportReport:
    """`models` maps each known model name to its kind (electricity or gas); `owner`:
    what this node owns (meters of other regions are refused naming their owner)."""
    report = ImportReport(str(path))
    _, nodes = store.query(f"SELECT node_id, commodity, region FROM {db}.grid_nodes FINAL")
    node_kind = {n: c for n, c, _ in nodes}
    node_region = {n: r for n, _, r in nodes}
    meters: list[list[Any]] = []
    keys: list[list[Any]] = []
    serials: dict[str, int] = {}
    titles: dict[str, str] = {}
    now = _now()
    for line, r in _read(path, METER_COLUMNS, report, OPTIONAL_METER_COLUMNS):
        try:
            serial = r["serial"]
            if not ID.match(serial):
                raise ValueError(f"serial {serial!r} must be 1-64 letters, digits or _.:/-")
            if serial in serials:
                raise ValueError(f"serial {serial} appears twice in the file")
            if r["kind"] not in KINDS:
                raise ValueError(f"kind {r['kind']!r} is not electricity or gas")
            if r["role"] not in ROLES:
                raise ValueError(f"role {r['role']!r} is not consumer or balance")
            node = r["node_id"]
            if node not in node_kind:
                raise ValueError(f"node_id {node!r} is not in grid_nodes (import the grid first)")
            if node_kind[node] not in ("any", r["kind"]):
                raise ValueError(f"a {r['kind']} meter on {node_kind[node]} node {node}")
            if owner is not None and not owner.accepts(node_region[node]):
                raise ValueError(owner.why_not(f"meter {serial} (on {node})", node_region[node]))
            model = r["model"]
            if model not in models:
                raise ValueError(
                    f"model {model!r} has no profile (known: {', '.join(sorted(models))})"
                )
            if models[model] != r["kind"]:
                raise ValueError(
                    f"model {model} is a {models[model]} meter, the row says {r['kind']}"
                )
            title = r["system_title"].upper()
            if title and (len(title) != 16 or not HEX.match(title)):
                raise ValueError("system_title must be 16 hex digits (8 bytes)")
            if title in titles:
                raise ValueError(f"system_title {title} is also meter {titles[title]}'s")
            ek, ak = r["ek"], r["ak"]
            if bool(ek) != bool(ak):
                raise ValueError("give both ek and ak, or neither")
            kek = r["kek"]
            for name, k in (("ek", ek), ("ak", ak), ("kek", kek)):
                if k and (len(k) != 32 or not HEX.match(k)):
                    raise ValueError(f"{name} must be 32 hex digits (16 bytes)")
            if kek and not ek:
                raise ValueError("a kek (master key) needs the meter's ek and ak")
            if ek and not title:
                raise ValueError("keys need the meter's system_title")
            password = r["password"]
            if len(password) > 64:
                raise ValueError("password longer than 64 characters")
            lat = _coord(r["lat"], "lat", -90, 90)
            lon = _coord(r["lon"], "lon", -180, 180)
            address = meter_address.parse(r["address"])
            ct = ratio(r["ct_ratio"], "ct_ratio")
            vt = ratio(r["vt_ratio"], "vt_ratio")
            if (ct, vt) != (1.0, 1.0) and r["kind"] != "electricity":
                raise ValueError("ct_ratio and vt_ratio are for electricity meters")
        except ValueError as e:
            report.bad.append((line, str(e)))
            continue
        serials[serial] = line
        if title:
            titles[title] = serial
        meters.append(
            [
                serial,
                r["kind"],
                r["role"],
                node,
                r["account_id"],
                model,
                title,
                lat,
                lon,
                str(address) if address else "",
                ct,
                vt,
                node_region[node],
                now,
            ]
        )
        # Every meter gets a keys row, empty when it has none: re-importing a meter
        # without keys removes the old ones.
        keys.append(
            [
                serial,
                title,
                wrap(master, bytes.fromhex(ek), "ek", serial).hex() if ek else "",
                wrap(master, bytes.fromhex(ak), "ak", serial).hex() if ak else "",
                wrap(master, password.encode(), "password", serial).hex() if password else "",
                wrap(master, bytes.fromhex(kek), "kek", serial).hex() if kek else "",
                "import",
                master.fingerprint,
                now,
            ]
        )
    # A system title already belonging to another stored meter is a conflict.
    clash = _title_owners(store, db, list(titles))
    bad_serials = set()
    for title, holder in clash.items():
        if holder != titles[title]:
            bad_serials.add(titles[title])
    if bad_serials:
        by_serial = {m[0]: m for m in meters}
        for s in sorted(bad_serials):
            title = by_serial[s][6]
            report.bad.append(
                (serials[s], f"system_title {title} already belongs to stored meter {clash[title]}")
            )
        meters = [m for m in meters if m[0] not in bad_serials]
        keys = [k for k in keys if k[0] not in bad_serials]
    cols = [
        *[c for c in METER_COLUMNS if c not in ("ek", "ak", "password")],
        "address",
        "ct_ratio",
        "vt_ratio",
        "region",
        "updated_at",
    ]
    key_cols = [
        "serial",
        "system_title",
        "ek",
        "ak",
        "password",
        "kek",
        "source",
        "master_key",
        "updated_at",
    ]
    changed = _keys_changed_since_delivery(store, db, [k[0] for k in keys])
    report.kept_keys = sorted(changed)
    keys = [k for k in keys if k[0] not in changed]
    for i in range(0, len(meters), CHUNK):
        store.insert_rows("meters", cols, meters[i : i + CHUNK])
    for i in range(0, len(keys), CHUNK):
        store.insert_rows("meter_keys", key_cols, keys[i : i + CHUNK])
    indexed = [[m[6], m[0], m[-1]] for m in meters if m[6]]
    for i in range(0, len(indexed), CHUNK):
        store.insert_rows(
            "meter_titles", ["system_title", "serial", "updated_at"], indexed[i : i + CHUNK]
        )
    report.loaded = len(meters)
    report.bad.sort()
    return report


def ratio(text: str, name: str) -> float:
    """An instrument transformer's ratio: `primary/secondary` (`200/5`) or the quotient
    (`40`); empty is 1 (no transformer)."""
    text = text.strip()
    if not text:
        return 1.0
    try:
        if "/" in text:
            a, b = text.split("/", 1)
            value = float(a) / float(b)
        else:
            value = float(text)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"{name} {text!r} is not a ratio (200/5 or 40)") from None
    if not 0 < value <= MAX_RATIO:  # NaN fails the comparison too
        raise ValueError(f"{name} {text!r} must be above 0 and at most {MAX_RATIO:g}")
    return value


def _keys_changed_since_delivery(store: SqlAccess, db: str, serials: list[str]) -> set[str]:
    """Meters whose stored keys the head-end set (a rotation, a change by admins)."""
    out: set[str] = set()
    for i in range(0, len(serials), 5000):
        _, rows = store.query(
            f"SELECT serial FROM {db}.meter_keys FINAL "
            "WHERE serial IN %(s)s AND source != 'import'",
            {"s": serials[i : i + 5000]},
        )
        out.update(str(r[0]) for r in rows)
    return out


def _title_owners(store: SqlAccess, db: str, titles: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for i in range(0, len(titles), 5000):
        out.update(title_owners(store, db, titles[i : i + 5000]))
    return out


def title_owners(store: SqlAccess, db: str, titles: list[str]) -> dict[str, str]:
    """The stored meter that has each system title (hex, upper case), by primary key:
    through `meter_titles`, confirmed against `meters` (a title a meter no longer has
    belongs to nobody)."""
    if not titles:
        return {}
    _, rows = store.query(
        f"SELECT system_title, serial FROM {db}.meter_titles FINAL WHERE system_title IN %(t)s",
        {"t": titles},
    )
    if not rows:
        return {}
    _, current = store.query(
        f"SELECT serial, system_title FROM {db}.meters FINAL WHERE serial IN %(s)s",
        {"s": sorted({r[1] for r in rows})},
    )
    has = {s: t for s, t in current}
    return {t: s for t, s in rows if has.get(s) == t}


CENTRE_COLUMNS = ["centre_id", "name", "districts"]
# A centre's telephone for the crews' lists, if the file has it.
OPTIONAL_CENTRE_COLUMNS = ["phone"]


def import_centres(
    path: Path, store: SqlAccess, db: str = "ami", owner: Ownership | None = None
) -> ImportReport:
    """Meter service centres (``centre_id,name,districts[,phone]``; districts are grid
    nodes of level district, separated by ``;``). A centre's districts lie in one
    region; a district is covered by one centre (a re-import of a centre replaces its
    districts)."""
    report = ImportReport(str(path))
    _, nodes = store.query(
        f"SELECT node_id, argMax(level, updated_at), argMax(region, updated_at) "
        f"FROM {db}.grid_nodes GROUP BY node_id"
    )
    districts = {r[0]: r[2] for r in nodes if r[1] == "district"}
    _, stored = store.query(
        f"SELECT centre_id, argMax(districts, updated_at) FROM {db}.service_centres "
        f"GROUP BY centre_id"
    )
    covered = {d: c for c, ds in stored for d in ds}
    seen: set[str] = set()
    parsed: list[tuple[int, list[Any]]] = []
    for line, r in _read(path, CENTRE_COLUMNS, report, OPTIONAL_CENTRE_COLUMNS):
        try:
            centre = r["centre_id"]
            if not ID.match(centre):
                raise ValueError(f"centre_id {centre!r} must be 1-64 letters, digits or _.:/-")
            if centre in seen:
                raise ValueError(f"centre_id {centre} appears twice in the file")
            if not r["name"]:
                raise ValueError("a centre needs a name")
            mine = sorted({d.strip() for d in r["districts"].split(";") if d.strip()})
            if not mine:
                raise ValueError("a centre covers at least one district (districts: D1;D2)")
            unknown = [d for d in mine if d not in districts]
            if unknown:
                raise ValueError(
                    f"{', '.join(unknown)}: not grid nodes of level district "
                    "(import the grid first)"
                )
            regions = sorted({districts[d] for d in mine})
            if len(regions) > 1:
                raise ValueError(f"its districts lie in several regions ({', '.join(regions)})")
            region = regions[0]
            if owner is not None and not owner.accepts(region):
                raise ValueError(owner.why_not(f"service centre {centre}", region))
        except ValueError as e:
            report.bad.append((line, str(e)))
            continue
        seen.add(centre)
        parsed.append((line, [centre, r["name"], region, mine, r.get("phone", "")]))
    # The file's centres give up what they covered before; a district claimed twice
    # goes to the first line that claims it.
    covered = {d: c for d, c in covered.items() if c not in seen}
    rows: list[list[Any]] = []
    for line, row in parsed:
        taken = [f"{d} ({covered[d]})" for d in row[3] if covered.get(d, row[0]) != row[0]]
        if taken:
            report.bad.append(
                (line, f"district(s) already covered by another centre: {', '.join(taken)}")
            )
            continue
        covered.update({d: row[0] for d in row[3]})
        rows.append(row)
    if rows:
        now = _now()
        store.insert_rows(
            "service_centres",
            ["centre_id", "name", "region", "districts", "phone", "updated_at"],
            [[*row, now] for row in rows],
        )
    report.loaded = len(rows)
    return report
