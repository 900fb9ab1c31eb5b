"""Vesalius's de-identification next to dicognito's on the same files: what each removes, empties, replaces, keeps.

Why: the two follow different rules (Vesalius: PS3.15 Table E.1-1, Basic Profile; dicognito: its own list of
identifying attributes, replacing rather than removing), and a user choosing between them should see where they
differ. The differences, grouped by what each tool did, are committed in ``dicognito_differences.json`` so that this
test fails when either tool changes; ``docs/deidentify.md`` explains every group and names every attribute in it
(checked below). The identifying strings each tool leaves in its output are counted too: Vesalius must leave none.
"""

from __future__ import annotations

import json
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from tests.io.test_deidentify import MARKER, _make
from vesalius.io.deidentify import DeidentifyOptions, deidentify_file

dicognito = pytest.importorskip("dicognito.anonymizer", reason="dicognito is a dev dependency")

EXPECTED = Path(__file__).with_name("dicognito_differences.json")
DOCS = Path(__file__).resolve().parents[2] / "docs" / "deidentify.md"
#: pydicom's shipped test files (no download): CT, MR, NM, RT plan and dose, SR, an overlay, a SEG, an ECG.
PYDICOM_FILES = (
    "CT_small.dcm",
    "MR_small.dcm",
    "JPEG2000.dcm",
    "rtplan.dcm",
    "rtdose.dcm",
    "reportsi.dcm",
    "examples_overlay.dcm",
    "liver_1frame.dcm",
    "waveform_ecg.dcm",
)
#: Attributes whose original values count as leaks when found anywhere in an output file's bytes.
IDENTITY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "OtherPatientIDs",
    "InstitutionName",
    "InstitutionAddress",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "OperatorsName",
    "AccessionNumber",
)
#: The generated file's identifying values: the marker set in every text attribute, and those set apart.
GENERATED_KNOWN = {
    "marker": MARKER,
    "PatientName": "Doe^Jane",
    "PatientID": "PAT-0001",
    "PatientBirthDate": "19700101",
    "StudyDate": "20200115",
}
Path_ = tuple[int | str, ...]  # a path to an element: tag, "#item", tag, ...; file meta elements start with "meta"


def _name(elem: pydicom.DataElement) -> str:
    if elem.tag.is_private:
        return "private creator" if elem.tag.is_private_creator else "private"
    if 0x6000 <= elem.tag.group <= 0x60FF and elem.tag.group % 2 == 0:
        return f"(60xx,{elem.tag.element:04X})"  # overlay repeating group: one name for all
    return elem.keyword or f"({elem.tag.group:04X},{elem.tag.element:04X})"


def _flatten(ds: Dataset, prefix: Path_ = ()) -> dict[Path_, tuple[str, str, Any]]:
    """Every element of ``ds`` and its sequences' items: path -> (VR, name, value or number of items)."""
    out: dict[Path_, tuple[str, str, Any]] = {}
    for elem in ds:
        path = (*prefix, int(elem.tag))
        if elem.VR == "SQ":
            out[path] = ("SQ", _name(elem), len(elem.value or []))
            for i, item in enumerate(elem.value or []):
                out.update(_flatten(item, (*path, f"#{i}")))
        else:
            out[path] = (elem.VR, _name(elem), elem.value)
    return out


def _read(path: Path) -> dict[Path_, tuple[str, str, Any]]:
    ds = pydicom.dcmread(path)
    return {**_flatten(ds.file_meta, ("meta",)), **_flatten(ds)}


def _empty(value: Any) -> bool:
    return value is None or (not isinstance(value, int | float) and len(value) == 0)


def _action(before: tuple[str, str, Any], after: tuple[str, str, Any] | None) -> str | None:
    """removed, emptied, replaced or kept; None for a sequence kept with its items (judged one by one)."""
    vr, _, value = before
    if after is None:
        return "removed"
    if vr == "SQ":
        return "emptied" if after[2] == 0 else None
    if _empty(after[2]):
        return "emptied"
    return "kept" if after[2] == value else "replaced"


