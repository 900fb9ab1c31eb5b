"""Tests of the synthetic phantoms in :mod:`vesalius.data.synthetic`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from vesalius.data import synthetic
from vesalius.data.synthetic import (
    case_seed,
    make_classification_case,
    make_segmentation_case,
    write_classification_dataset,
    write_segmentation_dataset,
)
from vesalius.io.image import Geometry, Image, from_sitk


def _noise_std(image: np.ndarray, mask: np.ndarray) -> float:
    """Noise standard deviation from differences of neighbours (along axis 0) inside ``mask``."""
    core = ndimage.binary_erosion(mask)
    both = core[1:] & core[:-1]
    diff = (image[1:] - image[:-1])[both]
    return float(diff.std() / np.sqrt(2.0))


# --------------------------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("ndim", [2, 3])
def test_same_seed_is_bit_identical(ndim: int) -> None:
    a_img, a_lab = make_segmentation_case(7, ndim=ndim, num_lesion_classes=2)
    b_img, b_lab = make_segmentation_case(7, ndim=ndim, num_lesion_classes=2)
    assert a_img.array.tobytes() == b_img.array.tobytes()
    assert np.array_equal(a_lab.array, b_lab.array)
    assert a_img.geometry == b_img.geometry == a_lab.geometry == b_lab.geometry


@pytest.mark.parametrize("ndim", [2, 3])
def test_different_seeds_differ(ndim: int) -> None:
    shape = (40,) * ndim
    spacing = (1.0,) * ndim
    a_img, a_lab = make_segmentation_case(1, ndim=ndim, shape=shape, spacing=spacing)
    b_img, b_lab = make_segmentation_case(2, ndim=ndim, shape=shape, spacing=spacing)
    assert not np.array_equal(a_img.array, b_img.array)
    assert not np.array_equal(a_lab.array, b_lab.array)
    assert a_img.geometry.origin != b_img.geometry.origin
    # Drawn geometry differs too.
    c_img, _ = make_segmentation_case(1, ndim=ndim)
    d_img, _ = make_segmentation_case(2, ndim=ndim)
    assert (c_img.spatial_shape, c_img.geometry.spacing) != (d_img.spatial_shape, d_img.geometry.spacing)


def test_classification_case_is_deterministic() -> None:
    a = make_classification_case(3, present=True)
    b = make_classification_case(3, present=True)
    c = make_classification_case(4, present=True)
    assert np.array_equal(a.array, b.array) and a.geometry == b.geometry
    assert a.array.shape != c.array.shape or not np.array_equal(a.array, c.array)


# --------------------------------------------------------------------------------------------- content


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("num_lesion_classes", [0, 1, 3])
def test_dtypes_shapes_and_label_values(ndim: int, num_lesion_classes: int) -> None:
    for seed in range(4):
        image, label = make_segmentation_case(seed, ndim=ndim, num_lesion_classes=num_lesion_classes)
        assert image.array.dtype == np.float32 and label.array.dtype == np.uint8
        assert image.num_channels == 1 and label.num_channels == 1
        assert image.ndim == ndim and image.array.shape == label.array.shape
        assert image.geometry == label.geometry
        assert np.all(np.isfinite(image.array)) and image.array.min() >= 0.0
        values = set(np.unique(label.array).tolist())
        assert {0, 1} <= values <= set(range(2 + num_lesion_classes))


@pytest.mark.parametrize("ndim", [2, 3])
def test_most_cases_have_every_lesion_class(ndim: int) -> None:
    present = np.zeros(3, dtype=int)
    for seed in range(20):
        _, label = make_segmentation_case(seed, ndim=ndim, num_lesion_classes=3)
        present += [int((label.array == 2 + k).any()) for k in range(3)]
    assert np.all(present >= 14), present


@pytest.mark.parametrize("ndim", [2, 3])
def test_lesions_are_surrounded_by_organ(ndim: int) -> None:
    full = np.ones((3,) * ndim, dtype=bool)
    for seed in range(10):
        _, label = make_segmentation_case(seed, ndim=ndim, num_lesion_classes=2)
        lab = label.array[0]
        organ = lab >= 1
        lesion = lab >= 2
        # Every lesion voxel has all its neighbours (diagonals included) in the organ or in a lesion.
        assert not np.any(lesion & ~ndimage.binary_erosion(organ, structure=full, border_value=0))
        # So the shell around the lesions is organ (label 1) only.
        shell = ndimage.binary_dilation(lesion, structure=full) & ~lesion
        assert np.all(lab[shell] == 1)


@pytest.mark.parametrize("ndim", [2, 3])
def test_foreground_is_croppable_and_contains_the_label(ndim: int) -> None:
    for seed in range(5):
        image, label = make_segmentation_case(seed, ndim=ndim)
        img, lab = image.array[0], label.array[0]
        nonzero = img > 0
        assert 0.05 < nonzero.mean() < 0.9  # a zero background to crop
        assert np.all(nonzero[lab >= 1])
        # Organ is bright against the body around it.
        body = nonzero & (lab == 0)
        assert img[lab == 1].mean() > img[body].mean() + 50


@pytest.mark.parametrize("ndim", [2, 3])
def test_lesion_intensity_separable_from_organ(ndim: int) -> None:
    ratios: dict[int, list[float]] = {2: [], 3: []}
    for seed in range(12):
        image, label = make_segmentation_case(seed, ndim=ndim, num_lesion_classes=2)
        img, lab = image.array[0].astype(np.float64), label.array[0]
        sigma = _noise_std(img, lab == 1)
        organ_mean = img[lab == 1].mean()
        for k in (2, 3):
            if (lab == k).sum() >= 30:
                ratios[k].append((img[lab == k].mean() - organ_mean) / sigma)
    assert len(ratios[2]) >= 6 and len(ratios[3]) >= 6
    # Class 2 is brighter, class 3 darker than the organ, by several noise standard deviations.
    assert min(ratios[2]) > 2.5 and np.median(ratios[2]) > 4.0
    assert max(ratios[3]) < -2.5 and np.median(ratios[3]) < -4.0


def test_noise_and_bias_make_intensities_overlap() -> None:
    image, label = make_segmentation_case(0, ndim=3)
    img, lab = image.array[0], label.array[0]
    organ = img[lab == 1]
    # Not a clean step image: the organ has a spread of intensities.
    assert organ.std() > 10.0
    assert organ.max() - organ.min() > 80.0


# --------------------------------------------------------------------------------------------- geometry


def test_drawn_3d_geometry_within_ranges_and_varies() -> None:
    shapes, spacings = set(), set()
    for seed in range(12):
        image, _ = make_segmentation_case(seed, ndim=3)
        shape, geo = image.spatial_shape, image.geometry
        assert all(32 <= s <= 48 for s in shape), shape
        sx, sy, sz = geo.spacing
        assert 0.8 <= sx <= 1.2 and sy == sx and 1.0 <= sz <= 3.0, geo.spacing
        assert any(o != 0.0 for o in geo.origin)
        assert np.array_equal(geo.direction_matrix, np.eye(3))
        shapes.add(shape)
        spacings.add(geo.spacing)
    assert len(shapes) >= 8 and len(spacings) >= 8


def test_drawn_2d_geometry_within_ranges_and_varies() -> None:
    shapes, spacings = set(), set()
    for seed in range(12):
        image, _ = make_segmentation_case(seed, ndim=2)
        shape, geo = image.spatial_shape, image.geometry
        assert image.array.ndim == 3
        assert all(48 <= s <= 80 for s in shape), shape
        assert all(0.5 <= s <= 1.0 for s in geo.spacing), geo.spacing
        assert all(o != 0.0 for o in geo.origin)
        assert np.array_equal(geo.direction_matrix, np.eye(2))
        shapes.add(shape)
        spacings.add(geo.spacing)
    assert len(shapes) >= 8 and len(spacings) >= 8


def test_explicit_shape_and_spacing_are_used() -> None:
    image, label = make_segmentation_case(5, ndim=3, shape=(30, 34, 20), spacing=(1.0, 1.0, 2.5))
    assert image.array.shape == label.array.shape == (1, 30, 34, 20)
    assert image.geometry.spacing == (1.0, 1.0, 2.5)
    assert (label.array == 1).any()


def test_anatomy_keeps_its_physical_size_across_spacings() -> None:
    """Organ volume in mm^3 stays in the same range whether voxels are small or large."""
    volumes = {}
    for spacing in [(0.6, 0.6, 1.0), (1.2, 1.2, 3.0)]:
        vols = []
        for seed in range(6):
            _, label = make_segmentation_case(seed, shape=(64, 64, 48), spacing=spacing)
            vols.append((label.array >= 1).sum() * float(np.prod(spacing)))
        volumes[spacing] = np.median(vols)
    small, large = volumes.values()
    assert 0.6 < small / large < 1.6
    # An ellipsoid with semi-axes around 8-13 mm.
    assert 2000 < small < 9000


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"ndim": 4}, ValueError),
        ({"ndim": 3, "shape": (32, 32)}, ValueError),
        ({"ndim": 2, "spacing": (1.0, -1.0)}, ValueError),
        ({"num_lesion_classes": -1}, ValueError),
    ],
)
def test_invalid_arguments(kwargs: dict, error: type[Exception]) -> None:
    with pytest.raises(error):
        make_segmentation_case(0, **kwargs)


# --------------------------------------------------------------------------------------------- classification


@pytest.mark.parametrize("ndim", [2, 3])
def test_classification_case_lesion_presence(ndim: int) -> None:
    for seed in range(8):
        image = make_classification_case(seed, present=seed % 2 == 1, ndim=ndim)
        assert image.array.dtype == np.float32 and image.num_channels == 1 and image.ndim == ndim
        # The label behind the picture: a lesion exactly when present.
        _, label, _ = synthetic._generate(seed, ndim, None, None, 1, presence=seed % 2 == 1)
        assert (label >= 2).any() == (seed % 2 == 1)
        assert (label == 1).any()


# --------------------------------------------------------------------------------------------- writers


def _read(path) -> Image:
    return from_sitk(sitk.ReadImage(str(path)))


def test_write_segmentation_dataset_layout(tmp_path) -> None:
    root = tmp_path / "sub" / "phantom3d"
    out = write_segmentation_dataset(root, num_cases=3, ndim=3, seed=2, num_lesion_classes=2, name="P")
    assert out == root
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["name"] == "P"
    assert meta["tensorImageSize"] == "3D"
    assert meta["modality"] == {"0": "MRI"}
    assert meta["labels"] == {"0": "background", "1": "organ", "2": "lesion_1", "3": "lesion_2"}
    assert meta["numTraining"] == len(meta["training"]) == 3
    assert meta["numTest"] == 0 and meta["test"] == []
    assert sorted(p.name for p in (root / "imagesTr").iterdir()) == [f"phantom_{i:03d}.nii.gz" for i in range(3)]
    for i, entry in enumerate(meta["training"]):
        assert entry == {"image": f"./imagesTr/phantom_{i:03d}.nii.gz", "label": f"./labelsTr/phantom_{i:03d}.nii.gz"}
        img_path, lab_path = root / entry["image"], root / entry["label"]
        assert img_path.is_file() and lab_path.is_file()
        itk_img, itk_lab = sitk.ReadImage(str(img_path)), sitk.ReadImage(str(lab_path))
        assert itk_img.GetPixelID() == sitk.sitkFloat32 and itk_lab.GetPixelID() == sitk.sitkUInt8
        assert itk_img.GetSize() == itk_lab.GetSize()
        image, label = from_sitk(itk_img), from_sitk(itk_lab)
        assert image.geometry.is_close(label.geometry, atol=1e-4)
        # The files hold exactly the documented case.
        ref_img, ref_lab = make_segmentation_case(case_seed(2, i), ndim=3, num_lesion_classes=2)
        assert case_seed(2, i) == 2 * 100003 + i
        assert np.array_equal(image.array, ref_img.array)
        assert np.array_equal(label.array, ref_lab.array)
        assert image.geometry.is_close(ref_img.geometry, atol=1e-4)
    # No temporary folder left behind.
    assert sorted(p.name for p in root.parent.iterdir()) == ["phantom3d"]


def test_write_segmentation_dataset_2d_single_lesion_class(tmp_path) -> None:
    root = write_segmentation_dataset(tmp_path / "p2d", num_cases=2, ndim=2)
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["tensorImageSize"] == "2D"
    assert meta["labels"] == {"0": "background", "1": "organ", "2": "lesion"}
    image = _read(root / meta["training"][0]["image"])
    assert image.ndim == 2 and image.array.shape[0] == 1


def test_writers_refuse_non_empty_root(tmp_path) -> None:
    root = tmp_path / "busy"
    root.mkdir()
    (root / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        write_segmentation_dataset(root, num_cases=1)
    with pytest.raises(FileExistsError):
        write_classification_dataset(root, num_cases=2)
    assert [p.name for p in root.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"]
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(FileExistsError):
        write_segmentation_dataset(a_file, num_cases=1)
    # An existing empty folder is fine.
    empty = tmp_path / "empty"
    empty.mkdir()
    write_segmentation_dataset(empty, num_cases=1, ndim=2)
    assert (empty / "dataset.json").is_file()


def test_write_classification_dataset_layout(tmp_path) -> None:
    root = write_classification_dataset(tmp_path / "cls", num_cases=6, ndim=2, seed=1)
    assert sorted(p.name for p in root.iterdir()) == ["absent", "present"]
    absent = sorted(p.name for p in (root / "absent").iterdir())
    present = sorted(p.name for p in (root / "present").iterdir())
    assert len(absent) == len(present) == 3
    assert set(absent).isdisjoint(present)
    assert sorted(absent + present) == [f"case_{i:03d}.nii.gz" for i in range(6)]
    for folder, names in (("absent", absent), ("present", present)):
        for name in names:
            i = int(name[5:8])
            image = _read(root / folder / name)
            ref = make_classification_case(case_seed(1, i), present=folder == "present", ndim=2)
            assert image.array.dtype == np.float32 and image.ndim == 2
            assert np.array_equal(image.array, ref.array)
            assert isinstance(image.geometry, Geometry) and image.geometry.is_close(ref.geometry, atol=1e-4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cls"]


def test_write_classification_dataset_odd_count_is_nearly_balanced(tmp_path) -> None:
    root = write_classification_dataset(tmp_path / "odd", num_cases=5)
    n_absent = len(list((root / "absent").glob("*.nii.gz")))
    n_present = len(list((root / "present").glob("*.nii.gz")))
    assert (n_absent, n_present) == (3, 2)
