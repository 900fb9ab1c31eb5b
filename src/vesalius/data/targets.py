"""Classification targets as a network's outputs expect them.

A classification data set stores each case's target as a class value (binary, multi-class, ordinal) or as one
0/1 flag per label (multi-label). Networks have one output per class in the order of the sorted class values, so
output ``k`` is class ``class_values(dataset)[k]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vesalius.data.dataset import Dataset

__all__ = ["class_values", "encode_targets"]


def class_values(dataset: Dataset) -> list[int]:
    """The data set's class (or label) values in output order."""
    return sorted(dataset.labels)


def encode_targets(dataset: Dataset, case_ids: Sequence[str]) -> np.ndarray:
    """Targets of ``case_ids``: int64 ``(N,)`` output indices, or for multi-label data float32 ``(N, L)`` flags."""
    if dataset.target_type == "multilabel":
        return np.asarray([dataset.case(c).target for c in case_ids], dtype=np.float32).reshape(len(case_ids), -1)
    index = {v: k for k, v in enumerate(class_values(dataset))}
    return np.asarray([index[dataset.case(c).target] for c in case_ids], dtype=np.int64)
