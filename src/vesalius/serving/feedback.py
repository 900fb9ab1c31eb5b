"""Feedback on served predictions: the corrected label map (or class) a reader sends back for a job.

Scored when it arrives, so the record outlives the job's files (retention deletes them): segmentation, the Dice of
every foreground class between the served label map and the correction, and of the shadow (staging) prediction
when the request was shadowed; classification, whether the served (and shadow) class was the right one.
``vesalius monitor report`` (:mod:`.report`) sums these records up per model version over time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from vesalius.errors import VesaliusError
from vesalius.io import read_image
from vesalius.metrics.segmentation import dice_per_class
from vesalius.serving.jobs import Job
from vesalius.serving.uploads import Upload

__all__ = ["FeedbackError", "classification_feedback", "segmentation_feedback"]


class FeedbackError(Exception):
    """Feedback that cannot be used: ``status`` and a one-line ``message`` for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _dice(served: np.ndarray, corrected: np.ndarray, labels: dict[str, str]) -> dict[str, float | None]:
    scores = dice_per_class(served, corrected, [int(k) for k in labels if int(k)])
    return {labels[str(k)]: (None if np.isnan(v) else float(v)) for k, v in scores.items()}


def _mean(scores: dict[str, float | None]) -> float | None:
    values = [v for v in scores.values() if v is not None]
    return float(np.mean(values)) if values else None


def segmentation_feedback(job: Job, folder: Path, upload: Upload) -> dict[str, Any]:
    """Score the served (and shadow) label maps of ``job`` against the corrected label map ``upload``."""
    result = job.result or {}
    labels: dict[str, str] = result.get("labels", {})
    try:
        corrected = read_image(upload.path)
        served = read_image(folder / "result" / result["files"]["labels"])
    except VesaliusError as e:
        raise FeedbackError(422, f"not a readable label map: {e.problem}") from None
    if corrected.array.shape != served.array.shape:
        raise FeedbackError(
            422,
            f"the correction's shape {corrected.array.shape} is not the prediction's {served.array.shape}: send a "
            "label map on the input's grid",
        )
    array = corrected.array[0]
    if not np.array_equal(array, np.round(array)) or not set(np.unique(array).astype(int)) <= {int(k) for k in labels}:
        raise FeedbackError(
            422, f"the correction holds values other than the model's labels {sorted(map(int, labels))}"
        )
    array = array.astype(np.int64)
    dice = _dice(served.array[0].astype(np.int64), array, labels)
    record: dict[str, Any] = {"kind": "label_map", "dice": dice, "mean_dice": _mean(dice)}
    shadow_file = folder / "shadow" / "labels.nii.gz"
    if job.shadow and shadow_file.is_file():
        shadow_dice = _dice(read_image(shadow_file).array[0].astype(np.int64), array, labels)
        record["shadow"] = {"version": job.shadow["version"], "dice": shadow_dice, "mean_dice": _mean(shadow_dice)}
    return record


def classification_feedback(job: Job, body: bytes) -> dict[str, Any]:
    """Check a classifier's served class against ``{"label": NAME}`` (the JSON ``body``)."""
    result = job.result or {}
    names = list(result.get("probabilities", {}))
    try:
        label = json.loads(body)["label"]
    except (ValueError, KeyError, TypeError):
        raise FeedbackError(422, 'send JSON {"label": NAME} with one of the model\'s classes') from None
    if label not in names:
        raise FeedbackError(422, f"unknown class {str(label)[:40]!r}; the model's classes: {', '.join(names)}")
    return {"kind": "class", "label": label, "correct": result.get("predicted") == label}
