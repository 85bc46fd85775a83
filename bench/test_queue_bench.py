"""The command queue under a day's backlog (`make bench`).

At 8 million meters a day of scheduled reads keeps hundreds of thousands of meters
waiting in the store's queue. An operator's command must not pay for them: submitting
one and dispatching it visits that meter only, whatever the backlog.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any, cast

import pytest

from headend.commands import COMMAND, SCHEDULED, CommandQueue
from headend.config import CommandsConfig
from headend.store.db import Store

pytestmark = pytest.mark.benchmark

BACKLOG = 300_000
READ = {"objects": [[1, "0.0.96.1.0.255", 2]]}


class NoStore:
    db = "ami"


@pytest.fixture(scope="module")
def backlog() -> tuple[CommandQueue, list[int]]:
    """A queue holding BACKLOG scheduled daily reads, all offered to two workers."""
    sent = [0]

    def send(worker: int, msg: dict[str, Any]) -> bool:
        sent[0] += 1
        return True

    q = CommandQueue(cast(Store, NoStore()), CommandsConfig(), send, lambda: [0, 1])

    async def fill() -> None:
        for i in range(BACKLOG):
            q.submit(
                f"W{i:09d}",
                "daily",
                {},
                requested_by="scheduler",
                reason="daily read",
                priority=SCHEDULED,
                node_id=f"T{i % 5000}",
                address="",
            )
        # Dispatch offers a slice of meters per pass (the loop stays free): as many
        # passes as the backlog takes.
        while len(q._dirty):
            q.dispatch()

    asyncio.run(fill())
    q.take_rows()
    assert sent[0] == 2 * BACKLOG
    return q, sent


def test_an_operator_command_under_a_backlog(backlog: Any, benchmark: Any, record: Any) -> None:
    q, sent = backlog
    serials = (f"C{i:09d}" for i in itertools.count())

    def one() -> None:
        q.submit(
            next(serials),
            "read",
            READ,
            requested_by="operator",
            reason="",
            priority=COMMAND,
            node_id="T1",
            address="",
        )
        q.dispatch()

    before = sent[0]
    benchmark.pedantic(one, rounds=2000, iterations=1)
    correct = sent[0] - before == 2 * 2000 and len(q.by_meter) == BACKLOG + 2000
    record(f"submit + dispatch, {BACKLOG:,} meters waiting", 1, "command", correct, benchmark)
    assert correct
