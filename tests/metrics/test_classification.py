"""Classification metrics, against scikit-learn."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from vesalius.metrics.classification import (
    bootstrap_confidence_intervals,
    classification_metrics,
    expected_calibration_error,
    roc_auc,
)


def _classifier_output(seed: int, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities that carry some signal, coarsely quantised so that many scores tie."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 1.2 * np.eye(k)[y]
    p = np.round(np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True), 1) + 0.05
    return y, p / p.sum(axis=1, keepdims=True)


def test_binary_classification_agrees_with_sklearn() -> None:
    y, p = _classifier_output(3, 150, 2)
    pred = p.argmax(axis=1)
    m = classification_metrics(y, p, bootstrap=200)
    assert m["auc"] == pytest.approx(skm.roc_auc_score(y, p[:, 1]), abs=1e-12)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred))
    assert m["f1_macro"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["sensitivity"] == pytest.approx(skm.recall_score(y, pred))
    assert m["specificity"] == pytest.approx(skm.recall_score(y, pred, pos_label=0))
    assert m["confusion_matrix"] == skm.confusion_matrix(y, pred).tolist()
    assert m["auc_per_class"][0] == pytest.approx(skm.roc_auc_score(y == 0, p[:, 0]))
    json.dumps(m)


@pytest.mark.parametrize("k", [3, 5])
def test_multiclass_classification_agrees_with_sklearn(k: int) -> None:
    y, p = _classifier_output(k, 200, k)
    pred = p.argmax(axis=1)
    m = classification_metrics(y, p, bootstrap=0)
    assert m["auc"] == pytest.approx(skm.roc_auc_score(y, p, multi_class="ovr", average="macro"), abs=1e-12)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["f1_macro"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["f1_per_class"] == pytest.approx(skm.f1_score(y, pred, average=None).tolist())
    assert m["sensitivity_per_class"] == pytest.approx(skm.recall_score(y, pred, average=None).tolist())
    mcm = skm.multilabel_confusion_matrix(y, pred)  # [[tn, fp], [fn, tp]] per class
    assert m["specificity_per_class"] == pytest.approx((mcm[:, 0, 0] / mcm[:, 0].sum(axis=1)).tolist())
    assert m["confusion_matrix"] == skm.confusion_matrix(y, pred).tolist()
    assert m["accuracy_ci"] is None and m["auc_ci"] is None and "sensitivity" not in m


def test_class_absent_from_truth_but_predicted() -> None:
    y = np.array([0, 1, 0, 1, 0, 1])
    p = np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.3, 0.3, 0.4], [0.1, 0.8, 0.1], [0.6, 0.2, 0.2], [0.2, 0.3, 0.5]])
    pred = p.argmax(axis=1)
    m = classification_metrics(y, p, bootstrap=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["f1_macro"] == pytest.approx(skm.f1_score(y, pred, average="macro", zero_division=0))
    assert math.isnan(m["auc_per_class"][2]) and m["auc"] == pytest.approx(np.mean(m["auc_per_class"][:2]))
    assert math.isnan(roc_auc(np.zeros(3, int), np.array([[0.4, 0.6], [0.5, 0.5], [0.9, 0.1]])))


def test_auc_of_tied_scores_counts_one_half() -> None:
    assert roc_auc(np.array([0, 1]), np.array([[0.5, 0.5], [0.5, 0.5]])) == 0.5
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([[0.9, 0.1], [0.6, 0.4], [0.6, 0.4], [0.2, 0.8]])) == 0.875


def test_expected_calibration_error_by_hand() -> None:
    y = np.array([1, 1, 1, 0])
    p = np.array([[0.1, 0.9], [0.92, 0.08], [0.35, 0.65], [0.45, 0.55]])
    # 15 bins: {0.9, 0.92} share (0.867, 0.933]: accuracy 1/2, confidence 0.91; 0.65 right; 0.55 wrong.
    expected = (2 * abs(0.5 - 0.91) + abs(1 - 0.65) + abs(0 - 0.55)) / 4
    assert expected_calibration_error(y, p) == pytest.approx(expected)
    assert classification_metrics(y, p, bootstrap=0)["ece"] == pytest.approx(expected)
    assert expected_calibration_error(y, p, bins=1) == pytest.approx(abs(0.5 - np.mean([0.9, 0.92, 0.65, 0.55])))


def test_bootstrap_intervals_are_seeded_and_contain_the_estimate() -> None:
    y, p = _classifier_output(7, 120, 3)
    m = classification_metrics(y, p, bootstrap=300, seed=5)
    for name in ("accuracy", "auc"):
        low, high = m[f"{name}_ci"]
        assert low < m[name] < high
    assert classification_metrics(y, p, bootstrap=300, seed=5)["auc_ci"] == m["auc_ci"]
    assert classification_metrics(y, p, bootstrap=300, seed=6)["auc_ci"] != m["auc_ci"]
    # one resample: the interval collapses to the statistic of that resample
    index = np.random.default_rng(11).integers(0, y.size, size=(1, y.size))[0]
    single = bootstrap_confidence_intervals(y, p, resamples=1, seed=11)
    assert single["auc"] == pytest.approx((roc_auc(y[index], p[index]),) * 2)
    assert single["accuracy"][0] == pytest.approx(np.mean(p[index].argmax(axis=1) == y[index]))


def test_classification_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"0\.\.1"):
        classification_metrics(np.array([0, 2]), np.full((2, 2), 0.5))
    with pytest.raises(ValueError, match="K >= 2"):
        classification_metrics(np.array([0, 0]), np.ones((2, 1)))
