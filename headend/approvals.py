"""Four eyes (DESIGN.md section 10): what one person asks and a second approves.

A batch of disconnections over `[approval] batch_size`, the disconnection of a
protected account or one of `[approval] categories`, and a change of a meter's keys
do not run when asked: they become a request in ``approvals``, and run when another
person, with the right role and every region the request touches, approves it. Both
names are kept: in the audit trail and, for commands, in ``commands.approved_by``.
A request lapses after `[approval] expire` seconds. The billing policy's own actions
are not requests: they stay automatic within the policy's rules and limits.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from headend.errors import HeadendError
from headend.people import AccessError, People, Principal

KINDS = {"commands": "command", "keys": "admin"}
"""Each kind of request and the permission its second person needs."""

COLUMNS = [
    "approval_id",
    "kind",
    "requested_by",
    "requester_roles",
    "requester_regions",
    "regions",
    "why",
    "summary",
    "payload",
    "requested_at",
    "expires_at",
    "state",
    "decided_by",
    "decided_at",
    "note",
    "updated_at",
]


class ApprovalError(HeadendError):
    """No such request, or it is no longer pending."""


def _utc(t: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(t, dt.UTC)


def _ts(v: Any) -> float:
    if isinstance(v, dt.datetime):
        aware: dt.datetime = v if v.tzinfo is not None else v.replace(tzinfo=dt.UTC)
        return aware.timestamp()
    return float(v) if v else 0.0


@dataclass
class Request:
    approval_id: str
    kind: str
    requested_by: str
    requester_roles: tuple[str, ...]
    requester_regions: tuple[str, ...]
    regions: tuple[str, ...]  # what the request touches ('' above the regions)
    why: str
    summary: str
    payload: dict[str, Any]
    requested_at: float
    expires_at: float
    state: str = "pending"
    decided_by: str = ""
    decided_at: float = 0.0
    note: str = ""
    updated_at: float = 0.0
    source: str = field(default="", compare=False)

    def requester(self) -> Principal:
        """The person who asked, as they were when they asked (the request runs with
        their rights, checked then, and the approver's on top)."""
        return Principal(
            self.requested_by,
            frozenset(self.requester_roles),
            frozenset(self.requester_regions),
            f"approval:{self.approval_id}",
            "approval",
        )

    def row(self) -> list[Any]:
        return [
            self.approval_id,
            self.kind,
            self.requested_by,
            list(self.requester_roles),
            list(self.requester_regions),
            list(self.regions),
            self.why,
            self.summary,
            json.dumps(self.payload, sort_keys=True),
            _utc(self.requested_at),
            _utc(self.expires_at),
            self.state,
            self.decided_by,
            _utc(self.decided_at),
            self.note,
            _utc(self.updated_at),
        ]

    def public(self) -> dict[str, Any]:
        """What people see of a request (a key change's wrapped keys stay inside)."""
        out = {
            "approval_id": self.approval_id,
            "kind": self.kind,
            "requested_by": self.requested_by,
            "regions": list(self.regions),
            "why": self.why,
            "summary": self.summary,
            "requested_at": self.requested_at,
            "expires_at": self.expires_at,
            "state": self.state,
            "decided_by": self.decided_by or None,
            "decided_at": self.decided_at or None,
            "note": self.note,
        }
        if self.kind == "commands":
            out["commands"] = self.payload.get("items", [])
        elif self.kind == "keys":
            out["serial"] = self.payload.get("serial")
        return out


class Approvals:
    """The requests of one node (kept in ``approvals``; pending ones also here)."""

    def __init__(self, people: People, *, expire: float) -> None:
        self.people = people
        self.store = people.store
        self.db = people.db
        self.expire = expire
        self.requests: dict[str, Request] = {}
        self._lock = threading.RLock()

    def load(self) -> Approvals:
        cols, rows = self.store.query(
            f"SELECT {', '.join(COLUMNS)} FROM {self.db}.approvals FINAL WHERE state = 'pending'"
        )
        found = {}
        for r in rows:
            d = dict(zip(cols, r, strict=True))
            found[d["approval_id"]] = Request(
                approval_id=d["approval_id"],
                kind=d["kind"],
                requested_by=d["requested_by"],
                requester_roles=tuple(d["requester_roles"]),
                requester_regions=tuple(d["requester_regions"]),
                regions=tuple(d["regions"]),
                why=d["why"],
                summary=d["summary"],
                payload=json.loads(d["payload"] or "{}"),
                requested_at=_ts(d["requested_at"]),
                expires_at=_ts(d["expires_at"]),
                state=d["state"],
                updated_at=_ts(d["updated_at"]),
            )
        with self._lock:
            self.requests = found
        return self

    def _put(self, r: Request) -> None:
        r.updated_at = max(time.time(), r.updated_at + 0.001)
        self.store.insert_rows("approvals", COLUMNS, [r.row()])

    def ask(
        self,
        who: Principal,
        kind: str,
        payload: dict[str, Any],
        *,
        why: str,
        summary: str,
        regions: set[str],
    ) -> Request:
        """Files a request for a second person; `who` has already been checked for
        doing it themselves."""
        if kind not in KINDS:
            raise ApprovalError(f"unknown kind of request {kind!r}")
        now = time.time()
        r = Request(
            approval_id=uuid.uuid4().hex[:16],
            kind=kind,
            requested_by=who.name,
            requester_roles=tuple(sorted(who.roles)),
            requester_regions=tuple(sorted(who.regions)),
            regions=tuple(sorted(regions)),
            why=why,
            summary=summary,
            payload=payload,
            requested_at=now,
            expires_at=now + self.expire,
        )
        with self._lock:
            self._put(r)
            self.requests[r.approval_id] = r
        self.people.audit(
            who, "approval.ask", r.approval_id, detail={"kind": kind, "why": why, "what": summary}
        )
        return r

    def _lapse(self, now: float) -> None:
        for r in list(self.requests.values()):
            if r.state == "pending" and now >= r.expires_at:
                r.state, r.decided_at = "expired", now
                self._put(r)
                del self.requests[r.approval_id]

    def visible(self, who: Principal) -> list[Request]:
        """The pending requests `who` may see: their own, and those within their
        regions."""
        with self._lock:
            self._lapse(time.time())
            return sorted(
                (
                    r
                    for r in self.requests.values()
                    if r.requested_by == who.name or all(who.sees(x) for x in r.regions)
                ),
                key=lambda r: r.requested_at,
            )

    def decide(self, who: Principal, approval_id: str, approve: bool, note: str = "") -> Request:
        """`who` approves or rejects a pending request: a different person, with the
        role its kind needs and every region it touches. The caller runs it."""
        with self._lock:
            self._lapse(time.time())
            r = self.requests.get(approval_id)
            if r is None:
                raise ApprovalError(f"no pending request {approval_id!r} (decided or lapsed?)")
            what = "approve" if approve else "reject"
            try:
                if approve and who.name == r.requested_by:
                    raise AccessError(
                        f"{who.name} asked for {approval_id}: a different person approves it"
                    )
                if who.name != r.requested_by:
                    who.require(KINDS[r.kind], f"{what} this request")
                    for region in r.regions:
                        who.require_region(region, f"request {approval_id}")
            except AccessError as e:
                self.people.audit(who, f"approval.{what}", approval_id, "refused", {"why": str(e)})
                raise
            r.state = "approved" if approve else "rejected"
            r.decided_by, r.decided_at, r.note = who.name, time.time(), note[:500]
            self._put(r)
            del self.requests[approval_id]
        self.people.audit(
            who,
            f"approval.{what}",
            approval_id,
            detail={"kind": r.kind, "requested_by": r.requested_by, "what": r.summary},
        )
        return r
