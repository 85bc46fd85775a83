"""``headend certs``: a self-signed certificate and key for HTTPS (tests and small
sites; a utility's own CA signs production certificates). ECDSA P-256, the names as
subject alternative names (IP addresses as such)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

from headend.errors import HeadendError


def self_signed(names: list[str], days: int = 365) -> tuple[bytes, bytes]:
    """(certificate PEM, private key PEM) for `names` (DNS names or IP addresses)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if not names:
        raise HeadendError("a certificate needs at least one name (--name)")
    alt: list[x509.GeneralName] = []
    for n in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            alt.append(x509.DNSName(n))
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def write_pair(out: Path, names: list[str], days: int = 365) -> tuple[Path, Path]:
    """Writes `cert.pem` and `key.pem` (mode 0600) into `out`; refuses to overwrite."""
    cert_pem, key_pem = self_signed(names, days)
    out.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = out / "cert.pem", out / "key.pem"
    for p in (cert_path, key_path):
        if p.exists():
            raise HeadendError(f"{p} exists; remove it first or choose another --out")
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_pem)
    cert_path.write_bytes(cert_pem)
    return cert_path, key_path
