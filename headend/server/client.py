"""The head-end as DLMS/COSEM client on a meter's own connection.

Meters connect in and push; to read, set or switch them the head-end speaks first on
that same socket, in its framing (wrapper, or HDLC with the link set up by SNRM/UA):
AARQ (HLS-GMAC with ciphered APDUs for keyed meters; LLS with the meter's password,
which only Rust sees, for meters with a password and no keys; else no security),
GET/SET/ACTION (block transfer followed), RLRQ. Responses come
back through the connection's Rust :class:`Session`, which deciphers them with the
meter's keys and checks their invocation counter like any push; they reach a
:class:`MeterClient` as ``("apdu", source, meter, plaintext)`` events.

:func:`execute` runs one job (read, disconnect, reconnect, clock, profile, daily) inside
one association and returns its outcome; the store owns the queue and the audit trail.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from headend import codec
from headend.codec import Directory
from headend.errors import HeadendError

# The management logical device and current association (Green Book 4.4.4).
ASSOCIATION_LN = "0.0.40.0.0.255"
CONTROL_STATES = {0: "disconnected", 1: "connected", 2: "ready-for-reconnection"}


class ClientError(HeadendError):
    """A request to a meter failed; the message says how (refused, timed out, ...).
    `retry`: whether trying again later may succeed (a meter that refused new keys or
    an image will refuse them again; one that did not answer may answer next time)."""

    def __init__(self, message: str, *, retry: bool = True) -> None:
        super().__init__(message)
        self.retry = retry


class Refused(ClientError):
    """The meter answered, and said no (an exception-response, or a result other than
    success): unlike a request lost on the way, it is known not to have acted.
    `result`: the meter's result (``temporary-failure``, ...), when it gave one."""

    def __init__(self, message: str, *, result: str = "") -> None:
        super().__init__(message)
        self.result = result


class WrapperLink:
    """IEC 62056-47: each APDU in one wrapper frame from our wPort to the meter's."""

    framing = "wrapper"

    def __init__(self, send: Callable[[bytes], None], client_address: int, server: int) -> None:
        self._send = send
        self.client = client_address
        self.server = server

    async def open(self) -> None:
        return

    async def send_apdu(self, apdu: bytes) -> None:
        self._send(codec.wrap(apdu, self.client, self.server))

    def on_frame(self, control: str, byte: int, segmented: bool, info: bytes) -> None:
        return

    def fail(self, reason: str) -> None:
        return

    async def close(self) -> None:
        return


