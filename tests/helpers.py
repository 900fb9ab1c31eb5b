"""Helpers shared by test files in different folders (import them as ``from tests.helpers import ...``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vesalius.data.synthetic import make_classification_case
from vesalius.io import Geometry, Image

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
