"""The data contract: a Great Expectations suite derived from the spec, run before training."""

from __future__ import annotations

from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel

from tasks.core.errors import ConveyorError
from tasks.core.model_task import Task
from tasks.core.spec import FeatureType, ModelSpec

Severity = Literal["error", "warning"]
# Column dtypes each feature type accepts (as pandas names them).
TYPES: dict[FeatureType, list[str]] = {
    FeatureType.numeric: ["float64", "float32", "int64", "int32", "int16", "int8"],
    FeatureType.integer: ["int64", "int32", "int16", "int8", "float64", "float32"],
    FeatureType.boolean: ["bool", "boolean"],
    FeatureType.category: ["object", "str", "string", "category"],
}
# Finite bounds for features without a range: a value check that also rejects ±inf.
FINITE = 1.7e308
EXAMPLES = 5


class DataQualityError(ConveyorError):
    """The data breaks the spec's contract."""

    gate = "data_quality"


class QualityIssue(BaseModel):
    check: str
    column: str | None
    severity: Severity
    unexpected: int | None
    examples: list[str]
    detail: str

    def line(self) -> str:
        where = f"`{self.column}`" if self.column else "table"
        count = f", {self.unexpected} row(s)" if self.unexpected else ""
        examples = f", e.g. {', '.join(self.examples)}" if self.examples else ""
        return f"{where}: {self.check}{count}{examples}{self.detail}"


class DataQualityReport(BaseModel):
    dataset_sha256: str
    rows: int
    checks: int
    errors: list[QualityIssue]
    warnings: list[QualityIssue]

    @property
    def passed(self) -> bool:
        return not self.errors

    def markdown(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        lines = [
            f"# Data validation {verdict}: {self.rows} rows, {self.checks} checks",
            f"Dataset sha256 `{self.dataset_sha256}`",
        ]
        for title, issues in (("Errors", self.errors), ("Warnings", self.warnings)):
            if issues:
                lines += ["", f"## {title}", *[f"- {issue.line()}" for issue in issues]]
        return "\n".join(lines)


def _target_suite(spec: ModelSpec, rows: int, meta: Any) -> list[Any]:
    """The target's checks: a classifier's class set, each class's rows (and a binary target's
    positive rate); a regression's numbers and range."""
    import great_expectations.expectations as gxe

    target = spec.target.name
    checks = [gxe.ExpectColumnValuesToNotBeNull(column=target, meta=meta("target has no nulls"))]
    if spec.task is Task.regression:
        low = -FINITE if spec.target.min is None else spec.target.min
        high = FINITE if spec.target.max is None else spec.target.max
        return [
            *checks,
            gxe.ExpectColumnValuesToBeInTypeList(
                column=target,
                type_list=TYPES[FeatureType.numeric],
                meta=meta("target is numeric (a regression)"),
            ),
            gxe.ExpectColumnValuesToBeBetween(
                column=target,
                min_value=low,
                max_value=high,
                meta=meta(f"target finite, in [{low:g}, {high:g}]"),
            ),
        ]
    classes = spec.target.classes
    checks += [
        gxe.ExpectColumnValuesToBeInSet(
            column=target, value_set=classes, meta=meta(f"target in {classes}")
        ),
        gxe.ExpectColumnDistinctValuesToContainSet(
            column=target, value_set=classes, meta=meta(f"every class of {classes} present")
        ),
    ]
    if spec.task is Task.binary:
        # The share of the positive (second) class, whatever its labels: "at least this share
        # of the values is the positive class" is GX's `mostly` on a one-value set.
        return [
            *checks,
            gxe.ExpectColumnValuesToBeInSet(
                column=target,
                value_set=[(classes or [0, 1])[1]],
                mostly=spec.quality.min_positive_rate,
                meta=meta(f"positive rate ≥ {spec.quality.min_positive_rate}"),
            ),
        ]
    # Each class's share of rows reaches min_class_rows: "at least this share of the values is
    # in {class}" is GX's `mostly` on a one-value set.
    share = min(1.0, spec.quality.min_class_rows / max(rows, 1))
    return checks + [
        gxe.ExpectColumnValuesToBeInSet(
            column=target,
            value_set=[label],
            mostly=share,
            meta=meta(f"class {label!r} has at least {spec.quality.min_class_rows} rows"),
        )
        for label in classes or []
    ]


def build_suite(spec: ModelSpec, columns: list[str], rows: int = 0) -> list[Any]:
    """The expectations, each tagged with its severity and a readable name in `meta`."""
    import great_expectations.expectations as gxe

    def meta(check: str, severity: Severity = "error") -> dict[str, str]:
        return {"check": check, "severity": severity}

    expected = [*spec.feature_names, spec.target.name, *spec.segments.columns]
    suite: list[Any] = [
        gxe.ExpectTableRowCountToBeBetween(
            min_value=spec.quality.min_rows, meta=meta(f"at least {spec.quality.min_rows} rows")
        ),
        gxe.ExpectTableColumnsToMatchSet(
            column_set=expected, exact_match=True, meta=meta("no unexpected columns", "warning")
        ),
    ]
    for name in expected:
        suite.append(gxe.ExpectColumnToExist(column=name, meta=meta("column present")))
    present = set(columns)
    for feature in spec.features:
        if feature.name not in present:
            continue  # reported once, by "column present"
        column = feature.name
        suite.append(
            gxe.ExpectColumnValuesToBeInTypeList(
                column=column,
                type_list=TYPES[feature.type],
                meta=meta(f"type is {feature.type.value}"),
            )
        )
        if feature.nullable:
            suite.append(
                gxe.ExpectColumnValuesToNotBeNull(
                    column=column,
                    mostly=1 - spec.quality.max_null_share,
                    meta=meta(f"at most {spec.quality.max_null_share:.0%} nulls", "warning"),
                )
            )
        else:
            suite.append(gxe.ExpectColumnValuesToNotBeNull(column=column, meta=meta("no nulls")))
        if feature.type is FeatureType.category:
            suite.append(
                gxe.ExpectColumnValuesToBeInSet(
                    column=column,
                    value_set=feature.categories,
                    meta=meta(f"one of {feature.categories}"),
                )
            )
        elif feature.type is not FeatureType.boolean:
            low = -FINITE if feature.min is None else feature.min
            high = FINITE if feature.max is None else feature.max
            suite.append(
                gxe.ExpectColumnValuesToBeBetween(
                    column=column,
                    min_value=low,
                    max_value=high,
                    meta=meta(f"finite, in [{low:g}, {high:g}]"),
                )
            )
    if spec.target.name in present:
        suite += _target_suite(spec, rows, meta)
    for column in spec.segments.columns:
        if column in present:
            suite += _segment_suite(column, meta)
    return suite


def _segment_suite(column: str, meta: Any) -> list[Any]:
    """An evaluation-only segment column: every row belongs to a segment, and there are at least
    two (one segment has nothing to be compared with)."""
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectColumnValuesToNotBeNull(
            column=column, meta=meta("segment has no nulls (every row in a segment)")
        ),
        gxe.ExpectColumnUniqueValueCountToBeBetween(
            column=column,
            min_value=2,
            meta=meta("segment has at least two values (fairness compares them)"),
        ),
    ]


