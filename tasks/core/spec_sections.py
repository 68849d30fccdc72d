"""The sections of a model spec below its identity (data, quality, estimator, search,
evaluation, gates, drift, approval, retention, serving, smoke): each a validated pydantic model
with the defaults a spec may leave out. `tasks.core.spec` assembles them into `ModelSpec`."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from tasks.core.families import FAMILIES


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
    # synthetic:credit-default only: the share of young applicants' repaid loans recorded as
    # defaults, a model unfair to that segment (`tasks.datasets.synthetic._age_bands`).
    bias: float = Field(default=0.0, ge=0, le=1)
    holdout_fraction: float = Field(default=0.25, gt=0, lt=1)


class QualitySpec(BaseModel):
    """Data contract checks beyond the feature schema (run before any training)."""

    model_config = ConfigDict(extra="forbid")

    min_rows: int = Field(default=1000, ge=1)
    min_positive_rate: float = Field(
        default=0.001, ge=0, lt=1, description="Binary: share of the positive class."
    )
    min_class_rows: int = Field(
        default=10, ge=1, description="Classifiers: rows of each class, at least."
    )
    max_null_share: float = Field(
        default=0.05, ge=0, le=1, description="Nullable features: a larger share is a warning."
    )


class EstimatorSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    family: str
    params: dict[str, int | float | str | bool | None] = Field(default_factory=dict)

    @field_validator("family")
    @classmethod
    def _known(cls, family: str) -> str:
        if family not in FAMILIES:
            raise ValueError(f"unknown estimator family {family!r}; use one of {list(FAMILIES)}")
        return family


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
    # One of the task's metrics (tasks.core.model_task.METRICS); the task's default if unset.
    metric: str = ""
    validation_fraction: float = Field(default=0.25, gt=0, lt=1)
    # Trials fit on at most this many training rows (a stratified sample); the refit uses all.
    max_rows: int | None = Field(default=None, ge=100)
    seed: int = 0
    space: dict[str, Dimension] = Field(default_factory=dict)


class EvaluationSpec(BaseModel):
    """Binary: how the operating threshold on the score is chosen, on out-of-fold scores of the
    training split, never on the holdout that reports the figures at it. Regression: which
    quantile of the absolute error is reported (`abs_error_quantile`)."""

    model_config = ConfigDict(extra="forbid")

    operating_point: Literal["best_f1", "target_precision"] = "best_f1"
    target_precision: float = Field(default=0.9, gt=0, le=1)
    error_quantile: float = Field(default=0.9, gt=0, lt=1)


class Thresholds(BaseModel):
    """Holdout gates. A metric where higher is better (AUCs, accuracy, F1, R²) has a floor; one
    where lower is better (log loss, Brier, RMSE, MAE, the error quantile) a ceiling. Only the
    model's task's metrics may be set; `per_class_recall` floors a classifier's recall by class."""

    model_config = ConfigDict(extra="forbid")

    roc_auc: float | None = Field(default=None, ge=0, le=1)
    pr_auc: float | None = Field(default=None, ge=0, le=1)
    f1: float | None = Field(default=None, ge=0, le=1)
    brier: float | None = Field(default=None, ge=0, le=1)
    accuracy: float | None = Field(default=None, ge=0, le=1)
    f1_macro: float | None = Field(default=None, ge=0, le=1)
    f1_weighted: float | None = Field(default=None, ge=0, le=1)
    log_loss: float | None = Field(default=None, ge=0)
    per_class_recall: dict[str, Annotated[float, Field(ge=0, le=1)]] = Field(default_factory=dict)
    rmse: float | None = Field(default=None, ge=0)
    mae: float | None = Field(default=None, ge=0)
    r2: float | None = Field(default=None, le=1)
    abs_error_quantile: float | None = Field(default=None, ge=0)

    def limits(self) -> dict[str, float]:
        """The metric gates that are set, by metric name (per-class recall aside)."""
        return {
            k: v for k, v in self.model_dump(exclude={"per_class_recall"}).items() if v is not None
        }


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

    metric: str = ""  # one of the task's metrics; the task's default if unset
    rule: Literal["non_inferior", "superior"] = Field(
        default="non_inferior",
        description="non_inferior: the CI of (challenger - champion) rules out a loss larger "
        "than `margin`; superior: it rules out any loss. (For a metric where lower is better, "
        "a loss is a positive difference: the upper bound is read.)",
    )
    # In the metric's own units: an AUC's 0.01, or an RMSE's pounds.
    margin: float = Field(default=0.01, ge=0)
    resamples: int = Field(default=1000, ge=1000)
    confidence: float = Field(default=0.95, gt=0.5, lt=1)
    seed: int = 0


class CanarySpec(BaseModel):
    """A canary release: after the smoke test, the edge sends `share` of the model's unversioned
    HTTP requests to the candidate for `bake_s`, and the candidate is judged against the
    champion on that same traffic. Outside a limit it is withdrawn at once."""

    model_config = ConfigDict(extra="forbid")

    share: float = Field(default=0.1, gt=0, le=0.5, description="Share of requests, 0-0.5.")
    bake_s: float = Field(default=120.0, gt=0, le=3600)
    min_requests: int = Field(
        default=100,
        ge=10,
        description="Requests the candidate must answer for a verdict; fewer by the end of the "
        "bake time is no verdict, and the canary is withdrawn.",
    )
    max_error_rate: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="Failed share of the candidate's requests (Triton's statistics), above the "
        "champion's own.",
    )
    max_p99_ratio: float = Field(
        default=1.5, gt=1, description="Candidate p99 / champion p99, on the probe's requests."
    )
    max_prediction_shift: float = Field(
        default=0.2,
        gt=0,
        le=1,
        description="Kolmogorov-Smirnov distance between the candidate's and the champion's "
        "answers (score, probability of the last class, or prediction) on the probe's requests.",
    )
    probe_clients: int = Field(default=2, ge=1, le=32)


class PromotionSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    requires_approval: bool = False
    approval_timeout_s: int = Field(default=86_400, gt=0)
    rollout: Literal["direct", "canary"] = Field(
        default="direct",
        description="direct: the swap moves every request at once; canary: a share first.",
    )
    canary: CanarySpec = Field(default_factory=CanarySpec)


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
    tolerance: float = Field(
        default=1e-5,
        gt=0,
        description="Classifiers: max |Δ probability|; regressors: max |Δ prediction| as a "
        "share of the holdout target's standard deviation (ONNX vs sklearn, served vs offline).",
    )
    swap_probe_clients: int = Field(
        default=2,
        ge=1,
        description="Clients sending unversioned requests while a new version is swapped in.",
    )
