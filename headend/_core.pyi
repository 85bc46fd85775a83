"""headend._core: the DLMS/COSEM codec compiled from rust_core (do not import directly;
use headend.codec).

Errors are the classes of headend.errors: RemoteProtocolError and its subclasses for
bad input, LocalProtocolError (also a ValueError) for values that cannot be encoded.
"""

from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal, final

__version__: Final[str]
__all__ = [
    "ApduIn",
    "ConsumptionJob",
    "Directory",
    "Frame",
    "FrameError",
    "Identified",
    "KeyTable",
    "LinkFrame",
    "Lookup",
    "MasterKey",
    "NodeSums",
    "PushBatch",
    "PushDecoder",
    "ReadingSlice",
    "Reject",
    "RowSink",
    "Session",
    "StreamDecoder",
    "__version__",
    "decode_apdu",
    "decode_data",
    "decode_frame",
    "decode_hdlc_parameters",
    "decrypt",
    "encode_apdu",
    "encode_data",
    "encrypt",
    "format_obis",
    "hdlc_frame",
    "hdlc_parameters",
    "hdlc_segments",
    "hls_gmac",
    "obis_to_int",
    "parse_obis",
    "scale",
    "unit_info",
    "wrap",
]

_Framing = Literal["auto", "wrapper", "hdlc"]

@final
class Frame:
    """One frame from a stream: transport envelope and, when complete, the APDU."""

    @property
    def framing(self) -> Literal["wrapper", "hdlc"]: ...
    @property
    def offset(self) -> int:
        """Offset of the frame's first byte in the connection's byte stream."""
    @property
    def wire_len(self) -> int:
        """Bytes the frame occupied on the wire."""
    @property
    def source(self) -> int:
        """Wrapper source wPort, or the HDLC source's upper address."""
    @property
    def destination(self) -> int:
        """Wrapper destination wPort, or the HDLC destination's upper address."""
    @property
    def source_lower(self) -> int | None:
        """Lower HDLC address of the source (2- and 4-byte addresses)."""
    @property
    def destination_lower(self) -> int | None: ...
    @property
    def control(self) -> str | None:
        """HDLC frame type: I, RR, RNR, SNRM, DISC, UA, DM, FRMR, UI."""
    @property
    def send_seq(self) -> int | None: ...
    @property
    def recv_seq(self) -> int | None: ...
    @property
    def poll_final(self) -> bool: ...
    @property
    def segmented(self) -> bool:
        """More HDLC segments of this APDU follow (acknowledge with RR)."""
    @property
    def llc(self) -> Literal["command", "response"] | None: ...
    @property
    def apdu(self) -> bytes | None:
        """The complete APDU when this frame completes one (LLC header removed)."""
    @property
    def info(self) -> bytes:
        """Information field of HDLC frames without an APDU (SNRM/UA parameters)."""

@final
class FrameError:
    """Bytes that were not a valid frame; the decoder skipped past them."""

    @property
    def offset(self) -> int: ...
    @property
    def kind(self) -> str:
        """truncated, malformed, oversize, unsupported, ..."""
    @property
    def message(self) -> str: ...

@final
class StreamDecoder:
    """Frames out of arbitrary TCP chunks, for one connection (sans I/O)."""

    def __new__(cls, framing: _Framing = "auto", max_apdu: int = 65535) -> StreamDecoder: ...
    def receive(self, data: bytes) -> None:
        """Stores bytes; b"" means the peer closed the connection."""
    def events(self) -> list[Frame | FrameError]:
        """Every frame and error available now."""
    def feed(self, data: bytes) -> list[Frame | FrameError]:
        """receive(data), then events()."""
    @property
    def framing(self) -> _Framing:
        """The framing in use ("auto" until the first byte decides)."""
    @property
    def pending(self) -> int:
        """Bytes received but not yet part of a frame."""
    @property
    def skipped(self) -> int:
        """Bytes discarded while resynchronising after garbage."""

