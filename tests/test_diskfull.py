"""A full disk under the spool: the workers stop reading meters (TCP holds them back),
say so once and in the status, lose nothing, and go on when space returns. The spool
lives on a small tmpfs the test mounts (skipped where mounting is not allowed)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from server_harness import Server, free_port, keyed

M = keyed("D1", 800)
PUSHES = 400


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[None]:
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if r.returncode != 0:
        # Mounting needs CAP_SYS_ADMIN, which a CI runner may not grant: without a small
        # filesystem of its own the test cannot fill a disk safely, so it says why it
        # did not run rather than fill the machine's disk (it runs here, as root).
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode})")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path, leave: int) -> Path:
    """A file taking all the free space under `path` but `leave` bytes."""
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    filler = path / "filler"
    with open(filler, "wb") as f:
        left = max(0, free - leave)
        while left > 0:
            n = min(left, 1 << 20)
            try:
                f.write(b"\0" * n)
                f.flush()
            except OSError:
                break
            left -= n
    return filler


def test_a_full_spool_disk_holds_the_meters_back_and_loses_nothing(tmp_path: Path) -> None:
    srv = Server(tmp_path, free_port(), [M])
    spool = tmp_path / "data" / "spool"
    with tmpfs(spool, "4m"):
        srv.setup()
        srv.start()
        try:
            p = srv.pusher()
            p.send(p.frame(M.push(0)))
            srv.wait_for("SELECT count() FROM ami.readings", 6)
            filler = fill(spool, 16 << 10)
            # Many pushes on one connection: the spool fills part way through.
            p.send(b"".join(p.frame(M.push(i)) for i in range(1, PUSHES)))
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if srv.admin("status")["spool_full_workers"] >= 1:
                    break
                time.sleep(0.2)
            st = srv.admin("status")
            assert st["spool_full_workers"] == 1, st
            stored = int(srv.scalar("SELECT count() FROM ami.readings"))
            assert stored < PUSHES * 6
            # Space returns: everything the meter sent is stored, once.
            filler.unlink()
            srv.wait_for("SELECT count() FROM ami.readings", PUSHES * 6, timeout=60)
            assert srv.scalar("SELECT uniqExact(meter, obis, ts) FROM ami.readings") == PUSHES * 6
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and srv.admin("status")["spool_full_workers"]:
                time.sleep(0.2)
            assert srv.admin("status")["spool_full_workers"] == 0
            # The same connection goes on.
            p.send(p.frame(M.push(PUSHES)))
            srv.wait_for("SELECT count() FROM ami.readings", (PUSHES + 1) * 6)
            p.close()
            log = srv.log.read_text()
            assert log.count("the spool cannot be written") == 1
            assert "the spool takes records again" in log
            assert "Traceback" not in log
        finally:
            srv.stop()


def test_a_full_store_disk_fails_ingest_loudly_and_recovers(tmp_path: Path) -> None:
    # chdb's streamed insert reports success on a full disk and writes nothing: the
    # store keeps min_free_bytes free instead, and the spool keeps the rows meanwhile.
    srv = Server(tmp_path, free_port(), [M], store_settings={"min_free_bytes": 8 << 20})
    ch = tmp_path / "data" / "clickhouse"
    with tmpfs(ch, "64m"):
        srv.setup()
        srv.start()
        try:
            p = srv.pusher()
            p.send(p.frame(M.push(0)))
            srv.wait_for("SELECT count() FROM ami.readings", 6)
            filler = fill(ch, 0)
            p.send(b"".join(p.frame(M.push(i)) for i in range(1, PUSHES)))
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if srv.admin("status")["ingest"].get("error"):
                    break
                time.sleep(0.2)
            st = srv.admin("status")
            assert "min_free_bytes" in (st["ingest"].get("error") or ""), st["ingest"]
            assert int(srv.scalar("SELECT count() FROM ami.readings")) < PUSHES * 6
            filler.unlink()
            srv.wait_for("SELECT count() FROM ami.readings", PUSHES * 6, timeout=90)
            assert srv.scalar("SELECT uniqExact(meter, obis, ts) FROM ami.readings") == PUSHES * 6
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and srv.admin("status")["ingest"].get("error"):
                time.sleep(0.2)
            assert not srv.admin("status")["ingest"].get("error")
            p.close()
        finally:
            srv.stop()
