"""Backup and restore of a node's store: every table of the database, in ClickHouse's
Native format compressed with zstd, and a manifest.

A backup is a directory (mode 0700) holding ``manifest.json`` and one
``<table>.native.zst`` per table: row counts, the schema version, each file's SHA-256,
and the fingerprint of the master key the meter keys are wrapped under. The meter keys
travel wrapped, as the store holds them; the master key itself is never in a backup
(keep it apart: ``secrets/master.key`` or ``$HEADEND_MASTER_KEY``).

A backup may be taken while the server runs (through its store process: the embedded
store belongs to one process); each table is read in one query, so the tables are each
consistent but not taken at one instant, and what the spool holds but ClickHouse does
not yet is not in it.

A restore goes into a store with no rows (a new data directory, or one whose tables are
empty), with the server stopped: the schema is migrated to this version first, the
materialized view that derives ``late_readings`` is detached meanwhile (its rows come
from the backup, not derived twice), and every table's row count is compared with the
manifest's. The head-end's own invocation counters (``next_sent``) are raised by
``COUNTER_MARGIN``: frames it sent after the backup was taken must never have their
counter (and so their GCM nonce) used again.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backports import zstd

from headend.errors import HeadendError
from headend.store.db import Store, migrate, migrations

FORMAT = 1
MANIFEST = "manifest.json"
# Raised by this much on restore: more than the head-end sends to a meter between
# backups, far below the counter's 2^32.
COUNTER_MARGIN = 1_000_000
# Materialized views detached during a restore (their target tables are restored).
VIEWS_DETACHED = ("late_readings_mv",)


class BackupError(HeadendError):
    """A backup or restore that cannot be done; says why."""


@dataclass
class Report:
    path: str
    tables: dict[str, int] = field(default_factory=dict)
    bytes: int = 0
    schema_version: int = 0
    master_key: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "tables": self.tables,
            "rows": sum(self.tables.values()),
            "bytes": self.bytes,
            "schema_version": self.schema_version,
            "master_key": self.master_key,
        }


def _tables(store: Store) -> list[str]:
    """The database's tables that hold data (views and materialized views excluded)."""
    _, rows = store.query(
        "SELECT name FROM system.tables WHERE database = %(db)s "
        "AND engine NOT IN ('View', 'MaterializedView') AND NOT is_temporary "
        "AND name NOT LIKE '.inner%%' ORDER BY name",
        {"db": store.db},
    )
    return [str(r[0]) for r in rows]


def _count(store: Store, table: str) -> int:
    _, rows = store.query(f"SELECT count() FROM {store.db}.{table}")
    return int(rows[0][0])


def _schema_version(store: Store) -> int:
    _, rows = store.query(f"SELECT max(version) FROM {store.db}.schema_migrations")
    return int(rows[0][0] or 0)


def _key_fingerprints(store: Store) -> list[str]:
    _, rows = store.query(
        f"SELECT DISTINCT master_key FROM {store.db}.meter_keys WHERE master_key != ''"
    )
    return sorted(str(r[0]) for r in rows)


