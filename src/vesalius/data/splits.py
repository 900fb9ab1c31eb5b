"""Seeded k-fold cross-validation splits, saved with the data so every run and every tool uses the same folds.

The split is the one nnU-Net v2 makes (scikit-learn ``KFold(shuffle=True, random_state=12345)`` over the sorted
case ids), written here with NumPy alone so that Vesalius and nnU-Net validate on the same cases in
side-by-side benchmarks.

Classification data sets get stratified folds instead (:func:`stratified_kfold_splits`: every fold holds each class
in the data set's proportion), and keep the source's own split where it has one (:func:`classification_split`):
``"official"`` trains on the source's ``train`` cases and validates on its ``val`` cases. Cases of the source's
``test`` split are never trained or validated on.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Sequence
from pathlib import Path

import numpy as np

from vesalius.data.dataset import Dataset
from vesalius.errors import VesaliusError
from vesalius.io.atomic import write_json_atomic

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


def stratified_kfold_splits(
    case_ids: list[str], strata: Sequence[Hashable], folds: int = DEFAULT_FOLDS, seed: int = DEFAULT_SEED
) -> list[dict[str, list[str]]]:
    """``folds`` splits ``{"train": [...], "val": [...]}`` in which every stratum (class) is spread evenly.

    ``strata[i]`` is the stratum of ``case_ids[i]``. The cases of each stratum (in case-id order) are shuffled with
    ``seed`` and dealt to the folds in turn, continuing where the previous stratum stopped, so fold sizes differ by
    at most one and each fold's class counts by at most one from the proportional share.
    """
    if len(case_ids) != len(strata):
        raise ValueError(f"{len(case_ids)} case ids but {len(strata)} strata")
    if len(case_ids) < folds:
        raise VesaliusError(f"{len(case_ids)} cases cannot make {folds} folds", remedy="use fewer folds or more cases")
    rng = np.random.RandomState(seed)
    groups: dict[str, list[str]] = {}
    for case_id, stratum in sorted(zip(case_ids, strata, strict=True)):
        groups.setdefault(repr(stratum), []).append(case_id)
    fold_of: dict[str, int] = {}
    position = 0
    for key in sorted(groups):
        members = groups[key]
        for i in rng.permutation(len(members)):
            fold_of[members[i]] = position % folds
            position += 1
    keys = sorted(case_ids)
    return [
        {"train": [k for k in keys if fold_of[k] != f], "val": [k for k in keys if fold_of[k] == f]}
        for f in range(folds)
    ]


def resolve_classification_fold(fold: int | str, dataset: Dataset) -> int | str:
    """``"auto"``: ``"official"`` where the cases carry the source's train and val split, else fold 0."""
    if fold != "auto":
        return fold
    splits = {c.split for c in dataset.cases}
    return "official" if {"train", "val"} <= splits else 0


def classification_split(
    dataset: Dataset, fold: int | str, path: Path, folds: int = DEFAULT_FOLDS, seed: int = DEFAULT_SEED
) -> dict[str, list[str]]:
    """The training and validation cases of a classification run.

    Args:
        dataset: the data set (cases with ``target`` and optionally the source's ``split``).
        fold: ``"official"`` (the source's train/val split), a fold number of a stratified k-fold split of the
            non-test cases (saved at ``path`` on first use), or ``"all"`` (every non-test case, no validation).
        path: where the k-fold split is kept (``preprocessed/NAME/classification_splits.json``).

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}`` case ids; ``test`` are the source's test cases.
    """
    test = sorted(c.case_id for c in dataset.cases if c.split == "test")
    pool = [c for c in dataset.cases if c.split != "test"]
    if fold == "official":
        train = sorted(c.case_id for c in pool if c.split == "train")
        val = sorted(c.case_id for c in pool if c.split == "val")
        if not train or not val:
            raise VesaliusError(
                f"data set '{dataset.name}' has no official train/val split", remedy="use --fold 0-4 or all"
            )
        return {"train": train, "val": val, "test": test}
    if fold == "all":
        return {"train": sorted(c.case_id for c in pool), "val": [], "test": test}
    strata = [
        tuple(c.target) if isinstance(c.target, list) else c.target for c in pool
    ]  # multi-label: the combination of flags
    splits = load_or_create_splits(path, [c.case_id for c in pool], folds, seed, strata=strata)
    if not isinstance(fold, int) or not 0 <= fold < len(splits):
        raise VesaliusError(f"fold {fold} does not exist", remedy=f"use 0-{len(splits) - 1}, 'official' or 'all'")
    return {**splits[fold], "test": test}


def load_or_create_splits(
    path: Path,
    case_ids: list[str],
    folds: int = DEFAULT_FOLDS,
    seed: int = DEFAULT_SEED,
    strata: Sequence[Hashable] | None = None,
) -> list[dict[str, list[str]]]:
    """The splits saved at ``path``, created (and saved atomically) on first use; stratified when ``strata``
    (one per case) are given."""
    if path.exists():
        splits = json.loads(path.read_text())
        known = {k for s in splits for k in s["val"]}
        if known != set(case_ids):
            raise VesaliusError(
                "saved splits do not cover the data set's cases", path, "delete the file to make new splits"
            )
        return splits
    if strata is None:
        splits = kfold_splits(case_ids, folds, seed)
    else:
        splits = stratified_kfold_splits(case_ids, strata, folds, seed)
    write_json_atomic(path, splits)
    return splits
