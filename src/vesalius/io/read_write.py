"""Read and write images of every supported format, keeping geometry and voxel values.

SimpleITK does the work; this module chooses the reader from the path, turns every failure into a one-line
:class:`~vesalius.errors.VesaliusError`, and optionally reorients to a canonical orientation on load (and back on
save), which nnU-Net does not do and which is the usual cause of flipped predictions.

Formats: NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``), MetaImage (``.mha``, ``.mhd``), a DICOM
series (a folder, or one ``.dcm`` file), and 2D PNG/JPEG/TIFF/BMP (grey or RGB; colour components become
channels). PNG, JPEG and BMP cannot store spacing, origin or direction; JPEG is lossy.
"""

from __future__ import annotations

import math
import os
import struct
import warnings
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vesalius.errors import VesaliusError
from vesalius.io.atomic import atomic_path
from vesalius.io.image import Geometry, Image, from_sitk, to_sitk

if TYPE_CHECKING:
    import SimpleITK as sitk

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
DICOM_SUFFIXES = (".dcm", ".dicom")
IMAGE_SUFFIXES = VOLUME_SUFFIXES + PICTURE_SUFFIXES + DICOM_SUFFIXES
_NO_GEOMETRY = (".png", ".jpg", ".jpeg", ".bmp")

CANONICAL_ORIENTATION = "RAS"
"""Array axis 0 points to the patient's right, 1 to anterior, 2 to superior (as nibabel and MONAI)."""

_TEXT_FIELDS = {
    348: ((4, 32), (148, 252), (328, 344)),  # Analyze data_type and db_name, descrip and aux_file, intent_name
    540: ((240, 344), (508, 524), (525, 540)),  # descrip and aux_file, intent_name, unused_str
}
"""Byte ranges of the NIfTI-1 and NIfTI-2 header fields (by ``sizeof_hdr``) that hold text rather than numbers."""


def has_header_text(path: str | Path) -> bool:
    """Whether the NIfTI file ``path`` (``.nii`` or ``.nii.gz``) holds text in a free-text header field or
    announces extensions: where converters put DICOM attributes (dcm2niix writes acquisition details into ``descrip``,
    dcmstack the whole DICOM header as an extension)."""
    with open(path, "rb") as f:
        head = f.read(2048)
    if head[:2] == b"\x1f\x8b":
        try:
            head = zlib.decompressobj(wbits=31).decompress(head, 544)
        except zlib.error:
            return False  # not a readable gzip stream: reading the image says what is wrong
    for e in "<>":
        if len(head) < 4 or (size := struct.unpack(f"{e}i", head[:4])[0]) not in _TEXT_FIELDS:
            continue
        if any(head[start:end].strip(b"\0 ") for start, end in _TEXT_FIELDS[size]):
            return True
        return head[size : size + 1] not in (b"", b"\0")  # extension[0] != 0: extensions follow the header
    return False


