"""People as users of a ClickHouse server (`[store] server_accounts = true`).

On the embedded store, analysts' tools reach people's SQL through the store process
(`headend.web.chhttp`). With a ClickHouse server, they connect to the server itself,
so each analyst is a ClickHouse user there, made from the same account:

- authenticated by the SHA-256 of each of their live personal tokens (the hash
  `headend.people` keeps: ClickHouse's ``sha256_hash``), so the token is the password;
- in the settings profile `PROFILE`: read-only (unchangeable), with people's SQL limits;
- granted SELECT on the documented tables only (never `meter_keys`, `users`,
  `user_tokens`, `audit`, `approvals`);
- for a person of some regions, a row policy on each table with the same condition as
  `headend.sqlguard.region_conditions`.

A person who is disabled, loses the analyst role or has no live token is dropped.
The statements are parsed by ClickHouse's own parser in the tests; they have not run
against a server here (none can be installed).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from headend.people import REPUBLIC, Token, User
from headend.sqlguard import MAX_BYTES, MAX_MEMORY, MAX_ROWS, MAX_SECONDS, TABLES, region_conditions

log = logging.getLogger("headend.store")

PROFILE = "headend_people"
VIEWS = frozenset({"command_status"})
"""Documented names that are views: their tables' policies apply through them."""


def _ident(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def profile_statements() -> list[str]:
    return [
        f"CREATE SETTINGS PROFILE OR REPLACE {PROFILE} SETTINGS readonly = 1 CONST, "
        f"max_execution_time = {MAX_SECONDS} CONST, max_memory_usage = {MAX_MEMORY} CONST, "
        f"max_result_rows = {MAX_ROWS} CONST, max_result_bytes = {MAX_BYTES} CONST, "
        "result_overflow_mode = 'throw' CONST"
    ]


def policy_name(user: str, table: str) -> str:
    return _ident(f"headend_{user}_{table}")


def user_statements(user: User, tokens: Iterable[Token], db: str, now: float) -> list[str]:
    """What makes `user` on the server what they are here (or removes them)."""
    name = _ident(user.name)
    digests = sorted(t.digest for t in tokens if t.name == user.name and t.live(now))
    drops = [
        f"DROP ROW POLICY IF EXISTS {policy_name(user.name, t)} ON {db}.{t}"
        for t in TABLES
        if t not in VIEWS
    ]
    analyst = "analyst" in user.roles or "admin" in user.roles
    if user.disabled or not analyst or not digests:
        return [f"DROP USER IF EXISTS {name}", *drops]
    auth = ", ".join(f"sha256_hash BY '{d}'" for d in digests)
    out = [
        f"CREATE USER OR REPLACE {name} IDENTIFIED WITH {auth} SETTINGS PROFILE '{PROFILE}'",
        *(f"GRANT SELECT ON {db}.{t} TO {name}" for t in TABLES),
        *drops,
    ]
    if REPUBLIC not in user.regions:
        for table, cond in region_conditions(db, tuple(sorted(user.regions))).items():
            if table not in VIEWS:
                out.append(
                    f"CREATE ROW POLICY OR REPLACE {policy_name(user.name, table)} ON "
                    f"{db}.{table} FOR SELECT USING {cond} TO {name}"
                )
    return out


class ServerAccounts:
    """Keeps a ClickHouse server's users in step with people (`People.on_change`)."""

    def __init__(self, store: Any, db: str) -> None:
        self.store = store
        self.db = db

    def _run(self, statements: list[str], who: str) -> None:
        for stmt in statements:
            try:
                self.store.command(stmt)
            except Exception as e:
                # The account here is saved; the server's copy is behind: say so.
                log.error("ClickHouse account of %s not updated: %s", who, e)
                return

    def sync(self, user: User, tokens: Iterable[Token]) -> None:
        self._run(user_statements(user, tokens, self.db, time.time()), user.name)

    def sync_all(self, users: Iterable[User], tokens: Iterable[Token]) -> None:
        toks = list(tokens)
        self._run(profile_statements(), PROFILE)
        for u in users:
            self.sync(u, toks)
