"""One model's contract, from its YAML spec in `deployments/models/`: data, features, target,
quality, estimator and search, evaluation and gates, drift, approval, retention, serving and
smoke test. `load_spec` reads and validates one; nothing is read at import.

Where things run (state directory, servers, credentials) is `tasks.core.settings`, not here."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from tasks.core.errors import ConveyorError
from tasks.core.families import FAMILIES, compute_problem, families_for
from tasks.core.gates import GatesSpec, gates_problem
from tasks.core.model_task import (
    DEFAULT_METRIC,
    DISPARITIES,
    METRICS,
    THRESHOLD_METRICS,
    Task,
    score_metrics,
)
from tasks.core.names import name_problem
from tasks.core.spec_release import PromotionSpec, RetentionSpec, ServingSpec, SmokeSpec
from tasks.core.spec_review import ExplanationsSpec, FairnessSpec, OutcomesSpec, SegmentsSpec
from tasks.core.spec_sections import (
    Compute,
    DataSpec,
    DriftSpec,
    EstimatorSpec,
    EvaluationSpec,
    QualitySpec,
    SearchSpec,
    Thresholds,
    ValidationSpec,
)
from tasks.core.spec_yaml import DuplicateKeyError, UniqueKeyLoader

SPEC_DIR = Path("deployments/models")
DEFAULT_SPEC = SPEC_DIR / "fraud-detector.yaml"


class SpecError(ConveyorError):
    """The model spec is missing or invalid."""


class FeatureType(StrEnum):
    numeric = "numeric"
    integer = "integer"
    boolean = "boolean"
    category = "category"


class FeatureSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="The column; the served tensor keeps the features' order.")
    type: FeatureType = Field(description="numeric, integer, boolean (sent as 0/1) or category.")
    min: float | None = Field(default=None, description="Smallest value the contract accepts.")
    max: float | None = Field(default=None, description="Largest value the contract accepts.")
    categories: list[str] | None = Field(
        default=None, description="A category's values; callers send a value's index here."
    )
    nullable: bool = Field(default=False, description="Missing values allowed (and imputed).")

    @model_validator(mode="after")
    def _consistent(self) -> FeatureSpec:
        if self.type is FeatureType.category and not self.categories:
            raise ValueError(f"feature {self.name!r} is a category: list its `categories`")
        if self.type is not FeatureType.category and self.categories:
            raise ValueError(f"feature {self.name!r} has `categories` but is {self.type.value}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"feature {self.name!r}: min {self.min} > max {self.max}")
        return self


class TargetSpec(BaseModel):
    """A classifier's target lists its classes (integers or strings; the served `label` is the
    index into this list); a regression's target has no classes and may state its range."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="The label column.")
    classes: list[int] | list[str] | None = Field(
        default=None, description="Classifiers: every class, the negative first for binary."
    )
    min: float | None = Field(default=None, description="Regression: the target's range.")
    max: float | None = Field(default=None, description="Regression: the target's range.")

    @model_validator(mode="after")
    def _consistent(self) -> TargetSpec:
        if self.classes is not None:
            if len(set(map(str, self.classes))) != len(self.classes):
                raise ValueError(f"target classes listed twice: {self.classes}")
            if self.min is not None or self.max is not None:
                raise ValueError("a target with `classes` has no `min`/`max` (that is regression)")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"target min {self.min} > max {self.max}")
        return self


