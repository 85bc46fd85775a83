"""The link in the store process of a region or centre node.

Both directions work the same way (DESIGN.md section 9; the house style's durable log):

    outbox (disk) --publisher--> my stream --(NATS sourcing, buffered while cut)-->
        the peer's copy --applier--> the peer's ClickHouse (with the sender's token)

- A region publishes to its stream ``UP`` (subject ``headend.up.<node>``); the centre
  keeps a copy per region, ``UP_<node>``, that sources it across the leaf-node
  connection, and applies it. The centre publishes what a region should get to
  ``DOWN_<node>``; the region's ``DOWN`` sources it.
- A record is known by its place in the sender's outbox: writer, segment, offset (its
  id, and the `Nats-Msg-Id` of its parts, so JetStream drops a record published
  twice). Stream sequences are not an identity: a NATS server killed -9 may lose the
  tail of a stream and number new messages again.
- At least once: the outbox keeps a record until the peer confirms it. Each node's
  heartbeat (`headend.hb.<node>`) carries, per peer and writer, the last record it
  applied; the sender confirms everything up to there, purges it from its stream and
  from the outbox. After a restart, or when its stream lost records it had
  acknowledged, every unconfirmed record is published again.
- Exactly once: the receiver reads its copy in order and applies a record only if it
  comes after the last one it applied from that writer (kept on disk); anything
  seen again is skipped, however late. Each insert also carries the sender's
  deduplication token.
- The disk holds the unconfirmed backlog only: the stream is bounded by
  `max_backlog_bytes` (beyond it, new records wait in the outbox); an alarm is raised
  past `alarm_backlog_bytes` or `alarm_backlog_age`. Lag and connection state come
  from the heartbeats.

The node keeps working when its NATS server or its peer is away: the outbox fills,
and drains when they return.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from headend.config import Config
from headend.link.keys import NodeSecrets
from headend.link.natsconf import client_url
from headend.link.outbox import (
    UP,
    Backlog,
    Envelope,
    Marks,
    pending,
    read_marks,
    unframe,
    write_marks,
)
from headend.ownership import Ownership, federation_path
from headend.store import spool

log = logging.getLogger("headend.link")

Apply = Callable[[str, Envelope], Awaitable[None]]
"""How the store process applies a peer's record: (origin, envelope)."""

PART_ROOM = 4 << 10  # headers and framing of a message next to its part
Mark = tuple[str, int]  # (segment, offset) of a record in its writer's outbox


class BadRecord(ValueError):
    """A record from a peer that cannot be applied (it is skipped, logged and counted)."""


@dataclass
class Sent:
    """A record in my stream that its peer has not confirmed yet."""

    segment: Path
    end: int
    peer: str
    seq: int  # of its last part, in this incarnation of my stream
    writer: str  # "<node>.<writer>", as the receiver keeps its marks
    mark: Mark
    rows: int
    created: float
    confirmed: bool = False


@dataclass
class PeerLink:
    """Both directions between this node and one peer."""

    name: str
    out_stream: str
    out_subject: str
    in_stream: str
    in_source: str  # the peer's stream my copy sources
    in_api: str  # the peer's JetStream API prefix
    in_subject: str  # the subject of the peer's records in my copy
    # Out: my stream to this peer.
    published: int = 0  # records published since the store started
    purge_to: int = 0  # my stream's sequence up to which the peer confirmed
    purged_to: int = 0
    out_messages: int = 0
    out_bytes: int = 0
    # In: what I applied of the peer's records, per writer (kept on disk).
    marks: dict[str, Mark] = field(default_factory=dict)
    applied_rows: int = 0
    applied_created: float = 0.0
    applied_records: int = 0
    rejected_records: int = 0
    skipped_records: int = 0  # seen before (published again): not applied again
    copy_applied: int = 0  # my copy's sequence up to which all is applied (this run)
    copy_purged: int = 0
    in_pending: int = 0
    reset: bool = False  # read my copy from its start again (its server may have restarted)
    confirmed_marks: dict[str, Mark] = field(default_factory=dict)  # the peer's, of mine
    # The peer's last heartbeat.
    last_hb: float = 0.0
    hb: dict[str, Any] = field(default_factory=dict)


