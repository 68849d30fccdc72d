"""An S3 prefix (`s3://bucket/prefix`) of .csv or .parquet objects, `date=` partitions in their
keys; only the objects of the partition asked for are downloaded. Credentials and endpoint come
from the standard AWS variables (AWS_ENDPOINT_URL points boto3 at MinIO or another S3-compatible
store)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pandas as pd

from tasks.datasets.sources.files import (
    SUFFIXES,
    DataError,
    concat,
    dates_in,
    in_partition,
    read_bytes,
)
from tasks.datasets.sources.source import Source


@contextmanager
def _explained(uri: str) -> Iterator[None]:
    """S3's refusals said as what to fix."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket = uri.removeprefix("s3://").partition("/")[0]
    try:
        yield
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code == "NoSuchBucket":
            raise DataError(
                f"S3 bucket {bucket!r} does not exist ({uri}); fix data.source"
            ) from exc
        if code in {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"}:
            raise DataError(
                f"S3 refused access to {uri} ({code}); check AWS_ACCESS_KEY_ID / "
                "AWS_SECRET_ACCESS_KEY and the bucket policy"
            ) from exc
        raise DataError(f"S3 error reading {uri}: {code or exc}") from exc
    except BotoCoreError as exc:
        raise DataError(f"cannot reach S3 for {uri}: {exc}; check AWS_ENDPOINT_URL") from exc


def _keys(client: Any, uri: str) -> list[str]:
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    keys = [
        item["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for item in page.get("Contents", [])
        if item["Key"].endswith(SUFFIXES)
    ]
    if not keys:
        raise DataError(f"no .parquet or .csv objects under {uri}")
    return sorted(keys)


def partitions(uri: str) -> list[str]:
    import boto3

    with _explained(uri):
        return dates_in(_keys(boto3.client("s3"), uri))


def read(uri: str, date: str | None) -> pd.DataFrame:
    import boto3

    bucket = uri.removeprefix("s3://").partition("/")[0]
    client = boto3.client("s3")
    with _explained(uri):
        keys = in_partition(_keys(client, uri), date)
        bodies = [(key, client.get_object(Bucket=bucket, Key=key)["Body"].read()) for key in keys]
    return concat([read_bytes(body, key) for key, body in bodies])


SOURCE = Source(
    name="s3",
    form="s3://bucket/prefix (of .parquet or .csv objects)",
    claims=lambda uri: uri.startswith("s3://"),
    partitions=partitions,
    read=read,
)