class ModelSpec(BaseModel):
    """One model's contract: its data, features, estimator, gates and serving configuration."""

    model_config = ConfigDict(extra="forbid")

    name: str

    @field_validator("name")
    @classmethod
    def _model_name(cls, name: str) -> str:
        problem = name_problem(name)
        if problem:
            raise ValueError(problem)
        return name

    description: str = Field(default="", description="What the model decides, for the card.")
    # The model card speaks of what one row is in the business's words (a customer, a loan
    # application, a transaction), not of "rows" or of another model's nouns.
    subject: str = Field(
        default="row",
        min_length=1,
        description="What one row is, singular (e.g. customer, loan application); the model "
        "card's noun.",
    )
    task: Task = Field(default=Task.binary, description="binary, multiclass or regression.")
    compute: Compute = Field(
        default="local",
        description="local: the table is read into this process. dask: a partitioned Parquet "
        "table is read, checked, trained on and scored on a Dask cluster (XGBoost, LightGBM).",
    )
    data: DataSpec
    features: list[FeatureSpec] = Field(min_length=1)
    target: TargetSpec
    quality: QualitySpec = Field(default_factory=QualitySpec)
    estimator: EstimatorSpec
    search: SearchSpec = Field(default_factory=SearchSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    thresholds: Thresholds = Field(default_factory=Thresholds)
    validation: ValidationSpec = Field(default_factory=ValidationSpec)
    drift: DriftSpec = Field(default_factory=DriftSpec)
    promotion: PromotionSpec = Field(default_factory=PromotionSpec)
    retention: RetentionSpec = Field(default_factory=RetentionSpec)
    serving: ServingSpec = Field(default_factory=ServingSpec)
    smoke: SmokeSpec = Field(default_factory=SmokeSpec)
    segments: SegmentsSpec = Field(default_factory=SegmentsSpec)
    fairness: FairnessSpec = Field(default_factory=FairnessSpec)
    explanations: ExplanationsSpec = Field(default_factory=ExplanationsSpec)
    outcomes: OutcomesSpec = Field(default_factory=OutcomesSpec)
    # The model gates of the table (`tasks.core.gates`), each off unless its section is set.
    gates: GatesSpec = Field(default_factory=GatesSpec)  # type: ignore[valid-type]

    @model_validator(mode="after")
    def _gates_fit(self) -> ModelSpec:
        if problem := gates_problem(self.task, self.gates):
            raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _compute_fits(self) -> ModelSpec:
        if problem := compute_problem(self.compute, self.estimator.family):
            raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _unique_names(self) -> ModelSpec:
        names = [f.name for f in self.features]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"features listed twice: {duplicated}")
        if self.target.name in names:
            raise ValueError(f"target {self.target.name!r} is also listed as a feature")
        return self

    @model_validator(mode="after")
    def _task_fits(self) -> ModelSpec:
        """The task agrees with its target, its family, its metrics and its gates."""
        task, classes = self.task, self.target.classes
        if task is Task.regression and classes is not None:
            raise ValueError(
                f"task regression but target.classes is {classes}: remove `classes` (a "
                "regression predicts a number), or set `task: multiclass`/`binary`"
            )
        if task is Task.binary and (classes is None or len(classes) != 2):
            raise ValueError(
                f"task binary needs target.classes of two values (negative first), got {classes}: "
                "set `task: multiclass` for more classes, `task: regression` for a number"
            )
        if task is Task.multiclass and (classes is None or len(classes) < 3):
            raise ValueError(
                f"task multiclass needs target.classes of 3 or more values, got {classes}"
                + (": two classes are `task: binary`" if classes and len(classes) == 2 else "")
            )
        if task not in FAMILIES[self.estimator.family].tasks:
            raise ValueError(
                f"estimator family {self.estimator.family} cannot learn a {task.value} task; "
                f"use one of {families_for(task)}"
            )
        known = METRICS[task]
        for where, metric in (
            ("search", self.search.metric),
            ("validation", self.validation.metric),
        ):
            if metric not in known:
                raise ValueError(
                    f"{where}.metric {metric!r} is not a {task.value} metric: use one of "
                    f"{sorted(known)}"
                )
            if metric in THRESHOLD_METRICS:
                raise ValueError(
                    f"{where}.metric {metric!r} depends on an operating threshold that is chosen "
                    f"after the search, so trials and champions cannot be ranked by it: use one "
                    f"of {sorted(set(known) - THRESHOLD_METRICS)} (gate on {metric} in "
                    "`thresholds`)"
                )
        foreign = sorted(set(self.thresholds.limits()) - set(known))
        if foreign:
            raise ValueError(
                f"thresholds {foreign} are not {task.value} metrics: gate on {sorted(known)}"
            )
        if self.thresholds.per_class_recall:
            if classes is None:
                raise ValueError("thresholds.per_class_recall needs a classifier's classes")
            unknown = sorted(set(self.thresholds.per_class_recall) - {str(c) for c in classes})
            if unknown:
                raise ValueError(
                    f"thresholds.per_class_recall names {unknown}, not in target.classes {classes}"
                )
        return self

    @model_validator(mode="after")
    def _review_fits(self) -> ModelSpec:
        """Segments are evaluation-only columns; fairness limits exist for the task."""
        columns = self.segments.columns
        both = sorted(set(columns) & {*self.feature_names, self.target.name})
        if both:
            raise ValueError(
                f"segments.columns {both} are also the model's features or target: a segment is "
                "evaluation-only (never a model input); remove it from one of the two lists"
            )
        if len(set(columns)) != len(columns):
            raise ValueError(f"segments.columns lists a column twice: {columns}")
        fairness, task = self.fairness, self.task
        if fairness.gated and not columns:
            raise ValueError("fairness gates need segments: list the columns in segments.columns")
        for metric in fairness.floors:
            if metric not in score_metrics(task):
                raise ValueError(
                    f"fairness.floors names {metric!r}, not a {task.value} metric a segment's "
                    f"interval can be taken of: use one of {sorted(score_metrics(task))}"
                )
        for name in fairness.limits:
            if name not in DISPARITIES or task not in DISPARITIES[name][1]:
                usable = sorted(n for n, (_, tasks) in DISPARITIES.items() if task in tasks)
                raise ValueError(
                    f"fairness.limits names {name!r}, which does not exist for a {task.value} "
                    f"model: use one of {usable}"
                )
        adverse = self.explanations.adverse_class
        if adverse is not None and str(adverse) not in self.class_names:
            raise ValueError(
                f"explanations.adverse_class {adverse!r} is not one of target.classes "
                f"{self.target.classes}"
            )
        o = self.outcomes
        if o.source is not None and o.labels is not None:
            raise ValueError(
                "outcomes names both `source` (labelled batches) and `labels` (a table joined by "
                "key): choose one"
            )
        if (o.labels is None) != (o.key is None):
            raise ValueError(
                "outcomes.labels and outcomes.key go together: the labels table is joined to the "
                "scored rows by the key column"
            )
        if o.metric and o.metric not in score_metrics(task):
            raise ValueError(
                f"outcomes.metric {o.metric!r} is not a {task.value} metric of scores: use one of "
                f"{sorted(score_metrics(task))}"
            )
        if o.key is not None and o.key in self.feature_names:
            raise ValueError(f"outcomes.key {o.key!r} is a feature: the key identifies a row")
        unknown = sorted(set(self.explanations.reasons) - set(self.feature_names))
        if unknown:
            raise ValueError(
                f"explanations.reasons names {unknown}, which are not features of the model"
            )
        return self

    @model_validator(mode="before")
    @classmethod
    def _task_defaults(cls, raw: object) -> object:
        """An unset search/validation metric is the task's default (pr_auc for binary)."""
        if not isinstance(raw, dict):
            return raw
        try:
            task = Task(raw.get("task", Task.binary))
        except ValueError:
            return raw  # the field's own error names the choices
        raw = dict(raw)
        for section in ("search", "validation"):
            block = raw.get(section)
            block = dict(block) if isinstance(block, dict) else ({} if block is None else block)
            if isinstance(block, dict) and not block.get("metric"):
                block["metric"] = DEFAULT_METRIC[task]
            raw[section] = block
        return raw

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def n_features(self) -> int:
        return len(self.features)

    @property
    def n_classes(self) -> int:
        """Classes of a classifier; 0 for a regression."""
        return len(self.target.classes or [])

    @property
    def subjects(self) -> str:
        """`subject` in the plural, by the English rule (one word is enough for the card)."""
        word = self.subject
        if word.endswith("y") and word[-2:-1] not in "aeiou":
            return word[:-1] + "ies"
        return word + ("es" if word.endswith(("s", "x", "ch", "sh")) else "s")

    @property
    def class_names(self) -> list[str]:
        return [str(c) for c in self.target.classes or []]

    @property
    def outcome_metric(self) -> str:
        return self.outcomes.metric or self.validation.metric

    @property
    def adverse_index(self) -> int | None:
        """A binary model's adverse class (as its index); None for other tasks."""
        if self.task is not Task.binary:
            return None
        adverse = self.explanations.adverse_class
        return 1 if adverse is None else self.class_names.index(str(adverse))


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"])
        # pydantic prefixes what a validator raises with its error type: the sentence is ours.
        message = str(item["msg"]).removeprefix("Value error, ")
        if item["type"] == "missing":
            lines.append(f"  - `{where}` is missing")
        elif item["type"] == "extra_forbidden":
            lines.append(f"  - `{where}` is not a known field (misspelt?)")
        elif where:
            lines.append(f"  - `{where}`: {message}")
        else:  # a check across fields, raised by the spec itself
            lines.append(f"  - {message}")
    return "\n".join(lines)


def load_spec(path: Path | str) -> ModelSpec:
    """Read and validate a model spec, with errors that name the file, the field and the fix."""
    path = Path(path)
    if not path.is_file():
        known = sorted(p.name for p in SPEC_DIR.glob("*.yaml")) if SPEC_DIR.is_dir() else []
        hint = f" Specs in {SPEC_DIR}/: {', '.join(known)}." if known else ""
        raise SpecError(
            f"model spec not found: {path}. Pass an existing YAML file (--spec PATH or "
            f"CONVEYOR_SPEC).{hint}"
        )
    try:
        raw = yaml.load(path.read_text(), Loader=UniqueKeyLoader)  # a SafeLoader subclass
    except DuplicateKeyError as exc:
        raise SpecError(f"model spec {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"model spec {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise SpecError(f"model spec {path} must be a YAML mapping, got {type(raw).__name__}")
    try:
        return ModelSpec.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(
            f"model spec {path} is invalid:\n{_describe(exc)}\n"
            f"Fix these fields; {DEFAULT_SPEC} is a complete example."
        ) from exc
