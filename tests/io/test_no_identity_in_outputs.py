"""No patient identity in what Vesalius writes or shows: image headers, prediction outputs, reports, the viewer.

The source is a small CT series whose files carry made-up identifying text (patient name and ID, institution,
physicians, study and series descriptions, accession number, a private tag). Every output made from it is searched,
as bytes (decompressed where gzipped) and case-insensitively, for each of the made-up words:

- images written by :func:`~vesalius.io.write_image` in every volume format, from the series, from one of its files
  (whose SimpleITK image does carry the attributes as metadata) and after reorientation, and a DICOM series written
  from it; the geometry and the voxels still come back;
- the outputs of a prediction on the series folder (label map, probabilities), except the DICOM-SEG, which copies
  the patient and study attributes of its source on purpose: PACS files it in the same study by them;
- the HTML report of an evaluation of that prediction, its pictures, and an overlay drawn on the series;
- every page, list and volume the viewer serves for the series' images, including NIfTI files that hold the text
  in their free-text header fields or an extension (as some DICOM converters write them).

Case ids are chosen by whoever names the files or folders; they are not DICOM attributes and are not searched.
"""

from __future__ import annotations

import base64
import gzip
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from vesalius.io import Geometry, Image, read_image, write_image
from vesalius.io.dicom import write_dicom_series
from vesalius.io.image import to_sitk

IDENTITY = {
    "PatientName": "Quolbrent^Ysmaril",
    "PatientID": "QX7731PID",
    "PatientAddress": "Harrowmere Lane 4",
    "InstitutionName": "Ulvaris Klinikum",
    "InstitutionAddress": "Fennistock 12",
    "ReferringPhysicianName": "Varnholt^Edda",
    "PerformingPhysicianName": "Torvesk^Ilma",
    "OperatorsName": "Pellgrav^Sif",
    "StationName": "STATIONQZ9",
    "AccessionNumber": "ACCQX9041",
    "StudyID": "STQX55",
    "StudyDescription": "Wendrigal chest study",
    "SeriesDescription": "Ostrivane venous series",
    "ProtocolName": "Brandelmoor protocol",
    "ImageComments": "Yarrowfen comment",
}
"""Identifying attributes set on every file of the series; each value holds a made-up word of :data:`MARKERS`."""

MARKERS = (
    "quolbrent",
    "ysmaril",
    "qx7731pid",
    "harrowmere",
    "ulvaris",
    "fennistock",
    "varnholt",
    "torvesk",
    "pellgrav",
    "stationqz9",
    "accqx9041",
    "stqx55",
    "wendrigal",
    "ostrivane",
    "brandelmoor",
    "yarrowfen",
    "zanthorpe",  # the private tag's
)
GEOMETRY = Geometry(
    (0.8, 0.7, 2.5), (-12.5, 40.25, 3.0), tuple(np.array([[0, 1, 0], [1, 0, 0], [0, 0, -1]], float).ravel())
)
SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


def _leaks(data: bytes) -> list[str]:
    """The markers found in ``data`` (any case)."""
    lowered = data.lower()
    return [m for m in MARKERS if m.encode() in lowered]


