"""``headend waves``: key rotations (and firmware upgrades) over a region's meters in
steps (``headend/waves.py``), through the running server's admin socket."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from headend.errors import HeadendError


def _line(w: dict[str, Any]) -> str:
    outcomes = ", ".join(f"{n} {s}" for s, n in sorted(w["outcomes"].items())) or "none yet"
    to_go = "" if w.get("to_go") is None else f", {w['to_go']} to go"
    return (
        f"{w['wave_id']}  {w['kind']:<8} {w['region']:<10} {w['state']:<8} "
        f"{w['meters']} meters{to_go}, {w['running']} running; {outcomes}"
        + (f"  ({w['detail']})" if w.get("detail") else "")
    )


def cmd_waves(args: argparse.Namespace) -> int:
    from headend.cli import _config, _fail
    from headend.server.admin import AdminClient

    try:
        cfg = _config(args)
        client = AdminClient(cfg.admin_socket)
        try:
            if args.action == "list":
                out: Any = client.call("waves.list")
                waves = out["waves"]
            elif args.action == "start":
                params: dict[str, Any] = {}
                for name in ("concurrency", "max_failure_rate", "min_sample", "expire", "under"):
                    v = getattr(args, name)
                    if v is not None:
                        params[name] = v
                out = client.call(
                    "waves.start",
                    kind=args.kind,
                    region=args.region,
                    params=params,
                    reason=args.reason or "",
                )
                waves = [out]
            elif args.action == "stop":
                out = client.call("waves.stop", id=args.id, why=args.why or "")
                waves = [out]
            else:  # show, resume
                out = client.call(f"waves.{args.action}", id=args.id)
                waves = [out]
        finally:
            client.close()
    except HeadendError as e:
        return _fail(e)
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        for w in waves:
            print(_line(w))
    return 0


def add_parsers(sub: Any, add_common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser(
        "waves",
        help="key rotations over a region's meters, in steps",
        description="A wave carries one change over a region's meters: at most "
        "--concurrency at a time on this node, stopped by itself when more than "
        "--max-failure-rate of them fail (after --min-sample), resumable. Its commands "
        "are in `headend ctl commands` and command_status with the wave's id.",
    )
    wsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    sp = wsub.add_parser("start", help="start a wave")
    sp.add_argument("kind", choices=("rekey",), help="rekey: new keys for every meter")
    sp.add_argument("--region", required=True, help="the region whose meters take it")
    sp.add_argument("--under", help="only meters under grid nodes whose id starts so")
    sp.add_argument("--concurrency", type=int, help="meters at a time (default 50)")
    sp.add_argument(
        "--max-failure-rate", type=float, help="stop above this share of failures (0.1)"
    )
    sp.add_argument("--min-sample", type=int, help="finished meters before judging (20)")
    sp.add_argument("--expire", type=float, help="seconds a meter may take to come (7 days)")
    sp.add_argument("--reason", help="why (kept with the wave and its commands)")
    for action, text in (
        ("list", "every wave and where it stands"),
        ("show", "one wave"),
        ("stop", "stop a running wave (its running meters finish)"),
        ("resume", "go on with a stopped or halted wave"),
    ):
        ap = wsub.add_parser(action, help=text)
        if action != "list":
            ap.add_argument("id", metavar="WAVE_ID")
        if action == "stop":
            ap.add_argument("--why", help="kept with the wave")
        add_common(ap)
        ap.add_argument("--json", action="store_true", help="machine-readable output")
        ap.set_defaults(func=cmd_waves)
    add_common(sp)
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(func=cmd_waves)
