"""Consumption and energy balances (DESIGN.md section 6).

`recompute(store, start, end)` rebuilds, for the hours in [start, end):

1. `consumption`: per meter and register, the energy or volume of each hour, by the
   Rust VEE (`rust_core/src/vee.rs`) over the raw `readings` (plus a margin on both
   sides, so the window's edge hours and gaps across its edges are bounded: two days,
   or for a window at the present a few hours and the last earlier sample of the
   series that start inside it); meters are taken in slices of the primary key, so
   memory stays bounded at any fleet size;
2. `balances`: per network node and hour, input (its balance meters), output (children
   with balance meters by their input, everything below without one by its meters'
   consumption), loss and completeness; summed in Rust on the way through 1 when every
   meter is recomputed, else from `consumption`.

Both tables keep the newest computation (ReplacingMergeTree on `computed_at`), so a
recompute is idempotent and late data corrects the hours it belongs to once the window
is recomputed. Reports (`report`, `losses`) sum hours into days, months and years in
Asia/Tashkent time.

The package's rooms: `common` (registers, columns, time, the recompute's report),
`consumption` (the VEE pass in slices), `nodes` (the node tree and its balances),
`late` (late data), `recompute` (the two together for a window) and `reports`. This
module is their face: import from `headend.balance`.
"""

from headend.balance.common import (
    BALANCE_COLUMNS,
    CHANNEL_CODES,
    CHANNELS,
    CONSUMPTION_COLUMNS,
    COUNTED,
    ELECTRICITY_EXPORT,
    ELECTRICITY_IMPORT,
    FLOW,
    GAS_CORRECTED,
    GAS_VOLUME,
    HOUR,
    LOCAL,
    MARGIN,
    PREFER,
    STATES,
    TASHKENT,
    BalanceError,
    RawStore,
    RecomputeReport,
    hour_floor,
    last_period,
    month_span,
    obis_int,
    parse_time,
    run_query,
)
from headend.balance.consumption import NEAR, READINGS_SQL
from headend.balance.late import LATE_METERS, LATE_SETTLE, LateData
from headend.balance.nodes import _balances, _network, balances_token, token_hours
from headend.balance.recompute import SUMS_CELLS, recompute
from headend.balance.reports import PERIODS, admin_units, losses, report
from headend.levels import ADMIN_LEVELS, NETWORK_LEVELS

__all__ = [
    "ADMIN_LEVELS",
    "BALANCE_COLUMNS",
    "CHANNELS",
    "CHANNEL_CODES",
    "CONSUMPTION_COLUMNS",
    "COUNTED",
    "ELECTRICITY_EXPORT",
    "ELECTRICITY_IMPORT",
    "FLOW",
    "GAS_CORRECTED",
    "GAS_VOLUME",
    "HOUR",
    "LATE_METERS",
    "LATE_SETTLE",
    "LOCAL",
    "MARGIN",
    "NEAR",
    "NETWORK_LEVELS",
    "PERIODS",
    "PREFER",
    "READINGS_SQL",
    "STATES",
    "SUMS_CELLS",
    "TASHKENT",
    "BalanceError",
    "LateData",
    "RawStore",
    "RecomputeReport",
    "_balances",
    "_network",
    "admin_units",
    "balances_token",
    "hour_floor",
    "last_period",
    "losses",
    "month_span",
    "obis_int",
    "parse_time",
    "recompute",
    "report",
    "run_query",
    "token_hours",
]