class HdlcLink:
    """IEC 62056-46 as the primary station towards one meter's server address: SNRM/UA
    (with the information-field sizes negotiated), numbered I-frames with window 1,
    our APDUs segmented at the meter's receive size (each segment acknowledged by the
    meter's RR), an RR for each segment of the meter's response, DISC at the end.

    The connection's Rust session reassembles the meter's segments and reports every
    frame's control byte (`on_frame`) before the APDU it completes."""

    framing = "hdlc"
    OWN_MAX_INFO = 2030  # the largest information field with 1- to 2-byte addresses

    def __init__(
        self, send: Callable[[bytes], None], client_address: int, server: int, timeout: float
    ) -> None:
        self._send = send
        self.src = (client_address, None)
        lower = server & 0xFFFF
        self.dst = (server >> 16, lower or None)
        self.timeout = timeout
        self.vs = 0
        self.vr = 0
        self.max_tx = 128  # the meter's receive size until its UA says otherwise
        self.connected = False
        self._waiter: asyncio.Future[tuple[str, int, bytes]] | None = None

    def _frame(self, control: str, info: bytes | None = None, **kw: Any) -> bytes:
        return codec.hdlc_frame(self.dst, self.src, control, info, **kw)

    async def _await(
        self, frame: bytes, want: tuple[str, ...], what: str
    ) -> tuple[str, int, bytes]:
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        self._send(frame)
        try:
            got = await asyncio.wait_for(self._waiter, self.timeout)
        except TimeoutError:
            raise ClientError(f"no HDLC answer to {what} within {self.timeout:g} s") from None
        finally:
            self._waiter = None
        if got[0] not in want:
            raise ClientError(f"the meter answered {what} with {got[0]}")
        return got

    async def open(self) -> None:
        params = codec.hdlc_parameters(
            max_info_transmit=self.OWN_MAX_INFO,
            max_info_receive=self.OWN_MAX_INFO,
            window_transmit=1,
            window_receive=1,
        )
        control, _, info = await self._await(
            self._frame("SNRM", params), ("UA", "DM"), "SNRM (link set-up)"
        )
        if control == "DM":
            raise ClientError("the meter refused the HDLC link (DM)")
        p = codec.decode_hdlc_parameters(info) if info else {}
        # The UA gives the meter's own view: what it receives is what we may send.
        self.max_tx = max(32, min(self.OWN_MAX_INFO, int(p.get("max_info_receive", 128))))
        self.vs = self.vr = 0
        self.connected = True

    async def send_apdu(self, apdu: bytes) -> None:
        frames = codec.hdlc_segments(
            self.dst,
            self.src,
            apdu,
            command=True,
            max_info=self.max_tx,
            send_seq=self.vs,
            recv_seq=self.vr,
        )
        for i, frame in enumerate(frames):
            self.vs = (self.vs + 1) & 7
            if i + 1 < len(frames):
                # Window 1: the meter acknowledges each segment with RR before the next.
                await self._await(frame, ("RR",), "a request segment")
            else:
                self._send(frame)

    def on_frame(self, control: str, byte: int, segmented: bool, info: bytes) -> None:
        if control == "I":
            self.vr = ((byte >> 1) + 1) & 7
            if segmented:  # ask for the next segment
                self._send(self._frame("RR", recv_seq=self.vr))
            return
        w = self._waiter
        if w is not None and not w.done():
            w.set_result((control, byte, info))

    def fail(self, reason: str) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_exception(ClientError(reason))

    async def close(self) -> None:
        if not self.connected:
            return
        self.connected = False
        with contextlib.suppress(ClientError):
            await self._await(self._frame("DISC"), ("UA", "DM"), "DISC")


Link = WrapperLink | HdlcLink


