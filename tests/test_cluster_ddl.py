"""The schema on a ClickHouse cluster (`[store] cluster`): every migration's
statements rewritten for a cluster, parsed by ClickHouse's own parser (EXPLAIN AST in
the embedded engine). No ClickHouse server or Keeper runs here: the statements are
parsed and checked for their shape, not executed (see headend/store/cluster.py)."""

from __future__ import annotations

import re

import pytest

from headend.store import cluster
from headend.store.db import REBUILDS, Store, migrations, statements


@pytest.fixture(scope="module")
def parser(tmp_path_factory: pytest.TempPathFactory) -> Store:
    s = Store(f"chdb://{tmp_path_factory.mktemp('ch')}").connect()
    yield s
    s.close()


def every_statement() -> list[str]:
    out = [
        "CREATE DATABASE IF NOT EXISTS ami",
        "CREATE TABLE IF NOT EXISTS ami.schema_migrations (version UInt32, name String, "
        "applied_at DateTime('UTC') DEFAULT now()) ENGINE = MergeTree ORDER BY version",
        "ALTER TABLE ami.readings MODIFY TTL toDateTime(ts) + INTERVAL 30 DAY",
    ]
    for version, _, sql in migrations():
        out += [s.replace("{db}", "ami") for s in statements(sql)]
        if r := REBUILDS.get(version):
            out += [*r.statements("ami", ["meter", "ts", "value"]), r.drop("ami")]
    return out


def test_every_migration_has_a_cluster_form_that_clickhouse_parses(parser: Store) -> None:
    tables = 0
    for stmt in every_statement():
        got = cluster.statements(stmt, "national", "ami")
        assert got, stmt
        for s in got:
            # ClickHouse's parser accepts it (a syntax error raises here).
            parser.query(f"EXPLAIN AST {s}")
            if not s.startswith("INSERT"):
                assert " ON CLUSTER national" in s, s
        if stmt.startswith("CREATE TABLE"):
            tables += 1
            local, dist = got
            name = re.match(r"CREATE TABLE IF NOT EXISTS ami\.(\w+)", stmt)[1]  # type: ignore[index]
            engine = re.search(r"ENGINE = (\w+)", stmt)[1]  # type: ignore[index]
            assert f"ami.{name}_local ON CLUSTER" in local
            assert (
                f"ENGINE = Replicated{engine}('/clickhouse/tables/{{shard}}/ami/{name}_local', '{{replica}}'"
                in local
            )
            key = cluster.SHARDING[name]
            assert dist.endswith(f"ENGINE = Distributed(national, ami, {name}_local, {key})")
            # The shard is a function of a column of the sorting key, the whole key of
            # the tables that replace rows: FINAL compares rows of one shard only; and
            # deterministic, so a retried insert splits into the same blocks per shard
            # and their deduplication tokens match.
            order = re.search(r"ORDER BY \(?([\w, ]+)", stmt)[1].replace(" ", "").split(",")  # type: ignore[index]
            column = re.search(r"cityHash64\((\w+)\)|^(\w+)$", key)
            assert column is not None
            assert (column[1] or column[2]) in order, (name, order, key)
            if "Replacing" in engine or "Aggregating" in engine:
                assert order[0] == (column[1] or column[2]) or name == "anomaly_findings"
            assert "non_replicated" not in local
    assert tables == len(cluster.SHARDING)


def test_views_read_the_right_tables() -> None:
    mv = next(s for s in every_statement() if "MATERIALIZED VIEW" in s)
    (got,) = cluster.statements(mv, "national", "ami")
    assert "TO ami.late_readings_local" in got
    assert "FROM ami.readings_local" in got
    view = next(s for s in every_statement() if s.startswith("CREATE VIEW") and "anomalies" in s)
    (got,) = cluster.statements(view, "national", "ami")
    assert "FROM ami.anomaly_findings FINAL" in got  # the Distributed table
    add = next(s for s in every_statement() if "ADD COLUMN" in s)
    assert [s.split(" ON ")[0] for s in cluster.statements(add, "national", "ami")] == [
        "ALTER TABLE ami.meters_local",
        "ALTER TABLE ami.meters",
    ]
    # A rebuilt table: the rows copied through the Distributed tables, the local tables
    # swapped (each Distributed table reads its local one by name), both forms dropped.
    empty, copy, swap = (
        cluster.statements(s, "national", "ami")
        for s in REBUILDS[21].statements("ami", ["meter", "ts"])
    )
    assert empty == ["TRUNCATE TABLE IF EXISTS ami.readings_by_day_local ON CLUSTER national"]
    assert copy == [
        "INSERT INTO ami.readings_by_day (meter, ts) SELECT meter, ts FROM ami.readings"
    ]
    assert swap == [
        "EXCHANGE TABLES ami.readings_local AND ami.readings_by_day_local ON CLUSTER national"
    ]
    assert cluster.statements(REBUILDS[21].drop("ami"), "national", "ami") == [
        "DROP TABLE IF EXISTS ami.readings_by_day ON CLUSTER national",
        "DROP TABLE IF EXISTS ami.readings_by_day_local ON CLUSTER national",
    ]
    with pytest.raises(cluster.ClusterDDLError, match="no cluster form"):
        cluster.statements("DROP TABLE ami.readings", "national", "ami")


def test_a_store_on_a_cluster_deletes_from_each_shard(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[str] = []
    s = Store("http://ch:8123", cluster="national")
    monkeypatch.setattr(s, "command", lambda sql, params=None: sent.append(sql))
    s.delete("anomaly_findings", {"meter": "M1"})
    s.ddl("CREATE DATABASE IF NOT EXISTS ami")
    assert sent == [
        "DELETE FROM ami.anomaly_findings_local ON CLUSTER national WHERE meter = %(w0)s",
        "CREATE DATABASE IF NOT EXISTS ami ON CLUSTER national",
    ]
    with pytest.raises(Exception, match="not an identifier"):
        Store("http://ch:8123", cluster="nat; DROP")
