"""Cross-validation splits that keep a subject's cases in one fold (``vesalius plan --group-by``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import mask_picture, picture
from vesalius.cli import main
from vesalius.data.splits import grouped_kfold_splits, load_or_create_splits, subjects_of
from vesalius.errors import VesaliusError
from vesalius.io import write_image


def _fold_of(splits: list[dict[str, list[str]]]) -> dict[str, int]:
    return {case: f for f, split in enumerate(splits) for case in split["val"]}


def test_groups_go_largest_first_to_the_emptiest_fold() -> None:
    # by hand: a (3 cases) -> fold 0, b (2) -> fold 1, then c and d (1 each) -> fold 2 and then fold 1 or 2:
    # sizes 3, 2, 1 after c, so d goes to fold 2 ([3, 2, 2]) whichever of c and d the seed puts first
    cases = ["a1", "a2", "a3", "b1", "b2", "c1", "d1"]
    groups = ["a", "a", "a", "b", "b", "c", "d"]
    for seed in range(5):
        splits = grouped_kfold_splits(cases, groups, folds=3, seed=seed)
        assert [s["val"] for s in splits] == [["a1", "a2", "a3"], ["b1", "b2"], ["c1", "d1"]]
        assert [s["train"] for s in splits] == [
            ["b1", "b2", "c1", "d1"],
            ["a1", "a2", "a3", "c1", "d1"],
            ["a1", "a2", "a3", "b1", "b2"],
        ]


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 4), min_size=5, max_size=30),
    folds=st.integers(2, 5),
    seed=st.integers(0, 2**31 - 1),
)
def test_a_subject_never_spans_two_folds(sizes: list[int], folds: int, seed: int) -> None:
    cases = [f"s{g:02d}_{i}" for g, n in enumerate(sizes) for i in range(n)]
    groups = [case.split("_")[0] for case in cases]
    splits = grouped_kfold_splits(cases, groups, folds, seed)
    fold_of = _fold_of(splits)
    assert sorted(fold_of) == sorted(cases)  # every case validated exactly once
    for split in splits:
        assert sorted(split["train"] + split["val"]) == sorted(cases)
    for group in set(groups):
        assert len({fold_of[c] for c, g in zip(cases, groups, strict=True) if g == group}) == 1
    counts = [len(s["val"]) for s in splits]
    assert max(counts) - min(counts) <= max(sizes)
    assert splits == grouped_kfold_splits(list(reversed(cases)), list(reversed(groups)), folds, seed)


def test_fewer_subjects_than_folds_is_refused() -> None:
    with pytest.raises(VesaliusError, match="4 subjects cannot make 5 folds"):
        grouped_kfold_splits(["a", "b", "c", "d", "e"], ["1", "1", "2", "3", "4"])


def test_the_subject_is_the_first_group_or_the_whole_match() -> None:
    ids = ["Image_01L", "Image_01R", "Image_10L"]
    assert subjects_of(ids, r"Image_(\d+)") == ["01", "01", "10"]
    assert subjects_of(ids, r"Image_\d+") == ["Image_01", "Image_01", "Image_10"]
    with pytest.raises(VesaliusError, match="case 'Image_10L' does not match --group-by"):
        subjects_of(ids, r"_0\d")
    with pytest.raises(VesaliusError, match="is not a regular expression"):
        subjects_of(ids, "Image_(")


def _write_eyes(root: Path, children: int) -> Path:
    """A pairs folder of both eyes of ``children`` children: ``child01_L.png``, ``child01_R.png``, ..."""
    for child in range(1, children + 1):
        for k, eye in enumerate("LR"):
            seed = 2 * child + k
            write_image(picture(seed, shape=(32, 32)), root / "images" / f"child{child:02d}_{eye}.png")
            write_image(mask_picture(seed, shape=(32, 32)), root / "masks" / f"child{child:02d}_{eye}.png")
    return root


def test_plan_group_by_saves_the_folds_that_training_then_uses(tmp_path: Path, workspace: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    source = _write_eyes(tmp_path / "eyes", children=6)
    assert main(["import", str(source), "eyes", "-w", str(workspace)]) == 0
    assert main(["plan", "eyes", "-w", str(workspace), "--group-by", r"child(\d+)_"]) == 0
    path = workspace / "preprocessed" / "eyes" / "splits.json"
    assert f"folds keep each subject's cases together: {path}" in capsys.readouterr().out
    splits = json.loads(path.read_text())
    fold_of = _fold_of(splits)
    assert len(fold_of) == 12
    for child in range(1, 7):
        assert fold_of[f"child{child:02d}_L"] == fold_of[f"child{child:02d}_R"]
    cases = sorted(fold_of)
    assert load_or_create_splits(path, cases) == splits  # what training and pruning read

    assert main(["plan", "eyes", "-w", str(workspace), "--group-by", r"child(\d+)_"]) == 0  # the same: kept
    plan_written = (workspace / "preprocessed" / "eyes" / "plan.json").stat().st_mtime_ns
    assert main(["plan", "eyes", "-w", str(workspace), "--group-by", r"child(\d+_[LR])"]) == 2  # another split
    assert "a different split was saved before" in capsys.readouterr().err
    assert json.loads(path.read_text()) == splits
    assert (workspace / "preprocessed" / "eyes" / "plan.json").stat().st_mtime_ns == plan_written
    assert main(["plan", "eyes", "-w", str(workspace), "--group-by", "nobody"]) == 2
    assert "case 'child01_L' does not match --group-by 'nobody'" in capsys.readouterr().err


def test_a_classifier_keeps_its_stratified_folds(classes_source: Path, workspace: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["import", str(classes_source), "lesions", "-w", str(workspace)]) == 0
    assert main(["plan", "lesions", "-w", str(workspace), "--group-by", "lesion(\\d)"]) == 2
    assert "--group-by is an option of segmentation plans" in capsys.readouterr().err
    assert not (workspace / "preprocessed" / "lesions" / "splits.json").exists()
