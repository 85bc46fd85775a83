"""The command queue's dispatch on its own (no store, no workers): what is offered to
whom, retries after their delay, expiry, and re-offers when workers change; and which
meters the scheduler finds due. The end-to-end behaviour against simulated meters is
in test_commands.py."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from pathlib import Path
from typing import Any, cast

import pytest

from headend.commands import (
    COLUMNS,
    COMMAND,
    SCHEDULED,
    Command,
    CommandQueue,
    expires_in_of,
)
from headend.config import CommandsConfig
from headend.errors import HeadendError
from headend.scheduler import Scheduler
from headend.store.db import Store, migrate


class Workers:
    """Workers as the queue sees them: ids, and the messages each was sent."""

    def __init__(self, *ids: int) -> None:
        self.ids = list(ids)
        self.sent: dict[int, list[dict[str, Any]]] = {i: [] for i in ids}
        self.full: set[int] = set()

    def send(self, worker: int, msg: dict[str, Any]) -> bool:
        if worker in self.full:
            return False
        self.sent.setdefault(worker, []).append(msg)
        return True

    def jobs(self, worker: int) -> list[str]:
        return [m["job"]["serial"] for m in self.sent[worker] if m["t"] == "job"]

    def clear(self) -> None:
        for msgs in self.sent.values():
            msgs.clear()


class NoStore:
    """Dispatch never touches the store (lookups and writes run beside it)."""

    db = "ami"


def queue(w: Workers, **cfg: Any) -> CommandQueue:
    settings = CommandsConfig(**{"retry_delay": 30.0, "attempts": 3, "expire": 3600.0, **cfg})
    return CommandQueue(cast(Store, NoStore()), settings, w.send, lambda: w.ids)


def submit(q: CommandQueue, serial: str, address: str = "", **kw: Any) -> str:
    kw.setdefault("priority", COMMAND)
    c = q.submit(
        serial,
        "read",
        {"objects": [[1, "0.0.96.1.0.255", 2]]},
        requested_by="test",
        reason="",
        node_id="T1",
        address=address,
        **kw,
    )
    return c.command_id


def test_offers_go_once_to_every_worker_and_listening_meters_to_one() -> None:
    w = Workers(0, 1, 2)
    q = queue(w)
    submit(q, "A")
    listening = [f"L{i}" for i in range(30)]
    for s in listening:
        submit(q, s, address=f"wrapper://127.1.0.1:{10_000 + len(s)}/1")
    q.dispatch()
    assert all("A" in w.jobs(i) for i in (0, 1, 2))
    # Each listening meter to exactly one worker, the same one on every pass, and the
    # three workers share them.
    owner = {s: [i for i in (0, 1, 2) if s in w.jobs(i)] for s in listening}
    assert all(len(o) == 1 for o in owner.values())
    assert len({o[0] for o in owner.values()}) == 3
    w.clear()
    q.dispatch()
    assert all(w.jobs(i) == [] for i in (0, 1, 2))  # nothing changed, nothing sent


def test_commands_are_offered_before_scheduled_reads_and_in_turn() -> None:
    w = Workers(0)
    q = queue(w)
    daily = submit(q, "A", priority=SCHEDULED)
    read = submit(q, "A")
    q.dispatch()
    assert [m["job"]["id"] for m in w.sent[0]] == [read]
    assert q.claim(daily, 0) == "later"
    assert q.claim(read, 0) == "ok"
    q.outcome(read, {"status": "done", "result": {}})
    q.dispatch()
    assert [m["job"]["id"] for m in w.sent[0] if m["t"] == "job"] == [read, daily]


def test_a_failed_attempt_is_offered_again_after_its_delay() -> None:
    w = Workers(0, 1)
    q = queue(w)
    cid = submit(q, "A")
    q.dispatch()
    assert q.claim(cid, 1) == "ok"
    assert w.sent[0][-1] == {"t": "job-cancel", "command": cid}
    w.clear()
    q.outcome(cid, {"status": "failed", "error": "no response"})
    c = q.commands[cid]
    assert (c.state, c.attempts) == ("queued", 1)
    q.dispatch(now=c.not_before - 1)
    assert w.jobs(0) == w.jobs(1) == []
    q.dispatch(now=c.not_before)
    assert w.jobs(0) == w.jobs(1) == ["A"]


def test_commands_expire_but_a_running_one_ends_by_its_outcome() -> None:
    w = Workers(0)
    q = queue(w)
    waiting = submit(q, "A", expires_in=60)
    running = submit(q, "B", expires_in=60)
    q.dispatch()
    assert q.claim(running, 0) == "ok"
    later = q.commands[waiting].expires_at + 1
    q.dispatch(now=later)
    assert waiting not in q.commands
    assert q.commands[running].state == "running"
    assert {"t": "job-cancel", "command": waiting} in w.sent[0]
    # Its time is up when it fails: expired, not retried, and why it failed is kept.
    q.commands[running].expires_at = 0.0
    q.outcome(running, {"status": "failed", "error": "no response"})
    assert running not in q.commands
    last = dict(zip(COLUMNS, [r for r in q.take_rows() if r[0] == running][-1], strict=True))
    assert (last["state"], last["error"]) == (
        "expired",
        "the meter did not connect in time (last attempt: no response)",
    )


def test_new_workers_full_channels_and_lost_workers_get_offers_again() -> None:
    w = Workers(0)
    q = queue(w)
    cid = submit(q, "A")
    w.full.add(0)
    q.dispatch()
    assert w.jobs(0) == []
    w.full.clear()
    q.dispatch()  # the offer that did not go is made on the next pass
    assert w.jobs(0) == ["A"]
    w.ids.append(1)
    q.dispatch()
    assert w.jobs(1) == ["A"]
    assert q.claim(cid, 1) == "ok"
    w.clear()
    q.worker_lost(1)  # restarted under the same id: the command runs again
    assert q.commands[cid].state == "queued"
    q.dispatch()
    assert w.jobs(0) == w.jobs(1) == ["A"]


def test_expired_entries_do_not_pile_up() -> None:
    w = Workers(0)
    q = queue(w)
    for i in range(5000):
        cid = submit(q, f"M{i}")
        q.dispatch()
        assert q.claim(cid, 0) == "ok"
        q.outcome(cid, {"status": "done", "result": {}})
    q.dispatch()
    assert q.commands == {}
    assert len(q._expiry) <= 1024


def test_the_scheduler_asks_the_longest_waiting_and_skips_waiting_commands(
    tmp_path: Path,
) -> None:
    """Due for a daily read: never asked, or last queued/done/failed over a day ago.
    Meters whose command still waits, or that never answer (their commands expire),
    do not take the batch from the others."""
    store = Store(f"chdb://{tmp_path / 'ch'}").connect()
    migrate(store)
    now = time.time()
    serials = ["NEW", "PEND", "OLDDONE", "RECENT", "EXPIRED", "SILENT"]
    store.insert_rows(
        "meters",
        ["serial", "kind", "role", "node_id", "updated_at"],
        [[s, "electricity", "consumer", "T1", dt.datetime.now(dt.UTC)] for s in serials],
    )
    history = {  # serial: [(state, hours ago), ...]
        "PEND": [("queued", 2)],
        "OLDDONE": [("queued", 30), ("running", 29.5), ("done", 29)],
        "RECENT": [("queued", 2), ("done", 1)],
        "EXPIRED": [("queued", 25), ("expired", 1)],
        "SILENT": [("queued", 3)],
    }
    rows = []
    for serial, states in history.items():
        c = Command(
            command_id=serial,
            serial=serial,
            kind="daily",
            args={},
            requested_by="scheduler",
            reason="",
            priority=SCHEDULED,
            requested_at=now - states[0][1] * 3600,
            expires_at=now,
        )
        for state, hours in states:
            c.state = state
            rows.append(c.row(now - hours * 3600))
    store.insert_rows("commands", COLUMNS, rows)
    q = CommandQueue(store, CommandsConfig(), Workers(0).send, lambda: [0])
    assert [r[0] for r in Scheduler(q, CommandsConfig())._due("daily", 1.0)] == [
        "NEW",
        "OLDDONE",
        "EXPIRED",
    ]
    small = CommandsConfig(schedule_batch=2)
    assert [r[0] for r in Scheduler(q, small)._due("daily", 1.0)] == ["NEW", "OLDDONE"]
    assert Scheduler(q, small)._due("clock", 0.0) == []


def test_a_full_pass_is_followed_by_the_next_once_the_queue_drains(tmp_path: Path) -> None:
    """Batches of a fleet too large for one pass follow each other as the meters
    answer, not once an hour; the queue holds at most about a batch and a half."""
    store = Store(f"chdb://{tmp_path / 'ch'}").connect()
    migrate(store)
    store.insert_rows(
        "meters",
        ["serial", "kind", "role", "node_id", "updated_at"],
        [[f"M{i}", "electricity", "consumer", "T1", dt.datetime.now(dt.UTC)] for i in range(10)],
    )
    cfg = CommandsConfig(schedule_batch=4, clock_check_days=0.0, backfill_days=0)
    w = Workers(0)
    q = CommandQueue(store, cfg, w.send, lambda: [0])
    sched = Scheduler(q, cfg)

    async def scenario() -> None:
        assert not sched.pass_due(60.0)
        assert sched.pass_due(cfg.schedule_interval)
        due = sched.candidates(time.time())
        assert sched.full
        assert sched.queue_due(due)["daily"] == 4
        assert q.scheduled_waiting == 4
        assert not sched.pass_due(10.0)  # the batch is still waiting
        await q.resolve()  # where the meters are reached (they connect in)
        q.dispatch()
        assert len(w.jobs(0)) == 4
        for m in w.sent[0][:2]:
            assert q.claim(m["job"]["id"], 0) == "ok"
            q.outcome(m["job"]["id"], {"status": "done", "result": {}})
        assert q.scheduled_waiting == 2
        assert sched.pass_due(10.0)  # half a batch left: the next one now
        # The waiting meters are not due again; four new ones are, and the last two
        # make a pass that is not full, after which passes keep the interval.
        store.insert_rows("commands", COLUMNS, q.take_rows())
        assert sched.queue_due(sched.candidates(time.time()))["daily"] == 4
        store.insert_rows("commands", COLUMNS, q.take_rows())
        assert len(sched.candidates(time.time())["daily"]) == 2
        assert not sched.full
        assert not sched.pass_due(10.0)

    asyncio.run(scenario())


def test_a_meters_queue_is_capped_and_kept_in_order() -> None:
    w = Workers(0)
    q = queue(w, max_pending_per_meter=5)
    # Scheduled reads first in time, then commands: commands still go first, each lane
    # in the order asked (an insertion per command, not a sort of the queue).
    sched = [submit(q, "A", priority=SCHEDULED) for _ in range(3)]
    cmds = [submit(q, "A") for _ in range(5)]
    assert q.by_meter["A"] == cmds + sched
    # The sixth command is refused with the reason; scheduled work is bounded by the
    # scheduler itself (one of a kind per meter), not by this cap.
    with pytest.raises(HeadendError, match=r"5 commands waiting.*max_pending_per_meter"):
        submit(q, "A")
    assert len(q.by_meter["A"]) == 8
    submit(q, "B")  # another meter is not affected


def test_numbers_are_range_checked_where_they_enter() -> None:
    q = queue(Workers(0))
    cfg = CommandsConfig()
    for bad in (1e308, float("inf"), float("nan"), -5, 0, "soon", True, cfg.max_expire + 1):
        with pytest.raises(HeadendError, match="expires_in"):
            expires_in_of({"expires_in": bad}, cfg)
    assert expires_in_of({"expires_in": "600"}, cfg) == 600.0
    assert expires_in_of({}, cfg) is None
    bad_args: list[tuple[str, Any]] = [
        ("read", {"objects": [[1e9, "0.0.96.1.0.255", 2]]}),
        ("read", {"objects": [[1, "0.0.96.1.0.255", 500]]}),
        ("read", {"objects": [[1, 42, 2]]}),
        ("read", {"objects": [[1, "0.0.96.1.0.255", 2]] * 300}),
        ("profile", {"from": 10**12, "to": 10**12 + 1}),
        ("profile", {"from": 2000, "to": 1000}),
        ("daily", {"to": -1}),
        ("read", ["not", "an", "object"]),
    ]
    for kind, args in bad_args:
        with pytest.raises(HeadendError):
            q.submit(kind, kind, args, requested_by="t", node_id="T1", address="")
    # Nothing refused stays behind.
    assert q.commands == {}
    assert q.take_rows() == []
