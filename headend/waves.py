"""Waves: one change (new keys, new firmware) carried over many meters of a region in
steps, the way a utility rolls it out: never more than `concurrency` meters at a time
on this node (and, as for every command, at most ``[commands] max_per_node`` under one
grid node), stopped by itself when too many fail, resumable after a restart or a stop.

A wave is a row in ``waves`` (one per change of state, latest ``ts`` wins) and the
commands it queued, each carrying the wave's id in its args: what a wave has done is
what ``command_status`` says of them, so nothing is counted twice after a restart and
a meter is never asked twice by one wave. The meters of a wave are those of its region
(and models, for firmware) as they stood when it started.

Commands of a wave go in the scheduled lane: people's commands run first. A meter that
stays offline until its command expires counts as expired, not as a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from headend.commands import FINAL, SCHEDULED, Command, CommandError
from headend.errors import HeadendError

if TYPE_CHECKING:
    from headend.people import Principal
    from headend.server.store import StoreService

log = logging.getLogger("headend.waves")

KINDS = ("rekey", "firmware")
COLUMNS = ["wave_id", "kind", "region", "params", "requested_by", "reason", "state", "detail", "ts"]
LIVE = ("running",)
# Outcomes after which a resumed wave asks the meter again.
AGAIN = ("cancelled", "expired")
# Submissions per pass of the loop, so a large wave never holds the event loop.
PASS = 500


class WaveError(HeadendError):
    """A wave cannot be started, stopped or resumed as asked."""


def _params(kind: str, raw: dict[str, Any]) -> dict[str, Any]:
    """A wave's parameters, checked where they enter."""

    def num(name: str, default: float, lo: float, hi: float) -> float:
        v = raw.get(name, default)
        if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
            raise WaveError(f"{name} must be a number from {lo:g} to {hi:g}, got {v!r}")
        return float(v)

    known = {"concurrency", "max_failure_rate", "min_sample", "expire", "under"}
    if kind == "firmware":
        known |= {"image", "models", "activate_at"}
    unknown = set(raw) - known
    if unknown:
        raise WaveError(f"unknown {kind} wave parameters: {', '.join(sorted(unknown))}")
    under = raw.get("under", "")
    if not isinstance(under, str) or len(under) > 64:
        raise WaveError("under must be a grid node id prefix")
    out: dict[str, Any] = {
        "concurrency": int(num("concurrency", 50, 1, 10_000)),
        "max_failure_rate": num("max_failure_rate", 0.1, 0.0, 1.0),
        "min_sample": int(num("min_sample", 20, 1, 1_000_000)),
        "expire": num("expire", 7 * 86400.0, 60.0, 31 * 86400.0),
        "under": under,
    }
    if kind == "firmware":
        models = raw.get("models") or []
        if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
            raise WaveError("models must be a list of model names")
        out["models"] = sorted(models)
        out["image"] = str(raw.get("image") or "")
        if raw.get("activate_at") is not None:
            at = raw["activate_at"]
            if isinstance(at, bool) or not isinstance(at, int) or not 0 <= at < 2**32:
                raise WaveError("activate_at must be Unix seconds")
            out["activate_at"] = at
    return out


@dataclass
class Wave:
    wave_id: str
    kind: str
    region: str
    params: dict[str, Any]
    requested_by: str
    reason: str
    state: str = "running"
    detail: str = ""
    started: float = 0.0
    # Meters still to ask (in order), loaded when the wave runs.
    todo: list[tuple[str, str, str]] | None = None  # (serial, node_id, address)
    inflight: set[str] = field(default_factory=set)
    counts: dict[str, int] = field(default_factory=dict)  # final states, all time
    since: dict[str, int] = field(default_factory=dict)  # at the last (re)start
    total: int = 0

    def public(self) -> dict[str, Any]:
        return {
            "wave_id": self.wave_id,
            "kind": self.kind,
            "region": self.region,
            "params": self.params,
            "requested_by": self.requested_by,
            "reason": self.reason,
            "state": self.state,
            "detail": self.detail,
            "meters": self.total,
            "to_go": len(self.todo) if self.todo is not None else None,
            "running": len(self.inflight),
            "outcomes": dict(self.counts),
        }

    def failure_rate(self) -> tuple[float, int]:
        """Failures over the meters that finished since the last (re)start."""
        done = self.counts.get("done", 0) - self.since.get("done", 0)
        failed = self.counts.get("failed", 0) - self.since.get("failed", 0)
        n = done + failed
        return (failed / n if n else 0.0), n


