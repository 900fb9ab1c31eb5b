"""Segmentation metrics: by hand and against MONAI."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.metrics import (
    compute_average_surface_distance,
    compute_dice,
    compute_hausdorff_distance,
    compute_iou,
    compute_surface_dice,
)
from scipy import ndimage

from vesalius.metrics.segmentation import METRICS, dice_per_class, segmentation_metrics

# ---------------------------------------------------------------- segmentation, by hand


def test_two_cubes_offset_by_one_voxel() -> None:
    """4^3 cubes shifted by one voxel along x (spacing 2 mm): every metric by hand.

    Surface of each cube: 56 voxels. Prediction -> reference: the 16 voxels of the face x=2 are 2 mm from the
    reference's face x=3; the 4 inner voxels of the face x=5 are 1 mm (one y or z step) from the reference's side;
    the other 36 lie on the reference's sides (0 mm). The same holds in reverse.
    """
    pred, ref = np.zeros((10, 8, 8), np.uint8), np.zeros((10, 8, 8), np.uint8)
    pred[2:6, 2:6, 2:6] = 1
    ref[3:7, 2:6, 2:6] = 1
    m = segmentation_metrics(pred, ref, [1], (2.0, 1.0, 1.0), tolerance_mm=1.0)[1]
    assert m["dice"] == pytest.approx(3 / 4)
    assert m["iou"] == pytest.approx(3 / 5)
    assert m["precision"] == pytest.approx(3 / 4) and m["recall"] == pytest.approx(3 / 4)
    assert m["hd95"] == pytest.approx(2.0)
    assert m["assd"] == pytest.approx((32 * 2 + 8 * 1) / 112)
    assert m["surface_dice"] == pytest.approx((72 + 8) / 112)
    assert m["volume_pred"] == pytest.approx(64 * 2 / 1000) and m["volume_ref"] == pytest.approx(0.128)
    assert m["volume_difference"] == 0.0
    assert segmentation_metrics(pred, ref, [1], (2.0, 1.0, 1.0), tolerance_mm=2.0)[1]["surface_dice"] == 1.0


def test_disjoint_pixels_2d() -> None:
    pred, ref = np.zeros((6, 7), np.int16), np.zeros((6, 7), np.int16)
    pred[0, 0], ref[3, 4] = 2, 2
    m = segmentation_metrics(pred, ref, [2], (1.0, 1.0))[2]
    assert (m["dice"], m["iou"], m["surface_dice"], m["precision"], m["recall"]) == (0, 0, 0, 0, 0)
    assert m["hd95"] == pytest.approx(5.0) and m["assd"] == pytest.approx(5.0)
    assert m["volume_pred"] == 1.0 and m["volume_difference"] == 0.0  # mm^2 in 2D
    # anisotropic spacing: (3 * 0.5, 4 * 2.0)
    assert segmentation_metrics(pred, ref, [2], (0.5, 2.0))[2]["hd95"] == pytest.approx(math.hypot(1.5, 8.0))


def test_object_filling_the_image_has_its_border_as_surface() -> None:
    full = np.ones((5, 6), np.uint8)
    one_less = full.copy()
    one_less[:, -1] = 0  # surface moves one column in: the removed column is 1 mm from the new border
    m = segmentation_metrics(one_less, full, [1], (1.0, 1.0))[1]
    assert m["recall"] == pytest.approx(25 / 30) and m["precision"] == 1.0
    hd = segmentation_metrics(full, full, [1], (1.0, 1.0))[1]
    assert (hd["hd95"], hd["assd"], hd["dice"], hd["surface_dice"]) == (0.0, 0.0, 1.0, 1.0)


def test_empty_conventions() -> None:
    empty, blob = np.zeros((6, 6, 4), np.uint8), np.zeros((6, 6, 4), np.uint8)
    blob[1:4, 2:5, 1:3] = 1
    both = segmentation_metrics(empty, empty, [1], (1.0, 1.0, 2.0))[1]
    assert all(both[k] == 1.0 for k in ("dice", "iou", "surface_dice", "precision", "recall"))
    assert both["hd95"] == 0.0 and both["assd"] == 0.0 and both["volume_pred"] == 0.0
    for pred, ref in ((empty, blob), (blob, empty)):
        m = segmentation_metrics(pred, ref, [1], (1.0, 1.0, 2.0))[1]
        assert all(m[k] == 0.0 for k in ("dice", "iou", "surface_dice", "precision", "recall"))
        assert math.isnan(m["hd95"]) and math.isnan(m["assd"])
        assert m["volume_difference"] == pytest.approx((int(pred.sum()) - int(ref.sum())) * 2 / 1000)
    assert dice_per_class(empty, empty, [1]) == {1: 1.0} and dice_per_class(blob, empty, [1]) == {1: 0.0}


def test_invalid_arguments() -> None:
    a = np.zeros((4, 4), np.uint8)
    with pytest.raises(ValueError, match="shape"):
        segmentation_metrics(a, np.zeros((4, 5), np.uint8), [1], (1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        segmentation_metrics(a, a, [1], (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        segmentation_metrics(a, a, [1], (1.0, 0.0))


# ---------------------------------------------------------------- segmentation, against MONAI


def _random_label_maps(seed: int, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Smooth random blobs with labels 0, 1, 2; the prediction is a perturbed reference (some touch the border)."""
    rng = np.random.default_rng(seed)
    base = ndimage.gaussian_filter(rng.normal(size=shape), 2.0)
    noisy = base + ndimage.gaussian_filter(rng.normal(size=shape), 1.0) * 0.6
    to_labels = lambda f: np.digitize(f / f.std(), [0.3, 1.2]).astype(np.uint8)  # noqa: E731
    return to_labels(noisy), to_labels(base)


