"""Additive attention gate on a U-Net skip connection (Oktay et al., "Attention U-Net: Learning Where to Look for
the Pancreas", MIDL 2018).

The gate weighs each voxel of an encoder feature map ``x`` (the skip) by a coefficient in ``(0, 1)`` computed from
``x`` and a gating signal ``g`` from the decoder: ``alpha = sigmoid(psi(relu(W_x x + W_g g)))``, with ``W_x``,
``W_g`` (to ``inter_channels``) and ``psi`` (to one channel) 1x1 convolutions, and returns ``alpha * x``. Regions
the decoder's coarser context finds irrelevant are thus damped before the decoder reads the skip.

Where this gate differs from the paper: the paper's gating signal is the decoder map *before* upsampling, so its
``W_x`` is strided and ``alpha`` is resampled back to the skip's grid. Here the gating signal is the decoder map
*after* the U-Net's transposed convolution, already on the skip's grid: the gate needs no interpolation (which
also keeps the exported ONNX graph free of ``Resize``), and the transposed convolution, which the decoder has
anyway, learns the upsampling that the paper's fixed trilinear resampling does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AttentionGate"]


def _conv1x1(dims: int, cin: int, cout: int, bias: bool) -> nn.Module:
    conv = nn.Conv3d if dims == 3 else nn.Conv2d
    return conv(cin, cout, kernel_size=1, bias=bias)


class AttentionGate(nn.Module):
    """``alpha * x`` with ``alpha = sigmoid(psi(relu(W_x x + W_g g)))`` (see the module docstring).

    Args:
        spatial_dims: 2 or 3.
        skip_channels: channels ``C_x`` of the skip ``x``.
        gate_channels: channels ``C_g`` of the gating signal ``g``.
        inter_channels: channels of the intermediate map (the paper: half of ``C_x``).

    Shapes: ``x`` ``(B, C_x, *spatial)`` and ``g`` ``(B, C_g, *spatial)`` (the same grid) in; ``(B, C_x, *spatial)``
    out, in ``x``'s dtype and memory layout.
    """

    def __init__(self, spatial_dims: int, skip_channels: int, gate_channels: int, inter_channels: int) -> None:
        super().__init__()
        self.skip = _conv1x1(spatial_dims, skip_channels, inter_channels, bias=False)
        self.gate = _conv1x1(spatial_dims, gate_channels, inter_channels, bias=True)
        self.psi = _conv1x1(spatial_dims, inter_channels, 1, bias=True)

    def coefficients(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """The attention coefficients ``alpha`` ``(B, 1, *spatial)``, each in ``(0, 1)``."""
        return torch.sigmoid(self.psi(F.relu(self.skip(x) + self.gate(g))))

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return x * self.coefficients(x, g)
