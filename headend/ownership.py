"""Which meters, accounts and grid nodes this node acts on (DESIGN.md section 9).

Ownership goes by region: the region-level grid node (its ``node_id``, e.g. ``UZ-SA``)
above a grid node, or ``""`` for what lies above the regions (the republic,
generation, substations feeding several regions), which the centre owns. Imports
record each grid node's and meter's region (``grid_nodes.region``, ``meters.region``);
a meter belongs to its grid node's region and an account to its meters' region.

- A standalone node owns everything (today's single head-end).
- A region node owns its `[node] regions`.
- The centre owns what lies above the regions and any region it lists itself.

Singleton work (a meter's commands, scheduled reads, billing policy, consumption,
balances, anomaly detection) runs only for what the node owns, so two nodes never
both act on a meter. The filters are SQL fragments built here from validated names,
one place for every query that needs them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from headend.config import Config
from headend.errors import HeadendError

NATIONAL = ""
"""The region of what lies above the regions (the centre's)."""
REGION_LEVEL = "region"
# Region names go into SQL text as literals: the import's identifier rule, no quotes.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,63}$")


class NotOwned(HeadendError):
    """A row or command for a region this node does not own."""


@dataclass
class Ownership:
    """What one node owns. `owners` maps every region the node knows of to the node
    that owns it (the centre knows them all from its peers; a region knows itself and
    what the centre told it). The centre is the authority: a region handed over to
    another node (`headend node handover`) changes hands everywhere through its
    heartbeats, and `regions` follows (`assign`)."""

    node: str
    role: str
    regions: set[str]
    owners: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: Config) -> Ownership:
        node = cfg.node
        for r in node.regions:
            if not _NAME.match(r):
                raise HeadendError(f"[node] regions: {r!r} is not a grid node id")
        owners = {r: node.name for r in node.regions}
        if node.role == "centre":
            owners[NATIONAL] = node.name
        for p in cfg.peers:
            for r in p.regions:
                if not _NAME.match(r):
                    raise HeadendError(f"[[peers]] {p.name} regions: {r!r} is not a grid node id")
                owners.setdefault(r, p.name)
            if p.role == "centre":
                owners.setdefault(NATIONAL, p.name)
        # The centre's map as last recorded here (its handovers, or what a region
        # heard from it) wins over the configuration.
        owners.update(_learnt(cfg))
        mine = {r for r, n in owners.items() if n == node.name}
        return cls(node.name, node.role, mine, owners)

    @property
    def everything(self) -> bool:
        return self.role == "standalone"

    def owns(self, region: str) -> bool:
        return self.everything or region in self.regions

    def owner_of(self, region: str) -> str | None:
        """The node that owns `region`, if this node knows it."""
        if self.owns(region):
            return self.node
        return self.owners.get(region)

    def why_not(self, what: str, region: str) -> str:
        """The reason a row or command for `region` is refused here, naming its owner."""
        where = f"region {region}" if region else "above the regions (national)"
        owner = self.owner_of(region)
        mine = ", ".join(sorted(r or "national" for r in self.regions)) or "nothing"
        if owner:
            return (
                f"{what} is in {where}, which node {owner} owns "
                f"(this node, {self.node}, owns {mine})"
            )
        if self.role == "centre":
            return f"{what} is in {where}, which no node owns: add it to a region node's regions"
        return f"{what} is in {where}, not owned by this node ({self.node} owns {mine})"

    def assign(self, owners: Mapping[str, str]) -> tuple[set[str], set[str]]:
        """Takes in the centre's map of who owns which region; returns the regions
        this node took and gave up."""
        self.owners.update(owners)
        if self.everything:
            return set(), set()
        mine = {r for r, n in self.owners.items() if n == self.node}
        taken, given = mine - self.regions, self.regions - mine
        self.regions.clear()
        self.regions.update(mine)
        return taken, given

    def accepts(self, region: str) -> bool:
        """Whether master data (grid, meters, accounts) of `region` may be imported
        here: what the node owns; at the centre, also what its peers own (the centre
        keeps the national picture and sends each row to its owner)."""
        if self.owns(region):
            return True
        return self.role == "centre" and region in self.owners

    def check(self, what: str, region: str) -> None:
        if not self.owns(region):
            raise NotOwned(self.why_not(what, region))

    def sql(self, column: str = "region") -> str:
        """A condition on `column` that keeps what this node owns ("1" for everything)."""
        if self.everything:
            return "1"
        if not self.regions:
            return "0"
        names = ", ".join(f"'{r}'" for r in sorted(self.regions))
        return f"{column} IN ({names})"

    def meters_sql(self, db: str, column: str = "serial") -> str:
        """A condition on a meter serial `column`: the meter is one this node owns."""
        if self.everything:
            return "1"
        return f"{column} IN (SELECT serial FROM {db}.meters FINAL WHERE {self.sql('region')})"

    def nodes_sql(self, db: str, column: str = "node_id") -> str:
        """A condition on a grid node `column`: the node is one this node owns."""
        if self.everything:
            return "1"
        return f"{column} IN (SELECT node_id FROM {db}.grid_nodes FINAL WHERE {self.sql('region')})"

    def as_dict(self) -> dict[str, object]:
        return {
            "node": self.node,
            "role": self.role,
            "regions": sorted(self.regions) if not self.everything else ["*"],
        }


def federation_path(cfg: Config) -> Path:
    """Where a region node keeps the centre's map of which node owns which region."""
    return cfg.link_dir / "federation.json"


def _learnt(cfg: Config) -> dict[str, str]:
    try:
        d = json.loads(federation_path(cfg).read_text())
    except (OSError, ValueError):
        return {}
    owners = d.get("owners") if isinstance(d, dict) else None
    if not isinstance(owners, dict):
        return {}
    return {str(r): str(n) for r, n in owners.items() if _NAME.match(str(r)) or r == ""}


def regions_of(nodes: Mapping[str, tuple[str, str]]) -> dict[str, str]:
    """Each grid node's region: `nodes` maps node_id to (parent_id, level); a node's
    region is the nearest node of level region at or above it, "" when none is
    (the republic, generation, what feeds several regions). Parent cycles and
    dangling parents end the walk."""
    out: dict[str, str] = {}
    for start in nodes:
        path: list[str] = []
        n, region = start, NATIONAL
        while n in nodes and n not in out and len(path) < 256:
            path.append(n)
            parent, level = nodes[n]
            if level == REGION_LEVEL:
                region = n
                break
            if parent in path:
                break
            n = parent
        else:
            if n in out:
                region = out[n]
        for p in path:
            out[p] = region
    return out


def names(regions: Iterable[str]) -> str:
    return ", ".join(sorted(r or "national" for r in regions))
