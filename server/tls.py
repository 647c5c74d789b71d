"""TLS certificates for a SuperLink: a private CA and a server certificate signed by it.

The SuperLink serves with the server certificate and key (``--ssl-certfile``,
``--ssl-keyfile``, ``--ssl-ca-certfile``); SuperNodes and the ``flwr`` CLI trust the CA
(``--root-certificates``, ``root-certificates`` in ``config.toml``). The CA's key never leaves
the machine that makes the certificates. The server certificate always names 127.0.0.1 and
localhost as well as the given hosts: the SuperLink's own SuperExec reaches it over loopback.

``python -m fedrec.server.tls FOLDER --host 10.0.0.5 --host link.example.org`` writes
``ca.pem``, ``ca.key``, ``server.pem`` and ``server.key`` (keys mode 0600). A CA already in
FOLDER is reused, so a renewed server certificate stays trusted by existing SuperNodes.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LOOPBACK = ("127.0.0.1", "localhost")
CA_CERT = "ca.pem"
CA_KEY = "ca.key"
SERVER_CERT = "server.pem"
SERVER_KEY = "server.key"


@dataclass(frozen=True)
class TlsFiles:
    """Where the PEM files are: the SuperLink needs all but ``ca_key``, a SuperNode or the
    ``flwr`` CLI only ``ca_cert``."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


def subject_alternative_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    """IP addresses and DNS names for ``hosts`` plus loopback, each once, in order."""
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys([*hosts, *LOOPBACK]):
        if not host or any(c.isspace() for c in host) or "/" in host:
            raise ValueError(f"not a host name or IP address: {host!r}")
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host.lower()))
    return names


def _key_usage(*allowed: str) -> x509.KeyUsage:
    """A KeyUsage extension that allows only the ``allowed`` uses."""
    uses = (
        "digital_signature",
        "content_commitment",
        "key_encipherment",
        "data_encipherment",
        "key_agreement",
        "key_cert_sign",
        "crl_sign",
        "encipher_only",
        "decipher_only",
    )
    return x509.KeyUsage(**{use: use in allowed for use in uses})


def make_ca(
    name: str = "fedrec SuperLink CA", days: int = 3650
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A new self-signed CA (P-256) that may sign server certificates only."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    public = key.public_key()
    builder = (
        _validity(x509.CertificateBuilder(), days)
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            _key_usage("digital_signature", "key_cert_sign", "crl_sign"),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )
    return key, builder.sign(key, hashes.SHA256())


def make_server_certificate(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    hosts: Sequence[str],
    days: int = 365,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A new server key (P-256) and certificate for ``hosts`` (and loopback), signed by the
    CA, for TLS server authentication only."""
    key = ec.generate_private_key(ec.SECP256R1())
    names = subject_alternative_names(hosts)
    first = names[0].value
    public = key.public_key()
    ca_public = ca_key.public_key()
    builder = (
        _validity(x509.CertificateBuilder(), days)
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, str(first))]))
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            _key_usage("digital_signature", "key_agreement"),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_public), critical=False
        )
    )
    return key, builder.sign(ca_key, hashes.SHA256())


def write_certificates(folder: Path, hosts: Sequence[str] = LOOPBACK, days: int = 365) -> TlsFiles:
    """Write a CA (reused when ``folder`` has one) and a server certificate for ``hosts``
    into ``folder`` as PEM; private keys are written with mode 0600."""
    folder.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(folder / CA_CERT, folder / CA_KEY, folder / SERVER_CERT, folder / SERVER_KEY)
    if files.ca_cert.exists() and files.ca_key.exists():
        ca_cert = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
        loaded = serialization.load_pem_private_key(files.ca_key.read_bytes(), password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{files.ca_key} is not an EC private key")
        ca_key = loaded
    else:
        ca_key, ca_cert = make_ca()
        _write_key(files.ca_key, ca_key)
        files.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    key, cert = make_server_certificate(ca_key, ca_cert, hosts, days)
    _write_key(files.server_key, key)
    files.server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return files


def _validity(builder: x509.CertificateBuilder, days: int) -> x509.CertificateBuilder:
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        builder.serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
    )


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(pem)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m fedrec.server.tls FOLDER --host HOST ...``: write the PEM files."""
    parser = argparse.ArgumentParser(
        prog="python -m fedrec.server.tls",
        description="Make a CA and a SuperLink server certificate (PEM) for the given hosts.",
    )
    parser.add_argument("folder", type=Path, help="where to write ca.pem, ca.key, server.*")
    parser.add_argument(
        "--host",
        action="append",
        default=[],
        help="an IP address or DNS name SuperNodes reach the SuperLink by (repeatable); "
        "127.0.0.1 and localhost are always included",
    )
    parser.add_argument("--days", type=int, default=365, help="server certificate validity")
    args = parser.parse_args(argv)
    files = write_certificates(args.folder, args.host, args.days)
    print(f"SuperLink: --ssl-ca-certfile {files.ca_cert} --ssl-certfile {files.server_cert}")
    print(f"           --ssl-keyfile {files.server_key}")
    print(f"SuperNodes and flwr: --root-certificates / root-certificates = {files.ca_cert}")
    print(f"Keep {files.ca_key} off the SuperLink machine if you can.")


if __name__ == "__main__":
    main()
