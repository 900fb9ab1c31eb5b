"""Per-class metrics between a predicted and a reference label map: overlap, surface distances, volumes.

Arrays are label maps of the same shape in ``(X, Y)`` or ``(X, Y, Z)`` index order (``Image.array[0]``), with
``spacing`` in mm along each array axis; all distances are in mm and respect anisotropic spacing.

Definitions, for one label with prediction mask ``P`` and reference mask ``R``:

- ``dice`` ``2|P∩R| / (|P|+|R|)``; ``iou`` ``|P∩R| / (|P|+|R|-|P∩R|)``; ``precision`` ``|P∩R| / |P|``; ``recall``
  ``|P∩R| / |R|``.
- Surface of a mask: its voxels with at least one 6-connected (3D) or 4-connected (2D) neighbour in the
  background; voxels on the border of the image count as surface (outside the image is background). This is
  MONAI's ``get_mask_edges`` (``mask ^ binary_erosion(mask)``).
- Directed surface distances ``d(P→R)``: for each surface voxel of ``P``, the Euclidean distance in mm to the
  nearest surface voxel of ``R`` (and the reverse for ``d(R→P)``).
- ``hd95``: ``max(percentile95(d(P→R)), percentile95(d(R→P)))`` with linear interpolation, MONAI's
  ``compute_hausdorff_distance(percentile=95, directed=False)`` (the maximum of the two directed 95th percentiles,
  not the 95th percentile of the pooled distances).
- ``assd``: the mean of the pooled distances (both directions concatenated), MONAI's
  ``compute_average_surface_distance(symmetric=True)``.
- ``surface_dice`` (normalised surface Dice, Nikolov et al. 2021) at ``tolerance_mm``: the fraction of surface
  voxels of both masks whose distance to the other surface is at most the tolerance,
  ``(#{d(P→R) <= τ} + #{d(R→P) <= τ}) / (|∂P| + |∂R|)``. Surface elements are counted as voxels, as MONAI's
  ``compute_surface_dice`` (``use_subvoxels=False``); DeepMind's ``surface-distance`` package weights surface
  elements by their area instead, which agrees closely on smooth shapes but not exactly.
- ``volume_pred``, ``volume_ref``: mask volumes in mL for 3D maps (in mm² for 2D maps, an area);
  ``volume_difference`` is ``volume_pred - volume_ref``.

Empty masks (consistent with :func:`dice_per_class`):

- Both empty: every overlap score (Dice, IoU, surface Dice, precision, recall) is 1 and ``hd95``, ``assd`` are 0:
  the absence was predicted correctly.
- Exactly one empty: every overlap score is 0 (a missed or a spurious structure is a failure, never a value that a
  mean would skip) and ``hd95``, ``assd`` are NaN (there is no surface to measure to). Means over cases should be
  NaN-aware and report how many values were NaN.

The metrics are written here with SciPy rather than taken from MONAI, for speed and to keep evaluation free of
an extra dependency on MONAI's tensor layout: MONAI works on one-hot torch tensors per batch and class, while this
computes each label's surfaces once, reuses them for every distance metric, and runs
:func:`scipy.ndimage.distance_transform_edt` (``sampling=spacing``) on the bounding box of the union of ``P`` and
``R`` only. The crop needs no margin: outside the box both masks are background, which is what the erosion (border
value 0) assumes, and every surface voxel lies inside the box, so the distances are exact. The test suite checks
agreement with MONAI.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TypedDict

import numpy as np
from scipy import ndimage

from vesalius.io.image import Image, nonzero_box

__all__ = ["METRICS", "SegmentationScores", "dice_per_class", "segmentation_metrics", "volume_features", "volume_unit"]


class SegmentationScores(TypedDict):
    """The metrics of one label (see the module docstring for definitions and the empty-mask convention)."""

    dice: float
    iou: float
    hd95: float
    assd: float
    surface_dice: float
    precision: float
    recall: float
    volume_pred: float
    volume_ref: float
    volume_difference: float


METRICS: tuple[str, ...] = tuple(SegmentationScores.__annotations__)
"""The metric names, in the order of :class:`SegmentationScores` (the columns of ``metrics.csv``)."""


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


def volume_features(label_map: Image, labels: Mapping[int, str]) -> dict[str, float]:
    """``volume_ml:NAME`` (3D: voxels x voxel volume in mm³ / 1000) or ``area_cm2:NAME`` (2D: pixels x pixel area in
    mm² / 100) of every foreground label (``labels``: value -> name, 0 the background) of ``label_map``
    ``(1, *spatial)``: how big each predicted class is, as an exported package's reference outputs and the service's
    output drift both measure it."""
    spacing = label_map.geometry.spacing
    kind, unit = ("volume_ml", 1000.0) if len(spacing) == 3 else ("area_cm2", 100.0)
    voxel = math.prod(spacing) / unit
    array = label_map.array
    return {f"{kind}:{name}": float(np.count_nonzero(array == k)) * voxel for k, name in labels.items() if k != 0}


def volume_unit(ndim: int) -> str:
    """The unit of the volume metrics of ``ndim``-dimensional label maps: ``"mL"`` (3D) or ``"mm2"`` (2D)."""
    return "mL" if ndim == 3 else "mm2"


def segmentation_metrics(
    prediction: np.ndarray,
    reference: np.ndarray,
    labels: Iterable[int],
    spacing: Sequence[float],
    tolerance_mm: float = 1.0,
) -> dict[int, SegmentationScores]:
    """All metrics of each label between a predicted and a reference label map.

    Args:
        prediction: label map ``(X, Y)`` or ``(X, Y, Z)``.
        reference: label map of the same shape.
        labels: the label values to score (usually the non-zero ones).
        spacing: voxel size in mm along each array axis, length 2 or 3.
        tolerance_mm: the tolerance of the normalised surface Dice, in mm.

    Returns:
        ``{label: SegmentationScores}``; distances in mm, volumes in mL (3D) or mm² (2D).
    """
    prediction, reference = np.asarray(prediction), np.asarray(reference)
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from reference shape {reference.shape}")
    if prediction.ndim not in (2, 3):
        raise ValueError(f"label maps must be 2D or 3D, got shape {prediction.shape}")
    sampling = tuple(float(s) for s in spacing)
    if len(sampling) != prediction.ndim or min(sampling) <= 0:
        raise ValueError(f"spacing {tuple(spacing)} must hold {prediction.ndim} positive values")
    if tolerance_mm < 0:
        raise ValueError(f"tolerance_mm must be >= 0, got {tolerance_mm}")
    voxel_volume = float(np.prod(sampling)) / (1000.0 if prediction.ndim == 3 else 1.0)
    return {
        int(label): _label_metrics(prediction == label, reference == label, sampling, tolerance_mm, voxel_volume)
        for label in labels
    }


def _label_metrics(
    pred: np.ndarray, ref: np.ndarray, sampling: tuple[float, ...], tolerance_mm: float, voxel_volume: float
) -> SegmentationScores:
    """The metrics of one pair of boolean masks."""
    n_pred, n_ref = int(pred.sum()), int(ref.sum())
    volumes = {
        "volume_pred": n_pred * voxel_volume,
        "volume_ref": n_ref * voxel_volume,
        "volume_difference": (n_pred - n_ref) * voxel_volume,
    }
    if n_pred == 0 or n_ref == 0:
        overlap, distance = (1.0, 0.0) if n_pred == n_ref else (0.0, float("nan"))
        return SegmentationScores(
            dice=overlap,
            iou=overlap,
            hd95=distance,
            assd=distance,
            surface_dice=overlap,
            precision=overlap,
            recall=overlap,
            **volumes,
        )
    box = nonzero_box((pred | ref)[None])
    pred, ref = pred[box], ref[box]
    tp = int(np.count_nonzero(pred & ref))
    surface_pred, surface_ref = _surface(pred), _surface(ref)
    pred_to_ref = ndimage.distance_transform_edt(~surface_ref, sampling=sampling)[surface_pred]
    ref_to_pred = ndimage.distance_transform_edt(~surface_pred, sampling=sampling)[surface_ref]
    within = np.count_nonzero(pred_to_ref <= tolerance_mm) + np.count_nonzero(ref_to_pred <= tolerance_mm)
    return SegmentationScores(
        dice=2.0 * tp / (n_pred + n_ref),
        iou=tp / (n_pred + n_ref - tp),
        hd95=float(max(np.percentile(pred_to_ref, 95), np.percentile(ref_to_pred, 95))),
        assd=float((pred_to_ref.sum() + ref_to_pred.sum()) / (pred_to_ref.size + ref_to_pred.size)),
        surface_dice=within / (pred_to_ref.size + ref_to_pred.size),
        precision=tp / n_pred,
        recall=tp / n_ref,
        **volumes,
    )


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a face-connected background neighbour (outside the array is background)."""
    return mask & ~ndimage.binary_erosion(mask, border_value=0)