@final
class KeyTable:
    """Per-meter keys and invocation counters; keys go in and never come out."""

    def __new__(cls) -> KeyTable: ...
    def __len__(self) -> int: ...
    def __contains__(self, key: bytes, /) -> bool: ...
    def set_keys(self, system_title: bytes, ek: bytes, ak: bytes) -> None:
        """Sets a meter's global encryption and authentication keys (counters kept)."""
    def remove(self, system_title: bytes) -> bool: ...
    def set_dedicated_key(self, system_title: bytes, key: bytes | None) -> None: ...
    def raise_received_counter(self, system_title: bytes, invocation_counter: int) -> None:
        """Raises the floor for counters received from the meter; never lowers it."""
    def raise_sent_counter(self, system_title: bytes, next: int) -> None:
        """Raises the next counter used towards the meter; never lowers it."""
    def counters(self, system_title: bytes) -> tuple[int | None, int]:
        """(last received, next to send)."""
    def all_counters(self) -> list[tuple[bytes, int | None, int]]: ...
    def decipher(
        self,
        apdu: bytes,
        sender: bytes | None = None,
        *,
        require_authentication: bool = True,
        require_encryption: bool = False,
    ) -> tuple[bytes, int, int, bytes]:
        """Verifies, decrypts and replay-checks a ciphered APDU from a meter:
        (system title, security control, invocation counter, plaintext APDU)."""
    def encipher(
        self,
        meter: bytes,
        own_title: bytes,
        apdu: bytes,
        *,
        security_control: int = 0x30,
        general: bool = False,
        dedicated: bool = False,
    ) -> bytes:
        """Protects an APDU for ``meter`` as sender ``own_title``, next counter."""
    def hls_response(self, meter: bytes, own_title: bytes, challenge: bytes) -> bytes:
        """HLS-GMAC f(challenge) = SC || IC || GMAC (pass 3 for a client)."""
    def verify_hls_response(self, meter: bytes, challenge: bytes, response: bytes) -> int:
        """Checks the meter's f(challenge) (pass 4); returns its invocation counter."""

_ColumnName = Literal[
    "push_frame",
    "push_kind",
    "push_system_title",
    "push_invocation_counter",
    "push_security_control",
    "push_invoke_id",
    "push_time",
    "push_source",
    "push_first_value",
    "value_push",
    "value_index",
    "value_tag",
    "value",
    "value_blob_start",
    "value_blob_len",
    "blobs",
]

@final
class PushBatch:
    """Decoded pushes as columns (see rust_core/src/push.rs). A record is a
    DataNotification (push_kind 0) or a GET-Response-Normal with data (push_kind 1)."""

    def __len__(self) -> int:
        """Number of pushes decoded."""
    @property
    def values(self) -> int:
        """Number of values (leaves) decoded."""
    @property
    def consumed(self) -> int:
        """Input bytes consumed; a partial trailing frame is not."""
    def column(self, name: _ColumnName) -> tuple[str, bytes]:
        """(array typecode, little-endian bytes) of one column."""
    def rows(
        self,
    ) -> list[tuple[int, bytes, int, int, str, float, bytes | None]]:
        """(frame, system title, invocation counter, leaf, type, value, raw bytes)."""
    def errors(self) -> list[tuple[int, str, str]]:
        """Frames that failed: (frame, kind, message)."""
    def others(self) -> list[tuple[int, bytes | None, bytes]]:
        """Frames that were not pushes: (frame, sender title, plaintext APDU)."""

@final
class PushDecoder:
    """Decodes buffers of pushed frames into PushBatch columns, without the GIL."""

    def __new__(
        cls,
        *,
        require_authentication: bool = True,
        require_encryption: bool = False,
        max_apdu: int = 65535,
    ) -> PushDecoder: ...
    def decode(
        self, keys: KeyTable, frames: bytes, framing: _Framing = "wrapper", first_frame: int = 0
    ) -> PushBatch: ...
    def decode_apdus(
        self, keys: KeyTable, apdus: Sequence[bytes], sender: bytes | None = None
    ) -> PushBatch: ...

