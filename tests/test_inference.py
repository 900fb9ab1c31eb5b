"""Inference: sliding windows equal whole-image prediction for a per-voxel model (2D, 3D, slices, images smaller
than the patch, sizes that are no multiple of it), mirroring test-time augmentation (neutral for a flip-equivariant
model, the average of flipped predictions otherwise), and whole cases predicted back onto their native grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from vesalius.data.synthetic import make_segmentation_case
from vesalius.inference.predict import predict_image
from vesalius.inference.sliding_window import predict_probabilities, tta_flips
from vesalius.io import Geometry, Image

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _conv(ndim: int, channels: int, classes: int, kernel: int = 1, seed: int = 0) -> nn.Module:
    """A fixed random convolution (zero padding, same size out), float32."""
    torch.manual_seed(seed)
    return (nn.Conv2d if ndim == 2 else nn.Conv3d)(channels, classes, kernel, padding=kernel // 2)


def _whole(model: nn.Module, image: np.ndarray) -> torch.Tensor:
    """Softmax of ``model`` applied to the whole ``(C, *spatial)`` image at once."""
    with torch.no_grad():
        return torch.softmax(model(torch.from_numpy(image)[None]), dim=1)[0]


@pytest.mark.parametrize(
    ("shape", "patch"),
    [
        ((23, 30), (8, 12)),  # no multiple of the patch
        ((5, 7), (8, 8)),  # smaller than the patch
        ((5, 19), (8, 8)),  # smaller along one axis only
        ((11, 9, 13), (6, 6, 6)),
        ((4, 9, 3), (6, 6, 6)),
    ],
)
@pytest.mark.parametrize("step", [0.5, 0.3])
def test_sliding_windows_equal_the_whole_image_for_a_per_voxel_model(
    shape: tuple[int, ...], patch: tuple[int, ...], step: float
) -> None:
    image = np.random.default_rng(1).normal(size=(2, *shape)).astype(np.float32)
    model = _conv(len(shape), 2, 3)
    probabilities = predict_probabilities(model, image, patch, step=step, batch_size=3)
    assert probabilities.shape == (3, *shape) and probabilities.dtype == torch.float32
    assert torch.allclose(probabilities, _whole(model, image), atol=1e-6)


@pytest.mark.parametrize("slice_axis", [0, 1, 2])
def test_slice_by_slice_equals_a_2d_model_on_each_slice(slice_axis: int) -> None:
    shape = (5, 9, 7)
    image = np.random.default_rng(2).normal(size=(1, *shape)).astype(np.float32)
    model = _conv(2, 1, 3)
    probabilities = predict_probabilities(model, image, (4, 4), slice_axis=slice_axis, batch_size=4)
    assert probabilities.shape == (3, *shape)
    for s in range(shape[slice_axis]):
        index = (slice(None), *(s if a == slice_axis else slice(None) for a in range(3)))
        assert torch.allclose(probabilities[index], _whole(model, np.ascontiguousarray(image[index])), atol=1e-6)


def test_bfloat16_autocast_stays_close_to_float32() -> None:
    image = np.random.default_rng(3).normal(size=(1, 12, 10, 9)).astype(np.float32)
    model = _conv(3, 1, 2, kernel=3)
    full = predict_probabilities(model, image, (8, 8, 8))
    fast = predict_probabilities(model, image, (8, 8, 8), autocast_dtype=torch.bfloat16)
    assert fast.dtype == torch.float32
    assert torch.allclose(fast, full, atol=2e-2)


def test_tta_flips_lists_every_combination_once() -> None:
    assert tta_flips(()) == [()]
    assert tta_flips((0, 2)) == [(), (0,), (2,), (0, 2)]
    assert len(tta_flips((0, 1, 2))) == 8


def _symmetric_conv(ndim: int) -> nn.Module:
    """A 3-wide convolution whose kernel is symmetric under every flip: the model is flip-equivariant."""
    model = _conv(ndim, 1, 3, kernel=3)
    with torch.no_grad():
        w = model.weight
        for axis in range(2, 2 + ndim):
            w.copy_((w + torch.flip(w, [axis])) / 2)
    return model


@pytest.mark.parametrize(("shape", "patch", "axes"), [((14, 11), (8, 8), (0, 1)), ((9, 10, 7), (6, 6, 6), (0, 2))])
def test_mirroring_does_not_change_a_flip_equivariant_model(
    shape: tuple[int, ...], patch: tuple[int, ...], axes: tuple[int, ...]
) -> None:
    image = np.random.default_rng(4).normal(size=(1, *shape)).astype(np.float32)
    model = _symmetric_conv(len(shape))
    plain = predict_probabilities(model, image, patch)
    mirrored = predict_probabilities(model, image, patch, mirror_axes=axes, batch_size=2)
    assert torch.allclose(mirrored, plain, atol=1e-5)


@pytest.mark.parametrize(("shape", "axes"), [((10, 12), (0,)), ((10, 12), (0, 1)), ((6, 7, 5), (0, 2))])
def test_mirroring_averages_the_logits_of_the_flipped_predictions(
    shape: tuple[int, ...], axes: tuple[int, ...]
) -> None:
    image = np.random.default_rng(5).normal(size=(1, *shape)).astype(np.float32)
    model = _conv(len(shape), 1, 3, kernel=3, seed=6)  # a random kernel: not flip-equivariant
    # one window covering the image, so that mirroring each window is mirroring the image
    mirrored = predict_probabilities(model, image, shape, mirror_axes=axes)
    x = torch.from_numpy(image)[None]
    with torch.no_grad():
        logits = [torch.flip(model(torch.flip(x, [a + 2 for a in f])), [a + 2 for a in f]) for f in tta_flips(axes)]
    expected = torch.softmax(torch.stack(logits).mean(dim=0), dim=1)[0]
    assert torch.allclose(mirrored, expected, atol=1e-5)
    assert not torch.allclose(mirrored, predict_probabilities(model, image, shape), atol=1e-3)


# ---------------------------------------------------------------------------------------------------------------
# whole cases

SCALE = 400.0  # image intensity: 0 outside the body, 100 + 100 * label inside
CENTRES = (0.125, 0.5, 0.75)  # normalised intensity of each class (background covers 0 and 0.25)


def _oracle(ndim: int) -> nn.Module:
    """A 1x1 convolution whose argmax is the class with the nearest centre to the (scaled) intensity."""
    model = _conv(ndim, 1, len(CENTRES))
    c = torch.tensor(CENTRES)
    sharpness = 200.0
    with torch.no_grad():
        model.weight.copy_((sharpness * c).reshape(model.weight.shape))
        model.bias.copy_(-sharpness * c**2 / 2)  # logit_k = -s (x - c_k)^2 / 2 up to a term common to all k
    return model


def _encoded_case(
    ndim: int, shape: tuple[int, ...], spacing: tuple[float, ...], geometry: Geometry | None = None
) -> tuple[Image, Image]:
    """A synthetic case whose image encodes its label: 0 outside the body, 100 + 100 * label inside."""
    image, label = make_segmentation_case(7, ndim=ndim, shape=shape, spacing=spacing)
    body = (image.array > 0) | (label.array > 0)
    encoded = np.where(body, 100.0 + 100.0 * label.array, 0.0).astype(np.float32)
    geometry = geometry or image.geometry
    return Image(encoded, geometry), Image(label.array, geometry)


def _plan(configurations: dict) -> dict:
    return {"normalization": [{"scheme": "scale", "low": 0.0, "high": SCALE}], "configurations": configurations}


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / (a.sum() + b.sum()))


@pytest.mark.parametrize(
    ("ndim", "shape", "config", "configuration"),
    [
        (3, (30, 26, 14), "3d", {"spacing": [1.0, 1.0, 2.5], "patch_size": [16, 16, 8], "mirror_axes": [0, 1]}),
        (2, (50, 44), "2d", {"spacing": [0.8, 0.8], "patch_size": [32, 32]}),
        (
            3,
            (30, 26, 14),
            "2d",
            {"spacing": [1.0, 1.0], "spacing_full": [1.0, 1.0, 2.5], "patch_size": [16, 16], "slice_axis": 2},
        ),
    ],
)
def test_a_case_on_the_plan_grid_is_predicted_exactly(
    ndim: int, shape: tuple, config: str, configuration: dict
) -> None:
    spacing = tuple(configuration.get("spacing_full", configuration["spacing"]))
    image, label = _encoded_case(ndim, shape, spacing)
    labels, probabilities = predict_image(
        _oracle(2 if config == "2d" else 3), image, _plan({config: configuration}), config, return_probabilities=True
    )
    assert labels.geometry == image.geometry and labels.array.dtype == np.uint8
    assert np.array_equal(labels.array, label.array)
    assert probabilities.geometry == image.geometry and probabilities.array.shape == (3, *shape)
    assert np.allclose(probabilities.array.sum(axis=0), 1.0, atol=1e-5)
    assert np.array_equal(probabilities.array.argmax(axis=0)[None], label.array)


def test_an_anisotropic_oblique_case_comes_back_on_its_own_grid() -> None:
    direction = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    geometry = Geometry((0.8, 0.7, 2.6), (-12.5, 40.25, 3.0), direction)
    image, label = _encoded_case(3, (36, 40, 14), geometry.spacing, geometry)
    plan = _plan({"3d": {"spacing": [1.0, 1.0, 2.0], "patch_size": [16, 16, 8]}})
    labels = predict_image(_oracle(3), image, plan, "3d", mirror_axes=(0,), step=0.5, batch_size=2)
    assert labels.geometry == image.geometry  # exactly, not just close
    assert labels.spatial_shape == image.spatial_shape and labels.array.dtype == np.uint8
    assert (labels.array == label.array).mean() > 0.99
    for value in (1, 2):
        assert _dice(labels.array == value, label.array == value) > 0.8, value
