"""The serving fleet: the Triton replicas a release acts on, which of them are up, and the rule
that decides whether a step may go on with one down.

Forward moves (serve a candidate, swap, roll back) act on every replica that is up, and start only
when at least `CONVEYOR_TRITON_MIN_REPLICAS` are (default: all): a replica down at that moment is
brought to the champion afterwards by `conveyor doctor --repair`. Backward moves (withdraw,
restore) act on every replica that answers, whatever their number: putting production back never
waits for a quorum.
"""

from __future__ import annotations

import urllib.error
import urllib.request

from pydantic import BaseModel

from tasks.core.errors import ServiceUnavailableError
from tasks.core.settings import Settings
from tasks.serving import triton_server
from tasks.serving.triton_ports import Endpoint

HEALTH_TIMEOUT_S = 2.0  # a replica slower than this to say it is live is treated as down


class Replica(BaseModel):
    """One Triton server of the fleet, named for messages and reports."""

    name: str
    endpoint: Endpoint


class ReplicasDownError(ServiceUnavailableError):
    """Fewer replicas are up than a forward step needs."""


def configured(settings: Settings) -> list[Replica]:
    """Every replica of the fleet: the configured list, else the one Triton (embedded or
    `TRITON_URL`), which is started here when it is the embedded one and down."""
    if not settings.triton_replicas:
        endpoint = triton_server.endpoint(settings)
        return [Replica(name=f"triton {endpoint.http}", endpoint=endpoint)]
    return [
        Replica(name=f"replica {i} ({a.http})", endpoint=Endpoint(http=a.http, grpc=a.grpc))
        for i, a in enumerate(settings.triton_replicas, start=1)
    ]


def is_live(endpoint: Endpoint) -> bool:
    """Live, not ready: with strict readiness Triton answers "not ready" while a model unloads."""
    url = f"http://{endpoint.http}/v2/health/live"
    try:
        with urllib.request.urlopen(url, timeout=HEALTH_TIMEOUT_S) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


class Fleet(BaseModel):
    up: list[Replica]
    down: list[Replica]

    def names(self, which: list[Replica]) -> str:
        return ", ".join(r.name for r in which)


def survey(settings: Settings) -> Fleet:
    replicas = configured(settings)
    live = [is_live(r.endpoint) for r in replicas]
    return Fleet(
        up=[r for r, ok in zip(replicas, live, strict=True) if ok],
        down=[r for r, ok in zip(replicas, live, strict=True) if not ok],
    )


def needed(settings: Settings) -> int:
    total = max(len(settings.triton_replicas), 1)
    return min(settings.triton_min_replicas or total, total)


def quorum(settings: Settings, step: str) -> list[Replica]:
    """The replicas a forward `step` acts on: every one that is up, when enough are."""
    fleet = survey(settings)
    need = needed(settings)
    if len(fleet.up) < need:
        total = len(fleet.up) + len(fleet.down)
        raise ReplicasDownError(
            f"{step} needs {need} of {total} Triton replicas up, and {len(fleet.up)} are: "
            f"{fleet.names(fleet.down)} did not answer. Nothing was changed. Start them and run "
            "`conveyor doctor --repair` (it brings a restarted replica to the champion), or set "
            "CONVEYOR_TRITON_MIN_REPLICAS to the number that may serve while the others are down."
        )
    return fleet.up


def answering_fleet(settings: Settings) -> Fleet:
    """The fleet as a backward step sees it: `ReplicasDownError` when no replica answers (the
    embedded server is started if it is down)."""
    fleet = survey(settings)
    if not fleet.up:
        raise ReplicasDownError(
            f"no Triton replica answers ({fleet.names(fleet.down)}); start them, then run "
            "`conveyor doctor --repair` to serve the champion on them"
        )
    return fleet


def answering(settings: Settings) -> list[Replica]:
    """The replicas a backward step acts on: every one that answers."""
    return answering_fleet(settings).up


def probe_endpoint(settings: Settings, targets: list[Replica]) -> Endpoint:
    """Where requests that stand for callers' go: the edge when one is configured (through the
    balancer, with conveyor's client key, over TLS), else the first replica acted on."""
    if settings.edge_http_url is None:
        return targets[0].endpoint
    return Endpoint(
        http=settings.edge_http_url,
        grpc=settings.edge_grpc_url or settings.edge_http_url,
        via_edge=True,
        tls_ca_file=str(settings.edge_ca_file) if settings.edge_ca_file else None,
    )


def probe_rate(settings: Settings, endpoint: Endpoint) -> float | None:
    """Requests/s a probe through `endpoint` keeps to: the edge limits each client's rate,
    conveyor's key included; a replica straight is not limited (None: as fast as it answers)."""
    return settings.edge_probe_rate_per_s if endpoint.via_edge else None
