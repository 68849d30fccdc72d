"""The MLflow stores conveyor talks to: one client per call, the embedded SQLite registry created
owner-only and migrated once, a tracking server's credentials checked before any work."""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from tasks.core import credentials
from tasks.core.errors import ConveyorError
from tasks.core.settings import Settings


class RegistryError(ConveyorError):
    """MLflow refused an operation, or has no such run, version or model."""


def client(settings: Settings) -> MlflowClient:
    # Progress bars on every artifact download drown the flow logs.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    credentials.load_mlflow_password()
    # The fluent API (start_run, log_model) reads the process-wide URI; set it for both.
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    if not settings.home.exists():
        # The state directory holds the registry and the Triton key: its owner's alone.
        settings.home.mkdir(parents=True, mode=0o700, exist_ok=True)  # racing processes
    if settings.mlflow_tracking_uri is None:
        _create_sqlite_registry(settings)
    mlflow_client = MlflowClient(
        tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri
    )
    if settings.tracking_uri.startswith(("http://", "https://")):
        user = os.environ.get(credentials.MLFLOW_USER_ENV, "")
        password = os.environ.get(credentials.MLFLOW_PASSWORD_ENV, "")
        _check_access(settings.tracking_uri, user, credentials.fingerprint(password))
    return mlflow_client


def _create_sqlite_registry(settings: Settings) -> None:
    """The embedded registry's SQLite file, owner-only, with MLflow's schema in it. Processes
    that open a new file at once (two `conveyor run` on a fresh state directory) each run
    MLflow's schema migrations on it and fail (alembic: "expected to match one row", "table
    already exists"): the first to take the lock creates the schema, the others find it."""
    if settings.tracking_uri in _OPENED:
        return
    if _has_schema(settings.mlflow_db):
        # Opened before: MLflow's stores check the schema themselves; a second client and two
        # searches here would cost every read-only command ~0.4 s.
        _OPENED.add(settings.tracking_uri)
        return
    lock = settings.home / "mlflow.db.lock"
    with os.fdopen(os.open(lock, os.O_CREAT | os.O_WRONLY, 0o600), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
        if not settings.mlflow_db.exists():
            # SQLite takes an empty file as a new database: create it owner-only before MLflow
            # creates it with the umask's permissions.
            os.close(os.open(settings.mlflow_db, os.O_CREAT | os.O_WRONLY, 0o600))
        # Both stores (tracking and registry) migrate the schema when first opened; MLflow then
        # keeps them for the process.
        store = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
        store.search_experiments(max_results=1)
        store.search_registered_models(max_results=1)
    _OPENED.add(settings.tracking_uri)


def _has_schema(db: Path) -> bool:
    """Whether MLflow's schema is in the file (its migrations record their version there)."""
    if not db.is_file() or db.stat().st_size == 0:
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as connection:
            found = connection.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'"
            ).fetchone()
    except sqlite3.Error:
        return False  # locked or not a database: the locked path below says what is wrong
    return found is not None


# SQLite registries this process has opened (MLflow keeps their stores, schema checked).
_OPENED: set[str] = set()


@cache
def _check_access(uri: str, user: str, password_fingerprint: str) -> None:
    """One read per server and credentials per process: missing or wrong credentials are one
    clear paragraph before any work, not a 401 in the middle of a release."""
    with refusals_explained():
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)


@contextmanager
def refusals_explained() -> Iterator[None]:
    """MLflow's 401/403 as the paragraph that says which credentials or permission to fix."""
    try:
        yield
    except MlflowException as exc:
        refused = credentials.explain(exc)
        if refused is None:
            raise
        raise refused from exc
