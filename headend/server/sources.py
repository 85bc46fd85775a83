"""Who may connect to the meter port, and how refusals are told.

A worker keeps, per source address (and per IPv4 subnet where configured):

- the connections it holds from there on which no meter has been identified yet
  (*untrusted*; a connection becomes trusted when a meter is identified on it, and
  identified meters' connections do not count, so meters behind one NAT address push
  as they like);
- a token bucket of new connections;
- the refused inputs of the last minute (malformed frames, failed tags, replays,
  junk APDUs, handshake timeouts).

Past a limit the address is banned: its connections are refused at once for
`source_ban` seconds, doubled with each new offence while it is remembered, up to
`source_ban_max`. Addresses on which meters were identified are remembered as *known*:
when a worker is full, a known address's connection takes the place of the oldest
untrusted one.

The limits are per worker process: the kernel spreads a source's connections over the
workers (SO_REUSEPORT), so a node admits about `workers` times as much.

:class:`RefusalTally` aggregates what was refused: one log line and one `events` row per
source address, reason and meter per interval, with the count, so a flood writes a
bounded number of lines and rows whatever its size. The exact counts per reason are the
worker's `rejects` (in `/metrics` and `headend ctl status`).

Time is an argument everywhere (`now`, seconds); nothing here reads a clock.
"""

from __future__ import annotations

import ipaddress
import math
from collections import OrderedDict
from dataclasses import dataclass

from headend.config import ServerConfig

# Bounds on what an attacker from many addresses can make a worker remember.
MAX_SOURCES = 100_000
MAX_KNOWN = 200_000
MAX_TALLY = 10_000
BAD_WINDOW = 60.0


def address_of(peer: str) -> str:
    """The address part of a transport's "host:port" peer name (IPv6 has colons)."""
    host, sep, port = peer.rpartition(":")
    if not sep or not port.isdigit():
        return peer
    return host.strip("[]")


@dataclass(slots=True)
class _Source:
    tokens: float
    refilled: float
    untrusted: int = 0
    bad: int = 0
    bad_since: float = 0.0
    # Never banned: a time before any.
    banned_until: float = -math.inf
    ban: float = 0.0


