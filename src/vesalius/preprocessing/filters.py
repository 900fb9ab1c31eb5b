"""Intensity filters a plan may ask for, per channel: N4 bias-field correction and edge-preserving denoising.

Both run on the image's own (cropped) grid, before resampling and normalisation
(:func:`vesalius.preprocessing.pipeline.preprocess_image`), because both model the acquired voxels: the bias field
is a smooth multiplicative field over the scanner's grid, and the filters assume noise independent from voxel to
voxel, which interpolation correlates (and nearest-neighbour resampling across thick slices duplicates). Before
normalisation, because N4 works on the logarithm of positive intensities and the normalisation's statistics should
be those of the corrected image. Training, prediction and exported packages all go through
:func:`apply_filters`, so they see the same intensities.

Both are deterministic: the same image and parameters give the same array (N4's multi-threaded sums add up in
another order with another number of threads, a relative difference of about 1e-5). Both are scale-free: N4's field
has no fixed scale (the per-image z-score that a plan requires with it removes it) and both denoising filters'
strength is relative to the image's own gradients, so the parameters in ``rules.json`` suit any intensity range.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vesalius.planning.plan import BiasField, ChannelFilters, Denoising

__all__ = ["MIN_SHRUNK_SIZE", "apply_filters", "correct_bias_field", "denoise"]

#: N4 fits its field on an image shrunk by ``BiasField.shrink_factor``, but no axis below this many voxels.
MIN_SHRUNK_SIZE = 8
#: Histogram bins of the Otsu threshold that masks N4's fit to the object.
OTSU_BINS = 200


def apply_filters(array: np.ndarray, spacing: Sequence[float], filters: Sequence[ChannelFilters]) -> np.ndarray:
    """Apply each channel's filters (bias field first, then denoising) to a ``(C, *spatial)`` array.

    Args:
        array: the image on its own grid; ``spacing``: its voxel spacing (mm), one per spatial axis.
        filters: one entry per channel (from the plan or the trained configuration).

    Returns:
        A float32 array of the same shape; channels without filters are only converted.
    """
    if len(filters) != array.shape[0]:
        raise ValueError(f"{array.shape[0]} channels but {len(filters)} filter entries")
    out = array.astype(np.float32, copy=True)
    for c, channel in enumerate(filters):
        if channel.bias_field is not None:
            out[c] = correct_bias_field(out[c], spacing, channel.bias_field)
        if channel.denoise is not None:
            out[c] = denoise(out[c], spacing, channel.denoise)
    return out


def correct_bias_field(array: np.ndarray, spacing: Sequence[float], settings: BiasField) -> np.ndarray:
    """One channel ``(*spatial)`` divided by its N4 bias field; float32, same shape.

    The standard recipe: the field is fitted (SimpleITK's ``N4BiasFieldCorrectionImageFilter``) inside an Otsu mask
    of the object on the image shrunk by ``settings.shrink_factor`` per axis (for speed: the field is smooth), then
    its B-spline is evaluated on the full-resolution grid and the image divided by it. Voxels that are 0 stay 0.
    The fit uses only positive voxels (N4 fits the logarithm), so an image that was already shifted (e.g. z-scored)
    is fitted on its positive part; one without positive object voxels (Otsu finds no foreground among them, e.g. a
    constant image) is returned unchanged.
    """
    import SimpleITK as sitk

    image = _to_sitk(array, spacing)
    otsu = sitk.GetArrayFromImage(sitk.OtsuThreshold(image, 0, 1, OTSU_BINS)).astype(bool)
    inside = otsu & (sitk.GetArrayFromImage(image) > 0)
    if not inside.any():
        return array.astype(np.float32)
    mask = sitk.GetImageFromArray(inside.astype(np.uint8))
    mask.CopyInformation(image)
    factors = [max(1, min(settings.shrink_factor, n // MIN_SHRUNK_SIZE)) for n in image.GetSize()]
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations(list(settings.iterations))
    corrector.SetConvergenceThreshold(settings.convergence_threshold)
    corrector.SetNumberOfControlPoints([settings.control_points] * image.GetDimension())
    corrector.Execute(sitk.Shrink(image, factors), sitk.Shrink(mask, factors))
    corrected = image / sitk.Exp(corrector.GetLogBiasFieldAsImage(image))
    return _from_sitk(corrected, array.shape)


def denoise(array: np.ndarray, spacing: Sequence[float], settings: Denoising) -> np.ndarray:
    """One channel ``(*spatial)`` smoothed by an edge-preserving filter; float32, same shape.

    ``curvature_flow`` (``CurvatureFlowImageFilter``) moves iso-intensity contours by their curvature: noise, which
    makes them wiggle, is smoothed while straight edges stay. ``anisotropic``
    (``CurvatureAnisotropicDiffusionImageFilter``) diffuses intensities less across strong gradients
    (``settings.conductance`` times the image's mean gradient sets what counts as strong). Both take the largest
    time step the explicit scheme is stable with on this grid, ``min(spacing) / 2^(D+1)`` (ITK's bound), for
    ``settings.iterations`` steps.
    """
    import SimpleITK as sitk

    image = _to_sitk(array, spacing)
    if settings.method == "anisotropic":
        smoother = sitk.CurvatureAnisotropicDiffusionImageFilter()
        smoother.SetConductanceParameter(float(settings.conductance))  # type: ignore[arg-type]
    else:
        smoother = sitk.CurvatureFlowImageFilter()
    smoother.SetNumberOfIterations(settings.iterations)
    smoother.SetTimeStep(min(image.GetSpacing()) / 2 ** (image.GetDimension() + 1))
    return _from_sitk(smoother.Execute(image), array.shape)


def _to_sitk(array: np.ndarray, spacing: Sequence[float]):  # type: ignore[no-untyped-def]
    """A float32 SimpleITK image of one channel without its length-1 axes (a single slice is filtered as 2D: ITK's
    filters cannot shrink or differentiate along an axis of one voxel). Only the spacing matters to the filters."""
    import SimpleITK as sitk

    if len(spacing) != array.ndim:
        raise ValueError(f"{len(spacing)} spacings for a {array.ndim}D image")
    kept = [i for i, n in enumerate(array.shape) if n > 1]
    kept = kept if len(kept) >= 2 else list(range(array.ndim))  # ITK images have at least two axes
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.reshape([array.shape[i] for i in kept]).T, np.float32))
    image.SetSpacing([float(spacing[i]) for i in kept])
    return image


def _from_sitk(image, shape: tuple[int, ...]) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The array of a filtered :func:`_to_sitk` image, with its length-1 axes back (``shape``)."""
    import SimpleITK as sitk

    return np.asarray(sitk.GetArrayFromImage(image).T, dtype=np.float32).reshape(shape)
