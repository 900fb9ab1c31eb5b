"""Cropping and resampling of :class:`~vesalius.io.Image` objects, keeping the world position of every voxel.

Resampling is done in physical space by SimpleITK (``sitk.Resample`` onto a target grid), so that mapping a
prediction back onto the original grid is the same operation with the original grid as the target. For
anisotropic data (one axis coarser than ``ANISOTROPY_RATIO`` times the finest), images are interpolated
linearly in-plane and by nearest neighbour across slices, as nnU-Net does, so thick slices are not blended.
"""

from __future__ import annotations

import numpy as np

from vesalius.io import Geometry, Image, from_sitk, to_sitk

ANISOTROPY_RATIO = 3.0


def crop(image: Image, box: tuple[slice, ...]) -> Image:
    """The part of ``image`` inside ``box`` (one slice per spatial axis), with its origin moved accordingly."""
    start = np.array([b.start for b in box], dtype=float)
    origin = image.geometry.affine()[: image.ndim] @ np.append(start, 1.0)
    geometry = Geometry(image.geometry.spacing, tuple(origin), image.geometry.direction)
    return Image(image.array[(slice(None), *box)], geometry, image.orientation_on_disk)


def uncrop(array: np.ndarray, box: tuple[slice, ...], full_shape: tuple[int, ...], fill: float = 0) -> np.ndarray:
    """Put a ``(C, *cropped)`` array back into a ``(C, *full_shape)`` array filled with ``fill``."""
    out = np.full((array.shape[0], *full_shape), fill, dtype=array.dtype)
    out[(slice(None), *box)] = array
    return out


def resampled_shape(shape: tuple[int, ...], spacing: tuple[float, ...], target: tuple[float, ...]) -> tuple[int, ...]:
    """Grid size that covers the same extent at the ``target`` spacing."""
    return tuple(max(1, round(n * s / t)) for n, s, t in zip(shape, spacing, target, strict=True))


def grid_for_spacing(image: Image, target: tuple[float, ...]) -> tuple[tuple[int, ...], Geometry]:
    """Shape and geometry of the grid at ``target`` spacing covering the same extent as ``image``.

    The first voxel's corner stays where it was, so the extent is preserved and the inverse is exact.
    """
    g = image.geometry
    shape = resampled_shape(image.spatial_shape, g.spacing, target)
    corner_shift = (np.asarray(target) - np.asarray(g.spacing)) / 2  # voxel centre moves by half the change
    origin = np.asarray(g.origin) + g.direction_matrix @ corner_shift
    return shape, Geometry(tuple(target), tuple(origin), g.direction)


def resample_to(image: Image, shape: tuple[int, ...], geometry: Geometry, *, is_label: bool = False) -> Image:
    """Resample every channel onto the grid ``(shape, geometry)``.

    Labels use nearest neighbour; images use linear interpolation, except across the coarse axis of
    anisotropic data (nearest neighbour there).
    """
    import SimpleITK as sitk

    if image.spatial_shape == tuple(shape) and image.geometry.is_close(geometry, atol=1e-6):
        return Image(image.array, geometry, image.orientation_on_disk)
    spacing = np.asarray(image.geometry.spacing)
    coarse = int(np.argmax(spacing))
    anisotropic = image.ndim == 3 and spacing[coarse] > ANISOTROPY_RATIO * spacing.min()
    channels = []
    for c in range(image.num_channels):
        source = to_sitk(image, c)
        if not is_label and anisotropic:
            # in-plane linear onto an intermediate grid that keeps the slices, then nearest across them
            mid_shape, mid_spacing = list(shape), list(geometry.spacing)
            mid_shape[coarse], mid_spacing[coarse] = image.spatial_shape[coarse], spacing[coarse]
            mid_origin = _origin_keeping_axis(geometry, image.geometry, coarse)
            middle = _grid(mid_shape, Geometry(tuple(mid_spacing), mid_origin, geometry.direction))
            source = sitk.Resample(source, middle, sitk.Transform(), sitk.sitkLinear, 0.0)
            result = sitk.Resample(source, _grid(shape, geometry), sitk.Transform(), sitk.sitkNearestNeighbor, 0.0)
        else:
            interpolator = sitk.sitkNearestNeighbor if is_label else sitk.sitkLinear
            result = sitk.Resample(source, _grid(shape, geometry), sitk.Transform(), interpolator, 0.0)
        channels.append(from_sitk(result).array)
    return Image(np.concatenate(channels, axis=0).astype(image.array.dtype, copy=False), geometry)


def _origin_keeping_axis(target: Geometry, source: Geometry, axis: int) -> tuple[float, ...]:
    """Origin of ``target`` with its component along ``axis`` taken from ``source`` (axis-aligned grids)."""
    d = target.direction_matrix
    offset = np.asarray(source.origin) - np.asarray(target.origin)
    along = d[:, axis] @ offset
    return tuple(np.asarray(target.origin) + d[:, axis] * along)


def _grid(shape: tuple[int, ...] | list[int], geometry: Geometry):  # type: ignore[no-untyped-def]
    import SimpleITK as sitk

    ref = sitk.Image([int(s) for s in shape], sitk.sitkUInt8)
    ref.SetSpacing(geometry.spacing)
    ref.SetOrigin(geometry.origin)
    ref.SetDirection(geometry.direction)
    return ref
