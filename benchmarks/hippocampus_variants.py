"""Design trials on Hippocampus: variants of the planned 3D configuration trained for a fixed number of iterations.

Run it from the project's root::

    python benchmarks/hippocampus_variants.py default='{}' full_stem='{"stem": "full"}' --jobs 2
    python benchmarks/hippocampus_variants.py wide='{"features": [32, 64, 128, 256]}' --fold 1

Each argument ``NAME=JSON`` is a variant: the JSON object overrides keys of the plan's ``3d`` configuration
(``features``, ``strides``, ``kernels``, ``stem``, ``stem_features``, ``residual_units``, ...) and training settings
(``optimizer``, ``lr``, ``weight_decay``, ``schedule``, ``precision``, ``augmentation``: see
:class:`vesalius.training.SegmentationSettings`), e.g. ``adamw='{"optimizer": "adamw"}'`` or
``no_aug='{"augmentation": {"p_rotation": 0, "p_scaling": 0}}'``. Every variant trains
the same fold for the same number of iterations at the same batch size and seed, so a machine busy with other
work changes how long a trial takes but not its Dice: on a 2-core machine, two variants at a time with one thread
each (``--jobs 2``) is the fair and fast way to compare. The fold's validation cases are then predicted on their
original grids with mirroring and scored (Dice per class, mean over cases), as ``hippocampus_train.py`` does.

The variants share the imported data set and the preprocessed cases of ``hippocampus_train.py``'s workspace
(``benchmarks/.work/vesalius``, made here when missing, planned for a 30-minute budget); each trains in its own
workspace under ``benchmarks/.work/variants/NAME``. Overrides that change preprocessing (spacing) are refused.
Prints a line per variant and one ``BENCHMARK_JSON {...}`` line; without the shared data it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from common import emit_json, machine_and_date, shared_data
from hippocampus_train import DATASET, WORK_DIR, benchmark_workspace

ITERATIONS_PER_EPOCH = 250
PREPROCESSING_KEYS = ("spacing", "spacing_full")
TRAINING_KEYS = ("optimizer", "lr", "weight_decay", "schedule", "precision", "augmentation")


def variant_workspace(source: Path, name: str, overrides: dict[str, Any]) -> Path:
    """A workspace for one variant that links ``source``'s data set and preprocessed cases; its own plan."""
    from vesalius.planning.plan import Plan
    from vesalius.workspace import Workspace

    origin, variant = Workspace(source), Workspace(WORK_DIR / "variants" / name)
    shutil.rmtree(variant.root, ignore_errors=True)
    variant.planning_dir("hippocampus").mkdir(parents=True)
    variant.dataset_dir("hippocampus").parent.symlink_to(origin.dataset_dir("hippocampus").parent, True)
    shutil.copy(origin.fingerprint_path("hippocampus"), variant.fingerprint_path("hippocampus"))
    shutil.copy(origin.splits_path("hippocampus"), variant.splits_path("hippocampus"))
    variant.preprocessed_dir("hippocampus", "3d").symlink_to(origin.preprocessed_dir("hippocampus", "3d"), True)
    plan = Plan.load(origin.plan_path("hippocampus")).with_configuration("3d", **_typed(overrides))
    plan.save(variant.plan_path("hippocampus"))
    return variant.root


def _typed(overrides: dict[str, Any]) -> dict[str, Any]:
    """Configuration overrides from JSON with the field types of :class:`vesalius.planning.plan.Configuration`
    (lists become tuples)."""
    return {
        k: tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, list) else v
        for k, v in overrides.items()
    }


