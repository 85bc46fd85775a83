"""The commands a worker runs for the store: the store offers a meter's next command to
every worker, and the worker on whose connection the meter identified itself (now, or
when it next connects; on UDP, within its wake window) claims it, associates as the
DLMS client on that connection, runs the job (read, switch, clock, profile, daily read,
key rotation, firmware) and reports the outcome. A listening meter is dialled for its
jobs. At most `max_associations_per_worker` run at once, commands before scheduled
reads (`PriorityGate`)."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from typing import Any, Protocol

from headend import firmware
from headend.codec import Directory, MasterKey
from headend.config import Config
from headend.errors import HeadendError
from headend.firmware import Image
from headend.server import ipc
from headend.server.client import ClientError, MeterClient, execute
from headend.server.firmware import image_for, upgrade
from headend.server.rekey import StoreKeys, rekey

log = logging.getLogger("headend.worker")


class Host(Protocol):
    """What the jobs need of their worker (`headend.server.worker.Worker`)."""

    id: int
    cfg: Config
    directory: Directory
    master: MasterKey
    key_grace: float
    models: dict[str, dict[str, Any]]
    previous_keys_until: dict[str, float]
    # Where each identified meter is: (its connection, directory id, link address).
    online: dict[str, tuple[Any, int, int]]
    store: ipc.Channel | None

    async def dial(self, serial: str, address: str) -> tuple[Any, int, int]: ...
    def client(self, proto: Any, meter: int, source: int) -> MeterClient: ...


class PriorityGate:
    """At most `n` holders; waiters with a lower priority number go first."""

    def __init__(self, n: int) -> None:
        self.free = n
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    async def acquire(self, priority: int) -> None:
        if self.free > 0 and not self._waiting:
            self.free -= 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (priority, next(self._seq), fut))
        await fut

    def release(self) -> None:
        while self._waiting:
            _, _, fut = heapq.heappop(self._waiting)
            if not fut.done():
                fut.set_result(None)
                return
        self.free += 1


class Jobs:
    """The jobs the store offered this worker, by meter, and the ones running."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.offered: dict[str, dict[str, Any]] = {}
        self.wanted: dict[str, list[str]] = {}
        self.busy: set[str] = set()
        self.gate = PriorityGate(host.cfg.commands.max_associations_per_worker)
        self.totals: dict[str, int] = {"done": 0, "failed": 0}
        # Firmware images read for upgrades (a few, by SHA-256).
        self.images: dict[str, Image] = {}
        # Outcomes the store could not take (it was away): sent when it is back.
        self.unreported: list[dict[str, Any]] = []
        self.tasks: set[asyncio.Task[Any]] = set()

    def forget(self) -> None:
        """Drops what was offered: the store offers its queue again on reconnecting."""
        self.offered.clear()
        self.wanted.clear()

    def offer(self, job: dict[str, Any]) -> None:
        """The store offers a job: run it if the meter is here, else wait for it."""
        jid = str(job["id"])
        if jid in self.offered:
            return
        self.offered[jid] = job
        self.wanted.setdefault(str(job["serial"]), []).append(jid)
        where = self.host.online.get(str(job["serial"]))
        if (where is not None and self.awake(where[0])) or job.get("address"):
            self.start(str(job["serial"]))

    def awake(self, proto: Any) -> bool:
        """Whether the meter(s) on `proto` can be asked now: always on a connection; on
        UDP, within `wake_window` of the peer's last datagram."""
        return not proto.datagram or time.time() - proto.last_rx <= self.host.cfg.server.wake_window

    def woke(self, proto: Any) -> None:
        """A datagram came: the jobs waiting for its meters start (their window)."""
        if not self.wanted or proto.session is None:
            return
        for m in proto.session.stats["meters"]:
            serial = self.host.directory.serial(m)
            if serial in self.wanted and self.host.online.get(serial, (None,))[0] is proto:
                self.start(serial)

    def drop(self, jid: str) -> None:
        job = self.offered.pop(jid, None)
        if job is None:
            return
        ids = self.wanted.get(job["serial"], [])
        if jid in ids:
            ids.remove(jid)
        if not ids:
            self.wanted.pop(job["serial"], None)

    def start(self, serial: str) -> None:
        if serial in self.busy:
            return
        self.busy.add(serial)
        task = asyncio.get_running_loop().create_task(self._run_for(serial))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run_for(self, serial: str) -> None:
        """Runs the jobs offered for `serial` while its meter is connected here, or,
        for a listening meter, over a connection to it that the jobs share."""
        try:
            while self.wanted.get(serial) and self.host.store is not None:
                jid = self.wanted[serial][0]
                job = self.offered[jid]
                if serial not in self.host.online and not job.get("address"):
                    break
                if serial in self.host.online and not self.awake(self.host.online[serial][0]):
                    break  # asleep (a meter on UDP): its next datagram starts the jobs
                try:
                    answer = await self.host.store.request(
                        {"t": "claim", "command": jid, "worker": self.host.id}
                    )
                except (ipc.ChannelClosed, ConnectionError, TimeoutError):
                    return
                verdict = answer.get("claim")
                if verdict == "later":
                    await asyncio.sleep(1.0)
                    continue
                self.drop(jid)
                if verdict != "ok":
                    continue
                self.send_outcome(await self._run_job(serial, job))
        finally:
            self.busy.discard(serial)
            where = self.host.online.get(serial)
            if where is not None and where[0].dialled:
                where[0].close("jobs-done")

    async def _run_job(self, serial: str, job: dict[str, Any]) -> dict[str, Any]:
        started = time.monotonic()
        out: dict[str, Any] = {"t": "job-result", "command": job["id"]}
        client: MeterClient | None = None
        await self.gate.acquire(int(job.get("priority", 0)))
        try:
            where = self.host.online.get(serial)
            if where is None and job.get("address"):
                where = await self.host.dial(serial, str(job["address"]))
            if where is None:
                return {**out, "status": "failed", "error": "meter disconnected before the job ran"}
            proto, meter, source = where
            client = self.host.client(proto, meter, source)
            model = self.host.models.get(client.model, {})
            if job["kind"] == "rekey":
                result = await rekey(
                    client,
                    self.host.directory,
                    self.host.master,
                    self._keys_to_store(job),
                    self.host.key_grace,
                )
                # The keys it had are kept for its late frames, here as everywhere.
                self.host.previous_keys_until[serial] = time.time() + self.host.key_grace
            elif job["kind"] == "firmware":
                args = job.get("args") or {}
                image = image_for(self.images, self._load_image, str(args.get("image")))
                result = await upgrade(client, image, args)
            else:
                result = await execute(client, job, model.get("objects", {}), model)
                if isinstance(result.get("rows"), list):
                    # A meter on instrument transformers: primary values, as its pushes.
                    self.host.directory.to_primary(meter, result["rows"])
            out.update(status="done", result=result)
        except ClientError as e:
            out.update(status="failed", error=str(e), retry=e.retry)
        except HeadendError as e:
            out.update(status="failed", error=f"{type(e).__name__}: {e}")
        finally:
            self.gate.release()
            if client is not None:
                out["association"] = client.mechanism
        out["elapsed"] = time.monotonic() - started
        self.totals[out["status"]] += 1
        log.info(
            "job %s %s for meter %s (%s): %s %s",
            job["id"],
            job["kind"],
            serial,
            out.get("association", "-"),
            out["status"],
            out.get("error", ""),
        )
        return out

    def _load_image(self, sha: str) -> Image:
        return firmware.load(self.host.cfg.firmware_dir, sha)

    def _keys_to_store(self, job: dict[str, Any]) -> StoreKeys:
        """How a rotation tells the store of a change of the meter's keys: it waits for
        the store to have recorded it before telling the meter anything."""

        async def tell(change: dict[str, Any]) -> None:
            if self.host.store is None:
                raise ClientError("the store is away: the meter's keys are left as they are")
            msg = {
                "t": "keys",
                "serial": job["serial"],
                "command": job["id"],
                "fingerprint": self.host.master.fingerprint,
                **change,
            }
            try:
                reply = await self.host.store.request(msg)
            except (ipc.ChannelClosed, ConnectionError, TimeoutError) as e:
                raise ClientError(f"the store did not record the keys ({e})") from None
            if reply.get("error"):
                raise ClientError(f"the store did not record the keys: {reply['error']}")

        return tell

    def send_outcome(self, outcome: dict[str, Any]) -> None:
        if self.host.store is not None:
            try:
                self.host.store.send(outcome)
                return
            except (ipc.ChannelClosed, ConnectionError):
                pass
        self.unreported.append(outcome)
