"""The sections of a model spec that make and judge a model (data, quality, estimator, search,
evaluation, thresholds, drift, validation): each a validated pydantic model with the defaults a
spec may leave out. `tasks.core.spec` assembles them into `ModelSpec`; how a version goes live
is `tasks.core.spec_release`."""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from tasks.core.families import FAMILIES

# Where a release's or a scoring run's work runs: this process, or a Dask cluster
# (`tasks.core.cluster`). Here, not there, because the spec names it and the cluster module
# reads the settings, which read the spec.
Compute = Literal["local", "dask"]
COMPUTES: tuple[Compute, ...] = get_args(Compute)


class DataSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str = Field(
        default="synthetic",
        description="Where the rows come from: `synthetic` (a generator of "
        "tasks/datasets/synthetic.py, `synthetic:<domain>`), a CSV or Parquet file, a"
        " folder or `s3://bucket/prefix` of them (`date=` partitions), or a Delta "
        "table; any URI a source of the sources table claims.",
    )
    rows: int = Field(
        default=50_000, ge=100, description="Synthetic sources: how many rows to generate."
    )
    seed: int = Field(
        default=0,
        description="Synthetic sources: the generator's seed; and the seed of the train/holdout "
        "split.",
    )
    # The synthetic generators' base rate of the positive class (`fraud_rate`: its older name).
    positive_rate: float = Field(
        default=0.02,
        gt=0,
        lt=0.5,
        validation_alias=AliasChoices("positive_rate", "fraud_rate"),
        description="Synthetic binary sources: the base rate of the positive class (`fraud_rate` "
        "is its older name).",
    )
    drift: float = Field(
        default=0.0,
        ge=0,
        description="Synthetic sources: 0 = no drift; 1 = the shift the nightly drift check must "
        "catch.",
    )
    # synthetic:credit-default only: the share of young applicants' repaid loans recorded as
    # defaults, a model unfair to that segment (`tasks.datasets.synthetic._age_bands`).
    bias: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="synthetic:credit-default only: the share of young applicants' repaid loans "
        "recorded as defaults (a model unfair to that segment).",
    )
    holdout_fraction: float = Field(
        default=0.25,
        gt=0,
        lt=1,
        description="Share of the snapshot held out for the gates and the reported figures "
        "(stratified on the target for classifiers).",
    )


class QualitySpec(BaseModel):
    """Data contract checks beyond the feature schema (run before any training)."""

    model_config = ConfigDict(extra="forbid")

    min_rows: int = Field(
        default=1000, ge=1, description="Fewer rows than this in the snapshot stops the release."
    )
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
    params: dict[str, int | float | str | bool | None] = Field(
        default_factory=dict,
        description="Fixed parameters of the estimator; the search's `space` tunes the others.",
    )

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

    trials: int = Field(
        default=8, ge=1, description="Optuna trials (ask/tell); 1 fits the fixed parameters once."
    )
    parallel: int = Field(
        default=2,
        ge=1,
        description="Trials running at once, as Prefect tasks on the training flow's task runner.",
    )
    # One of the task's metrics (tasks.core.model_task.METRICS); the task's default if unset.
    metric: str = Field(
        default="",
        description="One of the task's metrics, scored on a validation split of the training data"
        " (never the holdout); the task's default if unset.",
    )
    validation_fraction: float = Field(
        default=0.25, gt=0, lt=1, description="Share of the training split each trial is scored on."
    )
    # Trials fit on at most this many training rows (a stratified sample); the refit uses all.
    max_rows: int | None = Field(
        default=None,
        ge=100,
        description="Trials fit on a stratified sample of at most this many training rows; the "
        "chosen configuration is refit on the whole training split. Unset: all rows.",
    )
    seed: int = Field(
        default=0,
        description="The sampler's and the sample's seed: the same spec and data search the same "
        "trials.",
    )
    space: dict[str, Dimension] = Field(
        default_factory=dict,
        description="Parameter → its range (`type: int|float|categorical`, `low`/`high`/`log` or "
        "`choices`); parameters not listed keep `estimator.params`.",
    )


