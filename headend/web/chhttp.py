"""ClickHouse's HTTP interface, served by the store process (`[http] clickhouse_port`).

It speaks the protocol that clickhouse-connect, curl, and Grafana's and DBeaver's
ClickHouse drivers use (a query in the body or the ``query`` parameter, data after
an INSERT, the result in the query's FORMAT, errors as ``Code: N. DB::Exception``
with ``X-ClickHouse-Exception-Code``), answered from the embedded store:

- People with the analyst role, as their name and a personal API token for password
  (Basic auth, ``X-ClickHouse-User``/``X-ClickHouse-Key``, or ``user``/``password``
  parameters). Their SQL goes through `headend.sqlguard`: read-only, the documented
  tables only, their regions only, fixed limits; their settings are ignored. Each
  query is an audit row.
- Head-end nodes whose `[store] dsn` is this node's store (``http://node:SECRET@...``),
  with the secret in `[http] clickhouse_node_secret_file`: anything, as the store's
  own client would (ingest, migrations, balances, commands), with their settings.
  Their inserts go through this store's tap, so they reach the link like its own.

With a ClickHouse server instead of the embedded store, analysts and nodes are that
server's users, with row policies (not run here: no server can be installed).
Queries run on clients of their own (`Store.companion`), never holding the store
process's main client.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hmac
import json
import logging
import re
import time
import uuid
import zlib
from pathlib import Path
from typing import Any

from aiohttp import web

from headend.errors import HeadendError
from headend.people import LoginError, People, Principal
from headend.sqlguard import Guard, SqlRefused
from headend.store.db import IDENT, Store

log = logging.getLogger("headend.web")

NODE_USER = "node"
MAX_BODY = 256 << 20
DEFAULT_FORMAT = "TabSeparated"
RESERVED = frozenset(
    {
        "query",
        "database",
        "default_format",
        "query_id",
        "session_id",
        "session_timeout",
        "session_check",
        "compress",
        "decompress",
        "enable_http_compression",
        "http_zlib_compression_level",
        "client_protocol_version",
        "user",
        "password",
        "quota_key",
        "buffer_size",
        "wait_end_of_query",
        "send_progress_in_http_headers",
        "http_headers_progress_interval_ms",
        "add_http_cors_header",
        "role",
    }
)
"""Parameters that are the protocol's, not ClickHouse settings."""

PEOPLE_FORMATS = frozenset(
    {
        "Native",
        "RowBinary",
        "RowBinaryWithNames",
        "RowBinaryWithNamesAndTypes",
        "TabSeparated",
        "TabSeparatedRaw",
        "TabSeparatedWithNames",
        "TabSeparatedWithNamesAndTypes",
        "TSV",
        "TSVRaw",
        "TSVWithNames",
        "TSVWithNamesAndTypes",
        "CSV",
        "CSVWithNames",
        "CSVWithNamesAndTypes",
        "JSON",
        "JSONCompact",
        "JSONEachRow",
        "JSONCompactEachRow",
        "JSONStrings",
        "Pretty",
        "PrettyCompact",
        "PrettyCompactMonoBlock",
        "Values",
        "Parquet",
        "Arrow",
        "ArrowStream",
    }
)
"""Output formats people may ask for (none writes a file)."""

_FORMAT_AT_END = re.compile(r"\s+FORMAT\s+([A-Za-z][A-Za-z0-9]*)\s*;?\s*$", re.I)
_INSERT = re.compile(
    r"^\s*INSERT\s+INTO\s+(?:TABLE\s+)?(?P<table>[`\"\w.]+)\s*(?P<cols>\([^)]*\))?\s*"
    r"FORMAT\s+(?P<fmt>[A-Za-z][A-Za-z0-9]*)[ \t]*\r?\n?",
    re.I,
)
_READS = ("SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXISTS", "EXPLAIN", "(")
_CODE = re.compile(r"Code: (\d+)")


class ChError(Exception):
    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def _content_type(fmt: str) -> str:
    if fmt.startswith(("TabSeparated", "TSV")):
        return "text/tab-separated-values; charset=UTF-8"
    if fmt.startswith("CSV"):
        return "text/csv; charset=UTF-8"
    if fmt.startswith("JSON"):
        return "application/json; charset=UTF-8"
    if fmt.startswith("Pretty") or fmt == "Values":
        return "text/plain; charset=UTF-8"
    return "application/octet-stream"


