"""Evaluation of a folder of predictions against references; label names."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import trained_segmentation, write_package
from vesalius.errors import VesaliusError
from vesalius.evaluation.segmentation import evaluate_folder, label_names
from vesalius.io import Geometry, Image, write_image
from vesalius.metrics.segmentation import METRICS, segmentation_metrics

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
    write_package(
        run, trained_segmentation(labels={0: "background", 1: "organ"}, patch_size=[8, 8, 8]), {"train": [], "val": []}
    )
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
