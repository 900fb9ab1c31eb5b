"""DICOM series input and output on top of SimpleITK (GDCM), with pydicom for tag reading and UIDs.

What comes from the libraries and what is written here:

* Finding series, sorting their files into slice order, decoding pixels, applying RescaleSlope/Intercept and
  working out spacing, origin and direction all come from SimpleITK/GDCM
  (``ImageSeriesReader.GetGDCMSeriesIDs``, ``GetGDCMSeriesFileNames``, ``ImageSeriesReader``). pydicom only
  reads SeriesDescription and Modality for :func:`list_series`, and makes UIDs.
* Hand-written: the choice of series with errors a user can act on (:class:`~vesalius.errors.VesaliusError`
  naming the folder, the series there and what to do), SimpleITK's multi-line messages condensed to one line,
  and, for writing, the tags of the Image Plane module. GDCM writes the Image Plane tags only for some SOP
  classes and, for a 2D slice, cannot know the slice's 3D position or orientation, so every file gets
  ImagePositionPatient, ImageOrientationPatient, PixelSpacing, SliceThickness and SpacingBetweenSlices
  explicitly, formatted with the full 16 characters DICOM allows for a decimal string (this keeps positions
  within about 1e-10 mm and cosines within about 1e-13). The files of a series are written into a temporary
  folder first and moved into place, so that a failed write leaves no half series behind.

DICOM derives the slice direction as the cross product of the row and column directions, and readers sort
slices along it. A left-handed grid (direction determinant < 0) therefore cannot be stored as it is:
:func:`write_dicom_series` writes it with its slice axis reversed, and reading it back gives the same voxels
at the same world positions, with the last slice first and the third direction column negated.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, generate_uid
from pydicom.valuerep import format_number_as_ds

from vesalius.errors import VesaliusError

__all__ = ["SeriesInfo", "list_series", "read_dicom_series", "write_dicom_series"]

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SECONDARY_CAPTURE_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"

_FIND_REMEDY = "point at the folder holding the .dcm files (sub-folders are not searched)"
_INTEGER_TYPES = {
    sitk.sitkInt8: "int8",
    sitk.sitkUInt8: "uint8",
    sitk.sitkInt16: "int16",
    sitk.sitkUInt16: "uint16",
    sitk.sitkInt32: "int32",
    sitk.sitkUInt32: "uint32",
}
_FLOAT_TYPES = {sitk.sitkFloat32, sitk.sitkFloat64}
_SLICE_NAME = re.compile(r"slice_\d{4,}\.dcm")


@dataclass(frozen=True)
class SeriesInfo:
    """One DICOM series in a folder.

    Attributes:
        uid: SeriesInstanceUID.
        description: SeriesDescription of the first file, ``""`` when absent.
        modality: Modality of the first file, ``""`` when absent.
        num_files: number of files in the series.
        files: the files' paths, in slice order as GDCM sorts them.
    """

    uid: str
    description: str
    modality: str
    num_files: int
    files: tuple[str, ...]

    def summary(self) -> str:
        """``UID ("description", N files)``, for messages."""
        desc = f'"{self.description}", ' if self.description else ""
        unit = "file" if self.num_files == 1 else "files"
        return f"{self.uid} ({desc}{self.num_files} {unit})"


@contextmanager
def _itk_warnings_off() -> Iterator[None]:
    """Silence ITK's console warnings (e.g. "No Series were found") where we report the problem ourselves."""
    before = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(before)


def _first_tags(path: str) -> tuple[str, str]:
    """SeriesDescription and Modality of one file; empty strings when absent or unreadable."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesDescription", "Modality"])
    except Exception:  # only labels for listing; GDCM has already accepted the file as DICOM
        return "", ""
    return str(ds.get("SeriesDescription", "") or "").strip(), str(ds.get("Modality", "") or "").strip()


def list_series(folder: str | Path) -> list[SeriesInfo]:
    """Every DICOM series directly in ``folder`` (not in sub-folders), in the order GDCM finds them.

    Returns an empty list when the folder holds no DICOM series or does not exist.
    """
    folder_s = str(folder)
    out = []
    with _itk_warnings_off():
        uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder_s)
        for uid in uids:
            files = tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder_s, uid))
            if not files:
                continue
            description, modality = _first_tags(files[0])
            out.append(SeriesInfo(uid, description, modality, len(files), files))
    return out


def _condense(message: str) -> str:
    """SimpleITK's multi-line exception text as one line, without source paths and object addresses."""
    parts = re.split(r"(?:sitk::|ITK )?ERROR:", message)
    text = parts[-1] if len(parts) > 1 else message
    text = re.sub(r"^\s*\w+\s*\(0x[0-9a-fA-F]+\)\s*:", "", text)
    text = re.sub(r"Exception thrown in SimpleITK \w+:\s*\S+:\d+:", "", text)
    text = " ".join(text.split())
    return text or " ".join(message.split())


