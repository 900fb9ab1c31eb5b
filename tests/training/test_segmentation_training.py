"""Training: a short real training that must learn, the run folder, resume, NaN detection."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

import vesalius
from tests.helpers import copy_workspace
from vesalius.data.synthetic import write_segmentation_dataset
from vesalius.errors import VesaliusError
from vesalius.evaluation.validation import validate_fold
from vesalius.inference.model import load_model
from vesalius.models import build_network
from vesalius.training import SegmentationSettings
from vesalius.training.segmentation import train_segmentation


@pytest.mark.slow
def test_short_training_learns_what_an_untrained_network_cannot(trained, planned):
    organ = trained.validation["dice"]["organ"]
    assert organ > 0.75, trained.validation
    # The same network with its initial weights, through the same prediction, scores far lower.
    run = trained.run_dir
    state = torch.load(run / "checkpoint_final.pt", weights_only=True)
    torch.manual_seed(0)
    model = load_model(run)
    untrained = build_network(model.trained.configuration, 1, 3)
    state["model"] = untrained.state_dict()
    torch.save(state, run / "checkpoint_untrained.pt")
    baseline = validate_fold(run, planned, checkpoint="untrained")
    assert baseline["dice"]["organ"] < 0.5 < organ
    validate_fold(run, planned)  # leave the trained model's predictions and summary in place


@pytest.mark.slow
def test_run_folder_holds_logs_checkpoints_and_predictions(trained):
    run = trained.run_dir
    for name in ("checkpoint_final.pt", "checkpoint_latest.pt", "checkpoint_best.pt", "progress.png", "plan.json"):
        assert (run / name).is_file(), name
    rows = list(csv.DictReader((run / "log.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]
    assert int(rows[-1]["iteration"]) == trained.iterations == 60
    lrs = [float(r["lr"]) for r in rows]
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] < 0.1 * lrs[0]
    assert {"train_loss", "val_loss", "dice_organ", "dice_lesion", "dice_mean"} <= set(rows[0])
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert (run / "progress.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    settings = json.loads((run / "training.json").read_text())
    assert settings["training"]["epochs"] == 4 and len(settings["split"]["val"]) == 3
    summary = json.loads((run / "validation" / "summary.json").read_text())
    assert sorted(summary["cases"]) == sorted(settings["split"]["val"])
    predicted = sorted(p.name for p in (run / "validation").glob("*.nii.gz"))
    assert predicted == sorted(f"{c}.nii.gz" for c in settings["split"]["val"])


@pytest.mark.slow
def test_resume_after_interruption_equals_uninterrupted_run(planned, tmp_path):
    settings = {"epochs": 3, "iterations_per_epoch": 4, "val_batches": 1, "threads": 2, "precision": "fp32"}
    straight = train_segmentation(SegmentationSettings("ph", fold=1, **settings), planned)
    expected = torch.load(straight.run_dir / "checkpoint_final.pt", weights_only=True)["model"]

    other = copy_workspace(planned, tmp_path)

    def stop_after_first_epoch(row):
        if row["epoch"] == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_segmentation(SegmentationSettings("ph", fold=1, **settings), other, callbacks=[stop_after_first_epoch])
    with pytest.raises(VesaliusError, match="a run exists"):
        train_segmentation(SegmentationSettings("ph", fold=1, **settings), other)
    plan_file = other / "preprocessed" / "ph" / "plan.json"
    planned_text = plan_file.read_text()
    vesalius.plan("ph", workspace=other, time_budget_s=60)  # planned again: the run's network may no longer fit
    with pytest.raises(VesaliusError, match="planned again since this run started"):
        train_segmentation(SegmentationSettings("ph", fold=1), other, resume=True)
    plan_file.write_text(planned_text)
    resumed = train_segmentation(SegmentationSettings("ph", fold=1), other, resume=True)  # saved settings stand
    assert resumed.iterations == straight.iterations == 12
    got = torch.load(resumed.run_dir / "checkpoint_final.pt", weights_only=True)["model"]
    for key, value in expected.items():
        assert torch.equal(value, got[key]), key
    rows = list(csv.DictReader((resumed.run_dir / "log.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert json.loads((resumed.run_dir / "training.json").read_text())["training"]["precision"] == "fp32"


@pytest.mark.slow
def test_nan_in_the_data_is_reported_with_its_cause(planned, tmp_path):
    ws = copy_workspace(planned, tmp_path)
    for path in (ws / "preprocessed" / "ph" / "3d").glob("*.npy"):
        if not path.name.endswith("_seg.npy"):
            array = np.load(path)
            array[:] = np.nan
            np.save(path, array)
    with pytest.raises(VesaliusError) as info:
        train_segmentation(SegmentationSettings("ph", epochs=1, iterations_per_epoch=2, threads=2), ws)
    line = info.value.one_line()
    assert "NaN" in line and "iteration 0" in line and "checkpoint_latest.pt" in line


def test_train_needs_a_plan(tmp_path):
    write_segmentation_dataset(tmp_path / "src", 6, seed=1)
    vesalius.import_dataset(tmp_path / "src", "raw", workspace=tmp_path / "ws")
    with pytest.raises(VesaliusError, match="no plan"):
        vesalius.train("raw", workspace=tmp_path / "ws", epochs=1)
