"""A `headend serve` under test: started on its own data directory and port, or an
already running one found by its data directory; plus /proc readings of its
processes. Used by the load driver and the end-to-end benchmarks."""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from headend.server.admin import AdminClient, AdminError, ServerNotRunning


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A free loopback TCP port outside the kernel's ephemeral range: a port the kernel
    hands out could be taken by any outgoing connection between now and the head-end
    binding it (tests open thousands), and the worker would fail with EADDRINUSE."""
    lo, _ = _ephemeral_range()
    first = 20_000 if lo > 21_000 else 1_025
    for _ in range(500):
        port = random.randint(first, lo - 1)  # noqa: S311 (a port, not a secret)
        # Free for TCP and UDP: the head-end listens on both with the same number.
        with socket.socket() as s, socket.socket(type=socket.SOCK_DGRAM) as u:
            try:
                s.bind(("127.0.0.1", port))
                u.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # everything below the range is taken: take what comes
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process ((0, 0) if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (0 if it is gone)."""
    return sum(cpu_times(pid))


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return str(v)


class Headend:
    """`headend serve` with a config written from `server` and `store` settings (and
    further `sections`; no HTTP unless they ask for it); or,
    with `start=False`, a running one whose data directory is `root/data`."""

    def __init__(
        self,
        root: Path,
        *,
        port: int,
        server: dict[str, Any] | None = None,
        store: dict[str, Any] | None = None,
        sections: dict[str, dict[str, Any]] | None = None,
        data: Path | None = None,
        peers: list[dict[str, Any]] | None = None,
    ) -> None:
        self.root = root
        self.port = port
        self.data = data or root / "data"
        self.config = root / "headend.toml"
        self.log = root / "serve.log"
        srv = {"host": "127.0.0.1", "port": port, **(server or {})}
        sto = {"ingest_interval": 0.1, **(store or {})}
        root.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            "[server]\n"
            + "\n".join(f"{k} = {toml_value(v)}" for k, v in srv.items())
            + "\n[store]\n"
            + "\n".join(f"{k} = {toml_value(v)}" for k, v in sto.items())
            + "\n"
            + "".join(
                f"[{name}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in values.items())
                for name, values in {"http": {"port": 0}, **(sections or {})}.items()
            )
            + "".join(
                "[[peers]]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in peer.items())
                for peer in peers or []
            )
        )
        self.env = {**os.environ, "HEADEND_DATA": str(self.data)}
        self.proc: subprocess.Popen[bytes] | None = None
        self.workers = int(srv.get("workers", 0)) or (os.cpu_count() or 1)

    def cli(self, *args: str, stdin: str | None = None) -> str:
        r = subprocess.run(
            [sys.executable, "-m", "headend", *args, "--config", str(self.config)],
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
            input=stdin,
        )
        if r.returncode != 0:
            raise RuntimeError(f"headend {' '.join(args)}: {r.stderr.strip()}")
        return r.stdout

    def add_people(self, people: dict[str, tuple[str, str]]) -> dict[str, str]:
        """Accounts for the demo: name -> (roles, regions or "*"); returns their
        generated passwords."""
        out = {}
        for name, (roles, regions) in people.items():
            password = secrets.token_urlsafe(9)
            where = ["--republic"] if regions == "*" else ["--regions", regions]
            try:
                self.cli(
                    *("users", "add", name, "--roles", roles, *where, "--password-stdin"),
                    stdin=password + "\n",
                )
            except RuntimeError as e:
                if "exists" not in str(e):
                    raise
                # Kept data (demo --keep): the account stays, with a new password.
                self.cli("users", "passwd", name, "--password-stdin", stdin=password + "\n")
            out[name] = password
        return out

    def import_fleet(self, grid: Path, meters: Path) -> None:
        self.cli("grid", "import", str(grid))
        self.cli("meters", "import", str(meters))

    def start(self, timeout: float = 180.0) -> None:
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "headend", "serve", "--config", str(self.config)],
                env=self.env,
                stdout=logf,
                stderr=logf,
            )
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError("headend serve exited: " + self.log.read_text()[-2000:])
            with contextlib.suppress(ServerNotRunning, AdminError, OSError, KeyError):
                st = self.admin("status")
                # Every worker reports itself (the status lists only those that have).
                if len([w for w in st["workers"] if w["connected"]]) >= self.workers:
                    return
            time.sleep(0.2)
        raise RuntimeError("headend did not come up: " + self.log.read_text()[-2000:])

    def admin(self, cmd: str, **args: Any) -> Any:
        c = AdminClient(self.data / "admin.sock", timeout=300)
        try:
            return c.call(cmd, **args)
        finally:
            c.close()

    def scalar(self, sql: str) -> Any:
        return self.admin("query", query=sql)["rows"][0][0]

    def pids(self) -> tuple[list[int], int]:
        """(worker pids, store pid)."""
        st = self.admin("status")
        return [int(w["pid"]) for w in st["workers"]], int(st["pid"])

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(300)
            except subprocess.TimeoutExpired:
                self.proc.kill()
