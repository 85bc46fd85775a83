"""The admin socket's server side, next to its client (``headend/server/admin.py``):
one JSON object per line each way over ``<data>/admin.sock`` (mode 0600). People's
commands are checked against their roles (``headend.server.access``) and every write
leaves an audit row; the work itself is the store process's (`Served`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import json
import logging
import math
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from headend.errors import HeadendError
from headend.people import Principal
from headend.server import access, ipc
from headend.server.admin import jsonable

if TYPE_CHECKING:
    from headend.approvals import Approvals
    from headend.clock import Clock
    from headend.commands import CommandQueue
    from headend.config import Config
    from headend.ownership import Ownership
    from headend.people import People
    from headend.sqlguard import Guard
    from headend.store.db import Store

log = logging.getLogger("headend.store")


class FieldRequests(Protocol):
    """Work orders and outages (`headend.server.fieldwork`)."""

    async def request(self, what: str, req: dict[str, Any], who: Principal) -> Any: ...
    async def outage_request(self, what: str, req: dict[str, Any], who: Principal) -> Any: ...


class Decisions(Protocol):
    """Requests waiting for a second person (`headend.server.submit`)."""

    @property
    def approvals(self) -> Approvals: ...
    async def decide(
        self, who: Principal, approval_id: str, approve: bool, note: str = ""
    ) -> dict[str, Any]: ...


class Handover(Protocol):
    """The centre's side of the link between nodes (`headend.server.nodelink`)."""

    async def handover(self, region: str, to: str) -> dict[str, Any]: ...


class Served(Protocol):
    """What the admin socket's commands need of the store process."""

    cfg: Config
    store: Store
    people: People
    guard: Guard
    workers: dict[int, ipc.Channel]
    commands: CommandQueue
    clock: Clock
    owner: Ownership

    @property
    def fieldwork(self) -> FieldRequests: ...
    @property
    def submitter(self) -> Decisions: ...
    @property
    def nodelink(self) -> Handover | None: ...

    def status(self) -> dict[str, Any]: ...
    async def wave_request(self, what: str, req: dict[str, Any], who: Principal) -> Any: ...
    async def submit_command(self, req: dict[str, Any], who: Principal) -> dict[str, Any]: ...
    async def submit_commands(
        self, items: list[Any], who: Principal, reason: str = ""
    ) -> dict[str, Any]: ...
    async def audit(
        self,
        who: Principal,
        action: str,
        target: str = "",
        outcome: str = "ok",
        detail: dict[str, Any] | None = None,
    ) -> None: ...
    def invalidate(
        self, table: str, columns: list[str], rows: list[list[Any]], skip: int | None = None
    ) -> None: ...
    async def policy_pass(self, act: bool) -> dict[str, Any]: ...
    async def schedule_once(self) -> dict[str, int]: ...


