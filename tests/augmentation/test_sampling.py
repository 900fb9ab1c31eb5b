"""Patch sampling: shapes, determinism, the foreground fraction and its centring, padding, 2D patches from 3D cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vesalius.augmentation import PatchSampler

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _case(
    shape: tuple[int, ...], channels: int = 2, seed: int = 0, blob: tuple[int, ...] | None = None, value: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Random image ``(C, *shape)`` and a seg with one small foreground cube of ``value`` at ``blob``."""
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(channels, *shape)).astype(np.float32)
    seg = np.zeros((1, *shape), dtype=np.uint8)
    if blob is not None:
        seg[(0, *(slice(b, b + 2) for b in blob))] = value
    return image, seg


def _cases_3d() -> list[tuple[np.ndarray, np.ndarray]]:
    return [
        _case((40, 36, 30), seed=0, blob=(5, 30, 3)),
        _case((32, 40, 28), seed=1, blob=(25, 4, 20), value=2),
        _case((36, 30, 32), seed=2),  # no foreground
    ]


@pytest.mark.parametrize("dims", [2, 3])
def test_sampler_shapes_and_dtypes(dims: int) -> None:
    shape = (30, 26, 22)[:dims]
    patch = (12, 10, 8)[:dims]
    sampler = PatchSampler([_case(shape, channels=3, blob=(4,) * dims)], patch, 5, seed=1)
    images, segs = sampler.sample(0)
    assert images.shape == (5, 3, *patch) and images.dtype == np.float32
    assert segs.shape == (5, 1, *patch) and segs.dtype == np.uint8
    assert images.flags["C_CONTIGUOUS"] and segs.flags["C_CONTIGUOUS"]


def test_sampler_is_deterministic() -> None:
    cases = _cases_3d()
    a = PatchSampler(cases, (16, 16, 16), 4, seed=3)
    b = PatchSampler(cases, (16, 16, 16), 4, seed=3)
    first, again = a.sample(7), b.sample(7)
    assert all(np.array_equal(x, y) for x, y in zip(first, again, strict=True))
    a.sample(8)  # drawing other steps in between changes nothing
    assert all(np.array_equal(x, y) for x, y in zip(first, a.sample(7), strict=True))
    assert not np.array_equal(first[0], a.sample(9)[0])
    assert not np.array_equal(first[0], PatchSampler(cases, (16, 16, 16), 4, seed=4).sample(7)[0])
    rng = np.random.default_rng((3, 7))
    assert np.array_equal(a.sample(rng)[0], first[0])


@pytest.mark.parametrize(
    ("batch", "fraction", "expected"),
    [(1, 1 / 3, 0), (2, 1 / 3, 1), (3, 1 / 3, 1), (8, 1 / 3, 3), (4, 0.0, 0), (4, 1.0, 4)],
)
def test_number_of_foreground_samples(batch: int, fraction: float, expected: int) -> None:
    sampler = PatchSampler([_case((20, 20, 20), blob=(3, 3, 3))], (8, 8, 8), batch, foreground_fraction=fraction)
    assert sampler.num_foreground == expected


def test_foreground_samples_contain_foreground() -> None:
    cases = _cases_3d()[:2]  # both with a 2x2x2 foreground cube far from the centre
    sampler = PatchSampler(cases, (12, 12, 12), 3, foreground_fraction=1 / 3, seed=0)
    random_hits = 0
    for step in range(40):
        _, segs = sampler.sample(step)
        assert segs[-1].any(), "the foreground sample holds no foreground"
        random_hits += int(segs[0].any()) + int(segs[1].any())
    assert random_hits < 40, "random patches should mostly miss an 8-voxel object"


def test_foreground_patch_is_centred_on_the_voxel() -> None:
    image, seg = _case((40, 40, 40), blob=None)
    seg[0, 20, 17, 23] = 5  # one voxel, away from the borders
    sampler = PatchSampler([(image, seg)], (10, 12, 8), 2, foreground_fraction=1.0)
    _, segs = sampler.sample(0)
    assert segs[0, 0, 5, 6, 4] == 5 and segs[1, 0, 5, 6, 4] == 5
    near_border = seg.copy()
    near_border[:] = 0
    near_border[0, 1, 38, 0] = 1  # the patch is clipped to the case but still holds the voxel
    _, segs = PatchSampler([(image, near_border)], (10, 12, 8), 2, foreground_fraction=1.0).sample(0)
    assert segs[0, 0, 1, 10, 0] == 1


