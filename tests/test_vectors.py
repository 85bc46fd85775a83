"""Every public known-answer vector through the Python API, fed whole, byte by byte and
with trailing bytes."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from conftest import ROOT, VECTORS, feeds, h

from headend import codec
from headend.errors import AuthenticationFailed


def test_vector_file_is_the_public_set() -> None:
    shared = ROOT.parent / "shared" / "vectors" / "public-vectors.json"
    ours = VECTORS.read_bytes()
    if shared.exists():
        assert ours == shared.read_bytes()
    # The copy in the repository is byte for byte the public set it was taken from (CI
    # has no ../shared, so the digest stands in for the comparison there).
    assert hashlib.sha256(ours).hexdigest() == (
        "5aff9dfb7dc9702dbf7569bce8ef1c1e553541347c8494271eb988e5560e4f6c"
    )


def test_hls_gmac_pass_3_and_4(vectors: dict[str, Any]) -> None:
    v = vectors["green-book-hls-gmac"]
    ek, ak = h(v["ek"]), h(v["ak"])
    client, server = h(v["client_system_title"]), h(v["server_system_title"])
    f_stoc = codec.hls_gmac(
        h(v["challenge_server_to_client"]),
        ek=ek,
        ak=ak,
        system_title=client,
        invocation_counter=int(v["client_invocation_counter"], 16),
    )
    assert f_stoc == h(v["expect"]["client_reply_f_StoC"])
    f_ctos = codec.hls_gmac(
        h(v["challenge_client_to_server"]),
        ek=ek,
        ak=ak,
        system_title=server,
        invocation_counter=int(v["server_invocation_counter"], 16),
    )
    assert f_ctos == h(v["expect"]["server_reply_f_CtoS"])
    # A client holding the meter's keys verifies the meter's pass-4 answer.
    keys = codec.KeyTable()
    keys.set_keys(server, ek, ak)
    assert keys.verify_hls_response(server, h(v["challenge_client_to_server"]), f_ctos) == int(
        v["server_invocation_counter"], 16
    )
    with pytest.raises(AuthenticationFailed, match=r"^authentication failed$"):
        keys.verify_hls_response(server, h(v["challenge_server_to_client"]), f_ctos)


def test_glo_get_request(vectors: dict[str, Any]) -> None:
    v = vectors["green-book-glo-get-request"]
    ek, ak, st = h(v["ek"]), h(v["ak"]), h(v["system_title"])
    plain, want = h(v["plain_apdu"]), h(v["expect"]["glo_get_request"])
    ic = int(v["invocation_counter"], 16)
    got = codec.encrypt(
        plain, ek=ek, ak=ak, system_title=st, invocation_counter=ic, service_specific=True
    )
    assert got == want
    d = codec.decrypt(want, ek=ek, ak=ak, system_title=st)
    assert d["plaintext"] == plain
    assert d["invocation_counter"] == ic
    assert d["security_control"] == 0x30
    req = codec.decode_apdu(plain)
    assert req["apdu"] == "get-request"
    assert req["attribute"] == {"class_id": 8, "instance_id": "0.0.1.0.0.255", "attribute_id": 2}


def test_ciphered_aarq_built_and_parsed(vectors: dict[str, Any]) -> None:
    v = vectors["green-book-ciphered-aarq"]
    ek, ak, st = h(v["ek"]), h(v["ak"]), h(v["system_title"])
    e = v["expect"]
    plain = h(v["plain_initiate_request"])
    ir = codec.decode_apdu(plain)
    fields = e["initiate_request_fields"]
    assert ir["dedicated_key"] == fields["dedicated_key"]
    assert ir["proposed_dlms_version"] == fields["dlms_version"]
    assert ir["proposed_conformance"]["hex"] == fields["conformance"]
    assert ir["client_max_receive_pdu_size"] == fields["client_max_receive_pdu_size"]
    # Our own InitiateRequest builder produces the same bytes.
    assert (
        codec.initiate_request(
            max_pdu=1200,
            dedicated_key=h(fields["dedicated_key"]),
            conformance=ir["proposed_conformance"]["services"],
        )
        == plain
    )
    glo = codec.encrypt(
        plain,
        ek=ek,
        ak=ak,
        system_title=st,
        invocation_counter=int(v["invocation_counter"], 16),
        service_specific=True,
    )
    assert glo == h(e["glo_initiate_request"])
    # And the AARQ builder wraps it exactly as the Green Book does.
    aarq = codec.aarq(
        user_information=glo,
        ciphered=True,
        mechanism="low",
        authentication_value=b"12345678",
        calling_title=st,
    )
    assert aarq == h(e["aarq"])
    parsed = codec.decode_apdu(aarq)
    assert parsed["application_context"] == "logical-name-with-ciphering"
    assert parsed["mechanism_name"] == "low"
    assert bytes.fromhex(parsed["calling_authentication_value"]) == b"12345678"
    assert codec.encode_apdu(parsed) == aarq


def test_real_encrypted_push(vectors: dict[str, Any]) -> None:
    v = vectors["encrypted-push-udp-wrapper"]
    e = v["expect"]
    frame = h(v["frame"])
    keys = codec.KeyTable()
    keys.set_keys(h(e["system_title"]), h(v["ek"]), h(v["ak"]))
    for chunks in feeds(frame + b"\x00\x01\x00"):  # trailing bytes: a header's beginning
        stream = codec.StreamDecoder()
        events = [ev for c in chunks for ev in stream.feed(c)]
        frames = [ev for ev in events if isinstance(ev, codec.Frame)]
        assert len(frames) == 1, events
        f = frames[0]
        assert (f.framing, f.source, f.destination) == ("wrapper", 1, 1)
        assert f.wire_len == len(frame)
        assert f.apdu is not None
        assert stream.pending == 3
    assert f.apdu is not None
    st, sc, ic, plain = keys.decipher(f.apdu)
    assert (st, sc, ic) == (h(e["system_title"]), 0x30, e["invocation_counter"])
    assert plain == h(e["plaintext"])
    dn = codec.decode_apdu(plain)
    assert dn["apdu"] == "data-notification"
    assert dn["long_invoke_id"]["invoke_id"] == e["data_notification"]["long_invoke_id"]
    assert dn["date_time"] is None
    assert dn["body"]["type"] == "octet-string"
    assert len(bytes.fromhex(dn["body"]["value"])) == 34

    # The batch path agrees: one push with one octet-string leaf of 34 bytes.
    keys2 = codec.KeyTable()
    keys2.set_keys(h(e["system_title"]), h(v["ek"]), h(v["ak"]))
    batch = codec.PushDecoder().decode(keys2, frame)
    assert len(batch) == 1
    assert batch.errors() == []
    rows = batch.rows()
    assert len(rows) == 1
    assert rows[0][1] == h(e["system_title"])
    assert rows[0][2] == 485
    assert rows[0][4] == "octet-string"
    assert rows[0][6] is not None
    assert len(rows[0][6]) == 34


def test_every_vector_apdu_through_both_framings(vectors: dict[str, Any]) -> None:
    """Each vector APDU, framed as a wrapper frame and as HDLC I-frames (segmented at 32
    bytes), fed whole, byte by byte and unevenly, with trailing bytes after it."""
    apdus = [
        h(vectors["green-book-glo-get-request"]["expect"]["glo_get_request"]),
        h(vectors["green-book-glo-get-request"]["plain_apdu"]),
        h(vectors["green-book-ciphered-aarq"]["expect"]["aarq"]),
        h(vectors["green-book-ciphered-aarq"]["plain_initiate_request"]),
        h(vectors["encrypted-push-udp-wrapper"]["frame"])[8:],
    ]
    for apdu in apdus:
        framed = {
            "wrapper": codec.wrap(apdu, 0x10, 0x01) + b"\x00\x01",
            "hdlc": b"".join(codec.hdlc_segments((1, 17), (0x10, None), apdu, max_info=32))
            + b"\x7e\xa0",
        }
        for framing, data in framed.items():
            for chunks in feeds(data):
                stream = codec.StreamDecoder()
                events = [ev for c in chunks for ev in stream.feed(c)]
                got = [e.apdu for e in events if isinstance(e, codec.Frame) and e.apdu]
                assert got == [apdu], (framing, events)
                assert stream.pending == 2
                assert codec.encode_apdu(codec.decode_apdu(apdu)) == apdu
