"""Bad data set descriptions and sources: each is one line naming the file (and the key or row), the sources stay
unchanged, and nothing is written outside the workspace."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from vesalius.cli import main
from vesalius.data.dataset import Dataset
from vesalius.data.importers import STAGING_DIR, import_dataset
from vesalius.errors import VesaliusError
from vesalius.io import write_image
from vesalius.workspace import Workspace


def _cli_refuses(capsys, source: Path, workspace: Path, *words: str, extra: tuple[str, ...] = ()) -> str:
    """``vesalius import`` exits 2 with one ``error:`` line naming every word; the source is unchanged."""
    from tests.conftest import file_hashes

    before = file_hashes(source)
    capsys.readouterr()
    assert main(["import", str(source), "bad", "-w", str(workspace), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    for word in words:
        assert word in err, (word, err)
    assert file_hashes(source) == before
    assert Workspace(workspace).dataset_names() == []
    return err


# --------------------------------------------------------------------------- Vesalius dataset.json


@pytest.fixture
def imported(msd_source, workspace) -> Path:
    import_dataset(msd_source, "tiny", workspace=workspace)
    return workspace / "datasets" / "tiny"


def _edit(folder: Path, change) -> Path:  # type: ignore[no-untyped-def]
    path = folder / "dataset.json"
    data = json.loads(path.read_text())
    data = change(data)
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda d: [d], "JSON array"),
        (lambda d: d | {"labels": ["background", "liver"]}, "labels: expected an object"),
        (lambda d: d | {"labels": {"one": "liver"}}, "labels.one: expected an integer key"),
        (lambda d: d | {"cases": "all"}, "cases: expected a list"),
        (lambda d: d | {"spatial_dims": "3"}, "spatial_dims: expected an integer"),
        (lambda d: d | {"task": "detection"}, "task: expected one of"),
        (lambda d: d | {"extra": 1}, "extra: unknown key"),
        (lambda d: {k: v for k, v in d.items() if k != "channels"}, "channels: missing"),
        (lambda d: d | {"cases": [{k: v for k, v in d["cases"][0].items() if k != "images"}]}, "cases\\[0\\].images"),
        (lambda d: d | {"cases": [d["cases"][0] | {"label": 5}]}, "cases\\[0\\].label"),
        (lambda d: d | {"cases": [d["cases"][0] | {"images": []}]}, "cases\\[0\\].images: a case needs"),
        (lambda d: d | {"cases": [d["cases"][0] | {"target": "x"}]}, "cases\\[0\\].target"),
        (lambda d: d | {"cases": [d["cases"][0] | {"case_id": "../../x"}]}, "invalid case id"),
        (lambda d: d | {"cases": [d["cases"][0] | {"case_id": "sub/x"}]}, "invalid case id"),
        (lambda d: d | {"cases": [1]}, "cases\\[0\\]"),
    ],
)
def test_dataset_json_structure_errors_name_file_and_key(imported, change, match):
    path = _edit(imported, change)
    with pytest.raises(VesaliusError, match=match) as info:
        Dataset.load(imported)
    assert info.value.file == str(path)
    assert info.value.remedy
    assert "\n" not in info.value.one_line()


def test_verify_command_on_a_broken_dataset_json(imported, workspace, capsys):
    _edit(imported, lambda d: d | {"labels": []})
    assert main(["verify", "tiny", "-w", str(workspace)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "labels: expected an object" in err and "dataset.json" in err


def test_from_json_without_a_file_names_dataset_json():
    with pytest.raises(VesaliusError, match=r"dataset\.json.*name: missing"):
        Dataset.from_json({})


# --------------------------------------------------------------------------- MSD / nnU-Net source


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda d: [d], ("dataset.json", "JSON array")),
        (lambda d: d | {"labels": ["background", "liver"]}, ("dataset.json", "'labels'")),
        (lambda d: d | {"training": "imagesTr"}, ("dataset.json", "'training'")),
        (lambda d: d | {"training": [{"image": d["training"][0]["image"]}]}, ("'training[0]' has no 'label'",)),
        (lambda d: d | {"training": [{"image": 5, "label": "x"}]}, ("training[0].image",)),
        (lambda d: d | {"modality": ["CT"]}, ("'modality'",)),
        (lambda d: d | {"training": [{"image": "../x.nii.gz", "label": "y"}]}, ("training[0].image", "leaves")),
        (lambda d: d | {"training": [{"image": "/etc/x.nii.gz", "label": "y"}]}, ("training[0].image", "leaves")),
        (lambda d: d | {"training": [d["training"][0] | {"label": "../../l.nii.gz"}]}, ("training[0].label",)),
    ],
)
def test_msd_dataset_json_errors(msd_source, workspace, capsys, change, words):
    path = msd_source / "dataset.json"
    path.write_text(json.dumps(change(json.loads(path.read_text()))))
    _cli_refuses(capsys, msd_source, workspace, str(path), *words)


def test_msd_case_id_with_odd_characters_is_refused(msd_source, workspace, capsys):
    os.rename(msd_source / "imagesTr" / "case_00.nii.gz", msd_source / "imagesTr" / "case 00!.nii.gz")
    path = msd_source / "dataset.json"
    meta = json.loads(path.read_text())
    meta["training"][0]["image"] = "./imagesTr/case 00!.nii.gz"
    path.write_text(json.dumps(meta))
    _cli_refuses(capsys, msd_source, workspace, "invalid case id 'case 00!'", "training[0]")


# --------------------------------------------------------------------------------- CSV containment


def _csv(root: Path, make, rows: list[str]) -> Path:
    write_image(make.picture(0, channels=3), root / "pics" / "a.png")
    write_image(make.picture(1, channels=3), root / "pics" / "b.png")
    write_image(make.picture(2, channels=3), root / "outside.png")
    folder = root / "table"
    (folder / "pics").mkdir(parents=True)
    for name in ("a.png", "b.png"):
        (folder / "pics" / name).write_bytes((root / "pics" / name).read_bytes())
    path = folder / "labels.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize(
    ("bad_row", "words"),
    [
        ("../../x,pics/b.png,melanoma", ("invalid case id '../../x'", "row 3")),
        ("sub/dir/x,pics/b.png,melanoma", ("invalid case id 'sub/dir/x'", "row 3")),
        ("x" * 65 + ",pics/b.png,melanoma", ("invalid case id", "row 3")),
        ("b,../outside.png,melanoma", ("row 3", "leaves")),
        ("b,/etc/passwd.png,melanoma", ("row 3", "leaves")),
        ("b", ("row 3", "no value in column")),
    ],
)
def test_csv_rows_are_contained(tmp_path, make, workspace, capsys, bad_row, words):
    path = _csv(tmp_path, make, ["case_id,image,label", "a,pics/a.png,nevus", bad_row])
    _cli_refuses(capsys, path.parent, workspace, str(path), *words, extra=("--layout", "csv"))
    # the CLI was given the folder: give the CSV itself too
    assert main(["import", str(path), "bad", "-w", str(workspace)]) == 2
    assert not (tmp_path / "x").exists() and not (workspace / "x").exists()
    assert not list(tmp_path.rglob("x_0000.nii.gz"))


def test_csv_that_is_not_text(tmp_path, workspace, capsys):
    path = tmp_path / "src" / "table.csv"
    path.parent.mkdir()
    path.write_bytes(b"\xff\xfe\x00binary\x00\x00garbage")
    _cli_refuses(capsys, path, workspace, str(path))


# ------------------------------------------------------------------------------------------- npz


def test_npz_with_pickled_objects_is_refused(tmp_path, workspace, capsys):
    path = tmp_path / "evil.npz"
    images = np.empty(2, dtype=object)
    images[:] = [np.zeros((4, 4)), np.zeros((4, 4))]
    np.savez(path, train_images=images, train_labels=np.array([0, 1]))
    err = _cli_refuses(capsys, path, workspace, str(path), "pickled")
    assert "never loaded" in err


def test_npz_split_name_cannot_leave_the_workspace(tmp_path, workspace, capsys):
    path = tmp_path / "odd.npz"
    np.savez(path, **{"../../up_images": np.zeros((2, 4, 4), np.uint8), "../../up_labels": np.array([0, 1])})
    _cli_refuses(capsys, path, workspace, str(path), "invalid case id")


# ------------------------------------------------------------------------------------- killed import


def test_staging_left_by_a_killed_import_is_cleaned_and_never_listed(msd_source, workspace):
    datasets = workspace / "datasets"
    dead = datasets / STAGING_DIR / "old-999999999-abc"  # no such process
    dead.mkdir(parents=True)
    (dead / "dataset.json").write_text("{}")
    legacy = datasets / ".import-old-xyz"
    legacy.mkdir()
    alive = datasets / STAGING_DIR / f"busy-{os.getppid()}-abc"  # another import still running
    alive.mkdir()
    assert Workspace(workspace).dataset_names() == []
    import_dataset(msd_source, "tiny", workspace=workspace)
    assert not dead.exists() and not legacy.exists()
    assert alive.exists()
    assert Workspace(workspace).dataset_names() == ["tiny"]


def test_failed_import_leaves_no_staging(msd_source, workspace):
    (msd_source / "dataset.json").write_text("[]")
    with pytest.raises(VesaliusError):
        import_dataset(msd_source, "tiny", workspace=workspace)
    assert list((workspace / "datasets").iterdir()) == []


# ------------------------------------------------------------------------------------- NaN voxels


def test_nan_voxels_refuse_the_import_naming_the_file(msd_source, workspace, capsys, make):
    image = make.volume(0)
    image.array[0, 1, 2, 3] = np.nan
    image.array[0, 2, 2, 3] = np.inf
    target = msd_source / "imagesTr" / "case_01.nii.gz"
    write_image(image, target)
    err = _cli_refuses(capsys, msd_source, workspace, str(target), "NaN/Inf")
    assert "force" in err
