"""Where model repositories live: one small interface, a local-filesystem implementation.

A directory of files is published all at once or not at all: readers (Triton) never see a version
directory whose files are still being written.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Protocol

from tasks.settings import ConveyorError

MANIFEST = "manifest.json"


class StorageError(ConveyorError):
    """A repository could not be read or written."""


class IntegrityError(StorageError):
    """Published files do not match their manifest."""


class Store(Protocol):
    """A model repository root that conveyor publishes into."""

    def publish_dir(self, key: str, files: dict[str, bytes]) -> None: ...

    def write_file(self, key: str, data: bytes) -> None: ...

    def read_file(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def remove_dir(self, key: str) -> None: ...

    def list_files(self, key: str) -> list[str]: ...


def file_hashes(files: dict[str, bytes]) -> dict[str, str]:
    return {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())}


def manifest_for(files: dict[str, bytes]) -> bytes:
    """sha256 of every file, written last so a directory with a manifest is known complete."""
    return json.dumps({"files": file_hashes(files)}, indent=2, sort_keys=True).encode()


def _server_generated(name: str) -> bool:
    # Triton's python stub compiles model.py into the version directory whatever the environment
    # says; Python discards a .pyc whose source size or mtime differ, and model.py is checked.
    return name.startswith("__pycache__/") and name.endswith(".pyc")


def verify_dir(store: Store, key: str) -> dict[str, str]:
    """Re-hash a published directory against its manifest; raise IntegrityError on any mismatch."""
    if not store.exists(f"{key}/{MANIFEST}"):
        raise IntegrityError(f"{key} has no {MANIFEST}: it was not published by conveyor")
    expected: dict[str, str] = json.loads(store.read_file(f"{key}/{MANIFEST}"))["files"]
    present = {name for name in store.list_files(key) if not _server_generated(name)} - {MANIFEST}
    problems = [f"unexpected file {name}" for name in sorted(present - set(expected))]
    for name, digest in sorted(expected.items()):
        if name not in present:
            problems.append(f"{name} is missing")
            continue
        actual = hashlib.sha256(store.read_file(f"{key}/{name}")).hexdigest()
        if actual != digest:
            problems.append(f"{name} sha256 {actual[:12]}… ≠ manifest {digest[:12]}…")
    if problems:
        raise IntegrityError(
            f"{key} does not match its manifest: {'; '.join(problems)}. Refusing to serve it; "
            "publish the version again."
        )
    return expected


class LocalStore:
    """A repository on a local (or mounted) filesystem."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in (path, *path.parents):
            raise StorageError(f"key {key!r} escapes the repository {self.root}")
        return path

    def publish_dir(self, key: str, files: dict[str, bytes]) -> None:
        target = self._path(key)
        if target.exists():
            raise StorageError(f"{target} already exists; a published version is never rewritten")
        target.parent.mkdir(parents=True, exist_ok=True)
        # Staged beside the target (same filesystem, so the rename is atomic) under a name Triton
        # ignores: version directories must be integers.
        staging = target.parent / f".staging-{target.name}-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        try:
            for name, data in files.items():
                (staging / name).write_bytes(data)
            (staging / MANIFEST).write_bytes(manifest_for(files))
            for child in staging.iterdir():
                with child.open("rb") as handle:
                    os.fsync(handle.fileno())
            staging.rename(target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def write_file(self, key: str, data: bytes) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            Path(tmp).replace(target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def read_file(self, key: str) -> bytes:
        path = self._path(key)
        if not path.is_file():
            raise StorageError(f"{path} does not exist")
        return path.read_bytes()

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def remove_dir(self, key: str) -> None:
        target = self._path(key)
        if not target.exists():
            return
        # Renamed away first so Triton never sees a partly deleted version.
        doomed = target.parent / f".removing-{target.name}-{uuid.uuid4().hex[:8]}"
        target.rename(doomed)
        shutil.rmtree(doomed)

    def list_files(self, key: str) -> list[str]:
        base = self._path(key)
        if not base.is_dir():
            return []
        return sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file())


def open_store(repository: str) -> Store:
    if repository.startswith("s3://"):
        raise StorageError(
            f"S3 model repositories ({repository}) are not supported yet; "
            "set CONVEYOR_MODEL_REPOSITORY to a local directory"
        )
    return LocalStore(Path(repository))
