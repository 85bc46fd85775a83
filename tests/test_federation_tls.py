"""The link over TLS: the centre's leaf-node port presents a certificate from the
operators' CA; a region that trusts the CA links up and gets its master data, a region
without it does not get through."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from loadtest import grid
from loadtest.federation import Federation


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def certificates(out: Path) -> dict[str, str]:
    """A CA and a certificate for 127.0.0.1 signed by it (PEM files)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "headend test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "centre")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    out.mkdir(parents=True, exist_ok=True)
    files = {"ca": out / "ca.pem", "cert": out / "centre.pem", "key": out / "centre.key"}
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(_pem_key(key))
    files["key"].chmod(0o600)
    return {k: str(v) for k, v in files.items()}


def test_the_link_speaks_tls_to_those_who_trust_the_centre(tmp_path: Path) -> None:
    pem = certificates(tmp_path / "pki")
    fleet = tmp_path / "fleet"
    grid.generate(60, 0.0, fleet, seed=4, regions=["SA", "FA"])
    fed = Federation(
        tmp_path / "fed",
        {"sa": ["UZ-SA"], "fa": ["UZ-FA"]},
        store={"balance_interval": 0.0},
        sections={"billing": {"policy": False}, "commands": {"schedule_interval": 0.0}},
        node_sections={
            "centre": {"link": {"tls_cert": pem["cert"], "tls_key": pem["key"]}},
            "sa": {"link": {"tls_ca": pem["ca"]}},
            # fa has no CA: it cannot verify the centre, nor speak TLS to it.
        },
    )
    fed.setup()
    try:
        fed.start()
        assert "tls {" in (fed.centre.h.data / "link" / "nats.conf").read_text()
        assert "tls://sa:" in (fed.nodes["sa"].h.data / "link" / "nats.conf").read_text()
        fed.centre.h.import_fleet(fleet / "grid.csv", fleet / "meters.csv")
        sa = fed.nodes["sa"]
        fed.wait(
            "sa's meters over TLS",
            lambda: int(sa.h.scalar("SELECT count() FROM ami.meters FINAL")) > 0,
        )
        peers = {p["peer"]: p for p in fed.link("centre")["peers"]}
        assert peers["sa"]["connected"]
        assert not peers["fa"]["connected"]
        assert peers["fa"]["last_contact"] is None
        assert int(fed.nodes["fa"].h.scalar("SELECT count() FROM ami.meters")) == 0
    finally:
        fed.stop()
