"""What a client uploads: received within limits, recognised by its bytes, stored where the image readers expect it.

An upload is untrusted bytes with no name (clients send no paths, and a name would not be believed), so:

* :func:`receive` streams the request body to ``upload.bin``, computing its SHA-256 on the way, and stops with
  ``413`` as soon as the declared or the received length passes ``max_upload_bytes``. It then recognises the
  content by its leading bytes (NIfTI-1, gzipped or not, NRRD, MetaImage ``.mha``, PNG, JPEG, a zip holding a
  DICOM series) and renames the file with the suffix by which SimpleITK and :func:`vesalius.io.read_image` choose
  their reader (``input.nii.gz``, ...), or extracts the DICOM series into ``dicom/``. Refused: NIfTI-2, which
  SimpleITK does not read, and formats that keep their voxels in a second file (NIfTI ``.hdr/.img``, ``.mhd``,
  detached NRRD), which cannot come in one body.
* A zip is extracted defensively: member paths are never used (the files become ``0001.dcm``, ``0002.dcm``, ...),
  yet a zip holding absolute paths, ``..``, symbolic links or encrypted members is refused whole; the number of
  members, the total unzipped size and the compression ratio are checked on the declared sizes first and again on
  the bytes actually decompressed, so a lying header gains nothing; nested zips and anything that is not a DICOM
  image are left out; the series must be exactly one.
* :func:`check_voxels` reads only the header and refuses an image larger than ``max_voxels`` before a single voxel
  is allocated (a 200-byte NRRD may declare 10^15 voxels).

Every refusal is an :class:`UploadError`: an HTTP status and a one-line message meant for the client, naming no
server path and quoting no traceback.
"""

from __future__ import annotations

import asyncio
import hashlib
import lzma
import math
import re
import shutil
import stat
import struct
import zipfile
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from vesalius.errors import VesaliusError

__all__ = ["ACCEPTED", "Limits", "Upload", "UploadError", "check_voxels", "receive"]

MiB = 1 << 20
GiB = 1 << 30
ACCEPTED = "NIfTI-1 (.nii, .nii.gz), NRRD (.nrrd), MetaImage (.mha), PNG, JPEG, or a zip of one DICOM series"
"""The accepted kinds, as the ``415`` answer lists them."""

Kind = Literal["nifti", "nrrd", "metaimage", "png", "jpeg", "dicom"]
_RAW_NAME = "upload.bin"
_DICOM_FOLDER = "dicom"
_STORED_NAMES = ("input.nii.gz", "input.nii", "input.nrrd", "input.mha", "input.png", "input.jpg", _DICOM_FOLDER)
_HEAD_BYTES = 1 << 16  # enough for any text header (NRRD, MetaImage) and every magic number
_NIFTI2_MAGIC = (b"n+2\0\r\n\x1a\n", b"ni2\0\r\n\x1a\n")  # at byte 4 of the 540-byte NIfTI-2 header
_NIFTI1_MAGIC = (b"n+1\0", b"ni1\0")  # at byte 344 of the 348-byte NIfTI-1 header
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a member first; an empty zip is only its end record
_EOCD = struct.Struct("<4s4H2LH")  # a zip's end of central directory record
_CENTRAL_BYTES_PER_MEMBER = 1024  # a generous bound on one central directory entry (name, extra field, comment)
_RATIO_FLOOR = MiB  # below this many unzipped bytes the compression ratio is not held against anything
_CHUNK = MiB


@dataclass(frozen=True)
class Limits:
    """What one upload may be.

    Attributes:
        max_upload_bytes: the request body.
        max_voxels: voxels x components of the image (512^3 by default: a large CT volume).
        max_zip_members: entries in a zip (one per DICOM slice, and a few more).
        max_unzipped_bytes: the members of a zip together, decompressed.
        max_zip_ratio: decompressed / compressed bytes, per member and in total (real DICOM compresses about 2-4:1;
            a zip bomb 1000:1 and more). Held only against more than 1 MiB of decompressed data.
    """

    max_upload_bytes: int = 512 * MiB
    max_voxels: int = 512**3
    max_zip_members: int = 4096
    max_unzipped_bytes: int = 2 * GiB
    max_zip_ratio: float = 200.0

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise VesaliusError(f"the upload limit {name}={value!r} must be a positive number")