class MeterClient:
    """Requests to one meter (at link address `source`) on one connection.

    One request is outstanding at a time, as a DLMS client does on one association.
    """

    def __init__(
        self,
        *,
        directory: Directory,
        meter: int,
        source: int,
        link: Link,
        own_title: bytes,
        timeout: float,
        touched: Callable[[bytes], None],
    ) -> None:
        self.directory = directory
        self.meter = meter
        self.source = source
        self.link = link
        self.own_title = own_title
        self.timeout = timeout
        self._touched = touched
        serial, model, title, keyed = directory.meter_info(meter)
        self.serial = serial
        self.model = model
        self.title = title
        self.keyed = keyed
        self.ciphered = False
        self.mechanism = "lowest"
        self._invoke = 0
        self._waiter: asyncio.Future[bytes] | None = None
        self.requests = 0

    # -- the link ---------------------------------------------------------------------

    def deliver(self, apdu: bytes) -> bool:
        """A response from the meter; False when nothing waits for one."""
        w = self._waiter
        if w is None or w.done():
            return False
        w.set_result(apdu)
        return True

    def fail(self, reason: str) -> None:
        self.link.fail(reason)
        w = self._waiter
        if w is not None and not w.done():
            w.set_exception(ClientError(reason))

    async def _exchange(self, apdu: bytes) -> bytes:
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        self.requests += 1
        try:
            await self.link.send_apdu(apdu)
            return await asyncio.wait_for(self._waiter, self.timeout)
        except TimeoutError:
            raise ClientError(
                f"no response from meter {self.serial} within {self.timeout:g} s"
            ) from None
        finally:
            self._waiter = None

    def _seal(self, apdu: bytes) -> bytes:
        """Ciphers with the meter's keys; the counter that moved is persisted."""
        out = self.directory.encipher(self.meter, self.own_title, apdu)
        if self.title is not None:
            self._touched(self.title)
        return out

    def _protect(self, apdu: bytes) -> bytes:
        return self._seal(apdu) if self.ciphered else apdu

    async def request(self, apdu: bytes) -> dict[str, Any]:
        """Sends a request (ciphered inside a ciphered association) and decodes the
        response; an exception-response raises :class:`ClientError`."""
        r = codec.decode_apdu(await self._exchange(self._protect(apdu)))
        if r.get("apdu") == "exception-response":
            raise Refused(
                f"meter {self.serial} answered with an exception: "
                f"{r.get('state_error')}, {r.get('service_error')}"
            )
        return r

    def _next_invoke(self) -> int:
        self._invoke = (self._invoke + 1) % 16
        return self._invoke

    # -- association --------------------------------------------------------------------

    async def associate(self, max_pdu: int = 0xFFFF) -> dict[str, Any]:
        """The link (HDLC: SNRM/UA), then AARQ: HLS-GMAC with ciphering for keyed
        meters, LLS for meters with only a password, lowest level otherwise."""
        self.ciphered = False
        await self.link.open()
        init = codec.initiate_request(max_pdu=max_pdu)
        hls = self.keyed and self.title is not None
        lls = not hls and self.directory.has_password(self.meter)
        self.mechanism = "hls-gmac" if hls else "lls" if lls else "lowest"
        ctos = os.urandom(16)
        if hls:
            init = self._seal(init)
        aarq = codec.aarq(
            user_information=init,
            ciphered=hls,
            mechanism="high-gmac" if hls else "low" if lls else None,
            authentication_value=ctos if hls else b"" if lls else None,
            calling_title=self.own_title if hls else None,
        )
        if lls:  # the password is put in by Rust
            aarq = self.directory.lls_aarq(self.meter, aarq)
        aare = codec.decode_apdu(await self._exchange(aarq))
        if aare.get("apdu") != "aare":
            raise ClientError(f"meter {self.serial} answered the AARQ with {aare.get('apdu')}")
        if aare["result"] != "accepted":
            detail = ""
            ui = aare.get("user_information")
            if isinstance(ui, dict) and ui.get("apdu") == "confirmed-service-error":
                detail = ", " + ", ".join(f"{k} {v}" for k, v in ui.items() if k != "apdu")
            raise ClientError(
                f"meter {self.serial} refused the association: {aare['result']}, "
                f"diagnostic {aare.get('diagnostic')}{detail}"
            )
        if not hls:
            return aare
        ui = codec.encode_apdu(aare["user_information"])
        try:
            plain = self.directory.decipher(self.meter, ui)
        except HeadendError as e:
            raise ClientError(f"meter {self.serial}'s association response: {e}") from None
        aare["user_information"] = codec.decode_apdu(plain)
        self.ciphered = True
        stoc = bytes.fromhex(aare.get("responding_authentication_value") or "")
        if not stoc:
            raise ClientError(f"meter {self.serial} sent no HLS challenge")
        f_stoc = self.directory.hls_response(self.meter, self.own_title, stoc)
        r = await self.request(
            codec.action_request(
                15,
                ASSOCIATION_LN,
                1,
                codec.data("octet-string", f_stoc.hex()),
                invoke=self._next_invoke(),
            )
        )
        outcome = r["response"]
        if outcome["result"] != "success":
            raise ClientError(
                f"meter {self.serial} refused HLS authentication (pass 3): {outcome['result']}"
            )
        try:
            f_ctos = bytes.fromhex(outcome["return_parameters"]["data"]["value"])
            self.directory.verify_hls_response(self.meter, ctos, f_ctos)
        except (KeyError, TypeError, ValueError, HeadendError) as e:
            raise ClientError(
                f"meter {self.serial} failed HLS authentication (pass 4): {e}"
            ) from None
        return aare

    @contextlib.asynccontextmanager
    async def associated(self) -> AsyncIterator[None]:
        """One association for the work inside: the link closed again if the AARQ
        fails, released (RLRQ, link closed) however the work ends."""
        try:
            await self.associate()
        except ClientError:
            await self.link.close()
            raise
        try:
            yield
        finally:
            await self.release()

    async def release(self) -> None:
        self.ciphered = False
        with contextlib.suppress(ClientError):
            await self._exchange(codec.rlrq())
        await self.link.close()

    # -- services -------------------------------------------------------------------------

    async def get(self, class_id: int, obis: str, attribute: int, access: Any = None) -> Any:
        """The attribute's value in the JSON form, following block transfer."""
        inv = self._next_invoke()
        r = await self.request(
            codec.get_request(class_id, obis, attribute, invoke=inv, access=access)
        )
        what = f"{class_id}/{obis}/{attribute}"
        if r.get("apdu") != "get-response":
            raise ClientError(f"GET {what}: unexpected {r.get('apdu')}")
        if r["kind"] == "normal":
            res = r["result"]
            if "data" not in res:
                raise ClientError(f"GET {what} refused: {res.get('data-access-result')}")
            return res["data"]
        raw = b""
        while True:
            block = r["block"]
            if "data-access-result" in block["result"]:
                raise ClientError(f"GET {what} refused: {block['result']['data-access-result']}")
            raw += bytes.fromhex(block["result"]["raw-data"])
            if block["last_block"]:
                return codec.decode_data(raw)
            r = await self.request(codec.get_request_next(block["block_number"], invoke=inv))

    async def set(self, class_id: int, obis: str, attribute: int, value: Any) -> None:
        r = await self.request(
            codec.set_request(class_id, obis, attribute, value, invoke=self._next_invoke())
        )
        if r.get("result") != "success":
            raise ClientError(f"SET {class_id}/{obis}/{attribute} refused: {r.get('result')}")

    async def action(self, class_id: int, obis: str, method: int, param: Any = None) -> None:
        r = await self.request(
            codec.action_request(
                class_id,
                obis,
                method,
                param if param is not None else codec.data("integer", 0),
                invoke=self._next_invoke(),
            )
        )
        result = r["response"]["result"]
        if result != "success":
            raise Refused(f"ACTION {class_id}/{obis}/{method} refused: {result}", result=result)