def _differences(original: Path, ours: Path, theirs: Path) -> set[tuple[str, str]]:
    """("vesalius/dicognito" actions, attribute) where the two differ, judged at the outermost element that differs:
    inside a sequence one tool removed, the items are not compared again."""
    before, after_v, after_d = _read(original), _read(ours), _read(theirs)
    found = set()
    for path, element in before.items():
        if (element[2] == 0 if element[0] == "SQ" else _empty(element[2])) or path[-1] & 0xFFFF == 0:
            continue  # nothing to protect, or a group length (recomputed on writing)
        items = [(path[: k - 1], int(str(path[k - 1])[1:])) for k in range(2, len(path), 2)]  # enclosing items
        if any(s not in after or after[s][2] <= i for s, i in items for after in (after_v, after_d)):
            continue  # judged at the enclosing sequence, which one of the tools removed or emptied
        a_v, a_d = _action(element, after_v.get(path)), _action(element, after_d.get(path))
        if a_v != a_d:
            found.add((f"{a_v or 'kept'}/{a_d or 'kept'}", element[1]))
    return found


def _known_strings(ds: Dataset) -> dict[str, str]:
    """Identifying values of ``ds`` worth searching for (at least 4 characters, ASCII, not the kept device names)."""
    kept = f"{ds.get('Manufacturer', '')} {ds.get('ManufacturerModelName', '')}"
    out = {}
    for keyword in IDENTITY:
        value = str(ds.get(keyword, "") or "").strip()
        if len(value) >= 4 and value.isascii() and value not in kept:
            out[keyword] = value
    return out


def _leaks(known: dict[str, str], output: Path) -> list[str]:
    data = output.read_bytes()
    return sorted(k for k, v in known.items() if v.encode() in data)


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Both tools on the generated file (every text attribute of Table E.1-1 set) and pydicom's test files."""
    tmp = tmp_path_factory.mktemp("dicognito")
    generated = _make(tmp / "src" / "generated.dcm", study=generate_uid(), series=generate_uid(), frame=generate_uid())
    sources = {"generated": generated}
    sources |= {n: Path(pydicom.data.__file__).parent / "test_files" / n for n in PYDICOM_FILES}
    differences: dict[str, set[str]] = defaultdict(set)
    leaks: dict[str, dict[str, list[str]]] = {"vesalius": {}, "dicognito": {}}
    options = DeidentifyOptions(key="k", allow_burned_in=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's notes on the test files' odd values
        for label, source in sources.items():
            ds = pydicom.dcmread(source)
            known = _known_strings(ds) if label != "generated" else GENERATED_KNOWN
            ours, theirs = tmp / "vesalius" / f"{label}.dcm", tmp / "dicognito" / f"{label}.dcm"
            deidentify_file(source, ours, options)
            dicognito.Anonymizer(seed="vesalius").anonymize(ds)  # a fixed seed: the same output every run
            theirs.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(theirs)
            for actions, attribute in _differences(source, ours, theirs):
                differences[actions].add(attribute)
            leaks["vesalius"][label] = _leaks(known, ours)
            leaks["dicognito"][label] = _leaks(known, theirs)
    return {
        "differences": {k: sorted(v) for k, v in sorted(differences.items())},
        "dicognito_leaks": {k: v for k, v in leaks["dicognito"].items() if v},
        "vesalius_leaks": {k: v for k, v in leaks["vesalius"].items() if v},
    }


def test_vesalius_leaks_nothing(compared):
    assert compared["vesalius_leaks"] == {}


def test_differences_and_dicognito_leaks_as_recorded(compared):
    expected = json.loads(EXPECTED.read_text(encoding="utf-8"))
    for key in ("differences", "dicognito_leaks"):
        got, want = compared[key], expected[key]
        changed = {
            k: {
                "new": sorted(set(got.get(k, [])) - set(want.get(k, []))),
                "gone": sorted(set(want.get(k, [])) - set(got.get(k, []))),
            }
            for k in set(got) | set(want)
            if set(got.get(k, [])) != set(want.get(k, []))
        }
        assert not changed, f"{key} changed (update {EXPECTED.name} and docs/deidentify.md): {changed}"


def test_docs_explain_every_difference():
    expected = json.loads(EXPECTED.read_text(encoding="utf-8"))
    text = DOCS.read_text(encoding="utf-8")
    missing = [
        f"{group}: {name}"
        for group, names in expected["differences"].items()
        for name in [group, *names]
        if f"`{name}`" not in text
    ]
    assert not missing, f"docs/deidentify.md does not name: {missing}"