class UploadError(Exception):
    """An upload refused: ``status`` (400, 413, 415 or 422) and ``message``, one line fit to show the client."""

    def __init__(self, status: Literal[400, 413, 415, 422], message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(message)


@dataclass(frozen=True)
class Upload:
    """An upload received and stored.

    Attributes:
        kind: ``"nifti"`` (``.nii`` or ``.nii.gz``), ``"nrrd"``, ``"metaimage"``, ``"png"``, ``"jpeg"`` or ``"dicom"``.
        path: what :func:`vesalius.io.read_image` reads: the stored file, or the ``dicom/`` folder of the series.
        sha256: of the bytes as uploaded (for a DICOM series, the zip's).
        size_bytes: how many bytes were uploaded.
    """

    kind: Kind
    path: Path
    sha256: str
    size_bytes: int


def _too_large(limit: int) -> UploadError:
    return UploadError(413, f"the upload is larger than the limit of {_amount(limit)}")


def _amount(n: float) -> str:
    return f"{n / GiB:g} GiB" if n >= GiB else f"{n / MiB:g} MiB" if n >= MiB else f"{n:g} bytes"


async def receive(
    chunks: AsyncIterator[bytes], folder: Path, limits: Limits = Limits(), declared_length: int | None = None
) -> Upload:
    """Store a request body in ``folder`` (a fresh folder for this upload) and recognise what it holds.

    Args:
        chunks: the body as it arrives (e.g. Starlette's ``request.stream()``).
        folder: where the upload goes: ``upload.bin`` while it arrives, then ``input.<suffix>`` or ``dicom/``.
        limits: the limits that apply.
        declared_length: the request's ``Content-Length``, if it gave one.

    Raises:
        UploadError: ``400`` an empty body; ``413`` too large (declared, sent, or unzipped); ``415`` not an
            accepted kind; ``422`` an accepted kind that is damaged, detached, or an unusable zip. Whatever was
            written is deleted first, as it is on any other error (a client that disconnects, a full disk).

    Receiving writes to the disk from the event loop (chunk by chunk, which the page cache absorbs); recognising
    and unzipping, which take longer, run in a worker thread.
    """
    if declared_length is not None and declared_length > limits.max_upload_bytes:
        raise _too_large(limits.max_upload_bytes)
    folder.mkdir(parents=True, exist_ok=True)
    raw = folder / _RAW_NAME
    digest, size = hashlib.sha256(), 0
    try:
        with raw.open("wb") as f:
            async for chunk in chunks:
                size += len(chunk)
                if size > limits.max_upload_bytes:
                    raise _too_large(limits.max_upload_bytes)
                digest.update(chunk)
                f.write(chunk)
        if size == 0:
            raise UploadError(400, f"the request body is empty; send the image itself: {ACCEPTED}")
        kind, path = await asyncio.to_thread(_store, raw, folder, limits)
    except BaseException:
        _remove_outputs(folder)
        raise
    return Upload(kind, path, digest.hexdigest(), size)


def _remove_outputs(folder: Path) -> None:
    for name in (_RAW_NAME, *_STORED_NAMES):
        target = folder / name
        if target.is_dir():
            shutil.rmtree(target, ignore_errors=True)
        else:
            target.unlink(missing_ok=True)


def _store(raw: Path, folder: Path, limits: Limits) -> tuple[Kind, Path]:
    """Recognise ``raw`` and move it where the readers expect it (or extract the DICOM series)."""
    with raw.open("rb") as f:
        head = f.read(_HEAD_BYTES)
    kind, name = _identify(raw, head)
    target = folder / name
    if kind == "dicom":
        _extract_dicom(raw, target, limits)
        raw.unlink()
    else:
        raw.replace(target)
    return kind, target


def _identify(raw: Path, head: bytes) -> tuple[Kind, str]:
    """The kind of the upload from its first bytes, and the name it is stored under."""
    if head.startswith(b"\x1f\x8b"):
        _check_gzipped_nifti(raw)
        return "nifti", "input.nii.gz"
    if _is_nifti(head):
        return "nifti", "input.nii"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png", "input.png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg", "input.jpg"
    if head.startswith(_ZIP_MAGIC):
        return "dicom", _DICOM_FOLDER
    if re.match(rb"NRRD000\d\r?\n", head):
        if re.search(rb"\n\s*data\s?file\s*:", head.split(b"\n\n", 1)[0], re.IGNORECASE):
            raise UploadError(422, "a detached NRRD header: its voxels are in other files; send a single .nrrd file")
        return "nrrd", "input.nrrd"
    fields = _metaimage_fields(head)
    if fields.get("objecttype", "").lower() == "image" and "elementdatafile" in fields:
        if fields["elementdatafile"].upper() != "LOCAL":
            raise UploadError(
                422, "a detached MetaImage header (.mhd): its voxels are in another file; send a single .mha file"
            )
        return "metaimage", "input.mha"
    raise UploadError(415, f"unsupported content: send {ACCEPTED}")


def _is_nifti(head: bytes) -> bool:
    """Whether ``head`` starts a single-file NIfTI-1 image; refuses NIfTI-2 (SimpleITK cannot read it) and the
    ``.hdr`` of a ``.hdr/.img`` pair."""
    if head[4:12] in _NIFTI2_MAGIC:
        raise UploadError(415, "NIfTI-2 cannot be read here; save the image as NIfTI-1 (.nii or .nii.gz)")
    magic = head[344:348]
    if magic == _NIFTI1_MAGIC[1]:
        raise UploadError(422, "a NIfTI .hdr whose voxels are in a separate .img file; send a .nii or .nii.gz")
    return magic == _NIFTI1_MAGIC[0]


def _check_gzipped_nifti(raw: Path) -> None:
    """Refuse a gzip stream that does not start with a NIfTI header; only its first 540 bytes are decompressed."""
    decompressor = zlib.decompressobj(wbits=31)
    out = b""
    try:
        with raw.open("rb") as f:
            while len(out) < 540 and not decompressor.eof:
                chunk = decompressor.unconsumed_tail or f.read(4096)
                if not chunk:
                    break
                out += decompressor.decompress(chunk, 540 - len(out))
    except zlib.error:
        raise UploadError(422, "corrupt gzip data: the upload is damaged; send the file again") from None
    if len(out) < 348 and not decompressor.eof:
        raise UploadError(422, "the gzip data ends early: the upload is truncated; send the whole file")
    if not _is_nifti(out):
        raise UploadError(415, f"gzip-compressed content that is not a NIfTI image; send {ACCEPTED}")


def _metaimage_fields(head: bytes) -> dict[str, str]:
    """The ``Key = Value`` lines a MetaImage header starts with, up to ``ElementDataFile``; ``{}`` when the bytes
    do not start that way."""
    fields: dict[str, str] = {}
    for line in head.split(b"\n"):
        key, sep, value = line.decode("latin-1").partition("=")
        if not sep or not re.fullmatch(r"\s*\w+\s*", key):
            return {}
        fields.setdefault(key.strip().lower(), value.strip())
        if key.strip().lower() == "elementdatafile":
            return fields
    return {}


def _extract_dicom(raw: Path, target: Path, limits: Limits) -> None:
    """Extract the DICOM files of the zip ``raw`` into ``target`` as ``0001.dcm``, ... (see the module notes)."""
    _check_central_directory(raw, limits)
    try:
        archive = zipfile.ZipFile(raw)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        raise UploadError(422, "not a readable zip file: the upload is damaged or truncated") from None
    series: list[str] = []  # the SeriesInstanceUID of each file kept
    with archive:
        members = _members(archive.infolist(), limits)
        target.mkdir()
        unzipped = compressed = 0
        for info in members:
            path = target / f"{len(series) + 1:04d}.dcm"
            unzipped += _extract_member(archive, info, path, limits, unzipped)
            compressed += info.compress_size
            _check_ratio(unzipped, compressed, limits.max_zip_ratio, "the zip")
            uid = _series_uid(path)
            if uid is None:
                path.unlink(missing_ok=True)
            else:
                series.append(uid)
    if not series:
        raise UploadError(422, "the zip holds no DICOM image files; send the files of one DICOM series")
    if len(set(series)) > 1:
        raise UploadError(422, f"the zip holds {len(set(series))} series; send one")


def _check_central_directory(raw: Path, limits: Limits) -> None:
    """Refuse, from the zip's end record alone, a zip with too many members, before :mod:`zipfile` builds an object
    for each (a 512 MiB upload could list ten million empty members)."""
    with raw.open("rb") as f:
        f.seek(0, 2)
        f.seek(max(0, f.tell() - (_EOCD.size + 0xFFFF)))
        tail = f.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < _EOCD.size:
        raise UploadError(422, "not a readable zip file: the upload is damaged or truncated")
    _, _, _, _, entries, directory_bytes, _, _ = _EOCD.unpack_from(tail, at)
    if entries > limits.max_zip_members or directory_bytes > limits.max_zip_members * _CENTRAL_BYTES_PER_MEMBER:
        raise UploadError(413, f"the zip holds more than {limits.max_zip_members} members")


def _members(infos: list[zipfile.ZipInfo], limits: Limits) -> list[zipfile.ZipInfo]:
    """The members worth extracting, after refusing a zip with unsafe entries or too much declared content."""
    if len(infos) > limits.max_zip_members:
        raise UploadError(413, f"the zip holds {len(infos)} members, more than the limit of {limits.max_zip_members}")
    for info in infos:
        parts = info.filename.replace("\\", "/").split("/")
        if info.filename.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", info.filename) or ".." in parts:
            raise UploadError(422, "the zip holds a member with an absolute path or '..'; send a plain zip")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise UploadError(422, "the zip holds a symbolic link; send a zip of plain files")
        if info.flag_bits & 0x1:
            raise UploadError(422, "the zip holds encrypted members; send it without a password")
    members = [i for i in infos if not i.is_dir() and not i.filename.startswith("__MACOSX/")]
    declared = sum(i.file_size for i in members)
    if declared > limits.max_unzipped_bytes:
        raise UploadError(413, f"the zip unpacks to more than the limit of {_amount(limits.max_unzipped_bytes)}")
    for info in members:
        _check_ratio(info.file_size, info.compress_size, limits.max_zip_ratio, "a zip member")
    _check_ratio(declared, sum(i.compress_size for i in members), limits.max_zip_ratio, "the zip")
    return members


def _check_ratio(unzipped: int, compressed: int, limit: float, what: str) -> None:
    if unzipped > _RATIO_FLOOR and unzipped > limit * max(compressed, 1):
        raise UploadError(413, f"{what} is compressed over {limit:g} times (a zip bomb?); send the plain series")


def _extract_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path, limits: Limits, before: int) -> int:
    """Write the member ``info`` to ``path`` counting the bytes really decompressed, and return their number; a
    nested zip is not written. ``before``: the bytes the earlier members unzipped to."""
    written = 0
    with path.open("wb") as sink:
        for chunk in _decompressed(archive, info):
            if written == 0 and chunk.startswith(_ZIP_MAGIC):
                break  # a zip inside the zip: not opened
            written += len(chunk)
            if before + written > limits.max_unzipped_bytes:
                raise UploadError(
                    413, f"the zip unpacks to more than the limit of {_amount(limits.max_unzipped_bytes)}"
                )
            _check_ratio(written, info.compress_size, limits.max_zip_ratio, "a zip member")
            sink.write(chunk)
    return written


