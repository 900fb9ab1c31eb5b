"""Batched data augmentation in torch, on the device the batch is on (nnU-Net v2's standard set).

Tensors: images ``(B, C, *spatial)`` float (float32 recommended), labels ``(B, 1, *spatial)`` integer (uint8 or
int64), 2D (``spatial = (X, Y)``) or 3D (``(X, Y, Z)``), axes in the order of the preprocessed arrays. Every random
parameter is drawn per sample (and per channel where nnU-Net does), and each transform is applied to a sample with
its own probability; only the selected samples are computed (index, transform, write back), so the cost follows
the expected number of transformed samples, not the batch size.

Order (as nnU-Net v2's ``get_training_transforms``): spatial (rotation, scaling, elastic; one resampling that
also crops the output to ``patch_size``), Gaussian noise, Gaussian blur, multiplicative brightness, contrast,
simulated low resolution, inverted gamma, gamma, mirroring. Intensity transforms touch the images only.

Defaults (:class:`AugmentationConfig`, nnU-Net v2's): rotation p 0.2, 3D +-30 degrees about each axis, 2D +-180
degrees; scaling p 0.2 in [0.7, 1.4] (one factor for all axes; > 1 zooms out); elastic off; mirroring each axis with
p 0.5; noise p 0.1 (std up to 0.1; nnU-Net calls it variance but uses it as a standard deviation); blur p 0.2
(sigma 0.5-1 per axis, each channel with p 0.5); brightness p 0.15 (x 0.75-1.25); contrast p 0.15 (0.75-1.25, range
preserved); low resolution p 0.25 (zoom 0.5-1, nearest down, linear up, each channel with p 0.5); inverted gamma
p 0.1 and gamma p 0.3 (0.7-1.5, mean and std retained). Factor ranges that straddle 1 are sampled as nnU-Net's
``BGContrast``: below or above 1 with equal chance, then uniformly on that side.

Why not MONAI: MONAI's array and dictionary transforms (``RandAffined``, ``RandGaussianNoised``, ...) work on one
sample at a time (one ``grid_sample`` per sample and key, Python overhead per transform and sample, float64
resampling); there is no batched equivalent with per-sample parameters. Here one grid (:func:`affine_grid`, the
values of ``F.affine_grid`` built about 6x faster on the CPU), one ``grid_sample`` for the images and one for the
labels handle every spatially transformed sample of the batch, and intensity transforms are vectorised over samples
and channels. On the CPU ``grid_sample`` dominates either way, so the gain there is moderate (about 1.3-2x for a
batch of 8 3D patches, ``benchmarks/augmentation_speed.py``); on a GPU, the batch never leaves the device.

Randomness: ``seed`` is an int (a CPU ``torch.Generator`` is seeded with it) or a ``torch.Generator``. Small
per-sample parameters are drawn on the CPU (so choosing the samples needs no device synchronisation); large random
fields (noise, elastic control points) are drawn on the batch's device from a generator seeded by the CPU one. The
same seed on the same device gives the same result; a different device may give different (equally distributed)
draws.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch
import torch.nn.functional as F

from vesalius.errors import VesaliusError

__all__ = [
    "AugmentationConfig",
    "Augmenter",
    "affine_grid",
    "brightness",
    "contrast",
    "gamma",
    "gaussian_blur",
    "gaussian_noise",
    "low_resolution",
    "mirror",
    "spatial_transform",
]

Seed = int | torch.Generator


@dataclass(frozen=True)
class AugmentationConfig:
    """Probabilities (per sample) and ranges of every augmentation; defaults are nnU-Net v2's.

    ``p_*`` are per-sample probabilities. Angles are in degrees, elastic sizes in voxels of the input.
    ``mirror_axes`` are spatial axes (0-based: 0 is the first axis after the channel); ``None`` means all of them,
    ``()`` none. Use :meth:`AugmentationConfig.off` for a config with every probability zero.
    """

    # spatial
    p_rotation: float = 0.2
    rotation_3d: tuple[float, float, float] = (30.0, 30.0, 30.0)  # max |angle| about spatial axis 0, 1, 2; 0 = off
    rotation_2d: float = 180.0  # max |angle| in the plane
    p_scaling: float = 0.2
    scaling: tuple[float, float] = (0.7, 1.4)  # multiplies sampling coordinates: > 1 zooms out
    scale_axes_independently: bool = False
    p_elastic: float = 0.0
    elastic_magnitude: tuple[float, float] = (0.0, 3.0)  # std (voxels) of the control-point displacements
    elastic_spacing: float = 16.0  # voxels between control points
    label_interpolation: str = "nearest"  # "nearest", or "linear" (one-hot, linear, argmax: smoother edges)
    # mirroring
    p_mirror: float = 0.5  # per axis and sample
    mirror_axes: tuple[int, ...] | None = None
    # intensity (images only)
    p_noise: float = 0.1
    noise_std: tuple[float, float] = (0.0, 0.1)
    p_blur: float = 0.2
    blur_sigma: tuple[float, float] = (0.5, 1.0)
    blur_p_per_channel: float = 0.5
    p_brightness: float = 0.15
    brightness: tuple[float, float] = (0.75, 1.25)
    p_contrast: float = 0.15
    contrast: tuple[float, float] = (0.75, 1.25)
    p_low_resolution: float = 0.25
    low_resolution_zoom: tuple[float, float] = (0.5, 1.0)
    low_resolution_p_per_channel: float = 0.5
    p_gamma_inverted: float = 0.1
    p_gamma: float = 0.3
    gamma: tuple[float, float] = (0.7, 1.5)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.startswith("p_") and not 0.0 <= float(value) <= 1.0:
                raise VesaliusError(
                    f"augmentation setting {f.name}={value} is not a probability", remedy="use a value in [0, 1]"
                )
            if isinstance(value, tuple) and len(value) == 2 and f.name != "mirror_axes" and value[0] > value[1]:
                raise VesaliusError(f"augmentation range {f.name}={list(value)} is reversed", remedy="use [low, high]")
        if self.label_interpolation not in ("nearest", "linear"):
            raise VesaliusError(
                f"label_interpolation '{self.label_interpolation}' is not known", remedy="use 'nearest' or 'linear'"
            )

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> AugmentationConfig:
        """A config from (JSON-ready) overrides of the defaults; unknown keys are an error."""
        values = dict(values or {})
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise VesaliusError(f"unknown augmentation settings {unknown}", remedy=f"use some of {sorted(names)}")
        converted = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return replace(cls(), **converted)

    @classmethod
    def off(cls, **overrides: Any) -> AugmentationConfig:
        """Every probability zero (the identity, up to cropping), with ``overrides`` applied."""
        zero = {f.name: 0.0 for f in fields(cls) if f.name.startswith("p_")}
        return cls.from_dict({**zero, **overrides})

    def margin(self, patch_size: Sequence[int]) -> tuple[int, ...]:
        """Per-side margin (voxels, per axis) of a pre-patch that holds every point the spatial transform samples
        for a ``patch_size`` output: the worst rotation (over a fine grid of angles within the ranges), the largest
        scale, three standard deviations of the largest elastic displacement, and one voxel for interpolation.
        Pass it as :class:`vesalius.augmentation.PatchSampler`'s ``extra``. Zero where nothing can move.
        """
        d = len(patch_size)
        half = torch.tensor([s / 2 for s in patch_size], dtype=torch.float64)
        extent = half.clone()
        if self.p_rotation > 0:
            ranges = [self.rotation_2d] if d == 2 else list(self.rotation_3d)
            steps = 361 if d == 2 else 19
            axes = [torch.linspace(-r, r, steps if r > 0 else 1, dtype=torch.float64) for r in ranges]
            angles = torch.cartesian_prod(*axes).reshape(-1, len(ranges))
            rotations = _rotation_matrices(torch.deg2rad(angles))
            extent = torch.maximum(extent, (rotations.abs() @ half).amax(0))
        moves = self.p_rotation > 0 or self.p_scaling > 0 or self.p_elastic > 0
        if not moves:
            return (0,) * d
        scale = max(1.0, self.scaling[1]) if self.p_scaling > 0 else 1.0
        elastic = 3 * self.elastic_magnitude[1] if self.p_elastic > 0 else 0.0
        return tuple(
            max(0, math.ceil(e * scale + elastic - h + 1)) for e, h in zip(extent.tolist(), half.tolist(), strict=True)
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


# ---------------------------------------------------------------------------------------------------------------
# randomness helpers


def _cpu_generator(seed: Seed) -> torch.Generator:
    if isinstance(seed, torch.Generator):
        if seed.device.type == "cpu":
            return seed
        derived = int(torch.randint(0, 2**62, (1,), generator=seed, device=seed.device).item())
        return torch.Generator().manual_seed(derived)
    return torch.Generator().manual_seed(int(seed))


def _device_generator(gen: torch.Generator, device: torch.device) -> torch.Generator:
    """A generator on ``device`` seeded from ``gen`` (``gen`` itself on the CPU)."""
    derived = int(torch.randint(0, 2**62, (1,), generator=gen).item())
    if device.type == "cpu":
        return torch.Generator().manual_seed(derived)
    return torch.Generator(device=device).manual_seed(derived)


def _uniform(gen: torch.Generator, shape: Sequence[int], low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.rand(tuple(shape), generator=gen, dtype=torch.float64)


def _split_uniform(gen: torch.Generator, shape: Sequence[int], low: float, high: float) -> torch.Tensor:
    """nnU-Net's ``BGContrast``: if ``low < 1 < high``, below or above 1 with equal chance, then uniform there;
    otherwise uniform in ``[low, high]``. Always draws the same amount of random numbers."""
    below = torch.rand(tuple(shape), generator=gen) < 0.5
    lower = _uniform(gen, shape, low, min(high, 1.0))
    upper = _uniform(gen, shape, max(low, 1.0), high)
    plain = _uniform(gen, shape, low, high)
    return torch.where(below, lower, upper) if low < 1.0 < high else plain


def _selected(gen: torch.Generator, batch: int, p: float) -> torch.Tensor:
    """Indices (CPU, int64) of the samples drawn with probability ``p``; the draw always happens."""
    return (torch.rand(batch, generator=gen) < p).nonzero().flatten()


def _spatial_dims(x: torch.Tensor) -> int:
    d = x.ndim - 2
    if d not in (2, 3):
        raise ValueError(f"expected a (B, C, X, Y) or (B, C, X, Y, Z) tensor, got shape {tuple(x.shape)}")
    return d


def _view(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``(n, C)`` (or ``(n,)``) parameters as a tensor broadcasting against ``x`` ``(n, C, *spatial)``."""
    shape = tuple(values.shape) + (1,) * (x.ndim - values.ndim)
    return values.to(device=x.device, dtype=x.dtype).reshape(shape)


