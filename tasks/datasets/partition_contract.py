"""The data contract of a partitioned table (`compute: dask`), on every row, piece by piece on the
workers: each piece's rows against the spec's schema (the checks `tasks.datasets.row_contract`
makes for rows to score, plus the target's and the segments'), then, in the flow, the checks of
the whole table (rows, classes present, positive rate, rows per class) from the pieces' counts.
The verdict is the same `DataQualityReport` and the same refusal as a local snapshot's, each
problem naming its partitions and rows. Every check of the local contract is made: the warnings
too (columns beyond the spec's, a nullable feature's share of nulls over `max_null_share`, from
the pieces' counts), and a segment with a single value over the whole table."""

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
from tasks.datasets.quality import EXAMPLES, FINITE, DataQualityReport, QualityIssue
from tasks.datasets.row_contract import SHOWN, bad_rows

# Partitions named per problem in the report.
PARTITIONS_SHOWN = 3


class PieceContract(BaseModel):
    key: str
    rows: int
    classes: dict[str, int]  # a classifier's rows per class (as the spec names them)
    issues: list[QualityIssue]
    checks: int
    nulls: dict[str, int] = {}  # a nullable feature's empty rows
    extra_columns: list[str] = []  # columns the spec does not name
    # Up to two of each segment's values: enough to tell one segment from several.
    segment_values: dict[str, list[str]] = {}


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
            outside = _outside(spec, numbers.to_numpy(dtype=np.float64))
            checks += 1
            if outside[0].any():
                issues.append(_issue(outside[1], target, outside[0], values, piece.key))
        else:
            labels = values.dropna().map(label_key)
            classes = {str(k): int(v) for k, v in labels.value_counts().items()}
            wrong = (~values.map(label_key).isin(spec.class_names) & values.notna()).to_numpy()
            check = f"target in {spec.target.classes}"
        if wrong.any():
            issues.append(_issue(check, target, wrong, values, piece.key))
    segment_values: dict[str, list[str]] = {}
    for segment in spec.segments.columns:
        if segment in frame:
            checks += 1
            segment_values[segment] = [str(v) for v in frame[segment].dropna().unique()[:2]]
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
        key=piece.key,
        rows=len(frame),
        classes=classes,
        issues=issues,
        checks=checks,
        nulls={
            f.name: int(frame[f.name].isna().sum())
            for f in spec.features
            if f.nullable and f.name in frame
        },
        extra_columns=sorted(have - {*spec.feature_names, target, *spec.segments.columns}),
        segment_values=segment_values,
    )


def _outside(spec: ModelSpec, numbers: np.ndarray) -> tuple[np.ndarray, str]:
    """A regression target's rows outside its range (or not finite), and the check's name."""
    low = -FINITE if spec.target.min is None else spec.target.min
    high = FINITE if spec.target.max is None else spec.target.max
    finite = ~np.isnan(numbers)
    return finite & ((numbers < low) | (numbers > high)), f"target finite, in [{low:g}, {high:g}]"


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


def _warnings(
    spec: ModelSpec, results: list[PieceContract], rows: int
) -> tuple[list[QualityIssue], list[QualityIssue]]:
    """(errors, warnings) only the whole table can show: a segment with one value, a nullable
    feature's share of nulls over `quality.max_null_share`, columns beyond the spec's."""
    errors, warnings = [], []
    for segment in spec.segments.columns:
        values = {v for r in results for v in r.segment_values.get(segment, [])}
        if len(values) < 2 and any(segment in r.segment_values for r in results):
            errors.append(
                QualityIssue(
                    check="segment has at least two values (fairness compares them)",
                    column=segment,
                    severity="error",
                    unexpected=None,
                    examples=[repr(v) for v in values],
                    detail=" (observed over every partition)",
                )
            )
    share = spec.quality.max_null_share
    for feature in spec.features:
        empty = [(r.key, r.nulls[feature.name]) for r in results if r.nulls.get(feature.name)]
        nulls = sum(count for _, count in empty)
        if nulls > share * rows:
            most = sorted(empty, key=lambda e: -e[1])[:PARTITIONS_SHOWN]
            warnings.append(
                QualityIssue(
                    check=f"at most {share:.0%} nulls",
                    column=feature.name,
                    severity="warning",
                    unexpected=nulls,
                    examples=[],
                    detail=f" ({nulls / max(rows, 1):.1%} of the table; most in "
                    + ", ".join(f"{key} ({count:,})" for key, count in most)
                    + ")",
                )
            )
    extra = sorted({c for r in results for c in r.extra_columns})
    if extra:
        where = [r.key for r in results if r.extra_columns][:PARTITIONS_SHOWN]
        warnings.append(
            QualityIssue(
                check="no unexpected columns",
                column=None,
                severity="warning",
                unexpected=None,
                examples=extra[:EXAMPLES],
                detail=f" (in {', '.join(where)}; not read: the spec does not name them)",
            )
        )
    return errors, warnings


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
    whole, warnings = _warnings(spec, results, rows)
    return DataQualityReport(
        dataset_sha256=data.sha256,
        rows=rows,
        checks=sum(result.checks for result in results) + 5,
        errors=_merged(results) + table + whole,
        warnings=warnings,
    )
