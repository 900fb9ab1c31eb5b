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

Shapes: input ``(B, C, *patch)`` where each patch size is divisible by the product of the strides along its axis.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.networks.blocks import Convolution, ResidualUnit
from torch import nn

from vesalius.models.norm import fuse_instance_norm_act
from vesalius.planning.plan import Configuration

__all__ = ["UNet", "build_network"]

_NORM = ("INSTANCE", {"affine": True})
_ACT = ("LEAKYRELU", {"negative_slope": 0.01, "inplace": True})


def _residual(dims: int, cin: int, cout: int, stride: Sequence[int], kernel: Sequence[int], units: int) -> nn.Module:
    return ResidualUnit(
        dims, cin, cout, strides=tuple(stride), kernel_size=tuple(kernel), subunits=units, act=_ACT, norm=_NORM
    )


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
        deep_supervision: bool = True,
        stem: str = "strided",
        stem_features: int = 8,
    ) -> None:
        super().__init__()
        if not len(features) == len(strides) == len(kernels) >= 2:
            raise ValueError("features, strides and kernels need one entry per stage (at least 2)")
        if stem not in ("strided", "full"):
            raise ValueError(f"stem must be 'strided' or 'full', got {stem!r}")
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
        for f, s, k in zip(features, strides, kernels, strict=True):
            self.encoder.append(_residual(dims, cin, f, s, k, residual_units))
            cin = f
        self.upsample = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for i in range(len(features) - 2, -1, -1):
            self.upsample.append(_up(dims, features[i + 1], features[i], strides[i + 1]))
            self.decoder.append(_residual(dims, 2 * features[i], features[i], [1] * dims, kernels[i], residual_units))
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
        for up, block in zip(self.upsample, self.decoder, strict=True):
            x = block(torch.cat([up(x), skips.pop()], dim=1))
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


def build_network(configuration: Configuration, in_channels: int, num_classes: int, **overrides: Any) -> UNet:
    """The U-Net of a plan configuration (``spatial_dims`` from the length of its patch)."""
    kwargs: dict[str, Any] = {
        "residual_units": configuration.residual_units,
        "deep_supervision": configuration.deep_supervision,
        "stem": configuration.stem,
    }
    kwargs.update(overrides)
    return UNet(
        configuration.spatial_dims,
        in_channels,
        num_classes,
        list(configuration.features),
        [list(s) for s in configuration.strides],
        [list(k) for k in configuration.kernels],
        **kwargs,
    )
