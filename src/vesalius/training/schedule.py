"""Learning-rate schedules as functions of training progress in [0, 1].

Progress is the larger of the fraction of iterations done and the fraction of the time budget spent
(:func:`progress`), so a run given a wall budget anneals its learning rate to the end of the budget whatever
its speed turns out to be (a schedule fixed in iterations from an early speed estimate misses the budget by
10-15 % either way on a shared machine).
"""

from __future__ import annotations

import math

__all__ = ["learning_rate", "progress"]


def progress(iteration: int, total_iterations: int, elapsed_s: float, time_budget_s: float | None) -> float:
    """Fraction of the run done, in [0, 1]."""
    done = iteration / max(1, total_iterations)
    if time_budget_s:
        done = max(done, elapsed_s / time_budget_s)
    return min(1.0, max(0.0, done))


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
