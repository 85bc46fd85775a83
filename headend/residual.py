"""Whom a node's loss follows: the loss, slot by slot, fitted on what each consumer
registered.

A transformer's (gas segment's) loss in a slot is its technical loss, about a fixed
share `c` of what flows; unmetered loads; and what thieving meters did not register. A
meter that registers a share `f` of what it takes leaves `(1 + c - f) / f` of what it
registers in the loss of every slot, its ups and downs included; an honest meter
leaves `c`. So the loss series is fitted as

    loss[t] = c · Σ_j x_j[t] + Σ_{j chosen} e_j · x_j[t] + daily shape[t]

(x_j: what meter j registered in slot t; the daily shape, harmonics of the day whose
level, slope and first two harmonics are free each day, stands for unmetered loads:
with one shape for a whole week, honest meters whose own week differs from it were
taken for thieves). Meters are chosen one at a time, the one
whose own excess `e_j` would stand highest above the common share by its t statistic,
while one stands at least `min_t` standard errors and `min_excess` above it; every
other meter is then tried alone beside those chosen. A meter's excess says it
registered about `(1 + c) / (1 + c + e_j)` of what it took.

What identifies a meter is its own variation from slot to slot, which no other meter
shares; the evidence grows with the square root of the slots and with how much the
meter's consumption varies, so it is strong for a large consumer registering half and
weak for a small one registering two thirds over two days. The fit needs several slots
per coefficient: the meters' load profile (a quarter hour) over a day or more.

A meter that registers almost nothing (a bypass) has nothing to follow; the peer rules
find it. Slots in which a meter was switched off, out of supply or not yet installed
register nothing on both sides and need no care; slots a meter's readings do not
bracket are unknown, and a meter unknown in too many slots is left out of the fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from headend import balance, replacements

# Slot lengths tried, shortest first: the shortest the node's meters are read at.
SLOTS = (900, 1800, 3600)
# A meter's readings must bracket this share of the slots for it to be fitted.
MIN_COVERAGE = 0.9
# Slots needed per fitted coefficient: fewer and the fit follows its noise.
SLOTS_PER_COEFFICIENT = 4
# Meters of one node given their own coefficient, at most.
MAX_PICKS = 25
# Readings further apart than this are not interpolated across.
MAX_GAP = 6 * 3600
# The residual's lag-one autocorrelation is taken at -0.49 at most (θ < 1 keeps the
# filter that undoes it stable).
MAX_RHO = 0.49
# Harmonics of the day in the shape of unmetered loads.
HARMONICS = 4


@dataclass(frozen=True)
class Share:
    """How closely a node's loss follows one meter's registered consumption."""

    meter: str
    node_id: str
    excess: float  # the meter's coefficient above the common one
    technical: float  # the common coefficient (c)
    t: float  # excess / its standard error
    registered_share: float
    slots: int


@dataclass
class NodeFit:
    node_id: str
    slot: int
    slots: int
    fitted: int
    skipped: str = ""
    theta: float = 0.0  # the errors' MA(1) coefficient taken out


def fit(
    store: Any,
    nodes: list[str],
    start: int,
    end: int,
    *,
    min_excess: float = 0.2,
    min_t: float = 4.5,
) -> tuple[dict[str, Share], list[NodeFit]]:
    """Every fitted consumer of `nodes` (by serial) with how closely the loss over
    [start, end) follows it, and how each node's fit went."""
    db = store.db
    if not nodes:
        return {}, []
    _, rows = store.query(
        f"SELECT serial, node_id, role FROM {db}.meters FINAL WHERE node_id IN %(n)s "
        "AND role IN ('consumer', 'balance')",
        {"n": sorted(nodes)},
    )
    members: dict[str, list[str]] = {}
    feeders: dict[str, list[str]] = {}
    for serial, node, role in rows:
        (members if role == "consumer" else feeders).setdefault(node, []).append(serial)
    meters = sorted({s for s, _, _ in rows})
    series = _series(store, meters, start - MAX_GAP, end + MAX_GAP)
    served = replacements.service_hours(store, db, meters)
    found: dict[str, Share] = {}
    fits: list[NodeFit] = []
    for node in sorted(nodes):
        inputs = [series[m] for m in feeders.get(node, []) if m in series]
        consumers = sorted(members.get(node, []))
        nf, shares = _fit_node(
            node,
            inputs,
            consumers,
            series,
            served=served,
            window=(start, end),
            min_excess=min_excess,
            min_t=min_t,
        )
        fits.append(nf)
        for s in shares:
            found[s.meter] = s
    return found, fits


