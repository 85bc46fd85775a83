"""The store's ClickHouse connection and schema migrations.

Only the store knows ClickHouse. The embedded default is chdb in the data directory,
reached with the same clickhouse-connect client as a server
(``clickhouse_connect.get_client(dsn="chdb:///DIR")``); an ``http://host:8123`` DSN
points the same code at a ClickHouse server. The embedded store belongs to one
process: the store process when the server runs, else the command that needs it.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

from headend.errors import HeadendError

log = logging.getLogger("headend.store")

IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# Settings of every client: the head-end's own queries name meters in lists (a late-data
# pass, a slice's meters with gaps: up to 100,000 serials), more than ClickHouse's
# default 256 KiB of query text (the demo's recompute failed on it with 20,000 meters).
# People's SQL keeps its own limit (sqlguard.MAX_TEXT).
# Every query's settings. An insert whose rows fall on more days than
# `max_partitions_per_insert_block` (100; `readings` is partitioned by day) goes in,
# with a warning in ClickHouse's log: a meter's buffer of months, a round with a few
# clocks gone wrong, or migration 0021 copying a store of months must not be refused
# (round after round, holding every worker's data back; or at every start), and chdb's
# streamed insert reports success while dropping what it refused (measured: a round
# over 101 days stored nothing). Set on the client, it reaches every road in: the
# streamed inserts, `insert_rows`, INSERT ... SELECT.
CLIENT_SETTINGS = {"max_query_size": 32 << 20, "throw_on_max_partitions_per_insert_block": 0}
# Free bytes the embedded store's disk must keep for an insert to be tried.
MIN_FREE_BYTES = 256 << 20


class StoreError(HeadendError):
    """ClickHouse refused or could not be reached."""


class StoreBusy(StoreError):
    """The embedded store is held by another process (the running server)."""


class Tap(Protocol):
    """Sees every write into the tables it wants before ClickHouse does: the link's
    outbox (`headend.link`), so what a node stores reaches its peers exactly once."""

    def wants(self, table: str) -> bool: ...

    def binary(
        self,
        table: str,
        columns: Sequence[str],
        data: bytes,
        fmt: str,
        token: str | None,
        *,
        rows: int = 0,
    ) -> None: ...

    def rows(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], token: str | None
    ) -> None: ...

    def delete(self, table: str, where: dict[str, Any]) -> None: ...


class Store:
    """One ClickHouse client, serialised (chdb's client is not thread-safe). With a
    `tap`, writes into the tables it wants go to it first (then to ClickHouse)."""

    def __init__(
        self,
        dsn: str,
        database: str = "ami",
        tap: Tap | None = None,
        cluster: str = "",
        min_free_bytes: int = MIN_FREE_BYTES,
    ) -> None:
        if not IDENT.match(database):
            raise StoreError(f"database name {database!r} is not an identifier")
        if cluster and not IDENT.match(cluster):
            raise StoreError(f"cluster name {cluster!r} is not an identifier")
        self.dsn = dsn
        self.db = database
        self.tap = tap
        self.cluster = cluster
        self.min_free_bytes = min_free_bytes
        self._lock = threading.RLock()
        self._client: Any = None

    @property
    def embedded(self) -> bool:
        return self.dsn.startswith("chdb://")

    def connect(self) -> Store:
        import clickhouse_connect

        with self._lock:
            if self._client is not None:
                return self
            if self.embedded:
                path = Path(self.dsn[len("chdb://") :])
                path.mkdir(parents=True, exist_ok=True)
                try:
                    self._client = clickhouse_connect.get_client(
                        dsn=f"chdb://{path}", settings=CLIENT_SETTINGS
                    )
                except Exception as e:
                    text = str(e)
                    if "lock" in text.lower() or "already" in text.lower():
                        raise StoreBusy(
                            f"the embedded store in {path} is in use by another process"
                        ) from None
                    raise StoreError(f"cannot open the embedded store in {path}: {text}") from None
            else:
                try:
                    self._client = clickhouse_connect.get_client(
                        dsn=self.dsn,
                        settings={
                            **CLIENT_SETTINGS,
                            **(cluster_settings() if self.cluster else {}),
                        },
                    )
                except Exception as e:
                    raise StoreError(f"cannot reach ClickHouse at {self.dsn}: {e}") from None
        return self

    def _engine_handle(self) -> Any:
        """The embedded engine's connection behind the client, when it streams inserts
        (chdb's `send_insert`): the bytes go straight in. Otherwise None, and the client
        writes them to a temporary file for ClickHouse to read back (INSERT ... FROM
        INFILE), a copy through the page cache of every insert."""
        if not self.embedded:
            return None
        handle = getattr(getattr(self.client, "_backend", None), "_handle", None)
        conn = getattr(handle, "conn", None)
        if conn is None or not hasattr(conn, "send_insert") or not hasattr(handle, "lock"):
            return None
        return handle

    def companion(self, *, tapped: bool = True) -> Store:
        """Another client of the same store, for a thread whose queries should run
        while this client's do (one client per thread, as chdb asks; each client
        serialises its own queries), with this one's tap unless `tapped` is false. The
        caller closes it."""
        return Store(
            self.dsn, self.db, self.tap if tapped else None, self.cluster, self.min_free_bytes
        ).connect()

    def _tapped(self, table: str) -> Tap | None:
        return self.tap if self.tap is not None and self.tap.wants(table) else None

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                try:
                    self._client.close()
                finally:
                    self._client = None

    @property
    def client(self) -> Any:
        if self._client is None:
            self.connect()
        return self._client

    def command(self, sql: str, params: dict[str, Any] | None = None) -> Any:
        with self._lock:
            try:
                return self.client.command(sql, parameters=params)
            except HeadendError:
                raise
            except Exception as e:
                raise StoreError(_clean(e)) from None

    def query(
        self, sql: str, params: dict[str, Any] | None = None, settings: dict[str, Any] | None = None
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        with self._lock:
            try:
                r = self.client.query(sql, parameters=params, settings=settings)
            except HeadendError:
                raise
            except Exception as e:
                raise StoreError(_clean(e)) from None
            return list(r.column_names), [tuple(row) for row in r.result_rows]

    def raw_query(
        self, sql: str, params: dict[str, Any] | None = None, fmt: str = "RowBinary"
    ) -> bytes:
        """The result as RowBinary bytes, or `fmt` (Native: blocks of columns, which
        ClickHouse writes faster), for Rust to read in one piece."""
        with self._lock:
            try:
                return bytes(self.client.raw_query(sql, parameters=params, fmt=fmt))
            except HeadendError:
                raise
            except Exception as e:
                raise StoreError(_clean(e)) from None

    def delete(self, table: str, where: dict[str, Any]) -> None:
        """Deletes the rows whose columns equal `where`'s values (a lightweight DELETE;
        the tap sees it first, so the centre's copy goes too)."""
        if not IDENT.match(table) or not where or not all(IDENT.match(c) for c in where):
            raise StoreError(f"cannot delete from {table!r} where {sorted(where)!r}")
        tap = self._tapped(table)
        if tap is not None:
            tap.delete(table, where)
        cond = " AND ".join(f"{c} = %(w{i})s" for i, c in enumerate(where))
        # On a cluster the rows are in each shard's local table.
        target = f"{table}_local ON CLUSTER {self.cluster}" if self.cluster else table
        self.command(
            f"DELETE FROM {self.db}.{target} WHERE {cond}",
            {f"w{i}": v for i, v in enumerate(where.values())},
        )

    def ddl(self, stmt: str) -> None:
        """A schema statement; on a cluster, its cluster form (headend/store/cluster.py)."""
        if not self.cluster:
            self.command(stmt)
            return
        from headend.store import cluster

        for s in cluster.statements(stmt, self.cluster, self.db):
            self.command(s)

    def insert_rowbinary(
        self,
        table: str,
        columns: Sequence[str],
        data: bytes,
        token: str,
        fmt: str = "RowBinary",
        *,
        rows: int = 0,
    ) -> None:
        """Inserts RowBinary rows (or `fmt`, e.g. Native blocks); `token` makes a repeated
        insert a no-op; `rows`, when the caller knows it, is told to the tap."""
        tap = self._tapped(table)
        if tap is not None:
            tap.binary(table, columns, data, fmt, token, rows=rows)
        with self._lock:
            if self._engine_handle() is not None:
                with self._stream(table, columns, token, fmt) as insert:
                    insert(data)
                return
            self._raw_insert(table, columns, data, token, fmt)

    @contextmanager
    def insert_stream(
        self,
        table: str,
        columns: Sequence[str],
        token: str,
        fmt: str = "Native",
        block_rows: int = 0,
    ) -> Iterator[Callable[..., None]]:
        """One INSERT of the pieces given to the yielded function, streamed into the
        embedded engine as they come, nothing gathered here; ClickHouse makes parts of
        about `block_rows` rows (fewer, larger parts: less to merge). The function takes
        a piece and, when known, its rows (for the tap). It holds this
        client throughout, so use a companion. Against a server each piece is an insert
        of its own. When the body fails, the insert is cancelled; parts ClickHouse has
        already written may stand (a recompute is idempotent: run it again)."""
        tap = self._tapped(table)
        if tap is None:
            with self._stream(table, columns, token, fmt, block_rows) as insert:
                yield insert
            return
        with self._stream(table, columns, token, fmt, block_rows) as raw:
            pieces = 0

            def tapped(data: bytes, rows: int = 0) -> None:
                nonlocal pieces
                tap.binary(table, columns, data, fmt, f"{token}:{pieces}", rows=rows)
                pieces += 1
                raw(data)

            yield tapped

    @contextmanager
    def _stream(
        self,
        table: str,
        columns: Sequence[str],
        token: str,
        fmt: str = "Native",
        block_rows: int = 0,
    ) -> Iterator[Callable[..., None]]:
        """`insert_stream` without the tap."""
        handle = self._engine_handle()
        if handle is None:
            pieces = 0

            def insert(data: bytes, rows: int = 0) -> None:
                nonlocal pieces
                self._raw_insert(table, columns, data, f"{token}:{pieces}", fmt)
                pieces += 1

            yield insert
            return
        self.check_space()
        settings = _insert_settings(token)
        if block_rows:
            settings |= {"min_insert_block_size_rows": block_rows, "min_insert_block_size_bytes": 0}
        sql = f"INSERT INTO {self.db}.{table} ({', '.join(columns)}) SETTINGS " + ", ".join(
            f"{k} = {_sql_literal(v)}" for k, v in settings.items()
        )
        with self._lock, handle.lock:
            try:
                ins = handle.conn.send_insert(sql, fmt)
            except Exception as e:
                raise StoreError(_clean(e)) from None
            with ins:

                def append(data: bytes, rows: int = 0) -> None:
                    try:
                        ins.append(data)
                    except Exception as e:
                        raise StoreError(_clean(e)) from None

                yield append
                try:
                    ins.finish()
                except Exception as e:
                    raise StoreError(_clean(e)) from None

    def check_space(self) -> None:
        """Refuses an insert into the embedded store while its disk has less than
        `min_free_bytes` free: chdb's streamed insert reports success on a full disk
        and writes nothing (measured: rows_written = 300, count() = 0), so the spool
        must keep the rows until there is room. Servers report a full disk themselves."""
        if not self.embedded or self.min_free_bytes <= 0:
            return
        path = self.dsn[len("chdb://") :]
        try:
            st = os.statvfs(path)
        except OSError:
            return
        free = st.f_bavail * st.f_frsize
        if free < self.min_free_bytes:
            raise StoreError(
                f"only {free} bytes free under {path}; inserts wait for "
                f"[store] min_free_bytes ({self.min_free_bytes}) to be free"
            )

    def _raw_insert(
        self, table: str, columns: Sequence[str], data: bytes, token: str, fmt: str
    ) -> None:
        with self._lock:
            try:
                self.client.raw_insert(
                    f"{self.db}.{table}",
                    list(columns),
                    insert_block=data,
                    fmt=fmt,
                    settings=_insert_settings(token),
                )
            except Exception as e:
                raise StoreError(_clean(e)) from None

    def insert_rows(
        self,
        table: str,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        token: str | None = None,
    ) -> None:
        self.check_space()
        tap = self._tapped(table)
        if tap is not None and rows:
            tap.rows(table, columns, rows, token)
        settings = {"insert_deduplication_token": token} if token else None
        with self._lock:
            try:
                self.client.insert(
                    f"{self.db}.{table}",
                    [list(r) for r in rows],
                    column_names=list(columns),
                    settings=settings,
                )
            except Exception as e:
                raise StoreError(_clean(e)) from None


def cluster_settings() -> dict[str, str]:
    from headend.store import cluster

    return dict(cluster.SETTINGS)


def _insert_settings(token: str) -> dict[str, object]:
    """Settings of every insert: `token` makes a repeated insert a no-op. Re-sent
    readings collapse in merges (ReplacingMergeTree); collapsing each block on insert
    as well costs ~10% more CPU for nothing."""
    return {"insert_deduplication_token": token, "optimize_on_insert": 0}


def _sql_literal(v: object) -> str:
    """A setting's value in SQL: numbers as they are, anything else a quoted string."""
    if isinstance(v, int):
        return str(v)
    text = str(v).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{text}'"


def _clean(e: BaseException) -> str:
    """ClickHouse messages, first line, without the client's stack dump."""
    text = str(e).strip()
    first = text.splitlines()[0] if text else type(e).__name__
    return first[:500]


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, SQL) of every migration, in order."""
    out = []
    for entry in (resources.files("headend.store") / "migrations").iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:4].isdigit():
            out.append((int(name[:4]), name[5:-4], entry.read_text(encoding="utf-8")))
    return sorted(out)


def statements(sql: str) -> list[str]:
    """Splits a migration into statements (`;` ends a statement at the end of a line)."""
    out, cur = [], []
    for line in sql.splitlines():
        if line.strip().startswith("--"):
            continue
        cur.append(line)
        if line.rstrip().endswith(";"):
            stmt = "\n".join(cur).strip().rstrip(";").strip()
            if stmt:
                out.append(stmt)
            cur = []
    tail = "\n".join(cur).strip()
    if tail:
        out.append(tail)
    return out


@dataclass(frozen=True)
class Rebuild:
    """A table rebuilt under a new layout by a migration that creates `into` with it:
    the rows are copied into `into`, the two swapped (EXCHANGE, atomic) and the old
    layout, now under `into`, dropped. `partition_key` (as `system.tables` spells it)
    tells whether the swap was done, so a start killed at any point finishes the job
    the next time: before the swap a partial copy is emptied and made again; after
    it, only the drop is left."""

    table: str
    into: str
    partition_key: str

    def statements(self, db: str, columns: Sequence[str]) -> list[str]:
        """Empty `into` (a copy a killed start left), copy the rows, swap."""
        cols = ", ".join(columns)
        return [
            f"TRUNCATE TABLE IF EXISTS {db}.{self.into}",
            f"INSERT INTO {db}.{self.into} ({cols}) SELECT {cols} FROM {db}.{self.table}",
            f"EXCHANGE TABLES {db}.{self.table} AND {db}.{self.into}",
        ]

    def drop(self, db: str) -> str:
        """Drops the old layout (under `into` after the swap)."""
        return f"DROP TABLE IF EXISTS {db}.{self.into}"


#: Migrations that rebuild a table, by version; run after the migration's statements.
REBUILDS: dict[int, Rebuild] = {
    21: Rebuild("readings", "readings_by_day", "toYYYYMMDD(ts)"),
}


def rebuild(store: Store, r: Rebuild) -> int:
    """Carries out `r` (see Rebuild); returns the rows copied (0 if already swapped)."""
    db = store.db
    local = "_local" if store.cluster else ""
    _, rows = store.query(
        "SELECT partition_key FROM system.tables WHERE database = %(db)s AND name = %(t)s",
        {"db": db, "t": r.table + local},
    )
    copied = 0
    if not rows or rows[0][0] != r.partition_key:
        (columns,) = store.query(
            "SELECT groupArray(name) FROM (SELECT name FROM system.columns "
            "WHERE database = %(db)s AND table = %(t)s AND default_kind != 'ALIAS' "
            "ORDER BY position)",
            {"db": db, "t": r.table + local},
        )[1][0]
        (copied,) = store.query(f"SELECT count() FROM {db}.{r.table}")[1][0]
        # About 3.4 M rows a second on 2 cores (docs/SCALING.md): say so before an
        # upgrade's first start goes quiet for minutes or hours.
        if copied:  # a new store has nothing to copy, nor to say
            log.warning(
                "rebuilding %s under partition key %s: copying %d rows; the store is "
                "ready once they are copied",
                r.table,
                r.partition_key,
                copied,
            )
        for stmt in r.statements(db, columns):  # empty the new table, copy, swap
            store.ddl(stmt)
    store.ddl(r.drop(db))
    return int(copied)


def migrate(store: Store, *, readings_ttl_days: int = 0, sessions_ttl_days: int = 0) -> list[int]:
    """Applies the migrations not yet applied; returns their versions. Idempotent."""
    db = store.db
    store.ddl(f"CREATE DATABASE IF NOT EXISTS {db}")
    store.ddl(
        f"CREATE TABLE IF NOT EXISTS {db}.schema_migrations "
        "(version UInt32, name String, applied_at DateTime('UTC') DEFAULT now()) "
        "ENGINE = MergeTree ORDER BY version"
    )
    _, rows = store.query(f"SELECT version FROM {db}.schema_migrations")
    done = {r[0] for r in rows}
    applied = []
    for version, name, sql in migrations():
        if version in done:
            continue
        for stmt in statements(sql):
            store.ddl(stmt.replace("{db}", db))
        if version in REBUILDS:
            rebuild(store, REBUILDS[version])
        store.insert_rows("schema_migrations", ["version", "name"], [(version, name)])
        log.info("applied migration %04d %s", version, name)
        applied.append(version)
    _apply_ttl(store, "readings", "ts", readings_ttl_days)
    _apply_ttl(store, "sessions", "ts", sessions_ttl_days)
    return applied


def _apply_ttl(store: Store, table: str, column: str, days: int) -> None:
    """TTL follows the configuration on every start (it is not part of a migration)."""
    if days > 0:
        store.ddl(
            f"ALTER TABLE {store.db}.{table} "
            f"MODIFY TTL toDateTime({column}) + INTERVAL {int(days)} DAY"
        )
    else:
        _, rows = store.query(
            "SELECT create_table_query FROM system.tables WHERE database = %(db)s AND name = %(t)s",
            {"db": store.db, "t": f"{table}_local" if store.cluster else table},
        )
        if rows and " TTL " in rows[0][0]:
            store.ddl(f"ALTER TABLE {store.db}.{table} REMOVE TTL")
