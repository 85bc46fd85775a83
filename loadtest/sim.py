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


def partition_args(k: int, parts: int, sources: Sequence[str]) -> list[str]:
    return ["--partition", f"{k}/{parts}", "--source", ",".join(sources)]
