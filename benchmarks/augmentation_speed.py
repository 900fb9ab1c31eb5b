"""Speed of batch augmentation on the CPU: Vesalius' batched torch ``Augmenter`` against MONAI per sample.

Run it from the project's root::

    python benchmarks/augmentation_speed.py               # batch 8 of (1, 40, 56, 40), 2 threads
    python benchmarks/augmentation_speed.py --batches 50 --threads 1

Both sides do nnU-Net v2's standard augmentation at its probabilities:

- (a) ``vesalius.augmentation.Augmenter()`` on the whole batch (one ``grid_sample`` for every spatially
  transformed sample, vectorised intensity transforms);
- (b) a ``monai.transforms.Compose`` of dictionary transforms applied sample by sample, then stacked:
  ``RandAffined`` (rotation +-30 degrees per axis, scaling 0.7-1.3, p 0.36 = nnU-Net's chance of rotation or
  scaling), ``RandGaussianNoised``, ``RandGaussianSmoothd``, ``RandScaleIntensityd``,
  ``RandScaleIntensityFixedMeand`` (nnU-Net's contrast), ``RandSimulateLowResolutiond``, ``RandAdjustContrastd``
  (inverted and plain gamma) and ``RandFlipd`` per axis. MONAI runs without meta-data tracking
  (``set_track_meta(False)``), its fastest mode, with a cached base grid.

The two sides take turns batch by batch, so that both see the same load. Each side is also timed with every
transform applied to every sample ("always"), the worst case. Times are per batch (median and mean over
``--batches`` batches after a warm-up), in milliseconds. Also reported: the patch sampler's time for the same batch
(in-memory cases of 96 x 128 x 96, pre-patches with the default config's full margin,
``AugmentationConfig().margin``) and the augmenter's time on those pre-patches (cropping to the patch in the same
resampling). Prints readable lines and one ``BENCHMARK_JSON {...}`` line. The machine's load average is reported:
other processes on the same two cores slow both sides, multi-threaded torch most (threads wait for each other).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

try:
    from common import emit_json
except ImportError:  # imported as ``benchmarks.augmentation_speed`` from the project's root
    from benchmarks.common import emit_json

PATCH = (40, 56, 40)


def _timed(steps: dict[str, Callable[[int], Any]], batches: int, warmup: int = 3) -> dict[str, dict[str, float]]:
    """Median and mean milliseconds per call of each step; the steps take turns, so they share the machine's load."""
    for i in range(warmup):
        for step in steps.values():
            step(10_000 + i)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(batches):
        for name, step in steps.items():
            start = time.perf_counter()
            step(i)
            times[name].append((time.perf_counter() - start) * 1e3)
    return {
        name: {"median_ms": round(statistics.median(t), 2), "mean_ms": round(statistics.fmean(t), 2)}
        for name, t in times.items()
    }


