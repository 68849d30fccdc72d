"""The embedded Triton: the tritonserver binary shipped in the nvidia-pytriton wheel, on loopback.

It runs detached (its own session) so it outlives the command that started it and keeps serving the
champion; its pid, ports and repository are recorded in `<home>/triton/server.json`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel

from tasks import credentials, owned_processes
from tasks.errors import ConveyorError
from tasks.settings import Settings
from tasks.storage import open_store

if TYPE_CHECKING:
    import tritonclient.grpc as grpcclient

HOST = "127.0.0.1"
STATE_FILE = "server.json"
PORTS_FILE = "ports.json"  # chosen once per state directory, reused by every restart
LOG_FILE = "tritonserver.log"
REPOSITORY_MARKER = ".conveyor-repository"
KEY_FILE = "admin.key"
START_LOCK = "start.lock"
CONFIG = "/config.pbtxt"


class Endpoint(BaseModel):
    """How to reach a Triton server: HTTP and gRPC as host:port, without a scheme.

    `key_file` is where the embedded server's control key is kept (a reference, never the key:
    endpoints travel in task results). Unset, the key comes from the environment or a Secret
    block (see `tasks.credentials`)."""

    http: str
    grpc: str
    key_file: str | None = None


class TritonServerError(ConveyorError):
    """The embedded Triton could not be started, found or stopped."""


class PortInUseError(TritonServerError):
    """A configured port is already taken."""


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


class TritonInstall(BaseModel):
    binary: Path
    libraries: Path
    python_backend: Path
    stub: Path


def find_install() -> TritonInstall:
    """Locate tritonserver and its python backend inside the installed nvidia-pytriton wheel."""
    try:
        import pytriton
    except ImportError as exc:
        raise TritonServerError(
            "nvidia-pytriton is not installed; run `make run` (or `pip install -e .`) to install it"
        ) from exc
    root = Path(pytriton.__file__).resolve().parent / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    install = TritonInstall(
        binary=root / "bin" / "tritonserver",
        libraries=root.parent.parent / "nvidia_pytriton.libs",
        python_backend=root / "backends" / "python",
        stub=root / "python_backend_stubs" / version / "triton_python_backend_stub",
    )
    for path in (install.binary, install.libraries, install.python_backend, install.stub):
        if not path.exists():
            raise TritonServerError(
                f"{path} is missing from nvidia-pytriton; reinstall nvidia-pytriton==0.7.0 for "
                f"Python {version}"
            )
    return install


def _backends_dir(settings: Settings, install: TritonInstall) -> Path:
    """A backends directory of our own: the wheel's python backend plus the stub for this Python."""
    python = settings.triton_dir / "backends" / "python"
    python.mkdir(parents=True, exist_ok=True)
    sources = [s for s in install.python_backend.iterdir() if s.is_file()] + [install.stub]
    for source in sources:
        _install_file(source, python / source.name)
    return python.parent


def _install_file(source: Path, target: Path) -> None:
    """Copy `source` to `target` unless it is already there, by a rename: a stub of a server that
    died may still be running from `target`, and writing over a running binary fails with
    "Text file busy" while replacing its directory entry does not."""
    same_size = target.is_file() and target.stat().st_size == source.stat().st_size
    if same_size and target.read_bytes() == source.read_bytes():
        return
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.copy2(source, tmp)
    tmp.replace(target)


def _environment(install: TritonInstall) -> dict[str, str]:
    # Unmarked: the server outlives the command that starts it, by design (`owned_processes`).
    env = owned_processes.unmarked_environment(dict(os.environ))
    # The stub must load this interpreter's libpython, not the one bundled in the wheel
    # ("'_thread.RLock' object has no attribute '_recursion_count'" otherwise).
    libdirs = [sysconfig.get_config_var("LIBDIR"), str(install.libraries)]
    if env.get("LD_LIBRARY_PATH"):
        libdirs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = ":".join(d for d in libdirs if d)
    # The stub imports numpy and onnxruntime from whatever `python` is first on PATH.
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


