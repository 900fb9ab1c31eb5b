"""Scaling: training steps/s and cohort inference with 1 vs 2 processes on this machine, and an ESTIMATE beyond it.

Run it from the project's root::

    python benchmarks/scaling.py                          # 2 epochs x 20 iterations, 24 cases, repeated twice
    python benchmarks/scaling.py --iterations 10 --cases 16 --repeats 1
    python benchmarks/scaling.py --skip-training          # inference only (trains a small model when none is here)
    python benchmarks/scaling.py --device cuda            # on a GPU machine: processes = GPUs
    python benchmarks/scaling.py --skip-inference --train-runs single   # training in 1 process x 1 thread only

Data: MSD Hippocampus (``../shared/data/Task04_Hippocampus``) imported into a workspace of this benchmark
(``benchmarks/.work/scaling``) and planned for the CPU with a 30-minute budget (as ``hippocampus_train.py`` does);
without the shared data, a synthetic phantom set (:func:`vesalius.data.synthetic.write_segmentation_dataset`), and
the output says so.

1. **Training**: the same run (``--epochs`` x ``--iterations`` steps, the plan's batch and augmentation, no final
   validation) through the command line, ``vesalius train NAME --threads 2`` (1 process) against ``vesalius train
   NAME --nproc 2 --threads 1`` (2 processes, DDP over gloo, each rank half of the global batch). Seconds per
   iteration come from the run's ``log_iterations.csv``: the step times within epochs (a point every step for short
   runs), without the first ``--warmup`` steps (start-up, first-touch allocation) and without the per-epoch
   validation. Speed-up = s/it(1) / s/it(2); efficiency = speed-up / 2. With ``--device cuda``: 1 GPU against all
   the GPUs (one process each); a single GPU gives the 1-process figures only.
2. **Cohort inference**: the model trained in step 1 (the last run), ``--cases`` images of the data set as a
   cohort; ``vesalius predict`` in 1 process (2 threads) against 2 shards started together (``--shard 1/2`` and
   ``--shard 2/2``, 1 thread each, one output folder) and ``torchrun --nproc-per-node 2 -m vesalius predict``
   (``--no-torchrun`` skips it). Cases/s end to end (wall, with start-up) and steady (the cases over the busiest
   shard's summed per-case seconds from ``manifest.jsonl``). The outputs of the sharded runs are compared with those
   of 1 process with the shards' thread count (float reductions, hence a few boundary voxels, depend on the number
   of threads): the same file names, and the same bytes (else the same voxels and geometry); the voxels that differ
   from the 2-thread run are counted too.
3. **The ESTIMATE beyond this machine** (a model, not a measurement): gradient bytes per step = parameters x 4
   (fp32 gradients) for the planned networks (this data set's CPU and GPU plans) and a large reference 3D U-Net;
   ring all-reduce time ``2(W-1)/W x bytes / bandwidth + 2(W-1) x latency x buckets`` (DDP's 25 MiB buckets) on
   common interconnects; per-rank step time ``t``: the step measured here, and assumed GPU step times
   (``--gpu-step-times``, default 0.1 s and 0.3 s); efficiency for W = 2 ... 64 without overlap ``t / (t + c)``
   (pessimistic) and with DDP's overlap of communication and backward ``t / max(t, c)`` (optimistic). That is
   weak scaling: each rank keeps its batch. Vesalius keeps the plan's global batch B and gives each rank B / W, so
   W <= B, and large W needs a larger global batch (``--batch-size``), which changes the recipe.

Prints readable lines and one ``BENCHMARK_JSON {...}`` line.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import itertools
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import REPO_ROOT, emit_json, machine_and_date, shared_data

DATASET = "Task04_Hippocampus"
WORK_DIR = REPO_ROOT / "benchmarks" / ".work" / "scaling"
#: DDP's default gradient bucket (``bucket_cap_mb=25``): one all-reduce per bucket.
BUCKET_BYTES = 25 * 2**20
#: Interconnects of the estimate: name, per-rank bandwidth (GB/s, what an all-reduce achieves, not the line rate),
#: latency per ring hop (s), the largest W it applies to (None: any; NVLink and PCIe join the GPUs of one node).
INTERCONNECTS: list[tuple[str, float, float, int | None]] = [
    ("NVLink (intra-node)", 200.0, 5e-6, 8),
    ("PCIe 4 x16 (intra-node)", 20.0, 10e-6, 8),
    ("InfiniBand HDR 200 Gb/s", 22.0, 5e-6, None),
    ("100 GbE", 10.0, 25e-6, None),
    ("25 GbE", 2.8, 30e-6, None),
    ("10 GbE", 1.1, 50e-6, None),
]
WORLD_SIZES = (2, 4, 8, 16, 32, 64)


def run(cmd: list[str], threads: int, log: Path | None = None) -> tuple[float, str]:
    """Run ``cmd`` with ``threads`` OpenMP threads; returns (wall seconds, output); a failure stops the benchmark."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, errors="replace", check=False)
    seconds = time.perf_counter() - start
    output = proc.stdout + proc.stderr
    if log is not None:
        log.write_text(output, encoding="utf-8")
    if proc.returncode:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{output[-3000:]}")
    return seconds, output


