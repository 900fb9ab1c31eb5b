"""Evaluation metrics: segmentation (by hand and against MONAI), classification (against scikit-learn), folders."""

from __future__ import annotations

import csv
import json
import math
import warnings
from pathlib import Path

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
from sklearn import metrics as skm

from vesalius.errors import VesaliusError
from vesalius.evaluation.classification import (
    bootstrap_confidence_intervals,
    classification_metrics,
    expected_calibration_error,
    roc_auc,
)
from vesalius.evaluation.evaluate import evaluate_folder, label_names
from vesalius.evaluation.segmentation import METRICS, dice_per_class, segmentation_metrics
from vesalius.io import Geometry, Image, write_image

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


# ---------------------------------------------------------------- classification, against scikit-learn


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


# ---------------------------------------------------------------- evaluate_folder


SPACING = (0.8, 0.9, 2.0)
GEOMETRY = Geometry(SPACING, (1.0, -2.0, 3.0), tuple(np.eye(3).ravel()))


def _write(array: np.ndarray, path: Path, geometry: Geometry = GEOMETRY) -> None:
    write_image(Image(array[None].astype(np.uint8), geometry), path)


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Two cases: 'a' close to its reference, 'b' with label 2 missing from the prediction (a .nrrd file)."""
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    pred_dir.mkdir()
    ref_dir.mkdir()
    arrays = {}
    for case, suffix in (("a", ".nii.gz"), ("b", ".nrrd")):
        ref = np.zeros((10, 9, 6), np.uint8)
        ref[2:7, 2:6, 1:4] = 1
        ref[7:9, 6:8, 3:5] = 2
        pred = np.roll(ref, 1, axis=0)
        if case == "b":
            pred[pred == 2] = 0
        _write(ref, ref_dir / f"{case}.nii.gz")
        _write(pred, pred_dir / f"{case}{suffix}")
        arrays[case] = (pred, ref)
    return pred_dir, ref_dir, arrays


def test_evaluate_folder(folders, tmp_path: Path) -> None:
    pred_dir, ref_dir, arrays = folders
    out = tmp_path / "out"
    result = evaluate_folder(pred_dir, ref_dir, tolerance_mm=1.0, output_dir=out)
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["case"], r["label"]) for r in rows] == [("a", "1"), ("a", "2"), ("b", "1"), ("b", "2")]
    expected = {case: segmentation_metrics(*arrays[case], [1, 2], SPACING, 1.0) for case in arrays}
    for row in rows:
        for name in METRICS:
            assert float(row[name]) == pytest.approx(expected[row["case"]][int(row["label"])][name], nan_ok=True)
    assert rows[3]["hd95"] == "nan" and rows[0]["volume_unit"] == "mL"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_cases"] == 2 and summary["labels"] == {"1": "1", "2": "2"}
    assert set(summary["metrics"]["2"]) == set(METRICS)
    hd = summary["metrics"]["2"]["hd95"]
    assert (hd["count"], hd["nan"]) == (1, 1) and hd["mean"] == pytest.approx(expected["a"][2]["hd95"])
    dice = summary["metrics"]["2"]["dice"]
    assert dice["mean"] == pytest.approx(expected["a"][2]["dice"] / 2) and dice["std"] == pytest.approx(dice["mean"])
    assert summary["mean_over_labels"]["dice"] == pytest.approx(
        (summary["metrics"]["1"]["dice"]["mean"] + dice["mean"]) / 2
    )
    assert result["cases"]["b"]["1"]["dice"] == pytest.approx(expected["b"][1]["dice"])
    assert not any(p.name.startswith(".tmp-") for p in out.iterdir())


def test_evaluate_folder_named_labels_and_default_output(folders) -> None:
    pred_dir, ref_dir, _ = folders
    result = evaluate_folder(pred_dir, ref_dir, labels={2: "vessel"})
    assert set(result["metrics"]) == {"vessel"} and (pred_dir / "summary.json").is_file()
    assert len((pred_dir / "metrics.csv").read_text().splitlines()) == 1 + 2


def test_label_names_from_each_kind_of_source(tmp_path: Path) -> None:
    msd, nnunet, run = tmp_path / "msd.json", tmp_path / "nnunet", tmp_path / "run"
    msd.write_text(json.dumps({"labels": {"0": "background", "1": "Anterior", "2": "Posterior"}}))
    nnunet.mkdir()
    (nnunet / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "Anterior": 1, "Posterior": 2}}))
    run.mkdir()
    (run / "plan.json").write_text(json.dumps({"labels": {"0": "background", "1": "organ"}}))
    assert label_names(msd) == label_names(nnunet) == {1: "Anterior", 2: "Posterior"}
    assert label_names(run) == {1: "organ"}
    with pytest.raises(VesaliusError, match="no label names"):
        label_names(tmp_path / "missing", workspace=tmp_path)


def test_evaluate_folder_errors(folders, tmp_path: Path) -> None:
    pred_dir, ref_dir, arrays = folders
    (pred_dir / "b.nrrd").unlink()
    with pytest.raises(VesaliusError, match=r"no prediction for reference case.* b"):
        evaluate_folder(pred_dir, ref_dir, output_dir=tmp_path / "out")
    _write(arrays["b"][0][:-1], pred_dir / "b.nrrd")
    with pytest.raises(VesaliusError, match="shape"):
        evaluate_folder(pred_dir, ref_dir, output_dir=tmp_path / "out")
    _write(arrays["b"][0], pred_dir / "b.nrrd", Geometry((1.0, 0.9, 2.0), GEOMETRY.origin, GEOMETRY.direction))
    with pytest.raises(VesaliusError, match="spacing"):
        evaluate_folder(pred_dir, ref_dir, output_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()
