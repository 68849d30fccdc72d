"""A release's data with `compute: dask`: a partitioned Parquet table (a local folder or an S3
prefix of `.parquet` files, `date=` partitions or not) that no process reads whole.

- The snapshot is a **manifest**: every piece's key, size, row count and sha256 (each computed on
  a worker, from the piece's bytes), and the manifest's own sha256, which is what "the same data"
  means to lineage and to the unchanged-model check. The worker that reads a piece also writes
  its **copy**, named by its sha256 under `Settings.pieces_root` (a piece already copied by an
  earlier release is not written again), and the manifest points at the copies: the release,
  and anyone reproducing it later, reads the table as it was, whatever is written to the source
  meanwhile. A copy whose rows no longer match its manifest entry is refused, never used.
- The **split** is per row and needs no shuffle: a row goes to the holdout by a draw seeded by
  `data.seed` and its piece's key, so every worker that reads a piece again cuts it the same way.
  It is uniform, not stratified: at the sizes this path is for, each class's share of the holdout
  is its base rate to within a fraction of a percent.
- What must sit in one process (the search's trials, the resampling gates, parity, explanations)
  gets a **seeded uniform sample** of each side, drawn piece by piece on the workers: at most
  `search.max_rows` training rows and `evaluation.sample_rows` holdout rows, as ordinary snapshot
  files. The refit and the holdout metrics read every row (`tasks.modeling.distributed`)."""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel

from tasks.core.cluster import runner
from tasks.core.model_task import Task
from tasks.core.settings import Settings
from tasks.core.spec import ModelSpec
from tasks.datasets import synthetic
from tasks.datasets.data import (
    DatasetRef,
    PartitionedSplit,
    SplitPiece,
    SplitResult,
    label_key,
    save_dataset,
)
from tasks.datasets.pieces import (
    Piece,
    columns_of,
    exists,
    filesystem,
    join,
    list_pieces,
    read_piece,
    write_bytes,
)
from tasks.datasets.sources import source_of
from tasks.datasets.sources.files import DataError

# Rows the training sample holds when the spec sets no `search.max_rows`.
TRAIN_SAMPLE_ROWS = 200_000


class ManifestPiece(Piece):
    rows: int
    sha256: str
    positives: int = 0  # a binary target's positive rows


class Manifest(BaseModel):
    source: str
    pieces: list[ManifestPiece]

    @property
    def rows(self) -> int:
        return sum(piece.rows for piece in self.pieces)

    @property
    def sha256(self) -> str:
        """The table's identity: its pieces' keys, sizes, rows and contents (not where it lies)."""
        entries = [[p.key, p.size, p.rows, p.sha256] for p in self.pieces]
        return hashlib.sha256(json.dumps(entries).encode()).hexdigest()


def require_table(spec: ModelSpec) -> str:
    """The source `compute: dask` reads, refused before any work when it is not a table of
    Parquet pieces."""
    source = spec.data.source
    if synthetic.is_synthetic(source) or source_of(source).name == "delta":
        raise DataError(
            f"`compute: dask` reads a partitioned Parquet table (a folder or s3:// prefix of "
            f".parquet files); {spec.name}'s data.source is {source!r}. Point data.source at "
            "such a table, or set `compute: local`"
        )
    return source


def columns(spec: ModelSpec) -> list[str]:
    """What a release reads of each piece: features, target and segment columns."""
    return list(dict.fromkeys([*spec.feature_names, spec.target.name, *spec.segments.columns]))


def _positive(spec: ModelSpec) -> str | None:
    return spec.class_names[1] if spec.task is Task.binary else None


def inventory(piece: Piece, spec: ModelSpec, copies: str) -> ManifestPiece:
    """One piece's manifest entry, from its bytes (read once: sha256, rows, positives), and
    its copy under `copies`, which the entry points at."""
    fs, path = filesystem(piece.uri)
    try:
        with fs.open_input_file(path) as handle:
            content = handle.read()
    except OSError as exc:
        raise DataError(f"cannot read {piece.uri}: {exc}") from None
    positives = 0
    positive = _positive(spec)
    reader = pq.ParquetFile(pa.BufferReader(content))
    if positive is not None and spec.target.name in reader.schema_arrow.names:
        target = reader.read(columns=[spec.target.name]).column(0).to_pandas()
        positives = int((target.dropna().map(label_key) == positive).sum())
    digest = hashlib.sha256(content).hexdigest()
    copy = join(copies, f"{digest}.parquet")
    if not exists(copy):
        write_bytes(content, copy)
    return ManifestPiece(
        **piece.model_dump() | {"uri": copy},
        rows=reader.metadata.num_rows,
        sha256=digest,
        positives=positives,
    )


