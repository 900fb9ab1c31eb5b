"""Training: the network's shapes, schedules, a short real training that must learn, resume, NaN detection, CLI."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import vesalius
from vesalius.cli import main
from vesalius.data.synthetic import write_segmentation_dataset
from vesalius.errors import VesaliusError
from vesalius.evaluation.cross_validation import validate_fold
from vesalius.inference.model import load_model
from vesalius.models import UNet, build_network
from vesalius.training import TrainingConfig, train_segmentation
from vesalius.training.schedule import learning_rate, progress

# -- network -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stem", ["strided", "full"])
@pytest.mark.parametrize("dims", [2, 3])
def test_unet_output_shapes_with_and_without_deep_supervision(stem, dims):
    size = (16, 24, 8)[:dims]
    strides = [[1] * dims, [2] * dims, [2] * dims]
    net = UNet(dims, 2, 4, [4, 8, 16], strides, [[3] * dims] * 3, stem=stem)
    x = torch.randn(2, 2, *size)
    outputs = net(x)
    assert isinstance(outputs, list)
    assert outputs[0].shape == (2, 4, *size)  # full resolution first
    lower = [tuple(o.shape[2:]) for o in outputs[1:]]
    assert lower == sorted(lower, reverse=True) and all(s < size for s in lower[:1])
    net.eval()
    with torch.no_grad():
        assert net(x).shape == (2, 4, *size)


def test_unet_keeps_anisotropic_strides():
    strides = [[1, 1, 1], [2, 2, 1], [2, 2, 2]]
    net = UNet(3, 1, 2, [4, 8, 16], strides, [[3, 3, 1], [3, 3, 3], [3, 3, 3]]).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 1, 16, 12, 6)).shape == (1, 2, 16, 12, 6)


def test_build_network_from_plan_configuration():
    config = {"patch_size": [16, 16], "features": [4, 8], "strides": [[1, 1], [2, 2]], "kernels": [[3, 3], [3, 3]]}
    net = build_network(config, in_channels=3, num_classes=2).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 16, 16)).shape == (1, 2, 16, 16)


# -- schedules and settings ---------------------------------------------------------------------------------------


def test_learning_rate_schedules_by_hand():
    assert learning_rate(0.01, 0.0) == 0.01
    assert learning_rate(0.01, 0.5) == pytest.approx(0.01 * 0.5**0.9)
    assert learning_rate(0.01, 1.0) == 0.0
    assert learning_rate(2e-3, 0.5, "cosine") == pytest.approx(1e-3)
    assert learning_rate(2e-3, 1.0, "cosine") == pytest.approx(0.0, abs=1e-12)


def test_progress_follows_the_further_of_iterations_and_time():
    assert progress(10, 100, 0.0, None) == 0.1
    assert progress(10, 100, 50.0, 100.0) == 0.5  # time is further along
    assert progress(90, 100, 50.0, 100.0) == 0.9
    assert progress(10, 100, 500.0, 100.0) == 1.0


def test_training_config_resolves_from_plan_and_rejects_bad_values():
    plan = {
        "budget": {"time_budget_s": 600.0},
        "configurations": {"3d": {"batch_size": 4, "patch_size": [8, 8, 8], "iterations": 1000}},
    }
    cfg = TrainingConfig("x").resolve(plan)
    assert (cfg.epochs, cfg.time_budget_s, cfg.batch_size, cfg.patch_size) == (4, 600.0, 4, (8, 8, 8))
    assert cfg.lr == 1e-2 and TrainingConfig("x", optimizer="adamw").resolve(plan).lr == 2e-3
    explicit = TrainingConfig("x", epochs=2, iterations_per_epoch=10).resolve(plan)
    assert explicit.time_budget_s is None and explicit.total_iterations == 20
    assert TrainingConfig.from_dict(cfg.to_dict()) == cfg
    for bad in ({"optimizer": "lbfgs"}, {"fold": 7.5}, {"epochs": 0}, {"precision": "int8"}):
        with pytest.raises(VesaliusError):
            TrainingConfig("x", **bad)
    with pytest.raises(VesaliusError, match="no '2d'"):
        TrainingConfig("x", config="2d").resolve(plan)


def test_optimizer_and_schedule_come_from_the_plan_unless_given():
    plan = {"configurations": {"3d": {"batch_size": 4, "patch_size": [8, 8, 8], "iterations": 1000}}}
    old = TrainingConfig("x").resolve(plan)  # a plan without a training entry: nnU-Net's SGD + poly
    assert (old.optimizer, old.schedule, old.lr, old.weight_decay) == ("sgd", "poly", 1e-2, 3e-5)
    plan["training"] = {"optimizer": "adamw", "schedule": "cosine"}
    cpu = TrainingConfig("x").resolve(plan)
    assert (cpu.optimizer, cpu.schedule, cpu.lr, cpu.weight_decay) == ("adamw", "cosine", 2e-3, 1e-2)
    given = TrainingConfig("x", optimizer="sgd", schedule="poly").resolve(plan)
    assert (given.optimizer, given.schedule, given.lr) == ("sgd", "poly", 1e-2)
    assert TrainingConfig.from_dict(cpu.to_dict()).resolve(plan) == cpu


# -- real training on phantoms ------------------------------------------------------------------------------------


def _copy(ws: Path, tmp_path: Path) -> Path:
    target = tmp_path / "ws_copy"
    shutil.copytree(ws, target, ignore=shutil.ignore_patterns("runs"))
    return target


@pytest.mark.slow
def test_short_training_learns_what_an_untrained_network_cannot(trained, planned):
    organ = trained.validation["dice"]["organ"]
    assert organ > 0.75, trained.validation
    # The same network with its initial weights, through the same prediction, scores far lower.
    run = trained.run_dir
    state = torch.load(run / "checkpoint_final.pt", weights_only=True)
    torch.manual_seed(0)
    model = load_model(run)
    untrained = build_network(model.plan["configurations"]["3d"], 1, 3)
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
    straight = train_segmentation(TrainingConfig("ph", fold=1, **settings), planned)
    expected = torch.load(straight.run_dir / "checkpoint_final.pt", weights_only=True)["model"]

    other = _copy(planned, tmp_path)

    def stop_after_first_epoch(row):
        if row["epoch"] == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_segmentation(TrainingConfig("ph", fold=1, **settings), other, callbacks=[stop_after_first_epoch])
    with pytest.raises(VesaliusError, match="a run exists"):
        train_segmentation(TrainingConfig("ph", fold=1, **settings), other)
    resumed = train_segmentation(TrainingConfig("ph", fold=1), other, resume=True)  # saved settings stand
    assert resumed.iterations == straight.iterations == 12
    got = torch.load(resumed.run_dir / "checkpoint_final.pt", weights_only=True)["model"]
    for key, value in expected.items():
        assert torch.equal(value, got[key]), key
    rows = list(csv.DictReader((resumed.run_dir / "log.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert json.loads((resumed.run_dir / "training.json").read_text())["training"]["precision"] == "fp32"


@pytest.mark.slow
def test_nan_in_the_data_is_reported_with_its_cause(planned, tmp_path):
    ws = _copy(planned, tmp_path)
    for path in (ws / "preprocessed" / "ph" / "3d").glob("*.npy"):
        if not path.name.endswith("_seg.npy"):
            array = np.load(path)
            array[:] = np.nan
            np.save(path, array)
    with pytest.raises(VesaliusError) as info:
        train_segmentation(TrainingConfig("ph", epochs=1, iterations_per_epoch=2, threads=2), ws)
    line = info.value.one_line()
    assert "NaN" in line and "iteration 0" in line and "checkpoint_latest.pt" in line


def test_train_needs_a_plan(tmp_path):
    write_segmentation_dataset(tmp_path / "src", 6, seed=1)
    vesalius.import_dataset(tmp_path / "src", "raw", workspace=tmp_path / "ws")
    with pytest.raises(VesaliusError, match="no plan"):
        vesalius.train("raw", workspace=tmp_path / "ws", epochs=1)


@pytest.mark.slow
def test_cli_train_fold_then_refuses_to_overwrite(planned, tmp_path, capsys):
    ws = _copy(planned, tmp_path)
    args = ["train", "ph", "--fold", "2", "--epochs", "1", "--iters-per-epoch", "3", "-w", str(ws)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "trained 3 iterations (1 epochs)" in printed and "validation Dice (2 cases)" in printed
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["train", "ph", "--fold", "9", "-w", str(ws), "--force"]) == 2
    assert main(["train", "ph", "--optimizer", "adam", "-w", str(ws)]) == 2
    assert not math.isnan(float(next(csv.DictReader((ws / "runs/ph/3d/fold_2/log.csv").open()))["train_loss"]))
