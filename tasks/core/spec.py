"""One model's contract, from its YAML spec in `deployments/models/`: data, features, target,
quality, estimator and search, evaluation and gates, drift, approval, retention, serving and
smoke test. `load_spec` reads and validates one; nothing is read at import.

Where things run (state directory, servers, credentials) is `tasks.core.settings`, not here."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, model_validator

from tasks.core.errors import ConveyorError

SPEC_DIR = Path("deployments/models")
DEFAULT_SPEC = SPEC_DIR / "fraud-detector.yaml"
# A model name is its registry entry, its Triton model and its spec file's stem.
MODEL_NAME = r"^[a-z0-9][a-z0-9_-]*$"


class SpecError(ConveyorError):
    """The model spec is missing or invalid."""


class FeatureType(StrEnum):
    numeric = "numeric"
    integer = "integer"
    boolean = "boolean"
    category = "category"


class FeatureSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    type: FeatureType
    min: float | None = None
    max: float | None = None
    categories: list[str] | None = None
    nullable: bool = False

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
    model_config = ConfigDict(extra="forbid")

    name: str
    classes: list[int] = Field(min_length=2)


class DataSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str = "synthetic"
    rows: int = Field(default=50_000, ge=100)
    seed: int = 0
    # The synthetic generators' base rate of the positive class (`fraud_rate`: its older name).
    positive_rate: float = Field(
        default=0.02, gt=0, lt=0.5, validation_alias=AliasChoices("positive_rate", "fraud_rate")
    )
    drift: float = Field(default=0.0, ge=0)
    holdout_fraction: float = Field(default=0.25, gt=0, lt=1)


EstimatorFamily = Literal["random_forest", "hist_gradient_boosting", "logistic_regression"]


class QualitySpec(BaseModel):
    """Data contract checks beyond the feature schema (run before any training)."""

    model_config = ConfigDict(extra="forbid")

    min_rows: int = Field(default=1000, ge=1)
    min_positive_rate: float = Field(default=0.001, ge=0, lt=1)
    max_null_share: float = Field(
        default=0.05, ge=0, le=1, description="Nullable features: a larger share is a warning."
    )


class EstimatorSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    family: EstimatorFamily
    params: dict[str, int | float | str | bool | None] = Field(default_factory=dict)


class Dimension(BaseModel):
    """One hyperparameter's range: ints or floats between low and high, or a set of choices."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["int", "float", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list[int | float | str | bool | None] | None = None

    @model_validator(mode="after")
    def _complete(self) -> Dimension:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical dimension needs `choices`")
        elif self.low is None or self.high is None or self.low > self.high:
            raise ValueError(f"an {self.type} dimension needs low <= high")
        return self


class SearchSpec(BaseModel):
    """Hyperparameter search: Optuna ask/tell, `parallel` trials at once, each a Prefect task."""

    model_config = ConfigDict(extra="forbid")

    trials: int = Field(default=8, ge=1)
    parallel: int = Field(default=2, ge=1)
    metric: Literal["roc_auc", "pr_auc"] = "pr_auc"
    validation_fraction: float = Field(default=0.25, gt=0, lt=1)
    # Trials fit on at most this many training rows (a stratified sample); the refit uses all.
    max_rows: int | None = Field(default=None, ge=100)
    seed: int = 0
    space: dict[str, Dimension] = Field(default_factory=dict)


class EvaluationSpec(BaseModel):
    """How the operating threshold on the fraud score is chosen: on out-of-fold scores of the
    training split, never on the holdout that reports the figures at it."""

    model_config = ConfigDict(extra="forbid")

    operating_point: Literal["best_f1", "target_precision"] = "best_f1"
    target_precision: float = Field(default=0.9, gt=0, le=1)


class Thresholds(BaseModel):
    model_config = ConfigDict(extra="forbid")

    roc_auc: float = Field(default=0.0, ge=0, le=1)
    pr_auc: float = Field(default=0.0, ge=0, le=1)


class DriftSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    share: float = Field(default=0.3, gt=0, le=1, description="Drifted-column share = drift.")
    max_rows: int = Field(
        default=100_000, ge=1000, description="Rows compared per side; larger sides are sampled."
    )
    seed: int = 0
    cooldown_s: int = Field(
        default=21_600, ge=0, description="A drift event this soon after a retrain is skipped."
    )


