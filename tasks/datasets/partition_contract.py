"""The data contract of a partitioned table (`compute: dask`), on every row, piece by piece on the
workers: each piece's rows against the spec's schema (the checks `tasks.datasets.row_contract`
makes for rows to score, plus the target's and the segments'), then, in the flow, the checks of
the whole table (rows, classes present, positive rate, rows per class) from the pieces' counts.
The verdict is the same `DataQualityReport` and the same refusal as a local snapshot's, each
problem naming its partitions and rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
from pydantic import BaseModel

from tasks.core.cluster import runner
from tasks.core.model_task import Task
from tasks.core.settings import Settings
from tasks.core.spec import ModelSpec
from tasks.datasets.data import DatasetRef, label_key
from tasks.datasets.partitioned import ManifestPiece, columns, load_manifest, read_again
from tasks.datasets.pieces import columns_of
from tasks.datasets.quality import EXAMPLES, DataQualityReport, QualityIssue
from tasks.datasets.row_contract import SHOWN, bad_rows

# Partitions named per problem in the report.
PARTITIONS_SHOWN = 3


class PieceContract(BaseModel):
    key: str
    rows: int
    classes: dict[str, int]  # a classifier's rows per class (as the spec names them)
    issues: list[QualityIssue]
    checks: int


def _issue(check: str, column: str, rows: np.ndarray, values: pd.Series, key: str) -> QualityIssue:
    bad = np.flatnonzero(rows)
    shown = ", ".join(str(i + 1) for i in bad[:SHOWN])
    return QualityIssue(
        check=check,
        column=column,
        severity="error",
        unexpected=len(bad),
        examples=[repr(v) for v in values.iloc[bad[:EXAMPLES]]],
        detail=f" in {key} (rows {shown}{', …' if len(bad) > SHOWN else ''})",
    )


def check_piece(piece: ManifestPiece, spec: ModelSpec) -> PieceContract:
    """Every row of one piece against the schema; its class counts for the table's checks."""
    have = set(columns_of(piece))
    missing = [name for name in columns(spec) if name not in have]
    issues = [
        QualityIssue(
            check="column present",
            column=name,
            severity="error",
            unexpected=None,
            examples=[],
            detail=f" (missing from {piece.key})",
        )
        for name in missing
    ]
    frame = read_again(piece, piece.rows, spec)
    checks = len(missing)
    for feature in spec.features:
        if feature.name in frame:
            for rows, what in bad_rows(feature, frame[feature.name]):
                checks += 1
                if rows.any():
                    issues.append(_issue(what, feature.name, rows, frame[feature.name], piece.key))
    classes: dict[str, int] = {}
    target = spec.target.name
    if target in frame:
        values = frame[target]
        checks += 2
        if values.isna().any():
            issues.append(_issue("target has no nulls", target, values.isna(), values, piece.key))
        if spec.task is Task.regression:
            numbers = pd.to_numeric(values, errors="coerce")
            wrong = (numbers.isna() & values.notna()).to_numpy()
            check = "target is numeric (a regression)"
        else:
            labels = values.dropna().map(label_key)
            classes = {str(k): int(v) for k, v in labels.value_counts().items()}
            wrong = (~values.map(label_key).isin(spec.class_names) & values.notna()).to_numpy()
            check = f"target in {spec.target.classes}"
        if wrong.any():
            issues.append(_issue(check, target, wrong, values, piece.key))
    for segment in spec.segments.columns:
        if segment in frame:
            checks += 1
            empty = frame[segment].isna().to_numpy()
            if empty.any():
                issues.append(
                    _issue(
                        "segment has no nulls (every row in a segment)",
                        segment,
                        empty,
                        frame[segment],
                        piece.key,
                    )
                )
    return PieceContract(
        key=piece.key, rows=len(frame), classes=classes, issues=issues, checks=checks
    )


def _merged(results: list[PieceContract]) -> list[QualityIssue]:
    """One issue per (check, column), its rows summed over the pieces, its first pieces named."""
    merged: dict[tuple[str, str | None], list[QualityIssue]] = {}
    for result in results:
        for issue in result.issues:
            merged.setdefault((issue.check, issue.column), []).append(issue)
    out = []
    for (check, column), found in merged.items():
        more = len(found) - PARTITIONS_SHOWN
        counts = [i.unexpected for i in found if i.unexpected is not None]
        out.append(
            QualityIssue(
                check=check,
                column=column,
                severity="error",
                unexpected=sum(counts) if counts else None,
                examples=[e for i in found for e in i.examples][:EXAMPLES],
                detail=";".join(i.detail for i in found[:PARTITIONS_SHOWN])
                + (f"; and {more} more partition(s)" if more > 0 else ""),
            )
        )
    return out


def _table_issues(spec: ModelSpec, rows: int, classes: dict[str, int]) -> list[QualityIssue]:
    """The checks of the whole table, from the pieces' counts."""

    def issue(check: str, column: str | None, detail: str) -> QualityIssue:
        return QualityIssue(
            check=check,
            column=column,
            severity="error",
            unexpected=None,
            examples=[],
            detail=f" (observed {detail})",
        )

    q, target = spec.quality, spec.target.name
    issues = []
    if rows < q.min_rows:
        issues.append(issue(f"at least {q.min_rows} rows", None, f"{rows:,}"))
    if spec.task is Task.regression:
        return issues
    absent = [name for name in spec.class_names if not classes.get(name)]
    if absent:
        issues.append(issue(f"every class of {spec.target.classes} present", target, str(absent)))
    if spec.task is Task.binary:
        rate = classes.get(spec.class_names[1], 0) / max(rows, 1)
        if rate < q.min_positive_rate:
            issues.append(issue(f"positive rate ≥ {q.min_positive_rate}", target, f"{rate:.4f}"))
        return issues
    for name in spec.class_names:
        if 0 < classes.get(name, 0) < q.min_class_rows:
            issues.append(
                issue(
                    f"class {name!r} has at least {q.min_class_rows} rows",
                    target,
                    f"{classes[name]}",
                )
            )
    return issues


def check_table(spec: ModelSpec, settings: Settings, data: DatasetRef) -> DataQualityReport:
    """The contract on every piece of the snapshot's manifest, on the cluster, as one report."""
    manifest = load_manifest(data)
    with runner(settings, "dask") as run:
        results = sorted(run(check_piece, manifest.pieces, spec), key=lambda r: r.key)
    classes: dict[str, int] = {}
    for result in results:
        for name, count in result.classes.items():
            classes[name] = classes.get(name, 0) + count
    rows = sum(result.rows for result in results)
    table = _table_issues(spec, rows, classes)
    return DataQualityReport(
        dataset_sha256=data.sha256,
        rows=rows,
        checks=sum(result.checks for result in results) + 4,
        errors=_merged(results) + table,
        warnings=[],
    )
