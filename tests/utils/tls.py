"""Throw-away certificate authorities and certificates, made with the openssl command."""

from __future__ import annotations

import ssl
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


def trusted_subjects(context: ssl.SSLContext) -> list[dict[str, str]]:
    """The subject of each CA `context` trusts, as {attribute: value} (the first
    attribute of each relative distinguished name: the test CAs have one each)."""
    subjects = []
    for ca in context.get_ca_certs():
        names: dict[str, str] = {}
        # typeshed types every value of the certificate's dict alike; "subject" is a
        # tuple of relative distinguished names, each a tuple of (attribute, value)
        for rdn in ca["subject"]:
            assert isinstance(rdn, tuple)
            attribute = rdn[0]
            assert isinstance(attribute, tuple)
            name, value = attribute
            names[name] = value
        subjects.append(names)
    return subjects


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def _config(path: Path, common_name: str, dns: tuple[str, ...], ips: tuple[str, ...]) -> Path:
    alt = [f"DNS.{i} = {name}" for i, name in enumerate(dns, 1)]
    alt += [f"IP.{i} = {ip}" for i, ip in enumerate(ips, 1)]
    san = "subjectAltName = @alt\n" if alt else ""
    path.write_text(
        f"""[req]
distinguished_name = dn
prompt = no
[dn]
CN = {common_name}
[ca_ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
[leaf_ext]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth,clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid,issuer
{san}[alt]
{chr(10).join(alt)}
"""
    )
    return path


def make_ca(directory: Path, common_name: str) -> Issued:
    """A self-signed CA (EC P-256, valid two days)."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = directory / common_name.replace(" ", "_")
    config = _config(stem.with_suffix(".cnf"), common_name, (), ())
    cert, key = stem.with_suffix(".crt"), stem.with_suffix(".key")
    _openssl(
        "req", "-x509", "-config", str(config), "-extensions", "ca_ext",
        "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(cert), "-days", "2",
    )  # fmt: skip
    return Issued(cert, key)


def issue(
    ca: Issued,
    directory: Path,
    common_name: str,
    dns: tuple[str, ...] = (),
    ips: tuple[str, ...] = (),
    key_password: str | None = None,
) -> Issued:
    """A certificate signed by `ca` for the given names (server and client use).

    With `key_password` the private key is written encrypted (AES-256).
    """
    directory.mkdir(parents=True, exist_ok=True)
    stem = directory / f"{common_name.replace(' ', '_')}-{uuid.uuid4().hex[:6]}"
    config = _config(stem.with_suffix(".cnf"), common_name, dns, ips)
    cert, key, csr = stem.with_suffix(".crt"), stem.with_suffix(".key"), stem.with_suffix(".csr")
    _openssl(
        "req", "-new", "-config", str(config),
        "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(csr),
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key),
        "-set_serial", str(uuid.uuid4().int >> 64), "-days", "2",
        "-extfile", str(config), "-extensions", "leaf_ext", "-out", str(cert),
    )  # fmt: skip
    if key_password is not None:
        encrypted = stem.with_suffix(".enc.key")
        _openssl(
            "pkey", "-in", str(key), "-out", str(encrypted),
            "-aes256", "-passout", f"pass:{key_password}",
        )  # fmt: skip
        key.unlink()
        key = encrypted
    return Issued(cert, key)