# -- the data -----------------------------------------------------------------------------------------------------
def prepare_workspace(work: Path, cases: int) -> dict[str, Any]:
    """Import, plan (CPU, 30-minute budget) and preprocess Hippocampus, or a synthetic phantom set without it (once;
    a marker file records a finished preparation). Returns the data set's name, source and image folder."""
    import vesalius
    from vesalius.workspace import Workspace

    data_dir = shared_data(DATASET)
    if data_dir is not None:
        name, source, ws = "hippocampus", "MSD Task04_Hippocampus (real MRI)", work / "ws_hippocampus"
        images = data_dir / "imagesTr"
    else:
        name, source, ws = "phantom", "synthetic phantom set (../shared/data is not here)", work / "ws_phantom"
        data_dir = work / "phantom_src"
        images = data_dir / "imagesTr"
        if not images.is_dir():
            from vesalius.data.synthetic import write_segmentation_dataset

            shutil.rmtree(data_dir, ignore_errors=True)
            write_segmentation_dataset(data_dir, max(cases, 24), seed=0)
    marker = ws / "prepared.json"
    if not marker.is_file():
        shutil.rmtree(ws, ignore_errors=True)
        t = time.perf_counter()
        vesalius.import_dataset(data_dir, name, workspace=ws)
        vesalius.plan(name, workspace=ws, device="cpu", time_budget_s=1800.0)
        vesalius.preprocess(name, "3d", workspace=ws)
        marker.write_text(json.dumps({"seconds": time.perf_counter() - t}), encoding="utf-8")
        print(f"prepared {name} in {time.perf_counter() - t:.0f} s -> {ws}", flush=True)
    return {
        "name": name,
        "source": source,
        "workspace": ws,
        "images": images,
        "run_dir": Workspace(ws).run_dir(name, "3d", 0),
    }


