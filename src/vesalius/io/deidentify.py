"""De-identification of DICOM files: PS3.15 Annex E Basic Application Level Confidentiality Profile.

Why: images leave the clinic only without the identities of patients and staff. The action table is generated
from the standard's Table E.1-1 (``tools/generate_deid_table.py`` -> ``deidentify_table.json``, revision and
licence notice inside), not typed by hand, so no row is silently forgotten.

Implemented:

- the Basic Profile actions on every listed attribute, in sequences too: D (dummy value by VR), Z (empty),
  X (remove), K (keep), C (clean), U (UID remapped); combined codes take the most conservative choice
  (``X/Z``, ``X/D``, ``X/Z/D`` -> X; ``Z/D`` -> Z; ``X/Z/U*`` on a reference sequence -> kept, its UIDs remapped,
  so references survive); the repeating groups (50xx,xxxx) curves and (60xx,3000)/(60xx,4000) overlays;
- options: retain longitudinal temporal information with modified dates (each patient's dates shifted by a
  whole number of days derived from the key and the PatientID, so intervals survive), retain patient
  characteristics (those it marks C, free text such as Allergies, get a dummy), clean descriptors (free text
  replaced by a dummy), retain safe private tags (the generated table lists no individual safe private tags,
  so in practice every private tag is removed);
- UIDs remapped with HMAC-SHA256 under a key to ``2.25.<int>``: the same UID gives the same new UID across files
  and runs with the same key, so study/series/frame-of-reference links and references survive;
- refusal of images that may carry burned-in text (BurnedInAnnotation YES, or US/SC/XC/ES/GM without the
  attribute) unless ``allow_burned_in``; then they are listed in the report and audit log;
- PatientIdentityRemoved, DeidentificationMethod and DeidentificationMethodCodeSequence (CID 7050);
- an audit log (``deidentify_audit.jsonl`` in OUT: per file the keywords removed/replaced/emptied/remapped,
  never values) and, only when asked, a linkage file (original -> new identifiers) written apart from OUT.

Not implemented: pixel-level removal of burned-in text (such images are refused or listed); the options retain
UIDs, device identity, institution identity, full dates, clean structured content and clean graphics; a list of
safe private attributes; attributes not listed in Table E.1-1 are kept as the Basic Profile says (a free-text
attribute the table does not list is not scanned).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from vesalius.errors import VesaliusError
from vesalius.io.atomic import atomic_path, write_bytes_atomic, write_json_atomic

__all__ = ["AUDIT_NAME", "DeidentifyOptions", "FileRecord", "Report", "deidentify", "deidentify_file", "load_table"]

AUDIT_NAME = "deidentify_audit.jsonl"
UID_ROOT = "2.25."
#: Modalities whose images often carry burned-in text when BurnedInAnnotation is absent.
BURNED_IN_MODALITIES = frozenset({"US", "SC", "XC", "ES", "GM"})
_TEXT_VRS = frozenset({"LO", "LT", "PN", "SH", "ST", "UT", "UC"})
_DUMMY = "ANONYMIZED"


@dataclass(frozen=True)
class DeidentifyOptions:
    """The key and the profile options.

    ``key`` keys the UID hash and the date shift: without it nobody can redo the mapping, and a fixed default key
    would make it reversible by anyone, so there is none.
    """

    key: bytes | str
    retain_dates_shifted: bool = False
    retain_patient_characteristics: bool = False
    clean_descriptors: bool = False
    retain_safe_private: bool = False
    allow_burned_in: bool = False

    def key_bytes(self) -> bytes:
        """The key as bytes (a str is UTF-8 encoded); an empty key is refused."""
        key = self.key.encode("utf-8") if isinstance(self.key, str) else bytes(self.key)
        if not key:
            raise VesaliusError("the de-identification key is empty", remedy="give --key or set VESALIUS_DEID_KEY")
        return key

    def method(self) -> str:
        """DeidentificationMethod text: the profile and its options (at most 64 characters, LO)."""
        parts = ["Basic"]
        if self.retain_dates_shifted:
            parts.append("ModDates")
        if self.retain_patient_characteristics:
            parts.append("PatChars")
        if self.clean_descriptors:
            parts.append("CleanDesc")
        if self.retain_safe_private:
            parts.append("SafePriv")
        return ("PS3.15 E.1 " + "+".join(parts) + " (vesalius)")[:64]

    def codes(self) -> list[tuple[str, str]]:
        """CID 7050 codes of the profile and its options."""
        codes = [("113100", "Basic Application Confidentiality Profile")]
        if self.retain_dates_shifted:
            codes.append(("113107", "Retain Longitudinal Temporal Information Modified Dates Option"))
        if self.retain_patient_characteristics:
            codes.append(("113108", "Retain Patient Characteristics Option"))
        if self.clean_descriptors:
            codes.append(("113105", "Clean Descriptors Option"))
        if self.retain_safe_private:
            codes.append(("113111", "Retain Safe Private Option"))
        return codes


@dataclass
class FileRecord:
    """What happened to one file: its status and the attributes touched (keywords, never values)."""

    source: str
    output: str | None
    status: str  # "deidentified", "skipped" (not DICOM), "refused" (burned-in text)
    reason: str = ""
    burned_in: bool = False
    removed: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    emptied: list[str] = field(default_factory=list)
    remapped: list[str] = field(default_factory=list)
    shifted: list[str] = field(default_factory=list)
    links: dict[str, str] = field(default_factory=dict)  # original -> new identifiers, for the linkage file only

    def audit(self, base: Path | None = None) -> dict[str, Any]:
        """The audit-log line: no values, no original identifiers; paths relative to ``base`` (the input)."""
        data = {k: v for k, v in self.__dict__.items() if k not in ("links", "output")}
        if base is not None and Path(self.source).is_relative_to(base):
            data["source"] = Path(self.source).relative_to(base).as_posix()
        return {k: (sorted(set(v)) if isinstance(v, list) else v) for k, v in data.items()}


@dataclass
class Report:
    """The files de-identified, skipped (not DICOM), refused (burned-in text) and allowed with burned-in text."""

    records: list[FileRecord] = field(default_factory=list)

    def _with(self, status: str) -> list[FileRecord]:
        return [r for r in self.records if r.status == status]

    @property
    def written(self) -> list[FileRecord]:
        """The files de-identified and written."""
        return self._with("deidentified")

    @property
    def skipped(self) -> list[FileRecord]:
        """The files that are not DICOM."""
        return self._with("skipped")

    @property
    def refused(self) -> list[FileRecord]:
        """The images refused because they may carry burned-in text."""
        return self._with("refused")

    @property
    def burned_in(self) -> list[FileRecord]:
        """The images written although they may carry burned-in text (``allow_burned_in``)."""
        return [r for r in self.written if r.burned_in]


@lru_cache(maxsize=1)
def load_table() -> dict[str, Any]:
    """The generated action table shipped in the package."""
    text = resources.files("vesalius.io").joinpath("deidentify_table.json").read_text(encoding="utf-8")
    return json.loads(text)


def _entry(tag: int) -> dict[str, str] | None:
    table = load_table()
    hex8 = f"{tag:08x}"
    found = table["attributes"].get(hex8)
    if found is not None:
        return found
    for pattern, entry in table["patterns"].items():
        if all(p == "x" or p == c for p, c in zip(pattern, hex8, strict=True)):
            return entry
    return None


def _action(entry: dict[str, str], options: DeidentifyOptions) -> str:
    """The action for one table row under the options: an option's code wins over the basic one."""
    for enabled, column in (
        (options.retain_dates_shifted, "retain_long_modified_dates"),
        (options.retain_patient_characteristics, "retain_patient_characteristics"),
        (options.clean_descriptors, "clean_descriptors"),
    ):
        if enabled and entry.get(column) in ("C", "K"):  # the only codes the option columns use
            return (
                {"retain_long_modified_dates": "SHIFT", "clean_descriptors": "CLEAN"}.get(column, "C")
                if entry[column] == "C"
                else entry[column]
            )
    basic = entry["basic"]
    if basic == "X/Z/U*":
        return "U*"
    if basic.startswith("X"):
        return "X"  # X/Z, X/D, X/Z/D: removal is the most conservative
    if basic == "Z/D":
        return "Z"
    if basic == "C":
        return "X"  # clean without the option: nothing is known safe, so remove
    return basic


