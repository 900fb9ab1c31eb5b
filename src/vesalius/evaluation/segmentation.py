"""Score a folder of predicted label maps against a folder of reference label maps.

Files are paired by case id, the file name without its image suffix (``case_01.nii.gz`` -> ``case_01``), so the
two folders may use different formats. Every reference needs a prediction; predictions without a reference are
listed in the summary and otherwise ignored. Each pair must have the same shape and geometry (the prediction must
be on the reference's grid); the metrics use the reference's spacing (see :mod:`vesalius.metrics.segmentation`
for the definitions and the convention for empty masks).

Writes, atomically, into ``output_dir``:

- ``metrics.csv``: one row per case and label: ``case, label, name, <metrics>, volume_unit``; NaN as ``nan``.
- ``summary.json``: per label name and metric the ``mean``, ``median`` and ``std`` (population, ``ddof=0``) over
  the cases where the value is not NaN, with ``count`` (values used) and ``nan`` (values left out); statistics of
  no value are ``null``. ``mean_over_labels`` holds, per metric, the mean of the labels' means; ``num_cases``
  counts the cases.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from vesalius.errors import VesaliusError
from vesalius.io import IMAGE_SUFFIXES, Image, image_suffix, read_image, strip_suffix
from vesalius.io.atomic import write_bytes_atomic, write_json_atomic
from vesalius.metrics.segmentation import METRICS, SegmentationScores, segmentation_metrics, volume_unit
from vesalius.model_package import ModelPackage, is_model_package
from vesalius.outputs import check_output
from vesalius.workspace import Workspace

__all__ = ["evaluate_folder", "label_names"]


def label_names(source: str | Path, workspace: str | Path | Workspace | None = None) -> dict[int, str]:
    """The foreground labels ``{value: name}`` named by ``source``.

    ``source`` is a ``dataset.json`` (Vesalius, MSD or nnU-Net v2: ``{"1": "liver"}`` or ``{"liver": 1}``), a folder
    holding one (a data set), a trained model's run folder, or the name of a data set in the workspace.
    """
    path = Path(source)
    if not path.exists() and len(path.parts) == 1 and not path.suffix:  # a data set's name
        path = Workspace.resolve(workspace).dataset_dir(str(source))
    if is_model_package(path):
        return {value: name for value, name in sorted(ModelPackage(path).label_names.items()) if value != 0}
    if path.is_dir():
        path = path / "dataset.json"
    try:
        declared = json.loads(path.read_text())["labels"]
        if all(str(k).lstrip("-").isdigit() for k in declared):
            names = {int(k): str(v) for k, v in declared.items()}
        else:
            names = {int(v): str(k) for k, v in declared.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise VesaliusError(
            "no label names found (no readable dataset.json with 'labels', nor a trained model)",
            path,
            "give a dataset.json, a data set's name, or a training run folder",
        ) from None
    return {value: name for value, name in sorted(names.items()) if value != 0}


def evaluate_folder(
    pred_dir: str | Path,
    ref_dir: str | Path,
    labels: dict[int, str] | None = None,
    tolerance_mm: float = 1.0,
    output_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Score every reference label map in ``ref_dir`` against the prediction of the same case in ``pred_dir``.

    Args:
        pred_dir: folder of predicted label maps (any readable image format).
        ref_dir: folder of reference label maps.
        labels: ``{value: name}`` of the labels to score; by default every non-zero value found in the references,
            named by its value.
        tolerance_mm: tolerance of the normalised surface Dice, in mm.
        output_dir: where ``metrics.csv`` and ``summary.json`` go; ``pred_dir`` by default.

    Returns:
        The content of ``summary.json`` plus ``"cases"``: ``{case_id: {label_name: SegmentationScores}}``.

    Raises:
        VesaliusError: a missing or empty folder, a reference without a prediction, two files of one case, a label
            map with several channels, or a prediction whose shape or geometry differs from its reference.
    """
    if labels is not None and len(set(labels.values())) != len(labels):
        raise ValueError(f"label names must be unique, got {labels}")
    if not (math.isfinite(tolerance_mm) and tolerance_mm >= 0):
        raise VesaliusError(f"the tolerance must be 0 mm or more, not {tolerance_mm}", remedy="e.g. --tolerance-mm 1")
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    # the tables go next to the predictions by default (where the viewer finds them), never among the references
    output_dir = pred_dir if output_dir is None else check_output(output_dir, [ref_dir], kind="folder")
    references, predictions = _case_files(ref_dir), _case_files(pred_dir)
    if not references:
        raise VesaliusError(
            "no label maps found", ref_dir, f"put the reference label maps ({', '.join(IMAGE_SUFFIXES)}) in it"
        )
    missing = sorted(set(references) - set(predictions))
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise VesaliusError(
            f"no prediction for reference case(s) {shown}", pred_dir, f"predict them, or remove them from {ref_dir}"
        )
    if labels is None:
        found = set().union(*(np.unique(_read_label_map(path).array).tolist() for path in references.values()))
        labels = {int(v): str(int(v)) for v in sorted(found) if v != 0}
    cases: dict[str, dict[str, SegmentationScores]] = {}
    rows: list[dict[str, Any]] = []
    units: set[str] = set()
    for case_id, ref_path in references.items():
        reference = _read_label_map(ref_path)
        prediction = _read_label_map(predictions[case_id])
        _check_pair(prediction, reference, predictions[case_id], ref_path)
        scores = segmentation_metrics(
            prediction.array[0], reference.array[0], labels, reference.geometry.spacing, tolerance_mm
        )
        unit = volume_unit(reference.ndim)
        units.add(unit)
        cases[case_id] = {labels[k]: s for k, s in scores.items()}
        rows.extend(
            {"case": case_id, "label": k, "name": labels[k], **s, "volume_unit": unit} for k, s in scores.items()
        )
    metrics = {
        name: {metric: _statistics([c[name][metric] for c in cases.values()]) for metric in METRICS}
        for name in labels.values()
    }
    summary = {
        "pred_dir": str(pred_dir),
        "ref_dir": str(ref_dir),
        "tolerance_mm": tolerance_mm,
        "num_cases": len(cases),
        "labels": {str(k): name for k, name in labels.items()},
        "volume_unit": ", ".join(sorted(units)),
        "metrics": metrics,
        "mean_over_labels": {metric: _mean_of_means(metrics, metric) for metric in METRICS},
        "predictions_without_reference": sorted(set(predictions) - set(references)),
    }
    write_bytes_atomic(output_dir / "metrics.csv", _csv(rows))
    write_json_atomic(output_dir / "summary.json", summary)
    return {**summary, "cases": cases}


