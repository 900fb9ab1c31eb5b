"""Sliding-window prediction of a segmentation network, with Gaussian weighting and mirroring test-time augmentation.

The image is covered by patch-sized windows that overlap by ``1 - step`` of the patch (MONAI's
:func:`~monai.inferers.sliding_window_inference`; an image smaller than the patch is zero-padded, and the padding
is cropped off the output). Each window's logits are weighted by a Gaussian (sigma = 1/8 of the patch, as in
nnU-Net) so that window centres count more than window borders, and the weighted logits are averaged where windows
overlap. With mirroring, each window is also predicted flipped along every combination of ``mirror_axes`` and the
logits, flipped back, are averaged before the Gaussian weighting. As in nnU-Net, logits (not probabilities) are
averaged, over flips and over windows, and the softmax is taken once at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache

import numpy as np
import torch
from monai.data.utils import compute_importance_map
from monai.inferers import sliding_window_inference
from torch import nn

from vesalius.inference.windows import tta_flips
from vesalius.precision import memory_format

GAUSSIAN_SIGMA_SCALE = 0.125
"""Sigma of the window weighting, as a fraction of the patch size along each axis."""


def predict_probabilities(
    model: nn.Module,
    image: np.ndarray | torch.Tensor,
    patch_size: Sequence[int],
    *,
    step: float = 0.5,
    mirror_axes: Sequence[int] = (),
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    autocast_dtype: torch.dtype | None = None,
    slice_axis: int | None = None,
) -> torch.Tensor:
    """Softmax probabilities of ``model`` over a whole image, by Gaussian-weighted sliding windows.

    Args:
        model: maps a float32 ``(B, C, *patch_size)`` batch to ``(B, K, *patch_size)`` logits (K classes,
            background included); it must already be on ``device``. It is put in eval mode (and in the memory
            format of :func:`vesalius.precision.memory_format`).
        image: ``(C, *spatial)``, preprocessed (normalised); numpy or torch.
        patch_size: the window, one size per spatial axis of the model (2 or 3 axes).
        step: distance between neighbouring windows as a fraction of the patch, in ``(0, 1]``; 0.5 means windows
            overlap by half.
        mirror_axes: the model's spatial axes (0-based) to mirror for test-time augmentation; all
            ``2 ** len(mirror_axes)`` flip combinations are averaged (see
            :func:`vesalius.inference.windows.tta_flips`).
        batch_size: number of windows per forward pass (each forward pass is repeated once per flip).
        device: where the model runs and the output is accumulated.
        autocast_dtype: run the model under :func:`torch.autocast` with this dtype (on a CPU with native bf16,
            ``torch.bfloat16`` with ``channels_last`` windows is 4-5x faster than float32; see
            :mod:`vesalius.precision`); ``None`` runs in float32. Accumulation is float32 in any case.
        slice_axis: for a 2D model on a 3D image: ``image`` is ``(C, X, Y, Z)``, ``patch_size`` and ``mirror_axes``
            refer to the two axes left when ``slice_axis`` (0-based spatial) is taken out, and the slices along
            ``slice_axis`` are predicted as one batch (windows of several slices share a forward pass).

    Returns:
        float32 ``(K, *spatial)`` probabilities on the CPU (summing to 1 over ``K``).
    """
    if not 0 < step <= 1:
        raise ValueError(f"step must be in (0, 1], got {step}")
    x = image.float() if isinstance(image, torch.Tensor) else torch.from_numpy(np.require(image, np.float32, "W"))
    patch = tuple(int(p) for p in patch_size)
    model_dims = x.ndim - 1 if slice_axis is None else x.ndim - 2
    if len(patch) != model_dims or (slice_axis is not None and not 0 <= slice_axis < x.ndim - 1):
        raise ValueError(
            f"patch size {patch} and slice axis {slice_axis} do not fit an image of shape {tuple(x.shape)}"
        )
    if any(not 0 <= a < len(patch) for a in mirror_axes):
        raise ValueError(f"mirror axes {tuple(mirror_axes)} out of range for a {len(patch)}D patch")
    batch = x[None] if slice_axis is None else x.movedim(slice_axis + 1, 0)  # (1, C, *spatial) or (S, C, *in-plane)
    device = torch.device(device)
    layout = memory_format(autocast_dtype, device, len(patch))
    model.eval().to(memory_format=layout)
    with (
        torch.inference_mode(),
        torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None),
    ):
        logits = sliding_window_inference(
            batch.to(device),
            roi_size=patch,
            sw_batch_size=batch_size,
            predictor=_mirrored(model, tta_flips(mirror_axes), layout),
            overlap=1.0 - step,
            mode="gaussian",
            sigma_scale=GAUSSIAN_SIGMA_SCALE,
            roi_weight_map=_gaussian(patch, str(device)),
            sw_device=device,
            device=device,
        )
        probabilities = torch.softmax(logits.float(), dim=1).cpu()
    if slice_axis is None:
        return probabilities[0]
    return probabilities.movedim(0, slice_axis + 1).contiguous()  # (S, K, *in-plane) -> (K, *spatial)


def _mirrored(
    model: nn.Module, flips: list[tuple[int, ...]], layout: torch.memory_format
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A predictor that averages the float32 logits of ``model`` over the given flips of its input (windows
    passed in memory format ``layout``)."""

    def predict(x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=layout)
        total = _flipped_logits(model, x, flips[0])
        for axes in flips[1:]:
            total += _flipped_logits(model, x, axes)
        return total / len(flips)

    return predict


def _flipped_logits(model: nn.Module, x: torch.Tensor, axes: tuple[int, ...]) -> torch.Tensor:
    """float32 logits of ``model`` on ``x`` flipped along the spatial ``axes``, flipped back."""
    if not axes:
        return model(x).float()
    dims = [a + 2 for a in axes]  # spatial axes after (batch, channel)
    return torch.flip(model(torch.flip(x, dims)).float(), dims)


@lru_cache(maxsize=8)
def _gaussian(patch_size: tuple[int, ...], device: str) -> torch.Tensor:
    """The window weighting for ``patch_size`` on ``device``, made once per process and reused."""
    return compute_importance_map(patch_size, mode="gaussian", sigma_scale=GAUSSIAN_SIGMA_SCALE, device=device)
