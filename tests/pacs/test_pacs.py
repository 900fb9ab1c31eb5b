"""The PACS path against a real Orthanc: push, find (QIDO-RS), get (WADO-RS), predict from the PACS and store the
DICOM-SEG and the SR report back (STOW-RS); basic and bearer authentication; one-line errors for every failure."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from tests.pacs.orthanc import PASSWORD, TOKEN, USER, Orthanc, free_port
from vesalius.cli import main
from vesalius.io import read_image
from vesalius.io.dicom import write_dicom_series
from vesalius.io.image import Image, to_sitk
from vesalius.pacs.client import Pacs

AUTH = ["--user", USER, "--password", PASSWORD]
PATIENT = {"PatientName": "TESTER^PACS", "PatientID": "PACS-0042", "AccessionNumber": "ACC77"}


def write_ct_series(image: Image, folder: Path) -> list[Path]:
    """``image`` (rounded to int16) as a CT series of a named patient."""
    written = write_dicom_series(
        to_sitk(image.with_array(np.round(image.array).astype(np.int16))), folder, modality="CT"
    )
    for path in written:
        ds = pydicom.dcmread(path)
        for keyword, value in PATIENT.items():
            setattr(ds, keyword, value)
        ds.save_as(path)
    return [Path(p) for p in written]


def phantom() -> Image:
    from vesalius.data.synthetic import make_segmentation_case

    image, _ = make_segmentation_case(3, shape=(24, 20, 10))
    return image


def study_of(folder: Path) -> tuple[str, str]:
    ds = pydicom.dcmread(next(folder.glob("*.dcm")), stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)


def test_push_find_get_round_trip(pacs: Orthanc, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "ct"
    write_ct_series(phantom(), source)
    study, series = study_of(source)
    assert main(["pacs", "push", "--url", pacs.url, *AUTH, str(source)]) == 0
    assert "10 object(s) stored" in capsys.readouterr().out

    assert main(["pacs", "find", "--url", pacs.url, *AUTH, "--patient", "PACS-00*", "--json"]) == 0
    (found,) = json.loads(capsys.readouterr().out)
    assert (found["study_uid"], found["patient_name"], found["accession"]) == (study, "TESTER^PACS", "ACC77")
    assert found["modalities"] == ["CT"] and found["num_series"] == 1
    assert main(["pacs", "find", "--url", pacs.url, *AUTH, "--patient", "NOBODY", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["pacs", "find", "--url", pacs.url, *AUTH, "--study", study]) == 0
    listed = capsys.readouterr().out
    assert series in listed and "1 series in study" in listed

    got = tmp_path / "got"
    assert main(["pacs", "get", "--url", pacs.url, *AUTH, "--study", study, "-o", str(got)]) == 0
    original, retrieved = read_image(source), read_image(got)
    np.testing.assert_array_equal(retrieved.array, original.array)
    assert retrieved.geometry.differences(original.geometry) == []


def test_bearer_token_through_a_gateway(pacs: Orthanc, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "ct"
    write_ct_series(phantom(), source)
    study, _ = study_of(source)
    assert main(["pacs", "push", "--url", pacs.bearer_url, "--token", TOKEN, str(source)]) == 0
    capsys.readouterr()
    assert main(["pacs", "find", "--url", pacs.bearer_url, "--token", TOKEN, "--json"]) == 0
    assert [s["study_uid"] for s in json.loads(capsys.readouterr().out)] == [study]
    assert main(["pacs", "find", "--url", pacs.bearer_url, "--token", "wrong"]) == 2
    assert "refused the credentials (HTTP 401)" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"password": "wrong"}, "refused the credentials (HTTP 401)"),
        ({"url": "down"}, "cannot reach the PACS"),
        ({"study": "1.2.3.4"}, "study 1.2.3.4 not found"),
        ({"series": "1.2.3.4"}, "series 1.2.3.4 not found in study"),
    ],
)
def test_failures_are_one_line(
    pacs: Orthanc, tmp_path: Path, capsys: pytest.CaptureFixture[str], change: dict[str, str], expected: str
) -> None:
    source = tmp_path / "ct"
    write_ct_series(phantom(), source)
    study, _ = study_of(source)
    assert main(["pacs", "push", "--url", pacs.url, *AUTH, str(source)]) == 0
    capsys.readouterr()
    url = f"http://127.0.0.1:{free_port()}/dicom-web" if change.get("url") else pacs.url
    args = ["pacs", "get", "--url", url, "--user", USER, "--password", change.get("password", PASSWORD)]
    args += ["--study", change.get("study", study), "-o", str(tmp_path / "got")]
    if "series" in change:
        args += ["--series", change["series"]]
    assert main(args) == 2
    error = capsys.readouterr().err.strip()
    assert expected in error and len(error.splitlines()) == 1
    assert PASSWORD not in error and "Traceback" not in error


def test_address_with_credentials_is_not_shown() -> None:
    pacs = Pacs("http://someone:hidden@127.0.0.1:9/dicom-web/")
    assert (pacs.url, pacs.user, pacs.password) == ("http://127.0.0.1:9/dicom-web", "someone", "hidden")
    with pytest.raises(Exception, match="cannot reach") as failure:
        pacs.find_studies()
    assert "hidden" not in str(failure.value)


def test_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = "http://127.0.0.1:9/dicom-web"
    assert main(["predict", "-m", str(tmp_path), "--from-pacs", url]) == 2
    assert "Give --study UID" in capsys.readouterr().err
    assert main(["predict", "-m", str(tmp_path), "--from-pacs", url, "--study", "1.2"]) == 2
    assert "Give --push, --output DIR or both" in capsys.readouterr().err
    assert main(["predict", "-m", str(tmp_path), "-i", str(tmp_path), "-o", str(tmp_path / "o"), "--push"]) == 2
    assert "go with --from-pacs" in capsys.readouterr().err
    assert main(["pacs", "find", "--url", "ftp://x"]) == 2
    assert "not a DICOMweb address" in capsys.readouterr().err
    assert main(["pacs", "find", "--url", url, "--user", "u"]) == 2
    assert "needs both a user and a password" in capsys.readouterr().err


@pytest.mark.slow
def test_predict_from_pacs_and_push(trained, planned, pacs: Orthanc, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """The issue's round trip: a series in Orthanc, `predict --from-pacs --push`, then the SEG and the SR are in
    the study, reference the series, and agree voxel for voxel (SEG) and value for value (SR) with a local run."""
    import highdicom as hd

    from vesalius.data.dataset import Dataset
    from vesalius.evaluation.measure import measure_segmentation
    from vesalius.evaluation.structured_report import read_structured_report
    from vesalius.io.dicom_seg import read_dicom_seg

    dataset = Dataset.load(planned / "datasets" / "ph")
    case_id = json.loads((trained.run_dir / "training.json").read_text(encoding="utf-8"))["split"]["val"][0]
    source = tmp_path / "ct"
    write_ct_series(read_image(dataset.image_paths(dataset.case(case_id))[0]), source)
    study, series = study_of(source)
    assert main(["pacs", "push", "--url", pacs.url, *AUTH, str(source)]) == 0
    kept = tmp_path / "kept"
    args = ["predict", "-m", str(trained.run_dir), "--from-pacs", pacs.url, *AUTH, "--study", study, "--push"]
    assert main([*args, "-o", str(kept)]) == 0
    printed = capsys.readouterr().out
    assert "stored into study" in printed and "organ:" in printed

    client = Pacs(pacs.url, user=USER, password=PASSWORD)
    by_modality = {s.modality: s for s in client.find_series(study)}
    assert set(by_modality) == {"CT", "SEG", "SR"}
    stored = tmp_path / "stored"
    client.retrieve_series(by_modality["SEG"], stored / "seg")
    client.retrieve_series(by_modality["SR"], stored / "sr")
    seg_file, sr_file = next((stored / "seg").glob("*.dcm")), next((stored / "sr").glob("*.dcm"))
    seg = read_dicom_seg(seg_file, source)
    assert [str(r.SeriesInstanceUID) for r in seg.dataset.ReferencedSeriesSequence] == [series]
    assert str(seg.dataset.StudyInstanceUID) == study and str(seg.dataset.PatientID) == PATIENT["PatientID"]

    local = tmp_path / "local"
    assert main(["predict", "-m", str(trained.run_dir), "-i", str(source), "-o", str(local)]) == 0
    local_labels = read_image(local / "ct.nii.gz")
    np.testing.assert_array_equal(seg.labels.array, local_labels.array)  # segment numbers are label values here
    assert local_labels.array.max() > 0

    reported = read_structured_report(sr_file)
    sr = hd.sr.srread(sr_file)
    assert str(sr.StudyInstanceUID) == study
    measured = measure_segmentation(local_labels)
    for number, lab in measured.labels.items():
        assert reported[number].segmentation_uid == str(seg.dataset.SOPInstanceUID)
        assert reported[number].source_series_uid == series
        assert reported[number].volume_ml == pytest.approx(lab.size, rel=1e-6)
        assert reported[number].components == lab.num_components
    assert {p.name for p in kept.iterdir()} == {
        f"{series}.nii.gz",
        f"{series}_seg.dcm",
        f"{series}_sr.dcm",
        f"{series}_measurements.json",
    }


@pytest.mark.slow
def test_predict_from_pacs_refuses_a_series_with_a_gap(trained, pacs: Orthanc, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    source = tmp_path / "ct"
    files = write_ct_series(phantom(), source)
    files[4].unlink()  # a slice lost on its way into the PACS
    study, _ = study_of(source)
    assert main(["pacs", "push", "--url", pacs.url, *AUTH, str(source)]) == 0
    capsys.readouterr()
    args = ["predict", "-m", str(trained.run_dir), "--from-pacs", pacs.url, *AUTH, "--study", study, "--push"]
    assert main(args) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after the steps' progress lines
    assert error.startswith(f"error: {pacs.url}: series") and "a slice is missing" in error
    assert {s.modality for s in Pacs(pacs.url, user=USER, password=PASSWORD).find_series(study)} == {"CT"}
