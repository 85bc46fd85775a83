"""People: accounts, roles, regions, sessions and the audit trail (DESIGN.md section 10).

Every action is done by a named person with roles, within regions, and leaves an
``audit`` row. Accounts live in ``users`` and personal API tokens in ``user_tokens``
(both ReplacingMergeTree, newest version wins; neither is reachable by people's SQL,
see `headend.sqlguard`). Passwords are hashed with Argon2id (RFC 9106's second
recommended parameters) from ``cryptography``; tokens are 256 random bits, stored as
SHA-256 (a fast hash is right for high-entropy secrets: nothing to guess).

The store process holds one `People` (the HTTP API and the admin socket go through
it); ``headend users`` without a running server opens the embedded store and uses the
same class, so every change takes the same road and leaves the same audit row.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import json
import math
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from headend.errors import HeadendError

ROLES = ("viewer", "operator", "billing", "service", "analyst", "admin")
"""DESIGN.md section 10. Every role reads the page, API and reports of its regions."""

PERMISSIONS: dict[str, frozenset[str]] = {
    "read": frozenset(ROLES),
    "command": frozenset({"operator"}),  # read, disconnect, reconnect, clock
    "billing": frozenset({"billing"}),  # import debts and payments
    "policy": frozenset({"billing", "operator"}),  # see the policy's decisions
    "work": frozenset({"service"}),  # work orders
    "sql": frozenset({"analyst"}),  # read-only SQL on the documented tables
    "admin": frozenset(),  # users, configuration, recompute, audit, approvals
}
"""Who may do what; admin may do everything (and is audited like everyone)."""

REPUBLIC = "*"
"""The regions entry that stands for the whole republic."""

_USER = re.compile(r"^[a-z][a-z0-9._-]{1,31}$")
_REGION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,63}$")
TOKEN_PREFIX = "hk_"  # noqa: S105 (a prefix, not a secret)
# Longest life of a personal API token, seconds (ten years).
MAX_TOKEN_LIFE = 10 * 366 * 86_400.0
MIN_PASSWORD = 10


class AccessError(HeadendError):
    """Not allowed: the person lacks the role or the region (HTTP 403)."""


class LoginError(HeadendError):
    """Wrong name, password or token, or a disabled account (HTTP 401)."""


class SqlStore(Protocol):
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


# -- who is acting -------------------------------------------------------------------


@dataclass(frozen=True)
class Principal:
    """A person (or the system) acting now: name, roles, regions, and from where."""

    name: str
    roles: frozenset[str]
    regions: frozenset[str]  # {REPUBLIC} for the whole republic
    source: str = ""  # "http:10.1.2.3", "socket:uid=0", ...
    via: str = ""  # password, session, token, socket, policy, link

    @classmethod
    def system(cls, name: str, source: str, via: str) -> Principal:
        """The machine's own operator (the admin socket is the service user's) or an
        automatic actor (the billing policy): every role, the whole republic."""
        return cls(name, frozenset(ROLES), frozenset({REPUBLIC}), source, via)

    @property
    def republic(self) -> bool:
        return REPUBLIC in self.regions

    def can(self, permission: str) -> bool:
        if "admin" in self.roles:
            return True
        return bool(self.roles & PERMISSIONS[permission])

    def require(self, permission: str, what: str = "") -> None:
        if not self.can(permission):
            need = sorted(PERMISSIONS[permission] | {"admin"})
            raise AccessError(
                f"{self.name} ({', '.join(sorted(self.roles))}) may not "
                f"{what or permission}: it needs the role {' or '.join(need)}"
            )

    def sees(self, region: str) -> bool:
        """Whether a row of `region` ('' above the regions) is within reach. What lies
        above the regions (the republic's own figures) is the republic's."""
        return self.republic or (bool(region) and region in self.regions)

    def require_region(self, region: str, what: str) -> None:
        if not self.sees(region):
            raise AccessError(
                f"{what} is in region {region or 'above the regions'}, outside "
                f"{self.name}'s regions ({', '.join(sorted(self.regions))})"
            )

    def region_filter(self) -> tuple[str, ...] | None:
        """None for the whole republic, else the regions (for SQL `IN` filters)."""
        return None if self.republic else tuple(sorted(self.regions))

    @property
    def role_text(self) -> str:
        return ",".join(sorted(self.roles))

    def public(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "roles": sorted(self.roles),
            "regions": sorted(self.regions),
            "via": self.via,
        }


# -- accounts ------------------------------------------------------------------------


@dataclass
class User:
    name: str
    display_name: str
    roles: tuple[str, ...]
    regions: tuple[str, ...]
    password_hash: str
    disabled: bool
    created_at: float
    updated_at: float
    updated_by: str

    def public(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "display_name": self.display_name,
            "roles": list(self.roles),
            "regions": list(self.regions),
            "disabled": self.disabled,
            "has_password": bool(self.password_hash),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "updated_by": self.updated_by,
        }


@dataclass
class Token:
    token_id: str
    name: str
    digest: str
    label: str
    created_at: float
    expires_at: float  # 0: never
    revoked: bool
    updated_at: float

    def live(self, now: float) -> bool:
        return not self.revoked and (self.expires_at == 0 or now < self.expires_at)

    def public(self) -> dict[str, Any]:
        return {
            "token_id": self.token_id,
            "name": self.name,
            "label": self.label,
            "created_at": self.created_at,
            "expires_at": self.expires_at or None,
            "revoked": self.revoked,
        }


def hash_password(password: str) -> str:
    """Argon2id, PHC string (salt and parameters inside)."""
    from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

    kdf = Argon2id(
        salt=secrets.token_bytes(16), length=32, iterations=3, lanes=4, memory_cost=64 * 1024
    )
    return kdf.derive_phc_encoded(password.encode())


def verify_password(password: str, phc: str) -> bool:
    from cryptography.exceptions import InvalidKey
    from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

    try:
        Argon2id.verify_phc_encoded(password.encode(), phc)
    except (InvalidKey, ValueError):
        return False
    return True


# A hash to check against when the name is unknown, so the answer takes as long.
_DUMMY: list[str] = []


def _dummy_hash() -> str:
    if not _DUMMY:
        _DUMMY.append(hash_password(secrets.token_hex(16)))
    return _DUMMY[0]


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def check_roles(roles: Iterable[str]) -> tuple[str, ...]:
    out = tuple(sorted(set(roles)))
    if not out:
        raise HeadendError(f"a user needs at least one role ({', '.join(ROLES)})")
    bad = [r for r in out if r not in ROLES]
    if bad:
        raise HeadendError(f"unknown role(s) {', '.join(bad)}; roles are {', '.join(ROLES)}")
    return out


def check_regions(regions: Iterable[str]) -> tuple[str, ...]:
    out = tuple(sorted(set(regions)))
    if not out:
        raise HeadendError(f"a user needs regions (region node ids, or {REPUBLIC!r})")
    if REPUBLIC in out and len(out) > 1:
        raise HeadendError(f"{REPUBLIC!r} (the republic) stands alone in regions")
    for r in out:
        if r != REPUBLIC and not _REGION.match(r):
            raise HeadendError(f"{r!r} is not a region node id")
    return out


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise HeadendError(f"a password needs at least {MIN_PASSWORD} characters")


def _ts(v: Any) -> float:
    if isinstance(v, dt.datetime):
        aware: dt.datetime = v if v.tzinfo is not None else v.replace(tzinfo=dt.UTC)
        return aware.timestamp()
    return float(v) if v else 0.0


def _dt(t: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(t, dt.UTC)


# -- sessions ------------------------------------------------------------------------


@dataclass
class Session:
    """A page login: the cookie carries `sid`, writes also carry `csrf`."""

    sid: str
    csrf: str
    user: str
    source: str
    created: float
    last: float


@dataclass
class Throttle:
    """Failed logins per name and per address: after `free` failures in `window`
    seconds, each answer waits 2^(n - free) seconds, at most `cap`."""

    free: int = 3
    window: float = 900.0
    cap: float = 8.0
    failures: dict[str, list[float]] = field(default_factory=dict)

    def delay(self, keys: Sequence[str], now: float) -> float:
        n = 0
        for k in keys:
            recent = [t for t in self.failures.get(k, []) if now - t < self.window]
            if recent:
                self.failures[k] = recent
            else:
                self.failures.pop(k, None)
            n = max(n, len(recent))
        return 0.0 if n < self.free else min(self.cap, 2.0 ** (n - self.free))

    def failed(self, keys: Sequence[str], now: float) -> None:
        for k in keys:
            self.failures.setdefault(k, []).append(now)
        if len(self.failures) > 100_000:  # a flood of names: forget the oldest
            for k in list(self.failures)[:50_000]:
                del self.failures[k]

    def succeeded(self, keys: Sequence[str]) -> None:
        for k in keys:
            self.failures.pop(k, None)


# -- the directory -------------------------------------------------------------------


USER_COLUMNS = [
    "name",
    "display_name",
    "roles",
    "regions",
    "password_hash",
    "disabled",
    "created_at",
    "updated_at",
    "updated_by",
]
TOKEN_COLUMNS = [
    "token_id",
    "name",
    "digest",
    "label",
    "created_at",
    "expires_at",
    "revoked",
    "updated_at",
]
AUDIT_COLUMNS = [
    "at",
    "node",
    "user",
    "roles",
    "source",
    "action",
    "target",
    "outcome",
    "detail",
]


class People:
    """Accounts, tokens, sessions and the audit trail of one node. Thread-safe: the
    HTTP handlers call it from the executor (hashing takes a fifth of a second)."""

    def __init__(
        self,
        store: SqlStore,
        db: str,
        node: str,
        *,
        idle: float = 1800.0,
        absolute: float = 12 * 3600.0,
    ) -> None:
        self.store = store
        self.db = db
        self.node = node
        self.idle = idle
        self.absolute = absolute
        self.users: dict[str, User] = {}
        self.tokens: dict[str, Token] = {}
        self.sessions: dict[str, Session] = {}
        self.throttle = Throttle()
        self._lock = threading.RLock()
        # Told of every change to an account or its tokens (a ClickHouse server's users:
        # headend.store.accounts).
        self.on_change: Callable[[User, list[Token]], None] | None = None

    def _changed(self, name: str) -> None:
        u = self.users.get(name)
        if self.on_change is not None and u is not None:
            self.on_change(u, list(self.tokens.values()))

    # -- loading -----------------------------------------------------------------------

    def load(self) -> People:
        cols, rows = self.store.query(
            f"SELECT {', '.join(USER_COLUMNS)} FROM {self.db}.users FINAL"
        )
        users = {}
        for r in rows:
            d = dict(zip(cols, r, strict=True))
            users[d["name"]] = User(
                name=d["name"],
                display_name=d["display_name"],
                roles=tuple(d["roles"]),
                regions=tuple(d["regions"]),
                password_hash=d["password_hash"],
                disabled=bool(d["disabled"]),
                created_at=_ts(d["created_at"]),
                updated_at=_ts(d["updated_at"]),
                updated_by=d["updated_by"],
            )
        cols, rows = self.store.query(
            f"SELECT {', '.join(TOKEN_COLUMNS)} FROM {self.db}.user_tokens FINAL"
        )
        tokens = {}
        for r in rows:
            d = dict(zip(cols, r, strict=True))
            tokens[d["token_id"]] = Token(
                token_id=d["token_id"],
                name=d["name"],
                digest=d["digest"],
                label=d["label"],
                created_at=_ts(d["created_at"]),
                expires_at=_ts(d["expires_at"]),
                revoked=bool(d["revoked"]),
                updated_at=_ts(d["updated_at"]),
            )
        with self._lock:
            self.users, self.tokens = users, tokens
        return self

    def _put_user(self, u: User) -> None:
        row = [
            u.name,
            u.display_name,
            list(u.roles),
            list(u.regions),
            u.password_hash,
            int(u.disabled),
            _dt(u.created_at),
            _dt(u.updated_at),
            u.updated_by,
        ]
        self.store.insert_rows("users", USER_COLUMNS, [row])
        self.users[u.name] = u

    def _put_token(self, t: Token) -> None:
        row = [
            t.token_id,
            t.name,
            t.digest,
            t.label,
            _dt(t.created_at),
            _dt(t.expires_at),
            int(t.revoked),
            _dt(t.updated_at),
        ]
        self.store.insert_rows("user_tokens", TOKEN_COLUMNS, [row])
        self.tokens[t.token_id] = t

    @staticmethod
    def _stamp(old: float) -> float:
        """A version newer than `old` (ReplacingMergeTree keeps the newest)."""
        return max(time.time(), old + 0.001)

    # -- the audit trail -------------------------------------------------------------

    def audit(
        self,
        who: Principal,
        action: str,
        target: str = "",
        outcome: str = "ok",
        detail: dict[str, Any] | None = None,
    ) -> None:
        """One row in ``audit``: who (name, roles), from where, what, on what, how it
        ended, and the details (before/after where they apply). Secrets never go in."""
        self.audit_many([(who, action, target, outcome, detail)])

    def audit_many(
        self, entries: list[tuple[Principal, str, str, str, dict[str, Any] | None]]
    ) -> None:
        """Many audit rows in one insert (a wave's steps): (who, action, target,
        outcome, detail) each."""
        now = _dt(time.time())
        rows = [
            [
                now,
                self.node,
                who.name,
                who.role_text,
                who.source,
                action,
                target,
                outcome,
                json.dumps(detail or {}, default=str, sort_keys=True),
            ]
            for who, action, target, outcome, detail in entries
        ]
        if rows:
            self.store.insert_rows("audit", AUDIT_COLUMNS, rows)

    def read_audit(
        self,
        *,
        user: str | None = None,
        action: str | None = None,
        since: float = 0.0,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        where = ["at >= %(since)s"]
        params: dict[str, Any] = {"since": _dt(since), "limit": int(limit)}
        if user:
            where.append("user = %(user)s")
            params["user"] = user
        if action:
            where.append("action = %(action)s")
            params["action"] = action
        cols, rows = self.store.query(
            f"SELECT {', '.join(AUDIT_COLUMNS)} FROM {self.db}.audit "
            f"WHERE {' AND '.join(where)} ORDER BY at DESC LIMIT %(limit)s",
            params,
        )
        out = []
        for r in rows:
            d = dict(zip(cols, r, strict=True))
            d["at"] = _ts(d["at"])
            with contextlib.suppress(ValueError):
                d["detail"] = json.loads(d["detail"])
            out.append(d)
        return out

    # -- accounts --------------------------------------------------------------------

    def get(self, name: str) -> User:
        u = self.users.get(name)
        if u is None:
            raise HeadendError(f"no user {name!r}")
        return u

    def add(
        self,
        by: Principal,
        name: str,
        roles: Iterable[str],
        regions: Iterable[str],
        *,
        password: str = "",
        display_name: str = "",
    ) -> User:
        by.require("admin", "manage users")
        if not _USER.match(name):
            raise HeadendError(
                f"user name {name!r}: 2-32 lower-case letters, digits, '.', '_' or '-', "
                "starting with a letter"
            )
        roles_t, regions_t = check_roles(roles), check_regions(regions)
        if password:
            check_password(password)
        with self._lock:
            if name in self.users:
                raise HeadendError(f"user {name} exists (use users set or passwd)")
            now = time.time()
            u = User(
                name=name,
                display_name=display_name or name,
                roles=roles_t,
                regions=regions_t,
                password_hash=hash_password(password) if password else "",
                disabled=False,
                created_at=now,
                updated_at=now,
                updated_by=by.name,
            )
            self._put_user(u)
        self._changed(name)
        self.audit(by, "user.add", name, detail={"after": _account(u)})
        return u

    def update(
        self,
        by: Principal,
        name: str,
        *,
        roles: Iterable[str] | None = None,
        regions: Iterable[str] | None = None,
        disabled: bool | None = None,
        display_name: str | None = None,
    ) -> User:
        by.require("admin", "manage users")
        with self._lock:
            u = self.get(name)
            before = _account(u)
            if roles is not None:
                u.roles = check_roles(roles)
            if regions is not None:
                u.regions = check_regions(regions)
            if disabled is not None:
                if disabled and name == by.name:
                    raise HeadendError("an admin cannot disable themselves")
                u.disabled = disabled
            if display_name is not None:
                u.display_name = display_name
            u.updated_at, u.updated_by = self._stamp(u.updated_at), by.name
            self._put_user(u)
            if u.disabled:  # a disabled account's sessions end now
                for sid in [s.sid for s in self.sessions.values() if s.user == name]:
                    self.sessions.pop(sid, None)
        self._changed(name)
        self.audit(by, "user.update", name, detail={"before": before, "after": _account(u)})
        return u

    def set_password(self, by: Principal, name: str, password: str) -> None:
        if by.name != name:
            by.require("admin", "set another user's password")
        check_password(password)
        phc = hash_password(password)
        with self._lock:
            u = self.get(name)
            u.password_hash = phc
            u.updated_at, u.updated_by = self._stamp(u.updated_at), by.name
            self._put_user(u)
            for sid in [s.sid for s in self.sessions.values() if s.user == name]:
                self.sessions.pop(sid, None)
        self.audit(by, "user.passwd", name)

    def issue_token(
        self, by: Principal, name: str, label: str = "", expires_in: float | None = None
    ) -> tuple[str, Token]:
        """A new personal API token for `name`; the secret is returned once, only its
        hash is kept."""
        if by.name != name:
            by.require("admin", "issue another user's token")
        if expires_in is not None and not (
            math.isfinite(expires_in) and 0 < expires_in <= MAX_TOKEN_LIFE
        ):
            raise HeadendError(
                f"expires_in must be between 1 second and {MAX_TOKEN_LIFE / 86_400:.0f} days "
                f"(or none), got {expires_in!r}"
            )
        with self._lock:
            u = self.get(name)
            if u.disabled:
                raise HeadendError(f"user {name} is disabled")
            token_id = secrets.token_hex(6)
            token = f"{TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
            now = time.time()
            t = Token(
                token_id=token_id,
                name=name,
                digest=_digest(token),  # of the whole token: a ClickHouse sha256_hash too
                label=label,
                created_at=now,
                expires_at=now + expires_in if expires_in else 0.0,
                revoked=False,
                updated_at=now,
            )
            self._put_token(t)
        self._changed(name)
        self.audit(by, "token.issue", name, detail={"token_id": token_id, "label": label})
        return token, t

    def adopt_token(self, by: Principal, name: str, secret: str, label: str) -> Token:
        """Keeps a token that exists outside (the retired `[http] token`) as `name`'s
        personal token: only its hash is stored."""
        digest = _digest(secret)
        with self._lock:
            for t in self.tokens.values():
                if t.name == name and t.digest == digest and not t.revoked:
                    return t
            now = time.time()
            t = Token(
                token_id=secrets.token_hex(6),
                name=name,
                digest=digest,
                label=label,
                created_at=now,
                expires_at=0.0,
                revoked=False,
                updated_at=now,
            )
            self._put_token(t)
        self._changed(name)
        self.audit(by, "token.adopt", name, detail={"token_id": t.token_id, "label": label})
        return t

    def revoke_token(self, by: Principal, token_id: str) -> Token:
        with self._lock:
            t = self.tokens.get(token_id)
            if t is None:
                raise HeadendError(f"no token {token_id!r}")
            if by.name != t.name:
                by.require("admin", "revoke another user's token")
            t.revoked = True
            t.updated_at = self._stamp(t.updated_at)
            self._put_token(t)
        self._changed(t.name)
        self.audit(by, "token.revoke", t.name, detail={"token_id": token_id})
        return t

    def list_users(self) -> list[dict[str, Any]]:
        with self._lock:
            out = []
            for u in sorted(self.users.values(), key=lambda u: u.name):
                d = u.public()
                d["tokens"] = [
                    t.public()
                    for t in self.tokens.values()
                    if t.name == u.name and t.live(time.time())
                ]
                out.append(d)
            return out

    # -- authentication --------------------------------------------------------------

    def principal(self, u: User, source: str, via: str) -> Principal:
        return Principal(u.name, frozenset(u.roles), frozenset(u.regions), source, via)

    def by_password(self, name: str, password: str, source: str) -> Principal:
        """Checks a name and password (the delay for repeated failures is the
        caller's: `throttle`); every attempt leaves an audit row."""
        u = self.users.get(name)
        ok = verify_password(password, u.password_hash if u and u.password_hash else _dummy_hash())
        who = Principal(name, frozenset(u.roles) if u else frozenset(), frozenset(), source, "")
        if not ok or u is None or not u.password_hash:
            self.audit(who, "login", name, "refused", {"why": "wrong name or password"})
            raise LoginError("wrong name or password")
        if u.disabled:
            self.audit(who, "login", name, "refused", {"why": "disabled"})
            raise LoginError("wrong name or password")
        p = self.principal(u, source, "password")
        self.audit(p, "login", name)
        return p

    def by_token(self, token: str, source: str) -> Principal:
        t: Token | None
        digest = _digest(token)  # tokens are hashed whole
        if token.startswith(TOKEN_PREFIX) and token.count("_") >= 2:
            t = self.tokens.get(token[len(TOKEN_PREFIX) :].partition("_")[0])
        else:  # an adopted token (the retired [http] token)
            t = next((x for x in self.tokens.values() if x.digest == digest), None)
        if t is None or not hmac.compare_digest(t.digest, digest):
            raise LoginError("unknown API token")
        if not t.live(time.time()):
            raise LoginError("this API token has expired or was revoked")
        u = self.users.get(t.name)
        if u is None or u.disabled:
            raise LoginError("the token's user is disabled")
        return self.principal(u, source, "token")

    def open_session(self, p: Principal) -> Session:
        now = time.time()
        sid, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(24)
        s = Session(sid, csrf, p.name, p.source, now, now)
        with self._lock:
            self.sessions[s.sid] = s
            if len(self.sessions) > 50_000:
                self._expire(now)
        return s

    def _expire(self, now: float) -> None:
        for sid, s in list(self.sessions.items()):
            if now - s.last > self.idle or now - s.created > self.absolute:
                del self.sessions[sid]

    def by_session(self, sid: str, source: str) -> tuple[Principal, Session]:
        now = time.time()
        with self._lock:
            s = self.sessions.get(sid)
            if s is None:
                raise LoginError("not logged in (or the session ended)")
            if now - s.last > self.idle or now - s.created > self.absolute:
                del self.sessions[sid]
                raise LoginError("the session timed out: log in again")
            u = self.users.get(s.user)
            if u is None or u.disabled:
                del self.sessions[sid]
                raise LoginError("the account is disabled")
            s.last = now
        return self.principal(u, source, "session"), s

    def close_session(self, sid: str) -> Session | None:
        with self._lock:
            return self.sessions.pop(sid, None)


def _account(u: User) -> dict[str, Any]:
    """What the audit keeps of an account (never its hash)."""
    return {
        "roles": list(u.roles),
        "regions": list(u.regions),
        "disabled": u.disabled,
        "display_name": u.display_name,
    }