@final
class MasterKey:
    """The deployment's master key (AES-256). Wraps meter keys for storage; only
    Directory.add_meter unwraps, straight into its key table."""

    def __new__(cls, key: bytes) -> MasterKey: ...
    @property
    def fingerprint(self) -> str:
        """A non-secret identifier of this key (hex)."""
    def wrap(self, secret: bytes, purpose: str, owner: str, nonce: bytes) -> bytes:
        """Wraps `secret` for `purpose` ("ek", "ak", "password") of meter `owner`."""
    def rewrap(
        self, to: MasterKey, items: Sequence[tuple[bytes, str, str]], nonces: bytes
    ) -> list[bytes]:
        """Moves `(wrapped, purpose, owner)` values from this key to `to` (12 fresh
        random bytes of `nonces` per item); the plaintext never reaches Python."""

@final
class Directory:
    """The meters, models and keys a worker knows (filled lazily from the store)."""

    def __new__(
        cls,
        *,
        require_authentication: bool = True,
        require_encryption: bool = False,
        device_leaf: int = 0,
    ) -> Directory: ...
    def __len__(self) -> int: ...
    def add_profile(self, profile: Mapping[str, Any]) -> None:
        """Adds or replaces a meter-model profile (the parsed TOML)."""
    @property
    def models(self) -> list[str]: ...
    def add_meter(
        self,
        serial: str,
        model: str,
        system_title: bytes | None = None,
        wrapped_ek: bytes | None = None,
        wrapped_ak: bytes | None = None,
        master: MasterKey | None = None,
        last_received: int | None = None,
        next_sent: int | None = None,
        *,
        wrapped_password: bytes | None = None,
        wrapped_kek: bytes | None = None,
        wrapped_previous: tuple[bytes, bytes] | None = None,
        wrapped_pending: tuple[bytes, bytes] | None = None,
        ct_ratio: float = 1.0,
        vt_ratio: float = 1.0,
    ) -> int:
        """Adds or updates a meter; wrapped keys (and the LLS password, the master key
        KEK, a rotation's previous and pending keys) are unwrapped with `master` in Rust
        and never come out. `ct_ratio`, `vt_ratio`: its instrument transformers (its
        readings are stored as primary values)."""
    def ratios(self, meter: int) -> tuple[float, float]:
        """(CT ratio, VT ratio)."""
    def to_primary(self, meter: int, rows: list[list[Any]]) -> int:
        """Polled rows [obis, ts, value, unit, status] to primary values in place, by
        the rule pushes follow; returns how many values changed."""
    def has_kek(self, meter: int) -> bool:
        """Whether the meter has a master key (KEK) to receive new keys under."""
    def rotation_state(self, meter: int) -> tuple[bool, bool]:
        """(has previous keys, has pending keys)."""
    def new_keys(self, meter: int, master: MasterKey, nonces: bytes) -> tuple[bytes, bytes]:
        """Draws new keys in Rust, holds them pending; returns them wrapped under
        `master` (24 bytes of `nonces`)."""
    def key_transfer(self, meter: int) -> bytes:
        """The key_transfer parameter (A-XDR) with the pending keys wrapped under the
        meter's KEK (RFC 3394)."""
    def promote_keys(self, meter: int) -> None:
        """Pending keys become current; current become previous."""
    def revert_keys(self, meter: int) -> None:
        """Undoes promote_keys."""
    def drop_keys(self, meter: int, *, pending: bool = False) -> None:
        """Forgets the previous keys (or, with `pending`, the pending ones)."""
    def has_password(self, meter: int) -> bool:
        """Whether meter `meter` has an LLS password."""
    def lls_aarq(self, meter: int, aarq: bytes) -> bytes:
        """Completes an AARQ built for the low-level mechanism (without a value) with the
        meter's password."""
    def mark_unknown(
        self, *, until: int, system_title: bytes | None = None, serial: bytes | None = None
    ) -> None:
        """Remembers, until `until` (Unix seconds), that the store does not know a meter."""
    def serial(self, meter: int) -> str: ...
    def meter_info(self, meter: int) -> tuple[str, str, bytes | None, bool]:
        """(serial, model, system title or None, has keys)."""
    def encipher(
        self,
        meter: int,
        own_title: bytes,
        apdu: bytes,
        *,
        security_control: int = 0x30,
        general: bool = False,
    ) -> bytes:
        """Protects a request to the meter with its keys and the next counter."""
    def decipher(self, meter: int, apdu: bytes) -> bytes:
        """Verifies, decrypts and replay-checks a ciphered APDU from the meter."""
    def hls_response(self, meter: int, own_title: bytes, challenge: bytes) -> bytes:
        """HLS-GMAC pass 3 towards the meter."""
    def verify_hls_response(self, meter: int, challenge: bytes, response: bytes) -> int:
        """HLS-GMAC pass 4: checks the meter's f(challenge); returns its counter."""
    def find(
        self, *, serial: str | None = None, system_title: bytes | None = None
    ) -> int | None: ...
    def counters(self, titles: Sequence[bytes]) -> list[tuple[bytes, int | None, int]]:
        """(system title, last received, next to send) of each title, to persist."""

