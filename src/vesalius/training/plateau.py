"""Stopping a run whose curve has converged: the plateau rule.

A time budget sized for a large data set lets a small one train for far longer than it needs (130 CT patches of
48 x 48 get tens of thousands of iterations in 30 minutes). The rule watches one figure per epoch, higher being
better: the smoothed validation pseudo-Dice (``dice_ema``), or without validation cases the negated training
loss. The run has converged when that figure has not beaten its best by more than ``min_delta`` for ``patience``
epochs in a row. Epochs are the unit because they are the points where the figure exists; a run whose budget
holds fewer epochs than the patience is never stopped by it.

Written by hand: the rule is a few lines, and keeping it here lets its state go into the checkpoint, so that a
resumed run stops at the same epoch as an uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Plateau", "plateau_epoch"]


@dataclass
class Plateau:
    """The rule's state over the epochs of one run.

    Attributes:
        patience: epochs without an improvement larger than ``min_delta`` before the run has converged; 0 never.
        min_delta: the smallest gain that counts as an improvement (in the figure's units, e.g. Dice).
        best: the best figure so far (``-inf`` before the first epoch).
        stale: epochs since the last improvement.
    """

    patience: int
    min_delta: float = 0.002
    best: float = -math.inf
    stale: int = 0

    def update(self, value: float) -> None:
        """Take one epoch's figure (NaN, a missing figure, counts as no improvement)."""
        if not math.isnan(value) and value > self.best + self.min_delta:
            self.best, self.stale = value, 0
        else:
            self.stale += 1

    @property
    def converged(self) -> bool:
        return self.patience > 0 and self.stale >= self.patience

    def state(self) -> dict[str, float]:
        return {"best": self.best, "stale": self.stale}

    def load_state(self, state: dict[str, float]) -> None:
        self.best, self.stale = float(state["best"]), int(state["stale"])


def plateau_epoch(curve: Iterable[float], patience: int, min_delta: float = 0.002) -> int | None:
    """The epoch (0-based) after which the rule stops a run with this per-epoch ``curve``, or ``None`` when it
    never does: for judging the rule on logged runs (``log.csv``) without training them again."""
    rule = Plateau(patience, min_delta)
    for epoch, value in enumerate(curve):
        rule.update(value)
        if rule.converged:
            return epoch
    return None
