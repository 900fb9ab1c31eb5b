"""Uploads: real bytes of every accepted format recognised without a name, limits, hostile zips, header-only checks."""

from __future__ import annotations

import asyncio
import hashlib
import io
import stat
import struct
import zipfile
import zlib
from collections.abc import AsyncIterator, Coroutine, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk

from vesalius.errors import VesaliusError
from vesalius.io import read_image
from vesalius.io.dicom import write_dicom_series
from vesalius.serving import uploads
from vesalius.serving.uploads import ACCEPTED, Limits, Upload, UploadError, check_voxels, receive

SMALL = Limits(max_upload_bytes=1 << 20, max_zip_members=16, max_unzipped_bytes=8 << 20, max_voxels=10_000)


async def _stream(data: bytes, size: int, taken: list[int]) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        taken.append(start)
        yield data[start : start + size]


def run(coroutine: Coroutine[Any, Any, Upload]) -> Upload:
    """Run ``coroutine`` to its end in a thread of its own: the thread running the tests may hold an event loop
    already (Playwright's synchronous API keeps one for the browser tests)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def _receive(
    data: bytes, folder: Path, limits: Limits = Limits(), declared: int | None = None, chunk: int = 4096
) -> Upload:
    return run(receive(_stream(data, chunk, []), folder, limits, declared))


def _refused(data: bytes, folder: Path, limits: Limits = Limits(), declared: int | None = None) -> UploadError:
    """The error receiving ``data`` raises; it names no server path and leaves nothing behind in ``folder``."""
    with pytest.raises(UploadError) as caught:
        _receive(data, folder, limits, declared)
    _check_message(caught.value, folder)
    assert not folder.exists() or not any(folder.iterdir()), sorted(folder.iterdir())
    return caught.value


def _check_message(error: UploadError, folder: Path) -> None:
    assert "\n" not in error.message and "Traceback" not in error.message
    assert str(folder.parent) not in error.message and "/tmp" not in error.message


def _written(tmp_path: Path, suffix: str, image: sitk.Image) -> bytes:
    source = tmp_path / f"source{suffix}"
    sitk.WriteImage(image, str(source), useCompression=suffix == ".mha")
    return source.read_bytes()


def _volume(shape: tuple[int, int, int] = (6, 5, 4), seed: int = 0) -> sitk.Image:
    array = np.random.default_rng(seed).integers(-1000, 1000, size=shape[::-1], dtype=np.int16)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.7, 0.8, 2.5))
    image.SetOrigin((-10.0, 20.0, 30.0))
    return image


def _picture(seed: int = 0) -> sitk.Image:
    return sitk.GetImageFromArray(np.random.default_rng(seed).integers(0, 255, size=(7, 6), dtype=np.uint8))


@pytest.mark.parametrize(
    ("suffix", "kind", "stored", "picture"),
    [
        (".nii.gz", "nifti", "input.nii.gz", False),
        (".nii", "nifti", "input.nii", False),
        (".nrrd", "nrrd", "input.nrrd", False),
        (".mha", "metaimage", "input.mha", False),
        (".png", "png", "input.png", True),
        (".jpg", "jpeg", "input.jpg", True),
    ],
)
def test_each_format_is_recognised_by_its_bytes_and_reads_back(
    tmp_path: Path, suffix: str, kind: str, stored: str, picture: bool
) -> None:
    image = _picture() if picture else _volume()
    data = _written(tmp_path, suffix, image)
    upload = _receive(data, tmp_path / "job", declared=len(data))
    assert (upload.kind, upload.path, upload.size_bytes) == (kind, tmp_path / "job" / stored, len(data))
    assert upload.sha256 == hashlib.sha256(data).hexdigest()
    assert sorted(p.name for p in (tmp_path / "job").iterdir()) == [stored]  # upload.bin renamed, nothing else
    assert check_voxels(upload) == image.GetSize()
    if kind != "jpeg":  # lossy
        np.testing.assert_array_equal(read_image(upload.path).array[0], sitk.GetArrayFromImage(image).T)


def test_nifti2_is_recognised_and_refused(tmp_path: Path) -> None:
    nibabel = pytest.importorskip("nibabel")
    array = np.arange(6 * 5 * 4, dtype=np.int16).reshape(6, 5, 4)
    nibabel.save(nibabel.Nifti2Image(array, np.diag([0.7, 0.8, 2.5, 1.0])), tmp_path / "two.nii.gz")
    error = _refused((tmp_path / "two.nii.gz").read_bytes(), tmp_path / "job")
    assert error.status == 415 and "NIfTI-2" in error.message


@pytest.mark.parametrize(
    ("data", "status", "words"),
    [
        (np.random.default_rng(1).bytes(5000), 415, ACCEPTED),
        (b"patient: John Doe\nthis is a plain text file\n" * 20, 415, ACCEPTED),
        (zlib.compress(b"hello " * 1000, wbits=31), 415, "not a NIfTI image"),
        (b"\x1f\x8b\x08\x00" + b"\x00" * 6 + b"\xff" * 300, 422, "corrupt gzip"),
        (b"ObjectType = Image\nNDims = 3\nDimSize = 4 4 4\nElementDataFile = voxels.raw\n", 422, "detached MetaImage"),
        (b"NRRD0004\ntype: short\ndimension: 1\nsizes: 4\ndata file: voxels.raw\n\n", 422, "detached NRRD"),
        (b"", 400, "empty"),
    ],
)
def test_unaccepted_content_is_refused_in_one_line(tmp_path: Path, data: bytes, status: int, words: str) -> None:
    error = _refused(data, tmp_path / "job")
    assert error.status == status
    assert words in error.message


def test_truncated_and_paired_nifti_are_refused(tmp_path: Path) -> None:
    data = _written(tmp_path, ".nii.gz", _volume())
    error = _refused(data[:40], tmp_path / "job")
    assert (error.status, "truncated" in error.message) == (422, True)
    nifti = bytearray(_written(tmp_path, ".nii", _volume()))
    nifti[344:348] = b"ni1\0"  # the header of a .hdr/.img pair: its voxels would be in a second file
    error = _refused(bytes(nifti), tmp_path / "job")
    assert (error.status, ".img" in error.message) == (422, True)


def test_declared_length_over_the_limit_is_refused_before_reading(tmp_path: Path) -> None:
    taken: list[int] = []
    with pytest.raises(UploadError) as caught:
        run(receive(_stream(b"x" * 100, 10, taken), tmp_path / "job", SMALL, 2 << 20))
    assert caught.value.status == 413 and "1 MiB" in caught.value.message
    assert taken == [] and not (tmp_path / "job").exists()


def test_streamed_length_over_the_limit_stops_reading_and_removes_the_partial_file(tmp_path: Path) -> None:
    taken: list[int] = []
    data = _written(tmp_path, ".nrrd", _volume()) + b"\0" * (3 << 20)
    with pytest.raises(UploadError) as caught:
        run(receive(_stream(data, 64 << 10, taken), tmp_path / "job", SMALL, None))  # no Content-Length
    assert caught.value.status == 413
    assert len(taken) == 17  # 16 chunks fill the megabyte, the 17th passes it: nothing more is read
    assert list((tmp_path / "job").iterdir()) == []


def test_a_body_cut_off_leaves_nothing(tmp_path: Path) -> None:
    async def cut() -> AsyncIterator[bytes]:
        yield b"\x89PNG\r\n\x1a\n" + b"\0" * 1000
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        run(receive(cut(), tmp_path / "job"))
    assert list((tmp_path / "job").iterdir()) == []


def test_an_unreadable_header_is_422_without_server_paths(tmp_path: Path) -> None:
    upload = _receive(b"NRRD0004\ntype: nonsense\ndimension: 3\n\nxx", tmp_path / "job")
    assert upload.kind == "nrrd"
    with pytest.raises(UploadError) as caught:
        check_voxels(upload)
    assert caught.value.status == 422 and caught.value.message.startswith("not a readable image: ")
    assert "nonsense" in caught.value.message and "input.nrrd" not in caught.value.message
    _check_message(caught.value, tmp_path / "job")


def test_a_huge_header_is_refused_before_any_voxel_is_allocated(tmp_path: Path) -> None:
    header = b"NRRD0004\ntype: short\ndimension: 3\nsizes: 100000 100000 100000\nendian: little\nencoding: raw\n\n"
    upload = _receive(header + b"\0" * 16, tmp_path / "job")  # 2 PB declared: any allocation would fail loudly
    with pytest.raises(UploadError) as caught:
        check_voxels(upload)
    assert caught.value.status == 413 and "100000 x 100000 x 100000" in caught.value.message
    data = _written(tmp_path, ".png", _picture())
    with pytest.raises(UploadError, match="more than the limit of 41"):
        check_voxels(_receive(data, tmp_path / "job2"), Limits(max_voxels=41))  # 6 x 7 = 42 voxels


def test_limits_must_be_positive() -> None:
    with pytest.raises(VesaliusError, match="max_zip_ratio"):
        Limits(max_zip_ratio=0)


# -- DICOM series in a zip -------------------------------------------------------------------------------------------


def _series(folder: Path, seed: int = 0, uid: str | None = None) -> list[Path]:
    image = _volume((6, 5, 4), seed)
    image.SetDirection(np.eye(3).ravel().tolist())
    return write_dicom_series(image, folder, series_uid=uid, modality="CT")


def _zip(members: Iterable[tuple[str | zipfile.ZipInfo, bytes]], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data in members:
            archive.writestr(name, data)
    return buffer.getvalue()


def test_a_zipped_series_is_extracted_flat_and_reads_as_the_original(tmp_path: Path) -> None:
    files = _series(tmp_path / "series")
    nested = _zip([("inner/slice.dcm", files[0].read_bytes())])
    data = _zip(
        [
            ("study/", b""),
            *((f"study/CT/{f.name}", f.read_bytes()) for f in files),
            ("__MACOSX/study/CT/._slice_0000.dcm", b"\0\5\26\7" + b"\0" * 60),
            ("study/README.txt", b"exported by the scanner\n"),
            ("study/DICOMDIR.zip", nested),  # a nested zip: not opened
        ]
    )
    upload = _receive(data, tmp_path / "job")
    assert (upload.kind, upload.path, upload.sha256) == (
        "dicom",
        tmp_path / "job" / "dicom",
        hashlib.sha256(data).hexdigest(),
    )
    assert sorted(p.name for p in upload.path.iterdir()) == ["0001.dcm", "0002.dcm", "0003.dcm", "0004.dcm"]
    assert sorted(p.name for p in (tmp_path / "job").iterdir()) == ["dicom"]  # the zip itself is gone
    assert check_voxels(upload) == (6, 5, 4)
    np.testing.assert_array_equal(read_image(upload.path).array, read_image(tmp_path / "series").array)
    with pytest.raises(UploadError, match="120 values"):
        check_voxels(upload, Limits(max_voxels=119))


def _symlink(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize(
    ("member", "words"),
    [
        ("../evil.dcm", "'..'"),
        ("study/../../evil.dcm", "'..'"),
        ("/abs.dcm", "absolute"),
        ("C:\\Windows\\evil.dcm", "absolute"),
        (_symlink("link.dcm"), "symbolic link"),
    ],
)
def test_unsafe_zip_members_refuse_the_whole_zip(tmp_path: Path, member: str | zipfile.ZipInfo, words: str) -> None:
    files = _series(tmp_path / "series")
    data = _zip([(f.name, f.read_bytes()) for f in files] + [(member, files[0].read_bytes())])
    error = _refused(data, tmp_path / "job")
    assert error.status == 422 and words in error.message
    assert not (tmp_path / "evil.dcm").exists() and not Path("/abs.dcm").exists()


def test_an_encrypted_member_refuses_the_whole_zip(tmp_path: Path) -> None:
    files = _series(tmp_path / "series")
    data = bytearray(_zip([(f.name, f.read_bytes()) for f in files]))
    at = data.rfind(b"PK\x01\x02")  # the last central directory entry: its flags at byte 8 (bit 0: encrypted)
    data[at + 8] |= 0x1
    error = _refused(bytes(data), tmp_path / "job")
    assert error.status == 422 and "encrypted" in error.message


def test_a_zip_bomb_is_refused(tmp_path: Path) -> None:
    data = _zip([("bomb.dcm", b"\0" * (50 << 20))])  # 50 MB of zeros deflate to about 50 KB
    assert len(data) < 100_000
    error = _refused(data, tmp_path / "job")
    assert error.status == 413 and "compressed over 200 times" in error.message
    error = _refused(data, tmp_path / "job", Limits(max_unzipped_bytes=10 << 20, max_zip_ratio=1e6))
    assert error.status == 413 and "unpacks to more than the limit of 10 MiB" in error.message


def test_the_bytes_really_unzipped_are_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Should the declared sizes pass (here: the check of them is switched off), counting stops the extraction."""
    monkeypatch.setattr(uploads, "_members", lambda infos, _limits: [i for i in infos if not i.is_dir()])
    data = _zip([("bomb.dcm", b"\0" * (50 << 20))])
    error = _refused(data, tmp_path / "job")
    assert error.status == 413 and "compressed over 200 times" in error.message
    error = _refused(data, tmp_path / "job", Limits(max_unzipped_bytes=4 << 20, max_zip_ratio=1e6))
    assert error.status == 413 and "unpacks to more than the limit of 4 MiB" in error.message