class EvaluationSpec(BaseModel):
    """Binary: how the operating threshold on the score is chosen, on out-of-fold scores of the
    training split, never on the holdout that reports the figures at it. Regression: which
    quantile of the absolute error is reported (`abs_error_quantile`)."""

    model_config = ConfigDict(extra="forbid")

    operating_point: Literal["best_f1", "target_precision"] = Field(
        default="best_f1",
        description="Binary: best_f1, or target_precision (the lowest threshold reaching "
        "`target_precision`).",
    )
    target_precision: float = Field(
        default=0.9,
        gt=0,
        le=1,
        description="Binary, with `operating_point: target_precision`: the precision the "
        "threshold must reach.",
    )
    error_quantile: float = Field(
        default=0.9,
        gt=0,
        lt=1,
        description="Regression: the quantile of the absolute error reported (and gated by "
        "`thresholds.abs_error_quantile`).",
    )
    sample_rows: int = Field(
        default=200_000,
        ge=1_000,
        description="With `compute: dask`: the holdout rows brought into one process, a seeded "
        "sample, for what needs them in one place (bootstrap, segments, gates, parity, "
        "explanations); holdout metrics cover every row.",
    )


class Thresholds(BaseModel):
    """Holdout gates. A metric where higher is better (AUCs, accuracy, F1, R²) has a floor; one
    where lower is better (log loss, Brier, RMSE, MAE, the error quantile) a ceiling. Only the
    model's task's metrics may be set; `per_class_recall` floors a classifier's recall by class."""

    model_config = ConfigDict(extra="forbid")

    roc_auc: float | None = Field(
        default=None, ge=0, le=1, description="Binary: the holdout ROC AUC at least."
    )
    pr_auc: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Binary: the holdout PR AUC (average precision) at least.",
    )
    f1: float | None = Field(default=None, ge=0, le=1)
    brier: float | None = Field(
        default=None, ge=0, le=1, description="Binary: the holdout Brier score at most."
    )
    accuracy: float | None = Field(
        default=None, ge=0, le=1, description="Multiclass: the holdout accuracy at least."
    )
    f1_macro: float | None = Field(default=None, ge=0, le=1)
    f1_weighted: float | None = Field(default=None, ge=0, le=1)
    log_loss: float | None = Field(
        default=None, ge=0, description="Multiclass: the holdout log loss at most."
    )
    per_class_recall: dict[str, Annotated[float, Field(ge=0, le=1)]] = Field(
        default_factory=dict,
        description="Multiclass: class → its holdout recall at least (classes as named in "
        "`target.classes`).",
    )
    rmse: float | None = Field(
        default=None,
        ge=0,
        description="Regression: the holdout RMSE at most, in the target's units.",
    )
    mae: float | None = Field(
        default=None,
        ge=0,
        description="Regression: the holdout MAE at most, in the target's units.",
    )
    r2: float | None = Field(default=None, le=1)
    abs_error_quantile: float | None = Field(
        default=None,
        ge=0,
        description="Regression: the `evaluation.error_quantile` quantile of the absolute error "
        "at most.",
    )

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
    seed: int = Field(
        default=0, description="The seed of the sample when a side has more than `max_rows` rows."
    )
    cooldown_s: int = Field(
        default=21_600, ge=0, description="A drift event this soon after a retrain is skipped."
    )


class ValidationSpec(BaseModel):
    """Champion vs challenger on the challenger's holdout: a paired bootstrap of the difference."""

    model_config = ConfigDict(extra="forbid")

    metric: str = Field(
        default="",
        description="The metric the challenger is compared on: one of the task's metrics; the "
        "task's default if unset.",
    )
    rule: Literal["non_inferior", "superior"] = Field(
        default="non_inferior",
        description="non_inferior: the CI of (challenger - champion) rules out a loss larger "
        "than `margin`; superior: it rules out any loss. (For a metric where lower is better, "
        "a loss is a positive difference: the upper bound is read.)",
    )
    # In the metric's own units: an AUC's 0.01, or an RMSE's pounds.
    margin: float = Field(
        default=0.01,
        ge=0,
        description="In the metric's own units (an AUC's 0.01, an RMSE's pounds): the loss "
        "`non_inferior` tolerates.",
    )
    resamples: int = Field(
        default=1000, ge=1000, description="Paired, stratified bootstrap resamples of the holdout."
    )
    confidence: float = Field(
        default=0.95, gt=0.5, lt=1, description="Confidence of the interval of the difference."
    )
    seed: int = Field(default=0, description="The bootstrap's seed.")
