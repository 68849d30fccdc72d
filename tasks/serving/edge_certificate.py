"""The edge's TLS where conveyor runs the edge itself (`make stack`, tests, benchmarks): a local
CA that callers trust (`CONVEYOR_EDGE_CA_FILE`, made once, valid for years) and the edge's own
certificate signed by it, valid for 30 days and renewed when 10 or fewer are left: at the
stack's start, and by `conveyor doctor --repair` for a stack that keeps running. Callers notice
nothing: they trust the CA, which a renewal leaves as it was.

An edge whose certificate comes from the operator's CA (compose, production) is only checked:
`conveyor doctor` says when the certificate callers are served nears its end.
"""

from __future__ import annotations

import fcntl
import os
import signal
import ssl
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path
from typing import TYPE_CHECKING

from tasks.core.errors import ConveyorError

if TYPE_CHECKING:  # imported where used: `conveyor doctor` reads dates only when an edge is set
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

CA_DAYS = 5 * 365
CERT_DAYS = 30
RENEW_DAYS = 10  # a third of the certificate's life: a weekly doctor run renews it in time
CA_FILE, CA_KEY_FILE = "edge-ca.crt", "edge-ca.key"
CERT_FILE, KEY_FILE = "edge.crt", "edge.key"
PID_FILE = "nginx.pid"  # written by the edge's nginx (infra/nginx/edge.conf)


@dataclass(frozen=True)
class EdgeTls:
    """What the edge serves (certificate, key) and what its callers trust (ca)."""

    certificate: Path
    key: Path
    ca: Path


def files(directory: Path) -> EdgeTls:
    return EdgeTls(directory / CERT_FILE, directory / KEY_FILE, directory / CA_FILE)


def expires(certificate: Path) -> datetime:
    """When the first certificate in `certificate` (PEM) stops being valid."""
    from cryptography import x509

    return x509.load_pem_x509_certificate(certificate.read_bytes()).not_valid_after_utc


def due(certificate: Path, now: datetime | None = None) -> bool:
    """Whether `certificate` has `RENEW_DAYS` or fewer left (or is missing)."""
    if not certificate.is_file():
        return True
    return expires(certificate) - (now or datetime.now(UTC)) <= timedelta(days=RENEW_DAYS)


def ensure(directory: Path, now: datetime | None = None, renew: bool = False) -> EdgeTls:
    """The edge's files under `directory`: the CA made when there is none (or it nears its own
    end), the certificate (re)issued when it is due, or whatever its dates with `renew`.
    `now`: the time to judge by and to date new certificates from (tests)."""
    tls = files(directory)
    directory.mkdir(parents=True, exist_ok=True)
    moment = now or datetime.now(UTC)
    ca_key_file = directory / CA_KEY_FILE
    # One writer at a time: two interleaved renewals could leave one's key beside the other's
    # certificate, which nginx refuses to load.
    with (directory / ".certificates.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if due(tls.ca, moment) or not ca_key_file.is_file():
            _write_ca(directory, moment)
            _write_certificate(directory, moment)
        elif renew or due(tls.certificate, moment) or not tls.key.is_file():
            _write_certificate(directory, moment)
    return tls


def renew(directory: Path, served_at: tuple[str, int], timeout_s: float = 15.0) -> datetime:
    """A new certificate for the running edge, which reloads to serve it (its workers finish
    what they hold): for `conveyor doctor --repair`. Returns when the edge at `served_at`
    serves it, with its end; `RenewalError` if it does not within `timeout_s`."""
    tls = ensure(directory, renew=True)
    pid_file = directory / PID_FILE
    if not pid_file.is_file():
        raise RenewalError(f"no edge runs from {directory} ({PID_FILE} is missing)")
    os.kill(int(pid_file.read_text()), signal.SIGHUP)
    wanted = expires(tls.certificate)
    deadline = time.monotonic() + timeout_s
    while (served := served_certificate(*served_at)) != wanted:
        if time.monotonic() > deadline:
            raise RenewalError(
                f"the edge at {served_at[0]}:{served_at[1]} still serves the certificate that "
                f"ends {served:%Y-%m-%d} {timeout_s:.0f} s after its reload; its error.log in "
                f"{directory} says why"
            )
        time.sleep(0.2)
    return wanted


class RenewalError(ConveyorError):
    """The edge's certificate was renewed on disk but the edge does not serve it."""


def served_certificate(host: str, port: int, timeout_s: float = 5.0) -> datetime:
    """When the certificate the edge at host:port serves expires (not checked against any CA:
    this is about its dates, whoever signed it)."""
    import socket

    from cryptography import x509

    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with (
        socket.create_connection((host, port), timeout=timeout_s) as raw,
        context.wrap_socket(raw, server_hostname=host) as wrapped,
    ):
        der = wrapped.getpeercert(binary_form=True)
    if der is None:
        raise ssl.SSLError(f"{host}:{port} served no certificate")
    return x509.load_der_x509_certificate(der).not_valid_after_utc


def _write_ca(directory: Path, now: datetime) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "conveyor edge CA")])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    certificate = (
        _builder(name, name, key.public_key(), now, CA_DAYS)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(ca=True), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, _hash())
    )
    _write_pair(directory / CA_FILE, certificate, directory / CA_KEY_FILE, key)


def _write_certificate(directory: Path, now: datetime) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca = x509.load_pem_x509_certificate((directory / CA_FILE).read_bytes())
    ca_key = serialization.load_pem_private_key((directory / CA_KEY_FILE).read_bytes(), None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{directory / CA_KEY_FILE} is not the EC key conveyor made for the CA")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "conveyor edge")])
    names = [x509.IPAddress(IPv4Address("127.0.0.1")), x509.DNSName("localhost")]
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    certificate = (
        _builder(name, ca.subject, key.public_key(), now, CERT_DAYS)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, _hash())
    )
    _write_pair(directory / CERT_FILE, certificate, directory / KEY_FILE, key)


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    now: datetime,
    days: int,
) -> x509.CertificateBuilder:
    from cryptography import x509

    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        # A minute back: a client whose clock is a little behind still accepts it.
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=days))
    )


def _usage(ca: bool) -> x509.KeyUsage:
    from cryptography import x509

    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _hash() -> hashes.SHA256:
    from cryptography.hazmat.primitives import hashes

    return hashes.SHA256()


def _write_pair(
    certificate_path: Path,
    certificate: x509.Certificate,
    key_path: Path,
    key: ec.EllipticCurvePrivateKey,
) -> None:
    """Key first, then certificate, each replaced whole (a reader never sees half a file); the
    key readable by its owner only."""
    from cryptography.hazmat.primitives import serialization

    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _replace(key_path, key_pem, 0o600)
    _replace(certificate_path, certificate.public_bytes(serialization.Encoding.PEM), 0o644)


def _replace(path: Path, data: bytes, mode: int) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(handle, mode)
        os.write(handle, data)
    finally:
        os.close(handle)
    Path(temporary).replace(path)
