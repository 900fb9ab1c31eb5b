"""Preprocess a data set for one plan configuration, and put predictions back on the original grid.

Per case: crop to the non-zero region (all channels), apply the plan's intensity filters if any (N4 bias-field
correction, denoising: :mod:`vesalius.preprocessing.filters`), resample to the plan's spacing, normalise, and save
``CASE.npy`` (float32 ``(C, *spatial)``), ``CASE_seg.npy`` (uint8 ``(1, *spatial)``) and ``CASE.json`` (crop box,
original geometry and shape, the grid after cropping and after resampling). The arrays are memory-mappable
(``np.load(mmap_mode="r")``). Cases are processed in parallel processes, one case in memory per process.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from vesalius.data.dataset import Case, Dataset
from vesalius.errors import VesaliusError
from vesalius.io import Geometry, Image
from vesalius.io.atomic import atomic_path, write_json_atomic
from vesalius.io.image import nonzero_box
from vesalius.io.locking import folder_lock
from vesalius.planning.plan import ChannelFilters, Normalization, Plan
from vesalius.preprocessing.filters import apply_filters
from vesalius.preprocessing.normalize import normalize
from vesalius.preprocessing.spatial import crop, grid_for_spacing, resample_to, uncrop
from vesalius.workspace import Workspace


def preprocess_image(
    image: Image,
    label: Image | None,
    spacing: Sequence[float],
    normalization: Sequence[Normalization],
    filters: Sequence[ChannelFilters] | None = None,
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Crop to the non-zero region, filter (``filters``: one entry per channel, or ``None``), resample to
    ``spacing`` (every image axis) and normalise one case.

    The filters run on the cropped image's own grid, before resampling and normalisation (why:
    :mod:`vesalius.preprocessing.filters`); the crop box and the non-zero mask are those of the image as given, so
    that denoising, which spreads intensities into the zero background, changes neither.

    Returns the image array ``(C, *resampled)``, the label array ``(1, *resampled)`` or ``None``, and the
    properties that :func:`restore_to_original` needs (crop box, geometries and shapes).
    """
    spacing = tuple(spacing)
    box = nonzero_box(image.array)
    cropped = crop(image, box)
    nonzero = np.any(cropped.array != 0, axis=0)
    if filters is not None:
        cropped = cropped.with_array(apply_filters(cropped.array, cropped.geometry.spacing, filters))
    shape, geometry = grid_for_spacing(cropped, spacing)
    resampled = resample_to(cropped, shape, geometry)
    mask = None
    if any(n.use_nonzero_mask for n in normalization):
        mask_image = resample_to(cropped.with_array(nonzero[None].astype(np.uint8)), shape, geometry, is_label=True)
        mask = mask_image.array[0].astype(bool)
    data = normalize(resampled.array, normalization, mask)
    seg = None
    if label is not None:
        seg = resample_to(crop(label, box), shape, geometry, is_label=True).array.astype(np.uint8)
    properties = {
        "original_geometry": image.geometry.to_dict(),
        "original_shape": list(image.spatial_shape),
        "crop_box": [[b.start, b.stop] for b in box],
        "cropped_geometry": cropped.geometry.to_dict(),
        "cropped_shape": list(cropped.spatial_shape),
        "geometry": geometry.to_dict(),
        "shape": list(shape),
    }
    return data, seg, properties


def restore_to_original(array: np.ndarray, properties: dict[str, Any], *, is_label: bool, fill: float = 0) -> Image:
    """Map a ``(C, *preprocessed)`` array (labels or probabilities) back onto the case's original grid."""
    grid = Image(array, Geometry.from_dict(properties["geometry"]))
    cropped_geometry = Geometry.from_dict(properties["cropped_geometry"])
    back = resample_to(grid, tuple(properties["cropped_shape"]), cropped_geometry, is_label=is_label)
    box = tuple(slice(a, b) for a, b in properties["crop_box"])
    full = uncrop(back.array, box, tuple(properties["original_shape"]), fill)
    return Image(full, Geometry.from_dict(properties["original_geometry"]))


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path, ".npy") as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def _preprocess_one(args: tuple[Dataset, Case, Plan, str, Path]) -> str:
    dataset, case, plan, config, folder = args
    image, label = dataset.read_case(case)
    spacing = plan.configuration(config).resampling_spacing
    data, seg, properties = preprocess_image(image, label, spacing, plan.normalization, plan.filters)
    _save_npy(folder / f"{case.case_id}.npy", data)
    if seg is not None:
        _save_npy(folder / f"{case.case_id}_seg.npy", seg)
    write_json_atomic(folder / f"{case.case_id}.json", properties)
    return case.case_id


def _preprocessing_settings(plan: Plan, config: str) -> dict[str, Any]:
    """The parts of a plan that a preprocessed case depends on (target spacing, normalisation, channels, filters)."""
    return {
        "spacing": plan.configuration(config).resampling_spacing,
        "normalization": plan.normalization,
        "channels": plan.channels,
        "filters": plan.filters,
    }


def _drop_stale_cases(folder: Path, plan: Plan, config: str) -> None:
    """Delete the cached cases of ``folder`` when they were made with other preprocessing settings (or with a plan
    that no longer reads)."""
    made_with = folder / "plan.json"
    if not made_with.is_file():
        return
    try:
        previous = Plan.load(made_with)
        if config in previous.configurations and _preprocessing_settings(previous, config) == _preprocessing_settings(
            plan, config
        ):
            return
    except VesaliusError:
        pass
    for path in [*folder.glob("*.npy"), *folder.glob("*.json")]:
        path.unlink()


def preprocess_dataset(
    name: str,
    config: str,
    workspace: str | Path | Workspace | None = None,
    *,
    workers: int = 2,
    on_case: Any = None,
) -> Path:
    """Preprocess every case of ``name`` for plan configuration ``config``; returns the output folder.

    Resumable: cases already done (their ``.json`` exists) are skipped, and temporary files of writes a killed run
    left unfinished are removed. The folder's ``plan.json`` records the
    plan the cases were made with; when the plan's spacing, normalisation, channels or filters changed since, the
    cached cases are made again. Every training calls this first, so several trainings of one data set started
    together (one per fold) would clean up and write each other's files: the folder is locked
    (:func:`~vesalius.io.locking.folder_lock`), and the later callers wait, then find the cases done.
    """
    from vesalius.planning.planner import load_plan

    ws = Workspace.resolve(workspace)
    dataset = Dataset.load(ws.dataset_dir(name))
    plan = load_plan(name, ws)
    plan.configuration(config)  # a clear error for a configuration the plan does not have
    folder = ws.preprocessed_dir(name, config)
    with folder_lock(folder):
        for leftover in folder.glob(".tmp-*"):  # a write that a killed run did not finish
            leftover.unlink()
        _drop_stale_cases(folder, plan, config)
        plan.save(folder / "plan.json")
        # A case is done when its .json exists: it is written last.
        jobs = [
            (dataset, c, plan, config, folder) for c in dataset.cases if not (folder / f"{c.case_id}.json").exists()
        ]
        if jobs:
            with ProcessPoolExecutor(max_workers=max(1, min(workers, len(jobs)))) as pool:
                for case_id in pool.map(_preprocess_one, jobs):
                    if on_case:
                        on_case(case_id)
    return folder
