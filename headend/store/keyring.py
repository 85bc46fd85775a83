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
from dataclasses import dataclass
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
    return current_many(store, [serial]).get(serial)


def current_many(store: SqlAccess, serials: list[str]) -> dict[str, dict[str, Any]]:
    """The stored keys rows of `serials` (by primary key), with `updated_at` as Unix
    seconds."""
    if not serials:
        return {}
    cols = ", ".join(c for c in COLUMNS if c != "updated_at")
    _, rows = store.query(
        f"SELECT {cols}, toFloat64(updated_at) FROM {store.db}.meter_keys FINAL "
        "WHERE serial IN %(s)s",
        {"s": sorted(set(serials))},
    )
    return {str(r[0]): dict(zip(COLUMNS, r, strict=True)) for r in rows}


@dataclass(frozen=True)
class Change:
    """One step of a rotation: `pending` (new keys, wrapped, hex, under the master key
    `fingerprint`), `current` (the pending keys verified; the old ones previous for
    `grace` seconds) or `drop` (the meter refused them)."""

    serial: str
    op: str
    ek: str = ""
    ak: str = ""
    fingerprint: str = ""
    grace: float = 0.0


def _step(row: dict[str, Any], ch: Change) -> str:
    """Applies `ch` to `row` in place; '' or why it cannot be applied."""
    if not row.get("ek"):
        return f"meter {ch.serial} has no keys stored"
    if ch.op == "pending":
        if row["master_key"] != ch.fingerprint:
            return (
                f"meter {ch.serial}'s keys are wrapped under master key {row['master_key']}, "
                f"the new ones under {ch.fingerprint}"
            )
        if not (ch.ek and ch.ak):
            return "pending keys need both ek and ak"
        row.update(pending_ek=ch.ek, pending_ak=ch.ak)
    elif ch.op == "current":
        if not row["pending_ek"]:
            return f"meter {ch.serial} has no pending keys to make current"
        until = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=ch.grace)
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
    elif ch.op == "drop":
        row.update(pending_ek="", pending_ak="")
    else:
        return f"unknown change of keys {ch.op!r}"
    return ""


def apply(store: SqlAccess, changes: list[Change]) -> list[str]:
    """Applies rotation steps (many meters' at once: one query, one insert); for each,
    '' or why it was not applied. Steps of one meter apply in the order given."""
    rows = current_many(store, [c.serial for c in changes])
    errors: list[str] = []
    out: dict[str, dict[str, Any]] = {}
    now = dt.datetime.now(dt.UTC).timestamp()
    for ch in changes:
        row = rows.get(ch.serial)
        if row is None:
            errors.append(f"meter {ch.serial} has no keys stored")
            continue
        trial = dict(row)
        why = _step(trial, ch)
        errors.append(why)
        if why:
            continue
        # Strictly after the row it replaces, so it wins even within one millisecond.
        trial["updated_at"] = max(now, float(row["updated_at"]) + 0.001)
        rows[ch.serial] = trial
        out[ch.serial] = trial
    if out:
        store.insert_rows("meter_keys", COLUMNS, [_final(r) for r in out.values()])
    return errors


def _final(row: dict[str, Any]) -> list[Any]:
    r = dict(row)
    r["updated_at"] = dt.datetime.fromtimestamp(float(r["updated_at"]), dt.UTC)
    pu = r["previous_until"]
    if not isinstance(pu, dt.datetime):
        r["previous_until"] = EPOCH
    elif pu.tzinfo is None:
        r["previous_until"] = pu.replace(tzinfo=dt.UTC)
    return [r[c] for c in COLUMNS]


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
        after = float(row["updated_at"])
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
    row["updated_at"] = max(dt.datetime.now(dt.UTC).timestamp(), after + 0.001)
    written = _final(row)
    store.insert_rows("meter_keys", COLUMNS, [written])
    return written
