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

    columns: list[str] = Field(default_factory=list)
    # Below this many holdout rows a segment value is reported as too small and not judged: its
    # interval would be too wide to say anything either way.
    min_rows: int = Field(default=200, ge=10)
    resamples: int = Field(default=500, ge=50, le=10_000)
    confidence: float = Field(default=0.95, gt=0.5, lt=1)
    seed: int = 0


class FairnessSpec(BaseModel):
    """Gates on segments. `floors`: a per-segment limit on a metric of the task (a floor where
    higher is better, a ceiling where lower is). `limits`: disparity between the segments of each
    column (`tasks.core.model_task.DISPARITIES`). A gate fails only when the confidence interval
    lies wholly on the wrong side of its limit. Against a champion, the challenger's disparity
    may not be worse than the champion's by more than `champion_margin` (again by the interval)."""

    model_config = ConfigDict(extra="forbid")

    floors: dict[str, float] = Field(default_factory=dict)
    limits: dict[str, float] = Field(default_factory=dict)
    champion_margin: float = Field(default=0.02, ge=0)

    @property
    def gated(self) -> bool:
        return bool(self.floors or self.limits)


class ExplanationsSpec(BaseModel):
    """Global importance logged with every version, and reason codes (`conveyor explain`)."""

    model_config = ConfigDict(extra="forbid")

    # Holdout rows the global importance is computed on: the mean |contribution| settles long
    # before the whole holdout, and exact tree SHAP costs grow with rows x trees x depth.
    sample_rows: int = Field(default=500, ge=50)
    top: int = Field(default=4, ge=1, le=20)
    # A binary model's adverse outcome (the class a reason code explains a push toward);
    # unset: the second class (`default`, `fraud`, `churned`). A multiclass model's codes explain
    # the predicted class, a regression's a higher prediction (a loss, an exposure, a claim).
    adverse_class: int | str | None = None
    # feature -> the reason a person reads ("revolving utilisation is high").
    reasons: dict[str, str] = Field(default_factory=dict)


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

    source: str | None = None
    labels: str | None = None
    key: str | None = None
    # How long labels take to arrive (days): said in the report, so a reader knows how old the
    # checked decisions are. Nothing waits on it.
    label_lag_days: int | None = Field(default=None, ge=0)
    metric: str = ""  # default: the validation metric
    # A drop below the released figure by more than this (in the metric's units) is degradation,
    # when the interval says so.
    tolerance: float = Field(default=0.02, ge=0)
    min_rows: int = Field(default=500, ge=50)
    max_rows: int = Field(default=200_000, ge=1000)
    resamples: int = Field(default=500, ge=50, le=10_000)
    confidence: float = Field(default=0.95, gt=0.5, lt=1)
    seed: int = 0
    # synthetic only: the share of a later batch's rows whose targets are shuffled among
    # themselves: the features and the target's own distribution stay, their relation breaks.
    degradation: float = Field(default=0.0, ge=0, le=1)

    @property
    def configured(self) -> bool:
        return self.source is not None or self.labels is not None
