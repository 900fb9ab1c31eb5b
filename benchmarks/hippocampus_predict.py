"""Predicting held-out Hippocampus cases: seconds per case, peak memory and Dice, Vesalius next to nnU-Net v2.

Run it from the project's root::

    python benchmarks/hippocampus_predict.py                  # both tools, with and without TTA
    python benchmarks/hippocampus_predict.py --no-peer        # Vesalius only

The cases are fold 0's 42 validation cases (nnU-Net's split, which Vesalius uses too), never seen in training.
The models are the fold-0 models that ``hippocampus_train.py`` (Vesalius) and ``nnunet_peer.py`` left in
``benchmarks/.work``; a missing one is trained first with ``--train-budget`` (default 10 minutes) of wall time.

Each tool runs as its own command line, as a user would run it, on the same input files, with the same number of
threads: ``vesalius predict`` (mirroring TTA on the planned axes; ``--fast``: none, window step 0.75) and
``nnUNetv2_predict -device cpu`` (mirroring TTA on its axes; ``--disable_tta``; one preprocessing and one export
worker). Seconds per case are the command's wall time divided by the cases (start-up and model loading
included); with ``--repeats N`` the commands run N times in turn and the fastest run counts (the least disturbed
by other work on the machine; all runs are in the JSON line). Peak memory is the highest summed PSS of the
command and its worker processes (:func:`common.run_measured`). Dice is scored here for both, per class, mean over
cases. Prints readable lines and one ``BENCHMARK_JSON {...}`` line; without the shared data it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from common import REPO_ROOT, dice_per_class, emit_json, machine_and_date, run_measured, shared_data
from vesalius.units import parse_duration

DATASET = "Task04_Hippocampus"
WORK_DIR = REPO_ROOT / "benchmarks" / ".work"
FOLD = 0
LABELS = {1: "Anterior", 2: "Posterior"}


def vesalius_run(data_dir: Path, train_budget_s: float, threads: int) -> Path:
    """The Vesalius fold-0 run folder, trained first when it has no final checkpoint."""
    from vesalius.model_package import ModelPackage
    from vesalius.workspace import Workspace

    run_dir = Workspace(WORK_DIR / "vesalius").run_dir("hippocampus", "3d", FOLD)
    if not ModelPackage(run_dir).checkpoint_path("final").is_file():
        from hippocampus_train import run_vesalius

        print(f"no Vesalius model yet: training fold {FOLD} for {train_budget_s / 60:.0f} min", flush=True)
        run_vesalius(data_dir, WORK_DIR, train_budget_s, FOLD, threads)
    return run_dir


def nnunet_checkpoint(data_dir: Path, train_budget_s: float) -> tuple[Path, dict[str, str]]:
    """nnU-Net's fold-0 result folder and the environment its commands need (trained first when missing)."""
    import nnunet_peer as peer

    work = WORK_DIR / "nnunet"
    _, name = peer.dataset_name(data_dir)
    folder = work / "nnUNet_results" / name / f"{peer.TRAINER}__{peer.PLANS}__{peer.CONFIGURATION}" / f"fold_{FOLD}"
    if not any((folder / c).is_file() for c in ("checkpoint_final.pth", "checkpoint_latest.pth")):
        print(f"no nnU-Net model yet: training fold {FOLD} for {train_budget_s / 60:.0f} min", flush=True)
        peer.run_nnunet(data_dir, work, train_budget_s, FOLD)
    _, env = peer.peer_environment(work)
    return folder, env


def link_inputs(data_dir: Path, cases: list[str], folder: Path, suffix: str) -> None:
    """Symbolic links ``folder/CASE{suffix}`` to the data set's images (the originals are never touched)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for case in cases:
        (folder / f"{case}{suffix}").symlink_to(data_dir / "imagesTr" / f"{case}.nii.gz")


def score(pred_dir: Path, data_dir: Path, cases: list[str]) -> dict[str, Any]:
    """Dice per class (mean over cases) of the predictions in ``pred_dir``; checks each one's geometry."""
    per_case = {}
    for case in cases:
        pred = sitk.ReadImage(str(pred_dir / f"{case}.nii.gz"))
        ref = sitk.ReadImage(str(data_dir / "labelsTr" / f"{case}.nii.gz"))
        if pred.GetSize() != ref.GetSize() or not np.allclose(pred.GetSpacing(), ref.GetSpacing()):
            raise RuntimeError(f"{case}: the prediction is not on the reference's grid")
        per_case[case] = dice_per_class(sitk.GetArrayFromImage(pred), sitk.GetArrayFromImage(ref), LABELS)
    dice = {LABELS[k]: statistics.mean(d[k] for d in per_case.values()) for k in LABELS}
    return {"dice_per_class": dice, "mean_dice": statistics.mean(dice.values())}


