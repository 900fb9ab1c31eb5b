"""nnU-Net v2's own CPU prediction of one large 3D CT volume: wall time and peak memory, for the comparison table.

Run it from the project's root (a quick end-to-end check on a small synthetic CT)::

    python benchmarks/nnunet_volume.py                          # 64 x 64 x 48 voxels, 0.8 x 0.8 x 1.0 mm
    python benchmarks/nnunet_volume.py --shape 128 128 96 --tta

``benchmarks/large_volume.py`` calls :func:`predict_with_nnunet` on the volume it segments itself, so that the
report holds nnU-Net's seconds and peak RSS beside ours for the same voxels: what a user of the reference tool
waits, and how much memory it takes, to segment one CT-sized volume on a CPU, against what Vesalius needs.

What is measured. One call of nnU-Net's ``nnUNetPredictor.predict_single_npy_array``: its preprocessing (crop
to the non-zero region, CT normalisation, resampling to the plan's spacing), the sliding window (step 0.5,
Gaussian weighting, mirroring on all three axes when ``tta`` is set, as nnU-Net's trainer allows for 3D) and the
conversion back to a label map on the native grid. The predictor is built with
``perform_everything_on_device=False`` on ``torch.device('cpu')``; torch uses ``threads`` threads, and so do
nnU-Net's own process settings (``nnUNet_def_n_proc``, ``nnUNet_n_proc_DA``, ``OMP_NUM_THREADS``). Peak memory
is the worker process's ``ru_maxrss`` at the end: it includes the interpreter, torch, the loaded volume and the
network, as the same figure for our own prediction does in ``large_volume.py``.

How nnU-Net is set up. Everything of nnU-Net runs in its own virtual environment (``benchmarks/.peer-venv``,
made and reused by :func:`nnunet_peer.peer_environment`, torch pinned to the CPU build, with the torchvision
operator fix), in subprocesses of this file run by that venv's Python (``--worker``); the caller's process never
imports nnunetv2. The plan is nnU-Net's own: a minimal raw dataset (``dataset.json`` with one ``CT`` channel,
labels background and tumour, four cases) and a dataset fingerprint in nnU-Net's format describing four cases of
exactly this shape and spacing, with the intensity statistics (mean, median, std, min, max, 0.5 and 99.5
percentiles) of the volume's voxels above -500 HU standing in for the labelled foreground, no cropping
(``median_relative_size_after_cropping`` 1.0). Then the stock ``nnUNetv2_plan_experiment -d 990`` (default
``ExperimentPlanner``, plans ``nnUNetPlans``, its 8 GB GPU memory target) writes ``nnUNetPlans.json``, and its
``3d_fullres`` configuration gives the target spacing, patch size and network. The image files in the raw
dataset are tiny placeholders: the planner decides from the fingerprint alone and opens one image only to pick
a reader (SimpleITK). The fingerprint is hand-written rather than extracted because extraction would read and
crop several copies of a multi-GB volume, and it would find the same numbers.

The network is built from the plan by ``nnUNetTrainer.build_network_architecture`` (no deep supervision, as in
inference) with random weights (seed 0): the time and memory do not depend on them. The volume is handed to
nnU-Net in its own axis order, that of SimpleITK: the caller's ``(X, Y, Z)`` array becomes a C-contiguous
``(Z, Y, X)`` array with the spacing reversed, so that nnU-Net sees what its reader would give it. The patch
size and spacing in the returned dict are mapped back to the caller's ``(X, Y, Z)`` order; ``plan_details``
keeps them in nnU-Net's own (transposed) order as well.

Not measured: nnU-Net's command-line predictor (``nnUNetv2_predict``) adds reading and writing the image files
and worker processes for pre- and post-processing; for large CT volumes nnU-Net also plans a ``3d_lowres``
configuration and the cascade, which is not used here (``configurations_in_plan`` lists what it planned).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import resource
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

try:
    from common import REPO_ROOT, emit_json
    from nnunet_peer import DEFAULT_VENV, PeerError, _check, _run, peer_environment
except ImportError:  # imported as ``benchmarks.nnunet_volume`` from the project's root
    from benchmarks.common import REPO_ROOT, emit_json
    from benchmarks.nnunet_peer import DEFAULT_VENV, PeerError, _check, _run, peer_environment

CONFIGURATION = "3d_fullres"
PLANS = "nnUNetPlans"
DATASET_ID = 990
DATASET_NAME = f"Dataset{DATASET_ID:03d}_LargeVolume"
#: Cases the dataset description claims (all of the volume's shape and spacing); only the batch size, unused in
#: inference, depends on it.
N_CASES = 4
#: Voxels above this value (HU) stand in for nnU-Net's labelled foreground in the intensity statistics.
BODY_THRESHOLD_HU = -500.0
#: Voxels sampled (evenly strided) for the intensity statistics.
STAT_SAMPLES = 2_000_000
TILE_STEP = 0.5
DEFAULT_WORK_DIR = REPO_ROOT / "benchmarks" / ".work" / "nnunet_volume"

Log = Callable[[str], None]


# --------------------------------------------------------------------------------------------------------------
# The caller's side (our venv): no nnunetv2 here


def _write_volume_zyx(array: np.ndarray, path: Path) -> tuple[int, int, int]:
    """Write ``array`` (X, Y, Z) as a C-ordered float32 ``.npy`` of shape (Z, Y, X), one slice at a time.

    Slice by slice so that the caller's process never holds a second copy of the volume.
    """
    if array.ndim != 3:
        raise ValueError(f"expected a 3D (X, Y, Z) array, got shape {array.shape}")
    x, y, z = array.shape
    shape_zyx = (z, y, x)
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as f:
        header = {
            "descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
            "fortran_order": False,
            "shape": shape_zyx,
        }
        np.lib.format.write_array_header_1_0(f, header)
        for k in range(z):
            f.write(np.ascontiguousarray(array[:, :, k].T, dtype=np.float32).tobytes())
    os.replace(tmp, path)
    return shape_zyx


def _worker(
    python: Path, env: dict[str, str], mode: str, request: dict[str, Any], work_dir: Path, log_name: str
) -> dict[str, Any]:
    """Run this file's ``--worker MODE`` in the peer venv with ``request``; its JSON answer."""
    request_file = work_dir / f"{mode}_request.json"
    answer_file = work_dir / f"{mode}_answer.json"
    request_file.write_text(json.dumps(request, indent=1) + "\n")
    answer_file.unlink(missing_ok=True)
    log_file = work_dir / "logs" / log_name
    cmd = [str(python), str(Path(__file__).resolve()), "--worker", mode, str(request_file), str(answer_file)]
    done = _run(cmd, env, log_file)
    _check(done, f"nnU-Net worker '{mode}'", log_file)
    return json.loads(answer_file.read_text())