@final
class Lookup:
    """The session does not know the sender: look the meter up by system title or
    serial (one is set); its APDUs wait meanwhile."""

    __match_args__ = ("system_title", "serial")
    @property
    def system_title(self) -> bytes | None: ...
    @property
    def serial(self) -> bytes | None: ...

@final
class Identified:
    """A directory meter spoke for the first time on this connection."""

    __match_args__ = ("meter", "serial", "source")
    @property
    def meter(self) -> int: ...
    @property
    def serial(self) -> str: ...
    @property
    def source(self) -> int: ...

@final
class ApduIn:
    """An APDU that is not a push (a response to the head-end's request)."""

    __match_args__ = ("source", "meter", "apdu")
    @property
    def source(self) -> int: ...
    @property
    def meter(self) -> int | None: ...
    @property
    def apdu(self) -> bytes: ...

@final
class LinkFrame:
    """An HDLC frame other than UI, with its control byte (info only without APDU)."""

    __match_args__ = ("source", "destination", "control", "info", "byte", "segmented")
    @property
    def source(self) -> int: ...
    @property
    def destination(self) -> int: ...
    @property
    def control(self) -> str: ...
    @property
    def info(self) -> bytes: ...
    @property
    def byte(self) -> int: ...
    @property
    def segmented(self) -> bool: ...

@final
class Reject:
    """Something refused (already counted in the sink's stats)."""

    __match_args__ = ("reason", "message", "meter")
    @property
    def reason(self) -> str: ...
    @property
    def message(self) -> str: ...
    @property
    def meter(self) -> int | None: ...

@final
class RowSink:
    """Rows of the worker's sessions as RowBinary, until drained."""

    def __new__(cls) -> RowSink: ...
    @property
    def empty(self) -> bool: ...
    def drain(self) -> tuple[bytes, int, bytes, int, list[bytes]]:
        """(readings RowBinary, rows, events RowBinary, rows, titles whose counters moved)."""
    def take_stats(self) -> dict[str, Any]:
        """Counts since the last call: pushes, readings, events, rejects by reason."""
    def add_events(self, rows: list[tuple[str, int, int, str, str, str, str, str, int]]) -> None:
        """Appends `events` rows made in Python: (meter, ts, code, name, category,
        source, peer, detail, received_at) each."""
    @staticmethod
    def columns() -> list[tuple[str, list[str]]]:
        """Column order of the RowBinary blocks, per table."""

