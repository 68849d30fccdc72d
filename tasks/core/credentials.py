"""Credentials: where each secret conveyor uses comes from, and what a refusal tells the operator.

Secrets are read at the moment of use, from the environment or from a Prefect Secret block named
in the environment. They are never fields of `Settings` or of any result passed between tasks:
those become Prefect flow-run parameters and persisted results, which the API and the result
store keep in plain text. What travels instead is a reference (the key file's path, a block name).

- Triton: CONVEYOR_TRITON_ADMIN_KEY, or the Secret block named by
  CONVEYOR_TRITON_ADMIN_KEY_BLOCK; embedded default: a key generated at each start into
  <home>/triton/admin.key, readable by its owner only.
- Pushgateway: CONVEYOR_PUSHGATEWAY_USERNAME and CONVEYOR_PUSHGATEWAY_PASSWORD (or
  CONVEYOR_PUSHGATEWAY_PASSWORD_BLOCK).
- MLflow: its own MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or
  CONVEYOR_MLFLOW_PASSWORD_BLOCK).
- Prefect: PREFECT_API_AUTH_STRING, read by Prefect itself.
- S3: the AWS_* variables, boto3's own chain.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from functools import cache
from pathlib import Path

from tasks.core.errors import ConveyorError

# The header Triton checks on its model-control APIs. Over gRPC Triton expects it as metadata
# with this prefix (`--grpc-restricted-protocol` docs).
TRITON_KEY_HEADER = "conveyor-admin-key"
GRPC_METADATA_PREFIX = "triton-grpc-protocol-"
# Every API that changes or reveals what the server runs. Inference, health and metadata stay
# open to callers; statistics too (it is read-only and what dashboards poll).
TRITON_RESTRICTED = ("model-repository", "model-config", "shared-memory", "trace", "logging")
TRITON_KEY_ENV = "CONVEYOR_TRITON_ADMIN_KEY"
# conveyor's own client key at the edge (its smoke of a live version, the swap probe, the
# benchmarks): a client like any other, named in the edge's access log and metric.
EDGE_KEY_ENV = "CONVEYOR_EDGE_KEY"
EDGE_KEY_BLOCK_ENV = "CONVEYOR_EDGE_KEY_BLOCK"
TRITON_KEY_BLOCK_ENV = "CONVEYOR_TRITON_ADMIN_KEY_BLOCK"
PUSHGATEWAY_USER_ENV = "CONVEYOR_PUSHGATEWAY_USERNAME"
PUSHGATEWAY_PASSWORD_ENV = "CONVEYOR_PUSHGATEWAY_PASSWORD"
PUSHGATEWAY_PASSWORD_BLOCK_ENV = "CONVEYOR_PUSHGATEWAY_PASSWORD_BLOCK"
MLFLOW_USER_ENV = "MLFLOW_TRACKING_USERNAME"
MLFLOW_PASSWORD_ENV = "MLFLOW_TRACKING_PASSWORD"
MLFLOW_PASSWORD_BLOCK_ENV = "CONVEYOR_MLFLOW_PASSWORD_BLOCK"
# MLflow's error codes for a 401 and a 403.
MLFLOW_REFUSALS = ("UNAUTHENTICATED", "PERMISSION_DENIED")
# 32 random bytes: far beyond guessing over a network, short enough for a header.
KEY_BYTES = 32


class CredentialError(ConveyorError):
    """A service refused conveyor's credentials, or a credential could not be found."""


@cache
def _block_value(name: str) -> str:
    """A Prefect Secret block's value. Cached per process: a flow's many control calls must not
    each cost an API round trip (a rotated secret reaches the next flow run, a new process)."""
    from prefect.blocks.system import Secret

    try:
        return str(Secret.load(name).get())
    except ValueError as exc:
        raise CredentialError(
            f"the Prefect Secret block {name!r} could not be loaded ({exc}). Create it in the "
            f"Prefect UI (Blocks → Secret) or with `Secret(value=...).save({name!r})` on the "
            "server in PREFECT_API_URL, or unset the *_BLOCK variable that names it."
        ) from exc


def secret(variable: str, block_variable: str | None = None) -> str | None:
    """A secret from `variable`, else from the Secret block that `block_variable` names."""
    value = os.environ.get(variable)
    if value:
        return value
    block = os.environ.get(block_variable) if block_variable else None
    return _block_value(block) if block else None


