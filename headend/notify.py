"""Notices to consumers through the utility's notification gateway (DESIGN.md section
7, issue 20): the warning before a disconnection, POSTed as JSON to ``[billing]
notify_url`` (the gateway turns it into an SMS or a message), with its delivery
recorded in ``notifications``.

The billing policy queues a notice with each warning it records (`queue`, in the same
pass); the store process delivers what is pending (`Notifier.deliver`, at once and then
every minute): a 2xx answer is ``delivered``; anything else (a refusal, a timeout, no
connection) is tried again a minute later, up to ``notify_attempts``, then ``failed``.
Each row keeps the last status and error, so an operator sees who was not told. The
gateway's address is kept without its credentials (``gateway``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import secrets
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from headend.balance import LOCAL
from headend.config import BillingConfig
from headend.errors import HeadendError
from headend.store.imports import SqlAccess

log = logging.getLogger("headend.notify")

COLUMNS = [
    "notification_id",
    "kind",
    "account_id",
    "serial",
    "payload",
    "gateway",
    "state",
    "attempts",
    "status",
    "error",
    "created_at",
    "ts",
]
RETRY = 60.0


def gateway_of(url: str) -> str:
    """The gateway's address as recorded: scheme, host and path, never credentials."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise HeadendError(f"[billing] notify_url {url!r} is not an http(s) URL")
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}{parts.path}"


def _dt(t: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(t, dt.UTC)


def queue(store: SqlAccess, cfg: BillingConfig, warnings: Sequence[Any], now: float) -> list[str]:
    """A pending notice for each warning decision (account, meter, debt, when the
    disconnection may come); their ids. Nothing without a gateway."""
    if not cfg.notify_url or not warnings:
        return []
    gateway = gateway_of(cfg.notify_url)
    earliest = dt.datetime.fromtimestamp(now + cfg.warning_hours * 3600, LOCAL)
    rows, ids = [], []
    for d in warnings:
        nid = f"N{secrets.token_hex(8)}"
        payload = {
            "id": nid,
            "kind": "disconnect-warning",
            "account_id": d.account_id,
            "serial": d.serial,
            "debt": round(float(d.debt), 2),
            "disconnect_from": earliest.isoformat(timespec="minutes"),
            "message": (
                f"Account {d.account_id}: a debt of {float(d.debt):.2f} is overdue. The "
                f"supply may be disconnected from {earliest:%Y-%m-%d %H:%M} unless it is paid."
            ),
        }
        body = json.dumps(payload, ensure_ascii=False, sort_keys=True)
        stamp = _dt(now)
        rows.append(
            [nid, "disconnect-warning", d.account_id, d.serial, body, gateway, "pending",
             0, 0, "", stamp, stamp]
        )  # fmt: skip
        ids.append(nid)
    store.insert_rows("notifications", COLUMNS, rows)
    return ids


class Notifier:
    """Delivers the pending notices (in the store process, on its event loop)."""

    def __init__(self, store: SqlAccess, db: str, cfg: BillingConfig) -> None:
        self.store = store
        self.db = db
        self.cfg = cfg
        self.wake = asyncio.Event()
        self.totals = {"delivered": 0, "failed": 0, "retried": 0}

    def _pending(self) -> list[tuple[Any, ...]]:
        _, rows = self.store.query(
            f"SELECT notification_id, kind, account_id, serial, payload, gateway, attempts, "
            f"created_at, toFloat64(ts) FROM {self.db}.notifications FINAL "
            f"WHERE state = 'pending' ORDER BY created_at LIMIT 1000"
        )
        return rows

    async def deliver(self) -> dict[str, int]:
        """One round: every pending notice whose retry time has come, POSTed."""
        import aiohttp

        if not self.cfg.notify_url:
            return {}
        loop = asyncio.get_running_loop()
        rows = await loop.run_in_executor(None, self._pending)
        due = [r for r in rows if r[6] == 0 or time.time() - float(r[8]) >= RETRY]
        done: dict[str, int] = {}
        if not due:
            return done
        timeout = aiohttp.ClientTimeout(total=self.cfg.notify_timeout)
        out: list[list[Any]] = []
        async with aiohttp.ClientSession(timeout=timeout) as http:
            for nid, kind, account, serial, payload, gateway, attempts, created, _ in due:
                status, error = 0, ""
                try:
                    async with http.post(
                        self.cfg.notify_url,
                        data=payload.encode(),
                        headers={"Content-Type": "application/json", "Idempotency-Key": nid},
                    ) as r:
                        status = r.status
                        if not 200 <= status < 300:
                            error = (await r.text())[:300] or r.reason or "refused"
                except (aiohttp.ClientError, TimeoutError, OSError) as e:
                    error = f"{type(e).__name__}: {e}"[:300] or "no answer"
                tries = int(attempts) + 1
                if not error:
                    state = "delivered"
                elif tries >= self.cfg.notify_attempts:
                    state = "failed"
                else:
                    state = "pending"
                key = "retried" if state == "pending" else state
                done[key] = done.get(key, 0) + 1
                self.totals[key] += 1
                if state == "failed":
                    log.warning("notice %s to account %s failed: %s", nid, account, error)
                out.append(
                    [nid, kind, account, serial, payload, gateway, state, tries, status,
                     error, created, _dt(time.time())]
                )  # fmt: skip
        await loop.run_in_executor(None, self.store.insert_rows, "notifications", COLUMNS, out)
        return done

    async def run(self) -> None:
        """Delivers at once when woken (a policy pass queued notices), else every
        `RETRY` seconds."""
        if not self.cfg.notify_url:
            return
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), RETRY)
            self.wake.clear()
            try:
                await self.deliver()
            except Exception as e:
                log.error("delivering notices failed (will retry): %s", e)
