"""Preprocessing: crop/resample/normalise, and the inverse that puts predictions back on the original grid."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vesalius.data.importers import import_dataset
from vesalius.data.synthetic import write_segmentation_dataset
from vesalius.io import Geometry, Image
from vesalius.io.locking import folder_lock
from vesalius.planning.plan import Normalization
from vesalius.planning.planner import plan_dataset
from vesalius.preprocessing.normalize import normalize
from vesalius.preprocessing.pipeline import preprocess_dataset, preprocess_image, restore_to_original
from vesalius.preprocessing.spatial import crop, grid_for_spacing
from vesalius.workspace import Workspace

ROTATION = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)


def _ellipsoid_case(spacing: tuple[float, float, float]) -> tuple[Image, Image]:
    shape = (40, 36, 14)
    grid = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing, strict=True)], indexing="ij")
    centre = [n * s / 2 for n, s in zip(shape, spacing, strict=True)]
    r = sum(((g - c) / rad) ** 2 for g, c, rad in zip(grid, centre, (9.0, 8.0, 10.0), strict=True))
    label = (r < 1).astype(np.uint8) + (r < 0.3).astype(np.uint8)
    body = sum(((g - c) / rad) ** 2 for g, c, rad in zip(grid, centre, (13.0, 12.0, 14.0), strict=True)) < 1
    rng = np.random.default_rng(0)
    image = (body * (100 + 50 * label) + rng.normal(0, 5, shape) * body).astype(np.float32)
    geometry = Geometry(spacing, (-20.0, 31.5, 7.25), ROTATION)
    return Image(image[None], geometry), Image(label[None], geometry)


def test_crop_moves_the_origin_to_the_first_kept_voxel() -> None:
    image, _ = _ellipsoid_case((0.7, 0.9, 2.5))
    box = (slice(3, 30), slice(5, 20), slice(2, 10))
    cropped = crop(image, box)
    world_before = image.geometry.affine() @ np.array([3, 5, 2, 1.0])
    assert np.allclose(cropped.geometry.affine() @ np.array([0, 0, 0, 1.0]), world_before)
    assert cropped.spatial_shape == (27, 15, 8)


def test_resampled_grid_covers_the_same_extent() -> None:
    image, _ = _ellipsoid_case((0.5, 0.5, 3.0))
    shape, geometry = grid_for_spacing(image, (1.0, 1.0, 1.0))
    assert shape == (20, 18, 42)
    corner_old = image.geometry.affine() @ np.array([-0.5, -0.5, -0.5, 1])
    corner_new = geometry.affine() @ np.array([-0.5, -0.5, -0.5, 1])
    assert np.allclose(corner_old, corner_new)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.7, 0.9, 2.5)])
def test_preprocess_then_restore_gives_the_original_grid_and_label(spacing: tuple[float, float, float]) -> None:
    image, label = _ellipsoid_case(spacing)
    normalization = (Normalization("zscore", use_nonzero_mask=True),)
    data, seg, props = preprocess_image(image, label, (1.0, 1.0, 1.0), normalization)
    assert data.dtype == np.float32 and seg is not None and seg.shape[1:] == data.shape[1:]
    assert props["shape"] == list(data.shape[1:])
    back = restore_to_original(seg, props, is_label=True)
    assert back.geometry == label.geometry  # exactly the original geometry
    assert back.spatial_shape == label.spatial_shape
    for value in (1, 2):
        a, b = back.array == value, label.array == value
        dice = 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())
        assert dice > (0.999 if spacing == (1.0, 1.0, 1.0) else 0.85), (value, dice)


def test_zscore_inside_the_nonzero_mask_leaves_the_outside_at_zero() -> None:
    x = np.zeros((1, 10, 10), np.float32)
    x[0, 2:8, 2:8] = np.arange(36).reshape(6, 6)
    mask = x[0] != 0
    out = normalize(x, [Normalization("zscore", use_nonzero_mask=True)], mask)
    inside = x[0][mask]
    assert np.allclose(out[0][mask], (inside - inside.mean()) / inside.std(), atol=1e-5)
    assert np.all(out[0][~mask] == 0)


def test_ct_normalisation_clips_then_standardises() -> None:
    x = np.array([[-2000.0, -100.0, 0.0, 500.0]], np.float32).reshape(1, 2, 2)
    out = normalize(x, [Normalization("ct", clip=(-100.0, 200.0), mean=50.0, std=100.0)])
    assert np.allclose(out.ravel(), [-1.5, -1.5, -0.5, 1.5])


def test_scale_maps_8bit_to_unit_range() -> None:
    x = np.array([[0, 51, 255]], np.uint8).reshape(1, 3, 1)
    out = normalize(x, [Normalization("scale", low=0.0, high=255.0)])
    assert np.allclose(out.ravel(), [0.0, 0.2, 1.0])


def test_cached_cases_are_made_again_when_the_plan_spacing_changes(tmp_path: Path) -> None:
    source = write_segmentation_dataset(tmp_path / "phantom", num_cases=2, seed=1)
    workspace = tmp_path / "ws"
    import_dataset(source, "phantom", workspace=workspace)
    plan, plan_path = plan_dataset("phantom", workspace, workers=1)
    folder = preprocess_dataset("phantom", "3d", workspace, workers=1)
    case = sorted(folder.glob("*_seg.npy"))[0].name.removesuffix("_seg.npy")
    first = json.loads((folder / f"{case}.json").read_text())
    stamp = (folder / f"{case}.npy").stat().st_mtime_ns

    assert preprocess_dataset("phantom", "3d", workspace, workers=1) == folder  # up to date: nothing is redone
    assert (folder / f"{case}.npy").stat().st_mtime_ns == stamp

    coarse = [2 * s for s in plan.configuration("3d").spacing]
    plan.with_configuration("3d", spacing=tuple(coarse)).save(plan_path)
    preprocess_dataset("phantom", "3d", workspace, workers=1)
    second = json.loads((folder / f"{case}.json").read_text())
    assert second["geometry"]["spacing"] == pytest.approx(coarse)
    assert second["original_shape"] == first["original_shape"]
    assert np.load(folder / f"{case}.npy").shape[1:] == tuple(second["shape"])
    assert all(b <= (a + 1) // 2 + 1 for a, b in zip(first["shape"], second["shape"], strict=True))


def test_a_second_caller_waits_for_the_first_and_leaves_its_writes_alone(tmp_path: Path) -> None:
    """Two trainings of one data set, started together, both preprocess it first: the later one must wait."""
    import threading

    source = write_segmentation_dataset(tmp_path / "phantom", num_cases=2, seed=3)
    workspace = tmp_path / "ws"
    import_dataset(source, "phantom", workspace=workspace)
    plan_dataset("phantom", workspace, workers=1)
    folder = Workspace(workspace).preprocessed_dir("phantom", "3d")
    in_flight = folder / ".tmp-being-written.npy"
    returned = threading.Event()

    def second_caller() -> None:
        preprocess_dataset("phantom", "3d", workspace, workers=1)
        returned.set()

    with folder_lock(folder):  # the first caller, in the middle of a write
        in_flight.write_bytes(b"half a case")
        thread = threading.Thread(target=second_caller)
        thread.start()
        assert not returned.wait(1.5), "the second caller did not wait for the lock"
        assert in_flight.read_bytes() == b"half a case", "the second caller removed a write in progress"
        in_flight.unlink()  # the first caller's write ends (renamed to its case's name)
    thread.join(timeout=120)
    assert returned.is_set()
    assert sorted(p.name for p in folder.glob("phantom_*.json")) == ["phantom_000.json", "phantom_001.json"]
    assert not list(folder.glob(".tmp-*"))


@pytest.mark.slow
def test_a_killed_preprocessing_leaves_no_half_state_and_resumes(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    source = write_segmentation_dataset(tmp_path / "phantom", num_cases=8, seed=2)
    for name in ("killed", "straight"):
        import_dataset(source, "phantom", workspace=tmp_path / name)
        plan_dataset("phantom", tmp_path / name, workers=1)
    reference = preprocess_dataset("phantom", "3d", tmp_path / "straight", workers=1)
    folder = tmp_path / "killed" / "preprocessed" / "phantom" / "3d"
    code = (
        "from vesalius.preprocessing.pipeline import preprocess_dataset\n"
        f"preprocess_dataset('phantom', '3d', {str(tmp_path / 'killed')!r}, workers=1)\n"
    )
    # a process group of its own, killed as a whole: its worker process must not outlive the test
    child = subprocess.Popen([sys.executable, "-c", code], env={**os.environ}, start_new_session=True)
    deadline = time.monotonic() + 120
    while child.poll() is None and len(list(folder.glob("*.json"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)  # plan.json and the first case are written
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    done = {p.stem for p in folder.glob("phantom_*.json")}
    assert 0 < len(done) < 8, "the kill came too early or too late"
    for case_id in done:  # a case whose .json exists is complete
        assert (folder / f"{case_id}.npy").is_file() and (folder / f"{case_id}_seg.npy").is_file()
    (folder / ".tmp-half.npy").write_bytes(b"half a case")  # what a kill during a write leaves behind
    preprocess_dataset("phantom", "3d", tmp_path / "killed", workers=1)
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".tmp")]
    for path in sorted(reference.glob("*.npy")):
        assert np.array_equal(np.load(path), np.load(folder / path.name)), path.name
    for path in sorted(reference.glob("phantom_*.json")):
        assert json.loads(path.read_text()) == json.loads((folder / path.name).read_text()), path.name