def new_uid(uid: str, key: bytes) -> str:
    """The keyed-hash UID of ``uid``: ``2.25.`` and a 128-bit integer from HMAC-SHA256 (same key, same UID)."""
    digest = hmac.new(key, b"uid:" + uid.strip().encode("ascii", "replace"), hashlib.sha256).digest()
    return UID_ROOT + str(int.from_bytes(digest[:16], "big"))


def date_shift_days(patient_id: str, key: bytes) -> int:
    """The patient's date shift, -1 to -3650 days, from the key and the PatientID (same for all their files)."""
    digest = hmac.new(key, b"shift:" + patient_id.strip().encode("utf-8", "replace"), hashlib.sha256).digest()
    return -(1 + int.from_bytes(digest[:8], "big") % 3650)


def _shift_value(vr: str, value: str, days: int) -> str | None:
    """A DA or DT value moved by ``days``; None when it does not parse (then it is emptied)."""
    text = value.strip()
    if not text:
        return text
    try:
        day = _dt.datetime.strptime(text[:8], "%Y%m%d").date() + _dt.timedelta(days=days)
    except ValueError:
        return None
    return day.strftime("%Y%m%d") + (text[8:] if vr == "DT" else "")


def _dummy(vr: str, key: bytes, value: Any) -> Any:
    """A dummy value of the VR (UIDs get their keyed-hash replacement, so references still match)."""
    if vr == "UI":
        return new_uid(str(value), key) if value else new_uid("dummy", key)
    return {
        "DA": "19000101",
        "DT": "19000101000000",
        "TM": "000000",
        "AS": "000Y",
        "IS": "0",
        "DS": "0",
        "US": 0,
        "SS": 0,
        "UL": 0,
        "SL": 0,
        "FL": 0.0,
        "FD": 0.0,
        "UV": 0,
        "SV": 0,
        "AT": 0,
        "OB": b"",
        "OW": b"",
        "OF": b"",
        "OD": b"",
        "OL": b"",
        "OV": b"",
        "UN": b"",
        "SQ": Sequence(),
    }.get(vr, _DUMMY)


