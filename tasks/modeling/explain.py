"""Why a model scores a row the way it does: additive contributions per feature (SHAP values),
global importance, and reason codes.

Contributions are exact for every family conveyor trains, and each family says how it takes
them (`Family.contributions`, `tasks.core.families`): the boosting libraries natively, scikit-
learn's trees through shap's TreeExplainer (path-dependent, no background data needed), the
linear models as coefficient x (value - background mean), what shap's LinearExplainer computes
for independent features. They are taken on the Pipeline's encoded
columns and summed back to the spec's features (a category's one-hot columns are one feature),
which keeps them additive: base value + the row's contributions is the model's raw output, in
its own units (`Link`): log-odds for boosted and linear classifiers, a probability for random
forests, the target's units for a regression.

Reason codes explain a push toward the adverse outcome: a binary model's adverse class
(`explanations.adverse_class`), a multiclass model's predicted class, a higher regression value."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import BaseModel
from sklearn.pipeline import Pipeline

from tasks.core.families import FAMILIES
from tasks.core.model_task import Task
from tasks.core.spec import FeatureType, ModelSpec

# What base value + contributions add up to, per family and task, and how that maps to the
# score a caller sees: "logit" (sigmoid of it is the positive class's probability), "softmax"
# (one raw value per class), "probability", "identity" (the prediction itself).
Link = Literal["logit", "softmax", "probability", "identity"]


def link_of(spec: ModelSpec) -> Link:
    if spec.task is Task.regression:
        return "identity"
    if FAMILIES[spec.estimator.family].link == "probability":
        return "probability"  # a forest averages its trees' class shares
    return "softmax" if spec.task is Task.multiclass else "logit"


class Contributions(BaseModel):
    """Per row and class (one "class" for binary and regression), the base value and each
    feature's contribution, in the link's units. Arrays: base (n, k), values (n, k, features)."""

    model_config = {"arbitrary_types_allowed": True}

    link: Link
    base: Any
    values: Any

    def raw(self) -> np.ndarray:
        """base + contributions: the model's raw output per row and class."""
        return self.base + self.values.sum(axis=2)

    def scores(self) -> np.ndarray:
        """The scores the contributions reproduce: (n,) for binary and regression (the
        positive class's probability, the prediction), (n, k) class probabilities."""
        raw = self.raw()
        if self.link == "logit":
            return 1 / (1 + np.exp(-raw[:, 0]))
        if self.link == "softmax":
            shifted = np.exp(raw - raw.max(axis=1, keepdims=True))
            return shifted / shifted.sum(axis=1, keepdims=True)
        if self.link == "probability" and raw.shape[1] > 1:
            # A binary forest's two columns: the positive class's probability is the score.
            return raw[:, 1] if raw.shape[1] == 2 else raw
        return raw[:, 0]


def feature_of_column(spec: ModelSpec, model: Pipeline) -> np.ndarray:
    """For each column the Pipeline's encoder emits, the index of the spec feature it came from
    (a category's one-hot columns all map to that category)."""
    owners: list[int] = []
    for _, transformer, columns in model[0].transformers_:
        if transformer == "drop":
            continue
        for index in columns:
            if spec.features[index].type is FeatureType.category:
                owners += [index] * len(spec.features[index].categories or [])
            else:
                owners.append(index)
    return np.asarray(owners)


def _by_feature(spec: ModelSpec, model: Pipeline, columns: np.ndarray) -> np.ndarray:
    """(n, k, encoded columns) → (n, k, spec features), summing each feature's columns."""
    owners = feature_of_column(spec, model)
    out = np.zeros((*columns.shape[:2], spec.n_features))
    for feature in range(spec.n_features):
        out[:, :, feature] = columns[:, :, owners == feature].sum(axis=2)
    return out


def contributions(
    spec: ModelSpec, model: Pipeline, features: np.ndarray, background: np.ndarray
) -> Contributions:
    """Every row's contributions per feature. `background`: rows (served features) whose mean
    is the linear models' reference point (the release's holdout); trees need none."""
    encoded = np.asarray(model[:-1].transform(features), dtype=np.float64)
    k = spec.n_classes if spec.task is Task.multiclass else 1
    reference = np.asarray(model[:-1].transform(background), dtype=np.float64)
    explain = FAMILIES[spec.estimator.family].contributions
    values, base = explain(model[-1], encoded, k, reference)
    return Contributions(
        link=link_of(spec), base=np.array(base), values=_by_feature(spec, model, values)
    )


def toward_adverse(spec: ModelSpec, c: Contributions) -> tuple[np.ndarray, np.ndarray]:
    """(n, features) contributions toward each row's adverse outcome, and the explained class
    per row (-1 for a regression). A binary logit or a regression has one column (toward the
    positive class / a higher value); a forest's probability columns and a multiclass model's
    margins are read at the explained class."""
    n = len(c.values)
    if spec.task is Task.regression:
        return c.values[:, 0, :], np.full(n, -1)
    if spec.task is Task.multiclass:
        explained = c.raw().argmax(axis=1)
        return c.values[np.arange(n), explained, :], explained
    adverse = spec.adverse_index or 0
    if c.values.shape[1] == 2:  # a forest's per-class probabilities
        return c.values[:, adverse, :], np.full(n, adverse)
    # One log-odds column, toward class 1: toward class 0 is its negative.
    sign = 1.0 if adverse == 1 else -1.0
    return sign * c.values[:, 0, :], np.full(n, adverse)


# Where each version's global importance is kept with its MLflow run (the plot beside it).
IMPORTANCE_ARTIFACT = "evaluation/importance.json"


class Importance(BaseModel):
    """Global importance: mean |contribution| per feature over `rows` holdout rows, largest
    first, in the link's units."""

    method: str
    link: Link
    rows: int
    features: list[str]
    mean_abs: list[float]

    def markdown(self) -> list[str]:
        top = max(self.mean_abs) or 1.0
        lines = ["| feature | mean abs contribution | relative |", "|---|---:|---|"]
        for name, value in zip(self.features, self.mean_abs, strict=True):
            lines.append(f"| {name} | {value:.4g} | {'█' * max(1, round(10 * value / top))} |")
        return lines


def global_importance(
    spec: ModelSpec, model: Pipeline, features: np.ndarray, seed: int = 0
) -> Importance:
    """Mean |contribution| over a seeded sample of `features` (the holdout), all classes."""
    rows = spec.explanations.sample_rows
    if len(features) > rows:
        features = features[np.random.default_rng(seed).choice(len(features), rows, False)]
    c = contributions(spec, model, features, features)
    mean_abs = np.abs(c.values).mean(axis=(0, 1))
    order = np.argsort(-mean_abs, kind="stable")
    return Importance(
        method=FAMILIES[spec.estimator.family].explanation,
        link=c.link,
        rows=len(features),
        features=[spec.feature_names[i] for i in order],
        mean_abs=[float(mean_abs[i]) for i in order],
    )


def importance_figure(importance: Importance) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 0.35 * len(importance.features) + 1.2))
    axes.barh(importance.features[::-1], importance.mean_abs[::-1])
    axes.set_xlabel(f"mean |contribution| ({importance.link} units), {importance.rows} rows")
    axes.set_title("Global importance")
    figure.tight_layout()
    return figure