def fingerprint(key: str) -> str:
    """A non-secret name for a key: enough to tell two keys apart in a state file or a message."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def configured_triton_key() -> str | None:
    return secret(TRITON_KEY_ENV, TRITON_KEY_BLOCK_ENV)


def write_private(path: Path, data: bytes) -> None:
    """Write `path` readable by its owner only, from its first byte (no window at 0644)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    tmp.replace(path)


def new_triton_key(key_file: Path) -> str:
    """A fresh key for an embedded server, kept in `key_file` (owner-only)."""
    key = secrets.token_urlsafe(KEY_BYTES)
    write_private(key_file, key.encode())
    return key


def triton_key(key_file: str | None) -> str | None:
    """The key for a Triton's control APIs: the configured one, else the embedded server's file."""
    configured = configured_triton_key()
    if configured:
        return configured
    if key_file:
        try:
            return Path(key_file).read_text().strip()
        except OSError:
            return None
    return None


def triton_http_headers(key_file: str | None) -> dict[str, str]:
    key = triton_key(key_file)
    return {TRITON_KEY_HEADER: key} if key else {}


def triton_grpc_headers(key_file: str | None) -> dict[str, str]:
    key = triton_key(key_file)
    return {GRPC_METADATA_PREFIX + TRITON_KEY_HEADER: key} if key else {}


def edge_headers() -> dict[str, str]:
    """What conveyor sends the edge with each inference request: its client key."""
    key = secret(EDGE_KEY_ENV, EDGE_KEY_BLOCK_ENV)
    if not key:
        raise CredentialError(
            f"an edge is configured (CONVEYOR_EDGE_HTTP_URL) but conveyor has no client key for "
            f"it: set {EDGE_KEY_ENV}, or name a Secret block holding it in {EDGE_KEY_BLOCK_ENV}"
        )
    return {"authorization": f"Bearer {key}"}  # lower case: gRPC metadata


def triton_restriction_flags(key: str) -> list[str]:
    """tritonserver flags that put the control APIs behind the key, on HTTP and gRPC alike."""
    apis = ",".join(TRITON_RESTRICTED)
    return [
        f"--http-restricted-api={apis}:{TRITON_KEY_HEADER}={key}",
        f"--grpc-restricted-protocol={apis}:{TRITON_KEY_HEADER}={key}",
    ]


def triton_refused(where: str, operation: str) -> CredentialError:
    return CredentialError(
        f"Triton at {where} refused {operation}: its model-control API is restricted and "
        f"conveyor's key was missing or wrong. Set {TRITON_KEY_ENV} (or {TRITON_KEY_BLOCK_ENV}, "
        "the name of a Prefect Secret block holding it) to the key the server was started with "
        "(TRITON_ADMIN_KEY in infra/.env for compose). The embedded server keeps its own in "
        "<CONVEYOR_HOME>/triton/admin.key; if it was started with another key, restart it with "
        "`conveyor triton down` and `conveyor triton up`."
    )


def pushgateway_auth() -> tuple[str, str] | None:
    """Basic-auth credentials for the Pushgateway, or None when none are configured."""
    user = os.environ.get(PUSHGATEWAY_USER_ENV)
    password = secret(PUSHGATEWAY_PASSWORD_ENV, PUSHGATEWAY_PASSWORD_BLOCK_ENV)
    if not user and not password:
        return None
    if not user or not password:
        raise CredentialError(
            f"the Pushgateway credentials are half set: set both {PUSHGATEWAY_USER_ENV} and "
            f"{PUSHGATEWAY_PASSWORD_ENV} (or {PUSHGATEWAY_PASSWORD_BLOCK_ENV}), or neither"
        )
    return user, password


def pushgateway_refused(url: str, status: int) -> str:
    return (
        f"the Pushgateway at {url} answered {status}: it takes pushes only with credentials. "
        f"Set {PUSHGATEWAY_USER_ENV} and {PUSHGATEWAY_PASSWORD_ENV} (or "
        f"{PUSHGATEWAY_PASSWORD_BLOCK_ENV}, a Prefect Secret block) to a user of its "
        "--web.config.file (PUSHGATEWAY_USER / PUSHGATEWAY_PASSWORD in infra/.env for compose)"
    )


