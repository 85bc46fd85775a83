"""Shared fixtures: the known-answer vectors and hex helpers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "protocols" / "vectors" / "public-vectors.json"


def h(text: str) -> bytes:
    """Hex with spaces allowed (as the vector file writes it)."""
    return bytes.fromhex(text.replace(" ", ""))


@pytest.fixture(scope="session")
def vectors() -> dict[str, Any]:
    data = json.loads(VECTORS.read_text())
    return {v["id"]: v for v in data["vectors"]}


def feeds(data: bytes) -> list[list[bytes]]:
    """The same bytes fed whole, one byte at a time, and in uneven chunks."""
    uneven = []
    i, step = 0, 1
    while i < len(data):
        uneven.append(data[i : i + step])
        i += step
        step = step % 7 + 2
    return [[data], [data[i : i + 1] for i in range(len(data))], uneven]