def _case_files(folder: Path) -> dict[str, Path]:
    """``{case_id: path}`` of the image files in ``folder``, in file name order."""
    if not folder.is_dir():
        raise VesaliusError("folder not found", folder, "check the path")
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_dir() and image_suffix(path):
            raise VesaliusError("a folder named like an image file", path, "replace it with the image file")
        if not path.is_file() or not image_suffix(path):
            continue
        case_id = strip_suffix(path)
        if case_id in files:
            raise VesaliusError(
                f"two files for case '{case_id}': {files[case_id].name} and {path.name}", folder, "keep one of them"
            )
        files[case_id] = path
    return files


def _read_label_map(path: Path) -> Image:
    """Read a single-channel label map of whole numbers (a float map of probabilities or with NaN is refused, not
    scored as Dice 0)."""
    image = read_image(path)
    if image.num_channels != 1:
        raise VesaliusError(
            f"a label map needs one channel, this image has {image.num_channels}",
            path,
            "save the labels as one channel",
        )
    array = image.array
    if array.dtype.kind == "f" and not (np.isfinite(array).all() and np.array_equal(array, np.round(array))):
        raise VesaliusError(
            "a label map must hold whole label values; this one holds NaN or fractions",
            path,
            "give the label map (argmax of the probabilities), not probabilities",
        )
    if array.size and array.min() < 0:
        raise VesaliusError(
            f"a label map holds labels 0 and up; this one holds {array.min():g}", path, "give the label map"
        )
    return image


def _check_pair(prediction: Image, reference: Image, pred_path: Path, ref_path: Path) -> None:
    """Raise unless the prediction lies on the reference's voxel grid."""
    if prediction.spatial_shape != reference.spatial_shape:
        problem = f"shape {prediction.spatial_shape} differs from the reference's {reference.spatial_shape}"
    elif differences := reference.geometry.differences(prediction.geometry):
        problem = f"geometry differs from the reference's ({'; '.join(differences)})"
    else:
        return
    raise VesaliusError(
        f"prediction {problem} ({ref_path})", pred_path, "resample the prediction to the reference grid"
    )


def _statistics(values: list[float]) -> dict[str, float | int | None]:
    """NaN-aware ``mean``, ``median``, ``std`` (ddof=0) of ``values``, with ``count`` used and ``nan`` left out."""
    array = np.asarray(values, dtype=float)
    kept = array[~np.isnan(array)]
    stats = (np.mean(kept), np.median(kept), np.std(kept)) if kept.size else (None, None, None)
    return {
        **{name: None if v is None else float(v) for name, v in zip(("mean", "median", "std"), stats, strict=True)},
        "count": int(kept.size),
        "nan": int(array.size - kept.size),
    }


def _mean_of_means(metrics: dict[str, dict[str, dict[str, Any]]], metric: str) -> float | None:
    """The mean over labels of the labels' means of ``metric`` (labels without a mean left out)."""
    means = [m[metric]["mean"] for m in metrics.values() if m[metric]["mean"] is not None]
    return float(np.mean(means)) if means else None


def _csv(rows: list[dict[str, Any]]) -> bytes:
    """The rows as CSV bytes, with a header."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=["case", "label", "name", *METRICS, "volume_unit"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue().encode("utf-8")