def timed(tool: str, mode: str, cmd: list[str], env: dict[str, str], out_dir: Path, n: int) -> dict[str, Any]:
    """Run one prediction command and report its time and memory (raises with its output when it fails)."""
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    code, seconds, peak, output = run_measured(cmd, env)
    if code != 0:
        raise RuntimeError(f"{tool} ({mode}) failed with exit code {code}:\n{output[-3000:]}")
    return {"tool": tool, "mode": mode, "wall_s": seconds, "s_per_case": seconds / n, "peak_memory_gib": peak / 2**30}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train-budget", default="10m", help="training budget for a model that is missing")
    parser.add_argument("--no-peer", action="store_true", help="Vesalius only")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each command (the fastest is reported)")
    args = parser.parse_args()
    data_dir = shared_data(DATASET)
    if data_dir is None:
        print(f"skipped: ../shared/data/{DATASET} is not here")
        return 0
    budget_s = parse_duration(args.train_budget)
    run_dir = vesalius_run(data_dir, budget_s, args.threads)
    cases = json.loads((run_dir / "training.json").read_text())["split"]["val"]
    n = len(cases)
    work = WORK_DIR / "predict"
    link_inputs(data_dir, cases, work / "input", ".nii.gz")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    vesalius = str(Path(sys.executable).parent / "vesalius")
    print(f"{DATASET}: {n} held-out cases (fold {FOLD} validation), {args.threads} threads, "
          f"load {os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
    commands = []  # (tool, mode, command, environment, output folder)
    for mode, flags in (("tta", []), ("no_tta", ["--fast"])):
        out = work / f"vesalius_{mode}"
        cmd = [vesalius, "predict", "-i", str(work / "input"), "-o", str(out), "-m", str(run_dir), *flags]
        commands.append(("vesalius", mode, cmd, env, out))
    if not args.no_peer:
        import nnunet_peer as peer

        folder, peer_env = nnunet_checkpoint(data_dir, budget_s)
        checkpoint = next(c for c in ("checkpoint_final.pth", "checkpoint_latest.pth") if (folder / c).is_file())
        dataset_id, _ = peer.dataset_name(data_dir)
        link_inputs(data_dir, cases, work / "input_nnunet", "_0000.nii.gz")
        predict = str(peer.DEFAULT_VENV / "bin" / "nnUNetv2_predict")
        for mode, flags in (("tta", []), ("no_tta", ["--disable_tta"])):
            out = work / f"nnunet_{mode}"
            cmd = [
                predict, "-i", str(work / "input_nnunet"), "-o", str(out), "-d", str(dataset_id),
                "-c", peer.CONFIGURATION, "-tr", peer.TRAINER, "-p", peer.PLANS, "-f", str(FOLD), "-chk", checkpoint,
                "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_progress_bar", *flags,
            ]  # fmt: skip
            commands.append(("nnunetv2", mode, cmd, peer_env, out))
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for _ in range(args.repeats):  # round robin, so that a burst of load on the machine hits every command alike
        for tool, mode, cmd, cmd_env, out in commands:
            runs.setdefault((tool, mode), []).append(timed(tool, mode, cmd, cmd_env, out, n))
    results = []
    for tool, mode, _, _, out in commands:
        timings = runs[(tool, mode)]
        best = min(timings, key=lambda r: r["s_per_case"])
        best["s_per_case_all"] = [r["s_per_case"] for r in timings]
        best["peak_memory_gib"] = max(r["peak_memory_gib"] for r in timings)
        results.append(best | score(out, data_dir, cases))
    for r in results:
        dice = ", ".join(f"{k} {v:.3f}" for k, v in r["dice_per_class"].items())
        print(
            f"{r['tool']:9s} {r['mode']:7s} {r['s_per_case']:6.2f} s/case  peak {r['peak_memory_gib']:.2f} GiB  "
            f"Dice mean {r['mean_dice']:.3f} ({dice})"
        )
    by_key = {(r["tool"], r["mode"]): r for r in results}
    ratios = {}
    for mode in ("tta", "no_tta"):
        if ("nnunetv2", mode) in by_key:
            ours, theirs = by_key[("vesalius", mode)], by_key[("nnunetv2", mode)]
            ratios[mode] = {
                "throughput": theirs["s_per_case"] / ours["s_per_case"],
                "dice_difference": ours["mean_dice"] - theirs["mean_dice"],
                "memory": ours["peak_memory_gib"] / theirs["peak_memory_gib"],
            }
            print(
                f"{mode}: Vesalius throughput {ratios[mode]['throughput']:.1f}x nnU-Net's, Dice "
                f"{ratios[mode]['dice_difference']:+.3f}, peak memory {ratios[mode]['memory']:.2f}x"
            )
    emit_json(
        {
            "benchmark": "hippocampus_predict",
            "cases": n,
            "threads": args.threads,
            "results": results,
            "ratios": ratios,
            "vesalius_run": run_dir,
            **machine_and_date(),
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
