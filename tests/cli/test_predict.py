"""End to end from the command line: a trained fold predicts files, folders and DICOM series; evaluate scores them."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from vesalius.cli import main
from vesalius.data.dataset import Dataset
from vesalius.io import read_image, write_image
from vesalius.io.dicom import write_dicom_series
from vesalius.io.image import to_sitk

pytestmark = pytest.mark.slow


def _val_cases(trained):
    split = json.loads((trained.run_dir / "training.json").read_text())["split"]
    return split["val"]


def test_predict_folder_then_evaluate(trained, planned, tmp_path, capsys):
    dataset = Dataset.load(planned / "datasets" / "ph")
    images, refs = tmp_path / "images", tmp_path / "refs"
    images.mkdir()
    refs.mkdir()
    for case_id in _val_cases(trained):
        case = dataset.case(case_id)
        shutil.copy(dataset.image_paths(case)[0], images / f"{case_id}.nii.gz")
        shutil.copy(dataset.label_path(case), refs / f"{case_id}.nii.gz")
    out = tmp_path / "pred"
    assert main(["predict", "-i", str(images), "-o", str(out), "-m", str(trained.run_dir)]) == 0
    for case_id in _val_cases(trained):
        image, pred = read_image(images / f"{case_id}.nii.gz"), read_image(out / f"{case_id}.nii.gz")
        assert pred.spatial_shape == image.spatial_shape
        assert pred.geometry.differences(image.geometry) == []
    capsys.readouterr()
    assert main(["evaluate", str(out), str(refs), "--labels", "ph", "--workspace", str(planned)]) == 0
    printed = capsys.readouterr().out
    assert "organ: Dice" in printed and "lesion: Dice" in printed
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    organ = [float(r["dice"]) for r in rows if r["name"] == "organ"]
    assert len(organ) == len(_val_cases(trained)) and min(organ) > 0.6
    # The same figures as the training's own validation of the fold (after the post-processing it decided on).
    decision = json.loads((trained.run_dir / "postprocessing.json").read_text())
    assert decision["dice_before"]["1"] == pytest.approx(trained.validation["dice"]["organ"], abs=1e-9)
    expected = decision["dice_after" if 1 in decision["keep_largest_component"] else "dice_before"]["1"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"]["organ"]["dice"]["mean"] == pytest.approx(expected, abs=1e-6)


def test_predict_single_file_fast_with_probabilities(trained, planned, tmp_path):
    dataset = Dataset.load(planned / "datasets" / "ph")
    source = dataset.image_paths(dataset.case(_val_cases(trained)[0]))[0]
    target = tmp_path / "one" / "seg.nrrd"
    args = ["predict", "-i", str(source), "-o", str(target), "-m", str(trained.run_dir.parent), "--fast"]
    assert main([*args, "--probabilities"]) == 0
    seg, image = read_image(target), read_image(source)
    assert seg.spatial_shape == image.spatial_shape and seg.geometry.differences(image.geometry) == []
    probs = read_image(tmp_path / "one" / "case_probabilities.nii.gz".replace("case", source.name.split(".")[0]))
    assert probs.num_channels == 3
    np.testing.assert_allclose(probs.array.sum(axis=0), 1.0, atol=1e-4)
    assert set(np.unique(seg.array)) <= {0, 1, 2}


def test_predict_dicom_series(trained, planned, tmp_path):
    dataset = Dataset.load(planned / "datasets" / "ph")
    image = read_image(dataset.image_paths(dataset.case(_val_cases(trained)[0]))[0])
    series = tmp_path / "series"
    write_dicom_series(to_sitk(image.with_array(np.round(image.array).astype(np.int16))), series)
    out = tmp_path / "dicom_out"
    assert main(["predict", "-i", str(series), "-o", str(out), "-m", str(trained.run_dir)]) == 0
    seg = read_image(out / "series.nii.gz")
    assert seg.spatial_shape == read_image(series).spatial_shape


def test_predict_errors_are_one_line(trained, tmp_path, capsys):
    assert main(["predict", "-i", str(tmp_path / "nope"), "-o", str(tmp_path / "o"), "-m", str(trained.run_dir)]) == 2
    assert "input not found" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    write_image(read_image(next((trained.run_dir / "validation").glob("*.nii.gz"))), empty / "x.nii.gz")
    assert main(["predict", "-i", str(empty), "-o", str(tmp_path / "o"), "-m", str(tmp_path)]) == 2
    assert "no trained model" in capsys.readouterr().err