def _content(path: Path) -> bytes:
    """A file's bytes, decompressed when gzipped."""
    data = path.read_bytes()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 12 x 10 x 5 CT series (left-handed, oblique axes) whose files carry :data:`IDENTITY` and a private tag."""
    folder = tmp_path_factory.mktemp("identity") / "series"
    array = (np.arange(12 * 10 * 5).reshape(1, 12, 10, 5) % 97 * 10 - 200).astype(np.int16)
    files = write_dicom_series(to_sitk(Image(array, GEOMETRY)), folder, modality="CT")
    for path in files:
        ds = pydicom.dcmread(path)
        for keyword, value in IDENTITY.items():
            setattr(ds, keyword, value)
        ds.private_block(0x0011, "IDENTITYTEST", create=True).add_new(0x01, "LO", "Zanthorpe private")
        ds.save_as(path)
    return folder


def test_the_source_carries_every_marker(series: Path) -> None:
    """The premise: the files hold every marker, and SimpleITK's image of one file holds them as metadata."""
    for path in sorted(series.iterdir()):
        assert _leaks(path.read_bytes()) == list(MARKERS)
    one = sitk.ReadImage(str(series / "slice_0000.dcm"))
    metadata = "".join(one.GetMetaData(k) for k in one.GetMetaDataKeys()).encode()
    assert {"quolbrent", "qx7731pid", "ulvaris", "ostrivane"} <= set(_leaks(metadata))


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_written_headers_carry_no_identity_and_keep_the_geometry(series: Path, suffix: str, tmp_path: Path) -> None:
    whole = read_image(series)
    reads = {
        "series": (whole, whole),
        "reoriented": (read_image(series, canonical=True), whole),  # written back in the orientation on disk
        "one file": (read_image(series / "slice_0000.dcm"), read_image(series / "slice_0000.dcm")),
    }
    for name, (image, expected) in reads.items():
        path = write_image(image, tmp_path / f"{name.replace(' ', '_')}{suffix}")
        assert _leaks(_content(path)) == [], f"{name} -> {suffix}"
        back = read_image(path)
        assert back.geometry.differences(expected.geometry, atol=1e-6) == [], f"{name} -> {suffix}"
        assert back.array.dtype == expected.array.dtype and np.array_equal(back.array, expected.array)


def test_a_dicom_series_written_from_it_carries_no_identity(series: Path, tmp_path: Path) -> None:
    image = read_image(series)
    write_image(image, tmp_path / "copy")
    for path in (tmp_path / "copy").iterdir():
        assert _leaks(path.read_bytes()) == [], path.name
    back = read_image(tmp_path / "copy")
    assert back.geometry.differences(image.geometry, atol=1e-6) == [] and np.array_equal(back.array, image.array)


@pytest.fixture(scope="module")
def predicted(series: Path) -> Path:
    """The output folder of a prediction (label map, probabilities, DICOM-SEG) on the series folder, by a
    threshold standing in for a network (the writing is the same whatever predicts)."""
    from vesalius.inference.files import ModelInput, segment_cases

    model = series.parent / "model"
    model.mkdir()

    def segment(image: Image) -> tuple[Image, Image]:
        foreground = image.array > 150
        probabilities = np.concatenate([~foreground, foreground]).astype(np.float32)
        return image.with_array(foreground.astype(np.uint8)), image.with_array(probabilities)

    out = series.parent / "predicted"
    segment_cases(series, out, ModelInput(1, 3, model), segment, {0: "background", 1: "organ"})
    return out


def test_prediction_outputs_carry_no_identity_but_the_dicom_seg(predicted: Path, series: Path) -> None:
    written = sorted(p.name for p in predicted.rglob("*") if p.is_file())
    assert written == ["manifest.jsonl", "series.nii.gz", "series_probabilities.nii.gz", "series_seg.dcm"]
    for path in predicted.rglob("*"):
        if path.is_file() and path.name != "series_seg.dcm":
            assert _leaks(_content(path)) == [], path.name
    label = read_image(predicted / "series.nii.gz")
    assert label.geometry.differences(read_image(series).geometry, atol=1e-6) == []
    seg = pydicom.dcmread(predicted / "series_seg.dcm")  # filed with its source: the same patient and study
    assert (seg.PatientName, seg.PatientID) == (IDENTITY["PatientName"], IDENTITY["PatientID"])


def test_report_and_overlay_of_the_series_show_no_identity(predicted: Path, series: Path, tmp_path: Path) -> None:
    from vesalius.cli import main
    from vesalius.evaluation.segmentation import evaluate_folder
    from vesalius.reporting.report import build_report

    label = read_image(predicted / "series.nii.gz")
    references, images = tmp_path / "references", tmp_path / "images"
    write_image(label, references / "series.nii.gz")
    write_image(read_image(series), images / "series.nii.gz")
    evaluate_folder(predicted, references, {1: "organ"}, output_dir=tmp_path / "evaluation")
    html = build_report(tmp_path / "evaluation", tmp_path / "report.html", images=images).read_bytes()
    assert _leaks(html) == []
    pictures = re.findall(rb"data:image/png;base64,([A-Za-z0-9+/=]+)", html)
    assert pictures and all(_leaks(base64.b64decode(p)) == [] for p in pictures)

    overlay = tmp_path / "overlay.png"
    assert main(["overlay", str(series), str(predicted / "series.nii.gz"), "-o", str(overlay)]) == 0
    assert _leaks(overlay.read_bytes()) == []


