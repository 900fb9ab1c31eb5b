"""Predicting a large CT-sized volume on the CPU: wall time and peak memory (target: peak RSS under 4 GiB).

Run it from the project's root::

    python benchmarks/large_volume.py                       # 512 x 512 x 400, 3 classes, no TTA
    python benchmarks/large_volume.py --shape 256 256 200 --tta

A synthetic 1-channel volume (spacing 0.8 x 0.8 x 1.0 mm) is segmented by a 3D U-Net built from a CPU plan
configuration (features 16-128, the first stage at full resolution, patch 40x56x40 at 1 mm; ``--stem strided``
for the layout without it; random weights: time and memory do not depend on them)
through :func:`vesalius.inference.segmentation.predict_image`: preprocessing (crop, resampling to 1 mm,
z-score), sliding windows (step 0.5, Gaussian), argmax and resampling back to the native grid. Peak RSS is the process's
``ru_maxrss``. Needs no shared data. Prints readable lines and one ``BENCHMARK_JSON {...}`` line.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time

import numpy as np
import torch

from common import emit_json
from vesalius.inference.segmentation import predict_image
from vesalius.io import Geometry, Image
from vesalius.io.schema import from_json
from vesalius.model_package import TrainedSegmentation
from vesalius.models import build_network
from vesalius.planning.plan import Configuration, Normalization

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
STEMS = {"full": {"stem": "full"}, "strided": {"stem": "strided"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[512, 512, 400])
    parser.add_argument("--tta", action="store_true", help="mirror on all three axes (8 passes)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--stem", choices=("full", "strided"), default="full", help="the network's first stage")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    configuration = from_json(
        Configuration, {**CONFIG, **STEMS[args.stem], "mirror_axes": [0, 1, 2] if args.tta else []}
    )
    trained = TrainedSegmentation(
        dataset="synthetic",
        config="3d",
        channels=("CT",),
        labels={0: "background", 1: "organ", 2: "lesion"},
        normalization=(Normalization("zscore"),),
        configuration=configuration,
        precision="bf16",
    )
    torch.manual_seed(0)
    model = build_network(configuration, 1, 3).eval()
    rng = np.random.default_rng(0)
    array = rng.normal(0, 100, size=(1, *args.shape)).astype(np.float32)
    image = Image(array, Geometry((0.8, 0.8, 1.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel())))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    start = time.perf_counter()
    labels = predict_image(model, image, trained)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    assert labels.spatial_shape == image.spatial_shape
    print(
        f"{'x'.join(map(str, args.shape))} voxels ({array.nbytes / 2**30:.2f} GiB float32), TTA {args.tta}, "
        f"{args.threads} threads on {platform.processor() or platform.machine()} (load {os.getloadavg()[0]:.2f})"
    )
    print(f"  predicted in {seconds:.1f} s; peak RSS {peak:.2f} GiB (before prediction {rss_before:.2f} GiB)")
    emit_json(
        {
            "benchmark": "large_volume",
            "shape": args.shape,
            "tta": args.tta,
            "stem": args.stem,
            "threads": args.threads,
            "seconds": seconds,
            "peak_rss_gib": peak,
            "rss_before_gib": rss_before,
        }
    )


if __name__ == "__main__":
    main()
