"""``vesalius predict``: segment files, folders or DICOM series with one trained fold or an ensemble of folds.

Inputs: an image file; a DICOM series folder (a folder holding ``.dcm`` files and no other images); or a folder of
image files, one case per file, or for multi-channel models one file per channel named ``CASE_0000``,
``CASE_0001``, ... (nnU-Net's convention). Models: a fold's run folder (``runs/NAME/CONFIG/fold_K``) or a
configuration folder holding several folds (all folds with a final checkpoint form an ensemble: their softmax
probabilities are averaged). Outputs: each case's label map in the input's format and on its grid, named after the
case (for a DICOM series a NIfTI file and a DICOM-SEG, ``CASE_seg.dcm``, referencing the series); optionally the
probabilities (``CASE_probabilities.nii.gz``, one channel per class). The post-processing decided on the folds'
validation cases (``postprocessing.json``) is applied when all folds of the ensemble decided the same
(``postprocess=False`` leaves it out); ``fill_holes`` adds hole filling of every class.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vesalius.errors import VesaliusError
from vesalius.inference.model import TrainedModel, load_model
from vesalius.inference.predict import predict_image
from vesalius.io import IMAGE_SUFFIXES, Image, image_suffix, read_image, strip_suffix, write_image

__all__ = ["InputCase", "find_runs", "list_inputs", "predict_files"]

#: Window step (fraction of the patch) without test-time augmentation (``--fast``).
FAST_STEP = 0.75


@dataclass
class InputCase:
    """One case to predict: its id, its files (one per channel, or one DICOM folder) and its output suffix."""

    case_id: str
    files: list[Path]
    suffix: str = ".nii.gz"
    seconds: float = field(default=0.0, compare=False)


def find_runs(model: str | Path) -> list[Path]:
    """The run folders in ``model``: itself when it is a fold, else its ``fold_*`` sub-folders with weights."""
    model = Path(model)
    if (model / "training.json").is_file():
        return [model]
    runs = sorted(p for p in model.glob("fold_*") if (p / "checkpoint_final.pt").is_file())
    if not runs:
        raise VesaliusError(
            "no trained model here", model, "give a fold folder (runs/NAME/CONFIG/fold_K) or its configuration folder"
        )
    return runs


def _is_dicom_folder(folder: Path) -> bool:
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    return bool(files) and all(image_suffix(p) in (".dcm", ".dicom", "") for p in files)


def list_inputs(source: str | Path, channels: int = 1) -> list[InputCase]:
    """The cases in ``source`` (a file, a DICOM series folder or a folder of files), sorted by id."""
    source = Path(source)
    if not source.exists():
        raise VesaliusError("input not found", source, "give an image file, a DICOM folder or a folder of images")
    if source.is_file():
        if channels != 1:
            raise VesaliusError(
                f"the model needs {channels} channels but one file was given",
                source,
                "give a folder of CASE_000N files",
            )
        return [InputCase(strip_suffix(source), [source], image_suffix(source) or ".nii.gz")]
    if _is_dicom_folder(source):
        return [InputCase(source.name, [source], ".nii.gz")]
    files = sorted(p for p in source.iterdir() if p.is_file() and image_suffix(p) and not p.name.startswith("."))
    subfolders = sorted(p for p in source.iterdir() if p.is_dir() and _is_dicom_folder(p))
    if channels == 1:
        cases = [InputCase(strip_suffix(p), [p], image_suffix(p)) for p in files]
        cases += [InputCase(p.name, [p], ".nii.gz") for p in subfolders]
    else:
        groups: dict[str, list[Path]] = {}
        for p in files:
            stem = strip_suffix(p)
            case_id, _, index = stem.rpartition("_")
            if not (case_id and index.isdigit() and len(index) == 4):
                raise VesaliusError(
                    "a multi-channel model needs files named CASE_0000, CASE_0001, ...", p, "rename the files"
                )
            groups.setdefault(case_id, []).append(p)
        cases = []
        for case_id, group in sorted(groups.items()):
            if len(group) != channels:
                raise VesaliusError(
                    f"case '{case_id}' has {len(group)} channel files, the model needs {channels}",
                    group[0],
                    "give one file per channel",
                )
            cases.append(InputCase(case_id, sorted(group), image_suffix(group[0])))
    if not cases:
        raise VesaliusError("no images in the folder", source, f"supported files: {', '.join(IMAGE_SUFFIXES)}")
    return sorted(cases, key=lambda c: c.case_id)


def _read_case(case: InputCase) -> Image:
    images = [read_image(f) for f in case.files]
    if len(images) == 1:
        return images[0]
    first = images[0]
    for f, other in zip(case.files[1:], images[1:], strict=True):
        if other.spatial_shape != first.spatial_shape:
            raise VesaliusError("channel files of one case differ in shape", f, "resample them onto one grid")
    return first.with_array(np.concatenate([i.array for i in images], axis=0))


def _output_path(output: Path, case: InputCase, single: bool) -> Path:
    if single and image_suffix(output):
        return output
    return output / f"{case.case_id}{case.suffix}"


def _write_seg(labels: Image, case: InputCase, path: Path, names: dict[str, str]) -> None:
    """The label map of a DICOM series case as a DICOM-SEG of that series."""
    from vesalius.io.dicom import list_series
    from vesalius.io.dicom_seg import write_dicom_seg

    (series,) = list_series(case.files[0])  # read_image has read exactly one series from this folder
    write_dicom_seg(labels, series.files, path, {int(k): v for k, v in names.items()})


def _check_ensemble(models: list[TrainedModel]) -> None:
    first = models[0]
    for other in models[1:]:
        if other.config != first.config or other.plan["configurations"] != first.plan["configurations"]:
            raise VesaliusError(
                "the folds were trained with different plans", other.run_dir, "ensemble folds of one configuration"
            )


def _postprocessing(models: list[TrainedModel]) -> dict | None:
    """The post-processing every fold of the ensemble decided on (the same operations), else None."""
    applied = []
    for m in models:
        path = m.run_dir / "postprocessing.json"
        decision = json.loads(path.read_text()) if path.is_file() else None
        applied.append(
            decision
            and {k: decision[k] for k in ("keep_largest_component", "connectivity", "fill_holes") if decision.get(k)}
        )
    return applied[0] if applied[0] and all(a == applied[0] for a in applied) else None


def predict_files(
    source: str | Path,
    output: str | Path,
    model: str | Path,
    *,
    fast: bool = False,
    probabilities: bool = False,
    checkpoint: str = "final",
    device: str = "cpu",
    postprocess: bool = True,
    fill_holes: bool = False,
    precision: str = "auto",
    on_case: Callable[[InputCase], None] | None = None,
) -> list[Path]:
    """Predict every case in ``source`` into ``output``; returns the written label files (see the module docstring).

    ``fast``: no mirroring and a larger window step (:data:`FAST_STEP`); ``probabilities``: also write the class
    probabilities; ``postprocess``: apply the post-processing decided on the folds' validation cases;
    ``fill_holes``: then fill the holes of every class; ``precision``: ``auto`` (bf16 on CPUs that have it natively,
    see :mod:`vesalius.precision`), ``fp32``, ``bf16`` or ``fp16`` (CUDA). ``output`` is a file path when ``source``
    is one case and ``output`` has an image suffix, otherwise a folder (created).
    """
    models = [load_model(run, checkpoint, device) for run in find_runs(model)]
    _check_ensemble(models)
    first = models[0]
    cases = list_inputs(source, len(first.plan["channels"]))
    output = Path(output)
    single = len(cases) == 1
    postprocessing = (_postprocessing(models) if postprocess else None) or {}
    if fill_holes:
        postprocessing["fill_holes"] = sorted(int(k) for k in first.plan["labels"] if int(k) != 0)
    written = []
    for case in cases:
        start = time.perf_counter()
        image = _read_case(case)
        if image.num_channels != len(first.plan["channels"]):
            raise VesaliusError(
                f"the image has {image.num_channels} channels, the model needs {len(first.plan['channels'])}",
                case.files[0],
                "give the channels the model was trained with",
            )
        if image.ndim != first.plan["spatial_dims"]:
            raise VesaliusError(
                f"a {image.ndim}D image for a {first.plan['spatial_dims']}D model",
                case.files[0],
                "use a matching model",
            )
        result = predict_image(
            [m.network for m in models],
            image,
            first.plan,
            first.config,
            mirror_axes=() if fast else None,
            step=FAST_STEP if fast else 0.5,
            device=device,
            precision=precision,
            return_probabilities=probabilities,
        )
        labels, probs = result if isinstance(result, tuple) else (result, None)
        if postprocessing:
            from vesalius.inference.postprocess import apply_postprocessing

            labels = labels.with_array(apply_postprocessing(labels.array[0], postprocessing)[None])
        path = _output_path(output, case, single)
        written.append(write_image(labels, path))
        if case.files[0].is_dir():  # a DICOM series: also a DICOM-SEG that references it
            _write_seg(labels, case, path.parent / f"{case.case_id}_seg.dcm", first.plan["labels"])
        if probs is not None:
            write_image(probs, path.parent / f"{case.case_id}_probabilities.nii.gz")
        case.seconds = time.perf_counter() - start
        if on_case:
            on_case(case)
    return written
