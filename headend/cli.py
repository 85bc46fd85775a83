"""The ``headend`` command line."""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from headend import codec
from headend import config as config_mod
from headend.decode import Keys, decode, describe_error, parse_hex, parse_key
from headend.errors import HeadendError


def _print_json(obj: object, compact: bool) -> None:
    if compact:
        print(json.dumps(obj, ensure_ascii=False, separators=(",", ":")))
    else:
        print(json.dumps(obj, ensure_ascii=False, indent=2))


def cmd_decode(args: argparse.Namespace) -> int:
    try:
        keys = Keys(
            parse_key(args.ek, "--ek"),
            parse_key(args.ak, "--ak"),
            parse_key(args.system_title, "--system-title", 8),
        )
    except HeadendError as e:
        print(f"error: {describe_error(e)}", file=sys.stderr)
        return 2
    if args.hex != "-":
        try:
            _print_json(decode(parse_hex(args.hex), framing=args.framing, keys=keys), args.compact)
        except HeadendError as e:
            print(f"error: {describe_error(e)}", file=sys.stderr)
            return 1
        return 0
    # One frame per line from stdin; blank lines and # comments are skipped. Output is
    # one JSON document per line unless --pretty; errors go to stderr with the line.
    status = 0
    for lineno, line in enumerate(sys.stdin, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            _print_json(decode(parse_hex(text), framing=args.framing, keys=keys), not args.pretty)
        except HeadendError as e:
            print(f"error: line {lineno}: {describe_error(e)}", file=sys.stderr)
            status = 1
    return status


def _config(args: argparse.Namespace) -> config_mod.Config:
    return config_mod.load(
        Path(args.config) if getattr(args, "config", None) else None,
        Path(args.data) if getattr(args, "data", None) else None,
    )


def _fail(e: BaseException, status: int = 1) -> int:
    print(f"error: {describe_error(e)}", file=sys.stderr)
    return status


def cmd_serve(args: argparse.Namespace) -> int:
    from headend import logs
    from headend.server.supervisor import Supervisor

    try:
        cfg = _config(args)
        logs.setup("supervisor", cfg.log.level, cfg.log.format)
        return Supervisor(cfg).run()
    except HeadendError as e:
        return _fail(e)


class _Access:
    """The store for a command: through the running server if there is one (the
    embedded store belongs to one process), else opened here."""

    def __init__(self, cfg: config_mod.Config) -> None:
        from headend.ownership import Ownership
        from headend.server.admin import AdminClient, ServerNotRunning

        self.cfg = cfg
        self.owner = Ownership.from_config(cfg)
        self.admin: Any = None
        self.store: Any = None
        self.outbox: Any = None
        client = AdminClient(cfg.admin_socket)
        try:
            client.call("ping")
            self.admin = client
        except ServerNotRunning:
            from headend.link import taps
            from headend.link.down import DownRouter
            from headend.store.db import Store, migrate

            # What this command writes reaches the node's peers like the server's
            # writes: through the outbox, which the server publishes when it runs.
            t = taps(cfg, self.owner, "cli")
            self.outbox = t.outbox
            self.store = Store(
                cfg.dsn,
                cfg.store.database,
                tap=t.tap,
                cluster=cfg.store.cluster,
                min_free_bytes=cfg.store.min_free_bytes,
            ).connect()
            if isinstance(t.tap, DownRouter):
                t.tap.store = self.store
            migrate(self.store)

    def sql(self, query: str) -> tuple[list[str], list[list[Any]]]:
        from headend.server.admin import jsonable

        if self.admin is not None:
            r = self.admin.call("sql", query=query)
            return r["columns"], r["rows"]
        cols, rows = self.call("sql", query=query)
        return cols, jsonable(rows)

    def call(self, cmd: str, **args: Any) -> Any:
        """A people command (``users.*``, ``audit``, ``sql``): through the server, or
        here on the store with the same code, as the local user."""
        if self.admin is not None:
            return self.admin.call(cmd, **args)
        import asyncio

        from headend.server import access
        from headend.sqlguard import Guard

        people = access.people_for(self.cfg, self.store).load()
        guard = Guard(self.store, self.cfg.store.database)
        who = access.local_principal()
        return asyncio.run(
            access.admin_command(people, guard, self.store, who, {"cmd": cmd, **args})
        )

    @property
    def access(self) -> Any:
        return self.admin if self.admin is not None else self.store

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
        if self.outbox is not None:
            self.outbox.close()
        if self.admin is not None:
            self.admin.close()


def _print_rows(cols: list[str], rows: list[list[Any]], fmt: str) -> None:
    if fmt == "json":
        print(
            json.dumps(
                [dict(zip(cols, r, strict=True)) for r in rows], ensure_ascii=False, indent=1
            )
        )
    elif fmt == "csv":
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n")
        w.writerow(cols)
        w.writerows(rows)
        sys.stdout.write(out.getvalue())
    else:
        text = [[("" if v is None else str(v)) for v in r] for r in rows]
        widths = [max([len(c), *(len(r[i]) for r in text)]) for i, c in enumerate(cols)]
        print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip())
        print("  ".join("-" * w for w in widths))
        for r in text:
            print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
        print(f"({len(rows)} row{'s' if len(rows) != 1 else ''})", file=sys.stderr)


