"""The grid's levels, in one place: what the grid file may say, which levels are
administrative units and which are links of the supply chain, in chain order per
commodity, and what the page calls the nodes below each. The page reads it from
``/api/levels``; imports, balances, reports, detection and the page all use it.

Administrative units (a city may sit in a region beside its districts, or hold
districts of its own) group the network; the network carries the energy:
generation → backbone substations → distribution substations → feeders →
transformers → consumers, and gas stations → segments → consumers.
"""

from __future__ import annotations

from typing import Any

ADMIN_LEVELS = ("republic", "region", "city", "district")
CHAINS = {
    "electricity": (
        "generation",
        "backbone_substation",
        "distribution_substation",
        "feeder",
        "transformer",
    ),
    "gas": ("gas_station", "gas_segment"),
}
"""Each commodity's links, from the source to the consumers' node."""
NETWORK_LEVELS = tuple(level for chain in CHAINS.values() for level in chain)
LEVELS = (*ADMIN_LEVELS, *NETWORK_LEVELS)
"""Every level a grid file may name."""
CONSUMER_LEVELS = tuple(chain[-1] for chain in CHAINS.values())
"""Where consumer meters hang: the last link of each chain."""
BELOW = {
    "republic": "Regions",
    "region": "Districts and cities",
    "city": "Districts, substations and gas stations",
    "district": "Substations and gas stations",
    "generation": "Backbone substations",
    "backbone_substation": "Distribution substations",
    "distribution_substation": "Feeders",
    "feeder": "Transformers",
    "transformer": "Consumers",
    "gas_station": "Gas segments",
    "gas_segment": "Consumers",
}
"""What the page calls the nodes below a node of each level."""


def public() -> dict[str, Any]:
    """The vocabulary as ``/api/levels`` gives it."""
    return {
        "levels": list(LEVELS),
        "admin": list(ADMIN_LEVELS),
        "network": list(NETWORK_LEVELS),
        "chains": {c: list(chain) for c, chain in CHAINS.items()},
        "consumer_levels": list(CONSUMER_LEVELS),
        "below": BELOW,
    }
