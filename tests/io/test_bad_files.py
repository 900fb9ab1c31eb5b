"""Bad image files: invalid geometry, headers that declare more than the file holds, DICOM without a frame of
reference. Each is a one-line :class:`VesaliusError` naming the file and saying what to do."""

from __future__ import annotations

import json
import struct
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

from vesalius.errors import VesaliusError
from vesalius.io import read_image, write_image
from vesalius.io.read_write import COMPRESSION_RATIO_LIMIT, max_voxels


def _refused(path: Path, match: str) -> VesaliusError:
    with pytest.raises(VesaliusError, match=match) as info:
        read_image(path)
    error = info.value
    assert error.file is not None and Path(error.file) == path
    assert error.remedy, "the error says what to do"
    assert "\n" not in error.one_line()
    return error


def _patch_nifti(path: Path, *, pixdim: dict[int, float] | None = None, srow: list[float] | None = None) -> Path:
    data = bytearray(path.read_bytes())
    if pixdim:
        values = list(struct.unpack("<8f", data[76:108]))
        for i, v in pixdim.items():
            values[i] = v
        data[76:108] = struct.pack("<8f", *values)
    if srow is not None:
        data[280:328] = struct.pack("<12f", *srow)
    path.write_bytes(bytes(data))
    return path


@pytest.fixture
def nii(tmp_path: Path, make) -> Path:
    return write_image(make.volume(0), tmp_path / "v.nii", compress=False)


@pytest.mark.parametrize("value", [0.0, -2.0, float("nan"), float("inf")])
def test_nifti_invalid_pixdim_is_refused(nii, value):
    # SimpleITK 2.5 reads 0/NaN/Inf as 1 mm and a negative pixdim as a flipped axis, without a word
    _refused(_patch_nifti(nii, pixdim={1: value}), "spacing")


@pytest.mark.parametrize(
    ("srow", "match"),
    [
        ([float("nan"), 0, 0, 0, 0, 0.8, 0, 0, 0, 0, 2.5, 0], "NaN"),
        ([0.7, 0.5, 0, 0, 0, 0.8, 0, 0, 0, 0, 2.5, 0], "sheared"),
        ([0, 0, 0, 0, 0, 0.8, 0, 0, 0, 0, 2.5, 0], "degenerate"),
    ],
)
def test_nifti_invalid_sform_is_refused(nii, srow, match):
    _refused(_patch_nifti(nii, srow=srow), match)


def _nrrd(path: Path, directions: str, sizes: str = "2 3 4", data: bytes | None = None, encoding: str = "raw") -> Path:
    header = (
        f"NRRD0004\ntype: uint8\ndimension: 3\nspace: left-posterior-superior\nsizes: {sizes}\n"
        f"space directions: {directions}\nkinds: domain domain domain\nencoding: {encoding}\n"
        "space origin: (0,0,0)\n\n"
    )
    path.write_bytes(header.encode() + (bytes(24) if data is None else data))
    return path


@pytest.mark.parametrize(
    ("directions", "match"),
    [
        ("(0,0,0) (0,1,0) (0,0,1)", "spacing|direction"),
        ("(1,0,0) (1,1,0) (0,0,1)", "not orthonormal"),
        ("(1,0,0) (1,0,0) (0,0,1)", "not orthonormal|cannot read"),
        ("(nan,0,0) (0,1,0) (0,0,1)", "cannot read"),
    ],
)
def test_nrrd_invalid_geometry_is_refused(tmp_path, directions, match):
    _refused(_nrrd(tmp_path / "g.nrrd", directions), match)


def test_nrrd_negative_direction_is_a_flip_not_an_error(tmp_path):
    image = read_image(_nrrd(tmp_path / "flip.nrrd", "(-2,0,0) (0,1,0) (0,0,1)"))
    assert image.geometry.spacing == (2.0, 1.0, 1.0)
    assert image.geometry.direction[0] == -1.0


def _mha(path: Path, spacing: str = "1 1 1", matrix: str = "1 0 0 0 1 0 0 0 1", dims: str = "2 3 4") -> Path:
    header = (
        "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
        f"TransformMatrix = {matrix}\nOffset = 0 0 0\nElementSpacing = {spacing}\nDimSize = {dims}\n"
        "ElementType = MET_UCHAR\nElementDataFile = LOCAL\n"
    )
    path.write_bytes(header.encode() + bytes(24))
    return path


@pytest.mark.parametrize(
    ("spacing", "matrix", "match"),
    [
        ("-2 1 1", "1 0 0 0 1 0 0 0 1", "spacing"),
        ("0 1 1", "1 0 0 0 1 0 0 0 1", "spacing"),
        ("1 1 1", "1 0 0 1 1 0 0 0 1", "not orthonormal"),
    ],
)
def test_metaimage_invalid_geometry_is_refused(tmp_path, spacing, matrix, match):
    _refused(_mha(tmp_path / "g.mha", spacing, matrix), match)


# ------------------------------------------------------------------------------------------- sizes


def test_header_declaring_more_than_an_uncompressed_file_holds(tmp_path):
    # 250 KB of data declaring 10^9 voxels: refused from the header, before ITK allocates anything
    path = _nrrd(tmp_path / "big.nrrd", "(1,0,0) (0,1,0) (0,0,1)", "1000 1000 1000", bytes(250_000))
    _refused(path, "declares 1,000,000,000 bytes")
    mha = _mha(tmp_path / "big.mha", dims="1000 1000 1000")
    _refused(mha, "truncated MetaImage")


