"""``headend centres``, ``headend workorders`` and ``headend outages``: the service
centres, the work the head-end gives them (``headend/workorders.py``) and the outages
it sees (``headend/outages.py``). Imports go to the store (or the running server);
work orders and outages are asked of the running server (its admin socket)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from headend.balance import LOCAL
from headend.errors import HeadendError
from headend.workorders import CAUSES, OUTCOMES, STATES

LIST_COLUMNS = (
    "order_id",
    "priority",
    "due",
    "cause",
    "serial",
    "district",
    "centre_id",
    "state",
    "assignee",
    "outcome",
)


def _local(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).astimezone(LOCAL).strftime("%Y-%m-%d %H:%M")


def _call(args: argparse.Namespace, what: str, **kw: Any) -> Any:
    from headend.cli import _config
    from headend.server.admin import AdminClient

    client = AdminClient(_config(args).admin_socket)
    try:
        return client.call(what, **kw)
    finally:
        client.close()


def cmd_centres(args: argparse.Namespace) -> int:
    from headend.cli import _Access, _config, _fail, _print_rows, _report
    from headend.store.imports import import_centres

    try:
        if args.action == "import":
            cfg = _config(args)
            acc = _Access(cfg)
            try:
                report = import_centres(Path(args.file), acc.access, cfg.store.database, acc.owner)
            finally:
                acc.close()
            return _report(report)
        out = _call(args, "workorders.centres")
    except HeadendError as e:
        return _fail(e)
    cols = ["centre_id", "name", "region", "districts", "phone", "active", "overdue"]
    rows = [[c[k] if k != "districts" else ";".join(c[k]) for k in cols] for c in out["centres"]]
    _print_rows(cols, rows, args.format)
    return 0


def cmd_workorders(args: argparse.Namespace) -> int:
    from headend.cli import _fail, _print_rows

    a = args.action
    try:
        if a == "list":
            fmt = args.format
            out = _call(
                args,
                "workorders.list",
                state=args.state or "",
                cause=args.cause or "",
                centre=args.centre or "",
                region=args.region or "",
                serial=args.serial or "",
                limit=args.limit,
                format="csv" if fmt == "csv" else "json",
            )
            if fmt == "csv":
                sys.stdout.write(out["csv"])
            elif fmt == "json":
                print(json.dumps(out["orders"], indent=1, ensure_ascii=False))
            else:
                rows = [
                    [_local(o["due_at"]) if c == "due" else o[c] for c in LIST_COLUMNS]
                    for o in out["orders"]
                ]
                _print_rows(list(LIST_COLUMNS), rows, "table")
            return 0
        out = _call(args, f"workorders.{a}", **_request(args))
    except HeadendError as e:
        return _fail(e)
    if args.json or a in ("scan", "precision"):
        print(json.dumps(out, indent=1, ensure_ascii=False))
    else:
        print(_describe(out))
    return 0


def _request(args: argparse.Namespace) -> dict[str, Any]:
    """What `headend workorders ACTION` sends for its options."""
    a = args.action
    if a == "create":
        return {"serial": args.serial, "note": args.note, "priority": args.priority}
    req: dict[str, Any] = {} if a in ("scan", "precision") else {"id": args.id}
    if a == "assign":
        req.update(to=args.to, centre=args.centre or "")
    elif a == "close":
        req.update(
            outcome=args.outcome,
            new_serial=args.new_serial or "",
            old_final=args.old_final,
            new_initial=args.new_initial,
        )
        if args.replaced_at:
            from headend.balance import parse_time

            req["replaced_at"] = parse_time(args.replaced_at)
    if a in ("assign", "visit", "close"):
        req["note"] = args.note or ""
    return req


def _describe(o: dict[str, Any]) -> str:
    lines = [
        f"{o['order_id']}  {o['cause']}  meter {o['serial']}  priority {o['priority']}  "
        f"{o['state']}{' (' + o['outcome'] + ')' if o.get('outcome') else ''}",
        f"  district {o['district'] or '-'}, centre {o['centre_id'] or 'none covers it'}, "
        f"due {_local(o['due_at'])} (Tashkent)",
    ]
    if o.get("assignee"):
        lines.append(f"  crew {o['assignee']}")
    if o.get("new_serial"):
        lines.append(f"  replaced by meter {o['new_serial']}")
    lines.append(f"  evidence {json.dumps(o['evidence'], ensure_ascii=False)[:400]}")
    for h in o.get("history", []):
        what = h["state"] + (f" to {h['assignee']}" if h["state"] == "assigned" else "")
        what += f" ({h['outcome']})" if h["outcome"] else ""
        note = f": {h['note']}" if h["note"] else ""
        lines.append(f"  {_local(h['ts'])}  {what} by {h['by']}{note}")
    return "\n".join(lines)


def add_parsers(sub: Any, add_common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("centres", help="meter service centres: which districts each covers")
    csub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    ip = csub.add_parser("import", help="load centres from CSV: centre_id,name,districts[,phone]")
    ip.add_argument("file", metavar="FILE.csv")
    lp = csub.add_parser("list", help="the centres, with their active and overdue orders")
    lp.add_argument("--format", choices=("table", "csv", "json"), default="table")
    for sp in (ip, lp):
        add_common(sp)
        sp.set_defaults(func=cmd_centres)

    p = sub.add_parser(
        "workorders",
        help="work for the service centres: list, show, assign, visit, close",
        description="Orders are opened by themselves (theft suspects, silent meters, tamper "
        "alarms, failed switching, clocks that could not be set, low batteries) once per "
        "cause and meter, or by hand; each goes to the centre covering the meter's district "
        "and moves open -> assigned -> visited -> closed with the crew's outcome.",
    )
    wsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = wsub.add_parser("list", help="orders (active first, by priority and due time)")
    ls.add_argument("--state", choices=("active", *STATES), help="active: not closed")
    ls.add_argument("--cause", choices=tuple(CAUSES))
    ls.add_argument("--centre", help="one service centre's orders")
    ls.add_argument("--region")
    ls.add_argument("--serial")
    ls.add_argument("--limit", type=int, default=1000)
    ls.add_argument(
        "--format",
        choices=("table", "csv", "json"),
        default="table",
        help="csv: the crews' list (due time in Tashkent time, where the meter is, why)",
    )
    sh = wsub.add_parser("show", help="one order and its history")
    sh.add_argument("id", metavar="ORDER_ID")
    cr = wsub.add_parser("create", help="open an order by hand")
    cr.add_argument("serial", metavar="SERIAL")
    cr.add_argument("--note", required=True, help="what the crew is to do")
    cr.add_argument("--priority", type=int, choices=(1, 2, 3))
    asg = wsub.add_parser("assign", help="give an order to a crew")
    asg.add_argument("id", metavar="ORDER_ID")
    asg.add_argument("--to", required=True, help="the crew or person")
    asg.add_argument("--centre", help="move it to this service centre")
    asg.add_argument("--note")
    vs = wsub.add_parser("visit", help="record the crew's visit")
    vs.add_argument("id", metavar="ORDER_ID")
    vs.add_argument("--note")
    cl = wsub.add_parser("close", help="close with the crew's outcome")
    cl.add_argument("id", metavar="ORDER_ID")
    cl.add_argument("--outcome", required=True, choices=OUTCOMES)
    cl.add_argument("--new-serial", help="replaced: the new meter (imported with its keys)")
    cl.add_argument(
        "--old-final", type=float, help="replaced: the old meter's register on removal (kWh, m³)"
    )
    cl.add_argument(
        "--new-initial", type=float, help="replaced: the new meter's register when put in"
    )
    cl.add_argument("--replaced-at", metavar="T", help="replaced: when (default now)")
    cl.add_argument("--note")
    sc = wsub.add_parser("scan", help="look for causes now (admins)")
    pr = wsub.add_parser("precision", help="inspections' verdicts per rule and region")
    for sp in (ls, sh, cr, asg, vs, cl, sc, pr):
        add_common(sp)
        sp.add_argument("--json", action="store_true", help="machine-readable output")
        sp.set_defaults(func=cmd_workorders)


OUTAGE_COLUMNS = (
    "outage_id",
    "level",
    "node_id",
    "district",
    "start",
    "minutes",
    "consumers",
    "reported",
    "restored",
    "balance_saw",
    "sustained",
)
INDEX_COLUMNS = (
    "unit",
    "month",
    "consumers",
    "outages",
    "customer_minutes",
    "saidi_min",
    "saifi",
    "maifi",
)


def cmd_outages(args: argparse.Namespace) -> int:
    from headend.balance import parse_time
    from headend.cli import _fail, _print_rows

    a = args.action
    try:
        if a == "list":
            req: dict[str, Any] = {"region": args.region or "", "limit": args.limit}
            if args.start:
                req["start"] = parse_time(args.start)
            if args.end:
                req["end"] = parse_time(args.end)
            out = _call(args, "outages.list", **req)
            rows = [
                [_local(o["started_at"]) if c == "start" else o[c] for c in OUTAGE_COLUMNS]
                for o in out["outages"]
            ]
            _print_rows(list(OUTAGE_COLUMNS), rows, args.format)
            return 0
        if a == "indices":
            month = args.month or dt.datetime.now(LOCAL).strftime("%Y-%m")
            out = _call(args, "outages.indices", by=args.by, month=month)
            rows = [[x[c] for c in INDEX_COLUMNS] for x in out["indices"]]
            _print_rows(list(INDEX_COLUMNS), rows, args.format)
            return 0
        out = _call(args, f"outages.{a}", **({"id": args.id} if a == "show" else {}))
    except HeadendError as e:
        return _fail(e)
    print(json.dumps(out, indent=1, ensure_ascii=False))
    return 0


def add_outage_parsers(sub: Any, add_common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser(
        "outages",
        help="outages from the meters' power events; SAIDI, SAIFI, MAIFI",
        description="Power-downs of most of a transformer's meters at once are its outage "
        "(of a feeder, when most of its transformers go down together); each meter's "
        "restoration is tracked by its power-up.",
    )
    osub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = osub.add_parser("list", help="outages overlapping a time span (open ones first)")
    ls.add_argument("--from", dest="start", metavar="T", help="default: a day ago")
    ls.add_argument("--to", dest="end", metavar="T", help="default: now")
    ls.add_argument("--region")
    ls.add_argument("--limit", type=int, default=500)
    ix = osub.add_parser("indices", help="SAIDI (minutes), SAIFI and MAIFI for a month")
    ix.add_argument("--by", choices=("district", "region", "republic"), default="district")
    ix.add_argument("--month", metavar="YYYY-MM", help="a local month (default: this one)")
    for sp in (ls, ix):
        sp.add_argument("--format", choices=("table", "csv", "json"), default="table")
    sh = osub.add_parser("show", help="one outage, meter by meter (JSON)")
    sh.add_argument("id", metavar="OUTAGE_ID")
    sc = osub.add_parser("scan", help="group the power events now (admins)")
    for sp in (ls, ix, sh, sc):
        add_common(sp)
        sp.set_defaults(func=cmd_outages)
