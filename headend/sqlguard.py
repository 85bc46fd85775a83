"""SQL for people: read-only, on the documented tables, within the person's regions.

Closed by construction, not by a list of bad words:

1. ClickHouse's own parser reads the text (`formatQuerySingleLine`): exactly one
   statement, re-printed canonically (comments, quoting tricks and a second statement
   are gone or refused).
2. ClickHouse prints its syntax tree (`EXPLAIN AST`) and every node is checked against
   what is allowed: a SELECT with no SETTINGS, FORMAT or INTO OUTFILE of its own;
   every table it names, however spelled, is one of the documented tables
   (`TABLES`) or a few `system` tables; the only table functions are generators
   (`numbers`); every function is an aggregate or belongs to a category of pure
   computation (`SAFE_CATEGORIES`, from ClickHouse's own `system.functions`) or the
   short `EXTRA_FUNCTIONS` list. `file()`, `url()`, `merge()`, `dictGet`, `joinGet`,
   `remote()` and the like are simply not on any list.
3. The canonical text runs with `readonly = 1` (no writes, DDL or settings changes,
   enforced by ClickHouse), limits on time, memory and result size, and, for a
   person of some regions, `additional_table_filters` that keep every documented
   table to their regions' rows, wherever in the query it is read.

Key material sits in `meter_keys` and accounts in `users` and `user_tokens`: no list
names them, so no query reaches them; the master key is a file, and no function that
reads files is allowed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol

from headend.errors import HeadendError

TABLES = (
    "meters",
    "grid_nodes",
    "readings",
    "events",
    "consumption",
    "balances",
    "commands",
    "command_status",
    "sessions",
    "anomaly_findings",
    "policy_actions",
    "work_orders",
    "work_order_log",
    "service_centres",
    "account_flags",
    "outages",
    "outage_meters",
)
"""The documented tables and views of DESIGN.md section 5 (and the findings and
policy actions people look at)."""

SYSTEM_TABLES = ("one", "numbers", "databases", "tables", "columns", "functions", "settings")
"""For tools that discover the schema and the server (DBeaver, Grafana,
clickhouse-connect)."""

TABLE_FUNCTIONS = ("numbers", "zeros", "generateSeries", "generate_series")

SAFE_CATEGORIES = frozenset(
    {
        "Arithmetic",
        "Arrays",
        "Bit",
        "Bitmap",
        "Comparison",
        "Conditional",
        "Dates and Times",
        "Distance",
        "Encoding",
        "Financial",
        "Geo",
        "Hash",
        "IP Address",
        "JSON",
        "Logical",
        "Map",
        "Mathematical",
        "Null",
        "Random Number",
        "Rounding",
        "String",
        "String Replacement",
        "String Search",
        "String Splitting",
        "Time Window",
        "Tuple",
        "Type Conversion",
        "URL",
        "UUID",
    }
)
"""Categories of functions that compute from their arguments and nothing else."""

EXTRA_FUNCTIONS = frozenset(
    {
        "lambda",
        "exists",
        "_CAST",
        "bar",
        "formatReadableSize",
        "formatReadableDecimalSize",
        "formatReadableQuantity",
        "formatReadableTimeDelta",
        "toTypeName",
        "materialize",
        "ignore",
        "identity",
        "isFinite",
        "isInfinite",
        "ifNotFinite",
        "isNaN",
        "runningDifference",
        "runningDifferenceStartingWithFirstValue",
        "neighbor",
        "currentDatabase",
        "indexHint",
        "toColumnTypeName",
        "version",  # clients ask it first
    }
)
"""Pure functions ClickHouse files under "Other" that analysts need."""

COMBINATORS = (
    "If",
    "Array",
    "Map",
    "State",
    "Merge",
    "MergeState",
    "ForEach",
    "Distinct",
    "OrDefault",
    "OrNull",
    "Resample",
    "ArgMin",
    "ArgMax",
    "SimpleState",
)

# Characters of a person's query (ClickHouse's own default limit: the store's client
# allows its own queries more, for lists of meters).
MAX_TEXT = 262_144
MAX_SECONDS = 60
MAX_MEMORY = 2 << 30
MAX_ROWS = 1_000_000
MAX_BYTES = 512 << 20
"""Limits on one person's query (time, memory, result rows and bytes)."""

CLIENT_FORMAT = "Native"
"""The format clickhouse-connect asks for (it appends FORMAT Native to queries)."""

_LINE = re.compile(r"^( *)(\S+)(?: (.*))?$")
_IN_FAMILY = frozenset(
    {"in", "notIn", "globalIn", "globalNotIn", "nullIn", "notNullIn", "globalNullIn"}
)


class SqlRefused(HeadendError):
    """The query is not one people may run; the message says which part."""


class Engine(Protocol):
    def query(
        self, sql: str, params: dict[str, Any] | None = None
    ) -> tuple[list[str], list[tuple[Any, ...]]]: ...


@dataclass
class Node:
    depth: int
    kind: str
    text: str


def _ast(lines: str) -> list[Node]:
    out = []
    for raw in lines.splitlines():
        m = _LINE.match(raw)
        if m:
            out.append(Node(len(m.group(1)), m.group(2), m.group(3) or ""))
    return out


