"""People in the store process: who is on the admin socket, the retired shared token,
and the admin socket's ``users.*`` and ``audit`` commands (``headend users``,
``headend audit``).

The admin socket is mode 0600: whoever reaches it runs as the service user, which
already holds the data and the master key. It is named by the kernel (SO_PEERCRED),
not by anything the client says, and acts with every role over the republic.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import socket
import struct
from typing import Any

from headend.config import Config
from headend.errors import HeadendError
from headend.people import REPUBLIC, AccessError, LoginError, People, Principal
from headend.sqlguard import Guard

log = logging.getLogger("headend.store")

LEGACY_ADMIN = "token-admin"
"""The admin that holds the retired `[http] token` as a personal token."""


def socket_principal(sock: socket.socket | None) -> Principal:
    """The person on the other end of a Unix socket, from the kernel's credentials."""
    uid, pid = -1, 0
    if sock is not None:
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            pid, uid, _gid = struct.unpack("3i", raw)
        except OSError:
            pass
    try:
        name = pwd.getpwuid(uid).pw_name if uid >= 0 else "unknown"
    except KeyError:
        name = f"uid{uid}"
    return Principal.system(f"os:{name}", f"socket:uid={uid},pid={pid}", "socket")


SERVICE_ONLY = frozenset({"query", "maintain", "backup"})
"""Admin-socket commands that are the service's own: never a person's (their SQL is
`sql`, through the guard)."""
PERSON_NEEDS = {
    "cancel": "command",
    "policy": "policy",
    "schedule": "admin",
    "handover": "admin",
    "recompute": "admin",
    "detect": "admin",
    "insert": "admin",
    "drain": "admin",
    "audit": "admin",
    "sql": "sql",
    "users.list": "admin",
}
"""What a person ($HEADEND_TOKEN) needs for each admin-socket command; commands,
batches, accounts and approvals check for themselves, the rest only read."""


def check_person(who: Principal, req: dict[str, Any]) -> None:
    """A person's admin-socket command within their roles (the socket's owner may do
    everything)."""
    if who.via != "token":
        return
    cmd = str(req.get("cmd"))
    if cmd in SERVICE_ONLY:
        raise AccessError(f"{cmd} is the service's own; people's SQL is headend sql")
    need = PERSON_NEEDS.get(cmd)
    if cmd == "insert" and req.get("table") == "billing_accounts":
        need = "billing"
    if cmd == "policy" and req.get("act"):
        need = "billing"
    if need:
        who.require(need, cmd)
    if cmd == "insert" and not who.republic:
        raise AccessError(
            "imports through the admin socket are for people of the whole republic; "
            "the HTTP API checks each row's region"
        )


def socket_person(people: People, owner: Principal, token: Any) -> Principal:
    """Who a command on the admin socket is for: the person whose token it carries
    (their roles and regions apply; the socket's owner is named as where from), or
    the socket's owner."""
    if token is None:
        return owner
    try:
        return people.by_token(str(token), f"{owner.source} ({owner.name})")
    except LoginError as e:
        raise HeadendError(f"HEADEND_TOKEN: {e}") from None


def local_principal() -> Principal:
    """The person running a command on this machine without the server: the owner of
    the process (who can open the data directory, so is the service user)."""
    uid = os.getuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = f"uid{uid}"
    return Principal.system(f"os:{name}", f"local:uid={uid},pid={os.getpid()}", "cli")


def people_for(cfg: Config, store: Any) -> People:
    return People(
        store,
        cfg.store.database,
        cfg.node.name,
        idle=cfg.http.session_idle,
        absolute=cfg.http.session_max,
    )


def adopt_legacy_token(cfg: Config, people: People) -> None:
    """A configured `[http] token` becomes the personal token of `token-admin` (made
    on first start), so scripts that used it keep working and are attributed."""
    token = cfg.http.token
    if not token:
        return
    system = Principal.system("system:config", f"config:{cfg.source or 'defaults'}", "config")
    if LEGACY_ADMIN not in people.users:
        people.add(system, LEGACY_ADMIN, ["admin"], [REPUBLIC], display_name="[http] token")
        log.warning(
            "[http] token is retired: it is now the personal token of user %s; "
            "give people their own accounts (headend users add) and remove it",
            LEGACY_ADMIN,
        )
    people.adopt_token(system, LEGACY_ADMIN, token, "[http] token")


async def admin_command(
    people: People, guard: Guard, store: Any, who: Principal, req: dict[str, Any]
) -> Any:
    """The admin socket's people commands (run in the executor: hashing is slow)."""
    loop = asyncio.get_running_loop()
    cmd = str(req.get("cmd"))

    def sql() -> Any:
        text = str(req.get("query", ""))
        prepared = guard.prepare(text, who.region_filter())
        cols, rows = store.query(prepared)
        people.audit(who, "sql", "", detail={"query": text[:2000]})
        return cols, rows

    def passwd() -> Any:
        people.set_password(who, str(req["name"]), str(req["password"]))
        return {"ok": True}

    def token() -> Any:
        raw = req.get("expires_in")
        try:
            expires = float(raw) if raw else None
        except (TypeError, ValueError):
            raise HeadendError(f"expires_in must be a number of seconds, got {raw!r}") from None
        secret, t = people.issue_token(who, str(req["name"]), str(req.get("label") or ""), expires)
        return {"token": secret, **t.public()}

    handlers: dict[str, Any] = {
        "users.list": lambda: {"users": people.list_users()},
        "users.add": lambda: people.add(
            who,
            str(req["name"]),
            list(req.get("roles") or []),
            list(req.get("regions") or []),
            password=str(req.get("password") or ""),
            display_name=str(req.get("display_name") or ""),
        ).public(),
        "users.set": lambda: people.update(
            who,
            str(req["name"]),
            roles=req.get("roles"),
            regions=req.get("regions"),
            disabled=req.get("disabled"),
            display_name=req.get("display_name"),
        ).public(),
        "users.passwd": passwd,
        "users.token": token,
        "users.revoke": lambda: people.revoke_token(who, str(req["token_id"])).public(),
        "audit": lambda: {
            "rows": people.read_audit(
                user=req.get("user"),
                action=req.get("action"),
                since=float(req.get("since") or 0),
                limit=int(req.get("limit") or 100),
            )
        },
        "sql": sql,
    }
    run = handlers.get(cmd)
    if run is None:
        raise HeadendError(f"unknown admin command {cmd!r}")
    return await loop.run_in_executor(None, run)


def lock_down(cfg: Config) -> None:
    """The data directory is the service user's alone (mode 0700): spool, store,
    secrets, logs and the run directory's settings are unreadable to other users
    whatever their own modes, even on an installation made before this rule."""
    d = cfg.data_dir
    try:
        if d.stat().st_mode & 0o077:
            os.chmod(d, 0o700)
            log.info("data directory %s is now mode 0700 (the service user's alone)", d)
    except OSError as e:
        raise HeadendError(f"cannot restrict the data directory {d}: {e.strerror}") from e
