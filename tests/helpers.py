"""Helpers shared by test files in different folders (import them as ``from tests.helpers import ...``)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vesalius.data.synthetic import make_classification_case
from vesalius.io import Geometry, Image
from vesalius.io.schema import from_json
from vesalius.model_package import ModelPackage, TrainedClassification, TrainedSegmentation
from vesalius.planning.plan import (
    Budget,
    ClassificationPlan,
    ClassifierNetwork,
    Configuration,
    Normalization,
    Plan,
    TrainingSuggestion,
)

SIDE = 32  # side of the synthetic_npz images


def write_npz(path: Path, cases: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    """An npz of ``SPLIT_images`` and ``SPLIT_labels`` arrays for each split, as MedMNIST."""
    np.savez(
        path, **{f"{s}_images": x for s, (x, _) in cases.items()}, **{f"{s}_labels": y for s, (_, y) in cases.items()}
    )
    return path


def synthetic_npz(path: Path, counts: dict[str, int], seed: int = 0) -> Path:
    """A MedMNIST-like 2D npz of SIDE x SIDE uint8 synthetic images, lesion present for odd indices."""
    cases = {}
    for k, (split, n) in enumerate(counts.items()):
        images, labels = [], []
        for i in range(n):
            present = i % 2 == 1
            array = make_classification_case(1000 * (seed + k) + i, present, ndim=2, shape=(SIDE, SIDE)).array[0]
            images.append(np.clip(array / 2.0, 0, 255).astype(np.uint8).T)  # (H, W) rows first, as MedMNIST
            labels.append(int(present))
        cases[split] = (np.stack(images), np.asarray(labels)[:, None])
    return write_npz(path, cases)


def copy_workspace(ws: Path, tmp_path: Path) -> Path:
    """A copy of the workspace ``ws`` without its runs, to modify."""
    target = tmp_path / "ws_copy"
    shutil.copytree(ws, target, ignore=shutil.ignore_patterns("runs"))
    return target


def conv(ndim: int, channels: int, classes: int, kernel: int = 1, seed: int = 0) -> nn.Module:
    """A fixed random convolution (zero padding, same size out), float32."""
    torch.manual_seed(seed)
    return (nn.Conv2d if ndim == 2 else nn.Conv3d)(channels, classes, kernel, padding=kernel // 2)


def overlay_volume(direction: np.ndarray | None = None) -> tuple[Image, Image]:
    """A 20 x 16 x 10 volume, spacing (1, 1, 3) mm; organ (label 1) and a small lesion (label 2) at (14, 5, 6)."""
    direction = np.eye(3) if direction is None else direction
    geometry = Geometry((1.0, 1.0, 3.0), (0.0, 0.0, 0.0), tuple(direction.ravel()))
    image = np.zeros((1, 20, 16, 10), np.float32)
    image[0, 2:18, 2:14, 1:9] = 100.0
    seg = np.zeros((1, 20, 16, 10), np.uint8)
    seg[0, 4:12, 4:12, 2:8] = 1
    seg[0, 13:16, 4:7, 5:8] = 2
    return Image(image, geometry), Image(seg, geometry)


def configuration(**fields: Any) -> Configuration:
    """A plan configuration with ``fields`` (``patch_size`` at least) and small defaults for the rest."""
    dims = len(fields["patch_size"])
    base = {
        "spacing": [1.0] * dims,
        "median_shape": list(fields["patch_size"]),
        "batch_size": 2,
        "strides": [[1] * dims],
        "kernels": [[3] * dims],
        "features": [8],
        "iterations": 1,
    }
    return from_json(Configuration, base | fields)


def segmentation_plan(
    configurations: dict[str, dict[str, Any]],
    normalization: tuple[dict[str, Any], ...] = ({"scheme": "zscore"},),
    time_budget_s: float = 1800.0,
    training: dict[str, str] | None = None,
) -> Plan:
    """A segmentation plan of configurations given as :func:`configuration` fields."""
    return Plan(
        dataset="x",
        spatial_dims=max(len(c.get("spacing_full", c["patch_size"])) for c in configurations.values()),
        channels=tuple(f"channel{i}" for i in range(len(normalization))),
        labels={0: "background", 1: "a"},
        normalization=tuple(from_json(Normalization, n) for n in normalization),
        budget=Budget("cpu", time_budget_s),
        configurations={key: configuration(**fields) for key, fields in configurations.items()},
        **({"training": from_json(TrainingSuggestion, training)} if training else {}),
    )


def trained_segmentation(
    config: str = "3d",
    normalization: tuple[dict[str, Any], ...] = ({"scheme": "zscore"},),
    labels: dict[int, str] | None = None,
    dataset: str = "ph",
    precision: str = "auto",
    **fields: Any,
) -> TrainedSegmentation:
    """A trained configuration of a segmentation model (configuration ``fields`` as for :func:`configuration`)."""
    return TrainedSegmentation(
        dataset=dataset,
        config=config,
        channels=tuple(f"channel{i}" for i in range(len(normalization))),
        labels=labels or {0: "background", 1: "organ", 2: "lesion"},
        normalization=tuple(from_json(Normalization, n) for n in normalization),
        configuration=configuration(**fields),
        precision=precision,  # type: ignore[arg-type]
    )


def trained_classification(labels: dict[int, str], dataset: str = "cls", side: int = 28) -> TrainedClassification:
    """A trained configuration of a 2D single-channel classifier (the tutorial CNN) of ``side`` x ``side`` inputs."""
    return TrainedClassification(
        dataset=dataset,
        channels=("GREY",),
        labels=labels,
        spatial_dims=2,
        target_type="binary" if len(labels) == 2 else "multiclass",
        input_size=(side, side),
        normalization=(Normalization("scale", low=0.0, high=255.0),),
        network=ClassifierNetwork("cnn"),
    )


def write_package(
    root: Path,
    trained: TrainedSegmentation | TrainedClassification,
    split: dict[str, list[str]],
    settings: dict[str, Any] | None = None,
) -> ModelPackage:
    """A run folder with ``trained`` as its trained configuration, its plan, ``settings`` and ``split`` (no weights)."""
    common = {
        "dataset": trained.dataset,
        "spatial_dims": trained.spatial_dims,
        "channels": trained.channels,
        "labels": trained.labels,
        "normalization": trained.normalization,
        "budget": Budget("cpu", 1800.0),
    }
    if isinstance(trained, TrainedSegmentation):
        plan: Plan | ClassificationPlan = Plan(**common, configurations={trained.config: trained.configuration})
        default_settings: dict[str, Any] = {"dataset": trained.dataset, "config": trained.config}
    else:
        plan = ClassificationPlan(
            **common,
            target_type=trained.target_type,
            input_size=trained.input_size,
            network=trained.network,
            batch_size=2,
            optimizer="adamw",
            lr=1e-3,
            weight_decay=1e-2,
            schedule="cosine",
            epochs=1,
            early_stopping_patience=1,
            balance="none",
            label_smoothing=0.0,
            augmentation={},
        )
        default_settings = {"dataset": trained.dataset}
    package = ModelPackage(root)
    root.mkdir(parents=True, exist_ok=True)
    package.write_setup(plan, trained, settings or default_settings, split)
    return package