def planned_networks(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Parameter counts of the networks of this data set's CPU plan, of its GPU plan (made here, not saved) and of
    a large reference 3D U-Net (6 stages of 32-320 features, nnU-Net's 3d_fullres size for CT)."""
    from vesalius.data.dataset import Dataset
    from vesalius.models.families import build_network
    from vesalius.planning.fingerprint import Fingerprint
    from vesalius.planning.planner import load_plan, make_plan
    from vesalius.workspace import Workspace

    ws = Workspace(data["workspace"])
    plan = load_plan(data["name"], ws)
    fingerprint = Fingerprint.from_json(json.loads(ws.fingerprint_path(data["name"]).read_text()))
    gpu_plan = make_plan(fingerprint, Dataset.load(ws.dataset_dir(data["name"])), device="cuda")
    channels, classes = len(plan.channels), len(plan.labels)
    cpu, gpu = plan.configuration("3d"), gpu_plan.configuration("3d")
    large = dataclasses.replace(
        gpu,
        features=(32, 64, 128, 256, 320, 320),
        strides=((1, 1, 1),) + ((2, 2, 2),) * 5,
        kernels=((3, 3, 3),) * 6,
        patch_size=(128, 128, 128),
        batch_size=2,
        stem="full",
    )
    found = []
    for label, configuration in (
        (f"{data['name']} CPU plan", cpu),
        (f"{data['name']} GPU plan", gpu),
        ("reference 3D U-Net 32-320, 6 stages", large),
    ):
        network = build_network(configuration, channels, classes)
        params = sum(p.numel() for p in network.parameters() if p.requires_grad)
        found.append(
            {
                "network": label,
                "features": list(configuration.features),
                "patch": list(configuration.patch_size),
                "batch": configuration.batch_size,
                "parameters": params,
                "gradient_bytes": 4 * params,
            }
        )
    return found


# -- training -----------------------------------------------------------------------------------------------------
def step_seconds(run_dir: Path, warmup: int) -> dict[str, Any]:
    """Seconds per iteration from ``log_iterations.csv``: the intervals between points of one epoch (the first point
    of a later epoch follows the validation: left out), after the first ``warmup`` iterations."""
    with open(run_dir / "log_iterations.csv", newline="", encoding="utf-8") as f:
        rows = [(int(float(r["epoch"])), int(float(r["iteration"])), float(r["elapsed_s"])) for r in csv.DictReader(f)]
    seconds, iterations, per_step = 0.0, 0, []
    for (epoch0, it0, t0), (epoch1, it1, t1) in itertools.pairwise(rows):
        if epoch0 != epoch1 or it0 < warmup:
            continue
        seconds += t1 - t0
        iterations += it1 - it0
        per_step.append((t1 - t0) / (it1 - it0))
    outcome = json.loads((run_dir / "outcome.json").read_text(encoding="utf-8"))
    return {
        "s_per_it": seconds / max(iterations, 1),
        "median_s_per_it": statistics.median(per_step) if per_step else float("nan"),
        "timed_iterations": iterations,
        "iterations": outcome["iterations"],
        "loop_s": outcome["elapsed_s"],
        "stopped": outcome["stopped"],
    }


def train_once(data: dict[str, Any], nproc: int, threads: int, args: argparse.Namespace, tag: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "vesalius", "train", data["name"], "--fold", "0", "--epochs", str(args.epochs)]
    cmd += ["--iters-per-epoch", str(args.iterations), "--no-validate", "--force", "--threads", str(threads)]
    cmd += ["--nproc", str(nproc), "--device", args.device, "--workspace", str(data["workspace"])]
    if args.batch_size:
        cmd += ["--batch-size", str(args.batch_size)]
    load = os.getloadavg()[0]
    wall, _ = run(cmd, threads, WORK_DIR / f"train_{tag}.log")
    figures = {
        "nproc": nproc,
        "threads": threads,
        "wall_s": wall,
        "load_before": load,
        **step_seconds(data["run_dir"], args.warmup),
    }
    print(
        f"  {tag}: {nproc} process(es) x {threads} thread(s): {figures['s_per_it']:.3f} s/it "
        f"(median {figures['median_s_per_it']:.3f}) over {figures['timed_iterations']} timed of "
        f"{figures['iterations']} iterations; loop {figures['loop_s']:.1f} s, command {wall:.1f} s, load {load:.1f}",
        flush=True,
    )
    return figures


def benchmark_training(data: dict[str, Any], args: argparse.Namespace, processes: int) -> dict[str, Any]:
    from vesalius.planning.planner import load_plan

    batch = args.batch_size or load_plan(data["name"], data["workspace"]).configuration("3d").batch_size
    if batch % processes:
        raise SystemExit(f"the batch {batch} does not divide by {processes} processes: give --batch-size")
    print(f"training: {args.epochs} epochs x {args.iterations} iterations, global batch {batch}, {data['source']}")
    many_threads = max(1, args.threads // processes) if args.device == "cpu" else 1
    main_runs = args.train_runs in ("main", "all")
    runs: dict[str, list[dict[str, Any]]] = {"1": [], str(processes): [], "1x1": []}
    for repeat in range(args.repeats):  # interleaved, so that a change in the machine's load hits both
        if main_runs:
            runs["1"].append(train_once(data, 1, args.threads, args, f"1proc_r{repeat}"))
            if processes > 1:
                runs[str(processes)].append(
                    train_once(data, processes, many_threads, args, f"{processes}proc_r{repeat}")
                )
        if args.train_runs in ("single", "all") and args.device == "cpu":
            # the same work in 1 process with 1 thread: what a thread buys, and whether threads suffer from
            # other work on the cores (a parallel region waits for its slowest thread)
            runs["1x1"].append(train_once(data, 1, 1, args, f"1proc1thread_r{repeat}"))
    result: dict[str, Any] = {"global_batch": batch, "runs": runs}
    if runs["1x1"]:
        result["s_per_it_1x1"] = statistics.median(r["s_per_it"] for r in runs["1x1"])
    if not main_runs:
        return result
    result["s_per_it_1"] = statistics.median(r["s_per_it"] for r in runs["1"])
    if processes > 1:
        one, many = result["s_per_it_1"], statistics.median(r["s_per_it"] for r in runs[str(processes)])
        speedups = [a["s_per_it"] / b["s_per_it"] for a, b in zip(runs["1"], runs[str(processes)], strict=True)]
        result.update(
            s_per_it_n=many,
            speedup=one / many,
            efficiency=one / many / processes,
            speedup_per_repeat=speedups,
        )
        print(
            f"  => 1 process {one:.3f} s/it, {processes} processes {many:.3f} s/it (medians over {args.repeats}): "
            f"speed-up {one / many:.2f}x, efficiency {one / many / processes:.0%} "
            f"(per repeat: {', '.join(f'{s:.2f}x' for s in speedups)})",
            flush=True,
        )
    return result


# -- cohort inference ---------------------------------------------------------------------------------------------
def make_cohort(data: dict[str, Any], cases: int) -> Path:
    cohort = WORK_DIR / f"cohort_{data['name']}_{cases}"
    images = sorted(p for p in data["images"].iterdir() if p.name.endswith(".nii.gz") and not p.name.startswith("."))
    if len(images) < cases:
        raise SystemExit(f"only {len(images)} images in {data['images']}, asked for {cases}")
    if not cohort.is_dir() or len(list(cohort.iterdir())) != cases:
        shutil.rmtree(cohort, ignore_errors=True)
        cohort.mkdir(parents=True)
        for image in images[:cases]:
            shutil.copy2(image, cohort / image.name)
    return cohort


def manifest_busy(out: Path, shards: int) -> tuple[int, list[float]]:
    """Cases in ``out``'s manifest and each shard's summed per-case seconds (shards as ``--shard`` splits them)."""
    lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines() if line]
    ordered = sorted(lines, key=lambda r: r["case"])
    busy = [sum(float(r["seconds"]) for r in ordered[i::shards]) for i in range(shards)]
    return len(lines), busy


def same_outputs(reference: Path, other: Path) -> dict[str, Any]:
    """Whether ``other`` holds the files of ``reference`` (the manifest aside): names, bytes, else voxels."""
    import numpy as np
    import SimpleITK as sitk

    def files(folder: Path) -> set[str]:
        return {
            p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != "manifest.jsonl"
        }

    names_ref, names_other = files(reference), files(other)
    identical = voxels = differing = total = 0
    for name in sorted(names_ref & names_other):
        a, b = (reference / name).read_bytes(), (other / name).read_bytes()
        if a == b:
            identical += 1
            voxels += 1
        elif name.endswith((".nii.gz", ".nii", ".nrrd", ".mha")):
            ia, ib = sitk.ReadImage(str(reference / name)), sitk.ReadImage(str(other / name))
            va, vb = sitk.GetArrayViewFromImage(ia), sitk.GetArrayViewFromImage(ib)
            geometry = (ia.GetOrigin(), ia.GetSpacing(), ia.GetDirection()) == (
                ib.GetOrigin(),
                ib.GetSpacing(),
                ib.GetDirection(),
            )
            if va.shape == vb.shape:
                differing += int((va != vb).sum())
                total += va.size
            voxels += int(geometry and np.array_equal(va, vb))
    return {
        "same_names": names_ref == names_other,
        "files": len(names_ref),
        "byte_identical": identical,
        "same_voxels": voxels,
        "differing_voxels": differing,
        "voxels_in_differing_files": total,
        "equal": names_ref == names_other and voxels == len(names_ref),
    }


def benchmark_inference(data: dict[str, Any], args: argparse.Namespace, processes: int) -> dict[str, Any]:
    model = data["run_dir"]
    if not (model / "checkpoint_final.pt").is_file():
        print("inference: no trained model here, training a small one (1 epoch x 10 iterations)", flush=True)
        cmd = [sys.executable, "-m", "vesalius", "train", data["name"], "--fold", "0", "--epochs", "1"]
        cmd += ["--iters-per-epoch", "10", "--no-validate", "--force", "--workspace", str(data["workspace"])]
        run(cmd, args.threads)
    cohort = make_cohort(data, args.cases)
    base = [sys.executable, "-m", "vesalius", "predict", "-i", str(cohort), "-m", str(model)]
    if args.fast:
        base.append("--fast")
    gpu = args.device != "cpu"
    print(f"inference: {args.cases} cases of {data['source']}, model {model}, {'--fast' if args.fast else 'mirroring'}")
    results: dict[str, Any] = {"cases": args.cases, "model": str(model), "fast": args.fast, "runs": []}

    def record(mode: str, nproc: int, threads: int, out: Path, wall: float, shards: int) -> dict[str, Any]:
        done, busy = manifest_busy(out, shards)
        figures = {
            "mode": mode,
            "processes": nproc,
            "threads": threads,
            "wall_s": wall,
            "cases_done": done,
            "cases_per_s_wall": done / wall,
            "busy_s_per_shard": busy,
            "cases_per_s_steady": done / max(busy),
        }
        print(
            f"  {mode}: {done} cases in {wall:.1f} s wall = {done / wall:.3f} cases/s; steady "
            f"{done / max(busy):.3f} cases/s (busiest shard {max(busy):.1f} s of per-case time)",
            flush=True,
        )
        results["runs"].append(figures)
        return figures

    for repeat in range(args.repeats):
        out1 = WORK_DIR / f"pred_1proc_r{repeat}"
        shutil.rmtree(out1, ignore_errors=True)
        device = ["--device", "cuda"] if gpu else []
        wall, _ = run([*base, "-o", str(out1), *device], args.threads, WORK_DIR / f"pred_1proc_r{repeat}.log")
        record(f"1 process x {args.threads} threads (r{repeat})", 1, args.threads, out1, wall, 1)
        if processes < 2:
            continue
        threads = 1 if gpu else max(1, args.threads // processes)
        if repeat == 0 and threads != args.threads:
            # float reductions depend on the thread count: the equality reference has the shards' threads
            reference = WORK_DIR / "pred_1proc_reference"
            shutil.rmtree(reference, ignore_errors=True)
            wall, _ = run([*base, "-o", str(reference), *device], threads, WORK_DIR / "pred_1proc_reference.log")
            record(f"1 process x {threads} thread (equality reference)", 1, threads, reference, wall, 1)
        elif repeat == 0:
            reference = out1
        outs = WORK_DIR / f"pred_shards_r{repeat}"
        shutil.rmtree(outs, ignore_errors=True)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        start = time.perf_counter()
        procs = []
        for i in range(processes):
            shard_device = ["--device", f"cuda:{i}"] if gpu else []
            cmd = [*base, "-o", str(outs), "--shard", f"{i + 1}/{processes}", *shard_device]
            log = open(WORK_DIR / f"pred_shard{i + 1}_r{repeat}.log", "w", encoding="utf-8")  # noqa: SIM115
            procs.append((subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), log))
        codes = [p.wait() for p, _ in procs]
        wall = time.perf_counter() - start
        for _, log in procs:
            log.close()
        if any(codes):
            raise SystemExit(f"a shard failed ({codes}); see {WORK_DIR}/pred_shard*_r{repeat}.log")
        shards = record(f"{processes} shards x {threads} thread (r{repeat})", processes, threads, outs, wall, processes)
        shards["same_as_1_process"] = same_outputs(reference, outs)
        shards["vs_1_process_more_threads"] = same_outputs(out1, outs)
        print(f"    outputs vs 1 process, {threads} thread: {shards['same_as_1_process']}", flush=True)
        print(f"    outputs vs 1 process, {args.threads} threads: {shards['vs_1_process_more_threads']}", flush=True)
        if args.torchrun:
            outt = WORK_DIR / f"pred_torchrun_r{repeat}"
            shutil.rmtree(outt, ignore_errors=True)
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
            cmd += ["-m", "vesalius", "predict", "-i", str(cohort), "-m", str(model), "-o", str(outt)]
            cmd += (["--fast"] if args.fast else []) + (["--device", "cuda"] if gpu else [])
            wall, _ = run(cmd, threads, WORK_DIR / f"pred_torchrun_r{repeat}.log")
            tr = record(
                f"torchrun {processes} ranks x {threads} thread (r{repeat})", processes, threads, outt, wall, processes
            )
            tr["same_as_1_process"] = same_outputs(reference, outt)
            print(f"    outputs vs 1 process, {threads} thread: {tr['same_as_1_process']}", flush=True)
    one = [r for r in results["runs"] if r["processes"] == 1 and r["threads"] == args.threads]
    if processes > 1:
        shards = [r for r in results["runs"] if r["mode"].startswith(f"{processes} shards")]
        for key in ("cases_per_s_wall", "cases_per_s_steady"):
            a, b = statistics.median(r[key] for r in one), statistics.median(r[key] for r in shards)
            results[f"speedup_{key.removeprefix('cases_per_s_')}"] = b / a
        results["outputs_equal"] = all(
            r["same_as_1_process"]["equal"] for r in results["runs"] if "same_as_1_process" in r
        )
        print(
            f"  => shards speed-up {results['speedup_wall']:.2f}x end to end, {results['speedup_steady']:.2f}x steady; "
            f"sharded outputs equal to 1-process outputs (same threads): {results['outputs_equal']}",
            flush=True,
        )
    return results


# -- the estimate -------------------------------------------------------------------------------------------------
def allreduce_seconds(gradient_bytes: float, world: int, bandwidth_gbs: float, latency_s: float) -> float:
    """Ring all-reduce of ``gradient_bytes`` over ``world`` ranks in DDP's 25 MiB buckets."""
    buckets = max(1, math.ceil(gradient_bytes / BUCKET_BYTES))
    return 2 * (world - 1) / world * gradient_bytes / (bandwidth_gbs * 1e9) + 2 * (world - 1) * latency_s * buckets


def estimate(networks: list[dict[str, Any]], step_times: dict[str, float]) -> list[dict[str, Any]]:
    """Efficiency (weak scaling: each rank keeps its batch and step time ``t``) for every network, step time,
    interconnect and world size: ``t / (t + c)`` without overlap, ``t / max(t, c)`` with it."""
    rows = []
    for net in networks:
        for step_label, t in step_times.items():
            for name, bandwidth, latency, max_world in INTERCONNECTS:
                row: dict[str, Any] = {"network": net["network"], "parameters": net["parameters"]}
                row.update(step=step_label, step_s=t, interconnect=name, efficiency={})
                for world in WORLD_SIZES:
                    if max_world is not None and world > max_world:
                        row["efficiency"][world] = None
                        continue
                    c = allreduce_seconds(net["gradient_bytes"], world, bandwidth, latency)
                    row["efficiency"][world] = {"comm_s": c, "no_overlap": t / (t + c), "overlap": t / max(t, c)}
                rows.append(row)
    return rows


def print_estimate(networks: list[dict[str, Any]], rows: list[dict[str, Any]]) -> None:
    print("\nESTIMATE (a model, not a measurement): data-parallel efficiency, weak scaling (each rank keeps its batch)")
    print("  gradient bytes = parameters x 4 (fp32); ring all-reduce 2(W-1)/W x bytes / bandwidth + 2(W-1) x latency")
    print("  x buckets (25 MiB); efficiency no overlap t/(t+c) / with DDP overlap t/max(t,c); '-': one node only")
    for net in networks:
        print(
            f"  {net['network']}: features {net['features']}, patch {net['patch']}, batch {net['batch']}: "
            f"{net['parameters'] / 1e6:.2f} M parameters, {net['gradient_bytes'] / 2**20:.1f} MiB of gradients per step"
        )
    print(
        "  bandwidths (GB/s) and latencies: "
        + "; ".join(f"{n} {b:g}, {lat * 1e6:g} us" for n, b, lat, _ in INTERCONNECTS)
    )
    head = f"  {'network':<38} {'step':<22} {'interconnect':<26}" + "".join(f"{'W=' + str(w):>14}" for w in WORLD_SIZES)
    print(head)
    for row in rows:
        cells = []
        for world in WORLD_SIZES:
            e = row["efficiency"][world]
            cells.append(f"{'-':>14}" if e is None else f"{e['no_overlap']:>7.0%}/{e['overlap']:<6.0%}")
        print(f"  {row['network'][:38]:<38} {row['step'][:22]:<22} {row['interconnect'][:26]:<26}" + "".join(cells))
    print("  all-reduce time per step (ms) at W = 2 / 8 / 64:")
    for net in networks:
        times = []
        for name, bandwidth, latency, _ in INTERCONNECTS:
            c = [1e3 * allreduce_seconds(net["gradient_bytes"], w, bandwidth, latency) for w in (2, 8, 64)]
            times.append(f"{name} {c[0]:.1f}/{c[1]:.1f}/{c[2]:.1f}")
        print(f"    {net['network']}: " + "; ".join(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20, help="training iterations per epoch")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3, help="first iterations left out of the step time")
    parser.add_argument("--batch-size", type=int, default=None, help="global batch (default: the plan's)")
    parser.add_argument("--cases", type=int, default=24, help="cohort size for inference")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="threads of the 1-process runs (shared by the others)")
    parser.add_argument("--fast", action="store_true", help="predict without mirroring")
    parser.add_argument("--no-torchrun", dest="torchrun", action="store_false", help="skip the torchrun inference")
    parser.add_argument(
        "--train-runs",
        choices=("main", "single", "all"),
        default="main",
        help="main: 1 process against N; single: 1 process with 1 thread only; all: both",
    )
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--skip-inference", action="store_true")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (then processes = GPUs)")
    parser.add_argument("--gpu-step-times", type=float, nargs="*", default=[0.1, 0.3], help="ASSUMED GPU step times")
    args = parser.parse_args()
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    import torch

    if args.device == "cpu":
        processes = 2
    else:
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no GPU here")
        processes = torch.cuda.device_count()
    print(
        f"scaling on {args.device} ({processes} processes against 1), {os.cpu_count()} CPUs, "
        f"load {os.getloadavg()[0]:.2f}, torch {torch.__version__}",
        flush=True,
    )
    data = prepare_workspace(WORK_DIR, args.cases)
    print(f"data: {data['source']}", flush=True)
    report: dict[str, Any] = {
        "benchmark": "scaling",
        "device": args.device,
        "processes": processes,
        "data": data["source"],
        "options": {k: v for k, v in vars(args).items()},
        **machine_and_date(),
    }
    measured_step = None
    if not args.skip_training:
        report["training"] = benchmark_training(data, args, processes)
        measured_step = report["training"].get("s_per_it_1")
    if not args.skip_inference:
        report["inference"] = benchmark_inference(data, args, processes)
    networks = planned_networks(data)
    step_times = {f"assumed GPU {t:g} s": t for t in args.gpu_step_times}
    if measured_step is not None:
        step_times = {f"measured {args.device} {measured_step:.2f} s": measured_step, **step_times}
    rows = estimate(networks, step_times)
    print_estimate(networks, rows)
    print(
        "  note: Vesalius keeps the plan's global batch B and gives each rank B/W (B must divide by W), so with a "
        "fixed global batch the per-rank step shrinks to about t/W and the efficiency falls faster than above; "
        "W beyond B needs a larger global batch (--batch-size), which changes the recipe (learning rate, steps)."
    )
    report["estimate"] = {
        "label": "ESTIMATE (model, not measured)",
        "networks": networks,
        "interconnects": [
            {"name": n, "gb_per_s": b, "latency_s": lat, "max_world": m} for n, b, lat, m in INTERCONNECTS
        ],
        "step_times": step_times,
        "rows": rows,
    }
    report["load_after"] = os.getloadavg()[0]
    emit_json(report)


if __name__ == "__main__":
    main()
