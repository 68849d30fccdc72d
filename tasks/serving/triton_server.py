"""The embedded Triton: the tritonserver binary shipped in the nvidia-pytriton wheel, on loopback.

It runs detached (its own session) so it outlives the command that started it and keeps serving the
champion; its pid, ports and repository are recorded in `<home>/triton/server.json`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel

from tasks.core import credentials
from tasks.core.settings import Settings
from tasks.core.storage import open_store
from tasks.serving import triton_install, triton_ports
from tasks.serving.triton_ports import HOST, Endpoint, TritonServerError

if TYPE_CHECKING:
    pass

STATE_FILE = "server.json"
LOG_FILE = "tritonserver.log"
REPOSITORY_MARKER = ".conveyor-repository"
KEY_FILE = "admin.key"
START_LOCK = "start.lock"
CONFIG = "/config.pbtxt"


class ServerState(BaseModel):
    pid: int
    http_port: int
    grpc_port: int
    metrics_port: int
    repository: str
    log_path: str
    started_at: datetime
    # The control key's file when the server generated it, None when it came from the
    # environment or a Secret block; its fingerprint tells a process holding another key why it
    # is refused.
    key_file: str | None = None
    key_fingerprint: str = ""

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(
            http=f"{HOST}:{self.http_port}", grpc=f"{HOST}:{self.grpc_port}", key_file=self.key_file
        )

    @property
    def metrics_url(self) -> str:
        return f"http://{HOST}:{self.metrics_port}/metrics"


def triton_repository(repository: str) -> str:
    """Triton's spelling of a repository: an S3 endpoint override goes inside the URI
    (`s3://http://host:port/bucket/prefix`); credentials come from the AWS variables."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if repository.startswith("s3://") and endpoint:
        return f"s3://{endpoint.rstrip('/')}/{repository.removeprefix('s3://')}"
    return repository


