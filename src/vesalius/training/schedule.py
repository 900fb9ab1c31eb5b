"""Learning-rate schedules as functions of training progress in [0, 1] (the fraction of the run's iterations done;
a time budget is turned into iterations by :class:`vesalius.training.loop.TrainingLoop`)."""

from __future__ import annotations

import math

__all__ = ["learning_rate"]


#: Fractions of the run after which the ``"step"`` schedule divides the learning rate by 10 (MedMNIST's recipe).
STEP_MILESTONES = (0.5, 0.75)


def learning_rate(base_lr: float, fraction: float, schedule: str = "poly") -> float:
    """Learning rate at ``fraction`` of the run: ``"poly"`` ``base * (1 - f) ** 0.9`` (nnU-Net), ``"cosine"``
    ``base * (1 + cos(pi f)) / 2`` or ``"step"`` ``base * 0.1 ** (milestones passed)`` (:data:`STEP_MILESTONES`)."""
    fraction = min(1.0, max(0.0, fraction))
    if schedule == "poly":
        return base_lr * (1.0 - fraction) ** 0.9
    if schedule == "cosine":
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * fraction))
    if schedule == "step":
        return base_lr * 0.1 ** sum(fraction >= m for m in STEP_MILESTONES)
    raise ValueError(f"unknown schedule {schedule!r}")
