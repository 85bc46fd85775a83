"""The master key that wraps meter keys at rest.

It comes from the environment variable named by ``security.master_key_env`` or from a
file (``security.master_key_file``, default ``<data>/secrets/master.key``), 64 hex
digits. It is never written to the store. ``headend serve`` and ``headend meters
import`` create the default file on first use; production deployments point the
setting at a file kept elsewhere (and backed up: without it, stored keys are useless).
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from headend.codec import MasterKey
from headend.config import Config
from headend.errors import HeadendError

log = logging.getLogger("headend.keys")


class MasterKeyError(HeadendError):
    """The master key is missing or malformed."""


def _parse(text: str, where: str) -> MasterKey:
    t = text.strip()
    try:
        raw = bytes.fromhex(t)
    except ValueError:
        raise MasterKeyError(f"{where}: the master key must be 64 hex digits") from None
    if len(raw) != 32:
        raise MasterKeyError(
            f"{where}: the master key must be 32 bytes (64 hex digits), got {len(raw)}"
        )
    return MasterKey(raw)


def load_master_key(cfg: Config, *, create: bool = False) -> MasterKey:
    env = cfg.security.master_key_env
    if env and os.environ.get(env):
        return _parse(os.environ[env], f"${env}")
    path = cfg.master_key_path
    if not path.exists():
        if not create:
            raise MasterKeyError(
                f"no master key: set ${env} or create {path} "
                "(`headend serve` creates one on first start)"
            )
        _create(path)
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning(
            "master key file %s is readable by others (mode %o); chmod 600 it", path, mode & 0o777
        )
    return _parse(path.read_text(), str(path))


def _create(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, os.urandom(32).hex().encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    log.warning(
        "created a new master key in %s: back it up; "
        "without it the stored meter keys cannot be used",
        path,
    )


def wrap(master: MasterKey, secret: bytes, purpose: str, owner: str) -> bytes:
    """Wraps a meter secret with a fresh random nonce."""
    return master.wrap(secret, purpose, owner, os.urandom(12))
