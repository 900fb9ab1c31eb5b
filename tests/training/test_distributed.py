"""Distributed training: DDP over gloo with 2 processes on the CPU against 1 process, resume with another number of
processes, a killed process, classification; and the pieces (pooled Dice, batch rows, launcher checks)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import vesalius
from tests.helpers import copy_workspace
from vesalius.augmentation.sampling import PatchSampler
from vesalius.augmentation.transforms import AugmentationConfig
from vesalius.errors import VesaliusError
from vesalius.training import SegmentationSettings
from vesalius.training.distributed import Distributed, run_processes
from vesalius.training.losses import DiceCELoss
from vesalius.training.segmentation import train_segmentation

#: Augmentation off, so that the steps are deterministic whatever the number of processes.
NO_AUGMENTATION = {"p_mirror": 0.0, **{k: v for k, v in AugmentationConfig.off().to_dict().items() if k[:2] == "p_"}}
#: Two epochs of three steps with a global batch of 4, fp32 and SGD (whose steps follow the gradient's size, so a
#: float-rounding difference in a gradient stays that small in the weights).
SETTINGS: dict[str, Any] = {
    "dataset": "ph",
    "fold": 0,
    "epochs": 2,
    "iterations_per_epoch": 3,
    "val_batches": 2,
    "batch_size": 4,
    "threads": 1,
    "precision": "fp32",
    "optimizer": "sgd",
    "augmentation": NO_AUGMENTATION,
}


def _train_rank(arguments: dict[str, Any]) -> dict[str, torch.Tensor]:
    """One rank of a 2-process run: train (with ``settings`` over :data:`SETTINGS`, stopping after epoch
    ``stop_after`` when given) and return this rank's network weights."""
    from vesalius.training import loop

    weights: dict[str, torch.Tensor] = {}
    original = loop.TrainingLoop.run

    def run(self: loop.TrainingLoop, *args: Any, **kwargs: Any) -> Any:
        try:
            return original(self, *args, **kwargs)
        finally:
            weights.update({k: v.detach().clone() for k, v in self.network.state_dict().items()})

    loop.TrainingLoop.run = run  # type: ignore[method-assign]

    def stop(row: dict[str, float]) -> None:
        if row["epoch"] == arguments.get("stop_after"):
            raise KeyboardInterrupt

    with contextlib.suppress(KeyboardInterrupt):
        settings = SegmentationSettings(**{**SETTINGS, **arguments.get("settings", {})})
        train_segmentation(settings, arguments["workspace"], callbacks=[stop])
    return weights


def _final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoint_final.pt", weights_only=True)["model"]


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())
    assert worst < 1e-4, worst