def read_dicom_series(folder: str | Path, series_uid: str | None = None) -> sitk.Image:
    """Read one DICOM series from ``folder`` as a 3D SimpleITK image.

    Pixel values have RescaleSlope/RescaleIntercept applied, as SimpleITK does by default (CT in Hounsfield
    units). A series of one file gives a 3D image with one slice.

    Args:
        folder: the folder holding the series' files (not searched recursively).
        series_uid: the SeriesInstanceUID to read; may be left out when the folder holds one series.

    Raises:
        VesaliusError: the folder is missing or holds no series, holds several and ``series_uid`` is not
            given, ``series_uid`` is not there, the files cannot be read, the series is larger than
            :func:`~vesalius.io.read_write.max_voxels`, or its spacing or orientation tags are invalid.
    """
    folder = Path(folder)
    if not folder.is_dir():
        problem = "is a file, not a folder" if folder.exists() else "folder not found"
        raise VesaliusError(problem, file=folder, remedy=_FIND_REMEDY)
    series = list_series(folder)
    if not series:
        raise VesaliusError("no DICOM series found", file=folder, remedy=_FIND_REMEDY)
    listing = "; ".join(s.summary() for s in series)
    if series_uid is None:
        if len(series) > 1:
            raise VesaliusError(
                f"{len(series)} DICOM series found: {listing}",
                file=folder,
                remedy="choose one with --series-uid UID",
            )
        chosen = series[0]
    else:
        matches = [s for s in series if s.uid == series_uid.strip()]
        if not matches:
            raise VesaliusError(
                f"no series with UID {series_uid}; the folder holds {listing}",
                file=folder,
                remedy="choose one of these with --series-uid UID",
            )
        chosen = matches[0]

    _check_header(chosen, folder)
    _check_slice_gaps(chosen, folder)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(chosen.files))
    try:
        img = reader.Execute()
    except RuntimeError as err:
        raise VesaliusError(
            f"cannot read DICOM series {chosen.uid}: {_condense(str(err))}",
            file=folder,
            remedy="check that the files are complete (re-export or re-copy the series)",
        ) from err
    if img.GetDimension() == 2:
        img = sitk.JoinSeries(img)
    elif img.GetDimension() != 3:
        raise VesaliusError(
            f"series {chosen.uid} reads as a {img.GetDimension()}D image (several multi-frame files?)",
            file=folder,
            remedy="export the series as single-frame files, or read one file at a time",
        )
    return img


def _ds(values: object) -> str:
    """A number or numbers as a DICOM decimal string (multiple values separated by backslashes)."""
    seq = values if isinstance(values, list | tuple | np.ndarray) else [values]
    out = []
    for v in seq:
        v = float(v)
        if abs(v) < 1e-13:  # avoid "1E-17"-style noise from rotations; far below any tolerance
            v = 0.0
        out.append(format_number_as_ds(v))
    return "\\".join(out)


def _check_uid(uid: str | None, what: str) -> str:
    if uid is None:
        return str(generate_uid())
    if not UID(uid).is_valid:
        raise VesaliusError(
            f"{what} {uid!r} is not a valid DICOM UID",
            remedy="use digits and dots only (at most 64 characters), or leave it out to generate one",
        )
    return uid


def _check_writable(img: sitk.Image) -> None:
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise VesaliusError(
            f"image has {img.GetNumberOfComponentsPerPixel()} components per voxel; "
            "DICOM series are written here for scalar images only",
            remedy="write one channel at a time, or write NIfTI",
        )
    if img.GetDimension() != 3:
        raise VesaliusError(
            f"image is {img.GetDimension()}D; DICOM series are written here for 3D images only",
            remedy="add a slice axis (e.g. sitk.JoinSeries) or write NIfTI",
        )
    pid = img.GetPixelID()
    if pid in _FLOAT_TYPES:
        raise VesaliusError(
            f"image has {img.GetPixelIDTypeAsString()} voxels; DICOM series store integers here",
            remedy="cast to int16 (e.g. sitk.Cast(img, sitk.sitkInt16)) or write NIfTI",
        )
    if pid not in _INTEGER_TYPES:
        raise VesaliusError(
            f"image has {img.GetPixelIDTypeAsString()} voxels; DICOM series are written here for "
            "8-, 16- or 32-bit integers only",
            remedy="cast to int16 or int32, or write NIfTI",
        )
    d = np.asarray(img.GetDirection()).reshape(3, 3)
    if not np.allclose(d.T @ d, np.eye(3), atol=1e-6):
        raise VesaliusError(
            "image direction is not orthonormal (a sheared grid), which DICOM cannot describe",
            remedy="resample the image onto an orthonormal grid first",
        )


