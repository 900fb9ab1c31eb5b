"""DICOM series I/O: round trips, a hand-made pydicom reference series, choosing among series, errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

from vesalius.errors import VesaliusError
from vesalius.io.dicom import SeriesInfo, list_series, read_dicom_series, write_dicom_series
from vesalius.io.image import from_sitk

SPACING = (0.7, 0.8, 2.5)
ORIGIN = (-112.25, 37.5, 410.125)


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    """Rotation matrix from angles in degrees about x, then y, then z."""
    a, b, c = np.radians([ax, ay, az])
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


IDENTITY = np.eye(3)
# Array axis 0 -> +y, axis 1 -> -z, axis 2 -> -x: a permutation with flips, right-handed (det +1).
PERMUTED_FLIPPED = np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
OBLIQUE = _rotation(17.0, -23.0, 31.0)
DIRECTIONS = {"identity": IDENTITY, "permuted_flipped": PERMUTED_FLIPPED, "oblique": OBLIQUE}


def _volume(dtype: type, size: tuple[int, ...] = (6, 5, 4), direction: np.ndarray = OBLIQUE) -> sitk.Image:
    """A volume of ``size`` (x, y, z): random values of ``dtype``, including its extremes."""
    info = np.iinfo(dtype)
    rng = np.random.default_rng(1)
    arr = rng.integers(info.min, info.max, size=size[::-1], endpoint=True, dtype=dtype)  # (z, y, x)
    arr.flat[0], arr.flat[-1] = info.min, info.max
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(SPACING)
    img.SetOrigin(ORIGIN)
    img.SetDirection(tuple(direction.ravel()))
    return img


def _assert_same(got: sitk.Image, want: sitk.Image) -> None:
    a, b = from_sitk(got), from_sitk(want)
    assert a.array.dtype == b.array.dtype
    np.testing.assert_array_equal(a.array, b.array)
    np.testing.assert_allclose(a.geometry.spacing, b.geometry.spacing, rtol=0, atol=1e-4)
    np.testing.assert_allclose(a.geometry.origin, b.geometry.origin, rtol=0, atol=1e-4)
    np.testing.assert_allclose(a.geometry.direction, b.geometry.direction, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("name", sorted(DIRECTIONS))
@pytest.mark.parametrize("dtype", [np.int16, np.uint16])
def test_round_trip_geometry_and_values(tmp_path: Path, dtype: type, name: str) -> None:
    img = _volume(dtype, direction=DIRECTIONS[name])
    files = write_dicom_series(img, tmp_path / "out")
    assert [f.name for f in files] == [f"slice_{k:04d}.dcm" for k in range(4)]
    assert all(f.is_file() for f in files)
    _assert_same(read_dicom_series(tmp_path / "out"), img)


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int32, np.uint32])
def test_round_trip_other_integer_types(tmp_path: Path, dtype: type) -> None:
    img = _volume(dtype, size=(3, 4, 3))
    write_dicom_series(img, tmp_path / "out", modality="CT")
    _assert_same(read_dicom_series(tmp_path / "out"), img)


def test_round_trip_single_slice(tmp_path: Path) -> None:
    img = _volume(np.int16, size=(6, 5, 1))
    write_dicom_series(img, tmp_path / "out")
    back = read_dicom_series(tmp_path / "out")
    assert back.GetDimension() == 3
    assert back.GetSize() == (6, 5, 1)
    _assert_same(back, img)


def test_left_handed_grid_comes_back_with_slices_reversed(tmp_path: Path) -> None:
    direction = OBLIQUE.copy()
    direction[:, 2] *= -1  # left-handed: DICOM cannot say so, the slice axis gets reversed
    img = _volume(np.int16, direction=direction)
    write_dicom_series(img, tmp_path / "out")
    back = read_dicom_series(tmp_path / "out")
    _assert_same(back, sitk.Flip(img, [False, False, True]))
    # The same voxel values at the same world positions.
    last = img.TransformIndexToPhysicalPoint((0, 0, img.GetSize()[2] - 1))
    np.testing.assert_allclose(back.GetOrigin(), last, atol=1e-4)


def test_written_tags(tmp_path: Path) -> None:
    series_uid, study_uid = generate_uid(), generate_uid()
    img = _volume(np.int16, direction=IDENTITY)
    files = write_dicom_series(
        img, tmp_path / "out", series_uid=series_uid, study_uid=study_uid, modality="CT", description="liver"
    )
    sops = set()
    for k, path in enumerate(files):
        ds = pydicom.dcmread(path)
        assert ds.SOPClassUID == CTImageStorage
        assert ds.Modality == "CT"
        assert ds.SeriesDescription == "liver"
        assert ds.SeriesInstanceUID == series_uid
        assert ds.StudyInstanceUID == study_uid
        assert int(ds.InstanceNumber) == k + 1
        assert [float(v) for v in ds.PixelSpacing] == [0.8, 0.7]  # row spacing (y), column spacing (x)
        assert float(ds.SliceThickness) == pytest.approx(2.5)
        assert float(ds.SpacingBetweenSlices) == pytest.approx(2.5)
        np.testing.assert_allclose([float(v) for v in ds.ImageOrientationPatient], [1, 0, 0, 0, 1, 0])
        want = np.asarray(ORIGIN) + np.array([0, 0, 2.5 * k])
        np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient], want, atol=1e-9)
        assert ds.ContentDate and ds.SeriesDate
        sops.add(ds.SOPInstanceUID)
    assert len(sops) == len(files)

    ot = write_dicom_series(img, tmp_path / "ot")
    ds = pydicom.dcmread(ot[0], stop_before_pixels=True)
    assert ds.Modality == "OT"
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture
    assert ds.SeriesInstanceUID != series_uid


def test_overwrite_replaces_old_slices(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_dicom_series(_volume(np.int16, size=(4, 4, 5)), out)
    (out / "notes.txt").write_text("keep me")
    smaller = _volume(np.uint16, size=(4, 4, 3))
    files = write_dicom_series(smaller, out)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"] + [f.name for f in files]
    _assert_same(read_dicom_series(out), smaller)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folders left


# --------------------------------------------------------------------------- independent pydicom reference


def _ds_str(v: float) -> str:
    return format_number_as_ds(float(v))


def _make_reference_series(folder: Path) -> list[Dataset]:
    """A 3-slice CT series built with pydicom alone; files written in shuffled order with shuffled names."""
    folder.mkdir()
    rows, cols, n = 4, 5, 3
    row_dir = (np.cos(np.radians(30)), np.sin(np.radians(30)), 0.0)
    col_dir = (0.0, 0.0, -1.0)
    iop = [_ds_str(v) for v in (*row_dir, *col_dir)]
    normal = np.cross([float(v) for v in iop[:3]], [float(v) for v in iop[3:]])
    first = np.array([-100.5, 20.25, 60.0])
    series_uid, study_uid = generate_uid(), generate_uid()
    datasets = []
    for k in range(n):
        stored = 500 + 700 * k + 37 * np.arange(rows)[:, None] + 3 * np.arange(cols)[None, :]
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.Modality = "CT"
        ds.SeriesDescription = "reference"
        ds.PatientName = "Test^Reference"
        ds.PatientID = "REF"
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [_ds_str(v) for v in first + 3.0 * k * normal]
        ds.ImageOrientationPatient = iop
        ds.PixelSpacing = ["0.9", "0.6"]  # between rows, between columns
        ds.SliceThickness = "2.0"  # deliberately not the 3.0 mm between slice positions
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        ds.PixelRepresentation = 0
        ds.RescaleSlope = "1"
        ds.RescaleIntercept = "-1024"
        ds.RescaleType = "HU"
        ds.PixelData = stored.astype("<u2").tobytes()
        datasets.append(ds)
    rng = np.random.default_rng(7)
    for i in rng.permutation(n):
        pydicom.dcmwrite(folder / f"{generate_uid()[-12:]}.dcm", datasets[i], enforce_file_format=True)
    return datasets


def test_read_matches_hand_made_pydicom_series(tmp_path: Path) -> None:
    datasets = _make_reference_series(tmp_path / "ref")

    # The expected image, worked out from the tags.
    iop = np.array([float(v) for v in datasets[0].ImageOrientationPatient])
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
    order = np.argsort(positions @ normal)  # slices sorted along the normal
    row_spacing, col_spacing = (float(v) for v in datasets[0].PixelSpacing)
    slice_gap = np.diff((positions @ normal)[order])
    np.testing.assert_allclose(slice_gap, 3.0, atol=1e-6)
    want_spacing = (col_spacing, row_spacing, slice_gap[0])  # x runs along a row, y down a column
    want_origin = positions[order[0]]
    want_direction = np.column_stack([row_dir, col_dir, normal])
    slope, intercept = float(datasets[0].RescaleSlope), float(datasets[0].RescaleIntercept)
    stored = np.stack([datasets[i].pixel_array for i in order])  # (z, rows=y, cols=x)
    want_hu = (stored.astype(np.int32) * slope + intercept).transpose(2, 1, 0)  # (x, y, z)

    got = from_sitk(read_dicom_series(tmp_path / "ref"))
    assert got.spatial_shape == (5, 4, 3)
    np.testing.assert_allclose(got.geometry.spacing, want_spacing, rtol=0, atol=1e-4)
    np.testing.assert_allclose(got.geometry.origin, want_origin, rtol=0, atol=1e-4)
    np.testing.assert_allclose(got.geometry.direction_matrix, want_direction, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(got.array[0], want_hu)
    assert got.array.min() < 0  # really Hounsfield units, not the stored values
    assert got.array[0, 1, 2, 0] == 500 + 37 * 2 + 3 * 1 - 1024

    (info,) = list_series(tmp_path / "ref")
    assert info == SeriesInfo(
        uid=datasets[0].SeriesInstanceUID,
        description="reference",
        modality="CT",
        num_files=3,
        files=info.files,
    )
    # list_series gives the files in slice order.
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in info.files]
    listed_positions = [[float(v) for v in ds.ImagePositionPatient] for ds in headers]
    np.testing.assert_allclose(listed_positions, positions[order], atol=1e-9)


# ------------------------------------------------------------------------------------------ several series


def test_two_series_in_one_folder(tmp_path: Path) -> None:
    first = _volume(np.int16, size=(4, 3, 4), direction=IDENTITY)
    second = _volume(np.uint16, size=(3, 3, 2))
    write_dicom_series(first, tmp_path / "a", description="first", modality="CT")
    write_dicom_series(second, tmp_path / "b", description="second")
    both = tmp_path / "both"
    both.mkdir()
    for sub in ("a", "b"):
        for f in (tmp_path / sub).iterdir():
            shutil.move(f, both / f"{sub}_{f.name}")

    found = {s.description: s for s in list_series(both)}
    assert set(found) == {"first", "second"}
    assert (found["first"].num_files, found["first"].modality) == (4, "CT")
    assert (found["second"].num_files, found["second"].modality) == (2, "OT")
    assert all(Path(f).name.startswith("a_") for f in found["first"].files)
    assert len(found["second"].files) == 2

    with pytest.raises(VesaliusError) as err:
        read_dicom_series(both)
    text = str(err.value)
    assert found["first"].uid in text and found["second"].uid in text
    assert "--series-uid" in text and str(both) in text

    _assert_same(read_dicom_series(both, found["first"].uid), first)
    _assert_same(read_dicom_series(both, series_uid=found["second"].uid), second)

    with pytest.raises(VesaliusError) as err:
        read_dicom_series(both, "1.2.3.4.5")
    text = str(err.value)
    assert "1.2.3.4.5" in text and found["first"].uid in text and found["second"].uid in text


# ------------------------------------------------------------------------------------------------ errors


def test_empty_folder_raises(tmp_path: Path) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    assert list_series(folder) == []
    with pytest.raises(VesaliusError, match="no DICOM series found") as err:
        read_dicom_series(folder)
    assert str(folder) in str(err.value)
    assert err.value.remedy


def test_non_dicom_files_raise(tmp_path: Path) -> None:
    folder = tmp_path / "junk"
    folder.mkdir()
    (folder / "readme.txt").write_text("not an image")
    (folder / "fake.dcm").write_bytes(b"\x00\x01 definitely not DICOM " * 20)
    with pytest.raises(VesaliusError) as err:
        read_dicom_series(folder)
    assert str(folder) in str(err.value)


def test_missing_folder_raises(tmp_path: Path) -> None:
    with pytest.raises(VesaliusError) as err:
        read_dicom_series(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(err.value)


def test_float_image_is_refused(tmp_path: Path) -> None:
    img = sitk.Image([4, 4, 3], sitk.sitkFloat32)
    with pytest.raises(VesaliusError, match="integers") as err:
        write_dicom_series(img, tmp_path / "out")
    assert "int16" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_2d_image_is_refused(tmp_path: Path) -> None:
    with pytest.raises(VesaliusError, match="2D"):
        write_dicom_series(sitk.Image([4, 4], sitk.sitkInt16), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_missing_middle_slice_is_reported_not_skipped(tmp_path: Path) -> None:
    image = sitk.GetImageFromArray(np.arange(5 * 4 * 3, dtype=np.int16).reshape(5, 4, 3))
    image.SetSpacing((0.5, 0.5, 2.0))
    files = write_dicom_series(image, tmp_path / "series")
    data = files[2].read_bytes()
    files[2].write_bytes(data[: len(data) // 3])  # truncated: GDCM leaves it out of the series
    with pytest.raises(VesaliusError, match="gap") as info:
        read_dicom_series(tmp_path / "series")
    assert str(tmp_path / "series") in str(info.value)