def cmd_sql(args: argparse.Namespace) -> int:
    try:
        acc = _Access(_config(args))
        try:
            cols, rows = acc.sql(args.query)
        finally:
            acc.close()
    except HeadendError as e:
        return _fail(e)
    _print_rows(cols, rows, args.format)
    return 0


def _report(report: Any) -> int:
    for line in report.lines():
        print(line, file=sys.stderr)
    print(f"{report.file}: {report.loaded} rows loaded, {len(report.bad)} refused")
    return 0 if not report.bad else 1


def cmd_grid_import(args: argparse.Namespace) -> int:
    from headend.store.imports import import_grid

    try:
        cfg = _config(args)
        acc = _Access(cfg)
        try:
            report = import_grid(Path(args.file), acc.access, cfg.store.database, acc.owner)
        finally:
            acc.close()
    except HeadendError as e:
        return _fail(e)
    return _report(report)


def cmd_meters_import(args: argparse.Namespace) -> int:
    from headend import profiles
    from headend.keys import load_master_key
    from headend.store.imports import import_meters

    try:
        cfg = _config(args)
        master = load_master_key(cfg, create=True)
        models = profiles.kinds(profiles.load_all(cfg.profiles_dir))
        acc = _Access(cfg)
        try:
            report = import_meters(
                Path(args.file), acc.access, master, models, cfg.store.database, owner=acc.owner
            )
        finally:
            acc.close()
    except HeadendError as e:
        return _fail(e)
    return _report(report)


def cmd_ctl(args: argparse.Namespace) -> int:
    from headend.server.admin import AdminClient

    try:
        cfg = _config(args)
        client = AdminClient(cfg.admin_socket)
        if args.action == "status":
            st = client.call("status")
            if args.json:
                print(json.dumps(st, indent=2))
            else:
                _print_status(st)
        elif args.action == "sessions":
            r = client.call("sessions", meter=args.meter)
            if args.json:
                print(json.dumps(r["sessions"], indent=2))
            else:
                cols = [
                    "session_id",
                    "worker",
                    "peer",
                    "transport",
                    "framing",
                    "meters",
                    "since",
                    "pushes",
                    "readings",
                    "errors",
                ]
                rows = [
                    [
                        s["session_id"],
                        s["worker"],
                        s["peer"],
                        s.get("transport", "tcp"),
                        s["framing"],
                        ",".join(s["meters"]),
                        dt.datetime.fromtimestamp(s["connected_at"], dt.UTC).strftime(
                            "%Y-%m-%d %H:%M:%SZ"
                        ),
                        s["pushes"],
                        s["readings"],
                        s["errors"],
                    ]
                    for s in r["sessions"]
                ]
                _print_rows(cols, rows, "table")
        elif args.action == "drain":
            client.call("drain")
            print("draining: the server stops accepting, flushes and exits")
        client.close()
    except HeadendError as e:
        return _fail(e)
    return 0


COMMAND_ACTIONS = (
    "read",
    "disconnect",
    "reconnect",
    "clock",
    "profile",
    "daily",
    "rekey",
    "firmware",
)


