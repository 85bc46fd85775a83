"""Meter-model profiles: `protocols/profiles/*.toml`, one file per model.

Each file is checked by loading it into a throwaway Directory (the Rust side validates
layouts, units and registers), so a bad profile stops the server at start with the
file's name, not at the first push from such a meter.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from headend.codec import Directory
from headend.config import ConfigError
from headend.errors import HeadendError


def load_all(directory: Path) -> list[dict[str, Any]]:
    """Every profile in `directory`, validated; names must be unique."""
    if not directory.is_dir():
        raise ConfigError(f"profiles directory {directory} does not exist")
    out: list[dict[str, Any]] = []
    names: dict[str, Path] = {}
    check = Directory()
    for path in sorted(directory.glob("*.toml")):
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: {e}") from None
        name = data.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{path}: a profile needs a name")
        if name in names:
            raise ConfigError(f"{path}: model {name} is already defined in {names[name]}")
        try:
            check.add_profile(data)
        except HeadendError as e:
            raise ConfigError(f"{path}: {e}") from None
        names[name] = path
        out.append(data)
    if not out:
        raise ConfigError(f"no meter-model profiles in {directory}")
    return out


def kinds(profiles: list[dict[str, Any]]) -> dict[str, str]:
    """Model name to kind (electricity or gas)."""
    return {p["name"]: p["kind"] for p in profiles}