@pytest.fixture(scope="module")
def one_process(planned: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    """The final weights of the run in one process with the global batch."""
    ws = copy_workspace(planned, tmp_path_factory.mktemp("one"))
    result = train_segmentation(SegmentationSettings(**SETTINGS), ws)
    return _final_weights(result.run_dir)


@pytest.mark.slow
def test_two_processes_take_the_steps_of_one_and_resume_in_one(planned, one_process, tmp_path):
    """The first epoch in 2 processes, the second resumed in 1: the weights of 1 process throughout (so the 2
    processes took its steps), and the 2 processes held the same weights."""
    ws = copy_workspace(planned, tmp_path)
    weights = run_processes(2, _train_rank, {"workspace": ws, "stop_after": 0})
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # DDP kept the ranks identical
    run = ws / "runs" / "ph" / "3d" / "fold_0"
    latest = torch.load(run / "checkpoint_latest.pt", weights_only=True)
    assert latest["iteration"] == 3
    _assert_close(latest["model"], weights[0])
    assert json.loads((run / "outcome.json").read_text(encoding="utf-8"))["stopped"] == "interrupted"
    assert len((run / "log.csv").read_text(encoding="utf-8").splitlines()) == 2  # one writer: header, one row
    result = train_segmentation(SegmentationSettings(**SETTINGS), ws, resume=True)
    assert result.iterations == 6
    _assert_close(_final_weights(result.run_dir), one_process)
    assert json.loads((run / "training.json").read_text(encoding="utf-8"))["training"]["batch_size"] == 4


@pytest.mark.slow
def test_the_time_budget_stops_every_process_at_the_same_iteration(planned, tmp_path):
    ws = copy_workspace(planned, tmp_path)
    budget = {"time_budget_s": 6.0, "epochs": 1000, "iterations_per_epoch": 2, "batch_size": 2}
    weights = run_processes(2, _train_rank, {"workspace": ws, "settings": budget})
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # else DDP would have hung
    outcome = json.loads((ws / "runs/ph/3d/fold_0/outcome.json").read_text(encoding="utf-8"))
    assert outcome["stopped"] == "time budget" and 2 <= outcome["iterations"] < 2000


@pytest.mark.slow
def test_a_killed_process_stops_the_run_with_a_one_line_error(planned, tmp_path):
    ws = copy_workspace(planned, tmp_path)
    command = [sys.executable, "-m", "vesalius", "train", "ph", "--fold", "0", "--nproc", "2", "--epochs", "500"]
    command += ["--iters-per-epoch", "5", "--batch-size", "2", "--no-validate", "--workspace", str(ws)]
    launcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outcome = ws / "runs" / "ph" / "3d" / "fold_0" / "outcome.json"
    deadline = time.monotonic() + 240
    while not outcome.is_file() and launcher.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)  # rank 0 writes it once both ranks are training
    assert outcome.is_file(), launcher.communicate(timeout=60)
    workers = [pid for pid in _children(launcher.pid) if b"spawn_main" in _cmdline(pid)]
    assert len(workers) == 2
    os.kill(max(workers), signal.SIGKILL)
    _, stderr = launcher.communicate(timeout=120)
    assert launcher.returncode != 0
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr and len(lines) == 1, stderr
    # the killed process is named, not the one that lost contact with it
    assert re.search(r"training process [01] of 2 failed.*killed by SIGKILL.*--resume", lines[0]), lines[0]
    # the record says the run did not finish (rank 0 may have seen the lost contact first), and it can resume
    assert json.loads(outcome.read_text(encoding="utf-8"))["stopped"] in (None, "error")


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(p) for p in (task / "children").read_text().split()]
    return found


