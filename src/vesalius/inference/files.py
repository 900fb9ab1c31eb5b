"""The loop over the cases of ``vesalius predict``, whatever runs the network.

The torch path (:mod:`vesalius.inference.segmentation`, :mod:`vesalius.inference.classification`) and the
torch-free runtime of exported packages (:mod:`vesalius.runtime`) differ only in how one image becomes a label map
or class probabilities; reading the inputs, checking them against the model, post-processing and writing the
results are here, once, and need only NumPy and SimpleITK (no torch).

Segmentation: each case's label map is written in the input's format and on its grid, named after the case (for a
DICOM series a NIfTI file and a DICOM-SEG, ``CASE_seg.dcm``, referencing the series); optionally the probabilities
(``CASE_probabilities.nii.gz``, one channel per class). Classification: one predictions CSV (see
:func:`write_predictions_csv`).
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vesalius.errors import VesaliusError
from vesalius.inference.cohort import Manifest, Shard, input_sha256, model_key
from vesalius.inference.inputs import InputCase, check_finite, list_inputs, output_path, read_case
from vesalius.io import Image, image_suffix, write_image
from vesalius.io.atomic import write_bytes_atomic
from vesalius.outputs import check_output

__all__ = ["ModelInput", "classify_cases", "predicted_name", "segment_cases", "write_predictions_csv"]

#: One case's label map ``(1, *spatial)`` and, when asked for, its probabilities ``(K, *spatial)``.
Segmenter = Callable[[Image], tuple[Image, Image | None]]


@dataclass(frozen=True)
class ModelInput:
    """What a model takes: ``channels`` images of ``spatial_dims`` dimensions; ``model`` names it in errors."""

    channels: int
    spatial_dims: int
    model: Path

    def read(self, case: InputCase) -> Image:
        """The case's image, refused in one line when it holds NaN or does not fit the model."""
        image = read_case(case)
        check_finite(image, case)
        self.check(image, case.files[0])
        return image

    def check(self, image: Image, source: str | Path, names: Sequence[str] = ()) -> None:
        """Refuse (naming ``source``) an image whose channels or dimensions are not the model's; ``names``: the
        model's channel names, for the message."""
        if image.num_channels != self.channels or image.ndim != self.spatial_dims:
            named = f" ({', '.join(names)})" if names else ""
            raise VesaliusError(
                f"a {image.ndim}D image with {image.num_channels} channel(s); the model takes {self.spatial_dims}D "
                f"images with {self.channels} channel(s){named}",
                source,
                "give images like those the model was trained on",
            )


