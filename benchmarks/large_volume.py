"""Predicting a CT-sized volume on the CPU: wall time, windows and peak memory with each speed lever on or off, and
nnU-Net v2's own CPU prediction of the same volume for the ratio (target: under 60 s and 4 GiB for 512x512x400).

Run it from the project's root::

    python benchmarks/large_volume.py                                 # body phantom 512x512x400, step 0.5, ROI on
    python benchmarks/large_volume.py --step 0.75                     # the window step of `vesalius predict --fast`
    python benchmarks/large_volume.py --volume sts --no-roi           # the real sarcoma CT, every window predicted
    python benchmarks/large_volume.py --shape 256 256 200 --peer      # also nnU-Net v2 on the same volume

The volume (spacing 0.8 x 0.8 x 1.0 mm, Hounsfield units), ``--volume``:

- ``body``: a synthetic CT: air (-1000) around an elliptic body of 350 x 250 mm (an adult abdomen) through every
  slice, fat (-100) under the skin, soft tissue (N(40, 30)) inside, a spine-like bone (700). Its body's box is
  about half of the field of view, as in a typical abdominal CT.
- ``sts``: ``STS_001`` of ``../shared/data/STS_SoftTissueSarcoma_CT`` (a thigh, 198 x 202 x 59 at 0.98 x 0.98 x
  3.27 mm) resampled to the spacing and mirror-tiled up to the shape: tissue everywhere, so the ROI saves little.
- ``random``: N(0, 100) everywhere, no air (the volume of earlier rows of RESULTS.md).

The network is the CPU plan's 3D U-Net (features 16-128, the first stage at full resolution unless ``--stem
strided``, patch 40x56x40 at 1 mm, batch 4) with random weights: time and memory do not depend on them. The
channel is normalised as CT with the statistics of STS_001's tumour (clip -36..91 HU, mean 28.5, std 23.7), so the
ROI (:mod:`vesalius.inference.roi`) sees what a model trained on that data set would. The levers: ``--step`` (window
step, 0.5 or `--fast`'s 0.75), ``--no-roi``, ``--stem``, ``--tta`` (mirroring on all three axes, 8 passes),
``--threads``. Prediction runs through :func:`vesalius.inference.segmentation.predict_image` (crop, resampling to
1 mm, normalisation, sliding windows, argmax and resampling back to the native grid). Peak RSS is the process's
``ru_maxrss``. ``--peer``: then ``benchmarks/nnunet_volume.py`` predicts the same array with nnU-Net v2's own plan
for it, in its own process (``benchmarks/.peer-venv``). Prints readable lines and one ``BENCHMARK_JSON {...}`` line.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time

import numpy as np
import torch

from common import REPO_ROOT, emit_json, machine_and_date, shared_data
from vesalius.inference.segmentation import predict_image
from vesalius.io import Geometry, Image, read_image
from vesalius.io.schema import from_json
from vesalius.model_package import TrainedSegmentation
from vesalius.models import build_network
from vesalius.planning.plan import Configuration, Normalization
from vesalius.preprocessing.spatial import grid_for_spacing, resample_to

SPACING = (0.8, 0.8, 1.0)
CONFIG = {
    "spacing": [1.0, 1.0, 1.0],
    "median_shape": [40, 56, 40],
    "patch_size": [40, 56, 40],
    "batch_size": 4,
    "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
    "kernels": [[3, 3, 3]] * 4,
    "features": [16, 32, 64, 128],
    "iterations": 1,
}
#: STS_001's tumour voxels: 0.5th and 99.5th percentile, mean and standard deviation (HU)
STS_TUMOUR = Normalization("ct", clip=(-36.0, 91.0), mean=28.5, std=23.7)


def body_phantom(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """``(X, Y, Z)`` HU: air around an elliptic 350 x 250 mm body (fat rim, soft tissue, a bone) in every slice."""
    rng = np.random.default_rng(seed)
    x = (np.arange(shape[0]) - shape[0] / 2) * SPACING[0]
    y = (np.arange(shape[1]) - shape[1] / 2) * SPACING[1]
    r = np.sqrt((x[:, None] / 175.0) ** 2 + (y[None, :] / 125.0) ** 2)
    plane = np.where(r < 1.0, -100.0, -1000.0)
    plane[r < 0.92] = 40.0
    plane[np.hypot(x[:, None], y[None, :] + 80.0) < 18.0] = 700.0
    volume = np.repeat(plane[:, :, None].astype(np.float32), shape[2], axis=2)
    soft = volume == 40.0
    volume[soft] += rng.normal(0.0, 30.0, size=int(soft.sum())).astype(np.float32)
    return volume


def sts_tiled(shape: tuple[int, int, int]) -> np.ndarray | None:
    """STS_001 resampled to :data:`SPACING` and mirror-tiled to ``shape``; ``None`` without the shared data."""
    folder = shared_data("STS_SoftTissueSarcoma_CT")
    if folder is None:
        return None
    image = read_image(folder / "imagesTr" / "STS_001.nii.gz")
    grid, geometry = grid_for_spacing(image, SPACING)
    array = resample_to(image, grid, geometry).array[0]
    reps = [int(np.ceil(s / a)) for s, a in zip(shape, array.shape, strict=True)]
    tiles = array
    for axis, n in enumerate(reps):
        tiles = np.concatenate([tiles if i % 2 == 0 else np.flip(tiles, axis) for i in range(n)], axis=axis)
    return np.ascontiguousarray(tiles[: shape[0], : shape[1], : shape[2]], dtype=np.float32)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[512, 512, 400])
    parser.add_argument("--volume", choices=("body", "sts", "random"), default="body")
    parser.add_argument("--step", type=float, default=0.5, help="window step (0.75: `vesalius predict --fast`)")
    parser.add_argument("--no-roi", action="store_true", help="predict every window, the air's too")
    parser.add_argument("--tta", action="store_true", help="mirror on all three axes (8 passes)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--stem", choices=("full", "strided"), default="full", help="the network's first stage")
    parser.add_argument("--peer", action="store_true", help="also predict the volume with nnU-Net v2")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shape = tuple(args.shape)
    if args.volume == "body":
        array = body_phantom(shape)
    elif args.volume == "sts":
        tiled = sts_tiled(shape)
        if tiled is None:
            print("skipped: ../shared/data/STS_SoftTissueSarcoma_CT is absent")
            return 0
        array = tiled
    else:
        array = np.random.default_rng(0).normal(0, 100, size=shape).astype(np.float32)
    configuration = from_json(
        Configuration, {**CONFIG, "stem": args.stem, "mirror_axes": [0, 1, 2] if args.tta else []}
    )
    trained = TrainedSegmentation(
        dataset="synthetic",
        config="3d",
        channels=("CT",),
        labels={0: "background", 1: "tumour"},
        normalization=(STS_TUMOUR,),
        configuration=configuration,
        precision="bf16",
    )
    torch.manual_seed(0)
    model = build_network(configuration, 1, 2).eval()
    windows = [0]
    model.register_forward_pre_hook(lambda _, inputs: windows.__setitem__(0, windows[0] + inputs[0].shape[0]))
    image = Image(array[None], Geometry(SPACING, (0.0, 0.0, 0.0), tuple(np.eye(3).ravel())))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    start = time.perf_counter()
    labels = predict_image(model, image, trained, step=args.step, roi=not args.no_roi)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    assert labels.spatial_shape == image.spatial_shape
    passes = 8 if args.tta else 1
    print(
        f"{args.volume} {'x'.join(map(str, shape))} ({array.nbytes / 2**30:.2f} GiB float32), stem {args.stem}, "
        f"step {args.step}, ROI {not args.no_roi}, TTA {args.tta}, {args.threads} threads on "
        f"{platform.processor() or platform.machine()} (load {os.getloadavg()[0]:.2f})"
    )
    print(
        f"  Vesalius: {seconds:.1f} s, {windows[0] // passes} windows; peak RSS {peak:.2f} GiB "
        f"(before prediction {rss_before:.2f} GiB)"
    )
    figures = {
        "benchmark": "large_volume",
        **machine_and_date(),
        "volume": args.volume,
        "shape": list(shape),
        "stem": args.stem,
        "step": args.step,
        "roi": not args.no_roi,
        "tta": args.tta,
        "threads": args.threads,
        "seconds": round(seconds, 2),
        "windows": windows[0] // passes,
        "peak_rss_gib": round(peak, 3),
        "rss_before_gib": round(rss_before, 3),
    }
    if args.peer:
        from nnunet_volume import predict_with_nnunet

        peer = predict_with_nnunet(
            array, SPACING, REPO_ROOT / "benchmarks" / ".work" / "nnunet_volume", threads=args.threads, tta=args.tta
        )
        print(
            f"  nnU-Net v2 ({peer.get('configuration')}, patch {peer.get('patch_size')} at {peer.get('spacing')}): "
            f"{peer['seconds']:.1f} s; peak RSS {peer['peak_rss_gib']:.2f} GiB; ratio nnU-Net / Vesalius "
            f"{peer['seconds'] / seconds:.1f}x"
        )
        figures["nnunet"] = peer
        figures["time_ratio_nnunet_over_vesalius"] = round(peer["seconds"] / seconds, 2)
    emit_json(figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
