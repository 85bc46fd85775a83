"""The store's side of key rotations (``headend/server/rekey.py`` runs in the workers):
each step a worker reports (new keys pending, made current, dropped) is recorded in
``meter_keys`` before the worker goes on, audited in the name of whoever asked for the
rotation, and the other workers are told to look the meter up again.

Steps arrive from many meters at once during a wave; they are written in batches (one
query and one insert for up to a thousand, gathered for a few milliseconds), so a
wave's pace is set by the meters, not by a row-at-a-time insert per step.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from headend.people import Principal
from headend.store import keyring

if TYPE_CHECKING:
    from headend.server.store import StoreService

log = logging.getLogger("headend.keys")

BATCH = 1000
GATHER_S = 0.005


class KeyChanges:
    def __init__(self, svc: StoreService) -> None:
        self.svc = svc
        self._queue: list[tuple[keyring.Change, str, int | None, asyncio.Future[str]]] = []
        self._task: asyncio.Task[None] | None = None
        self.steps = 0

    async def submit(self, msg: dict[str, Any], worker: int | None) -> dict[str, Any]:
        """A worker's step; answers once it is recorded (or why it was not)."""
        try:
            change = keyring.Change(
                serial=str(msg["serial"]),
                op=str(msg["op"]),
                ek=str(msg.get("ek") or ""),
                ak=str(msg.get("ak") or ""),
                fingerprint=str(msg.get("fingerprint") or ""),
                grace=float(msg.get("grace", self.svc.cfg.security.previous_keys_grace)),
            )
        except (KeyError, TypeError, ValueError) as e:
            return {"error": f"a malformed change of keys: {e}"}
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._queue.append((change, str(msg.get("command") or ""), worker, fut))
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain())
        why = await fut
        return {"error": why} if why else {"ok": True}

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(GATHER_S)
        while self._queue:
            batch, self._queue = self._queue[:BATCH], self._queue[BATCH:]
            changes = [b[0] for b in batch]
            try:
                errors = await loop.run_in_executor(None, keyring.apply, self.svc.store, changes)
            except Exception as e:  # the store refused the insert: every step fails
                log.error("recording %d key changes failed: %s", len(batch), e)
                errors = [f"the store could not record it: {e}"] * len(batch)
            audit: list[tuple[Principal, str, str, str, dict[str, Any] | None]] = []
            told: dict[int | None, list[str]] = defaultdict(list)
            for (change, cid, worker, _), why in zip(batch, errors, strict=True):
                if why:
                    continue
                told[worker].append(change.serial)
                c = self.svc.commands.commands.get(cid)
                who = Principal(
                    c.requested_by if c is not None else "system",
                    frozenset(),
                    frozenset(),
                    f"worker:{worker}",
                    "command",
                )
                audit.append((who, f"keys.{change.op}", change.serial, "ok", {"command_id": cid}))
            for worker, serials in told.items():
                # The worker that runs the rotation knows already (and must not be
                # reloaded in the middle of it).
                self.svc.invalidate("meter_keys", ["serial"], [[s] for s in serials], skip=worker)
            if audit:
                try:
                    await loop.run_in_executor(None, self.svc.people.audit_many, audit)
                except Exception as e:
                    log.error("auditing %d key changes failed: %s", len(audit), e)
            self.steps += len(batch)
            for (_, _, _, fut), why in zip(batch, errors, strict=True):
                if not fut.done():
                    fut.set_result(why)
