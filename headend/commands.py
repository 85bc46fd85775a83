"""The command queue: reads, disconnects, reconnects, clock corrections and profile
reads for meters, ordered per meter, retried with backoff, surviving restarts.

The store process owns it. A command is offered to every worker; the worker holding
the meter's connection (now, or when the meter next connects) claims it, runs it in
one association (``headend/server/client.py``) and reports the outcome. A meter with
an ``address`` (one that listens instead of connecting) is offered to one worker,
chosen by its serial, which dials it. Every state a
command passes through is a row in ``commands`` (view ``command_status``): that table
is the audit trail and, on restart, the queue itself.

Throttling: one command at a time per meter, at most ``max_per_node`` running per grid
node, and per worker at most ``max_associations_per_worker`` associations, where
commands (priority 0) go before scheduled reads (priority 1).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import datetime as dt
import heapq
import json
import logging
import math
import os
import random
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from headend.config import CommandsConfig
from headend.errors import HeadendError
from headend.ownership import Ownership
from headend.store.db import Store

log = logging.getLogger("headend.commands")

KINDS = ("read", "disconnect", "reconnect", "clock", "profile", "daily", "rekey", "firmware")
FINAL = frozenset({"done", "failed", "expired", "cancelled"})
COMMAND = 0  # priority lane for commands and on-demand reads
SCHEDULED = 1

COLUMNS = [
    "command_id",
    "serial",
    "kind",
    "args",
    "requested_by",
    "reason",
    "priority",
    "requested_at",
    "expires_at",
    "state",
    "attempts",
    "worker",
    "result",
    "error",
    "verified_state",
    "ts",
    "approved_by",
]


def latest_meters(db: str, owner: Ownership | None = None) -> str:
    """Each meter's current grid node and region (meters keeps every import's row);
    with `owner`, only the meters it owns."""
    mine = "" if owner is None or owner.everything else f" HAVING {owner.sql('region')}"
    return (
        f"(SELECT serial, argMax(node_id, updated_at) AS node_id, "
        f"argMax(region, updated_at) AS region FROM {db}.meters GROUP BY serial{mine})"
    )


class Place(NamedTuple):
    """Where a meter is: its grid node, the address it is dialled at ("" when it
    connects in) and its region."""

    node_id: str
    address: str
    region: str


class CommandError(HeadendError):
    """A command cannot be queued (unknown meter, bad kind or arguments)."""


def _utc(t: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(t, dt.UTC)


@dataclass
class Command:
    command_id: str
    serial: str
    kind: str
    args: dict[str, Any]
    requested_by: str
    reason: str
    priority: int
    requested_at: float
    expires_at: float
    node_id: str = ""
    state: str = "queued"
    attempts: int = 0
    worker: int = -1
    not_before: float = 0.0
    result: dict[str, Any] | None = None
    error: str = ""
    verified_state: str = ""
    offered: set[int] = field(default_factory=set)
    last_ts: float = 0.0
    # Where a listening meter is dialled ("": it connects in); None until looked up.
    address: str | None = None
    approved_by: str = ""  # the second person, for what needed four eyes
    # Not to run before this time (args `not_before`: a firmware activation at its
    # hour). Unlike a retry's wait it does not hold the meter's later commands back.
    scheduled_for: float = 0.0

    def job(self) -> dict[str, Any]:
        return {
            "id": self.command_id,
            "serial": self.serial,
            "kind": self.kind,
            "args": self.args,
            "priority": self.priority,
            "address": self.address or "",
        }

    def public(self) -> dict[str, Any]:
        return {
            "command_id": self.command_id,
            "serial": self.serial,
            "kind": self.kind,
            "args": self.args,
            "requested_by": self.requested_by,
            "approved_by": self.approved_by,
            "reason": self.reason,
            "state": self.state,
            "attempts": self.attempts,
            "requested_at": self.requested_at,
            "result": self.result,
            "error": self.error,
            "verified_state": self.verified_state,
        }

    def row(self, now: float) -> list[Any]:
        return [
            self.command_id,
            self.serial,
            self.kind,
            json.dumps(self.args, sort_keys=True),
            self.requested_by,
            self.reason,
            self.priority,
            _utc(self.requested_at),
            _utc(self.expires_at),
            self.state,
            self.attempts,
            self.worker,
            json.dumps(self.result) if self.result is not None else "",
            self.error,
            self.verified_state,
            _utc(now),
            self.approved_by,
        ]


# Unix seconds a command's times may name (1970 .. 2106, what DLMS date-times and the
# tables' DateTime hold).
MAX_UNIX = 2**32 - 1
# Command records per insert.
WRITE_SLICE = 2000
# Meters whose queue head one dispatch pass offers at most (the rest: the next pass).
DISPATCH_BATCH = 1000
# Objects one read command may name.
MAX_READ_OBJECTS = 256
# Most seconds a person may wait for a command's outcome.
MAX_WAIT = 300.0


def seconds(value: Any, name: str, lo: float, hi: float) -> float:
    """A number of seconds from a request, range-checked where it enters: a clear
    error instead of a value that fails later (1e308 once left a command that failed
    every claim)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise CommandError(f"{name} must be a number of seconds, got {value!r}")
    try:
        v = float(value)
    except ValueError:
        raise CommandError(f"{name} must be a number of seconds, got {value!r}") from None
    if not math.isfinite(v) or not lo <= v <= hi:
        raise CommandError(f"{name} must be between {lo:g} and {hi:g} seconds, got {value!r}")
    return v


