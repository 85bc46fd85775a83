"""A WAN link that can be cut: a TCP relay on loopback between a region's NATS server
and the centre's leaf-node port.

`cut()` drops every connection through it at once (both directions, as a severed
line does: the peers see resets) and refuses new ones until `heal()`. It runs its
own event loop in a thread, so a test or the cluster driver just calls it. Bytes and
connections are counted, so a run can report what crossed the link.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass, field


@dataclass
class LinkStats:
    connections: int = 0
    refused: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    cuts: int = 0


@dataclass
class Link:
    """Relays 127.0.0.1:`port` (0: any free port) to `target`."""

    target: tuple[str, int]
    port: int = 0
    stats: LinkStats = field(default_factory=LinkStats)

    def __post_init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._up = threading.Event()
        self._open = True
        self._pairs: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._run, name="linkcut", daemon=True)
        self._thread.start()
        if not self._up.wait(10):
            raise RuntimeError("the link relay did not start")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._client, "127.0.0.1", self.port)
        )
        self.port = int(server.sockets[0].getsockname()[1])
        self._up.set()
        self._loop.run_forever()
        server.close()
        self._loop.run_until_complete(server.wait_closed())
        self._loop.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._open:
            self.stats.refused += 1
            _abort(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            _abort(writer)
            return
        self.stats.connections += 1
        self._pairs.update((writer, up_writer))
        try:
            await asyncio.gather(
                self._pipe(reader, up_writer, up=True),
                self._pipe(up_reader, writer, up=False),
            )
        finally:
            for w in (writer, up_writer):
                self._pairs.discard(w)
                _abort(w)

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter, *, up: bool) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await r.read(65536):
                if up:
                    self.stats.bytes_up += len(data)
                else:
                    self.stats.bytes_down += len(data)
                w.write(data)
                await w.drain()
        _abort(w)

    def _set(self, open_: bool) -> None:
        def apply() -> None:
            self._open = open_
            if not open_:
                self.stats.cuts += 1
                for w in list(self._pairs):
                    _abort(w)
                self._pairs.clear()

        self._loop.call_soon_threadsafe(apply)

    def cut(self) -> None:
        self._set(False)

    def heal(self) -> None:
        self._set(True)

    @property
    def is_open(self) -> bool:
        return self._open

    def close(self) -> None:
        self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


def _abort(w: asyncio.StreamWriter) -> None:
    """Closes at once with a reset, as a cut line does (no orderly FIN)."""
    transport = w.transport
    if transport is not None and not transport.is_closing():
        transport.abort()
