"""Metrics of a classifier from its class probabilities, with bootstrap confidence intervals.

Inputs: ``y_true`` int of shape ``(N,)`` with values in ``0 .. K-1`` and ``probabilities`` float of shape
``(N, K)``, ``K >= 2`` (rows need not sum to 1 exactly). The predicted class is the arg-max of a row (the lowest
index on ties). For ``K == 2`` class 1 is the positive class.

Conventions:

- Confusion matrix: ``cm[i, j]`` counts cases of true class ``i`` predicted as ``j`` (scikit-learn's layout).
- Balanced accuracy: the mean recall over the classes present in ``y_true``.
- Per-class sensitivity ``TP / (TP + FN)``, specificity ``TN / (TN + FP)`` and F1 ``2TP / (2TP + FP + FN)``, class
  ``k`` against the rest; NaN when the denominator is 0. Macro F1 is the mean over the classes present in ``y_true``
  or in the predictions (as scikit-learn).
- AUC: the Mann-Whitney statistic ``(Σ ranks of positives - n⁺(n⁺+1)/2) / (n⁺ n⁻)`` with average ranks for tied
  scores (a tie counts one half), which equals the trapezoidal area under the ROC curve. Binary: the score of
  class 1. Multi-class: the macro mean of the one-vs-rest AUCs of the classes present in ``y_true`` (NaN for a
  class that is absent, or for a binary problem with one class only).
- Expected calibration error: 15 equal-width confidence bins ``((i-1)/M, i/M]`` by default, on the top-class
  confidence; ``Σ_b (n_b / N) |accuracy_b - mean confidence_b|`` (Guo et al. 2017).
- Bootstrap: ``resamples`` resamplings of the ``N`` cases with replacement from ``numpy.random.default_rng(seed)``;
  the interval is the 2.5th to 97.5th percentile (percentile bootstrap). Resamples on which the AUC is undefined
  (one class only) are left out of the AUC interval.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import rankdata

from vesalius.metrics.statistics import percentile_interval

__all__ = [
    "accuracy",
    "balanced_accuracy",
    "binary_auc",
    "bootstrap_confidence_intervals",
    "classification_metrics",
    "confusion_matrix",
    "expected_calibration_error",
    "per_class_rates",
    "roc_auc",
    "roc_curve",
]

_BLOCK = 1_000_000
"""Bootstrap resamples are scored in blocks of about this many case draws, to bound memory."""


def _check(y_true: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``(y_true int (N,), probabilities float (N, K))``."""
    y, p = np.asarray(y_true), np.asarray(probabilities, dtype=float)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"probabilities must have shape (N, K) with K >= 2, got {p.shape}")
    if y.shape != (p.shape[0],) or y.size == 0:
        raise ValueError(f"y_true must have shape ({p.shape[0]},) with N >= 1, got {y.shape}")
    if y.dtype.kind not in "iu" or y.min() < 0 or y.max() >= p.shape[1]:
        raise ValueError(f"y_true must hold integers in 0..{p.shape[1] - 1}")
    return y.astype(np.int64), p


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``(K, K)`` int counts; row ``i`` is the true class, column ``j`` the predicted one."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes**2).reshape(num_classes, num_classes)


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of cases predicted correctly; both ``(N,)``."""
    return float(np.mean(np.asarray(y_true) == np.asarray(y_pred)))


def per_class_rates(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Sensitivity, specificity and F1 of each class against the rest, from a ``(K, K)`` confusion matrix.

    Returns ``{"sensitivity": (K,), "specificity": (K,), "f1": (K,)}``, NaN where a denominator is 0.
    """
    cm = np.asarray(cm, dtype=float)
    tp = np.diag(cm)
    fn, fp = cm.sum(axis=1) - tp, cm.sum(axis=0) - tp
    tn = cm.sum() - tp - fn - fp
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"sensitivity": tp / (tp + fn), "specificity": tn / (tn + fp), "f1": 2 * tp / (2 * tp + fp + fn)}


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    """Mean recall over the classes present in ``y_true``; both ``(N,)``."""
    return float(np.nanmean(per_class_rates(confusion_matrix(y_true, y_pred, num_classes))["sensitivity"]))


def _auc(positive: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC along the last axis: ``positive`` bool and ``scores`` float ``(..., N)`` -> ``(...)``.

    Tied scores get their average rank. NaN where the positives or the negatives are missing.
    """
    ranks = rankdata(scores, axis=-1)
    n_pos = positive.sum(axis=-1)
    n_neg = positive.shape[-1] - n_pos
    u = np.where(positive, ranks, 0.0).sum(axis=-1) - n_pos * (n_pos + 1) / 2.0
    defined = (n_pos > 0) & (n_neg > 0)
    return np.where(defined, u / np.where(defined, n_pos * n_neg, 1), np.nan)


def _auc_per_class(y_true: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """One-vs-rest AUC of each class along the last axes: ``(..., N)`` and ``(..., N, K)`` -> ``(..., K)``."""
    k = probabilities.shape[-1]
    return np.stack([_auc(y_true == c, probabilities[..., c]) for c in range(k)], axis=-1)


def _auc_summary(per_class: np.ndarray) -> np.ndarray:
    """Binary AUC (class 1) for ``K == 2``, else the NaN-aware macro mean over classes: ``(..., K)`` -> ``(...)``."""
    if per_class.shape[-1] == 2:
        return per_class[..., 1]
    defined = ~np.isnan(per_class)
    count = defined.sum(axis=-1)
    total = np.where(defined, per_class, 0.0).sum(axis=-1)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def binary_auc(positive: np.ndarray, scores: np.ndarray) -> float:
    """AUC of ``scores`` ``(N,)`` for the cases flagged ``positive`` ``(N,)`` (NaN without positives or negatives)."""
    return float(_auc(np.asarray(positive, dtype=bool), np.asarray(scores, dtype=float)))


def roc_curve(positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates ``(M,)`` at every distinct threshold of ``scores`` ``(N,)``, from ``(0, 0)`` to
    ``(1, 1)``; the trapezoidal area under it is :func:`binary_auc`."""
    positive, scores = np.asarray(positive, dtype=bool), np.asarray(scores, dtype=float)
    order = np.argsort(-scores, kind="stable")
    scores, positive = scores[order], positive[order]
    last = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]  # the last case of each distinct score
    tp, fp = np.cumsum(positive)[last], np.cumsum(~positive)[last]
    return np.r_[0, fp / max(fp[-1], 1)], np.r_[0, tp / max(tp[-1], 1)]