# ---------------------------------------------------------------------------------------------------------------
# spatial


def _rotation_matrices(angles: torch.Tensor) -> torch.Tensor:
    """``(n, d, d)`` rotations in array-axis coordinates: 2D ``angles (n, 1)``; 3D ``(n, 3)`` about axis 0, 1, 2
    (composed as ``R0 @ R1 @ R2``). Angles in radians."""
    n = angles.shape[0]
    cos, sin = torch.cos(angles), torch.sin(angles)
    if angles.shape[1] == 1:
        c, s = cos[:, 0], sin[:, 0]
        return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)
    result = torch.eye(3, dtype=angles.dtype).expand(n, 3, 3)
    for axis in range(3):
        a, b = [i for i in range(3) if i != axis]
        r = torch.eye(3, dtype=angles.dtype).repeat(n, 1, 1)
        r[:, a, a], r[:, a, b], r[:, b, a], r[:, b, b] = cos[:, axis], -sin[:, axis], sin[:, axis], cos[:, axis]
        result = result @ r
    return result


def _theta(
    matrices: torch.Tensor, in_size: Sequence[int], out_size: Sequence[int], shift: Sequence[float]
) -> torch.Tensor:
    """``affine_grid`` thetas ``(n, d, d + 1)`` for voxel-space maps ``w = A v + shift``, where ``v`` is the
    offset of an output voxel from the output centre and ``w`` that of the sampled point from the input centre."""
    d = len(in_size)
    d_in = torch.tensor([s / 2 for s in in_size], dtype=matrices.dtype)
    d_out = torch.tensor([s / 2 for s in out_size], dtype=matrices.dtype)
    linear = matrices * d_out.view(1, 1, d) / d_in.view(1, d, 1)
    translation = (torch.tensor(list(shift), dtype=matrices.dtype) / d_in).expand(matrices.shape[0], d)
    # affine_grid's coordinates run (last axis, ..., first axis): reverse both index orders.
    return torch.cat([linear.flip(1, 2), translation.flip(1).unsqueeze(-1)], dim=-1)


