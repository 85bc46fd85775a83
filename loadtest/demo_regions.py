"""`headend demo --regions K`: the demo as a federation, a national centre and a node
per region on loopback, each with its own situation room.

The K most populous regions get a node each (real `headend serve` processes with
their own data directories, meter ports, NATS servers and pages); the centre imports
the grid, the meters and the billing accounts and sends each region its own; a
simulated fleet per region pushes to its node, and the generation's balance meter to
the centre. The centre's page shows the republic with every region and each link's
state; each region's page shows its own region. Runs until Ctrl-C or `--duration`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from headend.balance import LOCAL
from loadtest import grid, sim
from loadtest.demo import billing_csv, fast_time, past_midnight, port_free
from loadtest.federation import CENTRE, Federation
from loadtest.headend import free_port

BY_SIZE = [r[0] for r in sorted(grid.REGIONS, key=lambda r: -r[4])]


def run(args: argparse.Namespace) -> int:
    k = int(args.regions)
    if not 1 <= k <= len(BY_SIZE):
        print(f"--regions must be 1..{len(BY_SIZE)}")
        return 2
    root: Path = args.data.resolve()
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    codes = {c.lower(): c for c in BY_SIZE[:k]}
    fleet = root / "fleet"
    print(f"generating a grid of {args.meters} meters in {k} regions ...", flush=True)
    grid.generate(args.meters, 0.3, fleet, seed=args.seed, regions=list(codes.values()))
    ports = {CENTRE: args.http_port, **{n: free_port() for n in codes}}
    for name, port in ports.items():
        if not port_free(port):
            print(f"port {port} ({name}'s page) is taken: pass --http-port")
            return 2
    speed = float(args.speed)
    midnight = past_midnight(speed)
    sim_start, anchor = midnight.timestamp(), time.time()
    settings = fast_time(speed, sim_start, anchor)
    store = settings.pop("store")
    fed = Federation(
        root,
        {n: [f"UZ-{c}"] for n, c in codes.items()},
        workers=1,
        server={"handshake_timeout": 30.0},
        store=store,
        sections=settings,
        node_sections={
            name: {"http": {"port": port, "refresh": 5.0}} for name, port in ports.items()
        },
    )
    fed.setup()
    print("starting the centre and the region nodes ...", flush=True)
    fed.start()
    procs: list[subprocess.Popen[str]] = []
    try:
        c = fed.centre.h
        c.import_fleet(fleet / "grid.csv", fleet / "meters.csv")
        # People are made at the centre and reach every region node: an admin of the
        # republic, and an operator for the first region.
        first = next(iter(codes))
        people = c.add_people(
            {"admin": ("admin", "*"), first: ("viewer,operator", f"UZ-{codes[first]}")}
        )
        token = c.cli("users", "token", "admin", "--label", "demo").strip()
        debtors = billing_csv(
            fleet / "meters.csv", root / "billing.csv", args.debtors, args.seed, midnight.date()
        )
        c.cli("billing", "import", str(root / "billing.csv"))
        now_sim = sim_start + (time.time() - anchor) * speed
        targets = [(n, fed.nodes[n].port, f"UZ-{code}") for n, code in codes.items()]
        targets.append((CENTRE, fed.centre.port, "UZ-GEN"))
        for name, port, under in targets:
            log = open(root / f"sim-{name}.log", "ab")  # noqa: SIM115 - the child keeps it
            procs.append(
                sim.start(
                    fleet,
                    port,
                    *("--under", under, "--start", str(int(now_sim)), "--speed", str(speed)),
                    *("--status-every", "30"),
                    stdout=log,
                    stderr=log,
                )
            )
            log.close()
        print(
            "\n"
            f"  The centre:      http://127.0.0.1:{ports[CENTRE]}/   (the republic, every region,"
            " each link)\n"
            + "".join(f"  Region {codes[n]} ({n}):  http://127.0.0.1:{ports[n]}/\n" for n in codes)
            + f"  Log in as:       admin / {people['admin']} (anywhere), "
            f"{first} / {people[first]} (region {codes[first]})\n"
            f"  API:             Authorization: Bearer {token}\n"
            f"  Data:            {root}   (a directory per node: serve.log, data/)\n"
            f"  Fleet:           {args.meters} consumers, {debtors} debtors, a simulated day "
            f"every {86400 / speed / 60:.0f} min\n"
            "  Ctrl-C stops the demo.\n",
            flush=True,
        )
        _watch(args, fed, procs, lambda: sim_start + (time.time() - anchor) * speed)
    finally:
        print("stopping the fleets and the nodes ...", flush=True)
        for p in procs:
            p.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(30)
        fed.stop()
    return 0


def _watch(
    args: argparse.Namespace, fed: Federation, procs: list[subprocess.Popen[str]], now: Any
) -> None:
    stop = False

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    t0, last = time.monotonic(), 0.0
    while not stop:
        if args.duration and time.monotonic() - t0 >= args.duration:
            return
        if any(p.poll() is not None for p in procs):
            print("a simulated fleet stopped; see its sim-*.log", flush=True)
            return
        if now() >= time.time() - 900:
            print("the simulated clock has reached real time: stopping", flush=True)
            return
        if time.monotonic() - last >= 30:
            last = time.monotonic()
            t = dt.datetime.fromtimestamp(now(), LOCAL)
            parts = []
            for name, node in fed.nodes.items():
                with contextlib.suppress(Exception):
                    st = node.h.admin("status")
                    lag = ""
                    if name == CENTRE and st.get("link"):
                        lag = " lag " + ",".join(
                            f"{p['peer']}={p['lag_s']:.0f}s" for p in st["link"]["peers"]
                        )
                    parts.append(f"{name}: {st['sessions']} sessions{lag}")
            print(f"{t:%Y-%m-%d %H:%M} Tashkent · " + " · ".join(parts), flush=True)
        time.sleep(0.5)