class ValidationSpec(BaseModel):
    """Champion vs challenger on the challenger's holdout: a paired bootstrap of the difference."""

    model_config = ConfigDict(extra="forbid")

    metric: Literal["roc_auc", "pr_auc"] = "pr_auc"
    rule: Literal["non_inferior", "superior"] = Field(
        default="non_inferior",
        description="non_inferior: CI lower bound of (challenger - champion) > -margin; "
        "superior: lower bound > 0.",
    )
    margin: float = Field(default=0.01, ge=0, lt=1)
    resamples: int = Field(default=1000, ge=1000)
    confidence: float = Field(default=0.95, gt=0.5, lt=1)
    seed: int = 0


class PromotionSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    requires_approval: bool = False
    approval_timeout_s: int = Field(default=86_400, gt=0)


class RetentionSpec(BaseModel):
    """What the model repository keeps after a promotion: champion, previous and the newest
    `keep_last` versions; older ones lose their files (their MLflow versions stay, tagged
    `conveyor.retired`)."""

    model_config = ConfigDict(extra="forbid")

    keep_last: int = Field(default=3, ge=0)


class TuningSpec(BaseModel):
    """A short measured sweep on the candidate before its smoke test. The best throughput whose
    p99 is within `smoke.p99_budget_ms` at `smoke.concurrency` is the configuration the version
    goes live with."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    max_queue_delays_us: list[Annotated[int, Field(ge=0)]] = Field(
        default_factory=lambda: [0, 100, 500], min_length=1
    )
    instance_counts: list[Annotated[int, Field(gt=0)]] = Field(
        default_factory=lambda: [1, 2], min_length=1
    )
    requests: int = Field(default=1000, ge=50, description="Batch-1 requests per configuration.")


class ServingSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(default=256, gt=0)
    preferred_batch_sizes: list[Annotated[int, Field(gt=0)]] = Field(default_factory=list)
    max_queue_delay_microseconds: int = Field(default=200, ge=0)
    instance_count: int = Field(default=1, gt=0)
    kind: Literal["KIND_CPU", "KIND_GPU"] = "KIND_CPU"
    tuning: TuningSpec = Field(default_factory=TuningSpec)

    @model_validator(mode="after")
    def _preferred_within_max(self) -> ServingSpec:
        too_big = [s for s in self.preferred_batch_sizes if s > self.max_batch_size]
        if too_big:
            raise ValueError(
                f"preferred_batch_sizes {too_big} exceed max_batch_size {self.max_batch_size}"
            )
        return self


class SmokeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rows: int = Field(default=1000, ge=1)
    latency_requests: int = Field(default=200, ge=10, description="Sequential, batch 1.")
    concurrency: int = Field(default=8, ge=1, description="Clients of the load check.")
    load_requests: int = Field(default=2000, ge=10, description="Batch-1 requests, all clients.")
    p99_budget_ms: float = Field(
        default=50.0, gt=0, description="p99 latency allowed under load at `concurrency`."
    )
    tolerance: float = Field(default=1e-5, gt=0)
    swap_probe_clients: int = Field(
        default=2,
        ge=1,
        description="Clients sending unversioned requests while a new version is swapped in.",
    )


class ModelSpec(BaseModel):
    """One model's contract: its data, features, estimator, gates and serving configuration."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=MODEL_NAME)
    description: str = ""
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

    @model_validator(mode="after")
    def _unique_names(self) -> ModelSpec:
        names = [f.name for f in self.features]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"features listed twice: {duplicated}")
        if self.target.name in names:
            raise ValueError(f"target {self.target.name!r} is also listed as a feature")
        return self

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def n_features(self) -> int:
        return len(self.features)

    @property
    def n_classes(self) -> int:
        return len(self.target.classes)


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(top level)"
        if item["type"] == "missing":
            lines.append(f"  - `{where}` is missing")
        elif item["type"] == "extra_forbidden":
            lines.append(f"  - `{where}` is not a known field (misspelt?)")
        else:
            lines.append(f"  - `{where}`: {item['msg']}")
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
        raw = yaml.safe_load(path.read_text())
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
