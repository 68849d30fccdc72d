"""Where model repositories live: one small interface, a local-filesystem implementation.

A directory of files is published all at once or not at all: readers (Triton) never see a version
directory whose files are still being written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Protocol

from tasks.core.errors import ConveyorError

MANIFEST = "manifest.json"


class StorageError(ConveyorError):
    """A repository could not be read or written."""


class IntegrityError(StorageError):
    """Published files do not match their manifest."""

    gate = "repository_integrity"


class Store(Protocol):
    """A model repository root that conveyor publishes into."""

    def publish_dir(self, key: str, files: dict[str, bytes]) -> None: ...

    def write_file(self, key: str, data: bytes) -> None: ...

    def read_file(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def remove_dir(self, key: str) -> None: ...

    def list_files(self, key: str) -> list[str]: ...


def repository_versions(store: Store, model: str) -> list[int]:
    """The version directories `<model>/<N>/` the repository holds."""
    heads = {f.split("/")[0] for f in store.list_files(model)}
    return sorted(int(h) for h in heads if h.isdigit())


def file_hashes(files: dict[str, bytes]) -> dict[str, str]:
    return {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())}


def manifest_for(files: dict[str, bytes]) -> bytes:
    """sha256 of every file, written last so a directory with a manifest is known complete."""
    return json.dumps({"files": file_hashes(files)}, indent=2, sort_keys=True).encode()


def _server_generated(name: str) -> bool:
    # Triton's python stub compiles model.py into the version directory whatever the environment
    # says; Python discards a .pyc whose source size or mtime differ, and model.py is checked.
    return name.startswith("__pycache__/") and name.endswith(".pyc")


def read_verified(store: Store, key: str) -> dict[str, bytes]:
    """A published directory's files, each re-hashed against the manifest as it is read.

    Raises IntegrityError on any mismatch: what this returns is exactly what was published.
    """
    if not store.exists(f"{key}/{MANIFEST}"):
        raise IntegrityError(f"{key} has no {MANIFEST}: it was not published by conveyor")
    expected: dict[str, str] = json.loads(store.read_file(f"{key}/{MANIFEST}"))["files"]
    present = {name for name in store.list_files(key) if not _server_generated(name)} - {MANIFEST}
    problems = [f"unexpected file {name}" for name in sorted(present - set(expected))]
    files: dict[str, bytes] = {}
    for name, digest in sorted(expected.items()):
        if name not in present:
            problems.append(f"{name} is missing")
            continue
        data = store.read_file(f"{key}/{name}")
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest:
            problems.append(f"{name} sha256 {actual[:12]}… ≠ manifest {digest[:12]}…")
        files[name] = data
    if problems:
        raise IntegrityError(
            f"{key} does not match its manifest: {'; '.join(problems)}. Refusing to serve it; "
            "publish the version again."
        )
    return files


def verify_dir(store: Store, key: str) -> dict[str, str]:
    """Re-hash a published directory against its manifest; raise IntegrityError on any mismatch."""
    return file_hashes(read_verified(store, key))


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


class S3Store:
    """A repository under s3://bucket/prefix (boto3; the standard AWS variables, and
    AWS_ENDPOINT_URL for MinIO or another S3-compatible store).

    S3 has no rename. A version is uploaded under a staging prefix, copied into place with its
    manifest copied last, then the staging copy is deleted; a version directory without a
    manifest is incomplete, and `verify_dir` refuses it before Triton is asked to load it.
    """

    def __init__(self, uri: str) -> None:
        import boto3

        self.uri = uri.rstrip("/")
        self.bucket, _, prefix = self.uri.removeprefix("s3://").partition("/")
        self.prefix = f"{prefix}/" if prefix else ""
        self.client = boto3.client("s3")

    def _key(self, key: str) -> str:
        if ".." in key.split("/"):
            raise StorageError(f"key {key!r} escapes the repository {self.uri}")
        return f"{self.prefix}{key}"

    def _keys(self, key: str) -> list[str]:
        base = self._key(key).rstrip("/") + "/"
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=base
        )
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def publish_dir(self, key: str, files: dict[str, bytes]) -> None:
        if self.exists(key):
            raise StorageError(
                f"{self.uri}/{key} already exists; a published version is never rewritten"
            )
        staging = f".staging/{key.replace('/', '-')}-{uuid.uuid4().hex[:8]}"
        everything = {**files, MANIFEST: manifest_for(files)}
        try:
            for name, data in everything.items():
                self.client.put_object(
                    Bucket=self.bucket, Key=self._key(f"{staging}/{name}"), Body=data
                )
            for name in [*files, MANIFEST]:  # manifest last: its presence means complete
                self.client.copy_object(
                    Bucket=self.bucket,
                    Key=self._key(f"{key}/{name}"),
                    CopySource={"Bucket": self.bucket, "Key": self._key(f"{staging}/{name}")},
                )
        except BaseException:
            # Best effort: S3 itself may be what failed, and its error is the one to raise.
            # What stays (a staged upload, a version without its manifest) is what `conveyor
            # doctor --repair` removes.
            with contextlib.suppress(Exception):
                self.remove_dir(key)
            with contextlib.suppress(Exception):
                self._delete_staging(staging, everything)
            raise
        self._delete_staging(staging, everything)

    def _delete_staging(self, staging: str, files: dict[str, bytes]) -> None:
        for name in files:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(f"{staging}/{name}"))

    def write_file(self, key: str, data: bytes) -> None:
        # A single PUT is atomic in S3: readers see the old object or the new one.
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def read_file(self, key: str) -> bytes:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        except self.client.exceptions.NoSuchKey as exc:
            raise StorageError(f"{self.uri}/{key} does not exist") from exc
        return bytes(body.read())

    def exists(self, key: str) -> bool:
        return bool(self._keys(key)) or self._object_exists(key)

    def _object_exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError:
            return False
        return True

    def remove_dir(self, key: str) -> None:
        keys = self._keys(key)
        manifest = self._key(f"{key}/{MANIFEST}")
        # Manifest first: the version is "incomplete" before any of its files disappear.
        for name in sorted(keys, key=lambda k: k != manifest):
            self.client.delete_object(Bucket=self.bucket, Key=name)

    def list_files(self, key: str) -> list[str]:
        base = self._key(key).rstrip("/") + "/"
        return sorted(k.removeprefix(base) for k in self._keys(key))


def open_store(repository: str) -> Store:
    if repository.startswith("s3://"):
        return S3Store(repository)
    return LocalStore(Path(repository))
