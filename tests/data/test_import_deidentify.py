"""``vesalius import --deidentify``: nothing that names a patient reaches the workspace, the images stay the same.

The source is a pairs data set whose DICOM series carry a patient's name, record number, institution and referring
physician, whose folder names hold the patient's name, and a NIfTI case whose file name and header hold another
name. Every byte under the imported data set's folder (and the decompressed content of every ``.gz`` file) is
searched for those strings.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from vesalius.cli import main
from vesalius.data.dataset import Dataset
from vesalius.data.importers import import_dataset, pseudonym_case_id
from vesalius.errors import VesaliusError
from vesalius.io import read_image, write_image
from vesalius.io.deidentify import AUDIT_NAME, DeidentifyOptions

KNOWN = {
    "PatientName": "Zyxwort^Quillane",
    "PatientID": "MRN-4711-0815",
    "InstitutionName": "St Elsewhere Infirmary",
    "ReferringPhysicianName": "Strangelove^Merkin",
    "PatientBirthDate": "19450508",
    "AccessionNumber": "ACC98765",
    "StudyDescription": "Zyxwort follow-up",
    "SeriesDescription": "Quillane chest",
}
OTHER_NAME = "Blorvik^Tamsin"  # the NIfTI case's header note; its file name holds "Blorvik_Tamsin"
NEEDLES = ("Zyxwort", "Quillane", "MRN-4711", "Elsewhere", "Strangelove", "19450508", "ACC98765", "Blorvik", "Tamsin")
OPTIONS = DeidentifyOptions(key="secret")


def _identify(folder: Path, burned_in: bool = False) -> None:
    """Give every file of a written series the known identifying attributes and a private tag."""
    for path in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        for keyword, value in KNOWN.items():
            setattr(ds, keyword, value)
        ds.private_block(0x0029, "ZYXWORT CREATOR", create=True).add_new(0x01, "LO", KNOWN["PatientName"])
        if burned_in:
            ds.BurnedInAnnotation = "YES"
        ds.save_as(path)


@pytest.fixture
def source(tmp_path: Path, make) -> Path:  # type: ignore[no-untyped-def]
    """Two DICOM series cases named after the patient, and one NIfTI case named (and annotated) after another."""
    root = tmp_path / "src"
    for i in range(2):
        write_image(make.volume(i, np.int16), root / "images" / f"Zyxwort_Quillane_{i}")
        _identify(root / "images" / f"Zyxwort_Quillane_{i}")
        write_image(make.label(i, values=(0, 1)), root / "labels" / f"Zyxwort_Quillane_{i}.nii.gz")
    image = sitk.GetImageFromArray(np.arange(60, dtype=np.int16).reshape(3, 4, 5))
    image.SetMetaData("ITK_FileNotes", OTHER_NAME)  # written into the NIfTI header's descrip field
    sitk.WriteImage(image, root / "images" / "Blorvik_Tamsin.nii.gz")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 4, 5), np.uint8)), root / "labels" / "Blorvik_Tamsin.nii.gz")
    return root


def _leaks(folder: Path, needles: tuple[str, ...]) -> list[tuple[str, str]]:
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        contents = [path.name.encode(), path.read_bytes()]
        if path.name.endswith(".gz"):
            contents.append(gzip.decompress(contents[1]))
        found += [(str(path), n) for n in needles for data in contents if n.encode() in data]
    return found


def test_nothing_identifying_reaches_the_workspace(tmp_path, source, workspace, unchanged):
    untouched = unchanged(source)
    assert _leaks(source, NEEDLES)  # the source does hold them
    dataset, report = import_dataset(source, "deid", workspace=workspace, deidentify=OPTIONS)
    untouched()
    assert report.ok, report.lines()
    assert _leaks(dataset.root, (*NEEDLES, str(source), "src/images")) == []
    stored = Dataset.load(dataset.root)
    assert all(c.case_id.startswith("case-") and c.source == [] for c in stored.cases)
    assert stored.source == {"layout": "pairs", "deidentified": OPTIONS.method()}
    assert any("non-DICOM" in note for note in stored.notes)
    audit = [json.loads(line) for line in (dataset.root / AUDIT_NAME).read_text(encoding="utf-8").splitlines()]
    assert len(audit) == len(list(source.rglob("*.dcm"))) and all(a["status"] == "deidentified" for a in audit)
    assert all("PatientName" in a["emptied"] and "private" in a["removed"] for a in audit)
    assert not list((workspace / "datasets").glob(".staging*/*"))  # no scratch copy left behind


def test_voxels_and_geometry_equal_a_plain_import(source, workspace):
    plain, _ = import_dataset(source, "plain", workspace=workspace)
    deid, _ = import_dataset(source, "deid", workspace=workspace, deidentify=OPTIONS)
    assert len(deid.cases) == len(plain.cases) == 3
    # the leak search has teeth: a plain import keeps the names (case ids, paths, the NIfTI header copied as is)
    assert {"Zyxwort", "Quillane", "Blorvik", "Tamsin"} <= {n for _, n in _leaks(plain.root, NEEDLES)}
    for case in plain.cases:
        other = deid.case(pseudonym_case_id(case.case_id, b"secret"))
        pairs = [
            (plain.image_paths(case)[0], deid.image_paths(other)[0]),
            (plain.label_path(case), deid.label_path(other)),
        ]
        for want_path, got_path in pairs:
            want, got = read_image(want_path), read_image(got_path)
            np.testing.assert_array_equal(got.array, want.array)
            for name in ("spacing", "origin", "direction"):
                np.testing.assert_array_equal(getattr(got.geometry, name), getattr(want.geometry, name))


def test_same_key_same_case_ids(source, workspace):
    ids = [
        [c.case_id for c in import_dataset(source, name, workspace=workspace, deidentify=options)[0].cases]
        for name, options in (("a", OPTIONS), ("b", DeidentifyOptions(key="secret", retain_dates_shifted=True)))
    ]
    other = import_dataset(source, "c", workspace=workspace, deidentify=DeidentifyOptions(key="other"))[0]
    assert ids[0] == ids[1] and set(ids[0]).isdisjoint(c.case_id for c in other.cases)
    assert ids[0] == sorted(ids[0])  # not in the order of the source's (identifying) names


def test_linkage_only_when_asked_and_outside_the_workspace(tmp_path, source, workspace):
    link = tmp_path / "private" / "linkage.json"
    dataset, _ = import_dataset(source, "deid", workspace=workspace, deidentify=OPTIONS, linkage=link)
    cases = json.loads(link.read_text(encoding="utf-8"))["cases"]
    assert {c["original_case_id"] for c in cases} == {"Zyxwort_Quillane_0", "Zyxwort_Quillane_1", "Blorvik_Tamsin"}
    assert {c["case_id"] for c in cases} == {c.case_id for c in dataset.cases}
    ids = {d["identifiers"]["PatientID"] for c in cases for d in c["dicom"]}
    assert ids == {KNOWN["PatientID"]} and link.stat().st_mode & 0o077 == 0
    with pytest.raises(VesaliusError, match="inside the workspace"):
        import_dataset(source, "d2", workspace=workspace, deidentify=OPTIONS, linkage=workspace / "link.json")
    with pytest.raises(VesaliusError, match="only written when de-identifying"):
        import_dataset(source, "d3", workspace=workspace, linkage=tmp_path / "l.json")
    assert not (workspace / "datasets" / "d2").exists() and not (workspace / "datasets" / "d3").exists()


def test_burned_in_text_refused_unless_allowed(source, workspace):
    _identify(source / "images" / "Zyxwort_Quillane_1", burned_in=True)
    n = len(list((source / "images" / "Zyxwort_Quillane_1").glob("*.dcm")))
    with pytest.raises(VesaliusError, match=f"{n} DICOM images may show burned-in text") as refused:
        import_dataset(source, "deid", workspace=workspace, deidentify=OPTIONS)
    assert "--allow-burned-in" in str(refused.value) and not (workspace / "datasets" / "deid").exists()
    allowed = DeidentifyOptions(key="secret", allow_burned_in=True)
    dataset, _ = import_dataset(source, "deid", workspace=workspace, deidentify=allowed)
    assert any(f"{n} DICOM images may show burned-in text" in note for note in dataset.notes)


def test_cli(tmp_path, source, workspace, capsys, monkeypatch):
    monkeypatch.delenv("VESALIUS_DEID_KEY", raising=False)
    base = ["import", str(source), "deid", "--workspace", str(workspace)]
    for args in ([*base, "--deidentify"], [*base, "--key", "k"], [*base, "--linkage", str(tmp_path / "l.json")]):
        assert main(args) == 2
        assert capsys.readouterr().err.strip().count("\n") == 0
    assert not (workspace / "datasets" / "deid").exists()
    monkeypatch.setenv("VESALIUS_DEID_KEY", "secret")
    assert main([*base, "--deidentify"]) == 0
    printed = capsys.readouterr().out
    assert "non-DICOM files carry no DICOM attributes" in printed
    ids = sorted(c.case_id for c in Dataset.load(workspace / "datasets" / "deid").cases)
    assert ids == sorted(
        pseudonym_case_id(n, b"secret") for n in ("Zyxwort_Quillane_0", "Zyxwort_Quillane_1", "Blorvik_Tamsin")
    )
    assert _leaks(workspace / "datasets" / "deid", NEEDLES) == []


def test_npz_keeps_its_index_ids_but_not_its_path(tmp_path, workspace):
    source = tmp_path / "Zyxwort_Quillane_study.npz"
    rng = np.random.default_rng(0)
    np.savez(source, train_images=rng.integers(0, 255, (3, 5, 5), np.uint8), train_labels=np.array([0, 1, 0]))
    dataset, _ = import_dataset(source, "npz", workspace=workspace, deidentify=OPTIONS)
    assert [c.case_id for c in dataset.cases] == ["train_00000", "train_00001", "train_00002"]
    assert _leaks(dataset.root, ("Zyxwort", "Quillane")) == []
    assert any("an .npz source carry no DICOM attributes" in note for note in dataset.notes)


def test_files_left_out_of_a_series_are_reported_with_their_source_path(source, workspace):
    (source / "images" / "Zyxwort_Quillane_0" / "notes.txt").write_text("Zyxwort", encoding="utf-8")
    _, report = import_dataset(source, "deid", workspace=workspace, deidentify=OPTIONS)
    [warning] = [p for p in report.problems if "de-identified" in p.message]
    assert warning.file == str(source / "images" / "Zyxwort_Quillane_0" / "notes.txt")
    assert warning.severity == "warning" and "left out of the de-identified copy: not DICOM" in warning.message


def test_a_plain_import_drops_nifti_header_text(source, workspace):
    """Without --deidentify too, no free text from a source NIfTI header reaches the workspace: such a file is
    converted (voxels and geometry only) instead of copied byte for byte, as clean files still are."""
    from vesalius.io import has_header_text

    noted = source / "images" / "Blorvik_Tamsin.nii.gz"
    assert has_header_text(noted) and not has_header_text(source / "labels" / "Blorvik_Tamsin.nii.gz")
    dataset, _ = import_dataset(source, "plain", workspace=workspace)
    (case,) = [c for c in dataset.cases if c.case_id == "Blorvik_Tamsin"]
    stored = dataset.image_paths(case)[0]
    assert not has_header_text(stored) and b"Blorvik" not in gzip.decompress(stored.read_bytes())
    np.testing.assert_array_equal(read_image(stored).array, read_image(noted).array)
    assert read_image(stored).geometry.differences(read_image(noted).geometry) == []
    label = source / "labels" / "Zyxwort_Quillane_0.nii.gz"
    (first,) = [c for c in dataset.cases if c.case_id == "Zyxwort_Quillane_0"]
    assert dataset.label_path(first).read_bytes() == label.read_bytes()  # a clean file is copied as it is