class _Run:
    """One file's de-identification state: the key, the shift and what was touched."""

    def __init__(self, options: DeidentifyOptions, record: FileRecord, days: int) -> None:
        self.options = options
        self.key = options.key_bytes()
        self.record = record
        self.days = days

    def uid(self, value: Any) -> Any:
        """Remap one UID or several, remembering the link for the linkage file."""
        values = list(value) if isinstance(value, pydicom.multival.MultiValue) else [value]
        out = []
        for v in values:
            if not str(v).strip():
                out.append(v)
                continue
            mapped = new_uid(str(v), self.key)
            self.record.links[str(v)] = mapped
            out.append(mapped)
        return out if len(out) != 1 else out[0]

    def dataset(self, ds: Dataset) -> None:
        """Apply the table to every element of ``ds``, recursing into kept sequences."""
        for elem in list(ds):
            name = elem.keyword or f"({elem.tag.group:04X},{elem.tag.element:04X})"
            if elem.tag.is_private:
                ds.pop(elem.tag)  # no per-tag list of safe private attributes in the table: remove all
                self.record.removed.append("private" if not elem.tag.is_private_creator else "private creator")
                continue
            entry = _entry(int(elem.tag))
            action = "K" if entry is None else _action(entry, self.options)
            vr = elem.VR
            if action == "X" or (action == "C" and vr not in _TEXT_VRS):  # no way to clean it: remove
                del ds[elem.tag]
                self.record.removed.append(name)
            elif action == "Z":
                elem.value = Sequence() if vr == "SQ" else (b"" if vr in ("OB", "OW", "UN") else None)
                self.record.emptied.append(name)
            elif action in ("D", "CLEAN") or (action == "C" and vr in _TEXT_VRS):
                if vr == "UI":
                    elem.value = self.uid(elem.value) if elem.value else _dummy(vr, self.key, None)
                else:
                    elem.value = _dummy(vr, self.key, elem.value)
                self.record.replaced.append(name)
            elif action == "U":
                if vr == "UI" and elem.value:
                    elem.value = self.uid(elem.value)
                    self.record.remapped.append(name)
                elif vr == "SQ":
                    self._recurse(elem)
            elif action == "SHIFT":
                self._shift(ds, elem, name)
            elif vr == "SQ":  # K, U* and unlisted sequences: recurse, their items are de-identified too
                self._recurse(elem)

    def _recurse(self, elem: Any) -> None:
        for item in elem.value or []:
            self.dataset(item)

    def _shift(self, ds: Dataset, elem: Any, name: str) -> None:
        if elem.VR not in ("DA", "DT"):
            if elem.VR == "SQ":
                self._recurse(elem)
            return  # times of day stay: the shift is in whole days
        values = list(elem.value) if isinstance(elem.value, pydicom.multival.MultiValue) else [elem.value]
        shifted = [_shift_value(elem.VR, str(v or ""), self.days) for v in values]
        if any(s is None for s in shifted):
            elem.value = None
            self.record.emptied.append(name)
            return
        elem.value = shifted if len(shifted) > 1 else shifted[0]
        self.record.shifted.append(name)


