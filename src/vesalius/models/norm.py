"""Instance normalisation fused with the leaky ReLU after it, without layout copies on channels-last tensors.

Written by hand because PyTorch's ``instance_norm`` reshapes its input to ``(1, B*C, *spatial)`` and runs batch
norm on a contiguous copy. On a channels-last tensor (the fast layout for bf16 convolutions on CPU, see
:mod:`vesalius.precision`) every normalisation then copies its input, returns the other layout, so that the next
convolution copies again (forward and backward), and the in-place leaky ReLU on that reshaped view adds two more
copies in the backward pass. On 2 Zen 4 cores (``torch.profiler``, Hippocampus U-Net, batch 10 of 40x56x40, bf16)
those copies took 0.42 s of a 1.1 s training step.

Here each sample's ``(1, C, *spatial)`` slice, which is a view in either layout, goes through ATen's batch norm
(vectorised for channels-last, statistics in float32) into one output of the input's layout; the leaky ReLU is
applied in place on that output, and the backward pass is ATen's batch-norm backward per sample after masking the
gradient by the activation's slope. Results match ``instance_norm`` followed by ``leaky_relu`` to rounding
(``tests/models/test_norm.py``). ``benchmarks/network_speed.py`` measures the gain: about a quarter off a training
step of the CPU plan's U-Net with its full-resolution stage, nothing for the strided U-Net, whose maps are smaller
(figures in ``benchmarks/RESULTS.md``).

Contiguous tensors (no copies there), and graphs being traced (``torch.jit.trace``, ONNX export, so that the graph
does not fix the batch size) go through PyTorch's own ``instance_norm`` and ``leaky_relu``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["InstanceNormAct", "fuse_instance_norm_act"]


class _InstanceNormAct(torch.autograd.Function):
    """``leaky_relu(instance_norm(x) * weight + bias, slope)`` of ``x`` ``(B, C, *spatial)``, per-sample batch norm."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, slope: float
    ) -> torch.Tensor:
        out = torch.empty_like(x)
        means = x.new_empty((x.shape[0], x.shape[1]), dtype=torch.promote_types(x.dtype, torch.float32))
        rstds = torch.empty_like(means)
        for i in range(x.shape[0]):
            sample = (x[i : i + 1], weight, bias, None, None, True, 0.0, eps)  # no running statistics
            torch.ops.aten.native_batch_norm.out(*sample, out=out[i : i + 1], save_mean=means[i], save_invstd=rstds[i])
        F.leaky_relu_(out, slope)
        ctx.save_for_backward(x, weight, out, means, rstds)
        ctx.eps, ctx.slope = eps, slope
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        x, weight, out, means, rstds = ctx.saved_tensors
        grad = torch.ops.aten.leaky_relu_backward(grad.contiguous(memory_format=_layout(x)), out, ctx.slope, True)
        grad_x = torch.empty_like(x)
        grad_weight = weight.new_zeros((x.shape[0], *weight.shape))
        grad_bias = torch.empty_like(grad_weight)
        for i in range(x.shape[0]):
            sample = (grad[i : i + 1], x[i : i + 1], weight, None, None, means[i], rstds[i], True, ctx.eps)
            outputs = {"out0": grad_x[i : i + 1], "out1": grad_weight[i], "out2": grad_bias[i]}
            torch.ops.aten.native_batch_norm_backward.out(*sample, [True, True, True], **outputs)
        grad_weight, grad_bias = grad_weight.sum(0), grad_bias.sum(0)
        return grad_x, grad_weight, grad_bias, None, None


def _layout(x: torch.Tensor) -> torch.memory_format:
    """The memory format ``x`` is in (channels-last or contiguous)."""
    if x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


class InstanceNormAct(nn.Module):
    """Instance normalisation with a learnt scale and shift per channel, then leaky ReLU.

    Shapes: ``(B, C, *spatial)`` in, the same shape, dtype and memory layout out. Parameters ``weight`` and
    ``bias`` ``(C,)``, named as in ``torch.nn.InstanceNorm3d(affine=True)`` (checkpoints load either way).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, negative_slope: float = 0.01) -> None:
        super().__init__()
        self.eps = eps
        self.negative_slope = negative_slope
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _layout(x) == torch.contiguous_format or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            normalised = F.instance_norm(x, weight=self.weight, bias=self.bias, eps=self.eps)
            return F.leaky_relu(normalised, self.negative_slope)
        return _InstanceNormAct.apply(x, self.weight, self.bias, self.eps, self.negative_slope)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, negative_slope={self.negative_slope}"


def fuse_instance_norm_act(model: nn.Module) -> nn.Module:
    """Replace, in place, each MONAI ``ADN`` block of an affine instance norm followed by a leaky ReLU (order
    ``"NDA"`` without dropout) with :class:`InstanceNormAct` (its activation becomes ``Identity``); returns ``model``.
    """
    from monai.networks.blocks import ADN

    for block in model.modules():
        if not isinstance(block, ADN):
            continue
        norm, act = getattr(block, "N", None), getattr(block, "A", None)
        if (
            isinstance(norm, nn.InstanceNorm1d | nn.InstanceNorm2d | nn.InstanceNorm3d)
            and norm.affine
            and isinstance(act, nn.LeakyReLU)
            and list(block._modules) == ["N", "A"]
        ):
            fused = InstanceNormAct(norm.num_features, norm.eps, act.negative_slope)
            fused.load_state_dict(norm.state_dict())
            block.N, block.A = fused, nn.Identity()
    return model
