"""2D segmentation on real images with the planner's defaults: chest X-ray lungs, retinal vessels, CT lung-tumour
patches, EM membranes.

Run it from the project's root, one data set at a time::

    python benchmarks/segmentation_2d.py montgomery            # --budget 30m --fold 0 (of 5)
    python benchmarks/segmentation_2d.py chase --budget 30m
    python benchmarks/segmentation_2d.py lung --fold 1
    python benchmarks/segmentation_2d.py isbi

Each data set is imported once into ``benchmarks/.work/seg2d/ws`` as a user would import it:

- ``montgomery``: ``MontgomeryLungs`` images and masks; lung is >= 128.
- ``chase``: ``CHASE_DB1`` colour fundus JPEGs (R, G, B) with the first observer's vessels (``1stHO``).
- ``lung``: ``MSD_Lung_2mm_patches`` 48 x 48 CT patches. The 5 folds mix the patients' patches, so the figure is
  optimistic.
- ``isbi``: ``ISBI2012_EM/train``. ``--invert-labels`` makes the black membranes the foreground.

The script then plans for the CPU with the budget (``vesalius plan --time-budget``), trains one fold of the 5-fold
split, and reports the validation cases' Dice per class after the decided post-processing; for vessels Dice is the
F1 score. ``--group-by REGEX`` splits as ``vesalius plan --group-by`` does, each subject's cases in one fold, in a
workspace of its own (``benchmarks/.work/seg2d/ws-grouped``), since a data set keeps the split it was first given.
Extra figures per data set:

- ``chase``: pixel AUC of the vessel probability, over all pixels of each image (the images come without field of
  view masks), and the second observer's F1 against the first on the same cases (the human baseline).
- ``lung``: the detection rate, the share of patches with a tumour where the prediction touches it, and the false
  alarms, the share of tumour-free patches where it predicts one.

Each run's figures are kept in ``benchmarks/.work/seg2d/results``; ``--summary`` trains nothing and gives the
cross-validation: the figures of every fold run so far with the same options, and their mean ± SD over the folds::

    python benchmarks/segmentation_2d.py chase --summary

Without ``../shared/data`` it says so and exits 0. Prints readable lines and one ``BENCHMARK_JSON {...}`` line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO_ROOT, dice_per_class, emit_json, machine_and_date, shared_data

WORK = REPO_ROOT / "benchmarks" / ".work" / "seg2d" / "ws"
RESULTS = WORK.with_name("results")
#: The figures ``--summary`` averages over the folds (those a data set has).
CV_FIGURES = ("dice_mean", "vessel_auc", "second_observer_f1", "detection_rate", "false_alarm_rate")

#: data set -> (shared folder, import options)
SOURCES: dict[str, tuple[str, dict[str, Any]]] = {
    "montgomery": ("MontgomeryLungs", {}),
    "chase": ("CHASE_DB1", {"labels_dir": "1stHO"}),
    "lung": ("MSD_Lung_2mm_patches", {}),
    "isbi": ("ISBI2012_EM/train", {"invert_labels": True}),
}


def _import(name: str, source: Path, workspace: Path = WORK) -> None:
    """Import ``source`` as data set ``name`` into ``workspace`` (once) with the set's import options."""
    import vesalius
    from vesalius.workspace import Workspace

    if not (Workspace(workspace).dataset_dir(name) / "dataset.json").exists():
        vesalius.import_dataset(source, name, workspace=workspace, **SOURCES[name][1])


def _chase_extras(run: Path, source: Path, val: list[str], workspace: Path) -> dict[str, float]:
    """Pixel AUC of the vessel probability on the validation images, and the second observer's F1."""
    from sklearn.metrics import roc_auc_score

    import vesalius
    from vesalius.data.dataset import Dataset
    from vesalius.io import read_image

    dataset = Dataset.load(workspace / "datasets" / "chase")
    scores, targets, human = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "in"
        folder.mkdir()
        for case_id in val:
            for channel, path in enumerate(dataset.image_paths(dataset.case(case_id))):
                (folder / f"{case_id}_{channel:04d}.nii.gz").symlink_to(path)
        vesalius.predict(folder, Path(tmp) / "out", run, probabilities=True)
        for case_id in val:
            probability = read_image(Path(tmp) / "out" / f"{case_id}_probabilities.nii.gz").array[1]
            reference = read_image(dataset.label_path(dataset.case(case_id))).array[0]
            scores.append(probability.ravel())
            targets.append(reference.ravel())
            second = read_image(source / "2ndHO" / f"{case_id}_2ndHO.png").array[0] >= 128
            human.append(dice_per_class(second.astype(np.uint8), reference, [1])[1])
    return {
        "vessel_auc": float(roc_auc_score(np.concatenate(targets), np.concatenate(scores))),
        "second_observer_f1": float(np.mean(human)),
    }


def _lung_extras(run: Path, val: list[str], workspace: Path) -> dict[str, float]:
    """Per-patch detection rate and false-alarm rate from the validation predictions."""
    from vesalius.data.dataset import Dataset
    from vesalius.io import read_image

    dataset = Dataset.load(workspace / "datasets" / "lung")
    found = missed = alarms = clean = 0
    for case_id in val:
        reference = read_image(dataset.label_path(dataset.case(case_id))).array[0] > 0
        predicted = read_image(next((run / "validation").glob(f"{case_id}.*"))).array[0] > 0
        if reference.any():
            found, missed = found + bool((predicted & reference).any()), missed + (not (predicted & reference).any())
        else:
            alarms, clean = alarms + bool(predicted.any()), clean + (not predicted.any())
    return {
        "detection_rate": found / max(found + missed, 1),
        "tumour_patches": found + missed,
        "false_alarm_rate": alarms / max(alarms + clean, 1),
        "tumour_free_patches": alarms + clean,
    }


