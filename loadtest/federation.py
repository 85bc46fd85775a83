"""A national centre and region nodes on loopback: real `headend serve` processes,
each with its own data directory, meter port and NATS server (the region's a leaf node
of the centre's). Used by the federation tests and `python -m loadtest cluster`.

Node keys are made first (`headend node key`), so every configuration can name its
peers' public keys; nothing else is shared between the nodes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtest.headend import Headend, free_port
from loadtest.linkcut import Link

CENTRE = "centre"


@dataclass
class Node:
    name: str
    role: str
    regions: list[str]
    port: int
    nats_port: int
    headend: Headend | None = None

    @property
    def h(self) -> Headend:
        assert self.headend is not None
        return self.headend

    def nats_pid(self) -> int | None:
        """The node's NATS server (a child of its supervisor)."""
        conf = str(self.h.data / "link" / "nats.conf")
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                cmd = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if conf.encode() in cmd and any(c.endswith(b"nats-server") for c in cmd):
                return int(d.name)
        return None


@dataclass
class Federation:
    """`regions` maps each region node's name to the grid regions it owns; the centre
    owns `centre_regions` and what lies above the regions; `standby` maps a region
    node to the node that stands by for it."""

    root: Path
    regions: dict[str, list[str]]
    centre_regions: list[str] = field(default_factory=list)
    standby: dict[str, str] = field(default_factory=dict)
    workers: int = 1
    server: dict[str, Any] = field(default_factory=dict)
    store: dict[str, Any] = field(default_factory=dict)
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    heartbeat: float = 1.0
    #: Further sections for one node only ({"centre": {"http": {"port": 8080}}}).
    node_sections: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    nodes: dict[str, Node] = field(default_factory=dict)
    leaf_port: int = 0
    dead_port: int = 0
    #: Each region's WAN link to the centre, a relay that `cut` and `heal` act on.
    links: dict[str, Link] = field(default_factory=dict)

    def _key(self, data: Path) -> str:
        r = subprocess.run(
            [sys.executable, "-m", "headend", "node", "key", "--data", str(data)],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "HEADEND_DATA": str(data)},
        )
        if r.returncode != 0:
            raise RuntimeError(f"headend node key: {r.stderr.strip()}")
        return r.stdout.strip()

    def setup(self) -> None:
        # Distinct ports (free_port does not reserve one; two draws may meet).
        taken: set[int] = set()

        def port() -> int:
            while (p := free_port()) in taken:
                pass
            taken.add(p)
            return p

        self.leaf_port = port()
        self.dead_port = port()
        specs = [Node(CENTRE, "centre", list(self.centre_regions), port(), port())]
        specs += [Node(n, "region", list(r), port(), port()) for n, r in self.regions.items()]
        keys = {}
        for n in specs:
            (self.root / n.name).mkdir(parents=True, exist_ok=True)
            keys[n.name] = self._key(self.root / n.name / "data")
        for n in specs:
            if n.role == "region":
                self.links[n.name] = Link(("127.0.0.1", self.leaf_port))
        for n in specs:
            if n.role == "centre":
                peers = [
                    {
                        "name": r.name,
                        "role": "region",
                        "regions": r.regions,
                        "public_key": keys[r.name],
                        "standby": self.standby.get(r.name, ""),
                    }
                    for r in specs
                    if r.role == "region"
                ]
            else:
                peers = [{"name": CENTRE, "role": "centre", "public_key": keys[CENTRE]}]
            node = {
                "name": n.name,
                "role": n.role,
                "regions": n.regions,
                "upstream": (f"127.0.0.1:{self.links[n.name].port}" if n.role == "region" else ""),
            }
            link = {
                "client_port": n.nats_port,
                "leaf_host": "127.0.0.1",
                "leaf_port": self.leaf_port,
                # The centre's NATS server tells regions where to reconnect: an address
                # nothing listens on, so a region reconnects only through its own link
                # (the relay a test cuts), as a region reaches the centre only over its
                # WAN line.
                "leaf_advertise": f"127.0.0.1:{self.dead_port}",
                "heartbeat": self.heartbeat,
                **self.sections.get("link", {}),
            }
            sections = {k: v for k, v in self.sections.items() if k != "link"}
            for k, v in self.node_sections.get(n.name, {}).items():
                if k == "link":
                    link.update(v)
                else:
                    sections[k] = {**sections.get(k, {}), **v}
            n.headend = Headend(
                self.root / n.name,
                port=n.port,
                server={"workers": self.workers, **self.server},
                store=self.store,
                sections={**sections, "node": node, "link": link},
                peers=peers,
            )
            self.nodes[n.name] = n

    @property
    def centre(self) -> Node:
        return self.nodes[CENTRE]

    def region_nodes(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.role == "region"]

    def start(self) -> None:
        for n in self.nodes.values():
            n.h.start()

    def stop(self) -> None:
        for n in self.nodes.values():
            with contextlib.suppress(Exception):
                n.h.stop()
        for link in self.links.values():
            link.close()

    def cut(self, name: str) -> None:
        """Severs region `name`'s link to the centre (both ways)."""
        self.links[name].cut()

    def heal(self, name: str) -> None:
        self.links[name].heal()

    def kill(self, name: str) -> None:
        """kill -9 of a node's whole process group (supervisor, store, workers, NATS)."""
        proc = self.nodes[name].h.proc
        if proc is not None and proc.poll() is None:
            pids = [proc.pid, *_children(proc.pid)]
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.wait()

    def link(self, name: str) -> dict[str, Any]:
        st = self.nodes[name].h.admin("status")
        return st["link"]  # type: ignore[no-any-return]

    def wait(self, what: str, check: Any, timeout: float = 60.0) -> Any:
        """Polls `check()` until it returns a true value (or raises after `timeout`)."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = check()
                if last:
                    return last
            except Exception as e:  # the node may be restarting
                last = e
            time.sleep(0.2)
        raise RuntimeError(f"{what}: not within {timeout:.0f} s (last: {last!r})")

    def wait_equal(self, what: str, get: Any, expected: Any, timeout: float = 60.0) -> None:
        wait_equal(what, get, expected, timeout)


def wait_equal(what: str, get: Any, expected: Any, timeout: float = 60.0) -> None:
    """Polls `get()` until it equals `expected`; the error names the last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = get()
            if last == expected:
                return
        except Exception as e:  # the node may be restarting
            last = e
        time.sleep(0.2)
    raise RuntimeError(f"{what}: {last!r}, expected {expected!r} (waited {timeout:.0f} s)")


def _children(pid: int) -> list[int]:
    """Every descendant of `pid` (from /proc)."""
    parents: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parents.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        for c in parents.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out