class LinkService:
    def __init__(
        self,
        cfg: Config,
        secrets: NodeSecrets,
        apply: Apply,
        ownership: Ownership | None = None,
        *,
        online: Callable[[], dict[str, int]] | None = None,
    ) -> None:
        self.cfg = cfg
        self.ownership = ownership
        self.online = online
        self.node = cfg.node.name
        self.role = cfg.node.role
        self.secrets = secrets
        self.apply = apply
        self.outbox_root = cfg.link_dir / "outbox"
        self.state_path = cfg.link_dir / "state.json"
        self.peers: dict[str, PeerLink] = {}
        if self.role == "region":
            centre = next(p for p in cfg.peers if p.role == "centre")
            self.peers[centre.name] = PeerLink(
                centre.name,
                out_stream="UP",
                out_subject=f"headend.up.{self.node}",
                in_stream="DOWN",
                in_source=f"DOWN_{self.node}",
                in_api=f"$JS.{centre.name}.API",
                in_subject=f"headend.down.{self.node}",
            )
        elif self.role == "centre":
            for p in cfg.peers:
                self.peers[p.name] = PeerLink(
                    p.name,
                    out_stream=f"DOWN_{p.name}",
                    out_subject=f"headend.down.{p.name}",
                    in_stream=f"UP_{p.name}",
                    in_source="UP",
                    in_api=f"$JS.{p.name}.API",
                    in_subject=f"headend.up.{p.name}",
                )
        self.nc: Any = None
        self.js: Any = None
        self.connected = False
        self.wake = asyncio.Event()
        self.alarm: str | None = None
        self.errors: dict[str, str] = {}
        self._logged: dict[str, float] = {}
        self.backlog = Backlog()
        # The ownership map this node last recorded (the centre's, which it sends in
        # its heartbeats; a region's, as it heard it).
        self.learnt: dict[str, str] = dict(ownership.owners) if ownership else {}
        # The state file and the outbox's marks are written from executor threads.
        self._files = threading.Lock()
        # Records published and not yet confirmed, in publishing order.
        self.inflight: deque[Sent] = deque()
        self.rewind_needed = True  # at start: publish again what was never confirmed
        self._load_state()

    # -- state kept across restarts ------------------------------------------------------

    def _load_state(self) -> None:
        try:
            d = json.loads(self.state_path.read_text())
        except (FileNotFoundError, ValueError):
            return
        for name, s in d.get("peers", {}).items():
            p = self.peers.get(name)
            if p is None:
                continue
            p.marks = {str(w): (str(m[0]), int(m[1])) for w, m in s.get("marks", {}).items()}
            p.applied_rows = int(s.get("applied_rows", 0))
            p.applied_created = float(s.get("applied_created", 0.0))

    def _save_state(self) -> None:
        with self._files:
            self._write_state()

    def _write_state(self) -> None:
        body = {
            "peers": {
                p.name: {
                    "marks": p.marks,
                    "applied_rows": p.applied_rows,
                    "applied_created": p.applied_created,
                }
                for p in self.peers.values()
            }
        }
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        spool.durable_write(self.state_path, json.dumps(body))

    # -- connection and streams ----------------------------------------------------------

    async def run(self) -> None:
        """Connects (retrying: the node works without its NATS server meanwhile), then
        publishes, applies and sends heartbeats until cancelled; a connection the
        client gives up on is made anew."""
        while True:
            await self._connect()
            tasks = [
                asyncio.create_task(self._publisher(), name="link-publisher"),
                asyncio.create_task(self._heartbeats(), name="link-heartbeats"),
                *(
                    asyncio.create_task(self._applier(p), name=f"link-apply-{p.name}")
                    for p in self.peers.values()
                ),
            ]
            try:
                while not self.nc.is_closed and not any(t.done() for t in tasks):
                    await asyncio.sleep(1.0)
                for t in tasks:
                    if t.done() and not t.cancelled() and t.exception() is not None:
                        log.error("link: %s stopped: %r", t.get_name(), t.exception())
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                with contextlib.suppress(Exception):
                    await self.nc.close()
            self.connected = False
            self.rewind_needed = True
            log.warning("link: the connection to this node's NATS server ended; connecting again")

    async def _connect(self) -> None:
        import nats

        delay = 0.5
        while True:
            try:
                self.nc = await nats.connect(
                    client_url(self.cfg, self.secrets),
                    name=f"headend-store-{self.node}",
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,
                    allow_reconnect=True,
                    connect_timeout=2,
                    disconnected_cb=self._disconnected,
                    reconnected_cb=self._reconnected,
                    error_cb=self._nats_error,
                )
                self.js = self.nc.jetstream(timeout=10)
                await self._ensure_streams()
                await self.nc.subscribe("headend.hb.*", cb=self._heartbeat_in)
                break
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self._error("connect", f"cannot reach this node's NATS server: {e}")
                if self.nc is not None:
                    with contextlib.suppress(Exception):
                        await self.nc.close()
                    self.nc = None
                await asyncio.sleep(delay)
                delay = min(5.0, delay * 2)
        self.connected = True
        self._clear("connect")
        self._clear("nats")
        log.info("link up: NATS at %s:%d", self.cfg.link.host, self.cfg.link.client_port)

    async def _disconnected(self) -> None:
        self.connected = False
        log.warning("link: lost this node's NATS server; the outbox keeps what is sent")

    async def _reconnected(self) -> None:
        self.connected = True
        self._clear("nats")
        # A restarted server may have lost the tail of a stream and numbered new
        # messages again: sequences from before mean nothing now.
        for p in self.peers.values():
            p.reset = True
            p.copy_applied = p.copy_purged = 0
            p.purge_to = p.purged_to = 0
        log.info("link: this node's NATS server is back")
        self.wake.set()

    async def _nats_error(self, e: Exception) -> None:
        self._error("nats", str(e) or type(e).__name__)

    def _error(self, key: str, text: str) -> None:
        """Logs a problem when it changes, and again every 30 s while it lasts."""
        now = time.monotonic()
        if self.errors.get(key) != text or now - self._logged.get(key, 0.0) >= 30.0:
            log.error("link: %s", text)
            self._logged[key] = now
        self.errors[key] = text

    def _clear(self, key: str) -> None:
        self._logged.pop(key, None)
        if self.errors.pop(key, None) is not None:
            log.info("link: %s recovered", key)

    async def _ensure_streams(self) -> None:
        from nats.js.api import (
            DiscardPolicy,
            ExternalStream,
            StorageType,
            StreamConfig,
            StreamSource,
        )

        link = self.cfg.link
        wanted: list[StreamConfig] = []
        for p in self.peers.values():
            wanted.append(
                StreamConfig(
                    name=p.out_stream,
                    subjects=[p.out_subject],
                    storage=StorageType.FILE,
                    discard=DiscardPolicy.NEW,
                    max_bytes=(
                        link.max_backlog_bytes if self.role == "region" else link.down_backlog_bytes
                    ),
                    duplicate_window=7200.0,
                    max_msg_size=link.message_bytes + PART_ROOM * 16,
                )
            )
            wanted.append(
                StreamConfig(
                    name=p.in_stream,
                    storage=StorageType.FILE,
                    sources=[StreamSource(name=p.in_source, external=ExternalStream(api=p.in_api))],
                )
            )
        for sc in wanted:
            try:
                await self.js.stream_info(sc.name)
            except Exception:
                await self.js.add_stream(sc)
            else:
                await self.js.update_stream(sc)

    # -- publishing ----------------------------------------------------------------------

    def _dest(self, dest: str) -> PeerLink | None:
        if self.role == "region":
            return next(iter(self.peers.values())) if dest == UP else None
        return self.peers.get(dest)

    async def _publisher(self) -> None:
        delay = 0.5
        while True:
            try:
                if self.rewind_needed:
                    self.inflight.clear()
                    self.rewind_needed = False
                    await asyncio.get_running_loop().run_in_executor(None, self._rewind)
                sent = await self._publish_round()
                self._clear("publish")
                delay = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self._error("publish", f"publishing the outbox failed (will retry): {e}")
                await asyncio.sleep(delay)
                delay = min(10.0, delay * 2)
                continue
            if not sent:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), 0.25)
                self.wake.clear()

    def _rewind(self) -> None:
        """Everything not confirmed is published again (at start, and when my stream
        lost records it had acknowledged)."""
        with self._files:
            self._rewind_marks()

    def _rewind_marks(self) -> None:
        again = 0
        for segs in spool.segments(self.outbox_root, named=True).values():
            for seg in segs:
                m = read_marks(seg)
                if m.published > m.confirmed:
                    again += m.published - m.confirmed
                    write_marks(seg, Marks(m.confirmed, m.confirmed))
        if again:
            log.info("link: %d bytes of unconfirmed records to publish again", again)

    async def _publish_round(self) -> int:
        """Publishes what the outbox holds beyond each segment's published mark;
        returns the records published."""
        loop = asyncio.get_running_loop()
        sent = 0
        part = max(1024, self.cfg.link.message_bytes - PART_ROOM)
        for writer, segs in spool.segments(self.outbox_root, named=True).items():
            for seg in segs:
                marks = read_marks(seg)
                records = await loop.run_in_executor(None, _read_records, seg, marks.published)
                for rec in records:
                    dest, created, body = unframe(rec.payload)
                    peer = self._dest(dest)
                    record = f"{self.node}.{writer}.{seg.stem}.{rec.offset}"
                    seq = 0
                    if peer is None:
                        log.error(
                            "outbox record %s for unknown destination %r skipped", record, dest
                        )
                    else:
                        seq = await self._publish(
                            peer, record, body, rows=rec.rows, created=created, part=part
                        )
                        sent += 1
                    self.inflight.append(
                        Sent(
                            seg,
                            rec.end,
                            peer.name if peer else "",
                            seq,
                            f"{self.node}.{writer}",
                            (seg.stem, rec.offset),
                            rec.rows,
                            created,
                            confirmed=peer is None,
                        )
                    )
                    await loop.run_in_executor(None, self._published, seg, rec.end)
        return sent

    async def _publish(
        self, peer: PeerLink, record: str, body: bytes, *, rows: int, created: float, part: int
    ) -> int:
        """Publishes one record (in parts); returns the sequence of its last part."""
        parts = [body[i : i + part] for i in range(0, len(body), part)] or [b""]
        seq = 0
        for i, chunk in enumerate(parts):
            headers = {
                "Nats-Msg-Id": f"{record}.{i}",
                "Headend-Record": record,
                "Headend-Part": f"{i + 1}/{len(parts)}",
                "Headend-Rows": str(rows),
                "Headend-Created": f"{created:.3f}",
            }
            # Not `stream=`: its Nats-Expected-Stream header would travel with the
            # message and the peer's copy (another stream name) would refuse it.
            ack = await self.js.publish(peer.out_subject, chunk, headers=headers, timeout=10)
            if ack.stream != peer.out_stream:
                raise RuntimeError(f"{peer.out_subject} went to stream {ack.stream}")
            seq = int(ack.seq)
        peer.published += 1
        return seq

    def _confirm(self, peer: PeerLink, marks: dict[str, Mark]) -> dict[Path, int]:
        """`peer` applied, per writer of mine, everything up to `marks`: those records
        are confirmed; the longest confirmed prefix of what is in flight leaves it.
        Returns how far each segment is now confirmed (on the loop, where the
        publisher adds to `inflight`)."""
        for s in self.inflight:
            if s.peer == peer.name and not s.confirmed and s.mark <= marks.get(s.writer, ("", -1)):
                s.confirmed = True
                peer.purge_to = max(peer.purge_to, s.seq)
        moved: dict[Path, int] = {}
        while self.inflight and self.inflight[0].confirmed:
            s = self.inflight.popleft()
            moved[s.segment] = max(moved.get(s.segment, 0), s.end)
        return moved

    def _published(self, seg: Path, end: int) -> None:
        with self._files:
            m = read_marks(seg)
            write_marks(seg, Marks(max(m.published, end), m.confirmed))

    def _confirm_files(self, moved: dict[Path, int]) -> None:
        """Records the confirmed marks; sealed segments wholly confirmed go."""
        with self._files:
            for seg, end in moved.items():
                with contextlib.suppress(FileNotFoundError):
                    m = read_marks(seg)
                    write_marks(seg, Marks(max(m.published, end), max(m.confirmed, end)))
        for segs in spool.segments(self.outbox_root, named=True).values():
            for seg in segs[:-1]:  # a writer's last segment may still grow
                try:
                    if seg.stat().st_size <= read_marks(seg).confirmed:
                        seg.unlink()
                        spool.ack_path(seg).unlink(missing_ok=True)
                except FileNotFoundError:
                    continue

    # -- applying ------------------------------------------------------------------------

    async def _applier(self, peer: PeerLink) -> None:
        """Reads my copy of the peer's stream in order from its first message (what is
        applied is purged from it, so that is where the new begins); the marks decide
        what was applied before."""
        delay = 0.5
        peer.reset = True
        seq = 1
        parts = _Parts(peer)
        while True:
            try:
                if peer.reset:
                    info = await self.js.stream_info(peer.in_stream)
                    seq = max(1, int(info.state.first_seq))
                    peer.copy_applied = peer.copy_purged = seq - 1
                    peer.reset = False
                    parts = _Parts(peer)
                m = await self._next(peer, seq)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self._error(f"apply {peer.name}", f"reading {peer.name}'s records failed: {e}")
                await asyncio.sleep(delay)
                delay = min(10.0, delay * 2)
                continue
            if m is None:
                peer.in_pending = 0
                await asyncio.sleep(0.1)
                continue
            self._clear(f"apply {peer.name}")
            delay = 0.5
            seq = int(m.seq) + 1
            h = m.headers or {}
            body = parts.add(h, m.data or b"")
            if body is None:
                continue  # more parts to come
            rid = h.get("Headend-Record", "")
            writer, mark = _mark(rid)
            if writer and mark <= peer.marks.get(writer, ("", -1)):
                peer.skipped_records += 1  # applied before: published again
            else:
                await self._apply_record(peer, body)
                if writer:
                    peer.marks[writer] = mark
                peer.applied_records += 1
                peer.applied_rows += int(h.get("Headend-Rows", 0))
                peer.applied_created = float(h.get("Headend-Created", 0.0))
                try:
                    await asyncio.get_running_loop().run_in_executor(None, self._save_state)
                except OSError as e:
                    # The marks stay in memory and are written with the next record; a
                    # record applied again after a crash meanwhile keeps its token.
                    self._error("state", f"cannot record what was applied: {e}")
            peer.copy_applied = int(m.seq)

    async def _next(self, peer: PeerLink, seq: int) -> Any:
        """The first message of my copy at or after `seq`, None when there is none."""
        from nats.js.errors import NotFoundError

        try:
            return await self.js.get_msg(
                peer.in_stream, seq=seq, subject=peer.in_subject, next=True
            )
        except NotFoundError:
            return None

    async def _apply_record(self, peer: PeerLink, body: bytes) -> None:
        """Applies one record, retrying while the store refuses (nothing moves on
        meanwhile); a record that cannot be read or applied is skipped and counted."""
        try:
            env = Envelope.decode(body)
        except ValueError as e:
            log.error("link: a record from %s is unreadable, skipped: %s", peer.name, e)
            peer.rejected_records += 1
            return
        delay = 0.5
        while True:
            try:
                await self.apply(peer.name, env)
                self._clear(f"store {peer.name}")
                return
            except asyncio.CancelledError:
                raise
            except BadRecord as e:
                log.error("link: a %s record from %s refused: %s", env.kind, peer.name, e)
                peer.rejected_records += 1
                return
            except Exception as e:
                self._error(
                    f"store {peer.name}",
                    f"applying {peer.name}'s records fails (retrying, nothing is lost): {e}",
                )
                await asyncio.sleep(delay)
                delay = min(10.0, delay * 2)

    # -- heartbeats, confirmation, purging -------------------------------------------------

    async def _heartbeats(self) -> None:
        interval = self.cfg.link.heartbeat
        while True:
            try:
                await self._refresh()
                await self.nc.publish(f"headend.hb.{self.node}", json.dumps(self._beat()).encode())
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self._error("heartbeat", f"heartbeat failed: {e}")
            await asyncio.sleep(interval)

    def _beat(self) -> dict[str, Any]:
        """My heartbeat: per peer, the last record of each of its writers I applied
        (its confirmation), and what I hold for it unconfirmed (its lag)."""
        body: dict[str, Any] = {"node": self.node, "role": self.role, "time": time.time()}
        body["applied"] = {p.name: {"marks": p.marks} for p in self.peers.values()}
        body["unconfirmed"] = {p.name: self._unconfirmed(p.name) for p in self.peers.values()}
        if self.role == "centre" and self.ownership is not None:
            body["owners"] = self.ownership.owners
        if self.role == "region" and self.online is not None:
            body["online"] = self.online()  # meters online per grid node, for the centre
        return body

    def peers_online(self) -> dict[str, int]:
        """Meters online per grid node as the connected peers last reported."""
        now, timeout = time.time(), 3 * self.cfg.link.heartbeat
        out: dict[str, int] = {}
        for p in self.peers.values():
            if p.last_hb and now - p.last_hb <= timeout:
                for node, n in (p.hb.get("online") or {}).items():
                    out[str(node)] = out.get(str(node), 0) + int(n)
        return out

    def _unconfirmed(self, peer: str) -> dict[str, Any]:
        """Rows and age of what `peer` has not confirmed: in flight, and (for a region,
        whose outbox goes to one peer) not yet published."""
        mine = [s for s in self.inflight if s.peer == peer and not s.confirmed]
        rows = sum(s.rows for s in mine)
        oldest = min((s.created for s in mine), default=None)
        if self.role == "region":
            rows += self.backlog.rows
            if self.backlog.oldest is not None:
                oldest = min(oldest or self.backlog.oldest, self.backlog.oldest)
        return {"rows": rows, "oldest": oldest}

    async def _heartbeat_in(self, msg: Any) -> None:
        try:
            hb = json.loads(msg.data)
            name = str(hb["node"])
        except (ValueError, KeyError, TypeError):
            return
        peer = self.peers.get(name)
        if peer is None:
            return
        peer.last_hb = time.time()
        peer.hb = hb
        owners = hb.get("owners")
        if self.role == "region" and isinstance(owners, dict) and owners != self.learnt:
            await self.adopt({str(k): str(v) for k, v in owners.items()})
        raw = hb.get("applied", {}).get(self.node, {}).get("marks", {})
        marks = {str(w): (str(m[0]), int(m[1])) for w, m in raw.items()}
        peer.confirmed_marks = marks
        moved = self._confirm(peer, marks)
        if moved:
            await asyncio.get_running_loop().run_in_executor(None, self._confirm_files, moved)

    async def adopt(self, owners: dict[str, str]) -> None:
        """The centre's map of who owns which region, taken in and recorded: at a
        region as the centre sends it, at the centre after a handover. What this node
        acts on follows it at once."""
        self.learnt = dict(owners)
        await asyncio.get_running_loop().run_in_executor(
            None, self._write_owners, json.dumps({"owners": self.learnt})
        )
        if self.ownership is not None:
            taken, given = self.ownership.assign(self.learnt)
            if taken or given:
                log.warning(
                    "ownership changed: this node (%s) now acts on %s; took %s, gave up %s",
                    self.node,
                    ", ".join(sorted(r or "national" for r in self.ownership.regions)) or "nothing",
                    ", ".join(sorted(taken)) or "nothing",
                    ", ".join(sorted(given)) or "nothing",
                )

    def _write_owners(self, text: str) -> None:
        with self._files:
            spool.durable_write(federation_path(self.cfg), text)

    async def _refresh(self) -> None:
        """Stream figures for the status; purges of what peers confirmed (my stream to
        them) and of what I applied (my copy of theirs); the check for records my
        stream lost."""
        loop = asyncio.get_running_loop()
        self.backlog = await loop.run_in_executor(None, pending, self.outbox_root)
        for p in self.peers.values():
            if p.purge_to > p.purged_to and await self._purge(
                p.out_stream, p.purge_to, p.confirmed_marks
            ):
                p.purged_to = p.purge_to
            if p.copy_applied > p.copy_purged and await self._purge(
                p.in_stream, p.copy_applied, p.marks
            ):
                p.copy_purged = p.copy_applied
            # What was published before asking (a publish may land meanwhile).
            mine = [s.seq for s in self.inflight if s.peer == p.name]
            info = await self.js.stream_info(p.out_stream)
            p.out_messages, p.out_bytes = int(info.state.messages), int(info.state.bytes)
            if mine and int(info.state.last_seq) < max(mine):
                log.error(
                    "link: stream %s ends at %d but held records up to %d (its NATS server "
                    "lost them): publishing every unconfirmed record again",
                    p.out_stream,
                    int(info.state.last_seq),
                    max(mine),
                )
                self.rewind_needed = True
                self.wake.set()
            copy = await self.js.stream_info(p.in_stream)
            p.in_pending = max(0, int(copy.state.last_seq) - p.copy_applied)
        self._check_alarm()

    async def _purge(self, stream: str, upto: int, marks: dict[str, Mark]) -> bool:
        """Purges `stream` up to sequence `upto` if the message there is a record that
        `marks` show applied: a sequence alone may name another record than it did (a
        server that restarted without the tail of its stream numbers anew)."""
        try:
            m = await self.js.get_msg(stream, seq=upto)
        except Exception:
            return False
        writer, mark = _mark((m.headers or {}).get("Headend-Record", ""))
        if not writer or mark > marks.get(writer, ("", -1)):
            return False
        await self.js.purge_stream(stream, seq=upto + 1)
        return True

    def _check_alarm(self) -> None:
        link = self.cfg.link
        now = time.time()
        why = None
        backlog = self.backlog.bytes + sum(p.out_bytes for p in self.peers.values())
        ages = [s.created for s in self.inflight if not s.confirmed]
        if self.backlog.oldest is not None:
            ages.append(self.backlog.oldest)
        age = now - min(ages) if ages else 0.0
        if backlog > link.alarm_backlog_bytes:
            why = f"link backlog {backlog} bytes over {link.alarm_backlog_bytes}"
        elif age > link.alarm_backlog_age:
            why = f"oldest unconfirmed record {age:.0f} s old (over {link.alarm_backlog_age:.0f})"
        if why and not self.alarm:
            log.error("link alarm: %s", why)
        elif self.alarm and not why:
            log.info("link alarm cleared")
        self.alarm = why

    # -- status ----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Per peer: whether its heartbeats arrive; how far behind its records this
        node is (what it last reported unconfirmed, aged by the clock since), what
        this node applied of it; and what this node has sent it unconfirmed."""
        now = time.time()
        timeout = 3 * self.cfg.link.heartbeat
        peers = []
        for p in self.peers.values():
            up = self.connected and p.last_hb > 0 and now - p.last_hb <= timeout
            theirs = p.hb.get("unconfirmed", {}).get(self.node, {})
            oldest = theirs.get("oldest")
            lag_s = now - float(oldest) if oldest else 0.0
            if not up and p.last_hb:
                lag_s = max(lag_s, now - p.last_hb)
            mine = self._unconfirmed(p.name)
            peers.append(
                {
                    "peer": p.name,
                    "connected": up,
                    "last_contact": p.last_hb or None,
                    "lag_s": round(lag_s, 1),
                    "lag_rows": int(theirs.get("rows", 0)),
                    "applied_records": p.applied_records,
                    "applied_rows_total": p.applied_rows,
                    "rejected_records": p.rejected_records,
                    "skipped_records": p.skipped_records,
                    "pending_in": p.in_pending,
                    "published_records": p.published,
                    "unconfirmed_rows": mine["rows"],
                    "unconfirmed_messages": p.out_messages,
                    "unconfirmed_bytes": p.out_bytes,
                    "oldest_unconfirmed_s": (
                        round(now - mine["oldest"], 1) if mine["oldest"] else None
                    ),
                }
            )
        return {
            "node": self.node,
            "role": self.role,
            "nats": self.connected,
            "outbox_bytes": self.backlog.bytes,
            "outbox_rows": self.backlog.rows,
            "outbox_oldest_s": (
                round(now - self.backlog.oldest, 1) if self.backlog.oldest else None
            ),
            "alarm": self.alarm,
            "errors": dict(self.errors),
            "peers": peers,
        }


class _Parts:
    """A record's parts as they come, in order; a record left incomplete when the
    next begins is counted and dropped (its sender publishes it again whole)."""

    def __init__(self, peer: PeerLink) -> None:
        self.peer = peer
        self.record = ""
        self.parts: dict[int, bytes] = {}

    def add(self, headers: dict[str, str], data: bytes) -> bytes | None:
        rid = headers.get("Headend-Record", "")
        index, _, count = headers.get("Headend-Part", "1/1").partition("/")
        if rid != self.record:
            if self.parts:
                log.error(
                    "link: record %s from %s is incomplete (%d part(s)); skipped",
                    self.record,
                    self.peer.name,
                    len(self.parts),
                )
                self.peer.rejected_records += 1
            self.record, self.parts = rid, {}
        self.parts[int(index)] = data
        if len(self.parts) < int(count or 1):
            return None
        body = b"".join(self.parts[i] for i in sorted(self.parts))
        self.record, self.parts = "", {}
        return body


def _read_records(segment: Path, start: int) -> list[spool.Record]:
    return list(spool.read_records(segment, start, 64 << 20))


def _mark(record: str) -> tuple[str, Mark]:
    """(writer, (segment, offset)) of a record id `node.writer.segment.offset`."""
    parts = record.split(".")
    if len(parts) != 4 or not parts[3].isdigit():
        return "", ("", -1)
    return f"{parts[0]}.{parts[1]}", (parts[2], int(parts[3]))
