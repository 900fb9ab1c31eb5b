"""Crash safety of training: checkpoints within an epoch, a time budget fixed as iterations, and a run killed
(SIGKILL) at a random moment that resumes to the same weights as an uninterrupted one."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import copy_workspace
from vesalius.training import SegmentationSettings
from vesalius.training.segmentation import train_segmentation

pytestmark = pytest.mark.slow

SETTINGS = {"epochs": 2, "iterations_per_epoch": 12, "val_batches": 1, "threads": 1, "precision": "fp32"}


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoint_final.pt", weights_only=True)["model"]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_killed_run_resumes_to_the_uninterrupted_weights(planned: Path, tmp_path: Path) -> None:
    straight = train_segmentation(SegmentationSettings("ph", fold=3, **SETTINGS), planned)
    expected = _weights(straight.run_dir)

    ws = copy_workspace(planned, tmp_path)
    run = ws / "runs" / "ph" / "3d" / "fold_3"
    settings = f"SegmentationSettings('ph', fold=3, checkpoint_interval_s=0, **{SETTINGS!r})"
    code = (
        "from vesalius.training import SegmentationSettings\n"
        "from vesalius.training.segmentation import train_segmentation\n"
        f"train_segmentation({settings}, {str(ws)!r})\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": "0"})
    latest = run / "checkpoint_latest.pt"
    deadline = time.monotonic() + 120
    while not latest.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(random.Random(7).uniform(0.0, 1.0))  # somewhere within the run, mid-epoch most likely
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert latest.exists() and not (run / "checkpoint_final.pt").exists(), "the child ended before the kill"
    state = torch.load(latest, weights_only=True)
    assert 0 < state["iteration"] < 24
    resumed = train_segmentation(SegmentationSettings("ph", fold=3), ws, resume=True)
    assert resumed.iterations == straight.iterations == 24
    assert _same(_weights(resumed.run_dir), expected)


def test_a_checkpoint_within_an_epoch_resumes_exactly(planned: Path, tmp_path: Path) -> None:
    straight = train_segmentation(SegmentationSettings("ph", fold=4, **SETTINGS), planned)
    ws = copy_workspace(planned, tmp_path)

    calls = {"n": 0}
    original = torch.optim.AdamW.step

    def fail_in_the_middle(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 18:  # iteration 17: the second epoch's sixth step
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.optim.AdamW, "step", fail_in_the_middle)
        with pytest.raises(KeyboardInterrupt):
            train_segmentation(SegmentationSettings("ph", fold=4, checkpoint_interval_s=0, **SETTINGS), ws)
    state = torch.load(ws / "runs" / "ph" / "3d" / "fold_4" / "checkpoint_latest.pt", weights_only=True)
    assert (state["iteration"], state["epoch"], state["epoch_first"]) == (17, 1, 12)  # saved within epoch 1
    resumed = train_segmentation(SegmentationSettings("ph", fold=4), ws, resume=True)
    assert _same(_weights(resumed.run_dir), _weights(straight.run_dir))
    log = (resumed.run_dir / "log.csv").read_text().splitlines()
    assert len(log) == 3  # header and two epochs: the interrupted epoch is logged once


def test_a_time_budget_becomes_an_iteration_count_after_the_first_epoch(planned: Path, tmp_path: Path) -> None:
    ws = copy_workspace(planned, tmp_path)
    settings = {**SETTINGS, "epochs": 2000, "iterations_per_epoch": 4, "time_budget_s": 10.0}
    result = train_segmentation(SegmentationSettings("ph", fold=2, **settings), ws)
    state = torch.load(result.run_dir / "checkpoint_latest.pt", weights_only=True)
    total = state["total"]
    assert 4 <= total < 2000 * 4 and result.iterations == total and result.stopped == "time budget"
    lrs = [float(line.split(",")[3]) for line in (result.run_dir / "log.csv").read_text().splitlines()[1:]]
    assert lrs[-1] < 0.1 * lrs[0] or len(lrs) == 1  # annealed to the end of the fixed count
    assert result.elapsed_s < 10.0 * 1.25 + 5
    saved = json.loads((result.run_dir / "training.json").read_text())["training"]
    assert saved["time_budget_s"] == 10.0
