"""The store process: the only process that opens ClickHouse.

It ingests the workers' spool (a thread, so inserts never block the event loop),
answers workers' meter lookups, tells them the spool backlog (they pause reading above
a threshold), keeps the command queue (``headend/commands.py``), the scheduler and the
billing policy, and serves the admin socket (``headend ctl``, ``headend sql``,
imports while the server runs: ``headend/server/admin_server.py``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import functools
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from headend import logs, notify
from headend.clock import Clock
from headend.commands import CommandQueue
from headend.config import Config, from_dict
from headend.errors import HeadendError
from headend.notify import Notifier
from headend.ownership import Ownership
from headend.people import Principal
from headend.scheduler import Scheduler
from headend.server import access, ipc
from headend.server.admin_server import AdminServer
from headend.server.fieldwork import FieldWork
from headend.server.keeper import BalanceKeeper
from headend.server.keychanges import KeyChanges
from headend.server.lookups import CounterScanner, Lookups
from headend.server.polled import PolledRows
from headend.server.recovery import Recovery
from headend.server.submit import Submitter
from headend.sqlguard import Guard
from headend.store import spool
from headend.store.db import Store, StoreError, migrate
from headend.store.ingest import COLUMNS, Backoff, Ingestor
from headend.waves import Waves

if TYPE_CHECKING:
    from headend.server.nodelink import NodeLink

log = logging.getLogger("headend.store")


# Seconds over which the workers' push and reading rates are taken (pushes come in
# bursts), and the ingest's stored rows per second.
RATE_WINDOW = 60.0
INGEST_RATE_WINDOW = 10.0


class StoreService:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.owner = Ownership.from_config(cfg)
        self.workers: dict[int, ipc.Channel] = {}
        self.worker_stats: dict[int, dict[str, Any]] = {}
        # A region's store sends everything up, the centre's sends master data down
        # (headend.link); a standalone node has no link.
        self.nodelink: NodeLink | None = None
        if cfg.node.role != "standalone":
            from headend.server.nodelink import NodeLink

            self.nodelink = NodeLink(self)
        self.link = self.nodelink.link if self.nodelink else None
        self.store = Store(
            cfg.dsn,
            cfg.store.database,
            tap=self.nodelink.tap if self.nodelink else None,
            cluster=cfg.store.cluster,
            min_free_bytes=cfg.store.min_free_bytes,
        )
        if self.nodelink is not None and self.nodelink.router is not None:
            self.nodelink.router.store = self.store
        # Peers' records go in through a client of their own without the tap: what
        # came from a peer is not sent back to it.
        self.peer_store = Store(
            cfg.dsn,
            cfg.store.database,
            cluster=cfg.store.cluster,
            min_free_bytes=cfg.store.min_free_bytes,
        )
        self.db = cfg.store.database
        # People: accounts, sessions, the audit trail; their SQL goes through the guard.
        self.people = access.people_for(cfg, self.store)
        self.guard = Guard(self.store, self.db)
        self.submitter = Submitter(self)
        self.clickhouse_http: tuple[Any, Any] | None = None
        self.ingestor = Ingestor(self.store, cfg.spool_dir, max_bytes=cfg.store.max_insert_bytes)
        # Each worker's reported totals over the last RATE_WINDOW seconds.
        self.rates: dict[int, collections.deque[tuple[float, dict[str, int]]]] = {}
        self.started = time.time()
        self.stopping = threading.Event()
        self.wake = threading.Event()
        # Monotonic time before which everything spooled is queryable (ingest thread).
        self.ingested_through = 0.0
        self.flush = threading.Event()  # someone waits for the spool: a round now
        self.ingest_state: dict[str, Any] = {"error": None, "failing_since": None, "last_ok": None}
        self.ingest_rate: dict[str, float] = {}
        self.backlog = 0
        self.stop = asyncio.Event()
        self.lookups = Lookups(self.store, self.db, CounterScanner(cfg.spool_dir))
        self.commands = CommandQueue(
            self.store,
            cfg.commands,
            self._send_worker,
            lambda: sorted(self.workers),
            owner=self.owner,
        )
        self.scheduler = Scheduler(self.commands, cfg.commands)
        self._policy_lock = asyncio.Lock()
        # Rows read from meters (profiles, registers), inserted in batches.
        self.polled_rows = PolledRows(self.store)
        # Meters identified on each worker's connections (its reports), and the
        # profile reads queued after workers went away holding them.
        self.recovery = Recovery(self)
        # Key rotations (and firmware upgrades) over a region's meters, in steps.
        self.waves = Waves(self)
        self.key_changes = KeyChanges(self)
        self.clock = Clock.from_config(cfg.clock)
        # Work orders for the service centres (headend.workorders).
        self.fieldwork = FieldWork(self)
        # Warnings to consumers through the notification gateway (headend.notify).
        self.notifier = Notifier(self.store, self.db, cfg.billing)
        # The admin socket's commands (headend ctl, headend sql, imports).
        self.admin = AdminServer(self)

    def invalidate(
        self, table: str, columns: list[str], rows: list[list[Any]], skip: int | None = None
    ) -> None:
        """Workers forget what they know of meters whose rows or keys changed; people's
        accounts that came from the centre are read again."""
        if table in ("users", "user_tokens") and rows:
            self.people.load()
            return
        if table not in ("meters", "meter_keys") or not rows:
            return
        i = columns.index("serial")
        serials = sorted({str(r[i]) for r in rows})
        for wid, ch in list(self.workers.items()):
            if wid == skip:
                continue
            with contextlib.suppress(ipc.ChannelClosed, ConnectionError):
                ch.send({"t": "invalidate", "serials": serials})

    # -- ingest thread ---------------------------------------------------------------

    def _ingest_loop(self, final: threading.Event) -> None:
        backoff = Backoff(self.cfg.store.retry_delay)
        last_error = None
        window_start, window_rows = time.monotonic(), 0
        while True:
            try:
                began = time.monotonic()
                stats = self.ingestor.run_once()
                if stats.complete:
                    self.ingested_through = began
                backoff.ok()
                if last_error is not None:
                    log.info("ClickHouse accepts inserts again")
                last_error = None
                self.ingest_state.update(error=None, failing_since=None, last_ok=time.time())
                window_rows += sum(stats.rows.values())
                now = time.monotonic()
                if now - window_start >= INGEST_RATE_WINDOW:
                    span = now - window_start
                    self.ingest_rate = {"rows_per_s": window_rows / span, "window_s": span}
                    window_start, window_rows = now, 0
                # At shutdown, stop once a round finds nothing more to ingest (a torn
                # tail left by a killed worker is never ingestible; it stays on disk).
                if final.is_set() and stats.bytes == 0:
                    return
                if stats.bytes >= self.cfg.store.max_insert_bytes // 2:
                    continue  # a backlog: the next round at once
                self._await_batch(final)
                continue
            except StoreError as e:
                delay = backoff.failed()
                if str(e) != last_error:
                    log.error(
                        "ClickHouse refused an insert (%s); the spool keeps everything; retrying", e
                    )
                    last_error = str(e)
                self.ingest_state.update(error=str(e), failing_since=backoff.failing_since)
                if final.is_set() and self.stopping.is_set():
                    return
            except Exception:
                log.exception("ingest round failed")
                delay = backoff.failed()
            self.wake.wait(delay)
            self.wake.clear()
            if self.stopping.is_set() and not final.is_set():
                return

    def _await_batch(self, final: threading.Event) -> None:
        """Waits for a worthwhile insert: enough spooled bytes, or the latency bound."""
        deadline = time.monotonic() + self.cfg.store.ingest_interval
        while time.monotonic() < deadline and not final.is_set() and not self.stopping.is_set():
            if spool.backlog(self.cfg.spool_dir) >= self.cfg.store.ingest_batch_bytes:
                return
            if self.flush.is_set():
                self.flush.clear()
                return
            self.wake.wait(0.05)
            self.wake.clear()

    # -- workers -------------------------------------------------------------------------

    async def _worker_msg(self, ch: ipc.Channel, msg: dict[str, Any]) -> dict[str, Any] | None:
        t = msg.get("t")
        if t == "hello":
            wid = int(msg["worker"])
            ch.info["worker"] = wid
            old = self.workers.get(wid)
            if old is not None and old is not ch:
                # The restarted worker spoke before its predecessor's channel was seen
                # closing: the predecessor is gone, and so are its meters' sockets.
                self.recovery.worker_gone(wid)
            self.workers[wid] = ch
            log.info("worker %d connected (pid %s)", wid, msg.get("pid"))
            ch.send({"t": "backlog", "bytes": self.backlog})
            # A (re)connected worker has forgotten what it was offered.
            self.commands.worker_lost(wid)
        elif t == "stats":
            wid = int(msg["worker"])
            self.worker_stats[wid] = msg
            self.recovery.track(wid, msg)
            msg["rates"], msg["rates_window_s"] = self._rates(wid, msg.get("totals", {}))
        elif t == "bye":
            # A clean exit: its meters' connections were closed, nothing to read back.
            self.recovery.clean_exit(int(msg["worker"]))
        elif t == "lookup":
            return await self.lookups.answer(msg)
        elif t == "claim":
            return {"claim": self.commands.claim(str(msg["command"]), int(msg["worker"]))}
        elif t == "job-result":
            await self._job_result(msg)
        elif t == "keys":
            return await self.key_changes.submit(msg, ch.info.get("worker"))
        return None

    def _rates(self, wid: int, totals: dict[str, int]) -> tuple[dict[str, float], float]:
        """A worker's rates over the last `RATE_WINDOW` seconds of its reports (pushes
        come in bursts: a second's rate of a fleet that pushes every quarter hour within
        a few minutes is mostly 0 or many times the mean), and the window they cover."""
        now = time.monotonic()
        hist = self.rates.setdefault(wid, collections.deque())
        if hist and any(totals.get(k, 0) < v for k, v in hist[-1][1].items()):
            hist.clear()  # the worker restarted: its counts began again
        hist.append((now, dict(totals)))
        while len(hist) > 2 and now - hist[1][0] >= RATE_WINDOW:
            hist.popleft()
        t0, first = hist[0]
        span = now - t0
        if span <= 0:
            return {}, 0.0
        return {k: max(0, v - first.get(k, 0)) / span for k, v in totals.items()}, span

    def _send_worker(self, wid: int, msg: dict[str, Any]) -> bool:
        ch = self.workers.get(wid)
        if ch is None:
            return False
        try:
            ch.send(msg)
        except (ipc.ChannelClosed, ConnectionError):
            return False
        return True

    async def _job_result(self, msg: dict[str, Any]) -> None:
        """A worker ran a command. Polled profile rows become readings (source poll)
        before the command is marked done, so a failed insert retries the read."""
        cid = str(msg.get("command"))
        c = self.commands.commands.get(cid)
        result = msg.get("result")
        if c is not None and msg.get("status") == "done" and isinstance(result, dict):
            rows = result.pop("rows", None)
            events = result.pop("events", None)
            loop = asyncio.get_running_loop()
            try:
                if rows:
                    result["readings"] = await self.polled_rows.add(c.serial, rows)
                if events is not None:
                    result["events_read"] = len(events)
                    # Events the meter pushed before the read may still be in a spool:
                    # compare with the table once they are in it.
                    await self.spool_ingested(time.monotonic())
                    result["events_new"] = await loop.run_in_executor(
                        None, self._insert_polled_events, c.serial, events
                    )
            except Exception as e:
                msg = {**msg, "status": "failed", "error": f"storing what was read failed: {e}"}
        self.commands.outcome(cid, msg)

    async def spool_ingested(self, since: float) -> None:
        """Waits until what was spooled before `since` (monotonic) is queryable, at most
        a few ingest intervals (the ingest may be behind: ClickHouse refusing)."""
        deadline = time.monotonic() + 4 * self.cfg.store.ingest_interval + 5.0
        self.flush.set()
        self.wake.set()
        while self.ingested_through < since:
            if time.monotonic() >= deadline:
                log.warning("the spool is not ingested yet; polled events are checked anyway")
                return
            await asyncio.sleep(0.02)

    def _insert_polled_events(self, serial: str, events: list[list[Any]]) -> int:
        """Events read from a meter's log ([ts, code, name, category]); those already
        stored (pushed, or read before) are skipped, so only what was missed is added."""
        if not events:
            return 0
        lo = min(int(e[0]) for e in events)
        hi = max(int(e[0]) for e in events)
        _, have = self.store.query(
            f"SELECT toInt64(ts), code FROM {self.db}.events WHERE meter = {{m:String}} "
            "AND ts >= toDateTime({a:Int64}) AND ts <= toDateTime({b:Int64})",
            {"m": serial, "a": lo, "b": hi},
        )
        seen = {(int(t), int(c)) for t, c in have}
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        out = []
        for ts, code, name, category in events:
            if (int(ts), int(code)) in seen:
                continue
            seen.add((int(ts), int(code)))
            when = dt.datetime.fromtimestamp(int(ts), dt.UTC)
            out.append([serial, when, int(code), name, category, "poll", "", "event log", now])
        if out:
            self.store.insert_rows("events", COLUMNS[spool.EVENTS], out)
        return len(out)

    async def _control_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        ch = ipc.Channel(reader, writer, self._worker_msg)
        await ch.run()
        wid = ch.info.get("worker")
        if wid is not None and self.workers.get(wid) is ch:
            del self.workers[wid]
            self.commands.worker_lost(wid)
            log.info("worker %d disconnected", wid)
            self.recovery.worker_gone(wid)

    async def _monitor_backlog(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self.backlog = await loop.run_in_executor(None, spool.backlog, self.cfg.spool_dir)
            for ch in list(self.workers.values()):
                with contextlib.suppress(ipc.ChannelClosed, ConnectionError):
                    ch.send({"t": "backlog", "bytes": self.backlog})
            await asyncio.sleep(0.5)

    async def schedule_once(self) -> dict[str, int]:
        due = await asyncio.get_running_loop().run_in_executor(
            None, self.scheduler.candidates, self.clock.now()
        )
        n = self.scheduler.queue_due(due)
        return {"backfill": n["profile"], "clock": n["clock"], "daily": n["daily"]}

    async def _schedule(self) -> None:
        """Scheduled reads: gap backfill, clock checks and daily reads, every
        `schedule_interval`; after a pass that filled its batch, again as soon as the
        scheduled commands waiting fall to half a batch (a fleet of millions is read in
        many batches a day, as fast as the meters answer)."""
        cfg = self.cfg.commands
        if cfg.schedule_interval <= 0:
            return
        while True:
            started = time.monotonic()
            while True:
                await asyncio.sleep(min(cfg.schedule_interval, 10.0))
                if self.scheduler.pass_due(time.monotonic() - started):
                    break
            try:
                queued = await self.schedule_once()
                if any(queued.values()):
                    log.info("scheduled: %s", queued)
            except Exception as e:
                log.error("scheduling reads failed (will retry): %s", e)

    async def policy_pass(self, act: bool) -> dict[str, Any]:
        """Evaluates the billing policy (queries in an executor); with `act`, queues its
        commands (here, on the loop that owns the queue) and records what it did.
        Passes run one at a time: two that overlap (the periodic one and one a billing
        import asks for) would both see no warning yet and warn twice."""
        async with self._policy_lock:
            return await self._policy_pass(act)

    async def _policy_pass(self, act: bool) -> dict[str, Any]:
        from headend import billing

        cfg = self.cfg
        loop = asyncio.get_running_loop()
        now = self.clock.now()
        queued = set(self.commands.by_meter)
        decisions = await loop.run_in_executor(
            None,
            functools.partial(
                billing.evaluate,
                self.store,
                cfg.billing,
                self.db,
                now,
                queued.__contains__,
                owner=self.owner,
            ),
        )
        out: dict[str, Any] = {
            "columns": billing.DECISION_COLUMNS,
            "rows": [d.row() for d in decisions],
        }
        if not act:
            return out
        ids: dict[str, str] = {}
        for d in decisions:
            if d.action in ("disconnect", "reconnect"):
                try:
                    c = self.commands.submit(
                        d.serial,
                        d.action,
                        requested_by="policy",
                        reason=f"account {d.account_id}: {d.reason}",
                        node_id=d.node_id,
                    )
                except HeadendError as e:  # the meter's queue is full: next pass
                    log.warning("policy: %s %s not queued: %s", d.action, d.serial, e)
                    continue
                ids[d.serial] = c.command_id
            elif d.action == "none" and (d.debt <= cfg.billing.debt_threshold or d.protected):
                # A disconnection still waiting for its meter is called off once the
                # account no longer warrants it (paid, or marked protected).
                for c in self.commands.pending(d.serial, "disconnect"):
                    if c.requested_by == "policy" and c.state != "running":
                        self.commands.cancel(c.command_id, f"account {d.account_id} settled")
        out["done"] = await loop.run_in_executor(
            None, billing.record, self.store, decisions, ids, now
        )
        warned = [d for d in decisions if d.action == "warn"]
        if warned and cfg.billing.notify_url:
            await loop.run_in_executor(None, notify.queue, self.store, cfg.billing, warned, now)
            self.notifier.wake.set()
        return out

    async def _policy(self) -> None:
        """The disconnection policy, every [billing] interval."""
        if not self.cfg.billing.policy or self.cfg.billing.interval <= 0:
            return
        while True:
            await asyncio.sleep(self.cfg.billing.interval)
            try:
                r = await self.policy_pass(True)
                if r.get("done"):
                    log.info("billing policy: %s", r["done"])
            except Exception as e:
                log.error("billing policy pass failed (will retry): %s", e)

    # -- admin ---------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        workers = []
        rejects: dict[str, int] = {}
        totals: dict[str, float] = {"sessions": 0, "pushes_per_s": 0.0, "readings_per_s": 0.0}
        sources = {"untrusted_connections": 0, "banned": 0}
        for wid, st in sorted(self.worker_stats.items()):
            rates = st.get("rates", {})
            connected = wid in self.workers
            workers.append(
                {
                    "worker": wid,
                    "pid": st.get("pid"),
                    "connected": connected,
                    "sessions": st.get("sessions", 0),
                    "meters_known": st.get("meters_known", 0),
                    "pushes_per_s": round(rates.get("pushes", 0.0), 1),
                    "readings_per_s": round(rates.get("readings", 0.0), 1),
                    "totals": st.get("totals", {}),
                    "paused": st.get("paused", False),
                    "spool_error": st.get("spool_error") if connected else None,
                    "held_bytes": st.get("held_bytes", 0),
                }
            )
            for k, n in st.get("rejects", {}).items():
                rejects[k] = rejects.get(k, 0) + n
            if connected:
                totals["sessions"] += st.get("sessions", 0)
                totals["pushes_per_s"] += rates.get("pushes", 0.0)
                totals["readings_per_s"] += rates.get("readings", 0.0)
                sources["untrusted_connections"] += st.get("untrusted", 0)
                sources["banned"] += st.get("sources_banned", 0)
        return {
            "uptime_s": round(time.time() - self.started, 1),
            "pid": os.getpid(),
            "dsn": self.cfg.dsn if self.store.embedded else self.cfg.dsn.split("@")[-1],
            "workers": workers,
            "sessions": int(totals["sessions"]),
            "pushes_per_s": round(totals["pushes_per_s"], 1),
            "readings_per_s": round(totals["readings_per_s"], 1),
            # The window those rates cover (the workers' received pushes and readings).
            "rates_window_s": round(
                max(
                    (st.get("rates_window_s", 0.0) for st in self.worker_stats.values()), default=0
                ),
                1,
            ),
            "spool_backlog_bytes": self.backlog,
            "waves": self.waves.list()[-20:],
            # Workers whose spool cannot be written (a full disk): they read nothing.
            "spool_full_workers": sum(1 for w in workers if w["spool_error"]),
            "ingest": {
                "rows_per_s": round(self.ingest_rate.get("rows_per_s", 0.0), 1),
                "rows_per_s_window_s": round(self.ingest_rate.get("window_s", 0.0), 1),
                "rows_total": dict(self.ingestor.totals.rows),
                **self.ingest_state,
            },
            "rejects": rejects,
            "sources": sources,
            "lookups": dict(self.lookups.stats),
            "commands": {
                **self.commands.stats(),
                "polled_readings": self.polled_rows.total,
                "recovery_reads": self.recovery.reads,
            },
            "node": self.owner.as_dict(),
            "link": self.link.status() if self.link is not None else None,
        }

    async def audit(
        self,
        who: Principal,
        action: str,
        target: str = "",
        outcome: str = "ok",
        detail: dict[str, Any] | None = None,
    ) -> None:
        """One audit row (an insert, in the executor)."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.people.audit, who, action, target, outcome, detail)

    async def wave_request(self, what: str, req: dict[str, Any], who: Principal) -> Any:
        """Waves for `who` (`headend.waves`): start, list, show, stop, resume."""
        if what == "list":
            return {"waves": self.waves.list()}
        if what == "show":
            return self.waves.show(str(req.get("id")))
        if what == "start":
            w = await self.waves.start(
                who,
                str(req.get("kind")),
                str(req.get("region")),
                dict(req.get("params") or {}),
                str(req.get("reason") or ""),
            )
            return w.public()
        if what == "stop":
            return (
                await self.waves.stop(who, str(req.get("id")), str(req.get("why") or ""))
            ).public()
        if what == "resume":
            return (await self.waves.resume(who, str(req.get("id")))).public()
        raise HeadendError(f"unknown wave request {what!r}")

    async def submit_command(self, req: dict[str, Any], who: Principal) -> dict[str, Any]:
        """A command for a meter, for `who` (`headend.server.submit`)."""
        return await self.submitter.command(req, who)

    async def submit_commands(
        self, items: list[Any], who: Principal, reason: str = ""
    ) -> dict[str, Any]:
        """A batch of commands, for `who` (`headend.server.submit`)."""
        return await self.submitter.batch(items, who, reason)

    def online_by_node(self) -> dict[str, int]:
        """Meters identified on the connected workers' connections, per grid node; at
        the centre, with those the connected regions last reported."""
        out = self.own_online()
        if self.link is not None and self.cfg.node.role == "centre":
            for node, n in self.link.peers_online().items():
                out[node] = out.get(node, 0) + n
        return out

    def own_online(self) -> dict[str, int]:
        """Meters identified on this node's own workers' connections, per grid node."""
        out: dict[str, int] = {}
        for wid, st in self.worker_stats.items():
            if wid in self.workers:
                for node, n in st.get("online", {}).items():
                    out[node] = out.get(node, 0) + n
        return out

    # -- life cycle ------------------------------------------------------------------

    async def _open_sockets(self) -> tuple[asyncio.Server, asyncio.Server]:
        cfg = self.cfg
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        for path in (cfg.control_socket, cfg.admin_socket):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        old = os.umask(0o077)  # both sockets 0600
        try:
            control = await asyncio.start_unix_server(
                self._control_client, str(cfg.control_socket), limit=ipc.MAX_MESSAGE
            )
            admin = await asyncio.start_unix_server(
                self.admin.client, str(cfg.admin_socket), limit=64 << 20
            )
        finally:
            os.umask(old)
        return control, admin

    def _services(self) -> list[Coroutine[Any, Any, None]]:
        """The store's background services. Every node runs the same ones; ownership
        (`headend.ownership`) keeps each to what the node owns; region and centre
        nodes add the link."""
        services = [
            self._monitor_backlog(),
            BalanceKeeper(self).run(),
            self.commands.run(),
            self.waves.run(),
            self.fieldwork.run(),
            self.notifier.run(),
            self._schedule(),
            self._policy(),
        ]
        if self.link is not None:
            services.append(self.link.run())
        if self.cfg.store.server_accounts:
            services.append(self._resync_accounts())
        return services

    async def _resync_accounts(self) -> None:
        """Hourly: tokens that expired meanwhile stop opening the ClickHouse server."""
        from headend.store.accounts import ServerAccounts

        accounts = ServerAccounts(self.store, self.db)
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(3600)
            users, tokens = list(self.people.users.values()), list(self.people.tokens.values())
            await loop.run_in_executor(None, accounts.sync_all, users, tokens)

    async def _http(self) -> tuple[Any, Any] | None:
        from headend.web import app as web_app
        from headend.web import chhttp

        try:
            served = await web_app.serve(self)
        except HeadendError as e:
            # Meters and ingest matter more than the page: go on without HTTP, loudly.
            log.error("%s; running without the HTTP API", e)
            return None
        try:
            tls = web_app.tls_context(self.cfg.http)
            self.clickhouse_http = await chhttp.serve(self.store, self.people, self.cfg.http, tls)
        except HeadendError as e:
            log.error("%s; running without ClickHouse's HTTP interface", e)
        return served

    def _load_people(self) -> None:
        self.people.load()
        self.submitter.approvals.load()
        if self.cfg.store.server_accounts:
            from headend.store.accounts import ServerAccounts

            accounts = ServerAccounts(self.store, self.db)
            accounts.sync_all(self.people.users.values(), self.people.tokens.values())
            self.people.on_change = accounts.sync
        access.adopt_legacy_token(self.cfg, self.people)

    async def _close_http(self, http: tuple[Any, Any] | None) -> None:
        if http is not None:
            with contextlib.suppress(Exception):
                await http[0].cleanup()
        if self.clickhouse_http is not None:
            with contextlib.suppress(Exception):
                await self.clickhouse_http[0].cleanup()
            self.clickhouse_http[1].close()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stop.set)
        loop.add_signal_handler(signal.SIGINT, self.stop.set)
        cfg = self.cfg
        await loop.run_in_executor(None, self.store.connect)
        await loop.run_in_executor(None, self.peer_store.connect)
        applied = await loop.run_in_executor(
            None,
            lambda: migrate(
                self.store,
                readings_ttl_days=cfg.store.readings_ttl_days,
                sessions_ttl_days=cfg.store.sessions_ttl_days,
            ),
        )
        if applied:
            log.info("schema migrated to version %d", max(applied))
        await loop.run_in_executor(None, self._load_people)
        self.ingestor.on_counters = None
        final = threading.Event()
        ingest = threading.Thread(
            target=self._ingest_loop, args=(final,), name="ingest", daemon=True
        )
        ingest.start()
        control, admin = await self._open_sockets()
        queued = await loop.run_in_executor(None, self.commands.load)
        if queued:
            log.info("%d commands still queued from before", queued)
        live = await loop.run_in_executor(None, self.waves.load)
        if live:
            log.info("%d waves resume where they stood", live)
        tasks = [loop.create_task(c) for c in self._services()]
        http = await self._http()
        if http is not None:
            tasks.append(loop.create_task(http[1].keep_fresh()))
        log.info("store ready (%s)", cfg.dsn if self.store.embedded else "ClickHouse server")
        await self.stop.wait()
        # Shutdown: the supervisor stopped the workers first; ingest what they left.
        log.info("store stopping: ingesting the remaining spool")
        for t in tasks:
            t.cancel()
        await self._close_http(http)
        with contextlib.suppress(Exception):
            await loop.run_in_executor(None, self.commands.write, self.commands.take_rows())
        control.close()
        final.set()
        self.wake.set()
        deadline = time.monotonic() + 120
        while ingest.is_alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        self.stopping.set()
        self.wake.set()
        left = spool.backlog(cfg.spool_dir)
        if left:
            log.warning("%d spool bytes not ingested; they stay on disk for the next start", left)
        admin.close()
        for path in (cfg.control_socket, cfg.admin_socket):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self.store.close()
        self.peer_store.close()
        log.info("store stopped")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    with open(args[0]) as f:
        cfg = from_dict(json.load(f))
    logs.setup("store", cfg.log.level, cfg.log.format)
    import uvloop

    from headend.server import tune_gc

    tune_gc()
    try:
        uvloop.run(StoreService(cfg).run())
    except HeadendError as e:
        log.error("store cannot start: %s", e)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
