"""The segmentation network families, and the network of a plan configuration (:func:`build_network`).

A configuration's ``network`` (:data:`vesalius.planning.plan.NETWORK_FAMILIES`; the plan's default, or the run's
``--network``) names one of three variants of :class:`vesalius.models.unet.UNet`, which all keep its deep
supervision, strided or full-resolution stem, fused instance norm + leaky ReLU and bf16 autocast:

- ``"resunet"``: the residual U-Net, one residual unit per encoder and decoder stage.
- ``"attention"``: the same with an additive attention gate (:mod:`vesalius.models.attention`, Oktay et al. 2018)
  on each skip connection. MONAI's ``AttentionUnet`` was the other candidate; it has no deep supervision nor a
  strided stem, and on the same patches it was slower per training step (figures below).
- ``"resenc"``: the residual-encoder U-Net (nnU-Net's ResEnc presets: Isensee et al., "nnU-Net Revisited", MICCAI
  2024): more residual units in the deeper encoder stages (:data:`RESENC_STAGE_UNITS`) and decoder units of one
  convolution, which moves capacity to the encoder, where the maps are small, at a moderate cost per step.

The family is recorded in the trained configuration (``model.json``), so that prediction, export and a resumed run
rebuild the same network; ``model.json`` files of earlier versions have no ``network`` and are ``"resunet"``.

Training speed (``benchmarks/network_speed.py --bf16-only --cpu-time --threads 1``: forward, Dice + CE with deep
supervision where the network has it, backward and SGD step in bf16 autocast with channels-last tensors; CPU
seconds per step, the median of 3 steps, the range over two interleaved runs; 4 stages of 16-128 features, 3
poolings, strided stem; a 2-core Intel Xeon with AMX-BF16 shared with other work, hence CPU rather than wall
time; December 2026):

=====================  ===========  =====================  ===========  =====================
network                3D params    3D 64^3, batch 2       2D params    2D 256^2, batch 8
=====================  ===========  =====================  ===========  =====================
resunet                1.44 M       0.245-0.253 s          0.50 M       0.364-0.382 s
attention              1.44 M       0.259-0.293 s          0.51 M       0.419-0.458 s
resenc                 6.49 M       0.357-0.380 s          2.19 M       0.672-0.681 s
MONAI AttentionUnet    1.47 M       0.774-0.783 s          0.49 M       0.940-0.995 s
=====================  ===========  =====================  ===========  =====================

The gates add about 5-15 % to a step and 0.4-1 % to the parameters. MONAI's ``AttentionUnet`` costs 2.5-3x ours,
mostly because its first stage runs at full resolution; with gates on our U-Net the attention family keeps deep
supervision, both stems and the fused norm as well. ResEnc has 4.5x the parameters for 1.5-1.8x the time of a step.
Which family segments best in a given time budget is not measured yet; plans keep ``"resunet"``.
"""

from __future__ import annotations

from typing import Any

from vesalius.models.unet import UNet
from vesalius.planning.plan import Configuration

__all__ = ["RESENC_STAGE_UNITS", "build_network", "stage_units"]

#: Residual units per encoder stage of the ``"resenc"`` family, shallowest first (nnU-Net ResEnc's blocks per stage);
#: a deeper network repeats the last count.
RESENC_STAGE_UNITS = (1, 3, 4, 6, 6, 6, 6)


def stage_units(network: str, num_stages: int) -> list[int]:
    """Residual units per encoder stage of family ``network`` with ``num_stages`` stages."""
    if network != "resenc":
        return [1] * num_stages
    return [RESENC_STAGE_UNITS[min(i, len(RESENC_STAGE_UNITS) - 1)] for i in range(num_stages)]


def build_network(configuration: Configuration, in_channels: int, num_classes: int, **overrides: Any) -> UNet:
    """The network of a plan configuration: its family (``network``), topology and ``spatial_dims`` (from the length
    of its patch); ``overrides`` are :class:`~vesalius.models.unet.UNet` keyword arguments.

    Shapes: input ``(B, in_channels, *patch)``; output ``(B, num_classes, *patch)`` in eval mode, a list of deep
    supervision logits (full resolution first) in training mode.
    """
    network = configuration.network
    kwargs: dict[str, Any] = {
        "residual_units": configuration.residual_units,
        "stage_units": stage_units(network, len(configuration.features)),
        "decoder_convolutions": 1 if network == "resenc" else configuration.residual_units,
        "attention_gates": network == "attention",
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
