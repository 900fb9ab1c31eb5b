"""The measurements of a segmentation as a DICOM Structured Report (TID 1500 Measurement Report), so that a PACS
or viewer (OHIF, 3D Slicer) shows them next to the DICOM-SEG and the series they were made on.

Built with highdicom, which encodes the templates and validates the content. The document:

* IOD: Comprehensive 3D SR. It is the SR class that allows every content item TID 1500 may hold (the Enhanced SR
  excludes 3D spatial coordinates, which a later version could add, e.g. a centroid point or a surface) and the
  one OHIF and dcmqi read measurement reports from.
* Observation context: a device observer, Vesalius, with its version; the subject is the patient of the series.
* Procedure reported: the modality's "unspecified body region" LOINC code (CT, MR, PET, NM, X-ray), else SNOMED
  "Imaging procedure".
* One TID 1411 Volumetric ROI group per segment of the SEG, referencing the segment (the SEG's SOP instance and
  segment number) and the source series (Source Series for Segmentation); tracking identifier = the segment's
  label, tracking UID = the segment's TrackingUID when the SEG gives one, else a new UID; finding type and category
  = the segment's segmented property type and category, finding site = its anatomic region when it has one. The
  algorithm (Vesalius measure, version, connectivity) is named on each group.
* Measurements in each group: the volume (SNOMED 118565006 "Volume", UCUM ``ml``); the number of connected
  components (unit UCUM ``{count}``); the centroid of all the segment's voxels as three numbers, x, y and z in
  the DICOM patient coordinate system (mm, LPS: the same frame as Vesalius' world coordinates). A segment that
  covers no voxel reports volume 0 and 0 components and has no centroid.

The centroid is three NUM items because TID 1411 gives the region of a group by its segment reference alone: a
measurement inside it may not carry its own spatial coordinates (highdicom refuses a SCOORD3D there), and a
second region reference (a SCOORD3D point) would make the group ambiguous. No standard code names a centroid
coordinate or a component count, so these use codes of a private coding scheme, ``99VSL`` (designators starting
with ``99`` are reserved for private schemes, PS3.16 section 8.2); their meanings read as plain text in any
viewer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

from vesalius.errors import VesaliusError
from vesalius.evaluation.measure import LabelMeasurement, Measurements
from vesalius.io.atomic import atomic_path

__all__ = ["ReportedSegment", "read_structured_report", "structured_report", "write_structured_report"]

SCHEME = "99VSL"
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
_CENTROID = (
    ("centroid-x", "Centroid x (patient, LPS)"),
    ("centroid-y", "Centroid y (patient, LPS)"),
    ("centroid-z", "Centroid z (patient, LPS)"),
)
_COMPONENTS = ("components", "Number of connected components")
_ML_PER_UNIT = {"ml": 1.0, "mL": 1.0, "cm3": 1.0, "mm3": 1e-3, "l": 1e3, "L": 1e3}
_PROCEDURES = {
    "CT": "CTUnspecifiedBodyRegion",
    "MR": "MRIUnspecifiedBodyRegion",
    "PT": "PETUnspecifiedBodyRegion",
    "NM": "NMUnspecifiedBodyRegion",
    "CR": "XRUnspecifiedBodyRegion",
    "DX": "XRUnspecifiedBodyRegion",
}
_FIX_SOURCE = "give the DICOM-SEG and the series it was made from (both as written by vesalius predict)"


@dataclass(frozen=True)
class ReportedSegment:
    """The measurements a report gives for one segment, as :func:`read_structured_report` reads them.

    Attributes:
        segment_number: the segment's number in the referenced SEG.
        label: the group's tracking identifier (the segment label).
        tracking_uid: the group's tracking UID.
        segmentation_uid: SOP Instance UID of the referenced SEG.
        source_series_uid: Series Instance UID of the series the SEG was made from, ``None`` when not given.
        volume_ml: volume in mL (converted from the UCUM unit given), ``None`` when not reported or not in a
            volume unit.
        components: number of connected components, ``None`` when not reported.
        centroid_mm: ``(x, y, z)`` in patient LPS coordinates (mm), ``None`` when not reported.
    """

    segment_number: int
    label: str
    tracking_uid: str
    segmentation_uid: str
    source_series_uid: str | None
    volume_ml: float | None
    components: int | None
    centroid_mm: tuple[float, float, float] | None


def structured_report(
    seg: Any,
    source_datasets: Sequence[Any],
    measurements: Measurements,
    *,
    procedure_reported: Any | None = None,
    description: str = "Vesalius measurements",
) -> Any:
    """A TID 1500 Measurement Report of ``measurements``, one group per segment of ``seg``.

    Args:
        seg: the DICOM-SEG (pydicom Dataset) the measurements were made of.
        source_datasets: the datasets of the series the SEG was made from (headers suffice; pixel data is not
            read). The report joins their study and patient.
        measurements: :func:`~vesalius.evaluation.measure.measure_segmentation` of the SEG's label map (3D). A
            measured label goes with the segment whose label equals its name, else with the segment whose number
            equals its value (:func:`~vesalius.io.dicom_seg.read_dicom_seg` gives segment numbers as values and
            segment labels as names; ``predict`` numbers segments 1, 2, ... in the order of the label values).
        procedure_reported: a code (pydicom ``Code`` or highdicom ``CodedConcept``) for the imaging procedure;
            by default one derived from the series' modality.
        description: the SR's SeriesDescription.

    Returns:
        A ``highdicom.sr.Comprehensive3DSR`` (a pydicom Dataset) in a new series of the source's study.

    Raises:
        VesaliusError: ``seg`` is not a DICOM-SEG, was not made from ``source_datasets``, the measurements are 2D,
            were made on another grid, or hold a label that matches no segment.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    sources = list(source_datasets)
    _check_references(seg, sources, measurements)
    series_uid = str(sources[0].SeriesInstanceUID)
    algorithm = hd.sr.AlgorithmIdentification(
        name="Vesalius measure", version=version("vesalius"), parameters=[f"connectivity={measurements.connectivity}"]
    )
    matched = _match_segments(seg, measurements)
    groups = []
    for item in seg.SegmentSequence:
        number = int(item.SegmentNumber)
        label = str(item.get("SegmentLabel", number))
        sites = [hd.sr.FindingSite(hd.sr.CodedConcept.from_dataset(r)) for r in item.get("AnatomicRegionSequence", [])]
        groups.append(
            hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=str(item.get("TrackingUID", "") or hd.UID()), identifier=label[:64]
                ),
                referenced_segment=hd.sr.ReferencedSegment(
                    sop_class_uid=SEGMENTATION_STORAGE,
                    sop_instance_uid=str(seg.SOPInstanceUID),
                    segment_number=number,
                    source_series=hd.sr.SourceSeriesForSegmentation(series_uid),
                ),
                finding_type=_code(hd, item, "SegmentedPropertyTypeCodeSequence"),
                finding_category=_code(hd, item, "SegmentedPropertyCategoryCodeSequence"),
                finding_sites=sites or None,
                algorithm_id=algorithm,
                measurements=_measurements(hd, codes, matched.get(number)),
            )
        )
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=_device_uid(), name=f"Vesalius {version('vesalius')}"[:64], manufacturer_name="Vesalius"
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(
            observer_device_context=hd.sr.ObserverContext(
                observer_type=codes.DCM.Device, observer_identifying_attributes=device
            )
        ),
        procedure_reported=procedure_reported or _procedure(codes, sources[0]),
        imaging_measurements=groups,
    )
    try:
        return hd.sr.Comprehensive3DSR(
            evidence=[seg, *sources],
            content=report,
            series_instance_uid=hd.UID(),
            series_number=int(getattr(sources[0], "SeriesNumber", 0) or 0) + 2000,  # the SEG is +1000
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="Vesalius",
            is_complete=True,
            series_description=description[:64],
            software_versions=version("vesalius"),
        )
    except (ValueError, TypeError, AttributeError) as e:  # highdicom checks the evidence against the standard
        raise VesaliusError(
            f"cannot build the structured report ({' '.join(str(e).split())[:200].rstrip('.')})", None, _FIX_SOURCE
        ) from None