def _check_header(series: SeriesInfo, folder: Path) -> None:
    """Refuse, before GDCM allocates the volume, a series larger than :func:`~vesalius.io.read_write.max_voxels`
    and pixel spacing or orientation tags that GDCM would silently replace (a zero PixelSpacing is read as 1 mm)."""
    from vesalius.io.read_write import GEOMETRY_TOLERANCE, MAX_VOXELS_ENV, max_voxels

    try:
        ds = pydicom.dcmread(series.files[0], stop_before_pixels=True, force=True)
        rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        spacing = [float(v) for v in ds.get("PixelSpacing", None) or []]
        orientation = [float(v) for v in ds.get("ImageOrientationPatient", None) or []]
    except (OSError, ValueError, TypeError, AttributeError, InvalidDicomError) as err:
        raise VesaliusError(
            f"cannot read the header of {Path(series.files[0]).name} ({' '.join(str(err).split())[:200]})",
            file=folder,
            remedy="check that the files are complete (re-export or re-copy the series)",
        ) from None
    voxels = rows * columns * frames * samples * series.num_files
    if voxels > max_voxels():
        raise VesaliusError(
            f"series {series.uid} declares {voxels:,} voxel values ({series.num_files} files of {rows} x {columns}"
            f" x {frames} frames), more than the limit of {max_voxels():,}",
            file=folder,
            remedy=f"if the series is genuine, raise the limit with {MAX_VOXELS_ENV}",
        )
    remedy = "fix the tags with the tool that wrote the series, or export it again"
    if spacing and (len(spacing) != 2 or not all(np.isfinite(spacing)) or min(spacing) <= 0):
        raise VesaliusError(
            f"invalid PixelSpacing {spacing} in {Path(series.files[0]).name}: it must be two positive numbers",
            file=folder,
            remedy=remedy,
        )
    if orientation:
        axes = np.asarray(orientation, dtype=np.float64)
        if axes.size != 6 or not np.all(np.isfinite(axes)):
            raise VesaliusError(
                f"invalid ImageOrientationPatient {orientation} in {Path(series.files[0]).name}: not six numbers",
                file=folder,
                remedy=remedy,
            )
        axes = axes.reshape(2, 3)
        if np.abs(axes @ axes.T - np.eye(2)).max() > GEOMETRY_TOLERANCE:
            raise VesaliusError(
                f"ImageOrientationPatient {orientation} in {Path(series.files[0]).name} is not two perpendicular "
                "unit vectors (a sheared or degenerate grid)",
                file=folder,
                remedy=remedy,
            )


def _check_slice_gaps(series: SeriesInfo, folder: Path) -> None:
    """Raise when slices are missing inside a series (GDCM silently leaves out files it cannot read)."""
    if series.num_files < 3:
        return
    positions, normal = [], None
    for name in series.files:
        ds = pydicom.dcmread(name, stop_before_pixels=True, force=True)
        position, orientation = ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient")
        if position is None or orientation is None:
            return  # no geometry tags: nothing to check against
        if normal is None:
            normal = np.cross(np.asarray(orientation[:3], float), np.asarray(orientation[3:], float))
        positions.append(float(np.dot(normal, np.asarray(position, float))))
    gaps = np.abs(np.diff(np.sort(positions)))
    typical = float(np.median(gaps))
    if typical > 0 and gaps.max() > 1.5 * typical:
        where = int(np.argmax(gaps))
        raise VesaliusError(
            f"series {series.uid} has a gap of {gaps.max():.3g} mm between slices {where} and {where + 1} "
            f"(other slices are {typical:.3g} mm apart): a slice is missing or unreadable",
            file=folder,
            remedy="re-copy or re-export the complete series",
        )


