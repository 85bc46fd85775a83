"""The full demo (`make run`, `headend demo`): a generated grid of about 20,000 meters,
the head-end on the embedded store, and the simulated fleet in fast time (a simulated
day in a few minutes) with theft and debtors; the situation room shows it live.

    headend demo [--meters 20000] [--speed 240] [--data demo-data] [--http-port 8080]
                 [--duration S] [--regions K]

Runs until Ctrl-C (or `--duration` real seconds), then stops the fleet and drains the
head-end. The data directory is kept: a second run starts from a fresh one unless
`--keep` is given.

Simulated time starts at a midnight in Tashkent far enough in the past that the fleet
reaches real time only after `REAL_HOURS` hours of demo; then the demo stops, so what
it leaves behind is never in the future for the real clock (a later `headend balance
--recompute` of its days finds their readings in the past). It and the head-end's
clock run together: the store's `[clock]` follows
the fleet's time, so "today", the balance window and the billing policy's hours are the
fleet's. Clock synchronisation is off (the meters' clocks are in simulated time on
purpose); everything else is the production code path.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import json
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from headend.balance import LOCAL
from loadtest import sim
from loadtest.grid import generate
from loadtest.headend import Headend, free_port


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--meters", type=int, default=20_000, help="consumer meters (default 20000)")
    p.add_argument(
        "--speed",
        type=float,
        default=240.0,
        help="simulated seconds per real second (default 240: a day in 6 minutes)",
    )
    p.add_argument("--data", type=Path, default=Path("demo-data"), help="demo directory")
    p.add_argument("--http-port", type=port_number, default=8080, help="situation room port (8080)")
    p.add_argument(
        "--meter-port", type=port_number, default=0, help="meter port (default: a free one)"
    )
    p.add_argument("--duration", type=float, default=0.0, help="stop after S real seconds")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--debtors", type=float, default=0.01, help="share of accounts in debt")
    p.add_argument(
        "--udp",
        type=float,
        default=0.1,
        help="share of meters on their own that push over UDP, as NB-IoT meters (0.1)",
    )
    p.add_argument("--keep", action="store_true", help="reuse the demo directory's data")
    p.add_argument(
        "--regions",
        type=int,
        default=0,
        help="a centre and a node per region for the K most populous regions, each with "
        "its own page (default 0: one standalone head-end)",
    )


def port_number(text: str) -> int:
    """A TCP port number, refused with its reason when it is none."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= n <= 65535:
        raise argparse.ArgumentTypeError(f"{n} is not a port number (0-65535)")
    return n


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def billing_csv(meters_csv: Path, out: Path, share: float, seed: int, today: dt.date) -> int:
    """Accounts of the fleet's consumers: a share in debt long overdue, a few of those
    protected (a hospital, medical need), the rest owing nothing."""
    rnd = random.Random(seed)  # noqa: S311 (simulated accounts, not secrets)
    with open(meters_csv, encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["role"] == "consumer"]
    accounts = sorted({r["account_id"] for r in rows})
    # Its category from its meters: a three-phase meter is a shop or workshop's.
    commercial = {r["account_id"] for r in rows if r["model"] == "e3ph"}
    debtors = 0
    with open(out, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["account_id", "debt", "overdue_since", "protected", "note", "category"])
        for acc in accounts:
            category = "commercial" if acc in commercial else "household"
            if rnd.random() < share:
                protected = rnd.random() < 0.1
                since = today - dt.timedelta(days=rnd.randint(40, 200))
                debt = round(rnd.uniform(150_000, 2_000_000), 2)
                note = "hospital" if protected else "overdue"
                flag = "true" if protected else "false"
                w.writerow([acc, debt, since.isoformat(), flag, note, category])
                debtors += 0 if protected else 1
            else:
                w.writerow([acc, 0, "", "false", "", category])
    return debtors


