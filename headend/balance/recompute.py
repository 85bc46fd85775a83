"""`recompute(store, start, end)`: consumption, then balances, for a window."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from headend import codec
from headend.balance.common import (
    COUNTED,
    HOUR,
    MARGIN,
    PREFER,
    BalanceError,
    RawStore,
    RecomputeReport,
    _iso,
    hour_floor,
)
from headend.balance.consumption import _consumption
from headend.balance.nodes import _balances, _network
from headend.ownership import Ownership

log = logging.getLogger("headend.balance")


def recompute(
    store: RawStore,
    start: int,
    end: int,
    *,
    now: float | None = None,
    margin: int = MARGIN,
    meters_per_slice: int = 20_000,
    meters: Sequence[str] | None = None,
    owner: Ownership | None = None,
) -> RecomputeReport:
    """Rebuilds consumption and balances for the hours in [start, end) (Unix seconds);
    the consumption of `meters` only when given (late data for a few meters), the
    balances of every node. With `owner`, only what the node owns: its meters'
    consumption and its grid nodes' balances (a node of another's below one of its
    own counts with the balance its owner computed)."""
    start, end = hour_floor(start), hour_floor(end + HOUR - 1)
    if end <= start:
        raise BalanceError("the window is empty: --to must be after --from")
    if end - start > 400 * 86_400:
        raise BalanceError("a window longer than 400 days: recompute it in parts")
    now = time.time() if now is None else now
    rep = RecomputeReport(start, end)
    t0 = time.monotonic()
    nodes = _network(store, owner)
    hours = (end - start) // HOUR
    # Every meter's consumption is derived here: the balances are summed on the way
    # (in Rust), not read back from `consumption`. A few meters' (late data) leave the
    # others' where they are, so their balances are summed from the table.
    sums = None
    if meters is None and len(nodes) * 2 * hours <= SUMS_CELLS:
        sums = codec.NodeSums(list(nodes), start, hours, COUNTED, PREFER)
    _consumption(
        store, rep, int(now), margin, meters_per_slice, meters=meters, sums=sums, owner=owner
    )
    rep.seconds["consumption"] = round(time.monotonic() - t0, 3)
    refused = sum(rep.dropped.values())
    if rep.readings and not rep.consumption_rows and 2 * refused >= rep.readings:
        # Input rejected wholesale (a clock that puts the readings in the future, most
        # often): balances summed from nothing would overwrite good ones with zeros.
        why = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in sorted(rep.dropped.items()) if n)
        raise BalanceError(
            f"refusing to write balances for {_iso(start)} .. {_iso(end)}: {refused} of "
            f"{rep.readings} readings were refused ({why}) and no consumption came of them; "
            f"now is {_iso(int(now))} by this command's clock: is it the server's "
            "([clock] in the --config the server runs with)?"
        )
    t1 = time.monotonic()
    rep.balance_rows = _balances(store, start, end, nodes, sums, owner=owner)
    rep.seconds["balances"] = round(time.monotonic() - t1, 3)
    log.info(
        "recomputed %s .. %s: %d readings, %d consumption rows, %d balance rows",
        _iso(start),
        _iso(end),
        rep.readings,
        rep.consumption_rows,
        rep.balance_rows,
    )
    return rep


# Most cells (nodes x 2 x hours) of balance sums gathered in Rust (12 bytes each);
# beyond, the balances are summed from the `consumption` table.
SUMS_CELLS = 50_000_000
