"""Nothing lost, nothing doubled: kill -9 of workers and of the store, a frozen store,
a full restart and a drain, each checked row by row in ClickHouse.

The durability contract: a push is safe once its worker appended it to the spool
(every event-loop turn). What a killed worker had read but not yet appended dies with
its connections (meters' load profiles backfill such gaps); everything spooled reaches
ClickHouse exactly once, whatever dies when.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from server_harness import Server, free_port, keyed, running

from headend.store import spool

N = 5
PER_PHASE = 4
REGISTERS = 6


def spooled_readings(data: Path) -> int:
    """Readings appended to the spool and not yet acknowledged by the store."""
    total = 0
    for segs in spool.segments(data / "spool").values():
        for seg in segs:
            done = spool.read_ack(seg).done
            total += sum(r.rows for r in spool.read_records(seg, done) if r.table == spool.READINGS)
    return total


def no_duplicates(srv: Server) -> None:
    n, distinct = srv.sql("SELECT count(), uniqExact(meter, obis, ts) FROM ami.readings")[0]
    assert n == distinct, f"{n - distinct} duplicated readings"


def wait_workers(srv: Server, pids: set[int], timeout: float = 60) -> None:
    """Until two workers other than `pids` are connected to the store."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            st = srv.admin("status")
        except Exception:
            time.sleep(0.2)
            continue
        live = [w for w in st["workers"] if w["connected"] and w["pid"] not in pids]
        if len(live) == 2:
            return
        time.sleep(0.2)
    raise AssertionError("workers were not restarted")


def test_worker_kill_9_loses_nothing_spooled(tmp_path: Path) -> None:
    meters = [keyed(f"K{i}", 100 + i) for i in range(N)]
    with running(tmp_path, meters) as srv:
        conns = [srv.pusher() for _ in meters]
        # Phase 1: every meter is looked up and stored.
        for i in range(PER_PHASE):
            for m, c in zip(meters, conns, strict=True):
                assert c.send(c.frame(m.push(i)))
        srv.wait_for("SELECT count() FROM ami.readings", N * PER_PHASE * REGISTERS)
        # Rows become queryable a moment before the store records them as done.
        deadline = time.monotonic() + 10
        while spooled_readings(srv.data) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert spooled_readings(srv.data) == 0
        pids = {srv.pid_of("0"), srv.pid_of("1")}
        store = srv.pid_of("store")
        # Phase 2: freeze the store, push on the same connections (the meters are known
        # to their workers), and wait until the readings sit in the spool only.
        os.kill(store, signal.SIGSTOP)
        try:
            for i in range(PER_PHASE, 2 * PER_PHASE):
                for m, c in zip(meters, conns, strict=True):
                    assert c.send(c.frame(m.push(i)))
            deadline = time.monotonic() + 20
            while (
                spooled_readings(srv.data) < N * PER_PHASE * REGISTERS
                and time.monotonic() < deadline
            ):
                time.sleep(0.05)
            assert spooled_readings(srv.data) == N * PER_PHASE * REGISTERS
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
        finally:
            os.kill(store, signal.SIGCONT)
        for c in conns:
            c.close()
        wait_workers(srv, pids)
        # Phase 3: the meters reconnect and go on.
        conns = [srv.pusher() for _ in meters]
        for i in range(2 * PER_PHASE, 3 * PER_PHASE):
            for m, c in zip(meters, conns, strict=True):
                assert c.send(c.frame(m.push(i)))
        for c in conns:
            c.close()
        srv.wait_for("SELECT count() FROM ami.readings", 3 * N * PER_PHASE * REGISTERS)
        no_duplicates(srv)
        per_meter = srv.sql("SELECT meter, count() FROM ami.readings GROUP BY meter ORDER BY meter")
        assert per_meter == [[m.serial, 3 * PER_PHASE * REGISTERS] for m in meters]
        assert "exited with status -9" in srv.log.read_text()


