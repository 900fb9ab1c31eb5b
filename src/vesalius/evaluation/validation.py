"""Validate a trained model: predict its fold's validation cases as a user would and score them.

Segmentation (:func:`validate_fold`): the cases are read from the imported data set (not the preprocessed cache),
predicted with the trained configuration (:func:`vesalius.inference.segmentation.predict_image`: sliding window,
the trained patch, mirror axes and precision) and compared with their reference labels on the original grid, so the
Dice is the one a user gets. Writes the predictions (in the data set's format) and ``summary.json`` (Dice per case
and class, mean per class and overall) into the package's validation folder, and decides from these predictions
which classes keep only their largest component (:func:`decide_postprocessing`, saved in the package and applied
by ``vesalius predict``). The Dice figures in the summary are those before post-processing.

Classification (:func:`validate_classifier`): the validation cases' probabilities (``predictions.csv``), their
metrics (``summary.json``, :func:`vesalius.evaluation.classification.score_classification`) and Grad-CAM overlays
of the most and least confident ones.

:func:`validate_run` picks the one for the package's task.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vesalius.data.dataset import Dataset
from vesalius.data.targets import encode_targets
from vesalius.errors import VesaliusError
from vesalius.evaluation.classification import score_classification
from vesalius.inference.model import load_model
from vesalius.inference.postprocess import Connectivity, keep_largest_component
from vesalius.inference.segmentation import predict_image
from vesalius.io import image_suffix, write_image
from vesalius.io.atomic import write_json_atomic
from vesalius.metrics.segmentation import dice_per_class
from vesalius.model_package import ModelPackage, TrainedClassification, TrainedSegmentation
from vesalius.workspace import Workspace

__all__ = ["decide_postprocessing", "validate_classifier", "validate_fold", "validate_run"]


def validate_run(
    run_dir: str | Path | ModelPackage,
    workspace: str | Path | Workspace | None = None,
    *,
    checkpoint: str = "final",
    device: str = "cpu",
    precision: str | None = None,
) -> dict[str, Any] | None:
    """Validate the trained model in ``run_dir`` (either task); returns the summary, ``None`` without validation
    cases. ``precision``: by default the training precision."""
    package = run_dir if isinstance(run_dir, ModelPackage) else ModelPackage(run_dir)
    if not package.split["val"]:
        return None
    validate = validate_classifier if package.task == "classification" else validate_fold
    return validate(package, workspace, checkpoint=checkpoint, device=device, precision=precision)


def validate_fold(
    run_dir: str | Path | ModelPackage,
    workspace: str | Path | Workspace | None = None,
    *,
    checkpoint: str = "final",
    mirror: bool = True,
    device: str = "cpu",
    precision: str | None = None,
) -> dict[str, Any]:
    """Predict and score the validation cases of the segmentation fold in ``run_dir``; returns the summary (also
    saved). ``precision``: by default the precision the model was trained with."""
    ws = Workspace.resolve(workspace)
    package = run_dir if isinstance(run_dir, ModelPackage) else ModelPackage(run_dir)
    model = load_model(package, checkpoint, device)
    trained = model.trained
    if not isinstance(trained, TrainedSegmentation):
        raise VesaliusError("not a segmentation model", package.root, "validate it with validate_classifier")
    dataset = Dataset.load(ws.dataset_dir(trained.dataset))
    labels = trained.foreground_labels
    names = dict(trained.labels)
    out = package.validation_dir
    out.mkdir(exist_ok=True)
    cases: dict[str, dict[str, float]] = {}
    seconds = []

    def predicted() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Predict, save and score each case; yields (prediction, reference) for the post-processing decision."""
        for case_id in package.split["val"]:
            case = dataset.case(case_id)
            image, reference = dataset.read_case(case)
            start = time.perf_counter()
            prediction = predict_image(
                model.network,
                image,
                trained,
                mirror_axes=None if mirror else (),
                device=device,
                precision=precision,
            )
            seconds.append(time.perf_counter() - start)
            write_image(prediction, out / f"{case_id}{image_suffix(case.label or case.images[0]) or '.nii.gz'}")
            if reference is not None:
                scores = dice_per_class(prediction.array[0], reference.array[0], labels)
                cases[case_id] = {names[k]: v for k, v in scores.items()}
                yield prediction.array[0], reference.array[0]

    decision = decide_postprocessing(predicted(), labels)
    package.write_postprocessing(decision)
    per_class = {names[k]: float(np.mean([c[names[k]] for c in cases.values()])) for k in labels}
    summary = {
        "checkpoint": checkpoint,
        "mirroring": mirror,
        "precision": precision or trained.precision,
        "threads": torch.get_num_threads(),
        "seconds_per_case": float(np.mean(seconds)),
        "dice_mean": float(np.mean(list(per_class.values()))),
        "dice": per_class,
        "cases": cases,
        "postprocessing": decision,
    }
    write_json_atomic(package.validation_summary_path, summary)
    return summary


def validate_classifier(
    run_dir: str | Path | ModelPackage,
    workspace: str | Path | Workspace | None = None,
    *,
    checkpoint: str = "final",
    device: str = "cpu",
    precision: str | None = None,
    bootstrap: int = 1000,
    gradcam: int = 12,
) -> dict[str, Any] | None:
    """Predict a classification run's validation cases and score them: ``validation/predictions.csv`` and
    ``validation/summary.json`` in the run folder; Grad-CAM overlays of up to ``gradcam`` of them in
    ``validation/gradcam/`` (the most and the least confident predictions, half each: the report's gallery).
    ``None`` when the run has no validation cases."""
    from vesalius.inference.classification import gradcam_for, predict_probabilities, write_explanation
    from vesalius.inference.files import write_predictions_csv
    from vesalius.preprocessing.classification import prepare_images

    package = run_dir if isinstance(run_dir, ModelPackage) else ModelPackage(run_dir)
    val = package.split["val"]
    if not val:
        return None
    model = load_model(package, checkpoint, device)
    trained = model.trained
    if not isinstance(trained, TrainedClassification):
        raise VesaliusError("not a classifier", package.root, "validate it with validate_fold")
    names = trained.class_names
    dataset = Dataset.load(Workspace.resolve(workspace).dataset_dir(trained.dataset))
    images = prepare_images(
        [dataset.read_case(dataset.case(c))[0].array for c in val], trained.normalization, trained.input_size
    )
    probabilities = predict_probabilities([model], images, device=device, precision=precision)
    write_predictions_csv(package.validation_predictions_csv, val, probabilities, names, trained.target_type)
    summary = score_classification(
        encode_targets(dataset, val),
        probabilities,
        trained.target_type,
        names,
        bootstrap=bootstrap,
        seed=int(package.settings["seed"]),
    )
    write_json_atomic(package.validation_summary_path, summary)
    if gradcam > 0:
        confidence = np.argsort(-probabilities.max(axis=1), kind="stable")
        chosen = sorted(set(confidence[: (gradcam + 1) // 2]) | set(confidence[::-1][: gradcam // 2]))
        cams = [(model, gradcam_for(model))]
        for i in chosen:
            image = dataset.read_case(dataset.case(val[i]))[0]
            write_explanation(
                cams,
                images[i : i + 1],
                image,
                probabilities[i],
                package.validation_gradcam_dir,
                val[i],
                names,
                device,
            )
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

    For each class, the mean Dice over the cases (:func:`~vesalius.metrics.segmentation.dice_per_class`; both
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
