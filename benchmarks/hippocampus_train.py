"""Hippocampus fold 0 under a wall budget: Vesalius with its planner's defaults, and nnU-Net v2 side by side.

Run it from the project's root::

    python benchmarks/hippocampus_train.py --budget 30m            # Vesalius only
    python benchmarks/hippocampus_train.py --budget 30m --peer     # then nnU-Net v2, same fold, same budget

Vesalius: ``import`` of ``../shared/data/Task04_Hippocampus`` into a workspace of its own
(``benchmarks/.work/vesalius``), ``plan`` for the CPU with ``--time-budget`` equal to the wall budget (nothing
else set), ``preprocess``, ``train --fold 0`` (the training loop's wall budget is the budget; import, planning and
preprocessing are timed separately and reported), then the fold's 42 validation cases predicted on their original
grids with mirroring (the planned axes) and scored (Dice per class, mean over cases). The split is nnU-Net's
(identical case lists, checked when ``--peer`` runs). Both tools get the same two threads.

Throughput: iterations per second and voxels per second (patch voxels x batch x iterations / training-loop
seconds). Prints readable lines and one ``BENCHMARK_JSON {...}`` line; without the shared data it says so and
exits 0.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

from common import REPO_ROOT, emit_json, machine_and_date, shared_data
from vesalius.units import parse_duration

DATASET = "Task04_Hippocampus"
WORK_DIR = REPO_ROOT / "benchmarks" / ".work"


def prepare_workspace(data_dir: Path, ws: Path, budget_s: float) -> tuple[Any, dict[str, float]]:
    """Import (once), plan for the CPU with ``budget_s``, preprocess and save the 5-fold split (the one training
    makes: the design trials and the MONAI recipe read it); returns the plan and the step timings."""
    import vesalius
    from vesalius.data.dataset import Dataset
    from vesalius.data.splits import load_or_create_splits
    from vesalius.workspace import Workspace

    timings = {}
    t = time.perf_counter()
    workspace = Workspace(ws)
    if not (workspace.dataset_dir("hippocampus") / "dataset.json").exists():
        vesalius.import_dataset(data_dir, "hippocampus", workspace=ws)
    timings["import_s"] = time.perf_counter() - t
    t = time.perf_counter()
    plan = vesalius.plan("hippocampus", workspace=ws, device="cpu", time_budget_s=budget_s)
    timings["plan_s"] = time.perf_counter() - t
    t = time.perf_counter()
    vesalius.preprocess("hippocampus", "3d", workspace=ws)
    timings["preprocess_s"] = time.perf_counter() - t
    case_ids = [c.case_id for c in Dataset.load(workspace.dataset_dir("hippocampus")).cases]
    load_or_create_splits(workspace.splits_path("hippocampus"), case_ids)
    return plan, timings


def benchmark_workspace(data_dir: Path) -> Path:
    """This benchmark's workspace (``benchmarks/.work/vesalius``), prepared for a 30-minute budget when it lacks
    the saved split; the design trials and the MONAI recipe start from it."""
    from vesalius.workspace import Workspace

    ws = WORK_DIR / "vesalius"
    if not Workspace(ws).splits_path("hippocampus").exists():
        prepare_workspace(data_dir, ws, 1800.0)
    return ws


def run_vesalius(data_dir: Path, work_dir: Path, budget_s: float, fold: int, threads: int) -> dict[str, Any]:
    import torch

    from vesalius.evaluation.validation import validate_fold
    from vesalius.training import SegmentationSettings
    from vesalius.training.segmentation import train_segmentation

    torch.set_num_threads(threads)
    ws = work_dir / "vesalius"
    plan, timings = prepare_workspace(data_dir, ws, budget_s)
    configuration = plan.configuration("3d")
    print(
        f"plan 3d: spacing {list(configuration.spacing)}, patch {list(configuration.patch_size)}, "
        f"batch {configuration.batch_size}, features {list(configuration.features)}, stem {configuration.stem}, "
        f"mirror axes {list(configuration.mirror_axes)}, training {plan.training}",
        flush=True,
    )
    t = time.perf_counter()
    result = train_segmentation(
        SegmentationSettings("hippocampus", "3d", fold, time_budget_s=budget_s, threads=threads),
        ws,
        force=True,
        show_progress=True,
    )
    timings["train_s"] = time.perf_counter() - t
    t = time.perf_counter()
    summary = validate_fold(result.run_dir, ws)
    timings["validate_s"] = time.perf_counter() - t
    from vesalius.io.schema import to_json
    from vesalius.model_package import ModelPackage

    package = ModelPackage(result.run_dir)
    trained = package.trained.configuration
    patch, batch = list(trained.patch_size), trained.batch_size
    return {
        "tool": "vesalius",
        "fold": fold,
        "budget_s": budget_s,
        "dice_per_class": summary["dice"],
        "mean_dice": summary["dice_mean"],
        "iterations": result.iterations,
        "epochs": result.epochs,
        "train_loop_seconds": result.elapsed_s,
        "iters_per_s": result.iterations / result.elapsed_s,
        "voxels_per_s": math.prod(patch) * batch * result.iterations / result.elapsed_s,
        "patch_size": patch,
        "batch_size": batch,
        "predict_s_per_case": summary["seconds_per_case"],
        "tta": "mirroring",
        "n_val_cases": len(summary["cases"]),
        "val_cases": sorted(summary["cases"]),
        "timings": timings,
        "plan": to_json(configuration),
        "training": package.settings,
        "run_dir": str(result.run_dir),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="30m", help="wall budget of each training loop (e.g. 30m, 1800)")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--peer", action="store_true", help="also run nnU-Net v2 with the same budget")
    parser.add_argument("--fresh", action="store_true", help="delete the benchmark's Vesalius workspace first")
    args = parser.parse_args()
    data_dir = shared_data(DATASET)
    if data_dir is None:
        print(f"skipped: ../shared/data/{DATASET} is not here")
        return
    budget_s = parse_duration(args.budget)
    if args.fresh:
        shutil.rmtree(WORK_DIR / "vesalius", ignore_errors=True)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    print(
        f"{DATASET} fold {args.fold}, budget {budget_s / 60:.1f} min, {args.threads} threads, "
        f"load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    ours = run_vesalius(data_dir, WORK_DIR, budget_s, args.fold, args.threads)
    dice = ", ".join(f"{k} {v:.3f}" for k, v in ours["dice_per_class"].items())
    print(f"Vesalius: validation Dice ({ours['n_val_cases']} cases): mean {ours['mean_dice']:.3f} ({dice})")
    print(
        f"  training: {ours['iterations']} iterations, {ours['epochs']} epochs in "
        f"{ours['train_loop_seconds']:.0f} s, {ours['iters_per_s']:.3f} iterations/s, "
        f"{ours['voxels_per_s']:.3g} voxels/s "
        f"(patch {ours['patch_size']}, batch {ours['batch_size']})"
    )
    print(f"  prediction: {ours['predict_s_per_case']:.2f} s per case with mirroring")
    report: dict[str, Any] = {
        "benchmark": "hippocampus_train",
        "budget_s": budget_s,
        "fold": args.fold,
        "threads": args.threads,
        "vesalius": ours,
        **machine_and_date(),
    }
    if args.peer:
        from nnunet_peer import run_nnunet

        peer = run_nnunet(data_dir, WORK_DIR / "nnunet", budget_s, args.fold)
        report["nnunet"] = peer
        same_cases = sorted(peer["val_cases"]) == ours["val_cases"]
        print(
            f"nnU-Net v2: validation Dice mean {peer['mean_dice']:.3f}, {peer['iterations']} iterations, "
            f"{peer['iters_per_s']:.3f} iterations/s, {peer['voxels_per_s']:.3g} voxels/s; "
            f"same validation cases: {same_cases}"
        )
        print(
            f"ratios Vesalius/nnU-Net: Dice {ours['mean_dice'] / max(peer['mean_dice'], 1e-9):.2f}x, "
            f"voxels/s {ours['voxels_per_s'] / peer['voxels_per_s']:.2f}x"
        )
        report["same_validation_cases"] = same_cases
    emit_json(report)


if __name__ == "__main__":
    main()
