"""The tritonserver binary and python backend inside the nvidia-pytriton wheel, and the
environment the server and its stubs run in."""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from pathlib import Path

from pydantic import BaseModel

from tasks.core import owned_processes
from tasks.core.settings import Settings
from tasks.serving.triton_ports import TritonServerError


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


def backends_dir(settings: Settings, install: TritonInstall) -> Path:
    """A backends directory of our own: the wheel's python backend plus the stub for this Python."""
    python = settings.triton_dir / "backends" / "python"
    python.mkdir(parents=True, exist_ok=True)
    sources = [s for s in install.python_backend.iterdir() if s.is_file()] + [install.stub]
    for source in sources:
        install_file(source, python / source.name)
    return python.parent


def install_file(source: Path, target: Path) -> None:
    """Copy `source` to `target` unless it is already there, by a rename: a stub of a server that
    died may still be running from `target`, and writing over a running binary fails with
    "Text file busy" while replacing its directory entry does not."""
    same_size = target.is_file() and target.stat().st_size == source.stat().st_size
    if same_size and target.read_bytes() == source.read_bytes():
        return
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.copy2(source, tmp)
    tmp.replace(target)


def environment(install: TritonInstall) -> dict[str, str]:
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