def results_dir(workspace: Path, name: str, seed: int, network: str | None, epochs: int | None) -> Path:
    """The folder of one cross-validation's figures, ``fold{K}.json`` a fold: one per workspace (grouped or not),
    data set, seed, network and epochs."""
    options = f"{name}__{network or 'plan'}__seed{seed}" + (f"__epochs{epochs}" if epochs else "")
    return RESULTS / workspace.name / options


def summarise_folds(folder: Path) -> dict[str, Any]:
    """The saved folds' figures and, for each of :data:`CV_FIGURES` present in every fold, mean and SD over them."""
    folds = [json.loads(path.read_text()) for path in sorted(folder.glob("fold*.json"))]
    figures = [key for key in CV_FIGURES if folds and all(fold.get(key) is not None for fold in folds)]
    values = {key: [float(fold[key]) for fold in folds] for key in figures}
    return {
        "folds": folds,
        "mean": {key: statistics.fmean(v) for key, v in values.items()},
        "sd": {key: statistics.stdev(v) if len(v) > 1 else None for key, v in values.items()},
    }


def _print_summary(name: str, summary: dict[str, Any]) -> None:
    folds = summary["folds"]
    keys = list(summary["mean"])
    print(f"{name}: {len(folds)} folds, {sum(f['val_cases'] for f in folds)} validation cases")
    print("| fold | val cases | iterations | " + " | ".join(keys) + " |")
    print("|---" * (3 + len(keys)) + "|")
    for fold in folds:
        cells = " | ".join(f"{fold[key]:.4f}" for key in keys)
        print(f"| {fold['fold']} | {fold['val_cases']} | {fold['iterations']} | {cells} |")
    cells = " | ".join(
        f"{summary['mean'][key]:.4f}" + (f" ± {summary['sd'][key]:.4f}" if summary["sd"][key] is not None else "")
        for key in keys
    )
    print(f"| mean ± SD | | | {cells} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", choices=sorted(SOURCES))
    parser.add_argument("--budget", default="30m", help="Training time budget (the planner's input).")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--network", default=None, help="Segmentation network family (default: the plan's).")
    parser.add_argument("--epochs", type=int, default=None, help="Epochs of 250 iterations (default: the plan's).")
    parser.add_argument(
        "--group-by",
        default=None,
        metavar="REGEX",
        help="Keep each subject's cases in one fold; the subject is the first group of REGEX in the case id.",
    )
    parser.add_argument(
        "--summary", action="store_true", help="Train nothing: mean ± SD over the folds run with these options."
    )
    args = parser.parse_args()

    import vesalius
    from vesalius.io.atomic import write_json_atomic
    from vesalius.units import parse_duration

    name = args.dataset
    source = shared_data(SOURCES[name][0])
    if source is None:
        print(f"skipped: ../shared/data/{SOURCES[name][0]} is absent")
        return 0
    workspace = WORK.with_name("ws-grouped") if args.group_by else WORK
    results = results_dir(workspace, name, args.seed, args.network, args.epochs)
    if args.summary:
        summary = summarise_folds(results)
        if not summary["folds"]:
            print(f"no folds run yet with these options (nothing in {results})")
            return 1
        _print_summary(name, summary)
        emit_json({"benchmark": "segmentation_2d_cv", "dataset": name, "group_by": args.group_by, **summary})
        return 0
    budget_s = parse_duration(args.budget)
    start = time.perf_counter()
    _import(name, source, workspace)
    plan = vesalius.plan(name, workspace=workspace, device="cpu", time_budget_s=budget_s, group_by=args.group_by)
    vesalius.preprocess(name, "2d", workspace=workspace)
    prepared_s = time.perf_counter() - start
    settings: dict[str, Any] = {"seed": args.seed, "force": True}
    if args.network:
        settings["network"] = args.network
    if args.epochs:
        settings["epochs"] = args.epochs
    result = vesalius.train(name, "2d", args.fold, workspace=workspace, report=False, **settings)
    summary = result.validation or {}
    val = list(summary.get("cases", {}))
    extras: dict[str, float] = {}
    if name == "chase":
        extras = _chase_extras(result.run_dir, source, val, workspace)
    elif name == "lung":
        extras = _lung_extras(result.run_dir, val, workspace)
    configuration = plan.configurations["2d"]
    figures = {
        "dataset": name,
        "fold": args.fold,
        "group_by": args.group_by,
        "seed": args.seed,
        "network": args.network or "plan",
        "budget_s": budget_s,
        "patch": list(configuration.patch_size),
        "batch": configuration.batch_size,
        "iterations": result.iterations,
        "train_s": round(result.elapsed_s, 1),
        "stopped": result.stopped,
        "prepare_s": round(prepared_s, 1),
        "val_cases": len(val),
        "dice": summary.get("dice", {}),
        "dice_mean": summary.get("dice_mean"),
        "seconds_per_case": summary.get("seconds_per_case"),
        **{k: round(v, 4) if isinstance(v, float) else v for k, v in extras.items()},
    }
    print(
        f"{name} fold {args.fold}: {len(val)} validation cases, {result.iterations} iterations in "
        f"{result.elapsed_s:.0f} s ({result.stopped}), patch {list(configuration.patch_size)} batch "
        f"{configuration.batch_size}"
    )
    for label, dice in summary.get("dice", {}).items():
        print(f"  Dice {label}: {dice:.4f}")
    for key, value in extras.items():
        print(f"  {key}: {value:.4f}" if isinstance(value, float) else f"  {key}: {value}")
    record = {"benchmark": "segmentation_2d", **machine_and_date(), **figures}
    emit_json(record)
    write_json_atomic(results / f"fold{args.fold}.json", record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
