"""Post-processing: largest connected component and hole filling."""

from __future__ import annotations

import numpy as np
import pytest

from vesalius.inference.postprocess import apply_postprocessing, fill_holes, keep_largest_component


def two_blobs() -> np.ndarray:
    """Class 1: blobs of 10 and 3 voxels; class 2: two single voxels (two components, never filtered here)."""
    labels = np.zeros((8, 8, 8), dtype=np.uint8)
    labels[0:2, 0:5, 0] = 1
    labels[6, 6, 5:8] = 1
    labels[4, 0, 0] = 2
    labels[4, 7, 7] = 2
    return labels


def test_keep_largest_component_removes_the_small_blob_only() -> None:
    labels = two_blobs()
    original = labels.copy()
    out = keep_largest_component(labels, [1])
    expected = original.copy()
    expected[6, 6, 5:8] = 0
    np.testing.assert_array_equal(out, expected)
    assert int((out == 1).sum()) == 10
    assert out.dtype == labels.dtype
    np.testing.assert_array_equal(labels, original)


@pytest.mark.parametrize(
    ("voxels", "face_kept"),
    [
        ([(0, 0), (1, 1), (1, 2)], [(1, 1), (1, 2)]),
        ([(0, 0, 0), (1, 1, 1), (1, 1, 2)], [(1, 1, 1), (1, 1, 2)]),
    ],
)
def test_connectivity_face_versus_full(voxels: list[tuple[int, ...]], face_kept: list[tuple[int, ...]]) -> None:
    """Voxels touching by a corner form one component with full connectivity, two with face connectivity."""
    labels = np.zeros((3,) * len(voxels[0]), dtype=np.int16)
    for voxel in voxels:
        labels[voxel] = 1
    np.testing.assert_array_equal(keep_largest_component(labels, [1], connectivity="full"), labels)
    expected = np.zeros_like(labels)
    for voxel in face_kept:
        expected[voxel] = 1
    np.testing.assert_array_equal(keep_largest_component(labels, [1], connectivity="face"), expected)


def test_unknown_connectivity_is_rejected() -> None:
    with pytest.raises(ValueError, match="connectivity"):
        keep_largest_component(two_blobs(), [1], connectivity="edge")  # type: ignore[arg-type]


def test_fill_holes_fills_background_but_not_another_class() -> None:
    labels = np.zeros((7, 7, 7), dtype=np.uint8)
    labels[1:6, 1:6, 1:6] = 1
    labels[2:5, 2:5, 2:5] = 0
    labels[3, 3, 3] = 2
    original = labels.copy()
    out = fill_holes(labels, [1])
    expected = np.zeros_like(labels)
    expected[1:6, 1:6, 1:6] = 1
    expected[3, 3, 3] = 2
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(labels, original)


@pytest.mark.parametrize("classes", [[1, 2], [2, 1]])
def test_fill_holes_gives_nested_holes_to_the_innermost_class(classes: list[int]) -> None:
    labels = np.zeros((9, 9, 9), dtype=np.uint8)
    labels[1:8, 1:8, 1:8] = 2
    labels[2:7, 2:7, 2:7] = 0
    labels[3:6, 3:6, 3:6] = 1
    labels[4, 4, 4] = 0
    expected = labels.copy()
    expected[1:8, 1:8, 1:8] = 2
    expected[3:6, 3:6, 3:6] = 1
    np.testing.assert_array_equal(fill_holes(labels, classes), expected)


def test_apply_postprocessing_fills_holes_when_asked() -> None:
    labels = np.zeros((6, 6), dtype=np.uint8)
    labels[1:4, 1:4] = 1
    labels[2, 2] = 0
    labels[5, 5] = 1
    expected = np.zeros_like(labels)
    expected[1:4, 1:4] = 1
    out = apply_postprocessing(labels, {"keep_largest_component": [1], "fill_holes": [1]})
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(apply_postprocessing(labels, {}), labels)
