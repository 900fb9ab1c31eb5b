"""``vesalius predict`` with a classifier: per-image class probabilities as a CSV, optionally Grad-CAM overlays.

Models: a classification run folder (``runs/NAME/NETWORK/fold_F``) or a folder holding several (``runs/NAME/NETWORK``:
every ``fold_*`` with a final checkpoint; their probabilities are averaged, a fold ensemble). With ``tta``
(test-time augmentation), each model's logits are averaged over every flip combination of the axes its training
mirrored (:func:`trained_mirror_axes`) before the probabilities are taken, as segmentation averages logits over
flips; off by default, because an exported package predicts without it. Inputs as for segmentation
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
from vesalius.inference.windows import tta_flips
from vesalius.io import write_image
from vesalius.model_package import TrainedClassification, find_packages
from vesalius.models.classifiers import gradcam_layer, to_probabilities
from vesalius.precision import autocast_dtype
from vesalius.preprocessing.classification import prepare_image

__all__ = [
    "classify_files",
    "gradcam_for",
    "predict_probabilities",
    "trained_mirror_axes",
    "write_explanation",
]


@torch.inference_mode()
def predict_probabilities(
    models: Sequence[LoadedModel],
    images: np.ndarray,
    batch_size: int = 32,
    device: str = "cpu",
    precision: str | None = None,
    mirror_axes: Sequence[int] = (),
) -> np.ndarray:
    """Probabilities ``(N, K)`` of prepared images ``(N, C, *input_size)``, averaged over ``models``.

    ``precision``: ``auto``, ``fp32``, ``bf16`` or ``fp16`` (CUDA); ``None``: the training precision.
    ``mirror_axes``: spatial axes (0-based) for test-time augmentation: each model's float32 logits are averaged over
    the ``2 ** len(mirror_axes)`` flips of the input (:func:`~vesalius.inference.windows.tta_flips`; a class does
    not move with the image, so nothing is flipped back), then turned into probabilities; ``()``: none.
    """
    if not models:
        raise VesaliusError("no models to predict with", remedy="give a run folder or a folder of folds")
    trained = _trained(models[0])
    expected = (len(trained.channels), *trained.input_size)
    if images.ndim != 2 + trained.spatial_dims or tuple(images.shape[1:]) != expected:
        raise VesaliusError(f"images of shape {tuple(images.shape)}, not (N, {', '.join(map(str, expected))})")
    if any(not 0 <= int(a) < trained.spatial_dims for a in mirror_axes):
        raise VesaliusError(
            f"mirror axes {tuple(mirror_axes)} out of range for {trained.spatial_dims}D images",
            remedy=f"use spatial axes 0-{trained.spatial_dims - 1}",
        )
    flips = [tuple(2 + a for a in axes) for axes in tta_flips(mirror_axes)]
    dtype = autocast_dtype(precision or trained.precision, torch.device(device))
    total = np.zeros((len(images), len(trained.labels)), dtype=np.float64)
    for m in models:
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(images[start : start + batch_size].astype(np.float32, copy=False)).to(device)
            with torch.autocast(torch.device(device).type, dtype=dtype or torch.float32, enabled=dtype is not None):
                logits = torch.stack([m.network(torch.flip(x, dims) if dims else x).float() for dims in flips])
            probabilities = to_probabilities(logits.mean(0), trained.target_type)
            total[start : start + len(x)] += probabilities.cpu().numpy()
    return (total / len(models)).astype(np.float32)


def trained_mirror_axes(model: LoadedModel) -> tuple[int, ...]:
    """The spatial axes the run mirrored in training augmentation (the plan's augmentation with the run's
    overrides): the flips test-time augmentation may average over, since the network learned them as the same
    case. ``()`` where the run did not mirror."""
    from vesalius.augmentation.transforms import AugmentationConfig

    trained = _trained(model)
    plan = model.package.plan
    config = AugmentationConfig.from_dict(
        {**getattr(plan, "augmentation", {}), **(model.package.settings.get("augmentation") or {})}
    )
    if config.p_mirror <= 0:
        return ()
    axes = range(trained.spatial_dims) if config.mirror_axes is None else config.mirror_axes
    return tuple(int(a) for a in axes)


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
    tta: bool = False,
    device: str = "cpu",
    precision: str | None = None,
    on_case: Callable[[InputCase], None] | None = None,
    shard: Shard | None = None,
) -> Path:
    """Classify every image in ``source`` (of ``shard``, :mod:`vesalius.inference.cohort`) with the classifier
    (or fold ensemble) ``model``; returns the predictions
    CSV (see the module docstring). ``tta``: average over the flips of the axes the first model's training
    mirrored (:func:`trained_mirror_axes`; Grad-CAM stays on the unflipped image). ``precision``: ``auto``,
    ``fp32``, ``bf16`` or ``fp16``; by default the training precision."""
    first = find_packages(model)[0]
    trained = first.trained
    if not isinstance(trained, TrainedClassification):
        raise VesaliusError("a segmentation model, not a classifier", first.root, "use 'vesalius predict'")
    models = load_ensemble(model, checkpoint, device)
    names = trained.class_names
    mirror_axes = trained_mirror_axes(models[0]) if tta else ()
    cams = [(m, gradcam_for(m)) for m in models] if explain else []

    def classify(image: Any, case: InputCase, folder: Path) -> np.ndarray:
        prepared = prepare_image(image.array, trained.normalization, trained.input_size)[None]
        probabilities = predict_probabilities(
            models, prepared, device=device, precision=precision, mirror_axes=mirror_axes
        )[0]
        if explain:
            write_explanation(cams, prepared, image, probabilities, folder / "gradcam", case.case_id, names, device)
        return probabilities

    inputs = ModelInput(len(trained.channels), trained.spatial_dims, Path(model))
    # ``tta`` joins the manifest's options only when on, so outputs predicted before it existed stay valid
    options = {"checkpoint": checkpoint, "precision": precision, **({"tta": True} if tta else {})}
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