def run_variant(
    name: str, ws: Path, training: dict[str, Any], fold: int, iterations: int, batch: int, threads: int, seed: int
) -> dict:
    """Train one variant's workspace with the ``training`` settings and score the fold's validation cases."""
    import torch

    from vesalius.evaluation.validation import validate_fold
    from vesalius.training import SegmentationSettings
    from vesalius.training.segmentation import train_segmentation

    torch.set_num_threads(threads)
    cfg = SegmentationSettings(
        "hippocampus",
        "3d",
        fold,
        epochs=max(1, iterations // ITERATIONS_PER_EPOCH),
        iterations_per_epoch=ITERATIONS_PER_EPOCH,
        batch_size=batch,
        threads=threads,
        seed=seed,
        **training,
    )
    t = time.perf_counter()
    result = train_segmentation(cfg, ws, force=True)
    train_s = time.perf_counter() - t
    summary = validate_fold(result.run_dir, ws)
    return {
        "name": name,
        "mean_dice": summary["dice_mean"],
        "dice_per_class": summary["dice"],
        "iterations": result.iterations,
        "train_seconds": train_s,
        "seconds_per_iteration": train_s / max(result.iterations, 1),
        "best_pseudo_dice_ema": result.best_score,
        "run_dir": str(result.run_dir),
    }


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    name, _, value = text.partition("=")
    if not name or not value:
        raise SystemExit(f'variant {text!r}: write NAME=JSON, e.g. full_stem=\'{{"stem": "full"}}\'')
    try:
        overrides = json.loads(value)
    except json.JSONDecodeError as error:
        raise SystemExit(f"variant {name}: its overrides are not JSON ({error}); quote them for the shell") from None
    if not isinstance(overrides, dict):
        raise SystemExit(f"variant {name}: the overrides must be a JSON object (plan keys, training settings)")
    refused = sorted(set(overrides) & set(PREPROCESSING_KEYS))
    if refused:
        raise SystemExit(f"variant {name}: {refused} change preprocessing; plan another workspace for that")
    return name, overrides


def main() -> None:
    from vesalius.io.schema import to_json
    from vesalius.planning.plan import Plan
    from vesalius.workspace import Workspace

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="+", help="NAME=JSON overrides of the plan's 3d configuration")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per variant")
    parser.add_argument("--jobs", type=int, default=1, help="variants trained at the same time")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    variants = dict(parse_variant(v) for v in args.variants)
    training = {name: {k: v for k, v in o.items() if k in TRAINING_KEYS} for name, o in variants.items()}
    plan_overrides = {name: {k: v for k, v in o.items() if k not in TRAINING_KEYS} for name, o in variants.items()}
    data_dir = shared_data(DATASET)
    if data_dir is None:
        print(f"skipped: ../shared/data/{DATASET} is not here")
        return
    source = benchmark_workspace(data_dir)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    print(
        f"{DATASET} fold {args.fold}: {len(variants)} variants, {args.iterations} iterations of batch {args.batch}, "
        f"{args.threads} thread(s) each, {args.jobs} at a time, load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    workspaces = {name: variant_workspace(source, name, o) for name, o in plan_overrides.items()}
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=max(1, args.jobs), mp_context=context) as pool:
        futures = [
            pool.submit(
                run_variant, name, ws, training[name], args.fold, args.iterations, args.batch, args.threads, args.seed
            )
            for name, ws in workspaces.items()
        ]
        results = []
        for future in futures:
            r = future.result()
            dice = ", ".join(f"{k} {v:.4f}" for k, v in r["dice_per_class"].items())
            print(
                f"{r['name']}: mean Dice {r['mean_dice']:.4f} ({dice}), {r['iterations']} iterations in "
                f"{r['train_seconds']:.0f} s ({r['seconds_per_iteration']:.3f} s/iteration)",
                flush=True,
            )
            results.append({**r, "overrides": variants[r["name"]]})
    emit_json(
        {
            "benchmark": "hippocampus_variants",
            "fold": args.fold,
            "iterations": args.iterations,
            "batch_size": args.batch,
            "threads_per_variant": args.threads,
            "jobs": args.jobs,
            "seed": args.seed,
            "base_configuration": to_json(Plan.load(Workspace(source).plan_path("hippocampus")).configuration("3d")),
            "variants": results,
            **machine_and_date(),
        }
    )


if __name__ == "__main__":
    main()
