"""Hostile traffic against a head-end's meter port, for the load driver's ``--attack``.

    python -m loadtest.attack --port 4059 --source 127.254.0.1 \\
        --idle 19000 --garbage 20 --duration 60

From one source address (loopback only), at once:

- ``--idle N``: tries to hold N connections that never send a byte; each one the
  head-end closes or refuses is opened again (at most ``--rate`` new connections per
  second in all, so the attacker does not simply take the machine's CPU);
- ``--garbage K``: K connections writing random bytes as fast as the socket takes
  them, reopened when closed;
- ``--junk K``: K connections sending well-framed wrapper frames whose APDU no meter
  would send, as fast as the socket takes them, reopened when closed.

Stops by itself after ``--duration`` seconds and prints one JSON line: connections
opened, refused or closed by the head-end, the most held at once, bytes written.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import resource
import struct
import sys
import time
from dataclasses import asdict, dataclass

MAX_CONNECTIONS = 19_500
MAX_DURATION = 3600.0


@dataclass
class Tally:
    opened: int = 0
    connect_failed: int = 0
    closed_by_peer: int = 0
    held: int = 0
    held_max: int = 0
    bytes_written: int = 0


class Bucket:
    """At most `rate` acquisitions per second, shared by all tasks."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = rate
        self.at = time.monotonic()

    async def take(self) -> None:
        while True:
            now = time.monotonic()
            self.tokens = min(self.rate, self.tokens + (now - self.at) * self.rate)
            self.at = now
            if self.tokens >= 1.0:
                self.tokens -= 1.0
                return
            await asyncio.sleep((1.0 - self.tokens) / self.rate)


async def _connect(
    args: argparse.Namespace, t: Tally, bucket: Bucket
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    await bucket.take()
    try:
        r, w = await asyncio.wait_for(
            asyncio.open_connection(args.host, args.port, local_addr=(args.source, 0)), 10
        )
    except (OSError, TimeoutError):
        t.connect_failed += 1
        await asyncio.sleep(0.1)
        return None
    t.opened += 1
    t.held += 1
    t.held_max = max(t.held_max, t.held)
    return r, w


def _closed(t: Tally, w: asyncio.StreamWriter) -> None:
    t.held -= 1
    t.closed_by_peer += 1
    w.close()


async def idle(args: argparse.Namespace, t: Tally, bucket: Bucket, until: float) -> None:
    while time.monotonic() < until:
        conn = await _connect(args, t, bucket)
        if conn is None:
            continue
        r, w = conn
        try:
            left = until - time.monotonic()
            if left > 0:
                await asyncio.wait_for(r.read(1), left)
        except TimeoutError:
            t.held -= 1
            w.close()
            return
        except OSError:
            pass
        _closed(t, w)


def _junk_frames() -> bytes:
    # Wrapper frames (version 1, wPorts 1 -> 1) whose APDU is no DLMS service.
    apdu = b"\x0b" + os.urandom(15)
    frame = struct.pack(">HHHH", 1, 1, 1, len(apdu)) + apdu
    return frame * 4096


async def writer(
    args: argparse.Namespace, t: Tally, bucket: Bucket, until: float, framed: bool
) -> None:
    chunk = _junk_frames() if framed else os.urandom(65536)
    while time.monotonic() < until:
        conn = await _connect(args, t, bucket)
        if conn is None:
            continue
        _, w = conn
        try:
            while time.monotonic() < until:
                w.write(chunk)
                await w.drain()
                t.bytes_written += len(chunk)
        except OSError:
            _closed(t, w)
            continue
        t.held -= 1
        w.close()


async def run(args: argparse.Namespace) -> Tally:
    t = Tally()
    bucket = Bucket(args.rate)
    until = time.monotonic() + args.duration
    tasks = [idle(args, t, bucket, until) for _ in range(args.idle)]
    tasks += [writer(args, t, bucket, until, False) for _ in range(args.garbage)]
    tasks += [writer(args, t, bucket, until, True) for _ in range(args.junk)]
    await asyncio.gather(*tasks)
    return t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtest.attack", description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--source", default="127.254.0.1", help="loopback address to attack from")
    ap.add_argument("--idle", type=int, default=0)
    ap.add_argument("--garbage", type=int, default=0)
    ap.add_argument("--junk", type=int, default=0)
    ap.add_argument("--rate", type=float, default=2000.0, help="new connections/s, all kinds")
    ap.add_argument("--duration", type=float, required=True)
    args = ap.parse_args(argv)
    for name in ("host", "source"):
        if not ipaddress.ip_address(getattr(args, name)).is_loopback:
            ap.error(f"--{name} must be a loopback address")
    total = args.idle + args.garbage + args.junk
    if not 0 < total <= MAX_CONNECTIONS:
        ap.error(f"--idle + --garbage + --junk must be 1..{MAX_CONNECTIONS}")
    if not 0 < args.duration <= MAX_DURATION:
        ap.error(f"--duration must be 0..{MAX_DURATION:.0f} s")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    del soft
    try:
        import uvloop
    except ImportError:
        t = asyncio.run(run(args))
    else:
        t = uvloop.run(run(args))
    print(json.dumps({"attack": asdict(t)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
