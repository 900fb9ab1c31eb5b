"""Confidence intervals by the percentile bootstrap, for metrics averaged over cases.

Written by hand: a resampling loop in NumPy is all it takes (SciPy's ``bootstrap`` would do, but its default BCa
method fails on the small, tied validation sets models are judged on).
"""

from __future__ import annotations

import numpy as np

__all__ = ["bootstrap_mean_interval", "percentile_interval"]


def percentile_interval(values: np.ndarray) -> tuple[float, float]:
    """The 2.5th and 97.5th percentiles of the non-NaN ``values``; ``(nan, nan)`` when there are none."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return (float("nan"), float("nan"))
    low, high = np.percentile(values, [2.5, 97.5])
    return (float(low), float(high))


def bootstrap_mean_interval(values: np.ndarray, *, resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the mean of ``values`` ``(N,)`` (NaN values left out).

    The same ``seed`` gives the same interval; one value gives ``(value, value)``; none gives ``(nan, nan)``.
    """
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return (float("nan"), float("nan"))
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    index = np.random.default_rng(seed).integers(0, values.size, size=(resamples, values.size))
    return percentile_interval(values[index].mean(axis=1))