# Real hours a demo may run before its simulated clock reaches real time.
REAL_HOURS = 4.0


def past_midnight(speed: float) -> dt.datetime:
    """The Tashkent midnight the demo's simulated time starts at: `REAL_HOURS` of demo
    at `speed` before it reaches the real clock."""
    today = dt.datetime.now(LOCAL).replace(hour=0, minute=0, second=0, microsecond=0)
    days = -(-speed * REAL_HOURS * 3600 // 86_400)
    return today - dt.timedelta(days=int(days))


def fast_time(speed: float, sim_start: float, anchor: float) -> dict[str, dict[str, Any]]:
    """The store's and the other sections' settings for fast simulated time (the same
    for a standalone head-end and every node of `--regions`)."""
    interval = max(1.0, 900 / speed)  # one simulated quarter hour, in real seconds
    return {
        "store": {
            "ingest_interval": 0.2,
            # Recompute the last 6 simulated hours every simulated hour or so.
            "balance_interval": max(5.0, 4 * interval),
            "balance_window": 6 * 3600,
            "anomaly_interval": max(20.0, 3600 / speed * 2),
            "anomaly_window": 86_400,
        },
        "clock": {"speed": speed, "start": sim_start, "anchor": anchor},
        # Meters' clocks are in simulated time: leave them alone.
        # The pushes are complete here; daily reads would only repeat them.
        "commands": {
            "clock_check_days": 0.0,
            "daily_read_days": 0.0,
            "schedule_interval": 60.0,
        },
        "billing": {
            "interval": max(5.0, 2 * interval),
            "allowed_hours": "8-18",
            "allowed_weekdays": "mon-sun",
            "warning_hours": 2.0,
        },
        # Outages every simulated hour or so; work orders every few simulated hours.
        "outages": {"interval": max(5.0, 4 * interval)},
        "workorders": {"interval": max(30.0, 3 * 3600 / speed)},
    }


def configure(
    root: Path,
    *,
    meter_port: int,
    http_port: int,
    speed: float,
    sim_start: float,
    anchor: float,
) -> Headend:
    """The head-end's settings for fast simulated time."""
    settings = fast_time(speed, sim_start, anchor)
    store = settings.pop("store")
    return Headend(
        root,
        port=meter_port,
        server={"workers": 2, "handshake_timeout": 30.0},
        store=store,
        sections={"http": {"port": http_port, "refresh": 5.0}, **settings},
    )


def run(args: argparse.Namespace) -> int:
    if args.regions:
        from loadtest import demo_regions

        return demo_regions.run(args)
    root: Path = args.data.resolve()
    if root.exists() and not args.keep:
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    fleet = root / "fleet"
    if not (fleet / "meters.csv").exists():
        print(f"generating a grid of {args.meters} meters ...", flush=True)
        f = generate(args.meters, 0.3, fleet, seed=args.seed)
        s = f.truth["summary"]
        print(
            f"  {s['nodes']} grid nodes, {s['meters']} meters, {s['thieves']} thieves, "
            f"{s['illegal_connections']} illegal connections"
        )
    if not port_free(args.http_port):
        print(f"port {args.http_port} is taken: pass --http-port", file=sys.stderr)
        return 2
    meter_port = args.meter_port or free_port()
    speed = float(args.speed)
    # Simulated time starts at a midnight (Tashkent), so each day's figures are whole,
    # far enough back that the fleet stays in the real clock's past.
    morning = past_midnight(speed)
    sim_start = morning.timestamp()
    anchor = time.time()
    he = configure(
        root,
        meter_port=meter_port,
        http_port=args.http_port,
        speed=speed,
        sim_start=sim_start,
        anchor=anchor,
    )
    he.import_fleet(fleet / "grid.csv", fleet / "meters.csv")
    he.cli("centres", "import", str(fleet / "service_centres.csv"))
    # People: an admin of the republic and an operator of Tashkent city, each with a
    # password made now (the page asks for a login; API scripts use personal tokens).
    people = he.add_people({"admin": ("admin", "*"), "tashkent": ("viewer,operator", "UZ-TK")})
    token = he.cli("users", "token", "admin", "--label", "demo").strip()
    debtors = billing_csv(
        fleet / "meters.csv", root / "billing.csv", args.debtors, args.seed, morning.date()
    )
    he.cli("billing", "import", str(root / "billing.csv"))
    print(f"head-end starting (meters on port {meter_port}) ...", flush=True)
    he.start()
    # The fleet's time must match the store's clock: start it where the clock is now.
    now_sim = sim_start + (time.time() - anchor) * speed
    log = open(root / "sim.log", "ab")  # noqa: SIM115 - closed at the end
    fleet_proc = sim.start(
        fleet,
        meter_port,
        "--start",
        str(int(now_sim)),
        "--speed",
        str(speed),
        "--source",
        ",".join(sim.fleet_sources(0, args.meters)),
        "--status-every",
        "30",
        "--udp",
        str(args.udp),
        stdout=log,
        stderr=log,
    )
    url = f"http://127.0.0.1:{args.http_port}/"
    catch_up = (
        f" (it stops by itself when its clock reaches real time, in about "
        f"{(anchor - sim_start) / (speed - 1) / 3600:.1f} h)"
        if speed > 1
        else ""
    )
    print(
        "\n"
        f"  Situation room: {url}\n"
        f"  Log in as:      admin / {people['admin']}   (the republic, every role)\n"
        f"                  tashkent / {people['tashkent']}   (Tashkent city: viewer, operator)\n"
        f"  API:            {url}api/openapi.json   (Authorization: Bearer {token})\n"
        f"  Data:           {root}   (serve.log, sim.log; HEADEND_DATA={root / 'data'})\n"
        f"  Fleet:          {args.meters} consumers, {debtors} debtors, a simulated day every "
        f"{86400 / speed / 60:.0f} min, from {morning:%Y-%m-%d} on\n"
        f"  Ctrl-C stops the demo{catch_up}.\n",
        flush=True,
    )
    try:
        watch(args, he, fleet_proc, lambda: sim_start + (time.time() - anchor) * speed)
    finally:
        print("stopping the fleet and the head-end ...", flush=True)
        fleet_proc.terminate()
        try:
            fleet_proc.wait(30)
        except subprocess.TimeoutExpired:
            fleet_proc.kill()
        he.stop()
        log.close()
    return 0


def watch(
    args: argparse.Namespace,
    he: Headend,
    fleet_proc: subprocess.Popen[str],
    sim_now: Callable[[], float],
) -> None:
    """Prints a status line every 30 s until Ctrl-C, --duration, or a process ends."""
    stop = False

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    t0 = time.monotonic()
    last = 0.0
    while not stop:
        if args.duration and time.monotonic() - t0 >= args.duration:
            return
        if fleet_proc.poll() is not None:
            print("the simulated fleet stopped; see sim.log", file=sys.stderr)
            return
        if he.proc is not None and he.proc.poll() is not None:
            print("the head-end stopped; see serve.log", file=sys.stderr)
            return
        if sim_now() >= time.time() - 900:
            print(
                "the simulated clock has reached real time: stopping, so nothing the demo "
                "stores is in the future",
                flush=True,
            )
            return
        if time.monotonic() - last >= 30:
            last = time.monotonic()
            with contextlib.suppress(Exception):
                st = he.admin("status")
                t = dt.datetime.fromtimestamp(sim_now(), LOCAL)
                print(
                    f"{t:%Y-%m-%d %H:%M} Tashkent: {st['sessions']} sessions, "
                    f"{st['pushes_per_s']:.0f} pushes/s, "
                    f"{json.dumps(st['ingest']['rows_total'])} rows",
                    flush=True,
                )
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="headend demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(ap)
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
