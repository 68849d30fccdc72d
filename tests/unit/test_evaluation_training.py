import numpy as np
import pytest

from tasks.data import DataError
from tasks.evaluation import GateError, ModelMetrics, check_thresholds, compute_metrics
from tasks.settings import DEFAULT_SPEC, Thresholds, load_spec
from tasks.training import fit


def test_metrics_of_a_perfect_and_a_useless_scorer() -> None:
    target = np.array([0, 0, 0, 1, 1])
    perfect = compute_metrics(target, target, np.array([0.1, 0.2, 0.3, 0.8, 0.9]))
    assert (perfect.roc_auc, perfect.pr_auc, perfect.f1) == (1.0, 1.0, 1.0)
    useless = compute_metrics(target, np.zeros(5, dtype=int), np.full(5, 0.5))
    assert useless.roc_auc == 0.5
    assert useless.f1 == 0.0
    assert useless.positive_rate == pytest.approx(0.4)


def test_threshold_gate_names_each_missed_metric() -> None:
    metrics = ModelMetrics(roc_auc=0.80, pr_auc=0.5, f1=0.4, positive_rate=0.02, rows=100)
    assert check_thresholds(metrics, Thresholds(roc_auc=0.8, pr_auc=0.5)).passed
    with pytest.raises(GateError, match=r"roc_auc 0.8000 < 0.9000") as err:
        check_thresholds(metrics, Thresholds(roc_auc=0.9, pr_auc=0.6))
    assert "pr_auc 0.5000 < 0.6000" in str(err.value)


def test_single_class_target_is_refused() -> None:
    spec = load_spec(DEFAULT_SPEC)
    with pytest.raises(DataError, match="only class"):
        fit(spec, np.zeros((10, spec.n_features), dtype=np.float32), np.zeros(10, dtype=np.int64))
