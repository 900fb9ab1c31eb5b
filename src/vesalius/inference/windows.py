"""Sliding-window prediction in NumPy, for the deployed runtime: the same result as
:func:`vesalius.inference.sliding_window.predict_probabilities`, with any ``predict`` function (an ONNX Runtime
session, typically) in place of a torch model.

Why hand-written: the deployed runtime must run with NumPy, SimpleITK and ONNX Runtime only, and MONAI's
:func:`~monai.inferers.sliding_window_inference` needs torch. The window placement is copied from MONAI
(``sliding_window_inference``, ``_get_scan_interval`` and ``dense_patch_slices``: the symmetric zero padding of an
image smaller than the patch, the scan interval ``int(patch * (1 - overlap))`` with ``overlap = 1 - step``, the last
window moved back to end at the image border, the window order, and the batching of windows, across images or
slices too), so that the torch and the runtime backends place the same windows and agree to float rounding.

As in the torch path: each window's logits are averaged over the flips of ``mirror_axes`` (each flip predicted and
flipped back), weighted by ``weights`` (the Gaussian importance map), accumulated as ``sum(w * logits) / sum(w)`` in
float32, and the softmax is taken once at the end. This module imports NumPy only (no torch, no MONAI, no other
vesalius module).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from itertools import combinations, product

import numpy as np

Predict = Callable[[np.ndarray], np.ndarray]
"""Maps a float32 ``(B, C, *patch)`` batch of windows to ``(B, K, *patch)`` logits."""


def tta_flips(mirror_axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every combination of the spatial axes in ``mirror_axes`` (0-based), the empty one (no flip) first.

    ``tta_flips((0, 1))`` is ``[(), (0,), (1,), (0, 1)]``: ``2 ** len(mirror_axes)`` combinations. Both backends
    (this module and :mod:`vesalius.inference.sliding_window`) mirror in this order.
    """
    axes = tuple(dict.fromkeys(int(a) for a in mirror_axes))
    return [c for n in range(len(axes) + 1) for c in combinations(axes, n)]


def window_count(spatial_shape: Sequence[int], patch_size: Sequence[int], step: float = 0.5) -> int:
    """Number of windows that cover one image (or one slice) of ``spatial_shape``, as
    :func:`predict_probabilities` places them; each is predicted once per flip of the mirror axes."""
    if not 0 < step <= 1:
        raise ValueError(f"step must be in (0, 1], got {step}")
    if len(spatial_shape) != len(patch_size):
        raise ValueError(f"patch size {tuple(patch_size)} does not fit a spatial shape {tuple(spatial_shape)}")
    padded = tuple(max(int(s), int(p)) for s, p in zip(spatial_shape, patch_size, strict=True))
    return math.prod(len(s) for s in _window_starts(padded, tuple(int(p) for p in patch_size), step))


