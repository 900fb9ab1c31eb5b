"""Dice + cross-entropy whose Dice pools its statistics over the batch, and over the ranks of a distributed run.

The loss is MONAI's ``DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)`` (its
numbers, checked against it in the tests): the soft Dice of each foreground class from the intersections and sums of
the whole batch (``smooth`` added to numerator and denominator), averaged over the classes, plus the mean
cross-entropy over all voxels. It is written here because MONAI's computes the pooled statistics inside one call,
where a distributed run needs them summed over the ranks first (``pool``, e.g.
:meth:`vesalius.training.distributed.Distributed.sum_with_gradient`), so that every rank's loss is the global
batch's.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DiceCELoss"]


class DiceCELoss(nn.Module):
    """Soft Dice of the foreground classes pooled over the batch, plus cross-entropy.

    Args:
        pool: sums the statistics ``(2, K - 1)`` (intersections, sums) over the ranks; ``None`` in one process.
        smooth: added to the Dice's numerator and denominator (MONAI's ``smooth_nr`` and ``smooth_dr``).
    """

    def __init__(self, pool: Callable[[torch.Tensor], torch.Tensor] | None = None, smooth: float = 1e-5) -> None:
        super().__init__()
        self.pool = pool
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss of ``logits`` ``(B, K, *spatial)`` against the labels ``target`` ``(B, 1, *spatial)``."""
        labels = target[:, 0].long()
        probabilities = torch.softmax(logits, 1)
        one_hot = F.one_hot(labels, logits.shape[1]).movedim(-1, 1).to(probabilities.dtype)
        dims = [0, *range(2, logits.ndim)]
        stats = torch.stack([(probabilities * one_hot).sum(dims), probabilities.sum(dims) + one_hot.sum(dims)])[:, 1:]
        if self.pool is not None:
            stats = self.pool(stats)
        dice = 1.0 - (2.0 * stats[0] + self.smooth) / (stats[1] + self.smooth)
        return dice.mean() + F.cross_entropy(logits, labels)