class AdminServer:
    """The admin socket's commands for the store process `svc`."""

    def __init__(self, svc: Served) -> None:
        self.svc = svc

    async def command(self, req: dict[str, Any], who: Principal) -> Any:
        """One admin-socket command for `who` (the service user, named by the kernel).
        Writes leave audit rows."""
        cmd = str(req.get("cmd"))
        loop = asyncio.get_running_loop()
        svc = self.svc
        access.check_person(who, req)
        if cmd.startswith("users.") or cmd == "audit":
            return await access.admin_command(svc.people, svc.guard, svc.store, who, req)
        if cmd.startswith("waves."):
            return await svc.wave_request(cmd.removeprefix("waves."), req, who)
        if cmd.startswith("workorders."):
            return await svc.fieldwork.request(cmd.removeprefix("workorders."), req, who)
        if cmd.startswith("outages."):
            return await svc.fieldwork.outage_request(cmd.removeprefix("outages."), req, who)
        if cmd == "approvals":
            found = await loop.run_in_executor(None, svc.submitter.approvals.visible, who)
            return {"pending": [r.public() for r in found]}
        if cmd in ("approve", "reject"):
            return await svc.submitter.decide(
                who, str(req.get("id", "")), cmd == "approve", str(req.get("note") or "")
            )
        if cmd in (
            "command",
            "submit",
            "cancel",
            "policy",
            "schedule",
            "handover",
            "recompute",
            "detect",
            "insert",
            "drain",
            "maintain",
            "backup",
        ):
            return await self._write(req, who)
        if cmd == "ping":
            return {"ok": True}
        if cmd == "status":
            return svc.status()
        if cmd == "sessions":
            out: list[dict[str, Any]] = []
            for ch in list(svc.workers.values()):
                with contextlib.suppress(ipc.ChannelClosed, ConnectionError, TimeoutError):
                    r = await ch.request({"t": "sessions", "meter": req.get("meter")}, timeout=10)
                    out.extend(r.get("sessions", []))
            return {"sessions": sorted(out, key=lambda s: s["connected_at"])}
        if cmd == "sql":  # people's SQL (headend sql): headend.sqlguard
            cols, rows = await access.admin_command(svc.people, svc.guard, svc.store, who, req)
            return {"columns": cols, "rows": jsonable(rows)}
        if cmd == "query":
            # The service's own tooling (imports read what they check against):
            # parameters allowed, read-only; the socket is the service user's alone.
            query = str(req.get("query", ""))
            cols, rows = await loop.run_in_executor(
                None,
                functools.partial(
                    svc.store.query, query, req.get("params"), settings={"readonly": 1}
                ),
            )
            return {"columns": cols, "rows": jsonable(rows)}
        if cmd == "commands":
            only = req.get("serial")
            return {
                "pending": [
                    c.public()
                    for c in svc.commands.commands.values()
                    if not only or c.serial == only
                ],
                "stats": svc.commands.stats(),
            }
        raise HeadendError(f"unknown admin command {cmd!r}")

    async def _write(self, req: dict[str, Any], who: Principal) -> Any:
        """The admin socket's writes, each with its audit row."""
        cmd = str(req.get("cmd"))
        if cmd == "command":
            return await self.svc.submit_command(req, who)
        if cmd == "submit":  # a batch
            return await self.svc.submit_commands(
                list(req.get("commands") or []), who, reason=str(req.get("reason") or "")
            )
        try:
            out = await self._act(req, who)
        except HeadendError as e:
            await self.svc.audit(
                who, cmd, str(req.get("table") or req.get("id") or ""), "failed", {"why": str(e)}
            )
            raise
        detail: dict[str, Any] = {}
        target = ""
        if cmd == "insert":
            target = str(req.get("table"))
            detail = {"rows": len(req.get("rows") or [])}
        elif cmd == "cancel":
            target = str(req.get("id"))
        elif cmd == "handover":
            target = str(req.get("region"))
            detail = {"to": req.get("to")}
        elif cmd == "maintain":
            detail = {"query": str(req.get("query", ""))[:4000]}
        elif cmd == "backup":
            target = str(req.get("dest"))
            detail = {"rows": out.get("rows"), "bytes": out.get("bytes")}
        elif cmd in ("recompute", "detect"):
            detail = {"start": req.get("start"), "end": req.get("end")}
        elif cmd == "policy":
            detail = {"act": bool(req.get("act"))}
        if cmd != "policy" or req.get("act"):
            await self.svc.audit(who, cmd, target, detail=detail)
        return out

    async def _act(self, req: dict[str, Any], who: Principal) -> Any:
        cmd = str(req.get("cmd"))
        loop = asyncio.get_running_loop()
        if cmd == "drain":
            log.info("drain requested through the admin socket by %s", who.name)
            os.kill(os.getppid(), signal.SIGTERM)
            return {"ok": True, "draining": True}
        if cmd == "maintain":
            # The service user's own statement (a repair, a test's simulated loss):
            # what stopping the server and opening the store would allow, on the
            # record instead. No person's API or CLI reaches it.
            await loop.run_in_executor(None, self.svc.store.command, str(req.get("query", "")))
            return {"ok": True}
        if cmd == "backup":
            # The service user's copy of the store, written by this process (the
            # embedded store is this process's alone).
            from headend.store import backup

            def run() -> dict[str, Any]:
                # Its own client: ingest and people's queries go on meanwhile.
                reader = self.svc.store.companion(tapped=False)
                try:
                    return backup.backup(
                        reader, Path(str(req["dest"])), self.svc.cfg.node.name
                    ).as_dict()
                finally:
                    reader.close()

            return await loop.run_in_executor(None, run)
        if cmd == "insert":
            table = str(req["table"])
            if table in ("users", "user_tokens", "audit"):
                raise HeadendError(f"{table} is written by headend users and the audit only")
            rows, columns = req["rows"], list(req["columns"])

            def insert() -> list[list[Any]]:
                # Beside the loop: reviving many rows is Python work too.
                revived = [_revive(table, r) for r in rows]
                self.svc.store.insert_rows(table, columns, revived, None)
                return revived

            new_rows = await loop.run_in_executor(None, insert)
            self.svc.invalidate(table, list(req["columns"]), new_rows)
            return {"ok": True, "rows": len(new_rows)}
        if cmd == "policy":
            act = bool(req.get("act", False)) and self.svc.cfg.billing.policy
            return await self.svc.policy_pass(act)
        if cmd == "schedule":
            return await self.svc.schedule_once()
        if cmd == "cancel":
            return self.svc.commands.cancel(str(req["id"])).public()
        if cmd == "handover":
            if self.svc.nodelink is None:
                raise HeadendError("regions are handed over at the centre")
            return await self.svc.nodelink.handover(
                str(req.get("region", "")), str(req.get("to", ""))
            )
        if cmd == "recompute":
            from headend import balance

            rep = await loop.run_in_executor(
                None,
                lambda: balance.recompute(
                    self.svc.store,
                    int(req["start"]),
                    int(req["end"]),
                    now=self.svc.clock.now(),
                    owner=self.svc.owner,
                ),
            )
            return rep.as_dict()
        if cmd == "detect":
            from headend import anomalies

            det = await loop.run_in_executor(
                None,
                lambda: anomalies.detect(
                    self.svc.store,
                    int(req["start"]),
                    int(req["end"]),
                    owner=self.svc.owner,
                    clock=self.svc.clock,
                ),
            )
            return det.summary()
        raise HeadendError(f"unknown admin command {cmd!r}")

    async def client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        owner = access.socket_principal(writer.get_extra_info("socket"))
        try:
            while line := await reader.readline():
                try:
                    req = json.loads(line)
                    who = access.socket_person(self.svc.people, owner, req.pop("token", None))
                    result = await self.command(req, who)
                    reply = {"ok": True, "result": result}
                except HeadendError as e:
                    reply = {"ok": False, "error": str(e)}
                except Exception as e:
                    log.exception("admin command failed")
                    reply = {"ok": False, "error": f"internal error: {type(e).__name__}: {e}"}
                writer.write(json.dumps(reply, default=jsonable).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()


def _revive(table: str, row: list[Any]) -> list[Any]:
    """JSON carried datetimes as ISO text and NaN as null; restore them."""
    out: list[Any] = []
    for v in row:
        if isinstance(v, str) and len(v) >= 19 and v[4] == "-" and v[10] == "T":
            try:
                out.append(dt.datetime.fromisoformat(v))
                continue
            except ValueError:
                pass
        if table == "billing_accounts" and isinstance(v, str) and len(v) == 10:
            with contextlib.suppress(ValueError):
                out.append(dt.date.fromisoformat(v))
                continue
        out.append(math.nan if v is None and table in ("grid_nodes", "meters") else v)
    return out
