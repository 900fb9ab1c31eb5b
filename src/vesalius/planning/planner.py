"""From a fingerprint and a compute budget to a plan: a JSON file a person can read and edit.

A plan (:class:`vesalius.planning.plan.Plan`) holds the normalisation per channel and one configuration per way of
training (``"2d"``, ``"3d"``): target spacing, patch size, batch size, strides and kernels per stage, features per
stage, the number of iterations the budget allows (or the data set needs, when fewer) and the time the data set
is expected to need, the network family (``network``), the layout of the first stage
(``stem``) and the axes augmentation may mirror (in the configuration's patch axes); ``training`` suggests the
optimizer and schedule for the planned device; ``filters``, only when asked for (``n4``, ``denoise``), the intensity
filters of each channel. Every number comes from a rule in :mod:`vesalius.planning.rules`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from vesalius.data.dataset import Dataset
from vesalius.errors import VesaliusError
from vesalius.io.atomic import write_json_atomic
from vesalius.planning.fingerprint import Fingerprint, compute_fingerprint
from vesalius.planning.plan import Plan
from vesalius.planning.rules import (
    Rules,
    features_per_stage,
    intensity_filters,
    iterations_needed,
    load_rules,
    mirror_axes,
    network_family,
    network_stem,
    normalization,
    patch_and_batch,
    seconds_per_iteration,
    target_spacing,
    topology,
    training_defaults,
)
from vesalius.workspace import Workspace


def make_plan(
    fingerprint: Fingerprint,
    dataset: Dataset,
    *,
    device: str = "cpu",
    time_budget_s: float | None = None,
    memory_gb: float | None = None,
    rules: Rules | None = None,
    n4: bool = False,
    denoise: str | None = None,
) -> Plan:
    """The plan for ``dataset`` on ``device`` within ``time_budget_s`` seconds; ``n4`` and ``denoise`` ask for
    intensity filters (:func:`vesalius.planning.rules.intensity_filters`)."""
    rules = rules or load_rules()
    dev_key = check_compute(device, time_budget_s, memory_gb)
    check_denoising(denoise, rules)
    budget = float(time_budget_s or rules["default_time_budget_s"][dev_key])
    memory = float(memory_gb or rules["devices"][dev_key]["memory_gb"])
    spacings = np.asarray(fingerprint.spacings, dtype=float)
    shapes = np.asarray(fingerprint.shapes_after_crop, dtype=float)
    spacing = target_spacing(spacings, shapes, rules)
    resampled = np.median(shapes * spacings / np.asarray(spacing), axis=0)
    smallest = 2 * rules["min_feature_map"]
    if resampled.max() < smallest:
        raise VesaliusError(
            f"the images of '{dataset.name}' are too small to plan a network for (median "
            f"{' x '.join(f'{s:.0f}' for s in resampled)} "
            f"voxels; the smallest patch is {smallest} per side)",
            remedy="segment images of at least a few tens of voxels per side",
        )
    mirror = mirror_axes(fingerprint.class_centroids, dataset.spatial_dims, rules)
    configurations: dict[str, Any] = {}
    if dataset.spatial_dims == 3:
        configurations["3d"] = _configuration(
            "3d", tuple(spacing), tuple(resampled), fingerprint.num_cases, dev_key, budget, memory, rules
        )
        configurations["3d"]["mirror_axes"] = list(mirror)
    # 2D works on slices across the coarsest axis; on ties the last (axial for RAS/LPS scans)
    slice_axis = len(spacing) - 1 - int(np.argmax(spacing[::-1])) if dataset.spatial_dims == 3 else None
    in_plane = [i for i in range(len(spacing)) if i != slice_axis]
    config_2d = _configuration(
        "2d",
        tuple(spacing[i] for i in in_plane),
        tuple(resampled[i] for i in in_plane),
        fingerprint.num_cases * (int(resampled[slice_axis]) if slice_axis is not None else 1),
        dev_key,
        budget,
        memory,
        rules,
    )
    config_2d["mirror_axes"] = [in_plane.index(k) for k in mirror if k in in_plane]
    config_2d["slice_axis"] = slice_axis
    config_2d["spacing_full"] = list(spacing)
    configurations["2d"] = config_2d
    norms = [
        normalization(m, fingerprint.crop_shrink, fingerprint.intensity[i], rules)
        for i, m in enumerate(fingerprint.modalities)
    ]
    if n4 and not any(n["scheme"] == "zscore" for n in norms):
        raise VesaliusError(
            f"N4 corrects the bias field of MRI-like channels; '{dataset.name}' has "
            f"{', '.join(fingerprint.modalities)} (normalised as {', '.join(n['scheme'] for n in norms)})",
            remedy="plan without --n4",
        )
    return Plan.from_json(
        {
            "dataset": dataset.name,
            "spatial_dims": dataset.spatial_dims,
            "channels": dataset.channels,
            "labels": {str(k): v for k, v in dataset.labels.items()},
            "normalization": norms,
            "budget": {"device": dev_key, "time_budget_s": budget, "memory_gb": memory},
            "training": training_defaults(dev_key, rules),
            "configurations": configurations,
            "filters": intensity_filters(norms, n4, denoise, rules),
        }
    )


def check_denoising(denoise: str | None, rules: Rules) -> None:
    """Refuse a denoising method that ``intensity_filters`` does not name."""
    methods = [m for m in rules["intensity_filters"] if m != "n4"]
    if denoise is not None and denoise not in methods:
        raise VesaliusError(f"unknown denoising method '{denoise}'", remedy=f"use --denoise {' or '.join(methods)}")


def _configuration(
    key: str,
    spacing: tuple[float, ...],
    median_shape: tuple[float, ...],
    num_samples: int,
    device: str,
    budget: float,
    memory: float,
    rules: Rules,
) -> dict[str, Any]:
    base = rules["base_features"][device]
    stem = network_stem(device, key, rules)
    cost = rules["full_resolution_stage_cost"] if stem["stem"] == "full" else 1.0
    patch, batch, _ = patch_and_batch(
        tuple(round(s) for s in median_shape), num_samples, device, budget, memory, base, rules, cost
    )
    strides, kernels, patch = topology(patch, spacing, rules, key)
    _, batch, iterations = patch_and_batch(patch, num_samples, device, budget, memory, base, rules, cost)
    needed = iterations_needed(num_samples, median_shape, patch, batch, device, rules)
    step_s = seconds_per_iteration(float(np.prod(patch)), batch, device, base, rules, cost)
    return {
        "spacing": list(spacing),
        "median_shape": [round(float(s), 1) for s in median_shape],
        "patch_size": list(patch),
        "batch_size": batch,
        "strides": strides,
        "kernels": kernels,
        "features": features_per_stage(len(strides), device, key, rules),
        "iterations": min(iterations, needed),
        "iterations_needed": needed,
        "expected_training_s": round(needed * step_s, 1),
        "deep_supervision": True,
        "network": network_family(device, key, rules),
        **stem,
    }


def check_compute(device: str, time_budget_s: float | None, memory_gb: float | None) -> str:
    """The device kind (``cpu`` or ``cuda``) a plan is sized for, once the request is checked (the device need not
    be present: a GPU plan may be made on a laptop)."""
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda") or (index and (kind == "cpu" or not index.isdigit())):
        raise VesaliusError(f"cannot plan for the device '{device}'", remedy="use --device cpu or cuda")
    for name, option, value in (
        ("time budget", "--time-budget 30m", time_budget_s),
        ("memory", "--memory-gb 8", memory_gb),
    ):
        if value is not None and not (np.isfinite(value) and value > 0):
            raise VesaliusError(f"the {name} must be positive, not {value}", remedy=f"e.g. {option}")
    return kind


def plan_dataset(
    name: str,
    workspace: str | Path | Workspace | None = None,
    *,
    device: str = "cpu",
    time_budget_s: float | None = None,
    memory_gb: float | None = None,
    workers: int = 2,
    n4: bool = False,
    denoise: str | None = None,
) -> tuple[Plan, Path]:
    """Fingerprint (cached) and plan an imported segmentation data set; returns the plan and its path. ``n4`` and
    ``denoise``: intensity filters (:func:`make_plan`)."""
    check_compute(device, time_budget_s, memory_gb)  # before minutes of fingerprinting
    check_denoising(denoise, load_rules())
    ws = Workspace.resolve(workspace)
    dataset = Dataset.load(ws.dataset_dir(name))
    if dataset.task != "segmentation":
        raise VesaliusError(f"'{name}' is a {dataset.task} data set", remedy="plan works on segmentation data sets")
    fp_path = ws.fingerprint_path(name)
    try:
        fingerprint = Fingerprint.from_json(json.loads(fp_path.read_text())) if fp_path.exists() else None
    except (ValueError, TypeError, OSError):  # an unreadable cache is made again
        fingerprint = None
    fresh = fingerprint is None or len(fingerprint.class_centroids) != fingerprint.num_cases  # none, or pre-centroids
    if fresh:
        fingerprint = compute_fingerprint(dataset, workers=workers)
    assert fingerprint is not None
    plan = make_plan(
        fingerprint, dataset, device=device, time_budget_s=time_budget_s, memory_gb=memory_gb, n4=n4, denoise=denoise
    )
    if fresh:  # written once the plan is made: a data set that cannot be planned leaves nothing behind
        write_json_atomic(fp_path, fingerprint.to_json())
    return plan, plan.save(ws.plan_path(name))


def load_plan(name: str, workspace: str | Path | Workspace | None = None) -> Plan:
    """The saved segmentation plan of data set ``name``."""
    path = Workspace.resolve(workspace).plan_path(name)
    if not path.exists():
        raise VesaliusError("no plan", path, f"run 'vesalius plan {name}' first")
    return Plan.load(path)
