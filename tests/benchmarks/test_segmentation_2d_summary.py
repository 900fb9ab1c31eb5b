"""The cross-validation summary of ``benchmarks/segmentation_2d.py``: mean and SD over the folds' saved figures."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def segmentation_2d():
    """The benchmark script as a module (it is not part of the installed package)."""
    sys.path.insert(0, str(ROOT))
    try:
        spec = importlib.util.spec_from_file_location("segmentation_2d", ROOT / "benchmarks" / "segmentation_2d.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(ROOT))


def _fold(folder: Path, fold: int, **figures: float) -> None:
    record = {"fold": fold, "val_cases": 4, "iterations": 100, **figures}
    (folder / f"fold{fold}.json").write_text(json.dumps(record))


def test_mean_and_sd_over_the_folds_by_hand(segmentation_2d, tmp_path):
    _fold(tmp_path, 0, dice_mean=0.80, vessel_auc=0.99)
    _fold(tmp_path, 1, dice_mean=0.84, vessel_auc=0.97)
    _fold(tmp_path, 2, dice_mean=0.86, vessel_auc=0.98)
    summary = segmentation_2d.summarise_folds(tmp_path)
    assert [fold["fold"] for fold in summary["folds"]] == [0, 1, 2]
    assert summary["mean"]["dice_mean"] == pytest.approx(0.8333333, abs=1e-6)
    # sample SD: deviations -1/30, 1/150, 8/300 -> sum of squares 0.00186667 / 2
    assert summary["sd"]["dice_mean"] == pytest.approx((0.0018666667 / 2) ** 0.5, abs=1e-6)
    assert summary["mean"]["vessel_auc"] == pytest.approx(0.98)
    assert summary["sd"]["vessel_auc"] == pytest.approx(0.01)


def test_a_figure_missing_from_one_fold_is_not_averaged(segmentation_2d, tmp_path):
    _fold(tmp_path, 0, dice_mean=0.9, detection_rate=1.0)
    _fold(tmp_path, 1, dice_mean=0.7)
    summary = segmentation_2d.summarise_folds(tmp_path)
    assert list(summary["mean"]) == ["dice_mean"]
    assert summary["mean"]["dice_mean"] == pytest.approx(0.8)


def test_one_fold_has_no_sd_and_no_fold_has_nothing(segmentation_2d, tmp_path):
    assert segmentation_2d.summarise_folds(tmp_path)["folds"] == []
    _fold(tmp_path, 3, dice_mean=0.9)
    assert segmentation_2d.summarise_folds(tmp_path)["sd"] == {"dice_mean": None}
