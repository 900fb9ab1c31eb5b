"""The run folder's owner: what training writes reads back the same, fold ensembles are found, bad folders are
refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.helpers import trained_classification, trained_segmentation, write_package
from vesalius.errors import VesaliusError
from vesalius.model_package import ModelPackage, find_packages, is_model_package

SPLIT = {"train": ["a", "b"], "val": ["c"]}


def test_the_trained_configuration_reads_back_equal(tmp_path: Path) -> None:
    trained = trained_segmentation(spacing=[1.0, 1.0, 2.5], patch_size=[16, 16, 8], mirror_axes=[0], precision="fp32")
    package = write_package(tmp_path / "fold_0", trained, SPLIT, {"dataset": "ph", "seed": 3})
    again = ModelPackage(tmp_path / "fold_0")
    assert again.trained == trained and again.task == "segmentation"
    assert again.split == SPLIT and again.settings == {"dataset": "ph", "seed": 3}
    assert again.label_names == {0: "background", 1: "organ", 2: "lesion"}
    assert again.plan.configuration("3d") == trained.configuration
    assert again.postprocessing is None
    package.write_postprocessing({"keep_largest_component": [1]})
    assert again.postprocessing == {"keep_largest_component": [1]}
    classifier = write_package(tmp_path / "cls", trained_classification({0: "no", 1: "yes"}), SPLIT)
    assert ModelPackage(classifier.root).trained.class_names == ["no", "yes"] and classifier.task == "classification"


def test_checkpoints_are_written_atomically_and_loaded_weights_only(tmp_path: Path) -> None:
    package = write_package(tmp_path / "run", trained_segmentation(patch_size=[8, 8, 8]), SPLIT)
    package.save_checkpoint("final", {"model": {"w": torch.ones(2)}})
    assert torch.equal(package.load_checkpoint("final")["model"]["w"], torch.ones(2))
    assert [p.name for p in package.root.iterdir() if p.name.startswith(".tmp")] == []
    with pytest.raises(VesaliusError, match="no checkpoint"):
        package.load_checkpoint("best")
    with pytest.raises(VesaliusError, match="invalid checkpoint name"):
        package.checkpoint_path("../x")


def test_prepare_refuses_to_overwrite_and_resumes(tmp_path: Path) -> None:
    package = write_package(tmp_path / "run", trained_segmentation(patch_size=[8, 8, 8]), SPLIT)
    with pytest.raises(VesaliusError, match="a run exists here"):
        package.prepare(resume=False, force=False)
    assert package.prepare(resume=True, force=False) is None  # no checkpoint_latest.pt yet
    package.save_checkpoint("latest", {"iteration": 5})
    assert package.prepare(resume=True, force=False) == {"iteration": 5}
    assert package.prepare(resume=False, force=True) is None and list(package.root.iterdir()) == []
    with pytest.raises(VesaliusError, match="nothing to resume"):
        ModelPackage(tmp_path / "empty").prepare(resume=True, force=False)


def test_find_packages_takes_a_fold_or_the_folds_with_final_weights(tmp_path: Path) -> None:
    trained = trained_segmentation(patch_size=[8, 8, 8])
    for fold in (0, 1, 2):
        package = write_package(tmp_path / "3d" / f"fold_{fold}", trained, SPLIT)
        if fold != 2:  # fold 2 is still training
            package.save_checkpoint("final", {"model": {}})
    assert find_packages(tmp_path / "3d" / "fold_2") == [ModelPackage(tmp_path / "3d" / "fold_2")]
    assert [p.root.name for p in find_packages(tmp_path / "3d")] == ["fold_0", "fold_1"]
    for missing, problem in ((tmp_path / "nope", "model not found"), (tmp_path, "no trained model here")):
        with pytest.raises(VesaliusError, match=problem):
            find_packages(missing)


def test_an_old_or_edited_run_folder_gets_one_line(tmp_path: Path) -> None:
    old = tmp_path / "old"
    old.mkdir()
    (old / "training.json").write_text(json.dumps({"training": {}, "split": SPLIT}))
    assert is_model_package(old)
    with pytest.raises(VesaliusError, match="older Vesalius"):
        _ = ModelPackage(old).trained
    package = write_package(tmp_path / "edited", trained_segmentation(patch_size=[8, 8, 8]), SPLIT)
    data = json.loads((package.root / "model.json").read_text())
    data["configuration"]["patch_size"] = [8, 8]
    (package.root / "model.json").write_text(json.dumps(data))
    with pytest.raises(VesaliusError) as error:
        _ = ModelPackage(package.root).trained
    line = error.value.one_line()
    assert "model.json" in line and "configuration.strides: each stage needs 2 values" in line
