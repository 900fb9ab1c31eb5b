"""Post-processing of predicted label maps, decided from cross-validation as nnU-Net does.

Label maps are integer arrays of shape ``(X, Y)`` or ``(X, Y, Z)`` (no channel axis), with ``0`` the background.
Two operations are available, each applied class by class and always returning a new array:

* :func:`keep_largest_component` keeps only the largest connected component of a class (spurious small blobs
  become background);
* :func:`fill_holes` fills the background enclosed by a class.

Whether keeping the largest component helps depends on the anatomy (one liver, but two kidneys under one label),
so nnU-Net does not guess: it runs each candidate on the validation predictions of the cross-validation folds and
keeps it for a class only when it raises that class's mean Dice. :func:`decide_postprocessing` makes that decision
and returns it as a JSON-ready dict, which is saved next to the model as ``postprocessing.json`` and applied to new
predictions by :func:`apply_postprocessing`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal

import numpy as np
from scipy import ndimage

from vesalius.evaluation.segmentation import dice_per_class

__all__ = ["apply_postprocessing", "decide_postprocessing", "fill_holes", "keep_largest_component"]

Connectivity = Literal["full", "face"]


def _structure(ndim: int, connectivity: Connectivity) -> np.ndarray:
    """The neighbourhood of :func:`scipy.ndimage.label`: ``"full"`` (26 neighbours in 3D, 8 in 2D: faces, edges and
    corners) or ``"face"`` (6 in 3D, 4 in 2D)."""
    if connectivity not in ("full", "face"):
        raise ValueError(f"connectivity must be 'full' or 'face', not {connectivity!r}")
    return ndimage.generate_binary_structure(ndim, ndim if connectivity == "full" else 1)


def keep_largest_component(
    labels: np.ndarray, classes: Sequence[int], connectivity: Connectivity = "full"
) -> np.ndarray:
    """A copy of the label map ``labels`` (``(X, Y[, Z])``, 0 = background) where each class in ``classes`` keeps only
    its largest connected component; the voxels of its other components become background.

    Classes are disjoint, so each is processed independently of the others, and classes not listed are left as they
    are. Between components of equal size, the first in scan order is kept.
    """
    labels = np.asarray(labels)
    out = labels.copy()
    structure = _structure(labels.ndim, connectivity)
    for label in classes:
        components, count = ndimage.label(labels == label, structure=structure)
        if count > 1:
            largest = int(np.argmax(np.bincount(components.ravel())[1:])) + 1
            out[(components != 0) & (components != largest)] = 0
    return out


def fill_holes(labels: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """A copy of the label map ``labels`` (``(X, Y[, Z])``, 0 = background) where the background enclosed by each class
    in ``classes`` (:func:`scipy.ndimage.binary_fill_holes`) is given to that class.

    Only background voxels are filled: a voxel of another class inside the hole keeps its class. A background voxel
    enclosed by several classes (a shell inside a shell) goes to the innermost one, whose filled region is smallest.
    """
    labels = np.asarray(labels)
    out = labels.copy()
    filled = {label: ndimage.binary_fill_holes(labels == label) for label in classes}
    for label in sorted(filled, key=lambda label: int(filled[label].sum()), reverse=True):
        out[filled[label] & (labels == 0)] = label
    return out


def decide_postprocessing(
    pairs: Iterable[tuple[np.ndarray, np.ndarray]],
    classes: Sequence[int],
    *,
    min_gain: float = 0.0,
    connectivity: Connectivity = "full",
) -> dict[str, Any]:
    """Decide, class by class, whether :func:`keep_largest_component` improves the validation predictions.

    ``pairs`` yields ``(prediction, reference)`` label maps of the same shape, one validation case each (in nnU-Net,
    the predictions of each fold's validation cases, so that every training case is scored once by a model that did
    not train on it). It may be a generator: cases are read one at a time, and only running sums of Dice are kept.

    For each class, the mean Dice over the cases (:func:`~vesalius.evaluation.segmentation.dice_per_class`; both
    empty = 1) is compared with and without the largest-component filter applied to that class alone. Since the
    filter only turns voxels of that class into background, applying it to every class at once gives the same
    per-class Dice, so each case is filtered once. The filter is enabled for a class when its mean Dice improves by
    more than ``min_gain`` (a tie keeps it off).

    Returns a JSON-ready dict, to be saved next to the model as ``postprocessing.json``::

        {"keep_largest_component": [enabled classes, in the order of ``classes``],
         "connectivity": connectivity,
         "dice_before": {"1": mean Dice, ...}, "dice_after": {"1": ..., ...},
         "cases": number of cases}

    The Dice keys are strings, so that the dict is unchanged by a JSON round trip.
    """
    classes = [int(label) for label in classes]
    before = dict.fromkeys(classes, 0.0)
    after = dict.fromkeys(classes, 0.0)
    cases = 0
    for prediction, reference in pairs:
        filtered = keep_largest_component(prediction, classes, connectivity)
        for label, dice in dice_per_class(prediction, reference, classes).items():
            before[label] += dice
        for label, dice in dice_per_class(filtered, reference, classes).items():
            after[label] += dice
        cases += 1
    if cases == 0:
        raise ValueError("no validation cases to decide the post-processing from")
    dice_before = {label: before[label] / cases for label in classes}
    dice_after = {label: after[label] / cases for label in classes}
    return {
        "keep_largest_component": [label for label in classes if dice_after[label] - dice_before[label] > min_gain],
        "connectivity": connectivity,
        "dice_before": {str(label): dice for label, dice in dice_before.items()},
        "dice_after": {str(label): dice for label, dice in dice_after.items()},
        "cases": cases,
    }


def apply_postprocessing(labels: np.ndarray, decision: dict[str, Any]) -> np.ndarray:
    """Apply a decision of :func:`decide_postprocessing` (or the contents of ``postprocessing.json``) to the label map
    ``labels`` (``(X, Y[, Z])``, 0 = background), returning a new array.

    Keeps the largest component of the classes listed under ``"keep_largest_component"`` (with the decision's
    ``"connectivity"``, ``"full"`` if absent), then fills the holes of the classes listed under ``"fill_holes"``, if
    any.
    """
    out = keep_largest_component(
        labels, decision.get("keep_largest_component", []), decision.get("connectivity", "full")
    )
    if decision.get("fill_holes"):
        out = fill_holes(out, decision["fill_holes"])
    return out
