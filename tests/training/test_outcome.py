"""What a run records of what it did: epochs and iterations actually run and why it stopped (``outcome.json``), and
the training loss every few iterations (``log_iterations.csv``), kept consistent by a resumed run."""

from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.helpers import copy_workspace
from vesalius.model_package import ModelPackage, Resume
from vesalius.reporting.report import build_report
from vesalius.training import SegmentationSettings, loop
from vesalius.training.logs import ITERATION_COLUMNS, IterationLog, iteration_log_interval
from vesalius.training.loop import TrainingLoop
from vesalius.training.segmentation import SegmentationHead, train_segmentation

#: Small patches and batches: these tests check records, not learning.
QUICK = {"val_batches": 1, "threads": 2, "precision": "fp32", "patch_size": (16, 16, 16), "batch_size": 1}


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_the_iteration_log_interval_gives_enough_points() -> None:
    assert iteration_log_interval(250, 8 * 250) == 10  # a 30-minute run of 8 planned epochs: 200 points
    assert iteration_log_interval(250, 1000 * 250) == 25  # a long run: 10 points an epoch
    assert iteration_log_interval(4, 12) == 1


def test_the_iteration_log_drops_rows_after_the_checkpoint_and_a_row_cut_short(tmp_path: Path) -> None:
    path = tmp_path / "log_iterations.csv"
    log = IterationLog(path)
    for i in range(1, 5):
        log.add({"epoch": 0, "iteration": 2 * i, "iterations": 2, "train_loss": 1.0 / i, "lr": 0.01, "elapsed_s": i})
    log.close()
    with open(path, "a") as f:
        f.write("0,10,2,0.1")  # a kill while a row was written
    assert IterationLog._read_rows(path)[-1][1] == "8"
    resumed = IterationLog(path, keep=3)  # the checkpoint counted three rows
    assert resumed.points == 3
    resumed.add({"epoch": 0, "iteration": 8, "iterations": 2, "train_loss": 0.5, "lr": 0.01, "elapsed_s": 9})
    resumed.close()
    rows = _rows(path)
    assert list(rows[0]) == list(ITERATION_COLUMNS)
    assert [r["iteration"] for r in rows] == ["2", "4", "6", "8"] and rows[-1]["train_loss"] == "0.5"


@pytest.mark.slow
def test_a_time_budget_that_ends_the_run_early_is_recorded_and_reported(
    planned: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the run: 8 epochs planned, the budget allows 5. A clock that each step moves on by 0.5 s makes the
    # budget of 10 s exactly 20 steps (the pace of the first epoch), whatever the machine's speed.
    clock = {"now": 0.0}
    monkeypatch.setattr(loop, "time", SimpleNamespace(perf_counter=lambda: clock["now"]))
    train_step = TrainingLoop.train_step

    def slow_step(self: TrainingLoop, step: int, lr: float) -> float:
        clock["now"] += 0.5
        return train_step(self, step, lr)

    monkeypatch.setattr(TrainingLoop, "train_step", slow_step)
    ws = copy_workspace(planned, tmp_path)
    settings = SegmentationSettings("ph", fold="all", epochs=8, iterations_per_epoch=4, time_budget_s=10.0, **QUICK)
    result = train_segmentation(settings, ws)  # fold "all": no validation cases
    package = ModelPackage(result.run_dir)
    outcome = package.outcome
    assert outcome is not None and outcome.stopped == result.stopped == "time budget"
    log = _rows(package.log_csv)
    assert (outcome.epochs, outcome.iterations) == (result.epochs, result.iterations) == (5, 20)
    assert len(log) == 5 and int(log[-1]["iteration"]) == 20
    assert (outcome.planned_epochs, outcome.planned_iterations, outcome.budget_iterations) == (8, 32, 20)
    assert outcome.reason == "time budget of 10 s reached after 5 of 8 planned epochs (20 of 32 iterations)"
    assert package.settings["epochs"] == 8  # the settings keep what was planned

    points = _rows(package.log_iterations_csv)
    assert outcome.log_every == 1 and len(points) == 20 > len(log)  # finer than per epoch
    assert [int(p["iteration"]) for p in points] == list(range(1, 21))

    html = build_report(result.run_dir, tmp_path / "report.html", workspace=ws).read_text(encoding="utf-8")
    assert "<th>epochs (planned)</th><td>8</td>" in html
    assert "<th>epochs run</th><td>5 of 8 planned</td>" in html
    assert "<th>iterations run</th><td>20 of 32 planned (4 per epoch); the time budget allowed 20</td>" in html
    assert "time budget of 10 s reached after 5 of 8 planned epochs" in html
    assert "none: no validation cases (fold all)" in html
    assert "Training loss every iteration (20 points, log_iterations.csv); no validation cases." in html


@pytest.mark.slow
def test_a_resumed_run_keeps_its_record_and_iteration_log(
    planned: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # points every 4 steps of an epoch of 6: at step 4 and a shorter one at 6
    monkeypatch.setattr("vesalius.training.loop.iteration_log_interval", lambda *_: 4)
    settings = {"epochs": 2, "iterations_per_epoch": 6, "checkpoint_interval_s": 0, **QUICK}
    straight = train_segmentation(SegmentationSettings("ph", fold=1, **settings), copy_workspace(planned, tmp_path))
    expected = _rows(ModelPackage(straight.run_dir).log_iterations_csv)
    assert [(r["iteration"], r["iterations"]) for r in expected] == [("4", "4"), ("6", "2"), ("10", "4"), ("12", "2")]

    ws = copy_workspace(planned, tmp_path / "other")
    validate = SegmentationHead.validate
    calls = {"n": 0}

    def interrupt_the_second_validation(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:  # epoch 1's last point is written; its checkpoint is not
            raise KeyboardInterrupt
        return validate(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(SegmentationHead, "validate", interrupt_the_second_validation)
        with pytest.raises(KeyboardInterrupt):
            train_segmentation(SegmentationSettings("ph", fold=1, **settings), ws)
    package = ModelPackage(ws / "runs" / "ph" / "3d" / "fold_1")
    interrupted = package.outcome
    assert interrupted is not None and interrupted.stopped == "interrupted"
    assert (interrupted.epochs, interrupted.iterations) == (1, 12) and "continue it with --resume" in interrupted.reason
    assert len(_rows(package.log_iterations_csv)) == 4  # one more than the last checkpoint (at iteration 11) counts

    resumed = train_segmentation(SegmentationSettings("ph", fold=1), ws, resume=True)
    outcome = package.outcome
    assert outcome is not None and outcome.stopped == resumed.stopped == "epochs"
    assert (outcome.epochs, outcome.iterations) == (2, 12) == (len(_rows(package.log_csv)), resumed.iterations)
    assert outcome.resumed == (Resume(epoch=1, iteration=11),) and outcome.log_every == 4
    assert outcome.reason == "completed all 2 planned epochs (12 iterations)"

    def same(rows: list[dict[str, str]]) -> list[tuple[str, ...]]:
        return [tuple(r[k] for k in ITERATION_COLUMNS if k != "elapsed_s") for r in rows]

    assert same(_rows(package.log_iterations_csv)) == same(expected)  # the resumed run writes the same points

    html = build_report(package.root, tmp_path / "report.html", workspace=ws).read_text(encoding="utf-8")
    assert "completed all 2 planned epochs (12 iterations)" in html
    assert "at epoch 1 (iteration 11)" in html
    assert "<th>validation pseudo-Dice, last epoch</th>" in html