def _name(text: str) -> str:
    """The identifier of an AST line ('ami.readings (alias r)' -> 'ami.readings')."""
    return text.split(" (", 1)[0].strip()


def _unquote(name: str) -> list[str]:
    return [p.strip('`"') for p in name.split(".")]


class Guard:
    """Checks and runs people's SQL against one store (`engine`, database `db`)."""

    def __init__(self, engine: Engine, db: str) -> None:
        self.engine = engine
        self.db = db
        self._functions: dict[str, bool] | None = None  # name -> allowed
        self._aggregates: set[str] = set()

    def functions(self) -> dict[str, bool]:
        if self._functions is None:
            _, rows = self.engine.query(
                "SELECT name, categories, is_aggregate, case_insensitive, alias_to "
                "FROM system.functions"
            )
            allowed: dict[str, bool] = {}
            aliases: list[tuple[str, str, bool]] = []
            for name, category, is_aggregate, ci, alias in rows:
                ok = bool(is_aggregate) or category in SAFE_CATEGORIES or name in EXTRA_FUNCTIONS
                # Spellings (case-insensitive names, aliases) of one function share a
                # verdict: allowed if any of them is.
                allowed[name] = allowed.get(name, False) or ok
                if ci:
                    allowed[name.lower()] = allowed.get(name.lower(), False) or ok
                if alias:
                    aliases.append((name, alias, bool(ci)))
                if is_aggregate:
                    self._aggregates.add(name)
            for name, target, ci in aliases:
                ok = allowed.get(target, False) or allowed.get(target.lower(), False)
                allowed[name] = allowed[name] or ok
                if ci:
                    allowed[name.lower()] = allowed[name.lower()] or ok
            for name in EXTRA_FUNCTIONS:
                allowed[name] = True
            self._functions = allowed
        return self._functions

    def function_ok(self, name: str) -> bool:
        fns = self.functions()
        if name in fns:
            return fns[name]
        if name.lower() in fns:
            return fns[name.lower()]
        for suffix in sorted(COMBINATORS, key=len, reverse=True):  # sumIf, uniqArrayIf
            if name.endswith(suffix) and len(name) > len(suffix):
                base = name[: -len(suffix)]
                if base in self._aggregates or base.lower() in self._aggregates:
                    return True
                return self.function_ok(base) and base not in fns
        return False

    def _table_ok(self, parts: list[str]) -> bool:
        if len(parts) == 2:
            db, table = parts
            if db == self.db:
                return table in TABLES
            return db == "system" and table in SYSTEM_TABLES
        return False

    def _exists(self, parts: list[str]) -> bool:
        """Whether `parts` names a table or view (unqualified: in the session's
        current database)."""
        if len(parts) == 1:
            sql = (
                "SELECT count() FROM system.tables "
                "WHERE database = currentDatabase() AND name = %(t)s"
            )
            _, rows = self.engine.query(sql, {"t": parts[0]})
        elif len(parts) == 2:
            sql = "SELECT count() FROM system.tables WHERE database = %(d)s AND name = %(t)s"
            _, rows = self.engine.query(sql, {"d": parts[0], "t": parts[1]})
        else:
            return False
        return bool(rows and rows[0][0])

    def canonical(self, text: str) -> str:
        text = text.strip().rstrip(";").strip()
        if not text:
            raise SqlRefused("an empty query")
        if len(text) > MAX_TEXT:
            raise SqlRefused(f"the query is {len(text)} characters; at most {MAX_TEXT}")
        try:
            _, rows = self.engine.query("SELECT formatQuerySingleLine(%(q)s)", {"q": text})
        except HeadendError as e:
            raise SqlRefused(f"ClickHouse cannot parse the query: {_short(e)}") from None
        return str(rows[0][0])

    def check(self, text: str) -> str:
        """The canonical form of `text` if people may run it, else SqlRefused naming
        what is not allowed."""
        sql = self.canonical(text)
        try:
            _, rows = self.engine.query(f"EXPLAIN AST {sql}")
        except HeadendError as e:
            raise SqlRefused(f"ClickHouse cannot parse the query: {_short(e)}") from None
        nodes = _ast("\n".join(str(r[0]) for r in rows))
        if not nodes or nodes[0].kind != "SelectWithUnionQuery":
            what = nodes[0].kind if nodes else "nothing"
            raise SqlRefused(f"only SELECT queries may run here, not {what}")
        # The top node's children: the SELECTs, and the FORMAT the client library
        # adds to every query; anything else (the query's own FORMAT, INTO OUTFILE,
        # SETTINGS) is refused.
        top = [n for n in nodes if n.depth == 1]
        extra = [n for n in top[1:] if not (n.kind == "Identifier" and n.text == CLIENT_FORMAT)]
        if not top or top[0].kind != "ExpressionList" or extra or len(top) > 2:
            raise SqlRefused("a query of its own FORMAT, INTO OUTFILE or SETTINGS is refused")
        stack: list[Node] = []
        for i, n in enumerate(nodes):
            while stack and stack[-1].depth >= n.depth:
                stack.pop()
            self._check_node(nodes, i, stack[-1] if stack else None)
            stack.append(n)
        return sql

    def _check_node(self, nodes: list[Node], i: int, parent: Node | None) -> None:
        n = nodes[i]
        if n.kind in ("Set", "SetQuery"):
            raise SqlRefused("SETTINGS in a query is refused (the limits are fixed)")
        if n.kind == "TableIdentifier":
            self._check_table(_name(n.text))
        elif n.kind == "Function":
            name = _name(n.text)
            if parent is not None and parent.kind == "TableExpression":
                if name not in TABLE_FUNCTIONS:
                    raise SqlRefused(f"the table function {name}() is not allowed")
            elif not self.function_ok(name):
                raise SqlRefused(f"the function {name}() is not allowed")
            if name in _IN_FAMILY:
                self._check_in_operand(nodes, i)
        elif n.kind == "Identifier" and "." in n.text:
            # `x IN db.table` and the like name tables as identifiers.
            parts = _unquote(_name(n.text))
            if len(parts) == 2 and self._exists(parts) and not self._table_ok(parts):
                raise SqlRefused(f"table {'.'.join(parts)} is not readable here")

    def _check_table(self, name: str) -> None:
        parts = _unquote(name)
        if len(parts) == 1:
            # Unqualified: only a name the query defines itself (WITH ... AS).
            if self._exists(parts):
                raise SqlRefused(f"name tables with their database ({self.db}.{parts[0]})")
            return
        if not self._table_ok(parts):
            raise SqlRefused(
                f"table {'.'.join(parts)} is not readable here; people's SQL reads "
                f"{', '.join(f'{self.db}.{t}' for t in TABLES)}"
            )

    def _check_in_operand(self, nodes: list[Node], i: int) -> None:
        """`x IN name`: an unqualified name on the right must not be a table."""
        depth = nodes[i].depth
        args = [n for n in nodes[i + 1 :] if n.depth > depth]
        args = args[: next((k for k, n in enumerate(args) if n.depth <= depth), len(args))]
        operands = [n for n in args if n.depth == depth + 2]
        if len(operands) == 2 and operands[1].kind == "Identifier":
            parts = _unquote(_name(operands[1].text))
            if len(parts) == 1 and self._exists(parts):
                raise SqlRefused(f"name tables with their database ({self.db}.{parts[0]})")

    def filters(self, regions: tuple[str, ...] | None) -> str:
        """`additional_table_filters` keeping each documented table to `regions`."""
        if regions is None:
            return ""

        def q(s: str) -> str:
            return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"

        conditions = region_conditions(self.db, regions)
        items = ", ".join(f"{q(f'{self.db}.{t}')}: {q(c)}" for t, c in conditions.items())
        return f"additional_table_filters = {{{items}}}"

    def prepare(self, text: str, regions: tuple[str, ...] | None) -> str:
        """The statement to run for a person of `regions` (None: the republic)."""
        sql = self.check(text)
        settings = [
            "readonly = 1",
            f"max_execution_time = {MAX_SECONDS}",
            f"max_memory_usage = {MAX_MEMORY}",
            f"max_result_rows = {MAX_ROWS}",
            f"max_result_bytes = {MAX_BYTES}",
            "result_overflow_mode = 'throw'",
        ]
        f = self.filters(regions)
        if f:
            settings.append(f)
        return f"{sql}\nSETTINGS {', '.join(settings)}"