def test_a_member_whose_header_understates_its_size_is_damaged(tmp_path: Path) -> None:
    files = _series(tmp_path / "series")
    data = bytearray(_zip([(f.name, f.read_bytes()) for f in files]))
    at = data.find(b"PK\x01\x02")  # the first central directory entry: its uncompressed size at byte 24
    struct.pack_into("<L", data, at + 24, 100)
    error = _refused(bytes(data), tmp_path / "job")
    assert error.status == 422 and "damaged" in error.message


@pytest.mark.parametrize("entries", [17, 40])
def test_too_many_members_are_refused(tmp_path: Path, entries: int) -> None:
    data = _zip([(f"{k}.txt", b"x") for k in range(entries)])
    error = _refused(data, tmp_path / "job", SMALL)
    assert error.status == 413 and "more than" in error.message and "16" in error.message


def test_two_series_are_refused(tmp_path: Path) -> None:
    first, second = _series(tmp_path / "a", 0), _series(tmp_path / "b", 1)
    data = _zip([(f"a/{f.name}", f.read_bytes()) for f in first] + [(f"b/{f.name}", f.read_bytes()) for f in second])
    error = _refused(data, tmp_path / "job")
    assert (error.status, error.message) == (422, "the zip holds 2 series; send one")


@pytest.mark.parametrize(
    "data",
    [
        _zip([("notes.txt", b"no images here\n"), ("scan.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 100)]),
        _zip([]),  # an empty zip is only its end record
    ],
)
def test_a_zip_without_dicom_is_refused(tmp_path: Path, data: bytes) -> None:
    error = _refused(data, tmp_path / "job")
    assert error.status == 422 and "no DICOM" in error.message


def test_a_truncated_zip_is_refused(tmp_path: Path) -> None:
    files = _series(tmp_path / "series")
    data = _zip([(f.name, f.read_bytes()) for f in files])
    error = _refused(data[: len(data) // 2], tmp_path / "job")
    assert error.status == 422 and "not a readable zip" in error.message
