"""A region's or the centre's side of the link, in the store process.

`NodeLink` is the service a region or centre node adds to its store process
(a standalone node has none): it makes the tap the node's store writes through
(`headend.link.taps`), runs the link (`headend.link.service.LinkService`), and applies
the peer's records to this node: at the centre, what the regions stored; at a region,
the master data, commands and cancellations the centre sends. At the centre it also
sends commands for regions' meters down (`send_commands`), hands regions over
(`handover`), and keeps the hours whose regional balances arrived late for the
centre's own balances above them (`take_late_balances`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

from headend.commands import Command
from headend.errors import HeadendError
from headend.link import taps
from headend.link.down import DownRouter
from headend.link.keys import NodeSecrets
from headend.link.outbox import Envelope
from headend.link.service import LinkService
from headend.ownership import NATIONAL
from headend.store import spool
from headend.store.db import Tap
from headend.store.ingest import COLUMNS

if TYPE_CHECKING:
    from headend.server.store import StoreService

log = logging.getLogger("headend.store")


class NodeLink:
    def __init__(self, svc: StoreService) -> None:
        cfg = svc.cfg
        self.svc = svc
        self.cfg = cfg
        self.secrets = NodeSecrets.load(cfg, create=True)
        t = taps(cfg, svc.owner, "store")
        self.tap: Tap | None = t.tap
        self.router: DownRouter | None = t.tap if isinstance(t.tap, DownRouter) else None
        self.link = LinkService(cfg, self.secrets, self.apply, svc.owner, online=svc.own_online)
        # Commands sent down to a region, waiting for their outcome to come back up.
        self.forwarded: dict[str, list[asyncio.Future[dict[str, Any]]]] = {}
        # Hours of balances of other owners that arrived late (the centre recomputes
        # its own nodes above them).
        self.late_balance_hours: set[int] = set()

    async def apply(self, origin: str, env: Envelope) -> None:
        """A peer's record: at the centre, what a region stored; at a region, master
        data, commands and cancellations from the centre."""
        from headend.link.down import apply_insert
        from headend.link.outbox import DOWN_TABLES, UP_TABLES
        from headend.link.service import BadRecord

        loop = asyncio.get_running_loop()
        if self.cfg.node.role == "centre":
            if env.kind not in ("binary", "rows", "delete"):
                raise BadRecord(f"a region sends no {env.kind} records")
            if env.table == "meter_keys":
                await loop.run_in_executor(None, self._keys_from_region, origin, env)
                return
            await loop.run_in_executor(
                None, apply_insert, self.svc.peer_store, origin, env, UP_TABLES
            )
            if env.table == "commands" and env.kind == "rows":
                self._forwarded_outcomes(env)
            if env.table == "balances" and isinstance(env.data, bytes):
                self._late_balances(env)
            return
        if env.kind == "binary" and env.table == "readings":
            # The last samples of a region handed to this node (see `handover`).
            await loop.run_in_executor(
                None, apply_insert, self.svc.peer_store, origin, env, frozenset({"readings"})
            )
            return
        if env.kind == "rows" and env.table in DOWN_TABLES:
            await loop.run_in_executor(None, self._apply_master, origin, env)
            if env.table == "billing_accounts" and self.cfg.billing.policy:
                await self._policy_soon()
            return
        if env.kind == "command":
            await self._command_from_centre(origin, env.data)
            return
        if env.kind == "cancel":
            with contextlib.suppress(HeadendError, KeyError):
                self.svc.commands.cancel(str(env.data["command_id"]), str(env.data.get("why", "")))
            return
        raise BadRecord(f"a centre sends no {env.kind} records for {env.table or 'nothing'}")

    def _keys_from_region(self, origin: str, env: Envelope) -> None:
        """A region changed meter keys (a rotation): kept here under the centre's master
        key and passed on to the region's other node (its standby), never back."""
        from headend.keys import load_master_key
        from headend.link.down import apply_insert, rewrap_keys
        from headend.link.service import BadRecord

        if env.kind != "rows" or not env.columns:
            raise BadRecord("meter keys come up as rows")
        env.data = rewrap_keys(
            env.columns, env.data, self.secrets.link_key(origin), load_master_key(self.cfg)
        )
        apply_insert(self.svc.peer_store, origin, env, frozenset({"meter_keys"}))
        if self.router is not None:
            self.router.rows("meter_keys", env.columns, env.data, env.token, skip=origin)

    def _apply_master(self, origin: str, env: Envelope) -> None:
        from headend.keys import load_master_key
        from headend.link.down import apply_insert, keep_changed_keys, rewrap_keys
        from headend.link.outbox import DOWN_TABLES

        if env.table == "meter_keys":
            env.data = rewrap_keys(
                env.columns, env.data, self.secrets.link_key(origin), load_master_key(self.cfg)
            )
            env.data = keep_changed_keys(self.svc.peer_store, self.svc.db, env.columns, env.data)
            if not env.data:
                return
        apply_insert(self.svc.peer_store, origin, env, DOWN_TABLES)
        self.svc.invalidate(env.table, env.columns, env.data)

    async def handover(self, region: str, to: str) -> dict[str, Any]:
        """The centre gives `region` to node `to` (its standby when its own data centre
        is lost, back to its owner when it returns). Every node learns it from the
        centre's heartbeats and acts accordingly. The new owner first gets the region's
        readings the centre holds for the hours it will recompute, and the last sample
        of each series before them: so it writes no worse consumption or balances over
        its predecessor's, and what the lost node took with it shows as a gap that its
        VEE estimates and its scheduler reads back from the meters' load profiles. An
        owner that returns also gets everything received for the region since it fell
        silent (what its standby stored meanwhile)."""
        if self.cfg.node.role != "centre" or self.link is None:
            raise HeadendError("regions are handed over at the centre")
        owners = dict(self.svc.owner.owners)
        if region not in owners or region == NATIONAL:
            known = ", ".join(sorted(r for r in owners if r != NATIONAL))
            raise HeadendError(f"unknown region {region!r}: one of {known}")
        nodes = {self.cfg.node.name, *(p.name for p in self.cfg.peers)}
        if to not in nodes:
            raise HeadendError(f"{to!r} is neither this node nor one of its peers")
        before = owners[region]
        owners[region] = to
        await self.link.adopt(owners)
        # When the node giving the region up fell silent (now, if it is alive): what
        # was received after that is the new owner's own already, and what a
        # returning owner missed since it fell silent.
        peer = self.link.peers.get(before)
        silent = peer.last_hb + 5 if peer is not None and peer.last_hb else time.time()
        handovers = self._handovers()
        back = handovers.get(region, {})
        missed = float(back["silent"]) if back.get("from") == to else None
        handovers[region] = {"from": before, "to": to, "silent": silent, "at": time.time()}
        await asyncio.get_running_loop().run_in_executor(
            None, spool.durable_write, self._handovers_path(), json.dumps(handovers)
        )
        sent = 0
        if to not in (before, self.cfg.node.name):
            sent = await asyncio.get_running_loop().run_in_executor(
                None, self._handover_readings, region, to, int(silent), missed
            )
        log.warning(
            "region %s handed over from %s to %s (%d readings sent)", region, before, to, sent
        )
        return {"region": region, "from": before, "to": to, "readings": sent}

    def _handovers_path(self) -> Any:
        return self.cfg.link_dir / "handovers.json"

    def _handovers(self) -> dict[str, dict[str, Any]]:
        """Each region's last handover: from whom, to whom, when the giver fell silent."""
        try:
            d = json.loads(self._handovers_path().read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return d if isinstance(d, dict) else {}

    def _handover_readings(
        self, region: str, to: str, until: int, missed: float | None = None
    ) -> int:
        """Sends `to` what it needs to take over `region`'s consumption and balances
        without writing worse figures over its owner's: the region's readings of the
        hours its recent window recomputes (and the margin before them), and the last
        sample of each series before that (within `late_days`); of those received before
        `until` (when the old owner was last heard from). An owner that returns
        (`missed`: when it fell silent) also gets every reading received since. In
        slices of meters; returns the readings sent."""
        from headend.balance import NEAR
        from headend.link.outbox import Envelope

        assert self.router is not None
        _, rows = self.svc.store.query(
            f"SELECT serial FROM {self.svc.db}.meters FINAL WHERE region = %(r)s ORDER BY serial",
            {"r": region},
        )
        serials = [r[0] for r in rows]
        now = int(self.svc.clock.now())
        recent = now - self.cfg.store.balance_window - NEAR - 3600
        since = now - max(1, self.cfg.store.late_days) * 86_400
        cols = COLUMNS[spool.READINGS]
        picked = ", ".join(cols)
        sent = 0
        for i in range(0, len(serials), 20_000):
            params = {
                "m": serials[i : i + 20_000],
                "since": since,
                "recent": recent,
                "until": until,
                "missed": int(missed if missed is not None else until),
            }
            for sql in (
                f"SELECT {picked} FROM {self.svc.db}.readings WHERE meter IN %(m)s "
                "AND ((ts >= toDateTime(%(recent)s) AND received_at < toDateTime(%(until)s)) "
                "OR received_at >= toDateTime(%(missed)s))",
                "SELECT meter, obis, t, v, u, st, src, q, ra FROM (SELECT meter, obis, "
                "max(ts) AS t, argMax(value, ts) AS v, argMax(unit, ts) AS u, "
                "argMax(status, ts) AS st, argMax(source, ts) AS src, "
                "argMax(quality, ts) AS q, argMax(received_at, ts) AS ra "
                f"FROM {self.svc.db}.readings WHERE meter IN %(m)s AND ts >= toDateTime(%(since)s) "
                "AND ts < toDateTime(%(recent)s) AND received_at < toDateTime(%(until)s) "
                "GROUP BY meter, obis)",
            ):
                _, n = self.svc.store.query(f"SELECT count() FROM ({sql})", params)
                if not n[0][0]:
                    continue
                data = self.svc.store.raw_query(sql, params, fmt="RowBinary")
                token = f"{self.cfg.node.name}/handover:{region}:{to}:{uuid.uuid4().hex}"
                env = Envelope(
                    "binary", to, "readings", cols, token, rows=int(n[0][0]), fmt="RowBinary"
                )
                env.data = data
                self.router.outbox.append([env])
                sent += int(n[0][0])
        return sent

    async def _policy_soon(self) -> None:
        """A policy pass after accounts arrived (payments take effect now)."""
        try:
            await self.svc.policy_pass(True)
        except Exception as e:
            log.error("billing policy pass after the centre's accounts failed: %s", e)

    async def _command_from_centre(self, origin: str, data: Any) -> None:
        """Queues a command the centre sent down, under the centre's id (once: a
        record applied again finds it known); a meter this node does not own fails the
        command with the owner named, which reaches the centre like any outcome."""
        from headend.link.service import BadRecord

        if not isinstance(data, dict) or "command_id" not in data or "serial" not in data:
            raise BadRecord("a command without command_id and serial")
        cid, serial = str(data["command_id"]), str(data["serial"])
        loop = asyncio.get_running_loop()
        if cid in self.svc.commands.commands or await loop.run_in_executor(
            None, self._command_known, serial, cid
        ):
            return
        try:
            place = await loop.run_in_executor(None, self.svc.commands.node_of, serial)
            self.svc.owner.check(f"meter {serial}", place.region)
            c = self.svc.commands.submit(
                serial,
                str(data.get("kind")),
                data.get("args") or {},
                requested_by=str(data.get("requested_by") or origin),
                approved_by=str(data.get("approved_by") or ""),
                reason=str(data.get("reason") or ""),
                node_id=place.node_id,
                address=place.address,
                expires_in=float(data.get("expires_in") or self.cfg.commands.expire),
                command_id=cid,
            )
            self.svc.commands.dispatch()
            log.info("command %s from %s queued: %s %s", cid, origin, c.kind, serial)
        except HeadendError as e:
            self.svc.commands.refuse(cid, serial, str(data.get("kind")), data, str(e))

    def _command_known(self, serial: str, cid: str) -> bool:
        _, rows = self.svc.store.query(
            f"SELECT count() FROM {self.svc.db}.commands "
            "WHERE serial = %(s)s AND command_id = %(c)s",
            {"s": serial, "c": cid},
        )
        return bool(rows and rows[0][0])

    def _forwarded_outcomes(self, env: Envelope) -> None:
        """Command transitions that came up: wake whoever waits for a forwarded one."""
        if not self.forwarded:
            return
        cols = env.columns
        i, st = cols.index("command_id"), cols.index("state")
        for row in env.data:
            cid = str(row[i])
            if cid in self.forwarded and str(row[st]) in ("done", "failed", "expired", "cancelled"):
                public = dict(zip(cols, row, strict=True))
                for fut in self.forwarded.pop(cid):
                    if not fut.done():
                        fut.set_result(public)

    def _late_balances(self, env: Envelope) -> None:
        """A region's balances for hours before the centre's recent window: its own
        nodes above them are recomputed by the next late-data pass."""
        from headend.balance import token_hours

        span = token_hours(env.token)
        if span is not None and span[1] - span[0] <= 400 * 86_400:
            self.late_balance_hours.update(range(span[0], span[1], 3600))

    def take_late_balances(self, before: int, oldest: int, now: float) -> None:
        """The centre's nodes above hours whose regional balances arrived late (after a
        cut link): their balances again, from the regions' (no consumption of theirs
        is derived here)."""
        from headend import balance

        hours = sorted(h for h in self.late_balance_hours if oldest <= h < before)
        self.late_balance_hours.difference_update(hours)
        self.late_balance_hours = {h for h in self.late_balance_hours if h >= oldest}
        run: list[int] = []
        for h in [*hours, None]:
            if run and (h is None or h != run[-1] + 3600):
                balance.recompute(
                    self.svc.store, run[0], run[-1] + 3600, now=now, meters=[], owner=self.svc.owner
                )
                run = []
            if h is not None:
                run.append(h)

    async def send_commands(
        self, sent: list[tuple[Command, Envelope]], wait: float
    ) -> dict[str, Any]:
        """Sends commands down (one outbox append for all); waits up to `wait` seconds
        for the outcome of the first when asked to."""
        assert self.router is not None
        router = self.router
        first = sent[0][0]
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        if wait > 0:
            self.forwarded.setdefault(first.command_id, []).append(fut)
        await asyncio.get_running_loop().run_in_executor(
            None, router.outbox.append, [env for _, env in sent]
        )
        if wait > 0:
            try:
                outcome = await asyncio.wait_for(fut, wait)
            except TimeoutError:
                pass
            else:
                public = first.public()
                public.update(
                    state=outcome.get("state", first.state),
                    result=json.loads(outcome.get("result") or "null"),
                    error=outcome.get("error", ""),
                    verified_state=outcome.get("verified_state", ""),
                    attempts=outcome.get("attempts", 0),
                )
                return public
            finally:
                waiters = self.forwarded.get(first.command_id, [])
                if fut in waiters:
                    waiters.remove(fut)
                if not waiters:
                    self.forwarded.pop(first.command_id, None)
        return first.public()
