"""The link between region nodes and the national centre (DESIGN.md section 9).

- `keys`: node keys (X25519), the passwords and key-wrapping keys peers derive;
- `outbox`: what a node sends, on disk before its own store sees it (a region's tap);
- `down`: the centre's routing of master data and commands, and applying records;
- `natsconf`: the node's NATS server (JetStream, leaf node of the centre's);
- `service`: the store process's publisher, appliers, heartbeats and link status.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from headend.config import Config
from headend.errors import HeadendError
from headend.link.outbox import Outbox, UpTap
from headend.ownership import Ownership
from headend.store.db import Tap


@dataclass
class Taps:
    """A process's end of the link: the tap its store writes through, and the
    outbox behind it."""

    tap: Tap | None
    outbox: Outbox | None = None


def _up_keys(cfg: Config) -> Callable[[Sequence[str], Sequence[Sequence[Any]]], list[list[Any]]]:
    """How a region's meter keys leave for the centre: moved from its master key to the
    key only it and the centre derive (loaded when keys first travel)."""

    def rewrap(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[list[Any]]:
        from headend.keys import load_master_key
        from headend.link.down import rewrap_keys
        from headend.link.keys import NodeSecrets

        centre = next((p.name for p in cfg.peers if p.role == "centre"), "")
        if not centre:
            raise HeadendError("meter keys cannot go up: no [[peers]] entry has role centre")
        link = NodeSecrets.load(cfg, create=True).link_key(centre)
        return rewrap_keys(columns, rows, load_master_key(cfg), link)

    return rewrap


def taps(cfg: Config, owner: Ownership, writer: str) -> Taps:
    """The tap of a store opened by `writer` (``store`` for the store process, else a
    command run without the server): a region's sends everything up, the centre's
    sends master data down (`headend.link.down.DownRouter`); standalone: none."""
    if cfg.node.role == "standalone":
        return Taps(None)
    from headend.link.outbox import writer_name

    outbox = Outbox(cfg.link_dir / "outbox", writer_name(writer))
    if cfg.node.role == "region":
        return Taps(UpTap(outbox, cfg.node.name, rewrap=_up_keys(cfg)), outbox)
    from headend.keys import load_master_key
    from headend.link.down import DownRouter
    from headend.link.keys import NodeSecrets

    router = DownRouter(
        cfg, owner, outbox, NodeSecrets.load(cfg, create=True), load_master_key(cfg, create=True)
    )
    return Taps(router, outbox)
