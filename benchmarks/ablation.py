"""Ablation: the trainer's network families and options, and the plan's intensity filters, against the default.

Each variant trains fold 0 of a data set for the same fixed number of iterations as the default (the planned
``resunet``, no filters, no adversarial loss), with seeds 0 and 1, one torch thread per run, then predicts and scores
the fold's validation cases (mirroring, the decided post-processing). A fixed iteration count, not a wall budget, so
that a busy machine changes the seconds, not the Dice. Variants:

- ``default``: the plan as the planner makes it (``vesalius plan --time-budget 30m``, CPU).
- ``attention``, ``resenc``: ``vesalius train --network attention|resenc``.
- ``adversarial``: ``vesalius train --adversarial 0.01`` (the documented example weight; warm-up 0.2 of the run);
  ``adversarial_0.1``: ten times that weight (not among a set's default variants).
- ``n4``, ``curvature_flow``, ``anisotropic``: ``vesalius plan --n4`` or ``--denoise ...``, then the default
  training. By default ``n4`` on the MRI set (Hippocampus) and ``curvature_flow`` on the others.

Data sets (``../shared/data``): ``lung`` (MSD Task06 CT lung-tumour patches, 48 x 48), ``hippocampus`` (Task04, 3D),
``montgomery`` (chest X-ray lungs), ``chase`` (CHASE_DB1 retinal vessels; Dice is the vessel F1). The 2D sets are
imported as ``benchmarks/segmentation_2d.py`` imports them.

Iterations per run (``--iterations`` overrides them for every set given): lung 2000, Hippocampus 250 (batch 10),
Montgomery and CHASE_DB1 250; in epochs of at most 250 iterations. A rough guide from the 2026-12-02 runs (one
thread per run, two runs at a time on 2 cores): the ten lung runs take about 15 minutes on a quiet machine,
Hippocampus about an hour, Montgomery and CHASE_DB1 (512 x 512 and 960 x 960 patches) longer still.

Figures per (set, variant): mean validation Dice over the seeds (mean over classes for Hippocampus), its spread
(max - min), and the training loop's seconds per iteration (its per-epoch validation patches included). A variant
"gains" only when its mean beats the default's by more than the larger of the two seed spreads.

Run it from the project's root (resumable: a (set, variant, seed, iterations) whose result JSON exists in
``benchmarks/.work/ablation/results`` is not trained again, so a later call extends the table)::

    nice -n 19 python benchmarks/ablation.py                            # every set, its 5 variants, seeds 0 and 1
    nice -n 19 python benchmarks/ablation.py --sets lung,hippocampus --jobs 2
    nice -n 19 python benchmarks/ablation.py --sets chase --variants default,anisotropic --seeds 0,1,2 --iterations 400

Without ``../shared/data`` it says so and exits 0. Prints readable lines, a Markdown table and one
``BENCHMARK_JSON {...}`` line.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import time
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO_ROOT, emit_json, machine_and_date, shared_data
from benchmarks.segmentation_2d import SOURCES, _import

WORK = REPO_ROOT / "benchmarks" / ".work" / "ablation"
#: The planner's wall budget (as for ``segmentation_2d.py`` and ``hippocampus_train.py``): it sizes patch and batch.
PLAN_BUDGET_S = 1800.0
#: The adversarial loss's weight: the example of ``vesalius train --help`` and the user guide.
ADVERSARIAL_WEIGHT = 0.01
FOLD = 0


@dataclass(frozen=True)
class DataSet:
    """One data set of the ablation: its shared folder, plan configuration, default iterations and filter."""

    source: str
    config: str
    iterations: int
    filter: str
    metric: str = "Dice"


SETS: dict[str, DataSet] = {
    "lung": DataSet(SOURCES["lung"][0], "2d", 2000, "curvature_flow"),
    "hippocampus": DataSet("Task04_Hippocampus", "3d", 250, "n4"),
    "montgomery": DataSet(SOURCES["montgomery"][0], "2d", 250, "curvature_flow"),
    "chase": DataSet(SOURCES["chase"][0], "2d", 250, "curvature_flow", "F1"),
}

#: variant -> (plan options, training settings)
VARIANTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "default": ({}, {}),
    "attention": ({}, {"network": "attention"}),
    "resenc": ({}, {"network": "resenc"}),
    "adversarial": ({}, {"adversarial": ADVERSARIAL_WEIGHT}),
    "adversarial_0.1": ({}, {"adversarial": 0.1}),
    "n4": ({"n4": True}, {}),
    "curvature_flow": ({"denoise": "curvature_flow"}, {}),
    "anisotropic": ({"denoise": "anisotropic"}, {}),
}


def _preparation(variant: str) -> str:
    """The prepared workspace a variant trains from: ``plain`` or the name of its plan filter."""
    return variant if VARIANTS[variant][0] else "plain"


def _link(target: Path, link: Path) -> None:
    """Make ``link`` a symbolic link to ``target`` (once)."""
    if not link.is_symlink():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target, target_is_directory=True)


def prepare(name: str, preparation: str) -> Path:
    """Import (once, into ``prepared/plain``), plan with the preparation's filters and preprocess data set ``name``
    in ``prepared/PREPARATION``, and save its 5-fold split; returns that workspace."""
    import vesalius
    from vesalius.data.dataset import Dataset
    from vesalius.data.splits import load_or_create_splits
    from vesalius.workspace import Workspace

    plain = WORK / "prepared" / "plain"
    source = shared_data(SETS[name].source)
    assert source is not None
    if name in SOURCES:
        _import(name, source, plain)
    elif not (Workspace(plain).dataset_dir(name) / "dataset.json").exists():
        vesalius.import_dataset(source, name, workspace=plain)
    ws = WORK / "prepared" / preparation
    if preparation != "plain":
        _link(Workspace(plain).dataset_dir(name), Workspace(ws).dataset_dir(name))
    workspace = Workspace(ws)
    if not workspace.plan_path(name).exists():
        filters = {} if preparation == "plain" else VARIANTS[preparation][0]
        vesalius.plan(name, workspace=ws, device="cpu", time_budget_s=PLAN_BUDGET_S, **filters)
    vesalius.preprocess(name, SETS[name].config, workspace=ws, workers=1)
    case_ids = [c.case_id for c in Dataset.load(workspace.dataset_dir(name)).cases]
    load_or_create_splits(workspace.splits_path(name), case_ids)
    return ws


def _key(name: str, variant: str, seed: int, iterations: int) -> str:
    return f"{name}__{variant}__seed{seed}__it{iterations}"


def result_path(name: str, variant: str, seed: int, iterations: int) -> Path:
    """Where the run's result JSON lies (its presence means the run is done)."""
    return WORK / "results" / f"{_key(name, variant, seed, iterations)}.json"