def _cmdline(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


@pytest.mark.slow
def test_classification_trains_with_two_processes(tmp_path):
    from vesalius.data.synthetic import make_classification_case
    from vesalius.io import write_image

    for i in range(24):
        folder = "present" if i % 2 else "absent"
        write_image(make_classification_case(i, i % 2 == 1, shape=(32, 32)), tmp_path / "src" / folder / f"c{i}.nii.gz")
    ws = tmp_path / "ws"
    vesalius.import_dataset(tmp_path / "src", "syn", workspace=ws)
    arguments = {"name": "syn", "workspace": ws, "fold": 0, "network": "cnn", "epochs": 3, "batch_size": 4}
    result = vesalius.train(**arguments, threads=1, precision="fp32", nproc=2)
    assert (result.epochs, result.stopped) == (3, "epochs")
    summary = result.validation  # rank 0 validated the fold on every validation case
    split = json.loads((result.run_dir / "training.json").read_text(encoding="utf-8"))["split"]
    assert summary is not None and summary["n"] == len(split["val"]) > 0
    rows = [r.split(",") for r in (result.run_dir / "log.csv").read_text(encoding="utf-8").splitlines()]
    auc = rows[0].index("val_auc")
    assert all(0.0 <= float(r[auc]) <= 1.0 for r in rows[1:])  # gathered from both ranks: a defined AUC


# -- the pieces ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(2, 3, 8, 9), (3, 2, 4, 5, 6)])
def test_pooled_dice_ce_equals_monai(shape):
    from monai.losses import DiceCELoss as MonaiDiceCELoss

    torch.manual_seed(0)
    logits = torch.randn(*shape, requires_grad=True)
    labels = torch.randint(0, shape[1], (shape[0], 1, *shape[2:])).float()
    reference = MonaiDiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
    expected = reference(logits, labels)
    (expected_grad,) = torch.autograd.grad(expected, logits)
    ours = DiceCELoss()(logits, labels)
    (grad,) = torch.autograd.grad(ours, logits)
    assert torch.allclose(ours, expected, atol=1e-6) and torch.allclose(grad, expected_grad, atol=1e-7)


def test_pooled_dice_is_the_dice_of_the_statistics_the_pool_returns():
    """Two halves of a batch whose statistics are summed give the loss of the whole batch's Dice."""
    torch.manual_seed(1)
    logits, labels = torch.randn(4, 3, 6, 6), torch.randint(0, 3, (4, 1, 6, 6)).float()
    halves: list[torch.Tensor] = []
    for part in (slice(0, 2), slice(2, 4)):
        DiceCELoss(lambda stats: halves.append(stats) or stats)(logits[part], labels[part])
    summed = halves[0] + halves[1]
    pooled = DiceCELoss(lambda stats: summed)(logits[:2], labels[:2])
    whole = DiceCELoss()(logits, labels)
    ce_difference = torch.nn.functional.cross_entropy(logits[:2], labels[:2, 0].long()) - (
        torch.nn.functional.cross_entropy(logits, labels[:, 0].long())
    )
    assert torch.allclose(pooled - ce_difference, whole, atol=1e-6)


def test_patch_rows_are_those_of_the_whole_batch():
    rng = np.random.default_rng(0)
    cases = [(rng.random((1, 12, 12, 12)).astype(np.float32), (rng.random((1, 12, 12, 12)) > 0.7).astype(np.uint8))]
    sampler = PatchSampler(cases, (6, 6, 6), batch_size=4, seed=3)
    images, segs = sampler.sample(7)
    for rows in (slice(0, 2), slice(2, 4), slice(1, 2)):
        part_images, part_segs = sampler.sample(7, rows)
        assert np.array_equal(part_images, images[rows]) and np.array_equal(part_segs, segs[rows])


def test_ranks_split_the_batch_and_the_validation():
    assert [Distributed(rank=r, world_size=2).rows(4) for r in (0, 1)] == [slice(0, 2), slice(2, 4)]
    assert Distributed(rank=1, world_size=3).share(list(range(7))) == [1, 4]
    with pytest.raises(VesaliusError, match=r"does not split evenly across 2 processes.*multiple of 2"):
        Distributed(rank=0, world_size=2).rows(3)
    single = Distributed()
    assert single.rows(3) == slice(0, 3) and not single.enabled and single.is_writer
    # one process keeps the step seeds of (seed, iteration); ranks draw their own augmentation
    assert single.augmentation_seed(5, 9) == int(np.random.SeedSequence((5, 9)).generate_state(1)[0])
    seeds = {Distributed(rank=r, world_size=2).augmentation_seed(5, 9) for r in (0, 1)}
    assert len(seeds) == 2


def test_rank_comes_from_torchrun_environment(monkeypatch):
    for name, value in {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(name, value)
    distributed = Distributed.from_environment()
    assert distributed == Distributed(rank=3, world_size=4, local_rank=1, local_world_size=2)
    assert distributed.device("cuda") == torch.device("cuda", 1) and distributed.device("cuda:0").index == 0
    assert not distributed.is_writer
    with pytest.raises(VesaliusError, match="already one of a torchrun launch"):
        vesalius.train("any", nproc=2)


def test_launch_refuses_zero_processes():
    with pytest.raises(VesaliusError, match="at least one process"):
        run_processes(0, print, None)


def test_the_cause_of_a_failed_launch_is_not_the_process_that_lost_contact():
    from types import SimpleNamespace

    from vesalius.training.distributed import _cause

    lost = SimpleNamespace(
        exitcode=1,
        timestamp=10,
        message={"message": "VesaliusError: training process 0 lost contact with the others (Connection closed)"},
    )
    killed = SimpleNamespace(exitcode=-9, timestamp=12, message="", signal_name=lambda: "SIGKILL")
    assert _cause({0: lost, 1: killed}) == (1, "it was killed by SIGKILL")
    text = "VesaliusError: x.nii: bad file. Fix it.\nmore"
    wrong = SimpleNamespace(exitcode=1, timestamp=11, message={"message": text})
    assert _cause({0: lost, 1: killed, 2: wrong}) == (2, "x.nii: bad file. Fix it.")
