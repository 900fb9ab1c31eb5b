"""The box around a CT's tissue that sliding windows cover: its bounds by hand, and whole predictions that skip the air
and still give the label back exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tests.helpers import trained_segmentation
from tests.inference.test_segmentation import _encoded_case, _oracle
from vesalius.inference.image import segment_image
from vesalius.inference.roi import tissue_box
from vesalius.inference.segmentation import predict_image
from vesalius.io import Image
from vesalius.planning.plan import Normalization

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: HU-like: the training foreground lies in 50-450, air (-1000) clips to the floor 50, i.e. (50 - 0) / 400 = 0.125
CT = Normalization("ct", clip=(50.0, 450.0), mean=0.0, std=400.0)
MRI = Normalization("zscore")


def _normalised(shape: tuple[int, ...], tissue: tuple[slice, ...]) -> np.ndarray:
    data = np.full((1, *shape), (50.0 - 0.0) / 400.0, np.float32)  # air: the floor
    data[(0, *tissue)] = 0.6
    return data


def test_the_box_is_the_tissue_grown_by_half_a_window() -> None:
    data = _normalised((100, 100, 60), (slice(30, 40), slice(20, 50), slice(10, 20)))
    assert tissue_box(data, [CT], (16, 16, 8)) == (slice(22, 48), slice(12, 58), slice(6, 24))
    # at the grid's edge the margin stops there, and a box shorter than a window grows to one
    data = _normalised((100, 100, 60), (slice(0, 5), slice(90, 100), slice(10, 20)))
    assert tissue_box(data, [CT], (16, 16, 8)) == (slice(0, 16), slice(82, 100), slice(6, 24))


def test_the_box_holds_at_least_one_window_inside_the_grid() -> None:
    data = _normalised((100, 100, 60), (slice(2, 3), slice(50, 51), slice(58, 60)))
    # tissue + margin: [0, 23) x [20, 81) x [38, 60); a window of 40 x 60 x 40 needs 40, 60 and 40 voxels
    assert tissue_box(data, [CT], (40, 60, 40)) == (slice(0, 40), slice(20, 81), slice(20, 60))


def test_a_2d_network_on_a_3d_grid_gets_no_margin_across_its_slices() -> None:
    data = _normalised((100, 100, 60), (slice(30, 40), slice(20, 50), slice(10, 20)))
    assert tissue_box(data, [CT], (16, 16), slice_axis=2) == (slice(22, 48), slice(12, 58), slice(10, 20))


def test_only_ct_channels_define_tissue_and_no_box_means_the_whole_grid() -> None:
    data = _normalised((60, 60, 30), (slice(30, 40), slice(20, 50), slice(10, 20)))
    assert tissue_box(data, [MRI], (16, 16, 8)) is None  # MRI: its zero background is cropped by preprocessing
    both = np.concatenate([np.random.default_rng(0).normal(size=data.shape).astype(np.float32), data])
    assert tissue_box(both, [MRI, CT], (16, 16, 8)) == tissue_box(data, [CT], (16, 16, 8)) is not None
    air = _normalised((60, 60, 30), (slice(0, 0),) * 3)
    assert tissue_box(air, [CT], (16, 16, 8)) is None  # no tissue: predict everything as the model would
    full = _normalised((60, 60, 30), (slice(0, 60), slice(0, 60), slice(0, 30)))
    assert tissue_box(full, [CT], (16, 16, 8)) is None


class _Counting(nn.Module):
    """Wraps a model and counts the input voxels it sees."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.voxels = model, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.voxels += x[:, 0].numel()
        return self.model(x)


def _ct_case_in_air() -> tuple[Image, np.ndarray]:
    """The encoded synthetic case (body 100, classes 200 and 300) in the middle of a field of view of air."""
    image, label = _encoded_case(3, (30, 26, 14), (1.0, 1.0, 2.5))
    pad = ((0, 0), (24, 24), (20, 28), (0, 0))
    array = np.pad(image.array, pad)
    array[array == 0] = -1000.0  # outside the body: air
    return Image(array, image.geometry), np.pad(label.array, pad)


def test_a_ct_in_air_is_predicted_exactly_from_a_part_of_the_windows() -> None:
    image, label = _ct_case_in_air()
    trained = trained_segmentation(
        "3d",
        ({"scheme": "ct", "clip": [50.0, 450.0], "mean": 0.0, "std": 400.0},),
        spacing=[1.0, 1.0, 2.5],
        patch_size=[16, 16, 8],
        mirror_axes=[],
    )
    model = _Counting(_oracle(3))
    labels = predict_image(model, image, trained, step=0.5, batch_size=2)
    np.testing.assert_array_equal(labels.array, label)
    with_box = model.voxels

    whole = _Counting(_oracle(3))
    labels_whole = predict_image(whole, image, trained, step=0.5, batch_size=2, roi=False)
    np.testing.assert_array_equal(labels_whole.array, label)
    assert with_box < 0.6 * whole.voxels  # the air around the body took more than 40 % of the windows


def test_outside_the_box_the_answer_is_background_whatever_the_network_says() -> None:
    image, _ = _ct_case_in_air()

    def always_foreground(data: np.ndarray) -> np.ndarray:
        probabilities = np.zeros((3, *data.shape[1:]), np.float32)
        probabilities[2] = 1.0
        return probabilities

    labels, probabilities = segment_image(
        image, (1.0, 1.0, 2.5), [CT], always_foreground, return_probabilities=True, window=(16, 16, 8)
    )
    assert probabilities is not None
    box = tissue_box(np.where(image.array > 50, 1.0, 0.125).astype(np.float32), [CT], (16, 16, 8))
    assert box is not None
    inside = np.zeros(image.spatial_shape, bool)
    inside[box] = True
    np.testing.assert_array_equal(labels.array[0] == 2, inside)
    np.testing.assert_allclose(probabilities.array[0][~inside], 1.0)
    np.testing.assert_allclose(probabilities.array.sum(axis=0), 1.0)