def test_nifti_gz_declaring_an_impossible_ratio(tmp_path, make):
    path = write_image(make.volume(0, np.uint8), tmp_path / "v.nii.gz")
    import gzip

    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[40:56] = struct.pack("<8h", 3, 1000, 1000, 1000, 1, 1, 1, 1)  # 10^9 voxels in a few hundred bytes
    path.write_bytes(gzip.compress(bytes(raw)))
    error = _refused(path, f"over {COMPRESSION_RATIO_LIMIT} times")
    assert "corrupt" in error.one_line()


def test_empty_label_map_in_nii_gz_is_not_refused_by_the_ratio(tmp_path, make):
    # deflate compresses zeros about 1030:1, which a ratio limit of 1000 would have refused
    label = make.label(0, (0, 1), shape=(256, 256, 64))
    label.array[:] = 0
    path = write_image(label, tmp_path / "empty.nii.gz")
    import gzip

    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes()), compresslevel=9))
    assert label.array.size / path.stat().st_size > 990  # zlib at its best: next to a 1000:1 limit
    assert read_image(path).array.shape == (1, 256, 256, 64)


def test_voxel_limit_from_the_environment(tmp_path, make, monkeypatch):
    path = write_image(make.volume(0), tmp_path / "v.nii.gz")
    monkeypatch.setenv("VESALIUS_MAX_VOXELS", "100")
    assert max_voxels() == 100
    error = _refused(path, "more than the limit of 100")
    assert "VESALIUS_MAX_VOXELS" in error.one_line()
    monkeypatch.setenv("VESALIUS_MAX_VOXELS", "lots")
    with pytest.raises(VesaliusError, match="VESALIUS_MAX_VOXELS='lots'"):
        read_image(path)
    monkeypatch.delenv("VESALIUS_MAX_VOXELS")
    assert max_voxels() == 2**31


# ------------------------------------------------------------------------------------------- DICOM


@pytest.fixture
def series(tmp_path: Path, make) -> Path:
    import SimpleITK as sitk

    from vesalius.io.dicom import write_dicom_series

    folder = tmp_path / "series"
    image = sitk.GetImageFromArray(np.arange(60, dtype=np.int16).reshape(3, 4, 5))
    write_dicom_series(image, folder)
    return folder


def _edit_dicom(folder: Path, **tags: object) -> None:
    for f in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        for name, value in tags.items():
            if value is None:
                delattr(ds, name)
            else:
                setattr(ds, name, value)
        ds.save_as(f)


@pytest.mark.parametrize(
    ("tags", "match"),
    [
        ({"PixelSpacing": [0, 0]}, "PixelSpacing"),
        ({"PixelSpacing": [-1, 1]}, "PixelSpacing"),
        ({"ImageOrientationPatient": [1, 0, 0, 1, 0, 0]}, "ImageOrientationPatient"),
        ({"ImageOrientationPatient": [1, 0, 0, 0.5, 0.5, 0]}, "ImageOrientationPatient"),
    ],
)
def test_dicom_invalid_geometry_tags(series, tags, match):
    _edit_dicom(series, **tags)
    _refused(series, match)


def test_dicom_series_over_the_voxel_limit(series, monkeypatch):
    monkeypatch.setenv("VESALIUS_MAX_VOXELS", "10")
    _refused(series, "more than the limit of 10")


def test_dicom_seg_of_a_series_without_frame_of_reference(series, tmp_path):
    from vesalius.io.dicom import list_series
    from vesalius.io.dicom_seg import write_dicom_seg

    _edit_dicom(series, FrameOfReferenceUID=None)
    before = {f.name: f.read_bytes() for f in series.iterdir()}
    image = read_image(series)
    labels = image.with_array((image.array % 3 == 0).astype(np.uint8))
    with pytest.warns(UserWarning, match="no Frame of Reference UID"):
        path = write_dicom_seg(labels, list_series(series)[0].files, tmp_path / "seg.dcm", {1: "lesion"})
    seg = pydicom.dcmread(path)
    assert seg.FrameOfReferenceUID
    assert {f.name: f.read_bytes() for f in series.iterdir()} == before, "the source series is not touched"


def test_dicom_seg_of_a_normal_series_does_not_warn(series, tmp_path):
    from vesalius.io.dicom import list_series
    from vesalius.io.dicom_seg import write_dicom_seg

    image = read_image(series)
    labels = image.with_array((image.array % 3 == 0).astype(np.uint8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_dicom_seg(labels, list_series(series)[0].files, tmp_path / "seg.dcm", {1: "lesion"})


def test_a_full_disk_leaves_the_previous_file_intact_and_says_so(tmp_path: Path, monkeypatch) -> None:
    import errno

    import torch

    from vesalius.errors import VesaliusError
    from vesalius.io.atomic import write_bytes_atomic, write_json_atomic
    from vesalius.model_package import save_checkpoint

    target = tmp_path / "summary.json"
    write_json_atomic(target, {"dice": 0.9})
    original = Path.write_bytes

    def full(self: Path, data: bytes) -> int:
        original(self, data[: len(data) // 2])  # half written, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(VesaliusError, match=r"disk is full \(the previous version is intact\)"):
        write_json_atomic(target, {"dice": 0.1})
    with pytest.raises(VesaliusError, match=r"nothing was written"):
        write_bytes_atomic(tmp_path / "new.csv", b"a,b\n")
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"dice": 0.9}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]  # no temporary file left

    checkpoint = tmp_path / "checkpoint_latest.pt"
    save_checkpoint(checkpoint, {"iteration": 1})

    def torch_full(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError(
            "[enforce fail at inline_container.cc] . PytorchStreamWriter failed writing file: No space left on device"
        )

    monkeypatch.setattr(torch, "save", torch_full)
    with pytest.raises(VesaliusError, match="disk is full"):
        save_checkpoint(checkpoint, {"iteration": 2})
    monkeypatch.undo()
    assert torch.load(checkpoint, weights_only=True) == {"iteration": 1}
