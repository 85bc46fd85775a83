"""Node keys: who a peer is, the link's passwords, and meter keys re-wrapped for a peer.

Every node of a federation has a node key (X25519), created on first use in
``<data>/secrets/node.key`` (mode 0600); ``headend node key`` prints its public half,
which goes into the peers' ``[[peers]] public_key``. Nothing secret is ever exchanged
between sites: two nodes that list each other derive the same secret from their own
private key and the other's public key (X25519), and from it, through HKDF-SHA256
with a purpose label:

- the password a region's NATS server presents to the centre's (leaf node), which
  the centre's server accepts only for the peers in its configuration;
- the key meter keys are wrapped under on the link (``link_key``): the centre moves
  a meter's keys from its master key to this key (in Rust, the plaintext never reaches
  Python), the receiving region moves them on to its own master key. Keys never travel
  or rest in clear.

The password of the node's own processes for its own NATS server derives from the
node key alone.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from headend.codec import MasterKey
from headend.config import Config, PeerConfig
from headend.errors import HeadendError


class NodeKeyError(HeadendError):
    """The node key is missing, unreadable or malformed."""


def node_key_path(cfg: Config) -> Path:
    return cfg.data_dir / "secrets" / "node.key"


def load_node_key(cfg: Config, *, create: bool = False) -> X25519PrivateKey:
    path = node_key_path(cfg)
    if not path.exists():
        if not create:
            raise NodeKeyError(f"no node key in {path} (`headend node key` creates one)")
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process of this node made it a moment ago
        else:
            try:
                os.write(fd, os.urandom(32).hex().encode() + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
    if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise NodeKeyError(f"node key {path} is readable by others: chmod 600 it")
    try:
        raw = bytes.fromhex(path.read_text().strip())
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise NodeKeyError(f"{path}: a node key is 64 hex digits")
    return X25519PrivateKey.from_private_bytes(raw)


def public_hex(key: X25519PrivateKey) -> str:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def _derive(secret: bytes, label: str, length: int = 32) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=label.encode()).derive(
        secret
    )


class NodeSecrets:
    """The secrets this node shares with each of its peers, derived on demand."""

    def __init__(self, cfg: Config, key: X25519PrivateKey) -> None:
        self.name = cfg.node.name
        self.key = key
        self.peers = {p.name: p for p in cfg.peers}

    @classmethod
    def load(cls, cfg: Config, *, create: bool = False) -> NodeSecrets:
        return cls(cfg, load_node_key(cfg, create=create))

    def _shared(self, peer: PeerConfig, purpose: str) -> bytes:
        public = X25519PublicKey.from_public_bytes(bytes.fromhex(peer.public_key))
        pair = "|".join(sorted((self.name, peer.name)))
        return _derive(self.key.exchange(public), f"headend link {purpose} {pair}")

    def peer(self, name: str) -> PeerConfig:
        try:
            return self.peers[name]
        except KeyError:
            raise HeadendError(f"{name} is not among this node's peers") from None

    def leaf_password(self, peer: str) -> str:
        """What a region's NATS server presents to the centre's (both derive it)."""
        return self._shared(self.peer(peer), "leaf password").hex()

    def link_key(self, peer: str) -> MasterKey:
        """The key meter keys travel under between this node and `peer`."""
        return MasterKey(self._shared(self.peer(peer), "meter keys"))

    def local_password(self) -> str:
        """The password of this node's own processes for its own NATS server."""
        raw = self.key.private_bytes_raw()
        return _derive(raw, f"headend local nats {self.name}").hex()
