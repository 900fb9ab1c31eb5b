"""``vesalius predict`` with a classifier: per-image class probabilities as a CSV, optionally Grad-CAM overlays.

Models: a classification run folder (``runs/NAME/NETWORK/fold_F``) or a folder holding several (``runs/NAME/NETWORK``:
every ``fold_*`` with a final checkpoint; their probabilities are averaged). Inputs as for segmentation
(:func:`vesalius.inference.inputs.list_inputs`):
an image file, a DICOM series folder, or a folder of images (``CASE_0000``, ``CASE_0001``, ... for several channels).

The CSV (``predictions.csv`` in the output folder, or the output path itself when it ends in ``.csv``) has one row
per image: ``case_id``, ``file``, ``predicted`` (the class name; multi-label: the names of the labels with
probability >= 0.5 joined by ``;``) and ``p_NAME`` per class (or label). With ``explain``, Grad-CAM overlays of
the predicted class (multi-label and ordinal: the most confident output) are written next to it in ``gradcam/``:
``CASE.png`` (2D; 3D: the three slices through the map's peak) and, for 3D images, ``CASE_gradcam.nii.gz`` (the
map on the image's own grid).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vesalius.errors import VesaliusError
from vesalius.inference.cohort import Shard
from vesalius.inference.files import ModelInput, classify_cases
from vesalius.inference.inputs import InputCase
from vesalius.inference.model import LoadedModel, load_ensemble
from vesalius.io import write_image
from vesalius.model_package import TrainedClassification, find_packages
from vesalius.models.classifiers import gradcam_layer, to_probabilities
from vesalius.precision import autocast_dtype
from vesalius.preprocessing.classification import prepare_image

__all__ = [
    "classify_files",
    "gradcam_for",
    "predict_probabilities",
    "write_explanation",
]


@torch.inference_mode()
def predict_probabilities(
    models: Sequence[LoadedModel],
    images: np.ndarray,
    batch_size: int = 32,
    device: str = "cpu",
    precision: str | None = None,
) -> np.ndarray:
    """Probabilities ``(N, K)`` of prepared images ``(N, C, *input_size)``, averaged over ``models``.

    ``precision``: ``auto``, ``fp32``, ``bf16`` or ``fp16`` (CUDA); ``None``: the training precision.
    """
    trained = _trained(models[0])
    dtype = autocast_dtype(precision or trained.precision, torch.device(device))
    total = np.zeros((len(images), len(trained.labels)), dtype=np.float64)
    for m in models:
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(images[start : start + batch_size].astype(np.float32, copy=False)).to(device)
            with torch.autocast(torch.device(device).type, dtype=dtype or torch.float32, enabled=dtype is not None):
                logits = m.network(x)
            total[start : start + len(x)] += to_probabilities(logits.float(), trained.target_type).cpu().numpy()
    return (total / len(models)).astype(np.float32)


def _trained(model: LoadedModel) -> TrainedClassification:
    trained = model.trained
    if not isinstance(trained, TrainedClassification):
        raise VesaliusError("a segmentation model, not a classifier", model.package.root, "use 'vesalius predict'")
    return trained


def classify_files(
    source: str | Path,
    output: str | Path,
    model: str | Path,
    *,
    checkpoint: str = "final",
    explain: bool = False,
    device: str = "cpu",
    precision: str | None = None,
    on_case: Callable[[InputCase], None] | None = None,
    shard: Shard | None = None,
) -> Path:
    """Classify every image in ``source`` (of ``shard``, :mod:`vesalius.inference.cohort`) with the classifier
    (or fold ensemble) ``model``; returns the predictions
    CSV (see the module docstring). ``precision``: ``auto``, ``fp32``, ``bf16`` or ``fp16``; by default the training
    precision."""
    first = find_packages(model)[0]
    trained = first.trained
    if not isinstance(trained, TrainedClassification):
        raise VesaliusError("a segmentation model, not a classifier", first.root, "use 'vesalius predict'")
    models = load_ensemble(model, checkpoint, device)
    names = trained.class_names
    cams = [(m, gradcam_for(m)) for m in models] if explain else []

    def classify(image: Any, case: InputCase, folder: Path) -> np.ndarray:
        prepared = prepare_image(image.array, trained.normalization, trained.input_size)[None]
        probabilities = predict_probabilities(models, prepared, device=device, precision=precision)[0]
        if explain:
            write_explanation(cams, prepared, image, probabilities, folder / "gradcam", case.case_id, names, device)
        return probabilities

    inputs = ModelInput(len(trained.channels), trained.spatial_dims, Path(model))
    options = {"checkpoint": checkpoint, "precision": precision}
    return classify_cases(
        source, output, inputs, classify, names, trained.target_type, on_case=on_case, shard=shard, options=options
    )


def gradcam_for(model: LoadedModel) -> Any:
    """MONAI's ``GradCAM`` on the layer of ``model`` that :func:`~vesalius.models.classifiers.gradcam_layer` picks."""
    from vesalius.inference.gradcam import make_gradcam

    trained = _trained(model)
    shape = (len(trained.channels), *trained.input_size)
    return make_gradcam(model.network, gradcam_layer(model.network, trained.network.name, shape))


def write_explanation(
    cams: list[tuple[LoadedModel, Any]],
    prepared: np.ndarray,
    image: Any,
    probabilities: np.ndarray,
    folder: Path,
    case_id: str,
    names: list[str],
    device: str,
) -> None:
    """Grad-CAM of the predicted class, averaged over the ensemble, as an overlay (and a NIfTI map for 3D)."""
    from vesalius.inference.gradcam import gradcam_map, write_overlay

    target_type = _trained(cams[0][0]).target_type
    predicted = int(np.argmax(probabilities))
    # ordinal: the cumulative logit P(y > k) that the predicted grade passed last
    output = max(0, predicted - 1) if target_type == "ordinal" else predicted
    x = torch.from_numpy(prepared.astype(np.float32)).to(device)
    heat = np.mean([gradcam_map(cam, x, output) for _, cam in cams], axis=0)
    title = f"{case_id}: {names[predicted]} ({probabilities[predicted]:.2f})"
    write_overlay(prepared[0].astype(np.float32), heat, folder / f"{case_id}.png", title)
    if heat.ndim == 3:
        native = F.interpolate(
            torch.from_numpy(heat)[None, None], size=image.spatial_shape, mode="trilinear", align_corners=False
        )[0].numpy()
        write_image(image.with_array(native.astype(np.float32)), folder / f"{case_id}_gradcam.nii.gz")
