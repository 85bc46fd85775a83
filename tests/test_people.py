"""People (DESIGN.md section 10): accounts with hashed passwords and tokens, roles and
regions, the login throttle, and SQL for people (headend.sqlguard) against the real
embedded ClickHouse, with the probes an attacker on the machine tried."""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from headend.errors import HeadendError
from headend.people import AccessError, LoginError, People, Principal, Throttle
from headend.sqlguard import Guard, SqlRefused
from headend.store.db import Store, migrate

ADMIN = Principal.system("test-admin", "test", "test")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    s = Store(f"chdb://{tmp_path_factory.mktemp('people') / 'ch'}").connect()
    migrate(s)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    meters = [
        # serial, kind, role, node_id, account_id, model, system_title, lat, lon, region
        ["SA1", "electricity", "consumer", "T-SA", "A1", "e1ph", "", 0.0, 0.0, "UZ-SA"],
        ["FA1", "electricity", "consumer", "T-FA", "A2", "e1ph", "", 0.0, 0.0, "UZ-FA"],
    ]
    cols = [
        "serial",
        "kind",
        "role",
        "node_id",
        "account_id",
        "model",
        "system_title",
        "lat",
        "lon",
        "region",
        "updated_at",
    ]
    s.insert_rows("meters", cols, [[*m, now] for m in meters])
    rcols = ["meter", "obis", "ts", "value", "unit", "status", "source", "quality", "received_at"]
    s.insert_rows(
        "readings",
        rcols,
        [
            [m, 1, now - dt.timedelta(minutes=i), 1.0 + i, "kWh", 0, "push", "measured", now]
            for m in ("SA1", "FA1")
            for i in range(3)
        ],
    )
    s.insert_rows(
        "meter_keys",
        ["serial", "ek", "ak", "password", "updated_at"],
        [["SA1", "wrapped-ek", "wrapped-ak", "", now]],
    )
    yield s
    s.close()


def test_passwords_and_tokens_are_kept_as_hashes(store: Store) -> None:
    people = People(store, "ami", "n1")
    people.add(ADMIN, "alice", ["operator"], ["UZ-SA"], password="a long password")
    row = store.query("SELECT password_hash FROM ami.users FINAL WHERE name = 'alice'")[1]
    assert row[0][0].startswith("$argon2id$")
    assert "a long password" not in row[0][0]
    with pytest.raises(LoginError):
        people.by_password("alice", "a wrong password", "test")
    who = people.by_password("alice", "a long password", "test")
    assert who.roles == {"operator"}
    assert who.regions == {"UZ-SA"}
    # A reloaded directory (another process, a restart) knows the same.
    again = People(store, "ami", "n1").load()
    assert again.by_password("alice", "a long password", "test").name == "alice"

    secret, tok = people.issue_token(ADMIN, "alice", "script", expires_in=3600)
    digest = store.query(
        "SELECT digest FROM ami.user_tokens FINAL WHERE token_id = %(t)s", {"t": tok.token_id}
    )[1][0][0]
    assert secret.split("_", 2)[2] not in digest
    assert digest == hashlib.sha256(secret.encode()).hexdigest()  # ClickHouse's sha256_hash
    assert people.by_token(secret, "test").name == "alice"
    with pytest.raises(LoginError):
        people.by_token(secret[:-1] + ("A" if secret[-1] != "A" else "B"), "test")
    people.revoke_token(ADMIN, tok.token_id)
    with pytest.raises(LoginError, match="revoked"):
        people.by_token(secret, "test")
    short, _t2 = people.issue_token(ADMIN, "alice", "short", expires_in=0.2)
    time.sleep(0.3)
    with pytest.raises(LoginError, match="expired"):
        people.by_token(short, "test")
    # Disabled: no password login, no token, sessions end.
    live, _ = people.issue_token(ADMIN, "alice")
    session = people.open_session(people.by_password("alice", "a long password", "test"))
    people.update(ADMIN, "alice", disabled=True)
    with pytest.raises(LoginError):
        people.by_password("alice", "a long password", "test")
    with pytest.raises(LoginError):
        people.by_token(live, "test")
    with pytest.raises(LoginError):
        people.by_session(session.sid, "test")
    # Every change and login is in the audit trail, with before and after.
    rows = people.read_audit(user=None, limit=100)
    actions = [(r["user"], r["action"], r["outcome"]) for r in rows]
    assert ("test-admin", "user.add", "ok") in actions
    assert ("alice", "login", "refused") in actions
    assert ("test-admin", "token.revoke", "ok") in actions
    upd = next(r for r in rows if r["action"] == "user.update")
    assert upd["detail"]["before"]["disabled"] is False
    assert upd["detail"]["after"]["disabled"] is True
    assert not any("a long password" in str(r) for r in rows)


def test_roles_regions_and_bad_accounts(store: Store) -> None:
    people = People(store, "ami", "n1")
    viewer = Principal("v", frozenset({"viewer"}), frozenset({"UZ-SA"}))
    with pytest.raises(AccessError, match="needs the role admin"):
        people.add(viewer, "bob", ["viewer"], ["UZ-SA"])
    for bad in (
        lambda: people.add(ADMIN, "Bob!", ["viewer"], ["UZ-SA"]),
        lambda: people.add(ADMIN, "bob", ["king"], ["UZ-SA"]),
        lambda: people.add(ADMIN, "bob", ["viewer"], []),
        lambda: people.add(ADMIN, "bob", ["viewer"], ["*", "UZ-SA"]),
        lambda: people.add(ADMIN, "bob", ["viewer"], ["UZ-SA"], password="short"),
    ):
        with pytest.raises(HeadendError):
            bad()
    assert viewer.sees("UZ-SA")
    assert not viewer.sees("UZ-FA")
    assert not viewer.sees("")
    with pytest.raises(AccessError, match="region UZ-FA, outside v's regions"):
        viewer.require_region("UZ-FA", "meter FA1")
    op = Principal("o", frozenset({"operator"}), frozenset({"UZ-SA"}))
    assert op.can("command")
    assert not op.can("billing")
    assert not op.can("sql")
    assert ADMIN.can("sql")
    assert ADMIN.sees("UZ-FA")


