"""Image I/O: round trips of every format with geometry, canonical orientation on load and back on save, errors."""

from __future__ import annotations

import gzip
import warnings
from pathlib import Path

import numpy as np
import pytest

from vesalius.errors import VesaliusError
from vesalius.io import Geometry, Image, image_suffix, read_image, reorient, strip_suffix, write_image

VOLUME_FORMATS = [".nii", ".nii.gz", ".nrrd", ".mha"]
NIFTI_ATOL = 1e-5  # NIfTI stores spacing, origin and direction as float32


def _geometry_atol(suffix: str, direction: str = "permuted") -> float:
    if suffix.startswith(".nii"):
        return NIFTI_ATOL
    # NRRD stores "space directions" (direction times spacing): an oblique grid comes back to the last bit only
    return 1e-12 if suffix == ".nrrd" and direction == "oblique" else 0.0


def _assert_same(read: Image, expected: Image, atol: float) -> None:
    assert read.array.dtype == expected.array.dtype
    assert read.array.shape == expected.array.shape
    np.testing.assert_array_equal(read.array, expected.array)
    for name in ("spacing", "origin", "direction"):
        np.testing.assert_allclose(
            getattr(read.geometry, name), getattr(expected.geometry, name), rtol=0, atol=atol, err_msg=name
        )


def _world_of_voxels(image: Image) -> tuple[np.ndarray, np.ndarray]:
    """World position (LPS mm) of every voxel centre, and the voxel values, in the same order."""
    idx = np.indices(image.spatial_shape).reshape(image.ndim, -1)
    world = image.geometry.affine() @ np.vstack([idx, np.ones(idx.shape[1])])
    return world[: image.ndim], image.array[(slice(None), *idx)]


# ------------------------------------------------------------------------------------- 3D round trips


@pytest.mark.parametrize("suffix", VOLUME_FORMATS)
@pytest.mark.parametrize("direction", ["permuted", "oblique"])
@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_volume_round_trip_keeps_geometry_and_values(tmp_path, make, suffix, direction, dtype):
    geometry = Geometry(make.spacing, make.origin, tuple(getattr(make, direction).ravel()))
    image = make.volume(3, dtype, geometry=geometry)
    path = write_image(image, tmp_path / f"vol{suffix}")
    assert path == tmp_path / f"vol{suffix}" and path.is_file()
    first = read_image(path)
    _assert_same(first, image, _geometry_atol(suffix, direction))
    # read -> write -> read once more: nothing drifts
    again = read_image(write_image(first, tmp_path / f"again{suffix}"))
    _assert_same(again, first, _geometry_atol(suffix, direction))
    assert not list(tmp_path.glob(".tmp-*")), "temporary file left behind"


def test_nifti_gz_is_compressed_and_nii_is_not(tmp_path, make):
    image = make.volume(0, np.int16)
    gz = write_image(image, tmp_path / "a.nii.gz")
    nii = write_image(image, tmp_path / "a.nii")
    assert gz.read_bytes()[:2] == b"\x1f\x8b"
    assert gzip.decompress(gz.read_bytes())[:4] == nii.read_bytes()[:4]
    assert nii.stat().st_size >= 352 + image.array.nbytes


def test_multichannel_volume_round_trip(tmp_path, make):
    channels = np.concatenate([make.volume(1).array, make.volume(2).array])
    image = Image(channels, make.geometry)
    for suffix in (".nrrd", ".mha"):
        read = read_image(write_image(image, tmp_path / f"two{suffix}"))
        _assert_same(read, image, 0.0)
        assert read.num_channels == 2


def test_dicom_series_round_trip(tmp_path, make):
    dicom = pytest.importorskip("vesalius.io.dicom")
    if not hasattr(dicom, "write_dicom_series"):
        pytest.skip("vesalius.io.dicom.write_dicom_series not available")
    image = make.volume(4, np.int16)  # right-handed axis-aligned direction, anisotropic spacing
    folder = write_image(image, tmp_path / "series")
    assert folder.is_dir() and len(list(folder.glob("*.dcm"))) == make.shape[2]
    read = read_image(folder)
    _assert_same(read, image, 1e-6)