class _Refused(VesaliusError):
    """An image that may carry burned-in text, without ``allow_burned_in``: listed, the others still processed."""


class _Unreadable(VesaliusError):
    """A file pydicom cannot read: skipped and listed, the others still processed."""


def _may_have_burned_in(ds: Dataset) -> bool:
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        return False
    flag = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    if flag:
        return flag == "YES"
    return str(ds.get("Modality", "") or "").strip().upper() in BURNED_IN_MODALITIES


def _mark(ds: Dataset, options: DeidentifyOptions) -> None:
    """PatientIdentityRemoved, the method text and its CID 7050 codes (PS3.15 E.1.1)."""
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = options.method()
    items = []
    for value, meaning in options.codes():
        item = Dataset()
        item.CodeValue = value
        item.CodingSchemeDesignator = "DCM"
        item.CodeMeaning = meaning
        items.append(item)
    ds.DeidentificationMethodCodeSequence = Sequence(items)
    if options.retain_dates_shifted:
        ds.LongitudinalTemporalInformationModified = "MODIFIED"


def deidentify_dataset(ds: Dataset, options: DeidentifyOptions, record: FileRecord) -> Dataset:
    """De-identify ``ds`` in place (file meta included) and return it."""
    key = options.key_bytes()
    days = date_shift_days(str(ds.get("PatientID", "") or ""), key)
    record.links["PatientID"] = str(ds.get("PatientID", "") or "")
    run = _Run(options, record, days)
    run.dataset(ds)
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        if "SOPInstanceUID" in ds and "MediaStorageSOPInstanceUID" in meta:
            meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        for tag in (0x00020016, 0x00020017, 0x00020018, 0x00020100, 0x00020102):  # AE titles, private info
            if tag in meta:
                del meta[tag]
                record.removed.append(f"meta ({tag >> 16:04X},{tag & 0xFFFF:04X})")
    _mark(ds, options)
    return ds