def region_conditions(db: str, regions: tuple[str, ...]) -> dict[str, str]:
    """For each documented table (and view), the condition that keeps it to the rows
    of `regions`: SQL for `additional_table_filters` here, and for row policies on a
    ClickHouse server (`headend.store.accounts`)."""
    lit = ", ".join("'" + r.replace("\\", "\\\\").replace("'", "\\'") + "'" for r in regions)
    in_meters = f"SELECT serial FROM {db}.meters WHERE region IN ({lit})"
    in_nodes = f"SELECT node_id FROM {db}.grid_nodes WHERE region IN ({lit})"
    return {
        "meters": f"region IN ({lit})",
        "grid_nodes": f"region IN ({lit})",
        "readings": f"meter IN ({in_meters})",
        "events": f"meter IN ({in_meters})",
        "consumption": f"meter IN ({in_meters})",
        "anomaly_findings": f"meter IN ({in_meters})",
        "commands": f"serial IN ({in_meters})",
        "command_status": f"serial IN ({in_meters})",
        "policy_actions": f"serial IN ({in_meters})",
        "work_orders": f"region IN ({lit})",
        "work_order_log": f"region IN ({lit})",
        "service_centres": f"region IN ({lit})",
        "account_flags": f"serial IN ({in_meters})",
        "outages": f"region IN ({lit})",
        "outage_meters": f"meter IN ({in_meters})",
        "balances": f"node_id IN ({in_nodes})",
        "sessions": f"hasAny(meters, (SELECT groupArray(serial) FROM ({in_meters})))",
    }


def _short(e: Exception) -> str:
    text = str(e)
    for cut in (" (version", "\n"):
        text = text.split(cut, 1)[0]
    return text[:400]
