"""The part of a CT image worth predicting: the box around its tissue, so that sliding windows skip the air.

A CT channel is normalised by clipping to the training foreground's intensity range (0.5th to 99.5th percentile,
:mod:`vesalius.planning.rules`) before the z-score, so every voxel darker than the darkest foreground the data set
holds (air around the body, usually) becomes one value, the *floor*. Voxels above the floor are *tissue*. The
windows of :mod:`vesalius.inference.sliding_window` only need to cover the box of the tissue, grown by half a window
on each side (so a window at the box's edge sees the air context it would see in the whole image) and to at least
one window (so nothing is zero-padded that the whole image would not pad); outside the box the answer is
background. A foreground that lies wholly below the floor would be lost, which by the floor's definition is rarer
than 1 voxel in 200 of the training foreground, and such voxels lie at the border of structures inside the box.

Why by hand: neither MONAI's sliding window nor nnU-Net's skips windows; TotalSegmentator crops to the body with
a network of its own. This needs no network. On a CT whose body's box is half of the field of view it predicts
1.6 times fewer windows (``benchmarks/large_volume.py``). Channels normalised otherwise (MRI, pictures) give no
box: their zero background is already cropped by preprocessing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vesalius.io.image import nonzero_box
from vesalius.planning.plan import Normalization
from vesalius.preprocessing.normalize import normalize

__all__ = ["tissue_box"]


def tissue_box(
    data: np.ndarray, normalization: Sequence[Normalization], window: Sequence[int], slice_axis: int | None = None
) -> tuple[slice, ...] | None:
    """The box of ``data`` that sliding windows of size ``window`` need to cover, or ``None`` for all of it.

    Args:
        data: the preprocessed (normalised) image ``(C, *grid)``.
        normalization: per channel, how ``data`` was normalised; only ``"ct"`` channels define tissue.
        window: the network's patch, one size per axis it slides along (the grid's axes without ``slice_axis``).
        slice_axis: for a 2D network on a 3D grid, the grid axis predicted slice by slice (no margin along it).

    Returns:
        One slice per grid axis, or ``None`` when no channel is CT, no voxel is tissue, or the box is the whole grid.
    """
    channels = [c for c, n in enumerate(normalization) if n.scheme == "ct"]
    if not channels:
        return None
    # the floor as normalisation computes it, bit for bit: a clipped voxel equals it exactly
    floors = {
        c: normalize(np.full((1, 1), normalization[c].clip[0], np.float32), [normalization[c]])[0, 0] for c in channels
    }  # type: ignore[index]
    tissue = np.any([data[c] > floors[c] for c in channels], axis=0)
    if not tissue.any():
        return None
    grid = tissue.shape
    sizes = list(window)
    if slice_axis is not None:
        sizes.insert(slice_axis, 1)
    box = []
    for axis, (size, present) in enumerate(zip(sizes, nonzero_box(tissue[None]), strict=True)):
        margin = 0 if axis == slice_axis else size // 2
        start, stop = max(present.start - margin, 0), min(present.stop + margin, grid[axis])
        short = min(size, grid[axis]) - (stop - start)  # grow to one window, kept inside the grid
        if short > 0:
            start = max(min(start - short // 2, grid[axis] - min(size, grid[axis])), 0)
            stop = start + min(size, grid[axis])
        box.append(slice(start, stop))
    if all(b.start == 0 and b.stop == n for b, n in zip(box, grid, strict=True)):
        return None
    return tuple(box)
