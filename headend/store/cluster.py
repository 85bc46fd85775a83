"""The schema on a ClickHouse cluster (`[store] cluster = "NAME"`): the centre's
store at national scale.

The migrations are written for one server. With a cluster named, each statement is
rewritten here:

- a table `T` becomes `T_local` on every node (`ON CLUSTER`), its engine the
  replicated form of its own (`ReplacingMergeTree(v)` becomes
  `ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/<db>/T_local', '{replica}',
  v)`), plus `T` itself, a `Distributed` table over the `T_local` of every shard. The
  application reads and writes `T` as before;
- each table is sharded by a function of its sorting key (`SHARDING`), so the rows
  that `FINAL` and the deduplication compare always sit on one shard: a meter's
  series (readings, consumption, events), a node's balances, an account, a serial;
- views are created `ON CLUSTER`; the late-readings view reads the local table on
  each shard and writes the local one; settings and TTL go to the local tables;
  `non_replicated_deduplication_window` becomes `replicated_deduplication_window`;
- lightweight deletes go to the local tables `ON CLUSTER` (`Store.delete`);
- a table rebuilt under a new layout (`db.REBUILDS`) is copied through the Distributed
  tables, then the local tables are swapped `ON CLUSTER` (each Distributed table names
  its local one) and the old layout dropped. The swapped table keeps the replication
  path it was created with (`.../readings_by_day_local`): a later rebuild of the same
  table must use another name.

What was run here: every migration's rewritten statements are parsed by
ClickHouse's own parser (`EXPLAIN AST`, in the embedded engine) in the tests. What was
not: no ClickHouse server or Keeper runs on the machines this project is built on, so
the replicated tables, the Distributed inserts (with their deduplication tokens) and
queries across shards have not been executed. The application's joins of a large
table with a dimension table (meters, grid nodes) need
`distributed_product_mode = 'global'` on a cluster; the store sets it.
"""

from __future__ import annotations

import re

SHARDING: dict[str, str] = {
    "readings": "cityHash64(meter)",
    "readings_by_day": "cityHash64(meter)",
    "events": "cityHash64(meter)",
    "consumption": "cityHash64(meter)",
    "late_readings": "cityHash64(meter)",
    "anomaly_findings": "cityHash64(meter)",
    "sessions": "cityHash64(session_id)",
    "invocation_counters": "cityHash64(system_title)",
    "meter_titles": "cityHash64(system_title)",
    "balances": "cityHash64(node_id)",
    "grid_nodes": "cityHash64(node_id)",
    "meters": "cityHash64(serial)",
    "meter_keys": "cityHash64(serial)",
    "commands": "cityHash64(serial)",
    "billing_accounts": "cityHash64(account_id)",
    "policy_actions": "cityHash64(account_id)",
    "users": "cityHash64(name)",
    "user_tokens": "cityHash64(token_id)",
    "audit": "cityHash64(user)",
    "approvals": "cityHash64(approval_id)",
    "waves": "cityHash64(wave_id)",
    "service_centres": "cityHash64(centre_id)",
    "work_order_log": "cityHash64(serial)",
    "meter_seen": "cityHash64(meter)",
    "meter_battery": "cityHash64(meter)",
    "account_flags": "cityHash64(account_id)",
    "outages": "cityHash64(outage_id)",
    "payments": "cityHash64(payment_id)",
    "notifications": "cityHash64(notification_id)",
    "outage_meters": "cityHash64(outage_id)",
    "schema_migrations": "version",
}
"""Each table's sharding key: a function of its sorting key's first column."""

LOCAL = "_local"
SETTINGS = {"distributed_product_mode": "global"}
"""Session settings of a store on a cluster."""