def test_failed_logins_slow_down() -> None:
    t = Throttle(free=3, cap=8.0)
    keys = ["name:alice", "ip:10.0.0.9"]
    assert t.delay(keys, 0.0) == 0.0
    for i in range(3):
        t.failed(keys, float(i))
    assert t.delay(keys, 3.0) == 1.0
    t.failed(keys, 3.0)
    t.failed(keys, 4.0)
    assert t.delay(keys, 5.0) == 4.0
    for i in range(10):
        t.failed(["ip:10.0.0.9"], 5.0 + i)
    assert t.delay(["name:other", "ip:10.0.0.9"], 20.0) == 8.0  # capped; the address counts
    assert t.delay(keys, 5.0 + t.window + 100) == 0.0  # forgotten after the window
    t.succeeded(keys)
    assert t.delay(keys, 30.0) == 0.0


PROBES = [
    # The probe of the issue: each read the key table, a file or the network, or wrote.
    "SELECT * FROM ami.`meter_keys`",
    'SELECT * FROM `ami`."meter_keys"',
    "SELECT * FROM merge('ami', '^meter_k')",
    "SELECT file('/etc/passwd')",
    "SELECT * FROM file('/etc/passwd', 'LineAsString')",
    "SELECT * FROM url('http://127.0.0.1:8080/api/summary', 'JSONAsString')",
    "INSERT INTO FUNCTION file('/tmp/headend-probe.csv') SELECT 1",
    "CREATE TABLE ami.x (a UInt8) ENGINE = Memory",
    "DROP TABLE ami.readings",
    "SELECT 1; DROP TABLE ami.readings",
    "SELECT 'SA1' IN ami.meter_keys",
    "SELECT * FROM ami.readings WHERE meter IN (SELECT serial FROM ami.meter_keys)",
    "SELECT * FROM view(SELECT * FROM ami.meter_keys)",
    "SELECT * FROM ami.users",
    "SELECT * FROM ami.audit",
    "SELECT * FROM system.query_log",
    "SELECT dictGet('d', 'a', 1)",
    "SELECT decrypt('aes-256-gcm', 'a', 'b')",
    "SELECT * FROM ami.readings SETTINGS readonly = 0",
    "SELECT * FROM ami.readings INTO OUTFILE '/tmp/headend-probe.out'",
    "SELECT * FROM ami.readings FORMAT JSON",
    "SELECT * FROM remote('127.0.0.1', ami.meter_keys)",
]


@pytest.mark.parametrize("probe", PROBES)
def test_sql_for_people_refuses_the_probes(store: Store, probe: str) -> None:
    guard = Guard(store, "ami")
    before = store.query("SELECT count() FROM system.tables WHERE database = 'ami'")[1]
    with pytest.raises(SqlRefused):
        store.query(guard.prepare(probe, None))
    after = store.query("SELECT count() FROM system.tables WHERE database = 'ami'")[1]
    assert before == after
    assert not Path("/tmp/headend-probe.csv").exists()
    assert not Path("/tmp/headend-probe.out").exists()


def test_sql_for_people_reads_the_documented_tables_of_their_regions(store: Store) -> None:
    guard = Guard(store, "ami")

    def run(q: str, regions: tuple[str, ...] | None) -> list[Any]:
        return store.query(guard.prepare(q, regions))[1]

    q = "SELECT meter, count() FROM ami.readings GROUP BY meter ORDER BY meter"
    assert run(q, None) == [("FA1", 3), ("SA1", 3)]
    assert run(q, ("UZ-SA",)) == [("SA1", 3)]
    # However the table is reached: a subquery, a CTE, a join, IN.
    assert run(
        "WITH r AS (SELECT * FROM ami.readings) SELECT uniqExact(meter) FROM r", ("UZ-FA",)
    ) == [(1,)]
    assert run(
        "SELECT count() FROM ami.readings r JOIN ami.meters m ON m.serial = r.meter "
        "WHERE m.region != 'UZ-SA'",
        ("UZ-SA",),
    ) == [(0,)]
    assert run("SELECT count() FROM ami.meters WHERE serial IN ('SA1', 'FA1')", ("UZ-SA",)) == [
        (1,)
    ]
    # Analysts' ordinary tools: aggregates with combinators, windows, dates, numbers().
    assert run(
        "SELECT sumIf(value, value > 1), quantileExact(0.5)(value), "
        "max(toStartOfHour(ts)) <= now(), count() OVER () FROM ami.readings LIMIT 1",
        None,
    )
    assert run("SELECT count() FROM numbers(10)", None) == [(10,)]
    # Limits are set by the server, not the query.
    sql = guard.prepare("SELECT 1", ("UZ-SA",))
    assert "readonly = 1" in sql
    assert "max_execution_time" in sql
    assert "max_result_rows" in sql