def roc_auc(y_true: np.ndarray, probabilities: np.ndarray) -> float:
    """AUC: binary (score of class 1) for ``K == 2``, one-vs-rest macro for ``K > 2``; see the module docstring."""
    y, p = _check(y_true, probabilities)
    return float(_auc_summary(_auc_per_class(y, p)))


def expected_calibration_error(y_true: np.ndarray, probabilities: np.ndarray, bins: int = 15) -> float:
    """ECE over ``bins`` equal-width bins ``((i-1)/M, i/M]`` of the top-class confidence; inputs ``(N,)``, ``(N,K)``."""
    y, p = _check(y_true, probabilities)
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(float)
    index = np.digitize(confidence, np.linspace(0.0, 1.0, bins + 1)[1:-1], right=True)
    gap = np.bincount(index, weights=correct, minlength=bins) - np.bincount(index, weights=confidence, minlength=bins)
    return float(np.abs(gap).sum() / y.size)


def bootstrap_confidence_intervals(
    y_true: np.ndarray, probabilities: np.ndarray, *, resamples: int = 1000, seed: int = 0
) -> dict[str, tuple[float, float]]:
    """95% percentile-bootstrap intervals of the accuracy and the AUC: ``{"accuracy": (lo, hi), "auc": (lo, hi)}``.

    Inputs ``(N,)`` and ``(N, K)``. The same ``seed`` gives the same intervals. An interval is ``(nan, nan)`` when
    no resample defines the statistic.
    """
    y, p = _check(y_true, probabilities)
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    rng = np.random.default_rng(seed)
    correct = p.argmax(axis=1) == y
    accuracies, aucs = [], []
    block = max(1, _BLOCK // y.size)
    for start in range(0, resamples, block):
        index = rng.integers(0, y.size, size=(min(block, resamples - start), y.size))
        accuracies.append(correct[index].mean(axis=1))
        aucs.append(_auc_summary(_auc_per_class(y[index], p[index])))
    return {
        "accuracy": percentile_interval(np.concatenate(accuracies)),
        "auc": percentile_interval(np.concatenate(aucs)),
    }


def classification_metrics(
    y_true: np.ndarray, probabilities: np.ndarray, *, bootstrap: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """All classification metrics of ``probabilities`` ``(N, K)`` against ``y_true`` ``(N,)``.

    Args:
        y_true: true classes, ints in ``0 .. K-1``.
        probabilities: class probabilities (or any scores ordered like them), one row per case.
        bootstrap: number of bootstrap resamples for the confidence intervals; 0 leaves them out (``None``).
        seed: seed of the bootstrap.

    Returns:
        A JSON-ready dict: ``n``, ``num_classes``, ``accuracy``, ``accuracy_ci``, ``balanced_accuracy``, ``auc``,
        ``auc_ci``, ``f1_macro``, ``ece`` (15 bins), ``confusion_matrix`` (list of rows), per-class lists
        ``auc_per_class``, ``sensitivity_per_class``, ``specificity_per_class``, ``f1_per_class``, and for
        ``K == 2`` also ``f1``, ``sensitivity``, ``specificity`` of the positive class 1. Undefined values are NaN.
    """
    y, p = _check(y_true, probabilities)
    k = p.shape[1]
    y_pred = p.argmax(axis=1)
    cm = confusion_matrix(y, y_pred, k)
    rates = per_class_rates(cm)
    auc_per_class = _auc_per_class(y, p)
    intervals = bootstrap_confidence_intervals(y, p, resamples=bootstrap, seed=seed) if bootstrap else None
    result: dict[str, Any] = {
        "n": int(y.size),
        "num_classes": k,
        "accuracy": accuracy(y, y_pred),
        "accuracy_ci": None if intervals is None else list(intervals["accuracy"]),
        "balanced_accuracy": balanced_accuracy(y, y_pred, k),
        "auc": float(_auc_summary(auc_per_class)),
        "auc_ci": None if intervals is None else list(intervals["auc"]),
        "f1_macro": float(np.nanmean(rates["f1"])),
        "ece": expected_calibration_error(y, p),
        "confusion_matrix": cm.tolist(),
        "auc_per_class": auc_per_class.tolist(),
        "sensitivity_per_class": rates["sensitivity"].tolist(),
        "specificity_per_class": rates["specificity"].tolist(),
        "f1_per_class": rates["f1"].tolist(),
    }
    if k == 2:
        result.update({name: float(rates[name][1]) for name in ("f1", "sensitivity", "specificity")})
    return result
