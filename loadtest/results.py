"""Result files: every measured run leaves `bench/results/<kind>-<time>.json` with the
command line that produced it, the machine and the time."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIR = ROOT / "bench" / "results"


def record(command: str, result: Any) -> dict[str, Any]:
    """`result` with the command (`command` followed by this process's arguments)."""
    return {
        "command": " ".join([command, *sys.argv[1:]]),
        "machine": {
            "node": platform.node(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "kernel": platform.release(),
        },
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "result": result,
    }


def save(kind: str, rec: dict[str, Any], directory: Path = DEFAULT_DIR) -> Path:
    """Writes `rec` as `<directory>/<kind>-<UTC time>.json`; says where on stderr."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{kind}-{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(rec, indent=2) + "\n")
    print(f"written to {path}", file=sys.stderr)
    return path