def write_dicom_series(
    img: sitk.Image,
    folder: str | Path,
    *,
    series_uid: str | None = None,
    study_uid: str | None = None,
    modality: str = "OT",
    description: str = "Vesalius",
) -> list[Path]:
    """Write a 3D scalar integer image as a DICOM series, one file per slice (``slice_0000.dcm``, ...).

    The voxel values are stored as they are (RescaleSlope 1, RescaleIntercept 0), and the Image Plane tags are
    set so that :func:`read_dicom_series` gives back the same geometry and values. A left-handed grid
    (direction determinant < 0) is written with its slice axis reversed; see the module notes.

    The series is written into a temporary folder and then moved into ``folder``, which is created if needed.
    If ``folder`` exists, files of the same names are replaced, and ``slice_NNNN.dcm`` files left over from an
    earlier, longer series are removed; other files are left alone.

    Args:
        img: 3D image with int8, uint8, int16, uint16, int32 or uint32 voxels.
        folder: where the files go.
        series_uid: SeriesInstanceUID; a new one is generated when left out.
        study_uid: StudyInstanceUID; a new one is generated when left out.
        modality: the Modality tag, e.g. ``"CT"`` (CT Image Storage) or ``"OT"`` (Secondary Capture).
        description: the SeriesDescription tag (at most 64 characters are kept).

    Returns:
        The paths of the written files, in slice order.

    Raises:
        VesaliusError: the image is not 3D, not scalar, not of an integer type, has a sheared direction, or
            an argument is not valid DICOM.
    """
    folder = Path(folder)
    _check_writable(img)
    series_uid = _check_uid(series_uid, "series UID")
    study_uid = _check_uid(study_uid, "study UID")
    modality = modality.strip().upper()
    if not re.fullmatch(r"[A-Z0-9_ ]{1,16}", modality):
        raise VesaliusError(
            f"modality {modality!r} is not a DICOM code string",
            remedy="use a code such as CT, MR, PT, SEG or OT",
        )
    if folder.exists() and not folder.is_dir():
        raise VesaliusError("is a file, not a folder", file=folder, remedy="choose a folder for the series")

    direction = np.asarray(img.GetDirection()).reshape(3, 3)
    if np.linalg.det(direction) < 0:
        img = sitk.Flip(img, [False, False, True])  # same voxels in the same place, right-handed grid
        direction = np.asarray(img.GetDirection()).reshape(3, 3)
    spacing = img.GetSpacing()
    sop_class = CT_IMAGE_STORAGE if modality == "CT" else SECONDARY_CAPTURE_IMAGE_STORAGE
    now = datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S.%f")
    common = {
        "0008|0016": sop_class,  # SOP Class UID
        "0008|0060": modality,
        "0008|103e": description.replace("\\", "/")[:64],  # Series Description
        "0020|000d": study_uid,
        "0020|000e": series_uid,
        "0020|0052": str(generate_uid()),  # Frame of Reference UID: the slices share one patient frame
        "0020|0011": "1",  # Series Number
        "0008|0012": date,  # Instance Creation Date/Time
        "0008|0013": time,
        "0008|0020": date,  # Study
        "0008|0030": time,
        "0008|0021": date,  # Series
        "0008|0031": time,
        "0008|0023": date,  # Content
        "0008|0033": time,
        # Image Orientation (Patient): the row direction (array axis 0) then the column direction (axis 1).
        "0020|0037": _ds([*direction[:, 0], *direction[:, 1]]),
        # Pixel Spacing is (distance between rows, distance between columns) = (spacing[1], spacing[0]).
        "0028|0030": _ds([spacing[1], spacing[0]]),
        "0018|0050": _ds(spacing[2]),  # Slice Thickness
        "0018|0088": _ds(spacing[2]),  # Spacing Between Slices
    }

    folder.parent.mkdir(parents=True, exist_ok=True)
    existed = folder.is_dir()
    # A folder on the same file system as the target, so that the final moves are renames.
    tmp_parent = folder if existed else folder.parent
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=tmp_parent))
    try:
        writer = sitk.ImageFileWriter()
        writer.SetImageIO("GDCMImageIO")
        writer.KeepOriginalImageUIDOn()
        names = []
        for k in range(img.GetSize()[2]):
            # A one-slice 3D image keeps the full 3D origin and direction (a 2D slice would lose them).
            piece = img[:, :, k : k + 1]
            for key in piece.GetMetaDataKeys():
                piece.EraseMetaData(key)
            for key, value in common.items():
                piece.SetMetaData(key, value)
            piece.SetMetaData("0008|0018", str(generate_uid()))  # SOP Instance UID
            piece.SetMetaData("0020|0013", str(k + 1))  # Instance Number
            piece.SetMetaData("0020|0032", _ds(img.TransformIndexToPhysicalPoint((0, 0, k))))  # Position
            name = f"slice_{k:04d}.dcm"
            writer.SetFileName(str(tmp / name))
            try:
                writer.Execute(piece)
            except RuntimeError as err:
                raise VesaliusError(
                    f"cannot write DICOM slice {k}: {_condense(str(err))}",
                    file=folder,
                    remedy="check that the folder is writable and the disk not full",
                ) from err
            names.append(name)

        if not existed:
            os.replace(tmp, folder)
        else:
            for name in names:
                os.replace(tmp / name, folder / name)
            keep = set(names)
            for old in folder.iterdir():
                if _SLICE_NAME.fullmatch(old.name) and old.name not in keep and old.is_file():
                    old.unlink()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [folder / name for name in names]
