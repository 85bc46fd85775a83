"""Meter replacements: a consumer's history kept whole across a swapped meter.

A work order closed with the outcome ``replaced`` names the new meter (imported with
its keys at the same grid node and account) and carries what the crew read on site:
the old meter's register when it was taken away (``old_final``) and the new meter's
when it was put in (``new_initial``), in the unit on their displays (kWh; m³ for gas),
and when (``replaced_at``). Both go into ``readings`` as manual readings at that time,
through the late-data path (with what follows from the meters being off the grid: the
old register unchanged at the next hour boundary, the new one unchanged at the one
before), so the old meter's consumption ends and the new one's begins at the same
instant: the hour of the swap holds both parts, with no gap and no spike. Afterwards:

- balances count the two meters as one place (the old one is not expected any more,
  `RETIRED`), so completeness does not drop;
- the old meter is not "silent", and neither meter's hours outside its service are
  evidence of theft (`service_hours`).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Any

from headend.balance import CHANNELS, FLOW
from headend.errors import HeadendError
from headend.store.imports import SqlAccess

MAX_REGISTER = 1e12


class ReplacementError(HeadendError):
    """A replacement that cannot be recorded as given."""


def retired_sql(db: str) -> str:
    """Serials of meters taken away (a SQL subquery)."""
    return f"(SELECT old_serial FROM {db}.meter_replacements)"


@dataclass
class Replacement:
    old_serial: str
    new_serial: str
    replaced_at: int
    old_final: float
    new_initial: float
    kind: str = "electricity"
    # CT x VT of each meter: its display's (secondary) register to the primary stored.
    old_factor: float = 1.0
    new_factor: float = 1.0


def _number(v: Any, name: str) -> float:
    if v is None or v == "":
        raise ReplacementError(
            f"a replaced meter needs {name} (the register the crew read on site, kWh or m³)"
        )
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise ReplacementError(f"{name} {v!r} is not a number") from None
    if math.isnan(x) or not 0 <= x <= MAX_REGISTER:
        raise ReplacementError(f"{name} {v!r} is not a register reading")
    return x


def check(
    store: SqlAccess,
    db: str,
    old_serial: str,
    raw: dict[str, Any],
    *,
    created_at: float,
    now: float,
) -> Replacement:
    """The replacement `raw` describes (new_serial, old_final, new_initial, and
    optionally replaced_at, Unix seconds), checked against what is stored."""
    new_serial = str(raw.get("new_serial") or "")
    if not new_serial:
        raise ReplacementError(
            "a replaced meter needs the new meter's serial (--new-serial); import the "
            "new meter with its keys first (headend meters import)"
        )
    if new_serial == old_serial:
        raise ReplacementError("the new meter's serial is the old one's")
    old_final = _number(raw.get("old_final"), "old_final")
    new_initial = _number(raw.get("new_initial"), "new_initial")
    at = raw.get("replaced_at")
    when = int(now) if at in (None, "", 0) else int(float(at))
    if not created_at - 365 * 86_400 <= when <= now + 60:
        raise ReplacementError("replaced_at must be a time in the past (not long before the order)")
    _, keys = store.query(
        f"SELECT count() FROM {db}.meter_keys WHERE serial = {{s:String}}", {"s": new_serial}
    )
    if not keys or not keys[0][0]:
        raise ReplacementError(
            f"meter {new_serial} is not imported with its keys: import it first "
            "(headend meters import), then close the order"
        )
    _, rows = store.query(
        f"SELECT serial, argMax(node_id, updated_at), argMax(account_id, updated_at), "
        f"argMax(kind, updated_at), argMax(ct_ratio * vt_ratio, updated_at) FROM {db}.meters "
        f"WHERE serial IN ({{a:String}}, {{b:String}}) GROUP BY serial",
        {"a": old_serial, "b": new_serial},
    )
    place = {r[0]: r[1:4] for r in rows}
    factor = {r[0]: float(r[4]) for r in rows}
    if old_serial in place and new_serial in place and place[old_serial] != place[new_serial]:
        (on, oa, ok), (nn, na, nk) = place[old_serial], place[new_serial]
        raise ReplacementError(
            f"meter {new_serial} is at {nn}, account {na}, {nk}; the old one at {on}, "
            f"account {oa}, {ok}: import the new meter in the old one's place"
        )
    kind = str(place.get(old_serial, ("", "", "electricity"))[2])
    rep = Replacement(
        old_serial,
        new_serial,
        when,
        old_final,
        new_initial,
        kind,
        factor.get(old_serial, 1.0),
        factor.get(new_serial, 1.0),
    )
    obis, scale = _register(kind)
    _, last = store.query(
        f"SELECT argMax(value, ts) FROM {db}.readings WHERE meter = {{m:String}} "
        f"AND obis_code = {{o:String}} AND ts <= toDateTime({when})",
        {"m": old_serial, "o": obis},
    )
    if last and last[0][0] is not None:
        shown = float(last[0][0]) * scale / rep.old_factor  # as its display shows it
        if shown > old_final + 1e-6:
            raise ReplacementError(
                f"old_final {old_final:g} is below the old meter's last stored register "
                f"{shown:g}: a register only goes up"
            )
    return rep


def _register(kind: str) -> tuple[str, float]:
    """The meter's flow register and the scale from its stored unit to the display's."""
    obis = FLOW.get(kind, FLOW["electricity"])
    scale = next(c[1] for c in CHANNELS if c[0] == obis)
    return obis, scale


def record(store: SqlAccess, rep: Replacement, now: float) -> None:
    """The manual readings of the swap: each register as read on site at the swap
    time; and, what follows from the meters being off the grid, the old register
    unchanged at the next hour boundary and the new one unchanged at the hour
    boundary before, so the hour of the swap is the old meter's part and the new
    meter's part, each measured."""
    from headend.balance import obis_int

    obis, scale = _register(rep.kind)
    unit = "Wh" if scale != 1.0 else "m³"
    got = dt.datetime.fromtimestamp(now, dt.UTC)
    before = rep.replaced_at // 3600 * 3600
    after = -(-rep.replaced_at // 3600) * 3600
    old = rep.old_final * rep.old_factor
    new = rep.new_initial * rep.new_factor
    points = {
        (rep.old_serial, rep.replaced_at, old),
        (rep.old_serial, after, old),
        (rep.new_serial, before, new),
        (rep.new_serial, rep.replaced_at, new),
    }
    rows = [
        [m, obis_int(obis), dt.datetime.fromtimestamp(t, dt.UTC), v / scale, unit, 0,
         "manual", "measured", got]
        for m, t, v in sorted(points)
    ]  # fmt: skip
    cols = ["meter", "obis", "ts", "value", "unit", "status", "source", "quality", "received_at"]
    store.insert_rows("readings", cols, rows)


def service_hours(store: SqlAccess, db: str, meters: list[str]) -> dict[str, tuple[int, int]]:
    """Each replaced or replacing meter among `meters`: the span it served, (from,
    until) in Unix seconds (0: open)."""
    if not meters:
        return {}
    _, rows = store.query(
        f"SELECT old_serial, new_serial, toInt64(replaced_at) FROM {db}.meter_replacements "
        "WHERE old_serial IN %(m)s OR new_serial IN %(m)s",
        {"m": meters},
    )
    out: dict[str, tuple[int, int]] = {}
    for old, new, at in rows:
        a, b = out.get(old, (0, 0))
        out[old] = (a, int(at))
        a, b = out.get(new, (0, 0))
        out[new] = (int(at), b)
    return out
