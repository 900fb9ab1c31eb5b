"""Helpers shared by the benchmark scripts: Dice per class, the one-line JSON report, the shared data folders.

Only the standard library and NumPy, so that every benchmark (and every virtual environment that runs one) can
import this module.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

#: The project's root folder (this file lies in ``benchmarks/``).
REPO_ROOT = Path(__file__).resolve().parents[1]

#: Prefix of the single machine-readable line each benchmark prints.
JSON_PREFIX = "BENCHMARK_JSON"


def dice_per_class(pred: np.ndarray, ref: np.ndarray, labels: Iterable[int]) -> dict[int, float]:
    """Dice ``2|A∩B| / (|A|+|B|)`` of each label between two label maps of the same shape.

    A label that is absent from both maps scores 1.0 (nothing to find, nothing found).
    """
    pred = np.asarray(pred)
    ref = np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    scores: dict[int, float] = {}
    for label in labels:
        in_pred = pred == label
        in_ref = ref == label
        size = int(in_pred.sum()) + int(in_ref.sum())
        overlap = int(np.logical_and(in_pred, in_ref).sum())
        scores[int(label)] = 1.0 if size == 0 else 2.0 * overlap / size
    return scores


def _jsonable(value: Any) -> Any:
    """``value`` with NumPy scalars and arrays, paths and non-string keys turned into plain JSON types."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


def emit_json(d: Mapping[str, Any]) -> str:
    """Print ``d`` as one line ``BENCHMARK_JSON {...}`` (and return that line)."""
    line = f"{JSON_PREFIX} {json.dumps(_jsonable(d), sort_keys=False, allow_nan=True)}"
    print(line, flush=True)
    return line


def shared_data(name: str) -> Path | None:
    """The folder ``../shared/data/NAME`` next to the project's root, or None when it is absent."""
    path = REPO_ROOT.parent / "shared" / "data" / name
    return path if path.is_dir() else None