def expires_in_of(item: dict[str, Any], cfg: CommandsConfig) -> float | None:
    """A request's `expires_in`, checked (None: the configured default)."""
    raw = item.get("expires_in")
    return None if raw is None else seconds(raw, "expires_in", 1.0, cfg.max_expire)


def _unix(args: dict[str, Any], key: str, kind: str) -> None:
    v = args.get(key)
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, int):
        raise CommandError(f"{kind} needs {key} as integer Unix seconds (or none)")
    if not 0 <= v <= MAX_UNIX:
        raise CommandError(f"{kind}: {key}={v} is outside 0..{MAX_UNIX} (Unix seconds)")


def validate(kind: str, args: dict[str, Any]) -> None:
    """A command's kind and arguments, checked where they enter (every number in
    range), so nothing that fails later is queued."""
    if not isinstance(args, dict):
        raise CommandError(f"args must be an object, got {type(args).__name__}")
    if kind not in KINDS:
        raise CommandError(f"unknown command {kind!r}; choose one of {', '.join(KINDS)}")
    if kind == "read":
        _check_read(args)
    _unix(args, "not_before", kind)
    if kind == "firmware":
        _check_firmware(args)
    if kind == "rekey":
        extra = set(args) - {"wave"}
        if extra:
            raise CommandError(f"rekey takes no arguments ({', '.join(sorted(extra))} given)")
        if not isinstance(args.get("wave", ""), str) or len(args.get("wave", "")) > 64:
            raise CommandError("rekey: wave must be a wave id")
    if kind == "daily":
        for k in ("profile_from", "events_from", "to"):
            _unix(args, k, "daily")
    if kind == "profile":
        if not (isinstance(args.get("from"), int) and isinstance(args.get("to"), int)):
            raise CommandError("profile needs integer from and to (Unix seconds)")
        _unix(args, "from", "profile")
        _unix(args, "to", "profile")
        if args["from"] > args["to"]:
            raise CommandError("profile: from is after to")


def _check_firmware(args: dict[str, Any]) -> None:
    extra = set(args) - {"image", "identifier", "activate_at", "phase", "wave", "not_before"}
    if extra:
        raise CommandError(f"firmware takes no {', '.join(sorted(extra))}")
    image = args.get("image")
    if (
        not isinstance(image, str)
        or len(image) != 64
        or not all(ch in "0123456789abcdef" for ch in image)
    ):
        raise CommandError("firmware needs image: the SHA-256 of an image (headend firmware list)")
    _unix(args, "activate_at", "firmware")
    if args.get("phase", "transfer") not in ("transfer", "activate"):
        raise CommandError("firmware phase is transfer or activate")
    if not isinstance(args.get("identifier", ""), str) or not isinstance(args.get("wave", ""), str):
        raise CommandError("firmware: identifier and wave are text")


