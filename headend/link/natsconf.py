"""This node's NATS server: its configuration, written into the data directory.

`headend serve` starts a NATS server with JetStream for a region or centre node (the
supervisor's child, like the store and the workers). Its JetStream domain is the
node's name, so each region's streams stay apart from the centre's; a region's server
is a leaf node of the centre's, which accepts only the region nodes among its peers
(each with the password both derive from their node keys, see `headend.link.keys`).
The node's own processes connect on `[link] host:client_port` with a password only
they can derive. With `[link] tls_cert` and `tls_key`, leaf connections use TLS.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from headend.config import Config
from headend.link.keys import NodeSecrets

LOCAL_USER = "headend"
# Room for the headers of a message on top of its part of a record.
HEADER_ROOM = 64 << 10


def _q(text: str) -> str:
    """A string in the NATS configuration language (JSON-compatible quoting)."""
    return json.dumps(text)


def uses_tls(cfg: Config) -> bool:
    """The centre serves TLS with a certificate and key; a region speaks it when it
    has the CA to verify the centre with (and may show a certificate of its own)."""
    link = cfg.link
    if cfg.node.role == "centre":
        return bool(link.tls_cert and link.tls_key)
    return bool(link.tls_ca or (link.tls_cert and link.tls_key))


def _tls(cfg: Config, *, server: bool) -> list[str]:
    link = cfg.link
    if not uses_tls(cfg):
        return []
    out = ["  tls {"]
    if link.tls_cert and link.tls_key:
        out += [f"    cert_file: {_q(link.tls_cert)}", f"    key_file: {_q(link.tls_key)}"]
    if link.tls_ca:
        out.append(f"    ca_file: {_q(link.tls_ca)}")
        if server:
            out.append("    verify: true")  # regions show certificates from this CA
    if server:
        out.append("    timeout: 5")
    out.append("  }")
    return out


def server_config(cfg: Config, secrets: NodeSecrets) -> str:
    node, link = cfg.node, cfg.link
    store_dir = cfg.link_dir / "nats"
    lines = [
        "# Written by headend serve from the node's configuration; edits are overwritten.",
        f"server_name: {_q(node.name)}",
        f"listen: {_q(f'{link.host}:{link.client_port}')}",
        f"max_payload: {link.message_bytes + HEADER_ROOM}",
        "jetstream {",
        f"  store_dir: {_q(str(store_dir))}",
        f"  domain: {_q(node.name)}",
        "}",
        "authorization {",
        f"  users = [ {{ user: {_q(LOCAL_USER)}, password: {_q(secrets.local_password())} }} ]",
        "}",
    ]
    if link.monitor_port:
        lines.append(f"http: {_q(f'{link.host}:{link.monitor_port}')}")
    if node.role == "centre":
        users = ", ".join(
            f"{{ user: {_q(p.name)}, password: {_q(secrets.leaf_password(p.name))} }}"
            for p in cfg.peers
            if p.role == "region"
        )
        lines += [
            "leafnodes {",
            f"  listen: {_q(f'{link.leaf_host}:{link.leaf_port}')}",
            *([f"  advertise: {_q(link.leaf_advertise)}"] if link.leaf_advertise else []),
            f"  authorization {{ users = [ {users} ] }}",
            *_tls(cfg, server=True),
            "}",
        ]
    elif node.role == "region":
        centre = next(p for p in cfg.peers if p.role == "centre")
        scheme = "tls" if uses_tls(cfg) else "nats-leaf"
        url = f"{scheme}://{node.name}:{secrets.leaf_password(centre.name)}@{node.upstream}"
        remote = [f"    url: {_q(url)}", *("  " + t for t in _tls(cfg, server=False))]
        lines += ["leafnodes {", "  reconnect: 1", "  remotes = [ {", *remote, "  } ]", "}"]
    return "\n".join(lines) + "\n"


def write_server_config(cfg: Config, secrets: NodeSecrets) -> Path:
    """Writes the configuration (mode 0600: it holds the link's passwords)."""
    cfg.link_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = cfg.link_dir / "nats.conf"
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, server_config(cfg, secrets).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path


def client_url(cfg: Config, secrets: NodeSecrets) -> str:
    """How this node's processes reach its own NATS server."""
    link = cfg.link
    return f"nats://{LOCAL_USER}:{secrets.local_password()}@{link.host}:{link.client_port}"
