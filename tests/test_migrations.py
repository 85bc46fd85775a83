"""Migrations that rebuild a table: `readings` moves from monthly to daily partitions
(0021) with every row, the views fed by it keep firing on the new table, and a start
killed half way through the rebuild finishes it the next time without a row lost or
doubled."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest

from headend.store.db import REBUILDS, Store, migrate, migrations, statements
from headend.store.ingest import COLUMNS
from headend.store.spool import READINGS

BATTERY = 1611006975  # 0.0.96.6.3.255
ENERGY = 1099528405247  # 1.0.1.8.0.255
DAY = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"chdb://{tmp_path / 'db'}", "ami").connect()
    yield s
    s.close()


def migrate_until(store: Store, last: int) -> None:
    """The schema as a node last started before `last + 1` left it."""
    store.ddl("CREATE DATABASE IF NOT EXISTS ami")
    store.ddl(
        "CREATE TABLE IF NOT EXISTS ami.schema_migrations "
        "(version UInt32, name String, applied_at DateTime('UTC') DEFAULT now()) "
        "ENGINE = MergeTree ORDER BY version"
    )
    for version, name, sql in migrations():
        if version > last:
            break
        for stmt in statements(sql):
            store.ddl(stmt.replace("{db}", "ami"))
        store.insert_rows("schema_migrations", ["version", "name"], [(version, name)])


def readings(
    meter: str, days: int, obis: int = ENERGY, start: dt.datetime = DAY
) -> list[tuple[object, ...]]:
    """A quarter-hour series over `days` days from `start`."""
    return [
        (
            meter,
            obis,
            start + dt.timedelta(minutes=15 * i),
            float(i),
            "Wh",
            0,
            "push",
            "measured",
            start + dt.timedelta(minutes=15 * i),
        )
        for i in range(days * 96)
    ]


def partition_key(store: Store, table: str) -> str:
    _, rows = store.query(
        "SELECT partition_key FROM system.tables WHERE database = 'ami' AND name = %(t)s",
        {"t": table},
    )
    return str(rows[0][0]) if rows else ""


def count(store: Store, sql: str) -> int:
    return int(store.query(sql)[1][0][0])


def old_store_with_rows(store: Store) -> int:
    """A store at 0020 (readings by month) holding two meters' readings over 40 days
    (two months) and one battery voltage."""
    migrate_until(store, 20)
    assert partition_key(store, "readings") == "toYYYYMM(ts)"
    rows = readings("E1", 40) + readings("E2", 40) + readings("G1", 1, BATTERY)
    store.insert_rows("readings", COLUMNS[READINGS], rows)
    return len(rows)


def test_readings_move_to_daily_partitions_with_every_row_and_their_views(store: Store) -> None:
    n = old_store_with_rows(store)
    before = store.query("SELECT meter, obis, ts, value FROM ami.readings ORDER BY ALL")[1]
    late = count(store, "SELECT count() FROM ami.late_readings")
    assert 21 in migrate(store)
    assert partition_key(store, "readings") == "toYYYYMMDD(ts)"
    assert partition_key(store, "readings_by_day") == ""  # the old layout is gone
    assert store.query("SELECT meter, obis, ts, value FROM ami.readings ORDER BY ALL")[1] == before
    assert count(store, "SELECT count() FROM ami.readings") == n
    assert (
        count(
            store,
            "SELECT uniqExact(partition) FROM system.parts WHERE active "
            "AND database = 'ami' AND table = 'readings'",
        )
        == 40
    )
    # Copying the rows is not news: nothing was marked late by it.
    assert count(store, "SELECT count() FROM ami.late_readings") == late
    # The views fed by readings fire on the new table: a late reading, a later battery
    # voltage, a meter heard later.
    later = DAY + dt.timedelta(days=41)
    row = ("G1", BATTERY, later, 3.1, "V", 0, "push", "measured", later)
    store.insert_rows("readings", COLUMNS[READINGS], [row])
    assert count(store, "SELECT count() FROM ami.late_readings") == late + 1
    volts = "SELECT argMaxMerge(volts) FROM ami.meter_battery WHERE meter = 'G1'"
    assert store.query(volts)[1][0][0] == 3.1
    assert str(
        store.query("SELECT max(last_ts) FROM ami.meter_seen WHERE meter = 'G1'")[1][0][0]
    ).startswith(later.strftime("%Y-%m-%d"))
    # Again: nothing to do.
    assert migrate(store) == []
    assert count(store, "SELECT count() FROM ami.readings") == n + 1


def test_a_store_of_more_than_100_days_is_rebuilt_whole(store: Store) -> None:
    """The copy writes more days than ClickHouse's 100 partitions per insert block (it
    refused the whole migration at every start before)."""
    migrate_until(store, 20)
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    rows = readings("E1", 150, start=start) + readings("E2", 150, start=start)
    store.insert_rows("readings", COLUMNS[READINGS], rows)
    migrate(store)
    assert partition_key(store, "readings") == "toYYYYMMDD(ts)"
    assert count(store, "SELECT count() FROM ami.readings") == len(rows)
    assert count(store, "SELECT uniqExact(toDate(ts)) FROM ami.readings") == 150


def test_a_start_killed_during_the_copy_copies_again_without_doubling(store: Store) -> None:
    n = old_store_with_rows(store)
    # Killed half way through the copy: the new table holds part of the rows.
    for stmt in statements(dict((v, s) for v, _, s in migrations())[21]):
        store.ddl(stmt.replace("{db}", "ami"))
    store.command(
        "INSERT INTO ami.readings_by_day (meter, obis, ts, value, unit, status, source, "
        "quality, received_at) SELECT meter, obis, ts, value, unit, status, source, quality, "
        "received_at FROM ami.readings WHERE meter = 'E1'"
    )
    migrate(store)
    assert partition_key(store, "readings") == "toYYYYMMDD(ts)"
    assert count(store, "SELECT count() FROM ami.readings") == n
    assert count(store, "SELECT uniqExact(meter, obis, ts) FROM ami.readings") == n


def test_a_start_killed_after_the_swap_only_drops_the_old_layout(store: Store) -> None:
    n = old_store_with_rows(store)
    for stmt in statements(dict((v, s) for v, _, s in migrations())[21]):
        store.ddl(stmt.replace("{db}", "ami"))
    r = REBUILDS[21]
    cols = ["meter", "obis", "ts", "value", "unit", "status", "source", "quality", "received_at"]
    for stmt in r.statements("ami", cols):
        store.ddl(stmt)
    # Killed before the drop: the old layout waits under the new table's name.
    assert partition_key(store, "readings_by_day") == "toYYYYMM(ts)"
    migrate(store)
    assert partition_key(store, "readings") == "toYYYYMMDD(ts)"
    assert partition_key(store, "readings_by_day") == ""
    assert count(store, "SELECT count() FROM ami.readings") == n


def test_readings_past_their_retention_go_by_whole_days(store: Store) -> None:
    """`[store] readings_ttl_days`: days older than the retention are dropped whole
    (the table is partitioned by day); the recent ones stay, every row of them."""
    migrate(store)
    today = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    old = readings("E1", 3, start=today - dt.timedelta(days=40))
    new = readings("E1", 2, start=today - dt.timedelta(days=2))
    store.insert_rows("readings", COLUMNS[READINGS], old + new)
    assert count(store, "SELECT count() FROM ami.readings") == len(old) + len(new)
    # The next start with a retention of 30 days; ClickHouse applies it as it merges.
    migrate(store, readings_ttl_days=30)
    store.command("OPTIMIZE TABLE ami.readings FINAL")
    assert count(store, "SELECT count() FROM ami.readings") == len(new)
    # Readings that arrive already past it (a meter's buffer of months) are not kept.
    store.insert_rows(
        "readings", COLUMNS[READINGS], readings("E2", 1, start=today - dt.timedelta(days=31))
    )
    assert count(store, "SELECT count() FROM ami.readings WHERE meter = 'E2'") == 0
    assert count(store, "SELECT uniqExact(toDate(ts)) FROM ami.readings") == 2
    # Retention follows the configuration: off again, nothing more goes.
    migrate(store)
    _, rows = store.query(
        "SELECT create_table_query FROM system.tables WHERE database = 'ami' AND name = 'readings'"
    )
    assert " TTL " not in rows[0][0]
    assert "ttl_only_drop_parts = 1" in rows[0][0]