def backup(store: Store, dest: Path, node: str = "") -> Report:
    """Writes every table of `store` to `dest` (a new or empty directory)."""
    dest = Path(dest)
    if not dest.is_absolute():
        raise BackupError(f"the backup directory must be an absolute path, not {dest}")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise BackupError(f"{dest} exists and is not an empty directory")
    dest.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(dest, 0o700)
    report = Report(str(dest), schema_version=_schema_version(store))
    fingerprints = _key_fingerprints(store)
    report.master_key = ",".join(fingerprints)
    files: dict[str, Any] = {}
    for table in _tables(store):
        before = _count(store, table)
        _, cols = store.query(
            "SELECT name, type FROM system.columns WHERE database = %(db)s AND table = %(t)s "
            "AND default_kind NOT IN ('MATERIALIZED', 'ALIAS') ORDER BY position",
            {"db": store.db, "t": table},
        )
        names = [str(c[0]) for c in cols]
        data = store.raw_query(f"SELECT {', '.join(names)} FROM {store.db}.{table}", fmt="Native")
        # The server may write (and merge) meanwhile: the file holds between the two
        # counts' rows, the same number when nothing moved.
        after = _count(store, table)
        packed = zstd.compress(data, level=3)
        path = dest / f"{table}.native.zst"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(packed)
            f.flush()
            os.fsync(f.fileno())
        files[table] = {
            "file": path.name,
            "rows": after,
            "rows_range": sorted((before, after)),
            "columns": [[str(c[0]), str(c[1])] for c in cols],
            "bytes": len(packed),
            "sha256": hashlib.sha256(packed).hexdigest(),
        }
        report.tables[table] = after
        report.bytes += len(packed)
    manifest = {
        "format": FORMAT,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "node": node,
        "database": store.db,
        "schema_version": report.schema_version,
        "master_key_fingerprints": fingerprints,
        "tables": files,
    }
    fd = os.open(dest / MANIFEST, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(manifest, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    return report


def read_manifest(src: Path) -> dict[str, Any]:
    path = Path(src) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise BackupError(f"{src} is not a backup: {MANIFEST} is missing") from None
    except (OSError, ValueError) as e:
        raise BackupError(f"{path} cannot be read: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError(f"{path}: not a backup of format {FORMAT}")
    return manifest


def restore(store: Store, src: Path, master_fingerprint: str) -> Report:
    """Loads the backup in `src` into `store`, which must hold no rows; the meter keys
    must be wrapped under `master_fingerprint` (this node's master key)."""
    src = Path(src)
    manifest = read_manifest(src)
    _check(manifest, src, master_fingerprint)
    migrate(store)
    tables = manifest["tables"]
    _check_empty(store, tables)
    report = Report(str(src), schema_version=int(manifest["schema_version"]))
    report.master_key = ",".join(manifest.get("master_key_fingerprints") or [])
    detached = []
    for view in VIEWS_DETACHED:
        _, rows = store.query(
            "SELECT count() FROM system.tables WHERE database = %(db)s AND name = %(v)s",
            {"db": store.db, "v": view},
        )
        if int(rows[0][0]):
            store.command(f"DETACH TABLE {store.db}.{view}")
            detached.append(view)
    try:
        for table, meta in sorted(tables.items()):
            if table == "schema_migrations":
                continue
            report.tables[table] = _load(store, src, table, meta)
            report.bytes += int(meta["bytes"])
        _raise_sent_counters(store)
    finally:
        for view in detached:
            store.command(f"ATTACH TABLE {store.db}.{view}")
    return report


def _check(manifest: dict[str, Any], src: Path, master_fingerprint: str) -> None:
    """The backup fits this head-end and node, and every file is whole."""
    latest = max(v for v, _, _ in migrations())
    if int(manifest["schema_version"]) > latest:
        raise BackupError(
            f"the backup's schema is version {manifest['schema_version']}, newer than this "
            f"head-end's ({latest}): restore it with the version that made it, or newer"
        )
    theirs = list(manifest.get("master_key_fingerprints") or [])
    if theirs and theirs != [master_fingerprint]:
        raise BackupError(
            f"the backup's meter keys are wrapped under master key {', '.join(theirs)}, "
            f"this node's is {master_fingerprint}: put the old node's master key in place "
            "(secrets/master.key or $HEADEND_MASTER_KEY) before restoring"
        )
    for meta in manifest["tables"].values():
        path = src / str(meta["file"])
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError as e:
            raise BackupError(f"{path}: {e.strerror or e}") from None
        if digest != meta["sha256"]:
            raise BackupError(f"{path} is damaged (its SHA-256 is not the manifest's)")


def _check_empty(store: Store, tables: dict[str, Any]) -> None:
    have = set(_tables(store))
    for table in tables:
        if table == "schema_migrations":
            continue
        if table not in have:
            raise BackupError(f"the backup's table {table} does not exist in this schema")
        _, rows = store.query(f"SELECT count() FROM {store.db}.{table}")
        if int(rows[0][0]):
            raise BackupError(
                f"table {table} already holds {rows[0][0]} rows: restore into an empty store"
            )


def _load(store: Store, src: Path, table: str, meta: dict[str, Any]) -> int:
    """One table's rows, counted against the manifest (merges stopped meanwhile, so a
    replacing table does not fold its rows before they are counted)."""
    lo, hi = meta.get("rows_range") or (meta["rows"], meta["rows"])
    if not hi:
        return 0
    data = zstd.decompress((src / str(meta["file"])).read_bytes())
    columns = [c[0] for c in meta["columns"]]
    store.command(f"SYSTEM STOP MERGES {store.db}.{table}")
    try:
        store.insert_rowbinary(table, columns, data, f"restore:{table}", fmt="Native")
        got = _count(store, table)
    finally:
        store.command(f"SYSTEM START MERGES {store.db}.{table}")
    if not int(lo) <= got <= int(hi):
        held = f"{lo}" if lo == hi else f"{lo}-{hi}"
        raise BackupError(f"table {table}: {got} rows restored, the backup holds {held}")
    return got


def _raise_sent_counters(store: Store) -> None:
    """The head-end's next counter to each meter, raised past anything it may have sent
    after the backup (counters are only ever raised: a max over the rows)."""
    store.command(
        f"INSERT INTO {store.db}.invocation_counters (system_title, last_received, next_sent) "
        f"SELECT system_title, max(last_received), max(next_sent) + {COUNTER_MARGIN} "
        f"FROM {store.db}.invocation_counters GROUP BY system_title"
    )