def _command_args(args: argparse.Namespace) -> dict[str, Any]:
    if args.action == "read":
        objects = []
        for spec in args.objects:
            obis, _, attr = spec.partition(":")
            cls = args.class_id
            if cls is None:
                cls = 8 if obis == "0.0.1.0.0.255" else 70 if obis.startswith("0.0.96.3.") else 3
            objects.append([cls, obis, int(attr or 2)])
        return {"objects": objects}
    if args.action == "clock":
        return {"threshold": args.threshold}
    if args.action == "profile":
        start, end = _window(args)
        return {"from": start, "to": end}
    if args.action == "daily":
        start, end = _window(args)
        return {"profile_from": start, "events_from": start, "to": end if args.to else None}
    if args.action == "firmware":
        from headend.balance import parse_time

        out: dict[str, Any] = {"image": args.image}
        if args.activate_at:
            out["activate_at"] = parse_time(args.activate_at)
        return out
    return {}


def cmd_command(args: argparse.Namespace) -> int:
    """ctl read/disconnect/reconnect/clock/profile/daily: queue a command, wait for it."""
    from headend.server.admin import AdminClient

    try:
        cfg = _config(args)
        client = AdminClient(cfg.admin_socket, timeout=max(300.0, args.wait + 30))
        c = client.call(
            "command",
            serial=args.serial,
            kind=args.action,
            args=_command_args(args),
            wait=args.wait,
            expires_in=args.expire,
            reason=args.reason or "",
        )
        client.close()
    except HeadendError as e:
        return _fail(e)
    failed = c["state"] in ("failed", "expired", "cancelled")
    if args.json:
        print(json.dumps(c, indent=2))
        return 1 if failed else 0
    if c["state"] == "done":
        r = c["result"] or {}
        if args.action == "read":
            for (cls, obis, attr), v in zip(c["args"]["objects"], r["values"], strict=True):
                print(f"{obis}:{attr} (class {cls})  {json.dumps(v.get('value', v))}")
        else:
            print(f"{args.action} {c['serial']}: done  {json.dumps(r)}")
    elif failed:
        print(f"{args.action} {c['serial']}: {c['state']}: {c['error']}", file=sys.stderr)
        return 1
    else:
        note = f" (last attempt: {c['error']})" if c["error"] else ""
        print(
            f"{args.action} {c['serial']}: queued as {c['command_id']}, state {c['state']}{note}; "
            f"it runs when the meter is connected (see `headend ctl commands`)"
        )
    return 0


def cmd_commands(args: argparse.Namespace) -> int:
    from headend.server.admin import AdminClient

    try:
        cfg = _config(args)
        client = AdminClient(cfg.admin_socket)
        try:
            if args.action == "cancel":
                c = client.call("cancel", id=args.id)
                print(f"cancelled {c['command_id']} ({c['kind']} {c['serial']})")
                return 0
            r = client.call("commands", serial=args.serial)
        finally:
            client.close()
    except HeadendError as e:
        return _fail(e)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    cols = ["command_id", "serial", "kind", "state", "attempts", "requested_by", "error"]
    _print_rows(cols, [[c[k] for k in cols] for c in r["pending"]], "table")
    return 0


def _print_status(st: dict[str, Any]) -> None:
    ing = st["ingest"]
    print(f"uptime        {st['uptime_s']:.0f} s   (store pid {st['pid']}, {st['dsn']})")
    print(f"sessions      {st['sessions']}")
    window = st.get("rates_window_s", 0.0)
    print(f"pushes/s      {st['pushes_per_s']:.1f}   (received, over the last {window:.0f} s)")
    print(
        f"readings/s    {st['readings_per_s']:.1f}   ingested rows/s {ing['rows_per_s']:.1f}"
        f" (over {ing.get('rows_per_s_window_s', 0.0):.0f} s)"
    )
    print(f"spool backlog {st['spool_backlog_bytes']} bytes")
    if ing.get("error"):
        since = time.time() - ing["failing_since"] if ing.get("failing_since") else 0
        print(f"ingest        FAILING for {since:.0f} s: {ing['error']}")
    for w in st["workers"]:
        state = "ok" if w["connected"] else "DOWN"
        paused = " paused" if w["paused"] else ""
        if w.get("spool_error"):
            paused += f" SPOOL CANNOT BE WRITTEN ({w['spool_error']}; {w['held_bytes']} bytes held)"
        print(
            f"worker {w['worker']:<3}    pid {w['pid']} {state}{paused}: {w['sessions']} sessions, "
            f"{w['pushes_per_s']:.1f} pushes/s, {w['meters_known']} meters known"
        )
    if st["rejects"]:
        print("rejects       " + ", ".join(f"{k}={v}" for k, v in sorted(st["rejects"].items())))
    src = st.get("sources") or {}
    if src.get("untrusted_connections") or src.get("banned"):
        print(
            f"sources       {src['untrusted_connections']} connections without a meter yet, "
            f"{src['banned']} addresses banned"
        )


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data", metavar="DIR", help="data directory (default $HEADEND_DATA or ./headend-data)"
    )
    p.add_argument("--config", metavar="FILE", help="configuration file (TOML)")


