"""Linear resizing of images in NumPy: bilinear (2D) and trilinear (3D), optionally anti-aliased.

Arrays: a ``(C, *spatial)`` image with 2 or 3 spatial axes becomes a float32 ``(C, *size)`` image. The resize is
separable: each spatial axis gets one ``(out, in)`` weight matrix (cached per ``(in, out, antialias)``), applied with
a matrix product along that axis.

Weights follow PyTorch's ``F.interpolate(x[None], size, mode="bilinear" | "trilinear", align_corners=False,
antialias=...)`` rule by rule:

* without anti-aliasing, the half-pixel linear rule: output ``i`` samples the source coordinate
  ``(i + 0.5) * in / out - 0.5``, clamped at 0, between its floor and the next index (clamped at the last one);
* with anti-aliasing, PyTorch's (and Pillow's) separable filter: a triangle whose support is widened by the
  downscale factor on shrinking axes (plain linear interpolation on the others), weights normalised to sum to one.
  PyTorch offers it in 2D only; here it applies per axis in 3D as well. (Torch 2.x's CPU kernel repeats the first
  output row when a 2D output is one column wide and its height changes; this module gives the filter's result.)

Why hand-written: the classification runtime must prepare images exactly as training did without importing torch.
The weights are computed with torch's float32 arithmetic, so the results equal torch's up to float rounding in the
sums (about 1e-6 relative).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np

__all__ = ["resize_linear"]


def resize_linear(array: np.ndarray, size: Sequence[int], *, antialias: bool = False) -> np.ndarray:
    """Resize a ``(C, *spatial)`` image (2 or 3 spatial axes) to float32 ``(C, *size)``.

    Args:
        array: the image; any real dtype (computed in float32).
        size: the output size, one entry per spatial axis, each >= 1.
        antialias: filter with a triangle widened by the downscale factor on shrinking axes (as torch's
            ``antialias=True``); axes that grow or keep their size are interpolated linearly either way.
    """
    x = np.asarray(array, dtype=np.float32)
    size = tuple(int(s) for s in size)
    if x.ndim not in (3, 4):
        raise ValueError(f"expected a (C, *spatial) array with 2 or 3 spatial axes, got shape {x.shape}")
    if len(size) != x.ndim - 1:
        raise ValueError(f"size {size} does not match the {x.ndim - 1} spatial axes of shape {x.shape}")
    if any(s < 1 for s in size) or any(n < 1 for n in x.shape[1:]):
        raise ValueError(f"cannot resize shape {x.shape} to {size}: sizes must be >= 1")
    # Axes that change, the most shrinking first: every later product then runs on a smaller array.
    axes = sorted((a for a in range(1, x.ndim) if x.shape[a] != size[a - 1]), key=lambda a: size[a - 1] / x.shape[a])
    for axis in axes:
        x = _apply(x, _weights(x.shape[axis], size[axis - 1], antialias), axis)
    return np.ascontiguousarray(x)


def _apply(x: np.ndarray, weights: np.ndarray, axis: int) -> np.ndarray:
    """Contract ``x`` along ``axis`` with ``weights`` ``(out, in)``, keeping the axis order."""
    shape = x.shape
    out_shape = (*shape[:axis], weights.shape[0], *shape[axis + 1 :])
    if axis == x.ndim - 1:
        return (x.reshape(-1, shape[axis]) @ weights.T).reshape(out_shape)
    x3 = np.ascontiguousarray(x).reshape(math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1 :]))
    return np.matmul(weights, x3).reshape(out_shape)


@functools.lru_cache(maxsize=128)
def _weights(in_size: int, out_size: int, antialias: bool) -> np.ndarray:
    """The ``(out, in)`` float32 matrix that resizes one axis (read-only: it is shared through the cache)."""
    if in_size == out_size:
        matrix = np.eye(in_size, dtype=np.float32)  # torch leaves such an axis untouched
    elif antialias:
        matrix = _antialias_weights(in_size, out_size)
    else:
        matrix = _linear_weights(in_size, out_size)
    matrix.flags.writeable = False
    return matrix


def _linear_weights(in_size: int, out_size: int) -> np.ndarray:
    """Half-pixel linear interpolation, as torch's ``compute_source_index_and_lambda`` (float32 arithmetic).

    Torch's CPU kernels (AVX2/AVX-512 builds) evaluate ``scale * (i + 0.5) - 0.5`` as one fused multiply-add, so
    the source coordinate is rounded to float32 once; the float64 product of two float32 numbers is exact, which
    reproduces that rounding.
    """
    f32 = np.float32
    scale = f32(in_size) / f32(out_size)
    i = np.arange(out_size)
    src = np.maximum((np.float64(scale) * (i + 0.5) - 0.5).astype(f32), f32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    lambda1 = np.clip(src - i0.astype(f32), f32(0), f32(1))
    i1 = np.where(i0 < in_size - 1, i0 + 1, i0)
    matrix = np.zeros((out_size, in_size), dtype=f32)
    np.add.at(matrix, (i, i0), f32(1) - lambda1)
    np.add.at(matrix, (i, i1), lambda1)
    return matrix


def _antialias_weights(in_size: int, out_size: int) -> np.ndarray:
    """Torch's anti-aliased linear weights (``HelperInterpBase::_compute_weights_aa`` with the triangle filter).

    Float32 where torch computes in ``float``, float64 where C++ promotes to ``double``, so the window bounds and
    weights come out as torch's.
    """
    f32, f64 = np.float32, np.float64
    scale = f32(in_size) / f32(out_size)
    if scale >= 1:
        support = scale  # (interp_size * 0.5) * scale with interp_size 2
        invscale = f32(1.0 / f64(scale))
    else:
        support, invscale = f32(1), f32(1)
    max_taps = math.ceil(support) * 2 + 1
    i = np.arange(out_size)
    center = (f64(scale) * (i + 0.5)).astype(f32)
    xmin = np.maximum(np.trunc((center - support).astype(f64) + 0.5).astype(np.int64), 0)
    xmax = np.minimum(np.trunc((center + support).astype(f64) + 0.5).astype(np.int64), in_size)
    taps = np.clip(xmax - xmin, 0, max_taps)

    weights = np.zeros((out_size, max_taps), dtype=f32)
    total = np.zeros(out_size, dtype=f32)
    for j in range(max_taps):
        distance = ((((j + xmin).astype(f32) - center).astype(f64) + 0.5) * f64(invscale)).astype(f32)
        distance = np.abs(distance)
        w = np.where((distance < 1) & (j < taps), (1.0 - distance.astype(f64)).astype(f32), f32(0))
        weights[:, j] = w
        total += w
    weights = np.divide(weights, total[:, None], out=weights, where=total[:, None] != 0)

    matrix = np.zeros((out_size, in_size), dtype=f32)
    rows, cols = np.nonzero(np.arange(max_taps)[None, :] < taps[:, None])
    matrix[rows, xmin[rows] + cols] = weights[rows, cols]
    return matrix
