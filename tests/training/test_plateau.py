"""The plateau rule: on synthetic curves as noisy as the CT patches' pseudo-Dice it lets a climbing run go on, stops a
converged one within a bounded number of epochs, never judges a run shorter than 3 windows, and decides the same
after a resume; in a run it ends training with its own reason."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import copy_workspace
from vesalius.errors import VesaliusError
from vesalius.training.plateau import Plateau, plateau_epoch
from vesalius.training.settings import SegmentationSettings

#: the pseudo-Dice's epoch-to-epoch spread on the CT patches at a high learning rate (benchmarks/RESULTS.md)
NOISE = 0.03


def smoothed(raw: np.ndarray, weight: float = 0.9) -> list[float]:
    """The moving average the segmentation run feeds the rule (``dice_ema``)."""
    out, ema = [], float(raw[0])
    for value in raw:
        ema = weight * ema + (1 - weight) * float(value)
        out.append(ema)
    return out


@pytest.mark.parametrize("seed", range(10))
def test_a_noisy_rising_curve_is_not_stopped(seed: int) -> None:
    rng = np.random.default_rng(seed)
    epochs = np.arange(120)
    curve = smoothed(0.70 + 0.003 * epochs + rng.normal(0, NOISE, epochs.size))  # the CT run's pace of climb
    assert plateau_epoch(curve, patience=10) is None


@pytest.mark.parametrize("seed", range(10))
def test_a_converged_noisy_curve_stops_within_a_bounded_number_of_epochs(seed: int) -> None:
    rng = np.random.default_rng(seed)
    epochs = np.arange(200)
    flat_from = 40
    raw = 0.70 + 0.1 * np.minimum(epochs, flat_from) / flat_from + rng.normal(0, NOISE, epochs.size)
    stop = plateau_epoch(smoothed(raw), patience=10)
    assert stop is not None
    assert flat_from <= stop <= flat_from + 6 * 10  # not while it climbs; within 6 windows once flat


def test_a_flat_curve_stops_after_three_windows_and_not_before() -> None:
    assert plateau_epoch([0.8] * 40, patience=5) == 14  # 15 epochs: one to forget the start, two to compare
    assert plateau_epoch([0.8] * 14, patience=5) is None


def test_a_run_shorter_than_three_windows_is_never_stopped() -> None:
    # the Hippocampus 30-minute run: 8 epochs whose smoothed pseudo-Dice hardly moves
    hippocampus = [0.8740, 0.8744, 0.8744, 0.8744, 0.8750, 0.8758, 0.8765, 0.8771]
    assert all(plateau_epoch(hippocampus, patience=n) is None for n in (3, 5, 10))


def test_the_gain_compares_two_window_means() -> None:
    rule = Plateau(2)
    for value in (0.1, 0.2, 0.3, 0.5, 0.6):
        rule.update(value)
    assert rule.recent == [0.2, 0.3, 0.5, 0.6]
    assert rule.gain == pytest.approx((0.5 + 0.6) / 2 - (0.2 + 0.3) / 2)
    assert not rule.converged  # still climbing
    rule.update(0.6)
    rule.update(0.6)  # last two 0.6, 0.6 against 0.5, 0.6: a gain of 0.05
    assert not rule.converged
    rule.update(0.6)
    rule.update(0.6)
    assert rule.gain == 0.0 and rule.converged


def test_nan_is_skipped_a_falling_curve_stops_and_zero_never_stops() -> None:
    assert plateau_epoch([0.5, float("nan")] * 10, patience=2) == 10  # the 6th figure, at epoch 10
    assert plateau_epoch([1.0 - 0.01 * e for e in range(10)], patience=2) == 5  # worse is no gain either
    assert plateau_epoch([0.1 * e for e in range(60)], patience=3) is None
    assert plateau_epoch([0.5] * 60, patience=0) is None


def test_a_resumed_rule_decides_as_an_uninterrupted_one() -> None:
    rng = np.random.default_rng(1)
    curve = smoothed(0.75 + 0.05 * (1 - np.exp(-np.arange(120) / 15)) + rng.normal(0, NOISE, 120))
    straight, resumed = Plateau(10), Plateau(10)
    for value in curve:
        straight.update(value)
        again = Plateau(10)
        again.load_state(json.loads(json.dumps(resumed.state())))  # as a checkpoint would carry it
        again.update(value)
        resumed = again
        assert again.converged == straight.converged
        assert again.state() == straight.state()
    assert plateau_epoch(curve, 10) is not None


def test_the_former_rules_state_starts_afresh() -> None:
    rule = Plateau(3)
    rule.load_state({"best": 0.6, "stale": 2})  # a checkpoint of a Vesalius before the window rule
    assert (rule.seen, rule.recent) == (0, [])


def test_settings_refuse_a_negative_patience() -> None:
    with pytest.raises(VesaliusError, match="stop-on-plateau needs a whole number"):
        SegmentationSettings("ph", stop_on_plateau=-1)


@pytest.mark.slow
def test_a_run_stops_on_its_plateau(planned: Path, tmp_path: Path) -> None:
    import vesalius

    ws = copy_workspace(planned, tmp_path)
    # A learning rate that leaves the network as it starts: its curve is flat from the first epoch, whatever the
    # CPU's rounding does to a learning one (which climbed past the rule's 0.002 for 40 epochs on one machine).
    result = vesalius.train(
        "ph",
        "3d",
        3,
        workspace=ws,
        epochs=40,
        iterations_per_epoch=2,
        lr=1e-9,
        val_batches=1,
        stop_on_plateau=1,
        report=False,
        validate=False,
        threads=2,
    )
    assert result.stopped == "plateau" and 3 <= result.epochs < 40
    outcome = json.loads((result.run_dir / "outcome.json").read_text(encoding="utf-8"))
    assert outcome["reason"].startswith("converged: ")