def _alive(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    # Guards against a recycled pid now belonging to another program.
    return b"tritonserver" in cmdline


def _health(state: ServerState, probe: str) -> bool:
    url = f"http://{state.endpoint.http}/v2/health/{probe}"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _state_path(settings: Settings) -> Path:
    return settings.triton_dir / STATE_FILE


def read_state(settings: Settings) -> ServerState | None:
    path = _state_path(settings)
    if not path.is_file():
        return None
    try:
        return ServerState.model_validate_json(path.read_text())
    except ValueError:
        return None


def _write_state(settings: Settings, state: ServerState) -> None:
    path = _state_path(settings)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(state.model_dump_json(indent=2))
    tmp.replace(path)


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def status(settings: Settings) -> ServerState | None:
    """The running embedded server, or None.

    Live, not ready: with strict readiness Triton answers "not ready" while it unloads a model.
    """
    state = read_state(settings)
    if state is None or not _alive(state.pid) or not _health(state, "live"):
        return None
    return state


def start(settings: Settings) -> ServerState:
    """Start tritonserver detached, in explicit model-control mode, and wait until it is ready."""
    running = status(settings)
    if running is not None:
        raise TritonServerError(
            f"the embedded Triton is already running (pid {running.pid}, "
            f"http {running.endpoint.http}); stop it with `conveyor triton down`"
        )
    if read_state(settings) is not None:
        # A server that died (killed, OOM) leaves its state file and possibly its stubs: clear
        # both before starting over, so no stub of the dead server keeps its memory.
        stop(settings)
    install = triton_install.find_install()
    settings.triton_dir.mkdir(parents=True, exist_ok=True)
    # Its log, state and key are the operator's: nobody else on the host reads them.
    settings.triton_dir.chmod(0o700)
    key_path = settings.triton_dir / KEY_FILE
    key = credentials.configured_triton_key()
    if key is None:
        key, key_file = credentials.new_triton_key(key_path), str(key_path)
    else:
        # A configured key is the only one: a stale generated file must not be mistaken for it.
        key_path.unlink(missing_ok=True)
        key_file = None
    repository = settings.repository
    if repository.startswith("s3://"):
        store = open_store(repository)
        # S3 has keys, not folders: Triton calls an empty prefix "not a valid directory".
        if not store.exists(REPOSITORY_MARKER):
            store.write_file(REPOSITORY_MARKER, b"Triton model repository managed by conveyor\n")
    else:
        Path(repository).mkdir(parents=True, exist_ok=True)
    ports = triton_ports.kept_ports(settings)
    log_path = settings.triton_dir / LOG_FILE
    command = [
        str(install.binary),
        f"--model-repository={triton_repository(repository)}",
        f"--backend-directory={triton_install.backends_dir(settings, install)}",
        "--model-control-mode=explicit",
        f"--http-address={HOST}",
        f"--http-port={ports['http']}",
        f"--grpc-address={HOST}",
        f"--grpc-port={ports['grpc']}",
        f"--metrics-address={HOST}",
        f"--metrics-port={ports['metrics']}",
        # p50/p90/p99 per model as summaries: what the latency alert and dashboard read.
        "--metrics-config=summary_latencies=true",
        "--exit-timeout-secs=5",
        "--log-verbose=0",
        # Only the KServe HTTP/gRPC endpoints, whose control APIs the key guards.
        "--allow-sagemaker=false",
        "--allow-vertex-ai=false",
        *credentials.triton_restriction_flags(key),
    ]
    with log_path.open("ab") as log:
        log.write(
            f"\n--- conveyor starting tritonserver {datetime.now(UTC).isoformat()}\n".encode()
        )
        log.flush()
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=triton_install.environment(install),
            cwd=settings.triton_dir,
            start_new_session=True,
        )
    state = ServerState(
        pid=process.pid,
        http_port=ports["http"],
        grpc_port=ports["grpc"],
        metrics_port=ports["metrics"],
        repository=repository,
        log_path=str(log_path),
        started_at=datetime.now(UTC),
        key_file=key_file,
        key_fingerprint=credentials.fingerprint(key),
    )
    _write_state(settings, state)
    deadline = time.monotonic() + settings.triton_startup_timeout_s
    while not _health(state, "ready"):
        if process.poll() is not None:
            _state_path(settings).unlink(missing_ok=True)
            tail = _log_tail(log_path)
            hint = ""
            if "already in use" in tail.lower():
                hint = " A port it was given is in use: set the CONVEYOR_TRITON_*_PORT variables."
            raise TritonServerError(
                f"tritonserver exited with code {process.returncode} while starting.{hint}\n"
                f"Last lines of {log_path}:\n{tail}"
            )
        if time.monotonic() > deadline:
            stop(settings)
            raise TritonServerError(
                f"tritonserver not ready after {settings.triton_startup_timeout_s:.0f} s; "
                f"see {log_path}:\n{_log_tail(log_path)}"
            )
        time.sleep(0.2)
    return state