def test_dicom_series_of_oblique_volume(tmp_path, make):
    dicom = pytest.importorskip("vesalius.io.dicom")
    if not hasattr(dicom, "write_dicom_series"):
        pytest.skip("vesalius.io.dicom.write_dicom_series not available")
    image = make.volume(5, np.int16, geometry=Geometry(make.spacing, make.origin, tuple(make.oblique.ravel())))
    read = read_image(write_image(image, tmp_path / "oblique"))
    _assert_same(read, image, 1e-6)


@pytest.mark.parametrize("suffix", VOLUME_FORMATS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("channels", [1, 2])
def test_nan_and_inf_voxels_survive_a_round_trip(tmp_path, make, suffix, dtype, channels):
    # ITK 5.4 reads non-finite NIfTI voxels as 0; read_image must give back what the file holds
    array = np.concatenate([make.volume(c, dtype).array for c in range(channels)])
    array[0, 1, 2, 3], array[0, 5, 6, 4], array[-1, 0, 0, 0] = np.nan, np.inf, -np.inf
    array[0, 2, 2, 2] = 0.0
    image = Image(array, make.geometry)
    read = read_image(write_image(image, tmp_path / f"nan{suffix}"))
    assert read.array.dtype == dtype
    np.testing.assert_array_equal(read.array, array)  # NaN compares equal to NaN here


# ------------------------------------------------------------------------------------- 2D pictures


@pytest.mark.parametrize("suffix", [".png", ".tif"])
@pytest.mark.parametrize("channels", [1, 3])
def test_lossless_picture_round_trip_keeps_channels(tmp_path, make, suffix, channels):
    image = make.picture(7, channels)  # (C, 6, 7): not square, so a swapped X/Y would change the shape
    read = read_image(write_image(image, tmp_path / f"pic{suffix}"))
    assert read.ndim == 2 and read.num_channels == channels
    np.testing.assert_array_equal(read.array, image.array)
    assert read.geometry.is_close(Geometry.default(2), atol=1e-6)


def test_png_16_bit_round_trip(tmp_path):
    array = np.arange(6 * 7, dtype=np.uint16).reshape(1, 6, 7) * 1500
    read = read_image(write_image(Image(array, Geometry.default(2)), tmp_path / "deep.png"))
    assert read.array.dtype == np.uint16
    np.testing.assert_array_equal(read.array, array)


@pytest.mark.parametrize("channels", [1, 3])
def test_jpeg_round_trip_is_close(tmp_path, channels):
    # JPEG is lossy: a smooth picture (16 x 16, one block per channel) comes back within a few grey levels
    x, y = np.meshgrid(np.arange(16), np.arange(16), indexing="ij")
    base = 40 + 8 * x + 4 * y
    array = np.stack([base, base[::-1], base[:, ::-1]][:channels]).astype(np.uint8)
    read = read_image(write_image(Image(array, Geometry.default(2)), tmp_path / "pic.jpg"))
    assert read.array.shape == array.shape and read.array.dtype == np.uint8
    error = np.abs(read.array.astype(int) - array.astype(int))
    assert error.mean() < 3 and error.max() < 16


def test_picture_pixel_order_x_along_a_row(tmp_path):
    # array[0, x, y]: x is the column of the picture. A 2 x 3 picture (2 columns, 3 rows) written by ITK
    # reads back with the same (x, y) addressing.
    array = np.array([[[1, 2, 3], [4, 5, 6]]], dtype=np.uint8)
    import SimpleITK as sitk

    path = write_image(Image(array, Geometry.default(2)), tmp_path / "tiny.png")
    itk = sitk.ReadImage(str(path))
    assert itk.GetSize() == (2, 3)
    assert itk.GetPixel(1, 2) == 6 and itk.GetPixel(0, 1) == 2


def test_picture_warns_when_geometry_is_lost(tmp_path):
    image = Image(np.zeros((1, 6, 7), np.uint8), Geometry((0.5, 0.5), (3.0, 4.0), (1.0, 0.0, 0.0, 1.0)))
    with pytest.warns(UserWarning, match="spacing/origin/direction"):
        write_image(image, tmp_path / "lost.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_image(Image(image.array, Geometry.default(2)), tmp_path / "kept.png")


@pytest.mark.parametrize(
    ("image", "name", "match"),
    [
        (Image(np.zeros((1, 6, 7, 5), np.uint8), Geometry.default(3)), "vol.png", "holds 2D images"),
        (Image(np.zeros((1, 6, 7), np.float64), Geometry.default(2)), "f.png", "cannot store float64"),
        (Image(np.zeros((1, 6, 7), np.uint16), Geometry.default(2)), "deep.jpg", "cannot store uint16"),
        (Image(np.zeros((2, 6, 7), np.uint8), Geometry.default(2)), "two.png", "1, 3 or 4 channels"),
        (Image(np.zeros((1, 6, 7, 5), np.uint8), Geometry.default(3)), "v.mhd", "not supported"),
        (Image(np.zeros((1, 6, 7, 5), np.uint8), Geometry.default(3)), "v.dcm", "written as a series"),
    ],
)
def test_write_refuses_what_the_format_cannot_hold(tmp_path, image, name, match):
    with pytest.raises(VesaliusError, match=match) as info:
        write_image(image, tmp_path / name)
    assert info.value.file == str(tmp_path / name)
    assert not list(tmp_path.iterdir()), "a refused write left a file"


# ------------------------------------------------------------------------------------- canonical orientation


@pytest.mark.parametrize("suffix", [".nii.gz", ".mha", ".nrrd"])
def test_canonical_load_is_ras_and_keeps_world_positions(tmp_path, make, suffix):
    image = make.volume(8, np.int16)  # axis-aligned, permuted and flipped ("PIR")
    path = write_image(image, tmp_path / f"vol{suffix}")
    canon = read_image(path, canonical=True)
    np.testing.assert_allclose(canon.geometry.direction_matrix, np.diag([-1.0, -1.0, 1.0]), atol=1e-6)
    assert canon.orientation_on_disk == "PIR"
    assert sorted(canon.spatial_shape) == sorted(make.shape)
    assert sorted(canon.geometry.spacing) == pytest.approx(sorted(make.spacing), abs=1e-5)
    # every voxel keeps its value at its world position
    world, values = _world_of_voxels(image)
    index = np.linalg.inv(canon.geometry.affine()) @ np.vstack([world, np.ones(world.shape[1])])
    rounded = np.rint(index[:3]).astype(int)
    np.testing.assert_allclose(index[:3], rounded, atol=1e-4)
    np.testing.assert_array_equal(canon.array[(slice(None), *rounded)], values)
    # one voxel spelled out: voxel (1, 2, 3) of the file, found through the affines
    p = image.geometry.affine() @ [1, 2, 3, 1]
    q = np.rint(np.linalg.inv(canon.geometry.affine()) @ p).astype(int)
    assert canon.array[0, q[0], q[1], q[2]] == image.array[0, 1, 2, 3]


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".mha", ".nrrd"])
def test_write_after_canonical_load_restores_original(tmp_path, make, suffix):
    image = make.volume(9, np.float32)
    path = write_image(image, tmp_path / f"orig{suffix}")
    original = read_image(path)
    canon = read_image(path, canonical=True)
    assert canon.array.shape != original.array.shape  # it really was reoriented
    restored = read_image(write_image(canon, tmp_path / f"back{suffix}"))
    _assert_same(restored, original, 0.0 if suffix in (".mha", ".nrrd") else NIFTI_ATOL)
    # and explicitly keeping the canonical orientation writes RAS
    kept = read_image(write_image(canon, tmp_path / f"ras{suffix}", restore_orientation=False))
    np.testing.assert_allclose(kept.geometry.direction_matrix, np.diag([-1.0, -1.0, 1.0]), atol=1e-6)


