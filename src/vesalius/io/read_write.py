"""Read and write images of every supported format, keeping geometry and voxel values.

SimpleITK does the work; this module chooses the reader from the path, turns every failure into a one-line
:class:`~vesalius.errors.VesaliusError`, and optionally reorients to a canonical orientation on load (and back on
save), which nnU-Net does not do and which is the usual cause of flipped predictions.

Formats: NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``), MetaImage (``.mha``, ``.mhd``), a DICOM
series (a folder, or one ``.dcm`` file), and 2D PNG/JPEG/TIFF/BMP (grey or RGB; colour components become
channels). PNG, JPEG and BMP cannot store spacing, origin or direction; JPEG is lossy.
"""

from __future__ import annotations

import struct
import warnings
import zlib
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
        VesaliusError: missing, unreadable or unsupported file, or an ambiguous DICOM folder.
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
        nifti = _nifti_bytes(path) if image_suffix(path) in (".nii", ".nii.gz") else None
        try:
            itk = sitk.ReadImage(str(path))
        except RuntimeError as e:
            raise VesaliusError(f"cannot read image ({_itk_reason(e)})", path, _read_remedy(path)) from None
        if nifti is not None:
            _check_nifti_size(path, itk, nifti)
    image = from_sitk(itk)
    if nifti is not None and image.array.dtype.kind == "f":
        image = _restore_non_finite(nifti, image)
    if canonical and image.ndim == 3:
        target = CANONICAL_ORIENTATION if canonical is True else str(canonical)
        image = reorient(image, target)
    return image


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
    decompressor = zlib.decompressobj(wbits=31)  # gzip container; validates CRC-32 and length at the end
    parts = []
    try:
        with open(path, "rb") as f:
            while (chunk := f.read(1 << 20)) and not decompressor.eof:
                parts.append(decompressor.decompress(chunk))
    except zlib.error as e:
        raise VesaliusError(f"corrupt gzip data ({e})", path, _read_remedy(path)) from None
    if not decompressor.eof:
        raise VesaliusError("truncated gzip file (it ends early)", path, _read_remedy(path))
    return b"".join(parts)


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