def channels_in_file(path: str | Path) -> int | None:
    """Channels per pixel that an image file declares (3 for a colour picture), from its header alone; ``None``
    when the header cannot be read (reading the image then says why)."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    return int(reader.GetNumberOfComponents())


def image_suffix(path: str | Path) -> str:
    """The recognised suffix of ``path`` in lower case (``".nii.gz"``), or ``""`` when not an image file."""
    name = Path(path).name.lower()
    return next((s for s in IMAGE_SUFFIXES if name.endswith(s)), "")


def strip_suffix(path: str | Path) -> str:
    """The file name without its image suffix: ``case_01.nii.gz`` -> ``case_01``."""
    name = Path(path).name
    suffix = image_suffix(name)
    return name[: len(name) - len(suffix)] if suffix else Path(name).stem


def read_image(path: str | Path, *, canonical: bool | str = False, series_uid: str | None = None) -> Image:
    """Read an image file or a DICOM series folder.

    Args:
        path: an image file, or a folder holding a DICOM series.
        canonical: reorient 3D images on load: ``True`` for RAS, or an orientation code such as ``"LPS"``.
            The orientation found on disk is kept in ``Image.orientation_on_disk`` so that
            :func:`write_image` puts it back.
        series_uid: which DICOM series to read when a folder holds several.

    Returns:
        An :class:`Image` with ``array`` of shape ``(C, X, Y[, Z])``.

    Raises:
        VesaliusError: missing, unreadable or unsupported file, an ambiguous DICOM folder, a header that declares
            more voxels than allowed (:func:`max_voxels`) or more data than the file can hold
            (:func:`_check_declared_size`), or invalid geometry (:func:`check_geometry`).

    The header is read first and checked before any voxel is: a corrupt or hostile header (a 250 KB file that
    declares 10^9 voxels) is refused at once instead of making ITK allocate gigabytes first.
    """
    import SimpleITK as sitk

    path = Path(path)
    nifti: bytes | None = None
    if not path.exists():
        raise VesaliusError("file not found", path, "check the path")
    if path.is_dir():
        from vesalius.io.dicom import read_dicom_series

        itk = read_dicom_series(path, series_uid)
    else:
        if not image_suffix(path):
            raise VesaliusError(
                f"unsupported file type '{''.join(path.suffixes) or path.name}'",
                path,
                f"use one of {', '.join(IMAGE_SUFFIXES)} or a DICOM series folder",
            )
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()  # the header only: sizes and geometry are checked before any voxel
        except RuntimeError as e:
            if path.name.lower().endswith(".gz"):
                _check_gzip_stream(path)  # a truncated or corrupt gzip file says so rather than ITK's puzzlement
            raise VesaliusError(f"cannot read image ({_itk_reason(e)})", path, _read_remedy(path)) from None
        _check_declared_size(path, reader)
        check_geometry(path, reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())
        nifti = _nifti_bytes(path) if image_suffix(path) in (".nii", ".nii.gz") else None
        if nifti is not None:
            _check_nifti_geometry(path, nifti)
        try:
            itk = reader.Execute()
        except RuntimeError as e:
            raise VesaliusError(f"cannot read image ({_itk_reason(e)})", path, _read_remedy(path)) from None
        if nifti is not None:
            _check_nifti_size(path, itk, nifti)
    check_geometry(path, itk.GetSpacing(), itk.GetOrigin(), itk.GetDirection())
    image = from_sitk(itk)
    if nifti is not None and image.array.dtype.kind == "f":
        image = _restore_non_finite(nifti, image)
    if canonical and image.ndim == 3:
        target = CANONICAL_ORIENTATION if canonical is True else str(canonical)
        image = reorient(image, target)
    return image


MAX_VOXELS_ENV = "VESALIUS_MAX_VOXELS"
DEFAULT_MAX_VOXELS = 2**31
COMPRESSION_RATIO_LIMIT = 2000
"""Largest accepted ratio of declared voxel bytes to (compressed) file bytes.

