"""Predict one case with a trained network and put the result back on the case's own grid.

The image goes through the plan's preprocessing (crop to the non-zero region, resample to the configuration's
spacing, normalise), is predicted by sliding windows (:mod:`vesalius.inference.sliding_window`), and the label map
(argmax of the probabilities) is mapped back by the exact inverse of the preprocessing, so it has the input's
shape, spacing, origin and direction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from vesalius.inference.sliding_window import predict_probabilities
from vesalius.io import Image
from vesalius.precision import autocast_dtype
from vesalius.preprocessing.pipeline import preprocess_image, restore_to_original


def predict_image(
    model: nn.Module | Sequence[nn.Module],
    image: Image,
    plan: dict[str, Any],
    config: str,
    *,
    mirror_axes: Sequence[int] | None = None,
    step: float = 0.5,
    batch_size: int | None = None,
    device: str | torch.device = "cpu",
    precision: str = "auto",
    return_probabilities: bool = False,
) -> Image | tuple[Image, Image]:
    """Segment ``image`` with ``model`` trained on plan configuration ``config``.

    Args:
        model: the network of that configuration, on ``device``, or several (an ensemble of folds: their
            probabilities are averaged) (see
            :func:`~vesalius.inference.sliding_window.predict_probabilities`).
        image: ``(C, *spatial)`` with the plan's channels, on its native grid.
        plan: the plan (see :mod:`vesalius.planning.planner`); ``plan["configurations"][config]`` gives
            ``patch_size`` and optionally ``mirror_axes``, ``batch_size`` and, for a 2D configuration of 3D data,
            ``slice_axis`` (the volume is then predicted slice by slice across that axis, slices batched).
        config: the configuration key (``"2d"``, ``"3d"``).
        mirror_axes: axes of the patch to mirror for test-time augmentation; ``None`` takes the configuration's
            ``mirror_axes`` (none when it has none), ``()`` turns mirroring off.
        step: window step as a fraction of the patch (0.5: windows overlap by half).
        batch_size: windows (or slices) per forward pass; ``None`` takes the configuration's training batch size.
        device: where the model runs.
        precision: ``"auto"`` (bf16 autocast on CPUs with native bf16 and on CUDA, else float32), ``"fp32"``,
            ``"bf16"`` or ``"fp16"`` (CUDA); see :mod:`vesalius.precision`.
        return_probabilities: also return the class probabilities.

    Returns:
        The ``uint8`` label map ``(1, *spatial)`` with the geometry of ``image``; with ``return_probabilities``,
        ``(labels, probabilities)``, the probabilities a float32 ``(K, *spatial)`` image on the same grid
        (background 1 outside the region that preprocessing cropped to).
    """
    configuration = plan["configurations"][config]
    data, _, properties = preprocess_image(image, None, plan, config)
    patch_size = tuple(configuration["patch_size"])
    models = [model] if isinstance(model, nn.Module) else list(model)
    probabilities = sum(
        predict_probabilities(
            m,
            data,
            patch_size,
            step=step,
            mirror_axes=tuple(configuration.get("mirror_axes", ())) if mirror_axes is None else tuple(mirror_axes),
            batch_size=batch_size or int(configuration.get("batch_size", 1)),
            device=device,
            autocast_dtype=autocast_dtype(precision, torch.device(device)),
            slice_axis=configuration.get("slice_axis") if len(patch_size) < image.ndim else None,
        )
        for m in models
    ).numpy() / len(models)
    labels = probabilities.argmax(axis=0)[None].astype(np.uint8)
    label_image = image.with_array(restore_to_original(labels, properties, is_label=True).array)
    if not return_probabilities:
        return label_image
    classes = [
        restore_to_original(p[None], properties, is_label=False, fill=1.0 if k == 0 else 0.0).array
        for k, p in enumerate(probabilities)
    ]
    return label_image, image.with_array(np.concatenate(classes, axis=0))
