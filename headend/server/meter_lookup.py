"""A worker's side of the meter lookups: a session that meets a meter the worker does
not know queues its key (system title or serial); the keys gathered for
`lookup_batch_delay` go to the store in one request (`headend/server/lookups.py` answers
it); the meters that come back go into the Rust directory, keys unwrapped there, and
the sessions that waited run their queued APDUs again. While the store is away the keys
are kept and asked again a second later."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

from headend.codec import Directory, MasterKey
from headend.config import Config
from headend.errors import HeadendError
from headend.server import ipc

log = logging.getLogger("headend.worker")

LookupKey = tuple[str, bytes]  # ("t", system title) or ("s", serial)


class Host(Protocol):
    """What the lookups need of their worker (`headend.server.worker.Worker`)."""

    cfg: Config
    store: ipc.Channel | None
    directory: Directory
    master: MasterKey
    # Each known meter's grid node, and until when its previous keys are kept.
    node_of: dict[str, str]
    previous_keys_until: dict[str, float]

    def meters_moved(self) -> None: ...
    def retry_waiting(self, keys: set[LookupKey]) -> None: ...
    def mark_dirty(self) -> None: ...


def _pair(v: Any) -> tuple[bytes, bytes] | None:
    """A (EK, AK) pair from a lookup reply (a list after the IPC), or None."""
    return (bytes(v[0]), bytes(v[1])) if v else None


class MeterLookup:
    def __init__(self, host: Host) -> None:
        self.host = host
        self.keys: set[LookupKey] = set()
        self.task: asyncio.Task[None] | None = None

    def queue(self, key: LookupKey) -> None:
        self.keys.add(key)
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        await asyncio.sleep(self.host.cfg.server.lookup_batch_delay)
        while self.keys:
            keys, self.keys = self.keys, set()
            try:
                await self.ask(keys)
            except (ipc.ChannelClosed, ConnectionError, TimeoutError):
                # The store is away: keep the keys and try again shortly; sessions hold
                # their APDUs meanwhile (bounded per session).
                self.keys |= keys
                await asyncio.sleep(1.0)

    async def ask(self, keys: set[LookupKey]) -> None:
        if self.host.store is None:
            raise ConnectionError("no store")
        titles = [k[1] for k in keys if k[0] == "t"]
        serials = [k[1] for k in keys if k[0] == "s"]
        reply = await self.host.store.request({"t": "lookup", "titles": titles, "serials": serials})
        self.install(reply)
        self.host.retry_waiting(keys)
        self.host.mark_dirty()

    def install(self, reply: dict[str, Any]) -> None:
        """Puts looked-up meters (and the store's "unknown" answers) into the directory."""
        until = int(time.time() + self.host.cfg.server.unknown_meter_ttl)
        for m in reply.get("meters", []):
            node = m.get("node_id") or ""
            if self.host.node_of.get(m["serial"]) != node:  # new, or moved by a re-import
                self.host.node_of[m["serial"]] = node
                self.host.meters_moved()
            try:
                self.host.directory.add_meter(
                    m["serial"],
                    m["model"],
                    m["system_title"],
                    m["ek"],
                    m["ak"],
                    self.host.master if m["ek"] or m.get("password") else None,
                    m["last_received"],
                    m["next_sent"],
                    wrapped_password=m.get("password"),
                    wrapped_kek=m.get("kek"),
                    wrapped_previous=_pair(m.get("previous")),
                    wrapped_pending=_pair(m.get("pending")),
                    ct_ratio=float(m.get("ct_ratio", 1.0)),
                    vt_ratio=float(m.get("vt_ratio", 1.0)),
                )
                if m.get("previous"):
                    self.host.previous_keys_until[m["serial"]] = float(m["previous_until"])
            except HeadendError as e:
                # A wrapped key that does not unwrap (another master key) or a model
                # this worker lacks: the meter cannot be served; say which.
                log.error("meter %s cannot be loaded: %s", m["serial"], e)
                if m["system_title"]:
                    self.host.directory.mark_unknown(until=until, system_title=m["system_title"])
                self.host.directory.mark_unknown(until=until, serial=m["serial"].encode())
        for t in reply.get("unknown_titles", []):
            self.host.directory.mark_unknown(until=until, system_title=t)
        for s in reply.get("unknown_serials", []):
            self.host.directory.mark_unknown(until=until, serial=s)