class SourceGuard:
    """The per-source limits of one worker."""

    def __init__(self, cfg: ServerConfig) -> None:
        self.cfg = cfg
        self._trusted = [ipaddress.ip_network(n, strict=False) for n in cfg.trusted_sources]
        self._sources: dict[str, _Source] = {}
        self._known: OrderedDict[str, None] = OrderedDict()
        self._exempt: dict[str, bool] = {}
        self.banned_total = 0

    # -- keys ---------------------------------------------------------------------------

    def _keys(self, addr: str) -> list[tuple[str, int]]:
        """(key, factor) pairs the limits apply to: the address, and its subnet."""
        keys = [(addr, 1)]
        prefix = self.cfg.source_subnet_prefix
        if prefix and "." in addr:
            try:
                net = ipaddress.ip_network(f"{addr}/{prefix}", strict=False)
            except ValueError:
                return keys
            keys.append((str(net), self.cfg.source_subnet_factor))
        return keys

    def exempt(self, addr: str) -> bool:
        """Whether `addr` is in `trusted_sources` (no limits apply)."""
        if not self._trusted:
            return False
        hit = self._exempt.get(addr)
        if hit is None:
            try:
                ip = ipaddress.ip_address(addr)
            except ValueError:
                hit = False
            else:
                hit = any(ip in net for net in self._trusted)
            if len(self._exempt) >= MAX_SOURCES:
                self._exempt.clear()
            self._exempt[addr] = hit
        return hit

    def _source(self, key: str, now: float, factor: int = 1) -> _Source:
        s = self._sources.get(key)
        if s is None:
            if len(self._sources) >= MAX_SOURCES:
                self.prune(now, force=True)
            s = self._sources[key] = _Source(
                tokens=float(self.cfg.source_connect_burst * factor), refilled=now
            )
        return s

    # -- connections --------------------------------------------------------------------

    def admit(self, addr: str, now: float) -> str | None:
        """A new connection from `addr`: None to accept it (it counts as untrusted),
        else the reason it is refused: source-banned, source-rate, source-untrusted."""
        if self.exempt(addr):
            return None
        cfg = self.cfg
        keys = [(self._source(k, now, f), f) for k, f in self._keys(addr)]
        for s, _ in keys:
            if s.banned_until > now:
                return "source-banned"
        for s, f in keys:
            if cfg.source_connect_rate > 0:
                burst = float(cfg.source_connect_burst * f)
                s.tokens = min(burst, s.tokens + (now - s.refilled) * cfg.source_connect_rate * f)
                s.refilled = now
                if s.tokens < 1.0:
                    self._offend(s, now)
                    return "source-rate"
            if cfg.source_max_untrusted > 0 and s.untrusted >= cfg.source_max_untrusted * f:
                self._offend(s, now)
                return "source-untrusted"
        for s, _ in keys:
            if cfg.source_connect_rate > 0:
                s.tokens -= 1.0
            s.untrusted += 1
        return None

    def trust(self, addr: str) -> None:
        """A meter was identified on a connection from `addr`: it stops counting as
        untrusted, and the address is known."""
        self._known[addr] = None
        self._known.move_to_end(addr)
        if len(self._known) > MAX_KNOWN:
            self._known.popitem(last=False)
        self._release(addr)

    def release(self, addr: str, trusted: bool) -> None:
        """A connection from `addr` closed."""
        if not trusted:
            self._release(addr)

    def _release(self, addr: str) -> None:
        if self.exempt(addr):
            return
        for k, _ in self._keys(addr):
            s = self._sources.get(k)
            if s is not None and s.untrusted > 0:
                s.untrusted -= 1

    def known(self, addr: str) -> bool:
        """Whether a meter has been identified on a connection from `addr`."""
        return addr in self._known

    # -- misbehaviour -------------------------------------------------------------------

    def bad(self, addr: str, now: float, n: int = 1) -> float:
        """`n` refused inputs from `addr`. Returns the ban's length in seconds when this
        passed the limit (the address is now banned), else 0."""
        limit = self.cfg.source_max_bad_frames
        if limit <= 0 or self.exempt(addr):
            return 0.0
        banned = 0.0
        for k, f in self._keys(addr):
            s = self._source(k, now, f)
            if now - s.bad_since >= BAD_WINDOW:
                s.bad_since, s.bad = now, 0
            s.bad += n
            if s.bad > limit * f and s.banned_until <= now:
                banned = max(banned, self._offend(s, now))
        return banned

    def _offend(self, s: _Source, now: float) -> float:
        cfg = self.cfg
        if s.banned_until > now:
            return s.ban
        # Remembered for source_ban_max after its last ban ended: the ban doubles.
        if now - s.banned_until > cfg.source_ban_max or s.ban <= 0:
            s.ban = cfg.source_ban
        else:
            s.ban = min(cfg.source_ban_max, s.ban * 2)
        s.banned_until = now + s.ban
        s.bad, s.bad_since = 0, now
        self.banned_total += 1
        return s.ban

    def banned(self, addr: str, now: float) -> bool:
        return any(
            (s := self._sources.get(k)) is not None and s.banned_until > now
            for k, _ in self._keys(addr)
        )

    def banned_now(self, now: float) -> int:
        """Addresses (and subnets) refused at the moment."""
        return sum(1 for s in self._sources.values() if s.banned_until > now)

    def prune(self, now: float, force: bool = False) -> None:
        """Forgets sources with nothing to remember: no connections, a full bucket, no
        recent misbehaviour, no ban (remembered for `source_ban_max` after it ends)."""
        cfg = self.cfg
        burst = float(cfg.source_connect_burst)
        refill_s = burst / cfg.source_connect_rate if cfg.source_connect_rate > 0 else 0.0
        drop = [
            k
            for k, s in self._sources.items()
            if s.untrusted == 0
            and now - s.refilled >= refill_s
            and (s.bad == 0 or now - s.bad_since >= BAD_WINDOW)
            and now - s.banned_until > cfg.source_ban_max
        ]
        for k in drop:
            del self._sources[k]
        if force and len(self._sources) >= MAX_SOURCES:
            # Under a spread attack: keep the banned and those holding connections.
            for k in [k for k, s in self._sources.items() if s.banned_until <= now][
                : len(self._sources) // 2
            ]:
                if self._sources[k].untrusted == 0:
                    del self._sources[k]

    def __len__(self) -> int:
        return len(self._sources)


@dataclass(slots=True)
class Refusal:
    """What was refused from one source for one reason (and meter) in an interval."""

    source: str
    reason: str
    meter: str
    count: int
    first: float
    last: float
    message: str


class RefusalTally:
    """Refusals aggregated per (source address, reason, meter) until taken."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str, str], Refusal] = {}
        self.since: float | None = None

    def add(self, source: str, reason: str, meter: str, message: str, now: float) -> None:
        if self.since is None:
            self.since = now
        key = (source, reason, meter)
        r = self._rows.get(key)
        if r is None:
            if len(self._rows) >= MAX_TALLY:
                # A flood from very many addresses: the rest share one row per reason.
                key = ("*", reason, "")
                r = self._rows.get(key)
                if r is None:
                    r = self._rows[key] = Refusal(
                        "*", reason, "", 0, now, now, "from further sources (tally full)"
                    )
                r.count += 1
                r.last = now
                return
            r = self._rows[key] = Refusal(source, reason, meter, 0, now, now, message)
        r.count += 1
        r.last = now

    def take(self) -> list[Refusal]:
        """Everything since the last call, the largest counts first."""
        rows = sorted(self._rows.values(), key=lambda r: (-r.count, r.source, r.reason))
        self._rows = {}
        self.since = None
        return rows

    def __len__(self) -> int:
        return len(self._rows)


def event_rows(
    refusals: list[Refusal], now: float
) -> list[tuple[str, int, int, str, str, str, str, str, int]]:
    """`events` rows of the refusals: detail is "<count> in <seconds> s: <first message>"."""
    return [
        (
            r.meter,
            int(r.first),
            0,
            f"reject:{r.reason}",
            "reject",
            "head-end",
            r.source,
            f"{r.count} in {max(1, round(r.last - r.first))} s: {r.message}"[:400],
            int(now),
        )
        for r in refusals
    ]