def load_mlflow_password() -> None:
    """MLflow reads its credentials from the environment itself; a password kept in a Prefect
    Secret block is put there for this process before the first MLflow call."""
    if os.environ.get(MLFLOW_PASSWORD_ENV):
        return
    block = os.environ.get(MLFLOW_PASSWORD_BLOCK_ENV)
    if block:
        os.environ[MLFLOW_PASSWORD_ENV] = _block_value(block)


def mlflow_refused(uri: str, status: int, operation: str) -> CredentialError:
    anonymous = not os.environ.get(MLFLOW_USER_ENV)
    who = "no credentials were sent" if anonymous else f"user {os.environ[MLFLOW_USER_ENV]!r}"
    fix = (
        f"set {MLFLOW_USER_ENV} and {MLFLOW_PASSWORD_ENV} (or {MLFLOW_PASSWORD_BLOCK_ENV}, a "
        "Prefect Secret block) to the worker's MLflow user"
        if anonymous or status == 401
        else "give that user EDIT on the model's experiment and registered model (MLflow's "
        "basic-auth permissions), or use the worker's user"
    )
    return CredentialError(
        f"MLflow at {uri} refused {operation} ({status}, {who}): {fix}. In compose the users "
        "are MLFLOW_WORKER_USER / MLFLOW_WORKER_PASSWORD in infra/.env."
    )


def prefect_refused(url: str) -> CredentialError:
    return CredentialError(
        f"the Prefect API at {url} answered 401 Unauthorized: it runs with "
        "PREFECT_SERVER_API_AUTH_STRING. Set PREFECT_API_AUTH_STRING to the same `user:password` "
        "(PREFECT_AUTH_STRING in infra/.env for compose) for conveyor, `make deploy` and workers."
    )


# How MLflow's REST client says it could not reach its server (after its own retries).
UNREACHABLE = ("Max retries exceeded", "Failed to establish a new connection")


# Prefect 3.8's words when its temporary API does not answer in time (prefect.server.api.server).
EPHEMERAL_TIMEOUT = "Timed out while attempting to connect to ephemeral Prefect API server"


def ephemeral_api_late() -> ConveyorError:
    """A busy machine is not a failure of the model: say so, and what to change."""
    import os

    waited = os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "20")
    return ConveyorError(
        f"Prefect's temporary API (used when PREFECT_API_URL is unset) did not answer within "
        f"{waited} s: the machine is too busy to start it in time. The command stopped before "
        "its flow began, so nothing was changed. Run it again, give the API longer with "
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=<seconds>, or point PREFECT_API_URL "
        "at a running Prefect server (`make ui` starts one)."
    )


def explain(exc: BaseException) -> ConveyorError | None:
    """The paragraph for a service's refusal of conveyor's credentials, for a tracking server
    that does not answer, or for Prefect's temporary API starting too late; None for other
    errors."""
    import httpx
    from mlflow.exceptions import MlflowException

    if isinstance(exc, CredentialError):
        return exc
    if isinstance(exc, RuntimeError) and str(exc).startswith(EPHEMERAL_TIMEOUT):
        return ephemeral_api_late()
    if isinstance(exc, MlflowException) and any(s in str(exc) for s in UNREACHABLE):
        import mlflow

        return ConveyorError(
            f"the MLflow tracking server at {mlflow.get_tracking_uri()} did not answer "
            f"({str(exc)[:160]}…). Start it (or fix CONVEYOR_MLFLOW_TRACKING_URI) and run "
            "again; `conveyor doctor --repair` settles what an interrupted release left."
        )
    if isinstance(exc, MlflowException) and exc.error_code in MLFLOW_REFUSALS:
        import mlflow

        # "API request to endpoint /api/2.0/mlflow/<operation> failed with error code 403 ..."
        words = str(exc).split()
        operation = next((w for w in words if w.startswith("/api/")), "the request")
        return mlflow_refused(mlflow.get_tracking_uri(), exc.get_http_status_code(), operation)
    if isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code == 401:
        from prefect.settings import PREFECT_API_URL

        api = PREFECT_API_URL.value()
        if api and str(exc.request.url).startswith(api):
            return prefect_refused(api)
    return None
