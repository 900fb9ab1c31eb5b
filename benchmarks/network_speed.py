"""Training speed of candidate 3D U-Nets on the CPU: which network Vesalius builds from a plan.

Run it from the project's root::

    python benchmarks/network_speed.py                  # batch 10 of (1, 40, 56, 40), 2 threads
    python benchmarks/network_speed.py --batch 4 --steps 10

Each candidate does forward, Dice+CE loss (deep supervision where the network has it), backward and an SGD step,
in float32 and in bfloat16 autocast with ``channels_last_3d`` (the trainer's CPU mode); the median seconds per
step over ``--steps`` steps after two warm-up steps. Candidates, all with 4 stages of 16-128 features, instance
norm and 3 poolings (Hippocampus' CPU plan):

- ``vesalius-strided``: :class:`vesalius.models.UNet` with the default strided stem (no full-resolution stage);
- ``vesalius-full``: the same with a full-resolution first stage (nnU-Net's layout);
- ``monai-unet``: MONAI ``UNet`` (2 residual units, no deep supervision);
- ``monai-dynunet``: MONAI ``DynUNet`` as nnU-Net configures it (residual blocks off, deep supervision on).

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
from monai.networks.nets import DynUNet
from monai.networks.nets import UNet as MonaiUNet

from common import emit_json
from vesalius.models import UNet

STRIDES = [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]]
KERNELS = [[3, 3, 3]] * 4
FEATURES = [16, 32, 64, 128]


def candidates(classes: int) -> dict[str, Callable[[], torch.nn.Module]]:
    return {
        "vesalius-strided": lambda: UNet(3, 1, classes, FEATURES, STRIDES, KERNELS, stem="strided"),
        "vesalius-full": lambda: UNet(3, 1, classes, FEATURES, STRIDES, KERNELS, stem="full"),
        "monai-unet": lambda: MonaiUNet(
            3, 1, classes, channels=FEATURES, strides=(2, 2, 2), num_res_units=2, norm="INSTANCE"
        ),
        "monai-dynunet": lambda: DynUNet(
            3,
            1,
            classes,
            KERNELS,
            STRIDES,
            STRIDES[1:],
            filters=FEATURES,
            norm_name="INSTANCE",
            deep_supervision=True,
            deep_supr_num=2,
        ),
    }


def time_steps(net: torch.nn.Module, batch: int, patch: tuple[int, ...], classes: int, steps: int, bf16: bool) -> float:
    """Median seconds per training step."""
    torch.manual_seed(0)
    memory_format = torch.channels_last_3d if bf16 else torch.contiguous_format
    net = net.to(memory_format=memory_format).train()
    loss_fn = DeepSupervisionLoss(DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.99, nesterov=True)
    x = torch.randn(batch, 1, *patch).contiguous(memory_format=memory_format)
    y = torch.randint(0, classes, (batch, 1, *patch)).float()
    times = []
    for step in range(steps + 2):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = net(x)
        if isinstance(out, torch.Tensor) and out.dim() == x.dim() + 1:  # DynUNet stacks its outputs
            out = list(out.unbind(1))
        loss = loss_fn([o.float() for o in out] if isinstance(out, list) else out.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step >= 2:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--patch", type=int, nargs=3, default=[40, 56, 40])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="*", help="candidate names to run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    classes = 3
    results = {}
    print(
        f"machine: {platform.processor() or platform.machine()}, load {os.getloadavg()[0]:.2f}, "
        f"batch {args.batch} x {tuple(args.patch)}, {args.threads} threads"
    )
    for name, make in candidates(classes).items():
        if args.only and name not in args.only:
            continue
        params = sum(p.numel() for p in make().parameters())
        row = {"parameters": params}
        for bf16 in (False, True):
            s = time_steps(make(), args.batch, tuple(args.patch), classes, args.steps, bf16)
            row["bf16_s_per_step" if bf16 else "fp32_s_per_step"] = round(s, 4)
        results[name] = row
        print(
            f"{name:18s} {params / 1e6:5.2f} M params  fp32 {row['fp32_s_per_step']:.3f} s/step  "
            f"bf16+channels_last {row['bf16_s_per_step']:.3f} s/step",
            flush=True,
        )
    emit_json(
        {
            "benchmark": "network_speed",
            "batch": args.batch,
            "patch": args.patch,
            "threads": args.threads,
            "results": results,
        }
    )


if __name__ == "__main__":
    main()
