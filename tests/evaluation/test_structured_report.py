"""DICOM SR (TID 1500) of `vesalius measure`: values and references read back with highdicom, the DICOM-SEG reader,
the CLI, and one-line errors."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from vesalius.cli import main
from vesalius.errors import VesaliusError
from vesalius.evaluation.measure import LabelMeasurement, measure_segmentation
from vesalius.evaluation.structured_report import (
    read_structured_report,
    structured_report,
    write_structured_report,
)
from vesalius.io import Geometry, Image, read_image, to_sitk, write_image
from vesalius.io.dicom import list_series, write_dicom_series
from vesalius.io.dicom_seg import read_dicom_seg, write_dicom_seg

SHAPE = (12, 10, 6)  # (X, Y, Z) = (columns, rows, slices)
# Array axis 0 -> +y, axis 1 -> -z, axis 2 -> -x (right-handed), so that a mixed-up axis shows in the centroid.
DIRECTION = (0.0, 0.0, -1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0)
GEOMETRY = Geometry((0.7, 0.8, 2.5), (-112.25, 37.5, 410.125), DIRECTION)
NAMES = {1: "organ", 2: "lesion"}


def _series(folder: Path, seed: int = 0) -> Image:
    """A CT series of random HU values written to ``folder``, read back as the grid every label map lies on."""
    values = np.random.default_rng(seed).integers(-1000, 1000, size=(1, *SHAPE), dtype=np.int16)
    write_dicom_series(to_sitk(Image(values, GEOMETRY)), folder, modality="CT")
    return read_image(folder)


@pytest.fixture
def case(tmp_path: Path) -> SimpleNamespace:
    """A series, a label map on its grid (label 1 in two components, label 2 in one) and its DICOM-SEG."""
    grid = _series(tmp_path / "series")
    labels = np.zeros((1, *SHAPE), np.uint8)
    labels[0, 1:4, 1:3, 1:3] = 1  # 12 voxels
    labels[0, 6:10, 5:9, 3:5] = 1  # 32 voxels, not touching the first box
    labels[0, 2:5, 6:9, 0:2] = 2
    label_map = grid.with_array(labels)
    (info,) = list_series(tmp_path / "series")
    seg = write_dicom_seg(label_map, info.files, tmp_path / "seg.dcm", NAMES)
    return SimpleNamespace(
        root=tmp_path,
        series=tmp_path / "series",
        info=info,
        labels=label_map,
        seg=seg,
        measured=measure_segmentation(label_map, labels=NAMES),
        sources=[pydicom.dcmread(f) for f in info.files],
    )


def _centroid(lab: LabelMeasurement) -> np.ndarray:
    """The centroid of all the label's voxels: its components' centroids weighted by their voxels."""
    return sum(c.voxels * np.asarray(c.centroid_world) for c in lab.components) / lab.voxels


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ------------------------------------------------------------------------------------------------- DICOM-SEG


def test_read_dicom_seg_gives_the_label_map_back_voxel_for_voxel(case: SimpleNamespace) -> None:
    seg = read_dicom_seg(case.seg, case.series)
    assert np.array_equal(seg.labels.array, case.labels.array)
    assert seg.labels.geometry.differences(case.labels.geometry) == []
    assert seg.names == NAMES and seg.series.uid == case.info.uid
    assert seg.dataset.SOPInstanceUID == pydicom.dcmread(case.seg).SOPInstanceUID


def test_read_dicom_seg_refuses_a_non_seg_and_another_series(case: SimpleNamespace) -> None:
    with pytest.raises(VesaliusError, match="not a DICOM Segmentation"):
        read_dicom_seg(case.info.files[0], case.series)
    _series(case.root / "other", seed=1)
    with pytest.raises(VesaliusError, match="made from series") as caught:
        read_dicom_seg(case.seg, case.root / "other")
    assert str(case.seg) in caught.value.one_line()


# -------------------------------------------------------------------------------------------- the report


def test_report_values_read_back_with_highdicom_match_measure(case: SimpleNamespace) -> None:
    seg = pydicom.dcmread(case.seg)
    path = write_structured_report(seg, case.sources, case.measured, case.root / "sr.dcm")
    sr = hd.sr.srread(path)
    assert isinstance(sr, hd.sr.Comprehensive3DSR)
    report = hd.sr.MeasurementReport.from_sequence(sr.content)
    groups = report.get_volumetric_roi_measurement_groups()
    assert len(groups) == 2
    for group in groups:
        number = group.referenced_segment.referenced_segment_numbers[0]
        lab = case.measured.labels[number]  # write_dicom_seg numbers segments 1, 2 as the label values here
        assert group.tracking_identifier == lab.name
        (volume,) = group.get_measurements(name=codes.SCT.Volume)
        assert volume.unit.value == "ml"
        assert volume.value == pytest.approx(lab.size, rel=1e-3)
        found = {m.name.value: m for m in group.get_measurements()}
        assert found["components"].value == lab.num_components
        centroid = [found[f"centroid-{a}"].value for a in "xyz"]
        assert all(found[f"centroid-{a}"].unit.value == "mm" for a in "xyz")
        np.testing.assert_allclose(centroid, _centroid(lab), rtol=1e-3)
    assert case.measured.labels[1].num_components == 2, "the phantom has a label of two components"

    read = read_structured_report(path)
    assert sorted(read) == [1, 2]
    for number, lab in case.measured.labels.items():
        assert read[number].label == lab.name and read[number].components == lab.num_components
        assert read[number].volume_ml == pytest.approx(lab.size, rel=1e-3)
        np.testing.assert_allclose(read[number].centroid_mm, _centroid(lab), rtol=1e-3)


def test_report_references_the_seg_the_series_and_their_study(case: SimpleNamespace) -> None:
    seg = pydicom.dcmread(case.seg)
    sr = structured_report(seg, case.sources, case.measured)
    assert sr.StudyInstanceUID == case.sources[0].StudyInstanceUID == seg.StudyInstanceUID
    assert sr.PatientID == case.sources[0].PatientID
    assert sr.SeriesInstanceUID not in (seg.SeriesInstanceUID, case.info.uid)
    evidence = {(series, instance) for _, series, instance, _ in sr.get_evidence(current_procedure_only=True)}
    assert {(seg.SeriesInstanceUID, seg.SOPInstanceUID)} | {
        (case.info.uid, ds.SOPInstanceUID) for ds in case.sources
    } == evidence
    report = hd.sr.MeasurementReport.from_sequence(sr.content)
    assert report.get_observer_contexts()[0].observer_type == codes.DCM.Device
    for group in report.get_volumetric_roi_measurement_groups():
        reference = group.referenced_segment
        assert reference.referenced_sop_instance_uid == seg.SOPInstanceUID
        assert reference.referenced_sop_class_uid == seg.SOPClassUID
        assert reference.source_series_for_segmentation.value == case.info.uid
    read = read_structured_report(_saved(sr, case.root / "sr.dcm"))
    assert {r.segmentation_uid for r in read.values()} == {seg.SOPInstanceUID}
    assert {r.source_series_uid for r in read.values()} == {case.info.uid}


def _saved(dataset: pydicom.Dataset, path: Path) -> Path:
    dataset.save_as(path, enforce_file_format=True)
    return path


def test_labels_go_with_segments_by_name_and_empty_segments_report_zero(case: SimpleNamespace) -> None:
    labels = np.where(case.labels.array == 2, 5, case.labels.array).astype(np.uint8)  # values 1 and 5
    label_map = case.labels.with_array(labels)
    names = {1: "organ", 3: "spleen", 5: "lesion"}  # segments 1 organ, 2 spleen (empty), 3 lesion
    seg_path = write_dicom_seg(label_map, case.info.files, case.root / "seg3.dcm", names)
    measured = measure_segmentation(label_map, labels=names)
    sr = structured_report(pydicom.dcmread(seg_path), case.sources, measured)
    read = read_structured_report(_saved(sr, case.root / "sr.dcm"))
    assert [read[n].label for n in (1, 2, 3)] == ["organ", "spleen", "lesion"]
    assert read[3].volume_ml == pytest.approx(measured.labels[5].size, rel=1e-3)
    assert (read[2].volume_ml, read[2].components, read[2].centroid_mm) == (0.0, 0, None)


def test_report_refuses_a_non_seg_another_series_and_foreign_labels(case: SimpleNamespace) -> None:
    seg = pydicom.dcmread(case.seg)
    with pytest.raises(VesaliusError, match="not a DICOM-SEG"):
        structured_report(case.sources[0], case.sources, case.measured)
    _series(case.root / "other", seed=1)
    others = [pydicom.dcmread(f) for f in list_series(case.root / "other")[0].files]
    with pytest.raises(VesaliusError, match="was made from series"):
        structured_report(seg, others, case.measured)
    foreign = measure_segmentation(case.labels.with_array(case.labels.array * 3), labels={3: "liver", 6: "tumour"})
    with pytest.raises(VesaliusError, match="matches no segment"):
        structured_report(seg, case.sources, foreign)


def test_read_structured_report_refuses_what_is_not_one(case: SimpleNamespace) -> None:
    with pytest.raises(VesaliusError, match="not a DICOM SR measurement report"):
        read_structured_report(case.seg)
    with pytest.raises(VesaliusError, match="file not found"):
        read_structured_report(case.root / "missing.dcm")


# ------------------------------------------------------------------------------------------------------- CLI


def test_cli_measure_writes_a_report_matching_its_table(case: SimpleNamespace, capsys: pytest.CaptureFixture) -> None:
    table = case.root / "m.json"
    args = ["measure", str(case.seg), "--source", str(case.series), "--sr", str(case.root / "sr.dcm")]
    assert main([*args, "-o", str(table)]) == 0
    printed = capsys.readouterr().out
    assert "organ: " in printed and "in 2 component(s)" in printed and "structured report written" in printed
    read = read_structured_report(case.root / "sr.dcm")
    for number, lab in case.measured.labels.items():
        assert read[number].volume_ml == pytest.approx(lab.size, rel=1e-3)
        assert read[number].components == lab.num_components
        np.testing.assert_allclose(read[number].centroid_mm, _centroid(lab), rtol=1e-3)
    assert '"name": "lesion"' in table.read_text(encoding="utf-8")


def test_cli_measure_errors_are_one_line(case: SimpleNamespace, capsys: pytest.CaptureFixture) -> None:
    nifti = write_image(case.labels, case.root / "labels.nii.gz")
    report = str(case.root / "sr.dcm")
    assert main(["measure", str(nifti), "--source", str(case.series), "--sr", report]) == 2
    assert "--sr needs the segmentation as a DICOM-SEG" in _one_error_line(capsys.readouterr().err)
    assert main(["measure", str(case.seg), "--sr", report]) == 2
    assert "--source SERIES_DIR" in _one_error_line(capsys.readouterr().err)
    _series(case.root / "other", seed=1)
    assert main(["measure", str(case.seg), "--source", str(case.root / "other"), "--sr", report]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: {case.seg}:") and "made from series" in line
    assert not (case.root / "sr.dcm").exists()
