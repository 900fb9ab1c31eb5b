"""``vesalius train`` from the command line: one fold, then a refusal to overwrite it."""

from __future__ import annotations

import csv
import math

import pytest

from tests.helpers import copy_workspace
from vesalius.cli import main


@pytest.mark.slow
def test_cli_train_fold_then_refuses_to_overwrite(planned, tmp_path, capsys):
    ws = copy_workspace(planned, tmp_path)
    args = ["train", "ph", "--fold", "2", "--epochs", "1", "--iters-per-epoch", "3", "-w", str(ws)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "trained 3 iterations (1 epochs)" in printed and "validation Dice (2 cases)" in printed
    assert "stopped: " in printed and "1 planned epoch" in printed
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["train", "ph", "--fold", "9", "-w", str(ws), "--force"]) == 2
    assert main(["train", "ph", "--optimizer", "adam", "-w", str(ws)]) == 2
    assert not math.isnan(float(next(csv.DictReader((ws / "runs/ph/3d/fold_2/log.csv").open()))["train_loss"]))
