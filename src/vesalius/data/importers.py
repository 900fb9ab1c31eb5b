"""Bring a data set into the workspace from the layouts users have.

Layouts (``layout="auto"`` picks one from what it finds):

* ``msd``: Medical Segmentation Decathlon or nnU-Net v2 raw data set: ``dataset.json``, ``imagesTr/``,
  ``labelsTr/``; channels as 4D images (MSD) or ``CASE_0000`` files (nnU-Net v2).
* ``pairs``: a folder of images and a folder of labels matched by name (``images/`` + ``labels/`` or
  ``masks/``, or ``--labels DIR``); a label may add a suffix (``Image_01L`` <- ``Image_01L_1stHO``). An image may
  be a DICOM series folder.
* ``classes``: one sub-folder per class holding the images.
* ``csv``: a CSV with an image path column and a class column (paths relative to the CSV).
* ``npz``: MedMNIST ``.npz`` (``{split}_images``, ``{split}_labels``; 2D, 2D RGB or 3D, any size; labels ``(N,)``
  or ``(N, 1)``, or ``(N, L)`` 0/1 flags for multi-label sets such as ChestMNIST). The file's splits (``train``,
  ``val``, ``test``) are kept as the cases' official split.

Classification targets are ``binary``, ``multiclass``, ``multilabel`` or ``ordinal`` (:data:`TARGET_TYPES`):
``target_type="auto"`` takes multi-label from ``(N, L)`` labels, ordinal for RetinaMNIST (whose grades are ordered,
:data:`ORDINAL_MEDMNIST`), binary for two classes and multi-class otherwise.

The copy in the workspace uses the nnU-Net v2 layout (``imagesTr/CASE_0000.nii.gz``, ``labelsTr/CASE.nii.gz``):
NIfTI keeps the geometry of every source format. Sources are only read, never changed. The copy is built in a
temporary folder, verified, and renamed into place, so a failed import leaves nothing behind.

With ``deidentify`` (``vesalius import --deidentify``) nothing that names a patient reaches the workspace: DICOM
files and series folders are first de-identified with :func:`vesalius.io.deidentify.deidentify` (same profile and
options as ``vesalius deidentify``) into a scratch folder next to the staging folder, and converted from there;
every case id becomes a keyed pseudonym (:func:`pseudonym_case_id`), since ids come from file and folder names,
which often hold a patient's name or record number; other files (NIfTI, NRRD, pictures) are converted from their
voxels and geometry only (no byte copy, so no header text survives); source paths are not stored; the audit log
goes into the data set's folder and a linkage file only where asked, outside the workspace.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import hashlib
import hmac
import json
import os
import re
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from vesalius.data.dataset import TARGET_TYPES, Case, Dataset, Task, check_case_id
from vesalius.data.verify import Problem, VerificationReport, verify_dataset
from vesalius.errors import VesaliusError
from vesalius.io import Geometry, Image, has_header_text, image_suffix, read_image, strip_suffix, write_image
from vesalius.io.atomic import write_bytes_atomic, write_json_atomic
from vesalius.io.deidentify import AUDIT_NAME, BURNED_IN_MODALITIES, DeidentifyOptions, Report
from vesalius.io.deidentify import deidentify as deidentify_dicom
from vesalius.io.read_write import DICOM_SUFFIXES
from vesalius.workspace import Workspace

Layout = Literal["auto", "msd", "pairs", "classes", "csv", "npz"]
LabelThreshold = int | Literal["auto"] | None
IMAGE_DIRS = ("images", "imagesTr", "image", "imgs")
LABEL_DIRS = ("labels", "labelsTr", "masks", "mask", "label", "segmentations", "gt", "ground_truth")
_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
_STRAY = re.compile(r"^(\._.*|\.DS_Store|Thumbs\.db|desktop\.ini)$")
#: MedMNIST sets whose classes are ordered grades (file name prefixes), imported as ordinal targets.
ORDINAL_MEDMNIST = ("retinamnist",)


@dataclass
class SourceCase:
    """A case as found in the source: files (or DICOM folders) not yet converted."""

    case_id: str
    images: list[Path]
    label: Path | None = None
    target: int | None = None
    split: str | None = None


@dataclass
class SourceScan:
    """What a layout scanner found; ``None`` fields are inferred from the data during conversion."""

    layout: str
    task: Task
    cases: list[SourceCase]
    spatial_dims: int | None = None
    channels: list[str] | None = None
    modalities: list[str] | None = None
    labels: dict[int, str] | None = None
    channels_last_4d: bool = False
    stray_files: list[Path] = field(default_factory=list)


def import_dataset(
    source: str | Path,
    name: str,
    *,
    layout: Layout = "auto",
    labels_dir: str | None = None,
    label_threshold: LabelThreshold = "auto",
    invert_labels: bool = False,
    modalities: list[str] | None = None,
    target_type: str = "auto",
    workspace: str | Path | Workspace | None = None,
    force: bool = False,
    overwrite: bool = False,
    on_case: Callable[[str], None] | None = None,
    deidentify: DeidentifyOptions | None = None,
    linkage: str | Path | None = None,
) -> tuple[Dataset, VerificationReport]:
    """Import ``source`` as data set ``name`` into the workspace and verify it.

    Args:
        source: a folder, a CSV file or a MedMNIST ``.npz``.
        name: the data set's name in the workspace.
        layout: the source layout, or ``"auto"``.
        labels_dir: for ``pairs``, the label folder (name inside ``source`` or a path).
        label_threshold: for ``pairs``, binarise labels as ``value >= threshold``; ``"auto"`` does so at 128
            for 8-bit masks whose maximum is 255 (the usual 0/255 mask pictures); ``None`` keeps values.
        invert_labels: for ``pairs``, the foreground is below the threshold instead (ISBI 2012's EM masks draw
            the membranes black on white cells).
        modalities: one per channel (``"CT"``, ``"MRI"``, ...), overriding what the source says.
        target_type: classification data: ``"auto"`` or one of :data:`TARGET_TYPES` (see the module docstring).
        workspace: the workspace (default ``$VESALIUS_HOME`` or ``./vesalius_work``).
        force: import even when verification finds errors (cases that cannot be read are left out).
        overwrite: replace an existing data set of that name.
        on_case: progress callback, called with each case id.
        deidentify: de-identify on the way in (see the module docstring): DICOM through the PS3.15 Basic Profile
            with these options, case ids replaced by keyed pseudonyms, no source paths kept; the audit log is
            written to ``deidentify_audit.jsonl`` in the data set's folder.
        linkage: with ``deidentify``, write the original case ids, source files and DICOM identifiers next to the
            pseudonyms here (owner-only permissions); it must lie outside the workspace.

    Returns:
        The imported data set (paths in the workspace) and the verification report, whose problems name the
        source files.

    Raises:
        VesaliusError: unknown layout, unusable source, name taken, verification errors without ``force``, an
            empty key, a linkage file without ``deidentify`` or inside the workspace, or DICOM images that may show
            burned-in text without ``deidentify.allow_burned_in``.
    """
    ws = Workspace.resolve(workspace)
    source = Path(os.path.abspath(source))
    target = ws.dataset_dir(name)
    if not source.exists():
        raise VesaliusError("source not found", source, "check the path")
    if deidentify is not None:
        deidentify.key_bytes()  # an empty key fails before any work
    if linkage is not None:
        linkage = Path(os.path.abspath(linkage))
        if deidentify is None:
            raise VesaliusError("a linkage file is only written when de-identifying", linkage, "add --deidentify")
        if ws.root.absolute() in linkage.parents:
            raise VesaliusError(
                "the linkage file must not be inside the workspace, which holds the de-identified data",
                linkage,
                "write it to a folder outside the workspace",
            )
    if source.is_dir() and (ws.root.absolute() == source or source in ws.root.absolute().parents):
        raise VesaliusError(
            f"the workspace lies inside the source folder {source}, which is only ever read",
            ws.root,
            "choose a workspace outside the source (--workspace DIR or $VESALIUS_HOME)",
        )
    if target_type != "auto" and target_type not in TARGET_TYPES:
        raise VesaliusError(
            f"unknown target type '{target_type}'", remedy=f"use auto or one of {', '.join(TARGET_TYPES)}"
        )
    if target.exists() and not overwrite:
        raise VesaliusError(f"data set '{name}' already exists", target, "choose another name or pass --overwrite")
    staging = _new_staging(target)
    deid: _Deidentification | None = None
    try:
        if (layout == "auto" and source.suffix.lower() == ".npz") or layout == "npz":
            dataset, problems, origin = _convert_npz(source, name, staging, target_type)
            if deidentify is not None:
                deid = _Deidentification(deidentify, staging.parent, target.name)
        else:
            scan = scan_source(source, layout, labels_dir)
            if modalities:
                scan.modalities = list(modalities)
            if deidentify is not None:
                deid = _Deidentification(deidentify, staging.parent, target.name)
                scan = deid.apply(scan)
            copy_bytes = deid is None  # a byte copy would keep NIfTI header text (descrip, extensions)
            binarise = (label_threshold, invert_labels)
            dataset, problems, origin = _convert(scan, source, name, staging, binarise, on_case, copy_bytes)
            if modalities and len(modalities) != len(dataset.channels):
                raise VesaliusError(
                    f"--modality names {len(modalities)} modalities ({','.join(modalities)}) but the data set has "
                    f"{len(dataset.channels)} channel{'s' if len(dataset.channels) != 1 else ''} "
                    f"({', '.join(dataset.channels)})",
                    source,
                    "give one modality per channel, separated by commas",
                )
            if dataset.task == "classification":
                dataset.target_type = _target_type(target_type, len(dataset.labels), multilabel=False, source=source)
        report = verify_dataset(dataset)
        report.problems = problems + [_to_source(p, origin) for p in report.problems]
        if deid is not None:
            report.problems = deid.problems + [deid.to_source(p) for p in report.problems]
        if report.errors and not force:
            raise ImportRefused(report)
        if report.errors:
            bad = {p.case_id for p in report.errors if p.case_id}
            dataset.cases = [c for c in dataset.cases if c.case_id not in bad]
            dataset.notes.append(f"imported with --force; left out {len(bad)} cases with errors")
        if deid is not None:
            deid.scrub(dataset)
            deid.write_audit(staging / AUDIT_NAME)
        dataset.save(staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
        if deid is not None and linkage is not None:
            deid.write_linkage(linkage, {c.case_id for c in dataset.cases})
    finally:
        if deid is not None:
            shutil.rmtree(deid.scratch, ignore_errors=True)
        if staging.exists():
            shutil.rmtree(staging)
        with contextlib.suppress(OSError):  # still in use by another import: left
            staging.parent.rmdir()
    dataset.root = target
    return dataset, report


STAGING_DIR = ".staging"
"""Where imports build their copy: ``datasets/.staging/NAME-PID-RANDOM``. Inside ``datasets/`` (the same file
system, so the final move is one rename) but one level down, so that a staging folder, even one a killed import
left with its ``dataset.json`` written, is never taken for a data set; ``.staging`` is no valid data set name."""


def _new_staging(target: Path) -> Path:
    """A fresh staging folder for ``target``, after removing what killed imports left behind."""
    area = target.parent / STAGING_DIR
    area.mkdir(parents=True, exist_ok=True)
    _clean_staging(target.parent)
    return Path(tempfile.mkdtemp(prefix=f"{target.name}-{os.getpid()}-", dir=area))


def _clean_staging(datasets: Path) -> None:
    """Remove the staging folders of imports that are no longer running (killed, or the machine restarted).

    A folder's name carries the process id of its import; one whose process is alive is left alone, since another
    import may be running in the same workspace. Folders ``.import-*`` of the earlier layout are removed too.
    """
    leftovers = [p for p in datasets.glob(".import-*") if p.is_dir()]
    area = datasets / STAGING_DIR
    for p in area.iterdir() if area.is_dir() else []:
        match = re.fullmatch(r".+-(\d+)-[^-]+", p.name)
        if not match or not _process_alive(int(match[1])):
            leftovers.append(p)
    for p in leftovers:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return pid < 2**22  # another user's process (alive), or not a process id at all
    return True


class ImportRefused(VesaliusError):
    """Verification found errors; the report lists them all."""

    def __init__(self, report: VerificationReport) -> None:
        self.report = report
        errors = report.errors
        first = f", the first: {errors[0].message}" if errors else ""
        super().__init__(
            f"import refused with {len(errors)} error{'s' if len(errors) != 1 else ''}{first}",
            errors[0].file if errors else None,
            remedy="fix the files listed above, or pass --force to import the cases without errors",
        )


def _to_source(problem: Problem, origin: dict[str, str]) -> Problem:
    return Problem(problem.severity, origin.get(problem.file, problem.file), problem.message, problem.case_id)


# ------------------------------------------------------------------------------------- de-identification


def pseudonym_case_id(case_id: str, key: bytes) -> str:
    """The keyed pseudonym of a case id: ``case-`` and 16 hex digits of HMAC-SHA256(key, case id).

    Keyed, because an unkeyed hash of a name or record number is undone by hashing the candidates; with the same
    key a source gets the same ids on every import, so splits and results stay comparable across imports.
    """
    digest = hmac.new(key, b"case:" + case_id.encode("utf-8"), hashlib.sha256).hexdigest()
    return f"case-{digest[:16]}"


class _NotDeidentified(VesaliusError):
    """A case part none of whose DICOM files could be de-identified: the case is left out (an import error)."""


class _Deidentification:
    """One de-identifying import: the scratch copy of the DICOM parts, the pseudonyms, the audit and the links."""

    def __init__(self, options: DeidentifyOptions, area: Path, name: str) -> None:
        self.options = options
        self.key = options.key_bytes()
        # named like a staging folder (NAME-...-PID-RANDOM): what a killed import leaves is cleaned by the next one
        self.scratch = Path(tempfile.mkdtemp(prefix=f"{name}-deid-{os.getpid()}-", dir=area))
        self.problems: list[Problem] = []
        self.audit: list[dict[str, Any]] = []
        self.links: dict[str, dict[str, Any]] = {}  # pseudonym -> original id, sources, DICOM identifiers
        self.originals: dict[str, str] = {}  # de-identified copy -> source path, for messages
        self.refused: list[str] = []
        self.pseudonymised = False
        self.dicom_files = self.burned_in = self.other_files = 0

    def apply(self, scan: SourceScan) -> SourceScan:
        """The scan with pseudonymous case ids and its DICOM parts replaced by their de-identified copies."""
        self.pseudonymised = True
        cases = []
        for sc in scan.cases:
            case_id = pseudonym_case_id(sc.case_id, self.key)
            self.links[case_id] = {"original_case_id": sc.case_id, "sources": [], "dicom": []}
            try:
                images = [self._part(p, case_id, f"image_{k}") for k, p in enumerate(sc.images)]
                label = (
                    sc.label if sc.label is None or not sc.label.exists() else self._part(sc.label, case_id, "label")
                )
            except _NotDeidentified as e:
                self.problems.append(Problem("error", e.file or "", f"not de-identified: {e.problem}", case_id))
                continue
            cases.append(SourceCase(case_id, images, label, sc.target, sc.split))
        if self.refused:
            n = len(self.refused)
            raise VesaliusError(
                f"{n} DICOM image{'s' if n != 1 else ''} may show burned-in text (BurnedInAnnotation YES, or "
                f"modality {'/'.join(sorted(BURNED_IN_MODALITIES))} without it); nothing was imported",
                self.refused[0],
                "check the pixels, then pass --allow-burned-in to import them",
            )
        scan.cases = sorted(cases, key=lambda c: c.case_id)  # the order of the source names would hint at them
        return scan

    def _part(self, path: Path, case_id: str, part: str) -> Path:
        """The de-identified copy of one DICOM file or series folder; any other file as it is."""
        self.links[case_id]["sources"].append(str(path))
        if not (path.is_dir() or image_suffix(path) in DICOM_SUFFIXES):
            self.other_files += 1
            return path
        out = self.scratch / case_id / part
        report: Report = deidentify_dicom(path, out, self.options)
        (out / AUDIT_NAME).unlink()  # the import keeps one audit log for all parts
        self.refused += [r.source for r in report.refused]
        self.burned_in += len(report.burned_in)
        self.dicom_files += len(report.written)
        for n, record in enumerate(report.records):
            self.audit.append({**record.audit(), "source": f"{case_id}/{part}/{n:05d}"})  # no source names
            if record.status == "skipped":
                self.problems.append(
                    Problem("warning", record.source, f"left out of the de-identified copy: {record.reason}", case_id)
                )
        self.links[case_id]["dicom"] += [{"source": r.source, "identifiers": r.links} for r in report.written]
        if not report.written and not report.refused:
            raise _NotDeidentified("no readable DICOM file", path)
        copy = out if path.is_dir() else out / path.name
        self.originals[str(copy)] = str(path)
        return copy

    def to_source(self, problem: Problem) -> Problem:
        """``problem`` naming the source file instead of its de-identified copy."""
        for copy, original in self.originals.items():
            if problem.file == copy or problem.file.startswith(copy + os.sep):
                return Problem(problem.severity, original + problem.file[len(copy) :], problem.message, problem.case_id)
        return problem

    def scrub(self, dataset: Dataset) -> None:
        """Drop from ``dataset`` what names the source (its path, the cases' sources, stray files); note what was
        done, and in one line what de-identification could not cover."""
        dataset.source = {"layout": dataset.source.get("layout", ""), "deidentified": self.options.method()}
        for case in dataset.cases:
            case.source = []
        dataset.stray_files = []
        ids = "case ids are keyed pseudonyms" if self.pseudonymised else "case ids (split_index) are kept"
        dataset.notes.append(
            f"de-identified on import ({self.options.method()}): {self.dicom_files} DICOM files; {ids}; "
            f"source paths not kept; audit in {AUDIT_NAME}"
        )
        if self.burned_in:
            dataset.notes.append(
                f"{self.burned_in} DICOM images may show burned-in text (imported with allow_burned_in): check them"
            )
        if self.other_files or not self.pseudonymised:
            what = f"{self.other_files} non-DICOM files" if self.pseudonymised else "an .npz source"
            dataset.notes.append(
                f"{what} carry no DICOM attributes to de-identify: only voxels and geometry were imported (header "
                "text dropped); text drawn into their pixels is not checked"
            )

    def write_audit(self, path: Path) -> None:
        """The audit log: per DICOM file the attributes removed, emptied, replaced or remapped, never values."""
        lines = "".join(json.dumps(line, sort_keys=True) + "\n" for line in self.audit)
        write_bytes_atomic(path, lines.encode("utf-8"))

    def write_linkage(self, path: Path, case_ids: set[str]) -> None:
        """The linkage file (owner-only): per imported case its pseudonym, original id, sources and identifiers."""
        cases = [{"case_id": c, **link} for c, link in sorted(self.links.items()) if c in case_ids]
        write_json_atomic(path, {"cases": cases}, mode=0o600)


# --------------------------------------------------------------------------------------------- layouts


def scan_source(source: Path, layout: Layout = "auto", labels_dir: str | None = None) -> SourceScan:
    """Find the cases of a folder or CSV without reading any image."""
    if layout == "auto":
        layout = detect_layout(source, labels_dir)
    scanners: dict[str, Callable[[], SourceScan]] = {
        "msd": lambda: _scan_msd(source),
        "pairs": lambda: _scan_pairs(source, labels_dir),
        "classes": lambda: _scan_classes(source),
        "csv": lambda: _scan_csv(source),
    }
    if layout not in scanners:
        raise VesaliusError(f"unknown layout '{layout}'", remedy="use msd, pairs, classes, csv or npz")
    return scanners[layout]()


def detect_layout(source: Path, labels_dir: str | None = None) -> str:
    """Guess the layout of ``source`` from its files."""
    if source.is_file():
        suffix = source.suffix.lower()
        if suffix in (".npz", ".csv"):
            return suffix[1:]
        raise VesaliusError("not a data set", source, "give a folder, a CSV file or a MedMNIST .npz file")
    if (source / "dataset.json").is_file():
        return "msd"
    if labels_dir or any((source / d).is_dir() for d in IMAGE_DIRS):
        return "pairs"
    subdirs = [d for d in source.iterdir() if d.is_dir() and not d.name.startswith(".")]
    if subdirs and all(any(_image_entries(d)) for d in subdirs):
        return "classes"
    raise VesaliusError(
        "cannot tell the layout",
        source,
        "expected dataset.json (MSD/nnU-Net), images/ + labels/ (pairs) or one folder per class; or pass --layout",
    )


def _image_entries(folder: Path) -> list[Path]:
    """Image files and DICOM series folders in ``folder``, in name order (stray files excluded)."""
    out = []
    for p in sorted(folder.iterdir()):
        if _STRAY.match(p.name):
            continue
        if (p.is_file() and image_suffix(p)) or (p.is_dir() and any(p.iterdir())):
            out.append(p)
    return out


def _stray(folder: Path) -> list[Path]:
    return [p for p in sorted(folder.iterdir()) if _STRAY.match(p.name) or (p.is_file() and not image_suffix(p))]


def _scan_msd(source: Path) -> SourceScan:
    meta_path = source / "dataset.json"
    meta = _read_json_object(meta_path)
    images_dir, labels_dir = source / "imagesTr", source / "labelsTr"
    if not images_dir.is_dir():
        raise VesaliusError("no imagesTr folder next to dataset.json", source, "check the data set layout")
    channel_names = meta.get("channel_names") or meta.get("modality") or {"0": "image"}
    key = "channel_names" if meta.get("channel_names") else "modality"
    if not isinstance(channel_names, dict) or not all(re.fullmatch(r"\d{1,4}", str(k)) for k in channel_names):
        raise VesaliusError(
            f"'{key}' must map channel numbers to names, not {_short(channel_names)}",
            meta_path,
            'write it like {"0": "CT"}',
        )
    channels = [str(channel_names[k]) for k in sorted(channel_names, key=int)]
    labels = _declared_labels(meta.get("labels", {}), meta_path)
    for field_name in ("tensorImageSize", "file_ending"):
        if field_name in meta and not isinstance(meta[field_name], str):
            raise VesaliusError(
                f"'{field_name}' must be a string, not {_short(meta[field_name])}", meta_path, "correct it"
            )
    four_d = str(meta.get("tensorImageSize", "3D")).upper() == "4D" and "channel_names" not in meta
    spatial_dims = 2 if str(meta.get("tensorImageSize", "3D")).upper() == "2D" else 3
    ending = meta.get("file_ending", ".nii.gz")
    cases: list[SourceCase] = []
    if "training" in meta:  # MSD: explicit list
        training = meta["training"]
        if not isinstance(training, list):
            raise VesaliusError(
                f'\'training\' must be a list of {{"image": ..., "label": ...}} entries, not {_short(training)}',
                meta_path,
                "correct it",
            )
        for i, entry in enumerate(training):
            where = f"training[{i}]"
            if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
                missing = "an object" if not isinstance(entry, dict) else "image" if "image" not in entry else "label"
                raise VesaliusError(
                    f"'{where}' has no '{missing}'" if missing != "an object" else f"'{where}' is not an object",
                    meta_path,
                    'give each entry like {"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}',
                )
            listed = entry["image"] if isinstance(entry["image"], list) else [entry["image"]]
            images = [_inside(source, p, meta_path, f"{where}.image") for p in listed]
            if not images:
                raise VesaliusError(f"'{where}.image' is an empty list", meta_path, "name the case's image files")
            label = _inside(source, entry["label"], meta_path, f"{where}.label")
            if len(images) == 1 and not images[0].exists():  # nnU-Net-converted MSD: CASE_0000.nii.gz files
                stem = strip_suffix(images[0])
                pattern = f"{glob.escape(stem)}_[0-9][0-9][0-9][0-9]{glob.escape(image_suffix(images[0]))}"
                found = sorted(images[0].parent.glob(pattern))
                images = found or images
            case_id = (
                _CHANNEL_FILE.sub(r"\g<case>", strip_suffix(images[0])) if len(images) > 1 else strip_suffix(images[0])
            )
            check_case_id(case_id, meta_path, f"{where}.image")
            cases.append(SourceCase(case_id, images, label))
    else:  # nnU-Net v2: files CASE_XXXX{ending} in imagesTr, CASE{ending} in labelsTr
        groups: dict[str, list[Path]] = {}
        for p in _image_entries(images_dir):
            m = _CHANNEL_FILE.match(strip_suffix(p))
            if p.name.endswith(ending) and m:
                groups.setdefault(m["case"], []).append(p)
        for case_id, files in sorted(groups.items()):
            check_case_id(case_id, files[0], strict=False)
            cases.append(SourceCase(case_id, sorted(files), labels_dir / f"{case_id}{ending}"))
    used = {p for c in cases for p in [*c.images, c.label] if p is not None}
    stray = [
        p
        for d in (images_dir, labels_dir)
        if d.is_dir()
        for p in sorted(d.iterdir())
        if p not in used and (p.is_file() or _STRAY.match(p.name))
    ]
    return SourceScan("msd", "segmentation", cases, spatial_dims, channels, channels, labels, four_d, stray_files=stray)


def _read_json_object(path: Path) -> dict[str, Any]:
    """A source's ``dataset.json``, which must hold a JSON object."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise VesaliusError(f"invalid JSON ({' '.join(str(e).split())[:200]})", path, "fix the file") from None
    except OSError as e:
        raise VesaliusError(f"cannot read the file ({e.strerror or e})", path, "check the file") from None
    if not isinstance(meta, dict):
        raise VesaliusError(
            f"the file holds a JSON {type(meta).__name__.replace('dict', 'object').replace('list', 'array')}, "
            "not an object",
            path,
            "expected an MSD or nnU-Net dataset.json object",
        )
    return meta


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _inside(root: Path, relative: Any, file: Path, where: str) -> Path:
    """``root / relative`` for a path a user's file gives, refused unless it stays inside ``root``.

    The check is on the text (absolute paths and ``..`` are refused), not on resolved links, so that a source
    may link to data kept elsewhere while a file cannot name paths outside its own folder tree.
    """
    if not isinstance(relative, str) or not relative.strip():
        raise VesaliusError(f"'{where}' must be a file path, not {_short(relative)}", file, "correct it")
    path = Path(relative.strip())
    if path.is_absolute() or ".." in path.parts or "\0" in relative:
        raise VesaliusError(
            f"'{where}' path {relative!r} leaves the folder {root}",
            file,
            "give paths relative to that folder, without '..', and keep the files inside it",
        )
    return root / path


def _declared_labels(raw: Any, path: Path) -> dict[int, str]:
    """MSD labels ``{"0": "background"}`` or nnU-Net v2 labels ``{"background": 0}``."""
    if not isinstance(raw, dict):
        raise VesaliusError(
            f"'labels' must be an object of value-name pairs, not {_short(raw)}",
            path,
            'write it like {"0": "background", "1": "liver"} (MSD) or {"background": 0, "liver": 1} (nnU-Net v2)',
        )
    out: dict[int, str] = {}
    for k, v in raw.items():
        try:
            if isinstance(v, int) and not isinstance(v, bool):
                out[v] = k
            elif isinstance(v, str | int | float) and not isinstance(v, bool):
                out[int(k)] = str(v)
            else:
                raise TypeError(v)
        except (TypeError, ValueError):
            raise VesaliusError(
                f"label entry {k!r}: {v!r} is not a value-name pair", path, "use MSD or nnU-Net v2 label syntax"
            ) from None
    return out


def _scan_pairs(source: Path, labels_dir: str | None) -> SourceScan:
    images_dir = next((source / d for d in IMAGE_DIRS if (source / d).is_dir()), None)
    if images_dir is None:
        raise VesaliusError("no images/ folder", source, f"put the images in one of {', '.join(IMAGE_DIRS)}")
    if labels_dir:
        # a relative path names a folder inside the source (``--labels masks``) or, failing that, one as given
        inside = source / labels_dir
        label_folder = inside if inside.is_dir() or Path(labels_dir).is_absolute() else Path(labels_dir)
        if not label_folder.is_dir():
            raise VesaliusError("label folder not found", labels_dir, f"give a folder inside {source} or a path to one")
    else:
        candidates = [source / d for d in LABEL_DIRS if (source / d).is_dir()]
        if not candidates:
            others = [d for d in sorted(source.iterdir()) if d.is_dir() and d != images_dir]
            candidates = [d for d in others if _image_entries(d)]
        if len(candidates) != 1:
            names = ", ".join(d.name for d in candidates) or "none"
            raise VesaliusError(
                f"cannot tell which folder holds the labels (candidates: {names})",
                source,
                "name it with --labels DIR",
            )
        label_folder = candidates[0]
    images = _image_entries(images_dir)
    labels = {strip_suffix(p): p for p in _image_entries(label_folder)}
    cases, used = [], set()
    for image in images:
        stem = strip_suffix(image)
        match = labels.get(stem)
        if match is None:
            options = [p for s, p in labels.items() if s.startswith(stem) and s[len(stem)] in "_-."]
            if len(options) > 1:
                raise VesaliusError(
                    f"several labels match image {image.name}: {', '.join(p.name for p in options)}",
                    label_folder,
                    "keep one label per image",
                )
            match = options[0] if options else None
        if match is not None:
            used.add(match)
        cases.append(SourceCase(check_case_id(stem, image, strict=False), [image], match))
    stray = _stray(images_dir) + _stray(label_folder) + [p for p in labels.values() if p not in used]
    return SourceScan("pairs", "segmentation", cases, stray_files=stray)


def _scan_classes(source: Path) -> SourceScan:
    class_dirs = [d for d in sorted(source.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    labels = {i: d.name for i, d in enumerate(class_dirs)}
    cases = [
        SourceCase(check_case_id(f"{d.name}_{strip_suffix(p)}", p, strict=False), [p], target=i)
        for i, d in enumerate(class_dirs)
        for p in _image_entries(d)
    ]
    stray = [p for d in class_dirs for p in _stray(d)]
    return SourceScan("classes", "classification", cases, labels=labels, stray_files=stray)


def _scan_csv(path: Path) -> SourceScan:
    if path.is_dir():  # --layout csv with a folder: its one CSV file
        tables = sorted(p for p in path.glob("*.csv") if p.is_file())
        if len(tables) != 1:
            raise VesaliusError(
                f"the csv layout needs a CSV file; the folder holds {len(tables)}", path, "give the CSV file itself"
            )
        path = tables[0]
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:  # Excel writes "CSV UTF-8" with a BOM
            reader = csv.DictReader(f)
            rows = list(reader)
            header = list(reader.fieldnames or [])
    except UnicodeDecodeError:
        raise VesaliusError("not a UTF-8 text file", path, "save the CSV as UTF-8 text") from None
    except csv.Error as e:
        raise VesaliusError(f"cannot parse the CSV ({e})", path, "save it as plain comma-separated text") from None
    except OSError as e:
        raise VesaliusError(f"cannot read the CSV ({e.strerror or e})", path, "check the file") from None
    if not rows:
        raise VesaliusError("empty CSV", path, "add a header line and one row per image")
    columns = {c.lower().strip(): c for c in header}
    image_col = next((columns[c] for c in ("image", "path", "file", "filename") if c in columns), None)
    label_col = next((columns[c] for c in ("label", "class", "target", "diagnosis") if c in columns), None)
    if image_col is None or label_col is None:
        raise VesaliusError(
            f"CSV needs an image column and a label column, found {header}",
            path,
            "name them 'image' and 'label'",
        )
    id_col, split_col = columns.get("case_id") or columns.get("id"), columns.get("split")
    wanted = [c for c in (image_col, label_col, id_col, split_col) if c is not None]
    for n, row in enumerate(rows, start=2):  # line 1 is the header
        short = [c for c in wanted if not isinstance(row.get(c), str)]
        if short:
            raise VesaliusError(
                f"row {n} has no value in column '{short[0]}'", path, "give every row a value in every column"
            )
    raw = [r[label_col].strip() for r in rows]
    names = sorted(set(raw), key=lambda v: (not _is_integer(v), int(v) if _is_integer(v) else 0, v))
    index = {n: i for i, n in enumerate(names)}
    cases = []
    for n, (row, value) in enumerate(zip(rows, raw, strict=True), start=2):
        image = _inside(path.parent, row[image_col], path, f"row {n}, column {image_col}")
        if id_col:
            case_id = check_case_id(row[id_col].strip(), path, f"row {n}, column {id_col}")
        else:
            case_id = check_case_id(strip_suffix(image), path, f"row {n}, column {image_col}", strict=False)
        split = row[split_col].strip() or None if split_col else None
        cases.append(SourceCase(case_id, [image], target=index[value], split=split))
    return SourceScan("csv", "classification", cases, labels=dict(enumerate(names)))


def _is_integer(text: str) -> bool:
    return bool(re.fullmatch(r"-?[0-9]{1,18}", text))


# ------------------------------------------------------------------------------------------ conversion


def _convert(
    scan: SourceScan,
    source: Path,
    name: str,
    staging: Path,
    binarise: tuple[LabelThreshold, bool],
    on_case: Callable[[str], None] | None,
    copy_bytes: bool = True,
) -> tuple[Dataset, list[Problem], dict[str, str]]:
    """Copy or convert every case into ``staging`` (nnU-Net v2 layout); collect read failures as problems.

    ``binarise``: the label threshold and whether the foreground lies below it (see :func:`import_dataset`).

    ``copy_bytes=False`` converts NIfTI files too (voxels and geometry only) instead of copying their bytes.
    """
    (staging / "imagesTr").mkdir()
    if scan.task == "segmentation":
        (staging / "labelsTr").mkdir()
    problems: list[Problem] = []
    origin: dict[str, str] = {}
    cases: list[Case] = []
    spatial_dims, channels = scan.spatial_dims, scan.channels
    found_values: set[int] = set()
    thresholded = False
    for sc in scan.cases:
        try:
            files, dims, n_channels, picture_dtype = _convert_images(
                sc, staging, scan.channels_last_4d, origin, copy_bytes
            )
            spatial_dims = spatial_dims or dims
            if channels is None:
                channels = _channel_names(n_channels, picture_dtype)
                if scan.modalities is None:
                    kind = "RGB" if n_channels == 3 and picture_dtype else ("8bit" if picture_dtype else "other")
                    scan.modalities = [kind] * n_channels
            label_rel = None
            if sc.label is not None and sc.label.exists():
                label_rel, values, did_threshold = _convert_label(
                    sc, staging, scan.labels is None, binarise, copy_bytes
                )
                origin[str(staging / label_rel)] = str(sc.label)
                found_values |= values
                thresholded |= did_threshold
            elif scan.task == "segmentation":
                label_rel = f"labelsTr/{sc.case_id}.nii.gz"
                origin[str(staging / label_rel)] = str(sc.label or sc.images[0])
        except VesaliusError as e:
            problems.append(Problem("error", e.file or str(sc.images[0]), f"unreadable: {e.problem}", sc.case_id))
        else:
            sources = [str(p) for p in sc.images] + ([str(sc.label)] if sc.label else [])
            cases.append(Case(sc.case_id, files, label_rel, sc.target, sc.split, sources))
        if on_case:
            on_case(sc.case_id)
    labels = scan.labels
    if labels is None and thresholded:
        labels = {0: "background", 1: "foreground"}
    elif labels is None:
        labels = {v: ("background" if v == 0 else f"label_{v}") for v in sorted(found_values | {0})}
    label_threshold, invert = binarise
    if invert and not thresholded and scan.task == "segmentation":
        raise VesaliusError(
            "--invert-labels needs labels that are binarised", source, "give --label-threshold N as well"
        )
    relation = "<" if invert else ">="
    notes = [f"labels binarised as value {relation} {_threshold_value(label_threshold)}"] if thresholded else []
    dataset = Dataset(
        name=name,
        task=scan.task,
        spatial_dims=spatial_dims or 3,
        channels=channels or ["image"],
        labels=labels,
        cases=cases,
        source={"path": str(source), "layout": scan.layout},
        root=staging,
        modalities=scan.modalities or [],
        notes=notes,
        stray_files=[str(p) for p in scan.stray_files],
    )
    return dataset, problems, origin


def _channel_names(n: int, picture: bool) -> list[str]:
    if picture and n in (1, 3):
        return ["grey"] if n == 1 else ["R", "G", "B"]
    return ["image"] if n == 1 else [f"channel_{i}" for i in range(n)]


def _convert_images(
    sc: SourceCase, staging: Path, channels_last_4d: bool, origin: dict[str, str], copy_bytes: bool = True
) -> tuple[list[str], int, int, bool]:
    """Write the channels of one case; returns (relative files, spatial dims, channels, is 8-bit picture)."""
    files: list[str] = []
    dims, picture = 0, False
    for src in sc.images:
        as_is = copy_bytes and src.is_file() and src.name.endswith(".nii.gz") and not has_header_text(src)
        header = _header_dims(src) if as_is else None
        if header is not None and header[1] == 1 and not (channels_last_4d and header[0] == 4):
            rel = f"imagesTr/{sc.case_id}_{len(files):04d}.nii.gz"
            shutil.copyfile(src, staging / rel)  # exact bytes; verification reads it back
            origin[str(staging / rel)] = str(src)
            files.append(rel)
            dims = dims or header[0]
            continue
        image = read_image(src)
        if channels_last_4d and image.ndim == 4:
            image = _split_last_axis(image)
        dims = image.ndim
        picture = picture or (
            image_suffix(src) in (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff") and image.array.dtype == np.uint8
        )
        for c in range(image.num_channels):
            rel = f"imagesTr/{sc.case_id}_{len(files):04d}.nii.gz"
            write_image(image.channel(c), staging / rel)
            origin[str(staging / rel)] = str(src)
            files.append(rel)
    return files, dims, len(files), picture


def _header_dims(path: Path) -> tuple[int, int] | None:
    """(dimension, components per voxel) from a NIfTI header, or None when the header cannot be read."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None  # unreadable: converted (and reported) through read_image
    return reader.GetDimension(), reader.GetNumberOfComponents()


def _split_last_axis(image: Image) -> Image:
    """A 4D MSD image (channels as the 4th axis) as a 3D image with channels."""
    g = image.geometry
    direction = g.direction_matrix[:3, :3]
    geometry = Geometry(g.spacing[:3], g.origin[:3], tuple(direction.ravel()))
    return Image(np.moveaxis(image.array[0], -1, 0), geometry)


def _threshold_value(label_threshold: LabelThreshold) -> int:
    return 128 if label_threshold == "auto" else int(label_threshold or 0)


def _convert_label(
    sc: SourceCase, staging: Path, infer: bool, binarise: tuple[LabelThreshold, bool], copy_bytes: bool = True
) -> tuple[str, set[int], bool]:
    """Write one label; threshold 8-bit 0/255 masks when asked. Returns (relative path, values, thresholded)."""
    assert sc.label is not None
    rel = f"labelsTr/{sc.case_id}.nii.gz"
    label_threshold, invert = binarise
    as_is = copy_bytes and sc.label.name.endswith(".nii.gz") and sc.label.is_file() and not infer and not invert
    if as_is and not has_header_text(sc.label):
        shutil.copyfile(sc.label, staging / rel)
        return rel, set(), False
    label = read_image(sc.label)
    array = label.array
    threshold = None
    if label_threshold == "auto":
        if array.dtype == np.uint8 and array.size and int(array.max()) == 255:
            threshold = 128
    elif label_threshold is not None:
        threshold = int(label_threshold)
    if threshold is not None:
        array = ((array < threshold) if invert else (array >= threshold)).astype(np.uint8)
    elif array.dtype.kind in "iub" and array.size and array.min() >= 0 and array.max() <= 255:
        array = array.astype(np.uint8)
    write_image(label.with_array(array), staging / rel)
    values = set(np.unique(array).astype(np.int64).tolist()) if array.dtype.kind in "iub" else set()
    return rel, values, threshold is not None


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:200] or type(error).__name__


def _npz_array(data: Any, key: str, source: Path) -> np.ndarray:
    """One array of an npz archive; object arrays (pickles) and damaged members are one-line errors."""
    try:
        return np.asarray(data[key])
    except ValueError as e:
        if "pickle" in str(e).lower() or "object" in str(e).lower():
            raise VesaliusError(
                f"'{key}' holds pickled Python objects, which are never loaded (they could run code)",
                source,
                "save the arrays as plain numbers (numpy.savez with numeric arrays)",
            ) from None
        raise VesaliusError(f"cannot read '{key}' ({_one_line(e)})", source, "download the file again") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, MemoryError) as e:
        raise VesaliusError(f"cannot read '{key}' ({_one_line(e)})", source, "download the file again") from None


def _target_type(requested: str, num_classes: int, *, multilabel: bool, source: Path) -> str:
    """The target type of a classification source: the requested one (checked), or the one its data imply."""
    if requested == "auto":
        if multilabel:
            return "multilabel"
        if source.name.lower().startswith(ORDINAL_MEDMNIST):
            return "ordinal"
        return "binary" if num_classes <= 2 else "multiclass"
    if (requested == "multilabel") != multilabel:
        found = "one flag per label" if multilabel else "one class per case"
        raise VesaliusError(f"--targets {requested} does not fit the source ({found})", source, "use --targets auto")
    if requested == "binary" and num_classes > 2:
        raise VesaliusError(f"{num_classes} classes are not binary", source, "use --targets multiclass or ordinal")
    return requested


def _convert_npz(
    source: Path, name: str, staging: Path, target_type: str = "auto"
) -> tuple[Dataset, list[Problem], dict[str, str]]:
    """MedMNIST ``.npz``: every sample of every split becomes a NIfTI file (unit spacing)."""
    try:
        data = np.load(source, allow_pickle=False)  # pickled objects could run code: never loaded
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise VesaliusError(f"cannot read npz ({_one_line(e)})", source, "download the file again") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise VesaliusError("a single .npy array, not an .npz archive", source, "expected a MedMNIST .npz file")
    splits = [k[: -len("_images")] for k in data.files if k.endswith("_images")]
    if not splits:
        raise VesaliusError("no '<split>_images' arrays", source, "expected a MedMNIST file (train_images, ...)")
    for split in splits:
        check_case_id(f"{split}_00000", source, f"array '{split}_images'")
    (staging / "imagesTr").mkdir()
    cases: list[Case] = []
    ndim, rgb, classes = None, False, set()
    num_flags: int | None = None  # multi-label: labels per case
    for split in splits:
        key = f"{split}_labels"
        if key not in data.files:
            raise VesaliusError(f"'{split}_images' has no '{key}'", source, "the file is incomplete")
        images, targets = _npz_array(data, f"{split}_images", source), _npz_array(data, key, source)
        if images.dtype.kind not in "biuf" or images.ndim < 3:
            raise VesaliusError(
                f"'{split}_images' holds {images.dtype} values of shape {images.shape}",
                source,
                "expected numbers of shape (N,H,W[,3]) or (N,D,H,W)",
            )
        if targets.dtype.kind not in "biuf" or not np.all(np.isfinite(targets)) or np.any(targets != np.round(targets)):
            raise VesaliusError(f"'{key}' holds values that are not whole numbers", source, "give class indices")
        if images.dtype.kind == "b" or images.dtype == np.float16:  # types NIfTI (ITK) cannot write
            images = images.astype(np.uint8 if images.dtype.kind == "b" else np.float32)
        if targets.ndim == 2 and targets.shape[1] == 1:
            targets = targets[:, 0]
        if targets.ndim == 2:
            if not np.isin(targets, (0, 1)).all() or num_flags not in (None, targets.shape[1]):
                raise VesaliusError(
                    f"'{key}' has shape {targets.shape} but is not one 0/1 flag per label like the other splits",
                    source,
                    "give (N,) class indices or (N, L) 0/1 multi-label flags",
                )
            num_flags = targets.shape[1]
        elif targets.ndim != 1:
            raise VesaliusError(f"'{key}' has shape {targets.shape}", source, "expected (N,), (N, 1) or (N, L)")
        if len(targets) != len(images):
            raise VesaliusError(f"{len(images)} images but {len(targets)} labels in split '{split}'", source)
        rgb = images.ndim == 4 and images.shape[-1] == 3
        ndim = images.ndim - 1 - int(rgb)
        if ndim not in (2, 3):
            raise VesaliusError(
                f"'{split}_images' has shape {images.shape}", source, "expected (N,H,W[,3]) or (N,D,H,W)"
            )
        for i in range(len(images)):
            # MedMNIST rows/columns (H, W[, D]) -> (C, X, Y[, Z]) with X along a row
            array = np.moveaxis(images[i], -1, 0).transpose(0, 2, 1) if rgb else images[i].T[None]
            case_id = f"{split}_{i:05d}"
            files = []
            for c in range(array.shape[0]):
                rel = f"imagesTr/{case_id}_{c:04d}.nii.gz"
                write_image(Image(np.ascontiguousarray(array[c : c + 1]), Geometry.default(ndim)), staging / rel)
                files.append(rel)
            target: int | list[int] = int(targets[i]) if targets.ndim == 1 else [int(t) for t in targets[i]]
            if isinstance(target, int):
                classes.add(target)
            cases.append(Case(case_id, files, None, target, split, [f"{source}:{split}[{i}]"]))
    channels = ["R", "G", "B"] if rgb else ["image"]
    dataset = Dataset(
        name=name,
        task="classification",
        spatial_dims=ndim or 2,
        channels=channels,
        labels={c: str(c) for c in (range(num_flags) if num_flags else sorted(classes))},
        cases=cases,
        source={"path": str(source), "layout": "npz"},
        root=staging,
        modalities=["RGB"] * 3 if rgb else ["8bit"],
    )
    dataset.target_type = _target_type(target_type, len(dataset.labels), multilabel=bool(num_flags), source=source)
    return dataset, [], {}
