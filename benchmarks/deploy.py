"""Deployment variants side by side: accuracy, seconds per case (with and without start-up), package size, peak RSS.

Run it from the project's root::

    python benchmarks/deploy.py                     # Hippocampus fold 0 and BreastMNIST, every variant
    python benchmarks/deploy.py --cases 10          # fewer validation cases
    python benchmarks/deploy.py --sets hippocampus  # one set

Models: Hippocampus fold 0 of ``benchmarks/.work/vesalius`` (trained by ``hippocampus_train.py``; trained first for
``--train-budget`` when missing) and a BreastMNIST classifier in ``benchmarks/.work/medmnist`` (trained for
``--train-budget`` with the planner's defaults when missing). Each is exported once (``vesalius export``) and
compressed (``vesalius compress --int8``, calibrated on 8 training cases, 64 images for BreastMNIST).

Variants: ``torch-fp32`` and ``torch-bf16`` (the run folder through the torch path), ``ort-fp32`` (the exported
package on ONNX Runtime, torch-free), ``ort-int8`` (the compressed package), and for Hippocampus
``prunedNN-ort-fp32`` / ``prunedNN-ort-int8`` (the run pruned by NN% and fine-tuned for ``--prune-budget``, exported and
compressed; made once, then reused). Each runs in a process of its own on the
fold's validation cases, so that start-up (imports and model loading) and peak RSS are its own: seconds per case
are reported excluding start-up (the mean of the cases' prediction times) and including it (start-up spread over
the cases, i.e. what a command on this many cases costs per case). Accuracy: mean Dice per class against the
references (segmentation) or AUC and accuracy (classification), and the agreement with torch fp32 (voxels equal;
largest probability difference). Post-processing is left out everywhere, so the networks are compared.

Prints the CPU's VNNI/AMX flags, a table, and one ``BENCHMARK_JSON {...}`` line; without the shared data it says so
and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

START = time.perf_counter()  # a worker's start-up counts from here (imports included)

import numpy as np  # noqa: E402

from common import REPO_ROOT, dice_per_class, emit_json, machine_and_date, shared_data  # noqa: E402

WORK_DIR = REPO_ROOT / "benchmarks" / ".work"
DEPLOY_DIR = WORK_DIR / "deploy"


# -- the worker: one variant in a process of its own ---------------------------------------------------------------
def worker(spec: dict[str, Any]) -> None:
    """Predict ``spec["cases"]`` with one variant; prints one JSON line with the timings and peak RSS."""
    variant, model, task = spec["variant"], spec["model"], spec["task"]
    out = Path(spec["output"])
    out.mkdir(parents=True, exist_ok=True)
    from vesalius.io import read_image, write_image

    if variant.startswith("torch"):
        import torch

        from vesalius.inference.model import load_model

        torch.set_num_threads(spec["threads"])
        loaded = load_model(model)
        precision = "bf16" if variant == "torch-bf16" else "fp32"
        if task == "segmentation":
            from vesalius.inference.segmentation import predict_image

            def predict(image: Any) -> Any:
                return predict_image(loaded.network, image, loaded.trained, precision=precision)

        else:
            from vesalius.inference.classification import predict_probabilities
            from vesalius.preprocessing.classification import prepare_image

            def predict(image: Any) -> Any:
                prepared = prepare_image(image.array, loaded.trained.normalization, loaded.trained.input_size)[None]
                return predict_probabilities([loaded], prepared, precision=precision)[0]

    else:
        from vesalius.runtime import Predictor

        predictor = Predictor(model, threads=spec["threads"])
        if task == "segmentation":

            def predict(image: Any) -> Any:
                return predictor.segment(image, postprocess=False)

        else:
            predict = predictor.classify
    startup = time.perf_counter() - START
    seconds = []
    for i, path in enumerate(spec["cases"]):
        image = read_image(path)
        start = time.perf_counter()
        result = predict(image)
        seconds.append(time.perf_counter() - start)
        if task == "segmentation":
            write_image(result, out / f"{i:04d}.nii.gz")
        else:
            np.save(out / f"{i:04d}.npy", np.asarray(result, dtype=np.float64))
    rss = _peak_rss()
    print("WORKER_JSON " + json.dumps({"startup_s": startup, "seconds": seconds, "peak_rss_bytes": rss}), flush=True)


def _peak_rss() -> int:
    """This process's peak resident memory in bytes (``VmHWM``: of its own image; ``getrusage``'s maximum would
    include the parent's memory at the fork that started it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_variant(variant: str, model: Path, task: str, cases: list[str], threads: int) -> dict[str, Any]:
    output = DEPLOY_DIR / "outputs" / f"{task}-{variant}"
    spec = {"variant": variant, "model": str(model), "task": task, "cases": cases, "output": str(output)}
    spec["threads"] = threads
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    result = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True, env=env, check=False
    )
    line = next((x for x in result.stdout.splitlines() if x.startswith("WORKER_JSON ")), None)
    if line is None:
        raise RuntimeError(f"{variant} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    figures = json.loads(line.removeprefix("WORKER_JSON "))
    figures["output"] = output
    return figures


# -- models --------------------------------------------------------------------------------------------------------
def _fresh(target: Path, source: Path) -> bool:
    return target.exists() and target.stat().st_mtime >= source.stat().st_mtime


def packages(run_dir: Path, name: str, workspace: Path, calibration: int, prefix: str = "") -> dict[str, Path]:
    """The run's exported package (``PREFIXort-fp32``) and its INT8 compression (``PREFIXort-int8``), made when
    missing or older than the run."""
    import vesalius

    fp32 = DEPLOY_DIR / f"{name}.vpkg"
    if not _fresh(fp32, run_dir / "checkpoint_final.pt"):
        vesalius.export(run_dir, fp32)
    int8 = DEPLOY_DIR / f"{name}_int8.vpkg"
    if not _fresh(int8, fp32):
        vesalius.compress(fp32, int8, workspace, int8=True, calibration=calibration)
    return {f"{prefix}ort-fp32": fp32, f"{prefix}ort-int8": int8}


def pruned(run_dir: Path, workspace: Path, amounts: list[float], budget_s: float) -> dict[str, Path]:
    """Packages of the run pruned by each of ``amounts`` and fine-tuned for ``budget_s`` (made when missing)."""
    from vesalius.deploy.prune import prune_run

    found = {}
    for amount in amounts:
        percent = round(amount * 100)
        narrow = run_dir.parents[1] / f"{run_dir.parent.name}_w{100 - percent}" / run_dir.name
        if not (narrow / "checkpoint_final.pt").is_file():
            print(f"pruning {percent}% and fine-tuning for {budget_s / 60:.0f} min", flush=True)
            narrow = prune_run(run_dir, amount, time_budget_s=budget_s, workspace=workspace)
        found.update(packages(narrow, f"{run_dir.parents[1].name}_pruned{percent}", workspace, 8, f"pruned{percent}-"))
    return found


def hippocampus(args: argparse.Namespace) -> dict[str, Any] | None:
    data = shared_data("Task04_Hippocampus")
    if data is None:
        print("../shared/data/Task04_Hippocampus is absent: Hippocampus skipped", flush=True)
        return None
    from hippocampus_predict import vesalius_run
    from vesalius.data.dataset import Dataset
    from vesalius.model_package import ModelPackage

    run_dir = vesalius_run(data, args.train_budget, args.threads)
    package = ModelPackage(run_dir)
    workspace = WORK_DIR / "vesalius"
    dataset = Dataset.load(workspace / "datasets" / "hippocampus")
    by_id = {c.case_id: c for c in dataset.cases}
    val = package.split["val"][: args.cases]
    images = [str(dataset.image_paths(by_id[c])[0]) for c in val]
    labels = [dataset.path(by_id[c].label) for c in val]
    models = {"torch-fp32": run_dir, "torch-bf16": run_dir, **packages(run_dir, "hippocampus", workspace, 8)}
    models.update(pruned(run_dir, workspace, args.prune, args.prune_budget))
    return compare("segmentation", models, images, labels, package.label_names, args.threads)


def breast(args: argparse.Namespace) -> dict[str, Any] | None:
    data = shared_data("medmnist")
    if data is None or not (data / "breastmnist.npz").exists():
        print("../shared/data/medmnist/breastmnist.npz is absent: BreastMNIST skipped", flush=True)
        return None
    import vesalius
    from vesalius.data.dataset import Dataset
    from vesalius.model_package import find_packages
    from vesalius.workspace import Workspace

    workspace = Workspace(WORK_DIR / "medmnist")
    if not workspace.dataset_dir("breast").exists():
        vesalius.import_dataset(data / "breastmnist.npz", "breast", workspace=workspace.root)
    runs = sorted(workspace.runs_dir("breast").glob("*/fold_*")) if workspace.runs_dir("breast").exists() else []
    runs = [r for r in runs if (r / "checkpoint_final.pt").is_file()]
    if not runs:
        print(f"no BreastMNIST model yet: training for {args.train_budget / 60:.0f} min", flush=True)
        result = vesalius.train("breast", workspace=workspace.root, time_budget_s=args.train_budget, seed=0)
        runs = [result.run_dir]
    run_dir = runs[0]
    package = find_packages(run_dir)[0]
    dataset = Dataset.load(workspace.dataset_dir("breast"))
    by_id = {c.case_id: c for c in dataset.cases}
    val = package.split["val"][: args.cases * 4]
    images = [str(dataset.image_paths(by_id[c])[0]) for c in val]
    targets = np.array([int(by_id[c].target) for c in val])
    models = {"torch-fp32": run_dir, "torch-bf16": run_dir, **packages(run_dir, "breast", workspace.root, 64)}
    return compare("classification", models, images, targets, package.label_names, args.threads)


# -- comparison ----------------------------------------------------------------------------------------------------
def _size_mb(path: Path) -> float:
    if path.is_file():
        return path.stat().st_size / 1e6
    return sum(p.stat().st_size for p in path.rglob("checkpoint_final.pt")) / 1e6


def compare(
    task: str, models: dict[str, Path | None], images: list[str], truth: Any, names: dict[int, str], threads: int
) -> dict[str, Any]:
    from vesalius.io import read_image

    rows: dict[str, Any] = {}
    reference_outputs: Path | None = None
    for variant, model in models.items():
        figures = run_variant(variant, model, task, images, threads)
        output = figures.pop("output")
        seconds = figures.pop("seconds")
        row = {
            "seconds_per_case": float(np.mean(seconds)),
            "seconds_per_case_with_startup": float(np.mean(seconds) + figures["startup_s"] / len(seconds)),
            "startup_s": figures["startup_s"],
            "peak_rss_mb": figures["peak_rss_bytes"] / 1e6,
            "size_mb": _size_mb(model),
        }
        if task == "segmentation":
            predictions = [read_image(output / f"{i:04d}.nii.gz").array[0] for i in range(len(images))]
            references = [read_image(p).array[0] for p in truth]
            per_class = {
                names[k]: float(
                    np.mean([dice_per_class(p, r, [k])[k] for p, r in zip(predictions, references, strict=True)])
                )
                for k in sorted(names)
                if k != 0
            }
            row["dice"] = per_class
            row["dice_mean"] = float(np.mean(list(per_class.values())))
            if reference_outputs is not None:
                base = [read_image(reference_outputs / f"{i:04d}.nii.gz").array[0] for i in range(len(images))]
                equal = sum(int((p == b).sum()) for p, b in zip(predictions, base, strict=True))
                row["voxels_equal_to_torch_fp32"] = equal / sum(b.size for b in base)
        else:
            from vesalius.metrics.classification import classification_metrics

            probabilities = np.stack([np.load(output / f"{i:04d}.npy") for i in range(len(images))])
            metrics = classification_metrics(truth, probabilities, bootstrap=0)
            row.update({"auc": metrics["auc"], "accuracy": metrics["accuracy"]})
            if reference_outputs is not None:
                base = np.stack([np.load(reference_outputs / f"{i:04d}.npy") for i in range(len(images))])
                row["max_probability_difference_to_torch_fp32"] = float(np.abs(probabilities - base).max())
        if variant == "torch-fp32":
            reference_outputs = output
        rows[variant] = row
        print(f"  {task} {variant}: {_describe(row)}", flush=True)
    return {"task": task, "cases": len(images), "variants": rows}


def _describe(row: dict[str, Any]) -> str:
    accuracy = (
        f"Dice {row['dice_mean']:.4f}" if "dice_mean" in row else f"AUC {row['auc']:.4f} acc {row['accuracy']:.3f}"
    )
    return (
        f"{accuracy}, {row['seconds_per_case']:.3f} s/case ({row['seconds_per_case_with_startup']:.3f} with start-up "
        f"{row['startup_s']:.2f} s), {row['size_mb']:.1f} MB, peak RSS {row['peak_rss_mb']:.0f} MB"
    )


def cpu_flags() -> dict[str, bool]:
    """The CPU features INT8 and bf16 speed depend on."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")
    return {f: f in flags for f in wanted}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--sets", nargs="+", default=["hippocampus", "breast"], choices=["hippocampus", "breast"])
    parser.add_argument("--cases", type=int, default=42, help="validation cases (classification: 4x as many)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train-budget", type=float, default=600.0, help="seconds of training for a missing model")
    parser.add_argument("--prune", type=float, nargs="*", default=[0.3, 0.5], help="pruned fractions (Hippocampus)")
    parser.add_argument("--prune-budget", type=float, default=600.0, help="seconds of fine-tuning after pruning")
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return
    flags = cpu_flags()
    print("CPU flags: " + ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in flags.items()), flush=True)
    results = {}
    for name in args.sets:
        result = hippocampus(args) if name == "hippocampus" else breast(args)
        if result is not None:
            results[name] = result
    emit_json({"benchmark": "deploy", **machine_and_date(), "cpu_flags": flags, "threads": args.threads, **results})


if __name__ == "__main__":
    main()