def _series(
    store: Any, meters: list[str], a: int, b: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each meter's flow register (gas: the corrected volume where it has one) as
    (times, values), sorted, one value per time."""
    db = store.db
    flow = {balance.obis_int(o) for o in balance.FLOW.values()}
    corrected = {balance.obis_int(p) for _, p in balance.PREFER}
    got: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]] = {}
    for i in range(0, len(meters), 2000):
        _, rows = store.query(
            "SELECT meter, obis, groupArray(toUInt32(ts)), groupArray(value) "
            f"FROM {db}.readings WHERE meter IN %(m)s AND obis IN %(o)s "
            "AND quality != 'invalid' AND ts >= toDateTime(%(a)s) AND ts < toDateTime(%(b)s) "
            "GROUP BY meter, obis",
            {"m": meters[i : i + 2000], "o": sorted(flow | corrected), "a": a, "b": b},
        )
        for meter, obis, ts, vs in rows:
            t = np.asarray(ts, dtype=np.int64)
            v = np.asarray(vs, dtype=np.float64)
            t, first = np.unique(t, return_index=True)  # a reading stored twice
            got.setdefault(meter, {})[int(obis)] = (t, v[first])
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for meter, by in got.items():
        pick = next((by[o] for o in corrected if o in by and len(by[o][0]) > 1), None)
        if pick is None:
            pick = next((by[o] for o in flow if o in by), None)
        if pick is not None:
            out[meter] = pick
    return out


def _slot(series: list[tuple[np.ndarray, np.ndarray]]) -> int:
    """The shortest slot most of these meters are read at."""
    steps = [float(np.median(np.diff(t))) for t, _ in series if len(t) > 2]
    if not steps:
        return SLOTS[-1]
    typical = float(np.median(steps))
    return next((s for s in SLOTS if typical <= s * 1.05), 0)


def _deltas(
    t: np.ndarray, v: np.ndarray, grid: np.ndarray, served: tuple[int, int] | None
) -> np.ndarray:
    """What a meter registered in each slot of `grid` (NaN: unknown). Interpolated
    between readings no further apart than MAX_GAP; outside the span a replaced meter
    served, nothing."""
    cum = np.interp(grid, t, v, left=np.nan, right=np.nan)
    # Grid points whose bracketing readings are too far apart are unknown.
    after = np.searchsorted(t, grid, side="left").clip(1, len(t) - 1)
    gap = t[after] - t[after - 1]
    exact = np.isin(grid, t)
    cum[(gap > MAX_GAP) & ~exact] = np.nan
    d: np.ndarray = np.diff(cum)
    if served is not None:
        since, until = served
        starts = grid[:-1]
        outside = np.zeros(len(d), dtype=bool)
        if since:
            outside |= grid[1:] <= since
        if until:
            outside |= starts >= until
        d[outside] = 0.0
    # A register that went back (a reset, a replaced meter's new count) is unknown.
    d[d < 0] = np.nan
    return d


def _daily(mid: np.ndarray, start: int, end: int) -> np.ndarray:
    """The shape unmetered loads may take: smooth over the day (harmonics of 24, 12, 8
    and 6 hours), its level, slope and first two harmonics free each day (a load that
    differs on Sundays, a drift over the week)."""
    day = (mid - start) // 86_400
    w = 2 * np.pi * (mid % 86_400) / 86_400
    u = ((mid - start) % 86_400) / 86_400
    each = [np.ones_like(w), u, np.sin(w), np.cos(w), np.sin(2 * w), np.cos(2 * w)]
    cols = [c * (day == d) for d in np.unique(day) for c in each]
    for k in range(3, HARMONICS + 1):
        cols += [np.sin(k * w), np.cos(k * w)]
    return np.column_stack(cols)


def _fit_node(
    node: str,
    inputs: list[tuple[np.ndarray, np.ndarray]],
    consumers: list[str],
    series: dict[str, tuple[np.ndarray, np.ndarray]],
    *,
    served: dict[str, tuple[int, int]],
    window: tuple[int, int],
    min_excess: float,
    min_t: float,
) -> tuple[NodeFit, list[Share]]:
    start, end = window
    known = [series[m] for m in consumers if m in series]
    slot = _slot(inputs + known)
    if not inputs or not slot:
        return NodeFit(node, slot, 0, 0, "no balance meter readings"), []
    grid = np.arange(start // slot * slot, end // slot * slot + 1, slot, dtype=np.int64)
    if len(grid) < 3:
        return NodeFit(node, slot, 0, 0, "window too short"), []
    inflow = np.sum([_deltas(t, v, grid, None) for t, v in inputs], axis=0)
    x = np.array([_deltas(*series[m], grid, served.get(m)) for m in consumers if m in series])
    names = [m for m in consumers if m in series]
    if not names:
        return NodeFit(node, slot, 0, 0, "no consumer readings"), []
    # Coverage counts the slots the balance meter knows: a window reaching back before
    # the node's data began loses those slots, not its meters.
    measured = ~np.isnan(inflow)
    if not measured.any():
        return NodeFit(node, slot, 0, 0, "no balance meter readings"), []
    unknown = np.isnan(x)
    cover = 1.0 - unknown[:, measured].mean(axis=1)
    keep = cover >= MIN_COVERAGE
    rows = measured & ~unknown[keep].any(axis=0)
    # What the others registered, where known, is taken off the loss too.
    others = np.where(unknown[~keep], 0.0, x[~keep]).sum(axis=0)
    xs = x[keep][:, rows].T  # slots by meters
    fitted = [n for n, k in zip(names, keep, strict=True) if k]
    loss = inflow[rows] - xs.sum(axis=1) - others[rows]
    # Meters that registered the same in every slot (nothing, or off) say nothing.
    moving = xs.std(axis=0) > 1e-9
    xs, fitted = xs[:, moving], [n for n, m in zip(fitted, moving, strict=True) if m]
    day = _daily(grid[:-1][rows] + slot / 2, start, end)
    # Every meter leaves the technical share of what it registers in the loss: one
    # coefficient for all; a meter is given its own only when the loss follows it.
    base = np.column_stack([xs.sum(axis=1), day])
    n_slots = len(loss)
    if not fitted or n_slots < SLOTS_PER_COEFFICIENT * (base.shape[1] + MAX_PICKS):
        return NodeFit(node, slot, n_slots, len(fitted), "too few slots"), []
    # Slot-to-slot errors that undo each other (a register read a little early gives
    # the next slot what it took from this one) are taken out before the fit.
    theta = _ma_theta(loss, base)
    if theta > 0:
        starts = np.concatenate([[True], np.diff(np.flatnonzero(rows)) != 1])
        loss, xs, base = (_undo_ma(v, theta, starts) for v in (loss, xs, base))
    picks, c = _select(xs, base, loss, min_excess, min_t)
    # A meter the loss falls with reads its quarter hours early or late (its clock is
    # off): its slots before and after explain what it took in this one, so they join
    # the common part and the fit is made again without its noise.
    off = [j for j, excess, _ in picks if excess < 0]
    if off:
        near = [_shifted(xs[:, j], k) for j in off for k in (-1, 1)]
        # (The first and last slots have no neighbour on one side: left out.)
        inner = slice(1, -1)
        base = np.column_stack([base, *near])[inner]
        xs, loss = xs[inner], loss[inner]
        n_slots = len(loss)
        picks, c = _select(xs, base, loss, min_excess, min_t)
    chosen = [j for j, _, _ in picks]
    # The others, each tried alone beside those chosen: weaker evidence, which the
    # caller may weigh with other signs.
    found = {j: (e, t) for j, e, t in picks}
    b, t = _candidates(xs, np.column_stack([base, xs[:, chosen]]), loss, chosen)
    for j in range(len(fitted)):
        if j not in found:
            found[j] = (float(b[j]), float(t[j]))
    shares = [
        Share(
            fitted[j],
            node,
            round(excess, 3),
            round(c, 4),
            round(t_stat, 1),
            round((1 + c) / (1 + c + max(excess, 0.0)), 2),
            n_slots,
        )
        for j, (excess, t_stat) in sorted(found.items())
    ]
    return NodeFit(node, slot, n_slots, len(fitted), theta=round(theta, 3)), shares


def _shifted(v: np.ndarray, k: int) -> np.ndarray:
    """`v` moved `k` slots later (earlier when negative), zeros where it has none."""
    out = np.zeros_like(v)
    if k > 0:
        out[k:] = v[:-k]
    else:
        out[:k] = v[-k:]
    return out


def _ma_theta(loss: np.ndarray, base: np.ndarray) -> float:
    """θ of errors e[t] = u[t] - θ·u[t-1] (0 ≤ θ < 1) that give the loss's residual
    after the common fit its lag-one autocorrelation rho = -θ / (1 + θ²); 0 when rho
    is not negative."""
    q, _ = np.linalg.qr(base)
    r = loss - q @ (q.T @ loss)
    energy = float(r @ r)
    if energy <= 0 or len(r) < 3:
        return 0.0
    rho = min(max(float(r[1:] @ r[:-1]) / energy, -MAX_RHO), 0.0)
    if rho == 0.0:
        return 0.0
    return (1 - math.sqrt(1 - 4 * rho * rho)) / (-2 * rho)


def _undo_ma(v: np.ndarray, theta: float, starts: np.ndarray) -> np.ndarray:
    """z[t] = v[t] + θ·z[t-1], restarting where slots are not consecutive: the errors'
    MA(1) filter undone, so least squares weighs the slots as generalised least
    squares would."""
    out = np.array(v, dtype=np.float64, copy=True)
    for i in range(1, len(out)):
        if not starts[i]:
            out[i] += theta * out[i - 1]
    return out


def _select(
    xs: np.ndarray, base: np.ndarray, loss: np.ndarray, min_excess: float, min_t: float
) -> tuple[list[tuple[int, float, float]], float]:
    """Forward selection: the meter whose own coefficient would stand furthest from the
    common one (by its t statistic) joins the fit, while one stands `min_t` standard
    errors and `min_excess` away; then each chosen meter is tested again in the final
    fit and the weakest dropped until all hold. A meter below the common share (its
    clock off by a quarter hour, or it sits under another node: the loss falls when it
    registers) is chosen too, so that it does not pull the common share down and make
    honest meters stand above it. Returns (meter index, excess, t) and the common
    coefficient."""
    chosen: list[int] = []
    while len(chosen) < MAX_PICKS:
        design = np.column_stack([base, xs[:, chosen]]) if chosen else base
        b, t = _candidates(xs, design, loss, chosen)
        t = np.abs(t)
        t[np.abs(b) < min_excess] = -np.inf
        j = int(np.argmax(t))
        if t[j] < min_t:
            break
        chosen.append(j)
    while True:
        design = np.column_stack([base, xs[:, chosen]]) if chosen else base
        coef, se = _ols(design, loss)
        if not chosen:
            return [], float(coef[0])
        k = base.shape[1]
        excess, ts = coef[k:], coef[k:] / se[k:]
        weakest = int(np.argmin(np.abs(ts)))
        if abs(ts[weakest]) >= min_t and abs(excess[weakest]) >= min_excess:
            picks = [(j, float(e), float(t)) for j, e, t in zip(chosen, excess, ts, strict=True)]
            return picks, float(coef[0])
        chosen.pop(weakest)


def _candidates(
    xs: np.ndarray, design: np.ndarray, loss: np.ndarray, chosen: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Every meter's coefficient and t statistic were it added alone to `design` (one
    projection for all of them); those in `chosen` or with nothing of their own left
    get t = -inf."""
    q, _ = np.linalg.qr(design)
    r = loss - q @ (q.T @ loss)
    xt = xs - q @ (q.T @ xs)
    norm2 = (xt * xt).sum(axis=0)
    ok = norm2 > 1e-9
    ok[chosen] = False
    safe = np.where(ok, norm2, 1.0)
    b = np.where(ok, (xt.T @ r) / safe, 0.0)
    rss = np.maximum(float(r @ r) - b * b * np.where(ok, norm2, 0.0), 1e-12)
    dof = max(len(loss) - design.shape[1] - 1, 1)
    t = np.where(ok, b * np.sqrt(safe) / np.sqrt(rss / dof), -np.inf)
    return b, t


def _ols(design: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares coefficients and their standard errors (columns scaled to one
    for the solve)."""
    scale = np.sqrt((design**2).sum(axis=0))
    scale[scale == 0] = 1.0
    a = design / scale
    coef, _, _, _ = np.linalg.lstsq(a, y, rcond=None)
    resid = y - a @ coef
    dof = max(len(y) - design.shape[1], 1)
    cov = np.linalg.pinv(a.T @ a) * float(resid @ resid) / dof
    se = np.sqrt(np.clip(np.diag(cov), 1e-30, None))
    return coef / scale, se / scale
