"""A meter's keys as stored: one `meter_keys` row per meter (latest ``updated_at``
wins), every key wrapped under the deployment's master key (``headend/keys.py``).

Everything that changes a stored meter's keys after its import goes through here, so
the row is always written whole (a change of one column never blanks another):

- a rotation (``headend/server/rekey.py``): new keys are *pending* before the meter is
  told (so no crash leaves a meter with keys nobody has); once a fresh association
  with them succeeds they become *current* and the old ones *previous*, accepted for
  late frames until ``previous_until``; a meter that refused them loses the pending
  ones and keeps its keys;
- a change of keys by two admins (``headend/server/submit.py``).

Rows written here say where they came from (``source`` 'rotation' or 'manual'): a
re-import of a meters file, which holds the keys the meters were delivered with, does
not put those back over them (``headend/store/imports.py``).
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Protocol

COLUMNS = [
    "serial",
    "system_title",
    "ek",
    "ak",
    "password",
    "kek",
    "pending_ek",
    "pending_ak",
    "previous_ek",
    "previous_ak",
    "previous_until",
    "source",
    "master_key",
    "updated_at",
]
# Wrapped values and the purpose each was wrapped for (the wrap binds it).
WRAPPED = {
    "ek": "ek",
    "ak": "ak",
    "password": "password",
    "kek": "kek",
    "pending_ek": "ek",
    "pending_ak": "ak",
    "previous_ek": "ek",
    "previous_ak": "ak",
}
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class SqlAccess(Protocol):
    db: str

    def query(
        self, sql: str, params: dict[str, Any] | None = None
    ) -> tuple[list[str], list[tuple[Any, ...]]]: ...

    def insert_rows(self, table: str, columns: list[str], rows: list[Any]) -> None: ...


class KeyringError(Exception):
    """A key change that cannot be made (unknown meter, nothing pending)."""


def current(store: SqlAccess, serial: str) -> dict[str, Any] | None:
    """The meter's stored keys row (None: the meter has none)."""
    cols = ", ".join(c for c in COLUMNS if c != "updated_at")
    _, rows = store.query(
        f"SELECT {cols}, toFloat64(updated_at) FROM {store.db}.meter_keys FINAL "
        "WHERE serial = %(s)s",
        {"s": serial},
    )
    if not rows:
        return None
    return dict(zip(COLUMNS, rows[0], strict=True))


def _write(store: SqlAccess, row: dict[str, Any], after: float) -> dict[str, Any]:
    # Strictly after the row it replaces, so it wins even within one millisecond.
    now = max(dt.datetime.now(dt.UTC).timestamp(), after + 0.001)
    row = {**row, "updated_at": dt.datetime.fromtimestamp(now, dt.UTC)}
    pu = row["previous_until"]
    if not isinstance(pu, dt.datetime):
        row["previous_until"] = EPOCH
    elif pu.tzinfo is None:
        row["previous_until"] = pu.replace(tzinfo=dt.UTC)
    store.insert_rows("meter_keys", COLUMNS, [[row[c] for c in COLUMNS]])
    return row


def _load(store: SqlAccess, serial: str) -> tuple[dict[str, Any], float]:
    row = current(store, serial)
    if row is None or not row["ek"]:
        raise KeyringError(f"meter {serial} has no keys stored")
    after = float(row.pop("updated_at"))
    return row, after


def set_pending(store: SqlAccess, serial: str, ek: str, ak: str, fingerprint: str) -> None:
    """New keys (wrapped, hex) about to be sent to the meter."""
    row, after = _load(store, serial)
    if row["master_key"] != fingerprint:
        raise KeyringError(
            f"meter {serial}'s keys are wrapped under master key {row['master_key']}, "
            f"the new ones under {fingerprint}"
        )
    row.update(pending_ek=ek, pending_ak=ak)
    _write(store, row, after)


def make_current(store: SqlAccess, serial: str, grace_s: float) -> None:
    """The meter answered a fresh association under its pending keys: they become its
    keys, the old ones previous until `grace_s` from now."""
    row, after = _load(store, serial)
    if not row["pending_ek"]:
        raise KeyringError(f"meter {serial} has no pending keys to make current")
    until = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=grace_s)
    row.update(
        previous_ek=row["ek"],
        previous_ak=row["ak"],
        previous_until=until.replace(microsecond=0),
        ek=row["pending_ek"],
        ak=row["pending_ak"],
        pending_ek="",
        pending_ak="",
        source="rotation",
    )
    _write(store, row, after)


def drop_pending(store: SqlAccess, serial: str) -> None:
    """The meter refused its new keys and keeps the ones it has."""
    row, after = _load(store, serial)
    if row["pending_ek"]:
        row.update(pending_ek="", pending_ak="")
        _write(store, row, after)


def replace(
    store: SqlAccess, serial: str, title: str, keys: tuple[str, str], fingerprint: str
) -> list[Any]:
    """A change of keys by people (two admins): the new keys are current at once, the
    meter's master key and password stay. Returns the row written."""
    row = current(store, serial)
    after = 0.0
    if row is None:
        row = {c: "" for c in COLUMNS}
        row["previous_until"] = EPOCH
        row["serial"] = serial
    else:
        after = float(row.pop("updated_at"))
        if row["master_key"] != fingerprint and (row["kek"] or row["password"]):
            raise KeyringError(
                f"meter {serial}'s stored keys are under master key {row['master_key']}, "
                f"not this node's {fingerprint}"
            )
    row.update(
        system_title=title,
        ek=keys[0],
        ak=keys[1],
        pending_ek="",
        pending_ak="",
        previous_ek="",
        previous_ak="",
        previous_until=EPOCH,
        source="manual",
        master_key=fingerprint,
    )
    written = _write(store, row, after)
    return [written[c] for c in COLUMNS]
