"""The plan of a classification run: input size, normalisation, network, batch, optimiser, augmentation.

Rules as data, in ``classification_rules.json`` next to this file; each function here reads only the keys it
names. What the plan is made from (:class:`ClassificationFingerprint`) is measured on the training cases: their
shapes, class counts and intensity statistics per channel.

* Input size: the median shape, shrunk (proportions kept) so that no side exceeds ``input_side[dims][1]`` and
  enlarged so that none is below ``input_side[dims][0]``.
* Normalisation per channel: the segmentation planner's rule (:func:`vesalius.planning.rules.normalization`):
  8-bit and RGB pictures scaled to [0, 1], CT clipped and z-scored with the data set's statistics, anything else
  z-scored per image.
* Network: ``network[dims]``; ResNets get a 3x3 stem of stride 1 without max-pooling up to
  ``small_stem_max_side[dims]`` (small inputs keep their resolution), and ``width[device][dims]`` of the
  standard features.
* Batch: ``batch_size[dims]``, reduced to keep ``min_batches_per_epoch`` batches per epoch and at most
  ``max_batch_voxels[device]`` voxels per batch.
* Imbalance: class weights (inverse frequency) when the rarest class has fewer than ``imbalance_ratio`` times the
  cases of the commonest.
* Augmentation: ``augmentation[dims]`` with the per-modality overrides of the first channel's modality.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from vesalius.data.dataset import Dataset
from vesalius.data.targets import encode_targets
from vesalius.errors import VesaliusError
from vesalius.io.atomic import write_json_atomic
from vesalius.planning.plan import ClassificationPlan
from vesalius.planning.planner import check_compute
from vesalius.planning.rules import load_rules, normalization
from vesalius.workspace import Workspace

__all__ = [
    "ClassificationFingerprint",
    "classification_plan",
    "fingerprint_arrays",
    "load_classification_rules",
    "plan_classification",
    "plan_classification_dataset",
]


@cache
def _rules_text() -> str:
    return resources.files("vesalius.planning").joinpath("classification_rules.json").read_text()


def load_classification_rules(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The default classification rules with ``overrides`` (top-level keys) applied."""
    rules = json.loads(_rules_text())
    rules.pop("_doc", None)
    rules.update(overrides or {})
    return rules


@dataclass
class ClassificationFingerprint:
    """What the plan needs to know about the training cases.

    Attributes:
        shapes: ``(N, D)`` spatial shape of every training case.
        class_counts: cases per class index (multi-label: positives per label).
        num_cases: training cases.
        intensity: per channel ``mean``, ``std``, ``percentile_00_5``, ``percentile_99_5`` over all voxels.
    """

    shapes: list[list[int]]
    class_counts: list[int]
    num_cases: int
    intensity: list[dict[str, float]]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def fingerprint_arrays(arrays: list[np.ndarray], class_counts: list[int], seed: int = 0) -> ClassificationFingerprint:
    """The fingerprint of training images ``(C, *spatial)`` (intensity from up to 10,000 voxels per case)."""
    rng = np.random.default_rng(seed)
    channels = arrays[0].shape[0]
    samples: list[list[np.ndarray]] = [[] for _ in range(channels)]
    for array in arrays:
        flat = array.reshape(array.shape[0], -1)
        pick = rng.integers(0, flat.shape[1], size=min(10_000, flat.shape[1]))
        for c in range(channels):
            samples[c].append(flat[c, pick].astype(np.float64))
    intensity = []
    for values in (np.concatenate(s) for s in samples):
        low, high = np.percentile(values, [0.5, 99.5])
        intensity.append(
            {
                "mean": float(values.mean()),
                "std": float(values.std()),
                "percentile_00_5": float(low),
                "percentile_99_5": float(high),
            }
        )
    return ClassificationFingerprint(
        [list(a.shape[1:]) for a in arrays], [int(c) for c in class_counts], len(arrays), intensity
    )


def input_size(shapes: np.ndarray, spatial_dims: int, rules: dict[str, Any]) -> list[int]:
    """The network's input size from the ``(N, D)`` case shapes (``input_side``)."""
    low, high = rules["input_side"][f"{spatial_dims}d"]
    median = np.median(np.asarray(shapes, dtype=float), axis=0)
    factor = max(min(1.0, high / median.max()), low / max(1.0, median.min()))
    return [int(max(1, round(s * factor))) for s in median]


def network(size: list[int], spatial_dims: int, device: str, rules: dict[str, Any]) -> dict[str, Any]:
    """The network entry (``network``, ``small_stem_max_side``, ``width``)."""
    key = f"{spatial_dims}d"
    name = rules["network"][key]
    entry: dict[str, Any] = {"name": name}
    if name.startswith("resnet"):
        entry["stem_stride"] = 1 if max(size) <= rules["small_stem_max_side"][key] else 2
        entry["width"] = rules["width"][device][key]
    return entry


