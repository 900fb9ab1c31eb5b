"""The model card of an exported package: ``model_card.json`` and the same as ``MODEL_CARD.md``.

What a reviewer needs before using a model (after Mitchell et al., "Model Cards for Model Reporting"): the data set
and split it was trained and validated on, the validation figures with 95% bootstrap confidence intervals over the
validation cases, the intended use, the limitations that follow from the data, the software versions, and what was
done to the model after training (compression, with the figures after it).
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any

import numpy as np

from vesalius.metrics.statistics import bootstrap_mean_interval
from vesalius.model_package import ModelPackage, TrainedSegmentation

__all__ = ["model_card", "render_markdown"]


def _segmentation_validation(packages: Sequence[ModelPackage], names: list[str]) -> dict[str, Any] | None:
    """Mean Dice per class over the validation cases of every fold, with intervals; ``None`` if not validated."""
    per_case: dict[str, dict[str, float]] = {}
    folds = {}
    for package in packages:
        summary = package.validation_summary()
        if not summary or "cases" not in summary:
            continue
        folds[package.root.name] = {"cases": len(summary["cases"]), "dice": summary.get("dice", {})}
        per_case.update(summary["cases"])
    if not per_case:
        return None
    dice = {}
    for name in names:
        values = np.array([case.get(name, np.nan) for case in per_case.values()], dtype=float)
        values = values[~np.isnan(values)]
        low, high = bootstrap_mean_interval(values)
        dice[name] = {"mean": float(values.mean()) if values.size else None, "ci95": [low, high], "cases": values.size}
    return {"metric": "Dice", "cases": len(per_case), "per_class": dice, "folds": folds}


_CLASSIFICATION_KEYS = ("n", "accuracy", "accuracy_ci", "auc", "auc_ci", "balanced_accuracy", "f1_macro", "ece")


def _classification_validation(packages: Sequence[ModelPackage]) -> dict[str, Any] | None:
    folds = {}
    for package in packages:
        summary = package.validation_summary()
        if summary:
            folds[package.root.name] = {k: summary[k] for k in _CLASSIFICATION_KEYS if k in summary}
    return {"metric": "accuracy and AUC", "folds": folds} if folds else None


def _pruning(package: ModelPackage) -> dict[str, Any] | None:
    """What pruning made the run (:func:`vesalius.deploy.prune.pruning_record`), if it is a pruned run."""
    if not package.settings.get("initial_weights"):
        return None
    from vesalius.deploy.prune import pruning_record
    from vesalius.errors import VesaliusError

    try:
        return pruning_record(package.root)
    except VesaliusError:  # started from given weights, but not pruned
        return None


def model_card(
    packages: Sequence[ModelPackage], name: str, *, intended_use: str | None = None, versions: dict[str, str]
) -> dict[str, Any]:
    """The model card of the folds ``packages`` exported as ``name`` (JSON-ready)."""
    trained = packages[0].trained
    segmentation = isinstance(trained, TrainedSegmentation)
    task = "segmentation" if segmentation else "classification"
    splits = {p.root.name: p.split for p in packages}
    validation = (
        _segmentation_validation(packages, trained.class_names)
        if segmentation
        else _classification_validation(packages)
    )
    channels = ", ".join(trained.channels)
    limitations = [
        f"Trained on {max(len(s['train']) for s in splits.values())} cases of data set '{trained.dataset}' "
        f"({channels}); images unlike them (another modality, scanner, protocol, field of view or population) may be "
        "predicted poorly without any warning.",
        "Validated only on held-out cases of the same data set, not on an independent external test set."
        if validation
        else "Not validated: the package holds no validation figures.",
        "Small validation sets give wide confidence intervals; read the intervals, not only the means.",
        "Not a medical device: not cleared for diagnosis or treatment decisions.",
    ]
    fingerprint = packages[0].fingerprint
    if segmentation and fingerprint and fingerprint.get("spacings"):
        spacings = np.asarray(fingerprint["spacings"], dtype=float)
        ranges = ", ".join(f"{a:.3g}-{b:.3g}" for a, b in zip(spacings.min(0), spacings.max(0), strict=True))
        limitations.insert(1, f"Training voxel spacing per axis (mm): {ranges}; images far outside were never seen.")
    return {
        "name": name,
        "task": task,
        "dataset": trained.dataset,
        "channels": list(trained.channels),
        "labels": {str(k): v for k, v in sorted(trained.labels.items())},
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "intended_use": intended_use
        or f"Research: automatic {task} of {channels} images like those of data set '{trained.dataset}'. "
        "Not for clinical diagnosis or treatment decisions.",
        "split": {
            fold: {
                "train_cases": len(s["train"]),
                "validation_cases": len(s["val"]),
                "training": s["train"],
                "validation": s["val"],
            }
            for fold, s in splits.items()
        },
        "validation": validation,
        "limitations": limitations,
        "versions": versions,
        "training_precision": trained.precision,
        "pruning": _pruning(packages[0]),
        "compression": None,
    }


def _figure(value: Any) -> str:
    return "n/a" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.3f}"


def render_markdown(card: dict[str, Any]) -> str:
    """``MODEL_CARD.md``: the card as a document for people."""
    lines = [
        f"# Model card: {card['name']}",
        "",
        f"- Task: {card['task']}; data set: `{card['dataset']}`; channels: {', '.join(card['channels'])}",
        f"- Labels: {', '.join(f'{k} = {v}' for k, v in card['labels'].items())}",
        f"- Created: {card['created']}; training precision: {card['training_precision']}",
        "",
        "## Intended use",
        "",
        card["intended_use"],
        "",
        "## Training and validation split",
        "",
        "| fold | training cases | validation cases |",
        "|---|---|---|",
        *(f"| {f} | {s['train_cases']} | {s['validation_cases']} |" for f, s in card["split"].items()),
        "",
        "## Validation",
        "",
    ]
    validation = card["validation"]
    if validation is None:
        lines.append("Not validated.")
    elif "per_class" in validation:
        lines += [
            f"Mean Dice over {validation['cases']} validation cases, with 95% bootstrap confidence intervals:",
            "",
            "| class | Dice | 95% CI | cases |",
            "|---|---|---|---|",
        ]
        for name, d in validation["per_class"].items():
            low, high = d["ci95"]
            lines.append(f"| {name} | {_figure(d['mean'])} | {_figure(low)}-{_figure(high)} | {d['cases']} |")
    else:
        lines += ["| fold | cases | accuracy (95% CI) | AUC (95% CI) |", "|---|---|---|---|"]
        for fold, m in validation["folds"].items():
            acc_ci, auc_ci = m.get("accuracy_ci") or [None, None], m.get("auc_ci") or [None, None]
            lines.append(
                f"| {fold} | {m.get('n', '')} | {_figure(m.get('accuracy'))} ({_figure(acc_ci[0])}-"
                f"{_figure(acc_ci[1])}) | {_figure(m.get('auc'))} ({_figure(auc_ci[0])}-{_figure(auc_ci[1])}) |"
            )
    pruning = card.get("pruning")
    if pruning:
        lines += ["", "## Pruning", "", pruning["description"], ""]
    compression = card.get("compression")
    if compression:
        lines += ["", "## Compression", "", compression["description"], ""]
        lines += [f"- {k}: {v}" for k, v in compression.get("figures", {}).items()]
    lines += ["", "## Limitations", "", *(f"- {item}" for item in card["limitations"]), "", "## Versions", ""]
    lines += [f"- {k} {v}" for k, v in card["versions"].items()]
    return "\n".join(lines) + "\n"