def triton_repository(repository: str) -> str:
    """Triton's spelling of a repository: an S3 endpoint override goes inside the URI
    (`s3://http://host:port/bucket/prefix`); credentials come from the AWS variables."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if repository.startswith("s3://") and endpoint:
        return f"s3://{endpoint.rstrip('/')}/{repository.removeprefix('s3://')}"
    return repository


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _claim_port(port: int, variable: str, chosen_in: Path | None = None) -> int:
    """`port`, checked free; `chosen_in`: the ports file it was chosen in by an earlier start."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # What Triton's own listeners set: connections of a killed server left in TIME_WAIT do
        # not hold the port, a listener of another process does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError as exc:
            why = (
                f"chosen in {chosen_in} when this state directory's Triton first started, so "
                "that its clients keep their address across restarts"
                if chosen_in
                else f"{variable}={port}"
            )
            fix = (
                f"delete {chosen_in} to have new ports chosen (its clients then need the new ones)"
                if chosen_in
                else f"choose another port, or set {variable}=0 for a free one"
            )
            raise PortInUseError(
                f"port {port} on {HOST} is already in use ({why}); stop what holds it "
                f"(`ss -ltnp 'sport = :{port}'` shows it), or {fix}"
            ) from exc
    return port


def _ports(settings: Settings) -> dict[str, int]:
    """The server's ports: the configured ones, else those chosen when this state directory's
    server first started (kept in `PORTS_FILE`), else free ones, then kept. A server that is
    restarted (killed, `conveyor triton down/up`, supervised back) answers where it did."""
    path = settings.triton_dir / PORTS_FILE
    try:
        kept = {k: int(v) for k, v in json.loads(path.read_text()).items()}
    except (OSError, ValueError, AttributeError):
        kept = {}
    configured = {
        "http": (settings.triton_http_port, "CONVEYOR_TRITON_HTTP_PORT"),
        "grpc": (settings.triton_grpc_port, "CONVEYOR_TRITON_GRPC_PORT"),
        "metrics": (settings.triton_metrics_port, "CONVEYOR_TRITON_METRICS_PORT"),
    }
    ports: dict[str, int] = {}
    for name, (port, variable) in configured.items():
        if port:
            ports[name] = _claim_port(port, variable)
        elif kept.get(name):
            ports[name] = _claim_port(kept[name], variable, chosen_in=path)
        else:
            ports[name] = _free_port()
    if ports != kept:
        path.write_text(json.dumps(ports))
    return ports


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
    install = find_install()
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
    ports = _ports(settings)
    log_path = settings.triton_dir / LOG_FILE
    command = [
        str(install.binary),
        f"--model-repository={triton_repository(repository)}",
        f"--backend-directory={_backends_dir(settings, install)}",
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
            env=_environment(install),
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
    """Where this run's Triton is: the configured external server, or the embedded one."""
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


def grpc_client(url: str) -> grpcclient.InferenceServerClient:
    """A gRPC client with a subchannel of its own. gRPC shares subchannels per address across a
    process, with their reconnect back-off: a client made for a Triton restarted on its kept
    ports would inherit the dead server's "connection refused" for up to the back-off (seconds)
    and fail at once. tritonclient's default message sizes and keepalive are kept."""
    import tritonclient.grpc as grpcclient

    keepalive = grpcclient.KeepAliveOptions()
    return grpcclient.InferenceServerClient(
        url,
        channel_args=[
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.max_send_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
            ("grpc.max_receive_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
            ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
            ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
            ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
        ],
    )


def restore_repository(settings: Settings, state: ServerState) -> list[str]:
    """Load every served model from its config.pbtxt (the versions it pins, verified when they
    went live) and wait until each is ready; return their names. Candidates are not among them:
    they were a release's, and are gone with the server that held them."""
    from tritonclient.utils import InferenceServerException

    client = grpc_client(state.endpoint.grpc)
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
