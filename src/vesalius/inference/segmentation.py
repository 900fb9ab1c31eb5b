"""Segment images with a trained model, each result back on its input's own grid.

One image (:func:`predict_image`): :func:`vesalius.inference.image.segment_image` with the trained configuration's
preprocessing, the network predicting by sliding windows of the trained patch
(:mod:`vesalius.inference.sliding_window`, mirroring on the trained axes); the label map is on the input's grid.

Files (:func:`segment_files`, ``vesalius predict``): the inputs of :mod:`vesalius.inference.inputs`, with one fold
or an ensemble of folds (their softmax probabilities are averaged), written as :mod:`vesalius.inference.files`
says. The post-processing decided on the folds' validation cases is applied when all folds decided the same
(``postprocess=False`` leaves it out); ``fill_holes`` adds hole filling of every class.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vesalius.errors import VesaliusError
from vesalius.inference.cohort import Shard
from vesalius.inference.files import ModelInput, segment_cases
from vesalius.inference.image import segment_image
from vesalius.inference.inputs import InputCase
from vesalius.inference.model import LoadedModel, load_ensemble
from vesalius.inference.sliding_window import predict_probabilities
from vesalius.io import Image
from vesalius.model_package import TrainedSegmentation, find_packages
from vesalius.precision import autocast_dtype

__all__ = ["FAST_STEP", "agreed_postprocessing", "predict_image", "segment_files", "segmenter"]

#: Window step (fraction of the patch) without test-time augmentation (``--fast``).
FAST_STEP = 0.75


def predict_image(
    model: nn.Module | Sequence[nn.Module],
    image: Image,
    trained: TrainedSegmentation,
    *,
    mirror_axes: Sequence[int] | None = None,
    step: float = 0.5,
    batch_size: int | None = None,
    device: str | torch.device = "cpu",
    precision: str | None = None,
    return_probabilities: bool = False,
    roi: bool = True,
) -> Image | tuple[Image, Image]:
    """Segment ``image`` with ``model``, trained as ``trained`` says.

    Args:
        model: the network, on ``device``, or several (an ensemble of folds: their probabilities are averaged).
        image: ``(C, *spatial)`` with the trained channels, on its native grid.
        trained: the trained configuration: filters, spacing, normalisation, patch, mirror axes, batch and, for a 2D
            configuration of 3D data, the slice axis (the volume is then predicted slice by slice, slices batched).
            A CT is predicted only in the box around its tissue (:mod:`vesalius.inference.roi`) unless ``roi`` is
            false.
        mirror_axes: patch axes to mirror for test-time augmentation; ``None``: the trained ones; ``()``: none.
        step: window step as a fraction of the patch (0.5: windows overlap by half).
        batch_size: windows (or slices) per forward pass; ``None``: the training batch size.
        device: where the model runs.
        precision: ``"auto"`` (bf16 autocast on CPUs with native bf16 and on CUDA, else float32), ``"fp32"``,
            ``"bf16"`` or ``"fp16"`` (CUDA); ``None``: the precision the model was trained with
            (:mod:`vesalius.precision`).
        return_probabilities: also return the class probabilities.
        roi: skip the windows of a CT's air (:mod:`vesalius.inference.roi`); false: cover the whole image.

    Returns:
        The ``uint8`` label map ``(1, *spatial)`` with the geometry of ``image``; with ``return_probabilities``,
        ``(labels, probabilities)``, the probabilities a float32 ``(K, *spatial)`` image on the same grid
        (background 1 outside the region that preprocessing cropped to).
    """
    configuration = trained.configuration
    patch_size = configuration.patch_size
    models = [model] if isinstance(model, nn.Module) else list(model)
    dtype = autocast_dtype(precision or trained.precision, torch.device(device))
    slice_axis = configuration.slice_axis if len(patch_size) < image.ndim else None

    def probabilities_of(data: np.ndarray) -> np.ndarray:
        total = sum(
            predict_probabilities(
                m,
                data,
                patch_size,
                step=step,
                mirror_axes=configuration.mirror_axes if mirror_axes is None else tuple(mirror_axes),
                batch_size=batch_size or configuration.batch_size,
                device=device,
                autocast_dtype=dtype,
                slice_axis=slice_axis,
            )
            for m in models
        )
        return total.numpy() / len(models)

    labels, probabilities = segment_image(
        image,
        configuration.resampling_spacing,
        trained.normalization,
        probabilities_of,
        filters=trained.filters,
        return_probabilities=return_probabilities,
        window=patch_size if roi else None,
        slice_axis=slice_axis,
    )
    return (labels, probabilities) if probabilities is not None else labels


def agreed_postprocessing(models: Sequence[LoadedModel]) -> dict[str, Any] | None:
    """The post-processing every fold of the ensemble decided on (the same operations), else None."""
    applied = []
    for m in models:
        decision = m.package.postprocessing
        applied.append(
            decision
            and {k: decision[k] for k in ("keep_largest_component", "connectivity", "fill_holes") if decision.get(k)}
        )
    return applied[0] if applied[0] and all(a == applied[0] for a in applied) else None


def segment_files(
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
    precision: str | None = None,
    on_case: Callable[[InputCase], None] | None = None,
    shard: Shard | None = None,
) -> list[Path]:
    """Segment every case in ``source`` (of ``shard``, :mod:`vesalius.inference.cohort`) into ``output``; returns
    the written label files (see the module docstring).

    ``model``: a fold's run folder or a folder of folds. ``fast``: no mirroring and a larger window step
    (:data:`FAST_STEP`); ``probabilities``: also write the class probabilities; ``postprocess``: apply the
    post-processing decided on the folds' validation cases; ``fill_holes``: then fill the holes of every class;
    ``precision``: ``auto``, ``fp32``, ``bf16`` or ``fp16`` (CUDA), by default the training precision. ``output``
    is a file path when ``source`` is one case and ``output`` has an image suffix, otherwise a folder (created).
    """
    first = find_packages(model)[0]
    trained = first.trained
    if not isinstance(trained, TrainedSegmentation):
        raise VesaliusError("a classifier, not a segmentation model", first.root, "use 'vesalius predict'")
    models = load_ensemble(model, checkpoint, device)
    postprocessing = (agreed_postprocessing(models) if postprocess else None) or {}
    if fill_holes:
        postprocessing["fill_holes"] = trained.foreground_labels

    networks = [m.network for m in models]
    segment = segmenter(networks, trained, fast=fast, probabilities=probabilities, device=device, precision=precision)
    inputs = ModelInput(len(trained.channels), trained.spatial_dims, Path(model))
    options = {"fast": fast, "probabilities": probabilities, "checkpoint": checkpoint, "precision": precision}
    return segment_cases(
        source,
        output,
        inputs,
        segment,
        trained.labels,
        postprocessing=postprocessing,
        on_case=on_case,
        shard=shard,
        options=options,
    )


def segmenter(
    networks: Sequence[nn.Module],
    trained: TrainedSegmentation,
    *,
    fast: bool = False,
    probabilities: bool = False,
    device: str = "cpu",
    precision: str | None = None,
) -> Callable[[Image], tuple[Image, Image | None]]:
    """The function :func:`vesalius.inference.files.segment_cases` calls on each image: :func:`predict_image` with
    the options of ``vesalius predict`` (``fast``: no mirroring and :data:`FAST_STEP`), returning the label map and,
    with ``probabilities``, the probabilities (else ``None``)."""

    def segment(image: Image) -> tuple[Image, Image | None]:
        result = predict_image(
            networks,
            image,
            trained,
            mirror_axes=() if fast else None,
            step=FAST_STEP if fast else 0.5,
            device=device,
            precision=precision,
            return_probabilities=probabilities,
        )
        return result if isinstance(result, tuple) else (result, None)

    return segment