def run_one(name: str, variant: str, seed: int, iterations: int) -> dict[str, Any]:
    """Train and validate one (set, variant, seed) in a workspace of its own whose data set and preprocessed cases
    are links to the prepared ones (so runs in parallel never share a run folder); writes and returns the result."""
    import vesalius
    from vesalius.workspace import Workspace

    prepared = Workspace(WORK / "prepared" / _preparation(variant))
    ws = WORK / "runs" / _key(name, variant, seed, iterations)
    _link(prepared.dataset_dir(name), Workspace(ws).dataset_dir(name))
    _link(prepared.planning_dir(name), Workspace(ws).planning_dir(name))
    per_epoch = next(n for n in range(min(250, iterations), 0, -1) if iterations % n == 0)  # whole epochs
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    result = vesalius.train(
        name,
        SETS[name].config,
        FOLD,
        workspace=ws,
        report=False,
        force=True,
        seed=seed,
        epochs=iterations // per_epoch,
        iterations_per_epoch=per_epoch,
        threads=1,
        **VARIANTS[variant][1],
    )
    summary = result.validation or {}
    record = {
        "dataset": name,
        "variant": variant,
        "seed": seed,
        "fold": FOLD,
        "iterations": result.iterations,
        "train_s": round(result.elapsed_s, 1),
        "s_per_iteration": round(result.elapsed_s / max(result.iterations, 1), 4),
        "total_s": round(time.perf_counter() - start, 1),
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "val_cases": len(summary.get("cases", {})),
        "dice": summary.get("dice", {}),
        "dice_mean": summary.get("dice_mean"),
        **machine_and_date(),
    }
    path = result_path(name, variant, seed, iterations)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(record, indent=1))
    partial.replace(path)
    return record


def _describe(record: dict[str, Any]) -> str:
    dice = ", ".join(f"{label} {value:.4f}" for label, value in record["dice"].items())
    metric = SETS[record["dataset"]].metric
    return (
        f"{record['dataset']} {record['variant']} seed {record['seed']}: {metric} {record['dice_mean']:.4f} ({dice}); "
        f"{record['iterations']} iterations, {record['s_per_iteration']:.3f} s/it, load {record['load_before']}"
    )