def _decode(body: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if not encoding or encoding == "identity":
        return body
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    if encoding == "lz4":
        import lz4.frame

        return bytes(lz4.frame.decompress(body))
    if encoding == "zstd":
        from backports import zstd

        return bytes(zstd.decompress(body))
    raise ChError(
        400, 1, f"Content-Encoding {encoding!r} is not supported (gzip, deflate, lz4, zstd)"
    )


def _credentials(request: web.Request) -> tuple[str, str]:
    h = request.headers
    if "X-ClickHouse-User" in h:
        return h["X-ClickHouse-User"], h.get("X-ClickHouse-Key", "")
    auth = h.get("Authorization", "")
    if auth.lower().startswith("basic "):
        try:
            user, _, password = base64.b64decode(auth[6:].strip()).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            raise ChError(403, 516, "malformed Basic authorization") from None
        return user, password
    return request.query.get("user", "default"), request.query.get("password", "")


def _split_format(sql: str) -> tuple[str, str | None]:
    m = _FORMAT_AT_END.search(sql)
    if m is None:
        return sql, None
    return sql[: m.start()], m.group(1)


def _unquote(name: str) -> list[str]:
    return [p.strip('`"') for p in name.split(".")]


class ClickHouseHttp:
    """The interface's handlers, over clients of their own of the node's store."""

    def __init__(self, store: Store, people: People, node_secret: str | None) -> None:
        self.store = store
        self.people = people
        self.db = store.db
        self.node_secret = node_secret
        self.readers: Store | None = None  # people's queries (no tap: they write nothing)
        self.writers: Store | None = None  # nodes' (with the tap: their writes travel)
        self.guard: Guard | None = None

    def open(self) -> None:
        self.readers = self.store.companion(tapped=False)
        self.writers = self.store.companion()
        self.guard = Guard(self.readers, self.db)

    def close(self) -> None:
        for s in (self.readers, self.writers):
            if s is not None:
                s.close()

    # -- who ---------------------------------------------------------------------------

    def _who(self, request: web.Request) -> Principal | None:
        """None for a node; the person otherwise (an analyst, by token)."""
        user, password = _credentials(request)
        if user == NODE_USER:
            if self.node_secret and hmac.compare_digest(
                password.encode(), self.node_secret.encode()
            ):
                return None
            raise ChError(403, 516, f"{NODE_USER}: Authentication failed")
        try:
            who = self.people.by_token(password, f"clickhouse-http:{request.remote}")
        except LoginError as e:
            raise ChError(
                403,
                516,
                f"{user}: Authentication failed: the password is a personal API token ({e})",
            ) from None
        if who.name != user:
            raise ChError(403, 516, f"{user}: Authentication failed: the token is {who.name}'s")
        if not who.can("sql"):
            raise ChError(403, 497, f"{user}: Not enough privileges: SQL needs the analyst role")
        return who

    # -- the request -------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        query_id = request.query.get("query_id") or str(uuid.uuid4())
        started = time.perf_counter()
        try:
            if request.method not in ("GET", "POST"):
                raise ChError(405, 1, f"{request.method} is not a method of this interface")
            people = self.people
            keys = [f"ch:{_credentials(request)[0]}", f"ip:{request.remote}"]
            delay = people.throttle.delay(keys, time.monotonic())
            if delay:
                await asyncio.sleep(delay)
            try:
                who = self._who(request)
            except ChError:
                people.throttle.failed(keys, time.monotonic())
                raise
            body = _decode(await request.read(), request.headers.get("Content-Encoding", ""))
            text = request.query.get("query", "")
            loop = asyncio.get_running_loop()
            if who is None:
                out, fmt = await loop.run_in_executor(None, self._node, request, text, body)
            else:
                if body:
                    text = (
                        f"{text}\n{body.decode(errors='replace')}"
                        if text
                        else body.decode(errors="replace")
                    )
                out, fmt = await loop.run_in_executor(None, self._person, who, text, request)
            return self._reply(out, fmt, query_id, started)
        except ChError as e:
            return self._error(e.status, e.code, str(e), query_id)
        except SqlRefused as e:
            return self._error(403, 497, f"Not enough privileges: {e}", query_id)
        except HeadendError as e:
            text = str(e)
            m = _CODE.search(text)
            code = int(m.group(1)) if m else 1
            return self._error(400 if code == 62 else 500, code, text, query_id)
        except Exception as e:  # never let a request take the store down
            log.exception("ClickHouse HTTP request failed")
            return self._error(500, 1001, f"internal error: {type(e).__name__}", query_id)

    def _person(self, who: Principal, text: str, request: web.Request) -> tuple[bytes, str]:
        assert self.guard is not None
        assert self.readers is not None
        canonical = self.guard.canonical(text)
        sql, fmt = _split_format(canonical)
        fmt = fmt or request.query.get("default_format") or DEFAULT_FORMAT
        if fmt not in PEOPLE_FORMATS:
            raise SqlRefused(f"format {fmt} is not offered here")
        prepared = self.guard.prepare(sql, who.region_filter())
        out = self.readers.raw_query(prepared, fmt=fmt)
        self.people.audit(who, "sql", "clickhouse-http", detail={"query": text[:2000]})
        return out, fmt

    def _node(self, request: web.Request, text: str, body: bytes) -> tuple[bytes, str]:
        """A head-end node's statement, as its own client would run it."""
        assert self.writers is not None
        settings = {k: v for k, v in request.query.items() if k not in RESERVED}
        data = b""
        if text:
            data = body
        else:
            # The statement is the body; an INSERT's data follows its FORMAT line.
            m = _INSERT.match(body[:65536].decode("utf-8", errors="replace"))
            if m is not None:
                head = len(m.group(0).encode())
                text, data = body[:head].decode(), body[head:]
            else:
                text = body.decode()
        m = _INSERT.match(text + "\n")
        if m is not None:
            if settings.pop("readonly", "0") not in ("", "0"):
                raise ChError(500, 164, "Cannot execute query in readonly mode. (READONLY)")
            self._insert(m, data, settings)
            return b"", DEFAULT_FORMAT
        sql, fmt = _split_format(text)
        fmt = fmt or request.query.get("default_format") or DEFAULT_FORMAT
        reads = sql.lstrip().upper().startswith(_READS)
        # `readonly` and `allow_ddl` are checked here, not set on the engine: the
        # embedded client applies per-call settings with SET and restores them after,
        # and a handle made read-only could never be restored (nor write again).
        if settings.pop("readonly", "0") not in ("", "0") and not reads:
            raise ChError(500, 164, "Cannot execute query in readonly mode. (READONLY)")
        if settings.pop("allow_ddl", "1") == "0" and not reads:
            raise ChError(500, 392, "DDL queries are prohibited. (QUERY_IS_PROHIBITED)")
        client = self.writers.client
        with self.writers._lock:
            if reads:
                return bytes(client.raw_query(sql, settings=settings or None, fmt=fmt)), fmt
            result = client.command(sql, settings=settings or None)
        if result is None or (isinstance(result, int | float) and not isinstance(result, bool)):
            return (b"" if result is None else f"{result}\n".encode()), DEFAULT_FORMAT
        return (str(result) + "\n").encode(), DEFAULT_FORMAT

    def _insert(self, m: re.Match[str], data: bytes, settings: dict[str, str]) -> None:
        assert self.writers is not None
        parts = _unquote(m["table"])
        cols = (
            [c.strip().strip('`"') for c in m["cols"][1:-1].split(",") if c.strip()]
            if m["cols"]
            else []
        )
        fmt = m["fmt"]
        token = settings.get("insert_deduplication_token") or uuid.uuid4().hex
        if len(parts) == 2 and parts[0] == self.db and IDENT.match(parts[1]) and cols:
            # Through the store's own insert: its tap sees it (the link), as its own would.
            self.writers.insert_rowbinary(parts[1], cols, data, token, fmt)
            return
        with self.writers._lock:
            self.writers.client.raw_insert(
                ".".join(parts), cols or None, insert_block=data, settings=settings or None, fmt=fmt
            )

    # -- answers -----------------------------------------------------------------------

    def _reply(self, out: bytes, fmt: str, query_id: str, started: float) -> web.Response:
        # The summary holds what was measured here: the answer's size and the time
        # taken (the engine's row counts do not come back through the embedded client).
        summary = {
            "result_bytes": str(len(out)),
            "elapsed_ns": str(int((time.perf_counter() - started) * 1e9)),
        }
        headers = {
            "X-ClickHouse-Format": fmt,
            "X-ClickHouse-Timezone": "UTC",
            "X-ClickHouse-Query-Id": query_id,
            "X-ClickHouse-Server-Display-Name": "headend",
            "X-ClickHouse-Summary": json.dumps(summary),
            "Content-Type": _content_type(fmt),
        }
        return web.Response(body=out, headers=headers)

    def _error(self, status: int, code: int, message: str, query_id: str) -> web.Response:
        if not message.startswith("Code:"):
            message = f"Code: {code}. DB::Exception: {message}"
        return web.Response(
            status=status,
            text=message.rstrip() + "\n",
            headers={"X-ClickHouse-Exception-Code": str(code), "X-ClickHouse-Query-Id": query_id},
        )

    async def ping(self, request: web.Request) -> web.Response:
        return web.Response(text="Ok.\n")

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_get("/ping", self.ping)
        app.router.add_route("*", "/", self.handle)
        return app


def node_secret(path: str) -> str | None:
    """The node credential's secret from `[http] clickhouse_node_secret_file`."""
    if not path:
        return None
    p = Path(path)
    try:
        if p.stat().st_mode & 0o077:
            raise HeadendError(f"{p} is readable by others: chmod 600 it")
        secret = p.read_text().strip()
    except OSError as e:
        raise HeadendError(f"[http] clickhouse_node_secret_file {p}: {e.strerror}") from e
    if len(secret) < 16:
        raise HeadendError(f"{p}: the node secret needs at least 16 characters")
    return secret


async def serve(
    store: Store, people: People, cfg: Any, ssl_context: Any
) -> tuple[web.AppRunner, ClickHouseHttp] | None:
    """Starts the interface on `[http] clickhouse_port` (0: none)."""
    if not cfg.clickhouse_port:
        return None
    ch = ClickHouseHttp(store, people, node_secret(cfg.clickhouse_node_secret_file))
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, ch.open)
    runner = web.AppRunner(ch.app(), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(
        runner, cfg.host, cfg.clickhouse_port, reuse_address=True, ssl_context=ssl_context
    )
    try:
        await site.start()
    except OSError as e:
        await runner.cleanup()
        ch.close()
        raise HeadendError(
            f"ClickHouse HTTP cannot listen on {cfg.host}:{cfg.clickhouse_port}: {e.strerror}"
        ) from e
    log.info("ClickHouse HTTP interface on %s:%d", cfg.host, cfg.clickhouse_port)
    return runner, ch