def affine_grid(theta: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``F.affine_grid(theta, (n, 1, *size), align_corners=False)``, built by broadcasting one axis at a time.

    Same values (to float rounding), about 6x faster on the CPU for 3D, where ``F.affine_grid`` multiplies an
    ``(n, D*H*W, 4)`` base grid by ``theta``. ``theta`` ``(n, d, d + 1)``; returns ``(n, *size, d)``.
    """
    n, d = theta.shape[0], len(size)
    grid = theta.new_empty((n, *size, d))
    bases = []  # normalised voxel centres; grid coordinate k runs along array axis d - 1 - k
    for k in range(d):
        axis = d - 1 - k
        shape = [1] * (d + 1)
        shape[1 + axis] = size[axis]
        centres = (torch.arange(size[axis], device=theta.device, dtype=theta.dtype) * 2 + 1) / size[axis] - 1
        bases.append(centres.view(shape))
    ones = [n] + [1] * d
    for i in range(d):
        value = theta[:, i, d].view(ones)
        for k in range(d):
            value = value + theta[:, i, k].view(ones) * bases[k]
        grid[..., i] = value
    return grid


def _interpolate_labels(labels: torch.Tensor, grid: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "nearest":
        out = F.grid_sample(labels.to(grid.dtype), grid, mode="nearest", padding_mode="zeros", align_corners=False)
        return out.to(labels.dtype)  # nearest copies input values: no rounding needed
    values = torch.unique(torch.cat([labels.new_zeros(1), labels.flatten()]))  # sorted, starts with 0
    shape = (1, -1) + (1,) * (labels.ndim - 2)
    one_hot = (labels == values.view(shape)).to(grid.dtype)  # (n, K, *in)
    out = F.grid_sample(one_hot, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return values[out.argmax(1, keepdim=True)]  # outside the input: all zero -> index 0 -> label 0


def spatial_transform(
    images: torch.Tensor,
    labels: torch.Tensor | None,
    seed: Seed,
    config: AugmentationConfig | None = None,
    out_size: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Random rotation, scaling and elastic deformation about the patch centre, then a centre crop.

    Args:
        images: ``(B, C, *in_size)`` floats, resampled linearly (bilinear/trilinear), zeros outside.
        labels: ``(B, 1, *in_size)`` integers or None, resampled with ``config.label_interpolation``.
        seed: int or generator.
        config: probabilities and ranges (``p_rotation``, ``rotation_3d``/``rotation_2d``, ``p_scaling``,
            ``scaling``, ``scale_axes_independently``, ``p_elastic``, ``elastic_magnitude``, ``elastic_spacing``).
        out_size: spatial output size, ``<= in_size`` per axis (default ``in_size``); the output is the centre of
            the transformed input. Samples drawn for no transform are only cropped (exact copies).

    Returns:
        images ``(B, C, *out_size)`` and labels ``(B, 1, *out_size)`` (or None), new tensors.
    """
    config = config or AugmentationConfig()
    gen = _cpu_generator(seed)
    d = _spatial_dims(images)
    b = images.shape[0]
    in_size = tuple(images.shape[2:])
    out = tuple(in_size if out_size is None else (int(s) for s in out_size))
    if len(out) != d or any(o > i or o < 1 for o, i in zip(out, in_size, strict=True)):
        raise ValueError(f"out_size {out} must have {d} values in [1, input size {in_size}]")
    start = [(i - o) // 2 for i, o in zip(in_size, out, strict=True)]
    crop = (slice(None), slice(None), *(slice(s, s + o) for s, o in zip(start, out, strict=True)))
    # the centre crop is the identity map with a shift of start - (in - out) / 2 voxels (0 or -1/2)
    shift = [s - (i - o) / 2 for s, i, o in zip(start, in_size, out, strict=True)]

    rotate = torch.rand(b, generator=gen) < config.p_rotation
    scale = torch.rand(b, generator=gen) < config.p_scaling
    elastic = torch.rand(b, generator=gen) < config.p_elastic
    max_angles = (config.rotation_2d,) if d == 2 else tuple(config.rotation_3d)
    angles = _uniform(gen, (b, len(max_angles)), -1.0, 1.0) * torch.tensor(max_angles, dtype=torch.float64)
    factors = _uniform(gen, (b, d if config.scale_axes_independently else 1), *config.scaling).expand(b, d)
    magnitude = _uniform(gen, (b,), *config.elastic_magnitude)
    field_gen = _device_generator(gen, images.device)

    out_images = images[crop].clone(memory_format=torch.contiguous_format)
    out_labels = None if labels is None else labels[crop].clone(memory_format=torch.contiguous_format)
    chosen = (rotate | scale | elastic).nonzero().flatten()
    if chosen.numel() == 0:
        return out_images, out_labels

    angles = torch.where(rotate[:, None], torch.deg2rad(angles), torch.zeros_like(angles))[chosen]
    factors = torch.where(scale[:, None], factors, torch.ones_like(factors))[chosen]
    matrices = _rotation_matrices(angles) @ torch.diag_embed(factors)
    theta = _theta(matrices, in_size, out, shift)
    dtype = images.dtype if images.dtype in (torch.float32, torch.float64) else torch.float32
    n = chosen.numel()
    grid = affine_grid(theta.to(device=images.device, dtype=dtype), out)
    if bool(elastic[chosen].any()):
        coarse = [max(2, math.ceil(o / config.elastic_spacing) + 1) for o in out]
        control = torch.randn((n, d, *coarse), generator=field_gen, device=images.device, dtype=dtype)
        amount = torch.where(elastic[chosen], magnitude[chosen], torch.zeros_like(magnitude[chosen]))
        control = control * amount.to(device=images.device, dtype=dtype).view(n, 1, *([1] * d))
        mode = "bilinear" if d == 2 else "trilinear"
        field = F.interpolate(control, size=out, mode=mode, align_corners=True)  # (n, d, *out), voxels
        half = torch.tensor([s / 2 for s in in_size], device=images.device, dtype=dtype).view(1, d, *([1] * d))
        grid = grid + (field / half).flip(1).movedim(1, -1)
    index = chosen.to(images.device)
    sampled = F.grid_sample(images[index].to(dtype), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    out_images[index] = sampled.to(images.dtype)
    if labels is not None and out_labels is not None:
        out_labels[index] = _interpolate_labels(labels[index], grid, config.label_interpolation)
    return out_images, out_labels


def mirror(
    images: torch.Tensor,
    labels: torch.Tensor | None,
    seed: Seed,
    axes: Sequence[int] | None = None,
    p: float = 0.5,
    *,
    inplace: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Flip each sample along each of ``axes`` (spatial, 0-based; None: all) with probability ``p``.

    Images ``(B, C, *spatial)`` and labels ``(B, 1, *spatial)`` (or None) are flipped together; returns them.
    """
    gen = _cpu_generator(seed)
    d = _spatial_dims(images)
    axes = tuple(range(d)) if axes is None else tuple(dict.fromkeys(int(a) for a in axes))  # no repeats
    if any(not 0 <= a < d for a in axes):
        raise ValueError(f"mirror axes {axes} must be spatial axes in [0, {d})")
    flips = torch.rand(images.shape[0], max(len(axes), 1), generator=gen) < p
    if not inplace:
        images = images.clone()
        labels = None if labels is None else labels.clone()
    # one gather-flip-scatter per distinct combination of flipped axes
    codes = (flips[:, : len(axes)].long() * (2 ** torch.arange(len(axes)))).sum(1)
    for code in sorted(set(codes.tolist()) - {0}):
        dims = [2 + a for k, a in enumerate(axes) if code >> k & 1]
        chosen = (codes == code).nonzero().flatten().to(images.device)
        images[chosen] = images[chosen].flip(dims)
        if labels is not None:
            labels[chosen] = labels[chosen].flip(dims)
    return images, labels


# ---------------------------------------------------------------------------------------------------------------
# intensity (images only). Each returns a new tensor unless ``inplace``.


def _prepare(images: torch.Tensor, inplace: bool) -> torch.Tensor:
    _spatial_dims(images)
    return images if inplace else images.clone()


def gaussian_noise(
    images: torch.Tensor, seed: Seed, p: float = 0.1, std: tuple[float, float] = (0.0, 0.1), *, inplace: bool = False
) -> torch.Tensor:
    """Add zero-mean Gaussian noise, std uniform in ``std`` per sample (same for all channels); ``(B, C, ...)``."""
    gen = _cpu_generator(seed)
    out = _prepare(images, inplace)
    chosen = _selected(gen, out.shape[0], p)
    sigma = _uniform(gen, (out.shape[0],), *std)
    field_gen = _device_generator(gen, out.device)
    if chosen.numel():
        index = chosen.to(out.device)
        sub = out[index]
        noise = torch.randn(sub.shape, generator=field_gen, device=out.device, dtype=out.dtype)
        out[index] = sub + noise * _view(sigma[chosen], sub)
    return out


def _gaussian_kernels(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """``(..., 2 * radius + 1)`` normalised Gaussian kernels for ``sigma (...)``."""
    x = torch.arange(-radius, radius + 1, dtype=sigma.dtype)
    k = torch.exp(-0.5 * (x / sigma.unsqueeze(-1)) ** 2)
    return k / k.sum(-1, keepdim=True)


def gaussian_blur(
    images: torch.Tensor,
    seed: Seed,
    p: float = 0.2,
    sigma: tuple[float, float] = (0.5, 1.0),
    p_per_channel: float = 0.5,
    *,
    inplace: bool = False,
) -> torch.Tensor:
    """Separable Gaussian blur, sigma uniform in ``sigma`` per sample, channel and axis; each channel of a chosen
    sample is blurred with probability ``p_per_channel``. Borders replicate. ``(B, C, ...)`` floats."""
    gen = _cpu_generator(seed)
    out = _prepare(images, inplace)
    b, c = out.shape[:2]
    d = out.ndim - 2
    chosen = _selected(gen, b, p)
    channels = torch.rand(b, c, generator=gen) < p_per_channel
    sigmas = _uniform(gen, (b, c, d), *sigma)
    if chosen.numel() == 0:
        return out
    index = chosen.to(out.device)
    sub = out[index]
    radius = max(1, math.ceil(3 * sigma[1]))
    kernels = _gaussian_kernels(sigmas[chosen], radius).to(device=out.device, dtype=out.dtype)  # (n, C, d, K)
    blurred = sub
    for axis in range(d):
        # a weighted sum of shifted copies: faster than a grouped convolution on the CPU, and fine on a GPU
        pad = [0, 0] * d
        pad[2 * (d - 1 - axis)] = pad[2 * (d - 1 - axis) + 1] = radius
        padded = F.pad(blurred, pad, mode="replicate")
        blurred = torch.zeros_like(sub)
        for k in range(2 * radius + 1):
            blurred.addcmul_(padded.narrow(2 + axis, k, sub.shape[2 + axis]), _view(kernels[:, :, axis, k], sub))
    out[index] = torch.where(_view(channels[chosen], sub).bool(), blurred, sub)
    return out


def brightness(
    images: torch.Tensor,
    seed: Seed,
    p: float = 0.15,
    factor: tuple[float, float] = (0.75, 1.25),
    *,
    inplace: bool = False,
) -> torch.Tensor:
    """Multiply each channel of a chosen sample by its own factor in ``factor``; ``(B, C, ...)`` floats."""
    gen = _cpu_generator(seed)
    out = _prepare(images, inplace)
    b, c = out.shape[:2]
    chosen = torch.rand(b, generator=gen) < p
    factors = _split_uniform(gen, (b, c), *factor)
    if bool(chosen.any()):  # one in-place pass over the batch; x * 1 is exact for the other samples
        out.mul_(_view(torch.where(chosen[:, None], factors, torch.ones_like(factors)), out))
    return out


def contrast(
    images: torch.Tensor,
    seed: Seed,
    p: float = 0.15,
    factor: tuple[float, float] = (0.75, 1.25),
    *,
    inplace: bool = False,
) -> torch.Tensor:
    """Scale each channel of a chosen sample about its mean by a factor in ``factor``, then clip to the channel's
    former [min, max] (nnU-Net's ``preserve_range``); ``(B, C, ...)`` floats."""
    gen = _cpu_generator(seed)
    out = _prepare(images, inplace)
    b, c = out.shape[:2]
    chosen = _selected(gen, b, p)
    factors = _split_uniform(gen, (b, c), *factor)
    if chosen.numel():
        index = chosen.to(out.device)
        sub = out[index]
        dims = tuple(range(2, sub.ndim))
        mean = sub.mean(dim=dims, keepdim=True)
        low, high = sub.amin(dim=dims, keepdim=True), sub.amax(dim=dims, keepdim=True)
        out[index] = torch.maximum(torch.minimum((sub - mean) * _view(factors[chosen], sub) + mean, high), low)
    return out


def low_resolution(
    images: torch.Tensor,
    seed: Seed,
    p: float = 0.25,
    zoom: tuple[float, float] = (0.5, 1.0),
    p_per_channel: float = 0.5,
    *,
    inplace: bool = False,
) -> torch.Tensor:
    """Simulate a coarser acquisition: downsample a channel by a zoom in ``zoom`` (same for all axes; nearest),
    then upsample back (bilinear/trilinear). Each channel of a chosen sample with probability ``p_per_channel``.
    ``(B, C, ...)`` floats."""
    gen = _cpu_generator(seed)
    out = _prepare(images, inplace)
    b, c = out.shape[:2]
    size = tuple(out.shape[2:])
    chosen = _selected(gen, b, p)
    channels = torch.rand(b, c, generator=gen) < p_per_channel
    zooms = _uniform(gen, (b, c), *zoom)
    mode = "bilinear" if len(size) == 2 else "trilinear"
    for i in chosen.tolist():
        for ch in channels[i].nonzero().flatten().tolist():
            small = [max(1, round(s * float(zooms[i, ch]))) for s in size]
            down = F.interpolate(out[i : i + 1, ch : ch + 1], size=small, mode="nearest-exact")
            out[i, ch] = F.interpolate(down, size=size, mode=mode, align_corners=False)[0, 0]
    return out


def _mean_std(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (population) std over the spatial axes of ``(n, C, *spatial)``, kept as ``(n, C, 1, ...)``.

    Two passes (mean, then mean squared deviation): several times faster than ``Tensor.std`` on the CPU.
    """
    dims = tuple(range(2, x.ndim))
    mean = x.mean(dim=dims, keepdim=True)
    return mean, (x - mean).square().mean(dim=dims, keepdim=True).sqrt()


def gamma(
    images: torch.Tensor,
    seed: Seed,
    p: float = 0.3,
    gamma_range: tuple[float, float] = (0.7, 1.5),
    invert: bool = False,
    *,
    inplace: bool = False,
) -> torch.Tensor:
    """Gamma on each channel of a chosen sample rescaled to [0, 1], then mapped back to its range, with mean and
    std restored (nnU-Net's ``retain_stats``). ``invert`` applies it to the negated image (nnU-Net's inverted
    gamma). ``(B, C, ...)`` floats."""
    gen = _cpu_generator(seed)
    out = _prepare(images, inplace)
    b, c = out.shape[:2]
    chosen = _selected(gen, b, p)
    gammas = _split_uniform(gen, (b, c), *gamma_range)
    if chosen.numel():
        index = chosen.to(out.device)
        sub = out[index]
        dims = tuple(range(2, sub.ndim))
        sign = -1.0 if invert else 1.0
        mean, std = _mean_std(sub)
        low, high = sub.amin(dim=dims, keepdim=True), sub.amax(dim=dims, keepdim=True)
        span = high - low
        # t = (sign * x - min(sign * x)) / span in [0, 1]; t ** gamma as exp(gamma * log t) (vectorised with a
        # per-channel exponent; log 0 = -inf gives 0)
        t = torch.addcmul(-(high if invert else low) * sign / (span + 1e-7), sub, sign / (span + 1e-7))
        t = t.clamp_(min=0.0).log_().mul_(_view(gammas[chosen], sub)).exp_()
        # y = t * span + min(sign * x), standardised to the mean and std of sign * x, then times sign again;
        # all affine in t: one pass
        t_mean, t_std = _mean_std(t)
        scale = sign * std * span / (span * t_std + 1e-8)
        out[index] = torch.addcmul(mean - scale * t_mean, t, scale)
    return out


# ---------------------------------------------------------------------------------------------------------------


class Augmenter:
    """nnU-Net's training augmentation for batches, from an :class:`AugmentationConfig` (or a dict of overrides).

    Args:
        config: the settings (default: nnU-Net v2's).
        patch_size: spatial size of the output; inputs may be larger pre-patches (see
            :class:`vesalius.augmentation.PatchSampler`'s ``extra``) whose centre is cropped after the spatial
            transform. Default: the input size.
    """

    def __init__(
        self, config: AugmentationConfig | dict[str, Any] | None = None, patch_size: Sequence[int] | None = None
    ) -> None:
        self.config = config if isinstance(config, AugmentationConfig) else AugmentationConfig.from_dict(config)
        self.patch_size = None if patch_size is None else tuple(int(s) for s in patch_size)

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor | None, seed: Seed
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Augment one batch.

        Args:
            images: ``(B, C, *in_size)`` floats on any device.
            labels: ``(B, 1, *in_size)`` integers (or None), same device.
            seed: int or ``torch.Generator``; the same seed gives the same result.

        Returns:
            images ``(B, C, *patch_size)`` and labels ``(B, 1, *patch_size)`` (or None), new tensors on the same
            device with the input dtypes.
        """
        cfg = self.config
        gen = _cpu_generator(seed)
        if labels is not None and (labels.shape[0] != images.shape[0] or labels.shape[2:] != images.shape[2:]):
            raise ValueError(f"labels {tuple(labels.shape)} do not match images {tuple(images.shape)}")
        x, y = spatial_transform(images, labels, gen, cfg, self.patch_size)
        x = gaussian_noise(x, gen, cfg.p_noise, cfg.noise_std, inplace=True)
        x = gaussian_blur(x, gen, cfg.p_blur, cfg.blur_sigma, cfg.blur_p_per_channel, inplace=True)
        x = brightness(x, gen, cfg.p_brightness, cfg.brightness, inplace=True)
        x = contrast(x, gen, cfg.p_contrast, cfg.contrast, inplace=True)
        x = low_resolution(
            x, gen, cfg.p_low_resolution, cfg.low_resolution_zoom, cfg.low_resolution_p_per_channel, inplace=True
        )
        x = gamma(x, gen, cfg.p_gamma_inverted, cfg.gamma, invert=True, inplace=True)
        x = gamma(x, gen, cfg.p_gamma, cfg.gamma, invert=False, inplace=True)
        return mirror(x, y, gen, cfg.mirror_axes, cfg.p_mirror, inplace=True)