# -- jobs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class MeterClock:
    """How a model's clock states local time (its profile): the deviation in its own
    sign convention, and whether that convention is reversed."""

    deviation: int = -300
    reversed_sign: bool = False

    @classmethod
    def of(cls, model: dict[str, Any]) -> MeterClock:
        return cls(
            int(model.get("default_deviation", -300)), model.get("deviation_sign") == "reversed"
        )

    @property
    def zone(self) -> dt.timezone:
        minutes = self.deviation if self.reversed_sign else -self.deviation
        return dt.timezone(dt.timedelta(minutes=minutes))

    def parse(self, value: Any) -> dt.datetime:
        return clock_value(value, self.reversed_sign, self.deviation)


def clock_value(
    value: Any, reversed_sign: bool = False, default_deviation: int = -300
) -> dt.datetime:
    """A COSEM date-time (octet-string or date-time JSON) as an aware datetime; a
    clock that does not say its deviation is read at the model's
    `default_deviation`, as pushes are."""
    if value.get("type") == "octet-string":
        value = codec.decode_data(b"\x19" + bytes.fromhex(value["value"]))
    d = value["value"]
    dev = d.get("deviation")
    if dev is None:
        dev = default_deviation
    minutes = dev if reversed_sign else -dev
    return dt.datetime.fromisoformat(d["iso"]).replace(
        tzinfo=dt.timezone(dt.timedelta(minutes=minutes))
    )


def _obis_text(v: Any) -> str:
    return codec.format_obis(bytes.fromhex(v["value"]))


