"""Sliding windows equal whole-image prediction for a per-voxel model (2D, 3D, slices, images smaller than the
patch, sizes that are no multiple of it), and mirroring test-time augmentation (neutral for a flip-equivariant
model, the average of flipped predictions otherwise)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tests.helpers import conv
from vesalius.inference.sliding_window import predict_probabilities
from vesalius.inference.windows import tta_flips

pytestmark = pytest.mark.usefixtures("one_torch_thread")


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
    model = conv(len(shape), 2, 3)
    probabilities = predict_probabilities(model, image, patch, step=step, batch_size=3)
    assert probabilities.shape == (3, *shape) and probabilities.dtype == torch.float32
    assert torch.allclose(probabilities, _whole(model, image), atol=1e-6)


@pytest.mark.parametrize("slice_axis", [0, 1, 2])
def test_slice_by_slice_equals_a_2d_model_on_each_slice(slice_axis: int) -> None:
    shape = (5, 9, 7)
    image = np.random.default_rng(2).normal(size=(1, *shape)).astype(np.float32)
    model = conv(2, 1, 3)
    probabilities = predict_probabilities(model, image, (4, 4), slice_axis=slice_axis, batch_size=4)
    assert probabilities.shape == (3, *shape)
    for s in range(shape[slice_axis]):
        index = (slice(None), *(s if a == slice_axis else slice(None) for a in range(3)))
        assert torch.allclose(probabilities[index], _whole(model, np.ascontiguousarray(image[index])), atol=1e-6)


def test_bfloat16_autocast_stays_close_to_float32() -> None:
    image = np.random.default_rng(3).normal(size=(1, 12, 10, 9)).astype(np.float32)
    model = conv(3, 1, 2, kernel=3)
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
    model = conv(ndim, 1, 3, kernel=3)
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
    model = conv(len(shape), 1, 3, kernel=3, seed=6)  # a random kernel: not flip-equivariant
    # one window covering the image, so that mirroring each window is mirroring the image
    mirrored = predict_probabilities(model, image, shape, mirror_axes=axes)
    x = torch.from_numpy(image)[None]
    with torch.no_grad():
        logits = [torch.flip(model(torch.flip(x, [a + 2 for a in f])), [a + 2 for a in f]) for f in tta_flips(axes)]
    expected = torch.softmax(torch.stack(logits).mean(dim=0), dim=1)[0]
    assert torch.allclose(mirrored, expected, atol=1e-5)
    assert not torch.allclose(mirrored, predict_probabilities(model, image, shape), atol=1e-3)
