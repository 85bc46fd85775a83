"""``headend backup`` and ``headend restore``: a node's store to a directory and back
(headend/store/backup.py). The master key is never in a backup.

A backup runs through the running server (its store process writes the files) or, with
the server stopped, on the store directly. A restore needs the server stopped and a
store with no rows. Both leave an audit row.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from headend.errors import HeadendError


def _print(report: dict[str, Any], verb: str, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report, indent=1))
        return
    for table, rows in sorted(report["tables"].items()):
        print(f"  {table:<22} {rows:>12} rows")
    print(
        f"{verb} {report['rows']} rows in {len(report['tables'])} tables, "
        f"{report['bytes']} bytes compressed ({report['path']})"
    )


def cmd_backup(args: argparse.Namespace) -> int:
    from headend.cli import _config, _fail
    from headend.server import access
    from headend.server.admin import AdminClient, ServerNotRunning
    from headend.store import backup
    from headend.store.db import Store

    dest = Path(args.dir).resolve()
    try:
        cfg = _config(args)
        client = AdminClient(cfg.admin_socket, timeout=3600)
        try:
            report = client.call("backup", dest=str(dest))
        except ServerNotRunning:
            store = Store(cfg.dsn, cfg.store.database).connect()
            try:
                report = backup.backup(store, dest, cfg.node.name).as_dict()
                access.people_for(cfg, store).audit(
                    access.local_principal(),
                    "backup",
                    str(dest),
                    detail={"rows": report["rows"], "bytes": report["bytes"]},
                )
            finally:
                store.close()
        finally:
            client.close()
    except HeadendError as e:
        return _fail(e)
    _print(report, "backed up", args.json)
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from headend.cli import _config, _fail
    from headend.keys import MasterKeyError, load_master_key
    from headend.server import access
    from headend.server.admin import AdminClient, ServerNotRunning
    from headend.store import backup
    from headend.store.db import Store, StoreBusy

    src = Path(args.dir).resolve()
    try:
        cfg = _config(args)
        client = AdminClient(cfg.admin_socket)
        try:
            client.call("ping")
        except ServerNotRunning:
            pass
        else:
            raise HeadendError("the server is running: stop it before restoring")
        finally:
            client.close()
        manifest = backup.read_manifest(src)
        try:
            master = load_master_key(cfg)
        except MasterKeyError:
            if manifest.get("master_key_fingerprints"):
                raise HeadendError(
                    "this node has no master key, and the backup's meter keys are wrapped "
                    f"under {', '.join(manifest['master_key_fingerprints'])}: put the old "
                    f"node's key in {cfg.master_key_path} (or ${cfg.security.master_key_env}) "
                    "first"
                ) from None
            master = load_master_key(cfg, create=True)
        try:
            # No tap: what is restored is not news to the node's peers.
            store = Store(
                cfg.dsn,
                cfg.store.database,
                cluster=cfg.store.cluster,
                min_free_bytes=cfg.store.min_free_bytes,
            ).connect()
        except StoreBusy:
            raise HeadendError("the store is in use: stop the server before restoring") from None
        try:
            report = backup.restore(store, src, master.fingerprint).as_dict()
            access.people_for(cfg, store).audit(
                access.local_principal(),
                "restore",
                str(src),
                detail={"rows": report["rows"], "tables": len(report["tables"])},
            )
        finally:
            store.close()
    except HeadendError as e:
        return _fail(e)
    _print(report, "restored", args.json)
    return 0


def add_parsers(sub: Any, add_common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser(
        "backup",
        help="copy the store (every table, meter keys wrapped) to a directory",
        description="Write every table of the node's store to DIR (new or empty; mode "
        "0700) in ClickHouse's Native format, zstd-compressed, with a manifest of row "
        "counts and checksums. Through the running server, or on the store when it is "
        "stopped. Meter keys stay wrapped; the master key is never in a backup: keep it "
        "apart.",
    )
    p.add_argument("dir", help="directory to write (must not exist, or be empty)")
    p.add_argument("--json", action="store_true", help="the report as JSON")
    add_common(p)
    p.set_defaults(func=cmd_backup)
    p = sub.add_parser(
        "restore",
        help="load a backup into an empty store (server stopped)",
        description="Load the backup in DIR into this node's store, which must hold no "
        "rows, with the server stopped; checks every file's checksum and every table's "
        "row count, and that this node's master key is the one the meter keys are "
        "wrapped under. The head-end's own invocation counters are raised past what it "
        "may have sent since the backup.",
    )
    p.add_argument("dir", help="a directory written by headend backup")
    p.add_argument("--json", action="store_true", help="the report as JSON")
    add_common(p)
    p.set_defaults(func=cmd_restore)