def test_store_killed_and_frozen_while_meters_push(tmp_path: Path) -> None:
    meters = [keyed(f"S{i}", 200 + i) for i in range(N)]
    with running(tmp_path, meters) as srv:
        conns = [srv.pusher() for _ in meters]
        sent = [0] * N
        failed: list[str] = []

        def push(rounds: int) -> None:
            # Failures are collected, not asserted, here: this also runs in a thread.
            for _ in range(rounds):
                for k, (m, c) in enumerate(zip(meters, conns, strict=True)):
                    if not c.send(c.frame(m.push(sent[k]))):
                        failed.append(f"{m.serial} push {sent[k]}")
                    sent[k] += 1
                time.sleep(0.01)

        push(2)
        srv.wait_for("SELECT count() FROM ami.readings", N * 2 * REGISTERS)
        # kill -9 the store while pushes continue; the supervisor restarts it.
        store = srv.pid_of("store")
        t = threading.Thread(target=push, args=(30,))
        t.start()
        time.sleep(0.1)
        os.kill(store, signal.SIGKILL)
        t.join()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):  # the store is restarting
                if srv.pid_of("store") != store:
                    break
            time.sleep(0.2)
        # Freeze the store (unreachable) for a while; workers keep spooling.
        store = srv.pid_of("store")
        os.kill(store, signal.SIGSTOP)
        try:
            push(30)
            time.sleep(3)
        finally:
            os.kill(store, signal.SIGCONT)
        for c in conns:
            c.close()
        assert failed == [], "meter connections broke while only the store was down"
        total = sum(sent)
        srv.wait_for("SELECT count() FROM ami.readings", total * REGISTERS, timeout=60)
        no_duplicates(srv)
        assert "store exited with status -9" in srv.log.read_text()


def test_counters_survive_a_restart_and_drain_exits_cleanly(tmp_path: Path) -> None:
    m = keyed("R1", 300)
    srv = Server(tmp_path, port=free_port(), meters=[m])
    srv.setup()
    srv.start()
    p = srv.pusher()
    frames = [p.frame(m.push(i)) for i in range(3)]
    p.send(b"".join(frames))
    p.close()
    srv.wait_for("SELECT count() FROM ami.readings", 3 * REGISTERS)
    # A drain through the admin socket: the supervisor exits 0.
    srv.cli("ctl", "drain")
    assert srv.proc is not None
    assert srv.proc.wait(120) == 0
    srv.proc = None
    # After a full restart the old frames are replays.
    srv.start()
    p = srv.pusher()
    p.send(frames[0] + frames[2] + p.frame(m.push(3)))
    p.close()
    srv.wait_for("SELECT count() FROM ami.readings", 4 * REGISTERS)
    srv.wait_for(
        # One row per source, reason and meter per interval, the count first in its detail.
        "SELECT sum(toUInt64OrZero(splitByChar(' ', detail)[1])) FROM ami.events "
        "WHERE name = 'reject:replayed-invocation-counter' AND meter = 'R1'",
        2,
    )
    assert srv.stop() == 0
    # With the server stopped, `headend sql` opens the store itself.
    r = srv.cli("sql", "SELECT count() FROM ami.readings", "--format", "csv")
    assert r.stdout.splitlines()[-1] == str(4 * REGISTERS)


def test_sigterm_flushes_everything(tmp_path: Path) -> None:
    m = keyed("T1", 400)
    with running(tmp_path, [m]) as srv:
        p = srv.pusher()
        p.send(b"".join(p.frame(m.push(i)) for i in range(50)))
        # Stop at once: what the workers read is spooled on the way out, and the store
        # ingests it before exiting.
        time.sleep(0.3)
        assert srv.proc is not None
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(120) == 0
        srv.proc = None
        p.close()
        r = srv.cli("sql", "SELECT count() FROM ami.readings", "--format", "csv")
        stored = int(r.stdout.splitlines()[-1])
        assert stored == 50 * REGISTERS
        assert spooled_readings(srv.data) == 0


@pytest.mark.slow
def test_store_unreachable_for_minutes(tmp_path: Path) -> None:
    """The store frozen for two minutes while meters keep pushing (opt-in: -m slow)."""
    meters = [keyed(f"U{i}", 600 + i) for i in range(N)]
    with running(tmp_path, meters) as srv:
        conns = [srv.pusher() for _ in meters]
        for m, c in zip(meters, conns, strict=True):
            assert c.send(c.frame(m.push(0)))
        srv.wait_for("SELECT count() FROM ami.readings", N * REGISTERS)
        deadline = time.monotonic() + 10
        while spooled_readings(srv.data) and time.monotonic() < deadline:
            time.sleep(0.05)
        store = srv.pid_of("store")
        os.kill(store, signal.SIGSTOP)
        sent = 1
        try:
            t_end = time.monotonic() + 120
            while time.monotonic() < t_end:
                for m, c in zip(meters, conns, strict=True):
                    assert c.send(c.frame(m.push(sent)))
                sent += 1
                time.sleep(1.0)
            assert spooled_readings(srv.data) == (sent - 1) * N * REGISTERS
        finally:
            os.kill(store, signal.SIGCONT)
        for c in conns:
            c.close()
        srv.wait_for("SELECT count() FROM ami.readings", sent * N * REGISTERS, timeout=120)
        no_duplicates(srv)
