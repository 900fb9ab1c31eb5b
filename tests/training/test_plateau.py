"""The plateau rule: on synthetic curves it stops where a converged curve flattens and never before patience runs
out; in a run it ends training with its own reason."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import copy_workspace
from vesalius.errors import VesaliusError
from vesalius.training.plateau import Plateau, plateau_epoch
from vesalius.training.settings import SegmentationSettings


def test_a_saturating_curve_stops_once_flat_for_patience_epochs() -> None:
    curve = [0.90 * (1 - math.exp(-e / 3)) for e in range(40)]
    stop = plateau_epoch(curve, patience=5)
    assert stop is not None
    assert curve[stop] - curve[stop - 5] <= 0.002  # the last 5 epochs together gained no more than min_delta
    assert curve[stop - 5] - curve[stop - 11] > 0.002  # while the curve still climbs, it goes on
    assert curve[-1] - curve[stop] < 0.001  # what the rest of the run would have added


def test_noise_below_min_delta_is_no_gain_and_nan_counts_as_stale() -> None:
    rng = np.random.default_rng(0)
    flat = list(0.8 + rng.uniform(-0.001, 0.001, 12))
    assert plateau_epoch(flat, patience=4) == 4  # epoch 0 sets the best, epochs 1-4 add nothing that counts
    assert plateau_epoch([0.5, float("nan"), float("nan")], patience=2) == 2
    assert plateau_epoch([0.1 * e for e in range(30)], patience=3) is None  # still climbing
    assert plateau_epoch([0.5] * 30, patience=0) is None  # 0: never


def test_the_state_round_trips() -> None:
    rule = Plateau(3)
    for value in (0.5, 0.6, 0.6):
        rule.update(value)
    again = Plateau(3)
    again.load_state(rule.state())
    assert (again.best, again.stale) == (0.6, 1)


def test_settings_refuse_a_negative_patience() -> None:
    with pytest.raises(VesaliusError, match="stop-on-plateau needs a whole number"):
        SegmentationSettings("ph", stop_on_plateau=-1)


@pytest.mark.slow
def test_a_run_stops_on_its_plateau(planned: Path, tmp_path: Path) -> None:
    import vesalius

    ws = copy_workspace(planned, tmp_path)
    result = vesalius.train(
        "ph",
        "3d",
        3,
        workspace=ws,
        epochs=40,
        iterations_per_epoch=2,
        val_batches=1,
        stop_on_plateau=1,
        report=False,
        validate=False,
        threads=2,
    )
    assert result.stopped == "plateau" and result.epochs < 40
    outcome = json.loads((result.run_dir / "outcome.json").read_text(encoding="utf-8"))
    assert outcome["reason"].startswith("converged: no gain over 0.002 for 1 epochs")
