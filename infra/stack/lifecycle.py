"""`up` (every service in order, idempotent), `down` (leaves no process) and `status`."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time

from infra.stack.compose import ENV_FILE, StackError
from infra.stack.data_services import _as_postgres, postgres_data
from infra.stack.handover import handover
from infra.stack.processes import _signal, alive, marked_processes, stop_pid, system_binary
from infra.stack.services import (
    _triton_environment,
    is_up,
    replicas,
    services,
    triton_settings,
)
from infra.stack.state import Stack, env_file_text, write_private


def up(stack: Stack) -> list[str]:
    lines = [stack.notice] if stack.notice else []
    for name, start in services():
        if is_up(stack, name):
            lines.append(f"{name:<16} already up (pid {stack.pids.get(name)})")
            continue
        lines.append(f"{name:<16} {start(stack)}")
    env_path = stack.root / ENV_FILE
    write_private(
        env_path,
        env_file_text(
            stack.worker_environment(),
            "compose's x-conveyor-env for this stack: `source` it to point conveyor at it.",
        ),
    )
    return lines + handover(stack)


def down(stack: Stack) -> list[str]:
    lines = []
    for name, _ in reversed(services()):
        pid = stack.pids.pop(name, None)
        if name in replicas():
            from tasks.serving import triton_server

            with _triton_environment(stack):
                stopped = triton_server.stop(triton_settings(stack, name))
        elif name == "postgres" and alive(pid):
            data = postgres_data(stack)
            command = [
                system_binary("pg_ctl", "postgresql"),
                "-D",
                str(data),
                "-m",
                "fast",
                "-w",
                "stop",
            ]
            subprocess.run(_as_postgres(command), capture_output=True, check=False)
            stopped = True
        elif alive(pid):
            assert pid is not None
            stop_pid(pid, grace_s=20)
            stopped = True
        else:
            stopped = False
        lines.append(f"{name:<16} {'stopped' if stopped else 'was not running'}")
        stack.save()
    left = marked_processes(stack.root)
    for pid in left:
        _signal(pid, signal.SIGKILL)
    if left:
        lines.append(f"killed {len(left)} leftover process(es): {left}")
    time.sleep(0.5)
    still = marked_processes(stack.root)
    if still:
        raise StackError(f"processes of the stack are still running: {still}")
    # moto's S3 keeps its objects in memory only: a registry and a database kept past it would
    # point at artifacts and model files that are gone. The logs stay for a post-mortem.
    elsewhere = postgres_data(stack)
    if not elsewhere.is_relative_to(stack.root):
        shutil.rmtree(elsewhere, ignore_errors=True)
        elsewhere.with_suffix(".log").unlink(missing_ok=True)
    for child in stack.root.iterdir():
        if child.name != "logs":
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()
    lines.append(f"data deleted (logs kept in {stack.root / 'logs'})")
    return lines


def status(stack: Stack) -> list[str]:
    return [
        f"{name:<16} {'up' if is_up(stack, name) else 'down'}"
        + (f" (pid {stack.pids[name]})" if name in stack.pids else "")
        for name, _ in services()
    ]