class Waves:
    """The store's waves (on the event loop; queries in the executor)."""

    def __init__(self, svc: StoreService, tick: float = 1.0) -> None:
        self.svc = svc
        self.db = svc.db
        self.tick = tick
        self.waves: dict[str, Wave] = {}
        self._wake = asyncio.Event()

    # -- persistence ------------------------------------------------------------------

    def _row(self, w: Wave) -> list[Any]:
        return [
            w.wave_id,
            w.kind,
            w.region,
            json.dumps(w.params, sort_keys=True),
            w.requested_by,
            w.reason,
            w.state,
            w.detail,
            dt.datetime.now(dt.UTC),
        ]

    async def _save(self, w: Wave) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(
            None, self.svc.store.insert_rows, "waves", COLUMNS, [self._row(w)]
        )

    def load(self) -> int:
        """The waves of before a restart (in the executor, after the command queue has
        loaded): their outcomes so far from `command_status`, and their commands still
        queued watched again."""
        _, rows = self.svc.store.query(
            f"SELECT wave_id, kind, region, params, requested_by, reason, state, detail, "
            f"toFloat64(ts) FROM {self.db}.waves FINAL ORDER BY ts"
        )
        for r in rows:
            w = Wave(
                wave_id=r[0],
                kind=r[1],
                region=r[2],
                params=json.loads(r[3] or "{}"),
                requested_by=r[4],
                reason=r[5],
                state=r[6],
                detail=r[7],
                started=float(r[8]),
            )
            self.waves[w.wave_id] = w
        return sum(1 for w in self.waves.values() if w.state in LIVE)

    def _outcomes(self, wave_id: str) -> tuple[dict[str, int], set[str]]:
        """(final states counted, the serials the wave is done asking) from the record,
        by each meter's latest command of the wave. A meter whose command was cancelled
        (the wave stopped) or expired (it stayed offline) is asked again on resuming."""
        _, rows = self.svc.store.query(
            f"SELECT serial, argMax(state, updated_at) FROM {self.db}.command_status "
            "WHERE JSONExtractString(args, 'wave') = %(w)s GROUP BY serial",
            {"w": wave_id},
        )
        counts: dict[str, int] = {}
        asked: set[str] = set()
        for serial, state in rows:
            if state in AGAIN:
                continue
            asked.add(str(serial))
            if state in FINAL:
                counts[state] = counts.get(state, 0) + 1
        return counts, asked

    def _selection(self, w: Wave) -> list[tuple[str, str, str]]:
        """The wave's meters as they stand now: its region's (under its node prefix)
        that can take the change: for new keys, keyed meters with a master key; for
        firmware, keyed meters (an image goes only over an authenticated association)
        of its models."""
        under = w.params.get("under", "")
        keyed = "ek != '' AND kek != ''" if w.kind == "rekey" else "ek != ''"
        models = w.params.get("models") or []
        _, rows = self.svc.store.query(
            f"SELECT m.serial, m.node_id, m.address FROM ("
            f"SELECT serial, argMax(node_id, updated_at) AS node_id, "
            f"argMax(address, updated_at) AS address, argMax(region, updated_at) AS region, "
            f"argMax(model, updated_at) AS model "
            f"FROM {self.db}.meters GROUP BY serial) AS m "
            f"INNER JOIN (SELECT serial FROM {self.db}.meter_keys FINAL "
            f"WHERE {keyed}) AS k ON k.serial = m.serial "
            f"WHERE m.region = %(r)s AND startsWith(m.node_id, %(u)s) "
            f"AND (empty(%(m)s) OR has(%(m)s, m.model)) "
            f"ORDER BY m.node_id, m.serial",
            {"r": w.region, "u": under, "m": models},
        )
        return [(str(r[0]), str(r[1]), str(r[2])) for r in rows]

    async def _prepare(self, w: Wave) -> None:
        """What the wave has left to do: its selection less what it asked already, and
        its commands still queued watched."""
        loop = asyncio.get_running_loop()
        selection = await loop.run_in_executor(None, self._selection, w)
        counts, asked = await loop.run_in_executor(None, self._outcomes, w.wave_id)
        w.counts = counts
        w.since = dict(counts)
        w.total = len({s for s, _, _ in selection} | asked)
        w.todo = [m for m in selection if m[0] not in asked]
        w.todo.reverse()  # popped from the end, in the selection's order
        for c in list(self.svc.commands.commands.values()):
            if c.args.get("wave") == w.wave_id and c.command_id not in w.inflight:
                self._watch(w, c)

    # -- people's requests ------------------------------------------------------------

    async def start(
        self, who: Principal, kind: str, region: str, params: dict[str, Any], reason: str
    ) -> Wave:
        who.require("admin", "start a wave of key rotations or firmware upgrades")
        if kind not in KINDS:
            raise WaveError(f"unknown wave kind {kind!r}; choose one of {', '.join(KINDS)}")
        who.require_region(region, f"region {region}")
        owner = self.svc.owner
        if owner is not None and not owner.accepts(region):
            raise WaveError(owner.why_not(f"a wave in region {region}", region))
        checked = _params(kind, params if isinstance(params, dict) else {})
        if kind == "firmware":
            from headend import firmware

            loop = asyncio.get_running_loop()
            image = await loop.run_in_executor(
                None, firmware.load, self.svc.cfg.firmware_dir, checked["image"]
            )
            checked["identifier"] = image.identifier
        w = Wave(
            wave_id=f"w{int(time.time())}-{os.urandom(3).hex()}",
            kind=kind,
            region=region,
            params=checked,
            requested_by=who.name,
            reason=reason,
            started=time.time(),
        )
        await self._prepare(w)
        if not w.todo:
            raise WaveError(f"region {region} has no meters that can take a {kind} wave")
        self.waves[w.wave_id] = w
        await self._save(w)
        await self.svc.audit(
            who, "wave.start", w.wave_id, detail={"kind": kind, "region": region, **checked}
        )
        log.info(
            "wave %s (%s, region %s, %d meters) started by %s",
            w.wave_id,
            kind,
            region,
            w.total,
            who.name,
        )
        self._wake.set()
        return w

    def _get(self, wave_id: str) -> Wave:
        w = self.waves.get(wave_id)
        if w is None:
            raise WaveError(f"no wave {wave_id!r}")
        return w

    async def stop(self, who: Principal, wave_id: str, why: str = "") -> Wave:
        w = self._get(wave_id)
        who.require("admin", "stop a wave")
        who.require_region(w.region, f"region {w.region}")
        if w.state not in LIVE:
            raise WaveError(f"wave {wave_id} is {w.state}, not running")
        await self._halt(w, "stopped", why or f"stopped by {who.name}")
        await self.svc.audit(who, "wave.stop", wave_id, detail={"why": why})
        return w

    async def resume(self, who: Principal, wave_id: str) -> Wave:
        w = self._get(wave_id)
        who.require("admin", "resume a wave")
        who.require_region(w.region, f"region {w.region}")
        if w.state in LIVE or w.state == "done":
            raise WaveError(f"wave {wave_id} is {w.state}")
        w.state, w.detail = "running", f"resumed by {who.name}"
        await self._prepare(w)
        await self._save(w)
        await self.svc.audit(who, "wave.resume", wave_id)
        self._wake.set()
        return w

    def list(self) -> list[dict[str, Any]]:
        return [w.public() for w in sorted(self.waves.values(), key=lambda w: w.started)]

    def show(self, wave_id: str) -> dict[str, Any]:
        return self._get(wave_id).public()

    # -- the loop -----------------------------------------------------------------------

    def _watch(self, w: Wave, c: Command) -> None:
        w.inflight.add(c.command_id)
        try:
            fut = self.svc.commands.watch(c.command_id)
        except CommandError:  # already final
            w.inflight.discard(c.command_id)
            return
        fut.add_done_callback(functools.partial(self._settled, w, c.command_id))

    def _settled(self, w: Wave, cid: str, fut: asyncio.Future[Command]) -> None:
        w.inflight.discard(cid)
        if fut.cancelled():
            return
        c = fut.result()
        follow = (c.result or {}).get("then_command") if c.state == "done" else None
        queued = self.svc.commands.commands.get(str(follow)) if follow else None
        if queued is not None:
            # Verified, its activation waits for its time: counted when that ends.
            w.counts["verified"] = w.counts.get("verified", 0) + 1
            self._watch(w, queued)
        else:
            w.counts[c.state] = w.counts.get(c.state, 0) + 1
        self._wake.set()

    async def _halt(self, w: Wave, state: str, detail: str) -> None:
        """Stops a wave: its commands not yet running are cancelled (running ones
        finish and are counted)."""
        w.state, w.detail = state, detail
        for cid in list(w.inflight):
            c = self.svc.commands.commands.get(cid)
            if c is not None and c.state not in FINAL and c.state != "running":
                with contextlib.suppress(CommandError):
                    self.svc.commands.cancel(cid, f"wave {w.wave_id} {state}: {detail}")
        await self._save(w)
        log.warning("wave %s %s: %s", w.wave_id, state, detail)

    async def _step(self, w: Wave) -> None:
        if w.todo is None:
            await self._prepare(w)
        assert w.todo is not None
        rate, n = w.failure_rate()
        limit = w.params["max_failure_rate"]
        if n >= w.params["min_sample"] and rate > limit:
            await self._halt(
                w,
                "halted",
                f"{rate:.0%} of {n} meters failed, more than the {limit:.0%} allowed",
            )
            return
        room = min(PASS, w.params["concurrency"] - len(w.inflight))
        submitted = 0
        while room > 0 and w.todo:
            serial, node, address = w.todo.pop()
            args: dict[str, Any] = {"wave": w.wave_id}
            if w.kind == "firmware":
                args.update(image=w.params["image"], identifier=w.params["identifier"])
                if "activate_at" in w.params:
                    args["activate_at"] = w.params["activate_at"]
            try:
                c = self.svc.commands.submit(
                    serial,
                    w.kind,
                    args,
                    requested_by=w.requested_by,
                    reason=f"wave {w.wave_id}: {w.reason}".strip(),
                    node_id=node,
                    priority=SCHEDULED,
                    expires_in=w.params["expire"],
                    address=address,
                )
            except CommandError as e:
                log.warning("wave %s: meter %s not asked: %s", w.wave_id, serial, e)
                w.counts["refused"] = w.counts.get("refused", 0) + 1
                continue
            self._watch(w, c)
            room -= 1
            submitted += 1
        if submitted:
            self.svc.commands.dispatch()
        if not w.todo and not w.inflight:
            w.state = "done"
            w.detail = ", ".join(f"{n} {s}" for s, n in sorted(w.counts.items()))
            await self._save(w)
            log.info("wave %s done: %s", w.wave_id, w.detail)

    async def run(self) -> None:
        """Tops up the running waves, forever."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.tick)
            self._wake.clear()
            for w in [w for w in self.waves.values() if w.state in LIVE]:
                try:
                    await self._step(w)
                except Exception as e:
                    log.error("wave %s could not go on (will retry): %s", w.wave_id, e)
