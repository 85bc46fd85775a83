"""Firmware upgrades against simulated meters over real TCP: Image Transfer (class 18)
block by block with the meter's block size, a transfer resumed after the link was lost
halfway, verification refused by a meter, activation now or at a set time (confirmed
by the active firmware the meter reports), and a wave over a transformer's meters."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from loadtest.firmware import make_image
from loadtest.grid import generate
from tests.server_harness import Server
from tests.test_commands import ctl, online, serve, start_fleet, stop_fleet
from tests.test_keys import transformer_meters, waves


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fleet")
    generate(300, 0.3, out, seed=11)
    return out


def add_image(srv: Server, path: Path, identifier: str) -> str:
    out = srv.cli("firmware", "add", str(path), "--identifier", identifier).stdout
    return out.split()[0]


def active_firmware(srv: Server, serial: str) -> str:
    r = ctl(srv, "read", serial, "1.0.0.2.0.255", "--class", "1")
    assert r["state"] == "done", r
    return bytes.fromhex(r["result"]["values"][0]["value"]["value"]).decode()


def test_upgrade_resume_refusal_and_scheduled_activation(fleet: Path, tmp_path: Path) -> None:
    _, serials = transformer_meters(fleet, 8, 14)
    plain, dropper, refuser, later = serials[:4]
    with serve(fleet, tmp_path / "a") as srv:
        sim = start_fleet(fleet, srv.port, serials, drop_transfer=dropper, fail_verify=refuser)
        try:
            for s in serials:
                online(srv, s)
            sha = add_image(srv, make_image(tmp_path / "fw.bin", 20_000, seed=3), "SIM-2.0.0")
            assert active_firmware(srv, plain).endswith("-1.0.0")

            # Straight through: every block, verified, activated, confirmed.
            r = ctl(srv, "firmware", plain, "--image", sha, "--reason", "security fix")
            assert r["state"] == "done", r
            res = r["result"]
            assert res["verified"] is True
            assert res["active"] == "SIM-2.0.0"
            assert res["blocks"] == -(-20_000 // res["block_size"])
            assert (res["blocks_sent"], res["resumed_with"]) == (res["blocks"], 0)
            assert active_firmware(srv, plain) == "SIM-2.0.0"
            # Again: nothing to do.
            again = ctl(srv, "firmware", plain, "--image", sha)
            assert again["result"] == {"active": "SIM-2.0.0", "already": True}

            # The link lost halfway: the next attempt sends only what is missing.
            r = ctl(srv, "firmware", dropper, "--image", sha, "--wait", "60")
            assert r["state"] == "done", r
            assert r["attempts"] == 2
            res = r["result"]
            assert res["resumed_with"] >= res["blocks"] // 2
            assert res["blocks_sent"] == res["blocks"] - res["resumed_with"]
            assert active_firmware(srv, dropper) == "SIM-2.0.0"

            # A meter whose verification fails keeps its firmware.
            r = ctl(srv, "firmware", refuser, "--image", sha, check=False)
            assert r["state"] == "failed", r
            assert "did not verify" in r["error"]
            assert r["attempts"] == 1  # it would fail again: not retried
            assert active_firmware(srv, refuser).endswith("-1.0.0")

            # Activation at a set time: transferred and verified now; other commands
            # for the meter are not held back meanwhile; activated at its time.
            at = int(time.time()) + 6
            r = ctl(
                srv,
                "firmware",
                later,
                "--image",
                sha,
                "--activate-at",
                str(at),
            )
            assert r["state"] == "done", r
            assert r["result"]["verified"] is True
            assert "active" not in r["result"]
            follow = r["result"]["then_command"]
            assert active_firmware(srv, later).endswith("-1.0.0")
            assert time.time() < at, "the test machine was too slow to check before"
            srv.wait_for(
                f"SELECT state FROM ami.command_status WHERE command_id = '{follow}'",
                "done",
                timeout=60,
            )
            ran = srv.sql(
                "SELECT toUnixTimestamp(min(ts)) FROM ami.commands "
                f"WHERE command_id = '{follow}' AND state = 'running'"
            )[0][0]
            assert ran >= at
            assert active_firmware(srv, later) == "SIM-2.0.0"
            result = json.loads(
                srv.scalar(f"SELECT result FROM ami.command_status WHERE command_id = '{follow}'")
            )
            assert result["active"] == "SIM-2.0.0"

            # An image that changed on disk since it was added is not sent; nor one
            # this node does not have.
            other = add_image(srv, make_image(tmp_path / "b.bin", 3_000, seed=4), "SIM-2.0.1")
            (srv.data / "firmware" / f"{other}.img").write_bytes(b"tampered")
            r = ctl(srv, "firmware", serials[4], "--image", other, check=False)
            assert r["state"] == "failed", r
            assert "changed on disk" in r["error"]
            r = ctl(srv, "firmware", serials[4], "--image", "ab" * 32, check=False)
            assert r["state"] == "failed", r
            assert "no firmware image abababababab" in r["error"]
            assert active_firmware(srv, serials[4]).endswith("-1.0.0")
        finally:
            stop_fleet(sim)


def test_a_firmware_wave_over_a_transformer(fleet: Path, tmp_path: Path) -> None:
    node, serials = transformer_meters(fleet, 8, 14)
    with serve(fleet, tmp_path / "w") as srv:
        sim = start_fleet(fleet, srv.port, serials, drop_transfer=serials[2])
        try:
            for s in serials:
                online(srv, s)
            region = srv.scalar(f"SELECT region FROM ami.meters WHERE serial = '{serials[0]}'")
            models = sorted(
                {
                    str(r[0])
                    for r in srv.sql(
                        "SELECT DISTINCT model FROM ami.meters WHERE serial IN "
                        f"({', '.join(repr(s) for s in serials)})"
                    )
                }
            )
            sha = add_image(srv, make_image(tmp_path / "fw.bin", 6_000, seed=5), "SIM-3.1.0")
            w = waves(
                srv,
                "start",
                "firmware",
                "--region",
                region,
                "--under",
                node,
                "--image",
                sha,
                "--models",
                ",".join(models),
                "--concurrency",
                "3",
            )
            wid = str(w["wave_id"])
            assert w["meters"] == len(serials)
            srv.wait_for(
                f"SELECT state FROM ami.waves FINAL WHERE wave_id = '{wid}'", "done", timeout=120
            )
            assert waves(srv, "show", wid)["outcomes"] == {"done": len(serials)}
            for s in (serials[0], serials[2], serials[-1]):
                assert active_firmware(srv, s) == "SIM-3.1.0"
        finally:
            stop_fleet(sim)