def write_structured_report(
    seg: Any, source_datasets: Sequence[Any], measurements: Measurements, path: str | Path, **options: Any
) -> Path:
    """Write :func:`structured_report` (``options`` are its keyword arguments) to ``path`` atomically; returns it."""
    report = structured_report(seg, source_datasets, measurements, **options)
    path = Path(path)
    with atomic_path(path) as tmp:
        report.save_as(tmp, enforce_file_format=True)
    return path


def read_structured_report(path: str | Path) -> dict[int, ReportedSegment]:
    """The per-segment measurements of a TID 1500 report, by segment number (groups without a segment reference,
    e.g. planar ROIs, are left out).

    Raises:
        VesaliusError: ``path`` is missing, not a DICOM SR, or not a Measurement Report of segments.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    path = Path(path)
    if not path.is_file():
        raise VesaliusError("file not found", path, "check the path")
    try:
        sr = hd.sr.srread(path)
        report = hd.sr.MeasurementReport.from_sequence(sr.content)
        groups = report.get_volumetric_roi_measurement_groups(reference_type=codes.DCM.ReferencedSegment)
    except Exception as e:  # pydicom and highdicom raise many kinds for a file that is not what they expect
        raise VesaliusError(
            f"not a DICOM SR measurement report ({' '.join(str(e).split())[:200].rstrip('.')})",
            path,
            "give a structured report written by vesalius measure --sr",
        ) from None
    out = {}
    for group in groups:
        segment = group.referenced_segment
        number = int(segment.referenced_segment_numbers[0])
        source = segment.source_series_for_segmentation
        x, y, z = (_value(group, hd.sr.CodedConcept(code, SCHEME, meaning)) for code, meaning in _CENTROID)
        count = _value(group, hd.sr.CodedConcept(_COMPONENTS[0], SCHEME, _COMPONENTS[1]))
        out[number] = ReportedSegment(
            segment_number=number,
            label=str(group.tracking_identifier),
            tracking_uid=str(group.tracking_uid),
            segmentation_uid=str(segment.referenced_sop_instance_uid),
            source_series_uid=None if source is None else str(source.value),
            volume_ml=_volume_ml(group, codes.SCT.Volume),
            components=None if count is None else round(count),
            centroid_mm=None if x is None or y is None or z is None else (x, y, z),
        )
    return out


def _value(group: Any, name: Any) -> float | None:
    found = group.get_measurements(name=name)
    return float(found[0].value) if found else None


def _volume_ml(group: Any, name: Any) -> float | None:
    """The group's volume in mL, whichever UCUM volume unit another writer chose; ``None`` for an unknown one."""
    found = group.get_measurements(name=name)
    factor = _ML_PER_UNIT.get(str(found[0].unit.value)) if found else None
    return None if factor is None else float(found[0].value) * factor


