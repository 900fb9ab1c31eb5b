"""De-identification (PS3.15 Annex E Basic Profile): no leaks, consistent UIDs and date shifts, pixels unchanged."""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from vesalius.cli import main
from vesalius.io import read_image, write_image
from vesalius.io.deidentify import AUDIT_NAME, DeidentifyOptions, deidentify, load_table, new_uid

MARKER = "LEAKMARKER"
TEXT_VRS = {"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT", "UR"}
CT = "1.2.840.10008.5.1.4.1.1.2"


def _make(
    path: Path,
    *,
    patient: str = "PAT-0001",
    study: str,
    series: str,
    frame: str,
    date: str = "20200115",
    modality: str = "CT",
    burned: str | None = None,
    ref: str | None = None,
) -> Path:
    """A small CT-like file with the marker in every text attribute Table E.1-1 lists, a sequence and a private tag."""
    ds = Dataset()
    for hex8, entry in load_table()["attributes"].items():
        tag = int(hex8, 16)
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            continue
        if vr in TEXT_VRS and keyword_for_tag(tag) and entry["basic"] != "K":
            setattr(ds, keyword_for_tag(tag), MARKER)
    ds.PatientName = "Doe^Jane"
    ds.PatientID = patient
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
    ds.StudyDate, ds.SeriesDate, ds.ContentDate = date, date, date
    ds.PatientBirthDate = "19700101"
    ds.Modality = modality
    if burned is not None:
        ds.BurnedInAnnotation = burned
    item = Dataset()
    item.ReferencedSOPClassUID = CT
    item.ReferencedSOPInstanceUID = ref or generate_uid()
    item.PatientName = MARKER  # a listed attribute inside a sequence
    item.InstitutionName = MARKER
    ds.ReferencedImageSequence = Sequence([item])
    nested = Dataset()
    nested.PerformingPhysicianName = MARKER
    ds.ProcedureCodeSequence = Sequence([nested])
    block = ds.private_block(0x0011, "LEAKCREATOR", create=True)
    block.add_new(0x01, "LO", MARKER)
    block.add_new(0x02, "LO", "Doe^Jane")
    ds.Rows = ds.Columns = 4
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = np.arange(16, dtype=np.int16).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CT
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def series(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    study, ser, frame = generate_uid(), generate_uid(), generate_uid()
    first = _make(src / "a" / "1.dcm", study=study, series=ser, frame=frame)
    _make(
        src / "a" / "2.dcm",
        study=study,
        series=ser,
        frame=frame,
        date="20200120",
        ref=pydicom.dcmread(first).SOPInstanceUID,
    )
    _make(src / "b" / "3.dcm", patient="PAT-0002", study=generate_uid(), series=generate_uid(), frame=generate_uid())
    (src / "notes.txt").write_text("not DICOM")
    return src


OPTIONS = DeidentifyOptions(key="secret")


def test_no_marker_or_identifier_left_in_generated_files(tmp_path, series):
    before = _hashes(series)
    report = deidentify(series, tmp_path / "out", OPTIONS)
    assert len(report.written) == 3 and [Path(r.source).name for r in report.skipped] == ["notes.txt"]
    for rec in report.written:
        data = Path(rec.output).read_bytes()
        for text in (MARKER, "Doe^Jane", "Doe", "PAT-000", "20200115", "20200120", "19700101", "LEAKCREATOR"):
            assert text.encode() not in data, (rec.output, text)
        ds = pydicom.dcmread(rec.output)
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
        assert not any(e.tag.is_private for e in ds)
    assert _hashes(series) == before  # the input is untouched
    audit = [json.loads(line) for line in (tmp_path / "out" / AUDIT_NAME).read_text().splitlines()]
    assert len(audit) == 4 and "PatientName" in audit[0]["emptied"]
    assert "Doe" not in (tmp_path / "out" / AUDIT_NAME).read_text()
    assert [a["source"] for a in audit] == ["a/1.dcm", "a/2.dcm", "b/3.dcm", "notes.txt"]
    assert audit[3]["status"] == "skipped" and str(tmp_path) not in (tmp_path / "out" / AUDIT_NAME).read_text()


def test_no_identifier_left_in_pydicom_test_files(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        files = sorted((Path(pydicom.data.__file__).parent / "test_files").rglob("*.dcm"))  # offline: no downloads
        src = tmp_path / "src"
        src.mkdir()
        originals = {}
        for i, f in enumerate(files):
            try:
                ds = pydicom.dcmread(f)
            except Exception:
                continue
            target = src / f"{i:03d}_{Path(f).name}"
            shutil.copy(f, target)
            originals[str(target)] = ds
        report = deidentify(src, tmp_path / "out", DeidentifyOptions(key="k", allow_burned_in=True))
    assert len(report.written) >= 20
    leaks = []
    for rec in report.written:
        ds = originals.get(rec.source)
        if ds is None:
            continue
        data = Path(rec.output).read_bytes()
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "InstitutionName", "ReferringPhysicianName"):
            value = str(ds.get(keyword, "") or "").strip()
            kept = f"{ds.get('Manufacturer', '')} {ds.get('ManufacturerModelName', '')}"  # kept by the profile
            if len(value) >= 4 and value not in kept and value.encode() in data:
                leaks.append((rec.source, keyword))
    assert leaks == []


def test_uids_consistent_linked_and_keyed(tmp_path, series):
    deidentify(series, tmp_path / "o1", OPTIONS)
    deidentify(series, tmp_path / "o2", OPTIONS)
    deidentify(series, tmp_path / "o3", DeidentifyOptions(key="other"))
    one, two = (pydicom.dcmread(tmp_path / "o1" / "a" / n) for n in ("1.dcm", "2.dcm"))
    src_one = pydicom.dcmread(series / "a" / "1.dcm")
    assert one.StudyInstanceUID == two.StudyInstanceUID != src_one.StudyInstanceUID
    assert one.SeriesInstanceUID == two.SeriesInstanceUID and one.FrameOfReferenceUID == two.FrameOfReferenceUID
    assert two.ReferencedImageSequence[0].ReferencedSOPInstanceUID == one.SOPInstanceUID
    assert one.file_meta.MediaStorageSOPInstanceUID == one.SOPInstanceUID
    assert one.StudyInstanceUID == new_uid(src_one.StudyInstanceUID, b"secret")
    assert pydicom.dcmread(tmp_path / "o2" / "a" / "1.dcm").SOPInstanceUID == one.SOPInstanceUID
    assert pydicom.dcmread(tmp_path / "o3" / "a" / "1.dcm").SOPInstanceUID != one.SOPInstanceUID
    assert len(one.StudyInstanceUID) <= 64 and one.StudyInstanceUID.startswith("2.25.")


def test_date_shift_per_patient_keeps_intervals(tmp_path, series):
    deidentify(series, tmp_path / "out", DeidentifyOptions(key="secret", retain_dates_shifted=True))
    one, two = (pydicom.dcmread(tmp_path / "out" / "a" / n) for n in ("1.dcm", "2.dcm"))
    from datetime import datetime

    def day(text: str) -> datetime:
        return datetime.strptime(text, "%Y%m%d")

    assert one.StudyDate != "20200115" and one.LongitudinalTemporalInformationModified == "MODIFIED"
    assert (day(two.StudyDate) - day(one.StudyDate)).days == 5
    shift = (day(one.StudyDate) - day("20200115")).days
    assert -3650 <= shift <= -1
    assert "113107" in [c.CodeValue for c in one.DeidentificationMethodCodeSequence]


def test_burned_in_refused_unless_allowed(tmp_path):
    src = tmp_path / "src"
    uids = {"study": generate_uid(), "series": generate_uid(), "frame": generate_uid()}
    _make(src / "us.dcm", modality="US", **uids)
    _make(src / "yes.dcm", burned="YES", **uids)
    _make(src / "no.dcm", modality="US", burned="NO", **uids)
    report = deidentify(src, tmp_path / "out", OPTIONS)
    assert sorted(Path(r.source).name for r in report.refused) == ["us.dcm", "yes.dcm"]
    assert not (tmp_path / "out" / "us.dcm").exists() and (tmp_path / "out" / "no.dcm").exists()
    allowed = deidentify(src, tmp_path / "out2", DeidentifyOptions(key="secret", allow_burned_in=True))
    assert sorted(Path(r.source).name for r in allowed.burned_in) == ["us.dcm", "yes.dcm"]
    assert main(["deidentify", str(src), str(tmp_path / "out3"), "--key", "k"]) == 2
    assert main(["deidentify", str(src), str(tmp_path / "out4"), "--key", "k", "--allow-burned-in"]) == 0


def test_linkage_only_when_asked(tmp_path, series):
    deidentify(series, tmp_path / "out", OPTIONS)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a", "b", AUDIT_NAME]
    link = tmp_path / "private" / "linkage.json"
    deidentify(series, tmp_path / "out2", OPTIONS, linkage=link)
    data = json.loads(link.read_text())
    assert {f["identifiers"]["PatientID"] for f in data["files"]} == {"PAT-0001", "PAT-0002"}
    assert not any(p.name == "linkage.json" for p in (tmp_path / "out2").rglob("*"))


def test_pixels_and_geometry_unchanged(tmp_path, make):
    image = make.volume(4, np.int16)
    folder = write_image(image, tmp_path / "series")
    deidentify(folder, tmp_path / "out", OPTIONS)
    (tmp_path / "out" / AUDIT_NAME).unlink()
    before, after = read_image(folder), read_image(tmp_path / "out")
    np.testing.assert_array_equal(after.array, before.array)
    for name in ("spacing", "origin", "direction"):
        np.testing.assert_array_equal(getattr(after.geometry, name), getattr(before.geometry, name))


def test_cli_errors_are_one_line(tmp_path, series, capsys, monkeypatch):
    monkeypatch.delenv("VESALIUS_DEID_KEY", raising=False)
    assert main(["deidentify", str(series), str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    assert main(["deidentify", str(series), str(series), "--key", "k"]) == 2
    assert main(["deidentify", str(tmp_path / "missing"), str(tmp_path / "out"), "--key", "k"]) == 2
    monkeypatch.setenv("VESALIUS_DEID_KEY", "from-env")
    assert main(["deidentify", str(series), str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "a" / "1.dcm").exists()


def test_options_keep_what_they_promise(tmp_path, series):
    ds = pydicom.dcmread(series / "a" / "1.dcm")
    ds.PatientSex, ds.PatientAge, ds.Allergies = "F", "050Y", "penicillin, call Jane Doe"
    ds.StudyDescription = "CT chest"
    ds.save_as(tmp_path / "one.dcm")
    options = DeidentifyOptions(key="k", retain_patient_characteristics=True, clean_descriptors=True)
    deidentify(tmp_path / "one.dcm", tmp_path / "out", options)
    out = pydicom.dcmread(tmp_path / "out" / "one.dcm")
    assert (out.PatientSex, out.PatientAge) == ("F", "050Y")
    assert out.Allergies == "ANONYMIZED" and out.StudyDescription == "ANONYMIZED"
    codes = [c.CodeValue for c in out.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113108", "113105"]


def test_generated_table_matches_the_standard_json(tmp_path):
    root = Path(__file__).resolve().parents[2]
    source = root.parent / "shared" / "data" / "dicom_standard"
    if not (source / "confidentiality_profile_attributes.json").exists():
        pytest.skip("shared/data/dicom_standard not available")
    import runpy

    generator = runpy.run_path(str(root / "tools" / "generate_deid_table.py"))
    generator["main"]([str(source), str(tmp_path / "table.json")])
    shipped = root / "src" / "vesalius" / "io" / "deidentify_table.json"
    assert (tmp_path / "table.json").read_text() == shipped.read_text()
    table = load_table()
    assert table["revision"] == "2024b" and "MIT" in table["licence"] and "NEMA" in table["notice"]
    assert table["attributes"]["00100010"]["basic"] == "Z" and "50xxxxxx" in table["patterns"]


def test_cli_linkage_outside_output_only(tmp_path, series):
    inside = ["--linkage", str(tmp_path / "out" / "link.json")]
    assert main(["deidentify", str(series), str(tmp_path / "out"), "--key", "k", *inside]) == 2
    assert not (tmp_path / "out" / "link.json").exists()
    assert (
        main(["deidentify", str(series), str(tmp_path / "out"), "--key", "k", "--linkage", str(tmp_path / "l.json")])
        == 0
    )
    assert (tmp_path / "l.json").stat().st_mode & 0o077 == 0  # identifiers: readable by the owner only
