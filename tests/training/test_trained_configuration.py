"""What a run trained with is what validation and prediction use (regressions of the settings drift between
``vesalius plan``, ``train`` and ``predict``): the trained patch, mirror axes and precision, saved in the run's
trained configuration."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

import vesalius
from tests.helpers import copy_workspace
from vesalius.inference import segmentation
from vesalius.io.schema import to_json
from vesalius.model_package import ModelPackage
from vesalius.planning.planner import load_plan

pytestmark = pytest.mark.slow


def _spy_windows(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Record the window, mirror axes and autocast dtype of every sliding-window prediction."""
    calls: list[dict[str, Any]] = []
    original = segmentation.predict_probabilities

    def spy(model: Any, data: Any, patch_size: Any, **kwargs: Any) -> Any:
        calls.append(
            {"patch": tuple(patch_size), "mirror": tuple(kwargs["mirror_axes"]), "dtype": kwargs["autocast_dtype"]}
        )
        return original(model, data, patch_size, **kwargs)

    monkeypatch.setattr(segmentation, "predict_probabilities", spy)
    return calls


@pytest.fixture(scope="module")
def overridden(planned: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A run trained (briefly, fp32) with a patch and mirror axes other than the plan's."""
    ws = copy_workspace(planned, tmp_path_factory.mktemp("overridden"))
    planned = load_plan("ph", ws).configuration("3d")
    planned_patch = planned.patch_size
    patch = tuple(p - d if p > d else p + d for p, d in zip(planned_patch, planned.patch_divisors, strict=True))
    result = vesalius.train(
        "ph",
        "3d",
        1,
        ws,
        validate=False,
        report=False,
        epochs=1,
        iterations_per_epoch=2,
        val_batches=1,
        threads=1,
        precision="fp32",
        patch_size=patch,
        augmentation={"mirror_axes": [0]},
    )
    return ws, result.run_dir, patch, planned_patch


def test_the_trained_configuration_records_the_run_not_the_plan(overridden: Any) -> None:
    _, run_dir, patch, planned_patch = overridden
    trained = ModelPackage(run_dir).trained
    assert patch != planned_patch
    assert trained.configuration.patch_size == patch
    assert trained.configuration.mirror_axes == (0,)
    assert trained.precision == "fp32"


def test_validation_predicts_with_the_trained_patch_mirror_axes_and_precision(
    overridden: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws, run_dir, patch, _ = overridden
    calls = _spy_windows(monkeypatch)
    summary = vesalius.validate(run_dir, ws)
    assert calls and {c["patch"] for c in calls} == {patch}
    assert {c["mirror"] for c in calls} == {(0,)}
    assert {c["dtype"] for c in calls} == {None}  # fp32, as trained (not 'auto', which is bf16 on this CPU)
    assert summary is not None and summary["precision"] == "fp32"


def test_validation_follows_a_bf16_run_and_an_explicit_precision(
    overridden: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws, run_dir, _, _ = overridden
    package = ModelPackage(run_dir)
    bf16 = tmp_run = run_dir.parent / "fold_bf16"
    import shutil

    shutil.copytree(run_dir, tmp_run)
    (tmp_run / "model.json").write_text(__import__("json").dumps(to_json(replace(package.trained, precision="bf16"))))
    calls = _spy_windows(monkeypatch)
    vesalius.validate(bf16, ws)
    assert {c["dtype"] for c in calls} == {torch.bfloat16}
    calls.clear()
    vesalius.validate(bf16, ws, precision="fp32")
    assert {c["dtype"] for c in calls} == {None}


def test_prediction_uses_the_trained_patch(overridden: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ws, run_dir, patch, _ = overridden
    image = sorted((ws / "datasets" / "ph" / "imagesTr").glob("*.nii.gz"))[0]
    calls = _spy_windows(monkeypatch)
    vesalius.predict(image, tmp_path / "out", run_dir)
    assert {c["patch"] for c in calls} == {patch} and {c["dtype"] for c in calls} == {None}
