"""Performance estimated before the labels arrive: confidence-based performance estimation
(CBPE, as NannyML describes it) for binary models.

A calibrated probability p is the chance the row is positive, so on an unlabelled batch the
confusion matrix at each threshold has an expected value: expected true positives above a
threshold are the sum of p there, expected false positives the sum of 1 - p. ROC AUC, average
precision and the Brier score follow from those sums. The model's scores are calibrated first
(isotonic regression on the champion's release holdout, where the labels are known): the
estimate is only as good as that calibration and assumes the relation between features and
outcome has not changed (drift in the features is what it can see). So it is reported as an
estimate and never gates anything.

NannyML itself does not fit our pins: nannyml 0.13.1 requires lightgbm < 4.6 (we serve 4.7.0)
and brings FLAML, gcsfs, s3fs, kaleido, plotly and a telemetry client (segment-analytics) with
it. The arithmetic is small, so it is here: two cumulative sums over one sort."""

from __future__ import annotations

import numpy as np
from sklearn.isotonic import IsotonicRegression

ESTIMABLE = {"roc_auc", "pr_auc", "brier"}


def calibrator(scores: np.ndarray, labels: np.ndarray) -> IsotonicRegression:
    """Scores → calibrated probabilities, fitted where the labels are known."""
    return IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(scores, labels)


def expected_metric(metric: str, scores: np.ndarray, probability: np.ndarray) -> float:
    """The metric's expected value when row i is positive with `probability[i]`, for a model
    that ranks rows by `scores`."""
    if metric == "brier":
        return float(np.mean(probability * (1 - scores) ** 2 + (1 - probability) * scores**2))
    order = np.argsort(-scores, kind="mergesort")
    ranked, p = scores[order], probability[order]
    ends = np.flatnonzero(np.r_[ranked[1:] != ranked[:-1], True])  # tied scores: one threshold
    tp, fp = np.cumsum(p)[ends], np.cumsum(1 - p)[ends]
    positives, negatives = tp[-1], fp[-1]
    if positives <= 0 or negatives <= 0:
        return float("nan")
    recall = np.r_[0.0, tp / positives]
    if metric == "roc_auc":
        fpr = np.r_[0.0, fp / negatives]
        return float(np.sum(np.diff(fpr) * (recall[1:] + recall[:-1]) / 2))
    precision = tp / (tp + fp)
    return float(np.sum(np.diff(recall) * precision))