def _check_references(seg: Any, sources: list[Any], measurements: Measurements) -> None:
    """Refuse a SEG that is not one, sources of several series or not the SEG's, and measurements not of it."""
    if str(seg.get("SOPClassUID", "")) != SEGMENTATION_STORAGE:
        raise VesaliusError("the segmentation is not a DICOM-SEG", None, _FIX_SOURCE)
    if not sources:
        raise VesaliusError("no source series was given", None, _FIX_SOURCE)
    series = {str(ds.get("SeriesInstanceUID", "")) for ds in sources}
    if len(series) != 1:
        raise VesaliusError(f"the source datasets belong to {len(series)} series", None, "give one series")
    (series_uid,) = series
    referenced = [str(item.SeriesInstanceUID) for item in seg.get("ReferencedSeriesSequence", [])]
    if series_uid not in referenced:
        raise VesaliusError(
            f"the DICOM-SEG was made from series {', '.join(referenced) or '(none named)'}, not from {series_uid}",
            None,
            _FIX_SOURCE,
        )
    if str(seg.get("StudyInstanceUID", "")) != str(sources[0].get("StudyInstanceUID", "")):
        raise VesaliusError("the DICOM-SEG belongs to another study than the source series", None, _FIX_SOURCE)
    if measurements.ndim != 3:
        raise VesaliusError(
            f"the measurements are {measurements.ndim}D; a DICOM-SEG report needs 3D volumes", None, _FIX_SOURCE
        )
    pixel_spacing = [float(v) for v in sources[0].get("PixelSpacing", None) or []]  # (between rows, columns)
    if len(pixel_spacing) == 2 and not all(
        math.isclose(a, b, rel_tol=1e-4)
        for a, b in zip(pixel_spacing, (measurements.spacing[1], measurements.spacing[0]), strict=True)
    ):
        raise VesaliusError(
            f"the measurements were made on a grid of spacing {measurements.spacing} mm; the series has pixel "
            f"spacing {pixel_spacing} mm",
            None,
            "measure the label map on the series' grid (e.g. read the DICOM-SEG with read_dicom_seg)",
        )