@final
class Session:
    """One meter connection: bytes in, rows into a RowSink, a few events out."""

    def __new__(
        cls, peer: str, framing: _Framing = "auto", max_apdu: int = 65535, max_pending: int = 64
    ) -> Session: ...
    def feed(
        self, data: bytes, now: int, directory: Directory, sink: RowSink, datagram: bool = False
    ) -> list[Lookup | Identified | ApduIn | LinkFrame | Reject]:
        """Feeds bytes (b"": the peer closed; with `datagram`, one UDP datagram, whose
        bytes beyond its whole frames are refused); returns the events Python must act
        on: Lookup, Identified, ApduIn, LinkFrame (every HDLC frame but UI; an
        I-frame's comes before its APDU), Reject."""
    def retry(
        self, now: int, directory: Directory, sink: RowSink
    ) -> list[Lookup | Identified | ApduIn | LinkFrame | Reject]:
        """Runs the APDUs that waited for a meter lookup again."""
    def bind(self, source: int, meter: int) -> None:
        """Binds a directory meter to link address `source` on this connection (one the
        head-end opened to a listening meter)."""
    @property
    def peer(self) -> str: ...
    @property
    def framing(self) -> _Framing: ...
    @property
    def pending(self) -> int: ...
    @property
    def buffered(self) -> int: ...
    @property
    def stats(self) -> dict[str, Any]: ...

def decode_apdu(apdu: bytes) -> dict[str, Any]:
    """One APDU in its JSON form."""

def encode_apdu(apdu: Mapping[str, Any]) -> bytes:
    """An APDU from its JSON form (bytes accepted wherever hex is)."""

def decode_data(data: bytes) -> dict[str, Any]:
    """One A-XDR value in its JSON form."""

def encode_data(value: Mapping[str, Any]) -> bytes: ...
def decode_frame(
    frame: bytes, framing: Literal["auto", "wrapper", "hdlc", "apdu"] = "auto"
) -> dict[str, Any]:
    """Exactly one frame: {"framing": {...} | None, "apdu": bytes | None, "info": bytes}."""

def decode_hdlc_parameters(info: bytes) -> dict[str, int]: ...
def wrap(apdu: bytes, source_wport: int = 0x0001, destination_wport: int = 0x0001) -> bytes: ...
def hdlc_frame(
    destination: tuple[int, int | None],
    source: tuple[int, int | None],
    control: str,
    info: bytes | None = None,
    *,
    send_seq: int = 0,
    recv_seq: int = 0,
    poll_final: bool = True,
    segmented: bool = False,
) -> bytes: ...
def hdlc_segments(
    destination: tuple[int, int | None],
    source: tuple[int, int | None],
    apdu: bytes,
    *,
    command: bool = True,
    max_info: int = 128,
    send_seq: int = 0,
    recv_seq: int = 0,
) -> list[bytes]:
    """The I-frames carrying one APDU, LLC header added, segmented at ``max_info``."""

def hdlc_parameters(
    *,
    max_info_transmit: int | None = None,
    max_info_receive: int | None = None,
    window_transmit: int | None = None,
    window_receive: int | None = None,
) -> bytes: ...
def encrypt(
    apdu: bytes,
    *,
    ek: bytes,
    ak: bytes,
    system_title: bytes,
    invocation_counter: int,
    security_control: int = 0x30,
    service_specific: bool = False,
) -> bytes:
    """Protects an APDU with explicit keys (general-glo-ciphering by default)."""

def decrypt(
    apdu: bytes,
    *,
    ek: bytes,
    ak: bytes,
    system_title: bytes | None = None,
    require_authentication: bool = True,
) -> dict[str, Any]:
    """Verifies and decrypts with explicit keys, no replay state."""

def hls_gmac(
    challenge: bytes, *, ek: bytes, ak: bytes, system_title: bytes, invocation_counter: int
) -> bytes: ...
def parse_obis(text: str) -> bytes: ...
def format_obis(code: bytes) -> str: ...
def obis_to_int(code: bytes) -> int: ...
def unit_info(code: int) -> tuple[str, str] | None: ...
def scale(value: float, scaler: int) -> float: ...