def _batch(batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(B, 1, *PATCH)`` (standard normal plus structure) and labels ``(B, 1, *PATCH)`` uint8 in {0, 1, 2}."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.stack(torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in PATCH], indexing="ij"))
    centre = torch.tensor(PATCH, dtype=torch.float32).view(3, 1, 1, 1) / 2
    dist = ((grid - centre) ** 2).sum(0).sqrt()
    labels = ((dist < 14).to(torch.uint8) + (dist < 7).to(torch.uint8))[None, None].repeat(batch, 1, 1, 1, 1)
    images = labels.float() + torch.randn(batch, 1, *PATCH, generator=g)
    return images, labels


def vesalius_augmenter(always: bool) -> Callable[[torch.Tensor, torch.Tensor, int], Any]:
    from vesalius.augmentation.transforms import AugmentationConfig, Augmenter

    if not always:
        return Augmenter()
    names = [
        "p_rotation",
        "p_scaling",
        "p_noise",
        "p_blur",
        "p_brightness",
        "p_contrast",
        "p_low_resolution",
        "p_gamma_inverted",
        "p_gamma",
    ]
    return Augmenter(AugmentationConfig.from_dict(dict.fromkeys(names, 1.0)))


def monai_per_sample(always: bool) -> Callable[[torch.Tensor, torch.Tensor, int], Any]:
    import monai.transforms as mt
    from monai.data import set_track_meta

    set_track_meta(False)

    def p(value: float) -> float:
        return 1.0 if always else value

    keys = ["image", "label"]
    compose = mt.Compose(
        [
            mt.RandAffined(
                keys,
                spatial_size=PATCH,
                prob=p(0.36),
                rotate_range=(math.pi / 6,) * 3,
                scale_range=((-0.3, 0.3),) * 3,
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
                cache_grid=True,
            ),
            mt.RandGaussianNoised("image", prob=p(0.1), std=0.1),
            mt.RandGaussianSmoothd("image", sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), sigma_z=(0.5, 1.0), prob=p(0.2)),
            mt.RandScaleIntensityd("image", factors=0.25, prob=p(0.15)),
            mt.RandScaleIntensityFixedMeand("image", factors=0.25, preserve_range=True, prob=p(0.15)),
            mt.RandSimulateLowResolutiond("image", prob=p(0.25), zoom_range=(0.5, 1.0)),
            mt.RandAdjustContrastd("image", prob=p(0.1), gamma=(0.7, 1.5), invert_image=True, retain_stats=True),
            mt.RandAdjustContrastd("image", prob=p(0.3), gamma=(0.7, 1.5), retain_stats=True),
            *[mt.RandFlipd(keys, prob=0.5, spatial_axis=axis) for axis in range(3)],
        ]
    )

    def run(images: torch.Tensor, labels: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        compose.set_random_state(seed)
        out = [compose({"image": images[b], "label": labels[b]}) for b in range(images.shape[0])]
        return torch.stack([torch.as_tensor(o["image"]) for o in out]), torch.stack(
            [torch.as_tensor(o["label"]) for o in out]
        )

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--batches", type=int, default=30, help="timed batches per measurement")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    images, labels = _batch(args.batch)
    load = os.getloadavg()
    print(
        f"batch {args.batch} x (1, {', '.join(map(str, PATCH))}), {args.threads} threads, torch "
        f"{torch.__version__}, load average {load[0]:.2f}"
    )

    results: dict[str, Any] = {}
    for mode in ("default", "always"):
        always = mode == "always"
        ours, monai = vesalius_augmenter(always), monai_per_sample(always)
        results |= {
            f"{name}_{mode}": value
            for name, value in _timed(
                {
                    "vesalius_batched": lambda i, f=ours: f(images, labels, i),
                    "monai_per_sample": lambda i, f=monai: f(images, labels, i),
                },
                args.batches,
            ).items()
        }
        speedup = results[f"monai_per_sample_{mode}"]["median_ms"] / results[f"vesalius_batched_{mode}"]["median_ms"]
        results[f"speedup_{mode}"] = round(speedup, 2)
        print(
            f"{mode:8s} vesalius batched {results[f'vesalius_batched_{mode}']['median_ms']:8.1f} ms/batch   "
            f"monai per sample {results[f'monai_per_sample_{mode}']['median_ms']:8.1f} ms/batch   "
            f"x{speedup:.1f} (medians)"
        )

    from vesalius.augmentation.transforms import AugmentationConfig, Augmenter, PatchSampler

    rng = np.random.default_rng(0)
    cases = []
    for _ in range(4):
        seg = (rng.random((1, 96, 128, 96)) > 0.999).astype(np.uint8)
        cases.append((rng.normal(size=(1, 96, 128, 96)).astype(np.float32), seg))
    margin = AugmentationConfig().margin(PATCH)
    sampler = PatchSampler(cases, PATCH, args.batch, extra=margin)
    results["patch_sampler"] = _timed({"sampler": sampler.sample}, args.batches)["sampler"]
    print(
        f"patch sampler ({args.batch} pre-patches of {sampler.output_size}): "
        f"{results['patch_sampler']['median_ms']:.1f} ms/batch"
    )
    pre_images, pre_labels = (torch.from_numpy(a) for a in sampler.sample(0))
    from_prepatch = Augmenter(patch_size=PATCH)
    results["vesalius_batched_default_from_prepatch"] = _timed(
        {"aug": lambda i: from_prepatch(pre_images, pre_labels, i)}, args.batches
    )["aug"]
    print(
        f"vesalius batched, default, from those pre-patches: "
        f"{results['vesalius_batched_default_from_prepatch']['median_ms']:.1f} ms/batch"
    )

    emit_json(
        {
            "benchmark": "augmentation_speed",
            "batch": args.batch,
            "patch": PATCH,
            "threads": args.threads,
            "batches": args.batches,
            "prepatch": sampler.output_size,
            "load_average_1min": round(load[0], 2),
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
            "torch": torch.__version__,
            "results": results,
        }
    )


if __name__ == "__main__":
    main()
