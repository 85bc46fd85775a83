"""A worker process: meter connections in, spool records out.

Each worker runs uvloop and listens on the meter port itself (SO_REUSEPORT: the
kernel spreads connections over the workers). A connection is a thin
:class:`MeterProtocol` over a Rust :class:`Session`; decoded rows go into the worker's
one :class:`RowSink`, which is drained into the spool once per event-loop turn (one
write for everything read in that turn). What a worker had read but not yet appended
when it is killed is lost with its connections; everything appended survives.

Meters are looked up lazily: a session that meets an unknown meter queues its APDUs
and the worker asks the store (batched); keys arrive wrapped and are unwrapped by the
Rust directory, straight into the key table.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import socket
import sys
import time
from typing import Any, Literal, cast

import msgpack

from headend import logs, meter_address, profiles
from headend.codec import (
    ApduIn,
    Directory,
    Identified,
    LinkFrame,
    Lookup,
    Reject,
    RowSink,
    Session,
)
from headend.config import Config, ServerConfig, from_dict
from headend.errors import HeadendError, InternalError
from headend.keys import load_master_key
from headend.server import ipc
from headend.server.admission import Admission
from headend.server.client import ClientError, HdlcLink, Link, MeterClient, WrapperLink
from headend.server.jobs import Jobs
from headend.server.meter_lookup import LookupKey, MeterLookup
from headend.server.udp import UdpEndpoint
from headend.store import spool

log = logging.getLogger("headend.worker")

SessionEvent = Lookup | Identified | ApduIn | LinkFrame | Reject


class MeterProtocol(asyncio.Protocol):
    """One meter (or concentrator) connection. Thin: bytes go to Rust."""

    __slots__ = (
        "addr",
        "bad",
        "clients",
        "closed",
        "connected_at",
        "datagram",
        "dialled",
        "framing",
        "last_rx",
        "lost_reason",
        "plog",
        "session",
        "sid",
        "transport",
        "trusted",
        "waiting_pause",
        "worker",
    )

    def __init__(
        self,
        worker: Worker,
        framing: Literal["auto", "wrapper", "hdlc"],
        dialled: bool = False,
        *,
        datagram: bool = False,
    ) -> None:
        self.worker = worker
        self.framing = framing
        # A UDP peer (udp.py): each read is one datagram.
        self.datagram = datagram
        # The head-end opened this connection to a listening meter.
        self.dialled = dialled
        self.transport: asyncio.Transport | None = None
        self.session: Session | None = None
        self.sid = 0
        self.connected_at = 0.0
        self.last_rx = 0.0
        self.plog: logs.PeerLogger | None = None
        self.closed = False
        self.lost_reason: str | None = None
        self.waiting_pause = False
        self.clients: dict[int, MeterClient] | None = None
        # The source address; trusted once a meter is identified on the connection (a
        # connection the head-end opened is trusted from the start).
        self.addr = ""
        self.trusted = dialled
        self.bad = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        w = self.worker
        self.transport = transport
        peername = transport.get_extra_info("peername")
        peer = f"{peername[0]}:{peername[1]}" if isinstance(peername, tuple) else str(peername)
        self.addr = str(peername[0]) if isinstance(peername, tuple) else peer
        if not w.admission.admit(self):
            transport.abort()
            self.closed = True
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.session = Session(
            peer, self.framing, w.cfg.server.max_apdu, w.cfg.server.max_pending_per_session
        )
        self.sid = w.next_session_id()
        self.connected_at = self.last_rx = time.time()
        w.connections[self.sid] = self
        w.admission.opened(self)
        w.session_row(self, "connect", "dialled" if self.dialled else "")
        if w.paused or w.spool_error is not None:
            transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        w = self.worker
        session = self.session
        if session is None:
            return
        now = time.time()
        self.last_rx = now
        try:
            events = session.feed(data, int(now), w.directory, w.sink, self.datagram)
        except InternalError:
            # Our bug, not the meter's: said loudly, and only this connection pays.
            log.exception("internal error on connection %s; closing it", self.sid)
            w.count_reject("internal-error")
            self.close("internal-error")
            return
        w.mark_dirty()
        if events:
            w.on_events(self, events)
        if self.datagram:
            w.jobs.woke(self)
        if session.pending and not self.waiting_pause and self.transport is not None:
            # The meter is being looked up: stop reading until it is known, so TCP
            # holds the meter back instead of the queue overflowing.
            self.waiting_pause = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.closed:
            return
        self.closed = True
        w = self.worker
        reason = w.close_reasons.pop(self.sid, "peer-closed" if exc is None else "error")
        if self.session is not None:
            events = self.session.feed(b"", int(time.time()), w.directory, w.sink)
            if events:
                w.on_events(self, events)
            if self.session.pending:
                # APDUs still wait for a meter lookup; the session's record is written
                # when they have run, so its counters are complete.
                self.lost_reason = reason
            else:
                w.session_row(self, "disconnect", reason)
        w.connections.pop(self.sid, None)
        w.admission.closed(self)
        w.connection_gone(self)
        w.mark_dirty()

    def close(self, reason: str) -> None:
        if self.transport is not None and not self.closed:
            self.worker.close_reasons[self.sid] = reason
            self.transport.close()

    def peer_logger(self) -> logs.PeerLogger:
        if self.plog is None:
            self.plog = logs.PeerLogger(log, self.session.peer if self.session else "?")
        return self.plog


class Worker:
    def __init__(self, cfg: Config, worker_id: int) -> None:
        self.cfg = cfg
        self.id = worker_id
        self.master = load_master_key(cfg)
        self.key_grace = cfg.security.previous_keys_grace
        # Firmware images read for upgrades (a few, by SHA-256).
        self.directory = Directory(
            require_authentication=cfg.security.require_authentication,
            require_encryption=cfg.security.require_encryption,
        )
        self.models: dict[str, dict[str, Any]] = {}
        for p in profiles.load_all(cfg.profiles_dir):
            self.directory.add_profile(p)
            self.models[p["name"]] = p
        self.sink = RowSink()
        self.spool = spool.SpoolWriter(
            cfg.spool_dir,
            worker_id,
            segment_bytes=cfg.store.segment_bytes,
            fsync=cfg.store.fsync,
            fsync_interval=cfg.store.fsync_interval,
        )
        self.connections: dict[int, MeterProtocol] = {}
        self.close_reasons: dict[int, str] = {}
        self._sids = itertools.count((time.time_ns() // 1000) << 8 | (worker_id & 0xFF), 256)
        self.session_rows: list[list[Any]] = []
        self.touched: set[bytes] = set()
        self.counters_at = time.monotonic()
        self.waiting: dict[LookupKey, set[MeterProtocol]] = {}
        self.dirty = False
        self.paused = False
        self.accepting = True
        self.store: ipc.Channel | None = None
        self.stop = asyncio.Event()
        self.servers: list[asyncio.Server] = []
        self.udp: UdpEndpoint | None = None
        self.totals: dict[str, int] = {"pushes": 0, "readings": 0, "events": 0, "connections": 0}
        self.rejects: dict[str, int] = {}
        # Spool records a full disk held back, and since when (None: the spool writes).
        self.held: list[bytes] = []
        self.spool_error: str | None = None
        self.spool_full_since = 0.0
        # Per-source limits, the connections not yet trusted (oldest first) and the
        # refusals waiting to be told (sources.py).
        self.admission = Admission(self)
        self.started = time.time()
        self._tasks: set[asyncio.Task[Any]] = set()
        # Commands: where each identified meter is, the jobs the store offered, and
        # the associations running.
        self.online: dict[str, tuple[MeterProtocol, int, int]] = {}
        # Meters identified or gone since the last report (serial -> online now), and
        # whether the next report lists them all (the store's view after a reconnect):
        # the store knows whose connections a killed worker took with it.
        self.meters_delta: dict[str, bool] = {}
        self.meters_full = True
        # Each loaded meter's grid node, so the store can count meters online per node.
        self.node_of: dict[str, str] = {}
        # Meters whose keys before a rotation are still accepted, and until when.
        self.previous_keys_until: dict[str, float] = {}
        # online_by_node() recounts only after `online` changed.
        self._online_counts: dict[str, int] | None = None
        self.jobs = Jobs(self)
        self.lookups = MeterLookup(self)
        self.own_title = bytes.fromhex(cfg.commands.client_title)

    # -- rows and the spool ------------------------------------------------------

    def next_session_id(self) -> int:
        self.totals["connections"] += 1
        return next(self._sids)

    def mark_dirty(self) -> None:
        if not self.dirty:
            self.dirty = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self, final: bool = False) -> None:
        """Everything decoded since the last turn goes to the spool in one write
        (invocation counters at most once per `counters_interval`, and at the end)."""
        self.dirty = False
        readings, rn, events, en, touched = self.sink.drain()
        records = []
        if rn:
            records.append(spool.encode_record(spool.READINGS, spool.ROWBINARY, rn, readings))
        if en:
            records.append(spool.encode_record(spool.EVENTS, spool.ROWBINARY, en, events))
        self.touched.update(touched)
        due = time.monotonic() - self.counters_at >= self.cfg.store.counters_interval
        if self.touched and (final or due):
            counters = [
                [t.hex().upper(), -1 if last is None else last, nxt]
                for t, last, nxt in self.directory.counters(list(self.touched))
            ]
            self.touched.clear()
            self.counters_at = time.monotonic()
            records.append(
                spool.encode_record(
                    spool.COUNTERS, spool.MSGPACK, len(counters), msgpack.packb(counters)
                )
            )
        if self.session_rows:
            rows, self.session_rows = self.session_rows, []
            records.append(
                spool.encode_record(spool.SESSIONS, spool.MSGPACK, len(rows), msgpack.packb(rows))
            )
        if records or self.held:
            self._append(records)
        stats = self.sink.take_stats()
        for k in ("pushes", "readings", "events"):
            self.totals[k] += stats[k]
        for k, n in stats["rejects"].items():
            self.rejects[k] = self.rejects.get(k, 0) + n

    def _append(self, records: list[bytes]) -> None:
        """Appends to the spool, after what a full disk held back. While the spool
        cannot take records they are kept here and no connection is read (TCP holds
        the meters back): nothing is lost, and everything resumes when space returns."""
        self.held.extend(records)
        try:
            self.spool.append(self.held)
        except spool.SpoolFull as e:
            if self.spool_error is None:
                log.error(
                    "the spool cannot be written (%s): stopped reading %d connections "
                    "until it can; %d bytes held",
                    e.strerror,
                    len(self.connections),
                    sum(len(r) for r in self.held),
                )
                self.spool_error = str(e.strerror)
                self.spool_full_since = time.time()
                self._pause_all()
            return
        self.held = []
        if self.spool_error is not None:
            log.warning(
                "the spool takes records again after %.0f s: reading resumes",
                time.time() - self.spool_full_since,
            )
            self.spool_error = None
            self._resume_all()

    def _pause_all(self) -> None:
        for p in self.connections.values():
            if p.transport is not None and not p.closed:
                p.transport.pause_reading()

    def _resume_all(self) -> None:
        """Reads again, unless something else still holds the connections back (the
        store's backlog, a full spool, a meter lookup)."""
        if self.paused or self.spool_error is not None:
            return
        for p in self.connections.values():
            if p.transport is not None and not p.closed and not p.waiting_pause:
                p.transport.resume_reading()

    def session_row(self, proto: MeterProtocol, event: str, reason: str) -> None:
        s = proto.session
        if s is None:
            return
        st = s.stats
        now = time.time()
        meters = [self.directory.serial(m) for m in st["meters"]]
        self.session_rows.append(
            [
                now,
                event,
                proto.sid,
                self.id,
                s.peer,
                s.framing,
                meters,
                st["bytes_in"],
                st["frames"],
                st["pushes"],
                st["readings"],
                st["errors"],
                reason,
                now - proto.connected_at if event == "disconnect" else 0.0,
            ]
        )
        self.mark_dirty()

    def count_reject(self, kind: str) -> None:
        self.rejects[kind] = self.rejects.get(kind, 0) + 1

    # -- events from sessions ----------------------------------------------------

    def on_events(self, proto: MeterProtocol, events: list[SessionEvent]) -> None:
        for ev in events:
            match ev:
                case Lookup(title, serial):
                    key: LookupKey = ("t", title) if title is not None else ("s", serial or b"")
                    self.waiting.setdefault(key, set()).add(proto)
                    self.lookups.queue(key)
                case Identified(meter, serial, source):
                    proto.peer_logger().meter = serial
                    self.admission.trusted(proto)
                    self.online[serial] = (proto, meter, source)
                    self.meters_delta[serial] = True
                    self._online_counts = None
                    if serial in self.jobs.wanted:
                        self.jobs.start(serial)
                case Reject(reason, message, meter_id):
                    # Counted by the sink; told in aggregate per source (sources.py).
                    serial = self.directory.serial(meter_id) if meter_id is not None else ""
                    self.admission.on_bad(proto, reason, message, serial)
                case ApduIn(source, _, apdu):
                    client = proto.clients.get(source) if proto.clients else None
                    if client is not None and client.deliver(apdu):
                        continue
                    self.admission.on_bad(
                        proto,
                        "unsolicited-apdu",
                        f"{len(apdu)}-byte APDU (tag 0x{apdu[0]:02X}) that nothing asked for",
                        counted=False,
                    )
                case LinkFrame(source, _, control, info, byte, segmented):
                    client = proto.clients.get(source) if proto.clients else None
                    if client is not None:
                        client.link.on_frame(control, byte, segmented, info)
                    else:
                        proto.peer_logger().debug("HDLC %s frame from %s", control, source)

    def meters_moved(self) -> None:
        """Meters joined or moved between grid nodes: the online counts are recounted."""
        self._online_counts = None

    def retry_waiting(self, keys: set[LookupKey]) -> None:
        """Runs the sessions' queued APDUs again, resumes their reading, and writes the
        records of sessions that closed while waiting."""
        now = int(time.time())
        for key in keys:
            for proto in self.waiting.pop(key, ()):
                session = proto.session
                if session is None:
                    continue
                events = session.retry(now, self.directory, self.sink)
                if events:
                    self.on_events(proto, events)
                if proto.waiting_pause and not session.pending:
                    proto.waiting_pause = False
                    held_back = self.paused or self.spool_error is not None
                    if not held_back and not proto.closed and proto.transport is not None:
                        proto.transport.resume_reading()
                if proto.lost_reason is not None and not session.pending:
                    self.session_row(proto, "disconnect", proto.lost_reason)
                    proto.lost_reason = None

    # -- the store link ------------------------------------------------------------

    async def _handle(self, ch: ipc.Channel, msg: dict[str, Any]) -> dict[str, Any] | None:
        t = msg.get("t")
        if t == "backlog":
            self._backpressure(int(msg["bytes"]))
        elif t == "drain":
            self.stop.set()
        elif t == "sessions":
            return {"sessions": self.list_sessions(msg.get("meter"))}
        elif t == "invalidate":
            await self._refresh(msg.get("serials", []))
        elif t == "job":
            self.jobs.offer(msg["job"])
        elif t == "job-cancel":
            self.jobs.drop(str(msg["command"]))
        return None

    async def dial(self, serial: str, address: str) -> tuple[MeterProtocol, int, int]:
        """Opens a connection to a listening meter and binds the meter to it."""
        try:
            where = meter_address.parse(address)
        except ValueError as e:
            raise ClientError(str(e)) from None
        if where is None:
            raise ClientError(f"meter {serial} has no address to dial")
        meter = self.directory.find(serial=serial)
        if meter is None:
            try:
                await self.lookups.ask({("s", serial.encode())})
            except (ipc.ChannelClosed, ConnectionError, TimeoutError) as e:
                raise ClientError(f"meter {serial} could not be looked up: {e}") from None
            meter = self.directory.find(serial=serial)
            if meter is None:
                raise ClientError(f"meter {serial} is not known to the store or cannot be loaded")
        loop = asyncio.get_running_loop()
        try:
            _, proto = await asyncio.wait_for(
                loop.create_connection(
                    lambda: MeterProtocol(self, where.framing, dialled=True),
                    where.host,
                    where.port,
                ),
                self.cfg.commands.connect_timeout,
            )
        except TimeoutError:
            raise ClientError(
                f"meter {serial} at {where}: no connection within "
                f"{self.cfg.commands.connect_timeout:g} s"
            ) from None
        except OSError as e:
            raise ClientError(
                f"meter {serial} at {where}: cannot connect: {e.strerror or e}"
            ) from None
        if proto.closed or proto.session is None:
            raise ClientError(f"meter {serial}: this worker is draining or full")
        proto.session.bind(where.server, meter)
        proto.peer_logger().meter = serial
        self.online[serial] = (proto, meter, where.server)
        self._online_counts = None
        return proto, meter, where.server

    def client(self, proto: MeterProtocol, meter: int, source: int) -> MeterClient:
        if proto.session is None or proto.transport is None or proto.closed:
            raise ClientError("the meter's connection closed")
        if proto.clients is None:
            proto.clients = {}
        client = proto.clients.get(source)
        if client is None or client.meter != meter:
            transport = proto.transport
            cmd = self.cfg.commands
            link: Link = (
                HdlcLink(transport.write, cmd.client_address, source, cmd.request_timeout)
                if proto.session.framing == "hdlc"
                else WrapperLink(transport.write, cmd.client_address, source)
            )
            client = MeterClient(
                directory=self.directory,
                meter=meter,
                source=source,
                link=link,
                own_title=self.own_title,
                timeout=self.cfg.commands.request_timeout,
                touched=self._touch,
            )
            proto.clients[source] = client
        return client

    def _touch(self, title: bytes) -> None:
        self.touched.add(title)
        self.mark_dirty()

    def connection_gone(self, proto: MeterProtocol) -> None:
        if proto.clients:
            for c in proto.clients.values():
                c.fail("the meter's connection closed")
        for serial in [s for s, w in self.online.items() if w[0] is proto]:
            del self.online[serial]
            self.meters_delta[serial] = False
            self._online_counts = None

    async def _refresh(self, serials: list[str]) -> None:
        """Re-reads meters this worker knows after they were re-imported."""
        keys: set[LookupKey] = {
            ("s", s.encode()) for s in serials if self.directory.find(serial=s) is not None
        }
        if keys:
            with contextlib.suppress(ipc.ChannelClosed, ConnectionError, TimeoutError):
                await self.lookups.ask(keys)

    def _backpressure(self, backlog: int) -> None:
        if not self.paused and backlog >= self.cfg.server.pause_backlog_bytes:
            self.paused = True
            log.warning(
                "spool backlog %d bytes: pausing reads on %d connections",
                backlog,
                len(self.connections),
            )
            self._pause_all()
        elif self.paused and backlog <= self.cfg.server.resume_backlog_bytes:
            self.paused = False
            log.info("spool backlog %d bytes: resuming reads", backlog)
            self._resume_all()

    def list_sessions(self, meter: str | None) -> list[dict[str, Any]]:
        out = []
        for p in self.connections.values():
            s = p.session
            if s is None:
                continue
            st = s.stats
            serials = [self.directory.serial(m) for m in st["meters"]]
            if meter and meter not in serials:
                continue
            out.append(
                {
                    "session_id": p.sid,
                    "worker": self.id,
                    "peer": s.peer,
                    "transport": "udp" if p.datagram else "tcp",
                    "framing": s.framing,
                    "meters": serials,
                    "connected_at": p.connected_at,
                    "last_rx": p.last_rx,
                    "bytes_in": st["bytes_in"],
                    "frames": st["frames"],
                    "pushes": st["pushes"],
                    "readings": st["readings"],
                    "errors": st["errors"],
                    "pending": s.pending,
                }
            )
        return out

    async def _store_link(self) -> None:
        path = str(self.cfg.control_socket)
        while not self.stop.is_set():
            try:
                ch = await ipc.connect(path, self._handle)
            except (FileNotFoundError, ConnectionRefusedError, OSError):
                await asyncio.sleep(0.5)
                continue
            ch.send({"t": "hello", "worker": self.id, "pid": os.getpid()})
            self.store = ch
            self.meters_full = True
            for outcome in self.jobs.unreported:
                ch.send(outcome)
            self.jobs.unreported.clear()
            # The store offers its queue again to a worker that (re)connects.
            self.jobs.forget()
            if self.lookups.keys:
                self.lookups.queue(next(iter(self.lookups.keys)))
            log.info("connected to the store")
            await ch.run()
            self.store = None
            if not self.stop.is_set():
                log.warning("lost the store; reconnecting")
                await asyncio.sleep(0.5)

    async def _report(self) -> None:
        while not self.stop.is_set():
            await asyncio.sleep(1.0)
            if self.touched or self.held:
                # Counters are written even when traffic stops; held records are tried
                # again every second.
                self.mark_dirty()
            self.admission.tell()
            try:
                self.spool.maybe_sync()
            except OSError as e:
                log.error("the spool cannot be synced: %s", e.strerror)
            if self.store is not None:
                if self.meters_full:
                    meters: dict[str, Any] = {"meters_all": sorted(self.online)}
                else:
                    meters = {"meters": self.meters_delta}
                self.meters_delta = {}
                self.meters_full = False
                try:
                    self.store.send(
                        {
                            "t": "stats",
                            **meters,
                            "worker": self.id,
                            "pid": os.getpid(),
                            "sessions": len(self.connections),
                            "meters_known": len(self.directory),
                            "totals": self.totals,
                            "rejects": self.rejects,
                            "untrusted": len(self.admission.untrusted),
                            "sources_banned": self.admission.guard.banned_now(time.time()),
                            "spooled_bytes": self.spool.appended_bytes,
                            "paused": self.paused,
                            "spool_error": self.spool_error,
                            "held_bytes": sum(len(r) for r in self.held),
                            "waiting_lookups": len(self.waiting),
                            "jobs": self.jobs.totals,
                            "jobs_waiting": len(self.jobs.offered),
                            "started": self.started,
                            "online": self.online_by_node(),
                        }
                    )
                except (ipc.ChannelClosed, ConnectionError):
                    self.meters_full = True  # the store's view is told again whole

    def online_by_node(self) -> dict[str, int]:
        """Meters identified on this worker's connections now, counted per grid node."""
        if self._online_counts is None:
            counts: dict[str, int] = {}
            node_of = self.node_of
            for serial in self.online:
                node = node_of.get(serial, "")
                counts[node] = counts.get(node, 0) + 1
            self._online_counts = counts
        return self._online_counts

    async def _sweep(self) -> None:
        """Closes connections that never spoke or went quiet."""
        srv = self.cfg.server
        while not self.stop.is_set():
            await asyncio.sleep(srv.sweep_interval)
            now = time.time()
            # A connection is trusted only once a meter is identified on it: until then
            # the handshake timeout holds, whatever frames arrive.
            late = now - srv.handshake_timeout
            for p in [p for p in self.admission.untrusted.values() if p.connected_at < late]:
                self.admission.on_bad(
                    p,
                    "handshake-timeout",
                    f"no meter identified within {srv.handshake_timeout:.0f} s",
                    counted=False,
                )
                p.close("handshake-timeout")
            for p in list(self.connections.values()):
                if p.session is not None and now - p.last_rx > srv.idle_timeout:
                    self.count_reject("idle-timeout")
                    p.close("idle-timeout")
            self.admission.guard.prune(now)
            self._expire_previous_keys(now)

    def _expire_previous_keys(self, now: float) -> None:
        """Forgets the keys meters had before a rotation once their grace is over."""
        for serial, until in list(self.previous_keys_until.items()):
            if until > now:
                continue
            del self.previous_keys_until[serial]
            meter = self.directory.find(serial=serial)
            if meter is not None and self.directory.meter_info(meter)[3]:
                self.directory.drop_keys(meter)

    # -- life cycle ------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stop.set)
        loop.add_signal_handler(signal.SIGINT, self.stop.set)
        srv = self.cfg.server
        listen: list[tuple[int, Literal["auto", "wrapper", "hdlc"]]] = [
            (srv.port, srv.framing)  # type: ignore[list-item]  # checked by the config loader
        ]
        if srv.hdlc_port:
            listen.append((srv.hdlc_port, "hdlc"))
        for port, framing in listen:
            server = await loop.create_server(
                lambda f=framing: MeterProtocol(self, f),  # type: ignore[misc]
                srv.host,
                port,
                reuse_port=True,
                backlog=4096,
            )
            self.servers.append(server)
        udp = ""
        if srv.udp:
            port = srv.udp_port or srv.port
            endpoint = UdpEndpoint(self, lambda: MeterProtocol(self, "wrapper", datagram=True))
            await loop.create_datagram_endpoint(lambda: endpoint, sock=udp_socket(srv, port))
            self.udp = endpoint
            udp = f", UDP {port}"
        log.info(
            "worker %d listening on %s port(s) %s%s",
            self.id,
            srv.host,
            ", ".join(str(p) for p, _ in listen),
            udp,
        )
        for coro in (self._store_link(), self._report(), self._sweep()):
            task = loop.create_task(coro)
            self._tasks.add(task)
        await self.stop.wait()
        await self.drain()

    async def drain(self) -> None:
        """Stop accepting, close connections, write everything, exit."""
        self.accepting = False
        for s in self.servers:
            s.close()
        for p in list(self.connections.values()):
            p.close("shutdown")
        if self.udp is not None and self.udp.transport is not None:
            self.udp.transport.close()
        await asyncio.sleep(0.05)  # let connection_lost run for the closed transports
        self.admission.tell(final=True)
        self.flush(final=True)
        if self.held:
            log.error(
                "stopping with %d bytes of records the full spool could not take: lost",
                sum(len(r) for r in self.held),
            )
        try:
            self.spool.close()
        except OSError as e:
            log.error("the spool could not be closed cleanly: %s", e.strerror)
        for t in [*self._tasks, *self.jobs.tasks]:
            t.cancel()
        if self.store is not None:
            # A clean exit: the store does not read the meters' profiles for it.
            with contextlib.suppress(ipc.ChannelClosed, ConnectionError, TimeoutError):
                self.store.send({"t": "bye", "worker": self.id})
                await asyncio.wait_for(self.store.writer.drain(), 2.0)
            self.store.close()
        log.info(
            "worker %d stopped: %d pushes, %d readings, %d events",
            self.id,
            self.totals["pushes"],
            self.totals["readings"],
            self.totals["events"],
        )


SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # Linux


def udp_socket(srv: ServerConfig, port: int) -> socket.socket:
    """The worker's UDP socket: shared by the workers (SO_REUSEPORT: a source address
    always reaches the same one), with a receive buffer for the meters' bursts."""
    family = socket.AF_INET6 if ":" in srv.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:  # past net.core.rmem_max where the worker may (CAP_NET_ADMIN)
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, srv.udp_receive_buffer)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, srv.udp_receive_buffer)
        got = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2  # Linux doubles it
        if got < srv.udp_receive_buffer:
            log.warning(
                "UDP receive buffer %d bytes, not %d: raise net.core.rmem_max",
                got,
                srv.udp_receive_buffer,
            )
        sock.bind((srv.host, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    with open(args[0]) as f:
        cfg = from_dict(json.load(f))
    worker_id = int(args[1])
    logs.setup(f"worker-{worker_id}", cfg.log.level, cfg.log.format)
    import uvloop

    from headend.server import tune_gc

    tune_gc()
    try:
        uvloop.run(Worker(cfg, worker_id).run())
    except HeadendError as e:
        log.error("worker %d cannot start: %s", worker_id, e)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