def predict_with_nnunet(
    array: np.ndarray,
    spacing: tuple[float, float, float],
    work_dir: Path,
    *,
    threads: int = 2,
    tta: bool = False,
    log: Log = print,
    venv: Path = DEFAULT_VENV,
) -> dict[str, Any]:
    """Time nnU-Net v2's own CPU prediction (``3d_fullres`` of its own plan, random weights) of one CT volume.

    ``array``: float32 ``(X, Y, Z)`` CT in HU on its native grid with ``spacing`` (mm, same axis order).
    ``work_dir`` receives the volume as ``.npy``, nnU-Net's folders, the plan and the logs (``logs/``).

    Returns ``seconds`` (wall time of ``predict_single_npy_array``: preprocessing, sliding window and back to the
    native grid), ``peak_rss_gib`` (the worker's ``ru_maxrss``), ``rss_before_gib`` (the same just before the
    call), ``patch_size`` and ``spacing`` (nnU-Net's 3d_fullres target, in the caller's X, Y, Z order),
    ``windows_step``, ``tta``, ``nnunet_version``, ``configuration``, ``plan`` (who made it), ``plan_details``
    (nnU-Net's own axis order), ``resampled_shape`` and ``windows`` (sliding-window tiles per pass),
    ``threads``, ``planning_seconds`` and ``versions``. Raises :class:`nnunet_peer.PeerError` when a step fails.
    """
    if len(spacing) != 3 or array.ndim != 3:
        raise ValueError("predict_with_nnunet wants a 3D (X, Y, Z) array and three spacings")
    work_dir = Path(work_dir).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    python, env = peer_environment(work_dir, venv, log)
    n = str(threads)
    env.update(
        {
            "nnUNet_def_n_proc": n,
            "nnUNet_n_proc_DA": n,
            "OMP_NUM_THREADS": n,
            "MKL_NUM_THREADS": n,
            "OPENBLAS_NUM_THREADS": n,
            "nnUNet_compile": "false",
        }
    )
    volume = work_dir / "volume_zyx.npy"
    shape_zyx = _write_volume_zyx(array, volume)
    spacing_zyx = [float(s) for s in reversed(spacing)]
    log(f"nnU-Net: planning {DATASET_NAME} for {'x'.join(map(str, array.shape))} voxels at {list(spacing)} mm")

    start = time.perf_counter()
    prepared = _worker(
        python,
        env,
        "prepare",
        {"volume": str(volume), "spacing_zyx": spacing_zyx, "work_dir": str(work_dir)},
        work_dir,
        "prepare.log",
    )
    plan_log = work_dir / "logs" / "plan_experiment.log"
    done = _run([str(venv / "bin" / "nnUNetv2_plan_experiment"), "-d", str(DATASET_ID)], env, plan_log)
    _check(done, "nnUNetv2_plan_experiment", plan_log)
    plans_file = Path(prepared["plans_file"])
    if not plans_file.is_file():
        raise PeerError(f"nnUNetv2_plan_experiment wrote no {plans_file}; log: {plan_log}")
    planning_seconds = time.perf_counter() - start

    log(f"nnU-Net: predicting with {threads} threads, TTA {tta} (log: {work_dir / 'logs' / 'predict.log'})")
    answer = _worker(
        python,
        env,
        "predict",
        {
            "volume": str(volume),
            "spacing_zyx": spacing_zyx,
            "plans_file": str(plans_file),
            "dataset_json": prepared["dataset_json"],
            "threads": threads,
            "tta": tta,
        },
        work_dir,
        "predict.log",
    )
    if answer["output_shape"] != list(shape_zyx):
        raise PeerError(f"nnU-Net returned shape {answer['output_shape']}, expected {list(shape_zyx)}")
    volume.unlink(missing_ok=True)

    details = answer["plan_details"]
    # nnU-Net's input axes are the caller's reversed; its configuration is in transposed (transpose_forward) order.
    to_caller = [2 - axis for axis in details["transpose_forward"]]
    patch_xyz = [0, 0, 0]
    spacing_xyz = [0.0, 0.0, 0.0]
    for j, axis in enumerate(to_caller):
        patch_xyz[axis] = details["patch_size"][j]
        spacing_xyz[axis] = details["spacing"][j]
    return {
        "seconds": answer["seconds"],
        "peak_rss_gib": answer["peak_rss_gib"],
        "rss_before_gib": answer["rss_before_gib"],
        "patch_size": patch_xyz,
        "spacing": spacing_xyz,
        "windows_step": TILE_STEP,
        "tta": tta,
        "nnunet_version": answer["versions"]["nnunetv2"],
        "configuration": CONFIGURATION,
        "plan": f"nnU-Net ExperimentPlanner ({PLANS}) from a hand-written fingerprint",
        "plan_details": details,
        "resampled_shape": answer["resampled_shape"],
        "windows": answer["windows"],
        "threads": answer["torch_threads"],
        "planning_seconds": planning_seconds,
        "versions": answer["versions"],
    }


