"""How close inference comes to the machine's convolution throughput: achieved GFLOP/s against tight loops.

Run it from the project's root::

    python benchmarks/inference_flops.py              # the CPU plan's 3D U-Net, batch 4 of 40x56x40, 2 threads

Three figures per precision (float32; bfloat16 autocast with channels-last, as ``vesalius predict`` runs on CPUs
with native bf16):

1. the network: one forward pass of a batch of windows, FLOPs counted by PyTorch's ``FlopCounterMode`` (a
   multiply-add is 2 FLOPs), divided by the median wall time;
2. its convolutions alone: each convolution layer of that forward pass re-run by itself, with the same input shape,
   weights and layout, in a tight loop; their FLOPs over the sum of their median times (the most the network could
   reach if everything but convolutions were free);
3. the machine: a large matrix product (4096 x 4096) in a tight loop, the practical peak of the BLAS kernels.

The gap between 1 and 2 is the cost of everything that is not a convolution (normalisation, activations, copies);
the gap between 2 and 3 is how far the convolution kernels at these small channel counts are from the peak. The
network is the planner's CPU configuration for Hippocampus-sized data (the one ``large_volume.py`` uses, random
weights: time does not depend on them). Needs no shared data. Prints a table and one ``BENCHMARK_JSON`` line.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from common import emit_json
from vesalius.models import build_network

CONFIG = {
    "patch_size": [40, 56, 40],
    "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
    "kernels": [[3, 3, 3]] * 4,
    "features": [16, 32, 64, 128],
}


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def conv_calls(model: nn.Module, x: torch.Tensor) -> list[tuple[nn.Conv3d, torch.Tensor]]:
    """Every 3D convolution the forward pass of ``model`` on ``x`` calls, with a copy of the input it got."""
    calls: list[tuple[nn.Conv3d, torch.Tensor]] = []
    hooks = [
        m.register_forward_pre_hook(lambda mod, args: calls.append((mod, args[0].detach().clone())))
        for m in model.modules()
        if isinstance(m, nn.Conv3d | nn.ConvTranspose3d)
    ]
    try:
        model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return calls


def flops_of(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn`` (2 per multiply-add), as counted by PyTorch."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def measure(model: nn.Module, x: torch.Tensor, dtype: torch.dtype | None, repeats: int) -> dict[str, float]:
    """GFLOP/s of the whole forward pass and of its convolutions alone, under autocast to ``dtype`` (or float32)."""
    context = (lambda: torch.autocast("cpu", dtype=dtype)) if dtype else torch.no_grad
    with torch.inference_mode(), context():
        network_flops = flops_of(lambda: model(x))
        network_s = median_seconds(lambda: model(x), repeats)
        calls = conv_calls(model, x)
        conv_flops, conv_s = 0, 0.0
        for conv, inp in calls:
            conv_flops += flops_of(lambda conv=conv, inp=inp: conv(inp))
            conv_s += median_seconds(lambda conv=conv, inp=inp: conv(inp), repeats)
    return {
        "network_gflop": network_flops / 1e9,
        "network_s": network_s,
        "network_gflops": network_flops / network_s / 1e9,
        "conv_gflop": conv_flops / 1e9,
        "conv_only_s": conv_s,
        "conv_gflops": conv_flops / conv_s / 1e9,
        "conv_layers": len(calls),
    }


def matmul_gflops(dtype: torch.dtype, n: int, repeats: int) -> float:
    """GFLOP/s of an ``n x n`` matrix product in ``dtype`` in a tight loop."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    return 2 * n**3 / median_seconds(lambda: a @ b, repeats) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4, help="windows per forward pass (predict's default: 4-10)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_network(CONFIG, 1, 3).eval()
    x = torch.randn(args.batch, 1, *CONFIG["patch_size"])
    print(
        f"3D U-Net {CONFIG['features']}, batch {args.batch} x {CONFIG['patch_size']}, {args.threads} threads, "
        f"{platform.processor() or platform.machine()}, load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    results = {}
    for name, dtype, layout in (("float32", None, torch.contiguous_format), ("bfloat16", torch.bfloat16,
                                                                              torch.channels_last_3d)):  # fmt: skip
        net = model.to(memory_format=layout)
        r = measure(net, x.to(memory_format=layout), dtype, args.repeats)
        r["matmul_peak_gflops"] = matmul_gflops(dtype or torch.float32, 4096, 3)
        r["network_vs_conv"] = r["network_gflops"] / r["conv_gflops"]
        r["conv_vs_peak"] = r["conv_gflops"] / r["matmul_peak_gflops"]
        results[name] = r
        print(
            f"{name:9s} network {r['network_gflop']:.1f} GFLOP in {r['network_s'] * 1e3:.0f} ms = "
            f"{r['network_gflops']:.0f} GFLOP/s | its {r['conv_layers']} convolutions alone: "
            f"{r['conv_only_s'] * 1e3:.0f} ms = {r['conv_gflops']:.0f} GFLOP/s | matmul peak "
            f"{r['matmul_peak_gflops']:.0f} GFLOP/s -> network at {r['network_vs_conv']:.0%} of its convolutions, "
            f"convolutions at {r['conv_vs_peak']:.0%} of the peak",
            flush=True,
        )
    emit_json(
        {
            "benchmark": "inference_flops",
            "config": CONFIG,
            "batch": args.batch,
            "threads": args.threads,
            "results": results,
            "load_average_1min": os.getloadavg()[0],
            "machine": platform.processor() or platform.machine(),
            "torch": torch.__version__,
        }
    )


if __name__ == "__main__":
    main()
