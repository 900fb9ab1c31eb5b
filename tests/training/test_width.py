"""The ``width`` and ``initial_weights`` training settings: a narrower network recorded in ``model.json`` and trained
in its own run folder (resumable, never over the full-width run), and a run that starts from given weights, which
must fit the network (a one-line error before anything is prepared otherwise)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tests.helpers import copy_workspace
from vesalius.errors import VesaliusError
from vesalius.inference.model import load_model
from vesalius.model_package import ModelPackage, find_packages
from vesalius.planning.planner import load_plan
from vesalius.training import SegmentationSettings
from vesalius.training.segmentation import train_segmentation, trained_configuration
from vesalius.training.settings import resumed_settings

TINY = {"epochs": 1, "iterations_per_epoch": 2, "val_batches": 1, "threads": 2, "precision": "fp32"}


def test_width_scales_the_features_and_names_the_run_folder() -> None:
    assert SegmentationSettings("d").run_config == "3d"
    assert SegmentationSettings("d", "2d", width=0.5).run_config == "2d_w50"
    assert SegmentationSettings("d", width=1 - 0.3).run_config == "3d_w70"
    assert SegmentationSettings("d", width=0.7).scaled_features((16, 32, 64, 128)) == (11, 22, 45, 90)
    assert SegmentationSettings("d", width=0.5).scaled_features((3, 5, 1)) == (2, 3, 1)  # half up, at least 1
    assert SegmentationSettings("d", width=1.5).scaled_features((16, 32)) == (24, 48)
    for bad in (0, -0.5, math.nan, math.inf, True, "0.5"):
        with pytest.raises(VesaliusError, match="width must be a positive number"):
            SegmentationSettings("d", width=bad)  # type: ignore[arg-type]
    with pytest.raises(VesaliusError, match="initial_weights"):
        SegmentationSettings("d", initial_weights="")
    settings = SegmentationSettings("d", width=0.5, initial_weights="w.pt")
    assert SegmentationSettings.from_dict(settings.to_dict()) == settings
    old = {k: v for k, v in settings.to_dict().items() if k not in ("width", "initial_weights")}
    assert SegmentationSettings.from_dict(old).width == 1.0  # runs saved before these settings read back


def test_width_and_initial_weights_are_not_resumable() -> None:
    assert "width" not in SegmentationSettings.RESUMABLE and "initial_weights" not in SegmentationSettings.RESUMABLE
    saved = SegmentationSettings("d", width=0.5, initial_weights="a.pt", epochs=2).to_dict()
    resumed = resumed_settings(SegmentationSettings("d", width=0.5, initial_weights="b.pt", epochs=4), saved)
    assert (resumed.width, resumed.initial_weights, resumed.epochs) == (0.5, "a.pt", 4)


def test_the_trained_configuration_records_the_scaled_features(planned: Path) -> None:
    plan = load_plan("ph", planned)
    features = plan.configuration("3d").features
    settings = SegmentationSettings("ph", width=0.5).resolve(plan)
    trained = trained_configuration(plan, settings)
    assert trained.configuration.features == tuple(max(1, int(f * 0.5 + 0.5)) for f in features)
    assert trained.config == "3d"  # the plan configuration it was cut from: preprocessing and prediction use it


@pytest.mark.slow
def test_a_narrow_run_trains_resumes_and_starts_from_given_weights(planned: Path, tmp_path: Path) -> None:
    ws = copy_workspace(planned, tmp_path)
    narrow = train_segmentation(SegmentationSettings("ph", fold=2, width=0.5, **TINY), ws)
    assert narrow.run_dir == ws / "runs" / "ph" / "3d_w50" / "fold_2"
    assert not (ws / "runs" / "ph" / "3d").exists()  # the full-width run's folder is left alone
    features = load_plan("ph", ws).configuration("3d").features
    package = ModelPackage(narrow.run_dir)
    assert package.trained.configuration.features == tuple(max(1, int(f * 0.5 + 0.5)) for f in features)
    model = load_model(narrow.run_dir)  # built from model.json alone
    assert model.network.encoder[0].conv.unit0.conv.out_channels == package.trained.configuration.features[0]
    assert find_packages(narrow.run_dir.parent) == [package]
    # resume finds the folder of its width and continues there
    resumed = train_segmentation(SegmentationSettings("ph", fold=2, width=0.5, epochs=2), ws, resume=True)
    assert resumed.run_dir == narrow.run_dir and resumed.iterations == 4
    # a run from those weights (with a learning rate too small to move them) ends where they are
    start = narrow.run_dir / "checkpoint_final.pt"
    given = {**TINY, "optimizer": "sgd", "lr": 1e-12, "weight_decay": 0.0}
    started = train_segmentation(SegmentationSettings("ph", fold=3, width=0.5, initial_weights=str(start), **given), ws)
    got = torch.load(started.run_dir / "checkpoint_final.pt", weights_only=True)["model"]
    expected = torch.load(start, weights_only=True)["model"]
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=1e-6, msg=key)
    assert ModelPackage(started.run_dir).settings["initial_weights"] == str(start)


def test_initial_weights_that_do_not_fit_are_refused_before_anything_is_prepared(planned: Path, tmp_path: Path) -> None:
    ws = copy_workspace(planned, tmp_path)
    plan = load_plan("ph", ws)
    full = trained_configuration(plan, SegmentationSettings("ph").resolve(plan))
    from vesalius.models import build_network

    weights = tmp_path / "full.pt"
    torch.save({"model": build_network(full.configuration, 1, 3).state_dict()}, weights)
    settings = SegmentationSettings("ph", fold=0, width=0.5, initial_weights=str(weights), **TINY)
    with pytest.raises(VesaliusError, match="the initial weights do not fit the network") as error:
        train_segmentation(settings, ws)
    assert "\n" not in str(error.value)
    assert not (ws / "runs" / "ph" / "3d_w50" / "fold_0").exists()
    torch.save({"weights": {}}, weights)
    with pytest.raises(VesaliusError, match="no 'model' state dict"):
        train_segmentation(settings, ws)
    weights.unlink()
    with pytest.raises(VesaliusError, match="no checkpoint"):
        train_segmentation(settings, ws)