def _check_read(args: dict[str, Any]) -> None:
    objs = args.get("objects")
    if not isinstance(objs, list) or not objs:
        raise CommandError("read needs objects: [[class, obis, attribute], ...]")
    if len(objs) > MAX_READ_OBJECTS:
        raise CommandError(f"read takes at most {MAX_READ_OBJECTS} objects, got {len(objs)}")
    for o in objs:
        if not (isinstance(o, list | tuple) and len(o) == 3):
            raise CommandError(f"read object {o!r} is not [class, obis, attribute]")
        cls, obis, attr = o
        if isinstance(cls, bool) or not isinstance(cls, int) or not 0 <= cls <= 0xFFFF:
            raise CommandError(f"read object {o!r}: class must be 0..65535")
        if not isinstance(obis, str) or len(obis) > 32:
            raise CommandError(f"read object {o!r}: obis must be a code such as 1.0.1.8.0.255")
        if isinstance(attr, bool) or not isinstance(attr, int) or not 1 <= attr <= 127:
            raise CommandError(f"read object {o!r}: attribute must be 1..127")


class CommandQueue:
    """The store's queue. `send(worker, message)` reaches a worker; `workers()` lists
    the connected ones; writes go through `store` in an executor."""

    def __init__(
        self,
        store: Store,
        cfg: CommandsConfig,
        send: Callable[[int, dict[str, Any]], bool],
        workers: Callable[[], list[int]],
        owner: Ownership | None = None,
    ) -> None:
        self.store = store
        self.db = store.db
        self.cfg = cfg
        self.owner = owner
        self._send = send
        self._workers = workers
        self.commands: dict[str, Command] = {}
        self.by_meter: dict[str, list[str]] = {}
        # Commands (not scheduled reads) waiting or running per meter, for the cap.
        self.commands_waiting: dict[str, int] = {}
        self._ids = random.Random(os.urandom(16))  # noqa: S311 (names, not secrets)
        self.waiters: dict[str, list[asyncio.Future[Command]]] = {}
        self.running_per_node: dict[str, int] = {}
        self.totals: dict[str, int] = {}
        self.by_kind: dict[tuple[str, str], int] = {}  # transitions by (kind, state)
        self.latency: list[float] = []
        self._rows: list[list[Any]] = []
        self._wake = asyncio.Event()
        self._unresolved: set[str] = set()
        self.scheduled_waiting = 0  # scheduled commands not yet final
        # Dispatch visits only what changed, so its cost follows the traffic, not the
        # queue's length (a day of scheduled reads for millions of meters):
        # meters whose first command may need offering,
        self._dirty: set[str] = set()
        # (not_before, serial) of meters whose first command waits for a retry,
        self._later: list[tuple[float, str]] = []
        # (expires_at, command_id) of every queued command (stale entries skipped),
        self._expiry: list[tuple[float, str]] = []
        # and the workers offered to last time (a change re-offers everything).
        self._offered_to: list[int] = []

    # -- persistence ------------------------------------------------------------------

    def load(self) -> int:
        """Re-queues the commands that were not final when the store stopped (of the
        meters this node owns: the centre keeps the regions' commands only as a record)."""
        join = "INNER" if self.owner is not None and not self.owner.everything else "LEFT"
        _, rows = self.store.query(
            f"SELECT c.command_id, c.serial, c.kind, c.args, c.requested_by, c.reason, "
            f"c.priority, toFloat64(c.requested_at), toFloat64(c.expires_at), c.state, "
            f"c.attempts, m.node_id, c.approved_by "
            f"FROM {self.db}.command_status AS c "
            f"{join} JOIN {latest_meters(self.db, self.owner)} AS m ON m.serial = c.serial "
            f"WHERE c.state NOT IN ({', '.join(repr(s) for s in sorted(FINAL))}) "
            f"ORDER BY c.requested_at"
        )
        for r in rows:
            c = Command(
                command_id=r[0],
                serial=r[1],
                kind=r[2],
                args=json.loads(r[3] or "{}"),
                requested_by=r[4],
                reason=r[5],
                priority=int(r[6]),
                requested_at=float(r[7]),
                expires_at=float(r[8]),
                attempts=int(r[10]),
                node_id=r[11] or "",
                approved_by=r[12] or "",
            )
            # A command that was running when the store stopped runs again (disconnect
            # and reconnect are idempotent; reads are harmless).
            self._add(c)
        return len(rows)

    def _record(self, c: Command) -> None:
        # Each transition strictly later than the one before (ms resolution), so the
        # latest state is well defined.
        c.last_ts = max(time.time(), c.last_ts + 0.001)
        self._rows.append(c.row(c.last_ts))
        self.totals[c.state] = self.totals.get(c.state, 0) + 1
        key = (c.kind, c.state)
        self.by_kind[key] = self.by_kind.get(key, 0) + 1
        self._wake.set()

    def new_id(self) -> str:
        """A command id: 16 hex digits, random (seeded from the system's randomness:
        ids are names, not secrets, and a batch of 10,000 needs them fast)."""
        return f"{self._ids.getrandbits(64):016x}"

    def take_rows(self) -> list[list[Any]]:
        """The transitions recorded since the last call (on the event loop)."""
        rows, self._rows = self._rows, []
        return rows

    def write(self, rows: list[list[Any]]) -> None:
        """Inserts transitions (in an executor: the queue itself stays on the loop)."""
        # In slices: an insert holds the GIL for part of its time (the embedded store,
        # the client's encoding), and the event loop waits for it meanwhile.
        for i in range(0, len(rows), WRITE_SLICE):
            self.store.insert_rows("commands", COLUMNS, rows[i : i + WRITE_SLICE])

    # -- submitting -----------------------------------------------------------------------

    def node_of(self, serial: str) -> Place:
        """Where the meter is; unknown meters are refused (a query: run it in an
        executor)."""
        found = self.nodes_of([serial])
        if serial not in found:
            raise CommandError(f"unknown meter {serial!r}")
        return found[serial]

    def nodes_of(self, serials: list[str]) -> dict[str, Place]:
        """Where each known meter among `serials` is, in one primary-key query (run it
        in an executor)."""
        if not serials:
            return {}
        _, rows = self.store.query(
            f"SELECT serial, argMax(node_id, updated_at), argMax(address, updated_at), "
            f"argMax(region, updated_at) "
            f"FROM {self.db}.meters WHERE serial IN {{s:Array(String)}} GROUP BY serial",
            {"s": serials},
        )
        return {str(r[0]): Place(str(r[1]), str(r[2]), str(r[3])) for r in rows}

    def submit(
        self,
        serial: str,
        kind: str,
        args: dict[str, Any] | None = None,
        *,
        requested_by: str,
        reason: str = "",
        node_id: str,
        priority: int = COMMAND,
        expires_in: float | None = None,
        address: str | None = None,
        command_id: str | None = None,
        approved_by: str = "",
    ) -> Command:
        """Queues a command (on the event loop; `node_id` and `address` from
        :meth:`node_of`; an address not given is looked up before the command is
        offered). `command_id`: the id the centre gave a command it sent down."""
        args = args or {}
        validate(kind, args)
        if expires_in is not None:
            # People's values were checked against max_expire where they entered
            # (expires_in_of); the scheduler's and the centre's need only be finite.
            expires_in = seconds(expires_in, "expires_in", 0.0, math.inf)
        waiting = self.commands_waiting.get(serial, 0)
        if priority == COMMAND and waiting >= self.cfg.max_pending_per_meter:
            raise CommandError(
                f"meter {serial} already has {waiting} commands waiting, the most "
                "[commands] max_pending_per_meter allows; cancel some or let them run"
            )
        now = time.time()
        c = Command(
            command_id=command_id or self.new_id(),
            serial=serial,
            kind=kind,
            args=args,
            requested_by=requested_by,
            reason=reason,
            priority=priority,
            requested_at=now,
            expires_at=now + (self.cfg.expire if expires_in is None else expires_in),
            node_id=node_id,
            address=address,
            approved_by=approved_by,
        )
        self._add(c)
        self._record(c)
        return c

    def refuse(
        self, command_id: str, serial: str, kind: str, data: dict[str, Any], why: str
    ) -> Command:
        """Records a command that was asked for but cannot run here (sent to a node
        that does not own its meter): failed at once, with why."""
        return self.record_only(
            command_id, serial, kind, data, state="failed", error=why, expires_in=0.0
        )

    def record_only(
        self,
        command_id: str,
        serial: str,
        kind: str,
        data: dict[str, Any],
        *,
        state: str,
        error: str = "",
        expires_in: float | None = None,
        node_id: str = "",
    ) -> Command:
        """A command's row without queuing it here: one that failed at once, or one the
        centre sent to the node that owns its meter (state ``sent``; that node's
        transitions follow under the same id)."""
        args = data.get("args") or {}
        validate(kind, args)
        now = time.time()
        c = Command(
            command_id=command_id,
            serial=serial,
            kind=kind,
            args=args,
            requested_by=str(data.get("requested_by") or ""),
            approved_by=str(data.get("approved_by") or ""),
            reason=str(data.get("reason") or ""),
            priority=COMMAND,
            requested_at=now,
            expires_at=now + (self.cfg.expire if expires_in is None else expires_in),
            node_id=node_id,
            state=state,
            error=error,
        )
        self._record(c)
        return c

    def _add(self, c: Command) -> None:
        c.scheduled_for = float(c.args.get("not_before") or 0)
        self.commands[c.command_id] = c
        self.scheduled_waiting += c.priority == SCHEDULED
        if c.address is None:
            self._unresolved.add(c.command_id)
        heapq.heappush(self._expiry, (c.expires_at, c.command_id))
        self._dirty.add(c.serial)
        if c.priority == COMMAND:
            self.commands_waiting[c.serial] = self.commands_waiting.get(c.serial, 0) + 1
        q = self.by_meter.setdefault(c.serial, [])
        # Commands before scheduled reads; otherwise in the order asked (an insertion,
        # not a sort of the queue per command).
        commands = self.commands
        bisect.insort(
            q, c.command_id, key=lambda i: (commands[i].priority, commands[i].requested_at)
        )

    def pending(self, serial: str, kind: str | None = None) -> list[Command]:
        return [
            self.commands[i]
            for i in self.by_meter.get(serial, [])
            if kind is None or self.commands[i].kind == kind
        ]

    def cancel(self, command_id: str, why: str = "cancelled by an operator") -> Command:
        c = self.commands.get(command_id)
        if c is None:
            raise CommandError(f"no pending command {command_id!r}")
        if c.state == "running":
            raise CommandError(f"command {command_id} is running on worker {c.worker}")
        self._finish(c, "cancelled", error=why)
        return c

    def watch(self, command_id: str) -> asyncio.Future[Command]:
        """A future for a pending command's outcome, registered now (so an outcome
        that arrives before anyone awaits it is not missed)."""
        if command_id not in self.commands:
            raise CommandError(f"no pending command {command_id!r}")
        fut: asyncio.Future[Command] = asyncio.get_running_loop().create_future()
        self.waiters.setdefault(command_id, []).append(fut)
        return fut

    async def wait(
        self, command_id: str, timeout: float, fut: asyncio.Future[Command] | None = None
    ) -> Command:
        """The command once finished, or as it stands after `timeout` seconds."""
        c = self.commands.get(command_id)
        if fut is None:
            fut = self.watch(command_id)
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            assert c is not None
            return c

    # -- dispatch ---------------------------------------------------------------------------

    async def resolve(self) -> None:
        """Looks up where the new commands' meters are reached, in batches (a meter
        re-imported with another address is dialled there from its next command)."""
        loop = asyncio.get_running_loop()
        while self._unresolved:
            ids = list(self._unresolved)[:10_000]
            cs = [self.commands[i] for i in ids if i in self.commands]
            found = await loop.run_in_executor(None, self.nodes_of, sorted({c.serial for c in cs}))
            for c in cs:
                c.address = found.get(c.serial, ("", ""))[1]
                self._dirty.add(c.serial)
            self._unresolved.difference_update(ids)

    def dispatch(self, now: float | None = None) -> None:
        """Offers each meter's first command to the workers that have not seen it (a
        listening meter's to the one worker that dials it); expires commands whose time
        is up."""
        now = time.time() if now is None else now
        workers = sorted(self._workers())
        if workers != self._offered_to:
            self._offered_to = workers
            self._dirty.update(self.by_meter)
        self._timers(now)
        if len(self._dirty) <= DISPATCH_BATCH:
            dirty, self._dirty = self._dirty, set()
        else:
            # Thousands of new commands at once: a slice per pass, the rest at the next
            # (woken at once), so the event loop is never held for long.
            dirty = {self._dirty.pop() for _ in range(DISPATCH_BATCH)}
            self._wake.set()
        for serial in dirty:
            head = self._head(serial, now)
            if head is None or head.state == "running" or head.address is None:
                continue
            if now < head.not_before:
                heapq.heappush(self._later, (head.not_before, serial))
            elif not self._offer(head, workers):
                self._dirty.add(serial)  # a worker's channel is full: next pass

    def _head(self, serial: str, now: float) -> Command | None:
        """The meter's command that runs next: its first, passing over those scheduled
        for later (which are woken at their time); None while one runs."""
        later = math.inf
        for cid in self.by_meter.get(serial, ()):
            c = self.commands[cid]
            if c.state == "running":
                return c
            if c.scheduled_for > now:
                later = min(later, c.scheduled_for)
                continue
            return c
        if later < math.inf:
            heapq.heappush(self._later, (later, serial))
        return None

    def _timers(self, now: float) -> None:
        """Expires the commands whose time is up; wakes the retries that are due."""
        while self._expiry and self._expiry[0][0] <= now:
            _, cid = heapq.heappop(self._expiry)
            c = self.commands.get(cid)
            # A running command ends by its outcome (which expires it instead of a retry).
            if c is not None and c.state != "running":
                self._expire(c)
        if len(self._expiry) > 2 * len(self.commands) + 1024:
            self._expiry = [(c.expires_at, c.command_id) for c in self.commands.values()]
            heapq.heapify(self._expiry)
        while self._later and self._later[0][0] <= now:
            self._dirty.add(heapq.heappop(self._later)[1])

    def _offer(self, head: Command, workers: list[int]) -> bool:
        """Offers `head` to the workers that may run it; False if one could not take it."""
        targets = workers
        if head.address and workers:
            targets = [workers[zlib.crc32(head.serial.encode()) % len(workers)]]
        sent = True
        for w in targets:
            if w in head.offered:
                continue
            if self._send(w, {"t": "job", "job": head.job()}):
                head.offered.add(w)
            else:
                sent = False
        return sent

    def _expire(self, c: Command) -> None:
        why = "the meter did not connect in time"
        if c.address:
            why = "the meter could not be reached in time"
        self._finish(c, "expired", error=f"{why} (last attempt: {c.error})" if c.error else why)

    def claim(self, command_id: str, worker: int) -> str:
        """A worker has the meter and wants to run the command: ok, later or gone."""
        c = self.commands.get(command_id)
        if c is None or c.state in FINAL:
            return "gone"
        if c.state == "running":
            return "gone"
        if self._head(c.serial, time.time()) is not c:
            return "later"
        if c.node_id and self.running_per_node.get(c.node_id, 0) >= self.cfg.max_per_node:
            return "later"
        c.state = "running"
        c.worker = worker
        c.attempts += 1
        self.running_per_node[c.node_id] = self.running_per_node.get(c.node_id, 0) + 1
        self._record(c)
        for w in c.offered - {worker}:
            self._send(w, {"t": "job-cancel", "command": command_id})
        c.offered = {worker}
        return "ok"

    def outcome(self, command_id: str, msg: dict[str, Any]) -> None:
        c = self.commands.get(command_id)
        if c is None or c.state != "running":
            return
        self._release_node(c)
        if msg.get("status") == "done":
            result = msg.get("result") or {}
            verified = ""
            if c.kind in ("disconnect", "reconnect"):
                verified = str(result.get("control_state", ""))
            then = result.pop("then", None)
            if isinstance(then, dict):
                result["then_command"] = self._then(c, then)
            self.latency.append(float(msg.get("elapsed", 0.0)))
            del self.latency[:-10_000]
            self._finish(c, "done", result=result, verified=verified)
            return
        error = str(msg.get("error") or "failed")
        retryable = bool(msg.get("retry", True))
        if retryable and time.time() >= c.expires_at:
            c.error = error
            self._expire(c)
            return
        if retryable and c.attempts < self.cfg.attempts:
            delay = min(self.cfg.retry_delay * 2 ** (c.attempts - 1), 3600.0)
            c.state = "retry"
            c.error = error
            c.worker = -1
            c.not_before = time.time() + delay
            c.offered = set()
            self._record(c)
            c.state = "queued"
            self._dirty.add(c.serial)
            log.info(
                "command %s to %s failed (%s); retry in %.0f s",
                c.command_id,
                c.serial,
                error,
                delay,
            )
            return
        self._finish(c, "failed", error=error)

    def _then(self, c: Command, then: dict[str, Any]) -> str:
        """The next step a finished command asked for (a firmware activation at its
        time), for the same meter, in the same name; its id, or why it was not queued."""
        args = then.get("args") or {}
        wait = max(0.0, float(args.get("not_before") or 0) - time.time())
        try:
            follow = self.submit(
                c.serial,
                c.kind,
                args,
                requested_by=c.requested_by,
                reason=c.reason,
                node_id=c.node_id,
                priority=c.priority,
                expires_in=wait + self.cfg.expire,
                address=c.address,
                approved_by=c.approved_by,
            )
        except CommandError as e:
            log.error("command %s asked for a next step that was refused: %s", c.command_id, e)
            return f"refused: {e}"
        return follow.command_id

    def worker_lost(self, worker: int) -> None:
        """A worker went away: its running commands are queued again."""
        for c in list(self.commands.values()):
            c.offered.discard(worker)
            if c.state == "running" and c.worker == worker:
                self._release_node(c)
                c.state = "queued"
                c.worker = -1
                c.error = f"worker {worker} stopped while running it"
                self._record(c)
                heapq.heappush(self._expiry, (c.expires_at, c.command_id))
        # Offers to a worker that comes back under the same id are made again.
        self._dirty.update(self.by_meter)

    def _release_node(self, c: Command) -> None:
        n = self.running_per_node.get(c.node_id, 0)
        if n > 0:
            self.running_per_node[c.node_id] = n - 1

    def _finish(
        self,
        c: Command,
        state: str,
        *,
        result: dict[str, Any] | None = None,
        error: str = "",
        verified: str = "",
    ) -> None:
        c.state = state
        c.result = result
        c.error = error
        c.verified_state = verified
        self._record(c)
        if self.commands.pop(c.command_id, None) is not None:
            self.scheduled_waiting -= c.priority == SCHEDULED
            if c.priority == COMMAND:
                n = self.commands_waiting.pop(c.serial, 1) - 1
                if n > 0:
                    self.commands_waiting[c.serial] = n
        ids = self.by_meter.get(c.serial, [])
        if c.command_id in ids:
            ids.remove(c.command_id)
        if not ids:
            self.by_meter.pop(c.serial, None)
        else:
            self._dirty.add(c.serial)
        for w in c.offered:
            self._send(w, {"t": "job-cancel", "command": c.command_id})
        for fut in self.waiters.pop(c.command_id, []):
            if not fut.done():
                fut.set_result(c)

    def stats(self) -> dict[str, Any]:
        lat = sorted(self.latency)

        def pct(p: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(p * len(lat)))], 3) if lat else None

        return {
            "pending": len(self.commands),
            "running": sum(self.running_per_node.values()),
            "meters_waiting": len(self.by_meter),
            "transitions": dict(self.totals),
            "transitions_by_kind": [[k, s, n] for (k, s), n in sorted(self.by_kind.items())],
            "p50_s": pct(0.5),
            "p99_s": pct(0.99),
        }

    async def run(self) -> None:
        """Dispatches and writes the audit rows, forever."""
        loop = asyncio.get_running_loop()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.cfg.dispatch_interval)
            self._wake.clear()
            try:
                await self.resolve()
            except Exception as e:
                log.error("looking up meter addresses failed (will retry): %s", e)
            self.dispatch()
            rows = self.take_rows()
            try:
                await loop.run_in_executor(None, self.write, rows)
            except Exception as e:
                self._rows[:0] = rows
                log.error("writing command records failed (will retry): %s", e)
                await asyncio.sleep(1.0)