async def _switch(c: MeterClient, obj: str, on: bool) -> dict[str, Any]:
    await c.action(70, obj, 2 if on else 1)
    output = await c.get(70, obj, 2)
    state = await c.get(70, obj, 3)
    out = {
        "output_state": bool(output.get("value")),
        "control_state": CONTROL_STATES.get(state.get("value"), str(state.get("value"))),
    }
    ok = out["output_state"] if on else not out["output_state"]
    if on and not ok and out["control_state"] == "ready-for-reconnection":
        ok = True  # the consumer completes it with the meter's button
    if not ok:
        raise ClientError(
            f"{'reconnect' if on else 'disconnect'} not verified: output_state "
            f"{out['output_state']}, control_state {out['control_state']}"
        )
    return out


async def _clock(c: MeterClient, obj: str, threshold: float, clock: MeterClock) -> dict[str, Any]:
    before = clock.parse(await c.get(8, obj, 2))
    now = dt.datetime.now(dt.UTC)
    drift = (before - now).total_seconds()
    out: dict[str, Any] = {"drift_s": round(drift, 1), "corrected": False}
    if abs(drift) > threshold:
        local = dt.datetime.now(clock.zone).replace(microsecond=0)
        await c.set(8, obj, 2, codec.date_time(local, deviation=clock.deviation))
        after = clock.parse(await c.get(8, obj, 2))
        out["corrected"] = True
        out["drift_after_s"] = round((after - dt.datetime.now(dt.UTC)).total_seconds(), 1)
        if abs(out["drift_after_s"]) > threshold:
            raise ClientError(f"clock set but still {out['drift_after_s']} s off")
    return out


async def _columns(c: MeterClient, obj: str) -> list[tuple[int, str]]:
    """A profile generic's capture objects as (class, OBIS)."""
    captured = (await c.get(7, obj, 3))["value"]
    return [(int(col["value"][0]["value"]), _obis_text(col["value"][1])) for col in captured]


def scaled(value: float, scaler: int) -> float:
    """A register's value times 10^scaler by the same Rust code that scales pushes
    (`value * 10.0 ** scaler` would store 2301 at scaler -1 as 230.10000000000002
    where a push stores 230.1)."""
    return codec.scale(float(value), scaler)


async def _scaler_unit(c: MeterClient, cls: int, obis: str) -> tuple[int, str]:
    su = (await c.get(cls, obis, 3))["value"]
    info = codec.unit_info(int(su[1]["value"]))
    return int(su[0]["value"]), info[0] if info else ""


async def _entries(c: MeterClient, obj: str, start: int, end: int, clock: MeterClock) -> list[Any]:
    """A profile generic's buffer entries with clock in [start, end]."""
    access = codec.range_descriptor(
        dt.datetime.fromtimestamp(start, clock.zone), dt.datetime.fromtimestamp(end, clock.zone)
    )
    return list((await c.get(7, obj, 2, access=access))["value"])


async def _profile(
    c: MeterClient, obj: str, start: int, end: int, clock: MeterClock
) -> dict[str, Any]:
    """Load-profile entries with clock in [start, end] as readings rows
    [obis, ts, value, unit, status], scaled by the registers' own scaler_unit."""
    columns = await _columns(c, obj)
    scalers: dict[int, tuple[int, str]] = {}
    for i, (cls, obis) in enumerate(columns):
        if cls in (3, 4):
            scalers[i] = await _scaler_unit(c, cls, obis)
    entries = await _entries(c, obj, start, end, clock)
    clock_i = next((i for i, (cls, _) in enumerate(columns) if cls == 8), None)
    status_i = next(
        (i for i, (cls, o) in enumerate(columns) if cls == 1 and o.startswith("0.0.96.10.")), None
    )
    if clock_i is None:
        raise ClientError(f"load profile {obj} of meter {c.serial} has no clock column")
    rows: list[list[Any]] = []
    for e in entries:
        values = e["value"]
        ts = int(clock.parse(values[clock_i]).timestamp())
        status = int(values[status_i]["value"]) if status_i is not None else 0
        for i, (scaler, unit) in scalers.items():
            v = values[i].get("value")
            if not isinstance(v, int | float):
                continue
            rows.append([columns[i][1], ts, scaled(v, scaler), unit, status & 0xFF])
    return {"entries": len(entries), "rows": rows}