def _match_segments(seg: Any, measurements: Measurements) -> dict[int, LabelMeasurement]:
    """Segment number -> the measured label that goes with it (by name, else by value; see
    :func:`structured_report`)."""
    numbers = {int(item.SegmentNumber): str(item.get("SegmentLabel", "")) for item in seg.SegmentSequence}
    by_label: dict[str, list[int]] = {}
    for number, label in numbers.items():
        by_label.setdefault(label, []).append(number)
    matched: dict[int, LabelMeasurement] = {}
    for value, lab in measurements.labels.items():
        named = by_label.get(lab.name, [])
        number = named[0] if len(named) == 1 else value if value in numbers else None
        if number is None or number in matched:
            raise VesaliusError(
                f"measured label {value} ('{lab.name}') matches no segment of the DICOM-SEG (segments: "
                f"{', '.join(f'{n} {label!r}' for n, label in numbers.items())})",
                None,
                "measure the label map of this DICOM-SEG",
            )
        matched[number] = lab
    return matched


def _measurements(hd: Any, codes: Any, lab: LabelMeasurement | None) -> list[Any]:
    """Volume, component count and (for a non-empty segment) centroid of one segment, as TID 300 items."""
    count = hd.sr.CodedConcept("{count}", "UCUM", "count")
    items = [
        hd.sr.Measurement(
            name=codes.SCT.Volume,
            value=0.0 if lab is None else lab.size,
            unit=hd.sr.CodedConcept("ml", "UCUM", "milliliter"),
        ),
        hd.sr.Measurement(
            name=hd.sr.CodedConcept(_COMPONENTS[0], SCHEME, _COMPONENTS[1]),
            value=0 if lab is None else lab.num_components,
            unit=count,
        ),
    ]
    if lab is not None and lab.voxels:
        # The centroid of the union is the voxel-weighted mean of the components' centroids.
        centroid = [sum(c.voxels * c.centroid_world[axis] for c in lab.components) / lab.voxels for axis in range(3)]
        items += [
            hd.sr.Measurement(name=hd.sr.CodedConcept(code, SCHEME, meaning), value=value, unit=codes.UCUM.Millimeter)
            for (code, meaning), value in zip(_CENTROID, centroid, strict=True)
        ]
    return items


def _code(hd: Any, item: Any, keyword: str) -> Any | None:
    sequence = item.get(keyword, [])
    return hd.sr.CodedConcept.from_dataset(sequence[0]) if sequence else None


def _procedure(codes: Any, source: Any) -> Any:
    name = _PROCEDURES.get(str(source.get("Modality", "")).strip().upper())
    return getattr(codes.LN, name) if name else codes.SCT.ImagingProcedure


def _device_uid() -> str:
    """A UID for this Vesalius version as an observer device: the same for every report of the version."""
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=["Vesalius", version("vesalius")]))
