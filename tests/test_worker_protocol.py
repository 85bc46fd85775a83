"""A worker's protocol in process, under uvloop with asyncio's debug mode: bytes in
through `MeterProtocol` over a fake transport, the meter looked up through a fake
store channel answering as the store does, rows out in the worker's spool. No
processes, no sockets: what fails here is the protocol's own logic (pausing while a
meter is looked up, resuming, frames split anywhere, a malformed frame, the close),
and debug mode fails it on a coroutine never awaited or a callback that blocks."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

import pytest
import uvloop
from server_harness import START, Meter

from headend import codec
from headend.config import load
from headend.keys import load_master_key, wrap
from headend.server.worker import MeterProtocol, Worker
from headend.store import spool

TITLE = b"UZT" + (77).to_bytes(5, "big")


class FakeTransport:
    """The part of asyncio.Transport a meter connection uses."""

    def __init__(self) -> None:
        self.paused = False
        self.closed = False
        self.written: list[bytes] = []

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("10.1.2.3", 40001) if name == "peername" else default

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


class FakeStore:
    """Answers lookups as the store's (`Lookups.answer`) do: the meter, keys wrapped."""

    def __init__(self, answer: dict[str, Any]) -> None:
        self.answer = answer
        self.asked: list[dict[str, Any]] = []

    async def request(self, msg: dict[str, Any]) -> dict[str, Any]:
        self.asked.append(msg)
        await asyncio.sleep(0)
        return self.answer


def test_a_workers_protocol_in_process(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = load(None, tmp_path / "data")
    load_master_key(cfg, create=True)  # as `headend serve` does on first start
    ek, ak = os.urandom(16), os.urandom(16)
    meter = Meter("E1", "e1ph", title=TITLE, ek=ek, ak=ak)

    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        loop.set_debug(True)
        loop.slow_callback_duration = 0.5
        w = Worker(cfg, 0)
        m = w.master
        store = FakeStore(
            {
                "meters": [
                    {
                        "serial": "E1",
                        "model": "e1ph",
                        "node_id": "TR-1",
                        "system_title": TITLE,
                        "ek": wrap(m, ek, "ek", "E1"),
                        "ak": wrap(m, ak, "ak", "E1"),
                        "last_received": None,
                        "next_sent": None,
                    }
                ]
            }
        )
        w.store = store  # type: ignore[assignment]
        t = FakeTransport()
        p = MeterProtocol(w, "auto")
        p.connection_made(t)  # type: ignore[arg-type]
        each = [codec.wrap(meter.push(i, START), 1, 1) for i in range(4)]
        frames, first = b"".join(each), len(each[0])
        # The first frame cut in two: nothing yet, no lookup before a whole frame.
        p.data_received(frames[:7])
        assert not store.asked
        p.data_received(frames[7 : first + 3])
        # The meter is unknown: the connection stops being read while it is looked up.
        assert t.paused
        assert p.session is not None
        assert p.session.pending == 1
        for _ in range(100):
            if not t.paused:
                break
            await asyncio.sleep(0.01)
        assert not t.paused, "reading resumed once the store answered"
        assert [a["t"] for a in store.asked] == ["lookup"]
        assert store.asked[0]["titles"] == [TITLE]
        # The rest, then a frame of a wrapper version that does not exist: refused.
        p.data_received(frames[first + 3 :])
        p.data_received(codec.wrap(meter.push(4, START), 1, 1))
        p.data_received(b"\x00\x02\x00\x01\x00\x01\x00\x03\xff\xff\xff")
        await asyncio.sleep(0)  # the flush the first rows scheduled
        stats = p.session.stats
        p.close("test-over")
        assert t.closed
        p.connection_lost(None)
        w.flush(final=True)
        w.spool.close()
        if w.lookups.task is not None:
            await w.lookups.task
        return {"stats": stats, "rejects": dict(w.sink.take_stats()["rejects"]), "w": w}

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        out = uvloop.run(main())
    assert not [r for r in caplog.records if r.name == "asyncio"], caplog.text
    assert out["stats"]["pushes"] == 5, out["stats"]
    assert out["stats"]["errors"] == 1
    # In the spool: the five pushes' readings (6 registers each), the session's rows.
    rows: dict[int, int] = {}
    for segs in spool.segments(cfg.spool_dir).values():
        for seg in segs:
            for rec in spool.read_records(seg, 0):
                rows[rec.table] = rows.get(rec.table, 0) + rec.rows
    assert rows[spool.READINGS] == 5 * meter.registers
    assert rows[spool.SESSIONS] == 2  # connect, disconnect
