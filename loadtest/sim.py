"""Finding and starting the Rust simulator (`loadtest/sim`, binary `headend-sim`)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
BINARY = ROOT / "target" / "release" / "headend-sim"


def binary() -> Path:
    """The built simulator; `make build` (or `cargo build --release -p headend-sim`)
    makes it."""
    if not BINARY.exists():
        raise FileNotFoundError(f"{BINARY} is not built: run `make build`")
    return BINARY


def start(
    fleet: Path,
    port: int,
    *args: str,
    host: str = "127.0.0.1",
    stdout: int | IO[Any] = subprocess.PIPE,
    stderr: int | IO[Any] | None = None,
) -> subprocess.Popen[str]:
    """One simulator process (status lines on its stdout)."""
    cmd = [str(binary()), "--fleet", str(fleet), "--host", host, "--port", str(port), *args]
    return subprocess.Popen(cmd, stdout=stdout, stderr=stderr, text=True)


def status_lines(stream: IO[str]) -> Iterator[dict[str, Any]]:
    """The JSON status lines a simulator prints, as they come."""
    for raw in stream:
        line = raw.strip()
        if line.startswith("{"):
            yield json.loads(line)


def read_record(path: Path) -> tuple[dict[str, list[tuple[str, int]]], list[dict[str, Any]]]:
    """A --record file: the register list (OBIS, scaler) of each model, and the lines."""
    models: dict[str, list[tuple[str, int]]] = {}
    lines: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as f:
        for raw in f:
            r = json.loads(raw)
            if r["k"] == "models":
                models = {k: [(o, int(s)) for o, s in v] for k, v in r.items() if k != "k"}
            else:
                lines.append(r)
    return models, lines


# Connections a simulator opens from one source address: real meters each have their
# own address on the APN, and the head-end limits what one address may do before a
# meter is identified on it ([server] source_* settings).
PER_ADDRESS = 64


def fleet_sources(k: int, connections: int) -> list[str]:
    """Source addresses for simulator process `k` of a fleet: 127.(1 + k // 250).(k %
    250).1-250, as many as keep about PER_ADDRESS connections on each (127.0.x.x stays
    free for probes, attackers and tests)."""
    n = max(1, min(250, -(-connections // PER_ADDRESS)))
    return [f"127.{1 + k // 250}.{k % 250}.{i}" for i in range(1, n + 1)]


def partition_args(k: int, parts: int, sources: Sequence[str]) -> list[str]:
    return ["--partition", f"{k}/{parts}", "--source", ",".join(sources)]
