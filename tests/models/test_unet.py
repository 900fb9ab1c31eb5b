"""The U-Net: output shapes with and without deep supervision, anisotropic strides, built from a plan."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import configuration
from vesalius.models import UNet, build_network


@pytest.mark.parametrize("stem", ["strided", "full"])
@pytest.mark.parametrize("dims", [2, 3])
def test_unet_output_shapes_with_and_without_deep_supervision(stem, dims):
    size = (16, 24, 8)[:dims]
    strides = [[1] * dims, [2] * dims, [2] * dims]
    net = UNet(dims, 2, 4, [4, 8, 16], strides, [[3] * dims] * 3, stem=stem)
    x = torch.randn(2, 2, *size)
    outputs = net(x)
    assert isinstance(outputs, list)
    assert outputs[0].shape == (2, 4, *size)  # full resolution first
    lower = [tuple(o.shape[2:]) for o in outputs[1:]]
    assert lower == sorted(lower, reverse=True) and all(s < size for s in lower[:1])
    net.eval()
    with torch.no_grad():
        assert net(x).shape == (2, 4, *size)


def test_unet_keeps_anisotropic_strides():
    strides = [[1, 1, 1], [2, 2, 1], [2, 2, 2]]
    net = UNet(3, 1, 2, [4, 8, 16], strides, [[3, 3, 1], [3, 3, 3], [3, 3, 3]]).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 1, 16, 12, 6)).shape == (1, 2, 16, 12, 6)


def test_build_network_from_plan_configuration():
    config = configuration(patch_size=[16, 16], features=[4, 8], strides=[[1, 1], [2, 2]], kernels=[[3, 3], [3, 3]])
    net = build_network(config, in_channels=3, num_classes=2).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 16, 16)).shape == (1, 2, 16, 16)