@final
class ConsumptionJob:
    """How interval consumption is derived (validation, estimation, editing), set once:
    `channels`: (OBIS code, scale to the consumption's unit, that unit, most a consumer
    carries per hour in register units); `states`: OBIS codes of supply-switch
    registers (0 off) whose off periods flag the intervals; `unlimited`: serials with no
    rate limit; `native`: the rows as one block of ClickHouse's Native format instead of
    RowBinary (faster to insert); `native_input`: the readings are Native blocks, one
    reading a row or a series a row (`ts Array(UInt32), value Array(Float64)`)."""

    def __new__(
        cls,
        channels: Sequence[tuple[str, float, str, float]],
        *,
        states: Sequence[str] | None = None,
        unlimited: Sequence[bytes] | None = None,
        native: bool = False,
        native_input: bool = False,
        interval: int = 3600,
        measured_gap: int = 3600,
        max_estimate_span: int = 5356800,
        local_offset: int = 18000,
        future_tolerance: int = 600,
    ) -> ConsumptionJob: ...
    def rows(
        self,
        readings: ReadingSlice | bytes,
        *,
        keep_from: int,
        keep_to: int,
        now: int,
        computed_at_ms: int,
        profiles: Sequence[tuple[bytes, int, Sequence[float]]] | None = None,
        sums: NodeSums | None = None,
        meter_nodes: bytes | None = None,
    ) -> tuple[bytes, dict[str, int]]:
        """`consumption` rows from `readings` (a `ReadingSlice`, or its bytes: `meter
        String, obis UInt64, ts Int64, value Float64`, ordered by meter, obis, ts),
        keeping intervals that start in [keep_from, keep_to); `profiles`: (serial,
        packed OBIS, 24 typical values by local hour) by which gaps are spread; `sums`
        with `meter_nodes` (a Native block of `serial String, node_id String, balance
        UInt8`): the kept intervals of its registers are added to their meters' nodes.
        Runs without the GIL."""

@final
class ReadingSlice:
    """A slice of meters' readings (Native blocks ordered by meter, obis: a reading a
    row, or a series a row; RowBinary rows with `native_input=False`), parsed once
    without the GIL: it names the meters that start after a window's start, end before
    its end, or have gaps, takes the samples on either side of a narrow window in, and
    is what `ConsumptionJob.rows` derives."""

    def __new__(cls, readings: bytes, *, native_input: bool = True) -> ReadingSlice: ...
    @property
    def readings(self) -> int:
        """Readings in the slice."""
    @property
    def series(self) -> int:
        """Series (a meter's register) in the slice."""
    def gappy_meters(
        self, *, channels: Sequence[str], measured_gap: int = 3600, max_estimate_span: int = 5356800
    ) -> list[bytes]:
        """Meters with a series of the `channels` registers that has a gap an estimate
        spreads: the ones whose typical day is worth fetching."""
    def late_starters(self, *, channels: Sequence[str], start: int) -> list[bytes]:
        """Meters with a series of the `channels` registers whose first sample comes
        after `start`."""
    def early_finishers(self, *, channels: Sequence[str], end: int) -> list[bytes]:
        """Meters with a series of the `channels` registers whose last sample comes
        before `end`."""
    def add_earlier(self, earlier: bytes) -> None:
        """Puts the readings of `earlier` (Native blocks ordered by meter, obis) in
        front of their series; a refused block changes nothing. Runs without the GIL."""
    def add_later(self, later: bytes) -> None:
        """Puts the readings of `later` (Native blocks ordered by meter, obis) behind
        their series; a refused block changes nothing. Runs without the GIL."""

@final
class NodeSums:
    """Balance sums gathered by `ConsumptionJob.rows`: per network node (in the order
    given), side (0 the consumers below it, 1 its balance meters) and hour of the window
    from `start`, the consumption of the `obis` registers and how many of its intervals
    were measured."""

    def __new__(
        cls,
        nodes: Sequence[str],
        start: int,
        hours: int,
        obis: Sequence[str],
        prefer: Sequence[tuple[str, str]] | None = None,
    ) -> NodeSums:
        """`prefer`: (fallback, preferred) OBIS pairs; a meter's fallback register
        counts only where it has no preferred one (gas volume, corrected volume)."""
    def arrays(self) -> tuple[bytes, bytes, bytes]:
        """(values, measured, preferred): little-endian float64, uint32 and uint32,
        `[node][side][hour]`; preferred counts intervals of preferred registers."""
    @property
    def unplaced(self) -> int:
        """Series of the registers whose meter has no network node among `nodes`."""
