"""Overlap metrics of label maps.

Convention for an empty reference and an empty prediction of a class: Dice 1 (nothing to find, nothing found);
an empty reference with a non-empty prediction (or the reverse) scores 0.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

__all__ = ["dice_per_class"]


def dice_per_class(prediction: np.ndarray, reference: np.ndarray, labels: Iterable[int]) -> dict[int, float]:
    """Dice ``2|P∩R| / (|P|+|R|)`` of each label between two label maps of the same shape."""
    prediction, reference = np.asarray(prediction), np.asarray(reference)
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from reference shape {reference.shape}")
    scores = {}
    for label in labels:
        p, r = prediction == label, reference == label
        size = int(p.sum()) + int(r.sum())
        scores[int(label)] = 1.0 if size == 0 else 2.0 * int(np.logical_and(p, r).sum()) / size
    return scores
