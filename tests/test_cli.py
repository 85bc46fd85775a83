"""``headend decode`` as a field engineer runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from conftest import h

from headend import codec

GB_EK = "000102030405060708090A0B0C0D0E0F"
GB_AK = "D0D1D2D3D4D5D6D7D8D9DADBDCDDDEDF"


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "headend", "decode", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_encrypted_push_with_keys(vectors: dict[str, Any]) -> None:
    v = vectors["encrypted-push-udp-wrapper"]
    r = run(v["frame"].replace(" ", ""), "--ek", v["ek"], "--ak", v["ak"])
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["framing"]["type"] == "wrapper"
    assert out["framing"]["length"] == 70
    apdu = out["apdu"]
    assert apdu["cipher"] == "general-glo-ciphering"
    assert apdu["system_title"] == "2F19229199164103"
    d = apdu["deciphered"]
    assert d["invocation_counter"] == 485
    assert d["apdu"]["apdu"] == "data-notification"
    assert d["apdu"]["long_invoke_id"]["invoke_id"] == 475
    # Keys are never echoed.
    assert v["ek"] not in r.stdout
    assert v["ek"] not in r.stderr


def test_ciphered_without_keys_says_so(vectors: dict[str, Any]) -> None:
    r = run(vectors["encrypted-push-udp-wrapper"]["frame"].replace(" ", ""))
    assert r.returncode == 0
    assert "give --ek and --ak" in json.loads(r.stdout)["apdu"]["note"]


def test_wrong_key_is_a_one_line_error(vectors: dict[str, Any]) -> None:
    v = vectors["encrypted-push-udp-wrapper"]
    r = run(v["frame"].replace(" ", ""), "--ek", "00" * 16, "--ak", v["ak"])
    assert r.returncode == 1
    assert r.stdout == ""
    assert r.stderr == "error: authentication failed\n"


def test_malformed_frame_is_a_one_line_error() -> None:
    r = run("000200010001000100")
    assert r.returncode == 1
    assert r.stderr.strip() == (
        "error: invalid wrapper header at offset 0: version 0x0002 (only 0x0001 is defined)"
    )
    r = run("00 01 00 01 00 01 00 0A C0")
    assert r.returncode == 1
    assert "more bytes" in r.stderr
    assert r.stderr.count("\n") == 1
    r = run("zz")
    assert r.returncode == 1
    assert "not hex" in r.stderr


def test_glo_apdu_needs_the_sender(vectors: dict[str, Any]) -> None:
    glo = vectors["green-book-glo-get-request"]["expect"]["glo_get_request"].replace(" ", "")
    r = run(glo, "--ek", GB_EK, "--ak", GB_AK)
    assert r.returncode == 1
    assert "--system-title" in r.stderr
    r = run(glo, "--ek", GB_EK, "--ak", GB_AK, "--system-title", "4D4D4D0000BC614E", "--compact")
    assert r.returncode == 0
    out = json.loads(r.stdout)
    assert out["framing"] is None
    assert out["apdu"]["deciphered"]["apdu"]["attribute"]["instance_id"] == "0.0.1.0.0.255"


def test_aarq_user_information_is_deciphered(vectors: dict[str, Any]) -> None:
    aarq = vectors["green-book-ciphered-aarq"]["expect"]["aarq"]
    r = run(aarq, "--ek", GB_EK, "--ak", GB_AK, "--apdu")
    assert r.returncode == 0, r.stderr
    ui = json.loads(r.stdout)["apdu"]["user_information"]
    assert ui["deciphered"]["apdu"]["client_max_receive_pdu_size"] == 1200


def test_stdin_lines_with_comments_and_a_bad_line() -> None:
    push = codec.wrap(
        codec.encode_apdu(
            {
                "apdu": "data-notification",
                "long_invoke_id": {"invoke_id": 1},
                "date_time": {"hex": "07EA0B17010C000000FED400"},
                "body": codec.data("double-long-unsigned", 99),
            }
        )
    )
    snrm = codec.hdlc_frame((1, None), (0x10, None), "SNRM")
    text = f"# captured at the substation\n{push.hex()}\n\nnot-hex\n{snrm.hex()}  # the SNRM\n"
    r = run("-", stdin=text)
    assert r.returncode == 1
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert first["apdu"]["date_time"]["iso"] == "2026-11-23T12:00:00+05:00"
    assert first["apdu"]["body"] == {"type": "double-long-unsigned", "value": 99}
    assert json.loads(lines[1])["framing"]["control"]["kind"] == "SNRM"
    assert r.stderr.startswith("error: line 4: ")


def test_snrm_parameters_are_shown() -> None:
    ua = codec.hdlc_frame(
        (0x10, None),
        (1, 17),
        "UA",
        codec.hdlc_parameters(max_info_transmit=128, max_info_receive=256),
    )
    r = run(ua.hex(), "--hdlc")
    assert r.returncode == 0
    out = json.loads(r.stdout)
    assert out["parameters"] == {"max_info_transmit": 128, "max_info_receive": 256}
    assert out["framing"]["source"] == {"upper": 1, "lower": 17, "size": 2}


def test_bad_key_argument() -> None:
    r = run("00", "--ek", "0011", "--ak", GB_AK)
    assert r.returncode == 2
    assert "--ek must be 16 bytes" in r.stderr
    assert h("0011") == b"\x00\x11"


def test_demo_refuses_a_port_that_is_none() -> None:
    """A port past 65535 is named as the bad argument, before anything starts."""
    r = subprocess.run(
        [sys.executable, "-m", "headend", "demo", "--http-port", "81305"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 2
    assert "argument --http-port: 81305 is not a port number (0-65535)" in r.stderr
    assert "Traceback" not in r.stderr