_CREATE = re.compile(
    r"^CREATE TABLE IF NOT EXISTS (?P<db>\w+)\.(?P<table>\w+)\s*(?P<cols>\(.*\))\s*"
    r"ENGINE\s*=\s*(?P<engine>\w+)(?:\((?P<args>[^)]*)\))?(?P<rest>.*)$",
    re.S,
)
_ALTER = re.compile(r"^ALTER TABLE (?P<db>\w+)\.(?P<table>\w+)\s+(?P<what>.*)$", re.S)
_VIEW = re.compile(
    r"^CREATE (?P<kind>(?:MATERIALIZED )?VIEW) IF NOT EXISTS (?P<name>\w+\.\w+)(?P<rest>.*)$", re.S
)
_DATABASE = re.compile(r"^CREATE DATABASE IF NOT EXISTS (?P<db>\w+)$")
_DROP_VIEW = re.compile(r"^DROP VIEW IF EXISTS (?P<name>\w+\.\w+)$")
_TRUNCATE = re.compile(r"^TRUNCATE TABLE IF EXISTS (?P<name>\w+\.\w+)$")
_EXCHANGE = re.compile(r"^EXCHANGE TABLES (?P<a>\w+\.\w+) AND (?P<b>\w+\.\w+)$")
_DROP_TABLE = re.compile(r"^DROP TABLE IF EXISTS (?P<name>\w+\.\w+)$")
# A table's rows are in its local tables; its Distributed table names the local one,
# so swapping the local tables swaps what the Distributed ones read and write.
_SIMPLE = (
    (_DATABASE, ["CREATE DATABASE IF NOT EXISTS {db} {on}"]),
    (_DROP_VIEW, ["DROP VIEW IF EXISTS {name} {on}"]),
    (_TRUNCATE, [f"TRUNCATE TABLE IF EXISTS {{name}}{LOCAL} {{on}}"]),
    (_EXCHANGE, [f"EXCHANGE TABLES {{a}}{LOCAL} AND {{b}}{LOCAL} {{on}}"]),
    (
        _DROP_TABLE,
        ["DROP TABLE IF EXISTS {name} {on}", f"DROP TABLE IF EXISTS {{name}}{LOCAL} {{on}}"],
    ),
)


class ClusterDDLError(ValueError):
    """A migration statement this rewriting does not know how to place on a cluster."""


def statements(stmt: str, cluster: str, db: str) -> list[str]:
    """The statements that do on `cluster` what `stmt` (with `{db}` already put in)
    does on one server."""
    text = stmt.strip()
    on = f"ON CLUSTER {cluster}"
    for pattern, forms in _SIMPLE:
        if m := pattern.match(text):
            return [form.format(**m.groupdict(), on=on) for form in forms]
    if m := _CREATE.match(text):
        return _table(m, cluster)
    if m := _VIEW.match(text):
        rest = m["rest"]
        if m["kind"].startswith("MATERIALIZED"):
            # Fires on each shard's inserts into the local table, into the local one.
            rest = re.sub(rf"\b({db}\.\w+)\b", rf"\1{LOCAL}", rest)
        return [f"CREATE {m['kind']} IF NOT EXISTS {m['name']} {on}{rest}"]
    if m := _ALTER.match(text):
        what = m["what"]
        local = f"ALTER TABLE {m['db']}.{m['table']}{LOCAL} {on} "
        if what.startswith("ADD COLUMN"):
            # The Distributed table's columns follow the local ones'.
            return [local + what, f"ALTER TABLE {m['db']}.{m['table']} {on} {what}"]
        what = what.replace(
            "non_replicated_deduplication_window", "replicated_deduplication_window"
        )
        return [local + what]
    if text.startswith("INSERT INTO"):
        return [text]  # through the Distributed tables
    raise ClusterDDLError(f"no cluster form for: {text[:80]}")


def _table(m: re.Match[str], cluster: str) -> list[str]:
    db, table, engine = m["db"], m["table"], m["engine"]
    if not engine.endswith("MergeTree"):
        raise ClusterDDLError(f"{db}.{table}: engine {engine} has no replicated form")
    if table not in SHARDING:
        raise ClusterDDLError(f"{db}.{table}: no sharding key (headend/store/cluster.py)")
    path = f"'/clickhouse/tables/{{shard}}/{db}/{table}{LOCAL}', '{{replica}}'"
    args = f"{path}, {m['args']}" if m["args"] else path
    rest = m["rest"].replace(
        "non_replicated_deduplication_window", "replicated_deduplication_window"
    )
    return [
        f"CREATE TABLE IF NOT EXISTS {db}.{table}{LOCAL} ON CLUSTER {cluster} {m['cols']} "
        f"ENGINE = Replicated{engine}({args}){rest}",
        f"CREATE TABLE IF NOT EXISTS {db}.{table} ON CLUSTER {cluster} AS {db}.{table}{LOCAL} "
        f"ENGINE = Distributed({cluster}, {db}, {table}{LOCAL}, {SHARDING[table]})",
    ]
