"""The stack's processes: spawned marked (so `down` finds every one, whatever its process
group), waited for until ready, stopped with a grace period."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from infra.stack.compose import HOST, MARKER, StackError
from infra.stack.state import Stack


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def spawn(stack: Stack, name: str, command: list[str], env: dict[str, str], cwd: Path) -> int:
    with stack.log(name).open("ab") as log:
        log.write(f"\n--- make stack: {shlex.join(command)}\n".encode())
        log.flush()
        process = subprocess.Popen(
            command,
            env=env,
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    stack.pids[name] = process.pid
    stack.save()
    return process.pid


def wait_until(stack: Stack, name: str, ready: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    pid = stack.pids.get(name)
    while not ready():
        if (pid and not alive(pid)) or time.monotonic() > deadline:
            tail = stack.log(name).read_text(errors="replace")[-3000:]
            why = "exited" if pid and not alive(pid) else f"was not ready in {timeout_s:.0f} s"
            raise StackError(f"{name} {why}; the end of {stack.log(name)}:\n{tail}")
        time.sleep(0.3)


def http_ok(
    url: str, auth: tuple[str, str] | None = None, context: ssl.SSLContext | None = None
) -> Callable[[], bool]:
    import httpx

    def check() -> bool:
        try:
            answer = httpx.get(url, timeout=2, auth=auth, verify=context or True)
            return answer.status_code == 200
        except httpx.HTTPError:
            return False

    return check


def port_open(port: int) -> Callable[[], bool]:
    def check() -> bool:
        with socket.socket() as sock:
            sock.settimeout(1)
            return sock.connect_ex((HOST, port)) == 0

    return check


def system_binary(name: str, package: str) -> str:
    # Debian keeps PostgreSQL's server programs off PATH, under its major version.
    versions = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True)
    # nginx is in /usr/sbin, off a non-root user's PATH.
    found = (
        shutil.which(name)
        or shutil.which(name, path="/usr/sbin:/sbin")
        or next((str(p) for p in versions), None)
    )
    if found is None:
        raise StackError(
            f"{name} is not installed: `make system-deps` installs it as root "
            f"(apt-get install {package})"
        )
    return found


def marked_processes(root: Path) -> list[int]:
    """Processes carrying this stack's marker: everything it started and their children."""
    needle = f"{MARKER}={root}\0".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if needle in (entry / "environ").read_bytes() + b"\0" and alive(int(entry.name)):
                found.append(int(entry.name))
    return found


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def stop_pid(pid: int, grace_s: float) -> None:
    # A Prefect worker ignores its first SIGTERM while it winds down: a second one ends it.
    for sig in (signal.SIGTERM, signal.SIGTERM):
        _signal(pid, sig)
        deadline = time.monotonic() + grace_s / 2
        while alive(pid) and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.2)
    if alive(pid):
        _signal(pid, signal.SIGKILL)
    _reap(pid)
