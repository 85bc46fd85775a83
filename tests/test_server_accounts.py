"""People as users of a ClickHouse server (headend/store/accounts.py): every statement
parsed by ClickHouse's own parser (EXPLAIN AST on the embedded engine), and the shape
of what an analyst of a region, of the republic, and a disabled or non-analyst person
get. No ClickHouse server can run here, so these statements have not been executed."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from headend.people import Token, User
from headend.sqlguard import TABLES
from headend.store.accounts import profile_statements, user_statements
from headend.store.db import Store


@pytest.fixture(scope="module")
def parser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    s = Store(f"chdb://{tmp_path_factory.mktemp('accounts') / 'ch'}").connect()
    yield s
    s.close()


def user(
    name: str, roles: tuple[str, ...], regions: tuple[str, ...], disabled: bool = False
) -> User:
    return User(name, name, roles, regions, "", disabled, 0.0, 0.0, "test")


def token(name: str, digest: str, expires_at: float = 0.0, revoked: bool = False) -> Token:
    return Token(digest[:12], name, digest, "", 0.0, expires_at, revoked, 0.0)


def parses(store: Store, stmt: str) -> str:
    _, rows = store.query(f"EXPLAIN AST {stmt}")
    return str(rows[0][0])


def test_analysts_become_read_only_users_of_their_regions(parser: Store) -> None:
    now = time.time()
    toks = [
        token("ana.sa", "a" * 64),
        token("ana.sa", "b" * 64),
        token("ana.sa", "c" * 64, expires_at=now - 1),  # expired: not a password
        token("ana.sa", "d" * 64, revoked=True),
    ]
    stmts = user_statements(user("ana.sa", ("analyst",), ("UZ-SA",)), toks, "ami", now)
    for s in [*profile_statements(), *stmts]:
        assert parses(parser, s)
    create = stmts[0]
    assert create.startswith("CREATE USER OR REPLACE `ana.sa` IDENTIFIED WITH")
    assert "a" * 64 in create
    assert "b" * 64 in create
    assert "c" * 64 not in create
    assert "d" * 64 not in create
    grants = [s for s in stmts if s.startswith("GRANT")]
    assert sorted(g.split()[3] for g in grants) == sorted(f"ami.{t}" for t in TABLES)
    assert not any("meter_keys" in s or "ami.users" in s or "audit" in s for s in stmts)
    policies = [s for s in stmts if s.startswith("CREATE ROW POLICY")]
    assert {p.split(" ON ")[1].split()[0] for p in policies} == {
        f"ami.{t}" for t in TABLES if t != "command_status"
    }
    assert all("'UZ-SA'" in p and p.endswith("TO `ana.sa`") for p in policies)
    assert "readonly = 1 CONST" in profile_statements()[0]


def test_the_republic_has_no_policies_and_others_are_dropped(parser: Store) -> None:
    now = time.time()
    toks = [token("rep", "e" * 64), token("vic", "f" * 64), token("old", "0" * 64)]
    rep = user_statements(user("rep", ("analyst",), ("*",)), toks, "ami", now)
    assert rep[0].startswith("CREATE USER")
    assert not any(s.startswith("CREATE ROW POLICY") for s in rep)
    for who in (
        user("vic", ("viewer",), ("UZ-SA",)),  # not an analyst
        user("old", ("analyst",), ("UZ-SA",), disabled=True),
        user("new", ("analyst",), ("UZ-SA",)),  # no token yet
    ):
        stmts = user_statements(who, toks, "ami", now)
        assert stmts[0] == f"DROP USER IF EXISTS `{who.name}`"
        assert all(s.startswith("DROP") for s in stmts)
        for s in stmts:
            assert parses(parser, s)
