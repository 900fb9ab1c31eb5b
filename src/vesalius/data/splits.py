"""Seeded k-fold cross-validation splits, saved with the data so every run and every tool uses the same folds.

The split is the one nnU-Net v2 makes (scikit-learn ``KFold(shuffle=True, random_state=12345)`` over the sorted
case ids), written here with NumPy alone so that Vesalius and nnU-Net validate on the same cases in
side-by-side benchmarks.

Classification data sets get stratified folds instead (:func:`stratified_kfold_splits`: every fold holds each class
in the data set's proportion), and keep the source's own split where it has one (:func:`classification_split`):
``"official"`` trains on the source's ``train`` cases and validates on its ``val`` cases. Cases of the source's
``test`` split are never trained or validated on.

Several cases of one subject (both eyes of a child, the scans of one patient) in different folds make
cross-validation optimistic: the network has seen the subject. When the case ids name the subject, ``vesalius plan
--group-by REGEX`` saves a split that keeps each subject's cases in one fold (:func:`grouped_kfold_splits`); nnU-Net
leaves this to a hand-written ``splits_final.json``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Hashable, Sequence
from pathlib import Path

import numpy as np

from vesalius.data.dataset import Dataset
from vesalius.errors import VesaliusError
from vesalius.io.atomic import write_json_atomic
from vesalius.workspace import Workspace

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


def grouped_kfold_splits(
    case_ids: list[str], groups: Sequence[str], folds: int = DEFAULT_FOLDS, seed: int = DEFAULT_SEED
) -> list[dict[str, list[str]]]:
    """``folds`` splits ``{"train": [...], "val": [...]}`` in which the cases of a group (``groups[i]`` is the group
    of ``case_ids[i]``) are all in the same fold.

    The groups go to the folds largest first (ties in an order shuffled with ``seed``), each to the fold that holds
    the fewest cases so far (the lowest-numbered on a tie): the fold sizes then differ by at most the largest group.
    """
    if len(case_ids) != len(groups):
        raise ValueError(f"{len(case_ids)} case ids but {len(groups)} groups")
    members: dict[str, list[str]] = {}
    for case_id, group in sorted(zip(case_ids, groups, strict=True)):
        members.setdefault(group, []).append(case_id)
    names = sorted(members)
    if len(names) < folds:
        raise VesaliusError(
            f"{len(names)} subjects cannot make {folds} folds", remedy="use fewer folds or a finer --group-by pattern"
        )
    rank = np.random.RandomState(seed).permutation(len(names))
    sizes = [0] * folds
    fold_of: dict[str, int] = {}
    for i in sorted(range(len(names)), key=lambda i: (-len(members[names[i]]), rank[i])):
        fold = sizes.index(min(sizes))
        sizes[fold] += len(members[names[i]])
        fold_of.update(dict.fromkeys(members[names[i]], fold))
    keys = sorted(case_ids)
    return [
        {"train": [k for k in keys if fold_of[k] != f], "val": [k for k in keys if fold_of[k] == f]}
        for f in range(folds)
    ]


def subjects_of(case_ids: Sequence[str], pattern: str) -> list[str]:
    """The subject of each case id: the first group of regular expression ``pattern`` where it has one, else the
    whole match (``re.search``); e.g. ``'Image_(\\d+)'`` gives ``Image_01L`` and ``Image_01R`` the subject ``01``."""
    try:
        regex = re.compile(pattern)
    except re.error as e:
        raise VesaliusError(
            f"--group-by {pattern!r} is not a regular expression ({e})", remedy="fix the pattern"
        ) from None
    subjects = []
    for case_id in case_ids:
        match = regex.search(case_id)
        if match is None:
            raise VesaliusError(
                f"case '{case_id}' does not match --group-by {pattern!r}",
                remedy="give a pattern that every case id matches, its subject in the first group",
            )
        subjects.append((match.group(1) if regex.groups else None) or match.group(0))  # an unmatched group: all
    return subjects


def save_subject_splits(
    name: str, pattern: str, workspace: str | Path | Workspace | None = None, folds: int = DEFAULT_FOLDS
) -> Path:
    """Save the segmentation data set ``name``'s split with each subject's cases in one fold (subjects from the case
    ids by ``pattern``, :func:`subjects_of`); returns the split's path.

    A split saved before is kept when it is the same, and refused when it differs: runs trained on its folds would
    no longer form a cross-validation with the new ones.
    """
    ws = Workspace.resolve(workspace)
    case_ids = [c.case_id for c in Dataset.load(ws.dataset_dir(name)).cases]
    subjects = subjects_of(case_ids, pattern)
    path = ws.splits_path(name)
    if load_or_create_splits(path, case_ids, folds, groups=subjects) != grouped_kfold_splits(case_ids, subjects, folds):
        raise VesaliusError(
            "a different split was saved before (runs may have trained on its folds)",
            path,
            "delete the file to make the grouped split, then train the folds again",
        )
    return path


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
    groups: Sequence[str] | None = None,
) -> list[dict[str, list[str]]]:
    """The splits saved at ``path``, created (and saved atomically) on first use; stratified when ``strata``
    (one per case) are given, grouped by subject when ``groups`` (one per case) are."""
    if path.exists():
        splits = json.loads(path.read_text())
        known = {k for s in splits for k in s["val"]}
        if known != set(case_ids):
            raise VesaliusError(
                "saved splits do not cover the data set's cases", path, "delete the file to make new splits"
            )
        return splits
    if groups is not None:
        splits = grouped_kfold_splits(case_ids, groups, folds, seed)
    elif strata is not None:
        splits = stratified_kfold_splits(case_ids, strata, folds, seed)
    else:
        splits = kfold_splits(case_ids, folds, seed)
    write_json_atomic(path, splits)
    return splits
