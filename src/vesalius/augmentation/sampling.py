"""Patch sampling with foreground oversampling from preprocessed cases.

A :class:`PatchSampler` draws batches of patches from ``(image, seg)`` array pairs as written by
:mod:`vesalius.preprocessing.pipeline` (``CASE.npy`` float32 ``(C, X, Y[, Z])``, ``CASE_seg.npy`` uint8
``(1, X, Y[, Z])``), memory-mapped or in memory. It follows nnU-Net's data loader:

- each sample picks a case uniformly at random;
- the last ``num_foreground`` samples of a batch are *foreground* samples: a foreground class present in the case
  is chosen uniformly, then one of its voxels (from a capped random subset of that class's voxels, precomputed at
  construction), and the patch is centred on that voxel as far as the case's borders allow (the voxel is always in
  the patch). A case with no foreground gives a uniformly random patch instead;
- the other samples are uniformly random patches;
- a case smaller than the patch is padded symmetrically with zeros (image) and 0 (label).

Pre-patches for spatial augmentation: with ``extra=e`` (per axis, voxels on *each* side) the sampler returns
patches of ``patch_size + 2 * e``. Their central ``patch_size`` crop is distributed exactly like a patch drawn
without margin (random patches: uniformly inside the case; foreground patches: centred on the voxel), and the
margin holds real image content wherever the case has it. Rotating or scaling such a pre-patch about its centre and
then cropping the centre (``Augmenter(patch_size=...)`` does both in one resampling) leaves no zero-filled corners
in the final patch as long as the margin covers the transform's reach (and the case has content there).
``AugmentationConfig.margin(patch_size)`` computes a margin that covers the worst case of its rotation, scaling
and elastic ranges; nnU-Net uses a smaller, approximate one and accepts some zero-filled corners.

2D from 3D: with ``slice_axis`` the cases are 3D and the patches 2D (nnU-Net's 2D configuration on 3D data):
``patch_size`` lists the two in-plane sizes and one slice along ``slice_axis`` (a spatial axis, 0-based) is taken
per sample. Foreground samples take the slice through the chosen foreground voxel.

Determinism: ``sample(step)`` uses ``np.random.default_rng((seed, step))``, so a batch depends only on the seed and
the step, not on which batches were drawn before (workers can draw steps in any order).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["PatchSampler"]


def _per_axis(value: int | Sequence[int], n: int, name: str) -> tuple[int, ...]:
    values = (int(value),) * n if isinstance(value, int | np.integer) else tuple(int(v) for v in value)
    if len(values) != n:
        raise ValueError(f"{name} needs {n} values, got {len(values)}")
    return values


class PatchSampler:
    """Draws batches of (image, label) patches, a fraction of them centred on foreground.

    Args:
        cases: ``(image, seg)`` pairs: image ``(C, *spatial)`` (any real dtype, returned as float32), seg
            ``(1, *spatial)`` integer labels (0 is background). ``np.load(..., mmap_mode="r")`` arrays are fine:
            only the patches are read when sampling; each seg is read once at construction.
        patch_size: spatial size of the (final) patch, one value per spatial axis of the patch.
        batch_size: samples per batch, ``B``.
        foreground_fraction: share of foreground samples per batch: ``round(B * fraction)`` of them, and at least
            one when ``B >= 2`` and ``fraction > 0``.
        seed: base seed; ``sample(step)`` is a function of ``(seed, step)``.
        extra: margin (voxels) added on *each* side of every patch axis, an int or one value per axis; the
            returned patches have spatial size ``patch_size + 2 * extra`` (see the module docstring).
        slice_axis: for 2D patches from 3D cases, the spatial axis (0-based) along which slices are taken.
        max_foreground_voxels: per case and class, at most this many foreground voxel coordinates are kept
            (a random subset) for centring foreground patches.
    """

    def __init__(
        self,
        cases: Sequence[tuple[np.ndarray, np.ndarray]],
        patch_size: Sequence[int],
        batch_size: int,
        *,
        foreground_fraction: float = 1 / 3,
        seed: int = 0,
        extra: int | Sequence[int] = 0,
        slice_axis: int | None = None,
        max_foreground_voxels: int = 1000,
    ) -> None:
        if not cases:
            raise ValueError("PatchSampler needs at least one case")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0.0 <= foreground_fraction <= 1.0:
            raise ValueError(f"foreground_fraction must be in [0, 1], got {foreground_fraction}")
        self.cases = list(cases)
        self.batch_size = int(batch_size)
        self.foreground_fraction = float(foreground_fraction)
        self.seed = int(seed)
        self.slice_axis = slice_axis
        image0 = self.cases[0][0]
        self.channels = int(image0.shape[0])
        self.case_dims = image0.ndim - 1
        patch_dims = self.case_dims - (1 if slice_axis is not None else 0)
        self.patch_size = _per_axis(patch_size, patch_dims, "patch_size")
        self.extra = _per_axis(extra, patch_dims, "extra")
        if min(self.patch_size) < 1 or min(self.extra) < 0:
            raise ValueError(f"patch_size must be >= 1 and extra >= 0, got {self.patch_size} and {self.extra}")
        if slice_axis is not None and not 0 <= slice_axis < self.case_dims:
            raise ValueError(f"slice_axis must be a spatial axis in [0, {self.case_dims}), got {slice_axis}")
        for i, (image, seg) in enumerate(self.cases):
            if image.ndim - 1 != self.case_dims or image.shape[0] != self.channels:
                raise ValueError(f"case {i}: image shape {image.shape} does not match case 0 {image0.shape}")
            if seg.shape != (1, *image.shape[1:]):
                raise ValueError(f"case {i}: seg shape {seg.shape} does not match image shape {image.shape}")
        # Sizes in the cases' full spatial dims (a slice axis gets size 1 and no margin).
        full_size, full_extra = list(self.output_size), list(self.extra)
        if slice_axis is not None:
            full_size.insert(slice_axis, 1)
            full_extra.insert(slice_axis, 0)
        self._size = tuple(full_size)
        self._extra = tuple(full_extra)
        self.foreground = [
            self._foreground_voxels(i, seg, max_foreground_voxels) for i, (_, seg) in enumerate(self.cases)
        ]

    @classmethod
    def from_folder(
        cls, folder: str | Path, case_ids: Sequence[str], patch_size: Sequence[int], batch_size: int, **kwargs: object
    ) -> PatchSampler:
        """A sampler over ``folder/CASE.npy`` and ``folder/CASE_seg.npy`` (memory-mapped) for ``case_ids``."""
        folder = Path(folder)
        cases = [
            (np.load(folder / f"{c}.npy", mmap_mode="r"), np.load(folder / f"{c}_seg.npy", mmap_mode="r"))
            for c in case_ids
        ]
        return cls(cases, patch_size, batch_size, **kwargs)  # type: ignore[arg-type]

    @property
    def output_size(self) -> tuple[int, ...]:
        """Spatial size of the returned patches: ``patch_size + 2 * extra``."""
        return tuple(p + 2 * e for p, e in zip(self.patch_size, self.extra, strict=True))

    @property
    def num_foreground(self) -> int:
        """How many samples of each batch are foreground samples (the last ones)."""
        if self.foreground_fraction == 0:
            return 0
        n = math.floor(self.batch_size * self.foreground_fraction + 0.5)
        return min(self.batch_size, max(n, 1 if self.batch_size >= 2 else 0))

    def _foreground_voxels(self, index: int, seg: np.ndarray, cap: int) -> dict[int, np.ndarray]:
        """Per foreground class present in the case: ``(n, dims)`` int64 voxel coordinates, ``n <= cap``."""
        rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(index,)))
        labels = np.asarray(seg[0])
        flat = np.flatnonzero(labels)
        values = labels.reshape(-1)[flat]
        voxels: dict[int, np.ndarray] = {}
        for value in np.unique(values):
            idx = flat[values == value]
            if idx.size > cap:
                idx = np.sort(rng.choice(idx, size=cap, replace=False))
            voxels[int(value)] = np.stack(np.unravel_index(idx, labels.shape), axis=1).astype(np.int64)
        return voxels

    def _bounds(self, shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Lowest and highest patch start per axis (nnU-Net's ``get_bbox``): the central ``patch_size`` crop
        stays inside the case, and a case smaller than the patch is padded symmetrically."""
        shape_a = np.asarray(shape)
        size = np.asarray(self._size)
        pad = 2 * np.asarray(self._extra)
        pad = np.maximum(pad, size - shape_a)
        lower = -(pad // 2)
        upper = shape_a + pad // 2 + pad % 2 - size
        return lower, upper

    def _start(self, rng: np.random.Generator, case: int, foreground: bool) -> np.ndarray:
        shape = self.cases[case][0].shape[1:]
        lower, upper = self._bounds(shape)
        classes = sorted(self.foreground[case])
        if foreground and classes:
            voxels = self.foreground[case][classes[int(rng.integers(len(classes)))]]
            voxel = voxels[int(rng.integers(len(voxels)))]
            return np.clip(voxel - np.asarray(self._size) // 2, lower, upper)
        return rng.integers(lower, upper, endpoint=True)

    def _crop(self, array: np.ndarray, start: np.ndarray, out: np.ndarray) -> None:
        """Copy ``array[:, start:start+size]`` into ``out`` (zeros where the window leaves the array)."""
        src, dst = [slice(None)], [slice(None)]
        for s, n, dim in zip(start, self._size, array.shape[1:], strict=True):
            lo, hi = max(int(s), 0), min(int(s) + n, dim)
            src.append(slice(lo, hi))
            dst.append(slice(lo - int(s), hi - int(s)))
        out[tuple(dst)] = array[tuple(src)]

    def sample(self, step: int | np.random.Generator, rows: slice | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One batch, or some of its rows.

        Args:
            step: the training step (the batch is drawn with ``np.random.default_rng((seed, step))``), or a
                generator to draw from.
            rows: the rows of the batch to crop (a rank's share in distributed training); every row is drawn, so
                row ``j`` is the same whichever rows are asked for. Default: all.

        Returns:
            images ``(R, C, *output_size)`` float32 and segs ``(R, 1, *output_size)`` with the segs' dtype
            (uint8 for preprocessed cases), both C-contiguous; ``R`` is the batch size or the rows asked for.
        """
        rng = step if isinstance(step, np.random.Generator) else np.random.default_rng((self.seed, int(step)))
        b = self.batch_size
        wanted = range(b)[rows or slice(None)]
        seg_dtype = self.cases[0][1].dtype
        images = np.zeros((len(wanted), self.channels, *self._size), dtype=np.float32)
        segs = np.zeros((len(wanted), 1, *self._size), dtype=seg_dtype)
        case_indices = rng.integers(len(self.cases), size=b)
        first_foreground = b - self.num_foreground
        for j, case in enumerate(case_indices):
            start = self._start(rng, int(case), foreground=j >= first_foreground)
            if j in wanted:
                image, seg = self.cases[int(case)]
                self._crop(image, start, images[j - wanted.start])
                self._crop(seg, start, segs[j - wanted.start])
        if self.slice_axis is not None:
            images = np.ascontiguousarray(images.squeeze(2 + self.slice_axis))
            segs = np.ascontiguousarray(segs.squeeze(2 + self.slice_axis))
        return images, segs
