"""Label maps as DICOM Segmentation objects (DICOM-SEG), so that a prediction on a DICOM series goes back to PACS,
3D Slicer or OHIF as DICOM, referencing the series it was made from.

Built with highdicom (which validates the object against the standard); one binary segment per label, frames
stored only where a segment is present. The label map must lie on the grid that :func:`read_dicom_series` gives
for the series: array axes ``(X, Y, Z)`` = (columns, rows, slices), slice ``k`` being the ``k``-th file in GDCM's
slice order (:attr:`~vesalius.io.dicom.SeriesInfo.files`). :func:`read_dicom_seg` reads such a DICOM-SEG back as a
label map on that grid.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vesalius.errors import VesaliusError
from vesalius.io.atomic import atomic_path
from vesalius.io.image import Image

if TYPE_CHECKING:
    from vesalius.io.dicom import SeriesInfo

__all__ = ["DicomSeg", "is_dicom_seg", "read_dicom_seg", "write_dicom_seg"]

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


def write_dicom_seg(
    labels: Image,
    series_files: Sequence[str | Path],
    path: str | Path,
    label_names: Mapping[int, str],
    *,
    description: str = "Vesalius segmentation",
) -> Path:
    """Write the label map ``labels`` (``(1, X, Y, Z)``, integer) as a DICOM-SEG of the series ``series_files``.

    Args:
        labels: the label map on the series' grid (see the module docstring); 0 is background.
        series_files: the source series' files in slice order (one per slice along ``Z``).
        path: the file to write (atomically).
        label_names: ``{value: name}`` of the foreground labels; each becomes a segment (numbered 1, 2, ... in
            the order of the values) with the name as its label.
        description: the SEG's SeriesDescription.

    Returns:
        ``path``.

    Raises:
        VesaliusError: the label map does not match the series' slices, rows or columns, or the series lacks
            tags a DICOM-SEG needs. A series without a Frame of Reference UID gets a new one, with a warning.
    """
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    sources = [pydicom.dcmread(str(f)) for f in series_files]
    _give_frame_of_reference(sources, series_files)
    mask = np.asarray(labels.array)[0]
    rows, columns = int(sources[0].Rows), int(sources[0].Columns)
    if mask.ndim != 3 or mask.shape != (columns, rows, len(sources)):
        raise VesaliusError(
            f"label map of shape {mask.shape} does not fit the series ({columns} columns, {rows} rows, "
            f"{len(sources)} slices)",
            series_files[0],
            "predict on the series itself",
        )
    values = sorted(v for v in label_names if v != 0)
    frames = np.stack([np.transpose(mask == v, (2, 1, 0)) for v in values], axis=-1)  # (slices, rows, cols, segs)
    algorithm = hd.AlgorithmIdentificationSequence(
        name="Vesalius", version=version("vesalius"), family=codes.cid7162.ArtificialIntelligence
    )
    segments = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=str(label_names[value])[:64],
            segmented_property_category=codes.cid7150.Tissue,
            segmented_property_type=codes.cid7150.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for number, value in enumerate(values, start=1)
    ]
    try:
        seg = _segmentation(hd, sources, frames, segments, description)
    except (ValueError, TypeError, AttributeError) as e:  # highdicom validates the sources against the standard
        raise VesaliusError(
            f"cannot build a DICOM-SEG for this series ({' '.join(str(e).split())[:200]})",
            series_files[0],
            "the series lacks tags a DICOM-SEG needs; use the NIfTI label map written next to it",
        ) from None
    path = Path(path)
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
    return path


def _give_frame_of_reference(sources: list[Any], series_files: Sequence[str | Path]) -> None:
    """Give the (in-memory) source datasets one new FrameOfReferenceUID when the series has none.

    A DICOM-SEG of several frames must name a frame of reference (highdicom refuses otherwise). The files on disk
    are not touched; the SEG then refers to a frame of reference the series itself does not carry, so viewers
    place it by the referenced instances only; a warning says so.
    """
    from pydicom.uid import generate_uid

    if all(getattr(ds, "FrameOfReferenceUID", None) for ds in sources):
        return
    uid = generate_uid()
    warnings.warn(
        f"{series_files[0]}: the series has no Frame of Reference UID; the DICOM-SEG gets a new one ({uid}), so "
        "viewers can align it with the series only through the referenced images",
        stacklevel=3,
    )
    for ds in sources:
        ds.FrameOfReferenceUID = uid


def _segmentation(hd: Any, sources: list[Any], frames: np.ndarray, segments: list[Any], description: str) -> Any:
    return hd.seg.Segmentation(
        source_images=sources,
        pixel_array=frames.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments,
        series_instance_uid=hd.UID(),
        series_number=int(getattr(sources[0], "SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="Vesalius",
        manufacturer_model_name="Vesalius",
        software_versions=version("vesalius"),
        device_serial_number="0",
        series_description=description[:64],
    )


@dataclass(frozen=True)
class DicomSeg:
    """A DICOM-SEG read back onto the grid of the series it was made from.

    Attributes:
        labels: the label map ``(1, X, Y, Z)`` (uint8, or uint16 past 255 segments) on the grid that
            :func:`~vesalius.io.read_image` gives for the series; each voxel holds the number of the segment
            covering it, 0 where none does.
        names: segment number -> segment label, for every segment of the SEG (also those covering no voxel).
        series: the source series, as found in the folder.
        dataset: the SEG itself, for references to it (e.g. a structured report).
    """

    labels: Image
    names: dict[int, str]
    series: SeriesInfo
    dataset: Any


def is_dicom_seg(path: str | Path) -> bool:
    """Whether ``path`` is a file holding a DICOM Segmentation object (reads the header only)."""
    import pydicom

    path = Path(path)
    if not path.is_file():
        return False
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
    except Exception:  # anything unreadable as DICOM is simply not a DICOM-SEG; the caller says what it expected
        return False
    return str(ds.get("SOPClassUID", "")) == SEGMENTATION_STORAGE


def read_dicom_seg(path: str | Path, series_folder: str | Path) -> DicomSeg:
    """Read the DICOM-SEG ``path`` as a label map on the grid of its source series, found in ``series_folder``.

    The folder may hold several series: the one the SEG references (ReferencedSeriesSequence) is used. Frames
    are matched to the series' slices by the SOP instances they were derived from, so the label map lines up
    with :func:`~vesalius.io.read_image` of the series voxel for voxel, whatever the slice order in the SEG.

    Raises:
        VesaliusError: ``path`` is not a DICOM-SEG, the folder does not hold the series it was made from, its
            segments overlap (a label map holds one label per voxel), or its frames do not fit the series.
    """
    import highdicom as hd
    import pydicom

    from vesalius.io.dicom import list_series
    from vesalius.io.read_write import read_image

    path = Path(path)
    if not is_dicom_seg(path):
        problem = "file not found" if not path.exists() else "not a DICOM Segmentation (DICOM-SEG) file"
        raise VesaliusError(problem, path, "give the DICOM-SEG file (e.g. the CASE_seg.dcm that predict writes)")
    dataset = pydicom.dcmread(path)
    referenced = [str(item.SeriesInstanceUID) for item in dataset.get("ReferencedSeriesSequence", [])]
    if not Path(series_folder).is_dir():
        raise VesaliusError("folder not found", series_folder, "give the folder of the series the SEG was made from")
    in_folder = list_series(series_folder)
    matches = [s for s in in_folder if s.uid in referenced]
    if not matches:
        held = "; ".join(s.summary() for s in in_folder) or "no DICOM series"
        raise VesaliusError(
            f"the DICOM-SEG was made from series {', '.join(referenced) or '(none named)'}, but {series_folder} "
            f"holds {held}",
            path,
            "give the folder of the series the segmentation was made from",
        )
    series = matches[0]
    grid = read_image(series_folder, series_uid=series.uid)
    uids = [
        str(pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)
        for f in series.files
    ]
    try:
        seg = hd.seg.Segmentation.from_dataset(dataset, copy=False)
        frames = seg.get_pixels_by_source_instance(uids, combine_segments=True, assert_missing_frames_are_empty=True)
    except (ValueError, RuntimeError, KeyError, AttributeError, TypeError) as e:  # highdicom's reasons, one line
        raise VesaliusError(
            f"cannot read the DICOM-SEG as a label map ({' '.join(str(e).split())[:200].rstrip('.')})",
            path,
            "a label map needs a binary DICOM-SEG with non-overlapping segments, made from this series",
        ) from None
    names = {int(s.SegmentNumber): str(s.get("SegmentLabel", s.SegmentNumber)) for s in dataset.SegmentSequence}
    array = np.transpose(np.asarray(frames), (2, 1, 0))  # (slices, rows, columns) -> (X, Y, Z)
    if array.shape != grid.spatial_shape:
        raise VesaliusError(
            f"the DICOM-SEG frames give a {array.shape} label map; the series is {grid.spatial_shape}",
            path,
            "give the series the segmentation was made from",
        )
    dtype = np.uint8 if max(names, default=0) < 256 else np.uint16
    return DicomSeg(grid.with_array(array.astype(dtype)[None]), names, series, dataset)