def _monai(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...], tolerance: float) -> dict[str, float]:
    yp, y = (torch.from_numpy(a.astype(np.float32))[None, None] for a in (pred, ref))
    s = list(spacing)
    return {
        "dice": compute_dice(yp, y).item(),
        "iou": compute_iou(yp, y).item(),
        "hd95": compute_hausdorff_distance(yp, y, percentile=95, spacing=s).item(),
        "assd": compute_average_surface_distance(yp, y, symmetric=True, spacing=s).item(),
        "surface_dice": compute_surface_dice(yp, y, [tolerance], spacing=s).item(),
    }


@pytest.mark.parametrize(
    ("shape", "spacing"),
    [((22, 19, 13), (0.7, 1.3, 2.5)), ((48, 41), (0.6, 1.7)), ((16, 24, 18), (1.9, 0.45, 0.8))],
)
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.filterwarnings("ignore:monai.metrics.utils get_mask_edges:FutureWarning")
def test_agrees_with_monai(seed: int, shape: tuple[int, ...], spacing: tuple[float, ...]) -> None:
    pred, ref = _random_label_maps(seed, shape)
    tolerance = 1.55
    ours = segmentation_metrics(pred, ref, [1, 2], spacing, tolerance_mm=tolerance)
    for label in (1, 2):
        p, r = pred == label, ref == label
        assert p.any() and r.any() and (p != r).any()
        expected = _monai(p, r, spacing, tolerance)
        for name, value in expected.items():
            assert ours[label][name] == pytest.approx(value, rel=1e-5, abs=1e-5), (label, name)
        tp = np.sum(p & r)
        assert ours[label]["precision"] == pytest.approx(tp / p.sum())
        assert ours[label]["recall"] == pytest.approx(tp / r.sum())
        assert ours[label]["volume_ref"] == pytest.approx(r.sum() * np.prod(spacing) / (1000 if r.ndim == 3 else 1))
    assert {k: v["dice"] for k, v in ours.items()} == pytest.approx(dice_per_class(pred, ref, [1, 2]))
    assert set(ours[1]) == set(METRICS)
