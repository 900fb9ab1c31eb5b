"""Post-processing of predicted label maps, decided from cross-validation as nnU-Net does.

Label maps are integer arrays of shape ``(X, Y)`` or ``(X, Y, Z)`` (no channel axis), with ``0`` the background.
Two operations are available, each applied class by class and always returning a new array:

* :func:`keep_largest_component` keeps only the largest connected component of a class (spurious small blobs
  become background);
* :func:`fill_holes` fills the background enclosed by a class.

Whether keeping the largest component helps depends on the anatomy (one liver, but two kidneys under one label),
so nnU-Net does not guess: it runs each candidate on the validation predictions of the cross-validation folds and
keeps it for a class only when it raises that class's mean Dice.
:func:`vesalius.evaluation.validation.decide_postprocessing` makes that decision, saved next to the model as
``postprocessing.json`` and applied to new predictions by :func:`apply_postprocessing`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from scipy import ndimage

__all__ = ["Connectivity", "apply_postprocessing", "fill_holes", "keep_largest_component", "neighbourhood"]

Connectivity = Literal["full", "face"]


def neighbourhood(ndim: int, connectivity: Connectivity) -> np.ndarray:
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
    structure = neighbourhood(labels.ndim, connectivity)
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


def apply_postprocessing(labels: np.ndarray, decision: dict[str, Any]) -> np.ndarray:
    """Apply a post-processing decision (the contents of ``postprocessing.json``) to the label map
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