Deflate (gzip, zlib, PNG) cannot compress better than about 1032:1 and LZW (TIFF) about 1365:1, so no genuine
file exceeds 2000:1, not even an all-zero label map; a header declaring more is corrupt or hostile (a
decompression bomb). 1000:1 would be too tight: a large empty label map in ``.nii.gz`` reaches about 1030:1.
bzip2 (NRRD ``encoding: bzip2``) can exceed it legitimately and is only held to :func:`max_voxels`.
"""
GEOMETRY_TOLERANCE = 1e-3
"""Largest deviation of the direction columns' dot products from the identity accepted as orthonormal (rounding
in text headers and float32 NIfTI matrices stays far below; a real shear of 0.06 degrees is above)."""


def max_voxels() -> int:
    """The largest image (voxels x components) :func:`read_image` will allocate: ``$VESALIUS_MAX_VOXELS``, default
    ``2**31`` (8 GiB of float32, more than any CT or MRI volume), so that a corrupt header cannot exhaust memory.
    Raise it for genuinely larger images (light-sheet microscopy, whole-slide pictures)."""
    text = os.environ.get(MAX_VOXELS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_VOXELS
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        value = 0
    if value <= 0:
        raise VesaliusError(
            f"{MAX_VOXELS_ENV}={text!r} is not a positive whole number",
            remedy=f"set it to a number of voxels such as {DEFAULT_MAX_VOXELS}, or unset it",
        )
    return value


def check_geometry(
    path: str | Path, spacing: Sequence[float], origin: Sequence[float], direction: Sequence[float]
) -> None:
    """Raise unless spacing is finite and positive, the origin finite and the direction matrix orthonormal.

    ITK is inconsistent here: depending on the format it refuses a zero spacing, reads it as 1 mm, turns a
    negative spacing into a flipped direction, or passes a sheared or NaN direction on; any of these would put the
    voxels somewhere else in the world than the file's author meant, so they are refused, naming the file.
    """
    spacing_a = np.asarray(spacing, dtype=np.float64)
    n = spacing_a.size
    remedy = "fix the header (spacing, origin and direction) with the tool that wrote the file, or export it again"
    if not np.all(np.isfinite(spacing_a)) or np.any(spacing_a <= 0):
        raise VesaliusError(
            f"invalid voxel spacing {_numbers(spacing_a)}: spacing must be finite and positive", path, remedy
        )
    if not np.all(np.isfinite(np.asarray(origin, dtype=np.float64))):
        raise VesaliusError(f"invalid origin {_numbers(origin)}: it must be finite", path, remedy)
    matrix = np.asarray(direction, dtype=np.float64)
    if matrix.size != n * n or not np.all(np.isfinite(matrix)):
        raise VesaliusError(f"invalid direction matrix {_numbers(matrix)}: it holds NaN or Inf", path, remedy)
    matrix = matrix.reshape(n, n)
    if np.abs(matrix.T @ matrix - np.eye(n)).max() > GEOMETRY_TOLERANCE:
        raise VesaliusError(
            f"direction matrix {_numbers(matrix.ravel())} is not orthonormal (sheared or degenerate axes)",
            path,
            "resample the image onto an orthogonal grid, or " + remedy,
        )


def _numbers(values: Sequence[float] | np.ndarray) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in np.asarray(values, dtype=np.float64).ravel()) + ")"


def _component_bytes(reader: sitk.ImageFileReader) -> int:
    import SimpleITK as sitk

    try:
        return int(sitk.Image([1] * reader.GetDimension(), reader.GetPixelID(), 1).GetSizeOfPixelComponent())
    except RuntimeError:  # an unusual pixel type: assume the smallest, which makes the checks the most lenient
        return 1


def _check_declared_size(path: Path, reader: sitk.ImageFileReader) -> None:
    """Raise, before any voxel is read, when the header declares an image that is too large or cannot be in the file.

    Refused: more voxels (x components) than :func:`max_voxels`; for uncompressed storage, more voxel bytes than
    the data file holds; for compressed storage (``.nii.gz``, gzip NRRD, compressed MetaImage, pictures), more than
    :data:`COMPRESSION_RATIO_LIMIT` times the file's size. A file whose storage cannot be worked out (detached
    data in several files) is held to the voxel limit only.
    """
    size = [int(s) for s in reader.GetSize()]
    voxels = math.prod(size) * max(int(reader.GetNumberOfComponents()), 1)
    limit = max_voxels()
    if voxels > limit:
        raise VesaliusError(
            f"the header declares {'x'.join(map(str, size))} voxels ({voxels:,} values), more than the limit of "
            f"{limit:,}",
            path,
            f"if the image is genuine, raise the limit with {MAX_VOXELS_ENV}; otherwise the header is corrupt",
        )
    declared = voxels * _component_bytes(reader)
    stored, kind = _storage(path)
    if stored is None:
        return
    if kind == "raw" and declared > stored:
        raise VesaliusError(
            f"truncated {_FORMAT_NAMES.get(image_suffix(path), 'file')}: the header declares {declared:,} bytes of "
            f"voxel data but the file holds only {stored:,}",
            path,
            _read_remedy(path),
        )
    if kind == "compressed" and declared > COMPRESSION_RATIO_LIMIT * stored:
        raise VesaliusError(
            f"the header declares {declared:,} bytes of voxel data, over {COMPRESSION_RATIO_LIMIT} times the "
            f"{stored:,} bytes of the compressed file (no compression achieves that)",
            path,
            "the header is corrupt; " + _read_remedy(path),
        )


_FORMAT_NAMES = {".nii": "NIfTI", ".nrrd": "NRRD", ".nhdr": "NRRD", ".mha": "MetaImage", ".mhd": "MetaImage"}


def _storage(path: Path) -> tuple[int | None, str]:
    """(bytes of the file holding the voxels, ``"raw"`` / ``"compressed"`` / ``"unknown"``) for the size check."""
    suffix = image_suffix(path)
    if suffix == ".nii":
        return path.stat().st_size, "raw"
    if suffix in (".nii.gz", *PICTURE_SUFFIXES):
        return path.stat().st_size, "compressed"
    if suffix in (".nrrd", ".nhdr", ".mha", ".mhd"):
        fields = _text_header(path, "=" if suffix in (".mha", ".mhd") else ":")
        if suffix in (".mha", ".mhd"):
            data_file = fields.get("elementdatafile", "LOCAL")
            kind = "compressed" if fields.get("compresseddata", "false").lower() == "true" else "raw"
        else:
            data_file = fields.get("data file", fields.get("datafile", "LOCAL"))
            encoding = fields.get("encoding", "raw").lower()
            kind = {"raw": "raw", "gzip": "compressed", "gz": "compressed"}.get(encoding, "unknown")
        if data_file.upper() == "LOCAL":
            return path.stat().st_size, kind
        if " " in data_file or "%" in data_file or data_file.upper().startswith("LIST"):
            return None, "unknown"  # data in several files
        data = Path(data_file) if Path(data_file).is_absolute() else path.parent / data_file
        return (data.stat().st_size, kind) if data.is_file() else (None, "unknown")
    return None, "unknown"


def _text_header(path: Path, separator: str) -> dict[str, str]:
    """The ``key: value`` (NRRD) or ``Key = Value`` (MetaImage) fields of a text header, keys in lower case."""
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    fields: dict[str, str] = {}
    for raw_line in head.split(b"\n"):
        line = raw_line.decode("latin-1").strip()
        if not line and separator == ":":
            break  # NRRD: a blank line ends the header
        key, sep, value = line.partition(":=" if ":=" in line else separator)
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
        if key.strip().lower() == "elementdatafile":
            break  # MetaImage: the last field before the data
    return fields


def _check_nifti_geometry(path: Path, content: bytes) -> None:
    """Raise on the NIfTI header values that ITK silently replaces: a zero or non-finite ``pixdim`` (read as 1 mm),
    a negative one (read as a flipped axis), non-finite qform parameters or sform rows, and a sheared or degenerate
    sform (ITK then falls back to the qform, so two readers would place the voxels differently)."""
    head = _nifti_geometry_fields(content)
    if head is None:
        return
    ndim, pixdim, qform_code, quatern, sform_code, srow = head
    remedy = "fix the header with the tool that wrote the file (e.g. nibabel), or export it again"
    spatial = min(ndim, 3)
    for i in range(spatial):
        value = pixdim[i + 1]
        if not math.isfinite(value) or value <= 0:
            raise VesaliusError(
                f"invalid voxel spacing pixdim[{i + 1}] = {value:g} in the NIfTI header: must be finite and positive",
                path,
                remedy,
            )
    if qform_code > 0 and not all(math.isfinite(v) for v in quatern):
        raise VesaliusError("the NIfTI qform holds NaN or Inf", path, remedy)
    if sform_code > 0:
        rows = np.asarray(srow, dtype=np.float64).reshape(3, 4)
        if not np.all(np.isfinite(rows)):
            raise VesaliusError("the NIfTI sform holds NaN or Inf", path, remedy)
        columns = rows[:, :spatial]
        norms = np.linalg.norm(columns, axis=0)
        if np.any(norms == 0):
            raise VesaliusError("the NIfTI sform is degenerate (an axis of length 0)", path, remedy)
        unit = columns / norms
        if np.abs(unit.T @ unit - np.eye(spatial)).max() > GEOMETRY_TOLERANCE:
            raise VesaliusError(
                "the NIfTI sform is sheared (its axes are not perpendicular), which ITK would replace by the qform",
                path,
                "resample the image onto an orthogonal grid, or " + remedy,
            )


def _nifti_geometry_fields(
    content: bytes,
) -> tuple[int, tuple[float, ...], int, tuple[float, ...], int, tuple[float, ...]] | None:
    """(dim[0], pixdim[0..7], qform_code, quatern b c d + offsets, sform_code, srow x y z) of NIfTI-1 or NIfTI-2."""
    for e in "<>":
        if len(content) >= 348 and struct.unpack(f"{e}i", content[:4])[0] == 348:
            (ndim,) = struct.unpack(f"{e}h", content[40:42])
            pixdim = struct.unpack(f"{e}8f", content[76:108])
            qform_code, sform_code = struct.unpack(f"{e}2h", content[252:256])
            quatern = struct.unpack(f"{e}6f", content[256:280])
            srow = struct.unpack(f"{e}12f", content[280:328])
            return ndim, pixdim, qform_code, quatern, sform_code, srow
        if len(content) >= 540 and struct.unpack(f"{e}i", content[:4])[0] == 540:
            (ndim,) = struct.unpack(f"{e}q", content[16:24])
            pixdim = struct.unpack(f"{e}8d", content[104:168])
            qform_code, sform_code = struct.unpack(f"{e}2i", content[344:352])
            quatern = struct.unpack(f"{e}6d", content[352:400])
            srow = struct.unpack(f"{e}12d", content[400:496])
            return int(ndim), pixdim, qform_code, quatern, sform_code, srow
    return None


def reorient(image: Image, orientation: str) -> Image:
    """Permute and flip the axes of a 3D image to ``orientation`` (e.g. ``"RAS"``); the world is unchanged.

    The first reorientation records the orientation the image had in ``orientation_on_disk``.
    """
    import SimpleITK as sitk

    if image.ndim != 3:
        raise VesaliusError(f"reorientation needs a 3D image, got {image.ndim}D")
    current = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.geometry.direction)
    if current == orientation:
        out = Image(image.array, image.geometry, image.orientation_on_disk or current)
        return out
    channels = [from_sitk(sitk.DICOMOrient(to_sitk(image, c), orientation)) for c in range(image.num_channels)]
    array = np.concatenate([c.array for c in channels], axis=0)
    return Image(array, channels[0].geometry, image.orientation_on_disk or current)


def write_image(image: Image, path: str | Path, *, compress: bool = True, restore_orientation: bool = True) -> Path:
    """Write an image atomically (temporary file, then rename).

    Args:
        image: the image; several channels are written as a vector image (RGB for pictures).
        path: the target; the suffix picks the format. A folder path (no suffix) writes a DICOM series.
        compress: compress where the format allows it (``.nii.gz`` is always compressed).
        restore_orientation: if the image was reoriented on load, put the orientation back first.

    Returns:
        The path written.

    Only geometry, voxels and their type are written, never text from where the image came from: an
    :class:`Image` holds no metadata and :func:`~vesalius.io.image.to_sitk` builds a new SimpleITK image, so the
    attributes of a DICOM series it was read from (patient, study, institution, descriptions), which SimpleITK
    keeps in an image's metadata and its NRRD and MetaImage writers copy into the header, never reach the file,
    and NIfTI's free-text fields (``descrip``, ``aux_file``, ``intent_name``) stay empty. A DICOM series gets the
    tags :func:`~vesalius.io.dicom.write_dicom_series` sets and no others.
    """
    import SimpleITK as sitk

    path = Path(path)
    if restore_orientation and image.orientation_on_disk and image.ndim == 3:
        image = reorient(image, image.orientation_on_disk)
    suffix = image_suffix(path)
    if not suffix or suffix in DICOM_SUFFIXES:
        if suffix:
            raise VesaliusError("a DICOM image is written as a series", path, "give a folder path instead")
        from vesalius.io.dicom import write_dicom_series

        if image.num_channels != 1:
            raise VesaliusError("a DICOM series holds one channel", path, "write each channel separately")
        write_dicom_series(to_sitk(image), path)
        return path
    if suffix in PICTURE_SUFFIXES:
        _check_picture(image, path, suffix)
    if suffix == ".mhd":  # header and raw data: two files cannot be replaced atomically together
        raise VesaliusError("writing .mhd (two files) is not supported", path, "write .mha instead")
    try:
        with atomic_path(path, suffix) as tmp:
            sitk.WriteImage(to_sitk(image), str(tmp), useCompression=compress)
    except RuntimeError as e:
        raise VesaliusError(f"cannot write image ({_itk_reason(e)})", path, "check the folder and format") from None
    return path


def _check_picture(image: Image, path: Path, suffix: str) -> None:
    if image.ndim != 2:
        raise VesaliusError(f"{suffix} holds 2D images, this one is {image.ndim}D", path, "write .nii.gz instead")
    allowed = {np.dtype(np.uint8)} if suffix in (".jpg", ".jpeg", ".bmp") else {np.dtype(np.uint8), np.dtype(np.uint16)}
    if suffix in (".tif", ".tiff"):
        allowed |= {np.dtype(np.float32), np.dtype(np.int16), np.dtype(np.int32)}
    if image.array.dtype not in allowed:
        raise VesaliusError(
            f"{suffix} cannot store {image.array.dtype} voxels",
            path,
            f"convert to {' or '.join(sorted(str(d) for d in allowed))}, or write .nii.gz",
        )
    if image.num_channels not in (1, 3, 4):
        raise VesaliusError(f"{suffix} holds 1, 3 or 4 channels, not {image.num_channels}", path, "write .nii.gz")
    if suffix in _NO_GEOMETRY and not image.geometry.is_close(Geometry.default(2), atol=1e-9):
        warnings.warn(f"{path}: {suffix} does not store spacing/origin/direction; they are lost", stacklevel=3)


def _nifti_bytes(path: Path) -> bytes:
    """The whole (decompressed) content of a NIfTI file, for the checks ITK does not make.

    ITK's NIfTI reader fills a truncated file with zeros and reads NaN/Inf as 0 without complaint (SimpleITK 2.5),
    so the file is read once more here: for ``.nii.gz`` the gzip stream is decompressed with its CRC-32 and length
    checked, and the bytes serve the size check and the non-finite restore (at the cost of holding them while ITK
    reads the file).
    """
    if not path.name.lower().endswith(".gz"):
        return path.read_bytes()
    parts: list[bytes] = []
    _gunzip(path, parts.append)
    return b"".join(parts)


def _check_gzip_stream(path: Path) -> None:
    """Raise if ``path`` is not a complete, valid gzip stream; the decompressed data is discarded as it comes, so
    memory stays bounded whatever the file declares."""
    _gunzip(path, lambda _part: None, limit=1 << 24)


def _gunzip(path: Path, keep: Callable[[bytes], object], limit: int = 0) -> None:
    """Decompress the gzip file ``path`` (CRC-32 and length checked at the end), handing each piece to ``keep``;
    ``limit`` bounds each piece (0: unbounded). A corrupt or truncated stream is a one-line error."""
    decompressor = zlib.decompressobj(wbits=31)  # gzip container; validates CRC-32 and length at the end
    try:
        with open(path, "rb") as f:
            while (chunk := f.read(1 << 20)) and not decompressor.eof:
                keep(decompressor.decompress(chunk, limit))
                while limit and decompressor.unconsumed_tail and not decompressor.eof:
                    keep(decompressor.decompress(decompressor.unconsumed_tail, limit))
    except zlib.error as e:
        raise VesaliusError(f"corrupt gzip data ({e})", path, _read_remedy(path)) from None
    if not decompressor.eof:
        raise VesaliusError("truncated gzip file (it ends early)", path, _read_remedy(path))


def _check_nifti_size(path: Path, itk: sitk.Image, content: bytes) -> None:
    """Raise if a NIfTI file holds fewer voxel bytes than its header promises (ITK pads with zeros)."""
    voxel_bytes = itk.GetNumberOfPixels() * itk.GetNumberOfComponentsPerPixel() * itk.GetSizeOfPixelComponent()
    offset = _nifti_header(content)[2]
    if len(content) < offset + voxel_bytes:
        raise VesaliusError(
            f"truncated NIfTI: {max(len(content) - offset, 0)} bytes of voxel data, its header promises {voxel_bytes}",
            path,
            _read_remedy(path),
        )


def _nifti_header(content: bytes) -> tuple[str, int, int, float, float]:
    """(byte order, datatype code, vox_offset, scl_slope, scl_inter) of a single-file NIfTI-1 or NIfTI-2."""
    head = content[:540]
    for e in "<>":
        if len(head) >= 348 and struct.unpack(f"{e}i", head[:4])[0] == 348:
            (datatype,) = struct.unpack(f"{e}h", head[70:72])
            offset, slope, inter = struct.unpack(f"{e}3f", head[108:120])
            return e, datatype, max(int(offset), 352), slope, inter
        if len(head) >= 540 and struct.unpack(f"{e}i", head[:4])[0] == 540:
            (datatype,) = struct.unpack(f"{e}h", head[12:14])
            (offset,) = struct.unpack(f"{e}q", head[168:176])
            slope, inter = struct.unpack(f"{e}2d", head[176:192])
            return e, datatype, max(offset, 544), slope, inter
    return "<", 0, 352, 0.0, 0.0


def _restore_non_finite(content: bytes, image: Image) -> Image:
    """Put back the NaN and +-Inf voxels of a float NIfTI file, which ITK 5.4 reads as 0 without a word.

    (ITK's vendored niftilib zeroes non-finite values; fixed upstream in ITK pull request 6683, for ITK 6.)
    """
    if not np.any(image.array == 0):  # every non-finite voxel would have become 0
        return image
    endian, datatype, offset, slope, inter = _nifti_header(content)
    if datatype not in (16, 64):  # FLOAT32, FLOAT64
        return image
    dtype = np.dtype(f"{endian}f{4 if datatype == 16 else 8}")
    raw = np.frombuffer(content, dtype, count=image.array.size, offset=offset)
    if np.all(np.isfinite(raw)):
        return image
    # file order: x fastest, channels (NIfTI dim 5) slowest
    stored = np.moveaxis(raw.reshape((*image.spatial_shape, image.num_channels), order="F"), -1, 0)
    bad = ~np.isfinite(stored)
    values = stored[bad].astype(np.float64)
    if slope and np.isfinite(slope):
        values = values * slope + inter
    array = image.array.copy()
    array[bad] = values
    return image.with_array(array)


def _itk_reason(error: RuntimeError) -> str:
    """The useful part of a SimpleITK/ITK exception, on one line."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("sitk::ERROR", "itk::ERROR", "/", "Exception thrown"))]
    text = (useful or lines or ["unknown error"])[-1]
    for prefix in ("Description:", "itk::ERROR:"):
        text = text.split(prefix, 1)[-1]
    return " ".join(text.split())[:200]


def _read_remedy(path: Path) -> str:
    if path.name.lower().endswith(".gz"):
        return "the file may be truncated or not gzip-compressed; copy or export it again"
    return "the file may be truncated or corrupt; copy or export it again"