def _decompressed(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> Iterator[bytes]:
    """The member's bytes, a megabyte at a time; a damaged member (CRC, truncated, bad stream) is a ``422``."""
    try:
        with archive.open(info) as source:
            while chunk := source.read(_CHUNK):
                yield chunk
    except NotImplementedError:
        raise UploadError(422, "a member of the zip uses an unsupported compression; send a deflated zip") from None
    except (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, OSError):  # bz2 reports bad data as OSError
        raise UploadError(422, "a member of the zip is damaged; send the series again") from None


def _series_uid(path: Path) -> str | None:
    """The SeriesInstanceUID of a DICOM image file (``""`` when it has none); ``None`` when ``path`` is not one (no
    SOPClassUID: not DICOM, or a DICOMDIR)."""
    import pydicom

    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        if "SOPClassUID" not in dataset:
            return None
        return str(dataset.get("SeriesInstanceUID", "") or "")
    except Exception:  # pydicom reading arbitrary bytes fails in many ways, and all mean "not DICOM"
        return None


def check_voxels(upload: Upload, limits: Limits = Limits()) -> tuple[int, ...]:
    """The image's size (ITK order: x, y[, z]), read from its header only; refuses it when it holds more voxels
    (times components) than ``limits.max_voxels``, before any voxel is allocated.

    A DICOM series counts Rows x Columns x frames x samples of every file and answers
    ``(Columns, Rows, total frames)`` of its first file's size.

    Raises:
        UploadError: ``413`` too many voxels; ``422`` a header that cannot be read.
    """
    if upload.kind == "dicom":
        size, voxels = _dicom_size(upload.path)
    else:
        size, voxels = _header_size(upload.path)
    if voxels > limits.max_voxels:
        shape = " x ".join(str(s) for s in size)
        raise UploadError(
            413, f"the image has {shape} voxels ({voxels:,} values), more than the limit of {limits.max_voxels:,}"
        )
    return size


def _header_size(path: Path) -> tuple[tuple[int, ...], int]:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise UploadError(422, f"not a readable image: {_reason(e, path)}") from None
    size = tuple(int(s) for s in reader.GetSize())
    return size, math.prod(size) * max(1, int(reader.GetNumberOfComponents()))


def _dicom_size(folder: Path) -> tuple[tuple[int, ...], int]:
    import pydicom

    size: tuple[int, ...] = ()
    voxels = frames_total = 0
    for path in sorted(folder.glob("*.dcm")):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
            frames, samples = int(ds.get("NumberOfFrames", 1) or 1), int(ds.get("SamplesPerPixel", 1) or 1)
        except Exception:  # a value pydicom cannot convert (a hostile VR, a damaged element), in many forms
            raise UploadError(422, "not a readable image: a DICOM header cannot be read") from None
        size = size or (columns, rows)
        voxels += rows * columns * frames * samples
        frames_total += frames
    return (*size, frames_total), voxels


def _reason(error: RuntimeError, path: Path) -> str:
    """ITK's message as a short reason for the client: its last useful line, without paths or addresses."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("Exception thrown", "/"))]
    text = (useful or ["unknown error"])[-1].replace(str(path), "the file").replace(path.name, "the file")
    text = re.sub(r"(?:sitk::|itk::|ITK )ERROR:\s*|\w+\(0x[0-9a-fA-F]+\):\s*", "", text)
    text = re.sub(r"(?<![\w.])/[^\s\"']*", "...", text)
    return " ".join(text.split())[:160] or "unknown error"
