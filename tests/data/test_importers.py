"""Importers: every source layout lands in the workspace as nnU-Net v2 files, sources untouched."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from vesalius.data.dataset import Dataset
from vesalius.data.importers import detect_layout, import_dataset
from vesalius.data.verify import verify_dataset
from vesalius.errors import VesaliusError
from vesalius.io import Geometry, read_image, write_image


def _assert_same_image(imported: Path, source: Path, channel: int | None = None, atol: float = 0.0) -> None:
    """The imported file holds the source's voxels (one channel of it) on the source's grid."""
    got, want = read_image(imported), read_image(source)
    want_array = want.array if channel is None else want.array[channel : channel + 1]
    np.testing.assert_array_equal(got.array, want_array)
    assert got.geometry.is_close(want.geometry, atol=atol) if atol else got.geometry == want.geometry


def _check_stored(dataset: Dataset, workspace: Path, name: str) -> Dataset:
    """The data set is in the workspace, its dataset.json says the same, and it verifies cleanly."""
    assert dataset.root == workspace / "datasets" / name
    loaded = Dataset.load(dataset.root)
    assert loaded.cases == dataset.cases
    assert (loaded.task, loaded.channels, loaded.labels) == (dataset.task, dataset.channels, dataset.labels)
    for case in loaded.cases:
        assert all(p.is_file() for p in loaded.image_paths(case))
        assert all(p.startswith("imagesTr/") and p.endswith(".nii.gz") for p in case.images)
    assert verify_dataset(loaded).ok
    assert not [p for p in (workspace / "datasets").iterdir() if p.name.startswith(".import-")]
    return loaded


# ------------------------------------------------------------------------------------- segmentation layouts


def test_msd_layout(msd_source, workspace, unchanged):
    untouched = unchanged(msd_source)
    dataset, report = import_dataset(msd_source, "tiny", workspace=workspace)
    untouched()
    assert report.ok and report.problems == []
    assert detect_layout(msd_source) == "msd" and dataset.source["layout"] == "msd"
    assert (dataset.task, dataset.spatial_dims) == ("segmentation", 3)
    assert dataset.channels == ["CT"] and dataset.modalities == ["CT"]
    assert dataset.labels == {0: "background", 1: "liver", 2: "tumour"}
    assert [c.case_id for c in dataset.cases] == ["case_00", "case_01", "case_02"]
    _check_stored(dataset, workspace, "tiny")
    for case in dataset.cases:
        assert case.images == [f"imagesTr/{case.case_id}_0000.nii.gz"]
        assert case.label == f"labelsTr/{case.case_id}.nii.gz"
        src_image = msd_source / "imagesTr" / f"{case.case_id}.nii.gz"
        src_label = msd_source / "labelsTr" / f"{case.case_id}.nii.gz"
        assert case.source == [str(src_image), str(src_label)]
        _assert_same_image(dataset.image_paths(case)[0], src_image)
        _assert_same_image(dataset.label_path(case), src_label)


def test_msd_layout_with_uncompressed_and_mha_sources(msd_source, workspace, make):
    # entries in other formats are converted to NIfTI with the same geometry and values
    meta = json.loads((msd_source / "dataset.json").read_text())
    for i, suffix in ((0, ".nii"), (1, ".mha")):
        old = msd_source / "imagesTr" / f"case_{i:02d}.nii.gz"
        new = old.with_name(f"case_{i:02d}{suffix}")
        write_image(read_image(old), new)
        old.unlink()
        meta["training"][i]["image"] = f"./imagesTr/{new.name}"
    (msd_source / "dataset.json").write_text(json.dumps(meta))
    dataset, report = import_dataset(msd_source, "mixed", workspace=workspace)
    assert report.ok
    _assert_same_image(dataset.image_paths(dataset.case("case_00"))[0], msd_source / "imagesTr/case_00.nii", atol=1e-6)
    _assert_same_image(dataset.image_paths(dataset.case("case_01"))[0], msd_source / "imagesTr/case_01.mha", atol=1e-5)
    assert read_image(dataset.image_paths(dataset.case("case_01"))[0]).geometry.is_close(make.geometry, 1e-5)


def test_nnunet_v2_layout(nnunet_source, workspace, unchanged):
    untouched = unchanged(nnunet_source)
    dataset, report = import_dataset(nnunet_source, "nnu", workspace=workspace)
    untouched()
    assert report.ok and report.problems == []
    assert dataset.channels == ["T1", "T2"]
    assert dataset.labels == {0: "background", 1: "tumour"}
    assert [c.case_id for c in dataset.cases] == ["case_000", "case_001", "case_002"]
    _check_stored(dataset, workspace, "nnu")
    for case in dataset.cases:
        assert case.images == [f"imagesTr/{case.case_id}_0000.nii.gz", f"imagesTr/{case.case_id}_0001.nii.gz"]
        for k, path in enumerate(dataset.image_paths(case)):
            _assert_same_image(path, nnunet_source / "imagesTr" / f"{case.case_id}_{k:04d}.nii.gz")
        _assert_same_image(dataset.label_path(case), nnunet_source / "labelsTr" / f"{case.case_id}.nii.gz")


def test_msd_4d_images_are_split_into_channel_files(msd4d_source, workspace, unchanged):
    untouched = unchanged(msd4d_source)
    dataset, report = import_dataset(msd4d_source, "brain", workspace=workspace)
    untouched()
    assert report.ok, report.lines()
    assert dataset.channels == ["FLAIR", "T1w"]
    assert dataset.spatial_dims == 3
    _check_stored(dataset, workspace, "brain")
    for case in dataset.cases:
        source = read_image(msd4d_source / "imagesTr" / f"{case.case_id}.nii.gz")
        assert source.array.shape == (1, 6, 7, 5, 2)
        g = source.geometry
        expected_geometry = Geometry(g.spacing[:3], g.origin[:3], tuple(g.direction_matrix[:3, :3].ravel()))
        assert len(case.images) == 2
        for c, path in enumerate(dataset.image_paths(case)):
            channel = read_image(path)
            np.testing.assert_array_equal(channel.array[0], source.array[0, ..., c])
            assert channel.geometry.is_close(expected_geometry, atol=1e-5)
        label = read_image(dataset.label_path(case))
        assert label.geometry.is_close(expected_geometry, atol=1e-5)


def test_pairs_with_0_255_masks_and_suffixed_label(pairs_source, workspace, unchanged, make):
    untouched = unchanged(pairs_source)
    dataset, report = import_dataset(pairs_source, "pairs", workspace=workspace)
    untouched()
    assert report.ok and report.problems == []
    assert detect_layout(pairs_source) == "pairs"
    assert (dataset.task, dataset.spatial_dims, dataset.channels) == ("segmentation", 2, ["grey"])
    assert dataset.labels == {0: "background", 1: "foreground"}
    assert any("binarised" in n and "128" in n for n in dataset.notes)
    assert [c.case_id for c in dataset.cases] == ["img00", "img01", "img02"]
    assert dataset.case("img01").source[-1] == str(pairs_source / "masks" / "img01_manual.png")
    _check_stored(dataset, workspace, "pairs")
    for i, case in enumerate(dataset.cases):
        image = read_image(dataset.image_paths(case)[0])
        np.testing.assert_array_equal(image.array, make.picture(i).array)
        assert image.geometry == Geometry.default(2)
        label = read_image(dataset.label_path(case))
        np.testing.assert_array_equal(label.array, (make.mask(i).array == 255).astype(np.uint8))
        assert set(np.unique(label.array).tolist()) == {0, 1}


def test_pairs_threshold_none_keeps_label_values(pairs_source, workspace):
    dataset, report = import_dataset(pairs_source, "raw", workspace=workspace, label_threshold=None)
    assert report.ok
    assert dataset.labels == {0: "background", 255: "label_255"}
    assert not dataset.notes
    label = read_image(dataset.label_path(dataset.cases[0]))
    assert set(np.unique(label.array).tolist()) == {0, 255}


def test_pairs_inverted_labels_make_the_dark_part_foreground(pairs_source, workspace, make, monkeypatch):
    dataset, report = import_dataset(pairs_source, "inv", workspace=workspace, invert_labels=True)
    assert report.ok and any("binarised as value < 128" in n for n in dataset.notes)
    label = read_image(dataset.label_path(dataset.case("img00")))
    np.testing.assert_array_equal(label.array, (make.mask(0).array == 0).astype(np.uint8))
    with pytest.raises(VesaliusError, match="--invert-labels needs labels that are binarised"):
        import_dataset(pairs_source, "inv2", workspace=workspace, invert_labels=True, label_threshold=None)
    monkeypatch.chdir(pairs_source.parent)  # --labels also takes a path as given, relative to where one stands
    relative = str((pairs_source / "masks").relative_to(pairs_source.parent))
    other, _ = import_dataset(pairs_source, "rel", workspace=workspace, labels_dir=relative)
    assert len(other.cases) == 3


def test_pairs_with_several_label_folders_needs_labels_dir(pairs_source, workspace, make, unchanged):
    shutil.copytree(pairs_source / "masks", pairs_source / "labels")
    for p in (pairs_source / "labels").iterdir():  # the "labels" folder holds other masks: inverted ones
        mask = read_image(p)
        write_image(mask.with_array((255 - mask.array).astype(np.uint8)), p)
    untouched = unchanged(pairs_source)
    with pytest.raises(VesaliusError, match="which folder holds the labels") as info:
        import_dataset(pairs_source, "pairs", workspace=workspace)
    assert "labels" in str(info.value) and "masks" in str(info.value)
    assert info.value.file == str(pairs_source)
    assert not (workspace / "datasets" / "pairs").exists()
    dataset, _ = import_dataset(pairs_source, "pairs", workspace=workspace, labels_dir="labels")
    untouched()
    label = read_image(dataset.label_path(dataset.case("img00")))
    np.testing.assert_array_equal(label.array, (make.mask(0).array == 0).astype(np.uint8))
    other, _ = import_dataset(pairs_source, "pairs2", workspace=workspace, labels_dir=str(pairs_source / "masks"))
    label = read_image(other.label_path(other.case("img00")))
    np.testing.assert_array_equal(label.array, (make.mask(0).array == 255).astype(np.uint8))
    with pytest.raises(VesaliusError, match="label folder not found"):
        import_dataset(pairs_source, "pairs3", workspace=workspace, labels_dir="nope")


# ------------------------------------------------------------------------------------- classification layouts


def test_class_folders(classes_source, workspace, unchanged, make):
    untouched = unchanged(classes_source)
    dataset, report = import_dataset(classes_source, "lesions", workspace=workspace)
    untouched()
    assert report.ok and report.problems == []
    assert detect_layout(classes_source) == "classes"
    assert (dataset.task, dataset.spatial_dims, dataset.channels) == ("classification", 2, ["grey"])
    assert dataset.labels == {0: "benign", 1: "malignant"}
    targets = {c.case_id: c.target for c in dataset.cases}
    assert targets == {"benign_lesion0": 0, "benign_lesion1": 0, "malignant_lesion0": 1, "malignant_lesion1": 1}
    assert all(c.label is None for c in dataset.cases)
    assert not (dataset.root / "labelsTr").exists()
    _check_stored(dataset, workspace, "lesions")
    image = read_image(dataset.image_paths(dataset.case("malignant_lesion1"))[0])
    np.testing.assert_array_equal(image.array, make.picture(11).array)


def test_csv_with_class_names_and_splits(csv_source, workspace, unchanged, make):
    untouched = unchanged(csv_source.parent)
    dataset, report = import_dataset(csv_source, "skin", workspace=workspace)
    untouched()
    assert report.ok and report.problems == []
    assert detect_layout(csv_source) == "csv"
    assert dataset.task == "classification" and dataset.channels == ["R", "G", "B"]
    assert dataset.labels == {0: "melanoma", 1: "nevus"}
    assert [(c.case_id, c.target, c.split) for c in dataset.cases] == [
        ("a", 1, "train"),
        ("b", 0, "train"),
        ("c", 1, "val"),
    ]
    _check_stored(dataset, workspace, "skin")
    case = dataset.case("b")
    assert len(case.images) == 3
    for k, path in enumerate(dataset.image_paths(case)):
        np.testing.assert_array_equal(read_image(path).array[0], make.picture(1, channels=3).array[k])


def test_csv_with_numeric_classes_and_id_column(tmp_path, workspace, make):
    root = tmp_path / "numeric"
    for i in range(3):
        write_image(make.picture(i), root / f"p{i}.png")
    (root / "table.csv").write_text("Case_ID,Path,Class\nx1,p0.png,10\nx2,p1.png,2\nx3,p2.png,2\n")
    dataset, _ = import_dataset(root / "table.csv", "num", workspace=workspace)
    assert dataset.labels == {0: "2", 1: "10"}
    assert [(c.case_id, c.target) for c in dataset.cases] == [("x1", 1), ("x2", 0), ("x3", 0)]


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def test_medmnist_npz_2d(tmp_path, workspace, unchanged):
    rng = np.random.default_rng(0)
    images = {s: rng.integers(0, 256, (n, 5, 8), dtype=np.uint8) for s, n in (("train", 4), ("val", 2), ("test", 1))}
    labels = {"train": np.array([0, 1, 2, 1]), "val": np.array([2, 0]), "test": np.array([1])}
    source = _npz(
        tmp_path / "tiny2d.npz",
        **{f"{s}_images": a for s, a in images.items()},
        **{f"{s}_labels": a for s, a in labels.items()},
    )
    untouched = unchanged(source)
    dataset, report = import_dataset(source, "mnist2d", workspace=workspace)
    untouched()
    assert report.ok
    assert (dataset.task, dataset.spatial_dims, dataset.channels) == ("classification", 2, ["image"])
    assert dataset.labels == {0: "0", 1: "1", 2: "2"}
    assert len(dataset.cases) == 7
    assert [c.split for c in dataset.cases].count("train") == 4
    assert [c.split for c in dataset.cases].count("val") == 2
    assert [c.split for c in dataset.cases].count("test") == 1
    case = dataset.case("val_00000")
    assert case.target == 2 and case.source == [f"{source}:val[0]"]
    _check_stored(dataset, workspace, "mnist2d")
    for split in ("train", "val"):
        image = read_image(dataset.image_paths(dataset.case(f"{split}_00001"))[0])
        pixels = images[split][1]  # (H=5 rows, W=8 columns)
        assert image.array.shape == (1, 8, 5)
        assert image.geometry == Geometry.default(2)
        for r, c in ((0, 0), (1, 4), (4, 7), (3, 2)):
            assert image.array[0, c, r] == pixels[r, c]  # X along a row
        np.testing.assert_array_equal(image.array[0], pixels.T)


def test_medmnist_npz_2d_rgb(tmp_path, workspace):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (3, 5, 8, 3), dtype=np.uint8)
    source = _npz(tmp_path / "rgb.npz", train_images=images, train_labels=np.array([[0], [3], [3]]))
    dataset, report = import_dataset(source, "rgb", workspace=workspace)
    assert report.ok
    assert dataset.channels == ["R", "G", "B"] and dataset.spatial_dims == 2
    assert dataset.labels == {0: "0", 3: "3"}
    assert [c.target for c in dataset.cases] == [0, 3, 3]
    _check_stored(dataset, workspace, "rgb")
    case = dataset.case("train_00002")
    assert len(case.images) == 3
    for k, path in enumerate(dataset.image_paths(case)):
        array = read_image(path).array
        assert array.shape == (1, 8, 5)
        assert array[0, 6, 2] == images[2, 2, 6, k]
        np.testing.assert_array_equal(array[0], images[2, :, :, k].T)


def test_medmnist_npz_3d(tmp_path, workspace):
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (2, 4, 5, 6), dtype=np.uint8)  # (N, D, H, W)
    source = _npz(
        tmp_path / "vol.npz",
        train_images=images[:1],
        train_labels=np.array([[1]]),
        test_images=images[1:],
        test_labels=np.array([[0]]),
    )
    dataset, report = import_dataset(source, "vol3d", workspace=workspace)
    assert report.ok
    assert dataset.spatial_dims == 3 and dataset.channels == ["image"]
    assert [(c.case_id, c.split, c.target) for c in dataset.cases] == [
        ("train_00000", "train", 1),
        ("test_00000", "test", 0),
    ]
    _check_stored(dataset, workspace, "vol3d")
    array = read_image(dataset.image_paths(dataset.case("test_00000"))[0]).array
    assert array.shape == (1, 6, 5, 4)  # (C, X=columns, Y=rows, Z=slices)
    assert array[0, 5, 2, 3] == images[1, 3, 2, 5]
    np.testing.assert_array_equal(array[0], images[1].T)


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"train_images": np.zeros((2, 4, 4), np.uint8)}, "no 'train_labels'"),
        ({"x": np.zeros(3)}, "no '<split>_images'"),
        ({"train_images": np.zeros((2, 4, 4), np.uint8), "train_labels": np.full((2, 3), 2)}, "0/1 flag per label"),
        ({"train_images": np.zeros((2, 4, 4), np.uint8), "train_labels": np.zeros(3)}, "2 images but 3 labels"),
    ],
)
def test_medmnist_npz_errors(tmp_path, workspace, arrays, match):
    source = _npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(VesaliusError, match=match) as info:
        import_dataset(source, "bad", workspace=workspace)
    assert info.value.file == str(source)
    assert not any((workspace / "datasets").iterdir())


# ------------------------------------------------------------------------------------- names and workspace


def test_name_taken_and_overwrite(msd_source, classes_source, workspace):
    first, _ = import_dataset(msd_source, "same", workspace=workspace)
    with pytest.raises(VesaliusError, match="already exists") as info:
        import_dataset(classes_source, "same", workspace=workspace)
    assert info.value.file == str(workspace / "datasets" / "same")
    assert Dataset.load(first.root).task == "segmentation"  # untouched by the refused import
    second, _ = import_dataset(classes_source, "same", workspace=workspace, overwrite=True)
    assert second.root == first.root
    loaded = Dataset.load(second.root)
    assert loaded.task == "classification" and len(loaded.cases) == 4
    assert not (second.root / "labelsTr").exists()  # nothing left of the replaced data set
    assert sorted(p.name for p in (second.root / "imagesTr").iterdir()) == sorted(
        f"{c.case_id}_0000.nii.gz" for c in loaded.cases
    )


def test_default_workspace_is_vesalius_home(msd_source, _isolated_home):
    dataset, _ = import_dataset(msd_source, "home")
    assert dataset.root == _isolated_home / "datasets" / "home"
    assert (dataset.root / "dataset.json").is_file()


@pytest.mark.parametrize("name", ["bad name", "../escape", "", "_x", "a/b"])
def test_invalid_names_are_refused(msd_source, workspace, name):
    with pytest.raises(VesaliusError, match="invalid data set name"):
        import_dataset(msd_source, name, workspace=workspace)
    assert not workspace.exists()


def test_missing_source_and_unknown_layouts(tmp_path, msd_source, workspace):
    with pytest.raises(VesaliusError, match="source not found") as info:
        import_dataset(tmp_path / "nowhere", "x", workspace=workspace)
    assert info.value.file == str(tmp_path / "nowhere")
    with pytest.raises(VesaliusError, match="unknown layout"):
        import_dataset(msd_source, "x", workspace=workspace, layout="zip")  # type: ignore[arg-type]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(VesaliusError, match="cannot tell the layout") as info:
        import_dataset(empty, "x", workspace=workspace)
    assert info.value.file == str(empty)
    assert not any((workspace / "datasets").iterdir())


@pytest.fixture
def c_locale():
    """The C locale, as GDCM sets it after a DICOM read (text files then default to ASCII in this process)."""
    import locale

    old = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C")
    yield
    locale.setlocale(locale.LC_CTYPE, old)


def test_non_ascii_text_files_are_utf8(tmp_path, workspace, make, c_locale):
    # a CSV saved by a spreadsheet ("CSV UTF-8": with a byte order mark) with accented names and paths
    root = tmp_path / "hautläsionen"
    for i, name in enumerate(("näve.png", "mélanome.png")):
        write_image(make.picture(i), root / name)
    table = root / "tabelle.csv"
    table.write_bytes("\ufeffimage,label\nnäve.png,Nävus\nmélanome.png,Mélanome\n".encode())
    dataset, report = import_dataset(table, "haut", workspace=workspace)
    assert report.ok
    assert dataset.labels == {0: "Mélanome", 1: "Nävus"}
    assert [(c.case_id, c.target) for c in dataset.cases] == [("näve", 1), ("mélanome", 0)]
    assert Dataset.load(dataset.root).labels == dataset.labels
    # a dataset.json written by hand, in UTF-8
    source = make.msd(tmp_path / "msd")
    meta = json.loads((source / "dataset.json").read_text(encoding="utf-8"))
    meta["labels"] = {"0": "Hintergrund", "1": "Ödem", "2": "Tumör"}
    (source / "dataset.json").write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
    dataset, _ = import_dataset(source, "oedem", workspace=workspace)
    assert Dataset.load(dataset.root).labels == {0: "Hintergrund", 1: "Ödem", 2: "Tumör"}


def test_pairs_with_dicom_series_folders(tmp_path, workspace, make, unchanged):
    dicom = pytest.importorskip("vesalius.io.dicom")
    if not hasattr(dicom, "write_dicom_series"):
        pytest.skip("vesalius.io.dicom.write_dicom_series not available")
    root = tmp_path / "ct"
    for i in range(2):
        write_image(make.volume(i, np.int16), root / "images" / f"patient{i}")  # a folder of slice files
        write_image(make.label(i, values=(0, 1)), root / "labels" / f"patient{i}.nii.gz")
    untouched = unchanged(root)
    dataset, report = import_dataset(root, "ct", workspace=workspace)
    untouched()
    assert report.ok, report.lines()
    assert [c.case_id for c in dataset.cases] == ["patient0", "patient1"]
    assert dataset.spatial_dims == 3 and dataset.labels == {0: "background", 1: "label_1"}
    for i, case in enumerate(dataset.cases):
        image = read_image(dataset.image_paths(case)[0])
        np.testing.assert_array_equal(image.array, make.volume(i, np.int16).array)
        assert image.geometry.is_close(read_image(root / "images" / f"patient{i}").geometry, atol=1e-5)
        assert image.geometry.is_close(make.geometry, atol=1e-5)
