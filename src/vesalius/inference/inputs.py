"""The inputs of ``vesalius predict``: image files, DICOM series folders, or folders of them, grouped into cases.

An input is an image file; a DICOM series folder (a folder holding ``.dcm`` files and no other images); or a
folder of image files, one case per file, or for multi-channel models one file per channel named ``CASE_0000``,
``CASE_0001``, ... (nnU-Net's convention) or one file holding every channel (a colour picture for a model trained
on R, G, B, as ``vesalius import`` splits it). Both tasks read their inputs here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vesalius.errors import VesaliusError
from vesalius.io import IMAGE_SUFFIXES, Image, channels_in_file, image_suffix, read_image, strip_suffix

__all__ = ["InputCase", "check_finite", "list_inputs", "output_path", "read_case"]


@dataclass
class InputCase:
    """One case to predict: its id, its files (one per channel, or one DICOM folder) and its output suffix; after
    prediction the seconds it took, or ``skipped`` when an earlier run had predicted it."""

    case_id: str
    files: list[Path]
    suffix: str = ".nii.gz"
    seconds: float = field(default=0.0, compare=False)
    skipped: bool = field(default=False, compare=False)  # finished by an earlier run (see inference.cohort)

    @property
    def is_dicom_series(self) -> bool:
        return self.files[0].is_dir()


#: Formats whose compression would change label values: their label maps are written as PNG.
LOSSY_SUFFIXES = (".jpg", ".jpeg")


def label_suffix(path: Path) -> str:
    """The format of an input's label map: the input's own, but PNG for a JPEG (lossy compression would blur the
    label values) and NIfTI when the suffix says nothing."""
    suffix = image_suffix(path) or ".nii.gz"
    return ".png" if suffix in LOSSY_SUFFIXES else suffix


def _is_dicom_folder(folder: Path) -> bool:
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    return bool(files) and all(image_suffix(p) in (".dcm", ".dicom", "") for p in files)


def list_inputs(source: str | Path, channels: int = 1) -> list[InputCase]:
    """The cases in ``source`` (a file, a DICOM series folder or a folder of files), sorted by id."""
    source = Path(source)
    if not source.exists():
        raise VesaliusError("input not found", source, "give an image file, a DICOM folder or a folder of images")
    if source.is_file():
        if channels != 1 and channels_in_file(source) != channels:
            raise VesaliusError(
                f"the model needs {channels} channels but one file of {channels_in_file(source) or 1} was given",
                source,
                "give a folder of CASE_000N files, one per channel (or a colour picture for an RGB model)",
            )
        return [InputCase(strip_suffix(source), [source], label_suffix(source))]
    if _is_dicom_folder(source):
        return [InputCase(source.name, [source], ".nii.gz")]
    files = sorted(p for p in source.iterdir() if p.is_file() and image_suffix(p) and not p.name.startswith("."))
    subfolders = sorted(p for p in source.iterdir() if p.is_dir() and _is_dicom_folder(p))
    if channels == 1:
        stems = {strip_suffix(p) for p in files}
        for p in files:  # CASE_0000 and CASE_0001: channel files of one case, not two cases
            case_id, _, index = strip_suffix(p).rpartition("_")
            if case_id and index.isdigit() and len(index) == 4 and index != "0000" and f"{case_id}_0000" in stems:
                raise VesaliusError(
                    f"'{p.name}' is a second channel of case '{case_id}', but the model takes one channel",
                    p,
                    "give one file per case (only the channel the model was trained on)",
                )
        cases = [InputCase(strip_suffix(p), [p], label_suffix(p)) for p in files]
        cases += [InputCase(p.name, [p], ".nii.gz") for p in subfolders]
    else:
        groups: dict[str, list[Path]] = {}
        cases = []
        for p in files:
            if channels_in_file(p) == channels:  # all channels in one file: a colour picture for an RGB model
                cases.append(InputCase(strip_suffix(p), [p], label_suffix(p)))
                continue
            stem = strip_suffix(p)
            case_id, _, index = stem.rpartition("_")
            if not (case_id and index.isdigit() and len(index) == 4):
                raise VesaliusError(
                    f"the model needs {channels} channels: a file holding them all or files named CASE_0000, "
                    "CASE_0001, ...",
                    p,
                    "rename the files",
                )
            groups.setdefault(case_id, []).append(p)
        for case_id, group in sorted(groups.items()):
            if len(group) != channels:
                raise VesaliusError(
                    f"case '{case_id}' has {len(group)} channel files, the model needs {channels}",
                    group[0],
                    "give one file per channel",
                )
            cases.append(InputCase(case_id, sorted(group), label_suffix(group[0])))
    if not cases:
        raise VesaliusError("no images in the folder", source, f"supported files: {', '.join(IMAGE_SUFFIXES)}")
    return sorted(cases, key=lambda c: c.case_id)


def read_case(case: InputCase) -> Image:
    """The case's image: its channel files stacked into one ``(C, *spatial)`` image."""
    images = [read_image(f) for f in case.files]
    if len(images) == 1:
        return images[0]
    first = images[0]
    for f, other in zip(case.files[1:], images[1:], strict=True):
        if other.spatial_shape != first.spatial_shape:
            raise VesaliusError("channel files of one case differ in shape", f, "resample them onto one grid")
    return first.with_array(np.concatenate([i.array for i in images], axis=0))


def output_path(output: Path, case: InputCase, single: bool) -> Path:
    """Where a case's label map goes: ``output`` itself for a single case named like an image, else
    ``output/CASE.SUFFIX``."""
    if single and image_suffix(output):
        return output
    return output / f"{case.case_id}{case.suffix}"


def check_finite(image: Image, case: InputCase) -> None:
    """Refuse an image with NaN or infinite voxels: a network given them predicts background without a word."""
    if image.array.dtype.kind == "f" and not np.isfinite(image.array).all():
        raise VesaliusError(
            "the image holds NaN or infinite voxels",
            case.files[0],
            "replace them (e.g. with the background value) and predict again",
        )
