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


def _start_params(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for name in ("concurrency", "max_failure_rate", "min_sample", "expire", "under"):
        v = getattr(args, name)
        if v is not None:
            params[name] = v
    if args.kind == "firmware":
        from headend.balance import parse_time

        if not args.image:
            raise HeadendError("a firmware wave needs --image (headend firmware list)")
        params["image"] = args.image
        if args.models:
            params["models"] = [m.strip() for m in args.models.split(",")]
        if args.activate_at:
            params["activate_at"] = parse_time(args.activate_at)
    elif args.image or args.models or args.activate_at:
        raise HeadendError("--image, --models and --activate-at are for firmware waves")
    return params


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
                params = _start_params(args)
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
        help="key rotations and firmware upgrades over a region's meters, in steps",
        description="A wave carries one change over a region's meters: at most "
        "--concurrency at a time on this node, stopped by itself when more than "
        "--max-failure-rate of them fail (after --min-sample), resumable. Its commands "
        "are in `headend ctl commands` and command_status with the wave's id.",
    )
    wsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    sp = wsub.add_parser("start", help="start a wave")
    sp.add_argument(
        "kind",
        choices=("rekey", "firmware"),
        help="rekey: new keys for every meter; firmware: an image for every meter",
    )
    sp.add_argument("--image", help="firmware: the image's SHA-256 (headend firmware list)")
    sp.add_argument("--models", help="firmware: only these models (M[,M...])")
    sp.add_argument("--activate-at", metavar="T", help="firmware: activate then (default: at once)")
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


def cmd_firmware(args: argparse.Namespace) -> int:
    """headend firmware add|list: the images this node can send to its meters."""
    import getpass

    from headend import firmware
    from headend.cli import _config, _fail

    try:
        cfg = _config(args)
        if args.action == "add":
            m = firmware.add(cfg.firmware_dir, args.file, args.identifier, getpass.getuser())
            print(f"{m['sha256']}  {m['identifier']}  {m['size']} bytes")
            return 0
        for m in firmware.listing(cfg.firmware_dir):
            print(f"{m['sha256']}  {m['identifier']:<24} {m['size']:>9} bytes  {m['added_at']}")
    except HeadendError as e:
        return _fail(e)
    return 0


def add_firmware_parsers(sub: Any, add_common: Callable[[argparse.ArgumentParser], None]) -> None:
    from pathlib import Path

    p = sub.add_parser(
        "firmware",
        help="firmware images this node can send to its meters",
        description="Images are kept in <data>/firmware under their SHA-256; `ctl "
        "firmware` and `waves start firmware` name them by it.",
    )
    fsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    ap = fsub.add_parser("add", help="add an image")
    ap.add_argument("file", type=Path)
    ap.add_argument(
        "--identifier", required=True, help="what the meter reports once it runs the image"
    )
    add_common(ap)
    ap.set_defaults(func=cmd_firmware)
    lp = fsub.add_parser("list", help="the images")
    add_common(lp)
    lp.set_defaults(func=cmd_firmware)