def test_canonical_with_other_code_and_oblique_direction(tmp_path, make):
    oblique = Geometry(make.spacing, make.origin, tuple(make.oblique.ravel()))
    image = make.volume(2, np.int16, geometry=oblique)
    path = write_image(image, tmp_path / "obl.mha")
    lps = read_image(path, canonical="LPS")
    world, values = _world_of_voxels(image)
    index = np.linalg.inv(lps.geometry.affine()) @ np.vstack([world, np.ones(world.shape[1])])
    rounded = np.rint(index[:3]).astype(int)
    np.testing.assert_allclose(index[:3], rounded, atol=1e-6)
    np.testing.assert_array_equal(lps.array[(slice(None), *rounded)], values)
    restored = read_image(write_image(lps, tmp_path / "back.mha"))
    _assert_same(restored, image, 1e-12)


def test_canonical_is_a_no_op_for_ras_and_for_2d(tmp_path, make):
    ras = Geometry(make.spacing, make.origin, (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
    image = make.volume(1, np.int16, geometry=ras)
    canon = read_image(write_image(image, tmp_path / "ras.mha"), canonical=True)
    _assert_same(canon, image, 0.0)
    assert canon.orientation_on_disk == "RAS"
    pic = make.picture(1)
    read = read_image(write_image(pic, tmp_path / "p.png"), canonical=True)
    np.testing.assert_array_equal(read.array, pic.array)
    assert read.orientation_on_disk is None


def test_reorient_multichannel_keeps_channels_together(make):
    image = Image(np.concatenate([make.volume(1).array, make.volume(2).array]), make.geometry)
    ras = reorient(image, "RAS")
    assert ras.num_channels == 2
    world, values = _world_of_voxels(image)
    index = np.rint(np.linalg.inv(ras.geometry.affine()) @ np.vstack([world, np.ones(world.shape[1])]))
    np.testing.assert_array_equal(ras.array[(slice(None), *index[:3].astype(int))], values)
    with pytest.raises(VesaliusError, match="3D"):
        reorient(make.picture(0), "RAS")


# ------------------------------------------------------------------------------------- read errors


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(VesaliusError, match="file not found") as info:
        read_image(tmp_path / "nope.nii.gz")
    assert info.value.file == str(tmp_path / "nope.nii.gz")
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    with pytest.raises(VesaliusError, match=r"unsupported file type '\.txt'") as info:
        read_image(other)
    assert info.value.file == str(other)


@pytest.mark.parametrize("keep", [0.5, -1, -7])
def test_truncated_gzip_is_an_error(tmp_path, make, keep):
    path = write_image(make.volume(0), tmp_path / "t.nii.gz")
    make.truncate(path, keep)
    with pytest.raises(VesaliusError, match="gzip") as info:
        read_image(path)
    assert info.value.file == str(path)


@pytest.mark.parametrize("keep", [0.6, -100, -1])
def test_truncated_uncompressed_nifti_is_an_error(tmp_path, make, keep):
    path = write_image(make.volume(0), tmp_path / "t.nii")
    make.truncate(path, keep)
    with pytest.raises(VesaliusError, match="truncated NIfTI") as info:
        read_image(path)
    assert info.value.file == str(path)


def test_gzip_that_is_not_gzip_and_garbage_image(tmp_path):
    fake = tmp_path / "fake.nii.gz"
    fake.write_bytes(b"this is not gzip data at all" * 20)
    with pytest.raises(VesaliusError, match="gzip") as info:
        read_image(fake)
    assert info.value.file == str(fake)
    garbage = tmp_path / "garbage.mha"
    garbage.write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(VesaliusError, match="cannot read image") as info:
        read_image(garbage)
    assert info.value.file == str(garbage)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("name", "suffix", "stem"),
    [
        ("case_01.nii.gz", ".nii.gz", "case_01"),
        ("CASE.NII.GZ", ".nii.gz", "CASE"),
        ("a.b.nrrd", ".nrrd", "a.b"),
        ("x.jpeg", ".jpeg", "x"),
        ("slice.dcm", ".dcm", "slice"),
        ("notes.txt", "", "notes"),
    ],
)
def test_suffix_helpers(name, suffix, stem):
    assert image_suffix(Path("/d") / name) == suffix
    assert strip_suffix(name) == stem
