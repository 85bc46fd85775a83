"""Firmware images the simulated meters accept (``loadtest/sim/src/image.rs``): any
bytes followed by 8 bytes, the FNV-1a-64 of those bytes, big-endian. A simulated meter
verifies an image by that check value, as a real one checks its maker's signature."""

from __future__ import annotations

import random
from pathlib import Path

FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x00000100000001B3


def fnv64(data: bytes) -> int:
    h = FNV_OFFSET
    for b in data:
        h = ((h ^ b) * FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    return h


def make_image(path: Path, size: int, seed: int = 0) -> Path:
    """Writes a simulated meter's image of `size` bytes (trailer included)."""
    if size <= 8:
        raise ValueError("an image needs more than its 8-byte check value")
    body = random.Random(seed).randbytes(size - 8)  # noqa: S311 - test data
    path.write_bytes(body + fnv64(body).to_bytes(8, "big"))
    return path
