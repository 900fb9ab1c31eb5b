"""Stopping a run whose curve has converged: the plateau rule.

A time budget sized for a large data set lets a small one train for far longer than it needs (130 CT patches of
48 x 48 get tens of thousands of iterations in 30 minutes). The rule watches one figure per epoch, higher being
better: the smoothed validation pseudo-Dice (``dice_ema``), or without validation cases the negated training
loss.

The rule compares two windows of ``patience`` (W) epochs: the run has converged when the mean figure of the last W
epochs beats the mean of the W epochs before them by no more than ``min_delta``. A trend over windows rather than a
best-so-far with patience, because the pseudo-Dice of a small validation set moves by several hundredths from one
epoch to the next while the curve climbs by a few thousandths per epoch: a best-so-far rule then stops early
climbs (the CT-patch run's curve, which the old rule stopped at epochs 3 to 10 of 73, 0.06 below its end). The
rule judges no run before 3 W epochs: the first W figures only let the moving average forget its first epoch, so
a budget that holds fewer than 3 W epochs (Hippocampus's 8 epochs in 30 minutes, with W = 3 or more) is never
stopped by it. A missing figure (NaN) is skipped: it neither counts as an epoch nor enters a window. With the
pseudo-Dice's noise, W = 10 lets a curve climbing 0.002 per epoch go on in 98 % of synthetic runs (W = 5: 14 %).

The rule only ends the run: the learning-rate schedule, planned to the budget's iterations, is not shortened, so a
run stopped on its plateau ends with the learning rate it had there. On the CT patches a final decay of that rate
over one more window did not raise the validation Dice (``benchmarks/RESULTS.md``, "Plateau rule").

Written by hand: the rule is a few lines, and keeping it here lets its state go into the checkpoint, so that a
resumed run stops at the same epoch as an uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Plateau", "plateau_epoch"]


@dataclass
class Plateau:
    """The rule's state over the epochs of one run.

    Attributes:
        patience: the window W, in epochs (0: never stop). The run has converged after at least 3 W epochs when
            the mean figure of the last W epochs exceeds the mean of the W before by no more than ``min_delta``.
        min_delta: the smallest gain between the two windows that counts as progress (in the figure's units,
            e.g. Dice).
        seen: epochs with a figure so far.
        recent: the figures of the last 2 W of those epochs, oldest first.
    """

    patience: int
    min_delta: float = 0.002
    seen: int = 0
    recent: list[float] = field(default_factory=list)

    def update(self, value: float) -> None:
        """Take one epoch's figure (NaN, a missing figure, is skipped)."""
        if math.isnan(value):
            return
        self.seen += 1
        self.recent.append(float(value))
        del self.recent[: max(0, len(self.recent) - 2 * self.patience)]

    @property
    def gain(self) -> float:
        """The mean of the last W figures less the mean of the W before them (NaN before 2 W figures)."""
        w = self.patience
        if w <= 0 or len(self.recent) < 2 * w:
            return float("nan")
        return (sum(self.recent[w:]) - sum(self.recent[:w])) / w

    @property
    def converged(self) -> bool:
        return self.patience > 0 and self.seen >= 3 * self.patience and self.gain <= self.min_delta

    def state(self) -> dict[str, Any]:
        return {"seen": self.seen, "recent": list(self.recent)}

    def load_state(self, state: dict[str, Any]) -> None:
        """Take a :meth:`state`; the state of the former best-so-far rule (``best``, ``stale``) starts afresh."""
        self.seen = int(state.get("seen", 0))
        self.recent = [float(v) for v in state.get("recent", [])][-2 * self.patience :] if self.patience else []


def plateau_epoch(curve: Iterable[float], patience: int, min_delta: float = 0.002) -> int | None:
    """The epoch (0-based) after which the rule stops a run with this per-epoch ``curve``, or ``None`` when it
    never does: for judging the rule on logged runs (``log.csv``) without training them again."""
    rule = Plateau(patience, min_delta)
    for epoch, value in enumerate(curve):
        rule.update(value)
        if rule.converged:
            return epoch
    return None