def deidentify_file(src: str | Path, dst: str | Path, options: DeidentifyOptions) -> FileRecord:
    """De-identify one DICOM file into ``dst`` (atomically; never over ``src``).

    Raises :class:`VesaliusError` when ``src`` is not DICOM, or may carry burned-in text and
    ``options.allow_burned_in`` is not set.
    """
    src, dst = Path(src), Path(dst)
    if dst.resolve() == src.resolve():
        raise VesaliusError("the output would overwrite the input", dst, "choose another output folder")
    try:
        ds = pydicom.dcmread(src)
    except Exception as e:  # pydicom reports broken files with many exception types
        raise _Unreadable(f"not a readable DICOM file ({type(e).__name__})", src, "leave it out") from None
    record = FileRecord(source=str(src), output=str(dst), status="deidentified")
    if _may_have_burned_in(ds):
        if not options.allow_burned_in:
            raise _Refused(
                "the image may carry burned-in text (BurnedInAnnotation or modality)",
                src,
                "check the pixels and give --allow-burned-in to de-identify it anyway",
            )
        record.burned_in = True
    deidentify_dataset(ds, options, record)
    with atomic_path(dst, suffix=".dcm") as tmp:
        ds.save_as(tmp)
    return record


def _is_dicom(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            head = f.read(132)
    except OSError:
        return False
    if head[128:132] == b"DICM":
        return True
    try:
        pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:
        return False
    return True


def deidentify(
    src: str | Path, out: str | Path, options: DeidentifyOptions, linkage: str | Path | None = None
) -> Report:
    """De-identify a file or a folder (recursively) into ``out``, mirroring relative paths.

    Non-DICOM files are skipped and listed; images that may carry burned-in text are refused and listed (unless
    ``allow_burned_in``). The audit log goes to ``out/deidentify_audit.jsonl``; a linkage file (original to new
    identifiers) only to ``linkage``, which must lie outside ``out`` since whoever receives OUT must not get it.
    """
    src, out = Path(src), Path(out)
    options.key_bytes()  # fail before any work when the key is empty
    if not src.exists():
        raise VesaliusError("no such file or folder", src, "check the path")
    if out.resolve() == src.resolve() or (src.is_dir() and src.resolve() in out.resolve().parents):
        raise VesaliusError("the output folder is the input folder or inside it", out, "choose a separate folder")
    if linkage is not None and out.resolve() in Path(linkage).resolve().parents:
        raise VesaliusError("the linkage file must not be inside the output", linkage, "write it elsewhere")
    if src.is_dir():
        files = sorted(p for p in src.rglob("*") if p.is_file())
        pairs = [(p, out / p.relative_to(src)) for p in files]
    else:
        pairs = [(src, out / src.name)]
    if any(target.resolve() == source.resolve() for source, target in pairs):
        raise VesaliusError("the output would overwrite the input", out, "choose a separate output folder")
    report = Report()
    for source, target in pairs:
        if not _is_dicom(source):
            report.records.append(FileRecord(str(source), None, "skipped", "not DICOM"))
            continue
        try:
            report.records.append(deidentify_file(source, target, options))
        except _Refused as e:
            report.records.append(FileRecord(str(source), None, "refused", e.problem))
        except _Unreadable as e:
            report.records.append(FileRecord(str(source), None, "skipped", e.problem))
    out.mkdir(parents=True, exist_ok=True)
    base = src if src.is_dir() else src.parent  # relative paths: the audit goes out with OUT
    lines = "".join(json.dumps(r.audit(base), sort_keys=True) + "\n" for r in report.records)
    write_bytes_atomic(out / AUDIT_NAME, lines.encode("utf-8"))
    if linkage is not None:
        links = [{"source": r.source, "output": r.output, "identifiers": r.links} for r in report.written]
        write_json_atomic(linkage, {"files": links}, mode=0o600)  # identifiers: owner only
    return report
