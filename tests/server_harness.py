"""A real head-end for integration tests: `headend serve` in a subprocess on a free
loopback port, with its own data directory, grid and meters, and simulated meters that
push real DLMS frames built with the project's encoder."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from headend import codec
from headend.server.admin import AdminClient, AdminError, ServerNotRunning
from loadtest.headend import free_port

TZ = dt.timezone(dt.timedelta(hours=5))
START = dt.datetime(2026, 11, 23, 0, 0, tzinfo=TZ)
HEADEND = [sys.executable, "-m", "headend"]

GRID = """node_id,parent_id,level,commodity,name,admin_unit,lat,lon
UZ,,republic,any,Uzbekistan,UZ,41.3,69.2
TAS,UZ,region,any,Tashkent city,TAS,41.31,69.28
TR-1,TAS,transformer,electricity,TP-1,TAS,41.31,69.29
GS-1,TAS,gas_segment,gas,GS-1,TAS,41.32,69.3
"""


@dataclass
class Meter:
    serial: str
    model: str
    title: bytes | None = None
    ek: bytes | None = None
    ak: bytes | None = None
    ic: int = 0
    kind: str = "electricity"
    node: str = "TR-1"
    # Instrument transformers (meters.csv ct_ratio, vt_ratio; "" = direct).
    ct: str = ""
    vt: str = ""

    def csv(self, ratios: bool = False) -> str:
        keys = (self.ek.hex(), self.ak.hex()) if self.ek and self.ak else ("", "")
        title = self.title.hex().upper() if self.title else ""
        return (
            ",".join(
                [
                    self.serial,
                    self.kind,
                    "consumer",
                    self.node,
                    f"ACC-{self.serial}",
                    self.model,
                    title,
                    *keys,
                ]
            )
            + ",,41.3,69.3"
            + (f",{self.ct},{self.vt}" if ratios else "")
        )

    def push(self, i: int, when: dt.datetime | None = None, *, ek: bytes | None = None) -> bytes:
        """Push number `i` (energy grows with i), ciphered when the meter has keys."""
        when = when or START + dt.timedelta(minutes=15 * i)
        clock = codec.data("octet-string", codec.encode_data(codec.date_time(when))[1:].hex())
        serial = codec.data("octet-string", self.serial.encode().hex())
        if self.model == "gas-g4":
            values = [
                codec.data("double-long-unsigned", 1_000_000 + 10 * i),
                codec.data("double-long-unsigned", 990_000 + 10 * i),
                codec.data("boolean", True),
                codec.data("long-unsigned", 362),
            ]
        elif self.model == "e3ph":
            values = [
                codec.data("double-long-unsigned", 100_000 + 250 * i),
                codec.data("double-long-unsigned", 0),
                codec.data("double-long-unsigned", 5_000 + 10 * i),
                codec.data("double-long-unsigned", 0),
                *(codec.data("long-unsigned", 2301 + k) for k in range(3)),
                *(codec.data("long-unsigned", 512 + k) for k in range(3)),
            ]
        else:
            values = [
                codec.data("double-long-unsigned", 100_000 + 250 * i),
                codec.data("double-long-unsigned", 0),
                codec.data("long-unsigned", 2301),
                codec.data("long-unsigned", 512),
                codec.data("double-long-unsigned", 1180),
                codec.data("boolean", True),
            ]
        apdu = codec.encode_apdu(
            {
                "apdu": "data-notification",
                "long_invoke_id": {"invoke_id": i & 0xFFFFFF},
                "date_time": None,
                "body": codec.data("structure", [serial, clock, *values]),
            }
        )
        if self.title is None:
            return apdu
        assert self.ek
        assert self.ak
        self.ic += 1
        return codec.encrypt(
            apdu, ek=ek or self.ek, ak=self.ak, system_title=self.title, invocation_counter=self.ic
        )

    def event(self, code: int, when: dt.datetime) -> bytes:
        clock = codec.data("octet-string", codec.encode_data(codec.date_time(when))[1:].hex())
        apdu = codec.encode_apdu(
            {
                "apdu": "data-notification",
                "long_invoke_id": {"invoke_id": 1},
                "date_time": None,
                "body": codec.data(
                    "structure",
                    [
                        codec.data("octet-string", self.serial.encode().hex()),
                        clock,
                        codec.data("unsigned", code),
                    ],
                ),
            }
        )
        assert self.title
        assert self.ek
        assert self.ak
        self.ic += 1
        return codec.encrypt(
            apdu, ek=self.ek, ak=self.ak, system_title=self.title, invocation_counter=self.ic
        )

    @property
    def registers(self) -> int:
        return {"gas-g4": 4, "e3ph": 10}.get(self.model, 6)


def keyed(serial: str, n: int, model: str = "e1ph") -> Meter:
    kind = "gas" if model == "gas-g4" else "electricity"
    node = "GS-1" if kind == "gas" else "TR-1"
    return Meter(
        serial,
        model,
        title=b"UZT" + n.to_bytes(5, "big"),
        ek=os.urandom(16),
        ak=os.urandom(16),
        kind=kind,
        node=node,
    )


def _toml(table: dict[str, Any]) -> str:
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return f'"{v}"'
        return str(v)

    return "\n".join(f"{k} = {value(v)}" for k, v in table.items())


@dataclass
class Server:
    root: Path
    port: int
    meters: list[Meter] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    server_settings: dict[str, Any] = field(default_factory=dict)
    store_settings: dict[str, Any] = field(default_factory=dict)
    pushers: list[Pusher] = field(default_factory=list)
    #: A generated fleet (grid.csv, meters.csv) to import instead of the harness's own.
    fleet: Path | None = None
    #: Further sections of the configuration file ({"commands": {...}}).
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)

    def pusher(
        self, framing: str = "wrapper", port: int | None = None, source: str = "127.0.0.1"
    ) -> Pusher:
        """A meter connection (from `source`, a loopback address) the server closes
        when it stops (also after a failure)."""
        p = Pusher(port or self.port, framing, source)
        self.pushers.append(p)
        return p

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def config(self) -> Path:
        return self.root / "headend.toml"

    @property
    def log(self) -> Path:
        return self.root / "serve.log"

    def env(self) -> dict[str, str]:
        return {**os.environ, "HEADEND_DATA": str(self.data)}

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(
            [*HEADEND, *args, "--config", str(self.config)],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check and r.returncode != 0:
            raise AssertionError(f"headend {' '.join(args)} failed ({r.returncode}): {r.stderr}")
        return r

    def setup(self) -> None:
        self.write_config()
        if self.fleet is not None:
            self.cli("grid", "import", str(self.fleet / "grid.csv"))
            self.cli("meters", "import", str(self.fleet / "meters.csv"))
            return
        (self.root / "grid.csv").write_text(GRID)
        self.cli("grid", "import", str(self.root / "grid.csv"))
        header = "serial,kind,role,node_id,account_id,model,system_title,ek,ak,password,lat,lon"
        ratios = any(m.ct or m.vt for m in self.meters)
        header += ",ct_ratio,vt_ratio\n" if ratios else "\n"
        (self.root / "meters.csv").write_text(
            header + "\n".join(m.csv(ratios) for m in self.meters) + "\n"
        )
        self.cli("meters", "import", str(self.root / "meters.csv"))

    def write_config(self) -> None:
        """The configuration file alone (no imports: a store to restore into)."""
        self.root.mkdir(parents=True, exist_ok=True)
        server = {
            "host": "127.0.0.1",
            "port": self.port,
            "workers": 2,
            "handshake_timeout": 3.0,
            "sweep_interval": 0.5,
            "unknown_meter_ttl": 2.0,
            # Refusals are told in aggregate every interval: short, so tests see them.
            "reject_report_interval": 0.5,
            **self.server_settings,
        }
        store = {"ingest_interval": 0.05, "fsync": "always", **self.store_settings}
        # No HTTP unless a test asks for it (many servers run side by side).
        sections = {"http": {"port": 0}, **self.sections}
        extra = "".join(f"[{k}]\n{_toml(v)}\n" for k, v in sections.items())
        self.config.write_text(f"[server]\n{_toml(server)}\n[store]\n{_toml(store)}\n{extra}")

    def start(self) -> None:
        # The child inherits the descriptor; ours can close at once.
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(
                [*HEADEND, "serve", "--config", str(self.config)],
                env=self.env(),
                stdout=logf,
                stderr=logf,
            )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"headend serve exited: {self.log.read_text()[-3000:]}")
            with contextlib.suppress(ServerNotRunning, OSError, AdminError):
                st = self.admin("status")
                if len([w for w in st["workers"] if w["connected"]]) == 2 and self._listening():
                    return
            time.sleep(0.1)
        raise AssertionError(f"headend serve did not come up: {self.log.read_text()[-3000:]}")

    def _listening(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False
        return True

    def admin(self, cmd: str, **args: Any) -> Any:
        c = AdminClient(self.data / "admin.sock", timeout=30)
        try:
            return c.call(cmd, **args)
        finally:
            c.close()

    def sql(self, query: str) -> list[list[Any]]:
        return self.admin("query", query=query)["rows"]  # type: ignore[no-any-return]

    def scalar(self, query: str) -> Any:
        return self.sql(query)[0][0]

    def wait_for(self, query: str, expected: Any, timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        got = None
        while time.monotonic() < deadline:
            with contextlib.suppress(ServerNotRunning, AdminError, OSError):
                rows = self.sql(query)
                got = rows[0][0] if rows else None
                if got == expected:
                    return got
            time.sleep(0.1)
        raise AssertionError(f"{query!r} gave {got!r}, expected {expected!r}")

    def pid_of(self, role: str) -> int:
        st = self.admin("status")
        if role == "store":
            return int(st["pid"])
        return int(next(w["pid"] for w in st["workers"] if w["worker"] == int(role)))

    def stop(self) -> int:
        for p in self.pushers:
            p.close()
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        return code


class Pusher:
    """A meter connection that reconnects when the head-end drops it."""

    def __init__(self, port: int, framing: str = "wrapper", source: str = "127.0.0.1") -> None:
        self.port = port
        self.framing = framing
        self.source = source
        self.sock: socket.socket | None = None
        self.reconnects = 0

    def _connect(self) -> socket.socket:
        if self.sock is None:
            self.sock = socket.create_connection(
                ("127.0.0.1", self.port), timeout=10, source_address=(self.source, 0)
            )
        return self.sock

    def frame(self, apdu: bytes, source: int = 1) -> bytes:
        if self.framing == "hdlc":
            return codec.hdlc_frame((0x10, None), (1, 16 + source), "UI", b"\xe6\xe7\x00" + apdu)
        return codec.wrap(apdu, source, 1)

    def send(self, data: bytes) -> bool:
        """Sends; on a broken connection reconnects once and reports False (the bytes
        may or may not have been read by the head-end)."""
        try:
            self._connect().sendall(data)
            return True
        except OSError:
            self.close()
            self.reconnects += 1
            return False

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
            self.sock = None


@contextlib.contextmanager
def running(
    root: Path,
    meters: list[Meter],
    *,
    server_settings: dict[str, Any] | None = None,
    store_settings: dict[str, Any] | None = None,
    fleet: Path | None = None,
    sections: dict[str, dict[str, Any]] | None = None,
) -> Iterator[Server]:
    """A started server; the settings override the harness's [server] and [store]
    (and `sections` add others)."""
    srv = Server(
        root,
        free_port(),
        meters,
        server_settings=server_settings or {},
        store_settings=store_settings or {},
        fleet=fleet,
        sections=sections or {},
    )
    srv.setup()
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()
