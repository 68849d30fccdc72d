"""The edge's certificate, as doctor sees it: the one the edge serves, read over TLS, so an
operator's own certificate near its end is reported too; renewed by `--repair` only when
conveyor made it (`tasks.serving.edge_certificate`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from tasks.core.settings import Settings
from tasks.ops.doctor.check import DoctorCheck, Mend
from tasks.ops.doctor.problems import Problem
from tasks.serving import edge_certificate


def edge_address(settings: Settings) -> tuple[str, int] | None:
    """(host, port) of the edge's HTTPS listener, from `edge_http_url` (`host:port`, with or
    without a scheme)."""
    if settings.edge_http_url is None:
        return None
    host, _, port = settings.edge_http_url.rpartition("//")[2].rstrip("/").rpartition(":")
    return (host, int(port)) if host and port.isdigit() else None


def edge_problems(settings: Settings) -> list[Problem]:
    """The certificate the edge serves, when it has `RENEW_DAYS` or fewer left: past its end,
    every caller's TLS check fails. Renewed here when conveyor made it (its CA's key lies
    beside the CA file callers trust); otherwise whoever issues the operator's certificates
    renews it. An edge that does not answer is not judged here (its replicas' checks are)."""
    address = edge_address(settings)
    if address is None or settings.edge_ca_file is None:
        return []
    try:
        ends = edge_certificate.served_certificate(*address)
    except OSError:
        return []
    left = ends - datetime.now(UTC)
    if left > timedelta(days=edge_certificate.RENEW_DAYS):
        return []
    directory = settings.edge_ca_file.parent
    ours = (directory / edge_certificate.CA_KEY_FILE).is_file()
    when = f"in {left.days} days" if left.total_seconds() > 0 else "already: callers are refused"
    return [
        Problem(
            model=None,
            kind="edge-certificate",
            detail=f"the certificate the edge at {settings.edge_http_url} serves ends "
            f"{ends:%Y-%m-%d %H:%M} UTC ({when})",
            repair="issue a new one from the edge's CA and reload the edge (callers keep "
            "trusting the same CA)"
            if ours
            else "none here: renew it with the CA that issued it, then reload the edge",
            key=str(directory) if ours else None,
        )
    ]


def renew(mend: Mend, problems: list[Problem]) -> None:
    """The edge conveyor made (its CA's key is in `key`): a new certificate, a reload."""
    address = edge_address(mend.settings)
    for problem in problems:
        if problem.key and address:
            edge_certificate.renew(Path(problem.key), address)
            problem.repaired = True


CHECK = DoctorCheck(
    "edge-certificate",
    ("edge-certificate",),
    "server",
    edge_problems,
    renew,
    before_release=False,
)