def summarise(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (set, variant): mean, spread (max - min) and std of the seeds' Dice, mean s/it and load, and the verdict
    against the default of the same set: gain or loss only beyond the larger seed spread of the two, and whether the
    difference also exceeds the set's largest seed spread (over all its variants with two seeds or more)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault((record["dataset"], record["variant"]), []).append(record)
    rows = []
    for (name, variant), group in groups.items():
        scores = [r["dice_mean"] for r in group]
        rows.append(
            {
                "dataset": name,
                "variant": variant,
                "seeds": sorted(r["seed"] for r in group),
                "iterations": group[0]["iterations"],
                "dice_mean": statistics.fmean(scores),
                "dice_min": min(scores),
                "dice_max": max(scores),
                "spread": max(scores) - min(scores),
                "std": statistics.stdev(scores) if len(scores) > 1 else None,
                "s_per_iteration": statistics.fmean(r["s_per_iteration"] for r in group),
                "load": statistics.fmean(r["load_before"] for r in group),
            }
        )
    set_spread: dict[str, float] = {}
    for row in rows:
        if len(row["seeds"]) > 1:
            set_spread[row["dataset"]] = max(set_spread.get(row["dataset"], 0.0), row["spread"])
    defaults = {row["dataset"]: row for row in rows if row["variant"] == "default"}
    for row in rows:
        base = defaults.get(row["dataset"])
        if base is None or row is base:
            continue
        row["delta"] = row["dice_mean"] - base["dice_mean"]
        if len(row["seeds"]) < 2 or len(base["seeds"]) < 2:
            row["verdict"] = "one seed: no spread"
        else:
            margin = max(row["spread"], base["spread"])
            row["verdict"] = "gain" if row["delta"] > margin else "loss" if row["delta"] < -margin else "within spread"
            row["set_spread"] = set_spread[row["dataset"]]
            row["beyond_set_spread"] = abs(row["delta"]) > row["set_spread"]
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The summary as a Markdown table, sets in the order of :data:`SETS`, the default first."""
    order = {name: i for i, name in enumerate(SETS)}
    variants = {name: i for i, name in enumerate(VARIANTS)}
    lines = [
        "| set | variant | seeds | iterations | mean Dice (F1) | min-max | vs. default | beyond the set's largest "
        "seed spread | s/it (load) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in sorted(rows, key=lambda r: (order[r["dataset"]], variants[r["variant"]])):
        versus = f"{row['delta']:+.4f} ({row['verdict']})" if "delta" in row else "—"
        beyond = (
            f"{'yes' if row['beyond_set_spread'] else 'no'} ({row['set_spread']:.4f})" if "set_spread" in row else "—"
        )
        lines.append(
            f"| {row['dataset']} | {row['variant']} | {','.join(map(str, row['seeds']))} | {row['iterations']} | "
            f"{row['dice_mean']:.4f} | {row['dice_min']:.4f}-{row['dice_max']:.4f} | {versus} | {beyond} | "
            f"{row['s_per_iteration']:.3f} ({row['load']:.1f}) |"
        )
    return "\n".join(lines)


def _names(text: str, known: dict[str, Any], what: str) -> list[str]:
    names = [n for n in text.split(",") if n]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (known: {', '.join(known)})")
    return names


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", default=",".join(SETS), help="Comma-separated data sets, in priority order.")
    parser.add_argument(
        "--variants", default=None, help="Comma-separated variants (default: the four, plus the set's filter)."
    )
    parser.add_argument("--seeds", default="0,1", help="Comma-separated seeds.")
    parser.add_argument(
        "--iterations", type=int, default=None, help="Training iterations of every run (default: per set)."
    )
    parser.add_argument("--jobs", type=int, default=2, help="Runs at a time (each on one torch thread).")
    parser.add_argument("--report-only", action="store_true", help="Train nothing: summarise the results present.")
    args = parser.parse_args()
    names = _names(args.sets, SETS, "data sets")
    chosen = _names(args.variants, VARIANTS, "variants") if args.variants else None
    seeds = [int(s) for s in args.seeds.split(",") if s]

    present = [n for n in names if shared_data(SETS[n].source) is not None]
    for name in names:
        if name not in present:
            print(f"skipped {name}: ../shared/data/{SETS[name].source} is absent")
    if not present:
        print("skipped: none of the data sets is in ../shared/data")
        return 0

    plans: list[tuple[str, str, int, int]] = []
    for name in present:
        variants = chosen or ["default", "attention", "resenc", "adversarial", SETS[name].filter]
        iterations = args.iterations or SETS[name].iterations
        plans += [(name, variant, seed, iterations) for seed in seeds for variant in variants]
    todo = [] if args.report_only else [p for p in plans if not result_path(*p).exists()]
    done = sum(result_path(*p).exists() for p in plans)
    print(f"{len(plans)} runs, {done} already done, {len(todo)} to train, {args.jobs} at a time, 1 thread each")

    context = multiprocessing.get_context("spawn")
    futures: dict[Future[dict[str, Any]], tuple[str, str, int, int]] = {}
    with ProcessPoolExecutor(args.jobs, mp_context=context, max_tasks_per_child=1) as pool:
        for name in present:
            for preparation in sorted({_preparation(p[1]) for p in todo if p[0] == name}):
                start = time.perf_counter()
                prepare(name, preparation)
                print(f"{name}: prepared '{preparation}' in {time.perf_counter() - start:.0f} s", flush=True)
            futures |= {pool.submit(run_one, *p): p for p in todo if p[0] == name}
        for future in as_completed(futures):
            try:
                print(_describe(future.result()), flush=True)
            except Exception as error:  # one failed run must not lose the others
                print(f"{_key(*futures[future])} failed: {error!r}", flush=True)

    records = [json.loads(result_path(*p).read_text()) for p in plans if result_path(*p).exists()]
    rows = summarise(records)
    print(markdown_table(rows))
    emit_json(
        {
            "benchmark": "ablation",
            **machine_and_date(),
            "fold": FOLD,
            "plan_budget_s": PLAN_BUDGET_S,
            "adversarial_weight": ADVERSARIAL_WEIGHT,
            "threads_per_run": 1,
            "jobs": args.jobs,
            "summary": rows,
            "runs": records,
        }
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
