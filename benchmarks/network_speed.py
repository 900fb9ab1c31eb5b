"""Training speed of candidate U-Nets on the CPU: which network Vesalius builds from a plan, and its families.

Run it from the project's root::

    python benchmarks/network_speed.py                  # batch 10 of (1, 40, 56, 40), 2 threads
    python benchmarks/network_speed.py --batch 4 --steps 10
    python benchmarks/network_speed.py --batch 8 --patch 256 256 --only vesalius-strided vesalius-attention  # 2D

Each candidate does forward, Dice+CE loss (deep supervision where the network has it), backward and an SGD step,
in float32 and in bfloat16 autocast with channels-last tensors (the trainer's CPU mode); the median seconds per
step over ``--steps`` steps after two warm-up steps (``--bf16-only`` skips float32; ``--cpu-time`` measures the
process's CPU seconds instead, for a machine shared with other work). A patch of two sizes makes every candidate
2D. Candidates, all with 4 stages of 16-128 features and 3 poolings (Hippocampus' CPU plan):

- ``vesalius-strided``: :class:`vesalius.models.UNet` with the default strided stem (no full-resolution stage);
- ``vesalius-full``: the same with a full-resolution first stage (nnU-Net's layout);
- ``monai-unet``: MONAI ``UNet`` (2 residual units, no deep supervision);
- ``monai-dynunet``: MONAI ``DynUNet`` as nnU-Net configures it (residual blocks off, deep supervision on);
- ``vesalius-attention``, ``vesalius-resenc``: the strided U-Net's other families (:mod:`vesalius.models.families`:
  attention gates on the skips; 1, 3, 4, 6 residual units per encoder stage and one-convolution decoder units);
- ``monai-attentionunet``: MONAI ``AttentionUnet`` (batch norm, full-resolution first stage, no deep supervision).

Prints readable lines and one ``BENCHMARK_JSON {...}`` line.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
from monai.losses import DeepSupervisionLoss, DiceCELoss
from monai.networks.nets import AttentionUnet, DynUNet
from monai.networks.nets import UNet as MonaiUNet

from common import emit_json
from vesalius.models import UNet
from vesalius.models.families import stage_units

FEATURES = [16, 32, 64, 128]


def candidates(classes: int, dims: int) -> dict[str, Callable[[], torch.nn.Module]]:
    strides = [[1] * dims] + [[2] * dims] * 3
    kernels = [[3] * dims] * 4
    resenc = {"stage_units": stage_units("resenc", 4), "decoder_convolutions": 1}
    return {
        "vesalius-strided": lambda: UNet(dims, 1, classes, FEATURES, strides, kernels, stem="strided"),
        "vesalius-full": lambda: UNet(dims, 1, classes, FEATURES, strides, kernels, stem="full"),
        "monai-unet": lambda: MonaiUNet(
            dims, 1, classes, channels=FEATURES, strides=(2, 2, 2), num_res_units=2, norm="INSTANCE"
        ),
        "monai-dynunet": lambda: DynUNet(
            dims,
            1,
            classes,
            kernels,
            strides,
            strides[1:],
            filters=FEATURES,
            norm_name="INSTANCE",
            deep_supervision=True,
            deep_supr_num=2,
        ),
        "vesalius-attention": lambda: UNet(dims, 1, classes, FEATURES, strides, kernels, attention_gates=True),
        "vesalius-resenc": lambda: UNet(dims, 1, classes, FEATURES, strides, kernels, **resenc),
        "monai-attentionunet": lambda: AttentionUnet(dims, 1, classes, channels=FEATURES, strides=(2, 2, 2)),
    }


def time_steps(
    net: torch.nn.Module,
    batch: int,
    patch: tuple[int, ...],
    classes: int,
    steps: int,
    bf16: bool,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Median seconds per training step, on ``clock``."""
    torch.manual_seed(0)
    channels_last = torch.channels_last_3d if len(patch) == 3 else torch.channels_last
    memory_format = channels_last if bf16 else torch.contiguous_format
    net = net.to(memory_format=memory_format).train()
    loss_fn = DeepSupervisionLoss(DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.99, nesterov=True)
    x = torch.randn(batch, 1, *patch).contiguous(memory_format=memory_format)
    y = torch.randint(0, classes, (batch, 1, *patch)).float()
    times = []
    for step in range(steps + 2):
        t0 = clock()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = net(x)
        if isinstance(out, torch.Tensor) and out.dim() == x.dim() + 1:  # DynUNet stacks its outputs
            out = list(out.unbind(1))
        loss = loss_fn([o.float() for o in out] if isinstance(out, list) else out.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step >= 2:
            times.append(clock() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--patch", type=int, nargs="+", default=[40, 56, 40], help="2 sizes (2D) or 3 (3D)")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="*", help="candidate names to run")
    parser.add_argument("--bf16-only", action="store_true", help="time bf16 + channels-last only")
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="CPU seconds of this process per step instead of wall seconds: robust to other processes sharing the "
        "cores; with --threads 1, about the wall time on one free core",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    classes = 3
    results = {}
    if len(args.patch) not in (2, 3):
        parser.error("--patch needs 2 or 3 sizes")
    print(
        f"machine: {platform.processor() or platform.machine()}, load {os.getloadavg()[0]:.2f}, "
        f"batch {args.batch} x {tuple(args.patch)}, {args.threads} threads"
    )
    for name, make in candidates(classes, len(args.patch)).items():
        if args.only and name not in args.only:
            continue
        params = sum(p.numel() for p in make().parameters())
        row = {"parameters": params}
        for bf16 in (True,) if args.bf16_only else (False, True):
            clock = time.process_time if args.cpu_time else time.perf_counter
            s = time_steps(make(), args.batch, tuple(args.patch), classes, args.steps, bf16, clock)
            row["bf16_s_per_step" if bf16 else "fp32_s_per_step"] = round(s, 4)
        results[name] = row
        fp32 = f"fp32 {row['fp32_s_per_step']:.3f} s/step  " if "fp32_s_per_step" in row else ""
        print(
            f"{name:19s} {params / 1e6:5.2f} M params  {fp32}bf16+channels_last {row['bf16_s_per_step']:.3f} s/step",
            flush=True,
        )
    emit_json(
        {
            "benchmark": "network_speed",
            "batch": args.batch,
            "patch": args.patch,
            "threads": args.threads,
            "clock": "process CPU time" if args.cpu_time else "wall time",
            "results": results,
        }
    )


if __name__ == "__main__":
    main()
