"""Firmware images a node can send to its meters: ``<data>/firmware/<sha256>.img`` with
``<sha256>.json`` beside it (identifier, size, who added it, when).

An image is named by its SHA-256, so what a command or wave names is exactly the bytes
that go to the meters: a file changed after it was added no longer loads. The
identifier is what the meter reports as its active firmware once the image is
activated (1.0.0.2.0.255). A regional node holds the images for its own meters; copying
them from the centre is left to the operators (``headend firmware add`` on each node).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from headend.errors import HeadendError

# What an identifier may hold: what fits an octet-string a meter shows (DLMS leaves it
# to the maker; we keep to printable ASCII).
IDENTIFIER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,47}$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
MAX_IMAGE = 4 << 20


class FirmwareError(HeadendError):
    """An image that cannot be added or loaded."""


@dataclass(frozen=True)
class Image:
    sha256: str
    identifier: str
    size: int
    data: bytes


def _paths(root: Path, sha: str) -> tuple[Path, Path]:
    return root / f"{sha}.img", root / f"{sha}.json"


def add(root: Path, path: Path, identifier: str, who: str) -> dict[str, object]:
    """Copies the image at `path` in under its SHA-256; returns its manifest."""
    if not IDENTIFIER.match(identifier):
        raise FirmwareError(
            f"identifier {identifier!r}: 1-48 letters, digits and ._+- (what the meter "
            "will report as its firmware)"
        )
    try:
        data = path.read_bytes()
    except OSError as e:
        raise FirmwareError(f"cannot read {path}: {e.strerror}") from None
    if not 0 < len(data) <= MAX_IMAGE:
        raise FirmwareError(f"{path}: {len(data)} bytes; an image is 1 byte to {MAX_IMAGE}")
    sha = hashlib.sha256(data).hexdigest()
    root.mkdir(parents=True, exist_ok=True)
    img, meta = _paths(root, sha)
    manifest: dict[str, object] = {
        "sha256": sha,
        "identifier": identifier,
        "size": len(data),
        "added_by": who,
        "added_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    if meta.exists():
        old = json.loads(meta.read_text())
        if old.get("identifier") != identifier:
            raise FirmwareError(
                f"this image is already here as {old.get('identifier')!r} ({sha[:12]})"
            )
        return old  # type: ignore[no-any-return]
    tmp = img.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, img)
    meta.write_text(json.dumps(manifest, indent=1))
    return manifest


def listing(root: Path) -> list[dict[str, object]]:
    if not root.is_dir():
        return []
    out = []
    for meta in sorted(root.glob("*.json")):
        try:
            out.append(json.loads(meta.read_text()))
        except (OSError, ValueError):
            continue
    return sorted(out, key=lambda m: str(m.get("added_at")))


def load(root: Path, sha: str) -> Image:
    """The image named `sha`, checked against its name."""
    if not SHA256.match(sha):
        raise FirmwareError(f"{sha!r} is not an image's SHA-256 (64 hex digits)")
    img, meta = _paths(root, sha)
    try:
        data = img.read_bytes()
        manifest = json.loads(meta.read_text())
    except (OSError, ValueError) as e:
        raise FirmwareError(f"no firmware image {sha[:12]} on this node ({e})") from None
    if hashlib.sha256(data).hexdigest() != sha:
        raise FirmwareError(f"firmware image {sha[:12]} has changed on disk since it was added")
    return Image(sha, str(manifest["identifier"]), len(data), data)
