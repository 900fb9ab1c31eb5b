"""The NumPy sliding windows equal the torch ones (MONAI's) for a model whose output near a window border depends on
the border (a random 3-wide convolution with zero padding): so the windows, their order, their batching, their
weighting, the padding and the mirroring are the same. The module runs with torch and MONAI impossible to import."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Sequence
from itertools import product

import numpy as np
import pytest
import torch
from torch import nn

from tests.helpers import conv
from vesalius.inference import sliding_window as torch_sw
from vesalius.inference.windows import _window_starts, predict_probabilities, window_count

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _numpy(model: nn.Module) -> tuple[list[tuple[int, ...]], object]:
    """``model`` as a NumPy predictor that records the shape of every batch it is given."""
    calls: list[tuple[int, ...]] = []

    def predict(x: np.ndarray) -> np.ndarray:
        assert x.dtype == np.float32 and x.flags.c_contiguous
        calls.append(x.shape)
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()

    return calls, predict


def _both(model: nn.Module, image: np.ndarray, patch: Sequence[int], **kwargs: object) -> tuple[np.ndarray, np.ndarray]:
    """The runtime and the torch probabilities, with the torch path's Gaussian as the runtime's weights."""
    _, predict = _numpy(model)
    weights = torch_sw._gaussian(tuple(patch), "cpu").numpy()
    ours = predict_probabilities(predict, image, patch, weights, **kwargs)  # type: ignore[arg-type]
    theirs = torch_sw.predict_probabilities(model, image, patch, **kwargs).numpy()  # type: ignore[arg-type]
    return ours, theirs


CASES = [
    ((23, 30), (8, 12)),  # no multiple of the patch
    ((5, 7), (8, 8)),  # smaller than the patch
    ((5, 19), (8, 8)),  # smaller along one axis only
    ((16, 16), (8, 8)),  # a multiple of the patch
    ((11, 9, 13), (6, 6, 6)),
    ((4, 9, 3), (6, 6, 6)),  # smaller along two axes
    ((3, 4, 5), (6, 6, 6)),  # smaller along every axis
    ((6, 14, 7), (6, 5, 7)),  # equal to the patch along two axes
]


@pytest.mark.parametrize(("shape", "patch"), CASES)
@pytest.mark.parametrize("step", [0.5, 0.3, 0.75, 1.0])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_equals_the_torch_sliding_windows(
    shape: tuple[int, ...], patch: tuple[int, ...], step: float, batch_size: int
) -> None:
    image = np.random.default_rng(1).normal(size=(2, *shape)).astype(np.float32)
    model = conv(len(shape), 2, 3, kernel=3, seed=7)
    ours, theirs = _both(model, image, patch, step=step, batch_size=batch_size)
    assert ours.shape == (3, *shape) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)
    np.testing.assert_allclose(ours.sum(axis=0), 1.0, atol=1e-5)


@pytest.mark.parametrize(
    ("shape", "patch", "axes"),
    [
        ((14, 11), (8, 8), (0,)),
        ((14, 11), (8, 8), (0, 1)),
        ((9, 10, 7), (6, 6, 6), (0, 2)),
        ((7, 8, 9), (4, 5, 6), (0, 1, 2)),
    ],
)
@pytest.mark.parametrize("batch_size", [1, 3])
def test_mirroring_equals_the_torch_mirroring(
    shape: tuple[int, ...], patch: tuple[int, ...], axes: tuple[int, ...], batch_size: int
) -> None:
    image = np.random.default_rng(4).normal(size=(1, *shape)).astype(np.float32)
    model = conv(len(shape), 1, 3, kernel=3, seed=6)  # a random kernel: not flip-equivariant
    ours, theirs = _both(model, image, patch, mirror_axes=axes, batch_size=batch_size)
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)
    plain, _ = _both(model, image, patch, batch_size=batch_size)
    assert not np.allclose(ours, plain, atol=1e-3)  # the mirroring did something


@pytest.mark.parametrize("slice_axis", [0, 1, 2])
@pytest.mark.parametrize(("batch_size", "step", "mirror_axes"), [(1, 0.5, ()), (3, 0.3, (1,)), (4, 0.75, (0, 1))])
def test_slices_equal_the_torch_slices(
    slice_axis: int, batch_size: int, step: float, mirror_axes: tuple[int, ...]
) -> None:
    shape = (5, 9, 7)
    image = np.random.default_rng(2).normal(size=(2, *shape)).astype(np.float32)
    model = conv(2, 2, 3, kernel=3, seed=3)
    ours, theirs = _both(
        model, image, (4, 6), slice_axis=slice_axis, batch_size=batch_size, step=step, mirror_axes=mirror_axes
    )
    assert ours.shape == (3, *shape)
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)


def test_windows_of_several_slices_share_a_call() -> None:
    image = np.zeros((1, 3, 9, 6), np.float32)  # 3 slices along axis 0, 2 windows each of (6, 6) at step 0.5
    calls, predict = _numpy(conv(2, 1, 2, kernel=3))
    weights = np.ones((6, 6), np.float32)
    predict_probabilities(predict, image, (6, 6), weights, slice_axis=0, batch_size=4, mirror_axes=(0,))
    assert window_count((9, 6), (6, 6), 0.5) == 2
    assert calls == [(4, 1, 6, 6)] * 2 + [(2, 1, 6, 6)] * 2  # 6 windows by 4, each batch once per flip


@pytest.mark.parametrize(
    ("shape", "patch", "step", "count"),
    [
        ((64, 64, 64), (32, 32, 32), 0.5, 27),
        ((5, 7), (8, 8), 0.5, 1),
        ((23, 30), (8, 12), 0.3, 9 * 7),
    ],  # intervals int(8 * 0.3) = 2, int(12 * 0.3) = 3,
)
def test_window_count(shape: tuple[int, ...], patch: tuple[int, ...], step: float, count: int) -> None:
    assert window_count(shape, patch, step) == count
    calls, predict = _numpy(conv(len(shape), 1, 2))
    image = np.zeros((1, *shape), np.float32)
    predict_probabilities(predict, image, patch, np.ones(patch, np.float32), step=step)
    assert len(calls) == count


@pytest.mark.parametrize("step", [1.0, 0.75, 0.7, 0.5, 0.3, 0.1, 0.01])
def test_windows_are_placed_as_monai_places_them(step: float) -> None:
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    rng = np.random.default_rng(8)
    for _ in range(50):
        patch = tuple(int(p) for p in rng.integers(1, 20, size=3))
        padded = tuple(max(int(s), p) for s, p in zip(rng.integers(1, 60, size=3), patch, strict=True))
        interval = _get_scan_interval(padded, patch, 3, (1.0 - step,) * 3)
        expected = [tuple(s.start for s in window) for window in dense_patch_slices(padded, patch, interval)]
        assert list(product(*_window_starts(padded, patch, step))) == expected
        assert window_count(padded, patch, step) == len(expected)


def test_large_logits_give_a_finite_softmax() -> None:
    def predict(x: np.ndarray) -> np.ndarray:
        return np.concatenate([x * 1e4, -x * 1e4], axis=1)

    image = np.random.default_rng(0).normal(size=(1, 10, 10)).astype(np.float32)
    probabilities = predict_probabilities(predict, image, (4, 4), np.ones((4, 4), np.float32))
    assert np.all(np.isfinite(probabilities))
    np.testing.assert_allclose(probabilities.sum(axis=0), 1.0, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"step": 0.0}, "step"),
        ({"step": 1.5}, "step"),
        ({"patch_size": (4, 4, 4)}, "patch size"),
        ({"patch_size": (4,)}, "patch size"),
        ({"patch_size": (0, 4)}, "patch size"),
        ({"slice_axis": 0}, "slice axis"),  # a 2D image has no slices
        ({"mirror_axes": (2,)}, "mirror axes"),
        ({"mirror_axes": (-1,)}, "mirror axes"),
        ({"batch_size": 0}, "batch size"),
        ({"weights": np.ones((4, 5), np.float32)}, "weights"),
        ({"weights": np.zeros((4, 4), np.float32)}, "positive"),
        ({"predict": lambda x: x[:, :, :2]}, "predict returned"),
    ],
)
def test_wrong_arguments_raise(kwargs: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {
        "predict": lambda x: np.concatenate([x, -x], axis=1),
        "image": np.zeros((1, 6, 7), np.float32),
        "patch_size": (4, 4),
        "weights": np.ones((4, 4), np.float32),
    } | kwargs
    with pytest.raises(ValueError, match=message):
        predict_probabilities(**arguments)  # type: ignore[arg-type]


def test_slice_axis_out_of_range_raises() -> None:
    with pytest.raises(ValueError, match="slice axis"):
        predict_probabilities(lambda x: x, np.zeros((1, 4, 4, 4), np.float32), (4, 4), np.ones((4, 4)), slice_axis=3)


def test_runs_with_torch_and_monai_impossible_to_import() -> None:
    script = textwrap.dedent(
        """
        import sys
        from importlib.abc import MetaPathFinder

        class Block(MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "monai"):
                    raise ImportError(f"{name} is blocked")
                return None

        sys.meta_path.insert(0, Block())
        import numpy as np
        from vesalius.inference.windows import predict_probabilities

        image = np.random.default_rng(0).normal(size=(1, 9, 7, 5)).astype(np.float32)
        out = predict_probabilities(
            lambda x: np.concatenate([x, -x], axis=1), image, (4, 4), np.ones((4, 4)), mirror_axes=(0,), slice_axis=1
        )
        assert out.shape == (2, 9, 7, 5) and np.allclose(out.sum(axis=0), 1)
        assert not any(m.split(".")[0] in ("torch", "monai") for m in sys.modules), "torch or monai imported"
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
