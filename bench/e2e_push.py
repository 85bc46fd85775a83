"""End-to-end push benchmark: real TCP into the embedded ClickHouse, nothing lost.

    .venv/bin/python bench/e2e_push.py throughput --meters 2000 --pushes 50 --workers 2
    .venv/bin/python bench/e2e_push.py idle --sessions 10000 50000 --workers 4

`throughput` starts `headend serve` on a fresh data directory, imports a grid and
meters, and has client processes push pre-built frames (AES-GCM ciphered by default,
one push per write as meters do, or pipelined with --burst) over one connection per
meter from several 127.0.0.x addresses. It reports pushes/s sent and stored, the
readings counted in ClickHouse against those sent (lost and duplicated must be 0), and
the delay from sending a probe push to its reading being queryable (p50/p99).

`idle` opens N sessions (each pushes once so it is a real, identified session, then
stays idle) and reports the workers' resident memory per session.

Results are written to bench/results/e2e-<mode>-<time>.json with the command line and
machine. Loopback only; bounded in count and time; stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import multiprocessing as mp
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from headend import codec  # noqa: E402
from headend.server.admin import AdminClient  # noqa: E402
from loadtest import results  # noqa: E402
from loadtest.headend import Headend, cpu_seconds, free_port, rss_kib  # noqa: E402

TZ = dt.timezone(dt.timedelta(hours=5))
START = dt.datetime(2026, 11, 1, tzinfo=TZ)
REGISTERS = 6  # e1ph interval push


def meter(i: int) -> tuple[str, bytes, bytes, bytes]:
    serial = f"B{i:07d}"
    title = b"UZB" + i.to_bytes(5, "big")
    ek = (i * 7919 % 2**64).to_bytes(8, "big") * 2
    ak = (i * 104729 % 2**64).to_bytes(8, "big") * 2
    return serial, title, ek, ak


def push_apdu(serial: str, i: int) -> bytes:
    when = START + dt.timedelta(minutes=15 * i)
    clock = codec.encode_data(codec.date_time(when))[1:]
    return codec.encode_apdu(
        {
            "apdu": "data-notification",
            "long_invoke_id": {"invoke_id": i & 0xFFFFFF},
            "date_time": None,
            "body": codec.data(
                "structure",
                [
                    codec.data("octet-string", serial.encode().hex()),
                    codec.data("octet-string", clock.hex()),
                    codec.data("double-long-unsigned", 100_000 + 250 * i),
                    codec.data("double-long-unsigned", 0),
                    codec.data("long-unsigned", 2301),
                    codec.data("long-unsigned", 512),
                    codec.data("double-long-unsigned", 1180),
                    codec.data("boolean", True),
                ],
            ),
        }
    )


def frames_for(index: int, pushes: int, first: int, encrypt: bool) -> list[bytes]:
    serial, title, ek, ak = meter(index)
    out = []
    # Pushes differ only in counter-dependent bytes; build the APDU template per push.
    for i in range(first, first + pushes):
        apdu = push_apdu(serial, i)
        if encrypt:
            apdu = codec.encrypt(apdu, ek=ek, ak=ak, system_title=title, invocation_counter=i + 1)
        out.append(codec.wrap(apdu))
    return out


# -- the server ---------------------------------------------------------------------------


def headend(root: Path, port: int, workers: int, meters: int, encrypt: bool) -> Headend:
    """A head-end on a fresh data directory with `meters` bench meters imported."""
    h = Headend(
        root,
        port=port,
        server={
            "workers": workers,
            "max_connections_per_worker": 19000,
            "handshake_timeout": 600.0,
            "idle_timeout": 3600.0,
            "sweep_interval": 5.0,
            # The clients open hundreds of connections per address before any push:
            # the per-source admission limits would ban them as a flood.
            "trusted_sources": ["127.0.0.0/8"],
        },
        store={"ingest_interval": 0.1, "fsync": "interval"},
    )
    grid = root / "grid.csv"
    grid.write_text(
        "node_id,parent_id,level,commodity,name,admin_unit,lat,lon\n"
        "UZ,,republic,any,Uzbekistan,UZ,41.3,69.2\nTR,UZ,transformer,electricity,TR,UZ,41.3,69.2\n"
    )
    lines = ["serial,kind,role,node_id,account_id,model,system_title,ek,ak,password,lat,lon"]
    for i in range(meters):
        serial, title, ek, ak = meter(i)
        keys = f"{title.hex()},{ek.hex()},{ak.hex()}" if encrypt else ",,"
        lines.append(f"{serial},electricity,consumer,TR,A{i},e1ph,{keys},,41.3,69.2")
    (root / "meters.csv").write_text("\n".join(lines) + "\n")
    h.import_fleet(grid, root / "meters.csv")
    return h


# -- clients ------------------------------------------------------------------------------


def client(
    port: int,
    src: str,
    indexes: list[int],
    pushes: int,
    first: int,
    encrypt: bool,
    burst: int,
    start_at: float,
    out: Any,
) -> None:
    import uvloop

    frames = {i: frames_for(i, pushes, first, encrypt) for i in indexes}

    async def one(i: int, writer: asyncio.StreamWriter) -> int:
        sent = 0
        fr = frames[i]
        for k in range(0, len(fr), burst):
            writer.write(b"".join(fr[k : k + burst]))
            sent += len(fr[k : k + burst])
            await writer.drain()
            await asyncio.sleep(0)
        return sent

    async def main() -> None:
        conns = []
        for i in indexes:
            _, w = await asyncio.open_connection("127.0.0.1", port, local_addr=(src, 0))
            conns.append((i, w))
        await asyncio.sleep(max(0.0, start_at - time.time()))
        t0 = time.time()
        cpu0 = time.process_time()
        sent = sum(await asyncio.gather(*(one(i, w) for i, w in conns)))
        t1 = time.time()
        out.put({"sent": sent, "t0": t0, "t1": t1, "cpu": time.process_time() - cpu0})
        await asyncio.sleep(1.0)
        for _, w in conns:
            w.close()

    uvloop.run(main())


def probe(
    port: int, index: int, first: int, count: int, encrypt: bool, admin_sock: str, out: Any
) -> None:
    """Sends one push a second from its own meter and times until it is queryable."""
    frames = frames_for(index, count, first, encrypt)
    serial = meter(index)[0]
    s = socket.create_connection(("127.0.0.1", port))
    c = AdminClient(Path(admin_sock), timeout=60)
    lat = []
    for k, f in enumerate(frames):
        ts = int((START + dt.timedelta(minutes=15 * (first + k))).timestamp())
        t0 = time.perf_counter()
        s.sendall(f)
        q = (
            f"SELECT count() FROM ami.readings WHERE meter = '{serial}' "
            f"AND ts = toDateTime({ts}, 'UTC')"
        )
        while c.call("query", query=q)["rows"][0][0] < REGISTERS:
            time.sleep(0.02)
        lat.append(time.perf_counter() - t0)
        time.sleep(max(0.0, 0.2 - lat[-1]))
    s.close()
    out.put({"probe": lat})


def run_throughput(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="headend-bench-") as tmp:
        root = Path(tmp)
        port = free_port()
        h = headend(root, port, args.workers, args.meters + 1, not args.plain)
        h.start()
        try:
            ctx = mp.get_context("spawn")
            out = ctx.Queue()
            procs = []
            start_at = time.time() + args.setup_seconds
            per = [list(range(k, args.meters, args.clients)) for k in range(args.clients)]
            for k, idx in enumerate(per):
                src = f"127.0.{k // 200}.{k % 200 + 2}"
                p = ctx.Process(
                    target=client,
                    args=(
                        port,
                        src,
                        idx,
                        args.pushes,
                        0,
                        not args.plain,
                        args.burst,
                        start_at,
                        out,
                    ),
                )
                p.start()
                procs.append(p)
            probe_p = ctx.Process(
                target=probe,
                args=(
                    port,
                    args.meters,
                    0,
                    args.probes,
                    not args.plain,
                    str(h.data / "admin.sock"),
                    out,
                ),
            )
            pids, store_pid = h.pids()
            cpu0 = {pid: cpu_seconds(pid) for pid in [*pids, store_pid]}
            time.sleep(max(0.0, start_at - time.time() - 0.5))
            probe_p.start()
            results = [out.get(timeout=args.setup_seconds + 600) for _ in procs]
            sent = sum(r["sent"] for r in results)
            t0 = min(r["t0"] for r in results)
            t1 = max(r["t1"] for r in results)
            expected = sent * REGISTERS
            # Until everything is stored, or nothing more arrives for 15 s (a loss). Cheap
            # queries only, so the benchmark does not load the store it measures: count()
            # of the table from part metadata, the probe meter's rows by primary key.
            probe_serial = meter(args.meters)[0]
            stored, last_change, t_stored = -1, time.time(), time.time()
            while time.time() - last_change < 15:
                total = int(h.scalar("SELECT count() FROM ami.readings"))
                probe_rows = int(
                    h.scalar(f"SELECT count() FROM ami.readings WHERE meter = '{probe_serial}'")
                )
                now_stored = total - probe_rows
                if now_stored != stored:
                    stored, last_change, t_stored = now_stored, time.time(), time.time()
                if stored >= expected:
                    break
                time.sleep(0.1)
            cpu1 = {pid: cpu_seconds(pid) for pid in [*pids, store_pid]}
            probe_result = out.get(timeout=600)
            for p in [*procs, probe_p]:
                p.join(30)
            distinct = int(
                h.scalar(
                    "SELECT uniqExact(meter, obis, ts) FROM ami.readings "
                    f"WHERE meter != '{meter(args.meters)[0]}'"
                )
            )
            rejects = h.admin("status")["rejects"]
            lat = sorted(probe_result["probe"])
        finally:
            h.stop()
    span_send = t1 - t0
    span_store = t_stored - t0
    return {
        "sent_pushes": sent,
        "expected_readings": expected,
        "stored_readings": stored,
        "lost_readings": expected - distinct,
        "duplicated_readings": stored - distinct,
        "send_seconds": round(span_send, 3),
        "pushes_per_s_sent": round(sent / span_send, 1),
        "pushes_per_s_stored": round(sent / span_store, 1),
        "readings_per_s_stored": round(expected / span_store, 1),
        "probe_latency_s": {
            "samples": len(lat),
            "p50": round(lat[len(lat) // 2], 4),
            "p99": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 4),
            "max": round(lat[-1], 4),
        },
        "cpu_seconds": {
            "workers": round(sum(cpu1[p] - cpu0[p] for p in pids), 2),
            "store": round(cpu1[store_pid] - cpu0[store_pid], 2),
            "clients": round(sum(r["cpu"] for r in results), 2),
        },
        "rejects": rejects,
    }


def idle_client(port: int, src: str, indexes: list[int], out: Any, hold: Any) -> None:
    """Opens one connection per meter, pushes once (plain), then holds it open."""
    socks = []
    for i in indexes:
        s = socket.create_connection(("127.0.0.1", port), source_address=(src, 0))
        s.sendall(frames_for(i, 1, 0, False)[0])
        socks.append(s)
    out.put(len(socks))
    hold.wait()
    for s in socks:
        s.close()


def run_idle(args: argparse.Namespace) -> dict[str, Any]:
    results = []
    for n in args.sessions:
        with tempfile.TemporaryDirectory(prefix="headend-bench-") as tmp:
            root = Path(tmp)
            port = free_port()
            h = headend(root, port, args.workers, n, False)
            h.start()
            try:
                time.sleep(1.0)
                pids, _ = h.pids()
                before = {p: rss_kib(p) for p in pids}
                ctx = mp.get_context("spawn")
                out, hold = ctx.Queue(), ctx.Event()
                per_proc = 15_000
                procs = []
                for k, lo in enumerate(range(0, n, per_proc)):
                    idx = list(range(lo, min(n, lo + per_proc)))
                    p = ctx.Process(
                        target=idle_client, args=(port, f"127.0.1.{k + 2}", idx, out, hold)
                    )
                    p.start()
                    procs.append(p)
                opened = sum(out.get(timeout=600) for _ in procs)
                deadline = time.time() + 300
                while time.time() < deadline:
                    st = h.admin("status")
                    stored = int(h.scalar("SELECT count(DISTINCT meter) FROM ami.readings"))
                    if st["sessions"] >= opened and stored >= opened:
                        break
                    time.sleep(0.5)
                time.sleep(2.0)
                after = {p: rss_kib(p) for p in pids}
                sessions = h.admin("status")["sessions"]
                hold.set()
                for p in procs:
                    p.join(60)
            finally:
                h.stop()
        delta = sum(after[p] - before[p] for p in pids)
        results.append(
            {
                "sessions": sessions,
                "workers": len(pids),
                "rss_before_kib": sum(before.values()),
                "rss_after_kib": sum(after.values()),
                "bytes_per_session": round(delta * 1024 / max(1, sessions)),
            }
        )
    return {"idle": results}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="mode", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--meters", type=int, default=2000)
    t.add_argument("--pushes", type=int, default=50, help="pushes per meter")
    t.add_argument("--clients", type=int, default=4, help="client processes")
    t.add_argument("--workers", type=int, default=2)
    t.add_argument("--burst", type=int, default=1, help="pushes per write (1: as meters do)")
    t.add_argument("--plain", action="store_true", help="unciphered pushes")
    t.add_argument("--probes", type=int, default=60)
    t.add_argument(
        "--setup-seconds", type=float, default=30.0, help="time to build frames and connect"
    )
    i = sub.add_parser("idle")
    i.add_argument("--sessions", type=int, nargs="+", default=[10_000, 50_000])
    i.add_argument("--workers", type=int, default=4)
    args = ap.parse_args()
    result = run_throughput(args) if args.mode == "throughput" else run_idle(args)
    rec = results.record("python bench/e2e_push.py", result)
    print(json.dumps(rec, indent=2))
    results.save(f"e2e-{args.mode}", rec)


if __name__ == "__main__":
    main()