def _with_header_text(source: Path, target: Path) -> Path:
    """``source`` (a little-endian ``.nii`` written by Vesalius) as ``.nii.gz`` with identity in ``descrip``,
    ``aux_file`` and ``intent_name``, as a DICOM converter may write it."""
    data = bytearray(source.read_bytes())
    for start, size, text in ((148, 80, "Quolbrent^Ysmaril QX7731PID"), (228, 24, "Ulvaris"), (328, 16, "Wendrigal")):
        data[start : start + size] = text.encode().ljust(size, b"\0")
    target.write_bytes(gzip.compress(bytes(data)))
    return target


def _with_extension(source: Path, target: Path) -> Path:
    """``source`` (a little-endian ``.nii`` written by Vesalius) as ``.nii.gz`` with the identity in a NIfTI
    comment extension, as converters that keep the whole DICOM header write it."""
    data = source.read_bytes()
    assert struct.unpack("<i", data[:4])[0] == 348 and struct.unpack("<f", data[108:112])[0] == 352
    text = " ".join(IDENTITY.values()).encode() + b" Zanthorpe"
    body = text.ljust(-(-(len(text) + 8) // 16) * 16 - 8, b"\0")
    extension = struct.pack("<ii", len(body) + 8, 6) + body  # esize, ecode 6 (comment), data
    header = data[:108] + struct.pack("<f", 352 + len(extension)) + data[112:348]
    target.write_bytes(gzip.compress(header + b"\x01\0\0\0" + extension + data[352:]))
    return target


def test_the_viewer_serves_no_identity(predicted: Path, series: Path, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from vesalius.viewer.app import create_app
    from vesalius.viewer.cases import collect_cases

    image = read_image(series)
    images = tmp_path / "images"
    write_image(image, images / "series.nii.gz")  # as imported or converted by Vesalius: served as it is
    plain = write_image(image, tmp_path / "plain.nii", compress=False)
    _with_header_text(plain, images / "converter.nii.gz")
    _with_extension(plain, images / "dump.nii.gz")
    shutil.copyfile(series / "slice_0002.dcm", images / "slice.dcm")
    for name in ("converter.nii.gz", "dump.nii.gz", "slice.dcm"):
        assert _leaks(_content(images / name)), f"{name} should carry identity"
    cases = collect_cases([images], seg=predicted, ref=predicted)

    with TestClient(create_app(cases)) as client:
        pages = [client.get(url) for url in ("/", "/api/status", "/api/cases")]
        listed = pages[-1].json()["cases"]
        assert [c["id"] for c in listed] == ["converter", "dump", "series", "slice"]
        assert [c["broken"] for c in listed] == [None] * 4
        assert listed[2]["volumes"] == ["image", "prediction", "reference"]
        for page in pages:
            assert page.status_code == 200 and _leaks(page.content) == []
        for case in listed:
            for kind in case["volumes"]:
                response = client.get(f"/api/cases/{case['index']}/{kind}.nii.gz")
                assert response.status_code == 200
                served = gzip.decompress(response.content)
                assert _leaks(served) == [] and _leaks(str(response.headers).encode()) == [], (case["id"], kind)
                if kind == "image" and case["id"] != "slice":  # the series' volume, with or without header text
                    copy = tmp_path / f"served_{case['id']}_{kind}.nii"
                    copy.write_bytes(served)
                    back = read_image(copy)
                    assert back.geometry.differences(image.geometry, atol=1e-6) == []
                    assert np.array_equal(back.array, image.array)
        series_image = client.get(f"/api/cases/{listed[2]['index']}/image.nii.gz").content
        assert series_image == (images / "series.nii.gz").read_bytes()  # a clean NIfTI is still sent as it is
