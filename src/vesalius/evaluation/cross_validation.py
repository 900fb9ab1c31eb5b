"""Validate a trained fold: predict its validation cases on their original grids and score them.

The cases are read from the imported data set (not the preprocessed cache), predicted through the run's plan
(:func:`vesalius.inference.predict_image`: sliding window, mirroring as planned) and compared with their reference
labels on the original grid, so the Dice is the one a user gets. Writes ``validation/CASE.EXT`` (the predictions,
in the data set's format) and ``validation/summary.json`` (Dice per case and class, mean per class and overall),
and decides from these predictions which classes keep only their largest component
(:func:`decide_postprocessing`, saved as ``postprocessing.json`` in the run folder
and applied by ``vesalius predict``). The Dice figures in the summary are those before post-processing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vesalius.data.dataset import Dataset, write_json_atomic
from vesalius.evaluation.segmentation import dice_per_class
from vesalius.inference.model import load_model
from vesalius.inference.postprocess import Connectivity, keep_largest_component
from vesalius.inference.predict import predict_image
from vesalius.io import image_suffix, write_image
from vesalius.workspace import Workspace

__all__ = ["decide_postprocessing", "validate_fold"]


def validate_fold(
    run_dir: str | Path,
    workspace: str | Path | Workspace | None = None,
    *,
    checkpoint: str = "final",
    mirror: bool = True,
    device: str = "cpu",
) -> dict[str, Any]:
    """Predict and score the validation cases of the fold in ``run_dir``; returns the summary (also saved)."""
    ws = Workspace.resolve(workspace)
    trained = load_model(run_dir, checkpoint, device)
    run_dir = Path(run_dir)
    split = json.loads((run_dir / "training.json").read_text())["split"]
    dataset = Dataset.load(ws.dataset_dir(trained.training["dataset"]))
    labels = [int(k) for k in trained.plan["labels"] if int(k) != 0]
    names = {int(k): v for k, v in trained.plan["labels"].items()}
    out = run_dir / "validation"
    out.mkdir(exist_ok=True)
    cases: dict[str, dict[str, float]] = {}
    seconds = []

    def predicted() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Predict, save and score each case; yields (prediction, reference) for the post-processing decision."""
        for case_id in split["val"]:
            case = dataset.case(case_id)
            image, reference = dataset.read_case(case)
            start = time.perf_counter()
            prediction = predict_image(
                trained.network, image, trained.plan, trained.config, mirror_axes=None if mirror else (), device=device
            )
            seconds.append(time.perf_counter() - start)
            write_image(prediction, out / f"{case_id}{image_suffix(case.label or case.images[0]) or '.nii.gz'}")
            if reference is not None:
                scores = dice_per_class(prediction.array[0], reference.array[0], labels)
                cases[case_id] = {names[k]: v for k, v in scores.items()}
                yield prediction.array[0], reference.array[0]

    decision = decide_postprocessing(predicted(), labels)
    write_json_atomic(run_dir / "postprocessing.json", decision)
    per_class = {names[k]: float(np.mean([c[names[k]] for c in cases.values()])) for k in labels}
    summary = {
        "checkpoint": checkpoint,
        "mirroring": mirror,
        "threads": torch.get_num_threads(),
        "seconds_per_case": float(np.mean(seconds)),
        "dice_mean": float(np.mean(list(per_class.values()))),
        "dice": per_class,
        "cases": cases,
        "postprocessing": decision,
    }
    write_json_atomic(out / "summary.json", summary)
    return summary


def decide_postprocessing(
    pairs: Iterable[tuple[np.ndarray, np.ndarray]],
    classes: Sequence[int],
    *,
    min_gain: float = 0.0,
    connectivity: Connectivity = "full",
) -> dict[str, Any]:
    """Decide, class by class, whether keeping the largest component
    (:func:`~vesalius.inference.postprocess.keep_largest_component`) improves the validation predictions.

    ``pairs`` yields ``(prediction, reference)`` label maps of the same shape, one validation case each (in nnU-Net,
    the predictions of each fold's validation cases, so that every training case is scored once by a model that did
    not train on it). It may be a generator: cases are read one at a time, and only running sums of Dice are kept.

    For each class, the mean Dice over the cases (:func:`~vesalius.evaluation.segmentation.dice_per_class`; both
    empty = 1) is compared with and without the largest-component filter applied to that class alone. Since the
    filter only turns voxels of that class into background, applying it to every class at once gives the same
    per-class Dice, so each case is filtered once. The filter is enabled for a class when its mean Dice improves by
    more than ``min_gain`` (a tie keeps it off).

    Returns a JSON-ready dict, to be saved next to the model as ``postprocessing.json``::

        {"keep_largest_component": [enabled classes, in the order of ``classes``],
         "connectivity": connectivity,
         "dice_before": {"1": mean Dice, ...}, "dice_after": {"1": ..., ...},
         "cases": number of cases}

    The Dice keys are strings, so that the dict is unchanged by a JSON round trip.
    """
    classes = [int(label) for label in classes]
    before = dict.fromkeys(classes, 0.0)
    after = dict.fromkeys(classes, 0.0)
    cases = 0
    for prediction, reference in pairs:
        filtered = keep_largest_component(prediction, classes, connectivity)
        for label, dice in dice_per_class(prediction, reference, classes).items():
            before[label] += dice
        for label, dice in dice_per_class(filtered, reference, classes).items():
            after[label] += dice
        cases += 1
    if cases == 0:
        raise ValueError("no validation cases to decide the post-processing from")
    dice_before = {label: before[label] / cases for label in classes}
    dice_after = {label: after[label] / cases for label in classes}
    return {
        "keep_largest_component": [label for label in classes if dice_after[label] - dice_before[label] > min_gain],
        "connectivity": connectivity,
        "dice_before": {str(label): dice for label, dice in dice_before.items()},
        "dice_after": {str(label): dice for label, dice in dice_after.items()},
        "cases": cases,
    }