def _window(args: argparse.Namespace) -> tuple[int, int]:
    from headend.balance import parse_time

    end = parse_time(args.to) if args.to else int(_now(_config(args))) // 3600 * 3600
    start = parse_time(args.from_) if args.from_ else end - 86_400
    if end <= start:
        raise HeadendError("--to must be after --from")
    return start, end


def _table_command(
    args: argparse.Namespace,
    window: Callable[[argparse.Namespace], tuple[int, int]],
    work: Callable[[config_mod.Config, _Access, int, int], tuple[list[str], list[Any]]],
) -> int:
    """Runs `work` on the store for the command's window and prints the rows it returns."""
    from headend.server.admin import jsonable

    try:
        cfg = _config(args)
        start, end = window(args)
        acc = _Access(cfg)
        try:
            cols, rows = work(cfg, acc, start, end)
        finally:
            acc.close()
    except HeadendError as e:
        return _fail(e)
    _print_rows(cols, jsonable(rows), args.format)
    return 0


def _now(cfg: config_mod.Config) -> float:
    """Now by the node's configured clock (`[clock]`: the demo's and load runs' fast
    simulated time), as the server has it: every command judges time by it."""
    from headend.clock import Clock

    return Clock.from_config(cfg.clock).now()


def cmd_balance(args: argparse.Namespace) -> int:
    from headend import balance

    def work(
        cfg: config_mod.Config, acc: _Access, start: int, end: int
    ) -> tuple[list[str], list[Any]]:
        if args.recompute:
            if acc.admin is not None:
                rep = acc.admin.call("recompute", start=start, end=end)
            else:
                rep = balance.recompute(
                    acc.store, start, end, now=_now(cfg), owner=acc.owner
                ).as_dict()
            print(json.dumps(rep), file=sys.stderr)
        cols, rows = balance.report(
            acc.access,
            cfg.store.database,
            level=args.level,
            period=args.period,
            start=start,
            end=end,
            node=args.node,
        )
        return cols, list(rows)

    return _table_command(args, _window, work)


def _losses_window(args: argparse.Namespace) -> tuple[int, int]:
    from headend.balance import last_period, parse_time

    if args.period and args.from_:
        raise HeadendError("give --period or --from, not both")
    if args.period:
        now = int(_now(_config(args)))
        return last_period(args.period, parse_time(args.to) if args.to else now)
    return _window(args)


def cmd_losses(args: argparse.Namespace) -> int:
    from headend import balance

    def work(
        cfg: config_mod.Config, acc: _Access, start: int, end: int
    ) -> tuple[list[str], list[Any]]:
        cols, rows = balance.losses(
            acc.access,
            cfg.store.database,
            level=args.level,
            start=start,
            end=end,
            top=args.top,
            min_completeness=args.min_completeness,
        )
        return cols, list(rows)

    return _table_command(args, _losses_window, work)


def cmd_anomalies(args: argparse.Namespace) -> int:
    from headend import anomalies
    from headend.balance import run_query
    from headend.clock import Clock

    def work(
        cfg: config_mod.Config, acc: _Access, start: int, end: int
    ) -> tuple[list[str], list[Any]]:
        if args.detect:
            if acc.admin is not None:
                found = acc.admin.call("detect", start=start, end=end)
            else:
                found = anomalies.detect(
                    acc.store, start, end, owner=acc.owner, clock=Clock.from_config(cfg.clock)
                ).summary()
            print(json.dumps(found), file=sys.stderr)
        cols, rows = run_query(
            acc.access,
            "SELECT meter, node_id, score, rules, evidence, node_loss_pct "
            f"FROM {cfg.store.database}.anomalies WHERE window_start = toDateTime(%(a)s) "
            "AND window_end = toDateTime(%(b)s) ORDER BY score DESC, node_id, meter",
            {"a": start, "b": end},
        )
        return cols, list(rows)

    return _table_command(args, _window, work)


