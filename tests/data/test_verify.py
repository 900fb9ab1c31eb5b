"""Verification: a corpus of broken data sets, each problem reported with the source file and the reason.

Every broken case is built from a clean source by one corruption. Import must refuse it (``ImportRefused``,
whose report lists every problem, naming source files, never the workspace copy), leave nothing in the
workspace, and with ``force=True`` import the clean cases only.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from vesalius.data.dataset import Case, Dataset
from vesalius.data.importers import ImportRefused, import_dataset
from vesalius.data.verify import Problem, VerificationReport, verify_dataset
from vesalius.errors import VesaliusError
from vesalius.io import Geometry, Image, read_image, write_image


@dataclass
class Broken:
    """What a corruption breaks: the source file to be named, words of the reason, and the case."""

    file: Path
    reason: str
    case_id: str
    all_files: tuple[Path, ...] = ()  # when one problem names several files (duplicate case ids)


def _rewrite_label(src: Path, make: SimpleNamespace, case: str, **change) -> Path:
    path = src / "labelsTr" / f"{case}.nii.gz"
    label = read_image(path)
    array = change.pop("array", label.array)
    g = label.geometry
    geometry = Geometry(change.get("spacing", g.spacing), change.get("origin", g.origin), g.direction)
    write_image(Image(array, geometry), path)
    return path


def truncated_gzip(src, make):
    path = src / "imagesTr" / "case_01.nii.gz"
    make.truncate(path, 0.6)
    return Broken(path, "truncated gzip", "case_01")


def truncated_nii(src, make):
    old = src / "imagesTr" / "case_01.nii.gz"
    path = write_image(read_image(old), old.with_name("case_01.nii"))
    old.unlink()
    meta = json.loads((src / "dataset.json").read_text())
    meta["training"][1]["image"] = "./imagesTr/case_01.nii"
    (src / "dataset.json").write_text(json.dumps(meta))
    make.truncate(path, -3)
    return Broken(path, "truncated NIfTI", "case_01")


def nan_voxels(src, make):
    path = src / "imagesTr" / "case_02.nii.gz"
    image = read_image(path)
    array = image.array.copy()
    array[0, 1, 2, 3] = np.nan
    array[0, 4, 4, 4] = np.inf
    write_image(image.with_array(array), path)
    return Broken(path, "2 NaN/Inf voxels", "case_02")


def origin_mismatch(src, make):
    origin = (make.origin[0] + 1.5, *make.origin[1:])
    return Broken(_rewrite_label(src, make, "case_00", origin=origin), "origin", "case_00")


def spacing_mismatch(src, make):
    spacing = (make.spacing[0], make.spacing[1], 3.0)
    return Broken(_rewrite_label(src, make, "case_01", spacing=spacing), "spacing", "case_01")


def shape_mismatch(src, make):
    path = src / "labelsTr" / "case_01.nii.gz"
    write_image(make.label(1, shape=(6, 7, 4)), path)
    return Broken(path, "shape (6, 7, 4) vs (6, 7, 5)", "case_01")


def undeclared_label(src, make):
    label = make.label(2, values=(0, 1, 2, 5))
    path = src / "labelsTr" / "case_02.nii.gz"
    write_image(label, path)
    return Broken(path, "label values [5] not declared", "case_02")


def label_4d(src, make):
    import SimpleITK as sitk

    path = src / "labelsTr" / "case_00.nii.gz"
    array = make.label(0).array[0]
    img = sitk.GetImageFromArray(np.stack([array, array], axis=-1).T, isVector=False)
    sitk.WriteImage(img, str(path))
    return Broken(path, "label is 4D, expected 3D", "case_00")


def missing_label(src, make):
    path = src / "labelsTr" / "case_02.nii.gz"
    path.unlink()
    return Broken(path, "missing label file", "case_02")


def missing_channel(src, make):
    (src / "imagesTr" / "case_001_0001.nii.gz").unlink()
    return Broken(src / "imagesTr" / "case_001_0000.nii.gz", "1 channels, the data set declares 2", "case_001")


def duplicate_class_folder(src, make):
    first = src / "benign" / "lesion0.png"
    second = write_image(make.picture(7), src / "benign" / "lesion0.tif")
    return Broken(first, "duplicate case id 'benign_lesion0'", "benign_lesion0", (first, second))


def duplicate_csv(src, make):
    table = src / "labels.csv"
    table.write_text(table.read_text() + "pics/a.png,melanoma,test\n")
    image = src / "pics" / "a.png"
    return Broken(image, "duplicate case id 'a'", "a", (image, image))


def nan_in_class_picture(src, make):
    path = write_image(Image(np.full((1, 6, 7), np.nan, np.float32), Geometry.default(2)), src / "benign" / "z.tif")
    return Broken(path, "42 NaN/Inf voxels", "benign_z")


LAYOUTS: dict[str, tuple[str, Callable[[Path], Path], list[str]]] = {
    "msd": ("msd", lambda root: root, ["case_00", "case_01", "case_02"]),
    "nnunet": ("nnunet", lambda root: root, ["case_000", "case_001", "case_002"]),
    "classes": (
        "classes",
        lambda root: root,
        ["benign_lesion0", "benign_lesion1", "malignant_lesion0", "malignant_lesion1"],
    ),
    "csv": ("csv", lambda root: root / "labels.csv", ["a", "b", "c"]),
}

ERRORS = [
    ("msd", truncated_gzip),
    ("msd", truncated_nii),
    ("msd", nan_voxels),
    ("msd", origin_mismatch),
    ("msd", spacing_mismatch),
    ("msd", shape_mismatch),
    ("msd", undeclared_label),
    ("msd", label_4d),
    ("msd", missing_label),
    ("nnunet", missing_channel),
    ("classes", duplicate_class_folder),
    ("classes", nan_in_class_picture),
    ("csv", duplicate_csv),
]


def _build(layout: str, tmp_path: Path, make: SimpleNamespace) -> tuple[Path, Path]:
    """(folder holding the source, what to import)."""
    writer, target, _ = LAYOUTS[layout]
    root = tmp_path / f"src_{layout}"
    getattr(make, writer)(root)
    return root, target(root)


def _workspace_is_empty(workspace: Path) -> bool:
    folder = workspace / "datasets"
    return not folder.exists() or not any(folder.iterdir())


@pytest.mark.parametrize(("layout", "corrupt"), ERRORS, ids=[c.__name__ for _, c in ERRORS])
def test_broken_source_is_refused_with_the_source_file_named(tmp_path, make, workspace, layout, corrupt):
    root, source = _build(layout, tmp_path, make)
    broken: Broken = corrupt(root, make)
    before = make.hashes(root)

    with pytest.raises(ImportRefused) as info:
        import_dataset(source, "broken", workspace=workspace)
    refused = info.value
    assert isinstance(refused, VesaliusError)
    errors = refused.report.errors
    assert errors, "refused without errors"
    assert all(p.case_id == broken.case_id for p in errors), [p.line() for p in errors]
    matching = [p for p in errors if broken.reason in p.message]
    assert matching, [p.line() for p in errors]
    for p in matching:
        if broken.all_files:
            assert all(str(f) in p.file for f in broken.all_files), p.line()
            assert p.file.count(str(broken.all_files[0].parent)) == len(broken.all_files)
        else:
            assert p.file == str(broken.file), p.line()
    for p in refused.report.problems:
        assert not p.file.startswith(str(workspace)), f"names the workspace copy: {p.line()}"
    assert str(broken.file) in str(refused)  # the one-line message names the first broken file
    assert _workspace_is_empty(workspace)
    assert make.hashes(root) == before

    # force: the clean cases only
    dataset, report = import_dataset(source, "forced", workspace=workspace, force=True)
    assert make.hashes(root) == before
    expected = [c for c in LAYOUTS[layout][2] if c != broken.case_id]
    assert [c.case_id for c in dataset.cases] == expected
    assert [p.line() for p in report.errors] == [p.line() for p in errors]
    assert any("--force" in n for n in dataset.notes)
    loaded = Dataset.load(workspace / "datasets" / "forced")
    assert [c.case_id for c in loaded.cases] == expected
    assert verify_dataset(loaded).ok


def test_every_problem_is_reported_not_only_the_first(tmp_path, make, workspace, msd_source):
    gz = truncated_gzip(msd_source, make)  # case_01 image
    nan = nan_voxels(msd_source, make)  # case_02 image
    undeclared = undeclared_label(msd_source, make)  # case_02 label: the same case, another file
    origin = origin_mismatch(msd_source, make)  # case_00 label
    with pytest.raises(ImportRefused) as info:
        import_dataset(msd_source, "many", workspace=workspace)
    report = info.value.report
    found = {(p.file, p.case_id) for p in report.errors}
    assert found == {
        (str(gz.file), "case_01"),
        (str(nan.file), "case_02"),
        (str(undeclared.file), "case_02"),
        (str(origin.file), "case_00"),
    }
    assert report.files_with("truncated gzip") == [str(gz.file)]
    assert report.files_with("not declared") == [str(undeclared.file)]
    assert "4 errors" in str(info.value)
    assert _workspace_is_empty(workspace)


WARNINGS = ["empty_label", "stray_file"]


@pytest.mark.parametrize("kind", WARNINGS)
def test_warnings_do_not_stop_the_import(tmp_path, make, workspace, msd_source, kind):
    if kind == "empty_label":
        path = msd_source / "labelsTr" / "case_01.nii.gz"
        write_image(make.label(1, values=(0,)), path)
        reason, case_id = "empty label", "case_01"
    else:
        path = msd_source / "imagesTr" / "._case_00.nii.gz"
        path.write_bytes(b"\x00\x05\x16\x07 AppleDouble")
        reason, case_id = "stray file", None
    dataset, report = import_dataset(msd_source, "warned", workspace=workspace)
    assert report.ok and report.errors == []
    assert [(p.file, p.case_id) for p in report.warnings] == [(str(path), case_id)]
    assert reason in report.warnings[0].message
    assert len(dataset.cases) == 3  # nothing left out
    assert "1 warnings" in report.summary() and "0 errors" in report.summary()


def test_stray_files_in_every_layout(tmp_path, make, workspace):
    pairs = make.pairs(tmp_path / "pairs")
    (pairs / "images" / "._img00.png").write_bytes(b"junk")
    (pairs / "masks" / "readme.txt").write_text("masks drawn by hand")
    write_image(make.mask(9), pairs / "masks" / "orphan.png")
    _, report = import_dataset(pairs, "p", workspace=workspace)
    assert sorted(p.file for p in report.warnings) == sorted(
        str(pairs / f) for f in ("images/._img00.png", "masks/readme.txt", "masks/orphan.png")
    )
    classes = make.classes(tmp_path / "classes")
    (classes / "benign" / ".DS_Store").write_bytes(b"junk")
    _, report = import_dataset(classes, "c", workspace=workspace)
    assert [p.file for p in report.warnings] == [str(classes / "benign" / ".DS_Store")]


def test_pairs_image_without_label(tmp_path, make, workspace):
    pairs = make.pairs(tmp_path / "pairs")
    (pairs / "masks" / "img02.png").unlink()
    with pytest.raises(ImportRefused) as info:
        import_dataset(pairs, "p", workspace=workspace)
    [problem] = info.value.report.errors
    assert (problem.file, problem.case_id, problem.message) == (
        str(pairs / "images" / "img02.png"),
        "img02",
        "missing label file",
    )


# ------------------------------------------------------------------------------------- verify_dataset


def test_verify_clean_imported_set(msd_source, workspace):
    import_dataset(msd_source, "clean", workspace=workspace)
    dataset = Dataset.load(workspace / "datasets" / "clean")
    seen: list[str] = []
    report = verify_dataset(dataset, on_case=seen.append)
    assert report.ok and report.problems == []
    assert sorted(seen) == ["case_00", "case_01", "case_02"]
    assert report.summary() == "clean: 3 cases, 0 errors, 0 warnings"


def test_verify_finds_a_corrupted_workspace_copy(msd_source, workspace, make):
    import_dataset(msd_source, "clean", workspace=workspace)
    dataset = Dataset.load(workspace / "datasets" / "clean")
    copy = dataset.label_path(dataset.case("case_01"))
    make.truncate(copy, 0.5)
    report = verify_dataset(dataset)
    assert not report.ok
    assert [(p.file, p.case_id) for p in report.errors] == [(str(copy), "case_01")]
    assert "truncated gzip" in report.errors[0].message
    assert report.lines()[0].startswith(f"ERROR   [case_01] {copy}: unreadable:")


def test_verify_hand_made_dataset(tmp_path, make):
    root = tmp_path / "hand"
    write_image(make.volume(0), root / "a.nii.gz")
    write_image(make.label(0), root / "a_seg.nii.gz")
    write_image(make.label(1, values=(0, 1, 7)), root / "b_seg.nii.gz")
    write_image(make.volume(1).with_array(make.volume(1).array.astype(np.float32) + 0.5), root / "b.nii.gz")
    write_image(make.volume(1).with_array(make.volume(1).array + 0.25), root / "c_seg.nii.gz")
    dataset = Dataset(
        "hand",
        "segmentation",
        3,
        ["CT"],
        {0: "bg", 1: "a", 2: "b"},
        [
            Case("a", ["a.nii.gz"], "a_seg.nii.gz"),
            Case("b", ["b.nii.gz"], "b_seg.nii.gz"),
            Case("c", ["a.nii.gz"], "c_seg.nii.gz"),
            Case("a", ["b.nii.gz"], "a_seg.nii.gz", source=["/elsewhere/a_again.nii.gz"]),
        ],
        root=root,
    )
    report = verify_dataset(dataset, workers=1)
    by_case = {}
    for p in report.errors:
        by_case.setdefault(p.case_id, []).append(p)
    assert [p.message for p in by_case["b"]] == [
        "label values [7] not declared (declared: [0, 1, 2]); fix the label or add them to dataset.json"
    ]
    assert by_case["b"][0].file == str(root / "b_seg.nii.gz")
    assert [(p.file, p.message) for p in by_case["c"]] == [
        (str(root / "c_seg.nii.gz"), "label holds non-integer values; labels must be whole numbers")
    ]
    [duplicate] = by_case["a"]
    assert duplicate.message == "duplicate case id 'a' (2 cases)"
    assert str(root / "a.nii.gz") in duplicate.file and "/elsewhere/a_again.nii.gz" in duplicate.file


def test_verify_empty_dataset_and_classification_targets(tmp_path, make):
    empty = Dataset("none", "segmentation", 3, ["CT"], {0: "bg"}, [], root=tmp_path)
    report = verify_dataset(empty)
    assert [(p.file, p.message) for p in report.errors] == [(str(tmp_path), "no cases found")]
    write_image(make.picture(0), tmp_path / "x.png")
    cls = Dataset(
        "cls",
        "classification",
        2,
        ["grey"],
        {0: "a", 1: "b"},
        [Case("x", ["x.png"], target=1), Case("y", ["x.png"], target=4)],
        root=tmp_path,
    )
    report = verify_dataset(cls)
    assert [(p.case_id, p.message) for p in report.errors] == [("y", "class 4 not among [0, 1]")]
    wrong_dims = Dataset("d", "classification", 3, ["grey"], {0: "a"}, [Case("x", ["x.png"], target=0)], root=tmp_path)
    assert verify_dataset(wrong_dims).files_with("image is 2D, expected 3D") == [str(tmp_path / "x.png")]


def test_report_helpers():
    report = VerificationReport(
        "r",
        2,
        [
            Problem("warning", "/w.nii.gz", "stray file", None),
            Problem("error", "/b.nii.gz", "broken", "b"),
            Problem("error", "/a.nii.gz", "broken", "a"),
        ],
    )
    assert not report.ok
    assert [p.file for p in report.errors] == ["/b.nii.gz", "/a.nii.gz"]
    assert report.lines() == [
        "ERROR   [a] /a.nii.gz: broken",
        "ERROR   [b] /b.nii.gz: broken",
        "WARNING /w.nii.gz: stray file",
    ]
    assert report.files_with("broken") == ["/b.nii.gz", "/a.nii.gz"]
    assert VerificationReport("r", 0, report.warnings).ok


def test_copied_workspace_needs_no_source(msd_source, workspace, tmp_path):
    # the imported data set is self-contained: verifying it does not touch the source
    import_dataset(msd_source, "moved", workspace=workspace)
    shutil.rmtree(msd_source)
    shutil.move(workspace / "datasets" / "moved", tmp_path / "elsewhere")
    report = verify_dataset(Dataset.load(tmp_path / "elsewhere"))
    assert report.ok and report.problems == []
