"""What the centre sends down, and how either end applies a peer's record.

The centre imports the master data once (grid, meters with their keys, billing
accounts); `DownRouter`, the tap on the centre's store, sends each row to the region
node that owns it and to that node's standby, with meter keys moved from the centre's
master key to the link key of the receiving node (`MasterKey.rewrap`, in Rust). The
region moves them on to its own master key when it applies them (`rewrap_keys`).

`apply_insert` is the one way a peer's rows reach this node's tables: only tables
that may travel in that direction, identifier columns, and the sender's token
prefixed with the sender's name (so two nodes' tokens never collide).
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from headend.codec import MasterKey
from headend.config import Config
from headend.link.keys import NodeSecrets
from headend.link.outbox import DOWN_TABLES, EVERY_REGION, Envelope, Outbox
from headend.link.service import BadRecord
from headend.ownership import Ownership
from headend.store import keyring
from headend.store.db import Store

log = logging.getLogger("headend.link")

IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
KEY_COLUMNS = ("ek", "ak", "password")  # every meter_keys row has these


def rewrap_keys(
    columns: Sequence[str], rows: Iterable[Sequence[Any]], src: MasterKey, dst: MasterKey
) -> list[list[Any]]:
    """`meter_keys` rows with their wrapped keys moved from `src` to `dst` (and the
    fingerprint column naming `dst`). A key that does not unwrap under `src` is the
    sender's mistake: BadRecord."""
    idx = {c: i for i, c in enumerate(columns)}
    if "serial" not in idx or not all(c in idx for c in KEY_COLUMNS):
        raise BadRecord("meter_keys rows without serial, ek, ak and password")
    out = [list(r) for r in rows]
    items: list[tuple[bytes, str, str]] = []
    where: list[tuple[int, int]] = []
    wrapped = [(c, purpose) for c, purpose in keyring.WRAPPED.items() if c in idx]
    for n, r in enumerate(out):
        for c, purpose in wrapped:
            if r[idx[c]]:
                items.append((bytes.fromhex(str(r[idx[c]])), purpose, str(r[idx["serial"]])))
                where.append((n, idx[c]))
    if items:
        try:
            moved = src.rewrap(dst, items, os.urandom(12 * len(items)))
        except Exception as e:
            raise BadRecord(f"meter keys do not unwrap under the link key: {e}") from None
        for (n, i), v in zip(where, moved, strict=True):
            out[n][i] = v.hex()
    if "master_key" in idx:
        for r in out:
            r[idx["master_key"]] = dst.fingerprint
    return out


def keep_changed_keys(
    store: Store, db: str, columns: Sequence[str], rows: list[list[Any]]
) -> list[list[Any]]:
    """The centre's rows of delivered keys (source import, or none said) without those
    of meters whose keys this node changed since (a rotation whose record has not
    reached the centre yet): delivered keys never go back over changed ones."""
    if "serial" not in columns:
        return rows
    i = list(columns).index("serial")
    src = list(columns).index("source") if "source" in columns else -1

    def delivered(r: list[Any]) -> bool:
        return src < 0 or r[src] in ("", "import")

    asked = sorted({str(r[i]) for r in rows if delivered(r)})
    if not asked:
        return rows
    _, kept = store.query(
        f"SELECT serial FROM {db}.meter_keys FINAL WHERE serial IN %(s)s AND source != 'import'",
        {"s": asked},
    )
    changed = {str(k[0]) for k in kept}
    if changed:
        log.warning(
            "kept the keys of %d meters changed here over older delivered ones from the "
            "centre (%s)",
            len(changed),
            ", ".join(sorted(changed)[:5]),
        )
    return [r for r in rows if not (str(r[i]) in changed and delivered(r))]


def apply_insert(store: Store, origin: str, env: Envelope, tables: frozenset[str]) -> int:
    """Inserts a peer's `binary` or `rows` record, or carries out its `delete`;
    returns the rows inserted."""
    if env.table not in tables:
        raise BadRecord(f"table {env.table!r} does not travel this way")
    if env.kind == "delete":
        where = env.data
        if not isinstance(where, dict) or not where or not all(IDENT.match(str(c)) for c in where):
            raise BadRecord("a delete without column equalities")
        store.delete(env.table, {str(k): v for k, v in where.items()})
        return 0
    if not env.columns or not all(IDENT.match(c) for c in env.columns):
        raise BadRecord(f"bad column list {env.columns!r}")
    token = f"{origin}|{env.token}"
    if env.kind == "binary":
        if env.fmt not in ("RowBinary", "Native") or not isinstance(env.data, bytes):
            raise BadRecord(f"binary record in format {env.fmt!r}")
        store.insert_rowbinary(env.table, env.columns, env.data, token, env.fmt, rows=env.rows)
        return env.rows
    if env.kind == "rows":
        rows = env.data
        if not isinstance(rows, list) or any(
            not isinstance(r, list) or len(r) != len(env.columns) for r in rows
        ):
            raise BadRecord("rows that do not match their columns")
        store.insert_rows(env.table, env.columns, rows, token=token)
        return len(rows)
    raise BadRecord(f"{env.kind} records do not insert")


