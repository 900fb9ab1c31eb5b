"""Numerical precision of networks: which reduced-precision dtype a device runs fast, for training and inference.

On CPUs with native bf16 (AVX512-BF16 or AMX), bf16 autocast with ``channels_last`` activations runs 3D U-Nets
about 2.5x (training, ``benchmarks/network_speed.py``) to 4.7x (inference, median seconds per Hippocampus case)
faster than float32 at the same Dice (``benchmarks/RESULTS.md``); other CPUs emulate bf16 slowly and stay in
float32. On CUDA: bf16 where the GPU has it, else fp16.

A oneDNN defect in torch 2.13's CPU build: the bf16 weight gradient of a 3D convolution is wrong (Inf, NaN or values
near 1e35) where an input side is smaller than the kernel's side (e.g. a 3x3x3 convolution of a 2-voxel-deep
map, the deepest stages of a ResNet on 28^3 or 64^3 volumes); the forward pass is right. Training wraps its
network with :func:`fp32_small_convolutions`, which runs just those (tiny, cheap) convolutions in float32.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import torch
from torch import nn

from vesalius.errors import VesaliusError

__all__ = [
    "PRECISIONS",
    "autocast_dtype",
    "check_device",
    "cpu_has_native_bf16",
    "fp32_small_convolutions",
    "memory_format",
]

#: The precision settings of ``--precision``.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), from ``/proc/cpuinfo`` (False elsewhere)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def check_device(device: str) -> str:
    """``device`` when it is ``cpu``, ``cuda`` or ``cuda:N`` and usable here; else a one-line error."""
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda") or (index and (kind == "cpu" or not index.isdigit())):
        raise VesaliusError(f"unknown device '{device}'", remedy="use --device cpu, cuda or cuda:N")
    if kind == "cuda" and not torch.cuda.is_available():
        raise VesaliusError(f"no CUDA device here for '{device}'", remedy="use --device cpu")
    if index and int(index) >= torch.cuda.device_count():
        raise VesaliusError(
            f"there is no {device} (this machine has {torch.cuda.device_count()} GPU(s))", remedy="use --device cuda:0"
        )
    return device


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a precision setting (:data:`PRECISIONS`) on ``device``; ``None`` means float32."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        if device.type != "cuda":
            raise VesaliusError("fp16 needs a CUDA device", remedy="use --precision bf16 or fp32 on a CPU")
        return torch.float16
    if precision != "auto":
        raise VesaliusError(f"unknown precision '{precision}'", remedy=f"use one of {', '.join(PRECISIONS)}")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else None


def memory_format(dtype: torch.dtype | None, device: torch.device, spatial_dims: int) -> torch.memory_format:
    """``channels_last`` (3D or 2D) for bf16 on a CPU, where oneDNN's fast bf16 convolutions want it; else
    contiguous."""
    if dtype == torch.bfloat16 and device.type == "cpu":
        return torch.channels_last_3d if spatial_dims == 3 else torch.channels_last
    return torch.contiguous_format


def _smaller_than_kernel(conv: nn.Module, x: torch.Tensor) -> bool:
    return any(side < k for side, k in zip(x.shape[2:], conv.kernel_size, strict=False))


def fp32_small_convolutions(model: nn.Module) -> list[torch.utils.hooks.RemovableHandle]:
    """Run each convolution of ``model`` in float32, outside autocast, whenever an input side is smaller than its
    kernel's (see the module docstring: oneDNN's bf16 weight gradients are wrong there); other calls are unchanged.

    Returns the hook handles (``handle.remove()`` undoes it). Costs nothing measurable: such maps are tiny.
    """
    handles = []

    def before(conv: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...] | None:
        x = args[0]
        if not (torch.is_autocast_enabled(x.device.type) and _smaller_than_kernel(conv, x)):
            return None
        context = torch.autocast(x.device.type, enabled=False)
        context.__enter__()
        conv._vesalius_fp32_context = context  # type: ignore[assignment]
        return (x.float(), *args[1:])

    def after(conv: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        context = conv.__dict__.pop("_vesalius_fp32_context", None)
        if context is not None:
            context.__exit__(None, None, None)

    for module in model.modules():
        if isinstance(module, nn.Conv3d | nn.Conv2d | nn.Conv1d):
            handles.append(module.register_forward_pre_hook(before))
            handles.append(module.register_forward_hook(after, always_call=True))
    return handles
