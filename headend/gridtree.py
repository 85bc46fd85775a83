"""The grid as a tree of node ids: one query for it, one walk up it. Work orders (a
meter's district), outages (an outage's district) and the balances by administrative
unit all ask "the nearest node of this level at or above that one"."""

from __future__ import annotations

Tree = dict[str, tuple[str, str, str]]
"""node_id -> (parent_id, level, region), as last imported."""


def tree_sql(db: str) -> str:
    """The query whose rows `tree` takes."""
    return (
        "SELECT node_id, argMax(parent_id, updated_at), argMax(level, updated_at), "
        f"argMax(region, updated_at) FROM {db}.grid_nodes GROUP BY node_id"
    )


def tree(rows: list[tuple[object, ...]]) -> Tree:
    return {str(r[0]): (str(r[1]), str(r[2]), str(r[3])) for r in rows}


def above(nodes: Tree, node: str, level: str) -> str:
    """The nearest node of `level` at or above `node` ("" when none is; cycles and
    dangling parents end the walk)."""
    n = node
    for _ in range(64):
        entry = nodes.get(n)
        if entry is None:
            return ""
        parent, lvl, _ = entry
        if lvl == level:
            return n
        if not parent or parent == n:
            return ""
        n = parent
    return ""
