"""Meters on UDP: the wrapper over UDP (IEC 62056-47), as NB-IoT and other datagram
networks carry DLMS/COSEM.

Each source address (host, port) is one peer: a `MeterProtocol` with its own Rust
session, exactly as a TCP connection, so identification, deciphering, replay checks,
the spool, the per-source limits and commands work unchanged. What differs lives here:

- a datagram is fed as one (`Session.feed(..., datagram=True)`): a frame cut short by
  the network is refused alone, never joined to the next datagram;
- replies go back to the peer's address (`sendto`);
- "pausing" a peer (its meter is being looked up, the spool is full) keeps its next
  datagrams here, up to `MAX_HELD`; beyond, they are dropped and counted
  (`udp-overflow`): UDP has no back-pressure, and a meter sends its push again when
  it gets no confirmation in its own time;
- a peer ends when the worker's sweep finds it idle (`idle_timeout`; before a meter is
  identified, `handshake_timeout`), or when the worker drains. Workers share the port
  (SO_REUSEPORT): the kernel sends a source address to the same worker every time.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from headend.config import Config

log = logging.getLogger("headend.udp")


class Peer(Protocol):
    """What a UDP peer's protocol is to this module (the worker's `MeterProtocol`)."""

    closed: bool

    def connection_made(self, transport: Any) -> None: ...
    def data_received(self, data: bytes) -> None: ...
    def connection_lost(self, exc: BaseException | None) -> None: ...


class Host(Protocol):
    """What the worker is to this module."""

    cfg: Config
    accepting: bool
    connections: dict[int, Any]

    def count_reject(self, kind: str) -> None: ...


Address = tuple[str, int]
# Datagrams one paused peer may have waiting.
MAX_HELD = 64


class PeerTransport:
    """What `MeterProtocol` needs of a transport, for one UDP peer."""

    def __init__(self, endpoint: UdpEndpoint, addr: Address, proto: Peer) -> None:
        self.endpoint = endpoint
        self.addr = addr
        self.proto = proto
        self.paused = False
        self.closing = False
        self.held: deque[bytes] = deque()

    # -- asyncio.Transport, the part MeterProtocol and the DLMS client use -------------

    def write(self, data: bytes) -> None:
        if not self.closing and self.endpoint.transport is not None:
            self.endpoint.transport.sendto(data, self.addr)

    def close(self) -> None:
        if self.closing:
            return
        self.closing = True
        self.held.clear()
        self.endpoint.forget(self.addr, self)
        asyncio.get_running_loop().call_soon(self.proto.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False
        while self.held and not self.paused and not self.closing:
            self.proto.data_received(self.held.popleft())

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self.addr
        if name == "sockname" and self.endpoint.transport is not None:
            return self.endpoint.transport.get_extra_info("sockname")
        return default

    # -- datagrams -------------------------------------------------------------------

    def deliver(self, data: bytes) -> None:
        if self.closing:
            return
        if self.paused:
            if len(self.held) >= MAX_HELD:
                self.endpoint.worker.count_reject("udp-overflow")
                return
            self.held.append(data)
            return
        self.proto.data_received(data)


class UdpEndpoint(asyncio.DatagramProtocol):
    """One worker's UDP socket: datagrams to their peers' sessions (`make_peer`: a new
    peer's protocol, a datagram one)."""

    def __init__(self, worker: Host, make_peer: Callable[[], Peer]) -> None:
        self.worker = worker
        self.make_peer = make_peer
        self.transport: asyncio.DatagramTransport | None = None
        self.peers: dict[Address, PeerTransport] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        key: Address = (str(addr[0]), int(addr[1]))
        peer = self.peers.get(key)
        if peer is None:
            peer = self._open(key)
            if peer is None:
                return
        peer.deliver(data)

    def _open(self, addr: Address) -> PeerTransport | None:
        w = self.worker
        if not w.accepting:
            return None
        if len(w.connections) >= w.cfg.server.max_connections_per_worker:
            w.count_reject("udp-peers-full")
            return None
        proto = self.make_peer()
        peer = PeerTransport(self, addr, proto)
        self.peers[addr] = peer
        proto.connection_made(peer)
        if proto.closed:  # refused by the per-source limits
            self.peers.pop(addr, None)
            return None
        return peer

    def forget(self, addr: Address, peer: PeerTransport) -> None:
        if self.peers.get(addr) is peer:
            del self.peers[addr]

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable for a reply to a peer that went away, and the like.
        log.debug("UDP error: %s", exc)

    def connection_lost(self, exc: Exception | None) -> None:
        for peer in list(self.peers.values()):
            peer.close()
        self.transport = None
