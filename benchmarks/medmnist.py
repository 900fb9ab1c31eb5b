"""MedMNIST classification on the CPU: BreastMNIST (28x28) and AdrenalMNIST3D (28^3, 64^3) with the planner's defaults.

Run it from the project's root::

    python benchmarks/medmnist.py                              # all three, 15 minutes of training each
    python benchmarks/medmnist.py --sets breast --budget 10m   # one set
    nice -n 19 python benchmarks/medmnist.py --cv --sets breast --epochs 30 --jobs 2   # cross-validated figures

Each set: ``vesalius import`` of ``../shared/data/medmnist/FILE.npz`` into a workspace of its own
(``benchmarks/.work/medmnist``), then ``vesalius train`` on the official split (train on ``train``, early stopping
and model selection on ``val``) with nothing set but the seed, the thread count and the wall budget of the training
loop, then the validation cases predicted with the selected weights and scored (accuracy and AUC with bootstrap
95 % intervals). The shared copies hold the train and val splits only; the official test split is measured
separately, so the figures here are validation figures (and, because the validation split also selects the epoch,
optimistic ones). The bar is the MedMNIST v2 paper's best test figures: BreastMNIST AUC 0.919 / ACC 0.863,
AdrenalMNIST3D AUC 0.839 / ACC 0.802.

``--cv`` measures instead, for a fixed number of epochs (``--epochs``, one torch thread per run, ``--jobs`` runs at
a time), what the single model's validation figure hides (issue 20). In ``benchmarks/.work/medmnist_cv``:

* the official split: one run; its validation AUC at the epoch that the validation AUC picks (today's figure), at
  the epoch that the early-stopping rule keeps, and at the last epoch;
* 5-fold cross-validation over train + val (the saved stratified split, ``vesalius train --fold 0-4``): each case is
  predicted by the fold model that did not train on it, and the pooled out-of-fold AUC / accuracy at the last epoch
  (nothing chosen on those cases) is the cross-validated figure; at the best epoch it is optimistic again;
* nested inside each outer fold, four inner runs (train on three folds, early stopping and epoch choice on the
  fourth, runs ``fold_5`` ... ``fold_24``, appended to the saved split): early stopping and the best-epoch choice
  judged on cases they never saw, and the fold ensemble (the four inner models' probabilities averaged) against
  its single members, on the same outer cases;
* each with and without test-time augmentation (logits averaged over the flips of the trained mirror axes,
  :func:`vesalius.inference.classification.predict_probabilities`).

Every run predicts its evaluation cases after every epoch, so that every epoch rule is read off one run (the
early-stopping rule, ``round(early_stopping_patience * epochs)`` epochs without a better validation AUC, only ever
ends a run early; the learning-rate schedule does not depend on it). Differences come with the spread of the
per-fold differences and a paired bootstrap over cases. The official test split is not used: the data's README
keeps the test part sealed as the hidden test set, so the fold ensemble is judged by nested cross-validation
instead. Runs already measured (``results/*.npz``) are not trained again; ``--report-only`` reports
the runs measured so far (the nested figures from the inner runs that every outer fold has).

Prints readable lines (seed, load average, wall times) and one ``BENCHMARK_JSON {...}`` line; without the shared
data it says so and exits 0.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import math
import multiprocessing
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from common import REPO_ROOT, emit_json, shared_data
from vesalius.units import parse_duration

WORK_DIR = REPO_ROOT / "benchmarks" / ".work" / "medmnist"
SETS = {"breast": "breastmnist.npz", "adrenal28": "adrenalmnist3d.npz", "adrenal64": "adrenalmnist3d_64.npz"}
PAPER_BEST = {"breast": {"auc": 0.919, "acc": 0.863}, "adrenal28": {"auc": 0.839, "acc": 0.802}}
PAPER_BEST["adrenal64"] = PAPER_BEST["adrenal28"]
CV_WORK_DIR = REPO_ROOT / "benchmarks" / ".work" / "medmnist_cv"
OUTER_FOLDS = 5
#: Epoch rules read off each run: the last epoch (nothing chosen), the best validation AUC of all epochs, and the
#: early-stopping rule (the best epoch of those run before it stops).
RULES = ("last", "best", "early_stopping")


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


# -- cross-validation mode (--cv) --------------------------------------------------------------------------------------


def prepare_cv(name: str, results: Path, network: str | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Import and plan ``name`` afresh (unless ``results`` holds runs of an earlier call), save the stratified
    5-fold split of train + val and the nested inner splits after it (entry ``5 + 4k + i``: the ``i``-th inner run
    of outer fold ``k``, validated on another outer fold); returns the runs to make, the official and outer runs
    first, then the first inner run of every outer fold, the second, ..., and the plan's figures."""
    import vesalius
    from vesalius.data.dataset import Dataset
    from vesalius.data.splits import classification_split
    from vesalius.io.atomic import write_json_atomic
    from vesalius.planning.plan import ClassificationPlan, load_any_plan
    from vesalius.workspace import Workspace

    ws = Workspace(CV_WORK_DIR)
    data = shared_data("medmnist")
    assert data is not None
    if not results.is_dir():
        for folder in (ws.dataset_dir(name), ws.planning_dir(name), ws.runs_dir(name)):
            if folder.exists():
                shutil.rmtree(folder)  # import and plan afresh: the defaults under test
        vesalius.import_dataset(data / SETS[name], name, workspace=CV_WORK_DIR)
        vesalius.plan(name, CV_WORK_DIR)
        results.mkdir(parents=True)
    plan = load_any_plan(ws.classification_plan_path(name))
    assert isinstance(plan, ClassificationPlan)
    dataset = Dataset.load(ws.dataset_dir(name))
    path = ws.classification_splits_path(name)
    official = classification_split(dataset, "official", path)
    outer = [classification_split(dataset, k, path) for k in range(OUTER_FOLDS)]
    splits = [{"train": o["train"], "val": o["val"]} for o in outer]
    chosen = network or plan.network.name
    jobs: list[dict[str, Any]] = [{"fold": "official", "eval": official["val"], "outer": None, "inner": None}]
    jobs += [{"fold": k, "eval": outer[k]["val"], "outer": k, "inner": None} for k in range(OUTER_FOLDS)]
    nested = []
    for k in range(OUTER_FOLDS):
        for i, j in enumerate(j for j in range(OUTER_FOLDS) if j != k):
            held = set(outer[k]["val"]) | set(outer[j]["val"])
            splits.append({"train": [c for c in outer[k]["train"] if c not in held], "val": outer[j]["val"]})
            nested.append({"fold": len(splits) - 1, "eval": outer[k]["val"], "outer": k, "inner": i})
    jobs += sorted(nested, key=lambda job: job["inner"])  # first one inner run per outer fold, then the next ...
    write_json_atomic(path, splits)
    for job in jobs:
        job.update(set=name, network=chosen, out=str(results / f"fold_{job['fold']}.npz"))
    return jobs, {"network": chosen, "epochs": plan.epochs, "patience": plan.early_stopping_patience}