def predict_probabilities(
    predict: Predict,
    image: np.ndarray,
    patch_size: Sequence[int],
    weights: np.ndarray,
    *,
    step: float = 0.5,
    mirror_axes: Sequence[int] = (),
    batch_size: int = 1,
    slice_axis: int | None = None,
) -> np.ndarray:
    """Softmax probabilities of ``predict`` over a whole image, by weighted sliding windows.

    Args:
        predict: maps a float32 C-contiguous ``(B, C, *patch_size)`` batch of windows (``B <= batch_size``) to
            ``(B, K, *patch_size)`` logits (K classes, background included), e.g. an ONNX Runtime session's
            ``lambda x: session.run(None, {"image": x})[0]``.
        image: ``(C, *spatial)``, preprocessed (normalised).
        patch_size: the window, one size per spatial axis of the model (2 or 3 axes).
        weights: ``patch_size`` positive weights of the window voxels (the Gaussian importance map of the torch
            path, so that both agree).
        step: distance between neighbouring windows as a fraction of the patch, in ``(0, 1]``; 0.5 means windows
            overlap by half.
        mirror_axes: the model's spatial axes (0-based) to mirror for test-time augmentation; the logits of all
            ``2 ** len(mirror_axes)`` flip combinations are averaged (see :func:`tta_flips`).
        batch_size: number of windows per call of ``predict`` (each call is repeated once per flip).
        slice_axis: for a 2D model on a 3D image: ``image`` is ``(C, X, Y, Z)``, ``patch_size``, ``weights`` and
            ``mirror_axes`` refer to the two axes left when ``slice_axis`` (0-based spatial) is taken out, and the
            slices along ``slice_axis`` are predicted as one batch (windows of several slices share a call).

    Returns:
        float32 ``(K, *spatial)`` probabilities (summing to 1 over ``K``).
    """
    if not 0 < step <= 1:
        raise ValueError(f"step must be in (0, 1], got {step}")
    x = np.asarray(image, dtype=np.float32)
    patch = tuple(int(p) for p in patch_size)
    model_dims = x.ndim - 1 if slice_axis is None else x.ndim - 2
    if len(patch) != model_dims or (slice_axis is not None and not 0 <= slice_axis < x.ndim - 1):
        raise ValueError(f"patch size {patch} and slice axis {slice_axis} do not fit an image of shape {x.shape}")
    if any(p < 1 for p in patch):
        raise ValueError(f"patch size {patch} must be positive")
    if any(not 0 <= a < len(patch) for a in mirror_axes):
        raise ValueError(f"mirror axes {tuple(mirror_axes)} out of range for a {len(patch)}D patch")
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    w = np.asarray(weights, dtype=np.float32)
    if w.shape != patch:
        raise ValueError(f"weights of shape {w.shape} do not fit the patch size {patch}")
    if not np.all(w > 0) or not np.all(np.isfinite(w)):
        raise ValueError("weights must be finite and positive")

    batch = x[None] if slice_axis is None else np.moveaxis(x, slice_axis + 1, 0)  # (N, C, *spatial)
    spatial = batch.shape[2:]
    # an image smaller than the patch is zero-padded symmetrically (MONAI: the smaller half before)
    pads = [(max(p - s, 0) // 2, max(p - s, 0) - max(p - s, 0) // 2) for s, p in zip(spatial, patch, strict=True)]
    if any(before or after for before, after in pads):
        batch = np.pad(batch, [(0, 0), (0, 0), *pads])
    padded = batch.shape[2:]
    windows = [
        tuple(slice(s, s + p) for s, p in zip(starts, patch, strict=True))
        for starts in product(*_window_starts(padded, patch, step))
    ]

    flips = tta_flips(mirror_axes)
    output: np.ndarray | None = None  # (N, K, *padded), allocated once K is known
    count = np.zeros(padded, np.float32)
    for window in windows:
        count[window] += w
    total = len(windows) * batch.shape[0]
    for first in range(0, total, batch_size):
        indices = range(first, min(first + batch_size, total))  # window i of image i // len(windows)
        data = np.stack([batch[(i // len(windows), slice(None), *windows[i % len(windows)])] for i in indices])
        logits = _mirrored_logits(predict, data, flips, patch)
        if output is None:
            output = np.zeros((batch.shape[0], logits.shape[1], *padded), np.float32)
        logits *= w
        for i, window_logits in zip(indices, logits, strict=True):
            output[(i // len(windows), slice(None), *windows[i % len(windows)])] += window_logits
    assert output is not None  # there is at least one window
    output /= count
    crop = tuple(slice(before, before + s) for (before, _), s in zip(pads, spatial, strict=True))
    probabilities = _softmax(output[(slice(None), slice(None), *crop)])
    if slice_axis is None:
        return probabilities[0]
    return np.ascontiguousarray(np.moveaxis(probabilities, 0, slice_axis + 1))  # (S, K, *in-plane) -> (K, *spatial)


def _window_starts(padded: tuple[int, ...], patch: tuple[int, ...], step: float) -> list[list[int]]:
    """Start of the windows along each axis of an image of (padded) size ``padded``, as MONAI's
    ``_get_scan_interval`` and ``dense_patch_slices`` compute them for ``overlap = 1 - step``."""
    overlap = 1.0 - step
    starts = []
    for size, p in zip(padded, patch, strict=True):
        interval = p if p == size else max(int(p * (1 - overlap)), 1)
        number = math.ceil(size / interval)
        last = next((d for d in range(number) if d * interval + p >= size), None)
        starts.append([d * interval - max(d * interval + p - size, 0) for d in range(1 if last is None else last + 1)])
    return starts


def _mirrored_logits(
    predict: Predict, data: np.ndarray, flips: list[tuple[int, ...]], patch: tuple[int, ...]
) -> np.ndarray:
    """float32 logits of ``predict`` on the windows ``data``, averaged over ``flips`` of their spatial axes
    (each flipped back), summed in the order of ``flips`` as the torch path does."""
    total = _flipped_logits(predict, data, flips[0], patch)
    for axes in flips[1:]:
        total += _flipped_logits(predict, data, axes, patch)
    if len(flips) > 1:
        total /= np.float32(len(flips))
    return total


def _flipped_logits(predict: Predict, data: np.ndarray, axes: tuple[int, ...], patch: tuple[int, ...]) -> np.ndarray:
    """float32 logits of ``predict`` on ``data`` flipped along the spatial ``axes``, flipped back (a fresh array)."""
    dims = tuple(a + 2 for a in axes)  # spatial axes after (batch, channel)
    x = np.ascontiguousarray(np.flip(data, dims)) if dims else data
    logits = np.asarray(predict(x))
    if logits.ndim != data.ndim or logits.shape[0] != data.shape[0] or logits.shape[2:] != patch:
        raise ValueError(f"predict returned logits of shape {logits.shape} for windows of shape {data.shape}")
    logits = np.flip(logits, dims) if dims else logits
    return np.array(logits, dtype=np.float32)  # a copy: never write into predict's own buffers


def _softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over axis 1 of float32 ``logits``, shifted by the maximum so that large logits cannot overflow."""
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    e /= e.sum(axis=1, keepdims=True)
    return e
