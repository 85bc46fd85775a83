"""``headend users``, ``headend audit`` and ``headend certs``: people's accounts, the
audit trail and HTTPS certificates from the command line (DESIGN.md section 10).
Through the running server when there is one, else on the store directly; either way
as the local user (the service user: the one who can reach the admin socket or the
data directory), and audited.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from headend.errors import HeadendError
from headend.people import REPUBLIC, ROLES


def _split(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [p.strip() for p in text.split(",") if p.strip()]


def _password(args: argparse.Namespace) -> str:
    """The new password: one line from stdin with --password-stdin, else asked twice
    on the terminal (never a command-line argument: those show in `ps`)."""
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    if not sys.stdin.isatty():
        raise HeadendError("give the password with --password-stdin (no terminal to ask on)")
    first = getpass.getpass("new password: ")
    if first != getpass.getpass("again: "):
        raise HeadendError("the two passwords differ")
    return first


def _access(args: argparse.Namespace) -> Any:
    from headend import cli

    return cli._Access(cli._config(args))


def _run(args: argparse.Namespace, fn: Callable[[Any], int]) -> int:
    from headend import cli

    try:
        acc = _access(args)
        try:
            return fn(acc)
        finally:
            acc.close()
    except HeadendError as e:
        return cli._fail(e)


def _list(acc: Any, args: argparse.Namespace) -> None:
    users = acc.call("users.list")["users"]
    if args.json:
        print(json.dumps(users, indent=1))
        return
    for u in users:
        state = "disabled" if u["disabled"] else "active"
        print(
            f"{u['name']:<20} {','.join(u['roles']):<24} {','.join(u['regions']):<20} "
            f"{state:<8} tokens {len(u['tokens'])}"
        )


def _add(acc: Any, args: argparse.Namespace) -> None:
    regions = [REPUBLIC] if args.republic else _split(args.regions) or []
    password = _password(args) if (args.password_stdin or sys.stdin.isatty()) else ""
    u = acc.call(
        "users.add",
        name=args.name,
        roles=_split(args.roles) or [],
        regions=regions,
        password=password,
        display_name=args.display_name or "",
    )
    print(f"user {u['name']} added: {','.join(u['roles'])} in {','.join(u['regions'])}")


def _set(acc: Any, args: argparse.Namespace) -> None:
    regions = [REPUBLIC] if args.republic else _split(args.regions)
    disabled = True if args.disable else (False if args.enable else None)
    u = acc.call(
        "users.set",
        name=args.name,
        roles=_split(args.roles),
        regions=regions,
        disabled=disabled,
        display_name=args.display_name,
    )
    state = "disabled" if u["disabled"] else "active"
    print(f"user {u['name']}: {','.join(u['roles'])} in {','.join(u['regions'])}, {state}")


def _passwd(acc: Any, args: argparse.Namespace) -> None:
    acc.call("users.passwd", name=args.name, password=_password(args))
    print(f"password of {args.name} set; their sessions ended")


def _token(acc: Any, args: argparse.Namespace) -> None:
    t = acc.call("users.token", name=args.name, label=args.label or "", expires_in=args.expires_in)
    print(t["token"])
    print(
        f"token {t['token_id']} for {args.name}: shown once, keep it secret "
        "(Authorization: Bearer ...)",
        file=sys.stderr,
    )


def _revoke(acc: Any, args: argparse.Namespace) -> None:
    t = acc.call("users.revoke", token_id=args.token_id)
    print(f"token {t['token_id']} of {t['name']} revoked")


USER_ACTIONS: dict[str, Callable[[Any, argparse.Namespace], None]] = {
    "list": _list,
    "add": _add,
    "set": _set,
    "passwd": _passwd,
    "token": _token,
    "revoke": _revoke,
}


def cmd_users(args: argparse.Namespace) -> int:
    def run(acc: Any) -> int:
        USER_ACTIONS[args.action](acc, args)
        return 0

    return _run(args, run)


def cmd_audit(args: argparse.Namespace) -> int:
    from headend.balance import parse_time

    def run(acc: Any) -> int:
        rows = acc.call(
            "audit",
            user=args.user,
            action=args.action,
            since=parse_time(args.since) if args.since else 0,
            limit=args.limit,
        )["rows"]
        if args.json:
            print(json.dumps(rows, indent=1, default=str))
            return 0
        for r in rows:
            at = dt.datetime.fromtimestamp(r["at"], dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
            detail = json.dumps(r["detail"], ensure_ascii=False, default=str)
            print(
                f"{at}Z {r['node']:<8} {r['user']:<16} {r['source']:<22} {r['action']:<14} "
                f"{r['target']:<20} {r['outcome']:<8} {detail[:200]}"
            )
        return 0

    return _run(args, run)


def cmd_approvals(args: argparse.Namespace) -> int:
    def run(acc: Any) -> int:
        if args.action in ("approve", "reject"):
            r = acc.call(args.action, id=args.id, note=args.note or "")
            a = r["approval"]
            print(f"{a['approval_id']} {a['state']} by {a['decided_by']}: {a['summary']}")
            if "result" in r:
                print(json.dumps(r["result"], indent=1, default=str))
            return 0
        pending = acc.call("approvals")["pending"]
        if args.json:
            print(json.dumps(pending, indent=1))
            return 0
        for a in pending:
            print(
                f"{a['approval_id']}  {a['kind']:<8} by {a['requested_by']:<14} "
                f"{a['summary']:<28} why: {a['why']}"
            )
        return 0

    return _run(args, run)


def cmd_certs(args: argparse.Namespace) -> int:
    from headend import cli
    from headend.certs import write_pair

    try:
        cert, key = write_pair(Path(args.out), args.name or ["localhost", "127.0.0.1"], args.days)
    except HeadendError as e:
        return cli._fail(e)
    print(f'[http]\ntls_cert = "{cert.resolve()}"\ntls_key = "{key.resolve()}"')
    return 0


def _users_parser(sub: Any, add_common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser(
        "users",
        help="people's accounts: roles, regions, passwords, API tokens",
        description=f"People's accounts. Roles: {', '.join(ROLES)}. Regions: region node "
        f"ids, or --republic for all of them. Every change is an audit row.",
    )
    us = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    lp = us.add_parser("list", help="every account with its live tokens")
    lp.add_argument("--json", action="store_true")
    ap = us.add_parser(
        "add",
        help="a new account",
        description="Adds an account. The password is asked on the terminal, or read "
        "from stdin with --password-stdin; with neither, the account has no password "
        "and logs in with API tokens only.",
    )
    ap.add_argument("name")
    ap.add_argument("--roles", required=True, metavar="R1,R2", help=", ".join(ROLES))
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--regions", metavar="ID1,ID2", help="region node ids, e.g. UZ-SA")
    g.add_argument("--republic", action="store_true", help="the whole republic")
    ap.add_argument("--display-name")
    ap.add_argument("--password-stdin", action="store_true")
    sp = us.add_parser("set", help="change roles, regions, or disable/enable an account")
    sp.add_argument("name")
    sp.add_argument("--roles", metavar="R1,R2")
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--regions", metavar="ID1,ID2")
    g.add_argument("--republic", action="store_true")
    sp.add_argument("--display-name")
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--disable", action="store_true", help="no logins; sessions end now")
    g.add_argument("--enable", action="store_true")
    pp = us.add_parser("passwd", help="set a password (ends the account's sessions)")
    pp.add_argument("name")
    pp.add_argument("--password-stdin", action="store_true")
    tp = us.add_parser("token", help="a new personal API token (printed once)")
    tp.add_argument("name")
    tp.add_argument("--label", help="what the token is for")
    tp.add_argument("--expires-in", type=float, metavar="SECONDS")
    rp = us.add_parser("revoke", help="revoke an API token")
    rp.add_argument("token_id")
    for q in (lp, ap, sp, pp, tp, rp):
        add_common(q)
        q.set_defaults(func=cmd_users)


def _audit_parser(sub: Any, add_common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser(
        "audit",
        help="the audit trail: every write and login, by whom, from where",
        description="Audit rows, newest first. Nothing in the head-end changes or deletes them.",
    )
    p.add_argument("--user")
    p.add_argument("--action", help="e.g. command, batch, login, user.add, sql")
    p.add_argument("--since", metavar="T", help="ISO time (Tashkent) or Unix seconds")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true")
    add_common(p)
    p.set_defaults(func=cmd_audit)


def _certs_parser(sub: Any, add_common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser(
        "certs",
        help="a self-signed HTTPS certificate and key (tests, small sites)",
        description="Writes cert.pem and key.pem (0600) into --out and prints the [http] "
        "settings that use them. A utility's own CA should sign production certificates.",
    )
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument(
        "--name",
        action="append",
        metavar="NAME",
        help="a DNS name or IP address the server is reached by (repeat; default "
        "localhost and 127.0.0.1)",
    )
    p.add_argument("--days", type=int, default=365)
    p.set_defaults(func=cmd_certs)


def _approvals_parser(sub: Any, add_common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser(
        "approvals",
        help="four eyes: requests waiting for a second person; approve or reject one",
        description="Mass disconnections, disconnections of protected, large or critical "
        "accounts and key changes wait for a second person. `approvals` lists them; "
        "`approvals approve ID` runs one, `approvals reject ID` drops it.",
    )
    ap_sub = p.add_subparsers(dest="action", metavar="ACTION")
    lp = ap_sub.add_parser("list", help="the pending requests")
    lp.add_argument("--json", action="store_true")
    for name in ("approve", "reject"):
        q = ap_sub.add_parser(name, help=f"{name} a request")
        q.add_argument("id")
        q.add_argument("--note", help="why (kept with the decision)")
        add_common(q)
        q.set_defaults(func=cmd_approvals)
    add_common(lp)
    lp.set_defaults(func=cmd_approvals)
    p.add_argument("--json", action="store_true")
    add_common(p)
    p.set_defaults(func=cmd_approvals, action="list")


def add_parsers(sub: Any, add_common: Callable[[argparse.ArgumentParser], None]) -> None:
    _users_parser(sub, add_common)
    _audit_parser(sub, add_common)
    _certs_parser(sub, add_common)
    _approvals_parser(sub, add_common)
