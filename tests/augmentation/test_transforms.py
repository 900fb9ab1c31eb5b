"""Batched augmentation: exactness when off, label values, image/label alignment, mirroring axes,
determinism, 2D and 3D, geometry of rotation and scaling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vesalius.augmentation import PatchSampler
from vesalius.augmentation import transforms as T
from vesalius.augmentation.transforms import AugmentationConfig, Augmenter, mirror, spatial_transform
from vesalius.errors import VesaliusError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


ALWAYS = {  # every augmentation on every sample
    "p_rotation": 1.0,
    "p_scaling": 1.0,
    "p_elastic": 1.0,
    "p_noise": 1.0,
    "p_blur": 1.0,
    "p_brightness": 1.0,
    "p_contrast": 1.0,
    "p_low_resolution": 1.0,
    "p_gamma_inverted": 1.0,
    "p_gamma": 1.0,
    "p_mirror": 0.5,
}
SPATIAL_ONLY = {"p_rotation": 1.0, "p_scaling": 1.0, "p_elastic": 1.0, "p_mirror": 0.5}


def _blobs(dims: int, batch: int = 4, size: int = 24, seed: int = 0) -> torch.Tensor:
    """``(B, 1, *spatial)`` uint8 labels: two balls (labels 1 and 3) per sample, an anisotropic shape."""
    shape = (size, size + 6, size - 4)[:dims]
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=0)
    out = np.zeros((batch, 1, *shape), dtype=np.uint8)
    for b in range(batch):
        for value, radius in ((1, 6.0), (3, 4.0)):
            centre = rng.uniform(6, np.asarray(shape) - 6)
            dist = np.sqrt(((grid - centre.reshape(-1, *[1] * dims)) ** 2).sum(0))
            out[b, 0][dist < radius] = value
    return torch.from_numpy(out)


def _images(labels: torch.Tensor, channels: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return labels.float().repeat(1, channels, *[1] * (labels.ndim - 2)) + torch.randn(
        labels.shape[0], channels, *labels.shape[2:], generator=g
    )


@pytest.mark.parametrize("dims", [2, 3])
def test_identity_when_every_probability_is_zero(dims: int) -> None:
    labels = _blobs(dims)
    images = _images(labels)
    out_images, out_labels = Augmenter(AugmentationConfig.off())(images, labels, seed=0)
    assert torch.equal(out_images, images) and torch.equal(out_labels, labels)
    assert out_images.data_ptr() != images.data_ptr()
    # a larger pre-patch: exactly its centre crop
    patch = (16, 20, 12)[:dims]
    out_images, out_labels = Augmenter(AugmentationConfig.off(), patch_size=patch)(images, labels, seed=0)
    crop = (
        slice(None),
        slice(None),
        *(slice((s - p) // 2, (s - p) // 2 + p) for s, p in zip(images.shape[2:], patch, strict=True)),
    )
    assert torch.equal(out_images, images[crop]) and torch.equal(out_labels, labels[crop])


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("mode", ["nearest", "linear"])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64])
def test_labels_keep_their_value_set(dims: int, mode: str, dtype: torch.dtype) -> None:
    labels = _blobs(dims).to(dtype)
    images = _images(labels)
    augment = Augmenter({**ALWAYS, "label_interpolation": mode})
    for seed in range(3):
        _, out = augment(images, labels, seed)
        assert out is not None and out.dtype == dtype
        values = set(torch.unique(out).tolist())
        assert values <= {0, 1, 3} and 3 in values


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_image_and_label_stay_aligned(dims: int, mode: str) -> None:
    labels = _blobs(dims, batch=6)
    values = torch.tensor([0, 1, 3], dtype=labels.dtype)
    images = (labels == values.view(1, 3, *[1] * dims)).float()  # the image *is* the label, one-hot
    patch = (20, 26, 16)[:dims]
    augment = Augmenter(AugmentationConfig.off(**SPATIAL_ONLY, label_interpolation=mode), patch_size=patch)
    for seed in range(2):
        out_images, out_labels = augment(images, labels, seed)
        assert out_images.shape == (6, 3, *patch) and out_labels is not None
        agree = (values[out_images.argmax(1, keepdim=True)] == out_labels).float().mean().item()
        assert agree > (0.999 if mode == "linear" else 0.98), agree
        assert not torch.equal(out_labels, labels[(..., *(slice(2, 2 + p) for p in patch))])


@pytest.mark.parametrize("axes", [(), (0,), (1,), (0, 2), (2, 1, 0)])
def test_mirroring_only_along_requested_axes(axes: tuple[int, ...]) -> None:
    labels = torch.arange(5 * 6 * 7, dtype=torch.int64).reshape(1, 1, 5, 6, 7).repeat(16, 1, 1, 1, 1)
    images = labels.float() * 0.5
    config = AugmentationConfig.off(p_mirror=0.5, mirror_axes=list(axes))
    out_images, out_labels = Augmenter(config)(images, labels, seed=1)
    assert out_labels is not None
    seen = set()
    for b in range(16):
        matches = [
            flips
            for flips in _subsets(axes)
            if torch.equal(out_labels[b], labels[b].flip([1 + a for a in flips]) if flips else labels[b])
        ]
        assert len(matches) == 1, f"sample {b} is not the input mirrored along a subset of {axes}"
        assert torch.equal(out_images[b], out_labels[b].float() * 0.5)  # image flipped the same way
        seen.add(matches[0])
    assert len(seen) > 1 or not axes
    forced, _ = mirror(images, None, 0, axes=(1,), p=1.0)
    assert torch.equal(forced, images.flip(3))


def _subsets(axes: tuple[int, ...]) -> list[tuple[int, ...]]:
    return [tuple(a for i, a in enumerate(axes) if mask >> i & 1) for mask in range(2 ** len(axes))]


@pytest.mark.parametrize("dims", [2, 3])
def test_same_seed_same_result_other_seed_other_result(dims: int) -> None:
    labels = _blobs(dims)
    images = _images(labels)
    augment = Augmenter(ALWAYS)
    a, b = augment(images, labels, 5), augment(images, labels, 5)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(augment(images, labels, g1)[0], augment(images, labels, g2)[0])
    c = augment(images, labels, 6)
    assert not torch.equal(a[0], c[0]) and not torch.equal(a[1], c[1])
    # the defaults run and keep shapes
    d = Augmenter()(images, labels, 0)
    assert d[0].shape == images.shape and d[1] is not None and d[1].shape == labels.shape


@pytest.mark.parametrize("dims", [2, 3])
def test_intensity_transforms_leave_labels_and_inputs_alone(dims: int) -> None:
    labels = _blobs(dims)
    images = _images(labels)
    before_images, before_labels = images.clone(), labels.clone()
    intensity = {k: v for k, v in ALWAYS.items() if k not in SPATIAL_ONLY}
    out_images, out_labels = Augmenter(AugmentationConfig.off(**intensity))(images, labels, 3)
    assert torch.equal(out_labels, labels)
    assert not torch.allclose(out_images, images)
    assert torch.equal(images, before_images) and torch.equal(labels, before_labels)  # inputs untouched
    Augmenter(ALWAYS)(images, labels, 3)
    assert torch.equal(images, before_images) and torch.equal(labels, before_labels)
    out, none = Augmenter(ALWAYS)(images, None, 3)
    assert none is None and out.shape == images.shape


def test_single_intensity_transforms() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 2, 12, 14, 10, generator=g) * 3 + 1
    dims = (2, 3, 4)
    out = T.gamma(x, 0, p=1.0)  # retains mean and std per channel
    assert torch.allclose(out.mean(dims), x.mean(dims), atol=1e-4)
    assert torch.allclose(out.std(dims), x.std(dims), rtol=1e-3)
    out = T.contrast(x, 0, p=1.0)  # keeps each channel's range
    assert (out.amin(dims) >= x.amin(dims) - 1e-5).all() and (out.amax(dims) <= x.amax(dims) + 1e-5).all()
    ratio = T.brightness(x, 0, p=1.0) / x
    assert torch.allclose(ratio, ratio[..., :1, :1, :1].expand_as(ratio), rtol=1e-5)
    assert ((ratio >= 0.75 - 1e-6) & (ratio <= 1.25 + 1e-6)).all()
    constant = torch.full((2, 1, 9, 8, 7), 2.5)
    assert torch.allclose(T.gaussian_blur(constant, 0, p=1.0, p_per_channel=1.0), constant)
    assert torch.allclose(T.low_resolution(constant, 0, p=1.0, p_per_channel=1.0), constant)
    assert T.gaussian_blur(x, 0, p=1.0, p_per_channel=1.0).std() < x.std() * 0.9
    noisy = T.gaussian_noise(x, 0, p=1.0, std=(0.1, 0.1))
    assert 0.08 < (noisy - x).std().item() < 0.12


def _ramp(shape: tuple[int, ...], slope: tuple[float, ...]) -> torch.Tensor:
    axes = torch.meshgrid(*[torch.arange(s, dtype=torch.float64) for s in shape], indexing="ij")
    return sum(a * (k - (s - 1) / 2) for a, k, s in zip(slope, axes, shape, strict=True)).float()[None, None]


@pytest.mark.parametrize("dims", [2, 3])
def test_rotation_is_rigid_and_scaling_zooms_in_voxel_space(dims: int) -> None:
    shape = (30, 40, 24)[:dims]
    slope = (1.0, 2.0, -3.0)[:dims]
    image = _ramp(shape, slope).repeat(6, 1, *[1] * dims)
    out_size = (12, 16, 10)[:dims]
    inner = (slice(None), slice(None), *(slice(2, s - 2) for s in out_size))

    def gradient_norms(x: torch.Tensor) -> torch.Tensor:
        grads = torch.gradient(x.double(), dim=list(range(2, 2 + dims)))
        return torch.sqrt(sum(g[inner] ** 2 for g in grads))

    expected = float(np.linalg.norm(slope))
    rotated, _ = spatial_transform(image, None, 0, AugmentationConfig.off(p_rotation=1.0), out_size)
    assert torch.allclose(gradient_norms(rotated), torch.tensor(expected, dtype=torch.float64), rtol=1e-3)
    assert not torch.allclose(
        rotated, image[(..., *(slice((s - o) // 2, (s - o) // 2 + o) for s, o in zip(shape, out_size, strict=True)))]
    )
    zoomed, _ = spatial_transform(image, None, 0, AugmentationConfig.off(p_scaling=1.0, scaling=(1.5, 1.5)), out_size)
    target = _ramp(out_size, tuple(1.5 * s for s in slope))  # coordinates x 1.5: zoom out, steeper ramp
    assert torch.allclose(zoomed, target.expand_as(zoomed), atol=1e-3)


def test_config_from_dict() -> None:
    config = AugmentationConfig.from_dict({"p_rotation": 0.5, "mirror_axes": [0, 1], "scaling": [0.8, 1.2]})
    assert config.mirror_axes == (0, 1) and config.scaling == (0.8, 1.2) and config.p_rotation == 0.5
    assert AugmentationConfig.from_dict(config.to_dict()) == config
    with pytest.raises(VesaliusError, match="p_rotaton"):
        AugmentationConfig.from_dict({"p_rotaton": 0.1})
    with pytest.raises(VesaliusError, match="label_interpolation"):
        AugmentationConfig.from_dict({"label_interpolation": "cubic"})
    with pytest.raises(VesaliusError, match="probability"):
        AugmentationConfig(p_noise=1.5)
    with pytest.raises(VesaliusError, match="reversed"):
        AugmentationConfig.from_dict({"scaling": [1.4, 0.7]})


@pytest.mark.parametrize("size", [(7, 9), (5, 8, 6)])
def test_affine_grid_matches_torch(size: tuple[int, ...]) -> None:
    d = len(size)
    theta = torch.randn(3, d, d + 1, generator=torch.Generator().manual_seed(0))
    expected = torch.nn.functional.affine_grid(theta, [3, 1, *size], align_corners=False)
    assert torch.allclose(T.affine_grid(theta, size), expected, atol=1e-5)


@pytest.mark.parametrize("invert", [False, True])
def test_gamma_matches_nnunet_formula(invert: bool) -> None:
    x = torch.randn(3, 2, 9, 8, 7, generator=torch.Generator().manual_seed(1)) * 2 + 0.5
    gen = torch.Generator().manual_seed(4)
    torch.rand(3, generator=gen)  # the per-sample draw, as in T.gamma
    gammas = T._split_uniform(gen, (3, 2), 0.7, 1.5)
    expected = torch.empty_like(x)
    for b in range(3):
        for c in range(2):
            v = (-x[b, c] if invert else x[b, c]).double()
            mean, std = v.mean(), v.std(correction=0)
            low, span = v.min(), v.max() - v.min()
            y = ((v - low) / (span + 1e-7)) ** gammas[b, c].item() * span + low
            y = (y - y.mean()) / (y.std(correction=0) + 1e-8) * std + mean
            expected[b, c] = (-y if invert else y).float()
    assert torch.allclose(T.gamma(x, 4, p=1.0, invert=invert), expected, atol=1e-4)


@pytest.mark.parametrize("dims", [2, 3])
def test_margin_leaves_no_empty_corners(dims: int) -> None:
    patch = (12, 14, 10)[:dims]
    config = AugmentationConfig.off(p_rotation=1.0, p_scaling=1.0, p_elastic=1.0)
    extra = config.margin(patch)
    assert all(e > 0 for e in extra)
    rng = np.random.default_rng(0)
    image = (10 + rng.random((1, *(80,) * dims))).astype(np.float32)  # in [10, 11] everywhere
    seg = np.zeros((1, *(80,) * dims), dtype=np.uint8)
    seg[(0, *(40,) * dims)] = 1  # foreground patches around it lie inside the case, margin included
    sampler = PatchSampler([(image, seg)], patch, 8, foreground_fraction=1.0, extra=extra)
    images, segs = sampler.sample(0)
    assert images.min() >= 10
    out, _ = Augmenter(config, patch_size=patch)(torch.from_numpy(images), torch.from_numpy(segs), seed=0)
    assert out.shape == (8, 1, *patch) and out.min() >= 10 - 1e-4
    assert AugmentationConfig.off().margin(patch) == (0,) * dims