def cmd_demo(args: argparse.Namespace) -> int:
    try:
        from loadtest import demo
    except ImportError:
        print(
            "headend demo: the simulated fleet (loadtest/) is part of the source checkout; "
            "run it from there (make run)",
            file=sys.stderr,
        )
        return 2
    try:
        return demo.run(args)
    except (FileNotFoundError, RuntimeError) as e:
        print(f"headend demo: {e}", file=sys.stderr)
        return 2


def cmd_node(args: argparse.Namespace) -> int:
    """`headend node key|status`."""
    from headend.link.keys import load_node_key, public_hex
    from headend.ownership import Ownership

    try:
        cfg = _config(args)
        if args.action == "key":
            print(public_hex(load_node_key(cfg, create=True)))
            return 0
        if args.action == "handover":
            from headend.server.admin import AdminClient

            client = AdminClient(cfg.admin_socket)
            r = client.call("handover", region=args.region, to=args.to)
            client.close()
            print(
                f"{r['region']}: from {r['from']} to {r['to']}; "
                f"{r['readings']} readings sent to {r['to']}"
            )
            return 0
        from headend.server.admin import AdminClient, ServerNotRunning

        try:
            client = AdminClient(cfg.admin_socket)
            st = client.call("status")
            client.close()
        except ServerNotRunning:
            st = {"node": Ownership.from_config(cfg).as_dict(), "link": None}
    except HeadendError as e:
        return _fail(e)
    if args.json:
        print(json.dumps({"node": st["node"], "link": st["link"]}, indent=2))
        return 0
    _print_node(st)
    return 0


