"""The edge's canary routes: which share of a model's unversioned HTTP requests the balancer sends
to its canary (`names.canary_name`) during a canary release. The split is nginx's, never
conveyor in the request path: each request draws a bucket 1-100 from its request id, and goes to
the canary when `routes/<model>/<bucket>` exists (`infra/nginx/edge.conf`). conveyor writes
100 * share empty files there and removes them; nginx sees a change within a second, without a
reload (a reload closes every idle keep-alive connection, and a caller that sends on one as it
closes loses that request).

A route left behind by a release that died is harmless to callers (a canary that is gone or
fails is answered by the champion, in the edge) and is removed by the release's clean-up, by the
next release of the model and by `conveyor doctor --repair`.

gRPC requests are not split: the model's name is inside their protobuf body, which nginx does
not read, so gRPC callers stay on the champion until the swap.
"""

from __future__ import annotations

from pathlib import Path

from tasks.core.errors import ConveyorError
from tasks.core.settings import Settings

BUCKETS = 100  # the edge's split: one bucket per percent


class EdgeRouteError(ConveyorError):
    """The edge's routes could not be written."""

    gate = "canary"


def routes_dir(settings: Settings) -> Path:
    directory = settings.edge_routes_dir
    if directory is None:
        raise EdgeRouteError(
            "a canary needs the edge's routes directory: set CONVEYOR_EDGE_ROUTES_DIR to the "
            "`routes` directory beside the edge's nginx.conf (`make stack` sets it), or release "
            "with `promotion.rollout: direct`"
        )
    if not directory.is_dir():
        raise EdgeRouteError(
            f"CONVEYOR_EDGE_ROUTES_DIR={directory} does not exist; it is the `routes` directory "
            "beside the edge's nginx.conf, made when the edge is rendered (infra/edge.py)"
        )
    return directory


def buckets(share: float) -> int:
    """How many of the edge's buckets a share is: at least one, so a share is never nothing."""
    return max(1, min(BUCKETS, round(share * BUCKETS)))


def open_route(settings: Settings, model: str, share: float) -> None:
    """`share` of `model`'s unversioned HTTP requests to its canary, from the next second on."""
    directory = routes_dir(settings) / model
    directory.mkdir(exist_ok=True)
    wanted = {str(b) for b in range(1, buckets(share) + 1)}
    for name in wanted:
        (directory / name).touch()
    for extra in {p.name for p in directory.iterdir()} - wanted:
        (directory / extra).unlink()


def close_route(settings: Settings, model: str) -> bool:
    """Every request of `model` to the champion again (within the edge's second); False when
    there was no route (or no edge)."""
    if settings.edge_routes_dir is None:
        return False
    directory = settings.edge_routes_dir / model
    if not directory.is_dir():
        return False
    for path in directory.iterdir():
        path.unlink()
    directory.rmdir()
    return True


def open_routes(settings: Settings) -> list[str]:
    """The models the edge splits now (for `conveyor doctor`)."""
    if settings.edge_routes_dir is None or not settings.edge_routes_dir.is_dir():
        return []
    return sorted(p.name for p in settings.edge_routes_dir.iterdir() if p.is_dir())