def batch_size(size: list[int], num_cases: int, spatial_dims: int, device: str, rules: dict[str, Any]) -> int:
    """Cases per batch (``batch_size``, ``min_batches_per_epoch``, ``max_batch_voxels``), at least 2."""
    batch = rules["batch_size"][f"{spatial_dims}d"]
    batch = min(batch, num_cases // rules["min_batches_per_epoch"])
    batch = min(batch, int(rules["max_batch_voxels"][device] // math.prod(size)))
    return max(2, batch)


def class_balance(class_counts: list[int], target_type: str, rules: dict[str, Any]) -> str:
    """``"weights"`` when the classes are imbalanced (``imbalance_ratio``), else ``"none"``."""
    present = [c for c in class_counts if c > 0]
    if target_type == "multilabel" or not present:
        return "none"
    return "weights" if min(present) < rules["imbalance_ratio"] * max(present) else "none"


def augmentation(spatial_dims: int, modality: str, rules: dict[str, Any]) -> dict[str, Any]:
    """Augmentation settings (:class:`vesalius.augmentation.AugmentationConfig` overrides) for the modality."""
    settings = dict(rules["augmentation"][f"{spatial_dims}d"])
    settings.update(rules["augmentation"]["modality"].get(modality.upper(), {}))
    return settings


def plan_classification(
    dataset: Dataset,
    fingerprint: ClassificationFingerprint,
    *,
    device: str = "cpu",
    time_budget_s: float | None = None,
    rules: dict[str, Any] | None = None,
) -> ClassificationPlan:
    """The plan of a classification data set from its training cases' fingerprint."""
    rules = rules or load_classification_rules()
    dev = "cuda" if device.startswith("cuda") else "cpu"
    dims = dataset.spatial_dims
    size = input_size(np.asarray(fingerprint.shapes), dims, rules)
    modalities = dataset.modalities or ["other"] * len(dataset.channels)
    segmentation_rules = load_rules()
    optimizer = rules["optimizer"]
    epochs = rules["epochs"][f"{dims}d"]
    return ClassificationPlan.from_json(
        {
            "dataset": dataset.name,
            "spatial_dims": dims,
            "channels": dataset.channels,
            "labels": {str(k): v for k, v in dataset.labels.items()},
            "target_type": dataset.target_type or ("binary" if len(dataset.labels) <= 2 else "multiclass"),
            "input_size": size,
            "normalization": [
                normalization(m, 1.0, fingerprint.intensity[i], segmentation_rules) for i, m in enumerate(modalities)
            ],
            "network": network(size, dims, dev, rules),
            "batch_size": batch_size(size, fingerprint.num_cases, dims, dev, rules),
            "optimizer": optimizer,
            "lr": rules["lr"][optimizer],
            "weight_decay": rules["weight_decay"][optimizer],
            "schedule": rules["schedule"],
            "epochs": epochs,
            "early_stopping_patience": max(1, round(rules["early_stopping_patience"] * epochs)),
            "balance": class_balance(fingerprint.class_counts, dataset.target_type or "binary", rules),
            "label_smoothing": rules["label_smoothing"],
            "augmentation": augmentation(dims, modalities[0], rules),
            "budget": {"device": dev, "time_budget_s": float(time_budget_s or rules["time_budget_s"][dev])},
            "fingerprint": {"num_cases": fingerprint.num_cases, "class_counts": fingerprint.class_counts},
        }
    )


def read_case_arrays(dataset: Dataset, case_ids: Sequence[str]) -> dict[str, np.ndarray]:
    """The images ``(C, *spatial)`` of ``case_ids`` as read from the data set, by case id."""
    return {c: dataset.read_case(dataset.case(c))[0].array for c in case_ids}


def planning_case_ids(dataset: Dataset) -> list[str]:
    """The cases a classification plan is made from: every case outside the source's test split."""
    return sorted(c.case_id for c in dataset.cases if c.split != "test")


def classification_plan(
    dataset: Dataset,
    ws: Workspace,
    arrays: dict[str, np.ndarray] | None = None,
    device: str = "cpu",
    time_budget_s: float | None = None,
    replan: bool = False,
) -> ClassificationPlan:
    """The data set's classification plan: read from the workspace, or (absent, or ``replan``) made from the images of
    :func:`planning_case_ids` and written there with its fingerprint.

    ``arrays`` (case id -> ``(C, *spatial)``) may hold images already read; the others are read here.
    """
    path = ws.classification_plan_path(dataset.name)
    if path.is_file() and not replan:
        return ClassificationPlan.load(path)
    ids = planning_case_ids(dataset)
    arrays = dict(arrays or {})
    arrays.update(read_case_arrays(dataset, [c for c in ids if c not in arrays]))
    targets = encode_targets(dataset, ids)
    counts = targets.sum(axis=0) if targets.ndim == 2 else np.bincount(targets, minlength=len(dataset.labels))
    fingerprint = fingerprint_arrays([arrays[c] for c in ids], counts.astype(int).tolist())
    plan = plan_classification(dataset, fingerprint, device=device, time_budget_s=time_budget_s)
    write_json_atomic(ws.classification_fingerprint_path(dataset.name), fingerprint.to_json())
    plan.save(path)
    return plan


def plan_classification_dataset(
    name: str,
    workspace: str | Path | Workspace | None = None,
    *,
    device: str = "cpu",
    time_budget_s: float | None = None,
) -> tuple[ClassificationPlan, Path]:
    """Make the classification plan of data set ``name`` afresh and write it to the workspace (what ``vesalius plan``
    does; training reads it from there). Returns the plan and its path."""
    check_compute(device, time_budget_s, None)
    ws = Workspace.resolve(workspace)
    dataset = Dataset.load(ws.dataset_dir(name))
    if dataset.task != "classification":
        raise VesaliusError(f"'{name}' is a {dataset.task} data set", remedy="plan it as a segmentation data set")
    plan = classification_plan(dataset, ws, device=device, time_budget_s=time_budget_s, replan=True)
    return plan, ws.classification_plan_path(name)
