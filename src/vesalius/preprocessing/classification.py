"""Images of a classification data set as one array the network takes: normalised, then resized to the network's input.

Arrays: a case ``(C, *spatial)`` of any size becomes ``(C, *input_size)``: each channel normalised as the plan says
(:func:`vesalius.preprocessing.normalize.normalize`), then resized with linear interpolation (bilinear in 2D,
trilinear in 3D; 2D downsizing anti-aliased) by :func:`vesalius.preprocessing.resize.resize_linear`, which equals
torch's ``F.interpolate`` without importing torch. The same function prepares training cases and images to predict,
so both see identical inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vesalius.planning.plan import Normalization
from vesalius.preprocessing.normalize import normalize
from vesalius.preprocessing.resize import resize_linear

__all__ = ["prepare_image", "prepare_images"]

#: Above this many bytes in float32, :func:`prepare_images` keeps the stack in float16 (half the memory).
HALF_PRECISION_BYTES = 512 * 2**20


def prepare_image(array: np.ndarray, normalization: Sequence[Normalization], input_size: Sequence[int]) -> np.ndarray:
    """One image ``(C, *spatial)`` -> normalised float32 ``(C, *input_size)``."""
    x = normalize(array, normalization)
    size = tuple(int(s) for s in input_size)
    if tuple(x.shape[1:]) != size:
        shrink = x.ndim == 3 and any(s < n for s, n in zip(size, x.shape[1:], strict=True))
        x = resize_linear(x, size, antialias=shrink)
    return x


def prepare_images(
    arrays: Sequence[np.ndarray], normalization: Sequence[Normalization], input_size: Sequence[int]
) -> np.ndarray:
    """Images ``(C, *spatial)`` -> one ``(N, C, *input_size)`` array (float32, or float16 when large)."""
    size = tuple(int(s) for s in input_size)
    channels = len(normalization)
    dtype = np.float16 if len(arrays) * channels * int(np.prod(size)) * 4 > HALF_PRECISION_BYTES else np.float32
    out = np.empty((len(arrays), channels, *size), dtype=dtype)
    for i, array in enumerate(arrays):
        out[i] = prepare_image(array, normalization, size)
    return out