def _print_node(st: dict[str, Any]) -> None:
    node, link = st["node"], st.get("link")
    print(
        f"node          {node['node']} ({node['role']}), owns {', '.join(node['regions']) or '-'}"
    )
    if not link:
        print("link          none" if node["role"] == "standalone" else "link          not running")
        return
    nats = "up" if link["nats"] else "DOWN"
    alarm = f", ALARM: {link['alarm']}" if link["alarm"] else ""
    print(f"link          NATS {nats}, outbox {link['outbox_bytes']} bytes{alarm}")
    for e in link["errors"].values():
        print(f"  error       {e}")
    for p in link["peers"]:
        contact = (
            dt.datetime.fromtimestamp(p["last_contact"], dt.UTC).strftime("%H:%M:%SZ")
            if p["last_contact"]
            else "never"
        )
        print(
            f"  {p['peer']:<12}{'connected' if p['connected'] else 'CUT':<10} last contact "
            f"{contact}, lag {p['lag_s']} s / {p['lag_rows']} rows, in {p['applied_records']} "
            f"records, out unconfirmed {p['unconfirmed_messages']} msgs / "
            f"{p['unconfirmed_bytes']} bytes"
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="headend",
        description="Head-end and energy accounting for DLMS/COSEM smart meters.",
    )
    parser.add_argument("--version", action="version", version=f"headend {codec.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "demo",
        help="the full demo: a generated grid, the head-end and a fast simulated fleet",
        description="Generates a grid (about 20,000 meters), starts the head-end on the "
        "embedded store and the simulated fleet in fast time with theft and debtors, and "
        "prints the situation room's address. Needs the source checkout (loadtest/) and "
        "the built simulator (make build).",
    )
    p.set_defaults(func=cmd_demo)
    try:
        from loadtest import demo

        demo.add_arguments(p)
    except ImportError:
        p.add_argument("rest", nargs=argparse.REMAINDER)

    p = sub.add_parser(
        "decode",
        help="print one captured frame as JSON",
        description="Decode one captured DLMS/COSEM frame (wrapper, HDLC or a bare APDU) "
        "and print it as JSON. With --ek/--ak, ciphered APDUs are deciphered.",
    )
    p.add_argument("hex", help="the frame as hex, or - to read one frame per line from stdin")
    p.add_argument("--ek", metavar="HEX", help="encryption key (16 bytes)")
    p.add_argument("--ak", metavar="HEX", help="authentication key (16 bytes)")
    p.add_argument(
        "--system-title",
        metavar="HEX",
        help="sender's system title (8 bytes) for glo- APDUs, which carry none",
    )
    g = p.add_mutually_exclusive_group()
    for name, help_text in (
        ("auto", "detect the framing from the first byte (default)"),
        ("wrapper", "IEC 62056-47 wrapper"),
        ("hdlc", "IEC 62056-46 HDLC"),
        ("apdu", "a bare APDU without framing"),
    ):
        g.add_argument(
            f"--{name}", dest="framing", action="store_const", const=name, help=help_text
        )
    out = p.add_mutually_exclusive_group()
    out.add_argument("--compact", action="store_true", help="one line of JSON")
    out.add_argument("--pretty", action="store_true", help="indented JSON for stdin input too")
    p.set_defaults(func=cmd_decode, framing="auto")

    p = sub.add_parser(
        "serve",
        help="run the head-end",
        description="Run the head-end: store, workers, admin socket.",
    )
    _add_common(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "sql",
        help="run read-only SQL on the documented tables",
        description="Run one SELECT on the documented tables (through the running server "
        "if there is one, else directly): read-only, no table functions that reach "
        "files or the network, never the key or account tables, limits on time, memory "
        "and result size (headend/sqlguard.py). Each query is an audit row.",
    )
    p.add_argument("query")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    _add_common(p)
    p.set_defaults(func=cmd_sql)

    from headend import cli_people

    cli_people.add_parsers(sub, _add_common)

    from headend import cli_backup

    cli_backup.add_parsers(sub, _add_common)

    from headend import cli_waves

    cli_waves.add_parsers(sub, _add_common)
    cli_waves.add_firmware_parsers(sub, _add_common)

    from headend import cli_workorders

    cli_workorders.add_parsers(sub, _add_common)
    cli_workorders.add_outage_parsers(sub, _add_common)

    from headend import cli_reports

    cli_reports.add_parsers(sub, _add_common)

    for noun, func, cols in (
        ("grid", cmd_grid_import, "node_id,parent_id,level,commodity,name,admin_unit,lat,lon"),
        (
            "meters",
            cmd_meters_import,
            "serial,kind,role,node_id,account_id,model,system_title,ek,ak,password,lat,lon"
            "[,address][,kek]",
        ),
    ):
        p = sub.add_parser(noun, help=f"manage {noun}")
        nsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
        ip = nsub.add_parser(
            "import",
            help=f"import {noun} from CSV ({cols})",
            description=f"Import {noun} from "
            f"CSV with the header {cols}. Bad rows are reported with line and reason; "
            "good rows load.",
        )
        ip.add_argument("file", metavar="FILE.csv")
        _add_common(ip)
        ip.set_defaults(func=func)

    p = sub.add_parser(
        "balance",
        help="energy balances per grid node or administrative unit",
        description="Input, output, loss, loss %% and completeness per node of a network "
        "level (or per district, region, republic, link by link), summed over hours, days, "
        "months or years in Tashkent time. Times: ISO (Tashkent time unless given) or "
        "Unix seconds; default the last 24 hours.",
    )
    p.add_argument("--level", required=True, help="a network level or district/region/republic")
    p.add_argument("--period", choices=("hour", "day", "month", "year"), default="day")
    p.add_argument("--from", dest="from_", metavar="T")
    p.add_argument("--to", metavar="T")
    p.add_argument("--node", metavar="ID", help="one node (or administrative unit prefix)")
    p.add_argument(
        "--recompute", action="store_true", help="rebuild consumption and balances first"
    )
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    _add_common(p)
    p.set_defaults(func=cmd_balance)

    p = sub.add_parser(
        "losses",
        help="nodes ranked by loss",
        description="Nodes of a network level ranked by loss over the window, where "
        "completeness is high enough, with their loss %% over the window before.",
    )
    p.add_argument("--level", default="transformer")
    p.add_argument(
        "--period",
        choices=("hour", "day", "month", "year"),
        help="the last whole one (Tashkent time) before --to or now",
    )
    p.add_argument("--from", dest="from_", metavar="T")
    p.add_argument("--to", metavar="T")
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--min-completeness", type=float, default=0.9)
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    _add_common(p)
    p.set_defaults(func=cmd_losses)

    p = sub.add_parser(
        "anomalies",
        help="suspicious consumers under lossy transformers",
        description="Consumers under transformers with losses, flagged by what they "
        "show (low against peers, drop against history, tamper alarms, zero or flat, "
        "reverse energy, consuming while switched off), with the evidence. --detect "
        "examines the window first (balances must be computed for it).",
    )
    p.add_argument("--from", dest="from_", metavar="T")
    p.add_argument("--to", metavar="T")
    p.add_argument("--detect", action="store_true", help="examine the window first")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    _add_common(p)
    p.set_defaults(func=cmd_anomalies)

    from headend import cli_billing

    cli_billing.add_parsers(sub, _add_common)

    p = sub.add_parser(
        "ctl",
        help="control the running server",
        description="Talk to the running server through its admin socket.",
    )
    csub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in (
        ("status", "uptime, workers, sessions, rates, backlog, rejects"),
        ("sessions", "live meter sessions"),
        ("drain", "stop accepting, flush, exit"),
    ):
        cp = csub.add_parser(action, help=text)
        _add_common(cp)
        if action in ("status", "sessions"):
            cp.add_argument("--json", action="store_true", help="machine-readable output")
        if action == "sessions":
            cp.add_argument("--meter", metavar="SERIAL", help="only sessions of this meter")
        cp.set_defaults(func=cmd_ctl)
    for action, text in (
        ("read", "read attributes of a meter now (or when it connects)"),
        ("disconnect", "switch a meter's supply off, verified by reading it back"),
        ("reconnect", "switch a meter's supply on, verified by reading it back"),
        ("clock", "check a meter's clock and set it when it drifted"),
        ("profile", "read a meter's load profile for a period into readings"),
        ("daily", "the daily read now: billing registers, load profile and event log"),
        ("rekey", "give a meter new keys (key transfer), verified by associating with them"),
        ("firmware", "send a firmware image, verify it, activate it (now or at a time)"),
    ):
        cp = csub.add_parser(action, help=text)
        cp.add_argument("serial", metavar="SERIAL")
        if action == "read":
            cp.add_argument("objects", nargs="+", metavar="OBIS[:ATTR]")
            cp.add_argument(
                "--class",
                dest="class_id",
                type=int,
                help="interface class (default: 8 for the clock, 70 for the disconnector, else 3)",
            )
        if action == "clock":
            cp.add_argument("--threshold", type=float, default=10.0, help="seconds of drift")
        if action == "firmware":
            cp.add_argument("--image", required=True, help="SHA-256 of the image (firmware list)")
            cp.add_argument("--activate-at", metavar="T", help="activate then (default: at once)")
        if action in ("profile", "daily"):
            cp.add_argument("--from", dest="from_", metavar="T", help="default: a day ago")
            cp.add_argument("--to", metavar="T", help="default: this hour")
        cp.add_argument("--wait", type=float, default=30.0, help="seconds to wait for the outcome")
        cp.add_argument(
            "--expire",
            type=float,
            default=None,
            help="seconds the command waits for the meter (default [commands] expire)",
        )
        cp.add_argument("--reason", help="why (kept in the audit trail)")
        cp.add_argument("--json", action="store_true", help="machine-readable output")
        _add_common(cp)
        cp.set_defaults(func=cmd_command)
    cp = csub.add_parser("commands", help="commands waiting or running")
    cp.add_argument("serial", nargs="?", metavar="SERIAL")
    cp.add_argument("--json", action="store_true")
    _add_common(cp)
    cp.set_defaults(func=cmd_commands)
    cp = csub.add_parser("cancel", help="cancel a waiting command")
    cp.add_argument("id", metavar="COMMAND_ID")
    _add_common(cp)
    cp.set_defaults(func=cmd_commands)

    p = sub.add_parser("node", help="this node among the regional nodes and the centre")
    nsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    np_ = nsub.add_parser(
        "key",
        help="print this node's public key (created on first use) for its peers' [[peers]]",
    )
    _add_common(np_)
    np_.set_defaults(func=cmd_node)
    np_ = nsub.add_parser(
        "handover",
        help="at the centre: give a region to another node (its standby when its data "
        "centre is lost; back to its owner when it returns)",
    )
    np_.add_argument("region", help="the region's grid node, e.g. UZ-SA")
    np_.add_argument("--to", required=True, metavar="NODE", help="the node that takes it")
    _add_common(np_)
    np_.set_defaults(func=cmd_node)
    np_ = nsub.add_parser("status", help="ownership and the link: peers, lag, backlog")
    np_.add_argument("--json", action="store_true")
    _add_common(np_)
    np_.set_defaults(func=cmd_node)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.func is not cmd_serve:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    result: int = args.func(args)
    return result
