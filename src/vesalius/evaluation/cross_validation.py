"""Validate a trained fold: predict its validation cases on their original grids and score them.

The cases are read from the imported data set (not the preprocessed cache), predicted through the run's plan
(:func:`vesalius.inference.predict_image`: sliding window, mirroring as planned) and compared with their reference
labels on the original grid, so the Dice is the one a user gets. Writes ``validation/CASE.EXT`` (the predictions,
in the data set's format) and ``validation/summary.json`` (Dice per case and class, mean per class and overall),
and decides from these predictions which classes keep only their largest component
(:func:`vesalius.inference.postprocess.decide_postprocessing`, saved as ``postprocessing.json`` in the run folder
and applied by ``vesalius predict``). The Dice figures in the summary are those before post-processing.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vesalius.data.dataset import Dataset, write_json_atomic
from vesalius.evaluation.segmentation import dice_per_class
from vesalius.inference.model import load_model
from vesalius.inference.postprocess import decide_postprocessing
from vesalius.inference.predict import predict_image
from vesalius.io import read_image, write_image
from vesalius.workspace import Workspace

__all__ = ["validate_fold"]


def validate_fold(
    run_dir: str | Path,
    workspace: str | Path | Workspace | None = None,
    *,
    checkpoint: str = "final",
    mirror: bool = True,
    device: str = "cpu",
) -> dict[str, Any]:
    """Predict and score the validation cases of the fold in ``run_dir``; returns the summary (also saved)."""
    ws = Workspace.resolve(workspace)
    trained = load_model(run_dir, checkpoint, device)
    run_dir = Path(run_dir)
    split = json.loads((run_dir / "training.json").read_text())["split"]
    dataset = Dataset.load(ws.dataset_dir(trained.training["dataset"]))
    labels = [int(k) for k in trained.plan["labels"] if int(k) != 0]
    names = {int(k): v for k, v in trained.plan["labels"].items()}
    out = run_dir / "validation"
    out.mkdir(exist_ok=True)
    cases: dict[str, dict[str, float]] = {}
    pairs: list[tuple[Path, Path]] = []
    seconds = []
    for case_id in split["val"]:
        case = dataset.case(case_id)
        image, reference = dataset.read_case(case)
        start = time.perf_counter()
        prediction = predict_image(
            trained.network, image, trained.plan, trained.config, mirror_axes=None if mirror else (), device=device
        )
        seconds.append(time.perf_counter() - start)
        name = Path(case.label or case.images[0]).name
        suffix = ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix
        write_image(prediction, out / f"{case_id}{suffix}")
        if reference is not None:
            scores = dice_per_class(prediction.array[0], reference.array[0], labels)
            cases[case_id] = {names[k]: v for k, v in scores.items()}
            pairs.append((out / f"{case_id}{suffix}", dataset.label_path(case)))
    per_class = {names[k]: float(np.mean([c[names[k]] for c in cases.values()])) for k in labels} if cases else {}
    summary = {
        "checkpoint": checkpoint,
        "mirroring": mirror,
        "threads": torch.get_num_threads(),
        "seconds_per_case": float(np.mean(seconds)) if seconds else None,
        "dice_mean": float(np.mean(list(per_class.values()))) if per_class else None,
        "dice": per_class,
        "cases": cases,
    }
    if pairs:
        decision = decide_postprocessing(((read_image(p).array[0], read_image(r).array[0]) for p, r in pairs), labels)
        write_json_atomic(run_dir / "postprocessing.json", decision)
        summary["postprocessing"] = decision
    write_json_atomic(out / "summary.json", summary)
    return summary
