"""The plain MONAI recipe of ``../shared/notes/peers.md`` on a Hippocampus fold: a reference for our trainer.

Run it from the project's root::

    python benchmarks/hippocampus_monai_recipe.py --iterations 2000 --batch 8

The recipe, as that note describes it: whole volumes (no patches, no sliding window) placed at a random offset
in a 48x64x48 zero canvas, MONAI ``UNet`` (16-256 channels, 2 residual units, instance norm), Dice + cross-entropy,
AdamW 2e-3 with a one-cycle cosine schedule over the iterations, bf16 autocast with ``channels_last_3d`` on the
CPU, light augmentation in torch (mirroring along the planned axis, intensity scale and shift, Gaussian noise).
It reads the preprocessed cases of ``hippocampus_train.py``'s workspace (``benchmarks/.work/vesalius``, made when
missing; per-image z-score) and the same split, and scores the fold's validation cases with mirroring TTA. For
Hippocampus the preprocessed grid is the original one (1 mm, nothing cropped); the script checks that per case.
A fixed number of iterations makes it comparable with ``hippocampus_variants.py`` at equal samples (iterations x
batch), whatever else runs on the machine. Prints the Dice per class and one ``BENCHMARK_JSON {...}`` line.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from common import dice_per_class, emit_json, machine_and_date, shared_data
from hippocampus_train import DATASET, benchmark_workspace

CANVAS = (48, 64, 48)
LABELS = {1: "Anterior", 2: "Posterior"}


def place(image: np.ndarray, seg: np.ndarray, offset: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """``image`` and ``seg`` (both ``(X, Y, Z)``) written into zero canvases of ``CANVAS`` at ``offset``."""
    x, y = np.zeros(CANVAS, np.float32), np.zeros(CANVAS, np.int64)
    box = tuple(slice(o, o + n) for o, n in zip(offset, image.shape, strict=True))
    x[box], y[box] = image, seg
    return x, y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data_dir = shared_data(DATASET)
    if data_dir is None:
        print(f"skipped: ../shared/data/{DATASET} is not here")
        return
    import torch
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet

    from vesalius.planning.plan import Plan
    from vesalius.workspace import Workspace

    source = Workspace(benchmark_workspace(data_dir))
    folder = source.preprocessed_dir("hippocampus", "3d")
    split = json.loads(source.splits_path("hippocampus").read_text())[args.fold]
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    mirror_axis = Plan.load(folder / "plan.json").configuration("3d").mirror_axes[0]

    def load(case: str) -> tuple[np.ndarray, np.ndarray]:
        properties = json.loads((folder / f"{case}.json").read_text())
        if properties["shape"] != properties["original_shape"]:
            raise SystemExit(f"{case}: preprocessing changed the grid; this recipe scores on the preprocessed one")
        return np.load(folder / f"{case}.npy")[0], np.load(folder / f"{case}_seg.npy")[0]

    train = [load(c) for c in split["train"]]
    validation = {c: load(c) for c in split["val"]}

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        images, segs = [], []
        for i in rng.integers(len(train), size=args.batch):
            image, seg = train[i]
            offset = tuple(int(rng.integers(0, c - s + 1)) for c, s in zip(CANVAS, image.shape, strict=True))
            image = image * rng.uniform(0.9, 1.1) + rng.uniform(-0.1, 0.1)
            if rng.random() < 0.5:
                image, seg = np.flip(image, mirror_axis), np.flip(seg, mirror_axis)
            if rng.random() < 0.3:
                image = image + rng.normal(0.0, 0.05, image.shape)
            x, y = place(image, seg, offset)
            images.append(x)
            segs.append(y)
        return torch.from_numpy(np.stack(images))[:, None], torch.from_numpy(np.stack(segs))[:, None]

    channels_last = torch.channels_last_3d
    network = UNet(3, 1, 3, (16, 32, 64, 128, 256), (2, 2, 2, 2), num_res_units=2, norm="INSTANCE")
    network = network.to(memory_format=channels_last)
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.AdamW(network.parameters(), 2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, 2e-3, total_steps=args.iterations, pct_start=0.02, anneal_strategy="cos"
    )
    print(
        f"{DATASET} fold {args.fold}: MONAI UNet recipe, {args.iterations} iterations of batch {args.batch}, "
        f"{args.threads} threads, load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    start = time.perf_counter()
    for _ in range(args.iterations):
        x, y = batch()
        with torch.autocast("cpu", torch.bfloat16):
            logits = network(x.to(memory_format=channels_last))
        loss = loss_function(logits.float(), y)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), 12)
        optimizer.step()
        schedule.step()
    train_s = time.perf_counter() - start

    network.eval()
    scores: dict[int, list[float]] = {k: [] for k in LABELS}
    dim = 2 + mirror_axis
    with torch.no_grad():
        for image, seg in validation.values():
            x = torch.from_numpy(place(image, seg, (0, 0, 0))[0])[None, None]
            probabilities = network(x).softmax(1) + network(x.flip(dim)).softmax(1).flip(dim)
            prediction = probabilities.argmax(1)[0].numpy()[tuple(slice(0, n) for n in image.shape)]
            for label, value in dice_per_class(prediction, seg, LABELS).items():
                scores[label].append(value)
    per_class = {LABELS[k]: float(np.mean(v)) for k, v in scores.items()}
    mean = float(np.mean([v for values in scores.values() for v in values]))
    print(
        f"MONAI recipe: validation Dice ({len(validation)} cases): mean {mean:.4f} "
        f"({', '.join(f'{k} {v:.4f}' for k, v in per_class.items())}); {args.iterations} iterations in "
        f"{train_s:.0f} s"
    )
    emit_json(
        {
            "benchmark": "hippocampus_monai_recipe",
            "fold": args.fold,
            "iterations": args.iterations,
            "batch_size": args.batch,
            "threads": args.threads,
            "seed": args.seed,
            "mean_dice": mean,
            "dice_per_class": per_class,
            "train_seconds": train_s,
            **machine_and_date(),
        }
    )


if __name__ == "__main__":
    main()