async def _registers(
    c: MeterClient, obises: list[str], clock_obj: str, clock: MeterClock
) -> list[list[Any]]:
    """Billing registers now, as readings rows stamped with the meter's own clock."""
    ts = int(clock.parse(await c.get(8, clock_obj, 2)).timestamp())
    rows: list[list[Any]] = []
    for obis in obises:
        scaler, unit = await _scaler_unit(c, 3, obis)
        v = (await c.get(3, obis, 2))["value"]
        if isinstance(v, int | float):
            rows.append([obis, ts, scaled(v, scaler), unit, 0])
    return rows


async def _event_log(
    c: MeterClient, obj: str, start: int, end: int, clock: MeterClock
) -> list[list[int]]:
    """The event log's entries with clock in [start, end] as [ts, code]."""
    columns = await _columns(c, obj)
    clock_i = next((i for i, (cls, _) in enumerate(columns) if cls == 8), None)
    code_i = next((i for i, (cls, _) in enumerate(columns) if cls != 8), None)
    if clock_i is None or code_i is None:
        raise ClientError(f"event log {obj} of meter {c.serial} lacks a clock or a code column")
    return [
        [int(clock.parse(e["value"][clock_i]).timestamp()), int(e["value"][code_i]["value"])]
        for e in await _entries(c, obj, start, end, clock)
    ]


async def _daily(
    c: MeterClient, objects: dict[str, str], model: dict[str, Any], args: dict[str, Any]
) -> dict[str, Any]:
    """The daily read in one association: the billing registers, the load profile since
    `profile_from`, the event log since `events_from` (each where the model has it)."""
    clock = MeterClock.of(model)
    until = int(args.get("to") or time.time())
    registers = [o.strip() for o in objects.get("billing_registers", "").split(",")]
    rows = await _registers(
        c, [o for o in registers if o], objects.get("clock", codec.CLOCK), clock
    )
    out: dict[str, Any] = {"registers": len(rows), "entries": 0, "events": []}
    if objects.get("load_profile") and args.get("profile_from") is not None:
        p = await _profile(c, objects["load_profile"], int(args["profile_from"]), until, clock)
        rows.extend(p["rows"])
        out["entries"] = p["entries"]
    if objects.get("event_log") and args.get("events_from") is not None:
        names = {
            int(e["code"]): (e["name"], e.get("category", "")) for e in model.get("events", [])
        }
        out["events"] = [
            [ts, code, *names.get(code, (f"event-{code}", ""))]
            for ts, code in await _event_log(
                c, objects["event_log"], int(args["events_from"]), until, clock
            )
        ]
    out["rows"] = rows
    return out


async def execute(
    c: MeterClient, job: dict[str, Any], objects: dict[str, str], model: dict[str, Any]
) -> dict[str, Any]:
    """Runs `job` in one association; returns its result or raises ClientError."""
    kind = job["kind"]
    args = job.get("args") or {}
    async with c.associated():
        if kind == "read":
            values = []
            for cls, obis, attr in args["objects"]:
                try:
                    values.append({"value": await c.get(int(cls), str(obis), int(attr))})
                except ClientError as e:
                    values.append({"error": str(e)})
            return {"values": values}
        if kind in ("disconnect", "reconnect"):
            obj = objects.get("disconnect_control") or objects.get("valve_control")
            if not obj:
                raise ClientError(f"model {c.model} has no disconnect control or valve")
            return await _switch(c, obj, kind == "reconnect")
        if kind == "clock":
            threshold = float(args.get("threshold", 0.0))
            return await _clock(
                c, objects.get("clock", codec.CLOCK), threshold, MeterClock.of(model)
            )
        if kind == "daily":
            return await _daily(c, objects, model, args)
        if kind == "profile":
            obj = objects.get("load_profile")
            if not obj:
                raise ClientError(f"model {c.model} has no load profile")
            return await _profile(c, obj, int(args["from"]), int(args["to"]), MeterClock.of(model))
        raise ClientError(f"unknown job kind {kind!r}")
