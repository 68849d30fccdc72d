"""The spec's sections for a model-risk review: the segments the holdout is sliced by, the
fairness limits between them, and how each score is explained. What the figures mean is
`tasks.modeling.segments`, `tasks.modeling.fairness` and `tasks.modeling.explain`."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class SegmentsSpec(BaseModel):
    """Columns to slice the holdout by (age band, region, product, a protected attribute). They
    are evaluation-only: present in the data and checked by its contract, never model inputs and
    never sent to Triton, so a segment may not also be a feature."""

    model_config = ConfigDict(extra="forbid")

    columns: list[str] = Field(
        default_factory=list,
        description="Columns to slice the holdout by (evaluation only: never model inputs, never "
        "sent to Triton).",
    )
    # Below this many holdout rows a segment value is reported as too small and not judged: its
    # interval would be too wide to say anything either way.
    min_rows: int = Field(
        default=200,
        ge=10,
        description="A segment value with fewer holdout rows is reported as too small, not judged.",
    )
    resamples: int = Field(
        default=500, ge=50, le=10_000, description="Bootstrap resamples of each segment's interval."
    )
    confidence: float = Field(
        default=0.95, gt=0.5, lt=1, description="Confidence of those intervals."
    )
    seed: int = Field(default=0, description="The bootstrap's seed.")


class FairnessSpec(BaseModel):
    """Gates on segments. `floors`: a per-segment limit on a metric of the task (a floor where
    higher is better, a ceiling where lower is). `limits`: disparity between the segments of each
    column (`tasks.core.model_task.DISPARITIES`). A gate fails only when the confidence interval
    lies wholly on the wrong side of its limit. Against a champion, the challenger's disparity
    may not be worse than the champion's by more than `champion_margin` (again by the interval)."""

    model_config = ConfigDict(extra="forbid")

    floors: dict[str, float] = Field(
        default_factory=dict,
        description="Metric → the limit every segment must meet (a floor where higher is better, "
        "a ceiling where lower is).",
    )
    limits: dict[str, float] = Field(
        default_factory=dict,
        description="Disparity → its limit between the segments of each column.",
    )
    champion_margin: float = Field(
        default=0.02,
        ge=0,
        description="How much worse than the champion's a challenger's disparity may be (by the "
        "interval).",
    )

    @property
    def gated(self) -> bool:
        return bool(self.floors or self.limits)


class ExplanationsSpec(BaseModel):
    """Global importance logged with every version, and reason codes (`conveyor explain`)."""

    model_config = ConfigDict(extra="forbid")

    # Holdout rows the global importance is computed on: the mean |contribution| settles long
    # before the whole holdout, and exact tree SHAP costs grow with rows x trees x depth.
    sample_rows: int = Field(
        default=500, ge=50, description="Holdout rows the global importance is computed on."
    )
    top: int = Field(default=4, ge=1, le=20, description="Reasons per row in `conveyor explain`.")
    # A binary model's adverse outcome (the class a reason code explains a push toward);
    # unset: the second class (`default`, `fraud`, `churned`). A multiclass model's codes explain
    # the predicted class, a regression's a higher prediction (a loss, an exposure, a claim).
    adverse_class: int | str | None = Field(
        default=None,
        description="Binary: the class a reason code explains a push toward; unset: the second "
        "class.",
    )
    # feature -> the reason a person reads ("revolving utilisation is high").
    reasons: dict[str, str] = Field(
        default_factory=dict,
        description='Feature → the reason a person reads ("revolving utilisation is high").',
    )


class OutcomesSpec(BaseModel):
    """Where the model's outcomes (labels) arrive, and when a drop in a realised metric is
    degradation. Two ways to point at labels:

    - `source`: labelled batches, read for the newest `date=YYYY-MM-DD` partition whose target
      is filled (a file, a folder, s3://bucket/prefix), or `synthetic` (the spec's generator, a
      later seed, with the `degradation` knob);
    - `labels` + `key`: a table of key + target (chargebacks, defaults) joined by `key` to the
      newest batch of `data.source` (the rows that were scored).

    Unset: the model has no outcome check; the nightly run still estimates its performance from
    its probabilities (binary models) and checks drift."""

    model_config = ConfigDict(extra="forbid")

    source: str | None = Field(
        default=None,
        description="Labelled batches (newest `date=` partition with the target filled), or "
        "`synthetic`.",
    )
    labels: str | None = Field(
        default=None,
        description="A table of key + target, joined by `key` to the newest batch of "
        "`data.source`.",
    )
    key: str | None = Field(
        default=None,
        description="The join key of `labels` (and the column `conveyor score` keeps beside the "
        "scores).",
    )
    # How long labels take to arrive (days): said in the report, so a reader knows how old the
    # checked decisions are. Nothing waits on it.
    label_lag_days: int | None = Field(
        default=None,
        ge=0,
        description="How long labels take to arrive, said in the report; nothing waits on it.",
    )
    metric: str = Field(
        default="", description="The realised metric; default: the validation metric."
    )
    # A drop below the released figure by more than this (in the metric's units) is degradation,
    # when the interval says so.
    tolerance: float = Field(
        default=0.02,
        ge=0,
        description="A drop below the released figure by more than this, by the interval, is "
        "degradation.",
    )
    min_rows: int = Field(
        default=500, ge=50, description="Fewer labelled rows: too small, never healthy."
    )
    max_rows: int = Field(
        default=200_000,
        ge=1000,
        description="Labelled rows checked at most (a seeded sample beyond).",
    )
    resamples: int = Field(
        default=500,
        ge=50,
        le=10_000,
        description="Bootstrap resamples of the realised metric's interval.",
    )
    confidence: float = Field(
        default=0.95, gt=0.5, lt=1, description="Confidence of that interval."
    )
    seed: int = Field(default=0, description="The sample's and the bootstrap's seed.")
    # synthetic only: the share of a later batch's rows whose targets are shuffled among
    # themselves: the features and the target's own distribution stay, their relation breaks.
    degradation: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="synthetic only: the share of a later batch's targets shuffled among "
        "themselves.",
    )

    @property
    def configured(self) -> bool:
        return self.source is not None or self.labels is not None
