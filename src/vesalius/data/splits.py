"""Seeded k-fold cross-validation splits, saved with the data so every run and every tool uses the same folds.

The split is the one nnU-Net v2 makes (scikit-learn ``KFold(shuffle=True, random_state=12345)`` over the sorted
case ids), written here with NumPy alone so that Vesalius and nnU-Net validate on the same cases in
side-by-side benchmarks.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vesalius.data.dataset import write_json_atomic
from vesalius.errors import VesaliusError

DEFAULT_SEED = 12345
DEFAULT_FOLDS = 5


def kfold_splits(
    case_ids: list[str], folds: int = DEFAULT_FOLDS, seed: int = DEFAULT_SEED
) -> list[dict[str, list[str]]]:
    """``folds`` splits of the sorted ``case_ids``, each ``{"train": [...], "val": [...]}``."""
    keys = sorted(case_ids)
    if len(keys) < folds:
        raise VesaliusError(f"{len(keys)} cases cannot make {folds} folds", remedy="use fewer folds or more cases")
    order = np.arange(len(keys))
    np.random.RandomState(seed).shuffle(order)
    sizes = np.full(folds, len(keys) // folds)
    sizes[: len(keys) % folds] += 1
    splits, start = [], 0
    for size in sizes:
        val = set(order[start : start + size].tolist())
        start += size
        splits.append(
            {
                "train": [k for i, k in enumerate(keys) if i not in val],
                "val": [k for i, k in enumerate(keys) if i in val],
            }
        )
    return splits


def load_or_create_splits(
    path: Path, case_ids: list[str], folds: int = DEFAULT_FOLDS, seed: int = DEFAULT_SEED
) -> list[dict[str, list[str]]]:
    """The splits saved at ``path``, created (and saved atomically) on first use."""
    if path.exists():
        splits = json.loads(path.read_text())
        known = {k for s in splits for k in s["val"]}
        if known != set(case_ids):
            raise VesaliusError(
                "saved splits do not cover the data set's cases", path, "delete the file to make new splits"
            )
        return splits
    splits = kfold_splits(case_ids, folds, seed)
    write_json_atomic(path, splits)
    return splits
