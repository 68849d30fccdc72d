"""Real servers started by tests on 127.0.0.1, stopped by their own process ids."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process(process: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    """Stop a process and everything in its session (it was started with start_new_session)."""
    if process.poll() is not None:
        return
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "CONVEYOR_"))}
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    env.update(extra)
    return env


@contextmanager
def serving(
    command: list[str],
    env: dict[str, str],
    log_path: Path,
    up: Callable[[], bool],
    timeout_s: float,
) -> Iterator[None]:
    """Run `command` in its own session until the block ends; wait for `up()` first."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            deadline = time.monotonic() + timeout_s
            while not up():
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{command[0]} did not come up: {log_path.read_text()[-2000:]}"
                    )
                time.sleep(0.3)
            yield
        finally:
            stop_process(process)


def _answers(url: str, status: int | None = None) -> Callable[[], bool]:
    def check() -> bool:
        try:
            response = httpx.get(url, timeout=2)
        except httpx.HTTPError:
            return False
        return status is None or response.status_code == status

    return check


@contextmanager
def prefect_server(home: Path, timeout_s: float = 90.0, **settings: str) -> Iterator[str]:
    """`prefect server start` in its own PREFECT_HOME (plus PREFECT_* `settings`); yields the
    API URL."""
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    command = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    env = clean_env(PREFECT_HOME=str(home), **settings)
    with serving(command, env, home / "server.log", _answers(f"{api}/health", 200), timeout_s):
        yield api


@contextmanager
def pushgateway(base: Path, users: dict[str, str], timeout_s: float = 30.0) -> Iterator[str]:
    """Debian's Pushgateway behind basic auth for `users` (name → password), as compose runs
    it (infra/render_secrets.py writes the web config); yields its URL."""
    from infra.render_secrets import pushgateway_web_config
    from infra.stack import system_binary

    base.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    web_config = base / "pushgateway-web.yml"
    web_config.write_text(pushgateway_web_config(users))
    command = [
        system_binary("prometheus-pushgateway", "prometheus-pushgateway"),
        f"--web.listen-address=127.0.0.1:{port}",
        f"--web.config.file={web_config}",
        # Debian's build persists to /var/lib/prometheus by default: earlier runs would leak in.
        f"--persistence.file={base / 'pushgateway.data'}",
    ]
    user, password = next(iter(users.items()))

    def up() -> bool:
        try:
            return httpx.get(f"{url}/-/ready", auth=(user, password), timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    with serving(command, clean_env(), base / "pushgateway.log", up, timeout_s):
        yield url


@contextmanager
def moto_s3(log_dir: Path, require_auth: bool = False, timeout_s: float = 30.0) -> Iterator[str]:
    """moto's S3-compatible server on 127.0.0.1; yields its endpoint URL."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = clean_env()
    if require_auth:
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"  # every request is authenticated from the start
    command = [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    with serving(command, env, log_dir / f"moto-{port}.log", _answers(endpoint), timeout_s):
        yield endpoint


def in_smoke_test(spec_path: str) -> bool:
    """Whether the newest release of `spec_path` is running its smoke-test subflow."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
    )

    from tasks.ops.resume import releases

    runs = releases(spec_path)
    if not runs:
        return False
    with get_client(sync_client=True) as client:
        smoke = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["smoke-test"])),
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[runs[0].id])
            ),
        )
    return any(run.state is not None and run.state.is_running() for run in smoke)


LOCKED = "database is locked"


@dataclass
class ProductionStack:
    """`make stack` started by the tests: its directory and the env file it wrote."""

    root: Path
    env: dict[str, str]  # exactly compose's x-conveyor-env, for this stack

    @property
    def api(self) -> str:
        return self.env["PREFECT_API_URL"]

    @property
    def auth(self) -> tuple[str, str]:
        user, password = self.env["PREFECT_API_AUTH_STRING"].split(":", 1)
        return user, password

    def flow_run_logs(self, run_id: str, tail: int = 6000) -> str:
        """A flow run's log lines from the stack's Prefect API (the end of them): what a failed
        run's assertion shows."""
        import httpx

        body = {"logs": {"flow_run_id": {"any_": [run_id]}}}
        response = httpx.post(f"{self.api}/logs/filter", json=body, auth=self.auth, timeout=10)
        response.raise_for_status()
        return "\n".join(str(e["message"])[:2000] for e in response.json())[-tail:]

    @property
    def secrets(self) -> dict[str, str]:
        """The credentials the stack generated, under infra/.env's names."""
        from infra.stack import SECRETS_FILE, read_env_file

        return read_env_file(self.root / SECRETS_FILE)

    def _state(self) -> dict[str, dict[str, int]]:
        from infra.stack import STATE_FILE

        return json.loads((self.root / STATE_FILE).read_text())  # type: ignore[no-any-return]

    def pid(self, service: str) -> int:
        return self._state()["pids"][service]

    def port(self, service: str, container_port: int) -> int:
        return self._state()["ports"][f"{service}:{container_port}"]

    def s3_objects(self) -> Iterator[tuple[str, bytes]]:
        """(`bucket/key`, body) of every object in the stack's buckets."""
        from infra.stack import bucket_names, s3_client

        client = s3_client(self.env)
        for bucket in bucket_names(self.secrets):
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                for item in page.get("Contents", []):
                    body = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
                    yield f"{bucket}/{item['Key']}", body

    def up(self) -> str:
        """`make stack` again, as an operator (or systemd) runs it after a crash: it starts what
        is down and reports the rest as already up."""
        done = _stack_command(self.root, "up", timeout_s=300)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout


