"""The edge's local CA and its certificate: made once, renewed when due, trusted by a client that
holds only the CA, and the keys private."""

import socket
import ssl
import stat
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tasks.serving import edge_certificate
from tasks.serving.edge_certificate import EdgeTls


def handshake(tls: EdgeTls) -> str:
    """A TLS handshake on 127.0.0.1 with the edge's certificate, checked by a client that
    trusts the CA file alone (hostname included); the protocol it agreed."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tls.certificate, tls.key)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def accept() -> None:
            connection, _ = listener.accept()
            with server.wrap_socket(connection, server_side=True) as wrapped:
                wrapped.recv(1)

        thread = threading.Thread(target=accept)
        thread.start()
        client = ssl.create_default_context(cafile=str(tls.ca))
        with client.wrap_socket(
            socket.create_connection(("127.0.0.1", port)), server_hostname="127.0.0.1"
        ) as wrapped:
            wrapped.send(b"x")
            version = str(wrapped.version())
        thread.join(10)
    return version


def test_a_client_that_trusts_the_ca_accepts_the_edge(tmp_path: Path) -> None:
    tls = edge_certificate.ensure(tmp_path)
    assert handshake(tls).startswith("TLS")
    now = datetime.now(UTC)
    assert (
        timedelta(days=29)
        < edge_certificate.expires(tls.certificate) - now
        <= timedelta(days=edge_certificate.CERT_DAYS)
    )
    assert edge_certificate.expires(tls.ca) - now > timedelta(days=365)
    for key in (tls.key, tmp_path / edge_certificate.CA_KEY_FILE):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".edge")]  # no temporary left


def test_the_certificate_is_renewed_when_due_and_the_ca_kept(tmp_path: Path) -> None:
    tls = edge_certificate.ensure(tmp_path)
    first, ca = tls.certificate.read_bytes(), tls.ca.read_bytes()
    edge_certificate.ensure(tmp_path)
    assert tls.certificate.read_bytes() == first  # not due: kept
    later = datetime.now(UTC) + timedelta(days=edge_certificate.CERT_DAYS - 9)
    assert edge_certificate.due(tls.certificate, later)
    edge_certificate.ensure(tmp_path, now=later)
    assert tls.certificate.read_bytes() != first
    assert tls.ca.read_bytes() == ca  # callers keep trusting the same file
    assert edge_certificate.expires(tls.certificate) > later + timedelta(days=29)


def test_a_ca_near_its_end_is_replaced_with_its_certificate(tmp_path: Path) -> None:
    tls = edge_certificate.ensure(tmp_path)
    ca = tls.ca.read_bytes()
    much_later = datetime.now(UTC) + timedelta(days=edge_certificate.CA_DAYS - 5)
    edge_certificate.ensure(tmp_path, now=much_later)
    assert tls.ca.read_bytes() != ca
    assert edge_certificate.expires(tls.certificate) > much_later


def test_renewing_an_edge_that_does_not_run_says_so(tmp_path: Path) -> None:
    edge_certificate.ensure(tmp_path)
    with pytest.raises(edge_certificate.RenewalError, match="no edge runs from"):
        edge_certificate.renew(tmp_path, ("127.0.0.1", 1))


def renew_repeatedly(directory: str, times: int) -> None:
    for _ in range(times):
        edge_certificate.ensure(Path(directory), renew=True)


def test_concurrent_renewals_leave_a_key_that_matches_its_certificate(tmp_path: Path) -> None:
    """Two `doctor --repair` runs (or a stack start beside one) renewing at once: each renewal
    writes its pair under the lock, so the files end as one pair, never one's key beside the
    other's certificate (nginx refuses such a pair, and its reload fails)."""
    import multiprocessing

    edge_certificate.ensure(tmp_path)
    spawn = multiprocessing.get_context("spawn")
    workers = [spawn.Process(target=renew_repeatedly, args=(str(tmp_path), 6)) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    tls = edge_certificate.files(tmp_path)
    assert handshake(tls).startswith("TLS")  # load_cert_chain refuses a key of another pair
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".edge")]
