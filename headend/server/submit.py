"""What people ask of meters, in the store process: commands and batches for a person,
and the four-eyes requests they become (`headend.approvals`) when a second person must
approve. The HTTP API and the admin socket both come here (`StoreService` delegates).

A person's command is checked where it is carried out: the operator role, the
meter's region within the person's regions, then four eyes (a batch with more than
`[approval] batch_size` disconnections, a disconnection of a protected account or one
of `[approval] categories`), and only then queued here or sent to the node that owns
the meter. Each command records who asked and, when it needed one, who approved.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING, Any

from headend import billing
from headend.approvals import Approvals, Request
from headend.commands import MAX_WAIT, Command, Place, expires_in_of, seconds, validate
from headend.errors import HeadendError
from headend.ownership import NotOwned
from headend.people import Principal
from headend.store import keyring

if TYPE_CHECKING:
    from headend.link.outbox import Envelope
    from headend.server.store import StoreService

# Commands queued between turns of the event loop in a large batch.
YIELD_EVERY = 500


# Commands that change a meter's security or software: an admin's, not an operator's.
ADMIN_KINDS = {"rekey": "renew meters' keys", "firmware": "upgrade meters' firmware"}


def _require_kind(who: Principal, kind: str) -> None:
    if kind in ADMIN_KINDS:
        who.require("admin", ADMIN_KINDS[kind])


class Submitter:
    def __init__(self, svc: StoreService) -> None:
        self.svc = svc
        self.cfg = svc.cfg
        self.approvals = Approvals(svc.people, expire=svc.cfg.approval.expire)

    # -- queueing ----------------------------------------------------------------------

    def queue(
        self,
        item: dict[str, Any],
        meter: Place,
        requested_by: str,
        reason: str = "",
        approved_by: str = "",
    ) -> tuple[Command, Envelope | None]:
        """Queues one command item ({serial, kind, args, reason, expires_in}) for a
        meter this node owns; at the centre, a meter a region owns gets its command
        sent down to that region (the envelope to send, with its ``sent`` record);
        anything else is refused naming the owner."""
        svc = self.svc
        serial = str(item["serial"])
        expires_in = expires_in_of(item, self.cfg.commands)
        if svc.owner.owns(meter.region):
            c = svc.commands.submit(
                serial,
                str(item["kind"]),
                item.get("args") or {},
                requested_by=requested_by,
                reason=str(item.get("reason") or reason),
                node_id=meter.node_id,
                address=meter.address,
                expires_in=expires_in,
                approved_by=approved_by,
            )
            return c, None
        dest = svc.owner.owner_of(meter.region)
        link = svc.nodelink
        if link is None or link.router is None or dest in (None, svc.owner.node):
            raise NotOwned(svc.owner.why_not(f"meter {serial}", meter.region))
        from headend.link.outbox import Envelope

        data: dict[str, Any] = {
            "command_id": uuid.uuid4().hex[:16],
            "serial": serial,
            "kind": str(item["kind"]),
            "args": item.get("args") or {},
            "requested_by": requested_by,
            "approved_by": approved_by,
            "reason": str(item.get("reason") or reason),
            "expires_in": expires_in if expires_in is not None else self.cfg.commands.expire,
        }
        c = svc.commands.record_only(
            data["command_id"],
            serial,
            data["kind"],
            data,
            state="sent",
            error=f"sent to {dest}",
            expires_in=expires_in,
            node_id=meter.node_id,
        )
        return c, Envelope("command", dest, data=data)

    async def _needs_second_person(self, items: list[dict[str, Any]]) -> dict[str, str]:
        """Why each disconnection among `items` needs four eyes (by serial)."""
        serials = sorted({str(i["serial"]) for i in items if i.get("kind") == "disconnect"})
        if not serials:
            return {}
        loop = asyncio.get_running_loop()
        return dict(
            await loop.run_in_executor(
                None,
                billing.second_person_needed,
                self.svc.store,
                self.svc.db,
                serials,
                self.cfg.approval.categories,
            )
        )

    # -- one command -------------------------------------------------------------------

    async def command(self, req: dict[str, Any], who: Principal) -> dict[str, Any]:
        """Queues a command for a meter for `who`, who needs the operator role and the
        meter's region, and waits up to `wait` seconds for its outcome; one that needs
        a second person becomes a request instead. Queued, asked or refused, it leaves
        an audit row."""
        svc = self.svc
        loop = asyncio.get_running_loop()
        serial = str(req["serial"])
        what = {"kind": str(req.get("kind")), "args": req.get("args") or {}}
        try:
            who.require("command", "send commands to meters")
            _require_kind(who, str(req.get("kind")))
            validate(str(req.get("kind")), req.get("args") or {})
            expires_in_of(req, self.cfg.commands)
            wait = seconds(req.get("wait", self.cfg.commands.wait), "wait", 0.0, MAX_WAIT)
            meter = await loop.run_in_executor(None, svc.commands.node_of, serial)
            who.require_region(meter.region, f"meter {serial}")
            why = await self._needs_second_person([{"serial": serial, "kind": what["kind"]}])
            if why:
                r = await self.ask_commands(who, [req], str(req.get("reason") or ""), why, [meter])
                return {
                    "state": "awaiting_approval",
                    "approval_id": r.approval_id,
                    "why": r.why,
                    "serial": serial,
                    "kind": what["kind"],
                }
            c, env = self.queue(req, meter, who.name)
        except HeadendError as e:
            await svc.audit(who, "command", serial, "refused", {**what, "why": str(e)})
            raise
        # Watched from now: the audit row is written meanwhile, and a quick meter
        # may answer before it is.
        done = svc.commands.watch(c.command_id) if env is None and wait > 0 else None
        if env is None:
            svc.commands.dispatch()
        await svc.audit(
            who,
            "command",
            serial,
            detail={**what, "command_id": c.command_id, "reason": str(req.get("reason") or "")},
        )
        if env is not None:
            assert svc.nodelink is not None
            return await svc.nodelink.send_commands([(c, env)], wait)
        if done is not None:
            c = await svc.commands.wait(c.command_id, wait, done)
        return c.public()

    # -- a batch -----------------------------------------------------------------------

    async def batch(
        self, items: list[Any], who: Principal, reason: str = "", approved_by: str = ""
    ) -> dict[str, Any]:
        """Queues many commands for `who` with one meter lookup; each bad item (a
        meter outside `who`'s regions too) is rejected with its index and reason, the
        good ones are queued (no waiting), or, when the batch needs four eyes, they
        become one request. The batch leaves one audit row."""
        svc = self.svc
        who.require("command", "send commands to meters")
        serials = sorted({str(i.get("serial")) for i in items if isinstance(i, dict)})
        loop = asyncio.get_running_loop()
        nodes = await loop.run_in_executor(None, svc.commands.nodes_of, serials)
        good, rejected = await self._check_items(items, nodes, who)
        if not approved_by and good:
            why = await self._needs_second_person([it for _, it, _ in good])
            cuts = sum(1 for _, it, _ in good if it["kind"] == "disconnect")
            if cuts > self.cfg.approval.batch_size:
                why = {"": f"{cuts} disconnections (over {self.cfg.approval.batch_size})", **why}
            if why:
                r = await self.ask_commands(
                    who, [it for _, it, _ in good], reason, why, [m for _, _, m in good]
                )
                return {"queued": [], "rejected": rejected, "approval": r.public()}
        queued: list[dict[str, Any]] = []
        sent: list[tuple[Command, Envelope]] = []
        for n, (index, it, meter) in enumerate(good):
            if n and n % YIELD_EVERY == 0:
                # A batch of many thousands: let ingest, lookups and /healthz run.
                await asyncio.sleep(0)
            try:
                c, env = self.queue(it, meter, who.name, reason, approved_by)
            except (HeadendError, TypeError, ValueError) as e:
                rejected.append({"index": index, "reason": str(e)})
                continue
            if env is not None:
                sent.append((c, env))
            queued.append(c.public())
        if sent:
            assert svc.nodelink is not None
            await svc.nodelink.send_commands(sent, 0.0)
        svc.commands.dispatch()
        kinds: dict[str, int] = {}
        for q in queued:
            kinds[q["kind"]] = kinds.get(q["kind"], 0) + 1
        await svc.audit(
            who,
            "batch",
            f"{len(queued)} commands",
            "ok" if queued else "refused",
            {
                "kinds": kinds,
                "reason": reason,
                "approved_by": approved_by,
                "command_ids": [q["command_id"] for q in queued][:10_000],
                "rejected": len(rejected),
            },
        )
        return {"queued": queued, "rejected": rejected}

    async def _check_items(
        self, items: list[Any], nodes: dict[str, Place], who: Principal
    ) -> tuple[list[tuple[int, dict[str, Any], Place]], list[dict[str, Any]]]:
        """A batch's items that can be queued for `who` (with their index and meter),
        and the others with their index and why."""
        good: list[tuple[int, dict[str, Any], Place]] = []
        rejected: list[dict[str, Any]] = []
        for index, it in enumerate(items):
            if index and index % YIELD_EVERY == 0:
                await asyncio.sleep(0)
            try:
                if not isinstance(it, dict) or "serial" not in it or "kind" not in it:
                    raise HeadendError("expected an object with serial and kind")
                meter = nodes.get(str(it["serial"]))
                if meter is None:
                    raise HeadendError(f"unknown meter {str(it['serial'])!r}")
                who.require_region(meter.region, f"meter {it['serial']}")
                _require_kind(who, str(it["kind"]))
                validate(str(it["kind"]), it.get("args") or {})
                expires_in_of(it, self.cfg.commands)
                good.append((index, it, meter))
            except (HeadendError, TypeError, ValueError) as e:
                rejected.append({"index": index, "reason": str(e)})
        return good, rejected

    # -- four eyes ---------------------------------------------------------------------

    async def ask_commands(
        self,
        who: Principal,
        items: list[dict[str, Any]],
        reason: str,
        why: dict[str, str],
        meters: list[Place],
    ) -> Request:
        loop = asyncio.get_running_loop()
        reasons = sorted(set(why.values()))
        kinds: dict[str, int] = {}
        for it in items:
            kinds[str(it["kind"])] = kinds.get(str(it["kind"]), 0) + 1
        summary = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
        if len(items) == 1:
            summary = f"{items[0]['kind']} {items[0]['serial']}"
        keep = ("serial", "kind", "args", "reason", "expires_in")
        payload = {
            "items": [{k: it[k] for k in keep if k in it} for it in items],
            "reason": reason,
        }
        return await loop.run_in_executor(
            None,
            lambda: self.approvals.ask(
                who,
                "commands",
                payload,
                why="; ".join(reasons[:5])
                + (f" (and {len(reasons) - 5} more)" if len(reasons) > 5 else ""),
                summary=summary,
                regions={m.region for m in meters},
            ),
        )

    async def ask_keys(self, who: Principal, serial: str, keys: dict[str, str]) -> Request:
        """A change of a meter's keys, for a second admin: wrapped under the master key
        now (the request never holds them in clear), stored when approved."""
        from headend.keys import load_master_key, wrap

        svc = self.svc
        loop = asyncio.get_running_loop()
        who.require("admin", "change a meter's keys")
        meter = await loop.run_in_executor(None, svc.commands.node_of, serial)
        who.require_region(meter.region, f"meter {serial}")
        raw: dict[str, bytes] = {}
        for name, length in (("ek", 16), ("ak", 16)):
            try:
                raw[name] = bytes.fromhex(str(keys.get(name) or ""))
            except ValueError:
                raise HeadendError(f"{name} is not hex") from None
            if len(raw[name]) != length:
                raise HeadendError(f"{name} must be {length} bytes ({2 * length} hex digits)")
        master = load_master_key(self.cfg)
        _, rows = await loop.run_in_executor(
            None,
            svc.store.query,
            f"SELECT argMax(system_title, updated_at) FROM {svc.db}.meters WHERE serial = %(s)s",
            {"s": serial},
        )
        title = str(rows[0][0]) if rows else ""
        row = [
            serial,
            title,
            wrap(master, raw["ek"], "ek", serial).hex(),
            wrap(master, raw["ak"], "ak", serial).hex(),
            "",
            master.fingerprint,
        ]
        raw.clear()
        return await loop.run_in_executor(
            None,
            lambda: self.approvals.ask(
                who,
                "keys",
                {"serial": serial, "row": row},
                why="a change of a meter's keys",
                summary=f"new keys for {serial}",
                regions={meter.region},
            ),
        )

    async def decide(
        self, who: Principal, approval_id: str, approve: bool, note: str = ""
    ) -> dict[str, Any]:
        """`who` approves (and so runs) or rejects a request."""
        loop = asyncio.get_running_loop()
        r = await loop.run_in_executor(None, self.approvals.decide, who, approval_id, approve, note)
        out: dict[str, Any] = {"approval": r.public()}
        if approve:
            out["result"] = await self._run(r, who)
        return out

    async def _run(self, r: Request, approver: Principal) -> dict[str, Any]:
        svc = self.svc
        if r.kind == "commands":
            return await self.batch(
                list(r.payload.get("items") or []),
                r.requester(),
                str(r.payload.get("reason") or ""),
                approved_by=approver.name,
            )
        serial = str(r.payload["serial"])
        _, title, ek, ak, _, fingerprint = r.payload["row"]
        loop = asyncio.get_running_loop()
        row = await loop.run_in_executor(
            None, keyring.replace, svc.store, serial, title, (ek, ak), fingerprint
        )
        svc.invalidate("meter_keys", keyring.COLUMNS, [row])
        await svc.audit(
            r.requester(),
            "keys.change",
            serial,
            detail={"approval_id": r.approval_id, "approved_by": approver.name},
        )
        return {"serial": serial, "keys": "stored"}
