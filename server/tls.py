"""TLS certificates for a SuperLink: a private CA and a server certificate signed by it.

The SuperLink serves with the server certificate and key (``--ssl-certfile``,
``--ssl-keyfile``, ``--ssl-ca-certfile``); SuperNodes and the ``flwr`` CLI trust the CA
(``--root-certificates``, ``root-certificates`` in ``config.toml``). The CA's key never leaves
the machine that makes the certificates. The server certificate always names 127.0.0.1 and
localhost as well as the given hosts: the SuperLink's own SuperExec reaches it over loopback.

``python -m fedrec.server.tls FOLDER --host 10.0.0.5 --host link.example.org`` writes
``ca.pem``, ``ca.key``, ``server.pem`` and ``server.key`` (keys mode 0600). A CA already in
FOLDER is reused, so a renewed server certificate stays trusted by existing SuperNodes; a
renewal replaces ``server.pem`` and ``server.key`` and names only the hosts it is given.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedrec.shared.files import check_output_folder, write_atomic

LOOPBACK = ("127.0.0.1", "localhost")
CA_CERT = "ca.pem"
CA_KEY = "ca.key"
SERVER_CERT = "server.pem"
SERVER_KEY = "server.key"
#: The longest validity, in days, of a server certificate; a new CA lives ten days longer.
MAX_DAYS = 3650
PEM = serialization.Encoding.PEM


@dataclass(frozen=True)
class TlsFiles:
    """Where the PEM files are: the SuperLink needs all but ``ca_key``, a SuperNode or the
    ``flwr`` CLI only ``ca_cert``."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


def subject_alternative_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    """IP addresses and DNS names for ``hosts`` plus loopback, each once, in order; a
    ValueError naming a host that is neither (a DNS name must be ASCII: use an IDN's
    ``xn--`` form)."""
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys([*hosts, *LOOPBACK]):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
            continue
        except ValueError:
            pass
        labels = host.lower().split(".")
        if not (
            0 < len(host) <= 253
            and all(_HOST_LABEL.fullmatch(label) for label in labels)
            and not labels[-1].isdigit()  # 10.0.0.256: not an address, and no name
        ):
            raise ValueError(f"not a host name or IP address: {host!r}")
        names.append(x509.DNSName(host.lower()))
    return names


#: One label of a DNS host name (RFC 1123): letters, digits and inner hyphens, 1 to 63.
_HOST_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


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
    name: str = "fedrec SuperLink CA", days: int = MAX_DAYS + 10
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
    into ``folder`` as PEM; private keys are written with mode 0600. Everything is checked
    before anything is written: a ValueError names the host, the half of a CA pair that is
    missing, a CA that cannot sign for ``days``, or a ``server.key`` that is not a key this
    tool wrote (an Ed25519 bundle-signing key of a run folder, say)."""
    check_output_folder(folder, "the certificate folder")
    files = TlsFiles(folder / CA_CERT, folder / CA_KEY, folder / SERVER_CERT, folder / SERVER_KEY)
    present = [path.name for path in (files.ca_cert, files.ca_key) if path.exists()]
    if len(present) == 1:
        raise ValueError(
            f"{folder} has {present[0]} but not the other half of the CA pair ({CA_CERT}, "
            f"{CA_KEY}): restore it, or use an empty folder for a new CA"
        )
    if files.server_key.exists():
        _load_key(files.server_key, "is not a TLS key this tool wrote; use another folder")
    if present:
        ca_key = _load_key(files.ca_key, "is not the EC key of a fedrec CA")
        ca_cert = _load_ca(files.ca_cert, ca_key)
    else:
        ca_key, ca_cert = make_ca()
    key, cert = make_server_certificate(ca_key, ca_cert, hosts, days)
    if cert.not_valid_after_utc > ca_cert.not_valid_after_utc:
        raise ValueError(
            f"a server certificate valid for {days} days would outlive its CA "
            f"({files.ca_cert}, valid until {ca_cert.not_valid_after_utc:%Y-%m-%d})"
        )
    folder.mkdir(parents=True, exist_ok=True)
    if not present:
        write_atomic(files.ca_key, _key_pem(ca_key))
        write_atomic(files.ca_cert, ca_cert.public_bytes(PEM), mode=0o644)
    write_atomic(files.server_key, _key_pem(key))
    write_atomic(files.server_cert, cert.public_bytes(PEM), mode=0o644)
    return files


def _load_key(path: Path, problem: str) -> ec.EllipticCurvePrivateKey:
    """The unencrypted EC private key in ``path``; a ValueError ``path problem`` otherwise."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, OSError):  # not PEM, encrypted, a folder
        key = None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path} {problem}")
    return key


def _load_ca(path: Path, key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    """The CA certificate in ``path``, which must be ``key``'s, a CA's, and valid now."""
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (ValueError, OSError):
        raise ValueError(f"{path} is not a PEM certificate") from None
    if cert.public_key() != key.public_key():
        raise ValueError(f"{path} and its {CA_KEY} are not one pair")
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        can_sign = constraints.ca and usage.key_cert_sign
    except x509.ExtensionNotFound:
        can_sign = False
    if not can_sign:
        raise ValueError(f"{path} is not a CA certificate that may sign certificates")
    now = datetime.datetime.now(datetime.timezone.utc)
    if not cert.not_valid_before_utc <= now < cert.not_valid_after_utc:
        raise ValueError(f"{path} is not valid now (until {cert.not_valid_after_utc:%Y-%m-%d})")
    return cert


def _validity(builder: x509.CertificateBuilder, days: int) -> x509.CertificateBuilder:
    if not 1 <= days <= MAX_DAYS + 10:
        raise ValueError(f"days must be in [1, {MAX_DAYS}], got {days}")
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        builder.serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


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
    try:
        files = write_certificates(args.folder, args.host, args.days)
    except (ValueError, OSError) as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    print(f"SuperLink: --ssl-ca-certfile {files.ca_cert} --ssl-certfile {files.server_cert}")
    print(f"           --ssl-keyfile {files.server_key}")
    print(f"SuperNodes and flwr: --root-certificates / root-certificates = {files.ca_cert}")
    print(f"Keep {files.ca_key} off the SuperLink machine if you can.")


if __name__ == "__main__":
    main()