class DownRouter:
    """The centre's tap: master data goes to the node that owns each row's region (and
    to its standby); rows of what the centre owns itself stay here."""

    def __init__(
        self, cfg: Config, owner: Ownership, outbox: Outbox, secrets: NodeSecrets, master: MasterKey
    ) -> None:
        self.db = cfg.store.database
        self.origin = cfg.node.name
        self.owner = owner
        self.outbox = outbox
        self.secrets = secrets
        self.master = master
        self.standby = {p.name: p.standby for p in cfg.peers if p.standby}
        self.region_nodes = sorted(p.name for p in cfg.peers if p.role == "region")
        self.store: Store | None = None  # for region lookups (set by the owner)
        self._serial_region: dict[str, str] = {}

    def wants(self, table: str) -> bool:
        return table in DOWN_TABLES

    def destinations(self, region: str) -> list[str]:
        """The nodes a row of `region` goes to: its owner (unless it is this node)
        and the owner's standby."""
        owner = self.owner.owner_of(region)
        if owner is None or owner == self.origin:
            return []
        out = [owner]
        if self.standby.get(owner):
            out.append(self.standby[owner])
        return out

    def _regions(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> list[str]:
        idx = {c: i for i, c in enumerate(columns)}
        if "region" in idx:
            out = [str(r[idx["region"]]) for r in rows]
            if table == "meters":
                for r, region in zip(rows, out, strict=True):
                    self._serial_region[str(r[idx["serial"]])] = region
            return out
        if "serial" in idx:
            serials = [str(r[idx["serial"]]) for r in rows]
            self._look_up(sorted({s for s in serials if s not in self._serial_region}))
            return [self._serial_region.get(s, "") for s in serials]
        if "account_id" in idx:
            accounts = sorted({str(r[idx["account_id"]]) for r in rows})
            of = self._account_regions(accounts)
            return [of.get(str(r[idx["account_id"]]), "") for r in rows]
        return ["" for _ in rows]

    def _look_up(self, serials: list[str]) -> None:
        if not serials or self.store is None:
            return
        for i in range(0, len(serials), 10_000):
            _, found = self.store.query(
                f"SELECT serial, argMax(region, updated_at) FROM {self.db}.meters "
                "WHERE serial IN %(s)s GROUP BY serial",
                {"s": serials[i : i + 10_000]},
            )
            self._serial_region.update({str(s): str(r) for s, r in found})

    def _account_regions(self, accounts: list[str]) -> dict[str, str]:
        if not accounts or self.store is None:
            return {}
        out: dict[str, str] = {}
        for i in range(0, len(accounts), 10_000):
            _, found = self.store.query(
                "SELECT account_id, any(region) FROM (SELECT serial, "
                "argMax(account_id, updated_at) AS account_id, "
                "argMax(region, updated_at) AS region "
                f"FROM {self.db}.meters GROUP BY serial) WHERE account_id IN %(a)s "
                "GROUP BY account_id",
                {"a": accounts[i : i + 10_000]},
            )
            out.update({str(a): str(r) for a, r in found})
        return out

    def rows(
        self,
        table: str,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        token: str | None,
        *,
        skip: str = "",
    ) -> None:
        """Sends rows to the nodes of their regions (owner and standby); `skip`: not
        back to the node they came from (a region's rotated keys, forwarded to its
        standby)."""
        by_dest: dict[str, list[Sequence[Any]]] = {}
        if table in EVERY_REGION:  # people: every region node knows every account
            by_dest = {dest: list(rows) for dest in self.region_nodes}
        else:
            for row, region in zip(rows, self._regions(table, columns, rows), strict=True):
                for dest in self.destinations(region):
                    if dest != skip:
                        by_dest.setdefault(dest, []).append(row)
        envelopes = []
        base = token or uuid.uuid4().hex
        for dest, chosen in sorted(by_dest.items()):
            data: list[list[Any]] = [list(r) for r in chosen]
            if table == "meter_keys":
                data = rewrap_keys(columns, data, self.master, self.secrets.link_key(dest))
            envelopes.append(
                Envelope(
                    "rows",
                    dest,
                    table,
                    list(columns),
                    f"{self.origin}/{base}",
                    rows=len(data),
                    data=data,
                )
            )
        self.outbox.append(envelopes)

    def binary(
        self,
        table: str,
        columns: Sequence[str],
        data: bytes,
        fmt: str,
        token: str | None,
        *,
        rows: int = 0,
    ) -> None:
        raise BadRecord(f"master data ({table}) is sent down as rows, not {fmt} blocks")

    def delete(self, table: str, where: dict[str, Any]) -> None:
        raise BadRecord(f"master data ({table}) is replaced by newer rows, not deleted")

    def send(self, dest: str, env: Envelope) -> None:
        """A down-link action (a command, a cancellation) for one region node."""
        env.dest = dest
        self.outbox.append([env])
