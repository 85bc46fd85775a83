"""The head-end's side of one simulated meter's connection, for tests: a blocking
DLMS/COSEM client over the wrapper or HDLC, built only from ``headend.codec``.

It accepts the connection the simulator opens, associates (lowest, LLS or HLS-GMAC,
plain or ciphered), sends GET/SET/ACTION requests and collects block transfers.
Pushes that arrive meanwhile are kept in ``pushes`` (deciphered when keys are known).
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from headend import codec

CLIENT_TITLE = b"HEADEND1"
PUBLIC_CLIENT = 0x10
MANAGEMENT_CLIENT = 0x01
PUSH_TAGS = {0x0F, 0xC2}


class PeerError(AssertionError):
    pass


@dataclass
class Peer:
    sock: socket.socket
    framing: str = "wrapper"
    meter_address: int = 1  # wPort, or HDLC lower address (upper 1)
    client: int = PUBLIC_CLIENT
    keys: codec.KeyTable | None = None
    meter_title: bytes | None = None
    ciphered: bool = False
    general: bool = False
    pushes: list[dict[str, Any]] = field(default_factory=list)
    raw_pushes: list[bytes] = field(default_factory=list)
    _decoder: Any = None
    _vs: int = 0
    _vr: int = 0
    _frames: list[Any] = field(default_factory=list)
    _invoke: int = 0

    def __post_init__(self) -> None:
        self._decoder = codec.StreamDecoder(self.framing)
        self.sock.settimeout(10.0)

    # -- framing ------------------------------------------------------------------

    def _server_address(self) -> tuple[int, int | None]:
        return (1, self.meter_address)

    def send_apdu(self, apdu: bytes) -> None:
        if self.framing == "wrapper":
            self.sock.sendall(codec.wrap(apdu, self.client, self.meter_address))
            return
        frame = codec.hdlc_frame(
            self._server_address(),
            (self.client, None),
            "I",
            b"\xe6\xe6\x00" + apdu,
            send_seq=self._vs,
            recv_seq=self._vr,
        )
        self._vs = (self._vs + 1) % 8
        self.sock.sendall(frame)

    def hdlc_connect(self, max_info: int = 128) -> dict[str, int]:
        params = codec.hdlc_parameters(max_info_transmit=max_info, max_info_receive=max_info)
        self.sock.sendall(
            codec.hdlc_frame(self._server_address(), (self.client, None), "SNRM", params)
        )
        f = self._next_frame()
        if f.control != "UA":
            raise PeerError(f"SNRM answered with {f.control}")
        self._vs = self._vr = 0
        return codec.decode_hdlc_parameters(f.info)

    def hdlc_disconnect(self) -> str:
        self.sock.sendall(codec.hdlc_frame(self._server_address(), (self.client, None), "DISC"))
        return str(self._next_frame().control)

    def _next_frame(self) -> Any:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            self._frames.extend(self._decoder.events())
            while self._frames:
                ev = self._frames.pop(0)
                if isinstance(ev, codec.FrameError):
                    raise PeerError(f"bad frame from the meter: {ev.message}")
                if ev.framing == "hdlc" and ev.control == "UI":
                    self._keep_push(ev.apdu)
                    continue
                return ev
            data = self.sock.recv(65536)
            if not data:
                raise PeerError("meter closed the connection")
            self._decoder.receive(data)
        raise PeerError("no frame from the meter within 10 s")

    def recv_apdu(self) -> bytes:
        """The next response APDU (pushes in between are kept aside)."""
        while True:
            f = self._next_frame()
            if self.framing == "hdlc":
                if f.control == "I":
                    self._vr = (self._vr + 1) % 8
                    if f.segmented:
                        self.sock.sendall(
                            codec.hdlc_frame(
                                self._server_address(), (self.client, None), "RR", recv_seq=self._vr
                            )
                        )
                        continue
                elif f.control in ("RR", "RNR"):
                    continue
                else:
                    raise PeerError(f"unexpected HDLC {f.control}")
            apdu = f.apdu
            if apdu is None:
                continue
            if self._is_push(apdu):
                self._keep_push(apdu)
                continue
            return bytes(apdu)

    def _is_push(self, apdu: bytes) -> bool:
        if apdu[0] in PUSH_TAGS:
            return True
        # Meters push in general-glo-ciphering; responses come that way only when the
        # request did.
        return apdu[0] == 0xDB and not (self.ciphered and self.general)

    def _keep_push(self, apdu: bytes | None) -> None:
        if apdu is None:
            return
        self.raw_pushes.append(apdu)
        if apdu[0] == 0xDB:
            if self.keys is None:
                return
            _, _, _, apdu = self.keys.decipher(apdu, self.meter_title)
        self.pushes.append(codec.decode_apdu(apdu))

    # -- xDLMS ----------------------------------------------------------------------

    def protect(self, apdu: bytes) -> bytes:
        if not self.ciphered:
            return apdu
        assert self.keys is not None
        assert self.meter_title is not None
        return self.keys.encipher(self.meter_title, CLIENT_TITLE, apdu, general=self.general)

    def open(self, apdu: bytes) -> dict[str, Any]:
        if self.ciphered and apdu[0] not in (0xD8,):
            assert self.keys is not None
            _, _, _, apdu = self.keys.decipher(apdu, self.meter_title)
        return codec.decode_apdu(apdu)

    def request(self, apdu: bytes) -> dict[str, Any]:
        self.send_apdu(self.protect(apdu))
        return self.open(self.recv_apdu())

    def next_invoke(self) -> int:
        self._invoke = (self._invoke + 1) % 16
        return self._invoke

    def associate(
        self,
        *,
        mechanism: str | None = None,
        password: bytes | None = None,
        ciphered: bool = False,
        max_pdu: int = 0xFFFF,
    ) -> dict[str, Any]:
        """AARQ; for HLS also pass 3/4. Returns the AARE in its JSON form."""
        self.ciphered = False
        init = codec.initiate_request(max_pdu=max_pdu)
        ctos = os.urandom(16)
        if ciphered:
            assert self.keys is not None
            assert self.meter_title is not None
            init = self.keys.encipher(self.meter_title, CLIENT_TITLE, init)
        auth = password if mechanism == "low" else ctos if mechanism == "high-gmac" else None
        aarq = codec.aarq(
            user_information=init,
            ciphered=ciphered,
            mechanism=mechanism,
            authentication_value=auth,
            calling_title=CLIENT_TITLE if (ciphered or mechanism == "high-gmac") else None,
        )
        self.send_apdu(aarq)
        aare = codec.decode_apdu(self.recv_apdu())
        if aare["result"] != "accepted":
            return aare
        self.ciphered = ciphered
        if ciphered:
            assert self.keys is not None
            ui = codec.encode_apdu(aare["user_information"])
            _, _, _, plain = self.keys.decipher(ui, self.meter_title)
            aare["user_information"] = codec.decode_apdu(plain)
        if mechanism == "high-gmac":
            assert self.keys is not None
            assert self.meter_title is not None
            stoc = bytes.fromhex(aare["responding_authentication_value"])
            f_stoc = self.keys.hls_response(self.meter_title, CLIENT_TITLE, stoc)
            r = self.request(
                codec.action_request(
                    15, "0.0.40.0.0.255", 1, codec.data("octet-string", f_stoc.hex())
                )
            )
            outcome = r["response"]
            if outcome["result"] != "success":
                raise PeerError(f"HLS pass 3 refused: {outcome}")
            f_ctos = bytes.fromhex(outcome["return_parameters"]["data"]["value"])
            self.keys.verify_hls_response(self.meter_title, ctos, f_ctos)
        return aare

    def release(self) -> dict[str, Any]:
        self.send_apdu(codec.rlrq())
        self.ciphered = False
        return codec.decode_apdu(self.recv_apdu())

    def get(self, class_id: int, obis: str, attribute: int, access: Any = None) -> Any:
        """The attribute's value (JSON form), following block transfer; a
        data-access-result comes back as {"error": name}."""
        inv = self.next_invoke()
        r = self.request(codec.get_request(class_id, obis, attribute, invoke=inv, access=access))
        if r["apdu"] == "exception-response":
            return {"exception": r}
        if r["kind"] == "normal":
            res = r["result"]
            return res["data"] if "data" in res else {"error": res["data-access-result"]}
        raw = b""
        self.blocks = 0
        while True:
            block = r["block"]
            if "data-access-result" in block["result"]:
                return {"error": block["result"]["data-access-result"]}
            raw += bytes.fromhex(block["result"]["raw-data"])
            self.blocks += 1
            if block["last_block"]:
                return codec.decode_data(raw)
            r = self.request(codec.get_request_next(block["block_number"], invoke=inv))

    def set(self, class_id: int, obis: str, attribute: int, value: Any) -> str:
        r = self.request(
            codec.set_request(class_id, obis, attribute, value, invoke=self.next_invoke())
        )
        return str(r["result"])

    def action(self, class_id: int, obis: str, method: int, param: Any = None) -> str:
        r = self.request(
            codec.action_request(
                class_id,
                obis,
                method,
                param if param is not None else codec.data("integer", 0),
                invoke=self.next_invoke(),
            )
        )
        return str(r["response"]["result"])


def accept(server: socket.socket, timeout: float = 20.0) -> socket.socket:
    server.settimeout(timeout)
    conn, _ = server.accept()
    return conn
