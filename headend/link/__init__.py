"""The link between region nodes and the national centre (DESIGN.md section 9).

- `keys`: node keys (X25519), the passwords and key-wrapping keys peers derive;
- `outbox`: what a node sends, on disk before its own store sees it (a region's tap);
- `down`: the centre's routing of master data and commands, and applying records;
- `natsconf`: the node's NATS server (JetStream, leaf node of the centre's);
- `service`: the store process's publisher, appliers, heartbeats and link status.
"""

from __future__ import annotations

from dataclasses import dataclass

from headend.config import Config
from headend.link.outbox import Outbox, UpTap
from headend.ownership import Ownership
from headend.store.db import Tap


@dataclass
class Taps:
    """A process's end of the link: the tap its store writes through, and the
    outbox behind it."""

    tap: Tap | None
    outbox: Outbox | None = None


def taps(cfg: Config, owner: Ownership, writer: str) -> Taps:
    """The tap of a store opened by `writer` (``store`` for the store process, else a
    command run without the server): a region's sends everything up, the centre's
    sends master data down (`headend.link.down.DownRouter`); standalone: none."""
    if cfg.node.role == "standalone":
        return Taps(None)
    from headend.link.outbox import writer_name

    outbox = Outbox(cfg.link_dir / "outbox", writer_name(writer))
    if cfg.node.role == "region":
        return Taps(UpTap(outbox, cfg.node.name), outbox)
    from headend.keys import load_master_key
    from headend.link.down import DownRouter
    from headend.link.keys import NodeSecrets

    router = DownRouter(
        cfg, owner, outbox, NodeSecrets.load(cfg, create=True), load_master_key(cfg, create=True)
    )
    return Taps(router, outbox)