# --------------------------------------------------------------------------------------------------------------
# The worker's side (the peer venv, run as ``--worker MODE REQUEST ANSWER``)


def _intensity_statistics(volume: Path) -> dict[str, float]:
    """nnU-Net's ``foreground_intensity_properties_per_channel`` entry, from an even sample of body voxels."""
    data = np.load(volume, mmap_mode="r")
    flat = data.reshape(-1)
    sample = np.asarray(flat[:: max(1, flat.size // STAT_SAMPLES)], dtype=np.float64)
    body = sample[sample > BODY_THRESHOLD_HU]
    values = body if body.size else sample
    return {
        "mean": float(np.mean(values)),
        "median": float(np.median(values)),
        "std": float(np.std(values)),
        "min": float(np.min(values)),
        "max": float(np.max(values)),
        "percentile_99_5": float(np.percentile(values, 99.5)),
        "percentile_00_5": float(np.percentile(values, 0.5)),
    }


def _prepare(request: dict[str, Any]) -> dict[str, Any]:
    """Write the raw dataset (placeholder images) and the fingerprint nnU-Net's planner reads."""
    import SimpleITK as sitk

    work_dir = Path(request["work_dir"])
    raw = work_dir / "nnUNet_raw" / DATASET_NAME
    preprocessed = work_dir / "nnUNet_preprocessed" / DATASET_NAME
    for folder in (raw, preprocessed):  # a fresh plan every time: nothing stale from another shape
        if folder.exists():
            shutil.rmtree(folder)
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir(parents=True)
    preprocessed.mkdir(parents=True)
    shape_zyx = [int(s) for s in np.load(request["volume"], mmap_mode="r").shape]
    spacing_zyx = [float(s) for s in request["spacing_zyx"]]
    for i in range(N_CASES):
        for folder, suffix, value in (("imagesTr", "_0000", -1000), ("labelsTr", "", 0)):
            image = sitk.GetImageFromArray(np.full((2, 2, 2), value, dtype=np.int16))
            image.SetSpacing(spacing_zyx[::-1])  # SimpleITK's order is x, y, z
            sitk.WriteImage(image, str(raw / folder / f"case_{i:03d}{suffix}.nii.gz"))
    dataset_json = {
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, "tumour": 1},
        "numTraining": N_CASES,
        "file_ending": ".nii.gz",
        "name": DATASET_NAME,
        "description": "benchmarks/nnunet_volume.py: placeholder images; the fingerprint describes the volume",
    }
    (raw / "dataset.json").write_text(json.dumps(dataset_json, indent=1) + "\n")
    fingerprint = {
        "spacings": [spacing_zyx] * N_CASES,
        "shapes_after_crop": [shape_zyx] * N_CASES,
        "foreground_intensity_properties_per_channel": {"0": _intensity_statistics(Path(request["volume"]))},
        "median_relative_size_after_cropping": 1.0,
    }
    (preprocessed / "dataset_fingerprint.json").write_text(json.dumps(fingerprint, indent=1) + "\n")
    return {"plans_file": str(preprocessed / f"{PLANS}.json"), "dataset_json": dataset_json}


def _predict(request: dict[str, Any]) -> dict[str, Any]:
    """Build nnU-Net's 3d_fullres network from the plan and time ``predict_single_npy_array`` on the volume."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    threads = int(request["threads"])
    tta = bool(request["tta"])
    torch.set_num_threads(threads)
    plans = json.loads(Path(request["plans_file"]).read_text())
    dataset_json = request["dataset_json"]
    plans_manager = PlansManager(plans)
    configuration = plans_manager.get_configuration(CONFIGURATION)
    label_manager = plans_manager.get_label_manager(dataset_json)
    torch.manual_seed(0)
    network = nnUNetTrainer.build_network_architecture(
        plans_manager,
        configuration,
        determine_num_input_channels(plans_manager, configuration, dataset_json),
        label_manager.num_segmentation_heads,
        enable_deep_supervision=False,
    ).eval()
    predictor = nnUNetPredictor(
        tile_step_size=TILE_STEP,
        use_gaussian=True,
        use_mirroring=tta,
        perform_everything_on_device=False,
        device=torch.device("cpu"),
        verbose=False,
        verbose_preprocessing=False,
        allow_tqdm=False,
    )
    # The stock trainer allows mirroring on all three axes for 3D configurations.
    predictor.manual_initialization(
        network, plans_manager, configuration, [network.state_dict()], dataset_json, "nnUNetTrainer", (0, 1, 2)
    )
    torch.set_num_threads(threads)

    image = np.load(request["volume"])[None]  # (1, Z, Y, X), C-ordered: what nnU-Net's SimpleITK reader gives
    spacing_zyx = [float(s) for s in request["spacing_zyx"]]
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    start = time.perf_counter()
    segmentation = predictor.predict_single_npy_array(image, {"spacing": list(spacing_zyx)}, None, None, False)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    children_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20

    transpose = list(plans_manager.transpose_forward)
    resampled = compute_new_shape(
        [image.shape[1 + i] for i in transpose], [spacing_zyx[i] for i in transpose], configuration.spacing
    )
    padded = [max(int(s), int(p)) for s, p in zip(resampled, configuration.patch_size, strict=True)]
    arch = configuration.network_arch_init_kwargs
    return {
        "seconds": seconds,
        "peak_rss_gib": peak,
        "rss_before_gib": rss_before,
        "children_peak_rss_gib": children_peak,
        "output_shape": [int(s) for s in np.shape(segmentation)],
        "resampled_shape": [int(s) for s in resampled],
        "windows": len(predictor._internal_get_sliding_window_slicers(padded)),
        "torch_threads": torch.get_num_threads(),
        "plan_details": {
            "patch_size": [int(s) for s in configuration.patch_size],
            "spacing": [float(s) for s in configuration.spacing],
            "transpose_forward": transpose,
            "median_image_size_in_voxels": [
                float(s) for s in plans["configurations"][CONFIGURATION].get("median_image_size_in_voxels", [])
            ],
            "batch_size": int(configuration.batch_size),
            "network": configuration.network_arch_class_name.rsplit(".", 1)[-1],
            "n_stages": int(arch["n_stages"]),
            "features_per_stage": [int(f) for f in arch["features_per_stage"]],
            "strides": [[int(s) for s in stride] for stride in arch["strides"]],
            "parameters": int(sum(p.numel() for p in network.parameters())),
            "normalization": list(configuration.normalization_schemes),
            "configurations_in_plan": list(plans["configurations"].keys()),
        },
        "versions": {
            name: importlib.metadata.version(name)
            for name in ("nnunetv2", "torch", "numpy", "dynamic_network_architectures")
        },
    }


def _worker_main(mode: str, request_file: Path, answer_file: Path) -> None:
    """The ``--worker`` mode: run ``mode`` on the request, write the answer as JSON."""
    request = json.loads(request_file.read_text())
    answer = _prepare(request) if mode == "prepare" else _predict(request)
    answer_file.write_text(json.dumps(answer, indent=1) + "\n")


# --------------------------------------------------------------------------------------------------------------
# The command: a check on a synthetic CT (large_volume.py's body phantom)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[64, 64, 48], metavar=("X", "Y", "Z"))
    parser.add_argument("--spacing", type=float, nargs=3, default=[0.8, 0.8, 1.0], metavar=("SX", "SY", "SZ"))
    parser.add_argument("--tta", action="store_true", help="mirroring on all three axes (8 passes)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR)
    parser.add_argument("--worker", nargs=3, default=None, help=argparse.SUPPRESS)  # internal, in the peer venv
    args = parser.parse_args(argv)
    if args.worker is not None:
        mode, request, answer = args.worker
        if mode not in ("prepare", "predict"):
            parser.error(f"unknown worker mode {mode}")
        _worker_main(mode, Path(request), Path(answer))
        return 0
    from large_volume import body_phantom  # our venv only: it imports vesalius

    array = body_phantom(tuple(args.shape))
    try:
        result = predict_with_nnunet(
            array, tuple(args.spacing), args.work_dir, threads=args.threads, tta=args.tta, log=print
        )
    except PeerError as error:
        print(f"nnU-Net failed: {error}", file=sys.stderr)
        return 1
    details = result["plan_details"]
    print(
        f"{'x'.join(map(str, args.shape))} voxels at {args.spacing} mm, TTA {args.tta}, {result['threads']} threads: "
        f"nnU-Net {result['nnunet_version']} {CONFIGURATION} predicted in {result['seconds']:.2f} s, "
        f"peak RSS {result['peak_rss_gib']:.2f} GiB (before {result['rss_before_gib']:.2f} GiB)"
    )
    print(
        f"  plan: patch {result['patch_size']} at {result['spacing']} mm (X, Y, Z), {details['n_stages']} stages "
        f"{details['features_per_stage']}, {result['windows']} windows per pass over {result['resampled_shape']} "
        f"(nnU-Net axes), configurations {details['configurations_in_plan']}"
    )
    emit_json({"benchmark": "nnunet_volume", "shape": args.shape, "input_spacing": args.spacing, **result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