def cv_run(job: dict[str, Any]) -> str:
    """Train one run for ``job["epochs"]`` epochs without early stopping; after every epoch, predict the
    evaluation cases with and without test-time augmentation; save them with the run's own validation AUC and loss
    per epoch to ``job["out"]`` (``.npz``) and delete the checkpoints (nothing else reads them)."""
    import torch

    from vesalius.data.dataset import Dataset
    from vesalius.data.targets import encode_targets
    from vesalius.inference.classification import predict_probabilities, trained_mirror_axes
    from vesalius.inference.model import load_model
    from vesalius.planning.classification import read_case_arrays
    from vesalius.preprocessing.classification import prepare_images
    from vesalius.training.classification import train_classification
    from vesalius.training.settings import ClassificationSettings
    from vesalius.workspace import Workspace

    torch.set_num_threads(job["threads"])
    ws = Workspace(CV_WORK_DIR)
    dataset = Dataset.load(ws.dataset_dir(job["set"]))
    arrays = list(read_case_arrays(dataset, job["eval"]).values())
    run_dir = ws.run_dir(job["set"], job["network"], job["fold"])
    record: dict[str, list[Any]] = {"val_auc": [], "val_loss": [], "plain": [], "tta": []}
    prepared: list[np.ndarray] = []

    def after_epoch(row: dict[str, float]) -> None:
        model = load_model(run_dir, "latest")
        if not prepared:
            prepared.append(prepare_images(arrays, model.trained.normalization, model.trained.input_size))
        record["val_auc"].append(row.get("val_auc", math.nan))
        record["val_loss"].append(row.get("val_loss", math.nan))
        record["plain"].append(predict_probabilities([model], prepared[0]))
        record["tta"].append(predict_probabilities([model], prepared[0], mirror_axes=trained_mirror_axes(model)))

    settings = ClassificationSettings(
        dataset=job["set"],
        fold=job["fold"],
        network=job["network"],
        epochs=job["epochs"],
        time_budget_s=7 * 86400.0,  # the epochs decide, not the wall clock of a shared machine
        early_stopping=0,  # read off afterwards (see the module docstring)
        precision=job["precision"],
        seed=job["seed"],
        threads=job["threads"],
    )
    start = time.perf_counter()
    train_classification(settings, CV_WORK_DIR, force=True, callbacks=[after_epoch])
    wall = time.perf_counter() - start
    for checkpoint in run_dir.glob("checkpoint_*.pt"):
        checkpoint.unlink()
    arrays_out = {k: np.asarray(v) for k, v in record.items()}
    y = encode_targets(dataset, job["eval"])
    np.savez(job["out"], y=y, wall_s=wall, **arrays_out)
    return job["out"]


