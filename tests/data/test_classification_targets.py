"""Classification data: stratified folds, multi-label and ordinal targets from npz files, the split of a fold."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import synthetic_npz, write_npz
from vesalius.data.dataset import Dataset
from vesalius.data.importers import import_dataset
from vesalius.data.splits import classification_split, stratified_kfold_splits
from vesalius.errors import VesaliusError

# ------------------------------------------------------------------------------------------------ data and plan


def test_stratified_folds_keep_class_proportions():
    ids = [f"c{i:03d}" for i in range(50)]
    strata = [0] * 40 + [1] * 10
    splits = stratified_kfold_splits(ids, strata, folds=5, seed=3)
    assert splits == stratified_kfold_splits(ids, strata, folds=5, seed=3)
    assert sorted(k for s in splits for k in s["val"]) == ids
    for s in splits:
        val = s["val"]
        assert len(val) == 10 and sum(strata[ids.index(k)] for k in val) == 2
        assert set(val).isdisjoint(s["train"])


def test_npz_multilabel_and_ordinal_targets(tmp_path, workspace):
    rng = np.random.default_rng(0)
    flags = np.array([[1, 0, 1], [0, 0, 0], [0, 1, 0], [1, 1, 0]])
    source = write_npz(tmp_path / "chestmnist.npz", {"train": (rng.integers(0, 256, (4, 5, 6), dtype=np.uint8), flags)})
    dataset, report = import_dataset(source, "chest", workspace=workspace)
    assert report.ok and dataset.target_type == "multilabel" and dataset.labels == {0: "0", 1: "1", 2: "2"}
    assert [c.target for c in dataset.cases] == flags.tolist()
    assert Dataset.load(workspace / "datasets" / "chest").cases[0].target == [1, 0, 1]

    grades = np.array([0, 1, 2, 3, 4, 2])
    images = rng.integers(0, 256, (6, 5, 6, 3), dtype=np.uint8)
    retina = write_npz(tmp_path / "retinamnist.npz", {"train": (images, grades), "val": (images[:2], grades[:2])})
    ordinal, _ = import_dataset(retina, "retina", workspace=workspace)
    assert ordinal.target_type == "ordinal" and len(ordinal.labels) == 5
    multiclass, _ = import_dataset(retina, "retina_mc", workspace=workspace, target_type="multiclass")
    assert multiclass.target_type == "multiclass"
    with pytest.raises(VesaliusError, match="does not fit"):
        import_dataset(source, "chest2", workspace=workspace, target_type="binary")


def test_classification_split_official_kfold_and_all(tmp_path, workspace):
    source = synthetic_npz(tmp_path / "s.npz", {"train": 10, "val": 4, "test": 2})
    dataset, _ = import_dataset(source, "s", workspace=workspace)
    path = tmp_path / "splits.json"
    official = classification_split(dataset, "official", path)
    assert len(official["train"]) == 10 and len(official["val"]) == 4 and len(official["test"]) == 2
    fold = classification_split(dataset, 0, path)
    assert not set(fold["val"]) & set(official["test"]) and len(fold["train"]) + len(fold["val"]) == 14
    assert path.is_file() and classification_split(dataset, 0, path) == fold
    assert classification_split(dataset, "all", path)["val"] == []