def _issue(result: Any) -> QualityIssue:
    config = result.expectation_config
    details = result.result or {}
    examples = [repr(v) for v in (details.get("partial_unexpected_list") or [])[:EXAMPLES]]
    detail = ""
    if details.get("observed_value") is not None:
        detail = f" (observed {details['observed_value']})"
    raised = (result.exception_info or {}).get("exception_message")
    if raised:
        detail += f" (check could not run: {raised})"
    return QualityIssue(
        check=config.meta["check"],
        column=config.kwargs.get("column"),
        severity=config.meta["severity"],
        unexpected=details.get("unexpected_count"),
        examples=examples,
        detail=detail,
    )


def check_frame(frame: pd.DataFrame, spec: ModelSpec, sha256: str) -> DataQualityReport:
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = (
        context.data_sources.add_pandas("conveyor")
        .add_dataframe_asset(spec.name)
        .add_batch_definition_whole_dataframe("whole")
    )
    suite = context.suites.add(gx.ExpectationSuite(name=f"{spec.name}-contract"))
    expectations = build_suite(spec, list(frame.columns), len(frame))
    for expectation in expectations:
        suite.add_expectation(expectation)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"{spec.name}-data", data=batch, suite=suite)
    )
    # pandas 3 stores text as its `str` dtype, which GE's type check does not recognise; the
    # values are the same as object columns.
    strings = {c: object for c in frame.columns if pd.api.types.is_string_dtype(frame[c].dtype)}
    result = definition.run(
        batch_parameters={"dataframe": frame.astype(strings)}, result_format="SUMMARY"
    )
    issues = [_issue(r) for r in result.results if not r.success]
    return DataQualityReport(
        dataset_sha256=sha256,
        rows=len(frame),
        checks=len(expectations),
        errors=[i for i in issues if i.severity == "error"],
        warnings=[i for i in issues if i.severity == "warning"],
    )


def require_quality(report: DataQualityReport, uri: str) -> None:
    if report.passed:
        return
    raise DataQualityError(
        f"data at {uri} breaks the spec's contract ({len(report.errors)} failed check(s)):\n"
        + "\n".join(f"  - {issue.line()}" for issue in report.errors)
        + "\nNothing was trained or registered. Fix the data or the spec's schema."
    )
