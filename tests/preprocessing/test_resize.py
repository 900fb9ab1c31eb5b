"""NumPy linear resizing (:mod:`vesalius.preprocessing.resize`) equals torch's ``F.interpolate``; classification
image preparation runs without torch."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from vesalius.planning.plan import Normalization
from vesalius.preprocessing.classification import prepare_image
from vesalius.preprocessing.resize import resize_linear

ATOL = 1e-5


def _torch_resize(x: np.ndarray, size: tuple[int, ...], antialias: bool) -> np.ndarray:
    """``F.interpolate`` as ``prepare_image`` used to call it, on a ``(C, *spatial)`` array."""
    mode = "bilinear" if x.ndim == 3 else "trilinear"
    if antialias and size[-1] == 1 and size[0] > 1 and size[0] != x.shape[1]:
        # torch's CPU anti-aliased kernel repeats the first output row when the output is one column wide and the
        # height changes; the filter is separable and symmetric, so the transposed image gives the true answer.
        flipped = _torch_resize(np.ascontiguousarray(x.transpose(0, 2, 1)), size[::-1], antialias)
        return flipped.transpose(0, 2, 1)
    out = F.interpolate(torch.from_numpy(x)[None], size=size, mode=mode, align_corners=False, antialias=antialias)
    return out[0].numpy()


def _check(shape: tuple[int, ...], size: tuple[int, ...], antialias: bool, seed: int = 0) -> None:
    x = np.random.default_rng(seed).random(shape, dtype=np.float32)
    got = resize_linear(x, size, antialias=antialias)
    assert got.dtype == np.float32
    assert got.shape == (shape[0], *size)
    np.testing.assert_allclose(got, _torch_resize(x, size, antialias), rtol=0, atol=ATOL)


@pytest.mark.parametrize(
    ("shape", "size"),
    [
        ((1, 8, 8), (16, 16)),
        ((1, 5, 7), (13, 29)),
        ((1, 1, 1), (4, 6)),
        ((2, 3, 2), (40, 41)),
    ],
)
def test_2d_upsizing_matches_torch(shape: tuple[int, ...], size: tuple[int, ...]) -> None:
    for antialias in (False, True):
        _check(shape, size, antialias)


@pytest.mark.parametrize("antialias", [False, True])
@pytest.mark.parametrize(
    ("shape", "size"),
    [
        ((1, 64, 64), (32, 32)),
        ((1, 100, 77), (31, 10)),
        ((1, 257, 199), (224, 64)),
        ((1, 300, 300), (7, 3)),
        ((3, 96, 128), (24, 24)),
    ],
)
def test_2d_downsizing_matches_torch(shape: tuple[int, ...], size: tuple[int, ...], antialias: bool) -> None:
    _check(shape, size, antialias)


@pytest.mark.parametrize(
    ("shape", "size"),
    [
        ((1, 40, 10), (12, 33)),
        ((2, 9, 120), (50, 17)),
        ((1, 2, 200), (5, 1)),
        ((1, 200, 3), (1, 8)),
    ],
)
def test_2d_mixed_antialias_matches_torch(shape: tuple[int, ...], size: tuple[int, ...]) -> None:
    _check(shape, size, antialias=True)


@pytest.mark.parametrize(
    ("shape", "size"),
    [
        ((1, 4, 5, 6), (8, 11, 13)),  # up
        ((1, 32, 24, 40), (16, 7, 20)),  # down
        ((2, 10, 30, 6), (25, 12, 6)),  # mixed, one axis unchanged
        ((3, 1, 9, 2), (3, 1, 5)),  # size-1 axes in and out
    ],
)
def test_3d_matches_torch(shape: tuple[int, ...], size: tuple[int, ...]) -> None:
    _check(shape, size, antialias=False)


@pytest.mark.parametrize("antialias", [False, True])
@pytest.mark.parametrize("shape", [(2, 17, 23), (1, 5, 6, 7)])
def test_same_size_is_identity(shape: tuple[int, ...], antialias: bool) -> None:
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    np.testing.assert_array_equal(resize_linear(x, shape[1:], antialias=antialias), x)


@pytest.mark.parametrize("antialias", [False, True])
def test_size_one_along_an_axis(antialias: bool) -> None:
    _check((2, 30, 20), (1, 20), antialias)
    _check((2, 30, 20), (30, 1), antialias)
    _check((2, 30, 20), (1, 1), antialias)
    _check((1, 7, 1), (3, 1), antialias)


def test_channels_are_resized_independently() -> None:
    x = np.random.default_rng(2).random((4, 50, 40), dtype=np.float32)
    both = resize_linear(x, (20, 70), antialias=True)
    for c in range(4):
        # Equal up to float32 rounding: BLAS may sum a batch of channels in another order than one channel.
        np.testing.assert_allclose(
            both[c : c + 1], resize_linear(x[c : c + 1], (20, 70), antialias=True), rtol=1e-6, atol=1e-7
        )
    _check((4, 50, 40), (20, 70), antialias=True)


def test_other_dtypes_and_layouts() -> None:
    x = np.random.default_rng(3).random((2, 30, 20))
    ref = resize_linear(x.astype(np.float32), (11, 9), antialias=True)
    np.testing.assert_array_equal(resize_linear(x, (11, 9), antialias=True), ref)  # float64 in, float32 out
    x_fortran = np.asfortranarray(x.astype(np.float32))
    np.testing.assert_array_equal(resize_linear(x_fortran, (11, 9), antialias=True), ref)
    assert resize_linear(x, (11, 9)).flags.c_contiguous


@pytest.mark.parametrize(("shape", "size"), [((5, 5), (3, 3)), ((1, 5, 5), (3,)), ((1, 5, 5), (0, 3))])
def test_bad_shapes_raise(shape: tuple[int, ...], size: tuple[int, ...]) -> None:
    with pytest.raises(ValueError):
        resize_linear(np.zeros(shape, dtype=np.float32), size)


_sizes = st.integers(min_value=1, max_value=64)


@settings(max_examples=150, deadline=None)
@given(
    channels=st.integers(1, 3),
    shape=st.tuples(_sizes, _sizes),
    size=st.tuples(_sizes, _sizes),
    seed=st.integers(0, 2**16),
)
def test_2d_antialias_property(channels: int, shape: tuple[int, int], size: tuple[int, int], seed: int) -> None:
    _check((channels, *shape), size, antialias=True, seed=seed)


@settings(max_examples=100, deadline=None)
@given(
    shape=st.tuples(_sizes, _sizes, _sizes),
    size=st.tuples(_sizes, _sizes, _sizes),
    seed=st.integers(0, 2**16),
)
def test_3d_property(shape: tuple[int, int, int], size: tuple[int, int, int], seed: int) -> None:
    _check((2, *shape), size, antialias=False, seed=seed)


def test_prepare_image_matches_torch_pipeline() -> None:
    """``prepare_image`` gives what the torch-based version gave: anti-aliasing only on 2D shrinking."""
    rng = np.random.default_rng(4)
    scheme = [Normalization(scheme="scale", low=0.0, high=10.0)]
    for shape, size, antialias in [
        ((1, 90, 60), (32, 32), True),
        ((1, 20, 24), (32, 32), False),
        ((1, 20, 60), (32, 32), True),
        ((1, 40, 30, 20), (16, 16, 16), False),
    ]:
        x = rng.random(shape, dtype=np.float32) * 10
        got = prepare_image(x, scheme, size)
        np.testing.assert_allclose(got, _torch_resize(x / 10, size, antialias), rtol=0, atol=ATOL)


def test_classification_preparation_imports_without_torch() -> None:
    script = textwrap.dedent(
        """
        import sys

        class _NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "monai"):
                    raise ImportError(f"{name} is blocked in this test")
                return None

        sys.meta_path.insert(0, _NoTorch())
        import numpy as np
        from vesalius.planning.plan import Normalization
        from vesalius.preprocessing.classification import prepare_image

        out = prepare_image(
            np.ones((1, 40, 30), dtype=np.float32), [Normalization(scheme="scale", low=0.0, high=2.0)], (16, 16)
        )
        assert out.shape == (1, 16, 16) and out.dtype == np.float32, (out.shape, out.dtype)
        np.testing.assert_allclose(out, 0.5, atol=1e-6)
        assert not any(m.split(".")[0] in ("torch", "monai") for m in sys.modules), "torch got imported"
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