def snapshot(spec: ModelSpec, settings: Settings) -> DatasetRef:
    """The manifest of the spec's table, kept under the state directory by its sha256."""
    source = require_table(spec)
    found = list_pieces(source)
    with runner(settings, "dask") as run:
        copies = settings.pieces_root
        entries = sorted(run(inventory, found, spec, copies), key=lambda piece: piece.key)
    manifest = Manifest(source=source, pieces=entries)
    path = settings.data_dir / spec.name / f"manifest-{manifest.sha256[:16]}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(manifest.model_dump_json(indent=1))
    return DatasetRef(
        uri=str(path),
        sha256=manifest.sha256,
        rows=manifest.rows,
        positives=sum(piece.positives for piece in entries),
        read_from=source,
    )


def load_manifest(data: DatasetRef) -> Manifest:
    return Manifest.model_validate_json(Path(data.uri).read_text())


def read_again(piece: Piece, rows: int, spec: ModelSpec) -> pd.DataFrame:
    """A snapshot's piece read again (the release's columns), refused if it changed since."""
    have = set(columns_of(piece))
    frame = read_piece(piece, columns=[c for c in columns(spec) if c in have])
    if len(frame) != rows:
        raise DataError(
            f"{piece.uri} (the copy of {piece.key}) holds {len(frame):,} rows, its snapshot "
            f"{rows:,}: the copy was altered after the snapshot. Remove it and rerun the "
            "release to snapshot the table again"
        )
    return frame


def holdout_mask(key: str, rows: int, seed: int, fraction: float) -> np.ndarray:
    """Which of a piece's rows are holdout rows: the same for every reader of the piece."""
    return np.random.default_rng([seed, zlib.crc32(key.encode())]).random(rows) < fraction


def side(
    piece: SplitPiece, spec: ModelSpec, split: PartitionedSplit, holdout: bool
) -> pd.DataFrame:
    """One side of one piece, cut again as the split cut it; refused if the piece changed."""
    frame = read_again(piece, piece.train_rows + piece.holdout_rows, spec)
    mask = holdout_mask(piece.key, len(frame), split.seed, split.holdout_fraction)
    return frame[mask if holdout else ~mask].reset_index(drop=True)


@dataclass(frozen=True)
class PieceCut:
    piece: SplitPiece
    train_sample: pd.DataFrame
    holdout_sample: pd.DataFrame


def cut(piece: ManifestPiece, spec: ModelSpec, rates: tuple[float, float]) -> PieceCut:
    """One piece's split counts, and its rows of the seeded samples of each side."""
    frame = read_again(piece, piece.rows, spec)
    d = spec.data
    holdout = holdout_mask(piece.key, len(frame), d.seed, d.holdout_fraction)
    draw = np.random.default_rng([d.seed, zlib.crc32(piece.key.encode()), 1]).random(len(frame))
    keep = np.where(holdout, draw < rates[1], draw < rates[0])
    split = SplitPiece(
        uri=piece.uri,
        key=piece.key,
        size=piece.size,
        train_rows=int((~holdout).sum()),
        holdout_rows=int(holdout.sum()),
    )
    return PieceCut(
        piece=split,
        train_sample=frame[keep & ~holdout].reset_index(drop=True),
        holdout_sample=frame[keep & holdout].reset_index(drop=True),
    )


def split(spec: ModelSpec, settings: Settings, data: DatasetRef) -> SplitResult:
    """Both sides of the table, cut on the workers; the samples kept as snapshot files."""
    manifest = load_manifest(data)
    rows, fraction = manifest.rows, spec.data.holdout_fraction
    train_cap = spec.search.max_rows or TRAIN_SAMPLE_ROWS
    rates = (
        min(1.0, train_cap / max(rows * (1 - fraction), 1)),
        min(1.0, spec.evaluation.sample_rows / max(rows * fraction, 1)),
    )
    with runner(settings, "dask") as run:
        cuts = sorted(run(cut, manifest.pieces, spec, rates), key=lambda c: c.piece.key)
    directory = settings.data_dir / spec.name
    target = spec.target.name
    samples = [
        save_dataset(
            pd.concat([getattr(c, side) for c in cuts], ignore_index=True),
            directory,
            side.replace("_", "-"),
            target,
        )
        for side in ("train_sample", "holdout_sample")
    ]
    return SplitResult(
        train=samples[0],
        holdout=samples[1],
        source_sha256=data.sha256,
        read_from=data.read_from,
        partitioned=PartitionedSplit(
            manifest=data.uri,
            pieces=[c.piece for c in cuts],
            seed=spec.data.seed,
            holdout_fraction=fraction,
        ),
    )