def test_foreground_class_choice_covers_every_class() -> None:
    image, seg = _case((30, 30, 30))
    seg[0, 2:4, 2:4, 2:4] = 1
    seg[0, 25:27, 25:27, 25:27] = 2
    sampler = PatchSampler([(image, seg)], (8, 8, 8), 4, foreground_fraction=1.0)
    seen = set()
    for step in range(10):
        _, segs = sampler.sample(step)
        for s in segs:
            seen |= set(np.unique(s).tolist()) - {0}
    assert seen == {1, 2}


def test_small_case_is_padded_symmetrically() -> None:
    image, seg = _case((4, 5, 3), channels=1, blob=(0, 0, 0))
    sampler = PatchSampler([(image, seg)], (8, 8, 8), 3)
    for step in range(3):
        images, segs = sampler.sample(step)
        for j in range(3):  # pad 4, 3, 5 -> before 2, 1, 2 (nnU-Net puts the odd voxel after)
            inner = (slice(2, 6), slice(1, 6), slice(2, 5))
            assert np.array_equal(images[j, 0][inner], image[0])
            assert np.array_equal(segs[j, 0][inner], seg[0])
            outside = np.ones((8, 8, 8), dtype=bool)
            outside[inner] = False
            assert not images[j, 0][outside].any() and not segs[j, 0][outside].any()


def test_extra_margin_keeps_the_central_crop_distribution() -> None:
    image, seg = _case((30, 30, 30), channels=1)
    seg[0, 1, 28, 15] = 1
    sampler = PatchSampler([(image, seg)], (8, 8, 8), 6, foreground_fraction=0.5, extra=(3, 2, 0))
    assert sampler.output_size == (14, 12, 8)
    for step in range(10):
        images, segs = sampler.sample(step)
        assert images.shape == (6, 1, 14, 12, 8)
        central = segs[:, :, 3:11, 2:10, :]
        assert central[3:].reshape(3, -1).any(axis=1).all()  # the voxel is in the final patch, not only the margin
    # random pre-patches reach outside the case by at most the margin: their centre crop is always inside
    wide = PatchSampler([(image + 10, seg)], (28, 28, 28), 4, foreground_fraction=0.0, extra=4)
    for step in range(5):
        images, _ = wide.sample(step)
        assert (images[:, :, 4:-4, 4:-4, 4:-4] != 0).all()


def test_2d_patches_from_3d_cases() -> None:
    image, seg = _case((20, 24, 16), channels=2)
    seg[0, 10, 5, 9] = 3
    sampler = PatchSampler([(image, seg)], (8, 6), 4, foreground_fraction=0.5, slice_axis=1)
    images, segs = sampler.sample(0)
    assert images.shape == (4, 2, 8, 6) and segs.shape == (4, 1, 8, 6)
    assert (segs[2:] == 3).reshape(2, -1).any(axis=1).all()
    assert np.array_equal(images[-1, :, 0:8, 0:6], image[:, 6:14, 5, 6:12])  # centred on (10, 9) in-plane


def test_memory_mapped_cases(tmp_path: Path) -> None:
    image, seg = _case((20, 22, 18), blob=(5, 5, 5))
    np.save(tmp_path / "a.npy", image)
    np.save(tmp_path / "a_seg.npy", seg)
    sampler = PatchSampler.from_folder(tmp_path, ["a"], (8, 8, 8), 2, seed=0)
    assert isinstance(sampler.cases[0][0], np.memmap)
    images, segs = sampler.sample(0)
    in_memory = PatchSampler([(image, seg)], (8, 8, 8), 2, seed=0).sample(0)
    assert np.array_equal(images, in_memory[0]) and np.array_equal(segs, in_memory[1])


def test_sampler_rejects_mismatched_inputs() -> None:
    image, seg = _case((10, 10, 10))
    with pytest.raises(ValueError, match="seg shape"):
        PatchSampler([(image, seg[:, :5])], (4, 4, 4), 2)
    with pytest.raises(ValueError, match="patch_size"):
        PatchSampler([(image, seg)], (4, 4), 2)
