"""A partitioned Parquet table as pieces: every `.parquet` file under a local folder or an S3
prefix (one file is a table of one piece), each read and written on its own, so a table larger
than one process is worked through piece by piece, on a cluster's workers or in turn.

Files go through pyarrow's own filesystems: `s3fs` pulls `aiobotocore`, whose botocore pin
conflicts with our boto3. S3 credentials and endpoint are the standard AWS variables, as for
boto3 (`AWS_ENDPOINT_URL` for MinIO or moto). A piece is written atomically: locally to a hidden
file renamed into place, on S3 as one upload that is visible only once complete. A reader
never sees half a piece. Each piece carries a stamp in its Parquet metadata (who wrote it, from
what); a rerun reads the stamps to skip pieces already written."""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pydantic import BaseModel

from tasks.datasets.sources.files import DataError

SUFFIX = ".parquet"
STAMP_PREFIX = b"conveyor."


class Piece(BaseModel):
    uri: str  # where the file is (a path or s3://bucket/key)
    key: str  # its path below the table's root: `date=2026-11-01/part-0.parquet`
    size: int


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """pyarrow's filesystem for `uri` and the path on it."""
    if uri.startswith("s3://"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
        region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
        s3 = _s3(region or "us-east-1", endpoint, os.environ.get("AWS_ACCESS_KEY_ID"))
        return s3, uri.removeprefix("s3://").rstrip("/")
    return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())


@functools.lru_cache(maxsize=4)
def _s3(region: str, endpoint: str | None, _key_id: str | None) -> pafs.S3FileSystem:
    """One S3 filesystem per settings in a process: a run asks for one per piece it lists,
    stamps, reads and writes. The key id is in the cache key so that changed credentials get
    a filesystem of their own (the secret is read from the environment by the AWS SDK)."""
    options: dict[str, object] = {"region": region}
    if endpoint:
        parts = urlsplit(endpoint)
        options["endpoint_override"] = parts.netloc or endpoint
        options["scheme"] = parts.scheme or "https"
    return pafs.S3FileSystem(**options)


def join(root: str, key: str) -> str:
    return f"{root.rstrip('/')}/{key}"


def _hidden(key: str) -> bool:
    """Writers' leftovers and markers (`_SUCCESS`, `.part.tmp`): never a piece of the table."""
    return any(part.startswith((".", "_")) for part in key.split("/"))


def list_pieces(uri: str) -> list[Piece]:
    """Every piece of the table at `uri`, in key order. `DataError` naming what was found when
    there is none."""
    fs, path = filesystem(uri)
    try:
        info = fs.get_file_info(path)
        if info.type is pafs.FileType.File:
            if not path.endswith(SUFFIX):
                raise DataError(f"{uri} is not a Parquet file; score a .parquet file or a folder")
            return [Piece(uri=uri, key=Path(path).name, size=info.size)]
        if info.type is pafs.FileType.NotFound:
            raise DataError(f"nothing at {uri}: pass a folder (or S3 prefix) of .parquet files")
        found = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    except OSError as exc:  # S3 unreachable or refused
        raise DataError(f"cannot list {uri}: {exc}; check the URI and AWS_* settings") from None
    pieces = []
    for item in found:
        key = item.path[len(path) :].lstrip("/")
        if item.type is pafs.FileType.File and key.endswith(SUFFIX) and not _hidden(key):
            pieces.append(Piece(uri=join(uri, key), key=key, size=item.size))
    if not pieces:
        raise DataError(f"no .parquet files under {uri}: pass a folder of Parquet files")
    return sorted(pieces, key=lambda piece: piece.key)


def read_piece(piece: Piece, columns: list[str] | None = None) -> pd.DataFrame:
    fs, path = filesystem(piece.uri)
    try:
        return pq.read_table(path, filesystem=fs, columns=columns).to_pandas()
    except (OSError, pa.ArrowInvalid) as exc:
        raise DataError(f"cannot read {piece.uri}: {exc}") from None


def columns_of(piece: Piece) -> list[str]:
    """The piece's column names, from its footer (no rows read)."""
    fs, path = filesystem(piece.uri)
    try:
        return list(pq.read_schema(path, filesystem=fs).names)
    except (OSError, pa.ArrowInvalid) as exc:
        raise DataError(f"cannot read {piece.uri}: {exc}") from None


def stamp_of(uri: str) -> dict[str, str] | None:
    """The stamp a written piece carries, or None when there is no file at `uri`."""
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type is not pafs.FileType.File:
        return None
    metadata = pq.read_schema(path, filesystem=fs).metadata or {}
    return {
        k.decode().removeprefix("conveyor."): v.decode()
        for k, v in metadata.items()
        if k.startswith(STAMP_PREFIX)
    }


def write_table_atomic(table: pa.Table, path: Path) -> None:
    """Write next to the target and rename, so a reader never sees a half-written file (a
    hidden name, so a lister of the folder never takes it for a piece either)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_piece(frame: pd.DataFrame, uri: str, stamp: dict[str, str]) -> None:
    """Write `frame` to `uri` with `stamp` in its metadata, all of it or nothing."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    metadata = {**(table.schema.metadata or {})}
    metadata |= {f"conveyor.{k}".encode(): v.encode() for k, v in stamp.items()}
    table = table.replace_schema_metadata(metadata)
    fs, path = filesystem(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        write_table_atomic(table, Path(path))
        return
    # The whole file first, then one upload (`write_bytes`): nothing is sent for a table that
    # fails to serialise.
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer)
    write_bytes(buffer.getvalue(), uri)


def write_bytes(content: bytes | pa.Buffer, uri: str) -> None:
    """`content` at `uri`, all of it or nothing: a local file renamed into place, or one S3
    upload (S3 shows an object only once its upload completes)."""
    fs, path = filesystem(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(content)
            Path(tmp).replace(target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return
    with fs.open_output_stream(path) as out:
        out.write(content)


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type is pafs.FileType.File
