"""Scoring a classifier's predictions (a predictions CSV, or probabilities) against a data set's targets.

Metrics by target type (:func:`score_classification`):

* binary, multi-class: :func:`vesalius.metrics.classification.classification_metrics` (accuracy, balanced
  accuracy, AUC, F1, sensitivity, specificity, confusion matrix, ECE, bootstrap 95 % intervals of accuracy and
  AUC), with the class names;
* ordinal: the same, plus the mean absolute error of the predicted grade (``mae``);
* multi-label: each label scored as a binary problem; ``accuracy`` and ``auc`` are the means over the labels
  (MedMNIST's ChestMNIST convention: threshold 0.5), ``per_label`` holds each label's metrics.

Files: ``summary.json`` (the metrics) next to the predictions, written atomically.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any

import numpy as np

from vesalius.data.dataset import Dataset
from vesalius.data.targets import encode_targets
from vesalius.errors import VesaliusError
from vesalius.io.atomic import write_json_atomic
from vesalius.metrics.classification import classification_metrics
from vesalius.outputs import check_output
from vesalius.workspace import Workspace

__all__ = ["evaluate_predictions_csv", "read_predictions_csv", "score_classification"]

_CHANNEL = re.compile(r"_\d{4}$")


def score_classification(
    targets: np.ndarray,
    probabilities: np.ndarray,
    target_type: str,
    names: list[str],
    *,
    bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Metrics of ``probabilities`` ``(N, K)`` against ``targets``: output indices ``(N,)``, or ``(N, L)`` 0/1
    flags for multi-label data. JSON-ready; see the module docstring."""
    probabilities = np.asarray(probabilities, dtype=float)
    if target_type != "multilabel":
        result = classification_metrics(
            np.asarray(targets, dtype=np.int64), probabilities, bootstrap=bootstrap, seed=seed
        )
        if target_type == "ordinal":
            result["mae"] = float(np.mean(np.abs(probabilities.argmax(axis=1) - np.asarray(targets))))
        return {"target_type": target_type, "classes": names, **result}
    flags = np.asarray(targets, dtype=np.int64)
    per_label = {}
    for j, name in enumerate(names):
        p = probabilities[:, j]
        per_label[name] = classification_metrics(
            flags[:, j], np.stack([1 - p, p], axis=1), bootstrap=bootstrap, seed=seed
        )
    aucs = [m["auc"] for m in per_label.values() if not np.isnan(m["auc"])]
    return {
        "target_type": target_type,
        "classes": names,
        "n": len(flags),
        "accuracy": float(np.mean([m["accuracy"] for m in per_label.values()])),
        "auc": float(np.mean(aucs)) if aucs else float("nan"),
        "per_label": per_label,
    }


def read_predictions_csv(path: str | Path) -> tuple[list[str], list[str], np.ndarray]:
    """``(case ids, class names, probabilities (N, K))`` of a predictions CSV written by ``vesalius predict``."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise VesaliusError(f"cannot read the predictions ({e.strerror})", path, "check the path") from None
    columns = [c for c in (rows[0] if rows else {}) if c.startswith("p_")]
    if not rows or "case_id" not in rows[0] or not columns:
        raise VesaliusError(
            "not a predictions CSV (case_id and p_CLASS columns)", path, "give the CSV of 'vesalius predict'"
        )
    try:
        probabilities = np.asarray([[float(r[c]) for c in columns] for r in rows])
    except ValueError as e:
        raise VesaliusError(f"a probability is not a number ({e})", path, "predict again") from None
    return [r["case_id"] for r in rows], [c[2:] for c in columns], probabilities


def _find_case(dataset: Dataset, case_id: str) -> str | None:
    """The data set's case for a predicted id; ids of channel files (``CASE_0000``) name their case."""
    known = {c.case_id for c in dataset.cases}
    for candidate in (case_id, _CHANNEL.sub("", case_id)):
        if candidate in known:
            return candidate
    return None


def evaluate_predictions_csv(
    predictions: str | Path,
    dataset_name: str,
    workspace: str | Path | Workspace | None = None,
    *,
    output_dir: str | Path | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Score a predictions CSV against the targets of data set ``dataset_name``; writes ``summary.json`` into
    ``output_dir`` (default: the CSV's folder) and returns it. Predicted cases must all belong to the data set."""
    ws = Workspace.resolve(workspace)
    dataset = Dataset.load(ws.dataset_dir(dataset_name))
    if dataset.task != "classification":
        raise VesaliusError(f"'{dataset_name}' is not a classification data set", remedy="give the one you trained on")
    case_ids, names, probabilities = read_predictions_csv(predictions)
    matched = [_find_case(dataset, c) for c in case_ids]
    missing = [c for c, m in zip(case_ids, matched, strict=True) if m is None]
    if missing:
        raise VesaliusError(
            f"{len(missing)} predicted case(s) are not in '{dataset_name}', the first: {missing[0]}",
            predictions,
            "evaluate against the data set the images come from",
        )
    expected = [dataset.labels[k] for k in sorted(dataset.labels)]
    if names != expected:
        raise VesaliusError(f"the CSV's classes {names} are not the data set's {expected}", predictions)
    targets = encode_targets(dataset, [m for m in matched if m is not None])
    summary = score_classification(
        targets, probabilities, dataset.target_type or "binary", names, bootstrap=bootstrap, seed=seed
    )
    summary["cases"] = len(case_ids)
    folder = check_output(output_dir, [], kind="folder") if output_dir else Path(predictions).parent
    write_json_atomic(folder / "summary.json", summary)
    return summary
