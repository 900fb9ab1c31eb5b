"""A residual U-Net built from a plan configuration, 2D or 3D, with deep supervision.

Built from MONAI's blocks (``ResidualUnit``, ``Convolution``): instance norm, leaky ReLU, transposed-convolution
upsampling, skip connections by concatenation. One encoder stage per entry of the plan's ``strides`` / ``features``
/ ``kernels``; the decoder mirrors it. Deep supervision: in training mode the network returns the logits of the
full-resolution output followed by those of the lower decoder stages (highest resolution first); in eval mode only
the full-resolution logits ``(B, K, *spatial)``.

Why not MONAI's ``DynUNet`` as it is: on a CPU the cost of a U-Net is dominated by its full-resolution stage
(nnU-Net's two 3x3x3 convolutions before and after the skip). With ``stem="strided"`` (this class's default; 2D and
GPU plans) the first encoder stage already works at half resolution, as in MONAI's ``UNet``, and the output head
upsamples to full resolution with one transposed convolution followed by a residual unit of ``stem_features``
channels. ``stem="full"`` keeps nnU-Net's layout, which CPU 3D plans choose (rule ``full_resolution_stage``: more
accurate on Hippocampus in the same 30 minutes). Every instance norm and the leaky ReLU after it run as one
:class:`vesalius.models.norm.InstanceNormAct`. On a 2-core CPU in bf16 (``benchmarks/network_speed.py``) a strided
training step takes about a third of the time of one with the full-resolution stage, which itself costs about as
much as MONAI's ``DynUNet`` as nnU-Net sets it up; MONAI's ``UNet`` (no deep supervision) is a little faster than
the strided layout. The figures are in ``benchmarks/RESULTS.md``.

Two options make the other network families (:mod:`vesalius.models.families`): ``attention_gates`` puts an
:class:`vesalius.models.attention.AttentionGate` on each skip connection, gated by the upsampled decoder map;
``stage_units`` and ``decoder_convolutions`` give the encoder stages several residual units each and the decoder
lighter ones (the residual-encoder U-Net). A stage of one unit is that unit itself, and the gates exist only when
asked for, so that the residual U-Net's parameter names, and its checkpoints, are those of earlier versions.

Shapes: input ``(B, C, *patch)`` where each patch size is divisible by the product of the strides along its axis.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution, ResidualUnit
from torch import nn

from vesalius.models.attention import AttentionGate
from vesalius.models.norm import fuse_instance_norm_act

__all__ = ["UNet"]

_NORM = ("INSTANCE", {"affine": True})
_ACT = ("LEAKYRELU", {"negative_slope": 0.01, "inplace": True})


def _residual(dims: int, cin: int, cout: int, stride: Sequence[int], kernel: Sequence[int], units: int) -> nn.Module:
    return ResidualUnit(
        dims, cin, cout, strides=tuple(stride), kernel_size=tuple(kernel), subunits=units, act=_ACT, norm=_NORM
    )


def _stage(
    dims: int, cin: int, cout: int, stride: Sequence[int], kernel: Sequence[int], convolutions: int, units: int
) -> nn.Module:
    """An encoder stage of ``units`` residual units, the first strided; one unit is returned as it is (not wrapped),
    so that a one-unit stage has the parameter names of earlier versions."""
    first = _residual(dims, cin, cout, stride, kernel, convolutions)
    if units == 1:
        return first
    rest = (_residual(dims, cout, cout, [1] * dims, kernel, convolutions) for _ in range(units - 1))
    return nn.Sequential(first, *rest)


def _up(dims: int, cin: int, cout: int, stride: Sequence[int]) -> nn.Module:
    conv = nn.ConvTranspose3d if dims == 3 else nn.ConvTranspose2d
    return conv(cin, cout, kernel_size=tuple(stride), stride=tuple(stride))


def _head(dims: int, cin: int, classes: int) -> nn.Module:
    return Convolution(dims, cin, classes, kernel_size=1, conv_only=True)


class UNet(nn.Module):
    """Residual U-Net.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels ``C``.
        num_classes: output classes ``K`` (background included).
        features: channels per encoder stage.
        strides: per stage, the downsampling stride per axis (stage 0's is ``1`` in nnU-Net plans).
        kernels: per stage, the kernel size per axis.
        residual_units: convolutions per residual unit.
        stage_units: per encoder stage, its residual units (default: one each).
        decoder_convolutions: convolutions of each decoder stage's residual unit (default: ``residual_units``).
        attention_gates: gate each skip connection with an :class:`~vesalius.models.attention.AttentionGate`.
        deep_supervision: return the lower decoder stages' logits too (training mode only).
        stem: ``"strided"``: stage 0 is computed at the resolution of stage 1's stride (cheap; see the module
            docstring); ``"full"``: stage 0 runs at full resolution.
        stem_features: channels of the full-resolution output block when ``stem="strided"``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_classes: int,
        features: Sequence[int],
        strides: Sequence[Sequence[int]],
        kernels: Sequence[Sequence[int]],
        *,
        residual_units: int = 2,
        stage_units: Sequence[int] | None = None,
        decoder_convolutions: int | None = None,
        attention_gates: bool = False,
        deep_supervision: bool = True,
        stem: str = "strided",
        stem_features: int = 8,
    ) -> None:
        super().__init__()
        if not len(features) == len(strides) == len(kernels) >= 2:
            raise ValueError("features, strides and kernels need one entry per stage (at least 2)")
        if stem not in ("strided", "full"):
            raise ValueError(f"stem must be 'strided' or 'full', got {stem!r}")
        stage_units = list(stage_units or [1] * len(features))
        if len(stage_units) != len(features) or min(stage_units) < 1:
            raise ValueError("stage_units needs one count of at least 1 per stage")
        decoder_convolutions = decoder_convolutions or residual_units
        self.deep_supervision = deep_supervision
        self.stem = stem
        dims = spatial_dims
        strides = [list(s) for s in strides]
        if stem == "strided":
            # Every stage takes the next stage's stride, the last none: the same total downsampling, no
            # full-resolution stage (resolutions /2, /4, ..., with the two deepest stages at the same one).
            strides = [*strides[1:], [1] * dims]
        self.encoder = nn.ModuleList()
        cin = in_channels
        for f, s, k, n in zip(features, strides, kernels, stage_units, strict=True):
            self.encoder.append(_stage(dims, cin, f, s, k, residual_units, n))
            cin = f
        self.upsample = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for i in range(len(features) - 2, -1, -1):
            self.upsample.append(_up(dims, features[i + 1], features[i], strides[i + 1]))
            self.decoder.append(
                _residual(dims, 2 * features[i], features[i], [1] * dims, kernels[i], decoder_convolutions)
            )
        self.gates: nn.ModuleList | None = None
        if attention_gates:  # decoder order, as upsample and decoder; the paper's intermediate width: half
            decoded_features = [features[i] for i in range(len(features) - 2, -1, -1)]
            self.gates = nn.ModuleList(AttentionGate(dims, f, f, max(1, f // 2)) for f in decoded_features)
        self.heads = nn.ModuleList(_head(dims, features[i], num_classes) for i in range(len(features) - 1))
        if stem == "strided":
            self.output_up = _up(dims, features[0], stem_features, strides[0])
            self.output_block = _residual(dims, stem_features, stem_features, [1] * dims, kernels[0], 1)
            self.output_head = _head(dims, stem_features, num_classes)
        fuse_instance_norm_act(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        x = skips.pop()
        decoded = []
        for i, (up, block) in enumerate(zip(self.upsample, self.decoder, strict=True)):
            upsampled, skip = up(x), skips.pop()
            if self.gates is not None:
                skip = self.gates[i](skip, upsampled)
            x = block(torch.cat([upsampled, skip], dim=1))
            decoded.append(x)
        decoded.reverse()  # highest resolution first
        if self.stem == "strided":
            top = self.output_head(self.output_block(self.output_up(decoded[0])))
            lower = [head(d) for head, d in zip(self.heads, decoded, strict=True)]
        else:
            top = self.heads[0](decoded[0])
            lower = [head(d) for head, d in zip(self.heads[1:], decoded[1:], strict=True)]
        if self.training and self.deep_supervision:
            return [top, *lower]
        return top
