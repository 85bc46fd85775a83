"""Settings: one frozen object per section, every field with its unit and meaning.

A deployment is a data directory (`--data`, `$HEADEND_DATA`, else `./headend-data`)
plus an optional TOML file (`--config headend.toml`; an annotated example ships in the
repository). Everything has a default, so `headend serve` runs with no file at all.
Unknown keys in the file are errors that name the key: a typo must not silently fall
back to a default.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from headend.errors import HeadendError

REPO_ROOT = Path(__file__).resolve().parent.parent
DLMS_PORT = 4059  # IANA-registered port for DLMS/COSEM over TCP


class ConfigError(HeadendError):
    """The configuration file or a setting is wrong."""


@dataclass(frozen=True)
class ServerConfig:
    """Meter-facing TCP servers and worker processes."""

    host: str = "0.0.0.0"  # noqa: S104 - meters connect from the GPRS network
    """Address the meter port listens on."""
    port: int = DLMS_PORT
    """TCP port for meters (4059 is registered for DLMS/COSEM)."""
    hdlc_port: int | None = None
    """A second port for HDLC-over-TCP; None: one port, framing detected per connection."""
    framing: str = "auto"
    """Framing on `port`: auto, wrapper or hdlc."""
    udp: bool = True
    """Listen on UDP too (the wrapper over UDP, IEC 62056-47: NB-IoT meters)."""
    udp_port: int | None = None
    """UDP port; None: the same number as `port` (4059 is registered for both)."""
    udp_receive_buffer: int = 4 << 20
    """Bytes of kernel receive buffer for each worker's UDP socket: meters push in bursts
    at the start of their intervals, and datagrams the buffer cannot hold are dropped by
    the kernel (`RcvbufErrors` in /proc/net/snmp). Capped by net.core.rmem_max unless
    the worker may force it (CAP_NET_ADMIN)."""
    wake_window: float = 20.0
    """Seconds a meter on UDP can be asked after its last datagram (a battery meter
    sleeps between its uplinks: NB-IoT power saving): its commands and reads start on
    a datagram and wait for the next one once this has passed."""
    workers: int = 0
    """Worker processes; 0 means one per CPU."""
    max_connections_per_worker: int = 19_000
    """Connections one worker holds (a process may hold 20,000 open files here)."""
    max_apdu: int = 65_535
    """Largest APDU accepted, bytes (wrapper frames cannot exceed 65,535)."""
    idle_timeout: float = 1800.0
    """Seconds without a byte before a connection is closed."""
    handshake_timeout: float = 60.0
    """Seconds a new connection has to send its first valid frame."""
    max_pending_per_session: int = 1024
    """APDUs a connection may queue while its meter is looked up (the connection stops
    being read meanwhile; this bounds what one read can bring)."""
    unknown_meter_ttl: float = 300.0
    """Seconds a meter the store does not know stays refused before asking again."""
    lookup_batch_delay: float = 0.05
    """Seconds to gather meter lookups into one request to the store."""
    pause_backlog_bytes: int = 1 << 30
    """Spool backlog (bytes not yet in ClickHouse) at which workers stop reading."""
    resume_backlog_bytes: int = 512 << 20
    """Backlog below which workers read again."""
    sweep_interval: float = 5.0
    """Seconds between checks of idle and handshake timeouts."""
    source_max_untrusted: int = 256
    """Connections one source address may hold on a worker before a meter is identified
    on them; more are refused and the address is banned. Identified meters' connections
    do not count (meters behind one NAT address push as they like). 0: no limit."""
    source_connect_rate: float = 200.0
    """New connections per second one source address may open on a worker (a token
    bucket of `source_connect_burst`); over it the address is banned. 0: no limit."""
    source_connect_burst: int = 2000
    """Connections a source address may open at once before its rate applies."""
    source_max_bad_frames: int = 100
    """Refused inputs (malformed frames, failed tags, junk APDUs, handshake timeouts; not
    replays, which meters send again after losing a connection) per minute from one
    source address before it is banned. 0: no limit."""
    source_ban: float = 10.0
    """Seconds a source address is refused the first time it passes a limit; each new
    offence while remembered doubles it, up to `source_ban_max`."""
    source_ban_max: float = 3600.0
    """Longest ban, seconds; an address with no new offence this long after its ban
    ended starts again at `source_ban`."""
    source_subnet_prefix: int = 0
    """Also apply the limits to each IPv4 /N (24: a /24) with `source_subnet_factor`
    times the address limits; 0: per address only."""
    source_subnet_factor: int = 8
    """The subnet limits as a multiple of the address limits."""
    trusted_sources: tuple[str, ...] = ()
    """Networks (CIDR) exempt from the per-source limits: concentrators' networks, an
    APN behind one NAT address, the load driver."""
    max_bad_frames_per_connection: int = 20
    """Refused inputs on one connection without an identified meter before it is
    closed."""
    reject_report_interval: float = 60.0
    """Seconds over which refused inputs and refused connections are aggregated: one log
    line and one `events` row per source address, reason and meter per interval, with
    the count (the counts are exact in /metrics and status at once)."""


@dataclass(frozen=True)
class StoreConfig:
    """ClickHouse and the spool."""

    dsn: str = ""
    """ClickHouse to use: "" for the embedded store in the data directory, or
    "http://host:8123" for a server."""
    database: str = "ami"
    """Database holding the documented tables."""
    cluster: str = ""
    """A ClickHouse cluster (its name in the servers' remote_servers) to create the
    schema on: replicated tables sharded across it, Distributed tables over them
    (headend/store/cluster.py). "": one server, or the embedded store."""
    server_accounts: bool = False
    """With a ClickHouse server as the store: keep a ClickHouse user for each analyst
    (their tokens as passwords, read-only, the documented tables, row policies for
    their regions; headend/store/accounts.py), so their own tools reach the server
    directly. Needs SQL-driven access control on the server."""
    ingest_interval: float = 0.5
    """Longest wait, seconds, before spooled rows are inserted (the latency bound)."""
    ingest_batch_bytes: int = 16 << 20
    """Spool bytes that start an insert before `ingest_interval` is up: inserts of a few
    hundred thousand rows cost half the CPU per row of small ones."""
    counters_interval: float = 1.0
    """Seconds between a worker's invocation-counter records (the counters' replay
    window after a crash; readings dedup on their key regardless)."""
    max_insert_bytes: int = 64 << 20
    """Spool bytes per insert (per segment and round)."""
    min_free_bytes: int = 256 << 20
    """Free bytes the embedded store's disk must have for an insert to be tried; below
    it ingest waits (the spool keeps everything) and says so. chdb's streamed insert
    reports success on a full disk and writes nothing, so this is the guard. 0: none."""
    segment_bytes: int = 64 << 20
    """Spool segment size before a worker starts a new one."""
    fsync: str = "interval"
    """When workers fsync the spool: always (every append), interval, never."""
    fsync_interval: float = 1.0
    """Seconds between fsyncs with fsync = interval (the loss window on power failure)."""
    readings_ttl_days: int = 0
    """Delete readings older than this many days (whole days at a time, as ClickHouse
    merges); readings that arrive already older are not kept. 0 keeps them all."""
    sessions_ttl_days: int = 90
    """Delete session records older than this many days; 0 keeps them."""
    retry_delay: float = 1.0
    """First retry delay after a failed insert, seconds (doubles up to 30)."""
    balance_interval: float = 900.0
    """Seconds between recomputations of the recent consumption and balances; 0: never
    (then `headend balance --recompute` keeps them)."""
    balance_window: int = 21_600
    """Seconds back from now that each recomputation covers."""
    late_days: int = 35
    """Readings older than the window that arrive late (profile reads, backfill, a
    meter's buffer) are taken in by the next recomputation, for the meters and hours
    they concern, up to this many days back; older ones by recomputing their period
    (`headend balance --recompute --from ... --to ...`). 0: never."""
    anomaly_interval: float = 3600.0
    """Seconds between runs of the theft and anomaly detection over the last
    `anomaly_window` (after a balance recomputation); 0: never (then `headend anomalies
    --detect`)."""
    anomaly_window: int = 86_400
    """Seconds back from now that each detection run covers."""


@dataclass(frozen=True)
class SecurityConfig:
    """Keys and what meters must do."""

    master_key_file: str = ""
    """File holding the 32-byte master key as hex; "" means <data>/secrets/master.key,
    created on first use. Keep it outside the data directory in production."""
    master_key_env: str = "HEADEND_MASTER_KEY"
    """Environment variable that, when set, holds the master key (hex) instead."""
    require_authentication: bool = True
    """Refuse ciphered APDUs without an authentication tag."""
    require_encryption: bool = False
    """Refuse ciphered APDUs that are only authenticated."""
    previous_keys_grace: float = 86400.0
    """Seconds a meter's keys stay accepted for its frames after a rotation replaced
    them (pushes it buffered under them arrive late)."""


@dataclass(frozen=True)
class CommandsConfig:
    """Requests to meters: the head-end as DLMS client on the meters' connections."""

    client_title: str = "48454144454E4431"
    """The head-end's system title (8 bytes as hex) in ciphered requests and HLS."""
    client_address: int = 1
    """Client wrapper port (1: the management client, which may switch supply)."""
    request_timeout: float = 20.0
    """Seconds to wait for a meter's response to one request."""
    connect_timeout: float = 10.0
    """Seconds to wait for a listening meter (one with an `address`) to accept the
    head-end's connection."""
    max_associations_per_worker: int = 64
    """Associations one worker runs at the same time (commands go first)."""
    max_per_node: int = 8
    """Commands running at the same time under one grid node (transformer, segment)."""
    attempts: int = 4
    """Tries before a command fails."""
    retry_delay: float = 30.0
    """Seconds before the first retry; doubles with each attempt (at most an hour)."""
    expire: float = 86_400.0
    """Seconds a command waits for its meter to connect before it expires."""
    max_expire: float = 31 * 86_400.0
    """Longest `expires_in` a person may give a command, seconds."""
    recovery_window: float = 21_600.0
    """When a worker goes away without a clean exit (killed), the load profile of each
    meter it held is read from the meter's last stored push for this many seconds of
    meter time (what the worker had read but not spooled is gone with it); 0: off."""
    max_pending_per_meter: int = 100
    """Commands one meter may have waiting or running; more are refused with an error
    (scheduled reads are queued only when none of their kind waits)."""
    wait: float = 30.0
    """Seconds `headend ctl read/disconnect/reconnect` waits for the outcome before
    answering that the command is queued."""
    dispatch_interval: float = 1.0
    """Seconds between passes over the queue (offers, expiries)."""
    schedule_interval: float = 3600.0
    """Seconds between scheduler passes (gap backfill, clock checks, daily reads); 0:
    off. A pass that fills its batch is followed by the next as soon as half a batch
    of scheduled commands or fewer wait, so large fleets are read as fast as the meters
    answer."""
    schedule_batch: int = 10_000
    """Meters one scheduler pass queues work for, at most, per kind."""
    backfill_days: int = 7
    """Days back the scheduler looks for estimated (missing) consumption to backfill
    from the meters' load profiles."""
    daily_read_days: float = 1.0
    """Each meter's daily read (billing registers, the load profile since its last
    stored interval, the event log since its last stored event) this often (days); 0:
    never."""
    clock_check_days: float = 1.0
    """Each meter's clock is checked this often (days); 0: never."""
    clock_threshold: float = 10.0
    """Seconds of drift beyond which the clock is set."""


@dataclass(frozen=True)
class BillingConfig:
    """Debts from the billing system and the disconnection policy."""

    policy: bool = True
    """Run the disconnection policy (False: debts are kept, nobody is switched)."""
    debt_threshold: float = 100_000.0
    """Debt (in the billing currency) above which an account may be disconnected."""
    overdue_days: int = 30
    """Days the debt must be overdue before a disconnection."""
    reconnect_at: float = 0.0
    """A disconnected debtor is reconnected once the debt is at most this."""
    allowed_hours: str = "9-17"
    """Local (Tashkent) hours in which disconnections may start, "from-to" inclusive."""
    allowed_weekdays: str = "mon-fri"
    """Weekdays on which disconnections may happen: a range or a comma list."""
    holidays: str = ""
    """Dates without disconnections, comma-separated YYYY-MM-DD."""
    warning_hours: float = 48.0
    """Hours between the warning and the earliest disconnection."""
    max_per_node_per_hour: int = 20
    """Disconnections per grid node (transformer) per hour, at most."""
    interval: float = 60.0
    """Seconds between policy passes."""
    tariff_zones: str = "night:23-7,day:7-23"
    """Time-of-use zones for the billing determinants, in local (Tashkent) hours:
    name:from-to, comma-separated, every hour in exactly one zone."""
    notify_url: str = ""
    """The notification gateway (SMS, messenger) the warning before a disconnection is
    POSTed to as JSON, http(s)://...; empty: none (the warning is an event only)."""
    notify_timeout: float = 10.0
    """Seconds the gateway has to answer."""
    notify_attempts: int = 5
    """Tries before a notice is recorded as failed (one per minute)."""


@dataclass(frozen=True)
class WorkOrdersConfig:
    """Work orders for the meter service centres (`headend.workorders`): what creates
    one by itself, and how soon a crew is due."""

    interval: float = 900.0
    """Seconds between passes that look for new causes (0: only `headend workorders
    scan`)."""
    lookback: int = 2 * 86_400
    """Seconds of suspects, alarms and failed commands each pass looks at."""
    silent_after: int = 2 * 86_400
    """A meter not heard for longer than this gets an order (seconds of the
    configured clock)."""
    outage_share: float = 0.5
    """When at least this share of a grid node's meters (3 or more) are silent
    together, it is an outage, not a fault of each meter: no order per meter."""
    theft_recheck: int = 30 * 86_400
    """After an inspection closed without confirmed theft, seconds before the same
    meter is sent for inspection again."""
    due_urgent_hours: float = 24.0
    """Hours a crew has for a priority 1 (urgent) order: a switching that failed."""
    due_high_hours: float = 72.0
    """Hours for priority 2: theft suspects, tamper alarms."""
    due_normal_hours: float = 168.0
    """Hours for priority 3: silent meters, clocks, batteries."""
    battery_low_volts: float = 3.2
    """A battery-powered meter whose latest battery voltage (0.0.96.6.3.255) is below
    this gets a low-battery order, as one that raised a battery-low alarm does (a
    3.6 V lithium cell near the end of its life)."""


@dataclass(frozen=True)
class OutagesConfig:
    """Outages from the meters' power events (`headend.outages`)."""

    interval: float = 300.0
    """Seconds between passes that group power events into outages (0: only
    `headend outages scan`)."""
    lookback: int = 2 * 86_400
    """Seconds of power events each pass reads (further back while one is open)."""
    group_window: float = 300.0
    """Power-downs within this many seconds of the first are one outage."""
    min_share: float = 0.5
    """Share of a node's meters (at least two) that must go down together for an
    outage of the node; of a feeder's transformers, for the feeder's."""
    sustained: float = 300.0
    """Seconds from which an outage is sustained (SAIDI, SAIFI); shorter: momentary."""
    silent_after: float = 3600.0
    """A meter not heard for this long (seconds of the configured clock) counts as out
    of supply when most of its grid node fell silent with it (meters that report no
    power events); 0: power events only."""


@dataclass(frozen=True)
class ApprovalConfig:
    """Four eyes: what one person asks and a second, different person with the right
    role and regions approves before it runs (DESIGN.md section 10). The billing
    policy's own actions stay automatic within `[billing]`'s rules and limits."""

    batch_size: int = 20
    """A batch with more disconnections than this waits for approval."""
    categories: tuple[str, ...] = ("large", "critical")
    """Billing account categories (large consumers, critical services) whose
    disconnection waits for approval, as a protected account's does."""
    expire: float = 86400.0
    """Seconds a request waits for its second person before it lapses."""


@dataclass(frozen=True)
class HttpConfig:
    """The store process's HTTP API, metrics and situation-room page."""

    host: str = "127.0.0.1"
    """Address to listen on ("0.0.0.0": every interface)."""
    port: int = 8080
    """TCP port (0: no HTTP at all)."""
    tls_cert: str = ""
    """PEM certificate (chain) for HTTPS on `port`; with `tls_key`. `headend certs`
    makes a self-signed pair for tests and small sites."""
    tls_key: str = ""
    """PEM private key of `tls_cert` (mode 0600)."""
    plain_port: int = 0
    """With TLS: a port that also speaks plain HTTP, answering only `open_reads`
    networks (local scrapers and tools); 0: none."""
    clickhouse_port: int = 0
    """ClickHouse's HTTP interface (8123 is ClickHouse's own) for analysts' tools
    (clickhouse-connect, curl, Grafana, DBeaver; name and personal API token) and for
    head-end nodes whose store is this one; 0: none. HTTPS when TLS is configured."""
    clickhouse_node_secret_file: str = ""
    """File (mode 0600) with the secret of the user `node` on that interface, which
    may write (a head-end whose `[store] dsn` is `http://node:SECRET@this-host:PORT`);
    empty: no node access."""
    token: str = ""
    """Retired: people log in with their own accounts (`headend users`). A token set
    here is kept as the personal API token of an admin named `token-admin`, created at
    start, so existing scripts keep working until it is revoked."""
    open_reads: str = "127.0.0.0/8,::1/128"
    """Networks (comma-separated CIDR) that may scrape /metrics without logging in,
    and, when TLS is configured, may still use plain HTTP."""
    server_names: tuple[str, ...] = ()
    """Host names the page and API answer to (besides IP addresses and localhost);
    a request naming any other host is refused (DNS rebinding)."""
    header_timeout: float = 10.0
    """Seconds a connection may take to send a request's headers (slow clients are
    cut off; idle keep-alive connections too)."""
    body_timeout: float = 60.0
    """Seconds a request may take to send its body."""
    session_idle: float = 1800.0
    """Seconds of inactivity after which a page login ends."""
    session_max: float = 12 * 3600.0
    """Seconds after which a page login ends however active."""
    refresh: float = 10.0
    """Seconds between refreshes of the situation room's figures (grid, today's
    balances, meters online)."""
    js_dir: str = "/usr/share/javascript"
    """Where Debian's libjs-leaflet and libjs-chart.js put the page's libraries."""


@dataclass(frozen=True)
class ClockConfig:
    """The store's clock: real time, or the simulated fleet's faster time in the demo
    (balances, the scheduler, the billing policy and the situation room follow it).
    Simulated time is `start + (real time - anchor) * speed`."""

    speed: float = 1.0
    """Simulated seconds per real second (1: real time)."""
    start: float = 0.0
    """Simulated Unix time at the real Unix time `anchor` (0 with speed 1: real time)."""
    anchor: float = 0.0
    """Real Unix time at which simulated time was `start`."""


ROLES = ("standalone", "region", "centre")


@dataclass(frozen=True)
class NodeConfig:
    """This node's place among the regional nodes and the national centre (DESIGN.md
    section 9). A standalone node owns every meter; a region node owns the meters,
    accounts and grid nodes of its `regions`; the centre owns what lies above the
    regions (generation, the republic, substations feeding several regions) and any
    region listed here, and receives every region's data."""

    name: str = "headend"
    """This node's name among its peers (letters, digits, - and _)."""
    role: str = "standalone"
    """standalone (one node, no link), region or centre."""
    regions: tuple[str, ...] = ()
    """Region-level grid nodes (their node_id, e.g. "UZ-SA") whose meters, accounts and
    grid this node owns and acts on: commands, scheduled reads, billing policy,
    consumption and balances. Ignored when standalone (it owns everything)."""
    upstream: str = ""
    """For a region: the centre's leaf-node address, host:port."""


@dataclass(frozen=True)
class LinkConfig:
    """The link between region nodes and the centre: NATS with JetStream. Each node
    runs its own NATS server (started by `headend serve`, data in <data>/nats); a
    region's is a leaf node of the centre's, so a cut link buffers in the region and
    drains into the centre when it returns."""

    nats_server: str = "nats-server"
    """The NATS server program `headend serve` starts for this node."""
    host: str = "127.0.0.1"
    """Address of this node's NATS server for its own processes."""
    client_port: int = 4222
    """Port of this node's NATS server for its own processes."""
    leaf_host: str = "0.0.0.0"  # noqa: S104 - region nodes connect from their sites
    """Centre: address on which region nodes' NATS servers connect."""
    leaf_port: int = 7422
    """Centre: port on which region nodes' NATS servers connect (NATS leaf nodes)."""
    leaf_advertise: str = ""
    """Centre: the host:port its NATS server tells connected regions to reconnect to
    ("": its own listening address). Regions reconnect to that and to their own
    `upstream`; set it to the address the regions reach the centre at."""
    monitor_port: int = 0
    """Port of the NATS server's monitoring endpoint on `host`; 0: none."""
    tls_cert: str = ""
    """Centre: the certificate (PEM) its leaf-node port presents; with `tls_key`, the
    link uses TLS. Region: a certificate of its own, for a centre that asks for one."""
    tls_key: str = ""
    """Private key (PEM) of `tls_cert`."""
    tls_ca: str = ""
    """CA certificate (PEM) the peer's certificate must chain to. A region with it
    speaks TLS to the centre; a centre with it requires regions' certificates."""
    max_backlog_bytes: int = 20 << 30
    """Bytes the up-link holds on disk at most while the centre does not confirm
    (a region's stream); beyond, new data waits in the outbox, nothing is dropped."""
    down_backlog_bytes: int = 1 << 30
    """The same for each of the centre's streams to a region (master data, commands)."""
    alarm_backlog_bytes: int = 1 << 30
    """Backlog (bytes not yet confirmed by the centre) that raises the link alarm."""
    alarm_backlog_age: float = 3600.0
    """Seconds since the oldest unconfirmed record that raise the link alarm."""
    message_bytes: int = 1 << 20
    """Largest message on the link; larger records travel in parts."""
    heartbeat: float = 5.0
    """Seconds between a node's heartbeats to its peers (link state, lag)."""


@dataclass(frozen=True)
class PeerConfig:
    """Another node this one accepts on the link (`[[peers]]`): at the centre every
    region node, at a region the centre."""

    name: str = ""
    """The peer's node name."""
    role: str = "region"
    """region or centre."""
    regions: tuple[str, ...] = ()
    """A region peer's regions (as in its own [node] regions)."""
    public_key: str = ""
    """The peer's node key (64 hex digits, `headend node key` prints it): the link's
    credentials and the wrapping of meter keys sent to it derive from it."""
    standby: str = ""
    """At the centre, for a region peer: the node that holds this region's meters and
    keys in advance and takes its meters' pushes if the region's data centre is lost."""


@dataclass(frozen=True)
class LogConfig:
    """Logging."""

    level: str = "info"
    """debug, info, warning or error."""
    format: str = "text"
    """text (key=value) or json (one object per line)."""


@dataclass(frozen=True)
class Config:
    """The whole configuration of one deployment."""

    data_dir: Path
    server: ServerConfig = field(default_factory=ServerConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    commands: CommandsConfig = field(default_factory=CommandsConfig)
    billing: BillingConfig = field(default_factory=BillingConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    approval: ApprovalConfig = field(default_factory=ApprovalConfig)
    workorders: WorkOrdersConfig = field(default_factory=WorkOrdersConfig)
    outages: OutagesConfig = field(default_factory=OutagesConfig)
    clock: ClockConfig = field(default_factory=ClockConfig)
    node: NodeConfig = field(default_factory=NodeConfig)
    link: LinkConfig = field(default_factory=LinkConfig)
    log: LogConfig = field(default_factory=LogConfig)
    peers: tuple[PeerConfig, ...] = ()
    """The nodes this one accepts on the link (`[[peers]]`)."""
    profiles_dir: Path = REPO_ROOT / "protocols" / "profiles"
    source: Path | None = None
    """The file this was read from, if any."""

    # Paths inside the data directory.
    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def run_dir(self) -> Path:
        return self.data_dir / "run"

    @property
    def control_socket(self) -> Path:
        return self.run_dir / "control.sock"

    @property
    def admin_socket(self) -> Path:
        return self.data_dir / "admin.sock"

    @property
    def clickhouse_dir(self) -> Path:
        return self.data_dir / "clickhouse"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def firmware_dir(self) -> Path:
        return self.data_dir / "firmware"

    @property
    def master_key_path(self) -> Path:
        return (
            Path(self.security.master_key_file)
            if self.security.master_key_file
            else (self.data_dir / "secrets" / "master.key")
        )

    @property
    def dsn(self) -> str:
        return self.store.dsn or f"chdb://{self.clickhouse_dir}"

    @property
    def link_dir(self) -> Path:
        """The link's outbox and the node's NATS server data."""
        return self.data_dir / "link"

    @property
    def workers(self) -> int:
        return self.server.workers or (os.cpu_count() or 1)

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain values (for passing to child processes and logs)."""
        return {
            "data_dir": str(self.data_dir),
            "profiles_dir": str(self.profiles_dir),
            "source": str(self.source) if self.source else None,
            **{s: _section_dict(getattr(self, s)) for s in SECTIONS},
            "peers": [_section_dict(p) for p in self.peers],
        }


SECTIONS: dict[str, type[Any]] = {
    "server": ServerConfig,
    "store": StoreConfig,
    "security": SecurityConfig,
    "commands": CommandsConfig,
    "billing": BillingConfig,
    "http": HttpConfig,
    "approval": ApprovalConfig,
    "workorders": WorkOrdersConfig,
    "outages": OutagesConfig,
    "clock": ClockConfig,
    "node": NodeConfig,
    "link": LinkConfig,
    "log": LogConfig,
}

CHOICES = {
    ("server", "framing"): {"auto", "wrapper", "hdlc"},
    ("store", "fsync"): {"always", "interval", "never"},
    ("log", "level"): {"debug", "info", "warning", "error"},
    ("log", "format"): {"text", "json"},
    ("node", "role"): set(ROLES),
    ("peers", "role"): {"region", "centre"},
}
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")


def _section_dict(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


def _build(section: str, cls: type[Any], values: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{where}: unknown setting [{section}] {key}")
        default = getattr(cls(), key)
        expected: tuple[type[Any], ...]
        if isinstance(default, bool):
            expected = (bool,)
        elif isinstance(default, int) and not isinstance(default, bool):
            expected = (int,)
        elif isinstance(default, float):
            expected = (int, float)
        elif default is None:
            expected = (int,)
        elif isinstance(default, tuple):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{where}: [{section}] {key} must be a list of strings")
            out[key] = tuple(value)
            continue
        else:
            expected = (str,)
        if not isinstance(value, expected) or (expected == (int,) and isinstance(value, bool)):
            names = " or ".join(t.__name__ for t in expected)
            raise ConfigError(f"{where}: [{section}] {key} must be {names}, got {value!r}")
        choices = CHOICES.get((section, key))
        if choices and (not isinstance(value, str) or value not in choices):
            raise ConfigError(
                f"{where}: [{section}] {key} = {value!r}; "
                f"choose one of {', '.join(sorted(choices))}"
            )
        out[key] = float(value) if isinstance(default, float) else value
    return cls(**out)


def default_data_dir() -> Path:
    return Path(os.environ.get("HEADEND_DATA") or "headend-data")


def load(path: Path | None = None, data_dir: Path | None = None) -> Config:
    """Reads the configuration: defaults, then the file (if any), then `data_dir`."""
    raw: dict[str, Any] = {}
    where = "defaults"
    if path is not None:
        where = str(path)
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"configuration file {path} does not exist") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: {e}") from None
    sections: dict[str, Any] = {}
    file_data_dir = raw.pop("data_dir", None)
    profiles_dir = raw.pop("profiles_dir", None)
    peers = raw.pop("peers", [])
    if not isinstance(peers, list) or not all(isinstance(p, dict) for p in peers):
        raise ConfigError(f"{where}: peers must be an array of tables ([[peers]])")
    sections["peers"] = tuple(_build("peers", PeerConfig, p, where) for p in peers)
    for key, value in raw.items():
        if key not in SECTIONS:
            raise ConfigError(f"{where}: unknown section [{key}]")
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: [{key}] must be a table")
        sections[key] = _build(key, SECTIONS[key], value, where)
    base = Path(path).parent if path is not None else Path.cwd()
    chosen = data_dir or (Path(file_data_dir) if file_data_dir else None) or default_data_dir()
    if not chosen.is_absolute():
        chosen = (base if data_dir is None and file_data_dir else Path.cwd()) / chosen
    cfg = Config(
        data_dir=chosen.resolve(), source=Path(path).resolve() if path else None, **sections
    )
    if profiles_dir:
        p = Path(profiles_dir)
        cfg = replace(cfg, profiles_dir=(p if p.is_absolute() else base / p).resolve())
    if cfg.server.resume_backlog_bytes > cfg.server.pause_backlog_bytes:
        raise ConfigError(f"{where}: [server] resume_backlog_bytes exceeds pause_backlog_bytes")
    _check_sources(cfg.server, where)
    _check_node(cfg, where)
    _check_workorders(cfg, where)
    return cfg


def _check_workorders(cfg: Config, where: str) -> None:
    url = cfg.billing.notify_url
    if url and not url.startswith(("http://", "https://")):
        raise ConfigError(f"{where}: [billing] notify_url must be an http(s):// URL")
    if cfg.billing.notify_attempts < 1 or cfg.billing.notify_timeout <= 0:
        raise ConfigError(f"{where}: [billing] notify_attempts and notify_timeout must be positive")
    out = cfg.outages
    if not 0.0 < out.min_share <= 1.0:
        raise ConfigError(f"{where}: [outages] min_share must be above 0 and at most 1")
    if out.lookback <= 0 or out.group_window <= 0 or out.sustained < 0 or out.interval < 0:
        raise ConfigError(
            f"{where}: [outages] lookback and group_window must be positive, "
            "sustained and interval not negative"
        )
    wo = cfg.workorders
    if not 0.0 < wo.outage_share <= 1.0:
        raise ConfigError(f"{where}: [workorders] outage_share must be above 0 and at most 1")
    for key in ("lookback", "silent_after", "due_urgent_hours", "due_high_hours"):
        if getattr(wo, key) <= 0:
            raise ConfigError(f"{where}: [workorders] {key} must be positive")
    if wo.due_normal_hours <= 0 or wo.theft_recheck < 0 or wo.interval < 0:
        raise ConfigError(
            f"{where}: [workorders] due_normal_hours must be positive, "
            "theft_recheck and interval not negative"
        )


def _check_sources(srv: ServerConfig, where: str) -> None:
    """The per-source limits: networks that parse, a prefix that is one."""
    for net in srv.trusted_sources:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise ConfigError(
                f"{where}: [server] trusted_sources: {net!r} is not a network (CIDR)"
            ) from None
    if not 0 <= srv.source_subnet_prefix <= 32:
        raise ConfigError(f"{where}: [server] source_subnet_prefix must be 0-32")
    for key in ("source_ban", "source_ban_max", "reject_report_interval"):
        if not getattr(srv, key) > 0:
            raise ConfigError(f"{where}: [server] {key} must be positive")


def _check_node(cfg: Config, where: str) -> None:
    """The federation settings make sense together: names, keys, who upstream is."""
    node = cfg.node
    if not NAME.match(node.name):
        raise ConfigError(
            f"{where}: [node] name {node.name!r} must be 1-32 letters, digits, - or _"
        )
    _check_peers(cfg, where)
    if node.role == "region":
        if not node.regions:
            raise ConfigError(f"{where}: a region node needs [node] regions")
        if not node.upstream:
            raise ConfigError(f"{where}: a region node needs [node] upstream (the centre)")
        centres = [p for p in cfg.peers if p.role == "centre"]
        if len(centres) != 1:
            raise ConfigError(
                f"{where}: a region node needs exactly one [[peers]] with role centre"
            )
    elif node.role == "centre":
        owners: dict[str, str] = {r: node.name for r in node.regions}
        for p in cfg.peers:
            if p.role != "region":
                raise ConfigError(f"{where}: the centre's [[peers]] are region nodes ({p.name})")
            for r in p.regions:
                if r in owners:
                    raise ConfigError(
                        f"{where}: region {r} is owned by both {owners[r]} and {p.name}"
                    )
                owners[r] = p.name


def _check_peers(cfg: Config, where: str) -> None:
    names = [p.name for p in cfg.peers]
    for p in cfg.peers:
        if not NAME.match(p.name):
            raise ConfigError(f"{where}: [[peers]] name {p.name!r} is not a node name")
        if names.count(p.name) > 1 or p.name == cfg.node.name:
            raise ConfigError(f"{where}: [[peers]] {p.name} appears twice (or is this node)")
        if len(p.public_key) != 64 or not all(c in "0123456789abcdefABCDEF" for c in p.public_key):
            raise ConfigError(f"{where}: [[peers]] {p.name}: public_key must be 64 hex digits")
        if p.standby and p.standby not in names:
            raise ConfigError(f"{where}: [[peers]] {p.name}: standby {p.standby} is not a peer")


def from_dict(d: dict[str, Any]) -> Config:
    """Rebuilds a configuration from `Config.to_dict` (in a child process)."""
    return Config(
        data_dir=Path(d["data_dir"]),
        profiles_dir=Path(d["profiles_dir"]),
        source=Path(d["source"]) if d.get("source") else None,
        **{s: _revive(SECTIONS[s], d[s]) for s in SECTIONS},
        peers=tuple(_revive(PeerConfig, p) for p in d.get("peers", [])),
    )


def _revive(cls: type[Any], values: dict[str, Any]) -> Any:
    """A section from JSON (lists come back as lists; the fields hold tuples)."""
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