def _stack_command(root: Path, *args: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "python"), "-m", "infra.stack", *args, "--dir", str(root)],
        cwd=Path(__file__).resolve().parent.parent,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


@contextmanager
def production_stack(
    scrape_interval: str | None = None, **prefect_settings: str
) -> Iterator[ProductionStack]:
    """The production topology (`infra/stack.py`) on free ports; stopped, and checked to leave
    no process behind, when the block ends."""
    from infra.stack import ENV_FILE, read_env_file

    # 0700 and root's, like a clone under /root: PostgreSQL (run as its own user when the
    # tests run as root) cannot reach it, and the stack puts its data where it can.
    root = Path(tempfile.mkdtemp(prefix="conveyor-stack-"))
    settings = [f"--prefect-setting={k}={v}" for k, v in prefect_settings.items()]
    if scrape_interval:
        settings.append(f"--scrape-interval={scrape_interval}")
    started = _stack_command(root, "up", "--free-ports", *settings, timeout_s=600)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield ProductionStack(root, read_env_file(root / ENV_FILE))
    finally:
        stopped = _stack_command(root, "down", timeout_s=300)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        # What SQLite gave the Prefect servers under several writers; on PostgreSQL, nothing.
        locked = [
            p.name
            for p in (root / "logs").glob("*.log")
            if LOCKED in p.read_text("utf-8", "replace")
        ]
        assert locked == [], f"`{LOCKED}` in {locked} (logs kept in {root / 'logs'})"
        shutil.rmtree(root)  # only its logs were left; kept when stopping failed


# --- a server that fails on cue -------------------------------------------------------------

# An S3 request head as clients send it: method, path, headers (boto3 and Triton's AWS SDK
# send each head in one write, ahead of any body, and never pipeline).
_REQUEST_HEAD = re.compile(
    rb"\A(GET|PUT|HEAD|POST|DELETE) (\S+) HTTP/1\.[01]\r\n(.*?)\r\n\r\n", re.S
)
_REFUSED_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
    b"<Message>refused by the test's fault proxy</Message></Error>"
)
REFUSED = (
    b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(_REFUSED_BODY)
) + _REFUSED_BODY


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    user_agent: str


class FaultProxy:
    """A TCP proxy on 127.0.0.1 in front of an HTTP server (moto's S3 here) that a test breaks
    on cue. moto keeps its objects in memory, so stopping the real server would lose the
    champion's files too; stopping this proxy is the outage a client sees (connections reset,
    then refused) with the data still there when it comes back.

    `refuse(rule)`: requests the rule matches get S3's 403 AccessDenied (an expired credential,
    a changed bucket policy), every other request passes. `down_on(rule)`: the first request the
    rule matches is never answered and the proxy goes down until `restore()`."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.removeprefix("http://").rstrip("/").split(":")
        self.upstream = (host, int(port))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.seen: list[Request] = []
        self._refuse: Callable[[Request], bool] | None = None
        self._down_on: Callable[[Request], bool] | None = None
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.restore()

    # The switches.
    def refuse(self, rule: Callable[[Request], bool] | None) -> None:
        self._refuse = rule

    def down_on(self, rule: Callable[[Request], bool] | None) -> None:
        self._down_on = rule

    @property
    def is_down(self) -> bool:
        return self._listener is None

    def down(self) -> None:
        """Stop answering: every open connection reset, new ones refused."""
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._open = self._open, set()
        for sock in [s for s in (listener,) if s is not None] + list(sockets):
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def restore(self) -> None:
        self._down_on = None
        self._refuse = None
        if self._listener is not None:
            return
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    close = down

    # The plumbing.
    def _track(self, *sockets: socket.socket) -> bool:
        with self._lock:
            if self._listener is None:
                return False
            self._open.update(sockets)
            return True

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # down
            try:
                server = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                client.close()
                continue
            if not self._track(client, server):
                client.close()
                server.close()
                return
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, upstream: bool) -> None:
        try:
            while chunk := source.recv(65536):
                if upstream and (head := _REQUEST_HEAD.match(chunk)):
                    headers = head.group(3).decode("latin-1").lower()
                    agent = re.search(r"^user-agent:\s*(.*)$", headers, re.M)
                    request = Request(
                        head.group(1).decode(), head.group(2).decode("latin-1"),
                        agent.group(1) if agent else "",
                    )  # fmt: skip
                    self.seen.append(request)
                    if self._down_on is not None and self._down_on(request):
                        self.down()
                        return
                    if self._refuse is not None and self._refuse(request):
                        source.sendall(REFUSED)
                        break
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            with self._lock:
                self._open -= {source, sink}