def epoch_of(rule: str, val_auc: np.ndarray, val_loss: np.ndarray, patience: int) -> int:
    """The epoch (0-based) whose weights ``rule`` keeps: ``last``; ``best`` (highest validation AUC, on equal AUC the
    lowest loss, as :meth:`ClassificationHead.judge`); ``early_stopping`` (the best of the epochs run until
    ``patience`` epochs in a row brought no better one)."""
    if rule == "last":
        return len(val_auc) - 1
    best, best_auc, best_loss, stale = len(val_auc) - 1, -math.inf, math.inf, 0
    for epoch, (auc, loss) in enumerate(zip(val_auc, val_loss, strict=True)):
        if not math.isnan(auc) and (auc > best_auc or (auc == best_auc and loss < best_loss)):
            best, best_auc, best_loss, stale = epoch, auc, loss, 0
        else:
            stale += 1
        if rule == "early_stopping" and stale >= patience:
            break
    return best


def _scores(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    from vesalius.metrics.classification import roc_auc

    return {"auc": roc_auc(y, p.astype(np.float64)), "acc": float(np.mean(p.argmax(1) == y))}


def _paired(y: np.ndarray, a: np.ndarray, b: np.ndarray, folds: np.ndarray, resamples: int = 1000) -> dict[str, Any]:
    """AUC of ``a`` minus AUC of ``b`` on the same cases: pooled, per outer fold (mean, SD, folds won), and its 95 %
    paired-bootstrap interval over cases."""
    from vesalius.metrics.classification import roc_auc
    from vesalius.metrics.statistics import percentile_interval

    def auc(p: np.ndarray, index: np.ndarray) -> float:
        return roc_auc(y[index], p[index].astype(np.float64))

    everything = np.arange(len(y))
    per_fold = np.array([auc(a, folds == f) - auc(b, folds == f) for f in np.unique(folds)])
    rng = np.random.default_rng(0)
    boot = []
    for _ in range(resamples):
        index = rng.integers(0, len(y), len(y))
        if len(np.unique(y[index])) == len(np.unique(y)):
            boot.append(auc(a, index) - auc(b, index))
    return {
        "delta_auc": auc(a, everything) - auc(b, everything),
        "delta_auc_ci": percentile_interval(np.asarray(boot)),
        "per_fold_mean": float(per_fold.mean()),
        "per_fold_sd": float(per_fold.std(ddof=1)) if len(per_fold) > 1 else math.nan,
        "folds_better": int(np.sum(per_fold > 0)),
        "folds": len(per_fold),
    }


def cv_analysis(jobs: list[dict[str, Any]], patience: int) -> dict[str, Any]:
    """Figures of every variant from the saved runs (see the module docstring); missing runs are left out."""
    runs = {}
    for job in jobs:
        if Path(job["out"]).is_file():
            with np.load(job["out"]) as f:
                runs[job["fold"]] = {**job, **{k: f[k] for k in f.files}}

    def probabilities(run: dict[str, Any], rule: str, tta: bool) -> np.ndarray:
        return run["tta" if tta else "plain"][epoch_of(rule, run["val_auc"], run["val_loss"], patience)]

    out: dict[str, Any] = {"patience": patience, "runs": len(runs), "variants": {}, "comparisons": {}}
    variants, pooled = out["variants"], {}
    if "official" in runs:
        run = runs["official"]
        for rule in RULES:
            for tta in (False, True):
                variants[f"official/{rule}/{'tta' if tta else 'plain'}"] = {
                    **_scores(run["y"], probabilities(run, rule, tta)),
                    "epoch": epoch_of(rule, run["val_auc"], run["val_loss"], patience) + 1,
                    "cases": len(run["y"]),
                }
    outer = [runs[k] for k in range(OUTER_FOLDS) if k in runs]
    nested = {k: [r for r in runs.values() if r["outer"] == k and r["inner"] is not None] for k in range(OUTER_FOLDS)}
    members = min(len(nested[k]) for k in range(OUTER_FOLDS))  # inner runs measured for every outer fold
    for k in nested:
        nested[k] = sorted(nested[k], key=lambda r: r["inner"])[:members]
    complete_nested = list(range(OUTER_FOLDS)) if members else []
    out["ensemble_members"] = members
    for rule in RULES:
        for tta in (False, True):
            mode = "tta" if tta else "plain"
            if len(outer) == OUTER_FOLDS:
                p = np.concatenate([probabilities(r, rule, tta) for r in outer])
                pooled[f"cv/{rule}/{mode}"] = p
            if members > 1:
                pooled[f"nested_ensemble/{rule}/{mode}"] = np.concatenate(
                    [np.mean([probabilities(r, rule, tta) for r in nested[k]], axis=0) for k in complete_nested]
                )
            if complete_nested:
                for i in range(members):  # the i-th inner run of every outer fold: one single model each
                    pooled[f"nested_single{i}/{rule}/{mode}"] = np.concatenate(
                        [probabilities(nested[k][i], rule, tta) for k in complete_nested]
                    )
    if not pooled:
        return out
    y_cv = np.concatenate([r["y"] for r in outer]) if len(outer) == OUTER_FOLDS else None
    fold_cv = np.concatenate([np.full(len(r["y"]), r["outer"]) for r in outer]) if y_cv is not None else None
    y_nested = np.concatenate([nested[k][0]["y"] for k in complete_nested]) if complete_nested else None
    fold_nested = (
        np.concatenate([np.full(len(nested[k][0]["y"]), k) for k in complete_nested]) if complete_nested else None
    )

    def truth(key: str) -> tuple[np.ndarray, np.ndarray]:
        return (y_cv, fold_cv) if key.startswith("cv/") else (y_nested, fold_nested)  # type: ignore[return-value]

    for key, p in pooled.items():
        y, folds = truth(key)
        per_fold = [_scores(y[folds == f], p[folds == f])["auc"] for f in np.unique(folds)]
        variants[key] = {
            **_scores(y, p),
            "fold_auc_mean": float(np.mean(per_fold)),
            "fold_auc_sd": float(np.std(per_fold, ddof=1)),
            "cases": len(y),
        }
    if complete_nested:  # the single model's figure: the mean over the single-model columns
        for rule in RULES:
            for mode in ("plain", "tta"):
                singles = [variants.pop(f"nested_single{i}/{rule}/{mode}") for i in range(members)]
                variants[f"nested_single/{rule}/{mode}"] = {
                    k: float(np.mean([s[k] for s in singles])) for k in ("auc", "acc", "fold_auc_mean", "fold_auc_sd")
                } | {
                    "auc_range": [min(s["auc"] for s in singles), max(s["auc"] for s in singles)],
                    "cases": singles[0]["cases"],
                }
    pairs = [
        ("cv/last/tta", "cv/last/plain"),
        ("cv/best/plain", "cv/last/plain"),
        ("cv/early_stopping/plain", "cv/last/plain"),
        ("nested_single0/early_stopping/plain", "nested_single0/last/plain"),
        ("nested_single0/best/plain", "nested_single0/last/plain"),
        ("nested_single0/last/tta", "nested_single0/last/plain"),
        ("nested_ensemble/last/plain", "nested_single0/last/plain"),
        ("nested_ensemble/early_stopping/plain", "nested_single0/early_stopping/plain"),
        ("nested_ensemble/last/tta", "nested_ensemble/last/plain"),
        ("nested_ensemble/early_stopping/plain", "nested_ensemble/last/plain"),
    ]
    for a, b in pairs:
        if a in pooled and b in pooled:
            y, folds = truth(a)
            out["comparisons"][f"{a} - {b}"] = _paired(y, pooled[a], pooled[b], folds)
    return out


def run_cv(names: list[str], args: argparse.Namespace) -> None:
    """``--cv``: every run of every set (``args.jobs`` at a time, each on ``args.threads`` torch threads), then the
    figures (see the module docstring)."""
    started, load = time.perf_counter(), os.getloadavg()
    print(
        f"cross-validation: seed {args.seed}, {args.epochs} epochs, threads {args.threads} x {args.jobs} jobs, "
        f"load average {load}",
        flush=True,
    )
    reports = []
    for name in names:
        results = CV_WORK_DIR / "results" / f"{name}_e{args.epochs}_s{args.seed}_{args.precision}"
        jobs, planned = prepare_cv(name, results, args.network)
        options = {"epochs": args.epochs, "seed": args.seed, "threads": args.threads, "precision": args.precision}
        todo = [] if args.report_only else [{**job, **options} for job in jobs if not Path(job["out"]).is_file()]
        measured = sum(Path(job["out"]).is_file() for job in jobs)
        print(f"{name}: {len(jobs)} runs ({measured} measured before), plan {planned}", flush=True)
        context = multiprocessing.get_context("spawn")  # a fresh interpreter per worker: torch threads as set
        with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
            for done in pool.map(cv_run, todo):
                print(f"  {Path(done).name} done at {time.perf_counter() - started:.0f} s", flush=True)
        patience = max(1, round(planned["patience"] / planned["epochs"] * args.epochs))  # the rule's fraction
        report = {"set": name, **planned, "trained_epochs": args.epochs, **cv_analysis(jobs, patience)}
        reports.append(report)
        for key, v in report["variants"].items():
            spread = f", per fold {v['fold_auc_mean']:.3f} +- {v['fold_auc_sd']:.3f}" if "fold_auc_sd" in v else ""
            print(f"  {key}: AUC {v['auc']:.3f}, ACC {v['acc']:.3f} ({v['cases']} cases){spread}", flush=True)
        for key, c in report["comparisons"].items():
            print(
                f"  {key}: dAUC {c['delta_auc']:+.3f} {np.round(c['delta_auc_ci'], 3).tolist()}, per fold "
                f"{c['per_fold_mean']:+.3f} +- {c['per_fold_sd']:.3f} ({c['folds_better']}/{c['folds']} better)",
                flush=True,
            )
    wall = time.perf_counter() - started
    print(f"total wall time {wall:.0f} s, load average at the end {os.getloadavg()}")
    emit_json(
        {
            "benchmark": "medmnist_cv",
            "date": datetime.date.today().isoformat(),
            "machine": platform.machine(),
            "threads": args.threads,
            "jobs": args.jobs,
            "seed": args.seed,
            "precision": args.precision,
            "epochs": args.epochs,
            "load_average_start": load,
            "wall_s": round(wall, 1),
            "results": reports,
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", default="breast,adrenal28,adrenal64", help="comma-separated: " + ", ".join(SETS))
    parser.add_argument("--budget", default="15m", help="wall budget of each training loop (e.g. 15m)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores; --cv: 1)")
    parser.add_argument("--network", default=None, help="override the planned network (cnn, resnet18, ...)")
    parser.add_argument("--precision", default="auto", help="auto, fp32 or bf16")
    parser.add_argument("--cv", action="store_true", help="cross-validated figures (see the module docstring)")
    parser.add_argument("--epochs", type=int, default=30, help="--cv: epochs of every run")
    parser.add_argument("--jobs", type=int, default=1, help="--cv: runs at a time")
    parser.add_argument("--report-only", action="store_true", help="--cv: the figures of the runs measured so far")
    args = parser.parse_args()
    if shared_data("medmnist") is None:
        print("skip: ../shared/data/medmnist is absent (this benchmark needs the MedMNIST npz files)")
        return
    names = [s.strip() for s in args.sets.split(",") if s.strip()]
    unknown = [s for s in names if s not in SETS]
    if unknown:
        parser.error(f"unknown sets {unknown}; use {', '.join(SETS)}")
    if args.cv:
        args.threads = args.threads or 1
        run_cv(names, args)
        return
    args.threads = args.threads or len(os.sched_getaffinity(0))
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
