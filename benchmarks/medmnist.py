"""MedMNIST classification on the CPU: BreastMNIST (28x28) and AdrenalMNIST3D (28^3, 64^3) with the planner's defaults.

Run it from the project's root::

    python benchmarks/medmnist.py                              # all three, 15 minutes of training each
    python benchmarks/medmnist.py --sets breast --budget 10m   # one set

Each set: ``vesalius import`` of ``../shared/data/medmnist/FILE.npz`` into a workspace of its own
(``benchmarks/.work/medmnist``), then ``vesalius train`` on the official split (train on ``train``, early stopping
and model selection on ``val``) with nothing set but the seed, the thread count and the wall budget of the training
loop, then the validation cases predicted with the selected weights and scored (accuracy and AUC with bootstrap
95 % intervals). The shared copies hold the train and val splits only; the official test split is measured
separately, so the figures here are validation figures (and, because the validation split also selects the epoch,
optimistic ones). The bar is the MedMNIST v2 paper's best test figures: BreastMNIST AUC 0.919 / ACC 0.863,
AdrenalMNIST3D AUC 0.839 / ACC 0.802.

Prints readable lines (seed, load average, wall times) and one ``BENCHMARK_JSON {...}`` line; without the shared
data it says so and exits 0.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import time
from typing import Any

from common import REPO_ROOT, emit_json, shared_data
from vesalius.units import parse_duration

WORK_DIR = REPO_ROOT / "benchmarks" / ".work" / "medmnist"
SETS = {"breast": "breastmnist.npz", "adrenal28": "adrenalmnist3d.npz", "adrenal64": "adrenalmnist3d_64.npz"}
PAPER_BEST = {"breast": {"auc": 0.919, "acc": 0.863}, "adrenal28": {"auc": 0.839, "acc": 0.802}}
PAPER_BEST["adrenal64"] = PAPER_BEST["adrenal28"]


def run_set(name: str, budget_s: float, seed: int, threads: int, network: str | None, precision: str) -> dict[str, Any]:
    import torch

    import vesalius

    torch.set_num_threads(threads)
    data = shared_data("medmnist")
    assert data is not None
    from vesalius.workspace import Workspace

    ws = WORK_DIR
    for folder in (Workspace(ws).dataset_dir(name), Workspace(ws).planning_dir(name)):
        if folder.exists():
            shutil.rmtree(folder)  # import and plan afresh: the defaults under test
    t = time.perf_counter()
    vesalius.import_dataset(data / SETS[name], name, workspace=ws)
    import_s = time.perf_counter() - t
    t = time.perf_counter()
    result = vesalius.train(
        name,
        None,
        "official",
        ws,
        force=True,
        report=False,
        time_budget_s=budget_s,
        seed=seed,
        threads=threads,
        network=network,
        precision=precision,
    )
    wall_s = time.perf_counter() - t
    v = result.validation or {}
    return {
        "set": name,
        "network": result.run_dir.parent.name,
        "val_auc": v.get("auc"),
        "val_auc_ci": v.get("auc_ci"),
        "val_acc": v.get("accuracy"),
        "val_acc_ci": v.get("accuracy_ci"),
        "val_balanced_accuracy": v.get("balanced_accuracy"),
        "val_cases": v.get("n"),
        "epochs": result.epochs,
        "best_epoch": result.best_epoch,
        "stopped": result.stopped,
        "training_loop_s": round(result.elapsed_s, 1),
        "train_and_validate_wall_s": round(wall_s, 1),
        "import_s": round(import_s, 1),
        "paper_best_test": PAPER_BEST[name],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", default="breast,adrenal28,adrenal64", help="comma-separated: " + ", ".join(SETS))
    parser.add_argument("--budget", default="15m", help="wall budget of each training loop (e.g. 15m)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--network", default=None, help="override the planned network (cnn, resnet18, ...)")
    parser.add_argument("--precision", default="auto", help="auto, fp32 or bf16")
    args = parser.parse_args()
    if shared_data("medmnist") is None:
        print("skip: ../shared/data/medmnist is absent (this benchmark needs the MedMNIST npz files)")
        return
    names = [s.strip() for s in args.sets.split(",") if s.strip()]
    unknown = [s for s in names if s not in SETS]
    if unknown:
        parser.error(f"unknown sets {unknown}; use {', '.join(SETS)}")
    budget_s = parse_duration(args.budget)
    load = os.getloadavg()
    print(f"seed {args.seed}, threads {args.threads}, budget {budget_s:.0f} s per set, load average {load}")
    started = time.perf_counter()
    results = []
    for name in names:
        r = run_set(name, budget_s, args.seed, args.threads, args.network, args.precision)
        results.append(r)
        print(
            f"{name} ({r['network']}): validation AUC {r['val_auc']:.3f} {r['val_auc_ci']}, "
            f"ACC {r['val_acc']:.3f} {r['val_acc_ci']} ({r['val_cases']} cases); {r['epochs']} epochs "
            f"(best {r['best_epoch']}, stopped by {r['stopped']}), training {r['training_loop_s']:.0f} s, "
            f"train+validate wall {r['train_and_validate_wall_s']:.0f} s; paper best (test) {r['paper_best_test']}",
            flush=True,
        )
    wall = time.perf_counter() - started
    print(f"total wall time {wall:.0f} s, load average at the end {os.getloadavg()}")
    emit_json(
        {
            "benchmark": "medmnist",
            "date": datetime.date.today().isoformat(),
            "machine": platform.machine(),
            "threads": args.threads,
            "seed": args.seed,
            "precision": args.precision,
            "budget_s": budget_s,
            "load_average_start": load,
            "wall_s": round(wall, 1),
            "results": results,
        }
    )


if __name__ == "__main__":
    main()
