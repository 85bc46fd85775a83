"""Messages between the head-end's processes: msgpack maps, each prefixed with its
length (4 bytes, big-endian), over a Unix socket in the data directory.

A :class:`Channel` is symmetric: either end sends notifications (``send``) or requests
(``request``, answered by a message with the same ``id``); incoming requests and
notifications go to a handler. Data between workers and the store does not travel
here (the spool carries it); this carries control: meter lookups, stats, drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack

log = logging.getLogger("headend.ipc")

MAX_MESSAGE = 256 << 20

Message = dict[str, Any]
Handler = Callable[["Channel", Message], Awaitable[Message | None]]


class ChannelClosed(ConnectionError):
    """The other process went away."""


class Channel:
    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handler: Handler
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.handler = handler
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Message]] = {}
        self.closed = asyncio.Event()
        self.info: dict[str, Any] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def send(self, msg: Message) -> None:
        if self.writer.is_closing():
            raise ChannelClosed("channel closed")
        data = msgpack.packb(msg, use_bin_type=True)
        self.writer.write(len(data).to_bytes(4, "big") + data)

    async def request(self, msg: Message, timeout: float = 30.0) -> Message:
        mid = next(self._ids)
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._waiting[mid] = fut
        try:
            self.send({**msg, "id": mid})
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._waiting.pop(mid, None)

    async def run(self) -> None:
        """Reads until the other end closes; dispatches replies and handler calls."""
        try:
            while True:
                head = await self.reader.readexactly(4)
                n = int.from_bytes(head, "big")
                if n > MAX_MESSAGE:
                    log.error("message of %d bytes refused; closing the channel", n)
                    break
                msg = msgpack.unpackb(await self.reader.readexactly(n), raw=False)
                if msg.get("t") == "reply":
                    fut = self._waiting.get(msg.get("id", -1))
                    if fut is not None and not fut.done():
                        fut.set_result(msg)
                    continue
                task = asyncio.create_task(self._dispatch(msg))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.closed.set()
            for fut in self._waiting.values():
                if not fut.done():
                    fut.set_exception(ChannelClosed("channel closed"))
            with contextlib.suppress(Exception):
                self.writer.close()

    async def _dispatch(self, msg: Message) -> None:
        try:
            reply = await self.handler(self, msg)
        except Exception:
            log.exception("handling %s failed", msg.get("t"))
            reply = {"error": "internal error"} if "id" in msg else None
        if reply is not None and "id" in msg:
            with contextlib.suppress(ChannelClosed, ConnectionError):
                self.send({**reply, "t": "reply", "id": msg["id"]})

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


async def connect(path: str, handler: Handler) -> Channel:
    reader, writer = await asyncio.open_unix_connection(path, limit=MAX_MESSAGE)
    return Channel(reader, writer, handler)