def segment_cases(
    source: str | Path,
    output: str | Path,
    model: ModelInput,
    segment: Segmenter,
    labels: dict[int, str],
    *,
    postprocessing: dict[str, Any] | None = None,
    on_case: Callable[[InputCase], None] | None = None,
    shard: Shard | None = None,
    options: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Segment every case in ``source`` (of ``shard``) into ``output`` with ``segment``; returns the label files
    of the shard's cases, those predicted by an earlier run included.

    ``output`` is a file path when ``source`` is one case and ``output`` has an image suffix, otherwise a folder
    (created); it may not overwrite the inputs or the model. ``postprocessing``: a decision as in
    ``postprocessing.json`` (:func:`vesalius.inference.postprocess.apply_postprocessing`). A folder output gets a
    manifest (:mod:`vesalius.inference.cohort`): cases finished by an earlier run of the same model, ``options``
    (those that change the result) and inputs are skipped.
    """
    cases = _cases(source, model, shard)
    single = len(cases) == 1 and shard is None
    kind = "file" if single and image_suffix(Path(output)) else "folder"
    output = check_output(output, [source, model.model], kind=kind)
    manifest = None if kind == "file" else _manifest(output, model, options, postprocessing)
    written = []
    for case in cases:
        start = time.perf_counter()
        path = output_path(output, case, single)
        digest = input_sha256(case) if manifest else ""
        if manifest and manifest.done(case.case_id, digest, output):
            written.append(path)
            case.skipped = True
            if on_case:
                on_case(case)
            continue
        label_map, probabilities = segment(model.read(case))
        if postprocessing:
            from vesalius.inference.postprocess import apply_postprocessing

            label_map = label_map.with_array(apply_postprocessing(label_map.array[0], postprocessing)[None])
        outputs = [path]
        if case.is_dicom_series:  # also a DICOM-SEG that references the series (first: it may be refused)
            outputs.append(_write_seg(label_map, case, path.parent / f"{case.case_id}_seg.dcm", labels))
        written.append(write_image(label_map, path))
        if probabilities is not None:
            outputs.append(write_image(probabilities, path.parent / f"{case.case_id}_probabilities.nii.gz"))
        case.seconds = time.perf_counter() - start
        if manifest:
            manifest.record(case.case_id, digest, [p.name for p in outputs], case.seconds)
        if on_case:
            on_case(case)
    return written


def _write_seg(labels: Image, case: InputCase, path: Path, names: dict[int, str]) -> Path:
    """The label map of a DICOM series case as a DICOM-SEG of that series; returns ``path``."""
    from vesalius.io.dicom import list_series
    from vesalius.io.dicom_seg import write_dicom_seg

    (series,) = list_series(case.files[0])  # read_image has read exactly one series from this folder
    return write_dicom_seg(labels, series.files, path, names)


def _cases(source: str | Path, model: ModelInput, shard: Shard | None) -> list[InputCase]:
    """The inputs of ``source``, those of ``shard`` only when given; an empty shard is refused."""
    cases = list_inputs(source, model.channels)
    if shard is None:
        return cases
    chosen = shard.select(cases)
    if not chosen:
        raise VesaliusError(
            f"shard {shard} holds no case: the input has {len(cases)}", source, "use at most as many shards as cases"
        )
    return chosen


def _manifest(
    folder: Path, model: ModelInput, options: Mapping[str, Any] | None, postprocessing: Any = None
) -> Manifest:
    """The output folder's manifest, for the model's key (its files and the options that change the result)."""
    settings = {**(options or {}), "postprocessing": postprocessing}
    return Manifest(folder, model_key(model.model, settings))


def classify_cases(
    source: str | Path,
    output: str | Path,
    model: ModelInput,
    classify: Callable[[Image, InputCase, Path], np.ndarray],
    names: list[str],
    target_type: str,
    *,
    on_case: Callable[[InputCase], None] | None = None,
    shard: Shard | None = None,
    options: Mapping[str, Any] | None = None,
) -> Path:
    """Classify every image in ``source`` (of ``shard``); returns the predictions CSV.

    ``classify(image, case, folder)`` returns the case's probabilities ``(K,)``; ``folder`` is where the CSV goes
    (for explanations written next to it). ``output``: the CSV path (ending in ``.csv``) or a folder that gets
    ``predictions.csv`` (a shard's: ``predictions-shard-I-of-N.csv``) and a manifest, whose finished cases (same
    model, ``options`` and input) are not classified again: their probabilities come from it.
    """
    cases = _cases(source, model, shard)
    output = Path(output)
    as_file = output.suffix.lower() == ".csv"
    suffixes = (".csv",) if as_file else ()
    check_output(output, [source, model.model], kind="file" if as_file else "folder", suffixes=suffixes)
    name = "predictions.csv" if shard is None else f"predictions-shard-{shard.index}-of-{shard.count}.csv"
    csv_path = output if as_file else output / name
    manifest = None if as_file else _manifest(output, model, options)
    rows = []
    for case in cases:
        start = time.perf_counter()
        digest = input_sha256(case) if manifest else ""
        entry = manifest.done(case.case_id, digest, output) if manifest else None
        if entry is not None and "probabilities" in entry:
            rows.append(np.asarray(entry["probabilities"], dtype=np.float64))
            case.skipped = True
        else:
            rows.append(classify(model.read(case), case, csv_path.parent))
            case.seconds = time.perf_counter() - start
            if manifest:
                manifest.record(case.case_id, digest, [], case.seconds, probabilities=[float(p) for p in rows[-1]])
        if on_case:
            on_case(case)
    ids, files = [c.case_id for c in cases], [str(c.files[0]) for c in cases]
    return write_predictions_csv(csv_path, ids, np.asarray(rows), names, target_type, files)


def predicted_name(probabilities: np.ndarray, names: list[str], target_type: str) -> str:
    """The predicted class's name; multi-label: the names of the labels with probability >= 0.5 joined by ``;``."""
    if target_type == "multilabel":
        return ";".join(n for n, p in zip(names, probabilities, strict=True) if p >= 0.5)
    return names[int(np.argmax(probabilities))]


def write_predictions_csv(
    path: Path,
    case_ids: Sequence[str],
    probabilities: np.ndarray,
    names: list[str],
    target_type: str,
    files: Sequence[str] | None = None,
) -> Path:
    """The predictions CSV, written atomically: one row per image with ``case_id``, ``file``, ``predicted``
    (:func:`predicted_name`) and ``p_NAME`` per class (or label)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["case_id", "file", "predicted", *(f"p_{n}" for n in names)])
    for i, case_id in enumerate(case_ids):
        row = probabilities[i]
        file = files[i] if files is not None else ""
        writer.writerow([case_id, file, predicted_name(row, names, target_type), *(f"{p:.6f}" for p in row)])
    write_bytes_atomic(path, buffer.getvalue().encode("utf-8"))
    return path