def stop(settings: Settings, timeout_s: float = 15.0) -> bool:
    """Stop the embedded server by its recorded pid; True if one was running.

    The server was started in a session of its own, so its process group is the server and its
    python-backend stubs: the whole group goes, or stubs of a killed server keep running."""
    state = read_state(settings)
    _state_path(settings).unlink(missing_ok=True)
    if state is None:
        return False
    running = _alive(state.pid)
    if running:
        _signal_group(state.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while _alive(state.pid) and time.monotonic() < deadline:
            _reap(state.pid)
            time.sleep(0.1)
    # SIGKILL for whatever is left of the group: a hung server, or stubs that outlived it.
    if _alive(state.pid) or stray_stubs(state.pid):
        _signal_group(state.pid, signal.SIGKILL)
    _reap(state.pid)
    return running


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def stray_stubs(pgid: int) -> list[int]:
    """Python-backend stub processes still in the process group of a server started as `pgid`
    (checked by name, so a recycled group id of another program is never signalled)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # Field 5 of /proc/PID/stat is the process group; the name in (...) may hold spaces.
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and b"triton_python_backend_stub" in cmdline:
            found.append(int(entry.name))
    return found


def _reap(pid: int) -> None:
    # When this process started the server it is its parent: collect the exit status so the pid
    # does not linger as a zombie that still looks alive.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


@contextlib.contextmanager
def _one_starter(settings: Settings) -> Iterator[None]:
    """One process of a state directory at a time looks for the server and starts it: releases
    of two models on one host otherwise both start one, racing on the backend files, and the
    second's state file hides the first server. The others wait (at most a start) and find it up.
    The kernel drops the lock with its holder, so a killed starter blocks nobody."""
    settings.triton_dir.mkdir(parents=True, exist_ok=True)
    with (settings.triton_dir / START_LOCK).open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_running(settings: Settings) -> ServerState:
    """The embedded server for this state directory, started if it is not running.

    A server that was running and died (its state file is still there) is supervised back: it
    is started cleanly and serves again what its repository says it served."""
    with _one_starter(settings):
        state = status(settings)
        if state is None:
            crashed = read_state(settings) is not None
            state = start(settings)
            if crashed:
                restore_repository(settings, state)
            return state
    if state.repository != settings.repository:
        raise TritonServerError(
            f"the embedded Triton (pid {state.pid}) serves {state.repository}, not "
            f"{settings.repository}; stop it with `conveyor triton down` and run again"
        )
    key = credentials.triton_key(state.key_file)
    if key is None or credentials.fingerprint(key) != state.key_fingerprint:
        configured = "set" if credentials.configured_triton_key() else "unset"
        raise credentials.CredentialError(
            f"the embedded Triton (pid {state.pid}) was started with another control key "
            f"(fingerprint {state.key_fingerprint or 'unknown'}) than this process has "
            f"({credentials.TRITON_KEY_ENV} is {configured}). "
            f"Set {credentials.TRITON_KEY_ENV} to the key it was started with, or restart it "
            "with this process's settings: `conveyor triton down`, then `conveyor triton up`."
        )
    return state


def endpoint(settings: Settings) -> Endpoint:
    """Where this run's Triton is: the configured external server, or the embedded one. A fleet
    of replicas has no one address: `tasks.serving.replicas` names each."""
    if settings.triton_replicas:
        raise TritonServerError(
            "CONVEYOR_TRITON_REPLICAS names a fleet, and this step addresses one Triton; it acts "
            "on each replica through `tasks.serving.replicas` (a bug if you see this)"
        )
    if settings.triton_http_url is not None:
        if settings.triton_grpc_url is None:
            raise TritonServerError(
                "CONVEYOR_TRITON_HTTP_URL is set but CONVEYOR_TRITON_GRPC_URL is not; set both "
                "(host:port each) to use an external Triton"
            )
        return Endpoint(http=settings.triton_http_url, grpc=settings.triton_grpc_url)
    return ensure_running(settings).endpoint


def served_models(settings: Settings) -> list[str]:
    """Models the repository says are served: those with a config.pbtxt, which conveyor writes
    only when a set of versions goes live (`triton.go_live`)."""
    files = open_store(settings.repository).list_files("")
    return sorted(f.split("/")[0] for f in files if f.count("/") == 1 and f.endswith(CONFIG))


def restore_repository(settings: Settings, state: ServerState) -> list[str]:
    """Load every served model from its config.pbtxt (the versions it pins, verified when they
    went live) and wait until each is ready; return their names. Candidates are not among them:
    they were a release's, and are gone with the server that held them."""
    from tritonclient.utils import InferenceServerException

    client = triton_ports.grpc_client(state.endpoint.grpc)
    headers = credentials.triton_grpc_headers(state.key_file)
    names = served_models(settings)
    for name in names:
        try:
            client.load_model(name, headers=headers)
        except InferenceServerException as exc:
            raise TritonServerError(
                f"the embedded Triton was restarted but could not load {name} from "
                f"{settings.repository}: {exc.message()}; `conveyor doctor --repair` reloads "
                "champion and previous from the registry"
            ) from exc
    deadline = time.monotonic() + settings.triton_load_timeout_s
    while not all(client.is_model_ready(name) for name in names):
        if time.monotonic() > deadline:
            raise TritonServerError(
                f"the restarted embedded Triton did not get {names} ready in "
                f"{settings.triton_load_timeout_s:.0f} s; see {state.log_path}"
            )
        time.sleep(0.2)
    return names
