"""What a killed `conveyor` command started is ended by the next one.

A command starts helpers that should not outlive it: Prefect's ephemeral API server (a uvicorn
process of about 250 MB), a local Dask cluster's workers. Killed with SIGKILL (an OOM kill, a lost
session), the command cannot stop them, and they run on, reparented to init, holding memory and
ports. Each command therefore marks its environment with its own identity (`MARK`: pid and
start time, so a recycled pid is never mistaken for it); every process it starts inherits the
mark, and the next command ends the processes whose marked owner is gone.

The embedded Triton is deliberately left unmarked (`triton_server` removes the mark): it
outlives the command that started it by design, and doctor supervises it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

MARK = "CONVEYOR_OWNER"
TERM_GRACE_S = 5.0  # uvicorn stops in well under a second; a hung helper gets SIGKILL after this


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name in (...) may hold spaces and parentheses: split after the last ')'.
    return stat.rsplit(")", 1)[1].split()[19]


def _running(pid: int) -> bool:
    """Alive and not a zombie: an orphan's exit is reaped by init, which in a container may
    never happen, and a zombie holds nothing but its pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def identity(pid: int) -> str | None:
    start = _start_time(pid)
    return None if start is None else f"{pid}:{start}"


def mark_children() -> None:
    """Mark this process as the owner of every process it starts from now on."""
    own = identity(os.getpid())
    if own is not None:
        os.environ[MARK] = own


def unmarked_environment(env: dict[str, str]) -> dict[str, str]:
    """`env` without the mark: for a process meant to outlive its starter."""
    return {k: v for k, v in env.items() if k != MARK}


def _owner_of(pid: int) -> str | None:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None  # gone, or another user's
    prefix = f"{MARK}=".encode()
    for entry in environ.split(b"\0"):
        if entry.startswith(prefix):
            return entry[len(prefix) :].decode(errors="replace")
    return None


def _alive(owner: str) -> bool:
    pid, _, _ = owner.partition(":")
    return pid.isdigit() and identity(int(pid)) == owner


def orphans() -> list[int]:
    """Processes started by a conveyor command that is no longer running."""
    me = os.getpid()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        owner = _owner_of(int(entry.name))
        if owner is not None and not _alive(owner):
            found.append(int(entry.name))
    return found


def end_orphans(grace_s: float = TERM_GRACE_S) -> list[int]:
    """End what dead conveyor commands left running: SIGTERM, then SIGKILL after `grace_s`.
    Returns the pids that were running."""
    pids = orphans()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_running(p) for p in pids):
        time.sleep(0.05)
    for pid in pids:
        if _running(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    return pids
